"""Invisible characters and compatibility forms: a value split by one, or written in the other, is still found.

A zero-width space (U+200B), a soft hyphen (U+00AD), a NUL or another control character inside a
credential or an email (``AKIA<U+200B>Z7QW…``, ``bob<U+00AD>@example.com``) shows nothing to a
reader and means nothing to a model, but the detectors' patterns stop at it: the value went out.
The scanner (:meth:`.scanner.Scanner.find`) so reads a text holding such characters (format
characters, Unicode category Cf; the default-ignorable code points; controls other than tab, line
feed and carriage return) twice: as it is, and as :class:`Visible` text, without them; a finding
of the second is mapped back to the text as a span from its first to its last visible character,
so the replacement covers the invisible characters inside the value too (no fragment is left).

The same reading folds compatibility forms (:data:`FOLDED`): fullwidth letters and digits
(``ＡＫＩＡ…``, ``４１１１ １１１１ …``, ``ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ``, as Japanese and Chinese
text writes them), mathematical letters, superscript and circled digits, no-break spaces, to the
ASCII NFKC makes of them, and other scripts' decimal digits (an Arabic-Indic phone number) to
ASCII digits: one character for one, so a finding's span is the same in the text as written.
The replacement covers the value as written; the vault keeps it as written too.

A text holding neither costs one more Hyperscan pass over its UTF-8 bytes, which stops at the
first such character (:func:`disguised`: about 0.5 µs for 2 KB of prose, 0.2 ns a byte beyond; the
detectors' scan of the same text takes 3 to 4 µs, 1.4 ns a byte).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterable

import hyperscan

# Format characters (Unicode category Cf, as Python's unicodedata has them: 14.0; a unit test says
# whether a newer Python knows more), listed rather than looked up among 135,000 code points at import.
FORMAT = ((0xAD, 0xAD), (0x600, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD), (0x70F, 0x70F), (0x890, 0x891),
          (0x8E2, 0x8E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064),
          (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
          (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F))
# Default-ignorable code points that are not format characters: the combining grapheme joiner,
# Hangul fillers, Khmer inherent vowels, Mongolian variation selectors, variation selectors,
# reserved ones (DerivedCoreProperties.txt, Default_Ignorable_Code_Point).
IGNORABLE = ((0x34F, 0x34F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164),
             (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0xE0000, 0xE0FFF))


# Compatibility forms read as the ASCII letter, digit, space or the punctuation of a value (``@ . - +
# ( ) / _``) that NFKC folds them to: fullwidth and small forms (``ＡＫＩＡ``, ``４１１１``, ``＠``),
# mathematical letters and digits, no-break and other spaces; and every other script's decimal
# digits (Arabic-Indic ``٠١٢``, Devanagari, Thai, ...: NFKC keeps them) as ASCII digits (Python's
# unicodedata 14.0; a unit test says whether a newer one folds more). Not superscripts and
# subscripts, circled and squared letters, Roman numerals: no one writes a value in them, and read
# as digits a run of footnote marks was a phone number. Only what folds to one character: a text and
# its folded reading are as long, a finding's span the same in both.
FOLDED = ((0xA0, 0xA0), (0x660, 0x669), (0x6F0, 0x6F9), (0x7C0, 0x7C9), (0x966, 0x96F), (0x9E6, 0x9EF), (0xA66,
          0xA6F), (0xAE6, 0xAEF), (0xB66, 0xB6F), (0xBE6, 0xBEF), (0xC66, 0xC6F), (0xCE6, 0xCEF), (0xD66,
          0xD6F), (0xDE6, 0xDEF), (0xE50, 0xE59), (0xED0, 0xED9), (0xF20, 0xF29), (0x1040, 0x1049), (0x1090,
          0x1099), (0x17E0, 0x17E9), (0x1810, 0x1819), (0x1946, 0x194F), (0x19D0, 0x19D9), (0x1A80, 0x1A89),
          (0x1A90, 0x1A99), (0x1B50, 0x1B59), (0x1BB0, 0x1BB9), (0x1C40, 0x1C49), (0x1C50, 0x1C59), (0x2000,
          0x200A), (0x202F, 0x202F), (0x205F, 0x205F), (0x2102, 0x2102), (0x210A, 0x210E), (0x2110, 0x2113),
          (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2128, 0x2128), (0x212A, 0x212A), (0x212C,
          0x212D), (0x212F, 0x2131), (0x2133, 0x2134), (0x2139, 0x2139), (0x2145, 0x2149), (0x3000, 0x3000),
          (0xA620, 0xA629), (0xA8D0, 0xA8D9), (0xA900, 0xA909), (0xA9D0, 0xA9D9), (0xA9F0, 0xA9F9), (0xAA50,
          0xAA59), (0xABF0, 0xABF9), (0xFB29, 0xFB29), (0xFE52, 0xFE52), (0xFE59, 0xFE5A), (0xFE62, 0xFE63),
          (0xFE6B, 0xFE6B), (0xFF08, 0xFF09), (0xFF0B, 0xFF0B), (0xFF0D, 0xFF19), (0xFF20, 0xFF3A), (0xFF3F,
          0xFF3F), (0xFF41, 0xFF5A), (0x104A0, 0x104A9), (0x10D30, 0x10D39), (0x11066, 0x1106F), (0x110F0,
          0x110F9), (0x11136, 0x1113F), (0x111D0, 0x111D9), (0x112F0, 0x112F9), (0x11450, 0x11459), (0x114D0,
          0x114D9), (0x11650, 0x11659), (0x116C0, 0x116C9), (0x11730, 0x11739), (0x118E0, 0x118E9), (0x11950,
          0x11959), (0x11C50, 0x11C59), (0x11D50, 0x11D59), (0x11DA0, 0x11DA9), (0x16A60, 0x16A69), (0x16AC0,
          0x16AC9), (0x16B50, 0x16B59), (0x1D400, 0x1D454), (0x1D456, 0x1D49C), (0x1D49E, 0x1D49F), (0x1D4A2,
          0x1D4A2), (0x1D4A5, 0x1D4A6), (0x1D4A9, 0x1D4AC), (0x1D4AE, 0x1D4B9), (0x1D4BB, 0x1D4BB), (0x1D4BD,
          0x1D4C3), (0x1D4C5, 0x1D505), (0x1D507, 0x1D50A), (0x1D50D, 0x1D514), (0x1D516, 0x1D51C), (0x1D51E,
          0x1D539), (0x1D53B, 0x1D53E), (0x1D540, 0x1D544), (0x1D546, 0x1D546), (0x1D54A, 0x1D550), (0x1D552,
          0x1D6A3), (0x1D7CE, 0x1D7FF), (0x1E140, 0x1E149), (0x1E2F0, 0x1E2F9), (0x1E950, 0x1E959), (0x1FBF0,
          0x1FBF9))


def _points() -> list[int]:
    """The code points read as invisible, sorted."""
    points = {c for first, last in (*FORMAT, *IGNORABLE) for c in range(first, last + 1)}
    points.update(c for c in range(0x20) if chr(c) not in "\t\n\r")  # C0 controls, NUL included
    points.update(range(0x7F, 0xA0))  # DEL and the C1 controls
    return sorted(points)


def ranges(points: list[int]) -> list[tuple[int, int]]:
    """Sorted code points as (first, last) ranges of consecutive ones."""
    out: list[tuple[int, int]] = []
    for point in points:
        if out and out[-1][1] == point - 1:
            out[-1] = (out[-1][0], point)
        else:
            out.append((point, point))
    return out


def char_class(spans: Iterable[tuple[int, int]]) -> str:
    """The inside of a regular expression's character class holding the code points of ``spans``."""
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in spans)


