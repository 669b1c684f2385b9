"""Pure, model-free parsing of a judge answer into a :class:`JudgeResult` (:func:`parse_judge_answer`)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from unirg.trainer.rewards.judge.prompt import CATEGORIES


def _empty_counts() -> dict[str, int | None]:
    return {c: None for c in CATEGORIES}


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """One judged (candidate, reference) pair.

    ``significant`` / ``insignificant`` map each category A-F to a count, or ``None`` where the
    answer did not give it. ``significant_total`` is the sum of the six categories when all are
    known; otherwise the judge's own stated total when it is at least the sum of the known ones;
    otherwise ``None`` (and then :attr:`reward` is ``None``). ``issues`` says why something is
    missing or inconsistent; ``raw`` is the judge's answer as it came back.
    """

    significant: dict[str, int | None] = dataclasses.field(default_factory=_empty_counts)
    insignificant: dict[str, int | None] = dataclasses.field(default_factory=_empty_counts)
    significant_total: int | None = None
    insignificant_total: int | None = None
    raw: str = ""
    answer_format: str | None = None  # "json" or "lines": what the parser recognised
    issues: tuple[str, ...] = ()
    judge_id: str = ""
    prompt_version: str = ""
    cached: bool = False
    seconds: float | None = None  # generation time (of the original call, when cached)

    @property
    def parsed(self) -> bool:
        """The significant-error total is known, so the pair has a reward."""
        return self.significant_total is not None

    @property
    def reward(self) -> float | None:
        """``1 / (1 + significant errors)``, or ``None`` when that count is unknown."""
        return None if self.significant_total is None else 1.0 / (1.0 + self.significant_total)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["issues"] = list(self.issues)
        d["reward"] = self.reward
        return d


_WORD_NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_WORD_NUMBERS.update({"none": 0, "no": 0, "nil": 0, "single": 1, "a": 1, "an": 1, "once": 1, "twice": 2})
_UNIT_RE = re.compile(r"\s*(?:(?:cm|mm|ml|m|x)\b|%|/\s*\d|-\s*\d|\u2013|(?:to|or)\s+\w)", re.IGNORECASE)
_COUNT_RE = re.compile(r"^[\s\"'`*_\[(]*(?:(-?\d+(?:\.\d+)?)|([a-z]+))\b", re.IGNORECASE)


def parse_count(value: Any) -> int | None:
    """A non-negative whole count from a number, digits or an English number word; else ``None``.

    >>> [parse_count(v) for v in (2, "3", " 1 (left effusion)", "two", "None", "no errors", "0.0")]
    [2, 3, 1, 2, 0, 0, 0]
    >>> [parse_count(v) for v in ("N/A", "", "-1", "1.5", "<number>", None, True, "unknown", "4 cm", "1-2")]
    [None, None, None, None, None, None, None, None, None, None]
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value >= 0 and value.is_integer() else None
    if not isinstance(value, str):
        return None
    m = _COUNT_RE.match(value)
    if not m:
        return None
    digits, word = m.groups()
    if _UNIT_RE.match(value[m.end() :]):
        return None  # "4 cm", "1-2", "1/3", "50%": a measurement or a range, not a count
    if digits is not None:
        f = float(digits)
        return int(f) if f >= 0 and f.is_integer() else None
    word = word.lower()
    if word in ("a", "an") and not re.match(r"^\s*an?\s+(single\s+)?(error|mistake)", value, re.IGNORECASE):
        return None  # "a" only counts as one in "a (single) error"
    return _WORD_NUMBERS.get(word)


_LETTER_RE = re.compile(
    r"""^\s*(?:
        [(\[]\s*([A-Fa-f])\s*[)\]]          # (a) [B]
      | ([A-Fa-f])\s*[).:\-]                 # a)  B.  c:  D-
      | ([A-F])(?=\s|$)                      # A false finding   (upper case only: "a" is an article)
      | (?:type|category|error)\s+([A-Fa-f])\b  # category C
    )""",
    re.VERBOSE,
)


