"""OpenAI's wire APIs: chat completions, (legacy) completions and embeddings.

They share OpenAI's error format (``{"error": {"message", "type", "param", "code"}}``; in a
stream, a ``data:`` event holding that object, on which the ``openai`` SDK raises) and its usage
object (``prompt_tokens``, ``completion_tokens`` and their details). Streams are ``data:``
events ending with ``data: [DONE]``; they report usage only when asked with
``stream_options.include_usage``, in a last chunk with no choices, which Tollway asks for when
the client did not and then hides from that client.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from ext_proc.llm.errors import ClientError
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import apply_openai, apply_service_tier, apply_streamed

from .base import ParsedRequest, RateWindow, Reader, WireAPI, error_code

# OpenAI's error "type" by HTTP status.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def stored_files(payload: dict[str, Any]) -> str | None:
    """The first place where chat messages name what the provider stores for its key (whoever
    made it with that key): a content part's file (a ``file`` part's ``file.file_id``), an
    assistant's audio answer given back by its id (``audio.id``: the provider replays the one it
    stored); None when there is none."""
    messages = payload.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        audio = message.get("audio") if isinstance(message, dict) else None
        if isinstance(audio, dict) and audio.get("id") is not None:
            return f"messages[{index}].audio.id"
        content = message.get("content") if isinstance(message, dict) else None
        for at, part in enumerate(content if isinstance(content, list) else ()):
            file = part.get("file") if isinstance(part, dict) else None
            if isinstance(file, dict) and file.get("file_id") is not None:
                return f"messages[{index}].content[{at}].file.file_id"
    return None


class OpenAIReader(Reader):
    """Usage from the JSON answer's ``usage``, or the stream's usage chunk; ``[DONE]`` completes.
    The ``service_tier`` the answer (or a decoded chunk: each carries it) says it was served in."""

    __slots__ = ()

    def _body(self, payload: dict[str, Any]) -> None:
        apply_openai(self.usage, payload.get("usage"))
        apply_service_tier(self.usage, payload)
        self._finished(payload)

    def _finished(self, payload: dict[str, Any]) -> None:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                self.finish_reasons.append(choice["finish_reason"])

    def _event(self, event: SSEEvent) -> None:
        data = event.data
        if not data:
            return
        if data == b"[DONE]":
            self.complete = True
            return
        self.keep(data)
        first = self.model is None
        # Most chunks are content deltas: decode only the first (the model), the last of a choice
        # (its finish reason), usage and errors. A chunk with a ``\u`` escape anywhere is decoded
        # too: a key may be written with escapes ("us\u0061ge"), which these bytes would miss.
        if (not first and b"\\u" not in data and b'"error"' not in data
                and (b'"usage"' not in data or data.count(b'"usage"') == data.count(b'"usage":null'))
                and b'"finish_reason":"' not in data and b'"finish_reason": "' not in data):
            return
        chunk = event.json()
        if chunk is None:
            return
        self._finished(chunk)
        apply_service_tier(self.usage, chunk)
        if first and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if "error" in chunk:
            self.error = error_code(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            apply_streamed(apply_openai, self.usage, usage)
            event.usage_only = chunk.get("choices") == []

    def _text(self, event: dict[str, Any], parts: list[str]) -> None:
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            for call in calls or ():
                arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
                if isinstance(arguments, str):
                    parts.append(arguments)


class OpenAIAPI(WireAPI):
    """An OpenAI endpoint; ``stream_usage``: its streams report usage only when asked."""

    __slots__ = ("stream_usage",)

    def __init__(self, name: str, path: str, *, required_list: str | None = None, streams: bool = True,
                 stream_usage: bool = False, output_fields: tuple[str, ...] | None = ("max_tokens",),
                 answer_fields: tuple[str, ...] = ()) -> None:
        super().__init__(name, path, "openai", required_list=required_list, streams=streams,
                         output_fields=output_fields, answer_fields=answer_fields)
        self.stream_usage = stream_usage

    def rate_limit_headers(self, windows: list[RateWindow], now: float) -> tuple[tuple[str, str], ...]:
        """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (reset as "1m30s")."""
        out: list[tuple[str, str]] = []
        for window in windows:
            out += [(f"x-ratelimit-limit-{window.kind}", str(window.limit)),
                    (f"x-ratelimit-remaining-{window.kind}", str(window.remaining)),
                    (f"x-ratelimit-reset-{window.kind}", duration(window.resets - now))]
        return tuple(out)

    def ask_for_usage(self, request: ParsedRequest) -> bool:
        if not self.stream_usage:
            return False
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

    def error_body(self, error: ClientError) -> bytes:
        return orjson.dumps({"error": {"message": error.message, "type": error_type(error.status),
                                       "param": error.param, "code": error.code}})

    def stream_error(self, error: ClientError, sequence: int = 0) -> bytes:
        return b"data: " + self.error_body(error) + b"\n\n"

    def reader(self) -> Reader:
        return OpenAIReader()


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it in reset headers (Go's duration form): "20ms", "1s", "8.64s",
    "6m0s", "1m30.5s", "1h0m0s"; to the millisecond, so the reset is not told earlier than it is."""
    ms = max(0, math.ceil(round(seconds * 1000, 6)))  # rounded up (not 70.00000000000001 up)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{hours}h{minutes}m{secs}" if hours else f"{minutes}m{secs}" if minutes else secs


