"""The fake provider's HTTP/1.1 server: OpenAI, Azure OpenAI and Anthropic endpoints, errors, replay.

Theory of operation. Three layers, each handing plain data to the next:

1. :class:`_Connection` (asyncio ``Protocol`` + ``httptools``) parses bytes into
   :class:`Request` values: keep-alive, pipelining, content-length and chunked request bodies.
2. :meth:`MockProvider.handle` turns a ``Request`` into a :class:`Reply` (status, body or SSE
   events, pauses, truncation). It does no I/O; bodies come from ``responses`` and ``cassettes``.
3. :func:`wire` turns a ``Reply`` into ``(pause, bytes)`` segments plus "close afterwards". The
   connection writes a reply with no pause at once, in one ``write``; otherwise a per-connection
   task sleeps and writes, and later pipelined requests wait their turn, so responses stay in
   request order.

Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` (OpenAI),
``POST /v1/messages`` (Anthropic), ``POST /openai/deployments/{deployment}/chat/completions``,
``.../completions``, ``.../embeddings`` (Azure OpenAI: the OpenAI answer with the deployment as
``model``; a missing or malformed ``api-version`` query parameter is Azure's 404), ``GET /healthz``,
``GET|DELETE /_mock/requests`` (the log of received requests, exactly as received, newest last).
Unknown paths get an OpenAI-style 404 (Azure-style under ``/openai/``).

Like the real APIs, ``/v1/messages`` without an ``anthropic-version`` header is a 400. With
``--api-key`` (repeatable), every request but ``/healthz`` and ``/_mock/*`` must carry one of the
keys where the real provider expects it (``Authorization: Bearer``; Anthropic ``x-api-key`` or
``Authorization: Bearer``; Azure ``api-key``), else it gets that provider's 401; a wrong key is
never echoed beyond its last 4 characters.

Per-request control headers (each falls back to the CLI option of the same name):

- ``x-mock-status: N``          answer an error ``N`` (>= 400) in the endpoint's provider format
- ``x-mock-latency-ms``         pause before the response head (non-streaming responses)
- ``x-mock-ttft-ms``            pause before the first SSE event
- ``x-mock-inter-chunk-ms``     pause between SSE events
- ``x-mock-chunks: N``          words in the reply = content deltas in a stream
- ``x-mock-cut-after: N``       stream: close the connection after N events, without the final
                                chunk; non-streaming: close after sending half of the body
- ``x-mock-cassette: NAME``     replay that cassette whatever the request

Order of precedence: the API key (401), ``anthropic-version`` (400), bad ``x-mock-*`` values
(400), ``x-mock-cassette``, ``x-mock-status``, a cassette whose recorded request matches (method,
path, parsed JSON body; the query is ignored), then the route: unknown path or Azure
``api-version`` (404), method (405), JSON body (400), and the generated answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import orjson

from ext_proc.mock import responses as r
from ext_proc.mock.cassettes import Cassette, load_cassettes, match_key
from ext_proc.mock.cassettes import index as cassette_index

# ---------------------------------------------------------------------------------------------
# Plain data


@dataclass(frozen=True, slots=True)
class Options:
    """Server-wide defaults; the ``x-mock-*`` headers override them per request."""

    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    inter_chunk_ms: float = 0.0
    chunks: int = 8
    cassettes: str | None = None  # directory of go-vcr cassettes to replay
    record_requests: int = 1000  # size of the received-request ring buffer (0: off)
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # accepted keys; () accepts any request


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str  # without the query string
    query: str
    headers: list[tuple[bytes, bytes]]  # as received, in order
    body: bytes  # de-chunked
    controls: dict[str, str] = field(default_factory=dict)  # x-mock-* headers, prefix stripped


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer: a body (``events is None``) or a stream of SSE events, and how."""

    status: int
    body: bytes = b""
    content_type: bytes = b"application/json"
    headers: bytes = b""  # extra header lines, each ending in CRLF
    events: tuple[bytes, ...] | list[bytes] | None = None
    latency: float = 0.0  # seconds before the head (non-streaming)
    ttft: float = 0.0  # seconds before the first event
    inter_chunk: float = 0.0  # seconds between events
    cut_after: int | None = None  # truncate (see module docstring)


