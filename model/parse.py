"""Split a generated report into findings / impression / comparison.

Pure functions that survive messy generations: missing or variant headings
(``FINDINGS:``, ``**Impression**``, ``## Conclusion``, ``IMPRESSION`` on its own line),
markdown, special tokens left in the text, repeated sentences and token loops,
truncation mid-sentence and empty output. What went wrong is reported in
:attr:`ParsedReport.flags` instead of raising, so a caller can decide to store, retry or
drop the draft.

>>> r = parse_report("**FINDINGS:** Lungs are clear. IMPRESSION: Normal chest.")
>>> (r.findings, r.impression, r.flags)
('Lungs are clear.', 'Normal chest.', ())
>>> parse_report("").flags
('empty',)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "EMPTY",
    "MISSING_FINDINGS",
    "MISSING_IMPRESSION",
    "NO_HEADINGS",
    "REPETITION",
    "TRUNCATED",
    "ParsedReport",
    "clean_generation",
    "collapse_repetition",
    "parse_report",
]

EMPTY = "empty"
"""Nothing but whitespace, special tokens or markup was generated."""
NO_HEADINGS = "no_headings"
"""No section heading was found; the whole text went to findings."""
MISSING_FINDINGS = "missing_findings"
MISSING_IMPRESSION = "missing_impression"
TRUNCATED = "truncated"
"""The text stops mid-sentence (or generation hit its token limit)."""
REPETITION = "repetition"
"""Repeated sentences, repeated sections or a token loop were removed."""

# heading word(s) -> canonical section
_SECTION_NAMES: dict[str, tuple[str, ...]] = {
    "findings": ("findings", "finding", "report findings"),
    "impression": ("impressions", "impression", "conclusions", "conclusion", "summary", "opinion"),
    "comparison": ("comparisons", "comparison"),
    "indication": (
        "clinical indication",
        "clinical history",
        "clinical information",
        "reason for exam",
        "reason for examination",
        "indications",
        "indication",
        "history",
    ),
    "technique": ("technique", "examination", "exam"),
}
_CANONICAL = {alias: name for name, aliases in _SECTION_NAMES.items() for alias in aliases}
_ALIASES = "|".join(sorted((re.escape(a).replace(r"\ ", r"\s+") for a in _CANONICAL), key=len, reverse=True))

# A heading followed by a colon may stand anywhere after whitespace or punctuation
# ("... clear Impression: ..."); without a colon it must start the text or a line, or follow
# the end of a sentence, and be alone on its line or followed by a dash. An all-caps heading
# may also be followed by just a space ("FINDINGS The lungs ...").
_BOUNDARY = r"(?:^|(?<=\n)|(?<=[.!?;)\]])|(?<=[.!?;)\]]\s))[ \t]*"
_COLON_HEADING = re.compile(rf"(?:^|(?<=[\s.!?;)\]]))(?P<name>{_ALIASES})[ \t]*[:\uff1a]", re.IGNORECASE)
_LINE_HEADING = re.compile(
    _BOUNDARY + rf"(?P<name>{_ALIASES})(?:[ \t]+[-\u2013\u2014][ \t]+|[ \t]*(?=\n)|[ \t]*$)", re.IGNORECASE
)
_CAPS_HEADING = re.compile(_BOUNDARY + r"(?P<name>FINDINGS|IMPRESSION|CONCLUSION|COMPARISON)(?=[ \t]+[A-Z])")

_SPECIAL_TOKEN = re.compile(
    r"<\|[^|>]{1,40}\|>|</?s>|<pad>|<eos>|<bos>|<unk>|<start_of_turn>(?:model|user)?|<end_of_turn>"
    r"|<start_of_image>|<end_of_image>|<image_soft_token>|<image>|\[/?INST\]"
)
_FENCE = re.compile(r"```[a-zA-Z]*")
_ROLE_LINE = re.compile(r"(?im)^[ \t]*(?:assistant|model)[ \t]*:?[ \t]*$")
_LINE_MARKUP = re.compile(r"(?m)^[ \t]*(?:#{1,6}[ \t]*|>[ \t]*)")
_BULLET = re.compile(r"(?m)^[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t]+")
_EMPHASIS = re.compile(r"\*\*|__|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'\[])")
_TERMINAL = re.compile(r"[.!?][\"')\]]*$")


@dataclass(frozen=True)
class ParsedReport:
    """Sections of a generated report and what had to be repaired.

    ``comparison`` and ``indication`` are ``None`` when the text has no such section
    (or says ``None``/``N/A``). ``flags`` is a tuple of the module constants, in a fixed order.
    """

    findings: str
    impression: str
    comparison: str | None = None
    indication: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No flags: both sections present, nothing repaired."""
        return not self.flags


def clean_generation(text: str) -> str:
    """Drop special tokens, code fences and markdown; turn bullets into sentences.

    >>> clean_generation("## Findings\\n- Lungs clear\\n- No effusion<|im_end|>")
    'Findings\\nLungs clear.\\nNo effusion.'
    """
    text = _SPECIAL_TOKEN.sub(" ", text or "")
    text = _FENCE.sub(" ", text)
    text = _ROLE_LINE.sub("", text.lstrip())
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _LINE_MARKUP.sub("", text)
    text = _EMPHASIS.sub("", text)
    lines = []
    for line in text.split("\n"):
        bullet = _BULLET.match(line)
        line = line[bullet.end() :] if bullet else line
        line = " ".join(line.split())
        if bullet and line and not _TERMINAL.search(line) and not line.endswith(":"):
            line += "."
        lines.append(line)
    return "\n".join(lines).strip()


