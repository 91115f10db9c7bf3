"""Bad input: every kind gets a clear error in the client's format, and nothing else happens.

JSONTestSuite's parsing cases (tests/fixtures/json, MIT) decide the JSON reader: every ``n_``
document refused, every ``y_`` accepted but the two with a duplicated key (refused on purpose:
two readers could see different values), every ``i_`` decided as pinned here and in the README.
Then the session: malformed bodies, deep nesting, huge numbers, NaN, invalid UTF-8, lone
surrogates, duplicate keys, wrong content types, gzip bombs, model names that could steer a path,
oversized stream events from a provider.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from ext_proc.core.actions import Continue, Respond
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders
from ext_proc.core.session import Session
from ext_proc.llm import apis, exact
from ext_proc.llm.apis import base
from ext_proc.llm.apis.base import MAX_CONTAINERS, MAX_DEPTH, MAX_ITEMS, MAX_STRINGS, decode_json
from ext_proc.llm.errors import ClientError
from ext_proc.policy.compile import compile_policy

SUITE = Path(__file__).resolve().parents[1] / "fixtures" / "json" / "test_parsing"
CASES = sorted(SUITE.iterdir())
REFUSED_ON_PURPOSE = {"y_object_duplicated_key.json", "y_object_duplicated_key_and_value.json"}
# Implementation-defined cases, decided (README "Bad input"): numbers a double holds (or rounds
# to 0 or a float) are read; numbers beyond a double's range, invalid or truncated UTF-8, lone or
# broken surrogates, other encodings (UTF-16, Latin-1), a byte-order mark and nesting deeper
# than MAX_DEPTH are refused.
I_ACCEPTED = {"i_number_double_huge_neg_exp.json", "i_number_real_underflow.json", "i_number_too_big_neg_int.json",
              "i_number_too_big_pos_int.json", "i_number_very_big_negative_int.json"}


def test_the_suite_is_all_there() -> None:
    kinds = [case.name[:2] for case in CASES]
    assert (kinds.count("y_"), kinds.count("n_"), kinds.count("i_")) == (95, 188, 35)
    assert (SUITE.parent / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_json_test_suite(case: Path) -> None:
    data = case.read_bytes()
    name = case.name
    accepted = name in I_ACCEPTED or (name.startswith("y_") and name not in REFUSED_ON_PURPOSE)
    if accepted:
        decode_json(data)
        return
    with pytest.raises(ClientError) as refused:
        decode_json(data)
    assert refused.value.status == 400 and refused.value.code == "invalid_json"
    assert "\n" not in refused.value.message and len(refused.value.message) < 400


def _session_body(body: bytes, **headers: str) -> Respond | Continue:
    session = Session()
    head = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json", **headers}
    answer = session.handle(RequestHeaders(head, False, 1))
    if isinstance(answer, Respond):
        return answer
    action = session.handle(RequestBody(body, True, 2))
    assert isinstance(action, (Respond, Continue))
    if isinstance(action, Respond):  # refused: recorded as such
        (effect,) = session.effects
        assert effect.record["outcome"] == "rejected" and effect.record["error"] is not None
    return action


def _refused(action: Respond | Continue, status: int, code: str, fragment: str) -> None:
    assert isinstance(action, Respond), action
    assert action.status == status
    error = orjson.loads(action.body)["error"]
    assert error["code"] == code and fragment in error["message"], error


def request(**fields: object) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(("body", "fragment"), [
    (b'{"model": "gpt-4o-mini", "messages": [], "model": "gpt-4o"}', "gives the key 'model' twice"),
    (b'{"model": "m", "messages": [{"role": "user", "role": "system", "content": "x"}]}', "key 'role' twice"),
    (b'{"model": "m", "temperature": NaN}', "not valid JSON"),
    (b'{"model": "m", "max_tokens": 1e999}', "a number out of a double's range (such as 1e400)"),
    (b'{"model": "m\\ud800"}', "not valid JSON"),
    (b'{"model": "m", "x": "\xff\xfe"}', "not valid UTF-8 (byte 21: invalid start byte)"),
    (b'\xef\xbb\xbf{"model": "m"}', "not valid JSON"),
    (b'{"model": "m", "x": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", "more than 128 deep"),
])
def test_json_the_readers_could_disagree_on_is_refused(body: bytes, fragment: str) -> None:
    _refused(_session_body(body), 400, "invalid_json", fragment)


BIG = 123456789012345678901234567890  # beyond 64 bits: orjson alone reads it as a rounded float


def test_integers_beyond_64_bits_are_read_exactly() -> None:
    body = (b'{"model": "m", "x": 123456789012345678901234567890, "y": [-18446744073709551617, 18446744073709551615,'
            b' -9223372036854775808, 1e+16, 1E+17, 0.5], "s": "e+ in a string"}')
    value = decode_json(body)
    assert value["x"] == BIG and type(value["x"]) is int
    assert value["y"] == [-18446744073709551617, 18446744073709551615, -9223372036854775808, 1e16, 1e17, 0.5]
    assert exact.dumps(value) == (b'{"model":"m","x":123456789012345678901234567890,"y":[-18446744073709551617,'
                                  b'18446744073709551615,-9223372036854775808,1e+16,1e+17,0.5],"s":"e+ in a string"}')
    assert decode_json(b'{"model": "m", "t": 0.7, "n": 4111}') == {"model": "m", "t": 0.7, "n": 4111}



@pytest.mark.parametrize("body", [
    b'{"x": 1E+15, "a": 123456789012345678901234567890}',  # (a small float with an exponent hid the +)
    b'{"x": 1.0e+15, "a": 123456789012345678901234567890}',  # (PHP writes 1e15 so)
    b'{"s": "a\\u002Bb", "a": 123456789012345678901234567890, "t": "c+d"}',  # (.NET escapes a +)
])
def test_integers_beyond_64_bits_stay_exact_beside_floats_and_escapes_every_writer_writes(body: bytes) -> None:
    assert decode_json(body)["a"] == BIG


def test_a_json_value_nested_deeper_than_orjson_writes_is_read_as_it_was() -> None:
    """orjson reads 1024 levels and writes 255: the check for rounded integers wrote the value
    again and raised, and a provider's deeply nested answer crashed its stream's session."""
    from ext_proc.llm.sse import SSEEvent

    deep = b'{"x": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}"
    assert SSEEvent("", deep, deep).json() is not None
    assert exact.loads(deep)["x"][0][0][0] is not None

POLICY = compile_policy("""\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
  anthropic: {kind: anthropic, credential: {env: ANTHROPIC_API_KEY}}
