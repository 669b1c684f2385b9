"""Pair each signed final report with unirg's draft of the same study (``unirg.model.feedback`` rows).

Who does what:

* **Intakes note, workers pair.** The listener's C-STORE sink, the Orthanc plugin's change recorder and the
  DICOMweb watcher record a report SR in the ledger like any other non-image instance (status
  ``skipped``) and, in the same breath, :func:`note_final` a row in ``unirg_feedback_pending`` (cheap: no
  parsing, no model in a C-STORE or an Orthanc thread). Workers, between jobs, take pending rows
  (:meth:`FeedbackPairer.poll`) and pair them; a worker that finishes a draft pairs its study at once
  (:meth:`FeedbackPairer.after_draft`), for a final that came before the draft was done.
* **The final**: among the study's SRs in the ledger, read through the worker's own instance source (files
  in the data dir, Orthanc's REST API or WADO-RS), the one :func:`unirg.plugin.pipeline.prior_report`
  takes as a prior's report: human only (:func:`unirg.plugin.prior_policy.is_human_report`: never our draft,
  never another AI's SR), VERIFIED before UNVERIFIED, COMPLETE before PARTIAL, then newest; its text is
  the prompt's ``Findings: ...`` / ``Impression: ...``. ``final_time`` is its ContentDate/ContentTime
  (read as UTC), else the time it was paired.
* **The draft**: the study's latest done job (highest revision) in the queue; its result names our SR
  (``sr_sop_instance_uid``, ``local_path`` of our local copy, read back with ``unirg.sr_writer.read_report``),
  the ``model_version`` (from the SR's contributing equipment; ``unirg.sr_writer.read.draft_model_version``
  for older results) and the priors the draft used.
* **Images**: the study's stored CR/DX images (frontal/lateral): the listener's files in the data dir as
  they are; Orthanc's or a DICOMweb archive's are saved under ``DATA_DIR/feedback/<study>/`` when paired,
  so the trainer's export reads local files.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from sqlalchemy import Column, Float, MetaData, String, Table, delete, select
from sqlalchemy.engine import Connection, Engine

from unirg.model import feedback as pairs
from unirg.model.prompt import format_target
from unirg.plugin.assemble import StudyLedger
from unirg.plugin.paths import path_under, safe_component
from unirg.plugin.prior_policy import is_sr
from unirg.plugin.queue import JobQueue, insert_ignore
from unirg.sr_writer.io import write_bytes_atomic
from unirg.sr_writer.read import draft_model_version

__all__ = ["Draft", "Final", "FeedbackPairer", "choose_final", "create_schema", "latest_draft",
           "note_final", "pending", "source_of_path", "IMPORT_PREFIX"]

log = logging.getLogger(__name__)

metadata = MetaData()

#: Studies whose report SR arrived and that a worker has yet to pair (or to find nothing to pair in).
pending = Table(
    "unirg_feedback_pending",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("not_before", Float, nullable=False),
)

#: ``final_sop_uid`` of a final imported as text (``unirg feedback import``): no SR exists.
IMPORT_PREFIX = "import:"
RETRY_S = 60.0


def create_schema(engine: Engine) -> None:
    """The pending table and the pairs table (safe to call from every process at start)."""
    metadata.create_all(engine, checkfirst=True)
    pairs.create_schema(engine)


def note_final(conn: Connection, study_uid: str, source: str) -> None:
    """Note (inside the caller's transaction) that a report SR of ``study_uid`` arrived by ``source``."""
    pending.create(conn, checkfirst=True)  # an intake built without open_services (tests, tools)
    conn.execute(insert_ignore(conn, pending).values(study_uid=study_uid, source=source, not_before=0.0))


def source_of_path(path: str) -> str:
    """The intake a ledger path comes from: ``orthanc``, ``dicomweb`` or ``listener`` (a file)."""
    head = path.split(":", 1)[0] if ":" in path else ""
    return head if head in ("orthanc", "dicomweb") else "listener"


# -- the draft ---------------------------------------------------------------------------------------------
def _report_text(sr: Dataset) -> str:
    from unirg.sr_writer import read_report  # the SR reader is sr_writer's business

    text = read_report(sr)
    return format_target(text.findings, text.impression)


@dataclass
class Draft:
    """The draft a final is compared with: our SR of the study's latest done job."""

    study_uid: str
    sop_uid: str
    text: str
    model_version: str
    priors: list[str] = field(default_factory=list)
    drafted_at: float | None = None


def latest_draft(queue: JobQueue, study_uid: str) -> Draft | None:
    """The study's latest done draft (highest revision), or ``None`` when none is done (or its local SR copy
    is gone)."""
    done = [j for j in queue.find(study_uid)
            if j["state"] == "done" and (j.get("result") or {}).get("sr_sop_instance_uid")]
    if not done:
        return None
    job = max(done, key=lambda j: (j["revision"], j["id"]))
    result = job["result"]
    try:
        sr = dcmread(result["local_path"])
    except (OSError, KeyError, ValueError) as exc:
        log.warning("event=feedback_draft_unreadable study=%s job=%d reason=%r", study_uid, job["id"], str(exc))
        return None
    priors = result.get("priors") or {}
    return Draft(
        study_uid=study_uid, sop_uid=str(result["sr_sop_instance_uid"]), text=_report_text(sr),
        model_version=str(result.get("model_version") or draft_model_version(sr) or "unknown"),
        priors=list(priors.get("study_uids") or []) if isinstance(priors, Mapping) else [],
        drafted_at=float(job["updated_at"]),
    )


# -- the final ---------------------------------------------------------------------------------------------
@dataclass
class Final:
    """The signed final report of a study (from an SR, or text imported from a RIS)."""

    sop_uid: str
    text: str
    final_time: float
    dataset: Dataset | None = None


def content_time(ds: Dataset) -> float | None:
    """ContentDate + ContentTime of ``ds`` as epoch seconds (read as UTC); ``None`` without a date."""
    day = "".join(ch for ch in str(ds.get("ContentDate", "") or "") if ch.isdigit())[:8]
    if len(day) != 8:
        return None
    whole, _, frac = str(ds.get("ContentTime", "") or "").partition(".")
    hms = "".join(ch for ch in whole if ch.isdigit())[:6].ljust(6, "0")
    try:
        moment = dt.datetime.strptime(day + hms, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    fraction = float("0." + "".join(ch for ch in frac if ch.isdigit())) if frac.strip() else 0.0
    return calendar.timegm(moment.timetuple()) + fraction


def choose_final(srs: Sequence[Dataset], *, now: float | None = None) -> Final | None:
    """The final report among ``srs`` by the prior-report policy (human only), or ``None``."""
    from unirg.plugin.pipeline import prior_report  # the one reader of a human report's text

    text, _source, chosen = prior_report(None, [ds for ds in srs if is_sr(ds)])
    if text is None or chosen is None:
        return None
    when = content_time(chosen)
    return Final(sop_uid=str(chosen.SOPInstanceUID), text=text,
                 final_time=when if when is not None else (time.time() if now is None else now), dataset=chosen)


# -- the pairer --------------------------------------------------------------------------------------------
class FeedbackPairer:
    """Pairs finals with drafts for one worker (see the module docstring).

    Parameters
    ----------
    queue, ledger
        The queue and the study ledger (same database; the pairs go there too).
    source
        The worker's instance source (``read(paths) -> datasets``): how SRs and images are read.
    data_dir : Path
        The data dir; images that are not files in it are saved under ``data_dir/feedback/<study>/``.
    embed, judge, embedding
        Passed to :func:`unirg.model.feedback.score_pair` (``embed=None``: the shipped MiniLM, loaded on the
        first pair; ``embedding=False``: no embedding similarity and no model loaded, ``[feedback] embedding``).
    """

    def __init__(self, queue: JobQueue, ledger: StudyLedger, source: Any, data_dir: str | Path, *,
                 embed: Any = None, judge: Any = None, embedding: bool = True) -> None:
        self.queue = queue
        self.ledger = ledger
        self.engine = ledger.engine
        self.source = source
        self.data_dir = Path(data_dir)
        self.embed = embed
        self.judge = judge
        self.embedding = embedding

    # -- entry points ----------------------------------------------------------------------------------
    def poll(self, limit: int = 10) -> int:
        """Pair up to ``limit`` noted studies; returns how many were looked at. A study whose pairing fails
        (e.g. Orthanc briefly down) is noted again for ``RETRY_S`` later."""
        now = time.time()
        with self.engine.connect() as c:
            rows = c.execute(select(pending).where(pending.c.not_before <= now)
                             .order_by(pending.c.not_before).limit(limit)).all()
        done = 0
        for row in rows:
            with self.engine.begin() as c:  # claim: whoever deletes the row pairs it
                if not c.execute(delete(pending).where(pending.c.study_uid == row.study_uid,
                                                       pending.c.not_before == row.not_before)).rowcount:
                    continue
            try:
                self.pair(row.study_uid, source=row.source)
            except Exception as exc:
                log.warning("event=feedback_pair_failed study=%s retry_in_s=%g reason=%r",
                            row.study_uid, RETRY_S, f"{type(exc).__name__}: {exc}")
                with self.engine.begin() as c:
                    c.execute(insert_ignore(c, pending).values(study_uid=row.study_uid, source=row.source,
                                                               not_before=time.time() + RETRY_S))
            done += 1
        return done

    def after_draft(self, study_uid: str) -> str:
        """A draft of ``study_uid`` is done: pair it with a final already stored (if any)."""
        with self.engine.begin() as c:
            c.execute(delete(pending).where(pending.c.study_uid == study_uid))
        return self.pair(study_uid)

    def pair(self, study_uid: str, *, source: str | None = None) -> str:
        """Pair ``study_uid`` now; returns the outcome: ``inserted``, ``replaced``, ``kept`` (an older or the
        same final), ``no draft``, ``no report`` (no SR stored) or ``no human report``."""
        rows = self.ledger.instances_of(study_uid)
        reports = [r for r in rows if r["kind"] != "image" and (
            str(r.get("modality") or "").upper() == "SR" or str(r["sop_class_uid"]).startswith(
                "1.2.840.10008.5.1.4.1.1.88."))]
        if not reports:
            return "no report"
        draft = latest_draft(self.queue, study_uid)
        if draft is None:
            log.info("event=feedback_waiting study=%s reason='no done draft yet'", study_uid)
            return "no draft"
        final = choose_final(self.source.read([r["path"] for r in reports]))
        if final is None:
            log.info("event=feedback_refused study=%s reason='no human-authored report SR (policy)'", study_uid)
            return "no human report"
        ds = final.dataset
        return pairs.record_pair(
            self.engine, study_uid=study_uid, model_version=draft.model_version, draft_sop_uid=draft.sop_uid,
            final_sop_uid=final.sop_uid, final_time=final.final_time,
            source=source or source_of_path(reports[0]["path"]), draft_text=draft.text, final_text=final.text,
            images=self.images(study_uid, rows), priors=draft.priors,
            patient_id=str(ds.get("PatientID", "") or "") or None if ds is not None else None,
            study_date=str(ds.get("StudyDate", "") or "")[:8] or None if ds is not None else None,
            drafted_at=draft.drafted_at, embed=self.embed, judge=self.judge, embedding=self.embedding)

    # -- images ----------------------------------------------------------------------------------------
    def images(self, study_uid: str, rows: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """``[{"path", "view", "sop_uid"}]`` of the study's stored frontal/lateral images (all stored images
        when none has a known view), as local files."""
        rows = self.ledger.instances_of(study_uid) if rows is None else rows
        images = [r for r in rows if r["kind"] == "image" and r["status"] == "stored"]
        viewed = [r for r in images if r.get("view") in ("frontal", "lateral")]
        out = []
        for r in viewed or images:
            path = r["path"]
            if source_of_path(path) == "listener":
                local = self.data_dir / path
            else:
                local = path_under(self.data_dir, "feedback", safe_component(study_uid),
                                   safe_component(r["sop_instance_uid"]) + ".dcm")
                if not local.is_file():
                    ds = self.source.read([path])[0]
                    buf = BytesIO()
                    ds.save_as(buf, enforce_file_format=True)
                    write_bytes_atomic(local, buf.getvalue())
            out.append({"path": str(local), "view": r.get("view"), "sop_uid": r["sop_instance_uid"]})
        return out


def import_final(queue: JobQueue, ledger: StudyLedger, data_dir: str | Path, study_uid: str, text: str, *,
                 now: float | None = None, embed: Any = None, judge: Any = None, embedding: bool = True) -> str:
    """Pair ``text`` (a final report from a RIS) with the study's draft: ``final_time`` now, source
    ``import``; images are the study's local files (the listener's); ``embedding`` as in
    :class:`FeedbackPairer`. Returns the outcome as
    :meth:`FeedbackPairer.pair` does; raises ``ValueError`` for a blank text."""
    import hashlib

    if not text.strip():
        raise ValueError("the imported report text is blank")
    draft = latest_draft(queue, study_uid)
    if draft is None:
        return "no draft"
    pairer = FeedbackPairer(queue, ledger, None, data_dir)
    rows = [r for r in ledger.instances_of(study_uid) if source_of_path(r["path"]) == "listener"]
    when = time.time() if now is None else now
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]
    return pairs.record_pair(
        ledger.engine, study_uid=study_uid, model_version=draft.model_version, draft_sop_uid=draft.sop_uid,
        final_sop_uid=IMPORT_PREFIX + digest, final_time=when, source="import", draft_text=draft.text,
        final_text=text.strip(), images=pairer.images(study_uid, rows), priors=draft.priors,
        drafted_at=draft.drafted_at, embed=embed, judge=judge, embedding=embedding, now=when)
