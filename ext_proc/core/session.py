"""The per-request state machine.

Theory of operation. Envoy opens one processing stream per HTTP request and sends, in order:
the request headers, the buffered request body, the response headers, then the response body
(buffered, or chunk by chunk once we switched a successful stream to STREAMED). The session
answers each with one action. (The request headers message cannot be skipped to save a round
trip: Envoy would then choose the route before Tollway has read the body.)

``REQUEST_HEADERS``  the ``head`` hooks of the request steps (:mod:`ext_proc.core.pipeline`):
                     recognise the API, identify the caller; routing headers a client may forge
                     are dropped.
``REQUEST_BODY``     the ``body`` hooks: decode and check the body, access, routing, shared
                     state, the provider's request. A refusal is answered at once in the
                     client's error format, the provider never contacted; otherwise the request
                     is labelled so that Envoy re-matches the route to the chosen cluster.
                     A step may also answer the request itself (a ``Respond``, at either hook:
                     the model list, token counts): the request ends there, recorded ``ok``.
``WAITING``          a step asked shared state (:class:`~ext_proc.core.actions.Ask`); the
                     message stays unanswered until the :class:`~ext_proc.core.events.Answered`
                     event arrives, then the steps go on. If the client leaves meanwhile the
                     request ends there, and a late answer is ignored.
``RESPONSE_HEADERS`` note the status and which target served; the provider's rate-limit headers
                     (its account's) give way to Tollway's; switch the body to STREAMED only
                     for a successful SSE response, so errors stay buffered and readable.
``RESPONSE_BODY``    the answer through the response stages (:mod:`ext_proc.core.response`):
                     usage read, the extra usage event hidden, translation, a cut stream ended
                     with an error event; Envoy's own plain-text errors in the client's format.
``DONE``             the record of the request is emitted once, as an effect, when the response
                     ends or the stream closes early (client gone, upstream reset).

An event that cannot happen in the current phase raises :class:`ProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ext_proc.core import limits, pipeline, upstream
from ext_proc.core.actions import CONTINUE, Action, Ask, Continue, Effect, EmitRecord, Forwarded, Respond, Trace
from ext_proc.core.events import (
    Answered,
    Event,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    StreamClosed,
    Upstream,
)
from ext_proc.core.flow import Flow
from ext_proc.core.meter import Accountant
from ext_proc.core.pipeline import Hook, Pipeline
from ext_proc.core.response import Refused, Stream, complete, error_answer, invalid_answer, whole
from ext_proc.core.steps import ROUTE_HEADER, STREAM_HEADER
from ext_proc.guardrails import texts
from ext_proc.llm import apis, exact, translate
from ext_proc.llm.apis.base import safe_model
from ext_proc.llm.errors import INTERRUPTED, ClientError
from ext_proc.llm.runtime import SYSTEM, Runtime
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.state.rows import IDLE_TIMED_OUT, TRY_TIMED_OUT  # Envoy's reasons for a 504 with no answer

__all__ = ["ROUTE_HEADER", "STREAM_HEADER", "Phase", "ProtocolError", "Session"]

Headers = tuple[tuple[str, str], ...]

# A buffered answer cut after its head: the provider reset it (the client got Envoy's 502) or the
# client left; Envoy tells Tollway the same, so the record keeps the provider's status and blames neither.
ANSWER_INTERRUPTED = "answer_interrupted"
# Envoy's route puts the request's id on every answer (the provider's overwritten) before Tollway reads it.
ENVOYS_REQUEST_ID = "x-tollway-request-id"


class Phase(enum.Enum):
    REQUEST_HEADERS = "request_headers"
    REQUEST_BODY = "request_body"
    WAITING = "waiting"
    RESPONSE_HEADERS = "response_headers"
    RESPONSE_BODY = "response_body"
    DONE = "done"


class ProtocolError(Exception):
    """Envoy sent a message that cannot happen in the session's phase (an internal fault)."""


