"""Where text lives in OpenAI's chat completions, completions and embeddings, and their streams."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ext_proc.llm.sse import SSEEvent

from .base import (
    EchoFn,
    FlushFn,
    Ref,
    StreamTexts,
    TextFn,
    Unread,
    Walker,
    _at_once,
    _definition,
    _error_message,
    _event,
    _field,
    _identifiers,
)


class ChatWalker(Walker):
    """``/v1/chat/completions``: messages of every role, their parts, tool calls and results."""

    def request(self, payload: dict[str, Any], definitions: bool = True) -> Iterator[Ref]:
        messages = payload.get("messages")
        for number, message in enumerate(messages if isinstance(messages, list) else ()):
            if not isinstance(message, dict):
                yield Unread(messages, number, "user", param=f"messages[{number}]", must="an object")
                continue
            role = message.get("role")
            role = role if role in ("system", "developer", "user", "assistant", "tool") else "user"
            role = "system" if role == "developer" else role
            yield from _message(message, role, at=number)
        prediction = payload.get("prediction")  # the answer expected (Predicted Outputs): text that goes out
        if isinstance(prediction, dict):
            yield from _message(prediction, "assistant", where="prediction")
        yield from _identifiers(payload)
        if definitions and ("tools" in payload or "response_format" in payload or "functions" in payload):
            yield from _definitions(payload)  # (most requests have none)

    def definitions(self, payload: dict[str, Any]) -> Iterator[Ref]:
        return _definitions(payload)

    def defined(self, payload: dict[str, Any]) -> list[Any]:
        if "tools" in payload or "response_format" in payload or "functions" in payload:
            return [payload.get("tools"), payload.get("functions"), payload.get("response_format")]
        return []

    def answer(self, payload: dict[str, Any], json_output: bool = False) -> Iterator[Ref]:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                yield from _message(choice["message"], "assistant", choice, json_output,
                                    anchored=_cited(choice["message"].get("annotations")))
                yield from _annotations(choice["message"].get("annotations"))
                yield from _transcript(choice["message"].get("audio"))

    def stream(self, json_output: bool = False) -> StreamTexts:
        return OpenAIStream(json_output)

    def asks_json(self, payload: dict[str, Any]) -> bool:
        return _json_format(payload.get("response_format"))


def _definitions(payload: dict[str, Any]) -> Iterator[Ref]:
    """A chat request's tools (a function's ``description`` and ``parameters``, a custom tool's
    ``description`` and ``format``), legacy ``functions`` and a ``response_format``'s JSON schema
    (``description``, ``schema``): the developer's text the model reads (:data:`.base.DEFINITION`)."""
    tools, functions, fmt = payload.get("tools"), payload.get("functions"), payload.get("response_format")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            yield from _definition(tool.get("function"), ("description", "parameters"))
            yield from _definition(tool.get("custom"), ("description", "format"))
    for function in functions if isinstance(functions, list) else ():
        yield from _definition(function, ("description", "parameters"))
    if isinstance(fmt, dict):
        yield from _definition(fmt.get("json_schema"), ("description", "schema"))


def _json_format(fmt: Any) -> bool:
    """Whether a ``response_format`` (chat) or ``text.format`` (Responses) asks for JSON."""
    return isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")


# A message's (and a streamed delta's) reasoning, as OpenAI-compatible servers write it: DeepSeek's,
# vLLM's and Groq's ``reasoning_content``, OpenRouter's, Ollama's and newer vLLM's ``reasoning``.
# Plain text, neither signed nor encrypted: read as the message's text is, in requests (the client
# gives it back in an assistant message) and in answers (its pseudonyms put back, held back in a
# stream as the content is).
REASONING = ("reasoning_content", "reasoning")


