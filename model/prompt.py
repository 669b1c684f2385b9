"""The one prompt, shared by inference and training (UniRG-CXR recipe).

One 512x512 current frontal image, a short clinical context
(``Indication: ... Comparison: ...``) and an instruction asking for
``Findings: ... Impression: ...``. The longitudinal variant adds the most recent
prior frontal image and its report text.

Messages use the Hugging Face multimodal chat layout
(``{"type": "image"}`` / ``{"type": "text", "text": ...}`` content items), which the
chat templates of Qwen-VL, Gemma 3 and LLaVA checkpoints render with their own image
placeholders; :func:`to_openai_messages` turns the same prompt into OpenAI
``image_url`` items. The trainer builds its SFT examples with
:func:`build_prompt` + :func:`format_target`, so a model sees at inference exactly what
it was trained on.

>>> format_target("The lungs are clear.", "No acute disease.")
'Findings: The lungs are clear.\\nImpression: No acute disease.'
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field

from PIL import Image

from unirg.model.chexpert import OBSERVATIONS, POSITIVE, UNCERTAIN
from unirg.model.labeler import extract_mentions
from unirg.model.study import StudyInput

__all__ = [
    "INSTRUCTION",
    "INSTRUCTION_LONGITUDINAL",
    "NO_PRIOR_REPORT",
    "PRIOR_REPORT_STYLES",
    "SYSTEM_PROMPT",
    "Prompt",
    "build_prompt",
    "check_prior_report_style",
    "context_text",
    "format_target",
    "prior_report_findings",
    "prompt_corpus",
    "to_openai_messages",
]

SYSTEM_PROMPT = "You are a radiologist drafting a chest X-ray report for review by a colleague."

INSTRUCTION = (
    "Write the radiology report for the current chest X-ray. "
    "Answer in the form 'Findings: ... Impression: ...'."
)
INSTRUCTION_LONGITUDINAL = (
    "Write the radiology report for the current chest X-ray, describing changes since the prior study. "
    "Answer in the form 'Findings: ... Impression: ...'."
)

CURRENT_LABEL = "Current frontal chest X-ray:"
PRIOR_LABEL = "Most recent prior frontal chest X-ray:"
PRIOR_REPORT_LABEL = "Prior report:"
NONE_TEXT = "None."
#: The prior report slot when the prior has no human report (see unirg.plugin.prior_policy).
NO_PRIOR_REPORT = "No prior report available."
#: How the prior report enters the prompt: ``"text"`` as written (UniRG-CXR), ``"findings"`` as the
#: labeler's reading of it (:func:`prior_report_findings`), the same words whatever the site's style.
#: A checkpoint's manifest names its style (``"prompt": {"prior_report": ...}``); default ``"text"``.
PRIOR_REPORT_STYLES = ("text", "findings")
PRIOR_FINDINGS_LABEL = "Prior report findings:"
NO_PRIOR_FINDINGS = "no acute findings."
_SEVERITY_WORDS = ("tiny", "trace", "small", "mild", "moderate", "large", "severe", "extensive")
_SEVERITY = re.compile(rf"\b({'|'.join(_SEVERITY_WORDS)})\b")
_SEVERITY_WINDOW = 40  # characters before a mention searched for its size word


@dataclass
class Prompt:
    """A rendered-agnostic prompt: chat messages plus the images in placeholder order."""

    messages: list[dict]
    images: list[Image.Image] = field(default_factory=list)

    def with_target(self, target: str) -> Prompt:
        """The same prompt with the assistant's answer appended (for training)."""
        return Prompt(
            messages=[*self.messages, {"role": "assistant", "content": [{"type": "text", "text": target}]}],
            images=list(self.images),
        )

    def text_only(self) -> str:
        """The prompt's text with ``<image>`` where images go (for logs and the Draft)."""
        parts: list[str] = []
        for message in self.messages:
            content = message["content"]
            if isinstance(content, str):
                body = content
            else:
                body = "".join("<image>" if item["type"] == "image" else item["text"] for item in content)
            parts.append(f"{message['role']}: {body}")
        return "\n".join(parts)


def _clean(text: str | None) -> str:
    text = " ".join(str(text or "").split())
    return text or NONE_TEXT


def context_text(indication: str | None, comparison: str | None) -> str:
    """``"Indication: ...\\nComparison: ..."`` with ``None.`` for missing parts.

    >>> context_text("Cough.", None)
    'Indication: Cough.\\nComparison: None.'
    """
    return f"Indication: {_clean(indication)}\nComparison: {_clean(comparison)}"


def format_target(findings: str, impression: str) -> str:
    """The answer a model is trained to give, and that :mod:`~unirg.model.parse` reads back."""
    return f"Findings: {_clean(findings)}\nImpression: {_clean(impression)}"


def check_prior_report_style(style: str) -> str:
    """``style`` when it is one of :data:`PRIOR_REPORT_STYLES`, else ``ValueError``."""
    if style not in PRIOR_REPORT_STYLES:
        raise ValueError(f"prior_report_style must be one of {PRIOR_REPORT_STYLES}, not {style!r}")
    return style


