"""Observability end to end: after a scripted mix of requests through a real Envoy and two service
workers, ``/metrics`` (summed over the workers), the dashboard (in a real headless Chromium),
``tollway report`` and the request log agree exactly; every request left one span and one log
record at an OTLP/HTTP collector, in the caller's trace, without the prompt's values.
"""

from __future__ import annotations

import gzip
import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import openai
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from ext_proc.ledger.report import dollars
from ext_proc.policy.compiled import key_digest
from tests.e2e.conftest import Providers

pytestmark = pytest.mark.e2e

SEARCH, ADS = "tw-search-observed-key-0123456789abcdefghijklm", "tw-ads-observed-key-0123456789abcdefghijklmnop"
OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-observed-01", "sk-ant-observed-02"
POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: OB_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: OB_ANTHROPIC_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai}}
  claude-haiku: {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  search: {{keys: [{{id: search-ci, sha256: "{key_digest(SEARCH)}"}}], models: ["*"]}}
  ads: {{keys: [{{id: ads-ci, sha256: "{key_digest(ADS)}"}}], models: [gpt-4o-mini, chat]}}
budgets:
  ads-daily: {{team: ads, tokens: 300, period: day}}
guardrails:
  rules:
    - {{name: pii, detectors: [email], action: redact}}
routing:
  aliases:
    chat:
      targets:
        - {{provider: openai, model: gpt-4o-mini}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
"""
HI = [{"role": "user", "content": "hi"}]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps what arrives at /v1/traces and /v1/logs."""

    received: ClassVar[dict[str, list[bytes]]] = {"/v1/traces": [], "/v1/logs": []}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, collector: str) -> Iterator[Providers]:
    stack = Providers.stack(
        tmp_path_factory.mktemp("observed"), POLICY,
        {"OB_OPENAI_KEY": OPENAI_KEY, "OB_ANTHROPIC_KEY": ANTHROPIC_KEY,
         "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100"},
        workers=2, serve_args=("--otlp-endpoint", collector, "--otlp-logs", "--trace-sample-ratio", "1"))
    with stack:
        yield Providers(stack, SEARCH)


def client(env: Providers, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.base_url + "/v1", api_key=key, max_retries=0, timeout=10)


def scripted(env: Providers) -> int:
    """Several teams and models, a fallback, refusals, a cut stream, guardrail and budget events."""
    search, ads = client(env, SEARCH), client(env, ADS)
    sent = 0
    for _ in range(3):
        search.chat.completions.create(model="gpt-4o-mini", messages=HI)  # type: ignore[arg-type]
        sent += 1
    search.chat.completions.create(model="claude-haiku", messages=HI, extra_headers={  # type: ignore[arg-type]
        "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"})
    search.chat.completions.create(model="gpt-4o-mini", messages=[  # type: ignore[arg-type]
        {"role": "user", "content": "Write to jane.doe@example.com about the invoice"}])
    stream = search.chat.completions.create(model="claude-haiku", messages=HI, stream=True)  # type: ignore[arg-type]
    assert [chunk for chunk in stream]
    sent += 3
    # The alias's first target fails: Anthropic serves (a fallback).
    answer = search.chat.completions.with_raw_response.create(model="chat", messages=HI,  # type: ignore[arg-type]
                                                              extra_headers={"x-mock-openai-status": "429"})
    assert answer.headers["x-tollway-provider"] == "anthropic"
    sent += 1
    # A stream the provider cuts after three events.
    with pytest.raises(openai.APIError):
        for _ in search.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True,  # type: ignore[arg-type]
                                                extra_headers={"x-mock-cut-after": "3"}):
            pass
    sent += 1
    ads.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=40)  # type: ignore[arg-type]
    sent += 1
    for refused in (  # a model the team may not use, an unknown model, a claim bigger than the budget
        lambda: ads.chat.completions.create(model="claude-haiku", messages=HI),  # type: ignore[arg-type]
        lambda: ads.chat.completions.create(model="no-such-model", messages=HI),  # type: ignore[arg-type]
        lambda: ads.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=400),  # type: ignore[arg-type]
    ):
        with pytest.raises(openai.APIStatusError):
            refused()
        sent += 1
    return sent


def metrics(env: Providers) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{env.stack.service_admin_port}/metrics", timeout=5).read()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(value for got, value in found.get(name, []) if all(got.get(k) == v for k, v in labels.items()))


def expected(records: list[dict[str, Any]], **where: Any) -> dict[str, int]:
    """The ledger's own totals for the records matching ``where``."""
    chosen = [r for r in records if all(r.get(k) == v for k, v in where.items())]
    reached = [r for r in chosen if r["outcome"] != "rejected"]
    return {
        "requests": len(chosen), "refused": len(chosen) - len(reached),
        "input_tokens": sum(r["input_tokens"] or 0 for r in reached if r["provider"]),
        "output_tokens": sum(r["output_tokens"] or 0 for r in reached if r["provider"]),
        "cost_usd_micros": sum(r["cost_usd_micros"] or 0 for r in reached),
        "fallbacks": sum(r["fallback"] is True for r in reached),
        "incomplete": sum(r["outcome"] == "incomplete" for r in chosen),
        "errors": sum(r["outcome"] == "error" for r in chosen),
        "guardrail_triggers": sum(bool(r["guardrails"]) for r in reached),
    }


