"""A spend row: the totals of one group (team, model, key, provider or upstream model) over a window.

The one shape every report is made of, whether it was aggregated from the request log
(:mod:`ext_proc.ledger.report`) or read from the shared counters (:mod:`ext_proc.state.ledger`),
and the rules every report, the dashboard and the metrics follow: :func:`group_of` for which row
a request counts in, :func:`served_latency` for which requests the latencies are of,
:func:`fell_back` for what a fallback is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from ext_proc.llm.apis import ANTHROPIC_MODELS, COUNT_TOKENS, OPENAI_MODELS
from ext_proc.policy.compiled import key_member

GROUPS = {"team": "team", "model": "model", "key": "key_id", "provider": "provider", "upstream": "upstream_model"}
FILTERS = ("team", "key", "model", "provider", "upstream")  # a report's filters: each a group's name, matched
# as group_of names it
UNKNOWN = "(unknown)"  # the upstream model of a request an older Tollway counted (its record, its bucket: none)


def group_of(by: str, record: Mapping[str, Any]) -> str:
    """The row a request (a record, or a bucket's dimensions) counts in when grouped ``by`` a name
    of :data:`GROUPS`: its team, model or provider, or its key with its team as limits count it
    (:func:`~ext_proc.policy.compiled.key_member`, ``ci@search``: a key id is unique only within
    its team, so the keys ``ci`` of two teams are two rows); ``(none)`` when it has none. By
    ``upstream`` (the model that served, as the policy names it at its provider: the serving
    target's ``upstream_model``), a record an older Tollway wrote, without the field, is
    :data:`UNKNOWN`, and so is a five-part bucket (the counts an older Tollway added beyond the
    upstream buckets: :func:`~ext_proc.state.ledger._by_upstream`)."""
    field = GROUPS[by]
    if field not in record and by == "upstream":
        return UNKNOWN
    value = record.get(field)
    if not value:
        return "(none)"
    team = record.get("team")
    return key_member(str(team), str(value)) if by == "key" and team else str(value)


# The APIs that call no model (a record's ``api``): the model lists and Anthropic's token count,
# whether Tollway answered them itself or forwarded them. A report counts them as ``lookups``:
# no tokens, no cost, and not in the latencies, which are those of model calls.
LOOKUP_APIS = frozenset(api.name for api in (OPENAI_MODELS, ANTHROPIC_MODELS, COUNT_TOKENS))
SERVED = ("ok", "blocked")  # outcomes of a request a provider answered (blocked: answered, withheld by a guardrail)


def lookup(record: Mapping[str, Any]) -> bool:
    """Whether a request called no model (a model list, a token count): see :data:`LOOKUP_APIS`."""
    return record.get("api") in LOOKUP_APIS


def served_latency(record: Mapping[str, Any]) -> float | None:
    """The latency a request adds to a report's average and percentiles, None for none: those
    are the latencies of model calls a provider answered (outcome ``ok``, or ``blocked``: answered
    and billed, the answer withheld by a guardrail), what ``gen_ai_client_inference_duration_seconds``
    counts with an empty ``error_type``. Refused requests, lookups (model lists, token counts),
    provider errors (often a fast 503) and cut streams (a client that left) are left out."""
    if record.get("outcome") not in SERVED or not record.get("provider") or lookup(record):
        return None
    latency = record.get("latency_ms")
    if isinstance(latency, bool) or not isinstance(latency, (int, float)):
        return None
    return float(latency)


def went_upstream(record: Mapping[str, Any]) -> bool:
    """Whether a request reached a provider, or may have: a provider named, a record recovered from a
    dead worker's journal (sent upstream to the target Envoy picked, which is unknown), or model calls
    counted (``attempts``), or a chain's request the client left before its answer's head
    (``tries_unknown``: which targets Envoy tried is unknown). A request that never did (a client
    that left mid-upload) has no usage to miss and no model call's duration: reports' unknown usage
    and the metrics' unknown usage and inference durations leave it out."""
    return (bool(record.get("provider")) or record.get("recovered") is True or bool(record.get("attempts"))
            or record.get("tries_unknown") is True)


TRY_TIMED_OUT = "upstream_per_try_idle_timeout"  # Envoy's 504: the last try got no byte in time
IDLE_TIMED_OUT = "stream_idle_timeout"  # Envoy's 504: the request idle too long (a try in flight, or its upload)


def error_answer(record: Mapping[str, Any]) -> bool:
    """Whether the provider answered the request with an error (nothing charged). Envoy's 504 for
    a last try abandoned at the first-byte timeout is no answer: the provider may have started,
    and bill, a generation, counted as an abandoned try (:func:`abandoned_tries`), not as an error;
    so is its 504 for a request idle too long with a try in flight (recorded as abandoned)."""
    error = record.get("error")
    return record.get("outcome") == "error" and error != TRY_TIMED_OUT and not (
        error == IDLE_TIMED_OUT and record.get("abandoned_tries"))


def fell_back(record: Mapping[str, Any]) -> bool:
    """Whether a later target than its chain's first served the request. Tollway records
    ``fallback: true`` only then; older Tollways also did for a chain that failed at every target
    (outcome ``error``), which this leaves out too."""
    return record.get("fallback") is True and record.get("outcome") != "error"


def abandoned_tries(record: Mapping[str, Any]) -> int:
    """The tries of a request Envoy sent and abandoned at the first-byte timeout (``abandoned_tries``):
    the provider may have started, and bill, a generation; its usage and cost are unknown."""
    n = record.get("abandoned_tries")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def estimated(record: Mapping[str, Any]) -> bool:
    """Whether a request's tokens are estimated in part or whole: a stream cut before the provider
    reported its usage (its input from the count before sending, its output from the text streamed)."""
    return record.get("outcome") == "incomplete" and (record.get("input_estimated") is True
                                                       or record.get("output_estimated") is True)


def usd(micros: int) -> Decimal:
    """Micro-dollars as an exact decimal amount of dollars (``800`` → ``Decimal("0.0008")``)."""
    return (Decimal(micros) / 1_000_000).normalize() if micros else Decimal(0)


_COUNTS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost_usd_micros")
_MAX_TS = 32_503_680_000  # the year 3000: a record's time beyond it is no time


def usable(record: dict[str, Any]) -> bool:
    """Whether a request record (a line of a log, which anyone may have edited) has the types a
    report counts: a time, integer counts or nulls, a list of guardrail names. A report skips
    (and says it skipped) the rest instead of failing on them."""
    ts = record.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts < _MAX_TS:
        return False
    for name in _COUNTS:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return False
    fired = record.get("guardrails")
    if fired is not None and not (isinstance(fired, list) and all(isinstance(n, str) for n in fired)):
        return False
    latency = record.get("latency_ms")
    return latency is None or (isinstance(latency, (int, float)) and not isinstance(latency, bool))


@dataclass
class Row:
    """Totals of one group over the reporting window."""

    group: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd_micros: int = 0
    unknown_usage: int = 0  # requests a provider answered (not with an error) without reporting usage
    unknown_cost: int = 0  # requests with usage but no cost: no known price, or usage partly known
    abandoned_tries: int = 0  # tries sent, then abandoned at the first-byte timeout: billed maybe, cost unknown
    estimated: int = 0  # cut streams (outcome incomplete) whose tokens are estimated, in part or whole
    guardrail_triggers: int = 0  # requests on which at least one guardrail fired
    fallbacks: int = 0  # requests served by a fallback target (not the first of their chain)
    refused: int = 0  # requests Tollway answered itself (outcome "rejected"): nothing was sent
    lookups: int = 0  # model lists and token counts (not refused): no model call, no tokens, no latency
    refused_by_status: dict[str, int] = field(default_factory=dict)  # HTTP status -> refused requests
    guardrails: dict[str, int] = field(default_factory=dict)  # guardrail name -> requests it fired on
    errors: int = 0  # the provider answered an error (not Envoy's 504 of an abandoned try: error_answer)
    incomplete: int = 0  # the stream was cut (by the provider or the client leaving)
    unknown_outcome: int = 0  # requests sent whose outcome the aggregates do not hold (counted before they did)
    latency_sum_ms: float = 0.0  # of the model calls a provider answered (served_latency)
    latency_count: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)  # those latencies (reports from the log)
    p95_bound_ms: float | None = None  # p95 as a histogram bound (reports from aggregates)
    histogram: list[int] = field(default_factory=list, repr=False)  # the aggregates' latency buckets' counts

    def add(self, record: dict[str, Any]) -> float | None:
        """Count one request record in this row (a report's, the dashboard's). A refused one (nothing
        was sent) counts only in ``refused``, by status, and in the guardrails that fired. Returns the
        latency added to the average (:func:`served_latency`), None when none was."""
        self.requests += 1
        fired = record.get("guardrails")  # a guardrail that blocked the request fired too
        if fired:
            self.guardrail_triggers += 1
            for name in set(fired):
                self.guardrails[name] = self.guardrails.get(name, 0) + 1
        outcome = record.get("outcome")
        if outcome == "rejected":
            self.refused += 1
            status = str(record.get("status") or "?")
            self.refused_by_status[status] = self.refused_by_status.get(status, 0) + 1
            return None
        self.lookups += lookup(record)
        inp, out = record.get("input_tokens"), record.get("output_tokens")
        if inp is None and out is None and outcome != "error" and went_upstream(record):
            self.unknown_usage += 1  # (an error answer did no work, a request never sent none: no usage to miss)
        self.input_tokens += inp or 0
        self.output_tokens += out or 0
        self.cached_tokens += record.get("cached_tokens") or 0
        self.reasoning_tokens += record.get("reasoning_tokens") or 0
        cost = record.get("cost_usd_micros")
        if cost is None:
            self.unknown_cost += inp is not None or out is not None
        else:
            self.cost_usd_micros += cost
        self.fallbacks += fell_back(record)
        self.abandoned_tries += abandoned_tries(record)
        self.estimated += estimated(record)
        self.errors += error_answer(record)
        self.incomplete += outcome == "incomplete"
        latency = served_latency(record)
        if latency is not None:
            self.latency_sum_ms += latency
            self.latency_count += 1
        return latency

    def merge(self, other: Row) -> None:
        """Add another row's totals to this one (not its latencies, nor its histogram)."""
        for name in ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
                     "cost_usd_micros", "unknown_usage", "unknown_cost", "guardrail_triggers", "fallbacks",
                     "refused", "lookups", "errors", "incomplete", "unknown_outcome", "latency_count",
                     "abandoned_tries", "estimated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency_sum_ms += other.latency_sum_ms
        for status, n in other.refused_by_status.items():
            self.refused_by_status[status] = self.refused_by_status.get(status, 0) + n
        for name, n in other.guardrails.items():
            self.guardrails[name] = self.guardrails.get(name, 0) + n

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_partial(self) -> bool:
        """Whether the cost is a floor ("at least"): some requests' usage or price is unknown, or some
        tries were abandoned after the provider may have started (their cost is unknown)."""
        return bool(self.unknown_cost or self.unknown_usage or self.abandoned_tries)

    @property
    def avg_latency_ms(self) -> float | None:
        return self.latency_sum_ms / self.latency_count if self.latency_count else None

    @property
    def p95_latency_ms(self) -> float | None:
        if not self.latencies:
            return self.p95_bound_ms
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for internal in ("latencies", "latency_sum_ms", "latency_count", "p95_bound_ms", "histogram"):
            del out[internal]
        avg, p95 = self.avg_latency_ms, self.p95_latency_ms
        out.update(
            tokens=self.tokens,
            cost_partial=self.cost_partial,
            cost_usd=float(usd(self.cost_usd_micros)),
            avg_latency_ms=round(avg, 3) if avg is not None else None,
            p95_latency_ms=round(p95, 3) if p95 is not None else None,
        )
        return out
