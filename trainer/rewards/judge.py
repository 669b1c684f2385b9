"""LLM-judged clinical errors: a CheXprompt/GREEN-style judge as a GRPO reward component.

A judge model reads a reference report and a candidate report and counts the candidate's
clinically *significant* and *insignificant* errors in six categories:

====  =====================================================================
A     false report of a finding (the candidate states a finding the reference lacks)
B     missing a finding (the reference has it, the candidate does not)
C     misidentified anatomic location / position / side of a finding
D     misassessed severity of a finding
E     mentioning a comparison (prior study) that is not in the reference
F     omitting a comparison that describes a change from a prior study
====  =====================================================================

The reward is UniRG's step-2 shape, ``1 / (1 + significant errors)`` (1.0 for a report with
no significant error). A sample whose answer cannot be parsed gets ``None``: a missing reward, not the
worst score. It is logged (``event=judge_unparsed``) and counted (``ClinicalErrorJudge.unparsed_count``,
metric ``judge/unparsed``); ``unirg-trainer rl`` leaves it out of its GRPO group (see
:func:`make_judge_reward` and :func:`unirg.trainer.rl.missing_as_group_mean`).

Pieces, each usable alone:

- :func:`build_judge_messages` - the prompt (``PROMPT_VERSION``; ``answer_format`` "lines" or "json").
- :func:`parse_judge_answer` - pure, model-free parsing of the judge's answer into a :class:`JudgeResult`
  (JSON, CheXprompt-style category lines, ``A=1 B=0`` runs, numbers as words, missing categories
  kept as ``None``, stated totals checked against category sums).
- :class:`TransformersJudgeBackend` (a local causal LM by path, optional ``gguf_file``, chat template,
  greedy) and :class:`OpenAIJudgeBackend` (``POST {base_url}/chat/completions``), both
  :class:`JudgeBackend`.
- :class:`JudgeCache` - sha256(judge id, prompt version, candidate, reference) -> raw answer, in memory
  and optionally in an SQLite file, so repeated RL steps do not re-judge. The raw answer is cached, not
  the parse, so a parser fix applies to cached answers too.
- :class:`ClinicalErrorJudge` - prompt + backend + cache + parser.
- :func:`judge_reward`, :func:`make_judge_reward`, :func:`judge_from_config`, :func:`require_judge`,
  :class:`JudgeNotConfigured`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "CONFIG_KEY",
    "PROMPT_VERSION",
    "ClinicalErrorJudge",
    "JudgeBackend",
    "JudgeCache",
    "JudgeError",
    "JudgeNotConfigured",
    "JudgeResult",
    "OpenAIJudgeBackend",
    "TransformersJudgeBackend",
    "build_judge_messages",
    "cache_key",
    "get_default_judge",
    "judge_from_config",
    "judge_reward",
    "make_judge_reward",
    "parse_count",
    "parse_judge_answer",
    "require_judge",
    "set_default_judge",
]

logger = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")
CATEGORY_NAMES: dict[str, str] = {
    "A": "false report of a finding",
    "B": "missing a finding",
    "C": "misidentification of a finding's anatomic location/position",
    "D": "misassessment of the severity of a finding",
    "E": "mentioning a comparison that isn't in the reference",
    "F": "omitting a comparison detailing a change from a prior study",
}
#: Short labels used in the answer template.
CATEGORY_LABELS: dict[str, str] = {
    "A": "false finding",
    "B": "missed finding",
    "C": "wrong location",
    "D": "wrong severity",
    "E": "false comparison",
    "F": "missed comparison",
}

#: Bump when the prompt text changes: it is part of every cache key.
PROMPT_VERSION = "unirg-judge-v1"

#: The config section that configures the judge (and the weight name that asks for it).
CONFIG_KEY = "reward.judge"
WEIGHT_KEY = "judge"
ENV_BASE_URL = "UNIRG_JUDGE_BASE_URL"
ENV_MODEL = "UNIRG_JUDGE_MODEL"
ENV_API_KEY = "UNIRG_JUDGE_API_KEY"


class JudgeError(RuntimeError):
    """A judge backend failed (HTTP error, malformed server response, model load failure)."""


class JudgeNotConfigured(RuntimeError):
    """The reward asks for the LLM judge but none is configured.

    ``config_key`` names what to set (``reward.judge``).
    """

    def __init__(self, message: str | None = None, *, config_key: str = CONFIG_KEY) -> None:
        self.config_key = config_key
        super().__init__(
            message
            or (
                f"the LLM clinical-error judge is not configured: set `{config_key}` in the config, e.g. "
                f"`{config_key}: {{backend: transformers, model: /path/to/instruct-model}}` or "
                f"`{config_key}: {{backend: openai, base_url: http://host:8000/v1, model: NAME}}` "
                f"(or the environment variables {ENV_BASE_URL} and {ENV_MODEL}), "
                f"or set the `{WEIGHT_KEY}` reward weight to 0"
            )
        )


# --------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You are an experienced radiologist who checks chest X-ray reports for clinical accuracy. "
    "You answer only in the exact format you are asked for."
)

_INSTRUCTIONS = """\
Check a CANDIDATE chest X-ray report against the REFERENCE report that a radiologist wrote for the \
same study. The reference is correct. Count the mistakes in the candidate, sorted into six kinds:
A. false finding: the candidate states a finding that is not in the reference.
B. missed finding: the candidate leaves out a finding that the reference reports.
C. wrong location: the candidate puts a finding in the wrong anatomic place, side or position.
D. wrong severity: the candidate makes a finding more or less severe than the reference does.
E. false comparison: the candidate compares with a prior study where the reference makes no such comparison.
F. missed comparison: the candidate leaves out a change since a prior study that the reference describes.
Call a mistake significant if it could change the patient's care, and insignificant otherwise. \
Count every mistake once. Different wording with the same meaning is not a mistake."""

