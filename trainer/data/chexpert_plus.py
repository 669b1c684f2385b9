"""Loader for CheXpert Plus (its report/metadata CSV + the CheXpert images).

The CSV (``df_chexpert_plus_240401.csv``) has one row per image. Columns assumed from the CheXpert Plus
release (Stanford AIMI): ``path_to_image`` ("train/patient42142/study5/view1_frontal.jpg"),
``frontal_lateral`` ("Frontal" / "Lateral"), ``ap_pa`` ("AP" / "PA" / "LL" / ...), ``deid_patient_id``,
``patient_report_date_order`` (rank of the report in the patient's timeline), ``section_findings``,
``section_impression``, ``section_clinical_history``, ``section_history``, ``section_comparison``, ``age``,
``sex`` ("Male" / "Female"), ``split``. Other columns are ignored.

Ids: ``study_id`` = ``sample_id`` = "patientN/studyM" from the image path; ``patient_id`` =
``deid_patient_id`` (else "patientN"). CheXpert Plus has no study dates: the timeline (and so the prior) uses
``patient_report_date_order`` (``Sample.sequence``), then the study number. Images are looked up under
``image_root`` (default: the CSV's folder); ``image_suffix`` swaps the extension (the PNG release keeps the
".jpg" names in the CSV). One hospital (``institution``, default "CheXpert-Plus").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from unirg.trainer.data.longitudinal import link_priors
from unirg.trainer.data.sample import ImageRef, Sample, clean, normalize_sex, normalize_view, optional, parse_age
from unirg.trainer.data.tables import read_csv

CSV_NAME = "df_chexpert_plus_240401.csv"
_STUDY_RE = re.compile(r"(patient\d+)/(study\d+)/")


def _view(row: dict) -> str | None:
    if clean(row.get("frontal_lateral")).lower() == "lateral":
        return normalize_view(row.get("ap_pa")) if clean(row.get("ap_pa")).upper() in ("LL", "RL") else "LATERAL"
    return normalize_view(row.get("ap_pa")) or ("PA" if clean(row.get("frontal_lateral")) else None)


def _rank(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def load_chexpert_plus(csv_path: str | os.PathLike[str], *, image_root: str | os.PathLike[str] | None = None,
                       image_suffix: str | None = None, split: str | None = None,
                       institution: str = "CheXpert-Plus") -> list[Sample]:
    """CheXpert Plus studies as samples (see the module docstring); ``split`` keeps one CSV split."""
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        csv_path = csv_path / CSV_NAME
    root = Path(image_root) if image_root is not None else csv_path.parent
    studies: dict[str, dict] = {}
    for row in read_csv(csv_path):
        rel = clean(row.get("path_to_image"))
        m = _STUDY_RE.search(rel)
        if not m:
            continue
        if split is not None and clean(row.get("split")) != split:
            continue
        study_id = f"{m.group(1)}/{m.group(2)}"
        entry = studies.setdefault(study_id, {"row": row, "images": []})
        path = root / rel
        if image_suffix:
            path = path.with_suffix(image_suffix)
        entry["images"].append(ImageRef(path=str(path), view=_view(row)))

    samples = []
    for study_id, entry in studies.items():
        row = entry["row"]
        findings, impression = clean(row.get("section_findings")), clean(row.get("section_impression"))
        if not (findings or impression):
            continue
        patient = clean(row.get("deid_patient_id")) or study_id.split("/")[0]
        study_number = int(study_id.split("/study")[1])
        rank = _rank(clean(row.get("patient_report_date_order")))
        samples.append(Sample(
            sample_id=study_id, patient_id=patient, study_id=study_id, images=tuple(entry["images"]),
            indication=optional(row.get("section_clinical_history")) or optional(row.get("section_history")),
            comparison=optional(row.get("section_comparison")), findings=findings, impression=impression,
            institution=institution, sex=normalize_sex(row.get("sex")), age=parse_age(row.get("age")),
            sequence=rank if rank is not None else study_number, source="chexpert-plus",
            split=optional(row.get("split")), meta={"race": optional(row.get("race"))},
        ))
    return link_priors(samples)
