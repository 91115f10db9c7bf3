"""Ask and continue: a step asks shared state, the request waits, the answer continues it.

Transcripts of the sans-IO session with the store probe step (``tollway serve --store-probe``),
then the servicer running a question on an event loop: answered later through the stream's
responder, refused when the store fails, and dropped when the client left while it was out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.core import pipeline
from ext_proc.core.actions import Ask, Continue
from ext_proc.core.events import Answered, RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.core.session import ProtocolError, Session
from ext_proc.policy.compile import compile_policy
from ext_proc.server.servicer import ExtProcCall, Service
from ext_proc.state.limits import Keeper, MemoryBackend
from ext_proc.state.queries import Ping, StoreUnavailable
from ext_proc.state.store import MemoryStore
from tests.unit.transcript import Record, Responds, Transcript

POLICY = compile_policy("""
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o-mini: {provider: openai}
teams:
  platform: {workloads: [local-dev], models: ["*"]}
""")
PROBING = pipeline.Pipeline.of(pipeline.request_steps(store_probe=True))
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
HEAD = RequestHeaders({":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "r1"}, False, 1)
HEAD_SENT = Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))
SENT = Continue(set_headers=(("x-tollway-cluster", "openai"),), clear_route_cache=True,
                credential=POLICY.providers["openai"])
ANSWER = orjson.dumps({"model": "gpt-4o-mini", "choices": [],
                       "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}})


def session() -> Session:
    return Session(POLICY, "local-dev", steps=PROBING)


def test_the_request_waits_for_the_answer_then_goes_on() -> None:
    assert (
        Transcript(session())
        >> HEAD
        << HEAD_SENT
        >> RequestBody(orjson.dumps(BODY), True, 1_000_000)
        << Ask(Ping())  # nothing goes to Envoy yet
        >> Answered("memory", 3_000_000)
        << SENT  # the body's answer, once the store answered
        >> ResponseHeaders({":status": "200", "content-type": "application/json"}, False, 5_000_000)
        << Continue()
        >> ResponseBody(ANSWER, True, 6_000_000)
        << Continue(set_headers=(("x-tollway-provider", "openai"), ("x-tollway-model", "gpt-4o-mini")))
        << Record(outcome="ok", status=200, input_tokens=8, output_tokens=2, latency_ms=6.0)
    )


def test_a_store_that_fails_refuses_the_request_in_the_clients_format() -> None:
    assert (
        Transcript(session())
        >> HEAD
        << HEAD_SENT
        >> RequestBody(orjson.dumps(BODY), True, 1)
        << Ask(Ping())
        >> Answered(StoreUnavailable("redis did not answer within 1 s"), 2)
        << Responds(503, {"error": {
            "message": "Tollway's shared state store is unavailable (redis did not answer within 1 s).",
            "type": "server_error", "param": None, "code": "state_unavailable"}})
        << Record(outcome="rejected", status=503, error="state_unavailable")
    )


def test_the_client_leaving_while_the_answer_is_out_ends_the_request_once() -> None:
    transcript = (
        Transcript(session())
        >> HEAD
        << HEAD_SENT
        >> RequestBody(orjson.dumps(BODY), True, 1_000_000)
        << Ask(Ping())
        >> StreamClosed(4_000_000)  # the client left: the request ends here
        << Record(outcome="incomplete", status=None, provider="openai", latency_ms=4.0)
        >> Answered("memory", 9_000_000)  # the late answer changes nothing
    )
    assert transcript


def test_only_the_answer_or_the_end_may_come_while_waiting() -> None:
    waiting = session()
    waiting.handle(HEAD)
    assert isinstance(waiting.handle(RequestBody(orjson.dumps(BODY), True, 1)), Ask)
    with pytest.raises(ProtocolError, match="unexpected ResponseHeaders in phase waiting"):
        waiting.handle(ResponseHeaders({":status": "200"}, False, 2))


def test_without_the_probe_nothing_is_asked() -> None:
    assert (
        Transcript(Session(POLICY, "local-dev"))
        >> HEAD
        << HEAD_SENT
        >> RequestBody(orjson.dumps(BODY), True, 1)
        << SENT
    )


# -- the servicer: the question runs on the event loop, the answer goes out later ------------------


class SlowStore:
    """A store whose answers come from the event loop after ``delay`` seconds (or fail)."""

    name = "slow"

    def __init__(self, delay: float, fail: bool = False) -> None:
        self.delay, self.fail, self.asked = delay, fail, 0

    def answer(self, query: object) -> Any:
        self.asked += 1
        return self._later()

    async def _later(self) -> object:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise StoreUnavailable("slow store gave up")
        return self.name


class Responder:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.finished: list[tuple[int, str]] = []
        self.open = True
        self.loop: asyncio.AbstractEventLoop | None = None  # no timers: these streams answer message by message

    def send(self, message: bytes) -> None:
        assert self.open
        self.sent.append(message)

    def finish(self, status: int = 0, message: str = "") -> None:
        self.finished.append((status, message))
        self.open = False


class Records:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.forwarded: list[dict[str, Any]] = []  # the write-ahead notes

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def started(self, record: dict[str, Any]) -> None:
        self.forwarded.append(record)


def _headers() -> bytes:
    head = [(":method", "POST"), (":path", "/v1/chat/completions"), ("x-request-id", "r1")]
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in head]))).SerializeToString()


def _body() -> bytes:
    body = pb.HttpBody(body=orjson.dumps(BODY), end_of_stream=True)
    return pb.ProcessingRequest(request_body=body).SerializeToString()


def _call(store: Any) -> tuple[ExtProcCall, Responder, Records]:
    records = Records()
    holder = type("Holder", (), {"current": POLICY})()
    service = Service(records, holder, "local-dev", store=store, steps=PROBING)  # type: ignore[arg-type]
    responder = Responder()
    return ExtProcCall(service, responder=responder), responder, records


def test_the_answer_goes_out_through_the_responder_when_the_store_answers() -> None:
    async def scenario() -> None:
        call, responder, _ = _call(SlowStore(0.02))
        assert len(call.message(_headers())) == 1
        assert call.message(_body()) == []  # waiting: nothing for Envoy yet
        assert responder.sent == []
        await asyncio.sleep(0.1)
        (reply,) = responder.sent
        answer = pb.ProcessingResponse.FromString(reply)
        assert answer.WhichOneof("response") == "request_body"
        first = answer.request_body.response.header_mutation.set_headers[0]
        assert first.header.key == "x-tollway-cluster"

    asyncio.run(scenario())


def test_a_failed_question_is_a_503_through_the_responder() -> None:
    async def scenario() -> None:
        call, responder, records = _call(SlowStore(0.01, fail=True))
        call.message(_headers())
        assert call.message(_body()) == []
        await asyncio.sleep(0.1)
        (reply,) = responder.sent
        assert pb.ProcessingResponse.FromString(reply).immediate_response.status.code == 503
        assert [r["error"] for r in records.records] == ["state_unavailable"]

    asyncio.run(scenario())


def test_a_stream_reset_while_the_question_is_out_records_once_and_sends_nothing() -> None:
    async def scenario() -> None:
        call, responder, records = _call(SlowStore(0.05))
        call.message(_headers())
        assert call.message(_body()) == []
        call.reset()  # Envoy reset the stream: the client left
        responder.open = False
        await asyncio.sleep(0.1)
        assert responder.sent == []
        assert [r["outcome"] for r in records.records] == ["incomplete"]

    asyncio.run(scenario())


def test_the_client_half_closing_while_waiting_finishes_after_the_answer() -> None:
    async def scenario() -> None:
        call, responder, records = _call(SlowStore(0.02))
        call.message(_headers())
        assert call.message(_body()) == []
        assert call.end() is None  # not now: the answer is still out
        await asyncio.sleep(0.1)
        assert len(responder.sent) == 1 and responder.finished == [(0, "")]
        assert [r["outcome"] for r in records.records] == ["incomplete"]

    asyncio.run(scenario())


def test_the_in_process_store_answers_within_the_same_call() -> None:
    call, _, _ = _call(MemoryStore())
    call.message(_headers())
    (reply,) = call.message(_body())  # no waiting: answered in the callback that received the body
    assert pb.ProcessingResponse.FromString(reply).WhichOneof("response") == "request_body"


CAPPED = compile_policy("""
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o-mini: {provider: openai, price: {input: "1", output: "1"}}
teams:
  platform: {workloads: [local-dev], models: ["*"]}
