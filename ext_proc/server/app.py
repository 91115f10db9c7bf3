"""``tollway serve``: the ext_proc gRPC server, its workers and its lifecycle.

Where it listens, and why that is a private Unix socket by default, is
:mod:`ext_proc.server.listen`. The parent binds the listening socket once and every worker
process serves it (the kernel hands each of Envoy's HTTP/2 connections to one of them); with
``--workers 1`` the server runs in this process.
Each worker runs, on uvloop, the ext_proc servicer and the standard gRPC health check, on
Tollway's own HTTP/2 server (``--server h2``, the default: see :mod:`ext_proc.server.h2` for
why) or on ``grpcio``'s asyncio server (``--server grpcio``). SIGTERM or SIGINT: health turns
NOT_SERVING, the port stops accepting, in-flight streams get ``--grace`` seconds to finish,
buffered request records are flushed.
A worker that dies unexpectedly is restarted by the parent.

The parent also binds the admin port (``/readyz``, ``/metrics``; plain, never ``SO_REUSEPORT``, so
a second service cannot join it) for the workers to serve, and runs the one policy watcher
(:mod:`ext_proc.server.reload`), which writes Envoy's clusters file (``--envoy-clusters``,
:mod:`ext_proc.server.clusters`) and tells every worker which policy to serve.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ext_proc import memo
from ext_proc.llm.prices import default_table
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.server import bodies, journal, listen, state_dir
from ext_proc.server.accounting import ENCODINGS_ENV
from ext_proc.server.clusters import ENVOY_ADMIN, ClusterSync, stand_in, stand_in_url
from ext_proc.server.credentials import open_to_all
from ext_proc.server.dealer import Dealer
from ext_proc.server.listen import TLSFiles
from ext_proc.server.metrics import Exchange, Names, Tally
from ext_proc.server.node_state import NodeStateServer
from ext_proc.server.records import LedgerSender
from ext_proc.server.reload import PolicyController, Publication
from ext_proc.server.zygote import Worker, Zygote, ZygoteGone
from ext_proc.state.ledger import Ledger, RedisLedger

log = logging.getLogger("tollway.serve")


@dataclass(frozen=True)
class ServeConfig:
    listen: str
    workers: int
    log_file: str | None
    grace: float
    server: str = "h2"
    policy: str | None = None
    workload: str | None = None
    admin_port: int = 0
    reload_interval: float = 1.0
    redis_url: str | None = None
    usage_headers: bool = True
    admin_host: str = "127.0.0.1"
    tls: TLSFiles | None = None
    store_probe: bool = False
    socket_group: bool = False  # Envoy is another user of Tollway's group: the socket is the group's too
    node_state: str | None = None  # the parent's counters (several workers, no Redis): its socket
    hold_ttl: float = 30.0  # seconds a dead worker's leases and reservations survive in the store
    envoy_clusters: str | None = None  # Envoy's clusters file, kept up to date with the policy
    envoy_admin: str | None = None  # Envoy's admin, to confirm it loaded the clusters
    stand_ins: dict[str, str] = field(default_factory=dict)  # provider -> URL that stands in for it
    stand_ins_get_keys: bool = False  # stand-ins get their providers' own keys, not the placeholder
    stand_in_missing: str | None = None  # URL standing in for each provider without a usable key (tollway up)
    admin_token: str | None = field(default=None, repr=False)  # bearer token the admin endpoint asks for
    metrics_dir: str | None = None  # where the workers exchange their metric tallies (several workers)
    otlp_endpoint: str | None = None  # OpenTelemetry: traces (and records as logs) over OTLP/HTTP
    otlp_logs: bool = False  # the request records as OpenTelemetry logs too
    trace_ratio: float = 0.05  # requests traced when the caller sent no traceparent
    text_memory: int = memo.DEFAULT_ENTRIES  # answers each worker remembers per text (ext_proc.memo); 0: none
    body_memory: int = bodies.DEFAULT_MIB  # MiB of request bodies each worker holds at once (ext_proc.server.bodies)
    state_dir: str | None = None  # the journals' and spools' directory (ext_proc.server.state_dir); None: by the log
    spool_max: int | None = None  # bytes the spools' directory may hold, every process's together (None: per process)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=os.environ.get("TOLLWAY_LISTEN", listen.DEFAULT),
                        help="where Envoy reaches the service: unix:PATH (a socket in a directory only Envoy "
                             "and Tollway share), tls://HOST:PORT (mutual TLS, with --tls-*), or tcp://HOST:PORT "
                             "(plain TCP: any local process could read provider keys) "
                             f"(env TOLLWAY_LISTEN; default {listen.DEFAULT})")
    parser.add_argument("--tls-cert", help="tls:// only: the server certificate chain (PEM)")
    parser.add_argument("--tls-key", help="tls:// only: the server's private key (PEM)")
    parser.add_argument("--tls-client-ca", help="tls:// only: the CA that signs Envoy's client certificates (PEM)")
    parser.add_argument("--tls-client-san", action="append", default=[],
                        help="tls:// only: a SAN (DNS name or URI, e.g. a SPIFFE ID) the client certificate "
                             "must carry; a trailing * accepts every name it begins (spiffe://cluster.local/ns/*); "
                             "repeatable (default: any certificate the CA signed). The certificate's SPIFFE ID "
                             "identifies the calling workload")
    parser.add_argument("--tls-relay-san", action="append", default=[],
                        help="tls:// only: a SAN (same syntax as --tls-client-san, which must accept it) of a trusted "
                             "relay's certificate: an Envoy the platform team runs itself, e.g. a central gateway "
                             "whose callers use Tollway keys (tollway envoy --ext-proc tls://...). Its streams are "
                             "believed as the Unix socket's Envoy is: the message's SPIFFE attribute and a fallback "
                             "try's metadata are its word. Repeatable (default: none, every certificate may only be "
                             "the workload its SPIFFE ID names, and fallback tries are served only within that "
                             "workload's plan)")
    parser.add_argument("--socket-group", action="store_true",
                        help="unix: only: Envoy runs as another user of Tollway's group (the pod's sidecar), so the "
                             "socket is 0660 in a 0750 directory; default: Tollway's user only (0600, 0700)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    parser.add_argument("--text-memory", type=_entries, default=memo.DEFAULT_ENTRIES, metavar="ENTRIES",
                        help="answers (findings, injection scores, token counts) each worker remembers by text "
                             "digest, so a conversation's earlier turns are not scanned again; about 110 bytes "
                             f"each; 0: none (default {memo.DEFAULT_ENTRIES})")
    parser.add_argument("--body-memory", type=_entries, default=bodies.DEFAULT_MIB, metavar="MIB",
                        help="MiB of request bodies each worker holds at once: a request whose body would take a "
                             "worker past it while others hold theirs gets 503 overloaded with retry-after (one "
                             f"request alone is always read, up to 64 MiB); 0: no limit (default {bodies.DEFAULT_MIB})")
    parser.add_argument("--log-file", default=None, help="request log, JSON lines (default: stdout)")
    parser.add_argument("--state-dir", metavar="DIR", default=os.environ.get("TOLLWAY_STATE_DIR") or None,
                        help="keep the workers' in-flight journals and the spend aggregates' spools in DIR/inflight "
                             "and DIR/aggregates (0700), for any request log, stdout included: a worker killed "
                             "mid-request still gets its records written, and batches Redis has not taken survive "
                             "a restart (env TOLLWAY_STATE_DIR; default: next to a --log-file that is a regular "
                             "file, none for stdout)")
    parser.add_argument("--spool-max", type=_positive, default=None, metavar="MIB",
                        help="MiB the spend aggregates' spools may hold, every process's together (those dead "
                             "processes left included; each grows 1 MiB at most past it between looks): past it "
                             "batches wait in memory (default: 256 MiB per process, no total)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds in-flight streams get on shutdown")
    parser.add_argument("--server", choices=("h2", "grpcio"), default="h2",
                        help="gRPC server implementation (default h2: Tollway's own, ~5x less CPU)")
    parser.add_argument("--policy", default=os.environ.get("TOLLWAY_POLICY"),
                        help="policy YAML, watched and reloaded on change (env TOLLWAY_POLICY; "
                             "without one Tollway runs open: no identity, access control or key injection)")
    parser.add_argument("--workload", default=os.environ.get("TOLLWAY_WORKLOAD"),
                        help="this sidecar's workload identity, for callers without a Tollway key "
                             "(env TOLLWAY_WORKLOAD)")
    parser.add_argument("--admin-host", default="127.0.0.1", help="address of the admin endpoint (default 127.0.0.1)")
    parser.add_argument("--admin-token-file", metavar="PATH", default=os.environ.get("TOLLWAY_ADMIN_TOKEN_FILE"),
                        help="a file holding the bearer token /metrics, /v1/report, /v1/budgets and /readyz's details "
                             "ask for (env TOLLWAY_ADMIN_TOKEN_FILE, or the token itself in TOLLWAY_ADMIN_TOKEN); "
                             "required when --admin-host is not loopback")
    parser.add_argument("--admin-port", type=listen.port, default=9902,
                        help="/healthz, /readyz and /metrics (default 9902, 0: off)")
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between policy checks")
    parser.add_argument("--redis", dest="redis_url", default=os.environ.get("TOLLWAY_REDIS_URL"),
                        help="Redis URL for shared spend aggregates (env TOLLWAY_REDIS_URL; default: in-process)")
    parser.add_argument("--store-probe", action="store_true",
                        help="ask the shared-state store (Redis with --redis, else in-process) before every request "
                             "goes on, and refuse it (503) when the store does not answer: a readiness check of the "
                             "store budgets and rate limits use")
    parser.add_argument("--hold-ttl", type=float, default=30.0,
                        help="seconds a worker's budget and rate-limit leases survive it when it dies without "
                             "giving them back (default 30)")
    parser.add_argument("--no-usage-headers", dest="usage_headers", action="store_false",
                        help="do not add x-tollway-input-tokens/-output-tokens/-cost-usd to non-streamed answers")
    parser.add_argument("--envoy-clusters", metavar="PATH", default=os.environ.get("TOLLWAY_ENVOY_CLUSTERS") or None,
                        help="write Envoy's provider and fallback clusters for the policy to PATH, and rewrite it "
                             "on every policy change, before the policy takes effect (the file the bootstrap's "
                             "cds_config reads, e.g. /run/tollway/clusters.yaml; env TOLLWAY_ENVOY_CLUSTERS)")
    parser.add_argument("--envoy-admin", metavar="URL", default=os.environ.get("TOLLWAY_ENVOY_ADMIN", ENVOY_ADMIN),
                        help="Envoy's admin, asked whether it loaded the clusters: unix:PATH for a Unix socket (the "
                             "shipped bootstrap's), or http://HOST:PORT (default %(default)s; env TOLLWAY_ENVOY_ADMIN)")
    parser.add_argument("--otlp-endpoint", metavar="URL", default=os.environ.get("TOLLWAY_OTLP_ENDPOINT") or None,
                        help="send one OpenTelemetry span per request to this OTLP/HTTP collector (a base URL, "
                             "e.g. http://otel-collector:4318, /v1/traces added; env TOLLWAY_OTLP_ENDPOINT; it wins "
                             "over OpenTelemetry's own OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then "
                             "OTEL_EXPORTER_OTLP_ENDPOINT, read without it; default: no tracing)")
    parser.add_argument("--trace-sample-ratio", type=float,
                        default=float(os.environ.get("TOLLWAY_TRACE_SAMPLE_RATIO", "0.05")),
                        help="share of requests traced when the caller sent no traceparent (a caller's "
                             "traceparent decides for its requests; default 0.05, env TOLLWAY_TRACE_SAMPLE_RATIO)")
    parser.add_argument("--otlp-logs", action="store_true",
                        help="also send every request record to the collector as an OpenTelemetry log record")
    parser.add_argument("--stand-in", type=stand_in, action="append", default=[], metavar="PROVIDER=URL",
                        help="serve PROVIDER from URL (e.g. the fake provider) instead of its endpoint; it gets the "
                             "placeholder key tollway-stand-in-key, never the provider's own; repeatable")
    parser.add_argument("--stand-in-missing", type=stand_in_url, metavar="URL",
                        help="serve from URL every provider of the policy that has no usable key (or whose endpoint "
                             "is not on this machine nor an IP address, an openai/anthropic provider's aside), "
                             "decided again at each policy reload, so a provider an edit adds without a key never "
                             "goes to its real endpoint: what tollway up passes for its fake provider; needs "
                             "--envoy-clusters")
    parser.add_argument("--stand-ins-get-keys", action="store_true",
                        help="send each stand-in its provider's own key when that is set (the placeholder otherwise): "
                             "for a stand-in that checks keys, as the tests' fake provider does with --api-key; never "
                             "for one that shows what it received to others (the fake provider's /_mock/requests)")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _entries(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _tls_files(args: argparse.Namespace, address: listen.Address) -> listen.TLSFiles | None:
    given = [name for name in ("tls_cert", "tls_key", "tls_client_ca") if getattr(args, name)]
    if address.kind != "tls":
        if given or args.tls_client_san or args.tls_relay_san:
            raise listen.ListenError("--tls-* options need a tls://HOST:PORT --listen address")
        return None
    missing = [f"--{name.replace('_', '-')}" for name in ("tls_cert", "tls_key", "tls_client_ca") if name not in given]
    if missing:
        raise listen.ListenError(f"tls:// needs {', '.join(missing)}")
    files = listen.TLSFiles(args.tls_cert, args.tls_key, args.tls_client_ca, tuple(args.tls_client_san),
                            tuple(args.tls_relay_san))
    files.check()
    return files


def run(args: argparse.Namespace) -> int:
    configure_logging()
    try:
        address = listen.parse(args.listen)
        config = ServeConfig(
            str(address), max(1, args.workers), args.log_file, args.grace, args.server,
            args.policy, args.workload, args.admin_port, args.reload_interval, args.redis_url, args.usage_headers,
            args.admin_host, _tls_files(args, address), args.store_probe, hold_ttl=args.hold_ttl,
            socket_group=args.socket_group,
            envoy_clusters=args.envoy_clusters, envoy_admin=args.envoy_admin or None,
            stand_ins=dict(args.stand_in), stand_ins_get_keys=args.stand_ins_get_keys,
            stand_in_missing=args.stand_in_missing,
            otlp_endpoint=args.otlp_endpoint, otlp_logs=args.otlp_logs,
            trace_ratio=min(1.0, max(0.0, args.trace_sample_ratio)), text_memory=args.text_memory,
            body_memory=args.body_memory, state_dir=args.state_dir,
            spool_max=args.spool_max << 20 if args.spool_max else None,
        )
        config = dataclasses.replace(
            config, admin_token=admin_token(args.admin_token_file, args.admin_host if args.admin_port else None))
        if config.tls is not None:
            listen.TLSContext(config.tls)  # refuse unreadable certificates before spawning workers
        if config.envoy_clusters:
            # The clusters file decides where requests (and provider keys) go: a private directory.
            listen.check_directory(os.path.dirname(os.path.abspath(config.envoy_clusters)), config.socket_group)
    except listen.ListenError as exc:
        print(f"tollway serve: {exc}", file=sys.stderr)
        return 2
    if config.stand_in_missing and not config.envoy_clusters:
        print("tollway serve: --stand-in-missing needs --envoy-clusters (the stand-ins follow each policy "
              "version through Envoy's clusters file)", file=sys.stderr)
        return 2
    problem = _unusable(config)
    if problem:  # said once here, not by every worker as it dies
        print(f"tollway serve: {problem}", file=sys.stderr)
        return 2
    if address.kind == "tcp":
        log.warning("listening on plain TCP (%s): any process that can reach it can read provider keys", address)
    if config.server == "grpcio" and (address.kind == "tls" or (address.kind == "unix" and config.workers > 1)):
        print("tollway serve: --server grpcio serves tcp:// and, with --workers 1, unix: only", file=sys.stderr)
        return 2
    admin_sock = None
    if config.admin_port:
        try:
            admin_sock = bind_admin(config.admin_host, config.admin_port)
        except OSError as exc:
            print(f"tollway serve: cannot listen on the admin port {config.admin_host}:{config.admin_port}: "
                  f"{exc.strerror}", file=sys.stderr)
            return 2
    publication = Publication()
    clusters = ClusterSync(config.envoy_clusters, config.envoy_admin, config.stand_ins,
                           stand_in_missing=config.stand_in_missing) if config.envoy_clusters else None
    controller = PolicyController(config.policy or None, publication, clusters)
    listener = None
    zygote: Zygote | None = None
    recovered: Exchange | None = None  # the supervisor's count of the records it recovers
    sender: LedgerSender | None = None  # the records it recovers, on their way to the aggregates (Redis)
    node: NodeStateServer | None = None
    try:
        if not config.policy:
            log.warning("no --policy: running OPEN (no identity, access control or provider key injection)")
        # Refuse to start on a broken policy: say why once, before any worker is spawned.
        if not controller.start():
            return 2
        publication.preloaded = controller.current  # the workers serve this compile (ext_proc.server.reload)
        shared = local_limits_warning(controller.current, config.redis_url)
        if shared is not None:  # once, here; /readyz says it too
            log.warning("%s", shared)
        if controller.current is not None:  # the zygote and the workers load these encodings up front
            os.environ[ENCODINGS_ENV] = ",".join(sorted(controller.current.encodings()))
        if config.server != "grpcio":
            try:
                listener = listen.bind(address, group=config.socket_group)
            except listen.ListenError as exc:
                print(f"tollway serve: {exc}", file=sys.stderr)
                return 2
        dealing = config.workers > 1 and listener is not None and address.kind == "unix"
        if config.workers > 1:
            # Forked now, before this process starts any thread: see ext_proc.server.zygote.
            zygote = _zygote(controller.current, None if dealing or listener is None else listener.sock, admin_sock,
                             publication, (listener.sock,) if dealing and listener is not None else ())
        if config.workers > 1 and not config.redis_url:
            # Budgets and rate limits must hold across the node's workers: their counters live here.
            # (beside a unix socket, unless its directory's path leaves no room for the name)
            directory = os.path.dirname(address.path) if address.kind == "unix" else ""
            if not directory or len(os.fsencode(os.path.join(directory, "state.sock"))) > listen.UNIX_PATH_MAX:
                directory = tempfile.mkdtemp(prefix="tollway-")
            node = NodeStateServer(os.path.join(directory, "state.sock"))
            node.start()
            config = dataclasses.replace(config, node_state=node.path)
        if config.workers > 1 or config.log_file or config.state_dir:
            # Each worker writes its metric tallies here; the one answering a scrape sums them
            # (with the supervisor's, which counts the records it recovers from dead workers).
            metrics_dir = tempfile.mkdtemp(prefix="tollway-metrics-")
            config = dataclasses.replace(config, metrics_dir=metrics_dir)
            recovered = Exchange(Tally(Names(lambda: controller.current)), metrics_dir)
            recovered.path = os.path.join(metrics_dir, "supervisor.json")  # one worker shares its pid
        stop = threading.Event()
        watcher = threading.Thread(target=controller.watch, args=(config.reload_interval, stop),
                                   name="tollway-policy", daemon=True)
        watcher.start()
        if config.redis_url:  # asked from a thread (after the zygote's fork): a slow Redis delays nothing
            threading.Thread(target=warn_unpersisted, args=(config.redis_url,), name="tollway-redis-check",
                             daemon=True).start()
        ledger = open_ledger(config.redis_url, lambda model: knows(controller.current, model)) \
            if config.log_file or config.state_dir else None
        if ledger is not None:  # its thread starts with a first batch (or spool to take over)
            sender = LedgerSender(ledger, directory=state_dir.places(config.log_file, config.state_dir).spools,
                                  on_waiting=lambda waiting: publish_sender(recovered, sender, waiting),
                                  budget=config.spool_max)
        recover_records(config, recovered, sender)  # requests in flight when a previous run died
        try:
            sock = listener.sock if listener else None
            if config.workers == 1:
                _worker(config, sock, admin_sock, publication)
                return 0
            dealer = None
            if dealing and listener is not None:
                # The supervisor deals Envoy's connections to the workers (ext_proc.server.dealer).
                dealer = Dealer(listener.sock, config.workers)
            assert zygote is not None
            return _supervise(config, zygote, dealer, recovered, sender, node)
        finally:
            stop.set()
    finally:
        if sender is not None:
            sender.close()
        if zygote is not None:
            zygote.close()
        if listener is not None:
            listener.close()
        if node is not None:
            node.stop()
        if admin_sock is not None:
            admin_sock.close()
        publication.close()
        if config.metrics_dir:
            shutil.rmtree(config.metrics_dir, ignore_errors=True)


def local_limits_warning(policy: CompiledPolicy | None, redis_url: str | None) -> str | None:
    """What to say when the policy's budgets and rate limits are counted in this process (no
    Redis) where several replicas are likely: in Kubernetes (``KUBERNETES_SERVICE_HOST``, set in
    every pod), each pod would admit the whole budget and forget it when it restarts. None
    elsewhere (``tollway up``, one machine) or with Redis."""
    if redis_url or policy is None or not policy.limits or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    return ("budgets and rate limits are counted in this pod only (no --redis / TOLLWAY_REDIS_URL): every replica "
            "admits the whole of each, and its counts reset when it restarts; give the sidecar Redis (the Secret "
            "tollway-redis, key url) unless per-pod limits are meant")


def redis_persistence_warning(url: str) -> str | None:
    """What to say when the Redis at ``url`` keeps nothing on disk (no AOF, no RDB snapshots): its
    restart resets every budget and rate-limit window and frees the slots of requests in flight.
    None when it persists, or when it cannot be told: CONFIG refused (an ACL user without it, as
    k8s/base/redis.yaml's), renamed away, or Redis not answering (the store's own errors say so)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
        try:
            aof = client.config_get("appendonly").get("appendonly")
            save = client.config_get("save").get("save")
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return None
    if aof != "no" or save != "":
        return None
    return ("the Redis behind --redis keeps nothing on disk (appendonly no, save \"\"): a restart of it resets every "
            "budget and rate-limit window, frees the concurrency slots of requests in flight and loses the spend "
            "aggregates; turn on AOF (appendonly yes, as k8s/base/redis.yaml does)")


