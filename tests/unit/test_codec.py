"""The protobuf codec with real ext_proc messages: Envoy's bytes in, events out; actions in, bytes out.

Every message crosses the wire format (``SerializeToString`` / ``FromString``) as it would
between Envoy and the service.
"""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ext_proc.core.actions import CONTINUE, Continue, Respond
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders
from ext_proc.server import codec

KINDS = ("request_headers", "request_body", "response_headers", "response_body")
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
AT = 123_456_789


def wire(message: pb.ProcessingRequest) -> pb.ProcessingRequest:
    return pb.ProcessingRequest.FromString(message.SerializeToString())


def wire_out(message: pb.ProcessingResponse) -> pb.ProcessingResponse:
    return pb.ProcessingResponse.FromString(message.SerializeToString())


def header_map(*pairs: tuple[str, bytes | str]) -> base_pb2.HeaderMap:
    """Envoy sends ``raw_value`` bytes; older Envoys (and some tests) fill ``value``."""
    return base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=key, raw_value=value)
            if isinstance(value, bytes)
            else base_pb2.HeaderValue(key=key, value=value)
            for key, value in pairs
        ]
    )


def option(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode("latin-1")), append_action=OVERWRITE
    )


# -- decode -----------------------------------------------------------------------------------


def test_request_headers() -> None:
    message = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=header_map(
                (":method", b"POST"),
                (":path", b"/v1/chat/completions"),
                ("accept", b"application/json"),
                ("accept", b"text/event-stream"),  # repeated names are joined
                ("x-user", b"caf\xe9"),  # header octets: Latin-1, never a decode error
                ("x-legacy", "string value"),
            ),
            end_of_stream=False,
        )
    )
    assert codec.decode(wire(message), AT) == (
        "request_headers",
        RequestHeaders(
            {
                ":method": "POST",
                ":path": "/v1/chat/completions",
                "accept": "application/json, text/event-stream",
                "x-user": "café",
                "x-legacy": "string value",
            },
            False,
            AT,
        ),
    )


def test_request_headers_end_of_stream() -> None:
    head = pb.HttpHeaders(headers=header_map((":method", b"GET")), end_of_stream=True)
    message = pb.ProcessingRequest(request_headers=head)
    assert codec.decode(wire(message), AT) == ("request_headers", RequestHeaders({":method": "GET"}, True, AT))


def test_response_headers() -> None:
    message = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=header_map((":status", b"200"), ("content-type", b"text/event-stream")))
    )
    assert codec.decode(wire(message), AT) == (
        "response_headers",
        ResponseHeaders({":status": "200", "content-type": "text/event-stream"}, False, AT),
    )


def test_bodies() -> None:
    request = pb.ProcessingRequest(request_body=pb.HttpBody(body=b'{"model": "m"}', end_of_stream=True))
    response = pb.ProcessingRequest(response_body=pb.HttpBody(body=b"data: {}\n\n", end_of_stream=False))
    assert codec.decode(wire(request), AT) == ("request_body", RequestBody(b'{"model": "m"}', True, AT))
    assert codec.decode(wire(response), AT) == ("response_body", ResponseBody(b"data: {}\n\n", False, AT))


@pytest.mark.parametrize("kind", ["request_trailers", "response_trailers"])
def test_messages_never_asked_for_are_refused(kind: str) -> None:
    message = pb.ProcessingRequest(**{kind: pb.HttpTrailers()})
    with pytest.raises(ValueError, match=kind):
        codec.decode(wire(message), AT)


# -- encode -----------------------------------------------------------------------------------


def test_headers_set_and_removed() -> None:
    action = Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))
    assert wire_out(codec.encode("request_headers", action)) == pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(remove_headers=["accept-encoding", "x-tollway-cluster"])
            )
        )
    )


def test_route_label_with_clear_route_cache() -> None:
    action = Continue(set_headers=(("x-tollway-cluster", "openai"),), clear_route_cache=True)
    assert wire_out(codec.encode("request_body", action)) == pb.ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=[option("x-tollway-cluster", "openai")]),
                clear_route_cache=True,
            )
        )
    )


def test_body_replaced_with_its_length() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    action = Continue(
        set_headers=(("x-tollway-cluster", "openai"), ("content-length", str(len(body)))),
        remove_headers=("content-encoding",),
        body=body,
        clear_route_cache=True,
    )
    assert wire_out(codec.encode("request_body", action)) == pb.ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(
                    set_headers=[option("x-tollway-cluster", "openai"), option("content-length", "67")],
                    remove_headers=["content-encoding"],
                ),
                body_mutation=pb.BodyMutation(body=body),
                clear_route_cache=True,
            )
        )
    )


def test_stream_chunk_replaced_by_nothing_still_mutates() -> None:
    """Hiding the usage chunk replaces a chunk with zero bytes: that must not read as 'no change'."""
    encoded = wire_out(codec.encode("response_body", Continue(body=b"")))
    mutation = encoded.response_body.response.body_mutation
    assert encoded.response_body.response.HasField("body_mutation")
    assert mutation.WhichOneof("mutation") == "body" and mutation.body == b""


def test_stream_response_overrides_the_body_mode() -> None:
    encoded = wire_out(codec.encode("response_headers", Continue(stream_response=True)))
    assert encoded == pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(response=pb.CommonResponse()),
        mode_override=processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED),
    )
    assert encoded.WhichOneof("response") == "response_headers"


def test_respond_becomes_an_immediate_response() -> None:
    body = b'{"error":{"message":"nope","type":"invalid_request_error","param":null,"code":"invalid_json"}}'
    encoded = wire_out(codec.encode("request_body", Respond(400, body)))
    assert encoded == pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.BadRequest),
            headers=pb.HeaderMutation(set_headers=[option("content-type", "application/json")]),
            body=body,
        )
    )


@pytest.mark.parametrize("status", [404, 413, 415, 503])
def test_respond_keeps_any_status(status: int) -> None:
    encoded = wire_out(codec.encode("request_headers", Respond(status, b"{}", headers=(("x-a", "1"), ("x-b", "2")))))
    immediate = encoded.immediate_response
    assert immediate.status.code == status
    assert [(o.header.key, o.header.raw_value) for o in immediate.headers.set_headers] == [("x-a", b"1"), ("x-b", b"2")]


@pytest.mark.parametrize("kind", KINDS)
def test_empty_continue_reuses_one_prebuilt_message(kind: str) -> None:
    first = codec.encode(kind, CONTINUE)
    assert codec.encode(kind, Continue()) is first
    assert first.WhichOneof("response") == kind
    assert wire_out(first) == pb.ProcessingResponse(**{kind: {}})
