"""Anthropic Messages client, OpenAI-compatible model: requests, messages, event streams and errors.

Outputs are checked field by field, against the SDKs' own types (``anthropic.types`` for what the
client receives, ``openai.types`` for what the provider receives), and end to end through a real
``anthropic.Anthropic`` client whose HTTP transport answers with the translated bytes.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent, StopReason
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.shared import ErrorResponse
from openai.types.chat.chat_completion import Choice
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from ext_proc.core import upstream
from ext_proc.llm.apis import MESSAGES
from ext_proc.llm.translate.anthropic_to_openai import StreamTranslator, error, request, response
from ext_proc.llm.translate.common import STOP_FROM_FINISH, TranslationError
from ext_proc.mock.responses import azure_error, openai_error
from ext_proc.policy.compile import compile_policy

try:  # the anthropic SDK moved from httpx to its fork httpx2
    import httpx2 as http
except ImportError:  # pragma: no cover
    import httpx as http  # type: ignore[no-redef]

MODEL = "gpt-4o-mini-2024-07-18"
EVENT = TypeAdapter(RawMessageStreamEvent)
ANTHROPIC_REQUEST = TypeAdapter(MessageCreateParamsNonStreaming)
OPENAI_REQUEST = TypeAdapter(CompletionCreateParamsNonStreaming)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
    },
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}


def _force(value: Any) -> Any:
    """Materialise pydantic's lazy iterables (the SDK params use ``Iterable``) so every item is checked."""
    if isinstance(value, dict):
        return {key: _force(item) for key, item in value.items()}
    if isinstance(value, list | tuple | Iterator):
        return [_force(item) for item in value]
    return value


def translate(body: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    """``request`` over a body the anthropic SDK's params accept; the output must fit OpenAI's params."""
    _force(ANTHROPIC_REQUEST.validate_python({k: v for k, v in body.items() if k != "stream"}))
    out = request(body, model)
    _force(OPENAI_REQUEST.validate_python({k: v for k, v in out.items() if k not in ("stream", "stream_options")}))
    return out


def rejects(body: dict[str, Any]) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        request(body, MODEL)
    return info.value


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def body_with(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": list(messages), **fields}


# -- request: system, messages, content -----------------------------------------------------------


def test_minimal_request_replaces_the_model_and_keeps_max_tokens() -> None:
    body = body_with({"role": "user", "content": "Hello, Claude"}, system="You are terse.")
    assert translate(body) == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, Claude"}],
        "max_tokens": 1024,
    }


@pytest.mark.parametrize(("kind", "field", "version"), [
    ("openai", "max_completion_tokens", None), ("azure-openai", "max_completion_tokens", "2024-10-21"),
    ("azure-openai", "max_tokens", "2024-06-01"),  # Azure takes max_completion_tokens from 2024-09-01 on
    ("openai-compatible", "max_tokens", None),
])
def test_the_output_limit_goes_in_the_field_the_provider_kind_takes(kind: str, field: str, version: str | None) -> None:
    # OpenAI's reasoning models (gpt-5, o-series) answer max_tokens with a 400 "Unsupported
    # parameter: 'max_tokens' ... Use 'max_completion_tokens' instead" (the recorded
    # chat-bad-request cassette); every OpenAI model takes max_completion_tokens, and many
    # OpenAI-compatible servers know only max_tokens.
    extra = f', api_version: "{version}"' if version else ""
    policy = compile_policy(f"""
apiVersion: tollway/v1
providers:
  p: {{kind: {kind}, endpoint: "https://llm.example"{extra}}}
models:
  gpt: {{provider: p, model: gpt-5-nano}}
teams:
  t: {{workloads: [w], models: ["*"]}}
""")
    hello = body_with({"role": "user", "content": "Hi"})
    body, _ = upstream.prepare(MESSAGES, hello, policy.models["gpt"], "/v1/messages")
    assert body.keys() & {"max_tokens", "max_completion_tokens"} == {field} and body[field] == 1024


def test_system_text_blocks_are_joined_and_cache_control_dropped() -> None:
    system = [
        text("You are a helpful assistant for ACME Corp."),
        text("<policies>Refunds within 30 days.</policies>", cache_control={"type": "ephemeral"}),
    ]
    out = translate(body_with({"role": "user", "content": "Can I get a refund?"}, system=system))
    assert out["messages"][0] == {
        "role": "system",
        "content": "You are a helpful assistant for ACME Corp.\n\n<policies>Refunds within 30 days.</policies>",
    }


@pytest.mark.parametrize("system", ["", []])
def test_an_empty_system_prompt_sends_no_system_message(system: Any) -> None:
    out = translate(body_with({"role": "user", "content": "Hi"}, system=system))
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_system_with_a_non_text_block_is_rejected() -> None:
    err = rejects(body_with({"role": "user", "content": "Hi"}, system=[{"type": "image"}]))
    assert err.param == "system.0"


def test_multi_turn_string_and_block_content() -> None:
    body = body_with(
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        user(text("And of Italy?", cache_control={"type": "ephemeral"})),
        assistant(text("Rome."), text(" Its river is the Tiber.")),
        user(text("Thanks."), text("One more: Spain?")),
    )
    assert translate(body)["messages"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome. Its river is the Tiber."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Thanks."}, {"type": "text", "text": "One more: Spain?"}],
        },
    ]


