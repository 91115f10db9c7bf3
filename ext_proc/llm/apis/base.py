"""What a wire API is to Tollway: one object per format, everything the gateway must know of it.

A wire API is what an SDK speaks (``POST /v1/chat/completions`` from the ``openai`` SDK,
``POST /v1/messages`` from the ``anthropic`` SDK) and what a provider serves. Tollway meets each
in two roles: as the *client's* API (how to recognise and check a request, how to tell the client
an error, in JSON or inside a stream) and as the *served* API (how to read usage, the model that
answered, completion and errors from a provider's JSON answer or event stream). A
:class:`WireAPI` holds both roles, so code that handles "the client's API" and "the served API"
never asks which format it is: it asks the object. Adding an API is one module with one
subclass, registered in :mod:`ext_proc.llm.apis`; the provider kinds that speak it say so in
:mod:`ext_proc.llm.providers`, and a translation to an API it is not spoken by is one pair in
:mod:`ext_proc.llm.translate`.

Validation is deliberately shallow: Tollway rejects what it cannot meter or route (not JSON, no
model, wrong types for the fields it reads) and leaves the rest of the schema to the provider,
whose own error the client then sees unchanged.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.llm.errors import ClientError
from ext_proc.llm.exact import exact
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import Usage
from ext_proc.values import value

MAX_DECODED_BODY = 64 * 1024 * 1024
MAX_STREAM_TEXT = 4 * 1024 * 1024  # bytes of stream events kept for estimating a cut stream
MAX_DEPTH = 128  # nested arrays and objects a request body may have (tool schemas need a few dozen)
# Arrays and objects a request body may hold, all told. Parsed, each costs the worker's event loop
# time and memory that --body-memory (bytes) does not see: 10 MB of ``[[]]`` is 800 MB of Python
# lists. The largest real requests hold a few tens of thousands (README "Bad input").
MAX_CONTAINERS = 500_000
# Messages, input items or prompts a request may list: Anthropic's documented limit (100,000
# messages), far above OpenAI's (2,048 messages, 2,048 embeddings inputs). Each is guarded and
# counted one by one on the worker's loop; an array of strings holds no array or object to count.
MAX_ITEMS = 100_000
# Strings (keys included) a request body may hold: parsed, each is a Python object (5 million
# one-letter strings: 1.3 s of the worker's loop and 1 GB); counted, like the containers, before
# the body is parsed. 100,000 messages of two keys and two values are 400,000.
MAX_STRINGS = 2_000_000
_LISTS = ("messages", "input", "prompt")
_KEEP = {b"[{": bytes(c for c in range(256) if c not in b'"[{'),
         b"[]{}": bytes(c for c in range(256) if c not in b'"[]{}')}
_SQUARE = bytes.maketrans(b"{}", b"[]")
_CHUNK = 1 << 20


def decode_json(body: bytes) -> Any:
    """A request body as JSON, strictly: what two JSON readers could read differently is refused.

    orjson refuses what RFC 8259 does not allow (JSONTestSuite's ``n_`` cases), and also invalid
    UTF-8, lone surrogates, a byte-order mark, and numbers out of a double's range (NaN,
    ``1e999``). On top of that: objects with a key given twice (readers keep the first or the
    last: Tollway could route on one ``model`` and the provider read another) and nesting deeper
    than :data:`MAX_DEPTH`. A refusal is a 400 :class:`ClientError` naming the problem; a body
    holding more than :data:`MAX_CONTAINERS` arrays and objects is a 413, refused before it is parsed.
    """
    brackets = body.count(b"[") + body.count(b"{")  # an upper bound, at C speed
    if brackets > MAX_CONTAINERS and len(_structure(body, b"[{")) > MAX_CONTAINERS:
        raise ClientError(413, "request_too_large", f"The request body holds more than {MAX_CONTAINERS:,} "
                          "arrays and objects.")
    if body.count(b'"') > 2 * MAX_STRINGS and _strings(body) > MAX_STRINGS:
        raise ClientError(413, "request_too_large", f"The request body holds more than {MAX_STRINGS:,} "
                          "strings (object keys included).")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:  # orjson's own words would speak of surrogates, at char 0
            raise ClientError(400, "invalid_json", f"The request body is not valid UTF-8 (byte {bad.start}: "
                              f"{bad.reason}).") from None
        if "infinity" in str(exc):  # valid JSON, but no reader agrees on it: an error, or inf
            raise ClientError(400, "invalid_json", "The request body holds a number out of a double's range "
                              f"(such as 1e400), which Tollway refuses: {exc}.") from None
        raise ClientError(400, "invalid_json", f"The request body is not valid JSON: {exc}.") from None
    if brackets > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise ClientError(400, "invalid_json", f"The request body nests arrays and objects more than {MAX_DEPTH} deep.")
    try:
        copy = orjson.dumps(value)
    except orjson.JSONEncodeError:
        copy = None
    if copy is not None:  # an integer beyond 64 bits, which orjson reads rounded: read exactly
        value = exact(body, value, copy)
    if b"{" in body and not _surely_unique(body, copy):
        try:
            json.loads(body, object_pairs_hook=_unique)
        except _Duplicate as exc:
            raise ClientError(400, "invalid_json", f"The request body gives the key {exc.key!r} twice in one object; "
                              "readers disagree on which one counts.") from None
    return value


def _strings(body: bytes) -> int:
    """How many strings (keys included) a JSON text holds, at C speed: with escaped backslashes,
    then escaped quotes, taken out, every ``"`` left opens or closes one (exact for valid JSON)."""
    return body.replace(b"\\\\", b"").replace(b'\\"', b"").count(b'"') // 2


