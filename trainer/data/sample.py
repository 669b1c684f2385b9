"""The one sample format every loader produces: :class:`Sample` (a study with its reference report).

A sample is one *study*: its current images (:class:`ImageRef`, a path or a loader, with the view), the
clinical context, the reference findings / impression, an optional :class:`Prior` (the most recent earlier
study of the patient: image + report text), the institution and demographics, and optional CheXpert labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from unirg.model import views

FRONTAL_VIEWS = frozenset(views.FRONTAL_VIEWS)
LATERAL_VIEWS = frozenset({"LATERAL", "LL", "RL"})
AGE_BANDS: tuple[tuple[str, int, int], ...] = (("0-39", 0, 39), ("40-59", 40, 59), ("60-79", 60, 79),
                                                ("80+", 80, 200))
"""Age bands used for grouping: (label, first age, last age)."""

_VIEW_ALIASES = {
    "PA": "PA", "POSTERO_ANTERIOR": "PA", "POSTEROANTERIOR": "PA", "PA LLD": "PA", "PA RLD": "PA",
    "AP": "AP", "ANTERO_POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP", "AP AXIAL": "AP", "AP LLD": "AP",
    "AP RLD": "AP", "SUPINE": "AP", "ERECT": "AP",
    "LATERAL": "LATERAL", "LAT": "LATERAL", "LL": "LL", "LEFT_LATERAL": "LL", "RL": "RL",
    "RIGHT_LATERAL": "RL", "LAO": "LAO", "RAO": "RAO",
}


def normalize_view(raw: Any) -> str | None:
    """A view name in the testbed's vocabulary ("PA", "AP", "LATERAL", "LL", "RL", ...), or ``None``.

    >>> normalize_view("POSTERO_ANTERIOR"), normalize_view("lateral"), normalize_view("")
    ('PA', 'LATERAL', None)
    """
    text = clean(raw)
    if not text:
        return None
    key = text.upper().replace("-", "_")
    return _VIEW_ALIASES.get(key, key)


def clean(value: Any) -> str:
    """``value`` as stripped text; ``None`` / NaN / "nan" give ""."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from a spreadsheet
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("nan", "none", "null") else text


def optional(value: Any) -> str | None:
    """``clean(value)`` or ``None`` when empty."""
    return clean(value) or None


def normalize_sex(raw: Any) -> str | None:
    """"M", "F", "O" or ``None`` from DICOM codes or words ("Male", "female", "O").

    >>> normalize_sex("Female"), normalize_sex("M"), normalize_sex("")
    ('F', 'M', None)
    """
    text = clean(raw).upper()
    if not text:
        return None
    if text in ("M", "MALE", "MAN"):
        return "M"
    if text in ("F", "FEMALE", "WOMAN"):
        return "F"
    if text in ("U", "UNKNOWN"):
        return None
    return "O"


def parse_age(raw: Any) -> int | None:
    """Age in whole years from an int, "65", "65.0", or a DICOM AS value ("065Y", "006M", "010D").

    >>> parse_age("065Y"), parse_age("18M"), parse_age(71.0), parse_age("")
    (65, 1, 71, None)
    """
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return None if raw != raw else int(raw)
    text = clean(raw).upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([DWMY]?)", text)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2) or "Y"
    return int(value / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[unit])


def age_band(age: int | None) -> str:
    """The :data:`AGE_BANDS` label of ``age``, "unknown" when ``None``.

    >>> age_band(39), age_band(40), age_band(85), age_band(None)
    ('0-39', '40-59', '80+', 'unknown')
    """
    if age is None:
        return "unknown"
    for label, low, high in AGE_BANDS:
        if low <= age <= high:
            return label
    return "unknown"


def parse_date(raw: Any) -> str | None:
    """A date as "YYYYMMDD" from "YYYYMMDD", "YYYY-MM-DD" (optionally with a time) or an int.

    >>> parse_date("2180-05-06 10:00:00"), parse_date(21800506), parse_date("")
    ('21800506', '21800506', None)
    """
    text = clean(raw)
    if isinstance(raw, float) and text:
        text = str(int(raw))
    m = re.match(r"(\d{4})-?(\d{2})-?(\d{2})", text)
    return "".join(m.groups()) if m else None


def join_report(findings: str | None, impression: str | None) -> str:
    """The report text of a prior study, in the prompt's ``Findings: ...\\nImpression: ...`` form.

    >>> join_report("Clear lungs.", "")
    'Findings: Clear lungs.'
    """
    parts = []
    if clean(findings):
        parts.append(f"Findings: {clean(findings)}")
    if clean(impression):
        parts.append(f"Impression: {clean(impression)}")
    return "\n".join(parts)


