"""Supervised fine-tuning of a report model (``unirg-trainer sft``).

The model sees in training exactly what it sees in the plugin: the studies go through
the same view selection, pixel pipeline (:func:`unirg.model.pixels.dataset_to_image`),
prompt (:func:`unirg.model.prompt.build_prompt`) and family adapter
(:meth:`FamilyAdapter.training_inputs`: the inference prompt followed by the
:func:`~unirg.model.prompt.format_target` answer, loss on the answer only).

Trainer: TRL's ``SFTTrainer``. It fits a VLM with our own collator: the dataset only
holds example indices (no ``image``/``images`` column, so TRL does no vision preparation of
its own), ``dataset_kwargs={"skip_prepare_dataset": True}`` and
``remove_unused_columns=False`` leave batching to :class:`SFTCollator`, which returns
right-padded batches with ``labels`` (``-100`` on the prompt). What TRL adds over
``transformers.Trainer``: its chunked LM-head loss (the full logits are never built) and
token accuracy / entropy logging. LoRA is applied with peft's ``get_peft_model`` in
:func:`prepare_model` (what TRL's ``peft_config`` does), so the RL trainer can start from
the same function. Activation checkpointing, which TRL turns on by default, is off unless
``activation_checkpointing`` is set: it only saves memory, at a cost in speed.

Pieces a later trainer (``unirg-trainer rl``) reuses:

- :class:`TrainingExample`, :func:`testbed_examples`, :func:`patient_split` (:mod:`.sft_data`, over
  :mod:`unirg.trainer.data` samples);
- :class:`StudyInputCache` (decoded images, ``StudyInput`` per example) and :class:`SFTCollator` (:mod:`.sft_data`);
- :func:`prepare_model` (base checkpoint or tiny init, LoRA) and :func:`save_model_dir`
  (``save_pretrained`` + processor + ``unirg-model.json``), loadable by ``load_model``;
- :func:`evaluate_chexpert` (CheXpert-14 F1 of drafts vs labels) and
  :func:`most_common_report` (:mod:`.sft_eval`).

Directory written by :func:`train_sft` (``OUT``)::

    OUT/config.json, model.safetensors, tokenizer files, preprocessor_config.json,
        chat_template.jinja, unirg-model.json     (full fine-tuning, or merged LoRA)
    OUT/adapter_config.json, adapter_model.safetensors, ...   (LoRA; the base is named
        by path, or kept in OUT/base when it was built by --init)
    OUT/holdout.json       patient IDs held out (the split), for evaluation
    OUT/checkpoints/       Trainer checkpoints (resume), not part of the model
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unirg.model.families import FamilyAdapter, adapter_for, save_processor
from unirg.model.model import MANIFEST, TRAINING_DATA, manifest_prior_report_style
from unirg.model.reload import model_weights_sha256
from unirg.trainer.data import detect_format, write_holdout
from unirg.trainer.sft_config import SFTRunConfig, load_config
from unirg.trainer.sft_data import (
    SFTCollator,
    StudyInputCache,
    TrainingExample,
    _processor_side,
    approximate_length,
    examples_from_samples,
    index_dataset,
    patient_split,
    testbed_examples,
)
from unirg.trainer.sft_eval import draft_examples, evaluate_chexpert, evaluate_model_dir, most_common_report

__all__ = [
    "SFTCollator",
    "SFTResult",
    "SFTRunConfig",
    "StudyInputCache",
    "TrainingExample",
    "approximate_length",
    "draft_examples",
    "evaluate_chexpert",
    "evaluate_model_dir",
    "examples_from_samples",
    "index_dataset",
    "load_config",
    "most_common_report",
    "patient_split",
    "prepare_model",
    "save_model_dir",
    "testbed_examples",
    "train_sft",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model
def _device(config: SFTRunConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_init(config: SFTRunConfig, out_dir: Path, corpus: Sequence[str]) -> Path:
    """The random-weight starting model named by ``config.init``, written to ``out_dir``."""
    from unirg.trainer.tiny_models import build_tiny_qwen3_vl

    model_type = {"tiny-qwen3-vl": "qwen3_vl", "tiny-qwen2.5-vl": "qwen2_5_vl"}[str(config.init)]
    return build_tiny_qwen3_vl(
        out_dir,
        corpus=list(corpus),
        vocab_size=config.tiny_vocab_size,
        hidden_size=config.tiny_hidden_size,
        num_layers=config.tiny_layers,
        vision_hidden_size=config.tiny_vision_hidden_size,
        vision_layers=config.tiny_vision_layers,
        image_size=config.tiny_image_size,
        patch_size=config.tiny_patch_size if model_type == "qwen3_vl" else None,
        seed=config.seed,
        overwrite=True,
        model_type=model_type,
    )


def prepare_model(config: SFTRunConfig, base_dir: Path) -> tuple[Any, Any, FamilyAdapter]:
    """Load ``base_dir`` for training, the way :func:`load_model` loads it, with LoRA when asked.

    Returns ``(model, processor, adapter)``; the model is a ``PeftModel`` with LoRA.
    """
    adapter = adapter_for(base_dir, trust_remote_code=config.trust_remote_code,
                          prior_report_style=config.prior_report_style or manifest_prior_report_style(base_dir))
    processor = adapter.load_processor(base_dir)
    device = _device(config)
    model = adapter.load_model(base_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.to(device)
    if config.use_lora:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, processor, adapter


def write_manifest(model_dir: str | Path, *, name: str, version: str | None = None, **extra: Any) -> dict:
    """Write ``unirg-model.json`` (name, version, weights_sha256, plus ``extra``) atomically."""
    model_dir = Path(model_dir)
    sha = model_weights_sha256(model_dir)
    manifest = {"name": name[:64], "version": (version or f"sft-{sha[:12]}")[:64], "weights_sha256": sha, **extra}
    tmp = model_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / MANIFEST)
    return manifest


def save_model_dir(
    model: Any,
    processor: Any,
    out_dir: str | Path,
    *,
    name: str,
    version: str | None = None,
    base_dir: str | Path | None = None,
    merge_lora: bool = False,
    **manifest_extra: Any,
) -> dict:
    """Save a trained model so that ``load_model(out_dir)`` loads it; returns the manifest.

    A ``PeftModel`` is saved as its adapter (``base_model_name_or_path`` = ``base_dir``,
    relative when the base lies inside ``out_dir``) or, with ``merge_lora``, merged into
    a full checkpoint. The processor goes beside it (:func:`save_processor`), then
    ``unirg-model.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "adapter_model.safetensors", "adapter_config.json", "config.json", MANIFEST):
        (out / stale).unlink(missing_ok=True)
    for shard in out.glob("model-*.safetensors"):
        shard.unlink()
    is_peft = hasattr(model, "peft_config")
    if is_peft and merge_lora:
        model = model.merge_and_unload()
        is_peft = False
    model.save_pretrained(out)
    if is_peft:
        if base_dir is None:
            raise ValueError("save_model_dir needs base_dir for a LoRA adapter")
        base = Path(base_dir).resolve()
        try:
            reference = base.relative_to(out.resolve()).as_posix()
        except ValueError:
            reference = str(base)
        config_file = out / "adapter_config.json"
        adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = reference
        config_file.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    save_processor(processor, out)
    return write_manifest(out, name=name, version=version, **manifest_extra)


