"""Pieces of a provider key an answer sends back (an error's code, its message, the answer's model):
taken out before the session, and so the record, the span, the metrics and the client, sees them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ext_proc.core.events import ResponseBody, ResponseHeaders
from ext_proc.llm.apis import base
from ext_proc.llm.apis.base import error_code, safe_code
from ext_proc.server.credentials import MARKER, Scrub, secret_start
from tests.unit.test_coalesce import ECHOED, chunk, keyed_call, parsed, response_head, sent_to_gpt_4o

KEY = "sk-test-AUDDenvKEYzyxw9876543210abcd"  # fake


def scrubbed(scrub: Scrub, body: bytes, status: str = "200") -> bytes:
    scrub.event(ResponseHeaders({":status": status, "content-type": "application/json"}, False, 0))
    out = scrub.event(ResponseBody(body, True, 0))
    assert isinstance(out, ResponseBody)
    return out.body


def runs(text: bytes, key: str = KEY, size: int = 12) -> list[str]:
    """The pieces of ``key`` of ``size`` characters ``text`` holds."""
    return [key[i:i + size] for i in range(len(key) - size + 1) if key[i:i + size].encode() in text]


@pytest.mark.parametrize("status", ["400", "403", "429"])
def test_an_errors_code_type_and_message_lose_every_long_piece_of_the_key(status: str) -> None:
    body = orjson.dumps({"error": {"message": f"no access for key {KEY[:-1]}", "type": KEY[:24], "code": KEY[:-2]}})
    out = scrubbed(Scrub((KEY,)), body, status)
    assert runs(out) == [] and MARKER.encode() in out
    error = orjson.loads(out)["error"]
    assert error["message"] == f"no access for key {MARKER}"
    assert error_code(orjson.loads(out)) == "provider_error"


def test_a_piece_from_the_middle_of_the_key_in_an_error_is_taken_out() -> None:
    out = scrubbed(Scrub((KEY,)), orjson.dumps({"error": {"message": f"key ...{KEY[5:21]}... is wrong"}}), "401")
    assert runs(out) == [] and orjson.loads(out)["error"]["message"] == f"key ...{MARKER}... is wrong"


def test_short_pieces_and_other_text_stay() -> None:
    body = orjson.dumps({"error": {"message": f"Incorrect API key provided: sk-test...{KEY[-8:]}", "code": "bad_key"}})
    assert scrubbed(Scrub((KEY,)), body, "401") == body


def test_a_key_written_in_json_unicode_escapes_is_found_in_an_error() -> None:
    for hexes in ("\\u%04x", "\\u%04X"):
        body = ('{"error": {"message": "bad ' + "".join(hexes % ord(c) for c in KEY) + '", "type": "x"}}').encode()
        out = scrubbed(Scrub((KEY,)), body, "400")
        assert orjson.loads(out)["error"]["message"] == f"bad {MARKER}"


@pytest.mark.parametrize("status", ["200", "401"])
def test_an_issuers_prefix_is_no_piece_of_a_key(status: str) -> None:
    """Every Anthropic key starts ``sk-ant-api03-``, every OpenAI project key ``sk-proj-``: an answer
    naming the prefix (a model explaining how to set a key up), or it with a few characters more,
    holds no secret and is passed as it is; twelve characters of the secret part are taken out."""
    keys = ("sk-ant-api03-Zq8xW2vB7nK4mL9pR3tY6uI1oE5aS0dF", "sk-proj-Hj3kL5mN7pQ9rS1tU3vW5xY7zA9bC1d")
    text = "Set ANTHROPIC_API_KEY=sk-ant-api03-... (or sk-ant-api03-Zq8x) and OPENAI_API_KEY=sk-proj-Hj3k..."
    body = orjson.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o",
                         "choices": [{"message": {"content": text}}]})
    assert scrubbed(Scrub(keys), body, status) == body
    leaked = orjson.dumps({"model": "gpt-4o", "choices": [{"message": {"content": f"key {keys[0][:25]}"}}]})
    assert keys[0][13:25].encode() not in scrubbed(Scrub(keys), leaked, status)


def test_an_answers_model_starting_like_the_key_is_taken_out_and_not_served() -> None:
    answer = {"id": "x", "object": "chat.completion", "model": KEY[:-1], "choices": []}
    out = scrubbed(Scrub((KEY,)), orjson.dumps(answer))
    assert runs(out) == [] and orjson.loads(out)["model"] == MARKER


def test_a_clean_answer_is_passed_as_it_is() -> None:
    scrub = Scrub((KEY,))
    body = orjson.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o", "choices": []})
    scrub.event(ResponseHeaders({":status": "200"}, False, 0))
    event = ResponseBody(body, True, 0)
    assert scrub.event(event) is event


@pytest.mark.parametrize("value", ["sk-test-AUDDenvKEYzy", "sk-ant-api03-abcdefgh", "sk-proj-0123456789ab",
                                   "AKIAIOSFODNN7EXAMPLE", "AIzaSyA1234567890abcdef", "ghp_0123456789abcdef",
                                   "xoxb-0123456789-abc", MARKER])
def test_a_code_type_or_model_shaped_like_a_key_is_not_taken(value: str) -> None:
    assert safe_code({"code": value}) == "provider_error"
    assert safe_code({"type": value}) == "provider_error"
    assert base.safe_model(value) is None


@pytest.mark.parametrize("value", ["invalid_api_key", "rate_limit_exceeded", "insufficient_quota", "model_not_found",
                                   "server_error", "skip-this", "sk-1"])
def test_ordinary_codes_are_taken(value: str) -> None:
    assert safe_code({"code": value}) == value


@pytest.mark.parametrize("value", ["gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20241022", "meta-llama/Llama-3-8B",
                                   "accounts/fireworks/models/llama-v3p1-8b-instruct", "llama3:8b", "sk-1"])
def test_ordinary_models_are_served(value: str) -> None:
    assert base.safe_model(value) == value


def test_the_record_never_holds_a_piece_of_the_key(tmp_path: Path) -> None:
    """Through the servicer: a 403 whose code is the key but its last two characters (the record's
    ``error``)."""
    call = keyed_call(tmp_path)
    sent_to_gpt_4o(call, config=None)
    error = {"error": {"message": f"no access for key {ECHOED[:-1]}", "type": "permission_error",
                       "code": ECHOED[:-2]}}
    call.message(response_head_status("403"))
    replies = parsed(call.message(chunk("response_body", orjson.dumps(error), end=True)))
    sent = b"".join(r.response_body.response.body_mutation.body for r in replies if r.HasField("response_body"))
    assert ECHOED[:12].encode() not in sent
    assert call.session.error == "permission_error"  # the code was the key's piece: the type is taken


def test_the_served_model_is_the_one_asked_for_when_the_answer_names_a_piece_of_the_key(tmp_path: Path) -> None:
    call = keyed_call(tmp_path)
    sent_to_gpt_4o(call, config=None)
    answer = {"id": "x", "object": "chat.completion", "model": ECHOED[:-1], "choices": [],
              "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    call.message(response_head())
    call.message(chunk("response_body", orjson.dumps(answer), end=True))
    record = call.session.flow.record(0)
    assert record["served_model"] == "gpt-4o"


def response_head_status(status: str) -> bytes:
    from tests.unit.test_coalesce import _headers, pb

    return pb.ProcessingRequest(response_headers=_headers([(":status", status), ("content-type", "application/json")])
                                ).SerializeToString()


def test_a_whole_key_deep_in_a_long_answer_is_still_found() -> None:
    """Past the first bytes of a successful answer only the whole key is looked for (the cost of the
    check stays that of before); the whole key is still found anywhere."""
    answer = {"id": "x", "object": "chat.completion", "model": "gpt-4o",
              "choices": [{"message": {"content": "word " * 2000 + f"your key is {KEY}"}}]}
    out = scrubbed(Scrub((KEY,)), orjson.dumps(answer))
    assert runs(out) == [] and orjson.loads(out)["choices"][0]["message"]["content"].endswith(f"is {MARKER}")


def test_a_header_holding_a_piece_of_the_key_loses_it() -> None:
    scrub = Scrub((KEY,))
    out = scrub.event(ResponseHeaders({":status": "200", "x-debug-key": KEY[:-3], "x-request-id": "r1"}, False, 0))
    assert isinstance(out, ResponseHeaders) and out.headers["x-debug-key"] == MARKER
    assert out.headers["x-request-id"] == "r1"


def test_every_run_of_twelve_characters_of_a_key_is_found_in_an_error_and_no_shorter_one() -> None:
    """Twelve characters of the key's secret part (after its issuer's prefix, ``sk-test-``)."""
    scrub = Scrub((KEY,))
    assert secret_start(KEY) == len("sk-test-")
    for start in range(len("sk-test-"), len(KEY) - 11):
        out = scrubbed(scrub, f"x {KEY[start:start + 12]} y".encode(), "500")
        assert out == f"x {MARKER} y".encode(), start
        short = f"x {KEY[start:start + 11]} y".encode()
        assert scrubbed(scrub, short, "500") == short


@pytest.mark.parametrize("key", ["short-k3y!", "tw-local-k3y", "self-hosted-key-0123456789abcdef"])
def test_a_key_past_the_first_kib_of_an_answer_is_taken_out_whatever_its_length(key: str) -> None:
    """A self-hosted server's short key (8 to 12 characters: its own first characters) echoed past
    the body's first KiB, or across it, is found there as a whole key (review: it was not)."""
    for at in (1100, 1020):
        body = b"x" * at + key.encode() + b" y"
        out = scrubbed(Scrub((key,)), body)
        assert key.encode() not in out and MARKER.encode() in out, at


def test_open_mode_records_the_model_asked_for_when_the_answer_names_a_key() -> None:
    """No policy, so no target: a key-shaped served model is the model the client asked for."""
    from ext_proc.core.events import RequestBody, RequestHeaders
    from ext_proc.core.session import Session

    session = Session()
    session.handle(RequestHeaders({":method": "POST", ":path": "/v1/chat/completions",
                                   "authorization": "Bearer tw-fake-0123456789"}, False, 0))
    session.handle(RequestBody(orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
                               True, 1))
    session.handle(ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 2))
    answer = {"id": "x", "object": "chat.completion", "model": "sk-proj-FAKEFAKE0123",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    session.handle(ResponseBody(orjson.dumps(answer), True, 3))
    assert session.flow.record(4)["served_model"] == "gpt-4o"
