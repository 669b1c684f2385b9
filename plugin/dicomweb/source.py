"""The worker's images from a DICOMweb archive: ledger paths ``dicomweb:<study>/<series>/<sop>`` by WADO-RS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import Dataset, dcmread

from unirg.plugin.dicomweb.client import DicomWeb
from unirg.plugin.dicomweb.watcher import PATH_PREFIX, parse_dicomweb_path

__all__ = ["DicomWebInstanceSource"]


class DicomWebInstanceSource:
    """:class:`unirg.plugin.worker.InstanceSource` reading by WADO-RS, in the archive's own transfer syntax
    (JPEG, JPEG-LS, JPEG 2000 and RLE are decoded later by pydicom's plugins). Other paths are files under
    ``data_dir`` (studies pushed to the STOW-RS endpoint). Raises on any failure."""

    def __init__(self, client: DicomWeb, data_dir: str | Path | None = None) -> None:
        self.client = client
        self.data_dir = Path(data_dir) if data_dir is not None else None

    def read(self, paths: Sequence[str]) -> list[Dataset]:
        out = []
        for p in paths:
            if p.startswith(PATH_PREFIX) or self.data_dir is None:
                out.append(self.client.instance(*parse_dicomweb_path(p)))
            else:
                out.append(dcmread(self.data_dir / p))
        return out
