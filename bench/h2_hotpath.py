"""Per-message CPU cost of ext_proc.server.h2.Connection on its synchronous path (no I/O).

``.venv/bin/python bench/h2_hotpath.py [N] [ROUNDS]``; ``H2_MODULE=path/to/h2.py`` measures another
version of the module (e.g. ``git show main:ext_proc/server/h2.py > /tmp/h2_main.py``), for a
before/after comparison. CPU time (thread_time) is measured, so other load on the machine matters
less. A fake client opens streams on one Connection with a do-nothing transport and feeds it, one
data_received call per message (as a read per message would), small gRPC messages that a trivial
call answers at once. Two cases: many messages on one open stream, and a whole stream per
message (HEADERS + DATA with END_STREAM: stream setup, call creation, trailers).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import struct
import sys
import time

from hpack import Encoder

_spec = importlib.util.spec_from_file_location("h2_under_test", os.environ.get("H2_MODULE", "ext_proc/server/h2.py"))
assert _spec is not None and _spec.loader is not None
h2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h2)

PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
MESSAGE = b"m" * 200
REPLY = b"r" * 200


class NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class EchoCall:
    __slots__ = ()

    def message(self, data: bytes) -> list[bytes]:
        return [REPLY]

    def end(self) -> tuple[int, str]:
        return 0, ""

    def reset(self) -> None:
        pass


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (len(payload) << 8 | kind).to_bytes(4, "big") + bytes((flags,)) + sid.to_bytes(4, "big") + payload


def connection() -> tuple[h2.Connection, bytes]:
    server = h2.Server({PATH: lambda *_args: EchoCall()})
    conn = h2.Connection(server)
    conn.connection_made(NullTransport())  # type: ignore[arg-type]
    settings = struct.pack(">HI", 0x4, 2**31 - 1)
    conn.data_received(h2.PREFACE + frame(4, 0, 0, settings) + frame(8, 0, 0, struct.pack(">I", 2**31 - 1 - 65535)))
    block = Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "x"),
                              ("content-type", "application/grpc"), ("te", "trailers")])
    return conn, block


def one_stream(n: int) -> float:
    conn, block = connection()
    conn.data_received(frame(1, 4, 1, block))
    data = frame(0, 0, 1, b"\0" + len(MESSAGE).to_bytes(4, "big") + MESSAGE)
    receive = conn.data_received
    start = time.thread_time_ns()
    for _ in range(n):
        receive(data)
    return (time.thread_time_ns() - start) / n


def stream_per_message(n: int) -> float:
    conn, _ = connection()
    # After the first HEADERS the encoder's dynamic table makes later blocks tiny, as Envoy's are.
    encoder = Encoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "x"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    payloads = []
    for i in range(n):
        sid = 2 * i + 1
        payloads.append(frame(1, 4, sid, encoder.encode(headers))
                        + frame(0, 1, sid, b"\0" + len(MESSAGE).to_bytes(4, "big") + MESSAGE))
    receive = conn.data_received
    start = time.thread_time_ns()
    for payload in payloads:
        receive(payload)
    return (time.thread_time_ns() - start) / n


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    for name, case in (("message on an open stream", one_stream), ("whole stream per message", stream_per_message)):
        samples = [case(n) for _ in range(rounds)]
        print(f"{name}: median {statistics.median(samples) / 1000:.2f} µs, min {min(samples) / 1000:.2f} µs "
              f"({rounds} rounds x {n})")
