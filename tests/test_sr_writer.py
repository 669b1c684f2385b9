"""sr_writer: draft / reference SRs built from real in-test images, validated by three validators."""

from __future__ import annotations

import datetime
import inspect
import io
import os
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from click.testing import CliRunner
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import RawDataStorage

from conftest import VALIDATE_SR
from dicom_factories import make_chest_image, write_image
from unirg.plugin.cli import main
from unirg.sr_writer import (
    MAX_TEXT_BYTES,
    RESEARCH_LABEL,
    DraftReport,
    ModelInfo,
    ReportSections,
    SRInputError,
    build_draft_sr,
    build_reference_sr,
    read_report,
    write_dataset_atomic,
)

MODEL = ModelInfo("tiny-qwen3-vl", "2026.11.1", "ab" * 32)
REPORT = ReportSections(
    findings="Small right pleural effusion.\nHeart size normal. No pneumothorax.",
    impression="Small right pleural effusion.",
    indication="Cough and fever.",
)
WHEN = datetime.datetime(2024, 3, 1, 12, 30, 15)
LONG_FINDINGS = ("Both lungs are clear. " * 10_000).strip()  # ~220 kB of UT text


def current_images() -> list[Dataset]:
    """Current study S2: a DX PA and a DX lateral."""
    return [
        make_chest_image(study="S2", image=1, view="PA", study_date="20240301"),
        make_chest_image(study="S2", image=2, view="LL", study_date="20240301"),
    ]


def prior_images() -> list[Dataset]:
    """Prior study S1 of the same patient: one CR PA."""
    return [make_chest_image(study="S1", image=1, modality="CR", study_date="20230301")]


def round_trip(ds: Dataset) -> Dataset:
    """Write ``ds`` to bytes and read it back."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return dcmread(io.BytesIO(buf.getvalue()))


def foreign_loinc_sr() -> hd.sr.ComprehensiveSR:
    """A TID 2000 report from another vendor: LOINC headings, nested containers, a person observer."""

    def container(code: Code, *children: hd.sr.ContentItem) -> hd.sr.ContainerContentItem:
        item = hd.sr.ContainerContentItem(name=code, relationship_type="CONTAINS")
        item.ContentSequence = list(children)
        return item

    def text(code: Code, value: str) -> hd.sr.TextContentItem:
        return hd.sr.TextContentItem(name=code, value=value, relationship_type="CONTAINS")

    def local(meaning: str) -> Code:
        return Code(meaning.upper(), "99LOCAL", meaning)

    root = hd.sr.ContainerContentItem(
        name=Code("18748-4", "LN", "Diagnostic Imaging Report"), template_id="2000"
    )
    root.ContentSequence = [
        *hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept("en", "RFC5646", "English")),
        *hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121006", "DCM", "Person"),
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name="Smith^John"
            ),
        ),
        container(
            Code("59776-5", "LN", "Procedure Findings"),
            container(local("Lungs"), text(local("Note"), "Clear lungs.")),
            text(Code("121071", "DCM", "Finding"), "No effusion."),
        ),
        container(Code("19005-8", "LN", "Impressions"), text(local("Text"), "Normal chest.")),
        container(Code("18834-2", "LN", "Comparison study"), text(local("Text"), "None.")),
        container(local("Recommendation"), text(local("Text"), "None needed.")),
    ]
    return hd.sr.ComprehensiveSR(
        evidence=current_images(), content=root, series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Other Vendor",
    )


def run_cli(tmp: Path, *args: str) -> tuple[object, Path]:
    out = tmp / "cli-draft.dcm"
    result = CliRunner().invoke(main, ["sr", *args, "--out", str(out)])
    return result, out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every ASCII SR these tests check, written to disk once (validated together below)."""
    tmp = tmp_path_factory.mktemp("srs")
    current, priors = current_images(), prior_images()
    files = {
        "draft": build_draft_sr(REPORT, MODEL, current, priors, content_datetime=WHEN),
        "draft_no_priors": build_draft_sr(
            ReportSections("No acute findings.", ""), MODEL, current[:1]
        ),
        "reference": build_reference_sr(
            REPORT, current=current, priors=priors, observer_name="Rad^Alice",
            content_datetime=WHEN, institution_name="Hospital A",
        ),
        "long": build_draft_sr(ReportSections(LONG_FINDINGS, "Normal."), MODEL, current),
    }
    paths = {name: write_dataset_atomic(sr, tmp / f"{name}.dcm") for name, sr in files.items()}
    # the CLI, end to end: a study folder with two images, a stray text file and an SR
    study, prior = tmp / "study", tmp / "prior"
    for ds in current:
        write_image(ds, study)
    (study / "README.txt").write_text("not DICOM")
    files["reference"].save_as(study / "report.dcm", enforce_file_format=True)
    write_image(priors[0], prior)
    result, out = run_cli(
        tmp, "--study", str(study), "--prior", str(prior), "--findings", "Clear lungs.",
        "--impression", "Normal chest.", "--model-name", "m1", "--model-version", "3",
    )
    assert result.exit_code == 0, result.output
    paths["cli"] = out
    paths["cli_stderr"] = tmp / "cli-stderr.txt"
    paths["cli_stderr"].write_text(result.stderr)
    return paths


