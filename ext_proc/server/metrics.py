"""Prometheus metrics that are right across worker processes.

Theory of operation. Every metric about requests is derived from the request record
(:mod:`ext_proc.core.session` emits one per request; the servicer hands it to
:meth:`Tally.record` through ``Service.on_record``), plus a few server-side events (budget
alerts, Redis trouble). The request path never touches a lock, a file or a socket for metrics:
:class:`Tally` adds to plain dictionaries in the worker's memory (a counter is one dict update,
a histogram observation a ``bisect`` and two updates), about 2 µs per request for the whole set
(``make bench-metrics``).

Across workers. ``tollway serve --workers N`` runs N processes behind one admin port, and any
of them may answer a scrape. Each worker writes its tally, whole, to its own file in a private
directory the parent made (:class:`Exchange`, every 0.5 s when it changed, and when it stops:
one ``orjson`` dump and an atomic rename); the worker answering ``/metrics`` publishes its own
first, then sums every file with its own live tally, so no counter goes backwards between two
scrapes answered by different workers. The supervisor counts the records it recovers from a
dead worker's journal (:mod:`ext_proc.server.journal`) in a tally of its own, ``supervisor.json``;
a worker killed by SIGKILL takes with it at most the counts of its last 0.5 s (the request log,
which is the ledger, loses none). A worker that died keeps its file, so counters never go backwards when it is
restarted (the new process writes a file of its own); gauges are taken from live workers only.
This is the layout of prometheus_client's multiprocess mode (one file per process, summed at
scrape), with values kept in memory between writes instead of written to an mmap on every
increment: measured here, multiprocess mode costs 14 µs of CPU per request for this metric set,
``prometheus_client`` in one process 10 µs, the tally 2 µs (README, "Metrics"). A scrape sees the
other workers' counts at most 0.5 s late.

Labels are bounded: API, team (the policy's teams), model (a name the policy knows, else
``other``: a name a caller made up is never a label), the model that served (a name the policy
knows, else one of the first ``MODEL_CAP`` others, see :class:`Names`), provider, status,
outcome, and the guardrail, detector and limit names of the policy. No key, request or free-text
label. Metric names follow the OpenTelemetry GenAI semantic conventions where they name one
(semantic-conventions-genai v0.1.0, ``gen_ai.client.inference.*``), converted to Prometheus
names the way the OpenTelemetry Prometheus exporter does (dots to underscores, the unit as a
suffix, ``_total`` on counters); the mapping table is in the README.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.state.rows import fell_back, went_upstream

log = logging.getLogger("tollway.metrics")

MODEL_CAP = 50  # distinct served-model names beyond the policy's that get a label of their own
# The semantic conventions' bucket boundaries for GenAI durations (seconds), doubled twice more: a
# reasoning model's answer or a long stream takes minutes (Envoy waits up to 300 s for a first byte).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                    163.84, 327.68)
# gen_ai.server.time_per_output_token's boundaries (seconds).
PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The prompt-injection score's (0 to 1; the default threshold is 0.5).
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

# gen_ai.operation.name per wire API (APIs that are not inference are not in the gen_ai metrics).
OPERATIONS = {
    "openai.chat.completions": "chat",
    "openai.responses": "chat",
    "anthropic.messages": "chat",
    "openai.completions": "text_completion",
    "openai.embeddings": "embeddings",
}
# gen_ai.provider.name per provider kind (a kind without a well-known name: its own name).
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "azure-openai": "azure.ai.openai"}

GEN_AI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
TOKENS = (*GEN_AI, "gen_ai_response_model", "gen_ai_token_modality", "team", "provider")


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: its Prometheus name (without ``_total``), kind, help and label names."""

    name: str
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    merge: str = "sum"  # gauges across workers: sum | max


