"""LLM prices and exact request costs: USD per million tokens as ``Decimal``, costs as integer micro-dollars.

Theory of operation
-------------------
A :class:`Price` is rates in USD per million tokens (uncached input, output, cache reads,
cache writes; 1-hour cache writes and audio in and out where they differ), a web search fee
per 1,000 searches, and the ``source`` that produced them, the version stamped on each request record.
:func:`cost_micros` turns a price and a :class:`~ext_proc.llm.usage.Usage` into integer
micro-dollars. Because a rate is USD per 10^6 tokens, ``tokens x rate`` already *is* micro-dollars:
the sum is computed in ``Decimal`` with unbounded precision (exact for any token count) and rounded
half-up to the micro-dollar once, at the end. Unknown stays unknown: if the provider did not report
input or output tokens, or reported more cached than prompt tokens, the cost is ``None``, never 0.

Prices come from the ``genai-prices`` package (pydantic/genai-prices), which bundles dated prices
for the major providers as Python data (``genai_prices/data.py``). Only that bundled data is read:
the table is built from ``genai_prices.data.providers`` directly, never through the package's
process-wide ``get_snapshot()`` (which another library could replace with a downloaded snapshot),
and its ``UpdatePrices`` downloader is never started (importing the package imports httpx2 for it,
nothing more), so no price lookup opens a connection.
:attr:`PriceTable.version` names the data: the package version and the start of the sha256 of its
``data.py`` (the package ships no snapshot date, and some of its prices are dated in the future).

Tollway's provider kinds map to genai-prices providers (:data:`KIND_PROVIDERS`): ``openai`` and
``anthropic`` to themselves; ``azure-openai`` to ``azure``, whose own entries (phi, embeddings,
o-series) come first, then, as genai-prices defines it, OpenAI's (then Anthropic's, DeepSeek's, ...)
prices, i.e. global-deployment list prices (regional / data-zone deployments cost more: override
them); ``openai-compatible`` to nothing: such an upstream is vLLM, Ollama, Groq, a proxy..., whose
prices are not OpenAI's even when the model name is, so its models are unpriced until the policy
gives them a price. Model names are matched by genai-prices' own rules, so dated snapshots
("gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929") find their family's prices, and case does not
matter. Look up the model the provider *served* (the response's ``model``): for azure-openai the
routed name is a deployment name that genai-prices cannot know.

What genai-prices has and a :class:`Price` keeps:

* Time: prices that changed on a date (``StartDateConstraint``) are resolved for the request's
  UTC day (``at``, default now). A price that depends on the time of day (DeepSeek's off-peak
  hours, reachable through azure's fallbacks) is resolved per call, uncached.
* Prompt-size tiers (``TieredPrices``: claude-sonnet-4-5 above 200k prompt tokens, gpt-5.4 above
  272k): genai-prices bills the *whole* request at the tier rate once the prompt, cache reads and
  writes included, exceeds the threshold. A price carries its tiers (:class:`Tier`) and
  :func:`cost_micros` picks the tier the same way, so the cost equals genai-prices' own
  ``calc_price`` for the same usage.
* Request variants: OpenAI's ``flex``/``priority`` rates apply when ``service_tier`` (as the
  response reports it) is passed, Anthropic's fast mode when ``speed`` ``fast`` is; a value
  genai-prices has no variant for gets the standard rates. Batch rates are not selected (Tollway
  proxies synchronous calls).
* Rates of subsets the usage counts: Anthropic's 1-hour cache writes, OpenAI's audio tokens in
  and out, each billed at its own rate (the rest of the whole at the whole's), as genai-prices
  bills them; web searches at ``web_search`` per 1,000 (``web_searches_kcount``), which only
  Anthropic's usage counts (OpenAI's has no count: its searches go unbilled, as in genai-prices).
  A model genai-prices gives no audio rate (``gpt-4o-audio-preview``, ``gpt-4o-mini-audio-preview``:
  their audio costs several times their text) has an unknown cost for usage with audio tokens
  (``None``, so reports say "at least"), not its audio priced as text; a policy price with
  ``input_audio`` / ``output_audio`` prices it (a policy price without them bills audio as text).
  Rates a price leaves out are named in :attr:`Price.omitted` (genai-prices' price keys): other
  per-call fees (``storage_searches_kcount``), image token rates, cached audio. Tollway's usage
  has no counts for them, so a cost from such a price covers the rest only. A missing
  input or output rate is 0, as genai-prices computes it (embeddings have no output rate); a
  model priced only per hour or per character (whisper, tts) has no token price and gets ``None``.

Lookups go through an LRU per (kind, model, UTC day, service tier, speed), so a repeated lookup costs
about a microsecond. Policy prices (:meth:`PriceTable.with_overrides`) are keyed by model name
and win over the package data.
"""

