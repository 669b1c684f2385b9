"""The component registry and :class:`CompositeReward`, the weighted (optionally standardised) sum.

Components are built by name from :data:`REGISTRY` (``name -> factory(**options) -> Reward``). A new kind of
component, e.g. a CheXprompt-style LLM judge, plugs in with :func:`register_component`: any
:class:`~unirg.trainer.rewards.base.Reward` subclass whose ``score(candidates, references)`` returns one
float (or ``None``) per pair works, alone as a TRL reward function or inside a composite.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unirg.model.textmetrics import bleu, bleu2, rouge_l
from unirg.trainer.rewards.base import (
    FunctionReward,
    PairwiseReward,
    Reward,
    Score,
    completion_text,
    mean,
    reference_column,
)
from unirg.trainer.rewards.clinical import chexpert_f1, chexpert_label_margin, radgraph_substitute, semb_substitute
from unirg.trainer.rewards.semantic import BERTScore, EmbeddingCosine

log = logging.getLogger(__name__)

REGISTRY: dict[str, Callable[..., Reward]] = {}
"""Component name → factory taking the component's options as keyword arguments."""

MODEL_FREE = ("bleu", "bleu2", "rouge_l", "chexpert_f1", "chexpert_label_margin", "semb_substitute",
              "radgraph_substitute")
"""Components that need no model."""


