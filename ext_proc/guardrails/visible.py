"""Invisible characters: a value split by one is still found, and replaced whole.

A zero-width space (U+200B), a soft hyphen (U+00AD), a NUL or another control character inside a
credential or an email (``AKIA<U+200B>Z7QW…``, ``bob<U+00AD>@example.com``) shows nothing to a
reader and means nothing to a model, but the detectors' patterns stop at it: the value went out.
The scanner (:meth:`.scanner.Scanner.find`) so reads a text holding such characters (format
characters, Unicode category Cf; the default-ignorable code points; controls other than tab, line
feed and carriage return) twice: as it is, and as :class:`Visible` text, without them; a finding
of the second is mapped back to the text as a span from its first to its last visible character,
so the replacement covers the invisible characters inside the value too (no fragment is left).

A text holding none costs one more Hyperscan pass over its UTF-8 bytes, which stops at the first
such character (:func:`invisible`: about 0.5 µs for 2 KB of prose, 0.2 ns a byte beyond; the
detectors' scan of the same text takes 3 to 4 µs, 1.4 ns a byte).
"""

from __future__ import annotations

import bisect
import re

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


def _points() -> list[int]:
    """The code points read as invisible, sorted."""
    points = {c for first, last in (*FORMAT, *IGNORABLE) for c in range(first, last + 1)}
    points.update(c for c in range(0x20) if chr(c) not in "\t\n\r")  # C0 controls, NUL included
    points.update(range(0x7F, 0xA0))  # DEL and the C1 controls
    return sorted(points)


def _ranges(points: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for point in points:
        if out and out[-1][1] == point - 1:
            out[-1] = (out[-1][0], point)
        else:
            out.append((point, point))
    return out


_RANGES = _ranges(_points())
# The same characters as a regular expression over text, and as one over UTF-8 bytes for Hyperscan
# (each code point's bytes; the plane-14 block as its byte ranges: U+E0000..U+E0FFF is F3 A0 80 80
# to F3 A0 BF BF). Bytes, not Hyperscan's UTF-8 mode: a text may hold lone surrogates.
INVISIBLE = re.compile("[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "")
                                     for a, b in _RANGES) + "]+")


def _byte_pattern() -> bytes:
    """The code points' UTF-8 sequences, grouped by all their bytes but the last (a class of those)."""
    groups: dict[bytes, list[int]] = {}
    for first, last in _RANGES:
        for point in range(first, last + 1):
            if 0xE0000 <= point <= 0xE0FFF:
                continue
            encoded = chr(point).encode()
            groups.setdefault(encoded[:-1], []).append(encoded[-1])
    parts = [rb"\xf3\xa0[\x80-\xbf][\x80-\xbf]"]
    for head, tails in groups.items():
        parts.append(b"".join(b"\\x%02x" % byte for byte in head)
                     + b"[" + b"".join(b"\\x%02x" % byte for byte in tails) + b"]")
    return b"(?:" + b"|".join(parts) + b")"


# Its own database: among the detectors' patterns, these one- and two-byte literals made the scan of
# prose 2.5 times slower; alone, a pass costs about 0.5 µs and 0.2 ns a byte.
_DB = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
_DB.compile(expressions=[_byte_pattern()], ids=[0], elements=1, flags=[hyperscan.HS_FLAG_SINGLEMATCH])


def _stop(_pattern: int, _start: int, _end: int, _flags: int, _context: object) -> bool:
    return True  # the first one says enough


def invisible(data: bytes) -> bool:
    """Whether the UTF-8 ``data`` hold an invisible character."""
    try:
        _DB.scan(data, match_event_handler=_stop)
    except hyperscan.ScanTerminated:
        return True
    return False


class Visible:
    """A text without its invisible characters (:attr:`text`), and the way back to it."""

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
        self.text = "".join(parts)

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
