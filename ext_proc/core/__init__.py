"""The sans-IO core: one :class:`~ext_proc.core.session.Session` per HTTP request.

Envoy's ext_proc protocol is a strict alternation: Envoy sends one message about the request or
the response (headers, a body, a body chunk), the processor answers it with exactly one message.
The core mirrors that: :mod:`.events` are what Envoy told us, :mod:`.actions` are the one answer
to each, and *effects* (a finished request record, later: metrics, budget settlements) ride along
for the server to carry out after it has answered.

Inside, a request is a :class:`~ext_proc.core.flow.Flow` (plain data) that the ordered request
steps (:mod:`.steps`) decide on and the response stages (:mod:`.response`) carry back, both
registered in :mod:`.pipeline`. A step that needs shared state does not do I/O: it returns an
:class:`~ext_proc.core.actions.Ask`, the server runs the question, and the answer comes back as
an :class:`~ext_proc.core.events.Answered` event; Envoy's message is answered only then.

Nothing here imports gRPC, protobuf, asyncio, a socket or Redis (``make lint`` checks it), reads
the clock or draws random numbers: time arrives inside events and the rest through an injected
:class:`~ext_proc.llm.runtime.Runtime`, so every behaviour is a pure function of the event
sequence and can be tested as a transcript.
"""
