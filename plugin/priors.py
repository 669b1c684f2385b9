"""Prior studies from the PACS by DICOM Query/Retrieve (pynetdicom SCU).

:meth:`PriorsFetcher.fetch` does, for the patient of the current study:

1. Study Root C-FIND at STUDY level by PatientID, ModalitiesInStudy CR\\DX, StudyDate up to the current
   one; keeps studies strictly earlier than the current (date+time), other than the current UID; takes
   the most recent ``max_priors``;
2. per prior, a SERIES-level C-FIND, then retrieval of its CR/DX and SR series by C-GET on the same
   association (default) or by C-MOVE to a short-lived SCP of ours (``retrieve = "move"``);
3. the prior's report is chosen among its SRs: verified reports first, then the newest
   (ContentDate/ContentTime) - so our own unverified drafts never displace a signed report.

It never raises into the worker: an unreachable, rejecting, failing or slow PACS gives an empty
:class:`PriorsResult` whose ``reason`` says why (and a warning in the log); the draft is then made
without priors. Timeouts: ``connect_timeout_s``, ``acse_timeout_s``, ``dimse_timeout_s`` per message,
``total_timeout_s`` for the whole fetch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.association import Association

from unirg.plugin.config import Peer, PriorsConfig
from unirg.plugin.receive import IMAGE_SOP_CLASSES, TRANSFER_SYNTAXES

__all__ = ["PriorStudy", "PriorsResult", "PriorsFetcher", "PriorsUnavailable", "choose_report"]

log = logging.getLogger(__name__)

IMAGE_MODALITIES = {"CR", "DX"}
SR_SOP_CLASSES = [
    sc.BasicTextSRStorage,
    sc.EnhancedSRStorage,
    sc.ComprehensiveSRStorage,
    sc.Comprehensive3DSRStorage,
    sc.ExtensibleSRStorage,
]
RETRIEVE_SOP_CLASSES = list(IMAGE_SOP_CLASSES) + SR_SOP_CLASSES


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


def _sr_rank(ds: Dataset) -> tuple[bool, bool, str]:
    verified = str(ds.get("VerificationFlag", "")).upper() == "VERIFIED"
    complete = str(ds.get("CompletionFlag", "")).upper() == "COMPLETE"
    when = f"{ds.get('ContentDate', '') or ''}{str(ds.get('ContentTime', '') or '').ljust(13, '0')}"
    return verified, complete, when


def choose_report(srs: Sequence[Dataset]) -> Dataset | None:
    """The prior's report: verified before unverified, complete before partial, then the newest."""
    return max(srs, key=_sr_rank) if srs else None


def _values(value: Any) -> set[str]:
    if value is None or value == "":
        return set()
    if isinstance(value, str):
        return {v.strip().upper() for v in value.split("\\") if v.strip()}
    return {str(v).strip().upper() for v in value}


def _when(date: str, time_: str) -> str:
    digits = "".join(ch for ch in time_ if ch.isdigit())[:6]
    return f"{date}{digits.ljust(6, '0')}"


def _store_into(event: evt.Event, bucket: list[Dataset]) -> int:
    ds = event.dataset
    ds.file_meta = event.file_meta
    bucket.append(ds)
    return 0x0000