models:
  gpt: {provider: openai, model: gpt-4o-2024-08-06}
  claude: {provider: anthropic, model: claude-x}
teams:
  all: {workloads: [local-dev], models: ["*"]}
""")


@pytest.mark.parametrize(("path", "model"), [("/v1/chat/completions", "gpt"), ("/v1/chat/completions", "claude"),
                                             ("/v1/messages", "gpt"), ("/v1/messages", "claude")])
def test_integers_beyond_64_bits_reach_the_provider_and_the_client_as_they_were(path: str, model: str) -> None:
    """A body written again (a model renamed, a translation) keeps an integer beyond 64 bits as it
    came: in a call's arguments and a tool's input, both ways."""
    arguments = '{"account": 123456789012345678901234567890}'
    if path == "/v1/chat/completions":
        body: dict[str, Any] = {"model": model, "messages": [
            {"role": "user", "content": "pay"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "pay", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}], "max_tokens": 10}
    else:
        body = {"model": model, "max_tokens": 10, "messages": [
            {"role": "user", "content": "pay"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "pay",
                                               "input": {"account": BIG}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]}
    raw = exact.dumps(body)
    session = Session(POLICY, "local-dev")
    head = {":method": "POST", ":path": path, "content-type": "application/json", "x-request-id": "r1",
            "anthropic-version": "2023-06-01"}
    assert isinstance(session.handle(RequestHeaders(head, False, 1)), Continue)
    sent = session.handle(RequestBody(raw, True, 2))
    assert isinstance(sent, Continue) and sent.body is not None, sent
    assert b"123456789012345678901234567890" in sent.body and b"e+29" not in sent.body, sent.body
    if model == "claude":
        answer: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                                  "content": [{"type": "tool_use", "id": "toolu_2", "name": "pay",
                                               "input": {"account": BIG}}],
                                  "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}}
    else:
        answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                      "role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_2", "type": "function", "function": {"name": "pay", "arguments": arguments}}]}}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    assert isinstance(session.handle(ResponseHeaders({":status": "200", "content-type": "application/json"},
                                                     False, 3)), Continue)
    out = session.handle(ResponseBody(exact.dumps(answer), True, 4))
    assert isinstance(out, Continue)
    if out.body is not None:  # (passed through untouched otherwise)
        assert b"123456789012345678901234567890" in out.body and b"e+29" not in out.body, out.body


def test_deep_nesting_up_to_the_limit_is_fine() -> None:
    depth = MAX_DEPTH - 2
    body = b'{"model": "gpt-4o-mini", "messages": [], "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert isinstance(_session_body(body), Continue)
    brackets_in_strings = request(messages=[{"role": "user", "content": "[" * 500}])
    assert isinstance(_session_body(brackets_in_strings), Continue)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_body_of_too_many_arrays_and_objects_is_refused_before_it_is_parsed(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed, 10 MB of small arrays is 800 MB of Python lists and seconds of the worker's loop:
    counted first, at C speed, and refused in the client's format without being parsed."""
    body = b'{"model": "m", "max_tokens": 1, "messages": [], "metadata": {"x": [' + b"[]," * MAX_CONTAINERS + b"[]]}}"
    parsed = []
    monkeypatch.setattr(base, "orjson", SimpleNamespace(loads=parsed.append, JSONDecodeError=ValueError))
    action = _session_body(body, **{":path": path})
    assert not parsed
    assert isinstance(action, Respond) and action.status == 413
    error = orjson.loads(action.body)["error"]
    assert error["type" if path == "/v1/messages" else "code"] == "request_too_large"
    assert "more than 500,000 arrays and objects" in error["message"]