class Session:
    """One HTTP request's processing: feed it events, send Envoy the actions it returns.

    :meth:`handle` returns the action answering an Envoy message, or an :class:`Ask` for the
    server to run before the message can be answered (its reply comes back as an
    :class:`Answered` event). ``effects`` collects what the server must do after answering
    (drain it after each event).
    """

    __slots__ = (
        "_hidden", "_hooks", "_next", "_pipeline", "_response", "_then", "_told", "_usage_headers", "effects", "flow",
        "phase",
    )

    def __init__(
        self,
        policy: CompiledPolicy | None = None,
        workload: str | None = None,
        accountant: Accountant | None = None,
        usage_headers: bool = False,
        *,
        runtime: Runtime = SYSTEM,
        steps: Pipeline = pipeline.DEFAULT,
        trace: bool = False,
        mtls: bool = False,
        stand_ins: Callable[[], Mapping[str, str]] | None = None,
        stand_in_missing: bool = False,
    ) -> None:
        self.flow = Flow(policy, workload, accountant, runtime, mtls)
        self.flow.stand_ins, self.flow.stand_in_missing = stand_ins, stand_in_missing
        if trace:  # the server traces requests: note the decisions as span events
            self.flow.trace = []
        self._usage_headers = usage_headers  # add x-tollway-*-tokens / -cost-usd to buffered answers
        self._pipeline = steps
        self.phase = Phase.REQUEST_HEADERS
        self.effects: list[Effect] = []
        self._hooks: tuple[Hook, ...] = ()  # the hooks of the message being answered
        self._next = 0  # the index of the hook to run after an answer
        self._then: Any = None  # the asking step's continuation
        self._response: Stream | None = None
        self._told: Headers = ()  # provider/model/attempts headers for a buffered answer
        self._hidden: tuple[str, ...] = ()  # the provider's rate-limit headers, removed from a buffered answer

    @property
    def request_id(self) -> str | None:
        return self.flow.request_id

    # Read-only views of the flow, for the server's logs and for tests.
    usage = property(lambda self: self.flow.meter.usage)
    meter = property(lambda self: self.flow.meter)
    provider = property(lambda self: self.flow.provider)
    outcome = property(lambda self: self.flow.outcome)
    error = property(lambda self: self.flow.error)
    streaming = property(lambda self: self._response is not None)  # the answer goes chunk by chunk (SSE)

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, event: Event) -> Action | Ask | None:
        """Process one event; the answer for Envoy, a question for the server, or None
        (:class:`StreamClosed`, or an answer that arrived after the client left)."""
        phase = self.phase
        kind = type(event)
        if kind is ResponseBody and phase is Phase.RESPONSE_BODY:
            return self._response_body(event)  # type: ignore[arg-type]
        if kind is RequestHeaders and phase is Phase.REQUEST_HEADERS:
            return self._request_headers(event)  # type: ignore[arg-type]
        if kind is RequestBody and phase is Phase.REQUEST_BODY:
            self.flow.body = event.body  # type: ignore[union-attr]
            return self._steps(self._pipeline.body, 0, event.at)
        if kind is ResponseHeaders and phase not in (Phase.RESPONSE_BODY, Phase.DONE, Phase.WAITING):
            # Envoy may answer before the request body was processed (e.g. its own 413).
            return self._response_headers(event)  # type: ignore[arg-type]
        if kind is Answered and phase is Phase.WAITING:
            return self._answered(event)  # type: ignore[arg-type]
        if isinstance(event, StreamClosed):
            if not self.flow.started:
                self.flow.started = event.at
            if phase is not Phase.DONE:
                # A client may close as soon as the stream told it the end (the openai SDK does,
                # at [DONE]), before the provider's end of body: an answer complete is no cut.
                flow = self.flow
                whole = self._response is not None and complete(flow) and not flow.stream_failed
                if not whole and phase is Phase.RESPONSE_BODY:
                    if self._response is None:
                        # A buffered answer cut after its head, which Tollway held: the provider reset
                        # it (the client got Envoy's 502, upstream_reset_after_response_started) or the
                        # client left (an answer too long to read failed the stream itself: Envoy's
                        # 500, noted already).
                        flow.error = flow.error or ANSWER_INTERRUPTED
                    elif flow.refused is None:
                        # A stream cut before its end (the provider reset it, or the client left: Envoy
                        # tells Tollway the same): stream_interrupted, as for a stream the provider
                        # ended early, unless the provider said why first (its error event).
                        reader = flow.meter.reader
                        flow.error = flow.error or (reader.error if reader is not None else None) or INTERRUPTED.code
                elif phase is Phase.RESPONSE_HEADERS and flow.forwarded and len(flow.chain) > 1:
                    # The client left while Envoy was trying the chain's targets: which one it was
                    # trying, and after how many tries, only the answer's head says (Envoy tells
                    # nothing when it closes), so the record names no provider rather than the first.
                    flow.target, flow.provider, flow.tries_unknown = None, None, True
                # A stream a guardrail ended: blocked, even if the client left before its end.
                self._finish(event.at, "ok" if whole else "blocked" if flow.refused is not None else "incomplete")
            return None
        if isinstance(event, Answered) and phase is Phase.DONE:  # the client left while the question was out
            late = limits.released(self.flow, event.value)
            if late is not None:
                self.effects.append(late)
            return None
        raise ProtocolError(f"unexpected {type(event).__name__} in phase {phase.value}")

    def refuse(self, error: ClientError, at: int) -> Respond:
        """Refuse the request before its body was read whole (the server stopped reading it: too
        long); answered here in the client's format, recorded as rejected."""
        if self.phase is not Phase.REQUEST_BODY:
            raise ProtocolError(f"a request body refused in phase {self.phase.value}")
        return self._reject(error, at)

    # -- request ----------------------------------------------------------------------------

    def _request_headers(self, event: RequestHeaders) -> Action | Ask:
        flow = self.flow
        flow.started = event.at
        flow.headers = event.headers
        flow.attributes = event.attributes
        flow.request_id = event.headers.get("x-request-id")
        flow.headers_only = event.end_of_stream
        return self._steps(self._pipeline.head, 0, event.at)

    def _steps(self, hooks: tuple[Hook, ...], start: int, at: int) -> Action | Ask:
        """Run the hooks of one message from ``start``; the message's answer, or a question."""
        flow = self.flow
        try:
            for index in range(start, len(hooks)):
                outcome = hooks[index](flow)
                if outcome is None:
                    continue
                if isinstance(outcome, Respond):
                    return self._answered_here(outcome, at)
                return self._wait(hooks, index + 1, outcome)
        except ClientError as error:
            return self._reject(error, at)
        return self._answer_head(at) if hooks is self._pipeline.head else self._answer_body(at)

    def _wait(self, hooks: tuple[Hook, ...], following: int, ask: Ask) -> Ask:
        self._hooks, self._next, self._then = hooks, following, ask.then
        self.phase = Phase.WAITING
        return ask

    def _answered(self, event: Answered) -> Action | Ask:
        hooks, then = self._hooks, self._then
        self.phase = Phase.REQUEST_HEADERS if hooks is self._pipeline.head else Phase.REQUEST_BODY
        try:
            again = then(event.value) if then is not None else None
        except ClientError as error:
            return self._reject(error, event.at)
        if again is not None:
            return self._wait(hooks, self._next, again)
        return self._steps(hooks, self._next, event.at)

    def _answer_head(self, at: int) -> Action:
        self.phase = Phase.REQUEST_BODY
        flow = self.flow
        if flow.trace is not None and flow.principal is not None:
            principal = flow.principal
            flow.note("tollway.identified", at, **{"tollway.team": principal.team,
                                                   "tollway.identity": "key" if principal.key_id else "workload"})
        removes = tuple(flow.remove_headers)
        flow.remove_headers.clear()  # sent: the body's answer carries only what its steps add
        if flow.set_headers:  # a request without a body, routed at its head (open mode's model list)
            self._forwarded(flow.started)
            return Continue(set_headers=tuple(flow.set_headers), remove_headers=removes, clear_route_cache=True)
        return Continue(remove_headers=removes)

    def _answer_body(self, at: int) -> Action:
        flow = self.flow
        request = flow.request
        assert request is not None
        self.phase = Phase.RESPONSE_HEADERS
        self._forwarded(flow.started)
        if flow.trace is not None:
            self._note_decisions(at)
        headers, removes = tuple(flow.set_headers), tuple(flow.remove_headers)
        if not flow.replaced:
            return Continue(set_headers=headers, remove_headers=removes, clear_route_cache=True,
                            credential=flow.credential, metadata=flow.metadata)
        body = exact.dumps(request.payload) if flow.reencode else flow.body
        return Continue(
            set_headers=(*headers, ("content-length", str(len(body)))),
            remove_headers=(*removes, "content-encoding") if flow.gunzip else removes,
            body=body, clear_route_cache=True, credential=flow.credential, metadata=flow.metadata,
        )

    def _forwarded(self, started: int) -> None:
        """The request goes upstream now: the record it gets if Tollway dies before it ends (outcome
        ``incomplete``, error ``service_interrupted``; the input estimated, the output unknown)."""
        flow = self.flow
        flow.forwarded = True
        if flow.request_id is None:
            return
        record = flow.record(started)
        estimate = flow.meter.estimate
        tokens = estimate.tokens if estimate is not None else None
        record.update(
            provider=flow.provider if len(flow.chain) <= 1 else None, outcome="incomplete",
            upstream_model=record["upstream_model"] if len(flow.chain) <= 1 else None,
            error="service_interrupted", latency_ms=None, input_tokens=tokens, output_tokens=None,
            cached_tokens=None, cache_write_tokens=None, reasoning_tokens=None, estimated_input_tokens=tokens,
            input_estimated=tokens is not None, output_estimated=False, cost_usd_micros=None, price_version=None,
        )
        if flow.claims and flow.admission is not None and flow.admission.admitted:
            record["limits"] = [{"limit": name, "unit": unit, "claimed": claim.amount, "used": None}
                                for claim, (name, unit, _) in zip(flow.claims, flow.claim_labels, strict=True)]
        self.effects.append(Forwarded(record))

    # -- response ---------------------------------------------------------------------------

    def _response_headers(self, event: ResponseHeaders) -> Action:
        flow = self.flow
        headers = event.headers
        if not flow.started:  # Envoy answered before Tollway saw the request (e.g. its own 413)
            flow.started = event.at
            if flow.request_id is None:  # (the id its route put on the answer: the client's key to the record)
                flow.request_id = headers.get(ENVOYS_REQUEST_ID)
        try:
            flow.status = int(headers.get(":status", ""))
        except ValueError:
            flow.status = None
        told = self._served(event.upstream, headers) + flow.rate_headers
        hidden = _provider_rate_limits(headers, told)
        if flow.trace is not None:
            flow.note("tollway.response", event.at, **{"http.response.status_code": flow.status or 0,
                                                      "tollway.provider": flow.provider or "",
                                                      "tollway.attempts": flow.attempts or 0})
            if flow.fallback and flow.status is not None and flow.status < 400:  # served by a later target
                flow.note("tollway.fallback", event.at, **{"tollway.provider": flow.provider or "",
                                                          "tollway.attempts": flow.attempts or 0})
        status = flow.status
        if flow.api is not None and status is not None and 200 <= status < 300:
            # A successful status with no answer behind it: no body at all, or a stream request
            # answered with anything but an event stream (its SDK would read zero events and
            # return an empty answer, raising nothing). The client gets a 502 instead.
            media = headers.get("content-type", "")
            if event.end_of_stream:
                return self._not_an_answer(invalid_answer(flow, "no body"), told, event.at)
            if flow.stream and not media.lower().startswith("text/event-stream"):
                shown = media.partition(";")[0].strip()[:60] or "none"
                return self._not_an_answer(invalid_answer(
                    flow, f"content-type {shown!r} to a stream request (not text/event-stream)"), told, event.at)
        if event.end_of_stream:
            self._finish(event.at, "ok" if flow.status and flow.status < 400 else self._failed())
            return Continue(set_headers=told, remove_headers=hidden) if told or hidden else CONTINUE
        self.phase = Phase.RESPONSE_BODY
        coding = headers.get("content-encoding")
        if coding is not None and coding.strip().lower() not in ("", "identity"):
            # Asked for identity, answered otherwise: read whole (see _read_buffered), never as a stream.
            flow.answer_coding = coding.strip().lower()
        elif flow.stream and status is not None and 200 <= status < 300:  # (an event stream: see above)
            self._response = Stream(flow, pipeline.stages_for(flow, stream=True))
            # A stream's length (a buffering proxy's) goes: its events may change on the way (a key
            # or a value taken out, a translation), and Envoy refuses a body longer or shorter than it.
            drop = (*hidden, "content-length") if "content-length" in headers else hidden
            return Continue(set_headers=told, remove_headers=drop, stream_response=True)
        # Buffered: the head is held until the body is read; the answer to the body tells it all.
        self._told, self._hidden = told, hidden
        return CONTINUE

    def _note_decisions(self, at: int) -> None:
        """The request's decisions as span events: the route, the limits, the prompt's guardrails."""
        flow = self.flow
        targets = [f"{t.provider.name}/{t.upstream_model}" for t in flow.chain]
        flow.note("tollway.routed", at, **{"gen_ai.request.model": flow.model or "", "tollway.targets": targets,
                                          "tollway.cluster": flow.cluster or ""})
        admission = flow.admission
        if admission is not None:
            flow.note("tollway.admitted", at, **{"tollway.limits": [name for name, _, _ in flow.claim_labels],
                                                 "tollway.limits.degraded": admission.degraded})
        self._note_triggers(at, "request")

    def _note_triggers(self, at: int, direction: str) -> None:
        guard = self.flow.guard
        if guard is None:
            return
        for trigger in guard.triggers():
            if trigger["direction"] == direction:
                self.flow.note("tollway.guardrail", at, **{f"tollway.guardrail.{k}": v for k, v in trigger.items()})

    def _served(self, seen: Upstream, headers: Mapping[str, str]) -> Headers:
        """Learn which target answered (and after how many tries); the headers telling the client
        (and, translated, the provider's request id under the name the client's SDK reads)."""
        flow = self.flow
        chain = flow.chain
        if seen.attempts is not None:
            flow.attempts = seen.attempts
        if seen.abandoned is not None:
            flow.abandoned = seen.abandoned
        if len(chain) > 1:
            position = seen.slot
            if position is not None and position < len(chain):
                flow.target = chain[position]
                flow.provider = chain[position].provider.name
                flow.fallback = position > 0
            else:  # Envoy answered itself (no endpoint, no cluster): no provider served
                flow.target = None
                flow.provider = None
        target = flow.target
        if target is None or flow.api is None:
            flow.served, flow.pair = flow.api, None
            return ()
        served = flow.served = upstream.served(target, flow.api)
        flow.pair = translate.pair(flow.api, served) if served is not flow.api else None
        told = [("x-tollway-provider", target.provider.name), ("x-tollway-model", target.upstream_model)]
        if flow.attempts is not None:
            told.append(("x-tollway-attempts", str(flow.attempts)))
        if flow.pair is not None:
            given = headers.get(served.request_id_header)
            if given:
                told.append((flow.api.request_id_header, given))
        return tuple(told)

    def _response_body(self, event: ResponseBody) -> Action:
        flow = self.flow
        response = self._response
        if response is not None:  # a stream, chunk by chunk
            if flow.ttft is None and event.body:
                flow.ttft = event.at - flow.started
            out = response.chunk(event.body, event.end_of_stream)
            if event.end_of_stream:
                self._finish(event.at, "blocked" if flow.refused is not None else "error" if flow.stream_failed
                             else "ok" if complete(flow) else "incomplete")
            return Continue(body=out) if out is not None else CONTINUE
        # Buffered: the whole body in one message.
        action = self._read_buffered(event.body)
        ok = bool(flow.status and flow.status < 400)
        self._finish(event.at, "ok" if ok else "blocked" if flow.refused is not None else self._failed())
        headers: list[tuple[str, str]] = []
        if self._usage_headers and ok:
            # The response head is still held (buffered body): tell the client its usage and cost.
            record = next(e.record for e in reversed(self.effects) if isinstance(e, EmitRecord))
            cost = record["cost_usd_micros"]
            headers += [(f"x-tollway-{name.replace('_', '-')}", str(record[name]))
                        for name in ("input_tokens", "output_tokens") if record[name] is not None]
            if cost is not None:
                headers.append(("x-tollway-cost-usd", f"{cost // 1_000_000}.{cost % 1_000_000:06d}"))
        if not headers and not self._told and not self._hidden:
            return action
        sets = self._told + action.set_headers + tuple(headers)
        given = {name for name, _ in sets}  # (the provider's of the same name: replaced, not removed)
        return Continue(set_headers=sets, remove_headers=tuple(h for h in self._hidden if h not in given)
                        + action.remove_headers, body=action.body)

    def _failed(self) -> str:
        """The outcome of an error answer: ``rejected`` when Envoy refused the request itself before
        anything went upstream, for the client's fault (its HTTP/1 codec: the body's framing, a method
        in lower case, headers past its limits: a 4xx or 501), so it counts as no provider's error."""
        flow = self.flow
        status = flow.status or 0
        if not flow.forwarded and flow.target is None and (status < 500 or status == 501):
            return "rejected"
        return "error"

    def _read_buffered(self, body: bytes) -> Continue:
        flow = self.flow
        status = flow.status or 0
        coding = flow.answer_coding
        # (An error's JSON in gzip is read as a buffered answer's is: a stream's only matters when it streams.)
        if coding is not None and (coding != "gzip" or (flow.stream and 200 <= status < 300)) \
                and flow.api is not None and (flow.guard is not None or flow.pair is not None):
            # An answer Tollway cannot read (a coding it does not decode, or a gzip-encoded stream)
            # is one it cannot guard or translate: withheld, fail closed.
            return self._instead(ClientError(
                502, "unreadable_answer", f"The provider answered in content-encoding {coding[:40]!r}, which Tollway "
                f"cannot read (it asks for identity); the answer was withheld."), compressed=True)
        compressed = body[:2] == b"\x1f\x8b"
        if flow.trace is not None and flow.policy is not None and flow.policy.trace_content and not compressed:
            flow.answer_body = body[:MAX_CONTENT]
        if status == 401 and flow.target is not None and flow.api is not None:
            # The provider refused the gateway's own key: not the client's to fix (its Tollway key
            # is fine), and the provider's message may show a piece of that key.
            return self._instead(ClientError(
                502, "provider_authentication_failed",
                f"The provider '{flow.target.provider.name}' refused the key this gateway holds for it (401). Your "
                f"own key is fine: the platform team must fix the provider's key.",
                headers=(("x-should-retry", "false"),)), compressed)
        if status >= 400:
            new = error_answer(flow, status, body)
        else:
            try:
                new = whole(flow, pipeline.stages_for(flow, stream=False), body)
            except Refused as refused:  # untranslatable, or blocked by a guardrail
                return self._instead(refused.error, compressed)
        if new is None:
            return CONTINUE
        return Continue(
            set_headers=(("content-type", "application/json"), ("content-length", str(len(new)))),
            remove_headers=("content-encoding",) if compressed else (),
            body=new,
        )

    def _not_an_answer(self, error: ClientError, told: Headers, at: int) -> Respond:
        """The client's 502 instead of a successful status with no answer behind it, decided at the
        answer's head (its body, if any, is never read); recorded as the provider's error."""
        flow = self.flow
        flow.status, flow.error = error.status, error.code
        self._finish(at, "error")
        assert flow.api is not None
        return Respond(error.status, flow.api.error_body(error), (("content-type", "application/json"), *told))

    def _instead(self, error: ClientError, compressed: bool) -> Continue:
        """The client's error instead of a buffered answer (its status, format and headers)."""
        flow = self.flow
        flow.status, flow.error = error.status, error.code
        assert flow.api is not None
        told = flow.api.error_body(error)
        return Continue(set_headers=((":status", str(error.status)), ("content-type", "application/json"),
                                     ("content-length", str(len(told))), *error.headers),
                        remove_headers=("content-encoding",) if compressed or flow.answer_coding else (), body=told)

    # -- endings ----------------------------------------------------------------------------

    def _answered_here(self, answer: Respond, at: int) -> Respond:
        """A step answered the request itself: nothing goes upstream, nothing is spent."""
        flow = self.flow
        flow.status = answer.status
        flow.local = True
        self._finish(at, "ok")
        return answer

    def _reject(self, error: ClientError, at: int) -> Respond:
        flow = self.flow
        flow.status = error.status
        flow.error = error.code
        if flow.trace is not None:
            self._note_triggers(at, "request")
            flow.note("tollway.refused", at, **{"error.type": error.code, "http.response.status_code": error.status,
                                               "tollway.limit": flow.limit_refused or ""})
        self._finish(at, "rejected")
        api = flow.api or apis.for_errors(flow.path or flow.headers.get(":path", ""), flow.headers)
        if error.headers:
            return Respond(error.status, api.error_body(error), (("content-type", "application/json"), *error.headers))
        return Respond(error.status, api.error_body(error))

    def _finish(self, at: int, outcome: str) -> None:
        flow = self.flow
        self.phase = Phase.DONE
        flow.outcome = outcome
        # A fallback is a request a later target of its chain served: not one that failed there too.
        flow.fallback = flow.fallback and outcome != "error"
        reader = flow.meter.reader
        if reader is not None:
            if reader.model is not None:  # one shaped like a key (a piece of it): the model asked for
                target = flow.target
                flow.served_model = safe_model(reader.model) or (target.upstream_model if target else flow.model)
            flow.error = flow.error or reader.error
        record = flow.record(at)
        if flow.local:
            estimate = flow.meter.estimate
            record.update(input_tokens=0, output_tokens=0, estimated_input_tokens=estimate.tokens if estimate else None,
                          input_estimated=False, output_estimated=False, cost_usd_micros=0, price_version=None)
        elif outcome != "rejected":
            target = flow.target
            kind = target.provider.kind if target else (flow.api.home if flow.api else None)
            model = flow.served_model or (target.upstream_model if target else flow.model)
            price = target.price if target else None
            aliases = tuple(name for name in (target.upstream_model if target else None, flow.model) if name)
            # A stream's text is counted when the provider reported no usage, but not for its error
            # answer (a 503, a 400): it did no work, and nothing is charged for it.
            streamed = flow.stream and (flow.status or 0) < 400
            record.update(flow.meter.settle(streamed, kind, model, aliases, price))
        else:  # refused before anything went upstream: no provider answered, even one already chosen
            record.update(provider=None, upstream_model=None, estimated_input_tokens=None, input_estimated=False,
                          output_estimated=False, cost_usd_micros=None, price_version=None)
        if flow.abandoned is not None or flow.error in (TRY_TIMED_OUT, IDLE_TIMED_OUT):
            _abandoned(flow, record)
        if flow.tries_unknown:  # which targets Envoy tried, and whether a later one was in flight: unknown
            record.update(fallback=None, tries_unknown=True)
        if flow.claims:
            settle = limits.settlement(flow, record)
            if settle is not None:
                self.effects.append(settle)
            if flow.limit_refused is not None:
                record["limit"] = flow.limit_refused
        self.effects.append(EmitRecord(record, self._trace(at) if flow.trace is not None else None))

    def _trace(self, at: int) -> Trace:
        flow = self.flow
        assert flow.trace is not None
        self._note_triggers(at, "response")
        reader = flow.meter.reader
        prompt, answer = content(flow) if flow.policy is not None and flow.policy.trace_content else (None, None)
        headers = flow.headers
        return Trace(flow.started, at, headers.get("traceparent"), headers.get("tracestate"), tuple(flow.trace),
                     tuple(reader.finish_reasons) if reader is not None else (), prompt, answer)

    def record(self, at: int) -> dict[str, Any]:
        """The request's log record as of monotonic time ``at`` (nanoseconds)."""
        return self.flow.record(at)