def test_image_blocks_become_image_url_parts() -> None:
    body = body_with(
        user(
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/ant.jpg"}},
            text("Compare these two images."),
        )
    )
    assert translate(body)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/ant.jpg"}},
                {"type": "text", "text": "Compare these two images."},
            ],
        }
    ]


def test_an_image_from_the_files_api_is_rejected() -> None:
    err = rejects(
        body_with(user({"type": "image", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}))
    )
    assert err.param == "messages.0.content.0"
    assert "Files API" in err.message


def test_plain_text_documents_become_text_parts() -> None:
    body = body_with(
        user(
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
                "title": "Nature facts",
                "context": "From a children's book",
                "citations": {"enabled": True},
            },
            {"type": "document", "source": {"type": "content", "content": [text("Chapter 1."), text("Chapter 2.")]}},
            text("Summarise."),
        )
    )
    assert translate(body)["messages"][0]["content"] == [
        {"type": "text", "text": "Nature facts\n\nFrom a children's book\n\nThe grass is green."},
        {"type": "text", "text": "Chapter 1."},
        {"type": "text", "text": "Chapter 2."},
        {"type": "text", "text": "Summarise."},
    ]


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjcK"},
        {"type": "url", "url": "https://assets.anthropic.com/m/1cd9d098ac3e6467/original/Claude-3-Model-Card.pdf"},
        {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"},
    ],
)
def test_pdf_and_file_documents_are_rejected(source: dict[str, Any]) -> None:
    err = rejects(body_with(user(text("Read this:"), {"type": "document", "source": source})))
    assert err.param == "messages.0.content.1"


# -- request: tools -----------------------------------------------------------------------------


