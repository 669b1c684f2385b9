"""A real Orthanc (Debian package) on loopback free ports, as the test PACS.

``Orthanc(workdir, modalities=...)`` writes its JSON config into ``workdir``, starts ``/usr/sbin/Orthanc``,
waits for the REST API, and stops with ``POST /tools/shutdown`` (waiting for the process, so the same
storage can be reopened: see verified-facts, two Orthancs on one index fail). ``restart()`` brings the
same PACS (same storage, same ports) back after ``stop()`` - used for "PACS down" tests.

Fixtures: ``orthanc_factory(**kw)`` (stopped at teardown), and ``orthanc_available()`` for skip markers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import skip_or_fail
from dicom_peers import free_port, wait_for
from unirg.plugin.orthanc_source import OrthancClient

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


class ReconnectingSession(requests.Session):
    """A ``requests.Session`` that, like unirg's :class:`OrthancClient`, sends a request once more on a
    fresh connection when Orthanc dropped the kept-alive one (Orthanc 1.10 closes idle keep-alive
    connections after 1 s, and a restart drops them all); only requests that are safe to repeat."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.auth = auth
        self.trust_env = False  # never go through a proxy to loopback

    def request(self, method, url, *args, **kw):
        try:
            return super().request(method, url, *args, **kw)
        except requests.ConnectionError as exc:
            path = requests.utils.urlparse(url).path
            if OrthancClient.retry_reason(exc, OrthancClient.retry_safe(method, path)) is None:
                raise
            self.close()
            return super().request(method, url, *args, **kw)


def orthanc_available() -> bool:
    return Path(ORTHANC_BIN).exists()


class Orthanc:
    """One Orthanc process with its own storage under ``workdir``.

    Parameters
    ----------
    workdir : Path
        Config, storage, index and log go here.
    aet : str
        Orthanc's AE title.
    modalities : dict
        ``{name: (aet, host, port)}`` - the DICOM peers Orthanc knows (C-MOVE destinations, and which
        calling AEs may C-FIND/C-GET/C-MOVE/C-STORE).
    """

    def __init__(self, workdir: Path, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.session = ReconnectingSession()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def peer(self) -> str:
        """``AET@HOST:PORT`` for our config."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def write_config(self) -> Path:
        cfg = {
            "Name": "unirg-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomScuTimeout": 10,
            "DicomModalities": {
                name: {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                       "AllowGet": True, "AllowMove": True, "AllowStore": True}
                for name, (aet, host, port) in self.modalities.items()
            },
            "StableAge": 1,
            "SaveJobs": False,
            "Plugins": [],
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "OverwriteInstances": False,
        }
        path = self.workdir / "orthanc.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def start(self, timeout: float = 60) -> "Orthanc":
        config = self.write_config()
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=str(self.workdir))

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.workdir / 'orthanc.log'}")
            try:
                return self.session.get(f"{self.url}/system", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(up, timeout, 0.1, "Orthanc REST")
        return self

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.session.post(f"{self.url}/tools/shutdown", timeout=5)
            except requests.RequestException:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> "Orthanc":
        self.stop()
        return self.start()

    # -- REST helpers -----------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        r = self.session.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body)
        r = self.session.post(f"{self.url}{path}", data=data, timeout=60)
        r.raise_for_status()
        return r.json()

    def upload(self, *paths: Path) -> None:
        for p in paths:
            self.post("/instances", Path(p).read_bytes())

    def find_instances(self, **query: str) -> list[dict[str, Any]]:
        """``/tools/find`` at instance level; each answer has MainDicomTags and ParentSeries."""
        return self.post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})

    def sr_instances(self, study_uid: str) -> list[str]:
        """SOPInstanceUIDs of the SR instances Orthanc holds in ``study_uid``."""
        series = self.post("/tools/find", {"Level": "Series", "Expand": True,
                                           "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
        out = []
        for s in series:
            for inst in s["Instances"]:
                out.append(self.get(f"/instances/{inst}")["MainDicomTags"]["SOPInstanceUID"])
        return out

    def file(self, sop_uid: str) -> bytes:
        ids = self.post("/tools/lookup", sop_uid.encode())
        inst = [i for i in ids if i["Type"] == "Instance"][0]["ID"]
        r = self.session.get(f"{self.url}/instances/{inst}/file", timeout=30)
        r.raise_for_status()
        return r.content

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Any]:
    """``orthanc_factory(modalities=..., aet=...)`` -> a started :class:`Orthanc`; all stopped at teardown."""
    if not orthanc_available():
        skip_or_fail(f"Orthanc not installed at {ORTHANC_BIN} (scripts/bootstrap.sh installs it)")
    started: list[Orthanc] = []

    def make(**kw: Any) -> Orthanc:
        o = Orthanc(tmp_path / f"orthanc{len(started)}", **kw)
        started.append(o)
        return o.start()

    yield make
    for o in started:
        o.stop()
