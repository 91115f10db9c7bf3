"""Metering in the session: pre-send estimates, estimated usage of cut streams, cost."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.core.session import Session
from ext_proc.llm.prices import Price
from ext_proc.llm.usage import TokenEstimate, Usage


class FakeAccountant:
    """Counts words and charges 1 micro-dollar per token: easy to check by hand."""

    def __init__(self) -> None:
        self.priced: list[tuple[str, str, Price | None]] = []

    def count_request(self, api: str, payload: dict[str, Any], model: str) -> TokenEstimate | None:
        words = sum(len(str(m.get("content", "")).split()) for m in payload.get("messages", []))
        return TokenEstimate(words, False, "words")

    def count_text(self, text: str, model: str) -> int | None:
        return len(text.split())

    def cost(
        self, provider_kind: str, model: str, aliases: tuple[str, ...], usage: Usage, override: Price | None
    ) -> tuple[int | None, str | None]:
        self.priced.append((provider_kind, model, override))
        if usage.input_tokens is None or usage.output_tokens is None:
            return None, "fake-1"
        return usage.input_tokens + usage.output_tokens, "fake-1"


def chunk(content: str) -> bytes:
    event = {"model": "gpt-x", "choices": [{"index": 0, "delta": {"content": content}}]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def run(session: Session, events: list[Any]) -> dict[str, Any]:
    for event in events:
        session.handle(event)
    (effect,) = session.effects
    return effect.record  # type: ignore[no-any-return]


def head() -> RequestHeaders:
    return RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 0)


def body(stream: bool) -> RequestBody:
    payload = {"model": "gpt-x", "stream": stream, "messages": [{"role": "user", "content": "one two three four"}]}
    return RequestBody(orjson.dumps(payload), True, 1)


def test_a_cut_stream_is_billed_on_what_was_seen_and_marked_estimated() -> None:
    accountant = FakeAccountant()
    record = run(Session(accountant=accountant), [
        head(), body(True),
        ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, 2),
        ResponseBody(chunk("hello there") + chunk(" toll road"), False, 3),
        StreamClosed(4),  # the provider broke off: no usage chunk, no [DONE]
    ])
    assert record["outcome"] == "incomplete"
    assert (record["input_tokens"], record["input_estimated"]) == (4, True)
    assert (record["output_tokens"], record["output_estimated"]) == (4, True)
    assert (record["cost_usd_micros"], record["price_version"]) == (8, "fake-1")
    assert record["estimated_input_tokens"] == 4
    assert accountant.priced == [("openai", "gpt-x", None)]


def test_reported_usage_wins_and_nothing_is_marked_estimated() -> None:
    reply = orjson.dumps({"model": "gpt-x-2026", "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    record = run(Session(accountant=FakeAccountant()), [
        head(), body(False),
        ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 2),
        ResponseBody(reply, True, 3),
    ])
    assert (record["input_tokens"], record["output_tokens"], record["cost_usd_micros"]) == (10, 5, 15)
    assert not record["input_estimated"] and not record["output_estimated"]
    assert record["estimated_input_tokens"] == 4


def test_the_record_says_which_service_tier_the_answer_was_served_in() -> None:
    reply = orjson.dumps({"model": "gpt-x", "service_tier": "flex", "usage": {"prompt_tokens": 10,
                                                                            "completion_tokens": 5}})
    record = run(Session(accountant=FakeAccountant()), [
        head(), body(False),
        ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 2),
        ResponseBody(reply, True, 3),
    ])
    assert (record["service_tier"], record["cost_usd_micros"]) == ("flex", 15)


def test_without_an_accountant_unknown_stays_unknown() -> None:
    record = run(Session(), [
        head(), body(True),
        ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, 2),
        ResponseBody(chunk("hello"), False, 3),
        StreamClosed(4),
    ])
    assert (record["input_tokens"], record["output_tokens"], record["cost_usd_micros"]) == (None, None, None)


def test_a_refused_request_costs_nothing_and_is_not_priced() -> None:
    accountant = FakeAccountant()
    record = run(Session(accountant=accountant), [head(), RequestBody(b"not json", True, 1)])
    assert record["outcome"] == "rejected" and record["cost_usd_micros"] is None and accountant.priced == []


def test_buffered_answers_can_tell_the_client_its_usage_and_cost() -> None:
    from ext_proc.core.actions import Continue

    reply = orjson.dumps({"model": "gpt-x", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 234_567}})
    session = Session(accountant=FakeAccountant(), usage_headers=True)
    json_head = ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 2)
    for event in (head(), body(False), json_head):
        session.handle(event)
    action = session.handle(ResponseBody(reply, True, 3))
    assert action == Continue(set_headers=(
        ("x-tollway-input-tokens", "1000000"), ("x-tollway-output-tokens", "234567"),
        ("x-tollway-cost-usd", "1.234567"),
    ))


def test_a_later_usage_object_in_a_stream_never_lowers_the_reported_counts() -> None:
    """A provider (or a proxy before it) sending an all-zero usage chunk after the real one: the
    record kept the last (0 tokens, cost 0). Within one stream no count goes down, each API's."""
    from ext_proc.llm.apis import MESSAGES, RESPONSES
    from ext_proc.llm.sse import SSEDecoder

    def usage_chunk(usage: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({"model": "gpt-x", "choices": [], "usage": usage}) + b"\n\n"

    record = run(Session(accountant=FakeAccountant()), [
        head(), body(True),
        ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, 2),
        ResponseBody(chunk("hello") + usage_chunk({"prompt_tokens": 111, "completion_tokens": 222})
                     + usage_chunk({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
                     + usage_chunk({}) + b"data: [DONE]\n\n", True, 3),
    ])
    assert (record["outcome"], record["input_tokens"], record["output_tokens"]) == ("ok", 111, 222), record
    assert record["cost_usd_micros"] == 333

    def read(api: Any, stream: bytes) -> Usage:
        reader = api.reader()
        for event in SSEDecoder().feed(stream):
            reader.feed(event)
        return reader.usage  # type: ignore[no-any-return]

    def delta(usage: dict[str, Any]) -> bytes:
        return b"event: message_delta\ndata: " + orjson.dumps(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}) + b"\n\n"

    start = b"event: message_start\ndata: " + orjson.dumps({"type": "message_start", "message": {
        "model": "claude-x", "usage": {"input_tokens": 111, "output_tokens": 1}}}) + b"\n\n"
    usage = read(MESSAGES, start + delta({"output_tokens": 222}) + delta({"input_tokens": 0,
                                                                                    "output_tokens": 0}))
    assert (usage.input_tokens, usage.output_tokens) == (111, 222)

    def done(kind: str, usage: dict[str, Any]) -> bytes:
        response = {"model": "gpt-x", "status": "completed", "output": [], "usage": usage}
        return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, "response": response}) + b"\n\n"

    usage = read(RESPONSES, done("response.completed", {"input_tokens": 111, "output_tokens": 222})
                 + done("response.completed", {"input_tokens": 0, "output_tokens": 0}))
    assert (usage.input_tokens, usage.output_tokens) == (111, 222)
