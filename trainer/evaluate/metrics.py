"""Predictions, the metric table and per-report scores (:func:`score_reports`, RadCliQ-v1)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from unirg.model.chexpert import OBSERVATIONS
from unirg.trainer.data.sample import Sample, section_text
from unirg.trainer.data.study import study_input

log = logging.getLogger(__name__)

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
    from unirg.model.labeler import label_report

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
            log.warning("no semantic score: %s", exc)
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
