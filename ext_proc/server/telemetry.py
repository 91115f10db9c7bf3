"""OpenTelemetry: one span per request, and the request records as logs, exported over OTLP.

Theory of operation. The core stays pure: when the server traces requests, each session notes
its decisions as plain data (:class:`~ext_proc.core.actions.Trace`: the route, the limits
admitted, guardrail triggers, the refusal, the fallback, each with the monotonic time it was
taken) and hands them over with the finished record. :class:`Tracer` then builds the whole span
at once from the record (start = end − latency, mapped from monotonic to wall-clock time), as a
``gen_ai.client.inference`` span of the OpenTelemetry GenAI semantic conventions
(semantic-conventions-genai v0.1.0): kind CLIENT, named ``{gen_ai.operation.name}
{gen_ai.request.model}``, with the ``gen_ai.*`` attributes (operation, provider, request and
response model, token usage, finish reasons, time to first chunk) and Tollway's own
(``tollway.*``). A request that is not inference (Anthropic's token count, the model list) has
no operation the conventions name: its span has no ``gen_ai.operation.name`` and is named
``{tollway.api} {gen_ai.request.model}`` (``anthropic.count_tokens claude-haiku``). Its parent
is the incoming ``traceparent`` (W3C Trace Context, and ``tracestate``), so the request's span
sits in the caller's trace.

Nothing is exported inline: finished spans go to the SDK's ``BatchSpanProcessor``, which sends
them from its own thread over OTLP/HTTP in batches (a full queue drops spans, it never blocks a
request). With no endpoint configured there is no tracer at all: sessions collect no events, and
the cost is one ``is None`` test per request.

Sampling, decided before anything is built: a request whose caller sent a ``traceparent`` follows
the caller's decision (its sampled flag: a traced caller gets Tollway's span in every trace it
records); any other request is traced with probability ``--trace-sample-ratio`` (default 0.05).
A span costs about 130 µs of CPU through the SDK (40 µs to build it, the rest for the OTLP
encoding on the exporter's thread), so the head sample is what keeps tracing within the service's
CPU budget: about 8 µs per request on average at the default (README, "Performance").

Content: prompts and answers are never in spans, unless the policy says
``telemetry: {trace_content: true}``; then ``gen_ai.input.messages`` and
``gen_ai.output.messages`` carry them (after the policy's guardrails, bounded to 64 KiB each),
redacted again here by every built-in detector of :mod:`ext_proc.guardrails` and the policy's own
(``guardrails.custom``; typed placeholders, ``[EMAIL_1]``), so no value a detector knows leaves in a
trace. A request refused before it went upstream has no prompt in its span.

Records as logs (:class:`RecordExporter`): each request record, the request log's line, can also
go out as an OpenTelemetry log record (event name ``tollway.request``, the record as its body,
linked to the request's span when there is one) through the SDK's ``BatchLogRecordProcessor``.

Configuration follows OpenTelemetry's. ``--otlp-endpoint`` (``TOLLWAY_OTLP_ENDPOINT``), a base
URL to which ``/v1/traces`` and ``/v1/logs`` are added, is Tollway's own and wins over every
variable; without it the SDK's exporters read OpenTelemetry's variables themselves, so a signal's
own (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``: full URLs, used
as they are) wins over ``OTEL_EXPORTER_OTLP_ENDPOINT``; any of them turns its signal on.
``OTEL_EXPORTER_OTLP_HEADERS`` for credentials (never logged). The service's name is the
environment's (``OTEL_SERVICE_NAME``, else a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, as
the OpenTelemetry operator sets it), else ``tollway``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.core.actions import Trace
from ext_proc.server.metrics import OPERATIONS, Names

log = logging.getLogger("tollway.telemetry")


@dataclass(frozen=True)
class TelemetryConfig:
    """Where telemetry goes: None/False leaves that signal off."""

    endpoint: str | None = None  # OTLP/HTTP base URL (…:4318); /v1/traces and /v1/logs are added; None: the SDK's
    traces: bool = True
    logs: bool = False  # the request records as OpenTelemetry logs
    service_name: str = "tollway"  # when the environment names no service
    ratio: float = 0.05  # requests traced when their caller did not decide (no traceparent)

    @classmethod
    def from_environment(cls, endpoint: str | None, logs: bool, ratio: float = 0.05) -> TelemetryConfig | None:
        """The flag, else OpenTelemetry's own variables (read by the SDK's exporters, so a signal's
        own endpoint wins over the generic one); None when nothing is configured."""
        endpoint = endpoint or None
        generic = bool(endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        traces = generic or bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        logs = logs and (generic or bool(os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")))
        if not traces and not logs:
            return None
        return cls(endpoint, traces, logs, ratio=ratio)


def _resource(config: TelemetryConfig) -> Any:
    """The SDK's resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, its detectors), named
    ``config.service_name`` only when none of them names the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    # Unnamed, the SDK calls it "unknown_service:<executable>" (the specification's default).
    if str(resource.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: config.service_name}))
    return resource


