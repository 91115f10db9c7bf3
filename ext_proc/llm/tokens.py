"""Pre-send token counts: how many prompt tokens a request will be billed, before it is sent.

This module owns the counting rules of each client API (chat with its tools rendering,
completions, embeddings, the Anthropic estimate) and the size guard. The encodings come from
:mod:`ext_proc.llm.encodings` and the cost of images and audio from :mod:`ext_proc.llm.media`; the
names that moved there are re-exported here, so ``ext_proc.llm.tokens`` stays the entry point.

Theory of operation
-------------------
Counting happens in two steps. First the request payload is walked into a :class:`_Tally`: the
texts the model will read (message contents, names, tool definitions rendered the way the
provider renders them), plus fixed token amounts that do not come from text (per-message
framing, images, audio, tool-use system prompts), plus whether every part followed a rule that
is known to match the provider's own count. Then the texts are tokenized with the model's
encoding (:func:`~ext_proc.llm.encodings.encoding_name_for_model`), unless together they are
larger than :data:`MAX_TOKENIZED_BYTES`: a multi-MB prompt is then estimated at 4 bytes per token
(method ``bytes-estimate``) so a huge request never holds a worker for long.

What is exact (``TokenEstimate.exact``) and what is not:

* Chat text follows OpenAI's published counting rule: 3 tokens per message, +1 per ``name``, 3 to
  prime the reply. gpt-5 models (harmony format) bill 2 to prime the reply and 2 more for each
  assistant message in the history (its channel marker); measured on gpt-5-nano, which matches
  exactly on every recorded text-only request.
* Tools are rendered as the TypeScript ``namespace functions`` block OpenAI puts in the prompt
  (the rendering reverse-engineered by hmarr/openai-chat-tokens), plus 9 tokens (gpt-4o family,
  -4 when a system message already exists, +1 for ``tool_choice: none``, +4 + the name for a forced
  function) or a tool preamble of 91 tokens (gpt-5, measured on gpt-5-nano). Never exact.
* Images follow OpenAI's vision cost rules per model (see :mod:`ext_proc.llm.media`): exact when
  the size is read from a ``data:`` URL's header or the detail is low, otherwise (a remote URL,
  patch-based models) the count is not exact. Audio input is never exact.
* Completions and embeddings are exact: the prompt's tokens, or the length of token arrays.
* Only for a model whose tokenizer is known (:func:`~ext_proc.llm.encodings.known_encoding`:
  OpenAI's models by name). Any other model (``llama-3.1-8b``, ``mistral-large``, ``gemini-2.5-pro``)
  is counted with ``o200k_base`` as a stand-in, and the count of its text is never exact (the
  length of a token array is).
* Anthropic Messages: there is no public tokenizer for Claude, so the count is an ESTIMATE (method
  ``anthropic-estimate``, never exact): o200k_base over the system prompt, message text and tool
  definitions (compact JSON), with OpenAI's framing (3 per message, 3 for the reply), Anthropic's
  documented tool-use system prompt (346 tokens, 313 with ``tool_choice`` any/tool) and image
  formula (width x height / 750, at most 1,600). Claude's tokenizer yields more tokens than
  o200k_base for most text; do not treat the estimate as a bill.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import tiktoken

from ext_proc.memo import remembered

from .apis import CHAT_COMPLETIONS, COMPLETIONS, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES
from .encodings import (
    CL100K,
    EXPECTED_SHA256,
    MODEL_ENCODINGS,
    O200K,
    EncodingError,
    base_model,
    bundled_data_dir,
    default_cache_dir,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    known_encoding,
    load_encoding,
    load_times_ms,
)
from .media import (
    DEFAULT_IMAGE_RULE,
    IMAGE_RULES,
    Patches,
    Tiles,
    anthropic_image_tokens,
    audio_tokens,
    base64_image_size,
    file_tokens,
    image_patches,
    image_size,
    image_tiles,
    openai_image_tokens,
)
from .usage import TokenEstimate

__all__ = [
    "CL100K",
    "DEFAULT_IMAGE_RULE",
    "EXPECTED_SHA256",
    "IMAGE_RULES",
    "MAX_TOKENIZED_BYTES",
    "MODEL_ENCODINGS",
    "O200K",
    "EncodingError",
    "Patches",
    "Tiles",
    "TokenEstimate",
    "bundled_data_dir",
    "count_request",
    "count_text",
    "default_cache_dir",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "image_patches",
    "image_size",
    "image_tiles",
    "is_token",
    "load_encoding",
    "load_times_ms",
    "render_functions",
]

# Above this much text (UTF-8 bytes) a request is estimated at BYTES_PER_TOKEN instead of tokenized.
# Tokenizing 200 KB takes 10-40 ms on one core (measured, both encodings). English text and code
# run at 3-5 bytes per token, so the estimate is close there and cruder for other scripts.
MAX_TOKENIZED_BYTES = 200_000
BYTES_PER_TOKEN = 4


def count_text(text: str, model: str) -> int:
    """Tokens of plain text (e.g. the output of a cut stream); bytes/4 above the size guard."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOKENIZED_BYTES:
        return math.ceil(size / BYTES_PER_TOKEN)
    return len(encoding_for_model(model).encode_ordinary(text))


