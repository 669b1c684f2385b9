"""`unirg viewer` end to end: a real Orthanc (Debian 1.10 + DICOMweb, HTTP auth on), the pinned OHIF
dist, and headless Debian chromium rendering a unirg draft SR next to its chest X-ray.

Needs scripts/install-viewer.sh (chromium + OHIF); without them these tests FAIL and say so.
Screenshots go to $UNIRG_TEST_ARTIFACTS/viewer/, else artifacts/viewer/ (git-ignored).
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
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
from conftest import ORTHANC_USER, upload
from dicom_peers import free_port

from unirg.plugin import viewer as v
from unirg.sr_writer import RESEARCH_LABEL, ModelInfo, ReportSections, build_draft_sr

REPO_ROOT = Path(__file__).resolve().parents[1]
# $UNIRG_TEST_ARTIFACTS/viewer when set, else artifacts/viewer (git-ignored).
ARTIFACTS = Path(os.environ.get("UNIRG_TEST_ARTIFACTS") or REPO_ROOT / "artifacts") / "viewer"
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


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    NUL-terminated JSON on fds 3 and 4), so a test can measure the live page: no extra package."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._out = os.pipe()
        self._in, from_chrome_w = os.pipe()

        def fds() -> None:  # chromium reads commands on fd 3, answers on fd 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self._session: str | None = None
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
            self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                      browser=True)["sessionId"]
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict | None = None, *, browser: bool = False,
             timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if self._session and not browser:
            msg["sessionId"] = self._session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                assert left > 0, f"chromium did not answer {method} in {timeout} s"
                if select.select([self._in], [], [], left)[0]:
                    chunk = os.read(self._in, 1 << 20)
                    assert chunk, f"chromium exited (status {self.proc.poll()}) during {method}"
                    self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer.get("result", {})

    def size(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def js(self, expression: str):
        """The JSON value of ``expression`` in the page (None while it throws, e.g. mid-load)."""
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        return None if "exceptionDetails" in r else r["result"].get("value")

    def wait(self, expression: str, timeout: float = 150):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.5)
        return None

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", browser=True, timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the study in Orthanc -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def draft_study(orthanc_server):  # noqa: F811 (fixture imported above)
    """A DX PA chest study plus unirg's draft SR of it, stored in Orthanc by REST."""
    image = make_chest_image(patient_id="VIEW1", study="VIEWER", size=256)
    sr = build_draft_sr(ReportSections(FINDINGS, IMPRESSION), MODEL, current=[image])
    assert upload(orthanc_server, image)["Status"] == "Success"
    assert upload(orthanc_server, sr)["Status"] == "Success"
    return image, sr


# A 130-character finding: OHIF 3.13 rendered it on one unwrapped line, cut at "No PTX or effusion".
LONG_FINDINGS = ("Heart size upper normal. Lungs clear without focal consolidation. No PTX or effusion. "
                 "Mediastinal contours normal; no acute osseous abnormality.")
LONG_IMPRESSION = "No acute cardiopulmonary process; heart size upper normal, unchanged from the prior radiograph."


@pytest.fixture(scope="module")
def review_studies(orthanc_server):  # noqa: F811
    """Two patients' studies with unirg drafts, stored in Orthanc: "alone" (PA + lateral, no prior)
    and "prior" (PA + lateral, the draft compared with a prior PA study of the year before)."""
    out = {}
    for key, pid in (("alone", "VIEW3"), ("prior", "VIEW4")):
        pa = make_chest_image(patient_id=pid, study="CUR", size=256, study_date="20240102")
        lateral = make_chest_image(patient_id=pid, study="CUR", image=2, view="LL", size=256,
                                   study_date="20240102")
        earlier = [make_chest_image(patient_id=pid, study="OLD", size=256, study_date="20230101")]
        priors = earlier if key == "prior" else []
        sr = build_draft_sr(ReportSections(LONG_FINDINGS, LONG_IMPRESSION), MODEL, current=[pa, lateral],
                            priors=priors)
        for ds in (*priors, pa, lateral, sr):
            assert upload(orthanc_server, ds)["Status"] == "Success"
        out[key] = {"pa": pa, "lateral": lateral, "prior": priors[0] if priors else None, "sr": sr}
    return out


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


