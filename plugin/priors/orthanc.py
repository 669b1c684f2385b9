"""The Orthanc prior adapter: priors through Orthanc's REST API.

:class:`OrthancPriors` finds the patient's earlier CR/DX studies by PatientID in Orthanc (``/tools/find``)
and in remote modalities declared in Orthanc (``POST /modalities/{name}/query`` = C-FIND, then
``POST /modalities/{name}/move`` = C-MOVE into Orthanc), and loads the prior's images and its report SR
(:func:`unirg.plugin.prior_policy.choose_report`: a human report only, verified first). With ``[priors]
skip_local`` (default) a prior Orthanc already holds is not C-MOVEd again; ``max_priors`` and ``max_age``
as :func:`unirg.plugin.prior_policy.rank_prior_studies`. Studies pulled in this way are marked so that the
plugin does not draft them. It never raises (:class:`unirg.plugin.priors.core.PriorSource`): on trouble
the draft is made without (some) priors and the result's ``reason`` says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from unirg.plugin.config import PriorsConfig
from unirg.plugin.orthanc.recorder import mark_retrieved_prior
from unirg.plugin.orthanc.source import OrthancClient, OrthancError
from unirg.plugin.prior_policy import (
    IMAGE_MODALITIES,
    PriorCandidate,
    choose_report,
    modalities,
    rank_prior_studies,
    study_date_range,
)
from unirg.plugin.priors.core import PriorSource, PriorStudy, PriorsResult, current_patient, load_ranked

__all__ = ["OrthancPriors"]

log = logging.getLogger(__name__)


class OrthancPriors(PriorSource):
    """Priors through Orthanc (see the module docstring); ``fetch`` has the PriorsFetcher contract.

    Parameters
    ----------
    client : OrthancClient
    config : PriorsConfig
        ``max_priors``, ``max_age``, ``skip_local`` and ``total_timeout_s`` apply (``pacs`` and the
        C-GET/C-MOVE settings are the listener's; here Orthanc does the DICOM networking).
    modalities : list[str]
        Names of modalities declared in Orthanc to C-FIND / C-MOVE priors from.
    engine
        unirg's database engine, to mark studies pulled in as priors (None: not marked).
    """

    def __init__(self, client: OrthancClient, config: PriorsConfig, modalities: Sequence[str] = (),
                 engine: Any = None) -> None:
        self.client = client
        self.config = config
        self.modalities = list(modalities)
        self.engine = engine
        self._own_aet: str | None = None

    def explain(self, exc: Exception) -> str | None:
        return f"priors from Orthanc failed: {exc}" if isinstance(exc, OrthancError) else None

    # -- candidates -------------------------------------------------------------------------------
    def _local(self, patient_id: str) -> dict[str, dict[str, Any]]:
        found = self.client.post_json("/tools/find", {
            "Level": "Study", "Expand": True, "Query": {"PatientID": patient_id},
        }) or []
        out = {}
        for study in found:
            tags = study.get("MainDicomTags") or {}
            uid = tags.get("StudyInstanceUID")
            # Orthanc matches "*" and "?" in a PatientID as wildcards: keep exact matches only.
            if (study.get("PatientMainDicomTags") or {}).get("PatientID") != patient_id:
                continue
            if uid:
                out[uid] = {"uid": uid, "date": tags.get("StudyDate", ""), "time": tags.get("StudyTime", ""),
                            "accession": tags.get("AccessionNumber", ""), "orthanc_id": study["ID"],
                            "modalities": None, "source": "orthanc", "move_from": None}
        return out

    def _remote(self, name: str, patient_id: str, cur_date: str) -> dict[str, dict[str, Any]]:
        query = {"Level": "Study", "Query": {
            "PatientID": patient_id, "StudyInstanceUID": "",
            "StudyDate": study_date_range(cur_date, self.config.max_age),
            "StudyTime": "", "AccessionNumber": "", "ModalitiesInStudy": "CR\\DX",
        }}
        answer = self.client.post_json(f"/modalities/{name}/query", query)
        items = self.client.get_json(f"/queries/{answer['ID']}/answers?expand&simplify")
        out = {}
        for tags in items or []:
            uid = tags.get("StudyInstanceUID")
            if tags.get("PatientID", patient_id) != patient_id:
                continue  # a PACS that matched loosely (wildcards): never another patient's study
            if uid:
                out[uid] = {"uid": uid, "date": tags.get("StudyDate", ""), "time": tags.get("StudyTime", ""),
                            "accession": tags.get("AccessionNumber", ""), "orthanc_id": None,
                            "modalities": modalities(tags.get("ModalitiesInStudy")), "source": name,
                            "move_from": name}
        return out

    def _fetch(self, current: Sequence[Dataset], deadline: float) -> PriorsResult:
        patient_id, current_study = current_patient(current)
        cur_uid, cur_date = current_study.study_uid, current_study.study_date

        problems: list[str] = []
        candidates = self._local(patient_id)
        for name in self.modalities:
            try:
                for uid, cand in self._remote(name, patient_id, cur_date).items():
                    held = candidates.setdefault(uid, cand)
                    if held is not cand and not self.config.skip_local and held["move_from"] is None:
                        held["move_from"] = name  # held here, but asked to retrieve again
            except OrthancError as exc:
                problems.append(f"C-FIND in modality {name!r} failed: {exc}")
        # Orthanc's own studies have unknown modalities (a CT is dropped at loading), so rank them all
        # and stop at max_priors loaded.
        ranked = rank_prior_studies(
            (PriorCandidate(c["uid"], c["date"], c["time"], frozenset(c["modalities"] or ()), c)
             for c in candidates.values()),
            current_study, len(candidates), self.config.max_age)

        return load_ranked(
            ranked, lambda cand: self._load(cand.data, cur_uid, deadline), max_priors=self.config.max_priors,
            deadline=deadline, timeout_s=self.config.total_timeout_s, errors=(OrthancError,),
            label=lambda cand: f"prior {cand.study_uid} from {cand.data['source']}", problems=problems)

    # -- loading ------------------------------------------------------------------------------------
    def _own_aet_title(self) -> str:
        if self._own_aet is None:
            self._own_aet = str(self.client.get_json("/system")["DicomAet"])
        return self._own_aet

    def _load(self, cand: dict[str, Any], for_study: str, deadline: float) -> PriorStudy | None:
        orthanc_id = cand["orthanc_id"]
        if cand["move_from"] is not None:  # not held here (or skip_local = false): C-MOVE into Orthanc
            if self.engine is not None and orthanc_id is None:
                mark_retrieved_prior(self.engine, cand["uid"], for_study)
            remaining = max(int(deadline - time.monotonic()), 5)
            self.client.post_json(f"/modalities/{cand['move_from']}/move", {
                "Level": "Study", "Resources": [{"StudyInstanceUID": cand["uid"]}],
                "TargetAet": self._own_aet_title(), "Synchronous": True, "Timeout": remaining,
            }, timeout=remaining + 10)
            orthanc_id = self.client.lookup(cand["uid"], "Study")
            if orthanc_id is None:
                raise OrthancError(f"C-MOVE of {cand['uid']} reported success but Orthanc does not hold it")
            log.info("event=prior_moved prior=%s modality=%s", cand["uid"], cand["move_from"])
        images: list[Dataset] = []
        reports: list[Dataset] = []
        for series in self.client.get_json(f"/studies/{orthanc_id}/series") or []:
            modality = str((series.get("MainDicomTags") or {}).get("Modality", "")).upper()
            if modality not in IMAGE_MODALITIES | {"SR"}:
                continue
            for instance_id in series.get("Instances", []):
                ds = self.client.instance(instance_id)
                (reports if modality == "SR" else images).append(ds)
        if not images:
            return None  # no CR/DX image: not a prior chest radiograph
        # The prior's report: a human one only (the one policy); none: "no prior report available".
        prior = PriorStudy(study_uid=cand["uid"], study_date=cand["date"], study_time=cand["time"],
                           accession_number=cand["accession"], images=images, report=choose_report(reports))
        log.info("event=prior_retrieved prior=%s source=%s images=%d srs=%d report=%s",
                 cand["uid"], cand["source"], len(images), len(reports),
                 prior.report.SOPInstanceUID if prior.report is not None else None)
        return prior
