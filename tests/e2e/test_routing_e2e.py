"""Routing end to end: aliases, Envoy-native fallback, weights, context windows, translation.

One stack (a real Envoy with the chain clusters rendered from the policy, two Tollway workers,
the fake provider serving both OpenAI and Anthropic) and the real SDKs. The fake provider's
``x-mock-openai-*`` / ``x-mock-anthropic-*`` controls make one provider fail while the other
answers, within a single request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from ext_proc.policy.compiled import key_digest
from ext_proc.stack import Stack, free_port
from tests.e2e.conftest import Providers
from tests.fixtures import FAULT_CASSETTES

pytestmark = pytest.mark.e2e

KEY = "tw-routing-0123456789abcdefghijklmnopqrstuvwxyzABCD"
OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-routing-0001", "sk-ant-routing-0002"
REPLY = "Tollway mock reply: the quick brown fox jumps"  # the fake provider's answer (8 words)

POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: R_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: R_ANTHROPIC_KEY}}}}
  # A company proxy serving an OpenAI-compatible API under a path (the fake provider stands in).
  gateway: {{kind: openai-compatible, endpoint: "https://llm-gw.corp/vllm/v1", credential: {{env: R_OPENAI_KEY}}}}
  # Reached for real (no stand-in): the fake provider's own port, as an IP address and as a name.
  local: {{kind: openai-compatible, endpoint: "http://127.0.0.1:MOCK_PORT/v1", credential: {{env: R_OPENAI_KEY}}}}
  named: {{kind: openai-compatible, endpoint: "http://localhost:MOCK_PORT/v1", credential: {{env: R_OPENAI_KEY}}}}
models:
  local-llama: {{provider: local, model: llama-local}}
  named-llama: {{provider: named, model: llama-named}}
  llama: {{provider: gateway, model: meta-llama/Llama-3.1-8B-Instruct}}
  gpt-4o-mini: {{provider: openai}}
  gpt-5-nano: {{provider: openai}}
  claude-haiku: {{provider: anthropic, model: claude-3-5-haiku-20241022}}
routing:
  aliases:
    gpt-4o:
      targets:
        - {{provider: openai, model: gpt-4o-2024-08-06}}
        - provider: anthropic
          model: claude-sonnet-4-5
          max_output_tokens: 2048
          price: {{input: "3", output: "15"}}
    split:
      strategy: weighted
      targets:
        - {{provider: openai, model: gpt-4o-mini, weight: 80}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022, weight: 20}}
    claude-first:
      targets:
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
        - {{provider: openai, model: gpt-4o-mini}}
    local-first:
      targets:
        - {{provider: named, model: llama-named}}
        - {{provider: local, model: llama-local}}
    long:
      targets:
        - {{provider: openai, model: gpt-4o-mini, context_window: 1000}}
        - {{provider: anthropic, model: claude-sonnet-4-5, context_window: 200000}}
teams:
  app:
    keys: [{{id: app-ci, sha256: {key_digest(KEY)}}}]
    models: [llama, gpt-4o, split, claude-first, long, gpt-4o-mini, gpt-5-nano, claude-haiku, local-llama,
             named-llama, local-first]
"""


class Env(Providers):
    def envoy_stat(self, name: str) -> int:
        text = self.stack.envoy_admin("/stats", params={"filter": "^" + re.escape(name) + "$"}).text
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


PROVIDER_KEYS = {"R_OPENAI_KEY": OPENAI_KEY, "R_ANTHROPIC_KEY": ANTHROPIC_KEY}


def routing_stack(work: Path, **options: Any) -> Stack:
    """The stack of POLICY, its fake provider on the port the policy's ``local`` and ``named`` reach."""
    port = free_port()
    options.setdefault("mocked", frozenset({"openai", "anthropic", "gateway"}))
    return Providers.stack(work, POLICY.replace("MOCK_PORT", str(port)), PROVIDER_KEYS, mock_port=port, **options)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # workers=2: a request's two ext_proc streams (router level, per try) may reach different
    # processes; first_byte_timeouts: a stalled provider fails over after 1 s.
    stack = routing_stack(tmp_path_factory.mktemp("routing"), workers=2, first_byte_timeouts=("1s", "1s"),
                          mock_args=("--cassettes", str(FAULT_CASSETTES)))
    with stack:
        yield Env(stack, KEY)


