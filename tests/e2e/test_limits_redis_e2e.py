"""Budgets and rate limits across four service processes sharing one real redis-server.

The issue's proof: under 200 concurrent requests a $1.00 budget admits no more than $1.00 plus the
stated bound (what admitted requests used beyond their claims, from their records), a tokens-per-
minute limit and a concurrency cap hold the same way, reservations and leases come back to zero;
Redis stopped and started again under load keeps the configured behaviour and the service
recovers; a sidecar killed while holding leases gives them back within their TTL.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import redis

from ext_proc.policy.compiled import key_digest
from ext_proc.stack import Stack
from ext_proc.state.limits import TOTALS
from ext_proc.state.limits import keys as limit_keys
from tests.e2e.conftest import Providers, one_minute
from tests.faults import RedisServer, admin, metric

pytestmark = pytest.mark.e2e

KEYS = {team: f"tw-{team}-redis-limits-0123456789abcdefghijklmnopqrstu" for team in
        ("alpha", "beta", "gamma", "delta", "epsilon")}
OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-redis-01", "sk-ant-redis-02"
HI = [{"role": "user", "content": "hi"}]


def policy(on_unavailable: str = "closed") -> str:
    teams = "\n".join(f"  {team}: {{keys: [{{id: {team}-ci, sha256: \"{key_digest(key)}\"}}], models: [\"*\"]}}"
                      for team, key in KEYS.items())
    return f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: R_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: R_ANTHROPIC_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai, price: {{input: "1000", output: "1000"}}}}
  claude: {{provider: anthropic, model: claude-x, price: {{input: "1000", output: "1000"}}}}
teams:
{teams}
budgets:
  alpha-dollar: {{team: alpha, usd: "1.00", period: day}}
rate_limits:
  beta-tpm: {{team: beta, tokens_per_minute: 1000}}
  gamma-three: {{team: gamma, concurrent: 3}}
  delta-two: {{team: delta, concurrent: 2}}
  epsilon-tpm: {{team: epsilon, tokens_per_minute: 100000}}
shared_state: {{on_unavailable: {on_unavailable}}}
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Providers, RedisServer]]:
    work = tmp_path_factory.mktemp("redis-limits")
    server = RedisServer(work)
    server.start()
    stack = Providers.stack(work, policy(), {"R_OPENAI_KEY": OPENAI_KEY, "R_ANTHROPIC_KEY": ANTHROPIC_KEY},
                            workers=4,
                            serve_args=("--redis", server.url, "--hold-ttl", "3", "--reload-interval", "0.2"))
    try:
        with stack:
            yield Providers(stack, KEYS["alpha"]), server
    finally:
        server.stop()


def call(env: Providers, team: str, index: int, **extra: Any) -> tuple[int, str | None, str | None]:
    """One request of ``team``: OpenAI or Anthropic SDK, JSON or streamed, by ``index``; (status, code, id)."""
    key = KEYS[team]
    stream, use_anthropic = index % 2 == 1, index % 4 >= 2
    headers = {"x-mock-chunks": "30", **extra}
    try:
        if use_anthropic:
            client = anthropic.Anthropic(base_url=env.base_url, api_key=key, max_retries=0, timeout=20)
            if stream:
                with client.messages.with_streaming_response.create(
                        model="claude", max_tokens=30, messages=HI, stream=True, extra_headers=headers) as raw:  # type: ignore[arg-type]
                    list(raw.iter_lines())
                    return raw.status_code, None, raw.headers.get("x-tollway-request-id")
            raw_json = client.messages.with_raw_response.create(model="claude", max_tokens=30, messages=HI,  # type: ignore[arg-type]
                                                                extra_headers=headers)
            return raw_json.status_code, None, raw_json.headers.get("x-tollway-request-id")
        oclient = openai.OpenAI(base_url=env.base_url + "/v1", api_key=key, max_retries=0, timeout=20)
        if stream:
            with oclient.chat.completions.with_streaming_response.create(
                    model="gpt-4o-mini", max_tokens=30, messages=HI, stream=True, extra_headers=headers) as raw:  # type: ignore[arg-type]
                list(raw.iter_lines())
                return raw.status_code, None, raw.headers.get("x-tollway-request-id")
        raw_chat = oclient.chat.completions.with_raw_response.create(model="gpt-4o-mini", max_tokens=30,  # type: ignore[arg-type]
                                                                     messages=HI, extra_headers=headers)
        return raw_chat.status_code, None, raw_chat.headers.get("x-tollway-request-id")
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        code = body.get("code") if "code" in body else (body.get("error") or {}).get("type")
        if code is None and isinstance(body.get("error"), dict):
            code = body["error"].get("code")
        return exc.status_code, str(exc.message), exc.response.headers.get("x-tollway-request-id")


def many(env: Providers, team: str, count: int, **extra: Any) -> list[tuple[int, str | None, str | None]]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: call(env, team, i, **extra), range(count)))


def budgets(env: Providers, server: RedisServer) -> list[dict[str, Any]]:
    shown = subprocess.run([sys.executable, "-m", "ext_proc.cli", "budgets", "--policy", str(env.stack.policy),
                            "--redis", server.url, "--format", "json"], capture_output=True, text=True, check=True)
    found: list[dict[str, Any]] = orjson.loads(shown.stdout)
    return found


def team_records(env: Providers, team: str, outcome: str = "ok") -> list[dict[str, Any]]:
    return [r for r in env.records() if r["team"] == team and r["outcome"] == outcome]


def wait_settled(env: Providers, team: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while len([r for r in env.records() if r["team"] == team]) < count:
        assert time.monotonic() < deadline, "records missing"
        time.sleep(0.1)


def test_four_processes_admit_no_more_than_a_dollar_under_200_concurrent_requests(
        shared: tuple[Providers, RedisServer]) -> None:
    env, server = shared
    results = many(env, "alpha", 200)
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    wait_settled(env, "alpha", 200)
    admitted = team_records(env, "alpha")
    refused = team_records(env, "alpha", "rejected")
    assert len(admitted) + len(refused) == 200 and all(r["error"] == "budget_exceeded" for r in refused)
    spent = sum(r["cost_usd_micros"] for r in admitted)
    beyond = sum(max(0, e["used"] - e["claimed"]) for r in admitted for e in r["limits"] if e["unit"] == "usd")
    assert spent <= 1_000_000 + beyond, (spent, beyond)
    assert spent >= 1_000_000 - 4 * 2 * 40_000  # at most about a lease per process left unused
    time.sleep(1.6)  # idle leases go back after 1 s, reports every 0.2 s
    (row,) = [row for row in budgets(env, server) if row["budget"] == "alpha-dollar"]
    assert row["held"] == 0 and row["spent"] == sum(e["used"] for r in admitted for e in r["limits"]
                                                      if e["unit"] == "usd")


def test_a_tokens_per_minute_limit_holds_across_processes(shared: tuple[Providers, RedisServer]) -> None:
    env, _ = shared
    one_minute()
    many(env, "beta", 60)
    wait_settled(env, "beta", 60)
    admitted = team_records(env, "beta")
    used = sum(e["used"] for r in admitted for e in r["limits"] if e["unit"] == "tokens")
    beyond = sum(max(0, e["used"] - e["claimed"]) for r in admitted for e in r["limits"] if e["unit"] == "tokens")
    assert 0 < used <= 1000 + beyond
    assert len(team_records(env, "beta", "rejected")) > 0


def test_a_concurrency_cap_holds_across_processes(shared: tuple[Providers, RedisServer]) -> None:
    env, _ = shared
    many(env, "gamma", 30, **{"x-mock-latency-ms": "400"})
    wait_settled(env, "gamma", 30)
    admitted = {r["request_id"] for r in team_records(env, "gamma")}
    assert admitted
    # What the provider saw: each admitted request busy there for 400 ms from its arrival (a slot is
    # held longer, from admission to settlement, so this is a lower bound of what the cap covers).
    seen = [request for request in httpx.get(env.mock + "/_mock/requests").json()
            if dict((k.lower(), v) for k, v in request["headers"]).get("x-request-id") in admitted]
    spans = sorted((request["received_at"], request["received_at"] + 0.4) for request in seen)
    most = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert len(seen) == len(admitted) and most <= 3, spans


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_stopped_and_started_under_load(shared: tuple[Providers, RedisServer], mode: str) -> None:
    env, server = shared
    assert isinstance(env.stack.policy, Path)
    env.stack.policy.write_text(policy(mode))
    time.sleep(1.5)  # every worker has the new policy
    seen: list[tuple[int, str | None]] = []
    stop = time.monotonic() + 8

    def load(worker: int) -> None:
        i = 0
        while time.monotonic() < stop:
            status, code, _ = call(env, "delta", worker * 1000 + i * 4)  # OpenAI JSON
            seen.append((status, code))
            i += 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        running = [pool.submit(load, w) for w in range(2)]
        time.sleep(1.5)
        server.stop()
        time.sleep(4)  # longer than the leases' 3 s hold TTL: every process needs Redis again
        server.start()
        for future in running:
            future.result()
    statuses = [status for status, _ in seen]
    assert 500 not in statuses and all(s in (200, 429, 503) for s in statuses), statuses
    if mode == "closed":
        assert 503 in statuses  # refused while Redis was away ...
    else:
        assert 503 not in statuses  # ... or admitted on each process's own counters
    assert statuses[-5:] == [200] * 5  # recovered
    assert all(env.stack.procs[name].poll() is None for name in ("tollway", "envoy"))
    with urllib.request.urlopen(f"http://127.0.0.1:{env.stack.service_admin_port}/readyz") as answer:
        ready = orjson.loads(answer.read())
    assert ready["ready"] is True and ready["limits"]["store"] == "redis"


def test_a_sidecar_killed_holding_leases_gives_them_back_within_the_ttl(
        shared: tuple[Providers, RedisServer], tmp_path: Path) -> None:
    env, server = shared
    other = Stack(tmp_path / "other", policy=env.stack.policy, mocked=frozenset({"openai", "anthropic"}),
                  service_env={"R_OPENAI_KEY": OPENAI_KEY, "R_ANTHROPIC_KEY": ANTHROPIC_KEY},
                  mock=False, mock_port=env.stack.mock_port, stand_ins_get_keys=True,
                  serve_args=("--redis", server.url, "--hold-ttl", "2"))
    store = redis.Redis(port=server.port)
    totals = store.register_script(TOTALS)
    with other:
        client = openai.OpenAI(base_url=other.base_url + "/v1", api_key=KEYS["epsilon"], max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)  # type: ignore[arg-type]
        # Its worker now holds a lease of the minute's tokens (more than the request used, kept for 1 s idle).
        (key,) = store.keys("tollway:limits:{rate/epsilon-tpm/tokens/*}:held")
        counter = key.decode().split("{", 1)[1].rsplit("}", 1)[0]
        assert int(totals(keys=limit_keys("tollway:limits", counter))[1]) > 0
        os.killpg(other.procs["tollway"].pid, signal.SIGKILL)  # no goodbye: its lease stays behind
    assert int(totals(keys=limit_keys("tollway:limits", counter))[1]) > 0
    time.sleep(2.5)  # the TTL: whoever reads or grants next drops the dead holder
    assert int(totals(keys=limit_keys("tollway:limits", counter))[1]) == 0


def test_serve_warns_once_at_start_that_its_redis_keeps_nothing_on_disk(shared: tuple[Providers, RedisServer]) -> None:
    env, _ = shared  # RedisServer: --save "" --appendonly no
    deadline = time.monotonic() + 5
    while "keeps nothing on disk" not in (log := (env.stack.workdir / "tollway.log").read_text(errors="replace")):
        assert time.monotonic() < deadline, "no warning of a Redis without persistence"
        time.sleep(0.1)
    assert log.count("keeps nothing on disk") == 1  # the supervisor's, not each worker's


def test_readyz_shows_the_store_degraded_whichever_worker_answers(tmp_path: Path) -> None:
    """Redis unreachable, closed: the worker a request reaches refuses it (503 state_unavailable)
    and is degraded. /readyz, answered by whichever worker accepts the admin connection, showed
    that worker's state only: half the polls said all was well. It is every worker's now, and
    clears once the store answers again, though no request comes to the degraded worker."""
    server = RedisServer(tmp_path / "redis")  # not started: unreachable
    stack = Providers.stack(tmp_path, policy("closed"), {"R_OPENAI_KEY": OPENAI_KEY, "R_ANTHROPIC_KEY": ANTHROPIC_KEY},
                            workers=2, serve_args=("--redis", server.url, "--hold-ttl", "3"))
    try:
        with stack:
            env = Providers(stack, KEYS["delta"])
            status, _, _ = call(env, "delta", 0)
            assert status == 503
            time.sleep(0.7)  # the other worker's publication (every 0.5 s)
            polls = [admin(stack, "/readyz")["limits"] for _ in range(12)]
            assert [p["degraded"] for p in polls] == [True] * 12, polls
            # For how long: live from the degraded worker, as last published (up to 0.5 s before) from the other.
            assert all(p["degraded_for_s"] is not None and p["degraded_for_s"] >= 0.1 for p in polls), polls
            assert metric(admin(stack, "/metrics"), "tollway_shared_state_degraded_seconds") > 0  # type: ignore[operator]
            server.start()
            deadline = time.monotonic() + 5  # the degraded worker asks again every second on its own
            while any(admin(stack, "/readyz")["limits"]["degraded"] for _ in range(6)):
                assert time.monotonic() < deadline, "/readyz still degraded with Redis back"
                time.sleep(0.2)
            assert call(env, "delta", 0)[0] == 200
    finally:
        server.stop()