def _category_from_label(label: str) -> str | None:
    """Which category A-F a line's label names (by letter, else by wording).

    >>> [_category_from_label(s) for s in ("(a) False report of a finding", "B missed finding",
    ...     "c. location", "Wrong severity", "false comparison", "omitting a comparison", "Total")]
    ['A', 'B', 'C', 'D', 'E', 'F', None]
    """
    m = _LETTER_RE.match(label)
    if m:
        letter = next(g for g in m.groups() if g)
        return letter.upper()
    s = label.lower()
    if "compar" in s or "prior" in s:
        if re.search(r"\b(omit|miss|lack|absent|left out)", s):
            return "F"
        if re.search(r"\b(false|mention|extra|spurious|unsupported|incorrect|wrong|hallucinat)", s):
            return "E"
        return None
    if re.search(r"locat|position|anatom|lateral|side", s):
        return "C"
    if "sever" in s or "grade" in s:
        return "D"
    if re.search(r"\b(miss|omit|omission|false negative)", s):
        return "B"
    if re.search(r"\b(false|hallucinat|extra|spurious|false positive)", s):
        return "A"
    return None


_SECTION_KEYS = ("insignificant", "significant")


def _section_of(text: str) -> str | None:
    s = text.lower()
    if "insignificant" in s or "not significant" in s or "non-significant" in s or "minor" in s:
        return "insignificant"
    if "significant" in s or "major" in s:
        return "significant"
    return None


class _Block:
    __slots__ = ("kind", "counts", "total", "conflicts")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.counts: dict[str, int | None] = {}
        self.total: int | None = None
        self.conflicts: set[str] = set()

    def set(self, cat: str, value: int | None) -> None:
        """Record a count; an unreadable value (None) never overrides or conflicts with a number."""
        if cat in self.conflicts:
            return
        old = self.counts.get(cat)
        if value is None:
            self.counts.setdefault(cat, None)
        elif old is None:
            self.counts[cat] = value
        elif old != value:
            self.conflicts.add(cat)
            self.counts[cat] = None

    def known(self) -> int:
        return sum(v is not None for v in self.counts.values())

    def empty(self) -> bool:
        return not self.counts and self.total is None


_INLINE_PAIR_RE = re.compile(r"(?<![A-Za-z])\(?([A-F])\)?\s*[:=]\s*([0-9]+|[A-Za-z]+)")
_SEP_RE = re.compile(r"\s*(?::|=|\s[-\u2013\u2014]\s)\s*")
_STRIP = " \t\"'`*_#>|,{}"


def _clean_line(line: str) -> str:
    line = re.sub(r"^\s*(?:[-*\u2022+]|\d+[.)])\s+", "", line)  # bullets, "1." numbering
    line = line.replace("**", "").replace("__", "")
    return line.strip(_STRIP)


def _parse_lines(text: str) -> list[_Block]:
    """Category lines grouped under "significant"/"insignificant" headers, in order."""
    blocks: list[_Block] = []
    current: _Block | None = None
    orphan = _Block("unassigned")
    for raw_line in text.splitlines():
        line = _clean_line(raw_line)
        if not line:
            continue
        # "Significant errors: A=0 B=1 C=0 ..." style runs of pairs.
        pairs = _INLINE_PAIR_RE.findall(line)
        section = _section_of(line)
        if len(pairs) >= 2:
            if section:
                current = _Block(section)
                blocks.append(current)
            target = current or orphan
            for letter, val in pairs:
                target.set(letter, parse_count(val))
            continue
        parts = _SEP_RE.split(line, maxsplit=1)
        label, value = (parts[0], parts[1]) if len(parts) == 2 else (line, "")
        label = label.strip(_STRIP)
        if value and parse_count(value) is None:
            tail = _SEP_RE.split(value)[-1]  # "A: false finding: 1"
            if parse_count(tail) is not None:
                value = tail
        cat = _category_from_label(label)
        if cat is None and not value:
            # "C wrong location 1" (no separator): trailing count.
            m = re.match(r"^(.*?\D)\s+(\d+)\s*$", line)
            if m and _category_from_label(m.group(1)):
                label, value, cat = m.group(1), m.group(2), _category_from_label(m.group(1))
        # A lettered line ("(b) ...", "C ...") is a category line even if it says "significant";
        # otherwise a line naming a section is a header ("Significant errors:", "Minor errors: 1").
        if cat is not None and (_LETTER_RE.match(label) or _section_of(label) is None):
            (current or orphan).set(cat, parse_count(value))
            continue
        if section is not None:
            is_total = "total" in line.lower() or (value and parse_count(value) is not None)
            if "total" in label.lower() and current is not None and current.kind == section and not current.empty():
                current.total = parse_count(value)  # "Total significant errors: 2" after the lines
                continue
            current = _Block(section)
            blocks.append(current)
            if is_total and value:
                current.total = parse_count(value)
            continue
        if "total" in label.lower() and current is not None and value:
            current.total = parse_count(value)
    if orphan.counts or orphan.total is not None:
        blocks.insert(0, orphan)
    return blocks


