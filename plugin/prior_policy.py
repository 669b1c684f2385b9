"""The one prior policy: which earlier studies are priors, and which SR is a prior's report.

Pure functions (no network, no disk), used by every prior source (DIMSE Q/R in
:mod:`unirg.plugin.priors.dimse`, Orthanc in :mod:`unirg.plugin.priors.orthanc`) and by the pipeline.

* :func:`is_human_report` - only a human-authored report SR may be a prior's report. Rejected: unirg's
  own drafts, any SR with a DEVICE observer (TID 1002 observer type, AuthorObserverSequence,
  ParticipantSequence), any SR whose ContributingEquipmentSequence names an AI model (ours or
  another vendor's; not merely "Processing Equipment", which highdicom and reporting software also
  claim), and any SR whose series description, completion flag
  description or text carries AI-draft wording. When in doubt it is not human.
* :func:`choose_report` - among the human reports: VERIFIED before UNVERIFIED, COMPLETE before PARTIAL,
  then the newest (ContentDate/ContentTime). No human report: ``None`` (the prompt and the SR then
  say ``unirg.model.prompt.NO_PRIOR_REPORT``).
* :func:`rank_prior_studies` - the most recent ``max_priors`` earlier CR/DX studies within
  ``max_age`` of the current study (dcm4chee's ``priors=N&StudyAge=-5Y``).
* :func:`when` - the one sortable date+time key.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset

from unirg.sr_writer import RESEARCH_LABEL

__all__ = [
    "IMAGE_MODALITIES",
    "OWN_DRAFT_LABEL",
    "PriorCandidate",
    "age_cutoff",
    "choose_report",
    "is_human_report",
    "is_own_draft",
    "is_sr",
    "modalities",
    "not_human_reason",
    "parse_age",
    "rank_prior_studies",
    "study_date_range",
    "when",
]

IMAGE_MODALITIES = frozenset({"CR", "DX"})
#: Start of unirg's draft Series Description and Completion Flag Description.
OWN_DRAFT_LABEL = RESEARCH_LABEL

_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_OBSERVER_TYPE = ("121005", "DCM")
_DEVICE = ("121007", "DCM")
_DEVICE_OBSERVER_ITEMS = {("121012", "DCM"), ("121013", "DCM"), ("121014", "DCM"), ("121015", "DCM")}
# Contributing equipment that is an AI model (ours: "AI model that drafted the report text").
# Not any Processing Equipment: highdicom and reporting software name themselves so too.
_AI_EQUIPMENT = re.compile(
    r"\b(AI|A\.I\.|artificial intelligence|machine learning|deep learning|neural( network)?|algorithm|CAD"
    r"|computer[- ]aided|(language|vision|foundation|AI|ML|report(ing)?) model|model that|draft(ed|ing)?)\b",
    re.IGNORECASE,
)
# AI-draft wording in descriptions and report text (word-bounded, case-insensitive).
_AI_WORDING = re.compile(
    r"\bAI[- ]?(draft|generated|report|model|assist\w*)\b"
    r"|\b(drafted|generated) (automatically|by (an? )?(AI|model|algorithm))\b"
    r"|\bartificial intelligence\b|\bmachine learning\b|\bdeep learning\b|\blanguage model\b"
    r"|\bnot (been )?(reviewed|verified) by a (physician|radiologist)\b|\bresearch only\b",
    re.IGNORECASE,
)
_AGE = re.compile(r"-?(\d{1,4})([YMWD])")


def when(date: Any, time: Any = "") -> str:
    """Sortable key of a DICOM DA + TM: ``YYYYMMDD`` + ``HHMMSS`` + 6 fraction digits, padded with 0.

    >>> when("20240105", "1230")
    '20240105123000000000'
    >>> when("20240105", "123000.5") > when("20240105", "123000")
    True
    """
    day = "".join(ch for ch in str(date or "") if ch.isdigit())[:8]
    text = str(time or "")
    whole, _, frac = text.partition(".")
    hms = "".join(ch for ch in whole if ch.isdigit())[:6]
    frac = "".join(ch for ch in frac if ch.isdigit())[:6]
    return f"{day}{hms.ljust(6, '0')}{frac.ljust(6, '0')}"


# -- the report policy ---------------------------------------------------------------------------------
def is_sr(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")).startswith(_SR_PREFIX) or str(ds.get("Modality", "")).upper() == "SR"


def is_own_draft(ds: Dataset) -> bool:
    """Whether ``ds`` is one of unirg's draft SRs (the loop guard: never processed again).

    >>> ds = Dataset(); ds.Modality = "SR"; ds.SeriesDescription = OWN_DRAFT_LABEL + " model"
    >>> is_own_draft(ds)
    True
    >>> ds.SeriesDescription = "Radiology report"; is_own_draft(ds)
    False
    """
    if str(ds.get("Modality", "") or "").upper() != "SR":
        return False
    return any(str(ds.get(k, "") or "").startswith(OWN_DRAFT_LABEL)
               for k in ("SeriesDescription", "CompletionFlagDescription"))


def _code(item: Dataset, keyword: str) -> tuple[str, str] | None:
    seq = item.get(keyword)
    if not seq:
        return None
    first = seq[0]
    return str(first.get("CodeValue", "") or "").strip(), str(first.get("CodingSchemeDesignator", "") or "").strip()


def _content_items(items: Iterable[Dataset]) -> Iterator[Dataset]:
    for item in items or ():
        yield item
        yield from _content_items(item.get("ContentSequence") or ())


def not_human_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is not a human-authored report SR, or ``None`` when it is one."""
    if not is_sr(ds):
        return "not an SR"
    if is_own_draft(ds):
        return "unirg's own draft"
    for keyword in ("AuthorObserverSequence", "ParticipantSequence"):
        for item in ds.get(keyword) or ():
            if str(item.get("ObserverType", "") or "").upper() == "DEV":
                return f"{keyword} names a device"
    for item in ds.get("ContributingEquipmentSequence") or ():
        for keyword in ("ContributionDescription", "ManufacturerModelName", "Manufacturer"):
            value = str(item.get(keyword, "") or "")
            if _AI_EQUIPMENT.search(value) or _AI_WORDING.search(value):
                return f"contributing equipment {keyword} {value[:64]!r} names an AI model"
    for keyword in ("SeriesDescription", "CompletionFlagDescription", "ContentLabel", "ContentDescription"):
        value = str(ds.get(keyword, "") or "")
        if value.upper().startswith("AI ") or _AI_WORDING.search(value):
            return f"{keyword} {value[:64]!r} labels AI output"
    for item in _content_items(ds.get("ContentSequence") or ()):
        name = _code(item, "ConceptNameCodeSequence")
        if name == _OBSERVER_TYPE and _code(item, "ConceptCodeSequence") == _DEVICE:
            return "device observer in the observation context"
        if name in _DEVICE_OBSERVER_ITEMS:
            return "device observer in the observation context"
        text = item.get("TextValue")
        if text and (str(text).startswith(OWN_DRAFT_LABEL) or _AI_WORDING.search(str(text))):
            return "report text carries AI-draft wording"
    return None


