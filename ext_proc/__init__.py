"""Tollway: an AI gateway that lives in an Envoy mesh.

Envoy is the HTTP proxy. Its ``ext_proc`` filter streams each LLM request's headers and body,
and the provider's response, to this package's gRPC service, which parses the payload, meters
usage and decides what happens next.

Layout (data flows top to bottom):

- ``ext_proc.core``   per-request session and metering: events in, actions out. Pure, no I/O.
- ``ext_proc.llm``    client APIs, usage, the SSE decoder, token counting, prices. Pure.
- ``ext_proc.policy`` the policy schema and compiler, identity and access decisions. Pure.
- ``ext_proc.server`` the HTTP/2 gRPC server, the protobuf codec, effects, credentials, reload.
- ``ext_proc.ledger`` the request log and spend reports; ``ext_proc.state`` shared aggregates.
- ``ext_proc.mock``   the fake OpenAI/Anthropic provider used by tests, ``make run`` and benches.
- ``ext_proc.stack``  starts and supervises Envoy + service + fake provider (``tollway up``).
"""

__version__ = "0.1.0"
