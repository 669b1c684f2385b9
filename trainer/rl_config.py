"""Configuration of ``unirg-trainer rl``: :class:`RLConfig` (a :class:`trl.GRPOConfig`) and its file format.

:class:`RLConfig` *is* TRL's ``GRPOConfig`` (so every GRPO / ``TrainingArguments`` option is available:
``num_generations``, ``epsilon_high``, ``beta``, ``use_vllm``, ``save_steps``, ``seed`` ...) plus the UniRG
fields: the start policy (``sft``), the data, the reward (components and weights, standard scaling, the
judge, real scorer models), LoRA, and ``algorithm`` ("grpo" or "rloo"). ``__post_init__`` checks the
combination and says how to fix a bad one.

Config file (TOML, or YAML with the same structure), every key optional::

    preset = "unirg-step1"          # unirg.trainer.presets; the file's own values override it
    sft = "var/runs/sft"            # start policy: a checkpoint or a LoRA adapter dir (step 2: step 1's output)
    data = "var/testbed"            # a testbed / dataset directory (see unirg.trainer.data)
    output_dir = "var/runs/rl"
    algorithm = "grpo"              # or "rloo"
    advantage_baseline = "group"    # GRPO's group mean (the paper), or "greedy": self-critical (rl_scst)

    [train]                         # any GRPOConfig / TrainingArguments field
    max_steps = 200
    per_device_train_batch_size = 16
    save_steps = 50

    [reward]
    components = {bertscore = 0.370, semb = 0.253, radgraph = 0.377, bleu = 0.0}   # slot or component -> weight
    scaling = "references"          # "references" | "none" | {name = [mean, std], ...}
    standardize = ["bertscore", "semb", "radgraph", "bleu"]
    bertscore_model = "/models/roberta-large"    # real scorers, optional
    bertscore_layers = 17
    [reward.options.embedding_cosine]            # keyword options of a component's factory
    model_path = "/models/all-MiniLM-L6-v2"
    [reward.judge]                  # unirg.trainer.rewards.judge.judge_from_config
    backend = "transformers"
    model = "/models/judge"

    [lora]
    r = 16
    alpha = 32
    dropout = 0.05
    target_modules = "..."          # regex or list of module names

    [data]
    institutions = ["A", "B"]       # train only on these
    max_samples = 512
    holdout = 0.15                  # share of patients RL leaves out (OUT/holdout.json), for evaluation
    longitudinal = true             # prior image + report in the prompt when the study has a prior
    image_size = 512

CLI values override the file, which overrides the preset: ``load_rl_config(path, preset=..., overrides=...)``.

Zero-variance groups
--------------------
GRPO's advantage is the reward minus its group mean, divided by the group std: a group whose
``num_generations`` rollouts all get the same reward teaches nothing. TRL logs the share of such groups as
``frac_reward_zero_std`` each logging step; :class:`unirg.trainer.rl.ZeroStdMonitor` (added by the trainer) warns
when it stays high. The settings that keep it near 0:

- ``temperature`` 1.0 (the presets) and ``top_p`` 1.0: rollouts differ. ``temperature = 0`` is rejected.
- ``num_generations`` 16 (the presets): with G samples, the chance that all tie falls fast.
- dense, continuous components in the reward (BERTScore / embedding cosine, the RadGraph substitute's
  partial F1) rather than only a binary or coarse score (CheXpert label F1 of a short report is often
  exactly 0 or 1 for every rollout); a reward made *only* of coarse components gets a warning.
- ``max_completion_length`` long enough that rollouts end with EOS (truncated rollouts tend to tie).
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trl import GRPOConfig

from unirg.trainer.presets import PRESETS, RADCLIQ_V1_WEIGHTS, get_preset

__all__ = [
    "COARSE_COMPONENTS",
    "DEFAULT_LORA_TARGETS",
    "RLConfig",
    "RLConfigError",
    "SLOTS",
    "config_values",
    "load_rl_config",
    "parse_override",
]

log = logging.getLogger(__name__)

SLOTS = ("bertscore", "semb", "radgraph", "judge")
"""Reward slots resolved to a real metric or its offline substitute (see :mod:`unirg.trainer.presets`)."""

COARSE_COMPONENTS = frozenset({"chexpert_f1", "chexpert_label_margin", "judge"})
"""Components whose per-rollout values are few and discrete (many ties within a GRPO group)."""

DEFAULT_LORA_TARGETS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
"""LoRA on the language model's attention and MLP projections (the vision tower stays frozen)."""

