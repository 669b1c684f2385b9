"""A plain JSONL manifest: one study per line, the project's own interchange format.

Schema (one JSON object per line; paths relative to the manifest's folder unless absolute)::

    {"patient_id": "P1",                 required
     "study_id": "S1",                   required
     "sample_id": "S1",                  optional, default study_id
     "images": [{"path": "p1/s1/frontal.dcm", "view": "PA"}],   or "image": "p1/s1/frontal.jpg"
     "findings": "...", "impression": "...",                    at least one non-empty
     "indication": "...", "comparison": "...",
     "institution": "A", "sex": "M"|"F", "age": 63, "study_date": "YYYYMMDD", "study_time": "HHMMSS",
     "sequence": 2, "split": "test", "labels": {"Cardiomegaly": 1, ...},
     "prior": {"study_id": "S0", "image": "p1/s0/frontal.dcm", "report": "...", "study_date": "..."},
     "prior_study_id": "S0"}             a study of the same file; or leave both out to link by dates

Unknown keys go to ``Sample.meta``. :func:`write_jsonl_manifest` writes samples back in this schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from unirg.trainer.data.longitudinal import link_priors, prior_of
from unirg.trainer.data.sample import (
    ImageRef,
    Prior,
    Sample,
    clean,
    normalize_sex,
    normalize_view,
    optional,
    parse_age,
    parse_date,
)
from unirg.trainer.data.tables import read_jsonl

KNOWN = frozenset({"patient_id", "study_id", "sample_id", "images", "image", "findings", "impression",
                   "indication", "comparison", "institution", "sex", "age", "study_date", "sequence", "split",
                   "labels", "prior", "prior_study_id", "source"})


def _path(root: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else root / p)


def _images(rec: dict, root: Path) -> tuple[ImageRef, ...]:
    items = rec.get("images")
    if items is None and rec.get("image"):
        items = [{"path": rec["image"]}]
    out = []
    for item in items or []:
        if isinstance(item, str):
            item = {"path": item}
        out.append(ImageRef(path=_path(root, item["path"]), view=normalize_view(item.get("view"))))
    return tuple(out)


def _sample(rec: dict, root: Path, where: str) -> Sample:
    for key in ("patient_id", "study_id"):
        if not clean(rec.get(key)):
            raise ValueError(f"{where}: missing {key!r}")
    if not (clean(rec.get("findings")) or clean(rec.get("impression"))):
        raise ValueError(f"{where}: needs findings or impression text")
    prior = None
    if isinstance(rec.get("prior"), dict):
        p = rec["prior"]
        prior = Prior(study_id=clean(p.get("study_id")) or "prior",
                      image=ImageRef(path=_path(root, p["image"])) if p.get("image") else None,
                      report=optional(p.get("report")), study_date=parse_date(p.get("study_date")))
    meta = {k: v for k, v in rec.items() if k not in KNOWN}
    return Sample(
        sample_id=clean(rec.get("sample_id")) or clean(rec["study_id"]), patient_id=clean(rec["patient_id"]),
        study_id=clean(rec["study_id"]), images=_images(rec, root), indication=optional(rec.get("indication")),
        comparison=optional(rec.get("comparison")), findings=clean(rec.get("findings")),
        impression=clean(rec.get("impression")), prior=prior, institution=optional(rec.get("institution")),
        sex=normalize_sex(rec.get("sex")), age=parse_age(rec.get("age")), study_date=parse_date(rec.get("study_date")),
        labels=rec.get("labels"), sequence=rec.get("sequence"), source=clean(rec.get("source")) or "jsonl",
        split=optional(rec.get("split")), meta=meta,
    )


def load_jsonl_manifest(path: str | os.PathLike[str], *, link: bool = True) -> list[Sample]:
    """Samples of a JSONL manifest (schema in the module docstring).

    Priors: an explicit ``prior`` object wins, then ``prior_study_id``; with ``link`` the remaining studies
    get the most recent earlier study of the patient by date.
    """
    path = Path(path)
    root = path.parent
    records = list(read_jsonl(path))
    samples = [_sample(rec, root, f"{path}:{i + 1}") for i, rec in enumerate(records)]
    by_study = {(s.patient_id, s.study_id): s for s in samples}
    out = []
    for rec, s in zip(records, samples, strict=True):
        ref = clean(rec.get("prior_study_id"))
        if s.prior is None and ref:
            before = by_study.get((s.patient_id, ref))
            if before is None:
                raise ValueError(f"{path}: study {s.study_id} names prior_study_id {ref!r}, not a study of "
                                 f"patient {s.patient_id} in this file")
            s = dataclasses.replace(s, prior=prior_of(before))
        out.append(s)
    return link_priors(out, overwrite=False) if link else out


def _rel(value: str | None, root: Path) -> str | None:
    if value is None:
        return None
    try:
        return Path(value).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return value


def sample_record(sample: Sample, root: Path | None = None) -> dict[str, Any]:
    """``sample`` as one manifest object (paths relative to ``root`` when inside it)."""
    root = root or Path("/")
    rec: dict[str, Any] = {
        "sample_id": sample.sample_id, "patient_id": sample.patient_id, "study_id": sample.study_id,
        "images": [{"path": _rel(i.path, root), "view": i.view} for i in sample.images if i.path is not None],
        "findings": sample.findings, "impression": sample.impression, "indication": sample.indication,
        "comparison": sample.comparison, "institution": sample.institution, "sex": sample.sex, "age": sample.age,
        "study_date": sample.study_date, "sequence": sample.sequence, "split": sample.split,
        "labels": dict(sample.labels) if sample.labels is not None else None, "source": sample.source,
    }
    if sample.prior is not None:
        p = sample.prior
        rec["prior"] = {"study_id": p.study_id, "image": _rel(p.image.path, root) if p.image else None,
                        "report": p.report, "study_date": p.study_date}
    for k, v in sample.meta.items():
        if k not in KNOWN:
            try:
                json.dumps(v)
            except TypeError:
                continue
            rec[k] = v
    return rec


def write_jsonl_manifest(samples: list[Sample], path: str | os.PathLike[str]) -> Path:
    """Write ``samples`` as a JSONL manifest (atomically: temp file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for s in samples:
            f.write(json.dumps(sample_record(s, path.parent)) + "\n")
    os.replace(tmp, path)
    return path
