"""The per-request state machine as transcripts: what Envoy tells a Session, what it answers.

Request bodies and provider answers come from the real recorded OpenAI exchanges in
``tests/fixtures/openai-cassettes`` where one fits; Anthropic payloads follow its API
reference. Times are monotonic nanoseconds; :func:`ms` turns milliseconds after the request's
arrival into one.
"""

from __future__ import annotations

import gzip
from typing import Any
from unittest.mock import ANY
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ext_proc.core.actions import CONTINUE, Continue, EmitRecord, Respond
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.core.session import Phase, ProtocolError, Session
from ext_proc.llm import apis
from tests.fixtures import CASSETTES
from tests.unit.transcript import Record, Replaces, Responds, Transcript

CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES = "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages"

T0 = 7_000_000_000_000  # the request's arrival on the monotonic clock


def ms(milliseconds: float) -> int:
    return T0 + round(milliseconds * 1_000_000)


# -- events -----------------------------------------------------------------------------------


def post(path: str, *, at: float = 0, end_of_stream: bool = False, **headers: str) -> RequestHeaders:
    """A client's POST; keyword headers use ``_`` for ``-`` (``content_encoding="gzip"``)."""
    head = {":method": "POST", ":path": path, "content-type": "application/json", "x-request-id": "req-1"}
    head.update({name.replace("_", "-"): value for name, value in headers.items()})
    return RequestHeaders(head, end_of_stream, ms(at))


def request(body: Any, *, at: float = 1) -> RequestBody:
    return RequestBody(body if isinstance(body, bytes) else orjson.dumps(body), True, ms(at))


def response(
    status: int, content_type: str = "application/json", *, at: float = 200, end_of_stream: bool = False
) -> ResponseHeaders:
    return ResponseHeaders({":status": str(status), "content-type": content_type}, end_of_stream, ms(at))


def chunk(body: bytes | str, *, at: float = 300, end_of_stream: bool = True) -> ResponseBody:
    return ResponseBody(body.encode() if isinstance(body, str) else body, end_of_stream, ms(at))


# -- expected actions -------------------------------------------------------------------------

# Request headers: ask for an uncompressed answer, drop the routing header a client may forge.
HEADERS_OK = Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))
STREAMED = Continue(stream_response=True)
CONTENT_TYPE_JSON = (("content-type", "application/json"),)


STREAM_LABEL = ("x-tollway-stream", "1")  # streams take the route with the short first-byte timeout


def routed(provider: str = "openai", *, stream: bool = False) -> Continue:
    """The request body passes unchanged; the route is re-matched for the provider's label."""
    labels = (("x-tollway-cluster", provider), STREAM_LABEL) if stream else (("x-tollway-cluster", provider),)
    return Continue(set_headers=labels, clear_route_cache=True)


def openai_error(
    message: Any, code: str, *, type: str = "invalid_request_error", param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_error(message: Any, *, type: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}}


NO_USAGE: dict[str, Any] = dict.fromkeys(
    ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
)


# -- recorded data ----------------------------------------------------------------------------


def cassette(name: str) -> dict[str, Any]:
    """The one recorded interaction of ``name``: ``request`` and ``response`` (body, code, headers)."""
    return yaml.safe_load((CASSETTES / f"{name}.yaml").read_text())["interactions"][0]


def sse_events(body: bytes) -> list[bytes]:
    """A recorded LF-delimited SSE body cut into its events (terminators kept)."""
    return [event + b"\n\n" for event in body.split(b"\n\n") if event]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(set(cuts))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def play_stream(session: Session, chunks: list[bytes], *, first_at: float = 250, step: float = 10) -> bytes:
    """Feed response chunks (the last with end_of_stream) and return the bytes the client gets."""
    seen = b""
    for i, data in enumerate(chunks):
        action = session.handle(ResponseBody(data, i == len(chunks) - 1, ms(first_at + i * step)))
        assert isinstance(action, Continue) and not action.set_headers and not action.remove_headers
        seen += data if action.body is None else action.body
    return seen


def records(session: Session) -> list[dict[str, Any]]:
    out = [effect.record for effect in session.effects if isinstance(effect, EmitRecord)]
    session.effects.clear()
    return out


ANTHROPIC_MODEL = "claude-sonnet-4-20250514"
ANTHROPIC_REQUEST = {"model": ANTHROPIC_MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}]}
ANTHROPIC_USAGE = {"input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000}
ANTHROPIC_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": "Hi! How can I help?"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {**ANTHROPIC_USAGE, "output_tokens": 42},
}
ANTHROPIC_STREAM_EVENTS = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_01","type":"message",'
    b'"role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,'
    b'"cache_read_input_tokens":2000,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"!"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":15}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
ANTHROPIC_STREAM = b"".join(ANTHROPIC_STREAM_EVENTS)
ANTHROPIC_STREAM_USAGE = dict(
    input_tokens=2112, output_tokens=15, cached_tokens=2000, cache_write_tokens=100, reasoning_tokens=None
)


# ---------------------------------------------------------------------------------------------
# JSON happy paths, one per client API


def test_chat_completion_json() -> None:
    recorded = cassette("chat-basic")
    assert (
        Transcript()
        >> post(CHAT, at=0)
        << HEADERS_OK
        >> request(recorded["request"]["body"].encode(), at=2)
        << routed("openai")
        >> response(200, at=2600)
        << CONTINUE
        >> chunk(recorded["response"]["body"], at=2601)
        << CONTINUE
        << Record(
            request_id="req-1", api="openai.chat.completions", model="gpt-5-nano",
            served_model="gpt-5-nano-2025-08-07", provider="openai", stream=False, status=200,
            upstream_model="gpt-5-nano",  # open mode: the name asked for, sent as it is
            outcome="ok", error=None, input_tokens=8, output_tokens=377, cached_tokens=0,
            cache_write_tokens=None, reasoning_tokens=320, latency_ms=2601.0, ttft_ms=None,
        )
    )


def test_completion_json() -> None:
    recorded = cassette("completion-basic")
    assert (
        Transcript()
        >> post(COMPLETIONS)
        << HEADERS_OK
        >> request(recorded["request"]["body"].encode())
        << routed("openai")
        >> response(200)
        << CONTINUE
        >> chunk(recorded["response"]["body"])
        << CONTINUE
        << Record(
            api="openai.completions", model="babbage-002", served_model="babbage:2023-07-21-v2",
            outcome="ok", input_tokens=31, output_tokens=25, cached_tokens=None, reasoning_tokens=None,
        )
    )


def test_embeddings_json_produce_zero_output_tokens() -> None:
    recorded = cassette("embeddings-basic")
    assert (
        Transcript()
        >> post(EMBEDDINGS)
        << HEADERS_OK
        >> request(recorded["request"]["body"].encode())
        << routed("openai")
        >> response(200)
        << CONTINUE
        >> chunk(recorded["response"]["body"])
        << CONTINUE
        << Record(
            api="openai.embeddings", model="text-embedding-3-small", served_model="text-embedding-3-small",
            outcome="ok", input_tokens=7, output_tokens=0, cached_tokens=None, reasoning_tokens=None,
        )
    )


