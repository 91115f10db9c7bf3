"""The ext_proc servicer: a thin loop between Envoy's stream and a core Session.

For each message: decode it into an event, let the session answer, encode the answer, send it,
then carry out the session's effects. Faults inside the core are logged and end the stream
with a gRPC error, so Envoy fails the request closed (or open, if its filter is configured so);
the client never sees a Python traceback.

Two transports carry it: :class:`ExtProcCall` for Tollway's own HTTP/2 server
(:mod:`ext_proc.server.h2`, the default) and :class:`Processor` for ``grpcio``'s asyncio server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2

from ext_proc.core.actions import EmitRecord
from ext_proc.core.attempt import Attempt
from ext_proc.core.events import StreamClosed
from ext_proc.core.meter import Accountant
from ext_proc.core.session import Phase, Session
from ext_proc.server import codec
from ext_proc.server.credentials import CredentialStore
from ext_proc.server.records import RecordWriter
from ext_proc.server.reload import PolicyHolder

log = logging.getLogger("tollway.servicer")

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# gRPC metadata the upstream (per-attempt) filter sends: its streams are served by an Attempt.
FILTER_METADATA = b"x-tollway-filter"
PROCESS_PATH = f"/{SERVICE}/Process"
HEALTH_PATH = "/grpc.health.v1.Health/Check"


@dataclass
class Service:
    """What every stream of one worker shares: the request log, the policy, the credentials."""

    records: RecordWriter
    policy: PolicyHolder | None = None  # None: open mode (no identity, access control or key injection)
    workload: str | None = None  # the sidecar's own workload identity
    credentials: CredentialStore = field(default_factory=CredentialStore)
    accountant: Accountant | None = None  # token counts and prices (None: usage only, no cost)
    usage_headers: bool = True  # tell clients their tokens and cost in response headers

    def session(self) -> Session:
        """A new request's session, bound to the policy current at this moment."""
        return Session(self.policy.current if self.policy else None, self.workload, self.accountant, self.usage_headers)

    def attempt(self) -> Attempt:
        """A new upstream attempt's session (the per-attempt filter of a fallback cluster)."""
        return Attempt(self.policy.current if self.policy else None)


def _closed(session: Session | Attempt) -> bool:
    return not isinstance(session, Session) or session.phase is Phase.DONE


def _run_effects(session: Session | Attempt, records: RecordWriter) -> None:
    for effect in session.effects:
        if isinstance(effect, EmitRecord):
            records.emit(effect.record)
    session.effects.clear()


class ExtProcCall:
    """One ext_proc stream on :mod:`ext_proc.server.h2`: serialized messages in and out."""

    __slots__ = ("service", "session")

    def __init__(self, service: Service, upstream: bool = False) -> None:
        self.service = service
        self.session: Session | Attempt = service.attempt() if upstream else service.session()

    def message(self, data: bytes) -> list[bytes]:
        session = self.session
        kind, event = codec.decode(pb.ProcessingRequest.FromString(data), time.monotonic_ns())
        action = session.handle(event)
        assert action is not None
        reply = codec.encode_bytes(kind, action, self.service.credentials.headers)
        if session.effects:
            _run_effects(session, self.service.records)
        return [reply]

    def end(self) -> tuple[int, str]:
        self.reset()
        return 0, ""

    def reset(self) -> None:
        session = self.session
        if not _closed(session):
            session.handle(StreamClosed(time.monotonic_ns()))
            _run_effects(session, self.service.records)


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
        records, credentials = self.service.records, self.service.credentials.headers
        clock = time.monotonic_ns
        decode, encode, handle = codec.decode, codec.encode, session.handle
        try:
            async for request in requests:
                kind, event = decode(request, clock())
                action = handle(event)
                assert action is not None
                if session.effects:  # before yielding: Envoy may close the stream right after an answer
                    _run_effects(session, records)
                yield encode(kind, action, credentials)
        except Exception:
            log.exception("ext_proc stream failed (request_id=%s)", session.request_id)
            await context.abort(grpc.StatusCode.INTERNAL, "tollway: internal error")
        finally:
            if not _closed(session):
                session.handle(StreamClosed(clock()))
                _run_effects(session, records)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering ``Process`` with upb (de)serializers."""
        method = grpc.stream_stream_rpc_method_handler(
            self.process,
            request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=pb.ProcessingResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Process": method})
