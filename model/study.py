"""The data that crosses the infer API: study inputs, generation settings, drafts.

These are plain dataclasses shared by the local transformers backend
(:class:`unirg.model.model.ReportModel`), the OpenAI-compatible backend
(:class:`unirg.model.openai_backend.OpenAIBackend`) and the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from PIL import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

from unirg.sr_writer import ModelInfo  # the SR writer owns the model identity it records


__all__ = ["Draft", "GenerationConfig", "ModelInfo", "StudyInput"]

Strategy = Literal["greedy", "beam", "sampling"]


@dataclass
class StudyInput:
    """What the model sees of one study.

    Parameters
    ----------
    frontal : PIL.Image.Image
        Current frontal (PA or AP) image, already windowed to 8 bits
        (see :func:`unirg.model.pixels.dataset_to_image`).
    lateral : PIL.Image.Image, optional
        Current lateral image. The UniRG-CXR prompt does not use it; MAIRA-2 does.
    indication, comparison, technique : str, optional
        Clinical context. ``comparison`` is free text such as ``"Chest radiograph 2024-01-02."``.
    prior_frontal : PIL.Image.Image, optional
        Frontal image of the most recent prior study (longitudinal prompt).
    prior_report : str, optional
        Report text of that prior study; only used together with ``prior_frontal``.
    study_uid : str, optional
        Carried through to :class:`Draft` for logging; never sent to the model.
    """

    frontal: Image.Image
    lateral: Image.Image | None = None
    indication: str | None = None
    comparison: str | None = None
    technique: str | None = None
    prior_frontal: Image.Image | None = None
    prior_report: str | None = None
    study_uid: str | None = None

    def __post_init__(self) -> None:
        for name in ("frontal", "lateral", "prior_frontal"):
            value = getattr(self, name)
            if value is None and name != "frontal":
                continue
            if not isinstance(value, Image.Image):
                raise TypeError(
                    f"StudyInput.{name} must be a PIL.Image.Image, got {type(value).__name__}; "
                    "convert DICOM with unirg.model.pixels.dataset_to_image() "
                    "or use StudyInput.from_datasets()"
                )

    @property
    def has_prior(self) -> bool:
        """True when the longitudinal prompt applies (a prior frontal image is given)."""
        return self.prior_frontal is not None

    @classmethod
    def from_datasets(
        cls,
        frontal: Dataset,
        lateral: Dataset | None = None,
        *,
        prior_frontal: Dataset | None = None,
        prior_report: str | None = None,
        indication: str | None = None,
        comparison: str | None = None,
        technique: str | None = None,
        size: int | None = 512,
    ) -> StudyInput:
        """Build from DICOM datasets: pixels are decoded, windowed and fitted to ``size``.

        ``indication`` defaults to the request's reason found in ``frontal``
        (see :func:`indication_from_dataset`); ``comparison`` defaults to the
        prior study's date when a prior is given.
        """
        from unirg.model.pixels import dataset_to_image

        if indication is None:
            indication = indication_from_dataset(frontal)
        if comparison is None and prior_frontal is not None:
            comparison = comparison_from_date(str(getattr(prior_frontal, "StudyDate", "") or ""))
        return cls(
            frontal=dataset_to_image(frontal, size=size),
            lateral=dataset_to_image(lateral, size=size) if lateral is not None else None,
            indication=indication,
            comparison=comparison,
            technique=technique,
            prior_frontal=dataset_to_image(prior_frontal, size=size) if prior_frontal is not None else None,
            prior_report=prior_report if prior_frontal is not None else None,
            study_uid=str(getattr(frontal, "StudyInstanceUID", "") or "") or None,
        )


def comparison_from_date(date: str) -> str | None:
    """The comparison line for a prior of DICOM date ``YYYYMMDD`` (``None`` for another value).

    >>> comparison_from_date("20240102")
    'Chest radiograph 2024-01-02.'
    """
    if len(date) == 8 and date.isdigit():
        return f"Chest radiograph {date[:4]}-{date[4:6]}-{date[6:]}."
    return None


def indication_from_dataset(ds: Dataset) -> str | None:
    """The reason for the exam as written in the image header, if any.

    Looks at Reason for the Requested Procedure, Reason for Study, the Request
    Attributes Sequence and Additional Patient History, in that order.
    """
    candidates: list[object] = [
        ds.get("ReasonForTheRequestedProcedure"),
        ds.get("ReasonForStudy"),
    ]
    for item in ds.get("RequestAttributesSequence", None) or []:
        candidates.append(item.get("ReasonForTheRequestedProcedure"))
    candidates.append(ds.get("AdditionalPatientHistory"))
    for value in candidates:
        text = str(value or "").strip()
        if text:
            return text
    return None


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode.

    Parameters
    ----------
    strategy : {"greedy", "beam", "sampling"}
        Greedy decoding is the default (reproducible drafts).
    max_new_tokens : int
        Upper bound on generated tokens; a draft that hits it is flagged ``truncated``.
    temperature, top_p : float
        Sampling only.
    num_beams : int
        Beam search only; must be at least 2 there.
    repetition_penalty : float
        1.0 disables it; values around 1.05-1.2 damp the loops small models fall into.
    seed : int, optional
        Seeds torch before each ``generate`` call (sampling), and is sent to OpenAI servers.
    batch_size : int
        Studies per ``generate`` call (local) or concurrent requests (OpenAI backend).
    """

    strategy: Strategy = "greedy"
    max_new_tokens: int = 300
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "beam", "sampling"):
            raise ValueError(
                f"GenerationConfig.strategy must be 'greedy', 'beam' or 'sampling', got {self.strategy!r}"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"GenerationConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.strategy == "beam" and self.num_beams < 2:
            raise ValueError(
                f"GenerationConfig(strategy='beam') needs num_beams >= 2, got {self.num_beams}; "
                "set num_beams=3 (say) or use strategy='greedy'"
            )
        if self.strategy != "beam" and self.num_beams != 1:
            raise ValueError(
                f"num_beams={self.num_beams} only applies to strategy='beam' (got {self.strategy!r}); "
                "set strategy='beam' or leave num_beams at 1"
            )
        if self.strategy == "sampling" and not self.temperature > 0:
            raise ValueError(
                f"GenerationConfig(strategy='sampling') needs temperature > 0, got {self.temperature}; "
                "use strategy='greedy' for deterministic output"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(
                f"GenerationConfig.repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}"
            )

    def generate_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``transformers`` ``model.generate``."""
        kwargs: dict[str, object] = {"max_new_tokens": self.max_new_tokens}
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.strategy == "greedy":
            kwargs.update(do_sample=False, num_beams=1)
        elif self.strategy == "beam":
            kwargs.update(do_sample=False, num_beams=self.num_beams, early_stopping=True)
        else:
            kwargs.update(do_sample=True, num_beams=1, temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass(frozen=True)
class Draft:
    """One drafted report.

    ``flags`` come from :func:`unirg.model.parse.parse_report` (e.g. ``"empty"``,
    ``"truncated"``, ``"missing_impression"``); an empty tuple means a clean parse.
    """

    findings: str
    impression: str
    comparison: str | None
    raw_text: str
    prompt_text: str
    model_info: ModelInfo
    flags: tuple[str, ...] = ()
    study_uid: str | None = None

    @property
    def ok(self) -> bool:
        """True when the draft has both findings and impression text."""
        return bool(self.findings.strip()) and bool(self.impression.strip())

    @classmethod
    def from_text(
        cls,
        raw_text: str,
        *,
        prompt_text: str,
        model_info: ModelInfo,
        truncated: bool | None = None,
        sections: tuple[str, ...] = ("findings", "impression"),
        study_uid: str | None = None,
    ) -> Draft:
        """Parse generated text (see :func:`unirg.model.parse.parse_report`)."""
        from unirg.model.parse import parse_report

        parsed = parse_report(raw_text, truncated=truncated, sections=sections)
        return cls(
            findings=parsed.findings,
            impression=parsed.impression,
            comparison=parsed.comparison,
            raw_text=raw_text,
            prompt_text=prompt_text,
            model_info=model_info,
            flags=parsed.flags,
            study_uid=study_uid,
        )


def chunked(items: Sequence, size: int) -> list[Sequence]:
    """``items`` cut into consecutive pieces of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]

