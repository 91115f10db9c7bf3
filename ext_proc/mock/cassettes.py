"""Recorded exchanges (go-vcr v2 YAML cassettes) and how requests are matched against them.

A cassette file holds ``interactions``, each a recorded request (``url``, ``method``, ``body``,
``headers``) and response (``code``, ``headers``, ``body``). :func:`load_cassettes` turns every
interaction into a frozen :class:`Cassette`: the response body as the bytes a client must
receive (decompressed when it was recorded with a ``Content-Encoding``), the response headers
worth replaying, and for ``text/event-stream`` responses the SSE event blocks, whose
concatenation is exactly the body.

Matching compares parsed JSON, not text: :func:`match_key` freezes the method, the URL path
(query ignored) and the JSON body into a hashable value, so a request re-serialised by a proxy
(other key order, whitespace, escaping) still finds its recording.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Response headers never replayed: framing and connection management belong to the replaying
# server (the body is sent decompressed, with its own content-length or chunked encoding).
_NOT_REPLAYED = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"})

_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n|\r\r)", re.S)


class CassetteError(ValueError):
    """A cassette file that cannot be loaded; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Cassette:
    """One recorded exchange, ready to replay."""

    name: str  # file stem; "stem#N" for interaction N > 0 of a multi-interaction file
    method: str
    path: str  # URL path, without the query string
    query: str  # the recorded query string, from the url or go-vcr's ``form`` ("" when none)
    request_body: bytes
    request_json: Any  # the parsed request body; None when it is not JSON
    status: int
    headers: tuple[tuple[str, str], ...]  # recorded response headers, minus framing ones
    response_body: bytes  # what the client receives: decompressed if it was recorded compressed
    is_stream: bool  # text/event-stream: replayed chunked, one HTTP chunk per event
    events: tuple[bytes, ...] = ()  # SSE event blocks; b"".join(events) == response_body
    compressed: str | None = None  # the recorded Content-Encoding, if the body was compressed

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "content-type"), "application/octet-stream")

    @property
    def target(self) -> str:
        """The request target to send: path plus query string."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def usage(self) -> dict[str, Any] | None:
        """The recorded ``usage`` object: the JSON body's, or the last non-null one of a stream."""
        if not self.is_stream:
            try:
                body = orjson.loads(self.response_body)
            except orjson.JSONDecodeError:
                return None
            usage = body.get("usage") if isinstance(body, dict) else None
            return usage if isinstance(usage, dict) else None
        found = None
        for event in self.events:
            for line in event.splitlines():
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                try:
                    chunk = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                    found = chunk["usage"]
        return found


def _freeze(value: Any) -> Hashable:
    """A hashable form of parsed JSON with JSON equality (object key order does not matter)."""
    if isinstance(value, dict):
        return frozenset((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, bool):  # keep true distinct from 1
        return ("bool", value)
    return value  # type: ignore[no-any-return]


def match_key(method: str, path: str, body_json: Any) -> Hashable:
    """The key a request is looked up by: method, path without query, frozen JSON body."""
    return (method.upper(), path.partition("?")[0], _freeze(body_json))


def index(cassettes: Mapping[str, Cassette]) -> dict[Hashable, Cassette]:
    """Cassettes by :func:`match_key`; on identical recorded requests the first name wins."""
    out: dict[Hashable, Cassette] = {}
    for cassette in cassettes.values():
        if cassette.request_json is not None:
            out.setdefault(match_key(cassette.method, cassette.path, cassette.request_json), cassette)
    return out


def split_events(body: bytes) -> tuple[bytes, ...]:
    """SSE event blocks of ``body``, each with its terminating blank line; nothing is dropped."""
    events = [m.group() for m in _EVENT.finditer(body)]
    rest = body[sum(map(len, events)) :]
    if rest:
        events.append(rest)
    return tuple(events)


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):  # YAML !!binary
        return value
    return str(value).encode()


def _decompress(body: bytes, encoding: str, where: str) -> bytes:
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error) as exc:
        raise CassetteError(f"{where}: response.body is not valid {encoding}: {exc}") from exc
    raise CassetteError(f"{where}: response Content-Encoding {encoding!r} is not supported")


def _header_pairs(raw: Any, where: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise CassetteError(f"{where}: headers must be a mapping")
    pairs = []
    for name, values in raw.items():
        for value in values if isinstance(values, list) else [values]:
            pairs.append((str(name), str(value)))
    return pairs


def parse_interaction(name: str, interaction: Any, where: str) -> Cassette:
    """One go-vcr interaction as a :class:`Cassette`; ``where`` prefixes error messages."""
    if not isinstance(interaction, dict):
        raise CassetteError(f"{where}: interaction is not a mapping")
    request, response = interaction.get("request"), interaction.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise CassetteError(f"{where}: interaction needs request and response mappings")
    url = request.get("url")
    if not isinstance(url, str):
        raise CassetteError(f"{where}: request.url is missing")
    parts = urlsplit(url)
    query = parts.query
    form = request.get("form")
    if not query and isinstance(form, dict) and form:
        # go-vcr keeps the query in ``form`` (e.g. Azure's api-version) and may drop it from url
        query = urlencode({str(k): v for k, v in form.items()}, doseq=True)
    request_body = _as_bytes(request.get("body"))
    try:
        request_json = orjson.loads(request_body) if request_body else None
    except orjson.JSONDecodeError:
        request_json = None
    status = response.get("code")
    if not isinstance(status, int):
        try:
            status = int(str(response.get("status", "")).split()[0])
        except (ValueError, IndexError) as exc:
            raise CassetteError(f"{where}: response.code is missing") from exc
    all_headers = _header_pairs(response.get("headers"), f"{where}: response")
    body = _as_bytes(response.get("body"))
    encoding = next((v.strip().lower() for k, v in all_headers if k.lower() == "content-encoding"), None)
    if encoding in (None, "", "identity"):
        encoding = None
    else:
        body = _decompress(body, encoding, where)
    headers = tuple((k, v) for k, v in all_headers if k.lower() not in _NOT_REPLAYED)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    is_stream = content_type.lower().startswith("text/event-stream")
    return Cassette(
        name=name,
        method=str(request.get("method") or "POST").upper(),
        path=parts.path or "/",
        query=query,
        request_body=request_body,
        request_json=request_json,
        status=status,
        headers=headers,
        response_body=body,
        is_stream=is_stream,
        events=split_events(body) if is_stream else (),
        compressed=encoding,
    )


def load_file(path: Path) -> list[Cassette]:
    """Every interaction of one cassette file."""
    try:
        doc = yaml.load(path.read_bytes(), Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:
        raise CassetteError(f"{path}: {exc}") from exc
    interactions = doc.get("interactions") if isinstance(doc, dict) else None
    if not isinstance(interactions, list):
        raise CassetteError(f"{path}: no 'interactions' list (not a go-vcr v2 cassette?)")
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    return [
        parse_interaction(stem if i == 0 else f"{stem}#{i}", item, f"{path}: interactions[{i}]")
        for i, item in enumerate(interactions)
    ]


def load_cassettes(directory: str | Path) -> dict[str, Cassette]:
    """All cassettes of ``*.yaml`` / ``*.yml`` files in ``directory``, by name, sorted by name."""
    root = Path(directory)
    if not root.is_dir():
        raise CassetteError(f"{root}: not a directory")
    found: dict[str, Cassette] = {}
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        for cassette in load_file(path):
            found[cassette.name] = cassette
    return dict(sorted(found.items()))
