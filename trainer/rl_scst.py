"""GRPO with a self-critical baseline (``advantage_baseline = "greedy"``): the advantage of a rollout is its reward minus
the reward of the policy's *greedy* draft of the same study.

Why: the plugin drafts greedily, and a small policy's greedy draft can be worse than most of its samples (on the
tuning testbed, a majority vote of 8 samples reads the 14 observations with micro F1 0.68 where the greedy draft
reaches 0.61: greedy decoding follows the single likeliest path, which often stops before a finding or takes the
normal template). GRPO's baseline is the mean reward of the group, so a group whose samples all beat the greedy
draft by the same amount gives no gradient. With the greedy draft as the baseline (self-critical sequence
training, Rennie et al. 2017, the usual RL recipe of report generation papers) every sample that beats the greedy
draft is pushed up and every one that does worse is pushed down, which moves exactly the draft the plugin writes.

The advantage is the plain reward difference (not divided by the group's reward std: a group of equal samples
that all beat the greedy draft has std 0 and still carries signal). Everything else (rollouts, loss, clipping,
KL, logging) is TRL's :class:`~trl.GRPOTrainer`; the greedy drafts reuse its prompt tokenisation and generation
path. With ``generate`` on the trainer's device (no vLLM), the greedy drafts are extra rows of the rollouts'
``generate`` call, made greedy by :class:`~unirg.trainer.rl_generation.GreedyRows`: one decoding loop per step
instead of two. Elsewhere they take a second, greedy ``generate`` call. Logged per step: ``scst/greedy_reward``
(mean reward of the greedy drafts) and ``scst/beats_greedy`` (share of rollouts scoring above their greedy
draft). With ``finding_credit`` > 0 the advantages become per token: the sentences that state or deny a finding
add the labeler's verdict on them (:mod:`unirg.trainer.rl_credit`).
"""

from __future__ import annotations

import copy

import torch
from trl import GRPOTrainer
from trl.data_utils import is_conversational, prepare_multimodal_messages

from unirg.trainer.rewards.clinical import text_positives
from unirg.trainer.rl_credit import sentence_credits, token_char_ends, token_credits
from unirg.trainer.rl_generation import (
    GreedyRows,
    MergedLoRAGeneration,
    extra_logits_processor,
    merge_multimodal_fields,
)

__all__ = ["SelfCriticalGRPOTrainer", "self_critical_advantages"]


