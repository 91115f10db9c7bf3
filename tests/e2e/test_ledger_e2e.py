"""The ledger under load: every request that reached the provider is accounted for exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ext_proc.cli import main
from ext_proc.ledger.log import log_files, read_records
from ext_proc.policy.compiled import key_digest
from ext_proc.stack import ROOT, Stack, mock_plan
from tests.e2e.conftest import Providers
from tests.faults import metric

pytestmark = pytest.mark.e2e

POLICY = ROOT / "policies" / "example.yaml"
DEMO = {"authorization": "Bearer tw-local-demo-key-not-secret"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count the toll booths"}]}
MESSAGES = {"model": "claude-haiku", "max_tokens": 64, "messages": [{"role": "user", "content": "hello there"}]}
TOTAL = 500


async def one(http: httpx.AsyncClient, kind: str) -> str:
    if kind == "anthropic":
        response = await http.post("/v1/messages", json=MESSAGES, headers={**DEMO, "anthropic-version": "2023-06-01"})
        return f"anthropic:{response.status_code}"
    if kind == "json":
        response = await http.post("/v1/chat/completions", json=CHAT, headers=DEMO)
        return f"json:{response.status_code}"
    extra = {
        "stream": {},
        "cut": {"x-mock-cut-after": "3", "x-mock-inter-chunk-ms": "5"},
        # 3 s of stream: a client that reads its first bytes late (a loaded machine) still leaves
        # before the end (0.8 s once let the whole stream arrive first: recorded ok, not incomplete).
        "disconnect": {"x-mock-inter-chunk-ms": "40", "x-mock-chunks": "75"},
    }[kind]
    async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                           headers={**DEMO, **extra}) as response:
        try:
            async for _ in response.aiter_raw():
                if kind == "disconnect":
                    break  # the client walks away mid-stream
        except httpx.HTTPError:
            pass  # a cut stream ends with a transport error
        return f"{kind}:{response.status_code}"


async def load(base_url: str) -> Counter[str]:
    rng = random.Random(7)
    kinds = rng.choices(["json", "stream", "cut", "disconnect", "anthropic"], weights=[4, 3, 1, 1, 1], k=TOTAL)
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        results = await asyncio.gather(*(one(http, kind) for kind in kinds))
    return Counter(results)


def test_500_mixed_requests_one_record_each_and_report_totals_add_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mocked, _ = mock_plan(POLICY, {})
    stack = Stack(tmp_path, workers=2, policy=POLICY, mocked=mocked,
                  mock_args=("--record-requests", "5000"))
    with stack:
        outcomes = asyncio.run(load(stack.base_url))
        assert sum(outcomes.values()) == TOTAL
        # A stream cut before its first event reaches the client as a broken 200 stream, or (when
        # the cut beats the response head through Envoy) as a JSON 502: both are timing.
        assert all(key.endswith(":200") or key == "cut:502" for key in outcomes), outcomes
        reached = [dict((k.lower(), v) for k, v in r["headers"]).get("x-request-id")
                   for r in httpx.get(f"http://127.0.0.1:{stack.mock_port}/_mock/requests").json()]
        assert len(reached) == TOTAL and None not in reached

        def records() -> list[dict[str, Any]]:
            return list(read_records(log_files(str(stack.record_log))))

        deadline = time.monotonic() + 15
        while len(records()) < TOTAL and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # anything late would show up as an extra record below
        found = records()
    ids = Counter(r["request_id"] for r in found)
    assert len(found) == TOTAL, f"{len(found)} records for {TOTAL} requests"
    assert set(ids) == set(reached) and set(ids.values()) == {1}, "a request was recorded twice or never"
    by_outcome = Counter(r["outcome"] for r in found)
    assert by_outcome["incomplete"] >= outcomes["cut:200"] + outcomes["disconnect:200"] > 0, by_outcome
    assert all(r["team"] == "demo" for r in found)

    assert main(["report", "--log", str(stack.record_log), "--by", "model", "--format", "json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert sum(r["requests"] for r in rows) == TOTAL
    for field in ("input_tokens", "output_tokens", "cost_usd_micros"):
        assert sum(r[field] for r in rows) == sum(rec.get(field) or 0 for rec in found), field


def test_two_sidecars_add_to_one_redis_and_the_report_agrees_with_their_logs(
    tmp_path: Path, redis_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    url = f"redis://127.0.0.1:{redis_port}/0"
    redis.Redis(port=redis_port).flushall()
    mocked, _ = mock_plan(POLICY, {})
    common = dict(policy=POLICY, mocked=mocked, serve_args=("--redis", url))
    with Stack(tmp_path / "a", **common) as a, Stack(tmp_path / "b", workload="local-dev", **common) as b:
        for stack, headers in ((a, DEMO), (b, {})):  # team demo by key, team platform by workload
            with httpx.Client(base_url=stack.base_url, timeout=30) as http:
                for i in range(20):
                    body = {**CHAT, "stream": bool(i % 2)}
                    assert http.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
        time.sleep(0.5)  # batches reach Redis within one flush interval
        admin = httpx.get(f"http://127.0.0.1:{a.service_admin_port}/v1/report?by=team").json()
    logged = [*read_records(log_files(str(a.record_log))), *read_records(log_files(str(b.record_log)))]
    assert len(logged) == 40
    assert main(["report", "--redis", url, "--by", "team", "--format", "json"]) == 0
    from_redis = {r["group"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert {team: r["requests"] for team, r in from_redis.items()} == {"demo": 20, "platform": 20}
    for team, row in from_redis.items():
        mine = [r for r in logged if r["team"] == team]
        for field in ("input_tokens", "output_tokens", "cost_usd_micros"):
            assert row[field] == sum(r[field] or 0 for r in mine), (team, field)
    assert admin["source"] == "redis" and {r["group"] for r in admin["rows"]} == {"demo", "platform"}


def test_with_redis_the_dashboard_shows_errors_cut_streams_and_latency(tmp_path: Path, redis_port: int) -> None:
    """/v1/dashboard from the shared aggregates: a provider error, a cut stream and latencies reach it
    as they reach the log (they once read 0 errors, 0 cut, a 0.0 % error rate and no latency)."""
    import redis

    url = f"redis://127.0.0.1:{redis_port}/0"
    redis.Redis(port=redis_port).flushall()
    mocked, _ = mock_plan(POLICY, {})
    with Stack(tmp_path, policy=POLICY, mocked=mocked, serve_args=("--redis", url)) as stack:
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            assert http.post("/v1/chat/completions", json=CHAT, headers=DEMO).status_code == 200
            slow = {**DEMO, "x-mock-latency-ms": "300"}
            assert http.post("/v1/chat/completions", json=CHAT, headers=slow).status_code == 200
            failing = {**DEMO, "x-mock-status": "500"}
            assert http.post("/v1/chat/completions", json=CHAT, headers=failing).status_code == 500
            cut = {**DEMO, "x-mock-cut-after": "2"}
            with contextlib.suppress(httpx.HTTPError), http.stream(
                    "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=cut) as response:
                for _ in response.iter_raw():
                    pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            data = httpx.get(f"http://127.0.0.1:{stack.service_admin_port}/v1/dashboard?hours=1").json()
            if data["totals"]["requests"] == 4:
                break
            time.sleep(0.2)
        logged = list(read_records(log_files(str(stack.record_log))))
    assert data["source"] == "redis"
    assert sorted(r["outcome"] for r in logged) == ["error", "incomplete", "ok", "ok"]
    totals = data["totals"]
    assert (totals["requests"], totals["errors"], totals["incomplete"], totals["unknown_outcome"]) == (4, 1, 1, 0)
    assert sum(data["series"]["failed"]) == 2
    slowest = max(r["latency_ms"] for r in logged)
    assert totals["p50_latency_ms"] is not None and totals["p95_latency_ms"] >= slowest >= 300
    (team,) = data["teams"]
    assert (team["group"], team["errors"], team["incomplete"]) == ("demo", 1, 1)
    assert team["p95_latency_ms"] == totals["p95_latency_ms"]
    (pair,) = data["team_models"]
    assert (pair["team"], pair["model"], pair["requests"]) == ("demo", "gpt-4o-mini", 4)
    # the average of the model calls the provider answered (not of its error, nor of the cut stream)
    served = [r["latency_ms"] for r in logged if r["outcome"] == "ok"]
    assert pair["avg_latency_ms"] == pytest.approx(sum(served) / 2, abs=0.002)


MIX_SEARCH = "tw-search-mix-key-0123456789abcdefghijklmnopq"
MIX_POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: MIX_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: MIX_ANTHROPIC_KEY}}}}
models:
  gpt-4o: {{provider: openai}}
  claude-haiku: {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  search: {{keys: [{{id: ci, sha256: "{key_digest(MIX_SEARCH)}"}}], models: ["*"]}}
guardrails:
  rules:
    - {{name: cards, detectors: [credit_card], action: block}}
routing:
  aliases:
    smart:
      targets:
        - {{provider: openai, model: gpt-4o}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
"""
SLOW = {"x-mock-latency-ms": "150"}  # a model call takes a while; token counts, lists and errors do not


