"""``make bench-metrics``: what counting one request costs, three ways, per record (process CPU).

1. ``tally``: Tollway's way (:mod:`ext_proc.server.metrics`): plain dictionaries in the worker,
   written to a file per worker twice a second, summed at scrape.
2. ``prometheus``: the same metric set as ``prometheus_client`` Counters and Histograms in one
   process's registry (what a single worker did before; wrong across workers).
3. ``multiprocess``: the same, in ``prometheus_client``'s multiprocess mode
   (``PROMETHEUS_MULTIPROC_DIR``): every increment written to the process's mmap file.

Also measured: writing the tally's file (per write, amortised over the requests in 0.5 s) and
a scrape summing the files of N workers. The records are a realistic mix (chat, streams with a
time to first token, a guardrail trigger, a fallback, a refusal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = {"request_id": "r", "team": "search", "key_id": "search-ci", "workload": None,
        "api": "openai.chat.completions", "model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024-07-18",
        "provider": "openai", "stream": False, "status": 200, "outcome": "ok", "error": None,
        "input_tokens": 21, "output_tokens": 8, "cached_tokens": 0, "cache_write_tokens": None,
        "reasoning_tokens": 0, "attempts": 1, "fallback": False, "guardrails": [], "guardrail_triggers": [],
        "latency_ms": 412.3, "ttft_ms": None, "cost_usd_micros": 8}
RECORDS: list[dict[str, Any]] = [
    BASE,
    {**BASE, "stream": True, "ttft_ms": 180.9, "team": "support", "output_tokens": 120},
    {**BASE, "model": "chat", "provider": "anthropic", "served_model": "claude-3-5-haiku-20241022", "attempts": 2,
     "fallback": True},
    {**BASE, "guardrails": ["pii"], "guardrail_triggers": [{"guardrail": "pii", "detector": "email",
                                                            "action": "redact", "direction": "request", "count": 2}]},
    {**BASE, "outcome": "rejected", "status": 403, "error": "model_not_allowed", "provider": None,
     "input_tokens": None, "output_tokens": None, "cost_usd_micros": None, "attempts": None},
]


def per_record(count: Any, n: int) -> float:
    records = RECORDS * (n // len(RECORDS))
    for record in records[:500]:
        count(record)
    started = time.process_time()
    for record in records:
        count(record)
    return (time.process_time() - started) / len(records) * 1e6


def tally_way(n: int) -> float:
    from ext_proc.server.metrics import Tally

    return per_record(Tally().record, n)


def prometheus_way(n: int, registry: Any = None) -> float:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from ext_proc.server.metrics import METRICS, OPERATIONS, Tally

    registry = registry if registry is not None else CollectorRegistry()
    made: dict[str, Any] = {}
    for metric in METRICS.values():
        if metric.kind == "counter":
            made[metric.name] = Counter(metric.name, metric.help, metric.labels, registry=registry)
        elif metric.kind == "histogram":
            made[metric.name] = Histogram(metric.name, metric.help, metric.labels, registry=registry,
                                          buckets=metric.buckets)

    class Direct(Tally):
        """The tally's derivation, each update made on a prometheus_client metric instead."""

        def add(self, key: tuple[str, ...], amount: float = 1) -> None:
            made[key[0]].labels(*key[1:]).inc(amount)

        def observe(self, key: tuple[str, ...], value: float) -> None:
            made[key[0]].labels(*key[1:]).observe(value)

    assert OPERATIONS
    return per_record(Direct().record, n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", choices=("all", "multiprocess"), default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "multiprocess":  # a child: PROMETHEUS_MULTIPROC_DIR is set before prometheus_client loads
        print(statistics.median(prometheus_way(args.n) for _ in range(args.repeats)))
        return 0
    import subprocess

    from ext_proc.server.metrics import Exchange, Tally

    tally = statistics.median(tally_way(args.n) for _ in range(args.repeats))
    single = statistics.median(prometheus_way(args.n) for _ in range(args.repeats))
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        out = subprocess.run([sys.executable, __file__, "--mode", "multiprocess", "-n", str(args.n),
                              "--repeats", str(args.repeats)], env=env, capture_output=True, text=True, check=True)
        multi = float(out.stdout.strip())
    print(f"{'per request (CPU µs)':28} {'tally':>8} {'prometheus':>11} {'multiprocess':>13}")
    print(f"{'':28} {tally:8.2f} {single:11.2f} {multi:13.2f}")
    with tempfile.TemporaryDirectory() as directory:
        filled = Tally()
        for record in RECORDS * 20:
            filled.record(record)
        exchange = Exchange(filled, directory)
        started = time.process_time()
        for _ in range(200):
            filled.changed = True
            exchange.write()
        write = (time.process_time() - started) / 200 * 1e6
        for pid in range(1, 4):  # three more workers' files
            Path(directory, f"worker-{10_000_000 + pid}.json").write_bytes(Path(exchange.path or "").read_bytes())
        started = time.process_time()
        for _ in range(200):
            exchange.totals()
        scrape = (time.process_time() - started) / 200 * 1e6
    print(f"tally file write: {write:.0f} µs each (every 0.5 s when changed: {write * 2:.0f} µs/s per worker); "
          f"summing 4 workers at scrape: {scrape:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
