"""The Storage SCP against DCMTK storescu/echoscu and pynetdicom SCUs on loopback: every common transfer
syntax, Verification, calling-AE allow-list, TLS, association limit, and malformed / hostile input
(the right DIMSE status or a logged skip; the server keeps serving)."""

import ssl
import subprocess

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom import uid as pduid
import pynetdicom
from pynetdicom import AE
from pynetdicom import sop_class as sc

from dicom_peers import (
    DX_PRESENTATION,
    dcmtk_available,
    dcmtk_convert,
    echoscu,
    free_port,
    make_cxr,
    save,
    storescu,
    storescu_profile,
    storescu_successes,
    wait_for,
)
from unirg.plugin.config import Config, apply_overrides
from unirg.plugin.service import ListenerService as Service
from unirg.plugin.receive import InstanceSink

pytestmark = [
    pytest.mark.skipif(not dcmtk_available(), reason="DCMTK tools not installed"),
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),  # the hostile UIDs are the point
    pytest.mark.filterwarnings("ignore:The value length"),
    pytest.mark.filterwarnings("ignore:End of file reached before delimiter"),
]


@pytest.fixture
def scp(tmp_path):
    services = []

    def start(**overrides):
        cfg = apply_overrides(Config(), {
            "listener.host": "127.0.0.1", "listener.port": free_port(), "listener.data_dir": str(tmp_path / "data"),
            "assembly.inactivity_timeout_s": 60, **overrides,
        })
        svc = Service(cfg, listen=True, workers=0).start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        svc.stop()


def pynetdicom_scu(port, contexts, calling="SCU", ssl_context=None, **assoc_kw):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    tls = (ssl_context, "localhost") if ssl_context else None
    return ae, ae.associate("127.0.0.1", port, ae_title="UNIRG", tls_args=tls, **assoc_kw)


def test_storescu_every_common_transfer_syntax(scp, tmp_path):
    svc = scp()
    base16 = save(make_cxr(view="PA", seed=1), tmp_path / "src" / "base16.dcm")
    base8 = save(make_cxr(view="PA", seed=2, bits=8), tmp_path / "src" / "base8.dcm")
    files = {pduid.ExplicitVRLittleEndian: base16}
    for how, ts, src in [
        ("implicit", pduid.ImplicitVRLittleEndian, base16),
        ("big", pduid.ExplicitVRBigEndian, base16),
        ("deflate", pduid.DeflatedExplicitVRLittleEndian, base16),
        ("jpeg-lossless-sv1", pduid.JPEGLosslessSV1, base16),
        ("jpeg-lossless", pduid.JPEGLossless, base16),
        ("jpeg-extended", pduid.JPEGExtended12Bit, base16),
        ("jpeg-baseline", pduid.JPEGBaseline8Bit, base8),
        ("jpegls", pduid.JPEGLSLossless, base16),
        ("jpegls-near", pduid.JPEGLSNearLossless, base16),
        ("rle", pduid.RLELossless, base16),
    ]:
        files[ts] = dcmtk_convert(src, tmp_path / "ts" / f"{how}.dcm", how)
    for ts in (pduid.JPEG2000Lossless, pduid.JPEG2000):  # DCMTK has no JPEG 2000 encoder: pydicom's
        ds = make_cxr(view="PA", seed=3)
        ds.compress(ts, j2k_cr=[5] if ts == pduid.JPEG2000 else None)
        files[ts] = save(ds, tmp_path / "ts" / f"j2k-{ts}.dcm")
    # distinct SOP Instance UIDs per file, so every one is a new instance
    paths = []
    for i, (ts, path) in enumerate(files.items()):
        subprocess.run(["dcmodify", "-nb", "-m", f"SOPInstanceUID=1.2.826.0.1.3680043.10.50.{i}",
                        "-m", "StudyInstanceUID=1.2.826.0.1.3680043.10.50", str(path)], check=True,
                       capture_output=True)
        paths.append(path)
    profile = storescu_profile(tmp_path / "storescu.cfg", [str(ts) for ts in files])
    proc = storescu(paths, svc.listener.port, extra=profile)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert storescu_successes(out) == len(paths), out
    rows = svc.services.ledger.instances_of("1.2.826.0.1.3680043.10.50")
    assert len(rows) == len(files) and {r["status"] for r in rows} == {"stored"}
    stored_ts = set()
    for row in rows:
        ds = dcmread(tmp_path / "data" / row["path"])
        stored_ts.add(ds.file_meta.TransferSyntaxUID)
        assert ds.pixel_array.shape == (64, 64)  # complete and decodable
    assert stored_ts == set(files), "each file kept the transfer syntax it was sent in"
    assert not list((tmp_path / "data").rglob("*.tmp-*"))


