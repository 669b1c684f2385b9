"""Study assembly: group received instances by StudyInstanceUID and decide when a study is ready.

Pure part (no I/O): :func:`classify_instance` turns a header into an :class:`InstanceInfo`;
:func:`assess_study` turns a study's instances into a :class:`Verdict` (wait, ready, skip + reason).

Durable part: :class:`StudyLedger` keeps every instance and every study's state in two tables on the
queue's database, and :class:`Assembler` moves a study from ``collecting`` to ``queued`` *in the same
transaction* that enqueues its job - so after a kill -9 at any point a study is either still
collecting (the sweep picks it up again after restart) or queued exactly once.

Study states::

    collecting --(expected views in, or inactivity timeout)--> queued --(worker)--> done | failed
    collecting --(no chest CR/DX image by the timeout)--> skipped (reason)
    queued/done/failed --(new image, late_policy=rerun)--> collecting, revision + 1 (a new SR version)
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.uid import UID
from sqlalchemy import Column, Connection, Engine, Float, Index, Integer, MetaData, String, Table, Text, select, update

from unirg.plugin.config import AssemblyConfig
from unirg.plugin.queue import JobQueue, db_now, insert_ignore
from unirg.plugin.select import FRONTAL_VIEWS, LATERAL, classify_view, is_chest

__all__ = [
    "IMAGE_SOP_CLASSES",
    "InstanceInfo",
    "Verdict",
    "classify_instance",
    "assess_study",
    "StudyLedger",
    "RerunRefused",
    "Assembler",
]

log = logging.getLogger(__name__)

#: The chest radiograph storage SOP classes we process.
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}


@dataclass(frozen=True)
class InstanceInfo:
    """What assembly needs to know about one instance (from its header only)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str
    kind: str  # "image" (a CR/DX we may process) or "other" (recorded, never processed)
    view: str | None  # "frontal", "lateral" or None (unknown) for images
    body_part: str
    chest: bool = True  # unirg.plugin.select.is_chest: body part or descriptions say chest
    reason: str | None = None  # why an "other" instance is not processed

    @property
    def is_chest_image(self) -> bool:
        return self.kind == "image" and self.chest


def _view_of(ds: Dataset) -> str | None:
    """"frontal", "lateral" or None, by the same rules view selection uses (unirg.plugin.select)."""
    view = classify_view(ds)
    if view in FRONTAL_VIEWS:
        return "frontal"
    if view == LATERAL:
        return "lateral"
    return None


