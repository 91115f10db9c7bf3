"""``tollway serve``: the ext_proc gRPC server, its workers and its lifecycle.

One process per worker, all bound to the same port with ``SO_REUSEPORT`` (the kernel spreads
Envoy's HTTP/2 connections over them); with ``--workers 1`` the server runs in this process.
Each worker runs, on uvloop, the ext_proc servicer and the standard gRPC health check, on
Tollway's own HTTP/2 server (``--server h2``, the default: see :mod:`ext_proc.server.h2` for
why) or on ``grpcio``'s asyncio server (``--server grpcio``). SIGTERM or SIGINT: health turns
NOT_SERVING, the port stops accepting, in-flight streams get ``--grace`` seconds to finish,
buffered request records are flushed.
A worker that dies unexpectedly is restarted by the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from ext_proc.server import h2
from ext_proc.server.accounting import warm_up
from ext_proc.server.admin import AdminServer
from ext_proc.server.records import RecordWriter
from ext_proc.server.reload import PolicyHolder
from ext_proc.server.servicer import (
    FILTER_METADATA,
    HEALTH_PATH,
    PROCESS_PATH,
    SERVICE,
    ExtProcCall,
    HealthCall,
    Processor,
    Service,
)
from ext_proc.state.ledger import Ledger, MemoryLedger, RedisLedger

log = logging.getLogger("tollway.serve")

MAX_MESSAGE = 64 * 1024 * 1024  # request bodies of many MB travel inside one gRPC message


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port Envoy calls (default 50051)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    parser.add_argument("--log-file", default=None, help="request log, JSON lines (default: stdout)")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds in-flight streams get on shutdown")
    parser.add_argument("--server", choices=("h2", "grpcio"), default="h2",
                        help="gRPC server implementation (default h2: Tollway's own, ~5x less CPU)")
    parser.add_argument("--policy", default=os.environ.get("TOLLWAY_POLICY"),
                        help="policy YAML, watched and reloaded on change (env TOLLWAY_POLICY; "
                             "without one Tollway runs open: no identity, access control or key injection)")
    parser.add_argument("--workload", default=os.environ.get("TOLLWAY_WORKLOAD"),
                        help="this sidecar's workload identity, for callers without a Tollway key "
                             "(env TOLLWAY_WORKLOAD)")
    parser.add_argument("--admin-port", type=int, default=9902,
                        help="/healthz, /readyz and /metrics on the same host (default 9902, 0: off)")
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between policy checks")
    parser.add_argument("--redis", dest="redis_url", default=os.environ.get("TOLLWAY_REDIS_URL"),
                        help="Redis URL for shared spend aggregates (env TOLLWAY_REDIS_URL; default: in-process)")
    parser.add_argument("--no-usage-headers", dest="usage_headers", action="store_false",
                        help="do not add x-tollway-input-tokens/-output-tokens/-cost-usd to non-streamed answers")


def run(args: argparse.Namespace) -> int:
    config = ServeConfig(
        args.host, args.port, max(1, args.workers), args.log_file, args.grace, args.server,
        args.policy, args.workload, args.admin_port, args.reload_interval, args.redis_url, args.usage_headers,
    )
    _configure_logging()
    if config.policy:
        # Refuse to start on a broken policy: say why once, before any worker is spawned.
        check = PolicyHolder(config.policy, CollectorRegistry())
        if not check.load():
            return 2
    else:
        log.warning("no --policy: running OPEN (no identity, access control or provider key injection)")
    if config.workers == 1:
        _worker(config)
        return 0
    return _supervise(config)


def open_ledger(redis_url: str | None) -> Ledger:
    """Spend aggregates: in Redis when a URL is given (shared by every sidecar), else in-process."""
    if not redis_url:
        return MemoryLedger()
    import redis

    return RedisLedger(redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2))


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _worker(config: ServeConfig) -> None:
    _configure_logging()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        pass
    asyncio.run(_serve(config))


async def _serve(config: ServeConfig) -> None:
    registry = CollectorRegistry()
    ledger = open_ledger(config.redis_url)
    records = RecordWriter(config.log_file, ledger=ledger)
    records.start()
    holder = PolicyHolder(config.policy, registry) if config.policy else None
    if holder is not None and not holder.load():
        raise SystemExit(2)
    service = Service(records, holder, config.workload, accountant=warm_up(), usage_headers=config.usage_headers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(holder.watch(config.reload_interval)) if holder else None
    draining = False

    def ready() -> tuple[bool, dict[str, object]]:
        details: dict[str, object] = {"draining": draining, "workload": config.workload}
        if holder is not None:
            details["policy"] = holder.details()
            if holder.current is not None:
                details["credentials"] = service.credentials.status(holder.current.providers)
        return (not draining and (holder is None or holder.current is not None)), details

    admin = AdminServer(registry, ready, config.log_file, ledger if config.redis_url else None)
    if config.admin_port:
        await admin.start(config.host, config.admin_port)
    address = f"{config.host}:{config.port}"
    if config.server == "h2":
        server = h2.Server({
            PROCESS_PATH: lambda headers: ExtProcCall(service, (FILTER_METADATA, b"upstream") in headers),
            HEALTH_PATH: lambda _headers: HealthCall(lambda: not server.draining),
        })
        try:
            await server.start(config.host, config.port)
        except OSError as exc:
            raise SystemExit(f"tollway serve: cannot listen on {address}: {exc}") from None
        log.info("ext_proc listening on %s (pid %d, h2)", address, os.getpid())
        await stop.wait()
        draining = True
        log.info("shutting down (pid %d): finishing in-flight streams", os.getpid())
        await server.shutdown(config.grace)
    else:
        await _serve_grpcio(config, service, address, stop)
    if watcher is not None:
        watcher.cancel()
    await admin.close()
    await records.close()


async def _serve_grpcio(config: ServeConfig, service: Service, address: str, stop: asyncio.Event) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    server.add_generic_rpc_handlers((Processor(service).handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"tollway serve: cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("ext_proc listening on %s (pid %d, grpcio)", address, os.getpid())
    await stop.wait()
    log.info("shutting down (pid %d): finishing in-flight streams", os.getpid())
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace)


def _supervise(config: ServeConfig) -> int:
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=_worker, args=(config,), name=f"tollway-worker-{index}", daemon=False)
        proc.start()
        return proc

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    procs = [start(i) for i in range(config.workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        for i, proc in enumerate(procs):
            proc.join(timeout=0.2 / len(procs))
            if proc.exitcode is not None and not stopping:
                log.error("worker %d exited with %s; restarting it", i, proc.exitcode)
                time.sleep(0.5)
                procs[i] = start(i)
        if stopping and all(p.exitcode is not None for p in procs):
            return 0
