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


def plain_error(status: int, body: bytes) -> ClientError:
    """A JSON error for a non-JSON error response (Envoy's own replies are plain text)."""
    text = body[:300].decode("utf-8", "replace").strip() or "no response body"
    if status == 413:
        return ClientError(413, "request_too_large", f"The request is too large for the gateway: {text}")
    if status >= 500:
        return ClientError(status, "provider_unavailable", f"The provider did not answer: {text}")
    return ClientError(status, "gateway_error", f"The request failed at the gateway: {text}")


INTERRUPTED = ClientError(502, "stream_interrupted", "The provider's stream ended before the response was complete.")