# -- the draft-review layout, measured in the live page ------------------------------------------------
# What OHIF shows: the hanging protocol, and per viewport its series (OHIF's own services).
_OHIF_STATE = """(() => {
  const s = window.services;
  if (!s || !s.viewportGridService || !s.hangingProtocolService) return null;
  const grid = s.viewportGridService.getState();
  return JSON.stringify({
    protocol: s.hangingProtocolService.getActiveProtocol().protocol?.id ?? null,
    layout: [grid.layout.numRows, grid.layout.numCols],
    viewports: Object.fromEntries([...grid.viewports.values()].map(vp => [vp.viewportId,
      (vp.displaySetInstanceUIDs || []).map(u => s.displaySetService.getDisplaySetByUID(u)?.SeriesInstanceUID)])),
  });
})()"""
# Geometry of what the reader sees: viewport panes, the findings/impression boxes and their panel,
# the research label in the SR panel and in the study browser (clipped by any ancestor or not).
_GEOMETRY = """((texts, label) => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const clipped = e => {
    if (e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1) return true;
    const r = e.getBoundingClientRect();
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.overflowX === 'visible' && cs.overflowY === 'visible') continue;
      const o = a.getBoundingClientRect();
      if (r.left < o.left - 1 || r.right > o.right + 1 || r.top < o.top - 1 || r.bottom > o.bottom + 1) return true;
    }
    return false;
  };
  const innermost = (root, text) => [...root.querySelectorAll('*')].filter(e => e.textContent.includes(text)).pop();
  const panes = [...document.querySelectorAll('[data-cy="viewport-pane"]')];
  const draft = panes.find(p => p.textContent.includes(texts[0]));
  const out = {window: [innerWidth, innerHeight],
               panes: panes.map(p => ({box: box(p), canvas: !!p.querySelector('canvas'),
                                       id: p.querySelector('[data-viewportid]')?.dataset.viewportid ?? null,
                                       draft: p === draft}))};
  if (draft) {
    const panel = [...draft.querySelectorAll('*')].find(e => /auto|scroll/.test(getComputedStyle(e).overflowY));
    out.panel = {box: box(panel), scrollWidth: panel.scrollWidth, clientWidth: panel.clientWidth};
    out.texts = texts.map(t => { const e = innermost(draft, t);
      let block = e;  // an inline box has no scroll/client width: measure its block
      while (getComputedStyle(block).display === 'inline') block = block.parentElement;
      return {tag: e.tagName, text: e.textContent, box: box(e), scrollWidth: block.scrollWidth,
              clientWidth: block.clientWidth, whiteSpace: getComputedStyle(e).whiteSpace}; });
    const top = innermost(draft, label);
    out.srLabel = top ? {box: box(top), text: top.textContent} : null;
  }
  out.browserLabels = [...document.querySelectorAll('[data-cy="series-description-label"]')]
    .filter(e => e.textContent.startsWith('AI DRAFT'))
    .map(e => ({text: e.textContent, clipped: clipped(e), box: box(e)}));
  return JSON.stringify(out);
})"""
_DISMISS = """[...document.querySelectorAll('button')].filter(b => b.textContent.trim() === 'Confirm and hide')
  .map(b => b.click()).length"""


def _inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


