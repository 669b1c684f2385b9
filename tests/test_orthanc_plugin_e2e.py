"""unirg's Orthanc plugin end to end: `unirg orthanc` (Debian's Orthanc 1.10 + orthanc-python 4.0 +
DICOMweb, HTTP authentication on) as subprocesses, studies in by REST and by DCMTK storescu, drafts
out through the worker, read back through the /unirg/ routes, and shown in OHIF by headless chromium.

Most tests run the *stub pipeline* (tests/dicom_peers.py: the real unirg.sr_writer SR, fixed findings
text, comparison from the prior's report): they are about the pipeline around the model.
`test_real_pipeline_demo_model_prior_report_reaches_the_prompt` runs the real pipeline and demo model.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from dicom_peers import (
    PYTHON,
    REPO,
    STUB_FINDINGS,
    dcmtk_available,
    free_port,
    make_cxr,
    save,
    service_env,
    storescu,
    storescu_profile,
    storescu_successes,
    wait_for,
    write_toml,
)
from pydicom import dcmread

from conftest import ReconnectingSession
from prior_reports import prior_in_prompt
from unirg.plugin.orthanc.server import ORTHANC_BINARY, OrthancServer
from unirg.sr_writer import RESEARCH_LABEL, ReportSections, build_reference_sr, read_report


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(ORTHANC_BINARY).exists() and dcmtk_available()),
                       reason="needs Debian's orthanc + orthanc-python and DCMTK (scripts/bootstrap.sh)"),
]

USER, PASSWORD = "unirg-test", "plugin-e2e-secret"
ARTIFACTS = REPO / "artifacts" / "orthanc-plugin"


class OrthancRun:
    """`unirg orthanc` processes on one config (free ports, auth on, stub pipeline); all stopped at teardown."""

    def __init__(self, tmp: Path, dicom_port: int | None = None, **sections: dict) -> None:
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.data = tmp / "data"
        self.http_port, self.dicom_port = free_port(), dicom_port or free_port()
        base = {
            "listener": {"data_dir": str(self.data)},
            "orthanc": {"http_port": self.http_port, "dicom_port": self.dicom_port, "aet": "UNIRG",
                        "user": USER, "stable_age_s": 2,
                        "modalities": ["sender=SENDER@127.0.0.1:104"]},  # storescu's AE: may C-STORE
            "queue": {"lease_s": 3.0, "backoff_base_s": 0.5, "backoff_max_s": 2.0, "poll_interval_s": 0.2},
            "worker": {"pipeline": "dicom_peers:make_stub_pipeline"},
            "logging": {"level": "INFO"},
        }
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        self.config = write_toml(tmp / "unirg.toml", base)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.session = ReconnectingSession((USER, PASSWORD))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, *flags: str, wait: bool = True, **env: str) -> subprocess.Popen:
        log = self.tmp / f"unirg-orthanc-{len(self.logs)}.log"
        fh = open(log, "ab")
        proc = subprocess.Popen(
            [PYTHON, "-m", "unirg.plugin.orthanc_cli", "--config", str(self.config), *flags],
            stdout=fh, stderr=subprocess.STDOUT, cwd=str(REPO),
            env=service_env(UNIRG_ORTHANC_PASSWORD=PASSWORD, **env))
        self.procs.append(proc)
        self.logs.append(log)
        if wait and "--worker-only" not in flags:
            wait_for(lambda: self._up(proc), 90, 0.2, "Orthanc with the unirg plugin")
        return proc

    def _up(self, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"unirg orthanc exited {proc.returncode}:\n{self.log_text()}")
        try:
            return self.session.get(self.url + "/unirg/status", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def orthanc_pid(self, proc: subprocess.Popen) -> int:
        """The PID of the Orthanc that `unirg orthanc` process ``proc`` started (it prints it)."""
        log = self.logs[self.procs.index(proc)]
        line = wait_for(lambda: next((l for l in log.read_text().splitlines() if "Orthanc pid " in l), None), 30, 0.1)
        return int(line.split("Orthanc pid ")[1].split()[0])

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop_all(self) -> None:
        for p in self.procs:
            self.stop(p)

    def log_text(self) -> str:
        texts = [p.read_text(errors="replace") for p in self.logs if p.exists()]
        orthanc_log = self.data / "orthanc" / "orthanc.log"
        if orthanc_log.exists():
            texts.append(orthanc_log.read_text(errors="replace")[-6000:])
        return "\n".join(texts)

    # -- REST helpers -------------------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kw)

    def upload(self, *datasets) -> None:
        for ds in datasets:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            r = self.session.post(self.url + "/instances", data=buf.getvalue(), timeout=30)
            r.raise_for_status()
            assert r.json()["Status"] in ("Success", "AlreadyStored")

    def srs(self, study_uid: str, drafts_only: bool = True) -> list:
        found = self.session.post(self.url + "/tools/find", timeout=30, json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}).json()
        out = [dcmread(io.BytesIO(self.get(f"/instances/{i}/file").content)) for i in found]
        return [ds for ds in out if not drafts_only or str(ds.SeriesDescription).startswith(RESEARCH_LABEL)]

    def wait_draft(self, study_uid: str, timeout: float = 90, revision: int = 0) -> dict:
        def ready():
            r = self.get(f"/unirg/studies/{study_uid}/draft")
            return r.json() if r.status_code == 200 and r.json()["draft"]["revision"] >= revision else None
        try:
            return wait_for(ready, timeout, 0.3, f"draft of {study_uid}")
        except TimeoutError:
            raise AssertionError(f"no draft of {study_uid}; logs:\n{self.log_text()[-8000:]}") from None

    def jobs(self, study_uid: str) -> list[dict]:
        return self.get("/unirg/jobs", params={"study": study_uid}).json()["jobs"]


@pytest.fixture
def run(tmp_path):
    r = OrthancRun(tmp_path)
    yield r
    r.stop_all()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One `unirg orthanc` (Orthanc + plugin + worker) for the tests that need no restart."""
    r = OrthancRun(tmp_path_factory.mktemp("shared"))
    r.start()
    yield r
    r.stop_all()


