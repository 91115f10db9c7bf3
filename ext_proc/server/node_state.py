"""The node's own shared state, for several worker processes without Redis.

With ``--workers N`` and no ``--redis``, budgets and rate limits must still hold across the
node's workers, so the counters live once, in the supervising parent process: a
:class:`~ext_proc.state.limits.MemoryBackend` behind a Unix socket in the service's private
socket directory (the same directory, and permission checks, as the ext_proc socket). Each
worker's :class:`~ext_proc.state.limits.Keeper` talks to it through :class:`NodeBackend`
exactly as it talks to Redis: leases, so most requests never ask. The protocol is one JSON line
per request and per answer on a connection a worker keeps open.

A worker also tells the parent, as it happens and without waiting for an answer, what its
requests claimed and gave back and what they spent that it has not reported yet: a ``note`` line
per admission and per ending, written before the request goes on, on a second socket of its own
(``notes.sock`` beside it) that the parent does not watch. The parent reads a worker's notes only when that
worker next asks it something (its reports, every 0.2 s while it has requests) and when it dies,
so a request costs the worker one ``send`` each way and wakes nothing: read as they came, the
notes woke the parent's thread twice a request, 200–300 µs of the node's CPU a request at one
connection. What the parent adds up is a sum, so when it reads them does not change it. A worker
that dies (killed, out of memory) cannot report or give anything back: when the supervisor reaps
it (:meth:`NodeStateServer.reaped`), the parent reads what the worker wrote before it died (to the
end of its sockets), charges what it had pledged as spent (the claims of its requests in flight:
a provider may have served them) and frees the rest of its grants, concurrency slots included, at
once rather than when they expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
from typing import Any

import orjson

from ext_proc.state.limits import Grant, MemoryBackend, Report
from ext_proc.state.queries import Claim, StoreUnavailable

log = logging.getLogger("tollway.node_state")
DEADLINE = 1.0
NOTES = "notes.sock"  # the workers' notes' socket, beside the state socket (a name as long: the path fits as it does)


def notes_path(path: str) -> str:
    """The notes socket beside the state socket at ``path``."""
    return os.path.join(os.path.dirname(path), NOTES)
NOTES_PENDING = 8 << 20  # bytes of notes a worker keeps while it cannot send them (more: dropped)


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
        self._notes: socket.socket | None = None  # notes.sock: the workers' notes, never watched
        self._noting: dict[int, tuple[socket.socket, bytearray]] = {}  # a worker's pid -> its notes, unread

    def start(self) -> None:
        for path in (self.path, notes_path(self.path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the node state server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_unix_server(self._serve, self.path))
        os.chmod(self.path, 0o600)
        notes = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        notes.bind(notes_path(self.path))
        os.chmod(notes_path(self.path), 0o600)
        notes.listen(256)
        notes.setblocking(False)
        self._notes = notes
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
                if "holder" in request:  # a worker's keeper: it notes (its sums kept below zero too)
                    self.backend.noting.add(request["holder"])
                if pid is not None:
                    if "holder" in request:
                        self._holders.setdefault(pid, set()).add(request["holder"])
                    self._read_notes(pid)
                if op == "once":
                    answer: Any = self.backend.once(request["key"], request["until"])
                elif op == "scan":
                    answer = self.backend.scan(request["prefix"])
                else:
                    holder, ttl, pairs = request["holder"], request["ttl"], _claims(request["items"])
                    if op == "grow":
                        grants = self.backend.grow(holder, pairs, ttl)
                    else:  # (busy: what the worker's requests in flight hold, see Backend.report)
                        busy = request.get("busy") or [0] * len(pairs)
                        reports = [(c, spent, released, int(b))
                                   for (c, spent, released), b in zip(pairs, busy, strict=True)]
                        grants = self.backend.report(holder, reports, ttl, request.get("seq", 0))
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

    def _read_notes(self, pid: int) -> None:
        """Apply what the worker ``pid`` noted and the parent has not read yet (all of it: a dead
        worker's socket is read to its end). New workers' sockets are taken first."""
        listener = self._notes
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("node state notes: %s", type(exc).__name__)
                break
            conn.setblocking(False)
            peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            old = self._noting.pop(peer, None)
            if old is not None:  # (a worker's second socket: after a reconnect, the first's rest first)
                self._drain(peer, *old)
            self._noting[peer] = (conn, bytearray())
        found = self._noting.get(pid)
        if found is not None:
            self._drain(pid, *found)

    def _drain(self, pid: int, conn: socket.socket, rest: bytearray) -> None:
        ended = False
        while True:
            try:
                data = conn.recv(262144)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            rest += data
        end = rest.rfind(b"\n") + 1
        for line in bytes(rest[:end]).splitlines():
            try:
                note = orjson.loads(line)
                self._holders.setdefault(pid, set()).add(note["holder"])
                self.backend.pledge(note["holder"], _claims(note["items"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("node state: a note of worker %d unreadable: %s", pid, type(exc).__name__)
        del rest[:end]
        if ended:
            conn.close()
            if self._noting.get(pid, (None,))[0] is conn:
                del self._noting[pid]

    def _bury(self, pid: int) -> None:
        self._dead.discard(pid)
        self._read_notes(pid)
        for holder in sorted(self._holders.pop(pid, ())):
            charged = self.backend.bury(holder)
            if charged:
                log.warning("worker %d died with requests in flight: their claims are charged as spent (%s)", pid,
                            ", ".join(f"{name}: {amount}" for name, amount in sorted(charged.items())))

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            if self._notes is not None:
                self._notes.close()
            for conn, _ in self._noting.values():
                conn.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)
        for path in (self.path, notes_path(self.path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class NodeBackend:
    """A worker's client of :class:`NodeStateServer` (one connection, one request at a time)."""

    def __init__(self, path: str, deadline: float = DEADLINE) -> None:
        self.path = path
        self.deadline = deadline
        self._lock: asyncio.Lock | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._pid = os.getpid()  # made in the worker: the parent charges its pledges when it dies
        self._noting: socket.socket | None = None  # notes.sock, connected on the first note
        self._unsent = bytearray()  # notes the socket had no room for (or no socket): sent first next time

    def note(self, holder: str, items: list[tuple[Claim, int, int]]) -> None:
        """Tell the parent what this worker's requests pledged (see ``Pledge`` in ext_proc.state.limits):
        written now, before the request goes on (a worker killed after this write is charged for
        it: the parent reads it off the socket), never waited on, and waking nothing: the parent
        reads the notes socket when this worker next asks it something, or dies."""
        if not items:
            return
        self._unsent += orjson.dumps({"holder": holder, "items": _items(items)})
        self._unsent += b"\n"
        self._send_notes()

    def _send_notes(self) -> None:
        unsent = self._unsent
        sock = self._noting
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(notes_path(self.path))
                except OSError:
                    sock.close()
                    raise
                sock.setblocking(False)
                self._noting = sock
            sent = sock.send(unsent)
            del unsent[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the parent is gone or restarting: kept for the next socket
            if self._noting is not None:
                self._noting.close()
                self._noting = None
        if len(unsent) > NOTES_PENDING:  # (a parent that reads nothing: its counters are lost anyway)
            del unsent[:len(unsent) - NOTES_PENDING]
            del unsent[:unsent.find(b"\n") + 1]

    def grow(self, holder: str, asks: list[tuple[Claim, int, int]], ttl: float) -> Any:
        return self._call("grow", holder, asks, ttl)

    def report(self, holder: str, reports: list[Report], ttl: float, seq: int = 0) -> Any:
        # Numbered: a report whose deadline passed may still be read and run by the parent (it
        # was written to the socket), and the keeper sends it again; the parent takes it once.
        return self._call("report", holder, [(c, spent, released) for c, spent, released, _ in reports], ttl, seq,
                          [busy for *_, busy in reports])

    async def once(self, key: str, until: float) -> bool:
        try:
            return bool(await self._request({"op": "once", "key": key, "until": until}))
        except StoreUnavailable:
            return True  # an alert may repeat rather than be lost

    async def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        found = await self._request({"op": "scan", "prefix": prefix})
        return {name: (int(spent), int(held)) for name, (spent, held) in found.items()}

    async def _call(self, op: str, holder: str, pairs: list[tuple[Claim, int, int]], ttl: float,
                    seq: int = 0, busy: list[int] | None = None) -> list[Grant]:
        request = {"op": op, "holder": holder, "ttl": ttl, "items": _items(pairs), "seq": seq}
        if busy is not None:
            request["busy"] = busy
        rows = await self._request(request)
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
        if self._unsent:  # notes the socket had no room for go before this (a report after them)
            self._send_notes()
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