def check_review_page(browser: Browser, url: str, study: dict, name: str) -> list[dict]:
    """Open ``url`` at 1280x800, then 1920x1080; at each size check what a reader sees and write a
    screenshot ``<name>-<w>x<h>.png``. Returns the geometry measured (for the report)."""
    sr, pa, prior = study["sr"], study["pa"], study["prior"]
    expected = {"unirg-current": [pa.SeriesInstanceUID], "unirg-draft": [sr.SeriesInstanceUID]}
    if prior is not None:
        expected["unirg-prior"] = [prior.SeriesInstanceUID]
    texts = [LONG_FINDINGS, LONG_IMPRESSION]
    browser.size(1280, 800)
    browser.goto(url)
    state = browser.wait(f"(() => {{ const s = {_OHIF_STATE}; return s && JSON.parse(s).viewports"
                         f"['unirg-draft']?.length && document.body.textContent.includes({json.dumps(texts[0])})"
                         f" && document.querySelectorAll('[data-cy=viewport-pane] canvas').length >= "
                         f"{len(expected) - 1} ? s : null; }})()")
    page = browser.js("document.body.innerText")
    assert state, f"OHIF did not show the draft-review layout; page text: {page!r:.2000}"
    state = json.loads(state)
    # OHIF's own state: our hanging protocol, the frontal image (not the lateral) left, the draft right.
    assert state["protocol"] == (v.DRAFT_PRIOR_PROTOCOL if prior is not None else v.DRAFT_PROTOCOL), state
    assert state["viewports"] == expected, state
    assert state["layout"] == ([2, 2] if prior is not None else [1, 2]), state
    browser.js(_DISMISS)  # OHIF's investigational-use notice covers the lower screen until confirmed
    measured = []
    for width, height in ((1280, 800), (1920, 1080)):
        browser.size(width, height)
        time.sleep(2)  # OHIF re-lays out on resize
        geo = json.loads(browser.js(f"({_GEOMETRY})({json.dumps(texts)}, {json.dumps(RESEARCH_LABEL)})"))
        measured.append(geo)
        where = f"{name} at {width}x{height}: {json.dumps(geo)}"
        assert geo["window"] == [width, height]
        panes = geo["panes"]
        assert len(panes) == len(expected), where
        images = [p for p in panes if p["canvas"]]
        (draft,) = [p for p in panes if p["draft"]]
        assert len(images) == len(expected) - 1 and all(not p["draft"] for p in images), where
        current = next(p for p in images if p["id"] == "unirg-current")
        assert draft["box"]["left"] >= current["box"]["right"] - 1, f"draft not right of the image: {where}"
        for pane in panes:
            assert 0 <= pane["box"]["left"] and pane["box"]["right"] <= width + 1, where
        if prior is not None:  # the prior under the current image
            prior_pane = next(p for p in images if p["id"] == "unirg-prior")
            assert prior_pane["box"]["top"] >= current["box"]["bottom"] - 1, where
        # Findings and impression: the whole text, wrapped inside the draft's panel.
        assert geo["panel"]["scrollWidth"] <= geo["panel"]["clientWidth"], f"panel scrolls sideways: {where}"
        for want, got in zip(texts, geo["texts"]):
            assert got["text"].strip() == want, where
            assert 0 < got["scrollWidth"] <= got["clientWidth"], f"{want[:20]!r} overflows its box: {where}"
            assert got["box"]["left"] >= draft["box"]["left"] - 1, where
            assert got["box"]["right"] <= draft["box"]["right"] + 1, f"{want[:20]!r} wider than its panel: {where}"
            assert got["whiteSpace"] in ("normal", "pre-wrap", "pre-line"), where
        # The research label: first section of the SR panel, on screen without scrolling ...
        assert geo["srLabel"] and _inside(geo["srLabel"]["box"], draft["box"]), where
        # ... and whole (not cut) in the study browser's description of the draft series.
        assert [b["text"] for b in geo["browserLabels"]] == [sr.SeriesDescription], where
        assert not geo["browserLabels"][0]["clipped"], f"series description cut: {where}"
        # The screenshot shows the findings: scroll them into the draft panel's view first.
        browser.js(f"[...document.querySelectorAll('[data-cy=viewport-pane] *')].filter(e => "
                   f"e.textContent.includes({json.dumps(texts[0])})).pop().scrollIntoView({{block: 'center'}})")
        time.sleep(0.5)
        shot = ARTIFACTS / f"{name}-{width}x{height}.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 20_000
    return measured


@pytest.mark.slow
def test_draft_review_layout_image_left_draft_right(review_studies, viewer, tmp_path):
    """The printed link (`unirg viewer`, the demo) opens the current frontal radiograph left and the
    draft right; the 130-character findings wrap inside the panel; the research label is whole."""
    viewer_server = installed(viewer)
    study = review_studies["alone"]
    url = v.draft_viewer_url(viewer_server.url, viewer_server.upstream, study["pa"].StudyInstanceUID,
                             study["sr"].SeriesInstanceUID)
    assert "hangingProtocolId=" + v.DRAFT_PROTOCOL in url and "," not in url  # no prior: 1x2
    with Browser(tmp_path / "profile") as browser:
        check_review_page(browser, url, study, "draft-review")


