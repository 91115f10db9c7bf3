"""The Responses API, the model list and token counting end to end, with the real SDKs.

One stack: a real Envoy (with the chain clusters the policy needs), two Tollway workers, the
fake provider serving OpenAI (its Responses API included) and Anthropic, each checking its own
key. The unchanged ``openai`` SDK calls ``client.responses.create`` against an OpenAI model
(served natively), an Anthropic model (translated to Messages) and an alias whose OpenAI target
fails so that Anthropic answers; the OpenAI Agents SDK runs an agent with one function tool
against both; both SDKs list exactly the models their team may use.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import agents
import anthropic
import openai
import orjson
import pytest

from ext_proc.policy.compiled import key_digest
from tests.e2e.conftest import Providers

pytestmark = pytest.mark.e2e

KEY = "tw-responses-0123456789abcdefghijklmnopqrstuvwxyzAB"
OTHER_KEY = "tw-responses-other-0123456789abcdefghijklmnopqrstu"
OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-responses-0001", "sk-ant-responses-0002"
REPLY = "Tollway mock reply: the quick brown fox jumps"  # the fake provider's text (8 words)

POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: RS_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: RS_ANTHROPIC_KEY}}}}
models:
  gpt-4o-mini:
    provider: openai
    aliases: [gpt-4o-mini-latest]
    price: {{input: "2", output: "8"}}
  claude-haiku:
    provider: anthropic
    model: claude-3-5-haiku-20241022
    context_window: 200000
    price: {{input: "1", output: "5"}}
  hidden: {{provider: openai}}
routing:
  aliases:
    smart:
      targets:
        - {{provider: openai, model: gpt-4o-2024-08-06, price: {{input: "2.5", output: "10"}}}}
        - {{provider: anthropic, model: claude-sonnet-4-5, price: {{input: "3", output: "15"}}}}
teams:
  app:
    keys: [{{id: app-responses, sha256: {key_digest(KEY)}}}]
    models: [gpt-4o-mini, claude-haiku, smart]
  other:
    keys: [{{id: other-responses, sha256: {key_digest(OTHER_KEY)}}}]
    models: [hidden]
guardrails:
  rules:
    - {{name: secrets, detectors: [credentials], action: block}}
"""
TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"  # a GitHub token, in two pieces of the answer
PRICES = {"gpt-4o-mini": (2, 8), "claude-haiku": (1, 5), "smart": (3, 15)}  # the policy's: $ per M = µ$ per token
PATHS = {"gpt-4o-mini": ["/v1/responses"], "claude-haiku": ["/v1/messages"],
         "smart": ["/v1/responses", "/v1/messages"]}
FAIL_OPENAI = {"x-mock-openai-status": "429"}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
                     "parameters": SCHEMA, "strict": False}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    keys = {"RS_OPENAI_KEY": OPENAI_KEY, "RS_ANTHROPIC_KEY": ANTHROPIC_KEY}
    with Providers.stack(tmp_path_factory.mktemp("responses"), POLICY, keys, workers=2) as stack:
        yield Providers(stack, KEY)


def _check_record(env: Providers, request_id: str | None, model: str, usage: Any, stream: bool) -> dict[str, Any]:
    """The provider saw the model's API(s) with its own key; the record has the usage and price x usage."""
    tries = env.provider_saw(request_id)
    assert [t["path"] for t in tries] == PATHS[model]
    for t in tries:
        assert KEY not in str(t["headers"])
        key = t["headers"].get("x-api-key") if t["path"] == "/v1/messages" else t["headers"].get("authorization")
        assert key == (ANTHROPIC_KEY if t["path"] == "/v1/messages" else f"Bearer {OPENAI_KEY}")
    record = env.record(request_id)
    assert record["api"] == "openai.responses" and record["model"] == model and record["stream"] is stream
    assert (record["outcome"], record["status"]) == ("ok", 200)
    assert (record["input_tokens"], record["output_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert record["output_tokens"] == 8 and record["input_tokens"] > 0 and not record["input_estimated"]
    inp, out = PRICES[model]
    assert record["cost_usd_micros"] == record["input_tokens"] * inp + record["output_tokens"] * out
    assert record["estimated_input_tokens"]
    assert record["provider"] == ("anthropic" if tries[-1]["path"] == "/v1/messages" else "openai")
    return record


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "smart"])
def test_responses_create(env: Providers, model: str) -> None:
    headers = FAIL_OPENAI if model == "smart" else {}
    raw = env.openai().responses.with_raw_response.create(
        model=model, instructions="Be brief.", input="Say hi", max_output_tokens=100, extra_headers=headers)
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == REPLY and response.usage is not None
    record = _check_record(env, raw.headers.get("x-tollway-request-id"), model, response.usage, stream=False)
    if model == "smart":
        assert (record["fallback"], record["attempts"], record["provider"]) == (True, 2, "anthropic")
        sent = orjson.loads(env.provider_saw(raw.headers["x-tollway-request-id"])[1]["body"])
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 100
        assert sent["messages"] == [{"role": "user", "content": "Say hi"}]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku", "smart"])