class BadControl(ValueError):
    """An ``x-mock-*`` header with a value that is not a number in range."""


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
    segment. Truncated replies (``cut_after``) always close and never send the final chunk.
    HTTP/1.0 clients asking for keep-alive are told so explicitly.
    """
    connection = _CONNECTION_HEADER[keep_alive, http10]
    ctype = b"content-type: " + reply.content_type + b"\r\n" if reply.content_type else b""
    if reply.events is None:
        body = reply.body
        head = b"%scontent-length: %d\r\n%s%s\r\n" % (ctype, len(body), reply.headers, connection)
        if reply.cut_after is not None:
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
    pending, pending_pause = head, 0.0  # the segment being built
    cut = reply.cut_after
    for i, event in enumerate(reply.events):
        if cut is not None and i >= cut:
            break
        pause = reply.ttft if i == 0 else reply.inter_chunk
        frame = b"%x\r\n%s\r\n" % (len(event), event)
        if pause > 0:
            segments.append((pending_pause, pending))
            pending, pending_pause = frame, pause
        else:
            pending += frame
    if cut is None:
        pending += b"0\r\n\r\n"
    segments.append((pending_pause, pending))
    return segments, cut is not None or not keep_alive


# ---------------------------------------------------------------------------------------------
# Request -> Reply (no I/O)


def _number(controls: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> Any:
    raw = controls.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise BadControl(f"x-mock-{name}: {raw!r} is not a number") from None
    if value < 0 or value > 1_000_000:
        raise BadControl(f"x-mock-{name}: {raw!r} is out of range")
    return value


_STYLE = {
    "/v1/chat/completions": "openai",
    "/v1/completions": "openai",
    "/v1/embeddings": "openai",
    "/v1/messages": "anthropic",
}
_AZURE = "/openai/"
_AZURE_DEPLOYMENTS = "/openai/deployments/"
_AZURE_OPERATIONS = {  # what follows /openai/deployments/{deployment}/ -> the OpenAI route
    "chat/completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")

_JSON_CT = b"application/json"
_SSE_CT = b"text/event-stream; charset=utf-8"
_NOT_JSON = object()


class MockProvider:
    """State shared by every connection of one server: options, cassettes, the request log."""

    def __init__(self, options: Options | None = None, cassettes: Mapping[str, Cassette] | None = None):
        self.options = options or Options()
        for key in self.options.api_keys:
            if not key or key != key.strip() or not key.isprintable():
                raise ValueError("--api-key: a key is empty or has spaces or control characters")
        self._keys = frozenset(key.encode() for key in self.options.api_keys)
        if cassettes is None:
            cassettes = load_cassettes(self.options.cassettes) if self.options.cassettes else {}
        self.cassettes: dict[str, Cassette] = dict(cassettes)
        self._by_request = cassette_index(self.cassettes)
        # (method, path, model) of the recordings: most requests skip freezing their body
        self._recorded = {
            (c.method, c.path, c.request_json.get("model"))
            for c in self.cassettes.values()
            if isinstance(c.request_json, dict)
        }
        self._cassette_headers = {name: _header_lines(c) for name, c in self.cassettes.items()}
        size = self.options.record_requests
        self.requests: deque[Request] | None = deque(maxlen=size) if size > 0 else None
        self._ids = itertools.count(1)
        self.connections: set[_Connection] = set()
        self._routes: dict[str, Callable[[dict[str, Any], _Knobs], Reply]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/messages": self._messages,
        }

    # -- the request log

    def logged_requests(self) -> list[dict[str, Any]]:
        """The request log as JSON-ready dicts, oldest first (what ``GET /_mock/requests`` returns)."""
        return [
            {
                "method": req.method,
                "path": req.path,
                "query": req.query,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
                "body": req.body.decode("utf-8", "replace"),
            }
            for req in list(self.requests or ())  # a snapshot: other threads may read it
        ]

    # -- dispatch

    def handle(self, req: Request) -> Reply:
        """The reply to ``req``; logs it first unless it is a health or log request."""
        path = req.path
        if path == "/healthz":
            return Reply(200, b"ok", b"text/plain")
        if path == "/_mock/requests":
            return self._log_endpoint(req)
        if self.requests is not None:
            self.requests.append(req)
        style = _STYLE.get(path) or ("azure" if path.startswith(_AZURE) else "openai")
        if self._keys and not path.startswith("/_mock/"):
            denied = self._check_key(style, req.headers)
            if denied is not None:
                return denied
        if style == "anthropic" and not _header(req.headers, b"anthropic-version"):
            return self._error(style, 400, None, message="anthropic-version: header is required")
        try:
            knobs = _Knobs.parse(req.controls, self.options)
        except BadControl as exc:
            return self._error(style, 400, knobs=None, message=str(exc))

        forced = req.controls.get("cassette")
        if forced is not None:
            cassette = self.cassettes.get(forced.removesuffix(".yaml"))
            if cassette is None:
                return self._error(style, 400, knobs, message=f"x-mock-cassette: no cassette named {forced!r}")
            return self._replay(cassette, knobs)
        if knobs.status is not None:
            return self._error(style, knobs.status, knobs)

        body: Any = _NOT_JSON
        if self._by_request:
            body = _loads(req.body)
            if body is not _NOT_JSON and (
                not isinstance(body, dict) or (req.method, path, body.get("model")) in self._recorded
            ):
                cassette = self._by_request.get(match_key(req.method, path, body))
                if cassette is not None:
                    return self._replay(cassette, knobs)

        route = self._routes.get(path)
        deployment = None
        if route is None:
            if style != "azure":
                return self._error(
                    "openai", 404, knobs, message=f"Invalid URL ({req.method} {path})", code="unknown_url"
                )
            deployment, target = _azure_route(req)
            if target is None:
                return self._error(style, 404, knobs)
            route = self._routes[target]
        if req.method != "POST":
            return self._error(style, 405, knobs, message=f"Method {req.method} not allowed on {path}")
        if body is _NOT_JSON:
            body = _loads(req.body)
        if not isinstance(body, dict):
            return self._error(
                style,
                400,
                knobs,
                message="We could not parse the JSON body of your request. The body must be a JSON object.",
            )
        if deployment is not None:
            body["model"] = deployment  # Azure serves the deployment, whatever the body says
        return route(body, knobs)

    def _check_key(self, style: str, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        """None when ``headers`` carry an accepted key where ``style``'s API reads it, else its 401.

        OpenAI: ``Authorization: Bearer``; Azure: ``api-key``; Anthropic: ``x-api-key`` or
        ``Authorization: Bearer`` (recent ``anthropic`` SDKs send API keys as the latter).
        """
        if style == "azure":
            if _header(headers, b"api-key") in self._keys:
                return None
            return self._error(style, 401, None)
        key = _bearer(headers)
        if key in self._keys:
            return None
        if style == "anthropic":
            key = _header(headers, b"x-api-key") or key
            if key in self._keys:
                return None
            return self._error(style, 401, None, message=None if key else "x-api-key header is required")
        if not key:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            message = (
                f"Incorrect API key provided: {r.masked_key(key.decode('utf-8', 'replace'))}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
        return self._error(style, 401, None, message=message, code="invalid_api_key")

    def _log_endpoint(self, req: Request) -> Reply:
        if req.method == "GET":
            return Reply(200, orjson.dumps(self.logged_requests()))
        if req.method == "DELETE":
            cleared = len(self.requests or ())
            if self.requests is not None:
                self.requests.clear()
            return Reply(200, orjson.dumps({"cleared": cleared}))
        return Reply(405, r.openai_error(405, "Use GET or DELETE"))

    def _next_id(self) -> int:
        return next(self._ids)

    def _error(
        self, style: str, status: int, knobs: _Knobs | None, *, message: str | None = None, code: str | None = None
    ) -> Reply:
        n = self._next_id()
        if style == "anthropic":
            body = r.anthropic_error(status, message)
            headers = b"request-id: req_mock%016x\r\n" % n
        elif style == "azure" and r.is_azure_gateway_error(status):
            body = r.azure_error(status, message)
            headers = b"apim-request-id: req_mock%016x\r\n" % n
        else:
            body = r.openai_error(status, message, code=code)
            headers = b"x-request-id: req_mock%016x\r\n" % n
        if status == 429:
            headers += b"retry-after: 1\r\n"
        latency = knobs.latency if knobs else 0.0
        return Reply(status, body, _JSON_CT, headers, latency=latency, cut_after=knobs.cut_after if knobs else None)

    def _replay(self, cassette: Cassette, knobs: _Knobs) -> Reply:
        headers = self._cassette_headers[cassette.name]
        if cassette.is_stream:
            return Reply(
                cassette.status,
                content_type=b"",
                headers=headers,
                events=cassette.events,
                ttft=knobs.ttft,
                inter_chunk=knobs.inter_chunk,
                cut_after=knobs.cut_after,
            )
        return Reply(
            cassette.status,
            cassette.response_body,
            b"",
            headers,
            latency=knobs.latency,
            cut_after=knobs.cut_after,
        )

    # -- endpoints

    def _stream_or_json(self, knobs: _Knobs, headers: bytes, body: bytes | None, events: list[bytes] | None) -> Reply:
        if events is not None:
            return Reply(
                200,
                content_type=_SSE_CT,
                headers=headers,
                events=events,
                ttft=knobs.ttft,
                inter_chunk=knobs.inter_chunk,
                cut_after=knobs.cut_after,
            )
        assert body is not None
        return Reply(200, body, _JSON_CT, headers, latency=knobs.latency, cut_after=knobs.cut_after)

    def _chat(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        n = self._next_id()
        gen = r.generate(
            body,
            id=f"chatcmpl-mock{n:016x}",
            created=int(time.time()),
            chunks=knobs.chunks,
            prompt_tokens=r.chat_prompt_tokens(body.get("messages")),
        )
        headers = b"x-request-id: req_mock%016x\r\n" % n
        if body.get("stream") is True:
            return self._stream_or_json(knobs, headers, None, r.openai_chat_events(gen, _include_usage(body)))
        return self._stream_or_json(knobs, headers, r.openai_chat_json(gen), None)

    def _completions(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        n = self._next_id()
        per_prompt = r.input_tokens(body.get("prompt", ""))
        gen = r.generate(
            body,
            id=f"cmpl-mock{n:016x}",
            created=int(time.time()),
            chunks=knobs.chunks,
            prompt_tokens=sum(per_prompt),
            choices=len(per_prompt),
        )
        headers = b"x-request-id: req_mock%016x\r\n" % n
        if body.get("stream") is True:
            return self._stream_or_json(knobs, headers, None, r.openai_completion_events(gen, _include_usage(body)))
        return self._stream_or_json(knobs, headers, r.openai_completion_json(gen), None)

    def _embeddings(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        headers = b"x-request-id: req_mock%016x\r\n" % self._next_id()
        return self._stream_or_json(knobs, headers, r.embeddings_json(body), None)

    def _messages(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        n = self._next_id()
        gen = r.generate(
            body,
            id=f"msg_mock{n:016x}",
            created=0,
            chunks=knobs.chunks,
            prompt_tokens=r.chat_prompt_tokens(body.get("messages"), body.get("system")),
        )
        headers = b"request-id: req_mock%016x\r\n" % n
        if body.get("stream") is True:
            return self._stream_or_json(knobs, headers, None, r.anthropic_message_events(gen))
        return self._stream_or_json(knobs, headers, r.anthropic_message_json(gen), None)


@dataclass(frozen=True, slots=True)
class _Knobs:
    """Per-request settings: ``x-mock-*`` headers over the server options."""

    status: int | None
    latency: float
    ttft: float
    inter_chunk: float
    chunks: int
    cut_after: int | None

    @classmethod
    def parse(cls, controls: Mapping[str, str], options: Options) -> _Knobs:
        if not controls:
            return _defaults(options)
        status = _number(controls, "status", 0, integer=True) or None
        if status is not None and not 400 <= status <= 599:
            status = None
        cut = controls.get("cut-after")
        return cls(
            status=status,
            latency=_number(controls, "latency-ms", options.latency_ms) / 1000,
            ttft=_number(controls, "ttft-ms", options.ttft_ms) / 1000,
            inter_chunk=_number(controls, "inter-chunk-ms", options.inter_chunk_ms) / 1000,
            chunks=_number(controls, "chunks", options.chunks, integer=True),
            cut_after=None if cut is None else _number(controls, "cut-after", 0, integer=True),
        )


_DEFAULTS: dict[Options, _Knobs] = {}


def _defaults(options: Options) -> _Knobs:
    knobs = _DEFAULTS.get(options)
    if knobs is None:
        knobs = _DEFAULTS[options] = _Knobs(
            None, options.latency_ms / 1000, options.ttft_ms / 1000, options.inter_chunk_ms / 1000, options.chunks, None
        )
    return knobs


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The stripped value of the first header ``name`` (lower case), if any."""
    size = len(name)
    for key, value in headers:
        if len(key) == size and key.lower() == name:
            return value.strip()
    return None


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    value = _header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    return (token.strip() or None) if scheme.lower() == b"bearer" else None


