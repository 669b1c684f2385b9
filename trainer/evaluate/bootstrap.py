"""Set-level statistics under patient (or report) bootstrap weights, per group: :func:`evaluate` and the
paired-bootstrap :func:`compare`."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unirg.model.chexpert import OBSERVATIONS
from unirg.trainer.data.sample import Sample
from unirg.trainer.evaluate.metrics import EvalConfig, Metric, Prediction, ReportScores, TOP5, score_reports
from unirg.trainer.evaluate.reporting import Comparison, EvalResult


# -- set-level statistics under bootstrap weights --------------------------------------------------------------
_OBS_ALL = np.arange(len(OBSERVATIONS))
_OBS_TOP5 = np.array([OBSERVATIONS.index(o) for o in TOP5])


def _wmean(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    num, den = w @ np.where(ok, x, 0.0), w @ ok.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp, fp, fn = tp[:, obs], fp[:, obs], fn[:, obs]
    den_micro = 2 * tp.sum(1) + fp.sum(1) + fn.sum(1)
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        micro = np.where(den_micro > 0, 2 * tp.sum(1) / np.where(den_micro > 0, den_micro, 1), np.nan)
        per_obs = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)
    present = (~np.isnan(per_obs)).sum(1)
    macro = np.where(present > 0, np.nansum(per_obs, 1) / np.maximum(present, 1), np.nan)
    return micro, macro


def statistics(scores: ReportScores, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every set-level metric for each row of ``weights`` ((B, n) report weights): ``{key: (B,)}``."""
    w = np.asarray(weights, dtype=float)
    out = {k: _wmean(w, v) for k, v in scores.values.items()
           if k not in ("radcliq_v1", "judge_errors", "judge_insignificant")}
    if "radcliq_v1" in scores.values:
        r = _wmean(w, scores.values["radcliq_v1"])
        out["radcliq_v1"] = r
        with np.errstate(divide="ignore", invalid="ignore"):
            out["inv_radcliq_v1"] = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), np.nan)
    c, r = scores.cand.astype(float), scores.ref.astype(float)
    tp, fp, fn = w @ (c * r), w @ (c * (1 - r)), w @ ((1 - c) * r)
    for n_obs, obs in ((14, _OBS_ALL), (5, _OBS_TOP5)):
        out[f"chexpert_micro_f1_{n_obs}"], out[f"chexpert_macro_f1_{n_obs}"] = _f1(tp, fp, fn, obs)
    if "judge_errors" in scores.values:
        e = scores.values["judge_errors"]
        out["judge_errors"] = _wmean(w, e)
        out["judge_ge4"] = _wmean(w, np.where(np.isnan(e), np.nan, (e >= 4).astype(float)))
        out["judge_insignificant"] = _wmean(w, scores.values["judge_insignificant"])
    return out


def bootstrap_weights(patient_ids: Sequence[str], n_boot: int, rng: np.random.Generator,
                      unit: str = "patient") -> np.ndarray:
    """(n_boot, n) report weights: how often each report is drawn when resampling patients (all of a
    patient's reports together) or reports, with replacement."""
    n = len(patient_ids)
    if unit == "report":
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    codes, index = np.unique(np.asarray(patient_ids), return_inverse=True)
    counts = rng.multinomial(len(codes), np.full(len(codes), 1.0 / len(codes)), size=n_boot)
    return counts[:, index].astype(float)