def patient_with_prior(patient: str, findings: str, seed: int):
    """(prior images + signed reference SR, current images) of one synthetic patient."""
    import datetime

    prior = [make_cxr(patient_id=patient, view=v, instance_number=i, study_date="20230615", seed=seed + i)
             for i, v in enumerate(("PA", "LL"), 1)]
    report = build_reference_sr(ReportSections(findings=findings, impression="Effusion."), current=prior,
                                observer_name="Radiologist^Test", content_datetime=datetime.datetime(2023, 6, 15, 12))
    current = [make_cxr(patient_id=patient, view=v, instance_number=i, study_date="20240105", seed=seed + 10 + i)
               for i, v in enumerate(("PA", "LL"), 1)]
    return prior, report, current


def check_draft(run: OrthancRun, current, prior_uid: str, prior_findings: str, tmp_path: Path) -> Path:
    """Exactly one draft SR in the study, referencing the prior, comparison from the prior's report."""
    study_uid = str(current[0].StudyInstanceUID)
    run.wait_draft(study_uid)
    time.sleep(0.5)
    (sr,) = run.srs(study_uid)
    report = read_report(sr)
    assert report.findings == STUB_FINDINGS and report.verification_flag == "UNVERIFIED"
    assert prior_findings in (report.comparison or "")
    assert {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence} == {prior_uid}
    assert {item.StudyInstanceUID for item in sr.CurrentRequestedProcedureEvidenceSequence} == {study_uid}
    path = tmp_path / f"draft-{study_uid}.dcm"
    sr.save_as(path, enforce_file_format=True)
    (job,) = run.jobs(study_uid)
    assert job["state"] == "done" and job["result"]["priors"]["study_uids"] == [prior_uid]
    return path


