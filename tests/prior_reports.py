"""Report SRs a prior study may hold, built with highdicom: human reports in any state, unirg's own
draft, and another vendor's AI report (a device observer, or AI contributing equipment)."""

from __future__ import annotations

import datetime as dt

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr, build_reference_sr, codes


def human_report(images, findings: str, when: dt.datetime, *, verified: bool = True, complete: bool = True,
                 tag: str = "") -> Dataset:
    """A radiologist's report (person observer); unverified/partial = a preliminary report."""
    sr = build_reference_sr(ReportSections(findings=findings, impression="See findings."), current=images,
                            observer_name="Radiologist^Human", content_datetime=when)
    sr.SeriesDescription = "Radiology report"
    if not verified:
        sr.VerificationFlag = "UNVERIFIED"
        sr.PreliminaryFlag = "PRELIMINARY"
        del sr.VerifyingObserverSequence
    if not complete:
        sr.CompletionFlag = "PARTIAL"
    if tag or not (verified and complete):
        sr.SOPInstanceUID = generate_uid(entropy_srcs=[str(sr.SOPInstanceUID), tag, str(verified), str(complete)])
        sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    return sr


def our_draft(images, findings: str, when: dt.datetime) -> Dataset:
    model = ModelInfo(name="unirg-tests", version="0", weights_sha256="0" * 64)
    return build_draft_sr(ReportSections(findings=findings, impression="draft"), model, images,
                          content_datetime=when)


def other_ai_report(images, findings: str, when: dt.datetime, *, how: str = "device") -> Dataset:
    """Another vendor's AI report, without unirg's research label. ``how``: ``"device"`` (a device
    observer in the observation context) or ``"equipment"`` (a person observer, but contributing
    equipment naming an AI model)."""
    root = hd.sr.ContainerContentItem(name=codes.DIAGNOSTIC_IMAGING_REPORT, is_content_continuous=False,
                                      template_id="2000")
    if how == "device":
        observer = hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(entropy_srcs=["other vendor ai"]), name="ChestReader"))
    else:
        observer = hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.PERSON),
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Radiologist^Signing"))
    heading = hd.sr.ContainerContentItem(name=codes.FINDINGS[0], is_content_continuous=False,
                                         relationship_type="CONTAINS")
    heading.ContentSequence = [hd.sr.TextContentItem(name=codes.FINDINGS[1], value=findings,
                                                     relationship_type="CONTAINS")]
    root.ContentSequence = [
        *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept.from_code(codes.ENGLISH)),
        *observer, heading,
    ]
    equipment = []
    if how == "equipment":
        equipment.append(hd.ContributingEquipment(
            manufacturer="OtherVendor", purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name="ChestReader 2", software_versions="2.1",
            contribution_description="Deep learning algorithm that pre-filled the findings"))
    return hd.sr.EnhancedSR(
        evidence=images, content=root, series_instance_uid=generate_uid(), series_number=77,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="OtherVendor",
        series_description="Chest report", contributing_equipment=equipment,
        content_date=DA(when.date()), content_time=TM(when.time()))


def prior_in_prompt(report_sr) -> str:
    """What the demo model's prompt says of a prior report SR: the labeler's reading of its text (the
    demo model's manifest names the ``findings`` prior-report style)."""
    from unirg.model.prompt import PRIOR_FINDINGS_LABEL, prior_report_findings
    from unirg.plugin.pipeline import prior_report_text

    text, _source = prior_report_text(None, [report_sr])
    return f"{PRIOR_FINDINGS_LABEL} {prior_report_findings(text)}"
