"""Read the text sections of a TID 2000 report SR: ours, the testbed's, or anyone's."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from unirg.sr_writer import codes
from unirg.sr_writer.build import DRAFT_CONTRIBUTION, RESEARCH_LABEL
from unirg.sr_writer.inputs import SRInputError

_SECTIONS = ("findings", "impression", "comparison", "indication")
_OBSERVER_TYPES = {codes.PERSON.value: "PERSON", codes.DEVICE.value: "DEVICE"}
_OBSERVER_NAMES = {
    (codes.PERSON_OBSERVER_NAME.value, "DCM"), (codes.DEVICE_OBSERVER_NAME.value, "DCM")
}
_LANGUAGE = ("121049", "DCM")  # TID 1204 language, not report text


@dataclass(frozen=True)
class ReportText:
    """Text of a report SR.

    Attributes
    ----------
    findings, impression : str
        Section texts ("" when absent); several items of one section are joined by newlines.
    comparison, indication : str or None
        Section texts, ``None`` when absent.
    verification_flag, completion_flag : str
        VerificationFlag (``"VERIFIED"`` / ``"UNVERIFIED"``) and CompletionFlag.
    preliminary_flag : str or None
        PreliminaryFlag (``"PRELIMINARY"`` / ``"FINAL"``), ``None`` when absent.
    observer_type : str or None
        ``"DEVICE"`` or ``"PERSON"`` from the observation context, ``None`` when absent.
    observer_name : str or None
        Device Observer Name or Person Observer Name.
    disclaimer : str or None
        Our research disclaimer, when present.
    other : tuple of (str, str)
        (concept name, text) of every other TEXT or CODE item, in document order.
    """

    findings: str
    impression: str
    comparison: str | None = None
    indication: str | None = None
    verification_flag: str = "UNVERIFIED"
    completion_flag: str = "PARTIAL"
    preliminary_flag: str | None = None
    observer_type: str | None = None
    observer_name: str | None = None
    disclaimer: str | None = None
    other: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def is_draft(self) -> bool:
        """True unless the report is verified and not marked preliminary."""
        return self.verification_flag != "VERIFIED" or self.preliminary_flag == "PRELIMINARY"


def _concept(item: Dataset) -> tuple[str, str, str]:
    """(code value, scheme, meaning) of an item's concept name; empty strings if none."""
    seq = item.get("ConceptNameCodeSequence") or [Dataset()]
    c = seq[0]
    value = c.get("CodeValue") or c.get("LongCodeValue") or c.get("URNCodeValue") or ""
    return str(value), str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeMeaning", ""))


def _section(item: Dataset) -> str | None:
    value, scheme, meaning = _concept(item)
    return codes.SECTION_CODES.get((value, scheme)) or codes.SECTION_MEANINGS.get(
        meaning.strip().lower().rstrip(":")
    )


def _read_observer(item: Dataset, key: tuple[str, str], observer: dict[str, str]) -> None:
    """Note the first observer type and name of a TID 1002 observation context."""
    if key == (codes.OBSERVER_TYPE.value, "DCM") and item.get("ConceptCodeSequence"):
        code = item.ConceptCodeSequence[0]
        kind = _OBSERVER_TYPES.get(str(code.get("CodeValue", "")))
        observer.setdefault("type", kind or str(code.get("CodeMeaning", "")).upper())
    elif key in _OBSERVER_NAMES:
        observer.setdefault("name", str(item.get("PersonName") or item.get("TextValue") or ""))


def read_report(ds: Dataset) -> ReportText:
    """Read the report text of an SR document.

    Reads TEXT items under CID 7001 headings (DCM or LOINC codes, or a known concept
    meaning), in nested containers, or directly under the root (section taken from the
    TEXT's own concept). Unknown items end up in ``other``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        An SR document (e.g. from ``pydicom.dcmread``).

    Returns
    -------
    ReportText

    Raises
    ------
    SRInputError
        When ``ds`` is not an SR document.
    """
    if not (isinstance(ds, Dataset) and ds.get("ValueType") == "CONTAINER" and "ContentSequence" in ds):
        raise SRInputError("ds is not an SR document (no root CONTAINER with a ContentSequence)")
    texts: dict[str, list[str]] = {k: [] for k in _SECTIONS}
    other: list[tuple[str, str]] = []
    observer: dict[str, str] = {}
    disclaimer: list[str] = []

    def walk(items: list[Dataset], section: str | None) -> None:
        for item in items:
            value_type = item.get("ValueType")
            value, scheme, meaning = _concept(item)
            if item.get("RelationshipType") == "HAS OBS CONTEXT":
                _read_observer(item, (value, scheme), observer)
                continue
            if (value, scheme) == _LANGUAGE:
                continue
            inner = section  # section of the item's children
            if value_type == "CONTAINER":
                inner = _section(item) or section
            elif value_type == "TEXT":
                text, target = str(item.get("TextValue") or ""), section or _section(item)
                if text.startswith(RESEARCH_LABEL):
                    disclaimer.append(text)
                elif target:
                    texts[target].append(text)
                else:
                    other.append((meaning, text))
            elif value_type == "CODE" and item.get("ConceptCodeSequence"):
                other.append((meaning, str(item.ConceptCodeSequence[0].get("CodeMeaning", ""))))
            walk(list(item.get("ContentSequence", [])), inner)

    walk(list(ds.ContentSequence), _section(ds))

    def joined(key: str) -> str | None:
        return "\n".join(texts[key]) if texts[key] else None

    return ReportText(
        findings=joined("findings") or "",
        impression=joined("impression") or "",
        comparison=joined("comparison"),
        indication=joined("indication"),
        verification_flag=str(ds.get("VerificationFlag", "UNVERIFIED")),
        completion_flag=str(ds.get("CompletionFlag", "PARTIAL")),
        preliminary_flag=ds.get("PreliminaryFlag") or None,
        observer_type=observer.get("type") or None,
        observer_name=observer.get("name") or None,
        disclaimer="\n".join(disclaimer) or None,
        other=tuple(other),
    )


def draft_model_version(sr: Dataset) -> str | None:
    """``"<model name> <version>"`` of the model that drafted one of our SRs (its contributing equipment),
    else ``None``.

    >>> from pydicom.sequence import Sequence as Seq
    >>> item = Dataset(); item.ContributionDescription = DRAFT_CONTRIBUTION + " (x)"
    >>> item.ManufacturerModelName = "unirg-demo"; item.SoftwareVersions = "3"
    >>> ds = Dataset(); ds.ContributingEquipmentSequence = Seq([item]); draft_model_version(ds)
    'unirg-demo 3'
    """
    for item in sr.get("ContributingEquipmentSequence") or ():
        if str(item.get("ContributionDescription", "") or "").startswith(DRAFT_CONTRIBUTION):
            name = str(item.get("ManufacturerModelName", "") or "").strip()
            value = item.get("SoftwareVersions", "")
            version = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value or "")
            return f"{name} {version}".strip() or None
    return None
