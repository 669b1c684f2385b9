"""`unirg listen | worker | orthanc` refuse to start without a model unless --demo-model allows the demo model.

The commands run as real subprocesses (as an operator would start them) with a time limit: a command that
starts serving instead of refusing is killed and the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_peers import free_port
from unirg.plugin.config import ConfigError, apply_overrides, load_config
from unirg.plugin.service import NO_MODEL_MESSAGE, require_model

PYTHON = sys.executable
STUB = "dicom_peers:make_stub_pipeline"
TESTS = Path(__file__).resolve().parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIRG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, **extra}


def _run(args: list[str], timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m args`` in its own process group; a run past ``timeout`` (it started serving: the
    old, silent behaviour) fails the test after its whole group (an Orthanc it started too) is killed."""
    proc = subprocess.Popen([PYTHON, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(**env), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{args[:2]} did not refuse to start within {timeout} s: {err[-2000:]!r}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _says_how_to_fix(proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for hint in ("--model", "[model] path", "UNIRG_MODEL", "--demo-model"):
        assert hint in out, f"{hint!r} not in {out!r}"


def test_listen_without_a_model_refuses_to_start(tmp_path):
    proc = _run(["unirg.plugin.listen_cli", "listen", "--data-dir", str(tmp_path), "--port", str(free_port())])
    _says_how_to_fix(proc)


def test_worker_without_a_model_refuses_to_start(tmp_path):
    proc = _run(["unirg.plugin.listen_cli", "worker", "--data-dir", str(tmp_path), "--drain"])
    _says_how_to_fix(proc)


def test_orthanc_without_a_model_refuses_before_starting_orthanc(tmp_path):
    proc = _run(["unirg.plugin.orthanc_cli", "--data-dir", str(tmp_path), "--http-port", str(free_port()),
                 "--dicom-port", str(free_port())], timeout=180)
    _says_how_to_fix(proc)
    assert not (tmp_path / "orthanc" / "orthanc.log").exists()  # Orthanc was never started


def test_listen_without_a_worker_needs_no_model(tmp_path):
    """Receiving and queueing only (--no-worker) drafts nothing, so no model is needed."""
    proc = subprocess.Popen([PYTHON, "-m", "unirg.plugin.listen_cli", "listen", "--data-dir", str(tmp_path),
                             "--port", str(free_port()), "--no-worker"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(8)  # still serving
    finally:
        proc.terminate()
        proc.wait(30)


def test_worker_with_demo_model_flag_or_configured_model_starts(tmp_path):
    """--demo-model, UNIRG_MODEL or a stub pipeline: the worker starts (and drains the empty queue)."""
    for flags, env in ((["--demo-model"], {}), ([], {"UNIRG_MODEL": str(tmp_path / "m")}),
                       ([], {"UNIRG_WORKER_PIPELINE": STUB}), ([], {"UNIRG_MODEL_DEMO_MODEL": "true"})):
        proc = _run(["unirg.plugin.listen_cli", "worker", "--data-dir", str(tmp_path), "--drain", *flags], **env)
        assert proc.returncode == 0, (flags, env, proc.stdout + proc.stderr)
        if flags or "UNIRG_MODEL_DEMO_MODEL" in env:
            assert "event=demo_model" in proc.stderr


def test_require_model_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIRG_MODEL", raising=False)
    checkpoint = tmp_path / "unirg-cxr"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    base = load_config(None, env={})
    with pytest.raises(ConfigError) as info:
        require_model(base)
    assert str(info.value) == NO_MODEL_MESSAGE
    assert require_model(apply_overrides(base, {"model.demo_model": True})) is True
    assert require_model(apply_overrides(base, {"model.path": str(checkpoint)})) is False
    assert require_model(apply_overrides(base, {"model.path": "/m", "model.demo_model": True})) is False
    assert require_model(apply_overrides(base, {"worker.pipeline": STUB})) is False
    monkeypatch.setenv("UNIRG_MODEL", "/models/unirg-cxr")
    assert require_model(base) is False


def test_an_empty_publish_dir_is_no_model(monkeypatch, tmp_path):
    """[model] path = a publish directory with nothing published yet: refused at start (the demo model used
    to stand in silently), unless --demo-model allows it; then the watcher falls back to the demo model."""
    from unirg.plugin.pipeline import default_model_path, model_source

    monkeypatch.delenv("UNIRG_MODEL", raising=False)
    publish = tmp_path / "publish"
    publish.mkdir()
    base = load_config(None, env={})
    with pytest.raises(ConfigError, match="no config.json.*unirg-trainer publish.*--demo-model"):
        require_model(apply_overrides(base, {"model.path": str(publish)}))
    assert require_model(apply_overrides(base, {"model.path": str(publish), "model.demo_model": True})) is False
    assert model_source(publish).fallback is None
    assert model_source(publish, demo_fallback=True).fallback == default_model_path()
    proc = _run(["unirg.plugin.listen_cli", "worker", "--data-dir", str(tmp_path), "--drain",
                 "--model", str(publish)])
    assert proc.returncode != 0 and "unirg-trainer publish" in proc.stdout + proc.stderr
