"""Fast tests of the viewer server and the Orthanc configuration: no Orthanc, no browser, no OHIF
install (a fake dist/ in a temp folder stands in). The end-to-end ones are in test_viewer.py."""

from __future__ import annotations

import gzip
import json
import re
import socket
import urllib.parse
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from unirg.plugin.orthanc import server as osrv
from unirg.plugin import viewer as v

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "orthanc" / "orthanc.json.template"


# -- the Orthanc configuration ------------------------------------------------------------------
def test_orthanc_config_loopback_dicomweb_auth_and_python(tmp_path):
    script = tmp_path / "plugin.py"
    cfg = osrv.build_orthanc_config(
        data_dir=tmp_path / "data", http_port=18042, dicom_port=14242, aet="UNIRG_T",
        python_script=script, stable_age=3, users={"alice": "s3cret"},
        modalities={"pacs": ["PACS", "127.0.0.1", 11112]},
    )
    json.dumps(cfg)  # serialisable
    assert cfg["HttpPort"] == 18042 and cfg["DicomPort"] == 14242 and cfg["DicomAet"] == "UNIRG_T"
    assert cfg["RemoteAccessAllowed"] is False
    assert cfg["AuthenticationEnabled"] is True and cfg["RegisteredUsers"] == {"alice": "s3cret"}
    assert cfg["StorageDirectory"] == cfg["IndexDirectory"] == str(tmp_path / "data" / "db")
    assert cfg["TemporaryDirectory"] == str(tmp_path / "data" / "tmp")
    assert cfg["StableAge"] == 3
    assert cfg["DicomModalities"] == {"pacs": ["PACS", "127.0.0.1", 11112]}
    assert cfg["DicomWeb"]["Enable"] is True and cfg["DicomWeb"]["Root"] == "/dicom-web/"
    assert "Host" not in cfg["DicomWeb"]
    assert cfg["PythonScript"] == str(script)  # orthanc-python 4.0 syntax
    assert "Python" not in cfg
    assert cfg["Plugins"] == [str(osrv.DICOMWEB_PLUGIN), str(osrv.PYTHON_PLUGIN)]


def test_orthanc_config_without_users_or_script(tmp_path):
    cfg = osrv.build_orthanc_config(data_dir=tmp_path, extra={"Unirg": {"Queue": "/q"}, "StableAge": 7})
    assert cfg["AuthenticationEnabled"] is False and cfg["RegisteredUsers"] == {}
    assert "PythonScript" not in cfg and cfg["Plugins"] == [str(osrv.DICOMWEB_PLUGIN)]
    assert cfg["Unirg"] == {"Queue": "/q"} and cfg["StableAge"] == 7  # extra merged last


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"http_port": 0}, "http_port"),
        ({"http_port": 4242, "dicom_port": 4242}, "both 4242"),
        ({"aet": "A" * 17}, "aet"),
        ({"stable_age": 0}, "stable_age"),
        ({"python_script": "relative.py"}, "python_script"),
        ({"users": {"bad:name": "x"}}, "users"),
        ({"users": {"alice": ""}}, "users"),
        ({"modalities": {"pacs": ["PACS", "h"]}}, "DicomModalities"),
        ({"modalities": {"pacs": {"AET": "P", "Host": "h"}}}, "Port"),
    ],
)
def test_orthanc_config_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(osrv.OrthancConfigError, match=message):
        osrv.build_orthanc_config(data_dir=tmp_path, **kwargs)


def test_orthanc_config_needs_absolute_data_dir():
    with pytest.raises(osrv.OrthancConfigError, match="absolute"):
        osrv.build_orthanc_config(data_dir="relative/dir")


def _strip_json_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"^\s*//.*$", "", text, flags=re.M)


def test_template_documents_exactly_the_generated_config():
    """orthanc/orthanc.json.template, filled in, is what build_orthanc_config() writes."""
    filled = (
        TEMPLATE.read_text()
        .replace("@DATA_DIR@", "/srv/unirg").replace("@HTTP_PORT@", "8042")
        .replace("@DICOM_PORT@", "4242").replace("@AET@", "UNIRG")
        .replace("@PYTHON_SCRIPT@", "/opt/unirg/orthanc/plugin.py")
        .replace("@USER@", "unirg").replace("@PASSWORD@", "change-me")
    )
    assert not re.search(r"@[A-Z_]+@", filled)
    from_template = json.loads(_strip_json_comments(filled))
    built = osrv.build_orthanc_config(
        data_dir="/srv/unirg", http_port=8042, dicom_port=4242, aet="UNIRG",
        python_script="/opt/unirg/orthanc/plugin.py", users={"unirg": "change-me"},
    )
    assert from_template == built


