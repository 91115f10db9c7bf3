"""Where text lives in OpenAI's Responses API, and its streams (see the package docstring)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ext_proc.llm.apis.responses import stored_state
from ext_proc.llm.sse import SSEEvent

from .base import (
    EchoFn,
    FlushFn,
    Ref,
    StreamTexts,
    TextFn,
    Unread,
    Walker,
    _definition,
    _error_message,
    _event,
    _field,
    _identifiers,
)
from .openai import _json_format

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class ResponsesWalker(Walker):
    """``/v1/responses``: ``instructions``, ``input`` (a string, or items: messages, function and custom
    tool calls and their outputs, built-in tools' calls and outputs: shell, MCP, file search, code
    interpreter...), a stored prompt's ``variables``, the identifiers and ``metadata``; the answer's
    ``output`` items, and what the answer's ``response`` object echoes of the request
    (``instructions``, the prompt's ``variables``, the identifiers and ``metadata``)."""

    def request(self, payload: dict[str, Any], definitions: bool = True) -> Iterator[Ref]:
        yield from _instructions(payload)
        given = payload.get("input")
        if isinstance(given, str):
            yield Ref(payload, "input", "user")
        elif isinstance(given, list):
            yield from _input_items(given, "user")
        yield from _variables(payload)
        yield from _identifiers(payload)
        if definitions:
            yield from self.definitions(payload)

    def definitions(self, payload: dict[str, Any]) -> Iterator[Ref]:
        tools = payload.get("tools")  # the developer's definitions the model reads (.base.DEFINITION)
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, dict) and tool.get("type") in ("function", "custom"):  # not an MCP server's headers
                yield from _definition(tool, ("description", "parameters", "format"))
        text = payload.get("text")
        yield from _definition(text.get("format") if isinstance(text, dict) else None, ("description", "schema"))

    def defined(self, payload: dict[str, Any]) -> list[Any]:
        text = payload.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        return [payload.get("tools"), fmt] if "tools" in payload or fmt is not None else []

    def answer(self, payload: dict[str, Any], json_output: bool = False) -> Iterator[Ref]:
        output = payload.get("output")
        for index, item in enumerate(output if isinstance(output, list) else ()):
            for channel, container, key, json_text in _item_texts(item, index, json_output):
                yield Ref(container, key, "assistant", json_text, restore=_restores(channel),
                          anchored=_cited(container) if channel[1] == "text" else None)

    def echoed(self, payload: dict[str, Any]) -> Iterator[Ref]:
        yield from _echoes(payload)

    def stream(self, json_output: bool = False) -> StreamTexts:
        return ResponsesStream(json_output)

    def asks_json(self, payload: dict[str, Any]) -> bool:
        text = payload.get("text")
        return isinstance(text, dict) and _json_format(text.get("format"))

    def continues_stored(self, payload: dict[str, Any]) -> bool:
        return stored_state(payload) is not None


def _instructions(payload: dict[str, Any]) -> Iterator[Ref]:
    """``instructions`` of a request, or as a ``response`` object echoes them: a string or input items."""
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        yield Ref(payload, "instructions", "system")
    elif isinstance(instructions, list):
        yield from _input_items(instructions, "system", "instructions")


def _echoes(response: dict[str, Any]) -> Iterator[Ref]:
    """What a ``response`` object repeats of its request: ``instructions``, the prompt's
    ``variables``, the identifiers and ``metadata``."""
    yield from _instructions(response)
    yield from _variables(response)
    yield from _identifiers(response)


def _variables(payload: dict[str, Any]) -> Iterator[Ref]:
    """A stored prompt's string ``variables`` (of a request, or as a ``response`` object echoes them)."""
    prompt = payload.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if isinstance(variables, dict):
        for name, value in variables.items():
            here = f"prompt.variables.{name}"[:100]
            if isinstance(value, dict):  # an input item: text, an image, a file
                yield from _field(value, "text", "user", f"{here}.text")
            else:
                yield from _field(variables, name, "user", here, "a string or an input content item")


