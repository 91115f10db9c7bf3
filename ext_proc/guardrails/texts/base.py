"""What the wire APIs' text walkers share: a place of text (:class:`Ref`), the walker and the
stream faces, and the pieces every stream uses (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson

from ext_proc.llm.sse import SSEEvent
from ext_proc.values import value


class TextFn(Protocol):
    """(channel, text, json_text) -> the text to send now (the guard may hold some back);
    ``restore=False``: the channel's pseudonyms stay placeholders (a signed thinking block, a
    Responses reasoning item's summary or text); ``fixed``: the text may not change (an audio
    answer's transcript, :attr:`Ref.fixed`), a rule that would change it refuses the answer."""

    def __call__(self, key: tuple[Any, ...], text: str, json_text: bool, restore: bool = True,
                 fixed: bool = False) -> str: ...


# (channel, json_text) -> the text held back for a channel that closes now (restored as its text was)
FlushFn = Callable[[tuple[Any, ...], bool], str]
# (text, json_text) -> a text of the request the answer repeats (Responses' instructions), guarded whole
EchoFn = Callable[[str, bool], str]


@value
class Ref:
    """One string in decoded JSON: ``container[key]``, spoken by ``role``; ``scrub``: the object
    whose ``logprobs`` spell this text out token by token, dropped (``null``) when the text changes;
    ``restore``: whether pseudonyms are put back in it (an answer's text; not a signed thinking
    block nor a reasoning item, which the client gives back as it is and the request walker leaves
    alone); ``fixed``: the text says what the answer also gives in a form the guard cannot rewrite
    (an OpenAI audio answer's ``transcript``, of its spoken ``audio.data``), so a rule that would
    change it (redact, mask, pseudonymise) refuses the answer as a ``block`` rule does;
    ``anchored``: the objects whose character indices point into this text (an answer's citations:
    ``start_index``/``end_index``, a file citation's ``index``), moved with it when it changes."""

    container: Any
    key: Any
    role: str
    json_text: bool = False
    scrub: Any = None
    restore: bool = True
    fixed: bool = False
    anchored: Any = None

    def get(self) -> str:
        return self.container[self.key]  # type: ignore[no-any-return]

    def set(self, value: str) -> None:
        self.container[self.key] = value
        if self.scrub is not None and self.scrub.get("logprobs"):
            self.scrub["logprobs"] = None


@value
class Unread(Ref):
    """A place the walker reads as text holding a JSON type it does not read (an object where a
    string belongs): a request with one is refused (:class:`Unreadable`: ``param`` must be
    ``must``), never sent on unread. Its text is empty, so whatever else walks the request (or an
    answer, whose shapes are the provider's) passes over it."""

    param: str = ""
    must: str = ""

    def get(self) -> str:
        return ""

    def set(self, value: str) -> None:
        raise TypeError("an unread place is never written")


class Unreadable(Exception):
    """A request holds a field the guard reads as text, of a type it does not read (:class:`Unread`)."""

    def __init__(self, place: Unread) -> None:
        super().__init__(f"'{place.param}' must be {place.must}.")
        self.param = place.param
        self.message = str(self)


def _field(container: Any, key: Any, role: str, param: str, must: str = "a string",
           json_text: bool = False) -> Iterator[Ref]:
    """``container[key]`` as text: a string, nothing (absent or null), or :class:`Unread`."""
    item = container.get(key) if isinstance(container, dict) else container[key]
    if isinstance(item, str):
        yield Ref(container, key, role, json_text)
    elif item is not None:
        yield Unread(container, key, role, param=param, must=must)


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


# The role of a request's identifiers and metadata (``user``, ``safety_identifier``,
# ``prompt_cache_key``, ``metadata``'s values; Anthropic's ``metadata.user_id``): no text for the
# model, but it reaches the provider (and its logs, its stored responses): guarded by the rules of
# users' text, never scored for prompt injection nor shown as a message in a trace.
METADATA = "metadata"
IDENTIFIERS = ("user", "safety_identifier", "prompt_cache_key")


class Identifier(Ref):
    """A request's identifier of its end user or its cache entry (``user``, ``safety_identifier``,
    ``prompt_cache_key``; Messages' ``metadata.user_id``): the provider tells users (and cache
    routes) apart by it, so a value the rules would change is replaced whole by its keyed digest
    (:meth:`ext_proc.guardrails.guard.Guard.prompt`), one per value, not by a placeholder that
    every user's value would share."""

    __slots__ = ()


