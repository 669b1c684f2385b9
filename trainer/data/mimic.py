"""Loader for MIMIC-CXR (MIMIC-CXR-JPG images + the sectioned reports CSV).

Expected under ``root`` (PhysioNet layout; file names can be overridden):

- ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` (XX = first two digits of the subject id);
- ``mimic-cxr-2.0.0-metadata.csv[.gz]``: columns assumed from the MIMIC-CXR-JPG documentation:
  ``dicom_id, subject_id, study_id, ViewPosition, StudyDate`` (YYYYMMDD), ``StudyTime`` (others ignored);
- ``mimic_cxr_sectioned.csv``: the output of the MIMIC-CXR repository's ``create_section_files.py``, columns
  ``study`` ("s50414267"), ``impression``, ``findings``, ``last_paragraph``, ``comparison`` (an
  ``indication`` column is used when present);
- optional ``mimic-cxr-2.0.0-split.csv[.gz]``: ``dicom_id, study_id, subject_id, split``
  (train / validate / test);
- optional MIMIC-IV ``patients.csv[.gz]``: ``subject_id, gender, anchor_age, anchor_year``; the age at a
  study is ``anchor_age + year(StudyDate) - anchor_year`` (both dates are in MIMIC's shifted time).

Ids: ``sample_id`` = ``study_id`` = the metadata's numeric study id ("50414267"), ``patient_id`` = the
subject id. Studies without a sectioned report (or with neither findings nor impression) are skipped.
Priors: the most recent earlier study of the subject by StudyDate / StudyTime
(:func:`~unirg.trainer.data.longitudinal.link_priors`). MIMIC-CXR has no indication in the sectioned CSV and
comes from one hospital (``institution``, default "MIMIC-CXR").
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from unirg.trainer.data.longitudinal import link_priors
from unirg.trainer.data.sample import ImageRef, Sample, clean, normalize_sex, normalize_view, optional, parse_date
from unirg.trainer.data.tables import read_csv

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SECTIONED = "mimic_cxr_sectioned.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
PATIENTS = "patients.csv"


def _find(root: Path, given: str | os.PathLike[str] | None, name: str, required: bool) -> Path | None:
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise FileNotFoundError(f"{root} has no {name} (or {name}.gz); pass its path explicitly")
    return None


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """``root/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def load_mimic_cxr(root: str | os.PathLike[str], *, metadata_csv: str | os.PathLike[str] | None = None,
                   reports_csv: str | os.PathLike[str] | None = None,
                   split_csv: str | os.PathLike[str] | None = None,
                   patients_csv: str | os.PathLike[str] | None = None, split: str | None = None,
                   institution: str = "MIMIC-CXR", check_files: bool = False) -> list[Sample]:
    """MIMIC-CXR studies as samples (see the module docstring).

    ``split`` keeps one official split ("train", "validate", "test"; needs the split CSV);
    ``check_files`` drops image entries whose JPG is missing (one ``stat`` per image).
    """
    root = Path(root)
    meta_path = _find(root, metadata_csv, METADATA, True)
    reports_path = _find(root, reports_csv, SECTIONED, True)
    split_path = _find(root, split_csv, SPLIT, split is not None)
    patients_path = _find(root, patients_csv, PATIENTS, False)

    studies: dict[tuple[str, str], dict] = {}
    for row in read_csv(meta_path):
        subject, study = clean(row["subject_id"]), clean(row["study_id"])
        entry = studies.setdefault((subject, study), {"images": [], "date": None, "time": None})
        entry["images"].append((clean(row["dicom_id"]), normalize_view(row.get("ViewPosition"))))
        entry["date"] = entry["date"] or parse_date(row.get("StudyDate"))
        entry["time"] = entry["time"] or (clean(row.get("StudyTime")).split(".")[0].zfill(6) or None)

    reports = {}
    for row in read_csv(reports_path):
        key = clean(row.get("study")).removeprefix("s")
        if key:
            reports[key] = row
    splits: dict[str, str] = {}
    if split_path is not None:
        for row in read_csv(split_path):
            splits.setdefault(clean(row["study_id"]), clean(row["split"]))
    patients: dict[str, dict] = defaultdict(dict)
    if patients_path is not None:
        for row in read_csv(patients_path):
            patients[clean(row["subject_id"])] = row

    samples = []
    for (subject, study), entry in studies.items():
        report = reports.get(study)
        if report is None or not (clean(report.get("findings")) or clean(report.get("impression"))):
            continue
        if split is not None and splits.get(study) != split:
            continue
        images = []
        for dicom_id, view in entry["images"]:
            path = image_path(root, subject, study, dicom_id)
            if check_files and not path.is_file():
                continue
            images.append(ImageRef(path=str(path), view=view, uid=dicom_id))
        person = patients.get(subject, {})
        age = None
        if person.get("anchor_age") and person.get("anchor_year") and entry["date"]:
            age = int(person["anchor_age"]) + int(entry["date"][:4]) - int(person["anchor_year"])
        samples.append(Sample(
            sample_id=study, patient_id=subject, study_id=study, images=tuple(images),
            indication=optional(report.get("indication")), comparison=optional(report.get("comparison")),
            findings=clean(report.get("findings")), impression=clean(report.get("impression")),
            institution=institution, sex=normalize_sex(person.get("gender")), age=age,
            study_date=entry["date"], source="mimic-cxr", split=splits.get(study),
            meta={"study_time": entry["time"]} if entry["time"] else {},
        ))
    return link_priors(samples)
