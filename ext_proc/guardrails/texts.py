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
results, refusals, ``prediction``; the answer's legacy ``function_call`` and URL citations),
completions (``prompt``, ``suffix``), embeddings (``input``), Messages and ``count_tokens``
(``system``, every content block: text and its citations, ``tool_use`` input, ``tool_result``
content, documents' text, title and context, search results; an answer's thinking), the Responses
API (``instructions``, ``input`` items: messages and their text parts, function and custom tool
calls and their outputs; a stored prompt's string ``variables``; the answer's ``output`` items:
message text, its citations and refusals, call arguments, reasoning summaries). A tool input's
JSON is read in its strings, long integers and keys that are not plain names. Thinking blocks and
reasoning items given back in a request are left alone: the provider signs or encrypts them and
refuses them changed. A text with token log probabilities names the object that holds them
(:attr:`Ref.scrub`): they spell the text out, and are dropped where it changed. Adding a wire
API is one more walker class and one line in :data:`WALKERS`; a request whose API has no walker is
refused while guardrails apply to it.

A Responses stream repeats its text: the deltas, then the ``*.done`` event of the channel, the
``response.content_part.done`` and ``response.output_item.done`` events, and the whole
``response`` of ``response.completed``. :class:`ResponsesStream` rewrites every repetition to the
text that actually went out in the deltas (so no original value leaks there, and a pseudonym
restored in the deltas is restored there too), and numbers the events again from where an added
event (the held text of a closing channel) shifted them, so ``sequence_number`` stays gapless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ext_proc.llm.sse import SSEEvent
from ext_proc.values import value

# (channel, text, json_text) -> the text to send now (the guard may hold some back)
TextFn = Callable[[tuple[Any, ...], str, bool], str]
# (channel, json_text) -> the text held back for a channel that closes now
FlushFn = Callable[[tuple[Any, ...], bool], str]


@value
class Ref:
    """One string in decoded JSON: ``container[key]``, spoken by ``role``; ``scrub``: the object
    whose ``logprobs`` spell this text out token by token, dropped (``null``) when the text changes."""

    container: Any
    key: Any
    role: str
    json_text: bool = False
    scrub: Any = None

    def get(self) -> str:
        return self.container[self.key]  # type: ignore[no-any-return]

    def set(self, value: str) -> None:
        self.container[self.key] = value
        if self.scrub is not None and self.scrub.get("logprobs"):
            self.scrub["logprobs"] = None


class _Number(Ref):
    """An integer of a JSON value (a card or phone number sent as a number), read as its digits;
    replaced, it becomes a string (the placeholder or the masked digits)."""

    __slots__ = ()

    def get(self) -> str:
        return str(self.container[self.key])


class _Key(Ref):
    """An object's key (``{"alice@example.com": "owner"}``); replaced, it is renamed in place (the
    object's order kept; a name already taken gets a number)."""

    __slots__ = ()

    def get(self) -> str:
        return self.key  # type: ignore[no-any-return]

    def set(self, value: str) -> None:
        items = list(self.container.items())
        name, number = value, 1
        while name in self.container and name != self.key:
            number += 1
            name = f"{value}_{number}"
        self.container.clear()
        self.container.update((name if key == self.key else key, item) for key, item in items)


_DIGITS = 100_000  # integers from here on are read as text: shorter ones are no identifier's digits


