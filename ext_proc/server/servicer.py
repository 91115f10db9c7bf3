"""The ext_proc gRPC servicer: a thin loop between Envoy's stream and a core Session.

For each message: decode it into an event, let the session answer, encode the answer, send it,
then carry out the session's effects. Faults inside the core are logged and end the stream
with a gRPC error, so Envoy fails the request closed (or open, if its filter is configured so);
the client never sees a Python traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.core.actions import EmitRecord
from ext_proc.core.events import StreamClosed
from ext_proc.core.session import Phase, Session
from ext_proc.server import codec
from ext_proc.server.records import RecordWriter

log = logging.getLogger("tollway.servicer")

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


class Processor:
    """Serves ``ExternalProcessor.Process``; one :class:`Session` per stream."""

    def __init__(self, records: RecordWriter) -> None:
        self.records = records

    async def process(
        self, requests: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        session = Session()
        clock = time.monotonic_ns
        decode, encode, handle = codec.decode, codec.encode, session.handle
        try:
            async for request in requests:
                kind, event = decode(request, clock())
                action = handle(event)
                assert action is not None
                yield encode(kind, action)
                if session.effects:
                    self._run_effects(session)
        except Exception:
            log.exception("ext_proc stream failed (request_id=%s)", session.request_id)
            await context.abort(grpc.StatusCode.INTERNAL, "tollway: internal error")
        finally:
            if session.phase is not Phase.DONE:
                session.handle(StreamClosed(clock()))
                self._run_effects(session)

    def _run_effects(self, session: Session) -> None:
        for effect in session.effects:
            if isinstance(effect, EmitRecord):
                self.records.emit(effect.record)
        session.effects.clear()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering ``Process`` with upb (de)serializers."""
        method = grpc.stream_stream_rpc_method_handler(
            self.process,
            request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=pb.ProcessingResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"Process": method})
