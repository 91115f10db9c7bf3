"""Serve an OpenAI Responses client (``POST /v1/responses``) from a Chat Completions model (an
``openai-compatible`` server: vLLM, Ollama, LiteLLM and the like mostly speak chat only).

* :func:`request` turns the Responses request into a ``chat.completions`` request.
* :func:`response` turns the ``chat.completion`` into a ``response`` object.
* :class:`StreamTranslator` turns the ``chat.completion.chunk`` stream into Responses events.
* :func:`error` gives the provider's error in OpenAI's format (the one Responses clients read).

Request mapping (:func:`~.responses_common.to_chat`, shared with :mod:`.responses_to_anthropic`):

* ``instructions`` -> a leading ``system`` message; ``input`` as a string -> one user message.
* ``input`` items: messages (``user``, ``assistant``, ``system``, ``developer``; ``input_text`` /
  ``output_text`` parts -> text parts, ``input_image`` with an ``image_url`` (URL or ``data:``)
  -> ``image_url`` parts, ``input_file`` with inline ``file_data`` -> ``file`` parts);
  ``function_call`` items -> ``tool_calls`` of an assistant message (consecutive calls, and the
  assistant text before them, share one message); ``function_call_output`` -> a ``tool``
  message (its output a string, or text parts). A ``tool`` message holds text only: the images
  (and inline files) of an output go in a user message after the run of tool messages, after a
  text part ``"Images returned by tool call {call_id}:"``, and the tool message says
  ``"[N image(s) attached in the following user message]"`` (the Messages pair keeps them in
  the ``tool_result``, where Claude takes them).
* ``tools`` of type ``function`` -> chat ``function`` tools (``name``, ``description``,
  ``parameters``, ``strict``); ``tool_choice`` ``auto``/``none``/``required`` as they are, a
  named function -> ``{"type": "function", "function": {"name"}}``; ``parallel_tool_calls``.
* ``max_output_tokens`` -> ``max_tokens`` (what OpenAI-compatible servers know); ``temperature``,
  ``top_p``; ``user`` (or ``safety_identifier``) -> ``user``; ``text.format`` ``json_object`` /
  ``json_schema`` -> ``response_format``; ``stream`` -> ``stream`` with
  ``stream_options.include_usage`` (the usage of ``response.completed``).

Dropped (no counterpart; the model reads the same conversation): ``reasoning`` items in
``input`` (their content is encrypted for OpenAI's own models) and the ``reasoning``
setting, ``store`` (a translated response is never stored), ``include``, ``metadata``,
``truncation``, ``service_tier``, ``top_logprobs``, ``max_tool_calls``, ``prompt_cache_key``,
``stream_options``, ``text.verbosity``, and any field not listed here.

Refused with :class:`~.common.TranslationError` (a 400 naming the field): ``previous_response_id``,
``conversation``, ``prompt`` (stored by OpenAI), ``background``, ``item_reference`` items, built-in
tools (``web_search``, ``file_search``, ``code_interpreter``, ``computer_use_preview``,
``image_generation``, ``mcp``, ``local_shell``, custom tools) and their call items, images and
files given by ``file_id`` or ``file_url``, audio, non-text content in assistant or system
messages, hosted or ``allowed_tools`` tool choices, other ``text.format`` types.

Response mapping: the message's text (or refusal) -> one ``message`` output item, each tool call
-> a ``function_call`` item (``call_id`` = the chat call id, so the client sends it back);
``finish_reason`` ``length`` -> status ``incomplete`` (``max_output_tokens``), ``content_filter``
-> ``incomplete`` (``content_filter``), else ``completed``; ``usage`` -> ``input_tokens``
(cached in ``input_tokens_details``), ``output_tokens`` (reasoning in its details).
``reasoning_content`` (DeepSeek, vLLM) is dropped. The id is ``resp_`` + the completion id.
"""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.llm.apis.openai import error_type
from ext_proc.llm.runtime import SYSTEM, Runtime
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import Usage, apply_openai, apply_streamed

from .anthropic_to_openai import _error_message
from .common import INCOMPLETE_FROM_FINISH, TranslationError
from .responses_common import EventWriter, call_item, message_item, response_id, response_object, to_chat, usage_object

