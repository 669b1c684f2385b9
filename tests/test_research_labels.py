"""Research labels at the door: sr_writer.check_research_labels, every store path, and the worker.

The stores are tested against a real Orthanc (C-STORE and REST); the worker with a pluggable pipeline
that returns an unlabelled SR (a signed-looking report, or a draft with one label stripped).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path

import pytest
from pydicom import Dataset

from dicom_factories import make_chest_image, write_image
from unirg.plugin.assemble import Assembler, classify_instance
from unirg.plugin.config import apply_overrides, load_config
from unirg.plugin.service import open_services
from unirg.plugin.orthanc.source import OrthancClient, OrthancSRStore
from unirg.plugin.store import SRStore
from unirg.plugin.worker import Worker
from unirg.sr_writer import (
    ModelInfo,
    ReportSections,
    ResearchLabelMissing,
    build_draft_sr,
    build_reference_sr,
    check_research_labels,
    missing_research_labels,
    write_dataset_atomic,
)


MODEL = ModelInfo("unirg-door-test", "0.1", hashlib.sha256(b"door test weights").hexdigest())
REPORT = ReportSections("No focal consolidation.", "No acute cardiopulmonary process.")


def _current() -> list[Dataset]:
    return [make_chest_image(study="DOOR"), make_chest_image(study="DOOR", image=2, view="LL")]


def draft() -> Dataset:
    return build_draft_sr(REPORT, MODEL, _current())


def signed_looking() -> Dataset:
    """What a careless pipeline could return: a COMPLETE / VERIFIED report with a person observer."""
    return build_reference_sr(REPORT, current=_current(), observer_name="Doe^John",
                              content_datetime=dt.datetime(2024, 1, 2, 10, 30))


def _strip_disclaimer(sr: Dataset) -> Dataset:
    sr.ContentSequence = [item for item in sr.ContentSequence
                          if not (item.get("ValueType") == "CONTAINER"
                                  and item.ConceptNameCodeSequence[0].CodeValue == "121111")]
    return sr


def _strip_weights_hash(sr: Dataset) -> Dataset:
    for item in sr.ContributingEquipmentSequence:
        if "DeviceSerialNumber" in item:
            del item.DeviceSerialNumber
    return sr


def _set(keyword: str, value: str):
    def strip(sr: Dataset) -> Dataset:
        setattr(sr, keyword, value)
        return sr
    return strip


STRIPPED = {
    "PreliminaryFlag": _set("PreliminaryFlag", "FINAL"),
    "CompletionFlag": _set("CompletionFlag", "COMPLETE"),
    "VerificationFlag": _set("VerificationFlag", "VERIFIED"),
    "SeriesDescription": _set("SeriesDescription", "Chest X-ray report"),
    "disclaimer": _strip_disclaimer,
    "ContributingEquipmentSequence": _strip_weights_hash,
}


# --- the pure check ----------------------------------------------------------------------------


def test_a_draft_passes_and_a_shorter_ai_draft_series_label_is_fine(validate_sr, tmp_path):
    sr = draft()
    check_research_labels(sr)
    assert missing_research_labels(sr) == []
    sr.SeriesDescription = "AI DRAFT - Research only"  # the OHIF-friendly short label some may choose
    check_research_labels(sr)
    validate_sr(write_dataset_atomic(draft(), tmp_path / "draft.dcm"))


@pytest.mark.parametrize("label", sorted(STRIPPED))
def test_each_missing_label_is_named(label):
    sr = STRIPPED[label](draft())
    with pytest.raises(ResearchLabelMissing) as info:
        check_research_labels(sr)
    assert len(info.value.missing) == 1 and label in info.value.missing[0]
    assert label in str(info.value) and sr.SOPInstanceUID in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_missing_label_is_named_at_once():
    with pytest.raises(ResearchLabelMissing) as info:
        check_research_labels(signed_looking())
    text = str(info.value)
    for label in ("PreliminaryFlag", "CompletionFlag", "VerificationFlag", "SeriesDescription", "disclaimer",
                  "ContributingEquipmentSequence"):
        assert label in text
    assert len(info.value.missing) == 6
    assert check_research_labels.__module__ == "unirg.sr_writer.labels"


def test_disclaimer_must_be_a_summary_text_item_and_the_hash_64_hex_digits():
    sr = _strip_disclaimer(draft())
    finding = sr.ContentSequence[-1].ContentSequence[0]
    finding.TextValue = "NOT FOR CLINICAL USE. " + finding.TextValue  # not the Summary heading: no disclaimer
    assert [m for m in missing_research_labels(sr) if "disclaimer" in m]
    sr = draft()
    for item in sr.ContributingEquipmentSequence:
        if "DeviceSerialNumber" in item:
            item.DeviceSerialNumber = "unknown"
    assert [m for m in missing_research_labels(sr) if "weights SHA-256" in m]
    assert missing_research_labels(None) and "not a DICOM dataset" in missing_research_labels(None)[0]


# --- every store path refuses, against a real Orthanc ------------------------------------------


def _sr_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm")) if folder.exists() else []


def _config(tmp_path: Path, **overrides):
    return apply_overrides(load_config(None, env={}), {"listener.data_dir": str(tmp_path / "data"), **overrides})


def test_sr_store_refuses_unlabelled_srs_on_every_path_and_sends_nothing(orthanc_factory, tmp_path, caplog):
    orthanc = orthanc_factory()
    cfg = _config(tmp_path, **{"store.destinations": [orthanc.peer]})
    local = tmp_path / "sr"
    store = SRStore(cfg.store, local, "UNIRG")
    caplog.set_level(logging.INFO, logger="unirg")
    for label, strip in STRIPPED.items():
        with pytest.raises(ResearchLabelMissing, match=label):
            store.store(strip(draft()))
        with pytest.raises(ResearchLabelMissing, match=label):
            store.keep_local(strip(draft()))
    # a file written by someone else still cannot be sent
    foreign = tmp_path / "foreign.dcm"
    write_dataset_atomic(signed_looking(), foreign)
    with pytest.raises(ResearchLabelMissing, match="PreliminaryFlag"):
        store.send(foreign, cfg.store.peers[0])
    assert _sr_files(local) == [] and orthanc.instance_count() == 0
    assert "event=sr_refused" in caplog.text and "destination=local" in caplog.text

    outcome = store.store(draft())  # the labelled draft goes through the very same store
    assert outcome.delivered == [orthanc.peer] and orthanc.instance_count() == 1


def test_orthanc_rest_store_refuses_unlabelled_srs(orthanc_factory, tmp_path):
    orthanc = orthanc_factory()
    local = tmp_path / "sr"
    store = OrthancSRStore(OrthancClient(orthanc.url, None, 30), local)
    with pytest.raises(ResearchLabelMissing, match="VerificationFlag"):
        store.store(signed_looking())
    with pytest.raises(ResearchLabelMissing, match="disclaimer"):
        store.store(_strip_disclaimer(draft()))
    assert _sr_files(local) == [] and orthanc.instance_count() == 0
    store.store(draft())
    assert orthanc.instance_count() == 1 and len(_sr_files(local)) == 1


# --- the worker's door ---------------------------------------------------------------------------


def _queued_study(cfg) -> tuple:
    """Open the queue and ledger, write a two-view study into the data dir, queue it."""
    services = open_services(cfg)
    for ds in _current():
        path = write_image(ds, cfg.data_dir / "in")
        services.ledger.record_instance(classify_instance(ds), str(path.relative_to(cfg.data_dir)))
    study_uid = str(_current()[0].StudyInstanceUID)
    assert Assembler(services.ledger, services.queue, cfg.assembly).check(study_uid, stable=True).state == "ready"
    return services, study_uid


@pytest.mark.parametrize("store_kind", ["c-store", "orthanc-rest"])
@pytest.mark.parametrize("unlabelled", ["signed-looking", "no disclaimer"])
def test_worker_refuses_an_unlabelled_sr_from_the_pipeline(orthanc_factory, tmp_path, caplog, store_kind,
                                                           unlabelled):
    orthanc = orthanc_factory()
    cfg = _config(tmp_path, **{"store.destinations": [orthanc.peer]})
    services, study_uid = _queued_study(cfg)
    store = (SRStore(cfg.store, cfg.sr_dir, "UNIRG") if store_kind == "c-store"
             else OrthancSRStore(OrthancClient(orthanc.url, None, 30), cfg.sr_dir))
    make = signed_looking if unlabelled == "signed-looking" else (lambda: _strip_disclaimer(draft()))
    calls = []

    def process_study(current, priors):
        calls.append(len(current))
        return make()

    worker = Worker(services.queue, services.ledger, process_study, store, cfg.data_dir, worker_id="door-test")
    caplog.set_level(logging.INFO, logger="unirg")
    try:
        assert worker.run_once()
        assert calls == [2]
        (job,) = services.queue.find(study_uid)
        assert job["state"] == "dead" and job["attempts"] == 1  # permanent: no retry
        assert "refused" in job["last_error"] and "disclaimer" in job["last_error"]
        assert services.ledger.study(study_uid)["state"] == "failed"
        assert not worker.run_once()  # nothing left to retry
        assert _sr_files(cfg.sr_dir) == [] and orthanc.instance_count() == 0
        refused = [r.getMessage() for r in caplog.records if "event=sr_refused" in r.getMessage()]
        assert refused and f"study={study_uid}" in refused[0] and "disclaimer" in refused[0]
    finally:
        services.close()


def test_worker_stores_a_labelled_sr_from_the_same_setup(orthanc_factory, tmp_path):
    """The control: the same worker and store with a labelled draft deliver it."""
    orthanc = orthanc_factory()
    cfg = _config(tmp_path, **{"store.destinations": [orthanc.peer]})
    services, study_uid = _queued_study(cfg)
    worker = Worker(services.queue, services.ledger, lambda current, priors: draft(),
                    SRStore(cfg.store, cfg.sr_dir, "UNIRG"), cfg.data_dir, worker_id="door-test")
    try:
        assert worker.run_once()
        (job,) = services.queue.find(study_uid)
        assert job["state"] == "done" and orthanc.instance_count() == 1 and len(_sr_files(cfg.sr_dir)) == 1
    finally:
        services.close()


def test_labels_module_imports_nothing_of_ours():
    source = (Path(__file__).resolve().parents[1] / "sr_writer" / "labels.py").read_text()
    assert "unirg" not in "".join(line for line in source.splitlines() if line.startswith(("import", "from")))