from __future__ import annotations

import enum
import functools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .usage import Usage

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, Provider

__all__ = [
    "KIND_PROVIDERS",
    "Premiums",
    "Price",
    "PriceTable",
    "Tier",
    "cost_micros",
    "default_table",
    "dollars",
]

# Tollway provider kind -> genai-prices provider id (None: no package prices, policy prices only).
KIND_PROVIDERS: Final[Mapping[str, str | None]] = MappingProxyType(
    {"openai": "openai", "anthropic": "anthropic", "azure-openai": "azure", "openai-compatible": None}
)

_RATES = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "input_audio", "output_audio")
_FEES = ("web_search",)  # USD per 1,000 calls, from genai-prices only (a policy price has none)
# genai-prices price keys behind the rates; any other key it prices is listed in Price.omitted.
_PACKAGE_KEYS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "input_audio_mtok": "input_audio",
    "output_audio_mtok": "output_audio",
    "web_searches_kcount": "web_search",
}
_OPTIONAL = frozenset(_RATES + _FEES) - {"input", "output"}  # None: those tokens cost the rate they are a part of
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)
_ZERO = Decimal(0)
_DAY = 86_400
_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; a ``None`` cache rate means those tokens cost the input rate."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    source: str = "policy"  # the price version stamped on records
    tiers: tuple[Tier, ...] = ()  # ascending; the highest one the prompt exceeds replaces the rates above
    omitted: tuple[str, ...] = ()  # genai-prices price keys this price does not bill
    cache_write_1h: Decimal | None = None  # Anthropic's 1-hour cache writes (None: the cache_write rate)
    input_audio: Decimal | None = None  # OpenAI's audio input tokens (None: the input rate)
    output_audio: Decimal | None = None  # audio output tokens (None: the output rate)
    web_search: Decimal | None = None  # USD per 1,000 web searches (None: not billed)
    # genai-prices' price: audio tokens without a rate of their own have no known price (it lists
    # none for gpt-4o-audio-preview, whose audio costs several times its text), so a cost counting
    # them is None, not audio priced as text. A policy price's missing audio rate is its text rate.
    audio_unpriced: bool = False

    def __post_init__(self) -> None:
        for name in _RATES + _FEES:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(
                    f"price {name} must be a finite, non-negative Decimal (USD per 1M tokens), not {value!r}"
                )
        previous = -1
        for tier in self.tiers:
            if tier.above <= previous or tier.price.tiers:
                raise ValueError("price tiers must ascend strictly and not have tiers of their own")
            previous = tier.above

    @classmethod
    def parse(cls, raw: Mapping[str, object], *, source: str = "policy") -> Price:
        """A price from configuration: ``{input: "2.50", output: "10.00", cache_read: ..., cache_write: ...}``.

        Values are strings, ints or Decimals in USD per million tokens; floats are refused (a YAML
        ``2.50`` without quotes), since they cannot hold most cent amounts exactly.
        """
        unknown = set(raw) - set(_RATES)
        if unknown:
            raise ValueError(f"unknown price field(s) {sorted(unknown)}; expected {', '.join(_RATES)}")
        rates: dict[str, Decimal | None] = {}
        for name in _RATES:
            value = raw.get(name)
            if value is None:
                if name in ("input", "output"):
                    raise ValueError(f"price {name} is required (USD per 1M tokens)")
                rates[name] = None
            elif isinstance(value, str | int | Decimal) and not isinstance(value, bool):
                try:
                    rates[name] = Decimal(value.strip() if isinstance(value, str) else value)
                except InvalidOperation:
                    raise ValueError(f"price {name} {value!r} is not a number") from None
            else:
                raise ValueError(f'price {name} must be a quoted decimal string such as "2.50", not {value!r}')
        input_, output = rates["input"], rates["output"]
        assert input_ is not None and output is not None
        return cls(input_, output, rates["cache_read"], rates["cache_write"], source=source,
                   cache_write_1h=rates["cache_write_1h"], input_audio=rates["input_audio"],
                   output_audio=rates["output_audio"])


@dataclass(frozen=True, slots=True)
class Tier:
    """Once a request's prompt (cache reads and writes included) exceeds ``above`` tokens, all of it costs ``price``."""

    above: int
    price: Price


