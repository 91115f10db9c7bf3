"""Protobuf codec: Envoy's ext_proc messages to core events, core actions to Envoy messages.

Uses the upb-backed ``xds-protos`` classes (about 1 µs to decode a message). Header values
arrive as ``raw_value`` bytes and are decoded as Latin-1 (HTTP header octets, never fails);
repeated header names are joined with ", ".
Answers go out as bytes written directly by :func:`encode_bytes` (see the note above it), or as
upb objects from :func:`encode` where grpcio serializes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor

from ext_proc.core.actions import Action, Continue, Headers, Respond
from ext_proc.core.events import (
    NO_UPSTREAM,
    Event,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    Upstream,
)
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
HOST_METADATA = "xds.upstream_host_metadata"  # the picked endpoint's metadata, as protobuf text
ATTEMPTS_ATTRIBUTE = "upstream.request_attempt_count"
# The tries a fallback chain abandoned at the first-byte timeout, which the per-try filter writes
# as dynamic metadata (ext_proc.core.attempt): a CEL expression, absent (not evaluated to anything)
# on every request without such a try, so the usual response head carries nothing more.
ABANDONED_ATTRIBUTE = "metadata.filter_metadata['tollway']['abandoned']"

# Envoy renders the host metadata attribute as protobuf text; slot and host are string fields of
# the "tollway" filter metadata (see ext_proc.envoy_config.chain_cluster).
_SLOT = re.compile(r'key: "slot"\s+value \{\s+string_value: "(\d+)"')
_HOST = re.compile(r'key: "host"\s+value \{\s+string_value: "([^"\\]+)"')


def upstream_of(attributes: dict[str, str]) -> Upstream:
    """What Envoy's attributes say about the endpoint it picked; removes those attributes."""
    text = attributes.pop(HOST_METADATA, None)
    count = attributes.pop(ATTEMPTS_ATTRIBUTE, None)
    abandoned = attributes.pop(ABANDONED_ATTRIBUTE, None) or None
    if text is None and count is None and abandoned is None:
        return NO_UPSTREAM
    slot = host = None
    if text:
        found = _SLOT.search(text)
        slot = int(found.group(1)) if found else None
        named = _HOST.search(text)
        host = named.group(1) if named else None
    attempts = int(count) if count is not None and count.isdigit() else None
    return Upstream(slot, host, attempts, abandoned)


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
            return kind, RequestHeaders(_headers(msg), msg.end_of_stream, at, attributes, upstream_of(attributes))
        return kind, RequestHeaders(_headers(msg), msg.end_of_stream, at)
    if kind == "request_body":
        body = request.request_body
        return kind, RequestBody(body.body, body.end_of_stream, at)
    if kind == "response_headers":
        msg = request.response_headers
        if len(request.attributes):
            return kind, ResponseHeaders(_headers(msg), msg.end_of_stream, at, upstream_of(_attributes(request)))
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


def _header_changes(action: Continue, credentials: Credentials | None) -> tuple[Headers, tuple[str, ...]]:
    """The headers to set and remove: the action's, plus its provider's key headers.

    A key header the action also removes (a fallback try removes every provider's) is kept off
    the removals, so the key arrives whatever order Envoy applies the two lists in.
    """
    set_headers, remove_headers = action.set_headers, action.remove_headers
    if action.credential is not None and credentials is not None:
        keys = credentials(action.credential)
        if keys:
            set_headers += keys
            if remove_headers:
                names = {name for name, _ in keys}
                remove_headers = tuple(h for h in remove_headers if h not in names)
    return set_headers, remove_headers


def encode(kind: str, action: Action, credentials: Credentials | None = None) -> pb.ProcessingResponse:
    """The ``ProcessingResponse`` answering a message of ``kind`` with ``action``.

    ``credentials`` turns the provider named by ``action.credential`` into its key headers.
    """
    if isinstance(action, Respond):
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=action.status),
                headers=pb.HeaderMutation(set_headers=_header_options(action.headers)),
                body=action.body,
            )
        )
    assert isinstance(action, Continue)
    if not (action.set_headers or action.remove_headers or action.body is not None
            or action.clear_route_cache or action.stream_response or action.credential or action.metadata):
        return _EMPTY[kind]
    common = pb.CommonResponse(clear_route_cache=action.clear_route_cache)
    set_headers, remove_headers = _header_changes(action, credentials)
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


