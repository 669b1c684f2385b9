"""The feedback loop in Orthanc: a signed final report SR stored in the Orthanc that runs unirg's plugin
(`unirg orthanc`: Debian's Orthanc + orthanc-python, the stub pipeline) is paired with the draft; another
AI's SR stored there is not; the study's images are saved under DATA_DIR/feedback/<study>/.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread

from dicom_peers import STUB_FINDINGS, dcmtk_available, make_cxr, save, wait_for
from prior_reports import human_report, other_ai_report
from unirg.plugin.cli import main
from unirg.plugin.orthanc.server import ORTHANC_BINARY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(ORTHANC_BINARY).exists() and dcmtk_available()),
                       reason="needs Debian's orthanc + orthanc-python and DCMTK (scripts/bootstrap.sh)"),
]

FINDINGS = "Small left pleural effusion. The heart is enlarged."


@pytest.fixture
def run(tmp_path):
    from test_orthanc_plugin_e2e import OrthancRun

    r = OrthancRun(tmp_path / "orthanc")
    yield r
    r.stop_all()


def pairs(data_dir: Path) -> list[dict]:
    out = CliRunner().invoke(main, ["feedback", "--json", "--data-dir", str(data_dir)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()][:-1]


def test_final_sr_stored_in_orthanc_is_paired_with_the_draft_ai_sr_is_not(run, tmp_path, validate_sr):
    run.start()
    images = [make_cxr(patient_id="FB-ORTHANC", view=v, instance_number=i, seed=700 + i)
              for i, v in enumerate(("PA", "LL"), 1)]
    study_uid = str(images[0].StudyInstanceUID)
    run.upload(*images)
    run.wait_draft(study_uid)
    (job,) = run.jobs(study_uid)
    assert job["result"]["model_version"] == "unirg-stub-pipeline 0"

    when = dt.datetime(2024, 1, 5, 16, 0)
    run.upload(other_ai_report(images, "Cardiomegaly.", when))
    wait_for(lambda: f"event=feedback_refused study={study_uid}" in run.log_text(), 60, 0.3, "AI SR refused")
    assert pairs(run.data) == []

    final = human_report(images, FINDINGS, when, tag="orthanc")
    validate_sr(save(final, tmp_path / "final.dcm"))
    run.upload(final)
    row = wait_for(lambda: next(iter(pairs(run.data)), None), 90, 0.5, "pair in Orthanc")
    assert row["study_uid"] == study_uid and row["source"] == "orthanc"
    assert row["draft_sop_uid"] == job["result"]["sr_sop_instance_uid"]
    assert row["final_sop_uid"] == str(final.SOPInstanceUID)
    assert row["discordant"] == {"missed": ["Cardiomegaly", "Pleural Effusion"], "false": ["No Finding"],
                                 "uncertain": []}
    assert row["label_agreement"] == 11 / 14 and row["images"] == 2

    from unirg.model.feedback import read_pairs
    from unirg.plugin.queue import make_engine

    engine = make_engine(f"sqlite:///{run.data / 'unirg.sqlite3'}")
    (record,) = read_pairs(engine)
    engine.dispose()
    assert STUB_FINDINGS in record.draft_text and FINDINGS in record.final_text
    saved = {Path(i["path"]) for i in record.images}
    assert {p.parent for p in saved} == {run.data / "feedback" / study_uid}  # local copies for the export
    assert {str(dcmread(p).SOPInstanceUID) for p in saved} == {str(ds.SOPInstanceUID) for ds in images}
    assert sorted(i["view"] for i in record.images) == ["frontal", "lateral"]


# -- the DICOMweb watcher: a drafted study that later shows a new SR series ----------------------------------
DW_USER, DW_PASSWORD = "unirg-fb", "feedback-dicomweb-secret"


@pytest.fixture
def archive(tmp_path):
    from conftest import orthanc_available, skip_or_fail, start_orthanc
    from unirg.plugin.orthanc.server import DICOMWEB_PLUGIN

    if orthanc_available() and not DICOMWEB_PLUGIN.exists():
        skip_or_fail(f"Orthanc's DICOMweb plugin not installed at {DICOMWEB_PLUGIN}")
    server = start_orthanc(tmp_path / "archive", name="unirg-feedback-dicomweb", users={DW_USER: DW_PASSWORD},
                           stable_age=1, extra={"DicomServerEnabled": False, "SaveJobs": False})
    yield server
    server.stop()


def test_dicomweb_watcher_pairs_a_final_that_shows_up_as_a_new_sr_series(archive, tmp_path):
    from conftest import upload
    from dicom_peers import make_stub_pipeline
    from unirg.model.feedback import read_pairs
    from unirg.plugin.config import Config, apply_overrides
    from unirg.plugin.dicomweb.adapter import DicomWebAdapter
    from unirg.plugin.service import Service

    data = tmp_path / "data"
    cfg = apply_overrides(Config(), {
        "listener.data_dir": str(data), "dicomweb.url": archive.dicomweb_url, "dicomweb.user": DW_USER,
        "dicomweb.password": DW_PASSWORD, "dicomweb.since": "20240101", "dicomweb.poll_s": 0.2,
        "dicomweb.stable_age_s": 1.0, "queue.poll_interval_s": 0.2})
    images = [make_cxr(patient_id="FB-DW", study_date="20240105", view=v, seed=800 + i)
              for i, v in enumerate(("PA", "LL"))]
    study_uid = str(images[0].StudyInstanceUID)
    for ds in images:
        upload(archive, ds)
    service = Service(DicomWebAdapter(cfg), workers=1, process_study=make_stub_pipeline()).start()
    try:
        queue, engine = service.services.queue, service.services.queue.engine
        wait_for(lambda: [j for j in queue.find(study_uid) if j["state"] == "done"], 60, 0.2, "draft by DICOMweb")
        time.sleep(1.0)  # our own SR, stored back, is seen by the watcher and is no final
        assert read_pairs(engine) == []
        final = human_report(images, FINDINGS, dt.datetime(2024, 1, 5, 16, 0), tag="dicomweb")
        upload(archive, final)
        (record,) = wait_for(lambda: read_pairs(engine), 60, 0.3, "pair by DICOMweb")
        assert record.study_uid == study_uid and record.source == "dicomweb"
        assert record.final_sop_uid == str(final.SOPInstanceUID) and record.label_agreement == 11 / 14
        assert {Path(i["path"]).parent for i in record.images} == {data / "feedback" / study_uid}
        assert all(Path(i["path"]).is_file() for i in record.images) and len(record.images) == 2
    finally:
        service.stop()