def cost_micros(price: Price, usage: Usage) -> int | None:
    """Exact cost in micro-dollars (rounded half-up once), or ``None`` when the usage is unknown or inconsistent.

    ``usage.web_searches`` cost ``web_search`` per 1,000 (USD per 1,000 searches x searches x 1,000
    is micro-dollars); its ``service_tier`` and ``speed`` are the caller's, when it looks up ``price``.
    """
    prompt, output = usage.input_tokens, usage.output_tokens
    if prompt is None or output is None:
        return None
    read = usage.cached_tokens or 0
    written = usage.cache_write_tokens or 0
    hour = usage.cache_write_1h_tokens or 0
    audio_out = usage.output_audio_tokens or 0
    uncached = prompt - read - written
    if uncached < 0 or hour > written or audio_out > output:
        return None
    for tier in reversed(price.tiers):
        if prompt > tier.above:
            price = tier.price
            break
    audio_in = usage.input_audio_tokens or 0
    unpriced_in = bool(audio_in) and price.input_audio is None
    if price.audio_unpriced and (unpriced_in or (bool(audio_out) and price.output_audio is None)):
        return None  # audio with no rate known for it: unknown, as an unknown price (not billed as text)
    if price.cache_read is None:
        # Cache reads cost the input rate: one pool with the uncached tokens, the audio (cached
        # or not: OpenAI's audio_tokens count both) carved out of it, as genai-prices bills it.
        text, read = uncached + read - audio_in, 0
    else:
        audio_in = min(audio_in, uncached)  # the rest of the audio was read from the cache: its rate
        text = uncached - audio_in
    if text < 0:
        return None
    # Reasoning tokens are part of output_tokens: billed once, at the output rate. A subset with a
    # rate of its own (audio, 1-hour cache writes) is billed at it, the rest at the whole's rate.
    total = _EXACT.add(_EXACT.multiply(price.input, text), _EXACT.multiply(price.output, output - audio_out))
    if audio_in:
        total = _EXACT.add(total, _EXACT.multiply(price.input if price.input_audio is None else price.input_audio,
                                                  audio_in))
    if audio_out:
        total = _EXACT.add(total, _EXACT.multiply(price.output if price.output_audio is None else price.output_audio,
                                                  audio_out))
    if read:
        assert price.cache_read is not None
        total = _EXACT.add(total, _EXACT.multiply(price.cache_read, read))
    if written:
        rate = price.input if price.cache_write is None else price.cache_write
        total = _EXACT.add(total, _EXACT.multiply(rate, written - hour))
        if hour:
            total = _EXACT.add(total, _EXACT.multiply(rate if price.cache_write_1h is None else price.cache_write_1h,
                                                      hour))
    if usage.web_searches and price.web_search is not None:
        total = _EXACT.add(total, _EXACT.multiply(price.web_search, usage.web_searches * 1000))
    return int(_EXACT.quantize(total, _ONE))


@dataclass(frozen=True, slots=True)
class Premiums:
    """What a request asks for that may be billed above its tokens at the input and output rates:
    the part of a budget claim (:func:`claim_micros`) the rates alone leave out.

    ``cache_write``: the dearest cache write its ``cache_control`` may make (``"5m"``, ``"1h"``);
    ``input_audio``: the prompt's audio tokens (its ``input_audio`` parts, as counted);
    ``output_audio``: audio asked for in its answer;
    ``web_searches``: the most server-side web searches its tools allow.
    """

    cache_write: str | None = None
    input_audio: int = 0
    output_audio: bool = False
    web_searches: int = 0


def claim_micros(price: Price, input_tokens: int, output_tokens: int, premiums: Premiums) -> float:
    """The most a request of ``input_tokens`` in and ``output_tokens`` out may cost at ``price`` (its
    prompt tier already chosen), in micro-dollars, given what it asks for: the whole prompt at the
    dearest rate any of its tokens may be billed at (a cache write of the TTL asked for), its audio
    tokens at the audio input rate, the whole output at the audio rate when audio is asked for,
    and every search its tools allow at the search fee. An upper bound for a budget claim:
    settlement charges what was really used."""
    prompt = price.input
    if premiums.cache_write is not None:
        write = price.input if price.cache_write is None else price.cache_write
        if premiums.cache_write == "1h" and price.cache_write_1h is not None:
            write = price.cache_write_1h
        prompt = max(prompt, write)
    audio = min(premiums.input_audio, input_tokens) if price.input_audio is not None else 0
    output = price.output
    if premiums.output_audio and price.output_audio is not None:
        output = max(output, price.output_audio)
    total = (input_tokens - audio) * float(prompt) + output_tokens * float(output)
    if audio:
        assert price.input_audio is not None
        total += audio * float(max(prompt, price.input_audio))
    if premiums.web_searches and price.web_search is not None:
        total += premiums.web_searches * 1000 * float(price.web_search)
    return total