def test_responses_create_streamed(env: Providers, model: str) -> None:
    headers = FAIL_OPENAI if model == "smart" else {}
    with env.openai().responses.with_streaming_response.create(
        model=model, input=[{"role": "user", "content": "Say hi"}], stream=True, extra_headers=headers,
    ) as raw:
        events = list(raw.parse())
        request_id = raw.headers.get("x-tollway-request-id")
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == REPLY
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == REPLY and final.usage is not None
    record = _check_record(env, request_id, model, final.usage, stream=True)
    assert record["ttft_ms"] is not None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_two_turn_function_calling_loop(env: Providers, model: str, stream: bool) -> None:
    client = env.openai()
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]

    def create(items: list[Any], **extra: Any) -> Any:
        if not stream:
            return client.responses.create(model=model, input=items, tools=TOOLS, **extra)
        with client.responses.stream(model=model, input=items, tools=TOOLS, **extra) as events:
            for _ in events:
                pass
            return events.get_final_response()

    first = create(ask, tool_choice="required")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "mock"}
    assert call.call_id.startswith("toolu_mock" if model == "claude-haiku" else "call_mock")
    second = create([*ask, call.model_dump(exclude_none=True),
                     {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    assert second.output_text == REPLY and second.status == "completed"


def test_a_function_call_and_its_output_reach_anthropic_as_tool_use_and_tool_result(env: Providers) -> None:
    items: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "toolu_01A", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "toolu_01A", "output": "Sunny, 21 C"},
    ]
    raw = env.openai().responses.with_raw_response.create(model="claude-haiku", input=items, tools=TOOLS)
    assert raw.parse().output_text == REPLY
    (sent,) = [orjson.loads(t["body"]) for t in env.provider_saw(raw.headers["x-tollway-request-id"])]
    assert sent["tools"] == [{"name": "get_weather", "description": "Weather of a city", "input_schema": SCHEMA}]
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "Sunny, 21 C"}]},
    ]


def test_what_anthropic_cannot_do_is_a_400_naming_the_field(env: Providers) -> None:
    client = env.openai()
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="claude-haiku", input="hi", previous_response_id="resp_123")
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="claude-haiku", input="hi", tools=[{"type": "web_search"}])
    assert refused.value.body["param"] == "tools[0]"  # type: ignore[index]
    # the same request is OpenAI's to judge on an OpenAI model: it reaches the provider
    response = client.responses.create(model="gpt-4o-mini", input="hi", tools=[{"type": "web_search"}])
    assert response.output_text == REPLY


def test_a_native_request_may_not_reach_what_the_provider_stores_for_every_team(env: Providers) -> None:
    """One provider key serves every team: a stored response or conversation of one team is
    readable by any request naming it (and no guardrail saw it); a background run's result is
    fetched by a GET Tollway does not serve. Refused, the provider never asked."""
    client = env.openai()
    for field, value in (("previous_response_id", "resp_123"), ("conversation", "conv_123"), ("background", True)):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="gpt-4o-mini", input="hi", extra_body={field: value})
        assert refused.value.body["param"] == field and refused.value.code == "unsupported_parameter"  # type: ignore[index]
        assert env.provider_saw(refused.value.response.headers["x-tollway-request-id"]) == []


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_a_stream_cut_by_the_provider_ends_with_an_error_event(env: Providers, model: str) -> None:
    cut = {"x-mock-truncate-after": "6"}  # the provider ends its stream properly, its last events missing
    with env.openai().responses.with_streaming_response.create(
        model=model, input="Say hi", stream=True, extra_headers=cut,
    ) as raw:
        events = list(raw.parse())
        request_id = raw.headers.get("x-tollway-request-id")
    assert events[-1].type == "error" and events[-1].code == "stream_interrupted"  # type: ignore[union-attr]
    assert "response.completed" not in [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    record = env.record(request_id)
    assert (record["outcome"], record["error"]) == ("incomplete", "stream_interrupted")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_a_stream_blocked_before_the_client_got_anything_reaches_the_sdk_as_its_error(
        env: Providers, model: str) -> None:
    """A guardrail blocking a stream while all of it was held back sent a lone ``error`` event: the
    SDK's ``responses.stream()`` raised a bare RuntimeError ("Expected to have received
    `response.created` before `error`") without the guardrail's code or message. The stream opens
    first (an empty response), and both SDK paths hand the client the error event."""
    blocked = {"x-mock-reply": f"Here is |the token |{TOKEN[:10]}|{TOKEN[10:]}| use it"}
    client = env.openai()
    events = list(client.responses.create(model=model, input="hi", stream=True, extra_headers=blocked))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "error"]
    assert [e.sequence_number for e in events] == [0, 1, 2]
    with client.responses.stream(model=model, input="hi", extra_headers=blocked) as stream:
        seen = list(stream)
        with pytest.raises(RuntimeError, match=r"response\.completed"):  # as for a stream blocked later
            stream.get_final_response()
    error = seen[-1]
    assert error.type == "error" and error.code == "guardrail_blocked"  # type: ignore[union-attr]
    assert error.message == "The response was blocked by the 'secrets' guardrail (github_token)."  # type: ignore[union-attr]
    assert TOKEN[:10] not in repr(seen) and "Here is" not in repr(seen)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku"])
