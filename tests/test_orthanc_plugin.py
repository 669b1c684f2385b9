"""unirg's Orthanc plugin without Orthanc: the entry script under a stub ``orthanc`` module (unset
functions raise), the change-log recorder, the loop guard, re-runs and the /unirg/ routes against an
in-memory Orthanc REST API (tests/orthanc_stub.py). The real Orthanc runs in test_orthanc_plugin_e2e.py.
"""

from __future__ import annotations

import datetime
import json
import logging
import runpy
import time
from pathlib import Path

import pytest
from dicom_peers import make_cxr, wait_for
from orthanc_stub import FakeDicomInstance, FakeOrthanc, FakeOutput, dicom_bytes, stub_orthanc_module

from unirg.plugin.assemble import Assembler, StudyLedger
from unirg.plugin.config import Config, apply_overrides, load_config
from unirg.plugin.orthanc.launch import PLUGIN_SCRIPT, orthanc_config_for, plugin_settings
from unirg.plugin.orthanc.events import OrthancPlugin, config_from_orthanc
from unirg.plugin.orthanc.recorder import ChangeRecorder, RerunRefused, create_schema, rerun_study
from unirg.plugin.orthanc.rest import orthanc_instance_id, orthanc_path
from unirg.plugin.orthanc.routes import PATTERNS, Routes
from unirg.plugin.prior_policy import is_own_draft
from unirg.plugin.queue import JobQueue, make_engine
from unirg.sr_writer import RESEARCH_LABEL, ModelInfo, ReportSections, build_draft_sr

MODEL = ModelInfo("unirg-plugin-test", "0.1", "cd" * 32)


def study(patient: str, views=("PA", "LL"), date="20240105", seed=0):
    return [make_cxr(patient_id=patient, view=v, instance_number=i, study_date=date, seed=seed + i)
            for i, v in enumerate(views, 1)]


def draft_of(images, findings="Lungs clear."):
    return build_draft_sr(ReportSections(findings, "No acute disease."), MODEL, current=images)


def test_config(tmp_path: Path, **overrides) -> Config:
    base = {"listener.data_dir": str(tmp_path / "data"), "queue.poll_interval_s": 0.1,
            "orthanc.stable_age_s": 1}
    base.update(overrides)
    return apply_overrides(load_config(None, env={}), base)


test_config.__test__ = False  # a helper, not a test


