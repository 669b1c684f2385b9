"""Patient-level splits, institution hold-out and patient timelines (unirg.trainer.data)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from unirg.trainer.data import (
    Sample,
    check_disjoint,
    link_priors,
    longitudinal_pairs,
    split_by_institution,
    split_by_patient,
    split_of,
)


def _study(patient: str, study: str, date: str | None = None, institution: str = "A", **kw) -> Sample:
    return Sample(sample_id=f"{patient}/{study}", patient_id=patient, study_id=study, findings="Clear lungs.",
                  study_date=date, institution=institution, **kw)


def _cohort(n_patients: int = 400, seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for p in range(n_patients):
        for k in range(rng.randint(1, 5)):
            out.append(_study(f"P{p:04d}", f"S{k}", f"2020{k + 1:02d}01", rng.choice("ABC")))
    rng.shuffle(out)
    return out


def test_a_patient_never_sits_in_two_splits():
    samples = _cohort()
    splits = split_by_patient(samples, seed=7)
    check_disjoint(splits)
    patients = {name: {s.patient_id for s in items} for name, items in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(v) for v in splits.values()) == len(samples)
    n = len({s.patient_id for s in samples})
    assert 0.7 < len(patients["train"]) / n < 0.9 and len(patients["test"]) > 0.05 * n


def test_patient_split_is_deterministic_and_seeded():
    samples = _cohort()
    a = split_by_patient(samples, seed=3)
    b = split_by_patient(list(reversed(samples)), seed=3)
    assert {k: {s.sample_id for s in v} for k, v in a.items()} == {k: {s.sample_id for s in v} for k, v in b.items()}
    c = split_by_patient(samples, seed=4)
    assert {s.patient_id for s in a["test"]} != {s.patient_id for s in c["test"]}
    # adding patients never moves the others
    more = samples + [_study("NEW1", "S0"), _study("NEW2", "S0")]
    d = split_by_patient(more, seed=3)
    assert {s.sample_id for s in a["test"]} <= {s.sample_id for s in d["test"]}
    assert split_of("P0001", seed=3) == split_of("P0001", seed=3)


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_patient(_cohort(5), fractions={"train": 0.5, "test": 0.4})
    with pytest.raises(ValueError):
        split_by_patient(_cohort(5), fractions={"train": 1.2, "test": -0.2})


def test_check_disjoint_names_the_leak():
    s = _study("P1", "S1")
    with pytest.raises(ValueError, match="P1"):
        check_disjoint({"train": [s], "test": [dataclasses.replace(s, study_id="S2", sample_id="x")]})


def test_split_by_institution_holds_out_c_patient_disjoint():
    samples = _cohort()
    splits = split_by_institution(samples, train=("A", "B"), test=("C",), val_fraction=0.1, seed=0)
    assert {s.institution for s in splits["test"]} == {"C"}
    assert {s.institution for s in splits["train"] + splits["val"]} <= {"A", "B"}
    check_disjoint(splits)  # "excluded" is ignored: it holds the A/B studies of test patients
    test_patients = {s.patient_id for s in splits["test"]}
    assert splits["excluded"] and all(s.patient_id in test_patients for s in splits["excluded"])
    assert sum(len(v) for v in splits.values()) == len(samples)
    assert splits["val"] and not {s.patient_id for s in splits["val"]} & {s.patient_id for s in splits["train"]}
    with pytest.raises(ValueError, match="both"):
        split_by_institution(samples, train=("A", "C"), test=("C",))


def test_prior_is_the_most_recent_earlier_study():
    samples = [
        _study("P1", "s3", "20200301"),
        _study("P1", "s1", "20200101"),
        _study("P1", "s2", "20200201"),
        _study("P2", "t1", "20200201"),
        _study("P1", "s2b", "20200201"),  # same day as s2, no time: shares s1 as prior, not linked to s2
        _study("P3", "u1", None),  # no date: no prior, nobody's prior
        _study("P3", "u2", "20200101"),
    ]
    linked = {s.study_id: s for s in link_priors(samples)}
    assert linked["s1"].prior is None
    assert linked["s2"].prior.study_id == "s1" and linked["s2b"].prior.study_id == "s1"
    assert linked["s3"].prior.study_id in ("s2", "s2b")
    assert linked["t1"].prior is None and linked["u1"].prior is None and linked["u2"].prior is None
    assert linked["s2"].prior.report == "Findings: Clear lungs." and linked["s2"].prior.study_date == "20200101"


def test_time_and_sequence_break_same_day_ties():
    samples = [
        _study("P1", "b", "20200101", meta={"study_time": "140000"}),
        _study("P1", "a", "20200101", meta={"study_time": "080000"}),
        _study("P2", "y", None, sequence=2),
        _study("P2", "x", None, sequence=1),
    ]
    linked = {s.study_id: s for s in link_priors(samples)}
    assert linked["b"].prior.study_id == "a" and linked["a"].prior is None
    assert linked["y"].prior.study_id == "x"


def test_longitudinal_pairs_follow_each_timeline():
    samples = [_study("P1", f"s{k}", f"2020{k:02d}01") for k in (3, 1, 2)] + [_study("P2", "t1", "20200101")]
    pairs = [(a.study_id, b.study_id) for a, b in longitudinal_pairs(samples)]
    assert pairs == [("s1", "s2"), ("s2", "s3")]
