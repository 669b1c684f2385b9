"""``unirg draft`` end to end on synthetic testbed studies with a tiny trained Qwen3-VL."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from unirg.plugin.draft_cli import DEFAULT_MODEL_ENV, PriorIndex, draft
from unirg.sr_writer import read_report
from conftest import REPO_ROOT, skip_or_fail, train_tiny_sft
from prior_reports import prior_in_prompt


pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.testbed(patients=4)]  # the shared `testbed` fixture (conftest.py)

DEMO_MODEL = REPO_ROOT / "var" / "models" / "unirg-demo"


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


# -- several studies in one call ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_model():
    """The real demo model (scripts/build-demo-model.sh), as ``unirg draft`` uses it by default."""
    if not (DEMO_MODEL / "config.json").is_file():
        skip_or_fail(f"no demo model at {DEMO_MODEL} (scripts/build-demo-model.sh builds it)")
    return DEMO_MODEL


def _latest_per_patient(records) -> list[dict]:
    """Each patient's most recent study with a frontal image, in patient order."""
    latest: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: (r["study_date"], r["study_time"])):
        if any(image["view"] in ("PA", "AP") for image in record["images"]):
            latest[record["patient_id"]] = record
    return [latest[p] for p in sorted(latest)]


def _sr_paths(output: str) -> list[Path]:
    return [Path(line.strip().removeprefix("SR: ")) for line in output.splitlines() if line.strip().startswith("SR: ")]


def _prompts(caplog) -> dict[str, str]:
    """``{study_uid: prompt}`` from the ``event=prompt`` debug lines."""
    out = {}
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("event=prompt study="):
            out[message.split()[1].removeprefix("study=")] = message
    return out


