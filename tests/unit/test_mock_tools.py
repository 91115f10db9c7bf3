"""The fake provider's tool calls: forced by ``tool_choice`` or ``x-mock-tool-call``, in each API's format.

Driven by the real ``openai`` and ``anthropic`` SDKs against a background server, plus the pure
pieces (schema examples, fragments, renderers) without sockets.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import anthropic
import openai
import orjson
import pytest

from ext_proc.mock import responses as r
from ext_proc.mock.provider import Options, background

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"nights": {"type": "integer"}, "late": {"type": "boolean"}},
            },
        },
    },
]
ANTHROPIC_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather of a city", "input_schema": WEATHER_SCHEMA},
    {"name": "book", "input_schema": {"type": "object", "properties": {"nights": {"type": "number"}}}},
]
ASK = [{"role": "user", "content": "Weather in Paris please"}]
ASK_TOKENS = 3 + 3 + 4  # 3 + Σ (3 + words)


@pytest.fixture(scope="module")
def srv():
    with background(Options()) as server:
        yield server


def raw_post(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("POST", path, orjson.dumps(body), {"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sse_events(body: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of each SSE event; ``[DONE]`` stays a string."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        out.append((name, data))
    return out


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_schema_example():
    assert r.schema_example(WEATHER_SCHEMA) == {"city": "mock"}
    nested = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number", "minimum": 2.5},
            "ok": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "any": {"type": "array"},
            "opt": {"type": ["null", "string"]},
            "none": {"type": "null"},
            "kind": {"const": "k"},
            "choice": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "where": {"properties": {"lat": {"type": "number"}, "deep": {"type": "object"}}},
        },
        "required": ["n", "extra"],
    }
    assert r.schema_example(nested) == {
        "n": 1,
        "x": 2.5,
        "ok": True,
        "unit": "celsius",
        "tags": ["mock"],
        "any": [],
        "opt": "mock",
        "none": None,
        "kind": "k",
        "choice": 1,
        "where": {"lat": 1, "deep": {}},
        "extra": "mock",
    }
    assert r.schema_example({"type": "integer", "minimum": 5}) == 5
    assert r.schema_example(None) == "mock" and r.schema_example({}) == "mock"
    deep: dict[str, Any] = {"type": "object", "properties": {}}
    node = deep
    for _ in range(40):  # nesting is bounded
        child: dict[str, Any] = {"type": "object", "properties": {}}
        node["properties"]["a"] = child
        node = child
    assert "mock" in json.dumps(r.schema_example(deep))


@pytest.mark.parametrize("text", ["", "{}", "{\"city\":\"mock\"}", "x" * 100])
def test_fragments_cover_the_text_in_at_most_three_pieces(text):
    parts = r.fragments(text)
    assert "".join(parts) == text and 1 <= len(parts) <= r.ARGUMENT_FRAGMENTS
    assert len(parts) == max(1, min(3, len(text)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_tool_call_json_and_stream_agree():
    tool = r.ToolCall.build("call_mock1", "get_weather", WEATHER_SCHEMA)
    assert tool.json == '{"city":"mock"}' and len(tool.arguments) == 3
    body = {"model": "m", "max_tokens": 1, "messages": ASK}  # a tool call is never cut
    gen = r.generate(body, id="chatcmpl-x", created=1, chunks=8, prompt_tokens=10, tool=tool)
    assert gen.pieces == () and gen.completion_tokens == 3 and not gen.truncated

    message = orjson.loads(r.openai_chat_json(gen))
    choice = message["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call == {"id": "call_mock1", "type": "function", "function": {"name": "get_weather", "arguments": tool.json}}

    chunks = [d for _, d in sse_events(b"".join(r.openai_chat_events(gen, include_usage=True)))]
    assert chunks[-1] == "[DONE]" and chunks[-2]["usage"] == message["usage"]
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas[0]["tool_calls"][0]["id"] == "call_mock1" and deltas[0]["tool_calls"][0]["function"]["name"]
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d)
    assert arguments == tool.json
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-2]] == [None] * 4 + ["tool_calls"]

    gen = r.generate(body, id="msg_x", created=0, chunks=8, prompt_tokens=10, tool=tool)
    anthropic_message = orjson.loads(r.anthropic_message_json(gen))
    assert anthropic_message["content"] == [
        {"type": "tool_use", "id": "call_mock1", "name": "get_weather", "input": {"city": "mock"}}
    ]
    assert anthropic_message["stop_reason"] == "tool_use" and anthropic_message["usage"]["output_tokens"] == 3
    events = sse_events(b"".join(r.anthropic_message_events(gen)))
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert partial == tool.json
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use" and events[-2][1]["usage"]["output_tokens"] == 3


# ---------------------------------------------------------------------------------------------
# OpenAI chat completions (and Azure)


def test_openai_required_calls_the_first_tool(oai):
    completion = oai.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_mock") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "mock"}
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == ASK_TOKENS and completion.usage.completion_tokens == 3


def test_openai_forced_function_and_header_choose_the_tool(oai):
    forced = oai.chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "book"}},
    )
    call = (forced.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "book" and json.loads(call.function.arguments) == {"nights": 1, "late": True}

    named = oai.chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS, extra_headers={"x-mock-tool-call": "book"}
    )
    assert (named.choices[0].message.tool_calls or [])[0].function.name == "book"
    assert named.choices[0].finish_reason == "tool_calls"


def test_openai_header_is_scoped(oai):
    other = oai.chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS, extra_headers={"x-mock-anthropic-tool-call": "book"}
    )
    assert other.choices[0].message.tool_calls is None and other.choices[0].finish_reason == "stop"
    scoped = oai.chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS, extra_headers={"x-mock-openai-tool-call": "get_weather"}
    )
    assert (scoped.choices[0].message.tool_calls or [])[0].function.name == "get_weather"


def test_openai_text_without_tools_or_forcing_or_after_a_tool_result(oai):
    no_tools = oai.chat.completions.create(model="m", messages=ASK, extra_headers={"x-mock-tool-call": "x"})
    assert no_tools.choices[0].message.content and no_tools.choices[0].finish_reason == "stop"
    auto = oai.chat.completions.create(model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice="auto")
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].message.content

    first = oai.chat.completions.create(model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required")
    call = (first.choices[0].message.tool_calls or [])[0]
    turn: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = oai.chat.completions.create(
        model="m", messages=turn, tools=OPENAI_TOOLS, tool_choice="required", extra_headers={"x-mock-tool-call": "book"}
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    assert second.choices[0].message.tool_calls is None
    assert second.usage is not None and second.usage.prompt_tokens == ASK_TOKENS + 3 + (3 + 3)


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_stream_tool_call_deltas(oai, include_usage):
    stream = oai.chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required", stream=True,
        stream_options={"include_usage": True} if include_usage else None,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    with_choices = [c for c in chunks if c.choices]
    first = (with_choices[0].choices[0].delta.tool_calls or [])[0]
    assert first.id and first.id.startswith("call_mock") and first.function and first.function.name == "get_weather"
    fragments = [
        (c.choices[0].delta.tool_calls or [])[0].function.arguments  # type: ignore[union-attr]
        for c in with_choices[1:]
        if c.choices[0].delta.tool_calls
    ]
    assert len(fragments) == 3 and json.loads("".join(fragments)) == {"city": "mock"}  # type: ignore[arg-type]
    assert with_choices[-1].choices[0].finish_reason == "tool_calls"
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == ASK_TOKENS
    else:
        assert all(c.usage is None for c in chunks)


def test_openai_stream_helper_accumulates_the_call(oai):
    with oai.chat.completions.stream(
        model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required"  # type: ignore[arg-type]
    ) as stream:
        final = stream.get_final_completion()
    call = (final.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"mock"}'


def test_unknown_tool_name_is_a_400(oai, ant):
    with pytest.raises(openai.BadRequestError, match="no tool named 'nope'"):
        oai.chat.completions.create(
            model="m", messages=ASK, tools=OPENAI_TOOLS, extra_headers={"x-mock-tool-call": "nope"}
        )
    with pytest.raises(openai.BadRequestError, match="tool_choice: the request has no tool named 'nope'"):
        oai.chat.completions.create(
            model="m", messages=ASK, tools=OPENAI_TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    with pytest.raises(anthropic.BadRequestError, match="no tool named 'nope'") as caught:
        ant.messages.create(
            model="m", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "nope"}
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_azure_chat_tool_call(srv):
    client = openai.AzureOpenAI(
        azure_endpoint=srv.url, api_key="k", api_version="2024-10-21", max_retries=0, timeout=10
    )
    completion = client.chat.completions.create(
        model="my-deployment", messages=ASK, tools=OPENAI_TOOLS, extra_headers={"x-mock-azure-tool-call": "book"}
    )
    assert completion.model == "my-deployment" and completion.choices[0].finish_reason == "tool_calls"
    assert (completion.choices[0].message.tool_calls or [])[0].function.name == "book"


# ---------------------------------------------------------------------------------------------
# Anthropic messages


def test_anthropic_any_calls_the_first_tool(ant):
    message = ant.messages.create(
        model="claude-x", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}
    )
    assert message.stop_reason == "tool_use" and len(message.content) == 1
    block = message.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_mock")
    assert block.name == "get_weather" and block.input == {"city": "mock"}
    assert message.usage.input_tokens == ASK_TOKENS and message.usage.output_tokens == 3


def test_anthropic_tool_choice_tool_and_header(ant):
    forced = ant.messages.create(
        model="c", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS, tool_choice={"type": "tool", "name": "book"}
    )
    assert forced.content[0].type == "tool_use" and forced.content[0].input == {"nights": 1}
    named = ant.messages.create(
        model="c", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS,
        extra_headers={"x-mock-anthropic-tool-call": "book"},
    )
    assert named.content[0].type == "tool_use" and named.content[0].name == "book"
    other = ant.messages.create(
        model="c", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS, extra_headers={"x-mock-openai-tool-call": "book"}
    )
    assert other.content[0].type == "text" and other.stop_reason == "end_turn"
    auto = ant.messages.create(model="c", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS)
    assert auto.content[0].type == "text"


def test_anthropic_text_after_a_tool_result(ant):
    first = ant.messages.create(
        model="c", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}
    )
    block = first.content[0]
    assert block.type == "tool_use"
    turn: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Sunny, 21 C"}]},
    ]
    second = ant.messages.create(
        model="c", max_tokens=50, messages=turn, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}
    )
    assert second.content[0].type == "text" and second.stop_reason == "end_turn"
    assert second.usage.input_tokens == ASK_TOKENS + 3 + (3 + 3)


def test_anthropic_stream_tool_use(ant):
    with ant.messages.stream(
        model="c", max_tokens=50, messages=ASK, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 3
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "mock"}
    assert kinds.count("input_json") == 3 and kinds[-1] == "message_stop"


def test_anthropic_raw_stream_events(srv):
    body = {"model": "c", "max_tokens": 50, "messages": ASK, "tools": ANTHROPIC_TOOLS, "stream": True}
    status, raw = raw_post(
        srv.url, "/v1/messages", body, {"anthropic-version": "2023-06-01", "x-mock-tool-call": "get_weather"}
    )
    assert status == 200
    events = sse_events(raw)
    assert [n for n, _ in events] == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 3,
        "content_block_stop", "message_delta", "message_stop",
    ]
    start = events[1][1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "get_weather" and start["input"] == {}
    assert start["id"].startswith("toolu_mock")
    assert {d["delta"]["type"] for n, d in events if n == "content_block_delta"} == {"input_json_delta"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_truncated_tool_stream_ends_early(srv):
    body = {"model": "m", "messages": ASK, "tools": OPENAI_TOOLS, "tool_choice": "required", "stream": True}
    status, raw = raw_post(srv.url, "/v1/chat/completions", body, {"x-mock-truncate-after": "2"})
    events = sse_events(raw)
    assert status == 200 and len(events) == 2 and all(d != "[DONE]" for _, d in events)
