"""Studies per minute end to end, through DICOMweb vs through C-STORE, same run, same model.

Both paths draft the same kind of studies (PA + lateral, synthetic, one patient each) with the same
``process_study`` (the model pipeline, loaded once) and store the SR into the same Orthanc (1.10 with its
DICOMweb plugin, HTTP authentication on):

* DICOMweb: the studies are in the archive; timed from the first QIDO-RS poll to the last SR stored by
  STOW-RS (``DicomWebWatcher.poll_once`` + worker: WADO-RS images, QIDO-RS priors, STOW-RS);
* C-STORE: timed from the first C-STORE into ``unirg listen``'s listener (in process) to the last SR
  C-STOREd into the Orthanc (DIMSE priors off: no PACS configured, as the DICOMweb path has no priors
  for new patients either).

    .venv/bin/python bench/bench_dicomweb.py --studies 8 [--model PATH | --demo-model]

Prints one JSON line per path and the ratio DICOMweb / C-STORE.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests
from pynetdicom import AE
from pynetdicom import sop_class as sc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_peers import make_cxr  # noqa: E402  (synthetic CXR factory shared with the tests)

from unirg.plugin.config import apply_overrides, load_config  # noqa: E402
from unirg.plugin.dicomweb.adapter import DicomWebAdapter  # noqa: E402
from unirg.plugin.dicomweb.client import DicomWeb  # noqa: E402
from unirg.plugin.orthanc.server import OrthancServer, build_orthanc_config  # noqa: E402
from unirg.plugin.service import ListenerService, Service, load_pipeline  # noqa: E402

USER = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studies(tag: str, n: int, size: int) -> list[list]:
    return [[make_cxr(patient_id=f"{tag}{i:04d}", study_date="20240601", view=v, seed=j, size=size)
             for j, v in enumerate(("PA", "LL"))] for i in range(n)]


def wait_done(queue, uids: list[str], timeout: float) -> int:
    """Wait for every job to be done; the number of retried attempts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [(queue.find(u) or [{"state": "none"}])[0]["state"] for u in uids]
        if all(s in ("done", "dead") for s in states):
            if any(s == "dead" for s in states):
                raise SystemExit(f"a job died: {states}")
            return sum(queue.find(u)[0]["attempts"] - 1 for u in uids)
        time.sleep(0.05)
    raise SystemExit("timed out waiting for the drafts")


def run_dicomweb(orthanc: OrthancServer, base, process_study, work: Path, data: list[list]) -> tuple[float, int]:
    auth = orthanc.auth
    for study in data:
        for ds in study:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            requests.post(orthanc.url + "/instances", data=buf.getvalue(), auth=auth, timeout=30).raise_for_status()
    cfg = apply_overrides(base, {"listener.data_dir": str(work / "dw"), "dicomweb.url": orthanc.dicomweb_url,
                                 "dicomweb.user": auth[0], "dicomweb.password": auth[1],
                                 "dicomweb.since": "20240601"})
    adapter = DicomWebAdapter(cfg, DicomWeb(orthanc.dicomweb_url, user=auth[0], password=auth[1]))
    service = Service(adapter, workers=1, process_study=process_study).prepare()
    uids = [str(s[0].StudyInstanceUID) for s in data]
    try:
        t0 = time.monotonic()
        service.start()  # the watcher polls at once, then every poll_s
        retries = wait_done(service.services.queue, uids, 600)
        return time.monotonic() - t0, retries
    finally:
        service.stop()


def run_cstore(orthanc: OrthancServer, base, process_study, work: Path, data: list[list]) -> tuple[float, int]:
    port = free_port()
    cfg = apply_overrides(base, {"listener.data_dir": str(work / "cs"), "listener.port": port,
                                 "listener.host": "127.0.0.1",
                                 "store.destinations": [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"]})
    service = ListenerService(cfg, listen=True, workers=1, process_study=process_study)
    uids = [str(s[0].StudyInstanceUID) for s in data]
    service.start()
    try:
        t0 = time.monotonic()
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(sc.DigitalXRayImageStorageForPresentation)
        assoc = ae.associate("127.0.0.1", port, ae_title=cfg.listener.ae_title)
        assert assoc.is_established, "listener refused the association"
        for study in data:
            for ds in study:
                status = assoc.send_c_store(ds)
                assert status and status.Status == 0, status
        assoc.release()
        retries = wait_done(service.services.queue, uids, 600)
        return time.monotonic() - t0, retries
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--size", type=int, default=256, help="Image side in pixels.")
    ap.add_argument("--model", help="Model checkpoint (default: --demo-model).")
    ap.add_argument("--demo-model", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("unirg").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="unirg-bench-dw-") as tmp:
        work = Path(tmp)
        config = build_orthanc_config(data_dir=work / "orthanc", http_port=free_port(), dicom_port=free_port(),
                                      users={USER: secrets.token_urlsafe(12)}, stable_age=1,
                                      accept_unknown_scu=True)
        base = apply_overrides(load_config(None, env={}), {
            "model.path": args.model, "model.demo_model": True if args.demo_model or not args.model else None,
            "dicomweb.poll_s": 0.5, "dicomweb.stable_age_s": 5.0, "queue.poll_interval_s": 0.05})
        process_study = load_pipeline(base)  # one model for both paths
        with OrthancServer(config, work_dir=work / "orthanc") as orthanc:
            warm = studies("W", 1, args.size)
            run_cstore(orthanc, base, process_study, work / "warm", warm)  # model warm-up, not counted
            out = {}
            for name, fn, tag in (("dicomweb", run_dicomweb, "D"), ("cstore", run_cstore, "C")):
                seconds, retries = fn(orthanc, base, process_study, work, studies(tag, args.studies, args.size))
                out[name] = {"path": name, "studies": args.studies, "seconds": round(seconds, 2),
                             "studies_per_min": round(args.studies / seconds * 60, 1), "retries": retries}
                print(json.dumps(out[name]), flush=True)
        ratio = out["dicomweb"]["studies_per_min"] / out["cstore"]["studies_per_min"]
        print(json.dumps({"ratio_dicomweb_over_cstore": round(ratio, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
