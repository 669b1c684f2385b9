"""Security defaults against the real servers: `unirg orthanc` turns HTTP authentication on with a
generated password (printed once) that its worker uses; the state-changing /unirg/ routes need it;
only declared AE titles may C-STORE (DCMTK storescu); the viewer's DICOMweb proxy cannot be walked
out of /dicom-web onto other Orthanc routes with the credentials it injects.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests
from dicom_peers import (
    PYTHON,
    REPO,
    dcmtk_available,
    free_port,
    make_cxr,
    save,
    service_env,
    storescu,
    storescu_successes,
    wait_for,
    write_toml,
)

from unirg.plugin import viewer as v
from unirg.plugin.config import apply_overrides, load_config
from unirg.plugin.orthanc.launch import DEFAULT_USER, orthanc_config_for, orthanc_dir
from unirg.plugin.orthanc.server import ORTHANC_BINARY, OrthancServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(ORTHANC_BINARY).exists() and dcmtk_available()),
                       reason="needs Debian's orthanc + orthanc-python and DCMTK (scripts/bootstrap.sh)"),
]

DECLARED_AET = "CR_ROOM1"
_PASSWORD_LINE = re.compile(r"user '([^']+)', generated password (\S+)")


def _session(auth=None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.auth = auth
    return s


class UnirgOrthanc:
    """`unirg orthanc` as a subprocess with no credentials configured, stdout and stderr kept apart."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = write_toml(tmp / "unirg.toml", {
            "listener": {"data_dir": str(self.data)},
            "orthanc": {"http_port": self.http_port, "dicom_port": self.dicom_port, "aet": "UNIRG",
                        "stable_age_s": 1, "modalities": [f"cr1={DECLARED_AET}@127.0.0.1:104"]},
            "queue": {"poll_interval_s": 0.2},
            "worker": {"pipeline": "dicom_peers:make_stub_pipeline"},
            "logging": {"level": "INFO"},
        })
        self.out, self.err = tmp / "stdout.txt", tmp / "stderr.txt"
        env = service_env()
        for key in [k for k in env if k.startswith("UNIRG_ORTHANC_")]:
            del env[key]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([PYTHON, "-m", "unirg.plugin.orthanc_cli", "--config", str(self.config)],
                                         stdout=out, stderr=err, cwd=str(REPO), env=env)
        try:
            self.user, self.password = wait_for(self._credentials, 90, 0.2, "the generated password")
            self.session = _session((self.user, self.password))
            wait_for(self._up, 90, 0.2, "Orthanc with the unirg plugin")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def _credentials(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"unirg orthanc exited {self.proc.returncode}:\n{self.output()}")
        m = _PASSWORD_LINE.search(self.err.read_text(errors="replace"))
        return m.groups() if m else None

    def _up(self) -> bool:
        try:
            return self.session.get(self.url + "/unirg/status", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def unirg_orthanc(tmp_path_factory):
    run = UnirgOrthanc(tmp_path_factory.mktemp("secure"))
    yield run
    run.stop()


# -- HTTP authentication by default ------------------------------------------------------------------
def test_generated_password_printed_once_required_by_orthanc_and_used_by_the_worker(unirg_orthanc):
    run = unirg_orthanc
    assert run.user == DEFAULT_USER and len(run.password) >= 32
    assert run.output().count(run.password) == 1  # printed once, on stderr only
    assert run.password not in run.out.read_text()
    orthanc_json = orthanc_dir(load_config(run.config, env={})) / "orthanc.json"
    assert stat.S_IMODE(orthanc_json.stat().st_mode) == 0o600  # Orthanc's copy of the password
    assert run.password not in (orthanc_json.parent / "orthanc.log").read_text(errors="replace")

    anonymous = _session()
    for path in ("/system", "/instances", "/dicom-web/studies", "/unirg/status"):
        assert anonymous.get(run.url + path, timeout=10).status_code == 401, path
        assert run.session.get(run.url + path, timeout=10).status_code == 200, path
    assert _session((run.user, "wrong")).get(run.url + "/system", timeout=10).status_code == 401

    # The worker `unirg orthanc` started got the generated account in-process: a draft comes back.
    images = [make_cxr(patient_id="SEC-AUTH", view=view, instance_number=i, seed=10 + i)
              for i, view in enumerate(("PA", "LL"), 1)]
    for ds in images:
        path = save(ds, run.tmp / "rest" / f"{ds.SOPInstanceUID}.dcm")
        assert run.session.post(run.url + "/instances", data=path.read_bytes(), timeout=30).ok
    uid = str(images[0].StudyInstanceUID)

    def drafted():
        r = run.session.get(f"{run.url}/unirg/studies/{uid}/draft", timeout=10)
        return r.json() if r.status_code == 200 else None

    try:
        draft = wait_for(drafted, 90, 0.3, "the draft")["draft"]
    except TimeoutError:
        raise AssertionError(run.output()[-6000:]) from None
    assert draft["verification_flag"] == "UNVERIFIED"


def test_state_changing_routes_need_authentication_and_post(unirg_orthanc, tmp_path):
    run = unirg_orthanc
    rerun = f"{run.url}/unirg/studies/1.2.826.0.1.99/rerun"
    assert _session().post(rerun, timeout=10).status_code == 401
    assert run.session.get(rerun, timeout=10).status_code == 405  # a GET never re-runs
    r = run.session.post(rerun, timeout=10)
    assert r.status_code == 404 and "holds no study" in r.text  # authenticated POST reaches the route

    # The same plugin in an Orthanc with authentication off: reads work, the POST is refused.
    cfg = apply_overrides(load_config(None, env={}), {
        "listener.data_dir": str(tmp_path / "open"), "orthanc.http_port": free_port(),
        "orthanc.dicom_port": free_port(), "logging.level": "WARNING"})
    config = orthanc_config_for(cfg)
    assert config["AuthenticationEnabled"] is False
    with OrthancServer(config, work_dir=orthanc_dir(cfg)) as open_orthanc:
        s = _session()
        assert s.get(open_orthanc.url + "/unirg/status", timeout=30).status_code == 200
        r = s.post(open_orthanc.url + "/unirg/studies/1.2.826.0.1.99/rerun", timeout=30)
        assert r.status_code == 403 and "AuthenticationEnabled" in r.text, r.text
        assert s.get(open_orthanc.url + "/unirg/jobs", timeout=30).json() == {"jobs": []}


# -- C-STORE only from declared AE titles ------------------------------------------------------------
def _instances(session: requests.Session, url: str) -> int:
    return len(session.get(url + "/instances", timeout=10).json())


def test_only_declared_ae_titles_may_store(unirg_orthanc, tmp_path):
    run = unirg_orthanc
    files = [save(make_cxr(patient_id="SEC-SCU", view="PA", seed=40), tmp_path / "scu.dcm")]
    before = _instances(run.session, run.url)
    refused = storescu(files, run.dicom_port, calling="INTRUDER", called="UNIRG")
    assert storescu_successes(refused.stdout + refused.stderr) == 0, refused.stderr
    assert _instances(run.session, run.url) == before
    accepted = storescu(files, run.dicom_port, calling=DECLARED_AET, called="UNIRG")
    assert accepted.returncode == 0 and storescu_successes(accepted.stdout + accepted.stderr) == 1, accepted.stderr
    assert _instances(run.session, run.url) == before + 1


@pytest.mark.parametrize("settings, allowed", [
    ({"orthanc.check_modality_host": True}, {"NEAR"}),  # AE title and IP address
    ({}, {"NEAR", "FAR"}),  # Orthanc's default: the AE title only
    ({"orthanc.accept_unknown_scu": True}, {"NEAR", "FAR", "INTRUDER"}),  # the unsafe opt-in
])
def test_modality_host_check_and_unknown_scu_opt_in(tmp_path, settings, allowed):
    cfg = apply_overrides(load_config(None, env={}), {
        "listener.data_dir": str(tmp_path), "orthanc.http_port": free_port(), "orthanc.dicom_port": free_port(),
        "orthanc.user": "u", "orthanc.password": secrets.token_urlsafe(12),
        "orthanc.modalities": ["near=NEAR@127.0.0.1:104", "far=FAR@192.0.2.7:104"], **settings})
    files = [save(make_cxr(patient_id="SEC-HOST", view="PA", seed=50), tmp_path / "h.dcm")]
    with OrthancServer(orthanc_config_for(cfg, plugin=False), work_dir=orthanc_dir(cfg)) as orthanc:
        stored = set()
        for aet in ("NEAR", "FAR", "INTRUDER"):
            out = storescu(files, cfg.orthanc.dicom_port, calling=aet, called="UNIRG")
            if storescu_successes(out.stdout + out.stderr):
                stored.add(aet)
        assert stored == allowed
        assert _instances(orthanc.session(), orthanc.url) == 1


# -- the viewer's proxy stays inside /dicom-web and /wado ----------------------------------------------
def _raw_get(server: v.ViewerServer, target: str) -> tuple[int, bytes]:
    """GET exactly ``target`` (http.client sends it as given: no normalisation on our side)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_viewer_proxy_cannot_reach_other_orthanc_routes(unirg_orthanc, tmp_path):
    run = unirg_orthanc
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<!doctype html><title>OHIF</title>")
    system = run.session.get(run.url + "/system", timeout=10).json()
    assert system["DicomAet"] == "UNIRG"
    ds = make_cxr(patient_id="SEC-VIEW", view="PA", seed=60)
    uid = str(ds.StudyInstanceUID)
    path = save(ds, tmp_path / "view.dcm")
    assert run.session.post(run.url + "/instances", data=path.read_bytes(), timeout=30).ok
    upstream = v.OrthancUpstream(run.url, run.user, run.password)
    with v.ViewerServer(("127.0.0.1", 0), upstream=upstream, ohif_dist=dist).serve_in_thread() as viewer:
        for target in ("/dicom-web/../system", "/dicom-web/%2e%2e/system", "/dicom-web/..%2Fsystem",
                       "/dicom-web/..%2fsystem", "//system", "/wado/../system", "/dicom-web/.%2E/%2E%2E/system",
                       "/dicom-web/%252e%252e/system", "/dicom-web/..\\system", "/dicom-web/studies/../../tools/find",
                       "http://127.0.0.1/dicom-web/../system"):
            status, body = _raw_get(viewer, target)
            assert status in (400, 404), (target, status, body[:200])
            assert b"DicomAet" not in body and b"ApiVersion" not in body, target
        # What OHIF asks still works, through the proxy's credentials.
        status, body = _raw_get(viewer, f"/dicom-web/studies?StudyInstanceUID={uid}")
        assert status == 200, body[:300]
        assert [s["0020000D"]["Value"] for s in json.loads(body)] == [[uid]]
        status, body = _raw_get(viewer, f"/dicom-web/studies/{uid}/series")
        assert status == 200 and json.loads(body)[0]["0020000D"]["Value"] == [uid]
