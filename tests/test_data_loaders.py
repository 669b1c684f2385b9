"""Loaders of unirg.trainer.data, each on a tiny fixture written here in that dataset's real layout."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from unirg.trainer.data import (
    ImageRef,
    Sample,
    detect_format,
    load_chexpert_plus,
    load_dataset,
    load_dicom_folder,
    load_jsonl_manifest,
    load_mimic_cxr,
    load_rexgradient,
    load_testbed,
    write_jsonl_manifest,
)


def _jpg(path: Path, shade: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (40, 32), shade).save(path, "JPEG")
    return path


def _csv(path: Path, header: list[str], rows: list[list], *, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = (lambda: gzip.open(path, "wt", newline="", encoding="utf-8")) if gz else (
        lambda: open(path, "w", newline="", encoding="utf-8"))
    with opener() as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _by_id(samples: list[Sample]) -> dict[str, Sample]:
    return {s.sample_id: s for s in samples}


# -- synthetic testbed -----------------------------------------------------------------------------------------


pytestmark = pytest.mark.testbed(patients=3, seed=3)  # the shared `testbed` fixture (conftest.py)


def test_testbed_loader_follows_the_manifest(testbed):
    root, records = testbed
    samples = load_testbed(root)
    assert [s.study_id for s in samples] == [r["study_uid"] for r in records]
    for s, r in zip(samples, records, strict=True):
        assert s.patient_id == r["patient_id"] and s.institution == r["institution"]
        assert s.findings == r["report"]["findings"] and s.impression == r["report"]["impression"]
        assert s.sex == r["sex"] and s.age == r["age"] and s.study_date == r["study_date"]
        assert [i.view for i in s.images] == [i["view"] for i in r["images"]]
        assert all(Path(i.path).is_file() and i.is_dicom for i in s.images)
        assert s.labels == r["labels"]
        assert (s.prior.study_id if s.prior else None) == r["prior_study_uid"]
    with_prior = next(s for s in samples if s.prior is not None)
    before = _by_id(samples)[with_prior.prior.study_id]
    assert with_prior.prior.image == before.frontal and "Findings:" in with_prior.prior.report
    image = with_prior.frontal.load(size=64)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert detect_format(root) == "testbed" and len(load_dataset(root)) == len(samples)


def test_dicom_folder_matches_the_testbed_and_ignores_ai_drafts(testbed, tmp_path):
    from pydicom import dcmread

    from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr

    root, _ = testbed
    export = tmp_path / "pacs-export"
    shutil.copytree(root, export, ignore=shutil.ignore_patterns("manifest.jsonl"))
    reference = load_testbed(root)
    first = reference[0]
    current = [dcmread(i.path) for i in first.images]
    draft = build_draft_sr(ReportSections("AI draft findings.", "AI draft impression."),
                           ModelInfo("tiny", "0.1", "0" * 64), current)
    draft.save_as(export / "ai_draft.dcm", enforce_file_format=True)
    (export / "notes.txt").write_text("not DICOM")

    samples = _by_id(load_dicom_folder(export))
    assert set(samples) == {s.study_id for s in reference}
    for ref in reference:
        got = samples[ref.study_id]
        assert (got.findings, got.impression) == (ref.findings, ref.impression)
        assert (got.indication, got.comparison) == (ref.indication, ref.comparison)
        assert (got.sex, got.age, got.study_date, got.patient_id) == (ref.sex, ref.age, ref.study_date, ref.patient_id)
        assert [i.view for i in got.images] == [i.view for i in ref.images]
        assert (got.prior.study_id if got.prior else None) == (ref.prior.study_id if ref.prior else None)
        assert got.institution  # InstitutionName
    with_draft = _by_id(load_dicom_folder(export, include_drafts=True))
    assert with_draft[first.study_id].findings == first.findings  # verified beats draft
    assert detect_format(export) == "dicom"


# -- MIMIC-CXR -------------------------------------------------------------------------------------------------
@pytest.fixture
def mimic(tmp_path):
    root = tmp_path / "mimic-cxr-jpg"
    images = [  # dicom_id, subject, study, view, date, time
        ("d1", "10000032", "50000001", "PA", "21800506", "213014.531"),
        ("d2", "10000032", "50000001", "LATERAL", "21800506", "213014.531"),
        ("d3", "10000032", "50000002", "AP", "21800620", "101500"),
        ("d4", "10000032", "50000003", "AP", "21790101", "080000"),
        ("d5", "10000045", "50000010", "PA", "21500101", "120000"),
        ("d6", "10000045", "50000011", "PA", "21500301", "120000"),  # no sectioned report
    ]
    for dicom_id, subject, study, *_ in images:
        _jpg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg")
    _csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
         ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
          "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
          "PatientOrientationCodeSequence_CodeMeaning"],
         [[d, sub, st, "CHEST (PA AND LAT)", v, 32, 40, date, time, "CHEST", "", ""]
          for d, sub, st, v, date, time in images], gz=True)
    _csv(root / "mimic_cxr_sectioned.csv", ["study", "impression", "findings", "last_paragraph", "comparison"], [
        ["s50000001", "No acute process.", "Lungs are clear.", "No acute process.", "None."],
        ["s50000002", "Small left effusion.", "Blunting of the left costophrenic angle.", "", "Prior from 2180."],
        ["s50000003", "", "Mild cardiomegaly.", "", ""],
        ["s50000010", "Right lower lobe pneumonia.", "", "", ""],
        ["s50000011", "", "", "", ""],
    ])
    _csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
         [[d, st, sub, "test" if sub == "10000045" else "train"] for d, sub, st, *_ in images])
    _csv(root / "patients.csv", ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
         [["10000032", "F", "52", "2180", "2014 - 2016", ""], ["10000045", "M", "70", "2150", "2008 - 2010", ""]])
    return root


def test_mimic_loader(mimic):
    samples = _by_id(load_mimic_cxr(mimic))
    assert set(samples) == {"50000001", "50000002", "50000003", "50000010"}  # 50000011 has no report text
    s = samples["50000001"]
    assert s.patient_id == "10000032" and s.study_date == "21800506" and s.meta["study_time"] == "213014"
    assert [i.view for i in s.images] == ["PA", "LATERAL"] and s.frontal.uid == "d1" and s.lateral.uid == "d2"
    assert Path(s.images[0].path) == mimic / "files/p10/p10000032/s50000001/d1.jpg"
    assert (s.findings, s.impression, s.comparison) == ("Lungs are clear.", "No acute process.", "None.")
    assert s.sex == "F" and s.age == 52 and s.split == "train" and s.institution == "MIMIC-CXR"
    # timeline 50000003 (2179) -> 50000001 -> 50000002
    assert samples["50000003"].prior is None
    assert samples["50000001"].prior.study_id == "50000003"
    assert samples["50000002"].prior.study_id == "50000001"
    assert samples["50000002"].prior.report == "Findings: Lungs are clear.\nImpression: No acute process."
    assert samples["50000010"].age == 70 and samples["50000010"].sex == "M"
    assert s.frontal.load(size=32).size == (32, 32)
    test = load_mimic_cxr(mimic, split="test")
    assert [x.study_id for x in test] == ["50000010"]
    assert detect_format(mimic) == "mimic-cxr"


# -- CheXpert Plus ---------------------------------------------------------------------------------------------
CHEXPERT_COLUMNS = [
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
    "report", "section_narrative", "section_clinical_history", "section_history", "section_comparison",
    "section_technique", "section_procedure_comments", "section_findings", "section_impression",
    "section_end_of_impression", "section_summary", "section_accession_number", "age", "sex", "race",
    "ethnicity", "interpreter_needed", "insurance_type", "recent_bmi", "deceased", "split",
]


def _chexpert_row(path, fl, ap_pa, pid, order, findings, impression, history, age, sex, split):
    values = dict.fromkeys(CHEXPERT_COLUMNS, "")
    values.update(path_to_image=path, path_to_dcm=path.replace(".jpg", ".dcm"), frontal_lateral=fl, ap_pa=ap_pa,
                  deid_patient_id=pid, patient_report_date_order=order, section_findings=findings,
                  section_impression=impression, section_clinical_history=history, age=age, sex=sex, split=split,
                  report=f"FINDINGS: {findings} IMPRESSION: {impression}")
    return [values[c] for c in CHEXPERT_COLUMNS]


@pytest.fixture
def chexpert_plus(tmp_path):
    root = tmp_path / "chexpertplus"
    rows = [
        _chexpert_row("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "pid1", 2,
                      "Moderate cardiomegaly.", "Cardiomegaly.", "Dyspnea.", 71, "Female", "train"),
        _chexpert_row("train/patient00001/study1/view2_lateral.jpg", "Lateral", "", "pid1", 2,
                      "Moderate cardiomegaly.", "Cardiomegaly.", "Dyspnea.", 71, "Female", "train"),
        _chexpert_row("train/patient00001/study2/view1_frontal.jpg", "Frontal", "PA", "pid1", 1,
                      "Normal heart size.", "No acute disease.", "", 70, "Female", "train"),
        _chexpert_row("valid/patient00002/study1/view1_frontal.jpg", "Frontal", "AP", "pid2", 1,
                      "", "Left pneumothorax.", "Trauma.", 33, "Male", "valid"),
    ]
    for r in rows:
        _jpg(root / r[0])
    return _csv(root / "df_chexpert_plus_240401.csv", CHEXPERT_COLUMNS, rows)


def test_chexpert_plus_loader(chexpert_plus):
    samples = _by_id(load_chexpert_plus(chexpert_plus))
    assert set(samples) == {"patient00001/study1", "patient00001/study2", "patient00002/study1"}
    s = samples["patient00001/study1"]
    assert [i.view for i in s.images] == ["AP", "LATERAL"] and Path(s.images[0].path).is_file()
    assert (s.patient_id, s.sex, s.age, s.indication) == ("pid1", "F", 71, "Dyspnea.")
    assert (s.findings, s.impression, s.sequence, s.split) == ("Moderate cardiomegaly.", "Cardiomegaly.", 2, "train")
    # patient_report_date_order, not the study number, orders the timeline: study2 (order 1) is the prior
    assert s.prior.study_id == "patient00001/study2" and samples["patient00001/study2"].prior is None
    assert samples["patient00002/study1"].sex == "M" and samples["patient00002/study1"].findings == ""
    assert [x.sample_id for x in load_chexpert_plus(chexpert_plus, split="valid")] == ["patient00002/study1"]
    png = load_chexpert_plus(chexpert_plus.parent, image_suffix=".png")
    assert all(i.path.endswith(".png") for x in png for i in x.images)
    assert detect_format(chexpert_plus) == "chexpert-plus" and detect_format(chexpert_plus.parent) == "chexpert-plus"


# -- ReXGradient-160K ------------------------------------------------------------------------------------------
@pytest.fixture
def rexgradient(tmp_path):
    root = tmp_path / "ReXGradient-160K"
    header = ["id", "PatientID", "PatientAge", "PatientSex", "StudyDate", "StudyInstanceUid", "Indication",
              "Comparison", "Findings", "Impression", "ImagePath", "ImageViewPosition", "state"]
    rows = [
        ["r1", "P1", "062Y", "F", "2019-03-01", "1.2.1", "Cough.", "None.", "Clear lungs.", "Normal.",
         "deid_png/P1/s1/i1.png", "PA", "TX"],
        ["r1", "P1", "062Y", "F", "2019-03-01", "1.2.1", "Cough.", "None.", "Clear lungs.", "Normal.",
         "deid_png/P1/s1/i2.png", "LATERAL", "TX"],
        ["r2", "P1", "063Y", "F", "2020-04-02", "1.2.2", "Fever.", "2019-03-01.", "Right lower lobe opacity.",
         "Pneumonia.", "deid_png/P1/s2/i1.png", "ANTERO_POSTERIOR", "TX"],
    ]
    for r in rows:
        _jpg(root / r[10])
    _csv(root / "metadata" / "test_metadata.csv", header, rows)
    train = {"r9": {"PatientID": "P9", "PatientAge": "045Y", "PatientSex": "M", "StudyDate": "20180101",
                    "StudyInstanceUid": "1.2.9", "Indication": "", "Comparison": "", "Findings": "",
                    "Impression": "No acute disease.", "ImagePath": ["deid_png/P9/s1/i1.png", "deid_png/P9/s1/i2.png"],
                    "ImageViewPosition": ["POSTERO_ANTERIOR", "LATERAL"], "state": "CA"}}
    for p in train["r9"]["ImagePath"]:
        _jpg(root / p)
    (root / "metadata" / "train_metadata.json").write_text(json.dumps(train))
    return root


def test_rexgradient_loader(rexgradient):
    samples = _by_id(load_rexgradient(rexgradient))
    assert set(samples) == {"1.2.1", "1.2.2", "1.2.9"}
    s1, s2, s9 = samples["1.2.1"], samples["1.2.2"], samples["1.2.9"]
    assert [i.view for i in s1.images] == ["PA", "LATERAL"] and all(Path(i.path).is_file() for i in s1.images)
    assert (s1.patient_id, s1.age, s1.sex, s1.study_date, s1.institution) == ("P1", 62, "F", "20190301", "TX")
    assert (s1.indication, s1.comparison, s1.findings, s1.impression) == ("Cough.", "None.", "Clear lungs.", "Normal.")
    assert s2.images[0].view == "AP" and s2.prior.study_id == "1.2.1" and s1.prior is None
    assert s1.split == "test" and s9.split == "train" and s9.institution == "CA"
    assert [i.view for i in s9.images] == ["PA", "LATERAL"]
    assert [s.sample_id for s in load_rexgradient(rexgradient, split="train")] == ["1.2.9"]
    assert detect_format(rexgradient) == "rexgradient"


# -- JSONL manifest --------------------------------------------------------------------------------------------
def test_jsonl_manifest_round_trip(tmp_path):
    _jpg(tmp_path / "imgs" / "a0.jpg")
    _jpg(tmp_path / "imgs" / "a1.jpg")
    _jpg(tmp_path / "imgs" / "b0.jpg")
    lines = [
        {"patient_id": "A", "study_id": "a0", "image": "imgs/a0.jpg", "findings": "Clear lungs.",
         "study_date": "2020-01-01", "sex": "male", "age": "70", "institution": "X", "scanner": "S1"},
        {"patient_id": "A", "study_id": "a1", "images": [{"path": "imgs/a1.jpg", "view": "AP"}],
         "impression": "Small right effusion.", "study_date": "20200301", "labels": {"Pleural Effusion": 1}},
        {"patient_id": "B", "study_id": "b1", "images": ["imgs/b0.jpg"], "findings": "Normal.",
         "prior": {"study_id": "old", "image": "imgs/b0.jpg", "report": "Findings: Old.", "study_date": "20100101"}},
        {"patient_id": "A", "study_id": "a2", "image": "imgs/a1.jpg", "findings": "Stable.", "prior_study_id": "a0",
         "study_date": "20200401", "split": "test"},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples = _by_id(load_jsonl_manifest(path))
    a0, a1, b1, a2 = samples["a0"], samples["a1"], samples["b1"], samples["a2"]
    assert Path(a0.images[0].path) == tmp_path / "imgs/a0.jpg" and a0.images[0].view is None
    assert (a0.sex, a0.age, a0.study_date, a0.meta["scanner"]) == ("M", 70, "20200101", "S1")
    assert a1.prior.study_id == "a0" and a1.labels == {"Pleural Effusion": 1}  # linked by date
    assert b1.prior.study_id == "old" and b1.prior.report == "Findings: Old."  # explicit
    assert a2.prior.study_id == "a0" and a2.split == "test"  # prior_study_id wins over the date link (a1)
    assert detect_format(path) == "jsonl" and detect_format(tmp_path) == "jsonl"

    out = write_jsonl_manifest(list(samples.values()), tmp_path / "copy" / "manifest.jsonl")
    again = _by_id(load_jsonl_manifest(out))
    for sid, s in samples.items():
        t = again[sid]
        assert (t.findings, t.impression, t.sex, t.age, t.study_date, t.institution) == (
            s.findings, s.impression, s.sex, s.age, s.study_date, s.institution)
        assert [Path(i.path).resolve() for i in t.images] == [Path(i.path).resolve() for i in s.images]
        assert (t.prior.study_id if t.prior else None) == (s.prior.study_id if s.prior else None)


def test_jsonl_manifest_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"patient_id": "A", "study_id": "s", "findings": ""}) + "\n")
    with pytest.raises(ValueError, match="findings or impression"):
        load_jsonl_manifest(bad)
    bad.write_text(json.dumps({"study_id": "s", "findings": "x"}) + "\n")
    with pytest.raises(ValueError, match="patient_id"):
        load_jsonl_manifest(bad)
    bad.write_text(json.dumps({"patient_id": "A", "study_id": "s", "findings": "x", "prior_study_id": "zz"}) + "\n")
    with pytest.raises(ValueError, match="prior_study_id"):
        load_jsonl_manifest(bad)


def test_image_ref_needs_a_source_and_can_use_a_loader():
    with pytest.raises(ValueError):
        ImageRef()
    ref = ImageRef(loader=lambda: Image.new("L", (10, 20), 200), view="PA")
    image = ref.load(size=16)
    assert image.size == (16, 16) and image.mode == "RGB" and ref.is_frontal