def _find_json_objects(text: str) -> list[Any]:
    """Every top-level ``{...}`` in ``text`` that parses as JSON (trailing commas tolerated)."""
    found = []
    depth, start, in_str, esc = 0, None, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0 and start is not None:
                chunk = text[start : i + 1]
                for attempt in (chunk, re.sub(r",\s*([}\]])", r"\1", chunk)):
                    try:
                        found.append(json.loads(attempt))
                        break
                    except ValueError:
                        pass
                start = None
    return found


def _json_key_category(key: str) -> str | None:
    k = str(key).strip()
    if re.fullmatch(r"[(\[]?[A-Fa-f][)\].]?", k):
        return k.strip("()[].").upper()
    return _category_from_label(k.replace("_", " "))


def _blocks_from_json(obj: Any) -> list[_Block]:
    if not isinstance(obj, dict):
        return []
    blocks = []
    for key, val in obj.items():
        kind = _section_of(str(key).replace("_", " "))
        if kind is None:
            if isinstance(val, dict):  # {"errors": {"significant": {...}}}
                blocks.extend(_blocks_from_json(val))
            continue
        block = _Block(kind)
        if isinstance(val, dict):
            for k, v in val.items():
                if "total" in str(k).lower():
                    block.total = parse_count(v)
                    continue
                cat = _json_key_category(k)
                if cat is not None:
                    block.set(cat, parse_count(v))
        elif isinstance(val, list):  # a list of errors, GREEN-style: [{"category": "B", ...}, ...]
            counts = dict.fromkeys(CATEGORIES, 0)
            ok = True
            for item in val:
                cat = None
                if isinstance(item, dict):
                    for field in ("category", "type", "error_type", "kind"):
                        if field in item:
                            cat = _json_key_category(str(item[field]))
                            break
                elif isinstance(item, str):
                    cat = _json_key_category(item)
                if cat is None:
                    ok = False
                    break
                counts[cat] += 1
            if ok:
                for c, n in counts.items():
                    block.set(c, n)
        else:
            block.total = parse_count(val)
        blocks.append(block)
    return blocks


def _pick(blocks: list[_Block], kind: str) -> _Block | None:
    """The last complete block of ``kind``; else the one with most known counts (later wins ties)."""
    mine = [b for b in blocks if b.kind == kind]
    if not mine:
        return None
    complete = [b for b in mine if all(b.counts.get(c) is not None for c in CATEGORIES)]
    if complete:
        return complete[-1]
    return max(reversed(mine), key=lambda b: (b.known(), b.total is not None))


def _resolve(block: _Block | None, kind: str, issues: list[str]) -> tuple[dict[str, int | None], int | None]:
    if block is None:
        issues.append(f"no {kind} errors section")
        return _empty_counts(), None
    counts = {c: block.counts.get(c) for c in CATEGORIES}
    for c in sorted(block.conflicts):
        issues.append(f"{kind} {c}: conflicting counts")
    missing = [c for c in CATEGORIES if counts[c] is None]
    known_sum = sum(v for v in counts.values() if v is not None)
    if not missing:
        if block.total is not None and block.total != known_sum:
            issues.append(f"{kind}: stated total {block.total} != category sum {known_sum}; using the sum")
        return counts, known_sum
    if block.total is not None and block.total >= known_sum:
        if len(missing) < len(CATEGORIES):
            issues.append(f"{kind}: categories {''.join(missing)} missing; using the stated total {block.total}")
        else:
            issues.append(f"{kind}: only a total ({block.total}), no per-category counts")
        return counts, block.total
    if block.total is not None:
        issues.append(
            f"{kind}: categories {''.join(missing)} missing and the stated total {block.total} "
            f"< known sum {known_sum}"
        )
    else:
        issues.append(f"{kind}: categories {''.join(missing)} missing and no total")
    return counts, None