def test_anthropic_message_json_counts_cache_reads_and_writes_as_input() -> None:
    assert (
        Transcript()
        >> post(MESSAGES, anthropic_version="2023-06-01")
        << HEADERS_OK
        >> request(ANTHROPIC_REQUEST)
        << routed("anthropic")
        >> response(200, at=900)
        << CONTINUE
        >> chunk(orjson.dumps(ANTHROPIC_MESSAGE), at=901)
        << CONTINUE
        << Record(
            api="anthropic.messages", model=ANTHROPIC_MODEL, served_model=ANTHROPIC_MODEL,
            provider="anthropic", stream=False, status=200, outcome="ok", error=None,
            input_tokens=2112, output_tokens=42, cached_tokens=2000, cache_write_tokens=100,
            reasoning_tokens=None, latency_ms=901.0, ttft_ms=None,
        )
    )


def test_record_has_exactly_the_documented_fields() -> None:
    session = Session()
    session.handle(post(EMBEDDINGS, end_of_stream=True))
    (record,) = records(session)
    assert sorted(record) == sorted([
        "request_id", "team", "key_id", "workload",
        "api", "model", "served_model", "provider", "upstream_model", "stream", "status", "outcome", "error",
        "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "service_tier",
        "attempts", "fallback", "guardrails", "guardrail_triggers", "injection_score", "classifier_unavailable",
        "latency_ms", "ttft_ms",
        "estimated_input_tokens", "input_estimated", "output_estimated", "cost_usd_micros", "price_version",
    ])


def test_json_answer_without_usage_leaves_usage_unknown_not_zero() -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request({"model": "local-llm", "messages": []})
        << routed()
        >> response(200)
        << CONTINUE
        >> chunk(b'{"id": "x", "model": "local-llm", "choices": []}')
        << CONTINUE
        << Record(outcome="ok", served_model="local-llm", **NO_USAGE)
    )


# ---------------------------------------------------------------------------------------------
# OpenAI streams: usage asked for on the client's behalf, and hidden again

RECORDED_STREAM = cassette("chat-streaming-detailed-usage")
if RECORDED_STREAM is not None:
    # The same exchange as if the client had not asked for usage (Tollway asks for it instead).
    ASKED_REQUEST = orjson.loads(RECORDED_STREAM["request"]["body"])
    PLAIN_REQUEST = {key: value for key, value in ASKED_REQUEST.items() if key != "stream_options"}
    STREAM_BODY = RECORDED_STREAM["response"]["body"].encode()
    STREAM_EVENTS = sse_events(STREAM_BODY)
    (USAGE_EVENT,) = [event for event in STREAM_EVENTS if b'"usage":{' in event]
    AT_USAGE = STREAM_BODY.index(USAGE_EVENT)
else:  # collected but skipped
    ASKED_REQUEST = PLAIN_REQUEST = {}
    STREAM_BODY = USAGE_EVENT = b"x"
    STREAM_EVENTS, AT_USAGE = [], 0
STREAM_USAGE = dict(input_tokens=12, output_tokens=100, cached_tokens=0, cache_write_tokens=None, reasoning_tokens=100)


def stream_started(body: dict[str, Any], path: str = CHAT) -> Session:
    """A session whose streaming request went out and whose 200 SSE response switched to STREAMED."""
    transcript = (
        Transcript()
        >> post(path)
        << HEADERS_OK
        >> request(body)
        << ANY  # the request body's answer is checked by the tests above
        >> response(200, "text/event-stream; charset=utf-8", at=200)
        << STREAMED
    )
    assert transcript
    return transcript.session


def test_a_streams_length_goes_its_events_may_change_on_the_way() -> None:
    """A buffering proxy may give an event stream a content-length; its events may change on the way
    (a key or a value taken out, a translation) and Envoy refuses a body of another length."""
    sized = ResponseHeaders({":status": "200", "content-type": "text/event-stream", "content-length": "205"}, False,
                            ms(200))
    assert (
        Transcript() >> post(CHAT) << HEADERS_OK >> request({"model": "m", "messages": [], "stream": True}) << ANY
        >> sized << Continue(remove_headers=("content-length",), stream_response=True)
    )


def test_stream_without_client_usage_asks_for_it_in_the_request_body() -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request(PLAIN_REQUEST)
        << Replaces(
            {**PLAIN_REQUEST, "stream_options": {"include_usage": True}},
            set_headers=(("x-tollway-cluster", "openai"), STREAM_LABEL),
            clear_route_cache=True,
        )
    )


def test_stream_without_client_usage_hides_the_usage_chunk() -> None:
    transcript = Transcript(stream_started(PLAIN_REQUEST))
    for i, event in enumerate(STREAM_EVENTS):
        last = i == len(STREAM_EVENTS) - 1
        transcript >> chunk(event, at=250 + i, end_of_stream=last)
        # Whole events pass untouched; only the usage chunk the client did not ask for is cut.
        transcript << (Continue(body=b"") if event == USAGE_EVENT else CONTINUE)
    assert transcript << Record(outcome="ok", stream=True, served_model="gpt-5-nano-2025-08-07", **STREAM_USAGE)


@settings(max_examples=120, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM_BODY)), max_size=10))
@example(cuts=[AT_USAGE + len(b"data: ")])  # inside the usage chunk's field name
@example(cuts=[AT_USAGE + len(USAGE_EVENT) - 1])  # between the two LFs that end it
@example(cuts=[AT_USAGE, AT_USAGE + len(USAGE_EVENT)])  # exactly around it
@example(cuts=[AT_USAGE + 1, len(STREAM_BODY) - 1])  # the last byte alone
@example(cuts=[len(STREAM_BODY)])  # an empty final chunk carries end_of_stream
@example(cuts=list(range(AT_USAGE - 3, AT_USAGE + len(USAGE_EVENT) + 3)))  # byte by byte
def test_usage_chunk_hidden_whatever_the_split(cuts: list[int]) -> None:
    session = stream_started(PLAIN_REQUEST)
    seen = play_stream(session, split(STREAM_BODY, cuts))
    assert seen == STREAM_BODY.replace(USAGE_EVENT, b"")
    assert [r["outcome"] for r in records(session)] == ["ok"]
    assert (session.usage.input_tokens, session.usage.output_tokens) == (12, 100)


def test_stream_with_client_usage_passes_request_and_usage_chunk_untouched() -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request(RECORDED_STREAM["request"]["body"].encode())
        << routed("openai", stream=True)
        >> response(200, "text/event-stream; charset=utf-8")
        << STREAMED
        >> chunk(STREAM_BODY[:AT_USAGE], at=250, end_of_stream=False)  # chunks end on event boundaries
        << CONTINUE
        >> chunk(STREAM_BODY[AT_USAGE:], at=260)
        << CONTINUE
        << Record(outcome="ok", **STREAM_USAGE, latency_ms=260.0, ttft_ms=250.0)
    )


