"""How much of a stream channel's end must wait for more text before it may go out: the trailing
run of characters that could still be the start of a value a detector matches, at most its
longest match minus one (see :mod:`ext_proc.guardrails.guard`, whose channels hold it back)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from .visible import fold, fold_char

# The placeholders' characters and longest width: when values come back (pseudonyms), a
# placeholder split across events is held back like a value.
_PLACEHOLDER_CHARS = r"[\[\]A-Z0-9_]"
_PLACEHOLDER_WIDTH = 50


class Holdback:
    """How much of a channel's end must wait for more text (see :mod:`ext_proc.guardrails.guard`).

    For each distinct character class of the detectors (and the placeholders', when values come
    back): the trailing run of characters in that class, at most the class's longest match minus
    one; the most of these is kept. A stream's channel keeps the runs at its end and asks
    :meth:`extend` with each text delta, at the cost of the new text only: the characters of a
    short one (at most :data:`FAST`) are looked up in a table of which classes hold them (filled as
    characters are met, at most :data:`MAX_TABLE` of them), and a run is over at the first
    character its class lacks; a longer one is measured with each class's regular expression.
    :meth:`keep` measures a whole text the same way. A compatibility form is measured as the
    character it is read as (:func:`.visible.fold`: a fullwidth digit as a digit), as the scanner
    reads it.
    """

    __slots__ = ("_caps", "_classes", "_runs", "_table", "longest", "none")

    FAST = 24  # characters looked up one by one before the regular expressions take over
    MAX_TABLE = 1024  # characters whose classes are remembered

    def __init__(self, shapes: Iterable[tuple[str, int]], placeholders: bool) -> None:
        caps: dict[str, int] = {}
        for chars, width in shapes:  # each detector's character class and longest match
            caps[chars] = max(caps.get(chars, 0), width - 1)
        if placeholders:
            caps[_PLACEHOLDER_CHARS] = max(caps.get(_PLACEHOLDER_CHARS, 0), _PLACEHOLDER_WIDTH - 1)
        self._caps = tuple(caps.values())
        self._classes = tuple(re.compile(chars).fullmatch for chars in caps)
        self._runs = tuple(re.compile(chars + "*").match for chars in caps)
        self._table: dict[str, int] = {}  # a character -> the classes holding it, one bit each
        self.longest = max(caps.values(), default=0)
        self.none: tuple[int, ...] = (0,) * len(self._caps)  # the runs at the end of no text

    def extend(self, runs: tuple[int, ...], text: str) -> tuple[int, ...]:
        """Each class's run (at most its cap) at the end of some text whose runs were ``runs``, once
        ``text`` is added to it (:meth:`keep`: the most of them after a whole text), at a cost of
        ``text``'s length (at most the longest cap), not of the text before it. A stream's channel
        keeps its runs, so an event adding a character to a long held run costs one character."""
        if not self.longest or not text:
            return runs
        caps = self._caps
        size = len(text)
        out = list(runs)
        if size <= self.FAST:
            table = self._table
            going = (1 << len(caps)) - 1
            for run, char in enumerate(reversed(text)):
                held = table.get(char)
                if held is None:
                    held = self._held(char)
                ended = going & ~held
                while ended:  # these classes' runs are ``run`` long
                    low = ended & -ended
                    bit = low.bit_length() - 1
                    out[bit] = run if run < caps[bit] else caps[bit]
                    ended ^= low
                going &= held
                if not going:
                    return tuple(out)
            while going:  # the whole of ``text`` is in these classes: their runs go on
                low = going & -going
                bit = low.bit_length() - 1
                grown = runs[bit] + size
                out[bit] = grown if grown < caps[bit] else caps[bit]
                going ^= low
            return tuple(out)
        tail = fold(text[-self.longest:][::-1])  # (a fullwidth digit is held as a digit)
        for bit, measure in enumerate(self._runs):
            found = measure(tail)
            run = found.end() if found is not None else 0
            if run == size:
                run += runs[bit]
            out[bit] = run if run < caps[bit] else caps[bit]
        return tuple(out)

    def keep(self, text: str) -> int:
        """The number of characters at the end of ``text`` that could start a value not yet complete."""
        return max(self.extend(self.none, text), default=0)

    def _held(self, char: str) -> int:
        held = 0
        folded = fold_char(char)
        for bit, holds in enumerate(self._classes):
            if holds(folded) is not None:
                held |= 1 << bit
        if len(self._table) < self.MAX_TABLE:
            self._table[char] = held
        return held


@functools.lru_cache(maxsize=16)
def holdback(shapes: tuple[tuple[str, int], ...], placeholders: bool) -> Holdback:
    """One :class:`Holdback` per set of detector shapes, shared by the streams using it (its table
    of characters fills once, not per stream). At most 16 are kept (a request whose instructions
    keep values adds a shape of its own), so the tables stay within a few MB even for text of
    thousands of distinct characters."""
    return Holdback(shapes, placeholders)
