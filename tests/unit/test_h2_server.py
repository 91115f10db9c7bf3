"""Tollway's HTTP/2 gRPC server against a real gRPC client (grpcio) as the conformance peer."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2.events import DataReceived, TrailersReceived
from hpack import Decoder, Encoder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ext_proc.server import h2, listen
from ext_proc.server.records import RecordWriter
from ext_proc.server.servicer import HEALTH_PATH, PROCESS_PATH, ExtProcCall, HealthCall, Service
from tests.fakes import FakeTransport
from tests.unit.h2_peer import PATH, REQUEST, Log, Peer, echo_routes, frame, grpc_message, literal_block


class Running:
    """An h2.Server on its own event loop thread, with a RecordWriter to a file."""

    def __init__(self, log: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = log
        self.records = RecordWriter(str(log))
        self.server = h2.Server({
            PROCESS_PATH: lambda _headers, _responder: ExtProcCall(Service(self.records)),
            HEALTH_PATH: lambda _headers, _responder: HealthCall(lambda: not self.server.draining),
        })
        self.listener = listen.bind(listen.Address("tcp", host="127.0.0.1", port=0))
        self.port = self.listener.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start(self.listener.sock))

    def run(self, coro, timeout: float = 30):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def records_written(self) -> list[dict]:
        self.loop.call_soon_threadsafe(self.records.flush)
        time.sleep(0.05)
        return [orjson.loads(line) for line in self.log.read_bytes().splitlines()] if self.log.exists() else []

    def stop(self) -> None:
        self.run(self.server.shutdown(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[Running]:
    server = Running(tmp_path / "records.jsonl")
    yield server
    server.stop()


def channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )


def headers(*pairs: tuple[str, str]) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]))


def exchange(body: bytes, response: bytes, *, stream: bool = False) -> list[pb.ProcessingRequest]:
    return [
        pb.ProcessingRequest(request_headers=headers((":method", "POST"), (":path", "/v1/chat/completions"),
                                                     ("x-request-id", "req-1"))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=headers(
            (":status", "200"), ("content-type", "text/event-stream" if stream else "application/json"))),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=response, end_of_stream=True)),
    ]


CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
REPLY = orjson.dumps({"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})


def test_ext_proc_stream_round_trip(running: Running) -> None:
    with channel(running.port) as ch:
        replies = list(pb_grpc.ExternalProcessorStub(ch).Process(iter(exchange(CHAT, REPLY))))
    assert [r.WhichOneof("response") for r in replies] == [
        "request_headers", "request_body", "response_headers", "response_body"]
    assert replies[1].request_body.response.clear_route_cache
    (record,) = running.records_written()
    assert record["request_id"] == "req-1" and (record["input_tokens"], record["output_tokens"]) == (9, 4)


def test_health_check(running: Running) -> None:
    with channel(running.port) as ch:
        answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_method_is_unimplemented(running: Running) -> None:
    with channel(running.port) as ch, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest()).next()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_multi_megabyte_messages_respect_flow_control_both_ways(running: Running) -> None:
    # A 12 MB streaming request: Tollway re-encodes it (adding stream_options), so 12 MB go back too,
    # far beyond the client's initial 64 KiB windows.
    big = orjson.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 12_000_000}]})
    with channel(running.port) as ch:
        replies = list(pb_grpc.ExternalProcessorStub(ch).Process(iter(exchange(big, b"data: [DONE]\n\n",
                                                                               stream=True)[:2])))
    mutated = orjson.loads(replies[1].request_body.response.body_mutation.body)
    assert mutated["stream_options"] == {"include_usage": True}
    assert len(mutated["messages"][0]["content"]) == 12_000_000


def test_concurrent_streams(running: Running) -> None:
    with channel(running.port) as ch:
        stub = pb_grpc.ExternalProcessorStub(ch)
        futures = []
        results: list[int] = []

        def one() -> None:
            results.append(len(list(stub.Process(iter(exchange(CHAT, REPLY))))))

        futures = [threading.Thread(target=one) for _ in range(40)]
        for thread in futures:
            thread.start()
        for thread in futures:
            thread.join(20)
    assert results == [4] * 40
    assert len(running.records_written()) == 40


def test_cancelled_stream_is_recorded_incomplete(running: Running) -> None:
    gate = threading.Event()

    def requests() -> Iterator[pb.ProcessingRequest]:
        yield from exchange(CHAT, REPLY)[:3]
        gate.wait(5)

    with channel(running.port) as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(requests())
        for _ in range(3):
            next(call)
        call.cancel()
        gate.set()
    deadline = time.monotonic() + 5
    while not running.records_written():
        assert time.monotonic() < deadline, "no record for the cancelled stream"
    (record,) = running.records_written()
    # Cancelled after a JSON answer's head, which Tollway held for its body: a client gone, or an
    # upstream reset (Envoy then answers the client 502): the same to Tollway.
    assert (record["outcome"], record["status"], record["error"]) == ("incomplete", 200, "answer_interrupted")


def test_graceful_shutdown_lets_open_streams_finish(running: Running) -> None:
    gate = threading.Event()
    messages = exchange(CHAT, REPLY)

    def requests() -> Iterator[pb.ProcessingRequest]:
        yield from messages[:2]
        gate.wait(5)
        yield from messages[2:]

    with channel(running.port) as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(requests())
        next(call), next(call)
        shutdown = asyncio.run_coroutine_threadsafe(running.server.shutdown(5), running.loop)
        time.sleep(0.2)
        assert not shutdown.done(), "shutdown did not wait for the open stream"
        gate.set()
        rest = list(call)
        shutdown.result(5)
    assert len(rest) == 2
    assert running.records_written()[0]["outcome"] == "ok"


def test_garbage_is_not_http2(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # The server answers with its SETTINGS and a GOAWAY(PROTOCOL_ERROR), then closes.
    frames = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        frames.append((data[pos + 3], data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert frames[0][0] == h2.SETTINGS
    kind, payload = frames[-1]
    assert kind == h2.GOAWAY and int.from_bytes(payload[4:8], "big") == h2.PROTOCOL_ERROR


# -- TCP may cut the byte stream anywhere: the parser must not care ------------------------------


def client_bytes() -> bytes:
    encoder = Encoder()
    block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", PROCESS_PATH),
                            (":authority", "tollway"), ("content-type", "application/grpc"), ("te", "trailers")])
    out = h2.PREFACE + h2._frame(h2.SETTINGS, 0, 0, b"")
    # The header block split over HEADERS + CONTINUATION, with padding on HEADERS.
    out += h2._frame(h2.HEADERS, h2.PADDED, 1, bytes([3]) + block[:5] + b"\0\0\0")
    out += h2._frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[5:])
    out += h2._frame(h2.PING, 0, 0, b"12345678")
    messages = b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in
                        (r.SerializeToString() for r in exchange(CHAT, REPLY)))
    # gRPC messages cut across DATA frames at arbitrary points, END_STREAM on the last one.
    for i in range(0, len(messages), 37):
        last = i + 37 >= len(messages)
        out += h2._frame(h2.DATA, h2.END_STREAM if last else 0, 1, messages[i : i + 37])
    return out


def server_output(data: bytes) -> tuple[list[str], dict[str, str], bool]:
    """The response kinds, the trailers and whether the PING was answered."""
    decoder, pos, payload, trailers, pinged = Decoder(), 0, b"", {}, False
    while pos + 9 <= len(data):
        length, kind, flags = int.from_bytes(data[pos : pos + 3], "big"), data[pos + 3], data[pos + 4]
        body = data[pos + 9 : pos + 9 + length]
        pos += 9 + length
        if kind == h2.DATA:
            payload += body
        elif kind == h2.HEADERS and flags & h2.END_STREAM:
            trailers = dict(decoder.decode(body))
        elif kind == h2.HEADERS:
            decoder.decode(body)
        elif kind == h2.PING and flags & h2.ACK:
            pinged = body == b"12345678"
    kinds = []
    while payload:
        size = int.from_bytes(payload[1:5], "big")
        kinds.append(pb.ProcessingResponse.FromString(payload[5 : 5 + size]).WhichOneof("response"))
        payload = payload[5 + size :]
    return kinds, trailers, pinged


STREAM = client_bytes()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_segmentation_of_the_client_bytes(cuts: list[int]) -> None:
    writer = RecordWriter(None)
    writer.emit = lambda record: None  # type: ignore[method-assign]
    server = h2.Server({PROCESS_PATH: lambda _headers, _responder: ExtProcCall(Service(writer))})
    connection = h2.Connection(server)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    points = sorted({0, *cuts, len(STREAM)})
    for start, end in itertools.pairwise(points):
        connection.data_received(STREAM[start:end])
    kinds, trailers, pinged = server_output(bytes(transport.data))
    assert kinds == ["request_headers", "request_body", "response_headers", "response_body"]
    assert trailers == {"grpc-status": "0"} and pinged and not transport.closed


def test_the_record_is_written_before_the_answer_and_the_metrics_after_it() -> None:
    """The log gets the request's record before Envoy has the answer that ends it (a worker killed
    a moment later loses nothing); its metrics (and span, and budget settlement) wait until the
    answer is written, off the request's path: the loop runs them after the callback that wrote it."""
    async def scenario() -> None:
        seen: list[tuple[str, int]] = []  # (what, bytes written to Envoy by then)
        transport = FakeTransport()
        writer = RecordWriter(None)
        writer.emit = lambda record: seen.append(("record", len(transport.data)))  # type: ignore[method-assign]
        service = Service(writer)
        service.on_record = lambda record: seen.append(("metrics", len(transport.data)))
        connection = h2.Connection(h2.Server({PROCESS_PATH: lambda _headers, responder: ExtProcCall(
            service, responder=responder)}))
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(STREAM)
        answered = len(transport.data)
        assert server_output(bytes(transport.data))[0][-1] == "response_body"
        assert seen == [("record", seen[0][1])] and seen[0][1] < answered  # written before the answer
        await asyncio.sleep(0)
        assert seen[1:] == [("metrics", answered)]  # counted once the answer was out

    asyncio.run(scenario())


