"""Small fakes shared by the tests."""

from __future__ import annotations


class FakeTransport:
    """An asyncio transport that keeps what was written; records when the protocol stops or resumes reading."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0
        self.closed = False
        self.reading = True
        self.limits: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0  # (what was written is taken at once)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default