def test_several_studies_one_model_load_priors_from_folder(testbed, demo_model, tmp_path, validate_sr, caplog):
    root, records = testbed
    current = _latest_per_patient(records)
    by_uid = {r["study_uid"]: r for r in records}
    with_prior = [r for r in current if r.get("prior_study_uid")]
    assert len(current) == 4 and len(with_prior) == 2 and len(current) - len(with_prior) == 2
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    result = CliRunner().invoke(draft, [*(str(_study_dir(root, r)) for r in current), "--priors-from", str(root),
                                        "--model", str(demo_model), "--out", str(out), "--max-new-tokens", "24",
                                        "--batch-size", "3"])  # two generate batches: 3 + 1
    assert result.exit_code == 0, result.output
    assert "drafted 4 of 4 studies" in result.output and "0 failed" in result.output

    # the model was loaded once: the loader's own log line and ours
    loads = [r for r in caplog.records if r.name == "unirg.model.model" and r.getMessage().startswith("loading ")]
    assert len(loads) == 1
    assert sum("event=model_loaded" in r.getMessage() for r in caplog.records) == 1

    # one SR per study, each valid and research-labelled, named by its SOP Instance UID
    paths = _sr_paths(result.output)
    assert sorted(paths) == sorted(out.glob("*.dcm")) and len(paths) == 4
    validate_sr(*paths)
    srs = {str(sr.StudyInstanceUID): sr for sr in map(pydicom.dcmread, paths)}
    assert set(srs) == {r["study_uid"] for r in current}
    for path in paths:
        assert path.name == f"{pydicom.dcmread(path).SOPInstanceUID}.dcm"

    prompts = _prompts(caplog)
    assert set(prompts) == set(srs)
    for record in current:
        sr = srs[record["study_uid"]]
        assert sr.PatientID == record["patient_id"] and read_report(sr).is_draft
        prior_uid = record.get("prior_study_uid")
        if not prior_uid:  # the patient's only study is in the folder too: never its own prior
            assert "PertinentOtherEvidenceSequence" not in sr
            continue
        prior = by_uid[prior_uid]
        evidence = {(item.StudyInstanceUID, sop.ReferencedSOPInstanceUID)
                    for item in sr.PertinentOtherEvidenceSequence
                    for series in item.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
        assert {uid for uid, _ in evidence} == {prior_uid}
        prior_report_sr = pydicom.dcmread(root / prior["report_sr"])
        assert str(prior_report_sr.SOPInstanceUID) in {sop for _, sop in evidence}  # its human report was used
        # the prior report reached the prompt, as the demo model reads it (its manifest's prior-report style)
        assert prior_in_prompt(prior_report_sr) in prompts[record["study_uid"]]
        assert f"(prior: {prior_uid})" in result.output


def test_bad_study_among_good_ones(testbed, demo_model, tmp_path, validate_sr):
    root, records = testbed
    good = _latest_per_patient(records)[:2]
    sr_only, garbage = tmp_path / "sr-only", tmp_path / "garbage"
    sr_only.mkdir()
    garbage.mkdir()
    other = next(r for r in records if r["patient_id"] not in {g["patient_id"] for g in good})
    shutil.copy(root / other["report_sr"], sr_only / "report.dcm")  # a study with no image
    (garbage / "image.dcm").write_bytes(b"not DICOM at all")
    out = tmp_path / "out"
    result = CliRunner().invoke(draft, [str(_study_dir(root, good[0])), str(sr_only), str(garbage),
                                        str(_study_dir(root, good[1])), "--model", str(demo_model),
                                        "--out", str(out), "--max-new-tokens", "16"])
    assert result.exit_code == 1, result.output
    assert f"{sr_only}: FAILED: study {other['study_uid']} skipped" in result.output
    assert "structured report" in result.output
    assert f"{garbage}: FAILED: no readable DICOM file" in result.output
    assert "drafted 2 of 4 studies" in result.output and "2 failed" in result.output
    paths = _sr_paths(result.output)
    assert sorted(paths) == sorted(out.glob("*.dcm")) and len(paths) == 2
    validate_sr(*paths)
    assert {str(pydicom.dcmread(p).StudyInstanceUID) for p in paths} == {g["study_uid"] for g in good}


def test_several_studies_usage(testbed, tmp_path):
    root, records = testbed
    first, second = (str(_study_dir(root, r)) for r in _latest_per_patient(records)[:2])
    prior = CliRunner().invoke(draft, [first, second, "--prior", first, "--out", str(tmp_path)])
    assert prior.exit_code == 2 and "--priors-from" in prior.output
    both = CliRunner().invoke(draft, [first, "--prior", second, "--priors-from", str(root), "--out", str(tmp_path)])
    assert both.exit_code == 2 and "not both" in both.output
    indication = CliRunner().invoke(draft, [first, second, "--indication", "cough", "--out", str(tmp_path)])
    assert indication.exit_code == 2 and "--indication is for one STUDY" in indication.output
    assert not list(tmp_path.glob("*.dcm"))


def test_prior_index_exact_patient_and_never_the_study_itself(testbed, tmp_path):
    """``--priors-from``: PatientID must match exactly; the current study's own files are no prior."""
    root, records = testbed
    current = next(r for r in _latest_per_patient(records) if r.get("prior_study_uid"))
    prior = next(r for r in records if r["study_uid"] == current["prior_study_uid"])
    folder = tmp_path / "archive"
    shutil.copytree(_study_dir(root, current), folder / "current")  # the study itself
    for name, patient_id in (("lower", current["patient_id"].lower()), ("prefix", current["patient_id"][:-1]),
                             ("wildcard", current["patient_id"][:-1] + "*")):
        for file in _study_dir(root, prior).iterdir():  # the prior, under another (near-identical) Patient ID
            ds = pydicom.dcmread(file)
            ds.PatientID = patient_id
            (folder / name).mkdir(exist_ok=True)
            ds.save_as(folder / name / file.name)
    (folder / "junk.dcm").write_bytes(b"junk")
    current_objects = [pydicom.dcmread(f) for f in _study_dir(root, current).iterdir()]
    index = PriorIndex(folder)
    assert index.unreadable == 1 and index.study_count == 4
    priors, reason = index.priors(current_objects)
    assert priors == [] and current["patient_id"] in reason

    shutil.copytree(_study_dir(root, prior), folder / "real-prior")  # now the exact Patient ID
    priors, reason = PriorIndex(folder).priors(current_objects)
    assert reason is None and [p.study_uid for p in priors] == [prior["study_uid"]]
    assert priors[0].report is not None and str(priors[0].report.SOPInstanceUID) == str(
        pydicom.dcmread(root / prior["report_sr"]).SOPInstanceUID)
    assert all(ds.get("PixelData") is not None for ds in priors[0].images)  # read in full when used
