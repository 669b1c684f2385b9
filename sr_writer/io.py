"""Disk I/O for the SR writer: atomic writes and reading the images of a study."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` with ``write(file)`` so readers see the old file or the complete new one.

    Writes a temporary file ``.<name>.tmp-*`` in the same folder, fsyncs it, renames it over
    ``path`` and fsyncs the folder. On failure the temporary file is removed and ``path`` is left
    as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_dataset_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` (with file meta information, e.g. a highdicom SR) atomically; see `write_atomic`."""
    return write_atomic(path, lambda f: ds.save_as(f, enforce_file_format=True))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` atomically; see `write_atomic`."""
    return write_atomic(path, lambda f: f.write(data))


def iter_dicom_files(path: str | os.PathLike[str]) -> Iterator[tuple[Path, Dataset | str]]:
    """Yield ``(file, dataset)`` for each DICOM file in ``path``, or ``(file, reason)`` if unreadable.

    Parameters
    ----------
    path : str or os.PathLike
        A file, or a folder searched recursively (in sorted order, hidden files skipped).
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    for file in files:
        try:
            yield file, dcmread(file, defer_size="1 MB")
        except (InvalidDicomError, OSError, ValueError) as exc:
            yield file, f"not a readable DICOM file ({exc})"
