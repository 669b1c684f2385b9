"""Loader for ReXGradient-160K (its metadata table + images).

Assumed layout (the Hugging Face release, ``rajpurkarlab/ReXGradient-160K``): ``metadata/`` holds
``{train,valid,test}_metadata.csv`` or ``.json``; image paths in it are relative to the dataset root.
Columns assumed (the release's field names; pass ``columns={...}`` to map others):

=====================  =========================================================
``id``                 study key (used when ``StudyInstanceUid`` is missing)
``PatientID``          patient
``StudyInstanceUid``   study
``StudyDate``          YYYYMMDD or YYYY-MM-DD
``PatientAge``         "065Y" or a number
``PatientSex``         "M" / "F"
``Indication``, ``Comparison``, ``Findings``, ``Impression``   report sections
``ImagePath``          one path per row, or a list per study ("['a.png', 'b.png']" or JSON)
``ImageViewPosition``  "PA" / "AP" / "LATERAL" / "POSTERO_ANTERIOR" / ..., same shape as ``ImagePath``
``state`` / ``site``   institution when present (first of ``INSTITUTION_COLUMNS`` found)
=====================  =========================================================

Rows of one study (one row per image) are merged. A JSON file may be a list of rows or an object keyed by
``id``. Priors: the most recent earlier study of the patient by ``StudyDate``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from unirg.trainer.data.longitudinal import link_priors
from unirg.trainer.data.sample import (
    ImageRef,
    Sample,
    clean,
    normalize_sex,
    normalize_view,
    optional,
    parse_age,
    parse_date,
)
from unirg.trainer.data.tables import as_list, read_records

COLUMNS: Mapping[str, str] = {
    "id": "id", "patient": "PatientID", "study": "StudyInstanceUid", "date": "StudyDate", "age": "PatientAge",
    "sex": "PatientSex", "indication": "Indication", "comparison": "Comparison", "findings": "Findings",
    "impression": "Impression", "image": "ImagePath", "view": "ImageViewPosition",
}
INSTITUTION_COLUMNS = ("state", "State", "site", "Site", "institution", "InstitutionName")


def metadata_files(root: Path, split: str | None) -> list[Path]:
    """The metadata tables under ``root/metadata`` (or ``root``), of one split when given."""
    folder = root / "metadata" if (root / "metadata").is_dir() else root
    found = sorted(p for p in folder.iterdir()
                   if "metadata" in p.name and p.suffix in (".csv", ".json", ".jsonl", ".gz"))
    if split is not None:
        found = [p for p in found if p.name.startswith(f"{split}_")]
    if not found:
        raise FileNotFoundError(f"no *metadata*.csv/.json in {folder}" + (f" for split {split!r}" if split else ""))
    return found


def load_rexgradient(root: str | os.PathLike[str], *, split: str | None = None,
                     metadata: str | os.PathLike[str] | None = None, columns: Mapping[str, str] | None = None,
                     institution: str | None = None) -> list[Sample]:
    """ReXGradient-160K studies as samples (see the module docstring).

    ``metadata`` names one table (else every ``*metadata*`` table of ``split``, or all); ``institution``
    forces one institution name (else the site column, else "ReXGradient").
    """
    root = Path(root)
    col = {**COLUMNS, **(columns or {})}
    paths = [Path(metadata)] if metadata is not None else metadata_files(root, split)
    studies: dict[str, dict] = {}
    for path in paths:
        file_split = path.name.split("_")[0] if "_" in path.name else None
        for row in read_records(path, key_field=col["id"]):
            key = clean(row.get(col["study"])) or clean(row.get(col["id"]))
            if not key:
                continue
            entry = studies.setdefault(key, {"row": row, "images": [], "split": file_split})
            views = as_list(row.get(col["view"]))
            for i, rel in enumerate(as_list(row.get(col["image"]))):
                view = normalize_view(views[i]) if i < len(views) else None
                entry["images"].append(ImageRef(path=str(root / str(rel)), view=view))

    samples = []
    for key, entry in studies.items():
        row = entry["row"]
        findings, impression = clean(row.get(col["findings"])), clean(row.get(col["impression"]))
        if not (findings or impression):
            continue
        site = institution or next((clean(row[c]) for c in INSTITUTION_COLUMNS if clean(row.get(c))), "ReXGradient")
        samples.append(Sample(
            sample_id=key, patient_id=clean(row.get(col["patient"])) or key, study_id=key,
            images=tuple(entry["images"]), indication=optional(row.get(col["indication"])),
            comparison=optional(row.get(col["comparison"])), findings=findings, impression=impression,
            institution=site, sex=normalize_sex(row.get(col["sex"])), age=parse_age(row.get(col["age"])),
            study_date=parse_date(row.get(col["date"])), source="rexgradient", split=entry["split"],
            meta={"id": clean(row.get(col["id"]))},
        ))
    return link_priors(samples)
