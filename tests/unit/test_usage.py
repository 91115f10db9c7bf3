"""Usage normalisation: provider ``usage`` objects in, Tollway's token fields out (None = not reported)."""

from __future__ import annotations

from typing import Any

import pytest

from ext_proc.llm.apis.openai import OpenAIReader
from ext_proc.llm.sse import SSEDecoder
from ext_proc.llm.usage import Usage, apply_anthropic, apply_openai, apply_responses, apply_service_tier

UNKNOWN = Usage()
CACHED_START = {
    "input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 1
}


def openai(raw: Any, start: Usage | None = None) -> Usage:
    usage = start if start is not None else Usage()
    apply_openai(usage, raw)
    return usage


def anthropic(*raws: Any) -> Usage:
    usage = Usage()
    for raw in raws:
        apply_anthropic(usage, raw)
    return usage


# -- OpenAI -----------------------------------------------------------------------------------


def test_openai_chat_usage_with_details() -> None:
    raw = {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 30, "audio_tokens": 0},
    }
    assert openai(raw) == Usage(input_tokens=1117, output_tokens=46, cached_tokens=1024, reasoning_tokens=30,
                                input_audio_tokens=0, output_audio_tokens=0)
    raw["prompt_tokens_details"]["audio_tokens"], raw["completion_tokens_details"]["audio_tokens"] = 12, 9
    assert (openai(raw).input_audio_tokens, openai(raw).output_audio_tokens) == (12, 9)


def test_openai_chat_cache_writes_are_read_as_responses_ones_are() -> None:
    raw = {"prompt_tokens": 100_000, "completion_tokens": 1_000, "total_tokens": 101_000,
           "prompt_tokens_details": {"cached_tokens": 20_000, "cache_write_tokens": 30_000}}
    assert openai(raw) == Usage(input_tokens=100_000, output_tokens=1_000, cached_tokens=20_000,
                                cache_write_tokens=30_000)
    responses = Usage()
    apply_responses(responses, {"input_tokens": 100_000, "output_tokens": 1_000, "input_tokens_details": {
        "cached_tokens": 20_000, "cache_write_tokens": 30_000}})
    assert responses == openai(raw)


def test_the_served_service_tier_is_noted_from_any_openai_answer() -> None:
    used = Usage()
    apply_service_tier(used, {"service_tier": "flex", "usage": None})
    assert used.service_tier == "flex"
    apply_service_tier(used, {"service_tier": None})  # a chunk without it keeps what an earlier one said
    assert used.service_tier == "flex"


def test_openai_completions_usage_without_details_leaves_them_unknown() -> None:
    assert openai({"prompt_tokens": 31, "completion_tokens": 25, "total_tokens": 56}) == Usage(
        input_tokens=31, output_tokens=25
    )


def test_openai_embeddings_produce_zero_output_tokens() -> None:
    assert openai({"prompt_tokens": 7, "total_tokens": 7}) == Usage(input_tokens=7, output_tokens=0)


def test_openai_prompt_only_without_total_keeps_output_unknown() -> None:
    assert openai({"prompt_tokens": 7}) == Usage(input_tokens=7)


def test_openai_null_completion_tokens_stay_unknown() -> None:
    assert openai({"prompt_tokens": 7, "completion_tokens": None, "total_tokens": 7}) == Usage(input_tokens=7)


@pytest.mark.parametrize("raw", [None, "usage", 12, [], {}])
def test_openai_missing_usage_is_unknown_not_zero(raw: Any) -> None:
    assert openai(raw) == UNKNOWN


@pytest.mark.parametrize("bad", [True, False, -1, 1.5, "12", None, [3], 10**18])  # 10**18: no request's count
def test_openai_bools_negatives_and_non_integers_are_unknown(bad: Any) -> None:
    raw = {
        "prompt_tokens": bad,
        "completion_tokens": bad,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": bad},
        "completion_tokens_details": {"reasoning_tokens": bad},
    }
    assert openai(raw) == UNKNOWN


@pytest.mark.parametrize("usage", [
    b'"usage":{"prompt_tokens":7,"completion_tokens":3}',
    b'"us\\u0061ge":{"prompt_tokens":7,"completion_tokens":3}',  # a key written with an escape
    b'"x":{"usage":null},"usage":{"prompt_tokens":7,"completion_tokens":3}',  # a null usage, and the real one
    b'"usage" : {"prompt_tokens":7,"completion_tokens":3}',
])
def test_a_streamed_usage_chunk_is_read_however_its_key_is_written(usage: bytes) -> None:
    reader = OpenAIReader()
    head = b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"'
    stream = (head + b'Hi"},"finish_reason":null}]}\n\n' + head + b'!"},"finish_reason":null}]}\n\n'
              + b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],' + usage + b'}\n\n'
              + b"data: [DONE]\n\n")
    for event in SSEDecoder().feed(stream):
        reader.feed(event)
    assert (reader.usage.input_tokens, reader.usage.output_tokens) == (7, 3)