def _input_items(items: list[Any], role: str, where: str = "input") -> Iterator[Ref]:
    """The texts of input items (``where``: the field holding them, for the error of an
    :class:`Unread` place: a call's ``arguments`` that are not a string, an item that is no object)."""
    for number, item in enumerate(items):  # (an error's place is spelled out only for the error)
        if not isinstance(item, dict):
            yield Unread(items, number, role, param=f"{where}[{number}]", must="an object (an input item)")
            continue
        kind = item.get("type", "message")
        if kind == "message":
            speaker = _ROLES.get(str(item.get("role")), role)
            content = item.get("content")
            if isinstance(content, str):
                yield Ref(item, "content", speaker)
            elif isinstance(content, list):
                yield from _parts(content, speaker, where, number, "content")
            elif content is not None:
                yield Unread(item, "content", speaker, param=f"{where}[{number}].content",
                             must="a string or an array of content parts")
            continue
        here = f"{where}[{number}]"
        if kind == "function_call":
            yield from _field(item, "arguments", "assistant", f"{here}.arguments", "a string (of JSON)", json_text=True)
        elif kind == "custom_tool_call":
            yield from _field(item, "input", "assistant", f"{here}.input")
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            if isinstance(output, list):  # input_text, input_image, input_file items
                yield from _parts(output, "tool", where, number, "output")
            else:
                yield from _field(item, "output", "tool", f"{here}.output", "a string or an array of content items")
        elif kind not in _NO_TEXT:  # a built-in tool's call or output (shell, MCP, file search, code...)
            for path, container, key, json_text in _leaves(item, ()):
                yield Ref(container, key, "tool" if _from_tool(kind, path[0]) else "assistant", json_text)


def _parts(parts: list[Any], role: str, where: str, item: int, field: str) -> Iterator[Ref]:
    """The texts of an input item's content parts (``where[item].field``: their place, for an error)."""
    for number, part in enumerate(parts):
        if not isinstance(part, dict):
            yield Unread(parts, number, role, param=f"{where}[{item}].{field}[{number}]",
                         must="an object (a content part)")
            continue
        text = part.get("text")
        if isinstance(text, str):
            yield Ref(part, "text", role)
        elif text is not None:
            yield Unread(part, "text", role, param=f"{where}[{item}].{field}[{number}].text", must="a string")
        elif part.get("refusal") is not None:
            yield from _field(part, "refusal", role, f"{where}[{item}].{field}[{number}].refusal")


# Where an output item keeps its text, by channel: (output index, kind[, part index]).
_PART_KINDS = {"output_text": ("text", "text"), "refusal": ("refusal", "refusal"),
               "reasoning_text": ("reasoning", "text")}
# The channels of a reasoning item (its summary, its reasoning text): the client gives the item back
# in ``input`` as it came (stateless, with its ``encrypted_content``), and the request's walker
# leaves reasoning items alone; so their pseudonyms are not put back, or the value would go back to
# the provider in clear. (OpenAI does not feed a summary given back to the model: it reads the
# encrypted reasoning, or the stored item.)
_GIVEN_BACK = frozenset({"summary", "reasoning"})


def _restores(channel: tuple[Any, ...]) -> bool:
    """Whether the pseudonyms of a channel's text are put back (not in a reasoning item's)."""
    return channel[1] not in _GIVEN_BACK


def _item_texts(item: Any, index: Any, json_output: bool = False) -> Iterator[tuple[tuple[Any, ...], Any, str, bool]]:
    """(channel, container, key, json_text) of each text of an output item (``json_output``: its
    output text is JSON text)."""
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "message" or kind == "reasoning":
        for number, part in enumerate(item.get("content") or ()):
            shape = _PART_KINDS.get(str(part.get("type"))) if isinstance(part, dict) else None
            if shape is not None and isinstance(part.get(shape[1]), str):
                yield (index, shape[0], number), part, shape[1], json_output and shape[0] == "text"
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
    elif kind not in _NO_TEXT and kind is not None:  # a built-in tool's call or output
        for path, container, key, json_text in _leaves(item, ()):
            channel = _BUILTIN_CHANNELS.get((kind, path), (index, "tool", *path))
            yield (index, *channel[1:]), container, key, json_text


