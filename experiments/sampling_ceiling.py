"""How much better than its greedy draft do a policy's own samples read the study? The ceiling of RL that only
sharpens the policy's distribution.

    python experiments/sampling_ceiling.py --data TESTBED --set C --model var/models/unirg-demo [--model RL_OUT] \
        [--studies 200] [--samples 8] [--out ceiling.json]
    python experiments/sampling_ceiling.py --data TESTBED --set RL_OUT/holdout.json --model ...   # held-out A/B
    python experiments/sampling_ceiling.py --data TESTBED --set AB --model ...   # every A/B study (a fresh testbed)

Per model: the greedy draft and ``--samples`` drafts at temperature 1 (RL's rollouts) of each study; CheXpert-14
micro F1 (uncertain = positive, findings + impression, the project's labeler) of the greedy drafts, of the mean
sample, and of a vote over the samples (an observation is positive when at least k of the n samples state it),
for every k. A self-critical RL update pushes up the samples that beat the greedy draft; when no vote beats the
greedy draft by much, the policy's samples know little more than its greedy draft, and RL must learn to see
more, not only to decode better. The set is a seeded sample of the frontal studies.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from unirg.model import GenerationConfig, load_model
from unirg.model.chexpert import OBSERVATIONS
from unirg.trainer.data import load_dataset
from unirg.trainer.rewards.clinical import text_positives
from unirg.trainer.rl import study_input


def micro_f1(predicted: Sequence[frozenset], reference: Sequence[frozenset]) -> float:
    """Micro F1 over the studies' positive label sets."""
    tp = sum(len(p & r) for p, r in zip(predicted, reference, strict=True))
    errors = sum(len(p ^ r) for p, r in zip(predicted, reference, strict=True))
    return 2 * tp / (2 * tp + errors) if tp or errors else 1.0


def vote(samples: Sequence[frozenset], at_least: int) -> frozenset:
    """The observations stated by at least ``at_least`` of the samples.

    >>> sorted(vote([frozenset({"Edema"}), frozenset({"Edema", "Atelectasis"}), frozenset()], 2))
    ['Edema']
    """
    return frozenset(o for o in OBSERVATIONS if sum(o in s for s in samples) >= at_least)


def _positives(findings: str | None, impression: str | None) -> frozenset:
    return text_positives(f"{findings or ''} {impression or ''}")


def _studies(data: Path, which: str, count: int, seed: int) -> list:
    samples = [s for s in load_dataset(data) if s.frontal is not None]
    if which in ("C", "AB"):  # AB: every A/B study, for a model that never saw this testbed
        chosen = [s for s in samples if (s.institution == "C") == (which == "C")]
    else:  # an RL run's holdout.json: its held-out A/B patients
        held = json.loads(Path(which).read_text(encoding="utf-8"))
        patients = set(held["patients"] if isinstance(held, dict) else held)
        chosen = [s for s in samples if s.institution != "C" and s.patient_id in patients]
    random.Random(seed).shuffle(chosen)
    return chosen[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--set", required=True, help="'C'; 'AB' (every A/B study: for a model that never saw "
                        "this testbed); or an RL output's holdout.json (its held-out A/B patients)")
    parser.add_argument("--model", required=True, action="append")
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    chosen = _studies(args.data, args.set, args.studies, args.seed)
    studies = [study_input(s, size=args.image_size) for s in chosen]
    reference = [_positives(s.findings, s.impression) for s in chosen]
    results = {"data": str(args.data), "set": args.set, "studies": len(chosen), "samples": args.samples,
               "models": {}}
    for path in args.model:
        model = load_model(path)
        greedy = [_positives(d.findings, d.impression)
                  for d in model.draft(studies, GenerationConfig(max_new_tokens=192, batch_size=8))]
        drawn: list[list[frozenset]] = [[] for _ in studies]
        for k in range(args.samples):
            sampling = GenerationConfig(strategy="sampling", temperature=1.0, max_new_tokens=192, batch_size=8,
                                        seed=args.seed * 1000 + 100 + k)
            for row, d in enumerate(model.draft(studies, sampling)):
                drawn[row].append(_positives(d.findings, d.impression))
        scores = {"greedy": micro_f1(greedy, reference),
                  "mean sample": sum(micro_f1([d[k] for d in drawn], reference)
                                     for k in range(args.samples)) / args.samples}
        for k in range(1, args.samples + 1):
            scores[f"vote >= {k}"] = micro_f1([vote(d, k) for d in drawn], reference)
        best = max((v, k) for k, v in scores.items() if k.startswith("vote"))
        scores["best vote - greedy"] = best[0] - scores["greedy"]
        results["models"][path] = {k: round(v, 4) for k, v in scores.items()}
        print(path, json.dumps(results["models"][path]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
