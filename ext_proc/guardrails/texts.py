"""Where text lives in each wire API: requests, JSON answers and streamed answers.

Theory of operation. Guardrails read and rewrite text without knowing any wire format: a
:class:`Walker` per wire API (registered in :data:`WALKERS` by the API's name) lists the text of
a decoded request or answer as :class:`Ref` values, each a place (a container and a key) that can
be read and replaced in the decoded JSON, with the role it speaks for (``user``, ``system``,
``assistant``, ``tool``) and whether the string holds JSON text (tool-call arguments), so a
restored value is escaped for it. For streamed answers a walker makes a :class:`StreamTexts`: it
finds the text deltas of each event, keyed by *channel* (a choice's content, one tool call's
arguments, one Anthropic content block), hands each to the guard's text function and writes back
what comes out; when a channel closes (a choice's ``finish_reason``, ``content_block_stop``) the
text still held for it is sent in an event of the same kind placed just before the closing one,
so the stream keeps the shape the client's SDK (and Tollway's translators) expect.

Covered: chat completions (every message role, string or part content, tool calls and tool
results, refusals), completions (``prompt``, ``suffix``), embeddings (``input``), Messages
(``system``, every content block: text, ``tool_use`` input, ``tool_result`` content, text
documents). Thinking blocks are left alone in both directions: the provider signs them and
refuses them changed. Adding a wire API (the Responses API) is one more walker class and one line
in :data:`WALKERS`; a request whose API has no walker is refused while guardrails apply to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.llm.sse import SSEEvent

# (channel, text, json_text) -> the text to send now (the guard may hold some back)
TextFn = Callable[[tuple[Any, ...], str, bool], str]
# (channel, json_text) -> the text held back for a channel that closes now
FlushFn = Callable[[tuple[Any, ...], bool], str]


@dataclass(frozen=True, slots=True)
class Ref:
    """One string in decoded JSON: ``container[key]``, spoken by ``role``."""

    container: Any
    key: Any
    role: str
    json_text: bool = False

    def get(self) -> str:
        return self.container[self.key]  # type: ignore[no-any-return]

    def set(self, value: str) -> None:
        self.container[self.key] = value


def _strings(node: Any, role: str) -> Iterator[Ref]:
    """Every string leaf of a JSON value (tool inputs)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield Ref(node, key, role)
            elif isinstance(value, (dict, list)):
                yield from _strings(value, role)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, str):
                yield Ref(node, index, role)
            elif isinstance(value, (dict, list)):
                yield from _strings(value, role)


class StreamTexts:
    """One streamed answer's text deltas, by channel (see the module docstring)."""

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn) -> list[SSEEvent]:
        raise NotImplementedError


class Walker:
    """Where one wire API keeps its text."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        raise NotImplementedError

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        return iter(())

    def stream(self) -> StreamTexts:
        raise NotImplementedError


def _event(data: dict[str, Any], name: str = "", like: SSEEvent | None = None) -> SSEEvent:
    body = orjson.dumps(data)
    raw = (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + body + b"\n\n"
    event = SSEEvent(name, body, raw)
    if like is not None:
        event.usage_only, event.last = like.usage_only, like.last
    event._json = data
    return event


# -- OpenAI -------------------------------------------------------------------------------------


class ChatWalker(Walker):
    """``/v1/chat/completions``: messages of every role, their parts, tool calls and results."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        messages = payload.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict):
                continue
            role = message.get("role")
            role = role if role in ("system", "developer", "user", "assistant", "tool") else "user"
            role = "system" if role == "developer" else role
            yield from _message(message, role)

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                yield from _message(choice["message"], "assistant")

    def stream(self) -> StreamTexts:
        return OpenAIStream()


def _message(message: dict[str, Any], role: str) -> Iterator[Ref]:
    content = message.get("content")
    if isinstance(content, str):
        yield Ref(message, "content", role)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield Ref(part, "text", role)
            elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
                yield Ref(part, "refusal", role)
    if isinstance(message.get("refusal"), str):
        yield Ref(message, "refusal", role)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield Ref(function, "arguments", role, json_text=True)
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        yield Ref(legacy, "arguments", role, json_text=True)


