"""The spend aggregates' outbox: every record's counts reach Redis, once, even across a stop.

Theory of operation. With ``--redis`` each process (a worker, and the supervisor for the records
it recovers) has an :class:`Outbox`. Its owner hands it each round's records (:meth:`Outbox.add`,
off the request path: a worker's log writer does every 50 ms); they become a *batch*: a number
(``seq``, 1, 2, 3... in the order the batches come) and the records' counts added up per bucket
(:func:`~ext_proc.state.ledger.summed`, a few hundred bytes however many records share a bucket).
The batch is appended to the process's *spool* at once, one ``pwrite`` of one line, then a thread
of the outbox's own sends it. Each outbox is a *source* of batches, a random id
(:attr:`Outbox.source`) written in its spool's header.

Sending coalesces: each round sends everything waiting (up to :data:`SEND_RECORDS` records and
:data:`SEND_FIELDS` counters) in one Redis call (:meth:`~ext_proc.state.ledger.RedisLedger.add_summed`),
whose script adds each batch whose seq is above its source's high-water mark (one Redis key per
source), raises the mark and skips the others. So what came during a slow round trip goes in the
next one (an 80 ms Redis keeps up with any rate), and a group whose answer did not come (a
timeout: Redis may have carried it out) is sent again, in whatever grouping, with each batch
added once (within the mark's :data:`~ext_proc.state.ledger.SOURCE_TTL`, 30 days after the
source's last batch). Refused: sent again every :data:`RETRY` seconds.

The invariant the mark rests on: a source's batches are sent oldest first, so what Redis has of
a source is always the batches up to some seq, and no batch is ever sent after a later one of
its source was taken (it would be skipped: lost). Every path keeps it: a group is the oldest
batches not taken, in seq order, sent again from the same start after a failure; the batches
kept in memory (the spool full, a write that failed, no spool) are numbered as they come, under
the lock that spools them, and merged with the spooled ones in seq order (:meth:`Outbox._group`);
a batch given up (memory past its bound, at exit) leaves a gap, never a batch sent out of order;
a spool taken over is sent under its own source, from its taken offset on, by one sender only
(its lock); the supervisor's records (recovered from journals, or found in the log) are batches
of its own outbox, its own source.

The spool (``.<log name>.aggregates/<pid>-<hex>.aggregates``, next to the log, or in
``DIR/aggregates/`` with ``--state-dir DIR``, in a directory of its own, not the journals': the
previous release's journal recovery deletes every file it does not know in theirs; ``flock``-held by
its process as journals are) is a fixed header, then one line per batch, in order. Batches are sent
oldest first, so what Redis has taken is always a prefix: the header says where it ends (``taken``,
rewritten in place) and whose batches they are (the source). When everything is taken the file is
truncated to its header; when much is taken (:data:`COMPACT_AT`) and it is more than half the file,
the open part is copied to a new file renamed over it (with the same source). A write that fails is
undone (``ftruncate`` to the last whole line) and its batch waits in memory; so do batches past
:data:`MAX_SPOOL` bytes (a Redis outage of hours), and with a *budget* (``tollway serve
--spool-max``) past the budget of the whole directory: every spool in it, live and left by dead
processes, and compactions' copies. Each process looks at the directory's total (one ``listdir``)
whenever its spool would grow past what its last look allowed, and a look allows :data:`STEP` more
at most, so all the processes together pass the budget by a step (or one batch) each at most: a
bound a volume's size limit can be set above (:func:`directory_bytes`). What waits in memory is
bounded (:data:`MAX_PENDING` records: past it the oldest batches are given up) and given up at exit:
counted (:attr:`Outbox.dropped`, ``tollway_ledger_dropped_total``) and said at ERROR; the request
log holds those records.

Reading the spool back is streamed (:data:`READ_CHUNK` at a time, a group at most in memory),
from the sender thread only, under no lock the owner's :meth:`Outbox.add` takes.

A process that stops with batches Redis has not taken leaves its spool; one that dies leaves it
too. The supervisor, when it starts and whenever a worker dies (:meth:`Outbox.adopt`), and every
:data:`RESCAN` seconds (a process of the previous generation may stop after its look), has its
sender's thread take such spools over: it locks each (a live process holds its own), sends its
batches from the file under their source (read from its header; a spool of the release before
sources, whose batches carry ids, under their ids), notes its progress in its header and deletes it once
every batch is taken; a later recovery finds it locked and leaves it alone, so it is never sent
from twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ext_proc.server.journal import create_locked, private_directory, take_locked
from ext_proc.state.ledger import BatchKey, Ledger, Summed

log = logging.getLogger("tollway.spool")

SUFFIX = ".aggregates"
COMPACTING = SUFFIX + ".compact"  # a spool being rewritten (its original is whole until the rename)
MAX_SPOOL = 256 << 20  # bytes a process's spool may hold: past it new batches wait in memory only
STEP = 1 << 20  # with a budget (--spool-max): bytes a spool grows by between looks at its directory's total
LOOK_AGAIN = 1.0  # seconds: a spool refused by its directory's budget looks again no sooner
COMPACT_AT = 1 << 20  # bytes taken before the spool is rewritten with its open batches (once they are the lesser part)
MAX_PENDING = 100_000  # records waiting in memory (batches not spooled); past it the oldest are given up
SEND_RECORDS = 10_000  # records per Redis call at most (a batch is never larger)
SEND_FIELDS = 20_000  # counters per Redis call at most (about 1.5 us of Redis time each)
RETRY = 0.5  # seconds between sends while Redis refuses
READ_CHUNK = 256 << 10  # bytes read from a spool at a time
PUBLISH_EVERY = 1.0  # seconds between reports of the waiting count (on_waiting)
COMPACT_RETRY = 60.0  # seconds before a compaction that failed (or lacked the room) is tried again
RESCAN = 60.0  # seconds between the supervisor's sender's looks for spools stopped processes left
SOURCE_CHARS = 32  # a source id: 16 random bytes in hex
_HEADER = b'{"tollway_spool":2,"taken":%016d,"source":"%s"}\n'
HEADER_SIZE = len(_HEADER % (0, b"0" * SOURCE_CHARS))
_TAKEN_AT = _HEADER.index(b"%")  # where the taken offset's digits start
_SOURCE_AT = HEADER_SIZE - SOURCE_CHARS - 3  # where the source id starts
# A spool of the release before sources (its batches keyed by id): read, sent under their ids.
_V1 = b'{"tollway_spool":1,"taken":'
V1_HEADER_SIZE = len(_V1) + 16 + 2


def directory_for(log_path: str) -> str:
    """Where the spools of the processes writing ``log_path`` live (never matched by its rotation
    glob, nor read by any release's journal recovery)."""
    head, tail = os.path.split(os.path.abspath(log_path))
    return os.path.join(head, f".{tail}{SUFFIX}")


@dataclass(slots=True)
class Batch:
    """Records' counts on their way to the aggregates: its key ((source, seq); an id in a spool of
    the release before sources), how many records, their counts per bucket."""

    key: BatchKey
    records: int
    buckets: Summed
    fields: int
    end: int = 0  # a spooled batch: the offset just past its line

    @property
    def seq(self) -> int:
        return self.key[1] if isinstance(self.key, tuple) else 0


def _line(records: int, seq: int, body: bytes) -> bytes:
    """A batch's line: its record count first (:func:`_count`), its seq, its buckets (``body``,
    :func:`_body`)."""
    return b'{"n":%d,"s":%d,%b}\n' % (records, seq, body)


def _body(buckets: Summed) -> bytes:
    """A batch's buckets in its line: the five-part ones (``b``: each its five parts then its
    counts, as the release before writes and reads them, so a rollback sends a spool this release
    left whole), then the upstream ones (``u``: six parts then the counts; that release never
    reads them)."""
    five = orjson.dumps([[*bucket, counts] for bucket, counts in buckets.items() if len(bucket) == 5])
    six = orjson.dumps([[*bucket, counts] for bucket, counts in buckets.items() if len(bucket) != 5])
    return b'"b":%b,"u":%b' % (five, six)


def _parse(line: bytes, end: int, source: str | None) -> Batch | None:
    """The batch of a line of ``source``'s spool (None: the release before sources, keyed by id)."""
    try:
        item = orjson.loads(line)
        buckets = {tuple(row[:5]): row[5] for row in item["b"]}  # (a line the release before wrote: only these)
        buckets |= {tuple(row[:6]): row[6] for row in item.get("u", ())}
        key: BatchKey = (source, int(item["s"])) if source is not None else str(item["id"])
        return Batch(key, int(item["n"]), buckets, sum(len(c) for c in buckets.values()), end)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None


def _lines(fd: int, start: int, stop: int | None) -> Iterator[tuple[bytes, int]]:
    """The whole lines of the file from ``start`` to ``stop`` (None: its end), each with the
    offset just past it, read :data:`READ_CHUNK` at a time (a last line without its newline, the
    rest of a write that was cut, is left out)."""
    position, rest = start, b""
    while stop is None or position < stop:
        size = READ_CHUNK if stop is None else min(READ_CHUNK, stop - position)
        chunk = os.pread(fd, size, position)
        if not chunk:
            return
        position += len(chunk)
        data = rest + chunk if rest else chunk
        offset = position - len(data)
        begin = 0
        while True:
            newline = data.find(b"\n", begin)
            if newline < 0:
                break
            yield data[begin:newline + 1], offset + newline + 1
            begin = newline + 1
        rest = data[begin:]


def _header(fd: int) -> tuple[int, str | None] | None:
    """The header's taken offset and source (None: a spool of the release before sources, its
    batches keyed by id). A taken offset that cannot be read is the header's end: everything is
    sent again, each batch once (the source's high-water mark). None: no source can be read (no
    batch could be sent once)."""
    head = os.pread(fd, HEADER_SIZE, 0)
    if head.startswith(_V1):
        size = V1_HEADER_SIZE
        source = None
    elif head.startswith(_HEADER[:_TAKEN_AT]) and len(head) == HEADER_SIZE and head.endswith(b'"}\n'):
        size = HEADER_SIZE
        try:
            source = head[_SOURCE_AT:_SOURCE_AT + SOURCE_CHARS].decode("ascii")
            int(source, 16)
        except ValueError:
            return None
    else:
        return None
    try:
        return max(int(head[_TAKEN_AT:_TAKEN_AT + 16]), size), source
    except ValueError:
        return size, source


def _header_line(taken: int, source: str) -> bytes:
    return _HEADER % (taken, source.encode("ascii"))


def _mark(fd: int, taken: int) -> None:
    os.pwrite(fd, b"%016d" % taken, _TAKEN_AT)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(0, "short write")
        view, offset = view[written:], offset + written


def _create_locked(path: str, exclusive: bool = True) -> int:
    return create_locked(path, os.O_RDWR, exclusive)


def take(path: str) -> int | None:
    """The spool's descriptor (read and write), locked, if its process is gone (None: alive,
    taken over already, or replaced meanwhile)."""
    return take_locked(path, os.O_RDWR)


class Spool:
    """A process's own spool file (see the module docstring). Its writes are made under the
    outbox's lock; reads need none (the sender thread reads what is written already)."""

    def __init__(self, directory: str, source: str, cap: int = MAX_SPOOL, budget: int | None = None) -> None:
        private_directory(directory)
        self.path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
        self.fd = _create_locked(self.path)
        self.cap = cap
        self.budget = budget  # bytes the whole directory may hold (None: no budget, only the cap)
        self.allowed = cap if budget is None else 0  # it may grow to here without a look at the directory
        self._look_after = 0.0
        self.source = source  # its outbox's (in its header: a spool taken over is sent under it)
        try:
            _pwrite_all(self.fd, _header_line(HEADER_SIZE, source), 0)
        except OSError:
            self.close(unlink=True)
            raise
        self.size = self.taken = HEADER_SIZE
        self.records = 0  # records of the batches not taken yet
        self.full = False  # past the cap (said once per time)

    def append(self, line: bytes, records: int) -> bool:
        """Append a batch's line (False: past the cap or the directory's budget, or the write
        failed and was undone)."""
        end = self.size + len(line)
        if end > self.cap or (end > self.allowed and not self._room(end)):
            return False
        try:
            _pwrite_all(self.fd, line, self.size)
        except OSError:
            with contextlib.suppress(OSError):  # back to the last whole line (else the next write covers it)
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(line)
        self.records += records
        return True

    def _room(self, end: int) -> bool:
        """With a budget: whether the directory has room for the spool to grow to ``end`` (then
        it may grow a :data:`STEP` past it before it looks again); not asked again for
        :data:`LOOK_AGAIN` seconds after a no."""
        if self.budget is None:
            return False
        now = time.monotonic()
        if now < self._look_after:
            return False
        others = directory_bytes(os.path.dirname(self.path)) - self.size
        allowed = min(self.cap, self.budget - others, max(self.size + STEP, end))
        if end > allowed:
            self._look_after = now + LOOK_AGAIN
            return False
        self.allowed = allowed
        return True

    def shrunk(self) -> None:
        """The file is smaller (emptied, compacted): the room it gave up may be another's now."""
        self.allowed = min(self.allowed, self.size) if self.budget is not None else self.cap
        self._look_after = 0.0
        self.full = False

    def taken_to(self, end: int, records: int) -> None:
        """Redis took the batches up to ``end``: note it (the file emptied when nothing is left)."""
        self.taken, self.records = end, self.records - records
        if self.taken >= self.size:
            os.ftruncate(self.fd, HEADER_SIZE)  # first: a death before the header's update leaves nothing open
            self.size = self.taken = HEADER_SIZE
            self.shrunk()
        _mark(self.fd, self.taken)

    def close(self, unlink: bool) -> None:
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass
class Plan:
    """What a group takes once Redis has it: these batches in memory, this spool up to an
    offset, each spool taken over up to an offset (and whether that is its end)."""

    memory: set[BatchKey] = field(default_factory=set)
    spool: tuple[Spool, int, int] | None = None  # (spool, end, records)
    adopted: list[tuple[Adopted, int, int, bool]] = field(default_factory=list)  # (spool, end, records, whole)


@dataclass
class Adopted:
    """A stopped process's spool, taken over: sent from, then deleted."""

    path: str
    fd: int
    taken: int
    records: int
    source: str | None  # None: the release before sources (its batches keyed by id)


class Outbox:
    """Batches on their way to the spend aggregates (see the module docstring). :meth:`add`
    spools and never waits on the network (thread safe); a thread of its own sends.

    ``directory``: where the spool lives (None: none, batches wait in memory only);
    ``on_waiting``: told the records waiting, from the sender thread, when it (or :attr:`failures`
    or :attr:`dropped`) changes (at most every :data:`PUBLISH_EVERY` seconds, at once when nothing
    waits any more), and before a send when it changed: the one publisher of that count (only a
    change from what it was told last is told: a count published by anyone else could stay for
    good); ``rescan``: once :meth:`adopt`
    was called, look for spools stopped processes left again every ``rescan`` seconds (one
    ``listdir``; None: only when :meth:`adopt` is called)."""

    def __init__(self, ledger: Ledger, directory: str | None, *, retry: float = RETRY,
                 max_pending: int = MAX_PENDING, cap: int = MAX_SPOOL, what: str = "record(s)",
                 on_waiting: Callable[[int], None] | None = None, rescan: float | None = None,
                 budget: int | None = None) -> None:
        self._ledger = ledger
        self._directory = directory
        self._retry = retry
        self._max_pending = max_pending
        self._cap = min(cap, budget) if budget else cap  # a spool never holds more than the directory may
        self._budget = budget
        self._what = what
        self._on_waiting = on_waiting
        self._lock = threading.Lock()  # the spool's writes and the in-memory batches
        self._wake = threading.Event()
        self._spool: Spool | None = None  # made with the first batch
        self._spool_retry = 0.0  # when to try making it again after it could not be
        self._memory: deque[Batch] = deque()  # batches not spooled, oldest first
        self._memory_records = 0
        self._flying: set[BatchKey] = set()  # keys of in-memory batches in the send in flight
        self.source = secrets.token_hex(SOURCE_CHARS // 2)  # its batches' source (in its spool's header)
        self._seq = 0  # the last batch's number (in the order they are spooled or kept in memory)
        self._adopted: list[Adopted] = []
        self._adopt = False  # look for stopped processes' spools at the next round
        self._rescan = rescan
        self._next_scan: float | None = None  # when to look again (None: not adopting)
        self._unreadable: set[str] = set()  # spools whose header could not be read (said once)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._write_logged = 0.0
        self._compact_after = 0.0  # (monotonic) no compaction before: one failed or lacked the room
        self._published: tuple[int, int, int] | None = None  # (waiting, failures, dropped) told on_waiting last
        self._published_at = 0.0
        self._publish_failing = 0.0  # (monotonic) when publishing last failed and was logged (0: it works)
        self.failures = 0  # sends Redis refused or did not answer in time
        self.dropped = 0  # records given up: never in the aggregates (the request log has them)
        self.sent = 0  # records Redis took (each batch once)

    # -- the owner's side ---------------------------------------------------------------------

    def add(self, records: list[dict[str, Any]]) -> None:
        """Queue the records: counted per bucket, spooled (one write), sent by the thread. Never
        raises, never waits on the network."""
        if not records:
            return
        for start in range(0, len(records), SEND_RECORDS):
            chunk = records[start:start + SEND_RECORDS] if len(records) > SEND_RECORDS else records
            try:
                buckets = self._ledger.summed(chunk)
            except Exception:
                log.exception("counting %d %s for the spend aggregates", len(chunk), self._what)
                self.dropped += len(chunk)
                continue
            body = _body(buckets)
            with self._lock:
                if self._closed:
                    self.dropped += len(chunk)
                    log.error("%d %s came after the spend aggregates' sender stopped; the request log has them",
                              len(chunk), self._what)
                    continue
                # Numbered under the lock: the spool's lines and the batches in memory are in seq
                # order, and sent in it (the high-water mark skips a batch sent after a later one).
                self._seq += 1
                batch = Batch((self.source, self._seq), len(chunk), buckets, sum(len(c) for c in buckets.values()))
                line = _line(batch.records, self._seq, body)
                if not self._spooled(batch, line):
                    self._memory.append(batch)
                    self._memory_records += batch.records
                    self._bound()
                self._start()
        self._wake.set()

    def adopt(self) -> None:
        """Take over the spools stopped processes left (in the sender thread, soon: never waits)."""
        if self._directory is None:
            return
        with self._lock:
            if self._closed:
                return
            self._adopt = True
            self._start()
        self._wake.set()

    @property
    def waiting(self) -> int:
        """Records Redis has not taken yet (in memory, in this spool and in those taken over)."""
        with self._lock:
            return self._waiting()

    @property
    def spool_path(self) -> str | None:
        spool = self._spool
        return spool.path if spool is not None else None

    def close(self, timeout: float = 3.0) -> None:
        """Stop: one last try to send (for up to ``timeout`` seconds), then what Redis has not
        taken stays in the spool, for the supervisor (said in the log); what only memory held is
        given up, counted and said at ERROR. Spools taken over are let go (the next start takes
        them again, from where they were)."""
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._closed = True
            lost = self._memory_records
            self._memory.clear()
            self._memory_records = 0
            if lost:
                self.dropped += lost
                log.error("%d %s never reached the spend aggregates (Redis did not take them before exit, and they "
                          "could not be spooled); the request log has them", lost, self._what)
            spool, self._spool = self._spool, None
            if spool is not None:
                if spool.records:
                    log.warning("%d %s Redis has not taken are kept in %s: the supervisor sends them when the "
                                "service starts again (or restarts a worker)", spool.records, self._what, spool.path)
                spool.close(unlink=not spool.records)
            for adopted in self._adopted:
                with contextlib.suppress(OSError):
                    os.close(adopted.fd)
            self._adopted = []

    # -- under the lock -------------------------------------------------------------------------

    def _spooled(self, batch: Batch, line: bytes) -> bool:
        spool = self._spool
        if spool is None and self._directory is not None and time.monotonic() >= self._spool_retry:
            try:
                spool = self._spool = Spool(self._directory, self.source, self._cap, self._budget)
            except OSError as exc:
                self._spool_retry = time.monotonic() + 10
                log.error("cannot keep a spool for the spend aggregates in %s (%s): records Redis has not taken "
                          "when this process stops are lost to them", self._directory, exc.strerror or exc)
        if spool is None:
            return False
        try:
            if spool.append(line, batch.records):
                return True
            if not spool.full:
                spool.full = True
                bound = (f"{spool.cap} bytes" if spool.budget is None else
                         f"{spool.cap} bytes, or its directory's {spool.budget} (--spool-max)")
                log.error("the spend aggregates' spool %s is at its bound (%s): new batches wait in memory "
                          "(up to %d records; past that the oldest are given up, counted in "
                          "tollway_ledger_dropped_total; the request log has them)", spool.path, bound,
                          self._max_pending)
            return False
        except OSError as exc:
            now = time.monotonic()
            if now - self._write_logged >= 10:
                self._write_logged = now
                log.error("cannot write the spend aggregates' spool %s (%s): batches wait in memory meanwhile",
                          spool.path, exc.strerror or exc)
            return False

    def _bound(self) -> None:
        """At most ``max_pending`` records in memory: the oldest batches not in flight go."""
        if self._memory_records <= self._max_pending:
            return
        kept: deque[Batch] = deque()
        for batch in self._memory:
            if self._memory_records > self._max_pending and batch.key not in self._flying:
                self._memory_records -= batch.records
                self.dropped += batch.records
                log.error("%d %s waiting for the spend aggregates dropped (more than %d wait in memory); the "
                          "request log has them", batch.records, self._what, self._max_pending)
            else:
                kept.append(batch)
        self._memory = kept

    def _waiting(self) -> int:
        spool = self._spool
        return (self._memory_records + (spool.records if spool is not None else 0)
                + sum(adopted.records for adopted in self._adopted))

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tollway-aggregates", daemon=True)
            self._thread.start()

    # -- the sender thread ----------------------------------------------------------------------

    def _run(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                if self._adopt or (self._next_scan is not None and time.monotonic() >= self._next_scan):
                    self._adopt = False
                    if self._rescan is not None:
                        self._next_scan = time.monotonic() + self._rescan
                    self._take_over()
                group, plan = self._group()
            except Exception:  # never let the thread stop: later batches would wait forever
                log.exception("reading the batches waiting for the spend aggregates")
                group, plan = [], None
            if group:
                self._publish()  # (what waits, the group in flight included: a send may take a while)
                try:
                    self._ledger.add_summed([(batch.key, batch.buckets) for batch in group])
                except Exception as exc:
                    self.failures += 1
                    if failing_since is None:
                        failing_since = time.monotonic()
                    if self.failures == 1 or self.failures % 20 == 0:
                        log.warning("the spend aggregates (Redis) refused %d %s (%s; %d time(s) so far): %s, sent "
                                    "again every %.1f s", sum(b.records for b in group), self._what,
                                    type(exc).__name__, self.failures,
                                    "spooled" if self._spool is not None or self._adopted else "kept in memory",
                                    self._retry)
                    with self._lock:
                        self._flying = set()
                    self._publish()
                    if self._closing or self._closed:
                        return
                    deadline = time.monotonic() + self._retry
                    while not (self._closing or self._closed) and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                        self._wake.clear()
                    continue
                if failing_since is not None:
                    log.warning("the spend aggregates (Redis) take records again after %.1f s",
                                time.monotonic() - failing_since)
                    failing_since = None
            if plan is not None:
                try:
                    self._done(group, plan)
                except Exception:
                    log.exception("noting the batches the spend aggregates took")
            self._publish()
            if self._closed:
                return
            if not group:
                if self._closing:
                    return
                stale = self._on_waiting is not None and \
                    self._published != (self.waiting, self.failures, self.dropped)
                timeout = PUBLISH_EVERY if stale else None  # (a change not published yet: soon)
                if self._next_scan is not None:  # (and the next look for stopped processes' spools)
                    scan = max(self._next_scan - time.monotonic(), 0.0)
                    timeout = scan if timeout is None else min(timeout, scan)
                self._wake.wait(timeout)
                self._wake.clear()

    def _publish(self) -> None:
        """Tell ``on_waiting`` the records waiting, when that or the failures or the records
        given up changed (its owner publishes those too, read then: at most every second, and at
        once when nothing waits any more)."""
        if self._on_waiting is None or self._closed:
            return
        waiting, now = self.waiting, time.monotonic()
        state = (waiting, self.failures, self.dropped)
        if state != self._published and (now - self._published_at >= PUBLISH_EVERY or not waiting):
            self._published, self._published_at = state, now
            try:
                self._on_waiting(waiting)
            except Exception:
                self._published = None  # told again at the next round (a second on)
                if now - self._publish_failing >= 60:  # logged once a minute while it fails (a full disk)
                    self._publish_failing = now
                    log.exception("publishing the records waiting for the spend aggregates")
            else:
                self._publish_failing = 0.0

    def _group(self) -> tuple[list[Batch], Plan | None]:
        """What to send this round: this process's batches (in memory and in its spool, merged in
        seq order: a batch kept in memory while the spool was full or failed comes between
        spooled ones), then those of the spools taken over (each in its order), oldest first, up
        to the call's bounds (one batch at least); and the plan of what to mark taken once Redis
        has them (None: nothing to do). A source's batches in a group are always the oldest it
        has not had taken, in order: the high-water mark never skips one that was not added."""
        group: list[Batch] = []
        records = fields = 0
        full = False
        plan = Plan()

        def room(batch: Batch) -> bool:
            return not group or (records + batch.records <= SEND_RECORDS and fields + batch.fields <= SEND_FIELDS)

        def add(batch: Batch) -> bool:
            nonlocal records, fields, full
            if not room(batch):
                full = True
                return False
            group.append(batch)
            records, fields = records + batch.records, fields + batch.fields
            return True

        def from_memory(before: int | None) -> None:
            """The batches in memory numbered below ``before`` (None: all), while there is room."""
            while memory and (before is None or memory[0].seq < before) and add(memory[0]):
                plan.memory.add(memory.popleft().key)

        def read(fd: int, start: int, stop: int | None, path: str, source: str | None,
                 own: bool = False) -> tuple[int, int]:
            """Add the batches of a spool from ``start`` to the group while there is room (its
            own: the batches in memory numbered before each first); where the reading stopped,
            and the records added."""
            end, count = start, 0
            for line, at in _lines(fd, start, stop):
                batch = _parse(line, at, source)
                if batch is None:  # (a write is undone when it fails: never expected)
                    log.error("an unreadable line in the spend aggregates' spool %s skipped", path)
                    end = at
                    continue
                if own:
                    from_memory(batch.seq)
                if full or not add(batch):
                    break
                end, count = at, count + batch.records
            return end, count

        with self._lock:
            if self._closed:
                return [], None
            memory = deque(self._memory)
            self._flying = {batch.key for batch in memory}  # (not given up meanwhile: narrowed below)
            spool = self._spool
            own = (spool, spool.fd, spool.taken, spool.size) if spool is not None else None
            adopted = list(self._adopted)
        if own is not None and own[2] < own[3]:
            spool, fd, start, stop = own
            end, count = read(fd, start, stop, spool.path, spool.source, own=True)
            if end > start:
                plan.spool = (spool, end, count)
        if not full:
            from_memory(None)  # (newer than every batch the spool had at the look)
        with self._lock:
            self._flying = set(plan.memory)
        for item in adopted:
            if full:
                break
            end, count = read(item.fd, item.taken, None, item.path, item.source)
            plan.adopted.append((item, end, count, not full))  # not full: read to its end
        if not group and plan.spool is None and not plan.adopted:
            return [], None
        return group, plan

    def _done(self, group: list[Batch], plan: Plan) -> None:
        """Redis took the group: forget its batches (memory), move the spools' marks."""
        self.sent += sum(batch.records for batch in group)
        compact = None
        with self._lock:
            if self._closed:
                return
            sent = plan.memory
            if sent:
                kept: deque[Batch] = deque()
                for batch in self._memory:
                    if batch.key in sent:
                        self._memory_records -= batch.records
                    else:
                        kept.append(batch)
                self._memory = kept
            self._flying = set()
            if plan.spool is not None:
                spool, end, count = plan.spool
                if spool is self._spool:
                    try:
                        spool.taken_to(end, count)
                    except OSError as exc:
                        log.error("cannot mark batches taken in the spend aggregates' spool %s (%s): if this process "
                                  "stops now, they are sent again (and added once)", spool.path, exc.strerror)
                    if spool.taken >= COMPACT_AT and spool.taken - HEADER_SIZE > spool.size - spool.taken \
                            and time.monotonic() >= self._compact_after:
                        compact = spool
        self._finish_adopted(plan.adopted)
        if compact is not None:
            self._compact(compact)

    def _finish_adopted(self, progress: list[tuple[Adopted, int, int, bool]]) -> None:
        """Note how far each spool taken over is sent; delete those sent whole (read to their
        end: a last line cut by its process's death, never whole, is no batch)."""
        for item, end, count, at_end in progress:
            item.taken, item.records = end, max(item.records - count, 0)
            try:
                if at_end:
                    os.unlink(item.path)
                else:
                    _mark(item.fd, end)
            except OSError as exc:
                log.error("cannot note the progress in the spend aggregates' spool %s (%s)", item.path,
                          exc.strerror)
                continue
            if at_end:
                with self._lock:
                    if item in self._adopted:
                        self._adopted.remove(item)
                with contextlib.suppress(OSError):
                    os.close(item.fd)
                log.info("the spend aggregates have every record of %s now: deleted", os.path.basename(item.path))

    def _compact(self, spool: Spool) -> None:
        """Rewrite the spool with its open batches only (a new file renamed over it): the bulk
        copied without the lock, what came meanwhile under it. Not begun without the room for
        the copy (and a chunk more) on the file system; failed or not begun, not tried again for
        :data:`COMPACT_RETRY` seconds (a full disk: not after every send)."""
        self._compact_after = time.monotonic() + COMPACT_RETRY  # (moved back to 0 once it succeeds)
        temporary = spool.path[: -len(SUFFIX)] + COMPACTING
        needed = spool.size - spool.taken + HEADER_SIZE + READ_CHUNK
        try:
            stat = os.statvfs(os.path.dirname(spool.path))
            free = stat.f_bavail * stat.f_frsize
            if spool.budget is not None:  # (a volume's size limit is not the file system's free space)
                free = min(free, spool.budget - directory_bytes(os.path.dirname(spool.path)))
        except OSError:
            free = needed
        if free < needed:
            log.warning("the spend aggregates' spool %s is not compacted: %d bytes free, the copy needs %d (no room; "
                        "tried again in %.0f s)", spool.path, free, needed, COMPACT_RETRY)
            return
        try:
            fd = _create_locked(temporary, exclusive=False)
        except OSError as exc:
            log.error("cannot compact the spend aggregates' spool %s (%s): tried again in %.0f s", spool.path,
                      exc.strerror, COMPACT_RETRY)
            return
        try:
            _pwrite_all(fd, _header_line(HEADER_SIZE, spool.source), 0)
            start, stop = spool.taken, spool.size
            at = HEADER_SIZE
            at = _copy(spool.fd, start, stop, fd, at)
            with self._lock:
                if self._closed or spool is not self._spool:
                    raise OSError(0, "closed meanwhile")
                at = _copy(spool.fd, stop, spool.size, fd, at)
                os.rename(temporary, spool.path)
                old, spool.fd, spool.size, spool.taken = spool.fd, fd, at, HEADER_SIZE
                spool.shrunk()
            os.close(old)  # (the old file's pages are freed here: not under the lock)
            self._compact_after = 0.0
        except OSError as exc:
            if exc.errno:
                log.error("cannot compact the spend aggregates' spool %s (%s): tried again in %.0f s", spool.path,
                          exc.strerror, COMPACT_RETRY)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            os.close(fd)

    def _take_over(self) -> None:
        """Lock the spools of processes that are gone and send from them (see the module docstring)."""
        directory = self._directory
        assert directory is not None
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        with self._lock:
            held = {item.path for item in self._adopted}
            if self._spool is not None:
                held.add(self._spool.path)
        for name in names:
            path = os.path.join(directory, name)
            if path in held or not name.endswith((SUFFIX, COMPACTING)):
                continue
            fd = take(path)
            if fd is None:
                continue
            if name.endswith(COMPACTING):  # a compaction that never finished: its spool is whole
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(fd)
                continue
            try:
                header = _header(fd)
                if header is None and os.fstat(fd).st_size < HEADER_SIZE:
                    # Cut while its first header was written (a crash at its start): it holds no batch.
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    os.close(fd)
                    continue
                if header is None:
                    if path not in self._unreadable:
                        self._unreadable.add(path)
                        log.error("the spend aggregates' spool %s has no readable header (its source): left as it "
                                  "is, not sent (its batches could not be added once each)", path)
                    os.close(fd)
                    continue
                taken, source = header
                records = 0
                for line, _ in _lines(fd, taken, None):
                    records += _count(line)
            except OSError as exc:
                log.error("cannot read the spend aggregates' spool %s (%s)", path, exc.strerror)
                os.close(fd)
                continue
            if not records:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(fd)
                continue
            log.warning("%d record(s) a stopped process had not added to the spend aggregates are on their way "
                        "(%s)", records, name)
            with self._lock:
                if self._closed:
                    os.close(fd)
                    return
                self._adopted.append(Adopted(path, fd, taken, records, source))


def directory_bytes(directory: str) -> int:
    """The bytes of the files in ``directory`` (what a volume's size limit counts of it)."""
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def _count(line: bytes) -> int:
    """A batch line's record count (its first field), without parsing the rest."""
    if line.startswith(b'{"n":'):
        comma = line.find(b",", 5)
        with contextlib.suppress(ValueError):
            return int(line[5:comma])
    return 0


def _copy(source: int, start: int, stop: int, target: int, at: int) -> int:
    """Copy bytes [start, stop) of ``source`` to ``target`` at ``at``, a chunk at a time; the new end."""
    while start < stop:
        chunk = os.pread(source, min(READ_CHUNK, stop - start), start)
        if not chunk:
            break
        _pwrite_all(target, chunk, at)
        start, at = start + len(chunk), at + len(chunk)
    return at