def mixed(base_url: str) -> int:
    """Model calls (served, fallen back, failed at every target, cut, abandoned), a refusal, token
    counts (forwarded to Anthropic, and counted by Tollway for an OpenAI model) and a model list."""
    hi = [{"role": "user", "content": "hi"}]
    auth = {"authorization": f"Bearer {MIX_SEARCH}"}
    sent = 0
    with httpx.Client(base_url=base_url, timeout=30, headers=auth) as http:
        for _ in range(2):
            assert http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": hi},
                             headers=SLOW).status_code == 200
        served = http.post("/v1/chat/completions", json={"model": "smart", "messages": hi},
                           headers={**SLOW, "x-mock-openai-status": "503"})
        assert served.status_code == 200 and served.headers["x-tollway-provider"] == "anthropic"
        failed = http.post("/v1/chat/completions", json={"model": "smart", "messages": hi},
                           headers={"x-mock-status": "503"})
        assert failed.status_code == 503
        assert http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": hi},
                         headers={"x-mock-status": "429"}).status_code == 429
        with contextlib.suppress(httpx.HTTPError), http.stream(
                "POST", "/v1/chat/completions", json={"model": "gpt-4o", "messages": hi, "stream": True},
                headers={"x-mock-cut-after": "3"}) as response:
            for _ in response.iter_raw():
                pass
        with http.stream("POST", "/v1/chat/completions", json={"model": "gpt-4o", "messages": hi, "stream": True},
                         headers={"x-mock-inter-chunk-ms": "40", "x-mock-chunks": "20"}) as response:
            for _ in response.iter_raw():
                break  # the client walks away mid-stream
        card = [{"role": "user", "content": "card 4111 1111 1111 1111"}]
        assert http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": card}).status_code == 400
        sent += 8
        for model in ("claude-haiku", "gpt-4o"):
            counted = http.post("/v1/messages/count_tokens", json={"model": model, "messages": hi},
                                headers={"x-api-key": MIX_SEARCH, "anthropic-version": "2023-06-01"})
            assert counted.status_code == 200, counted.text
        assert http.get("/v1/models").status_code == 200
        sent += 3
    return sent


