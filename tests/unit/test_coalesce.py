"""Bodies sent behind their headers (``send_body_without_waiting_for_header_response``): the
headers' answer waits for the body's and both go out together (ext_proc/server/coalesce.py).

The servicer is driven with the messages Envoy sends in that mode: ``protocol_config`` on the
first, and an HTTP/1 body as its data then an empty last chunk.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server import coalesce
from ext_proc.server.records import RecordWriter
from ext_proc.server.servicer import ExtProcCall, Processor, Service

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
ANSWER = {"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
STREAMED = processing_mode_pb2.ProcessingMode.STREAMED
COALESCING = pb.ProtocolConfiguration(request_body_mode=STREAMED, response_body_mode=STREAMED,
                                      send_body_without_waiting_for_header_response=True)


def _headers(pairs: list[tuple[str, str]], end: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]), end_of_stream=end)


def request_head(config: pb.ProtocolConfiguration | None = COALESCING, **extra: str) -> bytes:
    pairs = [(":method", "POST"), (":path", CHAT), ("content-type", "application/json"), ("x-request-id", "r-1"),
             *extra.items()]
    message = pb.ProcessingRequest(request_headers=_headers(pairs))
    if config is not None:
        message.protocol_config.CopyFrom(config)
    return message.SerializeToString()


def chunk(kind: str, body: bytes, end: bool = False) -> bytes:
    return pb.ProcessingRequest(**{kind: pb.HttpBody(body=body, end_of_stream=end)}).SerializeToString()


def response_head(content_type: str = "application/json") -> bytes:
    return pb.ProcessingRequest(response_headers=_headers([(":status", "200"), ("content-type", content_type)])
                                ).SerializeToString()


def parsed(replies: list[bytes]) -> list[pb.ProcessingResponse]:
    return [pb.ProcessingResponse.FromString(reply) for reply in replies]


def sets(reply: pb.ProcessingResponse, kind: str) -> dict[str, str]:
    common = getattr(reply, kind).response
    return {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}


@pytest.fixture
def call(tmp_path: Path) -> ExtProcCall:
    return ExtProcCall(Service(RecordWriter(str(tmp_path / "requests.jsonl"), immediate=True)))


def test_the_headers_answer_waits_for_the_body_and_carries_its_header_changes(call: ExtProcCall) -> None:
    assert call.message(request_head()) == []  # held: the route comes from the body
    assert call.message(chunk("request_body", orjson.dumps(BODY))) == []
    head, data, last = parsed(call.message(chunk("request_body", b"", end=True)))
    assert head.WhichOneof("response") == "request_headers"
    assert head.request_headers.response.clear_route_cache  # the body's routing, on the headers' answer
    assert "x-tollway-cluster" in sets(head, "request_headers")
    # One answer per chunk Envoy sent, in order, none changing the body (the session kept it).
    for reply in (data, last):
        assert reply.WhichOneof("response") == "request_body"
        assert not reply.request_body.response.HasField("body_mutation")
    # The answer: headers held again, then everything at once with the usage headers on the head.
    assert call.message(response_head()) == []
    assert call.message(chunk("response_body", orjson.dumps(ANSWER))) == []
    head, data, last = parsed(call.message(chunk("response_body", b"", end=True)))
    told = sets(head, "response_headers")
    assert told["x-tollway-input-tokens"] == "3" and told["x-tollway-output-tokens"] == "2"
    assert [r.WhichOneof("response") for r in (data, last)] == ["response_body", "response_body"]


def test_a_replaced_body_goes_out_with_the_last_chunk_and_its_length_with_the_head(call: ExtProcCall) -> None:
    gzipped = __import__("gzip").compress(orjson.dumps(BODY))  # the session sends it on decompressed
    call.message(request_head(**{"content-encoding": "gzip"}))
    half = len(gzipped) // 2
    assert call.message(chunk("request_body", gzipped[:half])) == []
    head, first, last = parsed(call.message(chunk("request_body", gzipped[half:], end=True)))
    assert first.request_body.response.body_mutation.body == b""  # the first chunk's bytes are dropped
    body = last.request_body.response.body_mutation.body
    assert orjson.loads(body)["model"] == "gpt-4o-mini"
    assert sets(head, "request_headers")["content-length"] == str(len(body))
    assert "content-encoding" in head.request_headers.response.header_mutation.remove_headers


def test_a_refusal_at_the_headers_goes_out_at_once_and_the_body_behind_it_is_dropped(tmp_path: Path) -> None:
    from tests.unit.test_attempt import service  # a policy: a request without a key is refused

    call = ExtProcCall(service(tmp_path))
    (refused,) = parsed(call.message(request_head()))
    assert refused.immediate_response.status.code == 401
    assert call.message(chunk("request_body", orjson.dumps(BODY))) == []
    assert call.message(chunk("request_body", b"", end=True)) == []


def test_a_body_past_the_limit_is_a_413_in_the_clients_format(call: ExtProcCall,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "MAX_BODY", 10)
    call.message(request_head())
    (refused,) = parsed(call.message(chunk("request_body", b"x" * 11)))
    assert refused.immediate_response.status.code == 413
    error = orjson.loads(refused.immediate_response.body)["error"]
    assert error["code"] == "request_too_large"
    assert call.message(chunk("request_body", b"", end=True)) == []  # nothing more is read
    assert call.session.outcome == "rejected"


def test_an_answer_past_the_limit_fails_the_stream(call: ExtProcCall, monkeypatch: pytest.MonkeyPatch) -> None:
    call.message(request_head())
    call.message(chunk("request_body", orjson.dumps(BODY), end=True))
    call.message(response_head())
    monkeypatch.setattr(coalesce, "MAX_BODY", 10)
    with pytest.raises(coalesce.AnswerTooLarge):
        call.message(chunk("response_body", b"x" * 11))


def test_a_streamed_answer_is_answered_chunk_by_chunk(call: ExtProcCall) -> None:
    stream = dict(BODY, stream=True)
    call.message(request_head())
    assert len(call.message(chunk("request_body", orjson.dumps(stream), end=True))) == 2
    (head,) = parsed(call.message(response_head("text/event-stream")))
    assert head.WhichOneof("response") == "response_headers"  # not held: the client reads as it comes
    event = b'data: {"id":"x","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[]}\n\n'
    (answer,) = parsed(call.message(chunk("response_body", event)))
    assert answer.WhichOneof("response") == "response_body"


def test_a_body_still_held_after_a_while_extends_the_headers_timer_once(call: ExtProcCall,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "_EXTEND_AFTER_NS", 0)
    body = orjson.dumps(BODY)
    call.message(request_head())
    (extension,) = parsed(call.message(chunk("request_body", body[:10])))
    assert extension.override_message_timeout.seconds == coalesce.EXTENDED
    assert extension.WhichOneof("response") is None  # only the timer: the headers' answer is still due
    assert call.message(chunk("request_body", body[10:20])) == []  # once
    replies = parsed(call.message(chunk("request_body", body[20:], end=True)))
    assert [r.WhichOneof("response") for r in replies] == ["request_headers"] + ["request_body"] * 3


def test_a_stream_reset_with_its_body_long_held_is_logged_without_its_content(
        call: ExtProcCall, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from ext_proc.server import servicer

    body = orjson.dumps(BODY)
    call.message(request_head())
    call.message(chunk("request_body", body[:40]))  # the rest never comes
    call.reset()  # just held: Envoy's reset is the usual end, nothing to say
    assert not caplog.records
    held = ExtProcCall(call.service)
    held.message(request_head())
    held.message(chunk("request_body", body[:40]))
    monkeypatch.setattr(servicer, "LONG_HOLD_NS", 0)
    held.reset()
    (record,) = [r for r in caplog.records if r.name == "tollway.servicer"]
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert "request_headers answer held" in message and "1 chunk(s), 40 bytes" in message, message
    assert body[:40].decode() not in message and "gpt" not in message


def test_the_h2_server_extends_the_timer_from_a_timer(call: ExtProcCall, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "EXTEND_AFTER", 0.01)
    sent: list[bytes] = []

    class Responder:
        open = True
        loop: asyncio.AbstractEventLoop | None = None

        def send(self, message: bytes) -> None:
            sent.append(message)

        def finish(self, status: int = 0, message: str = "") -> None:
            pass

    async def held_a_while() -> None:
        responder = Responder()
        responder.loop = asyncio.get_running_loop()
        call.responder = responder
        call.message(request_head())
        call.message(chunk("request_body", orjson.dumps(BODY)))  # the last chunk does not come yet
        await asyncio.sleep(0.05)

    asyncio.run(held_a_while())
    (extension,) = parsed(sent)
    assert extension.override_message_timeout.seconds == coalesce.EXTENDED


def test_one_timer_per_loop_extends_only_what_is_overdue_and_stops_when_nothing_is_held(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coalesce, "EXTEND_AFTER", 0.02)
    extended: list[str] = []

    async def holds() -> tuple[int, bool, bool]:
        loop = asyncio.get_running_loop()
        overdue = coalesce.Overdue.of(loop)
        assert coalesce.Overdue.of(loop) is overdue  # one per loop
        now = time.monotonic_ns()
        overdue.hold(lambda: extended.append("old"), now - 10**9)  # held a second ago
        overdue.hold(lambda: extended.append("new"), now + 10**9)  # not due for a second
        released = lambda: extended.append("released")  # noqa: E731
        overdue.hold(released, now - 10**9)
        overdue.release(released)
        timers = sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        ticking = overdue._timer is not None  # "new" is still held: the loop keeps looking
        overdue.release(next(iter(overdue._held)))
        await asyncio.sleep(0.05)
        return timers, ticking, loop in coalesce._OVERDUE

    timers, ticking, remembered = asyncio.run(holds())
    assert timers == 1  # three holds, one timer
    assert extended == ["old"]
    assert ticking and not remembered  # nothing held: no timer, the loop forgotten


def test_without_the_protocol_config_every_message_is_answered_on_its_own(call: ExtProcCall) -> None:
    (head,) = parsed(call.message(request_head(config=None)))
    assert head.WhichOneof("response") == "request_headers"
    (body,) = parsed(call.message(chunk("request_body", orjson.dumps(BODY), end=True)))
    assert "x-tollway-cluster" in sets(body, "request_body")


def grpcio_replies(processor: Processor, messages: list[bytes]) -> list[Any]:
    """What the grpcio transport answers one ext_proc stream of ``messages``."""
    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

    async def run() -> list[Any]:
        async def requests() -> Any:
            for data in messages:
                yield pb.ProcessingRequest.FromString(data)
        return [reply async for reply in processor.process(requests(), Context())]  # type: ignore[arg-type]

    return asyncio.run(run())


def test_grpcio_serves_the_same_answers(tmp_path: Path) -> None:
    processor = Processor(Service(RecordWriter(str(tmp_path / "requests.jsonl"), immediate=True)))
    messages = [request_head(), chunk("request_body", orjson.dumps(BODY)), chunk("request_body", b"", end=True)]
    replies = grpcio_replies(processor, messages)
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body", "request_body"]
    assert "x-tollway-cluster" in sets(replies[0], "request_headers")


# -- a provider key the answer sends back ------------------------------------------------------

ECHOED = "sk-openai-test"  # the policy's OpenAI key (tests.unit.test_attempt.ENV)


def keyed_call(tmp_path: Path) -> ExtProcCall:
    from tests.unit.test_attempt import service

    served = service(tmp_path)
    served.workload = "local-dev"
    return ExtProcCall(served)


def echoing_head(status: str = "403", content_type: str = "application/json") -> bytes:
    return pb.ProcessingRequest(response_headers=_headers([
        (":status", status), ("content-type", content_type), ("x-debug-authorization", f"Bearer {ECHOED}"),
        ("x-request-id", "fine")])).SerializeToString()


def sent_to_gpt_4o(call: ExtProcCall, config: pb.ProtocolConfiguration | None = COALESCING,
                   **extra: Any) -> list[bytes]:
    replies = call.message(request_head(config))
    return replies + call.message(chunk("request_body", orjson.dumps({**BODY, "model": "gpt-4o", **extra}), end=True))


def test_a_key_the_provider_echoes_in_an_error_and_a_header_never_reaches_the_client(tmp_path: Path) -> None:
    """An upstream quoting the Authorization header it got (in its error body and a debugging header):
    the key is taken out of both before the session reads them and of what Envoy passes on."""
    from ext_proc.server.credentials import MARKER

    call = keyed_call(tmp_path)
    (head, _) = parsed(sent_to_gpt_4o(call))
    assert sets(head, "request_headers")["authorization"] == f"Bearer {ECHOED}"  # the key went
    error = {"error": {"message": f"Key Bearer {ECHOED} may not use this model", "type": "permission_error",
                       "code": "forbidden"}}
    assert call.message(echoing_head()) == []
    assert call.message(chunk("response_body", orjson.dumps(error)[:20])) == []  # the key split across chunks
    head, first, last = parsed(call.message(chunk("response_body", orjson.dumps(error)[20:], end=True)))
    told = sets(head, "response_headers")
    assert told["x-debug-authorization"] == f"Bearer {MARKER}" and "x-request-id" not in told
    assert first.response_body.response.body_mutation.body == b""  # the held chunk's bytes are dropped
    body = last.response_body.response.body_mutation.body
    assert ECHOED.encode() not in body and orjson.loads(body)["error"]["message"] == f"Key Bearer {MARKER} may not " \
        "use this model"
    assert told["content-length"] == str(len(body))
    assert call.session.outcome == "error" and call.session.error == "forbidden"


def test_a_key_in_a_streamed_chunk_is_taken_out_of_that_chunk(tmp_path: Path) -> None:
    call = keyed_call(tmp_path)
    sent_to_gpt_4o(call, config=None, stream=True)
    (head,) = parsed(call.message(echoing_head("200", "text/event-stream")))
    assert ECHOED not in str(sets(head, "response_headers"))
    event = (b'data: {"id":"x","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
             b'"delta":{"content":"your key is ' + ECHOED.encode() + b'"}}]}\n\n')
    (answer,) = parsed(call.message(chunk("response_body", event)))
    out = answer.response_body.response.body_mutation.body
    assert out and ECHOED.encode() not in out and b"your key is [provider key" in out
    (clean,) = parsed(call.message(chunk("response_body", b"data: [DONE]\n\n", end=True)))
    assert not clean.response_body.response.HasField("body_mutation")  # nothing to take out: passed as it is


def test_grpcio_takes_an_echoed_key_out_too(tmp_path: Path) -> None:
    from ext_proc.server.credentials import MARKER
    from tests.unit.test_attempt import service

    served = service(tmp_path)
    served.workload = "local-dev"
    processor = Processor(served)
    messages = [request_head(None), chunk("request_body", orjson.dumps({**BODY, "model": "gpt-4o"}), end=True),
                echoing_head("403", "text/plain"), chunk("response_body", f"Forbidden: Bearer {ECHOED}".encode(),
                                                         end=True)]
    replies = grpcio_replies(processor, messages)
    head, body = replies[2:]
    assert sets(head, "response_headers")["x-debug-authorization"] == f"Bearer {MARKER}"
    error = orjson.loads(body.response_body.response.body_mutation.body)["error"]  # the provider's plain text: JSON
    assert error["code"] == "provider_error" and "answered 403 with a body that is not JSON" in error["message"]
    assert ECHOED not in error["message"] and "Bearer" not in error["message"]  # never quoted


def test_a_gzip_error_quoting_the_key_is_taken_out_of_the_error_tollway_writes(tmp_path: Path) -> None:
    """The key is not in the compressed bytes; the session inflates a plain-text error and quotes it
    in the client's JSON error: the body the session writes is checked too."""
    call = keyed_call(tmp_path)
    sent_to_gpt_4o(call, config=None)  # message by message (buffered)
    head = pb.ProcessingRequest(response_headers=_headers([(":status", "403"), ("content-type", "text/plain"),
                                                          ("content-encoding", "gzip")])).SerializeToString()
    call.message(head)
    replies = parsed(call.message(chunk("response_body", gzip.compress(f"Forbidden: Bearer {ECHOED}".encode()),
                                        end=True)))
    sent = b"".join(r.response_body.response.body_mutation.body for r in replies if r.HasField("response_body"))
    assert sent and ECHOED.encode() not in sent and b"answered 403" in sent


def test_a_key_the_providers_json_escapes_is_found_too() -> None:
    from ext_proc.core.events import ResponseBody
    from ext_proc.server.credentials import MARKER, Scrub

    scrub = Scrub(("abc/def+ghi=jkl",))
    out = scrub.event(ResponseBody(b'{"error":{"message":"bad key abc\\/def+ghi=jkl"}}', True, 0))
    assert isinstance(out, ResponseBody) and b"abc" not in out.body and MARKER.encode() in out.body