def _abandoned(flow: Flow, record: dict[str, Any]) -> None:
    """Record the tries Envoy abandoned at the first-byte timeout: sent, with no answer head yet,
    so the provider may have started (and bill) a generation no one read. The earlier tries of a
    chain come from the per-try filter (``tollway.abandoned``); the last one is the request's own
    504 (``upstream_per_try_idle_timeout``), or Envoy's 504 for a request idle too long
    (``stream_idle_timeout``) with a try in flight (Envoy counted one). Their usage is unknown: each has
    the request's input estimate (``input_tokens``, as the prompt was counted before sending) and no cost."""
    tries = upstream.decode_chain(flow.abandoned) if flow.abandoned else []
    if flow.error == TRY_TIMED_OUT or (flow.error == IDLE_TIMED_OUT and flow.attempts and flow.forwarded):
        target = flow.target
        if target is None and flow.chain:
            target = flow.chain[min(max(flow.attempts or 1, 1), len(flow.chain)) - 1]
        if target is not None:
            tries.append((target.provider.name, target.upstream_model))
    if not tries:
        return
    estimate = flow.meter.estimate
    tokens = estimate.tokens if estimate is not None else None
    record["abandoned_tries"] = len(tries)
    record["abandoned"] = [{"provider": provider, "model": model, "input_tokens": tokens}
                           for provider, model in tries]


