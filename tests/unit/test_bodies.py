"""A worker's request bodies held at once, and the 503 past its limit (ext_proc/server/bodies.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server.bodies import BodyBudget
from ext_proc.server.records import RecordWriter
from ext_proc.server.servicer import ExtProcCall, Processor, Service
from tests.unit.test_coalesce import BODY, chunk, parsed, request_head


def _service(tmp_path: Path, limit: int) -> Service:
    return Service(RecordWriter(str(tmp_path / "requests.jsonl"), immediate=True), bodies=BodyBudget(limit))


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

    class Context:
        def invocation_metadata(self) -> tuple[()]:
            return ()

    async def run(messages: list[bytes]) -> list[Any]:
        async def requests() -> Any:
            for data in messages:
                yield pb.ProcessingRequest.FromString(data)
        return [reply async for reply in processor.process(requests(), Context())]  # type: ignore[arg-type]

    (refused,) = asyncio.run(run(messages))
    assert _refusal(refused)["code"] == "overloaded"
    assert service.bodies.held == 90
    service.bodies.give_back(90)
    replies = asyncio.run(run(messages))
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body", "request_body"]
    assert service.bodies.held == 0
