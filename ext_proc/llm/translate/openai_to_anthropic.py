"""Serve an OpenAI Chat Completions client (the ``openai`` SDK) from Anthropic's Messages API.

* :func:`request` turns a ``chat.completions`` request body into a Messages request body.
* :func:`response` turns a Message into a ``chat.completion``.
* :class:`StreamTranslator` turns the Messages event stream into ``chat.completion.chunk`` events.
* :func:`error` turns an Anthropic error response (JSON or not) into OpenAI's error body.

Request mapping:

* ``system`` and ``developer`` messages, wherever they appear, become the top-level ``system``
  string (in order, a blank line between them); their position in the conversation is lost.
* Anthropic requires alternating turns: adjacent messages of the same role are merged into one
  message whose content blocks are concatenated. ``tool`` (and legacy ``function``) messages
  become ``tool_result`` blocks of a user turn, merged with a user message that follows.
* Empty messages (no text, no image, no tool call) are left out, and so are empty or
  whitespace-only text parts: Anthropic rejects both, and they carry nothing for the model.
* Tool call ids are passed through; in an id holding characters Anthropic does not accept (it
  allows ``[A-Za-z0-9_-]``) they are replaced by ``_`` and 8 hex digits of the id's SHA-256 are
  added (``call.1`` -> ``call_1_<hash>``), the same way in ``tool_use`` and ``tool_result``, so
  pairs still match and two ids stay two (Claude's answer gives its own new ids, never these).
  Legacy ``function_call`` turns get ids ``call_legacy_<message index>``.
* The deprecated ``functions`` / ``function_call`` (in a request without ``tools``) become
  ``tools`` / ``tool_choice`` with ``disable_parallel_tool_use``: the legacy answer holds one call
  (see below).
* ``temperature`` is clamped to Anthropic's range [0, 1]; ``max_completion_tokens`` (or
  ``max_tokens``) becomes ``max_tokens``, which Anthropic requires (``default_max_tokens`` when
  absent: the target's ``output_tokens``, what the limits step claims); ``user`` (or
  ``safety_identifier``) becomes ``metadata.user_id``.
* ``response_format`` is best effort: ``json_object`` and ``json_schema`` add an instruction to the
  system prompt (with the schema as JSON); nothing enforces the answer's shape.
* Images: ``data:`` URLs become base64 sources, ``http(s)`` URLs URL sources; ``detail`` is
  dropped. PDF ``file`` parts with inline ``file_data`` become ``document`` blocks.

Dropped (no counterpart, or no effect on the answer's shape): ``stream_options`` (the stream's
usage chunk is produced by :class:`StreamTranslator` itself), ``seed``, ``logprobs``,
``top_logprobs``, ``frequency_penalty``, ``presence_penalty``, ``logit_bias``, ``service_tier``,
``store``, ``metadata``, ``modalities: ["text"]``, ``reasoning_effort``, ``prediction``,
``verbosity``, ``prompt_cache_key``, the ``strict`` flag of function tools, message ``name``
fields, and any field this module does not know.

Refused with :class:`TranslationError` (the answer would silently change shape): ``n`` > 1, audio
input or output (``audio``, ``modalities`` other than text, ``input_audio`` parts), files other
than inline PDFs, ``web_search_options``, non-function tools and ``allowed_tools`` tool choices,
unparseable tool call arguments.

Response mapping: text blocks are joined into ``content`` (``None`` when the answer is only tool
calls), ``tool_use`` blocks become ``tool_calls``, thinking and server-tool blocks are dropped.
A request that declared ``functions`` (:func:`uses_functions`) gets the answer OpenAI gives it:
the call as ``message.function_call`` (streamed: ``delta.function_call``) and finish_reason
``function_call``; should Claude call several tools all the same, the first is kept.
``stop_reason`` becomes ``finish_reason`` by :data:`.common.FINISH_FROM_STOP` (an answer cut by
``max_tokens`` or by the context window, ``model_context_window_exceeded``, is ``length``; an
unknown reason is ``stop``).
``usage.prompt_tokens`` counts cache reads and writes (as OpenAI's does); the cache write count is
kept as the extra field ``prompt_tokens_details.cache_write_tokens``.

The functions never copy large payloads: image data, tool schemas and tool results are shared by
reference between the input and the output (do not mutate one expecting the other unchanged).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson

from ext_proc.llm import exact
from ext_proc.llm.apis.anthropic import error_type as anthropic_error_type
from ext_proc.llm.runtime import SYSTEM, Runtime
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import Usage, apply_anthropic, apply_streamed, started

from .common import FINISH_FROM_STOP, MALFORMED, SSE_DONE, TranslationError, shown, sse_data

__all__ = ["StreamTranslator", "error", "request", "response", "uses_functions"]

_TOOL_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
_MODEL_WORD = re.compile(r"\bmodels?\b", re.IGNORECASE)
_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")
_IMAGE_TYPE_ALIASES = {"image/jpg": "image/jpeg"}

_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose before or after it, no Markdown code fences."
)
_JSON_SCHEMA_INSTRUCTION = (
    "Respond with a single valid JSON object that conforms to the JSON Schema below{name}, and nothing "
    "else: no prose before or after it, no Markdown code fences.\n\n{schema}"
)


# -- Request -------------------------------------------------------------------------------------


def request(body: dict[str, Any], model: str, *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """OpenAI chat.completions request body -> Anthropic Messages request body for ``model``."""
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array.", "messages", MALFORMED)

    system_parts, turns = _messages(messages)
    if not turns:
        raise TranslationError("The request needs at least one user or assistant message.", "messages")

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
        "messages": turns,
    }

    instruction = _response_format_instruction(body.get("response_format"))
    if instruction:
        system_parts.append(instruction)
    if system_parts:
        out["system"] = "\n\n".join(system_parts)

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop

    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(max(temperature, 0), 1)
    elif temperature is not None:
        out["temperature"] = temperature  # not a number: Anthropic's own 400 says so
    top_p = body.get("top_p")
    if top_p is not None:
        out["top_p"] = top_p

    _tools(body, out)

    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("This model can only return one choice per request ('n' must be 1).", "n")
    if body.get("audio") is not None:
        raise TranslationError("This model cannot produce audio output.", "audio")
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise TranslationError("This model can only produce text ('modalities' must be [\"text\"]).", "modalities")
    if body.get("web_search_options") is not None:
        raise TranslationError("Web search is not available for this model.", "web_search_options")


def _messages(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and the alternating Anthropic turns (adjacent same-role messages merged)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    legacy_calls: list[tuple[str, str]] = []  # (name, id) of legacy function calls not yet answered
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"'{where}' must be an object.", where, MALFORMED)
        role = message.get("role")
        content = message.get("content")
        if role == "system" or role == "developer":
            text = _system_text(content, f"{where}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            anthropic_role = "user"
            blocks = _content_blocks(content, f"{where}.content")
        elif role == "assistant":
            anthropic_role = "assistant"
            blocks = _assistant_blocks(message, i, where, legacy_calls)
        elif role == "tool":
            anthropic_role = "user"
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise TranslationError(f"'{where}.tool_call_id' must be a non-empty string.", f"{where}.tool_call_id",
                                       MALFORMED)
            blocks = [_tool_result(_tool_id(call_id), content, f"{where}.content")]
        elif role == "function":
            anthropic_role = "user"
            blocks = [_tool_result(_legacy_result_id(message, where, legacy_calls), content, f"{where}.content")]
        else:
            raise TranslationError(f"'{where}.role' {shown(role)} is not a chat message role.", f"{where}.role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    for turn in turns:
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return system, turns


def _system_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise TranslationError(f"'{where}' must be a string or an array of text parts.", where, MALFORMED)
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise TranslationError(f"'{where}[{j}]' must be a text part.", f"{where}[{j}]", MALFORMED)
        if part["text"]:
            texts.append(part["text"])
    return "\n\n".join(texts)


def _text_block(text: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(text, str):
        raise TranslationError(f"'{where}' must be a string.", where, MALFORMED)
    if not text or text.isspace():
        return None
    return {"type": "text", "text": text}


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """User (or tool result) content: a string or an array of text, image and file parts."""
    if isinstance(content, str):
        block = _text_block(content, where)
        return [block] if block else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise TranslationError(f"'{where}' must be a string or an array of content parts.", where, MALFORMED)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            block = _text_block(part.get("text"), f"{at}.text")
            if block:
                blocks.append(block)
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{at}.image_url"))
        elif kind == "file":
            blocks.append(_file(part.get("file"), f"{at}.file"))
        elif kind == "input_audio":
            raise TranslationError("This model does not accept audio input.", at)
        else:
            raise TranslationError(f"'{at}' has an unsupported content part type {shown(kind)}.", at)
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    """``data:<media type>;base64,<data>`` -> (media type, data)."""
    header, comma, data = url.partition(",")
    media_type, _, encoding = header[5:].partition(";")
    if not comma or encoding.lower() != "base64" or not media_type:
        raise TranslationError(f"'{where}' must be a base64 data URL (data:<media type>;base64,...).", where, MALFORMED)
    return media_type.lower(), data


def _image(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError(f"'{where}.url' must be a string.", f"{where}.url", MALFORMED)
    if url.startswith("data:"):
        media_type, data = _data_url(url, f"{where}.url")
        media_type = _IMAGE_TYPE_ALIASES.get(media_type, media_type)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"'{where}.url' must be an http(s) or data URL.", f"{where}.url", MALFORMED)


def _file(file: Any, where: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if isinstance(data_url, str) and data_url.startswith("data:"):
        media_type, data = _data_url(data_url, f"{where}.file_data")
        if media_type == "application/pdf":
            block: dict[str, Any] = {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": data},
            }
            filename = file.get("filename") if isinstance(file, dict) else None
            if isinstance(filename, str) and filename:
                block["title"] = filename
            return block
    raise TranslationError("This model only accepts files as inline PDF data (file_data: data:application/pdf).", where)


def _tool_id(call_id: str) -> str:
    """A tool call's id as Anthropic accepts it: as it is, or, holding a character Anthropic does
    not accept, those replaced by ``_`` and 8 hex digits of the id's SHA-256 added, so two ids that
    differ only there (``call.1``, ``call_1``) stay two (the same id gives the same, in the
    ``tool_use`` and its ``tool_result``)."""
    clean = _TOOL_ID_BAD.sub("_", call_id)
    if clean == call_id:
        return call_id
    return f"{clean}_{hashlib.sha256(call_id.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _assistant_blocks(
    message: dict[str, Any], index: int, where: str, legacy_calls: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    if message.get("audio") is not None:
        raise TranslationError("This model cannot continue from an audio answer.", f"{where}.audio")
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        block = _text_block(content, f"{where}.content")
        if block:
            blocks.append(block)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                block = _text_block(part.get("text"), f"{at}.text")
            elif kind == "refusal":
                block = _text_block(part.get("refusal"), f"{at}.refusal")
            else:
                raise TranslationError(f"'{at}' must be a text or refusal part.", at, MALFORMED)
            if block:
                blocks.append(block)
    elif content is not None:
        raise TranslationError(f"'{where}.content' must be a string, an array or null.", f"{where}.content", MALFORMED)

    tool_calls = message.get("tool_calls")
    if tool_calls:
        if not isinstance(tool_calls, list):
            raise TranslationError(f"'{where}.tool_calls' must be an array.", f"{where}.tool_calls", MALFORMED)
        for j, call in enumerate(tool_calls):
            at = f"{where}.tool_calls[{j}]"
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                raise TranslationError(f"'{at}' must be a function tool call.", at, MALFORMED)
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise TranslationError(f"'{at}.id' must be a non-empty string.", f"{at}.id", MALFORMED)
            blocks.append(_tool_use(_tool_id(call_id), call.get("function"), f"{at}.function"))
    function_call = message.get("function_call")
    if function_call:
        call_id = f"call_legacy_{index}"
        block = _tool_use(call_id, function_call, f"{where}.function_call")
        legacy_calls.append((block["name"], call_id))
        blocks.append(block)
    return blocks


def _tool_use(call_id: str, function: Any, where: str) -> dict[str, Any]:
    if not isinstance(function, dict):
        raise TranslationError(f"'{where}' must be an object.", where, MALFORMED)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError(f"'{where}.name' must be a non-empty string.", f"{where}.name", MALFORMED)
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        tool_input: Any = {}
    elif isinstance(arguments, str):
        try:
            tool_input = exact.loads(arguments)
        except orjson.JSONDecodeError:
            raise TranslationError(
                f"'{where}.arguments' is not valid JSON; this model needs tool call arguments as a JSON object.",
                f"{where}.arguments",
            ) from None
    else:
        raise TranslationError(f"'{where}.arguments' must be a string of JSON.", f"{where}.arguments", MALFORMED)
    if not isinstance(tool_input, dict):
        raise TranslationError(f"'{where}.arguments' must encode a JSON object for this model.", f"{where}.arguments")
    return {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}


def _tool_result(call_id: str, content: Any, where: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        blocks = _content_blocks(content, where)
        if blocks:
            block["content"] = blocks
    return block


def _legacy_result_id(message: dict[str, Any], where: str, legacy_calls: list[tuple[str, str]]) -> str:
    """The id of the legacy function call a ``function`` message answers (same name first)."""
    if not legacy_calls:
        raise TranslationError(f"'{where}' answers no earlier assistant function_call.", where)
    name = message.get("name")
    for k, (called, call_id) in enumerate(legacy_calls):
        if called == name:
            del legacy_calls[k]
            return call_id
    return legacy_calls.pop(0)[1]


def _tool_definition(function: Any, where: str) -> dict[str, Any]:
    if not isinstance(function, dict):
        raise TranslationError(f"'{where}' must be an object.", where, MALFORMED)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError(f"'{where}.name' must be a non-empty string.", f"{where}.name", MALFORMED)
    schema = function.get("parameters")
    if not schema:
        schema = {"type": "object", "properties": {}}
    elif not isinstance(schema, dict):
        raise TranslationError(f"'{where}.parameters' must be a JSON Schema object.", f"{where}.parameters", MALFORMED)
    elif "type" not in schema:
        schema = {"type": "object", **schema}
    tool: dict[str, Any] = {"name": name}
    description = function.get("description")
    if isinstance(description, str) and description:
        tool["description"] = description
    tool["input_schema"] = schema
    return tool


def uses_functions(body: dict[str, Any]) -> bool:
    """Whether a request declares its tools with the deprecated ``functions`` (and no ``tools``):
    its answer then takes the legacy shape, one ``function_call``."""
    return not body.get("tools") and bool(body.get("functions"))


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    """``tools``/``tool_choice``/``parallel_tool_calls`` (or legacy ``functions``/``function_call``,
    one call at a time: the legacy answer holds one)."""
    tools = body.get("tools")
    definitions: list[dict[str, Any]] = []
    if tools:
        if not isinstance(tools, list):
            raise TranslationError("'tools' must be an array.", "tools", MALFORMED)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise TranslationError(f"'tools[{i}]': this model only supports function tools.", f"tools[{i}].type")
            definitions.append(_tool_definition(tool.get("function"), f"tools[{i}].function"))
        choice = _tool_choice(body.get("tool_choice"), "tool_choice")
    else:
        functions = body.get("functions")
        if not functions:
            return
        if not isinstance(functions, list):
            raise TranslationError("'functions' must be an array.", "functions", MALFORMED)
        definitions = [_tool_definition(f, f"functions[{i}]") for i, f in enumerate(functions)]
        choice = _tool_choice(body.get("function_call"), "function_call")
    out["tools"] = definitions
    if body.get("parallel_tool_calls") is False or not tools:
        if choice is None:
            choice = {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice


def _tool_choice(choice: Any, where: str) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        # {"type": "function", "function": {"name": ...}}, or legacy function_call {"name": ...}
        named = choice.get("function") if choice.get("type") == "function" else choice
        if (choice.get("type") in (None, "function")) and isinstance(named, dict):
            name = named.get("name")
            if isinstance(name, str) and name:
                return {"type": "tool", "name": name}
    raise TranslationError(f"'{where}' {shown(choice)} cannot be expressed for this model.", where)


def _response_format_instruction(response_format: Any) -> str | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return _JSON_OBJECT_INSTRUCTION
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise TranslationError("'response_format.json_schema.schema' must be an object.", "response_format",
                                   MALFORMED)
        name = spec.get("name") if isinstance(spec, dict) else None
        return _JSON_SCHEMA_INSTRUCTION.format(
            name=f" (named {name!r})" if isinstance(name, str) and name else "",
            schema=exact.dumps(schema).decode(),  # (its bounds may be integers beyond 64 bits)
        )
    raise TranslationError(f"'response_format' type {shown(kind)} cannot be expressed for this model.",
                           "response_format")


# -- Response ------------------------------------------------------------------------------------


def _openai_usage(usage: Usage) -> dict[str, Any]:
    prompt = usage.input_tokens or 0
    completion = usage.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_tokens or 0,
            "cache_write_tokens": usage.cache_write_tokens or 0,
        },
    }


def _chat_id(message_id: Any, token: Callable[[int], str]) -> str:
    return "chatcmpl-" + (message_id if isinstance(message_id, str) and message_id else token(12))


def _finish_reason(stop_reason: Any, functions: bool) -> str:
    finish = FINISH_FROM_STOP.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    return "function_call" if functions and finish == "tool_calls" else finish


def response(message: dict[str, Any], *, model: str | None = None, runtime: Runtime = SYSTEM,
             functions: bool = False) -> dict[str, Any]:
    """Anthropic Message JSON -> OpenAI chat.completion JSON; ``model`` is the name to report.

    ``runtime`` gives ``created`` (its clock) and the id when the message has none; ``functions``:
    the request used legacy ``functions`` (:func:`uses_functions`), answer with ``function_call``."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": exact.dumps(block.get("input", {})).decode()},
                }
            )
        # thinking, redacted_thinking, server tool blocks: nothing the client can read
    text = "".join(texts)
    reply: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
    if tool_calls and functions:
        reply["function_call"] = tool_calls[0]["function"]
    elif tool_calls:
        reply["tool_calls"] = tool_calls
    out: dict[str, Any] = {
        "id": _chat_id(message.get("id"), runtime.token),
        "object": "chat.completion",
        "created": int(runtime.now()),
        "model": model if model is not None else message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": _finish_reason(message.get("stop_reason"), functions),
            }
        ],
    }
    raw_usage = message.get("usage")
    if isinstance(raw_usage, dict):
        usage = Usage()
        apply_anthropic(usage, raw_usage)
        out["usage"] = _openai_usage(usage)
    else:
        out["usage"] = None
    return out