_RANGES = ranges(_points())
# The same characters as a regular expression over text, and as one over UTF-8 bytes for Hyperscan
# (each code point's bytes; the plane-14 block as its byte ranges: U+E0000..U+E0FFF is F3 A0 80 80
# to F3 A0 BF BF). Bytes, not Hyperscan's UTF-8 mode: a text may hold lone surrogates.
INVISIBLE = re.compile("[" + char_class(_RANGES) + "]+")


def _folds() -> dict[int, int]:
    """Each code point of :data:`FOLDED` -> the ASCII character it is read as."""
    out = {}
    for first, last in FOLDED:
        for point in range(first, last + 1):
            char = chr(point)
            folded = unicodedata.normalize("NFKC", char)
            if len(folded) != 1 or not folded.isascii():
                folded = str(unicodedata.decimal(char))
            out[point] = ord(folded)
    return out


_FOLD = _folds()
# The runs to fold: the BMP's compatibility forms, and any character past it (a class of the planes'
# 27 ranges made ``re`` test each on every character: 100 µs for 2 KB of German, 15 this way).
FOLDABLE = re.compile("[" + char_class(span for span in FOLDED if span[1] < 0x10000) + "\U00010000-\U0010ffff]+")


def _folded(match: re.Match[str]) -> str:
    return match.group().translate(_FOLD)


