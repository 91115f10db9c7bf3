"""A session's response streams whatever the provider's chunking, and when the provider's stream is cut.

Envoy hands the session a provider's SSE stream in chunks that may end anywhere: inside a line,
inside the JSON of an event, between ``data:`` and its payload, inside a multi-byte character,
between the two line feeds that end an event, or carry no bytes at all. These properties hold
for each way a single target serves a stream: translated (an OpenAI chat client served by
Anthropic, an Anthropic client served by OpenAI) and untranslated (each API served by itself).

1. Any split of the same provider stream gives the same client bytes and the same record as
   the stream in one chunk.
2. What the client receives is a valid stream for its SDK, carrying the provider's text.
3. A stream that ends early (cleanly, at any byte) reaches the client as whole events followed
   by exactly one error event in the client's format, unless the provider had already sent its
   terminal event (``[DONE]``, ``message_stop``): then it is the complete answer.
4. A stream closed at any point (client gone, upstream reset) emits one record, ``incomplete``,
   with the usage seen so far.

Provider streams come from the fake provider's renderers (:mod:`ext_proc.mock.responses`) with
generated reply text in LF or CRLF framing, and from the recorded OpenAI cassettes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anthropic.types
import openai.types.chat
import orjson
import pydantic
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState

from ext_proc.core.actions import Continue, EmitRecord
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.core.response import complete
from ext_proc.core.session import Session
from ext_proc.llm import runtime
from ext_proc.llm.sse import SSEDecoder, SSEEvent
from ext_proc.mock import responses as mock
from tests.unit.test_attempt import POLICY
from tests.unit.test_session import cassette

CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
T0 = 5_000_000_000_000  # the request's arrival on the monotonic clock
AT = T0 + 300_000_000  # every response chunk arrives at the same instant: records of two runs compare whole
CREATED = 1_755_000_000  # the clock the OpenAI chunks translated from Anthropic events report

_INTERRUPTED = "The provider's stream ended before the response was complete."
ERROR_EVENT = {
    "openai": b"data: " + orjson.dumps({"error": {"message": _INTERRUPTED, "type": "server_error", "param": None,
                                                  "code": "stream_interrupted"}}) + b"\n\n",
    "anthropic": b"event: error\ndata: " + orjson.dumps({"type": "error", "error": {"type": "api_error",
                                                                                  "message": _INTERRUPTED}}) + b"\n\n",
}
ANTHROPIC_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
# No deadline (one example runs several sessions); no explain phase (it replays a failure hundreds of times).
BOUNDED = settings(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])


# -- routes: who asks, who answers --------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    client: str  # the client's API: "openai" (chat completions) or "anthropic" (messages)
    provider: str  # the API of the provider serving the model it asks for

    @property
    def model(self) -> str:
        return "claude-x" if self.provider == "anthropic" else "gpt-4o"  # single targets in POLICY

    @property
    def translated(self) -> bool:
        return self.client != self.provider


ROUTES = [
    pytest.param(Route(client, provider), id=f"{client}-client-{provider}-provider")
    for client, provider in [("openai", "anthropic"), ("anthropic", "openai"), ("openai", "openai"),
                             ("anthropic", "anthropic")]
]
OPENAI_SERVED = [route for route in ROUTES if route.values[0].provider == "openai"]
ANTHROPIC_SERVED = [route for route in ROUTES if route.values[0].provider == "anthropic"]


def opened(route: Route, usage: bool) -> Session:
    """A session whose streaming request went to the route's provider and whose 200 SSE head came back.

    ``usage``: whether an OpenAI client asked for the usage chunk (``stream_options.include_usage``).
    """
    # Translated OpenAI chunks carry ``created`` (the clock): two runs of a stream must give the same bytes.
    session = Session(POLICY, "local-dev", runtime=runtime.fixed(now=CREATED))
    messages = [{"role": "user", "content": "Hi"}]
    body: dict[str, Any] = {"model": route.model, "messages": messages, "stream": True}
    if route.client == "anthropic":
        body["max_tokens"] = 100
    elif usage:
        body["stream_options"] = {"include_usage": True}
    path = CHAT if route.client == "openai" else MESSAGES
    head = {":method": "POST", ":path": path, "x-request-id": "req-1", "content-type": "application/json"}
    assert isinstance(session.handle(RequestHeaders(head, False, T0)), Continue)
    sent = session.handle(RequestBody(orjson.dumps(body), True, T0 + 1_000_000))
    assert isinstance(sent, Continue) and ("x-tollway-cluster", route.provider) in sent.set_headers, sent
    told = session.handle(ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False,
                                          T0 + 200_000_000))
    assert isinstance(told, Continue) and told.stream_response, told
    return session


def play(session: Session, chunks: list[bytes], *, end: bool = True) -> bytes:
    """Feed response chunks (with ``end``, the last one ends the stream); the bytes the client receives."""
    out = b""
    for index, part in enumerate(chunks):
        action = session.handle(ResponseBody(part, end and index == len(chunks) - 1, AT))
        assert isinstance(action, Continue) and not action.set_headers and not action.remove_headers, action
        out += part if action.body is None else action.body
    return out


def records(session: Session) -> list[dict[str, Any]]:
    return [effect.record for effect in session.effects if isinstance(effect, EmitRecord)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (clamped to its length); a repeated cut makes an empty chunk."""
    points = sorted(min(cut, len(data)) for cut in cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def pieces(text: str, cuts: Iterable[int]) -> tuple[str, ...]:
    """``text`` cut at ``cuts`` (each inside it), as a provider's content deltas."""
    points = sorted(set(cuts))
    return tuple(text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True))


