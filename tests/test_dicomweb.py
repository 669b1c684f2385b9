"""The DICOMweb adapter against a real Orthanc with its DICOMweb plugin, HTTP authentication on.

QIDO-RS watching, WADO-RS images and priors (report SRs included), STOW-RS write-back found again by
QIDO-RS and WADO-RS; the archive down then up (nothing lost, one SR); wrong credentials (a clear error,
no retry storm). A broken archive (truncated or hostile QIDO answers) is a tiny local http.server.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import secrets
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import orthanc_available, skip_or_fail, start_orthanc, upload
from dicom_peers import STUB_FINDINGS, free_port, make_cxr, make_stub_pipeline, read_sr_text, wait_for
from prior_reports import human_report
from unirg.plugin.assemble import Assembler, StudyLedger
from unirg.plugin.config import AssemblyConfig, Config, PriorsConfig, apply_overrides
from unirg.plugin.dicomweb.adapter import make_dicomweb_watcher, make_dicomweb_worker
from unirg.plugin.dicomweb.client import (
    MAX_PAGES,
    PAGE,
    DicomWeb,
    DicomWebAuthError,
    DicomWebBadAnswer,
    DicomWebError,
    DicomWebUnavailable,
)
from unirg.plugin.dicomweb.priors import DicomWebPriors
from unirg.plugin.dicomweb.watcher import DicomWebWatcher
from unirg.plugin.orthanc.server import DICOMWEB_PLUGIN
from unirg.plugin.queue import JobQueue, make_engine

pytestmark = pytest.mark.timeout(180)

USER = "unirg-dw"
PASSWORD = secrets.token_urlsafe(12)
SINCE = "20240101"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The archive: Debian's Orthanc with its DICOMweb plugin and HTTP basic auth on, no DICOM port, from
    conftest's one launcher (an ``OrthancServer`` on free loopback ports); ``stop()`` then ``start()``
    brings the same archive (same storage, same ports) back."""
    if orthanc_available() and not DICOMWEB_PLUGIN.exists():
        skip_or_fail(f"Orthanc's DICOMweb plugin not installed at {DICOMWEB_PLUGIN} (scripts/bootstrap.sh installs it)")
    server = start_orthanc(
        tmp_path_factory.mktemp("dicomweb"), name="unirg-dicomweb-test", users={USER: PASSWORD}, stable_age=1,
        extra={"DicomServerEnabled": False, "SaveJobs": False, "HttpThreadsCount": 8},
    )
    try:
        yield server
    finally:
        server.stop()


def client_for(server, password: str = PASSWORD) -> DicomWeb:
    return DicomWeb(server.dicomweb_url, user=USER, password=password, timeout_s=10)


def config_for(server, data_dir: Path, **extra) -> Config:
    return apply_overrides(Config(), {
        "listener.data_dir": str(data_dir), "dicomweb.url": server.dicomweb_url, "dicomweb.user": USER,
        "dicomweb.password": PASSWORD, "dicomweb.since": SINCE, "dicomweb.poll_s": 0.2,
        "dicomweb.stable_age_s": 1.0, "queue.backoff_base_s": 0.2, "queue.backoff_max_s": 0.5,
        "priors.total_timeout_s": 60, **extra,
    })


class Rig:
    """Queue, ledger, watcher and one worker on a data dir, as `unirg dicomweb` wires them."""

    def __init__(self, server, data_dir: Path, pipeline=None, **extra) -> None:
        self.config = config_for(server, data_dir, **extra)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(self.config.queue_url)
        q = self.config.queue
        self.queue = JobQueue(self.engine, lease_s=q.lease_s, max_attempts=q.max_attempts,
                              backoff_base_s=q.backoff_base_s, backoff_max_s=q.backoff_max_s)
        self.queue.create_schema()
        self.ledger = StudyLedger(self.engine)
        self.ledger.create_schema()
        self.client = client_for(server)
        self.watcher = make_dicomweb_watcher(self.config, self.client, self.ledger, self.queue)
        self.worker = make_dicomweb_worker(self.config, pipeline or make_stub_pipeline(), self.queue, self.ledger,
                                           self.client, worker_id="test-dw")

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()


def study(patient: str, date: str, views=("PA", "LL"), modality: str = "DX"):
    return [make_cxr(patient_id=patient, study_date=date, view=v, modality=modality, seed=i)
            for i, v in enumerate(views)]


def sr_uids(client: DicomWeb, study_uid: str) -> list[str]:
    from unirg.plugin.dicomweb.client import qido_value

    found = client.api.search_for_instances(study_uid, search_filters={"Modality": "SR"})
    return sorted(qido_value(i, "SOPInstanceUID") for i in found or [])