class CompletionsWalker(Walker):
    """``/v1/completions``: ``prompt`` (a string or a list of strings; token arrays are not text), ``suffix``."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        yield from _inputs(payload, "prompt")
        if isinstance(payload.get("suffix"), str):
            yield Ref(payload, "suffix", "user")

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                yield Ref(choice, "text", "assistant")

    def stream(self) -> StreamTexts:
        return OpenAIStream()


class EmbeddingsWalker(Walker):
    """``/v1/embeddings``: ``input`` (a string or a list of strings). Answers are vectors."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        yield from _inputs(payload, "input")


def _inputs(payload: dict[str, Any], key: str) -> Iterator[Ref]:
    value = payload.get(key)
    if isinstance(value, str):
        yield Ref(payload, key, "user")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield Ref(value, index, "user")


class OpenAIStream(StreamTexts):
    """Chat and completion chunks: ``delta.content``, ``delta.refusal``, each tool call's
    ``arguments`` (chat) or ``text`` (completions), per choice; a choice's ``finish_reason`` closes
    its channels, and ``[DONE]`` any left open."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open: dict[tuple[Any, ...], tuple[str, bool]] = {}  # channel -> (kind, json_text)

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            data = event.data
            if not data or data == b"[DONE]" or b'"choices"' not in data:
                if data == b"[DONE]" and self.open:
                    out += self._close(None, event, None, flush)
                out.append(event)
                continue
            chunk = event.json()
            choices = chunk.get("choices") if chunk is not None else None
            if not isinstance(choices, list):
                out.append(event)
                continue
            changed = False
            before: list[SSEEvent] = []
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                own: dict[tuple[Any, ...], str] = {}
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    for field in ("content", "refusal"):
                        value = delta.get(field)
                        if isinstance(value, str) and value:
                            channel = (index, field)
                            self.open[channel] = (field, False)
                            own[channel] = new = text(channel, value, False)
                            if new != value:
                                delta[field] = new
                                changed = True
                    for call in delta.get("tool_calls") or ():
                        function = call.get("function") if isinstance(call, dict) else None
                        value = function.get("arguments") if isinstance(function, dict) else None
                        if isinstance(value, str) and value:
                            assert isinstance(call, dict) and isinstance(function, dict)
                            tool = (index, "tool", call.get("index", 0))
                            self.open[tool] = ("tool", True)
                            own[tool] = new = text(tool, value, True)
                            if new != value:
                                function["arguments"] = new
                                changed = True
                elif isinstance(choice.get("text"), str) and choice["text"]:
                    channel = (index, "text")
                    self.open[channel] = ("text", False)
                    value = choice["text"]
                    own[channel] = new = text(channel, value, False)
                    if new != value:
                        choice["text"] = new
                        changed = True
                if choice.get("finish_reason") and any(key[0] == index for key in self.open):
                    # The choice ends here: what it still holds goes out first, in a chunk of its own
                    # placed before this one, together with this chunk's own text (order kept).
                    synth = self._close(index, event, chunk, flush, own)
                    if synth:
                        before += synth
                        _clear(choice, own)
                        changed = True
            out += before
            out.append(_event(chunk, like=event) if changed and chunk is not None else event)
        return out

    def _close(self, index: Any, event: SSEEvent, chunk: dict[str, Any] | None, flush: FlushFn,
               own: dict[tuple[Any, ...], str] | None = None) -> list[SSEEvent]:
        """Chunks carrying what the closing channels of choice ``index`` (None: all) still hold."""
        out = []
        for channel in [key for key in self.open if index is None or key[0] == index]:
            kind, json_text = self.open.pop(channel)
            rest = (own or {}).get(channel, "") + flush(channel, json_text)
            if not rest:
                continue
            if kind == "tool":
                delta: dict[str, Any] = {"tool_calls": [{"index": channel[2], "function": {"arguments": rest}}]}
                choice: dict[str, Any] = {"index": channel[0], "delta": delta, "finish_reason": None}
            elif kind == "text":
                choice = {"index": channel[0], "text": rest, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": channel[0], "delta": {kind: rest}, "finish_reason": None}
            head = {key: value for key, value in (chunk or {}).items() if key not in ("choices", "usage")}
            out.append(_event({**head, "choices": [choice]}))
        return out


def _clear(choice: dict[str, Any], own: dict[tuple[Any, ...], str]) -> None:
    """Remove from a finishing choice the text that moved to the chunk before it."""
    for channel in own:
        if channel[1] == "text":
            choice["text"] = ""
            continue
        delta = choice["delta"]
        if channel[1] == "tool":
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict) and call.get("index", 0) == channel[2]:
                    call["function"]["arguments"] = ""
        else:
            delta[channel[1]] = ""


# -- Anthropic Messages ---------------------------------------------------------------------------

_BLOCK_FIELDS = {"text": ("text_delta", "text", False), "tool_use": ("input_json_delta", "partial_json", True)}
_DELTA_FIELDS = {"text_delta": ("text", False), "input_json_delta": ("partial_json", True)}


class MessagesWalker(Walker):
    """``/v1/messages``: ``system``, every block of every turn (text, tool_use input, tool_result
    content, text documents); thinking blocks are signed and left alone."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        system = payload.get("system")
        if isinstance(system, str):
            yield Ref(payload, "system", "system")
        elif isinstance(system, list):
            yield from _blocks(system, "system")
        for message in payload.get("messages") or ():
            if not isinstance(message, dict):
                continue
            role = "assistant" if message.get("role") == "assistant" else "user"
            content = message.get("content")
            if isinstance(content, str):
                yield Ref(message, "content", role)
            elif isinstance(content, list):
                yield from _blocks(content, role)

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        content = payload.get("content")
        if isinstance(content, list):
            yield from _blocks(content, "assistant")

    def stream(self) -> StreamTexts:
        return MessagesStream()


