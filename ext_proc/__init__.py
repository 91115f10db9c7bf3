"""Tollway: an AI gateway that lives in an Envoy mesh.

Envoy is the HTTP proxy. Its ``ext_proc`` filter streams each LLM request's headers and body,
and the provider's response, to this package's gRPC service, which parses the payload, meters
usage and decides what happens next.

Layout (data flows top to bottom):

- ``ext_proc.core``   per-request session: events in, actions out. Pure, no I/O.
- ``ext_proc.llm``    client APIs (OpenAI, Anthropic), usage extraction, the SSE decoder. Pure.
- ``ext_proc.server`` the gRPC servicer, the protobuf codec, the effects runner, workers.
- ``ext_proc.mock``   the fake OpenAI/Anthropic provider used by tests, ``make run`` and benches.
- ``ext_proc.stack``  starts and supervises Envoy + service + fake provider (``tollway up``).
"""

__version__ = "0.1.0"
