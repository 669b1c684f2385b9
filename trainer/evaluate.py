"""ReXrank-style evaluation of report generators, with bootstrap confidence intervals.

:func:`evaluate` scores predicted reports against the references of a list of
:class:`~unirg.trainer.data.Sample` and returns an :class:`EvalResult`: every metric overall and by
institution, sex, age band and with / without a prior study, each with a bootstrap CI. ``result.save(dir)``
writes ``eval.json``, ``eval.md`` and ``eval.png``. :func:`compare` puts several runs side by side (e.g. SFT
vs SFT+RL) with *paired* bootstrap CIs of the differences.

Metrics (``higher`` is better unless marked ↓):

==========================  ====================================================================  ==========
key                         what                                                                  real?
==========================  ====================================================================  ==========
``bleu2``                   sentence BLEU-2 (sacrebleu), mean over reports                        real
``rouge_l``                 ROUGE-L F (rouge-score), mean over reports                            real
``semantic``                BERTScore F1 with a local model when given, else the cosine of        BERTScore: real;
                            all-MiniLM-L6-v2 sentence embeddings ("Embedding cosine")              cosine: substitute
``semb``                    SembScore substitute: cosine of the labeler's 14-label vectors        substitute
``radgraph``                RadGraph-F1 substitute: labeler entity / laterality overlap F1        substitute
``radcliq_v1`` ↓            RadCliQ-v1: published scaler + coefficients on (RadGraph, BERTScore,  as its parts
                            SembScore, BLEU-2) per report, mean over reports
``inv_radcliq_v1``          1 / RadCliQ-v1 (ReXrank's column); undefined when RadCliQ-v1 <= 0
``chexpert_micro_f1_14``    CheXpert-14 F1 over the whole set: TP / FP / FN summed over reports   rule-based
``chexpert_macro_f1_14``    and observations (micro), or per observation then averaged (macro);   labeler
``chexpert_micro_f1_5``     ``_5``: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural      (not CheXbert)
``chexpert_macro_f1_5``     Effusion. Uncertain counts as positive (ReXrank's convention).
``judge_errors`` ↓          clinically significant errors per report (LLM judge, when given)
``judge_ge4`` ↓             share of reports with >= 4 significant errors
``judge_insignificant`` ↓   clinically insignificant errors per report
==========================  ====================================================================  ==========

The substitutes (model-free, from :mod:`unirg.trainer.rewards.clinical`) stand in for scorers whose models
(CheXbert, RadGraph) cannot be downloaded here; pass ``EvalConfig(semb_scorer=..., radgraph_scorer=...)``
to plug in real ones. They are not comparable with published numbers, and neither is a RadCliQ-v1 computed
from them: its label then says "(substitute components)". Macro F1 averages the observations that occur
(TP + FP + FN > 0) in the set; observations absent from both predictions and references are left out
(sklearn would count them as 0).

Confidence intervals: percentile bootstrap, ``n_boot`` resamples (default 1000), seeded. By default whole
**patients** are resampled (all of a patient's reports together, since they are correlated); ``resample=
"report"`` resamples reports. Set-level metrics (CheXpert F1, RadCliQ-v1's mean) are recomputed on every
resample, not averaged per pair.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from unirg.trainer.chexpert import OBSERVATIONS
from unirg.trainer.data.sample import Sample, section_text
from unirg.trainer.data.study import study_input

logger = logging.getLogger(__name__)

SECTIONS = ("findings", "impression", "both")
GROUPS: dict[str, Callable[[Sample], str]] = {
    "institution": lambda s: s.institution or "unknown",
    "sex": lambda s: s.sex or "unknown",
    "age_band": lambda s: s.age_band,
    "prior": lambda s: "with prior" if s.has_prior else "without prior",
    "source": lambda s: s.source or "unknown",
}
DEFAULT_GROUPS = ("institution", "sex", "age_band", "prior")
TOP5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# RadCliQ-v1 (rajpurkarlab/CXR-Report-Metric, radcliq-v1 model; parameters as reproduced by RadEval):
# standard-scale (RadGraph-F1, BERTScore, SembScore, BLEU-2) then a linear model; lower is better.
RADCLIQ_V1_COMPONENTS = ("radgraph", "semantic", "semb", "bleu2")
RADCLIQ_V1_MEAN = np.array([0.53792312, 0.61757256, 0.76479421, 0.44738335])
RADCLIQ_V1_SCALE = np.array([0.30282584, 0.22430938, 0.25394391, 0.29892717])
RADCLIQ_V1_COEF = np.array([-0.377083683, -0.370300100, -0.252616218, 4.31504841e-12])
RADCLIQ_V1_INTERCEPT = 2.46655256e-10

PairScorer = Callable[[Sequence[str], Sequence[str]], Sequence[float | None]]


# -- predictions ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """A predicted report of one sample."""

    sample_id: str
    findings: str = ""
    impression: str = ""

    def text(self, section: str = "findings") -> str:
        return section_text(self.findings, self.impression, section)


_IMPRESSION_RE = re.compile(r"\bimpression\s*:", re.IGNORECASE)
_FINDINGS_RE = re.compile(r"^\s*findings\s*:\s*", re.IGNORECASE)


def split_report(text: str) -> tuple[str, str]:
    """(findings, impression) of a "Findings: ... Impression: ..." text (all findings when unlabelled).

    >>> split_report("Findings: Clear lungs. Impression: Normal.")
    ('Clear lungs.', 'Normal.')
    """
    m = _IMPRESSION_RE.search(text)
    findings, impression = (text[: m.start()], text[m.end():]) if m else (text, "")
    return _FINDINGS_RE.sub("", findings).strip(), impression.strip()


def read_predictions(path: str | os.PathLike[str]) -> dict[str, Prediction]:
    """Predictions from JSONL: ``{"sample_id", "findings", "impression"}`` per line (or ``"report"``: one
    "Findings: ... Impression: ..." text). A repeated sample_id is an error."""
    out: dict[str, Prediction] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            sid = str(rec.get("sample_id") or "").strip()
            if not sid:
                raise ValueError(f"{path}:{number}: missing sample_id")
            if sid in out:
                raise ValueError(f"{path}:{number}: sample_id {sid!r} appears twice")
            findings, impression = rec.get("findings"), rec.get("impression")
            if findings is None and impression is None and rec.get("report") is not None:
                findings, impression = split_report(str(rec["report"]))
            out[sid] = Prediction(sid, str(findings or ""), str(impression or ""))
    return out


def write_predictions(predictions: Iterable[Prediction], path: str | os.PathLike[str]) -> Path:
    """Write predictions as JSONL (the format :func:`read_predictions` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for p in predictions:
            f.write(json.dumps(dataclasses.asdict(p)) + "\n")
    return path


# -- configuration and metric descriptions ---------------------------------------------------------------------
@dataclass
class EvalConfig:
    """How to evaluate. ``judge`` is a :class:`~unirg.trainer.rewards.judge.ClinicalErrorJudge` or ``None``;
    ``semb_scorer`` / ``radgraph_scorer`` replace the substitutes with real scorers ``f(cands, refs)``."""

    section: str = "findings"
    n_boot: int = 1000
    seed: int = 0
    resample: str = "patient"
    ci: float = 0.95
    groups: tuple[str, ...] = DEFAULT_GROUPS
    semantic: str = "auto"
    embedding_model: str | None = None
    bertscore_model: str | None = None
    bertscore_layers: int | None = None
    uncertain: str = "positive"
    judge: Any = field(default=None, repr=False)
    semb_scorer: PairScorer | None = field(default=None, repr=False)
    radgraph_scorer: PairScorer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"section must be one of {SECTIONS}, got {self.section!r}")
        if self.resample not in ("patient", "report"):
            raise ValueError(f"resample must be 'patient' or 'report', got {self.resample!r}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if not 0 < self.ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {self.ci}")
        if self.semantic not in ("auto", "bertscore", "embedding", "none"):
            raise ValueError(f"semantic must be auto, bertscore, embedding or none, got {self.semantic!r}")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown groups {unknown}; known: {', '.join(GROUPS)}")
        if self.uncertain not in ("positive", "negative"):
            raise ValueError(f"uncertain must be 'positive' or 'negative', got {self.uncertain!r}")

    def describe(self) -> dict[str, Any]:
        """The JSON-able settings (no judge / scorer objects)."""
        d = {k: getattr(self, k) for k in ("section", "n_boot", "seed", "resample", "ci", "semantic",
                                            "embedding_model", "bertscore_model", "bertscore_layers", "uncertain")}
        d["groups"] = list(self.groups)
        d["judge"] = getattr(self.judge, "judge_id", None) if self.judge is not None else None
        return d