def test_rest_and_storescu_uploads_get_one_validated_draft_each_referencing_the_prior(shared, tmp_path, validate_sr):
    run = shared
    # Patient 1: everything by REST.
    prior1, report1, current1 = patient_with_prior("PLUG-REST", "Small right pleural effusion.", 100)
    run.upload(*prior1, report1)
    run.wait_draft(str(prior1[0].StudyInstanceUID))  # the prior, a chest study too, gets its own draft
    run.upload(*current1)
    # Patient 2: the prior by REST, the new study by DCMTK storescu into Orthanc's DICOM port.
    prior2, report2, current2 = patient_with_prior("PLUG-SCU", "Left basal atelectasis.", 200)
    run.upload(*prior2, report2)
    run.wait_draft(str(prior2[0].StudyInstanceUID))
    files = [save(ds, tmp_path / "scu" / f"{i}.dcm") for i, ds in enumerate(current2)]
    sent = storescu(files, run.dicom_port, called="UNIRG")
    assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == 2, sent.stderr

    paths = [check_draft(run, current1, str(prior1[0].StudyInstanceUID), "Small right pleural effusion.", tmp_path),
             check_draft(run, current2, str(prior2[0].StudyInstanceUID), "Left basal atelectasis.", tmp_path)]
    validate_sr(*paths)
    for prior in (prior1, prior2):  # the priors: one draft each, next to their signed report
        assert len(run.srs(str(prior[0].StudyInstanceUID))) == 1
        assert len(run.srs(str(prior[0].StudyInstanceUID), drafts_only=False)) == 2
    status = run.get("/unirg/status").json()
    assert status["queue"]["failed"] == 0 and status["plugin"]["errors"] == 0
    assert status["plugin"]["own_drafts_ignored"] >= 4  # the loop guard saw every draft come back
    logs = run.log_text()
    assert "PLUG-REST" not in logs and "Synthetic" not in logs  # no patient IDs or names in the logs


def test_loop_guard_our_sr_arriving_does_not_enqueue(shared):
    """Our draft SR stored again by someone, and a draft SR alone in a new study: no job, no study."""
    run = shared
    images = [make_cxr(patient_id="PLUG-LOOP", view=v, instance_number=i, seed=300 + i)
              for i, v in enumerate(("PA", "LL"), 1)]
    run.upload(*images)
    study_uid = str(images[0].StudyInstanceUID)
    run.wait_draft(study_uid)
    (sr,) = run.srs(study_uid)
    from unirg.sr_writer import ModelInfo, build_draft_sr

    other = [make_cxr(patient_id="PLUG-LOOP2", view="PA", seed=400)]
    lone = build_draft_sr(ReportSections("x", "y"), ModelInfo("elsewhere", "1", "ee" * 32), current=other)
    before = run.get("/unirg/status").json()["plugin"]["own_drafts_ignored"]
    run.upload(lone)
    sr.SOPInstanceUID = "2.25.1234567890123"  # a copy of our SR under a new UID (as a re-import would)
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    run.upload(sr)
    wait_for(lambda: run.get("/unirg/status").json()["plugin"]["own_drafts_ignored"] >= before + 2, 30, 0.2)
    time.sleep(3.5)  # past StableAge: the STABLE_STUDY events came and went
    assert len(run.jobs(study_uid)) == 1 and run.jobs(str(lone.StudyInstanceUID)) == []
    r = run.get(f"/unirg/studies/{lone.StudyInstanceUID}/draft")
    assert r.status_code == 404 and "has not seen" in r.json()["error"]


