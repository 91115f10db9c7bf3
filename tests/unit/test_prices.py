"""Prices and costs: exact micro-dollar arithmetic, genai-prices' bundled data (offline), policy overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, localcontext
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import genai_prices
import pytest
import yaml
from genai_prices import data_snapshot

from ext_proc.llm.prices import KIND_PROVIDERS, Price, PriceTable, Tier, cost_micros, default_table
from ext_proc.llm.usage import Usage, apply_openai
from tests.fixtures import CASSETTES

ROOT = Path(__file__).resolve().parents[2]
D = Decimal
# A fixed day after every price the tests read was introduced, so comparisons do not move with the clock.
AT = datetime(2026, 11, 1, 12, tzinfo=UTC)


def price(input: str, output: str, cache_read: str | None = None, cache_write: str | None = None) -> Price:
    return Price(
        D(input),
        D(output),
        None if cache_read is None else D(cache_read),
        None if cache_write is None else D(cache_write),
    )


def usage(
    prompt: int | None,
    output: int | None,
    cached: int | None = None,
    written: int | None = None,
    reasoning: int | None = None,
    hour: int | None = None,
    audio: tuple[int, int] | None = None,
    searches: int | None = None,
) -> Usage:
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
        cache_write_1h_tokens=hour,
        input_audio_tokens=audio[0] if audio else None,
        output_audio_tokens=audio[1] if audio else None,
        web_searches=searches,
    )


def genai_micros(kind: str, model: str, used: Usage, at: datetime = AT, service_tier: str | None = None,
                 speed: str | None = None) -> int:
    """The same usage through genai-prices' own calc_price, converted to micro-dollars (half-up)."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
            cache_read_tokens=used.cached_tokens,
            cache_write_tokens=used.cache_write_tokens,
            cache_write_1h_tokens=used.cache_write_1h_tokens,
            input_audio_tokens=used.input_audio_tokens,
            output_audio_tokens=used.output_audio_tokens,
            web_searches=used.web_searches,
        ),
        model,
        provider_id=KIND_PROVIDERS[kind],
        genai_request_timestamp=at,
        price_context={key: value for key, value in (("service_tier", service_tier), ("speed", speed)) if value},
    )
    assert isinstance(calc.total_price, Decimal)  # genai-prices computes in Decimal, in USD
    with localcontext() as ctx:
        ctx.prec = 100
        return int((calc.total_price * 1_000_000).quantize(D(1), rounding=ROUND_HALF_UP))


# -- Arithmetic --------------------------------------------------------------------------------


def test_hand_computed_cost_with_cache_reads_writes_and_reasoning() -> None:
    # 1,000 prompt tokens = 700 uncached + 200 cache reads + 100 cache writes; 500 output, 300 of them reasoning.
    # 700 x 2.50 + 200 x 1.25 + 100 x 3.75 + 500 x 10.00 = 1,750 + 250 + 375 + 5,000 = 7,375 micro-dollars.
    assert cost_micros(price("2.50", "10.00", "1.25", "3.75"), usage(1000, 500, 200, 100, 300)) == 7375


def test_reasoning_tokens_are_not_billed_twice() -> None:
    rates = price("2.50", "10.00", "1.25")
    assert cost_micros(rates, usage(1000, 500, reasoning=480)) == cost_micros(rates, usage(1000, 500)) == 7500


def test_cache_tokens_without_their_own_rate_cost_the_input_rate() -> None:
    assert cost_micros(price("2", "8"), usage(1000, 0, cached=400, written=100)) == 2000
    assert cost_micros(price("2", "8", cache_read="0.5"), usage(1000, 0, cached=400, written=100)) == 1400


def test_unreported_cache_fields_count_as_no_cache_tokens() -> None:
    assert cost_micros(price("3", "15", "0.3", "3.75"), usage(100, 10, None, None)) == 450


