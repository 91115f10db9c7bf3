"""Budget alerts: each threshold fires once per window, with a log line, a metric and the webhook."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.server import alerts
from ext_proc.server.alerts import Alerts
from ext_proc.server.collectors import TallyCollector
from ext_proc.server.metrics import Exchange, Tally
from ext_proc.state.limits import MemoryBackend
from ext_proc.state.queries import Claim


class Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []
    failures = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if Hook.failures:
            Hook.failures -= 1
            self.send_response(503)
        else:
            Hook.received.append(orjson.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Hook.received, Hook.failures = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()


def daily_budget(hook: str, settings: str) -> CompiledPolicy:
    """A policy with team search's $10 daily budget, its ``settings`` and ``hook`` as its webhook."""
    return compile_policy(f"""
apiVersion: tollway/v1
providers: {{openai: {{kind: openai}}}}
models: {{gpt-4o-mini: {{provider: openai}}}}
teams: {{search: {{workloads: [w], models: ["*"]}}}}
budgets:
  search-daily: {{team: search, usd: "10", period: day, {settings}, webhook: "{hook}"}}
""")


def test_each_threshold_fires_once_and_a_failing_webhook_is_retried(hook: str, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(alerts, "RETRIES", (0.05, 0.05))
    policy = daily_budget(hook, "enforce: soft, alerts: [50, 80, 100]")
    tally = Tally()
    registry = CollectorRegistry()
    registry.register(TallyCollector(Exchange(tally, None).totals))
    fired = Alerts(lambda: policy, MemoryBackend().once, tally)
    claim = Claim("budget/search-daily/usd/search/2026-12-04", 1, 10_000_000, time.time() + 3600)

    async def scenario() -> None:
        Hook.failures = 1  # the first delivery fails, the retry gets through
        started = time.monotonic()
        fired(claim, 4_000_000)  # 40 %: nothing
        fired(claim, 8_500_000)  # 85 %: 50 and 80
        fired(claim, 8_600_000)  # nothing new
        assert time.monotonic() - started < 0.05  # never waits for the webhook
        await asyncio.sleep(0.5)
        fired(claim, 12_000_000)  # 120 %: 100
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert sorted(event["threshold_percent"] for event in Hook.received) == [50, 80, 100]
    event = next(e for e in Hook.received if e["threshold_percent"] == 100)
    assert (event["budget"], event["member"], event["unit"], event["enforce"]) == ("search-daily", "search", "usd",
                                                                                  "soft")
    assert registry.get_sample_value("tollway_budget_alerts_total", {"budget": "search-daily", "threshold": "80"}) == 1
    assert "budget search-daily reached 80% of its usd limit for search" in caplog.text


def test_a_zero_soft_budget_alerts_at_its_first_spend(hook: str) -> None:
    """usd "0" with enforce: soft (alert on any spend): its claims have capacity 0, which the alerts
    skipped, so it never alerted. Every threshold fires at the first spend, none before."""
    policy = compile_policy(f"""
apiVersion: tollway/v1
providers: {{openai: {{kind: openai}}}}
models: {{gpt-4o-mini: {{provider: openai}}}}
teams: {{search: {{workloads: [w], models: ["*"]}}}}
budgets:
  watch: {{team: search, usd: "0", period: day, enforce: soft, alerts: [50, 100], webhook: "{hook}"}}
""")
    fired = Alerts(lambda: policy, MemoryBackend().once, Tally())
    claim = Claim("budget/watch/usd/search/2026-12-04", 1, 0, time.time() + 3600)

    async def scenario() -> None:
        fired(claim, 0)  # nothing spent: nothing
        await asyncio.sleep(0.2)
        assert Hook.received == []
        fired(claim, 1)
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert sorted(event["threshold_percent"] for event in Hook.received) == [50, 100]
    assert {event["limit"] for event in Hook.received} == {0}


def test_a_second_worker_does_not_repeat_an_alert() -> None:
    policy = compile_policy("""
apiVersion: tollway/v1
providers: {openai: {kind: openai}}
models: {gpt-4o-mini: {provider: openai}}
teams: {search: {workloads: [w], models: ["*"]}}
budgets:
  b: {team: search, tokens: 100, period: day, alerts: [50]}
""")
    store = MemoryBackend()  # shared, as Redis or the node's parent is
    one, two = (Alerts(lambda: policy, store.once, Tally()) for _ in range(2))
    claim = Claim("budget/b/tokens/search/2026-12-04", 1, 100, time.time() + 3600)

    async def scenario() -> None:
        one(claim, 60)
        two(claim, 70)
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    counts = [a.tally.counters.get(("tollway_budget_alerts", "b", "50"), 0) for a in (one, two)]
    assert sorted(counts) == [0, 1]


class Slow(http.server.BaseHTTPRequestHandler):
    """A receiver that trickles its answer (a byte every 0.2 s, for ever), or redirects."""

    moved: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("location", "/elsewhere")
            self.end_headers()
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(OSError):
            for _ in range(200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)

    def do_GET(self) -> None:
        Slow.moved.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_slow_or_moved_receiver_costs_a_try_each_never_a_thread_or_a_redirect(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A receiver trickling its answer held a thread of the worker's pool for ever (the timeout was
    per read), which a shutdown waited for; a 302 was followed, as a GET, and taken for delivered."""
    monkeypatch.setattr(alerts, "RETRIES", (0.05,))
    monkeypatch.setattr(alerts, "DEADLINE", 0.5)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    Slow.moved = []
    try:
        async def deliver() -> float:
            fired = Alerts(lambda: None, MemoryBackend().once, Tally())
            started = time.monotonic()
            await asyncio.gather(fired._deliver(base + "/slow", b"{}"), fired._deliver(base + "/moved", b"{}"))
            return time.monotonic() - started

        took = asyncio.run(deliver())
    finally:
        server.shutdown()
    assert took < 2.0  # two tries of at most 0.5 s each, and a pause
    assert Slow.moved == []  # the redirect was not followed
    assert "answered 302 (it moved: /elsewhere)" in caplog.text and "gave up after 2 tries" in caplog.text


def test_a_refused_request_raises_a_hard_budgets_last_threshold(hook: str) -> None:
    policy = daily_budget(hook, "alerts: [80, 100]")
    fired = Alerts(lambda: policy, MemoryBackend().once, Tally())
    claim = Claim("budget/search-daily/usd/search/2026-12-04", 1, 10_000_000, time.time() + 3600)

    async def scenario() -> None:
        fired(claim, 9_250_000)  # 92.5 %: 80
        fired(claim, 9_250_000, refused=True)  # a request it cannot take: 100
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    last = next(e for e in Hook.received if e["threshold_percent"] == 100)
    assert last["refused"] is True and last["spent"] == 9_250_000 and last["enforce"] == "hard"
    early = Alerts(lambda: policy, MemoryBackend().once, Tally())  # refused before any spend was reported
    Hook.received.clear()

    async def refused_first() -> None:
        early(claim, 1_000_000, refused=True)
        await asyncio.sleep(0.3)

    asyncio.run(refused_first())
    assert [e["threshold_percent"] for e in Hook.received] == [100]  # 80 waits for the spend to say so


def test_an_alert_names_its_own_budget_and_the_member_whatever_its_names_hold() -> None:
    """Team and key names may hold '/' (a budget's name may not): the counter is read as
    budget/NAME/UNIT/MEMBER/WINDOW, and a key is its id with its team."""
    policy = compile_policy("""
apiVersion: tollway/v1
providers: {openai: {kind: openai}}
models: {gpt-4o-mini: {provider: openai}}
teams: {ml/search: {keys: [{id: ci/nightly, sha256: "%s"}], models: ["*"]}}
budgets:
  search: {team: "*", tokens: 1000000, period: day, alerts: [90], webhook: "https://hooks.example/search"}
  search-tokens: {key: "*", tokens: 100, period: day, alerts: [50], webhook: "https://hooks.example/tokens"}
""" % ("a" * 64))
    posted: list[tuple[str, dict[str, object]]] = []
    fired = Alerts(lambda: policy, MemoryBackend().once,
                   post=lambda url, body: posted.append((url, orjson.loads(body))))
    fired(Claim("budget/search-tokens/tokens/ci/nightly@ml/search/2026-12-04", 1, 100, time.time() + 3600), 95)
    assert [(url, e["budget"], e["unit"], e["member"], e["window"]) for url, e in posted] == [
        ("https://hooks.example/tokens", "search-tokens", "tokens", "ci/nightly@ml/search", "2026-12-04")]