def _collapse_loops(words: list[str], max_n: int = 24, min_repeats: int = 3) -> tuple[list[str], bool]:
    """Replace a run of >= ``min_repeats`` back-to-back copies of an n-gram by one copy."""
    out: list[str] = []
    changed = False
    i = 0
    norm = [w.lower().strip(".,;:") for w in words]
    while i < len(words):
        for n in range(1, min(max_n, (len(words) - i) // min_repeats) + 1):
            gram = norm[i : i + n]
            repeats = 1
            while norm[i + repeats * n : i + (repeats + 1) * n] == gram:
                repeats += 1
            if repeats >= min_repeats:  # keep the first copy, ending as the last one does (". ")
                copy = words[i : i + n]
                last = words[i + repeats * n - 1]
                ending = last[len(last.rstrip(".,;:!?")) :]
                out.extend([*copy[:-1], copy[-1].rstrip(".,;:!?") + ending])
                i += repeats * n
                changed = True
                break
        else:
            out.append(words[i])
            i += 1
    return out, changed


def collapse_repetition(text: str) -> tuple[str, bool]:
    """Remove token loops and repeated sentences; return ``(text, changed)``.

    >>> collapse_repetition("No effusion. No effusion. Heart normal.")
    ('No effusion. Heart normal.', True)
    >>> collapse_repetition("the the the the lungs are clear.")
    ('the lungs are clear.', True)
    """
    words, looped = _collapse_loops(text.split())
    text = " ".join(words)
    seen: set[str] = set()
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        key = re.sub(r"[^a-z0-9]+", " ", sentence.lower()).strip()
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(sentence)
    return " ".join(kept).strip(), looped or len(kept) < len(_SENTENCE_END.split(text))


def _drop_partial_sentence(text: str) -> str:
    """Cut an unfinished last sentence when a finished one precedes it."""
    if _TERMINAL.search(text):
        return text
    sentences = _SENTENCE_END.split(text)
    if len(sentences) > 1:
        return " ".join(sentences[:-1]).strip()
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    return text[: cut + 1].strip() if cut > 0 else text


def _none_to_null(text: str) -> str | None:
    return None if re.fullmatch(r"(?i)\s*(none|n/?a|not applicable|-)?\s*\.?\s*", text) else text


def parse_report(
    text: str,
    *,
    truncated: bool | None = None,
    sections: tuple[str, ...] = ("findings", "impression"),
) -> ParsedReport:
    """Parse ``text`` into a :class:`ParsedReport`.

    Parameters
    ----------
    text : str
        Raw generated text (special tokens and markdown allowed).
    truncated : bool or None
        Whether generation stopped at its token limit, when the caller knows. ``True``
        drops an unfinished last sentence and flags ``truncated``; ``None`` only flags a
        missing final full stop; ``False`` trusts the text's end.
    sections : tuple of str
        The sections the model is expected to write. ``("findings",)`` for models that
        write findings only (MAIRA-2): then text without headings is not flagged and a
        missing impression is not flagged.

    Examples
    --------
    >>> r = parse_report("Lungs are clear. Heart size is normal", truncated=True)
    >>> (r.findings, r.flags)
    ('Lungs are clear.', ('no_headings', 'missing_impression', 'truncated'))
    """
    cleaned = clean_generation(text)
    if not re.search(r"\w", cleaned):
        return ParsedReport(findings="", impression="", flags=(EMPTY,))

    flags: set[str] = set()
    spans: list[tuple[str, int, int]] = []  # (section, heading start, body start)
    found = [m for rx in (_COLON_HEADING, _LINE_HEADING, _CAPS_HEADING) for m in rx.finditer(cleaned)]
    matches = sorted(found, key=lambda m: (m.start(), -m.end()))
    last_end = -1
    for match in matches:
        if match.start() < last_end:
            continue
        name = _CANONICAL[" ".join(match.group("name").lower().split())]
        spans.append((name, match.start(), match.end()))
        last_end = match.end()

    bodies: dict[str, str] = {}
    preamble = cleaned[: spans[0][1]] if spans else cleaned
    for index, (name, _start, body_start) in enumerate(spans):
        body_end = spans[index + 1][1] if index + 1 < len(spans) else len(cleaned)
        body = cleaned[body_start:body_end].strip()
        if name in bodies:  # a section repeated (a loop): keep the first
            flags.add(REPETITION)
            continue
        bodies[name] = body

    if not spans and len(sections) > 1:
        flags.add(NO_HEADINGS)
    if "findings" not in bodies and preamble.strip():
        bodies["findings"] = preamble.strip()

    # the section that ends the text is the one a token limit cuts
    last_name = spans[-1][0] if spans else "findings"
    out: dict[str, str] = {}
    for name, body in bodies.items():
        body, repeated = collapse_repetition(body)
        if repeated:
            flags.add(REPETITION)
        if name == last_name and body:
            if truncated:
                body = _drop_partial_sentence(body)
                flags.add(TRUNCATED)
            elif truncated is None and not _TERMINAL.search(body):
                flags.add(TRUNCATED)
        out[name] = body

    findings = out.get("findings", "")
    impression = out.get("impression", "")
    if "findings" in sections and not findings:
        flags.add(MISSING_FINDINGS)
    if "impression" in sections and not impression:
        flags.add(MISSING_IMPRESSION)
    order = (EMPTY, NO_HEADINGS, MISSING_FINDINGS, MISSING_IMPRESSION, TRUNCATED, REPETITION)
    comparison = out.get("comparison")
    indication = out.get("indication")
    return ParsedReport(
        findings=findings,
        impression=impression,
        comparison=_none_to_null(comparison) if comparison is not None else None,
        indication=_none_to_null(indication) if indication is not None else None,
        flags=tuple(flag for flag in order if flag in flags),
    )
