"""OpenAI Chat Completions client served from Anthropic Messages: requests, responses, streams, errors.

Outputs are checked as exact shapes, and against the SDKs: every response and stream chunk must
validate as the ``openai`` SDK's own types (and go through a real ``openai`` client over a mock
transport), and every request must validate as the ``anthropic`` SDK's ``MessageCreateParams``
with no key left unaccounted for.
"""

from __future__ import annotations

import copy
import re
import time
import typing
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent, StopReason, message_create_params
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import Choice
from pydantic import TypeAdapter

from ext_proc.llm import runtime
from ext_proc.llm.apis import CHAT_COMPLETIONS, MESSAGES
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.translate import PAIRS
from ext_proc.llm.translate.common import FINISH_FROM_STOP, TranslationError
from ext_proc.llm.translate.openai_to_anthropic import StreamTranslator, error, request, response, uses_functions

CLAUDE = "claude-sonnet-4-5-20250929"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city.", "parameters": WEATHER_PARAMS},
}

# -- Anthropic request validation ------------------------------------------------------------------

ANTHROPIC_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
_NON_STREAMING = TypeAdapter(message_create_params.MessageCreateParamsNonStreaming)
_STREAMING = TypeAdapter(message_create_params.MessageCreateParamsStreaming)
# Sampling parameters the Messages API accepts but anthropic>=2 no longer types (some models refuse them).
_UNTYPED = ("temperature", "top_p")


def _materialise(value: Any) -> Any:
    """Pydantic validates ``Iterable[...]`` fields lazily: iterate them so every item is checked."""
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return value
    return [_materialise(v) for v in value]


def check_anthropic(body: dict[str, Any]) -> None:
    """``body`` is a valid Messages request and carries no key the SDK's types do not know."""
    typed = {k: v for k, v in body.items() if k not in _UNTYPED}
    adapter = _STREAMING if body.get("stream") else _NON_STREAMING
    validated = _materialise(adapter.validate_python(typed))
    # Unknown keys are ignored (dropped) by validation: equality proves there were none, at any depth.
    assert validated == typed
    for key in _UNTYPED:
        if key in body:
            assert isinstance(body[key], int | float)


def translate(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o", "messages": messages, **fields}
    before = copy.deepcopy(body)
    out = request(body, CLAUDE)
    assert body == before, "the client's body must not be modified"
    check_anthropic(out)
    return out


def refused(messages: list[dict[str, Any]], **fields: Any) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        request({"model": "gpt-4o", "messages": messages, **fields}, CLAUDE)
    return info.value


HELLO = [{"role": "user", "content": "Hello"}]


# -- Request: messages -------------------------------------------------------------------------------


def test_minimal_request() -> None:
    assert translate(HELLO) == {"model": CLAUDE, "max_tokens": 4096, "messages": [{"role": "user", "content": "Hello"}]}


def test_system_and_developer_messages_become_the_system_prompt_in_order() -> None:
    out = translate(
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "What is the capital of Italy?"},
        ]
    )
    assert out["system"] == "You are a terse assistant.\n\nAnswer in French."
    assert out["messages"] == [{"role": "user", "content": "What is the capital of Italy?"}]


def test_system_text_parts_are_joined_and_a_late_system_message_is_hoisted() -> None:
    out = translate(
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}],
            },
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Rule three."},
            {"role": "user", "content": "Still there?"},
        ]
    )
    assert out["system"] == "Rule one.\n\nRule two.\n\nRule three."
    # The system message no longer separates the two user messages: they become one turn.
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Still there?"}]}
    ]


def test_system_part_that_is_not_text_is_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert refused([{"role": "system", "content": [image]}, *HELLO]).param == "messages[0].content[0]"


def test_multi_turn_conversation_keeps_alternation() -> None:
    out = translate(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "11"},
            {"role": "user", "content": "Their sum?"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "11"},
        {"role": "user", "content": "Their sum?"},
    ]


def test_adjacent_same_role_messages_are_merged() -> None:
    out = translate(
        [
            {"role": "user", "content": "First question."},
            {"role": "user", "content": [{"type": "text", "text": "Second question."}]},
            {"role": "assistant", "content": "First answer."},
            {"role": "assistant", "content": [{"type": "text", "text": "Second answer."}]},
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "First question."}, {"type": "text", "text": "Second question."}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "First answer."}, {"type": "text", "text": "Second answer."}],
        },
        {"role": "user", "content": "Thanks"},
    ]


def test_empty_and_whitespace_text_is_left_out() -> None:
    out = translate(
        [
            {"role": "user", "content": [{"type": "text", "text": "  "}, {"type": "text", "text": "Real question"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "Follow-up"},
        ]
    )
    # The empty assistant turn is dropped, so the user turns around it merge.
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Real question"}, {"type": "text", "text": "Follow-up"}]}
    ]


def test_message_names_are_dropped() -> None:
    out = translate([{"role": "user", "name": "alice", "content": "Hi"}])
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "system", "content": "Only a system prompt."}], "messages"),
        (["not an object"], "messages[0]"),
        ([{"role": "critic", "content": "Hi"}], "messages[0].role"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}], "messages[0].content[0]"),
    ],
)
def test_unusable_messages_are_refused(messages: list[Any], param: str) -> None:
    assert refused(messages).param == param


