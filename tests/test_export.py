"""``unirg-trainer export``: a de-identified training set from the draft/final pairs (issue 12).

A fake site: the synthetic testbed's studies, copied into a data dir with a private block, other patient
ids and a comment naming the patient added to every image, and one ``unirg_feedback`` row per study inserted
with SQLAlchemy (the final report names the patient, the MRN, the accession and the referring physician).
Then the real command runs, and every exported byte is searched for the source identifiers.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.datadict import tag_for_keyword
from sqlalchemy import create_engine, select

from conftest import require_postgres
from dicom_peers import postgres_database

from unirg.model.feedback import create_schema, feedback
from unirg.trainer.cli import main
from unirg.trainer.data import detect_format, load_dataset
from unirg.trainer.export import ExportError, _check_headers
from unirg.trainer.export_deid import EMPTY_IDS, ID_KEYWORDS, REMOVE, scrub_text

pytestmark = [pytest.mark.testbed(patients=3, seed=0, size=128), pytest.mark.usefixtures("one_torch_thread")]
SEED = "test-secret"


def _date(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _long(yyyymmdd: str) -> str:
    return _date(yyyymmdd).strftime("%-d %B %Y")  # "15 July 2020", as report styles write dates


def _pixels(ds) -> str:
    return hashlib.sha256(ds.PixelData).hexdigest()


def _final_text(rec: dict, ds, prior_date: str | None) -> str:
    name, ref = ds.PatientName, ds.ReferringPhysicianName
    compared = (f" Compared with {prior_date[:4]}-{prior_date[4:6]}-{prior_date[6:]} (seen {_long(prior_date)})."
                if prior_date else "")
    return (f"Findings: Patient {name.given_name} {name.family_name.upper()} (MRN {ds.PatientID}, accession "
            f"{ds.AccessionNumber}), referred by Dr. {ref.family_name}.{compared} {rec['report']['findings']}\n"
            f"Impression: {rec['report']['impression']}")


@pytest.fixture(scope="module")
def site(testbed, tmp_path_factory):
    """(data dir, source facts): images with extra identifiers and a queue database of feedback rows."""
    data_dir = tmp_path_factory.mktemp("site")
    (data_dir / "instances").mkdir()
    by_uid = {rec["study_uid"]: rec for rec in testbed.records}
    engine = create_engine(f"sqlite:///{data_dir / 'unirg.sqlite3'}")
    create_schema(engine)
    source = {"identifiers": set(), "names": set(), "uids": set(), "pixels": {}, "studies": {}}
    rows = []
    for n, rec in enumerate(testbed.records):
        images = []
        for i, img in enumerate(rec["images"]):
            ds = pydicom.dcmread(testbed.root / img["path"])
            ds.OtherPatientIDs = f"OLD{ds.PatientID}X"
            ds.ImageComments = f"{ds.PatientName.family_name} portable"
            block = ds.private_block(0x0009, "ACME SITE 1.0", create=True)
            block.add_new(0x01, "LO", f"{ds.PatientID} {ds.PatientName}")
            target = data_dir / "instances" / f"{n}-{i}.dcm"
            ds.save_as(target, enforce_file_format=True)
            # relative paths (to the data dir) and absolute ones both occur in the table
            images.append({"path": str(target.relative_to(data_dir)) if i % 2 == 0 else str(target),
                           "view": "frontal" if img["view"] in ("PA", "AP") else "lateral"})  # as capture.py
            name = ds.PatientName
            source["identifiers"] |= {ds.PatientID, ds.AccessionNumber, ds.OtherPatientIDs}
            source["names"] |= {name.family_name, name.given_name, ds.ReferringPhysicianName.family_name,
                                ds.ReferringPhysicianName.given_name}
            source["uids"] |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
            source["pixels"][_pixels(ds)] = ds
        prior = by_uid.get(rec.get("prior_study_uid") or "")
        source["studies"][rec["study_uid"]] = rec
        rows.append(dict(
            study_uid=rec["study_uid"], patient_id=rec["patient_id"], study_date=rec["study_date"],
            model_version="demo-v1" if n < len(testbed.records) - 1 else "demo-v2",
            draft_sop_uid=f"2.25.{n}1", final_sop_uid=f"2.25.{n}2", final_time=time.time(), source="import",
            draft_text="Findings: Normal. Impression: Normal.",
            final_text=_final_text(rec, ds, prior["study_date"] if prior else None), scores="{}",
            label_agreement=0.5, images=json.dumps(images),
            priors=json.dumps([rec["prior_study_uid"]] if rec.get("prior_study_uid") else []),
            drafted_at=time.time() - 60, paired_at=1_700_000_000 + n * 86_400,
        ))
    with engine.begin() as c:
        c.execute(feedback.insert(), rows)
    engine.dispose()
    names = {s for s in source.pop("names") if s}
    source["short_names"] = {s for s in names if len(s) < 5}
    source["identifiers"] = {s for s in source["identifiers"] if s} | (names - source["short_names"])
    return data_dir, source


def _export(data_dir: Path, out: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["export", "--data-dir", str(data_dir), "--out", str(out), *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def exported(site, tmp_path_factory):
    data_dir, _ = site
    out = tmp_path_factory.mktemp("export") / "out"
    output = _export(data_dir, out, "--seed", SEED)
    assert "exported 4 studies" in output and "1 prior links" in output
    return out


def _dicoms(out: Path) -> list[Path]:
    return sorted((out / "images").rglob("*.dcm"))


def test_no_source_identifier_in_any_exported_byte(site, exported):
    _, source = site
    files = [p for p in exported.rglob("*") if p.is_file()]
    assert len(_dicoms(exported)) == len(source["pixels"]) and (exported / "manifest.jsonl") in files
    for path in files:
        data = path.read_bytes()
        for ident in source["identifiers"]:
            for variant in {ident, ident.upper(), ident.lower(), ident.title()}:
                assert variant.encode() not in data, f"{variant!r} found in {path.relative_to(exported)}"
        for name in source["short_names"]:  # "Ito" is in "dicognito": short names count as whole words
            found = re.search(rb"(?<![A-Za-z])" + re.escape(name.encode()) + rb"(?![A-Za-z])", data, re.IGNORECASE)
            assert found is None, f"{name!r} found in {path.relative_to(exported)}"
        for uid in source["uids"]:
            assert uid.encode() not in data, f"a source UID is left in {path.relative_to(exported)}"


def test_headers_follow_the_basic_profile(exported):
    for path in _dicoms(exported):
        ds = pydicom.dcmread(path)
        assert not [e for e in ds.iterall() if e.tag.is_private]
        assert ds.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert {"113100", "113107"} <= codes and ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.PatientName == ds.PatientID and ds.PatientID.startswith("P")
        for keyword in ("InstitutionName", "StationName", "OtherPatientIDs", "ImageComments", "StudyDescription",
                        "DeviceSerialNumber", "IssuerOfPatientID"):
            assert keyword not in ds
        assert ds.AccessionNumber == "" and ds.ReferringPhysicianName == "" and ds.PatientBirthDate == ""
        assert "SourceApplicationEntityTitle" not in ds.file_meta
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_dates_shift_by_one_offset_per_patient_and_uids_map_consistently(site, exported):
    _, source = site
    offsets, studies, series = defaultdict(set), defaultdict(set), defaultdict(set)
    manifest = [json.loads(line) for line in (exported / "manifest.jsonl").read_text().splitlines()]
    by_study = {rec["study_id"]: rec for rec in manifest}
    for path in _dicoms(exported):
        new = pydicom.dcmread(path)
        old = source["pixels"][_pixels(new)]  # pixel data is untouched: it names the source file
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
            offsets[old.PatientID].add((_date(new[keyword].value) - _date(old[keyword].value)).days)
        assert new.StudyTime == old.StudyTime  # whole days: times stay
        studies[old.StudyInstanceUID].add(new.StudyInstanceUID)
        series[old.SeriesInstanceUID].add(new.SeriesInstanceUID)
        assert new.StudyInstanceUID != old.StudyInstanceUID and new.SOPInstanceUID != old.SOPInstanceUID
        rec = by_study[new.StudyInstanceUID]
        assert rec["study_date"] == new.StudyDate and rec["patient_id"] == new.PatientID
        assert path.relative_to(exported).as_posix() in {img["path"] for img in rec["images"]}
    assert all(len(v) == 1 for v in (*offsets.values(), *studies.values(), *series.values()))
    assert len({next(iter(v)) for v in studies.values()}) == len(studies) == len(manifest)
    per_patient = {pid: next(iter(v)) for pid, v in offsets.items()}
    assert all(-730 <= d <= -62 for d in per_patient.values())
    assert len(set(per_patient.values())) > 1  # per patient, not one offset for everyone


def test_manifest_loads_with_the_trainers_reader_and_the_prior_resolves(site, exported):
    _, source = site
    assert detect_format(exported) == "jsonl"
    samples = load_dataset(exported)
    assert len(samples) == 4 and all(s.images and (s.findings or s.impression) for s in samples)
    # the pair's "frontal"/"lateral" made specific by the image's ViewPosition, so SFT finds the frontal
    assert {i.view for s in samples for i in s.images} <= {"PA", "AP", "LL", "RL", "LATERAL"} and all(s.frontal for s in samples)
    explicit = [json.loads(line) for line in (exported / "manifest.jsonl").read_text().splitlines()
                if "prior_study_id" in line]
    assert len(explicit) == 1
    current = next(s for s in samples if s.study_id == explicit[0]["study_id"])
    prior = next(s for s in samples if s.study_id == explicit[0]["prior_study_id"])
    assert current.prior.study_id == prior.study_id and current.patient_id == prior.patient_id
    src_current = next(r for r in source["studies"].values() if r.get("prior_study_uid"))
    src_prior = source["studies"][src_current["prior_study_uid"]]
    assert (_date(current.study_date) - _date(prior.study_date)) == (
        _date(src_current["study_date"]) - _date(src_prior["study_date"]))  # the interval is kept
    # the report text: names and ids gone, the date it quotes shifted like the prior study's date
    assert "___" in current.findings and f"{prior.study_date[:4]}-{prior.study_date[4:6]}-" in current.findings
    assert f"(seen {_long(prior.study_date)})" in current.findings
    manifest = (exported / "manifest.jsonl").read_text()
    source_date = src_prior["study_date"]
    assert _long(source_date) not in manifest and f"{source_date[:4]}-{source_date[4:6]}-{source_date[6:]}" not in manifest
    assert src_current["report"]["impression"].split("\n")[0] in current.impression


def test_same_seed_same_bytes_and_filters(site, exported, tmp_path):
    data_dir, _ = site
    again = tmp_path / "again"
    _export(data_dir, again, "--seed", SEED)
    files = sorted(p.relative_to(exported) for p in exported.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((exported / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    assert "exported 3 studies" in _export(data_dir, other, "--seed", "another", "--model-version", "demo-v1")
    ids = {json.loads(line)["patient_id"] for line in (exported / "manifest.jsonl").read_text().splitlines()}
    assert ids.isdisjoint(json.loads(line)["patient_id"]
                          for line in (other / "manifest.jsonl").read_text().splitlines())
    assert "exported 2 studies" in _export(data_dir, tmp_path / "late", "--seed", SEED, "--since",
                                           "2023-11-16T22:13:20+00:00")  # paired_at of the 3rd and 4th rows
    result = CliRunner().invoke(main, ["export", "--data-dir", str(data_dir), "--out", str(again), "--seed", SEED])
    assert result.exit_code != 0 and "--overwrite" in result.output


def test_queue_url_reads_the_pairs_from_postgresql(site, exported, tmp_path):
    require_postgres()
    data_dir, _ = site
    lite = create_engine(f"sqlite:///{data_dir / 'unirg.sqlite3'}")
    with lite.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(select(feedback))]
    lite.dispose()
    with postgres_database() as url:
        pg = create_engine(url)
        create_schema(pg)
        with pg.begin() as c:
            c.execute(feedback.insert(), rows)
        pg.dispose()
        empty = tmp_path / "empty-data-dir"  # no SQLite file there: the pairs come from PostgreSQL
        empty.mkdir()
        (empty / "instances").symlink_to(data_dir / "instances")  # the relative image paths
        _export(empty, tmp_path / "pg", "--seed", SEED, "--queue-url", url)
    assert (tmp_path / "pg" / "manifest.jsonl").read_bytes() == (exported / "manifest.jsonl").read_bytes()
    assert not (empty / "unirg.sqlite3").exists()


def test_fails_closed_when_an_identifier_survives():
    ds = pydicom.Dataset()
    ds.StudyDescription = "Chest for Ada LOVELACE"
    with pytest.raises(ExportError, match="StudyDescription") as info:
        _check_headers(ds, {"Lovelace"})
    assert "LOVELACE" not in str(info.value).upper()
    assert scrub_text("Ms Lovelace, seen 3/1/2024.", {"LOVELACE"}, -2) == "Ms ___, seen 2/28/2024."


def test_profile_keywords_are_dicom_keywords():
    assert not [k for k in REMOVE | EMPTY_IDS | ID_KEYWORDS if tag_for_keyword(k) is None]


def test_sft_trains_on_the_export(exported, tmp_path):
    model = tmp_path / "model"
    result = CliRunner().invoke(main, [
        "sft", "--data", str(exported), "--out", str(model), "--init", "tiny-qwen3-vl",
        "--institutions", "all",  # the export names no institution (Basic Profile)
        "--max-steps", "2", "--batch-size", "2", "--image-size", "64", "--hidden-size", "64", "--layers", "2",
        "--vision-hidden-size", "32", "--eval-fraction", "0", "--save-steps", "0", "--threads", "1",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((model / "unirg-model.json").read_text())
    assert manifest["training"]["steps"] == 2 and manifest["training"]["train_examples"] == 4
    assert manifest.get("training_data") != "synthetic"  # a manifest may be real data: no synthetic label