METRICS = {m.name: m for m in (
    Metric("tollway_requests", "counter", "Requests Tollway saw, by how they ended",
           ("api", "team", "model", "provider", "status", "outcome")),
    Metric("tollway_requests_refused", "counter", "Requests Tollway answered itself with an error", ("api", "code")),
    Metric("gen_ai_client_inference_usage_input_tokens", "counter",
           "Input (prompt) tokens used, cache reads and writes included", TOKENS),
    Metric("gen_ai_client_inference_usage_output_tokens", "counter",
           "Output (completion) tokens used, reasoning included", TOKENS),
    Metric("gen_ai_client_inference_usage_cache_read_input_tokens", "counter",
           "Input tokens served from the provider's cache", TOKENS),
    Metric("gen_ai_client_inference_usage_cache_write_input_tokens", "counter",
           "Input tokens written to the provider's cache", TOKENS),
    Metric("gen_ai_client_inference_usage_reasoning_output_tokens", "counter",
           "Output tokens used for reasoning", TOKENS),
    Metric("tollway_cost_usd", "counter", "What requests cost, in US dollars (priced usage only)",
           ("team", "model", "provider")),
    Metric("tollway_requests_unpriced", "counter",
           "Requests with usage but no cost: no known price, or usage partly known (cost not counted)",
           ("team", "model", "provider")),
    Metric("tollway_requests_usage_unknown", "counter",
           "Requests a provider answered (not with an error) whose usage is unknown", ("team", "model", "provider")),
    Metric("tollway_abandoned_tries", "counter",
           "Tries sent to a provider and abandoned at the first-byte timeout (it may bill them: cost unknown), "
           "by the provider and the model asked for", ("team", "model", "provider")),
    Metric("gen_ai_client_inference_duration_seconds", "histogram",
           "From the request reaching Tollway to the end of the answer", (*GEN_AI, "error_type", "team", "provider"),
           DURATION_BUCKETS),
    Metric("gen_ai_client_inference_time_to_first_chunk_seconds", "histogram",
           "From the request reaching Tollway to the first byte of a streamed answer", (*GEN_AI, "team", "provider"),
           DURATION_BUCKETS),
    Metric("tollway_time_per_output_token_seconds", "histogram",
           "Time per output token after the first, per successful stream", (*GEN_AI, "team", "provider"),
           PER_TOKEN_BUCKETS),
    Metric("tollway_fallbacks", "counter", "Requests served by a later target of their fallback chain",
           ("model", "provider")),
    Metric("tollway_provider_attempts", "counter", "Tries Envoy made at providers (retries and fallbacks included)",
           ("model",)),
    Metric("tollway_guardrail_requests", "counter", "Requests on which a guardrail fired",
           ("guardrail", "team", "model")),
    Metric("tollway_guardrail_triggers", "counter", "Values guardrails found, by detector, action and direction",
           ("guardrail", "detector", "action", "direction", "team")),
    Metric("tollway_injection_score", "histogram",
           "The built-in prompt-injection score of each scored request (where to put the threshold)", ("team",),
           SCORE_BUCKETS),
    Metric("tollway_budget_refusals", "counter", "Requests refused because a budget was spent", ("budget",)),
    Metric("tollway_rate_limit_refusals", "counter", "Requests refused by a rate limit", ("limit",)),
    Metric("tollway_budget_alerts", "counter", "Budget alert thresholds crossed", ("budget", "threshold")),
    Metric("tollway_ledger_write_failures", "counter", "Record batches the spend aggregates' store refused", ()),
    Metric("tollway_ledger_dropped", "counter",
           "Records given up before the spend aggregates took them (the request log has them)", ()),
    Metric("tollway_ledger_waiting", "gauge",
           "Records the spend aggregates (Redis) have not taken yet: in memory and in the spools, the workers' "
           "and the supervisor's", ()),
    Metric("tollway_shared_state_degraded", "gauge",
           "1 while a worker cannot reach the budget and rate-limit store", ("store",), merge="max"),
    Metric("tollway_shared_state_degraded_seconds", "gauge",
           "How long the worker degraded the longest has not reached the budget and rate-limit store (0: none)",
           ("store",), merge="max"),
    Metric("tollway_request_log_failing", "gauge",
           "Workers that cannot write the request log (a full disk): their records wait in memory", ()),
    Metric("tollway_request_log_waiting", "gauge", "Records waiting in memory to be written to the request log", ()),
    Metric("tollway_request_log_write_failures", "counter", "Failed writes to the request log", ()),
    Metric("tollway_request_log_dropped", "counter",
           "Records dropped: the request log stayed unwritable past the in-memory bound, or at exit", ()),
    Metric("tollway_request_journal_errors", "counter", "Failed writes to the in-flight journal", ()),
    Metric("tollway_text_memory_answers", "counter",
           "Answers about prompt texts (findings, injection scores, token counts): remembered or computed",
           ("source",)),
    Metric("tollway_text_memory_entries", "gauge", "Answers the workers' memories of texts hold", ()),
    Metric("tollway_request_body_bytes_held", "gauge",
           "Bytes of request bodies the workers' requests in flight hold (each worker's limit: --body-memory)", ()),
)}

