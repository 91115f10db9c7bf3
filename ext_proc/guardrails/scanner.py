"""Finding sensitive values in text: every detector's patterns in one Hyperscan database, one pass.

Theory of operation. All patterns of a set of detectors are compiled once into one Hyperscan
block-mode database (``HS_FLAG_SOM_LEFTMOST``: each match reports where it starts). Scanning a
text is one call over its UTF-8 bytes, whatever the number of detectors; each match comes back as
(pattern, start, end), several ends for one start when a pattern could stop at several places.
Candidates are then taken left to right, the longest first; each is confirmed by its detector's
check (checksums, ranges, parsing, context words), trying shorter ends of the same start when the
longest fails (not an end a detector's ``not_followed_by`` says is a piece of a longer value),
and a confirmed finding hides the candidates it overlaps. A block detector (PEM
private keys) runs on to its end marker, or to the end of the text when the marker is missing.

Why Hyperscan: measured here (``bench/guardrails.py``), one Hyperscan pass over all detectors
scans long prose at hundreds of MB/s, where Python's ``re`` with the same alternation manages a
few MB/s and RE2 sets need a second pass per matching pattern to find where matches are. The
Python callback per match is the cost that grows with the number of candidates, so patterns are
anchored on word boundaries where they can be, which keeps one callback per candidate.

A pattern's longest possible match (:attr:`Detector.width`) and the characters a match can hold
(:attr:`Detector.chars`) are read from its parse tree; both bound how much of a stream must wait
(:mod:`ext_proc.guardrails.stream`). Custom patterns with unbounded repetition are refused.

What a text costs is bounded (:class:`Budget`). Prose costs next to nothing, but a text made of
candidates ("1 1 1 1 …": every digit starts a phone number and a card number) costs a callback per
candidate and a check per candidate (parsing, context words: up to tens of µs each), about 25 µs
per character: a 300 KB prompt held a worker, and every team it serves, for eight seconds. A
request may make the scanner collect at most :data:`HITS` candidates and spend at most
:data:`CHECK_SECONDS` plus :data:`PER_CHAR` per character scanned (at most
:data:`MAX_CHECK_SECONDS`) checking them, per direction
(the time inside the checks only: a stream's wait between events is not counted, nor the
candidates of the end of what it scanned before, which it scans again); past either,
:class:`Unscannable` (the guard fails closed: the request, or the answer, is refused). Numbers
and tables check at about 2 µs per character (a 200 KB CSV of orders 0.25 s, a 160 KB time
series 0.34 s), so data prompts pass at any size up to the candidates' bound; text made of
candidates is refused within about a second.
"""

from __future__ import annotations

import _sre  # the simple lower case Python's re folds cases with
import bisect
import dataclasses
import functools
import re
import re._constants as _sre_constants  # the parse tree of a pattern: its width, its characters
import re._parser as _sre_parse
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from re._casefix import _EXTRA_CASES  # the characters Python's re folds together beyond lower case
from typing import Any, cast

import hyperscan

from .detectors import BUILTIN, Detector
from .visible import Visible, disguised

HITS = 200_000  # candidates a request may make the scanner collect, per direction (about 0.6 µs each)
CHECK_SECONDS = 1.0  # the time it may spend checking them, per direction, beyond ...
PER_CHAR = 4e-6  # ... this much per character scanned (numbers and tables check at about 2 µs a character),
MAX_CHECK_SECONDS = 3.0  # ... and never more than this (padding between candidates buys no more time)
_CLOCK_EVERY = 64  # checks between two readings of the clock
MAX_WIDTH = 8192  # the longest match a detector may have (a stream holds back less than this)
CONTEXT = 48  # characters before a candidate its check may read (context words)
# The window starts at a word: a word the window would cut ("Martin" read as "tin", "recall" as
# "call") is left out. A stream keeps one character more than the window, to cut the same way.
_PARTIAL_WORD = re.compile(r"\w+")