rate_limits:
  one-at-a-time: {team: platform, concurrent: 1}
""")


class AnsweringLater:
    """The in-process counters answered from the event loop, as Redis answers."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()

    async def grow(self, *args: Any) -> Any:
        await asyncio.sleep(0.005)
        return self.inner.grow(*args)

    async def report(self, *args: Any) -> Any:
        return self.inner.report(*args)

    async def once(self, *args: Any) -> bool:
        return True


@pytest.mark.parametrize("reset_first", [False, True], ids=["answer-then-reset", "reset-then-answer"])
def test_a_slot_granted_as_the_client_leaves_goes_back(reset_first: bool) -> None:
    """Envoy resets the stream in the pass of the loop where the admission completed, before its
    answer reached the session: the slot it holds goes back all the same (it stayed held for as long
    as the worker held its lease: a team with concurrent: 1 was locked out)."""
    async def scenario() -> None:
        keeper = Keeper(AnsweringLater())  # type: ignore[arg-type]
        service = Service(Records(), type("Holder", (), {"current": CAPPED})(), "local-dev",  # type: ignore[arg-type]
                          keeper=keeper)
        responder = Responder()
        call = ExtProcCall(service, responder=responder)  # type: ignore[arg-type]
        call.message(_headers())
        assert call.message(_body()) == []  # waiting for the store
        task = call._task
        assert task is not None
        while not task.done():
            await asyncio.sleep(0)
        if not reset_first:
            await asyncio.sleep(0)  # the answer reaches the session first
        call.reset()
        responder.open = False
        await asyncio.sleep(0.05)
        lease = keeper.leases["rate/one-at-a-time/concurrent/platform"]
        assert lease.reserved == 0  # the slot is free (the lease itself goes back after a second idle)
        assert [r["outcome"] for r in service.records.records] == ["incomplete"]  # type: ignore[attr-defined]

    asyncio.run(scenario())