def some_cuts(data: st.DataObject, text: str, label: str = "deltas") -> list[int]:
    """One to five places inside ``text`` to cut it at, drawn."""
    return data.draw(st.lists(st.integers(1, len(text) - 1), min_size=1, max_size=5), label=label)


# -- provider streams ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """A provider's complete stream and what its client must get out of it."""

    provider: str
    data: bytes
    terminal: int  # where the terminal event ([DONE], message_stop) starts
    finished: int  # where its data line ends: from here on the provider's stream is complete
    text: str
    finish: str  # OpenAI finish_reason: "stop" or "length"
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class Reply:
    """What the fake model says: its text deltas, the prompt's size, whether max tokens cut it."""

    pieces: tuple[str, ...]
    prompt_tokens: int
    truncated: bool


def framed(provider: str, events: list[bytes], eol: bytes, **expected: Any) -> Upstream:
    # JSON payloads hold no raw line break, so the framing can be rewritten safely.
    events = [event.replace(b"\n", eol) for event in events]
    data = b"".join(events)
    terminal = len(data) - len(events[-1])
    return Upstream(provider, data, terminal, terminal + len(events[-1].rstrip(b"\r\n")), **expected)


def generated(provider: str, reply: Reply, eol: bytes) -> Upstream:
    """The fake provider's stream for ``reply`` (OpenAI's with the usage chunk Tollway asks for)."""
    model = "claude-x-20250101" if provider == "anthropic" else "gpt-4o-2024-08-06"
    gen = mock.Generation(id="msg_01Ab" if provider == "anthropic" else "chatcmpl-Ab1", created=1_755_000_001,
                          model=model, prompt_tokens=reply.prompt_tokens, pieces=reply.pieces,
                          truncated=reply.truncated)
    events = (mock.anthropic_message_events(gen) if provider == "anthropic"
              else mock.openai_chat_events(gen, include_usage=True))
    return framed(provider, events, eol, text=gen.text, finish="length" if reply.truncated else "stop", model=model,
                  prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)


