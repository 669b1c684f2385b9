"""Priors by Query/Retrieve against a real Orthanc: C-FIND by PatientID, most recent N earlier CR/DX
studies, retrieval by C-GET or C-MOVE, the signed report chosen over our own drafts; a PACS that is down,
or accepts TCP and never answers, gives "no priors" with the reason and never raises."""

import datetime
import socket
import threading
import time

import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLSLossless

from dicom_peers import free_port, make_cxr, save, sr_writer_ready, write_study
import orthanc_fixture
from unirg.plugin.config import PriorsConfig
from unirg.plugin.priors import PriorsFetcher

orthanc_factory = orthanc_fixture.orthanc_factory  # the fixture, for this module

pytestmark = pytest.mark.skipif(not sr_writer_ready(), reason="unirg.sr_writer not available")

PATIENT = "PRIORS-1"
PRIOR_FINDINGS = {"20220301": "Small left pleural effusion.", "20230615": "Mild cardiomegaly, no effusion."}


def reference_sr(images, findings, when):
    from unirg.sr_writer import ReportSections, build_reference_sr

    return build_reference_sr(ReportSections(findings=findings, impression="See findings."), current=images,
                              observer_name="Radiologist^Test", content_datetime=when)


def draft_sr(images):
    from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr

    model = ModelInfo(name="unirg-stub-pipeline", version="0", weights_sha256="0" * 64)
    return build_draft_sr(ReportSections(findings="OUR OLD DRAFT", impression="draft"), model, images)


@pytest.fixture
def pacs(orthanc_factory, tmp_path):
    """Orthanc holding: two earlier studies of PATIENT with signed reports (and our own newer unverified
    draft in the last one), a study of PATIENT *after* the current one, and another patient's study."""
    move_port = free_port()
    orthanc = orthanc_factory(modalities={"unirg": ("UNIRG", "127.0.0.1", free_port()),
                                          "unirg-priors": ("UNIRG_PRIORS", "127.0.0.1", move_port)})
    for date, findings in PRIOR_FINDINGS.items():
        paths = write_study(tmp_path / date, patient_id=PATIENT, study_date=date, seed=int(date))
        if date == "20230615":  # stored compressed: C-GET must offer the stored syntax (no transcoding)
            ds = dcmread(paths[0])
            ds.compress(JPEGLSLossless)
            ds.save_as(paths[0], enforce_file_format=True)
        images = [dcmread(p) for p in paths]
        sr = reference_sr(images, findings, datetime.datetime.strptime(date + "1200", "%Y%m%d%H%M"))
        orthanc.upload(*paths, save(sr, tmp_path / date / "report.dcm"))
        if date == "20230615":
            orthanc.upload(save(draft_sr(images), tmp_path / date / "draft.dcm"))
    orthanc.upload(*write_study(tmp_path / "later", patient_id=PATIENT, study_date="20250101", seed=3))
    orthanc.upload(*write_study(tmp_path / "other", patient_id="SOMEONE-ELSE", study_date="20230101", seed=4))
    orthanc.move_port = move_port
    return orthanc


def current_study():
    return [make_cxr(patient_id=PATIENT, study_date="20240105", view=v, seed=i) for i, v in enumerate(["PA", "LL"])]


def test_cget_finds_the_most_recent_earlier_study_with_its_signed_report(pacs):
    fetcher = PriorsFetcher(PriorsConfig(pacs=pacs.peer, max_priors=1))
    priors = fetcher.fetch(current_study())
    assert priors.reason is None
    assert [p.study_date for p in priors] == ["20230615"]
    prior = priors[0]
    assert len(prior.images) == 2 and {str(ds.ViewPosition) for ds in prior.images} == {"PA", "LL"}
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in prior.images} == {JPEGLSLossless, "1.2.840.10008.1.2.1"}
    assert all(ds.pixel_array.shape == (64, 64) for ds in prior.images)
    assert prior.report is not None and prior.report.VerificationFlag == "VERIFIED"
    assert prior.read_report().findings == PRIOR_FINDINGS["20230615"]  # not our own newer draft


def test_cget_most_recent_n_newest_first(pacs):
    priors = PriorsFetcher(PriorsConfig(pacs=pacs.peer, max_priors=5)).fetch(current_study())
    assert [p.study_date for p in priors] == ["20230615", "20220301"]  # not the 2025 study, not the other patient
    assert [p.read_report().findings for p in priors] == list(reversed(PRIOR_FINDINGS.values()))


def test_cmove_to_our_own_short_lived_scp(pacs):
    cfg = PriorsConfig(pacs=pacs.peer, max_priors=1, retrieve="move", move_ae_title="UNIRG_PRIORS",
                       move_port=pacs.move_port)
    priors = PriorsFetcher(cfg).fetch(current_study())
    assert priors.reason is None and len(priors) == 1
    assert len(priors[0].images) == 2 and priors[0].read_report().findings == PRIOR_FINDINGS["20230615"]


def test_pacs_down_gives_no_priors_with_the_reason():
    cfg = PriorsConfig(pacs=f"ORTHANC@127.0.0.1:{free_port()}", connect_timeout_s=2, acse_timeout_s=2)
    t0 = time.monotonic()
    priors = PriorsFetcher(cfg).fetch(current_study())
    assert list(priors) == [] and "unreachable or not answering" in priors.reason
    assert time.monotonic() - t0 < 10


def test_pacs_that_accepts_tcp_but_never_answers_times_out_with_the_reason():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    cfg = PriorsConfig(pacs=f"SLOW@127.0.0.1:{server.getsockname()[1]}", connect_timeout_s=2, acse_timeout_s=1.5)
    t0 = time.monotonic()
    priors = PriorsFetcher(cfg).fetch(current_study())
    took = time.monotonic() - t0
    server.close()
    assert list(priors) == [] and "SLOW@" in priors.reason
    assert 1.0 < took < 10


def test_no_pacs_or_no_patient_id():
    assert "no PACS configured" in PriorsFetcher(PriorsConfig()).fetch(current_study()).reason
    ds = current_study()
    for d in ds:
        del d.PatientID
    assert "no PatientID" in PriorsFetcher(PriorsConfig(pacs="X@127.0.0.1:1")).fetch(ds).reason
