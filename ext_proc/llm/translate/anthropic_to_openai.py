"""Serve an Anthropic Messages client (``POST /v1/messages``) from an OpenAI-compatible Chat Completions model.

:func:`request` turns the client's Messages request into a Chat Completions request,
:func:`response` turns the provider's ``chat.completion`` into a Message, :class:`StreamTranslator`
turns its ``chat.completion.chunk`` stream into Anthropic's event stream, and :func:`error` turns its
error body into Anthropic's error format. Everything works on decoded JSON and returns new objects.

Request mapping:

* ``system`` (a string or text blocks, joined with a blank line) -> a leading ``system`` message.
* ``messages``: user and assistant turns, string or block content. A user turn with a single text
  block is sent as a plain string, otherwise as content parts (``text``, ``image_url``).
* ``image``: base64 sources -> ``data:{media_type};base64,{data}`` URLs, ``url`` sources -> the URL.
* ``document`` with a plain-text source (``text``) or a ``content`` source -> text (and image) parts;
  its ``title`` and ``context`` lead the text on their own paragraphs.
* assistant ``tool_use`` -> ``tool_calls`` (arguments: compact JSON of ``input``); the turn's text
  blocks, joined with no separator, are its ``content`` (``null`` when there is none). An assistant
  turn with nothing left (only thinking blocks) is omitted. A final assistant turn (Anthropic's
  prefill) is sent as it is: most OpenAI-compatible models answer after it rather than continue it.
* user ``tool_result`` -> one ``tool`` message each, placed before the rest of the user turn, so they
  follow the assistant ``tool_calls`` message directly. The content is the result's text (text
  blocks joined with a newline). ``is_error: true`` prefixes it with ``"Error: "`` (just ``"Error"``
  when empty). Images in a tool result cannot go in a ``tool`` message: they are sent in the user
  message that follows the tool messages, after a text part ``"Images returned by tool call
  {id}:"``, and the tool message says ``"[N image(s) attached in the following user message]"``.
* ``tools`` (custom tools) -> ``function`` tools (``input_schema`` -> ``parameters``);
  ``tool_choice`` auto/any/tool/none -> ``"auto"``/``"required"``/named function/``"none"``;
  ``disable_parallel_tool_use: true`` -> ``parallel_tool_calls: false``. Both are sent only with tools.
* ``max_tokens`` -> ``max_tokens`` (many OpenAI-compatible servers only know it; for OpenAI and
  Azure, whose reasoning models refuse it, the caller renames it ``max_completion_tokens``: the
  provider kind's ``chat_output_limit``).
* ``stop_sequences`` -> ``stop`` (OpenAI itself takes at most 4 and answers more with its own 400);
  ``temperature``, ``top_p`` as they are; ``metadata.user_id`` -> ``user``; ``output_config.format``
  (or the older top-level ``output_format``) of type ``json_schema`` -> ``response_format``
  ``json_schema`` named ``"output"`` (not ``strict``); ``stream: true`` -> ``stream`` with
  ``stream_options.include_usage``; ``model`` -> the argument.

Dropped silently (no counterpart, and the request still means the same to the model): ``top_k``,
``thinking``, ``service_tier``, ``speed``, ``inference_geo``, ``container``, ``context_management``,
``diagnostics``, ``output_config.effort``, top-level and block ``cache_control``, ``citations``
(on blocks and documents), ``thinking`` / ``redacted_thinking`` blocks, tool ``strict`` /
``defer_loading`` / ``input_examples`` / ``eager_input_streaming`` / ``allowed_callers``, and any
unknown top-level field.

Rejected with :class:`TranslationError`: server and built-in tools (``web_search_*``, ``web_fetch_*``,
``code_execution_*``, ``bash_*``, ``text_editor_*``, ``computer_*``, ``memory_*``, tool search,
MCP toolsets) and their blocks (``server_tool_use``, ``*_tool_result``, ``mcp_*``,
``tool_reference``), a non-empty ``mcp_servers``, ``container_upload`` and ``search_result`` blocks,
``file`` image and document sources (Files API ids), PDF documents (``base64`` / ``url`` sources),
``tool_use`` in a user turn, ``tool_result`` in an assistant turn, and malformed structure.

Response mapping: ``id`` is ``msg_`` + the completion id without ``chatcmpl-``; ``content`` holds a
text block for the message text, one for a refusal, and a ``tool_use`` block per tool call (the
OpenAI call id is kept, so the client sends it back as ``tool_use_id``). Arguments that are not a
JSON object (truncated or invalid JSON, a JSON array...) become ``{"_raw_arguments": "<the string>"}``
so nothing is lost and the client's tool rejects them visibly; empty arguments become ``{}``.
``stop_reason`` comes from :data:`STOP_FROM_FINISH` (``end_turn`` when unknown). A completion that
stopped on a stop sequence reports ``end_turn`` and ``stop_sequence: null`` (OpenAI does not say
which sequence matched). When tool calls are present and the provider reports ``stop`` (some
OpenAI-compatible servers do), ``stop_reason`` is ``tool_use`` so the client runs the tools.
``reasoning_content`` (DeepSeek, vLLM) is dropped: Anthropic thinking blocks need a signature.
Usage: ``input_tokens`` = ``prompt_tokens`` - cache reads - cache writes, ``cache_read_input_tokens``
= cache reads (``prompt_tokens_details.cached_tokens``), ``cache_creation_input_tokens`` = cache
writes (``prompt_tokens_details.cache_write_tokens``, 0 when not reported),
``output_tokens`` = ``completion_tokens``. A completion without choices gives an empty ``end_turn``
message.

Stream mapping: see :class:`StreamTranslator`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from ext_proc.llm import exact
from ext_proc.llm.apis.anthropic import error_type as anthropic_error_type
from ext_proc.llm.runtime import SYSTEM, Runtime
from ext_proc.llm.sse import SSEEvent

from .common import MALFORMED, STOP_FROM_FINISH, TranslationError, shown, sse_event

__all__ = ["StreamTranslator", "error", "request", "response"]


# -- request ------------------------------------------------------------------------------------

_SERVER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "tool_reference",
        "container_upload",
    }
)


def _fail(message: str, param: str) -> TranslationError:
    return TranslationError(message, param)


def _malformed(message: str, param: str) -> TranslationError:
    return TranslationError(message, param, MALFORMED)


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict):
        raise _malformed("Each content block must be an object.", where)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _malformed("Each content block must have a string `type`.", where)
    return kind


def _unsupported(kind: str, where: str) -> TranslationError:
    if kind in _SERVER_BLOCKS:
        return _fail(f"Content block type {shown(kind)} (an Anthropic server feature) has no OpenAI counterpart.",
                     where)
    return _fail(f"Content block type {shown(kind)} cannot be sent to an OpenAI-compatible model.", where)


def _block_text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _malformed("A text block must have a string `text`.", where)
    return text


def _system(system: Any) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _malformed("`system` must be a string or a list of text blocks.", "system")
    texts: list[str] = []
    for i, block in enumerate(system):
        where = f"system.{i}"
        kind = _block_type(block, where)
        if kind != "text":
            raise _fail(f"`system` may only hold text blocks, not {shown(kind)}.", where)
        texts.append(_block_text(block, where))
    return "\n\n".join(texts)


def _source(block: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise _fail("The block needs a `source` object with a string `type`.", f"{where}.source")
    return source["type"], source


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    kind, source = _source(block, where)
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
        raise _fail("A base64 image source needs string `media_type` and `data`.", f"{where}.source")
    if kind == "url":
        url = source.get("url")
        if isinstance(url, str):
            return {"type": "image_url", "image_url": {"url": url}}
        raise _fail("A url image source needs a string `url`.", f"{where}.source")
    if kind == "file":
        raise _fail("Images from the Anthropic Files API (`file` sources) cannot be sent to this model.", where)
    raise _fail(f"Unsupported image source type {shown(kind)}.", f"{where}.source")


def _document(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    kind, source = _source(block, where)
    head = [part for part in (block.get("title"), block.get("context")) if isinstance(part, str) and part]
    if kind == "text":
        data = source.get("data")
        if not isinstance(data, str):
            raise _fail("A text document source needs a string `data`.", f"{where}.source")
        return [{"type": "text", "text": "\n\n".join([*head, data])}]
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": "\n\n".join([*head, content])}]
        if not isinstance(content, list):
            raise _fail("A content document source needs `content`: a string or blocks.", f"{where}.source")
        parts: list[dict[str, Any]] = [{"type": "text", "text": "\n\n".join(head)}] if head else []
        for i, inner in enumerate(content):
            inner_where = f"{where}.source.content.{i}"
            inner_kind = _block_type(inner, inner_where)
            if inner_kind == "text":
                parts.append({"type": "text", "text": _block_text(inner, inner_where)})
            elif inner_kind == "image":
                parts.append(_image(inner, inner_where))
            else:
                raise _unsupported(inner_kind, inner_where)
        return parts
    if kind in ("base64", "url"):
        raise _fail("PDF documents cannot be sent to an OpenAI-compatible chat model; send the text.", where)
    if kind == "file":
        raise _fail("Documents from the Anthropic Files API (`file` sources) cannot be sent to this model.", where)
    raise _fail(f"Unsupported document source type {shown(kind)}.", f"{where}.source")


def _tool_result(block: dict[str, Any], where: str, out: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise _fail("A tool_result block needs a string `tool_use_id`.", where)
    content = block.get("content")
    texts: list[str] = []
    pictures: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for i, inner in enumerate(content):
            inner_where = f"{where}.content.{i}"
            kind = _block_type(inner, inner_where)
            if kind == "text":
                texts.append(_block_text(inner, inner_where))
            elif kind == "image":
                pictures.append(_image(inner, inner_where))
            elif kind == "document":
                for part in _document(inner, inner_where):
                    if part["type"] == "text":
                        texts.append(part["text"])
                    else:
                        pictures.append(part)
            else:
                raise _unsupported(kind, inner_where)
    elif content is not None:
        raise _malformed("A tool_result `content` must be a string or a list of blocks.", f"{where}.content")
    text = "\n".join(texts)
    if pictures:
        note = f"[{len(pictures)} image(s) attached in the following user message]"
        text = f"{text}\n{note}" if text else note
        images.append({"type": "text", "text": f"Images returned by tool call {call_id}:"})
        images.extend(pictures)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    out.append({"role": "tool", "tool_call_id": call_id, "content": text})


def _user(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise _malformed("Message `content` must be a string or a list of blocks.", f"{where}.content")
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # from tool results: they lead the user message
    for i, block in enumerate(content):
        block_where = f"{where}.content.{i}"
        kind = _block_type(block, block_where)
        if kind == "text":
            parts.append({"type": "text", "text": _block_text(block, block_where)})
        elif kind == "tool_result":
            _tool_result(block, block_where, out, images)
        elif kind == "image":
            parts.append(_image(block, block_where))
        elif kind == "document":
            parts.extend(_document(block, block_where))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        elif kind == "tool_use":
            raise _fail("tool_use blocks belong in assistant turns.", block_where)
        else:
            raise _unsupported(kind, block_where)
    if images:
        parts = images + parts
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})


def _assistant(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    if not isinstance(content, list):
        raise _malformed("Message `content` must be a string or a list of blocks.", f"{where}.content")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        block_where = f"{where}.content.{i}"
        kind = _block_type(block, block_where)
        if kind == "text":
            texts.append(_block_text(block, block_where))
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _fail("A tool_use block needs a string `id` and `name`.", block_where)
            try:
                arguments = exact.dumps(args if args is not None else {}).decode()
            except orjson.JSONEncodeError as exc:  # (not JSON: a value decode_json never gives)
                raise _fail(f"The tool_use input cannot be encoded: {exc}.", f"{block_where}.input") from None
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        elif kind == "tool_result":
            raise _fail("tool_result blocks belong in user turns.", block_where)
        else:
            raise _unsupported(kind, block_where)
    if not texts and not calls:
        return
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    out.append(message)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _malformed("`tools` must be a list.", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _malformed("Each tool must be an object.", where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _fail(f"Tool type {shown(kind)} is an Anthropic-defined tool with no OpenAI counterpart.", where)
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not isinstance(schema, dict):
            raise _fail("A tool needs a string `name` and an object `input_schema`.", where)
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise _malformed("`tool_choice` must be an object.", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _fail("`tool_choice` of type tool needs a string `name`.", "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _fail(f"Unsupported tool_choice type {shown(kind)}.", "tool_choice.type")
    if kind != "none" and choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _output_format(fmt: Any, param: str) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _malformed("The output format must be {type: json_schema, schema: {...}}.", param)
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Anthropic Messages request body -> OpenAI chat.completions request body for ``model``.

    When ``body['stream']`` is true, ``stream_options.include_usage`` is set so usage arrives.
    Raises :class:`TranslationError` for what cannot be expressed (see the module docstring).
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _malformed("`messages` must be a list.", "messages")
    out_messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system(system)
        if text:
            out_messages.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise _malformed("Each message must be an object.", where)
        role = message.get("role")
        if role == "user":
            _user(message.get("content"), where, out_messages)
        elif role == "assistant":
            _assistant(message.get("content"), where, out_messages)
        else:
            raise _malformed(f"Message role must be 'user' or 'assistant', not {shown(role)}.", f"{where}.role")

    out: dict[str, Any] = {"model": model, "messages": out_messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop_sequences")
    if stop:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _malformed("`stop_sequences` must be a list of strings.", "stop_sequences")
        out["stop"] = list(stop)
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
        if body.get("tool_choice") is not None:
            _tool_choice(body["tool_choice"], out)
    if body.get("mcp_servers"):
        raise _fail("Anthropic's MCP connector has no OpenAI counterpart.", "mcp_servers")
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    config = body.get("output_config")
    fmt = _output_format(config.get("format"), "output_config.format") if isinstance(config, dict) else None
    if fmt is None:
        fmt = _output_format(body.get("output_format"), "output_format")
    if fmt is not None:
        out["response_format"] = fmt
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# -- response -----------------------------------------------------------------------------------


def _message_id(openai_id: Any, token: Callable[[int], str]) -> str:
    if isinstance(openai_id, str) and openai_id:
        return "msg_" + openai_id.removeprefix("chatcmpl-")
    return "msg_" + token(12)


def _tokens(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(raw: Any) -> tuple[int, int, int, int]:
    """(input tokens without cache reads and writes, cache reads, cache writes, output tokens) of an
    OpenAI ``usage``."""
    return _split(_counts(raw))


def _counts(raw: Any) -> tuple[int, int, int, int]:
    """(prompt tokens, cache reads, cache writes, completion tokens) as an OpenAI ``usage`` says them."""
    if not isinstance(raw, dict):
        return 0, 0, 0, 0
    details = raw.get("prompt_tokens_details")
    cached = _tokens(details.get("cached_tokens")) if isinstance(details, dict) else 0
    written = _tokens(details.get("cache_write_tokens")) if isinstance(details, dict) else 0
    return _tokens(raw.get("prompt_tokens")), cached, written, _tokens(raw.get("completion_tokens"))


def _split(counts: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Anthropic's split of a prompt: what was neither read from nor written to the cache, then each."""
    prompt, cached, written, output = counts
    cached = min(cached, prompt)
    written = min(written, prompt - cached)
    return prompt - cached - written, cached, written, output