def context(text: str, start: int) -> str:
    """The text a check reads before a candidate at ``start``: up to :data:`CONTEXT` characters,
    not beginning inside a word."""
    first = start - CONTEXT
    if first <= 0:
        return text[:start]
    if text[first - 1].isalnum() or text[first - 1] == "_":
        cut = _PARTIAL_WORD.match(text, first, start)
        if cut is not None:
            first = cut.end()
    return text[first:start]


class Unscannable(Exception):
    """A request (or answer) holds more candidates than its :class:`Budget` lets the scanner
    collect or check: not scanned to its end, so the guard fails closed. The message says which
    bound ("more candidate values than ...")."""


class Budget:
    """The candidate work one request may still make the scanner do in one direction (see the
    module docstring); spent by :meth:`Scanner.find`: candidates collected, and the time spent
    checking them (only that: the time between two events of a stream is nobody's)."""

    __slots__ = ("_since", "chars", "checks", "hits", "seconds", "spent")

    def __init__(self, hits: int | None = None, seconds: float | None = None) -> None:
        self.hits = HITS if hits is None else hits
        self.seconds = CHECK_SECONDS if seconds is None else seconds  # beyond PER_CHAR per character scanned
        self.chars = 0  # characters scanned
        self.checks = 0
        self.spent = 0.0  # seconds spent checking, all finds together
        self._since = 0.0

    def begin(self, chars: int) -> None:
        self.chars += chars
        self._since = time.perf_counter()

    def end(self) -> None:
        self.spent += time.perf_counter() - self._since

    def check(self) -> None:
        """One more check; every :data:`_CLOCK_EVERY`, the time spent so far against the bound."""
        self.checks += 1
        if self.checks % _CLOCK_EVERY == 0:
            spent = self.spent + time.perf_counter() - self._since
            if spent > min(self.seconds + PER_CHAR * self.chars, MAX_CHECK_SECONDS):
                raise Unscannable(f"more candidate values than the guardrails check in "
                                  f"{self.seconds:g} s and {PER_CHAR * 1e6:g} µs per character")


class PatternError(ValueError):
    """A pattern Tollway cannot use (syntax, unbounded, matches nothing but empty text); the message says why."""


@dataclass(frozen=True, slots=True)
class Finding:
    """A confirmed value: its detector and its span in the text (characters); ``open``: a block
    whose end marker was not in the text (it runs to the end)."""

    detector: Detector
    start: int
    end: int
    open: bool = False


# -- what a pattern can match ---------------------------------------------------------------------

_ALL = object()


