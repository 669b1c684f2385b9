"""Throughput of the labeler and of each reward component on synthetic report pairs.

    .venv/bin/python bench/bench_rewards.py [--pairs 1000] [--seed 0] [--skip-models]

Pairs are made from a bank of report sentences: a reference of 4-8 sentences, and a candidate that rewords,
drops, adds or negates some of them (so scores spread out). Each component scores the whole batch once after
a warm-up (model loading is not timed); clinical components are timed with a cold label cache.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

SENTENCES = [
    ("Heart size is normal.", "Moderate cardiomegaly."),
    ("The mediastinal contours are unremarkable.", "The mediastinum is widened."),
    ("The lungs are clear.", "Patchy opacity in the right lower lobe."),
    ("No focal consolidation.", "Consolidation in the left lower lobe, concerning for pneumonia."),
    ("No pulmonary edema.", "Mild interstitial pulmonary edema."),
    ("No pleural effusion.", "Small left pleural effusion."),
    ("No pneumothorax.", "Small right apical pneumothorax."),
    ("No acute osseous abnormality.", "Healing right 6th rib fracture."),
    ("No suspicious pulmonary nodule.", "A 1.2 cm nodule in the right upper lobe."),
    ("No atelectasis.", "Bibasilar atelectasis."),
    ("No pleural thickening.", "Left apical pleural thickening."),
    ("No support devices.", "Endotracheal tube terminates 5 cm above the carina."),
]
REWORD = {
    "Moderate cardiomegaly.": "The heart is moderately enlarged.",
    "Small left pleural effusion.": "Small left effusion is present.",
    "No pneumothorax.": "There is no pneumothorax.",
    "The lungs are clear.": "Clear lungs.",
    "Bibasilar atelectasis.": "Atelectasis at both lung bases.",
    "Heart size is normal.": "Normal heart size.",
}
HEDGE = ("Possible {}", "{} cannot be excluded.")


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        rows = rng.sample(range(len(SENTENCES)), rng.randint(4, 8))
        truth = {i: rng.random() < 0.35 for i in rows}  # abnormal?
        ref = [SENTENCES[i][truth[i]] for i in rows]
        cand = []
        for i in rows:
            r = rng.random()
            if r < 0.1:
                continue  # dropped
            abnormal = truth[i] if r > 0.25 else not truth[i]  # 15% flipped
            s = SENTENCES[i][abnormal]
            if abnormal and rng.random() < 0.15:
                s = rng.choice(HEDGE).format(s[0].lower() + s[1:].rstrip("."))
            cand.append(REWORD.get(s, s) if rng.random() < 0.3 else s)
        rng.shuffle(cand)
        pairs.append((" ".join(cand), " ".join(ref)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-models", action="store_true", help="Only the model-free components.")
    args = parser.parse_args(argv)

    from unirg.model.labeler import label_report
    from unirg.trainer.rewards import MODEL_FREE, build_component, clinical

    pairs = make_pairs(args.pairs, args.seed)
    cands = [c for c, _ in pairs]
    refs = [r for _, r in pairs]
    mean_chars = sum(len(t) for t in cands + refs) / (2 * len(pairs))
    print(f"{len(pairs)} pairs, mean report length {mean_chars:.0f} characters")

    texts = cands + refs
    start = time.perf_counter()
    for t in texts:
        label_report(t)
    elapsed = time.perf_counter() - start
    print(f"{'labeler (label_report)':24s} {len(texts) / elapsed:10.0f} reports/s")

    names = list(MODEL_FREE) + ([] if args.skip_models else ["embedding_cosine"])
    for name in names:
        component = build_component(name)
        component.score(cands[:8], refs[:8])  # warm-up: imports, model load
        clinical._labels.cache_clear()
        clinical._entities.cache_clear()
        start = time.perf_counter()
        scores = component.score(cands, refs)
        elapsed = time.perf_counter() - start
        kept = [s for s in scores if s is not None]
        print(f"{name:24s} {len(pairs) / elapsed:10.0f} pairs/s   mean {sum(kept) / len(kept):.3f}")
    if not args.skip_models:
        try:
            build_component("bertscore", model_path=".", num_layers=1)
        except ImportError as exc:
            print(f"{'bertscore':24s} skipped: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