def test_a_chunk_ending_inside_an_event_holds_those_bytes_until_the_event_is_complete() -> None:
    # So that whatever ends the stream (the provider's last event, or Tollway's error event for a
    # cut stream) never lands in the middle of an event the client already half received.
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request(RECORDED_STREAM["request"]["body"].encode())
        << routed("openai", stream=True)
        >> response(200, "text/event-stream; charset=utf-8")
        << STREAMED
        >> chunk(STREAM_BODY[:AT_USAGE + 40], at=250, end_of_stream=False)
        << Continue(body=STREAM_BODY[:AT_USAGE])
        >> chunk(STREAM_BODY[AT_USAGE + 40:], at=260)
        << Continue(body=STREAM_BODY[AT_USAGE:])
        << Record(outcome="ok", **STREAM_USAGE, latency_ms=260.0, ttft_ms=250.0)
    )


@pytest.mark.parametrize(
    "options",
    [{"include_usage": False}, {"include_obfuscation": False}, None],
    ids=["include_usage-false", "other-option", "null"],
)
def test_stream_options_kept_and_usage_turned_on(options: dict[str, Any] | None) -> None:
    body = {"model": "gpt-4o-mini", "messages": [], "stream": True, "stream_options": options}
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request(body)
        << Replaces(
            {**body, "stream_options": {**(options or {}), "include_usage": True}},
            set_headers=(("x-tollway-cluster", "openai"), STREAM_LABEL),
            clear_route_cache=True,
        )
    )


def test_stream_that_asked_for_usage_but_got_none_records_unknown() -> None:
    recorded = cassette("chat-streaming")  # recorded without include_usage: no usage chunk at all
    session = stream_started(orjson.loads(recorded["request"]["body"]))
    body = recorded["response"]["body"].encode()
    assert play_stream(session, split(body, [1000, 5000, 5001])) == body
    (record,) = records(session)
    assert record["outcome"] == "ok"
    assert {key: record[key] for key in NO_USAGE} == NO_USAGE


# ---------------------------------------------------------------------------------------------
# Anthropic streams: usage from message_start and message_delta


def test_anthropic_stream_usage_from_message_start_and_delta() -> None:
    transcript = (
        Transcript()
        >> post(MESSAGES)
        << HEADERS_OK
        >> request({**ANTHROPIC_REQUEST, "stream": True})
        << routed("anthropic", stream=True)
        >> response(200, "text/event-stream; charset=utf-8")
        << STREAMED
    )
    for i, event in enumerate(ANTHROPIC_STREAM_EVENTS):
        transcript >> chunk(event, at=300 + i, end_of_stream=i == len(ANTHROPIC_STREAM_EVENTS) - 1) << CONTINUE
    assert transcript << Record(
        api="anthropic.messages", stream=True, outcome="ok", served_model=ANTHROPIC_MODEL,
        ttft_ms=300.0, latency_ms=307.0, **ANTHROPIC_STREAM_USAGE,
    )


@settings(max_examples=80, deadline=None)
@given(cuts=st.lists(st.integers(0, len(ANTHROPIC_STREAM)), max_size=10))
def test_anthropic_stream_usage_whatever_the_split(cuts: list[int]) -> None:
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    assert play_stream(session, split(ANTHROPIC_STREAM, cuts)) == ANTHROPIC_STREAM
    (record,) = records(session)
    assert {key: record[key] for key in ANTHROPIC_STREAM_USAGE} == ANTHROPIC_STREAM_USAGE
    assert record["outcome"] == "ok"


def test_anthropic_stream_error_event_is_recorded() -> None:
    events = [
        ANTHROPIC_STREAM_EVENTS[0],
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n',
    ]
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    play_stream(session, events)
    assert session.error == "overloaded_error" and session.outcome == "incomplete"


# ---------------------------------------------------------------------------------------------
# When the response body is streamed


@pytest.mark.parametrize(
    ("path", "body", "status", "content_type", "answer"),
    [
        (CHAT, {"model": "m", "messages": [], "stream": True}, 200, "text/event-stream; charset=utf-8", STREAMED),
        (MESSAGES, {**ANTHROPIC_REQUEST, "stream": True}, 200, "text/event-stream", STREAMED),
        (CHAT, {"model": "m", "messages": [], "stream": True}, 429, "application/json", CONTINUE),
        (CHAT, {"model": "m", "messages": [], "stream": True}, 500, "text/event-stream", CONTINUE),
        (MESSAGES, {**ANTHROPIC_REQUEST, "stream": True}, 529, "application/json", CONTINUE),
        (CHAT, {"model": "m", "messages": []}, 200, "text/event-stream", CONTINUE),
        (CHAT, {"model": "m", "messages": [], "stream": False}, 200, "text/event-stream", CONTINUE),
        (MESSAGES, ANTHROPIC_REQUEST, 200, "text/event-stream", CONTINUE),
    ],
    ids=[
        "openai-sse-200", "anthropic-sse-200", "stream-429", "stream-500-sse", "anthropic-529",
        "no-stream-field", "stream-false", "anthropic-no-stream",
    ],
)
def test_streamed_only_for_successful_sse_answers_to_stream_requests(
    path: str, body: dict[str, Any], status: int, content_type: str, answer: Continue
) -> None:
    assert Transcript() >> post(path) << HEADERS_OK >> request(body) << ANY >> response(status, content_type) << answer


# ---------------------------------------------------------------------------------------------
# A successful status with no answer behind it: the client's 502, never a 200 its SDK cannot read

INVALID = "invalid_provider_answer"
HTML = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
CUT_JSON = b'{"id":"chatcmpl-x","object":"chat.completion","choices":[{"index":0,"message":{"content":"Hel'


def _withheld(action: object, family: str) -> dict[str, Any]:
    """The 502 the client got instead (a replaced buffered body, or an answer at the head): its error."""
    if isinstance(action, Continue):
        assert action.body is not None and (":status", "502") in action.set_headers, action
        body = orjson.loads(action.body)
    else:
        assert isinstance(action, Respond) and action.status == 502, action
        body = orjson.loads(action.body)
    if family == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "api_error", body
        return body["error"]  # type: ignore[no-any-return]
    assert body["error"]["code"] == INVALID, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("content_type", "answer"), [
    ("text/html", HTML), ("application/json", b""), ("application/json", CUT_JSON),
    ("application/json", b"[]"), ("application/json", b'"ok"'),
], ids=["html-page", "empty-body", "cut-json", "json-array", "json-string"])
@pytest.mark.parametrize(("path", "body", "family"), [
    (CHAT, {"model": "m", "messages": []}, "openai"), (MESSAGES, ANTHROPIC_REQUEST, "anthropic"),
])
def test_a_buffered_2xx_that_is_not_a_json_object_is_a_502_in_the_clients_format(
    path: str, body: dict[str, Any], family: str, content_type: str, answer: bytes
) -> None:
    transcript = (Transcript() >> post(path) << HEADERS_OK >> request(body) << ANY
                  >> response(200, content_type) << CONTINUE >> chunk(answer) << ANY)
    error = _withheld(transcript.actions[-1], family)
    assert "not an answer" in error["message"] and "Bad Gateway" not in error["message"]  # never the page
    assert transcript << Record(status=502, outcome="error", error=INVALID, provider=family)


