"""The reward shape shared by every component: a batch scorer plus the TRL reward-function adapter."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Score = float | None


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it.

    A plain string is returned as is; a conversational completion (a list of messages, the last being the
    assistant's) gives its ``content``, itself a string or a list of parts of which the ``{"type": "text"}``
    ones are joined.

    >>> completion_text([{"role": "assistant", "content": "No effusion."}])
    'No effusion.'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "Clear lungs."}]}])
    'Clear lungs.'
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return completion_text(completion.get("content"))
    if isinstance(completion, list | tuple):
        if not completion:
            return ""
        if all(isinstance(p, dict) and "type" in p and "role" not in p for p in completion):
            return " ".join(str(p.get("text", "")) for p in completion if p.get("type") == "text")
        return completion_text(completion[-1])
    raise TypeError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


def _blank(text: str | None) -> bool:
    return text is None or not str(text).strip()


class Reward:
    """Base class of reward components.

    Subclasses implement :meth:`score` (a batch of candidate texts against reference texts). An instance is
    also a TRL reward function: ``reward(completions, reference=[...], **kwargs) -> list[float | None]``,
    where ``reference`` is the dataset column holding the reference report (``reference_key``).

    Conventions for every component: a missing or blank *reference* gives ``None`` (TRL skips the sample);
    a blank *candidate* gives the component's worst score (never ``None``: an empty completion is a bad one).
    """

    name: str = "reward"
    reference_key: str = "reference"

    @property
    def __name__(self) -> str:  # TRL names the reward's logged columns after ``__name__``
        return self.name

    def score(self, candidates: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        raise NotImplementedError

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[Score]:
        references = reference_column(kwargs, self.reference_key, len(completions))
        return self.score([completion_text(c) for c in completions], references)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def reference_column(kwargs: dict[str, Any], key: str, n: int) -> list[str | None]:
    """The reference texts from a TRL reward call's keyword arguments, checked against the batch size."""
    if key not in kwargs:
        available = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
        raise KeyError(
            f"reward needs the reference reports in the {key!r} column of the dataset (passed as the keyword "
            f"argument {key!r}); got only {available}. Rename the column or pass reference_key=..."
        )
    refs = kwargs[key]
    if isinstance(refs, str):
        refs = [refs] * n
    refs = [completion_text(r) if r is not None else None for r in refs]
    if len(refs) != n:
        raise ValueError(f"{n} completions but {len(refs)} references in {key!r}")
    return refs


class PairwiseReward(Reward):
    """A reward from a pairwise scorer ``fn(candidate, reference, **options) -> float``.

    ``worst`` is the score given to a blank candidate; ``worst=None`` scores a blank candidate with ``fn`` as
    ``fn("", reference)`` (for unbounded scores, where no constant is the worst).

    >>> r = PairwiseReward("exact", lambda c, r: float(c == r))
    >>> r(["a", "b", ""], reference=["a", "a", "a"])
    [1.0, 0.0, 0.0]
    >>> r.score(["a"], [None])
    [None]
    """

    def __init__(self, name: str, fn: Callable[..., float], *, worst: float | None = 0.0,
                 reference_key: str = "reference",
                 **options: Any) -> None:
        self.name = name
        self.fn = fn
        self.worst = worst
        self.reference_key = reference_key
        self.options = options

    def score(self, candidates: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        out: list[Score] = []
        for cand, ref in zip(candidates, references, strict=True):
            if _blank(ref):
                out.append(None)
            elif _blank(cand) and self.worst is not None:
                out.append(self.worst)
            else:
                out.append(float(self.fn(cand or "", ref, **self.options)))
        return out


class FunctionReward(Reward):
    """A TRL-shaped reward function ``fn(completions, reference=[...], **kwargs)`` as a :class:`Reward`, so that
    rewards written elsewhere (e.g. the LLM judge's ``make_judge_reward``) compose in a ``CompositeReward``.

    >>> r = FunctionReward("length", lambda completions, reference, **kw: [len(c) / 10 for c in completions])
    >>> r.score(["abc", "abcdefghij"], ["x", "y"])
    [0.3, 1.0]
    """

    def __init__(self, name: str, fn: Callable[..., Sequence[Score]], *, reference_key: str = "reference") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.name = name
        self.fn = fn
        self.reference_key = reference_key

    def score(self, candidates: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        out = list(self.fn(list(candidates), **{self.reference_key: list(references)}))
        if len(out) != len(candidates):
            raise ValueError(f"reward {self.name!r} returned {len(out)} scores for {len(candidates)} completions")
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in out]


def mean(values: Sequence[Score]) -> float | None:
    """Mean of the non-``None``, non-NaN values (``None`` when there are none)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None
