"""Budgets and rate limits in the session, as transcripts: claims, refusals, headers, settlement."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ext_proc.core.actions import Action, Ask, Continue, EmitRecord, Respond, Settle
from ext_proc.core.events import (
    Answered,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    StreamClosed,
    Upstream,
)
from ext_proc.core.limits import BUDGET_KEPT
from ext_proc.core.session import Session
from ext_proc.llm import apis, runtime
from ext_proc.llm.apis.openai import duration
from ext_proc.llm.usage import Usage
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import CompiledPolicy, key_digest, period_window
from ext_proc.server.accounting import ServiceAccountant
from ext_proc.state.queries import Admission, Admit, Claim, StoreUnavailable
from tests.unit.transcript import Record, Transcript

NOW = 1_796_000_000.0  # 2026-11-30T01:33:20Z (02:33 in Berlin, 15:33 in Kiritimati, the 29th in Los Angeles)
MINUTE = int(NOW // 60)
POLICY_TEXT = """
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
  anthropic: {kind: anthropic, credential: {env: ANTHROPIC_API_KEY}}
  local: {kind: openai-compatible, endpoint: "http://127.0.0.1:8000"}
models:
  gpt-4o-mini: {provider: openai, price: {input: "1.00", output: "2.00"}}
  claude: {provider: anthropic, model: claude-x, price: {input: "3", output: "15"}, max_output_tokens: 100}
  llama: {provider: local}
teams:
  search: {workloads: [search-app], models: ["*"]}
  support: {workloads: [support-app], models: ["*"]}
budgets:
  search-monthly: {team: search, usd: "1.00", tokens: 50000, period: month, timezone: Europe/Berlin}
rate_limits:
  per-team: {team: "*", requests_per_minute: 60, tokens_per_minute: 10000, concurrent: 2}
