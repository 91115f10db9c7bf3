"""Metrics from records: what each record adds, bounded labels, and the sum across worker files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ext_proc.llm.apis import ANTHROPIC_MODELS, APIS, OPENAI_MODELS
from ext_proc.policy.compile import compile_policy
from ext_proc.server.collectors import BudgetCollector, TallyCollector
from ext_proc.server.metrics import OPERATIONS, Exchange, Names, Tally
from ext_proc.state.rows import LOOKUP_APIS

POLICY = compile_policy("""
apiVersion: tollway/v1
providers: {openai: {kind: openai}, claude: {kind: anthropic}, eu: {kind: azure-openai, api_version: "2024-10-21"}}
models: {gpt-4o-mini: {provider: openai}, claude-haiku: {provider: claude, model: claude-3-5-haiku-20241022}}
teams: {search: {workloads: [w], models: ["*"]}}
routing: {aliases: {chat: {targets: [{provider: openai, model: gpt-4o-mini}, {provider: claude, model: claude-x}]}}}
""")

OK: dict[str, Any] = {"request_id": "r1", "team": "search", "key_id": "search-ci", "api": "openai.chat.completions",
                      "model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024-07-18", "provider": "openai",
                      "stream": True, "status": 200, "outcome": "ok", "error": None, "input_tokens": 20,
                      "output_tokens": 11, "cached_tokens": 4, "cache_write_tokens": None, "reasoning_tokens": 3,
                      "attempts": 2, "fallback": True, "latency_ms": 1200.0, "ttft_ms": 200.0,
                      "cost_usd_micros": 1234, "guardrails": ["pii"],
                      "guardrail_triggers": [{"guardrail": "pii", "detector": "email", "action": "redact",
                                              "direction": "request", "count": 2}], "injection_score": 0.12}
REFUSED: dict[str, Any] = {"request_id": "r2", "team": "search", "api": "openai.chat.completions",
                           "model": "gpt-4o-mini", "provider": None, "status": 429, "outcome": "rejected",
                           "error": "budget_exceeded", "limit": "search-daily", "input_tokens": None,
                           "output_tokens": None, "latency_ms": 0.4, "cost_usd_micros": None,
                           "injection_score": 0.91}


def scrape(*tallies: Tally) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape over these tallies, keyed by name and labels."""
    exchange = Exchange(tallies[0], None)
    registry = CollectorRegistry()
    registry.register(TallyCollector(exchange.totals))
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_a_request_a_guardrail_blocked_counts_as_a_trigger() -> None:
    tally = Tally(Names(lambda: POLICY))
    blocked = {**REFUSED, "status": 400, "error": "guardrail_blocked", "limit": None, "guardrails": ["pii"],
               "guardrail_triggers": [{"guardrail": "pii", "detector": "email", "action": "block",
                                       "direction": "request", "count": 1}]}
    tally.record(blocked)
    got = scrape(tally)
    assert got[("tollway_guardrail_requests_total", (("guardrail", "pii"), ("model", "gpt-4o-mini"),
                                                     ("team", "search")))] == 1
    assert got[("tollway_guardrail_triggers_total", (("action", "block"), ("detector", "email"),
                                                     ("direction", "request"), ("guardrail", "pii"),
                                                     ("team", "search")))] == 1
    assert got[("tollway_requests_refused_total", (("api", "openai.chat.completions"),
                                                   ("code", "guardrail_blocked")))] == 1


