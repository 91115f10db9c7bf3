"""Budgets and rate limits in the request: what a request claims, and what it settles.

Theory of operation. After routing (the prompt is counted and the targets are known) the
:class:`Limits` step finds every budget and rate limit of the policy that counts this request
(its team, its key, the model it asked for) and turns each into claims on counters
(:class:`~ext_proc.state.queries.Claim`), one per unit and window. A counter is named after the
limit, the unit, the *member* and the window: a key counts as its id with its team (a key id is
unique only within a team), a model under its public name whichever of its names was asked for
(a routing alias under its own name), except in a limit written on one of the model's aliases,
whose counter keeps the alias's name while every name of the model counts into it:

- a budget in USD claims the request's estimated cost: the counted prompt plus the output it
  allows (``max_tokens`` and kin, else the most a target of its chain allows, the target's
  ``output_tokens``: its ``max_output_tokens``, else the policy's
  ``shared_state.default_output_tokens``, the number a translation to Anthropic sends as its
  required ``max_tokens``), priced at the dearest target it may be served by, at the dearest
  rates what it asks for may be billed at (:func:`_premiums`: cache writes, audio, web searches). A
  model with no price (or a zero one) makes no USD claim: it is never blocked by a USD budget,
  and its record says the cost was unknown. A budget in tokens claims prompt + output tokens.
  The window is the day or calendar month in the budget's time zone; the store keeps a finished
  period's counter 40 days (last month's spend), a finished minute's a few minutes.
- a rate limit claims one request and the same tokens in the current calendar minute (UTC), and
  one slot of its concurrency cap while the request is in flight. A free request the provider
  answers (``count_tokens`` forwarded to Anthropic) claims only the request and the slot.

It asks shared state to hold them all (ask and continue: the request waits for the answer only
when this worker's leases do not cover it; see :mod:`ext_proc.state.limits`). A refusal is a 429
in the client's format: over a rate limit with ``retry-after`` and the rate-limit headers; a
spent budget names the budget and when it resets, with ``x-should-retry: false`` so the SDKs do
not retry it in a loop, as is a request larger than a whole budget or a whole minute's tokens
(no waiting lets it through). A store that does not answer is a 503 unless the policy fails open.

When the request ends, :func:`settlement` says what it really used (the record's cost and
tokens; nothing for a provider error; the claim itself when usage stayed unknown; and the claim,
at its own target, of each try abandoned at the first-byte timeout, which the provider may bill), as a
:class:`~ext_proc.core.actions.Settle` effect the server carries out.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from typing import Any

from ext_proc.core.actions import Ask, Settle
from ext_proc.core.flow import Flow
from ext_proc.core.steps import Step
from ext_proc.llm.apis import RateWindow
from ext_proc.llm.errors import ClientError
from ext_proc.llm.prices import Premiums, dollars
from ext_proc.policy.compiled import Alias, Budget, Target, budget_counter, period_window
from ext_proc.state.queries import Admission, Admit, Claim, StoreUnavailable

BUDGET_KEPT = 40 * 86400  # seconds a budget's finished period stays in the store (last month's spend)


class Limits(Step):
    """The budget and rate-limit admission step; see the module docstring."""

    __slots__ = ()
    name = "limits"

    def body(self, flow: Flow) -> Ask | None:
        policy, principal = flow.policy, flow.principal
        if policy is None or not policy.limits or principal is None or flow.api is None:
            return None
        # A free request that reaches the provider (count_tokens forwarded to Anthropic) spends no
        # budget nor tokens, but is a request under the shared key: requests per minute and
        # concurrency count it.
        billed = flow.api.billed
        granted = flow.granted
        model = (granted.name if isinstance(granted, Alias) else granted.public) if granted is not None else None
        applying = policy.limits.applying(principal.team, principal.key_id, model)
        if not applying:
            return None
        now = flow.runtime.now()
        tokens = _tokens(flow, policy.limits.default_output_tokens)
        usd = _usd(flow, tokens)
        claims: list[Claim] = []
        labels: list[tuple[str, str, str]] = []  # (limit name, unit, kind) per claim
        for limit, member in applying:
            if isinstance(limit, Budget):
                if not billed:
                    continue
                window, resets = period_window(limit.period, limit.timezone, now)
                if limit.usd_micros is not None and usd is not None:
                    claims.append(Claim(budget_counter(limit.name, "usd", member, window), usd, limit.usd_micros,
                                        resets, True, limit.hard, BUDGET_KEPT))
                    labels.append((limit.name, "usd", "budget"))
                if limit.tokens is not None:
                    claims.append(Claim(budget_counter(limit.name, "tokens", member, window), tokens, limit.tokens,
                                        resets, True, limit.hard, BUDGET_KEPT))
                    labels.append((limit.name, "tokens", "budget"))
            else:
                minute = int(now // 60)
                resets = (minute + 1) * 60.0
                for unit, capacity, amount in (("requests", limit.requests_per_minute, 1),
                                               ("tokens", limit.tokens_per_minute if billed else None, tokens)):
                    if capacity is not None:
                        claims.append(Claim(f"rate/{limit.name}/{unit}/{member}/{minute}", amount, capacity, resets))
                        labels.append((limit.name, unit, "rate"))
                if limit.concurrent is not None:
                    claims.append(Claim(f"rate/{limit.name}/concurrent/{member}", 1, limit.concurrent, 0.0,
                                        consumes=False))
                    labels.append((limit.name, "concurrent", "rate"))
        if not claims:
            return None
        flow.claims, flow.claim_labels = tuple(claims), tuple(labels)
        fail_open = policy.limits.on_unavailable == "open"
        return Ask(Admit(flow.claims, fail_open), then=functools.partial(_admitted, flow, now))


def _prompt(flow: Flow) -> int:
    """The request's prompt tokens as counted (a quarter of its body's bytes before they are)."""
    estimate = flow.meter.estimate
    return estimate.tokens if estimate is not None else len(flow.body) // 4


def _tokens(flow: Flow, default_output: int) -> int:
    """Prompt tokens as counted, plus the output the request allows."""
    api, request = flow.api, flow.request
    assert api is not None and request is not None
    prompt = _prompt(flow)
    output = api.output_limit(request.payload)
    if output is None:  # the most any target may produce (what a translation to Anthropic sends as max_tokens)
        output = max((target.output_tokens for target in flow.chain), default=default_output)
    return prompt + output * api.answers(request.payload)  # n answers: n outputs billed


def _usd(flow: Flow, tokens: int) -> int | None:
    """The most the request can cost on any target of its chain (None: no target has a price)."""
    prompt = _prompt(flow)
    output = max(0, tokens - prompt)
    most = None
    for target in flow.chain:
        cost = _cost_at(flow, target, prompt, output)
        if cost and (most is None or cost > most):
            most = cost
    return most


def _cost_at(flow: Flow, target: Target, prompt: int, output: int) -> int | None:
    """What ``prompt`` tokens in and ``output`` out may cost at ``target`` (None: it has no price),
    at the rates the request asks for, as it is claimed."""
    accountant = flow.accountant
    if accountant is None:
        return None
    payload = flow.request.payload if flow.request is not None else {}
    # A dearer tier asked for is claimed at its rates (flex, cheaper, is claimed at the standard ones).
    asked = payload.get("service_tier")
    tier = asked if asked in _DEARER_TIERS else None
    speed = "fast" if payload.get("speed") == "fast" else None
    try:
        return accountant.estimate_cost(target.provider.kind, target.upstream_model, (target.public,),
                                        target.price, prompt, output, tier, speed, _premiums(flow, payload))
    except Exception:
        return None


def _abandoned_claims(flow: Flow, record: dict[str, Any]) -> list[tuple[int | None, int | None]]:
    """What each try of the record's ``abandoned`` (sent, given up at the first-byte timeout: the
    provider may finish and bill it) is charged, as ``(usd, tokens)``: its claim, as a request whose
    client left before the answer's head is charged, at its own target: the counted prompt and the
    output the request allows there, priced at that target's rates (0 USD at a target without a
    price, which claims none). None: the request's own claim (a try not found in the chain)."""
    tries = record.get("abandoned")
    if not tries or flow.api is None or flow.request is None:
        return []
    prompt = _prompt(flow)
    limit = flow.api.output_limit(flow.request.payload)
    answers = flow.api.answers(flow.request.payload)
    out: list[tuple[int | None, int | None]] = []
    for tried in tries:
        target = next((t for t in flow.chain if t.provider.name == tried.get("provider")
                       and t.upstream_model == tried.get("model")), None)
        if target is None:
            out.append((None, None))
            continue
        output = (limit if limit is not None else target.output_tokens) * answers
        out.append((_cost_at(flow, target, prompt, output) or 0, prompt + output))
    return out


