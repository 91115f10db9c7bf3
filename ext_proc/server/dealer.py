"""Envoy's connections to the service, dealt to the workers by the supervisor.

Envoy holds only a few long-lived HTTP/2 connections to Tollway: one per Envoy worker thread
that has traffic (more only past ``max_concurrent_streams``). Over one listening socket shared by
the workers, the kernel hands each new connection to whichever worker calls ``accept`` first, and
measured under ``make bench`` (2 workers, Envoy concurrency 2) one worker got every stream while
the other sat idle. Giving each worker its own socket as an endpoint of the ext_proc cluster with
Envoy's least-request balancing keeps both busy but alternates consecutive requests between
them: measured on this 2-core machine, 16-19 % more service CPU per request (584 vs 502 µs at
one connection, 331 vs 279 at sixteen), each request meeting a colder worker.

So the supervisor accepts on the one socket and passes each connection (``SCM_RIGHTS``) to the
live worker holding the fewest connections, ties taken in turn. One busy Envoy thread keeps one
hot worker; two busy Envoy threads use two workers. When a worker is replaced, the others are
asked to send away their connections above an even share (HTTP/2 GOAWAY; open streams finish),
so Envoy's reconnections reach the newcomer. Each worker reports a closed connection with
one byte on its channel, and a worker that died (its channel at EOF) gets nothing until its
replacement registers a new channel; connections accepted meanwhile wait in the supervisor.
Only connection set-up passes through here: no request byte does.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import threading

log = logging.getLogger("tollway.dealer")

CLOSED = b"-"  # a worker's report: one of its dealt connections closed
SHED = b"s"  # to a worker: send one connection away (see ext_proc.server.h2.Server.shed)


class Dealer:
    """Accepts on ``listening`` in a thread; deals each connection to a worker's channel."""

    def __init__(self, listening: socket.socket, workers: int) -> None:
        self.listening = listening
        self.channels: list[socket.socket | None] = [None] * workers  # the supervisor's ends
        self.counts = [0] * workers  # connections each worker holds
        self.dealt = [0] * workers  # connections ever dealt (for the tie-break, and tests)
        self.pending: collections.deque[socket.socket] = collections.deque()
        self._turn = 0
        self._lock = threading.Lock()
        self._added: list[tuple[int, socket.socket]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._thread: threading.Thread | None = None

    def channel(self, index: int) -> socket.socket:
        """A new channel for worker ``index`` (a new worker, or one replacing a dead one): the
        worker's end, to pass to it; its connections are dealt from now on."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._added.append((index, mine))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        return theirs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tollway-dealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in [*self.pending, *(c for c in self.channels if c is not None), self._wake_r, self._wake_w]:
            sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        self.listening.setblocking(False)
        selector.register(self.listening, selectors.EVENT_READ, -1)
        selector.register(self._wake_r, selectors.EVENT_READ, -2)
        while not self._stop:
            for key, _ in selector.select():
                index = key.data
                if index == -1:
                    self._accept()
                elif index == -2:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    self._register(selector)
                else:
                    self._report(selector, index, key.fileobj)  # type: ignore[arg-type]
            self._deal_pending()
        selector.close()

    def _register(self, selector: selectors.BaseSelector) -> None:
        with self._lock:
            added, self._added = self._added, []
        for index, channel in added:
            old = self.channels[index]
            if old is not None:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(old)
                old.close()
            self.channels[index], self.counts[index] = channel, 0
            selector.register(channel, selectors.EVENT_READ, index)
        if added:
            self._rebalance()

    def _rebalance(self) -> None:
        """A worker (re)joined with no connections: ask the others to send away what they hold
        above an even share; Envoy reconnects, and the newcomer is dealt those connections."""
        live = [i for i, channel in enumerate(self.channels) if channel is not None]
        if not live:
            return
        share = -(-sum(self.counts[i] for i in live) // len(live))  # rounded up
        for i in live:
            surplus = self.counts[i] - share
            channel = self.channels[i]
            if surplus > 0 and channel is not None:
                with contextlib.suppress(OSError):
                    channel.send(SHED * surplus)

    def _report(self, selector: selectors.BaseSelector, index: int, channel: socket.socket) -> None:
        try:
            data = channel.recv(4096)
        except OSError:
            data = b""
        if data:
            self.counts[index] = max(0, self.counts[index] - data.count(CLOSED))
            return
        selector.unregister(channel)  # the worker is gone: nothing more for it until it is replaced
        channel.close()
        if self.channels[index] is channel:
            self.channels[index], self.counts[index] = None, 0

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: Envoy's connect waits in the backlog meanwhile
                log.error("cannot accept Envoy's connection: %s", exc)
                return
            self.pending.append(conn)

    def _deal_pending(self) -> None:
        while self.pending:
            conn = self.pending[0]
            index = self._choose()
            if index is None:
                return  # no live worker: Envoy's connection waits for one
            channel = self.channels[index]
            assert channel is not None
            try:
                socket.send_fds(channel, [b"c"], [conn.fileno()])
            except OSError:  # the worker died meanwhile; its EOF comes next
                self.channels[index] = None
                continue
            self.pending.popleft()
            conn.close()
            self.counts[index] += 1
            self.dealt[index] += 1

    def _choose(self) -> int | None:
        live = [i for i, channel in enumerate(self.channels) if channel is not None]
        if not live:
            return None
        fewest = min(self.counts[i] for i in live)
        n = len(self.channels)
        for step in range(n):  # the fewest connections; among equals, the next in turn
            i = (self._turn + step) % n
            if i in live and self.counts[i] == fewest:
                self._turn = (i + 1) % n
                return i
        return None  # pragma: no cover - fewest is some live worker's count
