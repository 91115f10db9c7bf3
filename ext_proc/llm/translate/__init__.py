"""Translation between wire APIs, one :class:`Pair` per (client API, served API), in one table.

A client speaks one API (its SDK); the policy may route it to a provider that speaks another.
A :class:`Pair` turns the client's request into the served API's, and the served API's answer
(JSON, event stream, error) back into the client's, given the client's request too (the shape an
answer takes may depend on it: legacy ``functions`` are answered with a ``function_call``). Both
directions present the same faces: the request/response/error functions, and a
:class:`StreamTranslator` per streamed answer. The pairs are pure functions and small state
machines over decoded JSON, with no I/O:

* :mod:`.openai_to_anthropic` serves an OpenAI chat client from Anthropic: the request goes out as
  a Messages request, the Message (or its event stream, or its error) comes back as OpenAI's.
* :mod:`.anthropic_to_openai` serves an Anthropic client from an OpenAI-compatible model.
* :mod:`.responses_to_anthropic` serves an OpenAI Responses client from Anthropic, and
  :mod:`.responses_to_chat` from a chat-completions-only model; :mod:`.responses_common` holds
  what they share (the request read as a chat request, the Responses answer and events written).
* :mod:`.common` holds what both directions share: finish/stop reasons, SSE framing; :mod:`.fields`
  the JSON types of the client's fields, checked before any translation reads them.

Fields that have no counterpart are dropped (and listed in each module's docstring); requests that
cannot be expressed at all (for example ``n > 1`` against Anthropic) raise
:class:`TranslationError`, which the caller answers as a 400 in the client's error format.
Adding a translation: one module implementing the faces, one entry in :data:`PAIRS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ext_proc.llm.apis import CHAT_COMPLETIONS, MESSAGES, RESPONSES, WireAPI
from ext_proc.llm.runtime import Runtime
from ext_proc.llm.sse import SSEEvent

from . import anthropic_to_openai, openai_to_anthropic, responses_to_anthropic, responses_to_chat
from .common import TranslationError

__all__ = ["PAIRS", "Pair", "StreamTranslator", "TranslationError", "pair"]


class StreamTranslator(Protocol):
    """One served event stream turned into the client's, event by event (both directions)."""

    @property
    def complete(self) -> bool:
        """The served answer finished properly: the client's stream may end cleanly."""

    def feed(self, event: SSEEvent) -> bytes:
        """One served event -> the client's events (may raise :class:`TranslationError`)."""

    def end(self) -> bytes:
        """The served stream ended: what the client is still owed if it completed, else ``b''``."""

    def error(self, message: str) -> bytes:
        """An in-stream error event in the client's format; nothing more is translated after it."""


@dataclass(frozen=True, slots=True)
class Pair:
    """How a ``client`` API is served by a provider speaking ``served``."""

    client: WireAPI
    served: WireAPI
    # (client payload, the provider's model name, the output it may produce when the client sets no limit:
    # the target's output_tokens, which the limits step claims) -> served payload
    request: Callable[[dict[str, Any], str, int], dict[str, Any]]
    # (served answer, the client's request, runtime) -> client answer
    response: Callable[[dict[str, Any], dict[str, Any], Runtime], dict[str, Any]]
    error: Callable[[int, bytes], bytes]  # served error body (any bytes) -> client error body
    # (the model to report, whether the client asked for a usage event, the client's request, runtime, the prompt's
    # tokens as Tollway estimated them: what a format that must give numbers before the provider's says) -> a translator
    stream: Callable[[str | None, bool, dict[str, Any], Runtime, int | None], StreamTranslator]


PAIRS: dict[tuple[WireAPI, WireAPI], Pair] = {
    (CHAT_COMPLETIONS, MESSAGES): Pair(
        CHAT_COMPLETIONS, MESSAGES,
        request=lambda payload, model, limit: openai_to_anthropic.request(payload, model, default_max_tokens=limit),
        response=lambda payload, asked, runtime: openai_to_anthropic.response(
            payload, runtime=runtime, functions=openai_to_anthropic.uses_functions(asked)),
        error=openai_to_anthropic.error,
        stream=lambda model, usage, asked, runtime, _estimate: openai_to_anthropic.StreamTranslator(
            model=model, include_usage=usage, runtime=runtime, functions=openai_to_anthropic.uses_functions(asked)),
    ),
    (MESSAGES, CHAT_COMPLETIONS): Pair(
        MESSAGES, CHAT_COMPLETIONS,
        request=lambda payload, model, _limit: anthropic_to_openai.request(payload, model),
        response=lambda payload, _asked, runtime: anthropic_to_openai.response(payload, runtime=runtime),
        error=anthropic_to_openai.error,
        stream=lambda model, _usage, _asked, runtime, estimate: anthropic_to_openai.StreamTranslator(
            model=model, runtime=runtime, estimate=estimate),
    ),
    (RESPONSES, MESSAGES): Pair(
        RESPONSES, MESSAGES,
        request=lambda payload, model, limit: responses_to_anthropic.request(payload, model, default_max_tokens=limit),
        response=lambda payload, _asked, runtime: responses_to_anthropic.response(payload, runtime=runtime),
        error=responses_to_anthropic.error,
        stream=lambda model, _usage, _asked, runtime, _estimate: responses_to_anthropic.StreamTranslator(model=model,
                                                                                              runtime=runtime),
    ),
    (RESPONSES, CHAT_COMPLETIONS): Pair(
        RESPONSES, CHAT_COMPLETIONS,
        request=lambda payload, model, _limit: responses_to_chat.request(payload, model),
        response=lambda payload, _asked, runtime: responses_to_chat.response(payload, runtime=runtime),
        error=responses_to_chat.error,
        stream=lambda model, _usage, _asked, runtime, _estimate: responses_to_chat.StreamTranslator(
            model=model, runtime=runtime),
    ),
}


def pair(client: WireAPI, served: WireAPI) -> Pair | None:
    """The translation serving ``client`` from ``served`` (None: there is none)."""
    return PAIRS.get((client, served))