def test_routes_need_orthanc_credentials_and_rerun_writes_a_new_sr_version(shared):
    run = shared
    images = [make_cxr(patient_id="PLUG-ROUTES", view=v, instance_number=i, seed=500 + i)
              for i, v in enumerate(("PA", "LL"), 1)]
    run.upload(*images)
    study_uid = str(images[0].StudyInstanceUID)
    first = run.wait_draft(study_uid)["draft"]
    for path in ("/unirg", "/unirg/status", "/unirg/jobs", f"/unirg/studies/{study_uid}/draft",
                 f"/unirg/studies/{study_uid}/draft.txt"):
        assert requests.get(run.url + path, timeout=10).status_code == 401, path
        assert run.get(path).status_code == 200, path
    assert requests.post(f"{run.url}/unirg/studies/{study_uid}/rerun", timeout=10).status_code == 401
    text = run.get(f"/unirg/studies/{study_uid}/draft.txt")
    assert text.headers["Content-Type"].startswith("text/plain")
    assert text.text.startswith(RESEARCH_LABEL) and STUB_FINDINGS in text.text

    r = run.session.post(f"{run.url}/unirg/studies/{study_uid}/rerun", json={"reason": "model update"}, timeout=30)
    assert r.status_code == 200 and r.json()["revision"] == 1, r.text
    second = run.wait_draft(study_uid, revision=1)["draft"]
    assert second["sop_instance_uid"] != first["sop_instance_uid"]
    srs = {str(ds.SOPInstanceUID): ds for ds in run.srs(study_uid)}
    assert set(srs) == {first["sop_instance_uid"], second["sop_instance_uid"]}
    pred = srs[second["sop_instance_uid"]].PredecessorDocumentsSequence[0]
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sop_instance_uid"]
    assert run.get(f"/unirg/studies/{study_uid}/rerun").status_code == 405
    missing = run.get("/unirg/studies/1.2.3.4.5/draft")
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/json")
    assert [j["revision"] for j in run.jobs(study_uid)] == [1, 0]


def test_orthanc_restart_and_worker_kill9_mid_job_still_one_sr(run, tmp_path):
    orthanc_proc = run.start("--no-worker")
    marker = tmp_path / "markers"
    victim = run.start("--worker-only", UNIRG_TEST_PIPELINE_MARKER=str(marker), UNIRG_TEST_PIPELINE_DELAY_S="120")
    images = [make_cxr(patient_id="PLUG-KILL", view=v, instance_number=i, seed=600 + i)
              for i, v in enumerate(("PA", "LL"), 1)]
    run.upload(*images)
    study_uid = str(images[0].StudyInstanceUID)
    wait_for(lambda: list(marker.glob(f"{study_uid}.{victim.pid}.started")), 60, 0.1, "pipeline started")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    run.stop(orthanc_proc)  # graceful Orthanc restart while the job is leased to a dead worker
    # Meanwhile nothing was written, and the job is still "running" under the dead worker's lease.
    run.start("--no-worker")
    assert run.srs(study_uid) == []
    (job,) = run.jobs(study_uid)
    assert job["state"] == "running"
    # A study stored while no worker runs waits in the queue.
    more = [make_cxr(patient_id="PLUG-KILL2", view=v, instance_number=i, seed=700 + i)
            for i, v in enumerate(("PA", "LL"), 1)]
    run.upload(*more)
    wait_for(lambda: run.jobs(str(more[0].StudyInstanceUID)), 30, 0.2, "second study queued")
    run.start("--worker-only")
    run.wait_draft(study_uid)
    run.wait_draft(str(more[0].StudyInstanceUID))
    time.sleep(1.0)
    assert len(run.srs(study_uid)) == 1 and len(run.srs(str(more[0].StudyInstanceUID))) == 1
    (job,) = run.jobs(study_uid)
    assert job["state"] == "done" and job["attempts"] == 2