def test_the_agents_sdk_runs_an_agent_with_a_function_tool(env: Providers, model: str) -> None:
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return "Sunny, 21 C"

    # The fake model calls the tool when asked by this header, and answers text once it has the result.
    client = openai.AsyncOpenAI(base_url=env.base_url + "/v1", api_key=env.key, max_retries=0, timeout=10,
                                default_headers={"x-mock-tool-call": "get_weather"})
    agent = agents.Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                         model=agents.OpenAIResponsesModel(model=model, openai_client=client))
    agents.set_tracing_disabled(True)
    before = {r["request_id"] for r in env.records()}
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    assert result.final_output == REPLY
    assert calls == ["mock"]
    usage = result.context_wrapper.usage
    assert usage.requests == 2
    deadline = time.monotonic() + 5
    while len(new := [r for r in env.records() if r["request_id"] not in before]) < 2:
        assert time.monotonic() < deadline, new
        time.sleep(0.05)
    assert [(r["api"], r["model"], r["outcome"]) for r in new] == [("openai.responses", model, "ok")] * 2
    assert sum(r["input_tokens"] for r in new) == usage.input_tokens
    assert sum(r["output_tokens"] for r in new) == usage.output_tokens
    inp, out = PRICES[model]
    assert [r["cost_usd_micros"] for r in new] == [r["input_tokens"] * inp + r["output_tokens"] * out for r in new]


def test_models_list_shows_exactly_the_teams_models_in_both_sdks(env: Providers) -> None:
    allowed = {"claude-haiku", "gpt-4o-mini", "gpt-4o-mini-latest", "smart"}
    assert {model.id for model in env.openai().models.list()} == allowed
    assert {model.id for model in env.anthropic().models.list()} == allowed
    assert {model.id for model in env.anthropic().models.list(limit=1)} == allowed  # paged one by one
    other = Providers(env.stack, OTHER_KEY)
    assert [model.id for model in other.openai().models.list()] == ["hidden"]
    assert [model.id for model in other.anthropic().models.list()] == ["hidden"]
    assert env.openai().models.retrieve("gpt-4o-mini").owned_by == "openai"
    assert env.anthropic().models.retrieve("claude-haiku").max_input_tokens == 200000
    with pytest.raises(openai.NotFoundError):
        env.openai().models.retrieve("hidden")  # exists, but not for this team
    with pytest.raises(anthropic.NotFoundError):
        env.anthropic().models.retrieve("hidden")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=env.base_url + "/v1", api_key="tw-unknown", max_retries=0).models.list()


def test_count_tokens_forwarded_to_anthropic_or_counted_by_tollway(env: Providers) -> None:
    messages: list[Any] = [{"role": "user", "content": "Hello there, how are you today?"}]
    raw = env.anthropic().messages.with_raw_response.count_tokens(model="claude-haiku", messages=messages)
    assert raw.parse().input_tokens == 3 + 3 + 6  # the fake provider's count
    (sent,) = env.provider_saw(raw.headers["x-tollway-request-id"])
    assert sent["path"] == "/v1/messages/count_tokens" and sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert orjson.loads(sent["body"])["model"] == "claude-3-5-haiku-20241022"
    raw = env.anthropic().messages.with_raw_response.count_tokens(model="gpt-4o-mini", messages=messages)
    assert raw.parse().input_tokens == 15  # o200k_base: 8 text tokens + OpenAI's chat framing
    assert raw.headers["x-tollway-token-count"] == "exact; openai-chat"
    assert env.provider_saw(raw.headers["x-tollway-request-id"]) == []
    record = env.record(raw.headers["x-tollway-request-id"])
    assert (record["api"], record["outcome"], record["cost_usd_micros"]) == ("anthropic.count_tokens", "ok", 0)
