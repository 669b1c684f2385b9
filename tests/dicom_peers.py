"""Test helpers for the listener: small CXR datasets, DCMTK peers, a throwaway PostgreSQL database,
subprocess runners for ``unirg listen`` / ``unirg worker``, and the *stub pipeline* the worker tests run.

The stub pipeline is what the tests put where the lead's view selection + model will go: it builds the
draft with the real ``unirg.sr_writer.build_draft_sr`` from a fixed findings text, and writes into the comparison section either the prior
report's findings or why there was no prior. It tests the *pipeline around the model*, not a model.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"

STUB_FINDINGS = "STUB PIPELINE TEXT (no model): lungs clear, heart size normal."
STUB_IMPRESSION = "STUB PIPELINE TEXT (no model): no acute disease."


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port that is free now and outside the kernel's ephemeral range. A port the kernel
    hands out for ``bind(0)`` can be handed out again to any outgoing connection (an HTTP request to
    Orthanc, a C-STORE) before the test's server binds it; ports below the ephemeral range never are."""
    low, _ = _ephemeral_range()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(20000, low) if low > 20100 else rng.randrange(1024, 65535)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port found below the ephemeral range")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until truthy; return its value or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def uid_for(*parts: object) -> str:
    """Deterministic UID from ``parts`` (2.25 form)."""
    return "2.25." + str(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16], "big"))