def shape(pattern: str, caseless: bool = False, width: int = 0) -> tuple[int, str]:
    """The longest match of ``pattern`` (``width`` when given: longer matches are not findings) and a
    regex class of the characters a match may contain.

    Raises :class:`PatternError` for a pattern Python cannot parse, or whose length is unbounded
    and no ``width`` bounds it.
    """
    try:
        tree = _sre_parse.parse(pattern, re.IGNORECASE if caseless else 0)
    except re.error as exc:
        raise PatternError(f"not a valid regular expression: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # (never a traceback)
        raise PatternError(f"not a valid regular expression: {exc}") from None
    # ``caseless``, or an inline ``(?i)`` at its start (scoped ``(?i:...)`` groups: :func:`_chars`)
    caseless = bool(tree.state.flags & re.IGNORECASE)
    _, high = tree.getwidth()
    if high == 0:
        raise PatternError("it matches only empty text")
    if width:
        high = min(high, width)
    if high >= _sre_constants.MAXREPEAT or high > MAX_WIDTH:
        raise PatternError(f"its matches must have a bounded length (at most {MAX_WIDTH} characters): "
                           "use {m,n} rather than *, + or {m,}, or give max_length")
    found: set[int] = set()
    if _chars(tree, found, caseless) is _ALL:
        return high, r"[\s\S]"
    return high, _char_class(found)


def cases(point: int) -> frozenset[int]:
    """The code points a caseless pattern may match for ``point``: its simple lower, upper and title
    case forms and the characters Unicode folds together with it (``ſ`` with ``s``, the Kelvin sign
    with ``k``, ``ẞ`` with ``ß``), closed; a mapping to several characters (``ß`` to ``SS``, ``ﬁ``
    to ``FI``) is none of them: Hyperscan and Python's ``re`` fold one character to one."""
    out = {point}
    todo = [point]
    while todo:
        char = chr(todo.pop())
        lower = _sre.unicode_tolower(ord(char))
        more = {lower, *_EXTRA_CASES.get(lower, ()), *(_ASCII_UPPERS.get(lower, ()) if lower < 0x80 else _uppers().get(
            lower, ()))}
        more.update(ord(x) for x in (char.lower(), char.upper(), char.title()) if len(x) == 1)
        for point in more - out:
            out.add(point)
            todo.append(point)
    return frozenset(out)


# The characters beyond ASCII whose simple lower case is an ASCII letter (the Kelvin sign's is k,
# the dotted capital I's i): what :func:`_uppers` holds for ASCII, without building it.
_ASCII_UPPERS = {0x69: (0x130,), 0x6B: (0x212A,)}
_CASED = 0x1F000  # past the last code point with a case (Adlam's, U+1E943)


@functools.cache
def _uppers() -> dict[int, tuple[int, ...]]:
    """Each lower case letter -> the characters whose simple lower case it is (``ß`` -> ``ẞ``, ``k``
    -> ``K`` and the Kelvin sign): the other way from ``_sre.unicode_tolower`` (about 60 ms, once,
    when a caseless pattern holds a letter beyond ASCII)."""
    out: dict[int, list[int]] = {}
    lower = _sre.unicode_tolower
    for point in range(_CASED):
        folded = lower(point)
        if folded != point:
            out.setdefault(folded, []).append(point)
    return {key: tuple(value) for key, value in out.items()}


def _chars(tree: Any, found: set[int], caseless: bool) -> object:
    """Add the code points ``tree`` can match to ``found``; :data:`_ALL` when it can match any.
    ``caseless``: in any case (the pattern's flags, or a scoped ``(?i:...)`` group's)."""
    c = _sre_constants
    for op, arg in tree:
        if op is c.LITERAL:
            found.update(cases(arg) if caseless else (arg,))
        elif op in (c.NOT_LITERAL, c.ANY):
            return _ALL
        elif op is c.IN:
            if arg and arg[0][0] is c.NEGATE:
                return _ALL
            for kind, value in arg:
                if kind is c.LITERAL:
                    found.add(value)
                elif kind is c.RANGE:
                    if value[1] - value[0] > 0x2000:
                        return _ALL
                    found.update(range(value[0], value[1] + 1))
                elif kind is c.CATEGORY:
                    probe = {c.CATEGORY_DIGIT: r"\d", c.CATEGORY_WORD: r"\w", c.CATEGORY_SPACE: r"\s"}.get(value)
                    if probe is None:
                        return _ALL
                    found.update(i for i in range(128) if re.fullmatch(probe, chr(i), re.ASCII))
                else:
                    return _ALL
            if caseless:
                found.update(*(cases(i) for i in list(found)))
        elif op is c.SUBPATTERN:  # (group, flags added, flags removed, pattern): (?i:...), (?-i:...)
            inner = (caseless or bool(arg[1] & re.IGNORECASE)) and not (
                arg[2] & re.IGNORECASE)
            if _chars(arg[-1], found, inner) is _ALL:
                return _ALL
        elif op is c.BRANCH:
            for branch in arg[1]:
                if _chars(branch, found, caseless) is _ALL:
                    return _ALL
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            if _chars(arg[2], found, caseless) is _ALL:
                return _ALL
        elif op is c.AT:
            continue
        elif op is getattr(c, "ATOMIC_GROUP", None):
            if _chars(arg, found, caseless) is _ALL:
                return _ALL
        else:  # look-around, back-references, conditionals: Hyperscan refuses them anyway
            return _ALL
    return None


# Where a pattern may be anchored to its text's start or end (``^``, ``$``, ``\\A``, ``\\Z``; ``\\b``
# is not: a line break reads as a boundary as any text's edge does).
_EDGES = frozenset({_sre_constants.AT_BEGINNING, _sre_constants.AT_BEGINNING_STRING, _sre_constants.AT_END,
                    _sre_constants.AT_END_STRING})


def anchored(pattern: str, caseless: bool = False) -> bool:
    """Whether ``pattern`` holds an anchor to its text's start or end (a text joined to others,
    the definitions' one text, moves them). When in doubt (a pattern Python cannot parse): yes."""
    try:
        tree = _sre_parse.parse(pattern, re.IGNORECASE if caseless else 0)
    except re.error:
        return True
    return _edges(tree)


def _edges(node: Any) -> bool:
    if isinstance(node, _sre_parse.SubPattern):
        node = node.data
    if isinstance(node, (list, tuple)):
        if len(node) == 2 and node[0] is _sre_constants.AT:
            return node[1] in _EDGES
        return any(_edges(item) for item in node)
    return False


def _char_class(points: set[int]) -> str:
    """A regex class of exactly ``points`` (non-ASCII ones too: the phone patterns' no-break spaces
    and dashes must not make their class "any character", or a stream would hold back the last
    hundred characters of every text)."""
    return "[" + "".join(re.escape(chr(p)) if chr(p) not in "\\]^-" else "\\" + chr(p) for p in sorted(points)) + "]"


def prepared(detector: Detector) -> Detector:
    """``detector`` with its width and character class computed (and its patterns checked)."""
    widths, classes = [], []
    for pattern in detector.patterns:
        width, chars = shape(pattern, detector.caseless, detector.width)
        widths.append(width)
        classes.append(chars)
    merged = r"[\s\S]" if r"[\s\S]" in classes else "[" + "".join(cls[1:-1] for cls in classes) + "]"
    return dataclasses.replace(detector, width=max(widths), chars=merged)


# -- the scanner ------------------------------------------------------------------------------------


def _collect(pattern: int, start: int, end: int, _flags: int, hits: object) -> None:
    hits.append((pattern, start, end))  # type: ignore[attr-defined]


class _Hits(list[tuple[int, int, int]]):
    __slots__ = ("cap",)
    cap: int

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap


def _collect_capped(pattern: int, start: int, end: int, _flags: int, context: object) -> bool:
    hits = cast(_Hits, context)
    hits.append((pattern, start, end))
    return len(hits) > hits.cap  # True: Hyperscan stops the scan


class Scanner:
    """The detectors of one policy (or of the built-in set), compiled into one Hyperscan database."""

    __slots__ = ("_after", "_db", "_left", "_owner", "_until", "_utf8", "anchored", "by_name", "detectors")

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors = tuple(d if d.chars else prepared(d) for d in detectors)
        self.by_name = {d.name: d for d in self.detectors}
        # A custom pattern anchored to its text's start or end (``^E[0-9]{6}$``): texts are scanned
        # on their own, never joined (the guard's definitions, read as one text otherwise).
        self.anchored = any(anchored(p, d.caseless) for d in self.detectors if d.kind == "custom" for p in d.patterns)
        expressions: list[bytes] = []
        owner: list[int] = []
        flags: list[int] = []
        ext: list[tuple[int, int, int, int, int, int]] = []  # (flags, min/max offset, min length, distances)
        # Custom patterns are read as UTF-8 (Hyperscan's HS_FLAG_UTF8): ``[А-Я]``, ``caf[éè]`` match
        # characters, not bytes, and match in any case beyond ASCII too (``naïve`` in ``NAÏVE``);
        # ``\w``, ``\d``, ``\s`` and ``\b`` stay ASCII (Hyperscan has no ``\b`` with Unicode
        # properties). The built-in patterns read bytes (theirs are ASCII but the email's, whose
        # bytes beyond ASCII are listed). A text is then scanned valid: lone surrogates as U+FFFD.
        self._utf8 = any(d.kind == "custom" for d in self.detectors)
        for index, detector in enumerate(self.detectors):
            for pattern in detector.patterns:
                try:
                    expressions.append(pattern.encode())
                except UnicodeEncodeError:
                    raise PatternError("it holds a lone surrogate (not a character)") from None
                owner.append(index)
                flags.append(hyperscan.HS_FLAG_SOM_LEFTMOST | (hyperscan.HS_FLAG_CASELESS if detector.caseless else 0)
                             | (hyperscan.HS_FLAG_UTF8 if detector.kind == "custom" else 0))
                ext.append((hyperscan.HS_EXT_FLAG_MIN_LENGTH if detector.min_length else 0, 0, 0, detector.min_length,
                            0, 0))
        self._owner = tuple(owner)
        self._until = {i: re.compile(d.until) for i, d in enumerate(self.detectors) if d.until}
        self._left = {i: (re.compile(d.left[0]).match, d.left[1]) for i, d in enumerate(self.detectors) if d.left}
        self._after = {i: re.compile(d.not_followed_by).match
                       for i, d in enumerate(self.detectors) if d.not_followed_by}
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        try:
            self._db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions),
                             flags=flags, ext=ext)
        except hyperscan.error as exc:
            raise PatternError(f"Hyperscan cannot compile it: {exc}") from None
        except (ValueError, TypeError, OverflowError) as exc:  # (never a traceback)
            raise PatternError(f"Hyperscan cannot compile it: {exc}") from None

    def find(self, text: str, names: Container[str] | None = None, budget: Budget | None = None,
             fresh: int = 0) -> list[Finding]:
        """The confirmed findings in ``text``, left to right, not overlapping (but those ``names``
        only logs, :func:`logged`) (``names``: only these detectors). With a ``budget``, spends it
        (the candidates from character ``fresh`` on: a stream scans again the end of what it
        scanned before), and raises :class:`Unscannable` past it. A text holding invisible
        characters or compatibility forms (:mod:`.visible`) is read without the first and with
        the second folded too."""
        data = text.encode("utf-8", "surrogatepass")
        found = self._find(text, data, names, budget, fresh)
        if not disguised(data):
            return found
        seen = Visible(text)
        clean = seen.text
        more = [Finding(f.detector, seen.start(f.start), len(text) if f.open else seen.end(f.end), f.open)
                for f in self._find(clean, clean.encode("utf-8", "surrogatepass"), names, budget, seen.within(fresh))]
        return united(found + more, names) if more else found

    def _find(self, text: str, data: bytes, names: Container[str] | None, budget: Budget | None,
              fresh: int) -> list[Finding]:
        hits: list[tuple[int, int, int]]
        scanned = _valid(data) if self._utf8 else data
        if budget is None:
            hits = []
            self._db.scan(scanned, match_event_handler=_collect, context=hits)
        else:
            old = len(text[:fresh].encode("utf-8", "surrogatepass")) if fresh else 0
            hits = _Hits(budget.hits + 4 * old + 64)  # what the part scanned before may hold, besides
            try:
                self._db.scan(scanned, match_event_handler=_collect_capped, context=hits)
            except hyperscan.ScanTerminated:
                raise Unscannable(f"more than {HITS:,} candidate values") from None
            budget.hits -= sum(1 for _, start, _ in hits if start >= old) if old else len(hits)
            if budget.hits < 0:
                raise Unscannable(f"more than {HITS:,} candidate values")
        if not hits:
            return []
        if budget is None:
            return self._confirm(text, data, hits, names, None)
        budget.begin(len(text) - fresh)
        try:
            return self._confirm(text, data, hits, names, budget)
        finally:
            budget.end()

    def _confirm(self, text: str, data: bytes, hits: list[tuple[int, int, int]], names: Container[str] | None,
                 budget: Budget | None) -> list[Finding]:
        """The candidates checked, in order (see :meth:`find`)."""
        owner = self._owner
        ends: dict[tuple[int, int], list[int]] = {}
        for pattern, start, end in hits:
            ends.setdefault((owner[pattern], start), []).append(end)
        if len(data) != len(text):  # not ASCII: byte offsets to character offsets
            chars = _char_offsets(data, {o for (_, s), es in ends.items() for o in (s, *es)})
            # (a match of a pattern that reads any byte, ``[^ ]``, may start or end inside a
            # character: it then holds the whole of it)
            ends = {(d, chars[s] - (s < len(data) and 0x80 <= data[s] < 0xC0)): [chars[e] for e in es]
                    for (d, s), es in ends.items()}
        detectors = self.detectors
        for key in [key for key in ends if detectors[key[0]].left is not None]:
            index, start = key
            cls, most = self._left[index]
            run = cls(text[max(0, start - most):start][::-1])
            size = run.end() if run else 0
            while size and not text[start - size].isalnum():  # a local part starts with a letter or digit
                size -= 1
            found = ends.pop(key)
            if size:
                ends.setdefault((index, start - size), []).extend(found)
        order = sorted(ends, key=lambda key: (key[1], -max(ends[key]), key[0]))
        out: list[Finding] = []
        done = 0  # the end of the last finding
        # The findings of detectors the rules only log: aside, hiding nothing (a logged code block
        # holds an email the rules redact: the email is its own finding), each counted.
        aside: list[Finding] = []
        aside_done = 0
        deferred: list[tuple[int, int]] = []  # candidates of the detectors with a value span: after the others
        for index, start in order:
            detector = detectors[index]
            if names is not None and detector.name not in names:
                continue
            log = logged(names, detector)
            if log:
                if start < done or start < aside_done:  # (inside another finding: not counted again)
                    continue
            # A candidate inside the last finding: checked only when the rules act on its detector
            # more strictly (a key inside what reads as an email's local part): the two become one.
            elif start < done and strictness(names, detector) <= strictness(names, out[-1].detector):
                continue
            if detector.value is not None:
                deferred.append((index, start))
                continue
            check = detector.check
            longest = start + detector.width
            after = self._after.get(index)
            for end in sorted(set(ends[(index, start)]), reverse=True):
                if end > longest:  # longer than the detector allows (and than a stream would hold)
                    continue
                if after is not None and after(text, end):  # a piece of a longer value
                    continue
                if check is not None and budget is not None:
                    budget.check()
                if check is None or check(text[start:end], context(text, start)):
                    until = self._until.get(index)
                    if until is None:
                        finding = Finding(detector, start, end)
                    else:
                        closing = until.search(text, end)
                        finding = Finding(detector, start, closing.end() if closing else len(text),
                                          open=closing is None)
                    if log:
                        aside.append(finding)
                        aside_done = finding.end
                        break
                    if start < done:  # the stricter of two overlapping: one finding spanning both
                        last = out[-1]
                        finding = Finding(detector, last.start, max(last.end, finding.end), last.open or finding.open)
                        out[-1] = finding
                    else:
                        out.append(finding)
                    done = finding.end
                    break
        if deferred:
            out = self._yielded(text, deferred, ends, out, names, aside)
        if aside:
            out = sorted(out + aside, key=lambda f: f.start)
        return out

    def _yielded(self, text: str, deferred: list[tuple[int, int]], ends: dict[tuple[int, int], list[int]],
                 out: list[Finding], names: Container[str] | None, aside: list[Finding]) -> list[Finding]:
        """``out`` with the findings of the detectors whose ``value`` says where in the text a
        match's finding is, where no other finding is (or where the others' actions are all less
        strict: then one finding spanning them, :func:`united`); those the rules only log go
        ``aside`` (where no finding of ``out`` is)."""
        starts = [f.start for f in out]  # sorted, the findings do not overlap
        for index, start in deferred:
            detector = self.detectors[index]
            value = detector.value
            assert value is not None
            # The longest match only (the value's first character after the longest run of spaces).
            end = max((e for e in ends[(index, start)] if e <= start + detector.width), default=None)
            if end is None:
                continue
            span = value(text, start, end)
            if span is None:
                continue
            at = bisect.bisect_left(starts, span[0])
            first = at - 1 if at and out[at - 1].end > span[0] else at
            last = at
            while last < len(out) and out[last].start < span[1]:
                last += 1
            if logged(names, detector):
                if first == last:
                    aside.append(Finding(detector, *span))
                continue
            if first < last:  # another finding is there
                rank = strictness(names, detector)
                if any(strictness(names, f.detector) >= rank for f in out[first:last]):
                    continue
                out[first:last] = united([*out[first:last], Finding(detector, *span)], names)
                starts[first:last] = [out[first].start]
                continue
            out.insert(at, Finding(detector, *span))
            starts.insert(at, span[0])
        return out


