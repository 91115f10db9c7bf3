"""The codec's share of fallback routing: dynamic metadata out and in, and numeric attributes.

Every message crosses the wire format, as between Envoy and the service.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from ext_proc.core import upstream
from ext_proc.core.actions import Continue
from ext_proc.core.events import RequestHeaders, ResponseHeaders, Upstream
from ext_proc.server import codec

AT = 42


def wire(message: pb.ProcessingRequest) -> pb.ProcessingRequest:
    return pb.ProcessingRequest.FromString(message.SerializeToString())


def struct(**fields: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(fields)
    return out


def headers(*pairs: tuple[str, bytes]) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v)
                                                              for k, v in pairs]))


METADATA = (
    (upstream.TARGETS, "openai gpt-4o, anthropic claude-x"),
    (upstream.CLIENT_PATH, "/v1/chat/completions"),
    (upstream.ALIAS, "smart"),
    (upstream.TEAM, "all"),
)


def test_continue_metadata_becomes_tollway_dynamic_metadata() -> None:
    action = Continue(set_headers=(("x-tollway-cluster", "openai+anthropic"),), clear_route_cache=True,
                      metadata=METADATA)
    reply = pb.ProcessingResponse.FromString(codec.encode("request_body", action).SerializeToString())
    assert reply.WhichOneof("response") == "request_body"
    assert reply.request_body.response.clear_route_cache
    assert list(reply.dynamic_metadata.fields) == ["tollway"]
    namespace = reply.dynamic_metadata.fields["tollway"].struct_value
    assert {key: value.string_value for key, value in namespace.fields.items()} == dict(METADATA)
    assert all(value.HasField("string_value") for value in namespace.fields.values())


def test_metadata_alone_is_not_an_empty_answer() -> None:
    reply = codec.encode("request_body", Continue(metadata=(("path", "/v1/messages"),)))
    assert reply.dynamic_metadata.fields["tollway"].struct_value.fields["path"].string_value == "/v1/messages"
    assert codec.encode("request_body", Continue()).HasField("dynamic_metadata") is False


def test_forwarded_tollway_metadata_is_read_as_attributes() -> None:
    message = pb.ProcessingRequest(
        request_headers=headers((":method", b"POST"), (":path", b"/v1/messages")),
        metadata_context=base_pb2.Metadata(filter_metadata={
            "tollway": struct(**dict(METADATA), slotted=3),  # only strings are read
            "other": struct(targets="not ours"),
        }),
    )
    kind, event = codec.decode(wire(message), AT)
    assert kind == "request_headers"
    assert event == RequestHeaders(
        {":method": "POST", ":path": "/v1/messages"}, False, AT,
        {f"tollway.{key}": value for key, value in METADATA},
    )


def test_attributes_and_metadata_together() -> None:
    host = 'filter_metadata { key: "tollway" value { fields { key: "slot" value { string_value: "1" } } } } '
    message = pb.ProcessingRequest(
        request_headers=headers((":method", b"POST")),
        attributes={"envoy.filters.http.ext_proc": struct(**{codec.HOST_METADATA: host})},
        metadata_context=base_pb2.Metadata(filter_metadata={"tollway": struct(targets="a b, c d")}),
    )
    _, event = codec.decode(wire(message), AT)
    assert isinstance(event, RequestHeaders)
    assert dict(event.attributes) == {"tollway.targets": "a b, c d"}
    assert event.upstream == Upstream(slot=1)


def test_numbers_in_response_attributes_become_integer_strings() -> None:
    host = 'filter_metadata { key: "tollway" value { fields { key: "slot" value { string_value: "0" } } } } '
    message = pb.ProcessingRequest(
        response_headers=headers((":status", b"200")),
        attributes={"envoy.filters.http.ext_proc": struct(**{
            codec.ATTEMPTS_ATTRIBUTE: 2, codec.HOST_METADATA: host,
        })},
    )
    kind, event = codec.decode(wire(message), AT)
    assert kind == "response_headers"
    assert event == ResponseHeaders({":status": "200"}, False, AT, Upstream(slot=0, attempts=2))


def test_request_headers_without_attributes_or_metadata_have_none() -> None:
    _, event = codec.decode(wire(pb.ProcessingRequest(request_headers=headers((":method", b"POST")))), AT)
    assert isinstance(event, RequestHeaders) and dict(event.attributes) == {}