def is_human_report(ds: Dataset) -> bool:
    """Whether ``ds`` is a human-authored report SR (see the module docstring; doubt means no)."""
    return not_human_reason(ds) is None


def _report_rank(ds: Dataset) -> tuple[bool, bool, str]:
    verified = str(ds.get("VerificationFlag", "") or "").upper() == "VERIFIED"
    complete = str(ds.get("CompletionFlag", "") or "").upper() == "COMPLETE"
    return verified, complete, when(ds.get("ContentDate", ""), ds.get("ContentTime", ""))


def choose_report(srs: Iterable[Dataset]) -> Dataset | None:
    """The prior's report: human only; VERIFIED before UNVERIFIED, COMPLETE before PARTIAL, then newest."""
    human = [ds for ds in srs if is_human_report(ds)]
    return max(human, key=_report_rank) if human else None


# -- which earlier studies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorCandidate:
    """An earlier study as a query answered it; ``modalities`` empty = unknown; ``data`` is the caller's."""

    study_uid: str
    study_date: str = ""
    study_time: str = ""
    modalities: frozenset[str] = frozenset()
    data: Any = field(default=None, compare=False, hash=False)

    @property
    def when(self) -> str:
        return when(self.study_date, self.study_time)


def parse_age(text: str | None) -> tuple[int, str] | None:
    """``"5Y"``, ``"18M"``, ``"6W"``, ``"90D"`` (dcm4chee's ``StudyAge``; a leading ``-`` is allowed) ->
    ``(number, unit)``; empty -> ``None`` (no limit). Raises ``ValueError`` naming the format."""
    value = str(text or "").strip().upper()
    if not value:
        return None
    m = _AGE.fullmatch(value)
    if not m or int(m.group(1)) == 0:
        raise ValueError(
            f"{text!r} is not an age limit; write a positive number and a unit Y, M, W or D, "
            "e.g. '5Y', '18M', '90D' (empty: no limit)")
    return int(m.group(1)), m.group(2)


