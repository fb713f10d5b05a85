"""Regexes of domains and URLs, judged the way nginx will run them: by PCRE2, with a bounded cost.

nginx compiles a ``~`` domain (server_name) caselessly, a ``~*`` URL caselessly and a ``~`` URL
case-sensitively, as 8-bit patterns (no UTF). Every tenant's regex runs in the workers all tenants
share, so a regex may only use a small, documented subset (docs/security.md):

* literals, ``.``, classes ``[...]`` (ranges, negation, ``\\d \\w \\s`` and their negations),
  escapes ``\\d \\D \\w \\W \\s \\S \\b \\B \\n \\r \\t \\f \\xHH`` and escaped punctuation;
* groups ``(...)`` (numbered captures) and ``(?:...)``, atomic groups ``(?>...)``, alternation;
* quantifiers ``* + ?`` (lazy and possessive forms too), anchors ``^ $``, the flag ``(?i)``.

Named captures in any spelling are refused: nginx would turn them into variables, and a tenant
could shadow a variable the compiler generates for another load balancer. So are back-references,
subroutine calls, conditions, lookaround, callouts and ``(*VERB)`` options. The pattern must
compile with PCRE2; nested or ambiguous quantifiers (``(a+)+``, ``(a|a)+``, ``\\d+\\d+``) are refused
statically, and the pattern is then run with a PCRE2 match limit against adversarial subjects of
the largest header size: a pattern that needs more steps than the budget is refused.
"""

from __future__ import annotations

import functools
import re
import re._constants as sre
import re._parser as sre_parse
import warnings
from typing import Any

import pcre2

SUBJECT_LENGTH = 8192  # nginx's large_client_header_buffers: the longest Host or request line
STEP_BUDGET = 40 * SUBJECT_LENGTH  # PCRE2 match() calls allowed per adversarial subject
ESCAPES = set("dDwWsSbBnrtfx")
NAMED = ("(?P<", "(?<", "(?'", "(?P=", "(?P>", "(?&")
ALL = (1 << 256) - 1
DIGIT = sum(1 << c for c in range(ord("0"), ord("9") + 1))
LOWER = sum(1 << c for c in range(ord("a"), ord("z") + 1))
UPPER = LOWER >> 32
WORD = DIGIT | LOWER | UPPER | 1 << ord("_")
SPACE = sum(1 << c for c in b" \t\n\v\f\r")
CATEGORIES = {
    sre.CATEGORY_DIGIT: DIGIT,
    sre.CATEGORY_NOT_DIGIT: ALL & ~DIGIT,
    sre.CATEGORY_WORD: WORD,
    sre.CATEGORY_NOT_WORD: ALL & ~WORD,
    sre.CATEGORY_SPACE: SPACE,
    sre.CATEGORY_NOT_SPACE: ALL & ~SPACE,
}
ANCHORS = {sre.AT_BEGINNING, sre.AT_END, sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY}
REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


class RegexError(ValueError):
    """A regex outside the subset, refused by PCRE2, or too costly; the message says which."""


@functools.lru_cache(maxsize=4096)
def check_regex(pattern: str, caseless: bool) -> None:
    """Raise :class:`RegexError` unless nginx may run ``pattern`` for every tenant."""
    _check_tokens(pattern)
    raw = pattern.encode("ascii")
    try:
        compiled = pcre2.compile(raw, pcre2.IGNORECASE if caseless else 0, jit=False)
    except (pcre2.PatternError, pcre2.LibraryError) as exc:
        raise RegexError(f"PCRE2 refuses it: {exc}") from None
    if compiled.groupindex:
        raise RegexError("named captures are not allowed (nginx would turn them into variables)")
    try:
        with warnings.catch_warnings():  # Python's notes on '[[' or '--' in a class: literal there as in PCRE2
            warnings.simplefilter("ignore", FutureWarning)
            tree = sre_parse.parse(raw, re.IGNORECASE if caseless else 0)
    except (re.error, OverflowError, RecursionError) as exc:
        raise RegexError(f"it uses syntax outside the supported subset ({exc})") from None
    if tree.state.flags & ~(re.IGNORECASE | re.ASCII):
        raise RegexError("the only inline flag allowed is (?i)")
    _Shape(caseless or bool(tree.state.flags & re.IGNORECASE)).check(list(tree))
    _check_cost(raw, caseless, list(tree))


