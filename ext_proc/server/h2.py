"""A small HTTP/2 server that speaks just enough gRPC for Envoy's ext_proc and health checks.

Why it exists: measured on this project's 2-core machines, ``grpcio``'s asyncio server spends
640-1,100 µs of CPU per ext_proc stream before any of our code runs (its completion-queue
poller thread hands every message to the event loop across threads), while decoding, deciding
and encoding a whole request takes Tollway's core about 40 µs. This server runs each stream's
messages synchronously inside the protocol callback that received them: no tasks, no futures,
no thread hand-offs, one ``write`` per batch of input.

Scope: the server side of HTTP/2 (RFC 9113) over cleartext with prior knowledge (or inside TLS),
as Envoy's gRPC client (and grpcio's, used as the conformance peer in the tests) speaks it:

- connection preface, SETTINGS (ack; INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE honoured), PING,
  GOAWAY both ways, RST_STREAM, PRIORITY (ignored), padding, CONTINUATION;
- flow control both ways: the peer must stay inside the windows we advertise, which we
  replenish as its bytes arrive; our DATA waits for the peer's WINDOW_UPDATE when its windows
  are exhausted;
- HPACK decoding with the ``hpack`` package; our own header blocks use only static-table and
  literal-without-indexing forms, so they are precomputed bytes independent of table state. A
  block decoded before is not decoded again while the decoder's dynamic table has not changed
  since (:meth:`Connection._decode`): Envoy opens every ext_proc stream with the same block (its
  ``:path`` a literal without indexing, the rest indexed), which ``hpack`` decodes, Huffman and
  all, in about 16 µs of pure Python per stream;
- gRPC length-prefixed messages (no compression), status in trailers, trailers-only errors.

Theory of operation
-------------------
A route maps a gRPC method path to a :data:`CallFactory`. A stream's call is created when its
first complete request message arrives, with the stream's request headers and a
:class:`Responder`, the stream's handle for answering later. A stream that ends or is reset
before that never had a call: it costs no session and leaves nothing in the request log (one that
half-closes without any message is answered INTERNAL "no request message").
The call gets each request message and returns the response messages to send at once (in one
DATA frame when the windows allow: gRPC frames its own messages); ``end()`` gives the final
status when the client half-closes, or ``None`` when the call will finish later through its
responder. Responses are queued in ``Connection.out`` and written with
one ``transport.write`` at the end of the callback that produced them: ``data_received`` for
synchronous answers, a ``loop.call_soon`` flush for a responder used from any other callback
(held while the transport is above its high-water mark, written by ``resume_writing``). Either
way an answer waits in the stream's outbox for the client's flow-control window when it has to.

Every call ends exactly once: ``end()`` returning a status, or ``end()`` returning ``None``
followed by ``responder.finish()``, or ``responder.finish()`` before the client half-closed, or
``reset()`` (the client cancelled, the connection was lost, or the call failed). Nothing reaches
a call after it ended. Note how Envoy's ext_proc client ends a stream: its ``close()`` half-closes
and resets at once, and the reset wins, so what arrives is RST_STREAM (INTERNAL_ERROR), without
END_STREAM, right after Envoy got the answer to its last message. An ext_proc call therefore
never sees ``end()`` from Envoy: ``reset()`` after its last answer is its normal end.

The limits
----------
Envoy is the only legitimate client: a few connections with at most 8 concurrent streams each
(``envoy/tollway.yaml``), and request bodies of up to 64 MiB inside a single gRPC message. The
limits below never touch that traffic and bound what any other peer can make us spend. Values
follow the servers that were fixed for each attack (nghttp2, Go's ``net/http2``, Rust's
``h2``, Envoy's own HTTP/2 codec); a connection error is a GOAWAY with the code shown, then close.

``MAX_CONCURRENT_STREAMS`` = 100
    Advertised in SETTINGS and enforced: a stream beyond it is refused with
    RST_STREAM(REFUSED_STREAM), which tells the client it may retry. 100 is RFC 9113's
    recommended minimum and python-hyper's default (Go: 250, nginx: 128); Envoy opens 8.
``STREAM_WINDOW`` = 16 MiB, ``CONNECTION_WINDOW`` = 64 MiB
    The receive windows we advertise (before: 2 GiB each, i.e. none); the same sizes Envoy
    grants us on this channel. They are replenished when half is used, as bytes arrive (a
    64 MiB message must fit in one stream, so a stream's window cannot wait for its message),
    and never while the stream's answers wait for the peer's window: a peer that does not read
    our answers cannot keep feeding us requests. DATA beyond a window is FLOW_CONTROL_ERROR.
``MAX_UNFINISHED`` = 128 MiB (``Server.max_unfinished``; a worker: at least its ``--body-memory``)
    Bytes of unfinished messages (the streams' inboxes) one connection holds before its window
    stops being given back: the peer, out of window, waits until messages complete
    (back-pressure; Envoy honours flow control). Should it run out of window with none of them
    able to complete, the streams missing the most bytes are refused with RESOURCE_EXHAUSTED (as
    gRPC refuses a message over its limit) until the rest can complete inside the bound; the
    others go on. A connection so holds at most ``MAX_UNFINISHED`` + ``CONNECTION_WINDOW`` of
    requests (before: 100 streams x 64 MiB); two 64 MiB messages at once always pass.
``MAX_MESSAGE`` = 64 MiB
    A gRPC message whose length prefix says more ends its stream (INTERNAL), before any of it is
    buffered: it bounds a stream's inbox. A stream half-closed inside a message ends INTERNAL too
    (its call is reset, as gRPC answers a message cut short).
``MAX_HEADER_BLOCK`` = 64 KiB, ``MAX_CONTINUATIONS`` = 8
    A request's compressed header block (HEADERS plus CONTINUATION fragments) and its decoded
    header list (``hpack``'s ``max_header_list_size``, advertised as MAX_HEADER_LIST_SIZE) are
    capped at 64 KiB (python-hyper's default; Envoy's is 60 KiB); at most 8 CONTINUATION frames
    may follow a HEADERS (nghttp2's default since the 2024 CONTINUATION flood, CVE-2024-28182):
    the byte cap alone does not bound a flood of empty fragments. ENHANCE_YOUR_CALM: the HPACK
    state cannot be kept in step with a block we refuse to read.
``MAX_EMPTY_FRAMES`` = 1
    Consecutive DATA, HEADERS or CONTINUATION frames with an empty payload and no END_STREAM
    (CVE-2019-9518): Envoy's ``max_consecutive_inbound_frames_with_empty_payload`` default.
``MAX_QUEUED_CONTROL`` = 1,000
    PING and SETTINGS acknowledgements and RST_STREAMs we queue while the peer is not reading
    them (CVE-2019-9512, -9515): nghttp2's ``max_outbound_ack`` and Envoy's
    ``max_outbound_control_frames`` default. Counted from the last time the transport's buffer
    was below its low-water mark. ENHANCE_YOUR_CALM.
``MAX_SETTINGS_ENTRIES`` = 32
    Entries in one SETTINGS frame (CVE-2020-11080; nghttp2's and Node's default).
``PRIORITY_PER_STREAM`` = 100, ``WINDOW_UPDATES_PER_DATA`` = 10
    PRIORITY frames (we ignore them) and WINDOW_UPDATE frames cost work and produce nothing:
    at most 100 PRIORITY frames per stream opened, and 10 WINDOW_UPDATEs per DATA frame we sent
    (plus a small allowance), as Envoy's ``max_inbound_priority_frames_per_stream`` and
    ``max_inbound_window_update_frames_per_data_frame_sent`` defaults (CVE-2019-9513, -9517).
Rapid reset: ``RAPID_RESET_MIN_STREAMS`` = 100, ``PREMATURE_RESET`` = 1 s
    A stream the client resets before we sent it any answer, less than a second after opening
    it (Envoy's ``message_timeout``, 5 s, resets streams we were too slow to answer: a slow
    Redis must not look like an attack), or one we refuse, is premature. Once a connection has
    opened 100 streams, more than half of them premature is a reset flood (CVE-2023-44487):
    ENHANCE_YOUR_CALM. This is Envoy's own
    rule for its clients (premature there: reset within 1 s; it waits for 500 streams), except
    that a stream we answered does not count: Envoy itself resets every ext_proc stream, about
    20 ms after opening it on a fast request, right after our answer to its last message (see
    above), so "within a second" alone would cut Envoy off (the end-to-end tests did). A stream
    reset before its first complete message costs no call and no record; one whose message is
    still being answered (a call answering later) is reset, and a flood of those stops after at
    most 100 streams (hence 100, not 500: what such a flood can cost in request records). A
    stream reset after its answer is a request that ran: its call is reset, and the request log
    records it "incomplete" if it had not finished (a client that left). A flood of those is a
    flood of requests, each answered before its reset, which is exactly Envoy's normal traffic
    on the wire: this layer cannot tell them apart, and they are bounded as any request load is
    (write backpressure; the channel only admits Envoy, see ``listen``).
Write backpressure: ``WRITE_HIGH_WATER`` = 1 MiB, ``WRITE_LOW_WATER`` = 256 KiB
    When the transport holds more than 1 MiB we have not managed to write (the peer is not
    reading), we stop reading from the peer until it drains below 256 KiB: a peer that does not
    read cannot make us buffer answers, acknowledgements or anything else without bound.
``OUR_MAX_FRAME`` = 1 MiB
    The largest frame we accept (advertised MAX_FRAME_SIZE): fewer frames for multi-MB bodies.
Malformed requests (RFC 9113 §8.2, §8.3)
    Uppercase or invalid field names, NUL/CR/LF or surrounding whitespace in values,
    connection-specific fields (``connection``, ``keep-alive``, ``proxy-connection``,
    ``transfer-encoding``, ``upgrade``, ``te`` other than ``trailers``), unknown, repeated or
    misplaced pseudo-headers, no ``:method``/``:scheme``/``:path``, pseudo-headers in trailers:
    RST_STREAM(PROTOCOL_ERROR), counted as a premature reset (a stream error, §8.1.1; the h2 library
    ends the connection). Checked once per distinct block: a block kept decoded was well formed.
Graceful GOAWAY: ``GOAWAY_TIMEOUT`` = 1 s
    Shutdown and ``Server.shed`` send GOAWAY(2^31-1) and a PING, then GOAWAY with the real last
    stream id once the PING is acknowledged, or after 1 s without (grpc core's two phases, RFC
    9113 §6.8): a stream Envoy opened while the first GOAWAY was on its way is served, not refused.
``HANDSHAKE_TIMEOUT`` = 20 s
    For the client preface and its SETTINGS (grpc core: 120 s); Envoy sends both at once.
    Otherwise GOAWAY(PROTOCOL_ERROR) and the connection is aborted.
Keepalive: ``KEEPALIVE_TIME`` = 60 s, ``KEEPALIVE_TIMEOUT`` = 20 s (TCP and TLS)
    A PING a minute (one timer per connection); no acknowledgement within 20 s aborts the
    connection, and its calls are reset (their body-budget reservations go back): a dead or
    stuck Envoy, a frame left half sent (a peer cannot answer in the middle of a frame). grpcio
    pings after 2 h idle with the same 20 s timeout; a dead Envoy's streams hold calls and bodies
    here, and a PING a minute costs less than noting when each read came. Unix sockets are not
    pinged: the kernel tells us when their peer goes. Listening TCP sockets also set
    SO_KEEPALIVE (``listen.bind``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import time
from collections.abc import Callable
from ssl import SSLContext
from typing import Protocol

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

log = logging.getLogger("tollway.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x4, 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = 0x9, 0xA, 0xB, 0xC, 0xD

GRPC_OK, GRPC_RESOURCE_EXHAUSTED, GRPC_INTERNAL, GRPC_UNIMPLEMENTED, GRPC_UNAVAILABLE = 0, 8, 13, 12, 14

MAX_WINDOW = 2**31 - 1
OUR_MAX_FRAME = 1 << 20
MAX_MESSAGE = 64 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW = 16 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
HALF_CONNECTION_WINDOW = CONNECTION_WINDOW // 2
MAX_UNFINISHED = 2 * MAX_MESSAGE  # bytes of unfinished messages a connection holds before back-pressure
MAX_HEADER_BLOCK = 64 * 1024
DECODED_BLOCKS = 16  # header blocks a connection keeps decoded (see Connection._decode) ...
DECODED_BLOCK_BYTES = 1024  # ... each at most this long
MAX_CONTINUATIONS = 8
MAX_EMPTY_FRAMES = 1
MAX_QUEUED_CONTROL = 1000
MAX_SETTINGS_ENTRIES = 32
PRIORITY_PER_STREAM = 100
WINDOW_UPDATES_PER_DATA = 10
WINDOW_UPDATE_ALLOWANCE = 100
RAPID_RESET_MIN_STREAMS = 100
PREMATURE_RESET = 1.0
WRITE_HIGH_WATER = 1 << 20
HANDSHAKE_TIMEOUT = 20.0  # seconds for the client preface and its SETTINGS
KEEPALIVE_TIME = 60.0  # seconds between keepalive PINGs (TCP and TLS)
KEEPALIVE_TIMEOUT = 20.0  # seconds for its acknowledgement
KEEPALIVE_PING = b"tollway!"  # our PING's payload
GOAWAY_PING = b"goaway!!"  # the PING after the first GOAWAY of a graceful close (Connection.graceful_goaway)
GOAWAY_TIMEOUT = 1.0  # seconds to wait for its acknowledgement before the final GOAWAY
WRITE_LOW_WATER = 256 * 1024

_frame_header = struct.Struct(">I B I")  # 24-bit length packed in the first 4 bytes with the type
_u32 = struct.Struct(">I")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (len(payload) << 8 | kind).to_bytes(4, "big") + bytes((flags,)) + _u32.pack(stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as "literal without indexing, new name": valid whatever the peer's table holds."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# :status 200 is static-table entry 8; content-type (entry 31) with a literal value.
_RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4) + _hpack_int(16, 7) + b"application/grpc"


def _trailers(status: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(status).encode())
    if message:
        safe = "".join(c if 0x20 <= ord(c) < 0x7F and c != "%" else f"%{ord(c):02X}" for c in message)
        block += _literal(b"grpc-message", safe.encode("ascii", "replace"))
    return block


_OK_TRAILERS = _trailers(GRPC_OK)
_OUR_SETTINGS = struct.pack(
    ">HIHIHIHI",
    0x3, MAX_CONCURRENT_STREAMS,
    0x4, STREAM_WINDOW,
    0x5, OUR_MAX_FRAME,
    0x6, MAX_HEADER_BLOCK,
)


class Responder(Protocol):
    """The server's handle on one stream, given to its call at creation: answer later, from any callback on the loop."""

    def send(self, message: bytes) -> None:
        """Send one response message now; ignored once the stream has ended."""

    def finish(self, status: int = 0, message: str = "") -> None:
        """Send the trailers (gRPC status) and end the stream; idempotent."""

    @property
    def open(self) -> bool:
        """False once the stream ended, was reset, or the connection was lost."""

    @property
    def peer(self) -> object:
        """Who is at the other end of the connection, as the server's ``peer_identity`` named it (e.g. the
        SPIFFE ID of a mutual-TLS client's certificate); None when unknown."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop serving the connection (for a call's timers; ``asyncio.get_running_loop``
        costs a ``getpid`` system call each time); None before the connection is made."""


