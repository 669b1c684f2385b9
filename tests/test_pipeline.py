"""unirg.plugin.pipeline: select -> prior -> draft -> SR, on synthetic testbed studies.

The model is a tiny Qwen3-VL trained for a few steps with ``unirg-trainer sft`` (real
weights, real generation; what it writes is whatever it learned).
"""

from __future__ import annotations

import copy
import datetime as dt

import pydicom
import pytest
from pydicom.dataset import Dataset

from unirg.model import GenerationConfig, load_model
from unirg.model.study import Draft, ModelInfo
from unirg.plugin.pipeline import (
    IMPRESSION_NOT_GENERATED,
    DraftRejected,
    Prior,
    StudySkipped,
    draft_studies,
    draft_study,
    prepare_study,
    prior_report_text,
    sr_from_draft,
)
from unirg.sr_writer import ReportSections, build_draft_sr, read_report
from conftest import train_tiny_sft


GEN = GenerationConfig(max_new_tokens=24, batch_size=4)
WHEN = dt.datetime(2024, 1, 2, 3, 4, 5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(testbed, tmp_path_factory):
    root, _ = testbed
    return load_model(train_tiny_sft(root, tmp_path_factory.mktemp("model") / "tiny", version="test-1"))


def sr_model_versions(sr: Dataset) -> list[str]:
    """Versions of the AI model(s) an SR names as contributing equipment."""
    return [str(item.SoftwareVersions) for item in sr.ContributingEquipmentSequence
            if str(item.ContributionDescription).startswith("AI model")]


def _objects(root, record) -> list[Dataset]:
    """Every object of a testbed study: its images and its signed report SR."""
    paths = [image["path"] for image in record["images"]] + [record["report_sr"]]
    return [pydicom.dcmread(root / path) for path in paths]


def _longitudinal(records):
    """(current, prior, older prior) records of a patient with three frontal studies, or two."""
    by_patient: dict[str, list[dict]] = {}
    for record in records:
        if any(image["view"] in ("PA", "AP") for image in record["images"]):
            by_patient.setdefault(record["patient_id"], []).append(record)
    best = max(by_patient.values(), key=len)
    best.sort(key=lambda r: (r["study_date"], r["study_time"]))
    assert len(best) >= 2, "the tiny testbed should hold a patient with a prior"
    return best[::-1]


def test_draft_with_prior_references_it_and_reads_its_report(testbed, model):
    root, records = testbed
    current, prior, *older = _longitudinal(records)
    priors = [_objects(root, r) for r in [*older, prior]]  # any order: the newest is chosen
    prepared = prepare_study(_objects(root, current), priors)
    assert prepared.prior_study_uid == prior["study_uid"]
    expected = read_report(pydicom.dcmread(root / prior["report_sr"]))
    assert prepared.study_input.prior_report == f"Findings: {' '.join(expected.findings.split())}\n" \
        f"Impression: {' '.join(expected.impression.split())}"
    assert prepared.prior_report_source == "sr"

    draft, sr = draft_study(model, _objects(root, current), priors, GEN, content_datetime=WHEN)
    assert "Prior report:" in draft.prompt_text
    assert sr.StudyInstanceUID == current["study_uid"]
    assert draft.model_info.version == "test-1" == model.info.version
    assert sr_model_versions(sr) == ["test-1"]
    referenced = {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence}
    assert referenced == {prior["study_uid"]}
    evidence = {s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for item in sr.CurrentRequestedProcedureEvidenceSequence for s in item.ReferencedSeriesSequence}
    assert evidence <= {image["sop_instance_uid"] for image in current["images"]}
    text = read_report(sr)
    assert text.comparison and text.is_draft and text.observer_type == "DEVICE"


def test_without_prior(testbed, model):
    root, records = testbed
    record = next(r for r in records if any(i["view"] in ("PA", "AP") for i in r["images"]))
    draft, sr = draft_study(model, _objects(root, record), (), GEN, content_datetime=WHEN)
    assert "Prior report:" not in draft.prompt_text
    assert "PertinentOtherEvidenceSequence" not in sr
    assert read_report(sr).findings or read_report(sr).impression


def test_skip_reasons(testbed, model):
    root, records = testbed
    record = next(r for r in records if len(r["images"]) == 2)
    objects = _objects(root, record)
    images = [ds for ds in objects if ds.Modality != "SR"]
    sr_only = [ds for ds in objects if ds.Modality == "SR"]
    with pytest.raises(StudySkipped, match="structured report") as info:
        draft_study(model, sr_only)
    assert info.value.study_uid == record["study_uid"]
    lateral = [ds for ds in images if ds.ViewPosition in ("LL", "RL", "LATERAL", "LAT")]
    with pytest.raises(StudySkipped, match="only a lateral"):
        draft_study(model, lateral)
    knee = [copy.deepcopy(ds) for ds in images]
    for ds in knee:
        ds.BodyPartExamined = "KNEE"
        ds.StudyDescription = ds.SeriesDescription = ds.ProtocolName = "Knee"
        for keyword in ("RequestedProcedureDescription", "PerformedProcedureStepDescription",
                        "AnatomicRegionSequence"):
            if keyword in ds:
                delattr(ds, keyword)
    with pytest.raises(StudySkipped, match="not a chest image"):
        draft_study(model, knee)
    with pytest.raises(StudySkipped, match="empty"):
        draft_study(model, [])


def test_batch_keeps_order_and_reports_skips(testbed, model):
    root, records = testbed
    usable = [r for r in records if any(i["view"] in ("PA", "AP") for i in r["images"])][:3]
    sr_only = [pydicom.dcmread(root / usable[0]["report_sr"])]
    studies = [(_objects(root, usable[0]), []), (sr_only, []), (_objects(root, usable[1]), []),
               (_objects(root, usable[2]), [])]
    items = draft_studies(model, studies, GEN, content_datetime=WHEN)
    assert [item.error is None for item in items] == [True, False, True, True]
    assert isinstance(items[1].error, StudySkipped)
    assert [items[i].sr.StudyInstanceUID for i in (0, 2, 3)] == [usable[0]["study_uid"], usable[1]["study_uid"],
                                                                   usable[2]["study_uid"]]
    one = [draft_study(model, _objects(root, r), (), GEN, content_datetime=WHEN)[0] for r in usable]
    assert [items[i].draft.raw_text for i in (0, 2, 3)] == [d.raw_text for d in one]  # batching changes nothing


def test_flag_policy(testbed):
    root, records = testbed
    record = next(r for r in records if any(i["view"] in ("PA", "AP") for i in r["images"]))
    prepared = prepare_study(_objects(root, record))
    info = ModelInfo("tiny", "v9")
    empty = Draft.from_text("<|im_end|>  ", prompt_text="", model_info=info)
    with pytest.raises(DraftRejected, match="no usable report") as rejected:
        sr_from_draft(empty, prepared)
    assert rejected.value.draft is empty
    no_impression = Draft.from_text("Findings: Small left pleural effusion.", prompt_text="", model_info=info)
    assert "missing_impression" in no_impression.flags
    text = read_report(sr_from_draft(no_impression, prepared, content_datetime=WHEN))
    assert text.findings == "Small left pleural effusion." and text.impression == IMPRESSION_NOT_GENERATED
    control = Draft.from_text("Findings: Clear\x04 lungs.\nImpression: Normal\x1b.", prompt_text="", model_info=info)
    text = read_report(sr_from_draft(control, prepared, content_datetime=WHEN))
    assert (text.findings, text.impression) == ("Clear lungs.", "Normal.")


def test_prior_report_choice(testbed):
    root, records = testbed
    current, prior, *_ = _longitudinal(records)
    human = pydicom.dcmread(root / prior["report_sr"])
    prior_images = [pydicom.dcmread(root / i["path"]) for i in prior["images"]]
    ai = build_draft_sr(ReportSections("AI text.", "AI impression."), ModelInfo("m", "1"), prior_images,
                        content_datetime=dt.datetime(2030, 1, 1))
    text, source = prior_report_text(None, [*prior_images, ai, human])
    assert source == "sr" and "AI text" not in text and read_report(human).impression.split()[0] in text
    assert prior_report_text(None, [*prior_images, ai]) == (None, None)  # AI drafts are never prior reports
    assert prior_report_text("Findings: given.", []) == ("Findings: given.", "text")
    prepared = prepare_study(_objects(root, current), [Prior(images=prior_images, report="Impression: typed.")])
    assert prepared.study_input.prior_report == "Impression: typed."


def test_prior_must_be_earlier_and_of_the_same_patient(testbed):
    root, records = testbed
    newest, previous, *_ = _longitudinal(records)
    other = next(r for r in records if r["patient_id"] != newest["patient_id"]
                 and any(i["view"] in ("PA", "AP") for i in r["images"]))
    later = prepare_study(_objects(root, previous), [_objects(root, newest)])
    assert later.prior_study_uid is None and later.prior_evidence == []
    foreign = prepare_study(_objects(root, newest), [_objects(root, other), _objects(root, previous)])
    assert foreign.prior_study_uid == previous["study_uid"]