Key = tuple[str, ...]  # (metric name, label values...)


class Names:
    """Bounded label values: model names and each provider's ``gen_ai.provider.name``.

    A model name the policy knows (``CompiledPolicy.model_names``: public names, aliases, the
    providers' model names) is its own label. A requested model the policy does not know is
    ``other``: such a request was refused, and its name is whatever the caller made up. The model
    that served is the provider's word (often a dated snapshot, ``gpt-4o-mini-2024-07-18``): the
    first ``cap`` names the policy does not know get a label of their own, later ones ``other``.

    Across workers, :class:`Exchange` hands in (:meth:`adopt`) the served-model labels the other
    workers' files hold, at start and at each scrape, and they count against ``cap``: a restarted
    worker reuses its predecessor's labels instead of starting a fresh set. What remains: workers
    running side by side see each other's names only at a scrape, so each may add up to ``cap`` in
    between; the directory holds at most ``cap`` per worker (and the supervisor), restarts or not.
    """

    __slots__ = ("cap", "policy", "served")

    def __init__(self, policy: Callable[[], Any] | None = None, cap: int = MODEL_CAP) -> None:
        self.policy = policy or (lambda: None)
        self.cap = cap
        self.served: set[str] = set()  # served-model labels beyond the policy's names

    def model(self, name: str | None, policy: Any = None) -> str:
        """A requested model's label (``policy``: the policy now, when the caller has it at hand)."""
        if not name:
            return "none"
        if policy is None:
            policy = self.policy()
        if policy is None:  # open mode: no names known; the first ones seen, bounded as served models are
            return self.served_model(name, None)
        return name if name in policy.model_names else "other"

    def served_model(self, name: str | None, policy: Any = None) -> str:
        """The label of the model that served (the provider's name for it)."""
        if not name:
            return "none"
        if policy is None:
            policy = self.policy()
        served = self.served
        if name in served or (policy is not None and name in policy.model_names):
            return name
        if len(served) < self.cap:
            served.add(name)
            return name
        return "other"

    def adopt(self, labels: Iterable[str]) -> None:
        """Take in served-model labels other processes gave (see the class docstring)."""
        policy = self.policy()
        known = policy.model_names if policy is not None else frozenset()
        self.served.update(name for name in labels if name not in ("none", "other") and name not in known)

    def provider_kind(self, provider: str, policy: Any = None) -> str:
        if policy is None:
            policy = self.policy()
        found = policy.providers.get(provider) if policy is not None else None
        kind = found.kind if found is not None else provider
        return PROVIDERS.get(kind, kind)