def age_cutoff(date: str, max_age: str | tuple[int, str] | None) -> str | None:
    """The earliest StudyDate (``YYYYMMDD``) within ``max_age`` before ``date``; ``None`` when unlimited.

    >>> age_cutoff("20240229", "1Y"), age_cutoff("20240331", "1M"), age_cutoff("20240105", "5D")
    ('20230228', '20240229', '20231231')
    """
    age = parse_age(max_age) if isinstance(max_age, (str, type(None))) else max_age
    if age is None:
        return None
    n, unit = age
    day = dt.datetime.strptime(date[:8], "%Y%m%d").date()
    if unit in "YM":
        months = day.year * 12 + day.month - 1 - (n * 12 if unit == "Y" else n)
        year, month = divmod(months, 12)
        month += 1
        day = dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
    else:
        day -= dt.timedelta(days=n * (7 if unit == "W" else 1))
    return day.strftime("%Y%m%d")


def _reference_date(current_date: str) -> str:
    digits = "".join(ch for ch in str(current_date or "") if ch.isdigit())
    return digits[:8] if len(digits) >= 8 else dt.date.today().strftime("%Y%m%d")


def study_date_range(current_date: str, max_age: str | None) -> str:
    """The C-FIND StudyDate matching value for the priors of a study of ``current_date``:
    ``"cutoff-current"``, ``"-current"`` or ``""``. The age is counted from the current study's date
    (today when it has none)."""
    cutoff = age_cutoff(_reference_date(current_date), max_age)
    end = str(current_date or "")[:8]
    if cutoff:
        return f"{cutoff}-{end}"
    return f"-{end}" if end else ""


def rank_prior_studies(candidates: Iterable[PriorCandidate], current: PriorCandidate, max_priors: int,
                       max_age: str | None = None) -> list[PriorCandidate]:
    """The priors to use, most recent first: at most ``max_priors`` studies other than ``current``,
    strictly earlier than it (when it is dated), with CR or DX among their modalities (when known),
    dated within ``max_age`` of it (an undated study is dropped when an age limit is set)."""
    cutoff = age_cutoff(_reference_date(current.study_date), max_age)
    now = current.when if current.study_date else None
    seen: set[str] = set()
    kept: list[PriorCandidate] = []
    for cand in candidates:
        if not cand.study_uid or cand.study_uid == current.study_uid or cand.study_uid in seen:
            continue
        if cand.modalities and not cand.modalities & IMAGE_MODALITIES:
            continue
        if now is not None and cand.when >= now:
            continue
        if cutoff and (not cand.study_date or cand.study_date[:8] < cutoff):
            continue
        seen.add(cand.study_uid)
        kept.append(cand)
    kept.sort(key=lambda c: c.when, reverse=True)
    return kept[: max(max_priors, 0)]


def modalities(value: Any) -> frozenset[str]:
    """ModalitiesInStudy (``"CR\\\\DX"``, a list or empty) as an upper-case set."""
    if value is None or value == "":
        return frozenset()
    items: Sequence[Any] = value.split("\\") if isinstance(value, str) else list(value)
    return frozenset(str(v).strip().upper() for v in items if str(v).strip())
