"""Hyperscan finds the places, Python reads a few characters around each: how the context
signals read text (:mod:`.instructions`, :mod:`.scope`; :mod:`.forms` also needs where each
match starts, and scans for itself). A database reports where its patterns end; only those
places are read by Python's ``re``, so a system prompt costs tens of microseconds and a user
text a few."""

from __future__ import annotations

from collections.abc import Container

import hyperscan

MAX_PLACES = 32  # places of one kind looked at in a text (a text full of "what" is not read 10,000 times)


def compiled(expressions: list[str], single: Container[int] = ()) -> hyperscan.Database:
    """A caseless UTF-8 database of ``expressions`` (ids: their places in the list); those in
    ``single`` report their first match only."""
    base = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_UTF8
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(expressions=[e.encode() for e in expressions], ids=list(range(len(expressions))),
                     elements=len(expressions),
                     flags=[base | (hyperscan.HS_FLAG_SINGLEMATCH if i in single else 0)
                            for i in range(len(expressions))])
    return database


def places(database: hyperscan.Database, data: bytes, most: int = MAX_PLACES) -> dict[int, list[int]]:
    """Where each pattern of ``database`` ends in ``data`` (byte offsets, at most ``most`` each)."""
    found: dict[int, list[int]] = {}

    def seen(pattern: int, _start: int, end: int, _flags: int, _context: object) -> None:
        ends = found.setdefault(pattern, [])
        if len(ends) < most and (not ends or ends[-1] != end):
            ends.append(end)

    database.scan(data, match_event_handler=seen)
    return found


def piece(data: bytes, start: int, end: int) -> str:
    """The text of ``data[start:end]`` (clamped at 0; a character cut at either end is left out)."""
    return data[max(0, start):end].decode("utf-8", "ignore")