_LINES_TEMPLATE = "\n".join(
    ["Significant errors:"]
    + [f"{c} {CATEGORY_LABELS[c]}: <number>" for c in CATEGORIES]
    + ["Insignificant errors:"]
    + [f"{c} {CATEGORY_LABELS[c]}: <number>" for c in CATEGORIES]
)
_JSON_TEMPLATE = (
    '{"significant": {'
    + ", ".join(f'"{c}": <number>' for c in CATEGORIES)
    + '}, "insignificant": {'
    + ", ".join(f'"{c}": <number>' for c in CATEGORIES)
    + "}}"
)

ANSWER_FORMATS = ("lines", "json")


def build_judge_messages(
    candidate: str, reference: str, *, answer_format: str = "lines", system_prompt: str | None = SYSTEM_PROMPT
) -> list[dict[str, str]]:
    """The chat messages that ask a judge to count the candidate's errors.

    >>> msgs = build_judge_messages("No effusion.", "Small left effusion.")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
    >>> "REFERENCE:\\nSmall left effusion." in msgs[1]["content"]
    True
    >>> msgs[1]["content"].rstrip().endswith("F missed comparison: <number>")
    True
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    template = _LINES_TEMPLATE if answer_format == "lines" else _JSON_TEMPLATE
    what = "these 14 lines" if answer_format == "lines" else "this JSON object"
    user = (
        f"{_INSTRUCTIONS}\n\n"
        f"REFERENCE:\n{(reference or '').strip() or '(empty)'}\n\n"
        f"CANDIDATE:\n{(candidate or '').strip() or '(empty)'}\n\n"
        f"Reply with exactly {what} and nothing else, replacing each <number> with a whole number "
        f"(0 when there is no such mistake):\n{template}\n"
    )
    messages = [{"role": "user", "content": user}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def prompt_version(answer_format: str = "lines") -> str:
    """The cache-relevant identity of the prompt (``PROMPT_VERSION`` + answer format)."""
    return f"{PROMPT_VERSION}/{answer_format}"


# --------------------------------------------------------------------------------------------
# Result + parsing (pure)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------

Messages = list[dict[str, str]]


@runtime_checkable
class JudgeBackend(Protocol):
    """Anything that answers chat conversations. ``judge_id`` identifies the model and generation
    settings (it is part of the cache key)."""

    judge_id: str

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        """One answer text per conversation, greedy / temperature 0."""
        ...


class TransformersJudgeBackend:
    """A local causal LM (any ``AutoModelForCausalLM`` checkpoint with a chat template) as judge.

    Parameters
    ----------
    model_path : str or Path
        Checkpoint directory (or hub-style id already in the local cache).
    gguf_file : str, optional
        A GGUF file name inside ``model_path``; transformers dequantises it to float on load.
    max_new_tokens : int
        Answer length cap (the 14-line answer needs about 110 tokens with SmolLM2's tokenizer).
    batch_size : int
        Conversations per ``generate`` call (left padding).
    device, dtype : optional
        Where and in what precision to run; default CPU/float32 or the model's own.
    model, tokenizer : optional
        Already-loaded objects (skips loading; ``model_path`` still names the judge).
    judge_id : str, optional
        Overrides the default ``transformers:<path>[#gguf]|max_new_tokens=N``.

    The model is loaded on first use (thread-safe), so building the backend from a config is cheap.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        gguf_file: str | None = None,
        max_new_tokens: int = 160,
        batch_size: int = 8,
        device: str | None = None,
        dtype: Any = None,
        model: Any = None,
        tokenizer: Any = None,
        judge_id: str | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self.gguf_file = gguf_file
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.dtype = dtype
        self._model = model
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        name = os.path.abspath(self.model_path) if os.path.exists(self.model_path) else self.model_path
        self.judge_id = judge_id or (
            f"transformers:{name}{'#' + gguf_file if gguf_file else ''}|max_new_tokens={self.max_new_tokens}"
        )
        self.calls = 0  # conversations generated (not counting cache hits upstream)

    def load(self) -> tuple[Any, Any]:
        """Load (once) and return ``(model, tokenizer)``."""
        with self._lock:
            if self._model is None or self._tokenizer is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                kw: dict[str, Any] = {}
                if self.gguf_file:
                    kw["gguf_file"] = self.gguf_file
                try:
                    if self._tokenizer is None:
                        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, **kw)
                    if self._model is None:
                        mkw = dict(kw)
                        if self.dtype is not None:
                            mkw["dtype"] = self.dtype
                        self._model = AutoModelForCausalLM.from_pretrained(self.model_path, **mkw)
                except (OSError, ValueError) as exc:
                    raise JudgeError(f"cannot load judge model {self.model_path!r}: {exc}") from exc
                if self.device:
                    self._model.to(self.device)
                self._model.eval()
            tok = self._tokenizer
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "left"
            if getattr(tok, "chat_template", None) is None:
                raise JudgeError(f"judge model {self.model_path!r} has no chat template; use an instruction model")
        return self._model, self._tokenizer

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        import torch

        model, tok = self.load()
        out: list[str] = []
        for i in range(0, len(conversations), self.batch_size):
            chunk = conversations[i : i + self.batch_size]
            texts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
            self.calls += len(chunk)
        return [s.strip() for s in out]


class OpenAIJudgeBackend:
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, ``transformers
    serve``, llama.cpp server, a hosted API).

    ``base_url``, ``model`` and ``api_key`` default to the environment variables
    ``UNIRG_JUDGE_BASE_URL``, ``UNIRG_JUDGE_MODEL`` and ``UNIRG_JUDGE_API_KEY`` (then
    ``OPENAI_API_KEY``). Requests use temperature 0 and ``max_tokens``; up to ``concurrency`` are
    in flight; failed requests (connection errors, HTTP 429/5xx) are retried ``retries`` times.
    Only the standard library is used for HTTP.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_tokens: int = 160,
        timeout: float = 120.0,
        concurrency: int = 4,
        retries: int = 2,
        judge_id: str | None = None,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL)
        model = model or os.environ.get(ENV_MODEL)
        if not base_url or not model:
            missing = [n for n, v in ((ENV_BASE_URL, base_url), (ENV_MODEL, model)) if not v]
            raise JudgeNotConfigured(
                f"OpenAI-compatible judge needs base_url and model: set `{CONFIG_KEY}.base_url` / "
                f"`{CONFIG_KEY}.model` or the environment variable(s) {', '.join(missing)}"
            )
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        self.max_tokens = int(max_tokens)
        self.timeout = timeout
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.judge_id = judge_id or f"openai:{self.base_url}|{model}|max_tokens={self.max_tokens}"
        self.calls = 0

    def request_body(self, messages: Messages) -> dict:
        return {
            "model": self.model,
            "messages": list(messages),
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "n": 1,
        }

    def _post(self, messages: Messages) -> str:
        data = json.dumps(self.request_body(messages)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                last = JudgeError(f"judge endpoint {self.url} answered HTTP {exc.code}: {detail}")
                if exc.code not in (408, 429) and exc.code < 500:
                    raise last from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = JudgeError(f"judge endpoint {self.url} unreachable: {exc}")
            except ValueError as exc:
                raise JudgeError(f"judge endpoint {self.url} answered something that is not JSON: {exc}") from exc
            if attempt < self.retries:
                time.sleep(min(2.0**attempt, 10.0))
        else:
            assert last is not None
            raise last
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge endpoint {self.url} answered no chat completion: {str(payload)[:300]}") from exc
        self.calls += 1
        return (content or "").strip()

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self._post(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._post, conversations))


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_key(judge_id: str, prompt_version: str, candidate: str, reference: str) -> str:
    """sha256 hex of the four strings (length-prefixed JSON, so no two tuples collide).

    >>> cache_key("j", "v1", "a", "b") == cache_key("j", "v1", "a", "b") != cache_key("j", "v1", "b", "a")
    True
    """
    blob = json.dumps([judge_id, prompt_version, candidate, reference], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Raw judge answers by :func:`cache_key`: always in memory, optionally in an SQLite file.

    The SQLite file may be shared by several processes (e.g. DDP ranks); writes are
    ``INSERT OR REPLACE`` and each lookup falls back to the file when memory misses.
    ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self._mem: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judge_cache (key TEXT PRIMARY KEY, judge_id TEXT, "
                "prompt_version TEXT, raw TEXT NOT NULL, seconds REAL, created REAL)"
            )
            self._db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            rec = self._mem.get(key)
            if rec is None and self._db is not None:
                row = self._db.execute("SELECT raw, seconds FROM judge_cache WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    rec = {"raw": row[0], "seconds": row[1]}
                    self._mem[key] = rec
            if rec is None:
                self.misses += 1
            else:
                self.hits += 1
            return rec

    def put(
        self, key: str, raw: str, *, seconds: float | None = None, judge_id: str = "", prompt_version: str = ""
    ) -> None:
        with self._lock:
            self._mem[key] = {"raw": raw, "seconds": seconds}
            if self._db is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO judge_cache VALUES (?, ?, ?, ?, ?, ?)",
                    (key, judge_id, prompt_version, raw, seconds, time.time()),
                )
                self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            if self._db is not None:
                return self._db.execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0]
            return len(self._mem)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --------------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------------