MAX_CONTENT = 64 * 1024  # characters of prompt or answer a span may carry


def content(flow: Flow) -> tuple[tuple[tuple[str, str], ...] | None, str | None]:
    """The prompt's texts as they went upstream (after the guardrails) and the answer's text, bounded;
    None where Tollway cannot read them (an API without a text walker, a compressed answer). A request
    refused before it went upstream (a guardrail's block, a limit, a model not allowed) has no prompt:
    the guardrails may not have run on it, or found what they block."""
    prompt: tuple[tuple[str, str], ...] | None = None
    request, api = flow.request if flow.forwarded else None, flow.api
    if len(flow.chain) == 1 and flow.served is not None:
        api = flow.served  # one target: its body (translated to its API, if need be) is what went
    walker = texts.walker(api.name) if api is not None else None
    if request is not None and walker is not None:
        found, size = [], 0
        for ref in walker.request(request.payload):
            if ref.role in (texts.METADATA, texts.DEFINITION) or isinstance(ref, texts.Unread):  # no message
                continue
            text = ref.get()[: MAX_CONTENT - size]
            found.append((ref.role, text))
            size += len(text)
            if size >= MAX_CONTENT:
                break
        prompt = tuple(found)
    answer: str | None = None
    reader = flow.meter.reader
    if flow.answer_body is not None:
        served = flow.served or api
        answering = texts.walker(served.name) if served is not None else None
        try:
            payload = orjson.loads(flow.answer_body)
        except orjson.JSONDecodeError:
            payload = None
        if answering is not None and isinstance(payload, dict):
            answer = "".join(ref.get() for ref in answering.answer(payload))[:MAX_CONTENT]
    elif reader is not None and flow.stream:
        answer = reader.text()[:MAX_CONTENT]
    if flow.refused is not None:
        answer = None  # a guardrail withheld it: not for a trace either
    elif answer and flow.guard is not None:
        answer = flow.guard.shown(answer)  # the provider's text: what the policy guards in answers goes
    return prompt, answer


def _provider_rate_limits(headers: Mapping[str, str], told: Headers) -> tuple[str, ...]:
    """The provider's headers on its answer that go (``told``, Tollway's own, are kept):

    - its rate-limit headers: they tell the shared key's account (its organisation's limits, moved
      by every team's traffic), not the caller's. A client learns its limits from Tollway's own.
      ``retry-after`` stays: on a provider's 429 passed through it says when to try again;
    - every ``x-tollway-*`` header (but the request id Envoy itself puts on the answer): they are
      Tollway's to say, and a provider's (or a proxy's before it) reached the client wherever
      Tollway did not set its own, e.g. ``x-tollway-cost-usd: 0.000000`` for a model without a
      price, or any of them on a stream or an error.
    """
    mine = {name for name, _ in told}
    return tuple(name for name in headers
                 if ("ratelimit" in name or name.startswith("anthropic-priority-")
                     or (name.startswith("x-tollway-") and name != ENVOYS_REQUEST_ID))
                 and name not in mine)
