"""Budgets and rate limits end to end on one node: a real Envoy, the service, the fake provider, the SDKs.

The service runs on its own counters here (no Redis); tests/e2e/test_limits_redis_e2e.py shows
the same across service processes sharing a real redis-server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import yaml

from ext_proc.policy.compiled import key_digest
from tests.e2e.conftest import Providers, one_minute
from tests.fixtures import CASSETTES

pytestmark = pytest.mark.e2e

ALPHA, BETA = "tw-alpha-budget-key-0123456789abcdefghijklmnopq", "tw-beta-rate-key-0123456789abcdefghijklmnopqrs"
GAMMA = "tw-gamma-tpm-key-0123456789abcdefghijklmnopqrstuv"
OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-limits-01", "sk-ant-limits-02"
POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: L_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: L_ANTHROPIC_KEY}}}}
models:
  # $1,000 per million tokens: one token is a tenth of a cent, so a request costs a few cents.
  gpt-4o-mini: {{provider: openai, price: {{input: "1000", output: "1000"}}}}
  claude: {{provider: anthropic, model: claude-x, price: {{input: "1000", output: "1000"}}}}
teams:
  alpha: {{keys: [{{id: alpha-ci, sha256: "{key_digest(ALPHA)}"}}], models: ["*"]}}
  beta: {{keys: [{{id: beta-ci, sha256: "{key_digest(BETA)}"}}], models: ["*"]}}
  gamma: {{keys: [{{id: gamma-ci, sha256: "{key_digest(GAMMA)}"}}], models: ["*"]}}
budgets:
  alpha-daily: {{team: alpha, usd: "0.20", period: day, alerts: [50, 100]}}
rate_limits:
  beta-rpm: {{team: beta, requests_per_minute: 4, tokens_per_minute: 100000}}
  gamma-tpm: {{team: gamma, tokens_per_minute: 2000}}
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    stack = Providers.stack(tmp_path_factory.mktemp("limits"), POLICY,
                            {"L_OPENAI_KEY": OPENAI_KEY, "L_ANTHROPIC_KEY": ANTHROPIC_KEY})
    with stack:
        yield Providers(stack, ALPHA)


def client(env: Providers, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key=key, max_retries=retries, timeout=10)


def test_a_spent_budget_refuses_that_team_only_and_the_sdk_does_not_retry(env: Providers) -> None:
    alpha = client(env, ALPHA, retries=3)  # retries allowed: x-should-retry: false must stop them
    admitted = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(20):
            # ~8 prompt + 30 output tokens = ~$0.04 claimed; the provider writes exactly 30
            alpha.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=30,  # type: ignore[arg-type]
                                          extra_headers={"x-mock-chunks": "30"})
            admitted += 1
    assert 3 <= admitted <= 5  # $0.20 at ~$0.04 a request
    error = refused.value
    assert error.status_code == 429 and error.code == "budget_exceeded"
    assert "The budget 'alpha-daily' ($0.20) is spent, or what is left of it cannot cover this request" \
        in error.message and "it resets at " in error.message
    assert error.response.headers["x-should-retry"] == "false"
    request_id = error.response.headers.get("x-tollway-request-id")
    assert env.provider_saw(request_id) == []  # refused before any provider, and not retried
    record = env.record(request_id)
    assert (record["outcome"], record["error"], record["limit"], record["team"]) == (
        "rejected", "budget_exceeded", "alpha-daily", "alpha")
    # Admitted spend stays within the budget plus what requests spent beyond their claims.
    records = [r for r in env.records() if r["team"] == "alpha" and r["outcome"] == "ok"]
    spent = sum(r["cost_usd_micros"] for r in records)
    beyond = sum(max(0, entry["used"] - entry["claimed"]) for r in records for entry in r["limits"]
                 if entry["unit"] == "usd")
    assert spent <= 200_000 + beyond
    # Another team is not refused by alpha's budget.
    assert client(env, BETA).chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content


def test_a_rate_limit_is_a_429_with_its_headers_in_each_sdks_names(env: Providers) -> None:
    one_minute()  # both SDKs meet the limit of the same minute
    beta = client(env, BETA)
    seen = []
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(10):
            raw = beta.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
            seen.append(raw.headers)
    headers = seen[-1]
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert int(headers["x-ratelimit-remaining-requests"]) < 4
    assert headers["x-ratelimit-reset-requests"].endswith("s") and "x-ratelimit-limit-tokens" in headers
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    assert "Rate limit 'beta-rpm' reached (4 requests per minute)" in error.message
    assert 1 <= int(error.response.headers["retry-after"]) <= 60
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    # The Anthropic SDK, the same limit: its own error type and header names.
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic.Anthropic(base_url=env.base_url, api_key=BETA, max_retries=0).messages.create(
            model="claude", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert caught.value.response.headers["anthropic-ratelimit-requests-limit"] == "4"
    assert caught.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert caught.value.response.headers["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_a_request_larger_than_a_minutes_tokens_is_told_so_and_the_sdks_do_not_retry(env: Providers) -> None:
    """Without max_tokens a request claims its prompt and 4,096 output tokens, more than gamma's
    2,000 tokens per minute: no minute ever holds it, so waiting and retrying is in vain."""
    sent: list[str] = []
    hooks: dict[str, list[Any]] = {"request": [lambda request: sent.append(request.url.path)]}
    gamma = openai.OpenAI(base_url=env.base_url + "/v1", api_key=GAMMA, max_retries=2, timeout=10,
                          http_client=openai.DefaultHttpxClient(event_hooks=hooks))
    assert gamma.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=100)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        gamma.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5 and len(sent) == 2  # one try: no retry, no wait
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    assert "Request too large for the rate limit 'gamma-tpm' on tokens per minute: Limit 2,000, Requested 4," \
        in error.message and "Reduce max_tokens or the prompt" in error.message
    headers = error.response.headers
    assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    request_id = headers.get("x-tollway-request-id")
    assert env.provider_saw(request_id) == []
    assert env.record(request_id)["limit"] == "gamma-tpm"
    # The Anthropic SDK: its own error type, and no retry either.
    sent.clear()
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic.Anthropic(base_url=env.base_url, api_key=GAMMA, max_retries=2,
                            http_client=anthropic.DefaultHttpxClient(event_hooks=hooks)).messages.create(
            model="claude", max_tokens=5000, messages=HI)  # type: ignore[arg-type]
    assert len(sent) == 1 and caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "Request too large for the rate limit 'gamma-tpm'" in caught.value.message


def test_tollway_budgets_shows_spend_against_the_budget(env: Providers) -> None:
    admin = f"http://127.0.0.1:{env.stack.service_admin_port}"
    deadline = time.monotonic() + 5
    while True:  # spend reaches the counters in the background, every 0.2 s
        (row,) = httpx.get(admin + "/v1/budgets").json()["budgets"]
        if row["spent"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (row["budget"], row["member"], row["unit"], row["limit"]) == ("alpha-daily", "alpha", "usd", 200_000)
    assert row["spent"] > 0 and row["remaining"] == max(0, 200_000 - row["spent"] - row["held"])
    policy = env.stack.policy
    assert isinstance(policy, Path)
    shown = subprocess.run([sys.executable, "-m", "ext_proc.cli", "budgets", "--policy", str(policy), "--admin", admin],
                           capture_output=True, text=True, check=True).stdout
    assert "alpha-daily" in shown and "$0.2" in shown
    log = (env.stack.workdir / "tollway.log").read_text()
    assert "budget alpha-daily reached 50% of its usd limit for alpha" in log


# Two teams each with a key of id "ci" (ids are unique only within a team), and a model with an alias.
SEARCH_CI, ADS_CI = "tw-search-ci-key-0123456789abcdefghijklmnopqrst", "tw-ads-ci-key-0123456789abcdefghijklmnopqrstuvw"
ML = "tw-ml-key-0123456789abcdefghijklmnopqrstuvwxyzabcd"
NAMES_POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: L_OPENAI_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai}}
  gpt-4o: {{provider: openai, model: gpt-4o-2024-08-06, aliases: [gpt-4o-latest]}}
teams:
  search: {{keys: [{{id: ci, sha256: "{key_digest(SEARCH_CI)}"}}], models: ["*"]}}
  ads: {{keys: [{{id: ci, sha256: "{key_digest(ADS_CI)}"}}], models: ["*"]}}
  ml: {{keys: [{{id: ml-ci, sha256: "{key_digest(ML)}"}}], models: [gpt-4o-latest]}}
budgets:
  each-key-daily: {{key: "*", tokens: 10000000, period: day}}
rate_limits:
  each-key: {{key: "*", requests_per_minute: 3}}
  each-model: {{model: "*", requests_per_minute: 100}}
  latest-rpm: {{model: gpt-4o-latest, requests_per_minute: 2}}
"""


