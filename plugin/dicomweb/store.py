"""Write-back by STOW-RS: the research-label door, a local copy, then ``POST {url}/studies``.

Idempotent: the SR's UIDs are deterministic, so a retried job stores the same SOP Instance UID again;
an archive that answers "duplicate" (0x0111) or stores over it keeps one instance. Failures raise
:class:`unirg.plugin.store.StoreFailed` and the job queue retries with backoff.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import Dataset

from unirg.plugin.dicomweb.client import DicomWeb, DicomWebError
from unirg.plugin.paths import uid_path
from unirg.plugin.store import StoreFailed, StoreOutcome, refuse_unlabelled, sr_bytes
from unirg.sr_writer.io import write_bytes_atomic

__all__ = ["DicomWebSRStore", "stow"]

log = logging.getLogger(__name__)

#: FailureReason of a STOW-RS FailedSOPSequence item meaning "already there".
DUPLICATE_SOP = 0x0111


def stow(client: DicomWeb, sr: Dataset) -> str:
    """STOW-RS one labelled SR; returns "stored" or "already stored", raises :class:`StoreFailed`."""
    refuse_unlabelled(sr, f"dicomweb {client.url}")
    try:
        answer = client.store([sr])
    except DicomWebError as exc:
        log.warning("event=sr_store_failed sr=%s study=%s destination=%s reason=%r",
                    sr.SOPInstanceUID, sr.StudyInstanceUID, client.url, str(exc))
        raise StoreFailed(str(exc)) from exc
    sop = str(sr.SOPInstanceUID)
    for item in (answer.get("FailedSOPSequence") or []) if answer is not None else []:
        if str(item.get("ReferencedSOPInstanceUID", "")) != sop:
            continue
        reason = int(item.get("FailureReason", 0) or 0)
        if reason == DUPLICATE_SOP:
            return "already stored"
        raise StoreFailed(f"DICOMweb archive {client.url} refused the SR: FailureReason 0x{reason:04X}")
    return "stored"


class DicomWebSRStore:
    """Local copy (``<sr_dir>/<study>/<sop>.dcm``), then STOW-RS to the archive."""

    def __init__(self, client: DicomWeb, local_dir: str | Path) -> None:
        self.client = client
        self.local_dir = Path(local_dir)

    def store(self, sr: Dataset) -> StoreOutcome:
        refuse_unlabelled(sr, "dicomweb")  # ResearchLabelMissing: nothing written or posted
        path = uid_path(self.local_dir, sr.StudyInstanceUID, sr.SOPInstanceUID)  # UnsafePath if not UIDs
        write_bytes_atomic(path, sr_bytes(sr))
        status = stow(self.client, sr)
        log.info("event=sr_stored sr=%s study=%s destination=%s status=%r",
                 sr.SOPInstanceUID, sr.StudyInstanceUID, self.client.url, status)
        return StoreOutcome(local_path=path, delivered=[f"dicomweb {self.client.url}"])