@dataclass(slots=True)
class _Tally:
    """What a request will cost before tokenizing: texts to tokenize and fixed token amounts."""

    method: str
    texts: list[str] = field(default_factory=list)
    fixed: int = 0
    exact: bool = True
    audio: int = 0  # input_audio parts' tokens (in fixed too)
    cache_write: str | None = None  # the dearest cache write a cache_control asks for: "5m", "1h"

    def cache(self, mark: Any) -> None:
        """A ``cache_control`` mark (not None): a write of the TTL it asks for ("1h", else 5 minutes)."""
        if type(mark) is dict and mark.get("ttl") == "1h":
            self.cache_write = "1h"
        elif self.cache_write is None:
            self.cache_write = "5m"

    def text(self, value: Any) -> None:
        if isinstance(value, str):
            if value:
                self.texts.append(value)
        elif value is not None:
            self.opaque(value)

    def opaque(self, value: Any) -> None:
        """Something without a known rendering: its compact JSON, and the count is no longer exact."""
        self.exact = False
        self.texts.append(_json(value))


def count_request(api_name: str, payload: dict[str, Any], model: str) -> TokenEstimate:
    """Prompt tokens of a request to ``api_name`` (a :class:`~ext_proc.llm.apis.ClientAPI` name).

    Never raises on an odd payload: parts it does not understand are counted by their JSON size
    and make the count inexact. Raises ``ValueError`` for an unknown API and :class:`EncodingError`
    when the encoding files cannot be loaded.
    """
    counter = _COUNTERS.get(api_name)
    if counter is None:
        raise ValueError(f"no token counting for API {api_name!r}")
    tally = counter(payload, model)
    texts = tally.texts
    if not texts:  # e.g. token arrays: nothing to tokenize, no encoding to load
        return TokenEstimate(tally.fixed, tally.exact, tally.method, tally.audio, tally.cache_write)
    # A character is at most 4 bytes of UTF-8: measure the bytes only when that bound is too high.
    if sum(map(len, texts)) * 4 > MAX_TOKENIZED_BYTES:
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
        if size > MAX_TOKENIZED_BYTES:
            return TokenEstimate(math.ceil(size / BYTES_PER_TOKEN) + tally.fixed, False, "bytes-estimate",
                                 tally.audio, tally.cache_write)
    name = O200K if api_name in _ANTHROPIC else encoding_name_for_model(model)
    encoding = get_encoding(name)
    short = _SHORT_COUNTS.setdefault(name, {})
    tokens = 0
    for text in texts:
        if len(text) <= _SHORT:  # roles and names repeat in every request: count each once
            count = short.get(text)
            if count is None:
                count = len(encoding.encode_ordinary(text))
                if len(short) < _SHORT_CACHE:
                    short[text] = count
            tokens += count
        else:  # a conversation re-sends its earlier turns: each distinct text is tokenized once
            tokens += remembered(_space(name), text, functools.partial(_length, encoding))
    # A model whose tokenizer is not known here (llama-*, mistral-*): o200k_base stands in for it.
    exact = tally.exact and known_encoding(model) is not None
    return TokenEstimate(tokens + tally.fixed, exact, tally.method, tally.audio, tally.cache_write)


@functools.cache
def _space(encoding: str) -> bytes:
    """The question "how many tokens" in the worker's memory of texts (ext_proc.memo), per encoding."""
    return b"t" + encoding.encode() + b":"