def test_brackets_inside_strings_are_not_arrays_or_objects() -> None:
    code = 'f(a[i]) {"k": [1]} \\" [ \\\\'
    body = request(messages=[{"role": "user", "content": code * (MAX_CONTAINERS // 3)}], x=[[]] * 100)
    assert body.count(b"[") + body.count(b"{") > MAX_CONTAINERS
    assert isinstance(_session_body(body), Continue)
    at_the_limit = request(messages=[], x=[[]] * (MAX_CONTAINERS - 3))  # the body, messages, x, its arrays
    assert isinstance(_session_body(at_the_limit), Continue)
    _refused(_session_body(request(messages=[], x=[[]] * (MAX_CONTAINERS - 2))), 413, "request_too_large", "500,000")


def test_a_body_of_too_many_strings_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five million one-letter strings are 1.3 s of the worker's loop and 1 GB parsed: counted first
    (escaped quotes are no string's ends), refused in the client's format without being parsed."""
    strings = MAX_STRINGS - 9  # the body's keys and the model's name make up the rest
    at_the_limit = b'{"model": "m", "max_tokens": 1, "messages": [], "stop": [' + b'"a",' * (strings - 1) + b'"a"]}'
    assert base._strings(at_the_limit) == MAX_STRINGS - 4
    assert isinstance(_session_body(at_the_limit), Continue)
    quoted = request(messages=[{"role": "user", "content": 'say \\"hi\\" ' * MAX_STRINGS}])
    assert quoted.count(b'"') > 2 * MAX_STRINGS and base._strings(quoted) < 20
    assert isinstance(_session_body(quoted), Continue)  # escaped quotes inside one string
    over = b'{"model": "m", "max_tokens": 1, "messages": [], "stop": [' + b'"a",' * MAX_STRINGS + b'"a"]}'
    parsed = []
    monkeypatch.setattr(base, "orjson", SimpleNamespace(loads=parsed.append, JSONDecodeError=ValueError))
    action = _session_body(over)
    assert not parsed
    assert isinstance(action, Respond) and action.status == 413
    assert "more than 2,000,000 strings" in orjson.loads(action.body)["error"]["message"]


@pytest.mark.parametrize(("path", "field", "item"), [
    ("/v1/chat/completions", "messages", {"role": "user", "content": "x"}),
    ("/v1/messages", "messages", {"role": "user", "content": "x"}),
    ("/v1/embeddings", "input", "x"), ("/v1/completions", "prompt", "x"), ("/v1/responses", "input", "x"),
])
def test_more_messages_or_inputs_than_anthropic_takes_are_refused_before_the_guardrails(
        path: str, field: str, item: object) -> None:
    """Each message or input is guarded and counted one at a time on the worker's loop: 500,000
    of them stalled every other request for seconds."""
    def body(n: int) -> bytes:
        return orjson.dumps({"model": "m", "max_tokens": 1, field: [item] * n})
    action = _session_body(body(MAX_ITEMS + 1), **{":path": path})
    assert isinstance(action, Respond) and action.status == 413, action
    error = orjson.loads(action.body)["error"]
    assert error["type" if path == "/v1/messages" else "code"] == "request_too_large"
    assert f"'{field}' lists 100,001 items" in error["message"]
    assert not isinstance(_session_body(body(MAX_ITEMS), **{":path": path}), Respond)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_more_content_parts_than_messages_may_hold_are_refused(path: str) -> None:
    field = "input" if path == "/v1/responses" else "messages"
    def body(n: int) -> bytes:
        parts = [{"type": "text", "text": "x"}] * (n // 2)
        message = {"role": "user", "content": parts}
        second = {**message, "content": parts + parts[:n % 2]}
        return orjson.dumps({"model": "m", "max_tokens": 1, field: [message, second]})
    action = _session_body(body(MAX_ITEMS + 1), **{":path": path})
    assert isinstance(action, Respond) and action.status == 413, action
    assert "100,001 content parts" in orjson.loads(action.body)["error"]["message"]
    assert not isinstance(_session_body(body(MAX_ITEMS), **{":path": path}), Respond)


@pytest.mark.parametrize("body", [
    b'{"model": "m", "a": 1, "\\u0061": 2}',  # the same key, written two ways
    b'{"model": "m", "k": "\\u003a", "x": {"a": 1, "a": 1}}',  # a colon escaped elsewhere
    b'{"model": "m", "x": [{"a": {"b": {}}, "a": {"b": {}}}]}',
    b'{"model": "m", "x": "\\\\", "y": "\\":", "y": 1}',
])
def test_a_key_given_twice_is_found_however_it_is_written(body: bytes) -> None:
    with pytest.raises(ClientError, match="twice"):
        decode_json(body)


@pytest.mark.parametrize("body", [b'{"model": "m", "k\\u003a": "a:b\\u003A"}', b'{"a": {"a": {"a": [":", {}]}}}',
                                  b'{"a": "\\":", "b": {"\\u0061": 1, "a\\\\": 2}}'])
def test_keys_given_once_pass(body: bytes) -> None:
    assert isinstance(decode_json(body), dict)


@pytest.mark.parametrize("model", ["../admin", "a/../../b", "gpt-4o%2Fx", "gpt#frag", "user@host", "gpt 4o",
                                   "gpt\x00", "gpt\r\nx-evil: 1", "\u00e9", "", "a//b", "-leading"])
def test_a_model_name_that_could_steer_a_path_or_host_is_refused(model: str) -> None:
    action = _session_body(request(model=model))
    if model == "":
        _refused(action, 400, "missing_model", "must name a model")
    else:
        _refused(action, 400, "invalid_model", "may hold only letters, digits")


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", "a\x1bb", "a\x7fb"])
def test_a_control_character_in_a_header_is_a_400(value: str) -> None:
    _refused(_session_body(request(), **{"x-custom": value}), 400, "invalid_header", "'x-custom'")


@pytest.mark.parametrize("model", ["gpt-4o-mini", "meta-llama/Llama-3.1-8B-Instruct", "accounts/f/models/x:1",
                                   "qwen2.5-coder:7b", "ft:gpt-4o-mini:org::abc", "claude+x"])
def test_real_model_names_pass(model: str) -> None:
    assert isinstance(_session_body(request(model=model)), Continue)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_a_body_that_is_not_json_by_its_content_type_is_415(content_type: str) -> None:
    _refused(_session_body(request(), **{"content-type": content_type}), 415, "unsupported_media_type",
             "must be JSON")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/vnd.api+json"])
def test_json_content_types_pass(content_type: str) -> None:
    assert isinstance(_session_body(request(), **{"content-type": content_type}), Continue)


def test_a_gzip_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = gzip.compress(request(messages=[{"role": "user", "content": "a" * (8 << 20)}]))
    assert len(bomb) < 40_000  # 8 MiB in about 8 KiB: far past 200:1
    _refused(_session_body(bomb, **{"content-encoding": "gzip"}), 413, "body_too_large", "200 times its size")
    honest = gzip.compress(request(messages=[{"role": "user", "content": "a reasonable prompt " * 500}]))
    assert isinstance(_session_body(honest, **{"content-encoding": "gzip"}), Continue)


def test_an_oversized_event_from_a_provider_ends_the_stream_with_an_error() -> None:
    session = Session()
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 1))
    session.handle(RequestBody(request(stream=True), True, 2))
    session.handle(ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, 3))
    first = b'data: {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    sent = [session.handle(ResponseBody(first + b'data: {"x": "' + b"a" * (1 << 20), False, 4))]
    sent += [session.handle(ResponseBody(b"a" * (1 << 20), False, 5 + i)) for i in range(8)]
    bodies = [action.body for action in sent if isinstance(action, Continue) and action.body]
    assert len(bodies) == 2  # the first whole event, then the error instead of the 8 MiB one
    assert bodies[0] == first
    assert bodies[1].startswith(b'data: {"error"') and b"provider_event_too_large" in bodies[1]
    after = session.handle(ResponseBody(b'"}\n\ndata: [DONE]\n\n', True, 20))
    assert isinstance(after, Continue) and after.body == b""  # nothing more reaches the client
    (effect,) = session.effects
    assert (effect.record["outcome"], effect.record["error"]) == ("error", "provider_event_too_large")


def test_an_oversized_event_that_arrives_whole_in_one_chunk_ends_the_stream_with_an_error() -> None:
    """Envoy may hand over a whole 50 MB event in one piece: its size, not only a pending
    half-event's, is what is bounded."""
    session = Session()
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 1))
    session.handle(RequestBody(request(stream=True), True, 2))
    session.handle(ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, 3))
    first = b'data: {"model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    big = first.replace(b"hi", b"y" * (9 << 20))
    action = session.handle(ResponseBody(first + big + first, False, 4))
    assert isinstance(action, Continue) and action.body is not None
    assert action.body.startswith(first) and len(action.body) < 1000 and b"provider_event_too_large" in action.body
    after = session.handle(ResponseBody(b"data: [DONE]\n\n", True, 5))
    assert isinstance(after, Continue) and after.body == b""
    (effect,) = session.effects
    assert (effect.record["outcome"], effect.record["error"]) == ("error", "provider_event_too_large")


@pytest.mark.parametrize("model", ["sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f", "AKIA" + "IOSFODNN7EXAMPLE",
                                   "tw-search-" + "k1-0123456789abcdef0123"])
def test_a_credential_sent_as_the_model_is_refused_and_never_recorded(model: str) -> None:
    """A key pasted into the wrong field would reach the record, the metrics' labels, the span's
    name and the dashboard (an unknown model's name is a label)."""
    session = Session()
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 1))
    action = session.handle(RequestBody(request(model=model), True, 2))
    _refused(action, 400, "invalid_model", "holds a credential")  # type: ignore[arg-type]
    assert model.encode() not in action.body  # type: ignore[union-attr]
    (effect,) = session.effects
    assert effect.record["model"] is None and model not in orjson.dumps(effect.record).decode()


