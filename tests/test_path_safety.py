"""Paths built from DICOM UIDs never leave their root: the helper (unirg.plugin.paths), and the Orthanc
path end to end with instances whose UIDs hold ``../`` and an absolute path, uploaded through a real
Orthanc's REST API (``POST /instances``)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from dicom_peers import make_cxr, wait_for

from unirg.plugin.paths import UnsafePath, path_under, safe_component, uid_path
from unirg.plugin.orthanc.server import ORTHANC_BINARY


@pytest.mark.parametrize("uid", ["../x", "/abs", "1.2/../..", "..", "", "1.2.", "1..2", "1.2\\..", "1" * 65,
                                 "1.2.3\x00", "１.2"])
def test_safe_component_refuses_what_is_not_a_uid(uid):
    with pytest.raises(UnsafePath, match="not a DICOM UID"):
        safe_component(uid)


def test_path_under_and_uid_path(tmp_path):
    assert safe_component("1.2.840.10008.1") == "1.2.840.10008.1"
    assert uid_path(tmp_path, "1.2.3", "1.2.3.4") == tmp_path / "1.2.3" / "1.2.3.4.dcm"
    for study in ("../x", "/abs", "1.2/../.."):
        with pytest.raises(UnsafePath):
            uid_path(tmp_path, study, "1.2.3.4")
        with pytest.raises(UnsafePath):
            uid_path(tmp_path, "1.2.3", study)
    for parts in (("..", "x"), (str(tmp_path.parent),), ("a/../../b",), (".",)):
        with pytest.raises(UnsafePath):
            path_under(tmp_path, *parts)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "1.2").symlink_to(tmp_path.parent)  # a symlink out of the root
    with pytest.raises(UnsafePath, match="outside"):
        path_under(tmp_path / "root", "1.2", "1.3.dcm")


@pytest.fixture
def invalid_uids_allowed():
    """pydicom writes (and reads back) the hostile UIDs only with validation off, as a hostile sender would."""
    settings = pydicom.config.settings
    saved = settings.writing_validation_mode, settings.reading_validation_mode
    settings.writing_validation_mode = settings.reading_validation_mode = pydicom.config.IGNORE
    yield
    settings.writing_validation_mode, settings.reading_validation_mode = saved


@pytest.mark.slow
@pytest.mark.skipif(not Path(ORTHANC_BINARY).exists(), reason="needs Debian's orthanc (scripts/bootstrap.sh)")
def test_orthanc_path_writes_nothing_outside_its_dirs(tmp_path, invalid_uids_allowed):
    from test_orthanc_plugin_e2e import OrthancRun

    run = OrthancRun(tmp_path / "run")
    data = run.data  # <tmp>/run/data; the SR copies go to <data>/sr/<study>/<sop>.dcm
    escape = tmp_path / "escaped"
    hostile = {
        "1.2.3/../../../../escaped": "../../../../escaped-sop",  # relative: <data>/sr/1.2.3/../../../.. = <tmp>
        str(tmp_path / "absolute"): str(tmp_path / "absolute-sop"),  # absolute: replaces the whole path
    }
    run.start()
    try:
        for index, (study_uid, sop_uid) in enumerate(hostile.items()):
            ds = make_cxr(patient_id=f"EVIL{index}", study_uid=study_uid, sop_uid=sop_uid, seed=index)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            answer = run.session.post(run.url + "/instances", data=buf.getvalue(), timeout=30)
            answer.raise_for_status()
            assert answer.json()["Status"] == "Success"

            def settled(study_uid=study_uid):
                jobs = [j for j in run.get("/unirg/jobs").json()["jobs"] if j["study_uid"] == study_uid]
                return jobs if jobs and all(j["state"] in ("done", "failed", "dead") for j in jobs) else None

            try:
                jobs = wait_for(settled, 60, 0.3, f"the job of {study_uid!r}")
            except TimeoutError:
                raise AssertionError(f"{run.get('/unirg/jobs').json()}\n{run.log_text()[-6000:]}") from None
            assert [j["state"] for j in jobs] == ["dead"] and "not a DICOM UID" in jobs[0]["last_error"], jobs
    finally:
        run.stop_all()
    assert not escape.exists() and not (tmp_path / "absolute").exists()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and data not in p.parents
               and p.parent != run.tmp]  # run.tmp holds the config and the service logs
    assert outside == []
    assert not (data / "sr").exists() or not list((data / "sr").rglob("*.dcm"))
