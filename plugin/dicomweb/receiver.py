"""A STOW-RS receiving endpoint: an archive pushes studies to unirg (``POST /studies``) instead of being polled.

Each part of the ``multipart/related; type="application/dicom"`` body goes the listener's way
(:class:`unirg.plugin.receive.InstanceSink`'s checks, atomic file under the data dir, ledger, assembler):
the same queue, the same views, the same refusal of what is not a CR/DX image or an accepted object.
HTTP basic authentication is required (no account, no endpoint); the body size is capped; it listens
on loopback unless told otherwise. The answer is the STOW-RS response: ReferencedSOPSequence for the
stored instances, FailedSOPSequence (with FailureReason) for the others; 200, 202 (some failed) or 409.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any

from pydicom import dcmread

from unirg.plugin.assemble import IMAGE_SOP_CLASSES, classify_instance
from unirg.plugin.paths import path_under
from unirg.plugin.receive import (
    ACCEPTED_OTHER_SOP_CLASSES,
    CANNOT_UNDERSTAND,
    PROCESSING_FAILURE,
    InstanceSink,
    StoreRefused,
    check_dataset,
)
from unirg.sr_writer.io import write_bytes_atomic

__all__ = ["StowReceiver"]

log = logging.getLogger(__name__)

SOP_NOT_SUPPORTED = 0x0122


def _item(sop_class: str, sop_uid: str, reason: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
                           "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"}}
    if reason is not None:
        out["00081197"] = {"vr": "US", "Value": [reason]}
    return out


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    r"""The parts' contents of a ``multipart/related`` body (bytes kept exactly; headers dropped).

    >>> split_multipart(b'--b\r\nContent-Type: application/dicom\r\n\r\nDATA\r\n--b--', 'multipart/related; boundary=b')
    [b'DATA']
    """
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"')
    if not boundary:
        raise ValueError("multipart body without a boundary")
    out = []
    for segment in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if segment.startswith(b"--"):
            break
        _head, sep, content = segment.partition(b"\r\n\r\n")
        if sep:
            out.append(content[:-2] if content.endswith(b"\r\n") else content)
    return out


class StowReceiver:
    """``POST /studies`` (and ``/studies/{uid}``) into ``sink``; :meth:`start` / :meth:`stop`.

    Parameters
    ----------
    sink : InstanceSink
    user, password : str
        The account an archive must present (basic auth); both required.
    host, port : str, int
        Where to listen (port 0: a free one, see :attr:`port`).
    max_body_mb : int
        Larger requests are refused with 413.
    """

    def __init__(self, sink: InstanceSink, *, user: str, password: str, host: str = "127.0.0.1", port: int = 0,
                 max_body_mb: int = 1024) -> None:
        if not user or not password:
            raise ValueError("the STOW-RS endpoint needs a user and a password (no anonymous pushes)")
        self.sink = sink
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.max_body = max_body_mb * 1024 * 1024
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                receiver._post(self)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> "StowReceiver":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="unirg-stow-receiver", daemon=True)
        self._thread.start()
        log.info("event=stow_receiver_listening host=%s port=%d", self.httpd.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- one request ------------------------------------------------------------------------------
    def _answer(self, h: BaseHTTPRequestHandler, status: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        h.send_response(status)
        if status == 401:
            h.send_header("WWW-Authenticate", 'Basic realm="unirg"')
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        if not hmac.compare_digest(h.headers.get("Authorization", ""), self._auth):
            log.warning("event=stow_unauthorised client=%s", h.client_address[0])
            return self._answer(h, 401)
        path = h.path.split("?", 1)[0].rstrip("/")
        parts = path.strip("/").split("/")
        if not parts or parts[-1] != "studies" and not (len(parts) >= 2 and parts[-2] == "studies"):
            return self._answer(h, 404)
        try:
            length = int(h.headers.get("Content-Length", ""))
        except ValueError:
            return self._answer(h, 411)
        if length > self.max_body:
            return self._answer(h, 413)
        ctype = h.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/related"):
            return self._answer(h, 415)
        body = h.rfile.read(length)
        try:
            raws = split_multipart(body, ctype)
        except ValueError:
            return self._answer(h, 400)
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for raw in raws:
            sop_class = sop_uid = ""
            try:
                try:
                    ds = dcmread(BytesIO(raw), force=True)  # a part may come without preamble
                    sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
                    if raw[128:132] != b"DICM":  # keep a proper DICOM file on disk
                        buf = BytesIO()
                        ds.save_as(buf, enforce_file_format=True)
                        raw = buf.getvalue()
                except Exception as exc:
                    raise StoreRefused(CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}") from exc
                if sop_class not in IMAGE_SOP_CLASSES and sop_class not in ACCEPTED_OTHER_SOP_CLASSES:
                    raise StoreRefused(SOP_NOT_SUPPORTED, f"SOP class {sop_class} not accepted")
                self._store(ds, raw, sop_class, sop_uid, h.client_address[0])
                stored.append(_item(sop_class, sop_uid))
            except StoreRefused as exc:
                log.warning("event=stow_refused sop=%s status=0x%04X reason=%r", sop_uid, exc.status, str(exc))
                failed.append(_item(sop_class, sop_uid, exc.status))
            except Exception:
                log.exception("event=stow_failed sop=%s", sop_uid)
                failed.append(_item(sop_class, sop_uid, PROCESSING_FAILURE))
        answer: dict[str, Any] = {}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        self._answer(h, 200 if not failed else 202 if stored else 409, answer)

    def _store(self, ds: Any, raw: bytes, sop_class: str, sop_uid: str, client: str) -> None:
        sink = self.sink
        if sink.max_instance_bytes and len(raw) > sink.max_instance_bytes:
            raise StoreRefused(0xA700, f"instance larger than {sink.max_instance_bytes} bytes")
        check_dataset(ds, sop_class, sop_uid)
        info = classify_instance(ds)
        rel = InstanceSink.relative_path(info.study_uid, info.sop_instance_uid)  # UnsafePath if not UIDs
        write_bytes_atomic(path_under(sink.data_dir, *rel.split("/")), raw)
        status = sink.ledger.record_instance(info, rel, "STOW-RS")
        log.info("event=instance_received via=stow-rs study=%s sop=%s view=%s status=%s client=%s bytes=%d",
                 info.study_uid, info.sop_instance_uid, info.view, status, client, len(raw))
        if status == "stored" and info.kind == "image" and sink.assembler is not None:
            try:
                sink.assembler.check(info.study_uid)
            except Exception:  # the instance is safe; the sweep looks again
                log.exception("event=assembly_error study=%s", info.study_uid)
