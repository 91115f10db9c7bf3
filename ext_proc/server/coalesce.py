"""Bodies sent right behind their headers, every answer written at once: two wake-ups per request, not four.

With ``BUFFERED`` bodies Envoy sends a message's headers, waits for their answer, buffers the body,
sends it and waits again: four messages to Tollway and four answers back per request, each a
wake-up of both processes. With the body modes ``STREAMED`` and
``send_body_without_waiting_for_header_response`` (the shipped configuration, ``tollway envoy
--bodies together``; ``--bodies buffered`` answers message by message, see the README's
Performance section for the trade) Envoy sends the body right behind its headers, usually in the
same write. A :class:`Coalescer`
then gives the session what it has always read (the headers, then the whole body in one event)
and holds the headers' answer until the body's answer is known, then writes them together: the
headers' answer carries the header changes of both (routing, the provider's key, a translated
answer's content type, usage headers, a refused answer's status) and each body chunk
gets its answer, the last one carrying the new body when the session replaced it.

Envoy sends a streamed body on without its ``content-length`` (its rule for ``STREAMED``, whatever
the answer sets): an Envoy ``buffer`` filter before the router gives the request its length back
(:data:`ext_proc.envoy_config.BODY_BUFFER`), and over HTTP/1.1 the client gets the answer chunked.

Envoy says which modes it runs in the first message of each stream (``protocol_config``), so
a configuration with buffered bodies (or an older Envoy) is served as before, message by message.
A response the session streams (server-sent events) is answered chunk by chunk as soon as its
headers are: nothing is held there.

What holding changes, and how it is bounded:

- the headers' timer. Envoy times each message (``message_timeout``, 5 s): a body still arriving
  after its headers (a slow upload, a provider that sends its head long before its body) would
  run it out. A body still held :data:`EXTEND_AFTER` after its headers gets the timer extended
  once to :data:`EXTENDED` (``override_message_timeout``; Envoy takes it up to its
  ``max_message_timeout``, 60 s in the shipped configurations): the h2 server sends it from a
  timer (one per event loop, :class:`Overdue`), the grpcio server when the next chunk arrives.
  Envoy hands an HTTP/1 body over as its data and then an empty last chunk, so "not the last
  chunk" alone says nothing: a timer it is;
- the size. Envoy no longer buffers, so its own 413 for a body past its buffer limit never comes;
  the coalescer reads at most :data:`MAX_BODY` bytes (the shipped buffer limit) and the session
  refuses a longer request in the client's format (413 ``request_too_large``). An answer that
  long fails the stream (Envoy then fails the request closed, as its buffer limit did), and the
  session records the request as incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import duration_pb2

from ext_proc.core.actions import CONTINUE, Action, Continue
from ext_proc.core.events import Event, RequestBody, ResponseBody
from ext_proc.llm.errors import ClientError
from ext_proc.server import codec

log = logging.getLogger("tollway.coalesce")

MAX_BODY = 64 * 1024 * 1024  # bytes of one body: Envoy's buffer limit in envoy/tollway.yaml
EXTENDED = 60  # seconds: the headers' timer once a body is still arriving (Envoy's max_message_timeout)
EXTEND_AFTER = 0.5  # seconds a body may be held before the headers' timer is extended
_EXTEND_AFTER_NS = int(EXTEND_AFTER * 1e9)
_EXTEND = pb.ProcessingResponse(override_message_timeout=duration_pb2.Duration(seconds=EXTENDED)).SerializeToString()
_STREAMED = processing_mode_pb2.ProcessingMode.STREAMED
_BODY_KINDS = ("request_body", "response_body")
_EMPTY = {kind: codec.encode_bytes(kind, CONTINUE) for kind in _BODY_KINDS}  # a chunk let through as it is
_NO_BODY_BYTES = {kind: codec.encode_bytes(kind, Continue(body=b"")) for kind in _BODY_KINDS}  # a chunk dropped

TOO_LARGE = ClientError(413, "request_too_large",
                        f"The request body is larger than the gateway reads ({MAX_BODY // (1024 * 1024)} MiB).")


class AnswerTooLarge(Exception):
    """A provider's answer longer than :data:`MAX_BODY`: the stream fails (Envoy fails it closed)."""


