"""`unirg viewer` end to end: a real Orthanc (Debian 1.10 + DICOMweb, HTTP auth on), the pinned OHIF
dist, and headless Debian chromium rendering a unirg draft SR next to its chest X-ray.

Needs scripts/install-viewer.sh (chromium + OHIF); without them these tests FAIL and say so.
Screenshots go to artifacts/viewer/ (git-ignored).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
from dicom_factories import make_chest_image
from orthanc_server_fixture import ORTHANC_USER, free_port, orthanc_server, upload  # noqa: F401

from unirg.plugin import viewer as v
from unirg.sr_writer import RESEARCH_LABEL, ModelInfo, ReportSections, build_draft_sr

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "artifacts" / "viewer"
CHROMIUM = "/usr/bin/chromium"
# The flags checked on these machines (shared/notes/verified-facts.md), plus a fixed window size.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,900",
]
FINDINGS = "Mild cardiomegaly without pulmonary edema. Tiny left apical pneumothorax, 5 mm."
IMPRESSION = "Tiny left apical pneumothorax. No acute airspace disease."
MODEL = ModelInfo("unirg-viewer-test", "0.0.1", "ab" * 32)


def require_viewer_install() -> None:
    """Fail (not skip) when the browser or OHIF is missing: CI must have them."""
    problems = []
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} not found")
    try:
        v.check_ohif_dist()
    except v.ViewerSetupError as exc:
        problems.append(str(exc))
    if problems:
        message = "; ".join(problems)
        if "install-viewer.sh" not in message:
            message += ": run scripts/install-viewer.sh"
        pytest.fail(message)


class _Dom(HTMLParser):
    """Visible text of a dumped DOM, and the text of each element with a data-cy attribute."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr", "path", "rect", "circle", "line", "polyline", "polygon", "use", "stop"}

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.by_cy: dict[str, list[str]] = defaultdict(list)
        self._stack: list[tuple[str, str | None, list[str]]] = []
        self._skip = 0
        self.feed(html)
        self.close()
        self.text = re.sub(r"\s+", " ", " ".join(self.parts))

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        self._stack.append((tag, dict(attrs).get("data-cy"), []))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        while self._stack:
            open_tag, cy, parts = self._stack.pop()
            if open_tag in ("script", "style"):
                self._skip -= 1
            if cy:
                self.by_cy[cy].append(re.sub(r"\s+", " ", "".join(parts)).strip())
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self._skip:
            return
        self.parts.append(data)
        for _, cy, parts in self._stack:
            if cy:
                parts.append(data)


def render(url: str, profile: Path, screenshot: Path | None = None, *, ready=lambda dom: True) -> _Dom:
    """Load ``url`` in a fresh headless chromium, dump the DOM (and a screenshot). Retries with a
    longer virtual-time budget until ``ready(dom)``; returns the last DOM."""
    dom = None
    for attempt, budget_ms in enumerate((25_000, 45_000, 90_000)):
        args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}-{attempt}",
                f"--virtual-time-budget={budget_ms}", "--dump-dom"]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            args.append(f"--screenshot={screenshot}")
        proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        dom = _Dom(proc.stdout)
        if ready(dom):
            return dom
    return dom


# -- the study in Orthanc -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def draft_study(orthanc_server):  # noqa: F811 (fixture imported above)
    """A DX PA chest study plus unirg's draft SR of it, stored in Orthanc by REST."""
    image = make_chest_image(patient_id="VIEW1", study="VIEWER", size=256)
    sr = build_draft_sr(ReportSections(FINDINGS, IMPRESSION), MODEL, current=[image])
    assert upload(orthanc_server, image)["Status"] == "Success"
    assert upload(orthanc_server, sr)["Status"] == "Success"
    return image, sr