def as_metrics(found: dict[str, list[tuple[dict[str, str], float]]], team: str | None = None,
               model: str | None = None) -> dict[str, int]:
    """The same totals, read from the scrape (-1: the metric has no such label)."""
    tollway = {k: v for k, v in (("team", team), ("model", model)) if v is not None}
    gen_ai = {k: v for k, v in (("team", team), ("gen_ai_request_model", model)) if v is not None}

    def count(name: str, **labels: str) -> int:
        return round(total(found, name, **labels))

    return {
        "requests": count("tollway_requests_total", **tollway),
        "refused": count("tollway_requests_total", outcome="rejected", **tollway),
        "input_tokens": count("gen_ai_client_inference_usage_input_tokens_total", **gen_ai),
        "output_tokens": count("gen_ai_client_inference_usage_output_tokens_total", **gen_ai),
        "cost_usd_micros": round(total(found, "tollway_cost_usd_total", **tollway) * 1e6),
        "fallbacks": -1 if team else count("tollway_fallbacks_total", **tollway),
        "incomplete": count("tollway_requests_total", outcome="incomplete", **tollway),
        "errors": count("tollway_requests_total", outcome="error", **tollway),
        "guardrail_triggers": -1 if tollway else count("tollway_guardrail_requests_total"),
    }


