"""A faster ``finditer`` for alternations of many phrase patterns.

Python's ``re`` tries every alternative at every character. Phrase patterns can only start at a word start
with one of a few short prefixes ("eff", "pne", "no ", ...), so :class:`Alternation` reads the possible 1-3
character prefixes off the parsed patterns, and tries the alternation only at the word starts of a text whose
first characters are such a prefix (found by a set intersection with a :class:`PrefixIndex` of the text, built
once and shared by all alternations). When the prefixes cannot be enumerated (a pattern starting with ``.`` or
``\\w``, too many combinations) it falls back to candidate positions by first character, or to plain
``finditer``. Same matches as ``re.finditer`` for patterns that start at a word boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

try:  # Python 3.11+: the parser lives in re._parser; sre_parse is its deprecated alias.
    from re import _constants as _c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_SPACE = frozenset(" \t\n\r\f\v")
_K = 3  # prefix length
_MAX_PREFIXES = 4000
_WORD_START = re.compile(r"(?<![a-z0-9_])[a-z0-9]")


class _Unknown(Exception):
    """The prefixes of a pattern cannot be enumerated."""


def _cat(heads: set[str], tails: set[str]) -> set[str]:
    out = set()
    for h in heads:
        if len(h) >= _K:
            out.add(h)
        else:
            for t in tails:
                out.add((h + t)[:_K])
    if len(out) > _MAX_PREFIXES:
        raise _Unknown
    return out


def _seq_prefixes(items) -> set[str]:
    """Strings of length ``_K`` a match can start with; shorter strings are whole matches of the sequence."""
    cur = {""}
    for op, av in items:
        if all(len(s) >= _K for s in cur):
            break
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue
        cur = _cat(cur, _op_prefixes(op, av))
    return cur


def _op_prefixes(op, av) -> set[str]:
    if op is _c.LITERAL:
        return {chr(av)}
    if op is _c.IN:
        out = set()
        for o, a in av:
            if o is _c.LITERAL:
                out.add(chr(a))
            elif o is _c.RANGE:
                out.update(chr(c) for c in range(a[0], a[1] + 1))
            elif o is _c.CATEGORY and a is _c.CATEGORY_SPACE:
                out.update(_SPACE)
            else:
                raise _Unknown
        return out
    if op is _c.SUBPATTERN:
        return _seq_prefixes(av[-1])
    if op is _c.BRANCH:
        out = set()
        for branch in av[1]:
            out |= _seq_prefixes(branch)
        return out
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
        low, high, sub = av
        if sub.getwidth()[0] == 0:
            raise _Unknown
        one = _seq_prefixes(sub)
        out: set[str] = set()
        reps = {""}
        for count in range(0, min(high, _K) + 1):
            if count >= low:
                out |= reps
            reps = _cat(reps, one)
        out |= {r for r in reps if len(r) >= _K}
        return out
    raise _Unknown


def _prefixes(pattern: str) -> set[str] | None:
    try:
        out = _seq_prefixes(_sre_parse.parse(pattern))
    except _Unknown:
        return None
    if "" in out:
        return None
    return out


class PrefixIndex:
    """Word-start positions of a text by their first 1, 2 and 3 characters (build once per text)."""

    __slots__ = ("by_length",)

    def __init__(self, text: str) -> None:
        by_length: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {})
        for m in _WORD_START.finditer(text):
            pos = m.start()
            for k in (1, 2, 3):
                by_length[k].setdefault(text[pos : pos + k], []).append(pos)
        self.by_length = by_length


def _first_chars(items) -> set[str] | None:
    """The characters a match of the parsed sequence can start with; ``None`` if unknown or nullable."""
    out: set[str] = set()
    for op, av in items:
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue
        if op is _c.LITERAL:
            out.add(chr(av))
            return out
        if op is _c.IN:
            for o, a in av:
                if o is _c.LITERAL:
                    out.add(chr(a))
                elif o is _c.RANGE:
                    out.update(chr(c) for c in range(a[0], a[1] + 1))
                elif o is _c.CATEGORY and a is _c.CATEGORY_SPACE:
                    out.update(_SPACE)
                else:
                    return None
            return out
        if op is _c.SUBPATTERN:
            sub = av[-1]
            first = _first_chars(sub)
            if first is None:
                return None
            out |= first
            if sub.getwidth()[0] > 0:
                return out
            continue
        if op is _c.BRANCH:
            nullable = False
            for branch in av[1]:
                first = _first_chars(branch)
                if first is None:
                    return None
                out |= first
                nullable = nullable or branch.getwidth()[0] == 0
            if not nullable:
                return out
            continue
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            low, _high, sub = av
            first = _first_chars(sub)
            if first is None:
                return None
            out |= first
            if low > 0:
                return out
            continue
        return None
    return None


class Alternation:
    """``(?P<x0>p0)|(?P<x1>p1)|...`` with a candidate-position prefilter.

    ``finditer(text)`` yields ``(start, end, index)`` of non-overlapping leftmost matches, ``index`` being the
    alternative that matched (the first one in list order at that position), like ``re.finditer``.
    """

    def __init__(self, patterns: Sequence[str], prefix: str = "x") -> None:
        self.prefix = prefix
        self.regex = re.compile("|".join(f"(?P<{prefix}{i}>{p})" for i, p in enumerate(patterns)))
        firsts: set[str] = set()
        for p in patterns:
            first = _first_chars(_sre_parse.parse(p))
            if first is None:
                firsts = set()
                break
            firsts |= first
        self.candidates: re.Pattern[str] | None = None
        # Prefix sets by length (1..3) when every pattern's prefixes are known and start with a word character.
        self.prefixes: tuple[frozenset[str], ...] | None = None
        by_length: list[set[str]] = [set(), set(), set(), set()]
        for p in patterns:
            prefixes = _prefixes(p)
            if prefixes is None or any(s[0] not in _ALNUM for s in prefixes):
                by_length = []
                break
            for s in prefixes:
                by_length[len(s)].add(s)
        if by_length:
            self.prefixes = tuple(frozenset(s) for s in by_length)
        if firsts:
            word = "".join(sorted(re.escape(c) for c in firsts & _ALNUM))
            other = "".join(sorted(re.escape(c) for c in firsts - _ALNUM))
            parts = ([rf"(?<![a-z0-9])[{word}]"] if word else []) + ([rf"[{other}]"] if other else [])
            self.candidates = re.compile("|".join(parts))

    def finditer(self, text: str, index: PrefixIndex | None = None) -> Iterator[tuple[int, int, int]]:
        """Matches in ``text``; pass the text's :class:`PrefixIndex` to share it between alternations."""
        cut = len(self.prefix)
        if self.prefixes is not None:
            index = index or PrefixIndex(text)
            positions: list[int] = []
            for k in (1, 2, 3):
                table = index.by_length[k]
                for key in table.keys() & self.prefixes[k]:
                    positions.extend(table[key])
            positions.sort()
        elif self.candidates is not None:
            positions = [c.start() for c in self.candidates.finditer(text)]
        else:
            for m in self.regex.finditer(text):
                yield m.start(), m.end(), int(m.lastgroup[cut:])
            return
        match = self.regex.match
        next_allowed = 0
        for pos in positions:
            if pos < next_allowed:
                continue
            m = match(text, pos)
            if m is None:
                continue
            yield m.start(), m.end(), int(m.lastgroup[cut:])
            next_allowed = m.end() if m.end() > pos else pos + 1
