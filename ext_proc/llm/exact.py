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
import re
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
    written with ``e+`` (``1e+5``, which the copy writes ``100000.0``, as PHP and cJSON write
    1e15) could hide one such integer: such a text is read again, exactly. A ``+`` the text's strings
    escape (``\\u002B``, as .NET writes it) counts as one. A value nested past the 255 levels
    orjson writes (it reads 1024) is returned as orjson read it."""
    if copy is None:
        try:
            copy = orjson.dumps(value)
        except orjson.JSONEncodeError:  # (nested past the 255 levels orjson writes: read as it was)
            return value
    if b"+" not in copy:
        return value
    text = data if isinstance(data, bytes) else data.encode()
    # A ``+`` the text writes escaped (.NET's encoder writes ``\u002B``) is one the copy writes plain.
    plus = text.count(b"+") + (text.count(b"\\u002b") + text.count(b"\\u002B") if b"\\u002" in text else 0)
    if copy.count(b"+") == plus and not _SMALL_EXPONENT.search(text):
        return value
    return json.loads(data)


# A number written with an exponent and a ``+`` (``1e+5``, ``1.0e+15``: PHP's, cJSON's): the copy
# may write it without one, and so hide a rounded integer's; looked for only in the rare text
# whose copy has a ``+``.
_SMALL_EXPONENT = re.compile(rb"[0-9][eE]\+")


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
