"""The ext_proc servicer: a thin loop between Envoy's stream and a core Session.

For each message: decode it into an event, let the session answer, encode the answer, send it.
The session's effects are carried out around the answer: what must precede it (the journal's note
of a request going upstream, the request's record in the log) before the answer is returned, what
only reports on the request (metrics, its span, the settlement of its budget claims) from the
connection's loop once the answer is written (:func:`_run_effects`). Faults inside the core are
logged and end the stream with a gRPC error, so Envoy fails the request closed (or open, if its
filter is configured so); the client never sees a Python traceback.

Ask and continue. When the session answers a message with an :class:`~ext_proc.core.actions.Ask`
instead of an action, the servicer puts the question to the service's shared-state
:class:`~ext_proc.state.store.Store`. The in-process store answers at once and the message is
answered within the same callback. The Redis store answers later: the call returns no reply
now, the question runs as a task on the event loop (``redis.asyncio``: no thread hand-off; the
store bounds it with a deadline), and when it is answered the session continues and the reply
goes out through the stream's :class:`~ext_proc.server.h2.Responder`. Envoy sends nothing more
on the stream until it has that reply; if the stream is reset meanwhile (the client left), the
session records the request as incomplete and the late answer is dropped.

When Envoy sends bodies right behind their headers (its first message says so), a
:class:`~ext_proc.server.coalesce.Coalescer` sits between the messages and the session: the
session still sees the headers and then the whole body, and the headers' answer waits for the
body's so that both go out in one write.

Two transports carry it: :class:`ExtProcCall` for Tollway's own HTTP/2 server
(:mod:`ext_proc.server.h2`, the default) and :class:`Processor` for ``grpcio``'s asyncio server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2

from ext_proc.core import pipeline
from ext_proc.core.actions import Action, Ask, EmitRecord, Forwarded, Settle, Trace
from ext_proc.core.attempt import Attempt
from ext_proc.core.events import Answered, Event, StreamClosed
from ext_proc.core.meter import Accountant
from ext_proc.core.session import Phase, Session
from ext_proc.guardrails.queries import Classify
from ext_proc.llm.errors import ClientError
from ext_proc.llm.runtime import SYSTEM, Runtime
from ext_proc.server import coalesce, codec
from ext_proc.server.bodies import OVERLOADED, BodyBudget, declared, inflated
from ext_proc.server.classifier import Classifier
from ext_proc.server.coalesce import Coalescer
from ext_proc.server.credentials import CredentialStore, Scrub
from ext_proc.server.records import RecordWriter
from ext_proc.server.reload import PolicyHolder
from ext_proc.state.limits import Keeper, MemoryBackend
from ext_proc.state.queries import Admit

if TYPE_CHECKING:
    import grpc
from ext_proc.state.store import MemoryStore, Store

log = logging.getLogger("tollway.servicer")

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# gRPC metadata the upstream (per-attempt) filter sends: its streams are served by an Attempt.
FILTER_METADATA = b"x-tollway-filter"
PROCESS_PATH = f"/{SERVICE}/Process"
GRPC_INTERNAL = 13
HEALTH_PATH = "/grpc.health.v1.Health/Check"


@dataclass
class Service:
    """What every stream of one worker shares: the request log, the policy, the credentials."""

    records: RecordWriter
    policy: PolicyHolder | None = None  # None: open mode (no identity, access control or key injection)
    workload: str | None = None  # the sidecar's own workload identity
    mtls: bool = False  # a tls:// listener: each stream's verified certificate names its workload
    credentials: CredentialStore = field(default_factory=CredentialStore)
    accountant: Accountant | None = None  # token counts and prices (None: usage only, no cost)
    usage_headers: bool = True  # tell clients their tokens and cost in response headers
    store: Store = field(default_factory=MemoryStore)  # where the core's questions go
    keeper: Keeper = field(default_factory=lambda: Keeper(MemoryBackend()))  # budgets and rate limits
    steps: pipeline.Pipeline = pipeline.DEFAULT  # the request steps (see ext_proc.core.pipeline)
    runtime: Runtime = SYSTEM  # the clock and randomness the core uses
    on_record: Callable[[dict[str, Any]], None] | None = None  # each finished record (metrics, refusal logs)
    # Each finished record with its span's data (OpenTelemetry); None: sessions collect no trace data.
    on_trace: Callable[[dict[str, Any], Trace], None] | None = None
    classifier: Classifier = field(default_factory=Classifier)  # external prompt-injection classifiers
    bodies: BodyBudget = field(default_factory=BodyBudget)  # request bodies this worker holds (see bodies)
    # The providers stand-ins serve (name -> URL), to name them when unreachable; stand_in_missing:
    # tollway up's fake provider serves every provider without its key (tollway serve --stand-in-missing).
    stand_ins: Callable[[], Mapping[str, str]] | None = None
    stand_in_missing: bool = False

    def session(self, peer: str | None = None, relay: bool = False) -> Session:
        """A new request's session, bound to the policy current at this moment.

        ``peer``: the identity of the Envoy that opened the stream (the SPIFFE ID of its client
        certificate on a mutual-TLS listener). A shared Tollway (no ``workload`` of its own) names
        the calling workload by it; a sidecar configured with its own workload keeps that one. On
        such a listener (``mtls``) the message's SPIFFE attribute must agree with that workload
        (any workload of the mesh may open a stream and write it): see ``decide.identify``.
        ``relay``: the certificate is a trusted relay's (``--tls-relay-san``, see
        :class:`~ext_proc.server.listen.Peer`), believed as the Unix socket's Envoy is.
        """
        return Session(self.policy.current if self.policy else None, self.workload or peer, self.accountant,
                       self.usage_headers, runtime=self.runtime, steps=self.steps, trace=self.on_trace is not None,
                       mtls=self.mtls and not relay, stand_ins=self.stand_ins, stand_in_missing=self.stand_in_missing)

    def ask(self, query: object) -> object | Awaitable[object]:
        """The answer to ``query`` (or an awaitable of it) from the store, or from an external
        classifier for a :class:`Classify`; a failure is the exception itself."""
        try:
            if type(query) is Admit:
                return self.keeper.admit(query.claims, query.fail_open)
            if type(query) is Classify:
                answer: object | Awaitable[object] = self.classifier.answer(query)
                return answer
            return self.store.answer(query)
        except Exception as exc:  # the asking step decides what a failed question means
            return exc

    def attempt(self, peer: str | None = None, relay: bool = False) -> Attempt:
        """A new upstream attempt's session (the per-attempt filter of a fallback cluster).

        On a mutual-TLS listener (``mtls``) the try's metadata is the caller's word: the try is
        served only within the plan of the team of the workload ``peer`` (or ``workload``) names,
        unless the certificate is a trusted ``relay``'s, whose metadata is believed as the Unix
        socket's Envoy's is (the router-level session of its own request wrote it).
        """
        if self.policy is None:
            return Attempt(None)
        return Attempt(self.policy.current, self.policy.started, workload=self.workload or peer,
                       mtls=self.mtls and not relay)


def _scrub(service: Service, session: Session | Attempt) -> Scrub | None:
    """What takes the keys of the providers a request may have gone to out of their answer (None:
    no key was sent); made when the answer's head arrives."""
    if not isinstance(session, Session):
        return None
    flow = session.flow
    named = [target.provider for target in flow.chain]
    if flow.credential is not None:
        named.append(flow.credential)
    keys = service.credentials.sent(named) if named else ()
    return Scrub(keys) if keys else None


