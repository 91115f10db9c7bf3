"""Where text lives in Anthropic's Messages (and ``count_tokens``), and its streams."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ext_proc.llm.sse import SSEEvent

from .base import (
    METADATA,
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
    _identifier,
    _strings,
)

_TOOL_INPUT = ("input_json_delta", "partial_json", True)
_BLOCK_FIELDS = {"text": ("text_delta", "text", False), "tool_use": _TOOL_INPUT, "server_tool_use": _TOOL_INPUT,
                 "mcp_tool_use": _TOOL_INPUT, "thinking": ("thinking_delta", "thinking", False)}
_DELTA_FIELDS = {"text_delta": ("text", False), "input_json_delta": ("partial_json", True),
                 "thinking_delta": ("thinking", False)}
# Deltas of a block that carry no text of it: the text it holds goes out before them (a signature
# is its block's last delta, by Anthropic's contract).
_MARKS = frozenset({"signature_delta", "citations_delta"})
SIGNED = frozenset({"thinking_delta"})  # deltas of a signed block: pseudonyms are not put back there


class MessagesWalker(Walker):
    """``/v1/messages``: ``system``, every block of every turn (text, tool_use input, tool_result
    content, text documents), ``metadata.user_id``; thinking blocks are signed and left alone."""

    dotted = True

    def request(self, payload: dict[str, Any], definitions: bool = True) -> Iterator[Ref]:
        system = payload.get("system")
        if isinstance(system, list):
            yield from _blocks(system, "system", where="system")
        else:
            yield from _field(payload, "system", "system", "system", "a string or an array of text blocks")
        messages = payload.get("messages")
        for number, message in enumerate(messages if isinstance(messages, list) else ()):
            here = f"messages.{number}"
            if not isinstance(message, dict):
                yield Unread(messages, number, "user", param=here, must="an object")
                continue
            role = "assistant" if message.get("role") == "assistant" else "user"
            content = message.get("content")
            if isinstance(content, list):
                yield from _blocks(content, role, where=f"{here}.content")
            else:
                yield from _field(message, "content", role, f"{here}.content", "a string or an array of blocks")
        metadata = payload.get("metadata")
        if isinstance(metadata, dict):
            yield from _identifier(metadata, "user_id", "metadata.user_id")
        elif metadata is not None:
            yield Unread(payload, "metadata", METADATA, param="metadata", must="an object")
        if definitions:
            yield from self.definitions(payload)

    def definitions(self, payload: dict[str, Any]) -> Iterator[Ref]:
        tools = payload.get("tools")  # the developer's definitions the model reads (.base.DEFINITION)
        for tool in tools if isinstance(tools, list) else ():
            yield from _definition(tool, ("description", "input_schema"))
        config = payload.get("output_config")
        yield from _definition(config.get("format") if isinstance(config, dict) else None, ("schema",))
        yield from _definition(payload.get("output_format"), ("schema",))

    def defined(self, payload: dict[str, Any]) -> list[Any]:
        if "tools" in payload or "output_config" in payload or "output_format" in payload:
            return [payload.get("tools"), payload.get("output_config"), payload.get("output_format")]
        return []

    def answer(self, payload: dict[str, Any], json_output: bool = False) -> Iterator[Ref]:
        content = payload.get("content")
        if isinstance(content, list):
            yield from _blocks(content, "assistant", answer=True, json_output=json_output)

    def stream(self, json_output: bool = False) -> StreamTexts:
        return MessagesStream(json_output)

    def asks_json(self, payload: dict[str, Any]) -> bool:
        """Structured outputs: ``output_config.format`` (or the older ``output_format``) ``json_schema``."""
        config = payload.get("output_config")
        fmt = config.get("format") if isinstance(config, dict) else None
        if fmt is None:
            fmt = payload.get("output_format")
        return isinstance(fmt, dict) and fmt.get("type") == "json_schema"


def _blocks(blocks: list[Any], role: str, answer: bool = False, json_output: bool = False,
            where: str = "content") -> Iterator[Ref]:
    """The text of Messages content blocks. A thinking block is read in an answer (what the client
    is shown) and not in a request, where the provider checks its signature and refuses it changed;
    so an answer's thinking keeps its placeholders (:data:`SIGNED`): restored, the client would give
    the value back in clear with the block, and the block would no longer match its signature (a
    compaction block's summary alike). A server or MCP tool's input is read as a tool input is, its
    result (:data:`_RESULTS`: what a web search or fetch found, what code printed, an MCP server's
    answer) as a tool result is; a block of a type not known here is read in every string but its
    ids, names and opaque payloads (:func:`_unknown`), never passed on unread.
    ``json_output``: an answer's text blocks are JSON text. A text of a type no block has is
    :class:`Unread` (``where``: the blocks' place, for the error)."""
    for number, block in enumerate(blocks):
        here = f"{where}.{number}"
        if not isinstance(block, dict):
            yield Unread(blocks, number, role, param=here, must="an object (a content block)")
            continue
        kind = block.get("type")
        if kind == "text":
            yield from _field(block, "text", role, f"{here}.text", json_text=json_output)
            yield from _citations(block.get("citations"), role)
        elif kind in _TOOL_USES:
            yield from _strings(block.get("input"), role)
        elif kind == "tool_result" or kind == "mcp_tool_result":
            content = block.get("content")
            if isinstance(content, list):
                yield from _blocks(content, "tool", where=f"{here}.content")
            else:
                yield from _field(block, "content", "tool", f"{here}.content", "a string or an array of blocks")
        elif kind in _RESULTS:
            content = block.get("content")
            for result in content if isinstance(content, list) else (content,):
                yield from _result(result)
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
        elif kind in _SIGNED_BLOCKS:
            field = _SIGNED_BLOCKS[kind]
            if answer and isinstance(block.get(field), str):
                yield Ref(block, field, role, restore=False)  # given back as signed: placeholders stay
        elif kind not in _NO_TEXT:
            yield from _unknown(block, "tool" if str(kind).endswith("_result") else role)


_TOOL_USES = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})  # an ``input`` object each
# Server tools' results: their ``content`` is a result object, its error, or a list of results.
_RESULTS = frozenset({"web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                      "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
                      "tool_search_tool_result", "advisor_tool_result"})
