"""One small adapter per model family, chosen from ``config.json``'s ``model_type``.

An adapter knows how to load a family's processor and model and how to turn
:class:`~unirg.model.study.StudyInput` objects into one batch of ``generate``
inputs. Everything else (batching, decoding, parsing) is shared in
:mod:`unirg.model.model`.

=================  ==========================  ===========================================
family             ``model_type``              prompt
=================  ==========================  ===========================================
Qwen-VL            ``qwen3_vl``,               shared UniRG-CXR prompt (:mod:`.prompt`)
                   ``qwen2_5_vl``, ``qwen2_vl``
Gemma 3            ``gemma3``                  shared prompt, MedGemma-style system turn
LLaVA              ``llava``                   shared prompt
MAIRA-2            ``maira2``                  the processor's own reporting prompt
=================  ==========================  ===========================================

Qwen-VL without torchvision: transformers 5 registers only a torchvision video
processor for Qwen2.5-VL / Qwen3-VL, and their processor classes require one, so
``AutoProcessor.from_pretrained`` raises ``ImportError`` on a machine without
torchvision (our CPU boxes). :class:`QwenVLAdapter` then builds the processor from its
pieces: ``AutoTokenizer``, ``AutoImageProcessor`` (which picks the PIL
``Qwen2VLImageProcessorPil``), the checkpoint's chat template, and the family's processor
class with the video part removed. Where torchvision is installed the stock processor
is used unchanged.

Remote code: a family whose model and processor are Python files shipped inside the
checkpoint (MAIRA-2) is loaded only when the operator opted in
(``adapter_for(path, trust_remote_code=True)``; ``--trust-remote-code`` /
``[model] trust_remote_code``). What ``config.json`` says never switches it on, and
families that do not need remote code never get it, opted in or not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

from unirg.model.prompt import SYSTEM_PROMPT, build_prompt, check_prior_report_style, prior_report_findings
from unirg.model.study import StudyInput

__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "Gemma3Adapter",
    "LlavaAdapter",
    "Maira2Adapter",
    "QwenVLAdapter",
    "ProcessorWithoutImages",
    "RemoteCodeNotTrusted",
    "UnsupportedModel",
    "adapter_for",
    "read_model_type",
    "save_processor",
]

log = logging.getLogger(__name__)


class UnsupportedModel(ValueError):
    """The checkpoint's ``model_type`` has no adapter."""


class RemoteCodeNotTrusted(ValueError):
    """The checkpoint needs ``trust_remote_code`` and the operator did not opt in."""


def read_model_type(path: str | Path) -> str:
    """``model_type`` of the checkpoint at ``path`` (from its ``config.json``)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: {path} is not a transformers checkpoint directory")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if not model_type:
        raise UnsupportedModel(f"{config} has no 'model_type'")
    return str(model_type)


def read_chat_template(path: str | Path) -> str | None:
    """The chat template stored beside a checkpoint (``chat_template.jinja`` / ``.json``)."""
    path = Path(path)
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    legacy = path / "chat_template.json"
    if legacy.is_file():
        return json.loads(legacy.read_text(encoding="utf-8")).get("chat_template")
    return None


def save_processor(processor: Any, out_dir: str | Path) -> None:
    """Save a processor in the published layout (tokenizer, image processor, chat template).

    Use this rather than ``processor.save_pretrained`` for processors built by
    :class:`QwenVLAdapter` without torchvision, whose class only exists at runtime.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(out)
    _drop_runtime_processor_class(out)
    processor.image_processor.save_pretrained(out)
    if getattr(processor, "video_processor", None) is not None:
        processor.video_processor.save_pretrained(out)
    template = getattr(processor, "chat_template", None) or processor.tokenizer.chat_template
    if template:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def _drop_runtime_processor_class(out: Path) -> None:
    """Remove a ``processor_class`` that names a class built at runtime (``...ImageOnly``) from the saved
    tokenizer config: ``AutoProcessor`` cannot find it and would return the bare tokenizer (a model that
    never sees its images)."""
    path = out / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if str(config.get("processor_class", "")).endswith("ImageOnly"):
        del config["processor_class"]
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class ProcessorWithoutImages(RuntimeError):
    """The checkpoint's processor cannot process images: drafts would ignore the X-ray."""