def _scrubbed(scrub: Scrub, session: Session | Attempt, event: Event) -> Action | Ask | None:
    """The session's answer to a response's ``event``, with the keys its provider sent back taken
    out of what the session reads and of what Envoy passes on."""
    result = session.handle(scrub.event(event))
    if result is None or type(result) is Ask:
        return result
    return scrub.action(result, not session.streaming)  # type: ignore[arg-type, union-attr]


def _closed(session: Session | Attempt) -> bool:
    return not isinstance(session, Session) or session.phase is Phase.DONE


Later = Callable[..., object]  # schedules a call after the answer is written (the loop's call_soon)


def _run_effects(session: Session | Attempt, service: Service, later: Later | None = None) -> None:
    """Carry out the session's effects. What must be done before Envoy has the answer is done now:
    the journal's note of a request going upstream, the request's record in the log (a worker
    killed a moment later loses nothing). What only reports on the request (its metrics, its
    span) or settles its budget claims is handed to ``later`` (the connection's loop: it runs once
    the callback that answers returns, and that callback has written the answer; an answer that
    waited for a Redis question is written in the same pass of the loop) or, without one
    (``grpcio``'s server, in-process use), done now too."""
    deferred: list[EmitRecord | Settle] = []
    for effect in session.effects:
        if isinstance(effect, EmitRecord):
            service.records.emit(effect.record)
            if service.on_record is not None or (effect.trace is not None and service.on_trace is not None):
                deferred.append(effect)
        elif isinstance(effect, Settle):
            deferred.append(effect)
        elif isinstance(effect, Forwarded):  # before Envoy has the answer that sends the request on
            service.records.started(effect.record)
    session.effects.clear()
    if deferred:
        if later is None:
            _report(deferred, service)
        else:
            later(_report, deferred, service)