def _length(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode_ordinary(text))


_SHORT = 24  # characters: role names, tool names
_SHORT_CACHE = 4096  # entries per encoding
_SHORT_COUNTS: dict[str, dict[str, int]] = {}


# OpenAI chat framing. "cookbook": <|im_start|>role<|im_sep|>content<|im_end|>, reply primed with 3.
# "harmony" (gpt-5): <|start|>role<|message|>content<|end|>, reply primed with <|start|>assistant,
# assistant history messages carry <|channel|>final.
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY = {"cookbook": 3, "harmony": 2}
_ASSISTANT_CHANNEL = {"cookbook": 0, "harmony": 2}
_TOOLS_OVERHEAD = {"cookbook": 9, "harmony": 91}
_TOOL_CALL_OVERHEAD = 3  # per tool call in an assistant message (hmarr: function_call adds 3)


def _chat_format(model: str) -> str:
    return "harmony" if base_model(model).startswith("gpt-5") else "cookbook"


def _count_chat(payload: dict[str, Any], model: str, tally: _Tally | None = None) -> _Tally:
    tally = tally if tally is not None else _Tally("openai-chat")
    form = _chat_format(model)
    messages = payload.get("messages")
    has_system = False
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            tally.opaque(message)
            continue
        role = message.get("role")
        has_system = has_system or role in ("system", "developer")
        tally.fixed += _PER_MESSAGE
        tally.text(role)
        if role == "assistant":
            tally.fixed += _ASSISTANT_CHANNEL[form]
        _chat_content(tally, message.get("content"), model)
        if message.get("name") is not None:
            tally.fixed += _PER_NAME
            tally.text(message.get("name"))
        if message.get("refusal") is not None:
            tally.text(message.get("refusal"))
        calls = message.get("tool_calls")
        calls = list(calls) if isinstance(calls, list) else []
        if message.get("function_call") is not None:
            calls.append({"function": message.get("function_call")})
        for call in calls:
            tally.exact = False
            tally.fixed += _TOOL_CALL_OVERHEAD
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                tally.text(function.get("name"))
                tally.text(function.get("arguments"))
            else:
                tally.opaque(call)
        if message.get("audio") is not None:
            tally.opaque(message.get("audio"))
    tally.fixed += _REPLY[form]
    _chat_tools(tally, payload, form, has_system)
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        # Structured outputs put the schema in the prompt; its exact rendering is not public.
        tally.exact = False
        spec = response_format.get("json_schema")
        spec = spec if isinstance(spec, dict) else {}
        tally.text(f"# Response Formats\n\n## {spec.get('name', 'response')}\n\n{_json(spec.get('schema', {}))}")
    if payload.get("web_search_options") is not None or "search-preview" in model:
        tally.exact = False  # search models rewrite the prompt around their search results
    return tally


def _chat_content(tally: _Tally, content: Any, model: str) -> None:
    if content is None or isinstance(content, str):
        tally.text(content)
        return
    if not isinstance(content, list):
        tally.opaque(content)
        return
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str):
            tally.text(part)
        elif kind == "text" and isinstance(part, dict):
            tally.text(part.get("text"))
        elif kind == "refusal" and isinstance(part, dict):
            tally.text(part.get("refusal"))
        elif kind == "image_url" and isinstance(part, dict):
            image = part.get("image_url")
            url, detail = (image.get("url"), image.get("detail")) if isinstance(image, dict) else (image, None)
            size = image_size(url) if isinstance(url, str) else None
            tokens, exact = openai_image_tokens(model, detail if isinstance(detail, str) else "auto", size)
            tally.fixed += tokens
            tally.exact = tally.exact and exact
        elif kind == "input_audio" and isinstance(part, dict):
            tally.exact = False
            audio = part.get("input_audio")
            tokens = audio_tokens(audio if isinstance(audio, dict) else {})
            tally.fixed += tokens
            tally.audio += tokens
        elif kind == "file" and isinstance(part, dict) and isinstance(part.get("file"), dict) \
                and isinstance(part["file"].get("file_data"), str):
            tally.exact = False
            tally.fixed += file_tokens(part["file"]["file_data"])
            tally.text(part["file"].get("filename"))
        else:
            tally.opaque(part)