def test_a_buffered_2xx_answer_tollway_cannot_decode_passes_as_before() -> None:
    # An encoding Tollway does not read (it asked for identity) is no proof of a bad answer.
    brotli = ResponseHeaders({":status": "200", "content-type": "application/json", "content-encoding": "br"},
                             False, ms(200))
    assert (
        Transcript() >> post(CHAT) << HEADERS_OK >> request({"model": "m", "messages": []}) << ANY
        >> brotli << CONTINUE >> chunk(b"\x8b\x02\x80{}\x03") << CONTINUE
        << Record(status=200, outcome="ok", error=None)
    )


@pytest.mark.parametrize(("path", "body", "family"), [
    (CHAT, {"model": "m", "messages": [], "stream": True}, "openai"),
    (MESSAGES, {**ANTHROPIC_REQUEST, "stream": True}, "anthropic"),
])
@pytest.mark.parametrize("content_type", ["text/html", "application/json", ""])
def test_a_stream_request_answered_2xx_without_an_event_stream_is_a_502_at_the_head(
    path: str, body: dict[str, Any], family: str, content_type: str
) -> None:
    # (its SDK would iterate zero events and return an empty answer, raising nothing)
    head = ResponseHeaders({":status": "200", **({"content-type": content_type} if content_type else {})},
                           False, ms(200))
    transcript = Transcript() >> post(path) << HEADERS_OK >> request(body) << ANY >> head << ANY
    error = _withheld(transcript.actions[-1], family)
    assert "text/event-stream" in error["message"]
    assert transcript << Record(status=502, outcome="error", error=INVALID, provider=family, stream=True)


@pytest.mark.parametrize("stream", [False, True])
def test_a_2xx_head_that_ends_the_answer_is_a_502(stream: bool) -> None:
    head = response(200, "text/event-stream" if stream else "application/json", end_of_stream=True)
    transcript = (Transcript() >> post(CHAT) << HEADERS_OK >> request({"model": "m", "messages": [], "stream": stream})
                  << ANY >> head << ANY)
    assert "no body" in _withheld(transcript.actions[-1], "openai")["message"]
    assert transcript << Record(status=502, outcome="error", error=INVALID)


def test_a_buffered_answer_cut_after_its_head_is_recorded_answer_interrupted() -> None:
    # Tollway held the head for the body: the provider reset it (Envoy answers the client 502) or the
    # client left, which Envoy tells Tollway the same way: the provider's status, blaming neither, and
    # not "stream_interrupted" for a request that never streamed.
    assert (
        Transcript() >> post(CHAT) << HEADERS_OK >> request({"model": "m", "messages": []}) << ANY
        >> response(200) << CONTINUE >> StreamClosed(ms(400))
        << Record(status=200, outcome="incomplete", error="answer_interrupted", latency_ms=400.0)
    )


# ---------------------------------------------------------------------------------------------
# Bad requests are answered at once, in the client's error format

NAME_A_MODEL = "The request must name a model (a string)."
NOT_A_BOOL = "'stream' must be a boolean."
NOT_A_LIST = "'messages' must be an array of messages."
BAD_BODIES = [
    ("empty", b"", "invalid_body", "The request body is empty; expected a JSON object.", None),
    ("blank", b" \r\n\t", "invalid_body", "The request body is empty; expected a JSON object.", None),
    ("not-json", b'{"model": "m",', "invalid_json", ANY, None),
    ("json-array", b'[{"model": "m"}]', "invalid_body", "The request body must be a JSON object.", None),
    ("json-string", b'"hello"', "invalid_body", "The request body must be a JSON object.", None),
    ("no-model", {"messages": []}, "missing_model", NAME_A_MODEL, "model"),
    ("model-number", {"model": 4, "messages": []}, "missing_model", NAME_A_MODEL, "model"),
    ("model-empty", {"model": "", "messages": []}, "missing_model", NAME_A_MODEL, "model"),
    ("stream-string", {"model": "m", "messages": [], "stream": "yes"}, "invalid_type", NOT_A_BOOL, "stream"),
    ("stream-number", {"model": "m", "messages": [], "stream": 1}, "invalid_type", NOT_A_BOOL, "stream"),
    ("messages-object", {"model": "m", "messages": {"role": "user"}}, "invalid_type", NOT_A_LIST, "messages"),
    ("messages-string", {"model": "m", "messages": "hi"}, "invalid_type", NOT_A_LIST, "messages"),
]


bad_bodies = pytest.mark.parametrize(
    ("body", "code", "message", "param"), [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES]
)


@bad_bodies
def test_bad_chat_body_gets_openai_400(body: Any, code: str, message: Any, param: str | None) -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request(body, at=3)
        << Responds(400, openai_error(message, code, param=param), headers=CONTENT_TYPE_JSON)
        << Record(
            outcome="rejected", status=400, error=code, provider=None, api="openai.chat.completions", latency_ms=3.0
        )
    )


@bad_bodies
def test_bad_messages_body_gets_anthropic_400(body: Any, code: str, message: Any, param: str | None) -> None:
    assert (
        Transcript()
        >> post(MESSAGES)
        << HEADERS_OK
        >> request(body)
        << Responds(400, anthropic_error(message), headers=CONTENT_TYPE_JSON)
        << Record(outcome="rejected", status=400, error=code, provider=None, api="anthropic.messages")
    )


@pytest.mark.parametrize("options", ["usage", True, ["include_usage"], 1])
def test_stream_options_not_an_object_gets_400(options: Any) -> None:
    body = {"model": "m", "messages": [], "stream": True, "stream_options": options}
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request(body)
        << Responds(400, openai_error("'stream_options' must be an object.", "invalid_type", param="stream_options"))
        << Record(outcome="rejected", status=400, error="invalid_type", provider=None)
    )


def test_completions_and_embeddings_need_no_messages_field() -> None:
    for path, body in [(COMPLETIONS, {"model": "m", "prompt": "hi"}), (EMBEDDINGS, {"model": "m", "input": "hi"})]:
        assert Transcript() >> post(path) << HEADERS_OK >> request(body) << routed("openai")


