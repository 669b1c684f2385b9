"""``unirg status --serve PORT``: the status page and ``/metrics`` over HTTP for the listener (stdlib
``http.server``, one thread per request, GET/HEAD only, nothing that changes state).

=====================================  =================================================
path                                   answer
=====================================  =================================================
``/``, ``/unirg/``                     the status page (HTML)
``/metrics``, ``/unirg/metrics``       Prometheus text exposition
``/status.json``                       the snapshot as JSON
=====================================  =================================================

No authentication: bind it to loopback (the default) or put it behind a proxy that authenticates.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from unirg.plugin.monitor.metrics import CONTENT_TYPE, metrics_text
from unirg.plugin.monitor.page import render_page

__all__ = ["MonitorServer", "answer"]

log = logging.getLogger(__name__)


def answer(path: str, read: Callable[[], Mapping[str, Any]]) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` for a GET of ``path`` (query string ignored)."""
    path = path.split("?", 1)[0]
    if path in ("/", "/unirg", "/unirg/", "/index.html"):
        return 200, "text/html; charset=utf-8", render_page(read()).encode("utf-8")
    if path in ("/metrics", "/unirg/metrics"):
        return 200, CONTENT_TYPE, metrics_text(read())
    if path in ("/status.json", "/unirg/status.json"):
        return 200, "application/json", json.dumps(read(), indent=2, default=str).encode("utf-8")
    return 404, "application/json", json.dumps({"error": f"no route {path}"}).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: MonitorServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def _send(self, with_body: bool) -> None:
        try:
            status, ctype, body = answer(self.path, self.server.read)
        except Exception as exc:  # the database is down, ...: say so, keep serving
            log.exception("event=monitor_error path=%s", self.path)
            status, ctype = 500, "application/json"
            body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._send(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(False)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("event=monitor_request client=%s " + fmt, self.client_address[0], *args)


class MonitorServer(ThreadingHTTPServer):
    """The monitor's HTTP server on ``(host, port)`` (port 0: a free one, see :attr:`port`);
    ``read()`` gives a fresh snapshot per request."""

    daemon_threads = True

    def __init__(self, read: Callable[[], Mapping[str, Any]], host: str = "127.0.0.1", port: int = 0) -> None:
        self.read = read
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def start(self) -> MonitorServer:
        """Serve on a background thread (returns at once)."""
        self._thread = threading.Thread(target=self.serve_forever, name="unirg-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(10)