def parse_judge_answer(text: str | None) -> JudgeResult:
    """Parse a judge's answer (JSON or category lines) into a :class:`JudgeResult`.

    Category lines, CheXprompt style (letters, names or both; words as numbers):

    >>> r = parse_judge_answer('''Significant errors:
    ... (a) False report of a finding: 1
    ... (b) Missing a finding: two
    ... (c) Wrong location: 0
    ... (d) Wrong severity: 0
    ... (e) False comparison: 0
    ... (f) Missed comparison: none
    ... Insignificant errors:
    ... A false finding: 0
    ... B missed finding: 1
    ... C wrong location: 0
    ... D wrong severity: 0
    ... E false comparison: 0
    ... F missed comparison: 0''')
    >>> r.significant_total, r.insignificant_total, r.reward, r.significant["B"], r.issues
    (3, 1, 0.25, 2, ())

    JSON, also inside a code fence; a total that disagrees with the categories is noted and the
    category sum is used:

    >>> r = parse_judge_answer('```json\\n{"significant": {"A": 0, "B": 1, "C": 0, "D": 0, "E": 0, '
    ...     '"F": 0, "total": 3}, "insignificant": {"A": 0, "B": 0, "C": 0, "D": 0, "E": 0, "F": 0}}\\n```')
    >>> r.answer_format, r.significant_total, r.issues
    ('json', 1, ('significant: stated total 3 != category sum 1; using the sum',))

    Missing categories stay unknown (``None``, not 0); without a total the reward is unknown:

    >>> r = parse_judge_answer("Significant errors:\\nA false finding: 0\\nB missed finding: 1")
    >>> r.significant["C"], r.significant_total, r.reward
    (None, None, None)
    >>> r.issues[0]
    'significant: categories CDEF missing and no total'

    Garbage gives an unparsed result that keeps the raw text:

    >>> r = parse_judge_answer("The candidate report looks fine to me.")
    >>> r.parsed, r.reward, r.raw
    (False, None, 'The candidate report looks fine to me.')
    """
    text = text or ""
    issues: list[str] = []
    blocks: list[_Block] = []
    fmt = None
    for obj in _find_json_objects(text):
        jb = _blocks_from_json(obj)
        if any(b.counts or b.total is not None for b in jb):
            blocks = jb  # the last JSON object with usable content wins
            fmt = "json"
    if not blocks:
        blocks = _parse_lines(text)
        blocks = [b for b in blocks if not b.empty()]
        if blocks:
            fmt = "lines"
    if not text.strip():
        issues.append("empty answer")
    elif not blocks:
        issues.append("no error counts found in the answer")
    if "<number>" in text:
        issues.append("the answer repeats the template's <number> placeholders")
    if blocks and not any(b.kind == "significant" for b in blocks) and blocks[0].kind == "unassigned":
        # The template opens with the significant section; a model that drops the header but
        # writes the category lines is answering that section.
        blocks[0].kind = "significant"
        issues.append("no 'Significant errors' header: the unlabelled category lines are taken as significant")
    sig_counts, sig_total = _resolve(_pick(blocks, "significant"), "significant", issues) if blocks else (
        _empty_counts(),
        None,
    )
    ins_counts, ins_total = _resolve(_pick(blocks, "insignificant"), "insignificant", issues) if blocks else (
        _empty_counts(),
        None,
    )
    return JudgeResult(
        significant=sig_counts,
        insignificant=ins_counts,
        significant_total=sig_total,
        insignificant_total=ins_total,
        raw=text,
        answer_format=fmt,
        issues=tuple(issues),
    )
