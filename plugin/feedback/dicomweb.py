"""The DICOMweb watcher's part of the feedback loop: a drafted study that shows a new SR series."""

from __future__ import annotations

import logging

from unirg.plugin.assemble import StudyLedger, classify_instance
from unirg.plugin.dicomweb.client import DicomWeb, qido_value
from unirg.plugin.feedback.capture import note_final
from unirg.plugin.paths import UnsafePath, safe_component
from unirg.plugin.prior_policy import is_own_draft

__all__ = ["record_reports"]

log = logging.getLogger(__name__)


def record_reports(client: DicomWeb, ledger: StudyLedger, study_uid: str) -> int:
    """Record the SR instances of ``study_uid`` the archive holds (unirg's own drafts left out) in the
    ledger, with their ``dicomweb:`` paths, and note the study for pairing; returns how many were recorded.
    Recording is idempotent: a report seen before is only refreshed."""
    from unirg.plugin.dicomweb.watcher import dicomweb_path  # the watcher imports this module

    recorded = 0
    for item in client.search_series(study_uid, {"Modality": "SR"}, fields=("SeriesDescription",)):
        series_uid = qido_value(item, "SeriesInstanceUID")
        try:
            safe_component(series_uid, "SeriesInstanceUID")
        except UnsafePath:
            continue
        headers = [ds for ds in client.series_metadata(study_uid, series_uid) if not is_own_draft(ds)]
        if not headers:
            continue
        with ledger.transaction() as c:
            for ds in headers:
                try:
                    info = classify_instance(ds)
                    path = dicomweb_path(study_uid, series_uid, info.sop_instance_uid)
                except ValueError as exc:  # UnsafePath included
                    log.warning("event=dicomweb_bad_report study=%s reason=%r", study_uid, str(exc))
                    continue
                ledger.record_instance(info, path, "DICOMWEB", conn=c)
                recorded += 1
            if recorded:
                note_final(c, study_uid, "dicomweb")
    if recorded:
        log.info("event=dicomweb_reports_recorded study=%s count=%d", study_uid, recorded)
    return recorded
