"""Fuzzing Tollway's HTTP/2 server: frame-level invariants, and a differential test against python-hyper's h2.

Frame-level (``test_arbitrary_frames_keep_the_invariants``): hypothesis builds arbitrary frame
sequences (every frame type, any flags, a few stream ids, payloads that are sometimes well
formed and sometimes not), cuts them anywhere and feeds them to ``Connection.data_received``,
with calls that answer now, answer later through their responder, finish early, or raise. After
every read, and after the connection is lost, it checks what must always hold: nothing raises out
of ``data_received``; nothing is buffered beyond what the peer sent; everything queued was
written; every GOAWAY code is one RFC 9113 defines and nothing follows an error GOAWAY; our own
frames parse and our header blocks decode; every call ends exactly once (``end()`` with a
status, ``end()`` then ``finish()``, ``finish()`` alone, or ``reset()``) and hears nothing after.

Differential (``test_same_bytes_same_outcome_as_h2``): hypothesis drives an h2 client
(``H2Connection(client_side=True)``) through a random sequence of actions (open streams with
known or unknown methods, send gRPC messages, half-close, reset, ping, change settings, grow
windows), optionally with raw or corrupted frames spliced in, and feeds the same bytes to
Tollway's server and to a reference gRPC echo server built on h2's server side. It compares the
classes of outcome: connection error (and its code) or not, and for each stream whether it was
served (and with what), reset, or left open. Where the two legitimately differ it is listed in
``KNOWN_DIFFERENCES`` with the reason, and the comparison is skipped for that case only.

``make test`` runs a bounded number of examples (a few seconds); set ``TOLLWAY_FUZZ_EXAMPLES``
(e.g. 20000) for a longer run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import H2Error
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ext_proc.server import h2
from tests.fakes import FakeTransport
from tests.unit.h2_peer import PATH, REQUEST, frame, grpc_message, literal_block, parse_frames

EXAMPLES = int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", "0")) or None
LEGAL_CODES = set(range(0x0, 0xE))


# -- frame-level invariants ----------------------------------------------------------------------


@dataclass
class Ledger:
    """Every call's events, in order: created, message, end:status, end:later, finish, reset."""

    calls: dict[int, list[str]] = field(default_factory=dict)
    responders: dict[int, h2.Responder] = field(default_factory=dict)
    next_id: int = 0


class ChaosCall:
    """Behaves as its first message says: b"raise", b"later" (answers through the responder), b"defer-end"
    (end() returns None), b"finish" (finishes at once through the responder), else echoes."""

    def __init__(self, ledger: Ledger, responder: h2.Responder) -> None:
        self.id = ledger.next_id
        ledger.next_id += 1
        self.events = ledger.calls[self.id] = ["created"]
        ledger.responders[self.id] = responder
        self.responder = responder
        self.defer_end = False

    def message(self, data: bytes) -> list[bytes]:
        self.events.append("message")
        if data == b"raise":
            raise RuntimeError("boom")
        if data == b"later":
            return []
        if data == b"defer-end":
            self.defer_end = True
        if data == b"finish":
            self.events.append("finish")
            self.responder.finish(0, "early")
            return []
        return [data]

    def end(self) -> tuple[int, str] | None:
        if self.defer_end:
            self.events.append("end:later")
            return None
        self.events.append("end:status")
        return 0, ""

    def reset(self) -> None:
        self.events.append("reset")


def check_call(events: list[str], lost: bool) -> None:
    assert events[0] == "created" and events.count("created") == 1
    terminal = [i for i, e in enumerate(events) if e in ("end:status", "finish", "reset")]
    if lost:
        assert len(terminal) == 1, events  # every call ended exactly once
    else:
        assert len(terminal) <= 1, events
    assert events.count("end:status") + events.count("end:later") <= 1, events
    if terminal:
        assert terminal[0] == len(events) - 1, events  # nothing reaches a call once it ended
    if "reset" in events:
        assert events[-1] == "reset", events


def check_output(data: bytes) -> None:
    """Our frames parse, our header blocks decode, GOAWAY codes are legal, nothing follows an error GOAWAY."""
    decoder = hpack.Decoder()
    frames = parse_frames(data)
    assert sum(9 + len(p) for *_, p in frames) == len(data), "a truncated frame"
    for i, (kind, _flags, sid, payload) in enumerate(frames):
        if kind == h2.HEADERS:
            decoder.decode(payload)
        elif kind == h2.GOAWAY:
            code = int.from_bytes(payload[4:8], "big")
            assert code in LEGAL_CODES
            if code:
                assert i == len(frames) - 1, "frames after an error GOAWAY"
        elif kind == h2.RST_STREAM:
            assert int.from_bytes(payload, "big") in LEGAL_CODES
        elif kind == h2.DATA:
            assert sid and sid & 1