def test_tool_use_and_tool_results_round_trip_in_order() -> None:
    body = body_with(
        {"role": "user", "content": "What's the weather in Paris and in Rome?"},
        assistant(
            {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
            text("I'll check both cities."),
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
            {
                "type": "tool_use",
                "id": "toolu_01B8Cq2Nw3aVWzHLGd5Y4f1t",
                "name": "get_weather",
                "input": {"location": "Rome", "unit": "celsius"},
            },
        ),
        user(
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees, cloudy"},
            text("Also, should I bring an umbrella?"),
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01B8Cq2Nw3aVWzHLGd5Y4f1t",
                "content": [text("22 degrees"), text("sunny")],
                "cache_control": {"type": "ephemeral"},
            },
        ),
        tools=[WEATHER_TOOL],
    )
    assert translate(body)["messages"] == [
        {"role": "user", "content": "What's the weather in Paris and in Rome?"},
        {
            "role": "assistant",
            "content": "I'll check both cities.",
            "tool_calls": [
                {
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {
                    "id": "toolu_01B8Cq2Nw3aVWzHLGd5Y4f1t",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Rome","unit":"celsius"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_01B8Cq2Nw3aVWzHLGd5Y4f1t", "content": "22 degrees\nsunny"},
        {"role": "user", "content": "Also, should I bring an umbrella?"},
    ]


def test_an_assistant_turn_with_only_tool_use_has_null_content() -> None:
    body = body_with(
        {"role": "user", "content": "Weather in Oslo?"},
        assistant({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
        user({"type": "tool_result", "tool_use_id": "toolu_1"}),
        tools=[WEATHER_TOOL],
    )
    assert translate(body)["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": ""},
    ]


def test_error_tool_results_are_prefixed() -> None:
    body = body_with(
        {"role": "user", "content": "Weather?"},
        assistant(
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Nowhere"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"location": "Oslo"}},
        ),
        user(
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Unknown location: Nowhere", "is_error": True},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True},
        ),
        tools=[WEATHER_TOOL],
    )
    assert translate(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: Unknown location: Nowhere"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error"},
    ]


def test_images_in_a_tool_result_follow_in_a_user_message() -> None:
    screenshot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body = body_with(
        {"role": "user", "content": "Take a screenshot."},
        assistant({"type": "tool_use", "id": "toolu_shot", "name": "screenshot", "input": {}}),
        user(
            {"type": "tool_result", "tool_use_id": "toolu_shot", "content": [text("Captured 1 window."), screenshot]},
            text("What do you see?"),
        ),
    )
    assert translate(body)["messages"][2:] == [
        {
            "role": "tool",
            "tool_call_id": "toolu_shot",
            "content": "Captured 1 window.\n[1 image(s) attached in the following user message]",
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Images returned by tool call toolu_shot:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


def test_thinking_only_assistant_turns_are_omitted() -> None:
    body = body_with(
        {"role": "user", "content": "Hi"},
        assistant(
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr"}
        ),
        {"role": "user", "content": "Still there?"},
    )
    assert translate(body)["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Still there?"},
    ]


def test_tools_and_parallel_tool_use() -> None:
    cached_tool = {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}, "strict": True}
    body = body_with(
        {"role": "user", "content": "Weather in Paris?"},
        tools=[cached_tool, {"type": "custom", "name": "get_time", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    out = translate(body)
    assert out["tools"] == [
        WEATHER_FUNCTION,
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    ]
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = translate(body_with({"role": "user", "content": "Weather?"}, tools=[WEATHER_TOOL], tool_choice=choice))
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_tool_choice_without_tools_is_not_sent() -> None:
    out = translate(body_with({"role": "user", "content": "Hi"}, tool_choice={"type": "auto"}))
    assert "tool_choice" not in out and "tools" not in out


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "memory_20250818", "name": "memory"},
    ],
)
def test_anthropic_defined_tools_are_rejected(tool: dict[str, Any]) -> None:
    err = rejects(body_with({"role": "user", "content": "Search the web."}, tools=[WEATHER_TOOL, tool]))
    assert err.param == "tools.1"


@pytest.mark.parametrize(
    "block",
    [
        {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "weather"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": []},
        {"type": "container_upload", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"},
        {"type": "search_result", "source": "https://docs", "title": "Docs", "content": [text("Result")]},
        {"type": "mcp_tool_use", "id": "mcptoolu_01", "name": "echo", "server_name": "srv", "input": {}},
    ],
)
def test_server_feature_blocks_are_rejected(block: dict[str, Any]) -> None:
    turn = user(block) if block["type"] in ("container_upload", "search_result") else assistant(block)
    err = rejects(body_with({"role": "user", "content": "Hi"}, turn))
    assert err.param == "messages.1.content.0"


def test_blocks_in_the_wrong_turn_and_bad_roles_are_rejected() -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    assert rejects(body_with(user(tool_use))).param == "messages.0.content.0"
    assert rejects(body_with(assistant({"type": "tool_result", "tool_use_id": "toolu_1"}))).param == (
        "messages.0.content.0"
    )
    assert rejects(body_with({"role": "system", "content": "Hi"})).param == "messages.0.role"
    assert rejects({"model": "claude", "max_tokens": 5}).param == "messages"


def test_mcp_servers_are_rejected() -> None:
    servers = [{"type": "url", "url": "https://mcp.example.com/sse", "name": "example"}]
    assert rejects(body_with({"role": "user", "content": "Hi"}, mcp_servers=servers)).param == "mcp_servers"


# -- request: parameters ------------------------------------------------------------------------


def test_parameters_map_and_the_rest_is_dropped() -> None:
    body = body_with(
        {"role": "user", "content": "Write a haiku."},
        max_tokens=256,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        stop_sequences=["\n\nHuman:", "END"],
        metadata={"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
        thinking={"type": "enabled", "budget_tokens": 2048},
        service_tier="auto",
        cache_control={"type": "ephemeral"},
        inference_geo="us",
        stream=True,
    )
    assert translate(body) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a haiku."}],
        "max_tokens": 256,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n\nHuman:", "END"],
        "user": "13803d75-b4b5-4c3e-b2a2-6f21399b021b",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_stream_false_is_not_sent() -> None:
    out = request(body_with({"role": "user", "content": "Hi"}, stream=False), MODEL)
    assert "stream" not in out and "stream_options" not in out


def test_structured_output_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    body = body_with(
        {"role": "user", "content": "Extract the name: John Smith."},
        output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}},
    )
    assert translate(body)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


def test_the_older_top_level_output_format_is_understood_too() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    body = body_with({"role": "user", "content": "Is it?"}, output_format={"type": "json_schema", "schema": schema})
    assert request(body, MODEL)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert rejects(body_with({"role": "user", "content": "x"}, output_format={"type": "xml"})).param == "output_format"


def test_a_trailing_assistant_prefill_is_sent_as_an_assistant_message() -> None:
    body = body_with({"role": "user", "content": "Give me JSON."}, {"role": "assistant", "content": "{"})
    assert translate(body)["messages"][-1] == {"role": "assistant", "content": "{"}


def test_tool_input_that_json_cannot_encode_is_rejected() -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "count", "input": {"n": object()}}
    err = rejects(body_with({"role": "user", "content": "Count."}, assistant(tool_use)))
    assert err.param == "messages.1.content.0.input"


def test_a_tool_inputs_integer_beyond_64_bits_stays_exact_in_the_arguments() -> None:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "count", "input": {"n": 2**70}}
    out = request(body_with({"role": "user", "content": "Count."}, assistant(tool_use)), MODEL)
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"n":1180591620717411303424}'


def test_request_does_not_modify_its_input() -> None:
    body = body_with(user(text("Hi", cache_control={"type": "ephemeral"})), system="S", stream=True)
    before = orjson.dumps(body)
    request(body, MODEL)
    assert orjson.dumps(body) == before


# -- response -----------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str | None = "stop", **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage
        or {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def check_message(out: dict[str, Any]) -> Message:
    message = Message.model_validate(out)
    assert message.model_dump(exclude_none=True) == {k: v for k, v in out.items() if v is not None}
    return message


def test_text_response() -> None:
    out = response(
        completion({"role": "assistant", "content": "Hello! How can I help?", "refusal": None, "annotations": []})
    )
    assert out == {
        "id": "msg_B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello! How can I help?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 93,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1024,
            "output_tokens": 46,
        },
    }
    check_message(out)


def test_tool_call_response() -> None:
    message = {
        "role": "assistant",
        "content": "Let me look that up.",
        "tool_calls": [
            {
                "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location": "Paris, France"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
        "refusal": None,
    }
    out = response(completion(message, "tool_calls", prompt_tokens=82, completion_tokens=17, total_tokens=99))
    assert out["content"] == [
        {"type": "text", "text": "Let me look that up."},
        {
            "type": "tool_use",
            "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
            "name": "get_weather",
            "input": {"location": "Paris, France"},
        },
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {
        "input_tokens": 82,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 17,
    }
    check_message(out)


def test_tool_calls_with_finish_reason_stop_still_report_tool_use() -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'}}
    out = response(completion({"role": "assistant", "content": None, "tool_calls": [call]}, "stop"))
    assert out["content"] == [
        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"location": "Rome"}}
    ]
    assert out["stop_reason"] == "tool_use"


@pytest.mark.parametrize("arguments", ['{"location": "Par', "[1, 2]", "null"])
def test_arguments_that_are_not_a_json_object_are_kept_raw(arguments: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    out = response(completion({"role": "assistant", "content": None, "tool_calls": [call]}, "length"))
    assert out["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"_raw_arguments": arguments}}
    ]
    assert out["stop_reason"] == "max_tokens"
    check_message(out)


def test_refusal_becomes_text_and_content_filter_a_refusal() -> None:
    out = response(
        completion(
            {"role": "assistant", "content": None, "refusal": "I'm sorry, I can't help with that."}, "content_filter"
        )
    )
    assert out["content"] == [{"type": "text", "text": "I'm sorry, I can't help with that."}]
    assert out["stop_reason"] == "refusal"
    check_message(out)


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("eos", "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, stop: str) -> None:
    assert response(completion({"role": "assistant", "content": "x"}, finish))["stop_reason"] == stop


def test_every_finish_reason_of_the_sdk_has_its_stop_reason() -> None:
    finish_reasons = typing.get_args(Choice.model_fields["finish_reason"].annotation)
    assert set(STOP_FROM_FINISH) == set(finish_reasons)
    assert set(STOP_FROM_FINISH.values()) <= set(typing.get_args(StopReason))
    for finish in finish_reasons:
        check_message(response(completion({"role": "assistant", "content": "x"}, finish)))


def test_model_override_usage_without_details_and_reasoning_dropped() -> None:
    raw = completion(
        {"role": "assistant", "content": "42", "reasoning_content": "6 times 7"},
        prompt_tokens=10,
        completion_tokens=3,
        total_tokens=13,
    )
    out = response(raw, model="claude-sonnet-4-6")
    assert out["model"] == "claude-sonnet-4-6"
    assert out["content"] == [{"type": "text", "text": "42"}]
    assert out["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
    }


def test_empty_content_and_no_choices() -> None:
    out = response(completion({"role": "assistant", "content": ""}))
    assert out["content"] == []
    check_message(out)
    empty = response({"id": "chatcmpl-x", "object": "chat.completion", "model": MODEL, "choices": []})
    assert empty["content"] == [] and empty["stop_reason"] == "end_turn"
    assert empty["usage"]["input_tokens"] == 0
    check_message(empty)


# -- stream -------------------------------------------------------------------------------------

CHUNK_ID = "chatcmpl-AYqqcuEcGw6Ye3Ct8Ti1hV8UvGb5F"
MSG_ID = "msg_AYqqcuEcGw6Ye3Ct8Ti1hV8UvGb5F"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1732896250,
        "model": MODEL,
        "system_fingerprint": "fp_0705bf87c0",
        "choices": [
            {"index": 0, "delta": delta if delta is not None else {}, "logprobs": None, "finish_reason": finish}
        ],
        "usage": usage,
    }


def usage_chunk(prompt: int = 19, completion_tokens: int = 10, cached: int = 0) -> dict[str, Any]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": 1732896250,
        "model": MODEL,
        "system_fingerprint": "fp_0705bf87c0",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def tool_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"tool_calls": [call]}


def parse(stream: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The events of an SSE byte stream, each checked against the anthropic SDK's event types."""
    assert stream == b"" or stream.endswith(b"\n\n")
    events = []
    for block in stream.split(b"\n\n")[:-1]:
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:].decode()
        if data["type"] != "error":
            EVENT.validate_python(data)
        events.append((data["type"], data))
    return events


def run(chunks: list[dict[str, Any]], *, done: bool = True, model: str | None = None) -> tuple[bytes, StreamTranslator]:
    translator = StreamTranslator(model=model)
    out = b"".join(translator.chunk(c) for c in chunks)
    if done:
        out += translator.done()
    return out + translator.end(), translator


TEXT_STREAM = [
    chunk({"role": "assistant", "content": "", "refusal": None}),
    chunk({"content": "Hello"}),
    chunk({"content": "! How can I"}),
    chunk({"content": " help?"}),
    chunk(finish="stop"),
    usage_chunk(prompt=2006, completion_tokens=9, cached=1920),
]


def message_start(model: str = MODEL) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": MSG_ID,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # (no estimate given: see the test with one)
        },
    }