def _url(config: TelemetryConfig, signal: str) -> str | None:
    """The flag's base URL with the signal's path, else None: the SDK reads the variables."""
    return f"{config.endpoint.rstrip('/')}/v1/{signal}" if config.endpoint else None


class Tracer:
    """Ends one span per finished request (see the module docstring)."""

    def __init__(self, provider: Any, names: Names | None = None, ratio: float = 1.0) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("tollway")
        self.names = names or Names()
        self._propagator = TraceContextTextMapPropagator()
        self._client = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._redactor: Any = None
        self.ratio = ratio
        self._random = random.random

    @classmethod
    def exporting(cls, config: TelemetryConfig, names: Names | None = None) -> Tracer:
        """A tracer whose spans go over OTLP/HTTP in batches."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        # Tollway samples before building a span (see sampled()); the SDK records what it is given.
        provider = TracerProvider(resource=_resource(config), sampler=ParentBased(ALWAYS_ON))
        # Small batches, sent every second: the exporter's thread encodes a batch holding the GIL, and
        # a 512-span batch (the SDK's default) kept the event loop waiting for tens of milliseconds.
        size = None if os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") else 64
        delay = None if os.environ.get("OTEL_BSP_SCHEDULE_DELAY") else 1000.0
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_url(config, "traces")),
                                                       schedule_delay_millis=delay, max_export_batch_size=size))
        return cls(provider, names, config.ratio)

    def sampled(self, trace: Trace) -> bool:
        """The caller's decision when it sent a valid ``traceparent``, else the head ratio."""
        parent = trace.traceparent
        if parent is not None and len(parent) >= 55 and parent[2] == "-" and parent[35] == "-":
            try:
                return bool(int(parent[53:55], 16) & 1)
            except ValueError:
                pass
        return self._random() < self.ratio

    def finish(self, record: dict[str, Any], trace: Trace) -> Any:
        """Build and end the request's span; returns it (its context links the record's log),
        or None when the request is not sampled."""
        if not self.sampled(trace):
            return None
        now_wall, now_mono = time.time_ns(), time.monotonic_ns()

        def wall(mono: int) -> int:
            return now_wall - (now_mono - mono)

        api = record.get("api") or "unknown"
        operation = OPERATIONS.get(api)  # None: not inference (a token count, the model list)
        model = record.get("model")
        attributes: dict[str, Any] = {"tollway.request_id": record.get("request_id") or "",
                                      "tollway.outcome": record.get("outcome") or "", "tollway.api": api}
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        provider = record.get("provider")
        if provider:
            attributes["gen_ai.provider.name"] = self.names.provider_kind(provider)
            attributes["tollway.provider"] = provider
        for name, value in (("gen_ai.request.model", model), ("gen_ai.response.model", record.get("served_model")),
                            ("gen_ai.usage.input_tokens", record.get("input_tokens")),
                            ("gen_ai.usage.output_tokens", record.get("output_tokens")),
                            ("gen_ai.usage.cache_read.input_tokens", record.get("cached_tokens")),
                            ("gen_ai.usage.cache_write.input_tokens", record.get("cache_write_tokens")),
                            ("gen_ai.usage.reasoning.output_tokens", record.get("reasoning_tokens")),
                            ("gen_ai.request.stream", record.get("stream")),
                            ("http.response.status_code", record.get("status")),
                            ("tollway.team", record.get("team")), ("tollway.key_id", record.get("key_id")),
                            ("tollway.workload", record.get("workload")),
                            ("tollway.attempts", record.get("attempts")), ("tollway.fallback", record.get("fallback")),
                            ("tollway.cost_usd_micros", record.get("cost_usd_micros")),
                            ("tollway.price_version", record.get("price_version")),
                            ("tollway.limit", record.get("limit"))):
            if value is not None:
                attributes[name] = value
        if trace.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = list(trace.finish_reasons)
        if record.get("ttft_ms") is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = record["ttft_ms"] / 1000
        if record.get("guardrails"):
            attributes["tollway.guardrails"] = list(record["guardrails"])
        outcome = record.get("outcome")
        failed = outcome in ("error", "incomplete") or (outcome == "rejected" and (record.get("status") or 0) >= 500)
        if outcome not in ("ok", None):
            attributes["error.type"] = record.get("error") or (outcome if outcome == "incomplete"
                                                                else str(record.get("status")))
        if trace.prompt is not None or trace.answer is not None:
            attributes.update(self._content(trace))
        parent = None
        if trace.traceparent:
            carrier = {"traceparent": trace.traceparent}
            if trace.tracestate:
                carrier["tracestate"] = trace.tracestate
            parent = self._propagator.extract(carrier)
        named = operation or api
        # The span's name takes the model's bounded label (a name the policy does not know is
        # "other", as in the metrics): a caller sending sampled traceparents made a new span name
        # per made-up model. The name it sent stays in gen_ai.request.model.
        label = self.names.model(model) if model else None
        span = self.tracer.start_span(f"{named} {label}" if label else named, context=parent,
                                      kind=self._client, attributes=attributes, start_time=wall(trace.started))
        for name, at, event in trace.events:
            span.add_event(name, event, timestamp=wall(at))
        if failed:
            span.set_status(self._error)
        span.end(end_time=wall(trace.ended))
        return span

    def _content(self, trace: Trace) -> dict[str, str]:
        redact = self._redact
        out = {}
        if trace.prompt is not None:
            messages = [{"role": role, "parts": [{"type": "text", "content": redact(text)}]}
                        for role, text in trace.prompt]
            out["gen_ai.input.messages"] = orjson.dumps(messages).decode()
        if trace.answer is not None:
            answer: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": redact(trace.answer)}]}
            if trace.finish_reasons:
                answer["finish_reason"] = trace.finish_reasons[0]
            out["gen_ai.output.messages"] = orjson.dumps([answer]).decode()
        return out

    def _redact(self, text: str) -> str:
        """``text`` with every value a built-in detector, or one of the policy's own (``guardrails.custom``),
        finds replaced by its typed placeholder."""
        from ext_proc.guardrails.guard import Guard
        from ext_proc.guardrails.plan import REQUEST, Plan, Rule
        from ext_proc.guardrails.scanner import builtin

        guardrails = getattr(self.names.policy(), "guardrails", None)
        # The policy's scanner holds the built-in detectors and its custom ones (one object per distinct
        # set of custom detectors: a reload that keeps them keeps this plan); without rules, the built-in.
        policy_scanner = guardrails.scanner if guardrails is not None else None
        if self._redactor is None or self._redactor[0] is not policy_scanner:
            scanner = policy_scanner if policy_scanner is not None else builtin()
            names = frozenset(d.name for d in scanner.detectors if d.name != "prompt_injection")
            rule = Rule("trace", names, "redact", frozenset({REQUEST}))
            self._redactor = (policy_scanner, scanner, Plan(scanner, {name: rule for name in names}, {}), names)
        _, scanner, plan, names = self._redactor
        guard = Guard(plan)
        return str(guard.apply(text, scanner.find(text, names), plan.request, REQUEST))

    def close(self) -> None:
        self.provider.shutdown()


