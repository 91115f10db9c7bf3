"""Actions: the session's one answer to each event, its questions, and the effects that ride along.

An action is turned into exactly one ext_proc ``ProcessingResponse`` by the server's codec.
An :class:`Ask` is not an answer to Envoy: it is a question for shared state (a budget, a rate
limit) that the server runs off the protocol callback; the session continues when the server
feeds the reply back as an :class:`~ext_proc.core.events.Answered` event, and only then is
Envoy's message answered. Effects are carried out by the server: the journal's note and the
record before Envoy has the answer (nothing is lost if the worker dies right after), the reports
(metrics, spans, budget settlements) once the answer is written, off the request's path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ext_proc.policy.compiled import Provider
from ext_proc.values import value

Headers = tuple[tuple[str, str], ...]


@value
class Continue:
    """Let the message through, optionally changed.

    ``body`` replaces the message's body (the whole buffered body, or this chunk of a streamed
    one). ``clear_route_cache`` asks Envoy to match the route again after header changes.
    ``stream_response`` switches the response body from buffered to streamed (successful SSE).
    ``credential`` names the provider whose API key the server must add to the request: the
    core never sees secrets, the server resolves and injects them while encoding. ``metadata``
    is set as Envoy dynamic metadata (namespace ``tollway``), which the per-attempt filter of a
    fallback cluster receives (see :mod:`ext_proc.core.upstream`).
    """

    set_headers: Headers = ()
    remove_headers: tuple[str, ...] = ()
    body: bytes | None = None
    clear_route_cache: bool = False
    stream_response: bool = False
    credential: Provider | None = None
    metadata: Headers = ()


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the client now, without contacting (or further reading) the provider."""

    status: int
    body: bytes
    headers: Headers = (("content-type", "application/json"),)


Action = Continue | Respond

CONTINUE = Continue()


@value
class Ask:
    """Ask shared state ``query`` (a plain object the server knows how to run, e.g. a
    :mod:`ext_proc.state.queries` dataclass); the step that asked resumes with the answer
    (``then`` is the session's, never the server's business)."""

    query: object
    then: Callable[[Any], Ask | None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Trace:
    """What a request's span needs beyond its record (only when the server traces requests).

    Times are the monotonic nanoseconds of the events the session saw. ``events`` are the
    decisions as they were taken: ``(name, at, attributes)``. ``prompt`` and ``answer`` are the
    texts as they went to the provider and came back (after the guardrails), only when the policy
    asks for content in traces; the server redacts them before they leave.
    """

    started: int
    ended: int
    traceparent: str | None = None
    tracestate: str | None = None
    events: tuple[tuple[str, int, dict[str, Any]], ...] = ()
    finish_reasons: tuple[str, ...] = ()
    prompt: tuple[tuple[str, str], ...] | None = None  # (role, text)
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class EmitRecord:
    """Write one finished request record to the request log (and, when tracing, end its span)."""

    record: dict[str, Any] = field(default_factory=dict)
    trace: Trace | None = None


@dataclass(frozen=True, slots=True)
class Settle:
    """A request that held budget or rate-limit claims ended: give them back and count ``used``
    (one amount per claim: what it spent; nothing for concurrency slots)."""

    claims: tuple[Any, ...]  # ext_proc.state.queries.Claim
    used: tuple[int, ...]


@value
class Forwarded:
    """The request goes to the provider with this answer: ``record`` is the record it gets if
    nothing more is ever heard of it (Tollway dies first). The server notes it before it
    answers Envoy (a write-ahead entry, see :mod:`ext_proc.server.journal`), so a request a
    provider saw is never missing from the request log."""

    record: dict[str, Any] = field(default_factory=dict)


Effect = EmitRecord | Settle | Forwarded
