"""A small local stand-in for MAIRA-2's remote code, for offline tests.

MAIRA-2 (microsoft/maira-2) ships its config, model and processor as remote code
(``trust_remote_code=True``), which cannot be downloaded here. This file is *our own*
implementation of the parts of that API the adapter
(:class:`unirg.model.families.Maira2Adapter`) relies on, written from the
model card's documented usage:

* ``Maira2Config`` (``model_type="maira2"``), a :class:`~transformers.LlavaConfig`;
* ``Maira2ForConditionalGeneration``, loaded through ``AutoModelForCausalLM``; here a
  plain LLaVA model (MAIRA-2's own has a 4-layer projector and a RAD-DINO tower);
* ``Maira2Processor`` with ``format_reporting_input``,
  ``format_and_preprocess_reporting_input(current_frontal, current_lateral,
  prior_frontal, indication, technique, comparison, prior_report, ...)`` and
  ``convert_output_to_plaintext_or_grounded_sequence``.

:func:`unirg.trainer.tiny_models.build_tiny_maira2` copies this file into a checkpoint
as ``modeling_maira2.py`` and points ``auto_map`` at it, so loading goes through
transformers' remote-code path as it would for the real model. It must therefore only
import third-party packages, never ``unirg``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.feature_extraction_utils import BatchFeature

MISSING = "N/A"


class Maira2Config(LlavaConfig):
    model_type = "maira2"

    def __init__(self, projector_n_layers: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.projector_n_layers = projector_n_layers


class Maira2ForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = Maira2Config


class Maira2Processor(LlavaProcessor):
    """LLaVA processor plus MAIRA-2's reporting prompt."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token: str = "<image>",
        num_additional_image_tokens: int = 0,
        phrase_start_token: str = "<obj>",
        phrase_end_token: str = "</obj>",
        box_start_token: str = "<box>",
        box_end_token: str = "</box>",
        num_box_coord_bins: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            num_additional_image_tokens=num_additional_image_tokens,
            **kwargs,
        )
        self.phrase_start_token = phrase_start_token
        self.phrase_end_token = phrase_end_token
        self.box_start_token = box_start_token
        self.box_end_token = box_end_token
        self.num_box_coord_bins = num_box_coord_bins

    @staticmethod
    def _grey(image: Image.Image) -> Image.Image:
        """Single channel, stretched to the full 0-255 range."""
        values = np.asarray(image.convert("L"), dtype=np.float64)
        span = values.max() - values.min()
        values = (values - values.min()) / span * 255.0 if span > 0 else np.zeros_like(values)
        return Image.fromarray(values.astype(np.uint8))

    def _messages(
        self,
        *,
        has_lateral: bool,
        has_prior: bool,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool,
        assistant_text: str | None,
    ) -> list[dict]:
        def section(value: str | None) -> str:
            return value if isinstance(value, str) and value else MISSING

        views = [("current frontal", 0)]
        if has_lateral:
            views.append(("current lateral", len(views)))
        if has_prior:
            views.append(("prior frontal", len(views)))
        content: list[dict] = []
        for position, (label, index) in enumerate(views):
            if len(views) == 1:
                lead = f"Given the {label} image only"
            elif position == 0:
                lead = f"Given the {label} image"
            elif position == len(views) - 1:
                lead = f" and the {label} image"
            else:
                lead = f" the {label} image"
            content += [
                {"index": None, "text": lead, "type": "text"},
                {"index": index, "text": None, "type": "image"},
            ]
        if has_prior:
            content.append({"index": None, "text": f" PRIOR_REPORT: {section(prior_report)}", "type": "text"})
        task = (
            "Provide a structured description of the findings in the radiology study "
            "in comparison to the prior frontal image."
        )
        if get_grounding:
            task += " Locate each groundable finding in the current frontal image with bounding boxes."
        content.append(
            {
                "index": None,
                "text": f" {task} INDICATION: {section(indication)} TECHNIQUE: {section(technique)} "
                f"COMPARISON: {section(comparison)}",
                "type": "text",
            }
        )
        messages = [{"role": "user", "content": content}]
        if assistant_text is not None:
            answer = {"index": None, "text": assistant_text, "type": "text"}
            messages.append({"role": "assistant", "content": [answer]})
        return messages

    def format_reporting_input(
        self,
        current_frontal: Image.Image,
        current_lateral: Image.Image | None,
        prior_frontal: Image.Image | None,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool = False,
        assistant_text: str | None = None,
    ) -> tuple[str, list[Image.Image]]:
        """The prompt text and the images in prompt order (frontal, lateral, prior)."""
        images = [self._grey(current_frontal)]
        if current_lateral is not None:
            images.append(self._grey(current_lateral))
        if prior_frontal is not None:
            images.append(self._grey(prior_frontal))
        messages = self._messages(
            has_lateral=current_lateral is not None,
            has_prior=prior_frontal is not None,
            indication=indication,
            technique=technique,
            comparison=comparison,
            prior_report=prior_report,
            get_grounding=get_grounding,
            assistant_text=assistant_text,
        )
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=assistant_text is None, tokenize=False
        )
        return text, images

    def format_and_preprocess_reporting_input(
        self,
        current_frontal: Image.Image,
        current_lateral: Image.Image | None,
        prior_frontal: Image.Image | None,
        indication: str | None,
        technique: str | None,
        comparison: str | None,
        prior_report: str | None,
        get_grounding: bool = False,
        assistant_text: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """``format_reporting_input`` followed by the processor call (``kwargs`` go there)."""
        text, images = self.format_reporting_input(
            current_frontal,
            current_lateral,
            prior_frontal,
            indication,
            technique,
            comparison,
            prior_report,
            get_grounding=get_grounding,
            assistant_text=assistant_text,
        )
        return self(text=text, images=images, **kwargs)

    def convert_output_to_plaintext_or_grounded_sequence(self, text: str):
        """Plain text as is; ``<obj>phrase<box><x..><y..><x..><y..></box></obj>`` as (phrase, boxes)."""
        text = text.strip()
        markers = (self.phrase_start_token, self.phrase_end_token, self.box_start_token, self.box_end_token)
        if not any(marker in text for marker in markers):
            return text
        start, end = re.escape(self.phrase_start_token), re.escape(self.phrase_end_token)
        phrases = []
        for body in re.findall(f"{start}(.*?){end}", text, flags=re.S):
            boxes = [
                tuple((int(v) + 0.5) / self.num_box_coord_bins for v in match)
                for match in re.findall(r"<x(\d+)><y(\d+)><x(\d+)><y(\d+)>", body)
            ]
            phrase = body.split(self.box_start_token, 1)[0].strip()
            phrases.append((phrase, boxes or None))
        if not phrases:
            raise ValueError(f"malformed grounded output: {text[:80]!r}")
        return phrases