def _check_tokens(pattern: str) -> None:
    """Refuse constructs outside the subset by their spelling, before any parser sees them."""
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt.isalnum() and nxt not in ESCAPES:
                raise RegexError(f"the escape \\{nxt} is not supported (no back-references; see docs/security.md)")
            i += 2
            continue
        if in_class:
            if c == "[" and pattern[i + 1 : i + 2] in (":", ".", "="):
                raise RegexError("POSIX classes such as [[:alpha:]] are not supported; write the range")
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            i += 2 if pattern[i + 1 : i + 2] == "]" else 3 if pattern[i + 1 : i + 3] == "^]" else 1
            continue
        elif c == "(":
            _check_group_opening(pattern[i:])
        i += 1


def _check_group_opening(rest: str) -> None:
    if rest.startswith(NAMED):
        raise RegexError("named captures and references are not allowed (nginx would turn them into variables)")
    if rest.startswith("(*"):
        raise RegexError("PCRE verbs and options such as (*UTF) are not allowed")
    if not rest.startswith("(?") or rest.startswith(("(?:", "(?>")):
        return
    flags = re.match(r"\(\?-?i*(?:-i*)?[:)]", rest)
    if flags is None:
        raise RegexError("only (...), (?:...), (?>...) and the flag (?i) may open a group")


class _Shape:
    """Static checks on the parsed pattern: only whitelisted nodes, no ambiguous quantifiers."""

    def __init__(self, caseless: bool):
        self.caseless = caseless

    def check(self, seq: list[Any]) -> None:
        self._walk(seq, [])
        self._adjacent(seq, cyclic=False)

    def _walk(self, seq: list[Any], loops: list[list[int]]) -> None:
        """``loops``: for each enclosing quantifier, the first bytes of the mandatory parts of its
        body; a quantifier inside is safe only if one of those cannot be taken by it (the split
        between iterations is then forced, as in ``([a-z]+\\.)*``)."""
        for op, av in seq:
            if op in REPEATS:
                _, hi, body = av
                if hi > 1 and op != sre.POSSESSIVE_REPEAT:
                    chars = self.chars(list(body))
                    if any(all(sep & chars for sep in guards) for guards in loops):
                        raise RegexError("nested quantifiers such as (a+)+ can take exponential time")
                    inner = _unwrap(list(body))
                    self._loop_body(inner)
                    guards = [f for f, nullable in (self.first([item]) for item in inner) if not nullable]
                    self._walk(list(body), [*loops, guards])
                else:
                    self._walk(list(body), loops)
            elif op == sre.SUBPATTERN:
                _, add, drop, body = av
                if (add | drop) & ~re.IGNORECASE:
                    raise RegexError("the only inline flag allowed is (?i)")
                self._walk(list(body), loops)
            elif op == sre.ATOMIC_GROUP:
                self._walk(list(av), [])
            elif op == sre.BRANCH:
                for alt in av[1]:
                    self._walk(list(alt), loops)
                    self._adjacent(list(alt), cyclic=False)
            elif op == sre.AT:
                if av not in ANCHORS:
                    raise RegexError("the only anchors allowed are ^, $, \\b and \\B")
            elif op not in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
                raise RegexError(f"{str(op).lower()} is not supported (see docs/security.md)")

    def _loop_body(self, body: list[Any]) -> None:
        """A repeated body must parse one way: alternatives that can start alike, or two quantified
        parts that can follow each other around the loop, give a match exponentially many ways."""
        for op, av in body:
            if op == sre.BRANCH:
                firsts = [self.first(list(alt))[0] for alt in av[1]]
                for i, a in enumerate(firsts):
                    if any(a & b for b in firsts[i + 1 :]):
                        raise RegexError("alternatives that can match alike under a quantifier, such as (a|a)+")
        self._adjacent(body, cyclic=True)

    def _adjacent(self, seq: list[Any], cyclic: bool) -> None:
        """Two quantified parts with nothing mandatory between them that can take the same text
        (``\\d+\\d+``, ``.*.*``) give polynomially many ways to split it."""
        items = seq + seq if cyclic else seq
        last: int | None = None
        for op, av in items:
            if op in REPEATS and av[1] > 1 and op != sre.POSSESSIVE_REPEAT:
                chars = self.chars(list(av[2]))
                if last is not None and last & chars:
                    raise RegexError("quantified parts that can match the same text back to back, such as \\d+\\d+")
                last = chars
            elif op == sre.SUBPATTERN:
                self._adjacent(list(av[3]), cyclic=False)
                if not self.first([(op, av)])[1]:
                    last = None
            elif not self.first([(op, av)])[1]:
                last = None

    def fold(self, mask: int) -> int:
        return mask | ((mask & UPPER) << 32) | ((mask & LOWER) >> 32) if self.caseless else mask

    def chars(self, seq: list[Any]) -> int:
        """Every byte the sequence may consume."""
        out = 0
        for op, av in seq:
            if op in REPEATS:
                out |= self.chars(list(av[2]))
            elif op == sre.SUBPATTERN:
                out |= self.chars(list(av[3]))
            elif op == sre.ATOMIC_GROUP:
                out |= self.chars(list(av))
            elif op == sre.BRANCH:
                for alt in av[1]:
                    out |= self.chars(list(alt))
            elif op != sre.AT:
                out |= self.single(op, av)
        return out

    def first(self, seq: list[Any]) -> tuple[int, bool]:
        """The bytes the sequence may start with, and whether it may match the empty string."""
        out = 0
        for op, av in seq:
            if op in REPEATS:
                f, nullable = self.first(list(av[2]))
                nullable = nullable or av[0] == 0
            elif op == sre.SUBPATTERN:
                f, nullable = self.first(list(av[3]))
            elif op == sre.ATOMIC_GROUP:
                f, nullable = self.first(list(av))
            elif op == sre.BRANCH:
                parts = [self.first(list(alt)) for alt in av[1]]
                f, nullable = sum_masks(p[0] for p in parts), any(p[1] for p in parts)
            elif op == sre.AT:
                continue
            else:
                f, nullable = self.single(op, av), False
            out |= f
            if not nullable:
                return out, False
        return out, True

    def single(self, op: Any, av: Any) -> int:
        if op == sre.LITERAL:
            return self.fold(1 << av)
        if op == sre.NOT_LITERAL:
            return ALL & ~self.fold(1 << av)
        if op == sre.ANY:
            return ALL & ~(1 << 10)
        mask, negate = 0, False
        for iop, iav in av:
            if iop == sre.NEGATE:
                negate = True
            elif iop == sre.LITERAL:
                mask |= 1 << iav
            elif iop == sre.RANGE:
                mask |= sum(1 << c for c in range(iav[0], iav[1] + 1))
            elif iop == sre.CATEGORY:
                mask |= CATEGORIES[iav]
        mask = self.fold(mask)
        return ALL & ~mask if negate else mask