def prior_report_findings(report: str | None) -> str:
    """The positive and uncertain findings the labeler reads in ``report``, in fixed words.

    One item per CheXpert observation, in :data:`~unirg.model.chexpert.OBSERVATIONS` order, with the
    laterality and the size word written before it; "possible" marks an uncertain one. A report with no
    such finding gives :data:`NO_PRIOR_FINDINGS`; a blank one :data:`NO_PRIOR_REPORT`.

    >>> prior_report_findings("Small left pleural effusion. Possible right basal pneumonia. Heart size normal.")
    'possible right pneumonia; small left pleural effusion.'
    >>> prior_report_findings("Heart and mediastinal contours are normal. The lungs are clear.")
    'no acute findings.'
    """
    text = " ".join(str(report or "").split())
    if not text:
        return NO_PRIOR_REPORT
    low = text.lower()
    found: dict[str, dict] = {}
    previous_end = 0
    for mention in sorted(extract_mentions(text), key=lambda m: m.span):
        start = max(mention.sentence_span[0], previous_end, mention.span[0] - _SEVERITY_WINDOW)
        previous_end = mention.span[1]
        if mention.label not in (POSITIVE, UNCERTAIN):
            continue
        item = found.setdefault(mention.observation, {"positive": False, "sides": set(), "size": None})
        item["positive"] = item["positive"] or mention.label == POSITIVE
        if mention.laterality and mention.observation != "Support Devices":  # a device's side is not a finding's
            item["sides"].add(mention.laterality)
        sizes = _SEVERITY.findall(low[start: mention.span[0]])
        if sizes and item["size"] is None:
            item["size"] = sizes[-1]
    items = []
    for observation in OBSERVATIONS:
        if observation not in found:
            continue
        item = found[observation]
        sides = item["sides"]
        side = "bilateral" if "bilateral" in sides or {"left", "right"} <= sides else next(iter(sides), None)
        words = [None if item["positive"] else "possible", item["size"], side, observation.lower()]
        items.append(" ".join(w for w in words if w))
    return ("; ".join(items) + ".") if items else NO_PRIOR_FINDINGS


def build_prompt(
    study: StudyInput,
    *,
    longitudinal: bool = True,
    system_prompt: str | None = SYSTEM_PROMPT,
    prior_report_style: str = "text",
) -> Prompt:
    """The chat prompt for ``study``.

    Parameters
    ----------
    study : StudyInput
        The study; its lateral image is not used (UniRG-CXR uses the frontal only).
    longitudinal : bool
        Add the prior frontal image and prior report when ``study`` has a prior.
        The prior report is only used together with the prior image; a prior without a
        (human) report gets :data:`NO_PRIOR_REPORT`.
    system_prompt : str or None
        ``None`` leaves out the system message (for templates without a system role).
    prior_report_style : str
        One of :data:`PRIOR_REPORT_STYLES`: the prior report as written, or its findings in fixed words.
    """
    check_prior_report_style(prior_report_style)
    with_prior = longitudinal and study.prior_frontal is not None
    content: list[dict] = [{"type": "text", "text": CURRENT_LABEL}, {"type": "image"}]
    images = [study.frontal]
    if with_prior:
        content += [{"type": "text", "text": f"\n{PRIOR_LABEL}"}, {"type": "image"}]
        images.append(study.prior_frontal)
        if prior_report_style == "findings":
            label, report = PRIOR_FINDINGS_LABEL, prior_report_findings(study.prior_report)
        else:
            label, report = PRIOR_REPORT_LABEL, " ".join(str(study.prior_report or "").split()) or NO_PRIOR_REPORT
        content.append({"type": "text", "text": f"\n{label} {report}"})
    instruction = INSTRUCTION_LONGITUDINAL if with_prior else INSTRUCTION
    context = context_text(study.indication, study.comparison)
    content.append({"type": "text", "text": f"\n{context}\n{instruction}"})
    messages: list[dict] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return Prompt(messages=messages, images=images)


def image_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    """``data:image/png;base64,...`` for ``image`` (lossless by default)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    mime = "image/png" if fmt.upper() == "PNG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def to_openai_messages(prompt: Prompt) -> list[dict]:
    """The prompt in OpenAI ``/v1/chat/completions`` form, images as base64 data URLs."""
    images = iter(prompt.images)
    out: list[dict] = []
    for message in prompt.messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        items: list[dict] = []
        for item in content:
            if item["type"] == "image":
                items.append({"type": "image_url", "image_url": {"url": image_data_url(next(images))}})
            else:
                items.append({"type": "text", "text": item["text"]})
        out.append({"role": message["role"], "content": items})
    return out


def prompt_corpus() -> list[str]:
    """The fixed texts of the prompt, for building a tokenizer vocabulary."""
    return [
        SYSTEM_PROMPT,
        INSTRUCTION,
        INSTRUCTION_LONGITUDINAL,
        CURRENT_LABEL,
        PRIOR_LABEL,
        PRIOR_REPORT_LABEL,
        NO_PRIOR_REPORT,
        PRIOR_FINDINGS_LABEL,
        NO_PRIOR_FINDINGS,
        " ".join(("possible", *_SEVERITY_WORDS, "left", "right", "bilateral")),
        "; ".join(o.lower() for o in OBSERVATIONS[1:]) + ".",
        context_text(None, None),
        format_target("", ""),
    ]
