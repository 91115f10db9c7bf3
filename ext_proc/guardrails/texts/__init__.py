"""Where text lives in each wire API: requests, JSON answers and streamed answers.

Theory of operation. Guardrails read and rewrite text without knowing any wire format: a
:class:`Walker` per wire API (registered in :data:`WALKERS` by the API's name) lists the text of
a decoded request or answer as :class:`Ref` values, each a place (a container and a key) that can
be read and replaced in the decoded JSON, with the role it speaks for (``user``, ``system``,
``assistant``, ``tool``) and whether the string holds JSON text (tool-call arguments, and the
answer's text when the request asks for JSON: :meth:`Walker.asks_json`, read on the client's
request and given to the served API's walker as ``json_output``), so a value replaced outside a
string becomes a string and a restored value is escaped for it. :meth:`Walker.echoed` lists what an
answer repeats of the request (the ``instructions`` of a Responses ``response`` object), and
:meth:`Walker.continues_stored` whether a request continues a conversation the provider stores.
For streamed answers a walker makes a :class:`StreamTexts`: it finds the text deltas of each
event, keyed by *channel* (a choice's content, one tool call's arguments, one Anthropic content
block), hands each to the guard's text function and writes back what comes out; when a channel
closes (a choice's ``finish_reason``, ``content_block_stop``) the text still held for it is sent
in an event of the same kind placed just before the closing one, so the stream keeps the shape
the client's SDK (and Tollway's translators) expect.

Covered: chat completions (every message role, string or part content, tool calls (a
function's arguments, a custom tool's input) and tool results, refusals, ``prediction``; the
answer's legacy ``function_call``, URL citations and an audio answer's ``transcript``, which
may not change: :attr:`Ref.fixed`), completions (``prompt``, ``suffix``),
embeddings (``input``), Messages and ``count_tokens``
(``system``, every content block: text and its citations, ``tool_use`` input, ``tool_result``
content, documents' text, title and context, search results, server and MCP tools' inputs and
results, a block of a type not known read in its strings; an answer's thinking and compaction
summary, where pseudonyms are not put back: :attr:`Ref.restore`), the Responses
API (``instructions``, ``input`` items: messages and their text parts, function and custom tool
calls and their outputs; a stored prompt's string ``variables``; the answer's ``output`` items:
message text, its citations and refusals, call arguments, reasoning summaries and text, where
pseudonyms are not put back either: :attr:`Ref.restore`); and in OpenAI's APIs the
request's identifiers (``user``, ``safety_identifier``, ``prompt_cache_key``) and ``metadata``'s
values (Messages: ``metadata.user_id``), no text for the model but sent to the provider: spoken
by :data:`METADATA`, guarded as users' text (the identifiers proper as :class:`Identifier`: one
changed goes out as its keyed digest, whole), not scored for injection (a Responses ``response``
object echoes them, put back as ``instructions`` are); and the definitions the model reads, spoken
by :data:`DEFINITION` (the developer's text: read under the instructions' rules, not scored for
injection): tools' descriptions and
parameter schemas (chat ``tools`` and ``functions``, Messages ``tools``, Responses function and
custom ``tools``) and structured outputs' schemas (chat ``response_format.json_schema``, Responses
``text.format``, Messages ``output_config.format``), a schema read in its string values only. A tool input's
JSON is read in its strings, long integers and keys that are not plain names. Thinking blocks and
reasoning items given back in a request are left alone: the provider signs or encrypts them and
refuses them changed. A text with token log probabilities names the object that holds them
(:attr:`Ref.scrub`): they spell the text out, and are dropped where it changed. Adding a wire
API is one more walker class (a module per API family: :mod:`.openai`, :mod:`.anthropic`,
:mod:`.responses`; what they share in :mod:`.base`) and one line in :data:`WALKERS`; a request
whose API has no walker is refused while guardrails apply to it, and so is a request holding, where
a walker reads text, a JSON type it does not read (an object for a call's ``arguments``, a number in
``user``): the walker yields an :class:`Unread` place there, and the guard refuses the request
(:class:`Unreadable`: a 400 ``invalid_type`` naming the field) rather than send it on unread, when
its plan reads that place (:meth:`~ext_proc.guardrails.guard.Guard.prompt`). ``metadata``'s values
are read in their strings whatever their type.

A Responses stream repeats its text: the deltas, then the ``*.done`` event of the channel, the
``response.content_part.done`` and ``response.output_item.done`` events, and the whole
``response`` of ``response.completed``. :class:`ResponsesStream` rewrites every repetition to the
text that actually went out in the deltas (so no original value leaks there, and a pseudonym
restored in the deltas is restored there too), and numbers the events again from where an added
event (the held text of a closing channel) shifted them, so ``sequence_number`` stays gapless.
The ``response`` of ``response.created``, ``.in_progress`` and the terminal event also echoes the
request's ``instructions`` (as the provider received them): each distinct echoed text is guarded
once, whole (the guard's echo function), and carried the same in every event. A provider's error
inside any stream (chat's ``error`` chunk, Anthropic's and Responses' ``error`` events, a failed
response's ``error``) may quote the answer: its ``message`` goes through the echo function too.
"""

from __future__ import annotations

from .anthropic import MessagesStream, MessagesWalker
from .base import DEFINITION, METADATA, FlushFn, Identifier, Ref, StreamTexts, TextFn, Unread, Unreadable, Walker
from .openai import ChatWalker, CompletionsWalker, EmbeddingsWalker, OpenAIStream
from .responses import ResponsesStream, ResponsesWalker

__all__ = ["DEFINITION", "METADATA", "WALKERS", "ChatWalker", "CompletionsWalker", "EmbeddingsWalker", "FlushFn",
           "Identifier", "MessagesStream",
           "MessagesWalker", "OpenAIStream", "Ref", "ResponsesStream", "ResponsesWalker", "StreamTexts",
           "TextFn", "Unread", "Unreadable", "Walker", "walker"]

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
