"""OrthancClient against a real local HTTP/1.1 server that drops keep-alive connections, as a restarted
Orthanc does to the connections opened to its previous process: a request that is safe to repeat is
sent again once on a fresh connection; any other is not repeated."""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from unirg.plugin.orthanc.source import OrthancClient, OrthancError


class DroppingServer(ThreadingHTTPServer):
    """Answers the first request on each connection; later requests on that connection (``mode="stale"``),
    or every request (``mode="always"``), are read and then the connection is closed (or reset) unanswered."""

    daemon_threads = True

    def __init__(self, mode: str = "stale", reset: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode, self.reset = mode, reset
        self.connections = 0
        self.seen: list[tuple[int, str, str, bool]] = []  # (connection, method, path, answered)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1
            self.conn_id = self.server.connections
        self.requests = 0

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests += 1
        drop = self.server.mode == "always" or self.requests > 1
        with self.server.lock:
            self.server.seen.append((self.conn_id, self.command, self.path, not drop))
        if drop:
            if self.server.reset:  # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        answer = json.dumps({"method": self.command, "path": self.path, "size": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("method, path", [
    ("POST", "/tools/find"), ("POST", "/tools/lookup"), ("POST", "/instances"),
    ("POST", "/modalities/pacs/query"), ("GET", "/instances/abc/file"),
])
def test_a_request_safe_to_repeat_is_sent_again_on_a_fresh_connection(method, path, reset):
    with DroppingServer(reset=reset) as server:
        client = OrthancClient(server.url, timeout=10)
        assert client.get_json("/system")["path"] == "/system"  # opens the keep-alive connection
        answer = client.request(method, path, data=b"x" * 10).json()
        assert answer == {"method": method, "path": path, "size": 10}
        assert client.reconnects == 1
        # The first try went out on the old connection and was dropped; the repeat on a new one.
        assert server.seen == [(1, "GET", "/system", True), (1, method, path, False), (2, method, path, True)]
        client.close()


def test_a_request_not_safe_to_repeat_is_not_sent_again():
    """A C-MOVE that may have reached Orthanc: the error is reported, the move is not sent twice."""
    with DroppingServer() as server:
        client = OrthancClient(server.url, timeout=10)
        client.get_json("/system")
        with pytest.raises(OrthancError, match=r"unreachable \(POST /modalities/pacs/move\)"):
            client.post_json("/modalities/pacs/move", {"Level": "Study"})
        assert client.reconnects == 0
        assert [s[2] for s in server.seen] == ["/system", "/modalities/pacs/move"]


def test_only_one_repeat_then_the_error():
    with DroppingServer(mode="always") as server:
        client = OrthancClient(server.url, timeout=10)
        with pytest.raises(OrthancError, match=r"unreachable \(POST /tools/find\)") as err:
            client.post_json("/tools/find", {"Level": "Study", "Query": {}})
        assert err.value.status is None
        assert client.reconnects == 1
        assert server.seen == [(1, "POST", "/tools/find", False), (2, "POST", "/tools/find", False)]


def test_a_refused_connection_carried_nothing_so_any_request_is_tried_once_more():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OrthancClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(OrthancError, match="unreachable"):
        client.post_json("/modalities/pacs/move", {"Level": "Study"})
    assert client.reconnects == 1


@pytest.mark.parametrize("method, path, safe", [
    ("GET", "/studies/x", True), ("post", "/tools/find", True), ("POST", "/tools/lookup", True),
    ("POST", "/instances", True), ("POST", "/instances/", True), ("POST", "/modalities/pacs/query", True),
    ("POST", "/modalities/pacs/move", False), ("POST", "/modalities/pacs/store", False),
    ("POST", "/instances/abc/modify", False), ("POST", "/tools/reset", False), ("PATCH", "/x", False),
])
def test_retry_safe(method, path, safe):
    assert OrthancClient.retry_safe(method, path) is safe