def _message(message: dict[str, Any], role: str, scrub: dict[str, Any] | None = None,
             json_output: bool = False, where: str = "message", at: int | None = None,
             anchored: list[dict[str, Any]] | None = None) -> Iterator[Ref]:
    """A chat message's texts; a field of a type no message has is :class:`Unread` (``where``: the
    message's place, for the error; ``at``: its index in ``messages`` instead, the place then made
    only for an error: most messages have none; ``anchored``: an answer's URL citations, whose
    indices point into its string ``content``)."""
    if at is not None:
        where = f"messages[{at}]" if _odd(message) else "messages"
    content = message.get("content")
    if isinstance(content, str):
        yield Ref(message, "content", role, json_output, scrub, anchored=anchored)
    elif isinstance(content, list):
        for number, part in enumerate(content):
            if not isinstance(part, dict):
                yield Unread(content, number, role, param=f"{where}.content[{number}]",
                             must="an object (a content part)")
            elif part.get("text") is not None:
                if isinstance(part["text"], str):
                    yield Ref(part, "text", role, json_output, scrub)
                else:
                    yield Unread(part, "text", role, param=f"{where}.content[{number}].text", must="a string")
            elif part.get("refusal") is not None:
                yield from _field(part, "refusal", role, f"{where}.content[{number}].refusal")
    elif content is not None:
        yield Unread(message, "content", role, param=f"{where}.content",
                     must="a string or an array of content parts")
    if isinstance(message.get("refusal"), str):
        yield Ref(message, "refusal", role, scrub=scrub)
    for field in REASONING:  # what the model thought, where OpenAI-compatible servers give it
        if field in message:  # (most messages have none)
            yield from _field(message, field, role, f"{where}.{field}")
    calls = message.get("tool_calls")
    for number, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            yield from _field(function, "arguments", role, f"{where}.tool_calls[{number}].function.arguments",
                              "a string (of JSON)", json_text=True)
        custom = call.get("custom") if isinstance(call, dict) else None
        if isinstance(custom, dict):  # a custom tool's call: its input is free text (a grammar's, or none)
            yield from _field(custom, "input", role, f"{where}.tool_calls[{number}].custom.input")
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        yield from _field(legacy, "arguments", role, f"{where}.function_call.arguments", "a string (of JSON)",
                          json_text=True)


def _odd(message: dict[str, Any]) -> bool:
    """Whether a message may hold a place the guard does not read (so its errors need its index):
    anything but a string or absent content without calls or reasoning."""
    content = message.get("content")
    return (not (content is None or isinstance(content, str)) or "tool_calls" in message or "function_call" in message
            or "reasoning_content" in message or "reasoning" in message)  # (REASONING, without a generator)


def _annotations(annotations: Any) -> Iterator[Ref]:
    """A chat answer's URL citations (``annotations``, ``delta.annotations``): their title and URL."""
    for annotation in annotations if isinstance(annotations, list) else ():
        citation = annotation.get("url_citation") if isinstance(annotation, dict) else None
        for field in ("title", "url"):
            if isinstance(citation, dict) and isinstance(citation.get(field), str):
                yield Ref(citation, field, "assistant")


def _cited(annotations: Any) -> list[dict[str, Any]] | None:
    """The URL citations of a chat answer whose ``start_index``/``end_index`` point into its content."""
    cited = [annotation["url_citation"] for annotation in annotations if isinstance(annotation, dict)
             and isinstance(annotation.get("url_citation"), dict)] if isinstance(annotations, list) else []
    return cited or None


def _transcript(audio: Any) -> Iterator[Ref]:
    """An audio answer's ``transcript`` (``modalities: ["text", "audio"]``: the answer's text, its
    content null): read as the assistant's text, but :attr:`Ref.fixed`: the spoken ``audio.data``
    says the same and cannot be rewritten, so a rule that would change the transcript refuses it."""
    if isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
        yield Ref(audio, "transcript", "assistant", fixed=True)


