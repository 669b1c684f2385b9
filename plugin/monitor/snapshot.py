"""One snapshot of what unirg is doing, read from the queue database: the status page and ``/metrics`` are
both pure functions of it (:func:`unirg.plugin.monitor.page.render_page`,
:func:`unirg.plugin.monitor.metrics.metrics_text`).

Everything comes from the database at read time (the worker, the listener and the web server may be
different processes, or different machines with PostgreSQL): jobs (``unirg_jobs``), study states
(``unirg_studies``) and draft/final pairs (``unirg_feedback``, :mod:`unirg.model.feedback`).

Shape of the snapshot (all JSON-serialisable; times are epoch seconds, days and hours UTC)::

    {"generated_at": 1764770000.0, "research_label": "AI DRAFT - RESEARCH ONLY - ...",
     "queue": {"queued": 1, "retrying": 0, "in_flight": 0, "done": 3, "failed": 1},
     "studies": {"done": 3, "failed": 1, ...},
     "drafts": {"total": 3, "by_model_version": {"1.0": 3}, "last_24h": 3,
                "per_hour": [{"start": 1764684000.0, "count": 0}, ...24 items, oldest first]},
     "latency": {"stable_to_stored_s": LAT, "model_s": LAT, "job_s": LAT},
     "failures": {"total": 1, "by_reason": {"write-back failed": 1},
                  "recent": [{"id", "study_uid", "revision", "attempts", "reason", "at"}, ...],
                  "retrying": [...same, jobs that failed and wait for their next attempt]},
     "agreement": {"pairs": 2, "by_version": {"1.0": AGR}, "by_observation": {"Edema": OBS, ...},
                   "by_observation_version": {"1.0": {"Edema": OBS, ...}},
                   "by_day": [{"day": "2026-12-03", "model_version": "1.0", "n": 2, "mean": 0.93}, ...],
                   "by_observation_day": {"2026-12-03": {"Edema": OBS, ...}, ...}}}   (the last 7 days with pairs)

    LAT = {"count": 3, "sum": 12.5, "p50": 4.0, "p90": 6.1, "max": 6.5, "buckets": [[1.0, 0], ..., ["+Inf", 3]]}
    AGR = {"n": 2, "mean": 0.93, "ci_low": 0.86, "ci_high": 1.0, "min": 0.86, "max": 1.0, "sum": 1.86,
           "bleu2": 0.3, "rouge_l": 0.4, "embedding_similarity": None, "buckets": [[0.5, 0], ..., ["+Inf", 2]]}
    OBS = {"agreement": 0.5, "missed": 1, "false": 0, "uncertain": 0}

The agreement arithmetic (bootstrap CI, per observation from the pairs' CheXpert labels, per day) is
:func:`unirg.plugin.feedback.summary.summarize`, the same as ``unirg feedback`` prints; this module adds
the histogram buckets and the per-day observation table.

Latency "stable to stored" is a done job's ``updated_at - created_at``: from the moment the study was
judged complete (Orthanc's StableAge, or the listener's inactivity timeout) and queued, to the moment
the SR was stored and the job marked done (retries and their backoff included). "model" is the job
result's ``pipeline_s`` (the model alone), "job" its ``total_s`` (reading, priors, model, storing).
Buckets are cumulative (Prometheus histogram buckets).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Engine

__all__ = ["LATENCY_BUCKETS", "MODEL_BUCKETS", "AGREEMENT_BUCKETS", "read_snapshot", "build_snapshot",
           "reason_class", "latency_summary", "agreement_summary"]

#: Upper bounds (seconds) of the latency histogram buckets: study stable -> SR stored, and job time.
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Upper bounds (seconds) of the model-time histogram buckets.
MODEL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Upper bounds of the label-agreement histogram buckets (share of the 14 observations).
AGREEMENT_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
UNKNOWN_VERSION = "unknown"
#: Days of the per-observation agreement table (the most recent days that have pairs).
OBSERVATION_DAYS = 7


def reason_class(reason: str | None) -> str:
    """A short, low-cardinality failure reason: the text before the first ``:`` (UIDs, paths and
    exception messages dropped), at most 80 characters.

    >>> reason_class("write-back failed: PACS@127.0.0.1:11112 refused the association")
    'write-back failed'
    >>> reason_class("no stored CR/DX image for this study")
    'no stored CR/DX image for this study'
    >>> reason_class(None)
    '(no reason recorded)'
    """
    text = (reason or "").strip()
    if not text:
        return "(no reason recorded)"
    return text.split(":", 1)[0].strip()[:80] or "(no reason recorded)"


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile of sorted ``values`` (None when empty)."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _buckets(values: Sequence[float], bounds: Sequence[float]) -> list[list[Any]]:
    out: list[list[Any]] = [[b, sum(1 for v in values if v <= b)] for b in bounds]
    out.append(["+Inf", len(values)])
    return out


def latency_summary(values: Iterable[float], bounds: Sequence[float] = LATENCY_BUCKETS) -> dict[str, Any]:
    """Count, sum, median, 90th percentile, maximum and cumulative buckets of ``values``.

    >>> s = latency_summary([1.0, 3.0, 8.0], (2.0, 5.0))
    >>> s["count"], s["sum"], s["p50"], s["buckets"]
    (3, 12.0, 3.0, [[2.0, 1], [5.0, 2], ['+Inf', 3]])
    """
    vals = sorted(float(v) for v in values)
    return {"count": len(vals), "sum": round(sum(vals), 6), "p50": _quantile(vals, 0.5),
            "p90": _quantile(vals, 0.9), "max": vals[-1] if vals else None, "buckets": _buckets(vals, bounds)}


def agreement_summary(values: Iterable[float]) -> dict[str, Any]:
    """n, min, max, sum and cumulative buckets (:data:`AGREEMENT_BUCKETS`) of label agreements."""
    vals = sorted(float(v) for v in values)
    return {"n": len(vals), "min": vals[0] if vals else None, "max": vals[-1] if vals else None,
            "sum": round(sum(vals), 6), "buckets": _buckets(vals, AGREEMENT_BUCKETS)}


def _agreement(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from unirg.plugin.feedback.summary import by_observation, summarize

    summary = summarize(pairs)
    by_version = {}
    for version, s in summary["by_version"].items():
        rows = [p for p in pairs if (p.get("model_version") or UNKNOWN_VERSION) == version]
        by_version[version] = {**agreement_summary(p["label_agreement"] for p in rows), **s["agreement"],
                               **{k: s.get(k) for k in ("bleu2", "rouge_l", "embedding_similarity")}}
    days: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in pairs:
        days[_day(p["paired_at"])].append(p)
    recent = sorted(days)[-OBSERVATION_DAYS:]
    return {
        "pairs": summary["n"],
        "by_version": by_version,
        "by_observation": summary["by_observation"],
        "by_observation_version": {v: s["by_observation"] for v, s in summary["by_version"].items()},
        "by_day": sorted(({"day": d["day"], "model_version": v, "n": d["n"], "mean": d["agreement"]}
                          for v, ds in summary["by_day"].items() for d in ds),
                         key=lambda d: (d["day"], d["model_version"])),
        "by_observation_day": {d: by_observation(days[d]) for d in recent},
    }


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def build_snapshot(jobs: Sequence[Mapping[str, Any]], pairs: Sequence[Mapping[str, Any]], *, now: float,
                   queue: Mapping[str, int] | None = None, studies: Mapping[str, int] | None = None,
                   research_label: str = "") -> dict[str, Any]:
    """The snapshot (module docstring) from plain rows: pure, no database.

    ``jobs``: job rows with ``id, study_uid, revision, state, attempts, last_error, result`` (decoded
    dict or None), ``created_at, updated_at``. ``pairs``: feedback rows with ``model_version,
    label_agreement, scores`` (decoded), ``paired_at``. ``queue``: the queue's counts (default: counted
    from ``jobs``).
    """
    done = [j for j in jobs if j["state"] == "done"]
    dead = [j for j in jobs if j["state"] == "dead"]
    if queue is None:
        queue = {"queued": sum(j["state"] == "queued" for j in jobs),
                 "retrying": sum(j["state"] == "queued" and j["attempts"] > 0 for j in jobs),
                 "in_flight": sum(j["state"] == "running" for j in jobs), "done": len(done), "failed": len(dead)}

    # drafts: per model version, per hour over the last 24 h (aligned to UTC hours, oldest first)
    by_version = Counter((j.get("result") or {}).get("model_version") or UNKNOWN_VERSION for j in done)
    this_hour = math.floor(now / 3600) * 3600
    hours = [this_hour - 3600 * k for k in range(23, -1, -1)]
    per_hour = Counter(math.floor(j["updated_at"] / 3600) * 3600 for j in done if j["updated_at"] > hours[0])

    results = [j.get("result") or {} for j in done]

    def _fail_item(j: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": j["id"], "study_uid": j["study_uid"], "revision": j["revision"], "attempts": j["attempts"],
                "reason": j.get("last_error") or "(no reason recorded)", "at": j["updated_at"]}

    newest_first = sorted(dead, key=lambda j: (-j["updated_at"], -j["id"]))
    retrying = sorted((j for j in jobs if j["state"] == "queued" and j["attempts"] > 0),
                      key=lambda j: (-j["updated_at"], -j["id"]))

    return {
        "generated_at": now,
        "research_label": research_label,
        "queue": dict(queue),
        "studies": dict(studies or {}),
        "drafts": {
            "total": len(done),
            "by_model_version": dict(sorted(by_version.items())),
            "last_24h": sum(per_hour[h] for h in hours),
            "per_hour": [{"start": float(h), "count": per_hour[h]} for h in hours],
        },
        "latency": {
            "stable_to_stored_s": latency_summary(
                max(j["updated_at"] - j["created_at"], 0.0) for j in done),
            "model_s": latency_summary((r["pipeline_s"] for r in results if r.get("pipeline_s") is not None),
                                       MODEL_BUCKETS),
            "job_s": latency_summary(r["total_s"] for r in results if r.get("total_s") is not None),
        },
        "failures": {
            "total": len(dead),
            "by_reason": dict(Counter(reason_class(j.get("last_error")) for j in dead).most_common()),
            "recent": [_fail_item(j) for j in newest_first[:20]],
            "retrying": [_fail_item(j) for j in retrying[:20]],
        },
        "agreement": _agreement(pairs),
    }


# -- the database edge ------------------------------------------------------------------------------------
def read_snapshot(engine: Engine, *, now: float | None = None) -> dict[str, Any]:
    """The snapshot of the queue database on ``engine`` (creates missing tables, as every unirg command does)."""
    from unirg.model.feedback import read_pairs
    from unirg.plugin.assemble import StudyLedger
    from unirg.plugin.queue import JobQueue
    from unirg.sr_writer import RESEARCH_LABEL

    queue, ledger = JobQueue(engine), StudyLedger(engine)
    queue.create_schema()
    ledger.create_schema()
    counts = queue.counts()
    pairs = [{"model_version": r.model_version, "label_agreement": r.label_agreement, "scores": r.scores,
              "paired_at": r.paired_at} for r in read_pairs(engine)]
    return build_snapshot(
        queue.all_jobs(), pairs, now=time.time() if now is None else now, queue=counts.as_dict(),
        studies=ledger.state_counts(), research_label=RESEARCH_LABEL)
