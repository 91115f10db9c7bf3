"""Small fakes shared by the tests."""

from __future__ import annotations


class FakeTransport:
    """An asyncio transport that keeps what was written; backpressure is never expected."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        raise AssertionError("no backpressure expected")