class Tally:
    """This worker's metric values, in plain dictionaries (see the module docstring)."""

    __slots__ = ("changed", "counters", "gauges", "histograms", "names")

    def __init__(self, names: Names | None = None) -> None:
        self.names = names or Names()
        self.counters: dict[Key, float] = {}
        self.histograms: dict[Key, list[float]] = {}  # per bucket, +Inf, then the sum
        self.gauges: dict[Key, float] = {}
        self.changed = False

    def add(self, key: Key, amount: float = 1) -> None:
        counters = self.counters
        counters[key] = counters.get(key, 0) + amount
        self.changed = True

    def observe(self, key: Key, value: float) -> None:
        found = self.histograms.get(key)
        if found is None:
            found = self.histograms[key] = [0.0] * (len(METRICS[key[0]].buckets) + 2)
        found[bisect.bisect_left(METRICS[key[0]].buckets, value)] += 1
        found[-1] += value
        self.changed = True

    def set(self, key: Key, value: float) -> None:
        if self.gauges.get(key) != value:
            self.gauges[key] = value
            self.changed = True

    def record(self, record: dict[str, Any]) -> None:
        """Count one finished request (its record, as the request log has it)."""
        add = self.add
        names = self.names
        policy = names.policy()  # read once: a worker's current policy is a shared-memory read
        api = record.get("api") or "none"
        team = record.get("team") or "none"
        model = names.model(record.get("model"), policy)
        provider = record.get("provider") or "none"
        outcome = record.get("outcome") or "none"
        add(("tollway_requests", api, team, model, provider, str(record.get("status") or "none"), outcome))
        score = record.get("injection_score")
        if score is not None:
            self.observe(("tollway_injection_score", team), score)
        fired = record.get("guardrails")  # also on a request a guardrail blocked
        if fired:
            for name in set(fired):
                add(("tollway_guardrail_requests", name, team, model))
            for trigger in record.get("guardrail_triggers") or ():
                add(("tollway_guardrail_triggers", trigger["guardrail"], trigger["detector"], trigger["action"],
                     trigger["direction"], team), trigger.get("count") or 1)
        if outcome == "rejected":
            code = record.get("error") or "unknown"
            add(("tollway_requests_refused", api, code))
            limit = record.get("limit")
            if limit is not None:
                if code == "budget_exceeded":
                    add(("tollway_budget_refusals", limit))
                elif code == "rate_limit_exceeded":
                    add(("tollway_rate_limit_refusals", limit))
            return
        abandoned = record.get("abandoned")
        if abandoned:  # tries sent and given up at the first-byte timeout: cost unknown
            for tried in abandoned:
                add(("tollway_abandoned_tries", team, model, str(tried.get("provider") or "none")))
        if provider != "none":
            if fell_back(record):
                add(("tollway_fallbacks", model, provider))
            attempts = record.get("attempts")  # every API's: requests that reached a provider minus these are retries
            if attempts:
                add(("tollway_provider_attempts", model), attempts)
        operation = OPERATIONS.get(api)
        if operation is None:
            return  # not inference (the model list, a token count): no usage, cost or duration
        # Inference naming no provider still counts, under provider "none", as the report counts it:
        # Tollway answers no inference API itself, so which provider is unknown, not that none was
        # asked (a chain's request recovered from a dead worker's journal went upstream to the
        # target Envoy picked; a chain Envoy answered itself, with no endpoint to try).
        kind = names.provider_kind(provider, policy)
        inp, out = record.get("input_tokens"), record.get("output_tokens")
        upstream = went_upstream(record)  # (rows: the report's rule)
        if inp is None and out is None:
            if outcome != "error" and upstream:  # an error answer did no work, a request never sent none
                add(("tollway_requests_usage_unknown", team, model, provider))
        else:
            served = names.served_model(record.get("served_model"), policy)
            tokens = (operation, kind, model, served, "unknown", team, provider)
            for metric, value in (("gen_ai_client_inference_usage_input_tokens", inp),
                                  ("gen_ai_client_inference_usage_output_tokens", out),
                                  ("gen_ai_client_inference_usage_cache_read_input_tokens",
                                   record.get("cached_tokens")),
                                  ("gen_ai_client_inference_usage_cache_write_input_tokens",
                                   record.get("cache_write_tokens")),
                                  ("gen_ai_client_inference_usage_reasoning_output_tokens",
                                   record.get("reasoning_tokens"))):
                if value:
                    add((metric, *tokens), value)
            cost = record.get("cost_usd_micros")
            if cost is None:
                add(("tollway_requests_unpriced", team, model, provider))
            elif cost:
                add(("tollway_cost_usd", team, model, provider), cost)  # micro-dollars: exact; shown in USD
        latency = record.get("latency_ms")
        if latency is not None and upstream:  # no model call, no inference duration
            error = str(record.get("status")) if outcome == "error" else "incomplete" if outcome == "incomplete" else ""
            self.observe(("gen_ai_client_inference_duration_seconds", operation, kind, model, error, team, provider),
                         latency / 1000)
        ttft = record.get("ttft_ms")
        if ttft is not None:
            self.observe(("gen_ai_client_inference_time_to_first_chunk_seconds", operation, kind, model, team,
                          provider),
                         ttft / 1000)
            if outcome == "ok" and out and out > 1 and latency is not None and latency > ttft:
                self.observe(("tollway_time_per_output_token_seconds", operation, kind, model, team, provider),
                             (latency - ttft) / 1000 / (out - 1))

    def snapshot(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "counters": [[*k, v] for k, v in self.counters.items()],
                "histograms": [[*k, v] for k, v in self.histograms.items()],
                "gauges": [[*k, v] for k, v in self.gauges.items()]}