def _blocks(blocks: list[Any], role: str) -> Iterator[Ref]:
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            yield Ref(block, "text", role)
        elif kind == "tool_use":
            yield from _strings(block.get("input"), role)
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                yield Ref(block, "content", "tool")
            elif isinstance(content, list):
                yield from _blocks(content, "tool")
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
                yield Ref(source, "data", role)
            elif isinstance(source, dict) and isinstance(source.get("content"), list):
                yield from _blocks(source["content"], role)


class MessagesStream(StreamTexts):
    """Anthropic events: each content block is a channel (text deltas, tool input JSON deltas);
    ``content_block_stop`` closes it, ``message_stop`` any left open."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open: dict[tuple[Any, ...], tuple[str, str, bool]] = {}  # channel -> (delta type, field, json)

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            if not event.data:
                out.append(event)
                continue
            name = event.event
            payload = event.json()
            if not name and payload is not None:
                name = str(payload.get("type", ""))
            if payload is None or name not in ("content_block_start", "content_block_delta", "content_block_stop",
                                               "message_stop"):
                out.append(event)
                continue
            if name == "message_stop":
                out += self._close(None, flush)
                out.append(event)
                continue
            channel = (payload.get("index", 0),)
            changed = False
            if name == "content_block_start":
                block = payload.get("content_block")
                shape = _BLOCK_FIELDS.get(str(block.get("type"))) if isinstance(block, dict) else None
                if shape is not None:
                    self.open[channel] = shape
                    assert isinstance(block, dict)
                    if shape[1] == "text" and isinstance(block.get("text"), str) and block["text"]:
                        new = text(channel, block["text"], False)
                        changed = new != block["text"]
                        block["text"] = new
            elif name == "content_block_delta":
                delta = payload.get("delta")
                shape2 = _DELTA_FIELDS.get(str(delta.get("type"))) if isinstance(delta, dict) else None
                if shape2 is not None and isinstance(delta, dict) and isinstance(delta.get(shape2[0]), str):
                    field, json_text = shape2
                    self.open.setdefault(channel, (delta["type"], field, json_text))
                    value = delta[field]
                    new = text(channel, value, json_text)
                    if new != value:
                        delta[field] = new
                        changed = True
            else:  # content_block_stop
                out += self._close(channel, flush)
            out.append(_event(payload, name if event.event else "", like=event) if changed else event)
        return out

    def _close(self, channel: tuple[Any, ...] | None, flush: FlushFn) -> list[SSEEvent]:
        out = []
        for key in [k for k in self.open if channel is None or k == channel]:
            kind, field, json_text = self.open.pop(key)
            rest = flush(key, json_text)
            if rest:
                out.append(_event({"type": "content_block_delta", "index": key[0],
                                   "delta": {"type": kind, field: rest}}, "content_block_delta"))
        return out


WALKERS: dict[str, Walker] = {
    "openai.chat.completions": ChatWalker(),
    "openai.completions": CompletionsWalker(),
    "openai.embeddings": EmbeddingsWalker(),
    "anthropic.messages": MessagesWalker(),
}


def walker(api_name: str) -> Walker | None:
    """The walker of a wire API (by its name), or None when guardrails cannot read it."""
    return WALKERS.get(api_name)
