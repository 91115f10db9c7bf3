"""An incremental Server-Sent Events decoder that keeps each event's exact bytes.

``feed(chunk)`` returns the events completed by ``chunk``; bytes of an unfinished event wait
for the next chunk, whatever the split point (inside a field, inside a ``\\r\\n`` pair).
``flush()`` is called at end of stream and returns what was left. Each event keeps ``raw``,
its bytes as received up to and including the blank line that ends it, so a caller can drop
one event from a stream and pass every other byte through unchanged. Line endings follow the
SSE specification: ``\\r\\n``, ``\\n`` or ``\\r``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from ext_proc.llm.exact import exact

# A blank line: two line terminators in a row. ``\r(?!\n)`` is a lone CR terminator.
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE = re.compile(rb"\r\n|\r|\n")
_SPAN = 4  # bytes a boundary match reads at most: "\r\n\r\n" (a lone CR's lookahead stays within them)
_BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark: one at the start of a stream is not part of its first field


_UNPARSED: Any = object()


@dataclass(slots=True)
class SSEEvent:
    """One event block: its ``event`` name ("" when absent) and joined ``data`` lines.

    A block of blank lines or comments only has empty ``data``; SSE clients dispatch nothing
    for it, and neither should callers.

    The response stages pass these along (see :mod:`ext_proc.core.response`): a buffered body
    travels as one event with ``whole`` set (``data`` and ``raw`` both the body), and
    :meth:`json` decodes ``data`` once, for every stage that asks (a whole body's integers
    beyond 64 bits exactly: :mod:`ext_proc.llm.exact`).
    """

    event: str
    data: bytes
    raw: bytes
    whole: bool = field(default=False, compare=False)
    usage_only: bool = field(default=False, compare=False)  # a usage chunk Tollway asked for on the client's behalf
    last: bool = field(default=False, compare=False)  # the stream's last event, its blank line added at the end
    _json: Any = field(default=_UNPARSED, compare=False, repr=False)

    def json(self) -> dict[str, Any] | None:
        """``data`` decoded as a JSON object (None: not JSON, or not an object); decoded once."""
        value = self._json
        if value is _UNPARSED:
            try:
                value = orjson.loads(self.data)
            except orjson.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                value = None
            elif self.whole:  # a buffered answer, which a stage may write again: its integers exact
                value = exact(self.data, value)
            self._json = value
        return value  # type: ignore[no-any-return]


def parse_event(raw: bytes) -> SSEEvent:
    """Parse the fields of one complete event block (terminator included or not)."""
    if raw.startswith(b"data: ") and b"\r" not in raw:
        # The common shape (one ``data:`` line, LF endings) without the general loop.
        body = raw.rstrip(b"\n")
        if b"\n" not in body:
            return SSEEvent("", _done(body[6:]), raw)
    name = ""
    data: list[bytes] = []
    for line in _LINE.split(raw):
        if not line or line[0] == 0x3A:  # blank line or ":" comment
            continue
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    return SSEEvent(name, _done(b"\n".join(data)), raw)


def _done(data: bytes) -> bytes:
    """``data`` as it is, but ``[DONE]`` with white space around it as ``[DONE]``: OpenAI's SDK
    ends a stream at a data field starting with ``[DONE]``, and some servers send a space after it."""
    if data[-1:] in (b" ", b"\t", b"\r") and data.strip() == b"[DONE]":
        return b"[DONE]"
    return data


class SSEDecoder:
    """Feed bytes, get complete events; see the module docstring.

    An event arriving in many chunks costs time in proportion to its size: the bytes waiting
    for their event's end are kept in one growing buffer, and each chunk's search for the
    blank line resumes where the last one stopped (less the few bytes a line terminator pair
    can span), rather than joining and searching everything held again.

    A UTF-8 byte order mark opening the stream is ignored, as the SSE specification says: the
    first event's fields are read after it (its ``raw`` keeps it, every byte passing on as received).
    """

    __slots__ = ("_buf", "_first", "_searched")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._searched = 0  # bytes at the start of ``_buf`` already searched without finding a boundary
        self._first = True  # no event read yet: a leading BOM may still be there

    @property
    def pending(self) -> bytes:
        """Bytes received that do not yet form a complete event (a copy; see :attr:`held`)."""
        return bytes(self._buf)

    @property
    def held(self) -> int:
        """How many bytes are waiting for their event's end (``len(pending)`` without the copy)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        held = self._buf
        if held:
            held += chunk
            buf: bytes | bytearray = held
            # A boundary (two terminators, the second's lookahead included) spans at most
            # _SPAN bytes: one reaching the old end may be completed by this chunk.
            pos = max(0, self._searched - _SPAN)
        else:
            buf = chunk  # the common case: nothing held, search the chunk itself
            pos = 0
        # A trailing CR may be the first half of CRLF: decide once the next byte is known.
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        events: list[SSEEvent] = []
        start = 0
        while True:
            match = _BOUNDARY.search(buf, pos, end)
            if match is None:
                break
            stop = match.end()
            events.append(parse_event(bytes(buf[start:stop])))  # bytes of bytes: no copy
            start = pos = stop
        if self._first and events:
            events[0] = self._unmarked(events[0])
        if buf is held:
            if start:
                del held[:start]
        elif start < len(buf):
            self._buf = bytearray(buf[start:])
        self._searched = end - start
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: an unterminated last event is returned (a cut stream still counts)."""
        rest = bytes(self._buf)
        self._buf = bytearray()
        self._searched = 0
        if not rest:
            return []
        event = parse_event(rest)
        return [self._unmarked(event) if self._first else event]

    def _unmarked(self, event: SSEEvent) -> SSEEvent:
        """The stream's first event, read again without a leading BOM (``raw`` keeps it)."""
        self._first = False
        if not event.raw.startswith(_BOM):
            return event
        unmarked = parse_event(event.raw[len(_BOM):])
        unmarked.raw = event.raw
        return unmarked