def test_a_mix_reads_alike_in_the_log_redis_metrics_and_the_dashboard(
    tmp_path: Path, redis_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report from the log and from Redis, /metrics and /v1/dashboard agree on a mix with token
    counts, a model list, fast provider errors and cut streams: the average latency is that of the
    model calls a provider answered (the duration histogram's with no error_type), a chain that
    failed at every target is no fallback, an error answer is no unknown usage, and the team's
    sentences never say "sent 0 tokens"."""
    import redis
    from prometheus_client.parser import text_string_to_metric_families

    url = f"redis://127.0.0.1:{redis_port}/0"
    redis.Redis(port=redis_port).flushall()
    keys = {"MIX_OPENAI_KEY": "sk-openai-mix-01", "MIX_ANTHROPIC_KEY": "sk-ant-mix-02"}
    stack = Providers.stack(tmp_path, MIX_POLICY, keys, workers=2, serve_args=("--redis", url))
    with stack:
        sent = mixed(stack.base_url)
        log = str(stack.record_log)
        admin = f"http://127.0.0.1:{stack.service_admin_port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            records = list(read_records(log_files(log)))
            dashboard = httpx.get(admin + "/v1/dashboard?hours=1").json()
            if len(records) == sent and dashboard["totals"]["requests"] == sent:
                break
            time.sleep(0.2)
        time.sleep(1)  # each worker publishes its metrics twice a second
        scraped: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(httpx.get(admin + "/metrics").text):
            for sample in family.samples:
                scraped.setdefault(sample.name, []).append((sample.labels, sample.value))
    assert len(records) == sent and dashboard["source"] == "redis"
    failed = next(r for r in records if r["model"] == "smart" and r["outcome"] == "error")
    assert (failed["fallback"], failed["attempts"], failed["input_tokens"]) == (False, 2, None)

    def metric(name: str, **labels: str) -> float:
        return sum(v for got, v in scraped.get(name, []) if all(got.get(k) == x for k, x in labels.items()))

    fields = ("requests", "refused", "lookups", "input_tokens", "output_tokens", "cost_usd_micros",
              "guardrail_triggers", "fallbacks", "errors", "incomplete", "unknown_usage", "unknown_cost")
    for by in ("team", "model", "provider", "upstream"):
        assert main(["report", "--log", log, "--by", by, "--format", "json"]) == 0
        from_log = {r["group"]: r for r in orjson.loads(capsys.readouterr().out)}
        assert main(["report", "--redis", url, "--by", by, "--format", "json"]) == 0
        from_redis = {r["group"]: r for r in orjson.loads(capsys.readouterr().out)}
        assert {g: [r[f] for f in fields] for g, r in from_log.items()} == \
            {g: [r[f] for f in fields] for g, r in from_redis.items()}, by
        for group, row in from_log.items():
            assert row["avg_latency_ms"] == pytest.approx(from_redis[group]["avg_latency_ms"], abs=0.002), group
    rows = {r["group"]: r for r in orjson.loads(
        (main(["report", "--log", log, "--by", "model", "--format", "json"]), capsys.readouterr().out)[1])}
    for model in ("gpt-4o", "smart"):
        served = [r["latency_ms"] for r in records if r["model"] == model and r["outcome"] == "ok"
                  and r["api"] == "openai.chat.completions"]
        assert rows[model]["avg_latency_ms"] == pytest.approx(sum(served) / len(served), abs=0.002), model
        assert rows[model]["avg_latency_ms"] >= 150  # the model calls', not the token counts' or the errors'
        duration = {"gen_ai_request_model": model, "error_type": ""}
        assert metric("gen_ai_client_inference_duration_seconds_count", **duration) == len(served)
        assert metric("gen_ai_client_inference_duration_seconds_sum", **duration) * 1000 == pytest.approx(
            sum(served), abs=0.01)
    assert (rows["gpt-4o"]["requests"], rows["gpt-4o"]["lookups"], rows["gpt-4o"]["refused"]) == (7, 1, 1)
    assert (rows["gpt-4o"]["errors"], rows["gpt-4o"]["incomplete"], rows["gpt-4o"]["unknown_usage"]) == (1, 2, 0)
    assert (rows["smart"]["fallbacks"], rows["smart"]["errors"], rows["smart"]["unknown_usage"]) == (1, 1, 0)
    assert (rows["claude-haiku"]["lookups"], rows["(none)"]["lookups"]) == (1, 1)
    assert metric("tollway_fallbacks_total") == 1 and metric("tollway_requests_usage_unknown_total") == 0
    # By the model that served: smart's requests went to its fallback (one served, one failed there too);
    # gpt-4o's model calls (2 served, an error, a cut stream, a client that left) are gpt-4o's, its refusal none.
    on_gpt_4o = sum(r["upstream_model"] == "gpt-4o" for r in records)
    assert on_gpt_4o >= 5 and all(r["upstream_model"] is None for r in records if r["outcome"] == "rejected")
    for source in (["--log", log], ["--redis", url]):
        assert main(["report", *source, "--by", "upstream", "--model", "smart", "--format", "json"]) == 0
        smart = {r["group"]: (r["requests"], r["fallbacks"], r["errors"])
                 for r in orjson.loads(capsys.readouterr().out)}
        assert smart == {"claude-3-5-haiku-20241022": (2, 1, 1)}, smart
        assert main(["report", *source, "--by", "upstream", "--upstream", "gpt-4o", "--format", "json"]) == 0
        assert [r["requests"] for r in orjson.loads(capsys.readouterr().out)] == [on_gpt_4o]
    totals = dashboard["totals"]
    for name in fields:
        assert totals[name] == sum(r[name] for r in rows.values()), name
    for source in (["--log", log], ["--redis", url]):
        assert main(["report", *source, "--team", "search"]) == 0
        told = capsys.readouterr().out
        assert "sent 0 tokens" not in told and "(none)" not in told and "unknown" not in told, told
        assert told.count("Team search") == 2 and "1 request got an error answer" in told, told


def test_a_rollout_while_redis_does_not_answer_loses_nothing_from_the_aggregates(
    tmp_path: Path, redis_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis stops taking writes (a failover, a hang: ``CLIENT PAUSE``) and the service is stopped
    meanwhile (a rollout): the workers' last batches stay in their spools (none given up), and
    once the service starts again (Redis back) its supervisor sends them: ``tollway report
    --redis`` counts every record of the log, none twice, and the spools are gone."""
    import redis

    url = f"redis://127.0.0.1:{redis_port}/0"
    client = redis.Redis(port=redis_port)
    client.flushall()
    mocked, _ = mock_plan(POLICY, {})
    stack = Stack(tmp_path, workers=2, policy=POLICY, mocked=mocked, serve_args=("--redis", url))

    def from_redis() -> int:
        assert main(["report", "--redis", url, "--by", "team", "--format", "json"]) == 0
        return sum(r["requests"] for r in orjson.loads(capsys.readouterr().out))

    try:
        with stack, httpx.Client(base_url=stack.base_url, timeout=30) as http:
            for _ in range(3):
                assert http.post("/v1/chat/completions", json=CHAT, headers=DEMO).status_code == 200
            time.sleep(0.5)  # those reach Redis
            client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
            for i in range(6):  # served (or refused: the limits' store does not answer either), all logged
                http.post("/v1/chat/completions", json={**CHAT, "stream": bool(i % 2)}, headers=DEMO)
            time.sleep(0.5)
        # stopped while Redis still does not answer
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
    logged = list(read_records(log_files(str(stack.record_log))))
    assert len(logged) == 9
    assert from_redis() < len(logged)  # what the workers could not add before they stopped
    spools = [p for p in (tmp_path / ".requests.jsonl.aggregates").iterdir() if p.suffix == ".aggregates"]
    assert spools, "the records Redis has not taken are kept next to the log"
    with stack:  # the next start sends them
        deadline = time.monotonic() + 15
        while from_redis() != len(logged) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert from_redis() == len(logged)
        time.sleep(0.5)
        metrics = httpx.get(f"http://127.0.0.1:{stack.service_admin_port}/metrics").text
        assert not metric(metrics, "tollway_ledger_dropped_total")  # nothing given up
        assert metric(metrics, "tollway_ledger_waiting") == 0
    assert from_redis() == len(logged)  # and never twice
    assert not [p for p in (tmp_path / ".requests.jsonl.aggregates").iterdir() if ".aggregates" in p.name]
