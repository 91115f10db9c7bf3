"""The write-ahead journal and the request log's failures: no request a provider saw goes missing.

The session notes a request the moment it goes upstream (``Forwarded``); the servicer journals
it before Envoy has that answer; a dead worker's journal is taken over by :func:`recover`, which
writes each open entry once (and never one whose record made it to the log). The writer keeps
serving when the log cannot be written (a full disk: ``/dev/full`` fails every write with
ENOSPC), keeps the records in memory up to a bound and writes them, in order, when it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders
from ext_proc.core.session import Session
from ext_proc.ledger.log import log_files, read_records
from ext_proc.policy.compile import compile_policy
from ext_proc.server import journal as journal_module
from ext_proc.server import spool as spool_module
from ext_proc.server.accounting import ServiceAccountant
from ext_proc.server.app import ServeConfig, publish_sender, recover_records
from ext_proc.server.journal import COMPACT_AT, Journal, directory_for, recover
from ext_proc.server.metrics import Exchange, Names, Tally
from ext_proc.server.records import LedgerSender, RecordWriter
from ext_proc.server.servicer import ExtProcCall, Service
from ext_proc.server.spool import Outbox
from ext_proc.server.spool import directory_for as spool_directory
from ext_proc.state.ledger import BatchKey, MemoryLedger, Summed
from tests.unit.transcript import Record, Transcript

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
ACCOUNTANT = ServiceAccountant()


def head(request_id: str = "req-1") -> RequestHeaders:
    return RequestHeaders({":method": "POST", ":path": CHAT, "content-type": "application/json",
                           "x-request-id": request_id}, False, 1_000)


# -- the session's note -------------------------------------------------------------------------


def test_a_request_going_upstream_is_noted_with_the_record_it_gets_if_nothing_more_is_heard() -> None:
    transcript = Transcript(Session(None, None, ACCOUNTANT))
    transcript >> head()
    transcript.pending.clear()
    transcript >> RequestBody(orjson.dumps(BODY), True, 2_000)
    (note,) = transcript.forwarded
    record = note.record
    assert record["request_id"] == "req-1" and record["model"] == "gpt-4o-mini" and record["provider"] == "openai"
    assert record["outcome"] == "incomplete" and record["error"] == "service_interrupted"
    assert record["input_tokens"] == record["estimated_input_tokens"] > 0 and record["input_estimated"] is True
    assert record["output_tokens"] is None and record["cost_usd_micros"] is None and record["latency_ms"] is None


def test_a_refused_request_is_never_noted() -> None:
    transcript = Transcript()
    transcript >> head()
    transcript.pending.clear()
    transcript >> RequestBody(b"{not json", True, 2_000)
    assert transcript.forwarded == []


POLICY = compile_policy("""
apiVersion: tollway/v1
providers:
  openai: {kind: openai}
  anthropic: {kind: anthropic}
models:
  gpt-4o-mini: {provider: openai}
routing:
  aliases:
    chat:
      targets:
        - {provider: openai, model: gpt-4o-mini}
        - {provider: anthropic, model: claude-x}
teams:
  app: {workloads: [w], models: ["*"]}
budgets:
  daily: {team: app, usd: "100", period: day}
""", "policy.yaml")


def test_a_chain_notes_no_provider_and_the_claims_it_holds() -> None:
    from ext_proc.core.events import Answered
    from ext_proc.state.queries import Admission

    session = Session(POLICY, "w", ACCOUNTANT)
    session.handle(head())
    ask = session.handle(RequestBody(orjson.dumps({**BODY, "model": "chat", "max_tokens": 10}), True, 2_000))
    session.handle(Answered(Admission(True, remaining=(1,)), 3_000))
    (note,) = [e for e in session.effects if type(e).__name__ == "Forwarded"]
    assert ask is not None and note.record["provider"] is None  # Envoy picks the target
    assert note.record["upstream_model"] is None
    assert note.record["limits"] == [{"limit": "daily", "unit": "usd", "claimed": note.record["limits"][0]["claimed"],
                                      "used": None}]


# -- the servicer: journaled before the answer leaves --------------------------------------------


def _message(**kind: Any) -> bytes:
    return pb.ProcessingRequest(**kind).SerializeToString()


def _headers(pairs: list[tuple[str, str]]) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]))


def test_the_note_is_in_the_journal_before_envoy_has_the_answer_and_closed_by_the_record(tmp_path: Path) -> None:
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, journal=True, immediate=True)
    assert writer.journal is not None
    call = ExtProcCall(Service(writer))
    call.message(_message(request_headers=_headers([(":method", "POST"), (":path", CHAT),
                                                    ("content-type", "application/json"), ("x-request-id", "r-9")])))
    (answer,) = call.message(_message(request_body=pb.HttpBody(body=orjson.dumps(BODY), end_of_stream=True)))
    # The answer that sends the request upstream exists; Envoy has not got it yet, the journal has.
    assert pb.ProcessingResponse.FromString(answer).WhichOneof("response") == "request_body"
    started = [orjson.loads(line) for line in Path(writer.journal.path).read_bytes().splitlines()]
    assert [entry["started"]["request_id"] for entry in started] == ["r-9"]
    assert started[0]["log"] == [os.stat(path).st_ino, 0]
    call.message(_message(response_headers=_headers([(":status", "200"), ("content-type", "application/json")])))
    answer_body = orjson.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [],
                                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    call.message(_message(response_body=pb.HttpBody(body=answer_body, end_of_stream=True)))
    # The record is in the log as soon as the answer that ends the request exists (immediate).
    assert [r["request_id"] for r in read_records([path])] == ["r-9"]
    assert writer.journal.open == 0
    writer.journal.sync()
    assert orjson.loads(Path(writer.journal.path).read_bytes().splitlines()[-1]) == {"done": ["r-9"]}


def test_the_noted_position_is_reused_briefly_and_never_past_the_log(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery reads the log from the earliest noted position: one from a moment ago only makes it
    read more, so the writer spares an fstat per request."""
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, immediate=True)
    first = writer.position()
    assert first == (os.stat(path).st_ino, 0)
    writer.emit(record("r-1", "ok"))
    assert writer.position() == first  # reused: the log has grown past it, never the other way
    monkeypatch.setattr(writer, "_position_until", 0.0)  # POSITION_AGE later
    assert writer.position() == (os.stat(path).st_ino, os.path.getsize(path))


def test_a_record_with_a_value_json_cannot_hold_is_written_without_it(tmp_path: Path) -> None:
    """An integer past 64 bits (a broken provider's count, priced) raised into the request path and
    lost the record: the field is left out (null), the record written."""
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, immediate=True)
    writer.emit({**record("r-1", "ok"), "cost_usd_micros": 2**70})
    (line,) = Path(path).read_bytes().splitlines()
    written = orjson.loads(line)
    assert written["request_id"] == "r-1" and written["cost_usd_micros"] is None


# -- recovery -----------------------------------------------------------------------------------


def record(request_id: str, outcome: str = "incomplete") -> dict[str, Any]:
    return {"request_id": request_id, "outcome": outcome, "error": "service_interrupted", "output_tokens": None}


def _die(journal: Journal) -> None:
    """The worker is gone: its descriptor (and lock) with it, the file left behind."""
    os.close(journal._fd)


def test_recovery_writes_each_open_entry_once_and_never_one_the_log_has(tmp_path: Path) -> None:
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, journal=True, immediate=True)
    journal = writer.journal
    assert journal is not None
    for request_id in ("done", "open", "logged-but-not-marked", "open-2"):
        writer.started(record(request_id))
    writer.emit(record("done", "ok"))
    journal.sync()  # "done" is marked
    writer.emit(record("logged-but-not-marked", "ok"))  # in the log; the worker dies before the mark
    live = RecordWriter(path, journal=True, immediate=True)  # another worker, alive
    assert live.journal is not None
    live.started(record("live"))
    _die(journal)
    result = recover(path)
    assert (result.journals, result.written, result.logged_anyway) == (1, 2, 1)
    found = list(read_records(log_files(path)))
    assert sorted(r["request_id"] for r in found) == ["done", "logged-but-not-marked", "open", "open-2"]
    recovered = [r for r in found if r.get("recovered")]
    assert {r["request_id"] for r in recovered} == {"open", "open-2"}
    assert all(r["outcome"] == "incomplete" and r["ts"] > 0 for r in recovered)
    assert not os.path.exists(journal.path) and os.path.exists(live.journal.path)  # the live one is left alone
    assert recover(path).journals == 0  # nothing twice


def test_recovery_counts_requests_that_share_an_id_each_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An id may repeat (a client's own x-request-id where Envoy keeps it): three requests in
    flight under one id, one of them logged before the worker died, are three records, not one;
    an older request of that id, logged and marked before the position noted, counts for none."""
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, journal=True, immediate=True)
    journal = writer.journal
    assert journal is not None
    writer.started(record("same"))
    writer.emit(record("same", "ok"))
    journal.sync()  # the first request of that id: logged and marked
    monkeypatch.setattr(writer, "_position_until", 0.0)  # noted positions are past its record from now
    writer.started(record("other"))  # another id's entry, older than the next ones
    for _ in range(3):
        writer.started(record("same"))
    writer.emit(record("same", "ok"))  # one of the three is logged; the worker dies before the mark
    _die(journal)
    result = recover(path)
    assert (result.written, result.logged_anyway) == (3, 1)  # "other" and two of "same"
    found = [r["request_id"] for r in read_records(log_files(path))]
    assert sorted(found) == ["other", "same", "same", "same", "same"]


def test_recovery_reads_a_compacted_journal_and_skips_a_torn_line(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_AT", 2_000)
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, journal=True, immediate=True)
    journal = writer.journal
    assert journal is not None
    writer.started(record("long-stream"))
    for i in range(100):
        writer.started(record(f"r{i}"))
        writer.emit(record(f"r{i}", "ok"))
        journal.sync()
    assert os.path.getsize(journal.path) < 4_000  # rewritten with its open entries only
    with open(journal.path, "ab") as handle:
        handle.write(b'{"started": {"request_id": "to')  # the worker died inside a write
    _die(journal)
    assert recover(path).written == 1
    assert [r["request_id"] for r in read_records(log_files(path)) if r.get("recovered")] == ["long-stream"]
    assert COMPACT_AT == 1 << 20


def test_a_journal_that_cannot_be_written_out_is_kept_for_the_next_try(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    writer = RecordWriter(str(path), journal=True)
    assert writer.journal is not None
    writer.started(record("open"))
    _die(writer.journal)
    path.unlink()
    path.mkdir()  # the log cannot be opened
    assert recover(str(path)).failed == 1
    path.rmdir()
    assert recover(str(path)).written == 1
    assert [r["request_id"] for r in read_records([str(path)])] == ["open"]


class RedisDown(MemoryLedger):
    """A ledger that refuses (Redis down) until ``up``, then adds each batch id once (as Redis's script)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.tries: list[tuple[BatchKey, ...]] = []

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
        self.tries.append(tuple(batch for batch, _ in batches))
        if not self.up:
            raise ConnectionError("Connection refused")
        return super().add_summed(batches)


def requests_counted(tally: Tally) -> float:
    return sum(value for key, value in tally.counters.items() if key[0] == "tollway_requests")


def test_records_recovered_while_redis_is_down_are_counted_and_reach_the_aggregates_when_it_is_back(
        tmp_path: Path) -> None:
    """The supervisor's sinks are apart: /metrics counts the recovered records at once, and the
    aggregates get them once Redis takes them (each batch under one id), though the journal is gone."""
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, journal=True)
    assert writer.journal is not None
    for request_id in ("a", "b"):
        writer.started(record(request_id))
    _die(writer.journal)
    ledger = RedisDown()
    sender = LedgerSender(ledger, retry=0.01)
    counted = Exchange(Tally(Names(lambda: None)), None)
    try:
        recover_records(ServeConfig("unix:/x", 2, path, 1.0), counted, sender)
        assert requests_counted(counted.tally) == 2  # counted though Redis refuses
        assert sorted(r["request_id"] for r in read_records([path])) == ["a", "b"]
        assert not os.listdir(directory_for(path))  # the log has them: the journal is gone
        deadline = time.monotonic() + 5
        while len(ledger.tries) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ledger.tries) >= 3 and len(set(ledger.tries)) == 1  # retried, under one id
        assert sender.waiting == 2 and not ledger.buckets
        ledger.up = True
        while sender.waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.waiting == 0
        (row,) = ledger.rows("team")
        assert (row.requests, row.unknown_usage, row.incomplete) == (2, 2, 2)  # in flight: their usage unknown
    finally:
        sender.close(1)
    assert sender.dropped == 0


