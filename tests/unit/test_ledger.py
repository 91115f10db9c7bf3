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
from ext_proc.server.metrics import Tally
from ext_proc.server.records import RecordWriter
from ext_proc.state.ledger import MemoryLedger

OCT = datetime(2026, 10, 15, 12, tzinfo=UTC).timestamp()
NOV = datetime(2026, 11, 2, tzinfo=UTC).timestamp()


def rec(**fields: Any) -> dict[str, Any]:
    base = {"ts": OCT, "team": "search", "model": "gpt-4o", "key_id": "k1", "provider": "openai",
            "api": "openai.chat.completions", "outcome": "ok", "status": 200, "input_tokens": 1000,
            "output_tokens": 200, "cached_tokens": 0, "reasoning_tokens": 0, "cost_usd_micros": 4500,
            "latency_ms": 300.0, "guardrails": []}
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


def both_sources(records: list[dict[str, Any]], redis_port: int,
                 tmp_path: Path) -> tuple[Path, list[list[str]], Any]:
    """``records`` as a request log and as the Redis aggregates (flushed first): the log's path and
    the two ``tollway report`` options that read them, and the Redis client."""
    import redis

    from ext_proc.state.ledger import RedisLedger

    client = redis.Redis(port=redis_port)
    client.flushall()
    RedisLedger(client).add(records)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path, [["--log", str(path)], ["--redis", f"redis://127.0.0.1:{redis_port}/0"]], client


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
        "Team A used 4.2M tokens on gpt-4o (4M in, 200K out) at a cost of $84.00, with an average latency of 340ms, "
        "and 3 requests triggered the PII guardrail."
    )


# Claude Code style traffic: each generation preceded by a token count (forwarded to Anthropic, or
# answered by Tollway for a target of another kind), and the SDK's model list.
COUNTED = rec(api="anthropic.count_tokens", input_tokens=0, output_tokens=0, cost_usd_micros=0, latency_ms=0.3,
              provider=None)
FORWARDED_COUNT = rec(api="anthropic.count_tokens", model="claude", provider="anthropic", input_tokens=0,
                      output_tokens=0, cost_usd_micros=0, latency_ms=90.0)
MODEL_LIST = rec(api="openai.models", model=None, provider=None, input_tokens=0, output_tokens=0, cost_usd_micros=0,
                 latency_ms=0.0)
FAST_ERROR = rec(outcome="error", status=503, input_tokens=None, output_tokens=None, cost_usd_micros=None,
                 latency_ms=4.0)
ABANDONED = rec(outcome="incomplete", input_tokens=50, output_tokens=3, cost_usd_micros=40, latency_ms=30.0)
WITHHELD = rec(outcome="blocked", status=200, error="guardrail_blocked", latency_ms=2400.0)  # answered, billed
MIX = [rec(latency_ms=2000.0), rec(latency_ms=1600.0), WITHHELD, COUNTED, COUNTED, FORWARDED_COUNT, MODEL_LIST,
       FAST_ERROR, ABANDONED]


def duration_ms(tally: Tally, model: str) -> float:
    """The average of gen_ai_client_inference_duration_seconds for a model, with no error_type."""
    found = [v for k, v in tally.histograms.items()
             if k[0] == "gen_ai_client_inference_duration_seconds" and k[3] == model and k[4] == ""]
    return sum(h[-1] for h in found) / sum(sum(h[:-1]) for h in found) * 1000


def test_the_average_latency_is_that_of_the_model_calls_a_provider_answered(redis_port: int) -> None:
    """Not of token counts (Tollway's own, or Anthropic's), model lists, fast provider errors or
    cut streams: a 2 s model reads 2 s, as in /metrics' duration without an error_type. Those
    requests are still counted: token counts and model lists as lookups, errors and cut streams
    as such; the Redis aggregates read the same."""
    import redis

    from ext_proc.state.ledger import RedisLedger

    rows = {r.group: r for r in aggregate(MIX, "model")}
    row = rows["gpt-4o"]
    assert row.avg_latency_ms == 2000.0 and row.p95_latency_ms == 2400.0  # 2000, 1600, 2400
    assert (row.requests, row.lookups, row.errors, row.incomplete, row.refused) == (7, 2, 1, 1, 0)
    assert (rows["claude"].lookups, rows["claude"].avg_latency_ms) == (1, None)
    assert (rows["(none)"].lookups, rows["(none)"].avg_latency_ms) == (1, None)
    tally = Tally()
    for record in MIX:
        tally.record(record)
    assert row.avg_latency_ms == pytest.approx(duration_ms(tally, "gpt-4o"))
    client = redis.Redis(port=redis_port)
    client.flushall()
    memory, shared = MemoryLedger(), RedisLedger(client, prefix="tollway:test-latency")
    for ledger in (memory, shared):
        ledger.add(MIX)
        stored = {r.group: r for r in ledger.rows("model")}
        assert (stored["gpt-4o"].requests, stored["gpt-4o"].lookups) == (7, 2)
        assert stored["gpt-4o"].avg_latency_ms == pytest.approx(2000.0)
        assert stored["gpt-4o"].p95_bound_ms == 3000.0  # the aggregates' bucket holding 2400 ms
        assert stored["claude"].avg_latency_ms is None and stored["(none)"].lookups == 1


