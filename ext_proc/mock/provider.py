"""The fake provider's behaviour: OpenAI, Azure OpenAI and Anthropic endpoints, errors, replay.

:meth:`MockProvider.handle` turns a ``Request`` into a ``Reply`` (status, body or SSE events,
pauses, truncation) and does no I/O; bodies come from ``responses`` and ``cassettes``. The HTTP/1.1
plumbing that feeds it requests and writes its replies is :mod:`ext_proc.mock.http`. Also here:
:class:`Options` (the server-wide defaults), the ``background`` helpers for tests, and the
``tollway mock-provider`` CLI (:func:`add_arguments`, :func:`run`).

Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` (OpenAI), ``POST /v1/messages`` and ``/v1/messages/count_tokens`` (Anthropic;
the count is the ``input_tokens`` the same request would report),
``POST /openai/deployments/{deployment}/chat/completions``, ``.../completions``, ``.../embeddings``
(Azure OpenAI: the OpenAI answer with the deployment as ``model``; a missing or malformed
``api-version`` query parameter is Azure's 404), ``POST /openai/v1/responses`` (Azure's v1
Responses API: the deployment is the body's ``model``, no ``api-version``), ``GET /healthz``,
``GET|DELETE /_mock/requests`` (the log of received requests, exactly as received, newest last,
each with the Unix time it arrived). Each API route is served under any base path too
(``/vllm/v1/chat/completions``, ``/gw/openai/deployments/...``): it stands in for providers whose
policy endpoint has one. Unknown paths get an OpenAI-style 404 (Azure-style under ``/openai/``).

Like the real APIs, ``/v1/messages`` without an ``anthropic-version`` header is a 400. With
``--api-key`` (repeatable), every request but ``/healthz`` and ``/_mock/*`` must carry one of the
keys where the real provider expects it (``Authorization: Bearer``; Anthropic ``x-api-key`` or
``Authorization: Bearer``; Azure ``api-key``), else it gets that provider's 401; a wrong key is
never echoed beyond its last 4 characters.

Per-request control headers (each falls back to the CLI option of the same name):

- ``x-mock-status: N``          answer an error ``N`` (>= 400) in the endpoint's provider format
- ``x-mock-latency-ms``         pause before the response head: no byte at all until then
- ``x-mock-ttft-ms``            pause before the first SSE event
- ``x-mock-inter-chunk-ms``     pause between SSE events
- ``x-mock-chunks: N``          words in the reply = content deltas in a stream
- ``x-mock-cut-after: N``       stream: close the connection after N events, without the final
                                chunk; non-streaming: close after sending half of the body
- ``x-mock-truncate-after: N``  stream: end the stream properly after N events (the final
                                events never come; the HTTP response itself is complete)
- ``x-mock-cassette: NAME``     replay that cassette whatever the request
- ``x-mock-tool-call: NAME``    when the request has tools: call tool ``NAME`` (see below)
- ``x-mock-reply: TEXT``        answer TEXT (chat, messages, responses), its stream deltas split at each ``|``

Each control can be scoped to one API family: ``x-mock-openai-status: 429`` applies only to
OpenAI endpoints, ``x-mock-anthropic-ttft-ms`` only to ``/v1/messages``, ``x-mock-azure-*`` only
to Azure paths; a scoped control wins over the unscoped one. (One request through a gateway
with fallback can so fail at one provider and succeed at the next.)

Tool calls: a chat or Responses request (OpenAI or Azure ``tools`` of type ``function``) or a
messages request (Anthropic ``tools`` with ``input_schema``) gets ONE tool call instead of text
when it forces a tool (OpenAI ``tool_choice: "required"`` or ``{"type": "function", ...}``;
Anthropic ``{"type": "any"}`` or ``{"type": "tool", ...}``) or carries ``x-mock-tool-call: NAME``. The tool
called is ``NAME``, else the forced one, else the first; its arguments are
``responses.schema_example`` of its schema. A ``NAME`` (or a forced name) the request has no tool
for is a 400. Requests whose last message is a tool result (OpenAI ``role: "tool"``; Anthropic
user content with ``tool_result`` blocks; a Responses ``function_call_output`` item) always get
text, so a client's tool loop ends; a request without tools ignores the header.

Like OpenAI, a chat request for a reasoning model (``o1``, ``o3``, ``o4-mini``, ``gpt-5``...) that
sets ``max_tokens`` is a 400 ``unsupported_parameter`` (``max_completion_tokens`` is the field).

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
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ext_proc.mock import responses as r
from ext_proc.mock.cassettes import Cassette, load_cassettes, match_key
from ext_proc.mock.cassettes import index as cassette_index
from ext_proc.mock.http import BackgroundServer, Reply, Request, listen, serve_in_thread, serve_until_signalled
from ext_proc.mock.http import Connection as _Connection

# Plumbing re-exported for the callers that import it from here.
from ext_proc.mock.http import stop_server as stop_server
from ext_proc.mock.http import wire as wire
from ext_proc.server.listen import port as port_number

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


class BadControl(ValueError):
    """An ``x-mock-*`` header with a value that is not a number in range."""


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
    "/v1/responses": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic",
}
_AZURE_RESPONSES = "/openai/v1/responses"  # Azure's v1 surface: no deployment in the path, no api-version
_AZURE = "/openai/"
_AZURE_DEPLOYMENTS = "/openai/deployments/"
_AZURE_OPERATIONS = {  # what follows /openai/deployments/{deployment}/ -> the OpenAI route
    "chat/completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
# The routes by their end, longest first: a provider behind a base path (a policy endpoint
# "https://gw/vllm/v1", or "…/v1beta/openai" as an SDK base URL) is served under any prefix.
_ENDINGS = sorted(((route.removeprefix("/v1"), route) for route in _STYLE), key=lambda pair: -len(pair[0]))


def _routed(path: str) -> str:
    """The route ``path`` asks for, whatever base path comes before it."""
    if path in _STYLE or path.startswith((_AZURE_DEPLOYMENTS, _AZURE_RESPONSES)):
        return path
    for start in (_AZURE_DEPLOYMENTS, _AZURE_RESPONSES):
        cut = path.find(start)
        if cut > 0:
            return path[cut:]
    return next((route for ending, route in _ENDINGS if path.endswith(ending)), path)


_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_REASONING = re.compile(r"(o\d|gpt-5)(\b|-)")  # OpenAI models that take max_completion_tokens only

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
            "/v1/responses": self._responses,
            "/v1/messages": self._messages,
            "/v1/messages/count_tokens": self._count_tokens,
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
                "received_at": req.received_at,
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
        path = _routed(path)
        style = _STYLE.get(path) or ("azure" if path.startswith(_AZURE) else "openai")
        if self._keys and not path.startswith("/_mock/"):
            denied = self._check_key(style, req.headers)
            if denied is not None:
                return denied
        if style == "anthropic" and not _header(req.headers, b"anthropic-version"):
            return self._error(style, 400, None, message="anthropic-version: header is required")
        controls = req.controls
        if controls:
            controls = _scoped(controls, style)
        try:
            knobs = _Knobs.parse(controls, self.options)
        except BadControl as exc:
            return self._error(style, 400, knobs=None, message=str(exc))

        forced = controls.get("cassette")
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
        if path == _AZURE_RESPONSES:
            route = self._responses
        if route is None:
            if style != "azure":
                return self._error(
                    "openai", 404, knobs, message=f"Invalid URL ({req.method} {path})", code="unknown_url"
                )
            deployment, target = _azure_route(path, req.query)
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
        self, style: str, status: int, knobs: _Knobs | None, *, message: str | None = None, code: str | None = None,
        param: str | None = None,
    ) -> Reply:
        n = self._next_id()
        if style == "anthropic":
            body = r.anthropic_error(status, message)
            headers = b"request-id: req_mock%016x\r\n" % n
        elif style == "azure" and r.is_azure_gateway_error(status):
            body = r.azure_error(status, message)
            headers = b"apim-request-id: req_mock%016x\r\n" % n
        else:
            body = r.openai_error(status, message, code=code, param=param)
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
                latency=knobs.latency,
                ttft=knobs.ttft,
                inter_chunk=knobs.inter_chunk,
                cut_after=knobs.cut_after,
                clean_end=knobs.clean_end,
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
                latency=knobs.latency,
                ttft=knobs.ttft,
                inter_chunk=knobs.inter_chunk,
                cut_after=knobs.cut_after,
                clean_end=knobs.clean_end,
            )
        assert body is not None
        return Reply(200, body, _JSON_CT, headers, latency=knobs.latency, cut_after=knobs.cut_after)

    def _chat(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        if "max_tokens" in body and _REASONING.match(str(body.get("model") or "")):
            return self._error("openai", 400, knobs, code="unsupported_parameter", param="max_tokens", message=(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead."))
        try:
            tool = _tool_to_call(_openai_tools(body), _openai_forced(body), knobs.tool_call, _openai_answered(body))
        except BadControl as exc:
            return self._error("openai", 400, knobs, message=str(exc), code="invalid_value")
        n = self._next_id()
        gen = r.generate(
            body,
            id=f"chatcmpl-mock{n:016x}",
            created=int(time.time()),
            chunks=knobs.chunks,
            prompt_tokens=r.chat_prompt_tokens(body.get("messages")),
            tool=None if tool is None else r.ToolCall.build(f"call_mock{n:016x}", *tool),
            reply=knobs.reply,
        )
        # The account the key belongs to, as OpenAI names it on every answer.
        headers = b"x-request-id: req_mock%016x\r\nopenai-organization: user-mock\r\nopenai-project: proj_mock\r\n" % n
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

    def _responses(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        try:
            tool = _tool_to_call(_responses_tools(body), _responses_forced(body), knobs.tool_call,
                                 _responses_answered(body))
        except BadControl as exc:
            return self._error("openai", 400, knobs, message=str(exc), code="invalid_value")
        n = self._next_id()
        gen = r.generate(
            body,
            id=f"resp_mock{n:016x}",
            created=int(time.time()),
            chunks=knobs.chunks,
            prompt_tokens=r.responses_input_tokens(body),
            tool=None if tool is None else r.ToolCall.build(f"call_mock{n:016x}", *tool),
            reply=knobs.reply,
        )
        headers = b"x-request-id: req_mock%016x\r\n" % n
        if body.get("stream") is True:
            return self._stream_or_json(knobs, headers, None, r.responses_events(gen, body))
        return self._stream_or_json(knobs, headers, r.responses_json(gen, body), None)

    def _count_tokens(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        headers = b"request-id: req_mock%016x\r\n" % self._next_id()
        tokens = r.chat_prompt_tokens(body.get("messages"), body.get("system"))
        return self._stream_or_json(knobs, headers, orjson.dumps({"input_tokens": tokens}), None)

    def _messages(self, body: dict[str, Any], knobs: _Knobs) -> Reply:
        try:
            tool = _tool_to_call(
                _anthropic_tools(body), _anthropic_forced(body), knobs.tool_call, _anthropic_answered(body)
            )
        except BadControl as exc:
            return self._error("anthropic", 400, knobs, message=str(exc))
        n = self._next_id()
        gen = r.generate(
            body,
            id=f"msg_mock{n:016x}",
            created=0,
            chunks=knobs.chunks,
            prompt_tokens=r.chat_prompt_tokens(body.get("messages"), body.get("system")),
            tool=None if tool is None else r.ToolCall.build(f"toolu_mock{n:016x}", *tool),
            reply=knobs.reply,
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
    clean_end: bool = False
    tool_call: str | None = None  # x-mock-tool-call: the tool to call when the request has tools
    reply: tuple[str, ...] | None = None  # x-mock-reply: the answer's text, as these deltas

    @classmethod
    def parse(cls, controls: Mapping[str, str], options: Options) -> _Knobs:
        if not controls:
            return _defaults(options)
        status = _number(controls, "status", 0, integer=True) or None
        if status is not None and not 400 <= status <= 599:
            status = None
        cut = controls.get("cut-after")
        truncate = controls.get("truncate-after")
        if truncate is not None:
            return replace(cls.parse({k: v for k, v in controls.items() if k != "truncate-after"}, options),
                           cut_after=_number(controls, "truncate-after", 0, integer=True), clean_end=True)
        return cls(
            status=status,
            latency=_number(controls, "latency-ms", options.latency_ms) / 1000,
            ttft=_number(controls, "ttft-ms", options.ttft_ms) / 1000,
            inter_chunk=_number(controls, "inter-chunk-ms", options.inter_chunk_ms) / 1000,
            chunks=_number(controls, "chunks", options.chunks, integer=True),
            cut_after=None if cut is None else _number(controls, "cut-after", 0, integer=True),
            tool_call=controls.get("tool-call") or None,
            reply=tuple(piece for piece in controls["reply"].split("|") if piece) if "reply" in controls else None,
        )


_DEFAULTS: dict[Options, _Knobs] = {}


def _defaults(options: Options) -> _Knobs:
    knobs = _DEFAULTS.get(options)
    if knobs is None:
        knobs = _DEFAULTS[options] = _Knobs(
            None, options.latency_ms / 1000, options.ttft_ms / 1000, options.inter_chunk_ms / 1000, options.chunks, None
        )
    return knobs


_FAMILIES = ("openai-", "anthropic-", "azure-")


def _scoped(controls: Mapping[str, str], style: str) -> Mapping[str, str]:
    """The controls for an endpoint of ``style``: its scoped ones over the unscoped ones."""
    if not any(name.startswith(_FAMILIES) for name in controls):
        return controls
    out = {name: value for name, value in controls.items() if not name.startswith(_FAMILIES)}
    prefix = style + "-"
    out.update({name[len(prefix):]: value for name, value in controls.items() if name.startswith(prefix)})
    return out


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


def _azure_route(path: str, query: str) -> tuple[str | None, str | None]:
    """``(deployment, OpenAI path)`` of an Azure OpenAI request; no path: unknown path or api-version."""
    if not path.startswith(_AZURE_DEPLOYMENTS):
        return None, None
    deployment, _, operation = path[len(_AZURE_DEPLOYMENTS) :].partition("/")
    target = _AZURE_OPERATIONS.get(operation)
    version = urllib.parse.parse_qs(query).get("api-version", ())
    if not deployment or target is None or len(version) != 1 or not _API_VERSION.fullmatch(version[0]):
        return None, None
    return urllib.parse.unquote(deployment), target


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON


# -- tool calls: the request's tools (name -> JSON schema, in order) and what it forces
# (None: nothing; "": any tool; else that tool's name)


def _openai_tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    out: dict[str, Any] = {}
    if isinstance(tools, list):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                out.setdefault(function["name"], function.get("parameters"))
    return out


def _openai_forced(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if choice == "required":
        return ""
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        return name if isinstance(name, str) else ""
    return None


def _openai_answered(body: dict[str, Any]) -> bool:
    """Whether the last message is a tool result (``role: "tool"``, or legacy ``"function"``)."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    return isinstance(last, dict) and last.get("role") in ("tool", "function")


