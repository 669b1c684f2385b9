"""Does unirg's Orthanc plugin slow Orthanc's ingestion? C-STORE instances/s with and without it.

Each round starts a fresh Orthanc twice (Debian's 1.10, same configuration but for the plugin):

* **without**: Orthanc + DICOMweb, no unirg and no load (``--control-load``: plus one CPU burnt at
  normal priority, to see what an un-niced model would cost Orthanc);
* **with**: Orthanc + unirg plugin + a worker whose "model" is slow (``--model-s`` seconds per study,
  ``--model-kind sleep``: waiting like a GPU/remote model; ``cpu``: spinning on a CPU core), kept busy
  by the studies being sent; the worker runs at nice 10 as in ``unirg orthanc``;

then sends the same number of fresh instances (chest DX, PA + lateral per study) with DCMTK
``storescu`` over one association and times it. Prints instances/s for both, the ratio (with /
without; 1.0 = no slowdown), and how long after the last C-STORE the plugin had recorded every
instance. The callbacks only note and return; recording and queueing happen in the plugin's own
thread, drafting in the worker: a slow model must not show up in the ratio.

    .venv/bin/python bench/bench_ingest.py [--studies 150] [--rounds 3] [--model-s 2] [--model-kind sleep]

Machine-dependent: run both modes on the same machine, as this script does (alternating rounds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from unirg.plugin.config import apply_overrides, load_config
from unirg.plugin.orthanc.adapter import OrthancStack
from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr

REPO = Path(__file__).resolve().parents[1]
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def uid(*parts: object) -> str:
    return "2.25." + str(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16], "big"))


def write_instances(folder: Path, tag: str, studies: int, size: int) -> list[Path]:
    """``studies`` PA + LL chest DX studies (synthetic noise pixels), one file per instance."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4095, (size, size), dtype=np.uint16).tobytes()
    paths = []
    for s in range(studies):
        study = uid(tag, "study", s)
        for i, view in enumerate(("PA", "LL"), 1):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(tag, "sop", s, i)
            ds.PatientName, ds.PatientID = "Bench^Ingest", f"BENCH-{tag}-{s}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid(tag, "series", s, i)
            ds.StudyDate, ds.StudyTime, ds.Modality = "20240105", "101500", "DX"
            ds.SeriesNumber, ds.InstanceNumber, ds.ViewPosition, ds.BodyPartExamined = i, 1, view, "CHEST"
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows = ds.Columns = size
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = pixels
            path = folder / tag / f"{s:04d}-{i}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def make_slow_pipeline(seconds: float, kind: str):
    """A pipeline that takes ``seconds`` per study ("sleep": idle wait; "cpu": busy loop), then writes
    a real research-labelled SR (fixed text)."""
    model = ModelInfo("bench-slow-model", "0", "00" * 32)

    def process_study(current, priors):
        end = time.monotonic() + seconds
        if kind == "cpu":
            x = 0
            while time.monotonic() < end:
                x += 1
        else:
            time.sleep(seconds)
        return build_draft_sr(ReportSections("Bench findings.", "Bench impression."), model, current)

    return process_study