__all__ = ["StreamTranslator", "error", "request", "response"]


def request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A Responses request body -> a Chat Completions request body for ``model``."""
    out, _origins = to_chat(body, model)
    out["messages"] = _tool_attachments(out["messages"])
    limit = out.pop("max_completion_tokens", None)
    if limit is not None:
        out["max_tokens"] = limit
    if out.get("stream"):
        out["stream_options"] = {"include_usage": True}
    return out


def _tool_attachments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A chat ``tool`` message holds text only: the images (and inline files) of a function call's
    output go in a user message after the run of tool messages, each call's after a text part
    naming it, and the tool message says so (as :mod:`.anthropic_to_openai` does for Claude's tool
    results)."""
    if not any(m["role"] == "tool" and isinstance(m["content"], list) for m in messages):
        return messages
    out: list[dict[str, Any]] = []
    attached: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] != "tool" and attached:
            out.append({"role": "user", "content": attached})
            attached = []
        content = message["content"]
        if message["role"] == "tool" and isinstance(content, list):
            others = [part for part in content if part["type"] != "text"]
            if others:
                noun = "image(s)" if all(part["type"] == "image_url" for part in others) else "attachment(s)"
                texts = [part for part in content if part["type"] == "text"]
                note = {"type": "text", "text": f"[{len(others)} {noun} attached in the following user message]"}
                message = {**message, "content": [*texts, note]}
                what = "Images" if noun == "image(s)" else "Attachments"
                attached += [{"type": "text", "text": f"{what} returned by tool call {message['tool_call_id']}:"},
                             *others]
        out.append(message)
    if attached:
        out.append({"role": "user", "content": attached})
    return out


def response(completion: dict[str, Any], *, runtime: Runtime = SYSTEM) -> dict[str, Any]:
    """A ``chat.completion`` -> a ``response`` object."""
    rid = response_id(completion.get("id"), "chatcmpl-", runtime.token)
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    output: list[dict[str, Any]] = []
    text = message.get("content") or message.get("refusal")
    if isinstance(text, str) and text:
        output.append(message_item(f"msg_{rid[5:]}_0", text))
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        output.append(call_item(f"fc_{rid[5:]}_{len(output)}", str(call.get("id") or f"call_{len(output)}"),
                                str(function.get("name") or ""), arguments if isinstance(arguments, str) else ""))
    usage = Usage()
    apply_openai(usage, completion.get("usage"))
    incomplete = INCOMPLETE_FROM_FINISH.get(choice.get("finish_reason"))  # type: ignore[arg-type]
    created = completion.get("created")
    return response_object(rid, created if isinstance(created, int) else int(runtime.now()), completion.get("model"),
                           output, "incomplete" if incomplete else "completed",
                           usage_object(usage) if isinstance(completion.get("usage"), dict) else None, incomplete)