FAILURES = {
    "403": {"x-mock-openai-status": "403"},  # the gateway's account refused (a region, a project's permission)
    "408": {"x-mock-openai-status": "408"},
    "429": {"x-mock-openai-status": "429"},
    "500": {"x-mock-openai-status": "500"},
    "stall": {"x-mock-openai-latency-ms": "4000"},  # no byte at all for 4 s: the 1 s first-byte timeout fires
}
HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]


def _check_fallback(env: Env, request_id: str | None, stream: bool, failure: str) -> dict[str, Any]:
    """The provider saw one OpenAI try then one Anthropic try, each with its own key and format; a
    first try abandoned at the first-byte timeout (the provider may bill it) is in the record."""
    assert request_id
    tries = env.provider_saw(request_id)
    assert [t["path"] for t in tries] == ["/v1/chat/completions", "/v1/messages"]
    first, second = tries
    assert first["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert orjson.loads(first["body"])["model"] == "gpt-4o-2024-08-06"
    assert second["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in second["headers"]  # the OpenAI key never reaches Anthropic
    assert second["headers"]["anthropic-version"] == "2023-06-01"
    sent = orjson.loads(second["body"])
    assert sent["model"] == "claude-sonnet-4-5" and sent["max_tokens"] == 2048 and sent["system"] == "Be brief."
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}] and sent.get("stream", False) is stream
    for t in tries:
        assert KEY not in str(t["headers"]) and not any(k.startswith("x-tollway") for k in t["headers"])
        assert t["headers"]["accept-encoding"] == "identity"  # plain answers, whatever the client accepts
        assert "x-envoy-is-timeout-retry" not in t["headers"]  # Envoy's mark for the per-try filter
    record = env.record(request_id)
    if failure == "stall":  # sent, no head within the timeout: counted, its input estimated, its cost unknown
        assert record["abandoned_tries"] == 1 and record["estimated_input_tokens"]
        assert record["abandoned"] == [{"provider": "openai", "model": "gpt-4o-2024-08-06",
                                        "input_tokens": record["estimated_input_tokens"]}]
    else:  # an error answer: no work done, nothing abandoned
        assert "abandoned_tries" not in record and "abandoned" not in record
    assert record["model"] == "gpt-4o" and record["provider"] == "anthropic" and record["fallback"] is True
    assert record["attempts"] == 2 and record["outcome"] == "ok" and record["status"] == 200
    assert record["input_tokens"] and record["output_tokens"] == 8
    # Priced as the model that served (policy price $3 / $15 per million tokens).
    assert record["cost_usd_micros"] == record["input_tokens"] * 3 + 8 * 15
    return record


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_openai_sdk_alias_falls_back_to_anthropic(env: Env, failure: str) -> None:
    raw = env.openai().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HI, extra_headers=FAILURES[failure]  # type: ignore[arg-type]
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop" and completion.model == "claude-sonnet-4-5"
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    assert raw.headers["x-tollway-provider"] == "anthropic" and raw.headers["x-tollway-attempts"] == "2"
    assert raw.headers["x-tollway-model"] == "claude-sonnet-4-5"
    _check_fallback(env, raw.headers.get("x-tollway-request-id"), stream=False, failure=failure)


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_openai_sdk_alias_stream_falls_back_to_anthropic(env: Env, failure: str) -> None:
    with env.openai().chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
        extra_headers=FAILURES[failure],
    ) as response:
        assert response.headers["x-tollway-provider"] == "anthropic"
        request_id = response.headers.get("x-tollway-request-id")
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    _check_fallback(env, request_id, stream=True, failure=failure)


def test_no_fallback_when_the_first_provider_answers(env: Env) -> None:
    raw = env.openai().chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-tollway-provider"] == "openai" and raw.headers["x-tollway-attempts"] == "1"
    record = env.record(raw.headers.get("x-tollway-request-id"))
    assert record["provider"] == "openai" and record["fallback"] is False and record["attempts"] == 1
    assert "abandoned_tries" not in record


