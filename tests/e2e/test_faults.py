"""Faults under load: what each client sees, and what the request log (the ledger) holds.

One stack (a real Envoy, ``tollway serve`` with two workers, a real ``redis-server``, the fake
provider for OpenAI and Anthropic) driven through the official SDKs at a fixed rate, both SDKs,
JSON and streams, with a budget, rate limits, a guardrail and a fallback alias in the policy.
Every test ends with the ledger check: each request the fake provider received (by the
``x-request-id`` Envoy keeps on every try) has exactly one record. Envoy's ``message_timeout`` is
2 s here (5 s in the shipped config) and the first-byte timeouts 1 s, to keep the tests short.

Covered elsewhere and not repeated here: SIGTERM's grace, the 500 of a service that is down and
workers stopping with a SIGKILLed supervisor (``test_lifecycle.py``), fallback on each provider
failure and a cut stream's error event (``test_routing_e2e.py``), Redis stopped and started in
both ``on_unavailable`` modes and a killed sidecar's leases (``test_limits_redis_e2e.py``),
reloads under load (``test_policy_e2e.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ext_proc.server import spool as spool_module
from ext_proc.stack import Stack
from ext_proc.state.ledger import RedisLedger
from tests.faults import (
    Call,
    Driver,
    RedisServer,
    admin,
    call,
    gateway,
    kill_service,
    kill_workers,
    ledger_check,
    metric,
    mixed,
    open_reservations,
    policy,
    provider_requests,
    records_for,
    seen_ids,
    wait_for,
)
from tests.faults import (
    records as all_records,
)

pytestmark = pytest.mark.e2e

MESSAGE_TIMEOUT = 2.0
SLOW = {"x-mock-latency-ms": "700", "x-mock-inter-chunk-ms": "120"}  # requests stay in flight ~0.7-1.2 s
SLACK = 3.0  # seconds a loaded 2-core machine may add to any timing
BOUND = 10.0  # no client waits longer than this (plus a restart it waits for), whatever the fault


class Env:
    def __init__(self, stack: Stack, redis: RedisServer) -> None:
        self.stack, self.redis = stack, redis

    def load(self, rate: float, headers: dict[str, str] | None = None) -> Driver:
        return Driver(self.stack.base_url, rate, lambda n: mixed(n, lambda _: dict(headers or {}))).start()

    def ok(self) -> Call:
        return call(self.stack.base_url, "openai", False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("faults")
    server = RedisServer(work / "redis").start()
    stack = gateway(work, redis_url=server.url, message_timeout=f"{MESSAGE_TIMEOUT:g}s",
                    first_byte_timeouts=("1s", "1s"))
    try:
        with stack:
            yield Env(stack, server)
    finally:
        server.stop()


def _exact(env: Env, before: set[str]) -> dict[str, dict[str, object]]:
    check = ledger_check(env.stack, since=before)
    assert check.reached > 0
    assert not check.lost, f"{len(check.lost)} request(s) reached the provider without a record: {check.lost[:5]}"
    assert not check.doubled, f"records written twice: {check.doubled[:5]}"
    return check.by_id


def _agree(calls: list[Call], records: dict[str, dict[str, object]], restart: float = 0.0) -> None:
    """A client that got a clean answer has an ``ok`` record; nobody waited past the bound (plus
    ``restart``: the seconds a service took to come back, which a request may wait for)."""
    slowest = max(calls, key=lambda c: c.seconds)
    assert slowest.seconds < BOUND + restart, f"a client hung: {slowest}"
    for c in calls:
        if c.clean:
            assert c.request_id is not None and records[c.request_id]["outcome"] == "ok", c


def _cut(calls: list[Call], records: dict[str, dict[str, Any]], killed_at: float, killed_wall: float
         ) -> list[Call]:
    """The calls in flight at the kill: started before it, ended after it at the client, and not
    answered whole before it (on a busy machine a client may read an answer the gateway finished
    before the kill well after it: its record, written at the end, says so)."""
    return [c for c in calls if c.started < killed_at - 0.1 and c.started + c.seconds > killed_at + 0.3
            and not (c.clean and c.request_id in records and records[c.request_id]["ts"] < killed_wall)]


def test_the_service_killed_under_load_fails_closed_fast_restarts_and_loses_no_record(env: Env) -> None:
    stack = env.stack
    before = seen_ids(stack)
    driver = env.load(20, SLOW)
    time.sleep(1.5)
    killed_at, killed_wall = time.monotonic(), time.time()
    kill_service(stack)  # SIGKILL: the supervising process and every worker, no goodbye
    time.sleep(1.0)
    stack.respawn("tollway")
    back_at = time.monotonic()
    time.sleep(1.5)
    calls = driver.stop()
    records = _exact(env, before)
    _agree(calls, records, back_at - killed_at)
    # Fail closed, fast: while it is down every client gets a 500 in its SDK's format, because
    # nothing listens (not after waiting for a timeout).
    down = [c for c in calls if killed_at + 0.2 < c.started < killed_at + 1.0]
    assert down and all(c.status == 500 and c.format_ok and "Connection_refused" in c.detail
                        and c.seconds < MESSAGE_TIMEOUT for c in down), (killed_at, down)
    # In flight at the kill: never a clean success; the journal recovered their records.
    cut = _cut(calls, records, killed_at, killed_wall)
    assert cut and not any(c.clean for c in cut), cut
    recovered = [r for r in records.values() if r.get("recovered")]
    assert recovered and all(r["outcome"] == "incomplete" and r["error"] == "service_interrupted"
                             and r["output_tokens"] is None for r in recovered)
    # Resumed: every call after the restart is served.
    after = [c for c in calls if c.started > back_at]
    assert after and all(c.clean for c in after), [c for c in after if not c.clean]
    wait_for(lambda: open_reservations(stack, env.redis.port) == 0, 8, "the dead workers' reservations expire")


def counted(stack: Stack) -> tuple[int, int, int]:
    """(requests counted by /metrics, of which recovered from journals (incomplete with no status),
    records in the request log)."""
    total = recovered = 0.0
    for line in admin(stack, "/metrics").splitlines():
        if line.startswith("tollway_requests_total{"):
            value = float(line.rsplit(" ", 1)[1])
            total += value
            if 'outcome="incomplete"' in line and 'status="none"' in line:
                recovered += value
    return round(total), round(recovered), len(stack.record_log.read_text().splitlines())


def test_workers_killed_under_load_are_restarted_and_lose_no_record(env: Env) -> None:
    stack = env.stack
    before = seen_ids(stack)
    time.sleep(1.2)  # no traffic: every worker has published its counts (every 0.5 s)
    metrics_before, recovered_before, log_before = counted(stack)
    driver = env.load(20, SLOW)
    time.sleep(1.5)
    killed_at, killed_wall = time.monotonic(), time.time()
    killed = kill_workers(stack)  # every worker; the supervising process restarts them
    wait_for(lambda: len(set(stack.service_pids()[1:]) - set(killed)) == 2, 15, "both workers restarted")
    wait_for(lambda: env.ok().clean, 15, "the new workers serve")
    back_at = time.monotonic()
    time.sleep(1.5)
    calls = driver.stop()
    records = _exact(env, before)
    _agree(calls, records, back_at - killed_at)
    # Meanwhile Envoy's new connections wait in the supervisor: served once a worker is up, or a
    # 500/504 in the SDK's format; never a hang.
    meanwhile = [c for c in calls if killed_at + 0.2 < c.started < back_at - 0.5]
    assert meanwhile and all(c.clean or (c.status in (500, 504) and c.format_ok) for c in meanwhile), meanwhile
    assert all(c.seconds < MESSAGE_TIMEOUT + SLACK for c in meanwhile if not c.clean), meanwhile
    cut = _cut(calls, records, killed_at, killed_wall)
    assert cut and not any(c.clean for c in cut), cut
    assert any(r.get("recovered") for r in records.values())
    after = [c for c in calls if c.started > back_at]
    assert after and all(c.clean for c in after), [c for c in after if not c.clean]
    # /metrics counts the records the supervisor recovered from the journals (a tally of its own).
    recovered = sum(1 for r in records.values() if r.get("recovered"))
    time.sleep(1.2)
    metrics_after, recovered_after, log_after = counted(stack)
    assert recovered_after - recovered_before == recovered  # counted by the supervisor, each once
    # A worker publishes its counts every 0.5 s: one killed by SIGKILL takes at most that much of
    # them along (at this rate, ten requests per worker); the ledger loses none.
    missing = (log_after - log_before) - (metrics_after - metrics_before)
    assert 0 <= missing <= 20, missing


def test_records_recovered_while_redis_is_down_reach_the_aggregates_and_metrics(env: Env) -> None:
    """Workers killed while Redis is down: the supervisor writes their requests in flight to the log
    from the journal, /metrics counts them at once, and the spend aggregates get them when Redis is
    back (the journal is gone by then: the supervisor keeps them and retries)."""
    stack, server = env.stack, env.redis
    before = seen_ids(stack)
    time.sleep(1.2)  # no traffic: every worker has published its counts
    _, recovered_before, _ = counted(stack)
    driver = env.load(10, SLOW)
    time.sleep(1.5)
    down_wall = time.time()
    server.stop(signal.SIGKILL)  # gone, with every aggregate it held: what follows starts from zero
    try:
        # At once: the requests upstream stay in flight (0.7 s and more) while new ones past the
        # leases are refused (on_unavailable: closed) and never go upstream.
        killed = kill_workers(stack)
        wait_for(lambda: len(set(stack.service_pids()[1:]) - set(killed)) == 2, 15, "both workers restarted")
        time.sleep(1.0)  # recovered meanwhile, Redis still down
    finally:
        server.start()
    time.sleep(1.0)
    calls = driver.stop()
    _agree(calls, _exact(env, before), 15)
    log = all_records(stack)
    recovered = [r for r in log if r.get("recovered") and r["ts"] >= down_wall]
    assert recovered, "no request was in flight at the kill"
    # /metrics: counted by the supervisor, though Redis refused them.
    wait_for(lambda: counted(stack)[1] - recovered_before == len(recovered), 5, "/metrics counts the recovered")
    # The aggregates (empty since the restart): the recovered records, with the incomplete ones
    # the live workers wrote meanwhile and sent again; never more than the log has since then.
    since = sum(1 for r in log if r.get("outcome") == "incomplete" and r["ts"] >= down_wall)

    def in_redis() -> int:
        return sum(row.incomplete for row in RedisLedger(redis.Redis(port=server.port)).rows("team"))

    wait_for(lambda: in_redis() >= len(recovered), 10, "the recovered records reach the aggregates")
    assert in_redis() <= since
    wait_for(lambda: open_reservations(stack, server.port) == 0, 8, "the dead workers' reservations expire")


def test_a_service_stalled_past_envoys_message_timeout_is_a_504_and_resumes(env: Env) -> None:
    stack = env.stack
    before = seen_ids(stack)
    driver = env.load(10, SLOW)
    time.sleep(1.5)
    pids = stack.service_pids()
    stalled_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # a service that hangs: sockets open, nothing answered
    try:
        time.sleep(MESSAGE_TIMEOUT + 1.5)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    time.sleep(2.0)
    calls = driver.stop()
    records = _exact(env, before)
    _agree(calls, records)
    during = [c for c in calls if stalled_at + 0.1 < c.started < resumed_at - MESSAGE_TIMEOUT - 0.3]
    assert during and all(c.status == 504 and c.format_ok and "per-message_timeout" in c.detail
                          for c in during), [(c, c.detail) for c in during]
    assert all(c.seconds < MESSAGE_TIMEOUT + SLACK for c in during), during
    after = [c for c in calls if c.started > resumed_at + 0.3]
    assert after and all(c.clean for c in after), ([c for c in after if not c.clean], _warnings(stack))


def _warnings(stack: Stack) -> list[str]:
    """The service log's last warnings and errors (what a failure's message should carry)."""
    lines = (stack.workdir / "tollway.log").read_text(errors="replace").splitlines()
    return [line for line in lines if "WARNING" in line or "ERROR" in line][-20:]


def test_redis_slow_then_down_answers_within_its_deadline_and_recovers(env: Env) -> None:
    stack, server = env.stack, env.redis
    before = seen_ids(stack)
    driver = env.load(20)
    degraded = []

    def watch(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                degraded.append(admin(stack, "/readyz")["limits"]["degraded"])
            time.sleep(0.1)

    time.sleep(1.0)
    server.pause()  # a hung Redis: connections open, no answer
    try:
        watch(2.5)
    finally:
        server.resume()
    time.sleep(1.0)
    server.stop(signal.SIGKILL)  # gone, with every counter it held
    watch(2.5)
    server.start()
    time.sleep(2.5)
    calls = driver.stop()
    records = _exact(env, before)
    _agree(calls, records)
    assert True in degraded, "/readyz never showed the degraded store"
    for c in calls:
        # Served on the leases in hand, or refused in the closed mode: never a 500, never a hang.
        assert c.clean or (c.status == 503 and c.format_ok
                           and records[c.request_id or ""]["error"] == "state_unavailable"
                           and records[c.request_id or ""]["outcome"] == "rejected"), c
        assert c.seconds < 1.0 + SLACK, c  # the store's 1 s deadline
    assert all(c.clean for c in calls[-10:]), calls[-10:]
    # Each worker learns the store is back at its next exchange with it (a request, or its report
    # of what it spent): /readyz, answered by either worker, says so once both have had one.
    wait_for(lambda: env.ok().clean and admin(stack, "/readyz")["limits"]["degraded"] is False, 5,
             "/readyz says the store is back")
    wait_for(lambda: open_reservations(stack, server.port) == 0, 8, "reservations come back to zero")


def test_a_provider_down_slow_or_failing_mid_stream(env: Env) -> None:
    stack = env.stack
    before = seen_ids(stack)
    base = stack.base_url
    # (what goes wrong, the call) -> what the client sees
    fallback = call(base, "openai", False, model="chat", headers={"x-mock-openai-status": "500"})
    assert fallback.clean
    # (a stall of 6 s: an answer well before it is the 1 s first-byte timeout's doing)
    slow_fallback = call(base, "openai", True, model="chat", headers={"x-mock-openai-latency-ms": "6000"})
    assert slow_fallback.clean and slow_fallback.seconds < 1 + SLACK  # after 1 s, Anthropic
    failing = call(base, "anthropic", False, headers={"x-mock-status": "529"})
    assert failing.status == 529 and failing.format_ok
    slow = call(base, "openai", False, model="gpt-4o-mini", headers={"x-mock-latency-ms": "6000"})
    assert slow.status == 504 and slow.format_ok and slow.seconds < 1 + SLACK  # the same timeout: no fallback
    # Reset mid-stream: once the client has the head, its stream breaks (the SDK raises, never a
    # clean end); before that (Envoy still held the first events), a 502 in the SDK's format.
    cut = [call(base, sdk, True, model=model, headers={"x-mock-cut-after": after, "x-mock-inter-chunk-ms": pause})
           for sdk, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku"))
           for after, pause in (("2", "0"), ("3", "100"))]
    for c in cut:
        assert not c.clean and c.seconds < 1 + SLACK, c
        assert (c.status == 200 and c.error) or (c.status == 502 and c.format_ok), c
    records = _exact(env, before)
    assert records[fallback.request_id or ""]["provider"] == "anthropic"
    assert records[fallback.request_id or ""]["fallback"] is True
    assert records[slow_fallback.request_id or ""]["provider"] == "anthropic"
    assert records[failing.request_id or ""]["outcome"] == "error"
    assert records[failing.request_id or ""]["status"] == 529
    assert records[slow.request_id or ""]["outcome"] == "error" and records[slow.request_id or ""]["status"] == 504
    for c in cut:  # the provider's status was 200: the stream is billed on estimates (it did the work)
        record = records[c.request_id or ""]
        assert record["outcome"] == "incomplete" and record["status"] == 200
        assert record["error"] == "stream_interrupted", record  # as for a stream the provider ended early
        assert record["input_tokens"] is not None and record["output_tokens"] is not None
    # The provider down (its process killed): a 503 in the SDK's format at once, recorded.
    mock = stack.procs["mock"]
    mock.kill()
    mock.wait(10)
    try:
        down = [call(base, sdk, stream) for sdk, stream in (("openai", False), ("anthropic", True))]
        assert all(c.status == 503 and c.format_ok and c.seconds < SLACK for c in down), down
        # Named, with where Envoy reaches it and what to check (not Envoy's bare "no healthy upstream").
        for c, provider in zip(down, ("openai", "anthropic"), strict=True):
            assert "Tollway could not reach " in c.detail and "connection was refused" in c.detail, c.detail
            assert f"provider '{provider}' (its stand-in, 127.0.0.1:{stack.mock_port})" in c.detail, c.detail
            assert "Is the stand-in running" in c.detail, c.detail
        found = records_for(stack, [c.request_id for c in down])
        assert all(found[c.request_id or ""]["outcome"] == "error" and found[c.request_id or ""]["status"] == 503
                   for c in down)
    finally:
        stack.respawn("mock")
    assert env.ok().clean


def test_a_provider_answering_2xx_without_an_answer_or_cutting_one_is_a_502_recorded_as_such(env: Env) -> None:
    """A 2xx that is no answer (a proxy's HTML page, no body, a stream request answered with
    anything but an event stream): the client's 502 ``invalid_provider_answer`` in its SDK's format,
    never a 200 its SDK chokes on or an empty stream it takes for an answer. A buffered answer the
    provider cuts after its head: Envoy's 502, and the record says 502 too."""
    stack = env.stack
    before = seen_ids(stack)
    base = stack.base_url
    invalid = [call(base, sdk, stream, model=model, headers={"x-mock-cassette": name})
               for name in ("html-200", "empty-200")
               for sdk, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku"))
               for stream in (False, True)]
    # translated: an OpenAI client served by Claude
    invalid += [call(base, "openai", stream, model="claude-haiku", headers={"x-mock-cassette": "html-200"})
                for stream in (False, True)]
    for c in invalid:
        assert c.status == 502 and c.format_ok and not c.clean, c
        code = "invalid_provider_answer" if c.sdk == "openai" else "api_error"  # (Anthropic's format has no code)
        assert (c.error or "").endswith(f": {code}"), c
    cut = call(base, "openai", False, model="gpt-4o-mini", headers={"x-mock-cut-after": "1"})  # half the body, closed
    assert cut.status == 502 and cut.format_ok, cut
    # An error event mid-stream: the SDK raises APIStatusError on a response it never read.
    failed = call(base, "anthropic", True, headers={"x-mock-cassette": "anthropic-error-event"})
    assert failed.status == 200 and failed.format_ok and failed.error == "APIStatusError: overloaded_error", failed
    records = _exact(env, before)
    for c in invalid:
        record = records[c.request_id or ""]
        assert (record["status"], record["outcome"], record["error"]) == (502, "error", "invalid_provider_answer"), c
        assert record["provider"] == ("openai" if c.model == "gpt-4o-mini" else "anthropic"), record
    record = records[cut.request_id or ""]
    assert (record["status"], record["outcome"], record["error"]) == (200, "incomplete", "answer_interrupted"), record
    record = records[failed.request_id or ""]
    assert (record["status"], record["outcome"], record["error"]) == (200, "incomplete", "overloaded_error"), record
    assert env.ok().clean