def test_missing_messages_is_refused_in_the_clients_format() -> None:
    """A body without the field that holds its text would go out with its text (``input`` sent to
    chat) unread by the guardrails: refused in the provider's own words, the provider never asked."""
    body = {"model": "gpt-5-nano", "input": "AKIA" + "IOSFODNN7EXAMPLE"}
    assert (
        Transcript() >> post(CHAT) << HEADERS_OK >> request(body)
        << Responds(400, openai_error("Missing required parameter: 'messages'.", "missing_required_parameter",
                                      param="messages"), headers=CONTENT_TYPE_JSON)
        << Record(outcome="rejected", status=400, error="missing_required_parameter", provider=None)
    )
    assert (
        Transcript() >> post(MESSAGES) << HEADERS_OK >> request({**body, "max_tokens": 5})
        << Responds(400, anthropic_error("messages: Field required"), headers=CONTENT_TYPE_JSON)
        << Record(outcome="rejected", status=400, error="missing_required_parameter", provider=None)
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/models", openai_error("Tollway does not serve POST /v1/models.", "unknown_endpoint")),
        ("GET", CHAT, openai_error("Tollway does not serve GET /v1/chat/completions.", "unknown_endpoint")),
        ("POST", "/v2/chat?key=secret", openai_error("Tollway does not serve POST /v2/chat.", "unknown_endpoint")),
        (
            "POST", "/v1/messages/batches",
            anthropic_error("Tollway does not serve POST /v1/messages/batches.", type="not_found_error"),
        ),
        (
            "GET", "/v1/messages?beta=true",
            anthropic_error("Tollway does not serve GET /v1/messages.", type="not_found_error"),
        ),
        (  # the anthropic SDK's Files API: its path is no Messages path, its anthropic-version header says
            "GET", "/v1/files",
            anthropic_error("Tollway does not serve GET /v1/files.", type="not_found_error"),
        ),
        # CONNECT has no path: what it asks to reach is named (it read "Tollway does not serve CONNECT .")
        ("CONNECT", "", openai_error("Tollway does not serve CONNECT api.openai.com:443.", "unknown_endpoint")),
    ],
    ids=["unknown-path", "get", "query-not-echoed", "anthropic-style", "anthropic-get", "anthropic-version",
         "connect"],
)
def test_unknown_endpoint_gets_404(method: str, path: str, expected: dict[str, Any]) -> None:
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/files" else {}
    if method == "CONNECT":
        headers = {":authority": "api.openai.com:443"}
    assert (
        Transcript()
        >> post(path, at=0.5, **{":method": method}, **headers)
        << Responds(404, expected, headers=CONTENT_TYPE_JSON)
        << Record(api=None, outcome="rejected", status=404, error="unknown_endpoint", latency_ms=0.0)
    )


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "/v1/messages?beta=true", "/v1/embeddings?api-version=1"])
def test_known_endpoint_ignores_query_and_trailing_slash(path: str) -> None:
    assert Transcript() >> post(path) << HEADERS_OK


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (CHAT, openai_error("The request body is empty; expected a JSON object.", "invalid_body")),
        (MESSAGES, anthropic_error("The request body is empty; expected a JSON object.")),
    ],
)
def test_request_without_body_gets_400_at_headers(path: str, expected: dict[str, Any]) -> None:
    assert (
        Transcript()
        >> post(path, end_of_stream=True)
        << Responds(400, expected)
        << Record(outcome="rejected", status=400, error="invalid_body")
    )


# ---------------------------------------------------------------------------------------------
# Compressed request bodies

PLAIN = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'


@pytest.mark.parametrize("encoding", ["gzip", " GZip "])
def test_gzip_request_body_is_forwarded_decoded(encoding: str) -> None:
    assert (
        Transcript()
        >> post(CHAT, content_encoding=encoding)
        << HEADERS_OK
        >> request(gzip.compress(PLAIN))
        << Continue(
            set_headers=(("x-tollway-cluster", "openai"), ("content-length", str(len(PLAIN)))),
            remove_headers=("content-encoding",),
            body=PLAIN,  # byte for byte: not re-encoded when nothing changed
            clear_route_cache=True,
        )
    )


def test_gzip_stream_request_is_decoded_and_asks_for_usage() -> None:
    body = {"model": "gpt-4o-mini", "messages": [], "stream": True}
    assert (
        Transcript()
        >> post(CHAT, content_encoding="gzip")
        << HEADERS_OK
        >> request(gzip.compress(orjson.dumps(body)))
        << Replaces(
            {**body, "stream_options": {"include_usage": True}},
            set_headers=(("x-tollway-cluster", "openai"), STREAM_LABEL),
            remove_headers=("content-encoding",),
            clear_route_cache=True,
        )
    )


CORRUPT = "The gzip-encoded request body is corrupt."


@pytest.mark.parametrize(
    ("compressed", "message"),
    [
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff", CORRUPT),  # reserved block type
        (b"\x1f\x8b\x08\x00", "The gzip-encoded request body is truncated."),  # a header cut short
        (b"not gzip at all", CORRUPT),
        (gzip.compress(PLAIN) + b"trailing garbage", CORRUPT),
        (gzip.compress(PLAIN)[:-12], "The gzip-encoded request body is truncated."),
        (gzip.compress(PLAIN)[:-4], "The gzip-encoded request body is truncated."),
    ],
    ids=[
        "bad-deflate", "cut-in-the-header", "no-gzip-header", "trailing-garbage", "cut-in-the-data",
        "cut-in-the-trailer",
    ],
)
def test_corrupt_gzip_gets_400(compressed: bytes, message: str) -> None:
    assert (
        Transcript()
        >> post(MESSAGES, content_encoding="gzip")
        << HEADERS_OK
        >> request(compressed)
        << Responds(400, anthropic_error(message))
        << Record(outcome="rejected", status=400, error="invalid_body")
    )


@pytest.mark.parametrize(("size", "accepted"), [(1023, True), (1024, True), (1025, False)])
def test_decoded_size_limit_is_exact(monkeypatch: pytest.MonkeyPatch, size: int, accepted: bool) -> None:
    monkeypatch.setattr(apis.base, "MAX_DECODED_BODY", 1024)
    plain = PLAIN + b" " * (size - len(PLAIN))
    half = len(plain) // 2
    for compressed in (gzip.compress(plain), gzip.compress(plain[:half]) + gzip.compress(plain[half:])):
        session = Session()
        session.handle(post(CHAT, content_encoding="gzip"))
        action = session.handle(request(compressed))
        assert isinstance(action, Continue) is accepted, action
        if accepted:
            assert action.body == plain


def test_gzip_bomb_gets_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apis.base, "MAX_DECODED_BODY", 1024)
    assert (
        Transcript()
        >> post(CHAT, content_encoding="gzip")
        << HEADERS_OK
        >> request(gzip.compress(b" " * 4096 + PLAIN))
        << Responds(413, openai_error("The decompressed request body is too large.", "body_too_large"))
        << Record(outcome="rejected", status=413, error="body_too_large")
    )


def test_multi_member_gzip_is_decoded_whole() -> None:
    """RFC 1952: a gzip body is a series of members."""
    compressed = gzip.compress(PLAIN[:20]) + gzip.compress(PLAIN[20:])
    assert gzip.decompress(compressed) == PLAIN
    transcript = Transcript() >> post(CHAT, content_encoding="gzip") << HEADERS_OK >> request(compressed)
    assert transcript << Continue(
        set_headers=(("x-tollway-cluster", "openai"), ("content-length", str(len(PLAIN)))),
        remove_headers=("content-encoding",),
        body=PLAIN,
        clear_route_cache=True,
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (CHAT, openai_error("Unsupported content-encoding 'br'.", "unsupported_encoding")),
        (MESSAGES, anthropic_error("Unsupported content-encoding 'br'.", type="invalid_request_error")),
    ],
)
def test_unsupported_content_encoding_gets_415(path: str, expected: dict[str, Any]) -> None:
    assert (
        Transcript()
        >> post(path, content_encoding="br")
        << Responds(415, expected)
        << Record(outcome="rejected", status=415, error="unsupported_encoding")
    )