@pytest.mark.parametrize(("messages", "message"), [
    ([{"content": "Hi"}], "'messages[0].role' none is not a chat message role."),
    ([{"role": "critic", "content": "Hi"}], "'messages[0].role' \"critic\" is not a chat message role."),
    ([{"role": "user", "content": [{}]}], "'messages[0].content[0]' has an unsupported content part type none."),
])
def test_a_refusal_shows_what_was_sent_as_json(messages: list[Any], message: str) -> None:
    """Not Python's repr (None, 'x'): the client wrote JSON."""
    assert refused(messages).message == message


def test_missing_messages_are_refused() -> None:
    with pytest.raises(TranslationError) as info:
        request({"model": "gpt-4o"}, CLAUDE)
    assert info.value.param == "messages"


# -- Request: images and files ---------------------------------------------------------------------


def test_images_from_data_and_http_urls() -> None:
    out = translate(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these two."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "http://example.com/dog.webp"}},
                ],
            }
        ]
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these two."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "url", "url": "http://example.com/dog.webp"}},
            ],
        }
    ]


def test_image_jpg_media_type_alias_and_bare_string_url() -> None:
    out = translate(
        [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/jpg;base64,/9j/4AAQ"}]}]
    )
    assert out["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
    ]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "data:image/png,rawbytes", "data:;base64,AAAA", "file:///etc/passwd"]
)
def test_unusable_image_urls_are_refused(url: str) -> None:
    error_ = refused([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    assert error_.param == "messages[0].content[0].image_url.url"


def test_inline_pdf_file_becomes_a_document() -> None:
    part = {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
    out = translate([{"role": "user", "content": [part, {"type": "text", "text": "Summarise it."}]}])
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
            "title": "report.pdf",
        },
        {"type": "text", "text": "Summarise it."},
    ]


@pytest.mark.parametrize(
    "file", [{"file_id": "file-abc123"}, {"file_data": "data:text/csv;base64,YSxiCg==", "filename": "a.csv"}]
)
def test_other_files_are_refused(file: dict[str, Any]) -> None:
    assert (
        refused([{"role": "user", "content": [{"type": "file", "file": file}]}]).param == "messages[0].content[0].file"
    )


def test_audio_input_is_refused() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
    assert refused([{"role": "user", "content": [part]}]).param == "messages[0].content[0]"


# -- Request: tool calls and results ---------------------------------------------------------------

TOOL_TURN: dict[str, Any] = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_Wk3GZ0aM7pTzq1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
        },
        {
            "id": "call_9xQe2LcV0bRf",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
        },
    ],
}


def test_assistant_tool_calls_and_tool_results() -> None:
    out = translate(
        [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            TOOL_TURN,
            {"role": "tool", "tool_call_id": "call_Wk3GZ0aM7pTzq1", "content": '{"temp": 18}'},
            {
                "role": "tool",
                "tool_call_id": "call_9xQe2LcV0bRf",
                "content": [{"type": "text", "text": '{"temp": 24}'}],
            },
            {"role": "user", "content": "Which is warmer?"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_Wk3GZ0aM7pTzq1",
                    "name": "get_weather",
                    "input": {"city": "Paris", "unit": "celsius"},
                },
                {"type": "tool_use", "id": "call_9xQe2LcV0bRf", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_Wk3GZ0aM7pTzq1", "content": '{"temp": 18}'},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_9xQe2LcV0bRf",
                    "content": [{"type": "text", "text": '{"temp": 24}'}],
                },
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


def test_assistant_text_before_tool_calls_and_empty_arguments() -> None:
    turn = {
        "role": "assistant",
        "content": "Let me check the clock.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}}],
    }
    out = translate([*HELLO, turn, {"role": "tool", "tool_call_id": "call_1", "content": ""}])
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check the clock."},
                {"type": "tool_use", "id": "call_1", "name": "now", "input": {}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1"}]},
    ]


def test_tool_call_ids_are_made_acceptable_the_same_way_on_both_sides() -> None:
    call = {"id": "functions.get_weather:0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    out = translate(
        [
            *HELLO,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "sunny"},
        ]
    )
    made = out["messages"][1]["content"][0]["id"]
    assert re.fullmatch(r"functions_get_weather_0_[0-9a-f]{8}", made)
    assert out["messages"][2]["content"][0]["tool_use_id"] == made


def test_two_tool_call_ids_stay_two_when_made_acceptable() -> None:
    """``call.1`` and ``call_1`` would both become ``call_1``: Claude would pair both results with
    one call. An id changed gets its own hash; an acceptable id stays as it is."""
    calls = [{"id": name, "type": "function", "function": {"name": "f", "arguments": "{}"}}
             for name in ("call.1", "call_1", "call 1")]
    out = translate([*HELLO, {"role": "assistant", "content": None, "tool_calls": calls},
                     *({"role": "tool", "tool_call_id": call["id"], "content": call["id"]} for call in calls)])
    ids = [block["id"] for block in out["messages"][1]["content"]]
    assert ids[1] == "call_1" and len(set(ids)) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    results = {block["content"]: block["tool_use_id"] for block in out["messages"][2]["content"]}
    assert [results[call["id"]] for call in calls] == ids


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ('{"city": "Paris"', "messages[1].tool_calls[0].function.arguments"),
        ('["Paris"]', "messages[1].tool_calls[0].function.arguments"),
        ({"city": "Paris"}, "messages[1].tool_calls[0].function.arguments"),
    ],
)
def test_tool_call_arguments_that_are_not_a_json_object_are_refused(arguments: Any, param: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    assert refused([*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]}]).param == param


