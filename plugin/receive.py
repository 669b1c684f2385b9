"""The Storage SCP: chest radiographs in by C-STORE, each written atomically before success is answered.

* :func:`build_ae` configures a pynetdicom ``AE`` (presentation contexts, calling-AE allow-list, PDU
  size, association limit, timeouts); :func:`ssl_context_from` builds the optional TLS context.
* :class:`InstanceSink` is the C-STORE logic with its dependencies (data dir, ledger, assembler):
  parse and check the dataset, write ``<data_dir>/instances/<study>/<sop>.dcm`` via temp file + fsync
  + rename, record it in the ledger, and let the assembler look at the study.
* :func:`handle_store` is the one place where any exception becomes a logged DIMSE failure status
  (with an ErrorComment for the sender), so the server never dies on a bad dataset.
* :class:`Listener` starts/stops the non-blocking server with the handlers injected as
  ``(event, handler, [deps])``.

CR and DX (for presentation and for processing) are processed; SR, key object selection, secondary
capture, presentation states and PDFs are accepted (a PACS forwarding a whole study must not fail) and
recorded as skipped with the reason. Any other SOP class gets no presentation context.
"""

from __future__ import annotations

import errno
import logging
import re
import ssl
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom import uid as pduid
from pynetdicom import AE, evt
from pynetdicom import sop_class as sc
from pynetdicom.transport import ThreadedAssociationServer

from unirg.plugin.assemble import IMAGE_SOP_CLASSES, Assembler, StudyLedger, classify_instance
from unirg.plugin.config import Config, ListenerConfig, TLSConfig
from unirg.plugin.feedback.capture import note_final
from unirg.plugin.paths import path_under, safe_component
from unirg.sr_writer.io import write_bytes_atomic

__all__ = [
    "TRANSFER_SYNTAXES",
    "IMAGE_SOP_CLASSES",
    "ACCEPTED_OTHER_SOP_CLASSES",
    "StoreRefused",
    "InstanceSink",
    "handle_store",
    "handle_echo",
    "build_ae",
    "ssl_context_from",
    "remove_partial_files",
    "Listener",
]

log = logging.getLogger(__name__)

#: Every common transfer syntax of CR/DX: uncompressed, deflate, JPEG (baseline, extended, lossless),
#: JPEG-LS, JPEG 2000, HTJ2K and RLE. We store what we get; decoding is the pipeline's business.
TRANSFER_SYNTAXES = [
    pduid.ExplicitVRLittleEndian,
    pduid.ImplicitVRLittleEndian,
    pduid.DeflatedExplicitVRLittleEndian,
    pduid.ExplicitVRBigEndian,
    pduid.JPEGLosslessSV1,
    pduid.JPEGLossless,
    pduid.JPEGLSLossless,
    pduid.JPEGLSNearLossless,
    pduid.JPEG2000Lossless,
    pduid.JPEG2000,
    pduid.HTJ2KLossless,
    pduid.HTJ2KLosslessRPCL,
    pduid.HTJ2K,
    pduid.RLELossless,
    pduid.JPEGBaseline8Bit,
    pduid.JPEGExtended12Bit,
]

#: Accepted so that forwarding a whole study never fails, recorded as skipped, never processed.
ACCEPTED_OTHER_SOP_CLASSES = [
    sc.BasicTextSRStorage,
    sc.EnhancedSRStorage,
    sc.ComprehensiveSRStorage,
    sc.Comprehensive3DSRStorage,
    sc.ExtensibleSRStorage,
    sc.XRayRadiationDoseSRStorage,
    sc.KeyObjectSelectionDocumentStorage,
    sc.SecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
    sc.GrayscaleSoftcopyPresentationStateStorage,
    sc.EncapsulatedPDFStorage,
]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# DIMSE statuses (PS3.4 Annex B / pynetdicom's convention for handler exceptions)
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC211