@pytest.mark.slow
def test_draft_review_layout_with_the_prior(review_studies, viewer, tmp_path):
    """A draft that compared with a prior: the link (prior found in the SR's evidence) loads both
    studies; the prior frontal radiograph goes under the current one, the draft stays right."""
    viewer_server = installed(viewer)
    study = review_studies["prior"]
    url = v.draft_viewer_url(viewer_server.url, viewer_server.upstream, study["pa"].StudyInstanceUID,
                             study["sr"].SeriesInstanceUID)
    assert f"{study['pa'].StudyInstanceUID},{study['prior'].StudyInstanceUID}" in url
    with Browser(tmp_path / "profile") as browser:
        check_review_page(browser, url, study, "draft-review-prior")


@pytest.mark.slow
def test_findings_wrap_in_a_stock_ohif_too(orthanc_server, review_studies, tmp_path, validate_sr):  # noqa: F811
    """The SR side of the fix, for sites whose own OHIF lacks unirg's CSS: the Findings heading is
    CONTINUOUS, so OHIF 3.13 renders the Finding as wrapping text, not in a <pre>; the SR validates."""
    require_viewer_install()
    study = review_studies["alone"]
    sr = study["sr"]
    (findings,) = [c for c in sr.ContentSequence if c.ValueType == "CONTAINER"
                   and c.ConceptNameCodeSequence[0].CodeValue == "121070"]
    assert findings.ContinuityOfContent == "CONTINUOUS"
    path = tmp_path / "draft.dcm"
    sr.save_as(path, enforce_file_format=True)
    validate_sr(path)
    up = v.OrthancUpstream(orthanc_server.url, *orthanc_server.auth)
    with v.ViewerServer(("127.0.0.1", 0), upstream=up) as srv:
        srv.app_config = v.build_app_config().replace(json.dumps(v.VIEWER_CSS), '""').encode()
        assert b"white-space" not in srv.app_config  # OHIF's own styles only
        srv.serve_in_thread()
        url = v.study_viewer_url(srv.url, study["pa"].StudyInstanceUID, sr.SeriesInstanceUID,
                                 whole_study=False)  # OHIF's default layout, the SR alone
        with Browser(tmp_path / "profile") as browser:
            browser.size(1280, 800)
            browser.goto(url)
            ready = f"document.body.textContent.includes({json.dumps(LONG_FINDINGS)})"
            assert browser.wait(ready), browser.js("document.body.innerText")
            geo = json.loads(browser.js(f"({_GEOMETRY})({json.dumps([LONG_FINDINGS])}, "
                                        f"{json.dumps(RESEARCH_LABEL)})"))
            browser.js(_DISMISS)
            browser.screenshot(ARTIFACTS / "stock-ohif-sr-1280x800.png")
    (got,) = geo["texts"]
    assert got["tag"] != "PRE" and got["whiteSpace"] != "pre", geo
    assert 0 < got["scrollWidth"] <= got["clientWidth"], geo
    assert got["box"]["right"] <= geo["panel"]["box"]["right"] + 1, geo
    assert geo["panel"]["scrollWidth"] <= geo["panel"]["clientWidth"], geo


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_viewer_command_prints_draft_links_and_stops_on_a_signal(orthanc_server, draft_study, stop_signal):  # noqa: F811
    """`unirg viewer` as a process: prints the draft link, serves it, exits 0 on SIGINT (Ctrl-C) or SIGTERM, also
    when started with SIGINT ignored (as a background job of a script, or this suite run with `&`)."""
    require_viewer_install()
    image, sr = draft_study
    user, password = orthanc_server.auth
    port = free_port()
    env = {**os.environ, "UNIRG_ORTHANC_PASSWORD": password}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from unirg.plugin.viewer import viewer; viewer()",
         "--port", str(port), "--orthanc", orthanc_server.url, "--orthanc-user", user],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = []
        # Orthanc may hold other modules' drafts too: read up to this one's line.
        expected = v.study_viewer_url(f"http://127.0.0.1:{port}/", image.StudyInstanceUID,
                                      sr.SeriesInstanceUID)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.rstrip() == f"draft: {expected}":
                break
        assert f"draft: {expected}" in lines, lines
        assert requests.get(expected, timeout=10).status_code == 200
        r = requests.get(f"http://127.0.0.1:{port}/dicom-web/studies", timeout=10)
        assert r.status_code == 200
        proc.send_signal(stop_signal)
        # communicate, not wait: the viewer's stdout/stderr pipes must be drained or its exit can block on them
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
