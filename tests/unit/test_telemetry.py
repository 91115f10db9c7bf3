"""Request spans and record logs: built from the session's record and decisions, parented on traceparent;
where they go and under which service name (the flag, else OpenTelemetry's variables)."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import orjson
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ext_proc.core.actions import EmitRecord, Trace
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody
from ext_proc.core.session import Session
from ext_proc.policy.compile import compile_policy
from ext_proc.server.metrics import Names
from ext_proc.server.telemetry import RecordExporter, TelemetryConfig, Tracer, _resource
from tests.unit.test_attempt import POLICY, POLICY_TEXT
from tests.unit.test_session_routing import ANTHROPIC_MESSAGE, CHAT_REQUEST, served

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def run(session: Session, request: dict[str, Any], answer: dict[str, Any], **headers: str) -> EmitRecord:
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "r1",
                                   **headers}, False, 500_000))
    session.handle(RequestBody(orjson.dumps(request), True, 1_000_000))
    session.handle(served())  # the second target of the chain answered, after two tries
    session.handle(ResponseBody(orjson.dumps(answer), True, 250_000_000))
    emitted = [e for e in session.effects if isinstance(e, EmitRecord)]
    assert len(emitted) == 1
    return emitted[0]


def exporter_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def spans() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(provider, Names(lambda: POLICY)), exporter


def test_one_span_per_request_with_gen_ai_attributes_decisions_and_the_callers_parent(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    emitted = run(Session(POLICY, "local-dev", trace=True), CHAT_REQUEST, ANTHROPIC_MESSAGE, traceparent=PARENT,
                  tracestate="vendor=1")
    assert emitted.trace is not None
    tracer.finish(emitted.record, emitted.trace)
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat smart" and span.kind is SpanKind.CLIENT
    assert span.context.trace_id == int(TRACE_ID, 16)  # the caller's trace
    assert span.parent is not None and span.parent.span_id == 0x00f067aa0ba902b7
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.model"] == "smart"
    assert attributes["gen_ai.response.model"] == "claude-x-20250101"
    assert attributes["gen_ai.usage.input_tokens"] == 1300  # cache reads and writes included
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1000
    assert attributes["gen_ai.usage.output_tokens"] == 50
    assert attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attributes["tollway.fallback"] is True and attributes["tollway.attempts"] == 2
    assert attributes["tollway.team"] == "all" and attributes["tollway.request_id"] == "r1"
    assert not any(name.startswith("gen_ai.input") or name.startswith("gen_ai.output") for name in attributes)
    names = [event.name for event in span.events]
    assert names == ["tollway.identified", "tollway.routed", "tollway.response", "tollway.fallback"]
    routed = span.events[1]
    assert routed.attributes is not None
    assert list(routed.attributes["tollway.targets"]) == ["openai/gpt-4o", "anthropic/claude-x"]
    # The span lasts as long as the record says, and its events fall inside it.
    assert span.start_time is not None and span.end_time is not None
    assert span.end_time - span.start_time == 249_500_000
    assert all(span.start_time <= event.timestamp <= span.end_time for event in span.events)
    assert span.status.status_code is StatusCode.UNSET


def test_prompts_and_answers_only_when_the_policy_opts_in_and_then_redacted(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    secret = {"model": "smart", "messages": [{"role": "user", "content": "Mail jane.doe@example.com please"}]}
    answer = {**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": "Card 4111 1111 1111 1111 noted."}]}
    emitted = run(Session(POLICY, "local-dev", trace=True), secret, answer)
    assert emitted.trace is not None and emitted.trace.prompt is None and emitted.trace.answer is None
    opted = compile_policy(POLICY_TEXT + "telemetry: {trace_content: true}\n")
    emitted = run(Session(opted, "local-dev", trace=True), secret, answer)
    assert emitted.trace is not None
    tracer.finish(emitted.record, emitted.trace)
    span = exporter.get_finished_spans()[-1]
    attributes = dict(span.attributes or {})
    prompt = orjson.loads(str(attributes["gen_ai.input.messages"]))
    output = orjson.loads(str(attributes["gen_ai.output.messages"]))
    assert prompt == [{"role": "user", "parts": [{"type": "text", "content": "Mail [EMAIL_1] please"}]}]
    assert output[0]["parts"][0]["content"] == "Card [CREDIT_CARD_1] noted."
    assert output[0]["finish_reason"] == "end_turn"
    assert "jane.doe" not in str(span.to_json()) and "4111" not in str(span.to_json())


GUARDED_TEXT = POLICY_TEXT + textwrap.dedent("""\
    telemetry: {trace_content: true}
    guardrails:
      custom:
        codenames: {words: [bluebird], label: CODENAME}
        ticket: {pattern: "TCK-[0-9]{6}"}
      rules:
        - {name: names, detectors: [codenames], action: redact, direction: both}
        - {name: tickets, detectors: [ticket], action: block, direction: response}
    """)
TOLLWAY_KEY = "tw-Qd8NTWKtkNOmWFBsVD0xHEZZEPZvJ1mZ4EPbEuT1GAx"


def test_a_trace_never_carries_what_the_policy_guards_in_answers_nor_a_withheld_answer(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    """The answer in a span is the provider's text, read before the client's guardrails acted: a
    value a response rule finds is its placeholder there too, a blocked answer is not there at all,
    and a Tollway key pasted into a prompt is a credential the built-in redaction removes."""
    tracer, exporter = spans
    policy = compile_policy(GUARDED_TEXT)
    asked = {"model": "smart", "messages": [{"role": "user", "content": f"status? my key is {TOLLWAY_KEY}"}]}
    for said, shown in (("Project bluebird is on track.", "Project [CODENAME_1] is on track."),
                        ("Your ticket is TCK-123456.", None)):
        answer = {**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": said}]}
        emitted = run(Session(policy, "local-dev", trace=True), asked, answer)
        assert emitted.trace is not None and emitted.trace.answer == shown
        tracer.finish(emitted.record, emitted.trace)
        exported = str(exporter.get_finished_spans()[-1].to_json())
        assert "bluebird" not in exported and "TCK-123456" not in exported and TOLLWAY_KEY not in exported
        assert "[TOLLWAY_KEY_1]" in exported


def test_a_request_refused_before_it_went_upstream_has_no_prompt_in_its_span(
        spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    """A guardrail's block (or a limit, a model not allowed) refuses the request before it goes: its
    prompt never went anywhere, and is not the prompt "after the guardrails" a span may carry."""
    tracer, exporter = spans
    policy = compile_policy(GUARDED_TEXT.replace("action: redact, direction: both", "action: block"))
    session = Session(policy, "local-dev", trace=True)
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "r1"},
                                  False, 0))
    session.handle(RequestBody(orjson.dumps({"model": "smart", "messages": [
        {"role": "user", "content": "project bluebird ships friday"}]}), True, 1000))
    (emitted,) = [e for e in session.effects if isinstance(e, EmitRecord)]
    assert emitted.record["outcome"] == "rejected" and emitted.record["error"] == "guardrail_blocked"
    assert emitted.trace is not None and emitted.trace.prompt is None
    tracer.finish(emitted.record, emitted.trace)
    assert "bluebird" not in str(exporter.get_finished_spans()[-1].to_json())


def test_the_tracer_redacts_the_policys_custom_detectors_too(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    """The tracer's own redaction, behind the guardrails, knows the policy's custom detectors."""
    _, exporter = spans
    policy = compile_policy(GUARDED_TEXT)
    provider = exporter_provider(exporter)
    tracer = Tracer(provider, Names(lambda: policy))
    emitted = run(Session(POLICY, "local-dev", trace=True), CHAT_REQUEST, ANTHROPIC_MESSAGE)
    assert emitted.trace is not None
    trace = dataclasses.replace(emitted.trace, prompt=(("user", "bluebird, TCK-123456, jane@example.com"),))
    tracer.finish(emitted.record, trace)
    prompt = orjson.loads(str(dict(exporter.get_finished_spans()[-1].attributes or {})["gen_ai.input.messages"]))
    assert prompt[0]["parts"][0]["content"] == "[CODENAME_1], [TICKET_1], [EMAIL_1]"


def test_the_prompt_of_a_translated_request_is_read_as_it_went() -> None:
    """One target of the other API: the body went in its API (Anthropic's top-level system too)."""
    opted = compile_policy(POLICY_TEXT + "telemetry: {trace_content: true}\n")
    request = {"model": "claude-x", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi there"}]}
    emitted = run(Session(opted, "local-dev", trace=True), request, ANTHROPIC_MESSAGE)
    assert emitted.trace is not None and emitted.trace.prompt == (("system", "Be brief."), ("user", "Hi there"))


def test_no_tracer_no_trace_data() -> None:
    session = Session(POLICY, "local-dev")
    emitted = run(session, CHAT_REQUEST, ANTHROPIC_MESSAGE, traceparent=PARENT)
    assert emitted.trace is None and session.flow.trace is None


def test_the_callers_sampling_decision_then_the_head_ratio(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    tracer.ratio = 0.0
    unsampled = PARENT[:-2] + "00"
    for headers, expected in (({"traceparent": unsampled}, 0), ({}, 0), ({"traceparent": PARENT}, 1),
                              ({"traceparent": "garbage"}, 1)):
        emitted = run(Session(POLICY, "local-dev", trace=True), CHAT_REQUEST, ANTHROPIC_MESSAGE, **headers)
        assert emitted.trace is not None
        if headers.get("traceparent") == "garbage":
            tracer.ratio = 1.0  # an unreadable traceparent: the head ratio decides
        before = len(exporter.get_finished_spans())
        tracer.finish(emitted.record, emitted.trace)
        assert len(exporter.get_finished_spans()) - before == expected, headers


def test_a_refusal_is_an_event_and_an_error_type(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = spans
    session = Session(POLICY, "local-dev", trace=True)
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 0))
    session.handle(RequestBody(b'{"model": "no-such-model", "messages": []}', True, 1000))
    (emitted,) = [e for e in session.effects if isinstance(e, EmitRecord)]
    assert emitted.trace is not None
    tracer.finish(emitted.record, emitted.trace)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # no traceparent: a root span
    assert (span.attributes or {})["error.type"] == "model_not_found"
    assert [event.name for event in span.events][-1] == "tollway.refused"
    assert span.status.status_code is StatusCode.UNSET  # the caller's mistake, not a fault


def test_a_span_is_named_by_the_models_bounded_label(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    """A model the policy does not know names its span "other" (as its metrics' label): a caller
    sending sampled traceparents made one span name per made-up model. Its own name stays in
    gen_ai.request.model; a known model names its span."""
    tracer, exporter = spans
    for model in ("made-up-1", "made-up-2", "smart"):
        record = {"request_id": "r1", "api": "openai.chat.completions", "model": model, "outcome": "rejected",
                  "status": 404, "error": "model_not_found"}
        tracer.finish(record, Trace(started=1_000, ended=2_000, traceparent=PARENT))
    assert [(span.name, (span.attributes or {})["gen_ai.request.model"]) for span in exporter.get_finished_spans()] \
        == [("chat other", "made-up-1"), ("chat other", "made-up-2"), ("chat smart", "smart")]
    # Open mode (no policy): the first names seen, bounded as the metrics' are.
    exporter.clear()
    open_mode = Tracer(tracer.provider, Names(lambda: None, cap=1))
    for model in ("gpt-4o-mini", "made-up-1", "gpt-4o-mini"):
        record = {"request_id": "r1", "api": "openai.chat.completions", "model": model, "outcome": "ok", "status": 200}
        open_mode.finish(record, Trace(started=1_000, ended=2_000, traceparent=PARENT))
    assert [span.name for span in exporter.get_finished_spans()] == ["chat gpt-4o-mini", "chat other",
                                                                      "chat gpt-4o-mini"]


def test_records_as_logs_linked_to_their_span(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, _ = spans
    logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    emitted = run(Session(POLICY, "local-dev", trace=True), CHAT_REQUEST, ANTHROPIC_MESSAGE, traceparent=PARENT)
    assert emitted.trace is not None
    record = {**emitted.record, "ts": 1_800_000_000.5}
    span = tracer.finish(record, emitted.trace)
    RecordExporter(provider).emit(record, span)
    (log,) = logs.get_finished_logs()
    assert log.log_record.event_name == "tollway.request"
    assert log.log_record.trace_id == int(TRACE_ID, 16)
    body = log.log_record.body
    assert isinstance(body, dict) and body["request_id"] == "r1" and body["output_tokens"] == 50
    assert body["provider"] == "anthropic" and log.log_record.timestamp == 1_800_000_000_500_000_000


def test_readers_learn_why_the_model_stopped() -> None:
    from ext_proc.llm.apis import CHAT_COMPLETIONS, MESSAGES, RESPONSES
    from ext_proc.llm.sse import SSEEvent

    def events(reader: Any, *chunks: tuple[str, dict[str, Any]]) -> list[str]:
        for name, data in chunks:
            body = orjson.dumps(data)
            reader.feed(SSEEvent(name, body, body))
        return list(reader.finish_reasons)

    delta = {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    last = {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    assert events(CHAT_COMPLETIONS.reader(), ("", delta), ("", delta), ("", last)) == ["length"]
    assert events(MESSAGES.reader(), ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                                        "usage": {"output_tokens": 3}})) == ["tool_use"]
    incomplete = {"type": "response.incomplete", "response": {"model": "gpt-5", "status": "incomplete",
                                                              "incomplete_details": {"reason": "max_output_tokens"}}}
    assert events(RESPONSES.reader(), ("response.incomplete", incomplete)) == ["max_output_tokens"]
    whole = CHAT_COMPLETIONS.reader()
    whole.whole({"choices": [{"finish_reason": "stop"}, {"finish_reason": "content_filter"}]})
    assert whole.finish_reasons == ["stop", "content_filter"]


def test_a_request_that_is_not_inference_has_no_gen_ai_operation(spans: tuple[Tracer, InMemorySpanExporter]) -> None:
    # The conventions' gen_ai.operation.name values (chat, text_completion, embeddings, ...) name no token
    # count and no model list: such a span leaves the attribute out and is named after Tollway's API.
    tracer, exporter = spans
    for api, model in (("anthropic.count_tokens", "claude-x"), ("openai.models", None)):
        record = {"request_id": "r1", "api": api, "model": model, "provider": None, "outcome": "ok", "status": 200}
        tracer.finish(record, Trace(started=1_000, ended=2_000, traceparent=PARENT))
    counted, listed = exporter.get_finished_spans()
    assert (counted.name, listed.name) == ("anthropic.count_tokens claude-x", "openai.models")
    for span in (counted, listed):
        attributes = dict(span.attributes or {})
        assert "gen_ai.operation.name" not in attributes
        assert attributes["tollway.api"] in ("anthropic.count_tokens", "openai.models")


OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                  "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def endpoints(config: TelemetryConfig) -> tuple[str, str]:
    """Where the exporters Tollway builds for ``config`` send spans and logs."""
    tracer, records = Tracer.exporting(config), RecordExporter.exporting(config)
    try:
        (spans,) = tracer.provider._active_span_processor._span_processors
        (logs,) = records.provider._multi_log_record_processor._log_record_processors
        return (spans._batch_processor._exporter._endpoint, logs._batch_processor._exporter._endpoint)
    finally:
        tracer.close()
        records.close()


def test_a_signals_own_endpoint_variable_wins_over_the_generic_one(environment: pytest.MonkeyPatch) -> None:
    """OpenTelemetry's rule: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (a full URL) over OTEL_EXPORTER_OTLP_ENDPOINT
    (a base URL). The generic one was copied into an explicit URL, which overrode the signal's own."""
    assert TelemetryConfig.from_environment(None, True) is None  # nothing configured: no tracer at all
    environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318")
    config = TelemetryConfig.from_environment(None, True)
    assert config is not None and config.traces and config.logs
    assert endpoints(config) == ("http://generic:4318/v1/traces", "http://generic:4318/v1/logs")
    environment.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4318/v1/traces")
    environment.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://loki:3100/otlp/v1/logs")
    config = TelemetryConfig.from_environment(None, True)
    assert config is not None and endpoints(config) == ("http://tempo:4318/v1/traces", "http://loki:3100/otlp/v1/logs")
    # Tollway's own flag (--otlp-endpoint, TOLLWAY_OTLP_ENDPOINT) wins over every variable.
    config = TelemetryConfig.from_environment("http://collector:4318/", True)
    assert config is not None and endpoints(config) == ("http://collector:4318/v1/traces",
                                                        "http://collector:4318/v1/logs")
    # A signal's own variable alone turns that signal on, and only that one.
    environment.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    environment.delenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    config = TelemetryConfig.from_environment(None, True)
    assert config is not None and (config.traces, config.logs) == (True, False)
    environment.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    environment.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://loki:3100/otlp/v1/logs")
    config = TelemetryConfig.from_environment(None, True)
    assert config is not None and (config.traces, config.logs) == (False, True)
    assert TelemetryConfig.from_environment(None, False) is None  # logs not asked for


def test_the_service_is_named_by_the_environment_else_tollway(environment: pytest.MonkeyPatch) -> None:
    """OTEL_RESOURCE_ATTRIBUTES' service.name (the OpenTelemetry operator sets it) was overridden by
    Tollway's default."""
    config = TelemetryConfig("http://collector:4318")
    assert _resource(config).attributes["service.name"] == "tollway"
    environment.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=p1,k8s.namespace.name=ai")
    attributes = _resource(config).attributes
    assert attributes["service.name"] == "tollway" and attributes["k8s.pod.name"] == "p1"
    environment.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=payments-gateway,k8s.pod.name=p1")
    attributes = _resource(config).attributes
    assert attributes["service.name"] == "payments-gateway" and attributes["k8s.pod.name"] == "p1"
    environment.setenv("OTEL_SERVICE_NAME", "gateway")  # wins over OTEL_RESOURCE_ATTRIBUTES, as the SDK has it
    assert _resource(config).attributes["service.name"] == "gateway"