def _report(effects: list[EmitRecord | Settle], service: Service) -> None:
    """The effects that can wait for the answer: metrics, traces, budget settlements."""
    for effect in effects:
        try:
            if isinstance(effect, Settle):
                service.keeper.settle(effect.claims, effect.used)
                continue
            if service.on_record is not None:
                service.on_record(effect.record)
            if effect.trace is not None and service.on_trace is not None:
                service.on_trace(effect.record, effect.trace)
        except Exception:  # one failed report must not stop the others (nor the loop's callback)
            log.exception("reporting a finished request failed (request_id=%s)",
                          effect.record.get("request_id") if isinstance(effect, EmitRecord) else None)


class Responder(Protocol):
    """The h2 server's handle on a stream, to answer after the callback that received a message."""

    def send(self, message: bytes) -> None: ...

    def finish(self, status: int = 0, message: str = "") -> None: ...

    @property
    def open(self) -> bool: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...


def _body_held(service: Service, session: Session | Attempt, event: Event, held: int,
               ahead: int) -> tuple[int, int] | None:
    """The bytes of body a request holds, and how many of them it has not read yet, once its body's
    chunk ``event`` is counted against the worker's :class:`~ext_proc.server.bodies.BodyBudget`
    (``held`` and ``ahead`` before it: see :meth:`~ext_proc.server.bodies.BodyBudget.read`; a large
    body's first chunk reserves the rest of the length its request declared), or None: the worker holds as many
    bodies as it may, and the request is refused (``OVERLOADED``): its bytes are no longer counted.
    Only a request still reading its body counts (not an upstream attempt's, nor the rest of a
    refused body)."""
    size = len(event.body)  # type: ignore[union-attr]
    if not isinstance(session, Session) or session.phase is not Phase.REQUEST_BODY:
        return held, ahead
    if size:
        counted = service.bodies.read(held, ahead, size)
        if counted is None:
            service.bodies.give_back(held, ahead)  # what it held and reserved so far is dropped with it
            return None
        held, ahead = counted
    if held and ahead and event.end_of_stream:  # type: ignore[union-attr]
        service.bodies.release(ahead)  # shorter than it declared: nothing more will come
        ahead = 0
    return held, ahead


def _declared(session: Session | Attempt, event: Event) -> int:
    """The body length a request's headers ``event`` declare, reserved at its first chunk when large
    (0 for an upstream attempt's, or a request without a body)."""
    if not isinstance(session, Session) or event.end_of_stream:  # type: ignore[union-attr]
        return 0
    return declared(event.headers)  # type: ignore[union-attr]


def _too_large(session: Session | Attempt) -> None:
    """An answer longer than the coalescer reads fails its stream (Envoy answers the client 500):
    the record the stream's close writes says so, not that the provider cut it."""
    if isinstance(session, Session):
        session.flow.status, session.flow.error = 500, "answer_too_large"


def _inflating(service: Service, session: Session, body: bytes, held: int) -> int | None:
    """The bytes a request holds once its whole gzip ``body``'s inflated size (read from its
    trailer: :func:`~ext_proc.server.bodies.inflated`) is counted too, before the session inflates
    it; or None: refused as :func:`_body_held` refuses (its bytes no longer counted). ``held`` as
    it is when the request is no gzip body still to read."""
    if session.phase is not Phase.REQUEST_BODY or not session.flow.gunzip:
        return held
    size = inflated(body)
    if service.bodies.take(held, size):
        return held + size
    service.bodies.give_back(held)
    return None


def _inflated(service: Service, session: Session, held: int) -> int:
    """The bytes a request holds once the session read its gzip body: the inflated body's."""
    return service.bodies.true_up(held, len(session.flow.body))


LONG_HOLD_NS = 5_000_000_000  # a headers answer held this long for its body is logged when its stream ends