def test_a_failing_report_is_logged_and_the_request_still_answered(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        transport = FakeTransport()
        writer = RecordWriter(None)
        records: list[dict] = []
        writer.emit = records.append  # type: ignore[method-assign]
        service = Service(writer)

        def broken(record: dict) -> None:
            raise RuntimeError("metrics broke")

        service.on_record = broken
        connection = h2.Connection(h2.Server({PROCESS_PATH: lambda _headers, responder: ExtProcCall(
            service, responder=responder)}))
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(STREAM)
        await asyncio.sleep(0)
        kinds, trailers, _ = server_output(bytes(transport.data))
        assert kinds[-1] == "response_body" and trailers == {"grpc-status": "0"}
        assert [r["outcome"] for r in records] == ["ok"]

    asyncio.run(scenario())
    assert "reporting a finished request failed" in caplog.text


# -- answering later: the Responder seam ---------------------------------------------------------


class LaterCall:
    """Answers each message ``delay`` seconds later from ``loop.call_later``, and finishes the same way."""

    def __init__(self, responder: h2.Responder, log: Log, sid: int, delay: float = 0.05) -> None:
        self.responder, self.log, self.sid, self.delay = responder, log, sid, delay
        self.loop = asyncio.get_running_loop()
        log.events.append((sid, "created"))
        log.responders[sid] = responder

    def message(self, data: bytes) -> list[bytes]:
        self.log.events.append((self.sid, "message"))
        self.loop.call_later(self.delay, self.answer, data)
        return []

    def answer(self, data: bytes) -> None:
        self.log.events.append((self.sid, f"answer (open: {self.responder.open})"))
        self.responder.send(data)

    def end(self) -> tuple[int, str] | None:
        self.log.events.append((self.sid, "end"))
        self.loop.call_later(self.delay, self.responder.finish, 0, "later")
        return None

    def reset(self) -> None:
        self.log.events.append((self.sid, "reset"))


def later_routes(log: Log, delay: float = 0.05) -> dict[str, h2.CallFactory]:
    return {PATH: lambda _headers, responder: LaterCall(responder, log, responder.sid, delay)}  # type: ignore[attr-defined]


def stream_frames(peer: Peer, sid: int) -> list[int]:
    return [kind for kind, _, s, _ in peer.frames() if s == sid]


def test_a_call_answers_later_from_the_loop_and_its_stream_counts_until_finished() -> None:
    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log))
        peer.open(1, b"first", b"second", end=True)
        assert stream_frames(peer, 1) == []  # nothing yet: the answers come from the loop
        assert 1 in peer.connection.streams and log.of(1) == ["created", "message", "message", "end"]
        writes = peer.transport.writes
        await asyncio.sleep(0.15)
        # Two answers from two timer callbacks and the trailers from a third, due together:
        # one flush after them, one write.
        assert peer.transport.writes == writes + 1
        peer.pump()
        answers = [e for e in peer.events if isinstance(e, DataReceived) and e.stream_id == 1]
        assert b"".join(e.data for e in answers) == grpc_message(b"first") + grpc_message(b"second")
        (trailers,) = [e for e in peer.events if isinstance(e, TrailersReceived)]
        assert dict(trailers.headers) == {b"grpc-status": b"0", b"grpc-message": b"later"}
        assert 1 not in peer.connection.streams
        assert log.of(1)[-2:] == ["answer (open: True)", "answer (open: True)"]

    asyncio.run(scenario())


