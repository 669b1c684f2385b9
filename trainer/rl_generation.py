"""Rollout generation on one device, made cheaper without changing what is sampled.

A tiny policy on a CPU spends its RL step in ``generate``, and there the cost is per operation, not per
multiply: every decoded token runs each projection once per LoRA part (base, ``lora_A``, ``lora_B``, scale, add)
and a second ``generate`` call per step for the greedy baseline repeats all of it. Two changes, each leaving the
sampled distribution as it was (up to float rounding):

* :class:`MergedLoRAGeneration`: while ``generate`` runs, the adapter is merged into the base weights
  (``PeftModel.merge_adapter``) and unmerged after, as TRL does before it syncs weights to vLLM. One matmul per
  projection instead of three. Not used with vLLM (TRL merges there itself), DeepSpeed or FSDP (sharded weights).
* :class:`GreedyRows`: a logits processor that leaves one finite logit, the argmax, in chosen rows of a
  sampled batch. Sampling then returns the greedy token in those rows, so the self-critical baseline's greedy
  drafts ride in the same ``generate`` call as the rollouts (:mod:`unirg.trainer.rl_scst`). It runs after
  ``generate``'s own processors (repetition penalty, minimum length, ...) and before its sampling warpers
  (temperature, top-k, top-p), which keep the argmax: the same token greedy decoding picks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

__all__ = [
    "GreedyRows",
    "MergedLoRAGeneration",
    "extra_logits_processor",
    "merge_multimodal_fields",
    "merged_lora",
    "with_merged_lora_generation",
]


class GreedyRows(LogitsProcessor):
    """In ``rows`` of the batch, every logit but the row's maximum becomes ``-inf``."""

    def __init__(self, rows: Sequence[int]) -> None:
        self.rows = torch.as_tensor(list(rows), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = self.rows.to(scores.device)
        chosen = scores[rows]
        best = chosen.argmax(dim=-1, keepdim=True)
        only_best = torch.full_like(chosen, float("-inf")).scatter(-1, best, chosen.gather(-1, best))
        scores = scores.clone()
        scores[rows] = only_best
        return scores


@contextlib.contextmanager
def merged_lora(model) -> Iterator[None]:
    """The adapter of PEFT ``model`` merged into its base weights for the duration of the block."""
    with torch.no_grad():
        model.merge_adapter()
    try:
        yield
    finally:
        with torch.no_grad():
            model.unmerge_adapter()


@contextlib.contextmanager
def extra_logits_processor(model, processor: LogitsProcessor) -> Iterator[None]:
    """Every ``model.generate(...)`` call in the block also applies ``processor`` (after ``generate``'s own)."""
    original = model.generate

    def generate(*args, **kwargs):
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(processor)
        return original(*args, logits_processor=processors, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate  # the class's method again


def merge_multimodal_fields(first: dict, second: dict) -> dict:
    """The processor outputs of two prompt batches as one batch (rows of ``first``, then of ``second``): tensors
    (``pixel_values``, ``image_grid_thw``, ...) concatenate along their first axis, per-row lists extend."""
    if set(first) != set(second):
        raise ValueError(f"multimodal fields differ: {sorted(first)} vs {sorted(second)}")
    merged = {}
    for key, value in first.items():
        other = second[key]
        if isinstance(value, torch.Tensor):
            merged[key] = torch.cat([value, other.to(value.device)], dim=0)
        else:
            merged[key] = list(value) + list(other)
    return merged


class MergedLoRAGeneration:
    """Mixin for TRL's ``GRPOTrainer`` / ``RLOOTrainer``: rollouts are generated with the LoRA adapter merged.

    ``merge_lora_for_generation`` (set from :class:`~unirg.trainer.rl_config.RLConfig`) turns it off."""

    merge_lora_for_generation: bool = True

    def _generation_model(self):
        return self.accelerator.unwrap_model(self.model)

    def _generates_locally(self) -> bool:
        """Rollouts come from ``model.generate`` in this process (not vLLM, not continuous batching)."""
        return not self.use_vllm and not getattr(self, "use_transformers_continuous_batching", False)

    def _merges_lora(self) -> bool:
        if not self.merge_lora_for_generation or not self._generates_locally():
            return False
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            return False
        return hasattr(self._generation_model(), "merge_adapter")

    def _generate_single_turn(self, *args, **kwargs):
        if not self._merges_lora():
            return super()._generate_single_turn(*args, **kwargs)
        with merged_lora(self._generation_model()):
            return super()._generate_single_turn(*args, **kwargs)


def with_merged_lora_generation(trainer_cls: type) -> type:
    """``trainer_cls`` (a TRL trainer class) with :class:`MergedLoRAGeneration` mixed in."""
    if issubclass(trainer_cls, MergedLoRAGeneration):
        return trainer_cls
    return type(trainer_cls.__name__, (MergedLoRAGeneration, trainer_cls), {"__module__": __name__})