def _strings(node: Any, role: str) -> Iterator[Ref]:
    """Every string leaf of a JSON value (tool inputs), its long integers, and the keys that are not
    plain names (an e-mail address, a number): a key is read after the values it holds, so a
    renamed key never moves a place still to be read."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield Ref(node, key, role)
            elif isinstance(value, (dict, list)):
                yield from _strings(value, role)
            elif type(value) is int and abs(value) >= _DIGITS:
                yield _Number(node, key, role)
        for key in [key for key in node if isinstance(key, str) and not key.isidentifier()]:
            yield _Key(node, key, role)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, str):
                yield Ref(node, index, role)
            elif isinstance(value, (dict, list)):
                yield from _strings(value, role)
            elif type(value) is int and abs(value) >= _DIGITS:
                yield _Number(node, index, role)


class StreamTexts:
    """One streamed answer's text deltas, by channel (see the module docstring)."""

    # For an API that numbers its events (Responses): how many events went out so far, after
    # the last whole :meth:`feed` (a client's error event is numbered with it). None: unnumbered.
    sequence: int | None = None

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
        prediction = payload.get("prediction")  # the answer expected (Predicted Outputs): text that goes out
        if isinstance(prediction, dict):
            yield from _message(prediction, "assistant")

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                yield from _message(choice["message"], "assistant", choice)
                yield from _annotations(choice["message"].get("annotations"))

    def stream(self) -> StreamTexts:
        return OpenAIStream()


def _message(message: dict[str, Any], role: str, scrub: dict[str, Any] | None = None) -> Iterator[Ref]:
    content = message.get("content")
    if isinstance(content, str):
        yield Ref(message, "content", role, scrub=scrub)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield Ref(part, "text", role, scrub=scrub)
            elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
                yield Ref(part, "refusal", role, scrub=scrub)
    if isinstance(message.get("refusal"), str):
        yield Ref(message, "refusal", role, scrub=scrub)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield Ref(function, "arguments", role, json_text=True)
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        yield Ref(legacy, "arguments", role, json_text=True)


def _annotations(annotations: Any) -> Iterator[Ref]:
    """A chat answer's URL citations (``annotations``, ``delta.annotations``): their title and URL."""
    for annotation in annotations if isinstance(annotations, list) else ():
        citation = annotation.get("url_citation") if isinstance(annotation, dict) else None
        for field in ("title", "url"):
            if isinstance(citation, dict) and isinstance(citation.get(field), str):
                yield Ref(citation, field, "assistant")


