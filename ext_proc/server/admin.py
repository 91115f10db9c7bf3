"""The service's own small HTTP endpoint: ``/healthz``, ``/readyz`` (JSON details), ``/metrics``,
``/v1/report`` (the spend report of ``tollway report``, as JSON; one computed at a time, the
next waits :data:`REPORT_WAIT` then gets a 429), ``/v1/budgets``, and the
dashboard: ``/dashboard`` (one HTML page, packaged with Tollway: no CDN, works offline) and the
JSON it reads, ``/v1/dashboard`` (:mod:`ext_proc.ledger.dashboard`).

One per worker process, all serving the one listening socket the parent bound (without
``SO_REUSEPORT``: no other process can join the port); every worker serves the policy the
parent published and reads the same request log, so any of them answers for the service.
Bound to loopback by default. Exposed beyond loopback (``--admin-host``), it needs a bearer token
(``--admin-token-file``): ``/metrics``, ``/v1/report`` and ``/v1/budgets`` then answer 401 without
it, ``/healthz`` stays open and ``/readyz`` answers probes with its status and ``{"ready": ...}``
only; the details (store, policy, limits) need the token too. Without a token, every path answers
only requests whose ``Host`` names loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any port):
loopback binding alone does not keep a browser out, since a page that resolves its own name to
127.0.0.1 (DNS rebinding) is same-origin with the port; its requests still name its host (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib.resources
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any, NamedTuple

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ext_proc.ledger import dashboard
from ext_proc.ledger.log import Follower, log_files, read_records
from ext_proc.ledger.report import GROUPS, aggregate, day_after, filters, month_window, parse_day
from ext_proc.state.ledger import Ledger

# The dashboard's files (path -> packaged file, content type): served without the token.
ASSETS = {"/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
          "/dashboard/": ("dashboard.html", "text/html; charset=utf-8"),
          "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard/icon.svg": ("icon.svg", "image/svg+xml")}
LOOPBACK = (b"localhost", b"127.0.0.1", b"[::1]")  # the hosts a request may name without a token
_NOT_LOCAL = orjson.dumps(
    {"error": {"message": "without an admin token this endpoint answers only requests for localhost, 127.0.0.1 "
                          "or [::1] (Host)", "type": "permission_error"}}
)
# A report reads every bucket (or log line) of its window: one at a time per process, so that many
# asked at once cannot each take their share of the sidecar's memory and CPU. Another waits this
# long for it, then is answered 429 (Retry-After) with _BUSY.
REPORT_WAIT = 5.0
# /v1/budgets reads every budget counter from the shared state store: one that does not answer in
# this long (or fails) is a 503 saying so.
BUDGETS_WAIT = 5.0
_STORE_SILENT = orjson.dumps({"error": {
    "message": "Tollway cannot read the budgets right now: its shared state store (Redis, or the node's "
               "supervisor) does not answer; try again shortly.",
    "type": "server_error", "param": None, "code": "state_unavailable"}})
_BUSY = orjson.dumps(
    {"error": {"message": "another spend report is being computed in this process: retry in a few seconds",
               "type": "rate_limit_error"}}
)
_UNAUTHORIZED = orjson.dumps(
    {"error": {"message": "this admin endpoint needs the admin token (Authorization: Bearer ...)",
               "type": "authentication_error"}}
)


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, dict[str, object]]],
        log_path: str | None = None,
        ledger: Ledger | None = None,
        budgets: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
        token: str | None = None,
        before_scrape: Callable[[list[dict[str, Any]]], object] | None = None,
        serves: Callable[[str], bool] = lambda model: False,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.log_path = log_path
        self.ledger = ledger  # shared aggregates (Redis); without them the report reads the log
        self.budgets = budgets  # the rows of `tollway budgets` (ext_proc.ledger.budgets)
        self._expected = token.encode() if token else None
        self.before_scrape = before_scrape  # given the budget rows: refresh what the scrape reads
        self._server: asyncio.base_events.Server | None = None
        self._assets: dict[str, bytes] = {}
        self.serves = serves  # whether the current policy serves a model name (a model or an alias)
        self._timeline = dashboard.Timeline(names=dashboard.ModelNames(serves))  # the log's, read incrementally
        self._follower = Follower(log_path, since=time.time() - self._timeline.keep) if log_path else None
        self._timeline_lock = threading.Lock()
        self._report_lock = asyncio.Lock()  # one report computed at a time (REPORT_WAIT)

    def allowed(self, head: bytes) -> bool:
        """Whether the request head carries the admin token (always, when none is configured). The
        scheme is any case (RFC 9110: ``bearer`` is ``Bearer``)."""
        if self._expected is None:
            return True
        value = _header(head, b"authorization")
        if value is None:
            return False
        scheme, _, credentials = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._expected)

    def local(self, head: bytes) -> bool:
        """Whether the request may be answered: a token is configured (it decides), or the request's
        ``Host`` names loopback (see the module docstring)."""
        if self._expected is not None:
            return True
        host = (_header(head, b"host") or b"").lower()
        name = host.rpartition(b"]")[0] + b"]" if host.startswith(b"[") else host.partition(b":")[0]
        port = host[len(name):]
        return name in LOOPBACK and (not port or (port[:1] == b":" and port[1:].isdigit()))

    async def start(self, sock: socket.socket) -> None:
        """Serve on a listening socket (bound once by the parent, shared by the workers)."""
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def report(self, query: str) -> tuple[int, str, bytes]:
        """``/v1/report?by=team&since=YYYY-MM-DD&until=YYYY-MM-DD&team=T``: rows as JSON (also
        ``key=ci@search``, ``model=``, ``provider=``, ``upstream=``: only what matches them all; ``by=upstream``:
        the model that served, as the policy names it at its provider)."""
        asked = _report_query(query)
        if isinstance(asked, _Bad):
            return asked.answer
        by, since, until, where = asked
        if self.ledger is not None:
            found = self.ledger.rows(by, since, until, where)
            source = "redis"
        else:
            records = read_records(log_files(self.log_path)) if self.log_path else iter(())
            found, source = aggregate(records, by, since, until, where), "log"
        rows = [row.as_dict() for row in found]
        return 200, "application/json", orjson.dumps({"by": by, "source": source, "rows": rows})

    async def _one_report(self, query: str) -> tuple[int, str, bytes]:
        """:meth:`report` in a worker thread, one at a time: another report asked meanwhile waits
        up to :data:`REPORT_WAIT` seconds for it, then is answered 429 (a malformed one is
        answered 400 at once, never waiting)."""
        asked = _report_query(query)
        if isinstance(asked, _Bad):
            return asked.answer
        try:
            await asyncio.wait_for(self._report_lock.acquire(), REPORT_WAIT)
        except TimeoutError:
            return 429, "application/json", _BUSY
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.report, query)
        finally:
            self._report_lock.release()

    def dashboard_data(self, query: str) -> tuple[int, str, bytes]:
        """``/v1/dashboard?hours=24&step=300``: what the page draws, from the ledger (see
        :mod:`ext_proc.ledger.dashboard`): the shared aggregates with Redis, else the request log."""
        params = dict(urllib.parse.parse_qsl(query))
        try:
            hours = min(24 * 7.0, max(0.25, float(params.get("hours", 24))))
            step = int(params["step"]) if "step" in params else None
        except ValueError as exc:
            return 400, "application/json", orjson.dumps({"error": {"message": str(exc), "type": "invalid_request"}})
        until = time.time()
        since = until - hours * 3600
        if self.ledger is not None:
            days = dashboard.window_days(since, until)
            cells = self.ledger.cells(days[0], days[-1] + timedelta(days=1))
            data = dashboard.from_ledger(days, cells, self.serves)
        else:
            with self._timeline_lock:
                if self._follower is not None:
                    for record in self._follower.new_records():
                        self._timeline.add(record, until)
                chosen = step or max(self._timeline.step, int(hours * 3600 / 96) // 300 * 300)
                data = self._timeline.summary(since, until, chosen)
        data.update(since=since, until=until, hours=hours)
        return 200, "application/json", orjson.dumps(data)

    def asset(self, name: str) -> bytes:
        """A file of the dashboard, packaged in ``ext_proc/server/assets`` (read once)."""
        found = self._assets.get(name)
        if found is None:
            found = self._assets[name] = importlib.resources.files("ext_proc.server").joinpath(
                f"assets/{name}").read_bytes()
        return found

    def route(self, path: str, allowed: bool = True) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ok, details = self.ready()
            shown = {"ready": ok, **details} if allowed else {"ready": ok}
            return (200 if ok else 503), "application/json", orjson.dumps(shown)
        if path in ASSETS:  # the page and its script hold no data: the data asks for the token
            name, content_type = ASSETS[path]
            return 200, content_type, self.asset(name)
        if not allowed:
            return 401, "application/json", _UNAUTHORIZED
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = head.split(b" ", 2)
            method = parts[0].decode("latin-1")
            target = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            path, _, query = target.partition("?")
            allowed = self.allowed(head)
            if method not in ("GET", "HEAD"):
                status, content_type, body = 405, "text/plain", b""
            elif not self.local(head):
                status, content_type, body = 403, "application/json", _NOT_LOCAL
            elif not allowed and path not in ("/healthz", "/readyz") and path not in ASSETS:
                status, content_type, body = 401, "application/json", _UNAUTHORIZED
            elif path == "/v1/report":  # reads the log or Redis: one at a time, off the event loop
                status, content_type, body = await self._one_report(query)
            elif path == "/v1/dashboard":  # reads the log's new lines (or Redis): off the event loop
                status, content_type, body = await asyncio.get_running_loop().run_in_executor(
                    None, self.dashboard_data, query)
            elif path == "/metrics":
                rows: list[dict[str, Any]] = []
                if self.budgets is not None:
                    with contextlib.suppress(Exception):  # the store down: the scrape still answers
                        rows = await self.budgets()
                if self.before_scrape is not None:
                    self.before_scrape(rows)
                status, content_type, body = self.route(path)
            elif path == "/v1/budgets" and self.budgets is not None:
                content_type = "application/json"
                try:  # the store's counters: Redis (or the node's supervisor) may be down or hang
                    status, body = 200, orjson.dumps({"budgets": await asyncio.wait_for(self.budgets(),
                                                                                        BUDGETS_WAIT)})
                except Exception:
                    status, body = 503, _STORE_SILENT
            else:
                status, content_type, body = self.route(path, allowed)
            reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                      405: "Method Not Allowed", 429: "Too Many Requests", 503: "Service Unavailable"}[status]
            challenge = 'www-authenticate: Bearer realm="tollway-admin"\r\n' if status == 401 else ""
            if status == 429:
                challenge = f"retry-after: {max(1, round(REPORT_WAIT))}\r\n"
            elif status == 503 and body is _STORE_SILENT:
                challenge = "retry-after: 1\r\n"
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\n{challenge}content-type: {content_type}\r\ncache-control: no-store\r\n"
                # The dashboard loads nothing from elsewhere (it works offline, and a name in the data
                # can never pull in a script).
                "content-security-policy: default-src 'self'; style-src 'self' 'unsafe-inline'\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + (body if method == "GET" else b"")
            )
            await writer.drain()
        writer.close()


def _header(head: bytes, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in a request head, stripped."""
    for line in head.split(b"\r\n")[1:]:
        found, _, value = line.partition(b":")
        if found.strip().lower() == name:
            return value.strip()
    return None


class _Bad(NamedTuple):
    answer: tuple[int, str, bytes]  # a malformed query's 400


def _report_query(query: str) -> tuple[str, date | None, date | None, Any] | _Bad:
    """A ``/v1/report`` query's (by, since, until, where), or the 400 answer to a malformed one."""
    params = dict(urllib.parse.parse_qsl(query))
    try:
        by = params.get("by", "team")
        if by not in GROUPS:
            raise ValueError(f"by must be one of {', '.join(sorted(GROUPS))}")
        since = parse_day(params["since"]) if "since" in params else None
        until = day_after(parse_day(params["until"])) if "until" in params else None
        if "month" in params:
            since, until = month_window(params["month"])
        where = filters(params)
    except (ValueError, KeyError) as exc:
        return _Bad((400, "application/json",
                     orjson.dumps({"error": {"message": str(exc), "type": "invalid_request"}})))
    return by, since, until, where