@pytest.fixture(scope="module")
def viewer(orthanc_server):  # noqa: F811
    """`unirg viewer`'s server on a free port, proxying to the authenticated Orthanc; None when
    OHIF is not installed (the test then fails through ``installed(viewer)``, not at set-up)."""
    user, password = orthanc_server.auth
    up = v.OrthancUpstream(orthanc_server.url, user, password)
    try:
        srv = v.ViewerServer(("127.0.0.1", 0), upstream=up)
    except v.ViewerSetupError:
        yield None
        return
    with srv.serve_in_thread():
        yield srv


def installed(srv: v.ViewerServer | None) -> v.ViewerServer:
    require_viewer_install()
    assert srv is not None
    return srv


# -- the proxy ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_proxy_passes_qido_through_with_orthanc_auth(orthanc_server, draft_study, viewer):  # noqa: F811
    viewer_server = installed(viewer)
    image, sr = draft_study
    # Orthanc itself wants credentials ...
    assert requests.get(orthanc_server.dicomweb_url + "/studies", timeout=10).status_code == 401
    # ... the browser gets the studies through the proxy without any.
    r = requests.get(viewer_server.url + "dicom-web/studies", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/dicom+json")
    studies = {s["0020000D"]["Value"][0]: s for s in r.json()}
    assert image.StudyInstanceUID in studies
    # RetrieveURL points back at the proxy (Forwarded header), so OHIF stays on one origin.
    retrieve = studies[image.StudyInstanceUID]["00081190"]["Value"][0]
    assert retrieve.startswith(viewer_server.url + "dicom-web/studies/")
    # QIDO with a query, and the draft series seen as such.
    r = requests.get(viewer_server.url + "dicom-web/series",
                     params={"StudyInstanceUID": image.StudyInstanceUID, "Modality": "SR"}, timeout=30)
    assert [s["0020000E"]["Value"][0] for s in r.json()] == [sr.SeriesInstanceUID]
    assert v.find_draft_series(v.OrthancUpstream(orthanc_server.url, *orthanc_server.auth)) == [
        (image.StudyInstanceUID, sr.SeriesInstanceUID, sr.SeriesDescription)
    ]


@pytest.mark.slow
def test_app_config_points_at_the_same_origin(viewer):
    viewer_server = installed(viewer)
    r = requests.get(viewer_server.url + "app-config.js", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/javascript")
    conf = r.text
    assert "'https://" not in conf and '"https://' not in conf and "http://" not in conf
    for key, root in (("qidoRoot", "/dicom-web"), ("wadoRoot", "/dicom-web"), ("wadoUriRoot", "/wado")):
        assert f'"{key}": "{root}"' in conf
    # The dist's own app-config (AWS demo server) is never served.
    assert "cloudfront" not in conf
    r = requests.get(viewer_server.url + "viewer?StudyInstanceUIDs=1.2.3", timeout=10)
    assert r.status_code == 200 and 'src="/app-config.js"' in r.text


@pytest.mark.slow
def test_proxy_streams_large_instances(orthanc_server, viewer):  # noqa: F811
    """An 8 MB image through WADO-RS (multipart) and WADO-URI comes back byte for byte."""
    viewer_server = installed(viewer)
    big = make_chest_image(patient_id="VIEW2", study="BIG", size=2048)
    orthanc_id = upload(orthanc_server, big)["ID"]
    with orthanc_server.session() as s:
        stored = s.get(f"{orthanc_server.url}/instances/{orthanc_id}/file", timeout=30).content
    assert len(stored) > 8_000_000
    base = viewer_server.url
    path = (f"dicom-web/studies/{big.StudyInstanceUID}/series/{big.SeriesInstanceUID}"
            f"/instances/{big.SOPInstanceUID}")
    with requests.get(base + path, headers={"Accept": 'multipart/related; type="application/dicom"'},
                      stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("multipart/related")
        body = b"".join(r.iter_content(1 << 20))
    assert stored in body
    # The query exactly as OHIF writes it (Orthanc 1.10 does not decode "application%2Fdicom").
    r = requests.get(f"{base}wado?requestType=WADO&studyUID={big.StudyInstanceUID}"
                     f"&seriesUID={big.SeriesInstanceUID}&objectUID={big.SOPInstanceUID}"
                     "&contentType=application/dicom&transferSyntax=*", timeout=60)
    assert r.status_code == 200 and r.content == stored


@pytest.mark.slow
def test_proxy_passes_browser_credentials_when_it_has_none(orthanc_server):  # noqa: F811
    """Without --orthanc-user the proxy is transparent: Orthanc's challenge reaches the browser and
    the browser's Authorization reaches Orthanc."""
    require_viewer_install()
    with v.ViewerServer(("127.0.0.1", 0), upstream=v.OrthancUpstream(orthanc_server.url)) as srv:
        srv.serve_in_thread()
        r = requests.get(srv.url + "dicom-web/studies", timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        r = requests.get(srv.url + "dicom-web/studies", auth=orthanc_server.auth, timeout=10)
        assert r.status_code == 200


# -- the browser --------------------------------------------------------------------------------------
def _draft_shown(dom: _Dom) -> bool:
    return FINDINGS in dom.text and any(RESEARCH_LABEL in d for d in dom.by_cy["series-description-label"])


@pytest.mark.slow
def test_ohif_renders_the_draft_sr_series(draft_study, viewer, tmp_path):
    """The draft series only (SeriesInstanceUIDs=): its text and research banner are on the page."""
    viewer_server = installed(viewer)
    image, sr = draft_study
    url = (f"{viewer_server.url}viewer?StudyInstanceUIDs={image.StudyInstanceUID}"
           f"&SeriesInstanceUIDs={sr.SeriesInstanceUID}")
    shot = ARTIFACTS / "ohif-draft-series.png"
    dom = render(url, tmp_path / "profile", shot, ready=_draft_shown)
    assert FINDINGS in dom.text, f"findings not rendered; page text: {dom.text[:2000]}"
    assert IMPRESSION in dom.text
    assert "RESEARCH ONLY" in dom.text
    # The study browser's series description: the research banner of the draft series.
    assert sr.SeriesDescription.startswith(RESEARCH_LABEL)
    assert sr.SeriesDescription in dom.by_cy["series-description-label"], dict(dom.by_cy)
    assert dom.by_cy["series-modality-label"] == ["SR"]
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_ohif_study_link_shows_draft_next_to_the_image(draft_study, viewer, tmp_path):
    """study_viewer_url(): the whole study in the study browser (DX and the draft), the draft open."""
    viewer_server = installed(viewer)
    image, sr = draft_study
    url = v.study_viewer_url(viewer_server.url, image.StudyInstanceUID, sr.SeriesInstanceUID)
    shot = ARTIFACTS / "ohif-draft-study.png"
    dom = render(url, tmp_path / "profile", shot,
                 ready=lambda d: _draft_shown(d) and "DX" in d.by_cy["series-modality-label"])
    assert sorted(dom.by_cy["series-modality-label"]) == ["DX", "SR"], dict(dom.by_cy)
    assert sr.SeriesDescription in dom.by_cy["series-description-label"]
    assert FINDINGS in dom.text and IMPRESSION in dom.text
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_viewer_command_prints_draft_links_and_stops_on_ctrl_c(orthanc_server, draft_study):  # noqa: F811
    """`unirg viewer` as a process: prints the draft link, serves it, exits 0 on SIGINT."""
    require_viewer_install()
    image, sr = draft_study
    user, password = orthanc_server.auth
    port = free_port()
    env = {**os.environ, "UNIRG_ORTHANC_PASSWORD": password}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from unirg.plugin.viewer import viewer; viewer()",
         "--port", str(port), "--orthanc", orthanc_server.url, "--orthanc-user", user],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("draft:"):
                break
        expected = v.study_viewer_url(f"http://127.0.0.1:{port}/", image.StudyInstanceUID,
                                      sr.SeriesInstanceUID)
        assert f"draft: {expected}" in lines, lines
        assert requests.get(expected, timeout=10).status_code == 200
        r = requests.get(f"http://127.0.0.1:{port}/dicom-web/studies", timeout=10)
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
