"""Events: what Envoy tells a request's session, as plain data.

Header names are lower-case; pseudo-headers (``:method``, ``:path``, ``:status``) are included.
``at`` is a monotonic timestamp in nanoseconds, taken by the server when the message arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """The client's request head, and Envoy attributes of the connection (e.g. the peer's SPIFFE ID)."""

    headers: Mapping[str, str]
    end_of_stream: bool
    at: int
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestBody:
    """The client's whole request body (buffered by Envoy)."""

    body: bytes
    end_of_stream: bool
    at: int


@dataclass(frozen=True, slots=True)
class ResponseHeaders:
    """The response head: from the provider, or a local reply made by Envoy.

    ``attributes``: which endpoint answered and after how many attempts (see
    :mod:`ext_proc.core.upstream`).
    """

    headers: Mapping[str, str]
    end_of_stream: bool
    at: int
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResponseBody:
    """The buffered response body, or one chunk of it once the body is streamed."""

    body: bytes
    end_of_stream: bool
    at: int


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Envoy closed the processing stream (request done, client gone or upstream reset)."""

    at: int


Event = RequestHeaders | RequestBody | ResponseHeaders | ResponseBody | StreamClosed