class StoreRefused(Exception):
    """A C-STORE we refuse on purpose: ``status`` goes back to the sender with ``str(self)``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def remove_partial_files(data_dir: Path) -> int:
    """Delete temp files a killed listener left behind; return how many. Call before serving."""
    n = 0
    for p in (data_dir / "instances").glob("*/.*.tmp-*"):
        p.unlink(missing_ok=True)
        n += 1
    if n:
        log.warning("event=partial_files_removed count=%d", n)
    return n


def _expected_native_length(ds: Dataset) -> int | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (n + 7) // 8 if bits == 1 else n * ((bits + 7) // 8)


def check_dataset(ds: Dataset, context_sop_class: str, affected_sop_instance: str) -> None:
    """Raise :class:`StoreRefused` (0xA900) when the dataset cannot be what the request says it is."""
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
        value = str(ds.get(key, "") or "")
        if not value:
            raise StoreRefused(DATASET_MISMATCH, f"missing {key}")
        if len(value) > 64 or not _UID_RE.match(value):
            raise StoreRefused(DATASET_MISMATCH, f"invalid {key}")
    if str(ds.SOPClassUID) != context_sop_class:
        raise StoreRefused(DATASET_MISMATCH, "SOPClassUID differs from the presentation context")
    if affected_sop_instance and str(ds.SOPInstanceUID) != affected_sop_instance:
        raise StoreRefused(DATASET_MISMATCH, "SOPInstanceUID differs from the C-STORE request")
    if str(ds.SOPClassUID) in IMAGE_SOP_CLASSES:
        if "PixelData" not in ds:
            raise StoreRefused(DATASET_MISMATCH, "image without PixelData (truncated?)")
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            expected = _expected_native_length(ds)
            if expected is None:
                raise StoreRefused(DATASET_MISMATCH, "image without Rows/Columns/BitsAllocated")
            if len(ds.PixelData) < expected:
                raise StoreRefused(DATASET_MISMATCH, "PixelData shorter than Rows x Columns (truncated)")


class InstanceSink:
    """Stores C-STORE datasets: check, write atomically, record, assemble.

    Parameters
    ----------
    data_dir : Path
        Instances go to ``data_dir/instances/<StudyInstanceUID>/<SOPInstanceUID>.dcm``; the ledger
        records the path relative to ``data_dir``.
    ledger : StudyLedger
        Records every instance (stored / skipped / late) before success is answered.
    assembler : Assembler | None
        Asked to check the study after each new image (fast path when the expected views are in).
    max_instance_bytes : int
        Larger datasets are refused with 0xA700 (0: no limit).
    """

    def __init__(
        self,
        data_dir: Path,
        ledger: StudyLedger,
        assembler: Assembler | None = None,
        max_instance_bytes: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.ledger = ledger
        self.assembler = assembler
        self.max_instance_bytes = max_instance_bytes

    @staticmethod
    def relative_path(study_uid: str, sop_uid: str) -> str:
        """Where an instance lives, relative to the data dir (what the ledger records, so workers on
        other machines can mount the data dir elsewhere)."""
        return f"instances/{safe_component(study_uid)}/{safe_component(sop_uid)}.dcm"

    def accept(self, event: evt.Event) -> int:
        """Handle one C-STORE request; return 0x0000 or raise (mapped by :func:`handle_store`)."""
        raw = event.encoded_dataset(include_meta=True)
        if self.max_instance_bytes and len(raw) > self.max_instance_bytes:
            raise StoreRefused(OUT_OF_RESOURCES, f"instance larger than {self.max_instance_bytes} bytes")
        try:
            ds = dcmread(BytesIO(raw))
            for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Rows", "Columns", "BitsAllocated"):
                ds.get(keyword)  # values are decoded lazily: decode the ones we check now
        except Exception as exc:
            raise StoreRefused(CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}") from exc
        check_dataset(ds, event.context.abstract_syntax, str(event.request.AffectedSOPInstanceUID or ""))
        info = classify_instance(ds)
        rel = self.relative_path(info.study_uid, info.sop_instance_uid)
        write_bytes_atomic(path_under(self.data_dir, *rel.split("/")), raw)
        calling_ae = str(event.assoc.requestor.ae_title)
        if info.modality.upper() == "SR":  # a report: noted for the feedback loop along with its record
            with self.ledger.transaction() as c:
                status = self.ledger.record_instance(info, rel, calling_ae, conn=c)
                if status == "skipped":
                    note_final(c, info.study_uid, "listener")
        else:
            status = self.ledger.record_instance(info, rel, calling_ae)
        log.info(
            "event=instance_received study=%s series=%s sop=%s view=%s status=%s calling_ae=%s bytes=%d",
            info.study_uid, info.series_uid, info.sop_instance_uid, info.view, status, calling_ae, len(raw),
        )
        if status == "skipped":
            log.info("event=instance_skipped study=%s sop=%s reason=%r",
                     info.study_uid, info.sop_instance_uid, info.reason)
        if status == "stored" and info.kind == "image" and self.assembler is not None:
            try:
                self.assembler.check(info.study_uid)
            except Exception:  # the instance is safe; the periodic sweep will look again
                log.exception("event=assembly_error study=%s", info.study_uid)
        return 0x0000


def _failure(status: int, comment: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp


def handle_store(event: evt.Event, sink: InstanceSink) -> int | Dataset:
    """EVT_C_STORE handler: the one place where any exception becomes a logged failure status.

    :class:`StoreRefused` -> its status; disk full -> 0xA700; anything else -> 0xC211.
    """
    try:
        return sink.accept(event)
    except StoreRefused as exc:
        status, comment = exc.status, str(exc)
        log.warning(
            "event=store_refused status=0x%04X reason=%r sop=%s calling_ae=%s",
            status, comment, event.request.AffectedSOPInstanceUID, event.assoc.requestor.ae_title,
        )
    except OSError as exc:
        status = OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else PROCESSING_FAILURE
        comment = f"storage error: {exc.strerror or type(exc).__name__}"
        log.exception("event=store_failed status=0x%04X sop=%s", status, event.request.AffectedSOPInstanceUID)
    except Exception as exc:
        status, comment = PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"
        log.exception("event=store_failed status=0x%04X sop=%s", status, event.request.AffectedSOPInstanceUID)
    return _failure(status, comment)


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO handler (Verification)."""
    log.debug("event=echo calling_ae=%s", event.assoc.requestor.ae_title)
    return 0x0000