class _Resolve(enum.Enum):
    PER_CALL = "per-call"  # the price depends on the time of day: resolve it for each request


class _PackagePrices:
    """genai-prices' bundled providers, with bounded caches (genai-prices' own caches grow per model name)."""

    def __init__(self, providers: Sequence[Provider], version: str) -> None:
        self.providers = list(providers)
        self.version = version
        self._by_id = {provider.id: provider for provider in self.providers}
        # Every model's own id, exactly (some 2,000): names that are models, a bounded set (matching
        # is wider: "claude-sonnet-4-5-<anything>" finds claude-sonnet-4-5's prices).
        self.ids = frozenset(model.id for provider in self.providers for model in provider.models)
        self.lookup = functools.lru_cache(maxsize=_CACHE_SIZE)(self._lookup)
        self._match = functools.lru_cache(maxsize=_CACHE_SIZE)(self._find)

    def _find(self, provider_id: str, model: str) -> tuple[Provider, ModelInfo] | None:
        provider = self._by_id.get(provider_id)
        if provider is None or not model:
            return None
        info = provider.find_model(model, all_providers=self.providers)
        return None if info is None else (provider, info)

    def _lookup(self, provider_id: str, model: str, day: int, service_tier: str | None,
                speed: str | None) -> Price | _Resolve | None:
        found = self._match(provider_id, model)
        if found is None:
            return None
        if _depends_on_time_of_day(found[1]):
            return _Resolve.PER_CALL
        return self._price_at(found, datetime.fromtimestamp(day * _DAY, UTC), service_tier, speed)

    def price_at(self, provider_id: str, model: str, at: datetime, service_tier: str | None,
                 speed: str | None) -> Price | None:
        found = self._match(provider_id, model)
        return None if found is None else self._price_at(found, at, service_tier, speed)

    def _price_at(self, found: tuple[Provider, ModelInfo], at: datetime, service_tier: str | None,
                  speed: str | None) -> Price | None:
        provider, info = found
        # Like genai-prices' calc_price: request variants apply to the provider's own models only,
        # not to those it borrows from another provider (azure -> openai).
        own = any(model is info for model in provider.models)
        context = {key: value for key, value in (("service_tier", service_tier), ("speed", speed)) if value}
        return _from_package(info.get_prices(at, context if own else None), self.version)


def _depends_on_time_of_day(info: ModelInfo) -> bool:
    from genai_prices.types import TimeOfDateConstraint

    constraints = [price.constraint for price in info.prices] if isinstance(info.prices, list) else []
    constraints += [variant.constraint for variant in info.price_variants or ()]
    return any(isinstance(constraint, TimeOfDateConstraint) for constraint in constraints)


def _from_package(model_price: ModelPrice, source: str) -> Price | None:
    """genai-prices' rates for one moment as a :class:`Price` (tiers flattened), or None if not per token."""
    from genai_prices.types import TieredPrices

    stored = {key: value for key, value in vars(model_price).items() if value is not None and not key.startswith("_")}
    rates = {_PACKAGE_KEYS[key]: value for key, value in stored.items() if key in _PACKAGE_KEYS}
    omitted = tuple(sorted(key for key in stored if key not in _PACKAGE_KEYS))
    if stored and "input" not in rates and "output" not in rates:
        return None  # priced per hour, character, image...: not by tokens
    thresholds = sorted(
        {tier.start for value in rates.values() if isinstance(value, TieredPrices) for tier in value.tiers}
    )

    def flat(level: int) -> dict[str, Decimal | None]:
        # The rate for a prompt above `level` tokens: the highest tier starting at or below it.
        out: dict[str, Decimal | None] = {}
        for name in _RATES + _FEES:
            value = rates.get(name)
            if isinstance(value, TieredPrices):
                applicable = [tier.price for tier in value.tiers if tier.start <= level]
                value = applicable[-1] if applicable else value.base
            out[name] = value if isinstance(value, Decimal) or value is None else None
        return out

    def make(level: int, tiers: tuple[Tier, ...] = ()) -> Price:
        r = flat(level)
        return Price(
            r["input"] or _ZERO,
            r["output"] or _ZERO,
            r["cache_read"],
            r["cache_write"],
            source=source,
            tiers=tiers,
            omitted=omitted,
            cache_write_1h=r["cache_write_1h"],
            input_audio=r["input_audio"],
            output_audio=r["output_audio"],
            web_search=r["web_search"],
            audio_unpriced=True,
        )

    return make(-1, tuple(Tier(above, make(above)) for above in thresholds))


