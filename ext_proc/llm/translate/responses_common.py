"""What both Responses translations share: the client's request read as a chat request, and the
Responses answer written (a ``response`` object, or its typed event stream).

A Responses client served by another API goes through two halves. The request half,
:func:`to_chat`, reads a ``/v1/responses`` body into the equivalent Chat Completions body; the
chat-completions pair sends that as it is (:mod:`.responses_to_chat`), the Messages pair hands it
to :mod:`.openai_to_anthropic` (:mod:`.responses_to_anthropic`), so the mapping of turns, tools
and images to Anthropic lives in one place. Everything the Responses API has and chat has not is
refused here, naming the Responses field, so what the second half may still refuse is rare; its
errors name chat messages, which :func:`origins <to_chat>` maps back to ``input[i]``.

The answer half, :class:`EventWriter` and :func:`response_object`, writes what the OpenAI
Responses API writes: each translator reads its provider's answer (Anthropic events, chat
chunks) and calls the writer with text deltas, tool calls and the end, so both directions emit
the same events in the same order::

    response.created, response.in_progress,
    per output item: response.output_item.added,
        a message:        response.content_part.added, response.output_text.delta*,
                          response.output_text.done, response.content_part.done
        a function call:  response.function_call_arguments.delta*,
                          response.function_call_arguments.done
        response.output_item.done,
    response.completed | response.incomplete (the whole response, with its usage)

Every event carries its ``sequence_number`` (from 0). The request's own settings are not echoed
back (the translators do not see the client's request): a translated ``response`` reports
``tools: []``, ``tool_choice: "auto"``, ``parallel_tool_calls: true`` and no ``instructions``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from ext_proc.llm import exact
from ext_proc.llm.usage import Usage

from .common import MALFORMED, TranslationError, shown

# -- the request: Responses -> chat ----------------------------------------------------------

# Top-level fields that need state only OpenAI keeps (its stored responses, conversations,
# prompt templates, background runs): a translated request cannot honour them.
_STATEFUL = {
    "previous_response_id": "Responses stored by OpenAI cannot be continued on this model: send the whole "
                            "conversation in 'input' instead of 'previous_response_id'.",
    "conversation": "OpenAI conversations are not available for this model: send the whole conversation in 'input'.",
    "prompt": "Stored prompt templates are not available for this model.",
    "background": "Background responses are not available for this model.",
}
_ROLES = ("user", "assistant", "system", "developer")
_CHAT_PARAM = re.compile(r"messages\[(\d+)\][\w.\[\]]*")


def to_chat(body: dict[str, Any], model: str) -> tuple[dict[str, Any], list[str]]:
    """A Responses request body -> the Chat Completions body meaning the same, and the Responses
    field each chat message came from (``instructions``, ``input``, ``input[3]``)."""
    for field, message in _STATEFUL.items():
        value = body.get(field)
        if value is not None and value is not False:
            raise TranslationError(message, field)
    messages: list[dict[str, Any]] = []
    origins: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
            origins.append("instructions")
    elif isinstance(instructions, list):
        _items(instructions, "instructions", messages, origins)
    elif instructions is not None:
        raise TranslationError("'instructions' must be a string.", "instructions", MALFORMED)
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        origins.append("input")
    elif isinstance(given, list):
        _items(given, "input", messages, origins)
    elif given is not None:
        raise TranslationError("'input' must be a string or an array of input items.", "input", MALFORMED)
    if not any(m["role"] != "system" for m in messages):
        raise TranslationError("The request needs 'input': at least one user message.", "input")

    out: dict[str, Any] = {"model": model, "messages": messages}
    _tools(body, out)
    limit = body.get("max_output_tokens")
    if limit is not None:
        out["max_completion_tokens"] = limit
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(name) is not None:
            out[name] = body[name]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["user"] = user
    _text_format(body.get("text"), out)
    if body.get("stream") is True:
        out["stream"] = True
    return out, origins


def map_param(error: TranslationError, origins: list[str]) -> TranslationError:
    """A chat translation's error about ``messages[k]...`` as one about the Responses field it
    came from (its code kept: input no API would take stays ``invalid_request``, not a missing
    feature of the model's provider)."""
    def replace(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return origins[index] if index < len(origins) else "input"

    param = _CHAT_PARAM.sub(replace, error.param) if error.param else error.param
    if param == "response_format":
        param = "text.format"
    return TranslationError(_CHAT_PARAM.sub(replace, error.message), param, error.code)


def _items(items: list[Any], where: str, messages: list[dict[str, Any]], origins: list[str]) -> None:
    """Input items -> chat messages: function calls join the assistant message before them."""
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise TranslationError(f"'{at}' must be an object.", at, MALFORMED)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise TranslationError(f"'{at}.role' must be one of {', '.join(_ROLES)}.", f"{at}.role", MALFORMED)
            content = _content(item.get("content"), role, f"{at}.content")
            messages.append({"role": role, "content": content})
            origins.append(at)
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
            if not isinstance(call_id, str) or not call_id:
                raise TranslationError(f"'{at}.call_id' must be a non-empty string.", f"{at}.call_id", MALFORMED)
            if not isinstance(name, str) or not name:
                raise TranslationError(f"'{at}.name' must be a non-empty string.", f"{at}.name", MALFORMED)
            if not isinstance(arguments, str):
                raise TranslationError(f"'{at}.arguments' must be a string of JSON.", f"{at}.arguments", MALFORMED)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if "content" not in last:
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                origins.append(at)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise TranslationError(f"'{at}.call_id' must be a non-empty string.", f"{at}.call_id", MALFORMED)
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _output(item.get("output"), f"{at}.output")})
            origins.append(at)
        elif kind == "reasoning":
            continue  # an earlier answer's reasoning: only OpenAI can read it back (documented)
        elif kind == "item_reference":
            raise TranslationError(f"'{at}' refers to an item stored by OpenAI; send the item itself.", at)
        else:
            raise TranslationError(f"'{at}': input items of type {shown(kind)} are not available for this model.", at)


