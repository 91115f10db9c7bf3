"""The workers' zygote: a process forked from the supervisor, which forks every worker.

``tollway serve --workers N`` needs each worker to start from the same loaded state (the service's
modules, the tokenizers, the compiled policy) and share its pages, and to be restarted from that
state when one dies. Forking the workers straight from the supervisor would do it, but the
supervisor runs threads (the policy watcher, the dealer, the node's counters), and a fork taken
while another thread holds a lock can hang the child. multiprocessing's ``forkserver`` avoids that
with a fresh interpreter, which shares nothing with the supervisor: its own copy of every module,
plus a resource tracker process, measured at 43 MB of PSS more than forking from the supervisor
(README "Performance").

So the supervisor, at its start and before it starts any thread, loads what the workers use
(:mod:`ext_proc.server.preload`: the service, the tokenizers) and forks this one process, which
inherits all of it (with the policy compiled, pydantic, the guardrails' modules: shared pages)
and stays single-threaded, forking a worker whenever the supervisor asks. The preload is loaded
in the supervisor, not in the zygote after its fork: loading allocates into the supervisor's
partly used pages (the allocators' free slots) and writes to its objects, and each page it
touched in the zygote was copied, held twice from then on (11 MB of PSS with the example policy,
README "Performance"). The supervisor talks to it over a socket pair: ``start`` (a worker's
index, the serve config, the worker's dealt connection channel passed as a file descriptor)
answered by the worker's pid, and ``exited`` messages with each worker's exit code. The listening
and admin sockets and the shared policy state are inherited at the zygote's fork. The zygote
holds SIGINT and SIGTERM blocked (the supervisor stops the workers) and exits, stopping its
workers, when the supervisor's end of the socket closes.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

_STOPS = {signal.SIGINT, signal.SIGTERM}


class Worker:
    """A worker as the supervisor sees it: its pid, and its exit code once the zygote reports it."""

    __slots__ = ("exitcode", "index", "pid")

    def __init__(self, index: int, pid: int) -> None:
        self.index, self.pid = index, pid
        self.exitcode: int | None = None


class ZygoteGone(RuntimeError):
    """The zygote died: no worker can be started any more."""


class Zygote:
    """The supervisor's end (see the module docstring)."""

    def __init__(self, preload: list[str], target: Callable[..., None], inherited: tuple[Any, ...],
                 closing: tuple[socket.socket, ...] = ()) -> None:
        """Import the ``preload`` modules here, then fork the zygote (call before starting any
        thread). ``target(config, *inherited, supervisor, dealt)`` runs each worker; ``inherited``:
        what the workers get from this process as it is now (the sockets, the shared policy state);
        ``closing``: sockets of this process the zygote closes (the listening socket, when the
        supervisor deals its connections)."""
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:  # a fork now could copy a lock another thread holds into the zygote, and hang it
            raise RuntimeError(f"the zygote must be forked before any thread starts; running: {', '.join(others)}")
        for name in preload:
            importlib.import_module(name)
        self._conn, theirs = multiprocessing.Pipe(duplex=True)
        # Everything loaded so far out of the collector's reach, in both processes: a collection
        # would write every object's header and copy the pages the two (and the workers) share.
        gc.collect()
        gc.freeze()
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=_main, args=(theirs, (self._conn, *closing), target, inherited,
                                                           os.getpid()), name="tollway-zygote", daemon=False)
        self.process.start()
        theirs.close()
        self.workers: dict[int, Worker] = {}  # by pid

    def start(self, index: int, config: Any, dealt: socket.socket | None) -> Worker:
        """Start worker ``index``; its handle (the exit code comes later, see :meth:`poll`)."""
        try:
            self._conn.send(("start", index, config, dealt is not None))
            if dealt is not None:
                send_handle(self._conn, dealt.fileno(), self.process.pid or 0)
            while True:
                message = self._conn.recv()
                if message[0] == "started":
                    worker = self.workers[message[2]] = Worker(index, message[2])
                    return worker
                self._note(message)
        except (OSError, EOFError) as exc:
            raise ZygoteGone(f"the workers' zygote is gone ({exc})") from None

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for exit reports; raise :class:`ZygoteGone` if it died."""
        try:
            if self._conn.poll(timeout):
                while True:
                    self._note(self._conn.recv())
                    if not self._conn.poll(0):
                        break
        except (OSError, EOFError):
            raise ZygoteGone("the workers' zygote is gone") from None

    def _note(self, message: tuple[Any, ...]) -> None:
        if message[0] == "exited":
            worker = self.workers.pop(message[1], None)  # the supervisor keeps its handle
            if worker is not None:
                worker.exitcode = message[2]

    def close(self, timeout: float = 5.0) -> None:
        """Close the zygote's socket (it stops whatever workers remain, then exits) and wait for it."""
        self._conn.close()
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(1.0)


def _main(conn: multiprocessing.connection.Connection, closing: tuple[Any, ...],
          target: Callable[..., None], inherited: tuple[Any, ...], supervisor: int) -> None:
    for theirs in closing:  # the supervisor's end of the socket pair, its listening socket: not ours
        theirs.close()
    # A terminal's ^C reaches the whole group: the supervisor stops the workers, then closes the
    # socket. Blocked, not ignored: a worker inherits the mask, and a SIGTERM sent to it before it
    # unblocks waits for it instead of being dropped (an ignored signal is discarded).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    context = multiprocessing.get_context("fork")
    children: dict[int, multiprocessing.process.BaseProcess] = {}
    try:
        while True:
            # Asleep until the supervisor asks for a worker or a worker exits (its sentinel): an
            # idle zygote is never woken to find nothing to do.
            ready = multiprocessing.connection.wait([conn, *(child.sentinel for child in children.values())])
            if conn in ready:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    break  # the supervisor is gone, or done
                _, index, config, has_dealt = message
                dealt = socket.socket(fileno=recv_handle(conn)) if has_dealt else None
                forked = context.Process(target=_worker, args=(target, config, inherited, supervisor, dealt),
                                         name=f"tollway-worker-{index}", daemon=False)
                forked.start()
                if dealt is not None:
                    dealt.close()  # the worker has its own copy
                assert forked.pid is not None
                children[forked.pid] = forked
                conn.send(("started", index, forked.pid))
            for pid, child in list(children.items()):
                if child.exitcode is not None:
                    del children[pid]
                    conn.send(("exited", pid, child.exitcode))
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        for child in children.values():  # the supervisor left without stopping them: stop them now
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in children.values():
            child.join(max(0.0, deadline - time.monotonic()))


def _worker(target: Callable[..., None], config: Any, inherited: tuple[Any, ...], supervisor: int,
            dealt: socket.socket | None) -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # one sent since the fork is delivered now
    target(config, *inherited, supervisor, dealt)