def fold(text: str) -> str:
    """``text`` with its compatibility forms read as ASCII (:data:`FOLDED`), as long as ``text``
    (about 7 ns a character of text that is not ASCII: ask :func:`disguised` first)."""
    return text if text.isascii() else FOLDABLE.sub(_folded, text)


def fold_char(char: str) -> str:
    """One character read as :func:`fold` reads it."""
    folded = _FOLD.get(ord(char))
    return char if folded is None else chr(folded)


def _alternatives(points: Iterable[int]) -> bytes:
    """One of the code points, as a pattern over their UTF-8 bytes: grouped by all their bytes but
    the last (a class of those). (Bytes, not Hyperscan's UTF-8 mode: a text may hold lone
    surrogates.)"""
    groups: dict[bytes, list[int]] = {}
    for point in sorted(points):
        encoded = chr(point).encode()
        groups.setdefault(encoded[:-1], []).append(encoded[-1])
    return b"(?:" + b"|".join(b"".join(b"\\x%02x" % byte for byte in head) + b"[" + b"".join(
        b"\\x%02x" % byte for byte in tails) + b"]" for head, tails in groups.items()) + b")"


def _triggers() -> tuple[list[bytes], bytes, list[bytes]]:
    """What makes a text worth its second reading: an invisible character anywhere; a compatibility
    form only where it could be part of a value. Ordinary French puts a no-break space before ``:``
    and ``!``, Arabic prose writes its years in its own digits, Japanese writes ``ＩＴ`` fullwidth:
    read a second time for nothing, such text cost the guardrails 40-70 % more. Three lists: what
    starts at a character beyond ASCII (the whole pass under 1 µs for 2 KB); a folded letter or
    digit; what starts at an ASCII letter or digit before one (``4111 1111 1111 111１``,
    ``…EXAMPLＥ``), asked only of a text holding the second: such a pattern is tried at most of a
    text's characters (4 µs for 2 KB of English)."""
    kinds: dict[str, list[int]] = {"digit": [], "space": [], "letter": [], "at": [], "sign": []}
    for point, folded in _FOLD.items():
        char = chr(folded)
        kind = ("digit" if char.isdigit() else "space" if char == " " else "letter" if char.isalpha()
                else "at" if char == "@" else "sign")
        kinds[kind].append(point)
    digit = _alternatives(kinds["digit"])
    any_digit = b"(?:[0-9]|" + digit + b")"
    separator = b"(?:[ .\\-]|" + _alternatives(kinds["space"] + kinds["sign"]) + b"){0,3}"
    letter = _alternatives(kinds["letter"] + kinds["digit"])
    space = b"(?:\\x20|" + _alternatives(kinds["space"]) + b")"

    def repeat(pattern: bytes, times: int) -> bytes:
        return b"(?:" + pattern + b"){%d}" % times if times else b""  # (Hyperscan refuses {0})

    runs = [  # five digits, any one of them folded, with separators (a year in Arabic prose is four)
        repeat(any_digit + separator, before) + digit + repeat(separator + any_digit, 4 - before)
        for before in range(5)]
    invisible = [p for p in _points() if not 0xE0000 <= p <= 0xE0FFF]
    first = [
        b"(?:\\xf3\\xa0[\\x80-\\xbf][\\x80-\\xbf]|" + _alternatives(invisible) + b")",  # (plane 14's block)
        _alternatives(kinds["at"]),  # an address's "@"
        runs[0],
        _alternatives(kinds["space"]) + any_digit,  # a no-break space before a digit
        letter + b"{6}",  # a word of six folded letters
        letter + b"{2}" + space + letter,  # folded words one after the other (a fullwidth sentence)
        letter + b"[A-Za-z0-9_]",  # folded and ASCII mixed in one word (a key)
        _alternatives(kinds["sign"]) + b"[A-Za-z0-9]",  # a fullwidth "." or "-" before ASCII
    ]
    return first, letter, [*runs[1:], b"[A-Za-z0-9_]" + letter]


