"""Orthanc's REST API as the plugin sees it (``orthanc.RestApiGet`` or any stand-in), Orthanc's log,
and the ledger paths of Orthanc instances. No ``import orthanc`` here.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from pydicom import Dataset, dcmread

__all__ = [
    "ORTHANC_PATH_PREFIX",
    "OrthancRest",
    "RestError",
    "PluginRest",
    "rest_json",
    "OrthancLogHandler",
    "read_header",
    "orthanc_path",
    "orthanc_instance_id",
]

#: Ledger paths of instances that live in Orthanc: ``orthanc:<Orthanc instance ID>``.
ORTHANC_PATH_PREFIX = "orthanc:"

# -------------------------------------------------------------------------------------------------
# Orthanc's REST API, from inside the plugin (orthanc.RestApiGet) or any stand-in
# -------------------------------------------------------------------------------------------------

class RestError(Exception):
    """A REST call to Orthanc failed; ``not_found`` when the resource does not exist."""

    def __init__(self, uri: str, message: str, not_found: bool = False) -> None:
        super().__init__(f"{uri}: {message}")
        self.uri = uri
        self.not_found = not_found


class OrthancRest(Protocol):
    """What the plugin needs of Orthanc's REST API (raises :class:`RestError`)."""

    def get(self, uri: str) -> bytes: ...

    def post(self, uri: str, body: bytes) -> bytes: ...


class PluginRest:
    """:class:`OrthancRest` on the ``orthanc`` module of orthanc-python (passed in, never imported).

    >>> class Sdk:                                   # a stand-in for the orthanc module
    ...     class OrthancException(Exception): pass
    ...     @staticmethod
    ...     def RestApiGet(uri): raise Sdk.OrthancException(17, "Unknown resource")
    >>> try:
    ...     PluginRest(Sdk).get("/instances/x")
    ... except RestError as exc:
    ...     print(exc.not_found)
    True
    """

    UNKNOWN_RESOURCE = 17  # OrthancPluginErrorCode_UnknownResource

    def __init__(self, sdk: Any) -> None:
        self._sdk = sdk

    def _call(self, fn: Callable[..., bytes], uri: str, *args: Any) -> bytes:
        try:
            return fn(uri, *args)
        except self._sdk.OrthancException as exc:
            code = exc.args[0] if exc.args else None
            try:
                code = int(code)
            except (TypeError, ValueError):
                code = None
            raise RestError(uri, str(exc), not_found=code == self.UNKNOWN_RESOURCE) from exc

    def get(self, uri: str) -> bytes:
        return self._call(self._sdk.RestApiGet, uri)

    def post(self, uri: str, body: bytes) -> bytes:
        return self._call(self._sdk.RestApiPost, uri, body)


def rest_json(rest: OrthancRest, uri: str, body: Any = None) -> Any:
    """GET (or POST ``body``: bytes as is, anything else as JSON) and decode the JSON answer."""
    if body is None:
        return json.loads(rest.get(uri))
    data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    return json.loads(rest.post(uri, bytes(data)))


class OrthancLogHandler(logging.Handler):
    """Python logging into Orthanc's log (``orthanc.LogInfo`` / ``LogWarning`` / ``LogError``)."""

    def __init__(self, sdk: Any, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._info, self._warning, self._error = sdk.LogInfo, sdk.LogWarning, sdk.LogError
        self.setFormatter(logging.Formatter("unirg %(name)s: %(message)s"))

    @classmethod
    def install(cls, sdk: Any, level: str | int = logging.INFO) -> "OrthancLogHandler":
        """Send the ``unirg`` loggers (only them) to Orthanc's log at ``level``."""
        handler = cls(sdk)
        logger = logging.getLogger("unirg")
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self._error(text)
            elif record.levelno >= logging.WARNING:
                self._warning(text)
            else:  # shown by Orthanc with --verbose
                self._info(text)
        except Exception:  # never let logging break a callback
            self.handleError(record)


# -------------------------------------------------------------------------------------------------
# Pure helpers
# -------------------------------------------------------------------------------------------------

def read_header(data: bytes) -> Dataset:
    """The header of a DICOM file in memory (no pixel data)."""
    return dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)


def orthanc_path(instance_id: str) -> str:
    """The ledger path of an Orthanc instance.

    >>> orthanc_path("c012ab23-8a1223da-89f26db6-b1b045b4-33051886")
    'orthanc:c012ab23-8a1223da-89f26db6-b1b045b4-33051886'
    """
    return ORTHANC_PATH_PREFIX + instance_id


def orthanc_instance_id(path: str) -> str:
    """The Orthanc instance ID of a ledger path written by :func:`orthanc_path`; ``ValueError`` else."""
    if not path.startswith(ORTHANC_PATH_PREFIX):
        raise ValueError(f"not an Orthanc instance path (expected {ORTHANC_PATH_PREFIX}<id>): {path!r}")
    return path[len(ORTHANC_PATH_PREFIX):]
