"""Watch a DICOMweb archive by QIDO-RS and feed ready chest CR/DX studies into the durable queue.

Each poll (:meth:`DicomWebWatcher.poll_once`):

1. QIDO-RS studies with ModalitiesInStudy CR, then DX, and StudyDate on or after the watermark;
2. a study whose instance count changed is looked at by series (QIDO-RS): when its CR/DX instance count
   changed, the headers of those series (WADO-RS metadata) are recorded in the ledger, with paths
   ``dicomweb:<study>/<series>/<sop>`` (:func:`dicomweb_path`), and the assembler checks it: ready at
   once when the expected views are in;
3. a study whose CR/DX count has not changed for ``stable_age_s`` is checked as stable (drafted with
   what it has).

The seen set (per study: counts, when the CR/DX count last changed, watching/handed) and the watermark
live in the queue database (tables ``unirg_dicomweb_seen``, ``unirg_dicomweb_state``), so a restart
loses nothing and re-records nothing twice (recording is idempotent anyway). The watermark starts at
``since`` (default today) and only moves forward, never past yesterday nor past a study still being
watched. Our own SR, stored into the study, changes the study's count but not its CR/DX count.

:meth:`run` polls every ``poll_s``; while the archive is down it backs off (doubling, at most 5
minutes); refused credentials back off to the longest delay at once and are logged as an error.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, select

from unirg.plugin.assemble import Assembler, StudyLedger, classify_instance
from unirg.plugin.dicomweb.client import (
    DicomWeb,
    DicomWebAuthError,
    DicomWebError,
    DicomWebUnavailable,
    qido_value,
)
from unirg.plugin.feedback.dicomweb import record_reports
from unirg.plugin.paths import UnsafePath, safe_component
from unirg.plugin.prior_policy import IMAGE_MODALITIES
from unirg.plugin.queue import db_now, upsert

__all__ = ["DicomWebWatcher", "PollStats", "dicomweb_path", "parse_dicomweb_path", "create_schema", "MAX_BACKOFF_S"]

log = logging.getLogger(__name__)

PATH_PREFIX = "dicomweb:"
MAX_BACKOFF_S = 300.0

metadata = MetaData()

seen = Table(
    "unirg_dicomweb_seen",
    metadata,
    Column("archive", String(300), primary_key=True),
    Column("study_uid", String(64), primary_key=True),
    Column("study_date", String(8), nullable=False, default=""),
    Column("total", Integer, nullable=False, default=-1),  # NumberOfStudyRelatedInstances
    Column("images", Integer, nullable=False, default=0),  # CR/DX instances
    Column("changed_at", Float, nullable=False),  # when ``images`` last changed
    Column("state", String(16), nullable=False, default="watching"),  # watching, handed
    Column("updated_at", Float, nullable=False),
)

state = Table(
    "unirg_dicomweb_state",
    metadata,
    Column("archive", String(300), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def create_schema(engine: Any) -> None:
    metadata.create_all(engine, checkfirst=True)


def dicomweb_path(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The ledger path of an archive's instance.

    >>> dicomweb_path("1.2", "1.2.3", "1.2.3.4")
    'dicomweb:1.2/1.2.3/1.2.3.4'
    """
    return PATH_PREFIX + "/".join(safe_component(u) for u in (study_uid, series_uid, sop_uid))


def parse_dicomweb_path(path: str) -> tuple[str, str, str]:
    """(study, series, sop) of a :func:`dicomweb_path`; ``ValueError`` for anything else."""
    if not path.startswith(PATH_PREFIX):
        raise ValueError(f"not a DICOMweb instance path (expected {PATH_PREFIX}<study>/<series>/<sop>): {path!r}")
    parts = path[len(PATH_PREFIX):].split("/")
    if len(parts) != 3:
        raise ValueError(f"not a DICOMweb instance path: {path!r}")
    study, series, sop = (safe_component(p) for p in parts)
    return study, series, sop


def _int(text: str, default: int = -1) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


