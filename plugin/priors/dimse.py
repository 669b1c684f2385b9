"""The DIMSE prior adapter: prior studies from the PACS by DICOM Query/Retrieve (pynetdicom SCU).

:meth:`PriorsFetcher.fetch` does, for the patient of the current study:

1. Study Root C-FIND at STUDY level by PatientID, ModalitiesInStudy CR\\DX, StudyDate from ``max_age``
   before the current one up to it; the studies to use are chosen by
   :func:`unirg.plugin.prior_policy.rank_prior_studies` (the most recent ``max_priors`` strictly earlier
   CR/DX studies within ``max_age``);
2. per prior, a SERIES-level C-FIND, then retrieval of its CR/DX and SR series by C-GET on the same
   association (default) or by C-MOVE to a short-lived SCP of ours (``retrieve = "move"``). With
   ``skip_local`` (default) an image series the listener already holds (``local``, e.g. :class:`LocalPriors`)
   is read from disk instead; SR series are always asked for (a report may have been signed since);
3. the prior's report is :func:`unirg.plugin.prior_policy.choose_report` of its SRs: a human report only
   (never ours, never a device-observed or AI-labelled SR), verified first, complete first, then newest.

It never raises into the worker (:class:`unirg.plugin.priors.core.PriorSource`): an unreachable, rejecting, failing or slow PACS gives an empty
:class:`PriorsResult` whose ``reason`` says why (and a warning in the log); the draft is then made
without priors. Timeouts: ``connect_timeout_s``, ``acse_timeout_s``, ``dimse_timeout_s`` per message,
``total_timeout_s`` for the whole fetch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sc
from pynetdicom.association import Association

from unirg.plugin.config import Peer, PriorsConfig
from unirg.plugin.prior_policy import (
    IMAGE_MODALITIES,
    PriorCandidate,
    choose_report,
    modalities,
    rank_prior_studies,
    study_date_range,
)
from unirg.plugin.priors.core import (
    PriorSource,
    PriorStudy,
    PriorsResult,
    PriorsUnavailable,
    current_patient,
    load_ranked,
)
from unirg.plugin.receive import IMAGE_SOP_CLASSES, TRANSFER_SYNTAXES

__all__ = ["LocalPriors", "PriorsFetcher"]

log = logging.getLogger(__name__)

SR_SOP_CLASSES = [
    sc.BasicTextSRStorage,
    sc.EnhancedSRStorage,
    sc.ComprehensiveSRStorage,
    sc.Comprehensive3DSRStorage,
    sc.ExtensibleSRStorage,
]
RETRIEVE_SOP_CLASSES = list(IMAGE_SOP_CLASSES) + SR_SOP_CLASSES


class LocalPriors:
    """The listener's copy of a study: ``study_uid -> [image datasets]`` from its ledger and data dir
    (empty when it holds none or a file cannot be read; never raises)."""

    def __init__(self, ledger: Any, data_dir: str | Path) -> None:
        self.ledger = ledger
        self.data_dir = Path(data_dir)

    def __call__(self, study_uid: str) -> list[Dataset]:
        try:
            return [dcmread(self.data_dir / p) for p in self.ledger.image_paths(study_uid)]
        except Exception as exc:
            log.warning("event=local_prior_unreadable prior=%s reason=%r; retrieving it", study_uid, str(exc))
            return []


def _store_into(event: evt.Event, bucket: list[Dataset]) -> int:
    ds = event.dataset
    ds.file_meta = event.file_meta
    bucket.append(ds)
    return 0x0000


class PriorsFetcher(PriorSource):
    """Fetches priors from one PACS (see the module docstring).

    Parameters
    ----------
    config : PriorsConfig
        ``pacs`` empty means no priors (every result says "no PACS configured").
    calling_ae_title : str
        Used when ``config.calling_ae_title`` is empty (normally the listener's AE title).
    local : callable, optional
        ``study_uid -> [image datasets]`` already held here (:class:`LocalPriors`); with
        ``config.skip_local`` their series are not retrieved again.
    """

    def __init__(self, config: PriorsConfig, calling_ae_title: str = "UNIRG",
                 local: Callable[[str], list[Dataset]] | None = None) -> None:
        self.config = config
        self.local = local
        self.peer: Peer | None = config.peer
        self.calling_ae_title = config.calling_ae_title or calling_ae_title
        self._move_lock = threading.Lock()  # one C-MOVE destination port per process

    def unavailable(self) -> str | None:
        return None if self.peer is not None else "no PACS configured for priors ([priors] pacs)"

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
            self._moving = (study_uid, series_uid)  # what our C-MOVE destination accepts (_store_moved)
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
        patient_id, current_study = current_patient(current)

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
                query.StudyDate = study_date_range(current_study.study_date, self.config.max_age)
                query.StudyTime = ""
                query.AccessionNumber = ""
                query.ModalitiesInStudy = ["CR", "DX"]
                candidates = [
                    PriorCandidate(str(ident.get("StudyInstanceUID", "") or ""), str(ident.get("StudyDate", "") or ""),
                                   str(ident.get("StudyTime", "") or ""), modalities(ident.get("ModalitiesInStudy")),
                                   ident)
                    for ident in self._find(assoc, query)
                ]
                chosen = rank_prior_studies(candidates, current_study, self.config.max_priors, self.config.max_age)
                priors = load_ranked(chosen, lambda cand: self._one_prior(assoc, cand.data, bucket),
                                     max_priors=self.config.max_priors, deadline=deadline,
                                     timeout_s=self.config.total_timeout_s)
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
        held = self.local(uid) if (self.local is not None and self.config.skip_local) else []
        held_series = {str(ds.get("SeriesInstanceUID", "")) for ds in held}
        bucket.clear()
        skipped = 0
        for s in series:
            if str(s.get("Modality", "")).upper() != "SR" and str(s.SeriesInstanceUID) in held_series:
                skipped += 1  # held here already: read from disk, not retrieved again
                continue
            self._retrieve_series(assoc, uid, str(s.SeriesInstanceUID), bucket)
        got = [ds for ds in bucket if str(ds.get("StudyInstanceUID", "")) == uid]
        images = [ds for ds in held if str(ds.get("StudyInstanceUID", "")) == uid]
        images += [ds for ds in got if str(ds.get("SOPClassUID", "")) in IMAGE_SOP_CLASSES]
        srs = [ds for ds in got if str(ds.get("Modality", "")).upper() == "SR"]
        prior = PriorStudy(
            study_uid=uid,
            study_date=str(ident.get("StudyDate", "") or ""),
            study_time=str(ident.get("StudyTime", "") or ""),
            accession_number=str(ident.get("AccessionNumber", "") or ""),
            images=images,
            report=choose_report(srs),
        )
        log.info("event=prior_retrieved prior=%s images=%d local_series=%d srs=%d report=%s", uid, len(images),
                 skipped, len(srs), prior.report.SOPInstanceUID if prior.report is not None else None)
        return prior

    def _start_move_destination(self, bucket: list[Dataset]) -> Any:
        """Our C-MOVE destination SCP, on ``move_bind_address`` only, for the PACS's AE title only;
        it keeps only instances of the series being moved (:meth:`_store_moved`)."""
        assert self.peer is not None
        ae = AE(ae_title=self.config.move_ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.dimse_timeout_s
        ae.require_calling_aet = [self.peer.ae_title]  # any other calling AE: association rejected
        for cls in RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(cls, TRANSFER_SYNTAXES)
        address = (self.config.move_bind_address, self.config.move_port)
        try:
            return ae.start_server(
                address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._store_moved, [bucket])],
            )
        except OSError as exc:
            raise PriorsUnavailable(f"cannot open C-MOVE destination {address[0]}:{address[1]}: {exc}") from exc

    def _store_moved(self, event: evt.Event, bucket: list[Dataset]) -> int:
        """C-STORE on the C-MOVE destination: only an instance of the (study, series) being moved
        (``self._moving``) is kept; anything else is refused (0x0124 Not Authorised) and logged."""
        ds = event.dataset
        got = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
        wanted = getattr(self, "_moving", None)
        originator = str(getattr(event.request, "MoveOriginatorApplicationEntityTitle", "") or "").strip()
        if got != wanted or (originator and originator != self.calling_ae_title):
            log.warning("event=move_store_refused calling_ae=%s sop=%s study=%s series=%s moving=%s originator=%r",
                        event.assoc.requestor.ae_title, ds.get("SOPInstanceUID", ""), got[0], got[1],
                        "/".join(wanted) if wanted else None, originator)
            return 0x0124
        return _store_into(event, bucket)