def test_verification_and_calling_ae_allow_list(scp, tmp_path):
    svc = scp(**{"listener.allow_ae": ["PACS1"]})
    assert echoscu(svc.listener.port, calling="PACS1").returncode == 0
    bad = echoscu(svc.listener.port, calling="INTRUDER")
    assert bad.returncode != 0 and "Association Rejected" in bad.stdout + bad.stderr
    study = tmp_path / "s"
    files = [save(make_cxr(view="PA"), study / "a.dcm")]
    assert storescu(files, svc.listener.port, calling="INTRUDER").returncode != 0
    assert storescu(files, svc.listener.port, calling="PACS1").returncode == 0


def test_tls(scp, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    svc = scp(**{"tls.enabled": True, "tls.cert_file": str(cert), "tls.key_file": str(key)})
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ae, assoc = pynetdicom_scu(svc.listener.port, [(sc.Verification, None)], ssl_context=client)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    ae.shutdown()
    assert echoscu(svc.listener.port).returncode != 0  # plain DICOM to a TLS port fails


def test_pdu_size_and_association_limit(scp):
    svc = scp(**{"listener.max_associations": 1, "listener.max_pdu": 65536})
    ae1, first = pynetdicom_scu(svc.listener.port, [(sc.Verification, None)])
    assert first.is_established and first.acceptor.maximum_length == 65536
    ae2, second = pynetdicom_scu(svc.listener.port, [(sc.Verification, None)])
    assert second.is_rejected
    first.release()
    ae1.shutdown()
    ae2.shutdown()
    assert echoscu(svc.listener.port).returncode == 0


def _send_file(port, path, abstract):
    ts = dcmread(path, force=True, stop_before_pixels=True).file_meta.TransferSyntaxUID
    ae, assoc = pynetdicom_scu(port, [(abstract, [ts])])
    assert assoc.is_established
    status = assoc.send_c_store(path)  # the file's bytes are sent as they are, not re-encoded
    assoc.release()
    ae.shutdown()
    return status


def test_malformed_and_hostile_input_gets_a_failure_status_and_the_scp_keeps_serving(scp, tmp_path, monkeypatch):
    # send every file's bytes as they are (pynetdicom would otherwise parse and re-encode them)
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    svc = scp(**{"listener.max_instance_mb": 4})
    port = svc.listener.port
    good = make_cxr(view="PA", size=128)
    raw = save(good, tmp_path / "good.dcm").read_bytes()

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) - 5000])
    assert int(_send_file(port, truncated, DX_PRESENTATION).Status) == 0xA900

    no_study = make_cxr(view="PA", sop_uid="1.2.826.0.1.3680043.10.60.1")
    del no_study.StudyInstanceUID
    status = _send_file(port, save(no_study, tmp_path / "nostudy.dcm"), DX_PRESENTATION)
    assert int(status.Status) == 0xA900 and "StudyInstanceUID" in status.ErrorComment

    hostile_uid = make_cxr(view="PA", study_uid="../../../etc", sop_uid="1.2.826.0.1.3680043.10.60.2")
    assert int(_send_file(port, save(hostile_uid, tmp_path / "hostile.dcm"), DX_PRESENTATION).Status) == 0xA900

    no_pixels = make_cxr(view="PA", sop_uid="1.2.826.0.1.3680043.10.60.3")
    del no_pixels.PixelData
    status = _send_file(port, save(no_pixels, tmp_path / "nopixels.dcm"), DX_PRESENTATION)
    assert int(status.Status) == 0xA900 and "PixelData" in status.ErrorComment

    meta_only = Dataset()  # valid file meta, then bytes that are no dataset at all
    meta_only.file_meta = FileMetaDataset(good.file_meta)
    garbage = save(meta_only, tmp_path / "garbage.dcm")
    garbage.write_bytes(garbage.read_bytes() + b"\x08\x00\x16\x00UI\xff\x7f" + b"\xfe" * 300)
    status = _send_file(port, garbage, DX_PRESENTATION)
    assert int(status.Status) in (0xA900, 0xC000), status

    huge = make_cxr(view="PA", sop_uid="1.2.826.0.1.3680043.10.60.4")
    huge.add_new(0x00091010, "OB", b"\0" * (5 * 1024 * 1024))  # private 5 MiB element, over the 4 MiB limit
    huge.add_new(0x00090010, "LO", "HOSTILE")
    assert int(_send_file(port, save(huge, tmp_path / "huge.dcm"), DX_PRESENTATION).Status) == 0xA700

    # a CR dataset offered on the DX context
    cr = make_cxr(view="PA", modality="CR", sop_uid="1.2.826.0.1.3680043.10.60.5")
    cr.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
    cr.preamble = b"\0" * 128
    cr.save_as(tmp_path / "cr_as_dx.dcm", enforce_file_format=False)  # keeps the lying file meta
    status = _send_file(port, tmp_path / "cr_as_dx.dcm", DX_PRESENTATION)
    assert int(status.Status) == 0xA900 and "presentation context" in status.ErrorComment

    # a SOP class we do not serve (CT) gets no presentation context
    ct = make_cxr(view="PA", sop_uid="1.2.826.0.1.3680043.10.60.6")
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = sc.CTImageStorage
    proc = storescu([save(ct, tmp_path / "ct.dcm")], port)
    assert proc.returncode != 0 or storescu_successes(proc.stdout + proc.stderr) == 0

    # SR and secondary capture are accepted and recorded as skipped, with the reason
    sr = make_cxr(view="PA", sop_uid="1.2.826.0.1.3680043.10.60.7", study_uid="1.2.826.0.1.3680043.10.61")
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = sc.SecondaryCaptureImageStorage
    assert int(_send_file(port, save(sr, tmp_path / "sc.dcm"), sc.SecondaryCaptureImageStorage).Status) == 0
    row = svc.services.ledger.instances_of("1.2.826.0.1.3680043.10.61")[0]
    assert row["status"] == "skipped" and "Secondary Capture" in row["reason"]

    # nothing of the refused ones was recorded or left behind; the good one still goes in
    assert svc.services.ledger.instances_of(str(good.StudyInstanceUID)) == []
    assert int(_send_file(port, tmp_path / "good.dcm", DX_PRESENTATION).Status) == 0
    assert len(svc.services.ledger.instances_of(str(good.StudyInstanceUID))) == 1
    assert not list((tmp_path / "data").rglob("*.tmp-*"))
    assert not (tmp_path / "etc").exists()
    assert echoscu(port).returncode == 0