@pytest.fixture(scope="module")
def names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    with Providers.stack(tmp_path_factory.mktemp("limit-names"), NAMES_POLICY, {"L_OPENAI_KEY": OPENAI_KEY}) as stack:
        yield Providers(stack, SEARCH_CI)


def test_two_teams_keys_of_one_id_count_on_their_own(names: Providers) -> None:
    one_minute()
    search = client(names, SEARCH_CI)
    for _ in range(3):
        search.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as refused:
        search.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
    assert "Rate limit 'each-key' reached" in refused.value.message
    # ads' key "ci" is another key: search's use never refuses it.
    raw = client(names, ADS_CI).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    # Each key its own row, named with its team.
    admin = f"http://127.0.0.1:{names.stack.service_admin_port}"
    deadline = time.monotonic() + 5
    while True:  # spend reaches the counters in the background, every 0.2 s
        rows = httpx.get(admin + "/v1/budgets").json()["budgets"]
        if len(rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted((row["budget"], row["member"]) for row in rows) == [
        ("each-key-daily", "ci@ads"), ("each-key-daily", "ci@search")]


def test_a_limit_on_a_models_alias_counts_it_under_every_name_in_one_counter(names: Providers) -> None:
    one_minute()
    ml = client(names, ML)
    first = ml.chat.completions.with_raw_response.create(model="gpt-4o-latest", messages=HI)
    ml.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as refused:  # the public name is the same model: no way round
        ml.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
    assert "Rate limit 'latest-rpm' reached (2 requests per minute)" in refused.value.message
    # Asked by its alias, the model is counted once by a "*" limit, not once per name.
    record = names.record(first.headers["x-tollway-request-id"])
    assert [entry["limit"] for entry in record["limits"]] == ["each-key-daily", "each-key", "latest-rpm",
                                                             "each-model"]


# The policy's default output is small, and Claude's target gives none: a request without
# max_tokens is claimed for 100 output tokens. Team "paced" is under a requests-per-minute limit only.
PACED = "tw-paced-rpm-key-0123456789abcdefghijklmnopqrstuv"
DEFAULT_OUTPUT_POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: L_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: L_ANTHROPIC_KEY}}}}
models:
  gpt-5-nano: {{provider: openai, price: {{input: "1000", output: "1000"}}}}
  claude: {{provider: anthropic, model: claude-x, price: {{input: "1000", output: "1000"}}}}
