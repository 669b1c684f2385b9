"""How well can the demo model's vision tower see each observation, at a given input size and patch size?

Builds a random tiny Qwen3-VL, runs the build's stage 1 (vision pre-training on the training studies of
institutions A and B, the build's patient split), and scores the stage-1 head on institution C's frontal
images per observation: AUC, and recall / precision at p > 0.5. Nothing is saved; the head is what the
language model's image tokens were trained to carry, so it bounds what the drafts can see.

    .venv/bin/python experiments/vision_probe.py --data TESTBED --image-size 128 --patch-size 16 --out r.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch


def _auc(scores: np.ndarray, gold: np.ndarray) -> float | None:
    pos, neg = scores[gold], scores[~gold]
    if not len(pos) or not len(neg):
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--image-size", default=128, show_default=True, type=int)
@click.option("--patch-size", default=16, show_default=True, type=int)
@click.option("--merge-size", default=2, show_default=True, type=int)
@click.option("--epochs", default=20.0, show_default=True, type=float)
@click.option("--eval-fraction", default=0.15, show_default=True, type=float)
@click.option("--threads", default=2, show_default=True, type=int)
@click.option("--out", type=click.Path(dir_okay=False))
def main(data, image_size, patch_size, merge_size, epochs, eval_fraction, threads, out) -> None:
    from transformers import Qwen3VLForConditionalGeneration

    from unirg.model.chexpert import POSITIVE, UNCERTAIN
    from unirg.model.families import adapter_for
    from unirg.trainer.sft_data import StudyInputCache, patient_split, testbed_examples
    from unirg.trainer.tiny_models import build_tiny_qwen3_vl
    from unirg.trainer.vision_pretrain import (TARGETS, VisionPretrainConfig, head_probabilities, pretrain_on_examples,
                                               process_images)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train, _held = patient_split(testbed_examples(data, institutions=("A", "B")), eval_fraction, 0)
    unseen = [e for e in testbed_examples(data, institutions=("C",)) if e.labels]
    with tempfile.TemporaryDirectory() as tmp:
        init = build_tiny_qwen3_vl(Path(tmp) / "init", corpus=sorted({e.target for e in train}),
                                   image_size=image_size, patch_size=patch_size,
                                   merge_size=merge_size, seed=0)
        model = Qwen3VLForConditionalGeneration.from_pretrained(init)
        processor = adapter_for(init).load_processor(init)
    cache = StudyInputCache(decode_size=min(512, 2 * image_size))
    started = time.monotonic()
    result = pretrain_on_examples(model, processor, cache, train, (), VisionPretrainConfig(epochs=epochs, seed=0))
    pixels, grid = process_images(processor, [cache.image(e.frontal) for e in unseen])
    probs = head_probabilities(model.model.visual, result.head, pixels, grid)
    rows = {}
    for j, name in enumerate(TARGETS):
        gold = np.array([e.labels.get(name) in (POSITIVE, UNCERTAIN) for e in unseen])
        pred = probs[:, j] > 0.5
        tp = int((pred & gold).sum())
        rows[name] = {"present": int(gold.sum()), "auc": _auc(probs[:, j], gold),
                      "recall": tp / max(1, int(gold.sum())), "precision": tp / max(1, int(pred.sum()))}
    report = {"image_size": image_size, "patch_size": patch_size, "merge_size": merge_size,
              "tokens": int(grid.prod()) // merge_size**2,
              "train_images": len(train), "c_images": len(unseen), "stage1_s": round(result.wall_s),
              "total_s": round(time.monotonic() - started), "observations": rows}
    for name, row in rows.items():
        auc = "  n/a" if row["auc"] is None else f"{row['auc']:.3f}"
        click.echo(f"{name:28s} n={row['present']:4d} AUC {auc} recall {row['recall']:.2f} precision {row['precision']:.2f}")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