def wanted(request: pb.ProcessingRequest) -> bool:
    """Whether the stream that ``request`` opens sends bodies without waiting for their headers' answer."""
    if not request.HasField("protocol_config"):
        return False
    config = request.protocol_config
    return bool(config.send_body_without_waiting_for_header_response and config.request_body_mode == _STREAMED
                and config.response_body_mode == _STREAMED)


@dataclass(slots=True)
class _Held:
    """One direction's headers answer, waiting for its body, and that body's chunks so far."""

    kind: str  # "request_headers" or "response_headers"
    answer: Continue
    since: int  # monotonic ns: when the answer was held
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    extended: bool = False


class Coalescer:
    """One ext_proc stream's holding of headers answers (see the module docstring).

    The transport calls :meth:`incoming` with each decoded message (what the session must handle
    now, or None while a body is held), :meth:`early` for answers to send at once (a timer's
    extension), and :meth:`outgoing` with the session's answer (the replies to send now).
    """

    __slots__ = ("_early", "_ended", "_held", "_passing", "closed")

    def __init__(self) -> None:
        self._held: _Held | None = None
        self._ended = False  # the last headers message had end_of_stream: no body follows
        self._passing = False  # the session streams this response: chunks are answered one by one
        self._early: list[bytes] = []
        self.closed = False  # answered with an immediate response: anything Envoy sent after is dropped

    def incoming(self, kind: str, event: Event) -> Event | None:
        """The event the session handles for this message, or None while its body is held.

        Raises :class:`ClientError` (413) for a request body past :data:`MAX_BODY` and
        :class:`AnswerTooLarge` for such an answer.
        """
        if self.closed:
            return None
        if kind == "request_headers" or kind == "response_headers":
            self._ended = event.end_of_stream  # type: ignore[union-attr]
            return event
        held = self._held
        if held is None or (self._passing and kind == "response_body"):
            return event  # a streamed answer's chunk, or a body whose headers were not held
        body: bytes = event.body  # type: ignore[union-attr]
        held.parts.append(body)
        held.size += len(body)
        if held.size > MAX_BODY:
            self._held = None
            self.closed = True
            if kind == "request_body":
                raise TOO_LARGE
            raise AnswerTooLarge(f"an answer longer than {MAX_BODY} bytes")
        if not event.end_of_stream:  # type: ignore[union-attr]
            if event.at - held.since >= _EXTEND_AFTER_NS:
                self._early += self.extension()
            return None
        whole = held.parts[0] if len(held.parts) == 1 else b"".join(held.parts)
        if kind == "request_body":
            return RequestBody(whole, True, event.at)
        return ResponseBody(whole, True, event.at)

    @property
    def holding(self) -> bool:
        """Whether a headers answer is held for its body."""
        return self._held is not None

    @property
    def held_since(self) -> int:
        """Monotonic ns since the held headers answer was held (0 when not holding)."""
        held = self._held
        return held.since if held is not None else 0

    def describe(self) -> str:
        """What is held, for a log line (sizes and times, never content)."""
        held = self._held
        if held is None:
            return "nothing held"
        seconds = (time.monotonic_ns() - held.since) / 1e9
        return (f"{held.kind} answer held {seconds:.1f} s for its body: {len(held.parts)} chunk(s), {held.size} bytes "
                f"so far, the timer {'extended' if held.extended else 'not extended'}")

    def extension(self) -> list[bytes]:
        """The answer extending the held headers' timer, once per held body ([] when not holding)."""
        held = self._held
        if held is None or held.extended:
            return []
        held.extended = True
        return [_EXTEND]

    def early(self) -> list[bytes]:
        """Answers to send now, before the session's next one (the headers' timer extended)."""
        out = self._early
        if out:
            self._early = []
        return out

    def outgoing(self, kind: str, action: Action, credentials: codec.Credentials | None) -> list[bytes]:
        """The replies for the session's ``action`` on a message of ``kind`` (none while held)."""
        if not isinstance(action, Continue):  # an immediate response ends the stream's processing
            self.closed = True
            self._held = None
            return [codec.encode_bytes(kind, action)]
        if kind == "request_headers" or kind == "response_headers":
            if self._ended or action.stream_response:
                self._passing = action.stream_response
                return [codec.encode_bytes(kind, action, credentials)]
            self._held = _Held(kind, action, time.monotonic_ns())
            return []
        held = self._held
        if held is None or (self._passing and kind == "response_body"):
            return [codec.encode_bytes(kind, action, credentials)]
        self._held = None
        replies = [codec.encode_bytes(held.kind, _merged(held.answer, action), credentials)]
        chunks = len(held.parts)
        if action.body is None:
            replies += [_EMPTY[kind]] * chunks
        else:
            replies += [_NO_BODY_BYTES[kind]] * (chunks - 1)
            replies.append(codec.encode_bytes(kind, Continue(body=action.body)))
        return replies