def test_tool_message_without_id_and_custom_tool_calls_are_refused() -> None:
    assert refused([*HELLO, {"role": "tool", "content": "x"}]).param == "messages[1].tool_call_id"
    custom = {"id": "call_1", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}}
    assert refused([*HELLO, {"role": "assistant", "tool_calls": [custom]}]).param == "messages[1].tool_calls[0]"


def test_assistant_refusal_part_becomes_text_and_audio_turns_are_refused() -> None:
    refusal = {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    out = translate([*HELLO, refusal, {"role": "user", "content": "OK"}])
    assert out["messages"][1] == {"role": "assistant", "content": "I can't help with that."}
    audio_turn = {"role": "assistant", "content": None, "audio": {"id": "audio_abc"}}
    assert refused([*HELLO, audio_turn]).param == "messages[1].audio"


def test_legacy_functions_are_served_as_tools() -> None:
    out = translate(
        [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": '{"temp": -3}'},
        ],
        functions=[WEATHER_TOOL["function"]],
        function_call={"name": "get_weather"},
    )
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_legacy_1", "name": "get_weather", "input": {"city": "Oslo"}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_legacy_1", "content": '{"temp": -3}'}],
        },
    ]
    assert out["tools"] == [
        {"name": "get_weather", "description": "Current weather for a city.", "input_schema": WEATHER_PARAMS}
    ]
    # One call at a time: the legacy answer (message.function_call) holds one.
    assert out["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("function_call", "choice"), [
    ("auto", {"type": "auto", "disable_parallel_tool_use": True}),
    (None, {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", {"type": "none"}),
])
def test_legacy_function_call_modes(function_call: str | None, choice: dict[str, Any]) -> None:
    fields = {"function_call": function_call} if function_call else {}
    out = translate(HELLO, functions=[WEATHER_TOOL["function"]], **fields)
    assert out["tool_choice"] == choice


@pytest.mark.parametrize(("fields", "legacy"), [
    ({"functions": [WEATHER_TOOL["function"]]}, True),
    ({"functions": [WEATHER_TOOL["function"]], "tools": [WEATHER_TOOL]}, False),  # tools win, as in the request
    ({"tools": [WEATHER_TOOL]}, False),
    ({"functions": []}, False),
    ({}, False),
])
def test_which_requests_get_the_legacy_answer(fields: dict[str, Any], legacy: bool) -> None:
    assert uses_functions({"model": "gpt-4o", "messages": HELLO, **fields}) is legacy


def test_function_message_without_a_call_is_refused() -> None:
    assert refused([*HELLO, {"role": "function", "name": "f", "content": "1"}]).param == "messages[1]"


# -- Request: tools and tool choice ------------------------------------------------------------------


def test_tools_are_mapped_and_schemas_are_shared_not_copied() -> None:
    no_params = {"type": "function", "function": {"name": "get_time"}}
    no_type = {
        "type": "function",
        "function": {"name": "echo", "parameters": {"properties": {"x": {"type": "string"}}}},
    }
    out = translate(HELLO, tools=[WEATHER_TOOL, no_params, no_type])
    assert out["tools"] == [
        {"name": "get_weather", "description": "Current weather for a city.", "input_schema": WEATHER_PARAMS},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        {"name": "echo", "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}}},
    ]
    assert out["tools"][0]["input_schema"] is WEATHER_PARAMS
    assert "tool_choice" not in out


def test_strict_function_flag_is_dropped() -> None:
    strict = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}
    assert translate(HELLO, tools=[strict])["tools"][0] == {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": WEATHER_PARAMS,
    }


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
        (None, None, None),
    ],
)
def test_tool_choice(tool_choice: Any, parallel: bool | None, expected: dict[str, Any] | None) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert translate(HELLO, **fields).get("tool_choice") == expected


def test_tool_choice_without_tools_is_dropped() -> None:
    assert translate(HELLO, tool_choice="auto", parallel_tool_calls=False) == translate(HELLO)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "custom", "custom": {"name": "sql"}}]},
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
        {"tools": [WEATHER_TOOL], "tool_choice": "sometimes"},
        {"tools": [{"type": "function", "function": {"description": "no name"}}]},
    ],
)
def test_tools_that_cannot_be_expressed_are_refused(fields: dict[str, Any]) -> None:
    refused(HELLO, **fields)


# -- Request: parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("\n\nHuman:", ["\n\nHuman:"]), (["END", "STOP"], ["END", "STOP"]), ([], None), (None, None)],
)
def test_stop_sequences(stop: Any, expected: list[str] | None) -> None:
    assert translate(HELLO, stop=stop).get("stop_sequences") == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, 4096),
        ({"max_tokens": 300}, 300),
        ({"max_completion_tokens": 500}, 500),
        ({"max_completion_tokens": 500, "max_tokens": 300}, 500),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert translate(HELLO, **fields)["max_tokens"] == expected


def test_default_max_tokens_argument() -> None:
    assert request({"messages": HELLO}, CLAUDE, default_max_tokens=1024)["max_tokens"] == 1024


@pytest.mark.parametrize(("given", "sent"), [(0, 0), (0.7, 0.7), (1, 1), (1.6, 1), (2, 1), (-0.5, 0)])
def test_temperature_is_clamped_to_anthropic_range(given: float, sent: float) -> None:
    assert translate(HELLO, temperature=given)["temperature"] == sent


