"""Actions: the session's one answer to each event, and the effects that ride along.

An action is turned into exactly one ext_proc ``ProcessingResponse`` by the server's codec.
Effects are carried out by the server after it answered Envoy, off the request's path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ext_proc.policy.compiled import Provider

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class EmitRecord:
    """Write one finished request record to the request log."""

    record: dict[str, Any] = field(default_factory=dict)


Effect = EmitRecord
