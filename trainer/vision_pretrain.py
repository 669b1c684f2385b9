"""Vision pre-training: teach a VLM's vision tower to see the 14 CheXpert observations before SFT.

Real VLMs are built in stages: the vision encoder learns to see (contrastive or supervised pre-training),
then the language model learns to write about what it sees. A tiny Qwen3-VL trained from scratch with the
report loss alone never gets there on a CPU budget: its drafts are one template whatever the image. This
stage trains the model's own vision tower (patch embedding, blocks, the patch merger that feeds the language
model) on the training studies' frontal images with a multi-label head on the manifest's labels, then drops
the head. The checkpoint keeps the exact Qwen3-VL layout; nothing is added to what ``load_model`` loads.

The head reads every merged image token (a linear layer per token, pooled by log-sum-exp over the tokens),
so each token the language model attends to must carry the evidence for what lies under it.

Images go through the model's own processor once and are cached as tensors; only the training examples of
the SFT split are used (held-out patients and other institutions are never seen).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unirg.model.chexpert import OBSERVATIONS, POSITIVE, UNCERTAIN

log = logging.getLogger(__name__)

#: Observations the head learns (No Finding is what remains when none of the others is present).
TARGETS: tuple[str, ...] = OBSERVATIONS


@dataclass
class VisionPretrainConfig:
    epochs: float = 8.0
    lr: float = 2e-3
    batch_size: int = 32
    weight_decay: float = 0.05
    uncertain_target: float = 0.5
    seed: int = 0
    log_every: int = 50


@dataclass
class VisionPretrainResult:
    steps: int
    wall_s: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    train_f1: dict[str, float] = field(default_factory=dict)
    held_out_f1: dict[str, float] | None = None
    head: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "wall_s": round(self.wall_s, 1), "final_loss": round(self.final_loss, 4),
            "train": self.train_f1, "held_out": self.held_out_f1,
        }


def label_targets(labels: dict[str, int | None], uncertain: float = 0.5) -> list[float]:
    """The head's targets for one study: 1 positive, ``uncertain`` uncertain, 0 negative or not mentioned."""
    out = []
    for name in TARGETS:
        value = labels.get(name)
        out.append(1.0 if value == POSITIVE else uncertain if value == UNCERTAIN else 0.0)
    return out


