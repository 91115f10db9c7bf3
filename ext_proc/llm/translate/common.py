"""What both translation directions share: reasons, usage, error types and SSE framing."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.llm import exact

MALFORMED = "invalid_request"  # a TranslationError's code for input no API would take, not a missing feature


class TranslationError(Exception):
    """A request that cannot be expressed in the target API; answered as a 400 to the client, with
    ``code``: ``unsupported_for_provider`` (what the served API has no counterpart for),
    :data:`MALFORMED` (input no API would take) or ``invalid_type`` (a field of the wrong JSON type)."""

    def __init__(self, message: str, param: str | None = None, code: str = "unsupported_for_provider") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def shown(value: Any) -> str:
    """A value the client sent, for an error message: as JSON (``"bogus"``, ``5``), or "none" when
    it is missing or null; at most 80 characters."""
    if value is None:
        return "none"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Anthropic stop_reason -> OpenAI finish_reason: every value of the anthropic SDK's ``StopReason``
# (a test holds it). An answer cut short, by its max_tokens or by the model's context window
# filling up (``model_context_window_exceeded``), is ``length``: it must not look complete.
FINISH_FROM_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

# OpenAI finish_reason -> the reason a Responses answer is incomplete (any other: it completed).
INCOMPLETE_FROM_FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}

# OpenAI finish_reason -> Anthropic stop_reason: every value of the openai SDK's finish_reason.
STOP_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def sse_data(obj: Any) -> bytes:
    """One OpenAI-style SSE event: ``data: {json}`` and the blank line."""
    return b"data: " + exact.dumps(obj) + b"\n\n"  # (a provider's integer beyond 64 bits)


def sse_event(name: str, obj: Any) -> bytes:
    """One Anthropic-style SSE event: ``event: name``, ``data: {json}`` and the blank line."""
    return b"event: " + name.encode() + b"\ndata: " + exact.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
