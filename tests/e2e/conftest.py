"""End-to-end fixtures: a real Envoy, the Tollway service and the fake provider on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ext_proc.stack import Stack

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CASSETTES = SHARED / "fixtures" / "openai-cassettes"


class Gateway:
    """A running stack plus helpers to find the request records it wrote."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.base_url = stack.base_url

    def records(self) -> list[dict[str, Any]]:
        path = self.stack.record_log
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

    def record(self, request_id: str | None, timeout: float = 5.0) -> dict[str, Any]:
        """The record of one request, waiting for the batched writer to flush it."""
        assert request_id, "the gateway did not return x-tollway-request-id"
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if r["request_id"] == request_id]
            if found:
                assert len(found) == 1, f"{len(found)} records for one request: {found}"
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no record for request {request_id}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    args = ("--cassettes", str(CASSETTES)) if CASSETTES.is_dir() else ()
    stack = Stack(tmp_path_factory.mktemp("stack"), workers=2, mock_args=args)
    with stack:
        yield Gateway(stack)
