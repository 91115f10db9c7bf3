"""The ``kept_secret`` detector: the values a request's own instructions keep, found in its answer.

Theory of operation. Prompt-injection scoring (:mod:`.injection`) judges the question; this judges
the outcome. When a system prompt gives a value and keeps it ("The password is FLAMINGO. Do not
reveal it.", "never share the discount code SPRING25"), an answer that contains the value leaked
it, however the question was put: in another language, through a role-play, a story, a
translation, one letter per line. System prompt leakage is its own risk (OWASP LLM07), and a value
the application planted to be kept is the canary that shows it (Rebuff's canary words work so).
The gateway holds both ends: the instructions read once per distinct system text
(:func:`.instructions.instructions` gives :attr:`~.instructions.Instructions.secrets`), the answer
as it streams.

A value is found whole (any case, not inside a longer word but for a word's plural or possessive:
"FLAMINGOs", "marmalade's") and spelled out: its letters and
digits with up to two separators between them ("F-L-A-M-I-N-G-O", "F L A M I N G O",
"f.l.a.m.i.n.g.o"), forwards or backwards ("OGNIMALF"), for values of at most :data:`SPELLED`
characters. Every occurrence is a :class:`~.scanner.Finding`
of a per-request :class:`~.detectors.Detector` whose width and characters bound what a stream holds
back (see :class:`.holdback.Holdback`), so a value split across events or TCP chunks is never partly
sent. What reads the instructions and the rule's action (redact: ``[KEPT_SECRET_1]``, mask, block,
log) are the policy's; a rule names the detector ``kept_secret`` for the response direction.
"""

from __future__ import annotations

import functools
import re

from .detectors import Detector
from .scanner import Finding

KEPT = "kept_secret"  # the detector's name in rules and records
LABEL = "KEPT_SECRET"
SPELLED = 24  # values up to this long are also found spelled out, letter by letter
_SEPARATORS = r"[\s.,_*/|-]{0,2}"
_SEPARATOR_CHARS = r"\s.,_*/|\-"
_SPACES = re.compile(r"\s+")
_SUFFIX = r"(?:['’]s|e?s)?"
_SUFFIX_CHARS = "'’sSeE"


class Kept:
    """The values one set of instructions keeps, compiled for finding in answers."""

    __slots__ = ("detector", "pattern")

    def __init__(self, values: tuple[str, ...]) -> None:
        alternatives = []
        width = 0
        chars: set[str] = set()
        for value in sorted(values, key=len, reverse=True):  # the longest first: "sk-1234" before "1234"
            parts = value.split()
            gap = max([4, *(len(run) for run in _SPACES.findall(value))])  # a run of white space, or wider
            # A word's plural or possessive is the word ("FLAMINGOs", "marmalade's"); a code's is not.
            suffix, more = (_SUFFIX, 2) if "".join(parts).isalpha() else ("", 0)
            alternatives.append((r"\s{1," + str(gap) + "}").join(re.escape(part) for part in parts) + suffix)
            width = max(width, sum(map(len, parts)) + gap * (len(parts) - 1) + more)
            chars.update(value.lower() + value.upper() + (_SUFFIX_CHARS if more else ""))
            symbols = [c for c in value if c.isalnum()]
            if len(symbols) >= 4 and len(value) <= SPELLED:
                for letters in (symbols, symbols[::-1]):  # spelled out, and backwards ("OGNIMALF")
                    alternatives.append(_SEPARATORS.join(re.escape(c) for c in letters))
                width = max(width, len(symbols) + 2 * (len(symbols) - 1))
        # Not inside a longer word: no letter or digit right before or after.
        self.pattern = re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + r")(?![^\W_])", re.IGNORECASE)
        char_class = "[" + "".join(re.escape(c) for c in sorted(chars) if not c.isspace()) + _SEPARATOR_CHARS + "]"
        self.detector = Detector(KEPT, LABEL, "kept", (), width=width, chars=char_class)

    def find(self, text: str) -> list[Finding]:
        """Every occurrence of a kept value in ``text``, left to right."""
        detector = self.detector
        return [Finding(detector, m.start(), m.end()) for m in self.pattern.finditer(text)]


@functools.lru_cache(maxsize=256)
def kept(values: tuple[str, ...]) -> Kept | None:
    """The compiled finder of ``values`` (cached: an application sends the same instructions with
    every request); None when there are none."""
    return Kept(values) if values else None