def _stop_reason(finish: Any, tools: bool) -> str:
    reason = STOP_FROM_FINISH.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    return "tool_use" if tools and reason == "end_turn" else reason


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = exact.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def response(completion: dict[str, Any], *, model: str | None = None, runtime: Runtime = SYSTEM) -> dict[str, Any]:
    """OpenAI chat.completion JSON -> Anthropic Message JSON.

    ``model``: the name to report (default ``completion['model']``); ``runtime`` gives the id
    when the completion has none.
    """
    message_id = _message_id(completion.get("id"), runtime.token)
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content: list[dict[str, Any]] = []
    text = _content_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    tools = False
    if isinstance(calls, list):
        for i, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"toolu_{message_id[4:]}_{i}"
            name = function.get("name")
            content.append(
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": name if isinstance(name, str) else "",
                    "input": _tool_input(function.get("arguments")),
                }
            )
            tools = True
    legacy = message.get("function_call")
    if not tools and isinstance(legacy, dict):
        name = legacy.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": f"toolu_{message_id[4:]}_0",
                "name": name if isinstance(name, str) else "",
                "input": _tool_input(legacy.get("arguments")),
            }
        )
        tools = True
    input_tokens, cached, written, output_tokens = _usage(completion.get("usage"))
    reported = model if model is not None else completion.get("model")
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": reported if isinstance(reported, str) else "",
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), tools),
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens,
        },
    }