def test_sentences_leave_out_model_lists_and_token_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A row of lookups alone (the model list's "(none)", a model only asked for token counts) is no
    "used 0 tokens on (none) (0 in, 0 out) at a cost of $0.00, with an average latency of 0ms"."""
    rows = {r.group: r for r in aggregate([rec(), COUNTED, MODEL_LIST, FORWARDED_COUNT], "model")}
    assert sentence("search", rows["(none)"]) is None and sentence("search", rows["claude"]) is None
    assert sentence("search", rows["gpt-4o"]) == (
        "Team search used 1.2K tokens on gpt-4o (1K in, 200 out) at a cost of $0.0045, with an average latency of "
        "300ms, and no request triggered a guardrail.")
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [rec(), COUNTED, MODEL_LIST, FORWARDED_COUNT]))
    assert main(["report", "--log", str(path), "--team", "search", "--month", "2026-10"]) == 0
    out = capsys.readouterr().out
    assert "used 0 tokens" not in out and len(out.splitlines()) == 1, out
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [COUNTED, MODEL_LIST]))
    assert main(["report", "--log", str(path), "--team", "search", "--month", "2026-10"]) == 0
    assert capsys.readouterr().out == (
        "Team search called no model in 2026-10: its 2 requests listed models or counted tokens.\n")


def test_provider_errors_are_errors_not_unknown_usage() -> None:
    """An error answer (a 503, a 429, with no usage) did no work and cost nothing: not "got no usage
    report (its tokens are unknown)", in the report, the aggregates or /metrics; a cut stream
    without a usage report still is."""
    cut = rec(outcome="incomplete", input_tokens=None, output_tokens=None, cost_usd_micros=None)
    records = [rec(model="smart"), {**FAST_ERROR, "model": "smart"}, cut]
    rows = {r.group: r for r in aggregate(records, "model")}
    assert (rows["smart"].errors, rows["smart"].unknown_usage, rows["gpt-4o"].unknown_usage) == (1, 0, 1)
    told = sentence("search", rows["smart"])
    assert told is not None and "unknown" not in told and "1 request got an error answer" in told
    memory = MemoryLedger()
    memory.add(records)
    assert {r.group: r.unknown_usage for r in memory.rows("model")} == {"smart": 0, "gpt-4o": 1}
    tally = Tally()
    for record in records:
        tally.record(record)
    unknown = {k[2]: v for k, v in tally.counters.items() if k[0] == "tollway_requests_usage_unknown"}
    assert unknown == {"gpt-4o": 1}
    # Every call of a row answered with an error: said so, never "sent 0 tokens".
    (failed,) = aggregate([FAST_ERROR, FAST_ERROR], "model")
    assert sentence("search", failed) == (
        "Team search sent 2 requests to gpt-4o and the provider answered each with an error (no tokens, nothing "
        "charged).")


def test_a_chain_that_failed_at_every_target_is_no_fallback() -> None:
    """A fallback is a request a later target served: a record an older Tollway wrote with
    ``fallback: true`` for a chain whose every target failed counts in no report, aggregate or metric."""
    failed = rec(model="smart", provider="anthropic", outcome="error", status=503, input_tokens=None,
                 output_tokens=None, cost_usd_micros=None, fallback=True, attempts=2)
    served = rec(model="smart", provider="anthropic", fallback=True, attempts=2)
    (row,) = aggregate([failed, served], "model")
    assert row.fallbacks == 1
    memory = MemoryLedger()
    memory.add([failed, served])
    assert memory.rows("model")[0].fallbacks == 1
    tally = Tally()
    tally.record(failed)
    tally.record(served)
    assert sum(v for k, v in tally.counters.items() if k[0] == "tollway_fallbacks") == 1


def test_requests_a_guardrail_blocked_count_as_triggers() -> None:
    """A blocked request went nowhere (refused, no tokens), but its guardrail fired: "3 requests
    triggered the PII guardrail" counts it."""
    blocked = rec(outcome="rejected", status=400, input_tokens=None, output_tokens=None, cost_usd_micros=None,
                  latency_ms=1.0, guardrails=["pii"])
    (row,) = aggregate([rec(guardrails=["pii"]), blocked, blocked], "team")
    assert (row.requests, row.refused, row.guardrail_triggers, row.guardrails) == (3, 2, 3, {"pii": 3})
    assert row.tokens == 1200 and row.unknown_usage == 0
    assert "3 requests triggered the PII guardrail" in sentence("search", row)
    memory = MemoryLedger()
    memory.add([rec(guardrails=["pii"]), blocked, blocked])
    (stored,) = memory.rows("team")
    assert (stored.refused, stored.guardrail_triggers, stored.guardrails) == (2, 3, {"pii": 3})


def test_formatting() -> None:
    assert [human_count(n) for n in (950, 12_345, 4_200_000, 3_000_000_000)] == ["950", "12.3K", "4.2M", "3B"]
    # Rounded up to the next unit, never "1000K": 999,999 tokens read 1M
    assert [human_count(n) for n in (999, 1_000, 999_949, 999_950, 999_999, 999_999_999, 10**13)] == [
        "999", "1K", "999.9K", "1M", "1M", "1B", "10000B"]
    assert [dollars(m) for m in (0, 800, 38, 1, 4_999, 10_000, 14_999, 84_000_000, 1_234_567_890)] == [
        "$0.00", "$0.0008", "$0.000038", "$0.000001", "$0.005", "$0.01", "$0.01", "$84.00", "$1,234.57"]


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


def test_a_corrupt_line_before_the_last_is_counted_and_reported(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Only a torn last line (a crash mid-write) is skipped silently; a corrupt line elsewhere was
    too, though the docstring said otherwise: the report now says how many and where the first is."""
    path = tmp_path / "requests.jsonl"
    path.write_bytes(orjson.dumps(rec()) + b"\n" + b'{"ts": 1, "te\n' + b"\n" + b"[1, 2]\n"
                     + orjson.dumps(rec()) + b"\n" + b'{"ts": 1, "team": "x", "inp')
    unreadable: list[str] = []
    assert len(list(read_records([str(path)], unreadable))) == 2
    assert unreadable == [f"{path}:2", f"{path}:4"]  # the blank line and the torn last one are no news
    assert main(["report", "--log", str(path), "--format", "json"]) == 0
    err = capsys.readouterr().err
    assert err == (f"tollway report: 2 line(s) of {path} left out: not JSON records (the first at {path}:2; "
                   "a corrupted or edited log?)\n")
    path.write_bytes(orjson.dumps(rec()) + b"\n" + b'{"ts": 1, "team": "x", "inp')
    assert main(["report", "--log", str(path), "--format", "json"]) == 0
    assert capsys.readouterr().err == ""


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
    assert lines[0].startswith("group,requests,refused,tokens") and len(lines) == 3
    assert lines[0].split(",")[-7:] == ["cached_tokens", "reasoning_tokens", "cost_usd_micros", "lookups",
                                        "abandoned_tries", "estimated", "cost_partial"]
    assert main(["report", *log, "--month", "2026-10"]) == 0
    table = capsys.readouterr().out
    assert "search" in table and "$1.01+" in table  # "+": some requests' cost is unknown
    assert main(["report", *log, "--team", "search", "--month", "2026-10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Team search used 15 tokens on claude (10 in, 5 out) at a cost of $1.00,")
    assert "at least $0.009 (1 request's cost is unknown)" in out[1]
    assert os.path.exists(path)


REFUSED = [
    rec(team="demo", model="gpt-4o", outcome="rejected", status=403, error="model_not_allowed", input_tokens=None,
        output_tokens=None, cost_usd_micros=None, latency_ms=0.4, provider=None),
    rec(team="demo", model="gpt-4o", outcome="rejected", status=403, error="model_not_allowed", input_tokens=None,
        output_tokens=None, cost_usd_micros=None, latency_ms=0.3, provider=None),
    rec(team="demo", model="gpt-4o-mini", input_tokens=9, output_tokens=12, cost_usd_micros=8, latency_ms=20.0),
    rec(team="demo", model="gpt-4o-mini", outcome="rejected", status=400, error="invalid_json", input_tokens=None,
        output_tokens=None, cost_usd_micros=None, latency_ms=0.1),
    rec(team="demo", model="gpt-4o-mini", outcome="error", status=500, input_tokens=None, output_tokens=None,
        cost_usd_micros=None, latency_ms=10.0),
]


def test_refused_requests_are_counted_as_refused_not_as_zero_tokens() -> None:
    rows = {r.group: r for r in aggregate(REFUSED, "model")}
    refused = rows["gpt-4o"]
    assert (refused.requests, refused.refused, refused.refused_by_status, refused.unknown_usage) == (
        2, 2, {"403": 2}, 0)
    assert refused.avg_latency_ms is None  # Tollway's own answers do not make the model look fast
    assert sentence("demo", refused) == (
        "Team demo sent nothing to gpt-4o: Tollway refused its 2 requests (403) before asking a provider.")
    served = rows["gpt-4o-mini"]
    # The provider's 500 did no work: an error, not unknown usage; its latency is not a model call's.
    assert (served.requests, served.refused, served.errors, served.unknown_usage, served.avg_latency_ms) == (
        3, 1, 1, 0, 20.0)
    assert sentence("demo", served) == (
        "Team demo used 21 tokens on gpt-4o-mini (9 in, 12 out) at a cost of $0.000008, with an average latency of "
        "20ms, and no request triggered a guardrail. 1 request got an error answer from the provider (nothing "
        "charged). Tollway also refused 1 request (400).")


def test_redis_aggregates_count_refusals_like_the_log(redis_port: int) -> None:
    import redis

    from ext_proc.state.ledger import MemoryLedger, RedisLedger

    client = redis.Redis(port=redis_port)
    client.flushall()
    memory, shared = MemoryLedger(), RedisLedger(client, prefix="tollway:test-refused")
    memory.add(REFUSED)
    shared.add(REFUSED)
    since, until = month_window("2026-10")
    for ledger in (memory, shared):
        rows = {r.group: r for r in ledger.rows("model", since, until)}
        assert (rows["gpt-4o"].refused, rows["gpt-4o"].refused_by_status, rows["gpt-4o"].tokens) == (2, {"403": 2}, 0)
        assert sentence("demo", rows["gpt-4o"]).startswith("Team demo sent nothing to gpt-4o: Tollway refused its 2")


def test_small_costs_show_and_csv_has_plain_decimals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in REFUSED))
    assert main(["report", "--log", str(path), "--by", "model", "--month", "2026-10", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    mini = dict(zip(header, next(line for line in lines if line.startswith("gpt-4o-mini,")).split(","), strict=True))
    assert mini["cost_usd"] == "0.000008" and mini["refused"] == "1"
    assert "e-" not in "\n".join(lines)
    assert main(["report", "--log", str(path), "--by", "model", "--month", "2026-10"]) == 0
    assert "$0.000008" in capsys.readouterr().out


def test_report_team_alone_is_this_months_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "requests.jsonl"
    now = datetime.now(UTC).timestamp()
    path.write_bytes(orjson.dumps(rec(ts=now, team="demo", model="gpt-4o-mini")) + b"\n"
                     + orjson.dumps(rec(team="demo")) + b"\n")  # October: not this month
    assert main(["report", "--log", str(path), "--team", "demo"]) == 0
    assert capsys.readouterr().out == (
        "Team demo used 1.2K tokens on gpt-4o-mini (1K in, 200 out) at a cost of $0.0045, with an average latency of "
        "300ms, and no request triggered a guardrail.\n")
    assert main(["report", "--log", str(path), "--team", "nobody"]) == 0
    assert capsys.readouterr().out == f"Team nobody sent no requests in {datetime.now(UTC):%Y-%m}.\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["--month", "2026-13"], "tollway report: argument --month: expected a month as YYYY-MM (e.g. 2026-10), got "
                             "'2026-13' (see `tollway report --help`)"),
    (["--month", "October"], "tollway report: argument --month: expected a month as YYYY-MM"),
    (["--since", "yesterday"], "tollway report: argument --since: expected a day as YYYY-MM-DD"),
    (["--by", "colour"], "tollway report: argument --by: invalid choice: 'colour'"),
    (["--log", "/nonexistent/requests.jsonl"], "tollway report: no request log at /nonexistent/requests.jsonl"),
    (["--redis", "redis://:sekrit-pass@127.0.0.1:1/0"], "tollway report: cannot read Redis at "
                                                          "redis://***@127.0.0.1:1/0: "),
    (["--redis", "http://127.0.0.1:1"], "tollway report: --redis http://127.0.0.1:1: "),
    # --month won silently over --since/--until; an inverted window was an empty table, unexplained
    (["--month", "2026-10", "--since", "2026-09-01"], "tollway report: --month is a whole month: give it or "
                                                      "--since/--until, not both"),
    (["--month", "2026-10", "--until", "2026-09-01", "--team", "a"], "tollway report: --month is a whole month"),
    (["--since", "2026-10-02", "--until", "2026-10-01"], "tollway report: --since 2026-10-02 is after --until "
                                                         "2026-10-01: nothing is in between"),
])
def test_report_mistakes_are_one_line_and_a_non_zero_exit(argv: list[str], message: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "report", *argv], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "sekrit" not in proc.stderr


def test_every_command_has_help() -> None:
    import subprocess
    import sys

    from ext_proc.cli import COMMANDS

    out = subprocess.run([sys.executable, "-m", "ext_proc.cli", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and all(name in out.stdout for name in COMMANDS)
    for name in COMMANDS:
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", name, "--help"], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: tollway {name}"), (name, proc.stderr)
    for argv in ([], ["nonsense"], ["report", "--nope"]):
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", *argv], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--help" in proc.stderr, proc.stderr


def test_a_report_leaves_out_lines_of_an_edited_log_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"request_id": "r1", "team": "a", "ts": 1_795_463_922.5, "input_tokens": 10, "output_tokens": 2,
            "cost_usd_micros": 5, "latency_ms": 9.0, "outcome": "ok"}
    bad = [{**good, "input_tokens": "12"}, {**good, "ts": 1e20}, {**good, "ts": -1e12}, {**good, "guardrails": "pii"},
           {**good, "guardrails": [["pii"]]}, {**good, "cost_usd_micros": True}]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [good, *bad]))
    monkeypatch.setenv("TOLLWAY_REDIS_URL", "redis://127.0.0.1:1/0")  # an explicit --log wins over it
    assert main(["report", "--log", str(path), "--since", "2026-11-01", "--format", "json"]) == 0
    printed = capsys.readouterr()
    assert [r["requests"] for r in orjson.loads(printed.out)] == [1]
    assert "6 record(s)" in printed.err and "Traceback" not in printed.err
    for url in ("redis://u:hunter2@127.0.0.1:abc/0", "redis://default:hun/ter2@redis:6379/0",
                "redis://default:hunter2@pw@redis", "redis://default:hun?ter2@redis:6379"):  # malformed: one line
        assert main(["report", "--redis", url]) == 1
        err = capsys.readouterr().err
        assert "hun" not in err and "pw@" not in err and "Traceback" not in err and err.count("\n") == 1, err



# A key id is unique only within its team: teams search and ads each have a key "ci".
TWO_CIS = [
    rec(team="search", key_id="ci", cost_usd_micros=3_000_000),
    rec(team="search", key_id="ci", cost_usd_micros=1_000_000, guardrails=["pii"]),
    rec(team="ads", key_id="ci", cost_usd_micros=500_000),
    rec(team="ads", key_id=None, cost_usd_micros=7),  # a workload's request: no key
]


def test_a_report_by_key_names_each_key_with_its_team(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       redis_port: int) -> None:
    """The keys ``ci`` of two teams are two rows (``ci@search``, as limits count them), each with its own
    spend: from the log, from the aggregates in Redis (whose buckets always held the team), in
    ``tollway report``'s JSON, CSV and table and in ``/v1/report``; ``--team`` keeps one team's keys."""
    from prometheus_client import CollectorRegistry

    from ext_proc.server.admin import AdminServer
    from ext_proc.state.ledger import RedisLedger

    path, sources, client = both_sources(TWO_CIS, redis_port, tmp_path)
    expected = [("ci@search", 2, 4_000_000, 1), ("ci@ads", 1, 500_000, 0), ("(none)", 1, 7, 0)]
    for source in sources:
        assert main(["report", *source, "--by", "key", "--month", "2026-10", "--format", "json"]) == 0
        rows = orjson.loads(capsys.readouterr().out)
        assert [(r["group"], r["requests"], r["cost_usd_micros"], r["guardrail_triggers"]) for r in rows] == expected
        assert main(["report", *source, "--by", "key", "--team", "ads", "--month", "2026-10", "--format", "csv"]) == 0
        assert [line.split(",")[:2] for line in capsys.readouterr().out.splitlines()[1:]] == [
            ["ci@ads", "1"], ["(none)", "1"]]
        assert main(["report", *source, "--by", "key", "--month", "2026-10"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].startswith("key ") and table[1].startswith("ci@search ") and "$4.00" in table[1]
    for admin in (AdminServer(CollectorRegistry(), lambda: (True, {}), log_path=str(path)),
                  AdminServer(CollectorRegistry(), lambda: (True, {}), ledger=RedisLedger(client))):
        status, _, body = admin.report("by=key&month=2026-10")
        assert status == 200
        assert [(r["group"], r["requests"], r["cost_usd_micros"], r["guardrail_triggers"])
                for r in orjson.loads(body)["rows"]] == expected


def test_a_report_keeps_one_key_model_or_provider(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  redis_port: int) -> None:
    """``--key ci@search`` (and ``--model``, ``--provider``, with ``--team``: all must match) keeps what
    matches, from the log, from Redis and in ``/v1/report``; a key without its team is refused (it
    would match nothing: a key id is unique only within its team)."""
    from prometheus_client import CollectorRegistry

    from ext_proc.server.admin import AdminServer
    from ext_proc.state.ledger import RedisLedger

    records = [*TWO_CIS, rec(team="search", key_id="ci", model="claude-sonnet", provider="anthropic",
                            cost_usd_micros=30)]
    path, sources, client = both_sources(records, redis_port, tmp_path)
    for source in sources:
        def rows(*filters: str, source: list[str] = source) -> list[tuple[str, int, int]]:
            assert main(["report", *source, "--by", "model", "--month", "2026-10", "--format", "json",
                         *filters]) == 0
            return [(r["group"], r["requests"], r["cost_usd_micros"]) for r in orjson.loads(capsys.readouterr().out)]

        assert rows("--key", "ci@search") == [("gpt-4o", 2, 4_000_000), ("claude-sonnet", 1, 30)]
        assert rows("--key", "ci@ads") == [("gpt-4o", 1, 500_000)]
        assert rows("--key", "ci@search", "--provider", "anthropic") == [("claude-sonnet", 1, 30)]
        assert rows("--model", "gpt-4o", "--team", "ads") == [("gpt-4o", 2, 500_007)]
        assert rows("--key", "(none)") == [("gpt-4o", 1, 7)]
        assert main(["report", *source, "--key", "ci"]) == 1
        assert "ci@TEAM" in capsys.readouterr().err
    for admin in (AdminServer(CollectorRegistry(), lambda: (True, {}), log_path=str(path)),
                  AdminServer(CollectorRegistry(), lambda: (True, {}), ledger=RedisLedger(client))):
        status, _, body = admin.report("by=provider&month=2026-10&key=ci%40search")
        assert status == 200
        assert [(r["group"], r["requests"]) for r in orjson.loads(body)["rows"]] == [("openai", 2), ("anthropic", 1)]
        assert admin.report("key=ci")[0] == 400


def test_a_far_future_until_is_no_end(tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_port: int) -> None:
    """``--until 9999-12-31`` (the calendar's last day: its end is past what a date holds) reports
    everything, from the log, from Redis (asking only the days up to tomorrow) and in ``/v1/report``."""
    import redis
    from prometheus_client import CollectorRegistry

    from ext_proc.server.admin import AdminServer
    from ext_proc.state.ledger import RedisLedger

    class Counting(redis.Redis):  # type: ignore[type-arg]
        asked = 0

        def smembers(self, name: Any) -> Any:
            Counting.asked += 1
            assert Counting.asked < 10_000, "asking Redis day after day to the year 9999"
            return super().smembers(name)

    client = Counting(port=redis_port)
    client.flushall()
    RedisLedger(client).add(RECORDS)
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    for admin in (AdminServer(CollectorRegistry(), lambda: (True, {}), log_path=str(path)),
                  AdminServer(CollectorRegistry(), lambda: (True, {}), ledger=RedisLedger(client))):
        for until in ("9999-12-31", "9999-12-30"):
            status, _, body = admin.report(f"by=team&since=2026-10-01&until={until}")
            assert status == 200 and sum(row["requests"] for row in orjson.loads(body)["rows"]) == len(RECORDS)
    days = (datetime.now(UTC).date() - date(2026, 10, 1)).days + 2
    assert Counting.asked <= 2 * days  # a day at a time up to tomorrow, not to the year 9999
    # and from the ledger's first day, not from the year 1
    Counting.asked = 0
    for since in ("0001-01-01", "1900-01-01"):
        status, _, body = admin.report(f"by=team&since={since}")
        assert status == 200 and sum(row["requests"] for row in orjson.loads(body)["rows"]) == len(RECORDS)
    first = min(datetime.fromtimestamp(r["ts"], UTC).date() for r in RECORDS)
    assert Counting.asked <= 2 * ((datetime.now(UTC).date() - first).days + 2)
    for source in (["--log", str(path)], ["--redis", f"redis://127.0.0.1:{redis_port}/0"]):
        for until in ("9999-12-31", "9999-12-30"):
            assert main(["report", *source, "--since", "2026-10-01", "--until", until, "--format", "json"]) == 0
            assert sum(row["requests"] for row in orjson.loads(capsys.readouterr().out)) == len(RECORDS)


def test_p95_from_the_aggregates_reads_minutes_not_60_seconds() -> None:
    """Calls of three minutes (a reasoning model, a long stream) read as their bucket's upper bound
    (5 minutes), not the 60 s the open bucket's floor once gave: never below the log's p95."""
    records = [rec(latency_ms=180_000.0) for _ in range(20)]
    memory = MemoryLedger()
    memory.add(records)
    (from_aggregates,) = memory.rows("model")
    (from_log,) = aggregate(records, "model")
    assert from_log.p95_latency_ms == 180_000.0
    assert from_aggregates.p95_latency_ms == 300_000.0


# A fallback chain's first try abandoned at the first-byte timeout (the provider may bill it), a
# stream cut before its usage (tokens estimated), an answer without usage, one with cache reads.
ABANDONED = rec(input_tokens=12, output_tokens=8, cost_usd_micros=100, attempts=2, fallback=True,
                provider="anthropic", abandoned_tries=1,
                abandoned=[{"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 12}])
CUT = rec(outcome="incomplete", input_tokens=50_000, output_tokens=2_000, input_estimated=True,
          output_estimated=True, cost_usd_micros=2_000)
CACHED = rec(input_tokens=300, output_tokens=700, cached_tokens=30_000 - 0, cost_usd_micros=300)
NO_USAGE = rec(input_tokens=None, output_tokens=None, cost_usd_micros=None)


def test_a_try_abandoned_at_the_first_byte_timeout_makes_the_cost_a_floor_in_every_report(
        redis_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its usage and cost are unknown (the provider got the request and may have generated): the
    sentence says so and "at least", the table's cost has its "+", json and csv count it, and the
    Redis aggregates read as the log does."""
    import redis

    from ext_proc.state.ledger import RedisLedger

    row = aggregate([ABANDONED, ABANDONED], "model")[0]
    assert (row.abandoned_tries, row.unknown_usage, row.unknown_cost, row.cost_partial) == (2, 0, 0, True)
    assert sentence("alpha", row) == (
        "Team alpha used 40 tokens on gpt-4o (24 in, 16 out) at a cost of at least $0.0002, with an average latency "
        "of 300ms, and no request triggered a guardrail. 2 tries were abandoned after the provider may have "
        "started: cost unknown.")
    client = redis.Redis(port=redis_port)
    client.flushall()
    for ledger in (MemoryLedger(), RedisLedger(client, prefix="tollway:test-abandoned")):
        ledger.add([ABANDONED, rec()])
        (stored,) = ledger.rows("model")
        assert (stored.abandoned_tries, stored.cost_partial) == (1, True)
    # A chain that timed out at its last target too: no answer, but not "nothing charged".
    timed_out = rec(outcome="error", status=504, error="upstream_per_try_idle_timeout", input_tokens=None,
                    output_tokens=None, cost_usd_micros=None, abandoned_tries=1,
                    abandoned=[{"provider": "openai", "model": "gpt-4o", "input_tokens": 9}])
    told = sentence("alpha", aggregate([timed_out], "model")[0])
    assert told is not None and "answered it with an error" not in told and "at least $0.00" in told
    assert "1 try was abandoned after the provider may have started: cost unknown." in told
    # Envoy's 504 is no error answer of the provider's: the try is counted once, as abandoned, in
    # the log's reports and in the Redis aggregates; a provider's own 500 still is one.
    provider_500 = rec(outcome="error", status=500, error="server_error", input_tokens=None, output_tokens=None,
                       cost_usd_micros=None)
    assert "got an error answer" not in told
    for ledger in (MemoryLedger(), RedisLedger(client, prefix="tollway:test-timed-out")):
        ledger.add([timed_out, provider_500])
        (stored,) = ledger.rows("model")
        assert (stored.errors, stored.abandoned_tries) == (1, 1)
        told = sentence("alpha", stored)
        assert told is not None and "1 request got an error answer from the provider" in told
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (ABANDONED, rec())))
    log = ["report", "--log", str(path), "--by", "model", "--month", "2026-10"]
    assert main([*log, "--format", "json"]) == 0
    (shown,) = orjson.loads(capsys.readouterr().out)
    assert (shown["abandoned_tries"], shown["cost_partial"]) == (1, True)
    assert main([*log, "--format", "csv"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert dict(zip(header.split(","), line.split(","), strict=True))["abandoned_tries"] == "1"
    assert main(log) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "abandoned_tries" and "$0.0046+" in table[1] and table[1].split()[-1] == "1"


def test_unknown_usage_makes_the_cost_at_least_in_the_sentence_and_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An answer without usage has a cost no one knows: the total is a floor, as an unpriced one's."""
    row = aggregate([rec(), NO_USAGE], "model")[0]
    told = sentence("alpha", row)
    assert told is not None and "at a cost of at least $0.0045," in told
    assert "1 request got no usage report (its tokens are unknown)." in told
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (rec(), NO_USAGE)))
    assert main(["report", "--log", str(path), "--by", "model", "--month", "2026-10"]) == 0
    assert "$0.0045+" in capsys.readouterr().out


def test_the_sentence_splits_tokens_in_and_out_with_cache_reads_and_names_cut_streams() -> None:
    row = aggregate([CUT, CACHED, rec(cost_usd_micros=0, input_tokens=0, output_tokens=0)], "model")[0]
    assert sentence("alpha", row) == (
        "Team alpha used 53K tokens on gpt-4o (50.3K in, 30K of them cached; 2.7K out) at a cost of $0.0023, with "
        "an average latency of 300ms, and no request triggered a guardrail. 1 stream was cut: its tokens are "
        "estimated.")


def test_a_report_by_upstream_model_says_what_served_an_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             redis_port: int) -> None:
    """``--by upstream`` groups by the model that served (the policy's name at its provider), and
    ``--upstream NAME`` keeps it: "team alpha sent N tokens to gpt-4o", whether it asked for gpt-4o
    or for the alias smart; the same from the log, from Redis and in ``/v1/report``."""
    from prometheus_client import CollectorRegistry

    from ext_proc.server.admin import AdminServer
    from ext_proc.state.ledger import RedisLedger

    records = [
        rec(team="alpha", model="smart", upstream_model="gpt-4o", cost_usd_micros=40),
        rec(team="alpha", model="smart", upstream_model="gpt-4o", cost_usd_micros=40),
        rec(team="alpha", model="smart", provider="anthropic", upstream_model="claude-sonnet-4-5", fallback=True,
            cost_usd_micros=7),
        rec(team="alpha", model="gpt-4o", upstream_model="gpt-4o", cost_usd_micros=4),
        rec(team="beta", model="smart", upstream_model="gpt-4o", cost_usd_micros=1000),
    ]
    path, sources, client = both_sources(records, redis_port, tmp_path)
    for source in sources:
        assert main(["report", *source, "--by", "upstream", "--team", "alpha", "--month", "2026-10",
                     "--format", "json"]) == 0
        assert [(r["group"], r["requests"], r["cost_usd_micros"], r["fallbacks"])
                for r in orjson.loads(capsys.readouterr().out)] == [
            ("gpt-4o", 3, 84, 0), ("claude-sonnet-4-5", 1, 7, 1)]
        assert main(["report", *source, "--team", "alpha", "--upstream", "gpt-4o", "--month", "2026-10"]) == 0
        told = capsys.readouterr().out
        assert told.count("Team alpha used") == 2, told
        assert "used 2.4K tokens on gpt-4o via smart (" in told and "on gpt-4o (" in told, told
        assert main(["report", *source, "--upstream", "gpt-4o", "--month", "2026-10", "--format", "csv"]) == 0
        assert [line.split(",")[:2] for line in capsys.readouterr().out.splitlines()[1:]] == [
            ["beta", "1"], ["alpha", "3"]]
        assert main(["report", *source, "--by", "upstream", "--month", "2026-10"]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith("upstream ")
    for admin in (AdminServer(CollectorRegistry(), lambda: (True, {}), log_path=str(path)),
                  AdminServer(CollectorRegistry(), lambda: (True, {}), ledger=RedisLedger(client))):
        status, _, body = admin.report("by=upstream&month=2026-10&team=alpha")
        assert status == 200
        answer = orjson.loads(body)
        assert answer["by"] == "upstream"
        assert [(r["group"], r["requests"]) for r in answer["rows"]] == [("gpt-4o", 3), ("claude-sonnet-4-5", 1)]
        status, _, body = admin.report("by=team&month=2026-10&upstream=claude-sonnet-4-5")
        assert [(r["group"], r["requests"]) for r in orjson.loads(body)["rows"]] == [("alpha", 1)]
