"""OrthancPriors (the Orthanc worker's priors) against real Orthancs: the one prior policy chooses the
report (a human one only), ``max_age`` limits the C-FIND in a remote PACS, and ``skip_local`` decides
whether a prior Orthanc already holds is C-MOVEd again."""

from __future__ import annotations

import datetime

import pytest
from pydicom import dcmread

from dicom_peers import make_cxr, save, write_study
from prior_reports import human_report, other_ai_report, our_draft
from unirg.plugin.config import PriorsConfig
from unirg.plugin.orthanc.source import OrthancClient
from unirg.plugin.priors.orthanc import OrthancPriors


PATIENT = "ORTHANC-PRIORS-1"
T0 = datetime.datetime(2023, 6, 15, 12, 0)


def current_study():
    return [make_cxr(patient_id=PATIENT, study_date="20240105", view=v, seed=i) for i, v in enumerate(["PA", "LL"])]


def prior_study(tmp_path, date="20230615", seed=7):
    paths = write_study(tmp_path / date, patient_id=PATIENT, study_date=date, seed=seed)
    return paths, [dcmread(p) for p in paths]


def test_human_preliminary_report_beats_newer_unirg_and_other_ai_drafts(orthanc_factory, tmp_path):
    orthanc = orthanc_factory()
    paths, images = prior_study(tmp_path)
    prelim = human_report(images, "Preliminary: small right effusion.", T0, verified=False, complete=False)
    later = T0 + datetime.timedelta(days=2)
    orthanc.upload(*paths, save(prelim, tmp_path / "prelim.dcm"),
                   save(our_draft(images, "OUR OLD DRAFT", later), tmp_path / "draft.dcm"),
                   save(other_ai_report(images, "OTHER AI", later), tmp_path / "other.dcm"),
                   save(other_ai_report(images, "OTHER AI 2", later, how="equipment"), tmp_path / "other2.dcm"))
    client = OrthancClient(orthanc.url)
    try:
        priors = OrthancPriors(client, PriorsConfig(max_priors=1)).fetch(current_study())
    finally:
        client.close()
    assert priors.reason is None and len(priors) == 1
    assert priors[0].report.SOPInstanceUID == prelim.SOPInstanceUID
    assert priors[0].read_report().findings == "Preliminary: small right effusion."


@pytest.fixture
def local_and_remote(orthanc_factory, tmp_path):
    """Our Orthanc ("LOCAL", holding the 2023 prior's images only) and a remote PACS ("REMOTE", holding
    the 2023 prior with its signed report, and a 2017 study), each declared to the other."""
    local = orthanc_factory(aet="LOCAL")
    remote = orthanc_factory(aet="REMOTE")
    local.session.put(f"{local.url}/modalities/pacs", json={"AET": "REMOTE", "Host": "127.0.0.1",
                                                             "Port": remote.dicom_port}, timeout=10).raise_for_status()
    remote.session.put(f"{remote.url}/modalities/local", timeout=10,
                       json={"AET": "LOCAL", "Host": "127.0.0.1", "Port": local.dicom_port}).raise_for_status()
    paths, images = prior_study(tmp_path)
    signed = human_report(images, "Signed later: small right effusion.", T0 + datetime.timedelta(days=1))
    local.upload(*paths)
    remote.upload(*paths, save(signed, tmp_path / "signed.dcm"))
    old_paths, _ = prior_study(tmp_path, date="20170301", seed=20)
    remote.upload(*old_paths)
    return local, remote, signed


def test_skip_local_uses_what_orthanc_holds_and_false_moves_it_again(local_and_remote):
    local, remote, signed = local_and_remote
    client = OrthancClient(local.url)
    try:
        held = OrthancPriors(client, PriorsConfig(max_priors=1), ["pacs"]).fetch(current_study())
        assert held.reason is None and [p.study_date for p in held] == ["20230615"]
        assert held[0].report is None and local.instance_count() == 2  # not C-MOVEd: no report here
        fresh = OrthancPriors(client, PriorsConfig(max_priors=1, skip_local=False), ["pacs"]).fetch(current_study())
        assert fresh.reason is None and fresh[0].report.SOPInstanceUID == signed.SOPInstanceUID
        assert local.instance_count() == 3  # the signed report came with the C-MOVE
    finally:
        client.close()


def test_max_age_limits_the_remote_cfind(local_and_remote):
    local, _, _ = local_and_remote
    client = OrthancClient(local.url)
    try:
        recent = OrthancPriors(client, PriorsConfig(max_priors=5, max_age="5Y"), ["pacs"]).fetch(current_study())
        assert recent.reason is None and [p.study_date for p in recent] == ["20230615"]
        assert local.instance_count() == 2  # the 2017 study was neither found nor moved
        everything = OrthancPriors(client, PriorsConfig(max_priors=5), ["pacs"]).fetch(current_study())
        assert [p.study_date for p in everything] == ["20230615", "20170301"]  # the 2017 one C-MOVEd in
    finally:
        client.close()