def _surely_unique(body: bytes, copy: bytes | None) -> bool:
    """True when no object of ``body`` (valid JSON, read and written again by orjson as ``copy``;
    None: it could not be) gives a key twice, at C speed.

    Every ``:`` of a JSON text either ends an object's key or is a character of a string, so
    counting the characters ``:`` of the text and of ``value`` written again by orjson (which
    escapes no ``:``) compares the two: a key given twice is one pair the decoded objects lost,
    with its ``:`` and whatever its value held, so the copy has fewer. A ``:`` the text writes as
    ``\\u003a`` would count only in the copy: a text with any ``\\u003`` is not decided here.
    False only means "not shown unique": the stdlib reader then looks for the key.
    """
    if b"\\u003" in body or copy is None:
        return False
    return copy.count(b":") == body.count(b":")


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:100]


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return found


def _structure(body: bytes, keep: bytes) -> bytes:
    """The characters ``keep`` (brackets) of a JSON text that stand outside its strings, in order,
    at C speed whatever the text holds (exact for valid JSON, a guess for the rest).

    Escaped backslashes, then escaped quotes, are taken out, so every ``"`` left opens or closes a
    string; then all but quotes and ``keep``, then pairs of adjacent quotes (an empty string, or
    the end of one string and the start of the next: either way, what lies between the rest does
    not change sides). What is outside is then every other piece between quotes, taken a chunk at
    a time so the pieces never make one long list.
    """
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _KEEP[keep]).replace(b'""', b"")
    if b'"' not in text:
        return text
    outside: list[bytes] = []
    inside = False
    for start in range(0, len(text), _CHUNK):
        pieces = text[start:start + _CHUNK].split(b'"')
        outside.append(b"".join(pieces[1::2] if inside else pieces[::2]))
        if len(pieces) % 2 == 0:
            inside = not inside
    return b"".join(outside)


def _depth(body: bytes) -> int:
    """How deep the arrays and objects of valid JSON ``body`` nest, up to ``MAX_DEPTH + 1``.

    Each round takes out the innermost ones (``[]`` with nothing left between, one level), at C speed.
    """
    brackets = _structure(body, b"[]{}").translate(_SQUARE)
    depth = 0
    while brackets and depth <= MAX_DEPTH:
        brackets = brackets.replace(b"[]", b"")
        depth += 1
    return depth


@dataclass(slots=True)
class ParsedRequest:
    """What the core needs from a request body; ``payload`` is the decoded JSON object."""

    payload: dict[str, Any]
    model: str
    stream: bool


