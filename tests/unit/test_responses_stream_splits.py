"""Responses streams at any split point, served natively or translated.

A Responses client (``POST /v1/responses``) is served three ways: by OpenAI natively (its
Responses events pass through, read by the Responses reader), by Anthropic (Messages events
translated) and by a chat-completions-only server (chat chunks translated). For each, with the
provider's stream cut into chunks anywhere (inside a line, between ``data:`` and its JSON,
inside a UTF-8 character, between the two line feeds that end an event):

1. every split gives the same client bytes and the same record as the stream in one chunk;
2. the client gets a stream the ``openai`` SDK's types accept, numbered from 0 without a gap,
   carrying the provider's text and usage, ending with ``response.completed`` (or
   ``response.incomplete`` when the output limit cut the answer);
3. a stream the provider ends early (cleanly, at any byte) reaches the client as whole events
   and exactly one ``error`` event, numbered after them, never after a ``response.completed``;
4. a stream closed at any point emits one ``incomplete`` record with the usage seen so far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseStreamEvent

from ext_proc.core.actions import Continue, EmitRecord
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.core.response import complete
from ext_proc.core.session import Session
from ext_proc.llm import runtime
from ext_proc.mock import responses as mock
from ext_proc.policy.compile import compile_policy
from tests.unit.test_session_stream_splits import (
    BOUNDED,
    Reply,
    cut_lists,
    decoded,
    eols,
    positions,
    replies,
    split,
    whole_events,
)

POLICY = compile_policy("""
apiVersion: tollway/v1
providers:
  openai: {kind: openai}
  anthropic: {kind: anthropic}
  local: {kind: openai-compatible, endpoint: "http://vllm.local:8000"}
models:
  gpt-4o: {provider: openai}
  claude-x: {provider: anthropic}
  llama: {provider: local}
teams:
  all: {workloads: [local-dev], models: ["*"]}