def _settings_payload(draw: st.DrawFn) -> bytes:
    entries = draw(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 2**32 - 1) | st.sampled_from(
        [0, 1, 16384, 65535, 2**24 - 1, 2**24, 2**31 - 1, 2**31])), max_size=4))
    return b"".join(struct.pack(">HI", k, v) for k, v in entries)


MESSAGES = st.sampled_from([b"echo", b"raise", b"later", b"defer-end", b"finish", b"", b"x" * 3000])


@st.composite
def frames_strategy(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([h2.DATA, h2.HEADERS, h2.CONTINUATION, h2.RST_STREAM, h2.SETTINGS, h2.PING,
                                 h2.WINDOW_UPDATE, h2.PRIORITY, h2.GOAWAY, h2.PUSH_PROMISE, 0x0A, 0xFF]))
    flags = draw(st.sampled_from([0, h2.END_STREAM, h2.END_HEADERS, h2.END_STREAM | h2.END_HEADERS, h2.PADDED,
                                  h2.PRIORITY_FLAG | h2.END_HEADERS]) | st.integers(0, 255))
    sid = draw(st.sampled_from([0, 1, 3, 5, 2, 2**31 - 1]))
    if kind == h2.DATA:
        payload = draw(st.lists(MESSAGES, max_size=3).map(lambda ms: b"".join(grpc_message(m) for m in ms))
                       | st.binary(max_size=40))
    elif kind in (h2.HEADERS, h2.CONTINUATION):
        block = literal_block(draw(st.sampled_from([REQUEST, [(b":path", b"/nope")], []])))
        cut = draw(st.integers(0, len(block)))
        payload = draw(st.sampled_from([block, block[:cut], block[cut:]]) | st.binary(max_size=40))
    elif kind == h2.SETTINGS:
        payload = _settings_payload(draw) if draw(st.booleans()) else draw(st.binary(max_size=20))
    elif kind in (h2.WINDOW_UPDATE, h2.RST_STREAM):
        payload = draw(st.integers(0, 2**32 - 1).map(lambda v: struct.pack(">I", v)) | st.binary(max_size=6))
    elif kind == h2.PING:
        payload = draw(st.binary(min_size=8, max_size=8) | st.binary(max_size=10))
    else:
        payload = draw(st.binary(max_size=12))
    if flags & h2.PADDED and kind in (h2.DATA, h2.HEADERS) and draw(st.booleans()):
        pad = draw(st.integers(0, 10))
        payload = bytes((pad,)) + payload + b"\0" * pad
    return frame(kind, flags, sid, payload)


@st.composite
def plausible_frames(draw: st.DrawFn, next_stream: list[int]) -> bytes:
    """A frame a gRPC client would send (new streams, messages, half-close, reset, ping, settings, window)."""
    action = draw(st.sampled_from(["open"] * 3 + ["data"] * 5 + ["end", "reset", "ping", "settings", "window",
                                                                 "continued", "priority"]))
    if draw(st.integers(0, 40)) == 0:
        action = "goaway"  # rare: it ends the connection once no stream is open
    if next_stream[0] == 1 and action in ("data", "end", "reset", "priority", "window"):
        action = "open"  # the first stream action opens one
    opened = max(1, next_stream[0] - 2)
    sid = draw(st.sampled_from([opened] * 36 + [max(1, opened - 2)] * 12 + [opened + 2]))  # rarely an idle one
    if action == "open" or action == "continued":
        sid = next_stream[0]
        next_stream[0] += 2
        block = literal_block(draw(st.sampled_from([REQUEST, REQUEST, [*REQUEST[:2], (b":path", b"/nope")]])))
        end = draw(st.sampled_from([0, 0, 0, h2.END_STREAM]))
        if action == "open":
            return frame(h2.HEADERS, h2.END_HEADERS | end, sid, block)
        cut = draw(st.integers(1, len(block) - 1))
        return frame(h2.HEADERS, end, sid, block[:cut]) + frame(h2.CONTINUATION, h2.END_HEADERS, sid, block[cut:])
    if action == "data":
        messages = draw(st.lists(MESSAGES, min_size=1, max_size=3))
        payload = b"".join(grpc_message(m) for m in messages)
        cut = draw(st.integers(0, len(payload)))
        end = draw(st.sampled_from([0, 0, h2.END_STREAM]))
        return frame(h2.DATA, 0, sid, payload[:cut]) + frame(h2.DATA, end, sid, payload[cut:])
    if action == "end":
        return frame(h2.DATA, h2.END_STREAM, sid)
    if action == "reset":
        return frame(h2.RST_STREAM, 0, sid, struct.pack(">I", h2.CANCEL))
    if action == "ping":
        return frame(h2.PING, 0, 0, b"pingpong")
    if action == "settings":
        return frame(h2.SETTINGS, 0, 0, struct.pack(">HI", 4, draw(st.sampled_from([0, 10, 65535, 1 << 20]))))
    if action == "window":
        target = draw(st.sampled_from([0, sid]))
        return frame(h2.WINDOW_UPDATE, 0, target, struct.pack(">I", draw(st.integers(1, 1 << 20))))
    if action == "priority":
        return frame(h2.PRIORITY, 0, sid, b"\0\0\0\0\x10")
    return frame(h2.GOAWAY, 0, 0, struct.pack(">II", 0, 0))