def test_a_model_the_policy_names_is_no_credential_even_if_it_starts_as_a_key_does() -> None:
    """A policy's model named tw-... (a team's own naming) was refused as a Tollway key."""
    policy = compile_policy("""
apiVersion: tollway/v1
providers:
  o: {kind: openai}
models:
  tw-platform-fast-model: {provider: o, model: gpt-4o-mini}
teams:
  t: {workloads: [w], models: ["*"]}
""")
    session = Session(policy=policy, workload="w")
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 1))
    action = session.handle(RequestBody(request(model="tw-platform-fast-model"), True, 2))
    assert isinstance(action, Continue), action
    refused = Session(policy=policy, workload="w")
    refused.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 1))
    _refused(refused.handle(RequestBody(request(model="tw-search-k1-0123456789abcdef0123"), True, 2)),  # type: ignore[arg-type]
             400, "invalid_model", "holds a credential")


def test_a_long_model_name_is_no_credential() -> None:
    action = _session_body(request(model="claude-3-5-haiku-20241022"))
    assert isinstance(action, Continue)


@pytest.mark.parametrize(("max_tokens", "fragment"), [
    (None, "max_tokens: Field required"), ("100", "valid integer"), (True, "valid integer"), (1.5, "valid integer"),
    (0, "greater than or equal to 1"), (-5, "greater than or equal to 1"),
])
def test_a_messages_request_must_set_max_tokens_as_anthropic_requires(max_tokens: object, fragment: str) -> None:
    """Refused in Anthropic's words whoever serves it: a request an OpenAI model serves (translated)
    works the same once Claude serves it."""
    payload: dict[str, object] = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    with pytest.raises(ClientError) as caught:
        apis.MESSAGES.parse(orjson.dumps(payload))
    assert caught.value.status == 400 and fragment in caught.value.message and caught.value.param == "max_tokens"
    assert apis.MESSAGES.parse(orjson.dumps({**payload, "max_tokens": 1})).payload["max_tokens"] == 1
    payload.pop("max_tokens", None)
    assert apis.COUNT_TOKENS.parse(orjson.dumps(payload)).model == "claude-sonnet-4"  # counting asks for no output


