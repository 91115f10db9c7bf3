"""Metering: the pre-send token estimate, estimates for cut streams, and the cost of a request.

The session asks an :class:`Accountant` (injected by the server: the tokenizer and the price
table live outside the pure core, since loading them reads files) for three things: the token
count of a request before it is sent, the token count of text a stream delivered before it was
cut, and the cost of the usage in integer micro-dollars with the price version. What the
provider reported comes from the served API's :class:`~ext_proc.llm.apis.Reader`, which the
response's meter stage feeds.

Rules. Provider-reported usage always wins. When a stream ends without usage (cut by the
provider, or the client left), input tokens come from the pre-send estimate and output tokens
from counting the text that was streamed; both are marked as estimated in the record. A stream
that reported its input but not its output (Anthropic's come first and last) keeps the input and
estimates the output. An error answer to a streamed request is no stream: nothing is estimated.
Unknown stays unknown: no usage and nothing to count leaves the fields ``None``, and so the cost.
"""

from __future__ import annotations

from typing import Any, Protocol

from ext_proc.llm.apis import Reader
from ext_proc.llm.prices import Premiums, Price
from ext_proc.llm.usage import TokenEstimate, Usage


class Accountant(Protocol):
    def count_request(self, api: str, payload: dict[str, Any], model: str) -> TokenEstimate | None: ...

    def count_text(self, text: str, model: str) -> int | None: ...

    def cost(
        self, provider_kind: str, model: str, aliases: tuple[str, ...], usage: Usage, override: Price | None
    ) -> tuple[int | None, str | None]:
        """Micro-dollars and the price version; ``aliases`` are other names of the same model."""
        ...

    def estimate_cost(self, provider_kind: str, model: str, aliases: tuple[str, ...], override: Price | None,
                      input_tokens: int, output_tokens: int, service_tier: str | None = None,
                      speed: str | None = None, premiums: Premiums | None = None) -> int | None:
        """Micro-dollars a request of these tokens may cost, rounded up (None: no price), at the
        rates of the tier and speed it asks for, with the premiums it may be billed."""
        ...


class Meter:
    """Per-request metering state: the estimate before sending, the reader of the answer."""

    __slots__ = ("accountant", "estimate", "reader")

    def __init__(self, accountant: Accountant | None) -> None:
        self.accountant = accountant
        self.estimate: TokenEstimate | None = None
        self.reader: Reader | None = None  # the served API's reader, once the answer starts

    @property
    def usage(self) -> Usage:
        """What the provider reported so far (every field ``None`` before the answer)."""
        return self.reader.usage if self.reader is not None else _NOTHING

    def before_send(self, api: str, payload: dict[str, Any], model: str) -> None:
        if self.accountant is not None:
            try:
                self.estimate = self.accountant.count_request(api, payload, model)
            except Exception:  # a counting failure must never fail the request
                self.estimate = None

    def settle(
        self, stream: bool, provider_kind: str | None, model: str | None, aliases: tuple[str, ...],
        override: Price | None,
    ) -> dict[str, Any]:
        """Fill what the provider did not report (marked estimated) and price the usage; ``stream``:
        the provider streamed an answer, whose text (and the request's estimate) stands for the
        usage it did not report."""
        usage = self.usage
        input_estimated = output_estimated = False
        if usage is _NOTHING:
            usage = Usage()
        if usage.output_tokens is None and stream and self.accountant and model:
            # A stream that ended before its usage (Anthropic's input count comes first, its output
            # count last): what is missing is estimated, what was reported stays.
            if usage.input_tokens is None and self.estimate is not None:
                usage.input_tokens = self.estimate.tokens
                input_estimated = True
            text = self.reader.text() if self.reader is not None else ""
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
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "estimated_input_tokens": self.estimate.tokens if self.estimate else None,
            "input_estimated": input_estimated,
            "output_estimated": output_estimated,
            "cost_usd_micros": cost,
            "price_version": version,
        }


_NOTHING = Usage()  # shared, never written: settle() copies before filling in estimates
