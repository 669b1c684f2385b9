"""The worker loop: claim a job, load the study, fetch priors, run the pipeline, store the SR, mark done.

The pipeline is injected: ``process_study(current: list[Dataset], priors: PriorsResult) -> Dataset``
(``PriorsResult`` is a ``list[PriorStudy]`` with a ``reason`` when priors could not be had). The lead
wires view selection + model + ``unirg.sr_writer.build_draft_sr`` into it; the worker knows nothing of
models.

Failure handling, all through the queue (:mod:`unirg.plugin.queue`):

* a store failure, an unreadable file or any unexpected exception -> ``fail`` -> retry with backoff,
  dead-letter after ``max_attempts``;
* :class:`PermanentJobError` or a ``ValueError`` from the pipeline (e.g. sr_writer's ``SRInputError``)
  -> dead-letter at once: the same input would fail the same way;
* an SR from the pipeline that lacks a research label (``unirg.sr_writer.check_research_labels``) is
  refused before anything is stored: logged ``event=sr_refused``, dead-lettered with the missing labels;
* a worker killed at any point -> its lease expires -> another worker (or the restarted one) claims the
  job again. Storing twice is harmless: SR UIDs are deterministic (from the study UID and model
  version, plus the revision for re-runs), so the PACS keeps one instance.

While the pipeline runs, a heartbeat thread renews the lease every ``lease_s / 3``.
Logs carry job IDs and UIDs, never patient names or IDs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence as DicomSequence

from unirg.plugin.assemble import StudyLedger
from unirg.plugin.priors.core import PriorSource, PriorsResult
from unirg.plugin.queue import Job, JobQueue
from unirg.plugin.store import SRStore, StoreFailed
from unirg.plugin.paths import UnsafePath
from unirg.sr_writer.labels import ResearchLabelMissing, check_research_labels
from unirg.sr_writer.read import draft_model_version

__all__ = [
    "ProcessStudy", "PermanentJobError", "InstanceSource", "DataDirSource", "Worker", "revise_sr",
    "deterministic_uid", "default_worker_id",
]

log = logging.getLogger(__name__)

ProcessStudy = Callable[[list[Dataset], PriorsResult], Dataset]


class PermanentJobError(Exception):
    """Raise from a pipeline when retrying cannot help; the job is dead-lettered with the message."""


class InstanceSource(Protocol):
    """Where the worker reads a study's images from: the ledger's ``path`` of each image in, datasets out.

    Raise on any failure; the job is then retried with backoff.
    """

    def read(self, paths: Sequence[str]) -> list[Dataset]: ...


class DataDirSource:
    """The listener's images: files under its data dir (the ledger's paths are relative to it)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)

    def read(self, paths: Sequence[str]) -> list[Dataset]:
        return [dcmread(self.data_dir / p) for p in paths]


def default_worker_id(suffix: str | int | None = None) -> str:
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if suffix is None else f"{base}:{suffix}"


