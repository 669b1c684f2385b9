"""Does a draft describe the change since the prior study? Scored against the testbed's per-finding truth.

The testbed's manifest gives every finding of a follow-up study its change since the prior (``new``,
``unchanged``, ``improved``, ``worsened``). A draft sentence that mentions the observation (found by the
labeler's mention spans) is read for change words; the finding counts as *described* when a sentence
mentions it and *correct* when that sentence's change words name the manifest's change (and no other).
Resolved findings are left out: their mention is a negation, scored by CheXpert F1 already.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

CHANGE_WORDS: dict[str, tuple[str, ...]] = {
    "new": ("new", "newly", "since the prior", "has developed", "developed"),
    "unchanged": ("unchanged", "unch", "stable", "again demonstrated", "no change", "persistent", "persists"),
    "improved": ("improved", "improving", "decreased", "smaller", "less", "reduced", "regressed"),
    "worsened": ("worsened", "worse", "worsening", "increased", "larger", "progressed", "more extensive"),
}
SCORED = tuple(CHANGE_WORDS)

_PATTERNS = {change: re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
             for change, words in CHANGE_WORDS.items()}


def changes_named(sentence: str) -> set[str]:
    """The changes a sentence's words name (``set()`` when it names none)."""
    low = sentence.lower()
    return {change for change, pattern in _PATTERNS.items() if pattern.search(low)}


def change_agreement(draft: str, findings: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
    """``(findings with a scored change, of them described in the draft, of them with the right change)``."""
    from unirg.model.labeler import extract_mentions

    mentions = extract_mentions(draft)
    total = described = correct = 0
    for finding in findings:
        change = finding.get("change")
        if change not in SCORED:
            continue
        total += 1
        sentences = [draft[m.sentence_span[0]:m.sentence_span[1]] for m in mentions if m.observation == finding["observation"]]
        if not sentences:
            continue
        described += 1
        named = set().union(*(changes_named(s) for s in sentences))
        if named == {change} or (change == "unchanged" and not named - {"unchanged"} and named):
            correct += 1
    return total, described, correct


def change_scores(drafts: Sequence[str], findings: Sequence[Iterable[dict[str, Any]]]) -> dict[str, float | int]:
    """Over studies: findings with a change, share described, share of described with the right change."""
    total = described = correct = 0
    for draft, items in zip(drafts, findings, strict=True):
        t, d, c = change_agreement(draft, items)
        total, described, correct = total + t, described + d, correct + c
    return {
        "findings_with_change": total,
        "described": round(described / total, 4) if total else 0.0,
        "correct_of_described": round(correct / described, 4) if described else 0.0,
        "correct": round(correct / total, 4) if total else 0.0,
    }