"""
POLICY = compile_policy(POLICY_TEXT)
BLOCKING = compile_policy(POLICY_TEXT + "guardrails: {rules: [{name: secrets, detectors: [credentials], "
                                        "action: block}]}\n")
ACCOUNTANT = ServiceAccountant()
HEAD = {":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "r1"}
BODY = {"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
HEAD_SENT = Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))


def session(workload: str = "search-app", policy: Any = POLICY) -> Session:
    return Session(policy, workload, ACCOUNTANT, runtime=runtime.fixed(now=NOW))


def prompt_tokens(body: dict[str, Any] = BODY, model: str = "gpt-4o-mini") -> int:
    estimate = ACCOUNTANT.count_request("openai.chat.completions", body, model)
    assert estimate is not None
    return estimate.tokens


def expected_claims(tokens: int, usd: int | None, team: str = "search") -> tuple[Claim, ...]:
    month, resets = period_window("month", "Europe/Berlin", NOW)
    minute_ends = (MINUTE + 1) * 60.0
    claims = []
    if team == "search":
        if usd is not None:
            claims.append(Claim(f"budget/search-monthly/usd/search/{month}", usd, 1_000_000, resets, kept=BUDGET_KEPT))
        claims.append(Claim(f"budget/search-monthly/tokens/search/{month}", tokens, 50_000, resets, kept=BUDGET_KEPT))
    claims += [
        Claim(f"rate/per-team/requests/{team}/{MINUTE}", 1, 60, minute_ends),
        Claim(f"rate/per-team/tokens/{team}/{MINUTE}", tokens, 10_000, minute_ends),
        Claim(f"rate/per-team/concurrent/{team}", 1, 2, 0.0, consumes=False),
    ]
    return tuple(claims)


def test_the_month_window_is_the_budgets_own_time_zone() -> None:
    assert period_window("month", "Europe/Berlin", NOW)[0] == "2026-11"
    assert period_window("month", "Pacific/Kiritimati", NOW)[0] == "2026-11"  # UTC+14: 15:33 on the 30th
    assert period_window("day", "Pacific/Kiritimati", NOW)[0] == "2026-11-30"
    assert period_window("day", "America/Los_Angeles", NOW)[0] == "2026-11-29"
    window, ends = period_window("month", "UTC", NOW)
    assert (window, ends) == ("2026-11", 1_796_083_200.0)  # 2026-12-01T00:00:00Z


def test_a_request_claims_its_estimate_then_settles_what_it_used() -> None:
    tokens = prompt_tokens() + 100
    usd = ACCOUNTANT.cost("openai", "gpt-4o-mini", (), _usage(prompt_tokens(), 100),
                          POLICY.models["gpt-4o-mini"].price)[0]
    claims = expected_claims(tokens, usd)
    answer = orjson.dumps({"model": "gpt-4o-mini", "choices": [],
                           "usage": {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}})
    transcript = (
        Transcript(session())
        >> RequestHeaders(HEAD, False, 1)
        << HEAD_SENT
        >> RequestBody(orjson.dumps(BODY), True, 2)
        << Ask(Admit(claims))
        >> Answered(Admission(True, remaining=(900_000, 49_000, 59, 9_000, 1)), 3)
    )
    sent = transcript.pending.pop(0)
    assert isinstance(sent, Continue) and sent.set_headers[0] == ("x-tollway-cluster", "openai")
    transcript.log.append("<< (the body's answer)")
    headers = ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 4)
    transcript >> headers
    assert transcript.pending.pop(0) == Continue()
    transcript >> ResponseBody(answer, True, 5)
    action = transcript.pending.pop(0)
    assert isinstance(action, Continue)
    told = dict(action.set_headers)
    # The tightest per-minute limits, in OpenAI's names, on the answer.
    assert (told["x-ratelimit-limit-requests"], told["x-ratelimit-remaining-requests"]) == ("60", "59")
    assert (told["x-ratelimit-limit-tokens"], told["x-ratelimit-remaining-tokens"]) == ("10000", "9000")
    assert told["x-ratelimit-reset-requests"] == f"{(MINUTE + 1) * 60 - NOW:.0f}s"
    cost = ACCOUNTANT.cost("openai", "gpt-4o-mini", (), _usage(8, 12), POLICY.models["gpt-4o-mini"].price)[0]
    assert (
        transcript
        << Settle(claims, (cost, 20, 1, 20, 0))  # the real cost and tokens; the slot only given back
        << Record(outcome="ok", limits=[
            {"limit": "search-monthly", "unit": "usd", "claimed": usd, "used": cost},
            {"limit": "search-monthly", "unit": "tokens", "claimed": tokens, "used": 20},
            {"limit": "per-team", "unit": "requests", "claimed": 1, "used": 1},
            {"limit": "per-team", "unit": "tokens", "claimed": tokens, "used": 20},
            {"limit": "per-team", "unit": "concurrent", "claimed": 1, "used": 0},
        ])
    )


def _usage(prompt: int, output: int) -> Usage:
    return Usage(input_tokens=prompt, output_tokens=output)


def test_a_spent_budget_is_a_429_naming_it_that_the_sdks_do_not_retry() -> None:
    transcript = (
        Transcript(session())
        >> RequestHeaders(HEAD, False, 1)
        << HEAD_SENT
        >> RequestBody(orjson.dumps(BODY), True, 2)
    )
    ask = transcript.pending.pop(0)
    assert isinstance(ask, Ask)
    transcript.log.append("<< Ask(...)")
    transcript >> Answered(Admission(False, refused=0, remaining=(0, 49_000, 59, 9_000, 1)), 3)
    refusal = transcript.pending.pop(0)
    assert isinstance(refusal, Respond) and refusal.status == 429
    headers = dict(refusal.headers)
    assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    error = orjson.loads(refusal.body)["error"]
    assert error == {"message": "The budget 'search-monthly' ($1.00) is spent, or what is left of it cannot cover "
                                "this request (up to $0.00021); it resets at 2026-11-30T23:00:00Z.",
                     "type": "rate_limit_exceeded", "param": None, "code": "budget_exceeded"}
    assert transcript << Record(outcome="rejected", status=429, error="budget_exceeded", limit="search-monthly")


def test_a_dearer_tier_asked_for_is_claimed_at_its_rates() -> None:
    """OpenAI's fast tier (priority's newer name) costs twice the standard rates, ultrafast three
    times: the claim is at them (claimed at standard rates, such a request overshot its budget)."""
    policy = compile_policy(POLICY_TEXT.replace("  llama: {provider: local}\n", "  llama: {provider: local}\n"
                                                "  astra: {provider: openai, model: gpt-6.2-astra}\n"))
    usd = {}
    for tier in (None, "priority", "fast", "ultrafast", "flex"):
        body = {"model": "astra", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}],
                **({"service_tier": tier} if tier else {})}
        s = Session(policy, "search-app", ACCOUNTANT, runtime=runtime.fixed(now=NOW))
        s.handle(RequestHeaders(HEAD, False, 1))
        ask = s.handle(RequestBody(orjson.dumps(body), True, 2))
        assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
        usd[tier] = next(c.amount for c in ask.query.claims if c.counter.startswith("budget/search-monthly/usd"))
    assert usd["priority"] == usd["fast"] and 1.99 * usd[None] <= usd["fast"] <= 2.01 * usd[None]
    assert 2.99 * usd[None] <= usd["ultrafast"] <= 3.01 * usd[None] and usd["flex"] == usd[None]


def test_a_request_larger_than_its_budget_is_told_so_not_that_the_budget_is_spent() -> None:
    """max_tokens 100,000 on a 50,000-token budget: no spending makes room for it, so the refusal
    says what to change, with amounts a small budget does not round to $0.00."""
    body = {**BODY, "max_tokens": 100_000}
    transcript = Transcript(session()) >> RequestHeaders(HEAD, False, 1) << HEAD_SENT >> RequestBody(
        orjson.dumps(body), True, 2)
    ask = transcript.pending.pop(0)
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    index = next(i for i, c in enumerate(ask.query.claims) if c.counter.startswith("budget/search-monthly/tokens"))
    transcript >> Answered(Admission(False, refused=index), 3)
    refusal = transcript.pending.pop(0)
    assert isinstance(refusal, Respond) and refusal.status == 429
    message = orjson.loads(refusal.body)["error"]["message"]
    assert message.startswith(f"This request may use up to {prompt_tokens(body) + 100_000:,} tokens") and \
        "more than the budget 'search-monthly' (50,000 tokens) holds in all: ask for less output" in message


def test_a_rate_limit_is_a_429_with_retry_after_in_the_anthropic_sdks_names() -> None:
    body = {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    transcript = (
        Transcript(session("support-app"))
        >> RequestHeaders({**HEAD, ":path": "/v1/messages"}, False, 1)
        << HEAD_SENT
        >> RequestBody(orjson.dumps(body), True, 2)
    )
    ask = transcript.pending.pop(0)
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    assert [c.counter.split("/")[2] for c in ask.query.claims] == ["requests", "tokens", "concurrent"]
    transcript.log.append("<< Ask(...)")
    transcript >> Answered(Admission(False, refused=0, remaining=(0, 9_000, 1)), 3)
    refusal = transcript.pending.pop(0)
    assert isinstance(refusal, Respond) and refusal.status == 429
    headers = dict(refusal.headers)
    wait = int((MINUTE + 1) * 60 - NOW + 0.999)
    assert headers["retry-after"] == str(wait)
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    message = f"Rate limit 'per-team' reached (60 requests per minute); retry in {wait} s."
    assert orjson.loads(refusal.body) == {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    assert transcript << Record(outcome="rejected", status=429, error="rate_limit_exceeded", team="support")


def test_a_model_without_a_price_makes_no_usd_claim() -> None:
    body = {**BODY, "model": "llama"}
    transcript = Transcript(session()) >> RequestHeaders(HEAD, False, 1) << HEAD_SENT >> RequestBody(
        orjson.dumps(body), True, 2)
    ask = transcript.pending.pop(0)
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    units = [c.counter.split("/")[2] for c in ask.query.claims]
    assert units == ["tokens", "requests", "tokens", "concurrent"]  # no "usd"


def test_without_max_tokens_the_claim_uses_the_models_limit_or_the_default() -> None:
    for model, output in (("claude", 100), ("gpt-4o-mini", 4096)):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        transcript = Transcript(session()) >> RequestHeaders(HEAD, False, 1) << HEAD_SENT >> RequestBody(
            orjson.dumps(body), True, 2)
        ask = transcript.pending.pop(0)
        assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
        tokens = next(c for c in ask.query.claims if c.counter.startswith("budget/search-monthly/tokens"))
        assert tokens.amount == prompt_tokens(body, model if model != "claude" else "claude-x") + output


# default_output_tokens set, and a Claude target without max_output_tokens (alone, and after one with a limit).
DEFAULT_OUTPUT_TEXT = POLICY_TEXT.replace(
    "  llama: {provider: local}", "  llama: {provider: local}\n  sonnet: {provider: anthropic, model: claude-s}",
) + "shared_state: {default_output_tokens: 300}\n" \
    "routing: {aliases: {both: {targets: [{provider: anthropic, model: claude-x, max_output_tokens: 100}," \
    " {provider: anthropic, model: claude-s}]}}}\n"
DEFAULT_OUTPUT = compile_policy(DEFAULT_OUTPUT_TEXT)


def _output_claimed(head: dict[str, str], body: dict[str, Any], output: int,
                    policy: CompiledPolicy = DEFAULT_OUTPUT) -> Transcript:
    """The request through ``policy`` up to its admission, whose tokens budget claims the counted
    prompt and ``output`` tokens; the transcript waits for the answer."""
    transcript = Transcript(session(policy=policy)) >> RequestHeaders(head, False, 1)
    transcript.pending.clear()
    transcript >> RequestBody(orjson.dumps(body), True, 2)
    ask = transcript.pending.pop(0)
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    tokens = next(c for c in ask.query.claims if c.counter.startswith("budget/search-monthly/tokens"))
    estimate = transcript.session.meter.estimate
    assert estimate is not None and tokens.amount == estimate.tokens + output
    return transcript


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/responses", {"model": "sonnet", "input": "hi"}),
])
def test_a_request_translated_to_anthropic_is_sent_the_output_it_was_claimed_for(path: str,
                                                                                  body: dict[str, Any]) -> None:
    """Anthropic requires max_tokens: an OpenAI client that sets none is sent the policy's
    default_output_tokens, the output its claim counts, so it cannot spend past the claim."""
    transcript = _output_claimed({**HEAD, ":path": path}, body, 300)
    transcript >> Answered(Admission(True, remaining=(900_000, 49_000, 59, 9_000, 1)), 3)
    sent = transcript.pending.pop(0)
    assert isinstance(sent, Continue) and sent.body is not None
    assert orjson.loads(sent.body)["max_tokens"] == 300


def test_a_default_larger_than_every_claude_takes_is_claimed_but_not_sent() -> None:
    """default_output_tokens 16,384 and a Claude model whose limit the policy does not give: the
    claim counts 16,384, the request is sent 4,096 (which every Claude model takes; more, and the
    API refuses the request), so it still cannot spend past its claim."""
    policy = compile_policy(DEFAULT_OUTPUT_TEXT.replace("default_output_tokens: 300", "default_output_tokens: 16384"))
    body = {"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]}
    transcript = _output_claimed(HEAD, body, 16384, policy)
    transcript >> Answered(Admission(True, remaining=(900_000, 49_000, 59, 9_000, 1)), 3)
    sent = transcript.pending.pop(0)
    assert isinstance(sent, Continue) and sent.body is not None
    assert orjson.loads(sent.body)["max_tokens"] == 4096


def test_a_chain_claims_the_most_output_any_of_its_targets_may_be_sent() -> None:
    """The first target's max_output_tokens is 100, the second has none (the policy's 300): a
    fallback to the second is sent max_tokens 300, so the claim holds 300."""
    body = {"model": "both", "messages": [{"role": "user", "content": "hi"}]}
    _output_claimed(HEAD, body, 300)
    assert [t.output_tokens for t in DEFAULT_OUTPUT.aliases["both"].plan.targets] == [100, 300]


def test_n_answers_claim_n_outputs() -> None:
    """OpenAI bills every one of the n answers (and the completions API's best_of): the claim holds
    n times the output the request allows, so a budget is not overshot n-fold."""
    amounts = []
    for n in (1, 8):
        body = {**BODY, "n": n}
        transcript = Transcript(session()) >> RequestHeaders(HEAD, False, 1) << HEAD_SENT >> RequestBody(
            orjson.dumps(body), True, 2)
        ask = transcript.pending.pop(0)
        assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
        tokens = next(c for c in ask.query.claims if c.counter.startswith("budget/search-monthly/tokens"))
        amounts.append(tokens.amount - prompt_tokens(body))
    assert amounts == [100, 800]


def test_a_token_count_sent_to_the_provider_counts_as_a_request_and_spends_nothing() -> None:
    """count_tokens forwarded to Anthropic is free (no budget, no tokens) but is a request under
    the shared key: a team's requests per minute and concurrency count it; settled, the slot back."""
    head = {**HEAD, ":path": "/v1/messages/count_tokens"}
    body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
    transcript = Transcript(session()) >> RequestHeaders(head, False, 1)
    transcript.pending.clear()
    transcript >> RequestBody(orjson.dumps(body), True, 2)
    ask = transcript.pending.pop(0)
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    minute_ends = (MINUTE + 1) * 60.0
    assert ask.query.claims == (Claim(f"rate/per-team/requests/search/{MINUTE}", 1, 60, minute_ends),
                                Claim("rate/per-team/concurrent/search", 1, 2, 0.0, consumes=False))
    transcript >> Answered(Admission(False, refused=0), 3)
    refused = transcript.pending.pop(0)
    assert isinstance(refused, Respond) and refused.status == 429


def test_a_list_of_prompts_claims_an_answer_per_prompt() -> None:
    """Legacy completions answer each prompt of a list (strings or token arrays) with n (best_of)
    answers: 50 prompts at max_tokens 100 may use 5,000 output tokens, not 100."""
    api = apis.COMPLETIONS
    assert api.answers({"prompt": ["hi"] * 50, "max_tokens": 100}) == 50
    assert api.answers({"prompt": [[1, 2], [3]], "best_of": 3, "n": 2}) == 6
    assert api.answers({"prompt": [1, 2, 3]}) == 1  # one prompt as a token array
    assert api.answers({"prompt": "hi", "n": 4}) == 4 and api.answers({"prompt": []}) == 1
    assert apis.CHAT_COMPLETIONS.answers({"prompt": ["a", "b"], "n": 2}) == 2  # chat has no prompt list


@pytest.mark.parametrize(("ending", "used"), [
    ("provider error", (0, 0, 1, 0, 0)),  # a provider's error is not billed
    ("client left", None),  # a stream cut by the client: its estimated usage
    ("answer blocked", None),  # a guardrail withheld the answer the provider billed: what it used
])
def test_failures_settle_what_was_used_and_give_the_rest_back(ending: str, used: tuple[int, ...] | None) -> None:
    s = session(policy=BLOCKING if ending == "answer blocked" else POLICY)
    s.handle(RequestHeaders(HEAD, False, 1))
    ask = s.handle(RequestBody(orjson.dumps({**BODY, "stream": ending == "client left"}), True, 2))
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    s.handle(Answered(Admission(True, remaining=(1, 1, 1, 1, 1)), 3))
    if ending == "provider error":
        s.handle(ResponseHeaders({":status": "500", "content-type": "application/json"}, False, 4))
        s.handle(ResponseBody(b'{"error": {"message": "boom", "type": "server_error"}}', True, 5))
    elif ending == "answer blocked":
        s.handle(ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 4))
        s.handle(ResponseBody(orjson.dumps({"model": "gpt-4o-mini", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Use AKIAZ7QW3ERTY5UIOP2A"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}}), True, 5))
        record = next(e.record for e in s.effects if isinstance(e, EmitRecord))
        assert record["outcome"] == "blocked"
        (settle,) = [e for e in s.effects if isinstance(e, Settle)]
        assert settle.used[1:] == (20, 1, 20, 0) and settle.used[0] == record["cost_usd_micros"] > 0
        return
    else:
        s.handle(ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, 4))
        chunk = b'data: {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "one two"}}]}\n\n'
        s.handle(ResponseBody(chunk, False, 5))
        s.handle(StreamClosed(6))
    (settle,) = [e for e in s.effects if isinstance(e, Settle)]
    if used is not None:
        assert settle.used == used
    else:
        record = next(e.record for e in s.effects if isinstance(e, EmitRecord))
        assert record["input_estimated"] and record["output_estimated"]
        tokens = record["input_tokens"] + record["output_tokens"]
        assert settle.used[1] == tokens and settle.used[2] == 1 and settle.used[4] == 0
        assert settle.used[0] == record["cost_usd_micros"]


def test_a_store_that_does_not_answer_is_a_503_when_the_policy_fails_closed() -> None:
    s = session()
    s.handle(RequestHeaders(HEAD, False, 1))
    assert isinstance(s.handle(RequestBody(orjson.dumps(BODY), True, 2)), Ask)
    refusal = s.handle(Answered(StoreUnavailable("down"), 3))
    assert isinstance(refusal, Respond) and refusal.status == 503
    assert dict(refusal.headers)["retry-after"] == "1"
    assert orjson.loads(refusal.body)["error"]["code"] == "state_unavailable"
    assert not [e for e in s.effects if isinstance(e, Settle)]  # nothing was held


def test_no_limits_no_question() -> None:
    policy = compile_policy("""
apiVersion: tollway/v1
providers: {openai: {kind: openai}}
models: {gpt-4o-mini: {provider: openai}}
teams: {t: {workloads: [w], models: ["*"]}}
""")
    s = Session(policy, "w", ACCOUNTANT)
    s.handle(RequestHeaders(HEAD, False, 1))
    assert isinstance(s.handle(RequestBody(orjson.dumps(BODY), True, 2)), Continue)


@pytest.mark.parametrize(("seconds", "told"), [
    (0, "0ms"), (0.0004, "1ms"), (0.07, "70ms"), (0.9999, "1s"), (1.4, "1.4s"), (8.64, "8.64s"),
    (59.9999, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s"), (3600.25, "1h0m0.25s"),
])
def test_openai_reset_headers_tell_the_wait_to_the_millisecond_never_earlier(seconds: float, told: str) -> None:
    # Go's duration form, as OpenAI writes x-ratelimit-reset-*; a 1.4 s wait rounded to "1s" told
    # the client to come back before retry-after (which rounds up) said.
    assert duration(seconds) == told


NAMES = compile_policy(f"""
apiVersion: tollway/v1
providers: {{openai: {{kind: openai}}}}
models: {{gpt-4o: {{provider: openai, aliases: [gpt-4o-latest]}}}}
teams:
  search: {{keys: [{{id: ci, sha256: "{key_digest('tw-search-ci')}"}}], models: [gpt-4o-latest]}}
  ads: {{keys: [{{id: ci, sha256: "{key_digest('tw-ads-ci')}"}}], models: ["*"]}}
rate_limits:
  each-key: {{key: "*", requests_per_minute: 3}}
  each-model: {{model: "*", requests_per_minute: 10}}
  latest: {{model: gpt-4o-latest, requests_per_minute: 2}}
""")


def counters(key: str, model: str) -> list[str]:
    """The counters a request of ``key`` for ``model`` claims."""
    s = Session(NAMES, None, ACCOUNTANT, runtime=runtime.fixed(now=NOW))
    s.handle(RequestHeaders({**HEAD, "authorization": f"Bearer {key}"}, False, 1))
    ask = s.handle(RequestBody(orjson.dumps({**BODY, "model": model}), True, 2))
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    return [claim.counter for claim in ask.query.claims]


def test_a_key_counts_with_its_team_and_a_model_in_one_counter_whatever_it_was_called() -> None:
    # The limit on the alias keeps the alias's counter (the spend of the window is in it); "*" counts
    # under the public name.
    expected = [f"rate/each-key/requests/ci@search/{MINUTE}", f"rate/latest/requests/gpt-4o-latest/{MINUTE}",
                f"rate/each-model/requests/gpt-4o/{MINUTE}"]
    # One model, one counter and one claim of each limit, by its alias or its public name.
    assert counters("tw-search-ci", "gpt-4o-latest") == counters("tw-search-ci", "gpt-4o") == expected
    # Another team's key of the same id: a counter of its own.
    assert counters("tw-ads-ci", "gpt-4o")[0] == f"rate/each-key/requests/ci@ads/{MINUTE}"


# What OpenAI sends on every answer: the limits of the organisation the shared key belongs to.
OPENAI_LIMITS = {
    "x-ratelimit-limit-requests": "3000", "x-ratelimit-limit-tokens": "250000",
    "x-ratelimit-remaining-requests": "2999", "x-ratelimit-remaining-tokens": "249977",
    "x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "5ms",
    "x-ratelimit-limit-project-tokens": "250000", "x-ratelimit-remaining-project-tokens": "249977",
}
ANTHROPIC_LIMITS = {
    "anthropic-ratelimit-requests-limit": "4000", "anthropic-ratelimit-input-tokens-remaining": "399000",
    "anthropic-ratelimit-unified-status": "allowed", "anthropic-priority-input-tokens-limit": "10000",
}


def answered(policy: Any, workload: str, body: dict[str, Any], head: dict[str, str], stream: bool = False,
             usage_headers: bool = False) -> Action:
    """The answer to a 200's head (its body's, for a buffered answer) carrying the providers' rate-limit headers."""
    s = Session(policy, workload, ACCOUNTANT, usage_headers, runtime=runtime.fixed(now=NOW))
    s.handle(RequestHeaders(HEAD, False, 1))
    action = s.handle(RequestBody(orjson.dumps(body), True, 2))
    if isinstance(action, Ask):
        assert isinstance(action.query, Admit)
        s.handle(Answered(Admission(True, remaining=(900_000, 49_000, 59, 9_000, 1)[-len(action.query.claims):]), 3))
    kind = "text/event-stream" if stream else "application/json"
    action = s.handle(ResponseHeaders({**head, ":status": head.get(":status", "200"), "content-type": kind}, False, 4))
    if stream:
        return action
    assert action == Continue()  # buffered: the head waits for the body
    status = int(head.get(":status", "200"))
    answer = {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}} \
        if status == 200 else {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}}
    return s.handle(ResponseBody(orjson.dumps(answer), True, 5))


def test_the_providers_rate_limit_headers_give_way_to_tollways_own() -> None:
    """The provider's x-ratelimit-* tell the shared key's organisation (every team's traffic): they go;
    the caller's own limits, under the same names, are Tollway's and stay."""
    action = answered(POLICY, "search-app", BODY, {**OPENAI_LIMITS, **ANTHROPIC_LIMITS})
    assert isinstance(action, Continue)
    told = dict(action.set_headers)
    assert (told["x-ratelimit-limit-requests"], told["x-ratelimit-remaining-requests"]) == ("60", "59")
    assert (told["x-ratelimit-limit-tokens"], told["x-ratelimit-remaining-tokens"]) == ("10000", "9000")
    ours = {name for name in told if "ratelimit" in name}
    assert len(ours) == 6 and not ours & set(action.remove_headers)  # Tollway's own are never removed
    assert set(action.remove_headers) == set(OPENAI_LIMITS) - ours | set(ANTHROPIC_LIMITS)


def test_a_caller_under_no_rate_limit_sees_none_of_the_providers() -> None:
    policy = compile_policy("""
apiVersion: tollway/v1
providers: {openai: {kind: openai}}
models: {gpt-4o-mini: {provider: openai}}
teams: {t: {workloads: [w], models: ["*"]}}
""")
    for stream in (False, True):
        action = answered(policy, "w", {**BODY, "stream": stream}, OPENAI_LIMITS, stream=stream)
        assert isinstance(action, Continue) and set(action.remove_headers) == set(OPENAI_LIMITS)
        assert not [name for name, _ in action.set_headers if "ratelimit" in name]


@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("status", ["200", "429"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_providers_own_tollway_headers_never_reach_the_client(stream: bool, status: str, usage: bool) -> None:
    """x-tollway-* headers are Tollway's to say: a provider's (or a proxy's before it) reached the
    client wherever Tollway set none of its own (x-tollway-cost-usd for a model without a price, any
    of them on a stream or an error). The request id Envoy puts on the answer stays."""
    sent = {"x-tollway-cost-usd": "0.000000", "x-tollway-provider": "spoofed", "x-tollway-input-tokens": "0",
            "x-tollway-output-tokens": "0", "x-tollway-whatever": "1", "x-tollway-request-id": "r1",
            "x-other": "kept"}
    action = answered(POLICY, "search-app", {**BODY, "stream": stream}, {":status": status, **sent},
                      stream=stream and status == "200", usage_headers=usage)
    assert isinstance(action, Continue)
    told = dict(action.set_headers)
    assert told["x-tollway-provider"] == "openai"  # Tollway's own, set over the provider's
    assert not set(told) & set(action.remove_headers)
    if usage and status == "200" and not stream:  # Tollway's usage and cost, over the provider's
        assert (told["x-tollway-input-tokens"], told["x-tollway-cost-usd"]) != ("0", "0.000000")
    else:
        assert "x-tollway-cost-usd" not in told
    theirs = {name for name in sent if name.startswith("x-tollway-")} - {"x-tollway-request-id"}
    assert {name for name in action.remove_headers if name.startswith("x-tollway-")} == theirs - set(told)
    assert "x-tollway-request-id" not in action.remove_headers and "x-other" not in action.remove_headers


def test_a_providers_429_passed_through_keeps_its_retry_after() -> None:
    action = answered(POLICY, "support-app", BODY, {":status": "429", "retry-after": "20", **OPENAI_LIMITS})
    assert isinstance(action, Continue)
    assert "retry-after" not in action.remove_headers and "retry-after" not in dict(action.set_headers)
    assert set(action.remove_headers) == {name for name in OPENAI_LIMITS if "project" in name}
    assert dict(action.set_headers)["x-ratelimit-limit-requests"] == "60"  # Tollway's own


PREMIUM_POLICY = compile_policy(POLICY_TEXT.replace("  llama: {provider: local}\n", "  llama: {provider: local}\n"
                                                    "  sonnet45: {provider: anthropic, model: claude-sonnet-4-5}\n"
                                                    "  gpt-audio: {provider: openai}\n"))
MESSAGES_HEAD = {**HEAD, ":path": "/v1/messages"}
BIG = "lorem " * 3000


def _usd_claimed(head: dict[str, str], body: dict[str, Any]) -> int:
    s = Session(PREMIUM_POLICY, "search-app", ACCOUNTANT, runtime=runtime.fixed(now=NOW))
    s.handle(RequestHeaders(head, False, 1))
    ask = s.handle(RequestBody(orjson.dumps(body), True, 2))
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    return next(c.amount for c in ask.query.claims if c.counter.startswith("budget/search-monthly/usd"))


def _billed(kind: str, model: str, api: str, body: dict[str, Any], output: int, **usage: int) -> int:
    """What settlement charges for the request's counted prompt, ``output`` tokens and ``usage``."""
    estimate = ACCOUNTANT.count_request(api, body, model)
    assert estimate is not None
    prompt = estimate.tokens
    fields = {key: prompt if value == -1 else value for key, value in usage.items()}
    cost = ACCOUNTANT.cost(kind, model, (), Usage(input_tokens=prompt, output_tokens=output, **fields), None)[0]
    assert cost is not None
    return cost


@pytest.mark.parametrize(("ttl", "rate"), [(None, 1.25), ({"ttl": "5m"}, 1.25), ({"ttl": "1h"}, 2.0)])
def test_a_prompt_asking_for_the_cache_is_claimed_at_the_write_rate_it_may_be_billed(
        ttl: dict[str, str] | None, rate: float) -> None:
    """A cache_control block may write the whole prompt to the cache, billed at 1.25 times the input
    rate (5 minutes) or twice it (1 hour): the claim holds that (claimed at the input rate, a 1-hour
    write of a long system prompt overshot its hard budget nearly twofold)."""
    plain = {"model": "sonnet45", "max_tokens": 16, "system": [{"type": "text", "text": BIG}],
             "messages": [{"role": "user", "content": "hi"}]}
    cached = {**plain, "system": [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral", **(ttl or {})}}]}
    hour = -1 if ttl == {"ttl": "1h"} else 0
    billed = _billed("anthropic", "claude-sonnet-4-5", "anthropic.messages", cached, 16, cache_write_tokens=-1,
                     cache_write_1h_tokens=hour)
    claimed, before = _usd_claimed(MESSAGES_HEAD, cached), _usd_claimed(MESSAGES_HEAD, plain)
    assert claimed >= billed and claimed > 1.2 * before
    assert (claimed - 16 * 15) == pytest.approx((before - 16 * 15) * rate, rel=0.001)
    # The top-level (automatic) cache_control and a mark on a message block count the same way.
    for body in ({**plain, "cache_control": {"type": "ephemeral", **(ttl or {})}},
                 {**plain, "messages": [{"role": "user", "content": [
                     {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", **(ttl or {})}}]}]}):
        assert _usd_claimed(MESSAGES_HEAD, body) == pytest.approx(claimed, rel=0.001)


def test_web_search_tools_claim_the_fee_of_every_search_they_allow() -> None:
    """Anthropic bills $10 per 1,000 web searches: a web search tool claims max_uses searches, or
    DEFAULT_WEB_SEARCHES without it (claimed at its tokens alone, 10 searches overshot a budget 75-fold)."""
    from ext_proc.core.limits import DEFAULT_WEB_SEARCHES

    plain = {"model": "sonnet45", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    before = _usd_claimed(MESSAGES_HEAD, plain)
    search = {"type": "web_search_20250305", "name": "web_search"}
    fetch = {"type": "web_fetch_20250910", "name": "web_fetch"}  # billed as tokens only
    function = {"name": "f", "input_schema": {"type": "object"}}
    for tools, searches in (([{**search, "max_uses": 3}], 3), ([search, function, fetch], DEFAULT_WEB_SEARCHES),
                            ([{**search, "max_uses": 0}], 0), ([function], 0)):
        body = {**plain, "tools": tools}
        with_tools = _usd_claimed(MESSAGES_HEAD, {**body, "tools": [t for t in tools if t is not search and
                                                                    t.get("type") != "web_search_20250305"]})
        claimed = _usd_claimed(MESSAGES_HEAD, body)
        billed = _billed("anthropic", "claude-sonnet-4-5", "anthropic.messages", body, 16, web_searches=searches)
        assert claimed >= billed
        assert claimed - with_tools >= searches * 10_000 and claimed - with_tools < searches * 10_000 + 2_000
    assert before == _usd_claimed(MESSAGES_HEAD, {**plain, "tools": []})


def test_an_audio_answer_is_claimed_at_the_audio_output_rate_and_audio_in_at_its_own() -> None:
    """gpt-audio bills audio out at $64 per million tokens, text at $10: a request asking for audio
    claims its output at the audio rate (claimed at the text rate, it overshot six-fold), one with
    an input_audio part that part's tokens at the audio input rate ($32 against $2.50), the rest of
    its prompt at the input rate (the whole prompt at the audio rate claimed a long conversation
    with a second of audio twelve times what it could cost)."""
    plain = {"model": "gpt-audio", "max_completion_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    audio = {**plain, "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    billed = _billed("openai", "gpt-audio", "openai.chat.completions", audio, 1000, output_audio_tokens=1000)
    claimed, before = _usd_claimed(HEAD, audio), _usd_claimed(HEAD, plain)
    assert claimed >= billed and claimed > 6 * before
    assert _usd_claimed(HEAD, {**plain, "modalities": ["text"]}) == before
    heard = {**plain, "messages": [{"role": "user", "content": [
        {"type": "text", "text": BIG}, {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]}
    text = {**plain, "messages": [{"role": "user", "content": [{"type": "text", "text": BIG}]}]}
    estimate = ACCOUNTANT.count_request("openai.chat.completions", heard, "gpt-audio")
    assert estimate is not None and 0 < estimate.audio < estimate.tokens // 100
    billed = _billed("openai", "gpt-audio", "openai.chat.completions", heard, 1000, input_audio_tokens=estimate.audio)
    claimed = _usd_claimed(HEAD, heard)
    exact = (estimate.tokens - estimate.audio) * 2.5 + estimate.audio * 32 + 1000 * 10  # micro-dollars
    assert claimed >= billed and claimed == pytest.approx(exact, abs=1)
    assert claimed < 1.05 * _usd_claimed(HEAD, text)


# -- tries abandoned at the first-byte timeout -----------------------------------------------------
TIMED_OUT = orjson.dumps({"error": {"message": "Tollway gateway error (upstream_per_try_idle_timeout): upstream "
                                               "request timeout", "type": "server_error", "param": None,
                                    "code": "upstream_per_try_idle_timeout"}})
CHAIN = compile_policy(POLICY_TEXT.replace(
    "  llama: {provider: local}\n",
    "  llama: {provider: local}\n"
    "  cheap: {provider: anthropic, model: claude-c, price: {input: \"1\", output: \"5\"}}\n",
) + "routing: {aliases: {pair: {targets: [{provider: anthropic, model: claude-x}, "
    "{provider: anthropic, model: claude-c}]}}}\n")


def _admitted(policy: Any, head: dict[str, str], body: dict[str, Any]) -> tuple[Session, tuple[Claim, ...]]:
    s = session(policy=policy)
    s.handle(RequestHeaders(head, False, 1))
    ask = s.handle(RequestBody(orjson.dumps(body), True, 2))
    assert isinstance(ask, Ask) and isinstance(ask.query, Admit)
    s.handle(Answered(Admission(True, remaining=(1,) * len(ask.query.claims)), 3))
    return s, ask.query.claims


def test_a_try_abandoned_at_the_first_byte_timeout_is_charged_its_claim() -> None:
    """Envoy gave up on the provider's first byte (a 504): the provider got the request and may
    finish and bill it, as one whose client left before the answer's head, so it is charged its
    whole claim, not nothing as a provider's error answer is."""
    s, claims = _admitted(POLICY, HEAD, BODY)
    s.handle(ResponseHeaders({":status": "504", "content-type": "application/json"}, False, 4, Upstream(attempts=1)))
    s.handle(ResponseBody(TIMED_OUT, True, 5))
    record = next(e.record for e in s.effects if isinstance(e, EmitRecord))
    assert (record["error"], record["abandoned_tries"]) == ("upstream_per_try_idle_timeout", 1)
    (settle,) = [e for e in s.effects if isinstance(e, Settle)]
    assert settle.used == (claims[0].amount, claims[1].amount, 1, claims[3].amount, 0)
    assert [(d["claimed"], d["used"]) for d in record["limits"]][:2] == [(c.amount,) * 2 for c in claims[:2]]


def _pair_admitted() -> tuple[Session, tuple[Claim, ...], int]:
    """A request to the chain ``pair`` (at most 50 output tokens) admitted: the session, its claims
    and its counted prompt."""
    body = {"model": "pair", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    s, claims = _admitted(CHAIN, MESSAGES_HEAD, body)
    estimate = s.flow.meter.estimate
    assert estimate is not None
    return s, claims, estimate.tokens


def test_a_chain_is_charged_what_served_it_and_the_claim_of_each_try_it_abandoned() -> None:
    """The first target (claude-x: at most 100 output tokens, $3/$15) was abandoned at its
    first-byte timeout, the second (claude-c, $1/$5) served: the request settles the second's
    usage plus the first's claim, priced at the first's rates."""
    s, claims, prompt = _pair_admitted()
    s.handle(ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 4,
                             Upstream(slot=1, attempts=2, abandoned="anthropic claude-x")))
    s.handle(ResponseBody(orjson.dumps({"type": "message", "model": "claude-c", "role": "assistant", "content": [],
                                        "usage": {"input_tokens": 8, "output_tokens": 12}}), True, 5))
    record = next(e.record for e in s.effects if isinstance(e, EmitRecord))
    assert record["abandoned"] == [{"provider": "anthropic", "model": "claude-x", "input_tokens": prompt}]
    served = record["cost_usd_micros"]
    first = CHAIN.aliases["pair"].plan.targets[0]
    abandoned = ACCOUNTANT.estimate_cost("anthropic", "claude-x", ("pair",), first.price, prompt, 50, None, None, None)
    assert served and abandoned and abandoned == claims[0].amount  # the claim: the dearest target's
    (settle,) = [e for e in s.effects if isinstance(e, Settle)]
    assert settle.used == (served + abandoned, 20 + prompt + 50, 1, 20 + prompt + 50, 0)


def test_every_try_of_a_chain_abandoned_is_charged_each_at_its_targets_price() -> None:
    """Both targets abandoned (Envoy's 504 after the second): two claims, each at its own rates,
    more than the one claimed: what a chain's abandoned tries can pass a budget by."""
    s, claims, prompt = _pair_admitted()
    s.handle(ResponseHeaders({":status": "504", "content-type": "application/json"}, False, 4,
                             Upstream(slot=1, attempts=2, abandoned="anthropic claude-x")))
    s.handle(ResponseBody(TIMED_OUT, True, 5))
    record = next(e.record for e in s.effects if isinstance(e, EmitRecord))
    assert record["abandoned_tries"] == 2
    targets = CHAIN.aliases["pair"].plan.targets
    costs = [ACCOUNTANT.estimate_cost("anthropic", t.upstream_model, ("pair",), t.price, prompt, 50, None, None, None)
             for t in targets]
    (settle,) = [e for e in s.effects if isinstance(e, Settle)]
    assert settle.used == (sum(costs), 2 * (prompt + 50), 1, 2 * (prompt + 50), 0)
    assert settle.used[0] > claims[0].amount and record["limits"][0]["used"] == sum(costs)