class FamilyAdapter:
    """Base adapter: AutoProcessor + AutoModelForImageTextToText + the shared prompt."""

    name: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[str] = "AutoModelForImageTextToText"
    needs_remote_code: ClassVar[bool] = False
    """The family's model/processor are Python files in the checkpoint (``auto_map``)."""
    sections: ClassVar[tuple[str, ...]] = ("findings", "impression")
    """Sections the family writes (MAIRA-2 writes findings only)."""
    system_prompt: ClassVar[str | None] = SYSTEM_PROMPT

    def __init__(self, *, trust_remote_code: bool = False, prior_report_style: str = "text") -> None:
        self.trust_remote_code = bool(trust_remote_code)  # the operator's opt-in
        self.prior_report_style = check_prior_report_style(prior_report_style)  # the checkpoint's (its manifest's "prompt")

    def remote_code(self, path: str | Path) -> bool:
        """``trust_remote_code`` for transformers: True only for a family that needs it, when opted in."""
        if not self.needs_remote_code:
            return False
        if not self.trust_remote_code:
            raise RemoteCodeNotTrusted(
                f"{path} is a {self.name} checkpoint: its model and processor are Python code shipped in the "
                "checkpoint (trust_remote_code), which unirg runs only when you opt in. Read the checkpoint's "
                "*.py files, then pass --trust-remote-code (or set [model] trust_remote_code = true, "
                "UNIRG_MODEL_TRUST_REMOTE_CODE=1)."
            )
        return True

    def load_processor(self, path: str | Path, *, model_type: str | None = None) -> Any:
        """The processor saved in ``path``; ``model_type`` names the family when ``path`` holds no
        ``config.json`` (a LoRA adapter directory with its own processor files)."""
        processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=self.remote_code(path))
        if getattr(processor, "image_processor", None) is None:
            raise ProcessorWithoutImages(
                f"{path}: AutoProcessor gave {type(processor).__name__}, which cannot process images, so the "
                "model would draft without seeing the X-ray; check processor_class in tokenizer_config.json "
                "and preprocessor_config.json"
            )
        return processor

    def load_model(self, path: str | Path, **kwargs: Any) -> Any:
        cls = getattr(transformers, self.model_class)
        return cls.from_pretrained(str(path), trust_remote_code=self.remote_code(path), **kwargs)

    def prompts(self, studies: Sequence[StudyInput]):
        return [build_prompt(study, system_prompt=self.system_prompt, prior_report_style=self.prior_report_style)
                for study in studies]

    def prepare(self, processor: Any, studies: Sequence[StudyInput]) -> tuple[Any, list[str]]:
        """One padded batch of ``generate`` inputs and the rendered prompt texts."""
        prompts = self.prompts(studies)
        texts = [self._render(processor, p.messages, add_generation_prompt=True) for p in prompts]
        inputs = processor(
            text=texts, images=[p.images for p in prompts], padding=True, return_tensors="pt"
        )
        return inputs, texts

    @staticmethod
    def _render(processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str:
        return processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def postprocess(self, processor: Any, text: str) -> str:
        """Family-specific clean-up of decoded text before parsing."""
        return text.strip()

    def training_texts(self, processor: Any, studies: Sequence[StudyInput], targets: Sequence[str]):
        """``(prompt texts, prompt + answer texts, images per study)`` for supervised training."""
        prompts = self.prompts(studies)
        prefixes = [self._render(processor, p.messages, add_generation_prompt=True) for p in prompts]
        full = [
            self._render(processor, p.with_target(t).messages, add_generation_prompt=False)
            for p, t in zip(prompts, targets, strict=True)
        ]
        return prefixes, full, [p.images for p in prompts]

    def training_inputs(self, processor: Any, studies: Sequence[StudyInput], targets: Sequence[str]) -> Any:
        """A right-padded batch with ``labels``: the answer tokens (with the end-of-turn
        token), ``-100`` on the prompt and the padding.

        The prompt is exactly what :meth:`prepare` sends at inference; ``targets`` are
        usually :func:`unirg.model.prompt.format_target` texts.
        """
        prefixes, full, images = self.training_texts(processor, studies, targets)
        options = dict(padding=True, padding_side="right", return_tensors="pt")
        batch = processor(text=full, images=images, **options)
        prompt = processor(text=prefixes, images=images, **options)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        for row in range(labels.shape[0]):
            prompt_ids = prompt["input_ids"][row][prompt["attention_mask"][row].bool()]
            ids = batch["input_ids"][row]
            length = min(len(prompt_ids), len(ids))
            same = (ids[:length] == prompt_ids[:length]).long()
            common = int(torch.cumprod(same, 0).sum())  # tokens shared with the prompt
            labels[row, :common] = -100
        batch["labels"] = labels
        return batch


def _image_only_processor_class(processor_cls: type) -> type:
    """``processor_cls`` without the ``video_processor`` attribute it requires."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):  # noqa: N807
        processor_cls.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    name = f"{processor_cls.__name__}ImageOnly"
    return type(name, (processor_cls,), {"__init__": __init__})


class QwenVLAdapter(FamilyAdapter):
    name = "qwen-vl"
    model_types = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl")
    _processor_classes: ClassVar[dict[str, str]] = {
        "qwen3_vl": "Qwen3VLProcessor",
        "qwen2_5_vl": "Qwen2_5_VLProcessor",
        "qwen2_vl": "Qwen2VLProcessor",
    }

    def load_processor(self, path: str | Path, *, model_type: str | None = None) -> Any:
        try:
            processor = AutoProcessor.from_pretrained(str(path))
        except ImportError as exc:
            if "torchvision" not in str(exc).lower():
                raise
            log.info("AutoProcessor needs torchvision (%s); building an image-only processor", exc)
        else:
            if getattr(processor, "image_processor", None) is not None:
                return processor
            # AutoProcessor fell back to the tokenizer (e.g. an unknown processor_class in tokenizer_config.json)
            log.warning("AutoProcessor gave %s for %s, not a processor; building the image processor from "
                        "preprocessor_config.json", type(processor).__name__, path)
        model_type = model_type or read_model_type(path)
        processor_cls = getattr(transformers, self._processor_classes[model_type])
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = AutoImageProcessor.from_pretrained(str(path))
        template = read_chat_template(path) or tokenizer.chat_template
        return _image_only_processor_class(processor_cls)(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=template
        )


class Gemma3Adapter(FamilyAdapter):
    """Gemma 3 / MedGemma: the shared prompt with a system turn, as MedGemma's examples do."""

    name = "gemma3"
    model_types = ("gemma3",)
    system_prompt = "You are an expert radiologist."


class LlavaAdapter(FamilyAdapter):
    """Generic LLaVA layout: a vision tower, a projector and a causal LM, ``<image>`` tokens."""

    name = "llava"
    model_types = ("llava",)


class Maira2Adapter(FamilyAdapter):
    """MAIRA-2 (remote code): the processor formats its own prompt.

    Uses the processor's documented reporting API, ``format_reporting_input`` /
    ``format_and_preprocess_reporting_input(current_frontal, current_lateral,
    prior_frontal, indication, technique, comparison, prior_report)``. MAIRA-2 writes
    the findings section only. The prior report is sent only with a prior frontal
    image (the prompt has no place for it otherwise).
    """

    name = "maira2"
    model_types = ("maira2",)
    model_class = "AutoModelForCausalLM"
    needs_remote_code = True
    sections = ("findings",)

    def _arguments(self, study: StudyInput) -> dict[str, Any]:
        has_prior = study.prior_frontal is not None
        prior_report = study.prior_report if has_prior else None
        if prior_report is not None and self.prior_report_style == "findings":
            prior_report = prior_report_findings(prior_report)
        return dict(
            current_frontal=study.frontal,
            current_lateral=study.lateral,
            prior_frontal=study.prior_frontal,
            indication=study.indication,
            technique=study.technique,
            comparison=study.comparison,
            prior_report=prior_report,
        )

    def prepare(self, processor: Any, studies: Sequence[StudyInput]) -> tuple[Any, list[str]]:
        if len(studies) == 1:
            arguments = self._arguments(studies[0])
            text, _images = processor.format_reporting_input(**arguments, get_grounding=False)
            inputs = processor.format_and_preprocess_reporting_input(
                **arguments, get_grounding=False, return_tensors="pt"
            )
            return inputs, [text]
        texts, images = [], []
        for study in studies:
            arguments = self._arguments(study)
            text, study_images = processor.format_reporting_input(**arguments, get_grounding=False)
            texts.append(text)
            images.append(study_images)
        inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
        return inputs, texts

    def training_texts(self, processor: Any, studies: Sequence[StudyInput], targets: Sequence[str]):
        prefixes, full, images = [], [], []
        for study, target in zip(studies, targets, strict=True):
            arguments = self._arguments(study)
            prefix, study_images = processor.format_reporting_input(**arguments, get_grounding=False)
            text, _ = processor.format_reporting_input(
                **arguments, get_grounding=False, assistant_text=target
            )
            prefixes.append(prefix)
            full.append(text)
            images.append(study_images)
        return prefixes, full, images

    def postprocess(self, processor: Any, text: str) -> str:
        text = text.strip()
        convert = getattr(processor, "convert_output_to_plaintext_or_grounded_sequence", None)
        if convert is None:
            return text
        try:
            converted = convert(text)
        except (AssertionError, ValueError):  # malformed grounding markup: keep the raw text
            return text
        if isinstance(converted, str):
            return converted
        return " ".join(phrase for phrase, _boxes in converted)


ADAPTERS: tuple[type[FamilyAdapter], ...] = (QwenVLAdapter, Gemma3Adapter, LlavaAdapter, Maira2Adapter)


def adapter_for(
    path_or_model_type: str | Path, *, trust_remote_code: bool = False, prior_report_style: str = "text"
) -> FamilyAdapter:
    """The adapter for a checkpoint directory or a ``model_type`` string.

    ``trust_remote_code`` is the operator's opt-in; a family that needs remote code refuses
    to load without it (:class:`RemoteCodeNotTrusted`). ``prior_report_style``: the checkpoint's
    (:func:`unirg.model.model.manifest_prior_report_style` reads it from its manifest).
    """
    text = str(path_or_model_type)
    model_type = read_model_type(text) if Path(text).is_dir() else text
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter(trust_remote_code=trust_remote_code, prior_report_style=prior_report_style)
    known = ", ".join(t for adapter in ADAPTERS for t in adapter.model_types)
    raise UnsupportedModel(f"no adapter for model_type {model_type!r}; supported: {known}")