def test_answers_given_inside_data_received_share_its_single_write() -> None:
    async def scenario() -> None:
        log = Log()

        def both(message: bytes) -> list[bytes]:
            log.responders[1].send(b"via responder")
            return [b"returned"]

        peer = Peer(echo_routes(log, both))
        writes = peer.transport.writes
        peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block())
                  + frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"q")))
        assert peer.transport.writes == writes + 1
        await asyncio.sleep(0.01)  # the flush scheduled by the responder finds nothing left to write
        assert peer.transport.writes == writes + 1
        data = b"".join(p for kind, _, sid, p in peer.frames() if kind == h2.DATA)
        assert data == grpc_message(b"via responder") + grpc_message(b"returned")

    asyncio.run(scenario())


def test_the_answers_to_one_message_go_out_in_one_data_frame() -> None:
    async def scenario() -> None:
        peer = Peer(echo_routes(Log(), lambda message: [b"head", b"", message]))
        peer.open(1, b"q")
        (data,) = [p for kind, _, sid, p in peer.frames() if kind == h2.DATA and sid == 1]
        assert data == grpc_message(b"head") + grpc_message(b"") + grpc_message(b"q")
        received = [e for e in peer.events if isinstance(e, DataReceived) and e.stream_id == 1]
        assert b"".join(e.data for e in received) == data  # what a real HTTP/2 client reads

    asyncio.run(scenario())


