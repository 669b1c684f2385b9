"""``unirg viewer``: the OHIF viewer for unirg's drafts, served next to an Orthanc reverse proxy.

One small threaded HTTP server (stdlib ``http.server``) on loopback that

* serves the prebuilt OHIF ``dist/`` (``@ohif/app`` pinned in ``scripts/install-viewer.sh``, installed
  to ``var/ohif/dist``) at the web root, with the single-page-app fallback to ``index.html`` for its
  routes (``/viewer``, ``/viewer/dicomweb``, ...);
* replaces ``/app-config.js`` with a generated one whose only data source is DICOMweb on the same
  origin: ``qidoRoot`` / ``wadoRoot`` ``/dicom-web``, ``wadoUriRoot`` ``/wado``; it also registers
  the draft-review hanging protocols (an inline extension: OHIF loads extension objects from
  ``window.config.extensions`` as they are) and a few CSS rules (SR text wraps, the study browser
  shows the whole research label). Links (``study_viewer_url``) pick the layout with
  ``hangingProtocolId``: frontal radiograph left, draft right, the prior's frontal under the current;
* reverse-proxies ``/dicom-web/*`` and ``/wado`` to Orthanc (Orthanc 1.10 sends no CORS headers, so
  the browser must see one origin), streaming the responses, adding Orthanc's HTTP basic-auth
  credentials when given (``--orthanc-user`` / ``--orthanc-password``), else passing the browser's
  own ``Authorization`` and Orthanc's challenge through.

Why the stdlib and not nginx or an async framework: the traffic is one researcher's browser on
loopback; ``ThreadingHTTPServer`` + ``http.client`` stream fine at that scale, need no new
dependency or root-owned config, and start and stop inside the demo and the tests. Put a real web
server in front (TLS, access control) before exposing it beyond loopback: the proxy holds PACS
credentials. The proxy is read-only (GET / HEAD): drafts get into Orthanc via the plugin, not OHIF.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import mimetypes
import os
import posixpath
import shutil
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import requests

from unirg.plugin.home import unirg_home
from unirg.plugin.ohif import (  # noqa: F401 - the OHIF side, re-exported: viewer.study_viewer_url etc.
    DICOMWEB_PREFIX,
    DRAFT_MATCH,
    DRAFT_PRIOR_PROTOCOL,
    DRAFT_PROTOCOL,
    OHIF_PACKAGE,
    OHIF_VERSION,
    VIEWER_CSS,
    WADO_PREFIX,
    build_app_config,
    draft_hanging_protocols,
    study_viewer_url,
)
from unirg.plugin.signals import stop_on_signals, wait_for_stop
from unirg.sr_writer import RESEARCH_LABEL

log = logging.getLogger(__name__)

DEFAULT_OHIF_DIST = unirg_home() / "ohif" / "dist"  # scripts/install-viewer.sh puts it there
INSTALL_HINT = "run scripts/install-viewer.sh (installs the pinned OHIF viewer and Debian chromium)"
#: Series Description prefix of unirg's draft SRs.
DRAFT_LABEL = RESEARCH_LABEL

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
}
_COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".map", ".wasm", ".svg", ".txt", ".xml"}
_NO_CACHE = {"/index.html", "/app-config.js", "/sw.js", "/init-service-worker.js"}
# Request headers the proxy forwards; everything else (cookies, hop-by-hop) stays here.
_FORWARD_REQUEST = {
    "accept", "accept-encoding", "accept-language", "range", "if-range", "if-none-match",
    "if-modified-since", "if-match", "if-unmodified-since", "user-agent", "cache-control",
}
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
}
_CHUNK = 256 * 1024


class ViewerSetupError(RuntimeError):
    """The OHIF dist is missing or incomplete."""


def default_ohif_dist() -> Path:
    """``$UNIRG_OHIF_DIST`` when set, else ``var/ohif/dist`` of this checkout."""
    env = os.environ.get("UNIRG_OHIF_DIST")
    return Path(env) if env else DEFAULT_OHIF_DIST


def check_ohif_dist(dist: str | os.PathLike[str] | None = None) -> Path:
    """The OHIF dist folder, checked; raises ViewerSetupError naming the set-up script."""
    path = Path(dist) if dist is not None else default_ohif_dist()
    if not (path / "index.html").is_file():
        raise ViewerSetupError(f"OHIF viewer not found at {path} (no index.html): {INSTALL_HINT}")
    return path.resolve()


@dataclass(frozen=True)
class OrthancUpstream:
    """Where the proxy sends ``/dicom-web`` and ``/wado``: Orthanc's base URL, optional credentials."""

    url: str
    user: str | None = None
    password: str | None = None
    timeout: float = 300.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Orthanc URL must be http(s)://host[:port][/prefix], got {self.url!r}")
        if (self.user is None) != (self.password is None):
            raise ValueError("give both the Orthanc user and password, or neither")

    @property
    def base_path(self) -> str:
        return urllib.parse.urlsplit(self.url).path.rstrip("/")

    @property
    def authorization(self) -> str | None:
        if self.user is None:
            return None
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.user is not None else None  # type: ignore[return-value]

    def connect(self) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname, parts.port, timeout=self.timeout)


