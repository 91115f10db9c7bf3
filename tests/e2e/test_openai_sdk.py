"""The official ``openai`` SDK through the gateway: bodies the client sees, usage Tollway records."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest

from ext_proc.llm.tokens import count_text
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Tell me about toll roads in three short sentences."}]


@pytest.fixture()
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="sk-test-client", max_retries=0)


def test_chat_completion_usage_is_recorded(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["api"] == "openai.chat.completions"
    assert record["model"] == "gpt-4o-mini"
    assert record["provider"] == "openai"
    assert record["status"] == 200 and record["outcome"] == "ok" and record["stream"] is False
    assert record["input_tokens"] == completion.usage.prompt_tokens
    assert record["output_tokens"] == completion.usage.completion_tokens
    assert record["latency_ms"] > 0 and record["ttft_ms"] is None
    # The answer tells the client its own tokens and cost.
    assert raw.headers["x-tollway-input-tokens"] == str(completion.usage.prompt_tokens)
    assert raw.headers["x-tollway-output-tokens"] == str(completion.usage.completion_tokens)
    cost = record["cost_usd_micros"]
    assert cost is not None and raw.headers["x-tollway-cost-usd"] == f"{cost // 10**6}.{cost % 10**6:06d}"


def test_stream_without_usage_option_is_metered_but_looks_untouched(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage: no usage-only chunk reaches it, although Tollway asked for one.
    assert all(c.choices for c in chunks), "the extra usage chunk leaked to the client"
    assert all(c.usage is None for c in chunks)
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["stream"] is True and record["outcome"] == "ok"
    assert record["input_tokens"] and record["output_tokens"]
    assert record["ttft_ms"] is not None and 0 < record["ttft_ms"] <= record["latency_ms"]


def test_stream_with_usage_option_keeps_the_usage_chunk(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].choices == []
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["input_tokens"] == usage[0].prompt_tokens
    assert record["output_tokens"] == usage[0].completion_tokens


def test_stream_and_json_report_the_same_usage(gateway: Gateway, client: openai.OpenAI) -> None:
    plain = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    streamed = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    list(streamed.parse())
    a = gateway.record(plain.headers.get("x-tollway-request-id"))
    b = gateway.record(streamed.headers.get("x-tollway-request-id"))
    assert (a["input_tokens"], a["output_tokens"]) == (b["input_tokens"], b["output_tokens"])


def test_completions_json_and_stream(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    completion = raw.parse()
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["api"] == "openai.completions"
    assert completion.usage is not None
    assert record["input_tokens"] == completion.usage.prompt_tokens
    assert record["output_tokens"] == completion.usage.completion_tokens
    raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", stream=True)
    chunks = list(raw.parse())
    assert chunks and all(c.usage is None for c in chunks)
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["output_tokens"] == completion.usage.completion_tokens


def test_embeddings(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["toll", "way"])
    result = raw.parse()
    assert len(result.data) == 2
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["api"] == "openai.embeddings"
    assert record["input_tokens"] == result.usage.prompt_tokens
    assert record["output_tokens"] == 0


@pytest.mark.parametrize(("status", "error"), [(429, openai.RateLimitError), (500, openai.InternalServerError)])
def test_provider_errors_reach_the_client_and_the_log(
    gateway: Gateway, client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": str(status)}
        )
    assert caught.value.status_code == status
    record = gateway.record(caught.value.response.headers.get("x-tollway-request-id"))
    assert record["status"] == status and record["outcome"] == "error"
    assert record["input_tokens"] is None and record["output_tokens"] is None
    assert record["error"]


def test_stream_cut_by_the_provider_is_recorded_incomplete(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        extra_headers={"x-mock-cut-after": "3", "x-mock-inter-chunk-ms": "30"},
    )
    received = []
    with pytest.raises(Exception):  # noqa: B017 - the SDK's transport error class varies by version
        for chunk in raw.parse():
            received.append(chunk)
    assert len(received) <= 3
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["outcome"] == "incomplete"
    # The provider never reported usage: Tollway bills what it saw, marked as estimated.
    assert record["output_estimated"] and record["input_estimated"]
    # At least what this client got (an SDK may drop an event that arrived just before the cut).
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text and record["output_tokens"] >= count_text(text, "gpt-4o-mini")


def test_stream_cut_before_any_event_is_never_a_clean_success(gateway: Gateway, client: openai.OpenAI) -> None:
    # Cut at once. If the reset reaches Envoy while it still holds the response head, the client
    # gets a JSON 502; if Tollway already let the head through, a torn stream. Never a success.
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers={"x-mock-cut-after": "0"}
        )
    except openai.APIStatusError as error:
        assert error.status_code == 502
        request_id = error.response.headers.get("x-tollway-request-id")
    else:
        request_id = raw.headers.get("x-tollway-request-id")
        with pytest.raises(Exception):  # noqa: B017 - the SDK's transport error class varies by version
            list(raw.parse())
    # The provider answered 200 and then broke off: recorded as such, never as a success.
    assert gateway.record(request_id)["outcome"] == "incomplete"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"this is not json", "invalid_json"),
        (b"", "invalid_body"),
        (b"[1, 2]", "invalid_body"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": "gpt-4o-mini", "messages": "hi"}', "invalid_type"),
        (b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}', "invalid_type"),
    ],
)
def test_malformed_requests_get_openai_400_without_reaching_the_provider(
    gateway: Gateway, body: bytes, code: str
) -> None:
    before = httpx.get(f"http://127.0.0.1:{gateway.stack.mock_port}/_mock/requests").json()
    response = httpx.post(gateway.base_url + "/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    after = httpx.get(f"http://127.0.0.1:{gateway.stack.mock_port}/_mock/requests").json()
    assert len(after) == len(before), "a malformed request reached the provider"
    # The SDK raises its usual exception for it.
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages="not a list"  # type: ignore[arg-type]
        )


def test_unknown_endpoint_is_a_json_404(gateway: Gateway) -> None:
    response = httpx.get(gateway.base_url + "/v1/files")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_endpoint"


def test_a_websocket_upgrade_is_a_json_404_with_its_record(gateway: Gateway) -> None:
    """The Realtime API's websocket: refused by Tollway in the client's format and recorded (Envoy
    alone answered a bare 403 Tollway never saw, its record without a request id)."""
    with socket.create_connection(("127.0.0.1", gateway.stack.listen_port), timeout=10) as sock:
        sock.sendall(b"GET /v1/realtime?model=gpt-4o-realtime-preview HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer = b""
        while b"}}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    assert json.loads(body)["error"]["code"] == "unknown_endpoint"
    request_id = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"x-tollway-request-id:"))
    record = gateway.record(request_id)
    assert (record["status"], record["outcome"], record["error"]) == (404, "rejected", "unknown_endpoint")


def test_large_prompt_passes(gateway: Gateway, client: openai.OpenAI) -> None:
    big = "lorem ipsum " * 400_000  # ~4.8 MB: above Envoy's and gRPC's default limits
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": big}]
    )
    assert raw.parse().choices
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["status"] == 200 and record["input_tokens"] > 100_000


def test_every_request_gets_an_id_of_envoys_making_whatever_the_client_sent(gateway: Gateway,
                                                                           client: openai.OpenAI) -> None:
    """The id is the key of the record and of the crash journal's entry: a client's own (here the
    same for two requests) is replaced before Envoy generates one."""
    ids = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-request-id": "client-chosen"})
        ids.append(raw.headers["x-tollway-request-id"])
    assert "client-chosen" not in ids and ids[0] != ids[1]
    assert all(len(i) == 36 and i.count("-") == 4 for i in ids)  # a UUID
    assert [gateway.record(i)["outcome"] for i in ids] == ["ok", "ok"]