def recorded(name: str) -> Upstream:
    """A recorded OpenAI chat stream (LF framing, ends with ``data: [DONE]``)."""
    body = cassette(name)["response"]["body"].encode()
    events = [event + b"\n\n" for event in body.split(b"\n\n") if event]
    assert events[-1] == mock.SSE_DONE
    chunks = [orjson.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    usage = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    return framed(
        "openai", events, b"\n", text="".join(choice["delta"].get("content") or "" for choice in choices),
        finish=[choice["finish_reason"] for choice in choices if choice["finish_reason"]][-1],
        model=chunks[0]["model"], prompt_tokens=usage[0]["prompt_tokens"] if usage else None,
        completion_tokens=usage[0]["completion_tokens"] if usage else None,
    )


CASSETTE_STREAMS = ["chat-streaming", "chat-streaming-detailed-usage"]  # text without usage; usage without text
RECORDED = {name: recorded(name) for name in CASSETTE_STREAMS}

replies = st.builds(
    Reply,
    pieces=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=6), max_size=8).map(tuple),
    prompt_tokens=st.integers(1, 200_000),
    truncated=st.booleans(),
)
eols = st.sampled_from([b"\n", b"\r\n"])

# Where a cut is most likely to go wrong: around line breaks (the middle of a CRLF included), right
# after a field name (between "data:" and its payload), around JSON quotes, inside a UTF-8 character.
_NOTABLE = re.compile(rb"data:|event:|\r|\n|\"|\[DONE\]|[\x80-\xbf]")


def positions(data: bytes) -> st.SearchStrategy[int]:
    notable = sorted({0, len(data)} | {i for m in _NOTABLE.finditer(data) for i in (m.start(), m.end())})
    return st.one_of(st.integers(0, len(data)), st.sampled_from(notable))


def cut_lists(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(positions(data), max_size=12)


# -- what the client reads ----------------------------------------------------------------------


def decoded(stream: bytes) -> tuple[list[SSEEvent], bytes]:
    """The complete events of ``stream`` (those carrying data) and the bytes left after the last one."""
    decoder = SSEDecoder()
    return [event for event in decoder.feed(stream) if event.data], decoder.pending


def whole_events(stream: bytes) -> list[SSEEvent]:
    events, rest = decoded(stream)
    assert rest == b"", f"bytes of an unfinished event reached the client: {rest[-160:]!r}"
    return events


def is_error(client: str, event: SSEEvent) -> bool:
    if client == "anthropic":
        return event.event == "error"
    return event.data.startswith(b"{") and "error" in orjson.loads(event.data)


def is_terminal(client: str, event: SSEEvent) -> bool:
    return event.event == "message_stop" if client == "anthropic" else event.data == b"[DONE]"


def sdk_events(client: str, events: list[SSEEvent]) -> list[Any]:
    """The events as the client's SDK types (Anthropic pings, which the SDK skips, left out)."""
    if client == "openai":
        return [openai.types.chat.ChatCompletionChunk.model_validate_json(event.data) for event in events]
    parsed = [ANTHROPIC_EVENT.validate_json(event.data) for event in events if event.event != "ping"]
    assert [event.event for event in events if event.event != "ping"] == [item.type for item in parsed]
    return parsed


def assert_valid_stream(route: Route, up: Upstream, usage: bool, stream: bytes) -> None:
    """Property 2: a complete stream the client's SDK reads, with the provider's text and ending."""
    events = whole_events(stream)
    terminal = [index for index, event in enumerate(events) if is_terminal(route.client, event)]
    assert terminal == [len(events) - 1], [(event.event, event.data[:60]) for event in events]
    assert not any(is_error(route.client, event) for event in events)
    if route.client == "openai":
        state = ChatCompletionStreamState()
        for chunk in sdk_events("openai", events[:-1]):
            state.handle_chunk(chunk)
        completion = state.current_completion_snapshot
        (choice,) = completion.choices
        assert (choice.message.content or "") == up.text
        assert choice.finish_reason == up.finish
        if usage and up.prompt_tokens is not None:
            assert completion.usage is not None
            assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
                up.prompt_tokens, up.completion_tokens)
        else:
            assert completion.usage is None  # no usage chunk: the client did not ask for it
        return
    parsed = sdk_events("anthropic", events)
    assert parsed[0].type == "message_start"
    text = "".join(item.delta.text for item in parsed
                   if item.type == "content_block_delta" and item.delta.type == "text_delta")
    assert text == up.text
    (delta,) = [item for item in parsed if item.type == "message_delta"]
    assert delta.delta.stop_reason == ("max_tokens" if up.finish == "length" else "end_turn")
    if up.completion_tokens is not None:
        assert delta.usage.output_tokens == up.completion_tokens
    # blocks open and close in order, and content only goes to the open block
    open_block = None
    for item in parsed:
        if item.type == "content_block_start":
            assert open_block is None
            open_block = item.index
        elif item.type == "content_block_delta":
            assert item.index == open_block
        elif item.type == "content_block_stop":
            assert item.index == open_block
            open_block = None
    assert open_block is None