class RecordExporter:
    """Each request record as an OpenTelemetry log record (see the module docstring)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.logger = provider.get_logger("tollway")

    @classmethod
    def exporting(cls, config: TelemetryConfig) -> RecordExporter:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider = LoggerProvider(resource=_resource(config))
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=_url(config, "logs"))))
        return cls(provider)

    def emit(self, record: dict[str, Any], span: Any = None) -> None:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.trace import set_span_in_context

        context = set_span_in_context(span) if span is not None else None
        failed = record.get("outcome") in ("error", "incomplete")
        body = {k: v for k, v in record.items() if v is not None and not isinstance(v, (list, dict))}
        body["guardrails"] = list(record.get("guardrails") or ())
        triggers = record.get("guardrail_triggers")
        if triggers:
            body["guardrail_triggers"] = orjson.dumps(triggers).decode()
        limits = record.get("limits")
        if limits:
            body["limits"] = orjson.dumps(limits).decode()
        self.logger.emit(timestamp=int(record.get("ts", time.time()) * 1e9), context=context, body=body,
                         severity_number=SeverityNumber.WARN if failed else SeverityNumber.INFO,
                         severity_text="WARN" if failed else "INFO", event_name="tollway.request",
                         attributes={"tollway.request_id": record.get("request_id") or "",
                                     "tollway.team": record.get("team") or "",
                                     "tollway.outcome": record.get("outcome") or ""})

    def close(self) -> None:
        self.provider.shutdown()