def test_the_policy_file_corrupted_then_deleted_keeps_the_last_good_policy(env: Env) -> None:
    stack = env.stack
    path = stack.policy
    assert path is not None
    before = seen_ids(stack)
    version = admin(stack, "/readyz")["policy"]["version"]

    def stale() -> bool:
        shown = admin(stack, "/readyz")["policy"]
        return bool(shown["state"] == "stale" and shown["version"] == version)

    def serves() -> None:
        for sdk, stream in (("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)):
            assert call(stack.base_url, sdk, stream).clean, (sdk, stream)

    try:
        path.write_text(policy() + "\nmodels: [unclosed\n")  # corrupted: not YAML any more
        wait_for(stale, 5, "the corrupted policy is rejected")
        assert metric(admin(stack, "/metrics"), "tollway_policy_stale") == 1.0
        serves()
        kill_workers(stack, 1)  # a worker restarted meanwhile gets the last good policy too
        wait_for(lambda: len(stack.service_pids()) == 3 and env.ok().clean, 15, "the worker restarted")
        serves()
        path.unlink()  # deleted
        wait_for(lambda: "No such file" in str(admin(stack, "/readyz")["policy"]["last_reload_error"]), 5,
                 "the missing policy is reported")
        assert stale()
        serves()
        # A service started while the file is broken has no last good policy: it refuses to start,
        # and Envoy fails closed meanwhile.
        path.write_text("apiVersion: tollway/v2\n")
        kill_service(stack)
        with pytest.raises(RuntimeError, match="exited with 2"):
            stack.respawn("tollway")
        assert call(stack.base_url, "openai", False).status == 500
    finally:
        path.write_text(policy(note="restored"))
        if stack.procs["tollway"].poll() is not None:
            stack.respawn("tollway")
    wait_for(lambda: admin(stack, "/readyz")["policy"]["state"] == "current", 5, "the restored policy loads")
    assert metric(admin(stack, "/metrics"), "tollway_policy_stale") == 0.0
    serves()
    _exact(env, before)


def test_a_full_disk_under_the_request_log_keeps_serving_says_so_and_writes_the_records_later(env: Env) -> None:
    stack = env.stack
    before = seen_ids(stack)
    log = stack.record_log
    # The log so far becomes a rotated file (the readers see it); the path now leads to /dev/full,
    # where every write fails with ENOSPC, as on a full disk.
    os.rename(log, log.with_name(log.name + ".20000101T000000.000000Z"))
    os.symlink("/dev/full", log)
    try:
        calls = [call(stack.base_url, sdk, stream) for sdk, stream in
                 (("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True))] * 3
        assert all(c.clean for c in calls), calls  # fail open for the log: requests are served

        def says_full() -> bool:
            shown = admin(stack, "/readyz")
            state = shown["request_log"]
            return bool(shown["ready"] and not state["ok"] and state["error"] == "No space left on device"
                        and state["waiting"] > 0)

        # (either worker may answer, and only one that has tried to write says so: a loaded machine
        # takes a while to deal a scrape to it)
        wait_for(says_full, 15, "/readyz shows the unwritable log")

        def metrics_say_so() -> bool:  # (summed over the workers; published every 0.5 s)
            text = admin(stack, "/metrics")
            return ((metric(text, "tollway_request_log_failing") or 0) >= 1
                    and (metric(text, "tollway_request_log_write_failures_total") or 0) > 0
                    and (metric(text, "tollway_request_log_waiting") or 0) > 0)

        wait_for(metrics_say_so, 5, "the metrics show the unwritable log")
    finally:
        os.unlink(log)  # space again: the writers create the file and write what waited
    wait_for(lambda: all(admin(stack, "/readyz")["request_log"]["ok"] for _ in range(6)), 5, "the log recovers")
    records = _exact(env, before)
    _agree(calls, records)
    assert all(c.request_id in records for c in calls)
    assert all(admin(stack, "/readyz")["request_log"]["dropped"] == 0 for _ in range(4))


def test_a_service_started_on_a_log_it_can_never_write_serves_and_says_so(tmp_path: Path) -> None:
    # --log-file /dev/full: every write fails with ENOSPC. Requests are served (the log fails
    # open, loudly); /readyz and the metrics say it; the records wait in memory (bounded).
    stack = gateway(tmp_path, serve_args=("--log-file", "/dev/full"))
    with stack:
        calls = [call(stack.base_url, sdk, stream) for sdk, stream in
                 (("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True))]
        assert all(c.clean for c in calls), calls
        shown = admin(stack, "/readyz")
        assert shown["ready"] is True, shown
        # (either worker may answer: one that has written nothing yet has met no error)
        shown_states: list[dict[str, object]] = []

        def says_full() -> bool:
            shown_states.append(admin(stack, "/readyz")["request_log"])
            return not shown_states[-1]["ok"]

        wait_for(says_full, 5, "/readyz shows the unwritable log")
        state = shown_states[-1]
        assert state["error"] == "No space left on device" and state["dropped"] == 0, state

        def metrics_say_so() -> bool:
            text = admin(stack, "/metrics")
            return ((metric(text, "tollway_request_log_failing") or 0) >= 1
                    and (metric(text, "tollway_request_log_waiting") or 0) == len(calls))

        wait_for(metrics_say_so, 5, "the metrics show the unwritable log and the 4 records waiting")
    assert not stack.record_log.exists()  # nothing went anywhere else
    assert not Path("/dev/.full.inflight").exists()  # no journal next to a device


# -- the request log on stdout (the Kubernetes sidecar's), the crash-safety files in --state-dir --------


def _in_redis(port: int) -> tuple[int, int]:
    """(requests, of which incomplete) in the spend aggregates."""
    rows = RedisLedger(redis.Redis(port=port)).rows("team")
    return sum(row.requests for row in rows), sum(row.incomplete for row in rows)


def test_a_worker_killed_mid_request_with_the_log_on_stdout_gets_its_record_from_the_state_dir(
        tmp_path: Path) -> None:
    """No --log-file (records on stdout, as the injected sidecar logs them) and --state-dir: a
    worker SIGKILLed (an OOM kill) while its request is at the provider has that request's record
    written to the supervisor's stdout from its journal in DIR/inflight, once, marked recovered,
    and added to the spend aggregates (Redis)."""
    server = RedisServer(tmp_path / "redis").start()
    state = tmp_path / "state"
    stack = gateway(tmp_path, redis_url=server.url, log_to_stdout=True, serve_args=("--state-dir", str(state)))
    try:
        with stack:
            assert "--log-file" not in stack.serve_argv()
            for name in ("inflight", "aggregates"):  # made by the supervisor, this user's only
                assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o700, name
            assert call(stack.base_url, "openai", False).clean  # the log is stdout: records land there
            before = seen_ids(stack)
            slow: list[Call] = []
            thread = threading.Thread(target=lambda: slow.append(call(
                stack.base_url, "openai", False, headers={"x-mock-latency-ms": "4000"})))
            thread.start()
            wait_for(lambda: bool(set(provider_requests(stack)) - before), 10, "the request reaches the provider")
            (request_id,) = set(provider_requests(stack)) - before
            killed = kill_workers(stack)
            thread.join(30)
            assert slow and not slow[0].clean, slow
            wait_for(lambda: len(set(stack.service_pids()[1:]) - set(killed)) == 2, 15, "both workers restarted")
            found = records_for(stack, [request_id], wait=10)
            assert found, "the request in flight has no record on stdout"
            record = found[request_id]
            assert record["recovered"] is True and record["outcome"] == "incomplete"
            assert record["error"] == "service_interrupted" and record["output_tokens"] is None
            check = ledger_check(stack, since=before - {request_id})
            assert not check.lost and not check.doubled, check
            wait_for(lambda: _in_redis(server.port)[1] >= 1, 10, "the recovered record reaches the aggregates")
            assert not list((state / "inflight").glob(f"{killed[0]}-*.journal"))  # taken over and deleted
    finally:
        server.stop()


def test_batches_redis_has_not_taken_survive_a_restart_of_the_service_with_the_log_on_stdout(
        tmp_path: Path) -> None:
    """Records on stdout, --state-dir: Redis is down while requests are served (on_unavailable:
    open), the whole service is killed (a container restart), Redis comes back: the service
    started again sends the batches its dead processes spooled in DIR/aggregates, each once."""
    server = RedisServer(tmp_path / "redis").start()
    state = tmp_path / "state"
    stack = gateway(tmp_path, redis_url=server.url, on_unavailable="open", log_to_stdout=True,
                    serve_args=("--state-dir", str(state), "--spool-max", "8"))
    try:
        with stack:
            server.stop(signal.SIGKILL)
            calls = [call(stack.base_url, sdk, stream) for sdk, stream in
                     (("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)) * 2]
            assert all(c.clean for c in calls), calls
            assert len(records_for(stack, [c.request_id for c in calls])) == len(calls)  # on stdout

            def spooled() -> int:
                return sum(spool_module._count(line) for path in (state / "aggregates").glob("*.aggregates")
                           for line in path.read_bytes().splitlines(keepends=True)[1:])

            wait_for(lambda: spooled() == len(calls), 5, "the workers spool the batches Redis does not take")
            kill_service(stack)
            server.start()  # empty: no persistence
            stack.respawn("tollway")
            wait_for(lambda: _in_redis(server.port)[0] >= len(calls), 15, "the spooled batches reach Redis")
            time.sleep(1.0)
            assert _in_redis(server.port)[0] == len(calls)  # each batch once
            wait_for(lambda: spooled() == 0, 5, "the spools taken over are deleted")
    finally:
        server.stop()
