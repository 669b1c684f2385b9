"""Our C-MOVE destination (priors, ``retrieve = "move"``) against a hostile DCMTK sender:
it listens on the configured interface only, accepts only the PACS's AE title, and keeps only
instances of the series being moved. The C-MOVE through a real Orthanc is in test_listener_priors.py."""

from __future__ import annotations

import logging

import pytest

from unirg.plugin.config import PriorsConfig
from unirg.plugin.priors.dimse import PriorsFetcher
from dicom_peers import dcmtk_available, free_port, make_cxr, save, storescu, storescu_successes

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK storescu not installed")


@pytest.fixture
def destination():
    port = free_port()
    config = PriorsConfig(pacs="THEPACS@127.0.0.1:4242", retrieve="move", move_ae_title="UNIRG_PRIORS",
                          move_port=port)
    fetcher = PriorsFetcher(config, calling_ae_title="UNIRG")
    bucket: list = []
    server = fetcher._start_move_destination(bucket)
    try:
        yield fetcher, bucket, server, port
    finally:
        server.shutdown()


def test_binds_the_configured_interface_only(destination):
    _fetcher, _bucket, server, _port = destination
    assert server.server_address[0] == "127.0.0.1"  # the default move_bind_address, not 0.0.0.0


def test_refuses_a_foreign_ae_and_an_unrequested_instance(destination, tmp_path, caplog):
    fetcher, bucket, _server, port = destination
    wanted = make_cxr(patient_id="P1", study_date="20230101", seed=1)
    other = make_cxr(patient_id="P9", study_date="20230202", seed=2)  # another patient's study
    wanted_file = save(wanted, tmp_path / "wanted.dcm")
    other_file = save(other, tmp_path / "other.dcm")
    fetcher._moving = (str(wanted.StudyInstanceUID), str(wanted.SeriesInstanceUID))

    foreign = storescu([wanted_file], port, calling="EVIL", called="UNIRG_PRIORS")
    assert foreign.returncode != 0 and storescu_successes(foreign.stdout + foreign.stderr) == 0
    assert "Association Rejected" in foreign.stdout + foreign.stderr
    assert bucket == []

    with caplog.at_level(logging.WARNING, logger="unirg.plugin.priors"):
        unasked = storescu([other_file], port, calling="THEPACS", called="UNIRG_PRIORS")
    output = unasked.stdout + unasked.stderr
    assert storescu_successes(output) == 0 and "Status: 0x124" in output  # Refused: Not Authorised
    assert bucket == [] and "event=move_store_refused" in caplog.text

    asked = storescu([wanted_file], port, calling="THEPACS", called="UNIRG_PRIORS")
    assert storescu_successes(asked.stdout + asked.stderr) == 1
    assert [str(ds.SOPInstanceUID) for ds in bucket] == [str(wanted.SOPInstanceUID)]
