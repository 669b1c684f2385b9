"""Configuration of ``unirg-trainer sft``: one dataclass, a TOML file, CLI overrides.

>>> cfg = SFTRunConfig(data="testbed", out="out", init="tiny-qwen3-vl", check_paths=False)
>>> cfg.use_lora, cfg.institutions
(False, ('A', 'B'))

A TOML file holds the same keys, at the top level or under ``[sft]``::

    data = "var/testbed"
    out = "var/models/my-model"
    base = "/models/UniRG-CXR"
    lora = true
    lr = 1e-4
    institutions = ["A", "B"]

``load_config(path, **overrides)`` reads it; overrides that are ``None`` are ignored,
so click options can be passed through as they are.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unirg.model.prompt import PRIOR_REPORT_STYLES

__all__ = ["INITS", "SFTRunConfig", "load_config"]

INITS = ("tiny-qwen3-vl", "tiny-qwen2.5-vl")
"""Random-weight starting points built locally (:mod:`unirg.trainer.tiny_models`)."""

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


@dataclass
class SFTRunConfig:
    """Everything ``unirg-trainer sft`` needs.

    Data and output
    ---------------
    data : str
        A testbed directory (``manifest.jsonl``, see docs/design.md).
    out : str
        Where the trained model goes; ``load_model(out)`` loads it. Training checkpoints go
        to ``out/checkpoints`` (left out of the model hash and of ``publish``).
    institutions : tuple of str, optional
        Train on these institutions only (default A and B; ``None`` or ``()``: all).
    eval_fraction : float
        Share of the training institutions' *patients* held out (patient-level split,
        seeded) for the evaluation loss and for ``holdout.json``; 0 disables it.
    priors : bool
        Build longitudinal examples (prior frontal image + prior report) where a study
        has a prior, as inference does.
    max_examples : int, optional
        Use at most this many training examples (quick runs).
    prior_report_style : str, optional
        How the prior report enters the prompt (:data:`unirg.model.prompt.PRIOR_REPORT_STYLES`):
        ``"text"`` as written, ``"findings"`` as the labeler reads it, in fixed words. Default: the
        base checkpoint's (its manifest's), ``"text"`` for ``init``. Recorded in the model's manifest,
        so inference builds the same prompt.

    Model
    -----
    base : str, optional
        A checkpoint directory to fine-tune (any family ``load_model`` supports).
    init : str, optional
        Or a random-weight model built locally: ``tiny-qwen3-vl`` (the UniRG-CXR
        architecture, with a tokenizer trained on the training reports).
    tiny_* : int
        Size of the ``init`` model (image side in pixels, text width and depth,
        vision width and depth, vocabulary).
    vision_pretrain_epochs, vision_pretrain_lr : float
        Before SFT, train the vision tower on the training studies' labels for this many epochs
        (:mod:`unirg.trainer.vision_pretrain`; 0: no pre-training). Full fine-tuning only.
    freeze_vision : bool
        Keep the whole vision tower (mergers included) fixed during SFT: the language model learns to
        read what vision pre-training taught it.
    lora : bool, optional
        LoRA (peft) instead of full fine-tuning. Default: LoRA with ``base``, full with
        ``init`` (a random model has nothing to preserve).
    lora_r, lora_alpha, lora_dropout, lora_target_modules
        LoRA settings; ``"all-linear"`` adapts every linear layer but the LM head.
    merge_lora : bool
        Save the merged full model instead of the adapter.

    Optimisation
    ------------
    epochs, max_steps, lr, batch_size, grad_accum, weight_decay, warmup, lr_scheduler,
    max_grad_norm, seed
        As in ``transformers.TrainingArguments`` (``max_steps > 0`` overrides ``epochs``;
        ``warmup`` below 1 is a ratio of the steps, else a step count).
    group_by_length : bool
        Batch examples of similar length together (less padding: examples with a prior
        are about twice as long).
    logging_steps, save_steps, save_total_limit
        Log every N steps; checkpoint every N steps and at the end (0: no checkpoints,
        no resume).
    resume : bool
        Continue from the newest checkpoint in ``out/checkpoints`` (an interrupted run, or
        a finished one with a larger ``max_steps``); the model in ``out`` is rewritten.
    threads : int, optional
        torch intra-op threads (CPU).
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default CUDA when available (bf16 there when supported).
    activation_checkpointing : bool
        Recompute activations in the backward pass (less memory for big models, slower).
    name, version : str, optional
        Model identity written to ``unirg-model.json`` (default name: the ``out``
        directory's name; version: ``sft-`` plus the first 12 hex digits of the weights hash).
    overwrite : bool
        Start again in an ``out`` that holds a model or checkpoints (they are deleted);
        without it (and without ``resume``) such an ``out`` is an error.
    """

    data: str | None = None
    out: str | None = None
    institutions: tuple[str, ...] | None = ("A", "B")
    eval_fraction: float = 0.1
    priors: bool = True
    max_examples: int | None = None
    prior_report_style: str | None = None

    base: str | None = None
    init: str | None = None
    tiny_image_size: int = 128
    tiny_patch_size: int = 16
    tiny_hidden_size: int = 128
    tiny_layers: int = 4
    tiny_vision_hidden_size: int = 64
    tiny_vision_layers: int = 2
    vision_pretrain_epochs: float = 0.0
    vision_pretrain_lr: float = 2e-3
    freeze_vision: bool = False
    tiny_vocab_size: int = 1024
    lora: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    merge_lora: bool = False

    epochs: float = 1.0
    max_steps: int = -1
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = True

    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    resume: bool = False
    threads: int | None = None
    device: str | None = None
    trust_remote_code: bool = False
    """Run Python code shipped in ``base`` (MAIRA-2 needs it); off: such a base is refused."""
    activation_checkpointing: bool = False
    name: str | None = None
    version: str | None = None
    overwrite: bool = False
    check_paths: bool = field(default=True, repr=False)
    """Check that ``data`` and ``base`` exist (off for configs built before the data is)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("data", "out", "base"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))  # Path -> str (JSON-ready)
        if not self.data:
            problems.append("data is missing: give --data TESTBED_DIR (made by `unirg-trainer synth`)")
        if not self.out:
            problems.append("out is missing: give --out DIR, where the trained model will be written")
        if bool(self.base) == bool(self.init):
            problems.append(
                "give exactly one starting point: --base PATH (a checkpoint directory) "
                f"or --init {INITS[0]} (a random model built here)"
            )
        if self.init and self.init not in INITS:
            problems.append(f"init {self.init!r} is unknown; use one of {', '.join(INITS)}")
        if isinstance(self.institutions, str):
            self.institutions = tuple(s.strip() for s in self.institutions.split(",") if s.strip())
        if self.institutions is not None:
            self.institutions = tuple(str(s) for s in self.institutions) or None
        if self.institutions and [s.lower() for s in self.institutions] == ["all"]:
            self.institutions = None
        if isinstance(self.lora_target_modules, list):
            self.lora_target_modules = tuple(self.lora_target_modules)
        if self.check_paths:
            if self.data and not (Path(self.data) / "manifest.jsonl").is_file():
                problems.append(
                    f"{self.data}/manifest.jsonl not found: make a testbed with "
                    f"`unirg-trainer synth --out {self.data} --patients 200 --seed 0`"
                )
            if self.base and not (Path(self.base) / "config.json").is_file():
                problems.append(f"base {self.base} has no config.json: point --base at a checkpoint directory")
        if not 0 <= self.eval_fraction < 1:
            problems.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}; 0 disables the held-out split")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append(f"max_examples must be >= 1 or unset, got {self.max_examples}")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps must be > 0 (or -1 to train --epochs), got {self.max_steps}")
        if self.max_steps == -1 and not self.epochs > 0:
            problems.append(f"epochs must be > 0, got {self.epochs}; or set --max-steps")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr} (try 2e-4 for LoRA, 1e-3 for a tiny model from scratch)")
        if self.lr >= 1:
            problems.append(f"lr {self.lr} is far too large; learning rates are usually 1e-5 .. 5e-3")
        for name in ("batch_size", "grad_accum", "logging_steps", "lora_r", "lora_alpha", "save_total_limit"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_steps < 0:
            problems.append(f"save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup < 0 or (self.warmup >= 1 and self.warmup != int(self.warmup)):
            problems.append(f"warmup must be a ratio in [0, 1) or a whole number of steps, got {self.warmup}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lr_scheduler not in SCHEDULERS:
            problems.append(f"lr_scheduler {self.lr_scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            problems.append(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.tiny_image_size % 32 or not 64 <= self.tiny_image_size <= 1024:
            problems.append(f"tiny_image_size must be a multiple of 32 in 64..1024, got {self.tiny_image_size}")
        if self.tiny_patch_size not in (8, 16, 32):
            problems.append(f"tiny_patch_size must be 8, 16 or 32, got {self.tiny_patch_size}")
        elif self.tiny_image_size % (2 * self.tiny_patch_size):
            problems.append(f"tiny_image_size must be a multiple of twice the patch size ({2 * self.tiny_patch_size}),"
                            f" got {self.tiny_image_size}")
        if self.tiny_hidden_size % 32 or self.tiny_hidden_size < 64:
            problems.append(f"tiny_hidden_size must be a multiple of 32, at least 64, got {self.tiny_hidden_size}")
        if self.tiny_vision_hidden_size % 32 or self.tiny_vision_hidden_size < 32:
            problems.append(
                f"tiny_vision_hidden_size must be a multiple of 32, at least 32, got {self.tiny_vision_hidden_size}"
            )
        if self.tiny_vision_layers < 1:
            problems.append(f"tiny_vision_layers must be >= 1, got {self.tiny_vision_layers}")
        if self.vision_pretrain_epochs < 0:
            problems.append(f"vision_pretrain_epochs must be >= 0, got {self.vision_pretrain_epochs}")
        if self.vision_pretrain_epochs > 0 and self.use_lora:
            problems.append("vision pre-training trains the whole vision tower: use --full, not LoRA")
        if not 0 < self.vision_pretrain_lr < 1:
            problems.append(f"vision_pretrain_lr must be in (0, 1), got {self.vision_pretrain_lr}")
        if self.tiny_layers < 1:
            problems.append(f"tiny_layers must be >= 1, got {self.tiny_layers}")
        if self.tiny_vocab_size < 300:
            problems.append(f"tiny_vocab_size must be >= 300 (byte alphabet + special tokens), got {self.tiny_vocab_size}")
        if self.prior_report_style is not None and self.prior_report_style not in PRIOR_REPORT_STYLES:
            problems.append(
                f"prior_report_style must be one of {', '.join(PRIOR_REPORT_STYLES)}, got {self.prior_report_style!r}"
            )
        if self.merge_lora and self.use_lora is False:
            problems.append("merge_lora only applies to LoRA training; drop it or pass --lora")
        if problems:
            raise ValueError("invalid sft configuration:\n  - " + "\n  - ".join(problems))

    @property
    def use_lora(self) -> bool:
        """LoRA unless asked otherwise: yes for a ``base`` checkpoint, no for an ``init`` model."""
        return bool(self.base) if self.lora is None else bool(self.lora)

    @property
    def out_dir(self) -> Path:
        return Path(str(self.out))

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (for the model manifest)."""
        data = dataclasses.asdict(self)
        data.pop("check_paths", None)
        return json.loads(json.dumps(data, default=list))


def load_config(path: str | Path | None = None, **overrides: Any) -> SFTRunConfig:
    """Settings from a TOML file (top level or ``[sft]``) with ``overrides`` on top.

    Overrides that are ``None`` are ignored. Unknown keys raise ``ValueError`` listing the known ones.
    """
    values: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
        values.update(document.get("sft", document))
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in dataclasses.fields(SFTRunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        source = f" in {path}" if path else ""
        raise ValueError(
            f"unknown sft setting(s){source}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known - {'check_paths'}))}"
        )
    if isinstance(values.get("institutions"), list):
        values["institutions"] = tuple(values["institutions"])
    return SFTRunConfig(**values)