def _chat_tools(tally: _Tally, payload: dict[str, Any], form: str, has_system: bool) -> None:
    functions: list[dict[str, Any]] = []
    tools = payload.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            functions.append(tool["function"])
        else:
            tally.opaque(tool)
    legacy = payload.get("functions")
    functions.extend(f for f in (legacy if isinstance(legacy, list) else ()) if isinstance(f, dict))
    if not functions:
        return
    tally.exact = False
    tally.text(render_functions(functions))
    tally.fixed += _TOOLS_OVERHEAD[form]
    if form == "cookbook":
        if has_system:
            tally.fixed -= 4  # the definitions join the existing system message instead of adding one
        choice = payload.get("tool_choice", payload.get("function_call"))
        if choice == "none":
            tally.fixed += 1
        elif isinstance(choice, dict):
            function = choice.get("function")
            forced: dict[str, Any] = function if isinstance(function, dict) else choice
            tally.fixed += 4
            tally.text(forced.get("name"))


def render_functions(functions: Iterable[dict[str, Any]]) -> str:
    """Function definitions as the TypeScript namespace OpenAI models read them in."""
    lines = ["namespace functions {", ""]
    for function in functions:
        description = function.get("description")
        if isinstance(description, str) and description:
            lines.append(f"// {description}")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        name = function.get("name", "")
        if isinstance(parameters, dict) and isinstance(properties, dict) and properties:
            lines.append(f"type {name} = (_: {{")
            lines.extend(_ts_properties(parameters, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _ts_properties(schema: dict[str, Any], indent: int) -> list[str]:
    lines: list[str] = []
    properties = schema.get("properties")
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    for name, prop in properties.items() if isinstance(properties, dict) else ():
        prop = prop if isinstance(prop, dict) else {}
        description = prop.get("description")
        if isinstance(description, str) and description:
            lines.append(" " * indent + f"// {description}")
        optional = "" if name in required else "?"
        lines.append(" " * indent + f"{name}{optional}: {_ts_type(prop, indent)},")
    return lines


def _ts_type(schema: Any, indent: int) -> str:
    if not isinstance(schema, dict):
        return "any"
    if isinstance(schema.get("enum"), list):
        return " | ".join(_json(value) for value in schema["enum"])
    for union in ("anyOf", "oneOf"):
        if isinstance(schema.get(union), list):
            return " | ".join(_ts_type(option, indent) for option in schema[union])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts_type({**schema, "type": k}, indent) for k in kind)
    if kind in ("string", "number", "boolean", "null"):
        return str(kind)
    if kind == "integer":
        return "number"
    if kind == "array":
        return f"{_ts_type(schema.get('items'), indent)}[]" if "items" in schema else "any[]"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "\n".join(["{", *_ts_properties(schema, indent + 2), " " * indent + "}"])
    return "object" if kind == "object" else "any"


def _count_completions(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("openai-completions")
    _prompt_like(tally, payload.get("prompt"))
    if payload.get("suffix") is not None:
        tally.text(payload.get("suffix"))
    return tally


def _count_embeddings(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("openai-embeddings")
    _prompt_like(tally, payload.get("input"))
    return tally


def _prompt_like(tally: _Tally, value: Any) -> None:
    """A string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        tally.text(value)
    elif isinstance(value, list) and value and all(is_token(item) for item in value):
        tally.fixed += len(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, list) and all(is_token(token) for token in item):
                tally.fixed += len(item)
            else:
                tally.text(item)
    elif value is not None:
        tally.opaque(value)


def is_token(value: Any) -> bool:
    """A token id in a prompt given as token arrays (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


# Anthropic: the tool-use system prompt Anthropic adds (docs: "Tool use system prompt token count",
# Claude 4 / 3.7 models), by tool_choice. Images: media.anthropic_image_tokens.
_ANTHROPIC_TOOL_PROMPT = {"auto": 346, "none": 346, "any": 313, "tool": 313}


def _count_messages(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("anthropic-estimate", exact=False)
    if (mark := payload.get("cache_control")) is not None:  # automatic caching
        tally.cache(mark)
    system = payload.get("system")
    if system is not None:
        tally.fixed += _PER_MESSAGE
        _anthropic_content(tally, system)
    messages = payload.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            tally.opaque(message)
            continue
        tally.fixed += _PER_MESSAGE
        tally.text(message.get("role"))
        _anthropic_content(tally, message.get("content"))
    tally.fixed += _REPLY["cookbook"]
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        choice = payload.get("tool_choice")
        kind = choice.get("type") if isinstance(choice, dict) else "auto"
        tally.fixed += _ANTHROPIC_TOOL_PROMPT.get(kind if isinstance(kind, str) else "auto", 346)
        for tool in tools:
            tally.texts.append(_json(tool))
            if type(tool) is dict and (mark := tool.get("cache_control")) is not None:
                tally.cache(mark)
    return tally


def _anthropic_content(tally: _Tally, content: Any) -> None:
    if content is None or isinstance(content, str):
        tally.text(content)
        return
    for block in content if isinstance(content, list) else [content]:
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(block, dict):
            tally.opaque(block)
            continue
        if (mark := block.get("cache_control")) is not None:
            tally.cache(mark)
        if kind == "text":
            tally.text(block.get("text"))
        elif kind == "thinking":
            tally.text(block.get("thinking"))
        elif kind == "tool_use":
            tally.text(block.get("name"))
            tally.texts.append(_json(block.get("input", {})))
        elif kind == "tool_result":
            _anthropic_content(tally, block.get("content"))
        elif kind == "image":
            source = block.get("source")
            size = None
            if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
                size = base64_image_size(source["data"])
            tally.fixed += anthropic_image_tokens(size)
        elif kind == "document" and isinstance(block.get("source"), dict) and block["source"].get("type") == "text":
            tally.text(block["source"].get("data"))
        elif kind == "document" and isinstance(block.get("source"), dict) and block["source"].get("type") == "base64" \
                and isinstance(block["source"].get("data"), str):
            tally.exact = False
            tally.fixed += file_tokens(block["source"]["data"])
        else:
            tally.opaque(block)


def _count_responses(payload: dict[str, Any], model: str) -> _Tally:
    """A Responses request counted as the chat request it renders to (never exact: OpenAI does not
    publish how the Responses API frames its input)."""
    tally = _Tally("openai-responses")
    messages: list[Any] = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        _responses_items(tally, instructions, messages)
    elif instructions is not None:
        tally.opaque(instructions)
    given = payload.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        _responses_items(tally, given, messages)
    elif given is not None:
        tally.opaque(given)
    chat: dict[str, Any] = {"messages": messages}
    functions = []
    tools = payload.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            functions.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
        else:
            tally.opaque(tool)  # built-in tools: OpenAI's own prompt for them is not public
    if functions:
        chat["tools"] = functions
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    text = payload.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": fmt}
    _count_chat(chat, model, tally)
    tally.exact = False
    return tally


def _responses_items(tally: _Tally, items: list[Any], messages: list[Any]) -> None:
    """Responses input items as chat messages (function calls join the assistant turn before them)."""
    for item in items:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [_responses_part(tally, part) for part in content]
                content = [part for part in content if part is not None]
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call":
            call = {"function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            last = messages[-1] if messages else None
            if isinstance(last, dict) and last.get("role") == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = [part for part in (_responses_part(tally, p) for p in output) if part is not None]
            messages.append({"role": "tool", "content": output})
        elif kind == "reasoning":
            for summary in item.get("summary") or ():
                if isinstance(summary, dict):
                    tally.text(summary.get("text"))
        else:
            tally.opaque(item)  # built-in tool calls and their outputs, references to stored items


def _responses_part(tally: _Tally, part: Any) -> Any:
    """A Responses content part as the chat part it is (None: counted already, opaque)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal")}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        return {"type": "image_url", "image_url": {"url": part["image_url"],
                                                   "detail": part.get("detail") or "auto"}}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        return {"type": "file", "file": {"file_data": part["file_data"], "filename": part.get("filename")}}
    tally.opaque(part)
    return None


_COUNTERS: dict[str, Callable[[dict[str, Any], str], _Tally]] = {
    CHAT_COMPLETIONS.name: _count_chat,
    COMPLETIONS.name: _count_completions,
    EMBEDDINGS.name: _count_embeddings,
    RESPONSES.name: _count_responses,
    MESSAGES.name: _count_messages,
    COUNT_TOKENS.name: _count_messages,
}
_ANTHROPIC = frozenset({MESSAGES.name, COUNT_TOKENS.name})  # estimated with o200k_base, whatever the model


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)
