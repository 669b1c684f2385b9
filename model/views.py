"""Which chest radiograph view a DICOM image is, and why an object cannot be a model input.

Pure rules on one dataset (no I/O), shared by the plugin's view selection
(:mod:`unirg.plugin.select`) and the trainer's DICOM-folder loader.

The view comes from, in order of trust: View Position (0018,5101), the View Code
Sequence (0054,0220, CID 4010), Image Type values, Patient Orientation (0020,0020) and
finally words in the series / protocol / image descriptions.

>>> from pydicom.dataset import Dataset
>>> ds = Dataset(); ds.ViewPosition = "PA"; ds.BodyPartExamined = "CHEST"
>>> classify_view(ds)
'PA'
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

__all__ = [
    "FRONTAL_VIEWS",
    "LATERAL",
    "classify_view",
    "is_chest",
    "is_derived",
    "skip_reason",
]

FRONTAL_VIEWS = ("PA", "AP", "FRONTAL")
"""What :func:`classify_view` returns for frontal images (``FRONTAL``: projection unknown)."""
LATERAL = "LATERAL"

# View Position (0018,5101) defined terms and common vendor spellings
_VIEW_POSITION = {
    "PA": "PA",
    "POSTERO-ANTERIOR": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "ANTERO-POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP",
    "APS": "AP",
    "APSUP": "AP",
    "AP SUPINE": "AP",
    "AP ERECT": "AP",
    "FRONTAL": "FRONTAL",
    "LL": LATERAL,
    "RL": LATERAL,
    "LAT": LATERAL,
    "LATERAL": LATERAL,
    "LLAT": LATERAL,
    "RLAT": LATERAL,
    "LATERAL LEFT": LATERAL,
    "LATERAL RIGHT": LATERAL,
}

# CID 4010 "DX View" codes (SNOMED CT, with the retired SNOMED-RT ones still in the field)
_VIEW_CODES = {
    codes.SCT.PosteroAnterior.value: "PA",
    codes.SCT.AnteroPosterior.value: "AP",
    codes.SCT.Frontal.value: "FRONTAL",
    codes.SCT.LeftLateral.value: LATERAL,
    codes.SCT.RightLateral.value: LATERAL,
    codes.SCT.Lateral.value: LATERAL,
    codes.SCT.LateralProjection.value: LATERAL,
    codes.SCT.LateralMedial.value: LATERAL,
    codes.SCT.MedioLateralProjection.value: LATERAL,
    "R-10214": "PA",
    "R-10206": "AP",
    "R-10232": LATERAL,
    "R-10236": LATERAL,
    "R-102CD": LATERAL,
}

_NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "DOC", "REG", "SEG", "RTSTRUCT", "PLAN", "AU", "ECG"}
_RADIOGRAPHY_MODALITIES = {"CR", "DX", "DR", "RG"}
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "CHESTLAT", "TORAX", "THORAXLAT"}
_CHEST_WORDS = re.compile(r"(?i)\b(chest|thorax|thoracic|thx|cxr|lungs?|torax|pulmonary|rx\s*t[oh]rax)\b")
_TEXT_VIEW = [
    (re.compile(r"(?i)\b(lat|lateral|lat\.)\b"), LATERAL),
    (re.compile(r"(?i)\b(p\.?a\.?|postero-?anterior)\b"), "PA"),
    (re.compile(r"(?i)\b(a\.?p\.?|antero-?posterior|supine|portable)\b"), "AP"),
    (re.compile(r"(?i)\bfrontal\b"), "FRONTAL"),
]
# A DERIVED image is not the radiograph when its Image Type (values 3+), Derivation Description or
# Derivation Code Sequence meaning says so.
_NOT_THE_RADIOGRAPH = re.compile(
    r"(?i)(subtract|annotat|\bkey\b|key[ _-]?image|overlay|dual[ _-]?energy|multi[ _-]?energy|soft[ _-]?tissue"
    r"|\bbone\b|\bcad\b|heat[ _-]?map|segment|(?<!unsharp )\bmask|render|reformat|\bmip\b|\bmpr\b|intensity projection"
    r"|pixel by pixel)"
)
# CID 7203 Image Derivation codes that make another object than the radiograph (subtraction, masks,
# pixel-by-pixel arithmetic, multi-energy weighting, segmentation, renderings, reformats, MIP/MinIP).
_NOT_THE_RADIOGRAPH_CODES = {
    "113042", "113046", "113047", "113048", "113049", "113051", "113053", "113062", "113072", "113073",
    "113074", "113075", "113076", "113077", "113078", "113079", "113097",
}
_OTHER_VIEW_WORDS = re.compile(r"(?i)\b(decub\w*|oblique|lordotic|lao|rao|lpo|rpo|lld|rld)\b")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return " ".join(str(v) for v in value)
    return str(value)


def _from_codes(sequence: Iterable[Dataset] | None) -> str | None:
    for item in sequence or []:
        code = str(item.get("CodeValue", "") or item.get("LongCodeValue", "") or "")
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "decubitus" in meaning or "oblique" in meaning:
            return None
        if "postero-anterior" in meaning or "posteroanterior" in meaning:
            return "PA"
        if "antero-posterior" in meaning or "anteroposterior" in meaning:
            return "AP"
        if "lateral" in meaning:
            return LATERAL
        if "frontal" in meaning:
            return "FRONTAL"
    return None


def _from_orientation(ds: Dataset) -> str | None:
    value = ds.get("PatientOrientation")
    if not value or len(value) != 2:
        return None
    letters = set("".join(str(v) for v in value).upper())
    if letters & {"H", "F"} and letters & {"L", "R"} and not letters & {"A", "P"}:
        return "FRONTAL"
    if letters & {"H", "F"} and letters & {"A", "P"} and not letters & {"L", "R"}:
        return LATERAL
    return None


def classify_view(ds: Dataset) -> str | None:
    """``"PA"``, ``"AP"``, ``"FRONTAL"``, ``"LATERAL"`` or ``None`` (other or unknown view)."""
    position = " ".join(_text(ds, "ViewPosition").upper().split())
    if position:
        if position in _VIEW_POSITION:
            return _VIEW_POSITION[position]
        if _OTHER_VIEW_WORDS.search(position):
            return None
    view = _from_codes(ds.get("ViewCodeSequence"))
    if view:
        return view
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])][2:]
    for value in image_type:
        if value in _VIEW_POSITION:
            return _VIEW_POSITION[value]
    view = _from_orientation(ds)
    if view:
        return view
    for keyword in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"):
        text = _text(ds, keyword)
        if not text or _OTHER_VIEW_WORDS.search(text):
            continue
        for pattern, name in _TEXT_VIEW:
            if pattern.search(text):
                return name
    return None


def is_chest(ds: Dataset) -> bool:
    """Body Part Examined is a chest term, or a description / anatomic region says chest."""
    body_part = _text(ds, "BodyPartExamined").upper().replace(" ", "_")
    if body_part in _CHEST_BODY_PARTS:
        return True
    for item in ds.get("AnatomicRegionSequence") or []:
        if str(item.get("CodeValue", "")) in {codes.SCT.Chest.value, "T-D3000", "51185008", "302551006"}:
            return True
        if _CHEST_WORDS.search(str(item.get("CodeMeaning", ""))):
            return True
    for keyword in (
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "RequestedProcedureDescription",
        "PerformedProcedureStepDescription",
    ):
        if _CHEST_WORDS.search(_text(ds, keyword)):
            return True
    return False


def _image_type(ds: Dataset) -> list[str]:
    return [str(v).strip().upper() for v in (ds.get("ImageType") or [])]


def is_derived(ds: Dataset) -> bool:
    """Image Type value 1 is DERIVED."""
    return _image_type(ds)[:1] == ["DERIVED"]


def _derived_object(ds: Dataset) -> str | None:
    """What makes a DERIVED image another object than the radiograph, or ``None``."""
    hints = [" ".join(_image_type(ds)[2:]).replace("_", " "), _text(ds, "DerivationDescription")]
    for item in ds.get("DerivationCodeSequence") or []:
        if str(item.get("CodeValue", "")) in _NOT_THE_RADIOGRAPH_CODES:
            return f"derivation {item.get('CodeMeaning', '') or item.get('CodeValue')}"
        hints.append(str(item.get("CodeMeaning", "")))
    for hint in hints:
        if _NOT_THE_RADIOGRAPH.search(hint):
            return hint.strip()
    return None


def skip_reason(ds: Dataset) -> str | None:
    """Why ``ds`` cannot be a model input, or ``None`` when it is a chest radiograph (ORIGINAL, or
    DERIVED\\PRIMARY such as a lossy-compressed or vendor-processed one)."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    if sop_class.startswith(_SR_PREFIX) or modality in {"SR", "KO"}:
        return "structured report or key object selection, not an image"
    if sop_class == _SECONDARY_CAPTURE_PREFIX or sop_class.startswith(_SECONDARY_CAPTURE_PREFIX + "."):
        return "secondary capture"
    if modality in _NON_IMAGE_MODALITIES:
        return f"non-image object (modality {modality})"
    if "PixelData" not in ds:
        return "no pixel data"
    image_type = _image_type(ds)
    if image_type[1:2] == ["SECONDARY"]:
        return "secondary image (ImageType " + "\\".join(image_type) + ")"
    if image_type[:1] == ["DERIVED"] and (what := _derived_object(ds)):
        return f"derived image that is not the radiograph ({what}; ImageType " + "\\".join(image_type) + ")"
    if modality and modality not in _RADIOGRAPHY_MODALITIES:
        return f"modality {modality} is not a radiograph"
    if not is_chest(ds):
        body_part = _text(ds, "BodyPartExamined") or "not given"
        return f"not a chest image (BodyPartExamined {body_part}, no chest description)"
    if classify_view(ds) is None:
        position = _text(ds, "ViewPosition") or "not given"
        return f"view is neither frontal nor lateral, or unknown (ViewPosition {position})"
    return None
