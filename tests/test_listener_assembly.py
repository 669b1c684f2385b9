"""Study assembly: classification, readiness (expected views / inactivity timeout), skips with reasons,
late-instance policies, concurrent recording, and SR revisions for re-runs. No network."""

import threading
import time

import pytest
from pydicom import Dataset

from dicom_peers import make_cxr
from unirg.plugin.assemble import Assembler, InstanceInfo, StudyLedger, assess_study, classify_instance
from unirg.plugin.config import AssemblyConfig
from unirg.plugin.queue import JobQueue, make_engine
from unirg.plugin.worker import deterministic_uid, revise_sr

STUDY = "1.2.826.0.1.3680043.10.1"


def sr_dataset(study_uid=STUDY, sop="1.2.826.0.1.3680043.10.99"):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = sop + ".1"
    ds.Modality = "SR"
    return ds


def test_classify_instance():
    pa = classify_instance(make_cxr(view="PA"))
    assert (pa.kind, pa.view, pa.chest) == ("image", "frontal", True)
    assert classify_instance(make_cxr(view="LL", modality="CR")).view == "lateral"
    assert classify_instance(make_cxr(view="AP", body_part="HAND")).is_chest_image is False
    sr = classify_instance(sr_dataset())
    assert sr.kind == "other" and "Enhanced SR" in sr.reason
    ds = make_cxr()
    del ds.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        classify_instance(ds)


def info(view="frontal", kind="image", chest=True, body_part="CHEST", sop="1"):
    return InstanceInfo(sop, "1.2.840.10008.5.1.4.1.1.1.1", STUDY, "2", "DX", kind, view, body_part, chest)


@pytest.mark.parametrize(
    "instances, idle, state, reason",
    [
        ([info("frontal"), info("lateral")], 0, "ready", "expected views received"),
        ([info("frontal")], 1, "wait", ""),
        ([info("frontal")], 5, "ready", "inactivity timeout (5 s)"),
        ([info(None)], 5, "ready", "inactivity timeout (5 s)"),
        ([info("frontal", chest=False, body_part="HAND")], 5, "skip", "non-chest study (BodyPartExamined HAND"),
        ([info(None, kind="other")], 5, "skip", "no CR/DX image"),
        ([info("frontal", chest=False, body_part="HAND"), info("lateral", chest=False)], 0, "wait", ""),
    ],
)
def test_assess_study(instances, idle, state, reason):
    verdict = assess_study(instances, idle_s=idle, expected_views=["frontal", "lateral"], inactivity_timeout_s=5)
    assert verdict.state == state and verdict.reason.startswith(reason)


@pytest.fixture
def ledger_queue(db_url):
    engines = []

    def make(late_policy="ignore", timeout=0.5, views=("frontal", "lateral")):
        engine = make_engine(db_url)
        engines.append(engine)
        queue = JobQueue(engine)
        queue.create_schema()
        ledger = StudyLedger(engine, late_policy=late_policy)
        ledger.create_schema()
        cfg = AssemblyConfig(expected_views=list(views), inactivity_timeout_s=timeout, late_policy=late_policy)
        return ledger, queue, Assembler(ledger, queue, cfg)

    yield make
    for e in engines:
        e.dispose()


def record(ledger, assembler, ds):
    status = ledger.record_instance(classify_instance(ds), f"/data/{ds.SOPInstanceUID}.dcm", "SENDER")
    assembler.check(str(ds.StudyInstanceUID))
    return status


def test_expected_views_make_the_study_ready_at_once(ledger_queue):
    ledger, queue, asm = ledger_queue(timeout=60)
    assert record(ledger, asm, make_cxr(study_uid=STUDY, view="PA")) == "stored"
    assert ledger.study(STUDY)["state"] == "collecting" and queue.counts().queued == 0
    record(ledger, asm, make_cxr(study_uid=STUDY, view="LL"))
    assert ledger.study(STUDY)["state"] == "queued"
    assert [j["revision"] for j in queue.find(STUDY)] == [0]


