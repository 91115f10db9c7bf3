"""Reading the request log: the current file and its rotated predecessors, oldest first."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

READ_CHUNK = 1 << 20  # bytes the Follower reads at a time (a line longer is read whole)


def log_files(path: str) -> list[str]:
    """``path`` and its rotated copies (``path.<UTC timestamp>``), oldest first."""
    rotated = sorted(glob.glob(glob.escape(path) + ".*"))
    return [*rotated, path] if os.path.exists(path) else rotated


def read_records(paths: Iterable[str], unreadable: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every well-formed record in these files. A torn last line (a crash mid-write: no newline
    at the end of a file) is skipped silently; any other line that is no JSON record (blank lines
    aside) is skipped too, and its place (``path:line``) appended to ``unreadable``."""
    for path in paths:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                record = _record(line)
                if record is not None:
                    yield record
                elif unreadable is not None and line.strip() and line.endswith(b"\n"):
                    unreadable.append(f"{path}:{number}")


class Follower:
    """Reads the request log incrementally: each :meth:`new_records` call yields only the complete
    lines written since the last call, across rotations (a rotated file is the same inode under a
    new name: it is finished from where reading stopped, then the new file is read from its start).
    Files last written before ``since`` (Unix seconds) are skipped on the first read."""

    def __init__(self, path: str, since: float = 0.0) -> None:
        self.path = path
        self.since = since
        self.offsets: dict[int, int] = {}  # inode -> bytes read (up to the last complete line)

    def new_records(self) -> Iterator[dict[str, Any]]:
        seen: dict[int, int] = {}
        for name in log_files(self.path):
            try:
                handle = open(name, "rb")  # noqa: SIM115 - closed below, after the inode check
            except FileNotFoundError:
                continue  # rotated away or removed meanwhile
            with handle:
                stat = os.fstat(handle.fileno())
                offset = self.offsets.get(stat.st_ino)
                if offset is None:
                    offset = 0 if stat.st_mtime >= self.since else stat.st_size
                handle.seek(offset)
                left = max(0, stat.st_size - offset)
                tail = b""
                while left > 0:  # READ_CHUNK at a time: a week of log is hundreds of MB
                    data = tail + handle.read(min(left, READ_CHUNK))
                    left -= len(data) - len(tail)
                    if len(data) == len(tail):
                        break  # truncated meanwhile
                    complete = data.rfind(b"\n") + 1
                    tail = data[complete:]
                    offset += complete
                    yield from read_lines(data[:complete])
                seen[stat.st_ino] = offset
        self.offsets = seen  # files removed since (rotated out) are forgotten


def read_lines(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.splitlines():
        record = _record(line)
        if record is not None:
            yield record


def _record(line: bytes) -> dict[str, Any] | None:
    """One line's record; None for a blank, torn or foreign line."""
    if not line.strip():
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
