"""Protobuf codec: Envoy's ext_proc messages to core events, core actions to Envoy messages.

Uses the upb-backed ``xds-protos`` classes (about 1 µs to decode a message). Header values
arrive as ``raw_value`` bytes and are decoded as Latin-1 (HTTP header octets, never fails);
repeated header names are joined with ", ".
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ext_proc.core.actions import Action, Continue, Respond
from ext_proc.core.events import Event, RequestBody, RequestHeaders, ResponseBody, ResponseHeaders
from ext_proc.policy.compiled import Provider

Credentials = Callable[[Provider], tuple[tuple[str, str], ...]]

_STREAMED = processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED)
_EMPTY = {kind: pb.ProcessingResponse(**{kind: {}}) for kind in (
    "request_headers", "request_body", "response_headers", "response_body"
)}


def _headers(message: pb.HttpHeaders) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in message.headers.headers:
        value = header.raw_value.decode("latin-1") if header.raw_value else header.value
        key = header.key
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _attributes(request: pb.ProcessingRequest) -> dict[str, str]:
    """Envoy attributes sent with the request headers (``request_attributes`` in the filter config)."""
    out: dict[str, str] = {}
    for struct in request.attributes.values():
        for key, value in struct.fields.items():
            if value.HasField("string_value"):
                out[key] = value.string_value
            elif value.HasField("number_value"):
                out[key] = str(int(value.number_value))
    return out


METADATA_NAMESPACE = "tollway"  # dynamic metadata Tollway sets and reads (attributes "tollway.<key>")


def _metadata(request: pb.ProcessingRequest, into: dict[str, str]) -> dict[str, str]:
    """Add the ``tollway`` dynamic metadata forwarded to this filter, as ``tollway.<key>``."""
    struct = request.metadata_context.filter_metadata.get(METADATA_NAMESPACE)
    if struct is not None:
        for key, value in struct.fields.items():
            if value.HasField("string_value"):
                into[f"{METADATA_NAMESPACE}.{key}"] = value.string_value
    return into


def decode(request: pb.ProcessingRequest, at: int) -> tuple[str, Event]:
    """The oneof kind of ``request`` and its event; ``ValueError`` for kinds we never ask for."""
    kind = request.WhichOneof("request")
    if kind == "request_headers":
        msg = request.request_headers
        if len(request.attributes) or request.HasField("metadata_context"):
            attributes = _metadata(request, _attributes(request))
            return kind, RequestHeaders(_headers(msg), msg.end_of_stream, at, attributes)
        return kind, RequestHeaders(_headers(msg), msg.end_of_stream, at)
    if kind == "request_body":
        body = request.request_body
        return kind, RequestBody(body.body, body.end_of_stream, at)
    if kind == "response_headers":
        msg = request.response_headers
        if len(request.attributes):
            return kind, ResponseHeaders(_headers(msg), msg.end_of_stream, at, _attributes(request))
        return kind, ResponseHeaders(_headers(msg), msg.end_of_stream, at)
    if kind == "response_body":
        body = request.response_body
        return kind, ResponseBody(body.body, body.end_of_stream, at)
    raise ValueError(f"unexpected ext_proc message {kind!r}")


def _header_options(pairs: tuple[tuple[str, str], ...]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, raw_value=value.encode("latin-1")),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for key, value in pairs
    ]


def encode(kind: str, action: Action, credentials: Credentials | None = None) -> pb.ProcessingResponse:
    """The ``ProcessingResponse`` answering a message of ``kind`` with ``action``.

    ``credentials`` turns the provider named by ``action.credential`` into its key headers.
    """
    if isinstance(action, Respond):
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=action.status),  # type: ignore[arg-type]
                headers=pb.HeaderMutation(set_headers=_header_options(action.headers)),
                body=action.body,
            )
        )
    assert isinstance(action, Continue)
    if not (action.set_headers or action.remove_headers or action.body is not None
            or action.clear_route_cache or action.stream_response or action.credential or action.metadata):
        return _EMPTY[kind]
    common = pb.CommonResponse(clear_route_cache=action.clear_route_cache)
    set_headers = action.set_headers
    remove_headers = action.remove_headers
    if action.credential is not None and credentials is not None:
        keys = credentials(action.credential)
        if keys:
            set_headers += keys
            if remove_headers:
                names = {name for name, _ in keys}
                remove_headers = tuple(h for h in remove_headers if h not in names)
    if set_headers or remove_headers:
        common.header_mutation.CopyFrom(
            pb.HeaderMutation(
                set_headers=_header_options(set_headers),
                remove_headers=list(remove_headers),
            )
        )
    if action.body is not None:
        common.body_mutation.body = action.body
    response = pb.ProcessingResponse(**{kind: {"response": common}})
    if action.stream_response:
        response.mode_override.CopyFrom(_STREAMED)
    if action.metadata:
        response.dynamic_metadata.update({METADATA_NAMESPACE: dict(action.metadata)})
    return response
