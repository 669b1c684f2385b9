"""Clinical-content scores from the rule-based CheXpert labeler (:mod:`unirg.model.labeler`). No model.

- :func:`chexpert_f1`: F1 between the sets of observations labeled positive in candidate and reference. Per
  pair (micro over the observations of one pair): ``2|C∩R| / (|C|+|R|)``, 1.0 when both sets are empty.
  Uncertain (-1) labels count as positive by default (``uncertain="positive"``, the convention of ReXrank's
  CheXbert "micro F1-14"/"top-5" scores); ``"negative"`` drops them, ``"separate"`` makes "uncertain X" a label
  of its own that only matches "uncertain X". Over all 14 observations by default (No Finding included);
  ``observations=TOP5`` for the five common ones.
- :func:`chexpert_label_margin`: labels right minus labels wrong, ``TP - w (FP + FN)`` over the same positive
  sets. With ``w`` = TP / (FP + FN) of a set of reports (``F / (2 (1 - F))`` at micro F1 ``F``: 1.0 at 2/3),
  a change to one report's draft raises the set's *micro* F1 (the figure the evaluation reports) exactly when
  it raises that report's margin. Per-pair F1 weighs changes otherwise: taking a false finding off a normal
  report's draft gains 1.0, drafting the three missed findings of a four-finding report 0.6, though the second
  is worth more to the set's micro F1.
- :func:`semb_substitute`: *offline substitute* for SembScore (which is the cosine of CheXbert embeddings and
  needs the CheXbert checkpoint): cosine of the label vectors, each observation encoded on two axes (present,
  absent): positive (1, 0), negative (0, 1), uncertain (0.71, 0.71), not mentioned (0, 0). So "possible
  pneumonia" vs "pneumonia" is 0.71, "no pneumonia" vs "pneumonia" 0, and mentioning extra observations
  lowers the score. In [0, 1]; 1.0 when neither text has a label.
- :func:`radgraph_substitute`: *offline substitute* for RadGraph-F1 (which needs the RadGraph model): F1 of the
  entity sets from :func:`~unirg.model.labeler.extract_mentions`, averaged over two levels: entity =
  (observation, label) and entity + attribute = (observation, label, laterality). Observations are the 14
  (synonyms merge: "PTX" = "pneumothorax"); support devices and findings outside the 14 keep their device /
  finding name ("endotracheal tube" ≠ "chest tube", "emphysema"). In [0, 1]; 1.0 when both have no entity.

Labeling is cached per text (references repeat across the generations of a GRPO group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from unirg.model.chexpert import OBSERVATIONS
from unirg.model.labeler import OTHER, extract_mentions, label_report

TOP5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The five observations of the CheXpert competition / ReXrank "top-5" F1."""

UNCERTAIN_MODES = ("positive", "negative", "separate")
_H = 0.5**0.5
_VECTOR_CODE = {1: (1.0, 0.0), -1: (_H, _H), 0: (0.0, 1.0), None: (0.0, 0.0)}
_NAMED_BY_FINDING = frozenset({"Support Devices", OTHER})


@lru_cache(maxsize=16384)
def _labels(text: str) -> tuple[int | None, ...]:
    labels = label_report(text)
    return tuple(labels[o] for o in OBSERVATIONS)


@lru_cache(maxsize=16384)
def _entities(text: str) -> tuple[frozenset, frozenset]:
    plain, with_side = set(), set()
    for m in extract_mentions(text, include_other=True):
        name = f"{m.observation}: {m.finding}" if m.observation in _NAMED_BY_FINDING else m.observation
        plain.add((name, m.label))
        with_side.add((name, m.label, m.laterality))
    return frozenset(plain), frozenset(with_side)


def _f1(a: frozenset | set, b: frozenset | set) -> float:
    if not a and not b:
        return 1.0
    return 2 * len(a & b) / (len(a) + len(b))


