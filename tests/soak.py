"""The soak: a bounded run at a fixed rate with faults on a schedule, then the books.

Traffic: both SDKs (``openai``, ``anthropic``), JSON and streams in turn, at ``rate`` calls per
second (open loop), through the faults' stack (:func:`tests.faults.gateway`: real Envoy, two
workers, a real ``redis-server``, the fake provider, a policy that claims and settles on every
request). Some calls carry provider faults all along (:func:`provider_faults`): OpenAI failing
(the ``chat`` alias falls back to Anthropic), a stream cut mid-way, a connection closed before the
answer, a slow head.

The schedule, as fractions of the run (``D`` seconds):

====== =========================================================================================
0.30 D Redis hung (SIGSTOP) for 1.5 s
0.40 D the policy file corrupted, restored 2 s later
0.50 D the service stalled (SIGSTOP) past Envoy's message timeout (2 s) for 3 s
0.60 D Redis killed (its counters lost), started again 2 s later
0.70 D the policy file deleted, restored 2 s later
0.90 D one slow request of each kind sent; once the provider has them, both workers SIGKILLed
       (restarted; their records come from the journals)
====== =========================================================================================

Memory: the resident memory of ``tollway serve`` and its workers (and, apart, Envoy's) is
sampled every second; its growth is the mean over [0.80 D, 0.90 D) against the mean over
[0.20 D, 0.30 D) (warm-up: the first 0.20 D), both windows free of process restarts (the workers
are killed after the second). Afterwards: every request the fake provider received (by
``x-request-id``) is in the request log exactly once, and no reservation stays open.

``make soak`` runs 600 s (``python -m tests.soak``, prints the figures); ``make test`` runs
``tests/e2e/test_soak.py``: ``TOLLWAY_SOAK_SECONDS`` (default 30).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ext_proc.stack import Stack
from tests.faults import (
    KINDS,
    Call,
    Driver,
    RedisServer,
    call,
    gateway,
    kill_workers,
    ledger_check,
    mixed,
    open_reservations,
    policy,
    rss_kib,
    wait_for,
)

MESSAGE_TIMEOUT = 2.0
BOUND = 10.0  # seconds: no client waits longer than this, whatever the fault
SLOW_HEAD = "4000"  # ms the provider waits before the head of the requests the workers die under


def provider_faults(number: int) -> dict[str, str]:
    """The provider faults call ``number`` carries (6 calls in 16; :func:`tests.faults.mixed`
    makes call ``n`` an openai JSON, openai stream, anthropic JSON, anthropic stream call as n % 4)."""
    kind = number % 16
    if kind in (0, 5):  # openai JSON and stream: OpenAI fails, the chat alias falls back to Anthropic
        return {"x-mock-openai-status": "500"}
    if kind in (3, 9):  # both SDKs' streams: the provider closes the connection after 3 events
        return {"x-mock-cut-after": "3", "x-mock-inter-chunk-ms": "40"}
    if kind == 14:  # anthropic JSON: the connection closed before the answer (a 502)
        return {"x-mock-cut-after": "3"}
    if kind == 6:  # anthropic JSON: a slow head
        return {"x-mock-latency-ms": "400"}
    return {"x-mock-inter-chunk-ms": "20"}


@dataclass
class Figures:
    """What a soak run shows."""

    seconds: float
    rate: float
    calls: list[Call]
    reached: int = 0  # requests the fake provider received
    recorded: int = 0  # records in the request log
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    recovered: int = 0  # records written from a dead worker's journal
    open_reservations: int = -1
    rss_start_kib: int = 0  # tollway serve + workers, mean over the window after warm-up
    rss_end_kib: int = 0
    envoy_start_kib: int = 0
    envoy_end_kib: int = 0
    faults: list[tuple[float, str]] = field(default_factory=list)  # (seconds into the run, what)

    @property
    def growth(self) -> float:
        return (self.rss_end_kib - self.rss_start_kib) / self.rss_start_kib * 100

    @property
    def envoy_growth(self) -> float:
        return (self.envoy_end_kib - self.envoy_start_kib) / self.envoy_start_kib * 100

    @property
    def slowest(self) -> Call:
        return max(self.calls, key=lambda c: c.seconds)

    def report(self) -> str:
        outcomes = collections.Counter(c.outcome for c in self.calls)
        kinds = collections.Counter(f"{c.sdk} {'stream' if c.stream else 'json'}" for c in self.calls)
        lines = [
            f"soak: {self.seconds:g} s at {self.rate:g} calls/s, {len(self.calls)} calls "
            f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})",
            f"  clients saw: {', '.join(f'{k} {n}' for k, n in outcomes.most_common())}; "
            f"slowest {self.slowest.seconds:.2f} s",
            f"  faults: {'; '.join(f'{at:.0f} s {what}' for at, what in self.faults)}",
            f"  reached the provider: {self.reached}; records: {self.recorded} "
            f"({self.recovered} recovered from a dead worker's journal)",
            f"  ledger: {len(self.lost)} lost, {len(self.doubled)} doubled"
            f" -> {'exactly once' if not self.lost and not self.doubled else 'NOT exactly once'}",
            f"  open reservations after: {self.open_reservations}",
            f"  RSS tollway serve + workers: {self.rss_start_kib / 1024:.1f} MiB -> {self.rss_end_kib / 1024:.1f} MiB "
            f"({self.growth:+.2f} %)",
            f"  RSS Envoy: {self.envoy_start_kib / 1024:.1f} MiB -> {self.envoy_end_kib / 1024:.1f} MiB "
            f"({self.envoy_growth:+.2f} %)",
        ]
        return "\n".join(lines)


class Sampler:
    """RSS every ``interval`` seconds: (seconds into the run, service KiB, Envoy KiB)."""

    def __init__(self, stack: Stack, began: float, interval: float = 1.0) -> None:
        self.stack, self.began, self.interval = stack, began, interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                service = rss_kib(self.stack.service_pids())
            except (OSError, KeyError):
                continue
            self.samples.append((time.monotonic() - self.began, service, rss_kib([self.stack.procs["envoy"].pid])))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self, start: float, end: float) -> tuple[int, int]:
        window = [(s, e) for at, s, e in self.samples if start <= at < end]
        assert window, f"no memory sample between {start:.0f} s and {end:.0f} s"
        return int(statistics.mean(s for s, _ in window)), int(statistics.mean(e for _, e in window))


def run(work: Path, seconds: float, rate: float, out: Callable[[str], None] = lambda _: None) -> Figures:
    """Run the soak (see the module docstring) and take its figures; asserts nothing itself."""
    server = RedisServer(work / "redis").start()
    stack = gateway(work, redis_url=server.url, message_timeout=f"{MESSAGE_TIMEOUT:g}s",
                    first_byte_timeouts=("5s", "5s"))
    try:
        with stack:
            return _run(stack, server, seconds, rate, out)
    finally:
        server.stop()


def _run(stack: Stack, server: RedisServer, seconds: float, rate: float, out: Callable[[str], None]) -> Figures:
    assert stack.policy is not None
    path = stack.policy
    began = time.monotonic()
    faults: list[tuple[float, str]] = []

    def at(fraction: float, what: str) -> None:
        """Wait until ``fraction`` of the run, then note ``what`` happens."""
        delay = began + fraction * seconds - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        faults.append((time.monotonic() - began, what))
        out(f"{faults[-1][0]:6.1f} s  {what}")

    driver = Driver(stack.base_url, rate, lambda n: mixed(n, provider_faults)).start()
    sampler = Sampler(stack, began).start()
    try:
        at(0.30, "Redis hung (SIGSTOP) 1.5 s")
        server.pause()
        time.sleep(1.5)
        server.resume()
        at(0.40, "policy file corrupted, restored after 2 s")
        path.write_text(policy() + "\nmodels: [unclosed\n")
        time.sleep(2)
        path.write_text(policy(note="restored after corruption"))
        at(0.50, f"service stalled (SIGSTOP) 3 s, past Envoy's {MESSAGE_TIMEOUT:g} s message timeout")
        pids = stack.service_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        at(0.60, "Redis killed (counters lost), started after 2 s")
        server.stop(signal.SIGKILL)
        time.sleep(2)
        server.start()
        at(0.70, "policy file deleted, restored after 2 s")
        path.unlink()
        time.sleep(2)
        path.write_text(policy(note="restored after deletion"))
        at(0.90, "both workers SIGKILLed while 4 slow requests are upstream (restarted by the supervisor)")
        slow = _upstream_then_kill(stack)
        at(1.0, "load stopped")
    finally:
        calls = driver.stop()
        sampler.stop()
    figures = Figures(seconds, rate, calls + slow, faults=faults)
    figures.rss_start_kib, figures.envoy_start_kib = sampler.mean(0.20 * seconds, 0.30 * seconds)
    figures.rss_end_kib, figures.envoy_end_kib = sampler.mean(0.80 * seconds, 0.90 * seconds)
    check = ledger_check(stack, wait=20)
    figures.reached, figures.recorded = check.reached, check.recorded
    figures.lost, figures.doubled = check.lost, check.doubled
    figures.recovered = sum(1 for r in check.by_id.values() if r.get("recovered"))
    with contextlib.suppress(AssertionError):  # the dead worker's reservations expire after --hold-ttl (3 s here)
        wait_for(lambda: open_reservations(stack, server.port) == 0, 20, "no reservation open")
    figures.open_reservations = open_reservations(stack, server.port)
    return figures


def _upstream_then_kill(stack: Stack) -> list[Call]:
    """Send one slow request of each kind, SIGKILL both workers once the provider has them all
    (so their records can only come from the journals), and return what those clients saw."""
    def slow_ones() -> int:
        found = httpx.get(f"http://127.0.0.1:{stack.mock_port}/_mock/requests", timeout=30).json()
        return sum(1 for r in found if ["x-mock-latency-ms", SLOW_HEAD] in r["headers"])

    with concurrent.futures.ThreadPoolExecutor(len(KINDS)) as pool:
        futures = [pool.submit(call, stack.base_url, sdk, stream, headers={"x-mock-latency-ms": SLOW_HEAD})
                   for sdk, stream in KINDS]
        with contextlib.suppress(AssertionError):  # late under load: the kill then finds fewer upstream
            wait_for(lambda: slow_ones() >= len(KINDS), 3, "the slow requests reach the provider")
        kill_workers(stack)
        return [future.result() for future in futures]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("TOLLWAY_SOAK_SECONDS", 600)))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("TOLLWAY_SOAK_RATE", 10)))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollway-soak-") as work:
        figures = run(Path(work), args.seconds, args.rate, out=print)
    print(figures.report())
    failed = problems(figures)
    for problem in failed:
        print("FAILED:", problem)
    return 1 if failed else 0


def problems(figures: Figures) -> list[str]:
    """What the soak's figures break, if anything."""
    found = []
    if figures.reached == 0:
        found.append("no request reached the provider")
    if figures.lost or figures.doubled:
        found.append(f"{len(figures.lost)} lost {figures.lost[:5]}, "
                     f"{len(figures.doubled)} doubled {figures.doubled[:5]}")
    if figures.open_reservations != 0:
        found.append(f"{figures.open_reservations} reservation(s) still open")
    if figures.growth >= 5:
        found.append(f"RSS grew {figures.growth:.2f} % after warm-up")
    if figures.slowest.seconds >= BOUND:
        found.append(f"a client waited {figures.slowest.seconds:.1f} s: {figures.slowest}")
    return found


if __name__ == "__main__":
    sys.exit(main())