# Output items with no text of a built-in tool's (handled above, or none at all).
_NO_TEXT = frozenset({"message", "reasoning", "function_call", "custom_tool_call", "function_call_output",
                      "custom_tool_call_output", "item_reference", "image_generation_call"})
# What a built-in tool item holds that is no text to guard: names, ids, states, opaque payloads.
_STRUCTURAL = frozenset({"type", "id", "call_id", "status", "server_label", "approval_request_id", "name", "role",
                         "encrypted_content", "result", "file_id", "container_id", "signature", "vector_store_ids"})
_JSON_TEXT = frozenset({"arguments"})  # MCP calls' arguments: JSON in a string
_DEPTH = 16
# The built-in tool texts an answer streams in deltas: their channel, shared by the deltas and the
# item's repetitions (others come whole, in the item).
_BUILTIN_CHANNELS = {("mcp_call", ("arguments",)): (0, "arguments"),
                     ("code_interpreter_call", ("code",)): (0, "code")}
_TOOL_RESULTS = frozenset({"output", "outputs", "results", "logs", "error"})


def _from_tool(kind: str, path_key: Any) -> bool:
    """Whether a built-in tool item's text is the tool's (scored as a tool's result), not the model's."""
    return kind.endswith("_output") or kind == "mcp_list_tools" or path_key in _TOOL_RESULTS


def _leaves(node: Any, path: tuple[Any, ...], depth: int = 0) -> Iterator[tuple[tuple[Any, ...], Any, Any, bool]]:
    """(path, container, key, json_text) of each string in a built-in tool item, but the structural
    fields and data URLs; the path's first key decides a text's role (:func:`_from_tool`)."""
    if depth > _DEPTH:
        return
    pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in pairs:
        if isinstance(key, str) and key in _STRUCTURAL:
            continue
        if isinstance(value, str):
            if value and not value.startswith("data:"):
                yield (*path, key), node, key, depth == 0 and key in _JSON_TEXT
        elif isinstance(value, (dict, list)):
            yield from _leaves(value, (*path, key), depth + 1)


def _cited(part: dict[str, Any]) -> list[dict[str, Any]] | None:
    """An output text part's annotations: their ``start_index``/``end_index`` (a URL or container
    file citation) or ``index`` (a file citation, a file path) point into its text."""
    annotations = part.get("annotations")
    cited = [annotation for annotation in annotations if isinstance(annotation, dict)] \
        if isinstance(annotations, list) else []
    return cited or None


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
    "response.mcp_call_arguments.delta": ("arguments", "", True),
    "response.code_interpreter_call_code.delta": ("code", "", False),
}
_R_DONE = {
    "response.output_text.done": ("text", "content_index", "text"),
    "response.refusal.done": ("refusal", "content_index", "refusal"),
    "response.reasoning_text.done": ("reasoning", "content_index", "text"),
    "response.reasoning_summary_text.done": ("summary", "summary_index", "text"),
    "response.function_call_arguments.done": ("arguments", "", "arguments"),
    "response.custom_tool_call_input.done": ("input", "", "input"),
    "response.mcp_call_arguments.done": ("arguments", "", "arguments"),
    "response.code_interpreter_call_code.done": ("code", "", "code"),
}
_R_PARTS = {"response.content_part.added", "response.content_part.done", "response.reasoning_summary_part.added",
            "response.reasoning_summary_part.done"}
_R_WHOLE = {"response.completed", "response.incomplete", "response.failed"}
# The events carrying the whole ``response`` object, which echoes the request's instructions
_R_RESPONSE = _R_WHOLE | {"response.created", "response.in_progress", "response.queued"}