CHAT_COMPLETIONS = OpenAIAPI("openai.chat.completions", "/v1/chat/completions", required_list="messages",
                             stream_usage=True, output_fields=("max_completion_tokens", "max_tokens"),
                             answer_fields=("n",))
def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_prompt(payload: dict[str, Any], field: str) -> None:
    """A completions ``prompt`` or an embeddings ``input`` is a string, an array of strings, an array
    of token ids or an array of token-id arrays (or left out): another shape (an object, an array
    of objects) is a 400 ``invalid_type``, as Tollway meters (and guards) these and reads nothing else."""
    value = payload.get(field)
    if value is None or isinstance(value, str):
        return
    ids = [_token(item) for item in value] if isinstance(value, list) else []
    if isinstance(value, list) and (all(ids) or (not any(ids) and all(
            isinstance(item, str) or (isinstance(item, list) and all(_token(t) for t in item)) for item in value))):
        return
    raise ClientError(400, "invalid_type", f"'{field}' must be a string, an array of strings, an array of token "
                                           "ids or an array of token-id arrays.", field)


class EmbeddingsAPI(OpenAIAPI):
    """Embeddings: ``input`` is required and checked (:func:`check_prompt`); no output, no stream."""

    __slots__ = ()

    def parse(self, body: bytes) -> ParsedRequest:
        request = super().parse(body)
        if request.payload.get("input") is None:
            raise self.missing("input")
        check_prompt(request.payload, "input")
        return request


class CompletionsAPI(OpenAIAPI):
    """Legacy completions: a list of prompts is answered prompt by prompt; ``prompt`` is required and
    checked (:func:`check_prompt`), and ``suffix`` is a string."""

    __slots__ = ()

    def parse(self, body: bytes) -> ParsedRequest:
        request = super().parse(body)
        if request.payload.get("prompt") is None:
            raise self.missing("prompt")
        check_prompt(request.payload, "prompt")
        suffix = request.payload.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise ClientError(400, "invalid_type", "'suffix' must be a string.", "suffix")
        return request

    def answers(self, payload: dict[str, Any]) -> int:
        """Each prompt of a list (of strings, or of token arrays) gets its own answers."""
        prompt = payload.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
        return super().answers(payload) * prompts


# best_of: that many answers generated (and billed) server-side, the best n returned
COMPLETIONS = CompletionsAPI("openai.completions", "/v1/completions", stream_usage=True,
                             answer_fields=("n", "best_of"))
EMBEDDINGS = EmbeddingsAPI("openai.embeddings", "/v1/embeddings", streams=False, output_fields=None)
