"""The official ``anthropic`` SDK through the gateway (``POST /v1/messages``)."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Name three famous toll bridges."}]


@pytest.fixture()
def client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key="sk-ant-test-client", max_retries=0)


def test_message_usage_is_recorded(gateway: Gateway, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="claude-opus-4-5", max_tokens=256, messages=MESSAGES)
    message = raw.parse()
    assert message.content[0].text
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["api"] == "anthropic.messages" and record["provider"] == "anthropic"
    assert record["status"] == 200 and record["outcome"] == "ok"
    usage = message.usage
    cache = (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    expected_input = usage.input_tokens + cache
    assert record["input_tokens"] == expected_input
    assert record["output_tokens"] == usage.output_tokens


def test_stream_usage_from_message_start_and_delta(gateway: Gateway, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-opus-4-5", max_tokens=256, messages=MESSAGES, stream=True
    )
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    start = events[0].message.usage  # type: ignore[union-attr]
    delta = next(e for e in events if e.type == "message_delta").usage  # type: ignore[union-attr]
    record = gateway.record(raw.headers.get("x-tollway-request-id"))
    assert record["stream"] is True and record["outcome"] == "ok"
    assert record["input_tokens"] == start.input_tokens + (start.cache_read_input_tokens or 0) + (
        start.cache_creation_input_tokens or 0
    )
    assert record["output_tokens"] == delta.output_tokens
    assert record["ttft_ms"] is not None


def test_stream_and_json_agree(gateway: Gateway, client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="claude-opus-4-5", max_tokens=64, messages=MESSAGES)
    with client.messages.stream(model="claude-opus-4-5", max_tokens=64, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == raw.parse().usage.output_tokens


def test_overloaded_529(gateway: Gateway, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model="claude-opus-4-5", max_tokens=64, messages=MESSAGES, extra_headers={"x-mock-status": "529"}
        )
    assert caught.value.status_code == 529
    record = gateway.record(caught.value.response.headers.get("x-tollway-request-id"))
    assert record["status"] == 529 and record["outcome"] == "error" and record["error"] == "overloaded_error"


def test_malformed_body_gets_anthropic_error_format(gateway: Gateway) -> None:
    response = httpx.post(gateway.base_url + "/v1/messages", content=b"{oops",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        anthropic.Anthropic(base_url=gateway.base_url, api_key="x", max_retries=0).messages.create(
            model="claude-opus-4-5", max_tokens=10, messages="hi"  # type: ignore[arg-type]
        )