def message_delta(stop: str, input_tokens: int, output_tokens: int, cached: int = 0,
                  written: int = 0) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "cache_read_input_tokens": cached,
                  "cache_creation_input_tokens": written},
    }


def text_delta(index: int, value: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": value}}


def json_delta(index: int, value: str) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": value}}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


MESSAGE_STOP = {"type": "message_stop"}


def test_text_stream_events() -> None:
    out, translator = run(TEXT_STREAM, model="claude-sonnet-4-6")
    assert [data for _, data in parse(out)] == [
        message_start("claude-sonnet-4-6"),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "Hello"),
        text_delta(0, "! How can I"),
        text_delta(0, " help?"),
        block_stop(0),
        message_delta("end_turn", 86, 9, cached=1920),
        MESSAGE_STOP,
    ]
    assert translator.complete


def test_the_framing_is_event_then_data() -> None:
    translator = StreamTranslator()
    translator.chunk(TEXT_STREAM[0])
    assert translator.chunk(TEXT_STREAM[1]) == (
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    )
    assert translator.chunk(chunk({"content": 'say "hi"\n\u00e9'})) == (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"say \\"hi\\"\\n\xc3\xa9"}}\n\n'
    )


TOOL_STREAM = [
    chunk({"role": "assistant", "content": None, "refusal": None}),
    chunk({"content": "Checking both."}),
    chunk(tool_delta(0, "", "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather")),
    chunk(tool_delta(0, '{"lo')),
    chunk(tool_delta(0, 'cation": "Paris"}')),
    chunk(tool_delta(1, "", "call_QKAbcq6CgEfuNOyA8fTQ1n6X", "get_weather")),
    chunk(tool_delta(1, '{"location": "Rome", ')),
    chunk(tool_delta(1, '"unit": "celsius"}')),
    chunk(finish="tool_calls"),
    usage_chunk(prompt=120, completion_tokens=48),
]