class Call(Protocol):
    """One gRPC call (an HTTP/2 stream): request messages in, response messages out."""

    def message(self, data: bytes) -> list[bytes]:
        """Handle one request message; the serialized response messages to send now ([] to answer later)."""

    def end(self) -> tuple[int, str] | None:
        """The client finished sending: the final gRPC status and message, or None to finish later via the responder."""

    def reset(self) -> None:
        """The stream was cancelled, the connection lost, or the call failed, before the call ended."""


CallFactory = Callable[[list[tuple[bytes, bytes]], Responder], Call]  # request headers, the stream's responder


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _Malformed(Exception):
    """A header block that decodes but is not a well-formed request (RFC 9113 §8.2, §8.3)."""

    def __init__(self, reason: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(reason)
        self.headers = headers


# RFC 9113 §8.2.1: a field name is visible ASCII, no uppercase, no colon (pseudo-headers are known
# names, checked apart); a value has no NUL, CR or LF, and no whitespace at either end.
_FIELD_NAME = re.compile(rb"[!-9;-@\[-~]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_CONNECTION_SPECIFIC = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"))


def _malformed(headers: list[tuple[bytes, bytes]], trailers: bool = False) -> str | None:
    """Why ``headers`` are not a well-formed request header list (or trailers), or None: RFC 9113
    §8.2 (field names and values, connection-specific fields, TE) and §8.3 (pseudo-headers: only
    the request's, each once, before the others, :method, :scheme and a non-empty :path present
    (CONNECT: :authority instead); none in trailers). :authority is not required (§8.3.1)."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    for name, value in headers:
        if value and _BAD_VALUE.search(value):
            return f"bad value for {name!r}"
        if name[:1] == b":":
            if trailers or regular or name not in _REQUEST_PSEUDO or name in pseudo:
                return f"pseudo-header {name!r} unknown, repeated, after a regular field or in trailers"
            pseudo[name] = value
        else:
            regular = True
            if _FIELD_NAME.fullmatch(name) is None:
                return f"bad field name {name!r}"
            if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
                return f"connection-specific field {name!r}"
    if trailers:
        return None
    method = pseudo.get(b":method")
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            return "a CONNECT request needs :authority and neither :scheme nor :path"
    elif method is None or b":scheme" not in pseudo or not pseudo.get(b":path"):
        return "missing :method, :scheme or :path"
    return None


class _Stream:
    """One stream's state; also its call's :class:`Responder`."""

    __slots__ = (
        "call", "conn", "done", "ended", "factory", "headers", "headers_sent", "inbox", "opened", "outbox",
        "remote_closed", "send_window", "sid", "trailers", "unacked",
    )

    def __init__(
        self, conn: Connection, sid: int, factory: CallFactory | None, headers: list[tuple[bytes, bytes]],
        send_window: int,
    ) -> None:
        self.conn = conn
        self.sid = sid
        self.factory = factory  # None: no route (answered UNIMPLEMENTED)
        self.headers = headers
        self.call: Call | None = None  # created with the first complete message
        self.inbox = bytearray()
        self.outbox = bytearray()  # DATA payload waiting for flow-control window
        self.trailers: bytes | None = None  # a trailers block to send once the outbox drains
        self.headers_sent = False
        self.send_window = send_window
        self.unacked = 0  # DATA bytes received since we last gave this stream's window back
        self.remote_closed = False  # the client sent END_STREAM
        self.ended = False  # the call's end() was called
        self.done = False  # the call ended (status queued) or was reset: nothing more goes to it
        self.opened = time.monotonic()

    # -- Responder ----------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        if not self.done and not self.conn.closed and self.conn.streams.get(self.sid) is self:
            self.conn._send(self.sid, self, message)
            self.conn._answered_later()

    def finish(self, status: int = 0, message: str = "") -> None:
        if not self.done and not self.conn.closed and self.conn.streams.get(self.sid) is self:
            self.conn._finish(self.sid, self, status, message)
            self.conn._answered_later()

    @property
    def open(self) -> bool:
        return not self.done and not self.conn.closed and self.conn.streams.get(self.sid) is self

    @property
    def peer(self) -> object:
        return self.conn.peer

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.conn.loop


def _reset(call: Call) -> None:
    try:
        call.reset()
    except Exception:
        log.exception("gRPC call failed while being reset")


class Connection(asyncio.Protocol):
    """One HTTP/2 connection from Envoy."""

    # Slots: attribute access on the hot path stays the fastest kind (past 30 attributes an
    # instance's dict no longer shares its keys, and every attribute read got slower).
    __slots__ = (
        "buf", "closed", "conn_send_window", "continuations", "control_queued", "data_frames_sent", "decoded",
        "decoder", "empty_frames", "flush_scheduled", "goaway_pending", "going_away", "header_block", "keepalive",
        "last_stream", "loop", "on_frame", "opened_streams", "out", "peer", "peer_initial_window", "peer_max_frame",
        "pinged", "preface", "premature_resets", "priority_frames", "server", "streams", "timer", "transport",
        "unacked", "window_updates", "write_paused",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.buf = bytearray()
        self.preface = False
        self.on_frame: Callable[[int, int, int, bytes], None] = self._first_frame
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self.decoded: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}  # see _decode
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.conn_send_window = 65535
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.unacked = 0  # DATA bytes received since we last gave the connection window back
        self.header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self.continuations = 0
        self.empty_frames = 0
        self.control_queued = 0
        self.write_paused = False
        self.opened_streams = 0
        self.premature_resets = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.data_frames_sent = 0
        self.going_away = False  # no new streams (our final GOAWAY sent, or the client's received)
        self.goaway_pending = False  # our first GOAWAY (2^31-1) is out, the final one waits for its PING's ack
        self.closed = False
        self.peer: object = None  # the client's identity (server.peer_identity), for every stream
        self.timer: asyncio.TimerHandle | None = None  # the handshake deadline, then the keepalive (_tick)
        self.pinged = False  # our keepalive PING awaits its acknowledgement
        self.keepalive = False  # TCP or TLS: PING an idle peer (a Unix socket's peer cannot vanish unseen)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        with contextlib.suppress(RuntimeError):
            self.loop = asyncio.get_running_loop()
        check = self.server.peer_check
        if check is not None and not check(transport):
            log.warning("refused a connection: the client certificate has none of the accepted names")
            self.closed = True
            transport.close()
            return
        if self.server.peer_identity is not None:
            self.peer = self.server.peer_identity(transport)
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self.out.append(_frame(SETTINGS, 0, 0, _OUR_SETTINGS))
        self.out.append(_frame(WINDOW_UPDATE, 0, 0, _u32.pack(CONNECTION_WINDOW - 65535)))
        if self.server.draining:
            self.goaway(NO_ERROR)
        self._flush()
        if self.loop is not None:
            sock = transport.get_extra_info("socket")
            self.keepalive = sock is not None and sock.family != socket.AF_UNIX
            self.timer = self.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)

    def _handshake_expired(self) -> None:
        self.timer = None
        if self.on_frame == self._first_frame and not self.closed:
            log.warning("closed an HTTP/2 connection: no client preface and SETTINGS within %g s", HANDSHAKE_TIMEOUT)
            self._fail(PROTOCOL_ERROR, abort=True)

    def _tick(self) -> None:
        """The keepalive timer (one per connection, from the client's SETTINGS on): a PING every
        ``KEEPALIVE_TIME``; no acknowledgement ``KEEPALIVE_TIMEOUT`` later aborts the connection,
        and its calls are reset (a dead or stuck peer, a frame left half sent: a peer cannot answer
        in the middle of a frame). Busy connections are pinged too: a PING a minute costs less than
        noting every read's time."""
        self.timer = None
        if self.closed or self.loop is None:
            return
        if self.pinged:
            log.warning("closed an HTTP/2 connection: no answer to a keepalive PING within %g s", KEEPALIVE_TIMEOUT)
            self._fail(NO_ERROR, abort=True)
            return
        self.pinged = True
        self.out.append(_frame(PING, 0, 0, KEEPALIVE_PING))
        self._flush()
        self.timer = self.loop.call_later(KEEPALIVE_TIMEOUT, self._tick)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buf += data
        try:
            self._parse()
        except _ConnectionError as exc:
            log.warning("HTTP/2 connection error: %s", exc)
            self._fail(exc.code)
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self in self.server.connections:
            self.server.connections.discard(self)
            self.server.report_closed()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self._reset_call(stream)
        self.server.check_drained()

    def pause_writing(self) -> None:
        """The transport's buffer is above WRITE_HIGH_WATER: stop reading until the peer reads."""
        self.write_paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.control_queued = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self._flush()  # what responders queued meanwhile

    # -- input ------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        if not self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            if buf[: len(PREFACE)] != PREFACE:
                raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self.preface = True
            pos = len(PREFACE)
        end = len(buf)
        try:
            while end - pos >= 9 and not self.closed:
                head, flags, stream_id = _frame_header.unpack_from(buf, pos)
                length, kind = head >> 8, head & 0xFF
                if length > OUR_MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self.on_frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        finally:
            del buf[:pos]

    def _first_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind != SETTINGS or flags & ACK:
            raise _ConnectionError(PROTOCOL_ERROR, "the client preface must end with SETTINGS")
        self.on_frame = self._frame
        if self.timer is not None:  # the handshake deadline
            self.timer.cancel()
            self.timer = None
        if self.keepalive and self.loop is not None:
            self.timer = self.loop.call_later(KEEPALIVE_TIME, self._tick)
        self._frame(kind, flags, sid, payload)

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.header_block is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self._control(_frame(PING, ACK, 0, payload))
            elif payload == KEEPALIVE_PING and self.pinged:
                self.pinged = False
                if self.timer is not None and self.loop is not None:  # the next PING, KEEPALIVE_TIME from now
                    self.timer.cancel()
                    self.timer = self.loop.call_later(KEEPALIVE_TIME, self._tick)
            elif payload == GOAWAY_PING and self.goaway_pending:
                self._final_goaway()
        elif kind == RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == PRIORITY:
            if sid == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PRIORITY payload must be 5 bytes")
            self.priority_frames += 1
            if self.priority_frames > PRIORITY_PER_STREAM * (1 + self.opened_streams):
                raise _ConnectionError(ENHANCE_YOUR_CALM, "PRIORITY flood")
        elif kind == GOAWAY:
            if sid != 0:
                raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY payload too short")
            self.going_away = True
            if not self.streams:
                self._flush()
                self._close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # Unknown frame types are ignored, as RFC 9113 requires.

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _empty_frame(self) -> None:
        self.empty_frames += 1
        if self.empty_frames > MAX_EMPTY_FRAMES:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "a run of empty frames")

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if _u32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
                raise _ConnectionError(PROTOCOL_ERROR, "a stream cannot depend on itself")
            payload = payload[5:]
        if payload or flags & END_STREAM:
            self.empty_frames = 0
        else:
            self._empty_frame()
        if flags & END_HEADERS:
            self._header_block(sid, flags, payload)
        else:
            if len(payload) > MAX_HEADER_BLOCK:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            self.header_block = (sid, flags, bytearray(payload))
            self.continuations = 0

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self.header_block is None or self.header_block[0] != sid:
            raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        self.continuations += 1
        if self.continuations > MAX_CONTINUATIONS:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if payload:
            self.empty_frames = 0
        elif not flags & END_HEADERS:
            self._empty_frame()
        block = self.header_block[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            sid, first_flags, _ = self.header_block
            self.header_block = None
            self._header_block(sid, first_flags, bytes(block))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        if len(block) > MAX_HEADER_BLOCK:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        malformed = None
        try:
            headers = self._decode(block)
        except _Malformed as exc:  # (decoded all the same: the HPACK state moved on)
            headers, malformed = exc.headers, str(exc)
        except OversizedHeaderListError:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "header list too large") from None
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if stream.remote_closed:
                self._stream_closed(sid, stream)  # RFC 9113 5.1: half-closed (remote)
                return
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR, "trailers without END_STREAM")
            if _malformed(headers, trailers=True) is not None:  # RFC 9113 §8.1.1: a stream error
                self._stream_closed(sid, stream, PROTOCOL_ERROR)
                return
            stream.remote_closed = True
            self._deliver(sid, stream)
            return
        if not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"bad new stream id {sid}")
        if sid <= self.last_stream:
            if flags & END_STREAM:
                return  # trailers racing our RST_STREAM(NO_ERROR) on a stream we answered early: ignored
            raise _ConnectionError(PROTOCOL_ERROR, f"stream id {sid} reused")
        self.last_stream = sid
        self.opened_streams += 1
        if self.going_away or (self.server.draining and not self.goaway_pending):
            self._control(_frame(RST_STREAM, 0, sid, _u32.pack(REFUSED_STREAM)))
            return
        if malformed is not None:  # RFC 9113 §8.1.1: a stream error; it costs as a refused stream does
            log.debug("malformed request on HTTP/2 stream %d: %s", sid, malformed)
            self._control(_frame(RST_STREAM, 0, sid, _u32.pack(PROTOCOL_ERROR)))
            self._premature_reset()
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self._control(_frame(RST_STREAM, 0, sid, _u32.pack(REFUSED_STREAM)))
            self._premature_reset()
            return
        path = next((value for name, value in headers if name == b":path"), b"").decode("latin-1")
        factory = self.server.routes.get(path)
        stream = _Stream(self, sid, factory, headers, self.peer_initial_window)
        self.streams[sid] = stream
        if factory is None:
            stream.remote_closed = bool(flags & END_STREAM)
            self._finish(sid, stream, GRPC_UNIMPLEMENTED, f"unknown method {path}")
        elif flags & END_STREAM:
            stream.remote_closed = True
            self._deliver(sid, stream)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of ``block``. Decoding is a function of the block and the dynamic table,
        so a block whose decoding left the table as it was (no entry added, none evicted, the same
        size limit: compared by the newest entry's identity, the count and the limit) decodes the
        same way until the table changes: such blocks are kept (at most :data:`DECODED_BLOCKS` of
        :data:`DECODED_BLOCK_BYTES`) and forgotten whenever a decoding changes the table. A block is
        checked as a request (:func:`_malformed`) once, when decoded: only well-formed ones are kept;
        a malformed one raises :class:`_Malformed`, which carries its header list (trailers)."""
        decoded = self.decoded.get(block)
        if decoded is not None:
            return list(decoded)
        table = self.decoder.header_table
        entries = table.dynamic_entries
        newest = entries[0] if entries else None
        count, limit = len(entries), table.maxsize
        try:
            headers: list[tuple[bytes, bytes]] = self.decoder.decode(block, raw=True)  # type: ignore[assignment]
        except Exception:  # it may have changed the table before it failed: nothing kept holds
            self.decoded.clear()
            raise
        malformed = _malformed(headers)
        if (entries[0] if entries else None) is newest and len(entries) == count and table.maxsize == limit:
            if malformed is None and len(self.decoded) < DECODED_BLOCKS and len(block) <= DECODED_BLOCK_BYTES:
                self.decoded[block] = tuple(headers)
        elif self.decoded:
            self.decoded.clear()
        if malformed is not None:
            raise _Malformed(malformed, headers)
        return headers

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        # Receive windows: ``unacked`` counts what the peer sent since we last gave its window back,
        # so going beyond the window is ``unacked`` beyond its size; half used is given back.
        # The connection's window is given back in _flush, after the read's frames (see _replenish).
        size = len(payload)
        if size:
            self.empty_frames = 0
            unacked = self.unacked = self.unacked + size
            if unacked > CONNECTION_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        elif not flags & END_STREAM:
            self._empty_frame()
        stream = self.streams.get(sid)
        if stream is None:
            if sid == 0 or sid > self.last_stream or not sid & 1:
                raise _ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if flags & PADDED:
                self._unpad(flags, payload)  # bad padding is a connection error on any stream
            return  # a stream we already finished or reset; its data is dropped
        if stream.remote_closed:
            self._stream_closed(sid, stream)  # RFC 9113 5.1: half-closed (remote)
            return
        if size:
            unacked = stream.unacked = stream.unacked + size
            if unacked >= STREAM_WINDOW // 2:
                if unacked > STREAM_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the stream window")
                if not stream.outbox and not stream.done:
                    self._ack(sid, stream)
            if not stream.done:  # once answered, its data is dropped and its window not given back
                stream.inbox += self._unpad(flags, payload) if flags & PADDED else payload
        if flags & END_STREAM:
            stream.remote_closed = True
        if not stream.done:
            self._deliver(sid, stream)

    def _ack(self, sid: int, stream: _Stream) -> None:
        self.out.append(_frame(WINDOW_UPDATE, 0, sid, _u32.pack(stream.unacked)))
        stream.unacked = 0

    def _deliver(self, sid: int, stream: _Stream) -> None:
        """Hand the stream's complete messages to its call, then its half-close; hold while answers wait."""
        inbox = stream.inbox
        while len(inbox) >= 5 and not stream.done:
            if stream.outbox:
                return  # our answers wait for the peer's window: so do its requests (see _drain)
            (size,) = _u32.unpack_from(inbox, 1)
            if inbox[0] or size > MAX_MESSAGE:
                self._fail_call(sid, stream, "compressed or oversized message")
                return
            if len(inbox) < 5 + size:
                break
            if size < 65536:
                message = bytes(inbox[5 : 5 + size])
            else:  # one copy, not two (the slice, then bytes): a body may be 64 MiB
                with memoryview(inbox) as view:
                    message = bytes(view[5 : 5 + size])
            del inbox[: 5 + size]
            try:
                call = stream.call
                if call is None:  # the first message creates the call
                    call = stream.call = stream.factory(stream.headers, stream)  # type: ignore[misc]
                replies = call.message(message)
            except Exception:
                log.exception("gRPC call failed")
                self._fail_call(sid, stream, "tollway: internal error")
                return
            if replies:
                self._send(sid, stream, *replies)
        if stream.remote_closed and not stream.ended and not stream.done and not stream.outbox:
            if inbox:  # half-closed inside a message: gRPC's INTERNAL, not the call's end
                self._fail_call(sid, stream, "incomplete message at the end of the stream")
            else:
                self._end(sid, stream)

    def _end(self, sid: int, stream: _Stream) -> None:
        stream.ended = True
        call = stream.call
        if call is None:  # no request message at all: no call to end (and nothing for the request log)
            self._finish(sid, stream, GRPC_INTERNAL, "no request message")
            return
        try:
            result = call.end()
        except Exception:
            log.exception("gRPC call failed at end of stream")
            result = GRPC_INTERNAL, "tollway: internal error"
        if result is not None:
            self._finish(sid, stream, *result)
        # None: the call answers later through its responder; the stream stays open (and counted).

    def _fail_call(self, sid: int, stream: _Stream, reason: str) -> None:
        """The call failed or its input is unacceptable: INTERNAL to the client, reset() to the call."""
        call = stream.call
        self._finish(sid, stream, GRPC_INTERNAL, reason)
        if call is not None:
            _reset(call)

    def _reset_call(self, stream: _Stream) -> None:
        """The stream is gone before its call ended: tell the call, once."""
        done, stream.done = stream.done, True
        if not done and stream.call is not None:
            _reset(stream.call)

    def _stream_closed(self, sid: int, stream: _Stream, code: int = STREAM_CLOSED) -> None:
        """A frame on a stream the client already ended (or malformed trailers: PROTOCOL_ERROR): a
        stream error, not the connection's; its call is told, the connection and its other streams go on."""
        del self.streams[sid]
        self._reset_call(stream)
        self._control(_frame(RST_STREAM, 0, sid, _u32.pack(code)))

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
        if sid > self.last_stream or not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        self._reset_call(stream)
        # Envoy ends every ext_proc stream with a reset, as soon as it has the answer to its last
        # message: only a reset before any answer (and soon after opening) is premature.
        if not stream.headers_sent and time.monotonic() - stream.opened < PREMATURE_RESET:
            self._premature_reset()
        self._closed_stream()

    def _premature_reset(self) -> None:
        self.premature_resets += 1
        if self.opened_streams >= RAPID_RESET_MIN_STREAMS and 2 * self.premature_resets > self.opened_streams:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "rapid reset: most streams reset as soon as opened")

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) > 6 * MAX_SETTINGS_ENTRIES:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many SETTINGS entries")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if (key == 0x2 or key == 0x8) and value > 1:  # ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL (RFC 8441)
                raise _ConnectionError(PROTOCOL_ERROR, f"bad boolean setting {key}: {value}")
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "a stream window beyond 2^31-1")
            elif key == 0x5:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self._control(_frame(SETTINGS, ACK, 0))
        self._drain_all()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        self.window_updates += 1
        if self.window_updates > WINDOW_UPDATE_ALLOWANCE + WINDOW_UPDATES_PER_DATA * (
            self.data_frames_sent + self.opened_streams
        ):
            raise _ConnectionError(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood")
        increment = _u32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_send_window += increment
            if self.conn_send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window beyond 2^31-1")
            self._drain_all()
            return
        if sid > self.last_stream or not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
        stream = self.streams.get(sid)
        if stream is None:
            return
        if not increment:
            raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window beyond 2^31-1")
        self._drain(sid, stream)

    # -- output -----------------------------------------------------------------------------

    def _control(self, frame: bytes) -> None:
        """Queue an acknowledgement or reset; too many while the peer is not reading is a flood."""
        self.control_queued += 1
        if self.control_queued > MAX_QUEUED_CONTROL:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "control frames queued faster than the peer reads them")
        self.out.append(frame)

    def _send(self, sid: int, stream: _Stream, *messages: bytes) -> None:
        """Send ``messages`` in one DATA frame when the windows and the frame size allow (gRPC frames
        its messages itself, so how DATA frames cut them means nothing to the peer): the answers to
        one request message are usually several (bodies together: the held headers' answer, then
        one per body chunk), and each frame is work for both ends."""
        if not stream.headers_sent:
            self.out.append(_frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS))
            stream.headers_sent = True
        if len(messages) == 1:
            message = messages[0]
            data = b"\x00" + _u32.pack(len(message)) + message
        else:
            parts: list[bytes] = []
            for message in messages:
                parts += (b"\x00" + _u32.pack(len(message)), message)
            data = b"".join(parts)
        size = len(data)
        if (
            not stream.outbox
            and size <= self.peer_max_frame
            and size <= stream.send_window
            and size <= self.conn_send_window
        ):
            stream.send_window -= size
            self.conn_send_window -= size
            self.data_frames_sent += 1
            self.out.append(_frame(DATA, 0, sid, data))
            return
        stream.outbox += data
        self._drain(sid, stream, False)

    def _finish(self, sid: int, stream: _Stream, status: int, message: str = "") -> None:
        if stream.done:
            return
        block = _OK_TRAILERS if status == GRPC_OK and not message else _trailers(status, message)
        if not stream.headers_sent:
            block = _RESPONSE_HEADERS + block  # trailers-only response
            stream.headers_sent = True
        stream.trailers = block
        stream.done = True
        self._drain(sid, stream, False)

    def _drain(self, sid: int, stream: _Stream, resume: bool = True) -> None:
        """Send what the windows allow; once the answers are out, (``resume``) take the held requests."""
        outbox = stream.outbox
        if outbox:
            while outbox:
                size = min(len(outbox), stream.send_window, self.conn_send_window, self.peer_max_frame)
                if size <= 0:
                    return  # wait for WINDOW_UPDATE
                self.out.append(_frame(DATA, 0, sid, bytes(outbox[:size])))
                self.data_frames_sent += 1
                del outbox[:size]
                stream.send_window -= size
                self.conn_send_window -= size
            if resume and not stream.done:  # the answers went out: take the requests that waited for them
                if stream.unacked >= STREAM_WINDOW // 2:
                    self._ack(sid, stream)
                self._deliver(sid, stream)
                if stream.outbox or self.streams.get(sid) is not stream:
                    return
        block = stream.trailers
        if block is not None:
            if len(block) <= self.peer_max_frame:
                self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
            else:  # a long grpc-message (an unknown method's path): CONTINUATION frames (RFC 9113 §4.2)
                size = self.peer_max_frame
                self.out.append(_frame(HEADERS, END_STREAM, sid, block[:size]))
                for start in range(size, len(block), size):
                    last = start + size >= len(block)
                    self.out.append(_frame(CONTINUATION, END_HEADERS if last else 0, sid, block[start : start + size]))
            stream.trailers = None
            if not stream.remote_closed:
                # The answer is complete before the request (RFC 9113 §8.1): ask the client to stop.
                self.out.append(_frame(RST_STREAM, 0, sid, _u32.pack(NO_ERROR)))
            streams = self.streams
            streams.pop(sid, None)
            if not streams and self.going_away:
                self._flush()
                self._close()
            if self.server.draining:
                self.server.check_drained()

    def _closed_stream(self) -> None:
        if not self.streams and self.going_away:
            self._flush()
            self._close()
        if self.server.draining:
            self.server.check_drained()

    def _drain_all(self) -> None:
        for sid, stream in list(self.streams.items()):
            if stream.outbox or stream.trailers is not None:
                self._drain(sid, stream)

    def _answered_later(self) -> None:
        """A responder wrote: flush once this callback is over (or now, without a loop), unless the
        transport is above its high-water mark, in which case ``resume_writing`` flushes."""
        if self.write_paused:
            return
        if self.loop is None:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        if not self.write_paused:
            self._flush()

    def _flush(self) -> None:
        if self.unacked >= HALF_CONNECTION_WINDOW:
            self._replenish()
        if self.out and self.transport is not None and not self.closed:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.transport.write(data)
        if not self.write_paused:
            self.control_queued = 0

    def _replenish(self) -> None:
        """Give the connection's receive window back (half of it is used), unless the unfinished
        messages the streams hold (their inboxes) already reach ``server.max_unfinished``: then the
        peer, out of window, waits until messages complete (back-pressure: Envoy honours flow
        control). Should its window run out with those messages still unfinished, none of them can
        complete: the streams missing the most bytes are refused (RESOURCE_EXHAUSTED, as gRPC
        refuses a message over its limit) until the rest fit under the bound, and the window goes
        back. A connection so holds at most ``max_unfinished`` plus one connection window."""
        limit = self.server.max_unfinished
        held = 0
        for stream in self.streams.values():
            held += len(stream.inbox)
        if held >= limit:
            if self.unacked < CONNECTION_WINDOW or self.closed:
                return  # the peer still has window: messages may yet complete
            held = self._refuse_unfinished(held, limit)
            if held >= limit or not self.unacked:  # (not: a stream's end flushed it meanwhile)
                return  # what remains waits for the peer to read our answers (see _deliver)
        self.out.append(_frame(WINDOW_UPDATE, 0, 0, _u32.pack(self.unacked)))
        self.unacked = 0

    def _refuse_unfinished(self, held: int, limit: int) -> int:
        """Keep the unfinished messages closest to completion (the oldest streams on a tie) while
        what they still miss fits in the window we are about to give back and what they hold stays
        under ``limit``: those can all complete. Refuse the others; returns what is then held."""
        missing: list[tuple[int, int, _Stream]] = []
        for sid, stream in self.streams.items():
            inbox = stream.inbox
            if stream.done:
                held -= len(inbox)  # answered: its input is never read
                inbox.clear()
            elif inbox and not stream.outbox:  # (one waiting for our answers to go out is not stuck)
                need = 5 + _u32.unpack_from(inbox, 1)[0] - len(inbox) if len(inbox) >= 5 else MAX_MESSAGE
                missing.append((need, sid, stream))
                held -= len(inbox)
        missing.sort(key=lambda item: (item[0], item[1]))
        window = CONNECTION_WINDOW
        for need, sid, stream in missing:
            size = len(stream.inbox)
            if need <= window and held + size < limit:
                window -= need
                held += size
                continue
            log.warning("refused HTTP/2 stream %d: the connection's unfinished messages reached the bound", sid)
            stream.inbox.clear()
            call = stream.call
            self._finish(sid, stream, GRPC_RESOURCE_EXHAUSTED, "tollway: too many unfinished messages")
            if call is not None:
                _reset(call)
        return held

    def goaway(self, code: int) -> None:
        self.going_away = True
        self.goaway_pending = False
        self.out.append(_frame(GOAWAY, 0, 0, _u32.pack(self.last_stream) + _u32.pack(code)))

    def graceful_goaway(self) -> None:
        """Send the connection away without losing a stream the client opens meanwhile (RFC 9113
        §6.8, as grpc core does): GOAWAY(2^31-1) and a PING; once the PING is acknowledged (every
        stream the client opened before is then known), or ``GOAWAY_TIMEOUT`` later, GOAWAY with
        the last stream id; the connection closes once its streams are done."""
        if self.going_away or self.goaway_pending or self.closed:
            return
        self.goaway_pending = True
        self.out.append(_frame(GOAWAY, 0, 0, _u32.pack(MAX_WINDOW) + _u32.pack(NO_ERROR)))
        self.out.append(_frame(PING, 0, 0, GOAWAY_PING))
        self._flush()
        if self.loop is not None:
            self.loop.call_later(GOAWAY_TIMEOUT, self._final_goaway)

    def _final_goaway(self) -> None:
        if not self.goaway_pending or self.closed:
            return
        self.goaway(NO_ERROR)
        self._flush()
        if not self.streams:
            self._close()
        self.server.check_drained()

    def _fail(self, code: int, abort: bool = False) -> None:
        """A connection error: GOAWAY with its code, then close (open calls are reset in
        connection_lost); ``abort``: without waiting for what the peer has not read."""
        self.header_block = None
        self.goaway(code)
        self._flush()
        self._close(abort)

    def _close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            if abort:
                self.transport.abort()
            else:
                self.transport.close()  # once what is queued is written: a peer that stopped reading
                transport = self.transport  # never lets it, so it is aborted after a while
                if self.loop is not None and transport.get_write_buffer_size():
                    self.loop.call_later(KEEPALIVE_TIMEOUT, _abort_if_open, transport)


