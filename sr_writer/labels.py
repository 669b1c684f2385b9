"""The research labels every AI draft SR must carry, checked where SRs leave (the store door).

:func:`check_research_labels` raises :class:`ResearchLabelMissing` naming every missing label:

* PreliminaryFlag ``PRELIMINARY``, CompletionFlag ``PARTIAL``, VerificationFlag ``UNVERIFIED``;
* a Series Description starting with ``AI DRAFT`` and containing ``RESEARCH`` (case-insensitive);
* a disclaimer: a TEXT item under a Summary heading (121111, DCM) of the content tree saying
  "not for clinical use" (case-insensitive);
* a ContributingEquipmentSequence item naming the model (ManufacturerModelName), its version
  (SoftwareVersions) and the SHA-256 of its weights (DeviceSerialNumber, 64 hex digits).

Pure: a dataset in, an exception or nothing out.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

__all__ = ["ResearchLabelMissing", "check_research_labels", "missing_research_labels"]

_SUMMARY = ("121111", "DCM")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class ResearchLabelMissing(ValueError):
    """An SR lacks research labels; ``missing`` lists each one, the message names them all."""

    def __init__(self, sop_instance_uid: str, missing: list[str]) -> None:
        self.sop_instance_uid = sop_instance_uid
        self.missing = list(missing)
        super().__init__(
            f"SR {sop_instance_uid} refused: it lacks research label(s): " + "; ".join(self.missing)
            + ". Every AI draft must carry them (build it with unirg.sr_writer.build_draft_sr)."
        )


def _value(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value)
    return str(value)


def _code(item: Dataset) -> tuple[str, str]:
    for concept in item.get("ConceptNameCodeSequence") or []:
        return str(concept.get("CodeValue", "")), str(concept.get("CodingSchemeDesignator", ""))
    return "", ""


def _has_disclaimer(items) -> bool:
    """A TEXT item under a Summary CONTAINER saying "not for clinical use", anywhere in the tree."""
    for item in items or []:
        children = item.get("ContentSequence") or []
        if item.get("ValueType") == "CONTAINER" and _code(item) == _SUMMARY:
            for child in children:
                if child.get("ValueType") == "TEXT" and "not for clinical use" in _value(child, "TextValue").lower():
                    return True
        if _has_disclaimer(children):
            return True
    return False


def _has_model_equipment(ds: Dataset) -> bool:
    for item in ds.get("ContributingEquipmentSequence") or []:
        if (_value(item, "ManufacturerModelName").strip() and _value(item, "SoftwareVersions").strip()
                and _SHA256.fullmatch(_value(item, "DeviceSerialNumber").strip())):
            return True
    return False


def missing_research_labels(ds: Dataset) -> list[str]:
    """What research labels ``ds`` lacks, one readable line each (empty: fully labelled)."""
    if not isinstance(ds, Dataset):
        return [f"not a DICOM dataset (got {type(ds).__name__}), so no research label at all"]
    missing = []
    for keyword, wanted in (("PreliminaryFlag", "PRELIMINARY"), ("CompletionFlag", "PARTIAL"),
                            ("VerificationFlag", "UNVERIFIED")):
        value = _value(ds, keyword).strip().upper()
        if value != wanted:
            missing.append(f"{keyword} is {value or 'absent'}, not {wanted}")
    description = _value(ds, "SeriesDescription").strip()
    if not (description.upper().startswith("AI DRAFT") and "RESEARCH" in description.upper()):
        missing.append(f"SeriesDescription {description!r} does not start with 'AI DRAFT' and name RESEARCH")
    if not _has_disclaimer(ds.get("ContentSequence")):
        missing.append("no disclaimer TEXT item under a Summary (121111, DCM) heading saying 'not for clinical use'")
    if not _has_model_equipment(ds):
        missing.append("no ContributingEquipmentSequence item with the model name (ManufacturerModelName), "
                       "version (SoftwareVersions) and weights SHA-256 (DeviceSerialNumber)")
    return missing


def check_research_labels(ds: Dataset) -> None:
    """Raise :class:`ResearchLabelMissing` naming every research label ``ds`` lacks."""
    missing = missing_research_labels(ds)
    if missing:
        uid = ds.get("SOPInstanceUID", "") if isinstance(ds, Dataset) else ""
        raise ResearchLabelMissing(str(uid or "?"), missing)
