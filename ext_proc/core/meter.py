"""Metering: the pre-send token estimate, estimates for cut streams, and the cost of a request.

The session asks an :class:`Accountant` (injected by the server: the tokenizer and the price
table live outside the pure core, since loading them reads files) for three things: the token
count of a request before it is sent, the token count of text a stream delivered before it was
cut, and the cost of the usage in integer micro-dollars with the price version.

Rules. Provider-reported usage always wins. When a stream ends without usage (cut by the
provider, or the client left), input tokens come from the pre-send estimate and output tokens
from counting the text that was streamed; both are marked as estimated in the record. Unknown
stays unknown: no usage and nothing to count leaves the fields ``None``, and so the cost.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ext_proc.llm.prices import Price
from ext_proc.llm.usage import TokenEstimate, Usage

MAX_STREAM_TEXT = 4 * 1024 * 1024  # bytes of stream events kept for estimating a cut stream


class Accountant(Protocol):
    def count_request(self, api: str, payload: dict[str, Any], model: str) -> TokenEstimate | None: ...

    def count_text(self, text: str, model: str) -> int | None: ...

    def cost(
        self, provider_kind: str, model: str, aliases: tuple[str, ...], usage: Usage, override: Price | None
    ) -> tuple[int | None, str | None]:
        """Micro-dollars and the price version; ``aliases`` are other names of the same model."""
        ...


class Meter:
    """Per-request metering state, filled by the session as events arrive."""

    __slots__ = ("_kept", "accountant", "estimate", "stream_events")

    def __init__(self, accountant: Accountant | None) -> None:
        self.accountant = accountant
        self.estimate: TokenEstimate | None = None
        self.stream_events: list[bytes] = []  # data of content events, for cut streams only
        self._kept = 0

    def before_send(self, api: str, payload: dict[str, Any], model: str) -> None:
        if self.accountant is not None:
            try:
                self.estimate = self.accountant.count_request(api, payload, model)
            except Exception:  # a counting failure must never fail the request
                self.estimate = None

    def keep(self, data: bytes) -> None:
        """Remember a stream event's data (bounded), in case the stream ends without usage."""
        if self.accountant is not None and self._kept < MAX_STREAM_TEXT:
            self.stream_events.append(data)
            self._kept += len(data)

    def settle(
        self, usage: Usage, style: str, stream: bool, provider_kind: str | None, model: str | None,
        aliases: tuple[str, ...], override: Price | None,
    ) -> dict[str, Any]:
        """Fill what the provider did not report (marked estimated) and price the usage."""
        input_estimated = output_estimated = False
        if usage.input_tokens is None and usage.output_tokens is None and stream and self.accountant and model:
            if self.estimate is not None:
                usage.input_tokens = self.estimate.tokens
                input_estimated = True
            text = _streamed_text(self.stream_events, style)
            try:
                counted = self.accountant.count_text(text, model) if text else 0
            except Exception:
                counted = None
            if counted is not None:
                usage.output_tokens = counted
                output_estimated = True
        cost, version = None, None
        if self.accountant is not None and provider_kind is not None and model is not None:
            try:
                cost, version = self.accountant.cost(provider_kind, model, aliases, usage, override)
            except Exception:
                cost, version = None, None
        return {
            "estimated_input_tokens": self.estimate.tokens if self.estimate else None,
            "input_estimated": input_estimated,
            "output_estimated": output_estimated,
            "cost_usd_micros": cost,
            "price_version": version,
        }


def _streamed_text(events: list[bytes], style: str) -> str:
    parts: list[str] = []
    for data in events:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if style == "anthropic":
            delta = event.get("delta")
            if isinstance(delta, dict):
                text = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
                if isinstance(text, str):
                    parts.append(text)
            continue
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            for call in calls or ():
                arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
                if isinstance(arguments, str):
                    parts.append(arguments)
    return "".join(parts)
