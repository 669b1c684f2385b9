"""The write-back allow-list against real DCMTK storescp receivers on loopback: a destination not in
``[store] destinations`` raises DestinationNotAllowed and receives nothing (not even an association);
an allowed one receives the SR, which validates clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from dicom_peers import free_port, make_cxr, wait_for
from pydicom import dcmread

from unirg.plugin.config import Peer, StoreConfig
from unirg.plugin.store import DestinationNotAllowed, SRStore
from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr

pytestmark = pytest.mark.skipif(not shutil.which("storescp"), reason="needs DCMTK storescp (scripts/bootstrap.sh)")


class StoreSCP:
    """DCMTK storescp on a free loopback port, writing what it receives into ``folder``."""

    def __init__(self, folder: Path, aet: str) -> None:
        self.folder, self.aet, self.port = folder, aet, free_port()
        folder.mkdir(parents=True)
        self.log = folder.parent / f"{aet}.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(["storescp", "-v", "-aet", aet, "-od", str(folder), str(self.port)],
                                         stdout=fh, stderr=subprocess.STDOUT)
        wait_for(self._listening, 20, 0.1, "storescp listening")
        wait_for(self._logged, 10, 0.05, "storescp logging the probe")  # it logs a bare TCP connect too
        self.baseline = self._logged()

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def peer(self) -> Peer:
        return Peer(self.aet, "127.0.0.1", self.port)

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def _logged(self) -> int:
        return self.log.read_text(errors="replace").count("Association Received")

    def associations(self) -> int:
        """Associations since start-up (the readiness probe not counted)."""
        return self._logged() - self.baseline

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def receivers(tmp_path):
    allowed = StoreSCP(tmp_path / "allowed", "PACS_OK")
    other = StoreSCP(tmp_path / "other", "PACS_NO")
    yield allowed, other
    allowed.stop()
    other.stop()


def _draft():
    images = [make_cxr(patient_id="ALLOW-1", view="PA", seed=1)]
    return build_draft_sr(ReportSections("Lungs clear.", "No acute disease."),
                          ModelInfo("allowlist-test", "1", "ab" * 32), current=images)


def test_destination_not_on_the_allow_list_gets_nothing(receivers, tmp_path, validate_sr):
    allowed, other = receivers
    store = SRStore(StoreConfig(destinations=[str(allowed.peer)], connect_timeout_s=2, acse_timeout_s=5,
                                dimse_timeout_s=10), tmp_path / "local")
    sr = _draft()
    near_miss = Peer(allowed.aet, "127.0.0.1", other.port)  # the allowed AE title at another address
    for refused in ([other.peer], [near_miss], [allowed.peer, other.peer]):
        with pytest.raises(DestinationNotAllowed, match=r"not in \[store\] destinations"):
            store.store(sr, destinations=refused)
    local = tmp_path / "local" / str(sr.StudyInstanceUID) / f"{sr.SOPInstanceUID}.dcm"
    with pytest.raises(DestinationNotAllowed):
        store.send(local if local.exists() else store.keep_local(sr), other.peer)
    assert other.received() == [] and other.associations() == 0
    assert allowed.received() == [] and allowed.associations() == 0  # a mixed list sends to no one

    outcome = store.store(sr)  # the allow-list itself
    assert outcome.delivered == [str(allowed.peer)]
    (got,) = wait_for(allowed.received, 10, 0.1, "the SR at the allowed receiver")
    assert dcmread(got).SOPInstanceUID == sr.SOPInstanceUID
    validate_sr(got)
    assert other.received() == [] and other.associations() == 0