def _unwrap(seq: list[Any]) -> list[Any]:
    """The items of a sequence, looking through a group that is its only item."""
    while len(seq) == 1 and seq[0][0] == sre.SUBPATTERN:
        seq = list(seq[0][1][3])
    return seq


def sum_masks(masks: Any) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def _witness(seq: list[Any], pumped: Any, times: int) -> bytes:
    """A short subject the sequence matches, with the repeat ``pumped`` taken ``times`` times."""
    out = b""
    for op, av in seq:
        if op in REPEATS:
            body = _witness(list(av[2]), pumped, times)
            out += body * (times if av is pumped else av[0])
        elif op == sre.SUBPATTERN:
            out += _witness(list(av[3]), pumped, times)
        elif op == sre.ATOMIC_GROUP:
            out += _witness(list(av), pumped, times)
        elif op == sre.BRANCH:
            out += _witness(list(av[1][0]), pumped, times)
        elif op != sre.AT:
            mask = _Shape(False).single(op, av)
            out += bytes([next((c for c in b"a0-/.A_" if mask >> c & 1), (mask & -mask).bit_length() - 1)])
    return out


def _repeats(seq: list[Any]) -> list[Any]:
    out = []
    for op, av in seq:
        if op in REPEATS:
            out.append(av)
            out.extend(_repeats(list(av[2])))
        elif op == sre.SUBPATTERN:
            out.extend(_repeats(list(av[3])))
        elif op == sre.ATOMIC_GROUP:
            out.extend(_repeats(list(av)))
        elif op == sre.BRANCH:
            for alt in av[1]:
                out.extend(_repeats(list(alt)))
    return out


def adversarial_subjects(seq: list[Any]) -> list[bytes]:
    """Subjects of the largest header size that make a backtracking engine try hardest: each
    quantifier pumped to the full length, followed by bytes that make the match fail late."""
    subjects = []
    for rep in _repeats(seq):
        unit = _witness(list(rep[2]), None, 1) or b"a"
        times = SUBJECT_LENGTH // len(unit)
        pumped = _witness(seq, rep, times)[:SUBJECT_LENGTH]
        subjects.extend(pumped[: SUBJECT_LENGTH - 1] + tail for tail in (b"!", b"\n", b"/"))
    return subjects


def _check_cost(raw: bytes, caseless: bool, seq: list[Any]) -> None:
    limited = pcre2.compile(b"(*LIMIT_MATCH=%d)" % STEP_BUDGET + raw, pcre2.IGNORECASE if caseless else 0, jit=False)
    for subject in adversarial_subjects(seq):
        try:
            limited.search(subject)
        except pcre2.LibraryError:
            raise RegexError(
                f"matching it can take more than {STEP_BUDGET} steps on a {len(subject)}-byte request "
                "(a backtracking pattern would slow every tenant)"
            ) from None
