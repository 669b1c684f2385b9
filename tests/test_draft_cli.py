"""``unirg draft`` end to end on synthetic testbed studies with a tiny trained Qwen3-VL."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from unirg.trainer import synth
from unirg.plugin.draft_cli import DEFAULT_MODEL_ENV, draft
from unirg.sr_writer import read_report
from conftest import train_tiny_sft


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed")
    records = synth.generate_testbed(out, patients=3, seed=0, size=128)
    return out, records


@pytest.fixture(scope="module")
def model_dir(testbed, tmp_path_factory):
    root, _ = testbed
    return train_tiny_sft(root, tmp_path_factory.mktemp("model") / "tiny-draft", version="draft-test-1")


def _study_dir(root: Path, record: dict) -> Path:
    return (root / record["report_sr"]).parent


def _patient_studies(records):
    """Studies (oldest first) of the patient with the most studies that have a frontal image."""
    by_patient: dict[str, list[dict]] = {}
    for record in records:
        if any(image["view"] in ("PA", "AP") for image in record["images"]):
            by_patient.setdefault(record["patient_id"], []).append(record)
    studies = sorted(max(by_patient.values(), key=len), key=lambda r: (r["study_date"], r["study_time"]))
    assert len(studies) >= 2
    return studies


def _sr_path(output: str) -> Path:
    line = next(line for line in output.splitlines() if line.startswith("SR: "))
    return Path(line.removeprefix("SR: "))


def _ai_versions(sr) -> list[str]:
    return [str(item.SoftwareVersions) for item in sr.ContributingEquipmentSequence
            if str(item.ContributionDescription).startswith("AI model")]


def test_draft_with_priors(testbed, model_dir, tmp_path, validate_sr):
    root, records = testbed
    studies = _patient_studies(records)
    current, priors = studies[-1], studies[:-1]
    args = [str(_study_dir(root, current))]
    for prior in priors:  # every earlier study; the newest one is used
        args += ["--prior", str(_study_dir(root, prior))]
    result = CliRunner().invoke(draft, [*args, "--model", str(model_dir), "--out", str(tmp_path / "out"),
                                        "--max-new-tokens", "32"])
    assert result.exit_code == 0, result.output
    assert "Findings:" in result.output and "Impression:" in result.output
    assert f"prior: {priors[-1]['study_uid']}" in result.output
    assert "version draft-test-1" in result.output
    path = _sr_path(result.output)
    assert path.parent == tmp_path / "out" and path.is_file()
    assert not list(path.parent.glob(".*tmp*"))  # the atomic write left nothing behind
    validate_sr(path)
    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == current["study_uid"] and sr.PatientID == current["patient_id"]
    assert {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence} == {priors[-1]["study_uid"]}
    assert _ai_versions(sr) == ["draft-test-1"]
    report = read_report(sr)
    assert report.comparison and report.is_draft and "draft-test-1" in report.disclaimer


def test_draft_without_prior_from_files(testbed, model_dir, tmp_path, validate_sr):
    root, records = testbed
    record = _patient_studies(records)[0]
    files = [str(root / image["path"]) for image in record["images"]]  # files, not a folder
    result = CliRunner().invoke(draft, [*files, "--model", str(model_dir), "--out", str(tmp_path),
                                        "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    path = _sr_path(result.output)
    validate_sr(path)
    sr = pydicom.dcmread(path)
    assert "PertinentOtherEvidenceSequence" not in sr
    assert _ai_versions(sr) == ["draft-test-1"]


def test_default_model_from_environment_and_missing_model(testbed, model_dir, tmp_path, monkeypatch):
    root, records = testbed
    study = str(_study_dir(root, _patient_studies(records)[0]))
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(tmp_path / "nowhere"))
    missing = CliRunner().invoke(draft, [study, "--out", str(tmp_path)])
    assert missing.exit_code != 0
    assert "scripts/build-demo-model.sh" in missing.output and "--model" in missing.output
    monkeypatch.setenv(DEFAULT_MODEL_ENV, str(model_dir))
    found = CliRunner().invoke(draft, [study, "--out", str(tmp_path), "--max-new-tokens", "8"])
    assert found.exit_code == 0, found.output


def test_bad_input(testbed, model_dir, tmp_path):
    root, records = testbed
    studies = _patient_studies(records)
    other = next(r for r in records if r["patient_id"] != studies[0]["patient_id"])
    wrong_patient = CliRunner().invoke(draft, [str(_study_dir(root, studies[-1])), "--prior",
                                               str(_study_dir(root, other)), "--model", str(model_dir),
                                               "--out", str(tmp_path)])
    assert wrong_patient.exit_code == 2 and "another patient" in wrong_patient.output
    two_studies = CliRunner().invoke(draft, [str(root / studies[0]["patient_id"]), "--model", str(model_dir),
                                             "--out", str(tmp_path)])
    assert two_studies.exit_code == 2 and "exactly one study" in two_studies.output
    sr_only = CliRunner().invoke(draft, [str(root / studies[0]["report_sr"]), "--model", str(model_dir),
                                         "--out", str(tmp_path)])
    assert sr_only.exit_code == 1 and "skipped" in sr_only.output and "structured report" in sr_only.output
    assert not list(tmp_path.glob("*.dcm"))
