""":class:`ClinicalErrorJudge` (prompt + backend + cache + parser) and the reward wrappers
(:func:`judge_reward`, :func:`make_judge_reward`, :func:`judge_from_config`, :func:`require_judge`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unirg.trainer.rewards.judge.backends import JudgeBackend, Messages, OpenAIJudgeBackend, TransformersJudgeBackend
from unirg.trainer.rewards.judge.cache import JudgeCache, cache_key
from unirg.trainer.rewards.judge.parsing import JudgeResult, parse_judge_answer
from unirg.trainer.rewards.judge.prompt import (
    ANSWER_FORMATS,
    CONFIG_KEY,
    JudgeError,
    JudgeNotConfigured,
    SYSTEM_PROMPT,
    WEIGHT_KEY,
    build_judge_messages,
    prompt_version,
)

log = logging.getLogger(__name__)


class ClinicalErrorJudge:
    """Prompt + backend + cache + parser.

    Parameters
    ----------
    backend : JudgeBackend
    cache : JudgeCache, path or None
        A cache object, an SQLite file path (memory + disk), or ``None`` (memory only).
    answer_format : "lines" or "json"
        Which answer template the prompt asks for (the parser accepts both either way).
    system_prompt : str or None
        ``None`` leaves the system turn out (for models whose template has none).
    """

    def __init__(
        self,
        backend: JudgeBackend,
        *,
        cache: JudgeCache | str | os.PathLike | None = None,
        answer_format: str = "lines",
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> None:
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        self.backend = backend
        self.cache = cache if isinstance(cache, JudgeCache) else JudgeCache(cache)
        self.answer_format = answer_format
        self.system_prompt = system_prompt
        self.judged_count = 0  # answers parsed or not, over this judge's life
        self.unparsed_count = 0  # answers that could not be parsed: missing rewards
        sp = ""
        if system_prompt != SYSTEM_PROMPT:  # a custom system prompt is another prompt version
            sp = "+sys:" + hashlib.sha256((system_prompt or "").encode()).hexdigest()[:8]
        self.prompt_version = prompt_version(answer_format) + sp

    @property
    def judge_id(self) -> str:
        return self.backend.judge_id

    def messages(self, candidate: str, reference: str) -> Messages:
        return build_judge_messages(
            candidate, reference, answer_format=self.answer_format, system_prompt=self.system_prompt
        )

    def judge(self, candidates: Sequence[str], references: Sequence[str]) -> list[JudgeResult]:
        """Judge each (candidate, reference) pair; cached pairs and duplicates are not re-generated."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        keys = [cache_key(self.judge_id, self.prompt_version, c, r) for c, r in zip(candidates, references)]
        records: dict[str, tuple[dict[str, Any], bool]] = {}
        todo: dict[str, tuple[str, str]] = {}
        for k, c, r in zip(keys, candidates, references):
            if k in records or k in todo:
                continue
            rec = self.cache.get(k)
            if rec is not None:
                records[k] = (rec, True)
            else:
                todo[k] = (c, r)
        if todo:
            convs = [self.messages(c, r) for c, r in todo.values()]
            t0 = time.perf_counter()
            answers = self.backend.generate(convs)
            per = (time.perf_counter() - t0) / len(convs)
            if len(answers) != len(convs):
                raise JudgeError(f"backend returned {len(answers)} answers for {len(convs)} conversations")
            for k, ans in zip(todo, answers):
                self.cache.put(k, ans, seconds=per, judge_id=self.judge_id, prompt_version=self.prompt_version)
                records[k] = ({"raw": ans, "seconds": per}, False)
        results = []
        unparsed: list[JudgeResult] = []
        for k in keys:
            rec, cached = records[k]
            res = parse_judge_answer(rec["raw"])
            if not res.parsed:
                unparsed.append(res)
                log.debug("judge answer not parsed (%s): %r", "; ".join(res.issues), rec["raw"][:200])
            results.append(
                dataclasses.replace(
                    res,
                    judge_id=self.judge_id,
                    prompt_version=self.prompt_version,
                    cached=cached,
                    seconds=rec.get("seconds"),
                )
            )
        self.judged_count += len(results)
        self.unparsed_count += len(unparsed)
        if unparsed:
            log.warning(
                "event=judge_unparsed count=%d of=%d total_unparsed=%d total_judged=%d judge=%s issues=%r example=%r",
                len(unparsed), len(results), self.unparsed_count, self.judged_count, self.judge_id,
                "; ".join(unparsed[0].issues), (unparsed[0].raw or "")[:200])
        return results

    def judge_one(self, candidate: str, reference: str) -> JudgeResult:
        return self.judge([candidate], [reference])[0]


