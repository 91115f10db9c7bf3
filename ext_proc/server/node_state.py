"""The node's own shared state, for several worker processes without Redis.

With ``--workers N`` and no ``--redis``, budgets and rate limits must still hold across the
node's workers, so the counters live once, in the supervising parent process: a
:class:`~ext_proc.state.limits.MemoryBackend` behind a Unix socket in the service's private
socket directory (the same directory, and permission checks, as the ext_proc socket). Each
worker's :class:`~ext_proc.state.limits.Keeper` talks to it through :class:`NodeBackend`
exactly as it talks to Redis: leases, so most requests never ask. The protocol is one JSON line
per request and per answer on a connection a worker keeps open.
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
        try:
            while line := await reader.readline():
                request = orjson.loads(line)
                op = request["op"]
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
        line = orjson.dumps(request) + b"\n"
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
