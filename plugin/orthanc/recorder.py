"""What unirg's Orthanc plugin does with Orthanc's events: pure logic, no ``import orthanc``.

The entry script ``orthanc/unirg_plugin.py`` registers the callbacks and hands each event to an
:class:`OrthancPlugin`; everything here is testable with a stub ``orthanc`` module or none at all.

Flow (the heavy work never runs in an Orthanc thread)::

    stored-instance callback (ingest thread)   -> note the instance ID (+ calling AE), wake; nothing else
    change callback (Orthanc's one change thread) -> STABLE_STUDY: wake; STARTED / STOPPED: life cycle
    recorder thread (ours, in the Orthanc process; waits for a 0.3 s lull in C-STOREs, 5 s at most)
        reads Orthanc's change log from a durable cursor, a batch at a time:
        NewInstance -> header by REST, filter (CR/DX chest) + loop guard,
                       StudyLedger.record_instance, the whole batch in one transaction
                       (+ Assembler.check: expected views in -> enqueue)
        StableStudy -> Assembler.check(stable=True)                               -> enqueue
    worker process (``unirg orthanc``)         -> claims the job, reads/writes through Orthanc's REST API

Why the change log: it is written by Orthanc in the same transaction as the instance, so reading it
from a cursor kept in unirg's database (``unirg_orthanc_state``) loses nothing when Orthanc or the
plugin dies between storing an instance and recording it; records and checks are idempotent, so
reading a change twice is harmless. The stored-instance callback only wakes the recorder early
(the expected views may be in); it neither reads nor parses the instance, because anything done
there is done inside Orthanc's C-STORE and slows ingestion. On the very first start the cursor
begins at the changes made since the plugin was loaded: history already in Orthanc is not drafted
(use the ``POST /unirg/studies/{uid}/rerun`` route for such a study).

Loop guard: unirg's own draft SRs (series description starting with the research label) are never
recorded; any other SR or non-image object is recorded as "skipped" and can never make a study ready
(only CR/DX chest images can). A study that is queued, done or failed is not collecting, so the
STABLE_STUDY that follows storing our SR changes nothing.

Backstop: Orthanc forgets its "stable" timers when it stops, so the recorder also sweeps collecting
studies with an inactivity timeout of ``max([assembly] inactivity_timeout_s, 2 x StableAge)``.

Ingestion cost (bench/bench_ingest.py): classifying the header inside the callback, and recording
beside a busy Orthanc, each took a third of Orthanc's C-STORE rate on 2 CPUs; hence the bare callback
and batches recorded once the burst is over.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from sqlalchemy import Column, Float, MetaData, String, Table, Text, select

from unirg.plugin.assemble import Assembler, InstanceInfo, RerunRefused, StudyLedger, classify_instance
from unirg.plugin.feedback.capture import create_schema as create_feedback_schema
from unirg.plugin.feedback.capture import note_final
from unirg.plugin.orthanc.rest import OrthancRest, RestError, orthanc_path, read_header, rest_json
from unirg.plugin.prior_policy import is_own_draft
from unirg.plugin.queue import JobQueue, db_now, insert_ignore, upsert

__all__ = [
    "create_schema",
    "mark_retrieved_prior",
    "ChangeRecorder",
    "RecorderStats",
    "noted_from_bytes",
    "classify_for_orthanc",
    "record_study_from_orthanc",
    "rerun_study",
    "RerunRefused",
]

log = logging.getLogger(__name__)

metadata = MetaData()

#: Small key/value state of the plugin (the change-log cursor), in unirg's queue database.
plugin_state = Table(
    "unirg_orthanc_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

#: Studies a worker pulled into Orthanc from a remote modality as priors: never drafted themselves.
retrieved_priors = Table(
    "unirg_orthanc_priors",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("for_study", String(64), nullable=False),
    Column("retrieved_at", Float, nullable=False),
)


def create_schema(engine: Any) -> None:
    metadata.create_all(engine, checkfirst=True)
    create_feedback_schema(engine)


def mark_retrieved_prior(engine: Any, study_uid: str, for_study: str) -> None:
    """Record that ``study_uid`` is pulled into Orthanc as a prior (so it gets no draft of its own)."""
    with engine.begin() as c:
        c.execute(insert_ignore(c, retrieved_priors).values(
            study_uid=study_uid, for_study=for_study, retrieved_at=db_now(c)))


def _parse_change_date(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text, "%Y%m%dT%H%M%S")
    except (TypeError, ValueError):
        return None


# -------------------------------------------------------------------------------------------------
# The recorder: Orthanc's change log -> ledger -> queue
# -------------------------------------------------------------------------------------------------

@dataclass
class _Noted:
    """The recorder's decision about one instance: record ``info``, or ignore it for ``reason``."""

    info: InstanceInfo | None  # None: not to be recorded (see reason)
    reason: str = ""