teams:
  alpha: {{keys: [{{id: alpha-ci, sha256: "{key_digest(ALPHA)}"}}], models: ["*"]}}
  paced: {{keys: [{{id: paced-ci, sha256: "{key_digest(PACED)}"}}], models: ["*"]}}
budgets:
  alpha-daily: {{team: alpha, usd: "5.00", period: day}}
rate_limits:
  paced-rpm: {{team: paced, requests_per_minute: 100}}
shared_state: {{default_output_tokens: 100}}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    stack = Providers.stack(tmp_path_factory.mktemp("default-output"), DEFAULT_OUTPUT_POLICY,
                            {"L_OPENAI_KEY": OPENAI_KEY, "L_ANTHROPIC_KEY": ANTHROPIC_KEY},
                            mock_args=("--cassettes", str(CASSETTES)))
    with stack:
        yield Providers(stack, ALPHA)


def test_a_request_translated_to_claude_without_max_tokens_spends_no_more_than_its_claim(small: Providers) -> None:
    """Anthropic requires max_tokens: an OpenAI client that sets none is sent what its claim counts
    (default_output_tokens), so a long answer cannot spend past the claim, and a hard budget holds."""
    alpha = small.openai()
    long = {"x-mock-chunks": "600"}  # the fake provider writes 600 words unless max_tokens is smaller
    calls = [
        lambda: alpha.chat.completions.with_raw_response.create(model="claude", messages=HI, extra_headers=long),
        lambda: alpha.responses.with_raw_response.create(model="claude", input="hi", extra_headers=long),
    ]
    for call in calls:
        request_id = call().headers["x-tollway-request-id"]
        (sent,) = small.provider_saw(request_id)
        assert orjson.loads(sent["body"])["max_tokens"] == 100
        record = small.record(request_id)
        assert record["output_tokens"] <= 100
        (usd,) = [entry for entry in record["limits"] if entry["unit"] == "usd"]
        assert usd["used"] <= usd["claimed"]