# The web searches claimed for a web search tool that sets no ``max_uses`` (Anthropic documents no
# default: the server-side loop searches as often as the model asks, until it pauses the turn).
DEFAULT_WEB_SEARCHES = 10


def _premiums(flow: Flow, payload: dict[str, Any]) -> Premiums | None:
    """What the request asks for that may be billed above its tokens at the input and output rates
    (None, the common request: nothing). Anthropic's ``cache_control`` (top level or on any block)
    may write the prompt to the cache, at the 1-hour write rate if any asks ``ttl: "1h"``; its web
    search tools may each search ``max_uses`` times (:data:`DEFAULT_WEB_SEARCHES` without it); OpenAI's
    ``modalities`` with ``audio`` is billed at the audio output rate, an ``input_audio`` part's tokens
    at the audio input rate. The prompt's marks and audio parts are what counting the prompt saw (no walk
    of its own; a prompt that could not be counted gets none: it is claimed by its size)."""
    assert flow.api is not None
    name, estimate = flow.api.name, flow.meter.estimate
    cache_write = None
    searches = 0
    input_audio = 0
    output_audio = False
    if name == "anthropic.messages":
        tools = payload.get("tools")
        if type(tools) is list and tools:
            for tool in tools:
                if type(tool) is dict and type(kind := tool.get("type")) is str and kind.startswith("web_search_"):
                    uses = tool.get("max_uses")
                    searches += uses if type(uses) is int and uses >= 0 else DEFAULT_WEB_SEARCHES
        cache_write = estimate.cache_write if estimate is not None else None
    elif name == "openai.chat.completions":
        modalities = payload.get("modalities")
        output_audio = type(modalities) is list and "audio" in modalities
        input_audio = estimate.audio if estimate is not None else 0
    else:
        return None
    if cache_write is None and not searches and not input_audio and not output_audio:
        return None
    return Premiums(cache_write, input_audio, output_audio, searches)