def seen(up: Upstream, events: list[SSEEvent]) -> dict[str, Any]:
    """The record fields a session can know from these provider events (those whose data is whole)."""
    out: dict[str, Any] = {"served_model": None, "input_tokens": None, "output_tokens": None}
    for event in events:
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(payload, dict):
            continue
        if up.provider == "anthropic":
            kind = event.event or payload.get("type")
            if kind == "message_start":
                # Its output_tokens (1) is a placeholder, not a count: unknown until message_delta.
                out.update(served_model=up.model, input_tokens=up.prompt_tokens)
            elif kind == "message_delta":
                out["output_tokens"] = up.completion_tokens
        else:
            out["served_model"] = up.model
            if payload.get("usage"):
                out.update(input_tokens=up.prompt_tokens, output_tokens=up.completion_tokens)
    return out


def provider_events(data: bytes, *, ended: bool) -> list[SSEEvent]:
    """The provider events a session has read from ``data`` (the unterminated last one too once it ended)."""
    decoder = SSEDecoder()
    return decoder.feed(data) + (decoder.flush() if ended else [])


# -- 1 and 2: any split, the same valid stream --------------------------------------------------


def check_splits(route: Route, up: Upstream, usage: bool, cuts: list[int]) -> None:
    whole_session = opened(route, usage)
    whole = play(whole_session, [up.data])
    (whole_record,) = records(whole_session)
    pieces_session = opened(route, usage)
    pieces = play(pieces_session, split(up.data, cuts))
    assert pieces == whole
    assert records(pieces_session) == [whole_record]
    assert {key: whole_record[key] for key in ("outcome", "error", "served_model", "input_tokens",
                                                "output_tokens")} == {
        "outcome": "ok", "error": None, "served_model": up.model,
        "input_tokens": up.prompt_tokens, "output_tokens": up.completion_tokens,
    }


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=100)
@given(reply=replies, eol=eols, usage=st.booleans(), data=st.data())
def test_any_split_gives_the_same_client_bytes_and_record(
    route: Route, reply: Reply, eol: bytes, usage: bool, data: st.DataObject
) -> None:
    up = generated(route.provider, reply, eol)
    check_splits(route, up, usage, data.draw(cut_lists(up.data), label="cuts"))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_a_stream_fed_byte_by_byte_gives_the_same_client_bytes(route: Route, eol: bytes) -> None:
    reply = Reply(("Hé", "llo", " 🦜", "", " wörld\n", '"q"'), 42, False)
    up = generated(route.provider, reply, eol)
    check_splits(route, up, True, list(range(len(up.data) + 1)))


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=100)
@given(reply=replies, eol=eols, usage=st.booleans())
def test_the_client_gets_a_valid_stream_with_the_providers_text(
    route: Route, reply: Reply, eol: bytes, usage: bool
) -> None:
    up = generated(route.provider, reply, eol)
    assert_valid_stream(route, up, usage, play(opened(route, usage), [up.data]))


