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

from dicom_peers import free_port, make_cxr, save, write_study
from unirg.plugin.config import PriorsConfig
from unirg.plugin.priors.dimse import PriorsFetcher


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


# -- the one prior policy (unirg.plugin.prior_policy) over DIMSE --------------------------------------
def test_human_preliminary_report_beats_newer_unirg_and_other_ai_drafts_and_reaches_the_prompt(
        orthanc_factory, tmp_path, validate_sr):
    """The newest SR of the prior is our own draft (and another vendor's AI report): the radiologist's
    preliminary report is still the prior report, in the prompt and in the SR's evidence."""
    from prior_reports import human_report, other_ai_report, our_draft
    from unirg.model.prompt import build_prompt
    from unirg.model.study import Draft
    from unirg.plugin.pipeline import prepare_study, sr_from_draft
    from unirg.sr_writer import ModelInfo

    orthanc = orthanc_factory(modalities={"unirg": ("UNIRG", "127.0.0.1", free_port())})
    paths = write_study(tmp_path / "prior", patient_id=PATIENT, study_date="20230615", seed=7)
    images = [dcmread(p) for p in paths]
    t0 = datetime.datetime(2023, 6, 15, 12, 0)
    prelim = human_report(images, "Preliminary: small right effusion.", t0, verified=False, complete=False)
    later = t0 + datetime.timedelta(days=2)
    orthanc.upload(*paths, save(prelim, tmp_path / "prior" / "prelim.dcm"),
                   save(our_draft(images, "OUR OLD DRAFT", later), tmp_path / "prior" / "draft.dcm"),
                   save(other_ai_report(images, "OTHER AI", later), tmp_path / "prior" / "other.dcm"))
    priors = PriorsFetcher(PriorsConfig(pacs=orthanc.peer, max_priors=1)).fetch(current_study())
    assert priors.reason is None and len(priors) == 1
    assert priors[0].report.SOPInstanceUID == prelim.SOPInstanceUID
    prepared = prepare_study(current_study(), priors)
    prompt = build_prompt(prepared.study_input).text_only()
    assert "Prior report: Findings: Preliminary: small right effusion." in prompt
    draft = Draft.from_text("Findings: Clear.\nImpression: Normal.", prompt_text=prompt,
                            model_info=ModelInfo("unirg-tests", "1"))
    sr = sr_from_draft(draft, prepared, content_datetime=datetime.datetime(2024, 1, 5, 11))
    used = {r.ReferencedSOPInstanceUID for st in sr.PertinentOtherEvidenceSequence
            for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    frontal = next(ds for ds in images if ds.ViewPosition == "PA")
    assert used == {frontal.SOPInstanceUID, prelim.SOPInstanceUID}
    validate_sr(save(sr, tmp_path / "out.dcm"))


def test_max_age_limits_the_cfind_to_recent_priors(pacs):
    priors = PriorsFetcher(PriorsConfig(pacs=pacs.peer, max_priors=5, max_age="1Y")).fetch(current_study())
    assert priors.reason is None and [p.study_date for p in priors] == ["20230615"]
    priors = PriorsFetcher(PriorsConfig(pacs=pacs.peer, max_priors=5, max_age="2Y")).fetch(current_study())
    assert [p.study_date for p in priors] == ["20230615", "20220301"]


def test_skip_local_reads_a_prior_held_by_the_listener_and_still_asks_for_its_report(pacs, tmp_path):
    """The listener received the 2023 study itself (ledger + data dir): its images are read from there,
    not retrieved again; its report SR is still retrieved from the PACS."""
    from unirg.plugin.assemble import StudyLedger, classify_instance
    from unirg.plugin.priors.dimse import LocalPriors
    from unirg.plugin.queue import make_engine
    from unirg.plugin.receive import InstanceSink

    ledger = StudyLedger(make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))
    ledger.create_schema()
    data_dir = tmp_path / "data"
    for path in (tmp_path / "20230615").glob("*.dcm"):
        ds = dcmread(path)
        if ds.Modality == "SR":
            continue
        ds.ImageComments = "held by the listener"
        rel = InstanceSink.relative_path(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
        save(ds, data_dir / rel)
        ledger.record_instance(classify_instance(ds), rel, "SENDER")
    local = LocalPriors(ledger, data_dir)

    priors = PriorsFetcher(PriorsConfig(pacs=pacs.peer, max_priors=2), local=local).fetch(current_study())
    assert priors.reason is None and [p.study_date for p in priors] == ["20230615", "20220301"]
    held, other = priors
    assert len(held.images) == 2 and {ds.get("ImageComments") for ds in held.images} == {"held by the listener"}
    assert held.read_report().findings == PRIOR_FINDINGS["20230615"]  # the report still came from the PACS
    assert len(other.images) == 2 and all("ImageComments" not in ds for ds in other.images)

    again = PriorsFetcher(PriorsConfig(pacs=pacs.peer, max_priors=1, skip_local=False), local=local)
    [fresh] = again.fetch(current_study())
    assert len(fresh.images) == 2 and all("ImageComments" not in ds for ds in fresh.images)