# How strict a rule's action is. Findings of several detectors that overlap become one, spanning
# them all, whose detector is that of the strictest action the request's rules give them: a key
# joined to an email (``AKIA…<U+200B>ops@acme.io``) is blocked when keys are, even if emails are
# only logged. (Between actions that rewrite, the longest finding's detector.)
STRICTNESS = {"log": 0, "redact": 1, "pseudonymise": 1, "mask": 1, "block": 2}


def strictness(names: object, detector: Detector) -> int:
    """How strict the action ``names`` (a request's rules: detector name -> rule, or only names)
    gives ``detector`` is (:data:`STRICTNESS`); 0 when ``names`` gives no actions."""
    if not isinstance(names, Mapping):
        return 0
    return STRICTNESS.get(getattr(names.get(detector.name), "action", ""), 0)


def logged(names: object, detector: Detector) -> bool:
    """Whether ``names`` (a request's rules) only log ``detector``'s findings: they hide nothing,
    and are never made one with another finding (a logged code block around an email the rules
    redact: the email alone is replaced, both are counted)."""
    return isinstance(names, Mapping) and getattr(names.get(detector.name), "action", "") == "log"


def united(findings: Iterable[Finding], names: object = None) -> list[Finding]:
    """Findings of one text (of several scans or readings of it) as one list, left to right:
    findings that overlap become one spanning them all, so no part of any shows (open when one
    is); its detector the one whose action ``names`` (the request's rules) makes strictest
    (:data:`STRICTNESS`), of those the longest finding's. Findings ``names`` only log
    (:func:`logged`) are made one only with each other, and may overlap the others."""
    if isinstance(names, Mapping):
        findings = list(findings)
        aside = [f for f in findings if logged(names, f.detector)]
        if aside:
            rest = [f for f in findings if not logged(names, f.detector)]
            return sorted(_united(rest, names) + _united(aside, names), key=lambda f: f.start)
    return _united(findings, names)