def test_orthanc_server_reports_early_exit(tmp_path):
    """A config Orthanc cannot use: start() raises with the log, does not hang."""
    cfg = osrv.build_orthanc_config(data_dir=tmp_path / "d", http_port=18999, dicom_port=18998)
    server = osrv.OrthancServer(cfg, work_dir=tmp_path, orthanc_binary="/bin/false")
    with pytest.raises(osrv.OrthancStartError, match="exited with status 1"):
        server.start(timeout=10)
    assert not server.is_running() and server.stop() is None


# -- app-config and links -----------------------------------------------------------------------
def _config_object(js: str) -> dict:
    body = js.split("window.config = ", 1)[1].split(";\n", 1)[0]  # JSON has no raw newline in strings
    return json.loads(body)


def test_app_config_points_at_same_origin():
    cfg = _config_object(v.build_app_config())
    assert cfg["defaultDataSourceName"] == "orthanc"
    [source] = cfg["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    conf = source["configuration"]
    assert conf["qidoRoot"] == conf["wadoRoot"] == "/dicom-web"
    assert conf["wadoUriRoot"] == "/wado"
    assert conf["imageRendering"] == "wadors"
    assert conf["dicomUploadEnabled"] is False


def test_study_viewer_url():
    assert (
        v.study_viewer_url("http://127.0.0.1:3000/", "1.2.3")
        == "http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3"
    )
    # Default: the whole study (images in the study browser), the draft-review layout.
    url = v.study_viewer_url("http://h:1", "1.2.3", "1.2.3.4")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) == {
        "StudyInstanceUIDs": ["1.2.3"], "initialSeriesInstanceUID": ["1.2.3.4"],
        "hangingProtocolId": [v.DRAFT_PROTOCOL],
    }
    # With the prior: both studies, current first (OHIF's study index 0), the three-viewport layout.
    url = v.study_viewer_url("http://h:1", "1.2.3", "1.2.3.4", prior_study_uid="1.2.0")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) == {
        "StudyInstanceUIDs": ["1.2.3,1.2.0"], "initialSeriesInstanceUID": ["1.2.3.4"],
        "hangingProtocolId": [v.DRAFT_PRIOR_PROTOCOL],
    }
    url = v.study_viewer_url("http://h:1", "1.2.3", "1.2.3.4", whole_study=False)
    assert url == "http://h:1/viewer?StudyInstanceUIDs=1.2.3&SeriesInstanceUIDs=1.2.3.4"


def test_upstream_validation():
    with pytest.raises(ValueError, match="http"):
        v.OrthancUpstream("ftp://x")
    with pytest.raises(ValueError, match="both"):
        v.OrthancUpstream("http://127.0.0.1:8042", user="u")
    up = v.OrthancUpstream("http://127.0.0.1:8042/orthanc/", "u", "p")
    assert up.base_path == "/orthanc" and up.authorization == "Basic dTpw"