ALGORITHMS = ("grpo", "rloo")
BASELINES = ("group", "greedy")


class RLConfigError(ValueError):
    """A bad RL configuration; the message says how to fix it."""


def _default_components() -> dict[str, float]:
    return dict(RADCLIQ_V1_WEIGHTS)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class RLConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus UniRG's fields (module docstring: file format and zero-variance notes).

    On a machine without CUDA, ``use_cpu`` is set and ``bf16`` defaults to ``False``.
    """

    output_dir: str | None = field(default="var/runs/rl", metadata={"help": "Where checkpoints and the final model go."})
    sft: str | None = field(
        default=None,
        metadata={"help": "Start policy: a checkpoint dir or a LoRA adapter dir (for unirg-step2: step 1's output)."},
    )
    data: str | None = field(default=None, metadata={"help": "Dataset directory (synthetic testbed manifest, ...)."})
    preset: str | None = field(default=None, metadata={"help": f"Recipe preset: {', '.join(PRESETS)}."})
    algorithm: str = field(default="grpo", metadata={"help": "'grpo' (GRPOTrainer) or 'rloo' (RLOOTrainer)."})
    advantage_baseline: str = field(
        default="group",
        metadata={"help": "GRPO's baseline: 'group' (the mean reward of the prompt's rollouts, as in the paper) or "
                          "'greedy' (the reward of the policy's greedy draft: self-critical, unirg.trainer.rl_scst)."},
    )
    finding_credit: float = field(
        default=0.0,
        metadata={"help": "Per-token credit on the sentences that state or deny a finding, added to the sequence "
                          "advantage (greedy baseline only; unirg.trainer.rl_credit). 0: off."},
    )
    finding_credit_error_weight: float = field(
        default=1.0, metadata={"help": "Weight of a wrong finding against a found one in the finding credit."}
    )

    # data
    train_institutions: list[str] | None = field(
        default=None, metadata={"help": "Train only on studies from these institutions (None: all)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training studies."})
    holdout_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of the training patients held out of RL (seeded by `seed`), listed in "
                          "OUT/holdout.json for evaluation on patients RL never saw."},
    )
    longitudinal: bool = field(default=True, metadata={"help": "Prior image + report in the prompt when available."})
    image_size: int = field(default=512, metadata={"help": "Images are fitted to this square (as at inference)."})

    # reward
    reward_components: dict[str, float] = field(
        default_factory=_default_components,
        metadata={"help": "Reward slot or component name -> weight (slots: bertscore, semb, radgraph, judge)."},
    )
    reward_options: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "Component name -> keyword options of its factory."}
    )
    reward_scaling: str | dict[str, list[float]] = field(
        default="references",
        metadata={
            "help": "'references': standard-scale components with (mean, std) of the scores of mismatched "
            "reference pairs of the training set; 'none'; or {name: [mean, std]}."
        },
    )
    reward_standardize: list[str] | None = field(
        default=None, metadata={"help": "Slots/components to standard-scale (None: all but the judge)."}
    )
    scaling_pairs: int = field(default=256, metadata={"help": "Reference pairs used to fit the scaling."})
    judge: dict[str, Any] | None = field(
        default=None, metadata={"help": "LLM judge config (unirg.trainer.rewards.judge.judge_from_config)."}
    )
    bertscore_model: str | None = field(default=None, metadata={"help": "Local BERTScore model: the real metric."})
    bertscore_layers: int | None = field(default=None, metadata={"help": "BERTScore layer for bertscore_model."})
    chexbert_model: str | None = field(default=None, metadata={"help": "CheXbert checkpoint: real SembScore."})
    radgraph_model: str | None = field(default=None, metadata={"help": "RadGraph checkpoint: real RadGraph-F1."})

    # LoRA
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter (False: full fine-tuning)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | list[str] = field(
        default=DEFAULT_LORA_TARGETS, metadata={"help": "Regex or list of module names to adapt."}
    )
    merge_lora_for_generation: bool = field(
        default=True,
        metadata={"help": "Merge the adapter into the base weights while rollouts are generated (same samples, "
                          "fewer operations per token; unirg.trainer.rl_generation). Not with vLLM, DeepSpeed, FSDP."},
    )

    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (None: torch's default)."})

    # monitoring
    zero_std_warning: float = field(
        default=0.5, metadata={"help": "Warn when frac_reward_zero_std stays above this for 3 logging steps."}
    )

    def __post_init__(self) -> None:
        if not _cuda_available():
            self.use_cpu = True
            if self.bf16:
                log.warning("bf16=True on a CPU-only machine: using float32 (bf16=False)")
            self.bf16 = False
            self.fp16 = False
        self._check()
        super().__post_init__()

    # ------------------------------------------------------------------------------------------
    def _check(self) -> None:
        def fail(message: str) -> None:
            raise RLConfigError(message)

        if self.algorithm not in ALGORITHMS:
            fail(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.preset is not None and self.preset not in PRESETS:
            fail(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if not self.reward_components:
            fail("reward_components is empty: give at least one component, e.g. [reward] components = "
                 "{bertscore = 0.37, semb = 0.253, radgraph = 0.377} or --preset unirg-step1")
        if not any(w for w in self.reward_components.values()):
            fail(f"every reward weight is 0 ({self.reward_components}): the reward is constant and GRPO learns "
                 "nothing; give at least one component a non-zero weight")
        for name, weight in self.reward_components.items():
            if not isinstance(weight, int | float) or isinstance(weight, bool):
                fail(f"reward weight of {name!r} must be a number, got {weight!r}")
        self._check_components()
        if isinstance(self.reward_scaling, str):
            if self.reward_scaling not in ("references", "none"):
                fail(f"reward_scaling must be 'references', 'none' or a table {{name = [mean, std]}}, "
                     f"got {self.reward_scaling!r}")
        elif isinstance(self.reward_scaling, Mapping):
            for name, pair in self.reward_scaling.items():
                if name not in self.reward_components:
                    fail(f"reward_scaling names {name!r}, which has no weight in reward_components "
                         f"({', '.join(self.reward_components)})")
                if not (isinstance(pair, list | tuple) and len(pair) == 2 and float(pair[1]) > 0):
                    fail(f"reward_scaling[{name!r}] must be [mean, std] with std > 0, got {pair!r}")
        else:
            fail(f"reward_scaling must be a string or a table, got {type(self.reward_scaling).__name__}")
        for name in self.reward_standardize or ():
            if name not in self.reward_components:
                fail(f"reward_standardize names {name!r}, which has no weight in reward_components")
        if self.scaling_pairs < 2:
            fail(f"scaling_pairs must be >= 2, got {self.scaling_pairs}")
        if self.bertscore_model and not self.bertscore_layers:
            fail("bertscore_model needs bertscore_layers (the layer BERTScore compares, e.g. 17 for roberta-large, "
                 "9 for a base-sized model): pass --bertscore-layers N")
        if self.reward_components.get("judge"):
            self._check_judge()

        # generation / group settings
        if self.num_generations is None or self.num_generations < 2:
            fail(f"num_generations must be >= 2 (GRPO compares rollouts of one prompt), got {self.num_generations}; "
                 "UniRG uses 16")
        if not self.temperature > 0:
            fail(f"temperature={self.temperature}: greedy rollouts are identical, every group has zero reward std "
                 "and GRPO gets no gradient; sample with temperature 0.7-1.0 (the presets use 1.0)")
        if self.max_completion_length is not None and self.max_completion_length < 8:
            fail(f"max_completion_length={self.max_completion_length} is too short for a report; use >= 64 "
                 "(UniRG-style reports need ~150-300 tokens)")
        batch = self.per_device_train_batch_size * _world_size()
        if self.generation_batch_size is None and self.steps_per_generation is None:
            per_generation = batch * self.gradient_accumulation_steps
            if per_generation % self.num_generations:
                fail(
                    f"per_device_train_batch_size ({self.per_device_train_batch_size}) x processes ({_world_size()}) "
                    f"x gradient_accumulation_steps ({self.gradient_accumulation_steps}) = {per_generation} "
                    f"completions per generation batch, which is not a multiple of num_generations "
                    f"({self.num_generations}); make it k x {self.num_generations} (k prompts per batch), e.g. "
                    f"per_device_train_batch_size={self.num_generations}"
                )
        if self.advantage_baseline not in BASELINES:
            fail(f"advantage_baseline must be one of {', '.join(BASELINES)}, got {self.advantage_baseline!r}")
        if self.advantage_baseline == "greedy" and self.algorithm != "grpo":
            fail("advantage_baseline='greedy' is a GRPO option; RLOO's baseline is the leave-one-out mean "
                 "(use algorithm='grpo')")
        if self.advantage_baseline == "greedy" and (_world_size() > 1 or self.use_vllm):
            fail("advantage_baseline='greedy' runs on one process with transformers generation (each process "
                 "would hold only part of a group); use the group baseline with several processes or vLLM")
        if self.finding_credit < 0 or self.finding_credit_error_weight < 0:
            fail(f"finding_credit ({self.finding_credit}) and finding_credit_error_weight "
                 f"({self.finding_credit_error_weight}) must be >= 0")
        if self.finding_credit and self.advantage_baseline != "greedy":
            fail("finding_credit adds per-token credit to the self-critical advantages: set "
                 "advantage_baseline='greedy' (or finding_credit=0)")
        if self.beta < 0:
            fail(f"beta (KL coefficient) must be >= 0, got {self.beta}")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            fail(f"epsilon_high ({self.epsilon_high}) < epsilon ({self.epsilon}): clip-higher needs the upper clip "
                 "at least as wide as the lower one (DAPO: epsilon=0.2, epsilon_high=0.28)")

        # LoRA
        if self.use_lora:
            if self.lora_r < 1:
                fail(f"lora_r must be >= 1, got {self.lora_r} (or set use_lora=false for full fine-tuning)")
            if self.lora_alpha <= 0:
                fail(f"lora_alpha must be > 0, got {self.lora_alpha}")
            if not 0 <= self.lora_dropout < 1:
                fail(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if not self.lora_target_modules:
                fail("lora_target_modules is empty; leave the default (the language model's projections)")
        if self.image_size < 32:
            fail(f"image_size must be >= 32 pixels, got {self.image_size}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            fail(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            fail(f"max_train_samples must be >= 1 or unset, got {self.max_train_samples}")
        if self.sft is not None:
            path = Path(self.sft)
            if not path.is_dir():
                fail(f"sft={self.sft!r} is not a directory: give the SFT checkpoint (or LoRA adapter) directory "
                     "written by `unirg-trainer sft`")
            if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
                fail(f"sft={self.sft!r} has neither config.json nor adapter_config.json: not a model checkpoint")
            if not self.use_lora and self.beta and (path / "adapter_config.json").is_file() \
                    and not (path / "config.json").is_file():
                fail("full fine-tuning (use_lora=false) with a KL term (beta > 0) needs the start policy as a full "
                     "checkpoint (TRL reloads the reference from disk); merge the adapter first, or keep use_lora")
        if self.data is not None and not Path(self.data).exists():
            fail(f"data={self.data!r} does not exist")

    def _check_components(self) -> None:
        from unirg.trainer.rewards import REGISTRY

        known = set(SLOTS) | set(REGISTRY)
        for name in self.reward_components:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise RLConfigError(
                    f"unknown reward component {name!r}{hint}; use a slot ({', '.join(SLOTS)}) or a registered "
                    f"component ({', '.join(sorted(REGISTRY))})"
                )
        for name in self.reward_options:
            if name not in self.reward_components and name not in _slot_implementations(self):
                raise RLConfigError(f"reward_options names {name!r}, which is not among the reward components")
        active = {n for n, w in self.reward_components.items() if w}
        resolved = {_slot_implementations(self).get(n, n) for n in active}
        if resolved and resolved <= COARSE_COMPONENTS:
            log.warning(
                "the reward has only coarse components (%s): many GRPO groups will tie (frac_reward_zero_std "
                "high); add a dense one such as bertscore/embedding_cosine or radgraph", ", ".join(sorted(resolved)))

    def _check_judge(self) -> None:
        from unirg.trainer.rewards.judge import ENV_BASE_URL, JudgeNotConfigured, require_judge

        if self.judge or os.environ.get(ENV_BASE_URL):
            return
        try:
            require_judge(self.reward_components, None)
        except JudgeNotConfigured as exc:
            raise JudgeNotConfigured(
                f"{exc} (for `unirg-trainer rl`: a [reward.judge] table in the config, or --judge-model PATH, "
                f"or --judge-base-url URL --judge-name NAME)"
            ) from None

    # ------------------------------------------------------------------------------------------
    def to_trl(self):
        """The TRL config the chosen algorithm's trainer takes: ``self`` for GRPO, an ``RLOOConfig`` for RLOO."""
        if self.algorithm == "grpo":
            return self
        from trl import RLOOConfig

        names = {f.name for f in fields(RLOOConfig) if f.init}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name in names}
        values["generation_batch_size"] = None  # derived again from steps_per_generation
        return RLOOConfig(**values)

    def summary(self) -> dict[str, Any]:
        """The UniRG-specific settings plus the main GRPO ones, for logs and ``rl_run.json``."""
        keys = [
            "preset", "algorithm", "advantage_baseline", "finding_credit", "finding_credit_error_weight", "sft",
            "data", "output_dir", "train_institutions", "max_train_samples", "holdout_fraction",
            "longitudinal", "image_size", "reward_components", "reward_scaling", "reward_standardize", "use_lora",
            "lora_r", "lora_alpha", "lora_dropout", "merge_lora_for_generation", "num_generations",
            "per_device_train_batch_size",
            "gradient_accumulation_steps", "learning_rate", "beta", "epsilon", "epsilon_high", "temperature",
            "top_p", "max_completion_length", "loss_type", "scale_rewards", "num_train_epochs", "max_steps",
            "seed", "use_vllm", "vllm_mode", "threads",
        ]
        return {k: getattr(self, k) for k in keys}


