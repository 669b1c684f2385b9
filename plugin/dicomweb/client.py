"""A thin wrapper on ``dicomweb-client``: authentication, CA bundle, timeouts, and errors that say what to do.

Every call goes through :meth:`DicomWeb._call`, which maps failures to three kinds:

* :class:`DicomWebAuthError` - HTTP 401/403: wrong or missing credentials. Retrying cannot help, so
  callers back off to their longest delay instead of hammering the archive;
* :class:`DicomWebUnavailable` - unreachable, timed out, or HTTP 408/429/5xx: retried with backoff;
* :class:`DicomWebBadAnswer` - an answer that is not what DICOMweb promises (truncated or hostile JSON,
  a broken multipart body).

The library's own retries are off (the job queue and the watcher retry with backoff), and QIDO paging is
done here with a page cap so that a server that never stops paging cannot hold a poll forever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword

__all__ = [
    "DicomWeb", "DicomWebError", "DicomWebAuthError", "DicomWebUnavailable", "DicomWebBadAnswer",
    "qido_value", "qido_values", "client_from_config",
]

log = logging.getLogger(__name__)
# dicomweb-client's retry helper logs every failed request with a traceback, even with retries off;
# our errors are logged once, by the caller that handles them.
logging.getLogger("retrying").setLevel(logging.CRITICAL)

#: QIDO results per request, and the most pages one search may take.
PAGE = 200
MAX_PAGES = 50


class DicomWebError(Exception):
    """A DICOMweb request failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DicomWebAuthError(DicomWebError):
    """The archive refused our credentials (HTTP 401/403)."""


class DicomWebUnavailable(DicomWebError):
    """The archive is down, unreachable, slow or overloaded (retry later)."""


class DicomWebBadAnswer(DicomWebError):
    """The archive answered something that is not valid DICOMweb."""


def qido_values(item: Any, keyword: str) -> list[Any]:
    """The values of ``keyword`` in one QIDO-RS JSON result (``[]`` when absent or malformed)."""
    if not isinstance(item, dict):
        return []
    tag = tag_for_keyword(keyword)
    element = item.get(f"{tag:08X}") if tag is not None else None
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    return values if isinstance(values, list) else []


def qido_value(item: Any, keyword: str, default: str = "") -> str:
    """The first value of ``keyword`` as text (person names: their Alphabetic form)."""
    values = qido_values(item, keyword)
    if not values or values[0] is None:
        return default
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic", "")
    if isinstance(value, (dict, list)):
        return default
    return str(value)