class CompletionsWalker(Walker):
    """``/v1/completions``: ``prompt`` (a string or a list of strings; token ids are decoded to text
    first by :class:`ext_proc.core.guard.TokenPrompts`), ``suffix``."""

    def request(self, payload: dict[str, Any], definitions: bool = True) -> Iterator[Ref]:
        yield from _inputs(payload, "prompt")
        yield from _field(payload, "suffix", "user", "suffix")
        yield from _identifiers(payload)

    def answer(self, payload: dict[str, Any], json_output: bool = False) -> Iterator[Ref]:
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                yield Ref(choice, "text", "assistant", scrub=choice)

    def stream(self, json_output: bool = False) -> StreamTexts:
        return OpenAIStream()


class EmbeddingsWalker(Walker):
    """``/v1/embeddings``: ``input`` (a string or a list of strings). Answers are vectors."""

    restores = False  # a pseudonymise rule acts as redact (and is recorded so): nothing comes back

    def request(self, payload: dict[str, Any], definitions: bool = True) -> Iterator[Ref]:
        yield from _inputs(payload, "input")
        yield from _identifiers(payload)


def _inputs(payload: dict[str, Any], key: str) -> Iterator[Ref]:
    """A prompt or input: a string or strings (token ids are text by now, where the guard reads them)."""
    value = payload.get(key)
    if isinstance(value, list):
        for index in range(len(value)):
            yield from _field(value, index, "user", f"{key}[{index}]")
    else:
        yield from _field(payload, key, "user", key, "a string or an array of strings")


class OpenAIStream(StreamTexts):
    """Chat and completion chunks: ``delta.content``, ``delta.refusal``, the reasoning
    (``delta.reasoning_content``, ``delta.reasoning``: :data:`REASONING`), ``delta.audio.transcript``
    (an audio answer's text, which may not change: :attr:`Ref.fixed`), each tool call's
    ``arguments`` (chat) or ``text`` (completions), per choice; a choice's ``finish_reason`` closes
    its channels, and ``[DONE]`` any left open. ``json_output``: the content is JSON text."""

    __slots__ = ("json", "open")

    def __init__(self, json_output: bool = False) -> None:
        self.open: dict[tuple[Any, ...], tuple[str, bool]] = {}  # channel -> (kind, json_text)
        self.json = json_output

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn,
             echo: EchoFn | None = None) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            data = event.data
            if not data or data == b"[DONE]":
                if data == b"[DONE]" and self.open:
                    out += self._close(None, event, None, flush)
                out.append(event)
                continue
            # Judged on the decoded chunk, never on its bytes: a key may be written with escapes
            # ("cho\u0069ces"). (Each chunk is decoded once, for every stage; one that is not JSON
            # never gets here: it ends the stream, response.Stage.reads_all.)
            chunk = event.json()
            choices = chunk.get("choices") if chunk is not None else None
            if not isinstance(choices, list):
                if chunk is not None and "error" in chunk and _error_message(chunk["error"], echo):
                    event = _event(chunk, event.event, like=event)  # the provider's error in the stream
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
                    carried = _carried(index, delta)
                    if carried - self.open.keys():
                        # Another channel of the choice starts (a tool call after the text, the next
                        # tool call): the ones it leaves are done, what they hold goes out first.
                        before += self._close(index, event, chunk, flush, keep=carried)
                    for field in _DELTA_TEXTS:
                        value = delta.get(field)
                        if isinstance(value, str) and value:
                            channel = (index, field)
                            json_text = self.json and field == "content"
                            self.open[channel] = (field, json_text)
                            own[channel] = new = text(channel, value, json_text)
                            if new != value:
                                delta[field] = new
                                altered = True
                    for call in delta.get("tool_calls") or ():
                        # A function's arguments (JSON text), or a custom tool's input (free text).
                        kind, field = ("custom", "input") if _custom(call) else ("tool", "arguments")
                        function = call.get("custom" if kind == "custom" else "function") \
                            if isinstance(call, dict) else None
                        value = function.get(field) if isinstance(function, dict) else None
                        if isinstance(value, str) and value:
                            assert isinstance(call, dict) and isinstance(function, dict)
                            tool = (index, kind, call.get("index", 0))
                            self.open[tool] = (kind, kind == "tool")
                            own[tool] = new = text(tool, value, kind == "tool")
                            if new != value:
                                function[field] = new
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
                    audio = delta.get("audio")  # an audio answer's transcript: may not change (Ref.fixed)
                    value = audio.get("transcript") if isinstance(audio, dict) else None
                    if isinstance(value, str) and value:
                        assert isinstance(audio, dict)
                        channel = (index, "transcript")
                        self.open[channel] = ("transcript", False)
                        own[channel] = new = text(channel, value, False, fixed=True)
                        if new != value:
                            audio["transcript"] = new
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
               own: dict[tuple[Any, ...], str] | None = None,
               keep: set[tuple[Any, ...]] | frozenset[tuple[Any, ...]] = frozenset()) -> list[SSEEvent]:
        """Chunks carrying what the closing channels of choice ``index`` (None: all; but those in
        ``keep``) still hold."""
        out = []
        for channel in [key for key in self.open if (index is None or key[0] == index) and key not in keep]:
            kind, json_text = self.open.pop(channel)
            rest = (own or {}).get(channel, "") + flush(channel, json_text)
            if not rest:
                continue
            if kind == "tool":
                delta: dict[str, Any] = {"tool_calls": [{"index": channel[2], "function": {"arguments": rest}}]}
                choice: dict[str, Any] = {"index": channel[0], "delta": delta, "finish_reason": None}
            elif kind == "custom":
                delta = {"tool_calls": [{"index": channel[2], "custom": {"input": rest}}]}
                choice = {"index": channel[0], "delta": delta, "finish_reason": None}
            elif kind == "function":
                choice = {"index": channel[0], "delta": {"function_call": {"arguments": rest}}, "finish_reason": None}
            elif kind == "text":
                choice = {"index": channel[0], "text": rest, "logprobs": None, "finish_reason": None}
            elif kind == "transcript":
                choice = {"index": channel[0], "delta": {"audio": {"transcript": rest}}, "finish_reason": None}
            else:
                choice = {"index": channel[0], "delta": {kind: rest}, "finish_reason": None}
            head = {key: value for key, value in (chunk or {}).items() if key not in ("choices", "usage")}
            out.append(_event({**head, "choices": [choice]}))
        return out


