"""The per-request state machine.

Theory of operation. Envoy opens one processing stream per HTTP request and sends, in order:
the request headers, the buffered request body, the response headers, then the response body
(buffered, or chunk by chunk once we switched a successful stream to STREAMED). The session
answers each with one action. (The request headers message cannot be skipped to save a round
trip: Envoy would then choose the route before Tollway has read the body.)

``REQUEST_HEADERS``  recognise the client API from the path; unknown endpoints and requests
                     without a body are answered at once. Ask the provider for an uncompressed
                     response (we must read it), and drop routing headers a client may forge.
``REQUEST_BODY``     decode and check the JSON (bad input is answered with a 400 in the
                     client's error format, the provider is never contacted), make OpenAI
                     streams report usage, choose the provider and label the request so that
                     Envoy re-matches the route to that provider's cluster.
``RESPONSE_HEADERS`` note the status; switch the body to STREAMED only for a successful SSE
                     response, so errors stay buffered and readable.
``RESPONSE_BODY``    read usage (JSON, OpenAI SSE, Anthropic SSE); in a stream whose usage we
                     asked for, remove the extra usage chunk the client did not ask for. Give
                     Envoy's own plain-text error replies the client's JSON error format.
``DONE``             the record of the request is emitted once, as an effect, when the response
                     ends or the stream closes early (client gone, upstream reset).

An event that cannot happen in the current phase raises :class:`ProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ext_proc.core import upstream
from ext_proc.core.actions import CONTINUE, Action, Continue, Effect, EmitRecord, Respond
from ext_proc.core.errors import ClientError, plain_error
from ext_proc.core.events import (
    Event,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    StreamClosed,
)
from ext_proc.core.meter import Accountant, Meter
from ext_proc.llm import apis
from ext_proc.llm.sse import SSEDecoder, SSEEvent
from ext_proc.llm.translate import anthropic_to_openai, openai_to_anthropic
from ext_proc.llm.usage import Usage, apply_anthropic, apply_openai
from ext_proc.policy import decide
from ext_proc.policy.compiled import CompiledPolicy, Principal, Target

ROUTE_HEADER = "x-tollway-cluster"  # Envoy routes to the cluster this header names
STREAM_HEADER = "x-tollway-stream"  # Envoy picks the streaming route (its first-byte timeout)
# Headers only Tollway may set on the way to the provider; a client's copy is dropped, as is
# any other x-tollway-* header the client sent (identity is Tollway's to establish).
_UNTRUSTED = ("accept-encoding", ROUTE_HEADER)
_INTERRUPTED = ClientError(502, "stream_interrupted", "The provider's stream ended before the response was complete.")


class Phase(enum.Enum):
    REQUEST_HEADERS = "request_headers"
    REQUEST_BODY = "request_body"
    RESPONSE_HEADERS = "response_headers"
    RESPONSE_BODY = "response_body"
    DONE = "done"


class ProtocolError(Exception):
    """Envoy sent a message that cannot happen in the session's phase (an internal fault)."""