def test_tool_call_stream_events() -> None:
    out, translator = run(TOOL_STREAM)
    assert [data for _, data in parse(out)] == [
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        text_delta(0, "Checking both."),
        block_stop(0),
        block_start(1, {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {}}),
        json_delta(1, '{"lo'),
        json_delta(1, 'cation": "Paris"}'),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "call_QKAbcq6CgEfuNOyA8fTQ1n6X", "name": "get_weather", "input": {}}),
        json_delta(2, '{"location": "Rome", '),
        json_delta(2, '"unit": "celsius"}'),
        block_stop(2),
        message_delta("tool_use", 120, 48),
        MESSAGE_STOP,
    ]
    assert translator.complete


def test_text_after_a_tool_call_opens_a_new_text_block() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk(tool_delta(0, '{"location":"Oslo"}', "call_1", "get_weather")),
        chunk({"content": "Done."}),
        chunk(finish="stop"),
    ]
    out, _ = run(chunks)
    assert [data for _, data in parse(out)][1:] == [
        block_start(0, {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}),
        json_delta(0, '{"location":"Oslo"}'),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        text_delta(1, "Done."),
        block_stop(1),
        {**message_delta("tool_use", 0, 0), "usage": {"output_tokens": 0}},  # (no usage chunk: none invented)
        MESSAGE_STOP,
    ]


