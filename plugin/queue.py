"""Durable job queue: one job per (study, revision), claimed under a lease, retried, dead-lettered.

Why SQLAlchemy Core and not a queue library
-------------------------------------------
The queue must (a) run embedded with nothing to install (SQLite, WAL), (b) scale to several worker
machines on PostgreSQL with row leases and ``SELECT ... FOR UPDATE SKIP LOCKED``, (c) enqueue a job in
the *same transaction* that marks the study as queued (see :mod:`unirg.plugin.assemble`), so a kill -9
between the two cannot lose or duplicate work, and (d) keep jobs, attempts and dead-letter reasons
queryable for ``unirg status``. Celery, RQ and Dramatiq need a broker (Redis/RabbitMQ) and cannot
share a transaction with our own tables; persist-queue and huey's SQLite mode are single-machine;
procrastinate and pgqueuer are PostgreSQL-only. A ~300-line module on SQLAlchemy Core (already a
dependency, one code path for both databases, no ORM state) gives all four.

Semantics
---------
* ``enqueue`` is idempotent on ``(study_uid, revision)``.
* ``claim`` atomically picks the oldest due job - queued and ``not_before <= now``, or running with an
  expired lease (its worker died) - and leases it to the caller for ``lease_s`` seconds, with a fresh
  ``lease_token``. PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the whole transaction runs under
  ``BEGIN IMMEDIATE`` (one writer at a time), which makes select-then-update atomic.
* ``renew`` (heartbeat), ``complete`` and ``fail`` only act while the caller still holds the lease
  (same token): a worker that lost its lease cannot overwrite the outcome of the one that took over.
* ``fail`` re-queues with exponential backoff ``min(base * 2**(attempts-1), max)``, or dead-letters the
  job (state ``dead``) with the reason once ``max_attempts`` is reached or the error is permanent.
  A lease that expires counts as a failed attempt ("lease expired: worker died or hung").
* Times come from the database server on PostgreSQL (workers' clocks may differ), from this machine
  on SQLite.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url

__all__ = ["Job", "JobQueue", "QueueCounts", "make_engine", "db_now", "insert_ignore", "upsert", "JOB_STATES"]

log = logging.getLogger(__name__)

#: queued: waiting (maybe for its backoff to pass); running: leased to a worker; done; dead: dead-lettered.
JOB_STATES = ("queued", "running", "done", "dead")

metadata = MetaData()

jobs = Table(
    "unirg_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False),
    Column("revision", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("not_before", Float, nullable=False),
    Column("lease_owner", String(200)),
    Column("lease_token", String(64)),
    Column("lease_expires", Float),
    Column("last_error", Text),
    Column("payload", Text, nullable=False, default="{}"),
    Column("result", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("study_uid", "revision", name="uq_unirg_jobs_study_revision"),
    Index("ix_unirg_jobs_state_due", "state", "not_before"),
)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` set up for the queue's locking.

    SQLite: WAL journal, ``synchronous=FULL`` (a commit survives kill -9 and power loss), a 30 s busy
    timeout, and ``BEGIN IMMEDIATE`` for every transaction (one writer at a time, no deadlock between
    a reader upgrading to writer). PostgreSQL: ``postgresql://`` is mapped to the psycopg 3 driver.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(parsed, pool_pre_ping=True)


def insert_ignore(conn: Connection, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for SQLite and PostgreSQL (for tables on the queue's database)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def upsert(conn: Connection, table: Table, key: dict[str, Any], values: dict[str, Any],
           on_insert: dict[str, Any] | None = None) -> None:
    """Set ``values`` on the row of ``table`` with primary ``key``, inserting it first (with ``on_insert``
    as well) when it is not there; SQLite and PostgreSQL alike, safe against a concurrent insert."""
    conn.execute(insert_ignore(conn, table).values({**key, **(on_insert or {}), **values}))
    conn.execute(table.update().where(*(table.c[k] == v for k, v in key.items())).values(**values))


def db_now(conn: Connection) -> float:
    """Seconds since the epoch by the database's clock (PostgreSQL) or this machine's (SQLite)."""
    if conn.dialect.name == "postgresql":
        return float(conn.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar_one())
    return time.time()


@dataclass
class Job:
    """A job as claimed by one worker; ``lease_token`` proves the claim in later calls."""

    id: int
    study_uid: str
    revision: int
    attempts: int
    max_attempts: int
    lease_owner: str
    lease_token: str
    lease_expires: float
    payload: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None


@dataclass
class QueueCounts:
    """What ``unirg status`` prints: jobs per state and why the dead ones died."""

    queued: int = 0
    retrying: int = 0  # queued jobs that already failed at least once (included in ``queued``)
    in_flight: int = 0
    done: int = 0
    dead: int = 0
    dead_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.dead

    def as_dict(self) -> dict[str, int]:
        """The counts as ``unirg status``, ``/unirg/status`` and the status page show them."""
        return {"queued": self.queued, "retrying": self.retrying, "in_flight": self.in_flight,
                "done": self.done, "failed": self.dead}


class JobQueue:
    """The job queue on ``engine`` (see the module docstring for the semantics).

    Parameters
    ----------
    engine : Engine
        From :func:`make_engine`.
    lease_s : float
        Default lease length for :meth:`claim` and :meth:`renew`.
    max_attempts : int
        Attempts before a job is dead-lettered (stored per job at enqueue time).
    backoff_base_s, backoff_max_s : float
        Retry delay ``min(base * 2**(attempts-1), max)``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        lease_s: float = 120.0,
        max_attempts: int = 5,
        backoff_base_s: float = 5.0,
        backoff_max_s: float = 300.0,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.engine = engine
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s

    # -- schema ---------------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Create the table if missing (safe to call from every process at start)."""
        metadata.create_all(self.engine, checkfirst=True)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction on the queue's database, for calls that must commit together
        (e.g. ``complete(job, conn=c)`` and ``StudyLedger.mark(..., conn=c)``)."""
        with self.engine.begin() as c:
            yield c

    def close(self) -> None:
        """Release the database connections (the engine is shared with the ledger)."""
        self.engine.dispose()

    @contextmanager
    def _tx(self, conn: Connection | None = None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as c:
            yield c

    # -- producer -------------------------------------------------------------------------------
    def enqueue(
        self,
        study_uid: str,
        revision: int = 0,
        payload: dict[str, Any] | None = None,
        *,
        conn: Connection | None = None,
    ) -> int:
        """Add the job for ``(study_uid, revision)`` unless it exists; return its id.

        Pass ``conn`` to enqueue inside the caller's transaction.
        """
        with self._tx(conn) as c:
            existing = c.execute(
                select(jobs.c.id).where(jobs.c.study_uid == study_uid, jobs.c.revision == revision)
            ).scalar_one_or_none()
            if existing is not None:
                return int(existing)
            now = db_now(c)
            result = c.execute(
                jobs.insert().values(
                    study_uid=study_uid,
                    revision=revision,
                    state="queued",
                    attempts=0,
                    max_attempts=self.max_attempts,
                    not_before=now,
                    payload=json.dumps(payload or {}),
                    created_at=now,
                    updated_at=now,
                )
            )
            job_id = int(result.inserted_primary_key[0])
        log.info("event=job_enqueued job=%d study=%s revision=%d", job_id, study_uid, revision)
        return job_id

    # -- consumer -------------------------------------------------------------------------------
    def claim(self, worker_id: str, lease_s: float | None = None) -> Job | None:
        """Lease the oldest due job to ``worker_id``; ``None`` when nothing is due."""
        lease_s = self.lease_s if lease_s is None else lease_s
        while True:
            with self.engine.begin() as c:
                now = db_now(c)
                due = (jobs.c.state == "queued") & (jobs.c.not_before <= now)
                expired = (jobs.c.state == "running") & (jobs.c.lease_expires < now)
                row = c.execute(
                    select(jobs)
                    .where(due | expired)
                    .order_by(jobs.c.not_before, jobs.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                if row.state == "running":
                    # Its worker died or hung: that attempt failed.
                    reason = f"lease expired: worker {row.lease_owner} died or hung (attempt {row.attempts})"
                    log.warning("event=lease_expired job=%d study=%s owner=%s", row.id, row.study_uid, row.lease_owner)
                    if row.attempts >= row.max_attempts:
                        c.execute(
                            update(jobs)
                            .where(jobs.c.id == row.id)
                            .values(state="dead", last_error=reason, lease_token=None, updated_at=now)
                        )
                        log.error("event=job_dead job=%d study=%s reason=%r", row.id, row.study_uid, reason)
                        continue  # look for another job
                    last_error = reason
                else:
                    last_error = row.last_error
                token = secrets.token_hex(16)
                c.execute(
                    update(jobs)
                    .where(jobs.c.id == row.id)
                    .values(
                        state="running",
                        attempts=row.attempts + 1,
                        lease_owner=worker_id,
                        lease_token=token,
                        lease_expires=now + lease_s,
                        last_error=last_error,
                        updated_at=now,
                    )
                )
                job = Job(
                    id=row.id,
                    study_uid=row.study_uid,
                    revision=row.revision,
                    attempts=row.attempts + 1,
                    max_attempts=row.max_attempts,
                    lease_owner=worker_id,
                    lease_token=token,
                    lease_expires=now + lease_s,
                    payload=json.loads(row.payload or "{}"),
                    last_error=last_error,
                )
            log.info(
                "event=job_claimed job=%d study=%s revision=%d attempt=%d worker=%s",
                job.id, job.study_uid, job.revision, job.attempts, worker_id,
            )
            return job

    def _owned(self, job: Job) -> Any:
        return (jobs.c.id == job.id) & (jobs.c.state == "running") & (jobs.c.lease_token == job.lease_token)

    def renew(self, job: Job, lease_s: float | None = None) -> bool:
        """Extend the lease (heartbeat). ``False``: the lease was lost to another worker."""
        lease_s = self.lease_s if lease_s is None else lease_s
        with self.engine.begin() as c:
            now = db_now(c)
            n = c.execute(
                update(jobs).where(self._owned(job)).values(lease_expires=now + lease_s, updated_at=now)
            ).rowcount
        if n:
            job.lease_expires = now + lease_s
        return bool(n)

    def still_owned(self, job: Job) -> bool:
        """Whether ``job`` is still leased to its claimant (token matches, lease not expired)."""
        with self.engine.begin() as c:
            now = db_now(c)
            row = c.execute(select(jobs.c.lease_expires).where(self._owned(job))).first()
        return row is not None and row.lease_expires >= now

    def complete(self, job: Job, result: dict[str, Any] | None = None, *, conn: Connection | None = None) -> bool:
        """Mark done. ``False`` (and nothing changed) if the lease was lost meanwhile."""
        with self._tx(conn) as c:
            now = db_now(c)
            n = c.execute(
                update(jobs)
                .where(self._owned(job))
                .values(state="done", result=json.dumps(result or {}), lease_token=None, updated_at=now)
            ).rowcount
        if n:
            log.info("event=job_done job=%d study=%s attempt=%d", job.id, job.study_uid, job.attempts)
        else:
            log.warning("event=job_lease_lost job=%d study=%s action=complete", job.id, job.study_uid)
        return bool(n)

    def backoff_s(self, attempts: int) -> float:
        """Delay before the retry that follows failed attempt number ``attempts`` (1-based)."""
        return min(self.backoff_base_s * 2 ** max(attempts - 1, 0), self.backoff_max_s)

    def fail(self, job: Job, reason: str, *, permanent: bool = False) -> str:
        """Record a failed attempt: ``"retry"`` (re-queued after backoff), ``"dead"`` or ``"lost"``."""
        reason = reason[:2000]
        with self.engine.begin() as c:
            now = db_now(c)
            dead = permanent or job.attempts >= job.max_attempts
            values: dict[str, Any] = {"last_error": reason, "lease_token": None, "updated_at": now}
            if dead:
                values["state"] = "dead"
            else:
                values.update(state="queued", not_before=now + self.backoff_s(job.attempts))
            n = c.execute(update(jobs).where(self._owned(job)).values(**values)).rowcount
        if not n:
            log.warning("event=job_lease_lost job=%d study=%s action=fail", job.id, job.study_uid)
            return "lost"
        if dead:
            log.error("event=job_dead job=%d study=%s attempts=%d reason=%r",
                      job.id, job.study_uid, job.attempts, reason)
            return "dead"
        log.warning(
            "event=job_retry job=%d study=%s attempt=%d retry_in_s=%.1f reason=%r",
            job.id, job.study_uid, job.attempts, self.backoff_s(job.attempts), reason,
        )
        return "retry"

    def release(self, job: Job) -> bool:
        """Give a job back without counting the attempt (graceful shutdown before work began)."""
        with self.engine.begin() as c:
            now = db_now(c)
            n = c.execute(
                update(jobs)
                .where(self._owned(job))
                .values(state="queued", attempts=jobs.c.attempts - 1, lease_token=None, not_before=now, updated_at=now)
            ).rowcount
        return bool(n)

    # -- inspection -----------------------------------------------------------------------------
    @staticmethod
    def _as_dict(row: Any) -> dict[str, Any]:
        out = dict(row._mapping)
        out["payload"] = json.loads(out["payload"] or "{}")
        out["result"] = json.loads(out["result"]) if out["result"] else None
        return out

    def get(self, job_id: int) -> dict[str, Any] | None:
        """One job row as a dict (``payload``/``result`` decoded)."""
        with self.engine.connect() as c:
            row = c.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else self._as_dict(row)

    def all_jobs(self) -> list[dict[str, Any]]:
        """Every job row as :meth:`get` gives it, oldest first, in one query (the status page's read)."""
        with self.engine.connect() as c:
            return [self._as_dict(row) for row in c.execute(select(jobs).order_by(jobs.c.id))]

    def find(self, study_uid: str, revision: int | None = None) -> list[dict[str, Any]]:
        """Jobs of a study (all revisions unless given), oldest first."""
        q = select(jobs.c.id).where(jobs.c.study_uid == study_uid).order_by(jobs.c.revision, jobs.c.id)
        if revision is not None:
            q = q.where(jobs.c.revision == revision)
        with self.engine.connect() as c:
            ids = [r.id for r in c.execute(q)]
        return [j for j in (self.get(i) for i in ids) if j is not None]

    def list_jobs(self, *, state: str | None = None, study_uid: str | None = None,
                  limit: int = 50) -> list[dict[str, Any]]:
        """Jobs, newest first, optionally of one state and/or one study."""
        q = select(jobs.c.id).order_by(jobs.c.id.desc()).limit(limit)
        if state:
            q = q.where(jobs.c.state == state)
        if study_uid:
            q = q.where(jobs.c.study_uid == study_uid)
        with self.engine.connect() as c:
            ids = [r.id for r in c.execute(q)]
        return [j for j in (self.get(i) for i in ids) if j is not None]

    def counts(self) -> QueueCounts:
        """Jobs per state, and dead-letter reasons with their counts."""
        out = QueueCounts()
        with self.engine.connect() as c:
            for state, attempts, n in c.execute(
                select(jobs.c.state, jobs.c.attempts, func.count()).group_by(jobs.c.state, jobs.c.attempts)
            ):
                if state == "queued":
                    out.queued += n
                    if attempts > 0:
                        out.retrying += n
                elif state == "running":
                    out.in_flight += n
                elif state == "done":
                    out.done += n
                elif state == "dead":
                    out.dead += n
            for reason, n in c.execute(
                select(jobs.c.last_error, func.count()).where(jobs.c.state == "dead").group_by(jobs.c.last_error)
            ):
                out.dead_reasons[reason or "(no reason recorded)"] = n
        return out

    def failures(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent dead-lettered jobs: id, study, attempts, reason."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(jobs.c.id, jobs.c.study_uid, jobs.c.revision, jobs.c.attempts, jobs.c.last_error)
                .where(jobs.c.state == "dead")
                .order_by(jobs.c.updated_at.desc())
                .limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    def requeue(self, job_id: int) -> bool:
        """Put a dead job back in the queue with a fresh attempt budget (operator action)."""
        with self.engine.begin() as c:
            now = db_now(c)
            n = c.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == "dead")
                .values(state="queued", attempts=0, not_before=now, updated_at=now)
            ).rowcount
        return bool(n)
