"""Finding credit (``finding_credit`` > 0): per-token advantages for the sentences of a rollout that state a finding.

A rollout's sequence advantage (its reward minus its greedy draft's) reaches every token alike, so the sentence
that found the effusion and the sentence that invented a pneumothorax are pushed the same way. Finding credit adds
to each token of a sentence the labeler's verdict on what that sentence states, against the reference's positive
CheXpert-14 labels (uncertain counts as positive, as in the evaluation):

===================================== ================ ===================================================
the sentence ...                      credit           why
===================================== ================ ===================================================
states a finding the reference has    ``+(1 + w)``     a false negative becomes a true positive
states a finding the reference lacks  ``-w``           a false positive
denies a finding the reference has    ``-w``           the sentence that should have stated it
denies a finding the reference lacks  ``0``            no F1 term (listing negatives is not rewarded)
===================================== ================ ===================================================

``w`` (``error_weight``) is the weight of an error against a found label; stating a finding then pays when it is
right more often than ``w / (1 + 2 w)`` (1/3 at ``w`` = 1: the F1-optimal threshold at micro F1 2/3). A sentence
stating several findings sums their credits; "No Finding" (derived from the whole report) and findings outside
the 14 get none. The per-token advantage is ``sequence advantage + finding_credit x credit of the token's
sentence`` (TRL's GRPO loss takes (B, T) advantages).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from unirg.model.labeler import extract_mentions

__all__ = ["sentence_credits", "token_char_ends", "token_credits"]


def sentence_credits(text: str, reference_positives: frozenset | set, *,
                     error_weight: float = 1.0) -> list[tuple[int, int, float]]:
    """``(start, end, credit)`` of every sentence of ``text`` that states or denies one of the 14 observations.

    >>> sentence_credits("Small left effusion. No pneumothorax. Mild edema.", frozenset({"Pleural Effusion"}))
    [(0, 20, 2.0), (38, 49, -1.0)]
    >>> sentence_credits("No pleural effusion.", frozenset({"Pleural Effusion"}))
    [(0, 20, -1.0)]
    """
    if error_weight < 0:
        raise ValueError(f"error_weight must be >= 0, got {error_weight}")
    credit: dict[tuple[int, int], float] = {}
    seen: set[tuple[tuple[int, int], str]] = set()
    for m in extract_mentions(text):
        key = (m.sentence_span, m.observation)
        if key in seen:
            continue
        seen.add(key)
        present = m.observation in reference_positives
        if m.label != 0:
            value = 1.0 + error_weight if present else -error_weight
        else:
            value = -error_weight if present else 0.0
        credit[m.sentence_span] = credit.get(m.sentence_span, 0.0) + value
    return [(s, e, c) for (s, e), c in sorted(credit.items()) if c != 0.0]


def token_char_ends(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[int]:
    """Where each token's text ends in ``decode(ids)``: the length of the decoded prefix up to that token."""
    return [len(decode(ids[: k + 1])) for k in range(len(ids))]


def token_credits(char_ends: Sequence[int], sentences: Sequence[tuple[int, int, float]]) -> list[float]:
    """The credit of the sentence each token's characters fall in (0 outside every credited sentence).

    A token belongs to the sentence of its last character.

    >>> token_credits([5, 9, 12, 20], [(0, 9, 2.0)])
    [2.0, 2.0, 0.0, 0.0]
    """
    out, start = [], 0
    for end in char_ends:
        value = 0.0
        if end > start:  # a token with no text of its own (EOS, a special token) gets no sentence credit
            last = end - 1
            value = next((c for s, e, c in sentences if s <= last < e), 0.0)
        out.append(value)
        start = max(start, end)
    return out
