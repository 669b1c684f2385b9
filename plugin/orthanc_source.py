"""The worker's side of the Orthanc path: images, priors and write-back through Orthanc's REST API.

The worker loop, queue semantics and pipeline are the listener's (:class:`unirg.plugin.worker.Worker`);
only three of its collaborators change:

* :class:`OrthancInstanceSource` reads the study's images (ledger paths ``orthanc:<instance ID>``)
  with ``GET /instances/{id}/file``;
* :class:`OrthancPriors` finds the patient's earlier CR/DX studies by PatientID in Orthanc
  (``/tools/find``) and in remote modalities declared in Orthanc (``POST /modalities/{name}/query``
  = C-FIND, then ``POST /modalities/{name}/move`` = C-MOVE into Orthanc), and loads the prior's images
  and its report SR (:func:`unirg.plugin.prior_policy.choose_report`: a human report only, verified
  first). With ``[priors] skip_local`` (default) a prior Orthanc already holds is not C-MOVEd again;
  ``max_priors`` and ``max_age`` as :func:`unirg.plugin.prior_policy.rank_prior_studies`. Studies pulled
  in this way are marked so that the plugin does not draft them. It never raises: on trouble the draft
  is made without (some) priors and the result's ``reason`` says why;
* :class:`OrthancSRStore` keeps the local copy, then ``POST /instances``. "AlreadyStored" counts as
  delivered: SR UIDs are deterministic, so a job retried after a crash or a kill -9 between store
  and completion stores nothing twice.

:func:`make_orthanc_worker` assembles a worker from a :class:`unirg.plugin.config.Config`.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
import urllib3
from pydicom import Dataset, dcmread

from unirg.plugin.config import Config, PriorsConfig
from unirg.plugin.orthanc_events import mark_retrieved_prior, orthanc_instance_id
from unirg.plugin.prior_policy import (
    IMAGE_MODALITIES,
    PriorCandidate,
    choose_report,
    modalities,
    rank_prior_studies,
    study_date_range,
)
from unirg.plugin.priors import PriorStudy, PriorsResult
from unirg.plugin.paths import uid_path
from unirg.plugin.receive import write_bytes_atomic
from unirg.plugin.store import StoreFailed, StoreOutcome, refuse_unlabelled, sr_bytes
from unirg.plugin.worker import ProcessStudy, Worker

__all__ = [
    "OrthancClient",
    "OrthancError",
    "OrthancInstanceSource",
    "OrthancPriors",
    "OrthancSRStore",
    "make_orthanc_worker",
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


class OrthancPriors:
    """Priors through Orthanc (see the module docstring); ``fetch`` has the PriorsFetcher contract.

    Parameters
    ----------
    client : OrthancClient
    config : PriorsConfig
        ``max_priors``, ``max_age``, ``skip_local`` and ``total_timeout_s`` apply (``pacs`` and the
        C-GET/C-MOVE settings are the listener's; here Orthanc does the DICOM networking).
    modalities : list[str]
        Names of modalities declared in Orthanc to C-FIND / C-MOVE priors from.
    engine
        unirg's database engine, to mark studies pulled in as priors (None: not marked).
    """

    def __init__(self, client: OrthancClient, config: PriorsConfig, modalities: Sequence[str] = (),
                 engine: Any = None) -> None:
        self.client = client
        self.config = config
        self.modalities = list(modalities)
        self.engine = engine
        self._own_aet: str | None = None

    def fetch(self, current: Sequence[Dataset]) -> PriorsResult:
        study_uid = str(current[0].get("StudyInstanceUID", "")) if current else ""
        if self.config.max_priors == 0:
            return PriorsResult(reason="priors disabled (max_priors = 0)")
        started = time.monotonic()
        try:
            result = self._fetch(current, started + self.config.total_timeout_s)
        except OrthancError as exc:
            result = PriorsResult(reason=f"priors from Orthanc failed: {exc}")
        except Exception as exc:  # never into the worker
            log.exception("event=priors_error study=%s", study_uid)
            result = PriorsResult(reason=f"priors failed: {type(exc).__name__}: {exc}")
        took = time.monotonic() - started
        if result.reason:
            log.warning("event=priors_unavailable study=%s found=%d reason=%r seconds=%.2f",
                        study_uid, len(result), result.reason, took)
        else:
            log.info("event=priors_found study=%s count=%d priors=%s seconds=%.2f",
                     study_uid, len(result), ",".join(p.study_uid for p in result), took)
        return result

    # -- candidates -------------------------------------------------------------------------------
    def _local(self, patient_id: str) -> dict[str, dict[str, Any]]:
        found = self.client.post_json("/tools/find", {
            "Level": "Study", "Expand": True, "Query": {"PatientID": patient_id},
        }) or []
        out = {}
        for study in found:
            tags = study.get("MainDicomTags") or {}
            uid = tags.get("StudyInstanceUID")
            # Orthanc matches "*" and "?" in a PatientID as wildcards: keep exact matches only.
            if (study.get("PatientMainDicomTags") or {}).get("PatientID") != patient_id:
                continue
            if uid:
                out[uid] = {"uid": uid, "date": tags.get("StudyDate", ""), "time": tags.get("StudyTime", ""),
                            "accession": tags.get("AccessionNumber", ""), "orthanc_id": study["ID"],
                            "modalities": None, "source": "orthanc", "move_from": None}
        return out

    def _remote(self, name: str, patient_id: str, cur_date: str) -> dict[str, dict[str, Any]]:
        query = {"Level": "Study", "Query": {
            "PatientID": patient_id, "StudyInstanceUID": "",
            "StudyDate": study_date_range(cur_date, self.config.max_age),
            "StudyTime": "", "AccessionNumber": "", "ModalitiesInStudy": "CR\\DX",
        }}
        answer = self.client.post_json(f"/modalities/{name}/query", query)
        items = self.client.get_json(f"/queries/{answer['ID']}/answers?expand&simplify")
        out = {}
        for tags in items or []:
            uid = tags.get("StudyInstanceUID")
            if tags.get("PatientID", patient_id) != patient_id:
                continue  # a PACS that matched loosely (wildcards): never another patient's study
            if uid:
                out[uid] = {"uid": uid, "date": tags.get("StudyDate", ""), "time": tags.get("StudyTime", ""),
                            "accession": tags.get("AccessionNumber", ""), "orthanc_id": None,
                            "modalities": modalities(tags.get("ModalitiesInStudy")), "source": name,
                            "move_from": name}
        return out

    def _fetch(self, current: Sequence[Dataset], deadline: float) -> PriorsResult:
        if not current:
            return PriorsResult(reason="no current images to take PatientID from")
        head = current[0]
        patient_id = str(head.get("PatientID", "") or "")
        if not patient_id:
            return PriorsResult(reason="current study has no PatientID")
        cur_uid = str(head.get("StudyInstanceUID", ""))
        cur_date = str(head.get("StudyDate", "") or "")
        current_study = PriorCandidate(cur_uid, cur_date, str(head.get("StudyTime", "") or ""))

        problems: list[str] = []
        candidates = self._local(patient_id)
        for name in self.modalities:
            try:
                for uid, cand in self._remote(name, patient_id, cur_date).items():
                    held = candidates.setdefault(uid, cand)
                    if held is not cand and not self.config.skip_local and held["move_from"] is None:
                        held["move_from"] = name  # held here, but asked to retrieve again
            except OrthancError as exc:
                problems.append(f"C-FIND in modality {name!r} failed: {exc}")
        # Orthanc's own studies have unknown modalities (a CT is dropped at loading), so rank them all
        # and stop at max_priors loaded.
        ranked = rank_prior_studies(
            (PriorCandidate(c["uid"], c["date"], c["time"], frozenset(c["modalities"] or ()), c)
             for c in candidates.values()),
            current_study, len(candidates), self.config.max_age)

        priors = PriorsResult()
        for ranked_cand in ranked:
            cand = ranked_cand.data
            if len(priors) >= self.config.max_priors:
                break
            if time.monotonic() > deadline:
                problems.append(f"total_timeout_s ({self.config.total_timeout_s:g} s) reached after "
                                f"{len(priors)} prior(s)")
                break
            try:
                prior = self._load(cand, cur_uid, deadline)
            except OrthancError as exc:
                problems.append(f"prior {cand['uid']} from {cand['source']}: {exc}")
                continue
            if prior is not None:
                priors.append(prior)
        if problems:
            priors.reason = "; ".join(problems)
        return priors

    # -- loading ------------------------------------------------------------------------------------
    def _own_aet_title(self) -> str:
        if self._own_aet is None:
            self._own_aet = str(self.client.get_json("/system")["DicomAet"])
        return self._own_aet

    def _load(self, cand: dict[str, Any], for_study: str, deadline: float) -> PriorStudy | None:
        orthanc_id = cand["orthanc_id"]
        if cand["move_from"] is not None:  # not held here (or skip_local = false): C-MOVE into Orthanc
            if self.engine is not None and orthanc_id is None:
                mark_retrieved_prior(self.engine, cand["uid"], for_study)
            remaining = max(int(deadline - time.monotonic()), 5)
            self.client.post_json(f"/modalities/{cand['move_from']}/move", {
                "Level": "Study", "Resources": [{"StudyInstanceUID": cand["uid"]}],
                "TargetAet": self._own_aet_title(), "Synchronous": True, "Timeout": remaining,
            }, timeout=remaining + 10)
            orthanc_id = self.client.lookup(cand["uid"], "Study")
            if orthanc_id is None:
                raise OrthancError(f"C-MOVE of {cand['uid']} reported success but Orthanc does not hold it")
            log.info("event=prior_moved prior=%s modality=%s", cand["uid"], cand["move_from"])
        images: list[Dataset] = []
        reports: list[Dataset] = []
        for series in self.client.get_json(f"/studies/{orthanc_id}/series") or []:
            modality = str((series.get("MainDicomTags") or {}).get("Modality", "")).upper()
            if modality not in IMAGE_MODALITIES | {"SR"}:
                continue
            for instance_id in series.get("Instances", []):
                ds = self.client.instance(instance_id)
                (reports if modality == "SR" else images).append(ds)
        if not images:
            return None  # no CR/DX image: not a prior chest radiograph
        # The prior's report: a human one only (the one policy); none: "no prior report available".
        prior = PriorStudy(study_uid=cand["uid"], study_date=cand["date"], study_time=cand["time"],
                           accession_number=cand["accession"], images=images, report=choose_report(reports))
        log.info("event=prior_retrieved prior=%s source=%s images=%d srs=%d report=%s",
                 cand["uid"], cand["source"], len(images), len(reports),
                 prior.report.SOPInstanceUID if prior.report is not None else None)
        return prior


def make_orthanc_worker(config: Config, process_study: ProcessStudy, queue: Any, ledger: Any, *,
                        worker_id: str | None = None, client: OrthancClient | None = None) -> Worker:
    """A :class:`Worker` on unirg's queue that reads from and writes to the Orthanc of ``config.orthanc``."""
    o = config.orthanc
    client = client or OrthancClient(o.base_url, o.auth, o.timeout_s)
    return Worker(
        queue, ledger, process_study,
        OrthancSRStore(client, config.sr_dir),
        config.data_dir,
        OrthancPriors(client, config.priors, o.priors_modalities, queue.engine),
        source=OrthancInstanceSource(client),
        worker_id=worker_id,
        poll_interval_s=config.queue.poll_interval_s,
        max_job_s=config.worker.max_job_s,
    )