def classify_instance(ds: Dataset) -> InstanceInfo:
    """Classify an instance by its header (pixel data not needed).

    Raises ``ValueError`` naming the attribute when SOPClassUID, SOPInstanceUID or StudyInstanceUID
    is missing.
    """
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if not str(ds.get(k, "") or "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    sop_class = str(ds.SOPClassUID)
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    common = dict(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=sop_class,
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        body_part=body_part,
    )
    if sop_class in IMAGE_SOP_CLASSES:
        return InstanceInfo(kind="image", view=_view_of(ds), chest=is_chest(ds), **common)
    name = UID(sop_class).name if UID(sop_class).is_valid else sop_class
    return InstanceInfo(kind="other", view=None, reason=f"not a CR/DX image ({name}); not processed", **common)


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`assess_study`: ``state`` is "wait", "ready" or "skip" (with ``reason``)."""

    state: str
    reason: str = ""


def assess_study(
    instances: Sequence[InstanceInfo],
    *,
    idle_s: float,
    expected_views: Sequence[str],
    inactivity_timeout_s: float,
) -> Verdict:
    """Decide whether a collecting study is ready.

    Ready as soon as the chest images cover ``expected_views`` (as a multiset), or once ``idle_s``
    (seconds since the last instance) reaches the timeout and there is at least one chest image.
    Skipped at the timeout when there is none, with the reason.

    >>> img = lambda view: InstanceInfo("1", "1.2.840.10008.5.1.4.1.1.1", "9", "8", "DX", "image", view, "CHEST")
    >>> assess_study([img("frontal")], idle_s=0.1, expected_views=["frontal", "lateral"], inactivity_timeout_s=5).state
    'wait'
    >>> assess_study([img("frontal"), img("lateral")], idle_s=0.1, expected_views=["frontal", "lateral"],
    ...              inactivity_timeout_s=5).state
    'ready'
    >>> assess_study([img("frontal")], idle_s=6, expected_views=["frontal", "lateral"], inactivity_timeout_s=5).state
    'ready'
    """
    chest = [i for i in instances if i.is_chest_image]
    if expected_views and chest:
        have = Counter(i.view for i in chest if i.view)
        if all(have[v] >= n for v, n in Counter(expected_views).items()):
            return Verdict("ready", "expected views received")
    if idle_s < inactivity_timeout_s:
        return Verdict("wait")
    if chest:
        return Verdict("ready", f"inactivity timeout ({inactivity_timeout_s:g} s)")
    images = [i for i in instances if i.kind == "image"]
    if images:
        parts = sorted({i.body_part or "not given" for i in images})
        return Verdict("skip", f"non-chest study (BodyPartExamined {', '.join(parts)}, no chest description)")
    modalities = ", ".join(sorted({i.modality or "?" for i in instances}))
    return Verdict("skip", f"no CR/DX image in the study (only: {modalities})")


# ---------------------------------------------------------------------------------------------------
# Durable ledger
# ---------------------------------------------------------------------------------------------------

metadata = MetaData()

studies = Table(
    "unirg_studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("state", String(16), nullable=False),  # collecting, queued, done, failed, skipped
    Column("revision", Integer, nullable=False, default=0),
    Column("reason", Text),
    Column("job_id", Integer),
    Column("first_received", Float, nullable=False),
    Column("last_received", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_unirg_studies_state", "state"),
)

instances = Table(
    "unirg_instances",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("series_uid", String(64)),
    Column("modality", String(16)),
    Column("kind", String(8), nullable=False),  # image, other
    Column("view", String(8)),
    Column("body_part", String(64)),
    Column("chest", Integer, nullable=False, default=1),
    # stored: part of the study; skipped: other SOP class; late: arrived after processing, ignored
    Column("status", String(8), nullable=False),
    Column("reason", Text),
    Column("revision", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("calling_ae", String(16)),
    Column("received_at", Float, nullable=False),
)


def _info_from_row(row: Any) -> InstanceInfo:
    return InstanceInfo(
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        study_uid=row.study_uid,
        series_uid=row.series_uid or "",
        modality=row.modality or "",
        kind=row.kind,
        view=row.view,
        body_part=row.body_part or "",
        chest=bool(row.chest),
        reason=row.reason,
    )


class RerunRefused(Exception):
    """The study cannot be re-run now; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class StudyLedger:
    """Instances and study states on the queue's database (two tables next to the jobs table)."""

    def __init__(self, engine: Engine, late_policy: str = "ignore") -> None:
        if late_policy not in ("ignore", "rerun"):
            raise ValueError(f"late_policy must be 'ignore' or 'rerun', got {late_policy!r}")
        self.engine = engine
        self.late_policy = late_policy

    def create_schema(self) -> None:
        metadata.create_all(self.engine, checkfirst=True)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction on the ledger's database: pass it as ``conn`` to record a batch at once
        (tables of the caller's own on the same database may be read in it)."""
        with self.engine.begin() as c:
            yield c

    @contextmanager
    def _tx(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as c:
            yield c

    def record_instance(self, info: InstanceInfo, path: str, calling_ae: str = "", *,
                        conn: Connection | None = None) -> str:
        """Record an instance whose file is already safely on disk; return its status.

        ``"stored"`` (part of the study), ``"skipped"`` (not a CR/DX image) or ``"late"`` (new image
        after the study was queued, policy ``ignore``). With policy ``rerun`` a late image re-opens
        the study under the next revision. Re-sending a known instance only refreshes its row.
        Pass ``conn`` to record inside the caller's transaction (e.g. a batch of instances).
        """
        with self._tx(conn) as c:
            now = db_now(c)
            # Create the study row if new (race-free on PostgreSQL), then lock it: every instance of
            # one study is recorded serially from here on.
            created = c.execute(
                insert_ignore(c, studies).values(
                    study_uid=info.study_uid, state="collecting", revision=0,
                    first_received=now, last_received=now, updated_at=now,
                )
            ).rowcount
            study = c.execute(
                select(studies).where(studies.c.study_uid == info.study_uid).with_for_update()
            ).one()
            known = c.execute(
                select(instances.c.status, instances.c.revision).where(
                    instances.c.study_uid == info.study_uid,
                    instances.c.sop_instance_uid == info.sop_instance_uid,
                )
            ).first()
            revision, study_state = study.revision, study.state

            if info.kind != "image":
                status, reason = "skipped", info.reason
            elif known is not None:
                status, reason = known.status, None  # a re-send changes nothing
            elif study_state in ("collecting", "skipped"):
                status, reason = "stored", None
                if study_state == "skipped":  # re-assess with the new image
                    c.execute(
                        update(studies).where(studies.c.study_uid == info.study_uid)
                        .values(state="collecting", reason=None, updated_at=now)
                    )
            elif self.late_policy == "rerun":
                revision += 1
                status, reason = "stored", None
                c.execute(
                    update(studies).where(studies.c.study_uid == info.study_uid)
                    .values(state="collecting", revision=revision, reason=None, updated_at=now)
                )
                log.info("event=late_instance_rerun study=%s sop=%s revision=%d",
                         info.study_uid, info.sop_instance_uid, revision)
            else:
                status = "late"
                reason = f"arrived after the study was {study_state} (late_policy=ignore)"
                log.info("event=late_instance_ignored study=%s sop=%s", info.study_uid, info.sop_instance_uid)

            values = dict(
                sop_class_uid=info.sop_class_uid, series_uid=info.series_uid, modality=info.modality,
                kind=info.kind, view=info.view, body_part=info.body_part, chest=int(info.chest),
                status=status, reason=reason,
                path=path, calling_ae=calling_ae, received_at=now,
            )
            if known is None:
                c.execute(instances.insert().values(
                    study_uid=info.study_uid, sop_instance_uid=info.sop_instance_uid, revision=revision, **values))
            else:
                c.execute(update(instances).where(
                    instances.c.study_uid == info.study_uid,
                    instances.c.sop_instance_uid == info.sop_instance_uid,
                ).values(**values))
            if not created and (status == "stored" or study_state == "collecting"):
                c.execute(update(studies).where(studies.c.study_uid == info.study_uid)
                          .values(last_received=now, updated_at=now))
        return status

    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(select(studies).where(studies.c.study_uid == study_uid)).first()
        return dict(row._mapping) if row else None

    def instances_of(self, study_uid: str, statuses: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Rows of a study's instances, optionally only those with the given statuses."""
        q = select(instances).where(instances.c.study_uid == study_uid).order_by(instances.c.received_at)
        if statuses is not None:
            q = q.where(instances.c.status.in_(list(statuses)))
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def image_paths(self, study_uid: str) -> list[str]:
        """Files of the study's processable images (status stored, kind image), relative to the data dir."""
        return [r["path"] for r in self.instances_of(study_uid, ["stored"]) if r["kind"] == "image"]

    def collecting(self) -> list[str]:
        with self.engine.connect() as c:
            return [r.study_uid for r in c.execute(select(studies.c.study_uid).where(studies.c.state == "collecting"))]

    def mark(self, study_uid: str, revision: int, state: str, reason: str | None = None,
             *, conn: Connection | None = None) -> bool:
        """Set the outcome of ``revision`` (done/failed); ignored if the study moved on to a newer one."""
        def _do(c: Connection) -> bool:
            return bool(c.execute(
                update(studies)
                .where(studies.c.study_uid == study_uid, studies.c.revision == revision,
                       studies.c.state.in_(["queued", "done", "failed"]))
                .values(state=state, reason=reason, updated_at=db_now(c))
            ).rowcount)
        if conn is not None:
            return _do(conn)
        with self.engine.begin() as c:
            return _do(c)

    def rerun(self, study_uid: str, queue: JobQueue, reason: str) -> dict[str, Any] | None:
        """Queue revision + 1 of a done / failed study (job and study row in one transaction).

        Returns the new job's summary; ``None`` when the study is still collecting (assess it instead).
        Raises :class:`RerunRefused`: unknown (404), queued (409), skipped (422).
        """
        with self.engine.begin() as c:
            row = c.execute(select(studies).where(studies.c.study_uid == study_uid).with_for_update()).first()
            if row is None:
                raise RerunRefused(f"no instance of study {study_uid} can be processed (none recorded)", 404)
            if row.state == "queued":
                raise RerunRefused(f"study {study_uid} is already queued (job {row.job_id}); wait for its draft")
            if row.state == "skipped":
                raise RerunRefused(f"study {study_uid} was skipped: {row.reason}", 422)
            if row.state not in ("done", "failed"):
                return None
            revision = row.revision + 1
            job_id = queue.enqueue(study_uid, revision, {"reason": reason}, conn=c)
            c.execute(update(studies).where(studies.c.study_uid == study_uid)
                      .values(state="queued", revision=revision, job_id=job_id, reason=reason, updated_at=db_now(c)))
        log.info("event=study_rerun study=%s revision=%d job=%d", study_uid, revision, job_id)
        return {"study_uid": study_uid, "revision": revision, "job_id": job_id, "state": "queued"}

    def state_counts(self) -> dict[str, int]:
        from sqlalchemy import func
        with self.engine.connect() as c:
            return {s: n for s, n in c.execute(select(studies.c.state, func.count()).group_by(studies.c.state))}

    def skipped(self, limit: int = 20) -> list[dict[str, Any]]:
        """Skipped studies and instances with reasons, most recent first."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(studies.c.study_uid, studies.c.reason).where(studies.c.state == "skipped")
                .order_by(studies.c.updated_at.desc()).limit(limit)
            )
            out = [{"study_uid": r.study_uid, "sop_instance_uid": None, "reason": r.reason} for r in rows]
            rows = c.execute(
                select(instances.c.study_uid, instances.c.sop_instance_uid, instances.c.reason)
                .where(instances.c.status.in_(["skipped", "late"]))
                .order_by(instances.c.received_at.desc()).limit(limit)
            )
            out += [dict(r._mapping) for r in rows]
        return out


class Assembler:
    """Moves studies from ``collecting`` to ``queued`` (job enqueued) or ``skipped``.

    Call :meth:`check` after each stored instance (fast path: expected views complete) and run
    :meth:`sweep` periodically (inactivity timeout; also picks up studies left collecting by a
    crashed listener). :meth:`start` runs the sweep in a daemon thread.
    """

    def __init__(self, ledger: StudyLedger, queue: JobQueue, config: AssemblyConfig) -> None:
        self.ledger = ledger
        self.queue = queue
        self.config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Called (no arguments) after a job is enqueued, e.g. to wake in-process workers.
        self.on_ready: list[Callable[[], None]] = []

    def check(self, study_uid: str, *, stable: bool = False) -> Verdict:
        """Assess one collecting study and act on the verdict (idempotent, safe from many threads).

        ``stable=True``: the PACS says no more instances are coming (Orthanc's STABLE_STUDY), so the
        study is assessed as if the inactivity timeout had passed.
        """
        with self.ledger.engine.begin() as c:
            study = c.execute(
                select(studies).where(studies.c.study_uid == study_uid).with_for_update()
            ).first()
            if study is None or study.state != "collecting":
                return Verdict("wait", "not collecting")
            now = db_now(c)
            rows = c.execute(
                select(instances).where(instances.c.study_uid == study_uid, instances.c.status != "late")
            ).all()
            verdict = assess_study(
                [_info_from_row(r) for r in rows],
                idle_s=max(now - study.last_received, self.config.inactivity_timeout_s if stable else 0.0),
                expected_views=self.config.expected_views,
                inactivity_timeout_s=self.config.inactivity_timeout_s,
            )
            if verdict.state == "ready":
                job_id = self.queue.enqueue(study_uid, study.revision, {"reason": verdict.reason}, conn=c)
                c.execute(update(studies).where(studies.c.study_uid == study_uid)
                          .values(state="queued", job_id=job_id, reason=verdict.reason, updated_at=now))
            elif verdict.state == "skip":
                c.execute(update(studies).where(studies.c.study_uid == study_uid)
                          .values(state="skipped", reason=verdict.reason, updated_at=now))
        if verdict.state == "ready":
            log.info("event=study_ready study=%s revision=%d job=%d why=%r",
                     study_uid, study.revision, job_id, verdict.reason)
            for callback in self.on_ready:
                callback()
        elif verdict.state == "skip":
            log.info("event=study_skipped study=%s reason=%r", study_uid, verdict.reason)
        return verdict

    def sweep(self) -> None:
        """Check every collecting study once."""
        for uid in self.ledger.collecting():
            try:
                self.check(uid)
            except Exception:  # keep sweeping the others; the next sweep retries this one
                log.exception("event=assembly_error study=%s", uid)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="unirg-assembler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.config.sweep_interval_s):
            self.sweep()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
