"""A request's definitions, read as one text: which of them the prompt's guard reads on its own.

Definitions are the application's own text sent beside the conversation: tools' descriptions
and parameter schemas, output schemas (chat ``tools``/``functions``/``response_format``, Messages
``tools``/``output_format``, Responses tools and ``text.format``). An agent sends hundreds of
short strings of them, the same with every request. They are read under the instructions' rules
(the developer's text) as one text, :data:`SEPARATOR` between them (:func:`_scanned`), whose
findings the worker's memory of texts remembers by the definitions' JSON (:func:`blob`): the same
tools cost one memo hit and no walk. Only a definition one of those findings touches, or one
repeating a credential found elsewhere in the request, is read again on its own, as the other
texts are (:func:`flagged`, :func:`_touched`). A plan with a custom pattern anchored to a text's
start or end (``^E[0-9]{6}$``, which the one text would move) reads every definition on its own
(:attr:`.scanner.Scanner.anchored`).
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Mapping, Sequence
from typing import Any

import orjson

from ext_proc.memo import remembered

from .plan import Rule
from .scanner import CONTEXT, Budget, Finding, Scanner, Unscannable
from .texts import Ref, Walker

# The definitions' findings, in the worker's memory of texts (ext_proc.memo), by their JSON.
FIND_DEFINED = b"d"
# Between two definitions in the one text they are scanned as: more whitespace than a check reads
# before a value (scanner.CONTEXT), which no built-in detector's match crosses.
SEPARATOR = "\n" * (CONTEXT + 1)


def blob(roots: list[Any]) -> str | None:
    """The JSON of a request's definitions (their key in the worker's memory); None when orjson
    cannot write it (an integer past 64 bits)."""
    try:
        return orjson.dumps(roots).decode()
    except orjson.JSONEncodeError:
        return None


def flagged(walker: Walker, payload: dict[str, Any], blob: str | None, scanner: Scanner, names: Mapping[str, Rule],
            budget: Budget, values: Sequence[str], serial: bytes, most: int) -> list[Ref]:
    """The request's definitions that hold a finding of ``names`` or one of ``values`` (credentials
    found elsewhere in the request, which :func:`.repeats.repeated` looks for again); ``blob`` their
    JSON (:func:`blob`), None when it cannot be written (then read, not remembered); ``serial`` the
    plan's; more than ``most`` definitions: :class:`~.scanner.Unscannable`."""
    defined: list[Ref] = []

    def walked() -> list[Ref]:  # (once)
        if not defined:
            for ref in walker.definitions(payload):
                if ref.get():
                    defined.append(ref)
                    if len(defined) > most:
                        raise Unscannable(f"more than {most:,} texts")
        return defined

    if scanner.anchored:
        return walked()
    if blob is None:
        findings = _scanned(walked(), scanner, names, budget)
    else:
        space = FIND_DEFINED + type(walker).__name__.encode() + b":" + serial
        findings = remembered(space, blob, lambda _: _scanned(walked(), scanner, names, budget))
        if not findings and not any(orjson.dumps(value)[1:-1].decode() in blob for value in values):
            return []
    return _touched(walked(), findings, values)


def _scanned(defined: Sequence[Ref], scanner: Scanner, names: Container[str], budget: Budget) -> Sequence[Finding]:
    """The findings of the definitions read as one text, :data:`SEPARATOR` between them."""
    return scanner.find(SEPARATOR.join(ref.get() for ref in defined), names, budget) or ()


def _touched(defined: Sequence[Ref], findings: Sequence[Finding], values: Sequence[str]) -> list[Ref]:
    """The definitions that ``findings`` (of their one text, :func:`_scanned`) touch (one crossing
    a separator, a custom pattern's, included), and those holding one of ``values``."""
    starts = []
    at = 0
    for ref in defined:
        starts.append(at)
        at += len(ref.get()) + len(SEPARATOR)
    flagged = set()
    for finding in findings:
        index = bisect.bisect_right(starts, finding.start) - 1
        while index < len(defined) and starts[index] < finding.end:
            flagged.add(index)
            index += 1
    if values:
        flagged.update(index for index, ref in enumerate(defined) if any(value in ref.get() for value in values))
    return [defined[index] for index in sorted(flagged)]