def test_all_written_srs_validate_clean(written: dict[str, Path], validate_sr) -> None:
    names = ["draft", "draft_no_priors", "reference", "long", "cli"]
    output = validate_sr(*(written[n] for n in names))
    assert output.count(" ok\n") == 3 * len(names), output


def test_draft_round_trips_text(written: dict[str, Path]) -> None:
    text = read_report(dcmread(written["draft"]))
    assert text.findings == REPORT.findings
    assert text.impression == REPORT.impression
    assert text.indication == REPORT.indication
    assert text.comparison == "Compared with XR CHEST of 2023-03-01 (accession AS1)."
    assert (text.observer_type, text.observer_name) == ("DEVICE", MODEL.name)
    assert text.is_draft and text.other == ()
    no_priors = read_report(dcmread(written["draft_no_priors"]))
    assert (no_priors.findings, no_priors.impression) == ("No acute findings.", "")
    assert no_priors.comparison is None and no_priors.indication is None


def test_draft_is_research_labelled(written: dict[str, Path]) -> None:
    ds = dcmread(written["draft"])
    assert (ds.PreliminaryFlag, ds.CompletionFlag, ds.VerificationFlag) == (
        "PRELIMINARY", "PARTIAL", "UNVERIFIED",
    )
    assert "VerifyingObserverSequence" not in ds
    assert ds.CompletionFlagDescription == RESEARCH_LABEL
    assert ds.SeriesDescription.startswith("AI DRAFT - RESEARCH ONLY - NOT FOR CLINICAL USE")
    disclaimer = read_report(ds).disclaimer
    assert disclaimer.startswith(RESEARCH_LABEL) and MODEL.name in disclaimer
    # the disclaimer is the first heading of the content tree
    first = [i for i in ds.ContentSequence if i.RelationshipType == "CONTAINS"][0]
    assert first.ContentSequence[0].TextValue == disclaimer
    (model_eq,) = [
        e for e in ds.ContributingEquipmentSequence
        if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        and e.get("ManufacturerModelName") == MODEL.name
    ]
    assert model_eq.SoftwareVersions == MODEL.version
    assert model_eq.DeviceSerialNumber == MODEL.weights_sha256
    assert model_eq.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert ds.Manufacturer == "unirg" and ds.ManufacturerModelName and ds.SoftwareVersions
    device_uid = [i for i in ds.ContentSequence if i.ValueType == "UIDREF"][0].UID
    assert device_uid == MODEL.device_uid


def test_labelling_cannot_be_switched_off() -> None:
    params = inspect.signature(build_draft_sr).parameters
    assert list(params) == ["report", "model", "current", "priors", "content_datetime"]
    for kwarg in ("is_verified", "is_final", "is_complete", "series_description", "label"):
        with pytest.raises(TypeError):
            build_draft_sr(REPORT, MODEL, current_images(), **{kwarg: True})
    assert "model" not in inspect.signature(build_reference_sr).parameters
    with pytest.raises(TypeError):
        build_reference_sr(REPORT, current=current_images(), observer_name="A^B",
                           content_datetime=WHEN, model=MODEL)
    with pytest.raises(SRInputError, match="observer_name"):
        build_reference_sr(REPORT, current=current_images(), observer_name=MODEL,
                           content_datetime=WHEN)
    with pytest.raises(SRInputError, match="model must be a ModelInfo"):
        build_draft_sr(REPORT, "tiny-qwen3-vl", current_images())