@st.composite
def connection_bytes(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Mostly what a client would send, with arbitrary frames and corrupted bytes mixed in, cut anywhere."""
    odd_starts = [h2.PREFACE, b"", b"GET / HTTP/1.1\r\n"]
    start = draw(st.sampled_from([h2.PREFACE + frame(h2.SETTINGS, 0, 0)] * 30 + odd_starts))
    next_stream = [1]
    pieces = []
    for _ in range(draw(st.integers(0, 25))):
        odd = draw(st.integers(0, 31)) == 0  # one frame in 32 is arbitrary
        pieces.append(draw(frames_strategy() if odd else plausible_frames(next_stream)))
    data = bytearray(start + b"".join(pieces))
    corruptions = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=1)
    for position, value in draw(st.sampled_from([[]] * 4) | corruptions):  # a corrupted byte in some
        if len(data) > len(h2.PREFACE) + 9:
            data[len(h2.PREFACE) + 9 + position % (len(data) - len(h2.PREFACE) - 9)] = value
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=6))
    return bytes(data), sorted({0, *cuts, len(data)})


def _goaway_first(data: bytes) -> bool:
    """A well-formed GOAWAY is the client's first frame after its SETTINGS and PINGs, before any stream."""
    for kind, _, sid, payload in parse_frames(data[len(h2.PREFACE) :]):
        if kind == h2.GOAWAY:
            return sid == 0 and len(payload) >= 8
        if kind not in (h2.SETTINGS, h2.PING):
            return False
    return False


@settings(max_examples=EXAMPLES or 1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connection_bytes(), st.lists(st.booleans(), max_size=8))
def test_arbitrary_frames_keep_the_invariants(case: tuple[bytes, list[int]], later: list[bool]) -> None:
    data, points = case
    ledger = Ledger()
    server = h2.Server({PATH: lambda _headers, responder: ChaosCall(ledger, responder)})
    connection = h2.Connection(server)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    received = 0
    for start, end in itertools.pairwise(points):
        connection.data_received(data[start:end])  # must not raise
        received += end - start
        assert not connection.out or connection.closed, "queued output was not written"
        held = len(connection.buf) + sum(len(s.inbox) for s in connection.streams.values())
        assert held <= received
        if connection.header_block is not None:
            assert len(connection.header_block[2]) <= h2.MAX_HEADER_BLOCK
        for call in ledger.calls.values():
            check_call(call, lost=False)
    # Calls that answer later do so now (some of them), from outside data_received.
    for (call_id, responder), finish in zip(list(ledger.responders.items()), later, strict=False):
        if responder.open:
            responder.send(b"late")
            if finish:
                ledger.calls[call_id].append("finish")
                responder.finish()
        responder.finish() if not responder.open else None  # a no-op once ended
    connection.connection_lost(None)
    for call in ledger.calls.values():
        check_call(call, lost=True)
    check_output(bytes(transport.data))
    assert not connection.streams
    output = parse_frames(bytes(transport.data))
    codes = [int.from_bytes(p[4:8], "big") for kind, _, _, p in output if kind == h2.GOAWAY]
    event(f"GOAWAY {codes[-1]}" if codes else "no GOAWAY")
    event(f"calls: {min(len(ledger.calls), 3)}")


# -- differential: Tollway's server and h2's, fed the same bytes ----------------------------------


class Reference:
    """A gRPC echo server on h2's server side: the same routes and answers as Tollway's ``EchoCallForDiff``.

    Answers wait for the client's flow-control windows, and the trailers for the answers.
    """

    def __init__(self) -> None:
        # With h2's checks of request headers (RFC 9113 §8.2, §8.3), as Tollway's server makes them.
        config = H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True)
        self.conn = H2Connection(config)
        self.conn.local_settings.max_concurrent_streams = h2.MAX_CONCURRENT_STREAMS
        self.conn.initiate_connection()
        self.out = bytearray(self.conn.data_to_send())
        self.inbox: dict[int, bytearray] = {}
        self.pending: dict[int, bytearray] = {}  # answers waiting for window
        self.ending: set[int] = set()  # trailers to send once pending is out
        self.status: dict[int, bytes] = {}
        self.error: H2Error | None = None

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            events = self.conn.receive_data(data)
        except H2Error as exc:
            self.error = exc
            self.out += self.conn.data_to_send()
            return
        for received in events:
            with contextlib.suppress(H2Error):  # a stream the client closed meanwhile: nothing to answer
                self._event(received)
        self._send_pending()
        self.out += self.conn.data_to_send()

    def _event(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            path = next((v for k, v in event.headers if k == b":path"), None)  # the first, as Tollway routes
            if path != PATH.encode():
                self.conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                                         (b"grpc-status", b"12")], end_stream=True)
            else:
                self.inbox[event.stream_id] = bytearray()
        elif isinstance(event, DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            inbox = self.inbox.get(event.stream_id)
            if inbox is None:
                return
            inbox += event.data
            while len(inbox) >= 5:
                size = int.from_bytes(inbox[1:5], "big")
                if inbox[0] or size > h2.MAX_MESSAGE:  # as Tollway's server: INTERNAL, from the prefix alone
                    self._fail(event.stream_id)
                    return
                if len(inbox) < 5 + size:
                    break
                message = bytes(inbox[5 : 5 + size])
                del inbox[: 5 + size]
                if event.stream_id not in self.pending:
                    self.conn.send_headers(event.stream_id, [(b":status", b"200"),
                                                             (b"content-type", b"application/grpc")])
                    self.pending[event.stream_id] = bytearray()
                self.pending[event.stream_id] += grpc_message(message)
        elif isinstance(event, StreamEnded) and event.stream_id in self.inbox:
            if event.stream_id not in self.pending or self.inbox[event.stream_id]:
                self._fail(event.stream_id)  # no request message, or half of one: as Tollway's server, INTERNAL
                return
            self.ending.add(event.stream_id)
            del self.inbox[event.stream_id]
        elif isinstance(event, StreamReset):
            self.inbox.pop(event.stream_id, None)
            self.pending.pop(event.stream_id, None)
            self.ending.discard(event.stream_id)

    def _fail(self, sid: int) -> None:
        if sid not in self.pending:
            self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                         (b"grpc-status", b"13")], end_stream=True)
        else:
            self.pending[sid] += b""
            self.ending.add(sid)
            self.status[sid] = b"13"
        del self.inbox[sid]

    def _send_pending(self) -> None:
        for sid, data in list(self.pending.items()):
            try:
                while data:
                    size = min(len(data), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                    if size <= 0:
                        break
                    self.conn.send_data(sid, bytes(data[:size]))
                    del data[:size]
                if not data and sid in self.ending:
                    self.conn.send_headers(sid, [(b"grpc-status", self.status.pop(sid, b"0"))], end_stream=True)
                    self.ending.discard(sid)
                    del self.pending[sid]
            except H2Error:
                self.pending.pop(sid, None)


class EchoCallForDiff:
    def message(self, data: bytes) -> list[bytes]:
        return [data]

    def end(self) -> tuple[int, str] | None:
        return 0, ""

    def reset(self) -> None:
        pass


class Tollway:
    def __init__(self) -> None:
        self.connection = h2.Connection(h2.Server({PATH: lambda _h, _r: EchoCallForDiff()}))
        self.transport = FakeTransport()
        self.connection.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        self.connection.data_received(data)

    @property
    def out(self) -> bytes:
        return bytes(self.transport.data)


@dataclass(frozen=True)
class Outcome:
    connection_error: int | None  # the GOAWAY error code, None when no error GOAWAY
    streams: dict[int, str]  # "served:<status>:<data>", "reset:<code>" or "open"


def outcome(data: bytes) -> Outcome:
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 2**32  # whatever table size the input's SETTINGS allowed
    error, streams, bodies, status = None, {}, {}, {}
    for kind, flags, sid, payload in parse_frames(data):
        if kind == h2.GOAWAY and int.from_bytes(payload[4:8], "big"):
            error = int.from_bytes(payload[4:8], "big")
        elif kind == h2.RST_STREAM and sid not in streams:
            streams[sid] = f"reset:{int.from_bytes(payload, 'big')}"
        elif kind == h2.HEADERS:
            block = payload
            if flags & h2.PADDED:
                block = block[1 : len(block) - block[0]]
            if flags & h2.PRIORITY_FLAG:
                block = block[5:]
            headers = dict(decoder.decode(block, raw=True))
            status[sid] = headers.get(b"grpc-status", status.get(sid, b"-")).decode()
            if flags & h2.END_STREAM:
                streams.setdefault(sid, f"served:{status[sid]}:{bodies.get(sid, b'').hex()}")
        elif kind == h2.DATA:
            bodies[sid] = bodies.get(sid, b"") + payload
            if flags & h2.END_STREAM:
                streams.setdefault(sid, f"served:-:{bodies[sid].hex()}")
    return Outcome(error, streams)


# Client actions: each is a function of the h2 client (and hypothesis' draws).
Action = Callable[[H2Connection], None]


@st.composite
def client_actions(draw: st.DrawFn) -> list[tuple[str, tuple[object, ...]]]:
    actions = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["open", "open", "data", "data", "end", "reset", "ping", "settings", "window",
                                     "raw", "corrupt"]))
        stream = draw(st.sampled_from([1, 3, 5, 7]))
        if kind == "open":
            actions.append((kind, (stream, draw(st.sampled_from([PATH, PATH, "/unknown.Service/Method"])),
                                   draw(st.booleans()))))
        elif kind == "data":
            actions.append((kind, (stream, draw(st.binary(max_size=30)), draw(st.booleans()))))
        elif kind in ("end", "reset"):
            actions.append((kind, (stream,)))
        elif kind == "ping":
            actions.append((kind, (draw(st.binary(min_size=8, max_size=8)),)))
        elif kind == "settings":
            actions.append((kind, (draw(st.sampled_from([0, 1, 65535, 1 << 20])),)))
        elif kind == "window":
            actions.append((kind, (draw(st.sampled_from([0, 1, 3])), draw(st.integers(1, 1 << 20)))))
        elif kind == "raw":
            actions.append((kind, (draw(frames_strategy()),)))
        else:
            actions.append((kind, (draw(st.integers(0, 10**6)), draw(st.integers(0, 255)))))
    return actions


