"""Reinforcement learning of a report model on a composite clinical reward (``unirg-trainer rl``).

UniRG's second stage: start from an SFT checkpoint, sample ``num_generations`` reports per study, score each
against the reference with the reward components, and update a LoRA adapter with TRL's ``GRPOTrainer``
(or ``RLOOTrainer``, ``algorithm = "rloo"``; or, with ``advantage_baseline = "greedy"``, GRPO whose baseline is
the policy's greedy draft: :class:`unirg.trainer.rl_scst.SelfCriticalGRPOTrainer`).

How a study reaches the model (the same path as inference)
    :func:`study_input` turns a :class:`unirg.trainer.data.Sample` into the
    :class:`~unirg.model.StudyInput` the plugin would build from the DICOM files (pixels through
    :func:`~unirg.model.pixels.dataset_to_image`, indication from the image header, comparison
    ``"Chest radiograph YYYY-MM-DD."`` and the prior's image + report); the family adapter's
    :meth:`~unirg.model.families.FamilyAdapter.prompts` (:func:`~unirg.model.prompt.build_prompt`)
    makes the chat messages. Each dataset row is ``{"prompt": messages, "images": [PIL...], "reference":
    format_target(findings, impression), ...}``: TRL 1.16's VLM path fills the ``{"type": "image"}``
    placeholders with the row's images (``prepare_multimodal_messages``), renders them with the processor's
    chat template (``processor.apply_chat_template(..., tokenize=True)``) for ``generate`` and runs
    ``processor(images=..., text=...)`` for the policy / reference forward passes (``pixel_values`` +
    ``image_grid_thw`` for Qwen-VL). No custom collator or trainer subclass is needed; the test suite checks
    that TRL's prompt tokens equal the plugin's (``adapter.prepare``).

Reward
    The terms come from the one composition table (:mod:`unirg.trainer.rewards.table`: ``resolve_rewards``
    -> ``(component, weight, scaling)`` rows, the same rows a ``CompositeReward`` is built from).
    One TRL reward function per component (:func:`build_reward_funcs`), weighted by ``reward_weights``. TRL
    then logs every component per step (``rewards/<component>/mean`` and ``/std``, one column each in the
    completions table), the weighted ``reward``, ``reward_std`` and ``frac_reward_zero_std``. Standard
    scaling ``(x - mean) / std`` is folded into the weights (``weight / std``): GRPO subtracts the group
    mean, so the shift by ``mean`` cancels and the advantages are exactly those of the standardised
    composite, while the logged component values stay in their own units. The (mean, std) come from
    :func:`fit_scaling` (mismatched reference pairs of the training set) or the config.

    A judge answer that cannot be parsed is a *missing* reward (``None``), not the worst score: TRL sums the
    weighted components with ``nansum``, which would count it as 0, so :func:`missing_as_group_mean` gives it
    the mean judge reward of the rest of its group (no effect on its advantage, none on the group's baseline).
    Each one is logged (``event=judge_unparsed``) and counted (metric ``judge/unparsed``; ``judge`` in
    ``rl_run.json`` and :attr:`RLResult.judge`).

Generation
    Rollouts use TRL's ``generate`` path with the LoRA adapter merged while it runs, and the greedy baseline's
    drafts ride in the same call (:mod:`unirg.trainer.rl_generation`): what is sampled does not change, the
    cost per decoded token does (``[lora] merge_for_generation = false`` turns the merge off;
    ``bench/bench_rl_step.py`` measures both against TRL's stock path).

Output directory ``OUT`` (``output_dir``)::

    OUT/config.json, model.safetensors, tokenizer + processor files, unirg-model.json
                            the trained policy, LoRA merged: ``load_model(OUT)`` loads it
    OUT/adapter/            the RL LoRA adapter alone (``base_model_name_or_path`` = the SFT checkpoint
                            when that is a full checkpoint)
    OUT/holdout.json        patients held out of RL (``holdout_fraction`` > 0), for evaluation
    OUT/rl_run.json         settings, the reward table (real metric or substitute, weight, scaling),
                            the log history, timing
    OUT/checkpoints/checkpoint-N/   Trainer checkpoints: ``--resume`` continues from the last one
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from unirg.model.prompt import format_target
from unirg.trainer.data.splits import write_holdout
from unirg.trainer.data.study import study_input
from unirg.trainer.rl_generation import with_merged_lora_generation
from unirg.trainer.rewards.table import (
    RewardTerm,
    resolve_rewards,
    reward_table,
    trl_reward_weights,
)
from unirg.trainer.rl_config import RLConfig, RLConfigError, load_rl_config

__all__ = [
    "RLResult",
    "RLSetup",
    "RewardTerm",
    "ZeroStdMonitor",
    "build_dataset",
    "build_reward_funcs",
    "build_trainer",
    "converts_to_rgb",
    "fit_scaling",
    "load_policy",
    "load_rl_config",
    "load_samples",
    "load_split",
    "missing_as_group_mean",
    "resolve_rewards",
    "stored_image",
    "study_input",
    "train_rl",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Reward
# ----------------------------------------------------------------------------------------------


def build_reward_funcs(specs: Sequence[RewardTerm], judge_config: dict | None = None) -> list[Callable]:
    """One TRL reward function per spec (``__name__`` = the component, so TRL logs ``rewards/<component>/...``).

    A ``judge`` term needs ``judge_config`` (``[reward.judge]``) or ``UNIRG_JUDGE_BASE_URL``; without either,
    :class:`~unirg.trainer.rewards.judge.JudgeNotConfigured`.
    """
    from unirg.trainer.rewards import build_component

    funcs: list[Callable] = []
    for spec in specs:
        if spec.component == "judge":
            from unirg.trainer.rewards.judge import ENV_BASE_URL, judge_from_config, make_judge_reward

            cfg = judge_config or ({"backend": "openai"} if os.environ.get(ENV_BASE_URL) else None)
            funcs.append(make_judge_reward(judge_from_config(cfg)))  # JudgeNotConfigured when cfg is None
        else:
            funcs.append(build_component(spec.component, **spec.options))
    return funcs


def missing_as_group_mean(func: Callable, group_size: int) -> Callable:
    """``func`` with each ``None`` replaced by the mean of the non-``None`` values of its GRPO group.

    TRL (GRPO and RLOO) gives a reward function the ``group_size`` completions of a prompt next to each
    other and sums the weighted components with ``nansum``: a ``None`` (NaN) would count as 0. With the
    group's mean instead, the missing value adds nothing to that completion's advantage and leaves the
    group's mean as the present values have it, i.e. it is left out of the group. A group with no value
    keeps its ``None``s (the same for every member: no effect). A batch that is not whole groups is
    returned as it is. Other attributes (``judge``, counters) stay on the wrapped function, ``.inner``.
    """
    def reward(*args: Any, **kw: Any) -> list[float | None]:
        values = list(func(*args, **kw))
        if group_size < 2 or len(values) % group_size:
            return values
        out: list[float | None] = []
        for start in range(0, len(values), group_size):
            group = values[start:start + group_size]
            present = [float(v) for v in group if v is not None]
            fill = sum(present) / len(present) if present else None
            out += [fill if v is None else v for v in group]
        return out

    reward.__name__ = reward.__qualname__ = getattr(func, "__name__", "reward")
    reward.inner = func
    return reward


def _judge_counts(funcs: Sequence[Callable]) -> dict[str, int] | None:
    """How many judge answers the run's judge read and how many it could not parse (missing rewards)."""
    for f in funcs:
        judge = getattr(getattr(f, "inner", f), "judge", None)
        if judge is not None:
            return {"judged": judge.judged_count, "unparsed": judge.unparsed_count}
    return None