def test_answers_past_the_peers_window_wait_and_still_arrive_whole() -> None:
    async def scenario() -> None:
        big = b"x" * 40_000
        peer = Peer(echo_routes(Log(), lambda message: [big, big]), client_settings={4: 50_000})
        peer.open(1, b"q")

        def sent() -> bytes:
            return b"".join(e.data for e in peer.events if isinstance(e, DataReceived) and e.stream_id == 1)

        assert len(sent()) == 50_000  # the stream's window, no more
        peer.client.increment_flow_control_window(100_000, stream_id=1)
        peer.client.increment_flow_control_window(100_000)
        peer.pump()
        assert sent() == grpc_message(big) * 2

    asyncio.run(scenario())


def test_a_client_cancelling_while_the_answer_is_outstanding() -> None:
    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log))
        peer.open(1, b"q")
        peer.client.reset_stream(1)
        peer.pump()
        assert log.of(1) == ["created", "message", "reset"]
        responder = log.responders[1]
        assert not responder.open
        before = stream_frames(peer, 1)
        await asyncio.sleep(0.15)
        responder.send(b"late")
        responder.finish()
        await asyncio.sleep(0.01)
        assert log.of(1) == ["created", "message", "reset", "answer (open: False)"]  # reset() once, nothing after
        assert stream_frames(peer, 1) == before == []
        assert peer.goaway() is None and not peer.connection.streams

    asyncio.run(scenario())