class Exchange:
    """This worker's tally in a file of the shared metrics directory, and the sum of them all.

    ``directory`` None: one process, nothing to exchange.
    """

    def __init__(self, tally: Tally, directory: str | None) -> None:
        self.tally = tally
        self.directory = directory
        self.path = os.path.join(directory, f"worker-{os.getpid()}.json") if directory else None
        if directory:  # the served-model labels the files of earlier and other workers hold
            merged = Merged()
            for data in self.others():
                merged.add(data, live=False)
            tally.names.adopt(merged.labels("gen_ai_response_model"))

    def write(self) -> None:
        """Publish the tally when it changed (atomic: a reader sees the old file or the new one)."""
        tally, path = self.tally, self.path
        if path is None or not tally.changed:
            return
        tally.changed = False
        try:
            data = orjson.dumps(tally.snapshot())
            temporary = f"{path}.tmp"
            with open(temporary, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            tally.changed = True  # written at the next try, though nothing changes meanwhile
            raise

    def totals(self) -> Merged:
        """Every worker's values summed: the files of the others, this worker's own live tally.

        The tally is published first: a file is never older than a scrape that counted its worker
        live, so the next scrape, whichever worker answers it, sees no counter go backwards (which
        Prometheus would take for a restart and turn into a made-up increase)."""
        with contextlib.suppress(OSError):
            self.write()
        merged = Merged()
        merged.add(self.tally.snapshot(), live=True)
        if self.directory is None:
            return merged
        for data in self.others():
            merged.add(data, live=alive(int(data.get("pid", 0))))
        self.tally.names.adopt(merged.labels("gen_ai_response_model"))
        return merged

    def published(self, *names: str) -> dict[str, list[float]]:
        """The gauges ``names`` (every label value) as each other live worker last published them:
        a state of every worker (``/readyz``) without summing every file's counters. At most a
        publication (0.5 s) old."""
        found: dict[str, list[float]] = {name: [] for name in names}
        if self.directory is None:
            return found
        for data in self.others():
            if not alive(int(data.get("pid", 0))):
                continue
            for *key, value in data.get("gauges", ()):
                if key[0] in found:
                    found[key[0]].append(value)
        return found

    def others(self) -> Iterator[dict[str, Any]]:
        """The files of the other workers (and the supervisor), live or dead."""
        assert self.directory is not None
        mine = os.path.basename(self.path or "")
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json") or name == mine:
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as source:
                    data = orjson.loads(source.read())
            except (OSError, orjson.JSONDecodeError):
                continue  # removed meanwhile
            yield data


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may be another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Merged:
    """Values of several tallies added together (gauges: live workers only, merged per metric)."""

    def __init__(self) -> None:
        self.counters: dict[Key, float] = {}
        self.histograms: dict[Key, list[float]] = {}
        self.gauges: dict[Key, float] = {}

    def add(self, snapshot: dict[str, Any], live: bool) -> None:
        counters = self.counters
        for *key, value in snapshot["counters"]:
            k = tuple(key)
            counters[k] = counters.get(k, 0) + value
        histograms = self.histograms
        for *key, values in snapshot["histograms"]:
            k = tuple(key)
            found = histograms.get(k)
            if found is None:
                histograms[k] = list(values)
            else:
                for i, value in enumerate(values):
                    found[i] += value
        if not live:
            return
        gauges = self.gauges
        for *key, value in snapshot["gauges"]:
            k = tuple(key)
            if k not in gauges:
                gauges[k] = value
            elif METRICS[k[0]].merge == "max":
                gauges[k] = max(gauges[k], value)
            else:
                gauges[k] += value

    def labels(self, label: str) -> set[str]:
        """The values ``label`` takes among the counters."""
        found = set()
        for key in self.counters:
            names = METRICS[key[0]].labels
            if label in names:
                found.add(key[names.index(label) + 1])
        return found

    def value(self, name: str, **labels: str) -> float:
        """A counter's (or gauge's) total over the label values given (the others summed)."""
        metric = METRICS[name]
        wanted = {metric.labels.index(label): value for label, value in labels.items()}
        source = self.gauges if metric.kind == "gauge" else self.counters
        return sum(v for k, v in source.items() if k[0] == name and all(k[i + 1] == x for i, x in wanted.items()))


class Publisher:
    """Writes this worker's tally every ``interval`` seconds (see :class:`Exchange`), and on close;
    ``before`` updates what no record says (gauges) first."""

    def __init__(self, exchange: Exchange, interval: float = 0.5, before: Callable[[], None] | None = None) -> None:
        self.exchange = exchange
        self.interval = interval
        self.before = before or (lambda: None)

    async def run(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.interval)
            try:
                self.before()
                self.exchange.write()
            except OSError as exc:
                log.warning("cannot write this worker's metrics: %s", exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.before()
            self.exchange.write()