def test_uids_are_deterministic() -> None:
    current = current_images()
    a = build_draft_sr(REPORT, MODEL, current)
    b = build_draft_sr(ReportSections("x", "y"), MODEL, current_images(), content_datetime=WHEN)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID != a.SeriesInstanceUID
    assert a.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in current}
    newer = build_draft_sr(REPORT, ModelInfo(MODEL.name, "2026.12.0"), current)
    assert newer.SOPInstanceUID != a.SOPInstanceUID
    assert newer.SeriesInstanceUID != a.SeriesInstanceUID
    other_study = build_draft_sr(REPORT, MODEL, prior_images())
    assert other_study.SOPInstanceUID != a.SOPInstanceUID
    assert ModelInfo(MODEL.name, MODEL.version).device_uid == MODEL.device_uid
    assert ModelInfo(MODEL.name, "9").device_uid != MODEL.device_uid
    ref = [build_reference_sr(REPORT, current=current, observer_name="A^B", content_datetime=WHEN)
           for _ in range(2)]
    assert ref[0].SOPInstanceUID == ref[1].SOPInstanceUID != a.SOPInstanceUID


def test_evidence_and_study_attributes(written: dict[str, Path]) -> None:
    ds, current, prior = dcmread(written["draft"]), current_images(), prior_images()[0]
    (cur_study,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert cur_study.StudyInstanceUID == current[0].StudyInstanceUID
    refs = {r.ReferencedSOPInstanceUID for s in cur_study.ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence}
    assert refs == {d.SOPInstanceUID for d in current}
    (other,) = ds.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == prior.StudyInstanceUID
    assert other.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        prior.SOPInstanceUID
    )
    assert "PertinentOtherEvidenceSequence" not in dcmread(written["draft_no_priors"])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        assert ds[keyword].value == current[0][keyword].value, keyword
    assert ds.Modality == "SR" and ds.SeriesInstanceUID != current[0].SeriesInstanceUID
    assert (ds.ContentDate, ds.ContentTime) == ("20240301", "123015")


def test_reference_report(written: dict[str, Path]) -> None:
    ds = dcmread(written["reference"])
    assert (ds.PreliminaryFlag, ds.CompletionFlag, ds.VerificationFlag) == (
        "FINAL", "COMPLETE", "VERIFIED",
    )
    (verifier,) = ds.VerifyingObserverSequence
    assert verifier.VerifyingObserverName == "Rad^Alice"
    assert verifier.VerifyingOrganization == ds.InstitutionName == "Hospital A"
    assert verifier.VerificationDateTime == "20240301123015"
    assert not ds.SeriesDescription.startswith("AI DRAFT")
    text = read_report(ds)
    assert (text.observer_type, text.observer_name) == ("PERSON", "Rad^Alice")
    assert not text.is_draft and text.disclaimer is None
    assert (text.findings, text.impression) == (REPORT.findings, REPORT.impression)
    assert all(e.get("ManufacturerModelName") != MODEL.name for e in ds.ContributingEquipmentSequence)


def test_long_text_round_trips(written: dict[str, Path]) -> None:
    assert read_report(dcmread(written["long"])).findings == LONG_FINDINGS
    too_long = "x" * (MAX_TEXT_BYTES + 1)
    with pytest.raises(SRInputError, match=r"report.findings is \d+ bytes long; the limit"):
        build_draft_sr(ReportSections(too_long, "ok"), MODEL, current_images())


def test_latin1_text_validates_clean(tmp_path: Path, validate_sr) -> None:
    current = [make_chest_image(study="S8", patient_name="Müller^Jürgen", charset="ISO_IR 100")]
    report = ReportSections("Épanchement pleural droit.", "Légère cardiomégalie.")
    path = write_dataset_atomic(build_draft_sr(report, MODEL, current), tmp_path / "latin1.dcm")
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert str(ds.PatientName) == "Müller^Jürgen"
    text = read_report(round_trip(ds))
    assert (text.findings, text.impression) == (report.findings, report.impression)
    validate_sr(path)


