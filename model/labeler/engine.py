"""The labeling engine: sentences and clauses, mention extraction, mention classification, aggregation."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from unirg.model.chexpert import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN
from unirg.model.labeler import phrases as P
from unirg.model.labeler import triggers as T
from unirg.model.labeler.scan import Alternation, PrefixIndex

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
LATERALITIES = ("left", "right", "bilateral")
_NO_LATERALITY = frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum"})


@dataclass(frozen=True, slots=True)
class Mention:
    """One mention of an observation in a report.

    Attributes
    ----------
    observation
        One of :data:`~unirg.model.chexpert.OBSERVATIONS` (never "No Finding", which is derived), or
        :data:`~unirg.model.labeler.phrases.OTHER` for a finding outside the 14.
    finding
        Canonical name of the matched phrase ("pleural effusion", "endotracheal tube", "emphysema").
    label
        1 positive, 0 negative, -1 uncertain.
    laterality
        "left", "right", "bilateral" or ``None``.
    span
        ``(start, end)`` character offsets of the phrase in the report text.
    sentence_span
        ``(start, end)`` of the sentence holding it.
    text
        The phrase as written.
    rule
        What decided the label: ``"default"``, ``"phrase"`` (intrinsic label), or ``"<class>: <trigger>"``.
    """

    observation: str
    finding: str
    label: int
    laterality: str | None
    span: tuple[int, int]
    sentence_span: tuple[int, int]
    text: str
    rule: str


# --------------------------------------------------------------------------------------------- compilation
@dataclass(frozen=True, eq=False)
class _PhraseGroup:
    observation: str
    regex: Alternation
    phrases: tuple[P.Phrase, ...]
    unmention: re.Pattern[str] | None


def _phrase_groups() -> tuple[_PhraseGroup, ...]:
    groups = []
    for observation, phrases in [*P.MENTIONS.items(), (P.OTHER, P.OTHER_FINDINGS)]:
        unmentions = P.UNMENTIONS.get(observation)
        groups.append(
            _PhraseGroup(
                observation,
                Alternation([p.pattern for p in phrases], "p"),
                tuple(phrases),
                re.compile("|".join(unmentions)) if unmentions else None,
            )
        )
    return tuple(groups)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class _TriggerClass:
    name: str
    regex: Alternation
    triggers: tuple[T.Trigger, ...]

    @classmethod
    def of(cls, name: str, triggers: Sequence[T.Trigger]) -> _TriggerClass:
        return cls(name, Alternation([t.pattern for t in triggers], "t"), tuple(triggers))


_GROUPS = _phrase_groups()
_PRE_FWD = _TriggerClass.of("uncertain", T.PRE_NEGATION_UNCERTAINTY_FWD)
_PRE_BWD = _TriggerClass.of("uncertain", T.PRE_NEGATION_UNCERTAINTY_BWD)
_NEG_FWD = _TriggerClass.of("negated", T.NEGATION_FWD)
_NEG_BWD = _TriggerClass.of("negated", T.NEGATION_BWD)
_UNC_FWD = _TriggerClass.of("uncertain", T.UNCERTAINTY_FWD)
_UNC_BWD = _TriggerClass.of("uncertain", T.UNCERTAINTY_BWD)
_NEUTRAL_FWD = _TriggerClass.of("uncertain", T.NEUTRAL_UNCERTAINTY_FWD)
_NEUTRAL_BWD = _TriggerClass.of("uncertain", T.NEUTRAL_UNCERTAINTY_BWD)
_ALL_CLASSES = (_PRE_FWD, _PRE_BWD, _NEG_FWD, _NEG_BWD, _UNC_FWD, _UNC_BWD, _NEUTRAL_FWD, _NEUTRAL_BWD)
_NEGATION_CLASSES = (_NEG_FWD, _NEG_BWD)

_PSEUDO = re.compile("|".join(T.PSEUDO_NEGATIONS))
_TERMINATOR = re.compile(T.TERMINATORS)
_LIST_SEPARATOR = re.compile(T.LIST_SEPARATOR)
_SCOPE_BREAK = re.compile(T.SCOPE_BREAK)
_OR_LIST = re.compile(T.OR_LIST)
_PLACEMENT = re.compile(r"\s+(?:placement|insertion|placed|inserted)\b")
_MODIFIER_BREAK = re.compile(T.MODIFIER_BREAK)
_PREDICATE = re.compile(T.PREDICATE)
_ABNORMAL = re.compile(T.ABNORMAL_WORDS)
_OR_LINK = re.compile(T.OR_LINK)
_COMMA_LINK = re.compile(T.COMMA_LINK)
_WORD = re.compile(r"[a-z0-9]+(?:['/][a-z0-9]+)*")
_SAME_SIDE = re.compile(
    r"\s+(?:with|and)\s+(?:adjacent|associated|overlying|underlying|accompanying)\s+(?:[a-z]+\s+){0,2}"
)
_HEADER = re.compile(r"(?m)(?:^|(?<=[.;!]\s))[ \t]*[a-z][a-z0-9 /&,'()-]{0,40}?[ \t]*:")
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!])\s+|\n[ \t]*\n\s*")
_ABBREVIATION_END = re.compile(r"\b(?:vs|dr|e\.g|i\.e|approx|mr|mrs|ms|fig|cf|etc|st|sr)\.\s*$")
_SIDE_ABBREVIATED = (  # "R" / "L" alone only before these words
    r"(?=[\s-]*(?:ij|subclavian|sided|ptx|pneumothorax|effusion|pleural|lower|upper|middle|lung|base|apex|"
    r"apical|basilar|hemithorax|chest|picc|rib|mid|midlung|sc|port|pacer)\b)"
)
_LATERALITY = re.compile(
    r"\b(?:(?P<b>bilateral(?:ly)?|bilat|bibasi?lar|bibasal|biapical|both|b/l)"
    r"|(?P<l>left|lt|lingula(?:r)?|retrocardiac|lul|lll|l" + _SIDE_ABBREVIATED + r")"
    r"|(?P<r>right|rt|rul|rml|rll|r" + _SIDE_ABBREVIATED + r"))\b"
)


# ------------------------------------------------------------------------------------------------ text units
def _sentences(low: str) -> list[tuple[int, int]]:
    """Sentence spans: split after ``.``/``!`` followed by white space (not after "vs.", "e.g." ...) and at blank
    lines. Single line breaks do not split (reports are often hard-wrapped)."""
    spans = []
    start = 0
    for m in _SENTENCE_BOUNDARY.finditer(low):
        if "\n" not in m.group() and _ABBREVIATION_END.search(low, max(0, m.start() - 8), m.start()):
            continue
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(low)))
    return [(s, e) for s, e in spans if low[s:e].strip()]


def _clauses(low: str, sentences: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Clause spans: each sentence cut where a terminator starts (the terminator opens the next clause)."""
    clauses = []
    for s, e in sentences:
        cut = s
        for m in _TERMINATOR.finditer(low, s, e):
            if m.start() > cut:
                clauses.append((cut, m.start()))
                cut = m.start()
        clauses.append((cut, e))
    return clauses