@pytest.fixture
def db(tmp_path):
    """Queue, ledger, assembler on a fresh SQLite database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    queue = JobQueue(engine, lease_s=5)
    queue.create_schema()
    ledger = StudyLedger(engine)
    ledger.create_schema()
    create_schema(engine)
    cfg = test_config(tmp_path)
    assembler = Assembler(ledger, queue, cfg.assembly)
    yield queue, ledger, assembler
    engine.dispose()


# -- the entry script under a stub orthanc module ------------------------------------------------------
@pytest.fixture
def loaded(tmp_path, monkeypatch):
    """The entry script run under the stub ``orthanc`` module; yields (stub module, script globals, fake)."""
    fake = FakeOrthanc()
    cfg = test_config(tmp_path)
    section = plugin_settings(cfg)
    section["SitePackages"] = [str(tmp_path / "no-site-packages")]  # the test's sys.path is already right
    stub = stub_orthanc_module({"StableAge": 1, "Unirg": section}, fake)
    monkeypatch.setitem(__import__("sys").modules, "orthanc", stub)
    logger = logging.getLogger("unirg")  # the script sends it to Orthanc's log: restore afterwards
    saved = (logger.level, logger.propagate, list(logger.handlers))
    try:
        script = runpy.run_path(str(PLUGIN_SCRIPT), run_name="unirg_plugin")
        yield stub, script, fake
        script["plugin"].stop()
    finally:
        logger.level, logger.propagate, logger.handlers[:] = saved[0], saved[1], saved[2]


def _fire_change(stub, name, resource=""):
    (callback,) = stub.registered["change"]
    callback(getattr(stub.ChangeType, name), 0, resource)


def _start(stub, plugin):
    _fire_change(stub, "ORTHANC_STARTED")
    plugin.ensure_schema()  # the recorder thread does it too; the test reads the queue at once


def _store(stub, fake, ds) -> str:
    iid = fake.store(ds)
    (callback,) = stub.registered["stored"]
    instance = FakeDicomInstance(dicom_bytes(ds))
    callback(instance, iid)
    assert instance.data_reads == 0  # nothing read inside Orthanc's C-STORE
    return iid


def test_entry_script_only_registers_callbacks_and_routes(loaded, tmp_path):
    stub, script, fake = loaded
    assert len(stub.registered["stored"]) == 1 and len(stub.registered["change"]) == 1
    assert [p for p, _ in stub.registered["rest"]] == PATTERNS
    assert fake.calls == []  # no REST call at load time (Orthanc refuses them during initialisation)
    assert not (tmp_path / "data" / "unirg.sqlite3").exists()  # nor any database work
    with pytest.raises(AttributeError, match="not provided"):
        stub.RestApiDelete("/x")  # the stub refuses what it does not define


def test_stored_instance_callback_only_notes_and_returns(loaded, tmp_path):
    """The callback runs inside Orthanc's C-STORE: it notes the ID and wakes the recorder; it reads
    no instance data, makes no REST call, touches no database."""
    stub, script, fake = loaded
    images = study("CB-1")
    (callback,) = stub.registered["stored"]
    iids = [fake.store(ds) for ds in images]
    instances = [FakeDicomInstance(dicom_bytes(ds)) for ds in images]
    started = time.perf_counter()
    for instance, iid in zip(instances, iids):
        assert callback(instance, iid) is None
    took = time.perf_counter() - started
    assert [i.data_reads for i in instances] == [0, 0]
    assert script["plugin"].recorder.backlog == 2
    assert fake.calls == [] and not (tmp_path / "data" / "unirg.sqlite3").exists()
    assert took < 0.05, f"stored-instance callbacks took {took * 1000:.1f} ms for 2 instances"


def test_plugin_enqueues_when_views_are_in_and_when_orthanc_says_stable(loaded):
    stub, script, fake = loaded
    plugin = script["plugin"]
    _start(stub, plugin)
    both = study("EV-1")
    for ds in both:
        _store(stub, fake, ds)
    uid = str(both[0].StudyInstanceUID)
    (job,) = wait_for(lambda: plugin.queue.find(uid), 10, 0.05, "job for the PA+LL study")
    assert job["revision"] == 0 and job["payload"]["reason"] == "expected views received"

    (pa,) = study("EV-2", views=("PA",))
    _store(stub, fake, pa)
    time.sleep(0.5)
    assert plugin.queue.find(str(pa.StudyInstanceUID)) == []  # waits for the lateral or for "stable"
    fake.stable(str(pa.StudyInstanceUID))
    _fire_change(stub, "STABLE_STUDY", "ignored")
    (job,) = wait_for(lambda: plugin.queue.find(str(pa.StudyInstanceUID)), 10, 0.05, "job after STABLE_STUDY")
    assert job["payload"]["reason"].startswith("inactivity timeout")
    assert plugin.status()["stable_studies"] == 1
    assert any("event=study_ready" in text for _, text in stub.log)  # our log lines go to Orthanc's log
    _fire_change(stub, "ORTHANC_STOPPED")
    assert not plugin.status()["running"]


def test_loop_guard_our_own_draft_never_enqueues(loaded):
    """Our SR stored into a processed study, or alone into a new one: nothing recorded, nothing queued,
    and the STABLE_STUDY that follows changes nothing."""
    stub, script, fake = loaded
    plugin = script["plugin"]
    _start(stub, plugin)
    images = study("LG-1")
    for ds in images:
        _store(stub, fake, ds)
    uid = str(images[0].StudyInstanceUID)
    wait_for(lambda: plugin.queue.find(uid), 10, 0.05)
    sr = draft_of(images)
    assert is_own_draft(sr)
    _store(stub, fake, sr)
    lone = draft_of(study("LG-2", views=("PA",)))
    _store(stub, fake, lone)
    fake.stable(uid)
    fake.stable(str(lone.StudyInstanceUID))
    _fire_change(stub, "STABLE_STUDY")
    wait_for(lambda: plugin.status()["stable_studies"] == 2, 10, 0.05, "both stable events read")
    assert len(plugin.queue.find(uid)) == 1
    assert plugin.queue.find(str(lone.StudyInstanceUID)) == []
    assert plugin.ledger.study(str(lone.StudyInstanceUID)) is None
    assert [r["sop_instance_uid"] for r in plugin.ledger.instances_of(uid)] == [str(d.SOPInstanceUID) for d in images]
    assert plugin.status()["own_drafts_ignored"] == 2


def test_rest_callback_answers_through_the_sdk_output(loaded):
    stub, script, fake = loaded
    routes = dict(stub.registered["rest"])
    out = FakeOutput()
    routes["/unirg/status"](out, "/unirg/status", method="GET", get={}, headers={})
    kind, status, body, ctype = out.answer
    assert (kind, status, ctype) == ("answer", 200, "application/json")
    assert json.loads(body)["research_only"] == RESEARCH_LABEL
    out = FakeOutput()
    routes[PATTERNS[4]](out, "/unirg/studies/1.2.3/draft", method="GET", get={}, groups=["1.2.3"])
    assert out.answer[:2] == ("status", 404) and out.answer[3] == "application/json"
    assert "has not seen study 1.2.3" in json.loads(out.answer[2])["error"]
    out = FakeOutput()
    routes[PATTERNS[6]](out, "/unirg/studies/1.2.3/rerun", method="GET", get={}, groups=["1.2.3"])
    assert out.answer == ("405", 405, b"", "POST")
    out = FakeOutput()  # this Orthanc's configuration has no "AuthenticationEnabled": no re-run
    routes[PATTERNS[6]](out, "/unirg/studies/1.2.3/rerun", method="POST", get={}, groups=["1.2.3"], body=b"")
    assert out.answer[:2] == ("status", 403) and "AuthenticationEnabled" in json.loads(out.answer[2])["error"]


# -- the recorder: change log, cursor, history, bad changes ----------------------------------------------
def test_recorder_reads_back_what_the_callbacks_missed_and_resumes_from_its_cursor(db):
    queue, ledger, assembler = db
    fake = FakeOrthanc()
    images = study("RC-1")
    ids = [fake.store(ds) for ds in images]
    rec = ChangeRecorder(ledger, assembler, fake)
    rec.catch_up()
    assert rec.stats.headers_read == 2  # headers read by REST, in the recorder
    rows = ledger.instances_of(str(images[0].StudyInstanceUID))
    assert sorted(r["path"] for r in rows) == sorted(orthanc_path(i) for i in ids)
    assert orthanc_instance_id(rows[0]["path"]) in ids
    assert len(queue.find(str(images[0].StudyInstanceUID))) == 1
    cursor = rec.cursor()
    assert cursor == len(fake.changes)

    # "Restart": a new recorder on the same database reads only what came since.
    later = study("RC-2")
    for ds in later:
        fake.store(ds)
    rec2 = ChangeRecorder(ledger, assembler, fake)
    rec2.catch_up()
    assert rec2.stats.changes == 2 and rec2.cursor() == len(fake.changes)
    assert len(queue.find(str(later[0].StudyInstanceUID))) == 1
    # Reading the same changes again (crash before the cursor was saved) changes nothing.
    rec2._save_cursor(0)
    rec2.catch_up()
    assert [len(queue.find(str(s[0].StudyInstanceUID))) for s in (images, later)] == [1, 1]


def test_first_start_treats_older_changes_as_history(db):
    queue, ledger, assembler = db
    fake = FakeOrthanc()
    old = study("HI-1")
    for ds in old:
        fake.store(ds, when=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2))
    rec = ChangeRecorder(ledger, assembler, fake, started_at=datetime.datetime.now(datetime.timezone.utc))
    new = study("HI-2")
    for ds in new:
        fake.store(ds)
    rec.catch_up()
    assert queue.find(str(old[0].StudyInstanceUID)) == []
    assert len(queue.find(str(new[0].StudyInstanceUID))) == 1


def test_deleted_and_unreadable_instances_do_not_block_the_change_log(db):
    queue, ledger, assembler = db
    fake = FakeOrthanc()
    gone = fake.store(study("BD-1", views=("PA",))[0])
    fake.delete(gone)
    fake.store(b"this is not DICOM", study_uid="9.9.9", sop_uid="9.9.9.1")
    good = study("BD-2")
    for ds in good:
        fake.store(ds)
    rec = ChangeRecorder(ledger, assembler, fake)
    rec.catch_up()
    assert rec.cursor() == len(fake.changes)
    assert len(queue.find(str(good[0].StudyInstanceUID))) == 1
    assert ledger.study("9.9.9") is None


def test_retrieved_priors_are_not_drafted(db):
    from unirg.plugin.orthanc.recorder import mark_retrieved_prior

    queue, ledger, assembler = db
    fake = FakeOrthanc()
    prior = study("RP-1", date="20230101")
    mark_retrieved_prior(ledger.engine, str(prior[0].StudyInstanceUID), "1.2.3")
    for ds in prior:
        fake.store(ds)
    ChangeRecorder(ledger, assembler, fake).catch_up()
    assert ledger.study(str(prior[0].StudyInstanceUID)) is None and queue.find(str(prior[0].StudyInstanceUID)) == []


# -- re-runs and routes --------------------------------------------------------------------------------
class _PluginLike:
    def __init__(self, queue, ledger, assembler, rest):
        self.queue, self.ledger, self.assembler, self.rest = queue, ledger, assembler, rest

    def status(self):
        return {"running": True}


def _complete(queue, ledger, study_uid, sr, revision=0):
    job = queue.claim("test-worker")
    assert job.study_uid == study_uid and job.revision == revision
    result = {"sr_sop_instance_uid": str(sr.SOPInstanceUID), "sr_series_uid": str(sr.SeriesInstanceUID),
              "sr_sop_class_uid": str(sr.SOPClassUID), "priors": {"count": 0}}
    assert queue.complete(job, result)
    ledger.mark(study_uid, revision, "done")


def test_rerun_study_by_state(db):
    queue, ledger, assembler = db
    fake = FakeOrthanc()
    images = study("RR-1")
    for ds in images:
        fake.store(ds)
    uid = str(images[0].StudyInstanceUID)
    ChangeRecorder(ledger, assembler, fake).catch_up()
    with pytest.raises(RerunRefused) as queued:
        rerun_study(ledger, queue, assembler, fake, uid)
    assert queued.value.status == 409
    _complete(queue, ledger, uid, draft_of(images))
    out = rerun_study(ledger, queue, assembler, fake, uid, "new model")
    assert out["revision"] == 1 and out["state"] == "queued"
    assert [(j["revision"], j["payload"]["reason"]) for j in queue.find(uid)][-1] == (1, "new model")

    # A study Orthanc held before the plugin: recorded from Orthanc, then queued.
    before = study("RR-2", views=("PA",))
    for ds in before:
        fake.store(ds)  # the recorder never reads these changes
    out = rerun_study(ledger, queue, assembler, fake, str(before[0].StudyInstanceUID))
    assert out["revision"] == 0 and out["state"] == "queued"
    with pytest.raises(RerunRefused) as missing:
        rerun_study(ledger, queue, assembler, fake, "1.2.3.4")
    assert missing.value.status == 404


def test_routes_draft_json_text_jobs(db):
    queue, ledger, assembler = db
    fake = FakeOrthanc()
    images = study("RT-1")
    for ds in images:
        fake.store(ds)
    uid = str(images[0].StudyInstanceUID)
    ChangeRecorder(ledger, assembler, fake).catch_up()
    routes = Routes(_PluginLike(queue, ledger, assembler, fake), authentication=True)
    r = routes.handle("GET", f"/unirg/studies/{uid}/draft")
    assert r.status == 404 and json.loads(r.body)["state"] == "queued"
    sr = draft_of(images, findings="Right lower lobe opacity.")
    fake.store(sr)
    _complete(queue, ledger, uid, sr)
    r = routes.handle("GET", f"/unirg/studies/{uid}/draft")
    assert r.status == 200
    body = json.loads(r.body)
    assert body["draft"]["findings"] == "Right lower lobe opacity."
    assert body["draft"]["verification_flag"] == "UNVERIFIED" and body["state"] == "done"
    # by Orthanc's study ID too, and as text
    sid = next(iter(fake.studies))
    text = routes.handle("GET", f"/unirg/studies/{sid}/draft.txt")
    assert text.status == 200 and text.content_type.startswith("text/plain")
    assert text.body.decode().startswith(RESEARCH_LABEL) and "Right lower lobe opacity." in text.body.decode()
    assert routes.handle("GET", f"/unirg/studies/{uid}/draft", {"format": "text"}).body == text.body
    jobs = json.loads(routes.handle("GET", "/unirg/jobs", {"state": "done"}).body)["jobs"]
    assert [j["study_uid"] for j in jobs] == [uid]
    assert routes.handle("GET", "/unirg/jobs", {"limit": "x"}).status == 400
    assert routes.handle("GET", f"/unirg/jobs/{jobs[0]['id']}").status == 200
    assert routes.handle("GET", "/unirg/jobs/999").status == 404
    assert routes.handle("GET", "/unirg/nothing").status == 404
    assert routes.handle("POST", f"/unirg/studies/{uid}/rerun", body=b"not json").status == 400
    assert routes.handle("GET", f"/unirg/studies/{uid}/rerun").status == 405  # no state change by GET
    # Orthanc without HTTP authentication: reads still work, the re-run is refused and changes nothing.
    open_routes = Routes(_PluginLike(queue, ledger, assembler, fake))
    assert open_routes.handle("GET", f"/unirg/studies/{uid}/draft").status == 200
    refused = open_routes.handle("POST", f"/unirg/studies/{uid}/rerun")
    assert refused.status == 403 and "AuthenticationEnabled" in json.loads(refused.body)["error"]
    assert [j["revision"] for j in queue.find(uid)] == [0]
    assert routes.handle("POST", f"/unirg/studies/{uid}/rerun").status == 200
    assert sorted(j["revision"] for j in queue.find(uid)) == [0, 1]


# -- configuration -------------------------------------------------------------------------------------
def test_config_from_orthanc_and_orthanc_config_for(tmp_path):
    cfg = test_config(tmp_path, **{"orthanc.user": "unirg", "orthanc.password": "s3cret",
                                   "orthanc.modalities": ["pacs=PACS@10.0.0.5:104"],
                                   "assembly.expected_views": ["frontal"]})
    orthanc_cfg = orthanc_config_for(cfg)
    assert orthanc_cfg["PythonScript"] == str(PLUGIN_SCRIPT) and PLUGIN_SCRIPT.is_file()
    assert orthanc_cfg["RegisteredUsers"] == {"unirg": "s3cret"} and orthanc_cfg["AuthenticationEnabled"]
    assert orthanc_cfg["DicomModalities"] == {"pacs": ["PACS", "10.0.0.5", 104]}
    assert orthanc_cfg["RemoteAccessAllowed"] is False
    section = orthanc_cfg["Unirg"]
    assert "s3cret" not in json.dumps(section)
    assert section["Settings"]["listener"]["data_dir"] == str(tmp_path / "data")
    assert section["SitePackages"] and all(Path(p).is_absolute() for p in section["SitePackages"])
    back = config_from_orthanc({**orthanc_cfg, "StableAge": 7}, env={"UNIRG_ORTHANC_PASSWORD": "x"})
    assert back.assembly.expected_views == ["frontal"] and back.orthanc.stable_age_s == 7
    assert back.queue_url == cfg.queue_url and back.orthanc.auth is None
    without = orthanc_config_for(cfg, plugin=False)
    assert "PythonScript" not in without and "Unirg" not in without
    # An existing Orthanc: a unirg.toml named in the "Unirg" section.
    toml = tmp_path / "unirg.toml"
    toml.write_text('[assembly]\nlate_policy = "rerun"\n')
    assert config_from_orthanc({"Unirg": {"ConfigFile": str(toml)}}, env={}).assembly.late_policy == "rerun"


def test_plugin_backstop_timeout_follows_stable_age(tmp_path):
    cfg = test_config(tmp_path, **{"orthanc.stable_age_s": 10})
    plugin = OrthancPlugin(cfg, FakeOrthanc())
    assert plugin.assembly.inactivity_timeout_s == 20.0
    plugin.stop()


# -- priors through Orthanc's REST API (fake client) -----------------------------------------------------
class _FakeClient:
    """OrthancClient's calls used by OrthancPriors, over a dict of studies."""

    url = "http://fake"

    def __init__(self, studies):
        self.studies = studies  # orthanc id -> (PatientID, StudyInstanceUID, StudyDate, [datasets])
        self.loaded = []

    def post_json(self, path, body, **kw):
        assert path == "/tools/find" and body["Query"]["PatientID"] == "P*1"
        return [{"ID": sid, "MainDicomTags": {"StudyInstanceUID": uid, "StudyDate": date, "StudyTime": "100000"},
                 "PatientMainDicomTags": {"PatientID": pid}} for sid, (pid, uid, date, _) in self.studies.items()]

    def get_json(self, path, **kw):
        sid = path.split("/")[2]
        return [{"MainDicomTags": {"Modality": "DX"}, "Instances": [f"{sid}/{i}" for i in range(len(self.studies[sid][3]))]}]

    def instance(self, iid):
        sid, i = iid.split("/")
        self.loaded.append(sid)
        return self.studies[sid][3][int(i)]


