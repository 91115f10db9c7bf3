"""Serve an OpenAI Responses client (``POST /v1/responses``) from Anthropic's Messages API.

* :func:`request` turns the Responses request into a Messages request: first into the chat
  request it means (:func:`~.responses_common.to_chat`, the mapping listed in
  :mod:`.responses_to_chat`), then through :func:`.openai_to_anthropic.request`, so system
  prompts, merged turns, tool calls and results, images and inline PDFs reach Claude exactly as
  an OpenAI chat client's do (``instructions`` and ``system``/``developer`` messages -> ``system``,
  ``max_output_tokens`` -> ``max_tokens``, default the target's ``output_tokens`` (what the
  limits step claims), ``temperature`` clamped to 0-1, ``text.format`` JSON -> an instruction in
  the system prompt, ``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``). Errors that the second step
  raises about a chat message are reported on the Responses item it came from (``input[3]``).
* :func:`response` turns a Message into a ``response`` object.
* :class:`StreamTranslator` turns Anthropic's event stream into Responses events.
* :func:`error` turns an Anthropic error into OpenAI's error format (what Responses clients read).

Dropped and refused: as for :mod:`.responses_to_chat` (``previous_response_id``,
``conversation``, stored prompts, background runs, built-in tools such as web or file search,
``file_id`` images and files are refused; ``reasoning`` items and settings, ``store``,
``include``, ``metadata`` are dropped), plus what Anthropic cannot take from a chat request
(see :mod:`.openai_to_anthropic`: files other than inline PDFs, tool call arguments that are not
a JSON object).

Response mapping: text blocks -> ``message`` output items (adjacent blocks share one),
``tool_use`` blocks -> ``function_call`` items (``call_id`` = the ``tool_use`` id, ``arguments``
= compact JSON of its input); thinking and redacted thinking blocks are dropped (Tollway does
not ask for thinking, and they carry signatures only Anthropic reads). ``stop_reason``
``max_tokens`` and ``model_context_window_exceeded`` (an answer cut short) -> status ``incomplete``
(``max_output_tokens``), ``refusal`` -> ``incomplete`` (``content_filter``), anything else ->
``completed``: the status the chat client's finish_reason gives (:data:`.common.FINISH_FROM_STOP`).
Usage: ``input_tokens`` counts cache reads and writes (``input_tokens_details.cached_tokens`` /
``cache_write_tokens``), ``output_tokens`` as reported. The id is ``resp_`` + the message id
without ``msg_``.
"""

from __future__ import annotations

from typing import Any

from ext_proc.llm import exact
from ext_proc.llm.runtime import SYSTEM, Runtime
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import Usage, apply_anthropic, apply_streamed, started

from . import openai_to_anthropic
from .common import FINISH_FROM_STOP, INCOMPLETE_FROM_FINISH, TranslationError
from .responses_common import (
    EventWriter,
    call_item,
    map_param,
    message_item,
    response_id,
    response_object,
    to_chat,
    usage_object,
)

__all__ = ["StreamTranslator", "error", "request", "response"]


def _incomplete(stop_reason: Any) -> str | None:
    """Why a response stopping for ``stop_reason`` is incomplete (None: it completed); the same
    answer as for a chat client, whose finish_reason says it (``length`` -> ``max_output_tokens``)."""
    return INCOMPLETE_FROM_FINISH.get(FINISH_FROM_STOP.get(stop_reason, "")) if isinstance(stop_reason, str) else None


