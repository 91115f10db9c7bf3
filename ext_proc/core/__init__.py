"""The sans-IO core: one :class:`~ext_proc.core.session.Session` per HTTP request.

Envoy's ext_proc protocol is a strict alternation: Envoy sends one message about the request or
the response (headers, a body, a body chunk), the processor answers it with exactly one message.
The core mirrors that: :mod:`events` are what Envoy told us, :mod:`actions` are the one answer to
each, and *effects* (a finished request record, later: metrics, budget settlements) ride along
for the server to carry out after it has answered. Nothing here imports gRPC, protobuf, asyncio,
a clock or the environment; time arrives inside events, so every behaviour is a pure function of
the event sequence and can be tested as a transcript.
"""