@dataclass(frozen=True)
class Metric:
    """A column of the table."""

    key: str
    label: str
    higher_is_better: bool = True
    real: bool = True
    note: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


# -- per-report scores -----------------------------------------------------------------------------------------
@dataclass
class ReportScores:
    """Per-report data every set-level metric is computed from (also what :func:`compare` pairs on)."""

    sample_ids: list[str]
    patient_ids: list[str]
    groups: dict[str, list[str]]
    values: dict[str, np.ndarray]  # per-report scores, NaN where missing
    cand: np.ndarray  # (n, 14) bool: observation positive in the prediction
    ref: np.ndarray  # (n, 14) bool: observation positive in the reference
    candidates: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> ReportScores:
        idx = np.asarray(index, dtype=int)
        pick = lambda seq: [seq[i] for i in idx] if seq else []  # noqa: E731
        return ReportScores(pick(self.sample_ids), pick(self.patient_ids),
                            {k: pick(v) for k, v in self.groups.items()},
                            {k: v[idx] for k, v in self.values.items()}, self.cand[idx], self.ref[idx],
                            pick(self.candidates), pick(self.references))

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-able dict per report."""
        bits = lambda row: "".join("1" if b else "0" for b in row)  # noqa: E731
        out = []
        for i, sid in enumerate(self.sample_ids):
            out.append({
                "sample_id": sid, "patient_id": self.patient_ids[i],
                "groups": {k: v[i] for k, v in self.groups.items()},
                "scores": {k: (None if math.isnan(v[i]) else float(v[i])) for k, v in self.values.items()},
                "cand_positive": bits(self.cand[i]), "ref_positive": bits(self.ref[i]),
                "candidate": self.candidates[i] if self.candidates else None,
                "reference": self.references[i] if self.references else None,
            })
        return out

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ReportScores:
        keys = sorted({k for r in rows for k in r["scores"]})
        group_keys = sorted({k for r in rows for k in r["groups"]})
        bits = lambda s: [c == "1" for c in s]  # noqa: E731
        return cls(
            [r["sample_id"] for r in rows], [r["patient_id"] for r in rows],
            {g: [r["groups"].get(g, "unknown") for r in rows] for g in group_keys},
            {k: np.array([np.nan if r["scores"].get(k) is None else r["scores"][k] for r in rows], dtype=float)
             for k in keys},
            np.array([bits(r["cand_positive"]) for r in rows], dtype=bool).reshape(len(rows), len(OBSERVATIONS)),
            np.array([bits(r["ref_positive"]) for r in rows], dtype=bool).reshape(len(rows), len(OBSERVATIONS)),
            [r.get("candidate") or "" for r in rows], [r.get("reference") or "" for r in rows],
        )


@lru_cache(maxsize=65536)
def _labels(text: str) -> tuple[int | None, ...]:
    from unirg.trainer.labeler import label_report

    labels = label_report(text)
    return tuple(labels[o] for o in OBSERVATIONS)


def _positives(texts: Sequence[str], uncertain: str) -> np.ndarray:
    """(n, 14) bool: observations the labeler finds positive (and uncertain, when counted as positive)."""
    wanted = {1, -1} if uncertain == "positive" else {1}
    return np.array([[v in wanted for v in _labels(t)] for t in texts], dtype=bool).reshape(len(texts),
                                                                                              len(OBSERVATIONS))


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _semantic(config: EvalConfig) -> tuple[Any, Metric] | None:
    """The semantic scorer and its column, or ``None``."""
    from unirg.trainer.rewards import BERTScore, EmbeddingCosine

    if config.semantic in ("auto", "bertscore") and config.bertscore_model:
        if config.bertscore_layers is None:
            raise ValueError("BERTScore with a local model needs bertscore_layers (the layer to use)")
        scorer = BERTScore(config.bertscore_model, num_layers=config.bertscore_layers)
        name = Path(config.bertscore_model).name
        return scorer, Metric("semantic", f"BERTScore ({name})", note="local model, no baseline rescaling")
    if config.semantic == "bertscore":
        raise ValueError("semantic='bertscore' needs bertscore_model (a local checkpoint path)")
    if config.semantic in ("auto", "embedding"):
        try:
            scorer = EmbeddingCosine(config.embedding_model)
            if config.embedding_model is None:
                from unirg.trainer.rewards import default_embedding_model_path

                default_embedding_model_path()
        except (FileNotFoundError, ImportError) as exc:
            if config.semantic == "embedding":
                raise
            logger.warning("no semantic score: %s", exc)
            return None
        name = Path(config.embedding_model).name if config.embedding_model else "all-MiniLM-L6-v2"
        return scorer, Metric("semantic", f"Embedding cosine ({name})", real=False,
                              note="sentence-embedding cosine, substitute for BERTScore")
    return None


def radcliq_v1(radgraph: np.ndarray, semantic: np.ndarray, semb: np.ndarray, bleu2: np.ndarray) -> np.ndarray:
    """Per-report RadCliQ-v1 (lower is better) from its four components (BERTScore = ``semantic``).

    >>> float(radcliq_v1(*(np.array([m]) for m in RADCLIQ_V1_MEAN))[0]) < 1e-9
    True
    """
    x = np.column_stack([radgraph, semantic, semb, bleu2]).astype(float)
    return ((x - RADCLIQ_V1_MEAN) / RADCLIQ_V1_SCALE) @ RADCLIQ_V1_COEF + RADCLIQ_V1_INTERCEPT


def score_reports(samples: Sequence[Sample], predictions: Mapping[str, Prediction],
                  config: EvalConfig) -> tuple[ReportScores, list[Metric], dict[str, Any]]:
    """Score every sample that has a prediction and a non-empty reference section.

    Returns the per-report scores, the metric columns (in table order) and counts of what was left out.
    """
    from unirg.trainer.rewards import bleu2, radgraph_substitute, rouge_l, semb_substitute

    kept = [s for s in samples if s.sample_id in predictions and s.text(config.section)]
    counts = {
        "samples": len(samples),
        "without_prediction": sum(1 for s in samples if s.sample_id not in predictions),
        "empty_reference": sum(1 for s in samples if s.sample_id in predictions and not s.text(config.section)),
        "predictions_without_sample": len(set(predictions) - {s.sample_id for s in samples}),
    }
    if not kept:
        raise ValueError(f"nothing to evaluate: {counts['samples']} samples, {len(predictions)} predictions, "
                         f"{counts['without_prediction']} samples without a prediction, "
                         f"{counts['empty_reference']} with an empty {config.section} reference")
    cands = [predictions[s.sample_id].text(config.section) for s in kept]
    refs = [s.text(config.section) for s in kept]
    values: dict[str, np.ndarray] = {
        "bleu2": _floats([bleu2(c, r) for c, r in zip(cands, refs, strict=True)]),
        "rouge_l": _floats([rouge_l(c, r) for c, r in zip(cands, refs, strict=True)]),
    }
    metrics = [Metric("bleu2", "BLEU-2"), Metric("rouge_l", "ROUGE-L")]
    semantic = _semantic(config)
    if semantic is not None:
        scorer, metric = semantic
        values["semantic"] = _floats(scorer.score(cands, refs))
        metrics.append(metric)
    if config.semb_scorer is not None:
        values["semb"] = _floats(config.semb_scorer(cands, refs))
        metrics.append(Metric("semb", "SembScore"))
    else:
        values["semb"] = _floats([semb_substitute(c, r) for c, r in zip(cands, refs, strict=True)])
        metrics.append(Metric("semb", "SembScore substitute", real=False,
                              note="cosine of the rule-based labeler's 14-label vectors, not CheXbert embeddings"))
    if config.radgraph_scorer is not None:
        values["radgraph"] = _floats(config.radgraph_scorer(cands, refs))
        metrics.append(Metric("radgraph", "RadGraph-F1"))
    else:
        values["radgraph"] = _floats([radgraph_substitute(c, r) for c, r in zip(cands, refs, strict=True)])
        metrics.append(Metric("radgraph", "RadGraph-F1 substitute", real=False,
                              note="F1 of the labeler's entities (observation, label, laterality), not RadGraph"))
    if "semantic" in values:
        values["radcliq_v1"] = radcliq_v1(**{k: values[k] for k in RADCLIQ_V1_COMPONENTS})
        real = all(m.real for m in metrics if m.key in RADCLIQ_V1_COMPONENTS)
        suffix = "" if real else " (substitute components)"
        note = "published scaler and coefficients applied to " + ", ".join(
            m.label for m in metrics if m.key in RADCLIQ_V1_COMPONENTS)
        metrics += [Metric("radcliq_v1", "RadCliQ-v1" + suffix, higher_is_better=False, real=real, note=note),
                    Metric("inv_radcliq_v1", "1/RadCliQ-v1" + suffix, real=real,
                           note="1 / mean RadCliQ-v1; undefined when that mean is <= 0")]
    else:
        counts["RadCliQ-v1"] = "not computed, it needs a semantic score (BERTScore or embedding cosine)"
    labeler = "rule-based labeler (not CheXbert), uncertain = " + config.uncertain
    for n_obs, name in ((14, "CheXpert-14"), (5, "CheXpert top-5")):
        for avg in ("micro", "macro"):
            metrics.append(Metric(f"chexpert_{avg}_f1_{n_obs}", f"{name} {avg} F1", note=labeler))
    if config.judge is not None:
        results = config.judge.judge(cands, refs)
        values["judge_errors"] = _floats([r.significant_total for r in results])
        values["judge_insignificant"] = _floats([r.insignificant_total for r in results])
        counts["judge_unparsed"] = int(np.isnan(values["judge_errors"]).sum())
        metrics += [
            Metric("judge_errors", "Judge significant errors / report", higher_is_better=False,
                   note=f"judge {getattr(config.judge, 'judge_id', '')}"),
            Metric("judge_ge4", "Reports with >=4 significant errors", higher_is_better=False),
            Metric("judge_insignificant", "Judge insignificant errors / report", higher_is_better=False),
        ]
    scores = ReportScores(
        [s.sample_id for s in kept], [s.patient_id for s in kept],
        {g: [GROUPS[g](s) for s in kept] for g in config.groups}, values,
        _positives(cands, config.uncertain), _positives(refs, config.uncertain), cands, refs,
    )
    return scores, metrics, counts


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


# -- the result ------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Metrics overall and per group with CIs; :meth:`save` writes JSON, markdown and a PNG figure."""

    name: str
    metrics: list[Metric]
    overall: dict[str, Any]
    groups: dict[str, dict[str, dict[str, Any]]]
    info: dict[str, Any]
    scores: ReportScores | None = None

    def metric(self, key: str) -> Metric:
        return next(m for m in self.metrics if m.key == key)

    def value(self, key: str, group: str | None = None, level: str | None = None) -> float | None:
        """The point estimate of ``key`` overall, or in ``group=level``."""
        block = self.overall if group is None else self.groups[group][level]
        return block["metrics"][key]["value"]

    def to_dict(self, *, include_reports: bool = True) -> dict[str, Any]:
        d = {"name": self.name, "metrics": [dataclasses.asdict(m) for m in self.metrics],
             "overall": self.overall, "groups": self.groups, "info": self.info}
        if include_reports and self.scores is not None:
            d["reports"] = self.scores.rows()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        rows = d.get("reports")
        return cls(d["name"], [Metric(**m) for m in d["metrics"]], d["overall"], d["groups"], d["info"],
                   ReportScores.from_rows(rows) if rows else None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalResult:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_markdown(self) -> str:
        return render_markdown(self)

    def save(self, out_dir: str | os.PathLike[str], stem: str = "eval") -> dict[str, Path]:
        """Write ``STEM.json`` (with per-report rows), ``STEM.md`` and ``STEM.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "figure": out / f"{stem}.png"}
        _write_text(paths["json"], json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        _write_text(paths["markdown"], self.to_markdown())
        plot_result(self, paths["figure"])
        return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


# -- rendering -------------------------------------------------------------------------------------------------
def _fmt(cell: Mapping[str, Any] | None, digits: int = 3) -> str:
    if cell is None or cell.get("value") is None:
        return "n/a"
    text = f"{cell['value']:.{digits}f}"
    if cell.get("ci_low") is not None:
        text += f" [{cell['ci_low']:.{digits}f}, {cell['ci_high']:.{digits}f}]"
    return text


def render_markdown(result: EvalResult) -> str:
    """The ReXrank-style table (rows: overall and every group level; cells: value [CI])."""
    cols = result.metrics
    lines = [f"# Evaluation: {result.name}", ""]
    counts = result.info.get("counts", {})
    cfg = result.info.get("config", {})
    lines.append(f"{result.overall['n']} reports of {result.overall['n_patients']} patients; section: "
                 f"{cfg.get('section')}; {result.info.get('bootstrap')}.")
    left = {k: v for k, v in counts.items() if k != "samples" and isinstance(v, int) and v}
    if left:
        lines.append("Left out: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in left.items()) + ".")
    lines += [f"{k.replace('_', ' ')}: {v}." for k, v in counts.items() if isinstance(v, str)]
    lines += ["", "| group | n | " + " | ".join(f"{m.label} {m.arrow}" for m in cols) + " |",
              "|---|---:|" + "---:|" * len(cols)]

    def row(label: str, block: Mapping[str, Any]) -> str:
        cells = [_fmt(block["metrics"].get(m.key)) for m in cols]
        return f"| {label} | {block['n']} | " + " | ".join(cells) + " |"

    lines.append(row("**overall**", result.overall))
    for g, levels in result.groups.items():
        for level, block in levels.items():
            lines.append(row(f"{g} = {level}", block))
    lines += ["", "Metrics:", ""]
    for m in cols:
        kind = "" if m.real else " **substitute**"
        lines.append(f"- {m.label} ({'higher' if m.higher_is_better else 'lower'} is better){kind}"
                     + (f": {m.note}" if m.note else ""))
    return "\n".join(lines) + "\n"


FIGURE_METRICS = ("chexpert_micro_f1_14", "chexpert_micro_f1_5", "chexpert_macro_f1_14", "radgraph", "semb",
                  "semantic", "bleu2", "rouge_l", "inv_radcliq_v1", "judge_errors", "judge_ge4")


def _figure(n_panels: int, n_rows: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.2 * ncols, 0.8 + nrows * (0.6 + 0.28 * n_rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _xerr(cell: Mapping[str, Any]) -> list[list[float]] | None:
    if cell.get("ci_low") is None:
        return None
    return [[max(0.0, cell["value"] - cell["ci_low"])], [max(0.0, cell["ci_high"] - cell["value"])]]


def plot_result(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """A PNG: one panel per key metric, a point with its CI per row (overall and every group level)."""
    keys = [k for k in FIGURE_METRICS if any(m.key == k for m in result.metrics)
            and (result.overall["metrics"].get(k) or {}).get("value") is not None]
    rows = [("overall", result.overall)] + [(f"{g}={lv}", b) for g, lvs in result.groups.items()
                                            for lv, b in lvs.items()]
    fig, axes = _figure(len(keys), len(rows))
    ys = np.arange(len(rows))[::-1]
    for ax, key in zip(axes, keys, strict=False):
        m = result.metric(key)
        for y, (_, block) in zip(ys, rows, strict=True):
            cell = block["metrics"].get(key) or {}
            if cell.get("value") is None:
                continue
            ax.errorbar(cell["value"], y, xerr=_xerr(cell), fmt="o", color="C0" if y != ys[0] else "C3", capsize=3)
        ax.set_yticks(ys, [label for label, _ in rows], fontsize=7)
        ax.set_title(f"{m.label} {m.arrow}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{result.name}: {result.overall['n']} reports, {result.info.get('bootstrap', '')}", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# -- comparing runs --------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Runs side by side with CIs, and each run minus the baseline with paired-bootstrap CIs."""

    runs: list[str]
    baseline: str
    metrics: list[Metric]
    blocks: list[dict[str, Any]]  # {"group", "n", "n_patients", "metrics": {key: {"runs": {...}, "delta": {...}}}}
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "baseline": self.baseline, "metrics": [dataclasses.asdict(m) for m in self.metrics],
                "blocks": self.blocks, "info": self.info}

    def to_markdown(self) -> str:
        others = [r for r in self.runs if r != self.baseline]
        lines = [f"# Comparison: {', '.join(self.runs)} (baseline {self.baseline})", "",
                 f"{self.info['bootstrap']}; Δ = run − baseline on the same resamples (paired); "
                 "* marks a Δ whose CI excludes 0.", ""]
        for block in self.blocks:
            lines += [f"## {block['group']} ({block['n']} reports, {block['n_patients']} patients)", "",
                      "| metric | " + " | ".join(self.runs) + " | " + " | ".join(f"Δ {r}" for r in others) + " |",
                      "|---|" + "---:|" * (len(self.runs) + len(others))]
            for m in self.metrics:
                cell = block["metrics"].get(m.key)
                if cell is None:
                    continue
                deltas = []
                for r in others:
                    d = cell["delta"][r]
                    text = _fmt(d)
                    if d.get("value") is not None and d["value"] >= 0:
                        text = "+" + text
                    if d.get("ci_low") is not None and (d["ci_low"] > 0 or d["ci_high"] < 0):
                        text += " *"
                    deltas.append(text)
                lines.append(f"| {m.label} {m.arrow} | " + " | ".join(_fmt(cell["runs"][r]) for r in self.runs)
                             + " | " + " | ".join(deltas) + " |")
            lines.append("")
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike[str], stem: str = "compare") -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "figure": out / f"{stem}.png"}
        _write_text(paths["json"], json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        _write_text(paths["markdown"], self.to_markdown())
        plot_comparison(self, paths["figure"])
        return paths


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


def plot_comparison(comparison: Comparison, path: str | os.PathLike[str]) -> Path:
    """A PNG: one panel per key metric, each run's value and CI per group."""
    keys = [k for k in FIGURE_METRICS if any(m.key == k for m in comparison.metrics)]
    groups = [b["group"] for b in comparison.blocks]
    fig, axes = _figure(len(keys), len(groups) * len(comparison.runs))
    ys = np.arange(len(groups))[::-1].astype(float)
    offsets = np.linspace(-0.25, 0.25, len(comparison.runs))
    for ax, key in zip(axes, keys, strict=False):
        m = next(x for x in comparison.metrics if x.key == key)
        for j, run in enumerate(comparison.runs):
            for y, block in zip(ys, comparison.blocks, strict=True):
                cell = block["metrics"][key]["runs"][run]
                if cell["value"] is None:
                    continue
                ax.errorbar(cell["value"], y + offsets[j], xerr=_xerr(cell), fmt="o", color=f"C{j}", capsize=3,
                            label=run if y == ys[0] else None)
        ax.set_yticks(ys, groups, fontsize=7)
        ax.set_title(f"{m.label} {m.arrow}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    if keys:
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{' vs '.join(comparison.runs)}: {comparison.info['bootstrap']}", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# -- drafting with a model -------------------------------------------------------------------------------------
def generate_predictions(model: Any, samples: Sequence[Sample], *, generation: Any = None,
                         image_size: int | None = 512, chunk: int = 32,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, Prediction]:
    """Draft every sample with ``model`` (a :class:`unirg.model.ReportModel` or anything with
    ``draft(studies, generation)``); images are loaded ``chunk`` studies at a time, and the model batches by
    ``generation.batch_size``."""
    out: dict[str, Prediction] = {}
    for start in range(0, len(samples), chunk):
        part = samples[start: start + chunk]
        drafts = model.draft([study_input(s, size=image_size or 512) for s in part], generation)
        for s, d in zip(part, drafts, strict=True):
            out[s.sample_id] = Prediction(s.sample_id, d.findings, d.impression)
        if progress is not None:
            progress(min(start + chunk, len(samples)), len(samples))
    return out