class _Call:
    """A tool call whose name has not arrived: its item cannot open before it does."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments = ""


class StreamTranslator:
    """``chat.completion.chunk`` events in, Responses events out.

    The first chunk opens the response; content and refusal deltas go to a message item, each
    tool call to a ``function_call`` item (opened once its name has arrived). The finish reason
    closes the open items; ``response.completed`` (or ``.incomplete``) follows with the usage
    chunk Tollway asked for, or at ``[DONE]`` when the server sent none. A stream without a
    finish reason is not complete: nothing is invented, and the caller ends it with
    :meth:`error`. Parallel calls whose fragments the provider interleaves are items open side
    by side (each event names its ``output_index``), all done at the finish reason; a call's
    fragment after text that followed it (its item done) cannot be expressed and raises
    :class:`TranslationError`.
    """

    __slots__ = ("_closed", "_complete", "_failed", "_finish", "_last", "_last_id", "_model", "_open", "_pending",
                 "_token", "_usage", "_writer")

    def __init__(self, *, model: str | None = None, runtime: Runtime = SYSTEM) -> None:
        self._model = model
        self._token = runtime.token
        self._writer = EventWriter(int(runtime.now()))
        self._usage = Usage()
        self._finish: str | None = None  # the finish reason, once seen
        self._open: set[int] = set()  # chat indexes of the open tool calls
        self._last = -1  # the highest tool call index seen
        self._last_id = ""  # the last tool call id seen
        self._closed: set[int] = set()
        self._pending: dict[int, _Call] = {}
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
        if event.data == b"[DONE]":
            return self.end()
        data = event.json() if event.data else None
        return b"" if data is None else self.chunk(data)

    def chunk(self, data: dict[str, Any]) -> bytes:
        """One decoded chunk -> Responses events."""
        if self._complete or self._failed:
            return b""
        writer = self._writer
        choices = data.get("choices")
        if not choices and isinstance(data.get("error"), dict):
            message = data["error"].get("message")
            return self.error(message if isinstance(message, str) and message else "The provider stream failed.",
                              data["error"].get("code"))
        out = b""
        if not writer.started:
            model = self._model if self._model is not None else data.get("model")
            out = writer.start(response_id(data.get("id"), "chatcmpl-", self._token), model)
        if choices and self._finish is None and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal"):
                    text = delta.get(key)
                    if text and isinstance(text, str):
                        out += self._text(text)
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        out += self._call(call)
            finish = choice.get("finish_reason")
            if finish:
                for index in sorted(self._pending):  # calls whose name never came: still the model's output
                    out += self._start(index, self._pending[index])
                self._pending.clear()
                out += writer.close()
                self._finish = str(finish)
        usage = data.get("usage")
        if isinstance(usage, dict):
            apply_streamed(apply_openai, self._usage, usage)
            if self._finish is not None:
                out += self._final()
        return out

    def end(self) -> bytes:
        """The provider's stream ended (``[DONE]``): the terminal event if a finish reason came."""
        if self._complete or self._failed or self._finish is None:
            return b""
        return self._final()

    def error(self, message: str, code: str | None = "stream_error") -> bytes:
        """An ``error`` event for the client; nothing more is translated after it."""
        self._failed = True
        return self._writer.error(message, code if isinstance(code, str) else None)

    def _final(self) -> bytes:
        self._complete = True
        return self._writer.finish(self._usage, INCOMPLETE_FROM_FINISH.get(self._finish or ""))

    def _text(self, text: str) -> bytes:
        self._closed |= self._open  # the message item closes the calls' items
        self._open.clear()
        return self._writer.text(text)

    def _call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index")
        call_id = call.get("id")
        if not isinstance(index, int):  # servers that omit the index: a new id starts a new call
            index = max(self._last, 0)
            if call_id and self._last_id and call_id != self._last_id:
                index += 1
        if isinstance(call_id, str) and call_id:
            self._last_id = call_id
        self._last = max(self._last, index)
        raw = call.get("function")
        function: dict[str, Any] = raw if isinstance(raw, dict) else {}
        fragment = function.get("arguments")
        fragment = fragment if isinstance(fragment, str) else ""
        if index in self._open:
            return self._writer.arguments(fragment, key=index)
        if index in self._closed:
            raise TranslationError("The provider interleaved the fragments of parallel tool calls.")
        pending = self._pending.setdefault(index, _Call())
        if isinstance(call_id, str) and call_id and not pending.id:
            pending.id = call_id
        name = function.get("name")
        if isinstance(name, str) and name and not pending.name:
            pending.name = name
        pending.arguments += fragment
        if not pending.name:
            return b""
        return self._start(index, self._pending.pop(index))

    def _start(self, index: int, call: _Call) -> bytes:
        self._open.add(index)  # (another call open stays open: its fragments may come still)
        out = self._writer.call(call.id or f"call_{index}", call.name, key=index)
        return out + self._writer.arguments(call.arguments, key=index)


def error(status: int, body: bytes) -> bytes:
    """The provider's error body (any bytes) in OpenAI's error format, as Responses clients read it."""
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        data = None
    inner = data.get("error") if isinstance(data, dict) else None
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        return orjson.dumps({"error": {"message": inner["message"], "type": inner.get("type") or error_type(status),
                                       "param": inner.get("param"), "code": inner.get("code")}})
    return orjson.dumps({"error": {"message": _error_message(status, body), "type": error_type(status),
                                   "param": None, "code": None}})