def client_bytes(actions: list[tuple[str, tuple[object, ...]]]) -> tuple[bytes, bool]:
    """The bytes an h2 client sends for ``actions`` (raw frames spliced in); whether any were raw or corrupted."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    out = bytearray(client.data_to_send())
    mutated = False
    for kind, args in actions:
        try:
            if kind == "open":
                sid, path, end = args
                if sid <= client.highest_outbound_stream_id:
                    continue  # h2 would refuse after HPACK-encoding the block, leaving our tables apart
                client.send_headers(sid, [(k, v if k != b":path" else path.encode()) for k, v in REQUEST],
                                    end_stream=end)
            elif kind == "data":
                sid, message, end = args
                client.send_data(sid, grpc_message(message), end_stream=end)
            elif kind == "end":
                client.end_stream(args[0])
            elif kind == "reset":
                client.reset_stream(args[0])
            elif kind == "ping":
                client.ping(args[0])
            elif kind == "settings":
                client.update_settings({4: args[0]})
            elif kind == "window":
                client.increment_flow_control_window(args[1], stream_id=args[0] or None)
            elif kind == "raw":
                client_data = client.data_to_send()
                out += client_data + args[0]
                mutated = True
                continue
            elif kind == "corrupt" and len(out) > len(h2.PREFACE):
                position, value = args
                index = len(h2.PREFACE) + position % (len(out) - len(h2.PREFACE))
                out[index] = value
                mutated = True
        except (H2Error, KeyError):
            pass  # the client refuses an action in this state (KeyError: a stream it does not know): skip it
        out += client.data_to_send()
    return bytes(out), mutated


def frame_by_frame(data: bytes) -> list[bytes]:
    """The preface, then each frame alone (a truncated last frame as it is): how the reference is fed, so
    that, like Tollway's server, it answers each frame before it sees the next."""
    pieces, pos = [data[: len(h2.PREFACE)]], len(h2.PREFACE)
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big") if pos + 3 <= len(data) else 0
        pieces.append(data[pos : pos + 9 + length])
        pos += 9 + length
    return pieces