def test_answers_given_later_wait_while_the_transport_is_above_its_high_water_mark() -> None:
    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log, delay=0.01))
        peer.open(1, b"q", end=True)
        peer.connection.pause_writing()  # the client is not reading what we already wrote
        written = len(peer.transport.data)
        await asyncio.sleep(0.05)
        assert log.of(1)[-1] == "answer (open: True)"
        assert len(peer.transport.data) == written  # held
        peer.connection.resume_writing()
        peer.pump()
        assert [e.data for e in peer.events if isinstance(e, DataReceived)] == [grpc_message(b"q")]
        assert any(isinstance(e, TrailersReceived) for e in peer.events)

    asyncio.run(scenario())


def test_the_connection_dropping_while_answers_are_outstanding() -> None:
    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log))
        peer.open(1, b"q", end=True)  # answer and finish outstanding
        peer.open(3, b"q")  # answer outstanding, client still sending
        written = len(peer.transport.data)
        peer.lose()
        assert log.of(1) == ["created", "message", "end", "reset"]
        assert log.of(3) == ["created", "message", "reset"]
        assert not log.responders[1].open and not log.responders[3].open
        await asyncio.sleep(0.15)  # the answers arrive: ignored, nothing written, nothing raised
        assert log.of(3)[-1] == "answer (open: False)"
        assert len(peer.transport.data) == written

    asyncio.run(scenario())


def test_many_concurrent_deferred_streams_count_against_max_concurrent_streams() -> None:
    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log, delay=0.1))
        for i in range(h2.MAX_CONCURRENT_STREAMS):
            peer.open(2 * i + 1, b"%d" % i, end=True)
        assert len(peer.connection.streams) == h2.MAX_CONCURRENT_STREAMS
        extra = 2 * h2.MAX_CONCURRENT_STREAMS + 1
        peer.send(frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, extra, literal_block()))
        assert peer.resets() == {extra: h2.REFUSED_STREAM}
        await asyncio.sleep(0.3)
        peer.pump()
        for i in range(h2.MAX_CONCURRENT_STREAMS):
            sid = 2 * i + 1
            data = b"".join(e.data for e in peer.events if isinstance(e, DataReceived) and e.stream_id == sid)
            assert data == grpc_message(b"%d" % i)
            assert log.of(sid) == ["created", "message", "end", "answer (open: True)"]
        assert not peer.connection.streams
        assert sum(isinstance(e, TrailersReceived) for e in peer.events) == h2.MAX_CONCURRENT_STREAMS

    asyncio.run(scenario())


def test_graceful_shutdown_waits_for_deferred_streams() -> None:
    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log, delay=0.2))
        peer.open(1, b"q", end=True)
        start = time.monotonic()
        await peer.server.shutdown(5)
        elapsed = time.monotonic() - start
        assert 0.2 <= elapsed < 2
        kinds = [(kind, flags & h2.END_STREAM) for kind, flags, sid, _ in peer.frames() if sid in (0, 1)]
        goaway = kinds.index((h2.GOAWAY, 0))
        assert (h2.HEADERS, h2.END_STREAM) in kinds[goaway:]  # the deferred answer came after GOAWAY
        assert peer.transport.closed and peer.goaway() == h2.NO_ERROR

    asyncio.run(scenario())


def test_deferred_answers_over_a_socket_to_grpcio(tmp_path: Path) -> None:
    running = Running(tmp_path / "records.jsonl")
    log = Log()
    running.server.routes[PATH] = lambda _headers, responder: LaterCall(responder, log, 1, 0.02)
    try:
        with channel(running.port) as ch:
            answers = list(ch.stream_stream(PATH)(iter([b"one", b"two", b"three"]), timeout=10))
        assert answers == [b"one", b"two", b"three"]
    finally:
        running.stop()