@pytest.mark.parametrize("name", CASSETTE_STREAMS)
@pytest.mark.parametrize("route", OPENAI_SERVED)
@settings(BOUNDED, max_examples=40)
@given(usage=st.booleans(), data=st.data())
def test_a_recorded_stream_split_anywhere_gives_the_same_client_bytes_and_record(
    route: Route, name: str, usage: bool, data: st.DataObject
) -> None:
    up = RECORDED[name]
    check_splits(route, up, usage, data.draw(cut_lists(up.data), label="cuts"))


@pytest.mark.parametrize("usage", [True, False], ids=["usage-asked", "usage-not-asked"])
@pytest.mark.parametrize("name", CASSETTE_STREAMS)
@pytest.mark.parametrize("route", OPENAI_SERVED)
def test_a_recorded_stream_reaches_the_client_as_a_valid_stream(route: Route, name: str, usage: bool) -> None:
    up = RECORDED[name]
    assert_valid_stream(route, up, usage, play(opened(route, usage), [up.data]))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cut", [0, 1, 3, 40], ids=lambda cut: f"cut{cut}")
def test_a_byte_order_mark_opening_the_providers_stream_is_ignored(route: Route, cut: int) -> None:
    """SSE ignores one leading U+FEFF. Its bytes once made the first field ``\ufeffdata`` (or
    ``\ufeffevent``), so the first event was not read: here an OpenAI-compatible server's first
    chunk, which carries text (no role-only chunk before it), lost to a translated client."""
    gen = mock.Generation(id="chatcmpl-Ab1", created=1_755_000_001, model="gpt-4o-2024-08-06", prompt_tokens=42,
                          pieces=("Hello", " world"), truncated=False)
    events = (mock.anthropic_message_events(gen) if route.provider == "anthropic"
              else mock.openai_chat_events(gen, include_usage=True)[1:])
    data = b"".join(events)
    plain_session = opened(route, True)
    plain = play(plain_session, [data])
    marked_session = opened(route, True)
    marked = play(marked_session, split(b"\xef\xbb\xbf" + data, [cut]))
    assert marked == (plain if route.translated else b"\xef\xbb\xbf" + plain)  # passed on as received
    assert b"Hello" in plain
    (record,) = records(marked_session)
    assert records(plain_session) == [record]
    assert (record["outcome"], record["input_tokens"], record["output_tokens"]) == ("ok", 42, gen.completion_tokens)


# -- 3: a stream cut short ------------------------------------------------------------------------


def check_cut(route: Route, up: Upstream, usage: bool, cut: int, cuts: list[int]) -> None:
    """Property 3 for the provider's stream ending cleanly after its first ``cut`` bytes."""
    client = route.client
    full = complete_answer(route, usage, up.data)
    session = opened(route, usage)
    out = play(session, split(up.data[:cut], cuts))
    at_once = opened(route, usage)
    assert out == play(at_once, [up.data[:cut]])  # property 1 holds for a cut stream too
    assert records(session) == records(at_once)
    (record,) = records(session)
    known = seen(up, provider_events(up.data[:cut], ended=True))
    assert {key: record[key] for key in known} == known
    events, rest = decoded(out)
    if cut >= complete_from(route, up):  # the provider had sent its terminal event: the answer is complete
        assert (record["outcome"], record["error"]) == ("ok", None)
        if route.translated:
            assert out == full
            assert rest == b""
        else:
            # The provider's own last event passes, closed by a blank line if its own never came.
            assert out.rstrip(b"\r\n") == full.rstrip(b"\r\n") and out.endswith((b"\n\n", b"\r\n\r\n"))
            assert rest == b""
        return
    assert rest == b"", f"bytes of an unfinished event reached the client: {rest[-160:]!r}"
    assert out.endswith(ERROR_EVENT[client]), out[-300:]
    assert [index for index, event in enumerate(events) if is_error(client, event)] == [len(events) - 1]
    before = events[:-1]
    assert not any(is_terminal(client, event) for event in before), (
        f"a cut stream looks complete: the client got its terminal event, then an error; "
        f"last events {[(event.event, event.data[:80]) for event in events[-3:]]}")
    sdk_events(client, before)
    assert full.startswith(out[: -len(ERROR_EVENT[client])])  # whole events of the complete answer, in order
    assert (record["outcome"], record["error"]) == ("incomplete", "stream_interrupted")


