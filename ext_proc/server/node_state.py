"""The node's own shared state, for several worker processes without Redis.

With ``--workers N`` and no ``--redis``, budgets and rate limits must still hold across the
node's workers, so the counters live once, in the supervising parent process: a
:class:`~ext_proc.state.limits.MemoryBackend` behind a Unix socket in the service's private
socket directory (the same directory, and permission checks, as the ext_proc socket). Each
worker's :class:`~ext_proc.state.limits.Keeper` talks to it through :class:`NodeBackend`
exactly as it talks to Redis: leases, so most requests never ask. The protocol is one JSON line
per request and per answer on a connection a worker keeps open.

A worker also tells the parent, as it happens and without waiting for an answer (a ``note``
line, none comes back), what its requests claimed and gave back and what they spent that it has
not reported yet. A worker that dies (killed, out of memory) cannot report or give anything back:
when the supervisor reaps it (:meth:`NodeStateServer.reaped`), the parent reads what the worker
wrote before it died (to the end of its connections), charges what it had pledged as spent (the
claims of its requests in flight: a provider may have served them) and frees the rest of its
grants, concurrency slots included, at once rather than when they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any

import orjson

from ext_proc.state.limits import Grant, MemoryBackend
from ext_proc.state.queries import Claim, StoreUnavailable

log = logging.getLogger("tollway.node_state")
DEADLINE = 1.0


def _claims(items: list[list[Any]]) -> list[tuple[Claim, int, int]]:
    return [(Claim(counter, 0, capacity, resets, consumes, enforced, kept), a, b)
            for counter, capacity, resets, consumes, enforced, kept, a, b in items]


def _items(pairs: list[tuple[Claim, int, int]]) -> list[list[Any]]:
    return [[c.counter, c.capacity, c.resets, c.consumes, c.enforced, c.kept, a, b] for c, a, b in pairs]


class NodeStateServer:
    """The parent's counters, served on a Unix socket from a thread of its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.backend = MemoryBackend()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="tollway-node-state", daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._open: dict[int, int] = {}  # a worker's pid -> its connections open
        self._holders: dict[int, set[str]] = {}  # a worker's pid -> the holders it spoke for
        self._dead: set[int] = set()  # reaped, with a connection not read to its end yet

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the node state server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_unix_server(self._serve, self.path))
        os.chmod(self.path, 0o600)
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid: int | None = None
        try:
            while line := await reader.readline():
                request = orjson.loads(line)
                op = request["op"]
                if pid is None and "pid" in request:
                    pid = int(request["pid"])
                    self._open[pid] = self._open.get(pid, 0) + 1
                if pid is not None and "holder" in request:
                    self._holders.setdefault(pid, set()).add(request["holder"])
                if op == "note":  # no answer
                    self.backend.pledge(request["holder"], _claims(request["items"]))
                    continue
                if op == "once":
                    answer: Any = self.backend.once(request["key"], request["until"])
                elif op == "scan":
                    answer = self.backend.scan(request["prefix"])
                else:
                    holder, ttl, pairs = request["holder"], request["ttl"], _claims(request["items"])
                    grants = (self.backend.grow(holder, pairs, ttl) if op == "grow"
                              else self.backend.report(holder, pairs, ttl, request.get("seq", 0)))
                    answer = [[g.granted, g.spent, g.held, g.mine] for g in grants]
                writer.write(orjson.dumps(answer) + b"\n")
                await writer.drain()
        except (ConnectionError, orjson.JSONDecodeError, KeyError, ValueError) as exc:
            log.warning("node state connection closed: %s", type(exc).__name__)
        finally:
            writer.close()
            if pid is not None:
                self._open[pid] -= 1
                if not self._open[pid]:
                    del self._open[pid]
                    if pid in self._dead:
                        self._bury(pid)

    def reaped(self, pid: int) -> None:
        """The worker ``pid`` is dead (called by the supervisor, from its own thread): once all it
        wrote is read, what it pledged is spent and the rest of what it held comes back."""
        self._loop.call_soon_threadsafe(self._reaped, pid)

    def _reaped(self, pid: int) -> None:
        if self._open.get(pid):  # its last lines may still be unread: when its connections end
            self._dead.add(pid)
        else:
            self._bury(pid)

    def _bury(self, pid: int) -> None:
        self._dead.discard(pid)
        for holder in sorted(self._holders.pop(pid, ())):
            charged = self.backend.bury(holder)
            if charged:
                log.warning("worker %d died with requests in flight: their claims are charged as spent (%s)", pid,
                            ", ".join(f"{name}: {amount}" for name, amount in sorted(charged.items())))

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class NodeBackend:
    """A worker's client of :class:`NodeStateServer` (one connection, one request at a time)."""

    def __init__(self, path: str, deadline: float = DEADLINE) -> None:
        self.path = path
        self.deadline = deadline
        self._lock: asyncio.Lock | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._pid = os.getpid()  # made in the worker: the parent charges its pledges when it dies
        self._notes: list[bytes] = []  # notes made while no connection was open: sent first on the next

    def note(self, holder: str, items: list[tuple[Claim, int, int]]) -> None:
        """Tell the parent what this worker's requests pledged (see ``Pledge`` in ext_proc.state.limits):
        written now, before the request goes on (a worker killed after this write is charged for
        it: the parent reads it off the socket), never waited on."""
        if not items:
            return
        line = orjson.dumps({"op": "note", "pid": self._pid, "holder": holder, "items": _items(items)}) + b"\n"
        if self._stream is not None and not self._stream[1].is_closing():
            self._stream[1].write(line)
        else:
            self._notes.append(line)

    def grow(self, holder: str, asks: list[tuple[Claim, int, int]], ttl: float) -> Any:
        return self._call("grow", holder, asks, ttl)

    def report(self, holder: str, reports: list[tuple[Claim, int, int]], ttl: float, seq: int = 0) -> Any:
        # Numbered: a report whose deadline passed may still be read and run by the parent (it
        # was written to the socket), and the keeper sends it again; the parent takes it once.
        return self._call("report", holder, reports, ttl, seq)

    async def once(self, key: str, until: float) -> bool:
        try:
            return bool(await self._request({"op": "once", "key": key, "until": until}))
        except StoreUnavailable:
            return True  # an alert may repeat rather than be lost

    async def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        found = await self._request({"op": "scan", "prefix": prefix})
        return {name: (int(spent), int(held)) for name, (spent, held) in found.items()}

    async def _call(self, op: str, holder: str, pairs: list[tuple[Claim, int, int]], ttl: float,
                    seq: int = 0) -> list[Grant]:
        rows = await self._request({"op": op, "holder": holder, "ttl": ttl, "items": _items(pairs), "seq": seq})
        return [Grant(*row) for row in rows]

    async def _request(self, request: dict[str, Any]) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        line = orjson.dumps({**request, "pid": self._pid}) + b"\n"
        async with self._lock:
            try:
                return await asyncio.wait_for(self._exchange(line), self.deadline)
            except (TimeoutError, OSError, orjson.JSONDecodeError, ValueError) as exc:
                await self.close()
                raise StoreUnavailable(f"node state: {type(exc).__name__}") from None
            except asyncio.CancelledError:  # an answer may still be on its way: never read it as the next one's
                if self._stream is not None:
                    self._stream[1].close()
                    self._stream = None
                raise

    async def _exchange(self, line: bytes) -> Any:
        if self._stream is None:
            self._stream = await asyncio.open_unix_connection(self.path)
        reader, writer = self._stream
        if self._notes:
            notes, self._notes = self._notes, []
            writer.write(b"".join(notes))
        writer.write(line)
        await writer.drain()
        answer = await reader.readline()
        if not answer:
            raise ConnectionResetError("node state closed the connection")
        return orjson.loads(answer)

    async def close(self) -> None:
        if self._stream is not None:
            _, writer = self._stream
            self._stream = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
