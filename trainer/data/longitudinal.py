"""Patient timelines: link each study to its prior, and list (prior, current) pairs.

A study's prior is the **most recent earlier study of the same patient**. "Earlier" compares
``(study_date, study time, sequence)``: the date ("YYYYMMDD"), then ``meta["study_time"]`` ("HHMMSS"), then
``sequence`` (a rank within the patient such as CheXpert Plus's ``patient_report_date_order``). Studies
whose keys are equal (same day, no time or rank to tell them apart) are not each other's prior and share
the prior before them; a study without date, time or rank has no prior and is nobody's prior.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Iterable

from unirg.trainer.data.sample import Prior, Sample


def timeline_key(sample: Sample) -> tuple[str, str, int] | None:
    """The sort key of a study in its patient's timeline, ``None`` when it has no date, time or rank."""
    date = sample.study_date or ""
    time = str(sample.meta.get("study_time") or "")
    seq = sample.sequence if sample.sequence is not None else -1
    if not date and not time and seq < 0:
        return None
    return date, time, seq


def timelines(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Each patient's studies in timeline order (studies without a key last, in input order)."""
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient_id].append(s)
    out = {}
    for patient, studies in by_patient.items():
        keyed = sorted((s for s in studies if timeline_key(s) is not None), key=timeline_key)
        out[patient] = keyed + [s for s in studies if timeline_key(s) is None]
    return out


def prior_of(sample: Sample) -> Prior:
    """The :class:`Prior` that ``sample`` is to a later study (frontal image + report text)."""
    return Prior(study_id=sample.study_id, image=sample.frontal, report=sample.report or None,
                 study_date=sample.study_date)


def link_priors(samples: Iterable[Sample], *, overwrite: bool = True) -> list[Sample]:
    """``samples`` (same order) with ``prior`` set to the most recent earlier study of the same patient.

    ``overwrite=False`` keeps priors a loader already set (e.g. from explicit prior links).
    """
    samples = list(samples)
    previous: dict[str, Sample] = {}
    for studies in timelines(samples).values():
        keyed = [s for s in studies if timeline_key(s) is not None]
        before: Sample | None = None
        for _, tied in itertools.groupby(keyed, key=timeline_key):
            tied = list(tied)
            if before is not None:
                for s in tied:
                    previous[s.sample_id] = before
            before = tied[-1]
    out = []
    for s in samples:
        if s.prior is not None and not overwrite:
            out.append(s)
            continue
        before = previous.get(s.sample_id)
        out.append(dataclasses.replace(s, prior=prior_of(before) if before is not None else None))
    return out


def longitudinal_pairs(samples: Iterable[Sample]) -> list[tuple[Sample, Sample]]:
    """(prior, current) pairs of consecutive studies in every patient's timeline, in timeline order."""
    samples = link_priors(samples)
    by_id = {(s.patient_id, s.study_id): s for s in samples}
    pairs = []
    for studies in timelines(samples).values():
        for s in studies:
            if s.prior is not None and (s.patient_id, s.prior.study_id) in by_id:
                pairs.append((by_id[(s.patient_id, s.prior.study_id)], s))
    return pairs