def _content(content: Any, role: str, where: str) -> Any:
    """A message's content: a string, or input parts as chat content parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError(f"'{where}' must be a string or an array of content parts.", where, MALFORMED)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise TranslationError(f"'{at}.text' must be a string.", f"{at}.text", MALFORMED)
            parts.append({"type": "text", "text": text})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise TranslationError(f"'{at}': only images given by URL or data URL are available for this "
                                       "model (not file_id).", at)
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            data = part.get("file_data")
            if not isinstance(data, str) or not data.startswith("data:"):
                raise TranslationError(f"'{at}': only inline files (file_data as a data: URL) are available for "
                                       "this model (not file_id or file_url).", at)
            file = {"file_data": data}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
        else:
            raise TranslationError(f"'{at}': content of type {shown(kind)} is not available for this model.", at)
    if role == "assistant" or role in ("system", "developer"):
        texts = [p for p in parts if p["type"] == "text"]
        if len(texts) != len(parts):
            raise TranslationError(f"'{where}': {role} messages may only hold text.", where)
        return "".join(p["text"] for p in texts) if role == "assistant" else texts
    return parts


def _output(output: Any, where: str) -> Any:
    """A function call's output: a string, or text/image parts."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _content(output, "user", where)
    raise TranslationError(f"'{where}' must be a string or an array of content parts.", where, MALFORMED)


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise TranslationError("'tools' must be an array.", "tools", MALFORMED)
        functions = []
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise TranslationError(f"'tools[{i}]': built-in tools ({shown(kind)}) run only on OpenAI; this model "
                                       "takes function tools only.", f"tools[{i}]")
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError(f"'tools[{i}].name' must be a non-empty string.", f"tools[{i}].name", MALFORMED)
            function: dict[str, Any] = {"name": name}
            for key in ("description", "parameters", "strict"):
                if tool.get(key) is not None:
                    function[key] = tool[key]
            functions.append({"type": "function", "function": function})
        out["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None or not tools:
        return
    if choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise TranslationError(f"'tool_choice' {shown(choice)} cannot be expressed for this model.", "tool_choice")


def _text_format(text: Any, out: dict[str, Any]) -> None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        spec = {key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    else:
        raise TranslationError(f"'text.format' {shown(fmt)} cannot be expressed for this model.", "text.format")


# -- the answer: a response object, or its events --------------------------------------------


def usage_object(usage: Usage) -> dict[str, Any]:
    """A Responses ``usage`` object (``input_tokens`` includes cache reads and writes)."""
    given = usage.input_tokens or 0
    out = usage.output_tokens or 0
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens or 0,
                                 "cache_write_tokens": usage.cache_write_tokens or 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": given + out,
    }


def response_id(provider_id: Any, strip: str, token: Callable[[int], str]) -> str:
    """``resp_`` + the provider's answer id without its own prefix (a random one without an id)."""
    if isinstance(provider_id, str) and provider_id:
        return "resp_" + provider_id.removeprefix(strip)
    return "resp_" + token(12)


def response_object(rid: str, created: int, model: Any, output: list[dict[str, Any]], status: str,
                    usage: dict[str, Any] | None, incomplete: str | None = None) -> dict[str, Any]:
    """A ``response`` object as the Responses API returns it (see the module docstring for what
    is not echoed)."""
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model if isinstance(model, str) else "",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


_TEXT_PART = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}