def test_a_frame_on_a_stream_the_client_ended_resets_that_stream_only() -> None:
    """RFC 9113 5.1: DATA or HEADERS on a half-closed (remote) stream is a stream error
    (STREAM_CLOSED): the call is told, the connection and its other streams go on (found by the
    differential fuzz: python-hyper's h2 does the same)."""

    async def scenario() -> None:
        log = Log()
        peer = Peer(later_routes(log, delay=0.05))
        peer.open(1, b"first", end=True)  # answered later: the stream stays half-closed (remote)
        peer.open(3, b"other", end=True)
        peer.send(frame(h2.DATA, 0x1, 1, b""))  # DATA after END_STREAM on stream 1
        peer.send(frame(h2.HEADERS, 0x5, 3, literal_block([(b"grpc-status", b"0")])))  # trailers after it on 3
        assert peer.resets() == {1: h2.STREAM_CLOSED, 3: h2.STREAM_CLOSED}
        assert peer.goaway() is None and log.of(1)[-1] == "reset" and log.of(3)[-1] == "reset"
        assert 1 not in peer.connection.streams and 3 not in peer.connection.streams
        peer.open(5, b"third", end=True)  # the connection still serves
        await asyncio.sleep(0.15)
        peer.pump()
        answers = [e for e in peer.events if isinstance(e, DataReceived) and e.stream_id == 5]
        assert b"".join(e.data for e in answers) == grpc_message(b"third")

    asyncio.run(scenario())


_NAMES = st.sampled_from([b":path", b"content-type", b"te", b"x-envoy-internal", b"x-forwarded-for", b"x-a"])
_HEADER_LISTS = st.lists(st.lists(st.tuples(_NAMES, st.binary(min_size=0, max_size=12)), min_size=1, max_size=5)
                         .map(lambda pairs: [(b":method", b"POST"), *pairs]), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(lists=_HEADER_LISTS, repeats=st.lists(st.integers(0, 11), max_size=12),
       sizes=st.lists(st.sampled_from([0, 64, 128, 4096]), max_size=3), never=st.booleans())
# Found by this test: a block whose decoding failed had changed the table first (an entry added
# before an index past the table's end), and the blocks kept before it were served stale.
@example(lists=[[(b":method", b"POST"), (b":path", b"")],
                [(b":method", b"POST"), (b":path", b"\x00"), (b":path", b"\x00\x00"), (b"te", b""), (b":path", b"")],
                [(b":method", b"POST"), (b"content-type", b"\x00\x00"), (b"te", b"")]],
         repeats=[0, 0], sizes=[128], never=False)
def test_a_header_block_kept_decoded_is_what_decoding_it_again_gives(
        lists: list[list[tuple[bytes, bytes]]], repeats: list[int], sizes: list[int], never: bool) -> None:
    # The client's encoder adds entries, evicts them and changes its table's size between blocks;
    # some blocks come again byte for byte (as Envoy's do). The connection's decoding, which keeps
    # the blocks that left the table unchanged, must equal a fresh decoder's on every block.
    connection = h2.Connection(h2.Server({}))
    reference = Decoder(max_header_list_size=h2.MAX_HEADER_BLOCK)
    encoder = Encoder()
    blocks: list[bytes] = []
    order = [*range(len(lists)), *(i for i in repeats if i < len(lists))]
    for step, index in enumerate(order):
        if step < len(sizes):
            encoder.header_table_size = sizes[step]
        pairs = lists[index]
        block = encoder.encode([(n, v, never) for n, v in pairs] if never else pairs)
        blocks.append(block)
        for again in (block, *blocks[-3:]):  # the block, and some earlier ones byte for byte
            try:
                expected = reference.decode(again, raw=True)
            except Exception as exc:  # an old block may no longer decode: then neither may ours
                with pytest.raises(type(exc)):
                    connection._decode(again)
                continue
            try:
                assert connection._decode(again) == expected
            except h2._Malformed as exc:  # decoded all the same, and never kept
                assert exc.headers == expected and again not in connection.decoded
    assert len(connection.decoded) <= h2.DECODED_BLOCKS


def test_envoys_block_for_every_ext_proc_stream_is_decoded_once() -> None:
    # The :path as a literal without indexing (Envoy's form), the rest from the static table.
    connection = h2.Connection(h2.Server({}))
    block = b"\x83\x04\x0f/x.Service/Call\x86\x0f\x10\x10application/grpc"  # literals without indexing
    first = connection._decode(block)
    assert first == [(b":method", b"POST"), (b":path", b"/x.Service/Call"), (b":scheme", b"http"),
                     (b"content-type", b"application/grpc")]
    assert connection.decoded == {block: tuple(first)}
    second = connection._decode(block)
    assert second == first and second is not first  # a copy: the stream may keep it


# -- malformed requests (RFC 9113 §8.2, §8.3) ------------------------------------------------------

MALFORMED = {
    "uppercase name": [*REQUEST, (b"X-Upper", b"1")],
    "space in a name": [*REQUEST, (b"x upper", b"1")],
    "colon in a name": [*REQUEST, (b"x:y", b"1")],
    "empty name": [*REQUEST, (b"", b"1")],
    "NUL in a value": [*REQUEST, (b"x-a", b"a\0b")],
    "whitespace around a value": [*REQUEST, (b"x-a", b" a")],
    "unknown pseudo-header": [*REQUEST, (b":foo", b"1")],
    ":status in a request": [(b":status", b"200"), *REQUEST],
    "pseudo-header after a regular one": [(b"content-type", b"application/grpc"),
                                          *(h for h in REQUEST if h[0] != b"content-type")],
    "no :method or :scheme": [h for h in REQUEST if h[0] not in (b":method", b":scheme")],
    "empty :path": [(k, v if k != b":path" else b"") for k, v in REQUEST],
    "connection": [*REQUEST, (b"connection", b"keep-alive")],
    "keep-alive": [*REQUEST, (b"keep-alive", b"5")],
    "transfer-encoding": [*REQUEST, (b"transfer-encoding", b"chunked")],
    "upgrade": [*REQUEST, (b"upgrade", b"h2c")],
    "te other than trailers": [(k, v if k != b"te" else b"gzip") for k, v in REQUEST],
    "two :path": [*REQUEST[:4], (b":path", b"/other"), *REQUEST[4:]],
}


@pytest.mark.parametrize("block", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_a_stream_error_and_the_connection_serves_on(block: list[tuple[bytes, bytes]]) -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block(block))
              + frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"hi")))
    assert log.of(1) == [] and peer.resets() == {1: h2.PROTOCOL_ERROR}
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 3, literal_block())
              + frame(h2.DATA, h2.END_STREAM, 3, grpc_message(b"hi")))
    assert log.of(3) == ["created", "message", "end"] and peer.goaway() is None