def test_draft_with_prior_report_by_stow_found_again_by_qido_and_wado(archive, tmp_path, validate_sr):
    prior = study("DW-P1", "20230105")
    report = human_report(prior, "PRIOR DW FINDINGS: small left effusion.", dt.datetime(2023, 1, 5, 12))
    current = study("DW-P1", "20240105")
    for ds in [*prior, report, *current]:
        upload(archive, ds)
    rig = Rig(archive, tmp_path / "data")
    try:
        handed = rig.watcher.poll_once()  # PA + LL are in: ready at once
        cur_uid = str(current[0].StudyInstanceUID)
        assert rig.ledger.study(cur_uid)["state"] == "queued"
        assert handed >= 1
        assert rig.worker.run_once()
        (job,) = rig.queue.find(cur_uid)
        assert job["state"] == "done", job["last_error"]
        res = job["result"]
        assert res["images"] == 2
        assert res["priors"]["count"] == 1 and res["priors"]["with_report"] == 1, res["priors"]
        assert res["priors"]["study_uids"] == [str(prior[0].StudyInstanceUID)]
        assert res["delivered"] == [f"dicomweb {archive.dicomweb_url}"]

        # Found again by QIDO-RS and WADO-RS, research-labelled, with the prior's report in it.
        uids = sr_uids(rig.client, cur_uid)
        assert uids == [res["sr_sop_instance_uid"]]
        (series_uid,) = {res["sr_series_uid"]}
        got = rig.client.instance(cur_uid, series_uid, uids[0])
        text = read_sr_text(got)
        assert STUB_FINDINGS in text and "PRIOR DW FINDINGS" in text
        assert "RESEARCH" in str(got.SeriesDescription).upper()
        validate_sr(Path(res["local_path"]))

        # Idempotent: the same SR stored again stays one instance; the watcher does not re-queue.
        rig.worker.store.store(got)
        assert sr_uids(rig.client, cur_uid) == uids
        rig.watcher.poll_once()
        assert len(rig.queue.find(cur_uid)) == 1
    finally:
        rig.close()


def test_archive_down_then_up_nothing_lost_one_sr(archive, tmp_path):
    current = study("DW-P2", "20240210")
    cur_uid = str(current[0].StudyInstanceUID)
    for ds in current:
        upload(archive, ds)
    rig = Rig(archive, tmp_path / "data")
    try:
        rig.watcher.poll_once()
        assert rig.ledger.study(cur_uid)["state"] == "queued"
        archive.stop()
        try:
            with pytest.raises(DicomWebUnavailable, match="unreachable"):
                rig.watcher.poll_once()
            while rig.worker.run_once():  # WADO-RS fails: retried with backoff, not lost
                pass  # (the module's archive holds other tests' studies too)
            (job,) = rig.queue.find(cur_uid)
            assert job["state"] == "queued" and "unreachable" in (job["last_error"] or ""), job
        finally:
            archive.start(timeout=60)
        rig.close()
        # A restart: new objects on the same database; the seen set and the watermark are there.
        rig = Rig(archive, tmp_path / "data")
        assert rig.watcher.seen_rows()[cur_uid]["state"] == "handed"
        deadline = time.monotonic() + 30
        while rig.queue.find(cur_uid)[0]["state"] != "done" and time.monotonic() < deadline:
            if not rig.worker.run_once():
                time.sleep(0.1)
        (job,) = rig.queue.find(cur_uid)
        assert job["state"] == "done", job
        assert job["attempts"] >= 2
        rig.watcher.poll_once()
        assert len(rig.queue.find(cur_uid)) == 1
        assert sr_uids(rig.client, cur_uid) == [job["result"]["sr_sop_instance_uid"]]
    finally:
        rig.close()


def test_stable_study_without_expected_views_is_drafted_after_stable_age(archive, tmp_path):
    current = study("DW-P3", "20240301", views=("PA",), modality="CR")
    cur_uid = str(current[0].StudyInstanceUID)
    upload(archive, current[0])
    rig = Rig(archive, tmp_path / "data")
    try:
        rig.watcher.poll_once()
        assert rig.ledger.study(cur_uid)["state"] == "collecting"
        time.sleep(1.2)
        rig.watcher.poll_once()
        assert rig.ledger.study(cur_uid)["state"] == "queued"
    finally:
        rig.close()