class ExtProcCall:
    """One ext_proc stream on :mod:`ext_proc.server.h2`: serialized messages in and out."""

    __slots__ = ("_ahead", "_ended", "_held", "_merge", "_overdue", "_queue", "_scrub", "_task", "_waiting",
                 "responder", "service", "session")

    def __init__(
        self, service: Service, upstream: bool = False, responder: Responder | None = None, peer: str | None = None,
        relay: bool = False,
    ) -> None:
        self.service = service
        self.session: Session | Attempt = service.attempt(peer, relay) if upstream else service.session(peer, relay)
        self.responder = responder
        self._waiting: str | None = None  # the kind of message whose answer waits for the store
        self._queue: list[bytes] = []  # messages that arrived while waiting (Envoy sends none)
        self._ended = False  # the client half-closed while waiting
        self._task: asyncio.Future[object] | None = None
        self._merge: Coalescer | None = None  # Envoy sends bodies behind their headers (see coalesce)
        self._overdue: coalesce.Overdue | None = None  # extends a held headers answer's timer (h2 server)
        self._held = 0  # bytes of request body counted against the worker's BodyBudget
        self._ahead = 0  # bytes it reserves and has not read yet (before the first chunk: the length declared)
        self._scrub: Scrub | None = None  # the provider keys taken out of the answer (see credentials.Scrub)

    def message(self, data: bytes) -> list[bytes]:
        if self._waiting is not None:
            self._queue.append(data)
            return []
        request = pb.ProcessingRequest.FromString(data)
        kind, event = codec.decode(request, time.monotonic_ns())
        session = self.session
        if kind == "request_body":
            counted = _body_held(self.service, session, event, self._held, self._ahead)
            if counted is None:  # a held headers answer is dropped with the refusal (the coalescer's outgoing)
                self._held = self._ahead = 0
                return self._reply(kind, session.refuse(OVERLOADED, event.at))  # type: ignore[union-attr]
            self._held, self._ahead = counted
        elif kind == "request_headers":
            self._ahead = _declared(session, event)
        elif kind == "response_headers":
            self._scrub = _scrub(self.service, session)
        if self._merge is not None or (isinstance(session, Session) and coalesce.wanted(request)):
            return self._coalesced(kind, event)
        if self._held and kind == "request_body" and session.flow.gunzip:  # type: ignore[union-attr]
            return self._gzip(kind, event)
        result = session.handle(event) if self._scrub is None else _scrubbed(self._scrub, session, event)
        if type(result) is Ask:
            return self._handle(kind, event, result)
        reply = codec.encode_bytes(kind, result, self.service.credentials.headers)  # type: ignore[arg-type]
        if session.effects:
            _run_effects(session, self.service, self._later())
        return [reply]

    def _later(self) -> Later | None:
        """What runs a report once this callback's answers are written: the connection's loop."""
        responder = self.responder
        loop = responder.loop if responder is not None else None
        return loop.call_soon if loop is not None else None

    def _coalesced(self, kind: str, event: Event) -> list[bytes]:
        merge = self._merge
        if merge is None:
            merge = self._merge = Coalescer()
        try:
            whole = merge.incoming(kind, event)
        except ClientError as error:  # a request body longer than Tollway reads
            return self._reply(kind, self.session.refuse(error, event.at))  # type: ignore[union-attr]
        except coalesce.AnswerTooLarge:
            _too_large(self.session)
            raise
        early = merge.early()
        if whole is None:
            return early
        if self._held and kind == "request_body" and self.session.flow.gunzip:  # type: ignore[union-attr]
            return early + self._gzip(kind, whole)
        return early + self._handle(kind, whole) if early else self._handle(kind, whole)

    def _gzip(self, kind: str, event: Event) -> list[bytes]:
        """Handle a whole gzip request body: its inflated size counted before the session inflates
        it (refused past the worker's limit), its real size after."""
        session: Session = self.session  # type: ignore[assignment]
        held = _inflating(self.service, session, event.body, self._held)  # type: ignore[union-attr]
        self._held = held or 0  # before the session runs: a fault in it still gives all of it back
        if held is None:
            return self._reply(kind, session.refuse(OVERLOADED, event.at))
        result = session.handle(event)
        self._held = _inflated(self.service, session, held)
        return self._handle(kind, event, result)

    def _reply(self, kind: str, action: Action) -> list[bytes]:
        """The replies carrying ``action`` (none while a coalesced body is held); then the effects."""
        credentials = self.service.credentials.headers
        merge = self._merge
        if merge is None:
            replies = [codec.encode_bytes(kind, action, credentials)]
        else:
            replies = merge.outgoing(kind, action, credentials)
            if merge.holding:
                if self._overdue is None and self.responder is not None and (loop := self.responder.loop) is not None:
                    self._overdue = coalesce.Overdue.of(loop)
                    self._overdue.hold(self._extend, merge.held_since)
            elif self._overdue is not None:
                self._overdue.release(self._extend)
                self._overdue = None
        if self.session.effects:
            _run_effects(self.session, self.service, self._later())
        return replies

    def _extend(self) -> None:
        """A body still held after :data:`coalesce.EXTEND_AFTER`: extend its headers' timer."""
        self._overdue = None
        responder = self.responder
        if self._merge is not None and responder is not None and responder.open:
            for reply in self._merge.extension():
                responder.send(reply)

    def _handle(self, kind: str, event: Event, result: Action | Ask | None = None) -> list[bytes]:
        """Handle ``event`` (unless ``result`` is its outcome already), asking the store until the session
        has an answer for Envoy; [] when it must wait for the store."""
        session = self.session
        if result is None:
            result = session.handle(event) if self._scrub is None else _scrubbed(self._scrub, session, event)
        while type(result) is Ask:
            answer = self.service.ask(result.query)
            if inspect.isawaitable(answer):
                self._wait(kind, answer)
                return []
            result = session.handle(Answered(answer, time.monotonic_ns()))
        if result is None:  # an answer that came after the stream closed
            return []
        return self._reply(kind, result)  # type: ignore[arg-type]

    def _wait(self, kind: str, answer: Awaitable[object]) -> None:
        if self.responder is None:
            raise RuntimeError("this stream cannot answer later: its server gave it no responder")
        self._waiting = kind
        task = self._task = asyncio.ensure_future(answer)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[object]) -> None:
        kind, self._waiting, self._task = self._waiting, None, None
        responder = self.responder
        assert kind is not None and responder is not None
        if task.cancelled() or not responder.open or _closed(self.session):
            self._late(task)  # the stream was reset meanwhile: the session recorded it (or does now)
            return
        failure = task.exception()
        try:
            replies = self._handle(kind, Answered(failure if failure is not None else task.result(),
                                                  time.monotonic_ns()))
            while self._waiting is None and self._queue:
                replies += self.message(self._queue.pop(0))
        except Exception:
            log.exception("ext_proc stream failed after an answer (request_id=%s)", self.session.request_id)
            responder.finish(GRPC_INTERNAL, "tollway: internal error")
            self.reset()
            return
        for reply in replies:
            responder.send(reply)
        if self._ended and self._waiting is None:
            self.reset()
            responder.finish()

    def _late(self, task: asyncio.Future[object]) -> None:
        """An answer that came after the stream closed: the session still hears it, so what it
        granted goes back (an admission's claims; else a concurrency slot stays held for as long as
        this worker holds its lease)."""
        session = self.session
        if task.cancelled() or task.exception() is not None or not isinstance(session, Session):
            return
        if session.phase is not Phase.DONE:
            session.handle(StreamClosed(time.monotonic_ns()))
        session.handle(Answered(task.result(), time.monotonic_ns()))
        _run_effects(session, self.service)

    def end(self) -> tuple[int, str] | None:
        if self._waiting is not None:
            self._ended = True  # finish once the answer is out
            return None
        self.reset()
        return 0, ""

    def reset(self) -> None:
        if self._held:
            self.service.bodies.give_back(self._held, self._ahead)
            self._held = self._ahead = 0
        session = self.session
        merge = self._merge
        if merge is not None and merge.holding and time.monotonic_ns() - merge.held_since > LONG_HOLD_NS:
            # Envoy gave up on a stream whose body never completed: a client's slow upload, or a body
            # lost between Envoy and the coalescer (the log says which stream, never what it held).
            log.warning("ext_proc stream reset with its headers answer held (request_id=%s): %s",
                        session.request_id, merge.describe())
        if self._task is not None:
            self._task.cancel()
        if self._overdue is not None:
            self._overdue.release(self._extend)
            self._overdue = None
        if not _closed(session):
            session.handle(StreamClosed(time.monotonic_ns()))
            _run_effects(session, self.service)


