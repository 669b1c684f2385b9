"""Test doubles for unirg's Orthanc plugin: an in-memory Orthanc REST API and a stub ``orthanc`` module.

* :class:`FakeOrthanc` holds instances, studies and a change log, and answers the REST calls the
  plugin makes (``/changes``, ``/instances/{id}/file``, ``/studies/{id}``, ``/studies/{id}/instances``,
  ``/tools/lookup``); a missing resource raises ``RestError(not_found=True)``.
* :func:`stub_orthanc_module` is an ``orthanc`` module for the entry script: the functions the script
  may call, recording what it registers; **any other attribute raises** (so an SDK call the script
  should not make, or one orthanc-python 4.0 lacks, fails the test).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import types
from typing import Any

from pydicom import Dataset

from unirg.plugin.orthanc.rest import RestError


def orthanc_id(*parts: str) -> str:
    """An ID shaped like Orthanc's (5 groups of 8 hex digits)."""
    h = hashlib.sha1("|".join(parts).encode()).hexdigest()[:40]
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class FakeOrthanc:
    """Just enough of Orthanc's REST API for the plugin, in memory."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.instance_study: dict[str, str] = {}
        self.studies: dict[str, str] = {}  # orthanc study ID -> StudyInstanceUID
        self.sops: dict[str, str] = {}  # SOPInstanceUID -> orthanc instance ID
        self.changes: list[dict[str, Any]] = []
        self.calls: list[str] = []

    # -- what tests do to it -----------------------------------------------------------------------
    def _change(self, kind: str, resource: str, level: str, when: datetime.datetime | None = None) -> None:
        when = when or datetime.datetime.now(datetime.timezone.utc)
        self.changes.append({"ChangeType": kind, "Date": when.strftime("%Y%m%dT%H%M%S"), "ID": resource,
                             "Path": f"/{level.lower()}s/{resource}", "ResourceType": level,
                             "Seq": len(self.changes) + 1})

    def store(self, ds: Dataset | bytes, *, study_uid: str | None = None, when: datetime.datetime | None = None,
              sop_uid: str | None = None) -> str:
        """Store an instance (a Dataset, or raw bytes with ``study_uid``); log NewInstance; return its ID."""
        data = dicom_bytes(ds) if isinstance(ds, Dataset) else ds
        study_uid = study_uid or str(ds.StudyInstanceUID)
        sop_uid = sop_uid or (str(ds.SOPInstanceUID) if isinstance(ds, Dataset) else hashlib.sha1(data).hexdigest())
        iid = orthanc_id("instance", sop_uid)
        sid = orthanc_id("study", study_uid)
        self.files[iid] = data
        self.instance_study[iid] = sid
        self.studies[sid] = study_uid
        self.sops[sop_uid] = iid
        self._change("NewInstance", iid, "Instance", when)
        return iid

    def stable(self, study_uid: str) -> str:
        sid = orthanc_id("study", study_uid)
        self._change("StableStudy", sid, "Study")
        return sid

    def delete(self, iid: str) -> None:
        del self.files[iid]

    # -- REST ----------------------------------------------------------------------------------------
    def _missing(self, uri: str) -> RestError:
        return RestError(uri, "Unknown resource", not_found=True)

    def get(self, uri: str) -> bytes:
        self.calls.append("GET " + uri)
        path, _, query = uri.partition("?")
        params = dict(p.split("=", 1) if "=" in p else (p, "") for p in query.split("&") if p)
        parts = path.strip("/").split("/")
        if parts == ["changes"]:
            last = len(self.changes)
            if "last" in params:
                return json.dumps({"Changes": [], "Done": True, "Last": last}).encode()
            since, limit = int(params.get("since", 0)), int(params.get("limit", 100))
            batch = [c for c in self.changes if c["Seq"] > since][:limit]
            done = not batch or batch[-1]["Seq"] == last
            return json.dumps({"Changes": batch, "Done": done,
                               "Last": batch[-1]["Seq"] if batch else last}).encode()
        if len(parts) == 3 and parts[0] == "instances" and parts[2] == "file":
            if parts[1] not in self.files:
                raise self._missing(uri)
            return self.files[parts[1]]
        if len(parts) == 2 and parts[0] == "studies":
            if parts[1] not in self.studies:
                raise self._missing(uri)
            return json.dumps({"ID": parts[1], "MainDicomTags": {"StudyInstanceUID": self.studies[parts[1]]}}).encode()
        if len(parts) == 3 and parts[0] == "studies" and parts[2] == "instances":
            return json.dumps([{"ID": i} for i, s in self.instance_study.items()
                               if s == parts[1] and i in self.files]).encode()
        raise self._missing(uri)

    def post(self, uri: str, body: bytes) -> bytes:
        self.calls.append("POST " + uri)
        if uri == "/tools/lookup":
            uid = body.decode()
            hits = [{"ID": sid, "Type": "Study"} for sid, u in self.studies.items() if u == uid]
            if uid in self.sops and self.sops[uid] in self.files:
                hits.append({"ID": self.sops[uid], "Type": "Instance"})
            return json.dumps(hits).encode()
        raise self._missing(uri)


class ChangeType:
    """The orthanc.ChangeType values orthanc-python 4.0 has (values as in the Orthanc SDK)."""

    COMPLETED_SERIES = 0
    DELETED = 1
    NEW_CHILD_INSTANCE = 2
    NEW_INSTANCE = 3
    NEW_PATIENT = 4
    NEW_SERIES = 5
    NEW_STUDY = 6
    STABLE_PATIENT = 7
    STABLE_SERIES = 8
    STABLE_STUDY = 9
    ORTHANC_STARTED = 10
    ORTHANC_STOPPED = 11


class OrthancException(Exception):
    pass


def stub_orthanc_module(configuration: dict[str, Any], fake: FakeOrthanc) -> types.ModuleType:
    """An ``orthanc`` module whose REST calls go to ``fake``; records registrations and log lines."""
    mod = types.ModuleType("orthanc")
    mod.registered = {"stored": [], "change": [], "rest": []}
    mod.log = []

    def rest(fn):
        def call(uri, *args):
            try:
                return fn(uri, *args)
            except RestError as exc:
                raise OrthancException(17 if exc.not_found else 1, str(exc)) from exc
        return call

    mod.GetConfiguration = lambda: json.dumps(configuration)
    mod.ChangeType = ChangeType
    mod.OrthancException = OrthancException
    mod.RestApiGet = rest(fake.get)
    mod.RestApiPost = rest(fake.post)
    mod.RegisterOnStoredInstanceCallback = mod.registered["stored"].append
    mod.RegisterOnChangeCallback = mod.registered["change"].append
    mod.RegisterRestCallback = lambda pattern, cb: mod.registered["rest"].append((pattern, cb))
    mod.LogInfo = lambda text: mod.log.append(("I", text))
    mod.LogWarning = lambda text: mod.log.append(("W", text))
    mod.LogError = lambda text: mod.log.append(("E", text))

    def unset(name: str) -> Any:
        raise AttributeError(f"stub orthanc module: {name} is not provided (the plugin must not need it)")

    mod.__getattr__ = unset
    return mod


class FakeDicomInstance:
    """What the stored-instance callback receives (orthanc.DicomInstance); ``data_reads`` counts
    GetInstanceData calls (the plugin must make none: that work would sit inside the C-STORE)."""

    def __init__(self, data: bytes, remote_aet: str = "MODALITY") -> None:
        self._data = data
        self._aet = remote_aet
        self.data_reads = 0

    def GetInstanceData(self) -> bytes:  # noqa: N802 (SDK naming)
        self.data_reads += 1
        return self._data

    def GetInstanceRemoteAet(self) -> str:  # noqa: N802
        return self._aet


class FakeOutput:
    """orthanc.RestOutput: records the answer."""

    def __init__(self) -> None:
        self.answer: tuple[Any, ...] | None = None
        self.headers: dict[str, str] = {}

    def AnswerBuffer(self, body, content_type):  # noqa: N802
        self.answer = ("answer", 200, bytes(body), content_type)

    def SendHttpStatus(self, status, body, size):  # noqa: N802
        # orthanc-python 4.0 parses (unsigned long, str, unsigned long): bytes are refused
        if not isinstance(status, int) or not isinstance(body, str) or not isinstance(size, int):
            raise TypeError("Bad types for the arguments (3 arguments expected)")
        assert size == len(body.encode("utf-8"))
        self.answer = ("status", status, body.encode("utf-8"), self.headers.get("Content-Type"))

    def SendMethodNotAllowed(self, allowed):  # noqa: N802
        self.answer = ("405", 405, b"", allowed)

    def SetHttpHeader(self, key, value):  # noqa: N802
        self.headers[key] = value
