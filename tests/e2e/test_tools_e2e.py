"""Tool calling end to end through translation, with the real SDKs.

One stack (a real Envoy, one Tollway worker, the fake provider serving OpenAI and Anthropic)
and a policy with one OpenAI and one Anthropic model. The fake provider answers a request that
forces a tool with one call of it (arguments from its schema: ``{"city": "mock"}`` here) and a
request whose last message is a tool result with text, so each test runs a whole two-turn tool
loop: the client's format on one side, the provider's on the other, both checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ext_proc.policy.compiled import key_digest
from tests.e2e.conftest import Providers

pytestmark = pytest.mark.e2e

KEY = "tw-tools-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-tools-0001", "sk-ant-tools-0002"
REPLY = "Tollway mock reply: the quick brown fox jumps"  # the fake provider's text (8 words)

POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: T_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: T_ANTHROPIC_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai}}
  claude-haiku: {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  app:
    keys: [{{id: app-tools, sha256: {key_digest(KEY)}}}]
    models: [gpt-4o-mini, claude-haiku]
"""

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": SCHEMA}}
]
ANTHROPIC_TOOLS: list[Any] = [{"name": "get_weather", "description": "Weather of a city", "input_schema": SCHEMA}]
ASK = "What is the weather in Paris?"
RESULT = "Sunny, 21 C"


class Env(Providers):
    def provider_got(self, request_id: str | None, path: str) -> dict[str, Any]:
        """The one body the fake provider received for a client request."""
        tries = self.provider_saw(request_id)
        assert [t["path"] for t in tries] == [path]
        return orjson.loads(tries[0]["body"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    keys = {"T_OPENAI_KEY": OPENAI_KEY, "T_ANTHROPIC_KEY": ANTHROPIC_KEY}
    with Providers.stack(tmp_path_factory.mktemp("tools"), POLICY, keys, workers=1) as stack:
        yield Env(stack, KEY)


# ---------------------------------------------------------------------------------------------
# The openai SDK, served by Anthropic


def _check_anthropic_first_turn(sent: dict[str, Any], stream: bool) -> None:
    assert sent["model"] == "claude-3-5-haiku-20241022" and sent.get("stream", False) is stream
    assert sent["tools"] == [{"name": "get_weather", "description": "Weather of a city", "input_schema": SCHEMA}]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["messages"] == [{"role": "user", "content": ASK}]


def _check_anthropic_second_turn(sent: dict[str, Any], call_id: str) -> None:
    """The assistant's tool call went back as a tool_use block, the tool message as a tool_result."""
    assert call_id.startswith("toolu_mock")  # the id Anthropic gave the call, kept through translation
    assistant, result = sent["messages"][1:]
    assert assistant["role"] == "assistant"
    (use,) = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert use == {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "mock"}}
    assert result["role"] == "user"
    (block,) = [b for b in result["content"] if b["type"] == "tool_result"]
    assert block["tool_use_id"] == call_id
    content = block["content"]
    assert content == RESULT or [c.get("text") for c in content] == [RESULT]


def _second_openai_turn(call_id: str, arguments: str) -> list[Any]:
    return [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
    ]


def test_openai_sdk_tool_call_served_by_anthropic(env: Env) -> None:
    client = env.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": ASK}], tools=OPENAI_TOOLS, tool_choice="required"
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert raw.headers["x-tollway-provider"] == "anthropic"
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock"}
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    request_id = raw.headers.get("x-tollway-request-id")
    _check_anthropic_first_turn(env.provider_got(request_id, "/v1/messages"), stream=False)
    record = env.record(request_id)
    assert record["provider"] == "anthropic" and record["outcome"] == "ok" and record["output_tokens"] == 3

    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=_second_openai_turn(call.id, call.function.arguments), tools=OPENAI_TOOLS
    )
    answer = raw.parse().choices[0]
    assert answer.finish_reason == "stop" and answer.message.content == REPLY and not answer.message.tool_calls
    _check_anthropic_second_turn(env.provider_got(raw.headers.get("x-tollway-request-id"), "/v1/messages"), call.id)