class ClinicalErrorJudge:
    """Prompt + backend + cache + parser.

    Parameters
    ----------
    backend : JudgeBackend
    cache : JudgeCache, path or None
        A cache object, an SQLite file path (memory + disk), or ``None`` (memory only).
    answer_format : "lines" or "json"
        Which answer template the prompt asks for (the parser accepts both either way).
    system_prompt : str or None
        ``None`` leaves the system turn out (for models whose template has none).
    """

    def __init__(
        self,
        backend: JudgeBackend,
        *,
        cache: JudgeCache | str | os.PathLike | None = None,
        answer_format: str = "lines",
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> None:
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        self.backend = backend
        self.cache = cache if isinstance(cache, JudgeCache) else JudgeCache(cache)
        self.answer_format = answer_format
        self.system_prompt = system_prompt
        self.judged_count = 0  # answers parsed or not, over this judge's life
        self.unparsed_count = 0  # answers that could not be parsed: missing rewards
        sp = ""
        if system_prompt != SYSTEM_PROMPT:  # a custom system prompt is another prompt version
            sp = "+sys:" + hashlib.sha256((system_prompt or "").encode()).hexdigest()[:8]
        self.prompt_version = prompt_version(answer_format) + sp

    @property
    def judge_id(self) -> str:
        return self.backend.judge_id

    def messages(self, candidate: str, reference: str) -> Messages:
        return build_judge_messages(
            candidate, reference, answer_format=self.answer_format, system_prompt=self.system_prompt
        )

    def judge(self, candidates: Sequence[str], references: Sequence[str]) -> list[JudgeResult]:
        """Judge each (candidate, reference) pair; cached pairs and duplicates are not re-generated."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        keys = [cache_key(self.judge_id, self.prompt_version, c, r) for c, r in zip(candidates, references)]
        records: dict[str, tuple[dict[str, Any], bool]] = {}
        todo: dict[str, tuple[str, str]] = {}
        for k, c, r in zip(keys, candidates, references):
            if k in records or k in todo:
                continue
            rec = self.cache.get(k)
            if rec is not None:
                records[k] = (rec, True)
            else:
                todo[k] = (c, r)
        if todo:
            convs = [self.messages(c, r) for c, r in todo.values()]
            t0 = time.perf_counter()
            answers = self.backend.generate(convs)
            per = (time.perf_counter() - t0) / len(convs)
            if len(answers) != len(convs):
                raise JudgeError(f"backend returned {len(answers)} answers for {len(convs)} conversations")
            for k, ans in zip(todo, answers):
                self.cache.put(k, ans, seconds=per, judge_id=self.judge_id, prompt_version=self.prompt_version)
                records[k] = ({"raw": ans, "seconds": per}, False)
        results = []
        unparsed: list[JudgeResult] = []
        for k in keys:
            rec, cached = records[k]
            res = parse_judge_answer(rec["raw"])
            if not res.parsed:
                unparsed.append(res)
                logger.debug("judge answer not parsed (%s): %r", "; ".join(res.issues), rec["raw"][:200])
            results.append(
                dataclasses.replace(
                    res,
                    judge_id=self.judge_id,
                    prompt_version=self.prompt_version,
                    cached=cached,
                    seconds=rec.get("seconds"),
                )
            )
        self.judged_count += len(results)
        self.unparsed_count += len(unparsed)
        if unparsed:
            logger.warning(
                "event=judge_unparsed count=%d of=%d total_unparsed=%d total_judged=%d judge=%s issues=%r example=%r",
                len(unparsed), len(results), self.unparsed_count, self.judged_count, self.judge_id,
                "; ".join(unparsed[0].issues), (unparsed[0].raw or "")[:200])
        return results

    def judge_one(self, candidate: str, reference: str) -> JudgeResult:
        return self.judge([candidate], [reference])[0]


# --------------------------------------------------------------------------------------------
# Config + reward
# --------------------------------------------------------------------------------------------


def judge_from_config(cfg: Mapping[str, Any] | None) -> ClinicalErrorJudge | None:
    """Build a judge from the ``reward.judge`` config section; ``None``/empty gives ``None``.

    Keys: ``backend`` ("transformers" or "openai"); ``model`` (path, or served model name);
    ``gguf_file``; ``base_url``; ``api_key_env`` (name of the env var holding the key);
    ``max_new_tokens``; ``batch_size``; ``concurrency``; ``device``; ``cache`` (SQLite path);
    ``answer_format``.

    >>> judge_from_config(None) is None
    True
    >>> try:
    ...     judge_from_config({"backend": "transformers"})
    ... except JudgeNotConfigured as exc:
    ...     print(exc)
    `reward.judge.model` is required for the transformers judge backend
    """
    if not cfg:
        return None
    cfg = dict(cfg)
    backend_name = str(cfg.pop("backend", "transformers")).lower()
    cache = cfg.pop("cache", None)
    answer_format = cfg.pop("answer_format", "lines")
    max_new = int(cfg.pop("max_new_tokens", 160))
    if backend_name in ("transformers", "hf", "local"):
        model = cfg.pop("model", None) or cfg.pop("path", None)
        if not model:
            raise JudgeNotConfigured(f"`{CONFIG_KEY}.model` is required for the transformers judge backend")
        backend: JudgeBackend = TransformersJudgeBackend(
            model,
            gguf_file=cfg.pop("gguf_file", None),
            max_new_tokens=max_new,
            batch_size=int(cfg.pop("batch_size", 8)),
            device=cfg.pop("device", None),
        )
    elif backend_name in ("openai", "endpoint", "http"):
        key_env = cfg.pop("api_key_env", None)
        backend = OpenAIJudgeBackend(
            cfg.pop("base_url", None),
            cfg.pop("model", None),
            os.environ.get(key_env) if key_env else None,
            max_tokens=max_new,
            concurrency=int(cfg.pop("concurrency", 4)),
            timeout=float(cfg.pop("timeout", 120.0)),
        )
    else:
        raise ValueError(f"`{CONFIG_KEY}.backend` must be 'transformers' or 'openai', got {backend_name!r}")
    for unused in ("batch_size", "concurrency", "device", "timeout", "gguf_file"):
        cfg.pop(unused, None)  # options of the other backend
    if cfg:
        logger.warning("ignoring unknown %s keys: %s", CONFIG_KEY, ", ".join(sorted(cfg)))
    return ClinicalErrorJudge(backend, cache=cache, answer_format=answer_format)


def require_judge(weights: Mapping[str, float], judge: ClinicalErrorJudge | None, *, name: str = WEIGHT_KEY) -> None:
    """Raise :class:`JudgeNotConfigured` when ``weights[name]`` is non-zero and there is no judge.

    >>> require_judge({"bleu": 1.0, "judge": 0.0}, None)
    >>> try:
    ...     require_judge({"judge": 0.5}, None)
    ... except JudgeNotConfigured as exc:
    ...     print(str(exc)[:81])
    reward weight `judge` is 0.5 but no judge is configured: set `reward.judge` (e.g.
    """
    w = weights.get(name, 0) or 0
    if w and judge is None:
        raise JudgeNotConfigured(
            f"reward weight `{name}` is {w} but no judge is configured: set `{CONFIG_KEY}` "
            f"(e.g. {{backend: transformers, model: PATH}} or {{backend: openai, base_url: URL, model: NAME}}) "
            f"or set the weight to 0"
        )


_default_judge: ClinicalErrorJudge | None = None


def set_default_judge(judge: ClinicalErrorJudge | None) -> None:
    """The judge :func:`judge_reward` uses when none is passed."""
    global _default_judge
    _default_judge = judge


def get_default_judge() -> ClinicalErrorJudge | None:
    return _default_judge


def _completion_text(c: Any) -> str:
    """Plain text of a TRL completion (a string, or a list of chat messages)."""
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        return str(c.get("content", ""))
    if isinstance(c, Sequence):
        parts = [
            m.get("content", "") for m in c if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"
        ]
        return "\n".join(p if isinstance(p, str) else str(p) for p in parts)
    return str(c)


def _judge_batch(
    judge: ClinicalErrorJudge, completions: Sequence[Any], reference: Sequence[Any] | None, kw: Mapping[str, Any]
) -> list[JudgeResult]:
    if reference is None:
        reference = kw.get("references")
    if reference is None:
        raise ValueError("the judge reward needs the `reference` column (reference reports)")
    cands = [_completion_text(c) for c in completions]
    refs = [r if isinstance(r, str) else _completion_text(r) for r in reference]
    results = judge.judge(cands, refs)
    log_metric = kw.get("log_metric")
    if callable(log_metric) and results:
        ok = [r for r in results if r.parsed]
        log_metric("judge/parse_rate", len(ok) / len(results))
        log_metric("judge/unparsed", float(len(results) - len(ok)))
        log_metric("judge/unparsed_total", float(judge.unparsed_count))
        log_metric("judge/cache_hit_rate", sum(r.cached for r in results) / len(results))
        if ok:
            log_metric("judge/significant_errors", sum(r.significant_total for r in ok) / len(ok))
        ins = [r.insignificant_total for r in results if r.insignificant_total is not None]
        if ins:
            log_metric("judge/insignificant_errors", sum(ins) / len(ins))
    return results


def judge_reward(
    completions: Sequence[Any],
    reference: Sequence[str] | None = None,
    *,
    judge: ClinicalErrorJudge | None = None,
    unparsed: float | None = None,
    **kw: Any,
) -> list[float | None]:
    """``1 / (1 + clinically significant errors)`` per completion (TRL reward signature).

    ``reference`` is the dataset column of reference reports (repeated per generation by TRL);
    completions may be strings or chat-message lists. ``judge`` defaults to
    :func:`set_default_judge`'s; without one, :class:`JudgeNotConfigured`. Pairs whose answer does
    not parse get ``unparsed`` (default ``None``: a missing reward, TRL's NaN). When TRL passes
    ``log_metric``, logs ``judge/parse_rate``, ``judge/unparsed`` (this batch), ``judge/unparsed_total``,
    ``judge/significant_errors``, ``judge/insignificant_errors`` and ``judge/cache_hit_rate``.

    >>> set_default_judge(None)
    >>> try:
    ...     judge_reward(["No acute findings."], ["Normal chest."])
    ... except JudgeNotConfigured as exc:
    ...     print(exc.config_key, "|", str(exc)[:66])
    reward.judge | the LLM clinical-error judge is not configured: set `reward.judge`
    """
    judge = judge or _default_judge
    if judge is None:
        raise JudgeNotConfigured()
    results = _judge_batch(judge, completions, reference, kw)
    return [r.reward if r.parsed else unparsed for r in results]


def make_judge_reward(
    judge: ClinicalErrorJudge | None, *, name: str = WEIGHT_KEY, unparsed: float | None = None
) -> Callable[..., list[float | None]]:
    """A TRL reward function bound to ``judge`` (``__name__`` = ``name``, used in TRL's logs).

    ``judge=None`` raises :class:`JudgeNotConfigured` now, not at the first training step. The
    returned function keeps the latest batch's :class:`JudgeResult` list in ``.last_results`` and
    counts in ``.judged`` / ``.unparsed`` (all calls; the judge's own counters are
    ``.judge.judged_count`` / ``.judge.unparsed_count``).

    ``unparsed=None`` (default) returns ``None`` for unparseable answers: a missing reward. TRL 1.16's
    GRPO turns it into NaN but then sums the weighted components with ``nansum``, which would count it
    as 0, the worst judge score; ``unirg-trainer rl`` therefore wraps this function with
    :func:`unirg.trainer.rl.missing_as_group_mean`, which leaves it out of its group.
    """
    if judge is None:
        raise JudgeNotConfigured()

    def reward(completions: Sequence[Any], reference: Sequence[str] | None = None, **kw: Any) -> list[float | None]:
        kw.pop("judge", None)
        results = _judge_batch(judge, completions, reference, kw)
        reward.last_results = results
        reward.judged += len(results)
        reward.unparsed += sum(not r.parsed for r in results)
        return [r.reward if r.parsed else unparsed for r in results]

    reward.__name__ = name
    reward.__qualname__ = name
    reward.judge = judge
    reward.last_results = []
    reward.judged = 0
    reward.unparsed = 0
    return reward
