"""Build the synthetic testbed: DICOM studies, signed report SRs and ``manifest.jsonl``.

Layout: ``DIR/<PatientID>/<AccessionNumber>/<series>_<view>.dcm`` plus ``report_sr.dcm`` per study,
and ``DIR/manifest.jsonl`` with one JSON object per study (format in docs/design.md).

Everything is derived from the seed: patient ``i`` draws from ``default_rng([seed, i])``, images
and reports from their own streams, and UIDs from ``generate_uid(entropy_srcs=...)``, so the same
seed gives the same manifest and the same pixels whatever the number of workers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from unirg.model.chexpert import OBSERVATIONS
from unirg.sr_writer import ReportSections, build_reference_sr
from unirg.trainer.synth.dicom import ImageSpec, StudyHeader, build_image, encode
from unirg.trainer.synth.institutions import INSTITUTIONS, TRANSFER_SYNTAXES, Institution
from unirg.trainer.synth.patients import Patient, Study, make_patient
from unirg.trainer.synth.render import render_view, to_stored
from unirg.trainer.synth.report import write_report

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
MIN_SIZE, MAX_SIZE = 128, 4096


def generate_testbed(out_dir: str | os.PathLike[str], patients: int, seed: int, size: int = 512, *,
                     workers: int = 1, transfer_syntax: str | None = None) -> list[dict]:
    """Write a testbed of `patients` synthetic patients into `out_dir` and return its manifest records.

    Parameters
    ----------
    out_dir : path
        Output folder (created; existing files of the same names are overwritten).
    patients : int
        Number of patients (each has 1 to 6 studies).
    seed : int
        Seed; the same seed gives the same manifest and pixels.
    size : int
        Rows and columns of every image (128..4096; PixelSpacing follows a 43 cm detector).
    workers : int
        Processes to use (1: in this process).  The output does not depend on it.
    transfer_syntax : str, optional
        Write every image in this transfer syntax instead of the stations' own choice (for
        comparing pixels across syntaxes); nothing else changes.

    Returns
    -------
    list[dict]
        The manifest records, in patient and study order.
    """
    if not isinstance(patients, int) or patients < 1:
        raise ValueError(f"patients must be a positive int, got {patients!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be {MIN_SIZE}..{MAX_SIZE} pixels, got {size}")
    if transfer_syntax is not None and transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, size, transfer_syntax) for i in range(patients)]
    if workers > 1 and patients > 1:
        with ProcessPoolExecutor(max_workers=min(workers, patients)) as pool:
            per_patient = list(pool.map(_patient_job, jobs, chunksize=max(1, patients // (8 * workers))))
    else:
        per_patient = [_patient_job(job) for job in jobs]
    records = [r for recs in per_patient for r in recs]
    tmp = out / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out / MANIFEST)
    return records


def load_manifest(directory: str | os.PathLike[str]) -> list[dict]:
    """The records of ``DIR/manifest.jsonl`` (paths in them are relative to DIR)."""
    path = Path(directory) / MANIFEST
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- one patient -----------------------------------------------------------------------------
def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["unirg-synth", str(seed), *map(str, parts)])


def _accession(inst: Institution, patient: Patient, study: Study) -> str:
    return inst.accession_format.format(yy=f"{study.when:%y}", yyyy=f"{study.when:%Y}", patient=patient.index,
                                        study=study.index)


def _patient_job(job: tuple) -> list[dict]:
    out, seed, index, size, forced_ts = job
    patient = make_patient(np.random.default_rng([seed, index]), index, seed)
    records: list[dict] = []
    prior: tuple[Study, list[Dataset], str] | None = None
    for study in patient.studies:
        rec, datasets = _write_study(Path(out), seed, patient, study, prior, size, forced_ts)
        records.append(rec)
        prior = (study, datasets, rec["study_uid"])
    return records


def _write_study(out: Path, seed: int, patient: Patient, study: Study, prior, size: int,
                 forced_ts: str | None) -> tuple[dict, list[Dataset]]:
    inst = INSTITUTIONS[study.institution]
    rng = np.random.default_rng([seed, patient.index, study.index, 1])
    accession = _accession(inst, patient, study)
    study_uid = _uid(seed, patient.patient_id, accession, "study")
    key = "+".join(["AP" if "AP" in study.views else "PA"] + (["LAT"] if "LAT" in study.views else []))
    header = StudyHeader(
        patient_id=patient.patient_id, patient_name=patient.name, birth_date=patient.birth_date,
        sex=patient.sex, age=patient.age_at(study.when.date()), ethnic_group=patient.ethnic_group,
        height_m=patient.height_m, weight_kg=patient.weight_kg, study_uid=study_uid, accession=accession,
        study_id=str(int(rng.integers(1, 100000))), when=study.when,
        description=inst.study_descriptions[key], referring=inst.referring[int(rng.integers(len(inst.referring)))],
        institution=inst,
    )
    candidates = inst.stations_for(study.views)
    station = candidates[int(rng.integers(len(candidates)))]
    one_series = "*" in inst.series_descriptions
    folder = out / patient.patient_id / accession
    folder.mkdir(parents=True, exist_ok=True)
    datasets, images = [], []
    for k, view in enumerate(study.views):
        names, weights = zip(*station.transfer_syntaxes)
        ts = names[int(rng.choice(len(names), p=np.array(weights) / sum(weights)))]
        ts = forced_ts or ts
        series_no = 1 if one_series else k + 1
        spec = ImageSpec(
            station=station, view=view,
            series_uid=_uid(seed, study_uid, "series", series_no), series_number=series_no,
            series_description=inst.series_descriptions["*" if one_series else view],
            sop_uid=_uid(seed, study_uid, "image", k), instance_number=k + 1 if one_series else 1,
            acquired=study.when + dt.timedelta(seconds=45 * k + 20), transfer_syntax=ts,
            exposure_seed=int(rng.integers(2**31)),
        )
        irng = np.random.default_rng([seed, patient.index, study.index, k, 2])
        att = render_view(patient.anatomy, study.findings, view, size, irng, portable=station.portable)
        pixels = to_stored(att, bits_stored=station.bits_stored, photometric=station.photometric, rng=irng)
        ds = build_image(header, spec, pixels, bits_stored=station.bits_stored, photometric=station.photometric)
        encode(ds, pixels, ts)
        name = f"{series_no:03d}_{k + 1:02d}_{spec.view_position}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        datasets.append(ds)
        images.append({
            "path": (folder / name).relative_to(out).as_posix(), "sop_instance_uid": spec.sop_uid,
            "series_uid": spec.series_uid, "view": spec.view_position, "modality": station.modality,
            "transfer_syntax": ts, "photometric": station.photometric, "bits_stored": station.bits_stored,
        })

    prior_study, prior_datasets, prior_uid = prior if prior else (None, [], None)
    report = write_report(patient, study, prior_study, np.random.default_rng([seed, patient.index, study.index, 3]),
                          inst.radiologists)
    sr = build_reference_sr(
        ReportSections(report.findings, report.impression, report.comparison, report.indication),
        current=datasets, priors=prior_datasets, observer_name=report.observer,
        content_datetime=report.signed, institution_name=inst.name,
    )
    sr.save_as(folder / "report_sr.dcm", enforce_file_format=True)
    record = {
        "patient_id": patient.patient_id, "study_uid": study_uid, "accession": accession,
        "study_date": f"{study.when:%Y%m%d}", "study_time": f"{study.when:%H%M%S}",
        "institution": inst.code, "institution_name": inst.name, "sex": patient.sex,
        "age": header.age, "ethnic_group": patient.ethnic_group, "images": images,
        "report_sr": (folder / "report_sr.dcm").relative_to(out).as_posix(),
        "report": report.sections(),
        "labels": {obs: report.labels[obs] for obs in OBSERVATIONS},
        "findings": [f.record() for f in study.findings],
        "prior_study_uid": prior_uid, "study_index": study.index,
    }
    return record, datasets