def test_rounding_is_half_up_once_at_the_end() -> None:
    assert cost_micros(price("0.5", "0"), usage(5, 0)) == 3  # 2.5 -> 3 (banker's rounding would give 2)
    assert cost_micros(price("0.5", "0"), usage(1, 0)) == 1  # 0.5 -> 1
    assert cost_micros(price("0.15", "0"), usage(3, 0)) == 0  # 0.45 -> 0
    assert cost_micros(price("0.15", "0"), usage(10, 0)) == 2  # 1.5 -> 2
    # 0.3 + 0.3 = 0.6 -> 1; rounding each part first would give 0.
    assert cost_micros(price("0.3", "0.3"), usage(1, 1)) == 1
    assert cost_micros(price("0.000001", "0"), usage(499_999, 0)) == 0
    assert cost_micros(price("0.000001", "0"), usage(500_000, 0)) == 1


def test_huge_token_counts_stay_exact() -> None:
    huge = 10**40 + 7
    # (10^40 + 7) x 2.5 + (10^40 + 7) x 0.075 = (10^40 + 7) x 2.575 = 2.575e40 + 18.025 -> ...018
    assert cost_micros(price("2.5", "0.075"), usage(huge, huge)) == 2575 * 10**37 + 18
    assert cost_micros(price("0.000000000000000000000000000001", "0"), usage(10**60, 0)) == 10**30


def test_unknown_usage_is_unknown_never_zero() -> None:
    rates = price("2.50", "10.00")
    assert cost_micros(rates, usage(None, None)) is None
    assert cost_micros(rates, usage(100, None)) is None
    assert cost_micros(rates, usage(None, 100)) is None
    assert cost_micros(rates, usage(0, 0)) == 0  # reported zero is zero


def test_inconsistent_usage_is_unknown_not_negative() -> None:
    assert cost_micros(price("2.50", "10.00"), usage(100, 1, cached=90, written=20)) is None


def test_prompt_size_tiers_bill_the_whole_request_above_the_threshold() -> None:
    rates = Price(D(3), D(15), D("0.3"), D("3.75"), tiers=(Tier(200_000, Price(D(6), D("22.5"), D("0.6"), D("7.5"))),))
    assert cost_micros(rates, usage(200_000, 1000)) == 200_000 * 3 + 1000 * 15
    assert cost_micros(rates, usage(200_001, 1000)) == 200_001 * 6 + 1000 * 22.5
    # cache reads and writes count towards the threshold
    assert cost_micros(rates, usage(200_001, 0, cached=100_000, written=100_000)) == 1 * 6 + 100_000 * (
        D("0.6") + D("7.5")
    )