def complete_from(route: Route, up: Upstream) -> int:
    """Where the provider's stream holds the whole answer for this route's client.

    For an Anthropic client of an OpenAI provider that is the end of the usage chunk that follows
    the finish reason: the client's message_delta and message_stop are complete then, and only
    OpenAI's ``[DONE]`` is missing. For every other route it is the terminal event's data line.
    """
    if route.client == "anthropic" and up.provider == "openai":
        found = re.search(rb'data: \{[^\r\n]*"usage":\{[^\r\n]*', up.data)
        if found:
            return found.end()
    return up.finished


@functools.lru_cache(maxsize=64)
def complete_answer(route: Route, usage: bool, data: bytes) -> bytes:
    """What the client gets for the whole provider stream (shrinking replays the same stream often)."""
    return play(opened(route, usage), [data])



def cut_points(up: Upstream) -> st.SearchStrategy[int]:
    """Any byte; two draws in three near the end: the last events, or the terminal event itself."""
    return st.one_of(positions(up.data), st.integers(max(0, up.terminal - 600), len(up.data)),
                     st.integers(max(0, up.terminal - 2), len(up.data)))


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=150)
@given(reply=replies, eol=eols, usage=st.booleans(), data=st.data())
def test_a_truncated_stream_ends_with_whole_events_and_one_error_event(
    route: Route, reply: Reply, eol: bytes, usage: bool, data: st.DataObject
) -> None:
    up = generated(route.provider, reply, eol)
    cut = data.draw(cut_points(up), label="cut")
    check_cut(route, up, usage, cut, data.draw(cut_lists(up.data[:cut]), label="cuts"))


@pytest.mark.parametrize("name", CASSETTE_STREAMS)
@pytest.mark.parametrize("route", OPENAI_SERVED)
@settings(BOUNDED, max_examples=40)
@given(usage=st.booleans(), data=st.data())
def test_a_truncated_recorded_stream_ends_with_one_error_event(
    route: Route, name: str, usage: bool, data: st.DataObject
) -> None:
    up = RECORDED[name]
    cut = data.draw(cut_points(up), label="cut")
    check_cut(route, up, usage, cut, data.draw(cut_lists(up.data[:cut]), label="cuts"))


# -- 4: a stream closed early ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=100)
@given(reply=replies, eol=eols, usage=st.booleans(), data=st.data())
def test_a_stream_closed_at_any_point_emits_one_incomplete_record(
    route: Route, reply: Reply, eol: bytes, usage: bool, data: st.DataObject
) -> None:
    up = generated(route.provider, reply, eol)
    chunks = split(up.data, data.draw(cut_lists(up.data), label="cuts"))
    count = data.draw(st.integers(0, len(chunks)), label="chunks before the close")
    session = opened(route, usage)
    play(session, chunks[:count], end=False)
    assert records(session) == []
    whole = complete(session.flow)  # the answer's end had come: a client may close then (ok)
    assert whole or count < len(chunks)
    assert session.handle(StreamClosed(AT + 1)) is None
    (record,) = records(session)
    outcome = "ok" if whole else "incomplete"
    assert (record["outcome"], record["stream"], record["status"]) == (outcome, True, 200)
    # cut before its end (the provider reset it, or the client left): said as for a stream ended early
    assert record["error"] == (None if whole else "stream_interrupted")
    # what the session had read: the events completed so far (an unfinished one waits for its end)
    known = seen(up, provider_events(b"".join(chunks[:count]), ended=False))
    assert {key: record[key] for key in known} == known
    assert session.handle(StreamClosed(AT + 2)) is None  # a second close records nothing more
    assert len(records(session)) == 1


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(reply=replies, data=st.data())
def test_a_close_after_the_stream_ended_records_nothing_more(route: Route, reply: Reply, data: st.DataObject) -> None:
    up = generated(route.provider, reply, b"\n")
    session = opened(route, True)
    play(session, split(up.data, data.draw(cut_lists(up.data), label="cuts")))
    session.handle(StreamClosed(AT + 1))
    (record,) = records(session)
    assert record["outcome"] == "ok"