def test_studies_stored_while_the_plugin_was_down_are_caught_up_after_kill9(run, tmp_path):
    """Orthanc's change log is the source of truth: instances the plugin never saw (plugin not loaded,
    or Orthanc killed -9 right after storing) are drafted once the plugin runs again, exactly once."""
    first = run.start()
    run.stop(first)
    # Orthanc alone (no plugin) on the same storage takes a study ...
    from unirg.plugin.config import load_config
    from unirg.plugin.orthanc.launch import orthanc_config_for, orthanc_dir

    cfg = load_config(run.config, env={"UNIRG_ORTHANC_PASSWORD": PASSWORD})
    bare = OrthancServer(orthanc_config_for(cfg, plugin=False), work_dir=orthanc_dir(cfg)).start()
    missed = [make_cxr(patient_id="PLUG-MISSED", view=v, instance_number=i, seed=800 + i)
              for i, v in enumerate(("PA", "LL"), 1)]
    try:
        run.upload(*missed)
    finally:
        bare.stop()
    # ... then with the plugin: a study stored, and Orthanc killed -9 at once.
    proc = run.start()
    killed = [make_cxr(patient_id="PLUG-KILLED", view="PA", seed=900)]
    run.upload(*killed)
    os.kill(run.orthanc_pid(proc), signal.SIGKILL)
    with pytest.raises(requests.ConnectionError):
        run.get("/system")
    proc.wait(30)  # `unirg orthanc` notices and exits
    run.start()
    for ds in (missed[0], killed[0]):
        run.wait_draft(str(ds.StudyInstanceUID))
    time.sleep(3.5)  # past StableAge
    for ds in (missed[0], killed[0]):
        assert len(run.srs(str(ds.StudyInstanceUID))) == 1
        assert len(run.jobs(str(ds.StudyInstanceUID))) == 1


def test_priors_from_a_remote_modality_by_cfind_and_cmove(tmp_path, orthanc_factory, validate_sr):
    """The prior is only in a remote PACS declared in Orthanc: the worker C-FINDs and C-MOVEs it through
    Orthanc's REST API; the pulled-in prior gets no draft of its own."""
    our_dicom_port = free_port()
    pacs = orthanc_factory(aet="REMOTEPACS", modalities={"unirg": ("UNIRG", "127.0.0.1", our_dicom_port)})
    prior, report, current = patient_with_prior("PLUG-REMOTE", "Right upper lobe nodule, 8 mm.", 1000)
    for ds in (*prior, report):
        pacs.post("/instances", save(ds, tmp_path / "p" / f"{ds.SOPInstanceUID}.dcm").read_bytes())
    r = OrthancRun(tmp_path / "run", dicom_port=our_dicom_port,
                   orthanc={"modalities": [f"pacs={pacs.aet}@127.0.0.1:{pacs.dicom_port}"],
                            "priors_modalities": ["pacs"]})
    try:
        r.start()
        r.upload(*current)
        path = check_draft(r, current, str(prior[0].StudyInstanceUID), "Right upper lobe nodule, 8 mm.", tmp_path)
        validate_sr(path)
        prior_uid = str(prior[0].StudyInstanceUID)
        assert r.session.post(r.url + "/tools/lookup", data=prior_uid, timeout=10).json()  # moved in
        time.sleep(3.5)
        assert r.jobs(prior_uid) == [] and r.srs(prior_uid) == []
    finally:
        r.stop_all()