def test_openai_zero_is_a_real_count() -> None:
    raw = {"prompt_tokens": 0, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 0}}
    assert openai(raw) == Usage(input_tokens=0, output_tokens=0, cached_tokens=0)


def test_openai_details_of_the_wrong_shape_are_unknown() -> None:
    raw = {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None, "completion_tokens_details": 3}
    assert openai(raw) == Usage(input_tokens=5, output_tokens=1)


# -- Anthropic --------------------------------------------------------------------------------


def test_anthropic_input_counts_cache_reads_and_writes() -> None:
    raw = {"input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 42}
    assert anthropic(raw) == Usage(input_tokens=2112, output_tokens=42, cached_tokens=2000, cache_write_tokens=100)


def test_anthropic_one_hour_cache_writes_are_counted_among_the_writes() -> None:
    raw = {"input_tokens": 100, "cache_read_input_tokens": 5000, "cache_creation_input_tokens": 1000,
           "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600}, "output_tokens": 50}
    used = anthropic(raw)
    assert (used.input_tokens, used.cache_write_tokens, used.cache_write_1h_tokens) == (6100, 1000, 600)


def test_anthropic_web_searches_tier_and_speed() -> None:
    start = {"input_tokens": 20, "output_tokens": 1, "service_tier": "standard", "speed": "fast"}
    delta = {"output_tokens": 30, "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1}}
    assert anthropic(start, delta) == Usage(input_tokens=20, output_tokens=30, web_searches=3,
                                            service_tier="standard", speed="fast")
    assert anthropic({"input_tokens": 20, "output_tokens": 3, "speed": None}) == Usage(input_tokens=20,
                                                                                         output_tokens=3)


def test_anthropic_without_cache_fields() -> None:
    assert anthropic({"input_tokens": 25, "output_tokens": 7}) == Usage(input_tokens=25, output_tokens=7)


def test_anthropic_zero_cache_fields_are_reported_zeros() -> None:
    raw = {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 7}
    assert anthropic(raw) == Usage(input_tokens=25, output_tokens=7, cached_tokens=0, cache_write_tokens=0)


def test_anthropic_message_delta_keeps_earlier_fields() -> None:
    delta = {"output_tokens": 15}
    assert anthropic(CACHED_START, delta) == Usage(
        input_tokens=2112, output_tokens=15, cached_tokens=2000, cache_write_tokens=100
    )


def test_anthropic_cumulative_message_delta_is_not_counted_twice() -> None:
    delta = {**CACHED_START, "output_tokens": 80}
    assert anthropic(CACHED_START, delta) == Usage(
        input_tokens=2112, output_tokens=80, cached_tokens=2000, cache_write_tokens=100
    )


def test_anthropic_delta_with_input_but_no_cache_fields_keeps_the_cache_in_the_input() -> None:
    start = {"input_tokens": 5, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 100, "output_tokens": 1}
    delta = {
        "input_tokens": 5, "cache_creation_input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 30
    }
    assert anthropic(start, delta) == Usage(
        input_tokens=125, output_tokens=30, cached_tokens=100, cache_write_tokens=20
    )


@pytest.mark.parametrize("raw", [None, "usage", [], {}])
def test_anthropic_missing_usage_is_unknown_not_zero(raw: Any) -> None:
    assert anthropic(raw) == UNKNOWN


@pytest.mark.parametrize("bad", [True, False, -3, 2.0, "9", 10**18])
def test_anthropic_bools_negatives_and_non_integers_are_unknown(bad: Any) -> None:
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
    raw = dict.fromkeys(fields, bad)
    assert anthropic(raw) == UNKNOWN


def test_an_implausible_search_count_is_unknown_never_a_cost_past_64_bits() -> None:
    """A broken upstream's 10**16 web searches made a cost JSON cannot hold: the record was lost."""
    raw = {"input_tokens": 10, "output_tokens": 2, "server_tool_use": {"web_search_requests": 10**16}}
    assert anthropic(raw).web_searches is None


def test_anthropic_bad_cache_field_does_not_spoil_the_input() -> None:
    raw = {"input_tokens": 10, "cache_read_input_tokens": True, "cache_creation_input_tokens": -1, "output_tokens": 2}
    assert anthropic(raw) == Usage(input_tokens=10, output_tokens=2)


def test_as_dict_names_every_field() -> None:
    assert Usage(input_tokens=1).as_dict() == {
        "input_tokens": 1,
        "output_tokens": None,
        "cached_tokens": None,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
        "cache_write_1h_tokens": None,
        "input_audio_tokens": None,
        "output_audio_tokens": None,
        "web_searches": None,
        "service_tier": None,
        "speed": None,
    }
