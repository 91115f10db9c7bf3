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

import re
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


def plain_error(status: int, body: bytes, sent: bool = True, provider: str | None = None) -> ClientError:
    """A JSON error for a non-JSON error response. ``sent``: the request went upstream; else Envoy
    refused it itself, and no provider is blamed: a 400 or 501 is its HTTP/1 codec refusing the
    request's framing (``transfer-encoding: gzip, chunked``, both ``content-length`` and
    ``transfer-encoding``, a bad chunk size, a method in lower case).

    Envoy's own replies to a request it sent (a provider it could not reach, a timeout: each has a
    response flag, or is a 500 or 504) are JSON already, by its ``local_reply_config`` (the
    bootstrap's, the Istio overlay's): a non-JSON answer to a request that went upstream is the
    provider's (or a proxy's before it), named so (``provider``: its name): a 429
    ``rate_limit_exceeded``, else ``provider_error``. Its body is never echoed (a page may quote
    anything, the key it was sent among them): its size, and an HTML page's short plain title.
    Envoy's default plain-text bodies (without that configuration) still read as Envoy's."""
    text = body[:300].decode("utf-8", "replace").strip() or "no response body"
    if status == 413:
        return ClientError(413, "request_too_large", f"The request is too large for the gateway: {text}")
    if not sent and status in (400, 501):
        return ClientError(status, FRAMING, f"The gateway could not read the request's HTTP framing: {text}. "
                                            "Nothing was sent to a provider.")
    if sent and (body.strip() or status < 500) and not text.startswith(_ENVOYS_TEXTS):
        who = f"The provider '{provider}'" if provider else "The provider"
        code = "rate_limit_exceeded" if status == 429 else "provider_error"
        return ClientError(status, code, f"{who} answered {status} with a body that is not JSON "
                                         f"({_described(body)}); Tollway does not pass it on.")
    if status >= 500 and sent:
        return ClientError(status, "provider_unavailable", f"The provider did not answer: {text}")
    return ClientError(status, "gateway_error", f"The request failed at the gateway: {text}")


# How Envoy's own plain-text replies begin (with no local_reply_config to make them JSON).
_ENVOYS_TEXTS = ("no healthy upstream", "upstream connect error", "upstream request timeout", "upstream reset")
_TITLE = re.compile(rb"<title[^>]*>([^<]{1,200})</title>", re.IGNORECASE)
_PLAIN_TITLE = re.compile(r"[A-Za-z0-9 .,:;!?'()|/&-]{1,80}")
_LONG_WORD = re.compile(r"[A-Za-z0-9_-]{20,}")  # could be a key or a token: never quoted


def _described(body: bytes) -> str:
    """A non-JSON body in words: its size, an HTML page's title when it is short plain words."""
    size = f"{len(body)} bytes" if body.strip() else "an empty body"
    found = _TITLE.search(body[:16384])
    if found is None:
        return size if body.lstrip()[:1] != b"<" else f"an HTML page of {size}"
    title = " ".join(found.group(1).decode("utf-8", "replace").split())
    if _PLAIN_TITLE.fullmatch(title) and not _LONG_WORD.search(title):
        return f'an HTML page of {size} titled "{title}"'
    return f"an HTML page of {size}"


FRAMING = "bad_request_framing"  # Envoy's codec refused the request (see plain_error): the client's error
INTERRUPTED = ClientError(502, "stream_interrupted", "The provider's stream ended before the response was complete.")
