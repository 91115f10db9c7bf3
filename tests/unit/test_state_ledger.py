"""Ledger aggregates in process and in a real redis-server agree with the log-based report."""

from __future__ import annotations

import pytest
import redis

from ext_proc.ledger.report import aggregate, month_window
from ext_proc.state.ledger import MemoryLedger, RedisLedger
from tests.unit.test_ledger import RECORDS

OCTOBER = month_window("2026-10")


def comparable(rows: list) -> dict[str, tuple]:  # type: ignore[type-arg]
    return {r.group: (r.requests, r.input_tokens, r.output_tokens, r.cost_usd_micros, r.unknown_usage,
                      r.unknown_cost, r.guardrail_triggers, dict(r.guardrails), round(r.avg_latency_ms, 6))
            for r in rows}


@pytest.mark.parametrize("by", ["team", "model", "key", "provider"])
def test_memory_ledger_matches_the_log_report(by: str) -> None:
    ledger = MemoryLedger()
    ledger.add(RECORDS)
    expected = aggregate(RECORDS, by, *OCTOBER)
    actual = ledger.rows(by, *OCTOBER)
    assert comparable(actual) == comparable(expected)
    for row in actual:
        exact = next(r for r in expected if r.group == row.group).p95_latency_ms
        assert row.p95_latency_ms is not None and exact is not None and row.p95_latency_ms >= exact


def test_filters_and_windows() -> None:
    ledger = MemoryLedger()
    ledger.add(RECORDS)
    assert [r.group for r in ledger.rows("model", *OCTOBER, where={"team": "support"})] == ["gpt-4o"]
    assert ledger.rows("team", *month_window("2026-09")) == []
    assert sum(r.requests for r in ledger.rows("team")) == len(RECORDS)


def test_redis_ledger_matches_memory_and_adds_up_across_writers(redis_port: int) -> None:
    redis.Redis(port=redis_port).flushall()
    one, two = RedisLedger(redis.Redis(port=redis_port)), RedisLedger(redis.Redis(port=redis_port))
    one.add(RECORDS[:3])
    two.add(RECORDS[3:])  # a second sidecar
    memory = MemoryLedger()
    memory.add(RECORDS)
    for by in ("team", "model", "key", "provider"):
        assert comparable(one.rows(by, *OCTOBER)) == comparable(memory.rows(by, *OCTOBER))
    assert sum(r.requests for r in one.rows("team")) == len(RECORDS)