def warn_unpersisted(url: str) -> None:
    warning = redis_persistence_warning(url)
    if warning is not None:
        log.warning("%s", warning)


def _unusable(config: ServeConfig) -> str | None:
    """What would stop every worker at its start: a Redis URL that does not parse, a request log
    that cannot be written; or keep them from their journals and spools: a state directory that
    cannot be made or written (made here, with its two, when it can)."""
    if config.redis_url:
        from redis.connection import parse_url

        try:
            parse_url(config.redis_url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            return f"--redis: {exc}"
    if config.state_dir:
        problem = state_dir.prepare(config.state_dir)
        if problem is not None:
            return problem
    if config.log_file:
        path = os.path.abspath(config.log_file)
        if os.path.exists(path) and not os.path.isfile(path):  # a device (/dev/stdout): written as it is
            return None if os.access(path, os.W_OK) else f"--log-file: cannot write {path}"
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            return f"--log-file: the directory {directory} does not exist"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"--log-file: cannot write in {directory}"
    return None


def admin_token(path: str | None, exposed_host: str | None) -> str | None:
    """The admin token, from ``--admin-token-file`` or ``TOLLWAY_ADMIN_TOKEN``; required (else
    ListenError) when the admin endpoint listens beyond loopback."""
    token = os.environ.get("TOLLWAY_ADMIN_TOKEN") or None
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise listen.ListenError(f"cannot read --admin-token-file {path}: {why}") from None
        if open_to_all(path, os.stat(path).st_mode):
            log.warning("the admin token file %s is readable by every user", path)
    if token is not None and (len(token) < 16 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token)):
        raise listen.ListenError("the admin token must be 16 or more printable ASCII characters, no spaces")
    if token is None and exposed_host is not None and not _loopback(exposed_host):
        raise listen.ListenError(
            f"--admin-host {exposed_host} exposes /metrics, /v1/report and /v1/budgets beyond this machine: "
            "give --admin-token-file (or TOLLWAY_ADMIN_TOKEN)"
        )
    return token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def bind_admin(host: str, port: int) -> socket.socket:
    """The admin port's listening socket, bound once by the parent: SO_REUSEADDR, never SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def open_ledger(redis_url: str | None, known: Callable[[str], bool] | None = None) -> Ledger | None:
    """Spend aggregates in Redis when a URL is given (shared by every sidecar), else none: without
    Redis nothing reads aggregates (``tollway report``, ``/v1/report`` and the dashboard read the
    request log), and a worker's own would only grow (a bucket per made-up model name, for good).
    ``known`` tells the model names the policy knows (none without one): a refused request's
    other names are counted under ``(other)`` (:func:`~ext_proc.state.ledger.bucket_of`)."""
    if not redis_url:
        return None
    import redis

    return RedisLedger(redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2),
                       known=known or (lambda _model: False))


def knows(policy: CompiledPolicy | None, model: str) -> bool:
    """Whether ``model`` names a model: one the policy knows (a model, an alias, a provider's model
    name) or one the price data lists by that exact name (a bounded set: the Redis aggregates give
    such a name a bucket of its own, :func:`~ext_proc.state.ledger.bucket_of`)."""
    return (policy is not None and model in policy.model_names) or default_table().lists(model)


_TALLY = threading.Lock()  # the supervisor's tally: its main thread (recovery) and its sender's thread


def publish_sender(counted: Exchange | None, sender: LedgerSender | None, waiting: int | None = None) -> None:
    """Publish the supervisor's sender's state beside the workers' (tollway_ledger_waiting, its
    failures and what it gave up).

    ``waiting``: the records waiting as the sender's thread tells them (its ``on_waiting``), the
    only value the gauge is given; None (recovery, on the main thread) leaves the gauge as it is.
    The sender publishes a count only when it differs from the one it published last: a count
    written by anyone else (a send in flight, read here) would stay for good once the sender
    found nothing new to publish."""
    if counted is None or sender is None:
        return
    with _TALLY:
        tally = counted.tally
        if waiting is not None:
            tally.set(("tollway_ledger_waiting",), waiting)
        for name, value in (("tollway_ledger_write_failures", sender.failures),
                            ("tollway_ledger_dropped", sender.dropped)):
            if value and tally.counters.get((name,)) != value:
                tally.counters[(name,)] = value
                tally.changed = True
        counted.write()


def recover_records(config: ServeConfig, counted: Exchange | None = None,
                    ledger: LedgerSender | None = None) -> None:
    """Write the records of requests a dead worker had sent upstream (:mod:`ext_proc.server.journal`),
    count them in ``counted``'s tally, published beside the workers' (so ``/metrics`` agrees with
    the log after a crash too), and hand them to ``ledger`` for the spend aggregates (Redis), which
    sends them until Redis takes them: the journal is gone once they are in the log, and neither a
    Redis that is down nor anything else keeps them from the count. The records a dead worker
    had written to the log but not yet to its spool (its last round's) go to ``ledger`` only
    (a worker counts a record in its metrics as it writes it). Then have ``ledger`` take over
    the spools stopped processes left (:mod:`ext_proc.server.spool`: batches Redis had not taken),
    in its own thread: nothing here waits on reading them.

    The journals and spools are in ``--state-dir`` when given (:mod:`ext_proc.server.state_dir`),
    else next to a log that is a regular file (none otherwise: nothing to do). A log that is no
    regular file (stdout, a device) is not searched for records a dead worker wrote in its last
    round: each open entry is written to it (``journal.recover``), at least once."""
    where = state_dir.places(config.log_file, config.state_dir)
    if where.journals is None and where.spools is None:
        return

    def add(records: list[dict[str, Any]]) -> None:
        # Each on its own: one failing never keeps the records from the other.
        if ledger is not None:
            try:
                ledger.add(records)  # queued: never waits on Redis
            except Exception:
                log.exception("queueing %d recovered record(s) for the spend aggregates", len(records))
        if counted is not None:
            try:
                with _TALLY:
                    for record in records:
                        counted.tally.record(record)
            except Exception:
                log.exception("counting %d recovered record(s) in /metrics", len(records))

    try:
        journal.recover(config.log_file, add if counted is not None or ledger is not None else None,
                        logged=ledger.add if ledger is not None else None, directory=where.journals)
    except Exception:  # never keep the service from starting or a worker from restarting
        log.exception("recovering the journals in %s", where.journals)
    if ledger is not None:
        ledger.adopt()
    if counted is not None:
        try:
            if ledger is not None:
                publish_sender(counted, ledger)  # (writes the tally too; the sender's thread publishes what waits)
            else:
                with _TALLY:
                    counted.write()
        except Exception:
            log.exception("publishing the count of the recovered records")


def configure_logging() -> None:
    """Log lines to stderr, and stack dumps on ``kill -USR1`` (the supervisor and every worker)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # httpx logs every request's full URL at INFO ("HTTP Request: POST ..."): the injection
    # classifier's, whose query string may hold its token, on every classified prompt.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    dump_stacks_on_signal()


def dump_stacks_on_signal() -> None:
    """``kill -USR1`` writes every thread's Python stack to stderr (the log): what a stuck process is doing."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _worker(config: ServeConfig, sock: socket.socket | None, admin_sock: socket.socket | None,
            publication: Publication, parent: int | None = None, dealt: socket.socket | None = None) -> None:
    """Run a worker (:mod:`ext_proc.server.worker`, imported only here: the supervisor loads it only
    to share its pages with the workers, right before it forks their zygote)."""
    from ext_proc.server import worker

    worker.run(config, sock, admin_sock, publication, parent, dealt)


QUICK_DEATH = 5.0  # seconds: a worker dying this soon after its start did not get to serve
MAX_QUICK_DEATHS = 5


def _zygote(policy: CompiledPolicy | None, sock: socket.socket | None, admin_sock: socket.socket | None,
            publication: Publication, closing: tuple[socket.socket, ...]) -> Zygote:
    """The workers' zygote (ext_proc.server.zygote), forked once this process has loaded what every
    worker uses (the service, the tokenizers, the injection scorer's databases when the policy
    scores prompts)."""
    scores = policy is not None and policy.guardrails is not None and policy.guardrails.scores_injection
    return Zygote(["ext_proc.guardrails.warm"] * scores + ["ext_proc.server.preload"], _worker,
                  (sock, admin_sock, publication), closing)


def _supervise(config: ServeConfig, zygote: Zygote, dealer: Dealer | None = None,
               recovered: Exchange | None = None, sender: LedgerSender | None = None,
               node: NodeStateServer | None = None) -> int:
    stopping = False
    procs: list[Worker] = []

    def start(index: int) -> Worker:
        dealt = dealer.channel(index) if dealer is not None else None
        try:
            worker = zygote.start(index, config, dealt)
        finally:
            if dealt is not None:
                dealt.close()  # the worker has its own copy
        if stopping:  # a stop signal came while it was being started: it stops too
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        return worker

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    def wait_all(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
            zygote.poll(0.1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for i in range(config.workers):
            procs.append(start(i))
        started = [time.monotonic()] * len(procs)
        quick_deaths = 0  # in a row: workers that died within QUICK_DEATH seconds of their start
        if dealer is not None:
            dealer.start()
        while True:
            # Woken by the zygote's report of a worker's exit (a stop signal's handler stops the
            # workers, whose exits wake it too); at least once a second regardless.
            zygote.poll(1.0)
            for i, proc in enumerate(procs):
                if proc.exitcode is not None and not stopping:
                    quick = time.monotonic() - started[i] < QUICK_DEATH
                    quick_deaths = quick_deaths + 1 if quick else 0
                    if quick_deaths >= MAX_QUICK_DEATHS:
                        # A crash loop (e.g. a broken install): exit and say so, rather than restart
                        # forever behind a readiness probe that never passes.
                        log.critical("workers died %d times in a row within %.0f s of starting; giving up",
                                     quick_deaths, QUICK_DEATH)
                        on_signal(signal.SIGTERM, None)
                        wait_all(config.grace + 1)
                        return 1
                    log.error("worker %d exited with %s; restarting it", i, proc.exitcode)
                    if node is not None:  # its requests in flight are charged, its slots freed (node_state)
                        node.reaped(proc.pid)
                    recover_records(config, recovered, sender)
                    time.sleep(0.5)
                    procs[i], started[i] = start(i), time.monotonic()
            if stopping and all(p.exitcode is not None for p in procs):
                return 0
    except ZygoteGone as exc:
        # Workers can no longer be started from the loaded state: stop, so that whatever runs this
        # service (Kubernetes, systemd) starts it again.
        log.critical("%s; stopping", exc)
        on_signal(signal.SIGTERM, None)
        return 1
    finally:
        if dealer is not None:
            dealer.stop()
