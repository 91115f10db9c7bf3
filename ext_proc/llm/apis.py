"""The client APIs Tollway understands: how to recognise, check and meter each one.

A client API is what the application's SDK speaks (``POST /v1/chat/completions`` from the
``openai`` SDK, ``POST /v1/messages`` from the ``anthropic`` SDK). It fixes the error format the
client expects, the provider family that serves it by default, and where usage is found in
responses and streams. Validation is deliberately shallow: Tollway rejects what it cannot meter
or route (not JSON, no model, wrong types for the fields it reads) and leaves the rest of the
schema to the provider, whose own error the client then sees unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.core.errors import ClientError


@dataclass(frozen=True, slots=True)
class ClientAPI:
    """One endpoint family: ``name`` for records, ``style`` for errors and SSE flavour."""

    name: str
    style: str  # "openai" | "anthropic"
    provider: str  # the provider kind that serves it when no routing policy says otherwise
    stream_usage_option: bool  # OpenAI streams report usage only with stream_options.include_usage
    required_list: str | None  # a field that must be a JSON array when present (the provider requires it)


CHAT_COMPLETIONS = ClientAPI("openai.chat.completions", "openai", "openai", True, "messages")
COMPLETIONS = ClientAPI("openai.completions", "openai", "openai", True, None)
EMBEDDINGS = ClientAPI("openai.embeddings", "openai", "openai", False, None)
MESSAGES = ClientAPI("anthropic.messages", "anthropic", "anthropic", False, "messages")

_BY_PATH = {
    "/v1/chat/completions": CHAT_COMPLETIONS,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/messages": MESSAGES,
}


def match(path: str) -> ClientAPI | None:
    """The client API for a request path (query string ignored), or None."""
    return _BY_PATH.get(path.partition("?")[0].rstrip("/"))


def error_style(path: str) -> str:
    """The error format to answer an unrecognised request in: Anthropic's for ``/v1/messages*``."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"


@dataclass(slots=True)
class ParsedRequest:
    """What the session needs from a request body; ``payload`` is the decoded JSON object."""

    payload: dict[str, Any]
    model: str
    stream: bool


def parse_request(api: ClientAPI, body: bytes) -> ParsedRequest:
    """Decode and check a request body, raising :class:`ClientError` (400) when unusable."""
    if not body.strip():
        raise ClientError(400, "invalid_body", "The request body is empty; expected a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, "invalid_json", f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise ClientError(400, "invalid_body", "The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ClientError(400, "missing_model", "The request must name a model (a string).", "model")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ClientError(400, "invalid_type", "'stream' must be a boolean.", "stream")
    field = api.required_list
    if field is not None and field in payload:
        value = payload[field]
        if not isinstance(value, list):
            raise ClientError(400, "invalid_type", f"'{field}' must be an array of messages.", field)
    return ParsedRequest(payload, model, stream)


def ensure_stream_usage(request: ParsedRequest) -> bool:
    """Ask an OpenAI stream to report usage; True when the client had not asked itself.

    The caller then re-encodes ``request.payload`` and removes the extra usage chunk from what
    this client sees, so its stream looks exactly as it would without Tollway.
    """
    options = request.payload.get("stream_options")
    if isinstance(options, dict):
        if options.get("include_usage") is True:
            return False
        request.payload["stream_options"] = {**options, "include_usage": True}
        return True
    if options is not None:
        raise ClientError(400, "invalid_type", "'stream_options' must be an object.", "stream_options")
    request.payload["stream_options"] = {"include_usage": True}
    return True


MAX_DECODED_BODY = 64 * 1024 * 1024


def gunzip(body: bytes) -> bytes:
    """Decompress a gzip body (every member), refusing bombs past :data:`MAX_DECODED_BODY`."""
    out = bytearray()
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(wbits=31)
            out += inflater.decompress(data, MAX_DECODED_BODY - len(out) + 1)
            if len(out) > MAX_DECODED_BODY or inflater.unconsumed_tail:
                raise ClientError(413, "body_too_large", "The decompressed request body is too large.")
            if not inflater.eof:
                raise ClientError(400, "invalid_body", "The gzip-encoded request body is truncated.")
            data = inflater.unused_data
    except zlib.error:
        raise ClientError(400, "invalid_body", "The gzip-encoded request body is corrupt.") from None
    return bytes(out)
