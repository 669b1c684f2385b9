"""Datasets as one sample format: :class:`Sample` (a study, its reference report, prior, demographics).

Loaders (one per file), all returning ``list[Sample]`` with priors linked:

====================================  ==========================================================
:func:`load_testbed`                  the synthetic testbed (``manifest.jsonl`` + DICOM)
:func:`load_mimic_cxr`                MIMIC-CXR-JPG + ``mimic_cxr_sectioned.csv`` (+ split CSV)
:func:`load_chexpert_plus`            CheXpert Plus ``df_chexpert_plus_240401.csv`` + images
:func:`load_rexgradient`              ReXGradient-160K metadata CSV/JSON + images
:func:`load_jsonl_manifest`           the project's plain JSONL manifest (schema in ``jsonl.py``)
:func:`load_dicom_folder`             a DICOM folder / PACS export: images + report SRs
:func:`load_dataset`                  any of the above by ``format`` (or ``"auto"``)
====================================  ==========================================================

Splits (:mod:`.splits`): patient-level by a seeded hash (:func:`split_by_patient`), a seeded share of patients
held out (:func:`holdout_split`, SFT's evaluation split), by institution (:func:`split_by_institution`). Timelines (:mod:`.longitudinal`):
:func:`link_priors`, :func:`longitudinal_pairs`.
"""

from unirg.trainer.data.chexpert_plus import load_chexpert_plus
from unirg.trainer.data.dicom_folder import load_dicom_folder
from unirg.trainer.data.jsonl import load_jsonl_manifest, sample_record, write_jsonl_manifest
from unirg.trainer.data.longitudinal import link_priors, longitudinal_pairs, timelines
from unirg.trainer.data.mimic import load_mimic_cxr
from unirg.trainer.data.registry import FORMATS, LOADERS, detect_format, load_dataset
from unirg.trainer.data.rexgradient import load_rexgradient
from unirg.trainer.data.sample import AGE_BANDS, ImageRef, Prior, Sample, age_band, section_text
from unirg.trainer.data.splits import (
    check_disjoint,
    holdout_split,
    split_by_institution,
    split_by_patient,
    split_of,
    write_holdout,
)
from unirg.trainer.data.testbed import load_testbed

__all__ = [
    "AGE_BANDS",
    "FORMATS",
    "LOADERS",
    "ImageRef",
    "Prior",
    "Sample",
    "age_band",
    "check_disjoint",
    "detect_format",
    "holdout_split",
    "link_priors",
    "load_chexpert_plus",
    "load_dataset",
    "load_dicom_folder",
    "load_jsonl_manifest",
    "load_mimic_cxr",
    "load_rexgradient",
    "load_testbed",
    "longitudinal_pairs",
    "sample_record",
    "section_text",
    "split_by_institution",
    "split_by_patient",
    "split_of",
    "write_holdout",
    "timelines",
    "write_jsonl_manifest",
]