class CompletionsWalker(Walker):
    """``/v1/completions``: ``prompt`` (a string or a list of strings; token arrays are not text), ``suffix``."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        yield from _inputs(payload, "prompt")
        if isinstance(payload.get("suffix"), str):
            yield Ref(payload, "suffix", "user")

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                yield Ref(choice, "text", "assistant", scrub=choice)

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
                altered = False  # this choice's text: its logprobs spell out what was there
                if isinstance(delta, dict):
                    for field in ("content", "refusal"):
                        value = delta.get(field)
                        if isinstance(value, str) and value:
                            channel = (index, field)
                            self.open[channel] = (field, False)
                            own[channel] = new = text(channel, value, False)
                            if new != value:
                                delta[field] = new
                                altered = True
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
                                altered = True
                    legacy = delta.get("function_call")  # the deprecated single call
                    value = legacy.get("arguments") if isinstance(legacy, dict) else None
                    if isinstance(value, str) and value:
                        assert isinstance(legacy, dict)
                        channel = (index, "function")
                        self.open[channel] = ("function", True)
                        own[channel] = new = text(channel, value, True)
                        if new != value:
                            legacy["arguments"] = new
                            altered = True
                    if delta.get("annotations"):  # whole in one chunk: guarded at once
                        altered |= _at_once(_annotations(delta["annotations"]), (index, "annotations"), text, flush)
                elif isinstance(choice.get("text"), str) and choice["text"]:
                    channel = (index, "text")
                    self.open[channel] = ("text", False)
                    value = choice["text"]
                    own[channel] = new = text(channel, value, False)
                    if new != value:
                        choice["text"] = new
                        altered = True
                if altered:
                    changed = True
                    if choice.get("logprobs"):
                        choice["logprobs"] = None
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
            elif kind == "function":
                choice = {"index": channel[0], "delta": {"function_call": {"arguments": rest}}, "finish_reason": None}
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
        elif channel[1] == "function":
            delta["function_call"]["arguments"] = ""
        else:
            delta[channel[1]] = ""


# -- Anthropic Messages ---------------------------------------------------------------------------

_BLOCK_FIELDS = {"text": ("text_delta", "text", False), "tool_use": ("input_json_delta", "partial_json", True),
                 "thinking": ("thinking_delta", "thinking", False)}
_DELTA_FIELDS = {"text_delta": ("text", False), "input_json_delta": ("partial_json", True),
                 "thinking_delta": ("thinking", False)}


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
            yield from _blocks(content, "assistant", answer=True)

    def stream(self) -> StreamTexts:
        return MessagesStream()


def _blocks(blocks: list[Any], role: str, answer: bool = False) -> Iterator[Ref]:
    """The text of Messages content blocks. A thinking block is read in an answer (what the client
    is shown) and not in a request, where the provider checks its signature and refuses it changed."""
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            yield Ref(block, "text", role)
            yield from _citations(block.get("citations"), role)
        elif kind == "tool_use":
            yield from _strings(block.get("input"), role)
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                yield Ref(block, "content", "tool")
            elif isinstance(content, list):
                yield from _blocks(content, "tool")
        elif kind == "document" or kind == "search_result":
            for field in ("title", "context", "source") if kind == "search_result" else ("title", "context"):
                if isinstance(block.get(field), str):
                    yield Ref(block, field, role)
            source = block.get("source")
            if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
                yield Ref(source, "data", role)
            elif isinstance(source, dict) and isinstance(source.get("content"), list):
                yield from _blocks(source["content"], role)
            elif isinstance(block.get("content"), list):  # a search result's text blocks
                yield from _blocks(block["content"], role)
        elif kind == "thinking" and answer and isinstance(block.get("thinking"), str):
            yield Ref(block, "thinking", role)


_CITED = ("cited_text", "document_title", "title")  # what a citation quotes and names


def _citations(citations: Any, role: str) -> Iterator[Ref]:
    for citation in citations if isinstance(citations, list) else ():
        for field in _CITED:
            if isinstance(citation, dict) and isinstance(citation.get(field), str):
                yield Ref(citation, field, role)


def _at_once(refs: Iterator[Ref], channel: tuple[Any, ...], text: TextFn, flush: FlushFn) -> bool:
    """Guard texts a stream gives whole in one event (a citation, a tool input at its block's start),
    each as a channel of its own that closes at once; whether any changed."""
    changed = False
    key = (*channel, "whole")
    for ref in refs:
        value = ref.get()
        new = text(key, value, ref.json_text) + flush(key, ref.json_text)
        if new != value:
            ref.set(new)
            changed = True
    return changed


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
                    field = shape[1] if shape[1] != "partial_json" else ""
                    if field and isinstance(block.get(field), str) and block[field]:
                        new = text(channel, block[field], False)
                        changed = new != block[field]
                        block[field] = new
                    elif not field and block.get("input"):  # a tool's input given whole at its start
                        changed = _at_once(_strings(block["input"], "assistant"), channel, text, flush)
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
                elif isinstance(delta, dict) and delta.get("type") == "citations_delta":  # whole in one event
                    changed = _at_once(_citations([delta.get("citation")], "assistant"), channel, text, flush)
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


# -- OpenAI Responses ------------------------------------------------------------------------------

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class ResponsesWalker(Walker):
    """``/v1/responses``: ``instructions``, ``input`` (a string, or items: messages, function and custom
    tool calls and their outputs), a stored prompt's ``variables``; the answer's ``output`` items."""

    def request(self, payload: dict[str, Any]) -> Iterator[Ref]:
        instructions = payload.get("instructions")
        if isinstance(instructions, str):
            yield Ref(payload, "instructions", "system")
        elif isinstance(instructions, list):
            yield from _input_items(instructions, "system")
        given = payload.get("input")
        if isinstance(given, str):
            yield Ref(payload, "input", "user")
        elif isinstance(given, list):
            yield from _input_items(given, "user")
        prompt = payload.get("prompt")
        variables = prompt.get("variables") if isinstance(prompt, dict) else None
        if isinstance(variables, dict):
            for name, value in variables.items():
                if isinstance(value, str):
                    yield Ref(variables, name, "user")
                elif isinstance(value, dict) and isinstance(value.get("text"), str):
                    yield Ref(value, "text", "user")

    def answer(self, payload: dict[str, Any]) -> Iterator[Ref]:
        output = payload.get("output")
        for index, item in enumerate(output if isinstance(output, list) else ()):
            for _, container, key, json_text in _item_texts(item, index):
                yield Ref(container, key, "assistant", json_text)

    def stream(self) -> StreamTexts:
        return ResponsesStream()


def _input_items(items: list[Any], role: str) -> Iterator[Ref]:
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            speaker = _ROLES.get(str(item.get("role")), role)
            content = item.get("content")
            if isinstance(content, str):
                yield Ref(item, "content", speaker)
            elif isinstance(content, list):
                yield from _parts(content, speaker)
        elif kind == "function_call" and isinstance(item.get("arguments"), str):
            yield Ref(item, "arguments", "assistant", json_text=True)
        elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
            yield Ref(item, "input", "assistant")
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            if isinstance(output, str):
                yield Ref(item, "output", "tool")
            elif isinstance(output, list):
                yield from _parts(output, "tool")


def _parts(parts: list[Any], role: str) -> Iterator[Ref]:
    for part in parts:
        if isinstance(part, dict):
            if isinstance(part.get("text"), str):
                yield Ref(part, "text", role)
            elif isinstance(part.get("refusal"), str):
                yield Ref(part, "refusal", role)


# Where an output item keeps its text, by channel: (output index, kind[, part index]).
_PART_KINDS = {"output_text": ("text", "text"), "refusal": ("refusal", "refusal"),
               "reasoning_text": ("reasoning", "text")}


def _item_texts(item: Any, index: Any) -> Iterator[tuple[tuple[Any, ...], Any, str, bool]]:
    """(channel, container, key, json_text) of each text of an output item."""
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "message" or kind == "reasoning":
        for number, part in enumerate(item.get("content") or ()):
            shape = _PART_KINDS.get(str(part.get("type"))) if isinstance(part, dict) else None
            if shape is not None and isinstance(part.get(shape[1]), str):
                yield (index, shape[0], number), part, shape[1], False
            annotations = part.get("annotations") if shape is not None else None
            for which, annotation in enumerate(annotations if isinstance(annotations, list) else ()):
                yield from _annotation(annotation, index, number, which)
        for number, part in enumerate(item.get("summary") or () if kind == "reasoning" else ()):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield (index, "summary", number), part, "text", False
    elif kind == "function_call" and isinstance(item.get("arguments"), str):
        yield (index, "arguments"), item, "arguments", True
    elif kind == "custom_tool_call" and isinstance(item.get("input"), str):
        yield (index, "input"), item, "input", False


_ANNOTATED = ("title", "url", "filename")  # what a citation of an output text names


def _annotation(annotation: Any, index: Any, part: Any, which: Any) -> Iterator[tuple[tuple[Any, ...], Any, str, bool]]:
    """The texts of one annotation of an output text part: each a channel given whole."""
    for field in _ANNOTATED:
        if isinstance(annotation, dict) and isinstance(annotation.get(field), str):
            yield (index, "annotation", part, which, field), annotation, field, False


# delta event -> (channel kind, the part index field or "", json_text); its ``.done`` event's text field
_R_DELTAS = {
    "response.output_text.delta": ("text", "content_index", False),
    "response.refusal.delta": ("refusal", "content_index", False),
    "response.reasoning_text.delta": ("reasoning", "content_index", False),
    "response.reasoning_summary_text.delta": ("summary", "summary_index", False),
    "response.function_call_arguments.delta": ("arguments", "", True),
    "response.custom_tool_call_input.delta": ("input", "", False),
}
_R_DONE = {
    "response.output_text.done": ("text", "content_index", "text"),
    "response.refusal.done": ("refusal", "content_index", "refusal"),
    "response.reasoning_text.done": ("reasoning", "content_index", "text"),
    "response.reasoning_summary_text.done": ("summary", "summary_index", "text"),
    "response.function_call_arguments.done": ("arguments", "", "arguments"),
    "response.custom_tool_call_input.done": ("input", "", "input"),
}
_R_PARTS = {"response.content_part.added", "response.content_part.done", "response.reasoning_summary_part.added",
            "response.reasoning_summary_part.done"}
_R_WHOLE = {"response.completed", "response.incomplete", "response.failed"}


class ResponsesStream(StreamTexts):
    """Responses events: each output item's text part, refusal, summary part or call arguments is a
    channel; its ``*.done`` event closes it, ``response.output_item.done`` any left open in the item,
    the terminal event all. The repetitions of the text are rewritten to what went out, and the
    events renumbered when an event was added (see the module docstring)."""

    __slots__ = ("done", "open", "sent")

    def __init__(self) -> None:
        self.open: dict[tuple[Any, ...], dict[str, Any]] = {}  # channel -> the head of its delta events
        self.sent: dict[tuple[Any, ...], list[str]] = {}  # channel -> the text it sent so far
        self.done: dict[tuple[Any, ...], str] = {}  # closed channel -> all the text it sent
        self.sequence = 0

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            payload = event.json() if event.data else None
            kind = str(payload.get("type", "")) if payload is not None else ""
            if payload is None or not kind:
                out.append(event)
                continue
            changed = False
            delta = _R_DELTAS.get(kind)
            done = _R_DONE.get(kind)
            if delta is not None and isinstance(payload.get("delta"), str):
                channel_kind, part, json_text = delta
                channel = _channel(payload, channel_kind, part)
                value = payload["delta"]
                if channel not in self.open:  # what an added delta of this channel repeats
                    head = self.open[channel] = {key: payload[key] for key in payload
                                                 if key not in ("delta", "sequence_number", "logprobs", "obfuscation")}
                    if "sequence_number" in payload:
                        head["sequence_number"] = -1  # numbered on the way out
                new = text(channel, value, json_text)
                self.sent.setdefault(channel, []).append(new)
                if new != value:
                    payload["delta"] = new
                    _no_logprobs(payload)
                    changed = True
            elif done is not None:
                channel_kind, part, field = done
                channel = _channel(payload, channel_kind, part)
                out += self._close([channel], flush)
                changed = self._final(payload, field, channel, text, flush, channel_kind == "arguments")
            elif kind in _R_PARTS or kind.startswith("response.output_item."):
                closing = kind.endswith(".done")
                container = payload.get("part") if kind in _R_PARTS else payload.get("item")
                index = payload.get("output_index")
                if kind in _R_PARTS:  # one part: as an item holding only it, at its place
                    number = payload.get("summary_index" if "summary" in kind else "content_index")
                    texts = [((index, channel[1], number, *channel[3:]), c, k, j)
                             for channel, c, k, j in _item_texts(_as_item(kind, container), index)]
                else:
                    texts = list(_item_texts(container, index))
                if closing:  # an item closes all its channels, a part its own
                    out += self._close([c for c in self.open if c[0] == index] if kind not in _R_PARTS
                                       else [t[0] for t in texts], flush)
                for channel, holder, key, json_text in texts:
                    changed |= (self._final(holder, key, channel, text, flush, json_text)
                                if closing or channel[1] == "annotation"  # an annotation comes whole
                                else self._added(holder, key, channel, text, json_text))
            elif kind == "response.output_text.annotation.added":
                texts = list(_annotation(payload.get("annotation"), payload.get("output_index"),
                                         payload.get("content_index"), payload.get("annotation_index")))
                for channel, holder, key, json_text in texts:
                    changed |= self._final(holder, key, channel, text, flush, json_text)
            elif kind in _R_WHOLE:
                out += self._close(list(self.open), flush)
                response = payload.get("response")
                output = response.get("output") if isinstance(response, dict) else None
                for index, item in enumerate(output if isinstance(output, list) else ()):
                    for channel, holder, key, json_text in _item_texts(item, index):
                        changed |= self._final(holder, key, channel, text, flush, json_text)
            out.append(_event(payload, event.event, like=event) if changed else event)
        return self._numbered(out)

    def _added(self, holder: Any, key: str, channel: tuple[Any, ...], text: TextFn, json_text: bool) -> bool:
        """An added item or part that already holds text (OpenAI's are empty): the start of its channel."""
        value = holder[key]
        if not value:
            return False
        self.open.setdefault(channel, {})
        new = text(channel, value, json_text)
        self.sent.setdefault(channel, []).append(new)
        holder[key] = new
        return bool(new != value)

    def _final(self, holder: Any, key: str, channel: tuple[Any, ...], text: TextFn, flush: FlushFn,
               json_text: bool = False) -> bool:
        """A repetition of a channel's whole text: what the channel sent (a channel never streamed is
        guarded here, once, as final text)."""
        value = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(value, str):
            return False
        final = self.done.get(channel)
        if final is None:
            final = self.done[channel] = text(channel, value, json_text) + flush(channel, json_text)
        if final == value:
            return False
        holder[key] = final
        _no_logprobs(holder)
        return True

    def _close(self, channels: list[tuple[Any, ...]], flush: FlushFn) -> list[SSEEvent]:
        """Delta events carrying what the closing channels still hold (one each, when any)."""
        out = []
        for channel in channels:
            head = self.open.pop(channel, None)
            if head is None:
                continue
            json_text = channel[1] == "arguments"
            rest = flush(channel, json_text)
            sent = self.sent.pop(channel, [])
            self.done[channel] = "".join(sent) + rest
            if rest and head:
                extra = {**head, "delta": rest}
                if head.get("type") == "response.output_text.delta":
                    extra["logprobs"] = []
                out.append(_event(extra, str(head.get("type"))))
        return out

    def _numbered(self, events: list[SSEEvent]) -> list[SSEEvent]:
        """``sequence_number`` counted again over what goes out (changed only where an event was added)."""
        number = self.sequence or 0
        out = []
        for event in events:
            if not event.data:
                out.append(event)
                continue
            payload = event.json()
            if payload is not None and "sequence_number" in payload and payload["sequence_number"] != number:
                payload["sequence_number"] = number
                event = _event(payload, event.event, like=event)
            number += 1
            out.append(event)
        self.sequence = number
        return out


def _channel(payload: dict[str, Any], kind: str, part: str) -> tuple[Any, ...]:
    index = payload.get("output_index", 0)
    return (index, kind, payload.get(part, 0)) if part else (index, kind)


def _as_item(kind: str, part: Any) -> dict[str, Any]:
    """A content or summary part event's part, as the output item that would hold it alone."""
    if "summary" in kind:
        return {"type": "reasoning", "summary": [part]}
    return {"type": "message", "content": [part]}


def _no_logprobs(holder: dict[str, Any]) -> None:
    """Token log probabilities spell out the text they came with: dropped where the text changed."""
    if holder.get("logprobs"):
        holder["logprobs"] = []


WALKERS: dict[str, Walker] = {
    "openai.chat.completions": ChatWalker(),
    "openai.completions": CompletionsWalker(),
    "openai.embeddings": EmbeddingsWalker(),
    "anthropic.messages": MessagesWalker(),
    "anthropic.count_tokens": MessagesWalker(),  # a Messages body, forwarded to Anthropic to be counted
    "openai.responses": ResponsesWalker(),
}


def walker(api_name: str) -> Walker | None:
    """The walker of a wire API (by its name), or None when guardrails cannot read it."""
    return WALKERS.get(api_name)
