"""The endpoints beside the LLM calls: the model catalogue and Anthropic's token counting.

* ``GET /v1/models`` and ``GET /v1/models/{id}``: the models a caller may use, in OpenAI's
  format (``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}``),
  or in Anthropic's when the caller is the ``anthropic`` SDK, which sends ``anthropic-version``
  (``{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more", "first_id",
  "last_id"}``, paged with ``limit``, ``after_id`` and ``before_id``). Tollway answers them
  itself from the policy (:mod:`ext_proc.core.local`): :data:`OPENAI_MODELS` and
  :data:`ANTHROPIC_MODELS` render the answer and the errors; what a model is is
  :class:`Listed`.
* ``POST /v1/messages/count_tokens`` (:data:`COUNT_TOKENS`): Anthropic's token counting, in
  Anthropic's formats. Anthropic providers speak it (it is forwarded, like a Messages request);
  for any other target Tollway answers with its own count of what it would send. Counting is
  free: its reader reports 0 tokens in and out.

Tollway knows no creation date of a model: ``created`` is 0 (``created_at`` 1970-01-01).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ext_proc.llm.errors import ClientError

from .anthropic import MessagesAPI
from .base import ParsedRequest, Reader
from .openai import OpenAIAPI

MODELS_PATH = "/v1/models"


@dataclass(frozen=True, slots=True)
class Listed:
    """One model a caller may name: its public name, who serves it, its known limits."""

    id: str
    owned_by: str  # the provider's name, or "tollway" for a routing alias
    context_window: int | None = None
    max_output_tokens: int | None = None


class _Nothing(Reader):
    """The reader of an answer with no usage to read (a model list passed through in open mode)."""

    __slots__ = ()

    def _body(self, payload: dict[str, Any]) -> None:
        return None

    def _event(self, event: Any) -> None:
        return None

    def _text(self, event: dict[str, Any], parts: list[str]) -> None:
        return None


class _Free(_Nothing):
    """Token counting costs nothing: 0 tokens in, 0 out."""

    __slots__ = ()

    def _body(self, payload: dict[str, Any]) -> None:
        self.usage.input_tokens = self.usage.output_tokens = 0


class Catalogue:
    """The model list endpoint in one family's format (mixed into that family's :class:`WireAPI`)."""

    __slots__ = ()

    def model_id(self, path: str) -> str | None:
        """The ``{id}`` of ``/v1/models/{id}`` (URL-decoded), or None for the list."""
        rest = path.partition("?")[0].removeprefix(MODELS_PATH).strip("/")
        return urllib.parse.unquote(rest) if rest else None

    def listing(self, models: Sequence[Listed], query: str) -> bytes:
        raise NotImplementedError

    def one(self, model: Listed) -> bytes:
        raise NotImplementedError


class OpenAICatalogue(Catalogue, OpenAIAPI):
    __slots__ = ()

    def listing(self, models: Sequence[Listed], query: str) -> bytes:
        return orjson.dumps({"object": "list", "data": [self._model(m) for m in models]})

    def one(self, model: Listed) -> bytes:
        return orjson.dumps(self._model(model))

    @staticmethod
    def _model(model: Listed) -> dict[str, Any]:
        return {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by}

    def parse(self, body: bytes) -> ParsedRequest:
        raise ClientError(405, "method_not_allowed", "The model list is read with GET.")

    def reader(self) -> Reader:
        return _Nothing()


class AnthropicCatalogue(Catalogue, MessagesAPI):
    __slots__ = ()

    def listing(self, models: Sequence[Listed], query: str) -> bytes:
        params = _params(query)
        limit = _limit(params.get("limit"))
        page = list(models)
        if params.get("before_id"):
            end = _index(page, params["before_id"], "before_id")
            page = page[max(0, end - limit):end]
            more = end - limit > 0
        else:
            start = _index(page, params["after_id"], "after_id") + 1 if params.get("after_id") else 0
            more = len(page) - start > limit
            page = page[start:start + limit]
        return orjson.dumps({"data": [self._model(m) for m in page], "has_more": more,
                             "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None})

    def one(self, model: Listed) -> bytes:
        return orjson.dumps(self._model(model))

    @staticmethod
    def _model(model: Listed) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "model", "id": model.id, "display_name": model.id,
                               "created_at": "1970-01-01T00:00:00Z", "lifecycle": "active"}
        if model.context_window:
            out["max_input_tokens"] = model.context_window
        if model.max_output_tokens:
            out["max_tokens"] = model.max_output_tokens
        return out

    def parse(self, body: bytes) -> ParsedRequest:
        raise ClientError(405, "method_not_allowed", "The model list is read with GET.")

    def reader(self) -> Reader:
        return _Nothing()


def _params(query: str) -> Mapping[str, str]:
    return {key: values[-1] for key, values in urllib.parse.parse_qs(query).items()}


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ClientError(400, "invalid_request", "'limit' must be an integer from 1 to 1000.", "limit")
    return int(raw)


def _index(models: list[Listed], wanted: str, param: str) -> int:
    for index, model in enumerate(models):
        if model.id == wanted:
            return index
    raise ClientError(400, "invalid_request", f"'{param}' names no model of this list.", param)


class CountTokensAPI(MessagesAPI):
    """``POST /v1/messages/count_tokens``: a Messages request body, answered ``{"input_tokens": N}``."""

    __slots__ = ()
    refuses_stream = False  # a Messages body's ``stream`` is ignored: counting never streams

    def __init__(self) -> None:
        super().__init__("anthropic.count_tokens", "/v1/messages/count_tokens", "anthropic",
                         required_list="messages", streams=False, output_fields=None)
        self.billed = False  # counting is free: no budget nor tokens (rate limits count the request)

    def parse(self, body: bytes) -> ParsedRequest:
        request = super().parse(body)
        request.stream = False  # counting never streams
        return request

    def reader(self) -> Reader:
        return _Free()


OPENAI_MODELS = OpenAICatalogue("openai.models", MODELS_PATH, streams=False)
ANTHROPIC_MODELS = AnthropicCatalogue("anthropic.models", MODELS_PATH, "anthropic", streams=False)
COUNT_TOKENS = CountTokensAPI()


def catalogue(path: str, headers: Mapping[str, str]) -> OpenAICatalogue | AnthropicCatalogue | None:
    """The model list endpoint ``path`` names, in the caller's family's format (None: not one)."""
    bare = path.partition("?")[0].rstrip("/")
    if bare != MODELS_PATH and not bare.startswith(MODELS_PATH + "/"):
        return None
    return ANTHROPIC_MODELS if "anthropic-version" in headers else OPENAI_MODELS
