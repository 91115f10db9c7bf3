"""Anthropic's Messages API (``POST /v1/messages``).

Errors are ``{"type": "error", "error": {"type", "message"}}`` with a type fixed by the HTTP
status (https://docs.anthropic.com/en/api/errors); in a stream, an ``event: error`` event.
Usage is in the answer's ``usage``, and in a stream split across ``message_start`` (input and
cache tokens) and ``message_delta`` (the final, cumulative output tokens); ``message_stop``
completes the stream. Every stream reports usage: nothing needs asking.
"""

from __future__ import annotations

import datetime
from typing import Any

import orjson

from ext_proc.llm.errors import ClientError
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import apply_anthropic, apply_streamed, started

from .base import ParsedRequest, RateWindow, Reader, WireAPI, error_code

_TYPES = {
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


def stored_files(payload: dict[str, Any]) -> str | None:
    """The first place of a Messages request that names what Anthropic stores for the key, as
    its place: a file of the Files API (an ``image`` or ``document`` block's ``file`` source, a
    ``container_upload`` block, also inside a ``tool_result``'s content), or a code execution
    container to reuse (``container``: its id, or an object with one) or a custom skill (uploaded to
    the key's workspace). None when there is none."""
    container = payload.get("container")
    if isinstance(container, str) or (isinstance(container, dict) and container.get("id") is not None):
        return "container" if isinstance(container, str) else "container.id"
    skills = container.get("skills") if isinstance(container, dict) else None
    for index, skill in enumerate(skills if isinstance(skills, list) else ()):
        if isinstance(skill, dict) and skill.get("type") == "custom":  # uploaded to the key's workspace
            return f"container.skills[{index}]"
    messages = payload.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        found = _stored_block(content, f"messages[{index}].content")
        if found is not None:
            return found
    return None


def _stored_block(content: object, where: str) -> str | None:
    for at, block in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(block, dict):
            continue
        here = f"{where}[{at}]"
        if block.get("type") == "container_upload" and block.get("file_id") is not None:
            return f"{here}.file_id"
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "file":
            return f"{here}.source.file_id"
        if isinstance(source, dict) and source.get("type") == "content":  # a document of blocks
            found = _stored_block(source.get("content"), f"{here}.source.content")
            if found is not None:
                return found
        if block.get("type") == "tool_result":
            found = _stored_block(block.get("content"), f"{here}.content")
            if found is not None:
                return found
    return None


def error_type(status: int) -> str:
    """The Anthropic error type for an HTTP status (other 5xx: ``api_error``, 4xx: invalid request)."""
    return _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


class MessagesReader(Reader):
    """Usage from ``message_start`` and ``message_delta`` (or the answer's ``usage``)."""

    __slots__ = ()

    def _body(self, payload: dict[str, Any]) -> None:
        apply_anthropic(self.usage, payload.get("usage"))
        if isinstance(payload.get("stop_reason"), str):
            self.finish_reasons.append(payload["stop_reason"])

    def _event(self, event: SSEEvent) -> None:
        name = event.event
        if not name and event.data:  # the event line is optional in SSE: the type is in the data too
            payload = event.json()
            name = str(payload.get("type", "")) if payload is not None else ""
        if name == "message_stop":
            self.complete = True
        elif name == "content_block_delta":
            self.keep(event.data)
        elif name in ("message_start", "message_delta", "error") and event.data:
            payload = event.json()
            if payload is None:
                return
            if name == "message_start":
                message = payload.get("message")
                if isinstance(message, dict):
                    if isinstance(message.get("model"), str):
                        self.model = message["model"]
                    usage = message.get("usage")
                    if isinstance(usage, dict):  # its output_tokens (1) is a placeholder: message_delta has the count
                        apply_streamed(apply_anthropic, self.usage, started(usage))
            elif name == "message_delta":
                apply_streamed(apply_anthropic, self.usage, payload.get("usage"))
                delta = payload.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                    self.finish_reasons.append(delta["stop_reason"])
            else:
                self.error = error_code(payload)

    def _text(self, event: dict[str, Any], parts: list[str]) -> None:
        delta = event.get("delta")
        if isinstance(delta, dict):
            text = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
            if isinstance(text, str):
                parts.append(text)


class MessagesAPI(WireAPI):
    __slots__ = ()

    request_id_header = "request-id"  # where Anthropic's SDK reads it

    def rate_limit_headers(self, windows: list[RateWindow], now: float) -> tuple[tuple[str, str], ...]:
        """Anthropic's ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (reset: RFC 3339)."""
        out: list[tuple[str, str]] = []
        for window in windows:
            reset = datetime.datetime.fromtimestamp(window.resets, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out += [(f"anthropic-ratelimit-{window.kind}-limit", str(window.limit)),
                    (f"anthropic-ratelimit-{window.kind}-remaining", str(window.remaining)),
                    (f"anthropic-ratelimit-{window.kind}-reset", reset)]
        return tuple(out)

    def parse(self, body: bytes) -> ParsedRequest:
        """A Messages request must set ``max_tokens`` (a positive integer), as Anthropic's API checks:
        refused here in Anthropic's words, so a request another family's model serves (translated)
        works the same once Claude serves it. Counting tokens asks for no output: no check."""
        request = super().parse(body)
        if self.output_fields is not None:
            value = request.payload.get("max_tokens")
            if value is None:
                raise ClientError(400, "invalid_request", "max_tokens: Field required", "max_tokens")
            if not isinstance(value, int) or isinstance(value, bool):
                raise ClientError(400, "invalid_type", "max_tokens: Input should be a valid integer", "max_tokens")
            if value < 1:
                raise ClientError(400, "invalid_value", "max_tokens: Input should be greater than or equal to 1",
                                  "max_tokens")
        return request

    def missing(self, field: str) -> ClientError:
        return ClientError(400, "missing_required_parameter", f"{field}: Field required", field)

    def error_body(self, error: ClientError) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": error_type(error.status), "message": error.message}})

    def stream_error(self, error: ClientError, sequence: int = 0) -> bytes:
        return b"event: error\ndata: " + self.error_body(error) + b"\n\n"

    def reader(self) -> Reader:
        return MessagesReader()


MESSAGES = MessagesAPI("anthropic.messages", "/v1/messages", "anthropic", required_list="messages")
