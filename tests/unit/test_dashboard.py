"""The dashboard's numbers: the same as the spend report's for the same records, read incrementally."""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ext_proc.ledger import log
from ext_proc.ledger.dashboard import LATENCY_BOUNDS, ModelNames, Timeline, from_ledger, percentile, window_days
from ext_proc.ledger.log import Follower
from ext_proc.ledger.report import aggregate
from ext_proc.state import ledger
from ext_proc.state.ledger import MemoryLedger

NOW = 1_796_400_000.0


def records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        outcome = rng.choice(["ok"] * 6 + ["error", "incomplete", "rejected"])
        rejected = outcome == "rejected"
        out.append({
            "request_id": f"r{i}", "ts": NOW - rng.uniform(0, 20 * 3600), "team": rng.choice(["search", "ads"]),
            "model": rng.choice(["gpt-4o-mini", "claude-haiku", "chat"]), "provider": None if rejected else
            rng.choice(["openai", "anthropic"]), "outcome": outcome, "status": 403 if rejected else 200,
            "input_tokens": None if rejected or outcome == "error" else rng.randint(1, 900),
            "output_tokens": None if rejected or outcome == "error" else rng.randint(0, 400),
            "cached_tokens": 0 if rejected else rng.randint(0, 5), "reasoning_tokens": 0,
            "cost_usd_micros": None if rejected or rng.random() < 0.1 else rng.randint(0, 5000),
            "fallback": not rejected and rng.random() < 0.2, "guardrails": ["pii"] if rng.random() < 0.2 else [],
            "latency_ms": round(rng.uniform(1, 4000), 3),
        })
    return out


def test_the_totals_and_rows_equal_the_reports() -> None:
    found = records(400)
    timeline = Timeline()
    for record in found:
        timeline.add(record, NOW)
    data = timeline.summary(NOW - 24 * 3600, NOW + 1, step=900)
    assert len(data["slots"]) == 24 * 4 + 1
    for by, rows in (("team", data["teams"]), ("model", data["models"])):
        report = {row.group: row.as_dict() for row in aggregate(found, by)}
        assert {row["group"] for row in rows} == set(report)
        for row in rows:
            expected = report[row["group"]]
            for name in ("requests", "refused", "input_tokens", "output_tokens", "cached_tokens", "cost_usd_micros",
                         "unknown_usage", "unknown_cost", "fallbacks", "guardrail_triggers", "refused_by_status"):
                assert row[name] == expected[name], (by, row["group"], name)
            # The exact p95 lies in the bucket the dashboard names (bounds 25 % apart).
            assert row["p95_latency_ms"] / 1.25 <= expected["p95_latency_ms"] <= row["p95_latency_ms"]
    assert data["totals"]["cost_usd_micros"] == sum(r["cost_usd_micros"] or 0 for r in found)
    assert sum(sum(series) for series in data["series"]["cost_by_team"].values()) == data["totals"]["cost_usd_micros"]
    assert data["totals"]["errors"] == sum(r["outcome"] == "error" for r in found)
    assert data["totals"]["incomplete"] == sum(r["outcome"] == "incomplete" for r in found)