def judge_from_config(cfg: Mapping[str, Any] | None) -> ClinicalErrorJudge | None:
    """Build a judge from the ``reward.judge`` config section; ``None``/empty gives ``None``.

    Keys: ``backend`` ("transformers" or "openai"); ``model`` (path, or served model name);
    ``gguf_file``; ``base_url``; ``api_key_env`` (name of the env var holding the key);
    ``max_new_tokens``; ``batch_size``; ``concurrency``; ``device``; ``cache`` (SQLite path);
    ``answer_format``.

    >>> judge_from_config(None) is None
    True
    >>> try:
    ...     judge_from_config({"backend": "transformers"})
    ... except JudgeNotConfigured as exc:
    ...     print(exc)
    `reward.judge.model` is required for the transformers judge backend
    """
    if not cfg:
        return None
    cfg = dict(cfg)
    backend_name = str(cfg.pop("backend", "transformers")).lower()
    cache = cfg.pop("cache", None)
    answer_format = cfg.pop("answer_format", "lines")
    max_new = int(cfg.pop("max_new_tokens", 160))
    if backend_name in ("transformers", "hf", "local"):
        model = cfg.pop("model", None) or cfg.pop("path", None)
        if not model:
            raise JudgeNotConfigured(f"`{CONFIG_KEY}.model` is required for the transformers judge backend")
        backend: JudgeBackend = TransformersJudgeBackend(
            model,
            gguf_file=cfg.pop("gguf_file", None),
            max_new_tokens=max_new,
            batch_size=int(cfg.pop("batch_size", 8)),
            device=cfg.pop("device", None),
        )
    elif backend_name in ("openai", "endpoint", "http"):
        key_env = cfg.pop("api_key_env", None)
        backend = OpenAIJudgeBackend(
            cfg.pop("base_url", None),
            cfg.pop("model", None),
            os.environ.get(key_env) if key_env else None,
            max_tokens=max_new,
            concurrency=int(cfg.pop("concurrency", 4)),
            timeout=float(cfg.pop("timeout", 120.0)),
        )
    else:
        raise ValueError(f"`{CONFIG_KEY}.backend` must be 'transformers' or 'openai', got {backend_name!r}")
    for unused in ("batch_size", "concurrency", "device", "timeout", "gguf_file"):
        cfg.pop(unused, None)  # options of the other backend
    if cfg:
        log.warning("ignoring unknown %s keys: %s", CONFIG_KEY, ", ".join(sorted(cfg)))
    return ClinicalErrorJudge(backend, cache=cache, answer_format=answer_format)


def require_judge(weights: Mapping[str, float], judge: ClinicalErrorJudge | None, *, name: str = WEIGHT_KEY) -> None:
    """Raise :class:`JudgeNotConfigured` when ``weights[name]`` is non-zero and there is no judge.

    >>> require_judge({"bleu": 1.0, "judge": 0.0}, None)
    >>> try:
    ...     require_judge({"judge": 0.5}, None)
    ... except JudgeNotConfigured as exc:
    ...     print(str(exc)[:81])
    reward weight `judge` is 0.5 but no judge is configured: set `reward.judge` (e.g.
    """
    w = weights.get(name, 0) or 0
    if w and judge is None:
        raise JudgeNotConfigured(
            f"reward weight `{name}` is {w} but no judge is configured: set `{CONFIG_KEY}` "
            f"(e.g. {{backend: transformers, model: PATH}} or {{backend: openai, base_url: URL, model: NAME}}) "
            f"or set the weight to 0"
        )


_default_judge: ClinicalErrorJudge | None = None


def set_default_judge(judge: ClinicalErrorJudge | None) -> None:
    """The judge :func:`judge_reward` uses when none is passed."""
    global _default_judge
    _default_judge = judge


def get_default_judge() -> ClinicalErrorJudge | None:
    return _default_judge


def _completion_text(c: Any) -> str:
    """Plain text of a TRL completion (a string, or a list of chat messages)."""
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        return str(c.get("content", ""))
    if isinstance(c, Sequence):
        parts = [
            m.get("content", "") for m in c if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"
        ]
        return "\n".join(p if isinstance(p, str) else str(p) for p in parts)
    return str(c)