class ResponsesStream(StreamTexts):
    """Responses events: each output item's text part, refusal, summary part or call arguments is a
    channel (a reasoning item's keep their placeholders: :func:`_restores`); its ``*.done`` event
    closes it, ``response.output_item.done`` any left open in the item, the terminal event all. The
    repetitions of the text are rewritten to what went out, and the events renumbered when an event
    was added (see the module docstring). The request's texts each ``response`` object echoes
    (``instructions``, ``metadata``...: :func:`_echoes`) are guarded whole, once per distinct text.
    ``json_output``: output text is JSON text."""

    __slots__ = ("done", "echoes", "json", "open", "sent")

    def __init__(self, json_output: bool = False) -> None:
        self.open: dict[tuple[Any, ...], dict[str, Any]] = {}  # channel -> the head of its delta events
        self.sent: dict[tuple[Any, ...], list[str]] = {}  # channel -> the text it sent so far
        self.done: dict[tuple[Any, ...], str] = {}  # closed channel -> all the text it sent
        self.echoes: dict[tuple[str, bool], str] = {}  # an echoed text (and json_text) -> what goes out
        self.json = json_output
        self.sequence = 0

    def _json(self, kind: str) -> bool:
        """Whether a channel of this kind holds JSON text."""
        return kind == "arguments" or (self.json and kind == "text")

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn,
             echo: EchoFn | None = None) -> list[SSEEvent]:
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
                json_text = json_text or self._json(channel_kind)
                channel = _channel(payload, channel_kind, part)
                value = payload["delta"]
                if channel not in self.open:  # what an added delta of this channel repeats
                    head = self.open[channel] = {key: payload[key] for key in payload
                                                 if key not in ("delta", "sequence_number", "logprobs", "obfuscation")}
                    if "sequence_number" in payload:
                        head["sequence_number"] = -1  # numbered on the way out
                new = text(channel, value, json_text, _restores(channel))
                self.sent.setdefault(channel, []).append(new)
                if new != value:
                    payload["delta"] = new
                    _no_logprobs(payload)
                    changed = True
            elif done is not None:
                channel_kind, part, field = done
                channel = _channel(payload, channel_kind, part)
                out += self._close([channel], flush)
                changed = self._final(payload, field, channel, text, flush, self._json(channel_kind))
            elif kind in _R_PARTS or kind.startswith("response.output_item."):
                closing = kind.endswith(".done")
                container = payload.get("part") if kind in _R_PARTS else payload.get("item")
                index = payload.get("output_index")
                if kind in _R_PARTS:  # one part: as an item holding only it, at its place
                    number = payload.get("summary_index" if "summary" in kind else "content_index")
                    texts = [((index, channel[1], number, *channel[3:]), c, k, j)
                             for channel, c, k, j in _item_texts(_as_item(kind, container), index, self.json)]
                else:
                    texts = list(_item_texts(container, index, self.json))
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
                    for channel, holder, key, json_text in _item_texts(item, index, self.json):
                        changed |= self._final(holder, key, channel, text, flush, json_text)
                if isinstance(response, dict):  # response.failed: its error may quote the answer
                    changed |= _error_message(response.get("error"), echo)
            elif kind == "error":  # the provider's error event (its message, or an error object's)
                changed = _error_message(payload, echo) | _error_message(payload.get("error"), echo)
            if kind in _R_RESPONSE and echo is not None and isinstance(payload.get("response"), dict):
                changed |= self._echoed(payload["response"], echo)
            out.append(_event(payload, event.event, like=event) if changed else event)
        return self._numbered(out)

    def _echoed(self, response: dict[str, Any], echo: EchoFn) -> bool:
        """The request's texts a ``response`` object repeats, as guarded the first time they came."""
        changed = False
        for ref in list(_echoes(response)):
            value = ref.get()
            if not value:
                continue
            new = self.echoes.get((value, ref.json_text))
            if new is None:
                new = self.echoes[(value, ref.json_text)] = echo(value, ref.json_text)
            if new != value:
                ref.set(new)
                changed = True
        return changed

    def _added(self, holder: Any, key: str, channel: tuple[Any, ...], text: TextFn, json_text: bool) -> bool:
        """An added item or part that already holds text (OpenAI's are empty): the start of its channel."""
        value = holder[key]
        if not value:
            return False
        self.open.setdefault(channel, {})
        new = text(channel, value, json_text, _restores(channel))
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
            final = self.done[channel] = text(channel, value, json_text, _restores(channel)) + flush(channel, json_text)
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
            json_text = self._json(channel[1])
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