class HealthCall:
    """``grpc.health.v1.Health/Check``: SERVING until shutdown begins."""

    __slots__ = ("serving",)

    def __init__(self, serving: Callable[[], bool]) -> None:
        self.serving = serving

    def message(self, data: bytes) -> list[bytes]:
        answer = health_pb2.HealthCheckResponse
        status = answer.SERVING if self.serving() else answer.NOT_SERVING
        return [answer(status=status).SerializeToString()]

    def end(self) -> tuple[int, str]:
        return 0, ""

    def reset(self) -> None:
        pass


class Processor:
    """Serves ``ExternalProcessor.Process`` on grpcio; one :class:`Session` per stream."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        upstream = (FILTER_METADATA.decode(), "upstream") in (context.invocation_metadata() or ())
        session = self.service.attempt() if upstream else self.service.session()
        credentials = self.service.credentials.headers
        clock = time.monotonic_ns
        decode, encode, handle = codec.decode, codec.encode, session.handle
        merge: Coalescer | None = None
        scrub: Scrub | None = None  # the provider keys taken out of the answer (see credentials.Scrub)
        held = ahead = 0  # bytes of request body counted against the worker's BodyBudget, and not read yet

        def refusing(kind: str, merge: Coalescer | None, error: ClientError, at: int) -> list[pb.ProcessingResponse]:
            """The request refused before its body was read whole; its effects run before the
            replies go out (Envoy may close the stream right after an answer)."""
            action = session.refuse(error, at)  # type: ignore[union-attr]
            replies = (merge.outgoing(kind, action, credentials) if merge is not None
                       else [codec.encode_bytes(kind, action)])
            _run_effects(session, self.service)
            return [pb.ProcessingResponse.FromString(reply) for reply in replies]

        try:
            async for request in requests:
                kind, event = decode(request, clock())
                if kind == "request_body":
                    counted = _body_held(self.service, session, event, held, ahead)
                    if counted is None:
                        held = ahead = 0
                        for reply in refusing(kind, merge, OVERLOADED, event.at):
                            yield reply
                        continue
                    held, ahead = counted
                elif kind == "request_headers":
                    ahead = _declared(session, event)
                elif kind == "response_headers":
                    scrub = _scrub(self.service, session)
                if merge is None and isinstance(session, Session) and coalesce.wanted(request):
                    merge = Coalescer()
                if merge is not None:
                    try:
                        whole = merge.incoming(kind, event)
                    except ClientError as error:  # a request body longer than Tollway reads
                        for reply in refusing(kind, merge, error, event.at):
                            yield reply
                        continue
                    except coalesce.AnswerTooLarge:
                        _too_large(session)
                        raise
                    for early in merge.early():
                        yield pb.ProcessingResponse.FromString(early)
                    if whole is None:
                        continue
                    event = whole
                if held and kind == "request_body" and session.flow.gunzip:  # type: ignore[union-attr]
                    taken = _inflating(self.service, session, event.body, held)  # type: ignore[arg-type, union-attr]
                    held = taken or 0  # before the session runs: a fault in it still gives all of it back
                    if taken is None:
                        for reply in refusing(kind, merge, OVERLOADED, event.at):
                            yield reply
                        continue
                    action = handle(event)
                    held = _inflated(self.service, session, taken)  # type: ignore[arg-type]
                elif scrub is not None:
                    action = _scrubbed(scrub, session, event)
                else:
                    action = handle(event)
                while isinstance(action, Ask):
                    answer = self.service.ask(action.query)
                    if inspect.isawaitable(answer):
                        try:
                            answer = await answer
                        except Exception as exc:
                            answer = exc
                    action = handle(Answered(answer, clock()))
                assert action is not None
                if merge is not None:
                    replies = merge.outgoing(kind, action, credentials)
                if session.effects:  # before yielding: Envoy may close the stream right after an answer
                    _run_effects(session, self.service)
                if merge is None:
                    yield encode(kind, action, credentials)
                    continue
                for reply in replies:
                    yield pb.ProcessingResponse.FromString(reply)
        except Exception:
            log.exception("ext_proc stream failed (request_id=%s)", session.request_id)
            import grpc

            await context.abort(grpc.StatusCode.INTERNAL, "tollway: internal error")
        finally:
            self.service.bodies.give_back(held, ahead)
            if not _closed(session):
                session.handle(StreamClosed(clock()))
                _run_effects(session, self.service)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering ``Process`` with upb (de)serializers."""
        import grpc  # only --server grpcio serves through grpcio: about 20 MB the h2 server never needs

        method = grpc.stream_stream_rpc_method_handler(
            self.process,
            request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=pb.ProcessingResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Process": method})
