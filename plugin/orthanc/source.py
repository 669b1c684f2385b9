"""The worker's side of the Orthanc path: images, priors and write-back through Orthanc's REST API.

The worker loop, queue semantics and pipeline are the listener's (:class:`unirg.plugin.worker.Worker`);
only three of its collaborators change:

* :class:`OrthancInstanceSource` reads the study's images (ledger paths ``orthanc:<instance ID>``)
  with ``GET /instances/{id}/file``;
* :class:`unirg.plugin.priors.orthanc.OrthancPriors` (the Orthanc prior adapter) fetches priors;
* :class:`OrthancSRStore` keeps the local copy, then ``POST /instances``. "AlreadyStored" counts as
  delivered: SR UIDs are deterministic, so a job retried after a crash or a kill -9 between store
  and completion stores nothing twice.

:func:`unirg.plugin.orthanc.adapter.OrthancAdapter` assembles a worker from a :class:`unirg.plugin.config.Config`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
import urllib3
from pydicom import Dataset, dcmread

from unirg.plugin.orthanc.rest import orthanc_instance_id
from unirg.plugin.paths import uid_path
from unirg.plugin.receive import write_bytes_atomic
from unirg.plugin.store import StoreFailed, StoreOutcome, refuse_unlabelled, sr_bytes

__all__ = [
    "OrthancClient",
    "OrthancError",
    "OrthancInstanceSource",
    "OrthancSRStore",
]

log = logging.getLogger(__name__)


class OrthancError(Exception):
    """A REST call failed: Orthanc unreachable (``status`` None) or it answered an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404


