"""Reading the request log: the current file and its rotated predecessors, oldest first."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from typing import Any

import orjson


def log_files(path: str) -> list[str]:
    """``path`` and its rotated copies (``path.<UTC timestamp>``), oldest first."""
    rotated = sorted(glob.glob(glob.escape(path) + ".*"))
    return [*rotated, path] if os.path.exists(path) else rotated


def read_records(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every well-formed record in these files; a torn last line (a crash mid-write) is skipped."""
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield record
