"""The write-ahead journal: a request a provider saw is never missing from the request log.

Theory of operation. A request's record is written when its response ends
(:class:`~ext_proc.server.records.RecordWriter`). If the worker serving it dies first (killed,
out of memory, a crash), Envoy fails the request closed, but the provider may have it already:
without more, the record would be lost. So when the session lets a request go upstream it also
emits the record the request gets if nothing more is ever heard of it
(:class:`~ext_proc.core.actions.Forwarded`: outcome ``incomplete``, error
``service_interrupted``, the input tokens estimated, the output unknown), and the worker appends
it to its own journal file *before* Envoy has the answer that sends the request on: one small
``write`` to the page cache, which outlives the process. Once the request's real record is in
the log, its entry is closed; a line every 50 ms marks the entries closed meanwhile.

Each worker holds an exclusive ``flock`` on its journal for as long as it lives, so a journal
nobody holds belongs to a dead process. :func:`recover` (run by the supervising parent when it
starts and whenever a worker dies) takes every such journal, and appends to the log the
entries not marked done, except those whose record is in the log after all (the worker died
between writing a record and marking it: the log is searched from where it stood when the entry
was written; those records go to the spend aggregates, which the worker had not handed them
to yet), each marked ``"recovered": true``; then it deletes the journal. So every request
that reached a provider is in the log exactly once (a log that is a regular file), whichever
process died when.

A journal is rewritten with only its open entries once it passes ``COMPACT_AT`` bytes, and
deleted when its worker stops with nothing open. Journals live next to the log, in a hidden
directory (``.<log name>.inflight/``), or in ``DIR/inflight/`` with ``--state-dir DIR``
(:mod:`ext_proc.server.state_dir`), the only place they have when the log is no regular file
(stdout, a device). Such a log cannot be searched: :func:`recover` writes every open entry
(a worker killed after writing a record and before its round marked the entry done, within a
round of 50 ms, has that request twice in the log: its own record, then one with
``"recovered": true`` and the same ``request_id``; at least once, never missing). A journal that
cannot be written (the disk is full) is counted and logged, and the request goes on: the
journal guards against a crash, it must not become one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.ledger.log import log_files

log = logging.getLogger("tollway.journal")

COMPACT_AT = 1 << 20  # bytes: rewrite the journal with its open entries only
SUFFIX = ".journal"
Position = tuple[int, int] | None  # (inode, size) of the request log when an entry was written


def directory_for(log_path: str) -> str:
    """Where the journals of the workers writing ``log_path`` live (never matched by its rotation glob)."""
    head, tail = os.path.split(os.path.abspath(log_path))
    return os.path.join(head, f".{tail}.inflight")


def private_directory(path: str) -> None:
    """Make ``path`` (and its parents) if missing, 0700: journals and spools hold what requests
    were made, by whom; one that exists wider (made by hand, a volume's root) is narrowed."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = os.stat(path).st_mode
    if mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:  # another user's: used as it is, and said
            log.warning("cannot narrow %s (mode %o) to 0700: %s", path, mode & 0o777, exc.strerror)


class Journal:
    """One worker's journal (see the module docstring); ``position`` tells where the log stands."""

    def __init__(self, directory: str, position: Callable[[], Position]) -> None:
        private_directory(directory)
        self.path = os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
        self._fd = _create_locked(self.path)
        self._position = position
        self._open: dict[str, list[bytes]] = {}  # request id -> its open entries (usually one)
        self._closed: list[str] = []  # closed since the last sync(): their done line is not written yet
        self._size = 0
        self.errors = 0  # writes that failed (the requests went on regardless)
        self._logged = 0.0

    def started(self, record: dict[str, Any]) -> None:
        """Note a request going upstream, with the record it gets if it is never heard of again."""
        request_id = record.get("request_id")
        if not isinstance(request_id, str):
            return
        line = orjson.dumps({"started": record, "log": self._position()}, option=orjson.OPT_APPEND_NEWLINE)
        self._open.setdefault(request_id, []).append(line)
        self._write(line)

    def done(self, ids: Iterable[str | None]) -> None:
        """These requests' records are in the log now (or given up on): their entries are closed
        (marked so in the journal at the next :meth:`sync`)."""
        entries = self._open
        for request_id in ids:
            if request_id is None:
                continue
            lines = entries.get(request_id)
            if lines is None:
                continue
            lines.pop(0)
            if not lines:
                del entries[request_id]
            self._closed.append(request_id)

    def sync(self) -> None:
        """Mark the entries closed since the last call (one line), and compact a long journal.
        (An entry whose mark is not written yet is found in the log by :func:`recover`.)"""
        if not self._closed:
            return
        closed, self._closed = self._closed, []
        self._write(orjson.dumps({"done": closed}, option=orjson.OPT_APPEND_NEWLINE))
        if self._size > COMPACT_AT:
            self._compact()

    @property
    def open(self) -> int:
        """Entries whose record is not in the log yet."""
        return sum(len(lines) for lines in self._open.values())

    def close(self) -> None:
        """The worker stops: delete the journal when nothing is open, else leave it to :func:`recover`."""
        if not self._open:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        else:
            log.warning("%d request(s) have no record in the log yet; their journal %s is left for recovery",
                        self.open, self.path)
        os.close(self._fd)

    def _write(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)
            self._size += written
            if written != len(data):
                raise OSError(0, "short write")
        except OSError as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._logged > 10:
                self._logged = now
                log.error("cannot write the journal %s (%s): a request in flight when this worker dies may "
                          "miss its record", self.path, exc.strerror or exc)

    def _compact(self) -> None:
        """Rewrite the journal with only its open entries (atomically: a new file renamed over it)."""
        temporary = self.path + ".compact"
        try:
            fd = _create_locked(temporary, exclusive=False)
        except OSError as exc:
            self.errors += 1
            log.error("cannot compact the journal %s: %s", self.path, exc.strerror)
            return
        data = b"".join(line for lines in self._open.values() for line in lines)
        try:
            _write_all(fd, data)
            os.rename(temporary, self.path)
        except OSError as exc:
            self.errors += 1
            log.error("cannot compact the journal %s: %s", self.path, exc.strerror)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return
        os.close(self._fd)
        self._fd, self._size = fd, len(data)


def create_locked(path: str, mode: int, exclusive: bool = True) -> int:
    """A new file (``mode``: its access flags), 0600, locked for as long as this process holds it:
    a file nobody holds belongs to a process that is gone (journals, and the aggregates' spools)."""
    fd = os.open(path, mode | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _create_locked(path: str, exclusive: bool = True) -> int:
    return create_locked(path, os.O_WRONLY | os.O_APPEND, exclusive)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@dataclass
class Recovered:
    """What :func:`recover` did: journals taken over, records written, entries found in the log anyway."""

    journals: int = 0
    written: int = 0
    logged_anyway: int = 0
    failed: int = 0  # journals kept for the next time (the log could not be written)


def recover(log_path: str | None, add: Callable[[list[dict[str, Any]]], None] | None = None,
            logged: Callable[[list[dict[str, Any]]], None] | None = None,
            directory: str | None = None) -> Recovered:
    """Take over the journals of dead workers writing ``log_path`` (see the module docstring).

    ``log_path`` None: the log is this process's stdout. ``directory``: where the journals are
    (``--state-dir``; default: next to the log). A log that is no regular file (stdout, a device)
    is not searched: every open entry is written to it (at least once, never missing).

    ``add`` also gets the records written (the metrics, and the spend aggregates, which retry on
    their own: the journal is deleted once the log has its records, whatever ``add`` does).
    ``logged`` gets the records found in the log whose entries were not marked done (as the log
    has them; they are not written again): the worker died within a round of writing them, before
    handing them to the spend aggregates' spool, which it does before it marks them (a death in
    the microseconds between the two has them counted twice in the aggregates). Safe to run
    while live workers write: their journals are locked and left alone.
    """
    result = Recovered()
    if directory is None:
        if log_path is None:
            return result
        directory = directory_for(log_path)
    searchable = log_path is not None and regular_or_absent(log_path)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return result
    for name in names:
        if not name.endswith((SUFFIX, SUFFIX + ".compact")):  # not a journal (ext_proc.server.spool's spools)
            continue
        path = os.path.join(directory, name)
        fd = _take(path)
        if fd is None:
            continue
        try:
            if not name.endswith(SUFFIX):  # a compaction that never finished: its journal is whole
                os.unlink(path)
                continue
            result.journals += 1
            entries = _open_entries(fd)
            found = _in_log(log_path, entries) if searchable and log_path is not None else {}
            records, in_log = [], []
            for request_id, waiting in entries.items():
                there = found.get(request_id, [])[:len(waiting)]  # the oldest entries are the ones logged
                result.logged_anyway += len(there)
                in_log += there
                records += [{**record, "recovered": True, "ts": time.time()} for record, _ in waiting[len(there):]]
            if records:
                try:
                    _append(log_path, records)
                except OSError as exc:
                    result.failed += 1
                    log.error("cannot write %d recovered record(s) to %s (%s); kept for the next try",
                              len(records), log_path or "stdout", exc.strerror)
                    continue
                result.written += len(records)
                log.warning("recovered %d record(s) of requests in flight when a worker died (%s)",
                            len(records), name)
                if add is not None:
                    _hand_on(add, records)
            if in_log and logged is not None:
                _hand_on(logged, in_log)
            os.unlink(path)
        finally:
            os.close(fd)
    return result


def _hand_on(to: Callable[[list[dict[str, Any]]], None], records: list[dict[str, Any]]) -> None:
    try:
        to(records)
    except Exception as exc:
        log.warning("handing on %d recovered record(s) failed: %s", len(records), type(exc).__name__)


def _take(path: str) -> int | None:
    """The journal's descriptor, locked, if its owner is gone (None: alive, or replaced meanwhile)."""
    return take_locked(path, os.O_RDONLY)


def take_locked(path: str, mode: int) -> int | None:
    """A file of :func:`create_locked`, opened with ``mode`` and locked, if the process that held it
    is gone (None: alive, taken already, or replaced meanwhile by a rewrite renamed over it)."""
    try:
        fd = os.open(path, mode)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # compacted (renamed over) meanwhile
            raise BlockingIOError
    except OSError:
        os.close(fd)
        return None
    return fd


def _open_entries(fd: int) -> dict[str, list[tuple[dict[str, Any], Position]]]:
    """The journal's entries not marked done, by request id, in order (an id a client chose may
    repeat: each request its own entry)."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        data = handle.read()
    entries: dict[str, list[tuple[dict[str, Any], Position]]] = {}
    for line in data.splitlines():
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line: its writer died in the write, before answering Envoy
        if not isinstance(item, dict):
            continue
        if "started" in item:
            record = item["started"]
            position = item.get("log")
            entries.setdefault(record["request_id"], []).append(
                (record, (int(position[0]), int(position[1])) if position else None))
        else:
            for request_id in item.get("done", ()):
                waiting = entries.get(request_id)
                if waiting:
                    waiting.pop(0)
    return {request_id: waiting for request_id, waiting in entries.items() if waiting}


def _in_log(log_path: str,
            entries: dict[str, list[tuple[dict[str, Any], Position]]]) -> dict[str, list[dict[str, Any]]]:
    """The records each of these requests' ids has in the log after where it stood when the
    first of its open entries started (the whole log when a position is unknown), oldest first."""
    if not entries:
        return {}
    files = log_files(log_path)
    inodes = {}
    for index, path in enumerate(files):
        with contextlib.suppress(OSError):
            inodes[os.stat(path).st_ino] = index
    since: dict[str, tuple[int, int]] = {}  # request id -> (file index, offset) its records count from
    for request_id, waiting in entries.items():
        position = waiting[0][1]
        since[request_id] = (inodes[position[0]], position[1]) if position is not None and position[0] in inodes \
            else (0, 0)
    start = min(since.values())
    wanted = {request_id.encode(): request_id for request_id in entries}
    found: dict[str, list[dict[str, Any]]] = {}
    for index in range(start[0], len(files)):
        try:
            with open(files[index], "rb") as handle:
                offset = start[1] if index == start[0] else 0
                handle.seek(offset)
                for line in handle:
                    at = (index, offset)
                    offset += len(line)
                    for needle, request_id in wanted.items():
                        if needle in line and at >= since[request_id]:
                            with contextlib.suppress(orjson.JSONDecodeError):
                                item = orjson.loads(line)
                                if isinstance(item, dict) and item.get("request_id") == request_id:
                                    found.setdefault(request_id, []).append(item)
        except OSError:
            continue
    return found


def _append(log_path: str | None, records: list[dict[str, Any]]) -> None:
    """Append the records to the log (None: stdout). A regular file gets them in one write; a
    pipe or device (stdout, which the workers write too) one line per write, so that none is
    interleaved with a worker's (a pipe keeps writes of up to PIPE_BUF bytes whole)."""
    lines = [orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in records]
    if log_path is None:
        for line in lines:
            _write_all(1, line)
        return
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            _write_all(fd, b"".join(lines))
        else:
            for line in lines:
                _write_all(fd, line)
    finally:
        os.close(fd)


def regular_or_absent(path: str) -> bool:
    """A log recovery can search, and journals and spools can live next to: a regular file, or
    none (yet, or any more); not a device such as ``/dev/stdout`` or ``/dev/full``."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
