"""``make bench-limits``: what budgets and rate limits add to a request, on the node and in Redis.

Three gateways on the same fake provider, in one run, driven by ``wrk`` at 1 and 16 connections
with the example policy's chat request: the example without its budgets, limits and guardrails;
with a budget and per-minute limits on
the demo team counted by the node itself (the service's parent holds the counters for its
workers); and the same counted in a real ``redis-server``. The limits are far from being
reached: every request is admitted and settled. Reported per run: requests/s, p50/p99, the p50
each limited gateway adds over the one without limits, and the service's CPU per request.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ext_proc.stack import Stack, free_port, mock_plan  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import core as in_process  # noqa: E402  (bench/core.py: the limits measured)

import bench as wrk_bench  # noqa: E402  (bench/bench.py: the wrk runner and CPU accounting)

POLICY = wrk_bench.POLICY
_descendants, measure, LIMITS = wrk_bench._descendants, wrk_bench.measure, in_process.LIMITS


def _redis(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("make bench-limits needs redis-server (make test installs it)")
    port = free_port()  # outside the ephemeral range (ext_proc.stack.free_port)
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--cases", default="chat,chat-stream")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tollway-bench-limits-"))
    bare, limited = work / "bare.yaml", work / "limited.yaml"
    bare.write_text(in_process.bare_policy())  # the example without its budgets, limits and guardrails
    limited.write_text(in_process.bare_policy() + LIMITS)
    mocked, _ = mock_plan(POLICY, {})
    redis_proc, redis_port = _redis(work)
    common = {"workers": args.workers, "envoy_concurrency": 2, "mocked": mocked}
    none = Stack(work / "none", policy=bare, **common)  # type: ignore[arg-type]
    node = Stack(work / "node", policy=limited, mock=False, mock_port=none.mock_port, **common)  # type: ignore[arg-type]
    redis = Stack(work / "redis", policy=limited, mock=False, mock_port=none.mock_port,  # type: ignore[arg-type]
                  serve_args=("--redis", f"redis://127.0.0.1:{redis_port}/0"), **common)
    results = []
    try:
        with none, node, redis:
            mock = _descendants(none.procs["mock"].pid)
            targets = {name: (stack, {"envoy": _descendants(stack.procs["envoy"].pid), "mock": mock,
                                      "tollway": _descendants(stack.procs["tollway"].pid)})
                       for name, stack in (("none", none), ("node", node), ("redis", redis))}
            for case in args.cases.split(","):
                script = work / f"{case}.lua"
                script.write_text(wrk_bench.lua(case))
                for connections in (int(c) for c in args.connections.split(",")):
                    for name, (stack, groups) in targets.items():
                        result = measure(stack, groups, script, connections, args.seconds)
                        result.update(case=case, connections=connections, target=name)
                        results.append(result)
                        print(f"  {case:12} c={connections:<3} {name:6} {result['rps']:8.0f} req/s", file=sys.stderr)
            refused = sum(1 for stack in (node, redis) for line in stack.record_log.read_text().splitlines()
                          if '"outcome":"rejected"' in line)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    print()
    print(f"Budgets and rate limits — {args.seconds:.0f} s per run, {args.workers} workers; "
          f"requests refused by a limit: {refused}")
    header = (f"{'case':12} {'conns':>5} {'limits':7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} "
              f"{'tollway µs':>10} {'+µs':>6} {'errors':>6}")
    print(header)
    print("-" * len(header))
    base: dict[tuple[str, int], dict] = {}
    for r in results:
        key = (r["case"], r["connections"])
        if r["target"] == "none":
            base[key] = r
        added = (r["p50_us"] - base[key]["p50_us"]) / 1e3
        cpu = r["cpu_us_per_req"]["tollway"]
        extra = cpu - base[key]["cpu_us_per_req"]["tollway"]
        print(f"{r['case']:12} {r['connections']:>5} {r['target']:7} {r['rps']:8.0f} {r['p50_us'] / 1e3:8.2f} "
              f"{r['p99_us'] / 1e3:8.2f} {added:8.2f} {cpu:10.0f} {extra:6.0f} {r['errors'] + r['non2xx']:6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