# -- direct wire encoding ---------------------------------------------------------------------
#
# ``encode`` builds upb objects and serializes them: about 2.9 µs per set header and 8.7 µs for a
# Continue with 3 headers, four times per request (the whole per-request core is ~100 µs). The
# answers have few shapes, so ``encode_bytes`` writes the same wire format directly. A field is a
# tag varint ``number << 3 | wire_type`` followed by a varint (wire type 0: bools, enums) or by a
# length varint and that many bytes (wire type 2: strings, bytes, messages). Messages nest, so
# lengths are known inside out; each field goes in field-number order, as upb writes them, and
# proto3 defaults (empty strings, false, 0) are left out except inside oneofs and map entries:
#
#   ProcessingResponse  1-4 request_headers | response_headers | request_body | response_body:
#                             HeadersResponse / BodyResponse {1 response: CommonResponse}
#                       7 immediate_response: ImmediateResponse
#                       8 dynamic_metadata: Struct   9 mode_override: ProcessingMode
#   CommonResponse      2 header_mutation: HeaderMutation   3 body_mutation: BodyMutation
#                       5 clear_route_cache: bool
#   HeaderMutation      1 set_headers: HeaderValueOption (repeated)   2 remove_headers: string (repeated)
#   HeaderValueOption   1 header: HeaderValue {1 key: string, 3 raw_value: bytes}   3 append_action: enum
#   BodyMutation        1 body: bytes (in a oneof: written even when empty)
#   ImmediateResponse   1 status: HttpStatus {1 code: enum}   2 headers: HeaderMutation   3 body: bytes
#   Struct              1 fields: map entry {1 key: string, 2 value: Value} (repeated; key always written)
#   Value               3 string_value: string   5 struct_value: Struct   (a oneof)
#
# The numbers are checked against the generated descriptors at import, so a proto change fails
# loudly instead of producing wrong bytes. A body is copied once: the headers of the messages
# around it are computed from its length and everything is joined at the end.

_WIRE_TYPES = {FieldDescriptor.TYPE_MESSAGE: 2, FieldDescriptor.TYPE_STRING: 2, FieldDescriptor.TYPE_BYTES: 2,
               FieldDescriptor.TYPE_BOOL: 0, FieldDescriptor.TYPE_ENUM: 0}