def test_top_p_stream_and_user() -> None:
    out = translate(HELLO, top_p=0.9, stream=True, user="user-8841")
    assert out == {
        "model": CLAUDE,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hello"}],
        "top_p": 0.9,
        "stream": True,
        "metadata": {"user_id": "user-8841"},
    }
    assert "stream" not in translate(HELLO, stream=False)
    assert translate(HELLO, safety_identifier="hash-77")["metadata"] == {"user_id": "hash-77"}


def test_model_is_replaced() -> None:
    assert request({"model": "gpt-4o-mini", "messages": HELLO}, "claude-haiku-4-5")["model"] == "claude-haiku-4-5"


def test_fields_without_counterpart_are_dropped() -> None:
    dropped = {
        "stream_options": {"include_usage": True},
        "seed": 42,
        "logprobs": True,
        "top_logprobs": 3,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.2,
        "logit_bias": {"50256": -100},
        "service_tier": "flex",
        "store": True,
        "metadata": {"session": "abc"},
        "modalities": ["text"],
        "reasoning_effort": "low",
        "prediction": {"type": "content", "content": "def f(): pass"},
        "verbosity": "low",
        "prompt_cache_key": "k1",
        "n": 1,
        "response_format": {"type": "text"},
    }
    assert translate(HELLO, **dropped) == translate(HELLO)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"response_format": {"type": "grammar", "grammar": "root ::= x"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ],
)
def test_requests_that_would_change_shape_are_refused(fields: dict[str, Any], param: str) -> None:
    assert refused(HELLO, **fields).param == param


def test_json_object_response_format_adds_an_instruction() -> None:
    out = translate(
        [{"role": "system", "content": "You extract data."}, *HELLO], response_format={"type": "json_object"}
    )
    assert out["system"] == (
        "You extract data.\n\nRespond with a single valid JSON object and nothing else: no prose before or after it, "
        "no Markdown code fences."
    )


def test_a_json_schema_bound_beyond_64_bits_is_written_exactly() -> None:
    """A request read exactly holds a real integer past 64 bits, which orjson cannot write: the
    instruction's schema raised TypeError and the session crashed."""
    schema = {"type": "integer", "maximum": 123456789012345678901234567890}
    out = translate(HELLO, response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    assert '{"type":"integer","maximum":123456789012345678901234567890}' in out["system"]


def test_json_schema_response_format_includes_the_schema() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    out = translate(
        HELLO,
        response_format={"type": "json_schema", "json_schema": {"name": "math", "schema": schema, "strict": True}},
    )
    assert out["system"] == (
        "Respond with a single valid JSON object that conforms to the JSON Schema below (named 'math'), and nothing "
        "else: no prose before or after it, no Markdown code fences.\n\n"
        '{"type":"object","properties":{"answer":{"type":"integer"}},"required":["answer"]}'
    )


# -- Response ----------------------------------------------------------------------------------------

TEXT_MESSAGE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": CLAUDE,
    "content": [{"type": "text", "text": "The capital of Italy is Rome."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 9,
        "service_tier": "standard",
    },
}

TOOL_MESSAGE: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": CLAUDE,
    "content": [
        {"type": "thinking", "thinking": "The user wants weather; call the tool.", "signature": "EqQBCgIYAhIM"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "output_tokens": 57,
    },
}


def completion(message: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    before = int(time.time())
    out = response(message, **kwargs)
    created = out.pop("created")
    assert isinstance(created, int) and before <= created <= int(time.time())
    ChatCompletion.model_validate({**out, "created": created})
    return out


def test_text_response() -> None:
    assert completion(TEXT_MESSAGE) == {
        "id": "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "model": CLAUDE,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The capital of Italy is Rome.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 21,
            "completion_tokens": 9,
            "total_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        },
    }


def test_tool_use_response_with_cache_usage_and_thinking_dropped() -> None:
    assert completion(TOOL_MESSAGE, model="gpt-4o") == {
        "id": "chatcmpl-msg_01Aq9w938a90dw8q",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_01A09q90qw90lq917835lq9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 2112,
            "completion_tokens": 57,
            "total_tokens": 2169,
            "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 100},
        },
    }


def test_text_blocks_are_joined_and_kept_beside_tool_calls() -> None:
    message = {
        **TOOL_MESSAGE,
        "content": [
            {"type": "text", "text": "I'll look that up"},
            {"type": "text", "text": " for you."},
            TOOL_MESSAGE["content"][2],
            {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
        ],
    }
    reply = completion(message)["choices"][0]["message"]
    assert reply["content"] == "I'll look that up for you."
    assert [(c["id"], c["function"]["arguments"]) for c in reply["tool_calls"]] == [
        ("toolu_01A09q90qw90lq917835lq9", '{"city":"Paris","unit":"celsius"}'),
        ("toolu_02", "{}"),
    ]


def test_empty_answer_has_empty_string_content() -> None:
    message = {**TEXT_MESSAGE, "content": [], "stop_reason": "max_tokens"}
    choice = completion(message)["choices"][0]
    assert choice["message"]["content"] == ""
    assert choice["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
        ("a_reason_from_next_year", "stop"),
    ],
)
def test_finish_reason(stop_reason: str | None, finish_reason: str) -> None:
    assert completion({**TEXT_MESSAGE, "stop_reason": stop_reason})["choices"][0]["finish_reason"] == finish_reason


def test_every_stop_reason_of_the_sdk_has_its_finish_reason() -> None:
    """A stop reason the anthropic SDK learns fails here until it is mapped: unknown ones finish
    with "stop", which for an answer cut short (``model_context_window_exceeded``) would make it
    look complete."""
    assert set(FINISH_FROM_STOP) == set(typing.get_args(StopReason))
    assert set(FINISH_FROM_STOP.values()) <= set(typing.get_args(Choice.model_fields["finish_reason"].annotation))


def test_a_legacy_functions_request_gets_a_function_call() -> None:
    """As OpenAI answers the deprecated ``functions``: ``message.function_call``, finish_reason
    ``function_call``, no ``tool_calls``; should Claude call two tools anyway, the first."""
    message = {**TOOL_MESSAGE, "content": [
        *TOOL_MESSAGE["content"], {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}]}
    choice = completion(message, functions=True)["choices"][0]
    assert choice == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "function_call": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
        },
        "logprobs": None,
        "finish_reason": "function_call",
    }
    text_too = {**TOOL_MESSAGE, "content": [{"type": "text", "text": "Looking."}, *TOOL_MESSAGE["content"]]}
    assert completion(text_too, functions=True)["choices"][0]["message"]["content"] == "Looking."
    assert completion(TEXT_MESSAGE, functions=True)["choices"][0] == completion(TEXT_MESSAGE)["choices"][0]


