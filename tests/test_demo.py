"""`unirg demo`: Orthanc + plugin + worker + OHIF on loopback, a synthetic study in, its draft out.

The end-to-end runs use the *stub pipeline* (``--pipeline dicom_peers:make_stub_pipeline``): they test
the demo around the model. The run with the real demo model is skipped until that model exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import skip_or_fail
from dicom_peers import PYTHON, REPO, STUB_FINDINGS, service_env, wait_for
from pydicom import dcmread

from unirg.plugin import demo as d
from unirg.sr_writer import RESEARCH_LABEL, read_report

STUB = "dicom_peers:make_stub_pipeline"


def demo_cmd(data_dir: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "unirg.plugin.demo", "--data-dir", str(data_dir), "--http-port", "0",
            "--dicom-port", "0", "--viewer-port", "0", "--size", "256", *extra]


def orthanc_pids(data_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(data_dir / "orthanc" / "orthanc.json")], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


# -- pure parts ----------------------------------------------------------------------------------------
def test_pick_patient_prefers_a_frontal_and_lateral_study_with_a_reported_prior():
    recs = [
        {"study_uid": "1", "patient_id": "A", "prior_study_uid": None, "report_sr": "r1", "images": [{"view": "AP"}]},
        {"study_uid": "2", "patient_id": "A", "prior_study_uid": "1", "report_sr": "r2", "images": [{"view": "AP"}]},
        {"study_uid": "3", "patient_id": "B", "prior_study_uid": None, "report_sr": "r3", "images": [{"view": "PA"}]},
        {"study_uid": "4", "patient_id": "B", "prior_study_uid": "3", "report_sr": "r4",
         "images": [{"view": "PA"}, {"view": "LATERAL"}]},
    ]
    prior, current = d.pick_patient(recs)
    assert (prior["study_uid"], current["study_uid"]) == ("3", "4")
    with pytest.raises(d.DemoError, match="no patient with a prior"):
        d.pick_patient(recs[:1])


def test_demo_data_dir_and_model_checks(tmp_path, monkeypatch):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(d.DemoError, match="not made by `unirg demo`"):
        d.prepare_data_dir(foreign)
    own = d.prepare_data_dir(tmp_path / "demo")
    (own / "old.txt").write_text("x")
    assert sorted(p.name for p in d.prepare_data_dir(own).iterdir()) == [d.MARKER]
    with pytest.raises(d.DemoError, match="--model"):
        d.resolve_model(str(tmp_path / "nope"))
    monkeypatch.delenv("UNIRG_MODEL", raising=False)
    monkeypatch.setattr(d, "DEFAULT_MODEL", tmp_path / "no-model")
    monkeypatch.setattr(d, "BUILD_MODEL_SCRIPT", tmp_path / "no-script.sh")
    with pytest.raises(d.DemoError, match="demo model .* is missing and no-script.sh is not in this checkout"):
        d.resolve_model(None)


# -- end to end --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_pipeline_exit_after_draft_end_to_end(tmp_path, validate_sr):
    data = tmp_path / "demo"
    started = time.monotonic()
    proc = subprocess.run(demo_cmd(data, "--pipeline", STUB, "--exit-after-draft"), capture_output=True,
                          text=True, env=service_env(), cwd=str(REPO), timeout=600)
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert RESEARCH_LABEL in out and STUB_FINDINGS in out
    link = next(line for line in out.splitlines() if line.startswith("OHIF: "))[6:]
    assert link.startswith("http://127.0.0.1:") and "/viewer?StudyInstanceUIDs=" in link
    assert "demo: stopped" in out and orthanc_pids(data) == []
    # The draft compares with the prior's signed report, and the prior got no draft of its own.
    import json

    records = [json.loads(line) for line in (data / "testbed" / "manifest.jsonl").read_text().splitlines()]
    prior, current = d.pick_patient(records)
    assert current["study_uid"] in link
    (sr_path,) = (data / "sr" / current["study_uid"]).glob("*.dcm")
    report = read_report(dcmread(sr_path))
    assert report.findings == STUB_FINDINGS and prior["report"]["findings"] in (report.comparison or "")
    assert not (data / "sr" / prior["study_uid"]).exists()
    validate_sr(sr_path)
    print(f"demo wall time (stub pipeline): {took:.1f} s")


@pytest.mark.slow
def test_demo_ctrl_c_stops_everything(tmp_path):
    data = tmp_path / "demo"
    log = tmp_path / "demo.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(demo_cmd(data, "--pipeline", STUB), stdout=fh, stderr=subprocess.STDOUT,
                                env=service_env(), cwd=str(REPO))
    try:
        line = wait_for(lambda: next((l for l in log.read_text().splitlines() if l.startswith("OHIF: ")), None),
                        180, 0.2, "the OHIF link")
        assert proc.poll() is None
        assert requests.get(line[6:], timeout=10).status_code == 200  # the viewer serves the link
        assert orthanc_pids(data)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: orthanc_pids(data) == [], 30, 0.2, "Orthanc gone")
    assert "demo: stopped" in log.read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(line[6:], timeout=5)


@pytest.mark.slow
def test_demo_with_the_demo_model_draft_shown_in_ohif_then_ctrl_c(tmp_path, validate_sr):
    """The real thing: the demo model drafts, chromium opens the printed OHIF link (draft text and
    research banner on the page, screenshot in artifacts/orthanc-plugin/), Ctrl-C stops everything."""
    if not (d.DEFAULT_MODEL / "config.json").exists():
        skip_or_fail(f"demo model missing at {d.DEFAULT_MODEL}: run scripts/build-demo-model.sh")
    import test_viewer as tv

    tv.require_viewer_install()
    data = tmp_path / "demo"
    log = tmp_path / "demo.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(demo_cmd(data), stdout=fh, stderr=subprocess.STDOUT, env={**os.environ},
                                cwd=str(REPO))
    try:
        link = wait_for(lambda: next((l[6:] for l in log.read_text().splitlines() if l.startswith("OHIF: ")), None),
                        600, 0.5, "the OHIF link")
        out = log.read_text()
        assert RESEARCH_LABEL in out and "FINDINGS:" in out
        findings = out.split("FINDINGS:\n", 1)[1].split("\n", 1)[0].strip()
        assert findings
        shot = REPO / "artifacts" / "orthanc-plugin" / "ohif-demo-model-draft.png"
        dom = tv.render(link, tmp_path / "profile", shot,
                        ready=lambda d: findings in d.text and any(RESEARCH_LABEL in x for x in d.by_cy["series-description-label"]))
        assert findings in dom.text, f"draft not rendered; page text: {dom.text[:2000]}"
        assert "RESEARCH ONLY" in dom.text and shot.stat().st_size > 10_000
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert orthanc_pids(data) == []
    (sr_path,) = (data / "sr").glob("*/*.dcm")  # the one draft (the prior was loaded as history)
    assert read_report(dcmread(sr_path)).findings
    validate_sr(sr_path)
