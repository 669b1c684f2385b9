"""REST routes of unirg's Orthanc plugin, under ``/unirg/`` on Orthanc's own HTTP server.

Pure request -> :class:`Response` logic (no ``import orthanc``): the entry script registers
:data:`PATTERNS` with ``orthanc.RegisterRestCallback`` and passes each request to
:meth:`Routes.handle`. Orthanc authenticates every request before a plugin sees it, so these routes
follow Orthanc's ``AuthenticationEnabled`` / ``RegisteredUsers`` (and any authorization plugin).
The state-changing (POST) routes also refuse with 403 when Orthanc's authentication is off
(``Routes(..., authentication=False)``), and every route answers only its own method (else 405).

========================================  ======  ===================================================
route                                     method  answer
========================================  ======  ===================================================
``/unirg``, ``/unirg/``                   GET     the status page (HTML) when the client asks for text/html
                                                (browsers; or ``?format=html``), else this list as JSON
``/unirg/index.json``                     GET     this list as JSON, always
``/unirg/metrics``                        GET     Prometheus metrics (:mod:`unirg.plugin.monitor.metrics`)
``/unirg/status``                         GET     queue counts, study states, failures, skips, plugin
``/unirg/jobs``                           GET     jobs, newest first (``?state=dead&study=UID&limit=N``)
``/unirg/jobs/{id}``                      GET     one job with its result
``/unirg/studies/{uid}/draft``            GET     the study's latest draft as JSON (``?format=text``)
``/unirg/studies/{uid}/draft.txt``        GET     the same as plain text
``/unirg/studies/{uid}/rerun``            POST    draft again as a new SR version (revision + 1)
========================================  ======  ===================================================

``{uid}`` is the StudyInstanceUID or Orthanc's study ID. Errors are JSON ``{"error": ...}`` with
403 (POST while authentication is off), 404 (unknown study / no draft yet), 405, 409 (already queued),
422 (nothing to draft) or 500.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from unirg.plugin.assemble import RerunRefused
from unirg.plugin.orthanc.recorder import rerun_study
from unirg.plugin.orthanc.rest import RestError, rest_json
from unirg.sr_writer import RESEARCH_LABEL, read_report

__all__ = ["PATTERNS", "Response", "Routes", "draft_text"]

log = logging.getLogger(__name__)

_UID = r"([0-9a-fA-F.\-]{1,64})"
#: Regular expressions to register with ``orthanc.RegisterRestCallback`` (one per route).
PATTERNS = [
    "/unirg",
    "/unirg/status",
    "/unirg/jobs",
    r"/unirg/jobs/([0-9]+)",
    rf"/unirg/studies/{_UID}/draft",
    rf"/unirg/studies/{_UID}/draft\.txt",
    rf"/unirg/studies/{_UID}/rerun",
    "/unirg/",
    r"/unirg/index\.json",
    "/unirg/metrics",
]
_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_JOB_FIELDS = ("id", "study_uid", "revision", "state", "attempts", "max_attempts", "lease_owner",
               "last_error", "created_at", "updated_at")


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    allow: str | None = None  # the allowed method, with 405

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(obj, indent=2, default=str).encode("utf-8"))

    @classmethod
    def error(cls, status: int, message: str, **extra: Any) -> "Response":
        return cls.json({"error": message, **extra}, status)

    @classmethod
    def text(cls, text: str, status: int = 200) -> "Response":
        return cls(status, text.encode("utf-8"), "text/plain; charset=utf-8")


def _wants_html(headers: Mapping[str, str] | None, get: Mapping[str, str] | None) -> bool:
    """The status page rather than JSON: ``?format=html``, or an ``Accept`` naming text/html (browsers)."""
    fmt = (get or {}).get("format")
    if fmt:
        return fmt == "html"
    accept = next((v for k, v in (headers or {}).items() if k.lower() == "accept"), "")
    return "text/html" in accept


def draft_text(study_uid: str, draft: Mapping[str, Any]) -> str:
    """The plain-text form of a draft (``/draft.txt``), research label first."""
    lines = [RESEARCH_LABEL, f"Study {study_uid} - draft revision {draft['revision']} "
             f"(SR {draft['sop_instance_uid']}, {draft['verification_flag']})", ""]
    for title, key in (("INDICATION", "indication"), ("COMPARISON", "comparison"),
                       ("FINDINGS", "findings"), ("IMPRESSION", "impression")):
        if draft.get(key):
            lines += [f"{title}:", str(draft[key]), ""]
    return "\n".join(lines).rstrip() + "\n"


class Routes:
    """The ``/unirg/`` routes over a plugin's queue, ledger, assembler and Orthanc REST access.

    ``plugin`` is an :class:`unirg.plugin.orthanc.events.OrthancPlugin` (or anything with ``queue``,
    ``ledger``, ``assembler``, ``rest`` and ``status()``). ``authentication``: whether Orthanc
    authenticates HTTP requests (its ``AuthenticationEnabled``); without it the POST routes answer 403.
    ``viewer_url``: the viewer whose draft-review link the draft JSON carries (default: the plugin's
    ``[viewer] url``; empty: no link).
    """

    def __init__(self, plugin: Any, *, authentication: bool = False, viewer_url: str | None = None) -> None:
        self.plugin = plugin
        self.authentication = authentication
        config = getattr(plugin, "config", None)
        self.viewer_url = viewer_url if viewer_url is not None else (config.viewer.url if config else "")
        self._table: list[tuple[re.Pattern[str], str, Callable[..., Response]]] = [
            (re.compile("^/unirg/?$"), "GET", self.index),
            (re.compile(r"^/unirg/index\.json$"), "GET", self.index),
            (re.compile("^/unirg/metrics$"), "GET", self.metrics),
            (re.compile("^/unirg/status$"), "GET", self.status),
            (re.compile("^/unirg/jobs$"), "GET", self.jobs),
            (re.compile(r"^/unirg/jobs/([0-9]+)$"), "GET", self.job),
            (re.compile(rf"^/unirg/studies/{_UID}/draft$"), "GET", self.draft),
            (re.compile(rf"^/unirg/studies/{_UID}/draft\.txt$"), "GET", self.draft_txt),
            (re.compile(rf"^/unirg/studies/{_UID}/rerun$"), "POST", self.rerun),
        ]

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, method: str, uri: str, get: Mapping[str, str] | None = None, body: bytes = b"",
               headers: Mapping[str, str] | None = None) -> Response:
        """Answer one request; never raises (an unexpected error is a logged 500). ``headers``: the
        request's HTTP headers (``Accept`` picks the status page or JSON at ``/unirg/``)."""
        for pattern, allowed, handler in self._table:
            m = pattern.match(uri)
            if not m:
                continue
            if handler == self.index and not uri.endswith(".json") and _wants_html(headers, get):
                handler = self.page
            if method != allowed:
                return Response(405, b"", allow=allowed)
            if allowed != "GET" and not self.authentication:
                return Response.error(
                    403, f"{method} {uri} changes state and Orthanc's HTTP authentication is off: set "
                    '"AuthenticationEnabled": true with "RegisteredUsers" in Orthanc\'s configuration '
                    "(`unirg orthanc` always does)")
            try:
                if hasattr(self.plugin, "ensure_schema"):
                    self.plugin.ensure_schema()
                return handler(*m.groups(), get=dict(get or {}), body=body)
            except RerunRefused as exc:
                return Response.error(exc.status, str(exc))
            except RestError as exc:
                return Response.error(404 if exc.not_found else 502, f"Orthanc: {exc}")
            except Exception as exc:
                log.exception("event=route_error uri=%s", uri)
                return Response.error(500, f"{type(exc).__name__}: {exc}")
        return Response.error(404, f"no unirg route {uri}")

    # -- helpers ----------------------------------------------------------------------------------
    def _study_uid(self, ident: str) -> str:
        """A StudyInstanceUID from a UID or an Orthanc study ID."""
        if _ORTHANC_ID.match(ident):
            try:
                study = rest_json(self.plugin.rest, f"/studies/{ident}")
                return str(study["MainDicomTags"]["StudyInstanceUID"])
            except RestError as exc:
                if not exc.not_found:
                    raise
        return ident

    @staticmethod
    def _job_summary(job: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: job.get(k) for k in _JOB_FIELDS}
        out["result"] = job.get("result")
        return out

    def _latest_done(self, study_uid: str) -> dict[str, Any] | None:
        done = [j for j in self.plugin.queue.find(study_uid)
                if j["state"] == "done" and (j.get("result") or {}).get("sr_sop_instance_uid")]
        return max(done, key=lambda j: (j["revision"], j["id"])) if done else None

    def _read_sr(self, result: Mapping[str, Any]) -> tuple[Any, str | None]:
        """The draft SR from Orthanc (or the worker's local copy when Orthanc lost it) and its Orthanc ID."""
        sop = result["sr_sop_instance_uid"]
        for hit in rest_json(self.plugin.rest, "/tools/lookup", sop.encode()):
            if hit.get("Type") == "Instance":
                data = self.plugin.rest.get(f"/instances/{hit['ID']}/file")
                return dcmread(io.BytesIO(data)), str(hit["ID"])
        local = result.get("local_path")
        if local and Path(local).is_file():
            return dcmread(local), None
        raise RestError(f"SR {sop}", "not in Orthanc (deleted?) and no local copy here", not_found=True)

    def _viewer_link(self, study_uid: str, sr: Any) -> str:
        """The draft-review OHIF link (``[viewer] url``), with the prior the draft compared with when
        Orthanc holds it (the most recent one referenced in the SR's PertinentOtherEvidenceSequence)."""
        from unirg.plugin.viewer import study_viewer_url

        dated = []
        for item in sr.get("PertinentOtherEvidenceSequence") or []:
            uid = str(item.get("StudyInstanceUID", ""))
            if not uid or uid == study_uid:
                continue
            for hit in rest_json(self.plugin.rest, "/tools/lookup", uid.encode()):
                if hit.get("Type") == "Study":
                    tags = rest_json(self.plugin.rest, f"/studies/{hit['ID']}").get("MainDicomTags") or {}
                    dated.append((str(tags.get("StudyDate", "")), uid))
        prior = max(dated)[1] if dated else None
        return study_viewer_url(self.viewer_url, study_uid, str(sr.SeriesInstanceUID),
                                prior_study_uid=prior)

    # -- routes -----------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        from unirg.plugin.monitor.snapshot import read_snapshot

        return read_snapshot(self.plugin.queue.engine)

    def page(self, *, get: Mapping[str, str], body: bytes) -> Response:
        from unirg.plugin.monitor.page import render_page

        return Response(200, render_page(self._snapshot(), title="unirg status (Orthanc plugin)").encode("utf-8"),
                        "text/html; charset=utf-8")

    def metrics(self, *, get: Mapping[str, str], body: bytes) -> Response:
        from unirg.plugin.monitor.metrics import CONTENT_TYPE, metrics_text

        return Response(200, metrics_text(self._snapshot()), CONTENT_TYPE)

    def index(self, *, get: Mapping[str, str], body: bytes) -> Response:
        return Response.json({
            "unirg": "AI chest X-ray report drafts as DICOM SR - " + RESEARCH_LABEL,
            "routes": {
                "GET /unirg/ (Accept: text/html)": "the status page",
                "GET /unirg/index.json": "this list",
                "GET /unirg/metrics": "Prometheus metrics",
                "GET /unirg/status": "queue, studies, failures, skips, plugin state",
                "GET /unirg/jobs?state=&study=&limit=": "jobs, newest first",
                "GET /unirg/jobs/{id}": "one job",
                "GET /unirg/studies/{uid}/draft[?format=text]": "latest draft of a study",
                "GET /unirg/studies/{uid}/draft.txt": "latest draft as text",
                "POST /unirg/studies/{uid}/rerun": "draft again as a new SR version",
            },
        })

    def status(self, *, get: Mapping[str, str], body: bytes) -> Response:
        q, ledger = self.plugin.queue, self.plugin.ledger
        counts = q.counts()
        return Response.json({
            "research_only": RESEARCH_LABEL,
            "queue": counts.as_dict(),
            "failed_reasons": counts.dead_reasons,
            "failed_jobs": q.failures(),
            "studies": ledger.state_counts(),
            "skipped": ledger.skipped(),
            "plugin": self.plugin.status(),
        })

    def jobs(self, *, get: Mapping[str, str], body: bytes) -> Response:
        try:
            limit = min(max(int(get.get("limit", 50)), 1), 1000)
        except ValueError:
            return Response.error(400, f"limit must be a number, got {get.get('limit')!r}")
        found = self.plugin.queue.list_jobs(state=get.get("state") or None, limit=limit,
                                            study_uid=self._study_uid(get["study"]) if get.get("study") else None)
        return Response.json({"jobs": [self._job_summary(j) for j in found if j]})

    def job(self, job_id: str, *, get: Mapping[str, str], body: bytes) -> Response:
        found = self.plugin.queue.get(int(job_id))
        if found is None:
            return Response.error(404, f"no job {job_id}")
        return Response.json(self._job_summary(found))

    def _draft(self, ident: str) -> tuple[str, dict[str, Any]] | Response:
        study_uid = self._study_uid(ident)
        study = self.plugin.ledger.study(study_uid)
        jobs = self.plugin.queue.find(study_uid)
        if study is None and not jobs:
            return Response.error(404, f"unirg has not seen study {study_uid}")
        job = self._latest_done(study_uid)
        summary = {
            "study_uid": study_uid,
            "state": study["state"] if study else None,
            "revision": study["revision"] if study else None,
            "reason": study["reason"] if study else None,
            "jobs": [self._job_summary(j) for j in jobs],
        }
        if job is None:
            return Response.error(404, f"no draft yet for study {study_uid}", **summary)
        result = job["result"]
        sr, orthanc_id = self._read_sr(result)
        report = read_report(sr)
        summary["draft"] = {
            "revision": job["revision"],
            "job_id": job["id"],
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "series_uid": str(sr.SeriesInstanceUID),
            "orthanc_id": orthanc_id,
            "series_description": str(sr.get("SeriesDescription", "")),
            "research_label": RESEARCH_LABEL,
            "verification_flag": report.verification_flag,
            "completion_flag": report.completion_flag,
            "preliminary_flag": report.preliminary_flag,
            "observer": report.observer_name,
            "findings": report.findings,
            "impression": report.impression,
            "comparison": report.comparison,
            "indication": report.indication,
            "disclaimer": report.disclaimer,
            "priors": result.get("priors"),
        }
        if self.viewer_url:
            summary["draft"]["viewer"] = self._viewer_link(study_uid, sr)
        return study_uid, summary

    def draft(self, ident: str, *, get: Mapping[str, str], body: bytes) -> Response:
        got = self._draft(ident)
        if isinstance(got, Response):
            return got
        study_uid, summary = got
        if get.get("format") == "text":
            return Response.text(draft_text(study_uid, summary["draft"]))
        return Response.json(summary)

    def draft_txt(self, ident: str, *, get: Mapping[str, str], body: bytes) -> Response:
        return self.draft(ident, get={**get, "format": "text"}, body=body)

    def rerun(self, ident: str, *, get: Mapping[str, str], body: bytes) -> Response:
        reason = "re-run requested"
        if body:
            try:
                reason = str(json.loads(body).get("reason") or reason)[:200]
            except (ValueError, AttributeError):
                return Response.error(400, 'body must be empty or JSON {"reason": "..."}')
        p = self.plugin
        result = rerun_study(p.ledger, p.queue, p.assembler, p.rest, self._study_uid(ident), reason)
        return Response.json(result)