def test_response_without_usage() -> None:
    message = {k: v for k, v in TEXT_MESSAGE.items() if k != "usage"}
    assert completion(message)["usage"] is None


# -- Stream ------------------------------------------------------------------------------------------


def text_stream(text_parts: list[str], stop_reason: str = "end_turn") -> list[tuple[str, dict[str, Any]]]:
    start: dict[str, Any] = {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 472,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 2,
        },
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    for part in text_parts:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": part}}
        events.append(("content_block_delta", delta))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


TOOL_STREAM: list[tuple[str, dict[str, Any]]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01T1x1fJ34qAmk2tNTrN7Up6",
                "type": "message",
                "role": "assistant",
                "model": CLAUDE,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 12,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 2000,
                    "output_tokens": 1,
                },
            },
        },
    ),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Two cities."}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAh"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking both."}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2", "name": "get_weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
        },
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "tool_use", "id": "toolu_02Bz8Lp", "name": "get_weather", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 3,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":"Rome"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def sse_chunks(raw: bytes) -> Iterator[dict[str, Any]]:
    """Parse OpenAI SSE bytes; check framing and that each event is compact, canonical JSON."""
    assert raw.endswith(b"\n\n") or raw == b""
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ") and b"\n" not in event
        payload = event[6:]
        if payload == b"[DONE]":
            yield {"[DONE]": True}
            continue
        obj = orjson.loads(payload)
        assert orjson.dumps(obj) == payload
        yield obj


def run(
    events: list[tuple[str, dict[str, Any]]], **kwargs: Any
) -> tuple[StreamTranslator, bytes, list[dict[str, Any]]]:
    translator = StreamTranslator(created=1_760_000_000, **kwargs)
    raw = b"".join(translator.event(name, data) for name, data in events) + translator.end()
    chunks = list(sse_chunks(raw))
    for chunk in chunks:
        if "[DONE]" not in chunk and "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)
    return translator, raw, chunks


def chunk(
    delta: dict[str, Any], finish: str | None = None, *, msg: str = "msg_014p7gG3wDgGV9EUtLvnow3U"
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{msg}",
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": CLAUDE,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


DONE = {"[DONE]": True}


def test_text_stream() -> None:
    translator, raw, chunks = run(text_stream(["Hello", "", " there", "!"]))
    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}),
        chunk({"content": "!"}),
        chunk({}, "stop"),
        DONE,
    ]
    assert translator.complete
    assert raw.endswith(b"data: [DONE]\n\n")


def test_text_stream_with_usage() -> None:
    _, _, chunks = run(text_stream(["Hi"], stop_reason="max_tokens"), include_usage=True)
    assert chunks == [
        {**chunk({"role": "assistant", "content": ""}), "usage": None},
        {**chunk({"content": "Hi"}), "usage": None},
        {**chunk({}, "length"), "usage": None},
        {
            "id": "chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U",
            "object": "chat.completion.chunk",
            "created": 1_760_000_000,
            "model": CLAUDE,
            "choices": [],
            "usage": {
                "prompt_tokens": 472,
                "completion_tokens": 15,
                "total_tokens": 487,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            },
        },
        DONE,
    ]


def test_tool_stream_skips_thinking_and_numbers_tool_calls_from_zero() -> None:
    _, _, chunks = run(TOOL_STREAM, model="gpt-4o", include_usage=True)
    msg = "msg_01T1x1fJ34qAmk2tNTrN7Up6"

    def tool_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**chunk(delta, finish, msg=msg), "model": "gpt-4o", "usage": None}

    assert chunks == [
        tool_chunk({"role": "assistant", "content": ""}),
        tool_chunk({"content": "Checking both."}),
        tool_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01T1x1fJ34qAmk2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        tool_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
        tool_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
        tool_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "toolu_02Bz8Lp",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        tool_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city":"Rome"}'}}]}),
        tool_chunk({}, "tool_calls"),
        {
            "id": f"chatcmpl-{msg}",
            "object": "chat.completion.chunk",
            "created": 1_760_000_000,
            "model": "gpt-4o",
            "choices": [],
            "usage": {
                "prompt_tokens": 2112,
                "completion_tokens": 89,
                "total_tokens": 2201,
                "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 100},
            },
        },
        DONE,
    ]


