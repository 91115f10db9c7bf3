"""The request log: one JSON line per request, written off the request path.

Sessions emit records as effects; :class:`RecordWriter` stamps the wall-clock time, buffers
them and writes in batches (every ``interval`` seconds, or sooner when the buffer is large), and
flushes everything on shutdown. Each batch is a single ``write`` to a file opened in append mode,
so the lines of several worker processes sharing one file never interleave mid-line.

Rotation: when the file passes ``max_bytes`` the worker that notices renames it to
``<path>.<UTC timestamp>`` and opens a new one; the other workers notice the new inode at their
next flush and reopen, so nothing is lost (their last batch may land in the renamed file). The
newest ``keep`` rotated files are kept. ``tollway report`` reads them all.

Aggregates: each batch is also added to a :class:`~ext_proc.state.ledger.Ledger` (in-process,
or Redis through a worker thread so the event loop never waits on the network). A batch Redis
refused is kept and retried at the next flush (up to ``MAX_PENDING`` records); the log file
holds every record either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from ext_proc.ledger.log import log_files
from ext_proc.state.ledger import Ledger, MemoryLedger

log = logging.getLogger("tollway.records")
MAX_PENDING = 100_000


class RecordWriter:
    """Batching JSON-lines writer for request records (``path=None`` writes to stdout)."""

    def __init__(
        self,
        path: str | None,
        interval: float = 0.05,
        max_buffer: int = 256 * 1024,
        max_bytes: int = 64 * 1024 * 1024,
        keep: int = 20,
        ledger: Ledger | None = None,
    ) -> None:
        self._path = path
        self._ledger = ledger
        self._pending: list[dict[str, Any]] = []
        self._fd = self._open() if path else sys.stdout.fileno()
        self._owns_fd = path is not None
        self._max_bytes = max_bytes
        self._keep = keep
        self._chunks: list[bytes] = []
        self._size = 0
        self._interval = interval
        self._max_buffer = max_buffer
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # batches the aggregates' store refused (tollway_ledger_write_failures_total)

    def emit(self, record: dict[str, Any]) -> None:
        record["ts"] = time.time()
        if self._ledger is not None:
            self._pending.append(record)
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        self._chunks.append(line)
        self._size += len(line)
        if self._size >= self._max_buffer:
            self.flush()

    def flush(self) -> None:
        if not self._chunks:
            return
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._owns_fd:
            self._follow_rotation()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self._owns_fd and os.fstat(self._fd).st_size > self._max_bytes:
            self._rotate()

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _follow_rotation(self) -> None:
        """Reopen when another worker rotated the file away from under our descriptor."""
        try:
            current = os.stat(self._path).st_ino  # type: ignore[arg-type]
        except FileNotFoundError:
            current = None
        if current != os.fstat(self._fd).st_ino:
            os.close(self._fd)
            self._fd = self._open()

    def _rotate(self) -> None:
        path = self._path
        assert path is not None
        try:
            if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
                os.rename(path, f"{path}.{stamp}")
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = self._open()
        for old in log_files(path)[: -1 - self._keep]:
            with contextlib.suppress(OSError):
                os.remove(old)

    def start(self) -> None:
        """Start the periodic flush on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()
            await self._add_to_ledger()

    async def _add_to_ledger(self) -> None:
        if not self._pending or self._ledger is None:
            return
        batch, self._pending = self._pending, []
        try:
            if isinstance(self._ledger, MemoryLedger):
                self._ledger.add(batch)
            else:
                await asyncio.get_running_loop().run_in_executor(None, self._ledger.add, batch)
        except Exception as exc:  # Redis down: keep the batch (bounded) and retry next time
            self.failures += 1
            log.warning("ledger store refused %d records (%s); will retry", len(batch), type(exc).__name__)
            self._pending = (batch + self._pending)[-MAX_PENDING:]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        await self._add_to_ledger()
        if self._owns_fd:
            os.close(self._fd)
