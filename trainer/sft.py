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

- :class:`TrainingExample`, :func:`testbed_examples`, :func:`patient_split`;
- :class:`StudyInputCache` (decoded images, ``StudyInput`` per example) and :class:`SFTCollator`;
- :func:`prepare_model` (base checkpoint or tiny init, LoRA) and :func:`save_model_dir`
  (``save_pretrained`` + processor + ``unirg-model.json``), loadable by ``load_model``;
- :func:`evaluate_chexpert` (CheXpert-14 F1 of drafts vs labels) and
  :func:`most_common_report`.

Directory written by :func:`train_sft` (``OUT``)::

    OUT/config.json, model.safetensors, tokenizer files, preprocessor_config.json,
        chat_template.jinja, unirg-model.json     (full fine-tuning, or merged LoRA)
    OUT/adapter_config.json, adapter_model.safetensors, ...   (LoRA; the base is named
        by path, or kept in OUT/base when it was built by --init)
    OUT/holdout.json       patient IDs held out (the split), for evaluation
    OUT/checkpoints/       Trainer checkpoints (resume), not part of the model
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import platform
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unirg.model.families import FamilyAdapter, adapter_for, save_processor
from unirg.model.model import MANIFEST, TRAINING_DATA
from unirg.model.prompt import format_target
from unirg.model.reload import model_weights_sha256
from unirg.model.study import GenerationConfig, StudyInput, chunked, indication_from_dataset
from unirg.trainer.sft_config import SFTRunConfig, load_config

__all__ = [
    "SFTCollator",
    "SFTResult",
    "SFTRunConfig",
    "StudyInputCache",
    "TrainingExample",
    "evaluate_chexpert",
    "load_config",
    "most_common_report",
    "patient_split",
    "prepare_model",
    "save_model_dir",
    "testbed_examples",
    "train_sft",
]

logger = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP")
TOP5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainingExample:
    """One study to learn from: image paths, the prior, the reference report.

    Paths are absolute. ``target`` is the answer the model is trained to write
    (:func:`format_target` of the reference findings and impression).
    """

    study_uid: str
    patient_id: str
    institution: str
    frontal: str
    target: str
    labels: dict[str, int | None] = field(default_factory=dict, compare=False)
    prior_frontal: str | None = None
    prior_report: str | None = None
    study_date: str = ""


def _frontal_path(root: Path, record: dict) -> str | None:
    frontals = [image for image in record.get("images", []) if image.get("view") in FRONTAL_VIEWS]
    frontals.sort(key=lambda image: FRONTAL_VIEWS.index(image["view"]))  # PA before AP, as select_views
    return str(root / frontals[0]["path"]) if frontals else None


def testbed_examples(
    data_dir: str | Path,
    *,
    institutions: Iterable[str] | None = None,
    priors: bool = True,
) -> list[TrainingExample]:
    """Training examples from a synthetic testbed (``manifest.jsonl``, docs/design.md).

    Studies without a frontal image are left out (the plugin skips them too). With
    ``priors``, a study whose prior has a frontal image gets that image and the prior's
    report, which is what the plugin sends for the most recent prior.
    """
    root = Path(data_dir).resolve()
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: make a testbed with `unirg-trainer synth --out {root}`")
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_uid = {record["study_uid"]: record for record in records}
    wanted = set(institutions) if institutions else None
    examples = []
    for record in records:
        if wanted is not None and record.get("institution") not in wanted:
            continue
        frontal = _frontal_path(root, record)
        if frontal is None:
            continue
        report = record["report"]
        prior_frontal = prior_report = None
        prior = by_uid.get(record.get("prior_study_uid") or "")
        if priors and prior is not None:
            prior_frontal = _frontal_path(root, prior)
            if prior_frontal is not None:
                prior_report = format_target(prior["report"]["findings"], prior["report"]["impression"])
        examples.append(
            TrainingExample(
                study_uid=record["study_uid"],
                patient_id=record["patient_id"],
                institution=record.get("institution", ""),
                frontal=frontal,
                target=format_target(report["findings"], report["impression"]),
                labels=dict(record.get("labels") or {}),
                prior_frontal=prior_frontal,
                prior_report=prior_report,
                study_date=str(record.get("study_date", "")),
            )
        )
    return examples


