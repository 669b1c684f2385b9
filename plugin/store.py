"""Write-back of draft SRs: a local copy first, then C-STORE to allow-listed destinations only.

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

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from unirg.plugin.config import Peer, StoreConfig
from unirg.sr_writer.io import write_bytes_atomic

__all__ = ["SRStore", "StoreFailed", "DestinationNotAllowed", "StoreOutcome", "sr_bytes"]

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

    def __init__(self, config: StoreConfig, local_dir: Path, calling_ae_title: str = "UNIRG") -> None:
        self.config = config
        self.destinations: list[Peer] = config.peers
        self.local_dir = Path(local_dir)
        self.calling_ae_title = config.calling_ae_title or calling_ae_title

    def keep_local(self, sr: Dataset) -> Path:
        path = self.local_dir / str(sr.StudyInstanceUID) / f"{sr.SOPInstanceUID}.dcm"
        write_bytes_atomic(path, sr_bytes(sr))
        return path

    def send(self, path: Path, destination: Peer) -> int:
        """C-STORE the file at ``path`` to ``destination``; raise :class:`StoreFailed` on failure."""
        if destination not in self.destinations:
            raise DestinationNotAllowed(f"{destination} is not in [store] destinations")
        ds = dcmread(path, stop_before_pixels=True)
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

    def store(self, sr: Dataset, destinations: Sequence[Peer] | None = None) -> StoreOutcome:
        """Keep the local copy, then send to every destination (all of them by default).

        Raises :class:`StoreFailed` after trying every destination if any failed.
        """
        path = self.keep_local(sr)
        outcome = StoreOutcome(local_path=path)
        errors = []
        for dest in self.destinations if destinations is None else destinations:
            try:
                code = self.send(path, dest)
            except StoreFailed as exc:
                errors.append(str(exc))
                log.warning("event=sr_store_failed sr=%s study=%s destination=%s reason=%r",
                            sr.SOPInstanceUID, sr.StudyInstanceUID, dest, str(exc))
                continue
            outcome.delivered.append(str(dest))
            log.info("event=sr_stored sr=%s study=%s destination=%s status=0x%04X",
                     sr.SOPInstanceUID, sr.StudyInstanceUID, dest, code)
        if errors:
            raise StoreFailed("; ".join(errors))
        return outcome