@dataclass
class Case:
    data: bytes
    mutated: bool  # raw frames or corrupted bytes in the input
    ours: Tollway
    reference: Reference
    mine: Outcome
    theirs: Outcome


# Where Tollway's server and h2's legitimately differ: (why, does this case show it?).
KNOWN_DIFFERENCES: list[tuple[str, Callable[[Case], bool]]] = [
    (
        "a frame longer than our MAX_FRAME_SIZE is refused from its header; h2 buffers the whole frame first,"
        " so on an input that ends inside it h2 has not decided yet",
        lambda c: c.mine.connection_error == h2.FRAME_SIZE_ERROR and c.reference.error is None,
    ),
    (
        "h2 refuses some frames from their 9-byte header alone (e.g. SETTINGS on a stream); Tollway's server"
        " judges a frame once all of it has arrived: on an input that ends inside such a frame it has not yet",
        lambda c: c.mine.connection_error is None and bool(c.ours.connection.buf) and c.reference.error is not None,
    ),
    (
        "RFC 9113 §3.4: the client preface must be followed by SETTINGS (else PROTOCOL_ERROR); h2 does not check",
        lambda c: c.mine.connection_error == h2.PROTOCOL_ERROR and c.reference.error is None
        and c.data[len(h2.PREFACE) + 3 : len(h2.PREFACE) + 4] != bytes((h2.SETTINGS,)),
    ),
    (
        "after the client's GOAWAY h2 refuses every frame; RFC 9113 §6.8 lets the client finish its open"
        " streams, and Tollway's server lets it",
        lambda c: "in state ConnectionState.CLOSED" in str(c.reference.error) and c.mine.connection_error is None,
    ),
    (
        "frame type 0xA is ALTSVC (RFC 7838), which h2 parses and a short one is FRAME_SIZE_ERROR; a server"
        " ignores ALTSVC from a client, and Tollway's server ignores every extension frame type",
        lambda c: type(c.reference.error).__name__ == "FrameDataMissingError" and c.mine.connection_error is None,
    ),
]