def deterministic_uid(*parts: str) -> str:
    """A UID (``2.25.<128-bit integer>``) derived from ``parts`` by SHA-256: same parts, same UID."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def revise_sr(sr: Dataset, revision: int, predecessor: dict[str, str] | None = None) -> Dataset:
    """Give the SR of re-run ``revision`` (> 0) its own deterministic series and instance UIDs.

    ``predecessor`` (keys study_uid, series_uid, sop_class_uid, sop_instance_uid) is referenced in
    PredecessorDocumentsSequence, which marks the new SR as a new version of that one.
    """
    if revision <= 0:
        return sr
    sr.SOPInstanceUID = deterministic_uid(str(sr.SOPInstanceUID), f"revision={revision}")
    sr.SeriesInstanceUID = deterministic_uid(str(sr.SeriesInstanceUID), f"revision={revision}")
    if getattr(sr, "file_meta", None) is not None:
        sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    if predecessor:
        sop = Dataset()
        sop.ReferencedSOPClassUID = predecessor["sop_class_uid"]
        sop.ReferencedSOPInstanceUID = predecessor["sop_instance_uid"]
        series = Dataset()
        series.SeriesInstanceUID = predecessor["series_uid"]
        series.ReferencedSOPSequence = DicomSequence([sop])
        item = Dataset()
        item.StudyInstanceUID = predecessor["study_uid"]
        item.ReferencedSeriesSequence = DicomSequence([series])
        sr.PredecessorDocumentsSequence = DicomSequence([item])
    return sr


class Worker:
    """One worker loop (run several, in threads or processes, against the same queue).

    Parameters
    ----------
    queue, ledger
        The job queue and the study ledger (same database).
    process_study : ProcessStudy
        The pipeline.
    store : SRStore
        Local copy + write-back (anything with ``store(sr) -> StoreOutcome`` raising ``StoreFailed``,
        e.g. ``unirg.plugin.orthanc.source.OrthancSRStore``).
    data_dir : Path
        The listener's data dir as mounted here; the ledger's instance paths are relative to it.
    priors : PriorSource | None
        ``None``: no priors (each result says so). Anything with ``fetch(current) -> PriorsResult``.
    source : InstanceSource | None
        Where images are read from; ``None``: files under ``data_dir`` (:class:`DataDirSource`).
    worker_id : str
        Name in leases and logs.
    poll_interval_s : float
        Sleep when the queue is empty.
    max_job_s : float
        Stop renewing the lease of a job running longer than this (see ``[worker] max_job_s``).
    viewer_link : callable, optional
        ``(study_uid, sr_series_uid) -> URL`` of the draft in the viewer (``[viewer] url``), logged with
        ``event=sr_written`` (without the prior: which one the draft compared with is in the SR).
    """

    def __init__(
        self,
        queue: JobQueue,
        ledger: StudyLedger,
        process_study: ProcessStudy,
        store: SRStore,
        data_dir: str | Path,
        priors: PriorSource | None = None,
        *,
        source: InstanceSource | None = None,
        worker_id: str | None = None,
        poll_interval_s: float = 0.5,
        max_job_s: float = 3600.0,
        viewer_link: Callable[[str, str], str | None] | None = None,
    ) -> None:
        self.queue = queue
        self.ledger = ledger
        self.process_study = process_study
        self.store = store
        self.data_dir = Path(data_dir)
        self.priors = priors
        self.source = source if source is not None else DataDirSource(self.data_dir)
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval_s = poll_interval_s
        self.max_job_s = max_job_s
        self.viewer_link = viewer_link
        #: Set it to end an idle wait at once (the in-process assembler does when it enqueues a job).
        self.wakeup = threading.Event()
        #: ``unirg.plugin.feedback.capture.FeedbackPairer`` (set by the service): pairs signed finals with
        #: drafts between jobs (``poll``) and right after a draft (``after_draft``). ``None``: no pairing.
        self.feedback: Any = None

    # -- loop ---------------------------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim and process one job; ``False`` when the queue had nothing due."""
        job = self.queue.claim(self.worker_id)
        if job is None:
            return False
        self.process(job)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        """Process jobs until ``stop`` is set (the current job is finished first)."""
        log.info("event=worker_started worker=%s", self.worker_id)
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # e.g. database briefly unavailable: keep the loop alive
                log.exception("event=worker_loop_error worker=%s", self.worker_id)
                busy = False
            if not busy and not stop.is_set() and self.feedback is not None:
                try:  # finals noted by the intake; never in the way of a draft
                    busy = self.feedback.poll() > 0
                except Exception:
                    log.exception("event=feedback_poll_error worker=%s", self.worker_id)
            if not busy and not stop.is_set():
                self.wakeup.wait(self.poll_interval_s)
                self.wakeup.clear()
        log.info("event=worker_stopped worker=%s", self.worker_id)

    # -- one job ------------------------------------------------------------------------------
    @contextmanager
    def _heartbeat(self, job: Job) -> Iterator[threading.Event]:
        lost = threading.Event()
        done = threading.Event()
        interval = max(self.queue.lease_s / 3, 0.05)

        started = time.monotonic()

        def beat() -> None:
            while not done.wait(interval):
                if time.monotonic() - started > self.max_job_s:
                    log.error("event=job_overrun job=%d study=%s max_job_s=%g note='lease left to expire'",
                              job.id, job.study_uid, self.max_job_s)
                    lost.set()
                    return
                try:
                    if not self.queue.renew(job):
                        lost.set()
                        return
                except Exception:
                    log.exception("event=heartbeat_error job=%d", job.id)

        t = threading.Thread(target=beat, name=f"unirg-heartbeat-{job.id}", daemon=True)
        t.start()
        try:
            yield lost
        finally:
            done.set()
            t.join(timeout=5)

    def _predecessor(self, job: Job) -> dict[str, str] | None:
        for prev in self.queue.find(job.study_uid, job.revision - 1):
            res = prev.get("result") or {}
            if prev["state"] == "done" and res.get("sr_sop_instance_uid"):
                return {
                    "study_uid": job.study_uid,
                    "series_uid": res["sr_series_uid"],
                    "sop_class_uid": res["sr_sop_class_uid"],
                    "sop_instance_uid": res["sr_sop_instance_uid"],
                }
        return None

    def _fail(self, job: Job, reason: str, permanent: bool = False) -> None:
        outcome = self.queue.fail(job, reason, permanent=permanent)
        if outcome == "dead":
            self.ledger.mark(job.study_uid, job.revision, "failed", reason)

    def process(self, job: Job) -> dict[str, Any] | None:
        """Do one claimed job; returns its result when done (``None`` when it failed or was lost)."""
        t0 = time.monotonic()
        log.info("event=job_start job=%d study=%s revision=%d attempt=%d worker=%s",
                 job.id, job.study_uid, job.revision, job.attempts, self.worker_id)
        with self._heartbeat(job) as lease_lost:
            try:
                paths = self.ledger.image_paths(job.study_uid)
                if not paths:
                    self._fail(job, "no stored CR/DX image for this study", permanent=True)
                    return None
                try:
                    current = self.source.read(paths)
                except Exception as exc:
                    self._fail(job, f"cannot read a stored instance: {type(exc).__name__}: {exc}")
                    return None
                priors = self.priors.fetch(current) if self.priors else PriorsResult(
                    reason="no PACS configured for priors ([priors] pacs)")
                if priors.reason:
                    log.warning("event=draft_without_priors job=%d study=%s reason=%r",
                                job.id, job.study_uid, priors.reason)
                t_model = time.monotonic()
                try:
                    sr = self.process_study(current, priors)
                except (PermanentJobError, ValueError) as exc:
                    self._fail(job, f"pipeline rejected the study: {type(exc).__name__}: {exc}", permanent=True)
                    return None
                model_s = time.monotonic() - t_model
                sr = revise_sr(sr, job.revision, self._predecessor(job) if job.revision else None)
                try:  # the door: nothing unlabelled is stored anywhere, the local copy included
                    check_research_labels(sr)
                except ResearchLabelMissing as exc:
                    log.error("event=sr_refused job=%d study=%s sr=%s reason=%r", job.id, job.study_uid,
                              exc.sop_instance_uid, "; ".join(exc.missing))
                    self._fail(job, f"pipeline output refused: {exc}", permanent=True)
                    return None
                if lease_lost.is_set() or not self.queue.still_owned(job):
                    log.warning("event=job_lease_lost job=%d study=%s note='another worker owns it now'",
                                job.id, job.study_uid)
                    return None
                outcome = self.store.store(sr)
            except ResearchLabelMissing as exc:  # a store's own door (already logged there)
                self._fail(job, f"pipeline output refused: {exc}", permanent=True)
                return None
            except UnsafePath as exc:  # a UID that is no UID would make a path outside our dirs: no retry
                log.error("event=unsafe_path job=%d study=%r reason=%r", job.id, job.study_uid, str(exc))
                self._fail(job, f"refused: {exc}", permanent=True)
                return None
            except StoreFailed as exc:  # already logged per destination; the queue retries with backoff
                self._fail(job, f"write-back failed: {exc}")
                return None
            except Exception as exc:
                log.exception("event=job_error job=%d study=%s", job.id, job.study_uid)
                self._fail(job, f"{type(exc).__name__}: {exc}")
                return None
        result = {
            "sr_sop_instance_uid": str(sr.SOPInstanceUID),
            "sr_series_uid": str(sr.SeriesInstanceUID),
            "sr_sop_class_uid": str(sr.SOPClassUID),
            "model_version": draft_model_version(sr),
            "local_path": str(outcome.local_path),
            "delivered": outcome.delivered,
            "images": len(current),
            "priors": priors.summary(),
            "pipeline_s": round(model_s, 3),
            "total_s": round(time.monotonic() - t0, 3),
        }
        with self.queue.transaction() as c:
            if self.queue.complete(job, result, conn=c):
                self.ledger.mark(job.study_uid, job.revision, "done", conn=c)
        link = self.viewer_link(job.study_uid, str(sr.SeriesInstanceUID)) if self.viewer_link else None
        log.info("event=sr_written job=%d study=%s revision=%d sr=%s priors=%d priors_reason=%r delivered=%s%s",
                 job.id, job.study_uid, job.revision, sr.SOPInstanceUID, len(priors), priors.reason,
                 ",".join(outcome.delivered) or "-", f" viewer={link}" if link else "")
        if self.feedback is not None:
            try:  # a final that arrived before this draft was done
                self.feedback.after_draft(job.study_uid)
            except Exception:
                log.exception("event=feedback_pair_error job=%d study=%s", job.id, job.study_uid)
        return result