def positive_set(labels: Sequence[int | None] | dict, *, uncertain: str = "positive",
                 observations: Sequence[str] = OBSERVATIONS) -> frozenset:
    """The observations a label vector (or label dict) counts as positive under ``uncertain`` mode."""
    if uncertain not in UNCERTAIN_MODES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_MODES}, got {uncertain!r}")
    if isinstance(labels, dict):
        labels = [labels.get(o) for o in OBSERVATIONS]
    wanted = set(observations)
    unknown = wanted - set(OBSERVATIONS)
    if unknown:
        raise ValueError(f"unknown observations {sorted(unknown)}; use names from unirg.model.chexpert")
    out = set()
    for obs, value in zip(OBSERVATIONS, labels, strict=True):
        if obs not in wanted:
            continue
        if value == 1:
            out.add(obs)
        elif value == -1:
            if uncertain == "positive":
                out.add(obs)
            elif uncertain == "separate":
                out.add(f"uncertain {obs}")
    return frozenset(out)


def text_positives(text: str, *, uncertain: str = "positive", observations: Sequence[str] = OBSERVATIONS) -> frozenset:
    """The observations the labeler reads as positive in ``text`` (labels cached per text).

    >>> sorted(text_positives("Possible left effusion. No pneumothorax."))
    ['Pleural Effusion']
    """
    return positive_set(_labels(text), uncertain=uncertain, observations=observations)


def _positive_sets(candidate: str, reference: str, uncertain: str,
                   observations: Sequence[str]) -> tuple[frozenset, frozenset]:
    return (text_positives(candidate, uncertain=uncertain, observations=observations),
            text_positives(reference, uncertain=uncertain, observations=observations))


def chexpert_f1(candidate: str, reference: str, *, uncertain: str = "positive",
                observations: Sequence[str] = OBSERVATIONS) -> float:
    """CheXpert label F1 of one pair, in [0, 1] (see the module docstring).

    >>> chexpert_f1("Small left pleural effusion.", "Small right pleural effusion.")
    1.0
    >>> chexpert_f1("No pneumothorax.", "Large right pneumothorax.")
    0.0
    >>> chexpert_f1("Possible pneumonia.", "Pneumonia.", uncertain="separate")
    0.0
    """
    return _f1(*_positive_sets(candidate, reference, uncertain, observations))


def chexpert_label_margin(candidate: str, reference: str, *, error_weight: float = 1.0, uncertain: str = "positive",
                          observations: Sequence[str] = OBSERVATIONS) -> float:
    """Labels right minus ``error_weight`` x labels wrong (false positives + false negatives) of one pair.

    At most ``|R|`` (every reference label found, none added); at least ``-error_weight (|C| + |R|)``.

    >>> chexpert_label_margin("Small left pleural effusion. Cardiomegaly.", "Cardiomegaly.")
    0.0
    >>> chexpert_label_margin("No acute cardiopulmonary process.", "No acute cardiopulmonary process.")
    1.0
    >>> chexpert_label_margin("Small pneumothorax.", "No acute cardiopulmonary process.", error_weight=1.5)
    -3.0
    """
    if error_weight < 0:
        raise ValueError(f"error_weight must be >= 0, got {error_weight}")
    c, r = _positive_sets(candidate, reference, uncertain, observations)
    return float(len(c & r) - error_weight * len(c ^ r))


def label_vector(text: str) -> list[float]:
    """The 14 labels of ``text`` as the 28-dimensional (present, absent) vector of :func:`semb_substitute`."""
    return [x for v in _labels(text) for x in _VECTOR_CODE[v]]


def semb_substitute(candidate: str, reference: str) -> float:
    """Cosine of the CheXpert label vectors: a model-free stand-in for SembScore, in [0, 1].

    >>> semb_substitute("Heart size is normal. No effusion.", "No pleural effusion. Normal heart size.")
    1.0
    >>> semb_substitute("Moderate cardiomegaly.", "No cardiomegaly.")
    0.0
    >>> round(semb_substitute("Possible pneumonia.", "Pneumonia."), 3)
    0.707
    """
    a, b = label_vector(candidate), label_vector(reference)
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return max(0.0, min(1.0, sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)))


def radgraph_substitute(candidate: str, reference: str) -> float:
    """Entity / attribute overlap F1 of the labeler's mentions: a model-free stand-in for RadGraph-F1.

    >>> radgraph_substitute("Small left effusion. No pneumothorax.", "No pneumothorax. Left pleural effusion.")
    1.0
    >>> radgraph_substitute("Small left effusion.", "Small right effusion.")
    0.5
    """
    c_plain, c_side = _entities(candidate)
    r_plain, r_side = _entities(reference)
    return (_f1(c_plain, r_plain) + _f1(c_side, r_side)) / 2