def _abort_if_open(transport: asyncio.Transport) -> None:
    """A closed connection whose peer has not read what was queued for it (KEEPALIVE_TIMEOUT after the close)."""
    if transport.get_write_buffer_size():
        transport.abort()


SHED = b"s"  # the dealer asks a worker to send one of its connections away


class Server:
    """Routes gRPC method paths to call factories; serves them on one listening socket."""

    def __init__(
        self, routes: dict[str, CallFactory], peer_check: Callable[[asyncio.BaseTransport], bool] | None = None,
        peer_identity: Callable[[asyncio.BaseTransport], object] | None = None,
        max_unfinished: int = MAX_UNFINISHED,
    ) -> None:
        self.routes = routes
        self.max_unfinished = max_unfinished  # bytes of unfinished messages per connection (Connection._replenish)
        self.peer_check = peer_check  # e.g. the client certificate's SAN on a mutual-TLS listener
        self.peer_identity = peer_identity  # e.g. that certificate's SPIFFE ID: each stream's Responder.peer
        self.connections: set[Connection] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._drained = asyncio.Event()
        self._channel: socket.socket | None = None  # connections dealt by the supervisor
        self._dealing: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket, ssl: SSLContext | None = None) -> None:
        """Serve on a listening socket (bound by :mod:`ext_proc.server.listen`, maybe shared by workers)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: Connection(self), sock=sock, ssl=ssl)

    def take(self, channel: socket.socket) -> None:
        """Serve the connections passed over ``channel`` (``SCM_RIGHTS``, from
        :class:`ext_proc.server.dealer.Dealer`), and report each one's close on it."""
        loop = asyncio.get_running_loop()
        channel.setblocking(False)
        self._channel = channel

        def receive() -> None:
            try:
                message, fds, _flags, _address = socket.recv_fds(channel, 256, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                if self.draining:
                    conn.close()
                    self.report_closed()
                    continue
                task = loop.create_task(self._serve_dealt(conn))
                self._dealing.add(task)
                task.add_done_callback(self._dealing.discard)
            for _ in range(message.count(SHED) if not fds else 0):
                self.shed()
            if not message:  # the supervisor is gone: this worker is stopping anyway
                loop.remove_reader(channel.fileno())

        loop.add_reader(channel.fileno(), receive)

    async def _serve_dealt(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: Connection(self), conn)
        except OSError as exc:  # closed by Envoy before this worker got to it
            log.debug("a dealt connection was gone: %s", exc)
            conn.close()
            self.report_closed()

    def shed(self) -> None:
        """Send one connection away (GOAWAY: its open streams finish, Envoy opens a new one, which
        the dealer gives a less busy worker): after a worker restart, the load spreads again."""
        staying = [c for c in self.connections if not c.going_away and not c.goaway_pending and not c.closed]
        if not staying:
            return
        min(staying, key=lambda c: len(c.streams)).graceful_goaway()

    def report_closed(self) -> None:
        """Tell the dealer a connection it gave this worker closed."""
        if self._channel is not None:
            with contextlib.suppress(OSError):
                self._channel.send(b"-")

    def check_drained(self) -> None:
        if self.draining and not any(c.streams or c.goaway_pending for c in self.connections):
            self._drained.set()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, send GOAWAY, let open streams (deferred ones too) finish, for up to ``grace`` seconds."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        if self._channel is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._channel.fileno())
        for connection in list(self.connections):
            connection.graceful_goaway()
        self.check_drained()
        deadline = time.monotonic() + grace
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drained.wait(), max(0.0, deadline - time.monotonic()))
        for connection in list(self.connections):
            connection._close()