def test_non_latin1_is_utf8(tmp_path: Path) -> None:
    current = [make_chest_image(study="S9", patient_name="Müller^Jürgen", charset="ISO_IR 100")]
    report = ReportSections("Épanchement pleural droit.", "胸水 (pleural effusion).")
    path = write_dataset_atomic(build_draft_sr(report, MODEL, current), tmp_path / "utf8.dcm")
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"
    text = read_report(round_trip(ds))
    assert (text.findings, text.impression) == (report.findings, report.impression)
    # DCMTK 3.6.7's VR checker supports only ASCII / Latin-1 and says so for UTF-8; the only
    # message allowed here. dciodvfy and PixelMed must pass clean.
    proc = subprocess.run([str(VALIDATE_SR), str(path)], capture_output=True, text=True, timeout=600)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines == [
        f"{path}: dciodvfy ok",
        f"{path}: dsrdump:",
        "W: The VR checker does not support this Specific Character Set: ISO_IR 192",
        f"{path}: DicomSRValidator ok",
    ], "\n".join(lines)


def test_ascii_sr_has_no_character_set(written: dict[str, Path]) -> None:
    assert "SpecificCharacterSet" not in dcmread(written["draft"])


def _not_image_sr() -> Dataset:
    return build_draft_sr(REPORT, MODEL, current_images())


def _no_pixels() -> Dataset:
    ds = make_chest_image(study="S2", image=3)
    del ds.PixelData
    return ds


def _raw_data() -> Dataset:
    ds = make_chest_image(study="S2", image=3)
    ds.SOPClassUID = RawDataStorage
    return ds


def _without(keyword: str) -> Dataset:
    ds = make_chest_image(study="S2", image=3)
    delattr(ds, keyword)
    return ds