def test_every_provider_failing_gives_the_last_error_in_the_clients_format(env: Env) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        env.openai().chat.completions.create(
            model="gpt-4o", messages=HI, extra_headers={"x-mock-status": "500"}
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "server_error"  # Anthropic's api_error, as OpenAI's
    request_id = caught.value.response.headers.get("x-tollway-request-id")
    assert caught.value.response.headers["x-tollway-attempts"] == "2"
    record = env.record(request_id)
    assert record["status"] == 500 and record["outcome"] == "error" and record["provider"] == "anthropic"
    # Every provider refusing the gateway's accounts (403): the last one's refusal, in the client's
    # format, its status kept (the client's own key is fine: Tollway's 403s are its own, never retried).
    with pytest.raises(openai.PermissionDeniedError) as refused:
        env.openai().chat.completions.create(model="gpt-4o", messages=HI, extra_headers={"x-mock-status": "403"})
    assert refused.value.response.headers["x-tollway-attempts"] == "2"
    assert refused.value.response.headers["x-tollway-provider"] == "anthropic"
    record = env.record(refused.value.response.headers.get("x-tollway-request-id"))
    assert (record["status"], record["outcome"], record["error"]) == (403, "error", "permission_error")


def test_which_openai_account_pays_is_the_platforms_and_its_ids_are_not_shown(env: Env) -> None:
    """The organization and project the shared key bills are the platform's (its project key), not a
    caller's (the openai SDK sends OPENAI_ORG_ID and OPENAI_PROJECT_ID); the account the provider
    names on its answers is not the teams' to see."""
    client = env.openai().with_options(organization="org-SOMEONE-ELSES", project="proj_SOMEONE_ELSES")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert "openai-organization" not in raw.headers and "openai-project" not in raw.headers
    (seen,) = env.provider_saw(raw.headers.get("x-tollway-request-id"))
    assert "openai-organization" not in seen["headers"] and "openai-project" not in seen["headers"]
    assert seen["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"


def test_a_provider_behind_a_base_path_is_asked_under_it(env: Env) -> None:
    """An endpoint's path is where the API lives (a proxy's prefix): the path was dropped, the proxy
    asked at its root."""
    raw = env.openai().chat.completions.with_raw_response.create(model="llama", messages=HI)
    assert raw.parse().choices[0].message.content == REPLY
    (seen,) = env.provider_saw(raw.headers.get("x-tollway-request-id"))
    assert seen["path"] == "/vllm/v1/chat/completions"


@pytest.mark.parametrize(("sdk", "model", "stream", "host"), [
    ("openai", "local-llama", False, "127.0.0.1:{port}"),  # an IP address's (STATIC) cluster
    ("openai", "local-llama", True, "127.0.0.1:{port}"),
    ("anthropic", "local-llama", False, "127.0.0.1:{port}"),  # translated
    ("anthropic", "local-llama", True, "127.0.0.1:{port}"),
    ("openai", "named-llama", False, "localhost:{port}"),  # a DNS name's: its port too
    ("anthropic", "named-llama", True, "localhost:{port}"),
    ("openai", "local-first", False, "localhost:{port}"),  # a chain's first try
    ("openai", "local-first", True, "localhost:{port}"),
])
def test_a_provider_is_sent_its_endpoints_host_whatever_the_client_sent(
        env: Env, sdk: str, model: str, stream: bool, host: str) -> None:
    """The Host a provider gets is its endpoint's (with its port when not the scheme's default):
    a client's own Host went with the platform's provider key to an endpoint given as an IP
    address (a virtual host of the client's choosing on a shared server), and a name's went
    without its port."""
    spoofed = {"host": "attacker.vhost"}
    if sdk == "openai":
        answer: Any = env.openai().with_options(default_headers=spoofed).chat.completions.with_raw_response.create(
            model=model, messages=HI, stream=stream)
    else:
        answer = env.anthropic().with_options(default_headers=spoofed).messages.with_raw_response.create(
            model=model, max_tokens=50, messages=HI[1:], stream=stream)
    parsed = answer.parse()
    assert list(parsed) if stream else parsed.id
    request_id = answer.headers.get("x-tollway-request-id")
    (seen,) = env.provider_saw(request_id)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["host"] == host.format(port=env.stack.mock_port)
    assert seen["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"


def test_a_target_that_cannot_express_the_request_is_left_out_of_the_chain(env: Env) -> None:
    """`n: 2` cannot be asked of Claude: an alias whose first target is Claude serves it with its
    OpenAI fallback (not a 400 blaming a request the alias can serve), and an alias whose fallback
    is Claude has none for it (OpenAI's own 429, which the SDK retries, not a fallback's 400)."""
    raw = env.openai().chat.completions.with_raw_response.create(model="claude-first", messages=HI, n=2)
    assert raw.parse().choices[0].message.content == REPLY
    served = env.record(raw.headers.get("x-tollway-request-id"))
    assert served["status"] == 200 and served["provider"] == "openai" and served["attempts"] == 1
    with pytest.raises(openai.RateLimitError) as caught:
        env.openai().with_options(max_retries=0).chat.completions.create(
            model="gpt-4o", messages=HI, n=2, extra_headers={"x-mock-openai-status": "429"})
    failed = env.record(caught.value.response.headers.get("x-tollway-request-id"))
    assert failed["status"] == 429 and failed["attempts"] == 1 and failed["provider"] == "openai"


def test_a_malformed_responses_request_for_claude_is_the_clients_400_and_keeps_claude_in_the_chain(env: Env) -> None:
    """An image whose data URL is not base64 is no request any API takes: `invalid_request`, as
    for a chat client, not `unsupported_for_provider` blaming the model; and an alias whose first
    target is Claude answers that 400 (its try's, in Anthropic's format translated: no code)
    rather than leaving Claude out and sending the request to its fallback."""
    bad = [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png,not-base64"}]}]
    for model in ("claude-haiku", "claude-first"):
        with pytest.raises(openai.BadRequestError, match="must be a base64 data URL") as refused:
            env.openai().responses.create(model=model, input=bad)  # type: ignore[arg-type]
        assert "served by" not in refused.value.message
        if model == "claude-haiku":
            assert refused.value.body["code"] == "invalid_request", refused.value.body  # type: ignore[index]
        request_id = refused.value.response.headers.get("x-tollway-request-id")
        assert env.provider_saw(request_id) == [], model  # refused by Tollway, no provider asked
        assert env.record(request_id)["status"] == 400


def test_a_provider_refusing_the_gateways_key_is_the_gateways_502_and_a_chain_falls_back(env: Env) -> None:
    """The provider's 401 means the key Tollway holds for it is bad: not the client's to fix (its
    SDK would say its own key is wrong), and its message may show a piece of that key. A chain
    goes on to the next provider, which has a key of its own."""
    with pytest.raises(openai.InternalServerError) as caught:
        env.openai().with_options(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-mock-status": "401"})
    assert caught.value.status_code == 502 and caught.value.code == "provider_authentication_failed"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "Your own key is fine" in caught.value.message and OPENAI_KEY[-4:] not in caught.value.response.text
    record = env.record(caught.value.response.headers.get("x-tollway-request-id"))
    assert (record["status"], record["error"]) == (502, "provider_authentication_failed")
    raw = env.openai().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HI, extra_headers={"x-mock-openai-status": "401"})  # type: ignore[arg-type]
    assert raw.headers["x-tollway-provider"] == "anthropic" and raw.parse().choices[0].message.content == REPLY


def test_envoy_counts_the_retries_of_a_chain_cluster(env: Env) -> None:
    before = env.envoy_stat("cluster.openai+anthropic.upstream_rq_retry")
    env.openai().chat.completions.create(model="gpt-4o", messages=HI, extra_headers=FAILURES["500"])
    assert env.envoy_stat("cluster.openai+anthropic.upstream_rq_retry") == before + 1


def test_weighted_split_over_1000_requests(env: Env) -> None:
    body = orjson.dumps({"model": "split", "messages": [{"role": "user", "content": "hi"}]})
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    def send(client: httpx.Client) -> str:
        response = client.post(env.stack.base_url + "/v1/chat/completions", content=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.headers["x-tollway-provider"]

    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        served = collections.Counter(pool.map(lambda _: send(client), range(1000)))
    assert sum(served.values()) == 1000
    assert 750 <= served["openai"] <= 850, served  # 80% +- 5%


def test_a_prompt_too_long_for_the_first_target_goes_straight_to_the_larger_one(env: Env) -> None:
    client = env.openai()
    short = client.chat.completions.with_raw_response.create(model="long", messages=HI)
    assert short.headers["x-tollway-provider"] == "openai"
    long_prompt = [{"role": "user", "content": "word " * 3000}]  # ~3000 tokens > the 1000-token window
    raw = client.chat.completions.with_raw_response.create(model="long", messages=long_prompt)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-tollway-provider"] == "anthropic" and raw.headers["x-tollway-attempts"] == "1"
    request_id = raw.headers.get("x-tollway-request-id")
    assert [t["path"] for t in env.provider_saw(request_id or "")] == ["/v1/messages"]  # OpenAI never asked
    record = env.record(request_id)
    assert record["estimated_input_tokens"] > 1000 and record["fallback"] is False


def test_anthropic_sdk_served_by_an_openai_model(env: Env) -> None:
    raw = env.anthropic().messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Say hi"}],
        stop_sequences=["END"], extra_body={"temperature": 0.2},
    )
    message = raw.parse()
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text == REPLY
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 8
    request_id = raw.headers.get("x-tollway-request-id")
    (sent,) = env.provider_saw(request_id or "")
    assert sent["path"] == "/v1/chat/completions" and sent["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent["headers"]["accept-encoding"] == "identity"  # plain answers, whatever the client accepts
    body = orjson.loads(sent["body"])
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["stop"] == ["END"] and body["temperature"] == 0.2 and body["max_completion_tokens"] == 100
    assert "max_tokens" not in body
    record = env.record(request_id)
    assert record["api"] == "anthropic.messages" and record["provider"] == "openai" and record["output_tokens"] == 8


def test_anthropic_sdk_served_by_an_openai_reasoning_model(env: Env) -> None:
    # OpenAI's reasoning models refuse max_tokens (the fake provider too, as recorded); the
    # Messages API requires it, so the translation sends it as max_completion_tokens.
    for stream in (False, True):
        message = env.anthropic().messages.create(
            model="gpt-5-nano", max_tokens=100, messages=[{"role": "user", "content": "Say hi"}], stream=stream)
        if stream:
            text = "".join(e.delta.text for e in message
                           if e.type == "content_block_delta" and e.delta.type == "text_delta")
        else:
            text = message.content[0].text  # type: ignore[union-attr]
        assert text == REPLY


def test_each_sdk_reads_the_providers_request_id_translated_and_tollways_on_a_refusal(env: Env) -> None:
    """OpenAI's SDK reads x-request-id, Anthropic's request-id: a translated answer carries the
    provider's id under the client's name, and Tollway's own refusal carries its request id."""
    message = env.anthropic().messages.create(model="gpt-4o-mini", max_tokens=10, messages=[
        {"role": "user", "content": "Say hi"}])
    assert message._request_id and message._request_id.startswith("req_mock")
    completion = env.openai().chat.completions.create(model="claude-haiku", messages=HI)  # type: ignore[arg-type]
    assert completion._request_id and completion._request_id.startswith("req_mock")
    with pytest.raises(openai.NotFoundError) as refused:
        env.openai().chat.completions.create(model="no-such-model", messages=HI)  # type: ignore[arg-type]
    tollway_id = refused.value.response.headers["x-tollway-request-id"]
    assert refused.value.request_id == tollway_id and env.provider_saw(tollway_id) == []


def test_anthropic_sdk_stream_served_by_an_openai_model(env: Env) -> None:
    with env.anthropic().messages.stream(
        model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": "Say hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers.get("x-tollway-request-id")
    assert text == REPLY and final.stop_reason == "end_turn" and final.usage.output_tokens == 8
    (sent,) = env.provider_saw(request_id or "")
    assert orjson.loads(sent["body"])["stream_options"] == {"include_usage": True}
    record = env.record(request_id)
    assert record["provider"] == "openai" and record["stream"] is True and record["outcome"] == "ok"
    assert record["output_tokens"] == 8 and record["output_estimated"] is False


def test_a_stream_cut_after_its_first_byte_ends_with_an_error_event_not_a_clean_end(env: Env) -> None:
    # The provider ends its HTTP response properly but without the final events: no failover is
    # possible any more (the client already has the first bytes); the client must not see success.
    stream = env.openai().chat.completions.create(
        model="gpt-4o", messages=HI, stream=True, extra_headers={"x-mock-truncate-after": "3"}
    )
    received = []
    with pytest.raises(openai.APIError, match="ended before the response was complete"):
        for chunk in stream:
            received.append(chunk)
    assert received  # the first chunks arrived before the error
    request_id = stream.response.headers.get("x-tollway-request-id")
    record = env.record(request_id)
    assert record["outcome"] == "incomplete" and record["error"] == "stream_interrupted"
    assert record["provider"] == "openai" and record["output_tokens"] is not None  # counted from what was seen


def test_a_translated_stream_cut_after_its_first_byte_ends_with_an_error_event(env: Env) -> None:
    with pytest.raises(anthropic.APIStatusError, match="ended before the response was complete"):  # noqa: SIM117
        with env.anthropic().messages.stream(
            model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": "Say hi"}],
            extra_headers={"x-mock-truncate-after": "4"},
        ) as stream:
            for _ in stream.text_stream:
                pass


DONE_WITHOUT_FINISH = {"x-mock-cassette": "openai-done-without-finish"}  # text, no finish reason, [DONE]


def test_a_chat_stream_done_without_a_finish_reason_is_an_error_for_a_translated_client(env: Env) -> None:
    """A chat stream that ends with [DONE] but no finish reason was cut: an Anthropic client of
    that model gets an error event (its stream just stopped: get_final_message said stop_reason
    None, usage 0/0), so does a Responses client (its stream ended on a text delta), and the
    record says incomplete (it said ok). A chat client reads the same stream as sent."""
    with pytest.raises(anthropic.APIStatusError, match="ended before the response was complete"):  # noqa: SIM117
        with env.anthropic().messages.stream(model="gpt-4o-mini", max_tokens=50, extra_headers=DONE_WITHOUT_FINISH,
                                             messages=[{"role": "user", "content": "Say hi"}]) as stream:
            cut = [stream.response.headers.get("x-tollway-request-id")]
            stream.get_final_message()
    raw = env.openai().responses.with_raw_response.create(model="llama", input="Say hi", stream=True,
                                                          extra_headers=DONE_WITHOUT_FINISH)
    kinds = [event.type for event in raw.parse()]
    assert kinds[-1] == "error" and "response.output_text.delta" in kinds, kinds
    assert not {"response.completed", "response.incomplete"} & set(kinds)
    cut.append(raw.headers.get("x-tollway-request-id"))
    for request_id in cut:
        record = env.record(request_id)
        assert (record["outcome"], record["error"]) == ("incomplete", "stream_interrupted"), record
    chat = env.openai().chat.completions.with_raw_response.create(model="llama", messages=HI, stream=True,
                                                                  extra_headers=DONE_WITHOUT_FINISH)
    chunks = list(chat.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer is"
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)
    assert env.record(chat.headers.get("x-tollway-request-id"))["outcome"] == "ok"


def test_images_a_function_returned_reach_a_chat_model_after_its_tool_messages(env: Env) -> None:
    """A Responses client's function output with an image, for a chat-completions model: the
    `tool` message holds text only (Chat Completions takes no image there), the image follows in
    a user message."""
    image = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9a"
             "wAAAABJRU5ErkJggg==")
    raw = env.openai().responses.with_raw_response.create(model="llama", input=[
        {"role": "user", "content": "Take a screenshot"},
        {"type": "function_call", "call_id": "call_1", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1",
         "output": [{"type": "input_text", "text": "here"}, {"type": "input_image", "image_url": image}]},
    ])
    assert raw.parse().status == "completed"
    (sent,) = env.provider_saw(raw.headers.get("x-tollway-request-id"))
    messages = orjson.loads(sent["body"])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert [part["type"] for part in messages[2]["content"]] == ["text", "text"]
    assert messages[3]["content"] == [{"type": "text", "text": "Images returned by tool call call_1:"},
                                      {"type": "image_url", "image_url": {"url": image}}]


def test_a_stream_reset_after_its_first_byte_is_never_a_clean_end(env: Env) -> None:
    # The provider closes the connection mid-stream. Envoy resets the client's stream, or answers
    # a JSON 502 when nothing was forwarded yet: either way the SDK raises, and no chunk of a
    # cut stream is ever followed by a normal end.
    request_id = None
    with pytest.raises((openai.APIError, httpx.HTTPError)) as caught:
        stream = env.openai().chat.completions.create(
            model="gpt-4o", messages=HI, stream=True, extra_headers={"x-mock-cut-after": "3"}
        )
        request_id = stream.response.headers.get("x-tollway-request-id")
        for _ in stream:
            pass
    if isinstance(caught.value, openai.APIStatusError):
        assert caught.value.status_code == 502
        request_id = caught.value.response.headers.get("x-tollway-request-id")
    record = env.record(request_id)
    assert record["outcome"] in ("incomplete", "error") and record["provider"] == "openai"


def test_envoy_has_the_chain_clusters_from_the_clusters_file(env: Env) -> None:
    assert "openai+anthropic" not in Path(env.stack.workdir / "envoy.yaml").read_text()  # not in the bootstrap
    assert "name: openai+anthropic\n" in env.stack.clusters_file.read_text()
    dump = env.stack.envoy_admin("/config_dump", params={"resource": "dynamic_active_clusters"}).json()
    active = {entry["cluster"]["name"] for entry in dump["configs"]}
    assert {"openai", "anthropic", "openai+anthropic", "anthropic+openai"} <= active


def test_outlier_detection_takes_a_failing_provider_out_of_first_attempts(tmp_path: Path) -> None:
    """After 5 failures in a row Envoy ejects OpenAI: the next request goes to Anthropic first."""
    stack = routing_stack(tmp_path, workers=1, mocked=frozenset({"openai", "anthropic"}))
    with stack:
        client = Env(stack, KEY).openai()
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=HI, extra_headers=FAILURES["500"]
            )
            assert raw.headers["x-tollway-attempts"] == "2"
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
        assert raw.parse().choices[0].message.content == REPLY
        # OpenAI is healthy again but still ejected: Envoy's first (and only) try is Anthropic.
        assert raw.headers["x-tollway-provider"] == "anthropic" and raw.headers["x-tollway-attempts"] == "1"
        ejected = r"^cluster\.openai\+anthropic\.outlier_detection\.ejections_enforced_total$"
        stats = stack.envoy_admin("/stats", params={"filter": ejected})
        assert stats.text.strip().endswith(": 1"), stats.text
        # Anthropic fails 5 times in a row too: the chain keeps its last provider (at most all
        # but one of its endpoints ejected), so the alias answers once a provider does again,
        # never a 503 no_healthy_upstream with both providers healthy.
        for _ in range(5):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="gpt-4o", messages=HI, extra_headers={
                    "x-mock-anthropic-status": "500", "x-mock-openai-status": "500"})
        answer = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
        assert answer.parse().choices[0].message.content == REPLY
        assert stack.envoy_admin("/stats", params={"filter": ejected}).text.strip().endswith(": 1")


def test_a_stalled_first_target_falls_back_when_its_first_byte_timeout_equals_the_idle_timeout(
        tmp_path: Path) -> None:
    """The shipped timeouts scaled down: Envoy's idle timeouts (300 s) equal to the buffered first-byte
    timeout (300 s), here 2 s. The route's idle timer runs from the request on, across all its tries:
    the labelled routes' own is long enough for a whole chain, so a stalled first target falls back
    (before, the client got a 504 stream_idle_timeout and the second target was never asked)."""
    stack = routing_stack(tmp_path, workers=1, mocked=frozenset({"openai", "anthropic"}),
                          first_byte_timeouts=("2s", "2s"), stream_idle_timeout="2s")
    with stack:
        env = Env(stack, KEY)
        started = time.monotonic()
        raw = env.openai().chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HI, extra_headers={"x-mock-openai-latency-ms": "5000"})
        assert raw.parse().choices[0].message.content == REPLY
        assert raw.headers["x-tollway-provider"] == "anthropic" and raw.headers["x-tollway-attempts"] == "2"
        assert time.monotonic() - started < 4.5  # the first try's 2 s, not the stalled provider's 5 s
        record = env.record(raw.headers.get("x-tollway-request-id"))
        assert record["abandoned_tries"] == 1 and record["fallback"] is True


@pytest.mark.parametrize("client", ["anthropic", "openai"])
def test_the_record_names_envoys_own_reason_whichever_family_met_it(env: Env, client: str) -> None:
    """A provider that sends no byte within the first-byte timeout: Envoy's 504, recorded as its
    reason (the same for both families' clients: an Anthropic client's was `api_error`)."""
    stall = {"x-mock-latency-ms": "4000"}
    if client == "anthropic":
        with pytest.raises(anthropic.APIStatusError) as caught:
            env.anthropic().messages.create(model="claude-haiku", max_tokens=10, extra_headers=stall,
                                            messages=[{"role": "user", "content": "Hi"}])
        response = caught.value.response
    else:
        with pytest.raises(openai.APIStatusError) as failed:
            env.openai().chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=stall)  # type: ignore[arg-type]
        response = failed.value.response
    assert response.status_code == 504
    record = env.record(response.headers.get("x-tollway-request-id"))
    assert record["error"] == "upstream_per_try_idle_timeout", record["error"]
    # The provider got the request and may bill it: an abandoned try, not an error that cost nothing.
    model = "claude-3-5-haiku-20241022" if client == "anthropic" else "gpt-4o-mini"
    assert record["abandoned_tries"] == 1 and record["abandoned"][0]["model"] == model


@pytest.mark.parametrize(("client", "model"), [("anthropic", "gpt-4o-mini"), ("openai", "claude-haiku")])
def test_envoys_own_error_after_the_head_comes_in_the_clients_format_when_translated(
        env: Env, client: str, model: str) -> None:
    """The provider sends its head and half its body, then closes: Envoy answers a 502 itself. Its
    format follows the client's family, which Tollway names in the request's metadata, not the path
    upstream (the provider's family's, translated)."""
    cut = {"x-mock-cut-after": "3"}
    if client == "anthropic":
        with pytest.raises(anthropic.InternalServerError) as anthropic_error:
            env.anthropic().messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "Hi"}],
                                            extra_headers=cut)
        response = anthropic_error.value.response
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
    else:
        with pytest.raises(openai.InternalServerError) as openai_error:
            env.openai().chat.completions.create(model=model, messages=HI, extra_headers=cut)  # type: ignore[arg-type]
        response = openai_error.value.response
        body = response.json()
        assert body["error"]["type"] == "server_error" and "type" not in body
    assert body["error"]["code"].startswith("upstream_reset")  # Envoy's reason, in either format
    record = env.record(response.headers.get("x-tollway-request-id"))  # Tollway saw the answer cut
    assert (record["outcome"], record["error"], record["status"]) == ("incomplete", "answer_interrupted", 200)