def fit_scaling(specs: Sequence[RewardTerm], funcs: Sequence[Callable], references: Sequence[str], *,
                pairs: int = 256, seed: int = 0) -> None:
    """Fill ``mean``/``std`` of the standardised specs from mismatched reference pairs.

    Each reference is scored against the reference of another (random) study: the spread of a metric over
    plausible but wrong reports, i.e. over what rollouts look like. ``std`` 0 (a constant component) -> 1.0.
    """
    todo = [(s, f) for s, f in zip(specs, funcs, strict=True) if s.standardize and s.mean is None]
    if not todo:
        return
    unique = sorted(set(r for r in references if r and r.strip()))
    if len(unique) < 2:
        log.warning("fewer than 2 distinct references: reward components are not standard-scaled")
        for spec, _ in todo:
            spec.mean, spec.std = 0.0, 1.0
        return
    rng = random.Random(seed)
    cands, refs = [], []
    for _ in range(pairs):
        a, b = rng.sample(unique, 2)
        cands.append(a)
        refs.append(b)
    for spec, func in todo:
        scorer = getattr(func, "score", None)
        values = scorer(cands, refs) if scorer else func(cands, reference=refs)
        kept = [float(v) for v in values if v is not None]
        if not kept:
            spec.mean, spec.std = 0.0, 1.0
            continue
        mu = sum(kept) / len(kept)
        sd = (sum((v - mu) ** 2 for v in kept) / len(kept)) ** 0.5
        spec.mean, spec.std = mu, sd if sd > 1e-8 else 1.0


