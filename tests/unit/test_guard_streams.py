"""A secret in a streamed answer never reaches the client, wherever the stream is split.

For each way a single target serves a stream (passed through or translated, each API), the
fake provider's answer carries a card number, an email address or an API key, split across
content events at any position, and the provider's bytes are split into TCP chunks at any
position. The client's SDK must read a valid stream whose text is exactly the answer with the
value replaced by its placeholder: so no character of the value was ever sent. A guardrail that
blocks instead ends the client's stream with one error event, before any of the value. A
pseudonymised prompt value comes back in the answer, also when its placeholder is split.
"""

from __future__ import annotations

import textwrap
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState

from ext_proc.core.actions import Continue
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseHeaders
from ext_proc.core.session import Session
from ext_proc.llm import runtime
from ext_proc.mock import responses as mock
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from tests.fixtures import GUARD_CASSETTES
from tests.unit.test_session_stream_splits import (
    BOUNDED,
    CHAT,
    CREATED,
    MESSAGES,
    OPENAI_SERVED,
    ROUTES,
    T0,
    Route,
    cut_lists,
    is_error,
    pieces,
    play,
    records,
    sdk_events,
    some_cuts,
    split,
    whole_events,
)

# The providers, models and teams of the stream guard's tests; each file adds its guardrails.
HEAD = textwrap.dedent("""\
    apiVersion: tollway/v1
    providers:
      openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
      anthropic: {kind: anthropic, credential: {env: ANTHROPIC_API_KEY}}
    models:
      gpt-4o: {provider: openai}
      claude-x: {provider: anthropic}
    teams:
      all: {workloads: [local-dev], models: ["*"]}
      strict: {workloads: [strict-app], models: ["*"]}
      private: {workloads: [private-app], models: ["*"]}
""")
POLICY = compile_policy(HEAD + textwrap.dedent("""\
    guardrails:
      rules:
        - {name: secrets, detectors: [credentials, credit_card], action: block, teams: [strict]}
        - {name: pii, detectors: [email], action: pseudonymise, teams: [private]}
        - {name: pii, detectors: [pii], action: redact}
        - {name: secrets, detectors: [credentials], action: redact}
"""))

# Values that must never be seen (made up: a test card number, an address, a key-shaped string).
SECRETS = {
    "card": ("4111 1111 1111 1111", "[CREDIT_CARD_1]"),
    "email": ("jane.doe@example.com", "[EMAIL_1]"),
    # Internationalised addresses: letters beyond ASCII and marks are held back as an address's.
    "email beyond ascii": ("renée.mu\u0308ller@exämple.de", "[EMAIL_1]"),
    "email in Cyrillic": ("иван.петров@пример.рф", "[EMAIL_1]"),
    "key": ("sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6l", "[OPENAI_KEY_1]"),
    "phone": ("+1 415 555 0100", "[PHONE_1]"),
}
BEFORE = ["Your value is ", "See: ", "", "x ", "您的值是 ", "Größe: "]
AFTER = [" and that is all.", ".", "", " ok", "，谢谢。", " — fertig"]


def opened(route: Route, workload: str = "local-dev", prompt: str = "Hi", system: str | None = None,
           policy: CompiledPolicy = POLICY, **fields: Any) -> Session:
    """A streamed request through the stream guard, answered so far with a 200 event stream's head;
    ``system``: its system prompt (a system message, or Anthropic's top-level field); ``fields``:
    more of the request's body."""
    session = Session(policy, workload, runtime=runtime.fixed(now=CREATED))
    body: dict[str, Any] = {"model": route.model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                            **fields}
    if route.client == "anthropic":
        body["max_tokens"] = 100
        if system is not None:
            body["system"] = system
    elif system is not None:
        body["messages"].insert(0, {"role": "system", "content": system})
    path = CHAT if route.client == "openai" else MESSAGES
    head = {":method": "POST", ":path": path, "x-request-id": "req-1", "content-type": "application/json"}
    assert isinstance(session.handle(RequestHeaders(head, False, T0)), Continue)
    sent = session.handle(RequestBody(orjson.dumps(body), True, T0 + 1_000_000))
    assert isinstance(sent, Continue), sent
    told = session.handle(ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False,
                                          T0 + 200_000_000))
    assert isinstance(told, Continue) and told.stream_response, told
    return session


def provider_stream(route: Route, pieces: tuple[str, ...]) -> bytes:
    model = "claude-x-20250101" if route.provider == "anthropic" else "gpt-4o-2024-08-06"
    gen = mock.Generation(id="msg_01Ab" if route.provider == "anthropic" else "chatcmpl-Ab1", created=1_755_000_001,
                          model=model, prompt_tokens=12, pieces=pieces)
    events = (mock.anthropic_message_events(gen) if route.provider == "anthropic"
              else mock.openai_chat_events(gen, include_usage=True))
    return b"".join(events)