@dataclass(frozen=True)
class ImageRef:
    """One image of a study: a file ``path`` (DICOM, JPG, PNG) or a ``loader`` returning a PIL image."""

    path: str | None = None
    view: str | None = None
    loader: Callable[[], Image.Image] | None = field(default=None, compare=False, repr=False)
    uid: str | None = None

    def __post_init__(self) -> None:
        if self.path is None and self.loader is None:
            raise ValueError("ImageRef needs a path or a loader")

    @property
    def is_frontal(self) -> bool:
        return self.view in FRONTAL_VIEWS

    @property
    def is_lateral(self) -> bool:
        return self.view in LATERAL_VIEWS

    @property
    def is_dicom(self) -> bool:
        if self.path is None:
            return False
        suffix = Path(self.path).suffix.lower()
        if suffix in (".dcm", ".dicom"):
            return True
        if suffix in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"):
            return False
        with open(self.path, "rb") as f:  # DICOM Part 10: "DICM" after a 128-byte preamble
            return f.read(132)[128:] == b"DICM"

    def load(self, size: int | None = None, mode: str = "RGB") -> Image.Image:
        """The image as PIL (DICOM windowed to 8 bits), fitted to a ``size`` square when given."""
        from unirg.model.pixels import dataset_to_image, fit_image

        if self.loader is not None:
            image = self.loader()
        elif self.is_dicom:
            return dataset_to_image(self.path, size=size, mode=mode)
        else:
            with Image.open(self.path) as im:
                image = im.convert("L")
        if size is not None:
            image = fit_image(image, size)
        return image.convert(mode)


@dataclass(frozen=True)
class Prior:
    """The most recent earlier study of the same patient: its id, frontal image and report text."""

    study_id: str
    image: ImageRef | None = None
    report: str | None = None
    study_date: str | None = None


@dataclass(frozen=True)
class Sample:
    """One study with its reference report (see the module docstring).

    ``sex`` is "M" / "F" / "O" / ``None``; ``age`` whole years; ``study_date`` "YYYYMMDD"; ``sequence`` the
    study's rank in the patient's timeline when the source gives one without dates (CheXpert Plus);
    ``labels`` the 14 CheXpert labels (1 / 0 / -1 / ``None``) when the source has them; ``split`` the
    source's official split; ``meta`` anything else the loader kept (accession, study time, ...).
    """

    sample_id: str
    patient_id: str
    study_id: str
    images: tuple[ImageRef, ...] = ()
    indication: str | None = None
    comparison: str | None = None
    findings: str = ""
    impression: str = ""
    prior: Prior | None = None
    institution: str | None = None
    sex: str | None = None
    age: int | None = None
    study_date: str | None = None
    labels: Mapping[str, int | None] | None = field(default=None, compare=False, hash=False)
    sequence: int | None = None
    source: str = ""
    split: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.sample_id or not self.patient_id or not self.study_id:
            raise ValueError(f"a Sample needs sample_id, patient_id and study_id (got {self.sample_id!r}, "
                             f"{self.patient_id!r}, {self.study_id!r})")
        if not isinstance(self.images, tuple):
            object.__setattr__(self, "images", tuple(self.images))

    @property
    def has_prior(self) -> bool:
        return self.prior is not None

    @property
    def age_band(self) -> str:
        return age_band(self.age)

    @property
    def frontal(self) -> ImageRef | None:
        """The first frontal image (else the first image whose view is unknown)."""
        for ref in self.images:
            if ref.is_frontal:
                return ref
        return next((ref for ref in self.images if ref.view is None), None)

    @property
    def lateral(self) -> ImageRef | None:
        return next((ref for ref in self.images if ref.is_lateral), None)

    @property
    def report(self) -> str:
        """Findings and impression as one text (the form a prior report takes)."""
        return join_report(self.findings, self.impression)

    def text(self, section: str = "findings") -> str:
        """The reference text of ``section``: "findings", "impression" or "both" (joined by a newline)."""
        return section_text(self.findings, self.impression, section)


def section_text(findings: str | None, impression: str | None, section: str) -> str:
    """The text of ``section`` ("findings", "impression", "both") from the two sections."""
    if section == "findings":
        return clean(findings)
    if section == "impression":
        return clean(impression)
    if section == "both":
        return "\n".join(t for t in (clean(findings), clean(impression)) if t)
    raise ValueError(f"section must be 'findings', 'impression' or 'both', got {section!r}")