# case: (arguments replaced in the good call, regex the SRInputError message must match)
BAD_INPUTS = {
    "sr_as_evidence": (
        dict(current=[_not_image_sr()]), r"current\[0\] is not an image \(SOP Class Enhanced SR"
    ),
    "no_pixel_data": (
        dict(current=[_no_pixels()]), r"current\[0\] is not an image .*pixel data absent"
    ),
    "wrong_sop_class": (
        dict(current=[_raw_data()]), r"current\[0\] is not an image \(SOP Class Raw Data"
    ),
    "prior_not_image": (dict(priors=[_not_image_sr()]), r"priors\[0\] is not an image"),
    "no_patient_id": (
        dict(current=[_without("PatientID")]), r"current\[0\] lacks required attribute\(s\) PatientID"
    ),
    "no_study_uid": (
        dict(current=[_without("StudyInstanceUID")]), r"lacks required attribute\(s\) StudyInstanceUID"
    ),
    "two_patients": (
        dict(priors=[make_chest_image(patient_id="P999", study="S1")]),
        r"priors\[0\] is of patient 'P999' but current\[0\] of 'P001'",
    ),
    "two_current_studies": (
        dict(current=[*current_images(), *prior_images()]),
        r"current\[2\] is of study .* current images must all be of one study",
    ),
    "prior_from_current_study": (
        dict(priors=current_images()[:1]), r"priors\[0\] is of the current study"
    ),
    "no_images": (dict(current=[]), r"current must hold at least one image"),
    "single_dataset": (dict(current=current_images()[0]), r"current must be a sequence"),
    "empty_text": (
        dict(report=ReportSections("  ", "\n")), r"findings and report.impression are both empty"
    ),
    "control_char": (
        dict(report=ReportSections("a\x00b", "c")), r"report.findings contains control character"
    ),
    "not_a_report": (dict(report="findings"), r"report must be a ReportSections"),
    "bad_datetime": (dict(content_datetime="2024"), r"content_datetime must be a datetime"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_and_writes_nothing(case: str, tmp_path: Path) -> None:
    overrides, message = BAD_INPUTS[case]
    args = dict(report=REPORT, current=current_images(), priors=prior_images()) | overrides
    report, current, priors = args.pop("report"), args.pop("current"), args.pop("priors")
    out = tmp_path / "draft.dcm"
    with pytest.raises(SRInputError, match=message):
        write_dataset_atomic(build_draft_sr(report, MODEL, current, priors, **args), out)
    assert list(tmp_path.iterdir()) == []
    assert issubclass(SRInputError, ValueError)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "1"), "ModelInfo.name must not be empty"),
        (("m", "1" * 65), "ModelInfo.version .* at most 64 characters"),
        (("m", "1", "abc"), "ModelInfo.weights_sha256 'abc' must be 64 hex digits"),
    ],
)
def test_bad_model_info(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(SRInputError, match=message):
        ModelInfo(*args)


def test_model_info_and_alias() -> None:
    assert DraftReport is ReportSections
    assert ModelInfo("m", "1", "AB" * 32).weights_sha256 == "ab" * 32
    with pytest.raises(AttributeError):
        MODEL.version = "2"  # frozen


def test_read_foreign_loinc_report() -> None:
    text = read_report(round_trip(foreign_loinc_sr()))
    assert text.findings == "Clear lungs.\nNo effusion."
    assert text.impression == "Normal chest."
    assert text.comparison == "None."
    assert text.indication is None and text.disclaimer is None
    assert (text.observer_type, text.observer_name) == ("PERSON", "Smith^John")
    assert text.other == (("Text", "None needed."),)
    assert text.is_draft  # highdicom's default flags: UNVERIFIED, PRELIMINARY


def test_read_flat_narrative_with_variant_names() -> None:
    sr = foreign_loinc_sr()
    sr.ContentSequence = [
        hd.sr.TextContentItem(name=Code(c, s, m), value=f"{m} text", relationship_type="CONTAINS")
        for c, s, m in [
            ("121071", "DCM", "Finding"), ("IMP", "99LOCAL", "IMPRESSION:"),
            ("X", "99LOCAL", "Technique"), ("Y", "99LOCAL", "Clinical Information"),
        ]
    ]
    text = read_report(round_trip(sr))
    assert (text.findings, text.impression) == ("Finding text", "IMPRESSION: text")
    assert text.indication == "Clinical Information text"
    assert text.other == (("Technique", "Technique text"),)
    assert text.observer_type is None


def test_read_rejects_non_sr() -> None:
    with pytest.raises(SRInputError, match="not an SR document"):
        read_report(current_images()[0])


def test_write_dataset_atomic(tmp_path: Path) -> None:
    sr = build_draft_sr(REPORT, MODEL, current_images())
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old")
    assert write_dataset_atomic(sr, path) == path
    assert dcmread(path).SOPInstanceUID == sr.SOPInstanceUID
    assert os.listdir(tmp_path) == ["x.dcm"]
    broken = Dataset()  # no file meta: cannot be written as a DICOM file
    broken.PatientName = "A^B"
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_dataset_atomic(broken, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.dcm"]


def test_cli_writes_a_draft(written: dict[str, Path]) -> None:
    ds = dcmread(written["cli"])
    text = read_report(ds)
    assert (text.findings, text.impression) == ("Clear lungs.", "Normal chest.")
    assert text.comparison.startswith("Compared with XR CHEST of 2023-03-01")
    assert text.observer_name == "m1" and ds.VerificationFlag == "UNVERIFIED"
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
               .ReferencedSOPSequence) == 2
    stderr = written["cli_stderr"].read_text()
    assert "skipping" in stderr and "README.txt: not a readable DICOM file" in stderr
    assert "report.dcm: is not an image (SOP Class Enhanced SR Storage" in stderr


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (("--prior", "{other_patient}"), 1, "priors[0] is of patient 'P777'"),
        (("--study", "{other_study}"), 1, "current images must all be of one study"),
        (("--study", "{empty}"), 2, "no DICOM images found"),
        (("--findings", "", "--impression", ""), 1, "both empty"),
        (("--weights-sha256", "xyz"), 1, "must be 64 hex digits"),
        (("--study", "{missing}"), 2, "does not exist"),
    ],
)
def test_cli_errors(tmp_path: Path, extra: tuple[str, ...], code: int, message: str) -> None:
    study, empty = tmp_path / "study", tmp_path / "empty"
    empty.mkdir()
    write_image(current_images()[0], study)
    write_image(make_chest_image(patient_id="P777", study="S7"), tmp_path / "other_patient")
    write_image(make_chest_image(study="S7"), tmp_path / "other_study")
    fill = {name: str(tmp_path / name) for name in ("other_patient", "other_study", "empty")}
    fill["missing"] = str(tmp_path / "nope")
    extra = tuple(a.format(**fill) for a in extra)
    base = ("--study", str(study), "--findings", "f", "--impression", "i")
    result, out = run_cli(tmp_path, *base, *extra)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not out.exists()