class Reader:
    """Reads one provider answer of a wire API, whole (buffered JSON) or event by event (SSE).

    It learns the usage (``None`` fields stay unknown), the model that served, whether the
    answer completed, why the model stopped (``finish_reasons``, one per choice, in the provider's
    words) and the provider's error code, and keeps the data of content events
    (bounded) so a stream cut before its usage can still be estimated (:meth:`text`).
    Subclasses implement :meth:`_event` (one SSE event) and :meth:`_body` (a whole JSON answer).
    """

    __slots__ = ("_kept", "_size", "complete", "error", "finish_reasons", "model", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.model: str | None = None
        self.complete = False
        self.error: str | None = None
        self.finish_reasons: list[str] = []
        self._kept: list[bytes] = []
        self._size = 0

    def feed(self, event: SSEEvent) -> None:
        """Read one event (a whole body when ``event.whole``); may mark it ``usage_only``."""
        if event.whole:
            self.whole(event.json())
        else:
            self._event(event)

    def whole(self, payload: dict[str, Any] | None) -> None:
        """Read a buffered answer, decoded (None: it was not a JSON object)."""
        if payload is not None:
            model = payload.get("model")
            if isinstance(model, str):
                self.model = model
            self._body(payload)
        self.complete = True

    def keep(self, data: bytes) -> None:
        """Remember a content event's data (bounded), in case the stream ends without usage."""
        if self._size < MAX_STREAM_TEXT:
            self._kept.append(data)
            self._size += len(data)

    def text(self) -> str:
        """The answer's text (and tool-call arguments) seen so far, for estimating output tokens."""
        parts: list[str] = []
        for data in self._kept:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self._text(event, parts)
        return "".join(parts)

    def _event(self, event: SSEEvent) -> None:
        raise NotImplementedError

    def _body(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def _text(self, event: dict[str, Any], parts: list[str]) -> None:
        raise NotImplementedError


@value
class RateWindow:
    """A rate limit as the client is told about it: of ``kind`` "requests" or "tokens"."""

    kind: str
    limit: int
    remaining: int
    resets: float  # Unix seconds


class WireAPI:
    """One wire format; see the module docstring. Instances are immutable singletons."""

    __slots__ = ("answer_fields", "billed", "home", "name", "output_fields", "path", "required_list", "streams")

    # A request asking an API that does not stream (``streams``) for a stream is refused (a 400,
    # the provider never asked: it would bill the request and fail it, and the SDK retry); False:
    # the API ignores it (count_tokens, whose body is a Messages request's).
    refuses_stream = True
    # Where the family's SDK reads the provider's request id (``_request_id``): a translated answer
    # carries the provider's id under the client's name.
    request_id_header = "x-request-id"

    def __init__(self, name: str, path: str, home: str, *, required_list: str | None = None,
                 streams: bool = True, output_fields: tuple[str, ...] | None = ("max_tokens",),
                 answer_fields: tuple[str, ...] = ()) -> None:
        self.name = name  # in records and metrics: "openai.chat.completions"
        self.path = path  # the request path: "/v1/chat/completions"
        self.home = home  # the provider kind that speaks it natively (the route without a policy)
        self.required_list = required_list  # a field that must be there, a JSON array (chat's ``messages``)
        self.streams = streams  # whether a request may ask for an event stream
        # The request fields that cap the answer's tokens, first found wins (None: no output at all).
        self.output_fields = output_fields
        # The request fields that ask for several answers, each billed (OpenAI's ``n``, ``best_of``).
        self.answer_fields = answer_fields
        self.billed = True  # providers charge for it: budgets and rate limits count it

    def __repr__(self) -> str:
        return f"<WireAPI {self.name}>"

    # -- the client's API: requests and errors ----------------------------------------------

    def parse(self, body: bytes) -> ParsedRequest:
        """Decode and check a request body, raising :class:`ClientError` (400) when unusable."""
        if not body.strip():
            raise ClientError(400, "invalid_body", "The request body is empty; expected a JSON object.")
        payload = decode_json(body)
        if not isinstance(payload, dict):
            raise ClientError(400, "invalid_body", "The request body must be a JSON object.")
        for name in _LISTS:
            items = payload.get(name)
            if type(items) is not list:
                continue
            if len(items) > MAX_ITEMS:
                raise ClientError(413, "request_too_large", f"'{name}' lists {len(items):,} items; Tollway takes "
                                  f"at most {MAX_ITEMS:,} in one request.", name)
            parts = sum(len(content) for item in items
                        if type(item) is dict and type(content := item.get("content")) is list)
            if parts > MAX_ITEMS:
                raise ClientError(413, "request_too_large", f"'{name}' holds {parts:,} content parts; Tollway "
                                  f"takes at most {MAX_ITEMS:,} in one request.", name)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise ClientError(400, "missing_model", "The request must name a model (a string).", "model")
        stream = payload.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise ClientError(400, "invalid_type", "'stream' must be a boolean.", "stream")
        if stream and not self.streams and self.refuses_stream:
            raise ClientError(400, "invalid_request", f"'stream' must be false or left out: {self.path} answers in "
                                                      "one JSON body, never as an event stream.", "stream")
        field = self.required_list
        if field is not None and not isinstance(payload.get(field), list):
            if payload.get(field) is None:
                raise self.missing(field)
            raise ClientError(400, "invalid_type", f"'{field}' must be an array of messages.", field)
        return ParsedRequest(payload, model, stream)

    def missing(self, field: str) -> ClientError:
        """The 400 for a request without the field that holds its text (chat's ``messages``,
        embeddings' ``input``), in the API's words: the provider would refuse it too, and a body
        whose text is under another name (``input`` to chat) would go out unguarded."""
        return ClientError(400, "missing_required_parameter", f"Missing required parameter: '{field}'.", field)

    def ask_for_usage(self, request: ParsedRequest) -> bool:
        """Make a streamed request report its usage; True when the request was changed for it.

        The caller then re-encodes the payload, and hides the extra usage event from this
        client, so its stream looks exactly as it would without Tollway.
        """
        return False

    def answers(self, payload: dict[str, Any]) -> int:
        """How many answers the request asks for (:attr:`answer_fields`), each up to the output limit
        and each billed; 1 where the API has no such field."""
        most = 1
        for name in self.answer_fields:
            value = payload.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > most:
                most = value
        return most

    def output_limit(self, payload: dict[str, Any]) -> int | None:
        """The most output tokens the request allows (None: it sets no limit); 0 for no output."""
        if self.output_fields is None:
            return 0
        for name in self.output_fields:
            value = payload.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    def rate_limit_headers(self, windows: list[RateWindow], now: float) -> tuple[tuple[str, str], ...]:
        """The response headers that tell a client where it stands against its rate limits."""
        return ()

    def error_body(self, error: ClientError) -> bytes:
        """``error`` as this API's error response body."""
        raise NotImplementedError

    def stream_error(self, error: ClientError, sequence: int = 0) -> bytes:
        """``error`` as an event inside this API's stream (its SDK raises on it). ``sequence``: how
        many events the stream has had, for an API that numbers its events (Responses)."""
        raise NotImplementedError

    # -- the served API: answers --------------------------------------------------------------

    def reader(self) -> Reader:
        """A reader for one answer of this API (see :class:`Reader`)."""
        raise NotImplementedError


_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# What replaces a provider key (or a long piece of one) its answer sent back: Tollway's server takes
# them out before the core reads the answer (ext_proc.server.credentials); the core only sees this.
KEY_MARKER = "[provider key removed by Tollway]"
# A value shaped like a credential: an issuer's prefix (OpenAI's and Anthropic's ``sk-``, Stripe-like
# ``sk_``/``rk_``, AWS ``AKIA``/``ASIA``, Google ``AIza``, GitHub, GitLab, Slack, Hugging Face, Groq,
# a JWT's ``eyJ``) then 8 characters more: a piece of a key too (its first 20 characters), which
# the guardrails' detectors (a whole key's length) would not take for one.
_KEY_SHAPE = re.compile(r"(?:sk-|sk_|rk_|AKIA|ASIA|AIza|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|hf_|gsk_|eyJ)"
                        r"[A-Za-z0-9_-]{8}")


def key_shaped(value: str) -> bool:
    """Whether ``value`` is, or starts like, a credential: an issuer's key prefix and 8 more key
    characters (``sk-ant-api03-…``, ``sk-proj-…``, ``AKIA…``), or the marker of a key removed."""
    return _KEY_SHAPE.match(value) is not None or KEY_MARKER in value


def safe_code(error: Any) -> str:
    """The stable code of a provider's error object: its ``code``, else its ``type``, taken only when
    it looks like a code (``^[A-Za-z0-9_.:-]{1,64}$``) and not like a key (:func:`key_shaped`),
    else ``provider_error``. The code goes into the request's record, its span and logs: a
    provider's free text there (one quoting the key it was sent, or a piece of it) would leave
    with them."""
    if isinstance(error, dict):
        for key in ("code", "type"):
            value = error.get(key)
            if isinstance(value, str) and _CODE.fullmatch(value) and not key_shaped(value):
                return value
    return "provider_error"


def safe_model(model: str) -> str | None:
    """The model an answer names, unless it is shaped like a key or holds :data:`KEY_MARKER` (a
    provider that wrote its key, or a piece of it, there): then ``None``, and the request is
    recorded, priced and labelled with the model Tollway asked for."""
    return None if key_shaped(model) else model


def error_code(payload: dict[str, Any]) -> str:
    """The stable code of a provider's error answer (``error.code``, else ``error.type``: see :func:`safe_code`)."""
    return safe_code(payload.get("error"))


MAX_RATIO = 200  # a gzip body may decompress to this many times its size (beyond 1 MiB): more is a bomb


def gunzip(body: bytes, ratio: int | None = MAX_RATIO) -> bytes:
    """Decompress a gzip body (every member), refusing bombs: more than :data:`MAX_DECODED_BODY`
    in all, or (a client's body) more than ``ratio`` times its compressed size beyond 1 MiB."""
    limit = MAX_DECODED_BODY if ratio is None else min(MAX_DECODED_BODY, max(1 << 20, len(body) * ratio))
    out = bytearray()
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(wbits=31)
            out += inflater.decompress(data, limit - len(out) + 1)
            if len(out) > limit or inflater.unconsumed_tail:
                if limit < MAX_DECODED_BODY:
                    raise ClientError(413, "body_too_large", f"The gzip-encoded request body decompresses to more "
                                      f"than {ratio} times its size; Tollway does not inflate it.")
                raise ClientError(413, "body_too_large", "The decompressed request body is too large.")
            if not inflater.eof:
                raise ClientError(400, "invalid_body", "The gzip-encoded request body is truncated.")
            data = inflater.unused_data
    except zlib.error:
        raise ClientError(400, "invalid_body", "The gzip-encoded request body is corrupt.") from None
    return bytes(out)