def test_real_pipeline_demo_model_prior_report_reaches_the_prompt(tmp_path, validate_sr):
    """No stub: `unirg orthanc` runs unirg.plugin.pipeline with the set-up's demo model. A testbed patient's
    prior study and its signed report are in Orthanc; the next study arrives by storescu; the prior report's
    findings reach the model's prompt (logged at debug) and the model's draft is in Orthanc, valid."""
    from unirg.plugin.pipeline import default_model_path
    from unirg.trainer.synth import generate_testbed

    model = default_model_path()
    assert (model / "config.json").is_file(), f"demo model missing at {model}: run scripts/build-demo-model.sh"
    tb = tmp_path / "testbed"
    records = generate_testbed(tb, patients=6, seed=3, size=128)
    latest = next(r for r in reversed(records) if r["prior_study_uid"])
    prior = next(r for r in records if r["study_uid"] == latest["prior_study_uid"])
    run = OrthancRun(tmp_path / "run", worker={"pipeline": "unirg.plugin.pipeline:make_process_study"},
                     model={"path": str(model)}, logging={"level": "DEBUG"})
    try:
        run.start()
        run.upload(*[dcmread(tb / img["path"]) for img in prior["images"]], dcmread(tb / prior["report_sr"]))
        run.wait_draft(prior["study_uid"], timeout=180)  # a chest study too: the model drafts it first
        syntaxes = sorted({img["transfer_syntax"] for img in latest["images"]})  # as the station wrote them
        profile = storescu_profile(tmp_path / "storescu.cfg", syntaxes)
        sent = storescu([tb / img["path"] for img in latest["images"]], run.dicom_port, called="UNIRG", extra=profile)
        assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == len(latest["images"]), \
            sent.stdout + sent.stderr

        study_uid = latest["study_uid"]
        run.wait_draft(study_uid, timeout=180)
        time.sleep(0.5)
        (sr,) = run.srs(study_uid)
        path = tmp_path / "draft.dcm"
        sr.save_as(path, enforce_file_format=True)
        validate_sr(path)
        text = read_report(sr)
        assert text.is_draft and text.observer_type == "DEVICE" and text.findings
        assert text.findings != STUB_FINDINGS
        assert "unirg-demo" in {item.ManufacturerModelName for item in sr.ContributingEquipmentSequence}
        assert {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence} == {prior["study_uid"]}
        (job,) = run.jobs(study_uid)
        assert job["state"] == "done" and job["result"]["priors"]["study_uids"] == [prior["study_uid"]]
        # the signed prior report, read by the worker from Orthanc, is in this study's prompt
        prior_findings = prior_in_prompt(dcmread(tb / prior["report_sr"]))  # as the demo model reads it
        prompts = [line for line in run.log_text().splitlines() if f"event=prompt study={study_uid}" in line]
        assert prompts, f"no prompt logged for {study_uid}:\n{run.log_text()[-6000:]}"
        assert prior_findings in " ".join(prompts[-1].split()), (prior_findings, prompts[-1])
    finally:
        run.stop_all()


# -- the browser ---------------------------------------------------------------------------------------
def test_ohif_shows_the_plugin_draft_next_to_the_study(shared, tmp_path):
    """Headless chromium on `unirg viewer`'s link for a study the plugin processed: the draft's text and
    the research banner are on the page; screenshot in artifacts/orthanc-plugin/."""
    import test_viewer as tv

    from unirg.plugin import viewer as v

    tv.require_viewer_install()
    run = shared
    images = [make_cxr(patient_id="PLUG-OHIF", view=view, instance_number=i, seed=1100 + i, size=256)
              for i, view in enumerate(("PA", "LL"), 1)]
    run.upload(*images)
    study_uid = str(images[0].StudyInstanceUID)
    draft = run.wait_draft(study_uid)["draft"]
    with v.ViewerServer(("127.0.0.1", 0), upstream=v.OrthancUpstream(run.url, USER, PASSWORD)) as viewer:
        viewer.serve_in_thread()
        url = v.study_viewer_url(viewer.url, study_uid, draft["series_uid"])
        shot = ARTIFACTS / "ohif-plugin-draft.png"

        def shown(dom):
            return STUB_FINDINGS in dom.text and any(RESEARCH_LABEL in d for d in dom.by_cy["series-description-label"])

        dom = tv.render(url, tmp_path / "profile", shot, ready=shown)
    assert STUB_FINDINGS in dom.text, f"draft text not rendered; page text: {dom.text[:2000]}"
    assert "RESEARCH ONLY" in dom.text
    assert draft["series_description"] in dom.by_cy["series-description-label"], dict(dom.by_cy)
    assert {"DX", "SR"} <= set(dom.by_cy["series-modality-label"]), dict(dom.by_cy)
    assert shot.stat().st_size > 10_000
