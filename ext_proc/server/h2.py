"""A small HTTP/2 server that speaks just enough gRPC for Envoy's ext_proc and health checks.

Why it exists: measured on this project's 2-core machines, ``grpcio``'s asyncio server spends
640-1,100 µs of CPU per ext_proc stream before any of our code runs (its completion-queue
poller thread hands every message to the event loop across threads), while decoding, deciding
and encoding a whole request takes Tollway's core about 40 µs. This server runs each stream's
messages synchronously inside the protocol callback that received them: no tasks, no futures,
no thread hand-offs, one ``write`` per batch of input.

Scope: the server side of HTTP/2 (RFC 9113) over cleartext with prior knowledge, as Envoy's
gRPC client (and grpcio's, used as the conformance peer in the tests) speaks it:

- connection preface, SETTINGS (ack; INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE honoured), PING,
  GOAWAY both ways, RST_STREAM, PRIORITY (ignored), padding, CONTINUATION;
- flow control both ways: we advertise large windows and replenish them as we consume; our
  DATA waits for the peer's WINDOW_UPDATE when its windows are exhausted;
- HPACK decoding with the ``hpack`` package; our own header blocks use only static-table and
  literal-without-indexing forms, so they are precomputed bytes independent of table state;
- gRPC length-prefixed messages (no compression), status in trailers, trailers-only errors.

A route maps a gRPC method path to a factory of :class:`Call` objects, one per stream (the
factory sees the stream's request headers, e.g. the gRPC metadata Envoy adds). A call
gets each request message and returns the response messages to send; ``end()`` gives the final
status. Graceful shutdown sends GOAWAY, lets open streams finish, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from ssl import SSLContext
from typing import Protocol

from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger("tollway.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x2, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x7, 0x8, 0x9

GRPC_OK, GRPC_INTERNAL, GRPC_UNIMPLEMENTED, GRPC_UNAVAILABLE = 0, 13, 12, 14

MAX_WINDOW = 2**31 - 1
OUR_MAX_FRAME = 1 << 20  # we accept frames up to 1 MiB: fewer frames for multi-MB bodies
MAX_MESSAGE = 64 * 1024 * 1024
REPLENISH_AT = 1 << 30

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


class Call(Protocol):
    """One gRPC call (an HTTP/2 stream): request messages in, response messages out."""

    def message(self, data: bytes) -> list[bytes]:
        """Handle one request message; the serialized response messages to send now."""

    def end(self) -> tuple[int, str]:
        """The client finished sending: the final gRPC status and message."""

    def reset(self) -> None:
        """The stream was cancelled or the connection lost before the call ended."""


CallFactory = Callable[[list[tuple[bytes, bytes]]], Call]  # gets the request headers


class _Stream:
    __slots__ = ("call", "headers_sent", "inbox", "outbox", "received", "send_window", "trailers")

    def __init__(self, call: Call | None, send_window: int) -> None:
        self.call = call
        self.inbox = bytearray()
        self.outbox = bytearray()  # DATA payload waiting for flow-control window
        self.trailers: bytes | None = None  # a trailers block to send once the outbox drains
        self.headers_sent = False
        self.send_window = send_window
        self.received = 0


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Connection(asyncio.Protocol):
    """One HTTP/2 connection from Envoy."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = False
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.decoder = Decoder()
        self.out: list[bytes] = []
        self.conn_send_window = 65535
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.received = 0
        self.header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self.going_away = False
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        check = self.server.peer_check
        if check is not None and not check(transport):
            log.warning("refused a connection: the client certificate has none of the accepted names")
            self.closed = True
            transport.close()
            return
        self.server.connections.add(self)
        settings = struct.pack(">HIHIHI", 0x3, 1 << 20, 0x4, MAX_WINDOW, 0x5, OUR_MAX_FRAME)
        self.out.append(_frame(SETTINGS, 0, 0, settings))
        self.out.append(_frame(WINDOW_UPDATE, 0, 0, _u32.pack(MAX_WINDOW - 65535)))
        if self.server.draining:
            self.goaway(NO_ERROR)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except _ConnectionError as exc:
            log.warning("HTTP/2 connection error: %s", exc)
            self.goaway(exc.code)
            self._flush()
            self._close()
            return
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in self.streams.values():
            if stream.call is not None:
                stream.call.reset()
        self.streams.clear()
        self.server.check_drained()

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
        while end - pos >= 9:
            head, flags, stream_id = _frame_header.unpack_from(buf, pos)
            length, kind = head >> 8, head & 0xFF
            if length > OUR_MAX_FRAME:
                raise _ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        del buf[:pos]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.header_block is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.header_block is None or self.header_block[0] != sid:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.header_block[2].extend(payload)
            if flags & END_HEADERS:
                sid, first_flags, block = self.header_block
                self.header_block = None
                self._header_block(sid, first_flags, bytes(block))
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self.out.append(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self.streams.pop(sid, None)
            if stream is not None and stream.call is not None:
                stream.call.reset()
            self.server.check_drained()
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams:
                self._close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires.

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            return payload[1 : len(payload) - payload[0]]
        return payload

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(sid, flags, payload)
        else:
            self.header_block = (sid, flags, bytearray(payload))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if flags & END_STREAM:
                self._end(sid, stream)
            return
        if sid <= self.last_stream or not sid & 1:
            raise _ConnectionError(PROTOCOL_ERROR, f"bad new stream id {sid}")
        self.last_stream = sid
        if self.going_away or self.server.draining:
            self.out.append(_frame(RST_STREAM, 0, sid, _u32.pack(REFUSED_STREAM)))
            return
        path = next((value for name, value in headers if name == b":path"), b"").decode("latin-1")
        factory = self.server.routes.get(path)
        stream = _Stream(factory(headers) if factory else None, self.peer_initial_window)
        self.streams[sid] = stream
        if factory is None:
            self._finish(sid, stream, GRPC_UNIMPLEMENTED, f"unknown method {path}")
        elif flags & END_STREAM:
            self._end(sid, stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        self.received += len(payload)
        if self.received >= REPLENISH_AT:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, _u32.pack(self.received)))
            self.received = 0
        stream = self.streams.get(sid)
        if stream is None:
            return  # a stream we already finished or reset; its data is dropped
        stream.received += len(payload)
        if stream.received >= REPLENISH_AT:
            self.out.append(_frame(WINDOW_UPDATE, 0, sid, _u32.pack(stream.received)))
            stream.received = 0
        inbox = stream.inbox
        inbox += self._unpad(flags, payload)
        call = stream.call
        while len(inbox) >= 5 and call is not None:
            compressed = inbox[0]
            (size,) = _u32.unpack_from(inbox, 1)
            if compressed or size > MAX_MESSAGE:
                self._finish(sid, stream, GRPC_INTERNAL, "compressed or oversized message")
                call.reset()
                return
            if len(inbox) < 5 + size:
                break
            message = bytes(inbox[5 : 5 + size])
            del inbox[: 5 + size]
            try:
                replies = call.message(message)
            except Exception:
                log.exception("gRPC call failed")
                self._finish(sid, stream, GRPC_INTERNAL, "tollway: internal error")
                call.reset()
                return
            for reply in replies:
                self._send(sid, stream, reply)
            if self.streams.get(sid) is not stream:
                return
        if flags & END_STREAM:
            self._end(sid, stream)

    def _end(self, sid: int, stream: _Stream) -> None:
        if stream.call is None:
            return
        try:
            status, message = stream.call.end()
        except Exception:
            log.exception("gRPC call failed at end of stream")
            status, message = GRPC_INTERNAL, "tollway: internal error"
        self._finish(sid, stream, status, message)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0 or len(payload) % 6:
            raise _ConnectionError(PROTOCOL_ERROR, "bad SETTINGS frame")
        if flags & ACK:
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 0x5:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self.out.append(_frame(SETTINGS, ACK, 0))
        self._drain_all()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = _u32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            self.conn_send_window += increment
            self._drain_all()
        else:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.send_window += increment
                self._drain(sid, stream)

    # -- output -----------------------------------------------------------------------------

    def _send(self, sid: int, stream: _Stream, message: bytes) -> None:
        if not stream.headers_sent:
            self.out.append(_frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS))
            stream.headers_sent = True
        size = len(message) + 5
        if (
            not stream.outbox
            and size <= self.peer_max_frame
            and size <= stream.send_window
            and size <= self.conn_send_window
        ):
            stream.send_window -= size
            self.conn_send_window -= size
            self.out.append(_frame(DATA, 0, sid, b"\x00" + _u32.pack(len(message)) + message))
            return
        stream.outbox += b"\x00" + _u32.pack(len(message)) + message
        self._drain(sid, stream)

    def _finish(self, sid: int, stream: _Stream, status: int, message: str = "") -> None:
        block = _OK_TRAILERS if status == GRPC_OK and not message else _trailers(status, message)
        if not stream.headers_sent:
            block = _RESPONSE_HEADERS + block  # trailers-only response
            stream.headers_sent = True
        stream.trailers = block
        stream.call = None
        self._drain(sid, stream)

    def _drain(self, sid: int, stream: _Stream) -> None:
        outbox = stream.outbox
        while outbox:
            size = min(len(outbox), stream.send_window, self.conn_send_window, self.peer_max_frame)
            if size <= 0:
                return  # wait for WINDOW_UPDATE
            self.out.append(_frame(DATA, 0, sid, bytes(outbox[:size])))
            del outbox[:size]
            stream.send_window -= size
            self.conn_send_window -= size
        if stream.trailers is not None:
            self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, sid, stream.trailers))
            stream.trailers = None
            self.streams.pop(sid, None)
            if not self.streams and (self.going_away or self.server.draining):
                self._flush()
                self._close()
            self.server.check_drained()

    def _drain_all(self) -> None:
        for sid, stream in list(self.streams.items()):
            if stream.outbox or stream.trailers is not None:
                self._drain(sid, stream)

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.closed:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.transport.write(data)

    def goaway(self, code: int) -> None:
        self.going_away = True
        self.out.append(_frame(GOAWAY, 0, 0, _u32.pack(self.last_stream) + _u32.pack(code)))

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class Server:
    """Routes gRPC method paths to call factories; serves them on one listening socket."""

    def __init__(
        self, routes: dict[str, CallFactory], peer_check: Callable[[asyncio.BaseTransport], bool] | None = None
    ) -> None:
        self.routes = routes
        self.peer_check = peer_check  # e.g. the client certificate's SAN on a mutual-TLS listener
        self.connections: set[Connection] = set()
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._drained = asyncio.Event()

    async def start(self, sock: socket.socket, ssl: SSLContext | None = None) -> None:
        """Serve on a listening socket (bound by :mod:`ext_proc.server.listen`, maybe shared by workers)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: Connection(self), sock=sock, ssl=ssl)

    def check_drained(self) -> None:
        if self.draining and not any(c.streams for c in self.connections):
            self._drained.set()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, tell every connection GOAWAY, let open streams finish (up to ``grace``)."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.goaway(NO_ERROR)
            connection._flush()
            if not connection.streams:
                connection._close()
        self.check_drained()
        deadline = time.monotonic() + grace
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drained.wait(), max(0.0, deadline - time.monotonic()))
        for connection in list(self.connections):
            connection._close()