# ---------------------------------------------------------------------------------------------
# Error answers: Envoy's plain text rewritten, the provider's JSON passed through


NO_UPSTREAM = "The provider did not answer: no healthy upstream"


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (CHAT, {"model": "m", "messages": []}, openai_error(NO_UPSTREAM, "provider_unavailable", type="server_error")),
        (MESSAGES, ANTHROPIC_REQUEST, anthropic_error(NO_UPSTREAM, type="api_error")),
    ],
)
def test_envoy_plain_text_error_becomes_client_json(path: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert (
        Transcript()
        >> post(path)
        << HEADERS_OK
        >> request(body)
        << routed("anthropic" if path == MESSAGES else "openai")
        >> response(503, "text/plain", at=5)
        << CONTINUE
        >> chunk(b"no healthy upstream", at=6)
        << Replaces(expected, set_headers=CONTENT_TYPE_JSON)
        << Record(status=503, outcome="error", error="provider_unavailable", latency_ms=6.0, **NO_USAGE)
    )


def test_compressed_plain_text_error_is_read_and_sent_uncompressed() -> None:
    page = b"<html><body>502 Bad Gateway</body></html>"
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request({"model": "m", "messages": []})
        << routed()
        >> ResponseHeaders({":status": "502", "content-type": "text/html", "content-encoding": "gzip"}, False, ms(5))
        << CONTINUE
        >> chunk(gzip.compress(page), at=6)
        << Replaces(
            openai_error(f"The provider 'openai' answered 502 with a body that is not JSON (an HTML page of "
                         f"{len(page)} bytes); Tollway does not pass it on.", "provider_error", type="server_error"),
            set_headers=CONTENT_TYPE_JSON,
            remove_headers=("content-encoding",),
        )
        << Record(status=502, outcome="error", error="provider_error")
    )


_SSE_429 = b'event: error\ndata: {"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}}\n\n'
_DENIED = b"<html><head><title>Access denied | example.com</title></head><body>no</body></html>"
_KEYED_403 = b"<html><head><title>Denied for sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w</title></head><body>x</body></html>"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "code", "said"),
    [
        (429, "text/plain", b"Too Many Requests\n", "rate_limit_exceeded", "18 bytes"),
        (429, "text/event-stream", _SSE_429, "rate_limit_exceeded", f"{len(_SSE_429)} bytes"),
        (403, "text/html", _DENIED, "provider_error",
         f'an HTML page of {len(_DENIED)} bytes titled "Access denied | example.com"'),
        (403, "text/html", _KEYED_403, "provider_error", f"an HTML page of {len(_KEYED_403)} bytes"),
        (500, "text/plain", b"Internal Server Error", "provider_error", "21 bytes"),
        (400, "text/plain", b"", "provider_error", "an empty body"),
    ],
    ids=["plain-429", "sse-429", "html-403", "html-403-key-in-title", "plain-500", "empty-400"],
)
@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_providers_non_json_error_names_the_provider_and_its_status(
        client: str, status: int, content_type: str, body: bytes, code: str, said: str) -> None:
    """A provider's (or its proxy's) error that is no JSON was told as the gateway's (\"The request
    failed at the gateway\", ``gateway_error``) or as no answer at all (``provider_unavailable``):
    Envoy's own replies are JSON (its local_reply_config), so this one is the provider's. Its body
    is never quoted, but for an HTML page's plain title."""
    path, payload = (CHAT, {"model": "m", "messages": []}) if client == "openai" else (MESSAGES, ANTHROPIC_REQUEST)
    session = Session()
    session.handle(post(path))
    session.handle(request(payload))
    session.handle(response(status, content_type))
    action = session.handle(chunk(body))
    assert isinstance(action, Continue) and action.body is not None
    error = orjson.loads(action.body)["error"]
    message = (f"The provider '{'openai' if client == 'openai' else 'anthropic'}' answered {status} with a body "
               f"that is not JSON ({said}); Tollway does not pass it on.")
    assert error["message"] == message, error
    if client == "openai":
        assert error["code"] == code
    else:
        assert error["type"] == ("rate_limit_error" if status == 429 else anthropic_type(status))
    assert b"sk-proj" not in action.body and b"Rate limit" not in action.body
    (record,) = [effect.record for effect in session.effects if isinstance(effect, EmitRecord)]
    assert (record["status"], record["outcome"], record["error"]) == (status, "error", code)


def anthropic_type(status: int) -> str:
    from ext_proc.llm.apis.anthropic import error_type

    return error_type(status)


def test_empty_envoy_error_body_is_explained() -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> request({"model": "m", "messages": []})
        << routed()
        >> response(504, "text/plain")
        << CONTINUE
        >> chunk(b"")
        << Replaces(
            openai_error("The provider did not answer: no response body", "provider_unavailable", type="server_error"),
            set_headers=CONTENT_TYPE_JSON,
        )
        << Record(status=504, outcome="error")
    )


@pytest.mark.parametrize(
    ("name", "path", "code"),
    [
        ("chat-bad-request", CHAT, "unsupported_parameter"),
        ("chat-unknown-model", CHAT, "model_not_found"),
        ("completion-unknown-model", COMPLETIONS, "model_not_found"),
        ("embeddings-bad-request", EMBEDDINGS, "invalid_request_error"),
    ],
)
def test_provider_json_error_passes_unchanged_with_its_code(name: str, path: str, code: str) -> None:
    recorded = cassette(name)
    assert (
        Transcript()
        >> post(path)
        << HEADERS_OK
        >> request(recorded["request"]["body"].encode())
        << routed()
        >> response(recorded["response"]["code"], recorded["response"]["headers"]["Content-Type"][0])
        << CONTINUE
        >> chunk(recorded["response"]["body"])
        << CONTINUE
        << Record(status=recorded["response"]["code"], outcome="error", error=code, **NO_USAGE)
    )


@pytest.mark.parametrize(
    ("path", "status", "body", "code"),
    [
        (MESSAGES, 529, anthropic_error("Overloaded", type="overloaded_error"), "overloaded_error"),
        (CHAT, 500, {"error": "something broke"}, "provider_error"),
        (CHAT, 429, {"error": {"message": "slow down", "type": "requests", "code": None}}, "requests"),
        # A code that is no code (free text quoting the key the provider got, or unbounded) is not
        # copied into the record, span and logs: its type when that is a code, else provider_error.
        (CHAT, 400, {"error": {"message": "bad", "type": "x", "code": "bad key Bearer sk-live-0123456789"}}, "x"),
        (CHAT, 400, {"error": {"message": "bad", "type": "Bearer sk-1", "code": "k" * 65}}, "provider_error"),
        (CHAT, 400, {"error": {"message": "bad", "type": "", "code": "model.not_found:v1"}}, "model.not_found:v1"),
    ],
)
def test_provider_error_code_read_from_its_json(path: str, status: int, body: Any, code: str) -> None:
    request_body = ANTHROPIC_REQUEST if path == MESSAGES else {"model": "m", "messages": []}
    assert (
        Transcript()
        >> post(path)
        << HEADERS_OK
        >> request(request_body)
        << ANY
        >> response(status)
        << CONTINUE
        >> chunk(orjson.dumps(body))
        << CONTINUE
        << Record(status=status, outcome="error", error=code)
    )