class Overdue:
    """One event loop's held headers answers, oldest first, and one timer for all of them.

    Every request of the together mode holds an answer twice (its request's headers, its
    response's) for well under a millisecond. A timer each (asyncio's ``call_later`` and
    ``cancel``) cost 1.6 µs apiece here, 3 µs a request; registering costs a dict insert and
    delete. While anything is held the loop looks every ``EXTEND_AFTER / 4`` seconds and calls
    each ``extend`` held longer than :data:`EXTEND_AFTER` (so between it and 1.25 times it after
    its headers), then drops it; with nothing held there is no timer.
    """

    __slots__ = ("_held", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: dict[Callable[[], None], int] = {}  # extend -> monotonic ns held since, oldest first
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Overdue:
        """``loop``'s (made on first use; forgotten once nothing is held there)."""
        overdue = _OVERDUE.get(loop)
        if overdue is None:
            overdue = _OVERDUE[loop] = cls(loop)
        return overdue

    def hold(self, extend: Callable[[], None], since: int) -> None:
        """Call ``extend`` once :data:`EXTEND_AFTER` has passed since ``since`` unless released first."""
        self._held[extend] = since
        if self._timer is None:
            self._timer = self._loop.call_later(EXTEND_AFTER / 4, self._sweep)

    def release(self, extend: Callable[[], None]) -> None:
        self._held.pop(extend, None)

    def _sweep(self) -> None:
        held = self._held
        due = time.monotonic_ns() - int(EXTEND_AFTER * 1e9)
        overdue = []
        for extend, since in held.items():
            if since > due:
                break
            overdue.append(extend)
        for extend in overdue:
            del held[extend]
            try:
                extend()
            except Exception:  # one stream's failure must not stop the others' extensions
                log.exception("extending a held headers answer's timer failed")
        if held:
            self._timer = self._loop.call_later(EXTEND_AFTER / 4, self._sweep)
        else:
            self._timer = None
            _OVERDUE.pop(self._loop, None)


_OVERDUE: dict[asyncio.AbstractEventLoop, Overdue] = {}


def _merged(head: Continue, body: Continue) -> Continue:
    """The headers' answer carrying the body answer's header changes too (the body's sets win)."""
    if not (body.set_headers or body.remove_headers or body.clear_route_cache or body.credential or body.metadata):
        return head
    removals = body.remove_headers
    if head.remove_headers:
        set_names = {name for name, _ in body.set_headers}
        removals = tuple(name for name in head.remove_headers if name not in set_names) + removals
    return Continue(set_headers=head.set_headers + body.set_headers, remove_headers=removals,
                    clear_route_cache=head.clear_route_cache or body.clear_route_cache,
                    credential=body.credential or head.credential, metadata=head.metadata + body.metadata)

