"""Loader for the synthetic testbed (``unirg-trainer synth``): ``DIR/manifest.jsonl`` + DICOM images.

Record format in docs/design.md. One :class:`Sample` per study: ``sample_id`` = ``study_id`` = the Study
Instance UID; images are the study's DICOM files with their manifest view; the prior comes from the
record's ``prior_study_uid`` (its frontal image and report text); ``institution`` is the code ("A", "B",
"C"); ``labels`` are the testbed's ground-truth CheXpert labels; ``meta`` keeps the accession, study time,
institution name, the report SR path and the structured findings (``meta["finding_records"]``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from unirg.trainer.data.sample import ImageRef, Prior, Sample, normalize_sex, normalize_view, optional


def _sample(rec: dict, root: Path) -> Sample:
    report = rec.get("report") or {}
    images = tuple(
        ImageRef(path=str(root / img["path"]), view=normalize_view(img.get("view")), uid=img.get("sop_instance_uid"))
        for img in rec.get("images", [])
    )
    return Sample(
        sample_id=rec["study_uid"], patient_id=rec["patient_id"], study_id=rec["study_uid"], images=images,
        indication=optional(report.get("indication")), comparison=optional(report.get("comparison")),
        findings=report.get("findings") or "", impression=report.get("impression") or "",
        institution=rec.get("institution"), sex=normalize_sex(rec.get("sex")), age=rec.get("age"),
        study_date=rec.get("study_date"), labels=rec.get("labels"), sequence=rec.get("study_index"),
        source="testbed",
        meta={**{k: rec[k] for k in ("accession", "study_time", "institution_name", "ethnic_group", "report_sr",
                                     "prior_study_uid") if k in rec},
              "finding_records": rec.get("findings", [])},
    )


def load_testbed(directory: str | os.PathLike[str]) -> list[Sample]:
    """The testbed's studies as samples (manifest order), priors linked by ``prior_study_uid``."""
    from unirg.trainer.synth import load_manifest

    root = Path(directory)
    if not (root / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"{root} has no manifest.jsonl: not a testbed made by `unirg-trainer synth`")
    samples = [_sample(rec, root) for rec in load_manifest(root)]
    by_uid = {s.study_id: s for s in samples}
    out = []
    for s in samples:
        prior_uid = s.meta.get("prior_study_uid")
        before = by_uid.get(prior_uid) if prior_uid else None
        if prior_uid and before is None:
            raise ValueError(f"study {s.study_id} names prior {prior_uid}, which is not in the manifest")
        prior = None if before is None else Prior(
            study_id=before.study_id, image=before.frontal, report=before.report or None,
            study_date=before.study_date)
        out.append(dataclasses.replace(s, prior=prior))
    return out
