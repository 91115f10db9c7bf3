"""A worker's request bodies held at once, and the 503 past its limit (ext_proc/server/bodies.py)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server.bodies import BodyBudget, declared, inflated
from ext_proc.server.coalesce import MAX_BODY
from ext_proc.server.records import RecordWriter
from ext_proc.server.servicer import ExtProcCall, Processor, Service
from tests.unit.test_coalesce import BODY, chunk, grpcio_replies, parsed, request_head


def _service(tmp_path: Path, limit: int, large: int = 1) -> Service:
    return Service(RecordWriter(str(tmp_path / "requests.jsonl"), immediate=True), bodies=BodyBudget(limit, large))


def _refusal(reply: pb.ProcessingResponse) -> dict[str, Any]:
    immediate = reply.immediate_response
    assert immediate.status.code == 503
    headers = {o.header.key: o.header.raw_value.decode() for o in immediate.headers.set_headers}
    assert headers["retry-after"] == "1" and headers["x-should-retry"] == "true"
    error: dict[str, Any] = orjson.loads(immediate.body)["error"]
    return error


def test_the_budget_counts_bodies_and_always_lets_one_alone_through() -> None:
    budget = BodyBudget(100)
    assert budget.take(0, 150)  # alone: read whatever its size (coalesce.MAX_BODY bounds it)
    assert budget.take(150, 50)  # still alone: its own bytes are not others'
    assert not budget.take(0, 1)  # another request, past the limit while the first holds 200
    budget.give_back(200)
    assert budget.held == 0
    assert budget.take(0, 60) and budget.take(0, 40)  # two at once, exactly the limit
    assert not budget.take(0, 1) and budget.refused == 2
    unlimited = BodyBudget(0)
    assert unlimited.take(0, 10**9) and unlimited.take(0, 10**9)
    with pytest.raises(ValueError):
        BodyBudget(-1)


@pytest.mark.parametrize("together", [True, False], ids=["bodies-together", "buffered"])
def test_a_body_past_the_workers_limit_is_a_503_and_the_budget_comes_back_at_the_streams_end(
        tmp_path: Path, together: bool) -> None:
    service = _service(tmp_path, 100)
    config = {} if together else {"config": None}
    first = ExtProcCall(service)
    first.message(request_head(**config))  # type: ignore[arg-type]
    first.message(chunk("request_body", b"x" * 90))  # a body still arriving (a slow upload), or buffered whole
    assert service.bodies.held == 90
    if together:  # a body refused midway: what it held so far no longer counts
        midway = ExtProcCall(service)
        midway.message(request_head())
        midway.message(chunk("request_body", b"y" * 8))
        assert service.bodies.held == 98
        (refused,) = parsed(midway.message(chunk("request_body", b"y" * 8)))
        assert _refusal(refused)["code"] == "overloaded"
        assert service.bodies.held == 90 and service.bodies.refused == 1
        midway.reset()
        assert service.bodies.held == 90

    second = ExtProcCall(service)
    second.message(request_head(**config))  # type: ignore[arg-type]
    (refused,) = parsed(second.message(chunk("request_body", orjson.dumps(BODY), end=True)))
    error = _refusal(refused)
    assert error["code"] == "overloaded" and error["type"] == "server_error"
    assert second.session.outcome == "rejected"
    if together:
        assert second.message(chunk("request_body", b"more")) == []  # the rest of a refused body is dropped
    assert service.bodies.held == 90 and service.bodies.refused == 1 + together

    first.reset()  # the first request's stream ended: its bytes no longer count
    first.reset()  # once only
    assert service.bodies.held == 0
    third = ExtProcCall(service)
    third.message(request_head(**config))  # type: ignore[arg-type]
    replies = parsed(third.message(chunk("request_body", orjson.dumps(BODY), end=True)))
    assert not any(r.HasField("immediate_response") for r in replies)
    assert service.bodies.held == len(orjson.dumps(BODY))
    assert third.end() == (0, "")
    assert service.bodies.held == 0


def test_a_large_declared_body_reserves_its_length_from_its_first_chunk() -> None:
    budget = BodyBudget(100, large=20)
    assert budget.read(0, 60, 10) == (10, 50) and budget.reserved == 50  # content-length 60: the rest reserved
    assert budget.read(10, 50, 30) == (40, 20) and (budget.held, budget.reserved) == (40, 20)
    assert budget.read(40, 20, 30) == (70, 0) and (budget.held, budget.reserved) == (70, 0)  # 10 past what it said
    assert budget.read(0, 40, 1) is None and budget.refused == 1  # another, declaring 40: 70 + 40 > 100
    assert budget.read(0, 10, 5) == (5, 0) and budget.reserved == 0  # a small one: its chunks as they come
    assert budget.read(0, 0, 20) == (20, 0) and budget.held == 95  # undeclared: its chunks as they come
    assert declared({"content-length": "1234"}) == 1234 and declared({}) == 0
    assert declared({"content-length": "\u00b2"}) == 0 and declared({"content-length": "-1"}) == 0
    assert declared({"content-length": "9" * 5000}) == MAX_BODY == declared({"content-length": str(MAX_BODY + 1)})


def test_stalled_large_uploads_never_keep_small_bodies_out() -> None:
    """Two clients declaring large bodies and sending a byte each (a stalled upload, or an attack)
    reserve what they declared: another large body is refused, a small one never is."""
    budget = BodyBudget(100, large=20)
    assert budget.read(0, 45, 1) == (1, 44) and budget.read(0, 45, 1) == (1, 44)
    assert (budget.held, budget.reserved) == (2, 88)
    assert budget.read(0, 30, 1) is None  # large: 90 held or reserved, no room for 30
    assert budget.read(0, 15, 15) == (15, 0) and budget.read(0, 0, 15) == (15, 0)  # small, and undeclared
    budget.give_back(1, 44)
    budget.give_back(1, 44)
    assert (budget.held, budget.reserved) == (30, 0)
    budget.give_back(0, 30)  # a request that read nothing reserved nothing (30 was only what it declared)
    assert budget.reserved == 0


def test_a_large_body_refused_midway_gives_back_its_reservation_once() -> None:
    budget = BodyBudget(100, large=20)
    first, second = budget.read(0, 30, 1), budget.read(0, 30, 1)  # two large bodies: 1 read, 29 reserved each
    assert first == second == (1, 29) and budget.read(0, 0, 70) == (70, 0)  # and an undeclared 70
    assert budget.read(1, 29, 29) is None  # the first's rest: 72 + 29 read > 100
    budget.give_back(1, 29)  # as the servicer does on a refusal
    assert (budget.held, budget.reserved) == (71, 29)  # the second's reservation stands
    assert budget.read(1, 29, 10) == (11, 19) and budget.reserved == 19
    budget.release(19)  # the second ends short of what it declared
    budget.give_back(11)
    budget.give_back(70)
    assert (budget.held, budget.reserved) == (0, 0)


@pytest.mark.parametrize("together", [True, False], ids=["bodies-together", "buffered"])
def test_a_request_declaring_a_body_past_the_limit_is_refused_at_its_first_chunk(
        tmp_path: Path, together: bool) -> None:
    """Refused as its body starts, not once Envoy and the worker have read most of it."""
    service = _service(tmp_path, 100)
    bodies = service.bodies
    config = {} if together else {"config": None}
    first = ExtProcCall(service)
    first.message(request_head(**config, **{"content-length": "60"}))  # type: ignore[arg-type]
    first.message(chunk("request_body", b"x" * 8))
    assert (bodies.held, bodies.reserved) == (8, 52)
    second = ExtProcCall(service)
    second.message(request_head(**config, **{"content-length": "50"}))  # type: ignore[arg-type]
    (refused,) = parsed(second.message(chunk("request_body", b"y" * 8)))
    assert _refusal(refused)["code"] == "overloaded" and (bodies.held, bodies.reserved) == (8, 52)
    first.reset()
    assert (bodies.held, bodies.reserved) == (0, 0)
    if together:  # a body arriving in chunks: the rest reserved from the first, taken from it as it comes
        third = ExtProcCall(service)
        third.message(request_head(**{"content-length": "40"}))
        assert third.message(chunk("request_body", b"{" * 8)) == []
        assert third.message(chunk("request_body", b"{" * 8)) == [] and (bodies.held, bodies.reserved) == (16, 24)
        third.message(chunk("request_body", b"", end=True))  # shorter than it said: its reservation ends
        assert (bodies.held, bodies.reserved) == (16, 0)
        third.reset()
        assert (bodies.held, bodies.reserved) == (0, 0)


def test_a_refused_request_at_its_headers_counts_no_body(tmp_path: Path) -> None:
    from tests.unit.test_attempt import service  # a policy: a request without a key is refused

    shared = service(tmp_path)
    shared.bodies = BodyBudget(10)
    call = ExtProcCall(shared)
    (refused,) = parsed(call.message(request_head()))
    assert refused.immediate_response.status.code == 401
    assert call.message(chunk("request_body", b"x" * 50)) == []
    assert shared.bodies.held == 0


def test_grpcio_refuses_the_same_and_gives_the_bytes_back(tmp_path: Path) -> None:
    service = _service(tmp_path, 100)
    service.bodies.take(0, 90)  # another request holds 90 bytes
    processor = Processor(service)
    messages = [request_head(), chunk("request_body", orjson.dumps(BODY)), chunk("request_body", b"", end=True)]

    (refused,) = grpcio_replies(processor, messages)
    assert _refusal(refused)["code"] == "overloaded"
    assert service.bodies.held == 90
    declaring = [request_head(**{"content-length": "20"}), chunk("request_body", b"{"),
                 chunk("request_body", b"}", end=True)]
    (refused,) = grpcio_replies(processor, declaring)  # its first byte: 90 + the 20 it declares > 100
    assert _refusal(refused)["code"] == "overloaded" and service.bodies.held == 90
    service.bodies.give_back(90)
    replies = grpcio_replies(processor, messages)
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body", "request_body"]
    assert service.bodies.held == 0


def _gzipped(size: int) -> tuple[bytes, bytes]:
    """A chat body of about ``size`` bytes, and its gzip (compressing about 100 times: less than the
    200 times past which the session refuses a gzip body)."""
    text = "a" * size + base64.b64encode(random.Random(size).randbytes(size // 200)).decode()
    raw = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    return raw, gzip.compress(raw)


def test_a_gzip_bodys_trailer_tells_its_inflated_size() -> None:
    raw, packed = _gzipped(5 << 20)
    assert inflated(packed) == len(raw)
    most = (2**32 - 1).to_bytes(4, "little")  # capped at what the session inflates at most:
    assert inflated(packed[:-4] + most) == 200 * len(packed)  # 200 times its size,
    assert inflated(packed[:2] + bytes(400_000) + most) == 64 << 20  # 64 MiB
    assert inflated(bytes(400_000) + most) == 0  # no gzip header: the session refuses it as corrupt
    bomb = gzip.compress(b"x" * (10 << 20))  # 1000 times: the session refuses it past 200 times its size
    assert inflated(bomb) == 200 * len(bomb)
    assert inflated(b"\x1f\x8b") == 0  # too short to be gzip: the session refuses it as corrupt


@pytest.mark.parametrize("together", [True, False], ids=["bodies-together", "buffered"])
def test_a_gzip_body_counts_inflated_and_past_the_limit_is_refused_before_it_is_inflated(
        tmp_path: Path, together: bool) -> None:
    raw, packed = _gzipped(5 << 20)
    service = _service(tmp_path, len(raw) + (1 << 20))  # room for 1 MiB more
    config = {} if together else {"config": None}
    assert len(packed) < 100_000
    first = ExtProcCall(service)
    first.message(request_head(**config, **{"content-encoding": "gzip"}))  # type: ignore[arg-type]
    replies = parsed(first.message(chunk("request_body", packed, end=True)))
    assert not any(r.HasField("immediate_response") for r in replies)  # alone in the worker: read
    assert first.session.flow.body == raw  # type: ignore[union-attr]
    assert service.bodies.held == len(raw)  # what the worker holds: the inflated body

    second = ExtProcCall(service)
    second.message(request_head(**config, **{"content-encoding": "gzip"}))  # type: ignore[arg-type]
    _, more = _gzipped(2 << 20)  # its compressed bytes fit, not the 2 MiB it inflates to
    (refused,) = parsed(second.message(chunk("request_body", more, end=True)))
    assert _refusal(refused)["code"] == "overloaded" and second.session.outcome == "rejected"
    assert not second.session.flow.body  # type: ignore[union-attr]  # refused before the session read it
    assert service.bodies.held == len(raw) and service.bodies.refused == 1
    second.reset()
    first.reset()
    assert service.bodies.held == 0

    # a body of several members announces only its last one's size: counted once inflated
    lying = gzip.compress(raw) + gzip.compress(b" ")
    third = ExtProcCall(service)
    third.message(request_head(**config, **{"content-encoding": "gzip"}))  # type: ignore[arg-type]
    replies = parsed(third.message(chunk("request_body", lying, end=True)))
    assert not any(r.HasField("immediate_response") for r in replies)
    assert service.bodies.held == len(raw) + 1
    assert third.end() == (0, "")
    assert service.bodies.held == 0


def test_grpcio_counts_a_gzip_body_inflated(tmp_path: Path) -> None:
    raw, packed = _gzipped(5 << 20)
    _, more = _gzipped(2 << 20)
    service = _service(tmp_path, len(raw) + (1 << 20))
    processor = Processor(service)
    head = request_head(**{"content-encoding": "gzip"})

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

    async def run() -> tuple[list[Any], list[Any], int]:
        async def requests(body: bytes, hold: asyncio.Event | None = None) -> Any:
            for data in (head, chunk("request_body", body), chunk("request_body", b"", end=True)):
                yield pb.ProcessingRequest.FromString(data)
            if hold is not None:
                await hold.wait()  # the first stream stays open: its body held

        hold = asyncio.Event()
        first: list[Any] = []

        async def read_first() -> None:
            async for reply in processor.process(requests(packed, hold), Context()):  # type: ignore[arg-type]
                first.append(reply)

        task = asyncio.ensure_future(read_first())
        for _ in range(1000):
            if len(first) == 3:
                break
            await asyncio.sleep(0)
        during = service.bodies.held
        second = [r async for r in processor.process(requests(more), Context())]  # type: ignore[arg-type]
        hold.set()
        await task
        return first, second, during

    first, second, during = asyncio.run(run())
    assert len(first) == 3 and not any(r.HasField("immediate_response") for r in first)
    assert during == len(raw)
    (refused,) = second
    assert _refusal(refused)["code"] == "overloaded"
    assert service.bodies.held == 0


def test_a_fault_handling_a_gzip_body_gives_back_all_it_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inflated size is charged before the session inflates the body: a fault in the session
    (the transport then resets the stream) still gives back all of it, not only the compressed bytes."""
    import gzip

    from ext_proc.core.session import Session

    service = _service(tmp_path, 128 << 20)
    call = ExtProcCall(service)
    call.message(request_head(config=None, **{"content-encoding": "gzip"}))

    def fault(self: Session, event: object) -> None:
        raise RuntimeError("a fault in the session")

    monkeypatch.setattr(Session, "handle", fault)
    with pytest.raises(RuntimeError):
        call.message(chunk("request_body", gzip.compress(orjson.dumps(BODY) + b" " * 100_000), end=True))
    monkeypatch.undo()
    call.reset()
    assert service.bodies.held == 0


def test_a_body_that_is_no_gzip_is_charged_as_it_is_and_refused_as_corrupt(tmp_path: Path) -> None:
    """Its last four bytes are no gzip trailer: nothing more is charged, and the client gets the
    400 it can do something about, not a 503 it would retry."""
    service = _service(tmp_path, 1000)
    service.bodies.take(0, 900)  # another request holds 900 bytes
    call = ExtProcCall(service)
    call.message(request_head(config=None, **{"content-encoding": "gzip"}))
    (answer,) = parsed(call.message(chunk("request_body", b"not gzip at all \xff\xff\xff\x7f", end=True)))
    assert answer.immediate_response.status.code == 400