class DicomWeb:
    """One DICOMweb archive.

    Parameters
    ----------
    url : str
        Base URL (QIDO, WADO and STOW under it, as Orthanc's ``/dicom-web``).
    user, password : str
        HTTP basic auth (empty user: none).
    token : str
        Bearer token (empty: none).
    ca_bundle : str
        PEM bundle to verify TLS with (empty: the system's).
    timeout_s : float
        Per request.
    """

    def __init__(self, url: str, *, user: str = "", password: str = "", token: str = "", ca_bundle: str = "",
                 timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a DICOMweb URL (http(s)://host[:port]/path): {url!r}")
        if parts.username or parts.password:
            raise ValueError("put credentials in --user / UNIRG_DICOMWEB_PASSWORD or a token, not in the URL")
        session = requests.Session()
        if parts.hostname in ("127.0.0.1", "localhost", "::1"):
            session.trust_env = False  # loopback archive: never through an HTTP proxy
        if user:
            session.auth = (user, password)
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        if ca_bundle:
            session.verify = ca_bundle
        self.session = session
        self.api = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        self.api.set_http_retry_params(retry=False)
        self.reconnects = 0  # requests sent again on a fresh connection

    def __repr__(self) -> str:
        return f"DicomWeb({self.url!r})"

    # -- error mapping --------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            try:
                return fn(*args, **kw)
            except requests.ConnectionError:
                # A kept-alive connection the archive closed meanwhile (Orthanc drops idle ones after
                # about 1 s): once more on a fresh one. Every request here may be repeated: QIDO/WADO
                # read, and STOW stores the same SOP Instance UID again.
                self.reconnects += 1
                self.session.close()
                return fn(*args, **kw)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise DicomWebAuthError(
                    f"DICOMweb archive {self.url} refused our credentials (HTTP {status}) for {what}: check "
                    "[dicomweb] user and UNIRG_DICOMWEB_PASSWORD, or the token in [dicomweb] token_env", status,
                ) from None
            if status is not None and (status >= 500 or status in (408, 429)):
                raise DicomWebUnavailable(f"DICOMweb archive {self.url} answered HTTP {status} for {what}",
                                          status) from None
            raise DicomWebError(f"DICOMweb archive {self.url} answered HTTP {status} for {what}", status) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DicomWebUnavailable(
                f"DICOMweb archive {self.url} unreachable for {what}: {type(exc).__name__}") from None
        except requests.JSONDecodeError as exc:  # before RequestException: it is one too
            raise DicomWebBadAnswer(f"DICOMweb archive {self.url} sent invalid JSON to {what}: {exc}") from None
        except requests.RequestException as exc:
            raise DicomWebUnavailable(f"DICOMweb archive {self.url} failed {what}: {exc}") from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeError) as exc:
            # requests' JSONDecodeError is a ValueError; a broken multipart body lands here too.
            raise DicomWebBadAnswer(
                f"DICOMweb archive {self.url} sent an invalid answer to {what}: {type(exc).__name__}: "
                f"{str(exc)[:200]}") from None

    def _search(self, what: str, fn: Callable[..., Any], *args: Any, filters: dict[str, Any] | None = None,
                fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            got = self._call(what, fn, *args, search_filters=dict(filters or {}), fields=list(fields) or None,
                             limit=PAGE, offset=page * PAGE)
            if got is None:
                got = []  # 204 No Content: nothing matched
            if not isinstance(got, list):
                raise DicomWebBadAnswer(f"DICOMweb archive {self.url} answered {what} with "
                                        f"{type(got).__name__}, not a list of results")
            kept = [g for g in got if isinstance(g, dict)]
            if len(kept) < len(got):
                log.warning("event=qido_bad_results archive=%s what=%r dropped=%d", self.url, what,
                            len(got) - len(kept))
            out += kept
            if len(got) < PAGE:
                return out
        log.warning("event=qido_truncated archive=%s what=%r results=%d note='stopped after %d pages'",
                    self.url, what, len(out), MAX_PAGES)
        return out

    # -- QIDO-RS --------------------------------------------------------------------------------
    def search_studies(self, filters: dict[str, Any], fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self._search("QIDO-RS studies", self.api.search_for_studies, filters=filters, fields=fields)

    def search_series(self, study_uid: str, filters: dict[str, Any] | None = None,
                      fields: Sequence[str] = ()) -> list[dict[str, Any]]:
        return self._search(f"QIDO-RS series of {study_uid}",
                            lambda **kw: self.api.search_for_series(study_uid, **kw),
                            filters=filters, fields=fields)

    # -- WADO-RS --------------------------------------------------------------------------------
    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """One instance in the transfer syntax the archive holds it in (compressed ones included)."""
        ds = self._call(f"WADO-RS instance {sop_uid}", self.api.retrieve_instance, study_uid, series_uid, sop_uid,
                        media_types=(("application/dicom", "*"),))
        if not isinstance(ds, Dataset) or str(ds.get("SOPInstanceUID", "")) != sop_uid:
            raise DicomWebBadAnswer(f"DICOMweb archive {self.url} returned another instance for {sop_uid}")
        return ds

    def series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """Every instance of a series (any transfer syntax)."""
        got = self._call(f"WADO-RS series {series_uid}", self.api.retrieve_series, study_uid, series_uid,
                         media_types=(("application/dicom", "*"),))
        return [ds for ds in got if str(ds.get("SeriesInstanceUID", "")) == series_uid]

    def series_metadata(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """The headers of a series' instances (WADO-RS metadata; bulk data left out)."""
        got = self._call(f"WADO-RS metadata of series {series_uid}", self.api.retrieve_series_metadata,
                         study_uid, series_uid)
        if not isinstance(got, list):
            raise DicomWebBadAnswer(f"DICOMweb archive {self.url} sent no metadata list for series {series_uid}")
        return [self._call("metadata", Dataset.from_json, item, lambda *a: b"") for item in got
                if isinstance(item, dict)]

    # -- STOW-RS --------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset]) -> Dataset:
        """STOW-RS ``datasets``; the archive's response (ReferencedSOPSequence / FailedSOPSequence)."""
        return self._call("STOW-RS", self.api.store_instances, list(datasets))

    def probe(self) -> None:
        """One tiny QIDO-RS request: raises :class:`DicomWebError` when the archive or our credentials fail."""
        self._call("QIDO-RS probe", self.api.search_for_studies, limit=1)

    def close(self) -> None:
        self.session.close()


def client_from_config(cfg: Any, url: str | None = None, env: dict[str, str] | None = None) -> DicomWeb:
    """A :class:`DicomWeb` from a :class:`unirg.plugin.config.DicomWebConfig` (``url`` overrides its url)."""
    env = os.environ if env is None else env
    token = env.get(cfg.token_env, "") if cfg.token_env else ""
    if cfg.token_env and not token:
        raise ValueError(f"dicomweb.token_env: ${cfg.token_env} is empty or unset")
    return DicomWeb(url or cfg.url, user=cfg.user, password=cfg.password, token=token, ca_bundle=cfg.ca_bundle,
                    timeout_s=cfg.timeout_s)