# The tiers OpenAI bills above its standard rates ("fast" is priority's newer name), as genai-prices
# lists them: a request asking for one is claimed at its rates.
_DEARER_TIERS = frozenset({"priority", "fast", "ultrafast"})


def _admitted(flow: Flow, now: float, answer: Any) -> Ask | None:
    if isinstance(answer, StoreUnavailable):
        raise ClientError(503, "state_unavailable",
                          "Tollway cannot check budgets and rate limits right now (its shared state store "
                          "does not answer); try again shortly.", headers=(("retry-after", "1"),))
    if isinstance(answer, BaseException) or not isinstance(answer, Admission):
        raise ClientError(503, "state_unavailable", "Tollway cannot check budgets and rate limits right now.",
                          headers=(("retry-after", "1"),))
    flow.admission = answer
    windows = rate_windows(flow, answer)
    assert flow.api is not None
    flow.rate_headers = flow.api.rate_limit_headers(windows, now) if windows else ()
    if answer.admitted:
        return None
    index = answer.refused
    assert index is not None
    claim, (name, unit, kind) = flow.claims[index], flow.claim_labels[index]
    flow.limit_refused = name
    if kind == "budget":
        resets = datetime.datetime.fromtimestamp(claim.resets, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def amount(value: int) -> str:
            return dollars(value) if unit == "usd" else f"{value:,} tokens"

        if claim.amount > claim.capacity:  # the request alone: no spending can make room for it
            message = (f"This request may use up to {amount(claim.amount)} (its prompt and the most output it "
                       f"allows), more than the budget '{name}' ({amount(claim.capacity)}) holds in all: ask for "
                       f"less output (max_tokens) or a shorter prompt.")
        else:
            message = (f"The budget '{name}' ({amount(claim.capacity)}) is spent, or what is left of it cannot "
                       f"cover this request (up to {amount(claim.amount)}); it resets at {resets}.")
        raise ClientError(429, "budget_exceeded", message, headers=(("x-should-retry", "false"), *flow.rate_headers))
    if unit == "tokens" and claim.amount > claim.capacity:  # no minute can hold it: as OpenAI says it
        raise ClientError(
            429, "rate_limit_exceeded",
            f"Request too large for the rate limit '{name}' on tokens per minute: Limit {claim.capacity:,}, "
            f"Requested {claim.amount:,} (its prompt and the most output it allows). Reduce max_tokens or the "
            f"prompt: waiting does not make room for it.",
            headers=(("x-should-retry", "false"), *flow.rate_headers))
    wait = max(1, int(claim.resets - now + 0.999)) if claim.resets else 1
    what = {"requests": f"{claim.capacity:,} requests per minute", "tokens": f"{claim.capacity:,} tokens per minute",
            "concurrent": f"{claim.capacity:,} requests at once"}[unit]
    raise ClientError(
        429, "rate_limit_exceeded", f"Rate limit '{name}' reached ({what}); retry in {wait} s.",
        headers=(("retry-after", str(wait)), *flow.rate_headers),
    )


def rate_windows(flow: Flow, answer: Admission) -> list[RateWindow]:
    """The tightest requests and tokens per-minute limits, as the client is told about them."""
    requests: int | None = None
    tokens: int | None = None
    for index, (_, unit, kind) in enumerate(flow.claim_labels):
        if kind != "rate" or index >= len(answer.remaining):
            continue
        if unit == "requests" and (requests is None or answer.remaining[index] < answer.remaining[requests]):
            requests = index
        elif unit == "tokens" and (tokens is None or answer.remaining[index] < answer.remaining[tokens]):
            tokens = index
    out = []
    for unit, found in (("requests", requests), ("tokens", tokens)):
        if found is not None:
            claim = flow.claims[found]
            out.append(RateWindow(unit, claim.capacity, answer.remaining[found], claim.resets))
    return out


def released(flow: Flow, answer: Any) -> Settle | None:
    """An admission granted after the request had ended (the client left while the store was asked):
    its claims go back at once, the request never went upstream (a request still counts against
    requests per minute, as any request refused after its admission does)."""
    if not isinstance(answer, Admission) or not answer.admitted or flow.admission is not None or not flow.claims:
        return None
    return Settle(flow.claims, _used(flow, reached=False, tokens=None, cost=None))


def settlement(flow: Flow, record: dict[str, Any]) -> Settle | None:
    """What the request really used of each claim it held (None: it held none)."""
    admission = flow.admission
    if admission is None or not admission.admitted:
        return None
    outcome = record.get("outcome")
    # "blocked": the provider answered (and billed it) before a guardrail withheld the answer.
    reached = outcome in ("ok", "incomplete", "blocked") or (outcome == "error" and record.get("input_tokens")
                                                              is not None)
    tokens = None
    if record.get("input_tokens") is not None or record.get("output_tokens") is not None:
        tokens = (record.get("input_tokens") or 0) + (record.get("output_tokens") or 0)
    used = _used(flow, reached, tokens, record.get("cost_usd_micros"), _abandoned_claims(flow, record))
    record["limits"] = [
        {"limit": name, "unit": unit, "claimed": claim.amount, "used": spent}
        for claim, (name, unit, _), spent in zip(flow.claims, flow.claim_labels, used, strict=True)
    ]
    if admission.degraded:
        record["limits_degraded"] = True
    return Settle(flow.claims, used)


def _used(flow: Flow, reached: bool, tokens: int | None, cost: int | None,
          abandoned: Sequence[tuple[int | None, int | None]] = ()) -> tuple[int, ...]:
    """What the request used of each claim: ``reached``, whether the provider did work for the try
    that answered (or was the last); plus, for each try abandoned before it, what
    :func:`_abandoned_claims` charges it."""
    used = []
    for claim, (_, unit, _kind) in zip(flow.claims, flow.claim_labels, strict=True):
        if not claim.consumes:
            used.append(0)
            continue
        if unit == "requests":
            used.append(1)
            continue
        if not reached:
            spent = 0  # refused after admission, or the provider answered an error: nothing billed
        elif unit == "usd":
            spent = cost if cost is not None else claim.amount  # unknown is not zero: the claim
        else:
            spent = tokens if tokens is not None else claim.amount
        for usd, tried_tokens in abandoned:
            charge = usd if unit == "usd" else tried_tokens
            spent += charge if charge is not None else claim.amount
        used.append(spent)
    return tuple(used)
