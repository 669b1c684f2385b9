"""Orthanc on loopback for unirg: the JSON configuration (a pure function) and a subprocess runner.

Targets Debian 12's Orthanc 1.10.1 with orthanc-python 4.0 and orthanc-dicomweb 1.7:

* ``build_orthanc_config(...)`` returns the configuration as a ``dict`` (serialise it with
  ``json.dumps``). It only loads the plugins it needs (DICOMweb always, Python when a script is given),
  uses the plugin-4.0 syntax ``"PythonScript": "/abs/path.py"`` (the ``"Python": {...}`` section is
  4.1+), and keeps the HTTP server loopback-only (``RemoteAccessAllowed: false``).
* ``OrthancServer`` writes that configuration into a work folder, starts ``/usr/sbin/Orthanc`` on it,
  waits until the REST API answers, and stops it with ``POST /tools/shutdown`` (then waits for the
  process to exit, so the index folder can be reused at once).

Orthanc 1.10 has no option to bind to one address: its HTTP server refuses non-loopback clients when
``RemoteAccessAllowed`` is false, but its DICOM port listens on every interface. So by default
(``accept_unknown_scu=False``, ``DicomAlwaysAllowStore: false``) only the declared ``DicomModalities``
may C-STORE: Orthanc 1.10 matches the *calling AE title* of the association against them, and the
peer's IP address too only with ``check_modality_host=True`` (``DicomCheckModalityHost``; the
declared host must then be the IP address the peer connects from). AE titles are no secret: firewall
the DICOM port as well.

``orthanc/orthanc.json.template`` documents the same settings for an existing Orthanc install.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

log = logging.getLogger(__name__)

ORTHANC_BINARY = "/usr/sbin/Orthanc"
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
PYTHON_PLUGIN = PLUGIN_DIR / "libOrthancPython.so"
DICOMWEB_ROOT = "/dicom-web/"
WADO_ROOT = "/wado"

# A modality is either Orthanc's short form [AET, host, port] or its object form
# {"AET": ..., "Host": ..., "Port": ..., "AllowStore": ...}.
Modality = Sequence[Any] | Mapping[str, Any]


class OrthancConfigError(ValueError):
    """An argument of build_orthanc_config() that Orthanc would reject or misread."""


class OrthancStartError(RuntimeError):
    """Orthanc exited during start-up or its REST API did not answer in time."""


def _check_port(name: str, port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise OrthancConfigError(f"{name} must be a TCP port 1-65535, got {port!r}")
    return port


def _check_aet(name: str, aet: str) -> str:
    if not isinstance(aet, str) or not 1 <= len(aet) <= 16 or aet != aet.strip() or "\\" in aet:
        raise OrthancConfigError(f"{name} must be 1-16 characters without edge spaces or '\\', got {aet!r}")
    return aet


def _modality(name: str, value: Modality) -> list[Any] | dict[str, Any]:
    if isinstance(value, Mapping):
        missing = {"AET", "Host", "Port"} - set(value)
        if missing:
            raise OrthancConfigError(f"DicomModalities[{name!r}] lacks {sorted(missing)}")
        _check_aet(f"DicomModalities[{name!r}].AET", value["AET"])
        _check_port(f"DicomModalities[{name!r}].Port", value["Port"])
        return dict(value)
    items = list(value)
    if len(items) not in (3, 4):
        raise OrthancConfigError(
            f"DicomModalities[{name!r}] must be [AET, host, port] or [AET, host, port, manufacturer]"
        )
    _check_aet(f"DicomModalities[{name!r}] AET", items[0])
    _check_port(f"DicomModalities[{name!r}] port", items[2])
    return items


def build_orthanc_config(
    *,
    data_dir: str | os.PathLike[str],
    http_port: int = 8042,
    dicom_port: int = 4242,
    aet: str = "UNIRG",
    name: str = "unirg",
    python_script: str | os.PathLike[str] | None = None,
    stable_age: int = 10,
    users: Mapping[str, str] | None = None,
    modalities: Mapping[str, Modality] | None = None,
    accept_unknown_scu: bool = False,
    check_modality_host: bool = False,
    temporary_dir: str | os.PathLike[str] | None = None,
    python_verbose: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Orthanc 1.10 configuration for unirg, as a JSON-serialisable dict. No I/O.

    ``data_dir`` holds the storage and the SQLite index (``<data_dir>/db``); ``temporary_dir`` defaults
    to ``<data_dir>/tmp``. ``users`` (name -> password) turns on HTTP basic authentication
    (``AuthenticationEnabled``); without users, authentication is off (``unirg orthanc`` always gives one).
    ``python_script`` loads orthanc-python with that script. ``modalities`` become
    ``DicomModalities`` (remote PACS for C-FIND / C-MOVE of priors, and the only AE titles that may
    C-STORE unless ``accept_unknown_scu=True``, which lets any AE title store: unsafe beyond a
    firewalled test set-up). ``check_modality_host`` also matches their IP address. ``extra`` is merged last, at
    the top level (e.g. a ``"Unirg": {...}`` section the plugin script reads with
    ``orthanc.GetConfiguration()``); it may override any key.
    """
    _check_port("http_port", http_port)
    _check_port("dicom_port", dicom_port)
    if http_port == dicom_port:
        raise OrthancConfigError(f"http_port and dicom_port are both {http_port}")
    _check_aet("aet", aet)
    if not isinstance(stable_age, int) or isinstance(stable_age, bool) or stable_age < 1:
        raise OrthancConfigError(f"stable_age must be a whole number of seconds >= 1, got {stable_age!r}")
    data = Path(data_dir)
    if not data.is_absolute():
        raise OrthancConfigError(f"data_dir must be an absolute path, got {str(data)!r}")
    temp = Path(temporary_dir) if temporary_dir is not None else data / "tmp"
    if not temp.is_absolute():
        raise OrthancConfigError(f"temporary_dir must be an absolute path, got {str(temp)!r}")
    users = dict(users or {})
    for user, password in users.items():
        if not user or ":" in user or not isinstance(password, str) or not password:
            raise OrthancConfigError(f"users: bad user name or empty password for {user!r}")

    plugins = [str(DICOMWEB_PLUGIN)]
    config: dict[str, Any] = {
        "Name": name,
        "StorageDirectory": str(data / "db"),
        "IndexDirectory": str(data / "db"),
        "TemporaryDirectory": str(temp),
        "StorageCompression": False,
        "Plugins": plugins,
        # HTTP: loopback clients only; basic authentication iff users are given.
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users,
        "HttpDescribeErrors": True,
        "ExecuteLuaEnabled": False,
        "OrthancExplorerEnabled": True,
        # DICOM: the SCP that receives studies; declared peers for Q/R of priors.
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        # C-STORE only from the declared modalities (calling AE title; IP too with DicomCheckModalityHost).
        "DicomAlwaysAllowStore": bool(accept_unknown_scu),
        "DicomCheckModalityHost": bool(check_modality_host),
        "DicomModalities": {k: _modality(k, v) for k, v in (modalities or {}).items()},
        "DicomModalitiesInDatabase": False,
        # A study is "stable" (OnChange STABLE_STUDY) this many seconds after its last instance.
        "StableAge": stable_age,
        "OverwriteInstances": False,
        "SaveJobs": True,
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": True,
            "WadoRoot": WADO_ROOT,
            # No "Host": the plugin then builds RetrieveURLs from the request's Host / Forwarded
            # headers, so they are right behind `unirg viewer`'s proxy too.
            "Ssl": False,
        },
    }
    if python_script is not None:
        script = Path(python_script)
        if not script.is_absolute():
            raise OrthancConfigError(f"python_script must be an absolute path, got {str(script)!r}")
        plugins.append(str(PYTHON_PLUGIN))
        config["PythonScript"] = str(script)  # orthanc-python 4.0 syntax
        config["PythonVerbose"] = python_verbose
    config.update(extra or {})
    return config


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


