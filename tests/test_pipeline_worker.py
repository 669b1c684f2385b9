"""The worker's default pipeline factory with a real tiny model: priors, missing priors, reload."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread

from unirg.plugin.pipeline import default_model_path, make_process_study
from unirg.plugin.priors.core import PriorsResult, PriorStudy
from unirg.sr_writer import check_research_labels, read_report, write_dataset_atomic
from unirg.sr_writer.build import SYNTHETIC_DATA_NOTE


pytestmark = pytest.mark.testbed(patients=6, seed=2)  # the shared `testbed` fixture (conftest.py)


@pytest.fixture(scope="module")
def tiny_model():
    """The demo model the set-up builds (a random-weight model writes non-Latin-1 byte soup)."""
    path = default_model_path()
    assert (path / "config.json").is_file(), f"demo model missing at {path}: run scripts/build-demo-model.sh"
    return path


def _study(root: Path, record: dict) -> list:
    return [dcmread(root / img["path"]) for img in record["images"]]


def test_pipeline_drafts_with_the_prior_and_says_when_priors_are_missing(testbed, tiny_model, tmp_path, validate_sr):
    root, records = testbed
    by_uid = {r["study_uid"]: r for r in records}
    record = next(r for r in records if r["prior_study_uid"])
    prior_record = by_uid[record["prior_study_uid"]]
    config = SimpleNamespace(model=SimpleNamespace(path=str(tiny_model)))
    process_study = make_process_study(config)

    prior = PriorStudy(study_uid=prior_record["study_uid"], study_date=prior_record["study_date"],
                       images=_study(root, prior_record), report=dcmread(root / prior_record["report_sr"]))
    with_prior = process_study(_study(root, record), PriorsResult([prior]))
    # provenance: exactly what went into the prompt, the prior's frontal image and its report SR
    prior_uids = {img["sop_instance_uid"] for img in prior_record["images"] if img["view"] in ("PA", "AP")}
    referenced = {item.ReferencedSOPInstanceUID
                  for study in with_prior.PertinentOtherEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for item in series.ReferencedSOPSequence}
    assert referenced == prior_uids | {prior.report.SOPInstanceUID}

    without = process_study(_study(root, record), PriorsResult([], reason="PACS ORTHANC@127.0.0.1:1 unreachable"))
    assert "PertinentOtherEvidenceSequence" not in without
    assert read_report(without).comparison == "No prior available: PACS ORTHANC@127.0.0.1:1 unreachable."
    for sr in (with_prior, without):  # the demo model's manifest says synthetic data only; so does the SR
        check_research_labels(sr)
        assert SYNTHETIC_DATA_NOTE in read_report(sr).disclaimer
    paths = [write_dataset_atomic(sr, tmp_path / f"{name}.dcm") for name, sr in
             (("with-prior", with_prior), ("without-prior", without))]
    validate_sr(*paths)