def _slot_implementations(cfg: RLConfig) -> dict[str, str]:
    """Slot -> registered component that will fill it, given the scorer paths in ``cfg``."""
    return {
        "bertscore": "bertscore" if cfg.bertscore_model else "embedding_cosine",
        "semb": "sembscore" if cfg.chexbert_model else "semb_substitute",
        "radgraph": "radgraph_f1" if cfg.radgraph_model else "radgraph_substitute",
        "judge": "judge",
    }


# ----------------------------------------------------------------------------------------------
# Config files and overrides
# ----------------------------------------------------------------------------------------------

SECTIONS: dict[str, dict[str, str]] = {
    "reward": {
        "components": "reward_components",
        "weights": "reward_components",
        "options": "reward_options",
        "scaling": "reward_scaling",
        "standardize": "reward_standardize",
        "scaling_pairs": "scaling_pairs",
        "judge": "judge",
        "bertscore_model": "bertscore_model",
        "bertscore_layers": "bertscore_layers",
        "chexbert_model": "chexbert_model",
        "radgraph_model": "radgraph_model",
    },
    "lora": {
        "enabled": "use_lora",
        "r": "lora_r",
        "alpha": "lora_alpha",
        "dropout": "lora_dropout",
        "target_modules": "lora_target_modules",
        "merge_for_generation": "merge_lora_for_generation",
    },
    "data": {
        "path": "data",
        "institutions": "train_institutions",
        "max_samples": "max_train_samples",
        "holdout": "holdout_fraction",
        "longitudinal": "longitudinal",
        "image_size": "image_size",
    },
}