def test_a_tool_call_starts_when_its_name_arrives() -> None:
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_7", "type": "function", "function": {"arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": ': "Lima"}'}}]}),
        chunk(finish="tool_calls"),
        usage_chunk(),
    ]
    out, _ = run(chunks)
    assert [data for _, data in parse(out)][1:4] == [
        block_start(0, {"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {}}),
        json_delta(0, '{"city": "Lima"}'),
        block_stop(0),
    ]


def test_tool_calls_without_index_are_told_apart_by_id() -> None:
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
        chunk(finish="tool_calls"),
    ]
    out, _ = run(chunks)
    assert [data for _, data in parse(out)][1:-2] == [
        block_start(0, {"type": "tool_use", "id": "call_a", "name": "f", "input": {}}),
        json_delta(0, "{}"),
        block_stop(0),
        block_start(1, {"type": "tool_use", "id": "call_b", "name": "g", "input": {}}),
        json_delta(1, "{"),
        json_delta(1, "}"),
        block_stop(1),
    ]


def test_interleaved_tool_call_fragments_cannot_be_expressed() -> None:
    translator = StreamTranslator()
    translator.chunk(chunk(tool_delta(0, '{"a":', "call_a", "f")))
    translator.chunk(chunk(tool_delta(1, '{"b":', "call_b", "g")))
    with pytest.raises(TranslationError):
        translator.chunk(chunk(tool_delta(0, "1}")))


def test_message_delta_waits_for_the_usage_chunk() -> None:
    translator = StreamTranslator()
    for c in TEXT_STREAM[:-1]:
        translator.chunk(c)
    assert not translator.complete
    out = translator.chunk(TEXT_STREAM[-1])
    assert [data for _, data in parse(out)] == [message_delta("end_turn", 86, 9, cached=1920), MESSAGE_STOP]
    assert translator.complete
    assert translator.done() == b""
    assert translator.end() == b""
    assert translator.chunk(usage_chunk()) == b""


def test_without_a_usage_chunk_done_ends_the_message_without_inventing_input_usage() -> None:
    """No usage chunk from the provider: message_delta told input, cache reads and writes of 0, as
    if reported. They are left out (optional in the SDK's type); output_tokens, which it needs, is 0;
    message_start's input is the prompt's estimate Tollway made (the record's), when it has one."""
    translator = StreamTranslator(estimate=42)
    out = b"".join(translator.chunk(c) for c in TEXT_STREAM[:-1]) + translator.done()
    events = parse(out)
    assert events[0][1]["message"]["usage"] == {"input_tokens": 42, "output_tokens": 0}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 0}}
    assert [data for _, data in events[-2:]] == [end, MESSAGE_STOP]
    assert translator.complete and translator.end() == b""
    snapshot = None  # the SDK's types take them, and its snapshot keeps the estimate
    buffers: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None and (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (42, 0)


def test_end_after_a_finish_reason_without_done_completes() -> None:
    out, translator = run(TEXT_STREAM[:-1], done=False)
    assert [name for name, _ in parse(out)][-2:] == ["message_delta", "message_stop"]
    assert translator.complete


def test_usage_in_the_finish_chunk_ends_the_message_at_once() -> None:
    translator = StreamTranslator()
    translator.chunk(TEXT_STREAM[0])
    translator.chunk(TEXT_STREAM[1])
    usage = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    out = translator.chunk(chunk(finish="length", usage=usage))
    assert [data for _, data in parse(out)] == [block_stop(0), message_delta("max_tokens", 12, 2), MESSAGE_STOP]


def test_usage_on_every_chunk_splits_the_prompt_by_the_last_cache_details() -> None:
    """A server reporting usage on every chunk, the cache's details only in its last: the largest
    of each count the provider said (prompt 100, cache reads 80), then split (20 uncached). Taking
    the largest of each split instead kept the early chunk's 100 uncached beside the 80 read:
    the client was told 180 input tokens."""
    translator = StreamTranslator()
    translator.chunk(TEXT_STREAM[0])
    translator.chunk(chunk({"content": "Hi"}, usage={"prompt_tokens": 100, "completion_tokens": 1}))
    out = translator.chunk(chunk(finish="stop", usage={"prompt_tokens": 100, "completion_tokens": 2,
                                                       "prompt_tokens_details": {"cached_tokens": 80}}))
    assert [data for _, data in parse(out)][-2:] == [message_delta("end_turn", 20, 2, cached=80), MESSAGE_STOP]


def test_cache_writes_the_chat_server_reports_reach_the_anthropic_client() -> None:
    """OpenAI counts cache writes in ``prompt_tokens``, Anthropic apart from ``input_tokens``."""
    usage = {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102,
             "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30}}
    whole = response(completion({"role": "assistant", "content": "Hi"}, **usage))
    assert whole["usage"] == {"input_tokens": 50, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 20,
                              "output_tokens": 2}
    translator = StreamTranslator()
    translator.chunk(TEXT_STREAM[0])
    translator.chunk(TEXT_STREAM[1])
    out = translator.chunk(chunk(finish="stop", usage=usage))
    assert [data for _, data in parse(out)][1] == message_delta("end_turn", 50, 2, cached=20, written=30)


def test_a_truncated_stream_is_not_completed() -> None:
    out, translator = run(TEXT_STREAM[:3], done=False)
    assert [name for name, _ in parse(out)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    assert not translator.complete
    assert translator.end() == b""
    assert translator.done() == b""
    assert translator.error("The provider stream ended early.") == (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"api_error","message":"The provider stream ended early."}}\n\n'
    )


def test_an_empty_stream_emits_nothing() -> None:
    translator = StreamTranslator()
    assert translator.done() == b"" and translator.end() == b"" and not translator.complete


def test_content_after_the_finish_reason_is_ignored() -> None:
    translator = StreamTranslator()
    for c in TEXT_STREAM[:-1]:
        translator.chunk(c)
    assert translator.chunk(chunk({"content": "late"})) == b""


def test_an_error_object_in_the_stream_becomes_an_error_event() -> None:
    translator = StreamTranslator()
    translator.chunk(TEXT_STREAM[0])
    out = translator.chunk({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}})
    assert parse(out) == [("error", {"type": "error", "error": {"type": "api_error", "message": "CUDA out of memory"}})]
    assert translator.chunk(TEXT_STREAM[1]) == b"" and translator.end() == b""