# -- the HTTP server on a fake dist ---------------------------------------------------------------
@pytest.fixture
def fake_dist(tmp_path):
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>OHIF</title>" + "x" * 2000)
    (dist / "app-config.js").write_text("window.config = {upstream: 'not ours'};")
    (dist / "app.bundle.js").write_text("console.log('app');" * 200)
    (dist / "x.wasm").write_bytes(b"\0asm" + bytes(10))
    (dist / "assets" / "logo.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("outside the dist")
    return dist


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(fake_dist):
    up = v.OrthancUpstream(f"http://127.0.0.1:{_dead_port()}")
    with v.ViewerServer(("127.0.0.1", 0), upstream=up, ohif_dist=fake_dist).serve_in_thread() as srv:
        yield srv


def test_static_files_spa_fallback_and_404(server):
    base = server.url
    r = requests.get(base, timeout=5)
    assert r.status_code == 200 and "<title>OHIF</title>" in r.text
    for route in ("viewer", "viewer/dicomweb", "viewer?StudyInstanceUIDs=1.2.3"):
        r = requests.get(base + route, timeout=5)
        assert r.status_code == 200 and "<title>OHIF</title>" in r.text, route
        assert r.headers["Cache-Control"] == "no-cache"
    assert requests.get(base + "missing.js", timeout=5).status_code == 404
    r = requests.get(base + "x.wasm", timeout=5)
    assert r.headers["Content-Type"] == "application/wasm" and r.content.startswith(b"\0asm")
    assert requests.get(base + "assets/logo.svg", timeout=5).headers["Content-Type"] == "image/svg+xml"
    head = requests.head(base + "app.bundle.js", timeout=5, headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == 19 * 200 and not head.content


def test_gzip_for_text_assets(server):
    r = requests.get(server.url + "app.bundle.js", timeout=5, stream=True)
    assert r.headers["Content-Encoding"] == "gzip"
    raw = r.raw.read(decode_content=False)
    assert gzip.decompress(raw) == b"console.log('app');" * 200
    assert int(r.headers["Content-Length"]) == len(raw)


def test_no_path_traversal(server):
    host, port = server.server_address[:2]
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt"):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert b"outside the dist" not in answer, path


def test_app_config_is_replaced(server):
    r = requests.get(server.url + "app-config.js", timeout=5)
    assert r.status_code == 200 and "not ours" not in r.text
    assert r.headers["Cache-Control"] == "no-store"
    assert _config_object(r.text)["dataSources"][0]["configuration"]["qidoRoot"] == "/dicom-web"


def test_read_only_and_bad_gateway(server):
    r = requests.post(server.url + "dicom-web/studies", data=b"x", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    r = requests.get(server.url + "dicom-web/studies", timeout=10)
    assert r.status_code == 502 and "unreachable" in r.text


def test_missing_dist_names_the_install_script(tmp_path):
    with pytest.raises(v.ViewerSetupError, match="install-viewer.sh"):
        v.check_ohif_dist(tmp_path / "nowhere")
    result = CliRunner().invoke(
        v.viewer, ["--port", str(_dead_port()), "--ohif-dist", str(tmp_path / "nowhere")]
    )
    assert result.exit_code != 0 and "scripts/install-viewer.sh" in result.output


def test_cli_help():
    result = CliRunner().invoke(v.viewer, ["--help"])
    assert result.exit_code == 0
    for flag in ("--port", "--orthanc", "--orthanc-user", "--orthanc-password", "--ohif-dist", "--study"):
        assert flag in result.output


def test_clean_target_refuses_what_could_leave_the_proxy_prefix():
    ok = {
        "/dicom-web/studies?PatientID=P%5E1&limit=5": ("/dicom-web/studies", "PatientID=P%5E1&limit=5"),
        "/dicom-web/studies/1.2.3/series/": ("/dicom-web/studies/1.2.3/series/", ""),
        "/dicom-web//studies": ("/dicom-web/studies", ""),
        "/wado?requestType=WADO&studyUID=1.2": ("/wado", "requestType=WADO&studyUID=1.2"),
        "/viewer": ("/viewer", ""),
        "/": ("/", ""),
    }
    for target, want in ok.items():
        assert v.clean_target(target) == want, target
    for target in ("/dicom-web/../system", "/dicom-web/%2e%2e/system", "/dicom-web/%2E%2E/system",
                   "/dicom-web/..%2Fsystem", "/dicom-web/..%2fsystem", "/dicom-web/..%5csystem",
                   "/dicom-web/..\\system", "/dicom-web/./studies", "/dicom-web/%252e%252e/system",
                   "/dicom-web/%00", "/dicom-web/%ff", "//system", "http://127.0.0.1/dicom-web/x", "*", ""):
        assert v.clean_target(target) is None, target
    assert v._under("/dicom-web/studies", v.DICOMWEB_PREFIX) and not v._under("/dicom-webx", v.DICOMWEB_PREFIX)


def test_bad_paths_are_400_before_any_proxying(server):
    host, port = server.server_address[:2]
    for path in ("/dicom-web/../system", "/dicom-web/%2e%2e/system", "/dicom-web/..%2Fsystem", "//system"):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        # 400 at once, not the 502 of trying the (dead) upstream
        assert answer.startswith(b"HTTP/1.1 400"), (path, answer[:100])