@pytest.mark.parametrize(("api", "field", "value"), [
    (apis.COMPLETIONS, "prompt", {"text": "card 4111 1111 1111 1111"}),
    (apis.COMPLETIONS, "prompt", [{"text": "hi"}]),
    (apis.COMPLETIONS, "prompt", ["hi", 5]),  # strings and a bare id mixed
    (apis.COMPLETIONS, "prompt", [[1, 2], ["x"]]),
    (apis.COMPLETIONS, "prompt", True),
    (apis.COMPLETIONS, "suffix", {"text": "x"}),
    (apis.EMBEDDINGS, "input", {"text": "hi"}),
    (apis.EMBEDDINGS, "input", [{"text": "hi"}]),
    (apis.EMBEDDINGS, "input", 42),
])
def test_a_prompt_or_input_of_a_shape_no_api_takes_is_refused(api: apis.WireAPI, field: str, value: object) -> None:
    """Tollway meters (and guards) a completions prompt and an embeddings input: a shape it does not
    read is a 400 naming the field, before any provider sees it."""
    base = {"model": "m", "prompt" if api is apis.COMPLETIONS else "input": "hi"}
    with pytest.raises(ClientError) as caught:
        api.parse(orjson.dumps({**base, field: value}))
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "invalid_type", field)
    for fine in ("hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]], ["a", [1, 2]], []):
        api.parse(orjson.dumps({**base, "prompt" if api is apis.COMPLETIONS else "input": fine}))


@pytest.mark.parametrize(("api", "field", "body"), [
    (apis.CHAT_COMPLETIONS, "messages", {"input": "hi"}),
    (apis.CHAT_COMPLETIONS, "messages", {"messages": None}),
    (apis.MESSAGES, "messages", {"max_tokens": 5, "prompt": "hi"}),
    (apis.COUNT_TOKENS, "messages", {}),
    (apis.EMBEDDINGS, "input", {"text": "hi"}),
    (apis.COMPLETIONS, "prompt", {"suffix": "hi"}),
    (apis.RESPONSES, "input", {"text_input": "hi"}),
])
def test_a_request_without_the_field_of_its_text_is_refused(api: apis.WireAPI, field: str,
                                                            body: dict[str, Any]) -> None:
    """Its text, wherever the client put it, is in no field the guardrails read: refused as the
    provider would refuse it (a 400 naming the field), never sent on unread."""
    with pytest.raises(ClientError) as caught:
        api.parse(orjson.dumps({"model": "m", **body}))
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, "missing_required_parameter", field)