def _words(low: str, start: int, end: int) -> int:
    return len(_WORD.findall(low, start, end)) if end > start else 0


def _overlaps(a: tuple[int, int], spans: Iterable[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in spans)


# ------------------------------------------------------------------------------------------------ triggers
@dataclass(frozen=True, slots=True)
class _Hit:
    start: int
    end: int
    trigger: T.Trigger


def _find_triggers(
    low: str, index: PrefixIndex, cls: _TriggerClass, pseudo: Sequence[tuple[int, int]]
) -> list[_Hit]:
    hits = []
    masked = cls in _NEGATION_CLASSES
    for start, end, i in cls.regex.finditer(low, index):
        if masked and pseudo and _overlaps((start, end), pseudo):
            continue
        hits.append(_Hit(start, end, cls.triggers[i]))
    return hits


def _forward(low: str, hits: Sequence[_Hit], clause: tuple[int, int], start: int) -> _Hit | None:
    """The nearest forward trigger governing a mention that starts at ``start``."""
    best = None
    for hit in hits:
        if hit.start >= start:
            break
        if hit.start < clause[0] or hit.end > start:
            continue
        if _words(low, hit.end, start) > hit.trigger.window:
            continue
        items = _LIST_SEPARATOR.split(low[hit.end : start])
        if len(items) > 1:
            if _OR_LIST.search(low, hit.end, clause[1]):
                items = [_MODIFIER_BREAK.sub(" ", item) for item in items]
            if any(_SCOPE_BREAK.search(item) for item in items[1:]):
                continue
        best = hit
    return best


def _backward(low: str, hits: Sequence[_Hit], clause: tuple[int, int], end: int) -> _Hit | None:
    """A backward trigger that is the first predicate after a mention ending at ``end``."""
    pred = _PREDICATE.search(low, end, clause[1])
    limit = pred.start() if pred else clause[1]
    for hit in hits:
        if hit.start < end:
            continue
        if hit.start > limit or hit.start >= clause[1]:
            break
        if _words(low, end, hit.start) <= hit.trigger.window:
            return hit
    return None


# ------------------------------------------------------------------------------------------------ mentions
@dataclass(slots=True)
class _Raw:
    observation: str
    phrase: P.Phrase
    start: int
    end: int
    clause: tuple[int, int]
    sentence: tuple[int, int]
    or_linked: bool = False


def _raw_mentions(low: str, index: PrefixIndex, include_other: bool) -> list[_Raw]:
    sentences = _sentences(low)
    clauses = _clauses(low, sentences)
    clause_starts = [c[0] for c in clauses]
    sentence_starts = [s[0] for s in sentences]
    # Section headers ("Heart and mediastinum:", "Lines and tubes:") name what follows, they state nothing.
    headers = [m.span() for m in _HEADER.finditer(low)]
    raws: list[_Raw] = []
    for group in _GROUPS:
        if group.observation == P.OTHER and not include_other:
            continue
        unmentions = [m.span() for m in group.unmention.finditer(low)] if group.unmention else ()
        for start, end, i in group.regex.finditer(low, index):
            if unmentions and _overlaps((start, end), unmentions):
                continue
            if headers and any(hs <= start and end <= he for hs, he in headers):
                continue
            j = bisect_right(sentence_starts, start) - 1
            if j < 0:
                continue
            c = bisect_right(clause_starts, start) - 1
            raws.append(_Raw(group.observation, group.phrases[i], start, end, clauses[c], sentences[j]))
    raws.sort(key=lambda r: (r.start, r.end))
    _mark_or_links(low, raws)
    return raws


def _mark_or_links(low: str, raws: list[_Raw]) -> None:
    """Mentions chained by "or" / "versus" (with commas between list items) are uncertain (CheXpert)."""
    # Collapse mentions sharing a span region into units; a chain is a run of units joined by or/comma links.
    units: list[list[_Raw]] = []
    for r in raws:
        if units and r.start < max(u.end for u in units[-1]) and r.clause == units[-1][0].clause:
            units[-1].append(r)
        else:
            units.append([r])
    chain: list[list[_Raw]] = []
    has_or = False

    def close() -> None:
        if has_or:
            for unit in chain:
                for r in unit:
                    r.or_linked = True

    for unit in units:
        if chain and chain[-1][0].clause == unit[0].clause:
            between = low[max(r.end for r in chain[-1]) : min(r.start for r in unit)]
            if _OR_LINK.match(between):
                chain.append(unit)
                has_or = True
                continue
            # "A, B or C" chains A in, unless A is a descriptive opacity and B a diagnosis: "retrocardiac
            # opacity, atelectasis or pneumonia" reports the opacity and hedges its cause.
            if _COMMA_LINK.match(between) and not _describes(chain[-1], unit):
                chain.append(unit)
                continue
        close()
        chain, has_or = [unit], False
    close()


def _describes(earlier: list[_Raw], later: list[_Raw]) -> bool:
    opacity = "Lung Opacity"
    return any(r.observation == opacity for r in earlier) and not any(r.observation == opacity for r in later)


def _laterality(low: str, raw: _Raw, previous_end: int, next_start: int) -> str | None:
    if raw.observation in _NO_LATERALITY:
        return None
    pre_start = max(raw.clause[0], previous_end)
    words = list(_WORD.finditer(low, pre_start, raw.start))
    if len(words) > 6:
        pre_start = words[-6].start()
    found = {m.lastgroup for m in _LATERALITY.finditer(low, pre_start, raw.end)}
    if not found and raw.observation != SUPPORT_DEVICES:
        post_end = min(raw.clause[1], next_start)
        comma = low.find(",", raw.end, post_end)
        if comma >= 0:
            post_end = comma
        words = list(_WORD.finditer(low, raw.end, post_end))
        if len(words) > 8:
            post_end = words[8].start()
        found = {m.lastgroup for m in _LATERALITY.finditer(low, raw.end, post_end)}
    if "b" in found or {"l", "r"} <= found:
        return "bilateral"
    if "l" in found:
        return "left"
    if "r" in found:
        return "right"
    return None


def _classify(low: str, raw: _Raw, hits: dict[_TriggerClass, list[_Hit]]) -> tuple[int, str]:
    phrase = raw.phrase
    if phrase.label == NEGATIVE:
        return NEGATIVE, "phrase"

    def fire(fwd: _TriggerClass, bwd: _TriggerClass) -> _Hit | None:
        return _forward(low, hits[fwd], raw.clause, raw.start) or _backward(low, hits[bwd], raw.clause, raw.end)

    if raw.observation == SUPPORT_DEVICES and _PLACEMENT.match(low, raw.end):
        return POSITIVE, "phrase: placement"  # "no pneumothorax after chest tube placement": the tube is in
    if hit := fire(_PRE_FWD, _PRE_BWD):
        return UNCERTAIN, f"uncertain: {hit.trigger.name}"
    if hit := fire(_NEG_FWD, _NEG_BWD):
        return NEGATIVE, f"negated: {hit.trigger.name}"
    if hit := fire(_UNC_FWD, _UNC_BWD):
        return UNCERTAIN, f"uncertain: {hit.trigger.name}"
    if raw.or_linked:
        return UNCERTAIN, "uncertain: or/versus"
    if phrase.label == UNCERTAIN:
        return UNCERTAIN, "phrase"
    if phrase.neutral and (hit := fire(_NEUTRAL_FWD, _NEUTRAL_BWD)):
        comma = low.find(",", raw.end, raw.clause[1])
        context = low[max(raw.clause[0], raw.start - 30) : comma if comma >= 0 else raw.clause[1]]
        if not _ABNORMAL.search(context):
            return UNCERTAIN, f"uncertain: {hit.trigger.name}"
    return POSITIVE, "default"


def _mentions(text: str, include_other: bool) -> list[Mention]:
    low = text.lower()
    index = PrefixIndex(low)
    raws = _raw_mentions(low, index, include_other)
    if not raws:
        return []
    pseudo = [m.span() for m in _PSEUDO.finditer(low)]
    hits = {cls: _find_triggers(low, index, cls, pseudo) for cls in _ALL_CLASSES}
    out: list[Mention] = []
    for k, raw in enumerate(raws):
        label, rule = _classify(low, raw, hits)
        previous_end = max((r.end for r in raws[:k] if r.end <= raw.start), default=0)
        next_start = min((r.start for r in raws[k + 1 :] if r.start >= raw.end), default=len(low))
        laterality = _laterality(low, raw, previous_end, next_start)
        if laterality is None and out and raw.observation not in _NO_LATERALITY:
            # "left effusion with adjacent atelectasis": the atelectasis is on the same side
            prev = out[-1]
            if prev.span[1] <= raw.start and _SAME_SIDE.fullmatch(low, prev.span[1], raw.start):
                laterality = prev.laterality
        span = (raw.start, raw.end)
        out.append(
            Mention(raw.observation, raw.phrase.finding, label, laterality, span, raw.sentence,
                    text[raw.start : raw.end], rule)
        )
        # CheXpert: a positive or uncertain "CHF" / "heart failure" also makes Cardiomegaly uncertain.
        if raw.phrase.finding == "heart failure" and label != NEGATIVE:
            out.append(
                Mention("Cardiomegaly", "heart failure", UNCERTAIN, None, span, raw.sentence,
                        text[raw.start : raw.end], "uncertain: heart failure implies cardiomegaly")
            )
    return out


# ------------------------------------------------------------------------------------------------ public API
def extract_mentions(text: str, *, include_other: bool = False) -> list[Mention]:
    """Every mention of the 14 observations in ``text``, in text order, each with its label and laterality.

    ``include_other=True`` adds mentions of findings outside the 14 (observation ``"Other"``: emphysema,
    granuloma, scoliosis, ...), the ones that block "No Finding".

    >>> [(m.observation, m.label, m.laterality) for m in extract_mentions("Small left effusion. No pneumothorax.")]
    [('Pleural Effusion', 1, 'left'), ('Pneumothorax', 0, None)]
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _mentions(text, include_other)


def aggregate(mentions: Iterable[Mention]) -> dict[str, int | None]:
    """CheXpert's aggregation of mention labels into the 14-observation label dict.

    Per observation: positive if any mention is positive, else uncertain if any is uncertain, else negative if
    any is negative, else ``None``. "No Finding" is 1 when no mention other than Support Devices (mentions of
    findings outside the 14 included) is positive or uncertain, and ``None`` otherwise (never 0).
    """
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    best: dict[str, int] = {}
    finding = False
    for m in mentions:
        if m.observation != SUPPORT_DEVICES and m.label in (POSITIVE, UNCERTAIN):
            finding = True
        if m.observation in best:
            if rank[m.label] > rank[best[m.observation]]:
                best[m.observation] = m.label
        else:
            best[m.observation] = m.label
    labels: dict[str, int | None] = {o: best.get(o) for o in OBSERVATIONS}
    labels[NO_FINDING] = None if finding else POSITIVE
    return labels


def label_report(text: str) -> dict[str, int | None]:
    """The 14 CheXpert labels of one report: 1 positive, 0 negative, -1 uncertain, ``None`` not mentioned.

    A blank text gets ``None`` everywhere (it states nothing; CheXpert would call it "No Finding").

    >>> labels = label_report("Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.")
    >>> {k: v for k, v in labels.items() if v is not None}
    {'No Finding': 1, 'Cardiomegaly': 0, 'Lung Opacity': 0, 'Pneumothorax': 0, 'Pleural Effusion': 0}
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        return dict.fromkeys(OBSERVATIONS)
    return aggregate(_mentions(text, include_other=True))


def label_reports(texts: Iterable[str]) -> list[dict[str, int | None]]:
    """:func:`label_report` over many texts."""
    return [label_report(t) for t in texts]


def report_text(report: str | dict | None) -> str:
    """The text to label from a report given as a string or as sections.

    A dict (the testbed manifest's ``report``, or :class:`~unirg.sr_writer.ReportSections` as ``vars()``) gives
    its ``findings`` and ``impression`` joined by a blank line; indication and comparison are left out (they
    state the question, not the answer). ``None`` gives ``""``.
    """
    if report is None:
        return ""
    if isinstance(report, str):
        return report
    if isinstance(report, dict):
        return "\n\n".join(str(report[k]).strip() for k in ("findings", "impression") if report.get(k))
    raise TypeError(f"report must be a str, a dict of sections or None, got {type(report).__name__}")