def _database(patterns: list[bytes]) -> hyperscan.Database:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=patterns, ids=list(range(len(patterns))), elements=len(patterns),
               flags=[hyperscan.HS_FLAG_SINGLEMATCH] * len(patterns))
    return db


# Their own databases: among the detectors' patterns, these made the scan of prose 2.5 times slower.
_FIRST, _FOLDED_ALNUM, _AFTER = _triggers()
_DB, _ALNUM_DB, _AFTER_DB = _database(_FIRST), _database([_FOLDED_ALNUM]), _database(_AFTER)


def _stop(_pattern: int, _start: int, _end: int, _flags: int, _context: object) -> bool:
    return True  # the first one says enough


def _found(db: hyperscan.Database, data: bytes) -> bool:
    try:
        db.scan(data, match_event_handler=_stop)
    except hyperscan.ScanTerminated:
        return True
    return False


def disguised(data: bytes) -> bool:
    """Whether the UTF-8 ``data`` hold an invisible character, or a compatibility form where it
    could be part of a value (:func:`_triggers`)."""
    return _found(_DB, data) or (_found(_ALNUM_DB, data) and _found(_AFTER_DB, data))


class Visible:
    """A text without its invisible characters and its compatibility forms folded (:attr:`text`),
    and the way back to it."""

    __slots__ = ("_at", "_removed", "_starts", "text")

    def __init__(self, original: str) -> None:
        parts: list[str] = []
        self._at: list[int] = []  # where each run of invisible characters was, in :attr:`text` ...
        self._removed: list[int] = []  # ... and how many were removed up to its end
        self._starts: list[int] = []  # where each run starts in the original text
        last = removed = 0
        for run in INVISIBLE.finditer(original):
            parts.append(original[last:run.start()])
            self._at.append(run.start() - removed)
            self._starts.append(run.start())
            removed += run.end() - run.start()
            self._removed.append(removed)
            last = run.end()
        parts.append(original[last:])
        self.text = fold("".join(parts))

    def start(self, index: int) -> int:
        """Where character ``index`` of :attr:`text` is in the original text."""
        i = bisect.bisect_right(self._at, index) - 1
        return index + (self._removed[i] if i >= 0 else 0)

    def end(self, index: int) -> int:
        """Where a span of :attr:`text` ending at ``index`` (not 0) ends in the original text: just
        past its last character (invisible characters after it are not the span's)."""
        return self.start(index - 1) + 1

    def within(self, index: int) -> int:
        """Where character ``index`` of the original text is in :attr:`text` (the invisible
        characters before it removed; inside a run of them: where the run was)."""
        i = bisect.bisect_right(self._starts, index) - 1
        if i < 0:
            return index
        before = self._removed[i - 1] if i else 0
        return index - before - min(self._removed[i] - before, index - self._starts[i])


def strip(value: str) -> str:
    """``value`` without its invisible characters (itself when it has none)."""
    return INVISIBLE.sub("", value) if INVISIBLE.search(value) else value