def client_text(route: Route, stream: bytes) -> tuple[str, bool]:
    """The answer text the client's SDK reads, and whether the stream ended with an error event."""
    events = whole_events(stream)
    errored = bool(events) and is_error(route.client, events[-1])
    if errored:
        events = events[:-1]
    if route.client == "openai":
        chunks = sdk_events("openai", [e for e in events if e.data != b"[DONE]"])
        if not chunks:
            return "", errored
        state = ChatCompletionStreamState()
        for chunk in chunks:
            state.handle_chunk(chunk)
        snapshot = state.current_completion_snapshot
        return (snapshot.choices[0].message.content or "") if snapshot.choices else "", errored
    parsed = sdk_events("anthropic", events)
    return "".join(item.delta.text for item in parsed
                   if item.type == "content_block_delta" and item.delta.type == "text_delta"), errored


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, str, str, tuple[str, ...]]:
    """(secret, placeholder, the answer text, its content deltas): at least one cut inside the secret."""
    secret, placeholder = SECRETS[draw(st.sampled_from(sorted(SECRETS)))]
    before, after = draw(st.sampled_from(BEFORE)), draw(st.sampled_from(AFTER))
    text = before + secret + after
    inside = draw(st.integers(len(before) + 1, len(before) + len(secret) - 1))
    return secret, placeholder, before + placeholder + after, pieces(text, [inside, *draw(
        st.lists(st.integers(1, len(text) - 1), max_size=4))])


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=60)
@given(answer=answers(), data=st.data())
def test_a_secret_split_anywhere_never_reaches_the_client(route: Route, answer: Any, data: st.DataObject) -> None:
    secret, _, redacted, pieces = answer
    upstream = provider_stream(route, pieces)
    session = opened(route)
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    text, errored = client_text(route, out)
    assert not errored
    assert text == redacted  # exactly: not one character of the value was sent
    assert secret.encode() not in out
    (record,) = records(session)
    assert record["outcome"] == "ok" and record["guardrails"] in (["pii"], ["secrets"])
    assert secret not in orjson.dumps(record).decode()


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=40)
@given(data=st.data())
def test_a_piece_of_a_longer_number_stays_whole_in_a_stream_split_anywhere(route: Route, data: st.DataObject) -> None:
    # "0-227-47180" of the ISBN is no phone number however the stream is cut (what follows it decides).
    text = "Book 0-227-47180-6, or call 020 7946 0958 x12 now"
    upstream = provider_stream(route, pieces(text, some_cuts(data, text, "cuts")))
    session = opened(route)
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    assert client_text(route, out) == ("Book 0-227-47180-6, or call [PHONE_1] now", False)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_secret_fed_byte_by_byte_is_redacted(route: Route, name: str) -> None:
    secret, placeholder = SECRETS[name]
    text = "Here: " + secret + " done"
    pieces = tuple(text)  # one character per content event
    upstream = provider_stream(route, pieces)
    session = opened(route)
    out = play(session, [upstream[i:i + 1] for i in range(len(upstream))])
    assert client_text(route, out) == ("Here: " + placeholder + " done", False)


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(data=st.data())
def test_a_blocked_answer_ends_with_an_error_event_and_none_of_the_value(route: Route, data: st.DataObject) -> None:
    secret = SECRETS["card"][0]
    text = "Sure. The card is " + secret + " as requested."
    inside = data.draw(st.integers(19, 18 + len(secret) - 1), label="cut in the card")
    pieces = (text[:inside], text[inside:])
    upstream = provider_stream(route, pieces)
    session = opened(route, workload="strict-app")
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    shown, errored = client_text(route, out)
    assert errored
    assert "Sure. The card is ".startswith(shown)  # some of the text before it, never any of the card
    assert b"4111" not in out and b"1111" not in out
    (record,) = records(session)
    assert (record["outcome"], record["error"]) == ("blocked", "guardrail_blocked")
    assert record["guardrail_triggers"] == [{"guardrail": "secrets", "detector": "credit_card", "action": "block",
                                             "direction": "response", "count": 1}]


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(data=st.data())
def test_pseudonyms_come_back_in_a_stream_split_anywhere(route: Route, data: st.DataObject) -> None:
    text = "I will write to [EMAIL_1] and to [EMAIL_9] tomorrow."
    upstream = provider_stream(route, pieces(text, some_cuts(data, text)))
    session = opened(route, workload="private-app", prompt="Write to jane.doe@example.com please")
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    # the placeholder the provider saw comes back as the value; one it never saw stays as it is
    assert client_text(route, out) == ("I will write to jane.doe@example.com and to [EMAIL_9] tomorrow.", False)


# In a string (an escaped quote before it, the stream split anywhere), a value stays in it unquoted.
STRUCTURED = '{"phone":4155550100,"card":4111111111111111,"note":"mail \\"jane.doe@example.com\\" or 4155550100"}'
STRUCTURED_REDACTED = {"phone": "[PHONE_1]", "card": "[CREDIT_CARD_1]", "note": 'mail "[EMAIL_1]" or [PHONE_1]'}


