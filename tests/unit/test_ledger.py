"""Reports over request records, the rotated request log, and the `tollway report` command."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ext_proc.cli import main
from ext_proc.ledger.log import log_files, read_records
from ext_proc.ledger.report import aggregate, dollars, human_count, month_window, sentence
from ext_proc.server.records import RecordWriter

OCT = datetime(2026, 10, 15, 12, tzinfo=UTC).timestamp()
NOV = datetime(2026, 11, 2, tzinfo=UTC).timestamp()


def rec(**fields: Any) -> dict[str, Any]:
    base = {"ts": OCT, "team": "search", "model": "gpt-4o", "key_id": "k1", "provider": "openai",
            "input_tokens": 1000, "output_tokens": 200, "cached_tokens": 0, "reasoning_tokens": 0,
            "cost_usd_micros": 4500, "latency_ms": 300.0, "guardrails": []}
    return {**base, **fields}


RECORDS = [
    rec(),
    rec(latency_ms=380.0, guardrails=["pii"]),
    rec(model="claude", provider="anthropic", cost_usd_micros=1_000_000, input_tokens=10, output_tokens=5),
    rec(team="support", key_id="k2"),
    rec(input_tokens=None, output_tokens=None, cost_usd_micros=None),  # usage never reported
    rec(cost_usd_micros=None),  # usage but no price
    rec(ts=NOV),  # outside October
]


def test_aggregate_by_team_in_a_month() -> None:
    since, until = month_window("2026-10")
    assert (since, until) == (date(2026, 10, 1), date(2026, 11, 1))
    rows = {r.group: r for r in aggregate(RECORDS, "team", since, until)}
    search = rows["search"]
    assert search.requests == 5
    assert search.input_tokens == 1000 + 1000 + 10 + 1000 and search.output_tokens == 200 + 200 + 5 + 200
    assert search.cost_usd_micros == 4500 + 4500 + 1_000_000
    assert (search.unknown_usage, search.unknown_cost, search.guardrail_triggers) == (1, 1, 1)
    assert search.avg_latency_ms == 316.0 and search.p95_latency_ms == 380.0
    assert rows["support"].requests == 1
    assert next(r.group for r in aggregate(RECORDS, "team", since, until)) == "search"  # most expensive first


def test_the_platform_teams_sentence() -> None:
    big = rec(input_tokens=4_000_000, output_tokens=200_000, cost_usd_micros=84_000_000, latency_ms=340.0,
              guardrails=["pii"])
    small = rec(input_tokens=0, output_tokens=0, cost_usd_micros=0, latency_ms=340.0, guardrails=["pii"])
    rows = aggregate([big, small, small, rec(input_tokens=0, output_tokens=0, cost_usd_micros=0, latency_ms=340.0)],
                     "model")
    assert sentence("A", rows[0]) == (
        "Team A sent 4.2M tokens to gpt-4o at a cost of $84.00, with an average latency of 340ms, "
        "and 3 requests triggered the PII guardrail."
    )


def test_formatting() -> None:
    assert [human_count(n) for n in (950, 12_345, 4_200_000, 3_000_000_000)] == ["950", "12.3K", "4.2M", "3B"]
    assert [dollars(m) for m in (0, 4_999, 5_000, 84_000_000, 1_234_567_890)] == [
        "$0.00", "$0.00", "$0.01", "$84.00", "$1,234.57"]


def test_writer_rotates_and_readers_see_every_record(tmp_path: Path) -> None:
    path = str(tmp_path / "requests.jsonl")
    a = RecordWriter(path, max_bytes=2_000, keep=100)
    b = RecordWriter(path, max_bytes=2_000, keep=100)  # a second worker on the same file
    for i in range(300):
        (a if i % 2 else b).emit({"i": i})
        if i % 7 == 0:
            a.flush()
            b.flush()
    a.flush()
    b.flush()
    files = log_files(path)
    assert len(files) >= 2 and files[-1] == path
    seen = sorted(r["i"] for r in read_records(files))
    assert seen == list(range(300))


def test_writer_keeps_only_the_newest_rotations(tmp_path: Path) -> None:
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, max_bytes=100, keep=3)
    for i in range(50):
        writer.emit({"i": i, "pad": "x" * 50})
        writer.flush()
    assert len(log_files(path)) <= 4


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(orjson.dumps(rec()) + b"\n" + b'{"ts": 1, "team": "x", "inp')
    assert len(list(read_records([str(path)]))) == 1


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    log = ["--log", str(path)]
    assert main(["report", *log, "--by", "model", "--since", "2026-10-01", "--until", "2026-10-31",
                 "--format", "json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert {r["group"]: r["requests"] for r in rows} == {"gpt-4o": 5, "claude": 1}
    assert main(["report", *log, "--format", "csv", "--month", "2026-10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("group,requests,tokens") and len(lines) == 3
    assert main(["report", *log, "--month", "2026-10"]) == 0
    table = capsys.readouterr().out
    assert "search" in table and "$1.01+" in table  # "+": some requests had no known price
    assert main(["report", *log, "--team", "search", "--month", "2026-10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Team search sent 15 tokens to claude at a cost of $1.00,")
    assert "at least $0.01 (1 requests had no known price)" in out[1]
    assert os.path.exists(path)