def _azure_route(req: Request) -> tuple[str | None, str | None]:
    """``(deployment, OpenAI path)`` of an Azure OpenAI request; no path: unknown path or api-version."""
    if not req.path.startswith(_AZURE_DEPLOYMENTS):
        return None, None
    deployment, _, operation = req.path[len(_AZURE_DEPLOYMENTS) :].partition("/")
    target = _AZURE_OPERATIONS.get(operation)
    version = urllib.parse.parse_qs(req.query).get("api-version", ())
    if not deployment or target is None or len(version) != 1 or not _API_VERSION.fullmatch(version[0]):
        return None, None
    return urllib.parse.unquote(deployment), target


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _header_lines(cassette: Cassette) -> bytes:
    return b"".join(
        f"{name}: {value}\r\n".encode("latin-1", "replace")
        for name, value in cassette.headers
        if "\r" not in value and "\n" not in value
    )


# ---------------------------------------------------------------------------------------------
# The connection (I/O)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_MAX_QUEUED = 32  # pipelined replies waiting before the connection stops reading


class _Connection(asyncio.Protocol):
    """One client connection: httptools callbacks build requests, replies go out in order."""

    __slots__ = (
        "_body",
        "_closed",
        "_controls",
        "_expect",
        "_headers",
        "_in_message",
        "_parser",
        "_paused",
        "_provider",
        "_queue",
        "_shutdown",
        "_task",
        "_transport",
        "_url",
    )

    def __init__(self, provider: MockProvider):
        self._provider = provider
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
        self._provider.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._provider.connections.discard(self)
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
                body = r.openai_error(400, f"Malformed HTTP request: {exc}")
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
        )
        keep_alive = self._parser.should_keep_alive() and not self._shutdown
        self._reset()
        try:
            reply = self._provider.handle(request)
        except Exception as exc:  # a bug here must not kill the connection silently
            reply = Reply(500, r.openai_error(500, f"mock provider error: {exc!r}"))
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