def test_a_legacy_functions_stream_sends_one_function_call() -> None:
    """OpenAI streams a legacy call as ``delta.function_call``: the name first, then the arguments;
    a second tool call (Claude was asked for one) is left out."""
    _, _, chunks = run(TOOL_STREAM, model="gpt-4o", functions=True)
    msg = "msg_01T1x1fJ34qAmk2tNTrN7Up6"

    def legacy_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**chunk(delta, finish, msg=msg), "model": "gpt-4o"}

    assert chunks == [
        legacy_chunk({"role": "assistant", "content": ""}),
        legacy_chunk({"content": "Checking both."}),
        legacy_chunk({"function_call": {"name": "get_weather", "arguments": ""}}),
        legacy_chunk({"function_call": {"arguments": '{"city": "Pa'}}),
        legacy_chunk({"function_call": {"arguments": 'ris"}'}}),
        legacy_chunk({}, "function_call"),
        DONE,
    ]
    _, _, alone = run(NO_ARGUMENTS, functions=True)
    assert [c["choices"][0]["delta"] for c in alone[:2]] == [
        {"role": "assistant", "content": None, "function_call": {"name": "now", "arguments": ""}},
        {"function_call": {"arguments": "{}"}},
    ]


def test_truncated_stream_never_looks_complete() -> None:
    events = text_stream(["Partial", " answer"])
    for cut in range(len(events)):  # every prefix that lacks message_stop
        translator = StreamTranslator(include_usage=True)
        for name, data in events[:cut]:
            translator.event(name, data)
        assert not translator.complete
        assert translator.end() == b""


def test_end_is_emitted_once() -> None:
    translator = StreamTranslator()
    for name, data in text_stream(["x"]):
        translator.event(name, data)
    assert translator.end() == b"data: [DONE]\n\n"
    assert translator.end() == b""


def test_a_stream_cut_by_the_context_window_finishes_with_length() -> None:
    _, _, chunks = run(text_stream(["The answer is cut he"], "model_context_window_exceeded"))
    assert chunks[-2:] == [chunk({}, "length"), DONE]


def test_message_stop_without_stop_reason_still_finishes() -> None:
    events = [e for e in text_stream(["ok"]) if e[0] != "message_delta"]
    _, _, chunks = run(events)
    assert chunks[-2:] == [chunk({}, "stop"), DONE]


def test_event_type_is_taken_from_data_when_the_name_is_missing() -> None:
    _, _, named = run(text_stream(["a", "b"]))
    _, _, unnamed = run([("", data) for _, data in text_stream(["a", "b"])])
    assert unnamed == named


def test_provider_error_event_becomes_an_in_stream_error() -> None:
    events = text_stream(["Hel"])[:4]
    events.append(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    events += text_stream(["lo"])[4:]  # nothing after an error is translated
    translator, raw, chunks = run(events)
    assert chunks == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        {"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": None}},
    ]
    assert not translator.complete
    assert raw.endswith(b'"code":null}}\n\n')


def test_explicit_error_event() -> None:
    assert StreamTranslator().error("The provider connection was reset.", code="upstream_reset") == (
        b'data: {"error":{"message":"The provider connection was reset.","type":"server_error","param":null,'
        b'"code":"upstream_reset"}}\n\n'
    )


def test_stream_created_defaults_to_now() -> None:
    before = int(time.time())
    translator = StreamTranslator()
    first, *_ = sse_chunks(b"".join(translator.event(name, data) for name, data in text_stream([])))
    assert before <= first["created"] <= int(time.time())


# -- Through the openai SDK --------------------------------------------------------------------------


def sdk_client(handler: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    # Any: openai>=3 types its client as httpx2's but still accepts an httpx one (the project's dev dependency).
    http_client: Any = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="sk-test", base_url="http://gateway.test/v1", max_retries=0, http_client=http_client)


def test_sdk_reads_a_translated_completion() -> None:
    body = orjson.dumps(response(TOOL_MESSAGE, model="gpt-4o"))
    client = sdk_client(lambda _: httpx.Response(200, content=body, headers={"content-type": "application/json"}))
    result = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Weather?"}])
    call = result.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert orjson.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}  # type: ignore[union-attr]
    assert result.usage is not None and result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 2000


def test_sdk_reads_a_translated_stream() -> None:
    translator = StreamTranslator(model="gpt-4o", include_usage=True)
    raw = b"".join(translator.event(name, data) for name, data in TOOL_STREAM) + translator.end()
    client = sdk_client(lambda _: httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"}))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Weather?"}], stream=True
    )
    text, args, finish, usage = "", ["", ""], None, None
    for part in stream:
        if part.usage is not None:
            usage = part.usage
        for choice in part.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                args[call.index] += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert (text, args, finish) == ("Checking both.", ['{"city": "Paris"}', '{"city":"Rome"}'], "tool_calls")
    assert usage is not None and usage.total_tokens == 2201


