"""The flow: everything one request's steps and stages know about it, in one place.

A :class:`Flow` is plain data, like mitmproxy's ``HTTPFlow``: the session fills it as events
arrive, the request steps (:mod:`ext_proc.core.steps`) read and decide on it, the response
stages (:mod:`ext_proc.core.response`) read it, and the request record is written from it. It
holds no logic beyond small derived views.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ext_proc.core.meter import Accountant, Meter
from ext_proc.guardrails.guard import Guard
from ext_proc.llm.apis import ParsedRequest, WireAPI
from ext_proc.llm.errors import ClientError
from ext_proc.llm.runtime import Runtime
from ext_proc.llm.translate import Pair, StreamTranslator
from ext_proc.policy.compiled import Alias, CompiledPolicy, Principal, Provider, Target
from ext_proc.state.queries import Admission, Claim


class Flow:
    """One request; see the module docstring. Fields are filled in the order of the steps."""

    __slots__ = (
        "abandoned",
        "accountant",
        "admission",
        "answer_body",
        "answer_coding",
        "api",
        "asked",
        "attempts",
        "attributes",
        "body",
        "chain",
        "claim_labels",
        "claims",
        "cluster",
        "credential",
        "error",
        "fallback",
        "forwarded",
        "granted",
        "guard",
        "gunzip",
        "headers",
        "headers_only",
        "hide_usage",
        "limit_refused",
        "local",
        "metadata",
        "meter",
        "model",
        "mtls",
        "outcome",
        "pair",
        "path",
        "policy",
        "principal",
        "provider",
        "rate_headers",
        "reencode",
        "refused",
        "remove_headers",
        "replaced",
        "request",
        "request_id",
        "runtime",
        "served",
        "served_model",
        "set_headers",
        "stand_in_missing",
        "stand_ins",
        "started",
        "status",
        "stream",
        "stream_failed",
        "target",
        "trace",
        "translator",
        "tries_unknown",
        "ttft",
        "withheld",
        "workload",
    )

    def __init__(self, policy: CompiledPolicy | None, workload: str | None, accountant: Accountant | None,
                 runtime: Runtime, mtls: bool = False) -> None:
        self.policy = policy  # None: open mode, no identity or access control
        self.workload = workload  # the sidecar's own workload identity, or the mTLS peer's SPIFFE ID
        self.mtls = mtls  # a mutual-TLS channel: its certificate names the workload, not the message
        self.accountant = accountant
        self.runtime = runtime
        self.meter = Meter(accountant)
        self.trace: list[tuple[str, int, dict[str, Any]]] | None = None  # span events, when tracing
        # The request, as it arrived.
        self.request_id: str | None = None
        self.started = 0  # monotonic ns
        self.path = ""
        self.headers: Mapping[str, str] = {}
        self.headers_only = False  # the request head ended the stream: no body
        self.attributes: Mapping[str, str] = {}
        self.api: WireAPI | None = None  # the client's API
        self.gunzip = False
        self.body = b""
        self.request: ParsedRequest | None = None
        # The client's payload, which a translated answer may depend on (request.payload becomes the
        # served API's when the rewrite step translates it).
        self.asked: dict[str, Any] = {}
        self.model: str | None = None  # the name the client asked for
        self.stream = False
        # The decisions.
        self.principal: Principal | None = None
        self.granted: Target | Alias | None = None  # what the model name gives this caller
        self.chain: tuple[Target, ...] = ()  # the targets Envoy may try, in order
        self.hide_usage = False  # usage was asked for on the client's behalf: hide its event
        # Budgets and rate limits (ext_proc.core.limits).
        self.claims: tuple[Claim, ...] = ()  # the counters this request claims
        self.claim_labels: tuple[tuple[str, str, str], ...] = ()  # (limit, unit, kind) per claim
        self.admission: Admission | None = None  # the store's answer
        self.rate_headers: tuple[tuple[str, str], ...] = ()  # x-ratelimit-* for the answer
        self.limit_refused: str | None = None  # the limit that refused the request
        self.local = False  # a step answered the request itself (no provider, nothing spent)
        self.guard: Guard | None = None  # the guardrails acting on this request (None: none apply)
        # What goes upstream (the answer to Envoy's request messages).
        self.set_headers: list[tuple[str, str]] = []
        self.remove_headers: list[str] = []  # not yet sent (the head's answer sends and clears them)
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.credential: Provider | None = None
        self.forwarded = False  # the request went upstream (its prompt, as sent, may go in a span)
        self.tries_unknown = False  # the client left before the answer head of a chain: the tries are unknown
        self.cluster: str | None = None
        self.replaced = False  # the body changed (decoded, re-encoded or rewritten)
        self.reencode = False  # the decoded payload changed: encode it again
        # The answer.
        self.target: Target | None = None  # the target that serves (for a chain: once known)
        self.provider: str | None = None
        self.served: WireAPI | None = None  # the API the provider answers in
        self.pair: Pair | None = None  # the translation, when served and client APIs differ
        self.translator: StreamTranslator | None = None  # a streamed answer's translation
        self.withheld = 0  # events read but not passed on (a cut stream's unterminated last event)
        self.stream_failed = False  # the stream ended early with an error event (untranslatable, blocked, oversized)
        self.refused: ClientError | None = None  # a guardrail blocked the streamed answer: the client gets this
        self.served_model: str | None = None
        self.attempts: int | None = None
        self.abandoned: str | None = None  # the tries abandoned at the first-byte timeout (tollway.abandoned)
        self.fallback = False  # a later target than the chain's first served the request (not: failed there too)
        self.status: int | None = None
        self.ttft: int | None = None
        self.outcome: str | None = None
        self.error: str | None = None
        self.answer_body: bytes | None = None  # a buffered answer, kept only for a span's content
        self.answer_coding: str | None = None  # the answer's content-encoding, when not identity
        # Where providers are reached instead of their endpoints (tollway serve --stand-in, --stand-in-missing),
        # asked only to explain an unreachable one; stand_in_missing: tollway up's fake provider serves
        # any provider without its key.
        self.stand_ins: Callable[[], Mapping[str, str]] | None = None
        self.stand_in_missing = False

    def note(self, name: str, at: int, **attributes: Any) -> None:
        """A decision, as a span event (only when the server traces requests)."""
        if self.trace is not None:
            self.trace.append((name, at, attributes))

    def record(self, at: int) -> dict[str, Any]:
        """The request's log record as of monotonic time ``at`` (nanoseconds), before metering."""
        usage = self.meter.usage
        principal = self.principal
        return {
            "request_id": self.request_id,
            "team": principal.team if principal else None,
            "key_id": principal.key_id if principal else None,
            "workload": principal.workload if principal else None,
            "api": self.api.name if self.api else None,
            "model": self.model,
            "served_model": self.served_model,
            "provider": self.provider,
            # the model that served as the policy names it at its provider (the target's; open mode:
            # the name asked for, sent as it is); None where provider is
            "upstream_model": self.target.upstream_model if self.target is not None else (
                self.model if self.policy is None and self.provider else None),
            "stream": self.stream,
            "status": self.status,
            "outcome": self.outcome,
            "error": self.error,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "service_tier": usage.service_tier,  # as the answer says it was served (it selects the price)
            "attempts": self.attempts,
            "fallback": self.fallback,
            "guardrails": self.guard.fired() if self.guard else [],  # the guardrails that fired
            # each trigger: guardrail, detector, action, direction, count (never the value)
            "guardrail_triggers": self.guard.triggers() if self.guard else [],
            # the built-in prompt-injection score of the request's user and tool text (None: not scored)
            "injection_score": self.guard.score if self.guard else None,
            # why the external injection classifier gave no score (None: it did, or it was not asked)
            "classifier_unavailable": self.guard.unavailable if self.guard else None,
            "latency_ms": round((at - self.started) / 1e6, 3),
            "ttft_ms": round(self.ttft / 1e6, 3) if self.ttft is not None else None,
        }