def test_orthanc_priors_keep_exact_patient_id_matches_only(tmp_path):
    """Orthanc's /tools/find treats '*' in a PatientID as a wildcard: another patient's study must
    never become a prior."""
    from unirg.plugin.config import PriorsConfig
    from unirg.plugin.priors.orthanc import OrthancPriors

    mine = study("P*1", views=("PA",), date="20230101")
    other = study("PX1", views=("PA",), date="20231201", seed=50)  # more recent, but someone else
    client = _FakeClient({"a": ("P*1", str(mine[0].StudyInstanceUID), "20230101", mine),
                          "b": ("PX1", str(other[0].StudyInstanceUID), "20231201", other)})
    current = study("P*1", views=("PA",), date="20240105", seed=90)
    priors = OrthancPriors(client, PriorsConfig(max_priors=2)).fetch(current)
    assert priors.reason is None and [p.study_uid for p in priors] == [str(mine[0].StudyInstanceUID)]
    assert client.loaded == ["a"]


# -- credentials and C-STORE defaults of `unirg orthanc` ---------------------------------------------------
def test_with_credentials_generates_only_when_nothing_is_given(tmp_path):
    from unirg.plugin.orthanc.launch import DEFAULT_USER, with_credentials

    given, generated = with_credentials(test_config(tmp_path, **{"orthanc.user": "alice", "orthanc.password": "pw"}))
    assert (given.orthanc.user, given.orthanc.password, generated) == ("alice", "pw", False)
    env_only, generated = with_credentials(test_config(tmp_path, **{"orthanc.password": "from-env"}))
    assert (env_only.orthanc.user, env_only.orthanc.password, generated) == (DEFAULT_USER, "from-env", False)
    made, generated = with_credentials(test_config(tmp_path))
    again, _ = with_credentials(test_config(tmp_path))
    assert generated and made.orthanc.user == DEFAULT_USER and len(made.orthanc.password) >= 32
    assert made.orthanc.password != again.orthanc.password
    cfg = orthanc_config_for(made)
    assert cfg["AuthenticationEnabled"] is True and cfg["RegisteredUsers"] == {DEFAULT_USER: made.orthanc.password}
    assert cfg["DicomAlwaysAllowStore"] is False and cfg["DicomCheckModalityHost"] is False


def test_write_config_generates_a_password_once_in_a_0600_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from unirg.plugin.orthanc_cli import orthanc as orthanc_command

    for key in ("UNIRG_ORTHANC_USER", "UNIRG_ORTHANC_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "orthanc.json"
    result = CliRunner().invoke(orthanc_command, ["--write-config", str(out), "--data-dir", str(tmp_path / "d"),
                                                  "--modality", "cr1=CR_ROOM1@192.0.2.5:104"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert (out.stat().st_mode & 0o777) == 0o600
    assert written["AuthenticationEnabled"] is True
    ((user, password),) = written["RegisteredUsers"].items()
    assert user == "unirg" and result.stderr.count(password) == 1 and password not in result.stdout
    assert written["DicomAlwaysAllowStore"] is False
    assert written["DicomModalities"] == {"cr1": ["CR_ROOM1", "192.0.2.5", 104]}