def _responses_tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    out: dict[str, Any] = {}
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
                out.setdefault(tool["name"], tool.get("parameters"))
    return out


def _responses_forced(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if choice == "required":
        return ""
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        return name if isinstance(name, str) else ""
    return None


def _responses_answered(body: dict[str, Any]) -> bool:
    """Whether the last input item is a function call's output."""
    items = body.get("input")
    last = items[-1] if isinstance(items, list) and items else None
    return isinstance(last, dict) and last.get("type") == "function_call_output"


def _anthropic_tools(body: dict[str, Any]) -> dict[str, Any]:
    tools = body.get("tools")
    out: dict[str, Any] = {}
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str) and "input_schema" in tool:
                out.setdefault(tool["name"], tool["input_schema"])
    return out


def _anthropic_forced(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "any":
        return ""
    if choice.get("type") == "tool":
        name = choice.get("name")
        return name if isinstance(name, str) else ""
    return None


def _anthropic_answered(body: dict[str, Any]) -> bool:
    """Whether the last message is a user turn with ``tool_result`` blocks."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) and last.get("role") == "user" else None
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def _tool_to_call(
    tools: dict[str, Any], forced: str | None, named: str | None, answered: bool
) -> tuple[str, Any] | None:
    """``(name, schema)`` of the tool to call, or None to answer text; BadControl for an unknown name."""
    if not tools or answered or (forced is None and named is None):
        return None
    name = named or forced or next(iter(tools))
    if name not in tools:
        source = "x-mock-tool-call" if named else "tool_choice"
        raise BadControl(f"{source}: the request has no tool named {name!r}")
    return name, tools[name]


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
# Serving a provider (the plumbing is ``ext_proc.mock.http``)


async def start_server(
    host: str = "127.0.0.1", port: int = 0, options: Options | None = None, *, provider: MockProvider | None = None
) -> asyncio.Server:
    """Listen on ``host:port`` (0: a free port; see ``server.sockets``) and serve ``provider``."""
    return await listen(provider or MockProvider(options), host, port)


def serve_in_background(
    options: Options | None = None, *, host: str = "127.0.0.1", port: int = 0, provider: MockProvider | None = None
) -> BackgroundServer:
    """Start a provider on a daemon thread; call ``.close()`` when done."""
    return serve_in_thread(provider or MockProvider(options), host=host, port=port)


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
    parser.add_argument("--port", type=port_number, default=18080, help="port to listen on (default: %(default)s)")
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


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully; the process exit code."""
    try:
        provider = MockProvider(options_from_args(args))
    except ValueError as exc:  # CassetteError
        print(f"mock-provider: {exc}", file=sys.stderr)
        return 2
    serve_until_signalled(
        provider, args.host, args.port, lambda url: print(f"mock-provider listening on {url}", flush=True)
    )
    return 0


if __name__ == "__main__":  # python -m ext_proc.mock.provider
    _parser = argparse.ArgumentParser(prog="mock-provider")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
