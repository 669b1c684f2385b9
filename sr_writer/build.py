"""Build TID 2000 report SRs: research-labelled AI drafts and the testbed's signed reference reports."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from importlib import metadata
from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, PersonName

from unirg.sr_writer import codes
from unirg.sr_writer.inputs import (
    ModelInfo,
    ReportSections,
    SRInputError,
    check_evidence,
    check_text,
    image_headers,
)

#: Start of the Series Description, the Completion Flag Description and the disclaimer text.
RESEARCH_LABEL = "AI DRAFT - RESEARCH ONLY - NOT FOR CLINICAL USE"
MANUFACTURER = "unirg"
#: Start of the Contribution Description of the model that drafted (read back by ``read.draft_model_version``).
DRAFT_CONTRIBUTION = "AI model that drafted the report text"
DRAFT_SERIES_NUMBER = 990
REFERENCE_SERIES_NUMBER = 991
REFERENCE_SERIES_DESCRIPTION = "Reference report (unirg synthetic testbed)"
#: Specific Character Sets for non-ASCII SRs: Latin-1 when every string fits (DCMTK's VR checker
#: knows it), else UTF-8. ASCII-only SRs carry none.
LATIN1, UTF8 = "ISO_IR 100", "ISO_IR 192"


def _software_version() -> str:
    try:
        return metadata.version("unirg")
    except metadata.PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class _Person:
    """Person observer of a reference report."""

    name: str
    organization: str


def _character_set(ds: Dataset) -> str | None:
    """The Specific Character Set the string values of ``ds`` (nested items included) need."""
    texts = [
        str(v)
        for elem in ds.iterall()
        for v in (elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value])
        if isinstance(v, (str, PersonName))
    ]
    if all(t.isascii() for t in texts):
        return None
    try:
        for t in texts:
            t.encode("latin-1")
    except UnicodeEncodeError:
        return UTF8
    return LATIN1


def _text_heading(
    heading: tuple[Code, Code], text: str, *, continuous: bool = False
) -> hd.sr.ContainerContentItem:
    """A CID 7001 heading CONTAINER holding one TEXT item."""
    container = hd.sr.ContainerContentItem(
        name=heading[0], is_content_continuous=continuous, relationship_type="CONTAINS"
    )
    container.ContentSequence = [
        hd.sr.TextContentItem(name=heading[1], value=text, relationship_type="CONTAINS")
    ]
    return container


def _observer(author: ModelInfo | _Person) -> hd.sr.ObserverContext:
    if isinstance(author, ModelInfo):
        return hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=author.device_uid,
                name=author.name,
                manufacturer_name=MANUFACTURER,
                model_name=f"{author.name} {author.version}",
                serial_number=author.weights_sha256 or None,
            ),
        )
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(codes.PERSON),
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=author.name, organization_name=author.organization
        ),
    )


#: In the disclaimer of a draft by a model trained on synthetic data only (ModelInfo.synthetic_training_data).
SYNTHETIC_DATA_NOTE = "Model trained on synthetic data only."


def _disclaimer(model: ModelInfo) -> str:
    text = (
        f"{RESEARCH_LABEL}. This report text was drafted automatically by the AI model "
        f"{model.name} (version {model.version}) and has not been reviewed or verified by a "
        "physician. It must not be used for diagnosis or treatment."
    )
    if "not for clinical use" not in text.lower():  # the phrase the store door checks for
        text += " Not for clinical use."
    if model.synthetic_training_data:
        text += " " + SYNTHETIC_DATA_NOTE
    return text


def _comparison(report: ReportSections, priors: Sequence[Dataset]) -> str:
    """The given comparison text, else one sentence naming the prior studies used."""
    text = check_text("report.comparison", report.comparison)
    if text or not priors:
        return text
    studies: dict[str, Dataset] = {}
    for ds in priors:
        studies.setdefault(ds.StudyInstanceUID, ds)
    names = []
    for ds in sorted(studies.values(), key=lambda d: str(d.get("StudyDate") or "")):
        date = str(ds.get("StudyDate") or "")
        desc = str(ds.get("StudyDescription") or "prior study")
        when = f" of {date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else ""
        acc = f" (accession {ds.AccessionNumber})" if ds.get("AccessionNumber") else ""
        names.append(f"{desc}{when}{acc}")
    return "Compared with " + "; ".join(names) + "."


def _build_sr(
    report: ReportSections,
    current: Sequence[Dataset],
    priors: Sequence[Dataset],
    author: ModelInfo | _Person,
    content_datetime: datetime.datetime | None,
    institution_name: str | None = None,
) -> hd.sr.EnhancedSR:
    """Build the SR; a `ModelInfo` author always gives a research-labelled draft.

    Research labelling is decided by the author's type alone, so no device-observed
    report can be written without it.
    """
    if not isinstance(report, ReportSections):
        raise SRInputError(f"report must be a ReportSections, got {type(report).__name__}")
    findings = check_text("report.findings", report.findings)
    impression = check_text("report.impression", report.impression)
    if not findings and not impression:
        raise SRInputError("report.findings and report.impression are both empty; give at least one")
    indication = check_text("report.indication", report.indication)
    current_h = image_headers("current", current)
    for i, ds in enumerate(priors if not isinstance(priors, Dataset) else ()):
        if isinstance(ds, Dataset) and any(
            str(ds.get(k, "") or "").startswith(RESEARCH_LABEL)
            for k in ("SeriesDescription", "CompletionFlagDescription")
        ):
            raise SRInputError(
                f"priors[{i}] is not an image but an AI draft SR; only images and the human "
                "report SR used as the prior report can be prior evidence"
            )
    priors_h = image_headers("priors", priors, allow_sr=True)  # + the prior report SR used
    check_evidence(current_h, priors_h)
    comparison = _comparison(report, priors_h)
    if content_datetime is None:
        content_datetime = datetime.datetime.now()
    if not isinstance(content_datetime, datetime.datetime):
        raise SRInputError(
            f"content_datetime must be a datetime.datetime, got {type(content_datetime).__name__}"
        )
    draft = isinstance(author, ModelInfo)
    study_uid = current_h[0].StudyInstanceUID
    if draft:
        uid_key = ["unirg draft", study_uid, author.name, author.version]
    else:
        uid_key = ["unirg reference", study_uid]

    root = hd.sr.ContainerContentItem(
        name=codes.DIAGNOSTIC_IMAGING_REPORT, is_content_continuous=False, template_id="2000"
    )
    items: list[hd.sr.ContentItem] = [
        *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept.from_code(codes.ENGLISH)),
        *_observer(author),
    ]
    if draft:
        items.append(_text_heading(codes.DISCLAIMER, _disclaimer(author)))
    for heading, text in (
        (codes.INDICATION, indication),
        (codes.COMPARISON, comparison),
        (codes.FINDINGS, findings),
        (codes.IMPRESSION, impression),
    ):
        if text:
            # Findings CONTINUOUS (one TEXT: same meaning): OHIF 3.x renders a "Finding" (121071,
            # DCM) of a SEPARATE container in a <pre>, one unwrapped line; a CONTINUOUS one wraps.
            items.append(_text_heading(heading, text, continuous=heading == codes.FINDINGS))
    root.ContentSequence = items

    equipment = []
    if draft:
        equipment.append(
            hd.ContributingEquipment(
                manufacturer=MANUFACTURER,
                purpose_of_reference=codes.PROCESSING_EQUIPMENT,
                manufacturer_model_name=author.name,
                software_versions=author.version,
                device_serial_number=author.weights_sha256 or None,
                contribution_datetime=content_datetime,
                contribution_description=f"{DRAFT_CONTRIBUTION} ({RESEARCH_LABEL})",
            )
        )
    person = author if isinstance(author, _Person) else None
    try:
        sr = hd.sr.EnhancedSR(
            evidence=[*current_h, *priors_h],
            content=root,
            series_instance_uid=generate_uid(entropy_srcs=[*uid_key, "series"]),
            series_number=DRAFT_SERIES_NUMBER if draft else REFERENCE_SERIES_NUMBER,
            sop_instance_uid=generate_uid(entropy_srcs=[*uid_key, "instance"]),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="unirg sr_writer",
            software_versions=_software_version(),
            is_complete=not draft,
            is_final=not draft,
            is_verified=not draft,
            institution_name=institution_name,
            verifying_observer_name=person.name if person else None,
            verifying_organization=person.organization if person else None,
            contributing_equipment=equipment,
            series_description=(
                f"{RESEARCH_LABEL} {author.name}"[:64] if draft else REFERENCE_SERIES_DESCRIPTION
            ),
            content_date=DA(content_datetime.date()),
            content_time=TM(content_datetime.time()),
            specific_character_set=None,
        )
    except (ValueError, TypeError) as exc:
        raise SRInputError(f"highdicom rejected the report: {exc}") from exc
    if charset := _character_set(sr):
        sr.SpecificCharacterSet = charset
    sr.InstanceCreationDate = DA(content_datetime.date())
    sr.InstanceCreationTime = TM(content_datetime.time())
    if draft:
        sr.CompletionFlagDescription = RESEARCH_LABEL
    else:
        sr.VerifyingObserverSequence[0].VerificationDateTime = DT(content_datetime)
    return sr


def build_draft_sr(
    report: ReportSections,
    model: ModelInfo,
    current: Sequence[Dataset],
    priors: Sequence[Dataset] = (),
    *,
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.EnhancedSR:
    """Build the research-labelled AI draft report of a study as a TID 2000 Enhanced SR.

    Every draft is PRELIMINARY / PARTIAL / UNVERIFIED, its Series Description and
    Completion Flag Description start with `RESEARCH_LABEL`, its content tree holds a
    disclaimer, and ContributingEquipmentSequence names the model; none of this can be
    switched off.

    Parameters
    ----------
    report : ReportSections
        Report text.
    model : ModelInfo
        Model that drafted the text; the device observer of the report.
    current : Sequence[pydicom.dataset.Dataset]
        Images of the study being reported (one study); Current Requested Procedure Evidence.
    priors : Sequence[pydicom.dataset.Dataset]
        What of prior studies of the same patient went into the prompt: images, and the prior
        report SR whose text was used; Pertinent Other Evidence.
    content_datetime : datetime.datetime, optional
        Content date/time; now when omitted.

    Returns
    -------
    highdicom.sr.EnhancedSR
        The draft. Series and SOP Instance UIDs are derived from the study UID and the
        model's name and version, so a retry gives the same UIDs.

    Raises
    ------
    SRInputError
        On bad input; the message names the argument and the problem.
    """
    if not isinstance(model, ModelInfo):
        raise SRInputError(f"model must be a ModelInfo, got {type(model).__name__}")
    return _build_sr(report, current, priors, model, content_datetime)


def build_reference_sr(
    report: ReportSections,
    *,
    current: Sequence[Dataset],
    priors: Sequence[Dataset] = (),
    observer_name: str,
    content_datetime: datetime.datetime,
    institution_name: str | None = None,
) -> hd.sr.EnhancedSR:
    """Build the signed reference report of a synthetic testbed study.

    A person observer, COMPLETE / FINAL / VERIFIED, with the observer as verifier.
    It takes no model: it cannot produce a device-observed report.

    Parameters
    ----------
    report : ReportSections
        Report text.
    current, priors : Sequence[pydicom.dataset.Dataset]
        As in `build_draft_sr`.
    observer_name : str
        Reporting (and verifying) radiologist, DICOM person name (``"Family^Given"``).
    content_datetime : datetime.datetime
        Content and verification date/time.
    institution_name : str, optional
        Institution; also the verifying organization.

    Returns
    -------
    highdicom.sr.EnhancedSR
        The report; UIDs derived from the study UID.

    Raises
    ------
    SRInputError
        On bad input.
    """
    if not isinstance(observer_name, str) or not observer_name.strip():
        raise SRInputError("observer_name must be a non-empty person name such as 'Family^Given'")
    if not isinstance(content_datetime, datetime.datetime):
        raise SRInputError("content_datetime must be a datetime.datetime")
    organization = institution_name or "unirg synthetic testbed"
    return _build_sr(
        report, current, priors, _Person(observer_name, organization), content_datetime,
        institution_name,
    )