def self_critical_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards[i] - greedy_rewards[i // group_size]``; a NaN (unscorable) reward gives advantage 0."""
    if rewards.numel() != greedy_rewards.numel() * group_size:
        raise ValueError(f"{rewards.numel()} rewards for {greedy_rewards.numel()} prompts x {group_size} rollouts")
    advantages = rewards - greedy_rewards.repeat_interleave(group_size)
    return torch.nan_to_num(advantages, nan=0.0)


class SelfCriticalGRPOTrainer(MergedLoRAGeneration, GRPOTrainer):
    """:class:`~trl.GRPOTrainer` whose advantages use the greedy draft of each prompt as the baseline."""

    fold_greedy_drafts: bool = True  # False: a separate greedy generate call per step (bench/bench_rl_step.py)
    _greedy_heads: list | None = None  # head prompts whose greedy drafts ride in the next rollout call
    _folded_greedy_ids: list[list[int]] | None = None

    def _greedy_config(self):
        config = copy.deepcopy(self.generation_config)
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = config.min_p = None
        return config

    def _texts(self, completion_ids: list[list[int]]) -> list[str]:
        return self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)

    def _as_completions(self, prompts: list, texts: list[str]) -> list:
        if is_conversational({"prompt": prompts[0]}):
            return [[{"role": "assistant", "content": text}] for text in texts]
        return texts

    def _total_rewards(self, inputs: list[dict], prompts: list, completion_ids: list[list[int]]) -> torch.Tensor:
        """The weighted reward of each completion, through TRL's own reward path."""
        completions = self._as_completions(prompts, self._texts(completion_ids))
        per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids)
        total = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(per_func).all(dim=1)] = torch.nan
        return total

    def _finding_credits(self, inputs: list[dict], completion_ids: list[list[int]], width: int) -> torch.Tensor:
        """(B, width) sentence credits of each rollout's tokens (:mod:`unirg.trainer.rl_credit`)."""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        weight = getattr(self.args, "finding_credit_error_weight", 1.0)
        out = torch.zeros(len(completion_ids), width)
        for row, (x, ids) in enumerate(zip(inputs, completion_ids, strict=True)):
            reference = x.get("reference")
            if not reference or not ids:
                continue
            sentences = sentence_credits(decode(ids), text_positives(reference), error_weight=weight)
            if sentences:
                values = token_credits(token_char_ends(ids, decode), sentences)
                out[row, : len(values)] = torch.tensor(values)
        return out

    @staticmethod
    def _head_messages(heads: list[dict]) -> list:
        prompts = [copy.deepcopy(x["prompt"]) for x in heads]
        if "images" in heads[0] and any(x.get("images") for x in heads):
            prompts = [prepare_multimodal_messages(p, images=x.get("images")) for p, x in zip(prompts, heads,
                                                                                             strict=True)]
        return prompts

    def _folds_greedy(self) -> bool:
        return self.fold_greedy_drafts and self._generates_locally()

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        heads, self._greedy_heads = self._greedy_heads, None
        if heads is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, *args,
                                                 **kwargs)
        head_ids, head_images, head_fields = self._tokenize_prompts(self._head_messages(heads))
        rows = len(prompt_ids)
        with extra_logits_processor(self._generation_model(), GreedyRows(range(rows, rows + len(heads)))):
            completion_ids, logprobs = super()._generate_single_turn(
                list(prompt_ids) + list(head_ids),
                None if images is None else list(images) + list(head_images),
                merge_multimodal_fields(multimodal_fields, head_fields),
                num_generations, *args, **kwargs)
        self._folded_greedy_ids = completion_ids[rows:]
        return completion_ids[:rows], None if logprobs is None else logprobs[:rows]

    def _greedy_completion_ids(self, heads: list[dict]) -> tuple[list, list[list[int]]]:
        """A separate greedy ``generate`` call (the path when the drafts could not ride with the rollouts)."""
        prompt_ids, images, multimodal_fields = self._tokenize_prompts(self._head_messages(heads))
        sampling = self.generation_config
        self.generation_config = self._greedy_config()
        try:
            completion_ids, _ = self._generate_single_turn(prompt_ids, images, multimodal_fields, 1)
        finally:
            self.generation_config = sampling
        return [x["prompt"] for x in heads], completion_ids

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        group = self.num_generations
        heads = inputs[::group]
        self._folded_greedy_ids = None
        self._greedy_heads = heads if training and self._folds_greedy() else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._greedy_heads = None
        if not training:
            return output  # evaluation: GRPO's own advantages (not used for a loss)
        mask = output["completion_mask"].bool().cpu()
        sampled = [ids[m].tolist() for ids, m in zip(output["completion_ids"].cpu(), mask, strict=True)]
        rewards = self._total_rewards(inputs, [x["prompt"] for x in inputs], sampled)
        if self._folded_greedy_ids is not None:
            head_prompts, greedy_ids = [x["prompt"] for x in heads], self._folded_greedy_ids
        else:
            head_prompts, greedy_ids = self._greedy_completion_ids(heads)
        greedy = self._total_rewards(heads, head_prompts, greedy_ids)
        advantages = self_critical_advantages(rewards, torch.nan_to_num(greedy, nan=0.0), group)
        metrics = self._metrics["train"]
        scale = getattr(self.args, "finding_credit", 0.0)
        if scale:
            credits = self._finding_credits(inputs, sampled, output["completion_ids"].shape[1])  # 0 on padding
            completion_credits = credits[mask]
            active = completion_credits != 0
            metrics["credit/token_share"].append(float(active.float().mean()) if active.numel() else 0.0)
            metrics["credit/mean"].append(float(completion_credits[active].mean()) if active.any() else 0.0)
            advantages = advantages.unsqueeze(1) + scale * credits
        output["advantages"] = advantages.to(output["advantages"].device, output["advantages"].dtype)
        metrics["scst/greedy_reward"].append(float(torch.nanmean(greedy)))
        beats = rewards > greedy.repeat_interleave(group)
        metrics["scst/beats_greedy"].append(float(beats.float().mean()))
        return output
