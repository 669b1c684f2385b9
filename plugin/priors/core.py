"""The one prior-fetching core: what a fetch returns, its deadline, the never-raise contract and its log.

A source adapter (:mod:`.dimse` C-FIND/C-GET/C-MOVE, :mod:`.orthanc` Orthanc's REST API, DICOMweb next)
subclasses :class:`PriorSource` and implements ``_fetch(current, deadline)``; the choice of studies and
of each prior's report is :mod:`unirg.plugin.prior_policy` (``rank_prior_studies``, ``choose_report``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset

from unirg.plugin.config import PriorsConfig
from unirg.plugin.prior_policy import PriorCandidate

__all__ = ["PriorSource", "PriorStudy", "PriorsResult", "PriorsUnavailable", "current_patient", "load_ranked"]

log = logging.getLogger("unirg.plugin.priors")


class PriorsUnavailable(Exception):
    """Why priors could not be had (becomes :attr:`PriorsResult.reason`)."""


@dataclass
class PriorStudy:
    """One earlier study of the patient, as retrieved."""

    study_uid: str
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    images: list[Dataset] = field(default_factory=list)
    report: Dataset | None = None

    def read_report(self) -> Any:
        """The report text via ``unirg.sr_writer.read_report`` (``None`` when there is no report SR)."""
        if self.report is None:
            return None
        from unirg.sr_writer import read_report  # the SR reader is sr_writer's business

        return read_report(self.report)


class PriorsResult(list):
    """``list[PriorStudy]``, most recent first, plus why it may be empty or incomplete.

    ``reason`` is ``None`` when the PACS answered normally (an empty list then means "no prior
    exists"), else a human-readable cause ("PACS ... unreachable", "no PACS configured", ...).
    """

    def __init__(self, studies: Sequence[PriorStudy] = (), reason: str | None = None) -> None:
        super().__init__(studies)
        self.reason = reason

    @property
    def available(self) -> bool:
        return self.reason is None

    def summary(self) -> dict[str, Any]:
        return {
            "count": len(self),
            "study_uids": [p.study_uid for p in self],
            "with_report": sum(p.report is not None for p in self),
            "reason": self.reason,
        }


def current_patient(current: Sequence[Dataset]) -> tuple[str, PriorCandidate]:
    """PatientID and the current study as a candidate; :class:`PriorsUnavailable` when there is none."""
    if not current:
        raise PriorsUnavailable("no current images to take PatientID from")
    head = current[0]
    patient_id = str(head.get("PatientID", "") or "")
    if not patient_id:
        raise PriorsUnavailable("current study has no PatientID")
    return patient_id, PriorCandidate(str(head.get("StudyInstanceUID", "")), str(head.get("StudyDate", "") or ""),
                                      str(head.get("StudyTime", "") or ""))


def load_ranked(
    ranked: Iterable[PriorCandidate],
    load: Callable[[PriorCandidate], PriorStudy | None],
    *,
    max_priors: int,
    deadline: float = float("inf"),
    timeout_s: float = 0.0,
    errors: tuple[type[Exception], ...] = (),
    label: Callable[[PriorCandidate], str] = lambda cand: f"prior {cand.study_uid}",
    problems: Sequence[str] = (),
) -> PriorsResult:
    """Load ``ranked`` candidates (most recent first) until ``max_priors`` are loaded or ``deadline``
    (``time.monotonic()``) passes. ``load`` returns ``None`` for a candidate that is no prior chest
    radiograph; one whose load raises one of ``errors`` is noted and skipped. The notes, after the given
    ``problems`` (e.g. a failed C-FIND), make the result's ``reason``."""
    notes = list(problems)
    priors = PriorsResult()
    for cand in ranked:
        if len(priors) >= max_priors:
            break
        if time.monotonic() > deadline:
            notes.append(f"total_timeout_s ({timeout_s:g} s) reached after {len(priors)} prior(s)")
            break
        try:
            prior = load(cand)
        except errors as exc:
            notes.append(f"{label(cand)}: {exc}")
            continue
        if prior is not None:
            priors.append(prior)
    if notes:
        priors.reason = "; ".join(notes)
    return priors


class PriorSource:
    """Base of every prior-fetching adapter: ``fetch(current) -> PriorsResult`` never raises.

    Subclasses set ``config`` and implement :meth:`_fetch`; they may override :meth:`unavailable`
    (a reason not to try at all) and :meth:`explain` (a reason for an error of their transport).
    """

    config: PriorsConfig

    def unavailable(self) -> str | None:
        return None

    def explain(self, exc: Exception) -> str | None:
        return None

    def _fetch(self, current: Sequence[Dataset], deadline: float) -> PriorsResult:
        raise NotImplementedError

    def fetch(self, current: Sequence[Dataset]) -> PriorsResult:
        """Priors of the patient of ``current``; never raises (see :class:`PriorsResult`)."""
        study_uid = str(current[0].get("StudyInstanceUID", "")) if current else ""
        reason = self.unavailable()
        if reason:
            return PriorsResult(reason=reason)
        if self.config.max_priors == 0:
            return PriorsResult(reason="priors disabled (max_priors = 0)")
        started = time.monotonic()
        try:
            result = self._fetch(current, started + self.config.total_timeout_s)
        except PriorsUnavailable as exc:
            result = PriorsResult(reason=str(exc))
        except Exception as exc:  # never into the worker
            known = self.explain(exc)
            if known is None:
                log.exception("event=priors_error study=%s", study_uid)
            result = PriorsResult(reason=known or f"priors failed: {type(exc).__name__}: {exc}")
        took = time.monotonic() - started
        if result.reason:
            log.warning("event=priors_unavailable study=%s found=%d reason=%r seconds=%.2f",
                        study_uid, len(result), result.reason, took)
        else:
            log.info("event=priors_found study=%s count=%d priors=%s seconds=%.2f",
                     study_uid, len(result), ",".join(p.study_uid for p in result), took)
        return result
