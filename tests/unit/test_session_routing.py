"""The router-level session with routing aliases: chain labels, and answers translated for the client.

A request for an alias with fallback leaves with its chain (dynamic metadata) and the chain's
cluster; the answer comes back with the endpoint that served it (``tollway.slot`` host metadata)
and the number of tries, and is translated into the client's API when the serving provider
speaks the other one (JSON, SSE streams and errors). A single target is rewritten by the
session itself.
"""

from __future__ import annotations

from typing import Any

import anthropic.types
import openai.types.chat
import orjson
import pydantic
import pytest

from ext_proc.core import upstream
from ext_proc.core.actions import CONTINUE, Continue, EmitRecord, Respond
from ext_proc.core.attempt import Attempt
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.core.session import Session
from ext_proc.llm import apis
from ext_proc.llm.sse import SSEDecoder
from ext_proc.policy import decide
from ext_proc.policy.compile import compile_policy
from ext_proc.server import codec
from ext_proc.server.accounting import ServiceAccountant
from ext_proc.state import rows
from tests.unit.test_attempt import ANTHROPIC, OPENAI, POLICY, POLICY_TEXT, SMART, host_metadata, try_head
from tests.unit.transcript import Record, Replaces, Transcript

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
CHAIN_METADATA = (
    (upstream.TARGETS, SMART), (upstream.CLIENT_PATH, CHAT), (upstream.ALIAS, "smart"), (upstream.TEAM, "all"),
    (upstream.CLIENT, "openai"), (upstream.POLICY, POLICY.version),
)
CHAIN_HEADERS = (("x-tollway-cluster", "openai+anthropic"), (upstream.RETRIES_HEADER, "1"))
CHAT_REQUEST: dict[str, Any] = {
    "model": "smart",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
}
ANTHROPIC_MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x-20250101",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 100, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200,
              "output_tokens": 50},
}
OPENAI_COMPLETION = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
              "prompt_tokens_details": {"cached_tokens": 2}},
}


@pytest.fixture(scope="module")
def accountant() -> ServiceAccountant:
    return ServiceAccountant()


def head(path: str = CHAT, **headers: str) -> RequestHeaders:
    return RequestHeaders({":method": "POST", ":path": path, "x-request-id": "r1", **headers}, False, 0)


def body(value: Any) -> RequestBody:
    return RequestBody(orjson.dumps(value), True, 1_000_000)


def served(status: int = 200, slot: int | None = 1, attempts: str | None = "2",
           content_type: str = "application/json") -> ResponseHeaders:
    attributes = {}
    if slot is not None:
        attributes[codec.HOST_METADATA] = host_metadata(slot, "anthropic" if slot else "openai")
    if attempts is not None:
        attributes[codec.ATTEMPTS_ATTRIBUTE] = attempts
    return ResponseHeaders({":status": str(status), "content-type": content_type}, False, 2_000_000,
                           codec.upstream_of(attributes))


SLOT_1_TOLD = Continue(set_headers=(
    ("x-tollway-provider", "anthropic"), ("x-tollway-model", "claude-x"), ("x-tollway-attempts", "2"),
))


def sent(session: Session, request: Any, path: str = CHAT) -> Continue:
    """Open ``session`` with a request; the action answering its body."""
    assert isinstance(session.handle(head(path)), Continue)
    action = session.handle(body(request))
    assert isinstance(action, Continue), action
    return action


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def feed(session: Session, chunks: list[bytes]) -> bytes:
    """Stream ``chunks`` (the last ends the stream); the bytes the client receives."""
    out = b""
    for index, chunk in enumerate(chunks):
        action = session.handle(ResponseBody(chunk, index == len(chunks) - 1, 3_000_000 + index))
        assert isinstance(action, Continue) and not action.set_headers, action
        out += chunk if action.body is None else action.body
    return out


def events(stream: bytes) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    return [(e.event, e.data) for e in decoder.feed(stream) + decoder.flush() if e.data]


def the_record(session: Session) -> dict[str, Any]:
    records = [e.record for e in session.effects if isinstance(e, EmitRecord)]
    assert len(records) == 1, records
    return records[0]


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def chunk(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


ANTHROPIC_HEAD = [
    sse("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x-20250101", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0,
                  "output_tokens": 1}}}),
    sse("content_block_start", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
    sse("ping", {"type": "ping"}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "Hel"}}),
]
ANTHROPIC_TAIL = [
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "lo"}}),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                          "usage": {"output_tokens": 7}}),
    sse("message_stop", {"type": "message_stop"}),
]
ANTHROPIC_STREAM = b"".join(ANTHROPIC_HEAD + ANTHROPIC_TAIL)