# -- Stream --------------------------------------------------------------------------------------


class StreamTranslator:
    """Anthropic Messages SSE events in, OpenAI ``chat.completion.chunk`` SSE events out.

    Feed each decoded provider event to :meth:`event`; when the provider stream ends call
    :meth:`end`, which closes the client stream with ``[DONE]`` only if the provider finished
    (``message_stop``): a cut stream must not look complete. Each chunk's constant JSON (id,
    created, model, choice envelope) is encoded once; a delta costs one small ``orjson.dumps``.

    The role goes out with the answer's first delta, as OpenAI's streams carry it: a chunk
    ``{"role": "assistant", "content": ""}`` before the first text, or ``"content": null`` in the
    chunk of the first tool call when the answer opens with one, so that the message the client's
    SDK accumulates equals the answer given whole (``content`` null for tool calls alone).
    """

    __slots__ = (
        "_complete",
        "_created",
        "_ended",
        "_failed",
        "_finished",
        "_functions",
        "_head",
        "_id",
        "_include_usage",
        "_model",
        "_opened",
        "_reported",
        "_silent",
        "_tail",
        "_token",
        "_tools",
        "_usage",
    )

    def __init__(self, *, model: str | None = None, include_usage: bool = False, created: int | None = None,
                 runtime: Runtime = SYSTEM, functions: bool = False) -> None:
        self._model = model
        self._functions = functions  # legacy functions: one call, as delta.function_call
        self._include_usage = include_usage
        self._created = created if created is not None else int(runtime.now())
        self._token = runtime.token
        self._usage = Usage()
        self._id = ""
        self._reported: Any = model  # the model name every chunk reports
        self._head = b""  # b'data: {"id":..,"choices":[{"index":0,"delta":' once the message started
        self._tail = b""  # b',"logprobs":null,"finish_reason":null}]}\n\n' (with "usage":null if asked)
        self._opened = False  # the role went out
        self._tools: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool call index
        self._silent: set[int] = set()  # tool blocks whose arguments have not begun
        self._finished = False  # the finish_reason chunk went out
        self._complete = False  # message_stop seen
        self._failed = False  # the provider reported an error in the stream
        self._ended = False

    @property
    def complete(self) -> bool:
        """Whether the provider finished the message (``message_stop`` seen)."""
        return self._complete

    def _start(self, message: Any) -> None:
        message = message if isinstance(message, dict) else {}
        self._id = _chat_id(message.get("id"), self._token)
        model = self._model if self._model is not None else message.get("model")
        self._reported = model
        self._head = (
            b'data: {"id":'
            + orjson.dumps(self._id)
            + b',"object":"chat.completion.chunk","created":'
            + str(self._created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":[{"index":0,"delta":'
        )
        usage_null = b',"usage":null' if self._include_usage else b""
        self._tail = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        apply_anthropic(self._usage, started(message.get("usage")))  # (its output_tokens a placeholder)

    def _role(self) -> bytes:
        """The role chunk before text (or before the end of an empty answer); b'' once sent."""
        if self._opened:
            return b""
        self._opened = True
        if not self._head:
            self._start(None)
        return self._head + b'{"role":"assistant","content":""}' + self._tail

    def _chunk(self, delta: dict[str, Any]) -> bytes:
        if self._opened:
            return self._head + orjson.dumps(delta) + self._tail
        if "content" in delta:
            return self._role() + self._head + orjson.dumps(delta) + self._tail
        self._opened = True  # a tool call first: the role rides with it, and no content
        if not self._head:
            self._start(None)
        return self._head + orjson.dumps({"role": "assistant", "content": None, **delta}) + self._tail

    def _arguments(self, tool: int, fragment: str) -> bytes:
        if self._functions:
            return self._chunk({"function_call": {"arguments": fragment}})
        return self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": fragment}}]})

    def _finish(self, stop_reason: Any) -> bytes:
        self._finished = True
        reason = b',"finish_reason":' + orjson.dumps(_finish_reason(stop_reason, self._functions))
        return self._role() + self._head + b"{}" + self._tail.replace(b',"finish_reason":null', reason, 1)

    def feed(self, event: SSEEvent) -> bytes:
        """One Anthropic SSE event as received -> zero or more OpenAI SSE events (the
        :class:`~ext_proc.llm.translate.StreamTranslator` protocol)."""
        data = event.json() if event.data else None
        if data is None:
            return b""
        return self.event(event.event or str(data.get("type", "")), data)

    def event(self, name: str, data: dict[str, Any]) -> bytes:
        """One decoded Anthropic SSE event -> zero or more OpenAI SSE events."""
        if self._complete or self._failed:
            return b""
        kind = name or data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                return self._chunk({"content": text}) if text else b""
            if delta_type == "input_json_delta":
                partial = delta.get("partial_json")
                tool = self._tools.get(data.get("index", -1))
                if not partial or tool is None:
                    return b""
                self._silent.discard(data.get("index", -1))
                return self._arguments(tool, partial)
            return b""  # thinking_delta, signature_delta, citations_delta
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            block_type = block.get("type")
            if block_type == "text":
                text = block.get("text")
                return self._chunk({"content": text}) if text else b""
            if block_type == "tool_use":
                if self._functions and self._tools:
                    return b""  # a second call: the legacy shape holds one (Claude was asked for one)
                tool = len(self._tools)
                self._tools[data.get("index", -1)] = tool
                tool_input = block.get("input")
                arguments = exact.dumps(tool_input).decode() if tool_input else ""
                if not arguments:
                    self._silent.add(data.get("index", -1))
                if self._functions:
                    return self._chunk({"function_call": {"name": block.get("name"), "arguments": arguments}})
                call = {
                    "index": tool,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
                return self._chunk({"tool_calls": [call]})
            return b""  # thinking, redacted_thinking, server tool blocks
        if kind == "content_block_stop" and data.get("index", -1) in self._silent:
            # A tool that takes no arguments (Claude streams an empty fragment): "{}", as OpenAI
            # sends and the client's SDK parses; "" is no JSON.
            self._silent.discard(data.get("index", -1))
            return self._arguments(self._tools[data.get("index", -1)], "{}")
        if kind == "message_start":
            if not self._head:
                self._start(data.get("message"))
            return b""
        if kind == "message_delta":
            apply_streamed(apply_anthropic, self._usage, data.get("usage"))
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            return self._finish(stop_reason) if stop_reason and not self._finished else b""
        if kind == "message_stop":
            self._complete = True
            return b"" if self._finished else self._finish(None)
        if kind == "error":
            self._failed = True
            err = data.get("error")
            err = err if isinstance(err, dict) else {}
            message = str(err.get("message") or "The provider reported an error.")
            openai_type, code = _error_kind(err.get("type"), 500, message)
            return self.error(message, openai_type, code)
        return b""  # ping, content_block_stop, unknown events

    def end(self) -> bytes:
        """The provider stream ended: the usage chunk (if asked) and ``[DONE]``, only if complete."""
        if not self._complete or self._ended:
            return b""
        self._ended = True
        if not self._include_usage:
            return SSE_DONE
        usage_chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._reported,
            "choices": [],
            # null, as the JSON answer's, when the provider reported no usage: never counts of 0
            "usage": _openai_usage(self._usage) if self._usage.input_tokens is not None
            or self._usage.output_tokens is not None else None,
        }
        return sse_data(usage_chunk) + SSE_DONE

    def error(self, message: str, kind: str = "server_error", code: str | None = None) -> bytes:
        """An in-stream error for the client (the ``openai`` SDK raises ``APIError`` on it)."""
        return sse_data({"error": {"message": message, "type": kind, "param": None, "code": code}})


# -- Errors --------------------------------------------------------------------------------------

# Anthropic error type -> (OpenAI type, OpenAI code).
_ERRORS: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "timeout_error": ("server_error", "timeout"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", None),
}



def _error_kind(anthropic_type: Any, status: int, message: str) -> tuple[str, str | None]:
    """(OpenAI type, code) for an Anthropic error type, or for ``status`` when the type is unknown."""
    if not isinstance(anthropic_type, str) or anthropic_type not in _ERRORS:
        anthropic_type = anthropic_error_type(status)
    kind, code = _ERRORS[anthropic_type]
    if anthropic_type == "not_found_error" and _MODEL_WORD.search(message):
        code = "model_not_found"
    return kind, code


def _plain_text(body: bytes) -> str:
    """A short readable line from a non-JSON body (an HTML page's title, or its first text)."""
    head = body[:4096]
    title = _HTML_TITLE.search(head)
    text = (title.group(1) if title else head).decode("utf-8", "replace")
    text = _SPACES.sub(" ", _HTML_TAG.sub(" ", text)).strip()
    return text if len(text) <= 200 else text[:199] + "…"


def error(status: int, body: bytes) -> bytes:
    """An Anthropic error response body (any bytes, maybe not JSON) -> OpenAI error JSON bytes."""
    message: str | None = None
    anthropic_type: Any = None
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            anthropic_type = err.get("type")
            if isinstance(err.get("message"), str):
                message = err["message"]
        elif isinstance(err, str):
            message = err
        elif isinstance(data.get("message"), str):
            message = data["message"]
    elif isinstance(data, str):
        message = data
    if not message:
        # A JSON body without a message: name its error type rather than quote the JSON.
        text = _plain_text(body) if data is None else anthropic_type if isinstance(anthropic_type, str) else ""
        message = f"The provider answered HTTP {status}: {text}" if text else f"The provider answered HTTP {status}."
    kind, code = _error_kind(anthropic_type, status, message)
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
