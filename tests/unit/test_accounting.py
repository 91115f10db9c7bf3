"""Answers in, cost out: a provider's answer, read by its wire API's reader and priced by the
service's accountant, costs what genai-prices' own ``extract_usage`` + ``calc_price`` make of the
same answer, given the service tier and speed the answer states."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import genai_prices
import orjson
import pytest

from ext_proc.llm import apis
from ext_proc.llm.sse import SSEDecoder
from ext_proc.server.accounting import ServiceAccountant

ACCOUNTANT = ServiceAccountant()


def chat(model: str, tier: str | None, prompt: int, completion: int, cached: int = 0, written: int | None = None,
         reasoning: int = 0) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": cached, "audio_tokens": 0}
    if written is not None:
        details["cache_write_tokens"] = written
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
              "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                        "prompt_tokens_details": details,
                        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0}}}
    if tier is not None:
        answer["service_tier"] = tier
    return answer


def response(model: str, tier: str | None, prompt: int, output: int, cached: int, written: int) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": model,
            "service_tier": tier, "output": [],
            "usage": {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached,
                                                                        "cache_write_tokens": written},
                      "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt + output}}


def message(model: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "service_tier": "standard",
                      **usage}}


WEB_SEARCH = {"input_tokens": 12_000, "output_tokens": 600, "server_tool_use": {"web_search_requests": 5,
                                                                                 "web_fetch_requests": 0}}
FAST = {"input_tokens": 20_000, "output_tokens": 2_000, "cache_read_input_tokens": 3_000, "speed": "fast"}

# (name, provider kind, api flavor in genai-prices, the answer)
ANSWERS = [
    ("openai-flex", "openai", "chat", chat("gpt-5-2025-08-07", "flex", 20_000, 4_000, reasoning=3_000)),
    ("openai-priority", "openai", "chat", chat("gpt-5-2025-08-07", "priority", 20_000, 4_000, cached=8_000)),
    ("openai-default", "openai", "chat", chat("gpt-5-2025-08-07", "default", 20_000, 4_000, cached=8_000)),
    ("openai-unknown-tier", "openai", "chat", chat("gpt-5-2025-08-07", "scale", 20_000, 4_000)),
    ("openai-cache-write", "openai", "chat", chat("gpt-6-sol", "default", 100_000, 1_000, written=100_000)),
    ("openai-cache-write-flex", "openai", "chat", chat("gpt-6-sol", "flex", 100_000, 1_000, 20_000, 30_000)),
    ("responses-priority", "openai", "responses", response("gpt-6-sol", "priority", 100_000, 1_000, 20_000, 30_000)),
    ("anthropic-web-search", "anthropic", "default", message("claude-sonnet-4-5-20250929", WEB_SEARCH)),
    ("anthropic-fast", "anthropic", "default", message("claude-opus-4-8", FAST)),
    ("anthropic-fast-searching", "anthropic", "default", message("claude-opus-4-8", {**FAST, **WEB_SEARCH})),
]
READERS = {"chat": apis.CHAT_COMPLETIONS, "responses": apis.RESPONSES, "default": apis.MESSAGES}


def genai_micros(kind: str, flavor: str, answer: dict[str, Any]) -> int:
    """genai-prices' price of the answer, with the tier and speed it states as the price context."""
    extracted = genai_prices.extract_usage(answer, provider_id=kind, api_flavor=flavor)
    said = {**answer, **answer["usage"]}  # OpenAI states them at the top, Anthropic in the usage
    context = {key: said[key] for key in ("service_tier", "speed") if said.get(key)}
    total = extracted.calc_price(price_context=context or None).total_price
    return int((total * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def stream(flavor: str, answer: dict[str, Any]) -> bytes:
    """The same answer as the provider streams it (usage, tier and speed where its stream has them)."""
    def sse(name: str, data: dict[str, Any]) -> bytes:
        return (f"event: {name}\n" if name else "").encode() + b"data: " + orjson.dumps(data) + b"\n\n"

    if flavor == "chat":
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": answer["model"],
                "service_tier": answer.get("service_tier")}
        return (sse("", {**head, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]})
                + sse("", {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                + sse("", {**head, "choices": [], "usage": answer["usage"]}) + b"data: [DONE]\n\n")
    if flavor == "responses":
        created = {**answer, "status": "in_progress", "service_tier": "auto", "usage": None}
        return (sse("response.created", {"type": "response.created", "response": created})
                + sse("response.completed", {"type": "response.completed", "response": answer}))
    usage = answer["usage"]
    start = {**answer, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    start["usage"].pop("server_tool_use", None)  # the searches are counted at the end
    return (sse("message_start", {"type": "message_start", "message": start})
            + sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                    "usage": {key: value for key, value in usage.items() if key != "service_tier"}})
            + sse("message_stop", {"type": "message_stop"}))


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("name", "kind", "flavor", "answer"), ANSWERS, ids=[name for name, *_ in ANSWERS])
def test_the_cost_of_an_answer_is_genai_prices_own(name: str, kind: str, flavor: str, answer: dict[str, Any],
                                                   streamed: bool) -> None:
    reader = READERS[flavor].reader()
    if streamed:
        for event in SSEDecoder().feed(stream(flavor, answer)):
            reader.feed(event)
    else:
        reader.whole(answer)
    assert reader.complete and reader.model == answer["model"]
    micros, version = ACCOUNTANT.cost(kind, answer["model"], (), reader.usage, None)
    assert version == ACCOUNTANT.table.version
    assert micros == genai_micros(kind, flavor, answer)


def test_what_the_answer_says_changes_the_cost() -> None:
    """Not a tautology: flex is half the default, priority dearer, fast mode dearer, searches extra;
    a tier genai-prices has no rates for costs the default's."""
    cost = {name: genai_micros(kind, flavor, answer) for name, kind, flavor, answer in ANSWERS}
    base = genai_micros("openai", "chat", chat("gpt-5-2025-08-07", None, 20_000, 4_000, reasoning=3_000))
    assert cost["openai-flex"] * 2 == base == cost["openai-unknown-tier"] < cost["openai-priority"]
    written = chat("gpt-6-sol", "default", 100_000, 1_000)
    assert cost["openai-cache-write"] > genai_micros("openai", "chat", written)
    standard = genai_micros("anthropic", "default", message("claude-opus-4-8", {**FAST, "speed": "standard"}))
    assert cost["anthropic-fast"] > standard
    searchless = {**WEB_SEARCH, "server_tool_use": {"web_search_requests": 0}}
    assert cost["anthropic-web-search"] == genai_micros(
        "anthropic", "default", message("claude-sonnet-4-5-20250929", searchless)) + 50_000  # $10 / 1,000 searches
