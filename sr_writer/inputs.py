"""What goes into a report SR: model identity, report sections, and the checks on source images."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from highdicom._standard_utils import does_iod_have_pixel_data
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

#: Largest section text accepted, in UTF-8 bytes (UT allows 4 GiB; no report needs this much).
MAX_TEXT_BYTES = 1 << 20
#: LO (Long String) limit, for values that end up in LO attributes.
MAX_LO_CHARS = 64
# Control characters other than TAB, LF, FF, CR are not allowed in DICOM text values.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class SRInputError(ValueError):
    """Bad input to an SR builder; the message names the argument and the problem."""


def _check_lo(arg: str, value: str) -> None:
    if not value or not value.strip():
        raise SRInputError(f"{arg} must not be empty")
    if len(value) > MAX_LO_CHARS or "\\" in value or _CONTROL.search(value):
        raise SRInputError(
            f"{arg} {value[:80]!r} must be at most {MAX_LO_CHARS} characters, "
            "without backslashes or control characters"
        )


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the model that drafted a report.

    Parameters
    ----------
    name : str
        Model name, e.g. ``"qwen3-vl-2b-cxr"`` (at most 64 characters).
    version : str
        Model version, e.g. ``"2026.11.1"`` (at most 64 characters).
    weights_sha256 : str
        SHA-256 of the weights as 64 hex digits, or ``""`` when unknown.
    synthetic_training_data : bool
        The model was trained on synthetic data only (its manifest's ``"training_data":
        "synthetic"``); the draft's disclaimer then says so.
    """

    name: str
    version: str
    weights_sha256: str = ""
    synthetic_training_data: bool = False

    def __post_init__(self) -> None:
        _check_lo("ModelInfo.name", self.name)
        _check_lo("ModelInfo.version", self.version)
        sha = self.weights_sha256.lower()
        if sha and not _SHA256.fullmatch(sha):
            raise SRInputError(
                f"ModelInfo.weights_sha256 {self.weights_sha256[:80]!r} must be 64 hex digits "
                "(hashlib.sha256(...).hexdigest()) or empty"
            )
        object.__setattr__(self, "weights_sha256", sha)

    @property
    def device_uid(self) -> UID:
        """Device Observer UID, derived from name and version (same model, same UID)."""
        return generate_uid(entropy_srcs=["unirg model", self.name, self.version])


@dataclass(frozen=True)
class ReportSections:
    """The text sections of a chest X-ray report.

    Parameters
    ----------
    findings, impression : str
        Findings and impression; one of them may be empty, not both.
    comparison : str, optional
        Comparison statement (priors); generated from the priors when they are
        given and this is ``None``.
    indication : str, optional
        Indication / clinical information.
    """

    findings: str
    impression: str
    comparison: str | None = None
    indication: str | None = None


#: Alias used by the inference side.
DraftReport = ReportSections


def check_text(arg: str, value: str | None) -> str:
    """Return ``value`` stripped of outer white space; raise `SRInputError` if unusable."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SRInputError(f"{arg} must be a str, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise SRInputError(f"{arg} is {size} bytes long; the limit is {MAX_TEXT_BYTES} bytes (1 MiB)")
    bad = _CONTROL.search(value)
    if bad:
        raise SRInputError(
            f"{arg} contains control character {bad.group()!r} at offset {bad.start()}; "
            "only TAB, LF, FF and CR are allowed in DICOM text"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SRInputError(f"{arg} is not valid Unicode text: {exc}") from None
    return value.strip()


#: SOP Class UID prefix of the Structured Report storage classes.
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _is_sr(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).startswith(SR_CLASS_PREFIX) and not any(k in ds for k in _PIXEL_KEYWORDS)


def _is_image(ds: Dataset) -> bool:
    sop_class = str(ds.get("SOPClassUID", ""))
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    return has_pixels and bool(sop_class) and does_iod_have_pixel_data(sop_class)


#: Must be present and non-empty on every source image.
REQUIRED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
#: Type 2 attributes the SR copies from the first current image; absent ones are written empty.
TYPE2 = (
    "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def image_headers(arg: str, images: Sequence[Dataset], *, allow_sr: bool = False) -> list[Dataset]:
    """Check source images and return copies without pixel data.

    Parameters
    ----------
    arg : str
        Argument name used in error messages (``"current"`` or ``"priors"``).
    images : Sequence[pydicom.dataset.Dataset]
        Image datasets.
    allow_sr : bool
        Also accept SR documents (the prior report whose text the model was given).

    Raises
    ------
    SRInputError
        When an item is not a Dataset, not an image, or lacks a required attribute.
    """
    if isinstance(images, Dataset):
        raise SRInputError(f"{arg} must be a sequence of image datasets, not a single Dataset")
    headers = []
    for i, ds in enumerate(images):
        where = f"{arg}[{i}]"
        if not isinstance(ds, Dataset):
            raise SRInputError(f"{where} must be a pydicom Dataset, got {type(ds).__name__}")
        if not (_is_image(ds) or (allow_sr and _is_sr(ds))):
            sop_class = UID(str(ds.get("SOPClassUID", "")))
            raise SRInputError(
                f"{where} is not an image (SOP Class {sop_class.name or 'missing'}, "
                f"pixel data {'present' if any(k in ds for k in _PIXEL_KEYWORDS) else 'absent'}); "
                "only image instances can be evidence"
                + (", and SR documents among the priors" if allow_sr else "")
            )
        missing = [k for k in REQUIRED if not str(ds.get(k, "") or "").strip()]
        if missing:
            raise SRInputError(f"{where} lacks required attribute(s) {', '.join(missing)}")
        header = Dataset()
        for tag in ds.keys():
            if tag < 0x7FE00000:  # everything before the pixel data, which stays unread
                header.add(ds[tag])
        header.decode()  # nested items as str too, so the SR can re-encode them
        for keyword in TYPE2:
            if keyword not in header:
                setattr(header, keyword, None)
        headers.append(header)
    return headers


def check_evidence(current: list[Dataset], priors: list[Dataset]) -> None:
    """Raise `SRInputError` unless all images are of one patient and ``current`` of one study."""
    if not current:
        raise SRInputError("current must hold at least one image of the study being reported")
    patient, study = current[0].PatientID, current[0].StudyInstanceUID
    for arg, images in (("current", current), ("priors", priors)):
        for i, ds in enumerate(images):
            if ds.PatientID != patient:
                raise SRInputError(
                    f"{arg}[{i}] is of patient {ds.PatientID!r} but current[0] of {patient!r}: "
                    "all images must be of one patient"
                )
            same_study = ds.StudyInstanceUID == study
            if arg == "current" and not same_study:
                raise SRInputError(
                    f"current[{i}] is of study {ds.StudyInstanceUID} but current[0] of {study}: "
                    "current images must all be of one study (pass other studies as priors)"
                )
            if arg == "priors" and same_study:
                raise SRInputError(
                    f"priors[{i}] is of the current study {study}; priors must be other studies"
                )