# -- the smallest streams that break property 3 --------------------------------------------------

HI = Reply(("Hi",), 12, False)


def event_ends(data: bytes) -> list[int]:
    """The offset after each event of an LF-framed stream."""
    return [m.end() for m in re.finditer(rb"\n\n", data)]


@pytest.mark.parametrize("route", OPENAI_SERVED)
@pytest.mark.parametrize("kept", [3, 4], ids=["through-the-finish-chunk", "through-the-usage-chunk"])
def test_an_openai_stream_cut_before_done_is_not_a_complete_answer(route: Route, kept: int) -> None:
    """[role, "Hi", finish_reason, usage] arrived, ``data: [DONE]`` did not: the stream is cut.

    Except for an Anthropic client once the usage chunk arrived: its message is then complete
    (see :func:`complete_from`), and it must not get an error after its message_stop.
    """
    up = generated("openai", HI, b"\n")
    check_cut(route, up, True, event_ends(up.data)[kept - 1], [])


@pytest.mark.parametrize("route", ANTHROPIC_SERVED)
@pytest.mark.parametrize("partial", [b"event: message_stop", b"event: message_stop\n",
                                     b'event: message_stop\ndata: {"type":"mess'], ids=["name", "name-line", "data"])
def test_an_anthropic_stream_cut_inside_message_stop_is_incomplete(route: Route, partial: bytes) -> None:
    """Everything through message_delta arrived, then part of message_stop: its data never came."""
    up = generated("anthropic", HI, b"\n")
    assert up.data[up.terminal:].startswith(partial)
    check_cut(route, up, True, up.terminal + len(partial), [])


@pytest.mark.parametrize("route", [route for route in ROUTES if route.values[0].translated])
@pytest.mark.parametrize("whole", [True, False], ids=["one-chunk", "event-by-event"])
def test_a_provider_event_that_is_not_json_ends_a_translated_stream_with_an_error(route: Route, whole: bool) -> None:
    """A translated stream reads every event: one that is not JSON was dropped, and the client got
    a complete-looking answer missing its text, recorded ok. Its stream ends there with an error
    event in its format instead; the record says ``error``, ``provider_event_unreadable``."""
    up = generated(route.provider, Reply(("Hello", " there", " friend"), 12, False), b"\n")
    at = up.data.index(b"data: " if route.provider == "openai" else b"event: ", up.data.index(b'"Hello"'))
    bad = (b'data: {"id": "chatcmpl-Ab1", "choices": [{"index": 0, "delta": {"content": " lost"}}]\n\n'
           if route.provider == "openai" else
           b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
           b'"delta": {"type": "text_delta", "text": " lost"}\n\n')
    data = up.data[:at] + bad + up.data[at:]
    session = opened(route, usage=True)
    out = play(session, [data] if whole else split(data, event_ends(data)))
    events = whole_events(out)
    assert is_error(route.client, events[-1]), out
    assert (b"provider_event_unreadable" if route.client == "openai" else b"not a JSON object") in events[-1].data
    assert not any(is_error(route.client, event) for event in events[:-1])
    assert not any(is_terminal(route.client, event) for event in events), out
    assert b"Hello" in out and b"lost" not in out and b"friend" not in out, out
    (record,) = records(session)
    assert (record["outcome"], record["error"]) == ("error", "provider_event_unreadable"), record
    assert record["output_tokens"] == up.completion_tokens, record  # the provider's usage, read all the same
