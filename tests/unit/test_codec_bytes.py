"""``codec.encode_bytes`` writes exactly what ``codec.encode(...).SerializeToString()`` does.

The object form is the reference: for arbitrary actions the direct bytes parse to an equal
message, and are the same bytes except for the order of dynamic metadata entries (upb writes
its maps in hash order).
"""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ext_proc.core.actions import CONTINUE, Action, Continue, Headers, Respond
from ext_proc.policy.compiled import Provider
from ext_proc.server import codec

KINDS = ("request_headers", "request_body", "response_headers", "response_body")
PROVIDER = Provider("openai", "openai", "openai", None)  # the codec only hands it to the credentials callable

names = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["authorization", "x-api-key", "content-length", ""]
)
# Header octets are Latin-1: non-ASCII bytes, empty values, and values long enough for 2-byte lengths.
values = st.text(st.characters(max_codepoint=0xFF), max_size=20) | st.text(
    st.characters(max_codepoint=0xFF), min_size=120, max_size=300
)
headers = st.lists(st.tuples(names, values), max_size=6).map(tuple)
# Bodies: None vs b"", short, and long enough for 2- and 3-byte length varints at every nesting level.
long_bodies = st.tuples(st.binary(min_size=1, max_size=4), st.integers(100, 20_000)).map(
    lambda pair: (pair[0] * pair[1])[: pair[1]]
)
bodies = st.none() | st.binary(max_size=40) | long_bodies
texts = st.text(st.characters(codec="utf-8"), max_size=20)
metadata = st.lists(st.tuples(texts, texts | st.text(min_size=130, max_size=200)), max_size=4).map(tuple)
continues = st.builds(
    Continue,
    set_headers=headers,
    remove_headers=st.lists(names, max_size=4).map(tuple),
    body=bodies,
    clear_route_cache=st.booleans(),
    stream_response=st.booleans(),
    credential=st.sampled_from([None, PROVIDER]),
    metadata=metadata,
)
responds = st.builds(Respond, status=st.integers(-(2**31), 2**31 - 1) | st.sampled_from([200, 400, 429, 502]),
                     body=bodies.map(lambda body: body or b""), headers=headers)


def check(kind: str, action: Action, credentials: codec.Credentials | None) -> None:
    expected = codec.encode(kind, action, credentials)
    encoded = codec.encode_bytes(kind, action, credentials)
    parsed = pb.ProcessingResponse.FromString(encoded)
    assert parsed == expected
    assert parsed.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    if isinstance(action, Respond) or len({key for key, _ in action.metadata}) <= 1:
        assert encoded == expected.SerializeToString()


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), action=continues, keys=st.none() | headers)
@example(kind="request_body", action=CONTINUE, keys=None)
@example(kind="response_body", action=Continue(body=b""), keys=None)
@example(kind="response_headers", action=Continue(stream_response=True), keys=None)
@example(kind="request_headers", action=Continue(credential=PROVIDER), keys=())  # no key: just an empty mutation
@example(  # the credential's headers are set, and no longer removed
    kind="request_headers",
    action=Continue(remove_headers=("authorization", "x-api-key", "api-key"), credential=PROVIDER),
    keys=(("authorization", "Bearer sk-caf\xe9"),),
)
@example(kind="request_body", action=Continue(metadata=(("a", "1"), ("b", "2"), ("a", "3"))), keys=None)
def test_continue_bytes_match_the_protobuf_encoding(kind: str, action: Continue, keys: Headers | None) -> None:
    check(kind, action, None if keys is None else lambda provider: keys)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), action=responds)
@example(kind="request_headers", action=Respond(0, b""))
@example(kind="request_headers", action=Respond(-1, b"x"))  # an open enum: negative codes are ten bytes
@example(kind="request_headers", action=Respond(429, b'{"error":"rate limited"}'))
@example(kind="request_body", action=Respond(502, b"", headers=()))
def test_respond_bytes_match_the_protobuf_encoding(kind: str, action: Respond) -> None:
    check(kind, action, None)


@pytest.mark.parametrize("size", [*range(118, 132), *range(16_370, 16_390), *range(2**21 - 12, 2**21 + 2)])
def test_body_lengths_around_varint_boundaries(size: int) -> None:
    body = b"\xff" * size
    check("response_body", Continue(body=body, set_headers=(("content-length", str(size)),)), None)
    check("request_headers", Respond(413, body), None)


def test_a_changed_field_number_fails_at_import() -> None:
    with pytest.raises(ImportError, match="clear_route_cache"):
        codec._tag(pb.CommonResponse, "clear_route_cache", 6)


@pytest.mark.parametrize("size", [*range(110, 135), *range(16_370, 16_390)])
def test_header_lengths_around_varint_boundaries(size: int) -> None:
    pairs = (("k", "\xe9" * size), ("x" * size, "v"), ("ab", "c" * (size - 2)), ("", "v" * size), ("k" * size, ""))
    check("request_headers", Continue(set_headers=pairs, remove_headers=("k" * size,)), None)
    check("request_headers", Respond(200, b"", headers=pairs), None)
