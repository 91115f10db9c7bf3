"""Response bodies, SSE events and error bodies of the fake provider; pure, no I/O.

Theory of operation: one request becomes one :class:`Generation` (what the fake model "said":
id, model, prompt tokens and the reply split into pieces), and every renderer below (OpenAI chat
and completions, Anthropic messages; JSON or SSE) is a function of that single value. JSON and
streaming answers to the same request therefore carry the same text and the same usage by
construction.

Token counting rule (deterministic, not a real tokenizer):

- ``words(s)`` is the number of whitespace-separated words in ``s``.
- Text of a message ``content``: the string itself, or the ``text`` of each part of a content
  list (OpenAI ``{"type": "text"}`` parts, Anthropic ``text`` blocks, nested ``content``);
  images, audio and tool calls count nothing.
- Chat prompt tokens = 3 + Σ over messages (3 + words(text of content)).
- Anthropic ``input_tokens`` = 3 + words(text of ``system``) + Σ over messages (3 + words(text)).
- Responses ``input_tokens`` = 3 + words(``instructions``) + Σ over input items (3 + words(text)),
  where an item's text is a message's content, a function call's arguments or a function call
  output's ``output``; a string ``input`` is one item.
- Completions prompt tokens = Σ over prompts of max(1, words(prompt)), or the length of a token
  array; embeddings the same over ``input`` (``total_tokens`` = ``prompt_tokens``).
- The reply is ``chunks`` words (``--chunks`` / ``x-mock-chunks``, default 8), cut to
  ``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens`` when smaller (then
  ``finish_reason: length``, Anthropic ``stop_reason: max_tokens``, Responses status
  ``incomplete``). Completion tokens = words in the reply (× number of
  prompts for batched completions). A stream sends one word per content delta.
- Cached, cache-creation and reasoning tokens are always 0.

Tool calls: a :class:`Generation` may carry one :class:`ToolCall` instead of text (the provider
decides when, see ``ext_proc.mock.provider``). Its arguments are :func:`schema_example` of the
tool's JSON schema, as compact JSON, split into up to 3 fragments (``ARGUMENT_FRAGMENTS``); a
stream sends one arguments delta per fragment and completion tokens = number of fragments (the
same rule as text: one token per delta). A tool call is never cut by max tokens. Renderers:
OpenAI ``tool_calls`` with ``finish_reason: tool_calls``; Anthropic a ``tool_use`` block with
``input_json_delta`` fragments and ``stop_reason: tool_use``; Responses a ``function_call``
output item with ``response.function_call_arguments.delta`` events.

Errors come in three formats: OpenAI's ``{"error": {"message", "type", "param", "code"}}``,
Anthropic's ``{"type": "error", "error": {"type", "message"}}`` and, for the statuses Azure
OpenAI's gateway answers itself (401, 403, 404, 429), Azure's ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

DEFAULT_MODEL = "mock-model"

# The fake model's vocabulary; replies cycle through it.
_VOCAB = (
    *("Tollway", "mock", "reply:", "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"),
    *("while", "every", "token", "flows", "through", "Envoy", "and", "gets", "metered", "exactly", "once."),
)


# ---------------------------------------------------------------------------------------------
# Token counting


def words(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len(text.split())


def content_text(content: Any) -> str:
    """The text carried by an OpenAI or Anthropic ``content`` value (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                elif "content" in part:  # Anthropic tool_result blocks nest content
                    texts.append(content_text(part["content"]))
        return " ".join(texts)
    return ""


def chat_prompt_tokens(messages: Any, system: Any = None) -> int:
    """Prompt tokens of a chat / messages request: 3 + Σ (3 + words) (+ words of ``system``)."""
    total = 3 + words(content_text(system))
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            total += 3 + words(content_text(content))
    return total


def input_tokens(value: Any) -> list[int]:
    """Tokens per input of a completions ``prompt`` or embeddings ``input`` (one entry per item).

    Accepted shapes, as in the OpenAI API: a string, a list of strings, a token array (list of
    ints) or a list of token arrays.
    """
    if isinstance(value, str):
        return [max(1, words(value))]
    if isinstance(value, list):
        if not value:
            return [1]
        if all(isinstance(item, int) for item in value):
            return [len(value)]
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(max(1, words(item)))
            elif isinstance(item, list):
                out.append(max(1, len(item)))
            else:
                out.append(1)
        return out
    return [1]


# ---------------------------------------------------------------------------------------------
# What the fake model generates


@lru_cache(maxsize=512)
def reply_pieces(count: int) -> tuple[str, ...]:
    """``count`` words of the fake reply, as stream deltas: the first bare, the others with a space."""
    return tuple(_VOCAB[i % len(_VOCAB)] if i == 0 else " " + _VOCAB[i % len(_VOCAB)] for i in range(count))


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """The request's output limit (``max_completion_tokens`` before ``max_tokens``), if any."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


ARGUMENT_FRAGMENTS = 3  # a tool call's arguments stream in at most this many deltas


def schema_example(schema: Any, depth: int = 0) -> Any:
    """A deterministic value valid for the JSON ``schema`` (the common subset of JSON Schema).

    ``const``, then the first ``enum`` value, then by ``type``: strings ``"mock"``, numbers and
    integers 1 (or ``minimum`` when above 1), booleans true, null None, arrays one example of
    ``items`` (none without ``items``), objects every property in ``properties`` plus any other
    ``required`` name (``"mock"``). A list of types takes the first that is not ``null``;
    ``anyOf`` / ``oneOf`` / ``allOf`` their first schema; no type but ``properties``: an object;
    anything else ``"mock"``. Nesting deeper than 16 levels ends in ``"mock"``.
    """
    if not isinstance(schema, dict) or depth > 16:
        return "mock"
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return schema_example(options[0], depth + 1)
        if isinstance(schema.get("properties"), dict):
            kind = "object"
    if kind == "object":
        properties = schema.get("properties")
        out = {}
        if isinstance(properties, dict):
            out = {name: schema_example(sub, depth + 1) for name, sub in properties.items()}
        required = schema.get("required")
        if isinstance(required, list):
            out.update({name: "mock" for name in required if isinstance(name, str) and name not in out})
        return out
    if kind == "array":
        items = schema.get("items")
        return [schema_example(items, depth + 1)] if isinstance(items, dict) else []
    if kind in ("integer", "number"):
        minimum = schema.get("minimum")
        if isinstance(minimum, (int, float)) and not isinstance(minimum, bool) and minimum > 1:
            return int(minimum) if kind == "integer" and minimum == int(minimum) else minimum
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "mock"


def fragments(text: str, parts: int = ARGUMENT_FRAGMENTS) -> tuple[str, ...]:
    """``text`` cut into ``min(parts, len(text))`` (at least 1) consecutive pieces of near-equal size."""
    count = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The one tool call of a :class:`Generation` that calls a tool rather than answering text."""

    id: str  # "call_mock…" (OpenAI) or "toolu_mock…" (Anthropic)
    name: str
    arguments: tuple[str, ...]  # JSON fragments; "".join(arguments) is compact JSON of the input

    @classmethod
    def build(cls, id: str, name: str, schema: Any) -> ToolCall:
        """The call of tool ``name`` with :func:`schema_example` of its ``schema`` as input."""
        example = schema_example(schema if isinstance(schema, dict) else {"type": "object"})
        if not isinstance(example, dict):
            example = {}
        return cls(id=id, name=name, arguments=fragments(orjson.dumps(example).decode()))

    @property
    def json(self) -> str:
        return "".join(self.arguments)


@dataclass(frozen=True, slots=True)
class Generation:
    """One fake completion; every renderer of the same request reads only this."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    pieces: tuple[str, ...]  # content deltas; "".join(pieces) is the reply text
    truncated: bool = False  # stopped by the request's max tokens
    choices: int = 1  # batched completions answer each prompt
    tool: ToolCall | None = None  # a tool call instead of text (then ``pieces`` is empty)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        if self.tool is not None:
            return len(self.tool.arguments)
        return len(self.pieces) * self.choices


def generate(
    body: dict[str, Any],
    *,
    id: str,
    created: int,
    chunks: int,
    prompt_tokens: int,
    choices: int = 1,
    tool: ToolCall | None = None,
    reply: tuple[str, ...] | None = None,
) -> Generation:
    """The :class:`Generation` for a request ``body``: ``chunks`` words, cut to its max tokens.

    With ``tool``, the generation is that tool call and no text (never cut); with ``reply``, those
    deltas (never cut).
    """
    model = body.get("model")
    model = model if isinstance(model, str) and model else DEFAULT_MODEL
    if tool is not None:
        return Generation(id=id, created=created, model=model, prompt_tokens=prompt_tokens, pieces=(), tool=tool)
    if reply is not None:  # the text asked for (x-mock-reply), in these deltas
        return Generation(id=id, created=created, model=model, prompt_tokens=prompt_tokens, pieces=reply,
                          choices=choices)
    limit = max_tokens_of(body)
    count = chunks if limit is None else min(chunks, limit)
    return Generation(
        id=id,
        created=created,
        model=model,
        prompt_tokens=prompt_tokens,
        pieces=reply_pieces(count),
        truncated=count < chunks,
        choices=choices,
    )


@lru_cache(maxsize=512)
def _encoded(pieces: tuple[str, ...]) -> tuple[bytes, ...]:
    """Each piece as a JSON string literal."""
    return tuple(orjson.dumps(piece) for piece in pieces)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------
# OpenAI chat completions


def openai_chat_usage(gen: Generation) -> dict[str, Any]:
    """The ``usage`` object of a chat completion."""
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(gen: Generation) -> str:
    if gen.tool is not None:
        return "tool_calls"
    return "length" if gen.truncated else "stop"


def _openai_message(gen: Generation) -> dict[str, Any]:
    if gen.tool is None:
        return {"role": "assistant", "content": gen.text, "refusal": None, "annotations": []}
    call = {"id": gen.tool.id, "type": "function", "function": {"name": gen.tool.name, "arguments": gen.tool.json}}
    return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None, "annotations": []}


def openai_chat_json(gen: Generation) -> bytes:
    """A ``chat.completion`` body."""
    return orjson.dumps(
        {
            "id": gen.id,
            "object": "chat.completion",
            "created": gen.created,
            "model": gen.model,
            "choices": [
                {
                    "index": 0,
                    "message": _openai_message(gen),
                    "logprobs": None,
                    "finish_reason": _finish(gen),
                }
            ],
            "usage": openai_chat_usage(gen),
            "service_tier": "default",
            "system_fingerprint": None,
        }
    )


def openai_chat_events(gen: Generation, include_usage: bool) -> list[bytes]:
    """``chat.completion.chunk`` SSE events: role delta, one delta per piece, finish, [usage], [DONE].

    A tool call replaces the pieces: the role delta carries the call's id, name and empty
    arguments, then one ``tool_calls`` delta per arguments fragment.

    Like OpenAI, usage appears only with ``stream_options.include_usage``: then every chunk has
    ``"usage": null`` and one last chunk with empty ``choices`` carries it. The per-piece chunks
    are spliced from pre-encoded bytes (they dominate the cost of a stream).
    """
    head: dict[str, Any] = {
        "id": gen.id,
        "object": "chat.completion.chunk",
        "created": gen.created,
        "model": gen.model,
        "service_tier": "default",
        "system_fingerprint": None,
    }
    prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"delta":'
    tail = b',"logprobs":null,"finish_reason":%s}]' + (b',"usage":null}\n\n' if include_usage else b"}\n\n")
    no_finish = tail % b"null"
    if gen.tool is None:
        events = [prefix + b'{"role":"assistant","content":"","refusal":null}' + no_finish]
        events.extend(prefix + b'{"content":' + piece + b"}" + no_finish for piece in _encoded(gen.pieces))
    else:  # as OpenAI: id, name and empty arguments first, then the arguments in fragments
        tool = gen.tool
        first = {"index": 0, "id": tool.id, "type": "function", "function": {"name": tool.name, "arguments": ""}}
        delta = {"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}
        events = [prefix + orjson.dumps(delta) + no_finish]
        events.extend(
            prefix + orjson.dumps({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}) + no_finish
            for part in tool.arguments
        )
    events.append(prefix + b"{}" + tail % orjson.dumps(_finish(gen)))
    if include_usage:
        events.append(_sse({**head, "choices": [], "usage": openai_chat_usage(gen)}))
    events.append(SSE_DONE)
    return events


# ---------------------------------------------------------------------------------------------
# OpenAI Responses API


def responses_input_tokens(body: dict[str, Any]) -> int:
    """``input_tokens`` of a Responses request: 3 + words(instructions) + Σ (3 + words(item text))."""
    instructions = body.get("instructions")
    total = 3 + words(instructions if isinstance(instructions, str) else "")
    given = body.get("input")
    items = [{"content": given}] if isinstance(given, str) else given if isinstance(given, list) else []
    for item in items:
        if not isinstance(item, dict):
            total += 3
            continue
        text = item.get("arguments") if item.get("type") == "function_call" else item.get("output", item.get("content"))
        total += 3 + words(content_text(text))
    return total


def responses_usage(gen: Generation) -> dict[str, Any]:
    """The ``usage`` object of a response."""
    return {
        "input_tokens": gen.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": gen.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _responses_ids(gen: Generation) -> tuple[str, str]:
    """The output item's id (a message or a function call), from the response id."""
    suffix = gen.id.removeprefix("resp_")
    return ("fc_" if gen.tool is not None else "msg_") + suffix, suffix


def _responses_item(gen: Generation, done: bool) -> dict[str, Any]:
    item_id, _ = _responses_ids(gen)
    status = ("incomplete" if gen.truncated else "completed") if done else "in_progress"
    if gen.tool is not None:
        return {"id": item_id, "type": "function_call", "status": status, "call_id": gen.tool.id,
                "name": gen.tool.name, "arguments": gen.tool.json if done else ""}
    content = [_output_text(gen.text)] if done else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response(gen: Generation, body: dict[str, Any], status: str) -> dict[str, Any]:
    """A ``response`` object echoing the request's settings, as OpenAI does."""
    done = status != "in_progress"
    tools = body.get("tools")
    return {
        "id": gen.id,
        "object": "response",
        "created_at": gen.created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": gen.model,
        "output": [_responses_item(gen, True)] if done else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt": body.get("prompt"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools if isinstance(tools, list) else [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": responses_usage(gen) if done else None,
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "metadata": body.get("metadata") or {},
    }


def responses_json(gen: Generation, body: dict[str, Any]) -> bytes:
    """A ``response`` body (status ``incomplete`` when max_output_tokens cut the reply)."""
    return orjson.dumps(_response(gen, body, "incomplete" if gen.truncated else "completed"))


def responses_events(gen: Generation, body: dict[str, Any]) -> list[bytes]:
    """Responses SSE events: created, in_progress, the output item (text deltas or function call
    argument deltas), then ``response.completed`` (``response.incomplete`` when cut short)."""
    item_id, _ = _responses_ids(gen)
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response(gen, body, "in_progress")},
        {"type": "response.in_progress", "response": _response(gen, body, "in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": _responses_item(gen, False)},
    ]
    where = {"item_id": item_id, "output_index": 0}
    if gen.tool is None:
        at = {**where, "content_index": 0}
        events.append({"type": "response.content_part.added", **at, "part": _output_text("")})
        events.extend({"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
                      for piece in gen.pieces)
        events.append({"type": "response.output_text.done", **at, "text": gen.text, "logprobs": []})
        events.append({"type": "response.content_part.done", **at, "part": _output_text(gen.text)})
    else:
        events.extend({"type": "response.function_call_arguments.delta", **where, "delta": part}
                      for part in gen.tool.arguments)
        events.append({"type": "response.function_call_arguments.done", **where, "name": gen.tool.name,
                       "arguments": gen.tool.json})
    events.append({"type": "response.output_item.done", "output_index": 0, "item": _responses_item(gen, True)})
    final = "incomplete" if gen.truncated else "completed"
    events.append({"type": f"response.{final}", "response": _response(gen, body, final)})
    out = []
    for number, event in enumerate(events):
        event["sequence_number"] = number
        out.append(b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")
    return out


# ---------------------------------------------------------------------------------------------
# OpenAI (legacy) completions


def openai_completion_usage(gen: Generation) -> dict[str, int]:
    """The ``usage`` object of a text completion (the API reports no details here)."""
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def openai_completion_json(gen: Generation) -> bytes:
    """A ``text_completion`` body with one choice per prompt."""
    text, finish = gen.text, _finish(gen)
    return orjson.dumps(
        {
            "id": gen.id,
            "object": "text_completion",
            "created": gen.created,
            "model": gen.model,
            "choices": [
                {"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(gen.choices)
            ],
            "usage": openai_completion_usage(gen),
            "system_fingerprint": None,
        }
    )


def openai_completion_events(gen: Generation, include_usage: bool) -> list[bytes]:
    """``text_completion`` SSE events: one per piece and prompt, the last piece with finish_reason."""
    head: dict[str, Any] = {"id": gen.id, "object": "text_completion", "created": gen.created}
    finish = _finish(gen)
    pieces = gen.pieces or ("",)
    last = len(pieces) - 1
    events = []
    for index in range(gen.choices):
        for i, piece in enumerate(pieces):
            obj = {
                **head,
                "choices": [
                    {"text": piece, "index": index, "logprobs": None, "finish_reason": finish if i == last else None}
                ],
                "model": gen.model,
            }
            if include_usage:
                obj["usage"] = None
            events.append(_sse(obj))
    if include_usage:
        events.append(_sse({**head, "model": gen.model, "usage": openai_completion_usage(gen), "choices": []}))
    events.append(SSE_DONE)
    return events


# ---------------------------------------------------------------------------------------------
# OpenAI embeddings


def _unit_vector(seed: int, dimensions: int) -> list[float]:
    """A deterministic pseudo-random unit vector (xorshift32 from ``seed``)."""
    state = seed or 0x9E3779B9
    values = []
    for _ in range(dimensions):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        values.append(state / 0x80000000 - 1.0)
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 8) for v in values]


def _input_items(value: Any) -> list[Any]:
    if isinstance(value, list) and value and not all(isinstance(item, int) for item in value):
        return value
    return [value]


def embeddings_json(body: dict[str, Any], *, default_dimensions: int = 8) -> bytes:
    """A ``list`` of ``embedding`` objects, one per input, floats or base64 float32 vectors.

    Vectors are a deterministic function of the input; ``dimensions`` (1..4096) overrides the
    default size.
    """
    raw = body.get("input")
    items = _input_items(raw)
    tokens = sum(input_tokens(raw))
    dims = body.get("dimensions")
    if not (isinstance(dims, int) and not isinstance(dims, bool) and 1 <= dims <= 4096):
        dims = default_dimensions
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _unit_vector(zlib.crc32(orjson.dumps(item)), dims)
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    model = body.get("model")
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model if isinstance(model, str) and model else DEFAULT_MODEL,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# ---------------------------------------------------------------------------------------------
# Anthropic messages


def _stop_reason(gen: Generation) -> str:
    if gen.tool is not None:
        return "tool_use"
    return "max_tokens" if gen.truncated else "end_turn"


def _anthropic_content(gen: Generation) -> dict[str, Any]:
    if gen.tool is None:
        return {"type": "text", "text": gen.text}
    return {"type": "tool_use", "id": gen.tool.id, "name": gen.tool.name, "input": orjson.loads(gen.tool.json)}


def anthropic_usage(gen: Generation) -> dict[str, int]:
    """The ``usage`` object of a complete Anthropic message."""
    return {
        "input_tokens": gen.prompt_tokens,
        "output_tokens": gen.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def anthropic_message_json(gen: Generation) -> bytes:
    """A ``message`` body."""
    return orjson.dumps(
        {
            "id": gen.id,
            "type": "message",
            "role": "assistant",
            "model": gen.model,
            "content": [_anthropic_content(gen)],
            "stop_reason": _stop_reason(gen),
            "stop_sequence": None,
            "usage": anthropic_usage(gen),
        }
    )


_DELTA_PREFIX = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
)


def _event(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def anthropic_message_events(gen: Generation) -> list[bytes]:
    """Anthropic stream: message_start, content_block_start, ping, deltas, stops, message_delta.

    A tool call is a ``tool_use`` block (``input: {}``) whose deltas are ``input_json_delta``
    fragments.

    ``message_start`` reports the input tokens and ``output_tokens: 1`` (as Anthropic does);
    ``message_delta`` carries the final, cumulative ``output_tokens``.
    """
    start_usage = {**anthropic_usage(gen), "output_tokens": 1}
    message: dict[str, Any] = {
        "id": gen.id,
        "type": "message",
        "role": "assistant",
        "model": gen.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    block = {"type": "text", "text": ""} if gen.tool is None else {**_anthropic_content(gen), "input": {}}
    events = [
        _event(b"message_start", {"type": "message_start", "message": message}),
        _event(b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    if gen.tool is None:
        events.extend(_DELTA_PREFIX + piece + b"}}\n\n" for piece in _encoded(gen.pieces))
    else:
        events.extend(
            _event(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            for delta in ({"type": "input_json_delta", "partial_json": part} for part in gen.tool.arguments)
        )
    events.append(_event(b"content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        _event(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(gen), "stop_sequence": None},
                "usage": {"output_tokens": gen.completion_tokens},
            },
        )
    )
    events.append(_event(b"message_stop", {"type": "message_stop"}))
    return events


# ---------------------------------------------------------------------------------------------
# Errors

# status -> (type, code, message) as OpenAI sends them.
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

# status -> (type, message) as Anthropic sends them (529 is Anthropic's "overloaded").
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def openai_error(
    status: int, message: str | None = None, *, code: str | None = None, param: str | None = None
) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` for ``status``."""
    kind, default_code, default_message = _OPENAI_ERRORS.get(
        status,
        ("server_error", None, "The server had an error while processing your request.")
        if status >= 500
        else ("invalid_request_error", None, "Invalid request."),
    )
    return orjson.dumps(
        {
            "error": {
                "message": message or default_message,
                "type": kind,
                "param": param,
                "code": code if code is not None else default_code,
            }
        }
    )


# status -> message as Azure OpenAI's gateway sends them, in its own format (the backend's
# errors, such as a 400 for a bad body, come in the OpenAI format instead).
_AZURE_ERRORS: dict[int, str] = {
    401: (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
        "for an active subscription and use a correct regional API endpoint for your resource."
    ),
    403: "Access denied due to Virtual Network/Firewall rules.",
    404: "Resource not found",
    429: (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded "
        "call rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."
    ),
}


def is_azure_gateway_error(status: int) -> bool:
    """Whether Azure OpenAI answers ``status`` in its own ``{"error": {"code", "message"}}`` format."""
    return status in _AZURE_ERRORS


def masked_key(key: str) -> str:
    """``key`` with all but its last 4 characters starred, as OpenAI shows it; all starred if short."""
    visible = key[-4:] if len(key) > 8 else ""
    return "*" * (len(key) - len(visible)) + visible


def anthropic_error(status: int, message: str | None = None) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}`` for ``status``."""
    kind, default_message = _ANTHROPIC_ERRORS.get(
        status,
        ("api_error", "Internal server error") if status >= 500 else ("invalid_request_error", "Invalid request."),
    )
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message or default_message}})


def azure_error(status: int, message: str | None = None) -> bytes:
    """``{"error": {"code": "<status>", "message"}}``, Azure OpenAI's gateway format."""
    return orjson.dumps({"error": {"code": str(status), "message": message or _AZURE_ERRORS.get(status, "Error")}})