def register_component(name: str, factory: Callable[..., Reward], *, replace: bool = False) -> None:
    """Make ``factory(**options)`` available as component ``name`` (in :class:`CompositeReward` and the CLI)."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"component name must be letters, digits and '_', got {name!r}")
    if name in REGISTRY and not replace:
        raise ValueError(f"component {name!r} is already registered; pass replace=True to override it")
    REGISTRY[name] = factory


def build_component(name: str, **options: Any) -> Reward:
    """The component registered as ``name``, built with ``options``."""
    if name not in REGISTRY:
        raise KeyError(f"unknown reward component {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**options)


def _pairwise(name: str, fn: Callable[..., float], worst: float | None = 0.0) -> Callable[..., Reward]:
    def factory(**options: Any) -> Reward:
        return PairwiseReward(name, fn, worst=worst, **options)

    factory.__name__ = f"build_{name}"
    return factory


register_component("bleu", _pairwise("bleu", bleu))
register_component("bleu2", _pairwise("bleu2", bleu2))
register_component("rouge_l", _pairwise("rouge_l", rouge_l))
register_component("chexpert_f1", _pairwise("chexpert_f1", chexpert_f1))
register_component("chexpert_label_margin", _pairwise("chexpert_label_margin", chexpert_label_margin, worst=None))
register_component("semb_substitute", _pairwise("semb_substitute", semb_substitute))
register_component("radgraph_substitute", _pairwise("radgraph_substitute", radgraph_substitute))
register_component("embedding_cosine", EmbeddingCosine)
register_component("bertscore", BERTScore)


class CompositeReward(Reward):
    """Weighted sum of components, usable as one TRL reward function.

    Parameters
    ----------
    weights
        Component name → weight (names from :data:`REGISTRY`). A component may also be given ready-built in
        ``components``.
    options
        Component name → keyword options for its factory (``{"embedding_cosine": {"model_path": ...}}``).
    components
        Component name → already built :class:`Reward`, or any TRL-shaped reward function
        ``fn(completions, reference=[...], **kw)`` (wrapped in :class:`FunctionReward`); overrides the registry
        for that name. This is how a reward made elsewhere, e.g. the LLM judge, joins the sum.
    scaling
        Component name → ``(mean, std)``: the component is standardised, ``(x - mean) / std``, before weighting,
        as RadCliQ does with its metrics. Get them with :meth:`fit_scaling` on a calibration set. Components
        without an entry are not scaled.
    missing
        What a ``None`` component score does to the sum: ``"none"`` makes the composite ``None`` (TRL skips the
        sample); ``"renormalize"`` sums the available components and rescales by
        ``sum(|w|) / sum(|w| available)`` (for a judge that sometimes fails).
    name, reference_key
        The TRL name of the reward, and the dataset column with the reference report.

    Each call logs the batch mean of every component: through TRL's ``log_metric`` (as ``<name>/<component>``)
    and ``log_extra`` (a per-completion column) when TRL passes them, and to this module's logger at DEBUG.

    >>> reward = CompositeReward({"bleu": 0.5, "chexpert_f1": 1.0})
    >>> [round(x, 3) for x in reward(["No pneumothorax.", "Large right pneumothorax."],
    ...                               reference=["No pneumothorax.", "No pneumothorax."])]
    [1.5, 0.16]
    """

    def __init__(self, weights: Mapping[str, float], *, options: Mapping[str, Mapping[str, Any]] | None = None,
                 components: Mapping[str, Reward | Callable[..., Sequence[Score]]] | None = None,
                 scaling: Mapping[str, tuple[float, float]] | None = None, missing: str = "none",
                 name: str = "composite", reference_key: str = "reference") -> None:
        if not weights:
            raise ValueError("weights is empty; give at least one component, e.g. {'chexpert_f1': 1.0}")
        if missing not in ("none", "renormalize"):
            raise ValueError(f"missing must be 'none' or 'renormalize', got {missing!r}")
        options = dict(options or {})
        components = {
            k: v if isinstance(v, Reward) else FunctionReward(k, v, reference_key=reference_key)
            for k, v in (components or {}).items()
        }
        scaling = dict(scaling or {})
        for key, label in ((options, "options"), (scaling, "scaling"), (components, "components")):
            stray = set(key) - set(weights)
            if stray:
                raise ValueError(f"{label} names components without a weight: {sorted(stray)}; add them to weights")
        for comp, (_mu, sd) in scaling.items():
            if not sd > 0:
                raise ValueError(f"scaling[{comp!r}] std must be > 0, got {sd}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.components: dict[str, Reward] = {
            k: components[k] if k in components else build_component(k, **options.get(k, {})) for k in self.weights
        }
        self.scaling = {k: (float(m), float(s)) for k, (m, s) in scaling.items()}
        self.missing = missing
        self.name = name
        self.reference_key = reference_key

    def score_components(self, candidates: Sequence[str], references: Sequence[str | None]) -> dict[str, list[Score]]:
        """Every component's raw (unscaled) scores."""
        return {k: comp.score(candidates, references) for k, comp in self.components.items()}

    def combine(self, components: Mapping[str, Sequence[Score]]) -> list[Score]:
        """The weighted sum per sample of component scores (after scaling)."""
        n = len(next(iter(components.values())))
        total_weight = sum(abs(w) for w in self.weights.values())
        out: list[Score] = []
        for i in range(n):
            acc, used = 0.0, 0.0
            missing = False
            for k, w in self.weights.items():
                value = components[k][i]
                if value is None:
                    missing = True
                    continue
                if k in self.scaling:
                    mu, sd = self.scaling[k]
                    value = (value - mu) / sd
                acc += w * value
                used += abs(w)
            if used == 0.0 or (missing and self.missing == "none"):
                out.append(None)
            else:
                out.append(acc * (total_weight / used) if missing else acc)
        return out

    def score(self, candidates: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        return self.combine(self.score_components(candidates, references))

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[Score]:
        references = reference_column(kwargs, self.reference_key, len(completions))
        candidates = [completion_text(c) for c in completions]
        parts = self.score_components(candidates, references)
        total = self.combine(parts)
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        for k, values in parts.items():
            m = mean(values)
            if m is not None and callable(log_metric):
                log_metric(f"{self.name}/{k}", m)
            if callable(log_extra):
                log_extra(f"{self.name}/{k}", list(values))
        log.debug("%s: %s", self.name, {k: mean(v) for k, v in parts.items()})
        return total

    def fit_scaling(
        self, candidates: Sequence[str], references: Sequence[str | None]
    ) -> dict[str, tuple[float, float]]:
        """Per-component ``(mean, std)`` over a calibration set, for ``scaling=`` (std 1.0 where it is 0)."""
        out = {}
        for k, values in self.score_components(candidates, references).items():
            kept = [v for v in values if v is not None]
            if not kept:
                raise ValueError(f"component {k!r} scored no pair of the calibration set (all references blank?)")
            mu = sum(kept) / len(kept)
            var = sum((v - mu) ** 2 for v in kept) / len(kept)
            out[k] = (mu, var**0.5 if var > 0 else 1.0)
        return out
