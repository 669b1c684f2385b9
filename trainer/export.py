"""``unirg-trainer export``: a de-identified training set from the draft/final pairs the plugin records.

Reads the ``unirg_feedback`` table (:mod:`unirg.model.feedback`) of the queue database, and writes

* ``OUT/images/<patient>/<study>/<instance>.dcm``: each paired study's images, de-identified
  (:mod:`unirg.trainer.export_deid`: PS3.15 Basic Profile with dicognito, dates shifted per patient);
* ``OUT/manifest.jsonl``: one study per line in the trainer's JSONL schema (:mod:`unirg.trainer.data.jsonl`):
  pseudonymous ``patient_id``, ``study_id`` = the remapped Study Instance UID, the signed final report (names,
  ids and institution of the headers scrubbed, dates shifted) split into ``findings`` / ``impression``, the
  shifted ``study_date``, ``sex``, ``age`` and ``prior_study_id`` when the study's prior is exported too;
* ``OUT/export.json``: counts and the de-identification method (no identifiers, no seed).

The secret ``seed`` keys every pseudonym, date offset and UID: the same seed gives the same bytes, and
exports made with one seed line up with each other. Nothing identifying is printed or logged; before each
file is written its headers and its manifest line are checked against the source identifiers, and the export
stops (fails closed) if one survived.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import create_engine

from unirg.model.feedback import QUEUE_FILE, FeedbackRecord, default_queue_url, read_pairs
from unirg.trainer.data.sample import FRONTAL_VIEWS, LATERAL_VIEWS, normalize_sex, normalize_view, parse_age
from unirg.trainer.evaluate.metrics import split_report
from unirg.trainer.export_deid import (
    DICOGNITO_VERSION,
    METHOD_CODES,
    Deidentifier,
    identifiers_of,
    leaked,
    scrub_text,
    shift_date,
)

log = logging.getLogger(__name__)

SEED_ENV = "UNIRG_EXPORT_SEED"
MANIFEST = "manifest.jsonl"


class ExportError(RuntimeError):
    """The export cannot go on (no database, OUT not empty, an identifier survived de-identification)."""


def parse_since(text: str) -> float:
    """Epoch seconds (UTC) of ``YYYY-MM-DD``, an ISO date-time, or a number of epoch seconds.

    >>> parse_since("2026-01-02"), parse_since("1767312000")
    (1767312000.0, 1767312000.0)
    """
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected YYYY-MM-DD, an ISO date-time or epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


@dataclass
class ExportSummary:
    """What one export wrote (counts only)."""

    out: Path
    studies: int = 0
    images: int = 0
    patients: int = 0
    prior_links: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"studies": self.studies, "images": self.images, "patients": self.patients,
                "prior_links": self.prior_links, "skipped": dict(sorted(self.skipped.items()))}


@dataclass
class _Study:
    record: FeedbackRecord
    patient: str                                   # source PatientID (never written)
    images: list[tuple[Path, Dataset, str | None]]  # (file, its headers without pixels, view)


def _view(recorded: str | None, ds: Dataset) -> str | None:
    """The view the pair recorded ("frontal" / "lateral" from the plugin's classifier), made specific by the
    image's ViewPosition when that agrees (PA, AP, LL, ...).

    >>> ds = Dataset(); ds.ViewPosition = "PA"
    >>> _view("frontal", ds), _view("lateral", ds), _view(None, ds)
    ('PA', 'LATERAL', 'PA')
    """
    view, position = normalize_view(recorded), normalize_view(ds.get("ViewPosition"))
    if view is None or (view == "FRONTAL" and position in FRONTAL_VIEWS) or (
            view == "LATERAL" and position in LATERAL_VIEWS):
        return position or view
    return view


def _load_study(record: FeedbackRecord, data_dir: Path, skipped: Counter) -> _Study | None:
    images = []
    for item in record.images:
        path = Path(str(item.get("path", "")))
        path = path if path.is_absolute() else data_dir / path
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)  # headers now, pixels when writing
        except (OSError, pydicom.errors.InvalidDicomError):
            skipped["image unreadable or missing"] += 1
            continue
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            skipped["image with burned-in annotation"] += 1
            continue
        images.append((path, ds, _view(item.get("view"), ds)))
    if not images:
        skipped["study without readable images"] += 1
        return None
    patient = record.patient_id or str(images[0][1].get("PatientID", ""))
    if not patient:
        skipped["study without a patient id"] += 1
        return None
    return _Study(record, patient, images)


_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UR", "AE", "CS"})


def _check_headers(ds: Dataset, identifiers: set[str]) -> None:
    """Fail closed when a source identifier is left in any text element of ``ds`` (pixel data aside)."""
    bad: list[str] = []

    def visit(_d: Dataset, elem: Any) -> None:
        if elem.VR not in _TEXT_VRS or elem.value is None:  # numbers and UIDs: no names, and ids would
            return                                          # match them by chance
        if leaked(str(elem.value), identifiers):
            bad.append(elem.keyword or str(elem.tag))

    ds.walk(visit)
    for elem in getattr(ds, "file_meta", None) or ():
        visit(ds.file_meta, elem)
    if bad:
        raise ExportError(f"an identifier survived de-identification in {', '.join(sorted(set(bad)))}; "
                          "nothing more is written")


def _age(ds: Dataset) -> int | None:
    age = parse_age(ds.get("PatientAge"))
    return min(age, 90) if age is not None else None


def export_training_set(pairs: list[FeedbackRecord], out: str | os.PathLike[str], *, seed: str,
                        data_dir: str | os.PathLike[str], overwrite: bool = False) -> ExportSummary:
    """De-identify the studies of ``pairs`` into ``out`` (see the module docstring); image paths in the
    pairs are taken relative to ``data_dir`` unless absolute."""
    out, data_dir = Path(out), Path(data_dir)
    if (out / MANIFEST).exists() or (out / "images").exists():
        if not overwrite:
            raise ExportError(f"{out} already holds an export; pass --overwrite to replace it")
        shutil.rmtree(out / "images", ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    summary = ExportSummary(out=out)
    deid = Deidentifier(seed)

    studies = [s for s in (_load_study(r, data_dir, summary.skipped) for r in pairs) if s is not None]
    identifiers: dict[str, set[str]] = defaultdict(set)
    for s in studies:
        identifiers[s.patient].add(s.patient)
        for _, ds, _ in s.images:
            identifiers[s.patient] |= identifiers_of(ds)

    entries = []  # (sort key, source study uid, record)
    for s in studies:
        ids, offset = identifiers[s.patient], deid.offset_days(s.patient)
        findings, impression = split_report(scrub_text(s.record.final_text or "", ids, offset))
        if not (findings or impression):
            summary.skipped["study with an empty final report"] += 1
            continue
        first = s.images[0][1]
        rec: dict[str, Any] = {
            "patient_id": deid.pseudonym(s.patient), "study_id": deid.uid(s.record.study_uid),
            "study_date": shift_date(s.record.study_date or first.get("StudyDate"), offset),
            "findings": findings, "impression": impression,
            "sex": normalize_sex(first.get("PatientSex")), "age": _age(first),
            "source": "unirg-feedback", "draft_model_version": s.record.model_version, "images": [],
        }
        rec["sample_id"] = rec["study_id"]
        folder = out / "images" / rec["patient_id"] / rec["study_id"]
        folder.mkdir(parents=True, exist_ok=True)
        for source, _, view in s.images:
            ds = deid.deidentify(pydicom.dcmread(source), s.patient)
            _check_headers(ds, ids)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            rec["images"].append({"path": path.relative_to(out).as_posix(), "view": view})
            summary.images += 1
        entries.append(((rec["patient_id"], rec["study_date"] or "", rec["study_id"]), s, rec))

    exported = {s.record.study_uid: rec for _, s, rec in entries}
    for _, s, rec in entries:
        before = [exported[u] for u in s.record.priors if u in exported and u != s.record.study_uid
                  and exported[u]["patient_id"] == rec["patient_id"]
                  and (exported[u]["study_date"] or "") <= (rec["study_date"] or "")]
        if before:
            rec["prior_study_id"] = max(before, key=lambda r: (r["study_date"] or "", r["study_id"]))["study_id"]
            summary.prior_links += 1

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for _, s, rec in sorted(entries, key=lambda e: e[0]):
            line = json.dumps(rec, sort_keys=True)
            if leaked(line, identifiers[s.patient]):
                tmp.unlink()
                raise ExportError("an identifier survived in a manifest line; nothing more is written")
            f.write(line + "\n")
    os.replace(tmp, out / MANIFEST)
    summary.studies = len(entries)
    summary.patients = len({rec["patient_id"] for _, _, rec in entries})
    method = {"profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
              "options": [meaning for code, meaning in METHOD_CODES if code != "113100"],
              "library": f"dicognito {DICOGNITO_VERSION}", "text": "header names, ids and institution -> ___; "
              "dates shifted by the patient's offset"}
    (out / "export.json").write_text(json.dumps({**summary.as_dict(), "deidentification": method}, indent=1) + "\n")
    return summary


@click.command("export")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The plugin's data dir: its queue database (unirg.sqlite3) and received images.")
@click.option("--queue-url", help="SQLAlchemy URL of the queue database (PostgreSQL); default the SQLite file "
              "in --data-dir.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: manifest.jsonl, images/, export.json.")
@click.option("--since", help="Only studies paired at or after this date (YYYY-MM-DD, ISO time, epoch s).")
@click.option("--model-version", help="Only studies drafted by this model version.")
@click.option("--seed", envvar=SEED_ENV, help=f"Secret that keys pseudonyms, date shifts and UIDs (or ${SEED_ENV}); "
              "the same seed gives the same export. Default: a random one (not comparable across exports).")
@click.option("--overwrite", is_flag=True, help="Replace an export already in OUT.")
def export(data_dir: Path, queue_url: str | None, out: Path, since: str | None, model_version: str | None,
           seed: str | None, overwrite: bool) -> None:
    """Write a de-identified training set (OUT/manifest.jsonl + DICOM) from the draft/final pairs.

    \b
    Train on it like any manifest:
      UNIRG_EXPORT_SEED=... unirg-trainer export --data-dir /var/lib/unirg --out var/export
      unirg-trainer sft --data var/export --institutions all --base ... --out ...
    """
    try:
        since_s = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if queue_url is None:
        if not (data_dir / QUEUE_FILE).is_file():
            raise click.ClickException(f"no queue database at {data_dir / QUEUE_FILE}; pass --queue-url")
        queue_url = default_queue_url(data_dir)
    if not seed:
        seed = secrets.token_hex(16)
        click.echo(f"no --seed (nor ${SEED_ENV}): using a random one; pseudonyms will not match other exports",
                   err=True)
    engine = create_engine(queue_url)
    try:
        pairs = read_pairs(engine, since=since_s, model_version=model_version)
    finally:
        engine.dispose()
    try:
        summary = export_training_set(pairs, out, seed=seed, data_dir=data_dir, overwrite=overwrite)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(summary.skipped.items())) or "none"
    click.echo(f"exported {summary.studies} studies ({summary.images} images, {summary.patients} patients, "
               f"{summary.prior_links} prior links) of {len(pairs)} pairs to {out / MANIFEST}; skipped: {skipped}")
