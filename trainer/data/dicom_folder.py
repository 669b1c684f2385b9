"""Loader for a folder of DICOM files, e.g. an export from a PACS: images + report SRs.

Every file under the folder is read (non-DICOM files are skipped); objects are grouped by
StudyInstanceUID. Images are the original chest radiographs that :func:`unirg.model.views.skip_reason`
accepts (view from :func:`unirg.model.views.classify_view`); the reference report is a TID 2000 SR of the
study read with :func:`unirg.sr_writer.read_report`: verified reports win over drafts, the latest
(ContentDate / ContentTime) among equals. AI drafts (unverified or preliminary SRs, such as our own) are not
used as references unless ``include_drafts``. Patient, sex, age (PatientAge, else from PatientBirthDate),
institution (InstitutionName), study date / time come from the headers; priors are linked by PatientID and
dates (:func:`~unirg.trainer.data.longitudinal.link_priors`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from unirg.trainer.data.longitudinal import link_priors
from unirg.trainer.data.sample import (
    FRONTAL_VIEWS,
    LATERAL_VIEWS,
    ImageRef,
    Sample,
    clean,
    normalize_sex,
    normalize_view,
    optional,
    parse_age,
)

log = logging.getLogger(__name__)


def _read(path: Path) -> Dataset | None:
    try:
        return dcmread(path, defer_size="2 KB")
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def _age(ds: Dataset) -> int | None:
    age = parse_age(ds.get("PatientAge"))
    birth, date = clean(ds.get("PatientBirthDate")), clean(ds.get("StudyDate"))
    if age is None and len(birth) == 8 and len(date) == 8 and birth.isdigit() and date.isdigit():
        age = int(date[:4]) - int(birth[:4]) - ((date[4:]) < (birth[4:]))
    return age


def _pick_report(reports: list[tuple[Dataset, object]], include_drafts: bool):
    usable = [(ds, r) for ds, r in reports if include_drafts or not r.is_draft]
    if not usable:
        return None
    usable.sort(key=lambda item: (not item[1].is_draft, clean(item[0].get("ContentDate")),
                                  clean(item[0].get("ContentTime"))))
    return usable[-1]


def load_dicom_folder(folder: str | os.PathLike[str], *, include_drafts: bool = False,
                      require_report: bool = True) -> list[Sample]:
    """Studies of a DICOM folder as samples (see the module docstring).

    ``require_report=False`` also returns studies without a usable report SR (empty reference text).
    """
    from unirg.model.views import classify_view, skip_reason
    from unirg.sr_writer import SRInputError, read_report

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    studies: dict[str, dict] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        ds = _read(path)
        if ds is None or "StudyInstanceUID" not in ds:
            continue
        entry = studies.setdefault(str(ds.StudyInstanceUID), {"images": [], "reports": []})
        if str(ds.get("Modality", "")).upper() == "SR":
            try:
                entry["reports"].append((ds, read_report(ds)))
            except SRInputError as exc:
                log.warning("skipping SR %s: %s", path, exc)
            continue
        reason = skip_reason(ds)
        if reason is not None:
            log.debug("skipping %s: %s", path, reason)
            continue
        view = normalize_view(ds.get("ViewPosition"))
        if view not in FRONTAL_VIEWS | LATERAL_VIEWS:
            view = normalize_view(classify_view(ds))  # may be "FRONTAL" (AP / PA unknown)
        entry["images"].append((ds, ImageRef(path=str(path), view=view,
                                             uid=str(ds.get("SOPInstanceUID", "")) or None)))

    samples = []
    for study_uid, entry in studies.items():
        picked = _pick_report(entry["reports"], include_drafts)
        if picked is None and (require_report or not entry["images"]):
            continue
        header = entry["images"][0][0] if entry["images"] else picked[0]
        report = picked[1] if picked else None
        indication = report.indication if report else None
        if not indication and entry["images"]:
            from unirg.model.study import indication_from_dataset

            indication = indication_from_dataset(header)
        institution = optional(header.get("InstitutionName")) or (optional(picked[0].get("InstitutionName"))
                                                                  if picked else None)
        time = clean(header.get("StudyTime")).split(".")[0]
        samples.append(Sample(
            sample_id=study_uid, patient_id=clean(header.get("PatientID")) or study_uid, study_id=study_uid,
            images=tuple(ref for _, ref in entry["images"]), indication=optional(indication),
            comparison=report.comparison if report else None, findings=report.findings if report else "",
            impression=report.impression if report else "", institution=institution,
            sex=normalize_sex(header.get("PatientSex")), age=_age(header),
            study_date=clean(header.get("StudyDate")) or None, source="dicom",
            meta={k: v for k, v in (("study_time", time), ("accession", clean(header.get("AccessionNumber"))))
                  if v},
        ))
    return link_priors(samples)
