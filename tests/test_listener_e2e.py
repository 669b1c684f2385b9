"""End to end against real peers: DCMTK storescu -> `unirg listen` (a subprocess) -> queue -> worker
-> SR C-STOREd into a real Orthanc, with priors from that Orthanc.

The worker runs the *stub pipeline* (tests/dicom_peers.py: real unirg.sr_writer SR, fixed findings text,
comparison from the prior report): these tests are about the pipeline around the model, not a model.
Crash tests kill -9 the worker and the listener; PACS-down tests stop Orthanc and bring it back.
"""

import io
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_peers import (
    PYTHON,
    REPO,
    STUB_FINDINGS,
    dcmtk_available,
    free_port,
    make_cxr,
    postgres_database,
    save,
    service_env,
    start_service,
    stop_service,
    storescu,
    storescu_profile,
    storescu_successes,
    wait_for,
    write_study,
    write_toml,
)
from conftest import require_postgres
from prior_reports import prior_in_prompt
from unirg.trainer.synth import generate_testbed


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dcmtk_available(), reason="needs DCMTK (scripts/bootstrap.sh)"),
]

PATIENT = "E2E-1"
PRIOR_FINDINGS = "Small right pleural effusion, unchanged from before."


class Run:
    """One test's service processes, config and logs; everything is stopped at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.port = free_port()
        self.data = tmp_path / "data"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def config(self, **sections) -> Path:
        base = {
            "listener": {"ae_title": "UNIRG", "host": "127.0.0.1", "port": self.port, "data_dir": str(self.data)},
            "assembly": {"inactivity_timeout_s": 3.0, "sweep_interval_s": 0.2},
            "queue": {"lease_s": 10.0, "backoff_base_s": 0.5, "backoff_max_s": 2.0, "poll_interval_s": 0.2},
            "worker": {"pipeline": "dicom_peers:make_stub_pipeline"},
            "priors": {"connect_timeout_s": 2.0, "acse_timeout_s": 3.0, "dimse_timeout_s": 10.0},
            "store": {"connect_timeout_s": 2.0, "acse_timeout_s": 3.0},
            "logging": {"level": "INFO"},
        }
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        return write_toml(self.tmp / f"unirg-{len(self.logs)}.toml", base)

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        log = self.tmp / f"service-{len(self.logs)}-{args[0]}.log"
        proc = start_service(args, log, **env)
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def listen(self, config: Path, *flags: str, **env: str) -> subprocess.Popen:
        proc = self.start("listen", "--config", str(config), *flags, **env)
        wait_for(lambda: self._echo_ok(proc), 60, 0.2, "listener up")
        return proc

    def _echo_ok(self, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"listener exited {proc.returncode}:\n{self.log_text()}")
        return subprocess.run(["echoscu", "-aec", "UNIRG", "127.0.0.1", str(self.port)],
                              capture_output=True, timeout=30).returncode == 0

    def status(self, config: Path) -> dict:
        out = subprocess.run([PYTHON, "-m", "unirg.plugin.listen_cli", "status", "--config", str(config), "--json"],
                             capture_output=True, text=True, env=service_env(), cwd=str(REPO), timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self) -> None:
        for p in self.procs:
            stop_service(p)


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    yield r
    r.stop()


def jobs_of(data: Path, study_uid: str) -> list[dict]:
    con = sqlite3.connect(f"file:{data / 'unirg.sqlite3'}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM unirg_jobs WHERE study_uid = ? ORDER BY id", (study_uid,))]
    finally:
        con.close()


def upload_prior_with_report(orthanc, tmp_path: Path, patient=PATIENT) -> str:
    import datetime

    from unirg.sr_writer import ReportSections, build_reference_sr

    paths = write_study(tmp_path / "prior", patient_id=patient, study_date="20230615", seed=11)
    images = [dcmread(p) for p in paths]
    sr = build_reference_sr(ReportSections(findings=PRIOR_FINDINGS, impression="Effusion."), current=images,
                            observer_name="Radiologist^Test", content_datetime=datetime.datetime(2023, 6, 15, 12))
    orthanc.upload(*paths, save(sr, tmp_path / "prior" / "report.dcm"))
    return str(images[0].StudyInstanceUID)


def sr_from_orthanc(orthanc, study_uid: str, timeout: float = 90) -> list:
    uids = wait_for(lambda: orthanc.sr_instances(study_uid), timeout, 0.2, f"SR of {study_uid} in Orthanc")
    return [dcmread(io.BytesIO(orthanc.file(u))) for u in uids]


def test_pipeline_storescu_to_validated_sr_in_orthanc_with_prior_report(
    run, orthanc_factory, tmp_path, validate_sr,
):
    orthanc = orthanc_factory(modalities={"unirg": ("UNIRG", "127.0.0.1", run.port)})
    prior_uid = upload_prior_with_report(orthanc, tmp_path)
    cfg = run.config(priors={"pacs": orthanc.peer}, store={"destinations": [orthanc.peer]})
    run.listen(cfg)
    current = write_study(tmp_path / "current", patient_id=PATIENT, study_date="20240105", seed=21)
    study_uid = str(dcmread(current[0]).StudyInstanceUID)
    sent = storescu(current, run.port)
    assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == 2

    (sr,) = sr_from_orthanc(orthanc, study_uid)
    from unirg.sr_writer import read_report

    report = read_report(sr)
    assert report.findings == STUB_FINDINGS
    assert PRIOR_FINDINGS in report.comparison  # the prior report travelled PACS -> priors -> pipeline -> SR
    referenced = {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence}
    assert referenced == {prior_uid}
    path = tmp_path / "from_orthanc.dcm"
    sr.save_as(path, enforce_file_format=True)
    validate_sr(path)

    (job,) = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 30, 0.2)
    result = json.loads(job["result"])
    assert result["priors"]["study_uids"] == [prior_uid] and result["priors"]["reason"] is None
    assert Path(result["local_path"]).exists()  # the local copy
    assert run.status(cfg)["queue"]["done"] == 1
    logs = run.log_text()
    assert f"event=sr_written job={job['id']} study={study_uid}" in logs
    assert "Synthetic" not in logs and PATIENT not in logs  # no patient names (nor IDs) in the logs


def test_pipeline_worker_killed_mid_job_then_restarted_stores_exactly_one_sr(run, orthanc_factory, tmp_path):
    orthanc = orthanc_factory()
    cfg = run.config(store={"destinations": [orthanc.peer]}, queue={"lease_s": 2.0})
    run.listen(cfg, "--no-worker")
    marker = tmp_path / "markers"
    victim = run.start("worker", "--config", str(cfg), UNIRG_TEST_PIPELINE_MARKER=str(marker),
                       UNIRG_TEST_PIPELINE_DELAY_S="120")
    paths = write_study(tmp_path / "current", patient_id=PATIENT, seed=31)
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    assert storescu(paths, run.port).returncode == 0
    wait_for(lambda: list(marker.glob(f"{study_uid}.{victim.pid}.started")), 60, 0.1, "pipeline started")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    assert orthanc.sr_instances(study_uid) == []
    assert jobs_of(run.data, study_uid)[0]["state"] == "running"  # leased to a dead worker

    run.start("worker", "--config", str(cfg))
    sr_from_orthanc(orthanc, study_uid)
    (job,) = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 30, 0.2)
    assert job["attempts"] == 2
    time.sleep(1.0)
    assert len(orthanc.sr_instances(study_uid)) == 1

    # A crash after the C-STORE but before "done" was recorded: the job runs again, the PACS still holds one SR.
    con = sqlite3.connect(run.data / "unirg.sqlite3", timeout=30)
    con.execute("UPDATE unirg_jobs SET state = 'queued', not_before = 0 WHERE id = ?", (job["id"],))
    con.commit()
    con.close()
    instances_before = orthanc.instance_count()
    wait_for(lambda: [(j["attempts"], j["state"]) for j in jobs_of(run.data, study_uid)] == [(3, "done")],
             60, 0.2, "re-run of the job")
    assert len(orthanc.sr_instances(study_uid)) == 1 and orthanc.instance_count() == instances_before


def test_listener_killed_mid_association_sender_sees_failure_nothing_half_written_processed(
    run, orthanc_factory, tmp_path,
):
    orthanc = orthanc_factory()
    cfg = run.config(store={"destinations": [orthanc.peer]}, assembly={"inactivity_timeout_s": 120.0})
    listener = run.listen(cfg, "--no-worker")
    study_uid = "1.2.826.0.1.3680043.10.70"
    files = [save(make_cxr(patient_id=PATIENT, study_uid=study_uid, view="LL" if i == 23 else "PA", size=1024,
                           seed=i, instance_number=i + 1), tmp_path / "big" / f"{i:02d}.dcm") for i in range(24)]
    db = run.data / "unirg.sqlite3"

    def stored() -> int:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT count(*) FROM unirg_instances WHERE study_uid = ?", (study_uid,)).fetchone()[0]
        finally:
            con.close()

    sender = subprocess.Popen(["storescu", "-v", "-aec", "UNIRG", "127.0.0.1", str(run.port), *map(str, files)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: stored() >= 3, 60, 0.01, "a few instances stored")
    os.kill(listener.pid, signal.SIGKILL)
    listener.wait(10)
    out, _ = sender.communicate(timeout=60)
    successes = storescu_successes(out)
    assert sender.returncode != 0 and successes < len(files), out  # the sender saw the failure
    recorded = stored()
    assert successes <= recorded <= successes + 1  # at most the one in flight was durable but unanswered
    for path in (run.data / "instances" / study_uid).glob("*.dcm"):
        ds = dcmread(path)
        assert len(ds.PixelData) == 1024 * 1024 * 2  # every visible file is complete (temp files are hidden)

    # Restart: leftovers removed, the sender resends everything, the study is processed whole.
    run.start("listen", "--config", str(cfg))
    wait_for(lambda: run._echo_ok(run.procs[-1]), 60, 0.2)
    assert not list(run.data.rglob("*.tmp-*"))
    again = storescu(files, run.port)
    assert again.returncode == 0 and storescu_successes(again.stdout + again.stderr) == len(files)
    sr_from_orthanc(orthanc, study_uid)
    (job,) = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 60, 0.2)
    assert json.loads(job["result"])["images"] == len(files)


def test_pipeline_pacs_down_during_write_back_is_retried_and_delivered_when_back(
    run, orthanc_factory, tmp_path,
):
    orthanc = orthanc_factory()
    orthanc.stop()  # same ports and storage come back with start()
    cfg = run.config(store={"destinations": [orthanc.peer]}, queue={"max_attempts": 50})
    run.listen(cfg)
    paths = write_study(tmp_path / "current", patient_id=PATIENT, seed=41)
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    assert storescu(paths, run.port).returncode == 0
    job = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["attempts"] >= 2], 60, 0.2)[0]
    assert job["last_error"].startswith("write-back failed: destination ORTHANC@")
    assert "unreachable" in job["last_error"] and job["state"] in ("queued", "running")
    assert run.status(cfg)["queue"]["failed"] == 0
    orthanc.start()
    (sr,) = sr_from_orthanc(orthanc, study_uid)
    (job,) = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 30, 0.2)
    assert job["attempts"] >= 2
    assert "event=job_retry" in run.log_text()


def test_pipeline_pacs_down_during_priors_drafts_without_priors_and_says_so(run, orthanc_factory, tmp_path):
    orthanc = orthanc_factory()
    dead_pacs = f"DEADPACS@127.0.0.1:{free_port()}"
    cfg = run.config(priors={"pacs": dead_pacs}, store={"destinations": [orthanc.peer]})
    run.listen(cfg)
    paths = write_study(tmp_path / "current", patient_id=PATIENT, seed=51)
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    assert storescu(paths, run.port).returncode == 0
    (sr,) = sr_from_orthanc(orthanc, study_uid)
    from unirg.sr_writer import read_report

    assert f"No prior available: PACS {dead_pacs} unreachable" in read_report(sr).comparison
    (job,) = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 30, 0.2)
    assert json.loads(job["result"])["priors"]["count"] == 0
    assert "unreachable" in json.loads(job["result"])["priors"]["reason"]
    assert f"event=draft_without_priors job={job['id']} study={study_uid}" in run.log_text()


def test_pipeline_two_workers_on_postgresql_process_20_studies_once_each(run, orthanc_factory, tmp_path):
    require_postgres()
    orthanc = orthanc_factory()
    with postgres_database() as url:
        cfg = run.config(store={"destinations": [orthanc.peer]}, queue={"url": url})
        run.listen(cfg, "--no-worker")
        workers = [run.start("worker", "--config", str(cfg), "--worker-id", f"w{i}") for i in range(2)]
        files, studies = [], []
        for i in range(20):
            paths = write_study(tmp_path / f"s{i}", patient_id=f"PG-{i}", seed=100 + i)
            files += paths
            studies.append(str(dcmread(paths[0]).StudyInstanceUID))
        sent = storescu(files, run.port)
        assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == 40

        def all_done() -> bool:
            return run.status(cfg)["queue"]["done"] == 20

        wait_for(all_done, 240, 1.0, "20 studies done")
        for uid in studies:
            assert len(orthanc.sr_instances(uid)) == 1
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        with engine.connect() as c:
            rows = c.execute(text("SELECT study_uid, attempts, lease_owner, state FROM unirg_jobs")).all()
        engine.dispose()
        assert sorted(r.study_uid for r in rows) == sorted(studies)
        assert {r.attempts for r in rows} == {1} and {r.state for r in rows} == {"done"}
        starts = [line for line in run.log_text().splitlines() if "event=job_start" in line]
        assert len(starts) == 20  # each study processed exactly once, across both workers
        for w in workers:
            stop_service(w)
        run.stop()


def test_pipeline_late_instance_with_rerun_policy_writes_a_new_sr_version(
    run, orthanc_factory, tmp_path, validate_sr,
):
    orthanc = orthanc_factory()
    cfg = run.config(store={"destinations": [orthanc.peer]}, assembly={"late_policy": "rerun"})
    run.listen(cfg)
    paths = write_study(tmp_path / "current", patient_id=PATIENT, seed=61)
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    assert storescu(paths, run.port).returncode == 0
    (first,) = sr_from_orthanc(orthanc, study_uid)
    late = save(make_cxr(patient_id=PATIENT, study_uid=study_uid, view="AP", seed=62, instance_number=3),
                tmp_path / "late.dcm")
    assert storescu([late], run.port).returncode == 0
    srs = wait_for(lambda: len(orthanc.sr_instances(study_uid)) == 2 and sr_from_orthanc(orthanc, study_uid), 60, 0.2)
    (second,) = [s for s in srs if s.SOPInstanceUID != first.SOPInstanceUID]
    assert second.SeriesInstanceUID != first.SeriesInstanceUID
    ref = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert len(second.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 3  # PA, LL, AP
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    validate_sr(path)
    assert [j["revision"] for j in jobs_of(run.data, study_uid)] == [0, 1]


def test_pipeline_testbed_patient_latest_study_gets_a_draft_comparing_with_the_signed_prior(
    run, orthanc_factory, tmp_path,
):
    """The synthetic testbed: Orthanc holds a patient's earlier studies and their signed report SRs; the
    latest study arrives by storescu; the draft compares with the prior the testbed names."""
    from unirg.sr_writer import read_report

    tb = tmp_path / "testbed"
    records = generate_testbed(tb, patients=6, seed=3, size=128)
    by_patient: dict[str, list[dict]] = {}
    for rec in records:
        by_patient.setdefault(rec["patient_id"], []).append(rec)
    history = next(v for v in by_patient.values() if len(v) >= 2 and v[-1]["prior_study_uid"])
    *earlier, latest = sorted(history, key=lambda r: (r["study_date"], r["study_time"]))
    orthanc = orthanc_factory()
    for rec in earlier:
        orthanc.upload(*[tb / img["path"] for img in rec["images"]], tb / rec["report_sr"])
    cfg = run.config(priors={"pacs": orthanc.peer}, store={"destinations": [orthanc.peer]})
    run.listen(cfg)
    syntaxes = sorted({img["transfer_syntax"] for img in latest["images"]})  # sent as the station wrote them
    profile = storescu_profile(tmp_path / "storescu.cfg", syntaxes)
    sent = storescu([tb / img["path"] for img in latest["images"]], run.port, extra=profile)
    assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == len(latest["images"])

    (sr,) = sr_from_orthanc(orthanc, latest["study_uid"])
    prior = next(r for r in earlier if r["study_uid"] == latest["prior_study_uid"])
    prior_report = read_report(dcmread(tb / prior["report_sr"]))
    assert prior_report.findings and prior_report.findings in read_report(sr).comparison
    assert {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence} == {prior["study_uid"]}


def test_model_demo_model_drafts_a_testbed_study_with_the_prior_from_orthanc(run, orthanc_factory, tmp_path,
                                                                             validate_sr):
    """The real pipeline and the set-up's demo model (no stub): storescu in, the prior and its signed
    report pulled from Orthanc into the prompt, the model's draft back in Orthanc as a valid SR."""
    from unirg.plugin.pipeline import default_model_path
    from unirg.sr_writer import read_report

    model = default_model_path()
    assert (model / "config.json").is_file(), f"demo model missing at {model}: run scripts/build-demo-model.sh"
    tb = tmp_path / "testbed"
    records = generate_testbed(tb, patients=6, seed=3, size=128)
    latest = next(r for r in reversed(records) if r["prior_study_uid"])
    prior = next(r for r in records if r["study_uid"] == latest["prior_study_uid"])
    orthanc = orthanc_factory()
    orthanc.upload(*[tb / img["path"] for img in prior["images"]], tb / prior["report_sr"])
    cfg = run.config(priors={"pacs": orthanc.peer}, store={"destinations": [orthanc.peer]},
                     worker={"pipeline": "unirg.plugin.pipeline:make_process_study"},
                     model={"path": str(model)}, logging={"level": "DEBUG"})
    run.listen(cfg)
    profile = storescu_profile(tmp_path / "storescu.cfg", sorted({i["transfer_syntax"] for i in latest["images"]}))
    sent = storescu([tb / img["path"] for img in latest["images"]], run.port, extra=profile)
    assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == len(latest["images"])

    (sr,) = sr_from_orthanc(orthanc, latest["study_uid"])
    path = tmp_path / "draft.dcm"
    sr.save_as(path, enforce_file_format=True)
    validate_sr(path)
    text = read_report(sr)
    assert text.is_draft and text.observer_type == "DEVICE" and text.findings
    assert "unirg-demo" in {item.ManufacturerModelName for item in sr.ContributingEquipmentSequence}
    assert {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence} == {prior["study_uid"]}
    # the signed prior report reached the model's prompt, as the demo model reads it (its prior-report style)
    assert prior_in_prompt(dcmread(tb / prior["report_sr"])) in " ".join(run.log_text().split())