@pytest.mark.parametrize("given", [{"prompt": {"id": "pmpt_1"}}, {"previous_response_id": "resp_1"},
                                   {"conversation": "conv_1"}, {"instructions": "Be brief."}])
def test_a_responses_request_may_give_its_input_elsewhere(given: dict[str, Any]) -> None:
    """A stored prompt, a stored conversation or the instructions alone: no ``input`` needed."""
    assert apis.RESPONSES.parse(orjson.dumps({"model": "m", **given})).model == "m"


def test_a_stream_asked_of_an_api_that_never_streams_is_refused_before_the_provider() -> None:
    """Embeddings answer in one JSON body: ``stream: true`` sent on would be billed and fail (a 502 the
    SDK retries); it is a 400 naming ``stream``. count_tokens takes a Messages body and ignores it."""
    session = Session()
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/embeddings", "content-type": "application/json"},
                                  False, 1))
    refused = session.handle(RequestBody(orjson.dumps({"model": "text-embedding-3-small", "input": "hi",
                                                       "stream": True}), True, 2))
    _refused(refused, 400, "invalid_request", "'stream' must be false")
    assert orjson.loads(refused.body)["error"]["param"] == "stream"
    for quiet in (False, None):
        assert apis.EMBEDDINGS.parse(orjson.dumps({"model": "m", "input": "hi", "stream": quiet})).stream is False
    counted = apis.COUNT_TOKENS.parse(orjson.dumps({"model": "m", "messages": [], "stream": True}))
    assert counted.stream is False