class Session:
    """One HTTP request's processing: feed it events, send Envoy the actions it returns.

    ``effects`` collects what the server must do after answering (drain it after each event).
    """

    __slots__ = (
        "_chain",
        "_decoder",
        "_gunzip_request",
        "_path",
        "_policy",
        "_served_style",
        "_sidecar_workload",
        "_stream_reader",
        "_strip_usage_chunk",
        "_target",
        "_told",
        "_translation_error",
        "_translator",
        "_usage_headers",
        "api",
        "attempts",
        "complete",
        "effects",
        "error",
        "fallback",
        "meter",
        "model",
        "outcome",
        "phase",
        "principal",
        "provider",
        "request_id",
        "served_model",
        "started",
        "status",
        "stream",
        "ttft",
        "usage",
    )

    def __init__(
        self,
        policy: CompiledPolicy | None = None,
        workload: str | None = None,
        accountant: Accountant | None = None,
        usage_headers: bool = False,
    ) -> None:
        self._usage_headers = usage_headers  # add x-tollway-*-tokens / -cost-usd to buffered answers
        self._policy = policy  # None: open mode, no identity or access control (issue-3 behaviour)
        self._sidecar_workload = workload
        self._target: Target | None = None  # the target that serves (for a chain: once known)
        self._chain: tuple[Target, ...] = ()  # the targets Envoy may try, in order
        self._served_style = "openai"  # the wire format of the provider's answer
        self._translator: openai_to_anthropic.StreamTranslator | anthropic_to_openai.StreamTranslator | None = None
        self._translation_error: str | None = None
        self._told: tuple[tuple[str, str], ...] = ()  # provider/model/attempts headers for a buffered answer
        self.attempts: int | None = None
        self.fallback = False
        self.meter = Meter(accountant)
        self._path = ""
        self.principal: Principal | None = None
        self.phase = Phase.REQUEST_HEADERS
        self.effects: list[Effect] = []
        self.api: apis.ClientAPI | None = None
        self.request_id: str | None = None
        self.model: str | None = None
        self.served_model: str | None = None
        self.provider: str | None = None
        self.stream = False
        self.status: int | None = None
        self.started = 0
        self.ttft: int | None = None
        self.usage = Usage()
        self.outcome: str | None = None
        self.error: str | None = None
        self.complete = False
        self._gunzip_request = False
        self._strip_usage_chunk = False
        self._decoder: SSEDecoder | None = None
        self._stream_reader: Callable[[SSEEvent], bool] | None = None

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, event: Event) -> Action | None:
        """Process one event; returns the answer for Envoy (None for :class:`StreamClosed`)."""
        phase = self.phase
        if isinstance(event, RequestHeaders) and phase is Phase.REQUEST_HEADERS:
            return self._request_headers(event)
        if isinstance(event, RequestBody) and phase is Phase.REQUEST_BODY:
            return self._request_body(event)
        if isinstance(event, ResponseHeaders) and phase is not Phase.RESPONSE_BODY and phase is not Phase.DONE:
            # Envoy may answer before the request body was processed (e.g. its own 413).
            return self._response_headers(event)
        if isinstance(event, ResponseBody) and phase is Phase.RESPONSE_BODY:
            return self._response_body(event)
        if isinstance(event, StreamClosed):
            if not self.started:
                self.started = event.at
            if phase is not Phase.DONE:
                self._finish(event.at, "incomplete")
            return None
        raise ProtocolError(f"unexpected {type(event).__name__} in phase {phase.value}")

    # -- request ----------------------------------------------------------------------------

    def _request_headers(self, event: RequestHeaders) -> Action:
        headers = event.headers
        rejected = self._open(headers, event.at, event.end_of_stream)
        if rejected is not None:
            return rejected
        assert self.api is not None
        remove = _UNTRUSTED + tuple(
            h for h in headers if (h.startswith("x-tollway-") and h != ROUTE_HEADER) or h == upstream.RETRIES_HEADER
        )
        if self._policy is not None:
            try:
                self.principal = decide.identify(self._policy, headers, event.attributes, self._sidecar_workload)
            except ClientError as error:
                return self._reject(error, self.api.style, event.at)
            remove += tuple(h for h in decide.CREDENTIAL_HEADERS if h in headers)
        self.phase = Phase.REQUEST_BODY
        return Continue(remove_headers=remove)

    def _open(self, headers: Mapping[str, str], at: int, end_of_stream: bool) -> Respond | None:
        """Recognise the request from its head; a :class:`Respond` when it must be refused."""
        self.started = at
        self.request_id = headers.get("x-request-id")
        path = self._path = headers.get(":path", "")
        api = apis.match(path) if headers.get(":method") == "POST" else None
        if api is None:
            method = headers.get(":method", "?")
            shown = path.partition("?")[0][:200]
            error = ClientError(404, "unknown_endpoint", f"Tollway does not serve {method} {shown}.")
            return self._reject(error, apis.error_style(path), at)
        self.api = api
        if end_of_stream:
            error = ClientError(400, "invalid_body", "The request body is empty; expected a JSON object.")
            return self._reject(error, api.style, at)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            self._gunzip_request = True
        elif encoding != "identity":
            error = ClientError(415, "unsupported_encoding", f"Unsupported content-encoding {encoding!r}.")
            return self._reject(error, api.style, at)
        return None

    def _request_body(self, event: RequestBody) -> Action:
        api = self.api
        assert api is not None
        body = event.body
        replaced = False
        try:
            if self._gunzip_request:
                body = apis.gunzip(body)
                replaced = True
            request = apis.parse_request(api, body)
        except ClientError as error:
            return self._reject(error, api.style, event.at)
        self.model = request.model
        self.stream = request.stream
        if request.stream and api.stream_usage_option:
            try:
                self._strip_usage_chunk = apis.ensure_stream_usage(request)
            except ClientError as error:
                return self._reject(error, api.style, event.at)
            replaced = replaced or self._strip_usage_chunk
        headers: list[tuple[str, str]] = []
        metadata: tuple[tuple[str, str], ...] = ()
        credential = None
        payload = request.payload
        if self._policy is None:
            self.provider = api.provider
            self._served_style = api.style
            cluster = api.provider
            self.meter.before_send(api.name, payload, request.model)
        else:
            try:
                chain = self._route(api, request)
            except ClientError as error:
                return self._reject(error, api.style, event.at)
            self._chain = chain
            first = self._target = chain[0]
            self._served_style = "anthropic" if first.provider.kind == "anthropic" else "openai"
            self.provider = first.provider.name
            cluster = decide.cluster_name(chain)
            if len(chain) == 1:
                # One target: this filter rewrites the request for it and adds its key.
                credential = first.provider
                try:
                    payload, path = upstream.prepare(api, request.payload, first, self._path)
                except ClientError as error:
                    return self._reject(error, api.style, event.at)
                if path is not None:
                    headers.append((":path", path))
                replaced = replaced or payload is not request.payload or payload.get("model") != request.model
            else:
                # A chain: each attempt's own filter rewrites the request for the target Envoy picked.
                assert self.principal is not None
                metadata = (
                    (upstream.TARGETS, upstream.encode_chain(chain)), (upstream.CLIENT_PATH, self._path),
                    (upstream.ALIAS, request.model), (upstream.TEAM, self.principal.team),
                )
                headers.append((upstream.RETRIES_HEADER, str(len(chain) - 1)))
        self.phase = Phase.RESPONSE_HEADERS
        headers.insert(0, (ROUTE_HEADER, cluster))
        if request.stream:
            headers.append((STREAM_HEADER, "1"))
        if not replaced:
            return Continue(
                set_headers=tuple(headers), clear_route_cache=True, credential=credential, metadata=metadata
            )
        if payload is not request.payload or payload.get("model") != request.model or self._strip_usage_chunk:
            body = orjson.dumps(payload)
        headers.append(("content-length", str(len(body))))
        remove = ("content-encoding",) if self._gunzip_request else ()
        return Continue(
            set_headers=tuple(headers), remove_headers=remove, body=body, clear_route_cache=True, credential=credential,
            metadata=metadata,
        )

    def _route(self, api: apis.ClientAPI, request: apis.ParsedRequest) -> tuple[Target, ...]:
        """Count the prompt, then choose the targets (one, or a fallback chain for an alias)."""
        policy, principal = self._policy, self.principal
        assert policy is not None and principal is not None
        alias = policy.alias(request.model)
        if alias is None:
            target = decide.target_for(policy, principal, api, request.model)
            self.meter.before_send(api.name, request.payload, target.upstream_model)
            return (target,)
        counted_as = alias.plan_for(principal.team).targets[0].upstream_model
        self.meter.before_send(api.name, request.payload, counted_as)
        estimate = self.meter.estimate
        return decide.route(policy, principal, api, request.model, estimate.tokens if estimate else None)

    # -- response ---------------------------------------------------------------------------

    def _response_headers(self, event: ResponseHeaders) -> Action:
        headers = event.headers
        if not self.started:  # Envoy answered before Tollway saw the request (e.g. its own 413)
            self.started = event.at
        try:
            self.status = int(headers.get(":status", ""))
        except ValueError:
            self.status = None
        told = self._served(event.attributes)
        if event.end_of_stream:
            self._finish(event.at, "ok" if self.status and self.status < 400 else "error")
            return Continue(set_headers=told) if told else CONTINUE
        self.phase = Phase.RESPONSE_BODY
        content_type = headers.get("content-type", "")
        if (
            self.stream
            and self.status is not None
            and 200 <= self.status < 300
            and content_type.lower().startswith("text/event-stream")
        ):
            self._decoder = SSEDecoder()
            served, client = self._served_style, self.api.style if self.api else "openai"
            self._stream_reader = self._read_anthropic_event if served == "anthropic" else self._read_openai_event
            if served != client:
                model = self._target.upstream_model if self._target else None
                self._translator = (
                    openai_to_anthropic.StreamTranslator(model=model, include_usage=not self._strip_usage_chunk)
                    if client == "openai"
                    else anthropic_to_openai.StreamTranslator(model=model)
                )
            return Continue(set_headers=told, stream_response=True)
        # Buffered: the head is held until the body is read; the answer to the body tells it all.
        self._told = told
        return CONTINUE

    def _served(self, attributes: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """Learn which target answered (and after how many attempts); the headers telling the client."""
        chain = self._chain
        count = attributes.get(upstream.ATTEMPTS_ATTRIBUTE)
        if count is not None and count.isdigit():
            self.attempts = int(count)
        if len(chain) > 1:
            position = upstream.slot(attributes)
            if position is not None and position < len(chain):
                self._target = chain[position]
                self.provider = chain[position].provider.name
                self.fallback = position > 0
            else:  # Envoy answered itself (no endpoint, no cluster): no provider served
                self._target = None
                self.provider = None
        target = self._target
        if target is None:
            self._served_style = self.api.style if self.api else "openai"
            return ()
        self._served_style = "anthropic" if target.provider.kind == "anthropic" else "openai"
        told = [("x-tollway-provider", target.provider.name), ("x-tollway-model", target.upstream_model)]
        if self.attempts is not None:
            told.append(("x-tollway-attempts", str(self.attempts)))
        return tuple(told)

    def _response_body(self, event: ResponseBody) -> Action:
        if self._decoder is not None:
            return self._stream_chunk(event)
        # Buffered: the whole body in one message.
        action = self._read_buffered(event.body)
        ok = bool(self.status and self.status < 400)
        self._finish(event.at, "ok" if ok else "error")
        headers: list[tuple[str, str]] = []
        if self._usage_headers and ok:
            # The response head is still held (buffered body): tell the client its usage and cost.
            record = self.effects[-1].record
            cost = record["cost_usd_micros"]
            headers += [(f"x-tollway-{name.replace('_', '-')}", str(record[name]))
                        for name in ("input_tokens", "output_tokens") if record[name] is not None]
            if cost is not None:
                headers.append(("x-tollway-cost-usd", f"{cost // 1_000_000}.{cost % 1_000_000:06d}"))
        if not headers and not self._told:
            return action
        return Continue(set_headers=self._told + action.set_headers + tuple(headers),
                        remove_headers=action.remove_headers, body=action.body)

    def _read_buffered(self, body: bytes) -> Continue:
        status = self.status or 0
        style = self.api.style if self.api else "openai"
        served = self._served_style
        compressed = body[:2] == b"\x1f\x8b"
        try:
            if compressed:
                body = apis.gunzip(body)
            payload = orjson.loads(body)
        except (orjson.JSONDecodeError, ClientError):
            payload = None
        new: bytes | None = None
        if status >= 400:
            if not isinstance(payload, dict):
                # Envoy's own plain-text reply (no healthy upstream, connect failure, timeout, 413):
                # give the client its SDK's error format, keeping the status.
                error = plain_error(status, body)
                self.error = error.code
                new = error.body(style)
            else:
                self.error = _error_code(payload)
                if served != style:
                    translate = openai_to_anthropic.error if style == "openai" else anthropic_to_openai.error
                    new = translate(status, body)
        elif isinstance(payload, dict):
            if isinstance(payload.get("model"), str):
                self.served_model = payload["model"]
            if served == "anthropic":
                apply_anthropic(self.usage, payload.get("usage"))
            else:
                apply_openai(self.usage, payload.get("usage"))
            if served != style:
                try:
                    answer = (openai_to_anthropic.response(payload) if style == "openai"
                              else anthropic_to_openai.response(payload))
                except Exception:  # a malformed provider answer: the client gets a clear 502
                    self.status = 502
                    self.error = "untranslatable_response"
                    new = ClientError(502, "untranslatable_response",
                                      "The provider's answer could not be translated.").body(style)
                    return Continue(set_headers=((":status", "502"), ("content-type", "application/json"),
                                                 ("content-length", str(len(new)))), body=new)
                new = orjson.dumps(answer)
        if new is None:
            return CONTINUE
        return Continue(
            set_headers=(("content-type", "application/json"), ("content-length", str(len(new)))),
            remove_headers=("content-encoding",) if compressed else (),
            body=new,
        )

    def _stream_chunk(self, event: ResponseBody) -> Action:
        decoder = self._decoder
        reader = self._stream_reader
        assert decoder is not None and reader is not None
        if self.ttft is None and event.body:
            self.ttft = event.at - self.started
        # Only complete events go to the client; the bytes of an unfinished one wait for the next
        # chunk (so an error event appended to a cut stream always starts on an event boundary).
        events = decoder.feed(event.body)
        tail = _whole(decoder.flush()) if event.end_of_stream else []
        translator = self._translator
        if translator is not None:
            out = b"".join([self._translate(sse, translator) for sse in events + tail])
        else:
            kept = [sse.raw for sse in events if not reader(sse)]
            tail_kept = [sse.raw for sse in tail if not reader(sse)]
            out = b"".join(kept + tail_kept if self.complete else kept)
        if event.end_of_stream:
            if translator is not None and self._translation_error is None:
                if isinstance(translator, anthropic_to_openai.StreamTranslator) and translator.complete:
                    self.complete = True  # finish reason and usage arrived: only [DONE] is missing
                if self.complete:
                    out += translator.end()
            if self._translation_error is not None:
                self._finish(event.at, "error")
            else:
                if not self.complete:
                    # Never a clean end for a cut answer: the client's SDK raises on this event.
                    out += _error_event(self.api.style if self.api else "openai")
                    self.error = self.error or _INTERRUPTED.code
                self._finish(event.at, "ok" if self.complete else "incomplete")
        return Continue(body=out) if out != event.body else CONTINUE

    def _translate(
        self, sse: SSEEvent, translator: openai_to_anthropic.StreamTranslator | anthropic_to_openai.StreamTranslator
    ) -> bytes:
        """Account for one provider event, and give the client its translation."""
        data = sse.data
        if not data or self._translation_error is not None:
            return b""
        try:
            return self._translate_event(sse, data, translator)
        except Exception as exc:  # an answer the client's API cannot express: end its stream with an error
            self._translation_error = self.error = "untranslatable_stream"
            message = getattr(exc, "message", None) or "The provider's stream could not be translated."
            return translator.error(f"Tollway could not translate the provider's stream: {message}")

    def _translate_event(
        self, sse: SSEEvent, data: bytes,
        translator: openai_to_anthropic.StreamTranslator | anthropic_to_openai.StreamTranslator,
    ) -> bytes:
        if isinstance(translator, anthropic_to_openai.StreamTranslator):  # an OpenAI provider
            if data == b"[DONE]":
                self.complete = True
                return translator.done()
            chunk = _loads_dict(data)
            if chunk is None:
                return b""
            self.meter.keep(data)
            self._note_openai(chunk, self.served_model is None)
            return translator.chunk(chunk)
        payload = _loads_dict(data)
        if payload is None:
            return b""
        name = sse.event or str(payload.get("type", ""))
        if name == "message_stop":
            self.complete = True
        elif name == "content_block_delta":
            self.meter.keep(data)
        else:
            self._note_anthropic(name, payload)
        return translator.event(name, payload)

    def _read_openai_event(self, sse: SSEEvent) -> bool:
        """Read one OpenAI stream event; True when it is the usage chunk we must hide."""
        data = sse.data
        if not data:
            return False
        if data == b"[DONE]":
            self.complete = True
            return False
        self.meter.keep(data)
        first = self.served_model is None
        if not first and (b'"usage"' not in data or b'"usage":null' in data) and b'"error"' not in data:
            return False
        chunk = _loads_dict(data)
        return chunk is not None and self._note_openai(chunk, first)

    def _note_openai(self, chunk: dict[str, Any], first: bool) -> bool:
        if first and isinstance(chunk.get("model"), str):
            self.served_model = chunk["model"]
        if "error" in chunk:
            self.error = _error_code(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            apply_openai(self.usage, usage)
            return self._strip_usage_chunk and chunk.get("choices") == []
        return False

    def _read_anthropic_event(self, sse: SSEEvent) -> bool:
        """Read one Anthropic stream event (usage lives in message_start and message_delta)."""
        name = sse.event
        if name == "message_stop":
            self.complete = True
            return False
        if name == "content_block_delta":
            self.meter.keep(sse.data)
            return False
        if name not in ("message_start", "message_delta", "error") or not sse.data:
            return False
        payload = _loads_dict(sse.data)
        if payload is not None:
            self._note_anthropic(name, payload)
        return False

    def _note_anthropic(self, name: str, payload: dict[str, Any]) -> None:
        if name == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self.served_model = message["model"]
                apply_anthropic(self.usage, message.get("usage"))
        elif name == "message_delta":
            apply_anthropic(self.usage, payload.get("usage"))
        elif name == "error":
            self.error = _error_code(payload)

    # -- endings ----------------------------------------------------------------------------

    def _reject(self, error: ClientError, style: str, at: int) -> Respond:
        self.status = error.status
        self.error = error.code
        self._finish(at, "rejected")
        return Respond(error.status, error.body(style))

    def _finish(self, at: int, outcome: str) -> None:
        self.phase = Phase.DONE
        self.outcome = outcome
        record = self.record(at)
        if outcome != "rejected":
            target = self._target
            kind = target.provider.kind if target else (self.api.provider if self.api else None)
            model = self.served_model or (target.upstream_model if target else self.model)
            style = self._served_style
            price = target.price if target else None
            aliases = tuple(name for name in (target.upstream_model if target else None, self.model) if name)
            record.update(self.meter.settle(self.usage, style, self.stream, kind, model, aliases, price))
            for name in ("input_tokens", "output_tokens"):
                record[name] = getattr(self.usage, name)
        else:
            record.update(estimated_input_tokens=None, input_estimated=False, output_estimated=False,
                          cost_usd_micros=None, price_version=None)
        self.effects.append(EmitRecord(record))

    def record(self, at: int) -> dict[str, Any]:
        """The request's log record as of monotonic time ``at`` (nanoseconds)."""
        usage = self.usage
        principal = self.principal
        return {
            "request_id": self.request_id,
            "team": principal.team if principal else None,
            "key_id": principal.key_id if principal else None,
            "workload": principal.workload if principal else None,
            "api": self.api.name if self.api else None,
            "model": self.model,
            "served_model": self.served_model,
            "provider": self.provider,
            "stream": self.stream,
            "status": self.status,
            "outcome": self.outcome,
            "error": self.error,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "attempts": self.attempts,
            "fallback": self.fallback,
            "guardrails": [],  # names of the guardrails that fired (none exist yet)
            "latency_ms": round((at - self.started) / 1e6, 3),
            "ttft_ms": round(self.ttft / 1e6, 3) if self.ttft is not None else None,
        }


def _whole(events: list[SSEEvent]) -> list[SSEEvent]:
    """The events a stream's last bytes hold whole but for their closing blank line (JSON or
    ``[DONE]``), closed properly; a half-received event is dropped, never passed on or counted."""
    out = []
    for sse in events:
        if sse.data == b"[DONE]" or (sse.data and _loads_dict(sse.data) is not None):
            end = b"\r\n\r\n" if b"\r\n" in sse.raw else b"\n\n"  # the stream's own line ends
            out.append(SSEEvent(sse.event, sse.data, sse.raw.rstrip(b"\r\n") + end))
    return out


def _loads_dict(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _error_event(style: str) -> bytes:
    """The in-stream error event a client's SDK raises on (OpenAI: an ``error`` data object)."""
    if style == "anthropic":
        return b"event: error\ndata: " + _INTERRUPTED.body("anthropic") + b"\n\n"
    return b"data: " + _INTERRUPTED.body("openai") + b"\n\n"


def _error_code(payload: dict[str, Any]) -> str | None:
    error = payload.get("error")
    if isinstance(error, dict):
        for key in ("code", "type"):
            if isinstance(error.get(key), str):
                return str(error[key])
    return "provider_error"