def _log_rejected(event: evt.Event) -> None:
    rq = event.assoc.requestor
    log.warning("event=association_rejected calling_ae=%s address=%s", rq.ae_title, rq.address)


def _log_aborted(event: evt.Event) -> None:
    log.warning("event=association_aborted calling_ae=%s", event.assoc.requestor.ae_title)


def build_ae(config: ListenerConfig) -> AE:
    """A pynetdicom AE with our presentation contexts, allow-list, limits and timeouts."""
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.max_pdu
    ae.maximum_associations = config.max_associations
    ae.acse_timeout = config.acse_timeout_s
    ae.dimse_timeout = config.dimse_timeout_s
    ae.network_timeout = config.network_timeout_s
    ae.require_calling_aet = list(config.allow_ae)
    for cls in list(IMAGE_SOP_CLASSES) + list(ACCEPTED_OTHER_SOP_CLASSES):
        ae.add_supported_context(cls, TRANSFER_SYNTAXES)
    ae.add_supported_context(sc.Verification)
    return ae


def ssl_context_from(tls: TLSConfig) -> ssl.SSLContext | None:
    """The server-side TLS context, or ``None`` when TLS is off."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


class Listener:
    """The running Storage SCP (non-blocking); ``start()`` / ``stop()`` with the host process.

    Parameters
    ----------
    config : Config
        ``listener`` and ``tls`` sections are used.
    sink : InstanceSink
        Injected into the C-STORE handler.
    """

    def __init__(self, config: Config, sink: InstanceSink) -> None:
        self.config = config
        self.sink = sink
        self.ae = build_ae(config.listener)
        self.server: ThreadedAssociationServer | None = None

    def start(self) -> "Listener":
        cfg = self.config.listener
        if not cfg.allow_ae:
            log.warning("event=allow_list_empty note='any calling AE may store to %s'", cfg.ae_title)
        remove_partial_files(self.sink.data_dir)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [self.sink]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_REJECTED, _log_rejected),
            (evt.EVT_ABORTED, _log_aborted),
        ]
        self.server = self.ae.start_server(
            (cfg.host, cfg.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=ssl_context_from(self.config.tls),
        )
        log.info("event=listening ae_title=%s host=%s port=%d tls=%s", cfg.ae_title, cfg.host, self.port,
                 self.config.tls.enabled)
        return self

    @property
    def port(self) -> int:
        if self.server is None:
            return self.config.listener.port
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()
        log.info("event=listener_stopped")
