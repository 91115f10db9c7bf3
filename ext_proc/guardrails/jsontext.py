"""Where a value sits in JSON text, so that replacing it keeps the text JSON.

A guardrail replaces a value found in JSON text (a tool call's arguments, an answer the client
asked to be JSON) by a placeholder. Inside a JSON string the placeholder is text like any other;
outside one the value was a bare number (``{"card": 4111111111111111}``), and the placeholder must
become a string, holding the whole number (its sign, fraction and exponent too: ``{"v":
-"[PHONE_1]"}`` is no JSON). :func:`json_state` follows the strings through text that arrives in
pieces (a stream's chunks), :func:`bare_number` widens a finding outside a string to its number.
"""

from __future__ import annotations

import re

# Where JSON text is, at a point: outside any string, inside one, inside one right after a backslash.
OUTSIDE, STRING, ESCAPED = 0, 1, 2
_NUMBER_TAIL = re.compile(r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")  # what may follow a JSON number's digits
_STRING_RUN = re.compile(r'(?:[^"\\]|\\.)*', re.S)  # a string's characters and escapes, up to its end


def json_state(text: str, state: int = OUTSIDE, start: int = 0, end: int | None = None) -> int:
    """Where JSON text is after ``text[start:end]``, having been at ``state`` before it: a value
    found outside a string (a card number as a JSON number) is replaced by a string, so the text
    stays JSON (see :meth:`~ext_proc.guardrails.guard.Guard.apply`)."""
    end = len(text) if end is None else end
    at = start
    if state == ESCAPED and at < end:
        at, state = at + 1, STRING
    while at < end:
        if state == OUTSIDE:
            at = text.find('"', at, end)
            if at < 0:
                return OUTSIDE
            at, state = at + 1, STRING
        else:
            at = _STRING_RUN.match(text, at, end).end()  # type: ignore[union-attr]
            if at >= end:
                return STRING
            if text[at] == '"':
                at, state = at + 1, OUTSIDE
            else:  # a backslash at the end: the next text starts with what it escapes
                return ESCAPED
    return state


def bare_number(text: str, start: int, end: int, floor: int) -> tuple[int, int]:
    """The span of the JSON number whose digits ``text[start:end]`` are (found outside a string):
    with the sign before it (not before ``floor``), its fraction and exponent after it."""
    if start > floor and text[start - 1] == "-":
        start -= 1
    return start, _NUMBER_TAIL.match(text, end).end()  # type: ignore[union-attr]