def _judge_batch(
    judge: ClinicalErrorJudge, completions: Sequence[Any], reference: Sequence[Any] | None, kw: Mapping[str, Any]
) -> list[JudgeResult]:
    if reference is None:
        reference = kw.get("references")
    if reference is None:
        raise ValueError("the judge reward needs the `reference` column (reference reports)")
    cands = [_completion_text(c) for c in completions]
    refs = [r if isinstance(r, str) else _completion_text(r) for r in reference]
    results = judge.judge(cands, refs)
    log_metric = kw.get("log_metric")
    if callable(log_metric) and results:
        ok = [r for r in results if r.parsed]
        log_metric("judge/parse_rate", len(ok) / len(results))
        log_metric("judge/unparsed", float(len(results) - len(ok)))
        log_metric("judge/unparsed_total", float(judge.unparsed_count))
        log_metric("judge/cache_hit_rate", sum(r.cached for r in results) / len(results))
        if ok:
            log_metric("judge/significant_errors", sum(r.significant_total for r in ok) / len(ok))
        ins = [r.insignificant_total for r in results if r.insignificant_total is not None]
        if ins:
            log_metric("judge/insignificant_errors", sum(ins) / len(ins))
    return results


def judge_reward(
    completions: Sequence[Any],
    reference: Sequence[str] | None = None,
    *,
    judge: ClinicalErrorJudge | None = None,
    unparsed: float | None = None,
    **kw: Any,
) -> list[float | None]:
    """``1 / (1 + clinically significant errors)`` per completion (TRL reward signature).

    ``reference`` is the dataset column of reference reports (repeated per generation by TRL);
    completions may be strings or chat-message lists. ``judge`` defaults to
    :func:`set_default_judge`'s; without one, :class:`JudgeNotConfigured`. Pairs whose answer does
    not parse get ``unparsed`` (default ``None``: a missing reward, TRL's NaN). When TRL passes
    ``log_metric``, logs ``judge/parse_rate``, ``judge/unparsed`` (this batch), ``judge/unparsed_total``,
    ``judge/significant_errors``, ``judge/insignificant_errors`` and ``judge/cache_hit_rate``.

    >>> set_default_judge(None)
    >>> try:
    ...     judge_reward(["No acute findings."], ["Normal chest."])
    ... except JudgeNotConfigured as exc:
    ...     print(exc.config_key, "|", str(exc)[:66])
    reward.judge | the LLM clinical-error judge is not configured: set `reward.judge`
    """
    judge = judge or _default_judge
    if judge is None:
        raise JudgeNotConfigured()
    results = _judge_batch(judge, completions, reference, kw)
    return [r.reward if r.parsed else unparsed for r in results]


def make_judge_reward(
    judge: ClinicalErrorJudge | None, *, name: str = WEIGHT_KEY, unparsed: float | None = None
) -> Callable[..., list[float | None]]:


    """A TRL reward function bound to ``judge`` (``__name__`` = ``name``, used in TRL's logs).

    ``judge=None`` raises :class:`JudgeNotConfigured` now, not at the first training step. The
    returned function keeps the latest batch's :class:`JudgeResult` list in ``.last_results`` and
    counts in ``.judged`` / ``.unparsed`` (all calls; the judge's own counters are
    ``.judge.judged_count`` / ``.judge.unparsed_count``).

    ``unparsed=None`` (default) returns ``None`` for unparseable answers: a missing reward. TRL 1.16's
    GRPO turns it into NaN but then sums the weighted components with ``nansum``, which would count it
    as 0, the worst judge score; ``unirg-trainer rl`` therefore wraps this function with
    :func:`unirg.trainer.rl.missing_as_group_mean`, which leaves it out of its group.
    """
    if judge is None:
        raise JudgeNotConfigured()

    def reward(completions: Sequence[Any], reference: Sequence[str] | None = None, **kw: Any) -> list[float | None]:
        kw.pop("judge", None)
        results = _judge_batch(judge, completions, reference, kw)
        reward.last_results = results
        reward.judged += len(results)
        reward.unparsed += sum(not r.parsed for r in results)
        return [r.reward if r.parsed else unparsed for r in results]

    reward.__name__ = name
    reward.__qualname__ = name
    reward.judge = judge
    reward.last_results = []
    reward.judged = 0
    reward.unparsed = 0
    return reward
