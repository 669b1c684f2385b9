"""Priors from a DICOMweb archive: QIDO-RS by PatientID, the one prior policy, WADO-RS of images and reports.

:class:`DicomWebPriors` is a :class:`unirg.plugin.priors.core.PriorSource`: ``fetch`` never raises; on
trouble the result's ``reason`` says why and the draft is made without (some) priors.

1. QIDO-RS studies with PatientID (exact matches only: an archive may match wildcards), StudyDate from
   ``max_age`` before the current study, ModalitiesInStudy CR then DX;
2. :func:`unirg.plugin.prior_policy.rank_prior_studies` keeps the most recent ``max_priors`` earlier ones;
3. per prior: QIDO-RS of its series, WADO-RS of its CR/DX and SR series; the report is
   :func:`unirg.plugin.prior_policy.choose_report` of the SRs (a human report only, verified first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from unirg.plugin.assemble import IMAGE_SOP_CLASSES
from unirg.plugin.config import PriorsConfig
from unirg.plugin.dicomweb.client import DicomWeb, DicomWebError, qido_value, qido_values
from unirg.plugin.paths import UnsafePath, safe_component
from unirg.plugin.prior_policy import (
    IMAGE_MODALITIES,
    PriorCandidate,
    choose_report,
    modalities,
    rank_prior_studies,
    study_date_range,
)
from unirg.plugin.priors.core import PriorSource, PriorStudy, PriorsResult, current_patient, load_ranked

__all__ = ["DicomWebPriors"]

log = logging.getLogger(__name__)


class DicomWebPriors(PriorSource):
    """Priors from one archive; ``config``'s ``max_priors``, ``max_age`` and ``total_timeout_s`` apply."""

    def __init__(self, client: DicomWeb, config: PriorsConfig) -> None:
        self.client = client
        self.config = config

    def explain(self, exc: Exception) -> str | None:
        return f"priors from DICOMweb failed: {exc}" if isinstance(exc, DicomWebError) else None

    def _candidates(self, patient_id: str, cur_date: str) -> dict[str, PriorCandidate]:
        filters: dict[str, Any] = {"PatientID": patient_id}
        dates = study_date_range(cur_date, self.config.max_age)
        if dates:
            filters["StudyDate"] = dates
        out: dict[str, PriorCandidate] = {}
        for modality in sorted(IMAGE_MODALITIES):
            for item in self.client.search_studies(
                    {**filters, "ModalitiesInStudy": modality},
                    fields=("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "PatientID")):
                if qido_value(item, "PatientID") != patient_id:
                    continue  # matched loosely: never another patient's study
                uid = qido_value(item, "StudyInstanceUID")
                try:
                    safe_component(uid, "StudyInstanceUID")
                except UnsafePath:
                    continue
                mods = modalities(qido_values(item, "ModalitiesInStudy")) or frozenset({modality})
                out[uid] = PriorCandidate(uid, qido_value(item, "StudyDate"), qido_value(item, "StudyTime"),
                                          mods, {"accession": qido_value(item, "AccessionNumber")})
        return out

    def _fetch(self, current: Sequence[Dataset], deadline: float) -> PriorsResult:
        patient_id, current_study = current_patient(current)  # PriorsUnavailable when there is none
        cur_date = current_study.study_date
        chosen = rank_prior_studies(self._candidates(patient_id, cur_date).values(), current_study,
                                    self.config.max_priors, self.config.max_age)
        return load_ranked(chosen, self._load, max_priors=self.config.max_priors, deadline=deadline,
                           timeout_s=self.config.total_timeout_s, errors=(DicomWebError,))

    def _load(self, cand: PriorCandidate) -> PriorStudy | None:
        uid = cand.study_uid
        images: list[Dataset] = []
        reports: list[Dataset] = []
        for item in self.client.search_series(uid):
            modality = qido_value(item, "Modality").upper()
            series_uid = qido_value(item, "SeriesInstanceUID")
            if modality not in IMAGE_MODALITIES | {"SR"}:
                continue
            try:
                safe_component(series_uid, "SeriesInstanceUID")
            except UnsafePath:
                continue
            for ds in self.client.series(uid, series_uid):
                if str(ds.get("StudyInstanceUID", "")) != uid:
                    continue
                if modality == "SR" and str(ds.get("Modality", "")).upper() == "SR":
                    reports.append(ds)
                elif str(ds.get("SOPClassUID", "")) in IMAGE_SOP_CLASSES:
                    images.append(ds)
        if not images:
            return None  # no CR/DX image: not a prior chest radiograph
        prior = PriorStudy(study_uid=uid, study_date=cand.study_date, study_time=cand.study_time,
                           accession_number=(cand.data or {}).get("accession", ""), images=images,
                           report=choose_report(reports))
        log.info("event=prior_retrieved prior=%s source=dicomweb images=%d srs=%d report=%s", uid, len(images),
                 len(reports), prior.report.SOPInstanceUID if prior.report is not None else None)
        return prior