async def start_server(
    host: str = "127.0.0.1", port: int = 0, options: Options | None = None, *, provider: MockProvider | None = None
) -> asyncio.Server:
    """Listen on ``host:port`` (0: a free port; see ``server.sockets``) and serve ``provider``."""
    provider = provider or MockProvider(options)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(provider), host, port, reuse_address=True, backlog=1024)


async def stop_server(server: asyncio.Server, provider: MockProvider, grace: float = 2.0) -> None:
    """Stop accepting, let replies under way finish (up to ``grace`` seconds), close the rest."""
    server.close()
    for conn in list(provider.connections):
        conn.shutdown()
    deadline = time.monotonic() + grace
    while provider.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for conn in list(provider.connections):
        conn.abort()
    await server.wait_closed()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class BackgroundServer:
    """A provider served from a daemon thread with its own event loop (for tests)."""

    provider: MockProvider
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
        future = asyncio.run_coroutine_threadsafe(stop_server(self._server, self.provider, 0.5), self._loop)
        future.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def serve_in_background(
    options: Options | None = None, *, host: str = "127.0.0.1", port: int = 0, provider: MockProvider | None = None
) -> BackgroundServer:
    """Start a provider on a daemon thread; call ``.close()`` when done."""
    provider = provider or MockProvider(options)
    loop = _new_loop()
    server = loop.run_until_complete(start_server(host, port, provider=provider))
    thread = threading.Thread(target=loop.run_forever, name="mock-provider", daemon=True)
    thread.start()
    bound = server.sockets[0].getsockname()
    return BackgroundServer(provider, bound[0], bound[1], loop, server, thread)