# The text fields of each result object (a string or an array of strings); an error's is its message.
_RESULT_FIELDS = {"web_search_result": ("title", "url"), "web_fetch_result": ("url",),
                  "code_execution_result": ("stdout", "stderr"), "bash_code_execution_result": ("stdout", "stderr"),
                  "encrypted_code_execution_result": ("stderr",), "advisor_result": ("text",),
                  "text_editor_code_execution_view_result": ("content",),
                  "text_editor_code_execution_str_replace_result": ("lines",),
                  "text_editor_code_execution_create_result": (), "tool_search_tool_search_result": (),
                  "advisor_redacted_result": ()}
# Blocks the provider signs: read in an answer (their field), left alone in a request.
_SIGNED_BLOCKS = {"thinking": "thinking", "compaction": "content"}
# Blocks with no text: an image, encrypted thinking, a file, a tool named, a model switched.
_NO_TEXT = frozenset({"image", "redacted_thinking", "container_upload", "tool_reference", "fallback",
                      "tool_removal"})
# What a block of a type not known here holds that is no text: ids, names, states, opaque payloads.
_OPAQUE = frozenset({"type", "id", "tool_use_id", "signature", "encrypted_content", "encrypted_index",
                     "encrypted_stdout", "file_id", "media_type", "cache_control", "caller", "name", "server_name",
                     "mcp_server_name", "tool_name", "error_code", "stop_reason", "page_age", "retrieved_at",
                     "file_type", "model"})
_DEPTH = 16


def _result(result: Any) -> Iterator[Ref]:
    """The texts of a server tool's result object (:data:`_RESULT_FIELDS`; a fetched page's document)."""
    if not isinstance(result, dict):
        return
    kind = str(result.get("type"))
    fields = _RESULT_FIELDS.get(kind, ("error_message",) if kind.endswith("_error") else None)
    if fields is None:
        yield from _unknown(result, "tool")
        return
    for field in fields:
        value = result.get(field)
        if isinstance(value, str):
            yield Ref(result, field, "tool")
        elif isinstance(value, list):
            yield from (Ref(value, number, "tool") for number, line in enumerate(value) if isinstance(line, str))
    document = result.get("content") if kind == "web_fetch_result" else None
    if isinstance(document, dict):
        yield from _blocks([document], "tool")


def _unknown(node: Any, role: str, depth: int = 0) -> Iterator[Ref]:
    """Every string of a block of a type not known here, but :data:`_OPAQUE` fields, a base64
    source's data and data URLs (as a Responses built-in tool's item is read)."""
    if depth > _DEPTH:
        return
    pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    base64 = isinstance(node, dict) and node.get("type") == "base64"
    for key, item in pairs:
        if isinstance(key, str) and (key in _OPAQUE or (base64 and key == "data")):
            continue
        if isinstance(item, str):
            if item and not item.startswith("data:"):
                yield Ref(node, key, role)
        elif isinstance(item, (dict, list)):
            yield from _unknown(item, role, depth + 1)


_CITED = ("cited_text", "document_title", "title")  # what a citation quotes and names