""")
T0 = 5_000_000_000_000
AT = T0 + 300_000_000
EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
SERVED = {"openai": "gpt-4o", "anthropic": "claude-x", "chat": "llama"}  # provider API -> the model asked for
PROVIDERS = [pytest.param(name, id=f"served-by-{name}") for name in SERVED]


@dataclass(frozen=True)
class Upstream:
    provider: str
    data: bytes
    complete_at: int  # from this many bytes on, the provider's answer is whole for the client
    text: str
    truncated: bool
    model: str
    prompt_tokens: int
    completion_tokens: int


def generated(provider: str, reply: Reply, eol: bytes) -> Upstream:
    model = {"openai": "gpt-4o-2024-08-06", "anthropic": "claude-x-20250101", "chat": "llama-3.1-8b"}[provider]
    ids = {"openai": "resp_Ab1", "anthropic": "msg_01Ab", "chat": "chatcmpl-Ab1"}
    gen = mock.Generation(id=ids[provider], created=1_755_000_001, model=model, prompt_tokens=reply.prompt_tokens,
                          pieces=reply.pieces, truncated=reply.truncated)
    events = (mock.responses_events(gen, {}) if provider == "openai"
              else mock.anthropic_message_events(gen) if provider == "anthropic"
              else mock.openai_chat_events(gen, include_usage=True))
    events = [event.replace(b"\n", eol) for event in events]
    data = b"".join(events)
    # The client's answer is whole once the terminal event's data line is in (for a chat server:
    # the usage chunk that follows the finish reason; [DONE] may then be missing).
    terminal = events[-2] if provider == "chat" else events[-1]
    start = data.rindex(terminal)
    return Upstream(provider, data, start + len(terminal.rstrip(b"\r\n")), gen.text, reply.truncated, model,
                    gen.prompt_tokens, gen.completion_tokens)


def opened(provider: str) -> Session:
    session = Session(POLICY, "local-dev", runtime=runtime.fixed(now=1_755_000_000))
    body = {"model": SERVED[provider], "input": "Hi", "stream": True}
    head = {":method": "POST", ":path": "/v1/responses", "x-request-id": "req-1", "content-type": "application/json"}
    assert isinstance(session.handle(RequestHeaders(head, False, T0)), Continue)
    assert isinstance(session.handle(RequestBody(orjson.dumps(body), True, T0 + 1_000_000)), Continue)
    told = session.handle(ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False,
                                          T0 + 200_000_000))
    assert isinstance(told, Continue) and told.stream_response, told
    return session


def play(session: Session, chunks: list[bytes], *, end: bool = True) -> bytes:
    out = b""
    for index, part in enumerate(chunks):
        action = session.handle(ResponseBody(part, end and index == len(chunks) - 1, AT))
        assert isinstance(action, Continue) and not action.set_headers, action
        out += part if action.body is None else action.body
    return out


def records(session: Session) -> list[dict[str, Any]]:
    return [effect.record for effect in session.effects if isinstance(effect, EmitRecord)]


def sdk_events(stream: bytes) -> list[Any]:
    events = whole_events(stream)
    parsed = [EVENT.validate_json(event.data) for event in events]
    assert [event.event for event in events] == [item.type for item in parsed]  # event line = data type
    assert [item.sequence_number for item in parsed] == list(range(len(parsed)))
    return parsed


def assert_valid(up: Upstream, stream: bytes) -> None:
    parsed = sdk_events(stream)
    kinds = [item.type for item in parsed]
    final = "response.incomplete" if up.truncated else "response.completed"
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == final, kinds
    assert kinds.count(final) == 1 and "error" not in kinds
    assert "".join(item.delta for item in parsed if item.type == "response.output_text.delta") == up.text
    response = parsed[-1].response
    assert response.output_text == up.text
    assert (response.usage.input_tokens, response.usage.output_tokens) == (up.prompt_tokens, up.completion_tokens)


def check_splits(up: Upstream, cuts: list[int]) -> None:
    whole_session = opened(up.provider)
    whole = play(whole_session, [up.data])
    pieces_session = opened(up.provider)
    assert play(pieces_session, split(up.data, cuts)) == whole
    (record,) = records(whole_session)
    assert records(pieces_session) == [record]
    assert (record["outcome"], record["error"], record["served_model"]) == ("ok", None, up.model)
    assert (record["input_tokens"], record["output_tokens"]) == (up.prompt_tokens, up.completion_tokens)
    assert_valid(up, whole)


@pytest.mark.parametrize("provider", PROVIDERS)
@settings(BOUNDED, max_examples=60)
@given(reply=replies, eol=eols, data=st.data())
def test_any_split_gives_the_same_valid_stream_and_record(provider: str, reply: Reply, eol: bytes,
                                                          data: st.DataObject) -> None:
    up = generated(provider, reply, eol)
    check_splits(up, data.draw(cut_lists(up.data), label="cuts"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_fed_byte_by_byte_gives_the_same_stream(provider: str) -> None:
    up = generated(provider, Reply(("Hé", "llo", " 🦜", "", " wörld\n", '"q"'), 42, False), b"\r\n")
    check_splits(up, list(range(len(up.data) + 1)))


def check_cut(up: Upstream, cut: int, cuts: list[int]) -> None:
    session = opened(up.provider)
    out = play(session, split(up.data[:cut], cuts))
    assert out == play(opened(up.provider), [up.data[:cut]])
    (record,) = records(session)
    if cut >= up.complete_at:
        assert (record["outcome"], record["error"]) == ("ok", None)
        assert_valid(up, out if out.endswith((b"\n\n", b"\r\n\r\n")) else out + b"\n\n")
        return
    _, rest = decoded(out)
    assert rest == b"", f"bytes of an unfinished event reached the client: {rest[-160:]!r}"
    parsed = sdk_events(out)
    assert [item.type for item in parsed].count("error") == 1 and parsed[-1].type == "error"
    assert parsed[-1].code == "stream_interrupted"
    assert not {"response.completed", "response.incomplete"} & {item.type for item in parsed}
    assert (record["outcome"], record["error"]) == ("incomplete", "stream_interrupted")


@pytest.mark.parametrize("provider", PROVIDERS)
@settings(BOUNDED, max_examples=80)
@given(reply=replies, eol=eols, data=st.data())
def test_a_truncated_stream_ends_with_whole_events_and_one_error_event(provider: str, reply: Reply, eol: bytes,
                                                                      data: st.DataObject) -> None:
    up = generated(provider, reply, eol)
    cut = data.draw(st.one_of(positions(up.data), st.integers(max(0, up.complete_at - 400), len(up.data))),
                    label="cut")
    check_cut(up, cut, data.draw(cut_lists(up.data[:cut]), label="cuts"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_cut_before_its_first_event_ended_numbers_its_error_from_zero(provider: str) -> None:
    """The first event arrived whole but for its blank line and is withheld: the error is event 0."""
    up = generated(provider, Reply((), 1, False), b"\n")
    check_cut(up, up.data.index(b"\n\n") + 1, [])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_cut_inside_its_terminal_event_is_incomplete(provider: str) -> None:
    up = generated(provider, Reply(("Hi",), 12, False), b"\n")
    for end in (m.end() for m in re.finditer(rb"data: ", up.data[: up.complete_at])):
        check_cut(up, min(end + 5, up.complete_at - 1), [])


def test_a_chat_stream_ended_by_done_without_a_finish_reason_ends_with_an_error_event() -> None:
    """A chat server sends text, no finish reason, then ``[DONE]``: its stream ended cleanly, but
    the answer was cut (a chat client sees no finish_reason). The Responses client gets its error
    event, never a stream that just stops after a text delta; the record says ``incomplete``."""
    events = mock.openai_chat_events(mock.Generation(id="chatcmpl-Ab1", created=1_755_000_001, model="llama-3.1-8b",
                                                     prompt_tokens=7, pieces=("Hel", "lo")), include_usage=True)
    finish = next(i for i, event in enumerate(events) if b'"finish_reason":"' in event)
    session = opened("chat")
    out = play(session, [b"".join(events[:finish]) + b"data: [DONE]\n\n"])
    parsed = sdk_events(out)
    assert parsed[-1].type == "error" and parsed[-1].code == "stream_interrupted", [item.type for item in parsed]
    assert "".join(item.delta for item in parsed if item.type == "response.output_text.delta") == "Hello"
    assert not complete(session.flow)
    (record,) = records(session)
    assert (record["outcome"], record["error"]) == ("incomplete", "stream_interrupted")


@pytest.mark.parametrize("provider", PROVIDERS)
@settings(BOUNDED, max_examples=40)
@given(reply=replies, data=st.data())
def test_a_stream_closed_at_any_point_emits_one_incomplete_record(provider: str, reply: Reply,
                                                                   data: st.DataObject) -> None:
    """One record; ``incomplete`` unless the answer's end had come (a client may close then: ok)."""
    up = generated(provider, reply, b"\n")
    chunks = split(up.data, data.draw(cut_lists(up.data), label="cuts"))
    count = data.draw(st.integers(0, len(chunks)), label="chunks before the close")
    session = opened(provider)
    play(session, chunks[:count], end=False)
    assert records(session) == []
    whole = complete(session.flow)
    assert whole or count < len(chunks)  # every byte read: the end was seen
    assert session.handle(StreamClosed(AT + 1)) is None
    (record,) = records(session)
    outcome = "ok" if whole else "incomplete"
    assert (record["outcome"], record["stream"], record["api"]) == (outcome, True, "openai.responses")
    assert session.handle(StreamClosed(AT + 2)) is None and len(records(session)) == 1
