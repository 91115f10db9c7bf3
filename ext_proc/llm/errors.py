"""Client-safe errors: the vocabulary every layer raises, rendered by the client's wire API.

A :class:`ClientError` is something the client did or must be told (bad JSON, unknown endpoint,
a model it may not use, the provider unreachable). It carries its HTTP status, a stable machine
``code``, a message safe to show and the request ``param`` it is about; it knows nothing of wire
formats. The client's :class:`~ext_proc.llm.apis.WireAPI` renders it (OpenAI's
``{"error": {...}}``, Anthropic's ``{"type": "error", ...}``), so the official SDKs raise their
usual exception classes. Internal faults never reach clients with details: they become a
generic 500 in the same format. This module imports nothing of Tollway's: every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientError(Exception):
    """An error the client is told about, with its HTTP status and a stable machine code.

    ``headers`` go on the error response too (``retry-after``, ``x-should-retry``, rate limits).
    """

    status: int
    code: str
    message: str
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def internal_error() -> ClientError:
    """The error a client sees when Tollway itself failed; details stay in Tollway's logs."""
    return ClientError(500, "gateway_internal_error", "Tollway failed to process this request.")


def plain_error(status: int, body: bytes, sent: bool = True) -> ClientError:
    """A JSON error for a non-JSON error response (Envoy's own replies are plain text). ``sent``:
    the request went upstream; else Envoy refused it itself, and no provider is blamed: a 400 or 501
    is its HTTP/1 codec refusing the request's framing (``transfer-encoding: gzip, chunked``, both
    ``content-length`` and ``transfer-encoding``, a bad chunk size, a method in lower case)."""
    text = body[:300].decode("utf-8", "replace").strip() or "no response body"
    if status == 413:
        return ClientError(413, "request_too_large", f"The request is too large for the gateway: {text}")
    if not sent and status in (400, 501):
        return ClientError(status, FRAMING, f"The gateway could not read the request's HTTP framing: {text}. "
                                            "Nothing was sent to a provider.")
    if status >= 500 and sent:
        return ClientError(status, "provider_unavailable", f"The provider did not answer: {text}")
    return ClientError(status, "gateway_error", f"The request failed at the gateway: {text}")


FRAMING = "bad_request_framing"  # Envoy's codec refused the request (see plain_error): the client's error
INTERRUPTED = ClientError(502, "stream_interrupted", "The provider's stream ended before the response was complete.")