def test_a_failing_dependency_becomes_0xC211_and_the_server_survives(scp, tmp_path, caplog):
    svc = scp()

    class BrokenLedger:
        def record_instance(self, *a, **k):
            raise RuntimeError("database is on fire")

    svc.listener.sink.ledger = BrokenLedger()
    status = _send_file(svc.listener.port, save(make_cxr(view="PA"), tmp_path / "a.dcm"), DX_PRESENTATION)
    assert int(status.Status) == 0xC211 and "RuntimeError" in status.ErrorComment
    assert "event=store_failed status=0xC211" in caplog.text
    assert echoscu(svc.listener.port).returncode == 0


def test_instances_are_written_before_success_and_a_leftover_temp_file_is_removed(tmp_path):
    data = tmp_path / "data"
    stale = data / "instances" / "1.2.3" / ".4.5.dcm.tmp-abc"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    cfg = apply_overrides(Config(), {"listener.host": "127.0.0.1", "listener.port": free_port(),
                                     "listener.data_dir": str(data)})
    svc = Service(cfg, listen=True, workers=0).start()
    try:
        assert not stale.exists()
        path = save(make_cxr(view="PA"), tmp_path / "a.dcm")
        assert storescu([path], svc.listener.port).returncode == 0
        # the answer came after the file and its row were durable
        rows = svc.services.ledger.instances_of(str(dcmread(path).StudyInstanceUID))
        assert (data / rows[0]["path"]).read_bytes()[128:132] == b"DICM"
        assert isinstance(svc.listener.sink, InstanceSink)
    finally:
        svc.stop()


def test_expected_views_queue_the_study_immediately(scp, tmp_path):
    svc = scp(**{"assembly.inactivity_timeout_s": 600})
    paths = [save(make_cxr(view=v, seed=i), tmp_path / f"{v}.dcm") for i, v in enumerate(["PA", "LL"])]
    assert storescu(paths, svc.listener.port).returncode == 0
    study = str(dcmread(paths[0]).StudyInstanceUID)
    wait_for(lambda: svc.services.ledger.study(study)["state"] == "queued", 10, 0.05)
    assert svc.services.queue.counts().queued == 1
