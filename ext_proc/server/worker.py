"""A worker of ``tollway serve``: the event loop that answers Envoy's ext_proc streams.

Everything a worker runs and the supervisor does not: the HTTP/2 (or grpcio) server, the
service and its state backends, the admin server, metrics and telemetry. The supervisor
(:mod:`ext_proc.server.app`) imports this module only right before it forks the workers' zygote
(:mod:`ext_proc.server.preload`), so every worker shares its pages. What a worker runs is
imported here, at the top, not when the worker starts: a module imported after the fork is
loaded once per worker, and the import itself writes into pages the workers share and copies
them (uvloop cost each worker 3 MB that way).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import select
import signal
import socket
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
    uvloop = None  # type: ignore[assignment]

from ext_proc import memo
from ext_proc.core import pipeline
from ext_proc.ledger import budgets
from ext_proc.server import h2, listen
from ext_proc.server.accounting import warm_up
from ext_proc.server.admin import AdminServer
from ext_proc.server.alerts import Alerts
from ext_proc.server.app import ServeConfig, configure_logging, knows, local_limits_warning, open_ledger
from ext_proc.server.bodies import BodyBudget
from ext_proc.server.collectors import BudgetCollector, TallyCollector
from ext_proc.server.credentials import CredentialStore
from ext_proc.server.metrics import Exchange, Names, Publisher, Tally, alive
from ext_proc.server.node_state import NodeBackend
from ext_proc.server.records import RecordWriter
from ext_proc.server.reload import PolicyHolder, Publication
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
from ext_proc.server.telemetry import TelemetryConfig
from ext_proc.state.limits import Backend, Keeper, MemoryBackend, RedisBackend
from ext_proc.state.store import MemoryStore, RedisStore, Store

log = logging.getLogger("tollway.serve")

MAX_MESSAGE = 64 * 1024 * 1024  # request bodies of many MB travel inside one gRPC message


class Refusals:
    """Requests Tollway refused (bad input, access, limits): a log line per code at most once a
    second (the record has every one; ``tollway_requests_refused_total`` counts them)."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def __call__(self, record: dict[str, Any]) -> None:
        if record.get("outcome") != "rejected":
            return
        code = str(record.get("error") or "unknown")
        now = time.monotonic()
        if now - self.logged.get(code, -2.0) >= 1.0:
            self.logged[code] = now
            if code == "workload_mismatch":  # a workload claiming another's identity (a warning)
                log.warning("refused workload_mismatch: a stream of %s named another workload in its message's "
                            "connection.uri_san_peer_certificate attribute (request %s)",
                            record.get("workload") or "a workload the policy does not name", record.get("request_id"))
                return
            log.info("refused %s (status %s, request %s)", code, record.get("status"), record.get("request_id"))