def test_wrong_credentials_clear_error_no_retry_storm(archive, tmp_path, monkeypatch):
    bad = client_for(archive, password="wrong-" + PASSWORD)
    with pytest.raises(DicomWebAuthError, match=r"refused our credentials \(HTTP 401\).*UNIRG_DICOMWEB_PASSWORD"):
        bad.probe()
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    queue = JobQueue(engine)
    queue.create_schema()
    ledger = StudyLedger(engine)
    ledger.create_schema()
    watcher = DicomWebWatcher(bad, ledger, Assembler(ledger, queue, AssemblyConfig()), since=SINCE, poll_s=0.05)
    calls = []
    real = bad.session.request
    bad.session.request = lambda *a, **kw: (calls.append(a[1]), real(*a, **kw))[1]
    stop = threading.Event()
    t = threading.Thread(target=watcher.run, args=(stop,))
    t.start()
    time.sleep(1.5)  # 30 polls' worth at poll_s 0.05
    stop.set()
    t.join(10)
    assert watcher.stats.errors == 1 and len(calls) == 1, calls
    assert "refused our credentials" in watcher.stats.last_error
    engine.dispose()

    # The command says so and exits 1 at once.
    monkeypatch.setenv("UNIRG_DICOMWEB_PASSWORD", "wrong")
    result = CliRunner().invoke(_cli(), ["dicomweb", "--url", archive.dicomweb_url, "--user", USER,
                                         "--data-dir", str(tmp_path / "d"), "--no-worker", "--once"])
    assert result.exit_code == 1, result.output
    assert "refused our credentials (HTTP 401)" in result.output


def _cli():
    from unirg.plugin.cli import main

    return main


# -- a broken archive ------------------------------------------------------------------------------

class _Broken(http.server.BaseHTTPRequestHandler):
    answers: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        body = self.answers.get(self.server.mode, b"[]")  # type: ignore[attr-defined]
        if self.server.mode == "endless":  # type: ignore[attr-defined]
            body = json.dumps([_study_json(f"1.2.3.{len(self.hits)}.{i}") for i in range(PAGE)]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def _study_json(uid: str, date: str = "20240105", count: object = 2) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}, "00080020": {"vr": "DA", "Value": [date]},
            "00201208": {"vr": "IS", "Value": [count]}, "00100020": {"vr": "LO", "Value": ["DW-X"]}}


_Broken.answers = {
    "truncated": b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"',
    "object": b'{"error": "not a list"}',
    "scalar": b'"just a string"',
    "hostile": json.dumps([
        _study_json("../../../etc/passwd"), _study_json("1." * 40 + "1"), {"0020000D": "junk"}, 17,
        {"0020000D": {"vr": "UI", "Value": [{"Alphabetic": "x"}]}},
    ]).encode(),
}