def touches_idle_stream(data: bytes) -> bool:
    """Whether a DATA, RST_STREAM or WINDOW_UPDATE frame names a stream never opened (idle)."""
    highest = 0
    for kind, _, sid, _ in parse_frames(data[len(h2.PREFACE) :]):
        if kind == h2.HEADERS:
            highest = max(highest, sid)
        elif kind in (h2.DATA, h2.RST_STREAM, h2.WINDOW_UPDATE) and sid and (sid > highest or not sid & 1):
            return True  # (even ids are the server's, and Tollway's server never opens one)
    return False


def stray_continuation(data: bytes) -> bool:
    """Whether a CONTINUATION frame follows anything but HEADERS or CONTINUATION without END_HEADERS."""
    open_block = False
    for kind, flags, _, _ in parse_frames(data[len(h2.PREFACE) :]):
        if kind == h2.CONTINUATION and not open_block:
            return True
        open_block = kind in (h2.HEADERS, h2.CONTINUATION) and not flags & h2.END_HEADERS
    return False


KNOWN_DIFFERENCES += [
    (
        "RFC 9113 §6.10: a CONTINUATION that follows no open header block is PROTOCOL_ERROR; on a stream the"
        " client reset h2 answers RST_STREAM(STREAM_CLOSED) first (Tollway keeps no closed-stream state)",
        lambda c: c.mine.connection_error == h2.PROTOCOL_ERROR and c.reference.error is None
        and stray_continuation(c.data),
    ),
    (
        "RFC 9113 §5.1: DATA, RST_STREAM or WINDOW_UPDATE on an idle stream is PROTOCOL_ERROR; h2 ignores them"
        " once the connection has streams",
        lambda c: c.mine.connection_error == h2.PROTOCOL_ERROR and c.reference.error is None
        and touches_idle_stream(c.data),
    ),
    (
        "Tollway's server keeps no state for closed streams: their DATA is dropped (and counted for the"
        " connection window); h2 remembers how each closed and answers RST_STREAM(STREAM_CLOSED)",
        lambda c: c.mine.connection_error is None and c.theirs.connection_error is None
        and {sid: r for sid, r in c.theirs.streams.items() if r != f"reset:{h2.STREAM_CLOSED}"} == c.mine.streams,
    ),
    (
        "RFC 9113 §4.3: a field block that does not decode is COMPRESSION_ERROR; h2 says PROTOCOL_ERROR",
        lambda c: c.mine.connection_error == h2.COMPRESSION_ERROR and "decoding header block" in str(c.reference.error),
    ),
    (
        "HEADERS with END_STREAM on a stream id at or below the highest seen is taken for trailers racing our"
        " RST_STREAM(NO_ERROR) after an early answer (Tollway keeps no closed-stream state) and ignored; h2"
        " remembers its closed streams and refuses a reused id (any reuse without END_STREAM we refuse too)",
        lambda c: c.mine.connection_error is None
        and type(c.reference.error).__name__ in ("StreamIDTooLowError", "StreamClosedError"),
    ),
    (
        "RFC 9113 §6.8: the client's GOAWAY before any stream: Tollway's server closes the connection then"
        " (nothing can come that it must answer) and never reads what follows; h2 reads on, and may find an"
        " error there",
        lambda c: c.mine.connection_error is None and not c.mine.streams and c.theirs.connection_error is not None
        and _goaway_first(c.data),
    ),
    (
        "RFC 9113 §8.4: a client cannot push, a PUSH_PROMISE from one is PROTOCOL_ERROR; h2's server ignores it",
        lambda c: c.mine.connection_error == h2.PROTOCOL_ERROR and c.reference.error is None
        and any(kind == h2.PUSH_PROMISE for kind, *_ in parse_frames(c.data[len(h2.PREFACE) :])),
    ),
    (
        "a padded frame whose padding fills all of it after the Pad Length byte: RFC 9113 §6.1 refuses padding"
        " as long as the payload or longer, so it is valid; h2 (hyperframe) refuses it",
        lambda c: "invalid padding" in str(c.reference.error) and c.mine.connection_error is None,
    ),
    (
        "RFC 9113 §6.9: WINDOW_UPDATE's reserved bit must be ignored; h2 refuses a frame that sets it",
        lambda c: "non-compliant data" in str(c.reference.error) and c.mine.connection_error is None,
    ),
    (
        "Tollway's flood limits (empty frames, CONTINUATION count, control frames, SETTINGS entries, PRIORITY and"
        " WINDOW_UPDATE floods, rapid reset) end the connection with ENHANCE_YOUR_CALM; h2 has none of them",
        lambda c: c.mine.connection_error == h2.ENHANCE_YOUR_CALM and c.reference.error is None,
    ),
    (
        "RFC 9113 §6.5.3: SETTINGS parameters are processed in order, so a bad value is refused even if the"
        " same frame repeats the parameter with a good one; h2 (hyperframe) keeps only the last (a bad"
        " initial window size is a FLOW_CONTROL_ERROR, the rest PROTOCOL_ERROR)",
        lambda c: c.mine.connection_error in (h2.PROTOCOL_ERROR, h2.FLOW_CONTROL_ERROR) and c.reference.error is None
        and any(kind == h2.SETTINGS and len({p[i : i + 2] for i in range(0, len(p), 6)}) < len(p) // 6
                for kind, _, _, p in parse_frames(c.data[len(h2.PREFACE) :])),
    ),
    (
        "h2 checks a request's content-length against its DATA; gRPC does not use content-length",
        lambda c: "content-length" in str(c.reference.error),
    ),
    (
        "RFC 9113 §8.1.1: a malformed request (or trailers) is a stream error, RST_STREAM(PROTOCOL_ERROR), as"
        " Tollway's server answers it; h2 ends the connection. (h2 also requires :authority, §8.3.1 does not)",
        lambda c: c.mine.connection_error is None and _header_check(c.reference.error)
        and (f"reset:{h2.PROTOCOL_ERROR}" in c.mine.streams.values() or "authority" in str(c.reference.error)),
    ),
]


