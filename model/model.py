"""Load a checkpoint (optionally with a LoRA adapter) and draft reports with it.

Model identity (:class:`ModelInfo`) comes from a ``unirg-model.json`` manifest in the
checkpoint (or adapter) directory when there is one::

    {"name": "unirg-cxr-qwen3vl-2b", "version": "2026.11.1",
     "weights_sha256": "<64 hex digits, optional>"}

Missing fields are computed: ``name`` is the directory name and ``version`` is
``"sha256-"`` plus the first 12 hex digits of the weights hash. The weights hash is
always computed from the weight files that are loaded (once per load, before anything
is read by transformers); a manifest's ``weights_sha256`` is checked against it and a
mismatch refuses the load (:class:`WeightsMismatch`), so the SR never names weights
other than those that wrote it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unirg.model.families import FamilyAdapter, adapter_for, read_model_type
from unirg.model.reload import WEIGHT_SUFFIXES, directories_weights_sha256
from unirg.model.study import Draft, GenerationConfig, ModelInfo, StudyInput, chunked

__all__ = [
    "MANIFEST",
    "ReportModel",
    "WeightsMismatch",
    "load_model",
    "manifest_prior_report_style",
    "model_info",
    "weights_sha256",
]

log = logging.getLogger(__name__)

MANIFEST = "unirg-model.json"
#: Manifest key for what the model was trained on; ``"synthetic"``: synthetic data only (the SR says so).
TRAINING_DATA = "training_data"


class WeightsMismatch(ValueError):
    """The weight files do not hash to what their manifest (or publish pointer) records."""


def weights_sha256(*directories: str | Path, memo: dict[Path, str] | None = None) -> str:
    """SHA-256 identifying the weight files (``WEIGHT_SUFFIXES``) at the top of ``directories``,
    the files ``from_pretrained`` reads; sub-folders (``checkpoints/``) are not counted.

    One weight file: its own SHA-256 (what ``sha256sum model.safetensors`` prints).
    Several (shards, or base model + LoRA adapter): the SHA-256 of the
    ``sha256sum``-style listing ``"<hex>  <dir-index>/<file name>\\n"`` sorted by name.
    Read in full on every call (no cache: a file changed in place must not keep its old hash);
    ``memo`` shares per-file hashes within one load.
    """
    return directories_weights_sha256([Path(d) for d in directories], memo)


def manifest_prior_report_style(*directories: str | Path) -> str:
    """The prior-report style a checkpoint was trained with: the last :data:`MANIFEST` among ``directories``
    (base, then adapter) that names one (``"prompt": {"prior_report": ...}``), else ``"text"``."""
    style = "text"
    for directory in directories:
        file = Path(directory) / MANIFEST
        if file.is_file():
            prompt = json.loads(file.read_text(encoding="utf-8")).get("prompt") or {}
            style = str(prompt.get("prior_report") or style)
    return style


def model_info(
    path: str | Path, *, adapter_path: str | Path | None = None, expected_sha256: str | None = None
) -> ModelInfo:
    """:class:`ModelInfo` of a checkpoint (and adapter): name and version from the manifest,
    the weights hash computed.

    The adapter's manifest wins over the base model's: the adapter is the trained model. A
    manifest's ``weights_sha256`` (and ``expected_sha256``, e.g. a publish pointer's) must equal
    the computed hash, else :class:`WeightsMismatch`.
    """
    directories = [Path(path)] + ([Path(adapter_path)] if adapter_path else [])
    manifest: dict[str, Any] = {}
    memo: dict[Path, str] = {}  # each file hashed once per call
    sha = weights_sha256(*directories, memo=memo)
    for index, directory in enumerate(directories):  # later (adapter) manifests override the base's
        file = directory / MANIFEST
        if not file.is_file():
            continue
        manifest = json.loads(file.read_text(encoding="utf-8"))
        recorded = str(manifest.get("weights_sha256") or "").lower()
        if recorded:  # a manifest in directory i describes directories[: i + 1] (an adapter: base + adapter)
            actual = sha if index == len(directories) - 1 else weights_sha256(*directories[: index + 1], memo=memo)
            if recorded != actual:
                raise WeightsMismatch(
                    f"{file} records weights_sha256 {recorded} but the weight files in "
                    f"{', '.join(map(str, directories[: index + 1]))} hash to {actual}: they were changed or "
                    "corrupted after the manifest was written; restore them or re-publish the model"
                )
    if expected_sha256 and expected_sha256.lower() != sha:
        raise WeightsMismatch(
            f"the weight files in {', '.join(map(str, directories))} hash to {sha}, not the expected "
            f"{expected_sha256}; refusing to load them"
        )
    name = str(manifest.get("name") or directories[-1].resolve().name)[:64]
    version = str(manifest.get("version") or f"sha256-{sha[:12]}")
    return ModelInfo(name=name, version=version, weights_sha256=sha,
                     synthetic_training_data=manifest.get(TRAINING_DATA) == "synthetic")


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _default_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        try:
            value = getattr(torch, dtype)
        except AttributeError:
            value = None
        if not isinstance(value, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype name (try 'bfloat16' or 'float32')")
        return value
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _attention(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class ReportModel:
    """A loaded report model: ``draft()`` turns studies into :class:`Draft` objects.

    Built by :func:`load_model`; holds the model, its processor and the family adapter.
    ``draft`` is serialised by a lock, so one instance can serve several threads.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        adapter: FamilyAdapter,
        info: ModelInfo,
        *,
        path: Path | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.adapter = adapter
        self.info = info
        self.path = path
        self._lock = threading.Lock()
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # decoder-only batches are padded on the left
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        self._eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)
        self._pad_id = model.generation_config.pad_token_id
        if self._pad_id is None:
            self._pad_id = tokenizer.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_texts(self, studies: Sequence[StudyInput]) -> list[str]:
        """The rendered prompts (what ``draft`` sends), without running the model."""
        return self.adapter.prepare(self.processor, list(studies))[1]

    @torch.inference_mode()
    def _generate(
        self, studies: Sequence[StudyInput], generation: GenerationConfig
    ) -> list[tuple[str, str, bool]]:
        """``(prompt text, generated text, hit the token limit)`` per study."""
        inputs, prompt_texts = self.adapter.prepare(self.processor, list(studies))
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if generation.seed is not None:
            torch.manual_seed(generation.seed)
        output = self.model.generate(**inputs, **generation.generate_kwargs(), pad_token_id=self._pad_id)
        sequences = output.sequences if hasattr(output, "sequences") else output
        new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
        results = []
        for prompt_text, row in zip(prompt_texts, new_tokens.tolist(), strict=True):
            ended = any(token in self._eos_ids for token in row)
            text = self.processor.decode(row, skip_special_tokens=True)
            results.append((prompt_text, self.adapter.postprocess(self.processor, text), not ended))
        return results

    def draft(self, studies: Sequence[StudyInput], generation: GenerationConfig | None = None) -> list[Draft]:
        """Draft one report per study, ``generation.batch_size`` studies per ``generate`` call."""
        generation = generation or GenerationConfig()
        drafts: list[Draft] = []
        with self._lock:
            for batch in chunked(list(studies), generation.batch_size):
                results = self._generate(batch, generation)
                for study, (prompt_text, text, hit_limit) in zip(batch, results, strict=True):
                    draft = Draft.from_text(
                        text,
                        prompt_text=prompt_text,
                        model_info=self.info,
                        truncated=hit_limit,
                        sections=self.adapter.sections,
                        study_uid=study.study_uid,
                    )
                    drafts.append(draft)
        return drafts