class TokenHead(nn.Module):
    """Per-token logits pooled by log-sum-exp (a smooth max over the image's tokens)."""

    def __init__(self, width: int, outputs: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (images, tokens, width)
        logits = self.linear(self.norm(tokens))
        return torch.logsumexp(logits, dim=1) - math.log(tokens.shape[1])


def process_images(processor: Any, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel_values per image, grid_thw)`` from the model's own image processor, one image at a time
    (the same resize and normalisation as training and inference). All images must give the same grid."""
    patches, grids = [], []
    for image in images:
        out = processor.image_processor(images=[image], return_tensors="pt")
        patches.append(out["pixel_values"])
        grids.append(out["image_grid_thw"][0])
    grid = torch.stack(grids)
    if not bool((grid == grid[0]).all()):
        raise ValueError("vision pre-training needs one image grid for every image (square inputs)")
    return torch.stack(patches), grid[0]


def _encode(visual: nn.Module, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Merged image tokens ``(images, tokens, width)`` of a batch of same-size images."""
    n = pixels.shape[0]
    flat = pixels.reshape(-1, pixels.shape[-1])
    out = visual(flat, grid_thw=grid.unsqueeze(0).repeat(n, 1))
    merged = out.pooler_output if hasattr(out, "pooler_output") else out[0]
    return merged.reshape(n, -1, merged.shape[-1])


def _f1(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    tp = (pred & gold).sum(0)
    fp = (pred & ~gold).sum(0)
    fn = (~pred & gold).sum(0)
    micro = 2 * tp.sum() / max(1, 2 * tp.sum() + fp.sum() + fn.sum())
    present = gold.sum(0) > 0
    per = 2 * tp / np.maximum(1, 2 * tp + fp + fn)
    return {"micro_f1": round(float(micro), 4), "macro_f1": round(float(per[present].mean()) if present.any() else 0.0, 4)}


@torch.no_grad()
def head_probabilities(visual: nn.Module, head: nn.Module, pixels: torch.Tensor, grid: torch.Tensor,
                       batch_size: int = 64) -> np.ndarray:
    """The head's probability of each of :data:`TARGETS` per image, ``(images, targets)``."""
    visual.eval()
    head.eval()
    probs = [torch.sigmoid(head(_encode(visual, pixels[start:start + batch_size], grid)))
             for start in range(0, len(pixels), batch_size)]
    return torch.cat(probs).numpy()


def probe_f1(visual: nn.Module, head: nn.Module, pixels: torch.Tensor, grid: torch.Tensor,
             targets: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Micro/macro F1 of the head's positives (p > 0.5) against positive labels."""
    pred = head_probabilities(visual, head, pixels, grid, batch_size) > 0.5
    return _f1(pred, targets.numpy() >= 1.0)


def pretrain_vision(model: Any, train_pixels: torch.Tensor, train_targets: torch.Tensor, grid: torch.Tensor,
                    config: VisionPretrainConfig, *,
                    held_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> VisionPretrainResult:
    """Train ``model``'s vision tower in place (the language model is untouched) and report the head's F1."""
    visual = model.model.visual
    width = visual.merger.linear_fc2.out_features
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    head = TokenHead(width, len(TARGETS))
    params = [p for p in visual.parameters()] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = len(train_pixels)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    total = max(1, round(config.epochs * steps_per_epoch))
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    loss_fn = nn.BCEWithLogitsLoss()
    started = time.monotonic()
    losses: list[float] = []
    order: list[int] = []
    step = 0
    visual.train()
    head.train()
    while step < total:
        if len(order) < config.batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order.extend(fresh)
        idx, order = order[:config.batch_size], order[config.batch_size:]
        logits = head(_encode(visual, train_pixels[idx], grid))
        loss = loss_fn(logits, train_targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
        if step % config.log_every == 0 or step == total:
            log.info("vision pre-training step %d/%d loss %.4f", step, total, float(np.mean(losses[-config.log_every:])))
    wall = time.monotonic() - started
    train_f1 = probe_f1(visual, head, train_pixels, grid, train_targets)
    held = probe_f1(visual, head, held_out[0], grid, held_out[1]) if held_out is not None and len(held_out[0]) else None
    visual.train()
    log.info("vision pre-training: %d steps in %.0f s; head F1 train %s, held-out %s", total, wall, train_f1, held)
    return VisionPretrainResult(steps=total, wall_s=wall, final_loss=float(np.mean(losses[-20:])), losses=losses,
                                train_f1=train_f1, held_out_f1=held, head=head)


def _tensors(processor: Any, cache: Any, examples: Sequence[Any], uncertain: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels, grid = process_images(processor, [cache.image(e.frontal) for e in examples])
    targets = torch.tensor([label_targets(e.labels, uncertain) for e in examples], dtype=torch.float32)
    return pixels, grid, targets


def pretrain_on_examples(model: Any, processor: Any, cache: Any, train: Sequence[Any],
                         held_out: Sequence[Any] = (), config: VisionPretrainConfig | None = None) -> VisionPretrainResult:
    """:func:`pretrain_vision` on SFT training examples (``frontal`` path and ``labels``), decoded by ``cache``
    (an :class:`~unirg.trainer.sft_data.StudyInputCache`) and processed by the model's own processor."""
    config = config or VisionPretrainConfig()
    examples = [e for e in train if e.labels]
    if not examples:
        raise ValueError("vision pre-training needs labelled training studies (the manifest's 'labels')")
    started = time.monotonic()
    pixels, grid, targets = _tensors(processor, cache, examples, config.uncertain_target)
    held = None
    labelled_held = [e for e in held_out if e.labels]
    if labelled_held:
        h_pixels, _grid, h_targets = _tensors(processor, cache, labelled_held, config.uncertain_target)
        held = (h_pixels, h_targets)
    log.info("vision pre-training: %d training images (%s patches each) prepared in %.0f s",
             len(examples), tuple(pixels.shape[1:]), time.monotonic() - started)
    return pretrain_vision(model, pixels, targets, grid, config, held_out=held)


def freeze_vision_tower(model: Any) -> int:
    """Fix the whole vision tower, mergers included (what pre-training taught it reaches the language model
    unchanged while the language model learns to read it); returns the number of parameters frozen. A PEFT model
    (``sft --base --lora``) is unwrapped first, and LoRA adapters inside the tower are frozen with it."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    frozen = 0
    for param in model.model.visual.parameters():
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen
