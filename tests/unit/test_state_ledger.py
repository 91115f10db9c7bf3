"""Ledger aggregates in process and in a real redis-server agree with the log-based report."""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from ext_proc.ledger.report import aggregate, month_window
from ext_proc.server.app import knows, open_ledger
from ext_proc.server.records import LedgerSender, RecordWriter
from ext_proc.server.spool import Outbox
from ext_proc.state.ledger import OTHER, RETENTION_DAYS, SOURCE_TTL, BatchKey, MemoryLedger, RedisLedger, Summed
from tests.unit.test_ledger import RECORDS, rec

OCTOBER = month_window("2026-10")


def comparable(rows: list) -> dict[str, tuple]:  # type: ignore[type-arg]
    return {r.group: (r.requests, r.input_tokens, r.output_tokens, r.cost_usd_micros, r.unknown_usage,
                      r.unknown_cost, r.guardrail_triggers, dict(r.guardrails),
                      None if r.avg_latency_ms is None else round(r.avg_latency_ms, 6), r.refused, r.fallbacks)
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


def test_a_request_that_never_reached_a_provider_is_no_unknown_usage_in_the_aggregates() -> None:
    """A client that left mid-upload (incomplete, no provider, no attempts) asked nothing of a
    provider: no usage is missing, in the aggregates as in the log's report; a record recovered
    from a dead worker's journal went upstream: its usage is unknown."""
    from tests.unit.test_ledger import rec

    left = rec(provider=None, outcome="incomplete", input_tokens=None, output_tokens=None, cost_usd_micros=None,
               attempts=None)
    recovered = {**left, "recovered": True, "team": "support"}
    ledger = MemoryLedger()
    ledger.add([left, recovered])
    rows = {r.group: r for r in ledger.rows("team", *OCTOBER)}
    assert (rows["search"].requests, rows["search"].unknown_usage) == (1, 0)
    assert (rows["support"].requests, rows["support"].unknown_usage) == (1, 1)
    log = {r.group: (r.requests, r.unknown_usage, r.incomplete) for r in aggregate([left, recovered], "team", *OCTOBER)}
    assert {group: (r.requests, r.unknown_usage, r.incomplete) for group, r in rows.items()} == log


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


def test_a_batch_sent_again_after_a_timeout_is_added_once(redis_port: int) -> None:
    """Redis hung past the client's timeout, then carried the batch out; the writer sends it again
    with the same id: the counts go in once. Another batch of the same records is another batch."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    ledger.add(RECORDS, batch="b-1")
    ledger.add(RECORDS, batch="b-1")  # the retry
    memory = MemoryLedger()
    memory.add(RECORDS)
    for by in ("team", "model"):
        assert comparable(ledger.rows(by, *OCTOBER)) == comparable(memory.rows(by, *OCTOBER))
    ledger.add(RECORDS[:1], batch="b-2")
    assert sum(r.requests for r in ledger.rows("team")) == len(RECORDS) + 1


def test_batches_sent_again_in_any_grouping_add_once_each(redis_port: int) -> None:
    """A group whose answer did not come in time (Redis may have carried it out) is sent again with
    what came since, or split: each batch in it adds once, whichever call carries it."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    batches = [(f"b-{i}", ledger.summed(RECORDS[i::4])) for i in range(4)]
    assert ledger.add_summed(batches[:2]) == 2
    assert ledger.add_summed(batches[1:3]) == 1  # b-1 again, with b-2
    assert ledger.add_summed(batches[::-1]) == 1  # all of them, another order: only b-3 is new
    assert ledger.add_summed(batches[3:]) == 0
    memory = MemoryLedger()
    memory.add(RECORDS)
    for by in ("team", "model", "key"):
        assert comparable(ledger.rows(by, *OCTOBER)) == comparable(memory.rows(by, *OCTOBER))
    assert ledger.cells(*OCTOBER) == memory.cells(*OCTOBER)
    # The reference ledger does the same.
    again = MemoryLedger()
    assert [again.add_summed(group) for group in (batches[:2], batches[1:3], batches[::-1])] == [2, 1, 1]
    assert comparable(again.rows("team", *OCTOBER)) == comparable(memory.rows("team", *OCTOBER))


def test_a_sources_batches_sent_again_in_any_grouping_add_once_each(redis_port: int) -> None:
    """Batches keyed (source, seq), each source's sent oldest first: a group sent again after a
    timeout, alone, with what came since or split, adds each batch once; two sources (a worker's
    and a spool taken over) interleave in one call; an id-keyed batch (an older Tollway's) in the
    same call keeps its per-batch mark."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger, memory = RedisLedger(client), MemoryLedger()
    one = [(("s1", i + 1), ledger.summed(RECORDS[i::4])) for i in range(4)]
    two = [(("s2", i + 1), ledger.summed(RECORDS[i::2])) for i in range(2)]
    legacy: list[tuple[BatchKey, Summed]] = [("old-1", ledger.summed(RECORDS[:1]))]
    calls = [one[:2], one[1:3], [*one, two[0]], [two[0], one[3], *legacy], [*two, *legacy], one]
    assert [ledger.add_summed(call) for call in calls] == [2, 1, 2, 1, 1, 0]
    assert [memory.add_summed(call) for call in calls] == [2, 1, 2, 1, 1, 0]  # the reference does the same
    expected = MemoryLedger()
    expected.add(RECORDS + RECORDS + RECORDS[:1])  # s1's (all), s2's (all), old-1's
    for by in ("team", "model", "key"):
        assert comparable(ledger.rows(by, *OCTOBER)) == comparable(expected.rows(by, *OCTOBER))
        assert comparable(memory.rows(by, *OCTOBER)) == comparable(expected.rows(by, *OCTOBER))
    assert ledger.cells(*OCTOBER) == expected.cells(*OCTOBER)
    assert sorted(k.decode() for k in client.scan_iter("tollway:ledger:[sb][oa]*")) == [
        "tollway:ledger:batch:old-1", "tollway:ledger:source:s1", "tollway:ledger:source:s2"]
    assert client.get("tollway:ledger:source:s1") == b"4"
    assert SOURCE_TTL - 5 <= client.ttl("tollway:ledger:source:s1") <= SOURCE_TTL


def _a_day_passes(client: redis.Redis) -> None:
    """What Redis expires in a day: every key whose time to live is a day or less."""
    for key in list(client.scan_iter("*")):
        if 0 <= client.ttl(key) <= 86_400:
            client.delete(key)


def test_a_batch_sent_again_more_than_a_day_later_adds_once(redis_port: int) -> None:
    """A spool left unsent (the service stopped while Redis failed over) is taken over more than a
    day later: the batches Redis took just before its process stopped add nothing again. (A
    per-batch mark, kept a day, had expired: they were counted twice.) Its source's mark is
    refreshed with each batch added."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    batches: list[tuple[BatchKey, Summed]] = [(("dead", i + 1), ledger.summed(RECORDS[i::3])) for i in range(3)]
    assert ledger.add_summed(batches[:2]) == 2  # taken, but the answer came too late: not marked in the spool
    _a_day_passes(client)
    assert ledger.add_summed(batches) == 1  # the spool, taken over: only the third adds
    memory = MemoryLedger()
    memory.add(RECORDS)
    assert comparable(ledger.rows("team", *OCTOBER)) == comparable(memory.rows("team", *OCTOBER))
    assert client.ttl("tollway:ledger:source:dead") > 29 * 86_400


def test_dedupe_keys_stay_one_per_source_however_many_batches(redis_port: int) -> None:
    """A busy worker sends a batch every 50 ms round (about 1.7 million a day): each kept a mark of
    its own for a day (133 bytes each: 220 MiB of Redis per worker). A source keeps one key."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    summed_ = ledger.summed(RECORDS[:1])
    for start in range(1, 10_001, 100):
        ledger.add_summed([((f"w{start % 3}", start + i), summed_) for i in range(100)])
    dedupe = [k.decode() for k in client.scan_iter("tollway:ledger:*") if b":b:" not in k and b":day:" not in k]
    assert sorted(dedupe) == ["tollway:ledger:source:w0", "tollway:ledger:source:w1", "tollway:ledger:source:w2"]
    assert sum(r.requests for r in ledger.rows("team")) == 10_000


class Slow(MemoryLedger):
    """Redis with a round trip of ``delay`` (down while not ``up``); counts its calls."""

    def __init__(self, delay: float = 0.0, up: bool = True) -> None:
        super().__init__()
        self.delay, self.up = delay, up
        self.calls: list[list[BatchKey]] = []

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
        time.sleep(self.delay)
        self.calls.append([batch for batch, _ in batches])
        if not self.up:
            raise ConnectionError("Connection refused")
        return super().add_summed(batches)

    @property
    def taken(self) -> int:
        return sum(counts.get("requests", 0) for counts in self.buckets.values())


def fresh(i: int) -> dict[str, Any]:
    return {**RECORDS[i % len(RECORDS)], "ts": time.time(), "request_id": f"r{i}"}


def test_each_round_trip_sends_everything_waiting_in_one_call_and_a_slow_redis_keeps_up(tmp_path: Path) -> None:
    """A Redis 80 ms away (or busy) and a worker at 1,000 requests/s: each call carries every batch
    that came during the last one, so the worker never falls behind (one batch per call fell
    behind by 350 records a second, for good)."""
    slow = Slow(delay=0.08)
    writer = RecordWriter(str(tmp_path / "requests.jsonl"), ledger=slow, immediate=True)  # type: ignore[arg-type]

    async def load() -> int:
        writer.start()
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < 3:
            for _ in range(10):
                writer.emit(fresh(sent))
                sent += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the last round trip or two
        return sent

    sent = asyncio.run(load())
    assert slow.taken >= sent - 150, (slow.taken, sent)  # what came in the last round trip at most
    assert len(slow.calls) <= 3.3 / 0.08 + 2  # one call per round trip
    assert max(len(call) for call in slow.calls) >= 2  # rounds that came during a call went in the next
    asyncio.run(writer.close())
    assert slow.taken == sent and writer.ledger_dropped == 0


def test_a_group_that_timed_out_is_sent_again_with_what_came_since_and_adds_once() -> None:
    class Hung(Slow):
        """Carries the first call out, then answers too late (a hung Redis)."""

        def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
            added = super().add_summed(batches)
            if len(self.calls) == 1:
                raise TimeoutError
            return added

    hung = Hung()
    outbox = Outbox(hung, None, retry=0.05)  # type: ignore[arg-type]
    outbox.add([fresh(0), fresh(1)])
    deadline = time.monotonic() + 5
    while len(hung.calls) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    outbox.add([fresh(2)])
    while outbox.waiting and time.monotonic() < deadline:
        time.sleep(0.005)
    first, *later = hung.calls
    assert first[0] in later[0] and len(set(later[0])) == len(later[0])  # the same id again, in a new group
    assert hung.taken == 3 and outbox.failures == 1
    outbox.close()


class Calls(RedisLedger):
    """A real Redis that notes each call's keys, refuses while not ``up`` and, ``hang`` times,
    carries a call out but answers too late (a hung Redis)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.up, self.hang = True, 0
        self.calls: list[list[BatchKey]] = []

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
        self.calls.append([batch for batch, _ in batches])
        if not self.up:
            raise ConnectionError("Connection refused")
        added = super().add_summed(batches)
        if self.hang:
            self.hang -= 1
            raise TimeoutError
        return added


def _dedupe_keys(client: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter("tollway:ledger:*") if b":b:" not in k and b":day:" not in k)


def _requests(ledger: RedisLedger) -> int:
    return sum(r.requests for r in ledger.rows("team", date.today() - timedelta(days=1)))


def test_an_outboxs_thousands_of_batches_keep_one_key_in_redis(redis_port: int, tmp_path: Path) -> None:
    """10,000 batches of one worker (a busy worker's 8 minutes), sent in whatever grouping the
    round trips make: Redis keeps one dedupe key for them (it kept one per batch, for a day)."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = Calls(client)
    outbox = Outbox(ledger, str(tmp_path / "spool"))
    for i in range(10_000):
        outbox.add([fresh(i)])
    deadline = time.monotonic() + 30
    while outbox.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    outbox.close()
    assert _requests(ledger) == 10_000 and outbox.dropped == 0
    assert _dedupe_keys(client) == [f"tollway:ledger:source:{outbox.source}"]
    assert client.get(f"tollway:ledger:source:{outbox.source}") == b"10000"


def _in_order(calls: list[list[BatchKey]]) -> None:
    """Each source's batches are sent oldest first: within a call, and no call starts a source
    past one the previous calls did not reach (a group sent again repeats a prefix)."""
    reached: dict[str, int] = {}
    for call in calls:
        last: dict[str, int] = {}
        for key in call:
            assert isinstance(key, tuple)
            source, seq = key
            assert seq > last.get(source, 0), call
            if source not in last:
                assert seq <= reached.get(source, 0) + 1, (call, reached)
            last[source] = seq
        for source, seq in last.items():
            reached[source] = max(reached.get(source, 0), seq)


def test_batches_kept_in_memory_go_in_order_with_the_spooled_ones(redis_port: int, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool at its bound (or a write that failed) keeps batches in memory between spooled ones:
    they are sent merged in their order, a bounded group at a time, so the high-water mark never
    skips an older spooled batch after a newer one from memory was added (they were sent first,
    and the spooled ones, below the mark then, were lost)."""
    from ext_proc.server import spool as spool_module

    monkeypatch.setattr(spool_module, "SEND_RECORDS", 2)  # groups of two batches: cut anywhere
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = Calls(client)
    ledger.up = False
    outbox = Outbox(ledger, str(tmp_path / "spool"), retry=0.02)
    where = []
    for i in range(9):
        spooled = i % 3 != 1  # every third batch finds the spool full (or its write failing)
        if outbox._spool is not None:
            outbox._spool.cap = spool_module.MAX_SPOOL if spooled else 0
        outbox.add([fresh(i)])
        where.append("spool" if outbox._memory_records == where.count("memory") else "memory")
    assert where == ["spool", "memory", "spool"] * 3
    ledger.hang = 1  # the first group is carried out, its answer lost: sent again
    ledger.up = True
    outbox._wake.set()
    deadline = time.monotonic() + 10
    while outbox.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    outbox.close()
    _in_order(ledger.calls)
    assert _requests(ledger) == 9 and outbox.dropped == 0
    assert client.get(f"tollway:ledger:source:{outbox.source}") == b"9"


def test_a_dead_spool_taken_over_continues_its_sources_sequence(redis_port: int, tmp_path: Path) -> None:
    """A worker's group is carried out but its answer comes too late, then the worker is killed
    (its spool not marked): the supervisor takes the spool over and sends it under the worker's
    source (read from its header), from where it was marked: the batches Redis had add nothing
    again, the others once; the supervisor's own records go under its own source."""
    from tests.unit.test_journal import _die_outbox

    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = Calls(client)
    directory = str(tmp_path / "spool")
    worker = Outbox(ledger, directory, retry=1)
    worker.add([fresh(0)])
    deadline = time.monotonic() + 10
    while worker.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    ledger.up = False  # (the batches meanwhile wait: the next call carries the three)
    for i in range(1, 4):
        worker.add([fresh(i)])
    while not worker.failures and time.monotonic() < deadline:
        time.sleep(0.01)
    ledger.hang, ledger.up = 1, True
    while worker.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger.calls[-1] == [(worker.source, seq) for seq in (2, 3, 4)]
    assert worker.waiting == 3  # Redis has them: the worker does not know
    _die_outbox(worker)
    worker.add([fresh(4)])  # (dies: never spooled)
    assert client.get(f"tollway:ledger:source:{worker.source}") == b"4"
    calls = len(ledger.calls)
    sender = LedgerSender(ledger, retry=0.01, directory=directory)
    try:
        sender.add([fresh(5)])
        sender.adopt()
        while (os.listdir(directory) != [os.path.basename(sender.spool_path or "")] or sender.waiting) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sender.close(1)
    assert _requests(ledger) == 5  # 0-3 once each (4 died with its process), 5 the supervisor's
    adopted = [key for call in ledger.calls[calls:] for key in call if key[0] == worker.source]
    assert [seq for _, seq in adopted] == [2, 3, 4]  # the worker's batches, under its source, in order
    assert _dedupe_keys(client) == sorted([f"tollway:ledger:source:{worker.source}",
                                           f"tollway:ledger:source:{sender.source}"])


def test_redis_cells_match_memory_and_buckets_without_outcomes_read_unknown(redis_port: int) -> None:
    """The dashboard's rows per (day, team, model, provider), errors and cut streams included; a
    bucket an older Tollway wrote (no ``outcomes``) holds requests whose outcome is unknown."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    failed = [dict(RECORDS[0], outcome="error", status=500), dict(RECORDS[1], outcome="incomplete")]
    ledger, memory = RedisLedger(client), MemoryLedger()
    ledger.add(RECORDS + failed, batch="b-1")
    memory.add(RECORDS + failed)
    cells = ledger.cells(*OCTOBER)
    assert cells == memory.cells(*OCTOBER)
    row = cells[("2026-10-15", "search", "gpt-4o", "openai")]
    assert (row.errors, row.incomplete, row.unknown_outcome) == (1, 1, 0)
    assert sum(row.histogram) == row.latency_count > 0
    old = "tollway:ledger:b:" + "\x1f".join(("2026-10-15", "search", "gpt-4o", "k9", "openai"))
    client.sadd("tollway:ledger:day:2026-10-15", old)
    client.hset(old, mapping={"requests": 3, "input_tokens": 30, "latency_n": 3, "latency_us_sum": 3000})
    row = ledger.cells(*OCTOBER)[("2026-10-15", "search", "gpt-4o", "openai")]
    assert (row.errors, row.incomplete, row.unknown_outcome) == (1, 1, 3)


def test_without_redis_a_worker_keeps_no_aggregates(tmp_path: Path) -> None:
    """Without --redis nothing reads spend aggregates (reports, /v1/report and the dashboard read
    the request log), so a worker keeps none. It once added every record to an in-process ledger
    that was never pruned: each model name a caller made up (a 404 from any valid key) a bucket
    kept for good, about 550 bytes, 55 MB per worker for 100,000 names."""
    ledger = open_ledger(None)
    assert ledger is None
    writer = RecordWriter(str(tmp_path / "requests.jsonl"), ledger=ledger, immediate=True)  # as the worker's

    async def refused(n: int) -> None:
        for i in range(n):
            writer.emit({"request_id": f"r{i}", "team": "search", "key_id": "ci", "api": "openai.chat.completions",
                         "model": f"made-up-{i}", "provider": None, "outcome": "rejected", "status": 404,
                         "error": "model_not_found", "input_tokens": None, "output_tokens": None,
                         "cost_usd_micros": None})
        writer._to_ledger()  # what the writer's periodic flush does

    asyncio.run(refused(100))  # warm: the writer's own buffers
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        asyncio.run(refused(10_000))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000, grown  # kept: nothing per name (an in-process ledger kept 5.5 MB)


def test_buckets_an_older_tollway_wrote_keep_their_latencies(redis_port: int) -> None:
    """Latencies are now those of the model calls a provider answered (``served_*``); a bucket an
    older Tollway wrote holds those of every request it did not refuse (``latency_*``, lookups and
    errors among them): read as they are, without failing, and a bucket both wrote (sidecars of both
    versions, until every pod has restarted) adds both up: neither version's calls drop out."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    day = "tollway:ledger:day:2026-10-15"

    def bucket(key: str, **counters: int) -> None:
        name = "tollway:ledger:b:" + "\x1f".join(("2026-10-15", "search", "gpt-4o", key, "openai"))
        client.sadd(day, name)
        client.hset(name, mapping=counters)

    bucket("old", requests=4, outcomes=4, errors=1, unknown_usage=1, latency_n=4, latency_us_sum=4_000_000,
           **{"latency_le:8": 4})
    (row,) = ledger.rows("key", *OCTOBER)
    assert (row.requests, row.lookups, row.avg_latency_ms, row.p95_latency_ms) == (4, 0, 1000.0, 1000.0)
    bucket("mixed", requests=3, outcomes=3, lookups=1, latency_n=2, latency_us_sum=100_000, served_n=1,
           served_us_sum=2_000_000, **{"latency_le:0": 2, "served_le:10": 1})
    rows = {r.group: r for r in ledger.rows("key", *OCTOBER)}
    assert (rows["mixed@search"].latency_count, rows["mixed@search"].avg_latency_ms,
            rows["mixed@search"].p95_latency_ms) == (3, 700.0, 2000.0)
    (both,) = ledger.rows("team", *OCTOBER)
    assert (both.requests, both.lookups, both.latency_count) == (7, 1, 7)
    assert both.avg_latency_ms == pytest.approx(6_100 / 7, abs=0.1)
    assert sum(both.histogram) == 7


def test_made_up_model_names_share_one_bucket_and_buckets_expire(redis_port: int) -> None:
    """A key holder sending made-up model names (each refused 404) once made a Redis hash per name
    and day, kept for good. A refused request's name the policy does not know is counted under
    "(other)" (as /metrics and the dashboard bound them); a name the policy knows keeps its row
    (a team refused a model it may not use), and every bucket expires RETENTION_DAYS after its day."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = open_ledger(f"redis://127.0.0.1:{redis_port}/0", lambda model: model == "gpt-4o")
    assert isinstance(ledger, RedisLedger)
    now = time.time()
    made_up = [{**RECORDS[0], "ts": now, "model": f"made-up-{i}-{'x' * 200}", "outcome": "rejected", "status": 404,
                "error": "model_not_found", "provider": None} for i in range(1000)]
    forbidden = {**RECORDS[0], "ts": now, "outcome": "rejected", "status": 403, "provider": None}
    served = {**RECORDS[0], "ts": now}
    ledger.add([*made_up, forbidden], batch="b1")
    ledger.add([served])  # without a batch id (a direct add): the same expiry
    keys = list(client.scan_iter("tollway:ledger:b:*"))
    assert len(keys) == 3, keys  # (other) refused, gpt-4o refused, gpt-4o served
    rows = {r.group: r for r in ledger.rows("model", date.today() - timedelta(days=1))}
    assert (rows[OTHER].requests, rows[OTHER].refused_by_status) == (1000, {"404": 1000})
    assert (rows["gpt-4o"].requests, rows["gpt-4o"].refused_by_status) == (2, {"403": 1})
    day_end = datetime.combine(datetime.fromtimestamp(now, UTC).date(), datetime.min.time(), UTC) + timedelta(days=1)
    expires = (day_end + timedelta(days=RETENTION_DAYS)).timestamp()
    for key in [*keys, *client.scan_iter("tollway:ledger:day:*")]:
        assert abs(now + client.ttl(key) - expires) <= 2, key
    assert RETENTION_DAYS > 13 * 31  # a month's report a year later still reads whole


def test_without_the_policys_names_an_unknown_models_404_is_still_other() -> None:
    """Without ``known`` (the reference ledger), a 404 model_not_found still names no model the
    policy has; other refusals keep their name (a team refused a model it may not use)."""
    ledger = MemoryLedger()
    ledger.add([{**RECORDS[0], "model": "made-up", "outcome": "rejected", "status": 404, "error": "model_not_found"},
                {**RECORDS[0], "model": "gpt-5", "outcome": "rejected", "status": 403, "error": "model_not_allowed"}])
    assert sorted(r.group for r in ledger.rows("model", *OCTOBER)) == [OTHER, "gpt-5"]


def open_mode_records(now: float, n: int) -> list[dict[str, Any]]:
    """Open mode (no policy, the caller's key forwarded): made-up names the provider refused with
    its own 401 / 404 (``outcome: error``, no usage), a stream cut before any answer (its input
    estimated), and models a provider served (usage, or the answer's model without usage)."""
    base = {**RECORDS[0], "ts": now, "team": None, "key_id": None, "served_model": None}
    junk = [{**base, "model": f"junk-{i}-{'x' * 100}", "outcome": "error", "status": 401 if i % 2 else 404,
             "error": "invalid_api_key" if i % 2 else "model_not_found", "input_tokens": None,
             "output_tokens": None, "cost_usd_micros": None} for i in range(n)]
    cut = {**base, "model": "junk-cut", "outcome": "incomplete", "status": 200, "error": "stream_interrupted",
           "input_tokens": 12, "output_tokens": 0, "input_estimated": True, "output_estimated": True,
           "cost_usd_micros": None}
    served = {**base, "model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024-07-18"}
    no_usage = {**base, "model": "my-vllm-model", "served_model": "my-vllm-model", "input_tokens": None,
                "output_tokens": None, "cost_usd_micros": None}
    usage_only = {**base, "model": "local-llama", "input_tokens": 5, "output_tokens": 1, "cost_usd_micros": None}
    failed = {**base, "model": "gpt-4o-mini", "outcome": "error", "status": 429, "error": "rate_limit_exceeded",
              "input_tokens": None, "output_tokens": None, "cost_usd_micros": None}
    priced = {**failed, "model": "gpt-4o"}  # a name the price data lists: a real model, its 429 its own
    near = {**failed, "model": "gpt-4o-junk"}  # priced as gpt-4o by prefix, but no name the data lists
    return [*junk, cut, served, no_usage, usage_only, failed, priced, near]


def test_open_modes_provider_errors_for_made_up_names_share_one_bucket() -> None:
    """In open mode every name went upstream, and a made-up one forwarded with a junk key got the
    provider's 401 or 404 (``outcome: error``): each name made its own bucket, kept two years.
    A name is its own bucket only when the policy knows it or a provider served it (its answer
    named the model, or reported usage); the rest, a cut stream's estimated input too, is (other)."""
    ledger = MemoryLedger(known=lambda model: knows(None, model))  # open mode: the price data's names
    now = datetime(2026, 10, 15, 12, tzinfo=UTC).timestamp()
    ledger.add(open_mode_records(now, 200))
    rows = {r.group: r for r in ledger.rows("model", *OCTOBER)}
    assert sorted(rows) == sorted([OTHER, "gpt-4o-mini", "gpt-4o", "my-vllm-model", "local-llama"])
    assert (rows[OTHER].requests, rows[OTHER].errors, rows[OTHER].incomplete) == (202, 201, 1)
    assert (rows["gpt-4o-mini"].requests, rows["gpt-4o-mini"].errors) == (2, 1)  # a real model's errors stay its own
    assert (rows["gpt-4o"].requests, rows["gpt-4o"].errors) == (1, 1)
    assert len(ledger.buckets) == 5
    # A name the policy knows keeps its row however the provider answered (a deployment gone: its 404).
    policy = MemoryLedger(known=lambda model: model == "gpt-4o")
    policy.add([{**RECORDS[0], "outcome": "error", "status": 404, "error": "model_not_found", "input_tokens": None,
                 "output_tokens": None, "cost_usd_micros": None}])
    assert [r.group for r in policy.rows("model", *OCTOBER)] == ["gpt-4o"]


def test_open_modes_made_up_names_do_not_grow_redis(redis_port: int) -> None:
    """The audit's flood: 200 made-up names forwarded with a junk key took Redis from 0 keys to
    202 (a bucket each and the day's index). Now one (other) bucket holds them."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = open_ledger(f"redis://127.0.0.1:{redis_port}/0", lambda model: knows(None, model))  # as the worker's
    assert isinstance(ledger, RedisLedger)
    now = time.time()
    ledger.add(open_mode_records(now, 200), batch="b1")
    keys = sorted(k.decode().split("\x1f")[2] for k in client.scan_iter("tollway:ledger:b:*"))  # day, team, model…
    assert keys == sorted([OTHER, "gpt-4o-mini", "gpt-4o", "my-vllm-model", "local-llama"])
    assert len(list(client.scan_iter("tollway:ledger:u:b:*"))) == 5  # their upstream buckets: (other) too
    assert client.dbsize() == 5 + 5 + 3  # the buckets of both kinds, their days' indexes and the batch's mark
    rows = {r.group: r for r in ledger.rows("model", date.today() - timedelta(days=1))}
    assert (rows[OTHER].requests, rows[OTHER].errors) == (202, 201)


def test_records_redis_never_took_are_counted_and_said_when_the_worker_stops(caplog: pytest.LogCaptureFixture) -> None:
    """A worker stopping while Redis does not answer gives up what waits for the aggregates: never
    silently (the request log has those records; tollway_ledger_dropped_total counts them)."""
    import asyncio
    import logging

    writer = RecordWriter(None, ledger=Slow(up=False))  # the log is stdout: no spool
    for record in RECORDS[:3]:
        writer.emit(dict(record))
    with caplog.at_level(logging.ERROR, logger="tollway.records"):
        asyncio.run(writer.close())
    assert writer.ledger_dropped == 3 and writer.failures >= 1
    assert any("3 record(s) never reached the spend aggregates" in r.getMessage() for r in caplog.records)


def test_a_report_over_many_buckets_holds_its_rows_not_the_buckets(redis_port: int) -> None:
    """A report reads Redis a chunk of buckets at a time and folds each into its rows: what it holds
    grows with the rows (5 teams), not with the window's buckets (5,000 here; three months of a busy
    gateway are hundreds of thousands, and holding them all took 500 MB and an OOM kill of the
    sidecar). The totals stay exact, against the in-process reference."""
    import random

    from tests.unit.test_ledger import rec

    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger, memory = RedisLedger(client), MemoryLedger()
    start = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    pick = random.Random(3)
    records = [rec(ts=start + pick.randrange(30 * 86400), team=f"t{pick.randrange(5)}", model=f"m{pick.randrange(40)}",
                   key_id=f"k{pick.randrange(5)}", input_tokens=pick.randrange(10**6),
                   cost_usd_micros=pick.choice([None, pick.randrange(10**9)]), latency_ms=pick.random() * 9000,
                   guardrails=pick.choice([[], ["pii"]])) for _ in range(6_000)]
    for i in range(0, len(records), 2000):
        ledger.add(records[i:i + 2000])
        memory.add(records[i:i + 2000])
    assert client.dbsize() > 5000  # buckets (and the days' sets)
    ledger.rows("team", *OCTOBER)  # warm: the client's connection and buffers
    tracemalloc.start()
    try:
        rows = ledger.rows("team", *OCTOBER)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # every bucket at once: 12 MB
    expected = memory.rows("team", *OCTOBER)
    assert rows == expected and sum(r.requests for r in rows) == len(records)
    assert ledger.cells(*OCTOBER) == memory.cells(*OCTOBER)
    # A Redis user denied scripts (ACL; or a read-only replica) reads the same with a pipeline.
    client.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-eval", "-evalsha"])
    try:
        denied = RedisLedger(redis.Redis(port=redis_port, username="reader", password="pw"))
        assert denied.rows("team", *OCTOBER) == expected and denied._read is False
    finally:
        client.acl_deluser("reader")


def served_by(upstream: str | None, **fields: Any) -> dict[str, Any]:
    """A request for the alias ``smart`` (gpt-4o, falling back to claude-sonnet-4-5) and what served it."""
    provider = {"gpt-4o": "openai", "claude-sonnet-4-5": "anthropic", None: None}[upstream]
    return rec(model="smart", provider=provider, upstream_model=upstream, **fields)


SMART = [
    served_by("gpt-4o"), served_by("gpt-4o", team="ads"),
    served_by("claude-sonnet-4-5", fallback=True, cost_usd_micros=900),
    served_by(None, outcome="rejected", status=403, input_tokens=None, output_tokens=None, cost_usd_micros=None),
    rec(upstream_model="gpt-4o-2024-08-06"),  # the model gpt-4o named directly, sent under its dated name
]


def test_a_report_by_upstream_model_names_what_served_an_alias_alike_in_memory_redis_and_the_log(
        redis_port: int) -> None:
    """``upstream``: the model that served, as the policy names it at its provider (the serving
    target's ``upstream_model``), a dimension of the buckets like the others; a refused request
    has none; a filter by it keeps a team's spend on one served model, whatever name was asked for."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger, memory = RedisLedger(client), MemoryLedger()
    ledger.add(SMART)
    memory.add(SMART)
    for by in ("upstream", "model", "team", "provider"):
        expected = comparable(aggregate(SMART, by, *OCTOBER))
        assert comparable(memory.rows(by, *OCTOBER)) == expected, by
        assert comparable(ledger.rows(by, *OCTOBER)) == expected, by
    for source in (ledger, memory):
        rows = {r.group: r for r in source.rows("upstream", *OCTOBER)}
        assert {group: r.requests for group, r in rows.items()} == {
            "gpt-4o": 2, "claude-sonnet-4-5": 1, "(none)": 1, "gpt-4o-2024-08-06": 1}
        assert (rows["claude-sonnet-4-5"].fallbacks, rows["claude-sonnet-4-5"].cost_usd_micros) == (1, 900)
        assert rows["(none)"].refused == 1
        searched = source.rows("model", *OCTOBER, where={"team": "search", "upstream": "gpt-4o"})
        assert [(r.group, r.requests) for r in searched] == [("smart", 1)]
    assert ledger.cells(*OCTOBER) == memory.cells(*OCTOBER)  # the dashboard's cells: as before


# -- the release before the upstream model, beside this one (a rolling upgrade, a rollback) ---------

OLD_DIMENSIONS = ("team", "model", "key_id", "provider")  # the release before's (64d7da3) DIMENSIONS


def old_release_reads(client: redis.Redis, day: str) -> dict[tuple[str, ...], int]:
    """Requests per (team, model, key id, provider) of a day as the release before reads Redis
    (its RedisLedger._buckets and _dimensions, copied): the day's index, each bucket's hash, its
    key's dimensions zipped strictly (a bucket with one more part raises ValueError there)."""
    found: dict[tuple[str, ...], int] = {}
    for name in client.smembers(f"tollway:ledger:day:{day}"):
        bucket = tuple(name.decode().split(":b:", 1)[1].split("\x1f"))
        dimensions = dict(zip(OLD_DIMENSIONS, bucket[1:], strict=True))
        group = tuple(dimensions.values())
        found[group] = found.get(group, 0) + int(client.hget(name, "requests") or 0)
    return found


def old_release_first_days(client: redis.Redis) -> list[str]:
    """The days the release before's report scans for (``tollway:ledger:day:*``)."""
    return sorted(k.decode().rsplit(":", 1)[1] for k in client.scan_iter("tollway:ledger:day:*"))


def old_parse(line: bytes) -> Summed:
    """The release before's spool._parse (64d7da3), its buckets."""
    item = orjson.loads(line)
    return {tuple(row[:5]): row[5] for row in item["b"]}


def old_write(client: redis.Redis, bucket: tuple[str, ...], counters: dict[str, int]) -> None:
    """What the release before adds for a bucket: HINCRBY on its five-part key, indexed by day."""
    name = "tollway:ledger:b:" + "\x1f".join(bucket)
    client.sadd(f"tollway:ledger:day:{bucket[0]}", name)
    for field, value in counters.items():
        client.hincrby(name, field, value)


def test_the_release_before_reads_this_ones_buckets_with_the_same_totals(redis_port: int) -> None:
    """A rolling upgrade: this release's pods write beside the release before's. The five-part
    buckets are the release before's (same keys, same day index): it reads them without a
    ValueError, with every request, an alias served by two models in one row as it always was;
    the upstream model has buckets of its own (``tollway:ledger:u:b:*``, indexed in
    ``tollway:ledger:u:day:*``) that it never sees."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    ledger.add(SMART, batch="b1")
    ledger.add_summed([(("s", 1), ledger.summed(SMART))])
    expected = {(r["team"], r["model"], r["key_id"], r["provider"] or ""): 0 for r in SMART}
    for r in SMART:
        expected[(r["team"], r["model"], r["key_id"], r["provider"] or "")] += 2
    assert old_release_reads(client, "2026-10-15") == expected
    assert old_release_first_days(client) == ["2026-10-15"]
    five = sorted(k.decode() for k in client.scan_iter("tollway:ledger:b:*"))
    six = sorted(k.decode() for k in client.scan_iter("tollway:ledger:u:b:*"))
    assert all(len(k.split(":b:", 1)[1].split("\x1f")) == 5 for k in five) and len(five) == len(expected)
    assert all(len(k.split(":b:", 1)[1].split("\x1f")) == 6 for k in six) and len(six) == 5
    assert sorted(k.decode() for k in client.smembers("tollway:ledger:u:day:2026-10-15")) == six
    assert {client.ttl(k) > 0 for k in [*five, *six, "tollway:ledger:u:day:2026-10-15"]} == {True}
    memory = MemoryLedger()
    memory.add(SMART)
    memory.add(SMART)
    for by in ("team", "model", "provider", "key", "upstream"):
        assert comparable(ledger.rows(by, *OCTOBER)) == comparable(memory.rows(by, *OCTOBER)), by
    assert ledger.cells(*OCTOBER) == memory.cells(*OCTOBER)


def test_a_batch_sent_twice_adds_nothing_twice_to_either_kind_of_bucket(redis_port: int) -> None:
    """The five-part and the six-part buckets are written in the same script call, under the
    same batch mark: a batch sent again adds to neither."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger = RedisLedger(client)
    counts = ledger.summed(SMART)
    assert ledger.add_summed([(("s", 1), counts), ("old-1", counts)]) == 2
    assert ledger.add_summed([(("s", 1), counts), ("old-1", counts), (("s", 2), counts)]) == 1
    def hashes(pattern: str) -> dict[str, dict[bytes, bytes]]:
        return {k.decode(): client.hgetall(k) for k in client.scan_iter(pattern)}
    five, six = hashes("tollway:ledger:b:*"), hashes("tollway:ledger:u:b:*")
    assert sum(int(h[b"requests"]) for h in five.values()) == 3 * len(SMART)
    assert sum(int(h[b"requests"]) for h in six.values()) == 3 * len(SMART)
    memory = MemoryLedger()
    memory.add_summed([(("s", 1), counts), ("old-1", counts)])
    memory.add_summed([(("s", 1), counts), ("old-1", counts), (("s", 2), counts)])
    assert sum(c["requests"] for c in memory.buckets.values()) == 3 * len(SMART)
    assert sum(c["requests"] for c in memory.upstream.values()) == 3 * len(SMART)


def test_buckets_the_release_before_wrote_read_as_before_and_unknown_by_upstream_model(redis_port: int) -> None:
    """This release reads what the release before wrote (a rollback, or its pods during the
    upgrade), even into the same five-part bucket on the same day: every grouping but the
    upstream model reads the five-part buckets, as before; by upstream model (and ``--upstream``),
    the six-part buckets, and what the five-part ones hold beyond them (requests this release did
    not count: a day before the upgrade, an older pod's) is ``(unknown)``, per row."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    ledger, memory = RedisLedger(client), MemoryLedger()
    ledger.add(SMART[:1])
    memory.add(SMART[:1])
    same = ("2026-10-15", "search", "smart", "k1", "openai")  # SMART[0]'s five-part bucket
    older = ("2026-10-14", "ads", "gpt-4o", "k2", "openai")  # a day before the upgrade
    for bucket, counters in ((same, {"requests": 3, "outcomes": 3, "input_tokens": 30, "cost_usd_micros": 70}),
                             (older, {"requests": 2, "outcomes": 2, "cost_usd_micros": 5, "guardrail:pii": 1})):
        old_write(client, bucket, counters)
        memory.add_summed([(f"old-{bucket[0]}", {bucket: counters})])  # a five-part bucket: the release before's
    for source in (ledger, memory):
        assert [(r.group, r.requests, r.cost_usd_micros) for r in source.rows("upstream", *OCTOBER)] == [
            ("gpt-4o", 1, 4500), ("(unknown)", 5, 75)], source
        unknown = {r.group: r for r in source.rows("upstream", *OCTOBER)}["(unknown)"]
        assert (unknown.input_tokens, unknown.guardrails, unknown.unknown_outcome) == (30, {"pii": 1}, 0)
        assert [(r.group, r.requests) for r in source.rows("model", *OCTOBER)] == [("smart", 4), ("gpt-4o", 2)]
        assert [(r.group, r.requests) for r in source.rows("team", *OCTOBER, where={"upstream": "(unknown)"})] == [
            ("search", 3), ("ads", 2)]
        assert [(r.group, r.requests) for r in source.rows("team", *OCTOBER, where={"upstream": "gpt-4o"})] == [
            ("search", 1)]
        assert [(r.group, r.requests) for r in source.rows("upstream", *OCTOBER, where={"team": "search"})] == [
            ("gpt-4o", 1), ("(unknown)", 3)]
        cells = source.cells(*OCTOBER)
        assert cells[("2026-10-15", "search", "smart", "openai")].requests == 4
        assert sum(c.requests for c in cells.values()) == 6
    assert old_release_reads(client, "2026-10-15") == {("search", "smart", "k1", "openai"): 4}
    only_new = MemoryLedger()
    only_new.add(SMART)
    assert "(unknown)" not in {r.group for r in only_new.rows("upstream", *OCTOBER)}  # nothing left: no row


def test_an_upstream_model_name_no_one_knows_is_other_like_the_model() -> None:
    """Open mode sends the name asked for as it is: a made-up one the provider answered with an
    error is counted as ``(other)`` by upstream model too, never a bucket per name."""
    made_up = [rec(model=f"made-up-{i}", upstream_model=f"made-up-{i}", outcome="error", status=404,
                   error="model_not_found", input_tokens=None, output_tokens=None, cost_usd_micros=None,
                   served_model=None) for i in range(3)]
    ledger = MemoryLedger(known=lambda _model: False)
    ledger.add(made_up)
    assert list(ledger.buckets) == [("2026-10-15", "search", OTHER, "k1", "openai")]
    assert list(ledger.upstream) == [("2026-10-15", "search", OTHER, "k1", "openai", OTHER)]
    assert [(r.group, r.requests) for r in ledger.rows("upstream", *OCTOBER)] == [(OTHER, 3)]


ALIASED = [rec(model="smart", upstream_model="gpt-4o") for _ in range(3)] + [
    rec(model="smart", upstream_model="gpt-4o-mini", cost_usd_micros=10) for _ in range(5)]  # one provider


def spooled_line(records: list[dict[str, Any]], tmp_path: Path) -> bytes:
    """The line an outbox spools for ``records`` (Redis down)."""

    class Down(MemoryLedger):
        def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
            raise ConnectionError("Redis does not answer")

    outbox = Outbox(Down(), str(tmp_path / "aggregates"), retry=60)
    try:
        outbox.add(records)
        assert outbox._spool is not None
        with open(outbox._spool.path, "rb") as handle:
            return handle.read().splitlines()[1]
    finally:
        outbox.close(0.1)


def test_a_spool_line_is_read_whole_by_the_release_before_and_by_this_one(tmp_path: Path) -> None:
    """A rollback sends this release's spool with the release before's parser: its ``b`` rows are
    the five-part buckets as that release writes them (an alias served by two models at one
    provider: one row, all 8 requests, not the last model's 5); the six-part ones are in ``u``,
    which it never reads. This release reads both back as they were counted, and a line the
    release before spooled (``b`` only) as five-part buckets: by upstream model, ``(unknown)``."""
    from ext_proc.server.spool import _parse

    line = spooled_line(ALIASED, tmp_path)
    assert set(orjson.loads(line)) == {"n", "s", "b", "u"}
    old = old_parse(line)
    assert old == {("2026-10-15", "search", "smart", "k1", "openai"): MemoryLedger().summed(ALIASED)[
        ("2026-10-15", "search", "smart", "k1", "openai")]}
    assert sum(c["requests"] for c in old.values()) == 8
    batch = _parse(line, len(line), "source")
    assert batch is not None and batch.buckets == MemoryLedger().summed(ALIASED)
    replayed, counted = MemoryLedger(), MemoryLedger()
    replayed.add_summed([(batch.key, batch.buckets)])
    counted.add(ALIASED)
    for by in ("team", "upstream"):
        assert comparable(replayed.rows(by, *OCTOBER)) == comparable(counted.rows(by, *OCTOBER))
    before = orjson.dumps({"n": 2, "s": 4, "b": [[*old_bucket, {"requests": 2}] for old_bucket in
                                                   [("2026-10-15", "search", "smart", "k1", "openai")]]})
    older = _parse(before, 0, "source")
    assert older is not None and older.buckets == {("2026-10-15", "search", "smart", "k1", "openai"): {"requests": 2}}
    memory = MemoryLedger()
    memory.add_summed([(("source", 4), older.buckets)])
    assert [(r.group, r.requests) for r in memory.rows("upstream", *OCTOBER)] == [("(unknown)", 2)]
    assert [(r.group, r.requests) for r in memory.rows("model", *OCTOBER)] == [("smart", 2)]