def _ci(samples: np.ndarray, level: float, *, strict: bool = False) -> tuple[float | None, float | None]:
    """Percentile interval of the non-NaN draws (``strict``: none at all when any draw is NaN)."""
    kept = samples[~np.isnan(samples)]
    if kept.size == 0 or (strict and kept.size < samples.size):
        return None, None
    lo, hi = np.percentile(kept, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _rng(seed: int, label: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def summarize(scores: ReportScores, metrics: Sequence[Metric], *, n_boot: int, seed: int, ci: float,
              resample: str, label: str = "overall", chunk: int = 250) -> dict[str, Any]:
    """``{"n", "n_patients", "metrics": {key: {"value", "ci_low", "ci_high"}}}`` of one set of reports."""
    point = {k: v[0] for k, v in statistics(scores, np.ones((1, len(scores)))).items()}
    draws: dict[str, list[np.ndarray]] = {k: [] for k in point}
    rng = _rng(seed, label)
    for start in range(0, n_boot, chunk):
        w = bootstrap_weights(scores.patient_ids, min(chunk, n_boot - start), rng, resample)
        for k, v in statistics(scores, w).items():
            draws[k].append(v)
    out = {}
    for m in metrics:
        if m.key not in point:
            continue
        lo = hi = None
        if n_boot:  # 1/RadCliQ-v1 is undefined on resamples whose mean RadCliQ-v1 is <= 0: no interval then
            lo, hi = _ci(np.concatenate(draws[m.key]), ci, strict=m.key == "inv_radcliq_v1")
        out[m.key] = {"value": _num(point[m.key]), "ci_low": lo, "ci_high": hi}
    return {"n": len(scores), "n_patients": len(set(scores.patient_ids)), "metrics": out}


def evaluate(samples: Sequence[Sample], predictions: Mapping[str, Prediction],
             config: EvalConfig | None = None, *, name: str = "run") -> EvalResult:
    """Score ``predictions`` (by sample id) against ``samples``; overall and per group, with CIs."""
    config = config or EvalConfig()
    scores, metrics, counts = score_reports(samples, predictions, config)
    kw = {"n_boot": config.n_boot, "seed": config.seed, "ci": config.ci, "resample": config.resample}
    overall = summarize(scores, metrics, label="overall", **kw)
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for g in config.groups:
        levels = scores.groups[g]
        groups[g] = {}
        for level in sorted(set(levels)):
            idx = [i for i, v in enumerate(levels) if v == level]
            groups[g][level] = summarize(scores.subset(idx), metrics, label=f"{g}={level}", **kw)
    info = {"config": config.describe(), "counts": counts,
            "bootstrap": f"{config.n_boot} percentile resamples of {config.resample}s, seed {config.seed}, "
                         f"{round(config.ci * 100)}% CI"}
    return EvalResult(name, metrics, overall, groups, info, scores)


def compare(runs: Mapping[str, EvalResult], *, baseline: str | None = None,
            groups: Sequence[str] = ("institution",), n_boot: int | None = None, seed: int | None = None,
            ci: float | None = None, resample: str | None = None) -> Comparison:
    """Compare runs evaluated on the same samples (e.g. ``{"SFT": r1, "SFT+RL": r2}``).

    Every run is rescored on the reports all runs share, overall and per level of ``groups``, with the *same*
    bootstrap resamples for every run, so the CI of each difference to ``baseline`` (default: the first run)
    is paired. Bootstrap settings default to the baseline's.
    """
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    names = list(runs)
    baseline = baseline or names[0]
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    missing = [n for n, r in runs.items() if r.scores is None]
    if missing:
        raise ValueError(f"runs {missing} have no per-report scores (saved without reports?)")
    cfg = runs[baseline].info.get("config", {})
    n_boot = cfg.get("n_boot", 1000) if n_boot is None else n_boot
    seed = cfg.get("seed", 0) if seed is None else seed
    ci = cfg.get("ci", 0.95) if ci is None else ci
    resample = resample or cfg.get("resample", "patient")
    shared = set.intersection(*(set(r.scores.sample_ids) for r in runs.values()))
    common = [s for s in runs[baseline].scores.sample_ids if s in shared]
    if not common:
        raise ValueError("the runs share no sample_id")
    aligned = {}
    for n, r in runs.items():
        pos = {s: i for i, s in enumerate(r.scores.sample_ids)}
        aligned[n] = r.scores.subset([pos[s] for s in common])
    keys = [m.key for m in runs[baseline].metrics if all(any(x.key == m.key for x in r.metrics) for r in runs.values())]
    metrics = [m for m in runs[baseline].metrics if m.key in keys]
    base = aligned[baseline]
    selections = [("overall", np.arange(len(common)))]
    for g in groups:
        if g not in base.groups:
            raise ValueError(f"group {g!r} was not computed in the runs (have {sorted(base.groups)})")
        levels = base.groups[g]
        for level in sorted(set(levels)):
            selections.append((f"{g} = {level}", np.array([i for i, v in enumerate(levels) if v == level])))
    blocks = []
    for label, idx in selections:
        subsets = {n: s.subset(idx) for n, s in aligned.items()}
        point = {n: statistics(s, np.ones((1, len(idx)))) for n, s in subsets.items()}
        rng = _rng(seed, "compare:" + label)
        draws: dict[str, dict[str, list[np.ndarray]]] = {n: {k: [] for k in keys} for n in names}
        for start in range(0, n_boot, 250):
            w = bootstrap_weights(subsets[baseline].patient_ids, min(250, n_boot - start), rng, resample)
            for n, s in subsets.items():
                stats = statistics(s, w)
                for k in keys:
                    draws[n][k].append(stats[k])
        cells = {}
        for k in keys:
            samples = {n: np.concatenate(draws[n][k]) if draws[n][k] else np.array([]) for n in names}
            run_cells = {}
            for n in names:
                lo, hi = _ci(samples[n], ci, strict=k == "inv_radcliq_v1") if n_boot else (None, None)
                run_cells[n] = {"value": _num(point[n][k][0]), "ci_low": lo, "ci_high": hi}
            delta = {}
            for n in names:
                if n == baseline:
                    continue
                v = point[n][k][0] - point[baseline][k][0]
                lo, hi = (_ci(samples[n] - samples[baseline], ci, strict=k == "inv_radcliq_v1") if n_boot
                          else (None, None))
                delta[n] = {"value": _num(v), "ci_low": lo, "ci_high": hi}
            cells[k] = {"runs": run_cells, "delta": delta}
        blocks.append({"group": label, "n": len(idx), "n_patients": len(set(subsets[baseline].patient_ids)),
                       "metrics": cells})
    info = {"bootstrap": f"{n_boot} paired percentile resamples of {resample}s, seed {seed}, {round(ci * 100)}% CI",
            "shared_reports": len(common),
            "left_out": {n: len(r.scores) - len(common) for n, r in runs.items()}}
    return Comparison(names, baseline, metrics, blocks, info)