def test_a_window_leaves_out_what_is_older() -> None:
    timeline = Timeline()
    for record in records(200):
        timeline.add(record, NOW)
    recent = timeline.summary(NOW - 3600, NOW + 1)
    assert recent["totals"]["requests"] == sum(1 for r in records(200) if r["ts"] >= (NOW - 3600) // 300 * 300)


def test_made_up_model_names_cannot_grow_the_page() -> None:
    """400 requests, each naming a model of its own (refused, or answered: without a policy a
    provider answers any name): 50 keep their name, the rest are one "(other)" row; a model the
    policy serves always has its own, whenever it comes."""
    timeline = Timeline(names=ModelNames(lambda model: model == "gpt-4o"))
    for i in range(400):
        timeline.add({"ts": NOW, "team": "search", "model": f"made-up-{i}", "provider": None, "outcome": "rejected",
                      "status": 404}, NOW)
        timeline.add({"ts": NOW, "team": "search", "model": f"answered-{i}", "provider": "openai", "outcome": "ok",
                      "status": 200, "input_tokens": 5, "output_tokens": 2, "cost_usd_micros": 1}, NOW)
    timeline.add({"ts": NOW, "team": "search", "model": "gpt-4o", "provider": "openai", "outcome": "ok",
                  "status": 200, "input_tokens": 5, "output_tokens": 2, "cost_usd_micros": 10, "latency_ms": 5.0}, NOW)
    models = {cell[1] for cells in timeline.slots.values() for cell in cells}
    assert len(models) == 52 and {"(other)", "gpt-4o", "made-up-0", "answered-24", "made-up-24"} <= models
    # A served model's refusal (a budget's 429) keeps its name, past the bound too.
    timeline.add({"ts": NOW, "team": "search", "model": "gpt-4o", "provider": None, "outcome": "rejected",
                  "status": 429}, NOW)
    assert {cell[1] for cells in timeline.slots.values() for cell in cells} == models
    data = timeline.summary(NOW - 3600, NOW + 1)
    assert len(data["models"]) == len(data["series"]["cost_by_model"]) == 52
    assert next(r for r in data["models"] if r["group"] == "(other)")["requests"] == 2 * 400 - 50


def test_a_record_dated_after_the_present_is_left_out_not_the_present() -> None:
    """A line dated in the year 2999 (an edited log) or 9 days ahead (a clock that jumped) once
    emptied the timeline: every slot older than its time minus 8 days was dropped."""
    timeline = Timeline()
    found = records(50)
    for record in found:
        timeline.add(record, NOW)
    for ts in (32_503_679_999, NOW + 9 * 86400, NOW + 3600):
        timeline.add(dict(found[0], ts=ts), NOW)
    timeline.add({"ts": "yesterday"}, NOW)
    timeline.add(dict(found[0], ts=NOW + 60), NOW)  # a few seconds ahead: another worker's clock
    data = timeline.summary(NOW - 24 * 3600, NOW + 3600)
    assert data["totals"]["requests"] == len(found) + 1
    assert data["skipped"] == 4
    assert min(timeline.slots) <= NOW - 19 * 3600


def test_the_aggregates_give_errors_cut_streams_latency_and_team_models() -> None:
    """With --redis the dashboard reads the aggregates: the same counts as the log's timeline,
    errors and cut streams included (they once read 0), and latency percentiles to the bounds of
    the aggregates' buckets (they once read None)."""
    found = records(400)
    timeline = Timeline()
    memory = MemoryLedger()
    for record in found:
        timeline.add(record, NOW)
    memory.add(found)
    days = window_days(NOW - 24 * 3600, NOW + 1)
    aggregates = from_ledger(days, memory.cells(days[0], days[-1] + timedelta(days=1)))
    log = timeline.summary(NOW - 24 * 3600, NOW + 1)
    assert aggregates["source"] == "redis"
    for name in ("requests", "refused", "tokens", "cost_usd_micros", "errors", "incomplete", "fallbacks",
                 "guardrail_triggers", "unknown_usage", "unknown_cost", "avg_latency_ms"):
        assert aggregates["totals"][name] == log["totals"][name], name
        for by in ("teams", "models", "providers", "team_models"):
            assert {r["group"]: r[name] for r in aggregates[by]} == {r["group"]: r[name] for r in log[by]}, (by, name)
    assert aggregates["totals"]["errors"] == sum(r["outcome"] == "error" for r in found) > 0
    assert sum(aggregates["series"]["failed"]) == sum(log["series"]["failed"]) > 0
    sent = sorted(r["latency_ms"] for r in found if r["outcome"] != "rejected")
    for p, name in ((50, "p50_latency_ms"), (95, "p95_latency_ms"), (99, "p99_latency_ms")):
        exact = sent[-(-p * len(sent) // 100) - 1]
        bound = aggregates["totals"][name]
        assert bound in ledger.LATENCY_BOUNDS and exact <= bound, name
        assert ledger.LATENCY_BOUNDS.index(bound) == 0 or ledger.LATENCY_BOUNDS[
            ledger.LATENCY_BOUNDS.index(bound) - 1] < exact, name
    assert all(r["p95_latency_ms"] is not None for r in aggregates["teams"] if r["requests"] > r["refused"])


def test_aggregates_written_before_they_held_outcomes_read_unknown_not_zero() -> None:
    old, new = records(60, seed=1), records(40, seed=2)
    memory = MemoryLedger()
    memory.add(old)
    for counters in memory.buckets.values():  # what an older Tollway wrote: no outcome counters
        for name in ("outcomes", "errors", "incomplete"):
            counters.pop(name, None)
    days = window_days(NOW - 24 * 3600, NOW + 1)
    window = (days[0], days[-1] + timedelta(days=1))
    data = from_ledger(days, memory.cells(*window))
    sent = sum(r["outcome"] != "rejected" for r in old)
    assert (data["totals"]["errors"], data["totals"]["incomplete"], data["totals"]["unknown_outcome"]) == \
        (None, None, sent)
    assert all(r["errors"] is None for r in data["teams"])
    memory.add(new)  # then the newer Tollway's: their outcomes are known, the older ones still unknown
    data = from_ledger(days, memory.cells(*window))
    assert data["totals"]["errors"] == sum(r["outcome"] == "error" for r in new)
    assert data["totals"]["incomplete"] == sum(r["outcome"] == "incomplete" for r in new)
    assert data["totals"]["unknown_outcome"] == sent


def test_the_aggregates_fold_made_up_model_names_too() -> None:
    memory = MemoryLedger()
    memory.add([{"ts": NOW - i, "team": "search", "model": f"made-up-{i}", "provider": None, "outcome": "rejected",
                 "status": 404} for i in range(120)])
    memory.add([{"ts": NOW, "team": "search", "model": "gpt-4o", "provider": "openai", "outcome": "ok",
                 "input_tokens": 1, "output_tokens": 1, "cost_usd_micros": 1, "latency_ms": 10.0}])
    days = window_days(NOW - 3600, NOW + 1)
    data = from_ledger(days, memory.cells(days[0], days[-1] + timedelta(days=1)), lambda model: model == "gpt-4o")
    names = [r["group"] for r in data["models"]]
    assert len(names) == 52 and names[0] == "gpt-4o" and "(other)" in names
    assert set(data["series"]["cost_by_model"]) == set(names)
    assert sum(r["requests"] for r in data["models"]) == 121


def test_percentile_is_the_bucket_bound() -> None:
    histogram = [0] * (len(LATENCY_BOUNDS) + 1)
    histogram[10] = 99
    histogram[20] = 1
    assert percentile(histogram, 50) == LATENCY_BOUNDS[10]
    assert percentile(histogram, 99) == LATENCY_BOUNDS[10]
    assert percentile(histogram, 100) == LATENCY_BOUNDS[20]
    assert percentile([0] * len(histogram), 50) is None


@pytest.mark.parametrize("chunk", [1 << 22, 7, 30])
def test_the_follower_reads_only_new_lines_across_a_rotation(tmp_path: Path, chunk: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Across a rotation, and a chunk at a time (a week of log is hundreds of MB: read at once, it
    held them all; a line longer than a chunk is read whole)."""
    monkeypatch.setattr(log, "READ_CHUNK", chunk, raising=False)
    path = tmp_path / "requests.jsonl"
    lines = [orjson.dumps({"request_id": f"r{i}"}) + b"\n" for i in range(5)]
    path.write_bytes(lines[0] + lines[1] + lines[2][:7])  # a line half written
    follower = Follower(str(path))
    assert [r["request_id"] for r in follower.new_records()] == ["r0", "r1"]
    with open(path, "ab") as out:
        out.write(lines[2][7:])
    os.rename(path, tmp_path / "requests.jsonl.20261205T000000.000000Z")  # rotated by a worker
    path.write_bytes(lines[3] + lines[4])
    assert [r["request_id"] for r in follower.new_records()] == ["r2", "r3", "r4"]
    assert list(follower.new_records()) == []


def test_the_follower_holds_a_chunk_of_the_log_not_all_of_it(tmp_path: Path) -> None:
    """The dashboard's first read takes the whole week of log: read at once, it held all of it (a
    65 MB log peaked the process at 361 MB RSS)."""
    import tracemalloc

    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records(16_000)))
    assert path.stat().st_size > 4_000_000
    follower = Follower(str(path))
    tracemalloc.start()
    try:
        n = sum(1 for _ in follower.new_records())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 16_000 and peak < 4_000_000, peak  # at once: 9 MB (the file, then its lines)


def test_with_an_admin_token_the_page_is_open_and_its_data_is_not() -> None:
    import asyncio

    from tests.unit.test_admin_token import TOKEN, _get, _serve

    async def scenario() -> None:
        server, sock = _serve(TOKEN)
        await server.start(sock)
        port = sock.getsockname()[1]
        try:
            for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/icon.svg"):
                status, headers, body = await _get(port, path)
                assert status == 200 and b"payments" not in body, path
                assert headers["content-security-policy"].startswith("default-src 'self'")
            assert b"#token=" in (await _get(port, "/dashboard/dashboard.js"))[2]  # how the page gets it
            assert (await _get(port, "/v1/dashboard"))[0] == 401
            status, _, body = await _get(port, "/v1/dashboard?hours=1", f"Bearer {TOKEN}")
            assert status == 200 and orjson.loads(body)["totals"]["requests"] == 0
        finally:
            await server.close()

    asyncio.run(scenario())


def week(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """``n`` records over the last 7 days, in time order, most of them a (team, model) of their own in
    their 5 minutes (as a gateway's dozens of teams and models spread them)."""
    rng = random.Random(seed)
    found = []
    for i, record in enumerate(records(n, seed)):
        record.update(ts=NOW - 7 * 86400 + i * (7 * 86400 / n), team=f"t{rng.randrange(60)}",
                      model=f"m{rng.randrange(30)}")
        found.append(record)
    return found


def test_a_week_of_the_log_is_kept_compact() -> None:
    """The timeline is kept for the process' life once the dashboard is opened: each (slot, team,
    model, provider) was a report row and a 62-bucket histogram (~1.2 KB; 100k records over a week
    kept 121 MB). A cell is now an array of its counts and the latency buckets it holds, and slots
    older than a day are hourly."""
    import tracemalloc

    found = week(4000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        timeline = Timeline()
        for record in found:
            timeline.add(record, NOW)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2_500_000, kept  # was 5 MB
    assert max(timeline.hourly.slots) < NOW - 24 * 3600 and min(timeline.slots) >= NOW - 26 * 3600


def test_older_slots_are_hourly_and_the_week_adds_up_as_the_report() -> None:
    """Fed as a running service reads its log (the present moving on), the slots past a day fold into
    hours: the week's totals and rows are still the report's, and the 7-day window is drawn in whole
    hours (2-hour points); the last 24 hours keep 15-minute points."""
    found = week(3000)
    live, once = Timeline(), Timeline()
    for record in found:
        live.add(record, record["ts"] + 1)  # read a second after it was written
        once.add(record, NOW)
    for timeline in (live, once):
        data = timeline.summary(NOW - 168 * 3600, NOW + 1, step=6300)
        assert data["step"] == 7200 and len(data["slots"]) == 85
        assert all(slot % 7200 == 0 for slot in data["slots"])
        assert sum(data["series"]["requests"]) == data["totals"]["requests"] == len(found)
        for by, rows in (("team", data["teams"]), ("model", data["models"])):
            report = {row.group: row.as_dict() for row in aggregate(found, by)}
            assert {row["group"] for row in rows} == set(report)
            for row in rows:
                expected = report[row["group"]]
                for name in ("requests", "refused", "input_tokens", "output_tokens", "cost_usd_micros", "unknown_cost",
                             "errors", "incomplete", "guardrails", "refused_by_status"):
                    assert row[name] == expected[name], (by, row["group"], name)
                assert abs(row["avg_latency_ms"] - expected["avg_latency_ms"]) < 0.002
        day = timeline.summary(NOW - 24 * 3600, NOW + 1, step=900)
        assert day["step"] == 900 and day["totals"]["requests"] == sum(r["ts"] >= NOW - 24 * 3600 for r in found)
    assert live.summary(NOW - 168 * 3600, NOW + 1, step=7200) == once.summary(NOW - 168 * 3600, NOW + 1, step=7200)
