"""JSON whose integers stay exact.

orjson reads an integer beyond 64 bits (below -2**63 or from 2**64 on) as a float, rounded
(``123456789012345678901234567890`` becomes ``1.2345678901234568e+29``), and cannot write one; the
standard library reads and writes any integer exactly, several times slower. A body Tollway reads
and writes again (a model renamed, a text redacted, a translation) would change such a number: a
tool's input, a call's arguments, an id. :func:`exact` finds the rare body where it happened, at C
speed, and reads that one with the standard library; :func:`dumps` writes what orjson cannot.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def exact(data: bytes | str, value: Any, copy: bytes | None = None) -> Any:
    """``value`` (orjson's reading of ``data``), or the standard library's exact reading where
    orjson rounded an integer beyond 64 bits to a float. ``copy``: ``value`` written by orjson, when
    the caller has it.

    orjson writes a float of 1e16 or more with an exponent, ``e+``, and such a rounded integer is at
    least 2**63: the copy then holds more ``+`` than the text, whose strings the copy repeats. A
    copy without any ``+`` (most: one ``memchr``) has none; else the ``+`` are counted (a byte
    count: 0.3 ms a MB, against 1.3 ms for ``e+``). A text whose own float of less than 1e16 is
    written with ``e+`` (``1e+5``, which the copy writes ``100000.0``) could hide one such integer: no
    JSON writer writes that (Python's and JavaScript's exponents start at 1e16 and 1e21). A text
    whose strings escape a ``+`` (``\\u002b``) is read again, exactly (rare: slower only)."""
    if copy is None:
        copy = orjson.dumps(value)
    if b"+" not in copy:
        return value
    if copy.count(b"+") == (data.count(b"+") if isinstance(data, bytes) else data.count("+")):
        return value
    return json.loads(data)


def loads(data: bytes | str) -> Any:
    """``data`` read as JSON (orjson's errors), its integers exact."""
    value = orjson.loads(data)
    return exact(data, value) if isinstance(value, (dict, list, float)) else value


def dumps(value: Any) -> bytes:
    """``value`` written as compact JSON (as orjson writes it), an integer beyond 64 bits too."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        if "64-bit" not in str(error):  # anything else orjson cannot write stays refused
            raise
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError, UnicodeEncodeError):
            raise error from None