@pytest.fixture
def broken(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    httpd.mode = "truncated"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    queue = JobQueue(engine)
    queue.create_schema()
    ledger = StudyLedger(engine)
    ledger.create_schema()
    client = DicomWeb(f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web", timeout_s=5)
    watcher = DicomWebWatcher(client, ledger, Assembler(ledger, queue, AssemblyConfig()), since=SINCE)
    try:
        yield httpd, client, watcher, ledger
    finally:
        httpd.shutdown()
        engine.dispose()


def test_truncated_or_hostile_qido_answers_are_handled(broken):
    httpd, client, watcher, ledger = broken
    for mode in ("truncated", "scalar"):
        httpd.mode = mode
        with pytest.raises(DicomWebBadAnswer, match="invalid JSON|not a list"):
            watcher.poll_once()
    for mode in ("object", "hostile"):  # nothing usable: no study recorded, no path built from a bad UID
        httpd.mode = mode
        assert watcher.poll_once() == 0
        assert watcher.seen_rows() == {} and ledger.collecting() == []
    httpd.mode = "endless"  # a server that never stops paging: one search stops at MAX_PAGES pages
    _Broken.hits.clear()
    assert len(client.search_studies({"StudyDate": "20240101-"})) == MAX_PAGES * PAGE
    assert len(_Broken.hits) == MAX_PAGES
    # Priors never raise: the reason says what went wrong.
    httpd.mode = "truncated"
    cur = make_cxr(patient_id="DW-X", study_date="20240105")
    result = DicomWebPriors(client, PriorsConfig()).fetch([cur])
    assert list(result) == [] and "invalid JSON" in result.reason
    # The watcher loop survives bad answers and keeps polling at its normal pace.
    stop = threading.Event()
    watcher.poll_s = 0.05
    t = threading.Thread(target=watcher.run, args=(stop,))
    t.start()
    time.sleep(0.5)
    stop.set()
    t.join(10)
    assert watcher.stats.errors >= 3


def test_unirg_dicomweb_once_with_the_demo_model(archive, tmp_path, monkeypatch, validate_sr):
    current = study("DW-P5", "20240501")
    cur_uid = str(current[0].StudyInstanceUID)
    for ds in current:
        upload(archive, ds)
    monkeypatch.setenv("UNIRG_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.delenv("UNIRG_MODEL", raising=False)
    result = CliRunner().invoke(_cli(), [
        "dicomweb", "--url", archive.dicomweb_url, "--user", USER, "--data-dir", str(tmp_path / "d"),
        "--since", "20240501", "--demo-model", "--once"])
    assert result.exit_code == 0, result.output
    client = client_for(archive)
    try:
        (sop,) = sr_uids(client, cur_uid)
    finally:
        client.close()
    local = tmp_path / "d" / "sr" / cur_uid / f"{sop}.dcm"
    assert local.exists()
    validate_sr(local)


def test_dicomweb_destination_in_the_store_allow_list(archive, tmp_path):
    from pydicom import dcmread

    from unirg.plugin.config import DicomWebConfig, StoreConfig
    from unirg.plugin.store import DestinationNotAllowed, SRStore

    current = study("DW-P6", "20240601")
    sr = make_stub_pipeline()(current, [])
    dest = f"dicomweb+{archive.dicomweb_url}"
    store = SRStore(StoreConfig(destinations=[dest]), tmp_path / "sr",
                    dicomweb=DicomWebConfig(user=USER, password=PASSWORD))
    outcome = store.store(sr)
    assert outcome.delivered == [dest]
    assert dcmread(outcome.local_path).SOPInstanceUID == sr.SOPInstanceUID
    client = client_for(archive)
    try:
        assert sr_uids(client, str(sr.StudyInstanceUID)) == [str(sr.SOPInstanceUID)]
    finally:
        client.close()
    with pytest.raises(DestinationNotAllowed):
        store.store(sr, [f"dicomweb+{archive.url}/elsewhere"])
    with pytest.raises(Exception, match="refused our credentials"):
        SRStore(StoreConfig(destinations=[dest]), tmp_path / "sr2",
                dicomweb=DicomWebConfig(user=USER, password="wrong")).store(sr)


def test_stow_rs_receiving_endpoint_queues_pushed_studies(tmp_path):
    from unirg.plugin.dicomweb.receiver import StowReceiver
    from unirg.plugin.receive import InstanceSink

    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    queue = JobQueue(engine)
    queue.create_schema()
    ledger = StudyLedger(engine)
    ledger.create_schema()
    sink = InstanceSink(tmp_path / "data", ledger, Assembler(ledger, queue, AssemblyConfig()))
    receiver = StowReceiver(sink, user="archive", password="s3cret").start()
    url = f"http://127.0.0.1:{receiver.port}/dicom-web"
    try:
        pushed = study("DW-P7", "20240701")
        client = DicomWeb(url, user="archive", password="s3cret", timeout_s=10)
        answer = client.store(pushed)
        assert len(answer.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in answer
        uid = str(pushed[0].StudyInstanceUID)
        assert ledger.study(uid)["state"] == "queued"  # PA + LL in: ready at once, same queue as C-STORE
        assert [j["state"] for j in queue.find(uid)] == ["queued"]
        assert all((tmp_path / "data" / p).is_file() for p in ledger.image_paths(uid))

        ct = make_cxr(patient_id="DW-P7", study_date="20240701", seed=9)
        ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT: not accepted
        with pytest.raises(DicomWebError) as refused:  # every instance failed: 409, as STOW-RS says
            client.store([ct])
        assert refused.value.status == 409
        assert ledger.study(str(ct.StudyInstanceUID))["state"] == "queued"  # the CT changed nothing

        with pytest.raises(DicomWebAuthError):
            DicomWeb(url, user="archive", password="wrong", timeout_s=10).store(pushed)
        client.close()
    finally:
        receiver.stop()
        engine.dispose()


def test_pushed_study_is_drafted_and_stored_back_by_stow(archive, tmp_path):
    from unirg.plugin.dicomweb.adapter import DicomWebAdapter
    from unirg.plugin.service import Service

    port = free_port()
    cfg = config_for(archive, tmp_path / "data", **{
        "dicomweb.since": "20991231", "dicomweb.receive_port": port, "dicomweb.receive_user": "pacs",
        "dicomweb.receive_password": "push-secret"})
    service = Service(DicomWebAdapter(cfg), workers=1, process_study=make_stub_pipeline()).start()
    try:
        pushed = study("DW-P8", "20240801")
        uid = str(pushed[0].StudyInstanceUID)
        pusher = DicomWeb(f"http://127.0.0.1:{port}", user="pacs", password="push-secret", timeout_s=10)
        pusher.store(pushed)
        pusher.close()
        wait_for(lambda: (service.services.queue.find(uid) or [{}])[0].get("state") == "done", 60, 0.1, "draft")
        client = client_for(archive)
        try:
            assert len(sr_uids(client, uid)) == 1  # the SR went to the archive; the images came by push
        finally:
            client.close()
    finally:
        service.stop()