def _die_with_parent(supervisor: int) -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL.

    A worker outliving its supervisor would keep serving the old socket with the old policy, and
    a restarted ``tollway serve`` would find that socket live and refuse to start. The worker's
    parent is the zygote (which lives as long as any worker does), so the kernel's
    parent-death signal cannot tell; a thread waits on a pidfd of the supervisor instead (Linux
    5.3+; elsewhere it checks once a second). SIGTERM is the graceful path: open streams finish
    (``--grace``), records are flushed, the socket is closed.
    """

    def wait() -> None:
        try:
            pidfd = os.pidfd_open(supervisor)
        except ProcessLookupError:
            pidfd = None  # already gone
        except (OSError, AttributeError):
            while alive(supervisor):
                time.sleep(1.0)
            pidfd = None
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the supervisor has exited
            os.close(pidfd)
        log.warning("the supervisor (pid %d) is gone: this worker stops", supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="tollway-supervisor-watch", daemon=True).start()


def run(config: ServeConfig, sock: socket.socket | None, admin_sock: socket.socket | None,
            publication: Publication, parent: int | None = None, dealt: socket.socket | None = None) -> None:
    configure_logging()
    if parent is not None:
        _die_with_parent(parent)
    memo.configure(config.text_memory)
    if uvloop is not None:
        uvloop.install()
    asyncio.run(_serve(config, sock, admin_sock, publication, dealt))


async def _serve(config: ServeConfig, sock: socket.socket | None, admin_sock: socket.socket | None,
                 publication: Publication, dealt: socket.socket | None = None) -> None:
    registry = CollectorRegistry()
    # None without Redis (reports read the log). A refused request's model name the policy does not
    # know is counted under "(other)": the policy now, the holder's (made just below).
    ledger = open_ledger(config.redis_url, lambda model: knows(holder.current if holder else None, model))
    records = RecordWriter(config.log_file, ledger=ledger, journal=True, immediate=True, state_dir=config.state_dir,
                           spool_max=config.spool_max)
    records.start()
    holder = PolicyHolder(publication, registry) if config.policy else None
    if holder is not None and holder.current is None:
        raise SystemExit(2)
    store: Store = RedisStore(config.redis_url) if config.redis_url else MemoryStore()
    backend: Backend
    if config.redis_url:
        backend = RedisBackend.from_url(config.redis_url)
    elif config.node_state:
        backend = NodeBackend(config.node_state)
    else:
        backend = MemoryBackend()
    keeper = Keeper(backend, ttl=config.hold_ttl)
    names = Names(lambda: holder.current if holder else None)
    tally = Tally(names)
    exchange = Exchange(tally, config.metrics_dir)
    registry.register(TallyCollector(exchange.totals))
    keeper.alerts = Alerts(lambda: holder.current if holder else None, backend.once, tally)

    def published_stand_ins() -> dict[str, str]:
        """The stand-ins decided for the running policy (tollway serve --stand-in-missing), as published."""
        if holder is None:
            return {}
        holder.current  # noqa: B018 - serve the latest publication
        return holder.state.stand_ins

    credentials = CredentialStore(stand_ins=frozenset(config.stand_ins), stand_ins_get_keys=config.stand_ins_get_keys,
                                  more=published_stand_ins if config.stand_in_missing else None)

    def stand_ins() -> dict[str, str]:
        return {**config.stand_ins, **published_stand_ins()}

    service = Service(records, holder, config.workload, mtls=config.tls is not None, credentials=credentials,
                      accountant=warm_up(), stand_ins=stand_ins, stand_in_missing=bool(config.stand_in_missing),
                      usage_headers=config.usage_headers, store=store, keeper=keeper,
                      steps=pipeline.Pipeline.of(pipeline.request_steps(store_probe=config.store_probe)),
                      bodies=BodyBudget(config.body_memory * 1024 * 1024))
    limits_store = "redis" if config.redis_url else "node" if config.node_state else "memory"
    refusals = Refusals()

    def on_record(record: dict[str, Any]) -> None:
        tally.record(record)
        refusals(record)

    service.on_record = on_record
    telemetry = _telemetry(config, service, names)

    def gauges() -> None:  # what this worker knows that no record says, before each publication
        since = keeper.degraded_since
        tally.set(("tollway_shared_state_degraded", limits_store), 1 if since is not None else 0)
        tally.set(("tollway_shared_state_degraded_seconds", limits_store),
                  round(time.monotonic() - since, 1) if since is not None else 0)
        if records.failures:
            tally.counters[("tollway_ledger_write_failures",)] = records.failures
            tally.changed = True
        if records.ledger_dropped:
            tally.counters[("tollway_ledger_dropped",)] = records.ledger_dropped
            tally.changed = True
        if records.outbox is not None:
            tally.set(("tollway_ledger_waiting",), records.outbox.waiting)
        log_status = records.status()
        tally.set(("tollway_request_log_failing",), 0 if log_status["ok"] else 1)
        tally.set(("tollway_request_log_waiting",), log_status["waiting"])
        for name, field_name in (("tollway_request_log_write_failures", "failed_writes"),
                                 ("tollway_request_log_dropped", "dropped"),
                                 ("tollway_request_journal_errors", "journal_errors")):
            if log_status[field_name] and tally.counters.get((name,)) != log_status[field_name]:
                tally.counters[(name,)] = log_status[field_name]
                tally.changed = True
        for source, stat in (("remembered", "hits"), ("computed", "misses")):
            answers = ("tollway_text_memory_answers", source)
            if memo.stats[stat] and tally.counters.get(answers) != memo.stats[stat]:
                tally.counters[answers] = memo.stats[stat]
                tally.changed = True
        tally.set(("tollway_text_memory_entries",), memo.size())
        tally.set(("tollway_request_body_bytes_held",), service.bodies.held)

    publisher = Publisher(exchange, before=gauges)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(holder.follow()) if holder else None
    draining = False

    def ready() -> tuple[bool, dict[str, object]]:
        details: dict[str, object] = {"draining": draining, "workload": config.workload}
        # A log that cannot be written is shown, not failed: requests are still governed (budgets and
        # limits do not depend on it) and their records wait in memory until it can be written.
        details["request_log"] = records.status()
        # Degraded is shown, not failed: a sidecar that cannot reach Redis still serves (the policy's
        # shared_state.on_unavailable decides how), and failing readiness would take it out of service.
        # Every worker's state, not only this one's (any worker may answer): degraded when any is,
        # for as long as the longest; this worker's live, the others' as they last published it.
        since = keeper.degraded_since
        others = exchange.published("tollway_shared_state_degraded", "tollway_shared_state_degraded_seconds")
        degraded = since is not None or any(others["tollway_shared_state_degraded"])
        mine = round(time.monotonic() - since, 1) if since is not None else 0.0
        longest = max([mine, *others["tollway_shared_state_degraded_seconds"]])
        limits: dict[str, object] = {
            "store": limits_store, "degraded": degraded, "degraded_for_s": longest if degraded else None,
            "counters": len(keeper.leases)}
        # Shown, never failed: per-pod counters still govern, and may be meant (the injector's --redis-secret none).
        shared = local_limits_warning(holder.current if holder else None, config.redis_url)
        if shared is not None:
            limits["warning"] = shared
        details["limits"] = limits
        if holder is not None:
            details["policy"] = holder.details()
            if holder.current is not None:
                details["credentials"] = service.credentials.status(holder.current.providers)
        shown = stand_ins()
        if shown:
            details["stand_ins"] = shown  # served by a stand-in (the fake provider), not the real API
        # A stale policy (the last edit was rejected) keeps the sidecar ready: it still serves the
        # last good policy, and taking it out of rotation would fail every request instead.
        return (not draining and (holder is None or holder.current is not None)), details

    async def budget_rows() -> list[dict[str, Any]]:
        policy = holder.current if holder else None
        if policy is None or not policy.limits.budgets:
            return []
        found = backend.scan("budget/") if hasattr(backend, "scan") else {}
        counters = await found if inspect.isawaitable(found) else found
        return budgets.rows(policy, counters)

    budget_metrics = BudgetCollector()
    registry.register(budget_metrics)

    def before_scrape(rows: list[dict[str, Any]]) -> None:
        gauges()
        budget_metrics.update(rows)

    def serves(model: str) -> bool:  # a model (or alias) of the policy: always a dashboard row of its own
        policy = holder.current if holder else None
        return policy is not None and (model in policy.models or model in policy.aliases)

    admin = AdminServer(registry, ready, config.log_file, ledger, budget_rows,
                        token=config.admin_token, before_scrape=before_scrape, serves=serves)
    publishing = loop.create_task(publisher.run())
    if admin_sock is not None:
        await admin.start(admin_sock)
    address = config.listen
    tls_watcher = None
    if config.server == "h2":
        assert sock is not None or dealt is not None
        tls = listen.TLSContext(config.tls) if config.tls is not None else None
        def process(headers: list[tuple[bytes, bytes]], responder: h2.Responder) -> ExtProcCall:
            peer = responder.peer  # a listen.Peer on tls://, else None
            assert peer is None or isinstance(peer, listen.Peer)
            return ExtProcCall(service, (FILTER_METADATA, b"upstream") in headers, responder,
                               peer.spiffe_id if peer else None, relay=peer is not None and peer.relay)

        server = h2.Server({
            PROCESS_PATH: process,
            HEALTH_PATH: lambda _headers, _responder: HealthCall(lambda: not server.draining),
        }, peer_check=(lambda transport: tls.peer_allowed(transport.get_extra_info("peercert"))) if tls else None,
            # On mutual TLS the client certificate's SPIFFE ID names the workload whose Envoy called,
            # unless it is a trusted relay's (--tls-relay-san): see listen.Peer.
            peer_identity=(lambda transport: tls.identify(transport.get_extra_info("peercert"))) if tls else None,
            # Unfinished messages (whole bodies, with --bodies buffered) a connection may hold: at
            # least what the body budget lets a worker hold.
            max_unfinished=max(h2.MAX_UNFINISHED, config.body_memory * 1024 * 1024))
        if dealt is not None:
            server.take(dealt)  # connections the supervisor accepted for this worker
        else:
            assert sock is not None
            await server.start(sock, tls.context if tls else None)
        if tls is not None:
            tls_watcher = loop.create_task(_watch_tls(tls, config.reload_interval))
        log.info("ext_proc listening on %s (pid %d, h2)", address, os.getpid())
        await stop.wait()
        draining = True
        log.info("shutting down (pid %d): finishing in-flight streams", os.getpid())
        await server.shutdown(config.grace)
    else:
        await _serve_grpcio(config, service, address, stop)
    for task in (watcher, tls_watcher, publishing):
        if task is not None:
            task.cancel()
    await admin.close()
    flushed = keeper.flush()  # report what this worker spent before it goes
    if flushed is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(flushed, 2)
    await service.classifier.close()
    await records.close()
    publisher.close()  # this worker's last counts, for the scrapes after it is gone
    for part in telemetry:
        part.close()  # flushes the spans and logs still queued
    if isinstance(store, RedisStore):
        await store.close()


def _telemetry(config: ServeConfig, service: Service, names: Names) -> list[Any]:
    """OpenTelemetry traces and record logs, when a collector is configured (else nothing runs)."""
    found = TelemetryConfig.from_environment(config.otlp_endpoint, config.otlp_logs, config.trace_ratio)
    if found is None:
        return []
    from ext_proc.core.actions import Trace
    from ext_proc.server.telemetry import RecordExporter, Tracer

    tracer = Tracer.exporting(found, names) if found.traces else None
    exporter = RecordExporter.exporting(found) if found.logs else None

    def on_trace(record: dict[str, Any], trace: Trace) -> None:
        try:
            span = tracer.finish(record, trace) if tracer is not None else None
            if exporter is not None:
                exporter.emit(record, span)
        except Exception:  # telemetry never fails a request
            log.exception("could not record the request's telemetry")

    service.on_trace = on_trace
    log.info("OpenTelemetry: %s%s", "traces" if tracer else "", " and request records as logs" if exporter else "")
    return [part for part in (tracer, exporter) if part is not None]


async def _watch_tls(tls: listen.TLSContext, interval: float) -> None:
    """Pick up rotated certificate files (new handshakes use them; open connections keep theirs)."""
    while True:
        await asyncio.sleep(interval)
        try:
            if tls.refresh():
                log.info("TLS certificate files reloaded")
        except listen.ListenError as exc:
            log.error("TLS files unreadable, keeping the loaded ones: %s", exc)


async def _serve_grpcio(config: ServeConfig, service: Service, address: str, stop: asyncio.Event) -> None:
    import grpc  # here only: the h2 server never needs grpcio's 20 MB of imports
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    parsed = listen.parse(address)
    if parsed.kind == "unix":
        listen.check_directory(os.path.dirname(parsed.path), config.socket_group)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parsed.path)
        address = f"unix:{parsed.path}"
    else:
        address = f"{parsed.host}:{parsed.port}"
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
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