def test_prices_are_decimals_never_floats() -> None:
    with pytest.raises(ValueError, match="Decimal"):
        Price(2.5, D(10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        Price(D(-1), D(10))
    with pytest.raises(ValueError, match="finite"):
        Price(D(1), D("NaN"))
    with pytest.raises(ValueError, match="ascend"):
        Price(D(1), D(1), tiers=(Tier(10, Price(D(2), D(2))), Tier(10, Price(D(3), D(3)))))


def test_parse_policy_prices() -> None:
    parsed = Price.parse({"input": "2.50", "output": "10.00", "cache_read": "1.25", "cache_write": " 3.75 "})
    assert parsed == Price(D("2.50"), D("10.00"), D("1.25"), D("3.75"), source="policy")
    assert Price.parse({"input": 3, "output": 15}, source="policy@abc") == Price(D(3), D(15), source="policy@abc")
    with pytest.raises(ValueError, match=r'quoted decimal string such as "2\.50"'):
        Price.parse({"input": 2.5, "output": "10"})
    with pytest.raises(ValueError, match="output is required"):
        Price.parse({"input": "2.5"})
    with pytest.raises(ValueError, match="unknown price field"):
        Price.parse({"input": "2.5", "output": "10", "cached": "1"})
    with pytest.raises(ValueError, match="not a number"):
        Price.parse({"input": "2,50", "output": "10"})
    with pytest.raises(ValueError, match="quoted"):
        Price.parse({"input": True, "output": "10"})


# -- genai-prices data ---------------------------------------------------------------------------

REAL_MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o-mini-2024-07-18"),
    ("openai", "gpt-5-nano-2025-08-07"),
    ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-haiku-4-5-20251001"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("azure-openai", "gpt-5-nano-2025-08-07"),
    ("azure-openai", "gpt-4o-2024-08-06"),
    ("azure-openai", "text-embedding-3-small"),
    ("openai", "gpt-audio"),  # audio tokens in and out at their own rates
    ("openai", "gpt-audio-mini"),
]
USAGES = [
    usage(1234, 567),
    usage(10_000, 2_000, cached=4_096, reasoning=1_500),
    usage(50_000, 800, cached=20_000, written=10_000),
    usage(250_000, 4_000, cached=100_000, written=20_000),  # above claude-sonnet-4-5's 200k tier
    usage(7, 0),
    usage(5_100, 50, cached=100, written=1_000, hour=600),  # 1-hour cache writes: their own rate
    usage(1_000, 1_000, audio=(900, 900)),  # audio in and out: theirs
    usage(10_000, 100, cached=8_000, audio=(7_000, 0)),  # audio read from the cache, too (OpenAI counts it)
    usage(12_000, 600, searches=5),  # web searches: per 1,000 (only Anthropic's usage counts them)
]


@pytest.mark.parametrize(("kind", "model"), REAL_MODELS)
def test_real_prices_match_genai_prices_own_calculation(kind: str, model: str) -> None:
    rates = default_table().price(kind, model, AT)
    assert rates is not None
    assert rates.source == default_table().version
    for used in USAGES:
        if model.startswith("text-embedding") and used.output_tokens:
            continue
        if ((used.input_audio_tokens and rates.input_audio is None)
                or (used.output_audio_tokens and rates.output_audio is None)):
            assert cost_micros(rates, used) is None, used  # audio it has no rate for: unknown, not text
            continue
        assert cost_micros(rates, used) == genai_micros(kind, model, used), used


@pytest.mark.parametrize("model", ["gpt-4o-audio-preview-2024-12-17", "gpt-4o-mini-audio-preview"])
def test_audio_tokens_of_a_model_with_no_audio_rate_make_the_cost_unknown_not_text(model: str) -> None:
    """genai-prices has no audio rates for the audio previews (their audio costs several times their
    text): a usage with audio tokens has an unknown cost (reports say "at least"), not audio billed
    at text rates; without audio tokens it is priced; a policy price with audio rates prices it, and
    one without them bills audio as text, as documented."""
    rates = default_table().price("openai", model, AT)
    assert rates is not None and rates.input_audio is None and rates.output_audio is None
    audio = usage(120, 300, audio=(100, 250))  # the recorded audio answer's usage
    assert cost_micros(rates, audio) is None
    assert cost_micros(rates, usage(120, 300, audio=(100, 0))) is None
    assert cost_micros(rates, usage(120, 300, audio=(0, 0))) == cost_micros(rates, usage(120, 300))
    assert cost_micros(rates, usage(120, 300)) is not None
    policy = Price.parse({"input": "2.50", "output": "10.00", "input_audio": "40", "output_audio": "80"})
    assert cost_micros(policy, audio) == 20 * 2.5 + 100 * 40 + 50 * 10 + 250 * 80  # 24,550 micro-dollars
    assert cost_micros(Price.parse({"input": "2.50", "output": "10.00"}), audio) == 120 * 2.5 + 300 * 10


def test_known_list_prices_catch_unit_mix_ups() -> None:
    # Hand-written from the providers' price pages, per 1M tokens, as of 2025-10-01:
    # gpt-4o-mini $0.15 in / $0.60 out / $0.075 cached in (OpenAI, since 2024-07-18);
    # claude-sonnet-4-5 $3 in / $15 out / $0.30 cache read / $3.75 cache write (Anthropic, since 2025-09-29);
    # text-embedding-3-small $0.02 (OpenAI, since 2024-01-25).
    table, day = default_table(), datetime(2025, 10, 1, tzinfo=UTC)
    mini = table.price("openai", "gpt-4o-mini-2024-07-18", day)
    sonnet = table.price("anthropic", "claude-sonnet-4-5-20250929", day)
    embedding = table.price("openai", "text-embedding-3-small", day)
    assert mini is not None and sonnet is not None and embedding is not None
    assert (mini.input, mini.output, mini.cache_read) == (D("0.15"), D("0.6"), D("0.075"))
    assert (sonnet.input, sonnet.output, sonnet.cache_read, sonnet.cache_write) == (D(3), D(15), D("0.3"), D("3.75"))
    assert embedding.input == D("0.02")
    # one million tokens each way: $0.75 = 750,000 micro-dollars
    assert cost_micros(mini, usage(1_000_000, 1_000_000)) == 750_000
    assert cost_micros(sonnet, usage(1_000_000, 1_000_000)) is not None  # 1M prompt is in the 200k+ tier
    assert cost_micros(sonnet, usage(100_000, 10_000)) == 450_000  # $0.30 + $0.15
    assert cost_micros(embedding, usage(1_000_000, 0)) == 20_000


def test_tiered_price_is_carried_and_matches_genai_prices() -> None:
    sonnet = default_table().price("anthropic", "claude-sonnet-4-5", AT)
    assert sonnet is not None and [tier.above for tier in sonnet.tiers] == [200_000]
    assert sonnet.tiers[0].price.input == 2 * sonnet.input
    for prompt in (199_999, 200_000, 200_001, 1_000_000):
        used = usage(prompt, 1_000, cached=prompt // 2)
        assert cost_micros(sonnet, used) == genai_micros("anthropic", "claude-sonnet-4-5", used)


def test_prices_follow_the_request_date() -> None:
    # OpenAI cut o3 from $10/$40 to $2/$8 per 1M tokens on 2025-06-10.
    table = default_table()
    before = table.price("openai", "o3-2025-04-16", datetime(2025, 6, 9, 23, 59, tzinfo=UTC))
    after = table.price("openai", "o3-2025-04-16", datetime(2025, 6, 10, 0, 1, tzinfo=UTC))
    naive = table.price("openai", "o3-2025-04-16", datetime(2025, 6, 10, 0, 1))  # naive means UTC
    assert before is not None and after is not None
    assert (before.input, before.output, after.input, after.output) == (D(10), D(40), D(2), D(8))
    assert naive == after
    for at in (datetime(2025, 6, 9, tzinfo=UTC), datetime(2025, 6, 11, tzinfo=UTC)):
        rates = table.price("openai", "o3", at)
        assert rates is not None
        assert cost_micros(rates, USAGES[1]) == genai_micros("openai", "o3", USAGES[1], at)


def test_service_tier_selects_openai_priority_and_flex_rates() -> None:
    table = default_table()
    standard = table.price("openai", "o3", AT)
    assert standard == table.price("openai", "o3", AT, service_tier="default")
    for tier in ("priority", "flex"):
        rates = table.price("openai", "o3", AT, service_tier=tier)
        assert rates is not None and rates != standard
        assert cost_micros(rates, USAGES[1]) == genai_micros("openai", "o3", USAGES[1], service_tier=tier)
    # A tier genai-prices has no rates for (Scale Tier is a commitment) is priced at the standard rates.
    assert table.price("openai", "o3", AT, service_tier="scale") == standard


def test_speed_selects_anthropic_fast_mode_rates() -> None:
    table, used = default_table(), usage(50_000, 2_000, cached=20_000, written=10_000, hour=4_000, searches=2)
    standard = table.price("anthropic", "claude-opus-4-8", AT)
    fast = table.price("anthropic", "claude-opus-4-8", AT, speed="fast")
    assert standard is not None and fast is not None and fast.input > standard.input
    assert table.price("anthropic", "claude-opus-4-8", AT, service_tier="standard", speed="standard") == standard
    assert cost_micros(fast, used) == genai_micros("anthropic", "claude-opus-4-8", used, speed="fast")
    assert cost_micros(fast, used) == genai_micros("anthropic", "claude-opus-4-8", used, AT, "standard", "fast")


def test_web_searches_cost_their_fee_per_thousand() -> None:
    sonnet = default_table().price("anthropic", "claude-sonnet-4-5", AT)
    assert sonnet is not None and sonnet.web_search == D(10)  # $10 per 1,000 searches
    assert cost_micros(sonnet, usage(0, 0, searches=5)) == 50_000
    assert cost_micros(sonnet, usage(0, 0, searches=5)) == genai_micros("anthropic", "claude-sonnet-4-5",
                                                                        usage(0, 0, searches=5))
    assert cost_micros(price("3", "15"), usage(0, 0, searches=5)) == 0  # a policy price has no fee


def test_time_of_day_prices_are_resolved_per_call() -> None:
    # DeepSeek's off-peak discount is reachable through azure's fallback providers.
    table = default_table()
    peak, off_peak = datetime(2026, 11, 1, 10, tzinfo=UTC), datetime(2026, 11, 1, 17, 30, tzinfo=UTC)
    for at in (peak, off_peak):
        rates = table.price("azure-openai", "deepseek-chat", at)
        assert rates is not None
        assert cost_micros(rates, USAGES[0]) == genai_micros("azure-openai", "deepseek-chat", USAGES[0], at)


def test_what_has_no_package_price() -> None:
    table = default_table()
    assert table.price("openai-compatible", "gpt-4o") is None  # someone else's endpoint: policy prices only
    assert table.price("openai", "claude-sonnet-4-5") is None  # not OpenAI's model
    assert table.price("anthropic", "claude-haiku") is None  # a public alias, not a model Anthropic serves
    assert table.price("openai", "no-such-model") is None
    assert table.price("openai", "") is None
    assert table.price("bedrock", "gpt-4o") is None  # not a Tollway kind
    assert table.price("openai", "whisper-1") is None  # priced per audio hour, not per token


def test_rates_the_price_cannot_bill_are_named() -> None:
    table = default_table()
    sonnet = table.price("anthropic", "claude-sonnet-4-5", AT)
    gpt4o = table.price("openai", "gpt-4o", AT)
    assert sonnet is not None and gpt4o is not None
    # OpenAI's web search fee is on the price, but its usage has no count for it (nor does genai-prices read one)
    assert gpt4o.web_search == D(10) and "web_searches_kcount" not in gpt4o.omitted
    assert "storage_searches_kcount" in gpt4o.omitted
    # Billed now: 1-hour cache writes and audio tokens have counts in the usage.
    assert sonnet.cache_write_1h == 2 * sonnet.input and "cache_write_1h_mtok" not in sonnet.omitted
    audio = table.price("openai", "gpt-audio", AT)
    assert audio is not None and audio.input_audio is not None and "input_audio_mtok" not in audio.omitted


def test_model_names_match_like_providers_report_them() -> None:
    table = default_table()
    assert table.price("openai", "GPT-4O-MINI", AT) == table.price("openai", "gpt-4o-mini-2024-07-18", AT)
    assert table.price("anthropic", "claude-sonnet-4-5", AT) == table.price(
        "anthropic", "claude-sonnet-4-5-20250929", AT
    )
    # azure-openai borrows OpenAI's prices for OpenAI's models
    assert table.price("azure-openai", "gpt-5-nano-2025-08-07", AT) == table.price("openai", "gpt-5-nano", AT)


def test_version_names_the_package_and_its_data() -> None:
    version = default_table().version
    assert version.startswith(f"genai-prices {genai_prices.__version__}")
    assert default_table() is default_table()


# -- Overrides ------------------------------------------------------------------------------------


def test_overrides_win_over_package_prices() -> None:
    base = default_table()
    negotiated = price("2.00", "8.00", "1.00")
    table = base.with_overrides({"gpt-4o": negotiated, "llama-3.1-8b": price("0.10", "0.10")})
    hit = table.price("openai", "gpt-4o", AT)
    assert hit is not None and hit.source == "policy" and hit.input == D("2.00")
    assert table.version == base.version
    # the served model carries the route's names as aliases
    assert table.price("openai", "gpt-4o-2024-08-06", AT, aliases=("gpt-4o-latest", "gpt-4o")) == hit
    assert table.price("openai", "gpt-4o-2024-08-06", AT) == base.price("openai", "gpt-4o-2024-08-06", AT)
    # self-hosted models are priced by policy only
    assert table.price("openai-compatible", "meta-llama/Llama-3.1-8B-Instruct", aliases=["llama-3.1-8b"]) is not None
    assert base.price("openai", "gpt-4o", AT) != hit  # the original table is unchanged
    assert dict(base.overrides) == {}


def test_overrides_are_stamped_and_layer() -> None:
    first = PriceTable.empty().with_overrides({"a": price("1", "1"), "b": price("2", "2")}, source="policy v1")
    second = first.with_overrides({"b": price("3", "3")}, source="policy v2")
    a, b = second.price("openai", "a"), second.price("openai", "b")
    assert a is not None and b is not None
    assert (a.source, b.source, b.input) == ("policy v1", "policy v2", D(3))
    sonnet = default_table().price("anthropic", "claude-sonnet-4-5", AT)
    assert sonnet is not None and sonnet.tiers
    negotiated = PriceTable.empty().with_overrides({"sonnet": sonnet}).price("anthropic", "sonnet")
    assert negotiated is not None and {negotiated.source, negotiated.tiers[0].price.source} == {"policy"}
    assert PriceTable.empty().price("openai", "gpt-4o") is None
    assert PriceTable.empty().version == "none"


# -- Offline and fast ------------------------------------------------------------------------------


def test_prices_load_without_any_network_access() -> None:
    """A fresh interpreter with sockets, urllib and httpx disabled loads the data and prices models."""
    script = textwrap.dedent("""
        import socket, urllib.request, threading

        def no_network(*args, **kwargs):
            raise AssertionError("network access attempted")

        class NoSocket(socket.socket):
            def __init__(self, *args, **kwargs):
                no_network()

        socket.socket = NoSocket
        socket.create_connection = socket.getaddrinfo = urllib.request.urlopen = no_network
        import httpx, httpx2
        for module in (httpx, httpx2):
            module.Client.send = module.AsyncClient.send = no_network

        from ext_proc.llm.prices import cost_micros, default_table
        from ext_proc.llm.usage import Usage
        table = default_table()
        price = table.price("openai", "gpt-4o-mini")
        assert price is not None, "no price"
        assert table.price("anthropic", "claude-sonnet-4-5-20250929") is not None
        print(cost_micros(price, Usage(1_000_000, 1_000_000)), [t.name for t in threading.enumerate()])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    micros, threads = done.stdout.split(" ", 1)
    assert int(micros) > 0
    assert "genai_prices:update" not in threads  # genai-prices' downloader never started


def test_lookups_in_process_do_not_touch_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import urllib.request

    import httpx
    import httpx2

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access attempted")

    for target, name in [
        (socket.socket, "connect"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
        (urllib.request, "urlopen"),
        (httpx.Client, "send"),
        (httpx2.Client, "send"),
    ]:
        monkeypatch.setattr(target, name, no_network)
    table = PriceTable.load()  # a new table: its own caches, so every lookup below really resolves
    for kind, model in REAL_MODELS:
        assert table.price(kind, model) is not None
    assert "genai_prices:update" not in {thread.name for thread in threading.enumerate()}


def test_a_downloaded_snapshot_elsewhere_in_the_process_is_ignored() -> None:
    """genai-prices' UpdatePrices replaces a process-wide snapshot; Tollway keeps the bundled one."""
    expected = default_table().price("openai", "gpt-4o", AT)
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        with pytest.raises(LookupError):
            genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "gpt-4o", provider_id="openai")
        fresh = PriceTable.load()
        assert fresh.price("openai", "gpt-4o", AT) == expected
    finally:
        data_snapshot.set_custom_snapshot(None)


def test_repeated_lookups_and_costs_are_fast() -> None:
    table = default_table().with_overrides({"llama": price("0.1", "0.1")})
    names = [
        ("openai", "gpt-4o-2024-08-06"),
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("azure-openai", "gpt-5-nano-2025-08-07"),
        ("openai-compatible", "llama"),
    ]
    for kind, model in names:
        table.price(kind, model)  # warm-up
    started = time.process_time()
    for i in range(10_000):
        kind, model = names[i % 4]
        table.price(kind, model, aliases=("public-name",))
    lookups = time.process_time() - started
    rates = table.price("anthropic", "claude-sonnet-4-5-20250929")
    assert rates is not None
    used = usage(12_345, 678, cached=1_000, written=500)
    started = time.process_time()
    for _ in range(10_000):
        cost_micros(rates, used)
    costs = time.process_time() - started
    print(f"\n10k lookups {lookups * 1e3:.1f} ms, 10k costs {costs * 1e3:.1f} ms")
    # An order of magnitude over what they take (about 2 µs each), in CPU time: a busy machine's
    # waits are not counted, a lookup or a cost gone slow (a scan, a parse per call) is.
    assert lookups < 0.1
    assert costs < 0.1


def test_loading_the_data_takes_well_under_a_second() -> None:
    started = time.perf_counter()
    PriceTable.load()
    elapsed = time.perf_counter() - started  # the package is imported already: this is building the table
    print(f"\nPriceTable.load() {elapsed * 1e3:.1f} ms (package already imported)")
    assert elapsed < 1.0


# -- Recorded exchanges ------------------------------------------------------------------------------


def _served(body: str) -> tuple[str | None, Any]:
    """The served model and the usage object of a recorded response (JSON, or the last SSE chunk with them)."""
    try:
        parsed = json.loads(body)
        return parsed.get("model"), parsed.get("usage")
    except json.JSONDecodeError:
        chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
        model = next((chunk["model"] for chunk in reversed(chunks) if chunk.get("model")), None)
        return model, next((chunk["usage"] for chunk in reversed(chunks) if chunk.get("usage")), None)


def test_every_recorded_exchange_gets_a_price() -> None:
    table, rows, missing = default_table(), [], []
    for path in sorted(CASSETTES.glob("*.yaml")):
        for interaction in yaml.safe_load(path.read_text())["interactions"]:
            request, response = interaction["request"], interaction["response"]
            model, raw_usage = _served(response["body"])
            if response["code"] != 200 or raw_usage is None:
                continue
            kind = "azure-openai" if "azure.com" in request["url"] else "openai"
            at = parsedate_to_datetime(response["headers"]["Date"][0])
            used = Usage()
            apply_openai(used, raw_usage)
            assert model is not None, path.name
            requested = json.loads(request["body"])["model"]
            rates = table.price(kind, model, at, aliases=(requested,))
            if rates is None:
                missing.append(f"{path.stem}: {model}")
                continue
            micros = cost_micros(rates, used)
            if ((used.input_audio_tokens and rates.input_audio is None)
                    or (used.output_audio_tokens and rates.output_audio is None)):
                assert micros is None, path.name  # audio genai-prices has no rate for: unknown, not text
                rows.append(f"| {path.stem} | {model} | {used.input_tokens} | {used.output_tokens} | "
                            f"{rates.input}/{rates.output} | unknown (audio tokens, no audio rate) |")
                continue
            assert micros is not None, path.name
            priced_as = model if table.price(kind, model, at) is not None else requested
            assert micros == genai_micros(kind, priced_as, used, at), path.name
            rows.append(
                f"| {path.stem} | {model}{'' if priced_as == model else f' (as {requested})'} | "
                f"{used.input_tokens} | {used.output_tokens} | "
                f"{rates.input}/{rates.output} | ${Decimal(micros) / 1_000_000:.6f} |"
            )
    print("\n| case | served model | input | output | $/1M in/out | cost |\n| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    assert not missing, missing
    assert len(rows) >= 30
