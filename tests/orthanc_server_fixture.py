"""A real Orthanc (Debian's 1.10 + DICOMweb) on free loopback ports, for tests.

``start_orthanc(folder, ...)`` starts one with ``unirg.plugin.orthanc_server`` (retrying on a port
clash); the ``orthanc_server`` fixture is a module-scoped one with HTTP basic authentication on.
Import the fixture into a test module: ``from orthanc_server_fixture import orthanc_server``.
"""

from __future__ import annotations

import io
import secrets
import socket
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from unirg.plugin.orthanc_server import (
    ORTHANC_BINARY,
    OrthancServer,
    OrthancStartError,
    build_orthanc_config,
)

ORTHANC_USER = "unirg-test"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_orthanc(folder: Path, *, attempts: int = 3, **config_kwargs) -> OrthancServer:
    """Start Orthanc with its data in ``folder`` on fresh free ports; fail the test clearly if the
    Debian packages are missing."""
    if not Path(ORTHANC_BINARY).exists():
        pytest.fail(f"{ORTHANC_BINARY} not found: run scripts/bootstrap.sh (installs Debian's orthanc)")
    last: Exception | None = None
    for attempt in range(attempts):
        work = folder / f"orthanc-{attempt}"
        config = build_orthanc_config(
            data_dir=work / "data", http_port=free_port(), dicom_port=free_port(), **config_kwargs
        )
        server = OrthancServer(config, work_dir=work)
        try:
            return server.start(timeout=60)
        except OrthancStartError as exc:  # most likely a port taken between free_port() and bind
            last = exc
    raise AssertionError(f"Orthanc did not start in {attempts} attempts: {last}")


def upload(orthanc: OrthancServer, ds: Dataset) -> dict:
    """POST one dataset to ``/instances``; return Orthanc's answer."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with orthanc.session() as s:
        r = s.post(orthanc.url + "/instances", data=buf.getvalue(),
                   headers={"Content-Type": "application/dicom"}, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    """One Orthanc per test module, authentication on (user ``unirg-test``, random password)."""
    server = start_orthanc(
        tmp_path_factory.mktemp("orthanc"), users={ORTHANC_USER: secrets.token_urlsafe(12)}, stable_age=2
    )
    try:
        yield server
    finally:
        server.stop()
