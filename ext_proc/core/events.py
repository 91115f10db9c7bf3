"""Events: what Envoy tells a request's session, and the answers to its questions, as plain data.

Header names are lower-case; pseudo-headers (``:method``, ``:path``, ``:status``) are included.
``at`` is a monotonic timestamp in nanoseconds, taken by the server when the message arrived.
``attributes`` are Envoy attributes and Tollway's own dynamic metadata (``tollway.<key>``) as
strings; what Envoy tells about the upstream endpoint it picked arrives decoded, as
:class:`Upstream` (the codec reads Envoy's rendering of it, the core never does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ext_proc.values import value


@value
class Upstream:
    """The endpoint Envoy picked for a try: its position in a fallback chain (``tollway.slot``
    metadata) and the Host it was rendered with; and, with the answer, how many tries it took and
    the tries abandoned at the first-byte timeout before it (``tollway.abandoned``, the chain's
    ``provider model`` pairs, see :mod:`ext_proc.core.attempt`; None: none)."""

    slot: int | None = None
    host: str | None = None
    attempts: int | None = None
    abandoned: str | None = None


NO_UPSTREAM = Upstream()


@value
class RequestHeaders:
    """The client's request head, and Envoy attributes of the connection (e.g. the peer's SPIFFE ID).

    For a try of a fallback chain (the per-attempt filter), ``upstream`` is the endpoint picked.
    """

    headers: Mapping[str, str]
    end_of_stream: bool
    at: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    upstream: Upstream = NO_UPSTREAM


@value
class RequestBody:
    """The client's whole request body (buffered by Envoy)."""

    body: bytes
    end_of_stream: bool
    at: int


@value
class ResponseHeaders:
    """The response head: from the provider, or a local reply made by Envoy.

    ``upstream``: which endpoint answered and after how many tries (see
    :mod:`ext_proc.core.upstream`).
    """

    headers: Mapping[str, str]
    end_of_stream: bool
    at: int
    upstream: Upstream = NO_UPSTREAM


@value
class ResponseBody:
    """The buffered response body, or one chunk of it once the body is streamed."""

    body: bytes
    end_of_stream: bool
    at: int


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Envoy closed the processing stream (request done, client gone or upstream reset)."""

    at: int


@value
class Answered:
    """The answer to the session's last :class:`~ext_proc.core.actions.Ask` (a value, or the
    :class:`Exception` the question failed with), delivered by the server when it arrives."""

    value: object
    at: int


Event = RequestHeaders | RequestBody | ResponseHeaders | ResponseBody | StreamClosed | Answered