def _apply_scaling(cfg: RLConfig, specs: Sequence[RewardTerm], funcs: Sequence[Callable],
                   references: Sequence[str]) -> None:
    if cfg.reward_scaling == "none":
        for spec in specs:
            spec.standardize = False
        return
    if isinstance(cfg.reward_scaling, dict):
        for spec in specs:
            pair = cfg.reward_scaling.get(spec.key) or cfg.reward_scaling.get(spec.component)
            if pair is not None:
                spec.standardize, spec.mean, spec.std = True, float(pair[0]), float(pair[1])
            elif spec.standardize:
                log.warning("reward_scaling has no [mean, std] for %s: used unscaled", spec.key)
                spec.standardize = False
        return
    fit_scaling(specs, funcs, references, pairs=cfg.scaling_pairs, seed=cfg.seed)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _holdout_patients(sft: str | None) -> set[str]:
    """Patients the SFT run held out for evaluation (``SFT/holdout.json``): RL must not train on them."""
    if not sft:
        return set()
    path = Path(sft) / "holdout.json"
    if not path.is_file():
        return set()
    return set(json.loads(path.read_text(encoding="utf-8")).get("patients", []))


def load_split(cfg: RLConfig) -> tuple[list, list]:
    """``(train, held_out)`` samples of ``cfg``: its institutions, minus SFT's held-out patients (and, with
    ``train_institutions``, minus patients with studies elsewhere), with a frontal image and a report; then
    a seeded share ``holdout_fraction`` of the patients is held out of training (``OUT/holdout.json``)."""
    from unirg.trainer.data import holdout_split, load_dataset, split_by_institution

    if not cfg.data:
        raise RLConfigError("no training data: pass --data DIR (a testbed made by `unirg-trainer synth`, ...)")
    samples = load_dataset(cfg.data)
    if cfg.train_institutions:
        others = sorted({s.institution for s in samples if s.institution not in cfg.train_institutions} - {None})
        samples = split_by_institution(samples, train=cfg.train_institutions, test=others)["train"]
    held = _holdout_patients(cfg.sft)
    kept = [s for s in samples if s.patient_id not in held and s.frontal is not None
            and (s.findings.strip() or s.impression.strip())]
    kept, held_out = holdout_split(kept, cfg.holdout_fraction, cfg.seed)
    if cfg.max_train_samples:
        kept = kept[: cfg.max_train_samples]
    if not kept:
        raise RLConfigError(
            f"no training samples in {cfg.data} (institutions {cfg.train_institutions}, {len(held)} SFT held-out "
            "patients excluded); check --institutions against the data"
        )
    log.info("RL training samples: %d (%d SFT held-out patients excluded, %d studies held out of RL)",
             len(kept), len(held), len(held_out))
    return kept, held_out


def load_samples(cfg: RLConfig) -> list:
    """The training samples of ``cfg`` (:func:`load_split` without the held-out ones)."""
    return load_split(cfg)[0]


