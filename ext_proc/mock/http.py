"""The fake provider's HTTP/1.1 plumbing: bytes in, :class:`Request` out; :class:`Reply` in, bytes out.

It knows nothing of providers: whatever it serves is a :class:`Handler`, whose ``handle`` turns
one ``Request`` into one ``Reply`` without I/O (``ext_proc.mock.provider`` has the fake provider).

- :class:`Connection` (asyncio ``Protocol`` + ``httptools``) parses bytes into requests:
  keep-alive, pipelining, content-length and chunked request bodies, ``Expect: 100-continue``.
- :func:`wire` turns a ``Reply`` into ``(pause, bytes)`` segments plus "close afterwards". The
  connection writes a reply with no pause at once, in one ``write``; otherwise a per-connection
  task sleeps and writes, and later pipelined requests wait their turn, so responses stay in
  request order.
- Starting and stopping: :func:`listen`, :func:`stop_server` (graceful, with a grace period),
  :func:`serve_in_thread` (a daemon thread with its own loop, for tests) and
  :func:`serve_until_signalled` (until SIGTERM/SIGINT, for the CLI).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import httptools

from ext_proc.mock.responses import openai_error

# ---------------------------------------------------------------------------------------------
# Plain data


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str  # without the query string
    query: str
    headers: list[tuple[bytes, bytes]]  # as received, in order
    body: bytes  # de-chunked
    controls: dict[str, str] = field(default_factory=dict)  # x-mock-* headers, prefix stripped
    received_at: float = 0.0  # Unix time the whole request had arrived


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: a body (``events is None``) or a stream of SSE events, and how."""

    status: int
    body: bytes = b""
    content_type: bytes = b"application/json"
    headers: bytes = b""  # extra header lines, each ending in CRLF
    events: tuple[bytes, ...] | list[bytes] | None = None
    latency: float = 0.0  # seconds before the head (a stall before the first byte)
    ttft: float = 0.0  # seconds before the first event
    inter_chunk: float = 0.0  # seconds between events
    cut_after: int | None = None  # truncate (see :func:`wire`)
    clean_end: bool = False  # a truncated stream still ends properly (its final chunk is sent)


class Handler(Protocol):
    """What a server serves: one reply per request, and the set of its open connections."""

    connections: set[Connection]

    def handle(self, req: Request) -> Reply:
        """The reply to ``req``; no I/O (pauses are part of the reply)."""
        ...


# ---------------------------------------------------------------------------------------------
# Reply -> bytes (pure)

_REASONS = {s.value: s.phrase for s in HTTPStatus} | {529: "Site is overloaded"}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n".encode()
    return line


_CONNECTION_HEADER = {
    (True, False): b"",
    (True, True): b"connection: keep-alive\r\n",
    (False, False): b"connection: close\r\n",
    (False, True): b"connection: close\r\n",
}


