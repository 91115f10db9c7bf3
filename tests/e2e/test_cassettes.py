"""Real recorded OpenAI exchanges replayed through the gateway yield exactly their recorded usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from ext_proc.llm.prices import cost_micros, default_table
from ext_proc.llm.usage import Usage
from tests.e2e.conftest import Gateway
from tests.fixtures import CASSETTES

pytestmark = pytest.mark.e2e

CASES = sorted(CASSETTES.glob("*.yaml"))
assert CASES, f"no cassettes in {CASSETTES}"


def recorded_usage(response_body: str, stream: bool) -> dict[str, Any] | None:
    """The usage object of a recorded response (the last one of a stream), or None."""
    if not stream:
        try:
            return orjson.loads(response_body).get("usage")
        except orjson.JSONDecodeError:
            return None
    usage = None
    for line in response_body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = orjson.loads(line[6:])
            usage = chunk.get("usage") or usage
    return usage


@pytest.mark.parametrize("cassette", CASES, ids=lambda p: p.stem)
def test_cassette_usage(gateway: Gateway, cassette: Path) -> None:
    interaction = yaml.safe_load(cassette.read_text())["interactions"][0]
    request, recorded = interaction["request"], interaction["response"]
    path = httpx.URL(request["url"]).path
    if path.startswith("/openai/deployments/"):
        # Azure OpenAI: the client speaks the OpenAI API to Tollway; the provider kind is Tollway's business.
        path = "/v1/" + path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "chat" in path else path
    payload = orjson.loads(request["body"])
    stream = payload.get("stream") is True
    response = httpx.post(
        gateway.base_url + path, content=request["body"].encode(),
        headers={"content-type": "application/json", "x-mock-cassette": cassette.stem}, timeout=30,
    )
    assert response.status_code == recorded["code"]
    # The provider's x-ratelimit-* (recorded: the shared key's organisation) never reach the client.
    assert [name for name in response.headers if "ratelimit" in name] == []
    record = gateway.record(response.headers.get("x-tollway-request-id"))
    usage = recorded_usage(recorded["body"], stream) if recorded["code"] == 200 else None
    if usage is None:
        if stream and recorded["code"] == 200:
            # Recorded without usage: Tollway counts what it sent and what streamed, marked as estimates.
            assert record["input_estimated"] and record["output_estimated"]
            assert record["input_tokens"] > 0 and record["output_tokens"] > 0
        else:
            assert (record["input_tokens"], record["output_tokens"], record["cost_usd_micros"]) == (None, None, None)
        return
    assert record["input_tokens"] == usage["prompt_tokens"]
    assert record["output_tokens"] == usage.get("completion_tokens", 0)
    details = usage.get("prompt_tokens_details") or {}
    assert record["cached_tokens"] == details.get("cached_tokens")
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    assert record["reasoning_tokens"] == reasoning
    assert not record["input_estimated"] and not record["output_estimated"]
    # Cost is the price of the served model times the recorded usage, to the micro-dollar.
    price = default_table().price("openai", record["served_model"], aliases=(payload["model"],))
    assert price is not None, f"no price for {record['served_model']}"
    # Audio tokens of a model genai-prices has no audio rate for (the audio previews): cost unknown.
    expected = cost_micros(price, Usage(
        input_tokens=usage["prompt_tokens"], output_tokens=usage.get("completion_tokens", 0),
        cached_tokens=details.get("cached_tokens"), reasoning_tokens=reasoning,
        input_audio_tokens=details.get("audio_tokens"),
        output_audio_tokens=(usage.get("completion_tokens_details") or {}).get("audio_tokens"),
    ))
    if cassette.stem in ("chat-audio-to-text", "chat-text-to-audio"):
        assert expected is None
    assert record["cost_usd_micros"] == expected and record["price_version"] == price.source