@dataclass
class PollStats:
    polls: int = 0
    studies_seen: int = 0
    instances_recorded: int = 0
    handed: int = 0
    errors: int = 0
    last_error: str = ""


class DicomWebWatcher:
    """Polls one archive into the ledger/queue (see the module docstring).

    Parameters
    ----------
    client : DicomWeb
    ledger, assembler
        The listener's study ledger and assembler on the queue database.
    since : str
        YYYYMMDD; the first watermark (empty: today). Used only when the database has none yet.
    poll_s, stable_age_s : float
    """

    def __init__(self, client: DicomWeb, ledger: StudyLedger, assembler: Assembler, *, since: str = "",
                 poll_s: float = 30.0, stable_age_s: float = 60.0) -> None:
        self.client = client
        self.ledger = ledger
        self.assembler = assembler
        self.engine = ledger.engine
        self.archive = client.url
        self.since = since
        self.poll_s = poll_s
        self.stable_age_s = stable_age_s
        self.stats = PollStats()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        create_schema(self.engine)

    # -- persisted state --------------------------------------------------------------------------
    def _get(self, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(state.c.value).where(state.c.archive == self.archive,
                                                         state.c.key == key)).scalar()

    def _put(self, key: str, value: str) -> None:
        with self.engine.begin() as c:
            now = db_now(c)
            upsert(c, state, {"archive": self.archive, "key": key}, {"value": value, "updated_at": now})

    def watermark(self) -> str:
        """The StudyDate (YYYYMMDD) polls start from: ``since`` (or today) on first use, or when ``since`` is
        earlier than the stored one."""
        value = self._get("watermark")
        if value is None or (self.since and self.since < value):  # an earlier --since re-scans from there
            value = self.since or dt.date.today().strftime("%Y%m%d")
            self._put("watermark", value)
        return value

    def seen_rows(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(select(seen).where(seen.c.archive == self.archive))
            return {r.study_uid: dict(r._mapping) for r in rows}

    def _save_seen(self, study_uid: str, **values: Any) -> None:
        with self.engine.begin() as c:
            now = db_now(c)
            upsert(c, seen, {"archive": self.archive, "study_uid": study_uid}, {"updated_at": now, **values},
                   on_insert={"changed_at": now, "state": "watching"})

    # -- one poll ---------------------------------------------------------------------------------
    def _studies(self, since: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for modality in sorted(IMAGE_MODALITIES):
            for item in self.client.search_studies(
                    {"ModalitiesInStudy": modality, "StudyDate": f"{since}-"},
                    fields=("NumberOfStudyRelatedInstances", "ModalitiesInStudy", "StudyDate")):
                uid = qido_value(item, "StudyInstanceUID")
                try:
                    safe_component(uid, "StudyInstanceUID")
                except UnsafePath as exc:
                    log.warning("event=dicomweb_bad_study archive=%s reason=%r", self.archive, str(exc))
                    continue
                date = qido_value(item, "StudyDate")
                out[uid] = {"date": date if len(date) == 8 and date.isdigit() else "",
                            "total": _int(qido_value(item, "NumberOfStudyRelatedInstances"))}
        return out

    def _image_series(self, study_uid: str) -> list[tuple[str, int]]:
        out = []
        for item in self.client.search_series(study_uid, fields=("NumberOfSeriesRelatedInstances",)):
            if qido_value(item, "Modality").upper() not in IMAGE_MODALITIES:
                continue
            uid = qido_value(item, "SeriesInstanceUID")
            try:
                safe_component(uid, "SeriesInstanceUID")
            except UnsafePath:
                continue
            out.append((uid, _int(qido_value(item, "NumberOfSeriesRelatedInstances"), 0)))
        return out

    def _record(self, study_uid: str, series: list[tuple[str, int]]) -> int:
        recorded = 0
        for series_uid, _ in series:
            headers = self.client.series_metadata(study_uid, series_uid)
            with self.engine.begin() as c:  # one transaction per series
                for ds in headers:
                    try:
                        info = classify_instance(ds)
                        if info.study_uid != study_uid or info.series_uid != series_uid:
                            raise ValueError("instance of another study or series")
                        path = dicomweb_path(study_uid, series_uid, info.sop_instance_uid)
                    except ValueError as exc:  # UnsafePath included
                        log.warning("event=dicomweb_bad_instance study=%s series=%s reason=%r",
                                    study_uid, series_uid, str(exc))
                        continue
                    self.ledger.record_instance(info, path, "DICOMWEB", conn=c)
                    recorded += 1
        self.stats.instances_recorded += recorded
        return recorded

    def poll_once(self) -> int:
        """One poll; returns how many studies were handed to the queue (ready or skipped) by it."""
        since = self.watermark()
        found = self._studies(since)
        known = self.seen_rows()
        handed = 0
        now = time.time()
        for uid, study in found.items():
            row = known.get(uid)
            if row is not None and row["state"] == "handed" and row["total"] == study["total"]:
                continue
            if row is None or row["total"] != study["total"]:
                series = self._image_series(uid)
                images = sum(n for _, n in series)
                if row is None or images != row["images"]:
                    self._record(uid, series)
                    self._save_seen(uid, study_date=study["date"], total=study["total"], images=images,
                                    changed_at=now, state="watching")
                    verdict = self.assembler.check(uid)
                else:  # another kind of series came (e.g. the signed report): the feedback loop's
                    record_reports(self.client, self.ledger, uid)
                    self._save_seen(uid, total=study["total"])
                    continue
            else:
                stable = now - row["changed_at"] >= self.stable_age_s
                verdict = self.assembler.check(uid, stable=stable)
            if verdict.state in ("ready", "skip") or (self.ledger.study(uid) or {}).get("state") != "collecting":
                self._save_seen(uid, state="handed", total=study["total"])
                handed += verdict.state in ("ready", "skip")
        self._advance_watermark(since)
        self.stats.polls += 1
        self.stats.studies_seen = len(found)
        self.stats.handed += handed
        return handed

    def _advance_watermark(self, since: str) -> None:
        yesterday = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d")
        watching = [r["study_date"] for r in self.seen_rows().values()
                    if r["state"] == "watching" and r["study_date"]]
        target = min([yesterday, *watching])
        if target > since:
            self._put("watermark", target)
            log.info("event=dicomweb_watermark archive=%s from=%s to=%s", self.archive, since, target)

    # -- loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        delay = self.poll_s
        log.info("event=dicomweb_watch_started archive=%s watermark=%s poll_s=%g stable_age_s=%g",
                 self.archive, self.watermark(), self.poll_s, self.stable_age_s)
        while not stop.is_set():
            try:
                self.poll_once()
                delay = self.poll_s
            except DicomWebAuthError as exc:
                self._note_error(exc)
                log.error("event=dicomweb_auth_refused archive=%s retry_in_s=%g reason=%r",
                          self.archive, MAX_BACKOFF_S, str(exc))
                delay = MAX_BACKOFF_S
            except DicomWebUnavailable as exc:
                self._note_error(exc)
                delay = min(max(delay, self.poll_s) * 2, MAX_BACKOFF_S)
                log.warning("event=dicomweb_unavailable archive=%s retry_in_s=%g reason=%r",
                            self.archive, delay, str(exc))
            except DicomWebError as exc:  # a bad answer: try again next poll
                self._note_error(exc)
                log.warning("event=dicomweb_poll_failed archive=%s reason=%r", self.archive, str(exc))
                delay = self.poll_s
            except Exception as exc:  # e.g. the database briefly unavailable: keep watching
                self._note_error(exc)
                log.exception("event=dicomweb_poll_error archive=%s", self.archive)
                delay = self.poll_s
            stop.wait(delay)
        log.info("event=dicomweb_watch_stopped archive=%s", self.archive)

    def _note_error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)

    def start(self) -> "DicomWebWatcher":
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(self._stop,), name="unirg-dicomweb-watch",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
