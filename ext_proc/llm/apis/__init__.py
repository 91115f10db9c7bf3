"""The wire APIs Tollway serves, registered in one table.

Each is a :class:`~ext_proc.llm.apis.base.WireAPI` in a module of its family
(:mod:`.openai`, :mod:`.responses`, :mod:`.anthropic`; the model list and token counting
endpoints in :mod:`.local`); :data:`APIS` lists them, and a request's path finds its
API here and nowhere else. Adding an API: one module, one line in :data:`APIS`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .anthropic import MESSAGES
from .base import ParsedRequest, RateWindow, Reader, WireAPI, error_code, gunzip
from .local import ANTHROPIC_MODELS, COUNT_TOKENS, OPENAI_MODELS, Listed, catalogue
from .openai import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS
from .responses import RESPONSES

# The POST endpoints, by path (the model list, a GET, is found by :func:`catalogue`).
APIS: tuple[WireAPI, ...] = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES, MESSAGES, COUNT_TOKENS)

_BY_PATH = {api.path: api for api in APIS}

__all__ = [
    "ANTHROPIC_MODELS", "APIS", "CHAT_COMPLETIONS", "COMPLETIONS", "COUNT_TOKENS", "EMBEDDINGS", "MESSAGES",
    "OPENAI_MODELS", "RESPONSES", "Listed", "ParsedRequest", "RateWindow", "Reader", "WireAPI", "catalogue",
    "error_code", "for_errors", "gunzip", "match",
]


def match(path: str) -> WireAPI | None:
    """The API a request path names (query string and a trailing slash ignored), or None."""
    return _BY_PATH.get(path.partition("?")[0].rstrip("/"))


def for_errors(path: str, headers: Mapping[str, str] | None = None) -> WireAPI:
    """The API whose error format answers a request Tollway does not serve: the family whose path
    it starts with (an Anthropic SDK calling ``/v1/messages/batches`` gets Anthropic's), else
    Anthropic's for a request with ``anthropic-version`` (the SDK's ``/v1/files``, ``/v1/skills``),
    else OpenAI's."""
    for api in APIS:
        if path.startswith(api.path):
            return api
    if headers is not None and "anthropic-version" in headers:
        return MESSAGES
    return CHAT_COMPLETIONS