def test_envoy_answer_before_the_request_body_was_processed() -> None:
    """Envoy's own 413 (body over its buffer limit) arrives while we wait for the request body."""
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> response(413, "text/plain", at=2)
        << CONTINUE
        >> chunk(b"Payload Too Large", at=3)
        << Replaces(
            openai_error("The request is too large for the gateway: Payload Too Large", "request_too_large"),
            set_headers=CONTENT_TYPE_JSON,
        )
        << Record(api="openai.chat.completions", model=None, provider=None, status=413, outcome="rejected",
                  latency_ms=3.0)
    )


def test_envoys_codec_refusing_the_framing_is_the_clients_error_not_the_providers() -> None:
    """Envoy's HTTP/1 codec refuses a request's framing (``transfer-encoding: gzip, chunked``: 501; a
    bad chunk size: 400) before any provider is asked: a refusal, never ``provider_unavailable``."""
    for status, text in ((501, b"Not Implemented"), (400, b"Bad Request")):
        assert (
            Transcript()
            >> post(CHAT)
            << HEADERS_OK
            >> response(status, "text/plain", at=2)
            << CONTINUE
            >> chunk(text, at=3)
            << Replaces(openai_error(f"The gateway could not read the request's HTTP framing: {text.decode()}. "
                                     "Nothing was sent to a provider.", "bad_request_framing",
                                     type="server_error" if status >= 500 else "invalid_request_error"),
                        set_headers=CONTENT_TYPE_JSON)
            << Record(provider=None, status=status, outcome="rejected", error="bad_request_framing")
        )


def test_headers_only_answer_ends_the_request() -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> response(502, at=4, end_of_stream=True)
        << CONTINUE
        << Record(status=502, outcome="error", latency_ms=4.0)
        >> StreamClosed(ms(5))
    )


# ---------------------------------------------------------------------------------------------
# Streams that end badly: one record, usage seen so far


def test_stream_closed_midway_records_usage_seen_so_far_once() -> None:
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    assert (
        Transcript(session)
        >> chunk(b"".join(ANTHROPIC_STREAM_EVENTS[:4]), at=300, end_of_stream=False)
        << CONTINUE
        >> chunk(ANTHROPIC_STREAM_EVENTS[4][:30], at=310, end_of_stream=False)
        << Continue(body=b"")  # half an event: held back
        >> StreamClosed(ms(400))
        # The input count message_start reported stays; its output_tokens (1) is a placeholder, not
        # the count (no accountant here to count the text: unknown).
        # Cut before its end (reset by the provider, or the client gone): stream_interrupted, as a
        # stream the provider ended early is.
        << Record(
            outcome="incomplete", status=200, error="stream_interrupted", input_tokens=2112, output_tokens=None,
            cached_tokens=2000, cache_write_tokens=100, latency_ms=400.0, ttft_ms=300.0,
        )
        >> StreamClosed(ms(401))  # nothing more: exactly one record
    )


def test_a_stream_closed_by_the_client_after_its_end_event_is_complete_not_cut() -> None:
    # The openai SDK closes the response at [DONE]; the provider's end of body may come later.
    transcript = Transcript(stream_started(PLAIN_REQUEST))
    for i, event in enumerate(STREAM_EVENTS):
        transcript >> chunk(event, at=250 + i, end_of_stream=False)
        transcript << (Continue(body=b"") if event == USAGE_EVENT else CONTINUE)
    transcript >> StreamClosed(ms(300))
    assert transcript << Record(outcome="ok", stream=True, served_model="gpt-5-nano-2025-08-07", latency_ms=300.0,
                                **STREAM_USAGE)


def test_openai_stream_closed_before_usage_records_unknown_usage() -> None:
    session = stream_started(PLAIN_REQUEST)
    assert (
        Transcript(session)
        >> chunk(STREAM_EVENTS[0] + STREAM_EVENTS[1][:10], at=250, end_of_stream=False)
        << Continue(body=STREAM_EVENTS[0])  # the unfinished event waits for its end
        >> StreamClosed(ms(260))
        << Record(outcome="incomplete", error="stream_interrupted", **NO_USAGE)
    )


def test_a_stream_closed_after_the_providers_error_event_keeps_the_providers_error() -> None:
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    overloaded = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    assert (
        Transcript(session)
        >> chunk(ANTHROPIC_STREAM_EVENTS[0] + overloaded, at=300, end_of_stream=False) << CONTINUE
        >> StreamClosed(ms(400))
        << Record(outcome="incomplete", status=200, error="overloaded_error")
    )


def test_stream_closed_after_the_end_adds_nothing() -> None:
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    play_stream(session, [ANTHROPIC_STREAM])
    assert [r["outcome"] for r in records(session)] == ["ok"]
    assert session.handle(StreamClosed(ms(999))) is None
    assert records(session) == []


def test_stream_closed_while_waiting_for_the_request_body() -> None:
    assert (
        Transcript()
        >> post(CHAT)
        << HEADERS_OK
        >> StreamClosed(ms(30))
        << Record(outcome="incomplete", status=None, model=None, latency_ms=30.0, **NO_USAGE)
    )


def test_openai_stream_without_done_is_incomplete() -> None:
    session = stream_started(ASKED_REQUEST)
    play_stream(session, STREAM_EVENTS[:-1])  # usage arrived, [DONE] did not
    (record,) = records(session)
    assert record["outcome"] == "incomplete"
    assert {key: record[key] for key in STREAM_USAGE} == STREAM_USAGE


def test_anthropic_stream_without_message_stop_is_incomplete() -> None:
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    play_stream(session, ANTHROPIC_STREAM_EVENTS[:-1])
    (record,) = records(session)
    assert record["outcome"] == "incomplete"
    assert {key: record[key] for key in ANTHROPIC_STREAM_USAGE} == ANTHROPIC_STREAM_USAGE


@settings(max_examples=60, deadline=None)
@given(
    stop=st.integers(0, len(ANTHROPIC_STREAM_EVENTS) - 1),
    ends=st.sampled_from(["closed", "end_of_stream"]),
    closes=st.integers(1, 3),
)
def test_never_more_than_one_record(stop: int, ends: str, closes: int) -> None:
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    chunks = ANTHROPIC_STREAM_EVENTS[:stop] or [b""]
    for data in chunks[:-1]:
        session.handle(chunk(data, end_of_stream=False))
    session.handle(chunk(chunks[-1], end_of_stream=ends == "end_of_stream"))
    for i in range(closes):
        session.handle(StreamClosed(ms(900 + i)))
    assert len(records(session)) == 1
    assert session.phase is Phase.DONE