def storescu(files: list[Path], port: int) -> float:
    """Seconds to C-STORE ``files`` over one association (DCMTK)."""
    t0 = time.perf_counter()
    # TCP_NODELAY=1: without it Debian's DCMTK waits for delayed ACKs and both modes measure ~22/s of
    # loopback latency instead of Orthanc (`unirg orthanc` sets it for Orthanc too).
    proc = subprocess.run(["storescu", "-aec", "UNIRG", "-aet", "BENCH", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "TCP_NODELAY": "1"})
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(mode: str, files: list[Path], warmup: list[Path], work: Path, model_s: float, kind: str,
            control_load: bool = False) -> dict:
    cfg = apply_overrides(load_config(None, env={}), {
        "listener.data_dir": str(work / mode), "orthanc.http_port": free_port(), "orthanc.dicom_port": free_port(),
        "orthanc.stable_age_s": 2, "queue.poll_interval_s": 0.2, "logging.level": "WARNING",
        "orthanc.modalities": ["bench=BENCH@127.0.0.1:104"],  # storescu's AE title: allowed to store
    })
    plugin = mode == "with"
    stack = OrthancStack(cfg, workers=1 if plugin else 0, plugin=plugin,
                         process_study=make_slow_pipeline(model_s, kind) if plugin else None).start()
    burner_stop = threading.Event()
    if not plugin and control_load:  # optional control: the same CPU load, at Orthanc's priority
        def burn() -> None:
            while not burner_stop.is_set():
                pass
        threading.Thread(target=burn, daemon=True).start()
    try:
        storescu(warmup, cfg.orthanc.dicom_port)
        client = stack.client()
        settle = time.monotonic() + 2.0  # both modes: the warm-up's after-effects are over
        if plugin:  # the worker is busy with the warm-up studies' slow "model" before we measure
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if client.get_json("/unirg/status")["queue"]["in_flight"]:
                    break
                time.sleep(0.1)
        time.sleep(max(settle - time.monotonic(), 0))
        seconds = storescu(files, cfg.orthanc.dicom_port)
        t_end = time.monotonic()
        out = {"mode": mode, "instances": len(files), "seconds": seconds, "per_s": len(files) / seconds}
        stored = int(client.get_json("/statistics")["CountInstances"])
        assert stored >= len(files) + len(warmup), f"Orthanc holds {stored} instances"
        if plugin:
            want = len(files) + len(warmup)
            while True:
                status = client.get_json("/unirg/status")
                if status["plugin"]["instances_recorded"] >= want or time.monotonic() - t_end > 120:
                    break
                time.sleep(0.05)
            out["plugin_caught_up_s"] = round(time.monotonic() - t_end, 2)
            out["recorded"] = status["plugin"]["instances_recorded"]
            out["queue"] = status["queue"]
        return out
    finally:
        burner_stop.set()
        stack.stop(worker_grace_s=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=150, help="studies per measured run (2 instances each)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of without/with")
    ap.add_argument("--size", type=int, default=256, help="image rows = columns (16-bit)")
    ap.add_argument("--model-s", type=float, default=2.0, help="seconds the slow model takes per study")
    ap.add_argument("--model-kind", choices=("sleep", "cpu"), default="sleep")
    ap.add_argument("--control-load", action="store_true",
                    help="without the plugin, burn one CPU at normal priority (how a model would hurt "
                         "Orthanc if the worker were not niced)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    # Stopping a run abandons the worker's current job (it would resume at the next start): not news here.
    logging.getLogger("unirg").setLevel(logging.ERROR)
    if not shutil.which("storescu"):
        print("needs DCMTK storescu (scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="unirg-bench-ingest-"))
    try:
        results = []
        for r in range(args.rounds):
            for mode in ("without", "with"):
                files = write_instances(work / "files", f"{mode}{r}", args.studies, args.size)
                warmup = write_instances(work / "files", f"warm-{mode}{r}", 3, args.size)
                res = one_run(mode, files, warmup, work / f"run{r}", args.model_s, args.model_kind, args.control_load)
                results.append(res)
                extra = f", plugin caught up {res['plugin_caught_up_s']} s after the last C-STORE" if mode == "with" else ""
                print(f"round {r + 1} {mode:>7} plugin: {res['per_s']:7.1f} instances/s "
                      f"({res['instances']} in {res['seconds']:.2f} s){extra}", flush=True)
        without = statistics.median(x["per_s"] for x in results if x["mode"] == "without")
        with_ = statistics.median(x["per_s"] for x in results if x["mode"] == "with")
        print(f"\nC-STORE into Orthanc, {args.studies * 2} instances of {args.size}x{args.size} 16-bit per run, "
              f"median of {args.rounds} rounds; worker model: {args.model_s:g} s/study ({args.model_kind})")
        control = " (+ one CPU burnt at normal priority, for control)" if args.control_load else ""
        print(f"  without plugin: {without:7.1f} instances/s{control}")
        print(f"  with plugin:    {with_:7.1f} instances/s")
        print(f"  ratio with/without: {with_ / without:.3f}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results,
                                             "without_per_s": without, "with_per_s": with_,
                                             "ratio": with_ / without}, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