def converts_to_rgb(processor) -> bool:
    """The processor turns every image into RGB before anything else (``do_convert_rgb``)."""
    return bool(getattr(getattr(processor, "image_processor", None), "do_convert_rgb", False))


def stored_image(image, *, gray_as_l: bool):
    """``image`` as the RL dataset keeps it: with ``gray_as_l``, an RGB image whose three bands are equal (a
    radiograph, as :func:`~unirg.model.pixels.dataset_to_image` makes it) as its one ``L`` band. A processor that
    converts to RGB first gives the same pixels from either; the Arrow file's PNG work is a third."""
    if gray_as_l and image.mode == "RGB":
        red, green, blue = image.split()
        if red.tobytes() == green.tobytes() == blue.tobytes():
            return red
    return image


def build_dataset(samples: Sequence, adapter, *, size: int = 512, longitudinal: bool = True,
                  cache_dir: str | os.PathLike | None = None, gray_as_l: bool = False):
    """A ``datasets.Dataset`` of TRL rows: ``prompt`` (chat messages with image placeholders), ``images``,
    ``reference`` (the target text), ``institution``, ``study_uid``.

    Rows are streamed into an Arrow file (in ``cache_dir`` when given), so decoded images never all sit in
    memory at once: the dataset scales to MIMIC-sized training sets. ``gray_as_l``: see :func:`stored_image`
    (only for a processor that :func:`converts_to_rgb`)."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    def rows():
        for sample in tqdm(samples, desc="preparing RL prompts", leave=False):
            study = study_input(sample, size=size, longitudinal=longitudinal)
            prompt = adapter.prompts([study])[0]
            yield {
                "prompt": prompt.messages,
                "images": [stored_image(image, gray_as_l=gray_as_l) for image in prompt.images],
                "reference": format_target(sample.findings, sample.impression),
                "institution": sample.institution or "",
                "study_uid": sample.study_id,
            }

    return Dataset.from_generator(rows, cache_dir=str(cache_dir) if cache_dir else None,
                                  fingerprint=_fingerprint(samples, adapter, size, longitudinal, gray_as_l))


def _fingerprint(samples: Sequence, adapter, size: int, longitudinal: bool, gray_as_l: bool = False) -> str:
    """A dataset fingerprint from the studies, the prompt family and the settings (``datasets`` cannot hash
    the generator); the same fingerprint reuses the Arrow file of an earlier run (e.g. on resume)."""
    import hashlib

    from unirg.model.prompt import INSTRUCTION

    digest = hashlib.sha256(f"unirg-rl:{adapter.name}:{adapter.system_prompt}:{adapter.prior_report_style}:{INSTRUCTION}:{size}:"
                            f"{longitudinal}:{gray_as_l}".encode())
    for sample in samples:
        digest.update(f"{sample.sample_id}|{sample.frontal.path if sample.frontal else ''}\n".encode())
    return digest.hexdigest()[:32]


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def _dtype(cfg: RLConfig) -> torch.dtype:
    if cfg.bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


def load_policy(cfg: RLConfig):
    """``(model, processor, adapter)`` of the start policy ``cfg.sft`` (a LoRA adapter is merged)."""
    from unirg.model import load_model

    if not cfg.sft:
        raise RLConfigError("no start policy: pass --sft PATH (the directory `unirg-trainer sft` wrote)")
    device = "cpu" if cfg.use_cpu else str(cfg.device)
    report_model = load_model(cfg.sft, device=device, dtype=_dtype(cfg), merge_adapter=True)
    if report_model.adapter.name == "maira2":
        raise RLConfigError("MAIRA-2 builds its own prompt (remote code); RL supports the shared-prompt families "
                            "(Qwen3-VL, Qwen2.5-VL, Gemma 3, LLaVA)")
    model = report_model.model
    model.train()
    return model, report_model.processor, report_model.adapter


def lora_config(cfg: RLConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")


class ZeroStdMonitor(TrainerCallback):
    """Warns when ``frac_reward_zero_std`` (share of groups whose rollouts all got the same reward, i.e. no
    gradient) stays above ``threshold`` for ``patience`` logging steps, with what to change."""

    def __init__(self, threshold: float = 0.5, patience: int = 3) -> None:
        self.threshold = threshold
        self.patience = patience
        self.streak = 0
        self.warnings = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("frac_reward_zero_std")
        if value is None:
            return
        self.streak = self.streak + 1 if value > self.threshold else 0
        if self.streak == self.patience:
            self.warnings += 1
            log.warning(
                "frac_reward_zero_std = %.2f for %d logging steps: most GRPO groups have identical rewards and give "
                "no gradient. Raise temperature (1.0) or num_generations (16), add a dense reward component "
                "(bertscore/embedding_cosine, radgraph), or check that completions are not all truncated/empty.",
                value, self.patience)


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


@dataclass
class RLSetup:
    """Everything :func:`build_trainer` assembled (for inspection and tests)."""

    config: RLConfig
    trainer: Any
    specs: list[RewardTerm]
    processor: Any
    adapter: Any
    train_samples: int
    run_dir: Path


def _trl_args(cfg: RLConfig, specs: Sequence[RewardTerm], run_dir: Path):
    args = copy.copy(cfg)  # same values; TRL's output_dir is the checkpoints folder
    args.output_dir = str(run_dir / "checkpoints")
    args.reward_weights = trl_reward_weights(specs)
    return args.to_trl()


def build_trainer(cfg: RLConfig, *, samples: Sequence | None = None) -> RLSetup:
    """The TRL trainer for ``cfg`` (data, reward, policy, LoRA), not yet trained."""
    from trl import GRPOTrainer, RLOOTrainer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    specs = resolve_rewards(cfg)
    funcs = build_reward_funcs(specs, cfg.judge)  # fails early (JudgeNotConfigured) before loading anything big
    samples, held_out = (list(samples), []) if samples is not None else load_split(cfg)
    references = [format_target(s.findings, s.impression) for s in samples]
    _apply_scaling(cfg, specs, funcs, references)
    funcs = [missing_as_group_mean(f, cfg.num_generations) if s.component == "judge" else f
             for s, f in zip(specs, funcs, strict=True)]
    log.info("%s", reward_table(specs))
    for spec in specs:
        if not spec.real:
            log.warning("reward %s: %s; its scores are not comparable with the published metric",
                           spec.key, spec.description)
    model, processor, adapter = load_policy(cfg)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if held_out:
        write_holdout(run_dir, (s.patient_id for s in held_out), [s.study_id for s in held_out])
    dataset = build_dataset(samples, adapter, size=cfg.image_size, longitudinal=cfg.longitudinal,
                            cache_dir=run_dir / "checkpoints" / ".dataset-cache",
                            gray_as_l=converts_to_rgb(processor))
    args = _trl_args(cfg, specs, run_dir)
    trainer_cls = with_merged_lora_generation(GRPOTrainer if cfg.algorithm == "grpo" else RLOOTrainer)
    if cfg.advantage_baseline == "greedy":
        from unirg.trainer.rl_scst import SelfCriticalGRPOTrainer

        trainer_cls = SelfCriticalGRPOTrainer
    trainer = trainer_cls(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=lora_config(cfg) if cfg.use_lora else None,
        callbacks=[ZeroStdMonitor(cfg.zero_std_warning)],
    )
    trainer.merge_lora_for_generation = cfg.merge_lora_for_generation
    return RLSetup(config=cfg, trainer=trainer, specs=specs, processor=processor, adapter=adapter,
                   train_samples=len(samples), run_dir=run_dir)


@dataclass
class RLResult:
    """What :func:`train_rl` did."""

    out_dir: Path
    manifest: dict
    log_history: list[dict]
    rewards: list[dict]
    train_samples: int
    global_step: int
    wall_s: float
    judge: dict[str, int] | None = None  # {"judged": N, "unparsed": M} when the reward has a judge term

    def metric(self, name: str) -> list[float]:
        """Values of a logged metric over the steps (e.g. ``"frac_reward_zero_std"``)."""
        return [h[name] for h in self.log_history if name in h]


def _last_checkpoint(directory: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(found) if directory.is_dir() and (found := get_last_checkpoint(str(directory))) else None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _synthetic_only(sft: Path, cfg: RLConfig) -> bool:
    """The start policy was trained on synthetic data only and RL ran on the synthetic testbed."""
    from unirg.model.model import MANIFEST, TRAINING_DATA
    from unirg.trainer.data.registry import detect_format

    try:
        start = json.loads((sft / MANIFEST).read_text(encoding="utf-8"))
        return start.get(TRAINING_DATA) == "synthetic" and bool(cfg.data) and detect_format(cfg.data) == "testbed"
    except (OSError, ValueError):
        return False


def _save_outputs(setup: RLSetup, cfg: RLConfig) -> dict:
    """Adapter to ``OUT/adapter``, merged policy + processor + manifest to ``OUT``."""
    from unirg.trainer.sft import save_model_dir, write_manifest

    run_dir, trainer = setup.run_dir, setup.trainer
    model = trainer.accelerator.unwrap_model(trainer.model)
    sft = Path(cfg.sft)
    name = f"{sft.resolve().name}-{cfg.preset or cfg.algorithm}"
    extra = {"stage": "rl", "preset": cfg.preset, "algorithm": cfg.algorithm, "start_policy": str(sft.resolve()),
             "global_step": trainer.state.global_step,
             "prompt": {"prior_report": setup.adapter.prior_report_style}}  # the start policy's
    if _synthetic_only(sft, cfg):
        extra["training_data"] = "synthetic"  # drafts then say so in their disclaimer
    if hasattr(model, "peft_config"):
        sft_is_full = (sft / "config.json").is_file()
        adapter_dir = run_dir / "adapter"
        if sft_is_full:
            save_model_dir(model, setup.processor, adapter_dir, name=f"{name}-adapter", base_dir=sft.resolve(),
                           version=None, **extra)
        else:  # the start policy only exists merged in memory: keep the adapter weights without a loadable base
            model.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    manifest = save_model_dir(model, setup.processor, run_dir, name=name, **extra)
    return write_manifest(run_dir, name=name, version=f"rl-{manifest['weights_sha256'][:12]}", **extra)


def train_rl(cfg: RLConfig, *, resume: bool | str | None = None, samples: Sequence | None = None,
             setup: RLSetup | None = None) -> RLResult:
    """Train as ``cfg`` says; ``resume=True`` continues from the last checkpoint in ``OUT/checkpoints``
    (or from the checkpoint directory given). Returns an :class:`RLResult`; the model lands in ``OUT``.

    ``setup`` is a trainer already made by :func:`build_trainer` (to inspect it before training)."""
    started = time.monotonic()
    setup = setup or build_trainer(cfg, samples=samples)
    checkpoint: str | None = None
    if resume:
        found = Path(resume) if isinstance(resume, str) else _last_checkpoint(setup.run_dir / "checkpoints")
        if found is None or not found.is_dir():
            raise RLConfigError(f"--resume: no checkpoint in {setup.run_dir / 'checkpoints'} (a run saves one "
                                "every save_steps steps); start without --resume")
        checkpoint = str(found)
        log.info("resuming from %s", checkpoint)
    setup.trainer.train(resume_from_checkpoint=checkpoint)
    manifest = _save_outputs(setup, cfg)
    history = list(setup.trainer.state.log_history)
    result = RLResult(out_dir=setup.run_dir, manifest=manifest, log_history=history,
                      rewards=[s.row() for s in setup.specs], train_samples=setup.train_samples,
                      global_step=setup.trainer.state.global_step, wall_s=time.monotonic() - started,
                      judge=_judge_counts(setup.trainer.reward_funcs))
    summary = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": _jsonable(cfg.summary()),
        "rewards": result.rewards,
        "train_samples": result.train_samples,
        "global_step": result.global_step,
        "judge": result.judge,
        "resumed_from": checkpoint,
        "wall_s": round(result.wall_s, 1),
        "versions": _versions(),
        "log_history": _jsonable(history),
    }
    (setup.run_dir / "rl_run.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return result


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