class OrthancClient:
    """A small ``requests`` client for Orthanc's REST API (basic auth, timeouts, errors as
    :class:`OrthancError` naming the call).

    A pooled keep-alive connection can outlive the Orthanc process it was opened to (Orthanc
    restarted): the next request on it fails with ``RemoteDisconnected`` / ``ConnectionResetError``.
    Then the pool is dropped and the request is sent once more on a fresh connection, but only when
    a repeat is harmless: GET/HEAD/PUT/DELETE/OPTIONS, the read-only POSTs ``/tools/find``,
    ``/tools/lookup`` and ``/modalities/{name}/query`` (C-FIND), and ``POST /instances`` (Orthanc
    answers "AlreadyStored" to a repeat). Any other request (e.g. a C-MOVE) is repeated only when it
    provably never reached Orthanc (the connection could not be opened).
    """

    RETRY_SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
    RETRY_SAFE_POSTS = ("/tools/find", "/tools/lookup", "/instances")

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.auth = auth
        self.session.trust_env = False  # loopback PACS: never through an HTTP proxy
        self.reconnects = 0  # requests sent again on a fresh connection

    @classmethod
    def retry_safe(cls, method: str, path: str) -> bool:
        """Whether ``method path`` may be sent twice with the effect of sending it once."""
        method, path = method.upper(), path.split("?", 1)[0].rstrip("/")
        if method in cls.RETRY_SAFE_METHODS:
            return True
        if method != "POST":
            return False
        if path in cls.RETRY_SAFE_POSTS:
            return True
        parts = path.strip("/").split("/")
        return len(parts) == 3 and parts[0] == "modalities" and parts[2] == "query"

    @staticmethod
    def retry_reason(exc: BaseException, retry_safe: bool) -> str | None:
        """Why a failed request may be sent once more on a fresh connection, or None if it may not.

        A connection that could not be opened carried no request, so any request may be repeated; a
        pooled connection closed or reset by the peer may have delivered it, so only a ``retry_safe`` one.
        """
        seen: list[BaseException] = []
        todo: list[Any] = [exc]
        while todo:
            e = todo.pop()
            if isinstance(e, BaseException) and not any(e is s for s in seen):
                seen.append(e)
                todo += [*e.args, getattr(e, "reason", None), e.__cause__, e.__context__]
        if any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in seen):
            return "connection refused: the request was never sent"
        dropped = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)  # RemoteDisconnected too
        stale = next((e for e in seen if isinstance(e, dropped)), None)
        if stale is not None and retry_safe:
            return f"stale keep-alive connection: {type(stale).__name__}: {stale}"
        return None

    def request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> requests.Response:
        url, timeout = self.url + path, timeout or self.timeout
        try:
            try:
                r = self.session.request(method, url, timeout=timeout, **kw)
            except requests.ConnectionError as exc:
                reason = self.retry_reason(exc, self.retry_safe(method, path))
                if reason is None:
                    raise
                log.info("event=orthanc_reconnect method=%s path=%s reason=%r", method, path, reason)
                self.reconnects += 1
                self.session.close()  # drop every pooled connection: the others are stale too
                r = self.session.request(method, url, timeout=timeout, **kw)
        except requests.RequestException as exc:
            raise OrthancError(f"Orthanc at {self.url} unreachable ({method} {path}): {exc}") from exc
        if r.status_code >= 400:
            detail = r.text[:300].strip().replace("\n", " ")
            raise OrthancError(f"Orthanc {method} {path} answered {r.status_code}: {detail}", r.status_code)
        return r

    def get_json(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post_json(self, path: str, body: Any, **kw: Any) -> Any:
        data = body if isinstance(body, (bytes, str)) else None
        r = self.request("POST", path, data=data, json=None if data is not None else body, **kw)
        return r.json() if r.content else None

    def get_bytes(self, path: str, **kw: Any) -> bytes:
        return self.request("GET", path, **kw).content

    def instance(self, instance_id: str) -> Dataset:
        return dcmread(io.BytesIO(self.get_bytes(f"/instances/{instance_id}/file")))

    def lookup(self, uid: str, kind: str) -> str | None:
        """Orthanc's ID of the ``kind`` ("Study", "Instance", ...) with DICOM UID ``uid``, or None."""
        for hit in self.post_json("/tools/lookup", uid) or []:
            if hit.get("Type") == kind:
                return str(hit["ID"])
        return None

    def close(self) -> None:
        self.session.close()


class OrthancInstanceSource:
    """:class:`unirg.plugin.worker.InstanceSource` for ledger paths ``orthanc:<instance ID>``."""

    def __init__(self, client: OrthancClient) -> None:
        self.client = client

    def read(self, paths: Sequence[str]) -> list[Dataset]:
        return [self.client.instance(orthanc_instance_id(p)) for p in paths]


class OrthancSRStore:
    """Local copy (``<sr_dir>/<study>/<sop>.dcm``), then ``POST /instances`` into Orthanc."""

    def __init__(self, client: OrthancClient, local_dir: str | Path) -> None:
        self.client = client
        self.local_dir = Path(local_dir)

    def store(self, sr: Dataset) -> StoreOutcome:
        refuse_unlabelled(sr, "orthanc")  # ResearchLabelMissing: nothing written or posted
        data = sr_bytes(sr)
        path = uid_path(self.local_dir, sr.StudyInstanceUID, sr.SOPInstanceUID)  # UnsafePath if not UIDs
        write_bytes_atomic(path, data)
        try:
            answer = self.client.post_json("/instances", data, headers={"Content-Type": "application/dicom"})
        except OrthancError as exc:
            log.warning("event=sr_store_failed sr=%s study=%s destination=orthanc reason=%r",
                        sr.SOPInstanceUID, sr.StudyInstanceUID, str(exc))
            raise StoreFailed(str(exc)) from exc
        status = (answer or {}).get("Status")
        if status not in ("Success", "AlreadyStored"):
            raise StoreFailed(f"Orthanc did not store the SR: {answer!r}")
        log.info("event=sr_stored sr=%s study=%s destination=orthanc status=%s orthanc_id=%s",
                 sr.SOPInstanceUID, sr.StudyInstanceUID, status, answer.get("ID"))
        return StoreOutcome(local_path=path, delivered=[f"orthanc {self.client.url}"])