def _united(findings: Iterable[Finding], names: object) -> list[Finding]:
    out: list[Finding] = []
    best = (0, 0)
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        last = out[-1] if out else None
        if last is None or finding.start >= last.end:
            out.append(finding)
            best = (-1, finding.end - finding.start)  # (ranked only when another overlaps it)
            continue
        if best[0] < 0:
            best = (strictness(names, last.detector), best[1])
        detector = last.detector
        rank = (strictness(names, finding.detector), finding.end - finding.start)
        if rank > best:
            detector, best = finding.detector, rank
        out[-1] = Finding(detector, last.start, max(last.end, finding.end), last.open or finding.open)
    return out


_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")  # a lone surrogate, as "surrogatepass" writes it


def _valid(data: bytes) -> bytes:
    """``data`` as valid UTF-8, for the patterns read as UTF-8 (Hyperscan's results on invalid
    UTF-8 are undefined): each lone surrogate as U+FFFD, three bytes for three, so every offset
    stays where it was."""
    return _SURROGATE.sub(b"\xef\xbf\xbd", data) if b"\xed" in data else data


_CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes of UTF-8 that do not start a character


def _char_offsets(data: bytes, offsets: set[int]) -> dict[int, int]:
    """Byte offsets of ``data`` as character offsets (the characters that start before each: one
    inside a character counts it), in one pass."""
    out: dict[int, int] = {}
    chars = 0
    previous = 0
    for offset in sorted(offsets):
        chars += len(data[previous:offset].translate(None, _CONTINUATION))
        out[offset] = chars
        previous = offset
    return out


@functools.cache
def builtin() -> Scanner:
    """The scanner of every built-in detector (compiled once per process)."""
    return Scanner(BUILTIN)