def _identifier(container: dict[str, Any], key: str, param: str) -> Iterator[Ref]:
    """``container[key]`` as an :class:`Identifier`: a string, nothing (absent or null), or :class:`Unread`."""
    item = container.get(key)
    if isinstance(item, str):
        yield Identifier(container, key, METADATA)
    elif item is not None:
        yield Unread(container, key, METADATA, param=param, must="a string")


def _identifiers(payload: dict[str, Any]) -> Iterator[Ref]:
    """An OpenAI request's (or a Responses ``response`` object's) identifiers and ``metadata`` values:
    a value that is no string (LiteLLM's and Langfuse's ``tags`` list, a trace object, a number) is
    read in its strings, long integers and keys, as a tool input is (:func:`_strings`)."""
    for field in IDENTIFIERS:
        if payload.get(field) is not None:  # (most requests carry none: no generator for them)
            yield from _identifier(payload, field, field)
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        yield from _strings(metadata, METADATA)
    elif metadata is not None:
        yield Unread(payload, "metadata", METADATA, param="metadata", must="an object")


# The role of a request's definitions for the model (tools' descriptions and parameter schemas, a
# structured output's schema): the developer's text, which reaches the provider and the model, guarded
# by the rules of users' text; not scored for prompt injection (no user wrote it) nor shown as a
# message in a trace.
DEFINITION = "definition"


# The keywords of a JSON schema whose values are the schema's own, not text for the model to read:
# a value the model must answer with (``enum``, ``const``, ``default``, ``examples``), a regex, the
# names of required properties, a format's name. Checked, never rewritten (:class:`Verbatim`).
VERBATIM = frozenset({"enum", "const", "default", "examples", "example", "pattern", "required", "format"})
# The keywords whose objects are keyed by names (a property called ``default`` is no keyword).
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


class Verbatim(Ref):
    """A value a definition's schema holds under a :data:`VERBATIM` keyword: the rules check it (a
    ``block`` rule still refuses the request, a trigger is counted) but never rewrite it, so the
    value the model must answer with stays the value the application reads."""

    __slots__ = ()


def _definition(container: Any, fields: tuple[str, ...]) -> Iterator[Ref]:
    """The given fields of a tool's or a format's definition (``description``, a JSON schema, a
    grammar): a string, or the string values of a JSON value, never its keys nor its numbers, so a
    replaced value leaves the schema a schema (:data:`DEFINITION`); the values of its
    :data:`VERBATIM` keywords are never replaced (:class:`Verbatim`)."""
    if not isinstance(container, dict):
        return
    for field in fields:
        item = container.get(field)
        if isinstance(item, str):
            yield Ref(container, field, DEFINITION)
        elif isinstance(item, (dict, list)):
            yield from _values(item)


def _values(node: Any, verbatim: bool = False, named: bool = False) -> Iterator[Ref]:
    """Every string value of a JSON value, at any depth (keys and numbers left alone); under a
    :data:`VERBATIM` keyword (``verbatim``) as :class:`Verbatim`. ``named``: ``node`` is keyed by
    names (a schema's ``properties``), not keywords."""
    if isinstance(node, dict):
        keywords = not verbatim and not named
        for key, item in node.items():
            here = verbatim or (keywords and key in VERBATIM)
            if isinstance(item, str):
                yield Verbatim(node, key, DEFINITION) if here else Ref(node, key, DEFINITION)
            elif isinstance(item, (dict, list)):
                yield from _values(item, here, keywords and key in _NAMED)
    else:
        for key, item in enumerate(node):
            if isinstance(item, str):
                yield Verbatim(node, key, DEFINITION) if verbatim else Ref(node, key, DEFINITION)
            elif isinstance(item, (dict, list)):
                yield from _values(item, verbatim)