def _header_check(error: H2Error | None) -> bool:
    """Whether ``error`` is h2's refusal of a header list (its checks live in h2/utilities.py)."""
    traceback = error.__traceback__ if error is not None else None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename.endswith(os.path.join("h2", "utilities.py")):
            return True
        traceback = traceback.tb_next
    return False


def explained(case: Case) -> str | None:
    for reason, applies in KNOWN_DIFFERENCES:
        if applies(case):
            return reason
    return None


def run_both(actions: list[tuple[str, tuple[object, ...]]], pieces: int) -> Case:
    data, mutated = client_bytes(actions)
    ours, reference = Tollway(), Reference()
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        ours.feed(data[i : i + step])
    for piece in frame_by_frame(data):
        reference.feed(piece)
    return Case(data, mutated, ours, reference, outcome(ours.out), outcome(bytes(reference.out)))


@settings(max_examples=EXAMPLES or 1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(client_actions(), st.integers(1, 4))
# Found by this test: the client's SETTINGS corrupted into an initial window size past 2**31 - 1,
# then the same parameter again with a good value (FLOW_CONTROL_ERROR for us, nothing for h2).
@example([("corrupt", (10, 4)), ("end", (1,)), ("end", (1,)), ("corrupt", (15515, 128))], 1)
# And: a CONTINUATION with no header block open, on a stream the client reset (see stray_continuation).
@example([("open", (1, PATH, False)), ("reset", (1,)), ("end", (1,)), ("end", (1,)), ("end", (1,)),
          ("open", (1, PATH, False)), ("open", (1, PATH, False)), ("open", (1, PATH, False)), ("end", (1,)),
          ("open", (3, PATH, False)),
          ("raw", (b"\x00\x00s\t\x00\x00\x00\x00\x01\x00\x07:method\x04POST\x00\x07:scheme\x04http\x00\x05:path"
                   b"\x0f/test.Echo/Echo\x00\n:authority\x07tollway\x00\x0ccontent-type\x10application/grpc\x00\x02te"
                   b"\x08trailers",))], 1)
# And: the client's GOAWAY first, then a frame corrupted into DATA on stream 0 (see _goaway_first).
@example([("raw", (b"\x00\x00\x0c\x07" + b"\x00" * 17,)), ("ping", (b"\x00" * 8,)), ("settings", (0,)),
          ("end", (1,)), ("open", (1, PATH, False)), ("open", (1, PATH, False)), ("corrupt", (699, 0)),
          ("end", (1,)), ("open", (1, PATH, False)), ("open", (1, PATH, False)), ("open", (1, PATH, False))], 4)
def test_same_bytes_same_outcome_as_h2(actions: list[tuple[str, tuple[object, ...]]], pieces: int) -> None:
    case = run_both(actions, pieces)
    mine, theirs, error = case.mine, case.theirs, case.reference.error
    if mine == theirs:
        event("same outcome")
        return
    reason = explained(case)
    event(f"known difference: {reason[:60]}" if reason else "different details, compared by class")
    if reason:
        return
    assert (mine.connection_error is None) == (theirs.connection_error is None), (mine, theirs, error)
    if mine.connection_error is None:
        assert mine.streams == theirs.streams, (mine, theirs)
    elif not case.mutated:
        assert mine.connection_error == theirs.connection_error, (mine, theirs, error)


# -- what the differential fuzz found, kept as plain regression tests ----------------------------

OPEN_1 = frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()) + frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"q"))
OPEN_3 = frame(h2.HEADERS, h2.END_HEADERS, 3, literal_block())


