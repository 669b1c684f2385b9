"""One entry point for every source: :func:`load_dataset` (``format="auto"`` guesses from the path)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unirg.trainer.data.chexpert_plus import CSV_NAME, load_chexpert_plus
from unirg.trainer.data.dicom_folder import load_dicom_folder
from unirg.trainer.data.jsonl import load_jsonl_manifest
from unirg.trainer.data.mimic import METADATA, load_mimic_cxr
from unirg.trainer.data.rexgradient import load_rexgradient
from unirg.trainer.data.sample import Sample
from unirg.trainer.data.testbed import load_testbed

LOADERS: dict[str, Callable[..., list[Sample]]] = {
    "testbed": load_testbed,
    "mimic-cxr": load_mimic_cxr,
    "chexpert-plus": load_chexpert_plus,
    "rexgradient": load_rexgradient,
    "jsonl": load_jsonl_manifest,
    "dicom": load_dicom_folder,
}
FORMATS = ("auto", *LOADERS)


def _is_testbed_manifest(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                return "study_uid" in rec and isinstance(rec.get("report"), dict)
    return False


def detect_format(path: str | os.PathLike[str]) -> str:
    """The :data:`LOADERS` key for ``path`` (see :func:`load_dataset`); ``ValueError`` when unsure."""
    path = Path(path)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".jsonl"):
            return "testbed" if _is_testbed_manifest(path) else "jsonl"
        if name.endswith((".csv", ".csv.gz")):
            with open(path, "rb") as f:
                head = f.read(4096)
            if b"path_to_image" in head:
                return "chexpert-plus"
        raise ValueError(f"cannot tell the dataset format of {path}; pass the format explicitly")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / "manifest.jsonl").is_file():
        return "testbed" if _is_testbed_manifest(path / "manifest.jsonl") else "jsonl"
    if (path / METADATA).is_file() or (path / f"{METADATA}.gz").is_file():
        return "mimic-cxr"
    if (path / CSV_NAME).is_file():
        return "chexpert-plus"
    meta = path / "metadata"
    if meta.is_dir() and any("metadata" in p.name for p in meta.iterdir()):
        return "rexgradient"
    return "dicom"


def load_dataset(path: str | os.PathLike[str], format: str = "auto", **options: Any) -> list[Sample]:
    """Samples from ``path`` in ``format`` (one of :data:`FORMATS`); ``options`` go to the loader.

    Auto-detection: a testbed folder (``manifest.jsonl`` with testbed records) or manifest; another ``.jsonl``
    (plain manifest); a MIMIC-CXR root (``mimic-cxr-2.0.0-metadata.csv``); a CheXpert Plus CSV or its folder;
    a ReXGradient root (``metadata/``); any other folder is read as DICOM files.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in LOADERS:
        raise ValueError(f"unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "testbed" and path.is_file():
        path = path.parent
    if fmt == "jsonl" and path.is_dir():
        path = path / "manifest.jsonl"
    return LOADERS[fmt](path, **options)