def make_cxr(
    *,
    patient_id: str = "P0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    view: str = "PA",
    modality: str = "DX",
    study_date: str = "20240105",
    study_time: str = "101500",
    size: int = 64,
    bits: int = 16,
    body_part: str = "CHEST",
    seed: int = 0,
    instance_number: int = 1,
) -> Dataset:
    """A small but complete CR/DX image dataset (synthetic, no real patient)."""
    rng = np.random.default_rng(seed)
    study_uid = study_uid or uid_for("study", patient_id, study_date)
    series_uid = series_uid or uid_for("series", study_uid, view)
    sop_uid = sop_uid or uid_for("sop", series_uid, instance_number, seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR_IMAGE if modality == "CR" else DX_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.PatientName = "Synthetic^Test"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.SeriesTime = study_time
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.AccessionNumber = f"A{abs(hash(study_uid)) % 10**8:08d}"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "unirg-tests"
    ds.Modality = modality
    ds.SeriesNumber = 1 if view in ("PA", "AP") else 2
    ds.InstanceNumber = instance_number
    ds.ViewPosition = view
    ds.BodyPartExamined = body_part
    ds.PatientOrientation = ["P", "F"] if view in ("PA", "AP") else ["A", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "U"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.BurnedInAnnotation = "NO"
        ds.DetectorType = "DIRECT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    if bits == 8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        arr = rng.integers(0, 255, (size, size), dtype=np.uint8)
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        arr = rng.integers(0, 4095, (size, size), dtype=np.uint16)
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(out_dir: Path, views: Sequence[str] = ("PA", "LL"), **kw: Any) -> list[Path]:
    """Write one study (one image per view) as files; return the paths."""
    paths = []
    seed = kw.pop("seed", 0)
    for i, view in enumerate(views, 1):
        ds = make_cxr(view=view, instance_number=i, seed=seed + i, **kw)
        paths.append(save(ds, out_dir / f"{ds.SOPInstanceUID}.dcm"))
    return paths


# ------------------------------------------------------------------------------------------------
# DCMTK peers
# ------------------------------------------------------------------------------------------------

def dcmtk_available() -> bool:
    return all(shutil.which(t) for t in ("storescu", "echoscu", "dcmconv", "dcmcjpeg", "dcmcjpls", "dcmcrle"))


def storescu(files: Sequence[Path], port: int, *, calling: str = "SENDER", called: str = "UNIRG",
             host: str = "127.0.0.1", extra: Sequence[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """Send ``files`` with DCMTK storescu (-v so every response is printed)."""
    cmd = ["storescu", "-v", "-aet", calling, "-aec", called, *extra, host, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def storescu_profile(path: Path, transfer_syntaxes: Sequence[str],
                     sop_classes: Sequence[str] = (DX_PRESENTATION, CR_IMAGE)) -> list[str]:
    """A storescu ``--config-file`` proposing each transfer syntax in its own context; returns the
    ``-xf FILE PROFILE`` arguments. (storescu's ``-x?`` flags cannot propose them all at once.)"""
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(transfer_syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[AllCXR]"]
    n = 0
    for cls in sop_classes:
        for i in range(len(transfer_syntaxes)):
            n += 1
            lines.append(f"PresentationContext{n} = {cls}\\TS{i}")
    lines += ["[[Profiles]]", "[AllCXR]", "PresentationContexts = AllCXR"]
    path.write_text("\n".join(lines) + "\n")
    return ["-xf", str(path), "AllCXR"]


def storescu_successes(output: str) -> int:
    """How many C-STORE responses storescu reported as Success."""
    return output.count("Received Store Response (Success)")


def echoscu(port: int, *, calling: str = "SENDER", called: str = "UNIRG") -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def dcmtk_convert(src: Path, dst: Path, how: str) -> Path:
    """Re-encode ``src`` with DCMTK: implicit, big, deflate, jpeg-lossless-sv1, jpeg-lossless,
    jpeg-baseline (8-bit input), jpeg-extended, jpegls, jpegls-near, rle."""
    tools = {
        "implicit": ["dcmconv", "+ti"],
        "big": ["dcmconv", "+tb"],
        "deflate": ["dcmconv", "+td"],
        "jpeg-lossless-sv1": ["dcmcjpeg", "+e1"],
        "jpeg-lossless": ["dcmcjpeg", "+el", "+sv", "2"],
        "jpeg-baseline": ["dcmcjpeg", "+eb"],
        "jpeg-extended": ["dcmcjpeg", "+ee"],
        "jpegls": ["dcmcjpls", "+el"],
        "jpegls-near": ["dcmcjpls", "+en"],
        "rle": ["dcmcrle"],
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*tools[how], str(src), str(dst)], check=True, capture_output=True, timeout=60)
    return dst


# ------------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------------

PG_ADMIN = os.environ.get("UNIRG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


@contextmanager
def postgres_database() -> Iterator[str]:
    """CREATE DATABASE unirg_test_<random>; yield its SQLAlchemy URL; DROP it afterwards."""
    import psycopg

    name = f"unirg_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------------------------------
# unirg service processes
# ------------------------------------------------------------------------------------------------

def service_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def start_service(args: Sequence[str], log_path: Path, **env: str) -> subprocess.Popen:
    """``python -m unirg.plugin.listen_cli ARGS`` in the background, output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab")
    return subprocess.Popen([PYTHON, "-m", "unirg.plugin.listen_cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=service_env(**env), cwd=str(REPO))


def stop_service(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {val(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------------
# The stub pipeline (process_study for tests: real SR writing, fixed text, no model)
# ------------------------------------------------------------------------------------------------

def comparison_text(priors: Any) -> str:
    """What the stub pipeline writes as comparison: prior findings, or why there is no prior."""
    if priors and priors[0].report is not None:
        findings = _prior_findings(priors[0].report)
        return f"Prior study of {priors[0].study_date}: {findings}"
    if priors:
        return f"Prior study of {priors[0].study_date} (no report found)."
    reason = getattr(priors, "reason", None)
    return f"No prior available: {reason}" if reason else "No prior study."


def _prior_findings(report: Dataset) -> str:
    from unirg.sr_writer import read_report

    return read_report(report).findings


def make_stub_pipeline(config: Any = None) -> Callable[[list[Dataset], Any], Dataset]:
    """Factory for ``[worker] pipeline = "dicom_peers:make_stub_pipeline"``.

    Environment knobs (for crash tests): ``UNIRG_TEST_PIPELINE_MARKER`` - a directory where a file
    ``<study>.<pid>.started`` is written when a study starts; ``UNIRG_TEST_PIPELINE_DELAY_S`` - sleep
    that long before returning (time for the test to kill -9 the worker mid-job).
    """
    marker = os.environ.get("UNIRG_TEST_PIPELINE_MARKER")
    delay = float(os.environ.get("UNIRG_TEST_PIPELINE_DELAY_S", "0") or 0)

    def process_study(current: list[Dataset], priors: Any) -> Dataset:
        study = str(current[0].StudyInstanceUID)
        if marker:
            Path(marker).mkdir(parents=True, exist_ok=True)
            (Path(marker) / f"{study}.{os.getpid()}.started").write_text(comparison_text(priors))
        if delay:
            time.sleep(delay)
        comparison = comparison_text(priors)
        from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr

        evidence_priors = [ds for p in priors for ds in p.images]  # sr_writer takes image evidence only
        report = ReportSections(findings=STUB_FINDINGS, impression=STUB_IMPRESSION, comparison=comparison)
        model = ModelInfo(name="unirg-stub-pipeline", version="0",
                          weights_sha256=hashlib.sha256(b"stub pipeline, no weights").hexdigest())
        return build_draft_sr(report, model, current, evidence_priors)

    return process_study


def read_sr_text(path_or_ds: Path | Dataset) -> str:
    ds = dcmread(path_or_ds) if isinstance(path_or_ds, Path) else path_or_ds
    texts: list[str] = []

    def walk(items: Any) -> None:
        for it in items or []:
            if it.get("ValueType") == "TEXT":
                texts.append(str(it.TextValue))
            walk(it.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return "\n".join(texts)


# ------------------------------------------------------------------------------------------------
# A bare queue consumer process (for the queue tests: several processes, kill -9)
# ------------------------------------------------------------------------------------------------

def queue_consumer_main(url: str, out_path: str, worker_id: str, work_s: float, lease_s: float,
                        idle_exit_s: float = 2.0) -> None:
    """Claim jobs until none came for ``idle_exit_s``; append ``job_id worker`` lines to ``out_path``.

    Each claim is written (and fsynced) *before* the simulated work, so a kill -9 mid-job is visible.
    """
    from unirg.plugin.queue import JobQueue, make_engine

    queue = JobQueue(make_engine(url), lease_s=lease_s, max_attempts=5, backoff_base_s=0.1, backoff_max_s=1)
    last = time.monotonic()
    with open(out_path, "a") as out:
        while time.monotonic() - last < idle_exit_s:
            job = queue.claim(worker_id)
            if job is None:
                time.sleep(0.05)
                continue
            out.write(f"{job.id} {worker_id} claimed\n")
            out.flush()
            os.fsync(out.fileno())
            time.sleep(work_s)
            if queue.complete(job, {"by": worker_id}):
                out.write(f"{job.id} {worker_id} done\n")
                out.flush()
            last = time.monotonic()


def start_queue_consumer(url: str, out_path: Path, worker_id: str, work_s: float = 0.02,
                         lease_s: float = 30.0, idle_exit_s: float = 2.0) -> subprocess.Popen:
    code = (f"import dicom_peers; dicom_peers.queue_consumer_main({url!r}, {str(out_path)!r}, {worker_id!r}, "
            f"{work_s!r}, {lease_s!r}, {idle_exit_s!r})")
    return subprocess.Popen([PYTHON, "-c", code], env=service_env(), cwd=str(REPO))
