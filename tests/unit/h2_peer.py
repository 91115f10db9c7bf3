"""Drive ext_proc.server.h2.Connection in process: an h2 (python-hyper) client or raw frames as the peer.

The calls keep a log of their lifecycle (created, message, end, reset) per stream.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection

from ext_proc.server import h2
from tests.fakes import FakeTransport

PATH = "/test.Echo/Echo"
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()), (b":authority", b"tollway"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def grpc_message(message: bytes) -> bytes:
    """A gRPC length-prefixed message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return h2._frame(kind, flags, sid, payload)


def literal_block(headers: list[tuple[bytes, bytes]] = REQUEST) -> bytes:
    """A header block of literals without indexing: leaves every HPACK table as it was."""
    return b"".join(h2._literal(name, value) for name, value in headers)


def settings(*pairs: tuple[int, int]) -> bytes:
    return frame(h2.SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


START = h2.PREFACE + settings()


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    frames, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags, sid = data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append((kind, flags, sid, bytes(data[pos + 9 : pos + 9 + length])))
        pos += 9 + length
    return frames


@dataclass
class Log:
    """What happened to the calls of one test: (stream id, event) in order."""

    events: list[tuple[int, str]] = field(default_factory=list)
    responders: dict[int, h2.Responder] = field(default_factory=dict)

    def of(self, sid: int) -> list[str]:
        return [event for s, event in self.events if s == sid]


class EchoCall:
    """Answers each message with itself (or with ``answer(message)``), logging its lifecycle."""

    def __init__(self, log: Log, sid: int, responder: h2.Responder, answer: Callable[[bytes], list[bytes]]) -> None:
        self.log, self.sid, self.responder, self.answer = log, sid, responder, answer
        log.events.append((sid, "created"))
        log.responders[sid] = responder

    def message(self, data: bytes) -> list[bytes]:
        self.log.events.append((self.sid, "message"))
        return self.answer(data)

    def end(self) -> tuple[int, str] | None:
        self.log.events.append((self.sid, "end"))
        return 0, ""

    def reset(self) -> None:
        self.log.events.append((self.sid, "reset"))


def echo_routes(log: Log, answer: Callable[[bytes], list[bytes]] = lambda m: [m]) -> dict[str, h2.CallFactory]:
    def factory(headers: list[tuple[bytes, bytes]], responder: h2.Responder) -> h2.Call:
        return EchoCall(log, responder.sid, responder, answer)  # type: ignore[attr-defined]

    return {PATH: factory}


class Peer:
    """One h2.Connection on a FakeTransport; ``client`` is an h2 client whose bytes can be pumped to it."""

    def __init__(self, routes: dict[str, h2.CallFactory], *, client_settings: dict[int, int] | None = None) -> None:
        self.server = h2.Server(routes)
        self.connection = h2.Connection(self.server)
        self.transport = FakeTransport()
        self.connection.connection_made(self.transport)  # type: ignore[arg-type]
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.read = 0
        self.events: list[object] = []
        self.pump()

    def send(self, data: bytes) -> None:
        """Raw bytes to the server (the h2 client does not see them)."""
        self.connection.data_received(data)

    def pump(self) -> list[object]:
        """Client bytes to the server and the server's answer back to the client, until both are quiet."""
        new: list[object] = []
        while True:
            data = self.client.data_to_send()
            if data:
                self.connection.data_received(data)
            out = bytes(self.transport.data[self.read :])
            self.read = len(self.transport.data)
            if out and self.client.state_machine.state.name != "CLOSED":
                new += self.client.receive_data(out)
            if not data and not out:
                break
        self.events += new
        return new

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        return parse_frames(bytes(self.transport.data))

    def goaway(self) -> int | None:
        """The error code of the server's GOAWAY, if it sent one."""
        codes = [int.from_bytes(p[4:8], "big") for kind, _, _, p in self.frames() if kind == h2.GOAWAY]
        return codes[-1] if codes else None

    def resets(self) -> dict[int, int]:
        """RST_STREAM frames the server sent: stream id -> error code."""
        return {sid: int.from_bytes(p, "big") for kind, _, sid, p in self.frames() if kind == h2.RST_STREAM}

    def open(self, sid: int, *messages: bytes, end: bool = False) -> None:
        self.client.send_headers(sid, REQUEST, end_stream=end and not messages)
        for i, message in enumerate(messages):
            self.client.send_data(sid, grpc_message(message), end_stream=end and i == len(messages) - 1)
        self.pump()

    def lose(self) -> None:
        self.connection.connection_lost(None)