@dataclass
class RecorderStats:
    """Counters of one recorder since the plugin started (``GET /unirg/status``)."""

    changes: int = 0
    recorded: int = 0
    ignored_own: int = 0
    unreadable: int = 0
    headers_read: int = 0
    stable_checks: int = 0
    errors: int = 0
    last_error: str | None = None
    batches: int = 0


CURSOR_KEY = "change_cursor"
OWN_DRAFT = "unirg's own draft SR (loop guard)"


class ChangeRecorder:
    """Reads Orthanc's change log from a durable cursor and turns it into ledger rows and jobs.

    Parameters
    ----------
    ledger, assembler
        The study ledger and the assembler on unirg's queue database.
    rest : OrthancRest
        Orthanc's REST API (from inside the plugin: :class:`PluginRest`).
    started_at : datetime.datetime
        UTC time the plugin was loaded: on the very first start, older changes are history.
    batch : int
        Changes read per REST call.
    memo_max : int
        Instances noted by the stored-instance callback (ID -> calling AE) and not yet recorded, at most.
    """

    def __init__(self, ledger: StudyLedger, assembler: Assembler, rest: OrthancRest, *,
                 started_at: datetime.datetime | None = None, batch: int = 200, memo_max: int = 20000) -> None:
        self.ledger = ledger
        self.assembler = assembler
        self.engine = ledger.engine
        self.rest = rest
        self.started_at = (started_at or datetime.datetime.now(datetime.timezone.utc)).replace(
            tzinfo=None, microsecond=0)
        self.batch = batch
        self.memo_max = memo_max
        self._memo: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = RecorderStats()

    # -- from the callbacks (any thread; cheap) ------------------------------------------------------
    def note(self, instance_id: str, calling_ae: str = "") -> None:
        with self._lock:
            self._memo[instance_id] = calling_ae
            while len(self._memo) > self.memo_max:
                self._memo.popitem(last=False)

    def _take(self, instance_id: str) -> str:
        with self._lock:
            return self._memo.pop(instance_id, "")

    def _noted(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._memo

    @property
    def backlog(self) -> int:
        with self._lock:
            return len(self._memo)

    # -- the cursor ----------------------------------------------------------------------------------
    def cursor(self) -> int | None:
        with self.engine.connect() as c:
            value = c.execute(select(plugin_state.c.value).where(plugin_state.c.key == CURSOR_KEY)).scalar()
        return None if value is None else int(value)

    def _save_cursor(self, seq: int) -> None:
        with self.engine.begin() as c:
            now = db_now(c)
            upsert(c, plugin_state, {"key": CURSOR_KEY}, {"value": str(seq), "updated_at": now})

    def _first_cursor(self, last: int) -> int:
        """First start: changes older than the plugin are history. Returns the cursor to start from."""
        since, cursor = max(0, last - 5000), last
        while since < last:  # page forward through the recent changes to the first one of this run
            answer = rest_json(self.rest, f"/changes?since={since}&limit=1000")
            changes = answer.get("Changes", [])
            first_new = next((c for c in changes if self._is_new(c)), None)
            if first_new is not None:
                cursor = int(first_new["Seq"]) - 1
                break
            if not changes or answer.get("Done", True):
                break
            since = int(changes[-1]["Seq"])
        log.info("event=orthanc_cursor_initialised cursor=%d last=%d note='older changes are history'", cursor, last)
        return cursor

    def _is_new(self, change: Mapping[str, Any]) -> bool:
        when = _parse_change_date(change.get("Date", ""))
        return (when is not None and when >= self.started_at) or self._noted(change.get("ID", ""))

    # -- one batch ------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Process one batch of changes; ``True`` when more are waiting.

        Each new instance's header is read by REST and classified (loop guard included); all the batch's
        instances are recorded in one transaction; then the studies are checked (expected views in, or stable); then
        the cursor moves past the batch. A crash anywhere re-reads the batch: all of it is idempotent.
        """
        cursor = self.cursor()
        if cursor is None:
            last = int(rest_json(self.rest, "/changes?last").get("Last", 0))
            cursor = self._first_cursor(last)
            self._save_cursor(cursor)
        answer = rest_json(self.rest, f"/changes?since={cursor}&limit={self.batch}")
        changes = answer.get("Changes", [])
        last = int(answer.get("Last", cursor))
        if not changes and last < cursor:
            log.warning("event=orthanc_cursor_reset cursor=%d last=%d note='Orthanc database is newer than the "
                        "cursor (reset?); reading from the start'", cursor, last)
            self._save_cursor(0)
            return True
        new: list[tuple[str, _Noted, str]] = []
        stable: list[str] = []
        for change in changes:
            kind, resource = change.get("ChangeType"), change.get("ID", "")
            self.stats.changes += 1
            try:
                if kind == "NewInstance":
                    calling_ae = self._take(resource)
                    self.stats.headers_read += 1
                    new.append((resource, noted_from_bytes(self.rest.get(f"/instances/{resource}/file")),
                                calling_ae))
                elif kind == "StableStudy":
                    uid = (rest_json(self.rest, f"/studies/{resource}").get("MainDicomTags") or {}).get(
                        "StudyInstanceUID")
                    if uid:
                        stable.append(uid)
            except RestError as exc:
                if not exc.not_found:
                    raise  # Orthanc trouble: stop here, the cursor stays before this batch
                log.info("event=orthanc_resource_gone change=%s id=%s", kind, resource)
        touched = self._record_all(new)
        for study in touched:
            self.assembler.check(study)
        for study in stable:
            self.stats.stable_checks += 1
            verdict = self.assembler.check(study, stable=True)
            log.info("event=study_stable study=%s verdict=%s", study, verdict.state)
        if changes:
            self._save_cursor(int(changes[-1]["Seq"]))
        self.stats.batches += 1
        return not answer.get("Done", True)

    def _record_all(self, new: list[tuple[str, _Noted, str]]) -> list[str]:
        """Record the batch's instances in one transaction; the studies that got a chest image."""
        todo = []
        for instance_id, noted, calling_ae in new:
            if noted.info is None:
                if noted.reason == OWN_DRAFT:
                    self.stats.ignored_own += 1
                else:
                    self.stats.unreadable += 1
                log.info("event=instance_ignored id=%s reason=%r", instance_id, noted.reason)
            else:
                todo.append((instance_id, noted, calling_ae))
        if not todo:
            return []
        touched: dict[str, None] = {}
        with self.ledger.transaction() as c:
            uids = sorted({n.info.study_uid for _, n, _ in todo})
            priors = dict(c.execute(select(retrieved_priors.c.study_uid, retrieved_priors.c.for_study)
                                    .where(retrieved_priors.c.study_uid.in_(uids))).all())
            for instance_id, noted, calling_ae in todo:
                info = noted.info
                if info.study_uid in priors:
                    log.info("event=instance_ignored study=%s sop=%s reason='retrieved as a prior of %s'",
                             info.study_uid, info.sop_instance_uid, priors[info.study_uid])
                    continue
                status = self.ledger.record_instance(info, orthanc_path(instance_id), calling_ae, conn=c)
                if info.modality.upper() == "SR" and status == "skipped":  # a report: the feedback loop
                    note_final(c, info.study_uid, "orthanc")  # pairs it (a worker reads it; not here)
                self.stats.recorded += 1
                log.debug("event=instance_recorded study=%s sop=%s status=%s",
                          info.study_uid, info.sop_instance_uid, status)
                if status == "stored":
                    touched[info.study_uid] = None
        return list(touched)

    def catch_up(self, max_batches: int = 1000) -> None:
        """Process the change log up to its end (bounded, so a stop request is honoured)."""
        for _ in range(max_batches):
            if not self.step():
                return


def noted_from_bytes(data: bytes) -> _Noted:
    """:func:`classify_for_orthanc` of a DICOM file in memory; an unreadable one is ignored, with the reason."""
    try:
        header = read_header(data)
    except Exception as exc:
        return _Noted(None, reason=f"unreadable DICOM: {type(exc).__name__}: {exc}")
    return classify_for_orthanc(header)


def classify_for_orthanc(header: Dataset) -> _Noted:
    """The stored-instance callback's decision: our own draft (ignored) or an instance to record."""
    if is_own_draft(header):
        return _Noted(None, reason=OWN_DRAFT)
    try:
        return _Noted(classify_instance(header))
    except ValueError as exc:
        return _Noted(None, reason=f"unusable header: {exc}")


# -------------------------------------------------------------------------------------------------
# Re-running a study (POST /unirg/studies/{uid}/rerun)
# -------------------------------------------------------------------------------------------------

def _find_orthanc_study(rest: OrthancRest, study_uid: str) -> str | None:
    for hit in rest_json(rest, "/tools/lookup", study_uid.encode()):
        if hit.get("Type") == "Study":
            return str(hit["ID"])
    return None


def record_study_from_orthanc(rest: OrthancRest, ledger: StudyLedger, study_uid: str) -> int:
    """Record every instance Orthanc holds of ``study_uid`` (a study the plugin never saw); returns
    how many were recorded. Raises :class:`RerunRefused` (404) when Orthanc does not hold it."""
    orthanc_id = _find_orthanc_study(rest, study_uid)
    if orthanc_id is None:
        raise RerunRefused(f"Orthanc holds no study {study_uid}", 404)
    n = 0
    for inst in rest_json(rest, f"/studies/{orthanc_id}/instances"):
        noted = noted_from_bytes(rest.get(f"/instances/{inst['ID']}/file"))
        if noted.info is not None:
            ledger.record_instance(noted.info, orthanc_path(inst["ID"]), "")
            n += 1
    return n


def rerun_study(ledger: StudyLedger, queue: JobQueue, assembler: Assembler, rest: OrthancRest,
                study_uid: str, reason: str = "re-run requested") -> dict[str, Any]:
    """Draft ``study_uid`` again as a new SR version (revision + 1), or for the first time.

    * done / failed: revision + 1 is queued (the worker writes a new SR whose UIDs follow the revision
      and that names the previous one in PredecessorDocumentsSequence);
    * unknown to unirg (in Orthanc from before the plugin): its instances are recorded and it is
      assessed now; collecting: assessed now;
    * queued (a job is pending or running) or skipped (nothing to draft): :class:`RerunRefused`.
    """
    if ledger.study(study_uid) is None:
        record_study_from_orthanc(rest, ledger, study_uid)
    queued = ledger.rerun(study_uid, queue, reason)
    if queued is not None:
        return queued
    verdict = assembler.check(study_uid, stable=True)  # collecting
    row = ledger.study(study_uid) or {}
    if verdict.state != "ready":
        raise RerunRefused(f"study {study_uid} cannot be drafted: {verdict.reason or verdict.state}", 422)
    return {"study_uid": study_uid, "revision": row.get("revision", 0), "job_id": row.get("job_id"),
            "state": row.get("state")}