@pytest.mark.parametrize(("frames", "code"), [
    # RFC 8441: ENABLE_CONNECT_PROTOCOL is 0 or 1 (Tollway's server ignored unknown-to-it settings).
    (frame(h2.SETTINGS, 0, 0, struct.pack(">HI", 0x8, 2)), h2.PROTOCOL_ERROR),
    # Bad padding is a connection error on any stream, also one already closed (its DATA was dropped unread).
    (OPEN_1 + frame(h2.DATA, h2.PADDED, 1, b"\x05abc"), h2.PROTOCOL_ERROR),
    # Even stream ids are the server's and Tollway's server opens none: they are idle (were ignored).
    (OPEN_1 + OPEN_3 + frame(h2.WINDOW_UPDATE, 0, 2, struct.pack(">I", 1)), h2.PROTOCOL_ERROR),
    (OPEN_1 + OPEN_3 + frame(h2.RST_STREAM, 0, 2, struct.pack(">I", h2.CANCEL)), h2.PROTOCOL_ERROR),
    # A new request on a stream id already used (was ignored).
    (OPEN_1 + frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()), h2.PROTOCOL_ERROR),
    # Trailers with END_STREAM racing our RST_STREAM(NO_ERROR) after an early answer: ignored.
    (OPEN_1 + frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, literal_block([(b"x", b"y")])), 0),
])
def test_protocol_errors_found_by_the_differential_fuzz(frames: bytes, code: int) -> None:
    server = h2.Server({PATH: lambda _h, _r: EchoCallForDiff()})
    connection = h2.Connection(server)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(h2.PREFACE + frame(h2.SETTINGS, 0, 0) + frames)
    output = parse_frames(bytes(transport.data))
    assert [int.from_bytes(p[4:8], "big") for kind, _, _, p in output if kind == h2.GOAWAY] == ([code] if code else [])
