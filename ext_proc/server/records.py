"""The request log: one JSON line per request, written off the request path.

Sessions emit records as effects; :class:`RecordWriter` stamps the wall-clock time and writes
them: the service writes each record at once (``immediate``: one ``write`` of about a
microsecond, before Envoy has the answer that ends the request, so a worker killed a moment
later loses nothing), else they are written in batches (every ``interval`` seconds, or sooner
when the buffer is large); everything left is flushed on shutdown. Each write is a single
``write`` to a file opened in append mode, so the lines of several worker processes sharing one
file never interleave mid-line.

Rotation: when the file passes ``max_bytes`` the worker that notices renames it to
``<path>.<UTC timestamp>`` and opens a new one; the other workers notice the new inode at their
next flush and reopen, so nothing is lost (their last batch may land in the renamed file). The
newest ``keep`` rotated files are kept. ``tollway report`` reads them all.

A full disk (or any write error): the service keeps serving (fail open for the log, loudly). The
records wait in memory, up to ``max_backlog`` bytes per worker (the oldest are dropped past it,
and counted), and are written, in order, as soon as a write succeeds again; a record cut by a
partial write is finished first, so the line it began is completed. :meth:`RecordWriter.status` feeds
``/readyz`` (``request_log``) and the ``tollway_request_log_*`` metrics; the log says it once,
then every 10 s.

Aggregates: with ``--redis`` each round's records are handed to an
:class:`~ext_proc.server.spool.Outbox` (counted per bucket and spooled at once,
next to the log in ``.<log name>.aggregates/`` or in ``--state-dir``'s ``aggregates/``, then sent
by a thread of its own, so the event loop never waits on the network); without it
there are none (nothing would read them: reports read the log). The outbox sends everything
waiting in one Redis call per round trip, oldest first, each batch numbered in its outbox's
sequence so that Redis adds it once (a high-water mark per outbox);
what Redis has not taken when the worker stops (or dies) stays in its spool, and the supervisor
sends it (:class:`LedgerSender`, which also sends the records it recovers from dead workers'
journals). The log file holds every record either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from ext_proc.ledger.log import log_files
from ext_proc.server.journal import Journal
from ext_proc.server.spool import MAX_PENDING, RESCAN, Outbox
from ext_proc.server.state_dir import places
from ext_proc.state.ledger import Ledger

log = logging.getLogger("tollway.records")
MAX_BACKLOG = 16 * 1024 * 1024  # bytes of records kept in memory while the log cannot be written
RETRY = 0.5  # seconds between write attempts while it cannot
POSITION_AGE = 0.25  # seconds a noted log position is reused (see RecordWriter.position)


class RecordWriter:
    """Batching JSON-lines writer for request records (``path=None`` writes to stdout).

    ``immediate=True`` writes each record as it is emitted (one ``write``, about a microsecond),
    so a record is in the log before the client has the end of its answer; the periodic flush
    then only follows rotations (and retries after a failure). ``journal=True`` keeps a
    write-ahead journal next to the log (:mod:`ext_proc.server.journal`): :meth:`started` notes
    each request going upstream, and its entry is closed once its record is written.
    """

    def __init__(
        self,
        path: str | None,
        interval: float = 0.05,
        max_buffer: int = 256 * 1024,
        max_bytes: int = 64 * 1024 * 1024,
        keep: int = 20,
        ledger: Ledger | None = None,
        max_backlog: int = MAX_BACKLOG,
        journal: bool = False,
        immediate: bool = False,
        state_dir: str | None = None,
        spool_max: int | None = None,
    ) -> None:
        self._path = path
        self._pending: list[dict[str, Any]] = []  # records not yet handed to the outbox
        # The journal's and the spool's directories: in --state-dir, else next to a log that is a
        # regular file (ext_proc.server.state_dir).
        where = places(path, state_dir)
        # The spend aggregates' outbox (Redis); --spool-max bounds its spool's directory.
        self.outbox = None if ledger is None else Outbox(
            ledger, where.spools, budget=spool_max)
        self._owns_fd = path is not None
        self._position: tuple[int, int] | None = None  # the log's (inode, size) lately seen
        self._position_until = 0.0
        self._fd: int | None = None if path else sys.stdout.fileno()
        self._max_bytes = max_bytes
        self._keep = keep
        self._lines: list[bytes] = []  # records not written yet (the first may be the rest of a torn one)
        self._ids: list[str | None] = []  # their request ids, for the journal
        self._size = 0
        self._interval = interval
        self._max_buffer = max_buffer
        self._max_backlog = max_backlog
        self._immediate = immediate
        self._task: asyncio.Task[None] | None = None
        self._work = asyncio.Event()  # set by emit: the periodic flush has something to follow up
        # Write failures (a full disk): the records wait in memory, the state is shown (status()).
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.failed_writes = 0
        self.dropped = 0
        self._retry_at = 0.0
        self._logged = 0.0
        self.journal: Journal | None = None
        if path is not None:
            try:
                self._fd = self._open()
            except OSError as exc:  # unwritable at start: serve anyway, keep trying (see flush)
                self._failed(exc)
        if journal and where.journals is None:
            log.info("the request log %s is not a regular file: no in-flight journal is kept (give --state-dir "
                     "for one)", path or "(stdout)")
        elif journal and where.journals is not None:
            try:
                self.journal = Journal(where.journals, self.position)
            except OSError as exc:
                log.error("cannot keep a journal in %s (%s): a worker that dies loses the records of "
                          "its requests in flight", where.journals, exc.strerror)

    def emit(self, record: dict[str, Any]) -> None:
        record["ts"] = time.time()
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # a value JSON cannot hold (an integer past 64 bits): the record, never a crash
            log.error("request %s: a record field JSON cannot hold was left out", record.get("request_id"))
            record = {key: None if isinstance(value, int) and not -(2**63) <= value < 2**64 else value
                      for key, value in record.items()}
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if self.outbox is not None:
            self._pending.append(record)
        self._lines.append(line)
        self._ids.append(record.get("request_id"))
        self._size += len(line)
        if self.failing_since is None:
            if self._immediate or self._size >= self._max_buffer:
                if not self._work.is_set() and self._owns_fd:
                    # The first record since the writer's last round (it sleeps while none come):
                    # follow a rotation another worker made meanwhile, or this record would land in
                    # the renamed file, which later rotations may have pruned.
                    try:
                        self._follow_rotation()
                    except OSError as exc:
                        self._failed(exc)
                if self.failing_since is None:
                    self._write()
        elif self._size > self._max_backlog:
            self._drop_oldest()
        self._work.set()

    def started(self, record: dict[str, Any]) -> None:
        """A request goes upstream: note the record it gets if this process dies first (the journal)."""
        if self.journal is not None:
            self.journal.started(record)

    def position(self) -> tuple[int, int] | None:
        """(inode, size) of the log file this writer appends to (None: none open), as seen at most
        :data:`POSITION_AGE` seconds ago. The journal notes it with each request going upstream, and
        recovery reads the log from the earliest noted position on: a position from a little
        earlier only makes it read a little more (the log only grows, and a rotated file stays
        behind the new one), while an ``fstat`` per request is a system call on the hot path."""
        if self._fd is None or not self._owns_fd:
            return None
        now = time.monotonic()
        if self._position is not None and now < self._position_until:
            return self._position
        try:
            stat = os.fstat(self._fd)
        except OSError:
            return None
        self._position, self._position_until = (stat.st_ino, stat.st_size), now + POSITION_AGE
        return self._position

    def flush(self) -> None:
        """Follow a rotation, write what waits, rotate a full file; on failure keep the records
        (up to ``max_backlog`` bytes) for the next flush."""
        if not self._lines and not self._immediate:
            return
        if self._owns_fd:
            try:
                self._follow_rotation()
            except OSError as exc:
                self._failed(exc)
                return
        if self._lines and not self._write():
            return
        if self._owns_fd and self._fd is not None:
            try:
                if os.fstat(self._fd).st_size > self._max_bytes:
                    self._rotate()
            except OSError as exc:
                log.error("cannot rotate the request log %s: %s", self._path, exc.strerror)

    def _write(self) -> bool:
        """Write every waiting record in one append; True when all of it is written."""
        data = self._lines[0] if len(self._lines) == 1 else b"".join(self._lines)
        written = 0
        try:
            fd = self._fd
            if fd is None:
                raise OSError(errno.EBADF, "the request log is not open")
            view = memoryview(data)
            while written < len(data):
                written += os.write(fd, view[written:])
        except OSError as exc:
            self._consume(written)
            self._failed(exc)
            return False
        self._consume(written)
        if self.failing_since is not None:
            log.warning("request log %s writable again after %.1f s; the records kept meanwhile are written",
                        self._path, time.monotonic() - self.failing_since)
            self.failing_since = None
        return True

    def _consume(self, written: int) -> None:
        """Forget the first ``written`` bytes of the buffer (whole records, and part of a torn one)."""
        lines, ids = self._lines, self._ids
        count = 0
        while count < len(lines) and written >= len(lines[count]):
            written -= len(lines[count])
            count += 1
        done = ids[:count]
        del lines[:count], ids[:count]
        if written and lines:  # the rest of a record cut by a failed write: finish that line first
            lines[0] = lines[0][written:]
        self._size = sum(len(line) for line in lines) if lines else 0
        if self.journal is not None and done:
            self.journal.done(done)

    def _failed(self, exc: OSError) -> None:
        now = time.monotonic()
        self.failed_writes += 1
        self.last_error = exc.strerror or type(exc).__name__
        self._retry_at = now + RETRY
        if self.failing_since is None:
            self.failing_since = now
            self._logged = now
            log.error("cannot write the request log %s (%s): requests are still served, their records wait in "
                      "memory (up to %d MiB) and are written when it can be; see /readyz (request_log)",
                      self._path, self.last_error, self._max_backlog >> 20)
        elif now - self._logged >= 10:
            self._logged = now
            log.error("request log %s still unwritable (%s) for %.0f s: %d record(s) waiting, %d dropped",
                      self._path, self.last_error, now - self.failing_since, len(self._lines), self.dropped)
        if self._size > self._max_backlog:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Past the backlog bound: drop the oldest whole records (counted in ``dropped``)."""
        lines, ids = self._lines, self._ids
        count, size = 0, self._size
        while count < len(lines) - 1 and size > self._max_backlog:
            size -= len(lines[count])
            count += 1
        if not count:
            return
        dropped = ids[:count]
        del lines[:count], ids[:count]
        self._size = size
        self.dropped += count
        log.error("request log backlog full: %d record(s) dropped", count)
        if self.journal is not None:
            self.journal.done(dropped)

    def status(self) -> dict[str, Any]:
        """The log's health for ``/readyz`` and the metrics."""
        since = self.failing_since
        return {
            "ok": since is None,
            "error": self.last_error if since is not None else None,
            "failing_for_s": round(time.monotonic() - since, 1) if since is not None else None,
            "waiting": len(self._lines),
            "failed_writes": self.failed_writes,
            "dropped": self.dropped,
            "journal_errors": self.journal.errors if self.journal is not None else 0,
        }

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _follow_rotation(self) -> None:
        """Reopen when another worker rotated the file away from under our descriptor (or none is open)."""
        if self._fd is None:
            self._fd = self._open()
            return
        try:
            current = os.stat(self._path).st_ino  # type: ignore[arg-type]
        except FileNotFoundError:
            current = None
        if current != os.fstat(self._fd).st_ino:
            fd = self._open()
            os.close(self._fd)
            self._fd = fd

    def _rotate(self) -> None:
        path = self._path
        assert path is not None and self._fd is not None
        try:
            if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
                os.rename(path, f"{path}.{stamp}")
        except FileNotFoundError:
            pass
        fd = self._open()
        os.close(self._fd)
        self._fd = fd
        for old in log_files(path)[: -1 - self._keep]:
            with contextlib.suppress(OSError):
                os.remove(old)

    def start(self) -> None:
        """Start the periodic flush on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Every ``interval`` while records come (write or follow up, spool for the aggregates,
        mark the journal), and not at all while none do: an idle worker is not woken 20 times a second to
        find nothing to do. (A rotation another worker made while this one was idle is followed
        by the next record's :meth:`emit`, before it is written.)"""
        work = self._work
        while True:
            await work.wait()
            await asyncio.sleep(self._interval)
            work.clear()  # a record emitted from here on asks for another round
            try:
                if self.failing_since is None or time.monotonic() >= self._retry_at:
                    self.flush()
                # Spooled before their entries are marked done: a journal entry marked done is
                # a record the spool has (recovery hands the aggregates the others it finds in
                # the log, journal.recover's ``logged``).
                self._to_ledger()
                if self.journal is not None:
                    self.journal.sync()
            except Exception:  # never let the writer stop: every later record would be lost
                log.exception("request log writer")
            if self._lines or self._pending:  # unwritten: again (the outbox retries on its own)
                work.set()

    def _to_ledger(self) -> None:
        """Hand the round's records to the outbox: one batch, spooled at once (a worker killed
        while Redis hangs loses none of them), sent by the outbox's thread."""
        if self.outbox is not None and self._pending:
            pending, self._pending = self._pending, []
            self.outbox.add(pending)

    @property
    def failures(self) -> int:
        """Sends the aggregates' store refused or did not answer (tollway_ledger_write_failures_total)."""
        return self.outbox.failures if self.outbox is not None else 0

    @property
    def ledger_dropped(self) -> int:
        """Records given up before the aggregates took them (tollway_ledger_dropped_total): they
        could not be spooled and waited in memory past its bound, or at exit; the log has them."""
        return self.outbox.dropped if self.outbox is not None else 0

    async def close(self, ledger_timeout: float = 3.0) -> None:
        """Stop: write what waits; give the outbox up to ``ledger_timeout`` seconds for a last
        send (what Redis has not taken then stays in the spool, for the supervisor)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        if self.outbox is not None:
            self._to_ledger()
            await asyncio.get_running_loop().run_in_executor(None, self.outbox.close, ledger_timeout)
        if self._lines:
            self.dropped += len(self._lines)
            log.error("%d record(s) could not be written to %s (%s) before exit", len(self._lines), self._path,
                      self.last_error)
        if self.journal is not None:
            self.journal.sync()
            self.journal.close()
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)


class LedgerSender(Outbox):
    """The supervisor's outbox (:class:`~ext_proc.server.spool.Outbox`): the records it recovers
    from dead workers' journals (already in the log), spooled in ``directory`` (next to the log)
    and sent from a thread of its own, so the supervisor never waits on Redis; and, at
    :meth:`~ext_proc.server.spool.Outbox.adopt` and every ``rescan`` seconds after, the spools
    stopped processes left (batches Redis had not taken), taken over and sent from where they
    are. ``on_waiting``: see the outbox."""

    def __init__(self, ledger: Ledger, retry: float = RETRY, max_pending: int = MAX_PENDING,
                 directory: str | None = None, on_waiting: Callable[[int], None] | None = None,
                 rescan: float = RESCAN, budget: int | None = None) -> None:
        super().__init__(ledger, directory, retry=retry, max_pending=max_pending, what="recovered record(s)",
                         on_waiting=on_waiting, rescan=rescan, budget=budget)