# --------------------------------------------------------------------------- training
@dataclass
class SFTResult:
    """What :func:`train_sft` did."""

    out_dir: Path
    manifest: dict
    log_history: list[dict]
    train_examples: list[TrainingExample]
    held_out: list[TrainingExample]
    wall_s: float

    @property
    def losses(self) -> list[float]:
        """Training losses in logging order."""
        return [float(entry["loss"]) for entry in self.log_history if "loss" in entry]


def _prepare_out(config: SFTRunConfig) -> None:
    """Check ``out`` against ``overwrite`` / ``resume`` and clear what a fresh run replaces."""
    out = config.out_dir
    finished = (out / MANIFEST).is_file()
    checkpoints = _last_checkpoint(config.checkpoint_dir) is not None
    if config.resume:
        pass  # continue from the newest checkpoint; the final model is rewritten
    elif finished or checkpoints:
        if not config.overwrite:
            what = "a trained model" if finished else "checkpoints of an unfinished run"
            raise FileExistsError(
                f"{out} already holds {what}; pass --resume to continue from its newest checkpoint, "
                "--overwrite to start again, or choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _last_checkpoint(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(directory))
    return Path(last) if last else None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return out


def trl_args(config: SFTRunConfig, *, has_eval: bool):
    """The ``trl.SFTConfig`` (a ``TrainingArguments``) for ``config``."""
    from trl import SFTConfig

    device = _device(config)
    on_cpu = device.type == "cpu"
    bf16 = (not on_cpu) and torch.cuda.is_bf16_supported()
    warmup = int(config.warmup) if config.warmup >= 1 else float(config.warmup)
    return SFTConfig(
        output_dir=str(config.checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=warmup,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        eval_strategy="epoch" if has_eval and config.max_steps == -1 else "no",
        use_cpu=on_cpu,
        bf16=bf16,
        fp16=False,
        activation_checkpointing=config.activation_checkpointing,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
        report_to="none",
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length",
        disable_tqdm=not log.isEnabledFor(logging.INFO),
    )


def train_sft(
    config: SFTRunConfig,
    *,
    examples: Sequence[TrainingExample] | None = None,
    callbacks: Sequence[Any] = (),
) -> SFTResult:
    """Train as ``config`` says and save a model ``load_model(config.out)`` loads.

    ``examples`` replaces the testbed loader (other data sources); the patient split
    and everything else apply as usual. ``callbacks`` are ``transformers.TrainerCallback``
    objects added to the trainer.
    """
    from transformers import set_seed
    from trl import SFTTrainer

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = config.out_dir
    _prepare_out(config)
    set_seed(config.seed)

    # the testbed is synthetic data only; a manifest (e.g. from `unirg-trainer export`) may be real
    synthetic = examples is None and detect_format(config.data) == "testbed"
    if examples is None:
        examples = testbed_examples(config.data, institutions=config.institutions, priors=config.priors)
    if not examples:
        raise ValueError(
            f"no training examples in {config.data} for institutions {config.institutions}; "
            "check --institutions against the manifest"
        )
    train, held_out = patient_split(examples, config.eval_fraction, config.seed)
    if config.max_examples:
        train = train[: config.max_examples]
    write_holdout(out, (e.patient_id for e in held_out), [e.study_uid for e in held_out])

    # starting point
    base_dir: Path
    if config.init:
        base_dir = (out / "base") if config.use_lora else (config.checkpoint_dir / "init")
        if not (base_dir / "config.json").is_file():
            corpus = sorted({e.target for e in train})
            build_init(config, base_dir, corpus)
    else:
        base_dir = Path(str(config.base)).resolve()
    model, processor, adapter = prepare_model(config, base_dir)
    image_side = _processor_side(processor)
    cache = StudyInputCache(decode_size=min(512, max(2 * image_side, 64)) if image_side else 512)
    vision = None
    if config.vision_pretrain_epochs > 0:
        from unirg.trainer.vision_pretrain import VisionPretrainConfig, pretrain_on_examples

        vision = pretrain_on_examples(
            model, processor, cache, train, held_out,
            VisionPretrainConfig(epochs=config.vision_pretrain_epochs, lr=config.vision_pretrain_lr, seed=config.seed),
        ).to_dict()
    if config.freeze_vision:
        from unirg.trainer.vision_pretrain import freeze_vision_tower

        log.info("vision tower frozen for SFT (%d parameters)", freeze_vision_tower(model))
    # one collator over train + held-out; evaluation rows index past the training ones
    collator = SFTCollator(adapter, processor, [*train, *held_out], cache)
    train_ds = index_dataset(train)
    eval_ds = index_dataset(held_out, start=len(train)) if held_out else None
    args = trl_args(config, has_eval=eval_ds is not None)
    trainer = SFTTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        callbacks=list(callbacks) or None,
    )
    resume = _last_checkpoint(config.checkpoint_dir) if config.resume else None
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    eval_loss = None
    if held_out:
        eval_loss = trainer.evaluate().get("eval_loss")
    log_history = list(trainer.state.log_history)
    final_model = trainer.model
    if hasattr(final_model, "module"):
        final_model = final_model.module
    wall = time.monotonic() - started
    losses = [float(entry["loss"]) for entry in log_history if "loss" in entry]
    training = {
        "method": "sft",
        "trainer": "trl.SFTTrainer",
        "started_from": {"init": config.init} if config.init else {"base": str(base_dir)},
        "lora": (
            {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
             "target_modules": config.lora_target_modules, "merged": config.merge_lora}
            if config.use_lora else None
        ),
        "data": str(Path(str(config.data)).resolve()) if config.data else None,
        "institutions": list(config.institutions or []),
        "train_examples": len(train),
        "train_patients": len({e.patient_id for e in train}),
        "held_out_examples": len(held_out),
        "vision_pretraining": vision,
        "vision_frozen": config.freeze_vision,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "held_out_loss": eval_loss,
        "wall_s": round(wall, 1),
        "device": str(_device(config)),
        "threads": torch.get_num_threads(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "versions": _versions(),
    }
    manifest = save_model_dir(
        final_model,
        processor,
        out,
        name=config.name or out.resolve().name,
        version=config.version,
        base_dir=base_dir,
        merge_lora=config.merge_lora,
        family=adapter.name,
        prompt={"prior_report": adapter.prior_report_style},
        training=training,
        **({TRAINING_DATA: "synthetic"} if synthetic else {}),  # drafts then say so in their disclaimer
    )
    log.info("saved %s version %s to %s (%.0f s)", manifest["name"], manifest["version"], out, wall)
    return SFTResult(out, manifest, log_history, list(train), list(held_out), wall)