def request(body: dict[str, Any], model: str, *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """A Responses request body -> an Anthropic Messages request body for ``model``."""
    chat, origins = to_chat(body, model)
    try:
        return openai_to_anthropic.request(chat, model, default_max_tokens=default_max_tokens)
    except TranslationError as exc:
        raise map_param(exc, origins) from None


def response(message: dict[str, Any], *, runtime: Runtime = SYSTEM) -> dict[str, Any]:
    """An Anthropic Message -> a ``response`` object."""
    rid = response_id(message.get("id"), "msg_", runtime.token)
    output: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text = block.get("text") or ""
            last = output[-1] if output else None
            if last is not None and last["type"] == "message":
                last["content"][0]["text"] += text
            else:
                output.append(message_item(f"msg_{rid[5:]}_{len(output)}", text))
        elif kind == "tool_use":
            arguments = exact.dumps(block.get("input") or {}).decode()
            output.append(call_item(f"fc_{rid[5:]}_{len(output)}", str(block.get("id") or ""),
                                    str(block.get("name") or ""), arguments))
        # thinking, redacted_thinking, server tool blocks: dropped (see the module docstring)
    usage = Usage()
    raw = message.get("usage")
    apply_anthropic(usage, raw)
    incomplete = _incomplete(message.get("stop_reason"))
    return response_object(rid, int(runtime.now()), message.get("model"), output,
                           "incomplete" if incomplete else "completed",
                           usage_object(usage) if isinstance(raw, dict) else None, incomplete)


class StreamTranslator:
    """Anthropic Messages events in, Responses events out.

    ``message_start`` opens the response (and brings the input usage); a text block becomes a
    message item, a ``tool_use`` block a ``function_call`` item whose arguments are the
    ``input_json_delta`` fragments; ``content_block_stop`` closes the item. ``message_delta``
    brings the stop reason and the output usage; ``message_stop`` ends the response with
    ``response.completed`` (or ``.incomplete``). An Anthropic ``error`` event becomes an
    ``error`` event. A stream without ``message_stop`` is not complete: nothing is invented, and
    the caller ends it with :meth:`error`.
    """

    __slots__ = ("_block", "_complete", "_failed", "_model", "_stop", "_token", "_usage", "_writer")

    def __init__(self, *, model: str | None = None, runtime: Runtime = SYSTEM) -> None:
        self._model = model
        self._token = runtime.token
        self._writer = EventWriter(int(runtime.now()))
        self._usage = Usage()
        self._block = -1  # the Anthropic index of the block whose item is open
        self._stop: Any = None
        self._complete = False
        self._failed = False

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def sequence(self) -> int:
        """The events written so far (the next event's ``sequence_number``)."""
        return self._writer.sequence

    def feed(self, event: SSEEvent) -> bytes:
        data = event.json() if event.data else None
        if data is None:
            return b""
        return self.event(event.event or str(data.get("type", "")), data)

    def event(self, name: str, data: dict[str, Any]) -> bytes:
        """One decoded Anthropic event -> Responses events."""
        if self._complete or self._failed:
            return b""
        writer = self._writer
        out = b""
        if not writer.started and name not in ("ping", "error"):
            message = data.get("message") if name == "message_start" else None
            message = message if isinstance(message, dict) else {}
            model = self._model if self._model is not None else message.get("model")
            out = writer.start(response_id(message.get("id"), "msg_", self._token), model)
            apply_anthropic(self._usage, started(message.get("usage")))  # (its output_tokens a placeholder)
        if name == "content_block_delta":
            delta = data.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if data.get("index") != self._block:
                return out  # a block without an item (thinking)
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
                return out + writer.text(delta["text"])
            if delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                return out + writer.arguments(delta["partial_json"])
            return out
        if name == "content_block_start":
            block = data.get("content_block")
            block = block if isinstance(block, dict) else {}
            kind = block.get("type")
            if kind == "text":
                self._block = data.get("index", -1)
                out += writer.close()
                text = block.get("text")
                return out + (writer.text(text) if isinstance(text, str) and text else b"")
            if kind == "tool_use":
                self._block = data.get("index", -1)
                out += writer.call(str(block.get("id") or ""), str(block.get("name") or ""))
                given = block.get("input")
                return out + (writer.arguments(exact.dumps(given).decode()) if given else b"")
            return out  # thinking, redacted_thinking, server tool blocks: dropped
        if name == "content_block_stop":
            if data.get("index") == self._block:
                self._block = -1
                out += writer.close()
            return out
        if name == "message_delta":
            apply_streamed(apply_anthropic, self._usage, data.get("usage"))
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self._stop = delta["stop_reason"]
            return out
        if name == "message_stop":
            self._complete = True
            return out + writer.finish(self._usage, _incomplete(self._stop))
        if name == "error":
            err = data.get("error")
            err = err if isinstance(err, dict) else {}
            message = err.get("message")
            kind = err.get("type")
            return out + self.error(message if isinstance(message, str) and message
                                    else "The provider reported an error.", kind if isinstance(kind, str) else None)
        return out  # message_start (handled above), ping, unknown events

    def end(self) -> bytes:
        """Everything was written with ``message_stop``."""
        return b""

    def error(self, message: str, code: str | None = "stream_error") -> bytes:
        """An ``error`` event for the client; nothing more is translated after it."""
        self._failed = True
        return self._writer.error(message, code)


def error(status: int, body: bytes) -> bytes:
    """An Anthropic error response body (any bytes) -> OpenAI's error JSON, which Responses clients read."""
    return openai_to_anthropic.error(status, body)
