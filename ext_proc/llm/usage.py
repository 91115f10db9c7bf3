"""Token usage as providers report it, normalised; ``None`` means "not reported", never zero.

Normalisation: ``input_tokens`` is every prompt token the provider processed, including cache
reads and cache writes (OpenAI's ``prompt_tokens`` already counts cached tokens; Anthropic's
``input_tokens`` does not, so its cache fields are added). ``cached_tokens`` are cache reads,
``cache_write_tokens`` cache creation (Anthropic's ``cache_creation_input_tokens``, OpenAI's
``cache_write_tokens`` in the prompt or input details), ``reasoning_tokens`` are part of
``output_tokens`` (OpenAI's ``completion_tokens_details.reasoning_tokens``). Three subsets have
rates of their own and change only the cost: Anthropic's 1-hour cache writes
(``cache_creation.ephemeral_1h_input_tokens``), OpenAI's audio tokens in and out
(``prompt_tokens_details`` / ``completion_tokens_details.audio_tokens``); so do Anthropic's web
searches (``server_tool_use.web_search_requests``), billed per search.

How the provider served the request selects its rates: ``service_tier`` as the answer reports it
(OpenAI's top-level ``service_tier``: ``default``, ``flex``, ``priority``...; Anthropic's
``usage.service_tier``) and ``speed`` (Anthropic's ``usage.speed``: ``fast`` for fast mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ext_proc.values import value


@dataclass(slots=True)
class Usage:
    """Tokens of one request; each field ``None`` until the provider reported it."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Subsets priced at rates of their own (never on the record: they only change the cost)
    cache_write_1h_tokens: int | None = None  # of cache_write_tokens: Anthropic's 1-hour cache writes
    input_audio_tokens: int | None = None  # of input_tokens (uncached): OpenAI's audio input
    output_audio_tokens: int | None = None  # of output_tokens: OpenAI's audio output
    web_searches: int | None = None  # Anthropic's server-side web searches, billed per search
    # How it was served, as the answer says (None: not said): selects the price's variant
    service_tier: str | None = None
    speed: str | None = None

    def as_dict(self) -> dict[str, int | str | None]:
        return asdict(self)


def _int(value: Any) -> int | None:
    """A count the provider reports; None when it is not one (a string, a negative number, or more
    than any request can hold: a broken upstream's 10**18 would overflow the record's integers)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MOST else None


_MOST = 10**12  # a count above this is no request's (a million times the largest context window)


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def apply_openai(usage: Usage, raw: Any) -> None:
    """Fill ``usage`` from an OpenAI ``usage`` object (chat, completions, embeddings)."""
    if not isinstance(raw, dict):
        return
    usage.input_tokens = _int(raw.get("prompt_tokens"))
    completion = _int(raw.get("completion_tokens"))
    if completion is None and "completion_tokens" not in raw and usage.input_tokens is not None:
        # Embeddings report prompt tokens only: they produce no output tokens at all.
        completion = 0 if "total_tokens" in raw else None
    usage.output_tokens = completion
    usage.cached_tokens = _int(_get(raw, "prompt_tokens_details", "cached_tokens"))
    usage.cache_write_tokens = _int(_get(raw, "prompt_tokens_details", "cache_write_tokens"))
    usage.reasoning_tokens = _int(_get(raw, "completion_tokens_details", "reasoning_tokens"))
    usage.input_audio_tokens = _int(_get(raw, "prompt_tokens_details", "audio_tokens"))
    usage.output_audio_tokens = _int(_get(raw, "completion_tokens_details", "audio_tokens"))


def apply_anthropic(usage: Usage, raw: Any) -> None:
    """Merge an Anthropic ``usage`` object (``message`` / ``message_start`` / ``message_delta``).

    Fields absent from ``raw`` keep their earlier values: ``message_delta`` carries the final,
    cumulative ``output_tokens`` and may omit the input side.
    """
    if not isinstance(raw, dict):
        return
    base = _int(raw.get("input_tokens"))
    read = _int(raw.get("cache_read_input_tokens"))
    write = _int(raw.get("cache_creation_input_tokens"))
    if read is not None:
        usage.cached_tokens = read
    if write is not None:
        usage.cache_write_tokens = write
    hour = _int(_get(raw, "cache_creation", "ephemeral_1h_input_tokens"))
    if hour is not None:
        usage.cache_write_1h_tokens = hour
    if base is not None:
        # A later event may repeat input_tokens with null cache fields: the earlier ones still count.
        usage.input_tokens = base + (usage.cached_tokens or 0) + (usage.cache_write_tokens or 0)
    out = _int(raw.get("output_tokens"))
    if out is not None:
        usage.output_tokens = out
    searches = _int(_get(raw, "server_tool_use", "web_search_requests"))
    if searches is not None:
        usage.web_searches = searches
    tier, speed = raw.get("service_tier"), raw.get("speed")
    if isinstance(tier, str):
        usage.service_tier = tier
    if isinstance(speed, str):
        usage.speed = speed


def started(raw: Any) -> Any:
    """An Anthropic ``message_start``'s usage without its ``output_tokens``: a placeholder (1) that
    ``message_delta``'s cumulative count replaces, which may well be lower (a stream's counts are
    otherwise never lowered: :func:`apply_streamed`)."""
    return {key: value for key, value in raw.items() if key != "output_tokens"} if isinstance(raw, dict) else raw


def apply_responses(usage: Usage, raw: Any) -> None:
    """Fill ``usage`` from a Responses API ``usage`` object (``input_tokens`` counts cache reads,
    ``output_tokens`` reasoning, as chat's ``prompt_tokens`` / ``completion_tokens`` do)."""
    if not isinstance(raw, dict):
        return
    usage.input_tokens = _int(raw.get("input_tokens"))
    usage.output_tokens = _int(raw.get("output_tokens"))
    usage.cached_tokens = _int(_get(raw, "input_tokens_details", "cached_tokens"))
    written = _int(_get(raw, "input_tokens_details", "cache_write_tokens"))
    if written is not None:
        usage.cache_write_tokens = written
    usage.reasoning_tokens = _int(_get(raw, "output_tokens_details", "reasoning_tokens"))


_COUNTS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
           "cache_write_1h_tokens", "input_audio_tokens", "output_audio_tokens", "web_searches")


def apply_streamed(apply: Callable[[Usage, Any], None], usage: Usage, raw: Any) -> None:
    """A stream's usage object (``apply``: its API's ``apply_*``) over what earlier events of the
    stream reported, no count lowered: a provider's later all-zero or partial usage object (a
    proxy's, a second usage chunk) never undoes the real one (each API's counts in a stream only
    grow: Anthropic's are cumulative, OpenAI's and Responses' come once)."""
    if not isinstance(raw, dict):
        return
    before = replace(usage)
    apply(usage, raw)
    for name in _COUNTS:
        old = getattr(before, name)
        if old is not None:
            new = getattr(usage, name)
            if new is None or new < old:
                setattr(usage, name, old)


def apply_service_tier(usage: Usage, answer: dict[str, Any]) -> None:
    """Note the ``service_tier`` an OpenAI answer (a completion, a chunk, a response) says it was served in."""
    tier = answer.get("service_tier")
    if isinstance(tier, str):
        usage.service_tier = tier


@value
class TokenEstimate:
    """Prompt tokens of one request, whether they follow a rule known to match, and which rule."""

    tokens: int
    exact: bool
    method: str
    # What may be billed above the input rate, seen while counting: the input_audio parts' tokens
    # (OpenAI chat) and the dearest cache write a ``cache_control`` asks for (Anthropic: "5m", "1h").
    audio: int = 0
    cache_write: str | None = None
