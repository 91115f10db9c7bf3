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
from ext_proc.stack import ROOT, Stack, mock_plan

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
        "disconnect": {"x-mock-inter-chunk-ms": "40", "x-mock-chunks": "20"},
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
    assert pair["avg_latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in logged) / 4, abs=0.002)
