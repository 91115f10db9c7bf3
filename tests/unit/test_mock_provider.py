"""The fake provider, driven by the real ``openai`` and ``anthropic`` SDKs and by raw sockets.

One server runs in a background thread for the module (with the recorded cassettes loaded);
a few tests start their own. The pure layers (token rules, renderers, ``wire``, the connection
parser) are also tested without sockets.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httptools
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.mock import responses as r
from ext_proc.mock.cassettes import Cassette, load_cassettes, split_events
from ext_proc.mock.provider import (
    MockProvider,
    Options,
    Reply,
    Request,
    _Connection,
    add_arguments,
    background,
    options_from_args,
    wire,
)
from tests.fakes import FakeTransport
from tests.fixtures import CASSETTES

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture(scope="module")
def srv():
    with background(Options(cassettes=str(CASSETTES))) as server:
        yield server


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the gateway please"},
]
# 3 + (3 + 3 words) + (3 + 6 words)
MESSAGES_TOKENS = 18


# ---------------------------------------------------------------------------------------------
# Raw HTTP helpers


class _Responses:
    """Collects the responses of one connection with httptools' response parser."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None

    def on_message_begin(self) -> None:
        self.current = {"headers": {}, "body": b"", "chunked": False}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current["headers"][name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.current["status"] = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.current["body"] += body

    def on_message_complete(self) -> None:
        self.done.append(self.current)
        self.current = None


def raw_exchange(
    port: int, data: bytes | list[bytes], expect: int, *, linger: float = 0.0, timeout: float = 5.0
) -> tuple[_Responses, bool]:
    """Send ``data`` (pieces sent separately), read until ``expect`` responses or EOF.

    Returns the collector and whether the server closed the connection (seen while reading, or
    within ``linger`` seconds after the last expected response).
    """
    out = _Responses()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for piece in [data] if isinstance(data, bytes) else data:
            sock.sendall(piece)
            time.sleep(0.01)
        deadline = time.monotonic() + timeout
        while len(out.done) < expect and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            out.parser.feed_data(chunk)
        if not closed and linger > 0:
            sock.settimeout(linger)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False
    return out, closed


def post(path: str, body: bytes, headers: dict[str, str] | None = None, *, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: mock", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:20], body[20:]) if part)
        payload += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def sse_data(body: bytes) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded ([DONE] kept as a string)."""
    out = []
    for block in split_events(body):
        for line in block.splitlines():
            if line.startswith(b"data: "):
                out.append("[DONE]" if line[6:] == b"[DONE]" else orjson.loads(line[6:]))
    return out


CHAT = orjson.dumps({"model": "gpt-test", "messages": MESSAGES})
ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


# ---------------------------------------------------------------------------------------------
# OpenAI SDK


def test_chat_json(oai):
    completion = oai.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "".join(r.reply_pieces(8))
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        MESSAGES_TOKENS,
        8,
        MESSAGES_TOKENS + 8,
    )
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_stream_without_include_usage_has_no_usage(oai, srv):
    chunks = list(
        oai.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, extra_headers={"x-mock-chunks": "5"}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert contents == list(r.reply_pieces(5))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    # and not even a "usage" key on the wire
    resp, _ = raw_exchange(
        srv.port, post("/v1/chat/completions", orjson.dumps({"model": "m", "messages": MESSAGES, "stream": True})), 1
    )
    assert resp.done[0]["headers"]["content-type"].startswith("text/event-stream")
    assert resp.done[0]["headers"]["transfer-encoding"] == "chunked"
    assert b"usage" not in resp.done[0]["body"]
    assert resp.done[0]["body"].endswith(b"data: [DONE]\n\n")


def test_chat_stream_include_usage_matches_json(oai):
    json_usage = oai.chat.completions.create(model="gpt-test", messages=MESSAGES).usage
    chunks = list(
        oai.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage == json_usage
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == "".join(r.reply_pieces(8))


def test_chat_max_tokens_truncates(oai):
    completion = oai.chat.completions.create(model="gpt-test", messages=MESSAGES, max_completion_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_completions_json_stream_and_batch(oai):
    done = oai.completions.create(model="babbage-002", prompt="def fib(n):")
    assert done.object == "text_completion"
    assert done.choices[0].text == "".join(r.reply_pieces(8))
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (2, 8)

    chunks = list(
        oai.completions.create(
            model="babbage-002", prompt="def fib(n):", stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == done.usage
    assert "".join(c.choices[0].text for c in chunks[:-1]) == done.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "stop"
    plain = list(oai.completions.create(model="babbage-002", prompt="def fib(n):", stream=True))
    assert all(c.usage is None for c in plain)

    batch = oai.completions.create(model="babbage-002", prompt=["one two", "three"], max_tokens=4)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].finish_reason == "length"
    assert (batch.usage.prompt_tokens, batch.usage.completion_tokens) == (3, 8)


def test_embeddings_float_base64_tokens(oai, srv):
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input=["hello world", "bye"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 3
    # the SDK asks for base64 by default and decodes it
    decoded = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    sized = oai.embeddings.create(model="e", input="x y z", dimensions=16, encoding_format="float")
    assert len(sized.data[0].embedding) == 16 and sized.usage.prompt_tokens == 3
    tokens = oai.embeddings.create(model="e", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5

    resp, _ = raw_exchange(
        srv.port, post("/v1/embeddings", b'{"model":"e","input":"a b","encoding_format":"base64"}'), 1
    )
    body = orjson.loads(resp.done[0]["body"])
    vector = struct.unpack("<8f", base64.b64decode(body["data"][0]["embedding"]))
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-5
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(
    ("status", "exc", "kind"),
    [
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (529, openai.InternalServerError, "server_error"),
        (401, openai.AuthenticationError, "invalid_request_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_errors(oai, status, exc, kind, stream):
    with pytest.raises(exc) as info:
        oai.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=stream, extra_headers={"x-mock-status": str(status)}
        )
    assert info.value.status_code == status
    assert info.value.body["type"] == kind
    assert set(info.value.body) == {"message", "type", "param", "code"}
    if status == 429:
        assert info.value.body["code"] == "rate_limit_exceeded"


# ---------------------------------------------------------------------------------------------
# Anthropic SDK


def test_messages_json(ant):
    message = ant.messages.create(
        model="claude-test", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi there"}]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "claude-test"
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(r.reply_pieces(8))
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # 3 + 2 words of system + (3 + 2 words)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 8)
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0


def test_messages_stream_events_and_usage(ant):
    kwargs: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}],
        "extra_headers": {"x-mock-chunks": "6"},
    }
    full = ant.messages.create(**kwargs)
    events = list(ant.messages.create(stream=True, **kwargs))
    types = [e.type for e in events]
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops "ping"
    start, delta = events[0], events[-2]
    assert start.message.usage.input_tokens == full.usage.input_tokens == 8
    assert start.message.usage.output_tokens == 1
    assert delta.usage.output_tokens == full.usage.output_tokens == 6
    assert delta.delta.stop_reason == "end_turn"
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == full.content[0].text

    with ant.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 6 and final.content[0].text == full.content[0].text


def test_messages_raw_stream_has_ping_and_event_lines(srv):
    body = orjson.dumps({"model": "c", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    resp, _ = raw_exchange(srv.port, post("/v1/messages", body, ANTHROPIC_VERSION), 1)
    blocks = split_events(resp.done[0]["body"])
    names = [b.split(b"\n", 1)[0] for b in blocks]
    assert names[:3] == [b"event: message_start", b"event: content_block_start", b"event: ping"]
    assert names[-2:] == [b"event: message_delta", b"event: message_stop"]
    assert sse_data(blocks[-2])[0]["delta"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(
    ("status", "exc", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_errors(ant, status, exc, kind, stream):
    with pytest.raises(exc) as info:
        ant.messages.create(
            model="claude-test",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
            extra_headers={"x-mock-status": str(status)},
        )
    assert info.value.status_code == status
    assert info.value.body == {"type": "error", "error": {"type": kind, "message": info.value.body["error"]["message"]}}


# ---------------------------------------------------------------------------------------------
# Raw HTTP behaviour


def test_health_unknown_path_and_bad_json(srv):
    resp, _ = raw_exchange(
        srv.port,
        b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n"
        + post("/v1/nope", b"{}")
        + post("/v1/chat/completions", b"not json")
        + post("/v1/messages", b"[1, 2]", ANTHROPIC_VERSION)
        + b"GET /v1/chat/completions HTTP/1.1\r\nHost: m\r\n\r\n",
        5,
    )
    health, unknown, bad_openai, bad_anthropic, wrong_method = resp.done
    assert (health["status"], health["body"]) == (200, b"ok")
    assert unknown["status"] == 404
    assert orjson.loads(unknown["body"])["error"]["type"] == "invalid_request_error"
    assert bad_openai["status"] == 400 and "error" in orjson.loads(bad_openai["body"])
    assert bad_anthropic["status"] == 400
    assert orjson.loads(bad_anthropic["body"])["error"]["message"].startswith("We could not parse the JSON body")
    assert wrong_method["status"] == 405


def test_chunked_request_body(srv):
    body = orjson.dumps({"model": "chunky", "messages": MESSAGES})
    resp, _ = raw_exchange(srv.port, post("/v1/chat/completions", body, chunked=True), 1)
    answer = orjson.loads(resp.done[0]["body"])
    assert answer["model"] == "chunky"
    assert answer["usage"]["prompt_tokens"] == MESSAGES_TOKENS


def test_keep_alive_and_pipelining_keep_order(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok"
    sock = conn.sock
    for i in range(3):
        conn.request("POST", "/v1/chat/completions", orjson.dumps({"model": f"m{i}", "messages": MESSAGES}))
        response = conn.getresponse()
        assert orjson.loads(response.read())["model"] == f"m{i}"
    assert conn.sock is sock  # the same connection all along
    conn.close()

    # pipelined: a slow reply, a stream and a fast one, sent in one write; answered in order
    slow = post(
        "/v1/chat/completions", orjson.dumps({"model": "slow", "messages": MESSAGES}), {"x-mock-latency-ms": "150"}
    )
    stream = post("/v1/chat/completions", orjson.dumps({"model": "stream", "messages": MESSAGES, "stream": True}))
    fast = post("/v1/chat/completions", orjson.dumps({"model": "fast", "messages": MESSAGES}), chunked=True)
    resp, closed = raw_exchange(srv.port, slow + stream + fast, 3, linger=0.1)
    assert not closed
    assert [r["status"] for r in resp.done] == [200, 200, 200]
    assert orjson.loads(resp.done[0]["body"])["model"] == "slow"
    assert sse_data(resp.done[1]["body"])[0]["model"] == "stream"
    assert orjson.loads(resp.done[2]["body"])["model"] == "fast"


def test_connection_close_is_honoured(srv):
    request = post("/v1/embeddings", b'{"model":"e","input":"x"}', {"Connection": "close"})
    resp, closed = raw_exchange(srv.port, request, 1, linger=2)
    assert resp.done[0]["headers"]["connection"] == "close"
    assert closed


def test_cut_after_stream_truncates(srv, oai):
    body = orjson.dumps({"model": "m", "messages": MESSAGES, "stream": True})
    resp, closed = raw_exchange(srv.port, post("/v1/chat/completions", body, {"x-mock-cut-after": "3"}), 1)
    assert closed and resp.done == []  # never completed: no terminating chunk
    assert len(split_events(resp.current["body"])) == 3
    assert b"[DONE]" not in resp.current["body"]

    seen = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"x-mock-cut-after": "4"}
        ):
            seen.append(chunk)
    assert len(seen) == 4  # role delta + 3 content deltas, then the connection drops
    assert all(c.choices[0].finish_reason is None for c in seen)


def test_cut_after_non_stream_sends_half_the_body(srv, oai):
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-mock-cut-after": "0"})
    resp, closed = raw_exchange(srv.port, post("/v1/chat/completions", CHAT, {"x-mock-cut-after": "1"}), 1)
    assert closed and resp.done == []
    assert 0 < len(resp.current["body"]) < len(CHAT) * 10
    full, _ = raw_exchange(srv.port, post("/v1/chat/completions", CHAT), 1)
    assert len(resp.current["body"]) == len(full.done[0]["body"]) // 2


def test_latency_and_ttft(srv):
    t0 = time.monotonic()
    raw_exchange(srv.port, post("/v1/chat/completions", CHAT, {"x-mock-latency-ms": "200"}), 1)
    assert time.monotonic() - t0 >= 0.2
    body = orjson.dumps({"model": "m", "messages": MESSAGES, "stream": True})
    t0 = time.monotonic()
    resp, _ = raw_exchange(
        srv.port,
        post(
            "/v1/chat/completions", body, {"x-mock-ttft-ms": "100", "x-mock-inter-chunk-ms": "20", "x-mock-chunks": "3"}
        ),
        1,
    )
    # ttft + 5 gaps (2 more content deltas, finish, [DONE]... ): 100 + 4 * 20 ms at least
    assert time.monotonic() - t0 >= 0.18
    assert len(split_events(resp.done[0]["body"])) == 1 + 3 + 1 + 1
    # a slow request does not hold up another connection
    t0 = time.monotonic()
    raw_exchange(srv.port, post("/v1/chat/completions", CHAT), 1)
    assert time.monotonic() - t0 < 0.15


def test_bad_control_header_is_a_400(srv):
    resp, _ = raw_exchange(srv.port, post("/v1/chat/completions", CHAT, {"x-mock-latency-ms": "soon"}), 1)
    assert resp.done[0]["status"] == 400
    assert "x-mock-latency-ms" in orjson.loads(resp.done[0]["body"])["error"]["message"]


def test_request_log_ring_buffer(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("DELETE", "/_mock/requests")
    assert conn.getresponse().read()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-secret-42", max_retries=0)
    client.chat.completions.create(model="logged", messages=MESSAGES)
    client.close()
    conn.request("GET", "/_mock/requests")
    log = orjson.loads(conn.getresponse().read())
    assert len(log) == 1
    entry = log[0]
    assert (entry["method"], entry["path"]) == ("POST", "/v1/chat/completions")
    assert ["authorization", "Bearer sk-secret-42"] in [[k.lower(), v] for k, v in entry["headers"]]
    assert orjson.loads(entry["body"])["model"] == "logged"
    conn.request("DELETE", "/_mock/requests")
    assert orjson.loads(conn.getresponse().read()) == {"cleared": 1}
    conn.request("GET", "/_mock/requests")
    assert orjson.loads(conn.getresponse().read()) == []
    conn.close()

    small = MockProvider(Options(record_requests=3))
    for i in range(5):
        small.handle(Request("POST", "/v1/embeddings", "", [], b'{"input": "%d"}' % i))
    assert [e["body"] for e in small.logged_requests()] == ['{"input": "2"}', '{"input": "3"}', '{"input": "4"}']


# ---------------------------------------------------------------------------------------------
# Anthropic version, Azure OpenAI, API keys

API_VERSION = "2024-10-21"


def _azure(url: str, **kwargs: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=url, api_version=API_VERSION, max_retries=0, timeout=10, **{"api_key": "az-key", **kwargs}
    )


def test_messages_require_anthropic_version(srv):
    body = orjson.dumps({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    resp, _ = raw_exchange(
        srv.port,
        post("/v1/messages", body)
        + post("/v1/messages", body, {"x-mock-status": "529"})
        + post("/v1/messages", body, {"anthropic-version": " "})
        + post("/v1/messages", body, ANTHROPIC_VERSION),
        4,
    )
    missing, with_status, blank, ok = resp.done
    expected = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"},
    }
    for answer in (missing, with_status, blank):
        assert answer["status"] == 400
        assert orjson.loads(answer["body"]) == expected
    assert ok["status"] == 200 and orjson.loads(ok["body"])["type"] == "message"


def test_azure_chat_completions_embeddings_answer_as_the_deployment(srv):
    client = _azure(srv.url, azure_deployment="dep-a")
    try:
        completion = client.chat.completions.create(model="gpt-other", messages=MESSAGES)
        assert completion.model == "dep-a"
        assert completion.usage.prompt_tokens == MESSAGES_TOKENS
        chunks = list(
            client.chat.completions.create(
                model="gpt-other", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        assert {c.model for c in chunks} == {"dep-a"} and chunks[-1].usage == completion.usage
        done = client.completions.create(model="gpt-other", prompt="def fib(n):")
        assert done.model == "dep-a" and done.usage.prompt_tokens == 2
        vectors = client.embeddings.create(model="gpt-other", input=["hello world", "bye"], encoding_format="float")
        assert vectors.model == "dep-a" and len(vectors.data) == 2 and vectors.usage.prompt_tokens == 3
    finally:
        client.close()
    # without azure_deployment the SDK puts the body's model in the path
    client = _azure(srv.url)
    try:
        assert client.chat.completions.create(model="dep-b", messages=MESSAGES).model == "dep-b"
    finally:
        client.close()


def test_azure_unknown_path_or_api_version_is_azure_404(srv):
    not_found = {"error": {"code": "404", "message": "Resource not found"}}
    for target in (
        "/openai/deployments/d/chat/completions",  # no api-version
        "/openai/deployments/d/chat/completions?api-version=",
        "/openai/deployments/d/chat/completions?api-version=banana",
        f"/openai/deployments/d/chat/completions?api-version={API_VERSION}&api-version={API_VERSION}",
        f"/openai/deployments//chat/completions?api-version={API_VERSION}",
        f"/openai/deployments/d/messages?api-version={API_VERSION}",
        f"/openai/deployments/d/chat/completions/extra?api-version={API_VERSION}",
    ):
        resp, _ = raw_exchange(srv.port, post(target, CHAT), 1)
        assert (resp.done[0]["status"], orjson.loads(resp.done[0]["body"])) == (404, not_found), target
    preview = f"/openai/deployments/d%2Dx/embeddings?foo=1&api-version={API_VERSION}-preview"
    resp, _ = raw_exchange(srv.port, post(preview, b'{"input": "x"}'), 1)
    assert resp.done[0]["status"] == 200 and orjson.loads(resp.done[0]["body"])["model"] == "d-x"


def test_a_route_is_served_under_any_base_path(srv):
    """A provider behind a proxy's prefix (a policy endpoint with a path, stood in for by the fake)."""
    for target in ("/vllm/v1/chat/completions", "/v1beta/openai/chat/completions",
                   f"/gw/openai/deployments/d/chat/completions?api-version={API_VERSION}"):
        resp, _ = raw_exchange(srv.port, post(target, CHAT), 1)
        assert resp.done[0]["status"] == 200, target
    resp, _ = raw_exchange(srv.port, post("/vllm/v1/no-such-thing", CHAT), 1)
    assert resp.done[0]["status"] == 404


def test_azure_errors_gateway_statuses_in_azure_format(srv):
    target = f"/openai/deployments/d/chat/completions?api-version={API_VERSION}"
    resp, _ = raw_exchange(
        srv.port,
        post(target, CHAT, {"x-mock-status": "429"})
        + post(target, CHAT, {"x-mock-status": "500"})
        + post(target, b"not json"),
        3,
    )
    limited, failed, bad = resp.done
    assert limited["status"] == 429 and limited["headers"]["retry-after"] == "1"
    assert orjson.loads(limited["body"])["error"]["code"] == "429"
    assert set(orjson.loads(limited["body"])["error"]) == {"code", "message"}
    # what the model backend answers comes in the OpenAI format, as on Azure
    assert orjson.loads(failed["body"])["error"]["type"] == "server_error"
    assert bad["status"] == 400 and orjson.loads(bad["body"])["error"]["type"] == "invalid_request_error"


def test_request_log_keeps_path_query_headers_and_body_as_received(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("DELETE", "/_mock/requests")
    conn.getresponse().read()
    body = '{ "messages" : [{"role": "user", "content": "hi"}],\n  "model":"alias-\u00e9" }'.encode()
    target = f"/openai/deployments/dep-z/chat/completions?api-version={API_VERSION}"
    conn.request("POST", target, body, {"api-key": "az-log-key", "Content-Type": "application/json"})
    assert orjson.loads(conn.getresponse().read())["model"] == "dep-z"
    conn.request("GET", "/_mock/requests")
    (entry,) = orjson.loads(conn.getresponse().read())
    conn.close()
    assert (entry["path"], entry["query"]) == (
        "/openai/deployments/dep-z/chat/completions",
        f"api-version={API_VERSION}",
    )
    assert ["api-key", "az-log-key"] in entry["headers"]
    assert entry["body"] == body.decode()  # exactly as sent, not re-serialised
    assert orjson.loads(entry["body"])["model"] == "alias-é"


GOOD, OTHER = "sk-good-openai-0001", "second-key-abcd"


@pytest.fixture(scope="module")
def keyed():
    with background(Options(api_keys=(GOOD, OTHER), cassettes=str(CASSETTES))) as server:
        yield server


def test_api_keys_accepted_in_each_providers_header(keyed):
    for key in (GOOD, OTHER):
        with openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0) as client:
            assert client.chat.completions.create(model="m", messages=MESSAGES).model == "m"
        with anthropic.Anthropic(base_url=keyed.url, api_key=key, max_retries=0) as client:
            message = client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
            assert message.model == "c"
        with _azure(keyed.url, api_key=key, azure_deployment="dep") as client:
            assert client.embeddings.create(model="m", input="x", encoding_format="float").model == "dep"
    # health and the request log need no key
    resp, _ = raw_exchange(
        keyed.port, b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\nGET /_mock/requests HTTP/1.1\r\n\r\n", 2
    )
    assert [d["status"] for d in resp.done] == [200, 200]


def test_wrong_or_missing_openai_key_is_openai_401(keyed):
    wrong = "sk-wrong-key-987654wxyz"
    with (
        openai.OpenAI(base_url=keyed.url + "/v1", api_key=wrong, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.body == {
        "message": "Incorrect API key provided: *******************wxyz. "
        "You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    chat = "/v1/chat/completions"
    resp, _ = raw_exchange(
        keyed.port,
        post(chat, CHAT)
        + post(chat, CHAT, {"Authorization": f"Basic {GOOD}"})
        + post(chat, CHAT, {"api-key": GOOD})  # Azure's header on an OpenAI path
        + post(chat, CHAT, {"Authorization": "Bearer short"})
        + post(chat, CHAT, {"Authorization": f"bearer  {GOOD} "})
        + post("/v1/nope", CHAT),
        6,
    )
    missing, basic, azure_header, short, ok, unknown = resp.done
    for answer in (missing, basic, azure_header, unknown):
        assert answer["status"] == 401
        error = orjson.loads(answer["body"])["error"]
        assert error["message"].startswith("You didn't provide an API key.")
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
        assert answer["headers"]["x-request-id"].startswith("req_mock")
    assert "Incorrect API key provided: *****." in orjson.loads(short["body"])["error"]["message"]
    assert ok["status"] == 200


def test_wrong_or_missing_anthropic_key_is_anthropic_401(keyed):
    with (
        anthropic.Anthropic(base_url=keyed.url, api_key="sk-ant-wrong", max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError) as info,
    ):
        client.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    body = orjson.dumps({"model": "c", "max_tokens": 5, "messages": []})
    resp, _ = raw_exchange(
        keyed.port,
        post("/v1/messages", body, {**ANTHROPIC_VERSION, "x-api-key": GOOD})
        + post("/v1/messages", body, {**ANTHROPIC_VERSION, "x-api-key": "wrong", "Authorization": f"Bearer {OTHER}"})
        + post("/v1/messages", body, {**ANTHROPIC_VERSION, "x-api-key": "wrong"})
        + post("/v1/messages", body, {**ANTHROPIC_VERSION, "api-key": GOOD})  # Azure's header
        + post("/v1/messages", body, ANTHROPIC_VERSION)
        + post("/v1/messages", body, {"x-api-key": GOOD})  # the key is checked first, then the version
        + post("/v1/messages", body),
        7,
    )
    statuses = [d["status"] for d in resp.done]
    assert statuses == [200, 200, 401, 401, 401, 400, 401]
    messages = [orjson.loads(d["body"])["error"]["message"] for d in resp.done[2:]]
    assert messages[:3] == ["invalid x-api-key", "x-api-key header is required", "x-api-key header is required"]
    assert all(d["headers"]["request-id"].startswith("req_mock") for d in resp.done[2:])


def test_wrong_or_missing_azure_key_is_azure_401(keyed):
    denied = {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
        "valid key for an active subscription and use a correct regional API endpoint for your resource.",
    }
    with (
        _azure(keyed.url, api_key="az-wrong", azure_deployment="dep") as client,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 401 and info.value.body == denied
    target = f"/openai/deployments/d/chat/completions?api-version={API_VERSION}"
    resp, _ = raw_exchange(
        keyed.port,
        post(target, CHAT) + post(target, CHAT, {"Authorization": f"Bearer {GOOD}"}),
        2,
    )
    assert [(d["status"], orjson.loads(d["body"])["error"]) for d in resp.done] == [(401, denied)] * 2


def test_key_check_comes_before_controls_and_cassettes(keyed):
    resp, _ = raw_exchange(
        keyed.port,
        post("/v1/chat/completions", CHAT, {"x-mock-status": "500"})
        + post("/v1/chat/completions", b"{}", {"x-mock-cassette": "chat-basic"})
        + post("/v1/chat/completions", CHAT, {"x-mock-latency-ms": "soon"})
        + post("/v1/chat/completions", CHAT, {"x-mock-status": "500", "Authorization": f"Bearer {GOOD}"}),
        4,
    )
    assert [d["status"] for d in resp.done] == [401, 401, 401, 500]


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "api-key"])
def test_wrong_key_is_never_echoed(keyed, header):
    secret = "sk-THIS-MUST-NOT-LEAK-1234567890"
    value = f"Bearer {secret}" if header == "Authorization" else secret
    resp = b""
    for target in (
        "/v1/chat/completions",
        "/v1/messages",
        f"/openai/deployments/d/embeddings?api-version={API_VERSION}",
    ):
        with socket.create_connection(("127.0.0.1", keyed.port), timeout=5) as sock:
            sock.sendall(post(target, CHAT, {header: value, **ANTHROPIC_VERSION, "Connection": "close"}))
            while chunk := sock.recv(65536):
                resp += chunk
    assert resp.count(b"HTTP/1.1 401 ") == 3
    assert secret.encode() not in resp and secret[:-4].encode() not in resp


def test_masked_key():
    assert r.masked_key("sk-abcdefgh1234") == "***********1234"
    assert r.masked_key("12345678") == "********"
    assert r.masked_key("") == ""


# ---------------------------------------------------------------------------------------------
# Cassettes


@pytest.fixture(scope="module")
def cassettes() -> dict[str, Cassette]:
    return load_cassettes(CASSETTES)


def test_load_cassettes(cassettes):
    files = sorted(p.stem for p in CASSETTES.glob("*.yaml"))
    assert sorted(cassettes) == files
    basic = cassettes["chat-basic"]
    assert (basic.method, basic.path, basic.status, basic.is_stream) == ("POST", "/v1/chat/completions", 200, False)
    assert basic.request_json["model"] == "gpt-5-nano"
    assert basic.usage()["prompt_tokens"] == 8
    streamed = cassettes["chat-streaming-detailed-usage"]
    assert streamed.is_stream and b"".join(streamed.events) == streamed.response_body
    assert streamed.usage()["total_tokens"] == 112
    assert cassettes["chat-streaming"].usage() is None  # no include_usage, no usage
    assert cassettes["azure-chat-basic"].path == "/openai/deployments/gpt-5-nano/chat/completions"
    assert cassettes["azure-chat-basic"].query == "api-version=2024-12-01-preview"


def test_gzip_recorded_body_is_decompressed(tmp_path):
    import gzip

    import yaml

    body = b'{"object": "list", "usage": {"prompt_tokens": 2, "total_tokens": 2}}'
    doc = {
        "version": 2,
        "interactions": [
            {
                "request": {"url": "https://api.openai.com/v1/embeddings", "method": "POST", "body": '{"input": "hi"}'},
                "response": {
                    "code": 200,
                    "headers": {"Content-Type": ["application/json"], "Content-Encoding": ["gzip"]},
                    "body": gzip.compress(body),  # dumped as !!binary, as go-vcr does for non-UTF-8
                },
            }
        ],
    }
    (tmp_path / "gz.yaml").write_text(yaml.safe_dump(doc))
    cassette = load_cassettes(tmp_path)["gz"]
    assert cassette.response_body == body and cassette.compressed == "gzip"
    assert [k for k, _ in cassette.headers] == ["Content-Type"]
    assert cassette.usage() == {"prompt_tokens": 2, "total_tokens": 2}
    reply = MockProvider(cassettes={"gz": cassette}).handle(
        Request("POST", "/v1/embeddings", "", [], b'{ "input" : "hi" }')
    )
    assert (reply.status, reply.body) == (200, body)


def _replay_check(cassette: Cassette, response: http.client.HTTPResponse) -> None:
    body = response.read()
    assert response.status == cassette.status, cassette.name
    assert response.getheader("content-type") == cassette.content_type, cassette.name
    assert body == cassette.response_body, cassette.name
    if cassette.is_stream:
        assert response.getheader("transfer-encoding") == "chunked", cassette.name
    else:
        assert int(response.getheader("content-length")) == len(cassette.response_body), cassette.name


def test_every_cassette_replays_exactly(srv, cassettes):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for cassette in cassettes.values():
        # matched by the recorded request
        conn.request(cassette.method, cassette.target, cassette.request_body, {"Content-Type": "application/json"})
        _replay_check(cassette, conn.getresponse())
        # the same JSON, re-serialised differently, still matches
        if isinstance(cassette.request_json, dict):
            reordered = orjson.dumps(dict(reversed(list(cassette.request_json.items()))))
            conn.request(cassette.method, cassette.path, reordered, {"Content-Type": "application/json"})
            _replay_check(cassette, conn.getresponse())
        # forced by name, whatever the body
        conn.request("POST", "/v1/chat/completions", b"{}", {"x-mock-cassette": cassette.name})
        _replay_check(cassette, conn.getresponse())
    conn.close()


def test_cassette_replay_honours_cut_and_unknown_name(srv, cassettes):
    cassette = cassettes["chat-streaming"]
    resp, closed = raw_exchange(
        srv.port, post("/v1/chat/completions", b"{}", {"x-mock-cassette": cassette.name, "x-mock-cut-after": "2"}), 1
    )
    assert closed and b"".join(cassette.events[:2]) == resp.current["body"]
    resp, _ = raw_exchange(srv.port, post("/v1/chat/completions", b"{}", {"x-mock-cassette": "nope"}), 1)
    assert resp.done[0]["status"] == 400


def test_cassette_through_openai_sdk(oai, cassettes):
    recorded = cassettes["chat-streaming-detailed-usage"]
    chunks = list(oai.chat.completions.create(**recorded.request_json))
    assert chunks[-1].usage.completion_tokens == recorded.usage()["completion_tokens"]


# ---------------------------------------------------------------------------------------------
# Pure layers


def test_token_rules():
    assert r.words("  a b\tc\n") == 3
    assert r.chat_prompt_tokens([{"role": "user", "content": "Hello!"}]) == 7
    parts = [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert r.chat_prompt_tokens([{"role": "user", "content": parts}], system="be nice") == 3 + 2 + 3 + 2
    assert r.input_tokens("one two") == [2]
    assert r.input_tokens(["a", "b c", "   "]) == [1, 2, 1]
    assert r.input_tokens([1, 2, 3]) == [3]
    assert r.input_tokens([[1, 2], [3]]) == [2, 1]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(max_size=40), min_size=1, max_size=4),
    chunks=st.integers(0, 30),
    limit=st.one_of(st.none(), st.integers(0, 30)),
)
def test_json_and_stream_agree(texts, chunks, limit):
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}
    if limit is not None:
        body["max_tokens"] = limit
    gen = r.generate(body, id="x", created=1, chunks=chunks, prompt_tokens=r.chat_prompt_tokens(body["messages"]))
    assert gen.completion_tokens == (chunks if limit is None else min(chunks, limit))

    chat = orjson.loads(r.openai_chat_json(gen))
    events = sse_data(b"".join(r.openai_chat_events(gen, include_usage=True)))
    assert events[-1] == "[DONE]" and events[-2]["usage"] == chat["usage"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert streamed == chat["choices"][0]["message"]["content"]
    assert all("usage" not in e for e in sse_data(b"".join(r.openai_chat_events(gen, False)))[:-1])

    message = orjson.loads(r.anthropic_message_json(gen))
    anthropic_events = sse_data(b"".join(r.anthropic_message_events(gen)))
    assert anthropic_events[0]["message"]["usage"]["input_tokens"] == message["usage"]["input_tokens"]
    assert anthropic_events[-2]["usage"]["output_tokens"] == message["usage"]["output_tokens"]
    text = "".join(e["delta"]["text"] for e in anthropic_events if e["type"] == "content_block_delta")
    assert text == message["content"][0]["text"]

    completion = orjson.loads(r.openai_completion_json(gen))
    completion_events = sse_data(b"".join(r.openai_completion_events(gen, include_usage=True)))
    assert completion_events[-2]["usage"] == completion["usage"]


def test_wire_framing():
    segments, close = wire(Reply(200, b"0123456789"), keep_alive=True)
    assert len(segments) == 1 and not close
    assert segments[0][1].endswith(b"content-length: 10\r\n\r\n0123456789")

    segments, close = wire(Reply(200, b"0123456789", cut_after=0), keep_alive=True)
    assert close and segments[0][1].endswith(b"\r\n\r\n01234")

    events = (b"data: a\n\n", b"data: b\n\n", b"data: c\n\n")
    segments, close = wire(Reply(200, events=events, ttft=0.1, inter_chunk=0.0), keep_alive=False)
    assert [p for p, _ in segments] == [0.0, 0.1] and close
    assert segments[1][1] == b"9\r\ndata: a\n\n\r\n9\r\ndata: b\n\n\r\n9\r\ndata: c\n\n\r\n0\r\n\r\n"

    segments, close = wire(Reply(200, events=events, cut_after=2), keep_alive=True)
    assert close and segments[-1][1].endswith(b"9\r\ndata: b\n\n\r\n")


def test_wire_of_a_long_stream_is_one_segment_of_every_event():
    """A stream's segment is joined once, not grown event by event (each += copied all so far: a
    200,000-event answer, x-mock-chunks, held the server's only thread for minutes, every other
    request, a test's next, timing out)."""
    events = [b"data: " + b"x" * 240 + b"\n\n"] * 50_000
    segments, _ = wire(Reply(200, events=events), keep_alive=True)
    assert len(segments) == 1 and segments[0][1].endswith(b"\r\n0\r\n\r\n")
    assert segments[0][1].count(b"f8\r\ndata: ") == 50_000



def _feed(pieces: list[bytes]) -> tuple[bytes, bool]:
    connection = _Connection(MockProvider(Options(record_requests=0)))
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        connection.data_received(piece)
    return bytes(transport.data), transport.closed


_PIPELINE = (
    post("/v1/embeddings", b'{"model":"e","input":["a b",[1,2]]}')
    + post(
        "/v1/messages",
        orjson.dumps({"model": "c", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}),
        ANTHROPIC_VERSION,
        chunked=True,
    )
    + b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n"
    + post("/v1/messages", b'{"model":"c","stream":true,"messages":[]}', {**ANTHROPIC_VERSION, "Connection": "close"})
)


@settings(max_examples=80, deadline=None)
@given(cuts=st.lists(st.integers(0, len(_PIPELINE)), max_size=8))
def test_connection_is_split_point_independent(cuts):
    whole, whole_closed = _feed([_PIPELINE])
    bounds = [0, *sorted(set(cuts)), len(_PIPELINE)]
    split, split_closed = _feed([_PIPELINE[a:b] for a, b in itertools.pairwise(bounds)])
    assert split == whole and split_closed == whole_closed is True
    assert whole.count(b"HTTP/1.1 200 OK\r\n") == 4


def test_malformed_request_gets_400_and_close():
    out, closed = _feed([b"NOT HTTP AT ALL\r\n\r\n"])
    assert out.startswith(b"HTTP/1.1 400 ") and closed


def test_http10_keep_alive():
    out, closed = _feed([b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"])
    assert b"connection: keep-alive\r\n" in out and not closed
    out, closed = _feed([b"GET /healthz HTTP/1.0\r\n\r\n"])
    assert b"connection: close\r\n" in out and closed


def test_expect_100_continue():
    out, _ = _feed([post("/v1/embeddings", b'{"input":"x"}', {"Expect": "100-continue"})])
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


# ---------------------------------------------------------------------------------------------
# CLI


def test_add_arguments_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.latency_ms, args.ttft_ms, args.inter_chunk_ms) == ("127.0.0.1", 18080, 0, 0, 0)
    assert (args.chunks, args.cassettes, args.record_requests) == (8, None, 1000)
    assert options_from_args(args).api_keys == ()
    keyed = options_from_args(parser.parse_args(["--api-key", "k-one-secret", "--api-key", "k-two"]))
    assert keyed.api_keys == ("k-one-secret", "k-two")
    assert "k-one-secret" not in repr(keyed)


@pytest.mark.parametrize("key", ["", " k-padded", "k\tsecret"])
def test_bad_api_key_is_refused_without_echo(key):
    with pytest.raises(ValueError, match="--api-key") as info:
        MockProvider(Options(api_keys=("good-key", key)))
    assert key.strip() not in str(info.value) or not key.strip()


def test_run_prints_listening_line_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "ext_proc.mock.provider", "--port", "0", "--chunks", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("mock-provider listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        resp, _ = raw_exchange(port, post("/v1/chat/completions", CHAT), 1)
        assert orjson.loads(resp.done[0]["body"])["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