@contextlib.contextmanager
def background(options: Options | None = None, **kwargs: Any) -> Iterator[BackgroundServer]:
    """``with background(Options(...)) as srv: ... srv.url ...``"""
    srv = serve_in_background(options, **kwargs)
    try:
        yield srv
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tollway mock-provider`` flags."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=18080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="pause before a non-streaming response")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="pause before the first SSE event")
    parser.add_argument("--inter-chunk-ms", type=float, default=0.0, help="pause between SSE events")
    parser.add_argument("--chunks", type=int, default=8, help="words per reply = content deltas per stream")
    parser.add_argument("--cassettes", metavar="DIR", default=None, help="directory of go-vcr cassettes to replay")
    parser.add_argument(
        "--record-requests", metavar="N", type=int, default=1000, help="requests kept for GET /_mock/requests"
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        dest="api_keys",
        action="append",
        default=None,
        help="accept only requests carrying this key, in each API's own header (repeatable; default: any)",
    )


def options_from_args(args: argparse.Namespace) -> Options:
    """:class:`Options` from parsed ``add_arguments`` flags."""
    return Options(
        latency_ms=args.latency_ms,
        ttft_ms=args.ttft_ms,
        inter_chunk_ms=args.inter_chunk_ms,
        chunks=args.chunks,
        cassettes=args.cassettes,
        record_requests=args.record_requests,
        api_keys=tuple(args.api_keys or ()),
    )


async def _serve(args: argparse.Namespace) -> int:
    try:
        provider = MockProvider(options_from_args(args))
    except ValueError as exc:  # CassetteError
        print(f"mock-provider: {exc}", file=sys.stderr)
        return 2
    server = await start_server(args.host, args.port, provider=provider)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"mock-provider listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_server(server, provider)
    return 0


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully; the process exit code."""
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(_serve(args))


if __name__ == "__main__":  # python -m ext_proc.mock.provider
    _parser = argparse.ArgumentParser(prog="mock-provider")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