def test_openai_sdk_streamed_tool_call_served_by_anthropic(env: Env) -> None:
    client = env.openai()
    with client.chat.completions.with_streaming_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": ASK}], tools=OPENAI_TOOLS,
        tool_choice="required", stream=True, stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers.get("x-tollway-request-id")
        chunks = list(response.parse())
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "mock"}
    assert finish == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    _check_anthropic_first_turn(env.provider_got(request_id, "/v1/messages"), stream=True)

    with client.chat.completions.with_streaming_response.create(
        model="claude-haiku", messages=_second_openai_turn(calls[0]["id"], calls[0]["arguments"]),
        tools=OPENAI_TOOLS, stream=True,
    ) as response:
        request_id = response.headers.get("x-tollway-request-id")
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    _check_anthropic_second_turn(env.provider_got(request_id, "/v1/messages"), calls[0]["id"])


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_legacy_function_call_served_by_anthropic(env: Env, stream: bool) -> None:
    """The deprecated ``functions``: Claude is asked for one call, and the answer is OpenAI's
    legacy one (``function_call``, whole or in ``delta.function_call`` chunks), which the app
    answers with a ``function`` message."""
    client = env.openai()
    functions: Any = [OPENAI_TOOLS[0]["function"]]
    asked: Any = {"model": "claude-haiku", "messages": [{"role": "user", "content": ASK}], "functions": functions,
                  "function_call": {"name": "get_weather"}}
    if stream:
        with client.chat.completions.with_streaming_response.create(**asked, stream=True) as response:
            request_id = response.headers.get("x-tollway-request-id")
            chunks = [c for c in response.parse() if c.choices]
        name = "".join(c.choices[0].delta.function_call.name or "" for c in chunks if c.choices[0].delta.function_call)
        arguments = "".join(c.choices[0].delta.function_call.arguments or "" for c in chunks
                            if c.choices[0].delta.function_call)
        assert not any(c.choices[0].delta.tool_calls for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        raw = client.chat.completions.with_raw_response.create(**asked)
        request_id = raw.headers.get("x-tollway-request-id")
        message = raw.parse().choices[0].message
        assert message.function_call is not None and not message.tool_calls and message.content is None
        name, arguments = message.function_call.name, message.function_call.arguments
        finish = raw.parse().choices[0].finish_reason
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "mock"}, "function_call")
    sent = env.provider_got(request_id, "/v1/messages")
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}

    second = [{"role": "user", "content": ASK},
              {"role": "assistant", "content": None, "function_call": {"name": name, "arguments": arguments}},
              {"role": "function", "name": name, "content": RESULT}]
    answer = client.chat.completions.create(model="claude-haiku", messages=second, functions=functions).choices[0]
    assert (answer.finish_reason, answer.message.content, answer.message.function_call) == ("stop", REPLY, None)


# ---------------------------------------------------------------------------------------------
# The anthropic SDK, served by OpenAI


def _check_openai_first_turn(sent: dict[str, Any], stream: bool) -> None:
    assert sent["model"] == "gpt-4o-mini" and sent.get("stream", False) is stream
    (tool,) = sent["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"] == SCHEMA
    assert sent["tool_choice"] == "required"
    assert sent["messages"] == [{"role": "user", "content": ASK}]


def _check_openai_second_turn(sent: dict[str, Any], tool_use_id: str) -> None:
    """The tool_use block went back as the assistant's tool_calls, the tool_result as a tool message."""
    assert tool_use_id.startswith("call_mock")  # the id OpenAI gave the call, kept through translation
    assistant, result = sent["messages"][1:]
    assert assistant["role"] == "assistant"
    (call,) = assistant["tool_calls"]
    assert call["id"] == tool_use_id and call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "mock"}
    assert result == {"role": "tool", "tool_call_id": tool_use_id, "content": RESULT}


def _second_anthropic_turn(block: Any) -> list[Any]:
    return [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": RESULT}]},
    ]


def test_anthropic_sdk_tool_use_served_by_openai(env: Env) -> None:
    client = env.anthropic()
    raw = client.messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=200, messages=[{"role": "user", "content": ASK}], tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    )
    message = raw.parse()
    assert raw.headers["x-tollway-provider"] == "openai"
    assert message.stop_reason == "tool_use" and len(message.content) == 1
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "mock"}
    assert message.usage.output_tokens == 3
    request_id = raw.headers.get("x-tollway-request-id")
    _check_openai_first_turn(env.provider_got(request_id, "/v1/chat/completions"), stream=False)
    record = env.record(request_id)
    assert record["api"] == "anthropic.messages" and record["provider"] == "openai" and record["output_tokens"] == 3

    raw = client.messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=200, messages=_second_anthropic_turn(block), tools=ANTHROPIC_TOOLS
    )
    answer = raw.parse()
    assert answer.stop_reason == "end_turn" and [b.type for b in answer.content] == ["text"]
    assert answer.content[0].text == REPLY  # type: ignore[union-attr]
    sent = env.provider_got(raw.headers.get("x-tollway-request-id"), "/v1/chat/completions")
    _check_openai_second_turn(sent, block.id)


def test_anthropic_sdk_streamed_tool_use_served_by_openai(env: Env) -> None:
    client = env.anthropic()
    with client.messages.stream(
        model="gpt-4o-mini", max_tokens=200, messages=[{"role": "user", "content": ASK}], tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-tollway-request-id")
    assert final.stop_reason == "tool_use" and len(final.content) == 1
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "mock"}
    assert "input_json" in kinds and kinds[-1] == "message_stop"
    assert final.usage.output_tokens == 3
    _check_openai_first_turn(env.provider_got(request_id, "/v1/chat/completions"), stream=True)

    with client.messages.stream(
        model="gpt-4o-mini", max_tokens=200, messages=_second_anthropic_turn(block), tools=ANTHROPIC_TOOLS
    ) as stream:
        text = "".join(stream.text_stream)
        answer = stream.get_final_message()
        request_id = stream.response.headers.get("x-tollway-request-id")
    assert text == REPLY and answer.stop_reason == "end_turn"
    _check_openai_second_turn(env.provider_got(request_id, "/v1/chat/completions"), block.id)