class PriorsFetcher:
    """Fetches priors from one PACS (see the module docstring).

    Parameters
    ----------
    config : PriorsConfig
        ``pacs`` empty means no priors (every result says "no PACS configured").
    calling_ae_title : str
        Used when ``config.calling_ae_title`` is empty (normally the listener's AE title).
    """

    def __init__(self, config: PriorsConfig, calling_ae_title: str = "UNIRG") -> None:
        self.config = config
        self.peer: Peer | None = config.peer
        self.calling_ae_title = config.calling_ae_title or calling_ae_title
        self._move_lock = threading.Lock()  # one C-MOVE destination port per process

    # -- public -----------------------------------------------------------------------------------
    def fetch(self, current: Sequence[Dataset]) -> PriorsResult:
        """Priors of the patient of ``current``; never raises (see :class:`PriorsResult`)."""
        study_uid = str(current[0].get("StudyInstanceUID", "")) if current else ""
        if self.peer is None:
            return PriorsResult(reason="no PACS configured for priors ([priors] pacs)")
        if self.config.max_priors == 0:
            return PriorsResult(reason="priors disabled (max_priors = 0)")
        started = time.monotonic()
        try:
            result = self._fetch(current, started + self.config.total_timeout_s)
        except PriorsUnavailable as exc:
            result = PriorsResult(reason=str(exc))
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

    # -- internals --------------------------------------------------------------------------------
    def _ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = cfg.connect_timeout_s
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.dimse_timeout_s
        ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelFind)
        if cfg.retrieve == "get":
            ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelGet)
            # One context per (class, transfer syntax): a C-GET SCP must find a context in the stored
            # file's own syntax (Orthanc 1.10 cannot transcode in C-GET). 3 x 16 + 5 x 2 + 2 <= 128.
            for cls in IMAGE_SOP_CLASSES:
                for ts in TRANSFER_SYNTAXES:
                    ae.add_requested_context(cls, [ts])
            for cls in SR_SOP_CLASSES:
                for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                    ae.add_requested_context(cls, [ts])
        else:
            ae.add_requested_context(sc.StudyRootQueryRetrieveInformationModelMove)
        return ae

    def _associate(self, ae: AE, bucket: list[Dataset]) -> Association:
        peer = self.peer
        assert peer is not None
        kwargs: dict[str, Any] = {}
        if self.config.retrieve == "get":
            kwargs["ext_neg"] = [build_role(cls, scp_role=True) for cls in RETRIEVE_SOP_CLASSES]
            kwargs["evt_handlers"] = [(evt.EVT_C_STORE, _store_into, [bucket])]
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
        if not assoc.is_established:
            how = "rejected the association" if assoc.is_rejected else "unreachable or not answering"
            raise PriorsUnavailable(f"PACS {peer} {how}")
        return assoc

    def _find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        found: list[Dataset] = []
        for status, identifier in assoc.send_c_find(query, sc.StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PriorsUnavailable(
                    f"PACS {self.peer} sent no C-FIND response within {self.config.dimse_timeout_s:g} s")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    found.append(identifier)
            elif code != 0x0000:
                raise PriorsUnavailable(f"PACS {self.peer} C-FIND failed with status 0x{code:04X}")
        return found

    def _retrieve_series(self, assoc: Association, study_uid: str, series_uid: str,
                         bucket: list[Dataset]) -> None:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        if self.config.retrieve == "get":
            responses = assoc.send_c_get(query, sc.StudyRootQueryRetrieveInformationModelGet)
        else:
            responses = assoc.send_c_move(query, self.config.move_ae_title,
                                          sc.StudyRootQueryRetrieveInformationModelMove)
        final = None
        for status, _ in responses:
            if not status:
                raise PriorsUnavailable(f"PACS {self.peer} stopped answering during retrieval")
            final = int(status.Status)
        if final not in (0x0000, 0xB000):  # B000: some sub-operations failed; use what came
            raise PriorsUnavailable(f"PACS {self.peer} retrieval failed with status 0x{(final or 0):04X}")

    def _fetch(self, current: Sequence[Dataset], deadline: float) -> PriorsResult:
        if not current:
            raise PriorsUnavailable("no current images to take PatientID from")
        head = current[0]
        patient_id = str(head.get("PatientID", "") or "")
        if not patient_id:
            raise PriorsUnavailable("current study has no PatientID")
        cur_uid = str(head.get("StudyInstanceUID", ""))
        cur_date = str(head.get("StudyDate", "") or "")
        cur_when = _when(cur_date, str(head.get("StudyTime", "") or "")) if cur_date else ""

        bucket: list[Dataset] = []
        ae = self._ae()
        move_server = None
        lock_held = False
        try:
            if self.config.retrieve == "move":
                lock_held = self._move_lock.acquire(timeout=max(deadline - time.monotonic(), 0))
                if not lock_held:
                    raise PriorsUnavailable("another C-MOVE retrieval held the destination port too long")
                move_server = self._start_move_destination(bucket)
            assoc = self._associate(ae, bucket)
            try:
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                query.PatientID = patient_id
                query.StudyInstanceUID = ""
                query.StudyDate = f"-{cur_date}" if cur_date else ""
                query.StudyTime = ""
                query.AccessionNumber = ""
                query.ModalitiesInStudy = ["CR", "DX"]
                candidates = []
                for ident in self._find(assoc, query):
                    uid = str(ident.get("StudyInstanceUID", ""))
                    mods = _values(ident.get("ModalitiesInStudy"))
                    when = _when(str(ident.get("StudyDate", "") or ""), str(ident.get("StudyTime", "") or ""))
                    if not uid or uid == cur_uid or (mods and not mods & IMAGE_MODALITIES):
                        continue
                    if cur_when and when >= cur_when:
                        continue
                    candidates.append((when, ident))
                candidates.sort(key=lambda x: x[0], reverse=True)
                priors = PriorsResult()
                for _, ident in candidates[: self.config.max_priors]:
                    if time.monotonic() > deadline:
                        priors.reason = (f"total_timeout_s ({self.config.total_timeout_s:g} s) reached "
                                         f"after {len(priors)} prior(s)")
                        break
                    priors.append(self._one_prior(assoc, ident, bucket))
                assoc.release()
                return priors
            except BaseException:
                assoc.abort()
                raise
        finally:
            if move_server is not None:
                move_server.shutdown()
            if lock_held:
                self._move_lock.release()
            ae.shutdown()

    def _one_prior(self, assoc: Association, ident: Dataset, bucket: list[Dataset]) -> PriorStudy:
        uid = str(ident.StudyInstanceUID)
        series_q = Dataset()
        series_q.QueryRetrieveLevel = "SERIES"
        series_q.StudyInstanceUID = uid
        series_q.SeriesInstanceUID = ""
        series_q.Modality = ""
        series = [s for s in self._find(assoc, series_q)
                  if str(s.get("Modality", "")).upper() in IMAGE_MODALITIES | {"SR"}]
        bucket.clear()
        for s in series:
            self._retrieve_series(assoc, uid, str(s.SeriesInstanceUID), bucket)
        got = [ds for ds in bucket if str(ds.get("StudyInstanceUID", "")) == uid]
        images = [ds for ds in got if str(ds.get("SOPClassUID", "")) in IMAGE_SOP_CLASSES]
        srs = [ds for ds in got if str(ds.get("Modality", "")).upper() == "SR"]
        prior = PriorStudy(
            study_uid=uid,
            study_date=str(ident.get("StudyDate", "") or ""),
            study_time=str(ident.get("StudyTime", "") or ""),
            accession_number=str(ident.get("AccessionNumber", "") or ""),
            images=images,
            report=choose_report(srs),
        )
        log.info("event=prior_retrieved prior=%s images=%d reports=%d", uid, len(images), len(srs))
        return prior

    def _start_move_destination(self, bucket: list[Dataset]) -> Any:
        ae = AE(ae_title=self.config.move_ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.dimse_timeout_s
        for cls in RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(cls, TRANSFER_SYNTAXES)
        try:
            return ae.start_server(
                ("0.0.0.0", self.config.move_port), block=False,
                evt_handlers=[(evt.EVT_C_STORE, _store_into, [bucket])],
            )
        except OSError as exc:
            raise PriorsUnavailable(f"cannot open C-MOVE destination port {self.config.move_port}: {exc}") from exc