def asks_json(route: Route) -> dict[str, Any]:
    """A request's fields asking for JSON: chat's ``response_format``, Messages' ``output_config``."""
    if route.client == "openai":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}}}}
    return {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(data=st.data())
def test_a_json_answer_the_client_asked_for_stays_json_when_redacted(route: Route, data: st.DataObject) -> None:
    # A number replaced outside a JSON string becomes a string: '"phone":"[PHONE_1]"', not '"phone":[PHONE_1]'.
    upstream = provider_stream(route, pieces(STRUCTURED, some_cuts(data, STRUCTURED)))
    session = opened(route, prompt="Extract the contact.", **asks_json(route))
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    text, errored = client_text(route, out)
    assert not errored and orjson.loads(text) == STRUCTURED_REDACTED
    assert b"4111" not in out and b"4155550100" not in out


# A value right after an escape (the line break of "\n"): the escape stays whole, the value is found without
# its letter, the stream split anywhere (between the backslash and its letter too).
ESCAPED = '{"who":"x\\njane.doe@example.com","note":"Call:\\n+1 415 555 0100\\tok \\u00e9"}'
ESCAPED_REDACTED = {"who": "x\n[EMAIL_1]", "note": "Call:\n[PHONE_1]\tok \u00e9"}


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(data=st.data())
def test_a_json_answer_keeps_its_escapes_whole_around_a_value(route: Route, data: st.DataObject) -> None:
    upstream = provider_stream(route, pieces(ESCAPED, some_cuts(data, ESCAPED)))
    session = opened(route, prompt="Extract the contact.", **asks_json(route))
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    text, errored = client_text(route, out)
    assert not errored and orjson.loads(text) == ESCAPED_REDACTED


# A value of the request's schema (an enum member) the answer gives exactly stays as it is; another
# address, or a longer one holding it, does not. (The model answers from the enum: a placeholder there
# is no member, a strict client's parse fails.)
ENUM_ANSWER = '{"team":"security@acme.io","cc":"jane.doe@example.com","other":"security@acme.io.example.net"}'
ENUM_ANSWERED = {"team": "security@acme.io", "cc": "[EMAIL_1]", "other": "[EMAIL_2]"}


def asks_enum(route: Route) -> dict[str, Any]:
    """A request asking for JSON whose schema's ``enum`` holds addresses."""
    schema = {"type": "object", "properties": {"team": {"type": "string", "enum": ["oncall@acme.io",
                                                                                  "security@acme.io"]}}}
    if route.client == "openai":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}}
    return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(data=st.data())