def test_latency_and_ttft_come_from_event_times() -> None:
    """Milliseconds from the request's arrival, to the microsecond; ttft is the first streamed byte."""
    session = stream_started({**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    assert (
        Transcript(session)
        >> ResponseBody(b"", False, ms(100))  # an empty chunk is no first token
        << CONTINUE
        >> ResponseBody(ANTHROPIC_STREAM, False, T0 + 250_123_456)
        << CONTINUE
        >> ResponseBody(b"", True, T0 + 1_000_000_499)
        << CONTINUE
        << Record(outcome="ok", ttft_ms=250.123, latency_ms=1000.0)
    )


# ---------------------------------------------------------------------------------------------
# Impossible sequences are internal faults


def _after_request() -> list[Any]:
    return [post(CHAT), request({"model": "m", "messages": []})]


@pytest.mark.parametrize(
    ("events", "phase"),
    [
        ([request({"model": "m"})], "request_headers"),
        ([post(CHAT), post(CHAT)], "request_body"),
        ([*_after_request(), request({"model": "m", "messages": []})], "response_headers"),
        ([*_after_request(), chunk(b"{}")], "response_headers"),
        ([*_after_request(), response(200), response(200)], "response_body"),
        ([*_after_request(), response(200), chunk(b"{}"), chunk(b"{}")], "done"),
        ([post("/nope"), request(b"{}")], "done"),
        ([post(CHAT), request(b"[]"), response(400)], "done"),
    ],
    ids=[
        "body-before-headers", "headers-twice", "body-twice", "response-body-before-headers",
        "response-headers-twice", "body-after-end", "body-after-404", "response-after-400",
    ],
)
def test_impossible_sequence_raises_protocol_error(events: list[Any], phase: str) -> None:
    session = Session()
    *before, impossible = events
    for event in before:
        session.handle(event)
    with pytest.raises(ProtocolError, match=f"unexpected {type(impossible).__name__} in phase {phase}"):
        session.handle(impossible)


# ---------------------------------------------------------------------------------------------
# Real recorded responses replayed: the recorded usage comes out exactly

CASSETTE_NAMES = sorted(path.stem for path in CASSETTES.glob("*.yaml"))


def client_path(url: str) -> str:
    """The OpenAI path a client uses for a recorded URL (Azure deployments speak the same API)."""
    path = urlsplit(url).path
    if path.startswith("/openai/deployments/"):
        return "/v1/" + path.split("/", 4)[4]
    return path


def recorded_usage(body: str, stream: bool) -> dict[str, Any] | None:
    if not stream:
        return orjson.loads(body).get("usage")
    usage = None
    for line in body.splitlines():
        if line.startswith("data: {"):
            usage = orjson.loads(line[6:]).get("usage") or usage
    return usage


@pytest.mark.parametrize("name", CASSETTE_NAMES)
def test_recorded_exchange_yields_recorded_usage(name: str) -> None:
    recorded = cassette(name)
    path = client_path(recorded["request"]["url"])
    assert path in (CHAT, COMPLETIONS, EMBEDDINGS), path
    stream = orjson.loads(recorded["request"]["body"]).get("stream") is True
    code = recorded["response"]["code"]
    body = recorded["response"]["body"].encode()

    session = Session()
    session.handle(post(path))
    session.handle(request(recorded["request"]["body"].encode()))
    answer = session.handle(response(code, recorded["response"]["headers"]["Content-Type"][0]))
    assert answer == (STREAMED if stream and code == 200 else CONTINUE)
    if stream:
        cuts = [len(body) * i // 7 for i in range(1, 7)]  # several chunks, cut anywhere
        assert play_stream(session, split(body, cuts)) == body  # no recording asked-for-us usage
    else:
        assert session.handle(chunk(body)) == CONTINUE
    (record,) = records(session)

    assert record["status"] == code
    if code >= 400:
        error = orjson.loads(body)["error"]
        assert (record["outcome"], record["error"]) == ("error", error.get("code") or error["type"])
    else:
        assert record["outcome"] == "ok" and record["error"] is None
    usage = recorded_usage(recorded["response"]["body"], stream) if code == 200 else None
    if usage is None:
        assert {key: record[key] for key in NO_USAGE} == NO_USAGE
        return
    assert record["input_tokens"] == usage["prompt_tokens"]
    assert record["output_tokens"] == usage.get("completion_tokens", 0)
    assert record["cached_tokens"] == (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    assert record["reasoning_tokens"] == (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    assert record["cache_write_tokens"] is None


def test_envoy_answer_before_any_request_message() -> None:
    """A local reply from Envoy is the first message Tollway sees (e.g. a filter before ext_proc answered)."""
    assert (
        Transcript()
        >> response(413, "text/plain", at=40)
        << CONTINUE
        >> chunk(b"Payload Too Large", at=41)
        << Replaces(
            openai_error("The request is too large for the gateway: Payload Too Large", "request_too_large"),
            set_headers=CONTENT_TYPE_JSON,
        )
        << Record(api=None, request_id=None, status=413, outcome="rejected", latency_ms=1.0)
    )


def test_a_body_before_the_headers_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unexpected RequestBody in phase request_headers"):
        Session().handle(request({"model": "m", "messages": []}))


def test_open_mode_sends_no_credential_from_the_query_string() -> None:
    """No policy: the caller's own key goes on in its header, never one from the URL's query."""
    key = "tw-open-0123456789abcdefghijklmnopqrstuv"
    head = RequestHeaders({":method": "GET", ":path": f"/v1/models?api_key={key}&limit=2"}, True, 0)
    action = Session().handle(head)
    assert isinstance(action, Continue) and dict(action.set_headers)[":path"] == "/v1/models?limit=2"
    session = Session()
    assert isinstance(session.handle(RequestHeaders({":method": "POST", ":path": f"{CHAT}?key={key}"}, False, 0)),
                      Continue)
    sent = session.handle(RequestBody(orjson.dumps({"model": "m", "messages": []}), True, 1))
    assert isinstance(sent, Continue) and dict(sent.set_headers)[":path"] == CHAT and key not in repr(sent)


def test_a_clients_envoy_headers_never_go_upstream() -> None:
    """Envoy's router reads a client's x-envoy-retry-on and timeouts, the per-try filter its
    x-envoy-is-timeout-retry: every x-envoy-* header a client sends is removed, GET and POST."""
    forged = {"x-envoy-is-timeout-retry": "true", "x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "1"}
    action = Session().handle(RequestHeaders({":method": "GET", ":path": "/v1/models", **forged}, True, 0))
    assert isinstance(action, Continue) and set(forged) <= set(action.remove_headers)
    action = Session().handle(RequestHeaders({":method": "POST", ":path": CHAT, **forged}, False, 0))
    assert isinstance(action, Continue) and set(forged) <= set(action.remove_headers)