def test_records_a_worker_logged_in_its_last_round_before_it_was_killed_reach_the_aggregates(
        tmp_path: Path) -> None:
    """A worker writes each record to the log at once but spools it at its next round (50 ms):
    killed in between, the log has them and its spool does not. Recovery finds them in the log
    (their entries not marked done), leaves the log as it is and hands the aggregates the
    records as logged; the records of earlier rounds (spooled, marked done) are not sent again."""
    path = str(tmp_path / "requests.jsonl")
    dead_ledger = RedisDown()
    writer = RecordWriter(path, ledger=dead_ledger, journal=True, immediate=True)
    assert writer.journal is not None and writer.outbox is not None

    async def rounds() -> None:
        writer._interval = 0.001
        writer.start()
        for i in range(3):  # an earlier round: spooled, then marked done
            writer.started(served(i))
            writer.emit(served(i))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not writer._pending and writer.journal is not None and not writer.journal._closed:
                break
        assert writer._task is not None
        writer._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer._task

    asyncio.run(rounds())
    for i in range(3, 7):  # the last burst: logged, then SIGKILL before the round
        writer.started(served(i, output_tokens=5))
        writer.emit(served(i, output_tokens=5))
    _die(writer.journal)
    _die_outbox(writer.outbox)
    ledger = MemoryLedger()
    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    try:
        recover_records(ServeConfig("unix:/x", 2, path, 1.0), None, sender)
        until(lambda: not spools(path) and sender.waiting == 0)
        assert [r["request_id"] for r in read_records([path])] == [f"r{i}" for i in range(7)]  # nothing rewritten
        (row,) = ledger.rows("team")
        assert row.requests == 7 and row.output_tokens == 3 * 2 + 4 * 5  # each once, as logged
    finally:
        sender.close(1)


def test_a_round_spools_its_records_before_it_marks_their_entries_done(tmp_path: Path) -> None:
    """A journal entry marked done is a record the spool has: a worker killed between the two
    steps leaves entries recovery finds in the log (and hands the aggregates), never marked
    entries whose records the spool lacks."""
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, ledger=RedisDown(), journal=True, immediate=True, interval=0.001)
    assert writer.journal is not None and writer.outbox is not None
    journal_path = writer.journal.path
    marked_when_spooled: list[bool] = []
    add = writer.outbox.add

    def spool(records: list[dict[str, Any]]) -> None:
        marked_when_spooled.append("done" in Path(journal_path).read_text())
        add(records)

    writer.outbox.add = spool  # type: ignore[method-assign]

    async def run() -> None:
        writer.start()
        writer.started(served(0))
        writer.emit(served(0))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if marked_when_spooled and "done" in Path(journal_path).read_text():
                break
        await writer.close(ledger_timeout=0.1)

    asyncio.run(run())
    assert marked_when_spooled and marked_when_spooled[0] is False


def test_records_waiting_for_the_aggregates_are_bounded_and_given_up_at_exit_loudly(
        caplog: pytest.LogCaptureFixture) -> None:
    ledger = RedisDown()
    sender = LedgerSender(ledger, retry=0.01, max_pending=3)
    for request_id in ("a", "b", "c", "d"):
        sender.add([record(request_id)])
    assert sender.waiting == 3 and sender.dropped == 1  # the oldest batch went first
    sender.close(1)
    assert sender.dropped == 4
    assert "3 recovered record(s) never reached the spend aggregates" in caplog.text


def test_journals_live_in_a_hidden_directory_the_log_readers_never_read(tmp_path: Path) -> None:
    path = str(tmp_path / "requests.jsonl")
    writer = RecordWriter(path, journal=True)
    assert writer.journal is not None and os.path.dirname(writer.journal.path) == directory_for(path)
    assert log_files(path) == [path]


# -- the spend aggregates' spool -------------------------------------------------------------------


def served(i: int, **fields: Any) -> dict[str, Any]:
    return {"request_id": f"r{i}", "ts": time.time(), "team": "search", "key_id": "ci", "model": "gpt-4o",
            "provider": "openai", "outcome": "ok", "status": 200, "input_tokens": 10, "output_tokens": 2,
            "cost_usd_micros": 70, **fields}


def spools(path: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(spool_directory(path)) if ".aggregates" in name)
    except FileNotFoundError:
        return []


def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def requests_in(ledger: MemoryLedger) -> int:
    return sum(row.requests for row in ledger.rows("team"))


def test_a_stop_while_redis_is_down_keeps_the_batches_and_the_supervisor_takes_them_over_once(
        tmp_path: Path) -> None:
    """A worker stops (a rollout) while Redis does not answer: what Redis has not taken stays in its
    spool, journal recovery leaves it alone, and the supervisor's sender takes it over (locked: a
    second recovery meanwhile finds nothing to send), sends it under the batches' ids and deletes
    it; nothing is given up."""
    path = str(tmp_path / "requests.jsonl")
    ledger = RedisDown()
    writer = RecordWriter(path, ledger=ledger, journal=True, immediate=True)
    for i in range(5):
        writer.emit(served(i))
    writer._to_ledger()
    asyncio.run(writer.close(ledger_timeout=0.2))
    assert writer.ledger_dropped == 0
    (left,) = spools(path)
    tried = {batch for call in ledger.tries for batch in call}
    abandoned = os.path.join(spool_directory(path), "123-abcd.aggregates.compact")  # a compaction cut by a death
    Path(abandoned).write_bytes(b"partial")
    recover(path)
    assert spools(path) == sorted([left, os.path.basename(abandoned)])  # journals' recovery leaves them alone

    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    other = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    try:
        started = time.monotonic()
        recover_records(ServeConfig("unix:/x", 2, path, 1.0), None, sender)  # a worker died: on the main thread
        assert time.monotonic() - started < 0.1
        until(lambda: sender.waiting == 5)
        assert sender.waiting == 5 and spools(path) == [left]  # taken over; the dead compaction removed
        other.adopt()  # another recovery meanwhile (a second worker died): the spool is held
        time.sleep(0.1)
        assert other.waiting == 0
        ledger.up = True
        until(lambda: not spools(path))
        assert spools(path) == [] and requests_in(ledger) == 5
        assert writer.outbox is not None and {source for source, _ in tried} == {writer.outbox.source}
        assert ledger.high == {writer.outbox.source: max(seq for _, seq in tried)}  # under the worker's source
    finally:
        sender.close(1)
        other.close(1)
    assert sender.dropped == other.dropped == 0


def test_a_rollback_to_the_previous_release_leaves_the_spools_unread_and_whole(tmp_path: Path) -> None:
    """The previous release's journal recovery deletes every unlocked file in ``.<log>.inflight/``
    that is not a journal: the spools live in a directory of their own, which it never lists, and
    are sent once a release that reads them starts again."""
    path = str(tmp_path / "requests.jsonl")
    ledger = RedisDown()
    writer = RecordWriter(path, ledger=ledger, journal=True, immediate=True)
    writer.started(record("open"))
    for i in range(3):
        writer.emit(served(i))
    writer._to_ledger()
    asyncio.run(writer.close(ledger_timeout=0.1))
    (left,) = spools(path)
    inflight = directory_for(path)
    assert spool_directory(path) != inflight and os.path.basename(spool_directory(path)) == ".requests.jsonl.aggregates"
    assert oct(os.stat(spool_directory(path)).st_mode & 0o777) == oct(os.stat(inflight).st_mode & 0o777)
    for name in os.listdir(inflight):  # the previous release's recover(): every unlocked non-journal file goes
        taken = journal_module._take(os.path.join(inflight, name))
        if taken is not None:
            if not name.endswith(".journal"):
                os.unlink(os.path.join(inflight, name))
            os.close(taken)
    assert spools(path) == [left]
    ledger.up = True
    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    try:
        sender.adopt()
        until(lambda: not spools(path))
        assert requests_in(ledger) == 3
    finally:
        sender.close(1)