def _citations(citations: Any, role: str) -> Iterator[Ref]:
    for citation in citations if isinstance(citations, list) else ():
        for field in _CITED:
            if isinstance(citation, dict) and isinstance(citation.get(field), str):
                yield Ref(citation, field, role)



class MessagesStream(StreamTexts):
    """Anthropic events: each content block is a channel (text deltas, tool input JSON deltas,
    thinking deltas, whose pseudonyms stay placeholders); ``content_block_stop`` closes it,
    ``message_stop`` any left open. ``json_output``: text blocks are JSON text."""

    __slots__ = ("json", "open")

    def __init__(self, json_output: bool = False) -> None:
        self.open: dict[tuple[Any, ...], tuple[str, str, bool]] = {}  # channel -> (delta type, field, json)
        self.json = json_output

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn,
             echo: EchoFn | None = None) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in events:
            if not event.data:
                out.append(event)
                continue
            # The event's kind is its JSON ``type``, as a client reads it (the SDK, and any raw
            # reader), not its SSE name, which a provider (or a proxy) may name otherwise
            # (``event: message_delta`` carrying a text delta): the name only when there is no type.
            payload = event.json()
            kind = payload.get("type") if payload is not None else None
            name = kind if isinstance(kind, str) else event.event
            if name not in _GUARDED and event.event in _GUARDED:  # a reader going by the name reads it so
                name = event.event
            if name == "error" and payload is not None and _error_message(payload.get("error"), echo):
                out.append(_event(payload, event.event, like=event))  # its message may quote the answer
                continue
            if payload is None or name not in _GUARDED:
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
                    if shape[0] == "text_delta" and self.json:
                        shape = (shape[0], shape[1], True)
                    self.open[channel] = shape
                    assert isinstance(block, dict)
                    field = shape[1] if shape[1] != "partial_json" else ""
                    if field and isinstance(block.get(field), str) and block[field]:
                        new = text(channel, block[field], shape[2], shape[0] not in SIGNED)
                        changed = new != block[field]
                        block[field] = new
                    elif not field and block.get("input"):  # a tool's input given whole at its start
                        changed = _at_once(_strings(block["input"], "assistant"), channel, text, flush)
                elif isinstance(block, dict):  # a block given whole: a server tool's result, an MCP result
                    changed = _at_once(_blocks([block], "assistant", answer=True), channel, text, flush)
            elif name == "content_block_delta":
                delta = payload.get("delta")
                if isinstance(delta, dict) and delta.get("type") in _MARKS and channel in self.open:
                    # A block's signature is its last delta (and a citation comes before the text it
                    # cites): what the block's text holds goes out first, the block left open.
                    out += self._close(channel, flush, keep=True)
                shape2 = _DELTA_FIELDS.get(str(delta.get("type"))) if isinstance(delta, dict) else None
                if shape2 is not None and isinstance(delta, dict) and isinstance(delta.get(shape2[0]), str):
                    field, json_text = shape2
                    json_text = json_text or (self.json and delta["type"] == "text_delta")
                    self.open.setdefault(channel, (delta["type"], field, json_text))
                    value = delta[field]
                    new = text(channel, value, json_text, delta["type"] not in SIGNED)
                    if new != value:
                        delta[field] = new
                        changed = True
                elif isinstance(delta, dict) and delta.get("type") == "citations_delta":  # whole in one event
                    changed = _at_once(_citations([delta.get("citation")], "assistant"), channel, text, flush)
                elif isinstance(delta, dict) and delta.get("type") == "compaction_delta":  # whole, signed
                    summary = [Ref(delta, "content", "assistant", restore=False)] \
                        if isinstance(delta.get("content"), str) else []
                    changed = _at_once(iter(summary), channel, text, flush)
            else:  # content_block_stop
                out += self._close(channel, flush)
            out.append(_event(payload, name if event.event else "", like=event) if changed else event)
        return out

    def _close(self, channel: tuple[Any, ...] | None, flush: FlushFn, keep: bool = False) -> list[SSEEvent]:
        """Deltas carrying what the closing channel (None: every one) still holds; ``keep``: the
        channel stays open (a signature or citation delta of its block comes next)."""
        out = []
        for key in [k for k in self.open if channel is None or k == channel]:
            kind, field, json_text = self.open[key] if keep else self.open.pop(key)
            rest = flush(key, json_text)
            if rest:
                out.append(_event({"type": "content_block_delta", "index": key[0],
                                   "delta": {"type": kind, field: rest}}, "content_block_delta"))
        return out


_GUARDED = ("content_block_start", "content_block_delta", "content_block_stop", "message_stop")  # the kinds read