def test_inactivity_timeout_and_skips(ledger_queue):
    ledger, queue, asm = ledger_queue(timeout=0.3)
    record(ledger, asm, make_cxr(study_uid=STUDY, view="PA"))
    hand = "1.2.826.0.1.3680043.10.2"
    record(ledger, asm, make_cxr(study_uid=hand, view="PA", body_part="HAND"))
    only_sr = "1.2.826.0.1.3680043.10.3"
    assert record(ledger, asm, sr_dataset(only_sr)) == "skipped"
    asm.sweep()
    assert ledger.study(STUDY)["state"] == "collecting"
    time.sleep(0.4)
    asm.sweep()
    assert ledger.study(STUDY)["state"] == "queued"
    assert ledger.study(STUDY)["reason"].startswith("inactivity timeout")
    assert ledger.study(hand)["state"] == "skipped" and "non-chest" in ledger.study(hand)["reason"]
    assert ledger.study(only_sr)["state"] == "skipped" and "no CR/DX image" in ledger.study(only_sr)["reason"]
    reasons = {s["reason"] for s in ledger.skipped()}
    assert any("Enhanced SR" in r for r in reasons)
    assert queue.counts().queued == 1


def test_late_instance_ignored(ledger_queue):
    ledger, queue, asm = ledger_queue(late_policy="ignore")
    record(ledger, asm, make_cxr(study_uid=STUDY, view="PA"))
    record(ledger, asm, make_cxr(study_uid=STUDY, view="LL"))
    late = make_cxr(study_uid=STUDY, view="AP", seed=7, instance_number=3)
    assert record(ledger, asm, late) == "late"
    assert len(queue.find(STUDY)) == 1
    assert len(ledger.image_paths(STUDY)) == 2
    # our own SR coming back from the PACS is skipped and does not re-open the study
    assert record(ledger, asm, sr_dataset()) == "skipped"
    assert ledger.study(STUDY)["state"] == "queued"


def test_late_instance_rerun_opens_a_new_revision(ledger_queue):
    ledger, queue, asm = ledger_queue(late_policy="rerun", timeout=0.2)
    first = make_cxr(study_uid=STUDY, view="PA")
    record(ledger, asm, first)
    record(ledger, asm, make_cxr(study_uid=STUDY, view="LL"))
    assert record(ledger, asm, first) == "stored"  # a re-send of a known instance is not "late"
    assert ledger.study(STUDY)["revision"] == 0
    record(ledger, asm, make_cxr(study_uid=STUDY, view="AP", seed=7, instance_number=3))
    assert ledger.study(STUDY)["revision"] == 1
    time.sleep(0.3)
    asm.sweep()
    assert [j["revision"] for j in queue.find(STUDY)] == [0, 1]
    assert len(ledger.image_paths(STUDY)) == 3


def test_concurrent_instances_of_one_study_give_one_job(ledger_queue):
    ledger, queue, asm = ledger_queue(views=("frontal", "frontal", "lateral"), timeout=60)
    datasets = [make_cxr(study_uid=STUDY, view=v, seed=i, instance_number=i)
                for i, v in enumerate(["PA", "AP", "LL", "LL", "PA", "AP", "LL", "PA"])]
    errors = []

    def send(ds):
        try:
            record(ledger, asm, ds)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(ds,)) for ds in datasets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(queue.find(STUDY)) == 1
    statuses = {r["status"] for r in ledger.instances_of(STUDY)}
    assert statuses <= {"stored", "late"}


def test_revise_sr_gives_deterministic_new_uids_and_a_predecessor():
    def sr():
        ds = sr_dataset(sop="1.2.3.4")
        ds.SeriesInstanceUID = "1.2.3"
        return ds

    assert revise_sr(sr(), 0).SOPInstanceUID == "1.2.3.4"
    one, again = revise_sr(sr(), 1), revise_sr(sr(), 1)
    assert one.SOPInstanceUID == again.SOPInstanceUID != "1.2.3.4"
    assert one.SeriesInstanceUID != "1.2.3"
    assert revise_sr(sr(), 2).SOPInstanceUID != one.SOPInstanceUID
    pred = {"study_uid": STUDY, "series_uid": "1.2.3", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22",
            "sop_instance_uid": "1.2.3.4"}
    item = revise_sr(sr(), 1, pred).PredecessorDocumentsSequence[0]
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert deterministic_uid("a", "b") == deterministic_uid("a", "b") != deterministic_uid("a", "c")
    assert len(deterministic_uid("x" * 200)) <= 64