def test_a_record_adds_to_every_metric_it_concerns() -> None:
    tally = Tally(Names(lambda: POLICY))
    tally.record(OK)
    tally.record(REFUSED)
    got = scrape(tally)
    common = (("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "openai"),
              ("gen_ai_request_model", "gpt-4o-mini"))
    tokens = tuple(sorted((*common, ("gen_ai_response_model", "gpt-4o-mini-2024-07-18"),
                           ("gen_ai_token_modality", "unknown"), ("team", "search"), ("provider", "openai"))))
    assert got[("gen_ai_client_inference_usage_input_tokens_total", tokens)] == 20
    assert got[("gen_ai_client_inference_usage_output_tokens_total", tokens)] == 11
    assert got[("gen_ai_client_inference_usage_cache_read_input_tokens_total", tokens)] == 4
    assert got[("gen_ai_client_inference_usage_reasoning_output_tokens_total", tokens)] == 3
    assert ("gen_ai_client_inference_usage_cache_write_input_tokens_total", tokens) not in got  # unknown: no sample
    cost = (("model", "gpt-4o-mini"), ("provider", "openai"), ("team", "search"))
    assert got[("tollway_cost_usd_total", cost)] == 0.001234
    assert got[("tollway_fallbacks_total", (("model", "gpt-4o-mini"), ("provider", "openai")))] == 1
    assert got[("tollway_provider_attempts_total", (("model", "gpt-4o-mini"),))] == 2
    assert got[("tollway_guardrail_requests_total", (("guardrail", "pii"), ("model", "gpt-4o-mini"),
                                                     ("team", "search")))] == 1
    assert got[("tollway_guardrail_triggers_total", (("action", "redact"), ("detector", "email"),
                                                     ("direction", "request"), ("guardrail", "pii"),
                                                     ("team", "search")))] == 2
    assert got[("tollway_budget_refusals_total", (("budget", "search-daily"),))] == 1
    # Every scored request's injection score, refused ones too: where a team's traffic sits.
    assert got[("tollway_injection_score_count", (("team", "search"),))] == 2
    assert got[("tollway_injection_score_bucket", (("le", "0.2"), ("team", "search")))] == 1
    assert got[("tollway_injection_score_bucket", (("le", "0.9"), ("team", "search")))] == 1
    assert got[("tollway_injection_score_bucket", (("le", "0.95"), ("team", "search")))] == 2
    assert got[("tollway_requests_refused_total", (("api", "openai.chat.completions"),
                                                   ("code", "budget_exceeded")))] == 1
    ok = (("api", "openai.chat.completions"), ("model", "gpt-4o-mini"), ("outcome", "ok"), ("provider", "openai"),
          ("status", "200"), ("team", "search"))
    assert got[("tollway_requests_total", ok)] == 1
    # Durations in seconds, in the conventions' buckets; a refused request has no latency sample.
    duration = tuple(sorted((*common, ("error_type", ""), ("team", "search"), ("provider", "openai"))))
    assert got[("gen_ai_client_inference_duration_seconds_count", duration)] == 1
    assert got[("gen_ai_client_inference_duration_seconds_sum", duration)] == 1.2
    assert got[("gen_ai_client_inference_duration_seconds_bucket", tuple(sorted((*duration, ("le", "1.28")))))] == 1
    assert got[("gen_ai_client_inference_duration_seconds_bucket", tuple(sorted((*duration, ("le", "0.64")))))] == 0
    ttft = tuple(sorted((*common, ("team", "search"), ("provider", "openai"))))
    assert got[("gen_ai_client_inference_time_to_first_chunk_seconds_sum", ttft)] == 0.2
    assert got[("tollway_time_per_output_token_seconds_sum", ttft)] == 0.1  # (1.2 s - 0.2 s) / (11 - 1)


def test_every_api_is_inference_or_a_lookup_alike_for_metrics_and_reports() -> None:
    """The gen_ai metrics count the APIs of OPERATIONS; reports count the rest as lookups (no model
    call: the reports' latencies leave them out, as the duration histogram does)."""
    names = {api.name for api in (*APIS, OPENAI_MODELS, ANTHROPIC_MODELS)}
    assert set(OPERATIONS) | LOOKUP_APIS == names and not set(OPERATIONS) & LOOKUP_APIS


def test_labels_are_bounded() -> None:
    tally = Tally(Names(lambda: POLICY, cap=2))
    known = ("gpt-4o-mini", "claude-haiku", "claude-3-5-haiku-20241022", "chat", "claude-x")
    for model in ("made-up-1", "made-up-2", "made-up-3", *known):
        tally.record({**REFUSED, "model": model, "error": "model_not_found", "status": 404, "key_id": "k"})
    models = {key[3] for key in tally.counters if key[0] == "tollway_requests"}
    # The names the policy knows (public, alias, upstream); what a caller made up is "other" and takes no
    # slot. No key id, no request id anywhere.
    assert models == {*known, "other"}
    assert not tally.names.served
    assert not any("k" in key[1:] or "r2" in key[1:] for key in tally.counters)
    # The model that served: the policy's names always, two others, then "other".
    for served in ("snapshot-1", "snapshot-2", "snapshot-3", "claude-3-5-haiku-20241022"):
        tally.record({**OK, "served_model": served})
    assert served_labels(tally) == {"snapshot-1", "snapshot-2", "other", "claude-3-5-haiku-20241022"}
    assert Names(lambda: POLICY).provider_kind("eu") == "azure.ai.openai"


def test_without_a_policy_the_first_model_names_seen_are_labels() -> None:
    """Open mode knows no names: the first ones seen are labels, then "other" (bounded all the same)."""
    tally = Tally(Names(lambda: None, cap=2))
    for model in ("gpt-4o-mini", "gpt-4o", "made-up"):
        tally.record({**REFUSED, "model": model, "error": "model_not_found", "status": 404})
    assert {key[3] for key in tally.counters if key[0] == "tollway_requests"} == {"gpt-4o-mini", "gpt-4o", "other"}


def served_labels(tally: Tally) -> set[str]:
    return {key[4] for key in tally.counters if key[0] == "gen_ai_client_inference_usage_input_tokens"}


def test_a_restarted_worker_reuses_its_predecessors_served_model_labels(tmp_path: Path) -> None:
    # A worker gave its two slots to served-model names, wrote its file, and died (SIGKILL: the file stays).
    dead = Tally(Names(lambda: POLICY, cap=2))
    for served in ("snapshot-1", "snapshot-2"):
        dead.record({**OK, "served_model": served})
    gone = Exchange(dead, str(tmp_path))
    gone.path = str(tmp_path / "worker-1.json")  # no such process
    gone.write()
    # Its successor starts with those two labels taken: a third name is "other", not a fresh set of two.
    successor = Tally(Names(lambda: POLICY, cap=2))
    exchange = Exchange(successor, str(tmp_path))
    for served in ("snapshot-3", "snapshot-1"):
        successor.record({**OK, "served_model": served})
    assert served_labels(successor) == {"other", "snapshot-1"}
    merged = exchange.totals()
    assert merged.labels("gen_ai_response_model") == {"snapshot-1", "snapshot-2", "other"}


def test_every_try_at_a_provider_is_counted_whatever_the_api() -> None:
    # Anthropic's count_tokens forwarded to Anthropic: not inference, but a request that reached a provider,
    # so its try is an attempt (requests that reached a provider minus attempts: retries, never negative).
    tally = Tally(Names(lambda: POLICY))
    count = {**OK, "api": "anthropic.count_tokens", "model": "claude-haiku", "provider": "claude",
             "served_model": None, "attempts": 1, "fallback": False, "input_tokens": None, "output_tokens": None,
             "ttft_ms": None}
    tally.record(count)
    tally.record({**count, "api": "openai.models", "model": None, "provider": None, "attempts": None})
    got = scrape(tally)
    assert got[("tollway_provider_attempts_total", (("model", "claude-haiku"),))] == 1
    assert not any(name.startswith("gen_ai_") for name, _ in got)  # no inference: no usage, no duration
    merged = Exchange(tally, None).totals()
    reached = sum(v for k, v in merged.counters.items()
                  if k[0] == "tollway_requests" and k[4] != "none" and k[6] != "rejected")
    assert merged.value("tollway_provider_attempts") - reached == 0


def test_a_chains_request_recovered_from_a_dead_workers_journal_counts_as_the_report_counts_it() -> None:
    """The record a dead worker's journal yields for an alias of two targets names no provider
    (Envoy picks the target: the first, unless outlier detection took it out), yet the request went
    upstream: the report counts its estimated input and one request of unknown cost, and so does
    /metrics (it once stopped at the missing provider and counted neither)."""
    from ext_proc.ledger.report import aggregate

    recovered = {**OK, "model": "chat", "served_model": None, "provider": None, "status": None,
                 "outcome": "incomplete", "error": "service_interrupted", "input_tokens": 812, "output_tokens": None,
                 "cached_tokens": None, "reasoning_tokens": None, "cost_usd_micros": None, "latency_ms": None,
                 "ttft_ms": None, "attempts": None, "fallback": False, "guardrails": [], "guardrail_triggers": [],
                 "injection_score": None, "recovered": True, "ts": 1_795_463_922.5}
    row = aggregate([recovered], "team")[0]
    tally = Tally(Names(lambda: POLICY))
    tally.record(recovered)
    got = scrape(tally)
    tokens = (("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "none"), ("gen_ai_request_model", "chat"),
              ("gen_ai_response_model", "none"), ("gen_ai_token_modality", "unknown"), ("provider", "none"),
              ("team", "search"))
    assert got[("gen_ai_client_inference_usage_input_tokens_total", tokens)] == row.input_tokens == 812
    unpriced = (("model", "chat"), ("provider", "none"), ("team", "search"))
    assert got[("tollway_requests_unpriced_total", unpriced)] == row.unknown_cost == 1
    # Not a try Envoy is known to have made: the retries (attempts minus requests that reached a
    # provider, provider!="none") stay as they were.
    assert not any(name.startswith(("tollway_provider_attempts", "tollway_fallbacks")) for name, _ in got)


def test_a_request_that_never_reached_a_provider_is_no_unknown_usage_nor_a_model_calls_duration() -> None:
    """A client that left mid-upload: incomplete, no provider, no attempts, not recovered. Nothing
    was asked of a provider, so no usage is missing and no model call lasted (both counted once,
    under provider="none", since inference records naming no provider count there); the request
    itself still counts. A recovered record, or one with attempts, went upstream: counted."""
    from ext_proc.ledger.report import aggregate
    from ext_proc.state.rows import went_upstream

    left = {**OK, "provider": None, "served_model": None, "status": None, "outcome": "incomplete", "error": None,
            "input_tokens": None, "output_tokens": None, "cached_tokens": None, "reasoning_tokens": None,
            "cost_usd_micros": None, "latency_ms": 0.1, "ttft_ms": None, "attempts": None, "fallback": False,
            "guardrails": [], "guardrail_triggers": [], "injection_score": None, "ts": 1_795_463_922.5}
    assert not went_upstream(left)
    row = aggregate([left], "team")[0]
    assert row.requests == row.incomplete == 1 and row.unknown_usage == 0
    tally = Tally(Names(lambda: POLICY))
    tally.record(left)
    got = scrape(tally)
    assert got[("tollway_requests_total", (("api", "openai.chat.completions"), ("model", "gpt-4o-mini"),
                                           ("outcome", "incomplete"), ("provider", "none"), ("status", "none"),
                                           ("team", "search")))] == 1
    assert not any(name.startswith(("tollway_requests_usage_unknown", "gen_ai_client_inference_duration"))
                   for name, _ in got)
    for upstream in ({"recovered": True}, {"attempts": 1}, {"provider": "openai"}):
        record = {**left, **upstream}
        assert went_upstream(record)
        assert aggregate([record], "team")[0].unknown_usage == 1
        tally = Tally(Names(lambda: POLICY))
        tally.record(record)
        assert sum(v for k, v in tally.counters.items() if k[0] == "tollway_requests_usage_unknown") == 1
        assert any(k[0] == "gen_ai_client_inference_duration_seconds" for k in tally.histograms)


def test_workers_files_are_summed_and_a_dead_workers_counts_stay(tmp_path: Path) -> None:
    # Another worker, in its own process, counts two requests and writes its file; then it is gone.
    code = ("import sys; from ext_proc.server.metrics import Exchange, Tally; t = Tally(); "
            f"[t.record(r) for r in ({OK!r}, {OK!r})]; "
            "t.set(('tollway_shared_state_degraded', 'redis'), 1); Exchange(t, sys.argv[1]).write()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env={**os.environ, "PYTHONPATH": "."})
    assert len(list(tmp_path.glob("worker-*.json"))) == 1
    mine = Tally()
    mine.record(OK)
    mine.set(("tollway_shared_state_degraded", "redis"), 0)
    exchange = Exchange(mine, str(tmp_path))
    exchange.write()
    totals = exchange.totals()
    assert totals.value("tollway_requests", outcome="ok") == 3  # 2 from the dead worker + 1 live
    assert totals.value("gen_ai_client_inference_usage_input_tokens") == 60
    # Gauges come from live workers only: the dead one's "degraded" is not reported.
    assert totals.value("tollway_shared_state_degraded", store="redis") == 0
    # The live worker's own counts are read live, not from its (older) file.
    mine.record(OK)
    assert exchange.totals().value("tollway_requests") == 4


def test_a_gauge_as_every_other_live_worker_published_it(tmp_path: Path) -> None:
    """/readyz's state of the shared store is every worker's, whichever worker answers: the others'
    gauges as they last published them, a dead worker's left out."""
    import orjson

    def published(name: str, pid: int, degraded: float, seconds: float) -> None:
        (tmp_path / name).write_bytes(orjson.dumps({"pid": pid, "counters": [], "histograms": [], "gauges": [
            ["tollway_shared_state_degraded", "redis", degraded],
            ["tollway_shared_state_degraded_seconds", "redis", seconds]]}))

    published("worker-1.json", os.getppid(), 1, 12.5)  # live, degraded
    published("worker-2.json", os.getppid(), 0, 0)  # live, not degraded
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    published("worker-3.json", int(dead.stdout), 1, 99)  # gone
    mine = Tally()
    mine.set(("tollway_shared_state_degraded", "redis"), 0)
    found = Exchange(mine, str(tmp_path)).published(
        "tollway_shared_state_degraded", "tollway_shared_state_degraded_seconds")
    assert sorted(found["tollway_shared_state_degraded"]) == [0, 1]
    assert sorted(found["tollway_shared_state_degraded_seconds"]) == [0, 12.5]
    assert Exchange(mine, None).published("tollway_shared_state_degraded") == {"tollway_shared_state_degraded": []}


def test_a_tally_whose_write_failed_is_written_at_the_next_try(tmp_path: Path) -> None:
    """A failed write (the metrics directory full, say) leaves the tally to write: the next try
    writes it though nothing changed since (the supervisor writes only when its sender tells it a
    change: a value lost to a failed write would never reach the file)."""
    import orjson

    tally = Tally()
    exchange = Exchange(tally, str(tmp_path))
    exchange.path = str(tmp_path / "gone" / "supervisor.json")
    tally.set(("tollway_ledger_waiting",), 4)
    with pytest.raises(OSError):
        exchange.write()
    (tmp_path / "gone").mkdir()
    exchange.write()
    data = orjson.loads((tmp_path / "gone" / "supervisor.json").read_bytes())
    assert data["gauges"] == [["tollway_ledger_waiting", 4]]


def test_a_scrape_by_another_worker_never_goes_backwards(tmp_path: Path) -> None:
    # Worker A counted a request and answered a scrape (live); worker B answers the next one
    # before A's periodic publication: B must still see A's request.
    first, second = Tally(), Tally()
    a, b = Exchange(first, str(tmp_path)), Exchange(second, str(tmp_path))
    a.path, b.path = str(tmp_path / "worker-1.json"), str(tmp_path / "worker-2.json")
    first.record(OK)
    assert a.totals().value("tollway_requests") == 1
    assert b.totals().value("tollway_requests") == 1
    second.record(OK)
    assert b.totals().value("tollway_requests") == 2
    assert a.totals().value("tollway_requests") == 2


def test_budget_gauges_sum_a_per_key_budget_and_keep_team_members() -> None:
    collector = BudgetCollector()
    row = {"budget": "b", "scope": "team", "member": "search", "unit": "usd", "limit": 10_000_000,
           "spent": 2_500_000, "held": 500_000, "remaining": 7_000_000}
    keys = [{**row, "budget": "k", "scope": "key", "member": name, "unit": "tokens", "limit": 100, "spent": 30,
             "remaining": 70} for name in ("alice", "bob")]
    collector.update([row, *keys])
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("tollway_budget_spent_usd", {"budget": "b", "member": "search"}) == 2.5
    assert registry.get_sample_value("tollway_budget_remaining_usd", {"budget": "b", "member": "search"}) == 7
    assert registry.get_sample_value("tollway_budget_spent_tokens", {"budget": "k", "member": "*"}) == 60
    assert "alice" not in generate_latest(registry).decode()


def test_the_grafana_dashboard_asks_only_for_metrics_and_labels_the_service_exposes() -> None:
    import json
    import re

    from ext_proc.server.reload import PolicyHolder, Publication

    tally = Tally(Names(lambda: POLICY))
    for record in (OK, REFUSED, {**REFUSED, "error": "rate_limit_exceeded", "limit": "rpm"}):
        tally.record(record)
    tally.add(("tollway_budget_alerts", "b", "80"))
    tally.add(("tollway_ledger_write_failures",))
    tally.set(("tollway_shared_state_degraded", "redis"), 0)
    registry = CollectorRegistry()
    registry.register(TallyCollector(Exchange(tally, None).totals))
    budgets = BudgetCollector()
    budgets.update([{"budget": "b", "scope": "team", "member": "search", "unit": unit, "limit": 10, "spent": 1,
                     "held": 0, "remaining": 9} for unit in ("usd", "tokens")])
    registry.register(budgets)
    PolicyHolder(Publication(), registry)
    exposed: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            exposed.setdefault(sample.name, set()).update(sample.labels)
    board = json.loads((Path(__file__).parents[2] / "k8s" / "grafana" / "tollway-dashboard.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert len(exprs) >= 20
    labels = set().union(*exposed.values())
    for expr in exprs:
        for name in re.findall(r"\b((?:tollway|gen_ai)_[a-z_]+)\b", expr):
            if name in labels:
                continue  # gen_ai_request_model and kin: a label, not a metric
            assert name in exposed, (name, expr)
            for label in re.findall(r"(\w+)\s*(?:=~|!=|=)\s*\"", expr[expr.index(name):].split("}")[0]):
                assert label in exposed[name], (label, name)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert any(label in labels for name, labels in exposed.items() if name in expr), (label, expr)


def test_the_grafana_dashboards_rates_count_only_requests_that_reached_a_provider() -> None:
    # Error rate, fallback rate, retries: "over requests that reached a provider" (not the model list
    # Tollway answers itself, provider="none", nor a refusal), in the numerator as in the denominator.
    import json
    import re

    board = json.loads((Path(__file__).parents[2] / "k8s" / "grafana" / "tollway-dashboard.json").read_text())
    checked = 0
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            if not re.search(r"\) [/-] sum", expr) or "tollway_requests_total" not in expr:
                continue
            for selector in re.findall(r"tollway_requests_total\{([^}]*)\}", expr):
                assert 'provider!="none"' in selector, (panel["title"], selector)
                assert 'outcome!="rejected"' in selector or 'outcome=~"error|incomplete"' in selector, selector
                checked += 1
    assert checked == 4  # error rate (both sides), fallback rate, retries


def test_the_grafana_dashboards_latencies_are_those_of_served_calls_and_follow_the_team() -> None:
    # The reports' and the dashboard's latencies are those of the model calls a provider answered
    # (error_type=""): a provider failing fast must not look faster. Every panel of durations follows
    # the dashboard's $team.
    import json

    board = json.loads((Path(__file__).parents[2] / "k8s" / "grafana" / "tollway-dashboard.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    durations = [e for e in exprs if "gen_ai_client_inference_duration_seconds" in e]
    assert len(durations) == 4 and all('error_type=""' in e and 'team=~"$team"' in e for e in durations), durations
    for e in exprs:
        if "_seconds_bucket" in e or "tollway_guardrail_triggers_total" in e:
            assert 'team=~"$team"' in e, e


def test_a_teams_average_latency_and_guardrail_requests_read_from_metrics_as_the_report_reads_them() -> None:
    """"Team A ... an average latency of 340ms, and 3 requests triggered the PII guardrail", from
    /metrics: two teams on one model keep their own averages (the duration has a team label) and
    their own guardrail counts."""
    from ext_proc.ledger.report import aggregate

    records = ([{**OK, "request_id": f"s{i}", "latency_ms": 300.0 + i, "ttft_ms": None, "ts": 1.8e9} for i in range(3)]
               + [{**OK, "request_id": f"a{i}", "team": "ads", "latency_ms": 20.0, "guardrails": [],
                   "guardrail_triggers": [], "ttft_ms": None, "ts": 1.8e9} for i in range(2)])
    tally = Tally(Names(lambda: POLICY))
    for record in records:
        tally.record(record)
    got = scrape(tally)
    report = {row.group: row for row in aggregate(records, "team")}
    for team in ("search", "ads"):
        labels = (("error_type", ""), ("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "openai"),
                  ("gen_ai_request_model", "gpt-4o-mini"), ("provider", "openai"), ("team", team))
        average = (got[("gen_ai_client_inference_duration_seconds_sum", labels)]
                   / got[("gen_ai_client_inference_duration_seconds_count", labels)] * 1000)
        assert average == pytest.approx(report[team].avg_latency_ms)
    assert report["search"].guardrail_triggers == 3
    assert got[("tollway_guardrail_requests_total", (("guardrail", "pii"), ("model", "gpt-4o-mini"),
                                                     ("team", "search")))] == 3
    assert not any(k[0] == "tollway_guardrail_requests_total" and ("team", "ads") in k[1] for k in got)


def test_durations_of_minutes_have_buckets_of_their_own() -> None:
    """A reasoning model's answer or a long stream takes minutes: past 81.92 s two more buckets."""
    tally = Tally(Names(lambda: POLICY))
    tally.record({**OK, "latency_ms": 150_000.0, "ttft_ms": None})
    got = scrape(tally)
    les = {dict(k[1])["le"]: v for k, v in got.items() if k[0] == "gen_ai_client_inference_duration_seconds_bucket"}
    assert (les["81.92"], les["163.84"], les["327.68"], les["+Inf"]) == (0, 1, 1, 1)


def test_a_try_abandoned_at_the_first_byte_timeout_is_counted_by_its_provider() -> None:
    """The chain's first try, sent and given up: the provider may bill it, its cost is unknown."""
    tally = Tally(Names(lambda: POLICY))
    tally.record({**OK, "model": "chat", "provider": "claude", "abandoned_tries": 1,
                  "abandoned": [{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 20}]})
    tally.record(OK)
    got = scrape(tally)
    assert got[("tollway_abandoned_tries_total", (("model", "chat"), ("provider", "openai"), ("team", "search")))] == 1
    assert sum(v for (name, _), v in got.items() if name == "tollway_abandoned_tries_total") == 1