def test_metrics_dashboard_report_and_ledger_agree(env: Providers, tmp_path: Path) -> None:
    sent = scripted(env)
    deadline = time.monotonic() + 10
    while len(env.records()) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    records = env.records()
    assert len(records) == sent
    outcomes = Counter(r["outcome"] for r in records)
    assert outcomes["rejected"] == 3 and outcomes["incomplete"] == 1 and sum(r["fallback"] for r in records) == 1
    assert {r["error"] for r in records if r["outcome"] == "rejected"} == {
        "model_not_allowed", "model_not_found", "budget_exceeded"}
    assert {r["team"] for r in records} == {"search", "ads"}
    ledger = expected(records)

    # /metrics, summed over both workers (each writes its counts twice a second): equal to the ledger.
    deadline = time.monotonic() + 5
    while True:
        found = metrics(env)
        if as_metrics(found) == ledger or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert as_metrics(found) == ledger
    for team in ("search", "ads"):
        mine, theirs = as_metrics(found, team=team), expected(records, team=team)
        for name in ("requests", "refused", "input_tokens", "output_tokens", "cost_usd_micros", "incomplete"):
            assert mine[name] == theirs[name], (team, name)
    # A model name the policy does not know (the 404's) is counted under "other", never as a label of its own.
    labelled = [{**r, "model": r["model"] if r["model"] in ("gpt-4o-mini", "claude-haiku", "chat") else "other"}
                for r in records]
    assert "no-such-model" in {r["model"] for r in records} and "other" in {r["model"] for r in labelled}
    for model in {r["model"] for r in labelled}:
        mine, theirs = as_metrics(found, model=model), expected(labelled, model=model)
        for name in ("requests", "refused", "input_tokens", "output_tokens", "cost_usd_micros", "fallbacks"):
            assert mine[name] == theirs[name], (model, name)
    assert total(found, "tollway_budget_refusals_total", budget="ads-daily") == 1
    assert total(found, "tollway_requests_refused_total", code="model_not_allowed") == 1
    assert total(found, "tollway_guardrail_triggers_total", guardrail="pii", detector="email", action="redact") == 1
    ads_spent = sum((r["input_tokens"] or 0) + (r["output_tokens"] or 0) for r in records
                    if r["team"] == "ads" and r["outcome"] == "ok")
    deadline = time.monotonic() + 5  # workers report their leases' spend to the store every 0.2 s
    while total(found, "tollway_budget_spent_tokens", budget="ads-daily", member="ads") != ads_spent:
        assert time.monotonic() < deadline, found.get("tollway_budget_spent_tokens")
        time.sleep(0.2)
        found = metrics(env)
    assert total(found, "tollway_budget_limit_tokens", budget="ads-daily", member="ads") == 300
    streams = [r for r in records if r["ttft_ms"] is not None]
    assert total(found, "gen_ai_client_inference_time_to_first_chunk_seconds_count") == len(streams)
    assert total(found, "tollway_policy_reloads_total", result="ok") == 1  # the parent's state, not summed
    assert not any(SEARCH in str(labels) or "search-ci" in str(labels) or r["request_id"] in str(labels)
                   for samples in found.values() for labels, _ in samples for r in records)

    # tollway report (the CLI, reading the log) says the same.
    for by in ("team", "model"):
        out = subprocess.run([sys.executable, "-m", "ext_proc.cli", "report", "--log", str(env.stack.record_log),
                              "--by", by, "--format", "json"], capture_output=True, check=True).stdout
        for row in orjson.loads(out)["rows"] if isinstance(orjson.loads(out), dict) else orjson.loads(out):
            theirs = expected(records, **{by: row["group"]})
            assert (row["requests"], row["refused"], row["cost_usd_micros"], row["fallbacks"]) == (
                theirs["requests"], theirs["refused"], theirs["cost_usd_micros"], theirs["fallbacks"]), row

    # The dashboard's data, and the page a person sees in Chromium.
    admin = f"http://127.0.0.1:{env.stack.service_admin_port}"
    data = orjson.loads(urllib.request.urlopen(admin + "/v1/dashboard?hours=1", timeout=5).read())
    totals = data["totals"]
    for name in ("requests", "refused", "cost_usd_micros", "fallbacks", "incomplete", "errors", "guardrail_triggers"):
        assert totals[name] == ledger[name], name
    assert totals["input_tokens"] + totals["output_tokens"] == ledger["input_tokens"] + ledger["output_tokens"]
    shown = page(admin, tmp_path / "dashboard.png")
    print(f"dashboard screenshot: {tmp_path / 'dashboard.png'}")
    assert shown["total-cost"] == [str(ledger["cost_usd_micros"]), dollars(ledger["cost_usd_micros"])]
    assert shown["total-requests"][0] == str(ledger["requests"])
    assert shown["total-refused"][0] == str(ledger["refused"])
    assert shown["total-input"][0] == str(totals["input_tokens"])
    assert shown["total-fallbacks"][0] == str(ledger["fallbacks"])
    assert shown["total-incomplete"][0] == str(ledger["incomplete"])
    assert shown["total-guardrails"][0] == str(ledger["guardrail_triggers"])
    for team in ("search", "ads"):
        theirs = expected(records, team=team)
        row = shown[f"teams/{team}"]
        assert (row[0], row[1], row[4]) == (str(theirs["requests"]), str(theirs["refused"]),
                                            str(theirs["cost_usd_micros"]))
    for model in {r["model"] for r in records}:
        assert shown[f"models/{model}"][0] == str(expected(records, model=model)["requests"])
        assert shown[f"models/{model}"][4] == str(expected(records, model=model)["cost_usd_micros"])
    assert shown["budgets/ads-daily/ads/tokens"][0] == str(ads_spent)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # Traces and records as logs, at the collector.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = [span for body in Collector.received["/v1/traces"] for resource in
                 ExportTraceServiceRequest.FromString(body).resource_spans for scope in resource.scope_spans
                 for span in scope.spans]
        logs = [log for body in Collector.received["/v1/logs"] for resource in
                ExportLogsServiceRequest.FromString(body).resource_logs for scope in resource.scope_logs
                for log in scope.log_records]
        if len(spans) >= sent and len(logs) >= sent:
            break
        time.sleep(0.1)
    assert len(spans) == sent and len(logs) == sent
    by_request = {next(a.value.string_value for a in span.attributes if a.key == "tollway.request_id"): span
                  for span in spans}
    assert set(by_request) == {r["request_id"] for r in records}
    traced = next(r for r in records if r["model"] == "claude-haiku" and not r["stream"] and r["team"] == "search")
    span = by_request[traced["request_id"]]
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == "b7ad6b7169203331"
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["gen_ai.provider.name"].string_value == "anthropic"
    assert attributes["gen_ai.usage.output_tokens"].int_value == traced["output_tokens"]
    assert list(attributes["gen_ai.response.finish_reasons"].array_value.values)
    everything = b"".join(Collector.received["/v1/traces"] + Collector.received["/v1/logs"])
    assert b"jane.doe" not in everything and SEARCH.encode() not in everything


def page(admin: str, screenshot: Path) -> dict[str, Any]:
    """What the dashboard shows in a headless Chromium: the headline numbers (their exact value and
    text) and each table row's exact values, by table and row."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        try:
            view = browser.new_page(viewport={"width": 1300, "height": 1000})
            elsewhere: list[str] = []
            view.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(admin) else None)
            failures: list[str] = []
            view.on("console", lambda m: failures.append(m.text) if m.type == "error" else None)
            view.goto(admin + "/dashboard")
            view.wait_for_selector("body[data-loaded]", timeout=10_000)
            shown: dict[str, Any] = view.evaluate("""() => {
                const out = {};
                for (const el of document.querySelectorAll('.kpi [id]'))
                    out[el.id] = [el.dataset.value, el.textContent];
                for (const table of ['teams', 'models', 'budgets'])
                    for (const tr of document.getElementById(table).tBodies[0].rows)
                        if (tr.dataset.group)
                            out[table + '/' + tr.dataset.group] = [...tr.cells].slice(table === 'budgets' ? 2 : 1)
                                .map(td => td.dataset.value);
                return out;
            }""")
            view.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert elsewhere == [] and failures == [], (elsewhere, failures)  # offline: nothing fetched elsewhere
    return shown