class EventWriter:
    """Writes one Responses event stream (see the module docstring); ``sequence`` is the number
    of events written so far."""

    __slots__ = (
        "_arguments",
        "_call_id",
        "_count",
        "_created",
        "_delta_head",
        "_id",
        "_index",
        "_item",
        "_key",
        "_kind",
        "_model",
        "_name",
        "_output",
        "_parked",
        "_text",
        "sequence",
        "started",
    )

    def __init__(self, created: int) -> None:
        self._created = created
        self._id = ""
        self._model: Any = ""
        self.sequence = 0
        self.started = False
        self._output: list[tuple[int, dict[str, Any]]] = []  # finished output items, by output_index
        self._count = 0  # the output items added so far (the next one's output_index)
        self._kind = ""  # the open item: "" none, "message", "function_call"
        self._item = ""  # its id
        self._index = 0  # its output_index
        self._key: Any = None  # the open call's key (the caller's name for it), None: none given
        # Function calls still open while another is (a provider interleaving parallel calls'
        # fragments): key -> (item id, output_index, call id, name, arguments so far).
        self._parked: dict[Any, tuple[str, int, str, str, list[str]]] = {}
        self._text: list[str] = []
        self._call_id = ""
        self._name = ""
        self._arguments: list[str] = []
        self._delta_head = b""

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = exact.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def start(self, rid: str, model: Any) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        self.started = True
        self._id, self._model = rid, model
        response = response_object(rid, self._created, model, [], "in_progress", None)
        return (self._event("response.created", {"response": response})
                + self._event("response.in_progress", {"response": response}))

    def text(self, delta: str) -> bytes:
        """A piece of the answer's text (a message item opens first if none is open)."""
        out = b""
        if self._kind != "message":
            out = self.close()
            index = self._added()
            self._kind, self._item, self._index = "message", f"msg_{self._id[5:]}_{index}", index
            self._text = []
            out += self._event("response.output_item.added",
                               {"output_index": index, "item": message_item(self._item, "", "in_progress")
                                | {"content": []}})
            out += self._event("response.content_part.added",
                               {"item_id": self._item, "output_index": index, "content_index": 0, "part": _TEXT_PART})
            self._delta_head = (b',"item_id":' + orjson.dumps(self._item) + b',"output_index":'
                                + str(index).encode() + b',"content_index":0,"delta":')
        self._text.append(delta)
        out += (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
                + str(self.sequence).encode() + self._delta_head + orjson.dumps(delta) + b',"logprobs":[]}\n\n')
        self.sequence += 1
        return out

    def _added(self) -> int:
        """The output_index of an item added now."""
        self._count += 1
        return self._count - 1

    def call(self, call_id: str, name: str, key: Any = None) -> bytes:
        """A function call item opens (its arguments follow with :meth:`arguments`). ``key``: the
        caller's name for the call; a call opened with one while another opened with one is open
        leaves that one open too (each item is done at :meth:`close`), its fragments given by key."""
        if self._kind == "function_call" and key is not None and self._key is not None:
            self._parked[self._key] = (self._item, self._index, self._call_id, self._name, self._arguments)
            out = b""
        else:
            out = self.close()
        index = self._added()
        self._kind, self._item, self._index, self._key = "function_call", f"fc_{self._id[5:]}_{index}", index, key
        self._call_id, self._name, self._arguments = call_id, name, []
        return out + self._event("response.output_item.added", {
            "output_index": index, "item": call_item(self._item, call_id, name, "", "in_progress")})

    def arguments(self, delta: str, key: Any = None) -> bytes:
        """A fragment of the open function call's arguments (``key``: of the open call of that key)."""
        if key is not None and key in self._parked:
            item, index, _, _, arguments = self._parked[key]
        elif self._kind == "function_call" and (key is None or key == self._key):
            item, index, arguments = self._item, self._index, self._arguments
        else:
            return b""
        if not delta:
            return b""
        arguments.append(delta)
        return self._event("response.function_call_arguments.delta",
                           {"item_id": item, "output_index": index, "delta": delta})

    def open(self, key: Any) -> bool:
        """Whether the call of ``key`` is open."""
        return key is not None and (key in self._parked or (self._kind == "function_call" and key == self._key))

    def close(self) -> bytes:
        """The open items, done (in the order they were added)."""
        kind = self._kind
        if not kind:
            return b""
        self._kind = ""
        if kind == "function_call":  # (calls are parked only while a call is open)
            calls = [*self._parked.values(), (self._item, self._index, self._call_id, self._name, self._arguments)]
            self._parked.clear()
            return b"".join(self._close_call(*call) for call in sorted(calls, key=lambda call: call[1]))
        index = self._index
        out = b""
        text = "".join(self._text)
        part = {**_TEXT_PART, "text": text}
        item = message_item(self._item, text)
        out += self._event("response.output_text.done", {"item_id": self._item, "output_index": index,
                                                           "content_index": 0, "text": text, "logprobs": []})
        out += self._event("response.content_part.done", {"item_id": self._item, "output_index": index,
                                                            "content_index": 0, "part": part})
        self._output.append((index, item))
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def _close_call(self, item_id: str, index: int, call_id: str, name: str, arguments: list[str]) -> bytes:
        """A function call item, done. A call without arguments (Claude streams an empty fragment
        for a tool that takes none): "{}", as OpenAI sends, which the client's SDK parses; "" is no JSON."""
        out = b""
        if not arguments:
            arguments.append("{}")
            out = self._event("response.function_call_arguments.delta",
                              {"item_id": item_id, "output_index": index, "delta": "{}"})
        text = "".join(arguments)
        item = call_item(item_id, call_id, name, text)
        out += self._event("response.function_call_arguments.done", {
            "item_id": item_id, "output_index": index, "name": name, "arguments": text})
        self._output.append((index, item))
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def finish(self, usage: Usage, incomplete: str | None = None) -> bytes:
        """The open item done, then ``response.completed`` (or ``response.incomplete``, for an answer
        cut by the output limit or a content filter) with the whole response and its usage (``null``
        when the provider reported none, as the JSON answer says)."""
        out = self.close()
        status = "incomplete" if incomplete else "completed"
        known = usage.input_tokens is not None or usage.output_tokens is not None  # unknown is never zero
        output = [item for _, item in sorted(self._output, key=lambda done: done[0])]
        response = response_object(self._id, self._created, self._model, output, status,
                                   usage_object(usage) if known else None, incomplete)
        return out + self._event(f"response.{status}", {"response": response})

    def error(self, message: str, code: str | None = None) -> bytes:
        """An ``error`` event (the stream ends with it)."""
        return self._event("error", {"code": code, "message": message, "param": None})