# -- stream -------------------------------------------------------------------------------------

_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA_MID = b',"delta":{"type":"text_delta","text":'
_JSON_DELTA_MID = b',"delta":{"type":"input_json_delta","partial_json":'
_DELTA_TAIL = b"}}\n\n"
_STOP_HEAD = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_STOP_TAIL = b"}\n\n"
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


class _Call:
    """A tool call whose name has not arrived yet: its block cannot start before it does."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments = ""


class StreamTranslator:
    """OpenAI ``chat.completion.chunk`` stream -> Anthropic Messages event stream (SSE bytes).

    The first chunk opens the message (``message_start``; usage 0/0 placeholders: OpenAI reports
    usage only at the end). Text and refusal deltas become a text block, each tool call a
    ``tool_use`` block with ``input_json_delta`` fragments; a block is closed when another starts,
    and block indexes count from 0 in emission order. A tool call's block starts once its name has
    arrived (fragments before that are held). The ``finish_reason`` chunk closes the open block;
    ``message_delta`` (stop reason and usage) and ``message_stop`` follow when the usage chunk
    arrives (or usage in the finish chunk itself), else at :meth:`done` / :meth:`end`.

    Content after the finish reason and chunks after ``message_stop`` are ignored. A chunk holding
    an ``error`` object and no choices (vLLM, some routers) becomes an ``error`` event. Fragments
    of a tool call whose block was already closed (a provider interleaving parallel tool calls)
    cannot be expressed and raise :class:`TranslationError`; the caller then ends the stream with
    :meth:`error`.
    """

    __slots__ = (
        "_block",
        "_closed",
        "_complete",
        "_estimate",
        "_failed",
        "_id",
        "_index",
        "_last_id",
        "_last_tool",
        "_model",
        "_open_tool",
        "_pending",
        "_started",
        "_stop",
        "_token",
        "_tools",
        "_usage",
        "_usage_seen",
    )

    def __init__(self, *, model: str | None = None, runtime: Runtime = SYSTEM, estimate: int | None = None) -> None:
        self._model = model
        self._estimate = estimate  # the prompt's tokens as Tollway estimated them (message_start must give a number)
        self._usage_seen = False  # the provider reported usage
        self._token = runtime.token
        self._started = False
        self._id = ""
        self._index = -1  # index of the last block started
        self._block = 0  # 0 none open, 1 text open, 2 tool open
        self._open_tool = -1  # OpenAI index of the open tool call
        self._last_tool = -1  # highest OpenAI tool call index seen
        self._last_id = ""  # the last tool call id seen
        self._closed: set[int] = set()  # OpenAI indexes of tool calls whose block is closed
        self._pending: dict[int, _Call] = {}
        self._tools = False  # any tool call seen
        self._stop: str | None = None
        self._usage: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._complete = False
        self._failed = False

    @property
    def complete(self) -> bool:
        """A finish_reason was seen and the final events (through ``message_stop``) were emitted."""
        return self._complete

    def feed(self, event: SSEEvent) -> bytes:
        """One OpenAI SSE event as received -> zero or more Anthropic SSE events (the
        :class:`~ext_proc.llm.translate.StreamTranslator` protocol); ``[DONE]`` ends the message."""
        if event.data == b"[DONE]":
            return self.done()
        data = event.json() if event.data else None
        return b"" if data is None else self.chunk(data)

    def chunk(self, data: dict[str, Any]) -> bytes:
        """One decoded OpenAI chunk -> zero or more Anthropic SSE events."""
        if self._complete or self._failed:
            return b""
        choices = data.get("choices")
        if not choices and isinstance(data.get("error"), dict):
            return self._provider_error(data["error"])
        out = b"" if self._started else self._message_start(data)
        if choices and self._stop is None:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                text = delta.get("content")
                if text and isinstance(text, str):
                    out += self._text(text)
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    out += self._text(refusal)
                calls = delta.get("tool_calls")
                if calls:
                    for call in calls:
                        out += self._tool_delta(call)
                legacy = delta.get("function_call")
                if legacy and not calls:
                    out += self._tool_delta({"index": 0, "function": legacy})
            finish = choice.get("finish_reason")
            if finish:
                out += self._finish(finish)
        usage = data.get("usage")
        if isinstance(usage, dict) and usage:  # (a later one never lowers a count: a proxy's all-zero one;
            # the provider's own counts, split at the end: an early chunk without the cache's details
            # must not keep its whole prompt as uncached next to a later one's cache reads)
            self._usage = tuple(max(pair) for pair in zip(self._usage, _counts(usage), strict=True))  # type: ignore[assignment]
            self._usage_seen = True
            if self._stop is not None:
                out += self._final()
        return out

    def done(self) -> bytes:
        """The provider sent ``data: [DONE]``: the final events if a finish reason was seen."""
        return self.end()

    def end(self) -> bytes:
        """The provider stream ended: what is still owed if it completed properly, else ``b''``.

        A stream that ended without a finish reason was truncated: nothing is emitted (no fake
        ``message_stop``), and the caller adds :meth:`error`.
        """
        if self._complete or self._failed or self._stop is None:
            return b""
        return self._final()

    def error(self, message: str, kind: str = "api_error") -> bytes:
        """An explicit in-stream ``error`` event (the anthropic SDK raises on it); ends the translation."""
        self._failed = True
        return sse_event("error", {"type": "error", "error": {"type": kind, "message": message}})

    # -- internals

    def _provider_error(self, raw: dict[str, Any]) -> bytes:
        message = raw.get("message")
        return self.error(message if isinstance(message, str) and message else "The provider stream failed.")

    def _message_start(self, data: dict[str, Any]) -> bytes:
        self._started = True
        self._id = _message_id(data.get("id"), self._token)
        model = self._model if self._model is not None else data.get("model")
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": model if isinstance(model, str) else "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # OpenAI reports usage only at the end, and the SDK's type needs numbers here: the
            # prompt's tokens as Tollway estimated them (the record's estimate), the output's 0 so
            # far; the cache's are not known (optional: left out). message_delta has the provider's.
            "usage": {"input_tokens": self._estimate or 0, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if not self._block:
            return b""
        if self._block == 2:
            self._closed.add(self._open_tool)
            self._open_tool = -1
        self._block = 0
        return _STOP_HEAD + str(self._index).encode() + _STOP_TAIL

    def _text(self, text: str) -> bytes:
        out = b""
        if self._block != 1:
            out = self._close()
            self._index += 1
            self._block = 1
            out += sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": {"type": "text", "text": ""}},
            )
        return out + _DELTA_HEAD + str(self._index).encode() + _TEXT_DELTA_MID + orjson.dumps(text) + _DELTA_TAIL

    def _json_delta(self, fragment: str) -> bytes:
        return _DELTA_HEAD + str(self._index).encode() + _JSON_DELTA_MID + orjson.dumps(fragment) + _DELTA_TAIL

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        self._tools = True
        call_id = call.get("id")
        index = call.get("index")
        if not isinstance(index, int):  # servers that omit the index: a new id starts a new call
            index = max(self._last_tool, 0)
            if call_id and self._last_id and call_id != self._last_id:
                index += 1
        if index > self._last_tool:
            self._last_tool = index
        if call_id and isinstance(call_id, str):
            self._last_id = call_id
        function = call.get("function") or {}
        fragment = function.get("arguments")
        if not isinstance(fragment, str):
            fragment = ""
        if index == self._open_tool:
            return self._json_delta(fragment) if fragment else b""
        if index in self._closed:
            raise TranslationError("The provider interleaved the fragments of parallel tool calls.")
        pending = self._pending.get(index)
        if pending is None:
            pending = self._pending[index] = _Call()
        if call_id and isinstance(call_id, str) and not pending.id:
            pending.id = call_id
        name = function.get("name")
        if name and isinstance(name, str) and not pending.name:
            pending.name = name
        pending.arguments += fragment
        if not pending.name:
            return b""
        return self._start_tool(index, self._pending.pop(index))

    def _start_tool(self, index: int, call: _Call) -> bytes:
        out = self._close()
        self._index += 1
        self._block = 2
        self._open_tool = index
        block = {"type": "tool_use", "id": call.id or f"toolu_{self._id[4:]}_{index}", "name": call.name, "input": {}}
        out += sse_event(
            "content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block}
        )
        if call.arguments:
            out += self._json_delta(call.arguments)
        return out

    def _finish(self, finish: Any) -> bytes:
        out = b""
        for index in sorted(self._pending):  # tool calls whose name never came: still the model's output
            out += self._start_tool(index, self._pending[index])
        self._pending.clear()
        out += self._close()
        self._stop = _stop_reason(finish, self._tools)
        return out

    def _final(self) -> bytes:
        self._complete = True
        input_tokens, cached, written, output_tokens = _split(self._usage)
        # Without the provider's usage only output_tokens, which the SDK's type needs, is given (0):
        # the input side, optional, is left out rather than told as 0 (message_start's estimate stands).
        usage: dict[str, int] = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                                 "cache_read_input_tokens": cached, "cache_creation_input_tokens": written} \
            if self._usage_seen else {"output_tokens": 0}
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop, "stop_sequence": None},
            "usage": usage,
        }
        return sse_event("message_delta", delta) + _MESSAGE_STOP


# -- errors -------------------------------------------------------------------------------------

_TITLE = re.compile(rb"<title[^>]*>([^<]{1,200})</title>", re.IGNORECASE)
_MAX_MESSAGE = 500


def _json_message(parsed: Any) -> str | None:
    if isinstance(parsed, list) and parsed:  # some gateways wrap the error in a list
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return None
    inner = parsed.get("error")
    if isinstance(inner, dict):
        message = inner.get("message")
        if isinstance(message, str) and message:
            return message
    elif isinstance(inner, str) and inner:
        return inner
    for key in ("message", "detail"):
        value = parsed.get(key)
        if isinstance(value, str) and value:
            return value
    detail = parsed.get("detail")  # FastAPI validation errors
    if detail:
        return orjson.dumps(detail).decode()[:_MAX_MESSAGE]
    return None


def _error_message(status: int, body: bytes) -> str:
    text = body.strip()
    if not text:
        return f"The provider answered HTTP {status} with an empty body."
    if text[:1] in (b"{", b"["):
        try:
            message = _json_message(orjson.loads(text))
        except orjson.JSONDecodeError:
            message = None
        if message is not None:
            return message
    elif text[:1] == b"<":
        title = _TITLE.search(text[:4096])
        if title:
            return f"The provider answered HTTP {status}: {title.group(1).decode('utf-8', 'replace').strip()}"
        return f"The provider answered HTTP {status} with a non-JSON body."
    return text[:_MAX_MESSAGE].decode("utf-8", "replace")


def error(status: int, body: bytes) -> bytes:
    """An OpenAI error response body (any bytes, maybe not JSON) -> Anthropic error JSON bytes.

    The provider's message is kept (``error.message``, or ``message`` / ``detail`` / a string
    ``error`` of other servers; an HTML page gives its title, a plain-text body its first 500
    characters). The type follows the HTTP status as Anthropic's does
    (:func:`ext_proc.llm.apis.anthropic.error_type`: 402 ``billing_error``, 504 ``timeout_error``,
    529 ``overloaded_error``, other 5xx ``api_error``, other 4xx ``invalid_request_error``).
    """
    kind = anthropic_error_type(status)
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": _error_message(status, body)}})
