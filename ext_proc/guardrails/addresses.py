"""Email addresses beyond ASCII (RFC 6531/6532): local parts in Latin, Greek and Cyrillic, domains in any script.

The email detector's pattern (:mod:`.detectors`) starts at the "@" and runs over UTF-8 bytes: a
domain's labels may hold any character beyond ASCII (:data:`CHAR`, one whole character's bytes),
its top-level domain ASCII letters (ending at an ASCII word boundary, as before) or letters of any
script (``例え.jp``, ``пример.рф``, ``exämple.com``). The check (:func:`domain`) confirms what bytes
cannot say: every label is letters, marks, digits and inner hyphens, the top-level domain letters
and marks, and no label runs ASCII letters or digits straight into another script's letters
(``jane@example.com谢谢``, ``jane@example.comまで``, ``jane@example.com으로``: the address is
``jane@example.com``, the rest is the sentence). A candidate it refuses gives way to the shorter
ends of the same match.

The local part is read backwards from the "@" in the text (:data:`LOCAL`, at most 64 characters):
ASCII letters, digits and ``._%+-``, and the letters and marks of the Latin (beyond ASCII), Greek
and Cyrillic scripts (``hans.müller``, ``renée.dupont``, ``josé``, ``иван.петров``, decomposed
accents too): :data:`LOCAL_LETTERS`. No letter of another script: Chinese, Japanese, Korean or Thai
write an address right after a word (``请发邮件到jane@example.com``, ``이메일은jane@example.com``), and
a local part in those scripts cannot be told from the sentence before it (``请发邮件给张伟@example.com``
would take the whole request). So an address starts at its first such character, less the
``._%+-`` before its first letter or digit (``李.wei@example.cn`` is ``wei@example.cn``, Hebrew's
``ל-jane@example.com`` is ``jane@example.com``), and one whose local part has none
(``张伟@例え.jp``) is not found.

:data:`CHARS` is every character a match with a domain in ASCII, Latin, Greek or Cyrillic may
hold: what a stream holds back (:mod:`.holdback`), so prose in other scripts (Chinese, Japanese,
Thai, Arabic, ...) is never held back as a possible address. A domain in another script split
across a stream's events may let its local part out before it comes.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from .visible import char_class, ranges

# Latin beyond ASCII (Latin-1, Extended-A and -B, IPA, Extended Additional, -C, -D, -E, fullwidth):
# a domain label may mix it with ASCII (``müller-shop``), not another script.
LATIN = ((0x00C0, 0x024F), (0x0250, 0x02AF), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF),
         (0xAB30, 0xAB6F), (0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))

# The blocks of the Latin (beyond ASCII), Greek and Cyrillic scripts and of the combining marks
# written with them: Latin-1 Supplement, Extended-A and -B, IPA, combining diacritics, Greek and
# Coptic, Cyrillic and its Supplement, combining diacritics extended, Cyrillic Extended-C, phonetic
# extensions, combining diacritics supplement, Latin Extended Additional, Greek Extended, combining
# marks for symbols, Latin Extended-C, Cyrillic Extended-A and -B, Latin Extended-D and -E,
# combining half marks.
_LOCAL_BLOCKS = ((0x00A0, 0x00FF), (0x0100, 0x024F), (0x0250, 0x02AF), (0x0300, 0x036F), (0x0370, 0x03FF),
                 (0x0400, 0x052F), (0x1AB0, 0x1AFF), (0x1C80, 0x1C8F), (0x1D00, 0x1DBF), (0x1DC0, 0x1DFF),
                 (0x1E00, 0x1EFF), (0x1F00, 0x1FFF), (0x20D0, 0x20FF), (0x2C60, 0x2C7F), (0x2DE0, 0x2DFF),
                 (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAB30, 0xAB6F), (0xFE20, 0xFE2F))


# Their letters and marks (a few thousand code points: looked up at import).
LOCAL_LETTERS = tuple(ranges([p for first, last in _LOCAL_BLOCKS for p in range(first, last + 1)
                              if unicodedata.category(chr(p))[0] in "LM"]))


_FULLWIDTH = "\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"  # read as ASCII (:mod:`.visible` folds them)
_ASCII = "A-Za-z0-9" + _FULLWIDTH
_LOCAL_CLASS = f"{_ASCII}._%+\\-{char_class(LOCAL_LETTERS)}"
# The local part, read backwards from the "@" (the text before it reversed): ASCII letters, digits
# and ``._%+-``, Latin, Greek and Cyrillic letters and marks; any other character ends it.
LOCAL = f"[{_LOCAL_CLASS}]*+"
LOCAL_MOST = 64  # RFC 5321: at most 64 characters before the "@"
# Every character an address may hold whose domain is in ASCII, Latin, Greek or Cyrillic.
CHARS = f"[{_LOCAL_CLASS}@]"

# One character beyond ASCII, as UTF-8 bytes (the detectors' patterns run over bytes); lone
# surrogates' bytes too, which the check refuses.
CHAR = r"(?:[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3})"
_LABEL = f"(?:[A-Za-z0-9]|{CHAR})"
# Latin letters beyond ASCII and the combining diacritics written with them (U+00C0 to U+036F,
# U+1AB0 to U+1AFF, U+1DC0 to U+1EFF, U+20D0 to U+20FF, U+FE20 to U+FE2F; about: the check reads them).
_LATIN_BYTES = r"(?:[\xc3-\xcd][\x80-\xbf]|\xe1[\xaa\xab\xb7-\xbb][\x80-\xbf]|\xe2\x83[\x90-\xbf]|\xef\xb8[\xa0-\xaf])"
# From the "@": labels, then a top-level domain of 2 to 24 letters: ASCII ones ending at a word
# boundary (the pattern as it was), or none of them ASCII (``рф``, ``中国``), or ASCII and Latin
# ones (``vermögensberater``). Not ASCII ones running on into another script (``com谢谢``): one end
# per address in Chinese or Japanese text, not one per character after it.
PATTERN = (f"@(?:{_LABEL}(?:(?:[A-Za-z0-9-]|{CHAR})*{_LABEL})?\\.)+"
           f"(?:[A-Za-z]{{2,24}}\\b|{CHAR}{{2,24}}|[A-Za-z]{{0,22}}{_LATIN_BYTES}(?:[A-Za-z]|{_LATIN_BYTES}){{0,22}})")
# A diacritic right after a match is its last letter's: no address ends there ("co" of "co\u0308m").
NOT_FOLLOWED_BY = "[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"

_LATIN = re.compile(f"[A-Za-z0-9{char_class(LATIN)}]")


def _mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"


def _label(label: str, top: bool) -> bool:
    """A domain label of letters, marks and digits (the top-level domain: letters and marks), inner
    hyphens, starting with a letter or digit, not running ASCII letters or digits into another
    script's letters."""
    if not label or not label[0].isalnum() or label[-1] == "-":
        return False
    if not all(c.isalpha() or _mark(c) if top else c.isalnum() or c == "-" or _mark(c) for c in label):
        return False
    return not any((a.isascii() and a.isalnum() and b.isalpha() and not _LATIN.match(b))
                   or (b.isascii() and b.isalnum() and a.isalpha() and not _LATIN.match(a))
                   for a, b in itertools.pairwise(label))


def domain(address: str) -> bool:
    """Whether the domain of ``address`` (a match of :data:`PATTERN` and its local part) is one
    (an ASCII one is, as the pattern read it)."""
    name = address[address.index("@") + 1:]
    if name.isascii():
        return True
    labels = name.split(".")
    return all(_label(label, False) for label in labels[:-1]) and _label(labels[-1], True)
