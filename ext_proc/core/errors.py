"""Client-safe errors, rendered in the calling SDK's own error format.

A :class:`ClientError` is something the client did or must be told (bad JSON, unknown endpoint,
the provider unreachable). It carries its HTTP status and renders as an OpenAI-style
``{"error": {...}}`` or an Anthropic-style ``{"type": "error", "error": {...}}`` body, so the
official SDKs raise their usual exception classes. Internal faults never reach clients with
details: they become a generic 500 in the same format.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error type for an HTTP status (other 5xx: ``api_error``, 4xx: invalid request)."""
    return _ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")

# OpenAI's error "type" by HTTP status.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
}


@dataclass(frozen=True, slots=True)
class ClientError(Exception):
    """An error the client is told about, with its HTTP status and a stable machine code."""

    status: int
    code: str
    message: str
    param: str | None = None

    def body(self, style: str) -> bytes:
        """The error body in ``style`` ("openai" or "anthropic")."""
        if style == "anthropic":
            kind = anthropic_error_type(self.status)
            return orjson.dumps({"type": "error", "error": {"type": kind, "message": self.message}})
        kind = _OPENAI_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return orjson.dumps(
            {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        )


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
