"""The service's own small HTTP endpoint: ``/healthz``, ``/readyz`` (JSON details), ``/metrics``.

One per worker process, all sharing the port with ``SO_REUSEPORT``; every worker watches the
same policy file, so any of them answers for the service. Bound to loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class AdminServer:
    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, dict[str, object]]]) -> None:
        self.registry = registry
        self.ready = ready
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_port=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ok, details = self.ready()
            return (200 if ok else 503), "application/json", orjson.dumps({"ready": ok, **details})
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = head.split(b" ", 2)
            method = parts[0].decode("latin-1")
            path = parts[1].decode("latin-1").partition("?")[0] if len(parts) > 1 else "/"
            status, content_type, body = self.route(path) if method in ("GET", "HEAD") else (405, "text/plain", b"")
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + (body if method == "GET" else b"")
            )
            await writer.drain()
        writer.close()