def test_a_prompt_larger_than_envoys_connection_buffer_falls_back_whole(env: Env) -> None:
    """Envoy buffers a client connection's 1 MiB (a client that does not read holds no more), a
    request body up to 64 MiB (the routes' request_body_buffer_limit): a 3 MiB prompt is held
    whole for the retry, and the next target gets all of it."""
    content = "a" * (3 << 20)
    answer = httpx.post(env.base_url + "/v1/chat/completions", timeout=60,
                        headers={"authorization": f"Bearer {KEY}", **FAILURES["429"]},
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["x-tollway-provider"] == "anthropic" and answer.headers["x-tollway-attempts"] == "2"
    tries = env.provider_saw(answer.headers["x-tollway-request-id"])
    assert [orjson.loads(t["body"])["messages"][-1]["content"] for t in tries] == [content, content]
    assert env.envoy_stat("cluster.openai+anthropic.retry_or_shadow_abandoned") == 0


def test_large_prompts_sent_at_once_to_a_fallback_alias_do_not_crash_envoy(tmp_path: Path) -> None:
    """Eight clients sending 4 MiB prompts to an alias for a few seconds, the provider slow to
    answer (so tries keep waiting for new connections to it): Envoy's connection to Tollway passed
    its 1 MiB high watermark, which reached the per-try ext_proc filter of a try still waiting for
    its provider connection, and Envoy 1.40 crashed (SIGSEGV; every client then got a connection
    error). The ext_proc cluster's buffer limit is now far above any body (envoy/tollway.yaml)."""
    stack = routing_stack(tmp_path, workers=1, mocked=frozenset({"openai", "anthropic"}))
    content = "lorem " * ((4 << 20) // 6)
    statuses: collections.Counter[object] = collections.Counter()

    def client(number: int, until: float) -> None:
        with httpx.Client(timeout=60, headers={"authorization": f"Bearer {KEY}",
                                               "x-mock-openai-latency-ms": "200"}) as session:
            while time.monotonic() < until:
                try:
                    answer = session.post(stack.base_url + "/v1/chat/completions", json={
                        "model": "gpt-4o", "messages": [{"role": "user", "content": f"{number} {content}"}]})
                    statuses[answer.status_code] += 1
                except httpx.TransportError as error:
                    statuses[type(error).__name__] += 1
                    return

    with stack, concurrent.futures.ThreadPoolExecutor(8) as pool:
        until = time.monotonic() + 6
        list(pool.map(client, range(8), [until] * 8))
        assert stack.procs["envoy"].poll() is None, ("Envoy died", statuses)
        assert set(statuses) == {200}, statuses