_BASE = {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o"}
OPENAI_CHUNKS = [
    chunk({**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    chunk({**_BASE, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}),
    chunk({**_BASE, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]}),
    chunk({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    chunk({**_BASE, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}),
]
OPENAI_STREAM = b"".join(OPENAI_CHUNKS) + b"data: [DONE]\n\n"


# -- the request: a chain's labels --------------------------------------------------------------


def test_an_alias_with_fallback_leaves_with_its_chain() -> None:
    assert (
        Transcript(Session(POLICY, "local-dev"))
        >> head(**{"x-envoy-max-retries": "5", "authorization": "Bearer sk-client", "x-envoy-is-timeout-retry": "true",
                   "x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "1"})
        << Continue(remove_headers=("authorization", "accept-encoding", "x-tollway-cluster", "x-envoy-max-retries",
                                    "x-envoy-is-timeout-retry", "x-envoy-retry-on", "x-envoy-upstream-rq-timeout-ms"))
        >> body(CHAT_REQUEST)
        << Continue(set_headers=CHAIN_HEADERS, clear_route_cache=True, metadata=CHAIN_METADATA)  # no credential
    )


def test_a_stream_also_takes_the_streaming_route() -> None:
    request = {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}}
    assert (
        Transcript(Session(POLICY, "local-dev"))
        >> head()
        << Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))
        >> body(request)
        << Continue(set_headers=(*CHAIN_HEADERS, ("x-tollway-stream", "1")), clear_route_cache=True,
                    metadata=CHAIN_METADATA)
    )


def test_a_stream_without_usage_asks_for_it_and_keeps_the_chain() -> None:
    action = sent(Session(POLICY, "local-dev"), {**CHAT_REQUEST, "stream": True})
    assert action.set_headers[:3] == (*CHAIN_HEADERS, ("x-tollway-stream", "1"))
    assert action.set_headers[3] == ("content-length", str(len(action.body or b"")))
    assert orjson.loads(action.body or b"") == {**CHAT_REQUEST, "stream": True,
                                                "stream_options": {"include_usage": True}}
    assert action.metadata == CHAIN_METADATA and action.credential is None and action.clear_route_cache


def test_an_anthropic_client_chain_carries_its_own_path() -> None:
    action = sent(Session(POLICY, "local-dev"), {"model": "smart", "max_tokens": 10, "stream": True,
                                                 "messages": [{"role": "user", "content": "Hi"}]}, MESSAGES)
    assert action == Continue(
        set_headers=(*CHAIN_HEADERS, ("x-tollway-stream", "1")), clear_route_cache=True,
        metadata=((upstream.TARGETS, SMART), (upstream.CLIENT_PATH, MESSAGES), (upstream.ALIAS, "smart"),
                  (upstream.TEAM, "all"), (upstream.CLIENT, "anthropic"), (upstream.POLICY, POLICY.version)),
    )


def test_a_target_whose_api_cannot_express_the_request_is_left_out_of_the_chain() -> None:
    """`n: 2` cannot be asked of Claude: the alias's OpenAI target alone serves it (rewritten here,
    its own cluster, no chain), rather than Envoy falling back to a try that answers a 400."""
    action = sent(Session(POLICY, "local-dev"), {**CHAT_REQUEST, "n": 2})
    assert ("x-tollway-cluster", "openai") in action.set_headers and action.metadata == ()
    assert action.credential is OPENAI and orjson.loads(action.body or b"")["model"] == "gpt-4o"
    # An Anthropic client's server tool has no counterpart in chat completions: Claude alone serves it.
    searching = {"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": "News?"}],
                 "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    claude = sent(Session(POLICY, "local-dev"), searching, MESSAGES)
    assert ("x-tollway-cluster", "anthropic") in claude.set_headers and claude.credential is ANTHROPIC
    # No target can: the chain stays whole, and its first try says why (in the target's format).
    plan = POLICY.aliases["smart"].plan
    assert decide.chain(plan, apis.CHAT_COMPLETIONS, None, "smart", expresses=lambda target: False) == plan.targets


def test_leaving_out_a_target_never_changes_the_request() -> None:
    request = {**CHAT_REQUEST, "n": 2, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    before = orjson.dumps(request)
    assert [upstream.expresses(apis.CHAT_COMPLETIONS, request, target)
            for target in POLICY.aliases["smart"].plan.targets] == [True, False]
    assert orjson.dumps(request) == before


def test_the_chain_metadata_finds_the_targets_in_the_attempt() -> None:
    """What the router-level session sends is what the attempt reads."""
    action = sent(Session(POLICY, "b-app"), CHAT_REQUEST)
    metadata = dict(action.metadata)
    assert metadata[upstream.TEAM] == "b"
    attempt = Attempt(POLICY)
    event = try_head(1)
    attributes = {**{f"tollway.{key}": value for key, value in metadata.items()}}
    attempt.handle(RequestHeaders(event.headers, False, 0, attributes, event.upstream))
    rewritten = attempt.handle(body(CHAT_REQUEST))
    assert isinstance(rewritten, Continue)
    assert orjson.loads(rewritten.body or b"")["max_tokens"] == 2000  # team b's own plan


# -- the answer, buffered -----------------------------------------------------------------------


def test_a_fallback_answer_from_anthropic_reaches_an_openai_client_as_a_chat_completion(
    accountant: ServiceAccountant,
) -> None:
    session = Session(POLICY, "local-dev", accountant)
    sent(session, CHAT_REQUEST)
    assert session.handle(served()) == CONTINUE  # a buffered answer's head waits for its body
    action = session.handle(ResponseBody(orjson.dumps(ANTHROPIC_MESSAGE), True, 3_000_000))
    assert isinstance(action, Continue) and action.body is not None
    assert action.set_headers == (
        *SLOT_1_TOLD.set_headers, ("content-type", "application/json"), ("content-length", str(len(action.body)))
    )
    completion = openai.types.chat.ChatCompletion.model_validate(orjson.loads(action.body))
    assert completion.choices[0].message.content == "Hello!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1300, 50)
    record = the_record(session)
    expected = {
        "provider": "anthropic", "attempts": 2, "fallback": True, "status": 200, "outcome": "ok", "error": None,
        "model": "smart", "served_model": "claude-x-20250101", "upstream_model": "claude-x",
        "input_tokens": 1300, "output_tokens": 50, "cached_tokens": 1000, "cache_write_tokens": 200,
        # the target's own price: 100 x 3 + 50 x 15 + 1000 x 0.30 + 200 x 3.75 micro-dollars
        "cost_usd_micros": 2100, "price_version": "policy",
    }
    assert {key: record[key] for key in expected} == expected


def test_the_first_target_answers_unchanged(accountant: ServiceAccountant) -> None:
    session = Session(POLICY, "local-dev", accountant)
    sent(session, CHAT_REQUEST)
    assert session.handle(served(slot=0, attempts="1")) == CONTINUE
    told = session.handle(ResponseBody(orjson.dumps(OPENAI_COMPLETION), True, 3_000_000))
    assert told == Continue(set_headers=(("x-tollway-provider", "openai"), ("x-tollway-model", "gpt-4o"),
                                         ("x-tollway-attempts", "1")))  # the body passes unchanged
    record = the_record(session)
    assert (record["provider"], record["attempts"], record["fallback"]) == ("openai", 1, False)
    assert (record["model"], record["upstream_model"]) == ("smart", "gpt-4o")  # the target that served
    assert (record["input_tokens"], record["output_tokens"], record["cached_tokens"]) == (12, 3, 2)
    assert record["cost_usd_micros"] == 60  # gpt-4o's policy price: 12 x 2.50 + 3 x 10


# -- the answer, streamed -----------------------------------------------------------------------


def openai_chunks(stream: bytes) -> list[dict[str, Any]]:
    found = events(stream)
    assert found[-1] == ("", b"[DONE]"), found[-3:]
    chunks = [orjson.loads(data) for _, data in found[:-1]]
    for item in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(item)
    return chunks


@pytest.mark.parametrize("size", [7, 1, 4096])
def test_a_fallback_stream_from_anthropic_reaches_an_openai_client_as_chunks(size: int) -> None:
    session = Session(POLICY, "local-dev")
    sent(session, {**CHAT_REQUEST, "stream": True})  # the client did not ask for usage
    told = session.handle(served(content_type="text/event-stream"))
    assert told == Continue(set_headers=SLOT_1_TOLD.set_headers, stream_response=True)
    chunks = openai_chunks(feed(session, split(ANTHROPIC_STREAM, size)))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert all(c["choices"] and c.get("usage") is None for c in chunks)  # no usage chunk: not asked for
    record = the_record(session)
    expected = {"provider": "anthropic", "fallback": True, "attempts": 2, "outcome": "ok", "error": None,
                "input_tokens": 25, "output_tokens": 7, "cached_tokens": 5, "served_model": "claude-x-20250101"}
    assert {key: record[key] for key in expected} == expected


def test_a_client_that_asked_for_usage_gets_the_usage_chunk() -> None:
    session = Session(POLICY, "local-dev")
    sent(session, {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}})
    session.handle(served(content_type="text/event-stream"))
    chunks = openai_chunks(feed(session, split(ANTHROPIC_STREAM, 7)))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 25 and chunks[-1]["usage"]["completion_tokens"] == 7
    assert all(c["choices"] for c in chunks[:-1])
    assert the_record(session)["output_tokens"] == 7


# -- an Anthropic client served by OpenAI: the session rewrites the request itself --------------

ANTHROPIC_REQUEST = {"model": "gpt-4o", "max_tokens": 100, "system": "Be brief.",
                     "messages": [{"role": "user", "content": "Hi"}]}
OPENAI_TOLD = Continue(set_headers=(("x-tollway-provider", "openai"), ("x-tollway-model", "gpt-4o")))


def test_an_anthropic_request_for_an_openai_model_is_translated() -> None:
    transcript = Transcript(Session(POLICY, "local-dev"))
    assert (
        transcript
        >> head(MESSAGES, **{"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01"})
        << Continue(remove_headers=("x-api-key", "accept-encoding", "x-tollway-cluster"))
        >> body(ANTHROPIC_REQUEST)
        << Replaces(
            {"model": "gpt-4o", "max_completion_tokens": 100,
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
            set_headers=(("x-tollway-cluster", "openai"), (":path", CHAT)),
            remove_headers=("anthropic-version",),  # the client's own API's header: not OpenAI's
            clear_route_cache=True,
        )
    )
    action = transcript.actions[-1]
    assert isinstance(action, Continue) and action.credential == OPENAI
    assert action.metadata == ((upstream.CLIENT, "anthropic"),)  # the client's family, for Envoy's own errors


def test_a_translated_request_leaves_the_clients_family_headers_behind() -> None:
    """The SDK's headers of its own API (its version, its betas, its organisation) describe the
    client's API, not the provider's: a provider of another family never gets them."""
    session = Session(POLICY, "local-dev")
    anthropic = {"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024"}
    session.handle(head(MESSAGES, **anthropic))
    action = session.handle(body(ANTHROPIC_REQUEST))
    assert isinstance(action, Continue) and {"anthropic-version", "anthropic-beta"} <= set(action.remove_headers)
    session = Session(POLICY, "local-dev")
    openai = {"authorization": "Bearer sk-client", "openai-organization": "org-1", "openai-beta": "assistants=v2"}
    session.handle(head(CHAT, **openai))
    action = session.handle(body({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}))
    assert isinstance(action, Continue)  # served by OpenAI itself: its own headers stay
    assert not {"openai-organization", "openai-beta"} & set(action.remove_headers)


def test_an_openai_answer_reaches_an_anthropic_client_as_a_message(accountant: ServiceAccountant) -> None:
    session = Session(POLICY, "local-dev", accountant)
    sent(session, ANTHROPIC_REQUEST, MESSAGES)
    assert session.handle(served(slot=None, attempts=None)) == CONTINUE
    action = session.handle(ResponseBody(orjson.dumps(OPENAI_COMPLETION), True, 3_000_000))
    assert isinstance(action, Continue) and action.body is not None
    assert dict(action.set_headers)["content-length"] == str(len(action.body))
    assert action.set_headers[:2] == OPENAI_TOLD.set_headers
    message = anthropic.types.Message.model_validate(orjson.loads(action.body))
    assert message.content[0].type == "text" and message.content[0].text == "Hello!"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        10, 2, 3)
    record = the_record(session)
    expected = {"provider": "openai", "attempts": None, "fallback": False, "outcome": "ok", "api": "anthropic.messages",
                "input_tokens": 12, "output_tokens": 3, "cached_tokens": 2, "cost_usd_micros": 60}
    assert {key: record[key] for key in expected} == expected


def test_an_openai_stream_reaches_an_anthropic_client_as_events() -> None:
    session = Session(POLICY, "local-dev")
    action = sent(session, {**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    assert orjson.loads(action.body or b"")["stream_options"] == {"include_usage": True}
    told = session.handle(served(slot=None, attempts=None, content_type="text/event-stream"))
    assert told == Continue(set_headers=OPENAI_TOLD.set_headers, stream_response=True)
    found = events(feed(session, split(OPENAI_STREAM, 5)))
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
    parsed = [adapter.validate_python(orjson.loads(data)) for _, data in found]
    assert [name for name, _ in found] == [p.type for p in parsed]
    assert [p.type for p in parsed] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert "".join(p.delta.text for p in parsed if p.type == "content_block_delta") == "Hello"
    record = the_record(session)
    assert (record["outcome"], record["input_tokens"], record["output_tokens"]) == ("ok", 12, 3)


# -- an OpenAI client's legacy functions served by Claude ---------------------------------------

LEGACY_REQUEST: dict[str, Any] = {
    "model": "claude-x", "messages": [{"role": "user", "content": "What time is it?"}],
    "functions": [{"name": "now", "parameters": {"type": "object", "properties": {}}}],
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["claude-x", "smart"])  # translated by the session's rewrite, or by the try
def test_a_client_of_legacy_functions_gets_the_call_as_a_function_call(model: str, stream: bool) -> None:
    """The answer's shape depends on the client's request, which the rewrite step replaces with
    Claude's for a single target: the translation still sees the client's."""
    from tests.unit.test_translate_openai_to_anthropic import NO_ARGUMENTS

    session = Session(POLICY, "local-dev")
    sent(session, {**LEGACY_REQUEST, "model": model, "stream": stream})
    chain = model == "smart"
    if not stream:
        assert session.handle(served(slot=1 if chain else None, attempts="2" if chain else None)) == CONTINUE
        answer = {**ANTHROPIC_MESSAGE, "stop_reason": "tool_use",
                  "content": [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]}
        action = session.handle(ResponseBody(orjson.dumps(answer), True, 3_000_000))
        assert isinstance(action, Continue) and action.body is not None
        choice = openai.types.chat.ChatCompletion.model_validate(orjson.loads(action.body)).choices[0]
        message = choice.message
        assert (choice.finish_reason, message.tool_calls, message.content) == ("function_call", None, None)
        assert message.function_call is not None
        assert (message.function_call.name, message.function_call.arguments) == ("now", "{}")
        return
    session.handle(served(slot=1 if chain else None, attempts="2" if chain else None,
                          content_type="text/event-stream"))
    chunks = openai_chunks(feed(session, [sse(name, data) for name, data in NO_ARGUMENTS]))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[:2] == [{"role": "assistant", "content": None, "function_call": {"name": "now", "arguments": ""}},
                          {"function_call": {"arguments": "{}"}}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


# -- errors -------------------------------------------------------------------------------------


def test_an_anthropic_429_reaches_an_openai_client_in_openais_format() -> None:
    transcript = Transcript(Session(POLICY, "local-dev"))
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down."}}
    assert (
        transcript
        >> head() << Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))
        >> body(CHAT_REQUEST) << Continue(set_headers=CHAIN_HEADERS, clear_route_cache=True, metadata=CHAIN_METADATA)
        >> served(429) << CONTINUE
        >> ResponseBody(orjson.dumps(error), True, 3_000_000)
        # the status stays 429 (no :status is set); only the body and its size change
        << Replaces({"error": {"message": "Slow down.", "type": "requests", "param": None,
                               "code": "rate_limit_exceeded"}},
                    set_headers=(*SLOT_1_TOLD.set_headers, ("content-type", "application/json")))
        # the chain's last target answered an error too: no fallback (none served it)
        << Record(status=429, outcome="error", error="rate_limit_error", provider="anthropic", fallback=False)
    )


def test_an_openai_error_reaches_an_anthropic_client_in_anthropics_format() -> None:
    session = Session(POLICY, "local-dev")
    sent(session, ANTHROPIC_REQUEST, MESSAGES)
    session.handle(served(500, slot=None, attempts=None))
    error = {"error": {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}}
    action = session.handle(ResponseBody(orjson.dumps(error), True, 3_000_000))
    assert isinstance(action, Continue)
    assert orjson.loads(action.body or b"") == {"type": "error", "error": {
        "type": "api_error", "message": "The server had an error."}}
    assert the_record(session)["status"] == 500


@pytest.mark.parametrize(
    ("path", "request_body", "expected"),
    [
        (CHAT, CHAT_REQUEST, {"error": {"message": "The provider did not answer: no healthy upstream",
                                        "type": "server_error", "param": None, "code": "provider_unavailable"}}),
        (MESSAGES, {**ANTHROPIC_REQUEST, "model": "smart"}, {"type": "error", "error": {
            "type": "api_error", "message": "The provider did not answer: no healthy upstream"}}),
    ],
)
def test_envoys_plain_text_503_becomes_the_clients_json_error(path: str, request_body: Any, expected: Any) -> None:
    session = Session(POLICY, "local-dev")
    sent(session, request_body, path)
    session.handle(served(503, slot=None, attempts="2", content_type="text/plain"))
    action = session.handle(ResponseBody(b"no healthy upstream", True, 3_000_000))
    assert action == Replaces(expected, set_headers=(("content-type", "application/json"),))
    record = the_record(session)
    assert (record["status"], record["outcome"], record["error"], record["attempts"]) == (
        503, "error", "provider_unavailable", 2)


ENVOY_503 = {"error": {"code": "no_healthy_upstream", "param": None, "type": "server_error",
                       "message": "Tollway gateway error (no_healthy_upstream): no healthy upstream"}}
ENVOY_503_ANTHROPIC = {"type": "error", "error": {"type": "api_error", "code": "no_healthy_upstream",
                                                  "message": "Tollway gateway error (no_healthy_upstream): no healthy "
                                                             "upstream"}}
NOT_REACHED = ("Tollway could not reach provider 'openai' at api.openai.com:443: no healthy upstream: its host name "
               "did not resolve (yet), or no connection to it succeeded (Envoy's no_healthy_upstream). Check this "
               "machine's network, DNS and proxy: Envoy connects to the provider directly (it does not use HTTP_PROXY "
               "or HTTPS_PROXY).")


@pytest.mark.parametrize(("path", "request_body", "envoys", "expected"), [
    (CHAT, {**CHAT_REQUEST, "model": "gpt-4o"}, ENVOY_503,
     {"error": {"message": NOT_REACHED, "type": "server_error", "param": None, "code": "no_healthy_upstream"}}),
    (MESSAGES, ANTHROPIC_REQUEST, ENVOY_503_ANTHROPIC, {"type": "error", "error": {"type": "api_error",
                                                                                   "message": NOT_REACHED}}),
], ids=["openai", "anthropic-client"])
def test_envoys_own_503_names_the_provider_where_it_is_reached_and_what_to_check(
    path: str, request_body: Any, envoys: Any, expected: Any
) -> None:
    """Envoy's bare "no healthy upstream" (as the bootstrap's local_reply_config writes it) is explained in
    the client's format, its status and code kept."""
    session = Session(POLICY, "local-dev")
    sent(session, request_body, path)
    session.handle(served(503, slot=None, attempts="1"))
    action = session.handle(ResponseBody(orjson.dumps(envoys), True, 3_000_000))
    assert isinstance(action, Continue) and orjson.loads(action.body or b"") == expected
    record = the_record(session)
    assert (record["status"], record["error"], record["provider"]) == (503, "no_healthy_upstream", "openai")


def test_envoys_own_503_under_tollway_up_names_the_stand_in_or_how_to_use_it() -> None:
    refused = {"error": {"code": "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_"
                                 "error:_Connection_refused}", "param": None, "type": "server_error",
                         "message": "Tollway gateway error (upstream_reset_before_response_started{remote_connection_"
                                    "failure|delayed_connect_error:_Connection_refused}): upstream connect error or "
                                    "disconnect/reset before headers. reset reason: remote connection failure"}}
    for stand_ins, words in (
        ({}, "provider 'openai' at api.openai.com:443: the connection was refused (nothing listens there). Check "
             "this machine's network, DNS and proxy: Envoy connects to the provider directly (it does not use "
             "HTTP_PROXY or HTTPS_PROXY). To use tollway up's fake provider instead, unset OPENAI_API_KEY and start "
             "make run again."),
        ({"openai": "http://127.0.0.1:18080"},
         "provider 'openai' (its stand-in, 127.0.0.1:18080): the connection was refused (nothing listens there). Is "
         "the stand-in running (under tollway up, the fake provider: see mock.log in its workdir)?"),
    ):
        session = Session(POLICY, "local-dev", stand_ins=lambda stand_ins=stand_ins: stand_ins, stand_in_missing=True)
        sent(session, {**CHAT_REQUEST, "model": "gpt-4o"})
        session.handle(served(503, slot=None, attempts="1"))
        action = session.handle(ResponseBody(orjson.dumps(refused), True, 3_000_000))
        assert isinstance(action, Continue)
        assert orjson.loads(action.body or b"")["error"]["message"] == f"Tollway could not reach {words}"


def test_a_chain_idle_too_long_with_a_try_in_flight_names_the_tried_target_and_counts_it_abandoned() -> None:
    """Envoy's 504 stream_idle_timeout after its first try of a chain (it never asked the second):
    the message names only the provider it tried, and that try, sent with no answer, is abandoned
    (the provider may bill it), as a try ended at its first-byte timeout is; not a provider's error."""
    idle = {"error": {"code": "stream_idle_timeout", "param": None, "type": "server_error",
                      "message": "Tollway gateway error (stream_idle_timeout): stream timeout"}}
    session = Session(POLICY, "local-dev")
    sent(session, CHAT_REQUEST)
    session.handle(served(504, slot=0, attempts="1"))
    action = session.handle(ResponseBody(orjson.dumps(idle), True, 3_000_000))
    assert isinstance(action, Continue)
    message = orjson.loads(action.body or b"")["error"]["message"]
    assert message.startswith("Tollway could not reach provider 'openai' at api.openai.com:443 (tried 1 of the 2 "
                              "targets of 'smart'): it did not answer in time (stream_idle_timeout)."), message
    assert "anthropic" not in message
    record = the_record(session)
    assert (record["status"], record["error"], record["attempts"]) == (504, "stream_idle_timeout", 1)
    assert record["abandoned_tries"] == 1 and [t["provider"] for t in record["abandoned"]] == ["openai"]
    assert not rows.error_answer(record)


def test_a_client_leaving_a_chain_before_its_answers_head_names_no_provider() -> None:
    """Envoy says which target it tried, and how many times, only with the answer's head; the client
    left before it (its first target abandoned, perhaps, and its second in flight): the record does
    not name the first target as the one that served, nor say there was no fallback, but that the
    tries are unknown (still a request that went upstream, whose usage is unknown)."""
    session = Session(POLICY, "local-dev")
    sent(session, CHAT_REQUEST)
    assert session.handle(StreamClosed(5_000_000)) is None
    record = the_record(session)
    assert (record["provider"], record["attempts"], record["fallback"], record["outcome"], record["status"]) == (
        None, None, None, "incomplete", None)
    assert record["upstream_model"] is None  # no target known to have served, as no provider
    assert record["tries_unknown"] is True and "abandoned_tries" not in record
    assert rows.went_upstream(record)
    # One target: Envoy can only have tried it.
    single = Session(POLICY, "local-dev")
    sent(single, {**CHAT_REQUEST, "model": "gpt-4o"})
    single.handle(StreamClosed(5_000_000))
    record = the_record(single)
    assert record["provider"] == "openai" and "tries_unknown" not in record
    assert record["upstream_model"] == "gpt-4o"


def test_a_providers_own_503_is_passed_on_as_it_said_it() -> None:
    session = Session(POLICY, "local-dev")
    sent(session, {**CHAT_REQUEST, "model": "gpt-4o"})
    session.handle(served(503, slot=None, attempts="1"))
    own = {"error": {"message": "The engine is currently overloaded.", "type": "server_error", "param": None,
                     "code": None}}
    action = session.handle(ResponseBody(orjson.dumps(own), True, 3_000_000))
    assert action is CONTINUE or (isinstance(action, Continue) and action.body is None)


def test_an_attempts_own_refusal_is_translated_like_a_provider_error() -> None:
    """The attempt answers a request the translation refuses in Anthropic's format (a field of a
    type OpenAI's API does not allow, which OpenAI, tried first, would judge itself); the client
    reads OpenAI's."""
    request = {**CHAT_REQUEST, "stop": 5}
    attempt = Attempt(POLICY)
    attempt.handle(try_head(1))
    refusal = attempt.handle(body(request))
    assert refusal is not None and not isinstance(refusal, Continue)
    session = Session(POLICY, "local-dev")
    sent(session, request)
    session.handle(served(refusal.status))
    action = session.handle(ResponseBody(refusal.body, True, 3_000_000))
    assert isinstance(action, Continue)
    error = orjson.loads(action.body or b"")["error"]
    assert error["type"] == "invalid_request_error" and "'stop'" in error["message"], error
    assert the_record(session)["status"] == 400


# -- streams that end before they are complete --------------------------------------------------

OPENAI_INTERRUPTED = {"error": {"message": "The provider's stream ended before the response was complete.",
                                "type": "server_error", "param": None, "code": "stream_interrupted"}}
ANTHROPIC_INTERRUPTED = {"type": "error", "error": {
    "type": "api_error", "message": "The provider's stream ended before the response was complete."}}


def test_a_cut_anthropic_stream_ends_with_an_openai_error_chunk(accountant: ServiceAccountant) -> None:
    session = Session(POLICY, "local-dev", accountant)
    sent(session, {**CHAT_REQUEST, "stream": True})
    session.handle(served(content_type="text/event-stream"))
    stream = feed(session, split(b"".join(ANTHROPIC_HEAD), 7))
    found = events(stream)
    assert found[-1] == ("", orjson.dumps(OPENAI_INTERRUPTED))
    assert ("", b"[DONE]") not in found
    assert stream.endswith(b"data: " + orjson.dumps(OPENAI_INTERRUPTED) + b"\n\n")
    for _, data in found[:-1]:
        openai.types.chat.ChatCompletionChunk.model_validate(orjson.loads(data))
    record = the_record(session)
    # The input count message_start reported stays; the output, never reported (its 1 there is a
    # placeholder), is counted from the text streamed ("Hel"), and marked so.
    expected = {"outcome": "incomplete", "error": "stream_interrupted", "provider": "anthropic",
                "input_tokens": 25, "input_estimated": False, "output_tokens": 1, "output_estimated": True,
                "cached_tokens": 5}
    assert {key: record[key] for key in expected} == expected


def test_a_providers_own_error_event_ends_the_stream_alone(accountant: ServiceAccountant) -> None:
    """Claude says `overloaded_error` mid-stream: the OpenAI client gets that error, translated,
    and nothing after it (no second error telling it the stream was cut)."""
    session = Session(POLICY, "local-dev", accountant)
    sent(session, {**CHAT_REQUEST, "stream": True})
    session.handle(served(content_type="text/event-stream"))
    overloaded = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    found = events(feed(session, split(b"".join(ANTHROPIC_HEAD) + overloaded, 7)))
    errors = [orjson.loads(data) for _, data in found if b'"error"' in data]
    assert len(errors) == 1 and errors[0]["error"]["message"] == "Overloaded"
    assert found[-1][1] == orjson.dumps(errors[0])
    assert the_record(session)["error"] == "overloaded_error"


def test_a_cut_openai_stream_ends_with_an_error_chunk_and_keeps_its_usage() -> None:
    session = Session(POLICY, "local-dev")
    sent(session, {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}})
    session.handle(served(slot=0, attempts="1", content_type="text/event-stream"))
    upstream_bytes = b"".join(OPENAI_CHUNKS)  # the usage chunk came, [DONE] did not
    stream = feed(session, split(upstream_bytes, 9))
    assert stream == upstream_bytes + b"data: " + orjson.dumps(OPENAI_INTERRUPTED) + b"\n\n"
    record = the_record(session)
    expected = {"outcome": "incomplete", "error": "stream_interrupted", "provider": "openai", "fallback": False,
                "input_tokens": 12, "output_tokens": 3}
    assert {key: record[key] for key in expected} == expected


def test_a_cut_anthropic_stream_ends_with_an_anthropic_error_event() -> None:
    session = Session(POLICY, "local-dev")
    sent(session, {**ANTHROPIC_REQUEST, "model": "claude-x", "stream": True}, MESSAGES)
    session.handle(served(slot=None, attempts=None, content_type="text/event-stream"))
    upstream_bytes = b"".join(ANTHROPIC_HEAD + ANTHROPIC_TAIL[:3])  # message_delta came, message_stop did not
    stream = feed(session, split(upstream_bytes, 7))
    assert stream == upstream_bytes + b"event: error\ndata: " + orjson.dumps(ANTHROPIC_INTERRUPTED) + b"\n\n"
    record = the_record(session)
    expected = {"outcome": "incomplete", "error": "stream_interrupted", "provider": "anthropic",
                "input_tokens": 25, "output_tokens": 7}
    assert {key: record[key] for key in expected} == expected


def test_a_cut_openai_stream_ends_with_an_anthropic_error_event(accountant: ServiceAccountant) -> None:
    session = Session(POLICY, "local-dev", accountant)
    sent(session, {**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    session.handle(served(slot=None, attempts=None, content_type="text/event-stream"))
    stream = feed(session, split(b"".join(OPENAI_CHUNKS[:3]), 6))  # no finish reason, no usage, no [DONE]
    found = events(stream)
    assert found[-1] == ("error", orjson.dumps(ANTHROPIC_INTERRUPTED))
    assert "message_stop" not in [name for name, _ in found]
    record = the_record(session)
    assert (record["outcome"], record["error"]) == ("incomplete", "stream_interrupted")
    # no usage came: the pre-send estimate and the streamed text stand in, marked as estimates
    assert record["input_estimated"] and record["output_estimated"]
    assert record["input_tokens"] == record["estimated_input_tokens"] and record["output_tokens"] >= 1


def test_an_openai_stream_done_without_a_finish_reason_is_cut_for_an_anthropic_client() -> None:
    """Text, no finish reason, then ``[DONE]``: the chat stream ended, its answer did not. The
    Anthropic client has no stop reason, usage nor ``message_stop`` to get (its stream just
    stopped, and the record said ``ok``): it gets the error event, the record says incomplete.
    A chat client gets the provider's stream as it is, ``[DONE]`` its end (no error appended)."""
    cut = b"".join(OPENAI_CHUNKS[:3]) + b"data: [DONE]\n\n"
    session = Session(POLICY, "local-dev")
    sent(session, {**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    session.handle(served(slot=None, attempts=None, content_type="text/event-stream"))
    found = events(feed(session, split(cut, 6)))
    assert found[-1] == ("error", orjson.dumps(ANTHROPIC_INTERRUPTED))
    assert not {"message_delta", "message_stop"} & {name for name, _ in found}
    assert (the_record(session)["outcome"], the_record(session)["error"]) == ("incomplete", "stream_interrupted")
    chat = Session(POLICY, "local-dev")
    sent(chat, {**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}})
    chat.handle(served(slot=0, attempts="1", content_type="text/event-stream"))
    assert feed(chat, split(cut, 6)) == cut
    assert (the_record(chat)["outcome"], the_record(chat)["error"]) == ("ok", None)


@pytest.mark.parametrize(
    ("path", "request_body", "upstream_bytes", "expected"),
    [
        (CHAT, {**CHAT_REQUEST, "model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
         b"".join(OPENAI_CHUNKS[:2]) + OPENAI_CHUNKS[2][:25], ("", orjson.dumps(OPENAI_INTERRUPTED))),
        (CHAT, {**CHAT_REQUEST, "model": "gpt-4o", "stream": True},  # usage asked by Tollway: events re-framed
         b"".join(OPENAI_CHUNKS[:2]) + OPENAI_CHUNKS[2][:25], ("", orjson.dumps(OPENAI_INTERRUPTED))),
        (MESSAGES, {**ANTHROPIC_REQUEST, "model": "claude-x", "stream": True},
         b"".join(ANTHROPIC_HEAD) + ANTHROPIC_TAIL[0][:40], ("error", orjson.dumps(ANTHROPIC_INTERRUPTED))),
    ],
    ids=["openai", "openai-usage-stripped", "anthropic"],
)
def test_a_stream_cut_inside_an_event_still_ends_with_a_readable_error_event(
    path: str, request_body: Any, upstream_bytes: bytes, expected: tuple[str, bytes]
) -> None:
    """The provider's last event is unfinished: the error event must still be an event of its own."""
    session = Session(POLICY, "local-dev")
    sent(session, request_body, path)
    session.handle(served(slot=None, attempts=None, content_type="text/event-stream"))
    found = events(feed(session, split(upstream_bytes, 8)))
    assert found[-1] == expected
    assert the_record(session)["outcome"] == "incomplete"


def test_interleaved_parallel_tool_calls_end_an_anthropic_clients_stream_with_an_error_event() -> None:
    """anthropic_to_openai.StreamTranslator raises TranslationError on interleaved tool-call fragments
    ("the caller then ends the stream with error()"): the session must not let it escape."""
    session = Session(POLICY, "local-dev")
    sent(session, {**ANTHROPIC_REQUEST, "stream": True}, MESSAGES)
    session.handle(served(slot=None, attempts=None, content_type="text/event-stream"))

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"index": index, **fields}

    def tool_chunk(*calls: dict[str, Any]) -> bytes:
        return chunk({**_BASE, "choices": [{"index": 0, "delta": {"tool_calls": list(calls)}, "finish_reason": None}]})

    upstream_bytes = (
        tool_chunk(call(0, id="call_a", type="function", function={"name": "f", "arguments": '{"a"'}))
        + tool_chunk(call(1, id="call_b", type="function", function={"name": "g", "arguments": "{}"}))
        + tool_chunk(call(0, function={"arguments": ": 1}"}))  # back to the closed first call
        + chunk({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        + b"data: [DONE]\n\n"
    )
    found = events(feed(session, [upstream_bytes]))
    assert found[-1][0] == "error"
    assert "message_stop" not in [name for name, _ in found]
    assert the_record(session)["outcome"] in ("incomplete", "error")


# -- context windows ----------------------------------------------------------------------------

LONG = {"model": "big", "messages": [{"role": "user", "content": "hello world " * 150}]}  # about 300 tokens


def test_a_prompt_too_long_for_the_first_target_goes_to_the_second_directly(accountant: ServiceAccountant) -> None:
    session = Session(POLICY, "local-dev", accountant)
    action = sent(session, LONG)
    assert session.meter.estimate is not None and session.meter.estimate.tokens > 50
    assert action.set_headers[:2] == (("x-tollway-cluster", "anthropic"), (":path", MESSAGES))
    assert action.set_headers[2:] == (("content-length", str(len(action.body or b""))),)  # no retries: no chain
    # No chain: the client's family alone, for Envoy's own error replies (the path is Anthropic's).
    assert action.metadata == ((upstream.CLIENT, "openai"),) and action.credential == ANTHROPIC
    request = orjson.loads(action.body or b"")
    assert request["model"] == "claude-z" and request["max_tokens"] == 4096
    assert session.provider == "anthropic"


def test_a_short_prompt_keeps_the_chain(accountant: ServiceAccountant) -> None:
    action = sent(Session(POLICY, "local-dev", accountant), {**LONG, "messages": [{"role": "user", "content": "hi"}]})
    assert action.set_headers == (("x-tollway-cluster", "openai+anthropic"), (upstream.RETRIES_HEADER, "1"))
    assert dict(action.metadata)[upstream.TARGETS] == "openai gpt-4o-small, anthropic claude-z"


def test_a_model_named_directly_refuses_a_prompt_longer_than_its_window(accountant: ServiceAccountant) -> None:
    """A model's context_window applied to alias chains only: a prompt too long for a model named
    directly went to its provider. It is a 400 in the client's format, and no provider is asked."""
    sized = compile_policy(POLICY_TEXT.replace("  gpt-4o:\n    provider: openai\n",
                                               "  gpt-4o:\n    provider: openai\n    context_window: 100\n"))
    assert sized.models["gpt-4o"].context_window == 100
    session = Session(sized, "local-dev", accountant)
    assert isinstance(session.handle(head()), Continue)
    refused = session.handle(body({**LONG, "model": "gpt-4o"}))
    assert isinstance(refused, Respond) and refused.status == 400
    error = orjson.loads(refused.body)["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert error["message"].endswith("tokens, more than model 'gpt-4o' can take (its context window is 100 tokens).")
    # The Anthropic SDK's request for it is counted as it would be translated: an estimate, which may
    # be off; with no other target to go to, the provider decides.
    session = Session(sized, "local-dev", accountant)
    assert isinstance(session.handle(head(MESSAGES)), Continue)
    assert session.flow.meter.estimate is None
    assert isinstance(session.handle(body({**LONG, "model": "gpt-4o", "max_tokens": 10})), Continue)
    assert session.flow.meter.estimate is not None and not session.flow.meter.estimate.exact
    # A short prompt goes; without a count (no accountant) nothing is refused for size.
    assert sent(Session(sized, "local-dev", accountant), {**LONG, "model": "gpt-4o",
                                                          "messages": [{"role": "user", "content": "hi"}]})
    assert sent(Session(sized, "local-dev"), {**LONG, "model": "gpt-4o"})


def test_a_model_without_a_known_tokenizer_is_never_refused_for_its_window(accountant: ServiceAccountant) -> None:
    """llama-3.1-8b is counted with o200k_base as a stand-in: an estimate, so the provider decides
    (it was refused with a 400 from that count, as if exact). An Azure deployment whose own name is
    no model's is counted by the policy's public name, exactly."""
    sized = compile_policy(POLICY_TEXT.replace(
        "    models:\n  gpt-4o:\n".replace("    ", ""),
        "models:\n  llama-3.1-8b:\n    provider: local\n    context_window: 100\n"
        "  gpt-4o-mini:\n    provider: azure\n    model: prod-chat\n    context_window: 100\n  gpt-4o:\n"))
    assert sized.models["llama-3.1-8b"].context_window == 100
    session = Session(sized, "local-dev", accountant)
    assert sent(session, {**LONG, "model": "llama-3.1-8b"})
    estimate = session.flow.meter.estimate
    assert estimate is not None and estimate.tokens > 100 and not estimate.exact
    session = Session(sized, "local-dev", accountant)
    assert isinstance(session.handle(head()), Continue)
    refused = session.handle(body({**LONG, "model": "gpt-4o-mini"}))
    assert isinstance(refused, Respond) and refused.status == 400
    assert orjson.loads(refused.body)["error"]["code"] == "context_length_exceeded"


HI = [{"role": "user", "content": "Hi"}]


def test_without_a_count_nothing_is_skipped_for_size() -> None:
    action = sent(Session(POLICY, "local-dev"), LONG)
    assert action.set_headers == (("x-tollway-cluster", "openai+anthropic"), (upstream.RETRIES_HEADER, "1"))


@pytest.mark.parametrize(("path", "model", "upstream_path"), [
    ("/v1/chat/completions/", "gpt-4o", CHAT),  # matched loosely: the provider would answer a 404
    ("/v1/chat/completions/?trace=1", "gpt-4o", CHAT + "?trace=1"),
    ("/v1/messages/?beta=true", "claude-x", MESSAGES + "?beta=true"),
    ("/v1/messages?beta=true", "claude-x", None),  # the provider's own path: left as the client sent it
    (CHAT, "gpt-4o", None),
])
def test_a_trailing_slash_is_not_sent_to_the_provider(path: str, model: str, upstream_path: str | None) -> None:
    request: dict[str, Any] = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    action = sent(Session(POLICY, "local-dev"), request, path)
    assert dict(action.set_headers).get(":path") == upstream_path


TOLLWAY_KEY = "tw-query-0123456789abcdefghijklmnopqrstuv"
PROVIDER_LIKE = "sk-proj-" + "aB3dE5fG7h" * 5  # an OpenAI project key's shape


@pytest.mark.parametrize(("query", "kept"), [
    (f"key={TOLLWAY_KEY}", None),
    (f"api-key={PROVIDER_LIKE}&api_key=x&apikey=x&access_token=x&token=x&X-Api-Key=x&api%5Fkey=x", None),
    (f"limit=5&key={TOLLWAY_KEY}&after=msg_01", "limit=5&after=msg_01"),  # the others kept, as written
    (f"trace=1&q={TOLLWAY_KEY}", "trace=1"),  # a Tollway key under any name
    ("trace=1&q=" + PROVIDER_LIKE.replace("-", "%2D"), "trace=1"),  # a provider key (the secrets detector's)
    ("trace=1&anthropic=sk-ant-api03-" + "x" * 40, "trace=1"),
    ("api-version=2024-10-21&beta=true&trace=", "api-version=2024-10-21&beta=true&trace="),  # nothing to take
    # What a server may read as a separate parameter: ";" and a later "?" (each kept where it stays).
    (f"limit=5;key={TOLLWAY_KEY}", "limit=5"),
    (f"limit=5?key={TOLLWAY_KEY}&after=msg_01", "limit=5&after=msg_01"),
    (f"key={TOLLWAY_KEY};limit=5?after=msg_01", "limit=5?after=msg_01"),
    # A key anywhere in a parameter's decoded text, encoded separators, a bare value, quotes, "Bearer ".
    (f"limit=5%26key%3D{TOLLWAY_KEY}&beta=true", "beta=true"),
    (f"x=Bearer%20{TOLLWAY_KEY}", None),
    (f"x=Bearer+{TOLLWAY_KEY}&beta=true", "beta=true"),
    (TOLLWAY_KEY, None),
    (f"beta=true&{TOLLWAY_KEY}", "beta=true"),
    (f"x=%22{TOLLWAY_KEY}%22", None),
    ("x=%2522" + TOLLWAY_KEY.replace("-", "%252D") + "%2522&beta=true", "beta=true"),  # encoded twice
    ("authorization=Bearer%20abc123&X-Goog-Api-Key=AIza-x&beta=true", "beta=true"),  # by name
    ("q=outw-x&after=msg_01", "q=outw-x&after=msg_01"),  # "tw-" inside a word: no key
    (f"q=msg_{TOLLWAY_KEY}&after=msg_01", "after=msg_01"),  # after "_" or "-": a key's start all the same
])
def test_credentials_in_the_query_never_go_upstream(query: str, kept: str | None) -> None:
    """A key in a URL lands in the provider's and every proxy's access logs: the parameters that
    carry one are taken out of the path sent on, for one target and for a chain's tries."""
    expected = CHAT + (f"?{kept}" if kept else "")
    changed = expected != f"{CHAT}?{query}"
    for model in ("gpt-4o", "smart"):  # one target; a fallback chain (each try's filter sets the path)
        action = sent(Session(POLICY, "local-dev"), {"model": model, "messages": HI}, f"{CHAT}?{query}")
        if model == "gpt-4o":
            assert dict(action.set_headers).get(":path") == (expected if changed else None)
        else:
            assert dict(action.metadata)[upstream.CLIENT_PATH] == expected
        assert TOLLWAY_KEY not in repr(action) and PROVIDER_LIKE not in repr(action)
    # Another family's provider gets its own path (no client query at all).
    action = sent(Session(POLICY, "local-dev"), {"model": "claude-x", "max_tokens": 10, "messages": HI},
                  f"{CHAT}?{query}")
    assert dict(action.set_headers)[":path"] == MESSAGES


@pytest.mark.parametrize("path", [
    "/openai/deployments/d/chat/completions?api-version=2024-10-21&b=1&a=%2f&c=d+e;f=g?h",
    CHAT + "?", CHAT + "?&&;", CHAT + "?after=msg_01&limit=5", CHAT,
])
def test_a_query_without_a_credential_is_kept_byte_for_byte(path: str) -> None:
    assert upstream.without_credentials(path) is path  # the same string: nothing rebuilt
    if "?" in path and not path.endswith("?"):  # the same parameters, a key's taken out around them
        assert upstream.without_credentials(path + f"&key={TOLLWAY_KEY}") == path
        base, _, query = path.partition("?")
        assert upstream.without_credentials(f"{base}?{TOLLWAY_KEY}&{query}") == path


@pytest.mark.parametrize("messages", [[5], [{}], [{"role": "nobody", "content": "Hi"}],
                                      [{"role": "user", "content": 5}],
                                      [{"role": "user", "content": [{"type": "bogus"}]}]])
def test_count_tokens_refuses_what_messages_would_refuse_for_the_model(messages: list[Any]) -> None:
    session = Session(POLICY, "local-dev")
    assert isinstance(session.handle(head("/v1/messages/count_tokens")), Continue)
    refused = session.handle(body({"model": "gpt-4o", "messages": messages}))
    session = Session(POLICY, "local-dev")
    assert isinstance(session.handle(head(MESSAGES)), Continue)
    sent = session.handle(body({"model": "gpt-4o", "max_tokens": 10, "messages": messages}))
    assert refused.status == sent.status == 400, (refused, sent)  # type: ignore[union-attr]
    assert orjson.loads(refused.body)["type"] == "error"  # type: ignore[union-attr]
    assert orjson.loads(refused.body)["error"]["message"] == orjson.loads(sent.body)["error"]["message"]  # type: ignore[union-attr]


def test_count_tokens_counts_what_would_be_sent(accountant: ServiceAccountant) -> None:
    session = Session(POLICY, "local-dev", accountant)
    assert isinstance(session.handle(head("/v1/messages/count_tokens")), Continue)
    counted = session.handle(body({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi there"}]}))
    assert counted.status == 200 and orjson.loads(counted.body)["input_tokens"] > 0  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "request_body", "param", "message"), [
    (CHAT, {"model": "claude-x", "messages": HI, "stop": 5}, "stop",
     "'stop' must be a string or an array of strings, not a number."),
    (CHAT, {"model": "claude-x", "messages": HI, "stop": [5, None]}, "stop",
     "'stop' must be a string or an array of strings, not an array."),
    (CHAT, {"model": "claude-x", "messages": HI, "user": [1]}, "user", "'user' must be a string, not an array."),
    (CHAT, {"model": "claude-x", "messages": HI, "tool_choice": 123}, "tool_choice",
     "'tool_choice' must be a string or an object, not a number."),
    (CHAT, {"model": "claude-x", "messages": HI, "max_tokens": 1.5}, "max_tokens",
     "'max_tokens' must be an integer, not a number."),
    ("/v1/responses", {"model": "claude-x", "input": "Hi", "text": 5}, "text",
     "'text' must be an object, not a number."),
    ("/v1/responses", {"model": "claude-x", "input": "Hi", "reasoning": "high"}, "reasoning",
     "'reasoning' must be an object, not a string."),
    # Served natively: the provider checks its own fields.
    ("/v1/responses", {"model": "gpt-4o", "input": "Hi", "tool_choice": 5}, None, None),
    (MESSAGES, {"model": "gpt-4o", "max_tokens": 10, "messages": HI, "tool_choice": 5}, "tool_choice",
     "'tool_choice' must be an object, not a number."),
    (MESSAGES, {"model": "gpt-4o", "max_tokens": 10, "messages": HI, "temperature": "warm"}, "temperature",
     "'temperature' must be a number, not a string."),
])
def test_a_field_of_the_wrong_type_is_refused_before_translation(path: str, request_body: dict[str, Any],
                                                                 param: str | None, message: str | None) -> None:
    """A translation would drop it or turn it into something else without a word."""
    session = Session(POLICY, "local-dev")
    assert isinstance(session.handle(head(path)), Continue)
    answer = session.handle(body(request_body))
    if message is None:
        assert isinstance(answer, Continue)
        return
    assert answer.status == 400, answer  # type: ignore[union-attr]
    error = orjson.loads(answer.body)  # type: ignore[union-attr]
    if path == MESSAGES:
        assert error == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    else:
        assert (error["error"]["code"], error["error"]["param"], error["error"]["message"]) == (
            "invalid_type", param, message)


@pytest.mark.parametrize(("request_body", "code", "message"), [
    ({"model": "claude-x", "messages": HI, "tools": [{"type": "function", "function": {"name": 5}}]},
     "invalid_request", "'tools[0].function.name' must be a non-empty string."),
    ({"model": "claude-x", "messages": HI, "n": 2}, "unsupported_for_provider",
     "This model can only return one choice per request ('n' must be 1). (the model is served by anthropic)"),
])
def test_malformed_input_and_a_missing_feature_are_told_apart(request_body: dict[str, Any], code: str,
                                                              message: str) -> None:
    session = Session(POLICY, "local-dev")
    assert isinstance(session.handle(head(CHAT)), Continue)
    error = orjson.loads(session.handle(body(request_body)).body)["error"]  # type: ignore[union-attr]
    assert (error["code"], error["message"]) == (code, message)


@pytest.mark.parametrize(("model", "status", "error"), [
    ("gpt-4o", 503, {"error": {"message": "overloaded", "type": "server_error", "code": None}}),
    ("claude-x", 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}),
])
def test_a_streamed_requests_error_answer_is_charged_nothing(accountant: ServiceAccountant, model: str, status: int,
                                                             error: dict[str, Any]) -> None:
    """The provider did no work: no tokens are estimated for it (a budget would be charged them)."""
    session = Session(POLICY, "local-dev", accountant)
    sent(session, {"model": model, "stream": True, "messages": [{"role": "user", "content": "word " * 200}]})
    session.handle(ResponseHeaders({":status": str(status), "content-type": "application/json"}, False, 2_000_000))
    session.handle(ResponseBody(orjson.dumps(error), True, 3_000_000))
    record = the_record(session)
    assert (record["status"], record["outcome"]) == (status, "error")
    assert (record["input_tokens"], record["output_tokens"], record["cost_usd_micros"]) == (None, None, None)
    assert record["estimated_input_tokens"] > 200  # the pre-send estimate is kept, as information


@pytest.mark.parametrize("config", ["envoy/tollway.yaml", "k8s/overlays/istio/istio.yaml"])
def test_the_envoy_configs_write_their_own_errors_as_the_session_recognises_them(config: str) -> None:
    from ext_proc.core.response import ENVOY_REPLY
    from ext_proc.stack import ROOT

    text = (ROOT / config).read_text()
    assert text.count(f'"{ENVOY_REPLY}%RESPONSE_CODE_DETAILS%): %LOCAL_REPLY_BODY%"') >= 2