def place(payload: Any, container: Any, key: Any, dotted: bool = False) -> str | None:
    """Where ``container[key]`` is in ``payload``, as an error's ``param`` names it
    (``tools[2].function.description``; ``dotted``: ``tools.2.description``, as Messages errors
    do), ``container`` found by identity; None when it is not there. Only for an error: a walk of
    the whole payload."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(payload, ())]
    while stack:
        node, path = stack.pop()
        if node is container:
            steps = (*path, key)
            if dotted:
                return ".".join(str(step) for step in steps)
            return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in steps).lstrip(".")
        pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend((item, (*path, step)) for step, item in pairs if isinstance(item, (dict, list)))
    return None


_DIGITS = 100_000  # integers from here on are read as text: shorter ones are no identifier's digits


def _strings(node: Any, role: str) -> Iterator[Ref]:
    """Every string leaf of a JSON value (tool inputs), its long integers, and the keys that are not
    plain names (an e-mail address, a number): a key is read after the values it holds, so a
    renamed key never moves a place still to be read."""
    pairs = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, item in pairs:
        if isinstance(item, str):
            yield Ref(node, key, role)
        elif isinstance(item, (dict, list)):
            yield from _strings(item, role)
        elif type(item) is int and abs(item) >= _DIGITS:
            yield _Number(node, key, role)
    if isinstance(node, dict):
        for key in [key for key in node if isinstance(key, str) and not key.isidentifier()]:
            yield _Key(node, key, role)


class StreamTexts:
    """One streamed answer's text deltas, by channel (see the module docstring)."""

    # For an API that numbers its events (Responses): how many events went out so far, after
    # the last whole :meth:`feed` (a client's error event is numbered with it). None: unnumbered.
    sequence: int | None = None

    def feed(self, events: list[SSEEvent], text: TextFn, flush: FlushFn,
             echo: EchoFn | None = None) -> list[SSEEvent]:
        raise NotImplementedError


class Walker:
    """Where one wire API keeps its text. ``json_output``: the request asked for JSON
    (:meth:`asks_json`), so the answer's text is JSON text (see the package docstring).
    ``restores``: the answer has text a pseudonym could come back in (not embeddings' vectors);
    ``dotted``: the API's errors name a place ``tools.2.description`` (:func:`place`)."""

    restores = True
    dotted = False

    def request(self, payload: dict[str, Any], definitions: bool = True) -> Iterator[Ref]:
        """The request's texts; its :meth:`definitions` last (``definitions`` False: not those)."""
        raise NotImplementedError

    def definitions(self, payload: dict[str, Any]) -> Iterator[Ref]:
        """The request's definitions the model reads (:data:`DEFINITION`): tools, output schemas."""
        return iter(())

    def defined(self, payload: dict[str, Any]) -> list[Any]:
        """The JSON values of the request that :meth:`definitions` reads from (the same values: the
        same definitions); empty when it has none."""
        return []

    def answer(self, payload: dict[str, Any], json_output: bool = False) -> Iterator[Ref]:
        return iter(())

    def echoed(self, payload: dict[str, Any]) -> Iterator[Ref]:
        """The request's own texts an answer repeats (Responses: ``instructions``)."""
        return iter(())

    def stream(self, json_output: bool = False) -> StreamTexts:
        raise NotImplementedError

    def asks_json(self, payload: dict[str, Any]) -> bool:
        """Whether the request asks for JSON output (structured outputs, JSON mode)."""
        return False

    def continues_stored(self, payload: dict[str, Any]) -> bool:
        """Whether the request continues a conversation the provider stores (its earlier turns,
        with the placeholders another request gave them, are not in the request)."""
        return False


def _event(data: dict[str, Any], name: str = "", like: SSEEvent | None = None) -> SSEEvent:
    body = orjson.dumps(data)
    raw = (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + body + b"\n\n"
    event = SSEEvent(name, body, raw)
    if like is not None:
        event.usage_only, event.last = like.usage_only, like.last
    event._json = data
    return event


def _error_message(error: Any, echo: EchoFn | None) -> bool:
    """A provider's error inside a stream (an ``error`` event, a failed response's ``error``): its
    ``message`` may quote what the model wrote, so it is guarded as an echo is (the answer's rules,
    uncounted, a ``block`` rule's value replaced); whether it changed."""
    message = error.get("message") if isinstance(error, dict) else None
    if echo is None or not isinstance(message, str) or not message:
        return False
    assert isinstance(error, dict)
    new = echo(message, False)
    if new == message:
        return False
    error["message"] = new
    return True


def _at_once(refs: Iterator[Ref], channel: tuple[Any, ...], text: TextFn, flush: FlushFn) -> bool:
    """Guard texts a stream gives whole in one event (a citation, a tool input at its block's start),
    each as a channel of its own that closes at once (its pseudonyms put back as :attr:`Ref.restore`
    says); whether any changed."""
    changed = False
    key = (*channel, "whole")
    for ref in refs:
        value = ref.get()
        new = text(key, value, ref.json_text, ref.restore) + flush(key, ref.json_text)
        if new != value:
            ref.set(new)
            changed = True
    return changed