class _GzipCache:
    """gzip bodies of static files, computed once per (path, mtime, size)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[tuple[int, int], bytes]] = {}

    def get(self, path: Path, stat: os.stat_result) -> bytes:
        key, stamp = str(path), (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._items.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
        body = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
        with self._lock:
            self._items[key] = (stamp, body)
        return body


class ViewerServer(ThreadingHTTPServer):
    """OHIF static files + generated app-config + Orthanc DICOMweb proxy, on one origin."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        upstream: OrthancUpstream,
        ohif_dist: str | os.PathLike[str] | None = None,
    ) -> None:
        self.ohif_dist = check_ohif_dist(ohif_dist)
        self.upstream = upstream
        self.app_config = build_app_config().encode()
        self.gzip_cache = _GzipCache()
        self._thread: threading.Thread | None = None
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}/"

    def serve_in_thread(self) -> ViewerServer:
        """Serve from a daemon thread (tests, the demo); ``close()`` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="unirg-viewer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"
    server_version = "unirg-viewer"

    # -- dispatch -------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    def _not_allowed(self) -> None:
        self._send_text(HTTPStatus.METHOD_NOT_ALLOWED, "read-only viewer: GET and HEAD only\n",
                        extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def _dispatch(self, head: bool) -> None:
        # The target as sent: http.server turns a leading '//' into '/' in self.path.
        words = self.requestline.split()
        target = clean_target(words[1] if len(words) == 3 else self.path)
        try:
            if target is None:
                return self._send_text(HTTPStatus.BAD_REQUEST,
                                       "bad request path: no '.' or '..' segments, encoded '/' or '\\', "
                                       "double encoding or absolute URLs\n")
            path, query = target
            if _under(path, DICOMWEB_PREFIX) or _under(path, WADO_PREFIX):
                self._proxy(head, path, query)
            elif path == "/app-config.js":
                self._send_bytes(HTTPStatus.OK, self.server.app_config, _CONTENT_TYPES[".js"], head,
                                 cache="no-store")
            else:
                self._static(path, head)
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away: %s", self.path)
            self.close_connection = True

    # -- static files ---------------------------------------------------------------------------
    def _static(self, path: str, head: bool) -> None:
        rel = urllib.parse.unquote(path)
        if "\0" in rel or "\\" in rel:
            return self._send_text(HTTPStatus.BAD_REQUEST, "bad path\n")
        rel = posixpath.normpath("/" + rel.lstrip("/"))
        root = self.server.ohif_dist
        target = (root / rel.lstrip("/")).resolve()
        if target != root and root not in target.parents:
            return self._send_text(HTTPStatus.NOT_FOUND, "not found\n")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            last = rel.rsplit("/", 1)[-1]
            if "." in last:  # a missing asset: a real 404, not the app
                return self._send_text(HTTPStatus.NOT_FOUND, "not found\n")
            target = root / "index.html"  # an OHIF route such as /viewer: the single-page app
        rel_served = "/" + target.relative_to(root).as_posix()
        suffix = target.suffix.lower()
        ctype = (_CONTENT_TYPES.get(suffix) or mimetypes.guess_type(target.name)[0]
                 or "application/octet-stream")
        cache = "no-cache" if rel_served in _NO_CACHE else "public, max-age=3600"
        st = target.stat()
        accepts_gzip = "gzip" in (self.headers.get("Accept-Encoding") or "")
        if accepts_gzip and suffix in _COMPRESSIBLE and st.st_size > 1024:
            body = self.server.gzip_cache.get(target, st)
            return self._send_bytes(HTTPStatus.OK, body, ctype, head, cache=cache,
                                    extra={"Content-Encoding": "gzip", "Vary": "Accept-Encoding",
                                           "Last-Modified": formatdate(st.st_mtime, usegmt=True)})
        self.send_response(HTTPStatus.OK)
        self._common_headers(ctype, cache)
        self.send_header("Content-Length", str(st.st_size))
        self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
        self.end_headers()
        if not head:
            with open(target, "rb") as f:
                shutil.copyfileobj(f, self.wfile, _CHUNK)

    # -- the Orthanc proxy ----------------------------------------------------------------------
    def _proxy(self, head: bool, path: str, query: str) -> None:
        """Forward the cleaned ``path`` (see :func:`clean_target`) and ``query``, never the raw target."""
        up = self.server.upstream
        headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARD_REQUEST}
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        # Orthanc's DICOMweb plugin builds RetrieveURL / BulkDataURI from this (it does not unquote,
        # so the host goes in bare); the browser then follows them back through this proxy.
        headers["Forwarded"] = f"host={host};proto=http"
        headers["X-Forwarded-Host"] = host
        headers["X-Forwarded-Proto"] = "http"
        headers["X-Forwarded-For"] = self.client_address[0]
        if up.authorization:
            headers["Authorization"] = up.authorization
        elif self.headers.get("Authorization"):
            headers["Authorization"] = self.headers["Authorization"]
        conn = up.connect()
        try:
            try:
                upstream_target = up.base_path + urllib.parse.quote(path, safe=_PATH_SAFE) + (f"?{query}" if query else "")
                conn.request("HEAD" if head else "GET", upstream_target, headers=headers)
                resp = conn.getresponse()
            except OSError as exc:
                log.warning("Orthanc at %s unreachable: %s", up.url, exc)
                return self._send_text(HTTPStatus.BAD_GATEWAY, f"Orthanc at {up.url} unreachable: {exc}\n")
            if resp.status == HTTPStatus.UNAUTHORIZED and up.authorization:
                log.error("Orthanc refused the configured credentials (401) for %s", self.path)
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                low = name.lower()
                if low in _HOP_BY_HOP or low == "content-length":
                    continue
                if low == "www-authenticate" and up.authorization:
                    continue  # the browser must not prompt: the proxy holds the credentials
                self.send_header(name, value)
            length = resp.getheader("Content-Length")
            bodiless = head or resp.status in (204, 304) or 100 <= resp.status < 200
            if bodiless:
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                return
            if length is not None:
                self.send_header("Content-Length", length)
                self.end_headers()
                while chunk := resp.read1(_CHUNK):
                    self.wfile.write(chunk)
            else:  # stream as it comes, re-chunked
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := resp.read1(_CHUNK):
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
        except (http.client.HTTPException, OSError) as exc:
            # Mid-stream failure: the status line is gone already; drop the connection.
            if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                raise
            log.warning("proxy of %s failed mid-response: %s", self.path, exc)
            self.close_connection = True
        finally:
            conn.close()

    # -- helpers --------------------------------------------------------------------------------
    def _common_headers(self, ctype: str, cache: str) -> None:
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        # OHIF's recommended isolation headers (SharedArrayBuffer for cornerstone's decoders/volumes);
        # everything is same-origin, so nothing the app needs is blocked.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")

    def _send_bytes(self, status: int, body: bytes, ctype: str, head: bool, *, cache: str = "no-store",
                    extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self._common_headers(ctype, cache)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_text(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._send_bytes(status, text.encode(), "text/plain; charset=utf-8", self.command == "HEAD",
                         extra=extra)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


def _under(path: str, prefix: str) -> bool:
    """``path`` (already cleaned by :func:`clean_target`) is ``prefix`` or below it."""
    return path == prefix or path.startswith(prefix + "/")


# Characters a cleaned path is re-quoted with (RFC 3986 pchar without '%').
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_ENCODED_SEPARATORS = ("%2f", "%5c", "%00")


def clean_target(target: str) -> tuple[str, str] | None:
    """(path, query) of a request target, the path percent-decoded once; None to refuse it.

    Refused: anything but origin-form (``/...``, not ``//...`` or ``http://...``), encoded ``/``, ``\\``
    or NUL, a ``.`` or ``..`` segment (encoded or not), a backslash, or a ``%`` left after one
    decoding (double encoding). Orthanc's web server resolves ``..`` and decodes ``%2F`` itself, so
    without this ``/dicom-web/../system`` would reach any Orthanc route with the proxy's credentials.

    >>> clean_target("/dicom-web/studies?PatientID=1")
    ('/dicom-web/studies', 'PatientID=1')
    >>> [clean_target(t) for t in ("/dicom-web/../system", "/dicom-web/%2e%2e/system", "//system")]
    [None, None, None]
    """
    if not target.startswith("/") or target.startswith("//"):
        return None
    raw_path, _, query = target.partition("?")
    raw_path = raw_path.partition("#")[0]
    if any(sep in raw_path.lower() for sep in _ENCODED_SEPARATORS):
        return None
    try:
        path = urllib.parse.unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "%" in path or "\\" in path or "\0" in path:
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    clean = posixpath.normpath(path)  # only collapses '//' now
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean, query.partition("#")[0]


# -- drafts Orthanc holds ---------------------------------------------------------------------------
def _tag(item: dict, tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def find_draft_series(upstream: OrthancUpstream, study_uid: str | None = None) -> list[tuple[str, str, str]]:
    """(StudyInstanceUID, SeriesInstanceUID, SeriesDescription) of unirg's draft SR series in Orthanc,
    by QIDO-RS (all studies, or one). Raises requests exceptions when Orthanc cannot be asked."""
    params: dict[str, str] = {"Modality": "SR", "includefield": "0008103E"}
    if study_uid:
        params["StudyInstanceUID"] = study_uid
    r = requests.get(upstream.url.rstrip("/") + DICOMWEB_PREFIX + "/series", params=params,
                     auth=upstream.auth, headers={"Accept": "application/dicom+json"}, timeout=30)
    r.raise_for_status()
    found = []
    for item in r.json() if r.content else []:
        desc = _tag(item, "0008103E") or ""
        study, series = _tag(item, "0020000D"), _tag(item, "0020000E")
        if study and series and desc.startswith(DRAFT_LABEL):
            found.append((study, series, desc))
    return sorted(found)


def draft_prior_study(upstream: OrthancUpstream, study_uid: str, sr_series_uid: str) -> str | None:
    """The most recent prior study the draft compared with (its PertinentOtherEvidenceSequence)
    that Orthanc holds with a radiograph (DX or CR), else None. Raises requests exceptions when
    Orthanc cannot be asked."""
    root = upstream.url.rstrip("/") + DICOMWEB_PREFIX
    headers = {"Accept": "application/dicom+json"}
    r = requests.get(f"{root}/studies/{study_uid}/series/{sr_series_uid}/metadata",
                     auth=upstream.auth, headers=headers, timeout=30)
    r.raise_for_status()
    uids = {
        uid
        for instance in (r.json() if r.content else [])
        for item in (instance.get("0040A385") or {}).get("Value") or []
        if (uid := _tag(item, "0020000D")) and uid != study_uid
    }
    dated = []
    for uid in uids:
        q = requests.get(f"{root}/studies", params={"StudyInstanceUID": uid, "includefield": "00080061"},
                         auth=upstream.auth, headers=headers, timeout=30)
        q.raise_for_status()
        for item in q.json() if q.content else []:
            modalities = set((item.get("00080061") or {}).get("Value") or [])
            if modalities & {"DX", "CR"}:
                dated.append((_tag(item, "00080020") or "", uid))
    return max(dated)[1] if dated else None


def draft_viewer_url(base: str, upstream: OrthancUpstream, study_uid: str, sr_series_uid: str) -> str:
    """``study_viewer_url`` of a draft, with the prior it compared with when Orthanc holds it."""
    try:
        prior = draft_prior_study(upstream, study_uid, sr_series_uid)
    except (requests.RequestException, ValueError) as exc:
        log.warning("no prior for the OHIF link of %s: %s", study_uid, exc)
        prior = None
    return study_viewer_url(base, study_uid, sr_series_uid, prior_study_uid=prior)


# -- the command ------------------------------------------------------------------------------------
@click.command("viewer")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True,
              help="HTTP port of the viewer.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The proxy carries the Orthanc credentials: keep it on loopback "
                   "(or put an authenticating web server in front).")
@click.option("--orthanc", "orthanc_url", default="http://127.0.0.1:8042", show_default=True,
              envvar="UNIRG_ORTHANC_URL", help="Orthanc's base URL (its DICOMweb root must be /dicom-web/).")
@click.option("--orthanc-user", envvar="UNIRG_ORTHANC_USER", default=None,
              help="Orthanc HTTP basic-auth user ($UNIRG_ORTHANC_USER).")
@click.option("--orthanc-password", envvar="UNIRG_ORTHANC_PASSWORD", default=None,
              help="Its password ($UNIRG_ORTHANC_PASSWORD; prefer the variable to the flag).")
@click.option("--ohif-dist", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="OHIF dist/ folder [default: $UNIRG_OHIF_DIST or var/ohif/dist].")
@click.option("--study", "studies", multiple=True, metavar="UID",
              help="Print the OHIF link of this study's draft (repeatable).")
@click.option("--list-drafts/--no-list-drafts", default=True, show_default=True,
              help="Print the OHIF link of every draft Orthanc holds at start.")
def viewer(port: int, host: str, orthanc_url: str, orthanc_user: str | None,
           orthanc_password: str | None, ohif_dist: Path | None, studies: tuple[str, ...],
           list_drafts: bool) -> None:
    """Serve the OHIF viewer with Orthanc's DICOMweb on the same origin; print draft links.

    \b
    Example:
      unirg viewer --port 3000 --orthanc http://127.0.0.1:8042 --orthanc-user unirg
      (password from $UNIRG_ORTHANC_PASSWORD), then open the printed link.
    RESEARCH ONLY - NOT FOR CLINICAL USE: the drafts shown are unverified AI output.
    """
    try:
        upstream = OrthancUpstream(orthanc_url, orthanc_user, orthanc_password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        server = ViewerServer((host, port), upstream=upstream, ohif_dist=ohif_dist)
    except ViewerSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    base = server.url
    click.echo(f"unirg viewer: OHIF {OHIF_VERSION} at {base}  (DICOMweb proxied to {orthanc_url})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who reaches this port reads Orthanc"
                   + (" with the configured credentials" if orthanc_user else ""), err=True)
    click.echo("RESEARCH ONLY - NOT FOR CLINICAL USE. Ctrl-C (SIGINT) or SIGTERM stops.")
    try:
        status = requests.get(orthanc_url.rstrip("/") + "/system", auth=upstream.auth, timeout=5).status_code
        if status == 401:
            click.echo("warning: Orthanc answered 401: give --orthanc-user/--orthanc-password", err=True)
        elif list_drafts or studies:
            drafts = find_draft_series(upstream)
            wanted = set(studies)
            for study, series, _ in drafts:
                if list_drafts or study in wanted:
                    click.echo(f"draft: {draft_viewer_url(base, upstream, study, series)}")
            for study in wanted - {d[0] for d in drafts}:
                click.echo(f"no draft yet for {study}: {study_viewer_url(base, study)}")
    except requests.RequestException as exc:
        click.echo(f"warning: Orthanc at {orthanc_url} not reachable yet ({exc}); serving anyway", err=True)
    sys.stdout.flush()
    stop = stop_on_signals()
    server.serve_in_thread()
    try:
        wait_for_stop(stop)
    finally:
        server.close()