def test_well_formed_variants_are_served() -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    no_authority = [h for h in REQUEST if h[0] != b":authority"]  # RFC 9113 §8.3.1 allows it
    for sid, block in enumerate((no_authority, [*REQUEST, (b"x-empty", b""), (b"te", b"Trailers")]), start=0):
        peer.send(frame(h2.HEADERS, h2.END_HEADERS, 2 * sid + 1, literal_block(block))
                  + frame(h2.DATA, h2.END_STREAM, 2 * sid + 1, grpc_message(b"hi")))
    assert log.of(1) == log.of(3) == ["created", "message", "end"] and not peer.resets()


def test_trailers_with_a_pseudo_header_reset_the_stream() -> None:
    log = Log()
    peer = Peer(echo_routes(log, lambda m: []))
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()) + frame(h2.DATA, 0, 1, grpc_message(b"hi"))
              + frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, literal_block([(b":path", b"/x")])))
    assert log.of(1) == ["created", "message", "reset"] and peer.resets() == {1: h2.PROTOCOL_ERROR}


def test_a_block_kept_decoded_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[int] = []
    check = h2._malformed
    monkeypatch.setattr(h2, "_malformed", lambda headers, trailers=False: checked.append(1) or check(headers, trailers))
    log = Log()
    peer = Peer(echo_routes(log))
    for sid in range(1, 21, 2):
        peer.send(frame(h2.HEADERS, h2.END_HEADERS, sid, literal_block())
                  + frame(h2.DATA, h2.END_STREAM, sid, grpc_message(b"hi")))
    assert len(log.events) == 30 and len(checked) == 1


# -- graceful GOAWAY in two phases -------------------------------------------------------------------


def goaways(peer: Peer) -> list[tuple[int, int]]:
    """The server's GOAWAY frames: (last stream id, error code)."""
    return [(int.from_bytes(p[:4], "big"), int.from_bytes(p[4:8], "big")) for kind, _, _, p in peer.frames()
            if kind == h2.GOAWAY]


