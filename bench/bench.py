"""``make bench``: plain Envoy against the Tollway gateway, same load, same fake provider, one run.

The gateway runs the whole policy of ``policies/example.yaml``: the demo key is authenticated,
the model checked against the team's list, the provider's key injected. For each case
(chat completions, non-streaming and streaming; an alias with fallback, whose tries also pass the
upstream ext_proc filter; an OpenAI client served by an Anthropic model, translated both ways)
and each connection count, ``wrk`` drives first
plain Envoy (the same listener and routes, without the ext_proc filter) and then
the gateway. Reported per run: requests/s, p50/p99 latency, the latency the gateway adds over
plain Envoy, and CPU microseconds per request for Envoy, the Tollway service (all its worker
processes) and the fake provider, measured from the kernel's per-thread run time
(``/proc/PID/task/TID/schedstat``, nanoseconds) over the measured window.

``--traced``: a third target, the same gateway with OpenTelemetry tracing on (``--otlp-endpoint``
to a collector sink in this process, ``--trace-sample-ratio``, default the shipped 0.05), to read
what tracing adds in latency and in the service's CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ext_proc.stack import Stack, mock_plan, process_tree  # noqa: E402

POLICY = ROOT / "policies" / "example.yaml"
DEMO_KEY = "tw-local-demo-key-not-secret"  # the example policy's public demo key (team demo)

BODIES = {
    "chat": {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello to the benchmark in one short sentence."},
    ]},
}
BODIES["chat-stream"] = {**BODIES["chat"], "stream": True}
# The example policy's alias "chat" (OpenAI first, Anthropic as fallback): the request goes
# through a chain cluster, so each try also runs the upstream ext_proc filter.
BODIES["alias"] = {**BODIES["chat"], "model": "chat"}
# An OpenAI client served by an Anthropic model: request, answer and stream are translated.
BODIES["translated"] = {**BODIES["chat"], "model": "claude-haiku"}
BODIES["translated-stream"] = {**BODIES["translated"], "stream": True}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50),
    latency:percentile(99), latency.mean))
end
"""


def _descendants(pid: int) -> list[int]:
    return list(process_tree(pid))


def cpu_ns(pids: list[int]) -> int:
    """Run time of every thread of these processes, in nanoseconds."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def _sink() -> str:
    """An OTLP/HTTP collector in this process that accepts and drops what it is sent; its URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def measure(stack: Stack, groups: dict[str, list[int]], script: Path, connections: int, seconds: float) -> dict:
    url = stack.base_url + "/v1/chat/completions"
    run_wrk(url, script, connections, 1.0)  # warm-up: connections, caches, Python code paths
    before = {name: cpu_ns(pids) for name, pids in groups.items()}
    result = run_wrk(url, script, connections, seconds)
    after = {name: cpu_ns(pids) for name, pids in groups.items()}
    n = max(1, int(result["requests"]))
    result["rps"] = n / (result["duration_us"] / 1e6)
    result["cpu_us_per_req"] = {name: (after[name] - before[name]) / 1e3 / n for name in groups}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--connections", default="1,16", help="comma-separated connection counts (default 1,16)")
    parser.add_argument("--cases", default=",".join(BODIES), help="comma-separated cases (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="Tollway worker processes (default 2)")
    parser.add_argument("--envoy-concurrency", type=int, default=2, help="Envoy worker threads (default 2)")
    parser.add_argument("--json", default=str(ROOT / ".tollway" / "bench.json"), help="where to write results")
    parser.add_argument("--traced", action="store_true", help="also run the gateway with tracing on")
    parser.add_argument("--trace-ratio", default="0.05", help="--trace-sample-ratio of the traced gateway")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    mocked, _ = mock_plan(POLICY, {})
    plain = Stack(work / "plain", ext_proc_enabled=False, envoy_concurrency=args.envoy_concurrency, mocked=mocked)
    gateway = Stack(work / "gateway", mock=False, mock_port=plain.mock_port, workers=args.workers,
                    envoy_concurrency=args.envoy_concurrency, mocked=mocked, policy=POLICY)
    results = []
    traced = contextlib.nullcontext()
    if args.traced:
        traced = Stack(work / "traced", mock=False, mock_port=plain.mock_port, workers=args.workers,
                       envoy_concurrency=args.envoy_concurrency, mocked=mocked, policy=POLICY,
                       serve_args=("--otlp-endpoint", _sink(), "--trace-sample-ratio", args.trace_ratio))
    with plain, gateway, traced:
        mock_pids = _descendants(plain.procs["mock"].pid)
        targets = {
            "plain": (plain, {"envoy": _descendants(plain.procs["envoy"].pid), "mock": mock_pids}),
            "gateway": (gateway, {"envoy": _descendants(gateway.procs["envoy"].pid),
                                  "tollway": _descendants(gateway.procs["tollway"].pid), "mock": mock_pids}),
        }
        if isinstance(traced, Stack):
            targets["traced"] = (traced, {"envoy": _descendants(traced.procs["envoy"].pid),
                                          "tollway": _descendants(traced.procs["tollway"].pid), "mock": mock_pids})
        for case in args.cases.split(","):
            script = work / f"{case}.lua"
            script.write_text(LUA.format(body=json.dumps(BODIES[case]), key=DEMO_KEY))
            for connections in (int(c) for c in args.connections.split(",")):
                for target, (stack, groups) in targets.items():
                    result = measure(stack, groups, script, connections, args.seconds)
                    result.update(case=case, connections=connections, target=target)
                    results.append(result)
                    print(f"  {case:12} c={connections:<3} {target:8} {result['rps']:8.0f} req/s", file=sys.stderr)
        lines = gateway.record_log.read_text().splitlines() if gateway.record_log.exists() else []

    print()
    print(f"Tollway benchmark — {os.cpu_count()} cores, {args.seconds:.0f} s per run, "
          f"Envoy concurrency {args.envoy_concurrency}, Tollway workers {args.workers}")
    header = (f"{'case':12} {'conns':>5} {'target':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'+p50 ms':>8} {'+p99 ms':>8} {'envoy µs':>9} {'tollway µs':>10} {'mock µs':>8} {'errors':>6}")
    print(header)
    print("-" * len(header))
    base: dict[tuple[str, int], dict] = {}
    for r in results:
        key = (r["case"], r["connections"])
        if r["target"] == "plain":
            base[key] = r
        added = r["target"] != "plain"
        added50 = (r["p50_us"] - base[key]["p50_us"]) / 1e3 if added else 0.0
        added99 = (r["p99_us"] - base[key]["p99_us"]) / 1e3 if added else 0.0
        r["added_p50_ms"], r["added_p99_ms"] = added50, added99
        cpu = r["cpu_us_per_req"]
        plus50 = f"{added50:8.2f}" if added else " " * 8
        plus99 = f"{added99:8.2f}" if added else " " * 8
        print(f"{r['case']:12} {r['connections']:>5} {r['target']:8} {r['rps']:8.0f} {r['p50_us'] / 1e3:8.2f} "
              f"{r['p99_us'] / 1e3:8.2f} {plus50} {plus99} {cpu['envoy']:9.0f} "
              f"{cpu.get('tollway', 0):10.0f} {cpu['mock']:8.0f} {r['errors'] + r['non2xx']:6}")
    gateway_requests = sum(r["requests"] for r in results if r["target"] == "gateway")
    print(f"\nrequest records written by the gateway: {len(lines)} (requests sent to it: ~{gateway_requests:.0f}"
          " plus warm-ups)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
