"""``unirg demo``: the whole Orthanc path on loopback, from a synthetic study to a draft in OHIF.

1. the model: ``--model`` or the default demo model (``var/models/unirg-demo``; built with
   ``scripts/build-demo-model.sh`` when missing and the script exists, otherwise a clear error);
2. a fresh demo data dir (``var/demo``; only a folder the demo made itself is ever wiped);
3. a small synthetic testbed (``unirg-trainer synth``, run as a child process), and one patient who has a
   prior study with a signed report and a newer study;
4. Orthanc + unirg plugin + DICOMweb (HTTP authentication on, random password), the worker, and the
   OHIF viewer (``unirg viewer``'s server), all on loopback;
5. the prior (images + signed report SR) loaded into Orthanc by REST as history (not drafted), the
   new study sent by C-STORE (pynetdicom, in the transfer syntaxes the stations wrote);
6. waits for the draft, prints its text (``GET /unirg/studies/{uid}/draft.txt``) and the OHIF link;
7. runs until Ctrl-C (or exits at once with ``--exit-after-draft``), then stops everything.

RESEARCH ONLY - NOT FOR CLINICAL USE: the draft is unverified AI output.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from pydicom import dcmread

from unirg.plugin.config import Config, ConfigError, apply_overrides, load_config
from unirg.plugin.home import BUILD_MODEL_SCRIPT_NAME, unirg_home
from unirg.plugin.orthanc.adapter import OrthancStack
from unirg.plugin.orthanc.recorder import mark_retrieved_prior
from unirg.plugin.orthanc.server import OrthancStartError
from unirg.plugin.signals import STOP_SIGNALS, stop_on_signals, wait_for_stop
from unirg.sr_writer import RESEARCH_LABEL

__all__ = ["demo", "run_demo", "pick_patient", "DemoError"]

log = logging.getLogger(__name__)

HOME = unirg_home()  # $UNIRG_HOME, or the checkout's var/ (plugin/home.py)
DEFAULT_MODEL = HOME / "models" / "unirg-demo"
#: Builds the demo model; only a checkout has it (next to its var/).
BUILD_MODEL_SCRIPT = HOME.parent / "scripts" / BUILD_MODEL_SCRIPT_NAME
DEFAULT_DATA_DIR = HOME / "demo"
MARKER = ".unirg-demo"
USER = "unirg-demo"
SENDER_AET = "UNIRG_DEMO"


class DemoError(click.ClickException):
    """Something the demo needs is missing; the message says what to run."""


def _port(preferred: int) -> int:
    """``preferred`` when it is free on loopback (0: any), else a free one."""
    for candidate in ((preferred, 0) if preferred else (0,)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free TCP port on 127.0.0.1")


def resolve_model(model: str | None, echo: Any = click.echo) -> Path:
    """The model folder: ``model``, else the default demo model (built when missing and buildable)."""
    if model:
        path = Path(model).expanduser()
        if not path.exists():
            raise DemoError(f"--model {path}: no such folder")
        return path.resolve()
    env = os.environ.get("UNIRG_MODEL")
    path = Path(env) if env else DEFAULT_MODEL
    if path.exists():
        return path.resolve()
    if env:
        raise DemoError(f"UNIRG_MODEL={env}: no such folder")
    if not BUILD_MODEL_SCRIPT.exists():
        raise DemoError(f"the demo model {path} is missing and {BUILD_MODEL_SCRIPT.name} is not in this checkout; "
                        "pass --model PATH (a checkpoint folder)")
    echo(f"demo: building the demo model with {BUILD_MODEL_SCRIPT} (first run only) ...")
    proc = subprocess.run(["bash", str(BUILD_MODEL_SCRIPT)], cwd=str(BUILD_MODEL_SCRIPT.parents[1]))
    if proc.returncode != 0 or not path.exists():
        raise DemoError(f"{BUILD_MODEL_SCRIPT.name} failed (status {proc.returncode}); the demo model {path} is missing")
    return path.resolve()


def prepare_data_dir(path: Path) -> Path:
    """A clean demo data dir; refuses to wipe a folder the demo did not make."""
    path = path.expanduser().resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise DemoError(f"{path} is not empty and was not made by `unirg demo`; choose another --data-dir")
        for child in path.iterdir():
            if child.name != MARKER:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `unirg demo`; wiped by its next run\n")
    return path


def pick_patient(records: list[dict]) -> tuple[dict, dict]:
    """(prior, current) records of one patient: the current names the prior; frontal + lateral
    current studies are preferred (drafted as soon as both views are in)."""
    by_uid = {r["study_uid"]: r for r in records}
    pairs = [(by_uid[r["prior_study_uid"]], r) for r in records
             if r.get("prior_study_uid") in by_uid and by_uid[r["prior_study_uid"]].get("report_sr")]
    if not pairs:
        raise DemoError("the synthetic testbed has no patient with a prior study; try more --patients")

    def both_views(rec: dict) -> bool:
        views = {img["view"] for img in rec["images"]}
        return bool(views & {"PA", "AP"}) and bool(views & {"LL", "LATERAL"})

    return sorted(pairs, key=lambda p: (not both_views(p[1]), p[1]["patient_id"]))[0]


def c_store(files: list[Path], port: int, called: str, calling: str = SENDER_AET) -> int:
    """Send ``files`` to 127.0.0.1:``port`` (pynetdicom, each file in its own transfer syntax);
    returns how many were stored."""
    from pynetdicom import AE

    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise DemoError(f"Orthanc's DICOM port {port} refused the association")
    stored = 0
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status and int(status.Status) in (0x0000, 0xB000, 0xB006, 0xB007):
                stored += 1
    finally:
        assoc.release()
        ae.shutdown()
    return stored


def demo_config(data_dir: Path, model: Path | None, http_port: int, dicom_port: int, pipeline: str | None,
                password: str, viewer_port: int = 0) -> Config:
    overrides: dict[str, Any] = {
        "listener.data_dir": str(data_dir), "orthanc.http_port": http_port, "orthanc.dicom_port": dicom_port,
        "orthanc.aet": "UNIRG", "orthanc.user": USER, "orthanc.password": password, "orthanc.stable_age_s": 3,
        # Orthanc takes C-STOREs only from declared AE titles: the demo's sender (its port is never used).
        "orthanc.modalities": [f"demo-sender={SENDER_AET}@127.0.0.1:104"],
        "queue.poll_interval_s": 0.2, "queue.lease_s": 60.0, "logging.level": "WARNING",
        "model.demo_model": True,  # the demo is what the synthetic demo model is for
    }
    if model is not None:
        overrides["model.path"] = str(model)
    if pipeline:
        overrides["worker.pipeline"] = pipeline
    if viewer_port:  # the worker's log and the draft route carry the OHIF link
        overrides["viewer.url"] = f"http://127.0.0.1:{viewer_port}"
    return apply_overrides(load_config(None, env={}), overrides)


def _wait_for_draft(stack: OrthancStack, study_uid: str, timeout: float, echo: Any) -> dict:
    client = stack.client()
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline and not stack.stop_event.is_set():
        try:
            r = client.session.get(f"{stack.url}/unirg/studies/{study_uid}/draft", timeout=30)
        except Exception:  # Orthanc restarting or busy: ask again
            time.sleep(1)
            continue
        body = r.json()
        if r.status_code == 200:
            return body
        jobs = body.get("jobs") or []
        state = jobs[-1]["state"] if jobs else (body.get("state") or "not seen yet")
        if state == "dead":
            raise DemoError(f"the draft failed: {jobs[-1].get('last_error')}")
        if state != said:
            echo(f"demo: study {state} ...")
            said = state
        time.sleep(0.5)
    raise DemoError(f"no draft within {timeout:g} s (see {stack.config.data_dir}/orthanc/orthanc.log)")


def generate_testbed(out: Path, *, patients: int, seed: int, size: int) -> list[dict]:
    """The synthetic testbed, made by ``unirg-trainer synth`` in a child process (the plugin never
    imports the trainer); returns its manifest records."""
    cmd = [sys.executable, "-c", "from unirg.trainer.cli import main; main()", "synth", "--out", str(out),
           "--patients", str(patients), "--seed", str(seed), "--size", str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoError(f"unirg-trainer synth failed (exit {proc.returncode}): {proc.stderr.strip()[-1000:]}")
    with open(out / "manifest.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_demo(*, data_dir: Path, model: str | None, http_port: int, dicom_port: int, viewer_port: int,
             patients: int, seed: int, size: int, exit_after_draft: bool, timeout: float,
             pipeline: str | None = None, echo: Any = click.echo) -> dict:
    """The demo (see the module docstring); returns what it printed as a dict (for tests)."""
    from unirg.plugin.viewer import OrthancUpstream, ViewerServer, ViewerSetupError, check_ohif_dist, draft_viewer_url

    t0 = time.monotonic()
    try:
        check_ohif_dist()
    except ViewerSetupError as exc:
        raise DemoError(str(exc)) from exc
    model_path = None if pipeline else resolve_model(model, echo)
    data = prepare_data_dir(data_dir)
    echo(f"demo: data in {data}")
    echo(f"demo: generating a synthetic testbed ({patients} patients, seed {seed}) ...")
    testbed = data / "testbed"
    records = generate_testbed(testbed, patients=patients, seed=seed, size=size)
    prior, current = pick_patient(records)

    password = secrets.token_urlsafe(12)
    viewer_port = _port(viewer_port)
    cfg = demo_config(data, model_path, _port(http_port), _port(dicom_port), pipeline, password, viewer_port)
    echo(f"demo: starting Orthanc + unirg plugin + worker (model {model_path or pipeline}) ...")
    stack = OrthancStack(cfg, workers=1, worker_nice=0)  # nothing else ingests here: no need to yield
    try:
        stack.start()
    except (ConfigError, OrthancStartError) as exc:
        raise DemoError(str(exc)) from exc
    viewer = None
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    if threading.current_thread() is threading.main_thread():
        stop_on_signals(stop, on_signal=lambda _signum: stack.stop_event.set())
    try:
        try:
            viewer = ViewerServer(("127.0.0.1", viewer_port),
                                  upstream=OrthancUpstream(stack.url, USER, password)).serve_in_thread()
        except (ViewerSetupError, OSError) as exc:
            raise DemoError(f"viewer: {exc}") from exc
        echo(f"demo: Orthanc {stack.url} (user {USER}, password {password}); "
             f"DICOM UNIRG@127.0.0.1:{cfg.orthanc.dicom_port}; OHIF {viewer.url}")

        client = stack.client()
        mark_retrieved_prior(stack.services.ledger.engine, prior["study_uid"], current["study_uid"])
        for rel in [img["path"] for img in prior["images"]] + [prior["report_sr"]]:
            client.post_json("/instances", (testbed / rel).read_bytes(), headers={"Content-Type": "application/dicom"})
        echo(f"demo: loaded patient {prior['patient_id']}'s prior study of {prior['study_date']} "
             f"({len(prior['images'])} image(s) + signed report) into Orthanc as history")
        files = [testbed / img["path"] for img in current["images"]]
        stored = c_store(files, cfg.orthanc.dicom_port, cfg.orthanc.aet)
        if stored != len(files):
            raise DemoError(f"C-STORE: Orthanc took {stored} of {len(files)} images")
        views = ", ".join(img["view"] for img in current["images"])
        echo(f"demo: sent the new study of {current['study_date']} ({views}) by C-STORE; waiting for the draft ...")
        t_sent = time.monotonic()
        body = _wait_for_draft(stack, current["study_uid"], timeout, echo)
        draft = body["draft"]
        text = client.session.get(f"{stack.url}/unirg/studies/{current['study_uid']}/draft.txt", timeout=30).text
        link = draft_viewer_url(viewer.url, viewer.upstream, current["study_uid"], draft["series_uid"])
        echo("")
        echo(text.rstrip())
        echo("")
        echo(f"OHIF: {link}")
        echo(f"REST: {stack.url}/unirg/studies/{current['study_uid']}/draft  (and /unirg/status)")
        echo(f"demo: draft {time.monotonic() - t_sent:.1f} s after the C-STORE; {time.monotonic() - t0:.1f} s in all")
        out = {"study_uid": current["study_uid"], "prior_study_uid": prior["study_uid"], "draft": draft,
               "text": text, "link": link, "orthanc": stack.url, "viewer": viewer.url,
               "seconds": time.monotonic() - t0}
        if not exit_after_draft:
            echo(f"{RESEARCH_LABEL}. Ctrl-C stops everything.")
            wait_for_stop(stop, alive=lambda: stack.server is None or stack.server.is_running())
            if not stop.is_set():
                raise DemoError("Orthanc stopped unexpectedly")
        return out
    finally:
        if viewer is not None:
            viewer.close()
        stack.stop(worker_grace_s=5)
        if threading.current_thread() is threading.main_thread():
            for s, handler in previous.items():
                signal.signal(s, handler)
        echo("demo: stopped (Orthanc, worker, viewer)")


@click.command("demo")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
              show_default=True, help="Demo data (wiped at each run; only a folder the demo made).")
@click.option("--model", help="Model checkpoint [default: $UNIRG_MODEL or var/models/unirg-demo].")
@click.option("--http-port", type=int, default=8042, show_default=True, help="Orthanc HTTP (a free one if taken).")
@click.option("--dicom-port", type=int, default=4242, show_default=True, help="Orthanc DICOM (a free one if taken).")
@click.option("--viewer-port", type=int, default=3000, show_default=True, help="OHIF viewer (a free one if taken).")
@click.option("--patients", type=click.IntRange(1, 50), default=4, show_default=True, help="Synthetic patients.")
@click.option("--seed", type=int, default=7, show_default=True, help="Testbed seed.")
@click.option("--size", type=click.IntRange(128, 2048), default=256, show_default=True, help="Image size (pixels).")
@click.option("--exit-after-draft", is_flag=True, help="Stop everything once the draft is printed (scripts, tests).")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for the draft.")
@click.option("--pipeline", hidden=True, help="'module:factory' instead of the model pipeline (tests).")
def demo(data_dir: Path, model: str | None, http_port: int, dicom_port: int, viewer_port: int, patients: int,
         seed: int, size: int, exit_after_draft: bool, timeout: float, pipeline: str | None) -> None:
    """Orthanc + plugin + worker + OHIF on loopback; a synthetic study in, its draft out.

    Loads a synthetic patient's prior study (images + signed report) into Orthanc, sends the next
    study by C-STORE, waits for the draft, prints it and the OHIF link. Ctrl-C stops everything.
    RESEARCH ONLY - NOT FOR CLINICAL USE.
    """
    logging.getLogger("unirg").setLevel(logging.WARNING)
    run_demo(data_dir=data_dir, model=model, http_port=http_port, dicom_port=dicom_port, viewer_port=viewer_port,
             patients=patients, seed=seed, size=size, exit_after_draft=exit_after_draft, timeout=timeout,
             pipeline=pipeline)
    sys.stdout.flush()


if __name__ == "__main__":
    demo()