class PriceTable:
    """Prices by provider kind and model: policy overrides first, then genai-prices' bundled data."""

    __slots__ = ("_overrides", "_package", "version")

    def __init__(self, package: _PackagePrices | None, overrides: Mapping[str, Price] | None = None) -> None:
        self._package = package
        self._overrides: dict[str, Price] = dict(overrides or {})
        self.version: str = package.version if package is not None else "none"

    @classmethod
    def load(cls) -> PriceTable:
        """A new table over genai-prices' bundled data (prefer the shared :func:`default_table`)."""
        from genai_prices.data import providers

        return cls(_PackagePrices(providers, _package_version()))

    @classmethod
    def empty(cls) -> PriceTable:
        """A table without package data: only overrides have prices."""
        return cls(None)

    @property
    def overrides(self) -> Mapping[str, Price]:
        return MappingProxyType(self._overrides)

    def lists(self, model: str) -> bool:
        """Whether ``model`` is, exactly, a name the table lists: an override's, or the id of a model
        genai-prices has. A bounded set of names, unlike those :meth:`price` matches (a family's
        prefix and anything after it, any case)."""
        return model in self._overrides or (self._package is not None and model in self._package.ids)

    def with_overrides(self, overrides: Mapping[str, Price], *, source: str = "policy") -> PriceTable:
        """This table plus ``overrides`` (model name -> price, stamped ``source``); they win over package data.

        Keys match model names exactly. Key them by every name a request may carry (the policy's
        public name and the upstream model), and pass the route's names as ``aliases`` to
        :meth:`price`: the served model ("gpt-4o-2024-08-06") is rarely the name the policy priced.
        """
        return PriceTable(
            self._package, {**self._overrides, **{name: _stamped(price, source) for name, price in overrides.items()}}
        )

    def price(
        self,
        provider_kind: str,
        model: str,
        at: datetime | None = None,
        *,
        aliases: Sequence[str] = (),
        service_tier: str | None = None,
        speed: str | None = None,
    ) -> Price | None:
        """The price of ``model`` (the served model) at ``at`` (default now), or None when unknown.

        ``aliases`` are the route's other names for it, most specific first (the upstream model,
        then the public name). An override for ``model`` or any alias wins; otherwise the first of
        them that genai-prices prices under the kind's provider: OpenAI's legacy completions report
        ``babbage:2023-07-21-v2`` for ``babbage-002``, which only the requested name finds.
        ``service_tier`` and ``speed`` (as the answer reports them) select genai-prices' price
        variants of the provider's own models (OpenAI's ``flex`` / ``priority``, Anthropic's fast
        mode); a value it has no variant for prices at the standard rates, as genai-prices does.
        """
        if self._overrides:
            for name in (model, *aliases):
                hit = self._overrides.get(name)
                if hit is not None:
                    return hit
        package = self._package
        provider_id = KIND_PROVIDERS.get(provider_kind)
        if package is None or provider_id is None:
            return None
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)  # naive means UTC, as in genai-prices
        day = int(time.time() if at is None else at.timestamp()) // _DAY
        for name in (model, *aliases):
            found = package.lookup(provider_id, name, day, service_tier, speed)
            if found is _Resolve.PER_CALL:
                return package.price_at(provider_id, name, at or datetime.now(UTC), service_tier, speed)
            if found is not None:
                return found
        return None


def _stamped(price: Price, source: str) -> Price:
    tiers = tuple(Tier(tier.above, replace(tier.price, source=source)) for tier in price.tiers)
    return replace(price, source=source, tiers=tiers)


def _package_version() -> str:
    from importlib import metadata

    version = f"genai-prices {metadata.version('genai-prices')}"
    for file in metadata.files("genai-prices") or ():
        if file.parts[-2:] == ("genai_prices", "data.py") and file.hash is not None:
            return f"{version} (data {file.hash.value[:8]})"
    return version


_default: PriceTable | None = None
_default_lock = threading.Lock()


def default_table() -> PriceTable:
    """The process's table over genai-prices' bundled data, loaded on first use (60-150 ms, 8-22 MB RSS)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PriceTable.load()
    return _default


def dollars(micros: int) -> str:
    """``$84.00``; below a cent, two significant digits (``$0.0008``), so a small cost never reads ``$0.00``."""
    if 0 < micros < 10_000:
        exact = Decimal(micros) / 1_000_000
        shown = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 1), rounding=ROUND_HALF_UP)
        return f"${shown.normalize():f}"
    cents = (micros + 5_000) // 10_000  # round half up to the cent
    return f"${cents // 100:,}.{cents % 100:02d}"
