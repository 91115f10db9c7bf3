"""Each limit of Tollway's HTTP/2 server holds against a peer that pushes it, and well-behaved peers are still served.

The server is driven in process (tests/unit/h2_peer.py): an h2 (python-hyper) client for the
well-behaved side, raw frames for the rest. See the module docstring of ext_proc.server.h2 for
the values and why.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived
from hpack import Encoder

from ext_proc.server import h2
from ext_proc.server.records import RecordWriter
from ext_proc.server.servicer import PROCESS_PATH, ExtProcCall, Service
from tests.unit.h2_peer import (
    REQUEST,
    START,
    Log,
    Peer,
    echo_routes,
    frame,
    grpc_message,
    literal_block,
    parse_frames,
    settings,
)
from tests.unit.test_h2_server import CHAT, REPLY, Running, exchange
from tests.unit.test_h2_server import headers as http_headers


def served(peer: Peer, sid: int) -> list[bytes]:
    """The messages the client got on a stream that ended normally."""
    data = b"".join(e.data for e in peer.events if isinstance(e, DataReceived) and e.stream_id == sid)
    assert any(isinstance(e, StreamEnded) and e.stream_id == sid for e in peer.events), f"stream {sid} did not end"
    messages = []
    while data:
        size = int.from_bytes(data[1:5], "big")
        messages.append(data[5 : 5 + size])
        data = data[5 + size :]
    return messages


def test_well_behaved_client_is_served_and_sees_the_advertised_limits() -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    peer.open(1, b"hello", b"again", end=True)
    assert served(peer, 1) == [b"hello", b"again"]
    remote = peer.client.remote_settings
    assert remote.max_concurrent_streams == h2.MAX_CONCURRENT_STREAMS == 100
    assert remote.initial_window_size == h2.STREAM_WINDOW == 16 << 20
    assert remote.max_frame_size == h2.OUR_MAX_FRAME
    assert remote.max_header_list_size == h2.MAX_HEADER_BLOCK == 64 << 10
    assert peer.client.outbound_flow_control_window == h2.CONNECTION_WINDOW - 20 == (64 << 20) - 20  # 2 x 10 sent
    assert log.of(1) == ["created", "message", "message", "end"]
    assert peer.goaway() is None


# -- MAX_CONCURRENT_STREAMS ----------------------------------------------------------------------


def test_streams_beyond_max_concurrent_streams_are_refused_and_the_connection_keeps_serving() -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    for i in range(h2.MAX_CONCURRENT_STREAMS):
        peer.open(2 * i + 1, b"open")  # each stays open: no END_STREAM
    assert len(peer.connection.streams) == 100
    extra = 2 * h2.MAX_CONCURRENT_STREAMS + 1
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, extra, literal_block())
              + frame(h2.DATA, h2.END_STREAM, extra, grpc_message(b"x")))
    assert peer.resets() == {extra: h2.REFUSED_STREAM}
    assert not log.of(extra)  # never reached a call
    # One stream finishes: a new one is accepted and served.
    peer.client.end_stream(1)
    peer.pump()
    assert served(peer, 1) == [b"open"]
    new = extra + 2
    peer.client.highest_outbound_stream_id = extra  # the raw stream above used its id
    peer.open(new, b"fits", end=True)
    assert served(peer, new) == [b"fits"]
    assert peer.goaway() is None


# -- receive windows -----------------------------------------------------------------------------


def test_a_64_mib_message_passes_through_the_windows_and_one_byte_more_is_refused() -> None:
    big = b"x" * (h2.MAX_MESSAGE - 5)  # with its length prefix: exactly MAX_MESSAGE on the wire...
    sizes: list[int] = []
    log = Log()
    peer = Peer(echo_routes(log, lambda m: sizes.append(len(m)) or [b"ok"]))
    peer.client.send_headers(1, REQUEST)
    payload = grpc_message(big + b"12345")  # ...plus 5: the message itself is MAX_MESSAGE bytes
    sent = 0
    while sent < len(payload):
        window = min(peer.client.local_flow_control_window(1), peer.client.max_outbound_frame_size)
        assert window > 0, "the server stopped giving the window back"
        peer.client.send_data(1, payload[sent : sent + window], end_stream=sent + window >= len(payload))
        sent += window
        peer.pump()
    assert sizes == [h2.MAX_MESSAGE]
    assert served(peer, 1) == [b"ok"]
    # A length prefix one byte over the limit ends the stream before anything is buffered.
    peer.client.send_headers(3, REQUEST)
    peer.client.send_data(3, b"\0" + (h2.MAX_MESSAGE + 1).to_bytes(4, "big") + b"y" * 1000)
    peer.pump()
    (answer,) = [e for e in peer.events if isinstance(e, ResponseReceived) and e.stream_id == 3]  # trailers-only
    assert dict(answer.headers)[b"grpc-status"] == b"13"
    assert 3 not in peer.connection.streams
    assert peer.goaway() is None


def test_interleaved_bodies_with_streams_ending_midway_never_leave_the_peer_without_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Envoy's traffic when ten clients upload at once: ten bodies on one connection, interleaved
    # 64 KiB at a time, two of them longer than a stream window; one stream reset by the peer
    # partway, one answered by us partway while the peer still sends it (its data in flight,
    # dropped). Every byte gives its window back or is counted to: the peer always has window to go
    # on, whichever stream it is (a connection window small enough to be given back many times).
    monkeypatch.setattr(h2, "CONNECTION_WINDOW", 4 << 20)
    monkeypatch.setattr(h2, "HALF_CONNECTION_WINDOW", 2 << 20)
    sizes: list[int] = []
    log = Log()
    peer = Peer(echo_routes(log, lambda m: sizes.append(len(m)) or [b"ok"]))
    client = peer.client
    sids = list(range(1, 21, 2))
    payloads = {sid: grpc_message(bytes([sid]) * (((17 << 20) if sid in (1, 3) else (1 << 20)) - 5)) for sid in sids}
    payloads[7] = grpc_message(b"first") + payloads[7]  # a call exists once a message completes
    sent = dict.fromkeys(sids, 0)
    for sid in sids:
        client.send_headers(sid, REQUEST)
    peer.pump()
    reset, answered = 5, 7
    active = set(sids)
    while active:
        moved = 0
        for sid in sorted(active):
            payload = payloads[sid]
            if sid == reset and sent[sid] >= 512 << 10:
                client.reset_stream(sid)
                active.discard(sid)
                continue
            if sid == answered and sent[sid] >= 512 << 10 and peer.connection.streams.get(sid):
                log.responders[sid].finish()  # our answer: trailers and RST_STREAM(NO_ERROR) on their way...
                client.send_data(sid, payload[sent[sid] : sent[sid] + (256 << 10)])  # ...as more data comes
                sent[sid] += 256 << 10
                moved += 1
                continue
            if client.streams[sid].closed:
                active.discard(sid)
                continue
            size = min(64 << 10, len(payload) - sent[sid], client.local_flow_control_window(sid))
            if size <= 0:
                continue
            client.send_data(sid, payload[sent[sid] : sent[sid] + size], end_stream=sent[sid] + size == len(payload))
            sent[sid] += size
            moved += size
            if sent[sid] == len(payload):
                active.discard(sid)
        peer.pump()
        assert moved or not active, f"the peer waits for window: {client.outbound_flow_control_window}, {sent}"
    assert sorted(sizes) == [5] + [(1 << 20) - 5] * 6 + [(17 << 20) - 5] * 2  # not the reset one, 7: its first
    for sid in sids:
        if sid not in (reset, answered):
            assert served(peer, sid) == [b"ok"]
    assert not log.of(reset) and "reset" not in log.of(answered)  # 5 never completed a message: no call
    assert client.outbound_flow_control_window + peer.connection.unacked == h2.CONNECTION_WINDOW
    assert peer.connection.unacked < h2.HALF_CONNECTION_WINDOW
    assert peer.goaway() is None and not peer.connection.streams


def test_a_client_that_does_not_read_answers_is_held_to_its_stream_window() -> None:
    # The client grants no window for our answers, and keeps sending requests on its stream.
    log = Log()
    peer = Peer(echo_routes(log), client_settings={4: 0})  # INITIAL_WINDOW_SIZE 0
    peer.pump()
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()))
    message = grpc_message(b"m" * (1 << 20))
    chunk = frame(h2.DATA, 0, 1, message[: h2.OUR_MAX_FRAME]) + frame(h2.DATA, 0, 1, message[h2.OUR_MAX_FRAME :])
    stream = peer.connection.streams[1]
    for _ in range(16):  # 16 MiB + 80 bytes: more than the stream window
        peer.send(chunk)
        if peer.goaway() is not None:
            break
    # The first message was answered into the outbox (no window); the rest wait, unanswered,
    # and the window is not given back: the server held at most one window of requests.
    assert log.of(1) == ["created", "message"]
    assert len(stream.inbox) <= h2.STREAM_WINDOW
    assert peer.goaway() == h2.FLOW_CONTROL_ERROR
    assert not [f for f in peer.frames() if f[0] == h2.WINDOW_UPDATE and f[2] == 1]


def test_held_requests_are_answered_in_order_once_the_client_reads() -> None:
    log = Log()
    peer = Peer(echo_routes(log), client_settings={4: 0})
    peer.pump()
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()))
    peer.send(frame(h2.DATA, h2.END_STREAM, 1, b"".join(grpc_message(b"%d" % i) for i in range(5))))
    assert log.of(1) == ["created", "message"]  # held behind the first answer
    peer.send(frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20)))
    data = b"".join(p for kind, _, sid, p in peer.frames() if kind == h2.DATA and sid == 1)
    assert data == b"".join(grpc_message(b"%d" % i) for i in range(5))
    assert log.of(1) == ["created"] + ["message"] * 5 + ["end"]
    assert 1 not in peer.connection.streams


def test_unfinished_messages_are_bounded_per_connection_by_back_pressure_then_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Scaled down (a 4 MiB connection window and bound instead of 64 and 128 MiB): six uploads of
    # 1.5 MiB messages (9 MiB), interleaved, by a client that honours flow control as Envoy does.
    monkeypatch.setattr(h2, "CONNECTION_WINDOW", 4 << 20)
    monkeypatch.setattr(h2, "HALF_CONNECTION_WINDOW", 2 << 20)
    sizes: list[int] = []
    log = Log()
    peer = Peer(echo_routes(log, lambda m: sizes.append(len(m)) or [b"ok"]))
    peer.server.max_unfinished = 4 << 20
    payload = grpc_message(b"x" * (3 << 19))
    sent = dict.fromkeys(range(1, 13, 2), 0)
    for sid in sent:
        peer.client.send_headers(sid, REQUEST)
    peer.pump()
    held = stalled = 0
    while sent:
        moved = False
        for sid in list(sent):
            if peer.client.streams[sid].closed or any(isinstance(e, ResponseReceived) and e.stream_id == sid
                                                      for e in peer.events):
                del sent[sid]  # answered (refused) or reset: stop sending
                continue
            window = min(peer.client.local_flow_control_window(sid), 256 << 10, len(payload) - sent[sid])
            if window > 0:
                end = sent[sid] + window == len(payload)
                peer.client.send_data(sid, payload[sent[sid] : sent[sid] + window], end_stream=end)
                sent[sid] += window
                moved = True
                if end:
                    del sent[sid]
            peer.pump()
            held = max(held, sum(len(s.inbox) for s in peer.connection.streams.values()))
        if not moved:
            stalled += 1
            assert stalled < 3, "no stream can move: the connection is stuck"
    # The connection never held more than its bound plus one connection window.
    assert held <= (4 << 20) + (4 << 20)
    statuses = {e.stream_id: dict(e.headers).get(b"grpc-status") for e in peer.events
                if isinstance(e, ResponseReceived | TrailersReceived)}
    refused = sorted(sid for sid, status in statuses.items() if status == b"8")
    # The window stopped at 4 MiB held; out of window at 6 MiB, none of the six messages could
    # complete: those closest to completion (the oldest on a tie) were kept while they fit under
    # the bound, the others refused as gRPC refuses a message over its limit.
    assert refused == [7, 9, 11]
    assert sizes == [3 << 19] * 3 and all(statuses[sid] == b"0" for sid in (1, 3, 5))
    assert peer.goaway() is None and not peer.connection.streams
    assert h2.MAX_UNFINISHED == 2 * h2.MAX_MESSAGE  # two of the largest messages at once, as --body-memory's default


def test_the_connection_window_waits_while_unfinished_messages_fill_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2, "CONNECTION_WINDOW", 4 << 20)
    monkeypatch.setattr(h2, "HALF_CONNECTION_WINDOW", 2 << 20)
    sizes: list[int] = []
    peer = Peer(echo_routes(Log(), lambda m: sizes.append(len(m)) or [b"ok"]))
    peer.server.max_unfinished = 1 << 20
    payload = grpc_message(b"x" * ((7 << 19) - 5))  # 3.5 MiB on the wire
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()))
    for offset in range(0, 3 << 20, 1 << 19):
        peer.send(frame(h2.DATA, 0, 1, payload[offset : offset + (1 << 19)]))

    def window_updates() -> list[int]:
        return [int.from_bytes(p, "big") for kind, _, sid, p in peer.frames() if kind == h2.WINDOW_UPDATE and not sid]

    assert window_updates() == [(4 << 20) - 65535]  # only connection_made's: 3 MiB held, over the bound
    peer.send(frame(h2.DATA, h2.END_STREAM, 1, payload[3 << 20 :]))
    assert sizes == [len(payload) - 5]  # the message completed: the window goes back, nobody refused
    assert window_updates() == [(4 << 20) - 65535, 7 << 19]
    assert peer.goaway() is None


def test_a_client_past_its_window_while_messages_are_unfinished_is_a_flow_control_error() -> None:
    # The audit's peer: six 64 MiB uploads that ignore our window (it is not given back while
    # unfinished messages fill the bound), interleaved in 1 MiB frames.
    peer = Peer(echo_routes(Log()))
    for sid in range(1, 13, 2):
        peer.send(frame(h2.HEADERS, h2.END_HEADERS, sid, literal_block())
                  + frame(h2.DATA, 0, sid, b"\0" + struct.pack(">I", h2.MAX_MESSAGE)))
    chunk = b"x" * (1024 * 1024 - 16)
    held = 0
    for _ in range(48):
        for sid in range(1, 13, 2):
            peer.send(frame(h2.DATA, 0, sid, chunk))
        peer.transport.data.clear()
        held = max(held, sum(len(s.inbox) for s in peer.connection.streams.values()))
        if peer.connection.closed:
            break
    assert peer.connection.closed and held <= h2.MAX_UNFINISHED + h2.CONNECTION_WINDOW


# -- silent, stalled and dead peers ---------------------------------------------------------------


def test_silent_and_stalled_connections_are_closed_and_live_idle_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h2, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(h2, "KEEPALIVE_TIME", 0.3)
    monkeypatch.setattr(h2, "KEEPALIVE_TIMEOUT", 0.3)
    running = Running(tmp_path / "records.jsonl")
    log = Log()
    running.server.routes.update(echo_routes(log, lambda m: []))  # its calls answer later: the stream stays open
    socks = []
    try:
        for _ in range(5):  # half a preface, then nothing
            socks.append(socket.create_connection(("127.0.0.1", running.port)))
            socks[-1].sendall(h2.PREFACE[:10])
        partial = socket.create_connection(("127.0.0.1", running.port))  # a 1 MiB DATA frame, one byte short
        partial.sendall(START + (1 << 20).to_bytes(3, "big") + b"\0\0\0\0\0\0" + b"y" * ((1 << 20) - 1))
        dead = socket.create_connection(("127.0.0.1", running.port))  # a stream with a call, then silence
        dead.sendall(START + frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block())
                     + frame(h2.DATA, 0, 1, grpc_message(b"hi")))
        socks += [partial, dead]
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:  # answers our PINGs
            check = health_pb2_grpc.HealthStub(ch).Check
            check(health_pb2.HealthCheckRequest())
            deadline = time.monotonic() + 5
            while len(running.server.connections) > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # a few more keepalive rounds
            (kept,) = running.server.connections
            sock = kept.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)  # inherited from the listener
            assert check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            assert running.server.connections == {kept}
        assert log.of(1) == ["created", "message", "reset"]  # the dead peer's call was reset
    finally:
        for s in socks:
            s.close()
        running.stop()


def test_a_closed_connection_whose_peer_stopped_reading_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A graceful close waits for what is queued to be written: a peer that never reads again would
    # keep the connection and its buffered answer for good (the keepalive stops at the close).
    monkeypatch.setattr(h2, "KEEPALIVE_TIME", 0.3)
    monkeypatch.setattr(h2, "KEEPALIVE_TIMEOUT", 0.3)
    running = Running(tmp_path / "records.jsonl")
    running.server.routes.update(echo_routes(Log()))
    sock = socket.create_connection(("127.0.0.1", running.port))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        big = grpc_message(b"y" * (8 << 20))
        sock.sendall(h2.PREFACE + settings((4, 2**31 - 1))
                     + frame(h2.WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65535).to_bytes(4, "big"))
                     + frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()))
        for at in range(0, len(big), 1 << 20):
            sock.sendall(frame(h2.DATA, h2.END_STREAM if at + (1 << 20) >= len(big) else 0, 1,
                               big[at:at + (1 << 20)]))
        sock.sendall(frame(h2.GOAWAY, 0, 0, bytes(8)))  # then never reads again
        deadline = time.monotonic() + 5
        while not running.server.connections and time.monotonic() < deadline:
            time.sleep(0.05)  # (accepted)
        time.sleep(1)  # answered and closed, the answer stuck in the buffer
        while running.server.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running.server.connections, [(c.closed, c.transport.get_write_buffer_size())
                                                for c in running.server.connections]
    finally:
        sock.close()
        running.stop()


# -- header blocks and CONTINUATION --------------------------------------------------------------


def test_a_header_block_over_64_kib_is_refused() -> None:
    peer = Peer(echo_routes(Log()))
    block = literal_block([*REQUEST, (b"x-big", b"v" * h2.MAX_HEADER_BLOCK)])
    peer.send(frame(h2.HEADERS, 0, 1, block[:30000]) + frame(h2.CONTINUATION, 0, 1, block[30000:60000])
              + frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[60000:]))
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM and peer.transport.closed


def test_a_header_list_that_decodes_to_over_64_kib_is_refused() -> None:
    # A small block: one 4 KiB header added to the HPACK table, then referenced 20 times.
    encoder = Encoder()
    block = encoder.encode([*REQUEST, *[("x-ref", "v" * 4000)] * 20])
    assert len(block) < 8000
    peer = Peer(echo_routes(Log()))
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, block))
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_more_than_8_continuation_frames_are_refused_however_small() -> None:
    block = literal_block()
    peer = Peer(echo_routes(Log()))
    flood = frame(h2.HEADERS, 0, 1, block[:10]) + b"".join(
        frame(h2.CONTINUATION, 0, 1, block[10 + i : 11 + i]) for i in range(h2.MAX_CONTINUATIONS + 1))
    peer.send(flood)
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_a_large_header_block_in_8_continuations_is_served() -> None:
    log = Log()
    seen: list[list[tuple[bytes, bytes]]] = []
    routes = echo_routes(log)
    factory = routes["/test.Echo/Echo"]
    routes["/test.Echo/Echo"] = lambda headers, responder: seen.append(headers) or factory(headers, responder)
    peer = Peer(routes)
    block = literal_block([*REQUEST, (b"x-metadata", b"v" * 60000)])
    pieces = [block[i : i + 7000] for i in range(0, len(block), 7000)]
    assert len(pieces) == 1 + h2.MAX_CONTINUATIONS
    wire = frame(h2.HEADERS, 0, 1, pieces[0]) + b"".join(
        frame(h2.CONTINUATION, h2.END_HEADERS if i == len(pieces) - 1 else 0, 1, p) for i, p in enumerate(pieces) if i)
    peer.send(wire + frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"hi")))
    assert peer.goaway() is None
    assert (b"x-metadata", b"v" * 60000) in seen[0]
    assert log.of(1) == ["created", "message", "end"]


# -- empty frames, control frames, SETTINGS, PRIORITY, WINDOW_UPDATE -----------------------------


def test_consecutive_empty_frames_are_refused() -> None:
    peer = Peer(echo_routes(Log()))
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()))
    peer.send(frame(h2.DATA, 0, 1) + frame(h2.DATA, 0, 1))
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_an_empty_data_frame_between_others_and_an_empty_end_stream_are_fine() -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()) + frame(h2.DATA, 0, 1)
              + frame(h2.DATA, 0, 1, grpc_message(b"a")) + frame(h2.DATA, 0, 1) + frame(h2.DATA, h2.END_STREAM, 1))
    assert peer.goaway() is None and log.of(1) == ["created", "message", "end"]


def test_pings_answered_up_to_the_control_frame_cap() -> None:
    peer = Peer(echo_routes(Log()))
    peer.send(b"".join(frame(h2.PING, 0, 0, b"%08d" % i) for i in range(h2.MAX_QUEUED_CONTROL - 1)))
    acks = [f for f in peer.frames() if f[0] == h2.PING and f[1] & h2.ACK]
    assert len(acks) == h2.MAX_QUEUED_CONTROL - 1 and peer.goaway() is None
    peer.send(b"".join(frame(h2.PING, 0, 0, b"%08d" % i) for i in range(h2.MAX_QUEUED_CONTROL + 1)))
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_acknowledgements_queued_while_the_client_does_not_read_are_capped() -> None:
    peer = Peer(echo_routes(Log()))
    peer.connection.pause_writing()  # the transport's buffer is above its high-water mark
    assert not peer.transport.reading
    half = b"".join(frame(h2.SETTINGS, 0, 0) for _ in range(h2.MAX_QUEUED_CONTROL // 2 + 1))
    peer.send(half)  # (a transport delivers nothing while reading is paused; this peer forces it)
    assert peer.goaway() is None
    peer.send(half)
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_the_control_frame_count_starts_again_once_the_client_reads() -> None:
    peer = Peer(echo_routes(Log()))
    half = b"".join(frame(h2.SETTINGS, 0, 0) for _ in range(h2.MAX_QUEUED_CONTROL // 2 + 1))
    peer.connection.pause_writing()
    peer.send(half)
    peer.connection.resume_writing()
    assert peer.transport.reading
    peer.send(half)
    assert peer.goaway() is None


def test_a_settings_frame_with_more_than_32_entries_is_refused() -> None:
    peer = Peer(echo_routes(Log()))
    peer.send(settings(*[(0x9, 0)] * h2.MAX_SETTINGS_ENTRIES))
    assert peer.goaway() is None
    peer.send(settings(*[(0x9, 0)] * (h2.MAX_SETTINGS_ENTRIES + 1)))
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_priority_frames_are_capped_per_stream_opened() -> None:
    peer = Peer(echo_routes(Log()))
    priority = frame(h2.PRIORITY, 0, 1, b"\0\0\0\0\x10")
    peer.send(priority * h2.PRIORITY_PER_STREAM)
    assert peer.goaway() is None
    peer.send(priority)
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_window_updates_are_capped_by_the_data_we_sent() -> None:
    peer = Peer(echo_routes(Log()))
    update = frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
    peer.send(update * h2.WINDOW_UPDATE_ALLOWANCE)
    assert peer.goaway() is None
    peer.send(update)
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM


def test_a_frame_over_our_max_frame_size_is_refused() -> None:
    peer = Peer(echo_routes(Log()))
    peer.send(frame(h2.DATA, 0, 1, b"x" * (h2.OUR_MAX_FRAME + 1))[:100])
    assert peer.goaway() == h2.FRAME_SIZE_ERROR


# -- rapid reset ---------------------------------------------------------------------------------


def test_a_reset_flood_ends_in_goaway_and_creates_no_call() -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    flood = b"".join(frame(h2.HEADERS, h2.END_HEADERS, sid, literal_block())
                     + frame(h2.RST_STREAM, 0, sid, struct.pack(">I", h2.CANCEL)) for sid in range(1, 20001, 2))
    peer.send(flood)
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM and peer.transport.closed
    assert peer.connection.opened_streams == h2.RAPID_RESET_MIN_STREAMS
    assert log.events == []


class Withheld:
    """An ExtProcCall whose answers never come (as if it were still asking Redis): resets find them outstanding."""

    def __init__(self, call: ExtProcCall) -> None:
        self.call = call

    def message(self, data: bytes) -> list[bytes]:
        self.call.message(data)
        return []

    def end(self) -> tuple[int, str] | None:
        return None

    def reset(self) -> None:
        self.call.reset()


PROCESS_BLOCK = literal_block([(b":method", b"POST"), (b":scheme", b"http"), (b":path", PROCESS_PATH.encode()),
                               (b"content-type", b"application/grpc")])


def ext_proc_peer(tmp_path: Path, *, withheld: bool = False) -> tuple[Peer, RecordWriter]:
    writer = RecordWriter(str(tmp_path / "records.jsonl"))
    if withheld:
        return Peer({PROCESS_PATH: lambda _h, _r: Withheld(ExtProcCall(Service(writer)))}), writer
    return Peer({PROCESS_PATH: lambda _h, _r: ExtProcCall(Service(writer))}), writer


def written(tmp_path: Path, writer: RecordWriter) -> list[dict]:
    writer.flush()
    path = tmp_path / "records.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def reset_flood(peer: Peer, messages: list[bytes], monkeypatch: pytest.MonkeyPatch, *, streams: int,
                lifetime_s: float = 0.001) -> None:
    """HEADERS and ``messages``, then RST_STREAM (Envoy's INTERNAL_ERROR), ``lifetime_s`` later, on each stream."""
    clock = [1000.0]
    monkeypatch.setattr(h2.time, "monotonic", lambda: clock[0])
    for sid in range(1, 2 * streams, 2):
        peer.send(frame(h2.HEADERS, h2.END_HEADERS, sid, PROCESS_BLOCK)
                  + b"".join(frame(h2.DATA, 0, sid, grpc_message(m)) for m in messages))
        clock[0] += lifetime_s
        peer.send(frame(h2.RST_STREAM, 0, sid, struct.pack(">I", h2.INTERNAL_ERROR)))
        if peer.transport.closed:
            break
    monkeypatch.undo()


def request_headers() -> bytes:
    return pb.ProcessingRequest(request_headers=http_headers(
        (":method", "POST"), (":path", "/v1/chat/completions"), ("x-request-id", "r"))).SerializeToString()


def test_resets_while_answers_are_outstanding_stop_after_100_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer, writer = ext_proc_peer(tmp_path, withheld=True)
    reset_flood(peer, [request_headers()], monkeypatch, streams=10000)
    assert peer.goaway() == h2.ENHANCE_YOUR_CALM
    records = written(tmp_path, writer)
    assert len(records) == h2.RAPID_RESET_MIN_STREAMS
    assert {r["outcome"] for r in records} == {"incomplete"}


def test_clients_leaving_after_a_second_are_not_a_flood(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peer, writer = ext_proc_peer(tmp_path, withheld=True)
    reset_flood(peer, [request_headers()], monkeypatch, streams=2000, lifetime_s=h2.PREMATURE_RESET)
    assert peer.goaway() is None and not peer.transport.closed
    assert len(written(tmp_path, writer)) == 2000  # each a request that started and was abandoned


def test_envoys_way_of_ending_streams_is_never_a_flood(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Envoy resets every ext_proc stream (RST_STREAM, no END_STREAM) right after its last answer, ~20 ms in."""
    peer, writer = ext_proc_peer(tmp_path)
    peer.send(frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", (64 << 20) - 65535)))  # Envoy's 64 MiB window
    reset_flood(peer, [m.SerializeToString() for m in exchange(CHAT, REPLY)], monkeypatch, streams=1000,
                lifetime_s=0.02)
    assert peer.goaway() is None and not peer.transport.closed
    records = written(tmp_path, writer)
    assert len(records) == 1000 and {r["outcome"] for r in records} == {"ok"}


def test_requests_answered_then_reset_are_requests_not_a_flood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decision documented in ext_proc.server.h2: a stream reset after its first message was answered
    # is a request that ran (identity checked, route chosen) and whose client left. It is recorded
    # "incomplete", and on the wire it is Envoy's normal traffic: no GOAWAY.
    peer, writer = ext_proc_peer(tmp_path)
    reset_flood(peer, [request_headers()], monkeypatch, streams=1000)
    assert peer.goaway() is None
    records = written(tmp_path, writer)
    assert len(records) == 1000 and {r["outcome"] for r in records} == {"incomplete"}


def test_some_early_resets_among_completed_streams_are_not_a_flood() -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    for i in range(400):
        sid = 2 * i + 1
        if i % 3 == 0:  # a third of the clients leave at once
            peer.client.send_headers(sid, REQUEST)
            peer.client.reset_stream(sid)
            peer.pump()
        else:
            peer.open(sid, b"q", end=True)
    assert peer.goaway() is None
    assert sum(isinstance(e, StreamReset) for e in peer.events) == 0


# -- write backpressure --------------------------------------------------------------------------


def test_write_buffer_limits_are_set_and_pause_reading() -> None:
    peer = Peer(echo_routes(Log()))
    assert peer.transport.limits == (h2.WRITE_HIGH_WATER, h2.WRITE_LOW_WATER)
    peer.connection.pause_writing()
    assert not peer.transport.reading
    peer.connection.resume_writing()
    assert peer.transport.reading


def test_answers_to_a_client_that_does_not_read_stop_at_the_high_water_mark() -> None:
    import asyncio
    import socket

    async def run() -> tuple[int, int, bool]:
        big = b"a" * (256 << 10)
        server = h2.Server(echo_routes(Log(), lambda m: [big]))  # every request answered with 256 KiB
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        await server.start(listener)
        client = socket.create_connection(listener.getsockname())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.setblocking(False)
        # Windows wide open: only the socket holds our answers back. The client never reads.
        client.sendall(START[:-9] + settings((4, h2.MAX_WINDOW))
                       + frame(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", h2.MAX_WINDOW - 65535)))
        request = frame(h2.DATA, 0, 1, grpc_message(b"q" * (16 << 10)))
        sent = 0
        with __import__("contextlib").suppress(BlockingIOError):
            client.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()))
            for _ in range(4000):  # 64 MiB of requests, 1 GiB of answers if we never paused
                sent += client.send(request)
                await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        (connection,) = server.connections
        buffered = connection.transport.get_write_buffer_size()  # type: ignore[union-attr]
        paused = connection.write_paused
        client.close()
        await server.shutdown(0.1)
        listener.close()
        return sent // len(request), buffered, paused

    requests, buffered, paused = asyncio.run(run())
    assert paused
    assert requests < 1000  # the client could not send them all: we stopped reading
    # At most the high-water mark plus the answers to one read (asyncio reads up to 256 KiB: 16
    # requests); without backpressure it would be every answer: 256 KiB per request sent.
    assert buffered <= h2.WRITE_HIGH_WATER + 17 * (256 << 10) < requests * (256 << 10)


def test_many_streams_and_pings_from_a_well_behaved_client_trip_no_limit() -> None:
    """300 streams, 300 PINGs and their WINDOW_UPDATEs, one read each: no counter adds up to a limit."""
    log = Log()
    peer = Peer(echo_routes(log))
    for i in range(300):
        peer.open(2 * i + 1, b"x" * 100, end=True)
        peer.client.ping(b"%08d" % i)
        peer.pump()
    assert peer.goaway() is None
    assert sum(1 for e in log.events if e[1] == "end") == 300
    assert len(parse_frames(bytes(peer.transport.data))) > 900