def _adapter_base(adapter_dir: Path) -> Path:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    base_path = Path(base)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = (adapter_dir / base).resolve()
    if not (base_path / "config.json").is_file():
        raise FileNotFoundError(
            f"the LoRA adapter in {adapter_dir} needs its base model {base!r}, which is not a local "
            "checkpoint directory; pass load_model(base_dir, adapter_path=adapter_dir)"
        )
    return base_path


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    adapter_path: str | Path | None = None,
    merge_adapter: bool = True,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    expected_sha256: str | None = None,
) -> ReportModel:
    """Load a Qwen3-VL / Qwen2.5-VL / Gemma 3 / MAIRA-2 / LLaVA checkpoint directory.

    Parameters
    ----------
    path : str or Path
        A checkpoint directory, or a LoRA adapter directory (with ``adapter_config.json``
        naming a local base model).
    device : str, optional
        Default ``"cuda"`` when available, else ``"cpu"``.
    dtype : str or torch.dtype, optional
        Default bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU.
    adapter_path : str or Path, optional
        A LoRA adapter (peft) to apply on top of ``path``.
    merge_adapter : bool
        Merge the LoRA weights into the model (faster generation).
    attn_implementation : str, optional
        Default ``flash_attention_2`` on CUDA when ``flash_attn`` is installed, else ``sdpa``.
    trust_remote_code : bool
        The operator's opt-in to run Python code shipped in the checkpoint (MAIRA-2 needs it);
        without it such a checkpoint is refused (``RemoteCodeNotTrusted``).
    expected_sha256 : str, optional
        The weights hash the caller expects (a publish pointer's); checked like the manifest's.

    The weight files are hashed once, before anything is loaded; a hash that differs from
    the manifest's or ``expected_sha256`` raises :class:`WeightsMismatch` and loads nothing.
    """
    path = Path(path)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        adapter_path, path = path, _adapter_base(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers checkpoint directory")
    style = manifest_prior_report_style(path, *([adapter_path] if adapter_path else []))
    adapter = adapter_for(path, trust_remote_code=trust_remote_code, prior_report_style=style)
    adapter.remote_code(path)  # refuse before reading anything when remote code is not allowed
    info = model_info(path, adapter_path=adapter_path, expected_sha256=expected_sha256)
    torch_device = _default_device(device)
    torch_dtype = _default_dtype(dtype, torch_device)
    attention = attn_implementation or _attention(torch_device)
    log.info(
        "loading %s (%s) on %s as %s with %s attention",
        path,
        adapter.name,
        torch_device,
        torch_dtype,
        attention,
    )
    processor_dir = Path(adapter_path) if adapter_path and _has_processor(Path(adapter_path)) else path
    processor = adapter.load_processor(processor_dir, model_type=read_model_type(path))
    placement = {"device_map": str(torch_device)} if torch_device.type == "cuda" else {}  # load onto the GPU
    model = adapter.load_model(path, dtype=torch_dtype, attn_implementation=attention, **placement)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(torch_device)
    model.eval()
    return ReportModel(model, processor, adapter, info, path=Path(adapter_path) if adapter_path else path)


def _has_processor(directory: Path) -> bool:
    return (directory / "preprocessor_config.json").is_file() and (
        (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()
    )
