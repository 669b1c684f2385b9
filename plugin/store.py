"""Write-back of draft SRs: a local copy first, then C-STORE (or STOW-RS) to allow-listed destinations only.

Every path out (``store``, ``keep_local``, ``send``) first checks the SR's research labels
(:func:`unirg.sr_writer.check_research_labels`): an SR lacking any is refused with
:class:`unirg.sr_writer.ResearchLabelMissing` naming what is missing, and nothing is written or sent.

:class:`SRStore` keeps ``<sr_dir>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (atomic write) and sends
that very file to every configured destination. There are no retries here: a failed store raises
:class:`StoreFailed` and the job queue retries the whole job with backoff (re-sending is harmless:
the SR's UIDs are deterministic and a PACS keeps one instance per SOP Instance UID).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from unirg.plugin.config import Peer, StoreConfig
from unirg.plugin.paths import uid_path
from unirg.sr_writer.io import write_bytes_atomic
from unirg.sr_writer.labels import ResearchLabelMissing, check_research_labels

__all__ = ["SRStore", "StoreFailed", "DestinationNotAllowed", "StoreOutcome", "sr_bytes", "refuse_unlabelled"]

log = logging.getLogger(__name__)

#: C-STORE statuses that mean the PACS has the instance (success and the warnings B000/B006/B007).
STORED_OK = {0x0000, 0xB000, 0xB006, 0xB007}


class StoreFailed(Exception):
    """A destination did not take the SR; the message says which and why."""


class DestinationNotAllowed(ValueError):
    """An SR was about to go to a destination that is not on the allow-list."""


@dataclass
class StoreOutcome:
    local_path: Path
    delivered: list[str] = field(default_factory=list)


def sr_bytes(sr: Dataset) -> bytes:
    """``sr`` in the DICOM file format (Explicit VR Little Endian unless it says otherwise)."""
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset

    meta = getattr(sr, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sr.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta = meta
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def refuse_unlabelled(sr: Dataset, destination: str) -> None:
    """Raise :class:`ResearchLabelMissing` (logged ``event=sr_refused``) when ``sr`` lacks a research label."""
    try:
        check_research_labels(sr)
    except ResearchLabelMissing as exc:
        log.error("event=sr_refused sr=%s study=%s destination=%s reason=%r", sr.get("SOPInstanceUID", "?"),
                  sr.get("StudyInstanceUID", "?"), destination, "; ".join(exc.missing))
        raise


class SRStore:
    """Local copy + C-STORE to the allow-list.

    Parameters
    ----------
    config : StoreConfig
        ``destinations`` is the allow-list and the send list; timeouts.
    local_dir : Path
        Where the local copies go.
    calling_ae_title : str
        Used when ``config.calling_ae_title`` is empty.
    """

    def __init__(self, config: StoreConfig, local_dir: Path, calling_ae_title: str = "UNIRG",
                 dicomweb: Any = None) -> None:
        self.config = config
        self.destinations: list[Peer] = config.peers
        #: ``dicomweb+http(s)://`` destinations (STOW-RS) with the credentials of ``dicomweb`` ([dicomweb]).
        self.dicomweb_destinations: list[str] = config.dicomweb_destinations
        self.dicomweb = dicomweb
        self._stow_clients: dict[str, Any] = {}
        self.local_dir = Path(local_dir)
        self.calling_ae_title = config.calling_ae_title or calling_ae_title

    def keep_local(self, sr: Dataset) -> Path:
        refuse_unlabelled(sr, "local")
        path = uid_path(self.local_dir, sr.StudyInstanceUID, sr.SOPInstanceUID)  # UnsafePath if not UIDs
        write_bytes_atomic(path, sr_bytes(sr))
        return path

    def send(self, path: Path, destination: Peer) -> int:
        """C-STORE the file at ``path`` to ``destination``; raise :class:`StoreFailed` on failure."""
        if destination not in self.destinations:
            raise DestinationNotAllowed(f"{destination} is not in [store] destinations")
        ds = dcmread(path, stop_before_pixels=True)
        refuse_unlabelled(ds, str(destination))
        ae = AE(ae_title=self.calling_ae_title)
        ae.connection_timeout = self.config.connect_timeout_s
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.dimse_timeout_s
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian,
                                                  ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
            if not assoc.is_established:
                how = "rejected the association" if assoc.is_rejected else "unreachable or not answering"
                raise StoreFailed(f"destination {destination} {how}")
            try:
                status = assoc.send_c_store(path)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            ae.shutdown()
        if not status:
            raise StoreFailed(f"destination {destination} sent no C-STORE response")
        code = int(status.Status)
        if code not in STORED_OK:
            comment = str(status.get("ErrorComment", "") or "")
            raise StoreFailed(f"destination {destination} refused the SR: status 0x{code:04X} {comment}".rstrip())
        return code

    def stow(self, sr: Dataset, destination: str) -> str:
        """STOW-RS ``sr`` to an allow-listed ``dicomweb+http(s)://`` destination; raise :class:`StoreFailed`."""
        from unirg.plugin.config import load_config
        from unirg.plugin.dicomweb.client import client_from_config
        from unirg.plugin.dicomweb.store import stow

        if destination not in self.dicomweb_destinations:
            raise DestinationNotAllowed(f"{destination} is not in [store] destinations")
        client = self._stow_clients.get(destination)
        if client is None:
            cfg = self.dicomweb or load_config().dicomweb  # none given: [dicomweb] from UNIRG_DICOMWEB_*
            client = client_from_config(cfg, destination.split("+", 1)[1])
            self._stow_clients[destination] = client
        return stow(client, sr)

    def store(self, sr: Dataset, destinations: Sequence[Peer | str] | None = None) -> StoreOutcome:
        """Keep the local copy, then send to every destination (all of them by default).

        Raises :class:`StoreFailed` after trying every destination if any failed, and
        :class:`ResearchLabelMissing` (nothing written or sent) when the SR lacks a research label, and
        :class:`DestinationNotAllowed` (nothing written or sent) when a destination is not allow-listed.
        """
        allowed: list[Peer | str] = [*self.destinations, *self.dicomweb_destinations]
        targets = list(allowed if destinations is None else destinations)
        refused = [str(d) for d in targets if d not in allowed]
        if refused:
            raise DestinationNotAllowed(f"{', '.join(refused)} not in [store] destinations "
                                        f"({', '.join(map(str, allowed)) or 'empty'}); nothing sent")
        path = self.keep_local(sr)
        outcome = StoreOutcome(local_path=path)
        errors = []
        for dest in targets:
            try:
                code = self.stow(sr, dest) if isinstance(dest, str) else self.send(path, dest)
            except StoreFailed as exc:
                errors.append(str(exc))
                log.warning("event=sr_store_failed sr=%s study=%s destination=%s reason=%r",
                            sr.SOPInstanceUID, sr.StudyInstanceUID, dest, str(exc))
                continue
            outcome.delivered.append(str(dest))
            log.info("event=sr_stored sr=%s study=%s destination=%s status=%s",
                     sr.SOPInstanceUID, sr.StudyInstanceUID, dest, code if isinstance(code, str) else f"0x{code:04X}")
        if errors:
            raise StoreFailed("; ".join(errors))
        return outcome