def test_the_providers_rate_limit_headers_never_reach_the_client(small: Providers) -> None:
    """The recorded answer carries OpenAI's x-ratelimit-* for the shared key's organisation: they
    go. A caller under a rate limit sees Tollway's own (its requests per minute), one under none
    sees none."""
    recorded = {"x-mock-cassette": "chat-basic"}
    paced = client(small, PACED).chat.completions.with_raw_response.create(
        model="gpt-5-nano", messages=HI, extra_headers=recorded)
    assert {name for name in paced.headers if "ratelimit" in name} == {
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}
    assert paced.headers["x-ratelimit-limit-requests"] == "100"  # Tollway's, not OpenAI's 500
    unlimited = small.openai().chat.completions.with_raw_response.create(
        model="gpt-5-nano", messages=HI, extra_headers=recorded)
    assert unlimited.status_code == 200 and [name for name in unlimited.headers if "ratelimit" in name] == []


# Answers billed above their tokens at the input and output rates: 10 web searches ($0.10), a
# 1-hour cache write of the whole prompt (twice the input rate).
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
           "stop_sequence": None, "stop_reason": "end_turn", "content": [{"type": "text", "text": "Found."}]}
PREMIUM_ANSWERS = {
    "searched": {**MESSAGE, "usage": {"input_tokens": 8, "output_tokens": 16,
                                      "server_tool_use": {"web_search_requests": 10}}},
    "cached-1h": {**MESSAGE, "usage": {"input_tokens": 10, "output_tokens": 16, "cache_creation_input_tokens": 9000,
                                       "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                                          "ephemeral_1h_input_tokens": 9000}}},
}
PREMIUM_POLICY = f"""
apiVersion: tollway/v1
providers:
  anthropic: {{kind: anthropic, credential: {{env: L_ANTHROPIC_KEY}}}}
models:
  sonnet: {{provider: anthropic, model: claude-sonnet-4-5}}
teams:
  alpha: {{keys: [{{id: alpha-ci, sha256: "{key_digest(ALPHA)}"}}], models: ["*"]}}
budgets:
  alpha-daily: {{team: alpha, usd: "1.00", period: day}}
"""


def test_searches_and_cache_writes_are_claimed_so_a_hard_budget_holds(tmp_path: Path) -> None:
    """A hard budget's claim is what the request may be billed: its web searches (max_uses of them)
    and a 1-hour cache write of its prompt, not only its tokens at the input and output rates."""
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    for name, answer in PREMIUM_ANSWERS.items():
        (cassettes / f"{name}.yaml").write_text(yaml.safe_dump({"version": 2, "interactions": [{"id": 0, "request": {
            "url": "https://api.anthropic.com/v1/messages", "method": "POST", "body": "{}", "headers": {}},
            "response": {"code": 200, "headers": {"Content-Type": ["application/json"]},
                         "body": orjson.dumps(answer).decode()}}]}))
    stack = Providers.stack(tmp_path, PREMIUM_POLICY, {"L_ANTHROPIC_KEY": ANTHROPIC_KEY},
                            mock_args=("--cassettes", str(cassettes)))
    with stack:
        env = Providers(stack, ALPHA)
        claude = env.anthropic()
        searched = claude.messages.with_raw_response.create(
            model="sonnet", max_tokens=16, messages=HI, extra_headers={"x-mock-cassette": "searched"},
            tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 10}])
        cached = claude.messages.with_raw_response.create(
            model="sonnet", max_tokens=16, messages=HI, extra_headers={"x-mock-cassette": "cached-1h"},
            system=[{"type": "text", "text": "lorem " * 9000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        for raw, least in ((searched, 100_000), (cached, 9000 * 6)):
            record = env.record(raw.headers["x-tollway-request-id"])
            (usd,) = record["limits"]
            assert usd["used"] == record["cost_usd_micros"] >= least
            assert usd["used"] <= usd["claimed"]