def test_sdk_raises_on_the_in_stream_error() -> None:
    translator = StreamTranslator()
    raw = b"".join(translator.event(name, data) for name, data in text_stream(["Hel"])[:4])
    raw += translator.event("error", {"type": "error", "error": {"type": "api_error", "message": "Internal error"}})
    client = sdk_client(lambda _: httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"}))
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True)
    with pytest.raises(openai.APIError, match="Internal error"):
        list(stream)


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (529, openai.InternalServerError),
    ],
)
def test_sdk_raises_its_usual_exception_for_translated_errors(status: int, exception: type[Exception]) -> None:
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}.get(status)
    anthropic_body = orjson.dumps(
        {"type": "error", "error": {"type": kind or "api_error", "message": "Upstream said no"}}
    )
    body = error(status, anthropic_body if kind else b"")
    client = sdk_client(lambda _: httpx.Response(status, content=body, headers={"content-type": "application/json"}))
    with pytest.raises(exception) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.body == orjson.loads(body)["error"]


# -- Errors ------------------------------------------------------------------------------------------


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5"}
    )


@pytest.mark.parametrize(
    ("status", "kind", "message", "openai_type", "code"),
    [
        (400, "invalid_request_error", "messages.1.content: Field required", "invalid_request_error", None),
        (401, "authentication_error", "invalid x-api-key", "invalid_request_error", "invalid_api_key"),
        (
            403,
            "permission_error",
            "Your API key does not have permission",
            "invalid_request_error",
            "permission_denied",
        ),
        (404, "not_found_error", "model: claude-3-opus-2099", "invalid_request_error", "model_not_found"),
        (404, "not_found_error", "Not found: /v1/files/file_011", "invalid_request_error", "not_found"),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            "invalid_request_error",
            "request_too_large",
        ),
        (
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your rate limit.",
            "requests",
            "rate_limit_exceeded",
        ),
        (402, "billing_error", "Your credit balance is too low.", "insufficient_quota", "insufficient_quota"),
        (504, "timeout_error", "Request timed out", "server_error", "timeout"),
        (500, "api_error", "Internal server error", "server_error", None),
        (529, "overloaded_error", "Overloaded", "server_error", None),
    ],
)
def test_anthropic_error_types(status: int, kind: str, message: str, openai_type: str, code: str | None) -> None:
    assert orjson.loads(error(status, anthropic_error(kind, message))) == {
        "error": {"message": message, "type": openai_type, "param": None, "code": code}
    }


