"""Patient-level splits: a patient never sits in two splits.

- :func:`split_of` / :func:`split_by_patient`: a deterministic hash of ``(seed, patient_id)`` (SHA-256, not
  Python's salted ``hash``) places each *patient* in a split by the given fractions; every study of the
  patient follows. Stable across runs, machines and dataset sizes (adding patients never moves others).
- :func:`holdout_split`: a seeded share of the *patients* held out (``random.Random(seed).sample``), the SFT
  evaluation split (``holdout.json``), which RL then leaves out.
- :func:`split_by_institution`: train on some institutions, hold others out. A patient with any study at a
  held-out institution is a test patient: their studies at training institutions are left out of train
  (returned under ``"excluded"``) so no patient is in both.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from unirg.trainer.data.sample import Sample

DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
T = TypeVar("T")


def _unit(patient_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"unirg-split:{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check(fractions: Mapping[str, float]) -> None:
    if not fractions:
        raise ValueError("fractions is empty")
    if any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be >= 0, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total} ({dict(fractions)})")


def split_of(patient_id: str, *, seed: int = 0, fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> str:
    """The split of ``patient_id``: the hash's position in [0, 1) against the cumulative fractions.

    >>> split_of("p1", seed=0) == split_of("p1", seed=0)
    True
    """
    _check(fractions)
    u, edge = _unit(str(patient_id), seed), 0.0
    names = list(fractions)
    for name in names:
        edge += fractions[name]
        if u < edge:
            return name
    return names[-1]


def split_by_patient(samples: Iterable[Sample], *, seed: int = 0,
                     fractions: Mapping[str, float] = DEFAULT_FRACTIONS) -> dict[str, list[Sample]]:
    """``{split: samples}`` with every patient's studies in exactly one split (input order kept)."""
    _check(fractions)
    out: dict[str, list[Sample]] = {name: [] for name in fractions}
    for s in samples:
        out[split_of(s.patient_id, seed=seed, fractions=fractions)].append(s)
    return out


def holdout_split(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """``(train, held_out)`` of anything with a ``patient_id`` (samples, training examples): a seeded share
    ``fraction`` of the *patients* is held out, so no patient sits on both sides. Independent of the order
    of ``items``; at least one patient stays on each side when there are two or more."""
    patients = sorted({item.patient_id for item in items})
    if fraction <= 0 or len(patients) < 2:
        return list(items), []
    count = min(len(patients) - 1, max(1, round(len(patients) * fraction)))
    held = set(random.Random(seed).sample(patients, count))
    return [e for e in items if e.patient_id not in held], [e for e in items if e.patient_id in held]


def write_holdout(directory: str | Path, patients: Iterable[str], studies: Sequence[str]) -> Path:
    """``DIR/holdout.json``: the held-out patients (sorted, unique) and their studies. SFT and RL write it; RL
    leaves the SFT run's patients out, and evaluations read it."""
    path = Path(directory) / "holdout.json"
    path.write_text(json.dumps({"patients": sorted(set(patients)), "studies": list(studies)}, indent=1) + "\n",
                    encoding="utf-8")
    return path


def split_by_institution(samples: Iterable[Sample], *, train: Sequence[str], test: Sequence[str],
                         val_fraction: float = 0.0, seed: int = 0) -> dict[str, list[Sample]]:
    """Train on the ``train`` institutions and test on the ``test`` ones, patient-disjoint.

    Returns ``{"train", "val", "test", "excluded"}``: ``test`` holds the studies at ``test`` institutions;
    ``train`` the studies at ``train`` institutions of patients with no test study; ``val`` a
    ``val_fraction`` of those *patients* (by :func:`split_of`); ``excluded`` the train-institution studies of
    test patients and studies at institutions in neither list.
    """
    train_set, test_set = set(train), set(test)
    if train_set & test_set:
        raise ValueError(f"institutions {sorted(train_set & test_set)} are in both train and test")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    samples = list(samples)
    test_patients = {s.patient_id for s in samples if s.institution in test_set}
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": [], "excluded": []}
    fractions = {"train": 1.0 - val_fraction, "val": val_fraction}
    for s in samples:
        if s.institution in test_set:
            out["test"].append(s)
        elif s.institution in train_set and s.patient_id not in test_patients:
            out[split_of(s.patient_id, seed=seed, fractions=fractions) if val_fraction else "train"].append(s)
        else:
            out["excluded"].append(s)
    return out


def check_disjoint(splits: Mapping[str, Iterable[Sample]], *, ignore: Sequence[str] = ("excluded",)) -> None:
    """Raise ``ValueError`` naming the patients found in more than one split."""
    seen: dict[str, str] = {}
    clashes = []
    for name, items in splits.items():
        if name in ignore:
            continue
        for s in items:
            first = seen.setdefault(s.patient_id, name)
            if first != name:
                clashes.append((s.patient_id, first, name))
    if clashes:
        shown = ", ".join(f"{p} ({a}/{b})" for p, a, b in clashes[:5])
        raise ValueError(f"{len(clashes)} studies of patients in two splits: {shown}")
