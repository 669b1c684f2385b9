"""Evaluation of an SFT model: CheXpert-14 F1 of its drafts against the testbed labels, and of the
"most common report" baseline (``unirg-trainer sft --eval``)."""

from __future__ import annotations

import collections
import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unirg.model.model import MANIFEST
from unirg.model.prompt import format_target
from unirg.model.study import GenerationConfig, chunked
from unirg.trainer.sft_config import SFTRunConfig
from unirg.trainer.sft_data import (
    StudyInputCache,
    TrainingExample,
    _processor_side,
    patient_split,
    testbed_examples,
)

__all__ = ["draft_examples", "evaluate_chexpert", "evaluate_model_dir", "most_common_report"]

TOP5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _positives(labels: dict | Sequence) -> frozenset[str]:
    from unirg.trainer.rewards.clinical import positive_set

    return positive_set(labels, uncertain="positive")


def evaluate_chexpert(
    candidates: Sequence[str], references: Sequence[dict[str, int | None]]
) -> dict[str, Any]:
    """CheXpert-14 F1 of report texts against reference labels.

    ``candidates`` are report texts, labeled with :func:`unirg.model.labeler.label_report`;
    ``references`` are label dicts (the testbed manifest's ``labels``). Positive = 1,
    uncertain counts as positive (the usual CheXpert-F1 convention). Returns micro
    precision / recall / F1 over all 14 observations and over the top 5
    (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion), macro F1 over
    observations with reference positives, and per-observation F1 with support.
    """
    from unirg.model.chexpert import OBSERVATIONS
    from unirg.model.labeler import label_report

    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    counts = {o: collections.Counter() for o in OBSERVATIONS}
    for text, reference in zip(candidates, references, strict=True):
        predicted = _positives(label_report(text))
        truth = _positives(reference)
        for observation in OBSERVATIONS:
            p, t = observation in predicted, observation in truth
            counts[observation]["tp" if p and t else "fp" if p else "fn" if t else "tn"] += 1

    def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        score = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        return precision, recall, score

    def micro(names: Iterable[str]) -> dict[str, float]:
        tp = sum(counts[o]["tp"] for o in names)
        fp = sum(counts[o]["fp"] for o in names)
        fn = sum(counts[o]["fn"] for o in names)
        p, r, s = f1(tp, fp, fn)
        return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(s, 4)}

    per = {}
    for observation in OBSERVATIONS:
        c = counts[observation]
        _, _, score = f1(c["tp"], c["fp"], c["fn"])
        per[observation] = {"f1": round(score, 4), "support": c["tp"] + c["fn"], "predicted": c["tp"] + c["fp"]}
    supported = [per[o]["f1"] for o in OBSERVATIONS if per[o]["support"]]
    return {
        "n": len(candidates),
        "micro": micro(OBSERVATIONS),
        "micro_top5": micro(TOP5),
        "macro_f1": round(sum(supported) / len(supported), 4) if supported else 0.0,
        "per_observation": per,
    }


def most_common_report(examples: Sequence[TrainingExample]) -> str:
    """The most frequent target text among ``examples`` (ties: the first seen): the
    "always write the commonest report" baseline."""
    counts = collections.Counter(example.target for example in examples)
    return counts.most_common(1)[0][0]


def draft_examples(
    model: Any,
    examples: Sequence[TrainingExample],
    generation: GenerationConfig | None = None,
    *,
    cache: StudyInputCache | None = None,
) -> list[str]:
    """Draft ``examples`` with a loaded ``ReportModel``; the findings + impression texts."""
    cache = cache or StudyInputCache()
    generation = generation or GenerationConfig(max_new_tokens=256, batch_size=8)
    texts: list[str] = []
    for batch in chunked(list(examples), generation.batch_size):
        drafts = model.draft([cache.study(example) for example in batch], generation)
        texts += [format_target(d.findings, d.impression) for d in drafts]
    return texts


def evaluate_model_dir(
    model_dir: str | Path,
    config: SFTRunConfig,
    *,
    institutions: Sequence[str] = ("C",),
    max_studies: int | None = 200,
    generation: GenerationConfig | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """CheXpert-14 F1 of a trained model's drafts, and of the most-common-report baseline.

    Sets: ``held_out`` (the patients :func:`train_sft` held out of the training
    institutions) and one per institution in ``institutions`` (all its studies, e.g.
    the unseen institution C), each capped at ``max_studies`` (a seeded sample). The
    baseline writes the commonest training report for every study. With ``write`` the
    result goes into the model's ``unirg-model.json`` under ``metrics``.
    """
    from unirg.model.model import load_model

    started = time.monotonic()
    model_dir = Path(model_dir)
    examples = testbed_examples(config.data, institutions=config.institutions, priors=config.priors)
    train, held_out = patient_split(examples, config.eval_fraction, config.seed)
    baseline = most_common_report(train)
    sets: dict[str, list[TrainingExample]] = {}
    if held_out:
        sets["held_out_" + "".join(config.institutions or ())] = held_out
    for institution in institutions:
        sets[institution] = testbed_examples(config.data, institutions=[institution], priors=config.priors)
    rng = random.Random(config.seed)
    for name, chosen in list(sets.items()):
        if max_studies and len(chosen) > max_studies:
            sets[name] = sorted(rng.sample(chosen, max_studies), key=lambda e: (e.patient_id, e.study_date))
        if not sets[name]:
            del sets[name]
    model = load_model(model_dir)
    cache = StudyInputCache(decode_size=min(512, 2 * (_processor_side(model.processor) or 256)))
    generation = generation or GenerationConfig(max_new_tokens=256, batch_size=8)
    results: dict[str, Any] = {}
    for name, chosen in sets.items():
        texts = draft_examples(model, chosen, generation, cache=cache)
        references = [e.labels for e in chosen]
        results[name] = {
            "n": len(chosen),
            "distinct_drafts": round(len(set(texts)) / len(texts), 4),
            "model": evaluate_chexpert(texts, references),
            "baseline": evaluate_chexpert([baseline] * len(chosen), references),
        }
    metrics = {
        "chexpert14": {
            "labeler": "unirg.model.labeler (rule-based); references: testbed manifest labels; "
            "uncertain counted as positive",
            "generation": {"strategy": generation.strategy, "max_new_tokens": generation.max_new_tokens},
            "baseline": "the most common training report, for every study",
            "baseline_text": baseline,
        },
        "sets": results,
        "eval_wall_s": round(time.monotonic() - started, 1),
    }
    if write:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
        manifest["metrics"] = metrics
        tmp = model_dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, model_dir / MANIFEST)
    return metrics