def test_error_event_kind() -> None:
    out = StreamTranslator().error("Overloaded", "overloaded_error")
    assert parse(out) == [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    ErrorResponse.model_validate(parse(out)[0][1])


def test_stream_accumulates_with_the_sdk_helper() -> None:
    out, _ = run(TOOL_STREAM)
    snapshot = None
    buffers: dict[int, bytes] = {}
    for _, data in parse(out):
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    assert snapshot.model_dump(exclude_none=True) == {
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "text", "text": "Checking both."},
            {
                "type": "tool_use",
                "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
            {
                "type": "tool_use",
                "id": "call_QKAbcq6CgEfuNOyA8fTQ1n6X",
                "name": "get_weather",
                "input": {"location": "Rome", "unit": "celsius"},
            },
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 120,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 48,
        },
    }


# -- through a real anthropic client ----------------------------------------------------------------


def client(
    status: int, body: bytes, content_type: str, seen: list[dict[str, Any]] | None = None
) -> anthropic.Anthropic:
    def answer(req: Any) -> Any:
        if seen is not None:
            seen.append(orjson.loads(req.content))
        return http.Response(status, headers={"content-type": content_type}, content=body)

    transport: Callable[..., Any] = http.MockTransport
    return anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="http://tollway.test",
        max_retries=0,
        http_client=http.Client(transport=transport(answer)),
    )


def test_the_sdk_stream_helper_reads_the_translated_stream() -> None:
    out, _ = run(TOOL_STREAM, model="claude-sonnet-4-6")
    seen: list[dict[str, Any]] = []
    sdk = client(200, out, "text/event-stream", seen)
    params: Any = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Weather in Paris and Rome?"}],
        "tools": [WEATHER_TOOL],
    }
    with sdk.messages.stream(**params) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Checking both."]
    assert final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[2].input == {"location": "Rome", "unit": "celsius"}  # type: ignore[union-attr]
    assert final.usage.input_tokens == 120 and final.usage.output_tokens == 48
    # What the SDK sent is what request() translates (with stream on: usage is asked for).
    assert request(seen[0], MODEL)["stream_options"] == {"include_usage": True}