class OrthancServer:
    """Run Orthanc as a child process on a configuration from ``build_orthanc_config``.

    >>> cfg = build_orthanc_config(data_dir="/tmp/o", http_port=8042, dicom_port=4242)
    >>> with OrthancServer(cfg, work_dir="/tmp/o") as orthanc:   # doctest: +SKIP
    ...     orthanc.session().get(orthanc.url + "/system").json()

    ``work_dir`` receives ``orthanc.json`` and ``orthanc.log`` (Orthanc's stdout and stderr).
    The folders named in the configuration are created before start.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        work_dir: str | os.PathLike[str],
        orthanc_binary: str = ORTHANC_BINARY,
        verbose: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = dict(config)
        self.work_dir = Path(work_dir)
        self.orthanc_binary = orthanc_binary
        self.verbose = verbose
        self.env = dict(env) if env is not None else None
        self.config_path = self.work_dir / "orthanc.json"
        self.log_path = self.work_dir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The REST API root, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.config['HttpPort']}"

    @property
    def dicomweb_url(self) -> str:
        root = self.config.get("DicomWeb", {}).get("Root", DICOMWEB_ROOT)
        return self.url + "/" + root.strip("/")

    @property
    def auth(self) -> tuple[str, str] | None:
        """(user, password) of the first registered user when authentication is on, else None."""
        users = self.config.get("RegisteredUsers") or {}
        if not self.config.get("AuthenticationEnabled") or not users:
            return None
        user = next(iter(users))
        return user, users[user]

    @property
    def dicom_port(self) -> int:
        return int(self.config["DicomPort"])

    @property
    def aet(self) -> str:
        return str(self.config["DicomAet"])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def session(self) -> requests.Session:
        """A requests session with this Orthanc's credentials."""
        s = requests.Session()
        s.auth = self.auth
        return s

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> OrthancServer:
        """Start Orthanc and wait until ``GET /system`` answers 200. Raises OrthancStartError."""
        if self.is_running():
            raise OrthancStartError("this Orthanc is already running")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for key in ("StorageDirectory", "IndexDirectory", "TemporaryDirectory"):
            if self.config.get(key):
                Path(self.config[key]).mkdir(parents=True, exist_ok=True)
        # 0600: the configuration holds the HTTP passwords (RegisteredUsers).
        tmp = self.config_path.with_suffix(".json.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.config, indent=2))
        os.replace(tmp, self.config_path)
        args = [self.orthanc_binary]
        if self.verbose:
            args.append("--verbose")
        args.append(str(self.config_path))
        with open(self.log_path, "ab") as logfile:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env=self.env,
            )
        log.info("started Orthanc pid %s on HTTP %s, DICOM %s", self._proc.pid, self.url, self.dicom_port)
        deadline = time.monotonic() + timeout
        with self.session() as s:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._proc = None
                    raise OrthancStartError(
                        f"Orthanc exited with status {code} during start-up; log {self.log_path}:\n"
                        + self.log_tail()
                    )
                try:
                    r = s.get(self.url + "/system", timeout=2)
                    if r.status_code == 200:
                        return self
                    if r.status_code == 401:
                        self.stop()
                        raise OrthancStartError("Orthanc answered 401: credentials in config not accepted")
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise OrthancStartError(
                        f"Orthanc REST API did not answer within {timeout:.0f} s; log {self.log_path}:\n"
                        + self.log_tail()
                    )
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """``POST /tools/shutdown`` and wait for the process to exit (SIGTERM, then SIGKILL, if it
        does not within ``timeout``). Returns the exit status, or None when it was not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                with self.session() as s:
                    s.post(self.url + "/tools/shutdown", timeout=5)
            except requests.RequestException as exc:
                log.warning("Orthanc shutdown request failed (%s); terminating", exc)
            if not _wait_exit(proc, timeout):
                log.warning("Orthanc pid %s did not exit in %.0f s; SIGTERM", proc.pid, timeout)
                proc.terminate()
                if not _wait_exit(proc, 10):
                    proc.kill()
                    proc.wait()
        return proc.returncode

    def __enter__(self) -> OrthancServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