def _field_names() -> set[str]:
    return {f.name for f in fields(RLConfig) if f.init}


def _unknown(key: str, where: str, candidates: set[str]) -> RLConfigError:
    close = difflib.get_close_matches(key, sorted(candidates), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return RLConfigError(f"unknown config key {key!r} in {where}{hint}")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file as a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise RLConfigError(f"config file {str(path)!r} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RLConfigError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise RLConfigError(f"{path}: the top level must be a table/mapping")
    return data


def config_values(nested: Mapping[str, Any], *, where: str = "config") -> dict[str, Any]:
    """Flatten a nested config (sections ``[train]``, ``[reward]``, ``[lora]``, ``[data]``) to RLConfig fields."""
    names = _field_names()
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if key == "train":
            if not isinstance(value, Mapping):
                raise RLConfigError(f"[train] in {where} must be a table")
            for k, v in value.items():
                if k not in names:
                    raise _unknown(k, f"{where} [train]", names)
                out[k] = v
        elif key in SECTIONS and isinstance(value, Mapping):
            mapping = SECTIONS[key]
            for k, v in value.items():
                if k not in mapping:
                    raise _unknown(k, f"{where} [{key}]", set(mapping))
                out[mapping[k]] = dict(v) if isinstance(v, Mapping) else v
        elif key in names:
            out[key] = value
        else:
            raise _unknown(key, where, names | set(SECTIONS) | {"train"})
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` (key a field or ``section.key``; value a TOML literal, else a plain string)."""
    if "=" not in text:
        raise RLConfigError(f"override {text!r} must look like key=value (e.g. max_steps=10, reward.scaling=none)")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if "." in key:
        section, sub = key.split(".", 1)
        if section == "train":
            key = sub
        elif section in SECTIONS:
            if sub not in SECTIONS[section]:
                raise _unknown(sub, f"--set {section}.", set(SECTIONS[section]))
            key = SECTIONS[section][sub]
        else:
            raise _unknown(section, "--set", set(SECTIONS) | {"train"})
    if key not in _field_names():
        raise _unknown(key, "--set", _field_names())
    return key, value


def load_rl_config(
    path: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RLConfig:
    """Build an :class:`RLConfig`: preset < config file < ``overrides`` (RLConfig field names).

    ``preset`` (or the file's ``preset`` key) supplies the recipe's reward and GRPO values.
    """
    file_values = config_values(read_config_file(path), where=str(path)) if path else {}
    overrides = dict(overrides or {})
    names = _field_names()
    for key in overrides:
        if key not in names:
            raise _unknown(key, "overrides", names)
    name = preset or overrides.get("preset") or file_values.get("preset")
    values: dict[str, Any] = {}
    if name:
        values.update(get_preset(name).as_config())
        values["preset"] = name
    values.update(file_values)
    values.update(overrides)
    if name:
        values["preset"] = name
    return RLConfig(**values)