def test_the_sdk_raises_on_the_error_event() -> None:
    translator = StreamTranslator()
    out = b"".join(translator.chunk(c) for c in TEXT_STREAM[:3]) + translator.end()
    out += translator.error("The provider stream ended early.")
    sdk = client(200, out, "text/event-stream")
    with (
        pytest.raises(anthropic.APIStatusError, match="ended early"),
        sdk.messages.stream(model="claude", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]) as stream,
    ):
        stream.get_final_message()


def test_the_sdk_reads_the_translated_message() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Oslo"}'}}
    out = response(completion({"role": "assistant", "content": "On it.", "tool_calls": [call]}, "tool_calls"))
    sdk = client(200, orjson.dumps(out), "application/json")
    message = sdk.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "Oslo?"}])
    assert message.id == "msg_B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    assert message.stop_reason == "tool_use"
    assert message.content[1].input == {"location": "Oslo"}  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 1024


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "exception"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "request_too_large", anthropic.APIStatusError),
        (422, "invalid_request_error", anthropic.UnprocessableEntityError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (503, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.InternalServerError),
    ],
)
def test_openai_errors_by_status(status: int, kind: str, exception: type[Exception]) -> None:
    message = f"Upstream said no ({status})."
    out = error(status, openai_error(status, message))
    assert orjson.loads(out) == {"type": "error", "error": {"type": kind, "message": message}}
    if kind != "request_too_large":  # documented by Anthropic, not (yet) among the SDK's error types
        ErrorResponse.model_validate_json(out)
    sdk = client(status, out, "application/json")
    with pytest.raises(exception) as info:
        sdk.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert isinstance(info.value, anthropic.APIStatusError) and info.value.status_code == status
    assert info.value.body == orjson.loads(out)


def test_real_openai_error_bodies_keep_their_message() -> None:
    body = (
        b'{\n    "error": {\n        "message": "This model\'s maximum context length is 128000 tokens. However, '
        b'your messages resulted in 130050 tokens. Please reduce the length of the messages.",\n'
        b'        "type": "invalid_request_error",\n        "param": "messages",\n'
        b'        "code": "context_length_exceeded"\n    }\n}\n'
    )
    assert orjson.loads(error(400, body))["error"] == {
        "type": "invalid_request_error",
        "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130050 tokens. Please reduce the length of the messages.",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            azure_error(401),
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        ),
        (
            b'{"object":"error","message":"The model `llama` does not exist.","type":"NotFoundError","code":404}',
            "The model `llama` does not exist.",
        ),
        (b'{"detail":"Not Found"}', "Not Found"),
        (b'{"error":"model not found"}', "model not found"),
        (
            b'[{"error":{"code":404,"message":"models/gemini-x is not found","status":"NOT_FOUND"}}]',
            "models/gemini-x is not found",
        ),
    ],
)
def test_other_json_error_shapes(body: bytes, message: str) -> None:
    assert orjson.loads(error(404, body))["error"] == {"type": "not_found_error", "message": message}


def test_an_html_error_page_gives_a_short_message() -> None:
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
        b"</center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
    )
    assert orjson.loads(error(502, page)) == {
        "type": "error",
        "error": {"type": "api_error", "message": "The provider answered HTTP 502: 502 Bad Gateway"},
    }
    untitled = orjson.loads(error(504, b"<!DOCTYPE html><html><body>Gateway Timeout</body></html>"))
    assert untitled["error"] == {
        "type": "timeout_error", "message": "The provider answered HTTP 504 with a non-JSON body."
    }


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_an_empty_error_body(body: bytes) -> None:
    assert orjson.loads(error(503, body)) == {
        "type": "error",
        "error": {"type": "api_error", "message": "The provider answered HTTP 503 with an empty body."},
    }


def test_plain_text_and_unrecognised_json_bodies_are_kept() -> None:
    envoy = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
    assert orjson.loads(error(503, envoy))["error"]["message"] == envoy.decode()
    assert orjson.loads(error(400, b'{"status": "bad"}'))["error"]["message"] == '{"status": "bad"}'
    long = error(500, b"x" * 10_000)
    assert len(orjson.loads(long)["error"]["message"]) == 500
    assert orjson.loads(error(402, openai_error(402, "Insufficient credits")))["error"]["type"] == "billing_error"