def wire(reply: Reply, keep_alive: bool, *, http10: bool = False) -> tuple[list[tuple[float, bytes]], bool]:
    """The bytes of ``reply`` as ``(pause_seconds, data)`` segments, and whether to close after.

    Segments with no pause are merged into the one before, so a reply without delays is a single
    segment. Truncated replies (``cut_after``) close and never send the final chunk, unless
    ``clean_end``: then the stream ends properly, only its last events are missing.
    HTTP/1.0 clients asking for keep-alive are told so explicitly.
    """
    connection = _CONNECTION_HEADER[keep_alive, http10]
    ctype = b"content-type: " + reply.content_type + b"\r\n" if reply.content_type else b""
    if reply.events is None:
        body = reply.body
        head = b"%scontent-length: %d\r\n%s%s\r\n" % (ctype, len(body), reply.headers, connection)
        if reply.cut_after is not None and not reply.clean_end:
            return [(reply.latency, _status_line(reply.status) + head + body[: len(body) // 2])], True
        return [(reply.latency, _status_line(reply.status) + head + body)], not keep_alive
    head = (
        _status_line(reply.status)
        + ctype
        + b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
        + reply.headers
        + connection
        + b"\r\n"
    )
    segments: list[tuple[float, bytes]] = []
    # The segment being built (after any stall), as its frames: joined once it is complete, not
    # grown frame by frame (bytes += is a copy of all so far: a 200,000-event stream took minutes,
    # the server's only thread answering nothing else meanwhile).
    pending, pending_pause = [head], reply.latency
    cut = reply.cut_after
    for i, event in enumerate(reply.events):
        if cut is not None and i >= cut:
            break
        pause = reply.ttft if i == 0 else reply.inter_chunk
        frame = b"%x\r\n%s\r\n" % (len(event), event)
        if pause > 0:
            segments.append((pending_pause, b"".join(pending)))
            pending, pending_pause = [frame], pause
        else:
            pending.append(frame)
    if cut is None or reply.clean_end:
        pending.append(b"0\r\n\r\n")
    segments.append((pending_pause, b"".join(pending)))
    return segments, (cut is not None and not reply.clean_end) or not keep_alive


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_MAX_QUEUED = 32  # pipelined replies waiting before the connection stops reading


class Connection(asyncio.Protocol):
    """One client connection: httptools callbacks build requests, replies go out in order."""

    __slots__ = (
        "_body",
        "_closed",
        "_controls",
        "_expect",
        "_handler",
        "_headers",
        "_in_message",
        "_parser",
        "_paused",
        "_queue",
        "_shutdown",
        "_task",
        "_transport",
        "_url",
    )

    def __init__(self, handler: Handler):
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[list[tuple[float, bytes]], bool]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._paused = False
        self._shutdown = False
        self._in_message = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._controls: dict[str, str] = {}
        self._body: list[bytes] = []
        self._expect = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._handler.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._handler.connections.discard(self)
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._shutdown = True  # no protocol switch here: finish what was asked, then close
            self._maybe_close_idle()
        except httptools.HttpParserError as exc:
            if self._task is None and not self._closed:
                body = openai_error(400, f"Malformed HTTP request: {exc}")
                self._transport.write(_BAD_REQUEST % (len(body), body))  # type: ignore[union-attr]
            self._close()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        first = name[0] | 0x20
        if first == 0x78:  # "x"
            if name[:7].lower() == b"x-mock-":
                self._controls[name[7:].lower().decode("latin-1")] = value.decode("latin-1").strip()
        elif first == 0x65 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":  # "e"
            self._expect = True

    def on_headers_complete(self) -> None:
        if self._expect:
            self._transport.write(_CONTINUE)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        path, _, query = self._url.decode("latin-1").partition("?")
        request = Request(
            self._parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            b"".join(self._body),
            self._controls,
            time.time(),
        )
        keep_alive = self._parser.should_keep_alive() and not self._shutdown
        self._reset()
        try:
            reply = self._handler.handle(request)
        except Exception as exc:  # a bug here must not kill the connection silently
            reply = Reply(500, openai_error(500, f"mock provider error: {exc!r}"))
        segments, close = wire(reply, keep_alive, http10=self._parser.get_http_version() == "1.0")
        if self._task is None and not self._queue and len(segments) == 1 and segments[0][0] <= 0:
            self._transport.write(segments[0][1])  # type: ignore[union-attr]
            if close:
                self._close()
            return
        self._queue.append((segments, close))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        if len(self._queue) > _MAX_QUEUED and not self._paused:
            self._paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    # -- writing

    async def _drain(self) -> None:
        try:
            while self._queue:
                segments, close = self._queue.popleft()
                if self._paused and len(self._queue) <= _MAX_QUEUED // 2:
                    self._paused = False
                    self._transport.resume_reading()  # type: ignore[union-attr]
                for pause, data in segments:
                    if pause > 0:
                        await asyncio.sleep(pause)
                    if self._closed:
                        return
                    self._transport.write(data)  # type: ignore[union-attr]
                if close:
                    self._close()
                    return
        finally:
            self._task = None
        self._maybe_close_idle()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._transport.close()  # type: ignore[union-attr]  # flushes what was written, then FIN

    def _maybe_close_idle(self) -> None:
        if self._shutdown and self._task is None and not self._queue and not self._in_message:
            self._close()

    def shutdown(self) -> None:
        """Close now if idle, else after the replies under way (server stopping)."""
        self._shutdown = True
        self._maybe_close_idle()

    def abort(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()


# ---------------------------------------------------------------------------------------------
# Starting and stopping


async def listen(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Listen on ``host:port`` (0: a free port; see ``server.sockets``) and serve ``handler``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Connection(handler), host, port, reuse_address=True, backlog=1024)


async def stop_server(server: asyncio.Server, handler: Handler, grace: float = 2.0) -> None:
    """Stop accepting, let replies under way finish (up to ``grace`` seconds), close the rest."""
    server.close()
    for conn in list(handler.connections):
        conn.shutdown()
    deadline = time.monotonic() + grace
    while handler.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for conn in list(handler.connections):
        conn.abort()
    await server.wait_closed()


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class BackgroundServer:
    """A handler served from a daemon thread with its own event loop (for tests)."""

    handler: Handler
    host: str
    port: int
    _loop: asyncio.AbstractEventLoop
    _server: asyncio.Server
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        future = asyncio.run_coroutine_threadsafe(stop_server(self._server, self.handler, 0.5), self._loop)
        future.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def serve_in_thread(handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> BackgroundServer:
    """Serve ``handler`` on a daemon thread; call ``.close()`` when done."""
    loop = new_loop()
    server = loop.run_until_complete(listen(handler, host, port))
    thread = threading.Thread(target=loop.run_forever, name="mock-provider", daemon=True)
    thread.start()
    bound = server.sockets[0].getsockname()
    return BackgroundServer(handler, bound[0], bound[1], loop, server, thread)


async def _serve_until_signalled(handler: Handler, host: str, port: int, on_listening: Callable[[str], None]) -> None:
    server = await listen(handler, host, port)
    host, port = server.sockets[0].getsockname()[:2]
    on_listening(f"http://{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_server(server, handler)


def serve_until_signalled(handler: Handler, host: str, port: int, on_listening: Callable[[str], None]) -> None:
    """Serve ``handler`` until SIGTERM/SIGINT, then stop gracefully; ``on_listening(url)`` once bound."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(_serve_until_signalled(handler, host, port, on_listening))