def test_a_stream_crossing_a_graceful_goaway_is_served() -> None:
    log = Log()
    peer = Peer(echo_routes(log, lambda m: []))  # stream 1's call answers later: it stays open
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block()) + frame(h2.DATA, 0, 1, grpc_message(b"a")))
    peer.server.connections.add(peer.connection)
    peer.server.shed()  # the dealer rebalancing after a worker restart (shutdown sends the same)
    assert goaways(peer) == [(2**31 - 1, h2.NO_ERROR)]
    assert (h2.PING, 0, 0, h2.GOAWAY_PING) in peer.frames()
    # Envoy sent stream 3 before it read that GOAWAY: served, not refused.
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 3, literal_block())
              + frame(h2.DATA, h2.END_STREAM, 3, grpc_message(b"b")))
    assert log.of(3) == ["created", "message", "end"] and not peer.resets()
    peer.send(frame(h2.PING, h2.ACK, 0, h2.GOAWAY_PING))  # every stream it opened before the ack is known
    assert goaways(peer) == [(2**31 - 1, h2.NO_ERROR), (3, h2.NO_ERROR)]
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 5, literal_block()))
    assert peer.resets() == {5: h2.REFUSED_STREAM}
    assert not peer.transport.closed  # stream 1 is still open
    log.responders[1].finish()
    assert peer.transport.closed


def test_the_final_goaway_goes_after_a_timeout_without_the_pings_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2, "GOAWAY_TIMEOUT", 0.05)

    async def scenario() -> None:
        peer = Peer(echo_routes(Log()))
        peer.server.connections.add(peer.connection)
        start = time.monotonic()
        await peer.server.shutdown(5)
        assert 0.05 <= time.monotonic() - start < 1
        assert goaways(peer) == [(2**31 - 1, h2.NO_ERROR), (0, h2.NO_ERROR)] and peer.transport.closed

    asyncio.run(scenario())


@pytest.mark.parametrize("max_frame", [16384, 20000])
def test_trailers_longer_than_the_peers_max_frame_size_go_in_continuation_frames(max_frame: int) -> None:
    log = Log()
    peer = Peer(echo_routes(log), client_settings={5: max_frame})  # MAX_FRAME_SIZE
    long = [h if h[0] != b":path" else (b":path", b"/" + b"a" * 40000) for h in REQUEST]
    peer.client.send_headers(1, long, end_stream=True)
    events = peer.pump()
    out = [(kind, flags, p) for kind, flags, sid, p in peer.frames() if sid == 1]
    assert [kind for kind, _, _ in out] == [h2.HEADERS, h2.CONTINUATION, h2.CONTINUATION]
    assert max(len(p) for _, _, p in out) <= max_frame
    assert out[0][1] == h2.END_STREAM and out[-1][1] == h2.END_HEADERS and not out[1][1]
    trailers = dict(Decoder().decode(b"".join(p for _, _, p in out), raw=True))
    assert trailers[b"grpc-status"] == b"12" and trailers[b"grpc-message"].endswith(b"a" * 40000)
    # The h2 client reassembles them: the stream ended with its trailers, the connection is fine.
    assert [type(e).__name__ for e in events if getattr(e, "stream_id", None) == 1] == [
        "ResponseReceived", "StreamEnded"]
    assert peer.goaway() is None


@pytest.mark.parametrize("tail", [b"\0\0\0", grpc_message(b"cut short")[:-3]],
                         ids=["a partial prefix", "a partial message"])
def test_a_half_close_inside_a_message_is_internal_and_resets_the_call(tail: bytes) -> None:
    log = Log()
    peer = Peer(echo_routes(log))
    peer.send(frame(h2.HEADERS, h2.END_HEADERS, 1, literal_block())
              + frame(h2.DATA, h2.END_STREAM, 1, grpc_message(b"hi") + tail))
    trailers = [dict(Decoder().decode(p, raw=True)) for kind, flags, _, p in peer.frames()
                if kind == h2.HEADERS and flags & h2.END_STREAM]
    assert trailers[-1][b"grpc-status"] == b"13"
    assert log.of(1) == ["created", "message", "reset"]  # the call does not end as if all had come
    assert 1 not in peer.connection.streams and peer.goaway() is None