_SMALL = tuple(bytes((n,)) for n in range(0x80))  # the one-byte varints
_LOW = tuple(bytes((n | 0x80,)) for n in range(0x80))  # the first byte of a longer one


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if 0 < n < 0x4000:
        return _LOW[n & 0x7F] + _SMALL[n >> 7]
    n &= (1 << 64) - 1  # negative numbers: two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: Any, name: str, number: int) -> bytes:
    """The tag of ``message.name``, which must be field ``number`` of a type this encoder writes."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.number != number or field.type not in _WIRE_TYPES:
        raise ImportError(f"codec: {message.DESCRIPTOR.full_name}.{name} changed: "
                          f"field {field.number} of type {field.type}, expected field {number}")
    return _varint(number << 3 | _WIRE_TYPES[field.type])


def _head(tag: bytes, size: int) -> bytes:
    """The start of a length-delimited field whose payload is ``size`` bytes."""
    return tag + (_SMALL[size] if size < 0x80 else _varint(size))


def _field(tag: bytes, payload: bytes) -> bytes:
    return _head(tag, len(payload)) + payload


_KIND_TAGS = {kind: _tag(pb.ProcessingResponse, kind, number) for kind, number in (
    ("request_headers", 1), ("response_headers", 2), ("request_body", 3), ("response_body", 4)
)}
_RESPONSE = _tag(pb.HeadersResponse, "response", 1)
if _tag(pb.BodyResponse, "response", 1) != _RESPONSE:
    raise ImportError("codec: BodyResponse.response differs from HeadersResponse.response")
_IMMEDIATE = _tag(pb.ProcessingResponse, "immediate_response", 7)
_DYNAMIC_METADATA = _tag(pb.ProcessingResponse, "dynamic_metadata", 8)
_MODE_OVERRIDE = _tag(pb.ProcessingResponse, "mode_override", 9)
_HEADER_MUTATION = _tag(pb.CommonResponse, "header_mutation", 2)
_BODY_MUTATION = _tag(pb.CommonResponse, "body_mutation", 3)
_CLEAR_ROUTE_CACHE = _tag(pb.CommonResponse, "clear_route_cache", 5) + b"\x01"
_SET_HEADERS = _tag(pb.HeaderMutation, "set_headers", 1)
_REMOVE_HEADERS = _tag(pb.HeaderMutation, "remove_headers", 2)
_HEADER = _tag(base_pb2.HeaderValueOption, "header", 1)
_OVERWRITE = _tag(base_pb2.HeaderValueOption, "append_action", 3) + _varint(
    base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
)
_KEY = _tag(base_pb2.HeaderValue, "key", 1)
_RAW_VALUE = _tag(base_pb2.HeaderValue, "raw_value", 3)
_BODY = _tag(pb.BodyMutation, "body", 1)
_STATUS = _tag(pb.ImmediateResponse, "status", 1)
_CODE = _tag(http_status_pb2.HttpStatus, "code", 1)
_IMMEDIATE_HEADERS = _tag(pb.ImmediateResponse, "headers", 2)
_IMMEDIATE_BODY = _tag(pb.ImmediateResponse, "body", 3)
_STRUCT_FIELDS = _tag(struct_pb2.Struct, "fields", 1)
_ENTRY_KEY = _tag(struct_pb2.Struct.FieldsEntry, "key", 1)
_ENTRY_VALUE = _tag(struct_pb2.Struct.FieldsEntry, "value", 2)
_STRING_VALUE = _tag(struct_pb2.Value, "string_value", 3)
_STRUCT_VALUE = _tag(struct_pb2.Value, "struct_value", 5)
_STREAMED_BYTES = _field(_MODE_OVERRIDE, _STREAMED.SerializeToString())
_EMPTY_BYTES: dict[str, bytes] = {kind: message.SerializeToString() for kind, message in _EMPTY.items()}
# One set_headers entry when every length fits a one-byte varint (the usual case), filled by
# ``%``: the entry's length, the HeaderValue's, the key's, key, the value's, value.
_SET_HEADER_SHORT = b"".join(tag.replace(b"%", b"%%") + fill for tag, fill in (
    (_SET_HEADERS, b"%c"), (_HEADER, b"%c"), (_KEY, b"%c%b"), (_RAW_VALUE, b"%c%b"), (_OVERWRITE, b"")
))


def _set_header(key: str, value: str) -> bytes:
    """One ``set_headers`` entry of a HeaderMutation (the value as Latin-1 ``raw_value``)."""
    k = key.encode()
    v = value.encode("latin-1")
    size = len(k) + len(v) + 4  # the HeaderValue with both fields present
    if k and v and size < 0x7C:
        return _SET_HEADER_SHORT % (size + 4, size, len(k), k, len(v), v)  # + 4: header tag, length, _OVERWRITE
    header = (_field(_KEY, k) if k else b"") + (_field(_RAW_VALUE, v) if v else b"")
    return _field(_SET_HEADERS, _field(_HEADER, header) + _OVERWRITE)


def _struct_entry(key: str, value: bytes) -> bytes:
    """One ``fields`` entry of a Struct: ``key`` and its encoded Value."""
    return _field(_STRUCT_FIELDS, _field(_ENTRY_KEY, key.encode()) + _field(_ENTRY_VALUE, value))


def _dynamic_metadata(pairs: tuple[tuple[str, str], ...]) -> bytes:
    """``{"tollway": {key: value}}`` as a Struct (a repeated key keeps its last value, as ``dict``)."""
    fields = b"".join([_struct_entry(key, _field(_STRING_VALUE, value.encode())) for key, value in dict(pairs).items()])
    return _field(_DYNAMIC_METADATA, _struct_entry(METADATA_NAMESPACE, _field(_STRUCT_VALUE, fields)))


def _respond(action: Respond) -> bytes:
    status = _field(_STATUS, _CODE + _varint(action.status) if action.status else b"")
    start = status + _field(_IMMEDIATE_HEADERS, b"".join([_set_header(key, value) for key, value in action.headers]))
    body = action.body
    if not body:
        return _field(_IMMEDIATE, start)
    body_head = _head(_IMMEDIATE_BODY, len(body))
    return b"".join((_head(_IMMEDIATE, len(start) + len(body_head) + len(body)), start, body_head, body))


def encode_bytes(kind: str, action: Action, credentials: Credentials | None = None) -> bytes:
    """``encode(kind, action, credentials).SerializeToString()``, written directly (see above).

    The bytes are the same, except that the entries of ``dynamic_metadata`` keep the action's
    order where upb writes its map in hash order: the same message once parsed.
    """
    if isinstance(action, Respond):
        return _respond(action)
    if not (action.set_headers or action.remove_headers or action.body is not None
            or action.clear_route_cache or action.stream_response or action.credential or action.metadata):
        return _EMPTY_BYTES[kind]
    set_headers, remove_headers = _header_changes(action, credentials)
    # CommonResponse = start + body + end
    start = b""
    if set_headers or remove_headers:
        mutation = [_set_header(key, value) for key, value in set_headers]
        mutation += [_field(_REMOVE_HEADERS, name.encode()) for name in remove_headers]
        start = _field(_HEADER_MUTATION, b"".join(mutation))
    body = action.body
    if body is None:
        body = b""
    else:
        body_head = _head(_BODY, len(body))
        start += _head(_BODY_MUTATION, len(body_head) + len(body)) + body_head
    end = _CLEAR_ROUTE_CACHE if action.clear_route_cache else b""
    size = len(start) + len(body) + len(end)
    response_head = _head(_RESPONSE, size)
    parts = [_head(_KIND_TAGS[kind], len(response_head) + size), response_head, start, body, end]
    if action.metadata:
        parts.append(_dynamic_metadata(action.metadata))
    if action.stream_response:
        parts.append(_STREAMED_BYTES)
    return b"".join(parts)
