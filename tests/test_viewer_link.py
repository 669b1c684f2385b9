"""The draft's OHIF link ([viewer] url): in the worker's sr_written log line, in `unirg status`, and in
the /unirg/studies/{uid}/draft JSON; none of them when no viewer is configured."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from click.testing import CliRunner
from dicom_factories import make_chest_image, write_image
from dicom_peers import make_cxr
from orthanc_stub import FakeOrthanc

from unirg.plugin.assemble import Assembler, StudyLedger, classify_instance
from unirg.plugin.config import apply_overrides, load_config
from unirg.plugin.listen_cli import status
from unirg.plugin.orthanc.recorder import ChangeRecorder, create_schema
from unirg.plugin.orthanc.routes import Routes
from unirg.plugin.queue import JobQueue, make_engine
from unirg.plugin.service import ListenerService
from unirg.plugin.viewer import DRAFT_PROTOCOL, study_viewer_url
from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr

VIEWER = "http://127.0.0.1:3000"
MODEL = ModelInfo("unirg-link-test", "0.1", hashlib.sha256(b"link test").hexdigest())
REPORT = ReportSections("No focal consolidation.", "No acute cardiopulmonary process.")


def _config(tmp_path: Path, **overrides):
    return apply_overrides(load_config(None, env={}), {"listener.data_dir": str(tmp_path / "data"), **overrides})


def _drafted(tmp_path: Path, caplog, **overrides):
    """A two-view study queued and drafted by a worker the service wired (no destinations: local copy)."""
    cfg = _config(tmp_path, **overrides)
    current = [make_chest_image(study="LINK"), make_chest_image(study="LINK", image=2, view="LL")]
    service = ListenerService(cfg, listen=False, workers=1,
                              process_study=lambda images, priors: build_draft_sr(REPORT, MODEL, images)).prepare()
    try:
        for ds in current:
            path = write_image(ds, cfg.data_dir / "in")
            service.services.ledger.record_instance(classify_instance(ds), str(path.relative_to(cfg.data_dir)))
        study_uid = str(current[0].StudyInstanceUID)
        assembler = Assembler(service.services.ledger, service.services.queue, cfg.assembly)
        assert assembler.check(study_uid, stable=True).state == "ready"
        caplog.set_level(logging.INFO, logger="unirg")
        assert service.workers[0].run_once()
        (job,) = service.services.queue.find(study_uid)
        assert job["state"] == "done"
    finally:
        service.stop()
    written = [r.getMessage() for r in caplog.records if "event=sr_written" in r.getMessage()]
    return cfg, study_uid, job["result"]["sr_series_uid"], written


def test_sr_written_log_and_status_carry_the_viewer_link(tmp_path, caplog):
    cfg, study_uid, series_uid, written = _drafted(tmp_path, caplog, **{"viewer.url": VIEWER})
    link = study_viewer_url(VIEWER, study_uid, series_uid)
    assert DRAFT_PROTOCOL in link and len(written) == 1 and written[0].endswith(f" viewer={link}")

    out = CliRunner().invoke(status, ["--data-dir", str(cfg.data_dir)], env={"UNIRG_VIEWER_URL": VIEWER})
    assert out.exit_code == 0, out.output
    assert f"draft of {study_uid} (revision 0): {link}" in out.output
    out = CliRunner().invoke(status, ["--data-dir", str(cfg.data_dir), "--json"], env={"UNIRG_VIEWER_URL": VIEWER})
    assert json.loads(out.output)["drafts"][0]["viewer"] == link


def test_no_viewer_no_link(tmp_path, caplog):
    cfg, _study_uid, _series_uid, written = _drafted(tmp_path, caplog)
    assert len(written) == 1 and "viewer=" not in written[0]
    out = CliRunner().invoke(status, ["--data-dir", str(cfg.data_dir), "--json"], env={"UNIRG_VIEWER_URL": ""})
    assert "drafts" not in json.loads(out.output)


class _PluginLike:
    def __init__(self, queue, ledger, assembler, rest, config):
        self.queue, self.ledger, self.assembler, self.rest, self.config = queue, ledger, assembler, rest, config

    def status(self):
        return {"running": True}


def test_draft_route_json_carries_the_viewer_link_with_the_prior_orthanc_holds(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    queue, ledger = JobQueue(engine, lease_s=5), StudyLedger(engine)
    queue.create_schema()
    ledger.create_schema()
    create_schema(engine)
    cfg = _config(tmp_path, **{"viewer.url": VIEWER})
    assembler = Assembler(ledger, queue, cfg.assembly)
    fake = FakeOrthanc()
    prior = [make_cxr(patient_id="LNK", view="PA", instance_number=1, study_date="20230105", seed=7)]
    images = [make_cxr(patient_id="LNK", view=v, instance_number=i, study_date="20240105", seed=i)
              for i, v in enumerate(("PA", "LL"), 1)]
    for ds in images:
        fake.store(ds)
    uid = str(images[0].StudyInstanceUID)
    ChangeRecorder(ledger, assembler, fake).catch_up()
    for ds in prior:
        fake.store(ds)  # held by Orthanc; the recorder is not asked again
    sr = build_draft_sr(REPORT, MODEL, current=images, priors=prior)
    fake.store(sr)
    job = queue.claim("test-worker")
    assert queue.complete(job, {"sr_sop_instance_uid": str(sr.SOPInstanceUID),
                                "sr_series_uid": str(sr.SeriesInstanceUID),
                                "sr_sop_class_uid": str(sr.SOPClassUID), "priors": {"count": 1}})
    ledger.mark(uid, 0, "done")
    body = json.loads(Routes(_PluginLike(queue, ledger, assembler, fake, cfg)).handle(
        "GET", f"/unirg/studies/{uid}/draft").body)
    assert body["draft"]["viewer"] == study_viewer_url(VIEWER, uid, str(sr.SeriesInstanceUID),
                                                       prior_study_uid=str(prior[0].StudyInstanceUID))
    without = Routes(_PluginLike(queue, ledger, assembler, fake, _config(tmp_path)))
    assert "viewer" not in json.loads(without.handle("GET", f"/unirg/studies/{uid}/draft").body)["draft"]
    engine.dispose()
