"""The aggregates' spool: a record in the request log is never missing from the spend aggregates for good.

Theory of operation. With ``--redis`` every worker adds its records to the spend aggregates
(:class:`~ext_proc.state.ledger.RedisLedger`) in batches, each under an id that makes Redis add it
once (its mark lives :data:`~ext_proc.state.ledger.BATCH_TTL`, a day). A batch Redis has not taken
yet (down, hung, failing over) waits and is sent again; a process that stops meanwhile (a rollout,
a restart, a crash) would lose it, and ``tollway report --redis``, ``/v1/report`` and the
dashboard would read less than the log for good. So an :class:`Outbox` appends each batch to its
process's spool *before* sending it (one ``write`` per batch, to the page cache, off the request
path), marks it taken once Redis has answered it, and truncates the spool whenever nothing waits.

Each process holds an exclusive ``flock`` on its spool while it lives (as on its journal: they
share the directory next to the log, ``.<log name>.inflight/``), so a spool nobody holds belongs
to a process that is gone. :func:`recover` (run by the supervisor when it starts and whenever a
worker dies, with the journals' recovery) hands each such spool's open batches, with their ids, to
the supervisor's own outbox, which spools them itself before the dead spool is deleted. A batch
keeps its id through all this, so one Redis took before its process could mark it adds nothing the
second time (within the day its mark lives).

Bounds. At most ``max_pending`` records wait in memory; past it the oldest batches leave memory
but stay in the spool (``spilled``) and are read back once those in memory are sent. What cannot be
kept (no spool: the log is not a regular file, or the spool cannot be written) and is given up
(past the bound, or at exit) is counted in :attr:`Outbox.dropped` (``tollway_ledger_dropped_total``)
and logged at ERROR: the request log still holds those records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ext_proc.server.journal import create_locked, directory_for, take
from ext_proc.state.ledger import Ledger

log = logging.getLogger("tollway.spool")

SUFFIX = ".aggregates"
MAX_PENDING = 100_000  # records waiting for the aggregates in memory (the spool holds the rest)
RETRY = 0.5  # seconds between sends while the aggregates refuse
Batch = tuple[str, list[dict[str, Any]]]  # (id, records)


class Spool:
    """One process's spool (see the module docstring): the batches the aggregates have not taken."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
        self._fd = create_locked(self.path)
        self.open: dict[str, int] = {}  # batch id -> its records, spooled and not taken yet
        self._size = 0
        self.errors = 0

    def add(self, batch_id: str, lines: list[bytes]) -> bool:
        """Spool a batch (its records' JSON, each without its newline): True once it is written."""
        data = b'{"batch":' + orjson.dumps(batch_id) + b',"records":[' + b",".join(lines) + b"]}\n"
        if not self._write(data):
            return False
        self.open[batch_id] = len(lines)
        return True

    def taken(self, batch_id: str) -> None:
        """The aggregates took the batch: mark it (or empty the spool, when nothing else waits)."""
        if self.open.pop(batch_id, None) is None:
            return
        if not self.open:
            try:
                os.ftruncate(self._fd, 0)
                self._size = 0
                return
            except OSError:
                pass
        self._write(orjson.dumps({"taken": [batch_id]}, option=orjson.OPT_APPEND_NEWLINE))

    def batches(self) -> Iterator[Batch]:
        """The spooled batches still open, oldest first (read back from the file)."""
        with open(self.path, "rb") as handle:
            for batch_id, records in read(handle):
                if batch_id in self.open:
                    yield batch_id, records

    def close(self) -> None:
        """Delete the spool when nothing waits, else leave it to :func:`recover`."""
        if not self.open:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)

    def _write(self, data: bytes) -> bool:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.errors += 1
            log.error("cannot write the spend aggregates' spool %s (%s)", self.path, exc.strerror or exc)
            with contextlib.suppress(OSError):  # a torn line is skipped on reading; end it so the next one is not
                os.write(self._fd, b"\n")
            return False
        self._size += len(data)
        return True