# A streamed delta's plain text fields, each a channel of its own: the reasoning first, as it comes.
_DELTA_TEXTS = (*REASONING, "content", "refusal")


def _carried(index: Any, delta: dict[str, Any]) -> set[tuple[Any, ...]]:
    """The channels of choice ``index`` a chunk's delta speaks in: its text, its refusal, each tool
    call it names (its first chunk, with the call's name, carries no arguments yet), the legacy call."""
    carried: set[tuple[Any, ...]] = {(index, field) for field in _DELTA_TEXTS
                                     if isinstance(delta.get(field), str) and delta[field]}
    for call in delta.get("tool_calls") or ():
        if isinstance(call, dict):
            carried.add((index, "custom" if _custom(call) else "tool", call.get("index", 0)))
    if isinstance(delta.get("function_call"), dict):
        carried.add((index, "function"))
    audio = delta.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("transcript"), str) and audio["transcript"]:
        carried.add((index, "transcript"))
    return carried


def _custom(call: Any) -> bool:
    """Whether a streamed tool call is a custom tool's (``custom.input``, free text), not a function's."""
    return isinstance(call, dict) and isinstance(call.get("custom"), dict)


def _clear(choice: dict[str, Any], own: dict[tuple[Any, ...], str]) -> None:
    """Remove from a finishing choice the text that moved to the chunk before it."""
    for channel in own:
        if channel[1] == "text":
            choice["text"] = ""
            continue
        delta = choice["delta"]
        if channel[1] in ("tool", "custom"):
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict) and call.get("index", 0) == channel[2]:
                    if channel[1] == "custom":
                        call["custom"]["input"] = ""
                    else:
                        call["function"]["arguments"] = ""
        elif channel[1] == "function":
            delta["function_call"]["arguments"] = ""
        elif channel[1] == "transcript":
            delta["audio"]["transcript"] = ""
        else:
            delta[channel[1]] = ""
