"""The request log: one JSON line per request, written off the request path.

Sessions emit records as effects; :class:`RecordWriter` stamps the wall-clock time, buffers
them and writes in batches (every ``interval`` seconds, or sooner when the buffer is large), and
flushes everything on shutdown. Each batch is a single ``write`` to a file opened in append mode,
so the lines of several worker processes sharing one file never interleave mid-line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import Any

import orjson


class RecordWriter:
    """Batching JSON-lines writer for request records (``path=None`` writes to stdout)."""

    def __init__(self, path: str | None, interval: float = 0.05, max_buffer: int = 256 * 1024) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) if path else sys.stdout.fileno()
        self._owns_fd = path is not None
        self._chunks: list[bytes] = []
        self._size = 0
        self._interval = interval
        self._max_buffer = max_buffer
        self._task: asyncio.Task[None] | None = None

    def emit(self, record: dict[str, Any]) -> None:
        record["ts"] = time.time()
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
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def start(self) -> None:
        """Start the periodic flush on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        if self._owns_fd:
            os.close(self._fd)