def test_unknown_error_type_falls_back_to_the_status() -> None:
    out = orjson.loads(error(429, anthropic_error("brand_new_error", "Slow down")))
    assert out == {"error": {"message": "Slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    out = orjson.loads(error(418, anthropic_error("brand_new_error", "Teapot")))
    assert out["error"]["type"] == "invalid_request_error"


def test_html_error_page() -> None:
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
        b"</center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
    )
    assert orjson.loads(error(502, page)) == {
        "error": {
            "message": "The provider answered HTTP 502: 502 Bad Gateway",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("status", "body", "message", "openai_type", "code"),
    [
        (503, b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
         "The provider answered HTTP 503: upstream connect error or disconnect/reset before headers. reset reason: "
         "overflow", "server_error", None),
        (500, b"", "The provider answered HTTP 500.", "server_error", None),
        (429, b"  \n", "The provider answered HTTP 429.", "requests", "rate_limit_exceeded"),
        (401, b"", "The provider answered HTTP 401.", "invalid_request_error", "invalid_api_key"),
        (500, b'{"type":"error","error":{"type":"api_error"}}', "The provider answered HTTP 500: api_error",
         "server_error", None),
        (502, b'"Bad gateway"', "Bad gateway", "server_error", None),
        (400, b'{"message":"malformed"}', "malformed", "invalid_request_error", None),
        (500, b'{"error":"boom"}', "boom", "server_error", None),
    ],
)  # fmt: skip
def test_non_anthropic_error_bodies(status: int, body: bytes, message: str, openai_type: str, code: str | None) -> None:
    assert orjson.loads(error(status, body)) == {
        "error": {"message": message, "type": openai_type, "param": None, "code": code}
    }


def test_long_plain_error_text_is_shortened() -> None:
    message = orjson.loads(error(502, b"x" * 5000))["error"]["message"]
    assert message == "The provider answered HTTP 502: " + "x" * 199 + "…"


NO_ARGUMENTS = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": CLAUDE, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 5}}),
    ("message_stop", {"type": "message_stop"}),
]


def test_a_streamed_call_without_arguments_gets_an_empty_object() -> None:
    """Claude streams an empty fragment for a tool that takes no arguments; an OpenAI SDK parses the
    arguments as JSON, and "" is none."""
    _, raw, _ = run(NO_ARGUMENTS)
    state = ChatCompletionStreamState()
    for event in raw.split(b"\n\n")[:-1]:
        if event != b"data: [DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate_json(event[6:]))
    (call,) = state.get_final_completion().choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("now", "{}")


def test_a_stream_that_opens_with_a_tool_call_has_null_content() -> None:
    """As OpenAI's streams do: the role rides with the first tool call, and "content" is null,
    not "" (which the SDK would keep, and report as a content delta)."""
    _, _, chunks = run(NO_ARGUMENTS)
    call = {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": ""}}
    assert chunks[:2] == [
        chunk({"role": "assistant", "content": None, "tool_calls": [call]}, msg="msg_1"),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, msg="msg_1"),
    ]


def _blank_text_then_a_tool() -> list[tuple[str, dict[str, Any]]]:
    blank = [("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}),
             ("content_block_stop", {"type": "content_block_stop", "index": 0})]
    shifted = [(name, {**data, "index": data["index"] + 1} if "index" in data else data)
               for name, data in NO_ARGUMENTS[1:]]
    return [NO_ARGUMENTS[0], *blank, *shifted]


@pytest.mark.parametrize("events", [
    pytest.param(NO_ARGUMENTS, id="a tool call alone"),
    pytest.param(TOOL_STREAM, id="thinking, text, two tool calls"),
    pytest.param(text_stream(["Hello", " there"]), id="text"),
    pytest.param(text_stream([]), id="nothing"),
    pytest.param(_blank_text_then_a_tool(), id="a blank text block, then a tool call"),
])
@pytest.mark.parametrize("functions", [False, True], ids=["tools", "legacy functions"])
def test_the_streamed_message_the_sdk_accumulates_equals_the_whole_answer(
        events: list[tuple[str, dict[str, Any]]], functions: bool) -> None:
    """The same Anthropic answer, streamed (accumulated by the openai SDK) and whole (the Message
    the anthropic SDK accumulates from the same events, translated by :func:`response`)."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in events:
        if name == "ping":
            continue
        snapshot = accumulate_event(event=ANTHROPIC_EVENT.validate_python(data), current_snapshot=snapshot,
                                    json_bufs=buffers)
    assert snapshot is not None
    whole = ChatCompletion.model_validate(response(snapshot.model_dump(), functions=functions)).choices[0]
    _, raw, _ = run(events, functions=functions)
    state = ChatCompletionStreamState()
    for event in raw.split(b"\n\n")[:-1]:
        if event != b"data: [DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate_json(event[6:]))
    streamed = state.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason
    assert seen(streamed.message) == seen(whole.message)


def seen(message: Any) -> dict[str, Any]:
    """What a client reads of a message (streamed, the SDK's parsed type adds fields of its own;
    arguments are compared as JSON: streamed, they are Claude's fragments as they came)."""
    calls = [(call.id, call.function.name, orjson.loads(call.function.arguments)) for call in message.tool_calls or ()]
    legacy = message.function_call and (message.function_call.name, orjson.loads(message.function_call.arguments))
    return {"role": message.role, "content": message.content, "refusal": message.refusal, "tool_calls": calls,
            "function_call": legacy}


def test_sdk_streams_a_tool_call_alone_without_content() -> None:
    translator = StreamTranslator(model="gpt-4o")
    raw = b"".join(translator.event(name, data) for name, data in NO_ARGUMENTS) + translator.end()
    client = sdk_client(lambda _: httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"}))
    with client.chat.completions.stream(model="gpt-4o", messages=[{"role": "user", "content": "Time?"}]) as stream:
        kinds = {event.type for event in stream}
        message = stream.get_final_completion().choices[0].message
    assert "content.delta" not in kinds and message.content is None
    assert [(call.function.name, call.function.arguments) for call in message.tool_calls or ()] == [("now", "{}")]


def test_sdk_reads_a_legacy_function_call_whole_and_streamed() -> None:
    """What a legacy app reads (``message.function_call``), through the SDK, both ways; the pair
    gives the legacy shape to the request that declared ``functions``."""
    legacy = {"model": "gpt-4o", "messages": HELLO, "functions": [WEATHER_TOOL["function"]]}
    pair = PAIRS[(CHAT_COMPLETIONS, MESSAGES)]
    body = orjson.dumps(pair.response(TOOL_MESSAGE, legacy, runtime.fixed()))
    client = sdk_client(lambda _: httpx.Response(200, content=body, headers={"content-type": "application/json"}))
    whole = client.chat.completions.create(**legacy).choices[0]  # type: ignore[call-overload]
    translator = pair.stream("gpt-4o", False, legacy, runtime.fixed(), None)
    raw = b"".join(translator.feed(SSEEvent(name, orjson.dumps(data), b"")) for name, data in TOOL_STREAM)
    client = sdk_client(lambda _: httpx.Response(200, content=raw + translator.end(),
                                                 headers={"content-type": "text/event-stream"}))
    with client.chat.completions.stream(**legacy) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_completion().choices[0]
    for choice in (whole, streamed):
        call = choice.message.function_call
        assert call is not None and (choice.finish_reason, call.name) == ("function_call", "get_weather")
        assert orjson.loads(call.arguments)["city"] == "Paris" and not choice.message.tool_calls
    tools = pair.response(TOOL_MESSAGE, {**legacy, "functions": None, "tools": [WEATHER_TOOL]}, runtime.fixed())
    assert tools["choices"][0]["finish_reason"] == "tool_calls"


def test_a_stream_whose_provider_reported_no_usage_gives_null_usage_as_the_json_answer_does() -> None:
    """An Anthropic stream without usage (a compatible server's): the client's usage chunk said 0
    prompt and 0 completion tokens, as if reported; the JSON answer says null, and so does it now."""
    translator = StreamTranslator(model="claude-x", include_usage=True, runtime=runtime.fixed())
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": "claude-x", "content": [], "stop_reason": None}}
    out = translator.event("message_start", start)
    out += translator.event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}})
    out += translator.event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": "Hi"}})
    out += translator.event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    out += translator.event("message_stop", {"type": "message_stop"}) + translator.end()
    chunks = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is None, chunks[-1]
    openai.types.chat.ChatCompletionChunk.model_validate(chunks[-1])
    whole = response({**start["message"], "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn"},
                     runtime=runtime.fixed())
    assert whole["usage"] is None