def test_a_schema_value_the_answer_gives_exactly_stays_as_it_is_in_a_stream_split_anywhere(
        route: Route, data: st.DataObject) -> None:
    cuts = [data.draw(st.integers(10, 24), label="cut in the enum value"), *some_cuts(data, ENUM_ANSWER)]
    upstream = provider_stream(route, pieces(ENUM_ANSWER, cuts))
    session = opened(route, prompt="Route: my account was hacked.", **asks_enum(route))
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    text, errored = client_text(route, out)
    assert not errored and orjson.loads(text) == ENUM_ANSWERED
    (record,) = records(session)
    assert {"guardrail": "pii", "detector": "email", "action": "redact", "direction": "response",
            "count": 3} in record["guardrail_triggers"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_guarded_stream_holds_back_only_the_word_in_progress(route: Route) -> None:
    # Each of the provider's events in its own TCP chunk, the stream not ended: what the client has
    # after each is everything but the word still arriving (it could begin an email address or a
    # number), never the last hundred characters.
    words = ("Hello", " there,", " how", " are", " you", " today?")
    upstream = provider_stream(route, words)
    events = whole_events(upstream)
    session = opened(route)
    shown = b""
    seen: list[str] = []
    for event in events[:-1]:
        shown += play(session, [event.raw], end=False)
        seen.append(client_text(route, shown)[0])
    texts = [text for text in dict.fromkeys(seen) if text]
    # "Hello" waits for what follows it; "there," is whole at its comma; each later word waits for
    # the next event, the space before it already shown.
    assert texts[:4] == ["Hello there,", "Hello there, ", "Hello there, how ", "Hello there, how are "], texts


@pytest.mark.parametrize("width", [100, 1_000, 4_000])
def test_the_work_per_event_does_not_grow_with_the_text_held_back(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run of letters a detector's matches may hold is held back up to its longest match minus
    # one; a stream of one-letter events (thousands in one TCP chunk) once had every event read the
    # held run again (4 µs... 60 µs an event: a 62 MB answer held a worker 24 s). The scanner now
    # reads a few characters per event, whatever the hold-back; the text is whole at the end.
    policy = compile_policy(HEAD + textwrap.dedent(f"""\
        guardrails:
          custom:
            ticket: {{pattern: "TCK-[a-z]{{1,{width}}}"}}
          rules:
            - {{name: tickets, detectors: [ticket], action: redact}}
    """))
    route = OPENAI_SERVED[0].values[0]
    from ext_proc.guardrails.scanner import Scanner

    scanned = []
    find = Scanner.find

    def counted(self: Scanner, text: str, *args: Any, **kwargs: Any) -> Any:
        scanned.append(len(text))
        return find(self, text, *args, **kwargs)

    monkeypatch.setattr(Scanner, "find", counted)
    n = 3 * width + 500
    upstream = provider_stream(route, ("x",) * n)
    events = whole_events(upstream)
    session = opened(route, policy=policy)
    start = len(scanned)
    shown = play(session, [b"".join(event.raw for event in events[:n + 1])], end=False)  # the role, the letters
    per_event = (sum(scanned[start:])) / n
    assert per_event < 16, (per_event, len(scanned) - start)
    text = client_text(route, shown)[0]
    assert text == "x" * len(text) and n - width - width // 4 <= len(text) <= n - width + 4  # the run's end held
    shown += play(session, [b"".join(event.raw for event in events[n + 1:])])
    assert client_text(route, shown) == ("x" * n, False)


AFTER_KEY_BLOCK = ("Key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + "a" * 40
                   + "\n-----END PRIVATE KEY-----\nthen call phone 4155550100 or mail jane.doe@example.com today.")


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("step", [1, 3, 7, 11, len(AFTER_KEY_BLOCK)])
def test_a_value_right_after_a_swallowed_key_block_is_found(route: Route, step: int) -> None:
    """Once a split key block is swallowed up to its closing armour, what follows is scanned without
    the block's opening armour as its context (scanned again, it opened a block over the phone)."""
    parts = tuple(AFTER_KEY_BLOCK[i:i + step] for i in range(0, len(AFTER_KEY_BLOCK), step))
    got, _ = client_text(route, play(opened(route, prompt="x"), [provider_stream(route, parts)]))
    assert "4155550100" not in got and "jane.doe" not in got and "MIIEv" not in got, got
    assert "[PRIVATE_KEY_1]" in got and "then call phone" in got, got


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-Ab1", "object": "chat.completion.chunk", "created": 1_755_000_001,
            "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if name is not None:
        call.update(id=f"call_{index}", type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def said_in_order(route: Route, stream: bytes) -> list[tuple[str, str]]:
    """What the client's SDK reads, in the order it arrives: ("text", ...) and ("tool N", arguments)
    for each stretch of deltas of one kind (an Anthropic client: each content block)."""
    said: list[tuple[str, str]] = []

    def add(kind: str, value: str) -> None:
        if said and said[-1][0] == kind:
            said[-1] = (kind, said[-1][1] + value)
        else:
            said.append((kind, value))

    events = whole_events(stream)
    if route.client == "openai":
        for chunk in sdk_events("openai", [e for e in events if e.data != b"[DONE]"]):
            for choice in chunk.choices:
                if choice.delta.content:
                    add("text", choice.delta.content)
                for call in choice.delta.tool_calls or ():
                    add(f"tool {call.index}", call.function.arguments or "" if call.function else "")
        return said
    blocks: dict[int, str] = {}
    for item in sdk_events("anthropic", events):
        if item.type == "content_block_start":
            calls = sum(kind != "text" for kind in blocks.values())
            kind = "text" if item.content_block.type == "text" else f"tool {calls}"
            blocks[item.index] = kind
            said.append((kind, ""))  # a block of its own, even next to one of the same kind
        elif item.type == "content_block_delta":
            assert said[-1][0] == blocks[item.index], (item, said)  # deltas go to the block last started
            add(blocks[item.index], item.delta.text if item.delta.type == "text_delta" else item.delta.partial_json)
    return said


@pytest.mark.parametrize("route", OPENAI_SERVED)
def test_text_held_back_goes_out_before_the_tool_call_that_follows_it(route: Route) -> None:
    """The word in progress of an answer's text (or a tool call's arguments) goes out before the next
    tool call starts, not at the end of the answer: the text before the call, whole, and each call's
    arguments before the next call (an Anthropic client reads no text block after the tool calls)."""
    text, arguments = "Mailing jane.doe@example.com", orjson.dumps({"to": "jane.doe@example.com"}).decode()
    for cut in range(1, min(len(text), len(arguments))):
        stream = (_openai_chunk({"role": "assistant", "content": text[:cut]}) + _openai_chunk({"content": text[cut:]})
                  + _openai_chunk(_call(0, "", "send")) + _openai_chunk(_call(0, arguments[:cut]))
                  + _openai_chunk(_call(0, arguments[cut:])) + _openai_chunk(_call(1, '{"city": "Paris"}', "weather"))
                  + _openai_chunk({}, "tool_calls") + b"data: [DONE]\n\n")
        out = play(opened(route), [stream])
        assert said_in_order(route, out) == [("text", "Mailing [EMAIL_1]"), ("tool 0", '{"to":"[EMAIL_1]"}'),
                                             ("tool 1", '{"city": "Paris"}')], (cut, out)
        assert b"jane.doe" not in out
    # The audit's case: no value at all, the last word held back as it could go on.
    stream = (_openai_chunk({"role": "assistant", "content": "Let me check the"})
              + _openai_chunk({"content": " weather"}) + _openai_chunk(_call(0, '{"city": "Paris"}', "weather"))
              + _openai_chunk({}, "tool_calls") + b"data: [DONE]\n\n")
    assert said_in_order(route, play(opened(route), [stream])) == [("text", "Let me check the weather"),
                                                                    ("tool 0", '{"city": "Paris"}')]


@pytest.mark.parametrize("route", ROUTES)
def test_a_providers_error_in_the_stream_never_carries_a_value_the_answer_may_not(route: Route) -> None:
    """A provider's error event may quote what the model wrote: its message is guarded as the
    answer's text (redacted here; a pseudonym comes back), passed through or translated."""
    secret, placeholder = SECRETS["card"]
    message = f"The model produced invalid content: Card {secret} for jane.doe@example.com [EMAIL_1]"
    session = opened(route, "private-app", prompt="Write to jane.doe@example.com")
    if route.provider == "openai":
        upstream = (_openai_chunk({"role": "assistant", "content": "Card "}) + b"data: " + orjson.dumps(
            {"error": {"message": message, "type": "server_error", "param": None, "code": "server_error"}}) + b"\n\n")
    else:
        full = provider_stream(route, ("Card ",))
        upstream = full[:full.index(b"event: content_block_stop")] + b"event: error\ndata: " + orjson.dumps(
            {"type": "error", "error": {"type": "api_error", "message": message}}) + b"\n\n"
    out = play(session, [upstream])
    assert secret.encode() not in out and placeholder.encode() in out, out
    assert b"for [EMAIL_1] jane.doe@example.com" in out  # the value found is the answer's; a pseudonym comes back


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("route", OPENAI_SERVED)
def test_a_streamed_reasoning_is_guarded_and_held_back_before_the_content(route: Route, field: str) -> None:
    """``delta.reasoning_content`` / ``delta.reasoning`` (OpenAI-compatible servers' thinking) is a
    channel of the answer: an address split anywhere across its deltas never reaches the client, a
    pseudonym comes back, the word held back goes out before the content starts, and a ``block``
    rule ends the stream (an Anthropic client is given no reasoning: translation drops it)."""
    thought = "User is jane.doe@example.com, reply to [EMAIL_1] now"
    for cut in range(1, len(thought), 3):
        stream = (_openai_chunk({"role": "assistant", field: thought[:cut]}) + _openai_chunk({field: thought[cut:]})
                  + _openai_chunk({"content": "Hi"}) + _openai_chunk({}, "stop") + b"data: [DONE]\n\n")
        for workload, said in [("local-dev", "User is [EMAIL_2], reply to [EMAIL_1] now"),
                               ("private-app", "User is [EMAIL_2], reply to jane@example.org now")]:
            out = play(opened(route, workload, prompt="Write to jane@example.org"), [stream])
            assert b"jane.doe" not in out, (cut, out)
            if route.client == "anthropic":
                assert b"reasoning" not in out and b"EMAIL" not in out and "Hi" in client_text(route, out)[0]
                continue
            order = [(key, value) for event in whole_events(out) if event.data.startswith(b"{")
                     for choice in orjson.loads(event.data)["choices"]
                     for key, value in choice["delta"].items() if key in (field, "content") and value]
            assert "".join(value for key, value in order if key == field) == said, (cut, out)
            assert order[-1] == ("content", "Hi"), order
        card = thought.replace("jane.doe@example.com", "4111 1111 1111 1111")
        stream = (_openai_chunk({"role": "assistant", field: card[:cut]}) + _openai_chunk({field: card[cut:]})
                  + _openai_chunk({"content": "Hi"}) + _openai_chunk({}, "stop") + b"data: [DONE]\n\n")
        out = play(opened(route, "strict-app"), [stream])
        assert b"4111" not in out and is_error(route.client, whole_events(out)[-1]), out


AUDIO_POLICY = compile_policy(HEAD + textwrap.dedent("""\
    guardrails:
      rules:
        - {name: pii, detectors: [email], action: pseudonymise, teams: [private]}
        - {name: pii, detectors: [email], action: log, teams: [strict]}
        - {name: pii, detectors: [pii], action: redact}
"""))


def _transcript(stream: bytes) -> str:
    """The ``delta.audio.transcript`` of a chat stream, as the client reads it."""
    said = ""
    for event in whole_events(stream):
        if event.data and event.data.startswith(b"{"):
            for choice in orjson.loads(event.data).get("choices") or ():
                said += ((choice.get("delta") or {}).get("audio") or {}).get("transcript") or ""
    return said


@pytest.mark.parametrize("cut", [None, 5, 40, 200])
def test_an_audio_answers_streamed_transcript_a_rule_would_change_ends_the_stream(cut: int | None) -> None:
    """``delta.audio.transcript`` is the answer's text, a channel of its own: an address split across
    its deltas is found; its audio cannot be redacted, so the stream ends with the error event and
    none of the value (redact, and pseudonymise, which redacts in answers); a ``log`` rule records
    it, the transcript whole."""
    route = Route("openai", "openai")
    recorded = yaml.safe_load((GUARD_CASSETTES / "chat-audio-transcript-stream.yaml").read_text())
    upstream = recorded["interactions"][0]["response"]["body"].encode()
    chunks = [upstream] if cut is None else split(upstream, [cut, len(upstream) // 2])
    audio = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    for workload in ("local-dev", "private-app"):
        session = opened(route, workload, policy=AUDIO_POLICY, **audio)
        out = play(session, chunks)
        assert is_error("openai", whole_events(out)[-1]), out
        assert b"jane.doe" not in out and b"UklGR" not in out
        assert "My email is ".startswith(_transcript(out))
        (record,) = records(session)
        assert (record["outcome"], record["error"]) == ("blocked", "guardrail_blocked")
        assert record["guardrail_triggers"] == [{"guardrail": "pii", "detector": "email", "action": "redact",
                                                 "direction": "response", "count": 1}]
    session = opened(route, "strict-app", policy=AUDIO_POLICY, **audio)
    out = play(session, chunks)
    assert _transcript(out) == "My email is jane.doe@example.com ok."
    assert b"UklGRiQAAABXQVZF" in out and out.endswith(b"data: [DONE]\n\n")
    (record,) = records(session)
    assert record["outcome"] == "ok"
    assert record["guardrail_triggers"] == [{"guardrail": "pii", "detector": "email", "action": "log",
                                             "direction": "response", "count": 1}]


def _anthropic_event(data: dict[str, Any]) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@pytest.mark.parametrize("mark", ["signature", "citation"])
def test_a_blocks_signature_stays_its_last_delta_and_a_citation_after_the_text_before_it(mark: str) -> None:
    """The word the guard holds back of a thinking block goes out before its ``signature_delta``
    (Anthropic's contract: the signature is the block's last delta), and a text block's before a
    ``citations_delta``: the block stays open, the text after the citation still guarded."""
    route = Route("anthropic", "anthropic")
    kind, field = ("thinking", "thinking_delta") if mark == "signature" else ("text", "text_delta")
    key = "thinking" if mark == "signature" else "text"
    marker = ({"type": "signature_delta", "signature": "EqQBCkgIARAB"} if mark == "signature" else
              {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "toll bridges",
                                                       "document_index": 0, "document_title": "Bridges",
                                                       "start_char_index": 0, "end_char_index": 12}})
    deltas = [{"type": field, key: "Let me think about "}, {"type": field, key: "famous toll bridges."}, marker]
    if mark == "citation":
        deltas.append({"type": field, key: " Mail jane.doe@example.com"})
    start: dict[str, Any] = {"type": kind, kind: ""}
    if mark == "signature":
        start["signature"] = ""
    upstream = b"".join([
        _anthropic_event({"type": "message_start", "message": {
            "id": "msg_03", "type": "message", "role": "assistant", "model": "claude-x-20250101", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        _anthropic_event({"type": "content_block_start", "index": 0, "content_block": start}),
        *(_anthropic_event({"type": "content_block_delta", "index": 0, "delta": delta}) for delta in deltas),
        _anthropic_event({"type": "content_block_stop", "index": 0}),
        _anthropic_event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"output_tokens": 20}}),
        _anthropic_event({"type": "message_stop"})])
    out = play(opened(route), [upstream])
    events = [item for item in sdk_events("anthropic", whole_events(out)) if getattr(item, "index", None) == 0]
    kinds = [item.delta.type if item.type == "content_block_delta" else item.type for item in events]
    said = "".join(getattr(item.delta, key) for item in events
                   if item.type == "content_block_delta" and item.delta.type == field)
    if mark == "signature":
        assert kinds[-2:] == ["signature_delta", "content_block_stop"], kinds
        assert said == "Let me think about famous toll bridges."
    else:
        before = [item.delta for item in events[:kinds.index("citations_delta")] if item.type == "content_block_delta"]
        assert "".join(getattr(delta, key, "") for delta in before) == "Let me think about famous toll bridges."
        assert said == "Let me think about famous toll bridges. Mail [EMAIL_1]"


@pytest.mark.parametrize(("name", "kind"), [("message_delta", "content_block_delta"), ("ping", "content_block_delta"),
                                            ("content_block_stop", "content_block_delta"), ("", "content_block_delta"),
                                            ("content_block_delta", "ping"), ("content_block_delta", "foo")])
def test_an_anthropic_event_is_guarded_as_its_json_type_says_whatever_its_name(name: str, kind: str) -> None:
    """A client reads an event's JSON ``type`` (the SDK too, given a name it knows): a text delta
    named otherwise (``event: message_delta``) is guarded as the text delta it is; and one a raw
    reader going by the name reads as a text delta (``event: content_block_delta``) is guarded
    whatever its JSON says (it passed unread, under a ``ping`` type)."""
    route = Route("anthropic", "anthropic")

    def named(data: dict[str, Any], name: str) -> bytes:
        return (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + orjson.dumps(data) + b"\n\n"

    upstream = b"".join([
        _anthropic_event({"type": "message_start", "message": {
            "id": "msg_03", "type": "message", "role": "assistant", "model": "claude-x-20250101", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        _anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        named({"type": kind, "index": 0, "delta": {"type": "text_delta", "text": "Mail jane.do"}}, name),
        named({"type": kind, "index": 0, "delta": {"type": "text_delta", "text": "e@example.com"}}, name),
        _anthropic_event({"type": "content_block_stop", "index": 0}),
        _anthropic_event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"output_tokens": 20}}),
        _anthropic_event({"type": "message_stop"})])
    out = play(opened(route), [upstream])
    assert b"jane.do" not in out and b"example.com" not in out, out
    assert b"[EMAIL_1]" in out


# A value right after a control escape ("\t", "\n") in a streamed JSON answer (scanned as written): found
# without the escape's letter, the stream split anywhere.
CONTROLLED = '{"a":"\\u00e9+1 415 555 0100\\t4111 1111 1111 1111\\njane.doe@example.com\\r\\n"}'
CONTROLLED_REDACTED = {"a": "\u00e9[PHONE_1]\t[CREDIT_CARD_1]\n[EMAIL_1]\r\n"}


@pytest.mark.parametrize("route", ROUTES)
@settings(BOUNDED, max_examples=30)
@given(data=st.data())
def test_a_value_right_after_a_control_escape_in_a_streamed_json_answer_is_found(route: Route,
                                                                                 data: st.DataObject) -> None:
    upstream = provider_stream(route, pieces(CONTROLLED, some_cuts(data, CONTROLLED)))
    session = opened(route, prompt="Extract the contact.", **asks_json(route))
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    text, errored = client_text(route, out)
    assert not errored and orjson.loads(text) == CONTROLLED_REDACTED


# An invisible character inside a value (a zero-width space, a soft hyphen, a NUL): the value is found
# whole, its invisible characters replaced with it, however the stream is split (at the character too).
# The same for a value written in compatibility forms (fullwidth, another script's digits): held back
# as the characters it is read as.
INVISIBLE = {
    "key": ("sk-proj-Ab3dEf6hIj9kLm2n\u200bOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6l", "[OPENAI_KEY_1]", "sk-proj-Ab3d"),
    "email": ("jane.doe\u00ad@example.com", "[EMAIL_1]", "jane.doe"),
    "card": ("4111 1111\u0000 1111 1111", "[CREDIT_CARD_1]", "4111"),
    "fullwidth card": ("４１１１ １１１１ １１１１ １１１１", "[CREDIT_CARD_1]", "４１１１"),
    "fullwidth email": ("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "[EMAIL_1]", "ｊａｎｅ"),
    "Arabic-Indic card": ("٤١١١ ١١١١ ١١١١ ١١١١", "[CREDIT_CARD_1]", "٤١١١"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(INVISIBLE))
@settings(BOUNDED, max_examples=20)
@given(data=st.data())
def test_a_value_split_by_an_invisible_character_never_reaches_the_client(route: Route, name: str,
                                                                           data: st.DataObject) -> None:
    secret, placeholder, start = INVISIBLE[name]
    text = "Your value is " + secret + " and that is all."
    upstream = provider_stream(route, pieces(text, some_cuts(data, text)))
    session = opened(route)
    out = play(session, split(upstream, data.draw(cut_lists(upstream), label="chunks")))
    assert client_text(route, out) == ("Your value is " + placeholder + " and that is all.", False)
    assert start.encode() not in out and start.encode("unicode-escape") not in out


@pytest.mark.parametrize("prose", [
    "我们明天上午十点在会议室见面讨论这个项目的进度请大家准时参加谢谢",  # Chinese
    "明日の会議は午前十時から第三会議室で行いますので皆さん時間通りに来てください",  # Japanese
    "ขอบคุณมากครับสำหรับความช่วยเหลือของคุณในวันนี้นะครับผม",  # Thai
])
def test_prose_written_without_spaces_flows_as_it_comes(prose: str) -> None:
    # A local part holds no Chinese, Japanese or Thai letter: such prose is not held back as a
    # possible address (it once waited for 253 characters when the local part took any script).
    route = OPENAI_SERVED[0].values[0]
    events = whole_events(provider_stream(route, tuple(prose)))  # one character per event
    session = opened(route)
    shown = play(session, [b"".join(event.raw for event in events[:1 + 20])], end=False)  # the role, 20 characters
    text = client_text(route, shown)[0]
    assert prose.startswith(text) and len(text) >= 17, text
    shown += play(session, [b"".join(event.raw for event in events[1 + 20:])])
    assert client_text(route, shown) == (prose, False)


@pytest.mark.parametrize("before", ["Пишите: ", "请写信给", "Schreib an "])
def test_a_cyrillic_address_split_at_any_point_never_reaches_the_client(before: str) -> None:
    route = OPENAI_SERVED[0].values[0]
    secret = "иван.петров@пример.рф"
    text = before + secret + "，谢谢。"
    for cut in range(len(before) + 1, len(before) + len(secret)):
        session = opened(route)
        out = play(session, split(provider_stream(route, (text[:cut], text[cut:])), []))
        assert client_text(route, out) == (before + "[EMAIL_1]，谢谢。", False), cut
        assert "иван".encode() not in out, cut


def _unreadable(route: Route, text: str) -> bytes:
    """A provider's content event carrying ``text`` whose JSON is cut short (no closing brace)."""
    if route.provider == "openai":
        return (b'data: {"id": "chatcmpl-Ab1", "choices": [{"index": 0, "delta": {"content": '
                + orjson.dumps(text) + b'}}]\n\n')
    return (b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
            b'"delta": {"type": "text_delta", "text": ' + orjson.dumps(text) + b'}\n\n')


def _before_second_delta(route: Route, full: bytes) -> int:
    """Where the event after the first content delta ("Hello") starts in a provider's stream."""
    return full.index(b"data: " if route.provider == "openai" else b"event: ", full.index(b'"Hello"'))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cut", [None, 7], ids=["one-chunk", "split"])
def test_a_provider_event_that_is_not_json_ends_the_stream_and_never_reaches_the_client(
        route: Route, cut: int | None) -> None:
    """An event the guard cannot read may hold anything: it was passed on unread (an address in
    it reached the client, the record said ok). The client's stream ends there with an error
    event in its format instead; the record says ``error``, ``provider_event_unreadable``."""
    secret = SECRETS["email"][0]
    full = provider_stream(route, ("Hello", " there", " friend"))
    at = _before_second_delta(route, full)
    upstream = full[:at] + _unreadable(route, f" mail {secret}") + full[at:]
    session = opened(route)
    out = play(session, [upstream] if cut is None else split(upstream, [at + cut]))
    assert secret.encode() not in out and b"jane" not in out, out
    text, errored = client_text(route, out)
    assert errored and "Hello".startswith(text), out
    assert b"provider_event_unreadable" in out if route.client == "openai" else b"not a JSON object" in out
    assert b"\" there" not in out and b"friend" not in out  # nothing after it
    (record,) = records(session)
    assert (record["outcome"], record["error"]) == ("error", "provider_event_unreadable"), record
    assert record["output_tokens"] is not None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("extra", [b"data: null\n\n", b"data: [DONE] \n\n", b"data: oops\n\n"],
                         ids=["null", "done-with-a-space", "garbage"])
@pytest.mark.parametrize("cut", [None, -3], ids=["one-chunk", "split"])
def test_an_unreadable_event_after_the_answers_end_leaves_the_answer_whole(
        route: Route, extra: bytes, cut: int | None) -> None:
    """What a provider sends after its ``[DONE]`` or ``message_stop`` (``data: null``, ``[DONE]``
    again with a space, anything) no longer ends a complete answer with an error event (the
    record said ``error``, and an OpenAI client of Claude never got its ``[DONE]``); it is dropped,
    and a ``null`` or a spaced ``[DONE]`` is read as the SDKs read them anywhere in the stream."""
    full = provider_stream(route, ("Hello", " there"))
    upstream = full + extra
    session = opened(route)
    out = play(session, [upstream] if cut is None else split(upstream, [len(full) + cut]))
    assert b"oops" not in out and b"provider_event_unreadable" not in out, out
    if route.client == "openai":  # (the SDK reads up to its [DONE])
        assert b"data: [DONE]" in out, out
        out = out[:out.index(b"data: [DONE]")]
    else:  # (the SDK skips an event without a name it knows)
        out = out.replace(b"data: [DONE]\n\n", b"").replace(b"data: [DONE] \n\n", b"")
    text, errored = client_text(route, out)
    assert not errored and text == "Hello there", out
    (record,) = records(session)
    assert (record["outcome"], record["error"]) == ("ok", None), record


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("extra", [b"data: null\n\n", b"data: [DONE] \n\n"], ids=["null", "done-with-a-space"])
def test_a_null_or_a_spaced_done_inside_the_stream_is_no_unreadable_event(route: Route, extra: bytes) -> None:
    """Neither can carry text: passed on as before (a provider's own quirk for its client)."""
    full = provider_stream(route, ("Hello", " there", " friend"))
    at = _before_second_delta(route, full)
    session = opened(route)
    out = play(session, [full[:at] + extra + full[at:]])
    assert b"provider_event_unreadable" not in out and b"there" in out and b"friend" in out, out
    (record,) = records(session)
    assert record["outcome"] == "ok", record


@pytest.mark.parametrize("route", ROUTES)
def test_the_events_before_an_oversized_one_reach_the_client_translated(route: Route) -> None:
    """A provider's event over 8 MiB ends the client's stream with an error, after the events
    that came with it in the same chunk: a translated stream dropped those (the stream was marked
    failed before the translator saw them), so the client lost text the provider had sent."""
    full = provider_stream(route, ("Hello", " there", " friend"))
    at = full.index(b"data: " if route.provider == "openai" else b"event: ", full.index(b'" there"'))
    session = opened(route)
    closed = b"}}]}\n\n" if route.provider == "openai" else b"}}\n\n"  # (whole: only its size is wrong)
    big = _unreadable(route, "x" * (9 << 20)).replace(b"}\n\n", closed)
    out = play(session, [full[:at] + big + full[at:]])
    assert len(out) < 10_000 and (b"provider_event_too_large" in out or b"8 MiB" in out), out[:500]
    text, errored = client_text(route, out)
    assert errored and text.startswith("Hello"), out[:2000]  # (" there" may be held back: a word in progress)
    (record,) = records(session)
    assert (record["outcome"], record["error"]) == ("error", "provider_event_too_large"), record


@pytest.mark.parametrize("route", OPENAI_SERVED)
def test_a_chunk_whose_keys_are_written_with_escapes_is_guarded(route: Route) -> None:
    """A chunk's JSON may write ``"choices"`` as ``"cho\\u0069ces"``: the same chunk to a client's
    parser, which the guard skipped, looking for the key's bytes."""
    secret, placeholder = SECRETS["email"]
    full = provider_stream(route, ("Hello", " there"))
    at = _before_second_delta(route, full)
    sneaky = (b'data: {"id": "chatcmpl-Ab1", "object": "chat.completion.chunk", "created": 1755000001, '
              b'"model": "gpt-4o-2024-08-06", "cho\\u0069ces": [{"index": 0, "delta": {"content": '
              + orjson.dumps(f" mail {secret} ok") + b'}, "finish_reason": null}]}\n\n')
    session = opened(route)
    out = play(session, [full[:at] + sneaky + full[at:]])
    assert secret.encode() not in out and placeholder.encode() in out, out
    text, errored = client_text(route, out)
    assert not errored and text == f"Hello mail {placeholder} ok there", out
    (record,) = records(session)
    assert record["outcome"] == "ok", record


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("spec", ['{pattern: "(?i)tck-[0-9]{6}"}', '{pattern: "(?i:tck)-[0-9]{6}"}',
                                  '{pattern: "tck-[0-9]{6}", caseless: true}', '{words: [café noir, naïve]}'])
def test_a_custom_value_in_any_case_is_held_back_whole_in_a_stream(route: Route, spec: str) -> None:
    """The characters a stream holds back were those of the pattern read case-sensitively unless
    ``caseless`` was set: ``(?i)tck-…`` streamed as "See TC" | "K-123456 ok" went out unredacted.
    The pattern's own flags count (inline and scoped), and letters beyond ASCII fold too."""
    policy = compile_policy(HEAD + textwrap.dedent(f"""\
        guardrails:
          custom:
            ticket: {spec}
          rules:
            - {{name: t, detectors: [ticket], action: redact}}
    """))
    value = "CAFÉ NOIR" if "words" in spec else "TCK-123456"
    for cut in range(1, len(value)):
        pieces = ("See " + value[:cut], value[cut:] + " ok")
        out = play(opened(route, policy=policy), [provider_stream(route, pieces)])
        assert client_text(route, out) == ("See [TICKET_1] ok", False), pieces