def read(handle: Any) -> Iterator[Batch]:
    """A spool's batches not marked taken, oldest first (a torn line is skipped, said at ERROR)."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for line in handle:
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                log.error("a torn batch in the spend aggregates' spool %s: its records are not added to the "
                          "aggregates (the request log has them)", getattr(handle, "name", "?"))
            continue
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("batch"), str) and isinstance(item.get("records"), list):
            batches[item["batch"]] = item["records"]
        for batch_id in item.get("taken", ()):
            batches.pop(batch_id, None)
    yield from batches.items()


class Outbox:
    """Batches on their way to the spend aggregates, oldest first, each spooled before it is sent
    (when there is a ``directory`` for the spool) and kept until the aggregates take it. Thread
    safe: :meth:`add` never waits on the network; :meth:`send` does (one thread at a time)."""

    def __init__(self, ledger: Ledger, directory: str | None, max_pending: int = MAX_PENDING,
                 what: str = "record(s)") -> None:
        self._ledger = ledger
        self._directory = directory
        self._max_pending = max_pending
        self._what = what
        self._spool: Spool | None = None  # made with the first batch
        self._spool_retry = 0.0  # when to try making it again after it could not be
        self._batches: list[Batch] = []  # in memory, oldest first
        self._lock = threading.Lock()
        self.spilled = 0  # records of batches only the spool holds (past the bound)
        self.failures = 0  # sends the aggregates refused or did not answer in time
        self.dropped = 0  # records given up: never in the aggregates (the request log has them)
        self.retry_at = 0.0  # monotonic: no new send before (after a failed one)

    @property
    def spool(self) -> Spool | None:
        return self._spool

    @property
    def waiting(self) -> int:
        """Records the aggregates have not taken yet (in memory and spilled)."""
        with self._lock:
            return sum(len(batch) for _, batch in self._batches) + self.spilled

    def add(self, records: list[dict[str, Any]], lines: list[bytes] | None = None, batch_id: str | None = None) -> bool:
        """Queue a batch (``lines``: its records' JSON, when at hand; ``batch_id``: a batch sent
        before, under its id). True when it is spooled."""
        if not records:
            return True
        batch_id = batch_id or secrets.token_hex(8)
        if lines is None:
            lines = [orjson.dumps(record) for record in records]
        else:
            lines = [line.rstrip(b"\n") for line in lines]
        with self._lock:
            spool = self._open_spool()
            durable = spool is not None and spool.add(batch_id, lines)
            self._batches.append((batch_id, records))
            self._bound()
        return durable

    def send(self) -> bool:
        """Send the waiting batches, oldest first, until one fails; True when none is left."""
        while True:
            with self._lock:
                if not self._batches and not self._reload():
                    return True
                batch_id, batch = self._batches[0]
            try:
                self._ledger.add(batch, batch_id)
            except Exception as exc:
                self.failures += 1
                self.retry_at = time.monotonic() + RETRY
                if self.failures == 1 or self.failures % 20 == 0:
                    spool = self._spool
                    log.warning("the spend aggregates refused %d %s (%s; %d time(s) so far): %s, sent again",
                                len(batch), self._what, type(exc).__name__, self.failures,
                                "spooled" if spool is not None and batch_id in spool.open else
                                "kept in memory")
                return False
            with self._lock:
                if self._batches and self._batches[0][0] == batch_id:  # not dropped meanwhile
                    self._batches.pop(0)
                if self._spool is not None:
                    self._spool.taken(batch_id)

    def close(self) -> None:
        """Stop: what waits stays in the spool for the next start (said in the log); what only
        memory held is given up, counted and said at ERROR."""
        with self._lock:
            spool = self._spool
            kept = {batch_id for batch_id, _ in self._batches if spool is not None and batch_id in spool.open}
            lost = sum(len(batch) for batch_id, batch in self._batches if batch_id not in kept)
            spooled = sum(spool.open.values()) if spool is not None else 0
            self._batches = []
            self.spilled = 0
            if lost:
                self.dropped += lost
                log.error("%d %s never reached the spend aggregates (Redis did not take them before exit, and "
                          "they could not be spooled); the request log has them", lost, self._what)
            if spool is not None:
                if spooled:
                    log.warning("%d %s not in the spend aggregates yet (Redis did not take them before exit) are "
                                "kept in %s: they are added when the service starts again", spooled, self._what,
                                spool.path)
                spool.close()
                self._spool = None

    def _open_spool(self) -> Spool | None:
        if self._spool is None and self._directory is not None and time.monotonic() >= self._spool_retry:
            try:
                self._spool = Spool(self._directory)
            except OSError as exc:
                self._spool_retry = time.monotonic() + 10
                log.error("cannot keep a spool for the spend aggregates in %s (%s): records Redis has not taken "
                          "when this process stops are lost to them", self._directory, exc.strerror or exc)
        return self._spool

    def _bound(self) -> None:
        """At most ``max_pending`` records in memory: the oldest batches leave it (spooled: spilled,
        read back later; else given up, counted)."""
        waiting = sum(len(batch) for _, batch in self._batches)
        while waiting > self._max_pending and len(self._batches) > 1:
            batch_id, batch = self._batches.pop(0)
            waiting -= len(batch)
            if self._spool is not None and batch_id in self._spool.open:
                if not self.spilled:
                    log.warning("more than %d %s wait for the spend aggregates: the oldest wait in the spool %s "
                                "only", self._max_pending, self._what, self._spool.path)
                self.spilled += len(batch)
            else:
                self.dropped += len(batch)
                log.error("%d %s waiting for the spend aggregates dropped (more than %d wait, and they could not "
                          "be spooled); the request log has them", len(batch), self._what, self._max_pending)

    def _reload(self) -> bool:
        """Memory is empty: read back the oldest spilled batches (True when some were)."""
        spool = self._spool
        if not self.spilled or spool is None:
            return False
        loaded: list[Batch] = []
        count = left = 0
        try:
            for batch_id, records in spool.batches():
                if count < self._max_pending:
                    loaded.append((batch_id, records))
                    count += len(records)
                else:
                    left += len(records)
        except OSError as exc:
            log.error("cannot read the spend aggregates' spool %s back (%s)", spool.path, exc.strerror or exc)
            return False
        self._batches = loaded
        self.spilled = left
        return bool(loaded)


def recover(log_path: str, add: Callable[..., bool]) -> int:
    """Hand the open batches of the spools of gone processes (next to ``log_path``) to ``add``
    (``add(records, batch_id=...)``: :meth:`Outbox.add`, or the supervisor's sender's), under their
    ids; delete each spool once ``add`` has spooled all of its batches (else it is kept, and sent
    again, under the same ids, at the next recovery). Returns the records handed on."""
    directory = directory_for(log_path)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return 0
    handed = 0
    for name in names:
        if not name.endswith(SUFFIX):
            continue
        path = os.path.join(directory, name)
        fd = take(path)  # None: its process lives (this one's own spool too)
        if fd is None:
            continue
        try:
            with os.fdopen(os.dup(fd), "rb") as handle:
                batches = list(read(handle))
            kept = [add(records, batch_id=batch_id) for batch_id, records in batches]
            handed += sum(len(records) for _, records in batches)
            if all(kept):
                os.unlink(path)
            else:
                log.error("the spool %s could not be taken over whole: kept, and sent again at the next recovery",
                          path)
            if batches:
                log.warning("%d record(s) a stopped process had not added to the spend aggregates are on their way "
                            "(%s)", sum(len(records) for _, records in batches), name)
        except OSError as exc:
            log.error("cannot read the spend aggregates' spool %s (%s)", path, exc.strerror or exc)
        finally:
            os.close(fd)
    return handed
