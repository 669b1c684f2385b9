"""Score report models on a fresh testbed: CheXpert-14 micro/macro F1 (all studies, and those with and without
a prior), distinct drafts, change statements.

    python experiments/default_model.py --data var/testbed-s101 --model var/models/unirg-demo \
        [--model OTHER ...] [--max-studies 200] [--out results.json]

Sets: institution C (never trained on) and institutions A/B; on a testbed made with a seed the model never
saw, every A/B patient is a held-out patient. Each set is capped at ``--max-studies`` (a seeded sample). The
models are loaded by ``unirg.model.load_model`` (the plugin's load path) and draft greedily what the plugin
feeds them (frontal image, indication, prior image and report). Change statements are scored on the
follow-up studies (:mod:`unirg.trainer.evaluate.longitudinal`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from unirg.model.model import load_model
from unirg.model.study import GenerationConfig
from unirg.trainer.data import load_testbed
from unirg.trainer.evaluate.longitudinal import change_scores
from unirg.trainer.sft_data import StudyInputCache, _processor_side, examples_from_samples
from unirg.trainer.sft_eval import draft_examples, evaluate_chexpert


def _abnormal(example) -> bool:
    return example.labels.get("No Finding") != 1


def _distinct(texts: list[str]) -> float:
    return round(len(set(texts)) / len(texts), 4) if texts else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", required=True, action="append", type=Path)
    parser.add_argument("--max-studies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    samples = load_testbed(args.data)
    findings = {s.study_id: s.meta.get("finding_records") or [] for s in samples}
    rng = random.Random(args.seed)
    sets = {}
    for name, institutions in (("C", ["C"]), ("A/B", ["A", "B"])):
        chosen = examples_from_samples(samples, institutions=institutions, priors=True)
        if len(chosen) > args.max_studies:
            chosen = sorted(rng.sample(chosen, args.max_studies), key=lambda e: (e.patient_id, e.study_date))
        sets[name] = chosen

    results = {"data": str(args.data), "max_studies": args.max_studies, "models": {}}
    for model_dir in args.model:
        started = time.monotonic()
        model = load_model(model_dir)
        cache = StudyInputCache(decode_size=min(512, 2 * (_processor_side(model.processor) or 256)))
        per_set = {}
        for name, chosen in sets.items():
            texts = draft_examples(model, chosen, GenerationConfig(max_new_tokens=256, batch_size=8), cache=cache)
            scores = evaluate_chexpert(texts, [e.labels for e in chosen])
            follow = [(t, findings[e.study_uid]) for t, e in zip(texts, chosen) if e.prior_frontal is not None]
            by_prior = {}
            for key, has_prior in (("micro_f1_with_prior", True), ("micro_f1_no_prior", False)):
                part = [(t, e.labels) for t, e in zip(texts, chosen) if (e.prior_frontal is not None) == has_prior]
                by_prior[key] = round(evaluate_chexpert(*map(list, zip(*part)))["micro"]["f1"], 4) if part else None
            per_set[name] = {
                "n": len(chosen),
                "micro_f1": round(scores["micro"]["f1"], 4),
                "macro_f1": round(scores["macro_f1"], 4),
                "distinct_drafts": round(len(set(texts)) / len(texts), 4),
                "distinct_references": round(len({e.target for e in chosen}) / len(chosen), 4),
                "distinct_drafts_abnormal": _distinct([t for t, e in zip(texts, chosen) if _abnormal(e)]),
                "distinct_references_abnormal": _distinct([e.target for e in chosen if _abnormal(e)]),
                "with_prior": len(follow),
                **by_prior,
                "change": change_scores([t for t, _ in follow], [f for _, f in follow]),
                "example": texts[0],
            }
        results["models"][str(model_dir)] = {"sets": per_set, "wall_s": round(time.monotonic() - started, 1)}
        for name, r in per_set.items():
            print(f"{model_dir} {name:>4}: n={r['n']} micro F1 {r['micro_f1']:.3f} macro F1 {r['macro_f1']:.3f} "
                  f"distinct {r['distinct_drafts']:.0%} (references {r['distinct_references']:.0%}; abnormal studies "
                  f"{r['distinct_drafts_abnormal']:.0%} vs {r['distinct_references_abnormal']:.0%}); micro F1 with / without a prior "
                  f"{r['micro_f1_with_prior']} / {r['micro_f1_no_prior']}; change on {r['with_prior']} follow-ups: "
                  f"described {r['change']['described']:.0%}, right {r['change']['correct_of_described']:.0%}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
