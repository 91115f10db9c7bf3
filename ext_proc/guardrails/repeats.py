"""Credentials a request repeats: a value only its context made a finding, found again wherever
the request repeats it.

A password is a finding only where it is assigned (``DB_PASSWORD=hunter2x9``); quoted again
further on, in the same text or another message, nothing around it says so. The prompt's guard
collects such values from every text's findings (:func:`secrets`) and looks for each again in
every text (:func:`repeated`), so none goes out where it is repeated. Values found by their own
shape (keys, tokens) need no such search: they are found wherever they are.
"""

from __future__ import annotations

from collections.abc import Sequence

from .detectors import Detector
from .scanner import Finding, Unscannable, logged

REPEATED_MIN = 6  # characters: a credential this long found once is replaced wherever the text repeats it
REPEATED_MAX = 16  # distinct such values searched for in one text (each a pass over it)
REPEATED_LIMIT = 1_000  # repetitions of them replaced in one text; more: fail closed


def repeated(text: str, findings: Sequence[Finding], values: dict[str, Detector] | None = None,
             names: object = None) -> list[Finding]:
    """``findings`` plus every other place ``text`` repeats a credential that only its context
    made a finding (a password where it is assigned, ``DB_PASSWORD=hunter2x9``, then quoted again
    further on); values found by their own shape (keys, tokens) are found wherever they are. A
    repetition that overlaps other findings becomes one finding with them (none of either shows),
    but for those ``names`` (the rules) only log (:func:`.scanner.logged`), which stay as they are.
    More than :data:`REPEATED_LIMIT` repetitions: :class:`~.scanner.Unscannable` (fail closed)."""
    wanted = secrets(text, findings) if values is None else values
    if not wanted:
        return list(findings)
    out = list(findings)
    found = 0
    for value, detector in wanted.items():
        at = text.find(value)
        while at >= 0:
            end = at + len(value)
            overlapping = [f for f in out if f.start < end and at < f.end and not logged(names, f.detector)]
            if not any(f.start == at and f.end == end for f in overlapping):
                found += 1
                if found > REPEATED_LIMIT:
                    raise Unscannable(f"more than {REPEATED_LIMIT:,} repetitions of a credential")
                start = min([at, *(f.start for f in overlapping)])
                stop = max([end, *(f.end for f in overlapping)])
                out = [f for f in out if f not in overlapping]
                out.append(Finding(detector, start, stop))
            at = text.find(value, end)
    return sorted(out, key=lambda f: f.start)


def secrets(text: str, findings: Sequence[Finding], into: dict[str, Detector] | None = None) -> dict[str, Detector]:
    """The credentials among ``findings`` that only their context showed (at most
    :data:`REPEATED_MAX`, ``into`` included): what :func:`repeated` looks for again."""
    out: dict[str, Detector] = {} if into is None else into
    for f in findings:
        if f.detector.value is not None and f.end - f.start >= REPEATED_MIN and len(out) < REPEATED_MAX:
            out.setdefault(text[f.start:f.end], f.detector)
    return out