testbed_examples.__test__ = False  # not a pytest test, whatever its name


def patient_split(
    examples: Sequence[TrainingExample], fraction: float, seed: int
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """``(train, held_out)``: a seeded share ``fraction`` of the *patients* is held out,
    so no patient sits on both sides. Independent of the order of ``examples``."""
    patients = sorted({example.patient_id for example in examples})
    if fraction <= 0 or len(patients) < 2:
        return list(examples), []
    count = min(len(patients) - 1, max(1, round(len(patients) * fraction)))
    held = set(random.Random(seed).sample(patients, count))
    return [e for e in examples if e.patient_id not in held], [e for e in examples if e.patient_id in held]


class StudyInputCache:
    """Builds the :class:`StudyInput` of an example, decoding each DICOM file once.

    The fields are what :meth:`StudyInput.from_datasets` makes of the same files
    (indication from the image header, ``"Chest radiograph YYYY-MM-DD."`` comparison
    for a prior); ``decode_size`` is the square the pixels are fitted to before the
    processor's own resize (512 in the plugin; a smaller square changes nothing once the
    processor has resized to a smaller model input, and saves memory).
    """

    def __init__(self, decode_size: int = 512) -> None:
        self.decode_size = decode_size
        self._images: dict[str, Any] = {}
        self._headers: dict[str, tuple[str | None, str]] = {}

    def _load(self, path: str) -> None:
        import pydicom

        from unirg.model.pixels import dataset_to_image

        ds = pydicom.dcmread(path)
        self._images[path] = dataset_to_image(ds, size=self.decode_size)
        self._headers[path] = (indication_from_dataset(ds), str(getattr(ds, "StudyDate", "") or ""))

    def image(self, path: str):
        if path not in self._images:
            self._load(path)
        return self._images[path]

    def header(self, path: str) -> tuple[str | None, str]:
        if path not in self._headers:
            self._load(path)
        return self._headers[path]

    def study(self, example: TrainingExample) -> StudyInput:
        indication, _date = self.header(example.frontal)
        comparison = None
        prior_image = None
        if example.prior_frontal is not None:
            prior_image = self.image(example.prior_frontal)
            _, prior_date = self.header(example.prior_frontal)
            if len(prior_date) == 8 and prior_date.isdigit():  # as StudyInput.from_datasets
                comparison = f"Chest radiograph {prior_date[:4]}-{prior_date[4:6]}-{prior_date[6:]}."
        return StudyInput(
            frontal=self.image(example.frontal),
            indication=indication,
            comparison=comparison,
            prior_frontal=prior_image,
            prior_report=example.prior_report if prior_image is not None else None,
            study_uid=example.study_uid,
        )


class SFTCollator:
    """Turns dataset rows ``{"index": i}`` into a training batch of ``examples[i]``.

    The batch is :meth:`FamilyAdapter.training_inputs` (right-padded, ``labels`` -100 on
    prompt and padding), so the prompt is byte for byte the inference prompt.
    """

    def __init__(
        self,
        adapter: FamilyAdapter,
        processor: Any,
        examples: Sequence[TrainingExample],
        cache: StudyInputCache | None = None,
    ) -> None:
        self.adapter = adapter
        self.processor = processor
        self.examples = list(examples)
        self.cache = cache or StudyInputCache()

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        chosen = [self.examples[int(feature["index"])] for feature in features]
        studies = [self.cache.study(example) for example in chosen]
        batch = self.adapter.training_inputs(self.processor, studies, [e.target for e in chosen])
        return dict(batch)


def approximate_length(example: TrainingExample) -> int:
    """A cheap proxy of an example's token count (words), for length-grouped batches."""
    words = len(example.target.split())
    if example.prior_frontal is not None:
        words += 40 + len((example.prior_report or "").split())  # second image + prior report
    return words


def index_dataset(examples: Sequence[TrainingExample], start: int = 0):
    """A ``datasets.Dataset`` of rows ``{"index", "length"}`` (``index`` is what
    :class:`SFTCollator` reads, counted from ``start``; ``length`` feeds length grouping)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "index": list(range(start, start + len(examples))),
            "length": [approximate_length(example) for example in examples],
        }
    )


# --------------------------------------------------------------------------- model
def _device(config: SFTRunConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_init(config: SFTRunConfig, out_dir: Path, corpus: Sequence[str]) -> Path:
    """The random-weight starting model named by ``config.init``, written to ``out_dir``."""
    from unirg.model.tiny import build_tiny_qwen3_vl

    model_type = {"tiny-qwen3-vl": "qwen3_vl", "tiny-qwen2.5-vl": "qwen2_5_vl"}[str(config.init)]
    return build_tiny_qwen3_vl(
        out_dir,
        corpus=list(corpus),
        vocab_size=config.tiny_vocab_size,
        hidden_size=config.tiny_hidden_size,
        num_layers=config.tiny_layers,
        vision_hidden_size=config.tiny_vision_hidden_size,
        image_size=config.tiny_image_size,
        seed=config.seed,
        overwrite=True,
        model_type=model_type,
    )


def prepare_model(config: SFTRunConfig, base_dir: Path) -> tuple[Any, Any, FamilyAdapter]:
    """Load ``base_dir`` for training, the way :func:`load_model` loads it, with LoRA when asked.

    Returns ``(model, processor, adapter)``; the model is a ``PeftModel`` with LoRA.
    """
    adapter = adapter_for(base_dir, trust_remote_code=config.trust_remote_code)
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
        disable_tqdm=not logger.isEnabledFor(logging.INFO),
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

    synthetic = examples is None  # the testbed loader: synthetic data only
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
    (out / "holdout.json").write_text(
        json.dumps(
            {"patients": sorted({e.patient_id for e in held_out}), "studies": [e.study_uid for e in held_out]},
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )

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
        logger.info("resuming from %s", resume)
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
        training=training,
        **({TRAINING_DATA: "synthetic"} if synthetic else {}),  # drafts then say so in their disclaimer
    )
    logger.info("saved %s version %s to %s (%.0f s)", manifest["name"], manifest["version"], out, wall)
    return SFTResult(out, manifest, log_history, list(train), list(held_out), wall)


def _processor_side(processor: Any) -> int | None:
    """Side in pixels of the square the image processor resizes to, when it says."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None) or {}
    if isinstance(size, dict):
        if "longest_edge" in size and "shortest_edge" in size and size["longest_edge"] > 4096:
            return int(round(size["longest_edge"] ** 0.5))  # Qwen-VL: pixel counts
        if "height" in size:
            return int(size["height"])
    max_pixels = getattr(image_processor, "max_pixels", None)
    if max_pixels:
        return int(round(max_pixels**0.5))
    return None


# --------------------------------------------------------------------------- evaluation
def _positives(labels: dict | Sequence) -> frozenset[str]:
    from unirg.trainer.rewards.clinical import positive_set

    return positive_set(labels, uncertain="positive")


def evaluate_chexpert(
    candidates: Sequence[str], references: Sequence[dict[str, int | None]]
) -> dict[str, Any]:
    """CheXpert-14 F1 of report texts against reference labels.

    ``candidates`` are report texts, labeled with :func:`unirg.trainer.labeler.label_report`;
    ``references`` are label dicts (the testbed manifest's ``labels``). Positive = 1,
    uncertain counts as positive (the usual CheXpert-F1 convention). Returns micro
    precision / recall / F1 over all 14 observations and over the top 5
    (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion), macro F1 over
    observations with reference positives, and per-observation F1 with support.
    """
    from unirg.trainer.chexpert import OBSERVATIONS
    from unirg.trainer.labeler import label_report

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
            "model": evaluate_chexpert(texts, references),
            "baseline": evaluate_chexpert([baseline] * len(chosen), references),
        }
    metrics = {
        "chexpert14": {
            "labeler": "unirg.trainer.labeler (rule-based); references: testbed manifest labels; "
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
