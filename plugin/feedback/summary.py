"""Summaries of draft/final pairs: pure arithmetic, no database (``unirg feedback`` and the status page).

:func:`summarize` takes the pairs (``unirg.model.feedback.FeedbackRecord`` objects or dicts with the same
keys: ``model_version``, ``label_agreement``, ``scores``, ``paired_at``) and returns::

    {
      "n": 12,                                    # pairs summarized
      "by_version": {                             # one entry per model_version, sorted by name
        "unirg-demo 1": {
          "n": 7,
          "agreement": {"mean": 0.91, "ci_low": 0.86, "ci_high": 0.95},  # 95% percentile bootstrap CI
          "bleu2": 0.31, "rouge_l": 0.42,          # means over the pairs (None: no value)
          "embedding_similarity": 0.77,            # mean over pairs that have one (None: none has)
          "by_observation": {...},                 # as below, this version only
        },
      },
      "by_observation": {                         # all versions, every CheXpert-14 observation in order
        "Edema": {"agreement": 0.92,               # share of pairs with the same label for it
                  "missed": 1, "false": 0, "uncertain": 0},  # pairs where it was discordant so
      },
      "by_day": {                                 # agreement over time (UTC day of pairing) per version
        "unirg-demo 1": [{"day": "2026-12-03", "n": 7, "agreement": 0.91}],
      },
    }

The CI resamples pairs with replacement (``n_boot`` times, seeded: the same pairs give the same interval);
with one pair it is that pair's agreement on both sides.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from unirg.model.chexpert import OBSERVATIONS

__all__ = ["bootstrap_ci", "summarize", "by_observation"]

_KINDS = ("missed", "false", "uncertain")


def _get(record: Any, key: str, default: Any = None) -> Any:
    if isinstance(record, Mapping):
        return record.get(key, default)
    return getattr(record, key, default)


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float | None]:
    """Mean and percentile bootstrap CI of ``values``.

    >>> bootstrap_ci([1.0, 1.0])
    {'mean': 1.0, 'ci_low': 1.0, 'ci_high': 1.0}
    >>> bootstrap_ci([])
    {'mean': None, 'ci_low': None, 'ci_high': None}
    """
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None}
    arr = np.asarray(values, dtype=float)
    means = np.random.default_rng(seed).choice(arr, size=(n_boot, arr.size), replace=True).mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return {"mean": float(arr.mean()), "ci_low": float(np.percentile(means, tail)),
            "ci_high": float(np.percentile(means, 100 - tail))}


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _state(value: Any) -> int:
    return 0 if value is None else int(value)


def by_observation(records: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per CheXpert observation: share of pairs whose draft and final labels agree (not mentioned =
    negative), and in how many pairs it was missed, false or uncertain (see ``discordant``)."""
    out: dict[str, dict[str, Any]] = {}
    for obs in OBSERVATIONS:
        same = 0
        counts = dict.fromkeys(_KINDS, 0)
        for r in records:
            scores = _get(r, "scores") or {}
            d = _state((scores.get("draft_labels") or {}).get(obs))
            f = _state((scores.get("final_labels") or {}).get(obs))
            same += d == f
            for kind in _KINDS:
                counts[kind] += obs in ((scores.get("discordant") or {}).get(kind) or ())
        out[obs] = {"agreement": same / len(records) if records else None, **counts}
    return out


def _day(paired_at: Any) -> str:
    return dt.datetime.fromtimestamp(float(paired_at or 0), dt.timezone.utc).strftime("%Y-%m-%d")


def summarize(records: Iterable[Any], *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The summary of ``records`` (the shape is in the module docstring)."""
    records = list(records)
    versions: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        versions[str(_get(r, "model_version") or "unknown")].append(r)
    by_version: dict[str, Any] = {}
    by_day: dict[str, list[dict[str, Any]]] = {}
    for version in sorted(versions):
        rows = versions[version]
        agreement = [float(_get(r, "label_agreement")) for r in rows]
        scores = [_get(r, "scores") or {} for r in rows]
        by_version[version] = {
            "n": len(rows),
            "agreement": bootstrap_ci(agreement, n_boot=n_boot, seed=seed),
            "bleu2": _mean(s.get("bleu2") for s in scores),
            "rouge_l": _mean(s.get("rouge_l") for s in scores),
            "embedding_similarity": _mean(s.get("embedding_similarity") for s in scores),
            "by_observation": by_observation(rows),
        }
        days: dict[str, list[float]] = defaultdict(list)
        for r, a in zip(rows, agreement):
            days[_day(_get(r, "paired_at"))].append(a)
        by_day[version] = [{"day": d, "n": len(v), "agreement": sum(v) / len(v)} for d, v in sorted(days.items())]
    return {"n": len(records), "by_version": by_version, "by_observation": by_observation(records),
            "by_day": by_day}