def test_a_spool_of_the_release_before_sources_is_sent_under_its_batches_ids(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A spool whose header has no source (written before batches were numbered) is sent as it
    was meant to be: each batch under its id (Redis's per-batch marks), from its taken offset on.
    One whose header cannot be read at all is left as it is, said once (its batches could not be
    added once each); one cut while its first header was written (no batch yet) is deleted."""
    path = str(tmp_path / "requests.jsonl")
    directory = spool_directory(path)
    os.makedirs(directory)
    ledger = MemoryLedger()
    body = [[*bucket, counts] for bucket, counts in ledger.summed([served(0)]).items() if len(bucket) == 5]  # its "b"
    header = b'{"tollway_spool":1,"taken":%016d}\n'
    lines = [orjson.dumps({"n": 1, "id": f"old-{i}", "b": body}, option=orjson.OPT_APPEND_NEWLINE) for i in range(3)]
    Path(directory, "123-abcd.aggregates").write_bytes(header % (len(header % 0) + len(lines[0])) + b"".join(lines))
    Path(directory, "456-abcd.aggregates").write_bytes(b"garbage\n" + lines[0])
    Path(directory, "789-abcd.aggregates").write_bytes(b'{"tollway_spool":2,"taken":00000')  # cut at its start
    sender = LedgerSender(ledger, retry=0.01, directory=directory, rescan=0.05)
    try:
        sender.adopt()
        until(lambda: spools(path) == ["456-abcd.aggregates"])
        time.sleep(0.2)  # a few looks again
    finally:
        sender.close(1)
    assert ledger.marks == {"old-1", "old-2"} and requests_in(ledger) == 2  # old-0 was taken
    assert spools(path) == ["456-abcd.aggregates"]
    assert caplog.text.count("456-abcd.aggregates has no readable header") == 1


def test_a_spool_left_after_the_supervisors_scan_is_taken_over_at_its_next_look(tmp_path: Path) -> None:
    """A previous generation's worker still draining when the new supervisor looked (its spool
    locked then) stops later, while Redis fails over: its spool is taken over at the sender's next
    look at the directory (every ``rescan`` seconds), counted as waiting, and sent."""
    path = str(tmp_path / "requests.jsonl")
    ledger = RedisDown()
    old_worker = Outbox(ledger, spool_directory(path), retry=0.05)
    old_worker.add([served(i) for i in range(5)])
    sender = LedgerSender(ledger, retry=0.05, directory=spool_directory(path), rescan=0.2)
    try:
        sender.adopt()
        time.sleep(0.1)
        assert sender.waiting == 0  # held by its process at the supervisor's scan
        old_worker.close(0.05)
        assert spools(path)
        until(lambda: sender.waiting == 5)
        assert sender.waiting == 5  # taken over: counted in tollway_ledger_waiting
        ledger.up = True
        until(lambda: not spools(path))
        assert requests_in(ledger) == 5 and sender.waiting == 0
    finally:
        sender.close(1)


def test_the_spool_is_bounded_past_it_batches_wait_in_memory_and_what_is_given_up_is_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "requests.jsonl")
    ledger = RedisDown()
    outbox = Outbox(ledger, spool_directory(path), cap=1_000, max_pending=3, retry=60)
    for i in range(12):  # a batch line is about 200 bytes: a few fit
        outbox.add([served(i, team=f"team-{i}")])
    spool = outbox.spool_path
    assert spool is not None and os.path.getsize(spool) <= 1_000
    assert outbox._spool is not None
    spooled = outbox._spool.records
    assert 2 <= spooled <= 6
    assert outbox.waiting == spooled + 3 and outbox.dropped == 12 - spooled - 3  # 3 in memory; the oldest others go
    assert "is at its bound (1000 bytes): new batches wait in memory (up to 3 records" in caplog.text
    assert "waiting for the spend aggregates dropped (more than 3 wait in memory)" in caplog.text
    outbox.close(0.1)
    assert outbox.dropped == 12 - spooled  # and those in memory at exit: counted, said at ERROR
    assert "3 record(s) never reached the spend aggregates" in caplog.text
    ledger.up = True
    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    try:
        sender.adopt()
        until(lambda: not spools(path))
        assert requests_in(ledger) == spooled and requests_in(ledger) + outbox.dropped == 12  # none unaccounted for
    finally:
        sender.close(1)


def test_a_dead_spool_is_read_back_streamed_in_bounded_memory_off_the_main_thread(tmp_path: Path) -> None:
    """A long outage's spool (about 7 MB: 50,000 records, each in a bucket of its own) is sent a
    bounded group at a time: the sender holds a few MB at most, and the supervisor's recovery
    (start, a worker's death) only hands it over."""
    path = str(tmp_path / "requests.jsonl")
    dead = Outbox(RedisDown(), spool_directory(path), retry=60)
    for start in range(0, 50_000, 20):
        dead.add([served(i, key_id=f"k{i}") for i in range(start, start + 20)])
    _die_outbox(dead)
    (name,) = spools(path)
    assert os.path.getsize(os.path.join(spool_directory(path), name)) > 6_000_000
    class Counting(MemoryLedger):  # keeps no buckets: its memory is not the sender's
        requests = 0

        def _add(self, buckets: Summed) -> None:
            self.requests += sum(counts["requests"] for bucket, counts in buckets.items() if len(bucket) == 5)

    ledger = Counting()
    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    tracemalloc.start()
    try:
        started = time.monotonic()
        recover_records(ServeConfig("unix:/x", 2, path, 1.0), None, sender)
        assert time.monotonic() - started < 0.1
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        deadline = time.monotonic() + 60
        peak = 0
        while (spools(path) or sender.waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
            peak = max(peak, tracemalloc.get_traced_memory()[1] - before)
            tracemalloc.reset_peak()
        assert not spools(path)
        assert peak < 10_000_000, peak  # a group (20,000 counters) at most: the whole file parsed is about 70 MB
    finally:
        tracemalloc.stop()
        sender.close(1)
    assert ledger.requests == sender.sent == 50_000 and sender.dropped == 0


def _die_outbox(outbox: Outbox) -> None:
    """The process dies: its outbox's thread stops, its spool's lock goes (the file stays)."""
    with outbox._lock:
        outbox._closed = True
        assert outbox._spool is not None
        os.close(outbox._spool.fd)
    outbox._wake.set()


def test_a_spool_write_that_fails_is_undone_and_the_next_batch_reads_back(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cuts a batch's write short and its undoing fails too: the batch waits in memory,
    and the next one (written where the last whole line ends) is read back whole."""
    path = str(tmp_path / "requests.jsonl")
    outbox = Outbox(RedisDown(), spool_directory(path), retry=60)
    outbox.add([served(0, team="a")])
    assert outbox._spool is not None
    fd, real_pwrite, real_truncate = outbox._spool.fd, os.pwrite, os.ftruncate
    full = {"on": True, "first": True}

    def pwrite(target: int, data: Any, offset: int) -> int:
        if target == fd and full["on"]:
            if full["first"]:
                full["first"] = False
                return real_pwrite(target, bytes(data[:10]), offset)  # part of it fits
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(target, data, offset)

    def ftruncate(target: int, size: int) -> None:
        if target == fd and full["on"]:
            raise OSError(errno.EIO, "Input/output error")
        real_truncate(target, size)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    outbox.add([served(1, team="b")])
    assert outbox._memory_records == 1
    full["on"] = False
    outbox.add([served(2, team="c")])
    assert outbox._spool.records == 2
    monkeypatch.undo()
    _die_outbox(outbox)
    ledger = MemoryLedger()
    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path))
    try:
        sender.adopt()
        until(lambda: not spools(path))
        assert sorted(row.group for row in ledger.rows("team")) == ["a", "c"]  # b died in memory with its process
    finally:
        sender.close(1)


def test_a_spool_mostly_taken_is_compacted_then_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis slower than the batches come: the spool never empties between sends, so once what is
    taken outweighs what is not it is rewritten with the open batches only; emptied once all is taken."""
    monkeypatch.setattr(spool_module, "COMPACT_AT", 1)
    path = str(tmp_path / "requests.jsonl")
    gates = [threading.Event(), threading.Event()]
    called = [threading.Event(), threading.Event()]

    class Gated(MemoryLedger):
        def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
            call = 1 if self.high else 0
            called[call].set()
            gates[call].wait(5)
            return super().add_summed(batches)

    ledger = Gated()
    outbox = Outbox(ledger, spool_directory(path))
    outbox.add([served(i, key_id=f"k{i}") for i in range(50)])  # a big batch, in flight
    assert called[0].wait(5) and outbox._spool is not None
    first = os.stat(outbox._spool.path).st_ino
    for i in range(3):
        outbox.add([served(100 + i)])  # small ones, meanwhile
    gates[0].set()
    assert called[1].wait(5)  # the small ones in flight: the big one was taken
    assert os.stat(outbox._spool.path).st_ino != first  # rewritten
    with open(outbox._spool.path, "rb") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 4 and all(line.startswith(b'{"n":1,') for line in lines[1:])  # header, the small ones
    gates[1].set()
    until(lambda: outbox.waiting == 0)
    assert os.path.getsize(outbox._spool.path) == spool_module.HEADER_SIZE and requests_in(ledger) == 53
    outbox.close()
    assert spools(path) == []


def test_a_compaction_that_fails_or_lacks_the_room_is_not_tried_again_for_a_minute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk while an outage's backlog drains: the compaction is tried once, fails, and is
    not tried (nor logged at ERROR) again after every send; with too little free space for the
    copy (statvfs) it is not even begun."""
    monkeypatch.setattr(spool_module, "COMPACT_AT", 1)
    monkeypatch.setattr(spool_module, "SEND_RECORDS", 10)
    path = str(tmp_path / "requests.jsonl")
    tries: list[str] = []
    real = spool_module._create_locked

    def full(target: str, exclusive: bool = True) -> int:
        if target.endswith(spool_module.COMPACTING):
            tries.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(target, exclusive)

    monkeypatch.setattr(spool_module, "_create_locked", full)
    statvfs = os.statvfs

    def no_room(target: Any) -> Any:
        real_stat = statvfs(target)
        return os.statvfs_result((real_stat.f_bsize, real_stat.f_frsize, real_stat.f_blocks, 0, 0, *real_stat[5:10]))

    for room in ("none", "plenty"):
        tries.clear()
        caplog.clear()
        ledger = RedisDown()
        outbox = Outbox(ledger, spool_directory(path) + "-" + room, retry=0.01)
        for i in range(100):
            outbox.add([served(i, team=f"t{i % 7}")])
        if room == "none":
            monkeypatch.setattr(os, "statvfs", no_room)
        ledger.up = True
        outbox._wake.set()
        until(lambda box=outbox: box.waiting == 0)  # ten sends, each leaving most of the spool taken
        assert outbox.waiting == 0 and requests_in(ledger) == 100
        outbox.close(1)
        compaction_errors = [r for r in caplog.records if "compact" in r.getMessage() and r.levelname == "ERROR"]
        if room == "none":
            monkeypatch.setattr(os, "statvfs", statvfs)
            assert tries == [] and not compaction_errors  # not begun: no room for the copy
            assert len([r for r in caplog.records if "room" in r.getMessage()]) == 1  # said once
        else:
            assert len(tries) == 1 and len(compaction_errors) == 1


def test_the_supervisors_sender_publishes_what_waits(tmp_path: Path) -> None:
    """tollway_ledger_waiting counts the supervisor's sender too (a spool it took over)."""
    path = str(tmp_path / "requests.jsonl")
    dead = Outbox(RedisDown(), spool_directory(path), retry=60)
    dead.add([served(i) for i in range(4)])
    _die_outbox(dead)
    ledger = RedisDown()
    counted = Exchange(Tally(Names(lambda: None)), None)
    sender: LedgerSender | None = None
    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path),
                          on_waiting=lambda waiting: publish_sender(counted, sender, waiting))
    try:
        recover_records(ServeConfig("unix:/x", 2, path, 1.0), counted, sender)
        until(lambda: counted.tally.gauges.get(("tollway_ledger_waiting",)) == 4)
        assert counted.tally.gauges.get(("tollway_ledger_waiting",)) == 4
        ledger.up = True
        until(lambda: counted.tally.gauges.get(("tollway_ledger_waiting",)) == 0)
        assert counted.tally.gauges[("tollway_ledger_waiting",)] == 0
        assert counted.tally.counters[("tollway_ledger_write_failures",)] >= 1
    finally:
        sender.close(1)


class HeldRedis(MemoryLedger):
    """Redis paused (``CLIENT PAUSE ... WRITE``): each send waits until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.go.set()
        self.sending = threading.Event()

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
        self.sending.set()
        self.go.wait(5)
        return super().add_summed(batches)


def test_the_waiting_gauge_comes_back_to_zero_after_a_worker_dies_with_a_send_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker dies with 4 records in flight; the supervisor recovers them and its sender sends
    them while Redis is paused: tollway_ledger_waiting shows them meanwhile, and 0 once Redis
    took them (it once stayed at 4 for good: recovery wrote the 4 in the tally itself, and the
    sender, having published 0 before, never saw a change to publish)."""
    path = str(tmp_path / "requests.jsonl")
    ledger = HeldRedis()
    counted = Exchange(Tally(Names(lambda: None)), None)
    published: list[int] = []
    sender: LedgerSender | None = None

    def on_waiting(waiting: int) -> None:
        published.append(waiting)
        publish_sender(counted, sender, waiting)

    sender = LedgerSender(ledger, retry=0.01, directory=spool_directory(path), on_waiting=on_waiting)
    config = ServeConfig("unix:/x", 2, path, 1.0)
    gauge = ("tollway_ledger_waiting",)
    monkeypatch.setattr(spool_module, "PUBLISH_EVERY", 0.05)
    try:
        recover_records(config, counted, sender)  # the start: nothing to recover
        until(lambda: published == [0])
        assert published == [0] and counted.tally.gauges.get(gauge, 0) == 0
        writer = RecordWriter(path, journal=True)
        assert writer.journal is not None
        for i in range(4):
            writer.started(record(f"r{i}"))
        _die(writer.journal)
        ledger.go.clear()  # CLIENT PAUSE
        time.sleep(2 * spool_module.PUBLISH_EVERY)
        recover_records(config, counted, sender)  # a worker died
        assert requests_counted(counted.tally) == 4
        assert ledger.sending.wait(5) and sender.waiting == 4  # in flight
        until(lambda: counted.tally.gauges.get(gauge) == 4)
        assert counted.tally.gauges.get(gauge) == 4 and published == [0, 4]  # shown while Redis holds them
        ledger.go.set()
        until(lambda: sender.waiting == 0)
        assert sender.waiting == 0 and requests_in(ledger) == 4
        until(lambda: counted.tally.gauges.get(gauge) == 0, 3 * spool_module.PUBLISH_EVERY)
        assert counted.tally.gauges.get(gauge) == 0 and published == [0, 4, 0]
    finally:
        ledger.go.set()
        sender.close(1)


def test_the_supervisors_sender_publishes_its_failures_while_the_count_waiting_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis down for good: tollway_ledger_write_failures_total follows the sender's failures,
    though the records waiting stay the same (it once stayed at the first failure's count)."""
    monkeypatch.setattr(spool_module, "PUBLISH_EVERY", 0.05)
    ledger = RedisDown()
    counted = Exchange(Tally(Names(lambda: None)), None)
    sender: LedgerSender | None = None
    sender = LedgerSender(ledger, retry=0.02, on_waiting=lambda waiting: publish_sender(counted, sender, waiting))
    failures = ("tollway_ledger_write_failures",)
    try:
        sender.add([served(i) for i in range(4)])
        until(lambda: sender.failures >= 10)
        assert sender.failures >= 10
        until(lambda: counted.tally.counters.get(failures, 0) >= 10)
        assert counted.tally.counters.get(failures, 0) >= 10
        assert counted.tally.gauges[("tollway_ledger_waiting",)] == 4
    finally:
        sender.close(1)


def test_a_count_the_owner_failed_to_publish_is_told_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``on_waiting`` raising (the metrics file could not be written) is no count told: the sender
    tells it again, else the gauge would keep the count before it for good."""
    monkeypatch.setattr(spool_module, "PUBLISH_EVERY", 0.05)
    told: list[int] = []
    published: list[int] = []

    def on_waiting(waiting: int) -> None:
        told.append(waiting)
        if waiting == 0 and told.count(0) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        published.append(waiting)

    outbox = Outbox(MemoryLedger(), None, on_waiting=on_waiting)
    try:
        outbox.add([served(i) for i in range(4)])
        until(lambda: published[-1:] == [0])
        assert outbox.waiting == 0 and told[-2:] == [0, 0] and published[-1:] == [0]
    finally:
        outbox.close(1)


def test_an_owner_that_keeps_failing_is_told_again_but_logged_once_a_minute(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk under the metrics file: the count is told again each round (it may come back),
    its traceback logged once, not every second."""
    monkeypatch.setattr(spool_module, "PUBLISH_EVERY", 0.02)
    told: list[int] = []

    def on_waiting(waiting: int) -> None:
        told.append(waiting)
        raise OSError(errno.ENOSPC, "No space left on device")

    outbox = Outbox(MemoryLedger(), None, on_waiting=on_waiting)
    try:
        outbox.add([served(i) for i in range(4)])
        until(lambda: len(told) >= 6)
    finally:
        outbox.close(1)
    assert caplog.text.count("publishing the records waiting") == 1


# -- the log cannot be written ---------------------------------------------------------------------


def full_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A log path that leads to /dev/full (every write: ENOSPC), and the real file to switch it to.

    It stands for a regular file on a full disk, so the writer keeps a journal next to it (it
    keeps none next to a device: see the test below)."""
    monkeypatch.setattr("ext_proc.server.state_dir.regular_or_absent", lambda _path: True)
    path, real = tmp_path / "requests.jsonl", tmp_path / "disk" / "requests.jsonl"
    real.parent.mkdir()
    os.symlink("/dev/full", path)
    return path, real


def space_again(path: Path, real: Path) -> None:
    path.unlink()
    os.symlink(real, path)


def test_a_full_disk_keeps_the_records_in_memory_and_writes_them_in_order_when_it_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, real = full_log(tmp_path, monkeypatch)
    writer = RecordWriter(str(path), journal=True, immediate=True)
    for i in range(5):
        writer.started(record(f"r{i}"))
        writer.emit(record(f"r{i}", "ok"))
    status = writer.status()
    assert status["ok"] is False and status["error"] == os.strerror(errno.ENOSPC)
    assert status["waiting"] == 5 and status["failed_writes"] >= 1 and status["dropped"] == 0
    assert writer.journal is not None and writer.journal.open == 5  # not in the log: still open
    space_again(path, real)
    writer.flush()
    assert [r["request_id"] for r in read_records([str(real)])] == [f"r{i}" for i in range(5)]
    assert writer.status()["ok"] is True and writer.status()["waiting"] == 0 and writer.journal.open == 0


def test_a_write_cut_short_is_finished_before_the_next_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "requests.jsonl"
    writer = RecordWriter(str(path), immediate=True)
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))  # the disk fills mid-record
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ext_proc.server.records.os.write", short_then_full)
    writer.emit(record("first", "ok"))
    writer.emit(record("second", "ok"))
    assert writer.status()["waiting"] == 2
    monkeypatch.setattr("ext_proc.server.records.os.write", real_write)
    writer.flush()
    assert [r["request_id"] for r in read_records([str(path)])] == ["first", "second"]
    assert len(path.read_bytes().splitlines()) == 2  # no torn line


def test_past_the_bound_the_oldest_records_are_dropped_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, real = full_log(tmp_path, monkeypatch)
    line = len(orjson.dumps({**record("r00", "ok"), "ts": 1.0})) + 1
    writer = RecordWriter(str(path), journal=True, immediate=True, max_backlog=10 * line)
    for i in range(30):
        writer.started(record(f"r{i:02}"))
        writer.emit(record(f"r{i:02}", "ok"))
    status = writer.status()
    assert status["dropped"] > 0 and status["waiting"] + status["dropped"] == 30 and status["waiting"] <= 11
    assert writer.journal is not None and writer.journal.open == status["waiting"]  # the dropped are closed
    space_again(path, real)
    writer.flush()
    written = [r["request_id"] for r in read_records([str(real)])]
    assert written == [f"r{i:02}" for i in range(30 - len(written), 30)]  # the newest are kept


def test_a_log_that_is_a_device_gets_no_journal_next_to_it(tmp_path: Path) -> None:
    # --log-file /dev/full (or a symlink to a device): the log is not a file a journal could be
    # recovered into, and its directory (/dev) no place for one.
    os.symlink("/dev/full", tmp_path / "device.jsonl")
    for path in ("/dev/full", str(tmp_path / "device.jsonl")):
        before = set(os.listdir(os.path.dirname(path)))
        writer = RecordWriter(path, journal=True, immediate=True)
        writer.started(record("r1"))
        writer.emit(record("r1", "ok"))
        assert writer.journal is None and set(os.listdir(os.path.dirname(path))) == before
        assert writer.status()["ok"] is False and writer.status()["error"] == os.strerror(errno.ENOSPC)
    assert RecordWriter(str(tmp_path / "new.jsonl"), journal=True).journal is not None  # not there yet: a file


def test_a_log_that_cannot_be_opened_at_start_is_opened_when_it_can(tmp_path: Path) -> None:
    path = tmp_path / "later" / "requests.jsonl"
    writer = RecordWriter(str(path), immediate=True)
    writer.emit(record("r1", "ok"))
    assert writer.status()["ok"] is False and writer.status()["waiting"] == 1
    path.parent.mkdir()
    writer.flush()
    assert [r["request_id"] for r in read_records([str(path)])] == ["r1"] and writer.status()["ok"] is True


def test_the_periodic_writer_retries_and_survives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    path, real = full_log(tmp_path, monkeypatch)

    async def run() -> None:
        writer = RecordWriter(str(path), interval=0.01, immediate=True)
        writer.start()
        writer.emit(record("r1", "ok"))
        await asyncio.sleep(0.05)
        assert writer.status()["waiting"] == 1
        space_again(path, real)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if writer.status()["ok"]:
                break
        await writer.close()

    asyncio.run(run())
    assert [r["request_id"] for r in read_records([str(real)])] == ["r1"]


def test_an_idle_writer_sleeps_and_wakes_for_the_next_record(tmp_path: Path) -> None:
    """The periodic flush follows records up (the journal's marks, a rotation), then waits for
    the next record instead of waking every ``interval`` (an idle sidecar's CPU)."""
    import asyncio

    path = tmp_path / "requests.jsonl"

    async def run() -> tuple[int, int, list[str]]:
        writer = RecordWriter(str(path), interval=0.005, journal=True, immediate=True)
        rounds = 0
        flush = writer.flush

        def counted() -> None:
            nonlocal rounds
            rounds += 1
            flush()

        writer.flush = counted  # type: ignore[method-assign]
        writer.start()
        writer.started(record("r1", "ok"))
        writer.emit(record("r1", "ok"))
        await asyncio.sleep(0.2)  # 40 intervals
        after_one = rounds
        assert writer.journal is not None
        marks = [line for line in Path(writer.journal.path).read_text().splitlines()
                 if "done" in line]
        writer.emit(record("r2", "ok"))
        await asyncio.sleep(0.05)
        after_two = rounds
        await writer.close()
        return after_one, after_two, marks

    after_one, after_two, marks = asyncio.run(run())
    assert after_one == 1 and marks  # one round: the journal marked r1 done, then nothing until r2
    assert after_two == 2
    assert [r["request_id"] for r in read_records([str(path)])] == ["r1", "r2"]


def test_an_idle_workers_next_record_follows_rotations_another_made(tmp_path: Path) -> None:
    """Worker A is idle (its writer asleep) while worker B's records rotate the log past ``keep``:
    A's next record goes to the current file, not to the one it had open, which is gone."""
    import asyncio

    from ext_proc.ledger.log import log_files

    path = str(tmp_path / "requests.jsonl")

    async def run() -> None:
        a = RecordWriter(path, interval=0.01, max_bytes=2_000, keep=1, immediate=True, journal=True)
        b = RecordWriter(path, interval=0.01, max_bytes=2_000, keep=1, immediate=True, journal=True)
        a.start()
        b.start()
        a.emit(record("a-first", "ok"))
        await asyncio.sleep(0.05)  # then A is idle
        for i in range(60):  # B serves: the file passes max_bytes several times, only the newest is kept
            b.emit({**record(f"b{i}", "ok"), "pad": "x" * 200})
            await asyncio.sleep(0.02)
        a.emit(record("a-after-idle", "ok"))
        await asyncio.sleep(0.05)
        await a.close()
        await b.close()

    asyncio.run(run())
    assert "a-after-idle" in {r["request_id"] for r in read_records(log_files(path))}


def test_session_transcript_still_sees_the_record_after_the_note() -> None:
    transcript = Transcript()
    transcript >> head()
    transcript.pending.clear()
    transcript >> RequestBody(orjson.dumps(BODY), True, 2_000)
    transcript.pending.clear()
    transcript >> ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 3_000)
    transcript.pending.clear()
    body = orjson.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    transcript >> ResponseBody(body, True, 4_000)
    transcript.pending.pop(0)  # the answer
    assert transcript << Record(request_id="req-1", outcome="ok", output_tokens=2)
    assert len(transcript.forwarded) == 1


def test_a_device_as_the_log_is_not_refused_at_start_for_its_directory(tmp_path: Path) -> None:
    # tollway serve refuses a log it could never create (a missing or read-only directory), but a
    # device that exists is written as it is, whatever its directory (/dev is root's).
    from ext_proc.server.app import ServeConfig, _unusable

    def said(log_file: str) -> str | None:
        return _unusable(ServeConfig("unix:/x", 2, log_file, 1.0))

    assert said("/dev/full") is None and said("/dev/null") is None
    assert said(str(tmp_path / "missing" / "requests.jsonl")) == f"--log-file: the directory {tmp_path / 'missing'} " \
        "does not exist"
    assert said(str(tmp_path / "requests.jsonl")) is None


# -- --state-dir: journals and spools for any log, stdout included -------------------------------------


def test_with_a_state_dir_the_log_on_stdout_gets_a_journal_and_a_spool_there_0700(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "aggregates").mkdir(parents=True, mode=0o755)  # made wider by someone: narrowed
    os.chmod(state / "aggregates", 0o755)
    writer = RecordWriter(None, ledger=RedisDown(), journal=True, immediate=True, state_dir=str(state))
    try:
        assert writer.journal is not None and os.path.dirname(writer.journal.path) == str(state / "inflight")
        assert writer.outbox is not None
        writer.outbox.add([served(1)])
        assert writer.outbox.spool_path is not None
        assert os.path.dirname(writer.outbox.spool_path) == str(state / "aggregates")
        for name in ("inflight", "aggregates"):
            assert oct(os.stat(state / name).st_mode & 0o777) == oct(0o700), name
    finally:
        writer.outbox.close(0.1)
        writer.journal.close()
    # Without one, as before: a log on stdout (or a device) keeps neither.
    bare = RecordWriter(None, ledger=RedisDown(), journal=True, immediate=True)
    assert bare.journal is None and bare.outbox is not None and bare.outbox._directory is None


def test_recovery_into_a_log_it_cannot_search_writes_every_open_entry_at_least_once(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A log on stdout cannot be searched for the records a worker wrote in its last round (before
    its journal marked them): every open entry is written to stdout, marked recovered, the one the
    log had included (twice in the log, never missing), and handed to the aggregates."""
    state = tmp_path / "state"
    writer = RecordWriter(None, journal=True, immediate=True, state_dir=str(state))
    journal = writer.journal
    assert journal is not None
    for request_id in ("done", "open", "logged-but-not-marked"):
        writer.started(record(request_id))
    writer.emit(record("done", "ok"))
    journal.sync()  # "done" is marked
    writer.emit(record("logged-but-not-marked", "ok"))  # on stdout; the worker dies before the mark
    _die(journal)
    capfd.readouterr()
    added: list[dict[str, Any]] = []
    logged: list[dict[str, Any]] = []
    result = recover(None, added.extend, logged.extend, directory=str(state / "inflight"))
    assert (result.journals, result.written, result.logged_anyway) == (1, 2, 0)
    out = [orjson.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert sorted(r["request_id"] for r in out) == ["logged-but-not-marked", "open"]
    assert all(r["recovered"] is True and r["outcome"] == "incomplete" for r in out)
    assert sorted(r["request_id"] for r in added) == ["logged-but-not-marked", "open"] and not logged
    assert not os.path.exists(journal.path)
    # The supervisor does it with --state-dir and no --log-file (it did nothing without a log file).
    again = RecordWriter(None, journal=True, immediate=True, state_dir=str(state))
    assert again.journal is not None
    again.started(record("open-3"))
    _die(again.journal)
    recover_records(ServeConfig("unix:/x", 2, None, 1.0, state_dir=str(state)))
    assert [orjson.loads(line)["request_id"] for line in capfd.readouterr().out.splitlines()] == ["open-3"]


def test_a_state_dir_that_cannot_be_used_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    from ext_proc.server.app import _unusable

    def said(state: Path) -> str | None:
        return _unusable(ServeConfig("unix:/x", 2, None, 1.0, state_dir=str(state)))

    (tmp_path / "file").write_text("")
    assert said(tmp_path / "file") == f"--state-dir: {tmp_path / 'file'} is not a directory"
    problem = said(tmp_path / "file" / "state")
    assert problem is not None and problem.startswith("--state-dir: cannot create ") and "\n" not in problem
    assert said(tmp_path / "new" / "state") is None  # made, with its two directories
    assert sorted(os.listdir(tmp_path / "new" / "state")) == ["aggregates", "inflight"]


def test_a_state_dir_of_another_user_that_others_may_write_in_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journals and spools planted there would be written to the log and added to the aggregates:
    a directory this user cannot narrow (another's), open to others, is refused at start."""
    from ext_proc.server import journal as journal_module
    from ext_proc.server.app import _unusable

    state = tmp_path / "state"
    for name in ("inflight", "aggregates"):
        (state / name).mkdir(parents=True)
        os.chmod(state / name, 0o777)

    chmod = os.chmod

    def refuse(path: str, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(journal_module.os, "chmod", refuse)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(state).st_uid + 1)  # not the directories' owner
    problem = _unusable(ServeConfig("unix:/x", 2, None, 1.0, state_dir=str(state)))
    assert problem is not None and "belongs to another user and others may write in it" in problem
    assert "\n" not in problem
    chmod(state / "inflight", 0o755)
    chmod(state / "aggregates", 0o755)  # another's but closed to others: usable (if writable)
    assert _unusable(ServeConfig("unix:/x", 2, None, 1.0, state_dir=str(state))) is None


def test_a_spool_budget_bounds_the_whole_directory_dead_processes_spools_included(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--spool-max: the spools of every process sharing the directory, and those dead ones left,
    hold the budget and a step each at most; past it batches wait in memory; once Redis takes
    everything the room is another's again."""
    monkeypatch.setattr(spool_module, "STEP", 4_000)
    monkeypatch.setattr(spool_module, "LOOK_AGAIN", 0.0)
    directory = str(tmp_path / "aggregates")
    budget = 20_000
    dead = Outbox(RedisDown(), directory, retry=60, budget=budget, cap=budget)
    for i in range(40):
        dead.add([served(i, team=f"t{i}")])
    _die_outbox(dead)
    left = spool_module.directory_bytes(directory)
    assert 0 < left <= budget + 4_000
    ledger = RedisDown()
    live = [Outbox(ledger, directory, retry=0.05, budget=budget, cap=budget) for _ in range(2)]
    try:
        for i in range(200):
            live[i % 2].add([served(i, team=f"u{i}")])
        assert spool_module.directory_bytes(directory) <= budget + 2 * 4_000
        assert all(o.waiting > 0 for o in live) and sum(o._memory_records for o in live) > 0  # past it: memory
        ledger.up = True  # Redis takes everything: the spools empty, the room is theirs again
        until(lambda: all(o.waiting == 0 for o in live))
        assert all(o.waiting == 0 for o in live)
        live[0].add([served(1_000 + i, team=f"v{i}") for i in range(1)])
        assert live[0]._memory_records == 0  # spooled: its room was given back
    finally:
        for outbox in live:
            outbox.close(0.5)
