"""Counters behind budgets and rate limits: the store's invariant, leases, expiry, Redis = memory.

The Redis scripts and the in-memory backend must agree exactly (the same operations give the same
grants and totals); the keeper admits within its lease without a round trip, grows it when a
claim does not fit, reports spend in the background, and never lets concurrent holders take more
than the capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from ext_proc.core.limits import BUDGET_KEPT
from ext_proc.server.node_state import NodeBackend, NodeStateServer
from ext_proc.stack import free_port
from ext_proc.state.limits import ENDED, Grant, Keeper, MemoryBackend, RedisBackend
from ext_proc.state.queries import Admission, Claim, StoreUnavailable


def claim(amount: int = 10, capacity: int = 100, counter: str = "budget/b/usd/t/2026-12", consumes: bool = True,
          enforced: bool = True) -> Claim:
    return Claim(counter, amount, capacity, time.time() + 3600, consumes, enforced)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the in-memory backend: the reference ---------------------------------------------------------


def test_a_grant_is_never_more_than_half_of_what_is_left_nor_less_than_what_is_needed() -> None:
    backend = MemoryBackend(Clock())
    c = claim(capacity=100)
    assert backend.grow("a", [(c, 10, 40)], 30) == [Grant(40, 0, 40, 40)]  # 40 <= 100 / 2
    assert backend.grow("b", [(c, 10, 40)], 30) == [Grant(30, 0, 70, 30)]  # half of the 60 left
    assert backend.grow("c", [(c, 20, 40)], 30) == [Grant(20, 0, 90, 20)]  # the need, though more than half of 30
    odd = claim(amount=7, capacity=100, counter="odd")
    assert backend.grow("a", [(odd, 7, 40)], 30) == [Grant(35, 0, 35, 35)]  # whole claims: 7 + 4 x 7, not 40
    assert backend.grow("d", [(c, 11, 40)], 30) == [Grant(0, 0, 90, 0)]  # 11 does not fit in 10: nothing
    assert backend.report("a", [(c, 25, 15, 0)], 30) == [Grant(0, 25, 50, 0)]  # spent 25, gave 15 back
    assert backend.totals(c.counter) == (25, 50)


def test_a_dead_holders_grant_comes_back_after_its_ttl() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    c = claim(capacity=100)
    backend.grow("dead", [(c, 60, 60)], 30)
    assert backend.grow("alive", [(c, 50, 50)], 30) == [Grant(0, 0, 60, 0)]
    clock.now += 31
    assert backend.grow("alive", [(c, 50, 50)], 30) == [Grant(50, 0, 50, 50)]
    # The dead holder reporting late: its spend counts, it holds nothing any more.
    assert backend.report("dead", [(c, 5, 0, 0)], 30) == [Grant(-1, 5, 50, 0)]


def minute_claims(minute: int) -> tuple[Claim, ...]:
    """What a request under a rate limit claims in one calendar minute, as core/limits.py builds it."""
    resets = (minute + 1) * 60.0
    return (Claim(f"rate/r/requests/t/{minute}", 1, 600, resets), Claim(f"rate/r/tokens/t/{minute}", 100, 9000, resets),
            Claim("rate/r/concurrent/t", 1, 20, 0.0, consumes=False))


def test_a_finished_window_leaves_the_store_and_a_budget_period_stays_40_days() -> None:
    """One request a minute for a day: the store keeps the last few minutes' windows, not 2,880."""
    clock, wall = Clock(), Clock()
    backend = MemoryBackend(clock, wall)
    keeper = Keeper(backend, clock=clock)
    wall.now = 1_800_000_000.0
    budget = Claim("budget/b/usd/t/2027-01", 5, 10**9, wall.now + 60, kept=BUDGET_KEPT)
    for _ in range(1440):
        claims = (*minute_claims(int(wall.now // 60)), budget)
        assert keeper.admit(claims).admitted  # type: ignore[union-attr]
        keeper.settle(claims, (1, 100, 0, 5))
        clock.now += 60
        wall.now += 60
        keeper.flush()
    rate = [name for name in backend.counters if name.startswith("rate/")]
    assert "rate/r/concurrent/t" in rate  # no window: it stays
    assert len(rate) <= 1 + 2 * (ENDED // 60 + 2)  # the minutes of the last ENDED seconds
    assert budget.counter in backend.counters  # a day after its period: still readable
    wall.now = budget.resets + BUDGET_KEPT + 1
    backend.grow("w", [(minute_claims(int(wall.now // 60))[0], 1, 1)], 30)
    assert budget.counter not in backend.counters
    assert backend.counters.keys() == {f"rate/r/requests/t/{int(wall.now // 60)}", "rate/r/concurrent/t"}


def test_the_node_parents_store_drops_finished_windows_and_keeps_budget_periods(tmp_path: Path) -> None:
    """Workers without Redis share the supervisor's counters: the claim's ``kept`` crosses the socket."""
    server = NodeStateServer(str(tmp_path / "state.sock"))
    server.start()

    async def scenario() -> None:
        client = NodeBackend(server.path)
        ended = time.time() - ENDED - 60
        minute = Claim("rate/r/requests/t/1", 1, 600, ended)
        budget = Claim("budget/b/usd/t/2026-11", 5, 10**9, ended, kept=BUDGET_KEPT)
        await client.grow("w", [(minute, 1, 1), (budget, 5, 5)], 30)
        await client.grow("w", [(Claim("rate/r/requests/t/2", 1, 600, time.time() + 60), 1, 1)], 30)
        assert set(server.backend.counters) == {budget.counter, "rate/r/requests/t/2"}
        await client.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_report_the_node_parent_ran_after_the_workers_deadline_is_not_counted_again(tmp_path: Path) -> None:
    """The parent was busy past the worker's deadline, then read the report off the socket and ran
    it: the worker, which sends the report again, must not have its spend counted twice."""
    server = NodeStateServer(str(tmp_path / "state.sock"))
    server.start()

    async def scenario() -> None:
        backend = NodeBackend(server.path, deadline=0.3)
        keeper = Keeper(backend, holder="w1")
        keeper._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        c = claim(amount=100, capacity=1_000_000)
        assert (await keeper.admit((c,))).admitted  # type: ignore[misc]
        for _ in range(3):  # three requests claim 100, use 40 each (within the lease)
            keeper.settle((c,), (40,))
            admission = keeper.admit((c,))
            assert isinstance(admission, Admission) and admission.admitted
        keeper.settle((c,), (0,))
        server._loop.call_soon_threadsafe(time.sleep, 0.6)  # the parent is busy
        with pytest.raises(StoreUnavailable):
            await keeper.flush()  # type: ignore[misc]
        await asyncio.sleep(0.5)  # it reads the report and runs it
        keeper.down_until = 0.0
        await keeper.flush()  # type: ignore[misc]
        assert server.backend.totals(c.counter) == (120, keeper.leases[c.counter].held)
        assert keeper.leases[c.counter].used == 0
        await backend.close()
        await asyncio.sleep(0.1)  # the parent sees the connection end (else its handler is left pending)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


DOOMED_WORKER = """
import asyncio, sys, time
from ext_proc.server.node_state import NodeBackend
from ext_proc.state.limits import Keeper
from ext_proc.state.queries import Claim

async def main():
    keeper = Keeper(NodeBackend(sys.argv[1]), holder="doomed")
    keeper._flush = asyncio.get_running_loop().create_future()  # reports by hand, below
    budget = Claim("budget/b/usd/t/2026-12", 100, 10_000, time.time() + 3600)
    slots = Claim("rate/r/concurrent/t", 1, 3, 0.0, consumes=False)
    claims = (budget, slots)
    assert (await keeper.admit(claims)).admitted  # a lease of 400 of the budget, one slot
    keeper.settle(claims, (30, 0))
    await keeper.flush()  # reported: 30 spent
    for _ in range(3):
        admission = keeper.admit(claims)
        if not hasattr(admission, "admitted"):
            admission = await admission
        assert admission.admitted
    keeper.settle(claims, (40, 0))  # one of them ended, its 40 not reported yet; two in flight
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_killed_workers_requests_in_flight_are_charged_and_its_slots_freed_when_it_is_reaped(
        tmp_path: Path) -> None:
    """A worker killed outright reports nothing more: without the supervisor's word its claims would
    come back when they expire (30 s later), though a provider may have served its requests, and a
    concurrency cap stay taken until then. Reaped, it is charged what its requests in flight
    claimed and what it spent unreported; the rest of its lease and its slots come back at once."""
    import subprocess
    import sys

    server = NodeStateServer(str(tmp_path / "state.sock"))
    server.start()
    worker = subprocess.Popen([sys.executable, "-c", DOOMED_WORKER, server.path], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[2], text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
        budget, slots = "budget/b/usd/t/2026-12", "rate/r/concurrent/t"
        assert server.backend.totals(budget) == (30, 370)  # 30 reported; 370 leased, 240 of it pledged
        assert server.backend.totals(slots) == (0, 3)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        server.reaped(worker.pid)
        deadline = time.monotonic() + 5
        while server.backend.totals(slots)[1] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.backend.totals(budget) == (30 + 40 + 2 * 100, 0)
        assert server.backend.totals(slots) == (0, 0)
        assert not server.backend.pledges
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        server.stop()


@pytest.mark.parametrize("order", [("admit", "end", "report"), ("report", "admit", "end"), ("admit", "report", "end")])
def test_what_a_dead_worker_is_charged_does_not_depend_on_when_its_notes_were_read(order: tuple[str, ...]) -> None:
    """The parent reads a worker's notes lazily (and a full socket may hold some back), so a report
    can be applied before the notes of the spend it reports: the sums are the same in any order,
    and a request that ended and was reported is never charged again when its worker dies."""
    backend = MemoryBackend()
    c = Claim("budget/t/usd/x/2099-01", 1000, 10**9, time.time() + 86400)
    backend.grow("h", [(c, 1000, 0)], 30)
    backend.noting.add("h")  # (the node state server marks every worker's keeper so)
    for step in order:
        if step == "report":
            backend.report("h", [(c, 300, 0, 0)], 30, seq=1)
        elif step == "admit":
            backend.pledge("h", [(c, 1000, 0)])
        else:
            backend.pledge("h", [(c, -1000, 300)])
    assert backend.bury("h") == {}
    assert backend.totals(c.counter) == (300, 0)
    assert not backend.pledges


def test_the_notes_socket_is_named_as_long_as_the_state_socket(tmp_path: Path) -> None:
    """A state socket path at the length limit must leave room for the notes socket beside it."""
    from ext_proc.server.node_state import notes_path
    path = str(tmp_path / "state.sock")
    assert len(notes_path(path)) == len(path)


# -- the keeper -----------------------------------------------------------------------------------


def test_the_keeper_admits_within_its_lease_without_asking_the_store() -> None:
    backend = MemoryBackend(Clock())
    asked = []
    grow = backend.grow

    def counting(*args: object) -> object:
        asked.append(1)
        return grow(*args)  # type: ignore[arg-type]

    backend.grow = counting  # type: ignore[method-assign]
    keeper = Keeper(backend, holder="w1", clock=Clock(), lease_share=0.2)
    c = claim(amount=5, capacity=1000)
    for _ in range(8):  # a lease of max(20% of 1000, 4 claims) = 200 covers 8 claims of 5
        admission = keeper.admit((c,))
        assert isinstance(admission, Admission) and admission.admitted
    assert len(asked) == 1
    lease = keeper.leases[c.counter]
    assert (lease.held, lease.reserved) == (200, 40)
    keeper.settle((c,) * 8, (3,) * 8)
    keeper.flush()  # reported: 24 spent, the lease shrinks by what was spent
    assert backend.totals(c.counter) == (24, 176)
    assert (lease.held, lease.reserved, lease.used) == (176, 0, 0)


@pytest.mark.parametrize("reported", [False, True], ids=["spend-in-the-lease", "spend-reported"])
def test_a_lowered_limit_holds_at_once_though_the_lease_was_cut_from_the_old_one(reported: bool) -> None:
    """A policy reload lowers a limit (1000 -> 20) while this worker holds a lease cut from the old
    one: it refused nothing until the lease ran out or sat idle (20 of 20 admitted, at 5 each, 100)."""
    clock = Clock()
    backend = MemoryBackend(clock)
    keeper = Keeper(backend, holder="w1", clock=clock, lease_share=0.2)
    old, new = claim(amount=5, capacity=1000), claim(amount=5, capacity=20)
    for _ in range(5):
        assert keeper.admit((old,)).admitted  # type: ignore[union-attr]
    keeper.settle((old,) * 5, (5,) * 5)
    if reported:
        keeper.flush()
    refused = keeper.admit((new,))
    assert isinstance(refused, Admission) and not refused.admitted and refused.refused == 0
    raised = claim(amount=5, capacity=2000)  # a raised limit: the lease serves as before
    assert keeper.admit((raised,)).admitted  # type: ignore[union-attr]


def test_a_claim_past_the_capacity_is_refused_and_holds_nothing() -> None:
    keeper = Keeper(MemoryBackend(Clock()), holder="w1", clock=Clock())
    small, big = claim(amount=60, capacity=100, counter="a"), claim(amount=50, capacity=100, counter="b")
    assert keeper.admit((small,)).admitted  # type: ignore[union-attr]
    refused = keeper.admit((big, small))
    assert isinstance(refused, Admission) and not refused.admitted and refused.refused == 1
    assert keeper.leases["b"].reserved == 0  # the claim that fitted is not held either
    assert keeper.leases["a"].reserved == 60


def test_soft_claims_are_counted_never_refused() -> None:
    backend = MemoryBackend(Clock())
    keeper = Keeper(backend, holder="w1", clock=Clock())
    soft = claim(amount=500, capacity=100, enforced=False)
    assert keeper.admit((soft,)).admitted  # type: ignore[union-attr]
    keeper.settle((soft,), (700,))
    keeper.flush()
    assert backend.totals(soft.counter) == (700, 0)


def test_a_concurrency_slot_is_held_while_in_flight_then_given_back() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    one, two = Keeper(backend, holder="w1", clock=clock), Keeper(backend, holder="w2", clock=clock)
    slot = claim(amount=1, capacity=2, counter="rate/r/concurrent/t", consumes=False)
    assert one.admit((slot,)).admitted and two.admit((slot,)).admitted  # type: ignore[union-attr]
    assert not two.admit((slot,)).admitted  # type: ignore[union-attr]
    one.settle((slot,), (0,))
    one.flush()  # the slot goes back to the store
    assert two.admit((slot,)).admitted  # type: ignore[union-attr]
    assert backend.totals(slot.counter) == (0, 2)


def test_a_slot_given_back_in_a_report_without_an_answer_stays_given_back_until_it_is_answered() -> None:
    """The store ran the report (the slot is another worker's now), but its answer was lost: the
    worker must not admit on the slot meanwhile, and the report sent again frees nothing twice."""
    clock = Clock()
    memory = MemoryBackend(clock)

    class Late:
        lose = False  # run the report, then lose its answer (a timeout)

        def grow(self, *args: object) -> list[Grant]:
            return memory.grow(*args)  # type: ignore[arg-type]

        def report(self, *args: object) -> list[Grant]:
            grants = memory.report(*args)  # type: ignore[arg-type]
            if self.lose:
                raise StoreUnavailable("timed out")
            return grants

    late = Late()
    slot = claim(amount=1, capacity=3, counter="rate/r/concurrent/t", consumes=False)
    one, two = Keeper(late, holder="w1", clock=clock), Keeper(memory, holder="w2", clock=clock)
    assert one.admit((slot,)).admitted  # type: ignore[union-attr]
    late.lose = True
    one.settle((slot,), (0,))  # reported at once (no event loop): the slot goes back, no answer
    assert one.leases[slot.counter].releasing == 1 and memory.totals(slot.counter) == (0, 0)
    assert [two.admit((slot,)).admitted for _ in range(3)] == [True] * 3  # type: ignore[union-attr]
    assert not one.admit((slot,)).admitted  # type: ignore[union-attr]  # 3 in flight: the cap
    late.lose = False
    assert one.flush() is None  # the report again: taken already, nothing changes
    assert one.leases[slot.counter].releasing == 0 and one._outgoing is None
    assert memory.totals(slot.counter) == (0, 3)


def test_without_the_store_the_policy_decides() -> None:
    class Down:
        def grow(self, *args: object) -> list[Grant]:
            raise StoreUnavailable("down")

        def report(self, *args: object) -> list[Grant]:
            raise StoreUnavailable("down")

    c = claim(amount=30, capacity=100)
    closed = Keeper(Down(), clock=Clock())
    with pytest.raises(StoreUnavailable):
        closed.admit((c,))
    assert closed.degraded_since is not None
    opened = Keeper(Down(), clock=Clock())
    admitted = [opened.admit((c,), fail_open=True) for _ in range(4)]
    assert [a.admitted for a in admitted] == [True, True, True, False]  # type: ignore[union-attr]
    assert all(a.degraded for a in admitted)  # type: ignore[union-attr]


def test_a_request_that_leaves_while_its_lease_grows_does_not_cancel_the_exchange_others_wait_on() -> None:
    """The client of the request that asked left (its stream was reset): the exchange with the
    store goes on, the other requests waiting on it are admitted, and the lease takes the answer."""
    memory = MemoryBackend(Clock())
    exchanges: list[asyncio.Future[list[Grant]]] = []

    class Slow:
        def grow(self, *args: object) -> asyncio.Future[list[Grant]]:
            answer = asyncio.get_running_loop().create_future()
            exchanges.append(answer)
            answer.set_result(memory.grow(*args))  # type: ignore[arg-type]
            return asyncio.ensure_future(asyncio.sleep(0.01, answer.result()))  # type: ignore[return-value]

        def report(self, *args: object) -> list[Grant]:
            return memory.report(*args)  # type: ignore[arg-type]

    async def scenario() -> None:
        keeper = Keeper(Slow(), clock=Clock())  # type: ignore[arg-type]
        c = claim(amount=10, capacity=100)
        leaving = asyncio.ensure_future(keeper.admit((c,)))  # type: ignore[arg-type]
        staying = keeper.admit((c,))  # waits on the same exchange
        await asyncio.sleep(0)
        leaving.cancel()
        admission = await staying  # type: ignore[misc]
        assert admission.admitted and not admission.degraded
        assert len(exchanges) == 1 and keeper.degraded_since is None
        assert keeper.leases[c.counter].held == memory.totals(c.counter)[1] > 0  # the store's answer, applied
        assert keeper.admit((c,)).admitted  # type: ignore[union-attr]  # within the lease now: no round trip

    asyncio.run(scenario())


class Delayed:
    """The store behind a round trip (as Redis is): each answer comes ``delay()`` seconds later."""

    def __init__(self, memory: MemoryBackend, delay: Callable[[], float] = lambda: 0.01) -> None:
        self.memory, self.delay = memory, delay

    def grow(self, *args: object) -> asyncio.Future[list[Grant]]:
        return asyncio.ensure_future(asyncio.sleep(self.delay(), self.memory.grow(*args)))  # type: ignore[arg-type]

    def report(self, *args: object) -> asyncio.Future[list[Grant]]:
        return asyncio.ensure_future(asyncio.sleep(self.delay(), self.memory.report(*args)))  # type: ignore[arg-type]


BUDGET = claim(amount=59_000, capacity=100_000_000_000, counter="budget/big/usd/t/2026-12")  # $100,000
MINUTE = claim(amount=1, capacity=30, counter="rate/r/requests/t/29000000")  # 30 requests a minute
SLOT = claim(amount=1, capacity=2, counter="rate/r/concurrent/t", consumes=False)  # 2 in flight


@pytest.mark.parametrize(("before", "claims"), [
    ((), (BUDGET,)),  # a new lease (a new member of a "*" budget, a new period)
    ((BUDGET,), (BUDGET,)),  # a lease given back after a second idle, grown again
    ((), (MINUTE,)),  # a new minute's rate counter
    ((), (SLOT,)),  # a concurrency slot (a small cap: its free slots always go back)
    ((BUDGET,), (BUDGET, MINUTE)),  # the budget's lease has room, but sat idle; the minute grows
], ids=["new-lease", "lease-given-back", "new-minute", "concurrency-slot", "idle-lease-beside-a-growing-one"])
def test_a_flush_between_the_stores_answer_and_the_waiting_request_gives_nothing_of_it_away(
        before: tuple[Claim, ...], claims: tuple[Claim, ...]) -> None:
    """A request whose lease must grow waits for the store. Its answer is applied to the lease at
    once; the background flush (every 0.2 s) may run before the request resumes. It saw the lease
    idle (never admitted on, or not for a second) and handed it all back, and the request, finding
    nothing free, was refused as budget_exceeded / rate_limit_exceeded with plenty left, and a
    budget's 100 % alert fired (refused). A lease a request waits on is never idle."""
    clock = Clock()
    memory = MemoryBackend(clock)
    alerts: list[tuple[object, ...]] = []

    async def scenario() -> None:
        keeper = Keeper(Delayed(memory), holder="w1", clock=clock,
                        alerts=lambda *told: alerts.append(told))  # type: ignore[arg-type]
        keeper._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        for c in before:  # admitted and ended a while ago: the lease sits idle ...
            assert (await keeper.admit((c,))).admitted  # type: ignore[misc]
            keeper.settle((c,), (0,))
        clock.now += 5
        if before and MINUTE not in claims:  # ... and is given back (else it has room still)
            await keeper.flush()  # type: ignore[misc]
            assert keeper.leases[BUDGET.counter].held == 0
        flushes = []
        answer = keeper.admit(claims)
        assert inspect.isawaitable(answer)
        growing = next(iter(keeper._growing.values()))
        # The flush's tick lands after the answer is applied (_grown), before the request's turn.
        growing.add_done_callback(lambda _done: flushes.append(asyncio.ensure_future(keeper.flush())))  # type: ignore[arg-type]
        admission = await answer
        assert admission.admitted, (admission, keeper.snapshot())
        await asyncio.gather(*flushes)
        assert not [told for told in alerts if told[2:] == (True,)]  # no false "budget spent" alert
        for c in claims:
            lease = keeper.leases[c.counter]
            assert lease.waiting == 0 and lease.reserved == c.amount <= lease.held
        keeper.settle(claims, (0,) * len(claims))
        clock.now += 5
        result = keeper.flush()  # idle now: given back
        if inspect.isawaitable(result):
            await result
        assert all(memory.totals(c.counter) == (0, 0) for c in claims)

    asyncio.run(scenario())


def test_a_busy_worker_admits_every_request_of_new_counters_with_room_to_spare() -> None:
    """The same race left to the event loop: a busy worker (its flush running every 0.2 s, each
    loop turn taking a while) admits requests of counters it holds no lease of yet (a new member of
    a "*" budget, a new minute) while the store answers within a few ms. Each counter has room for
    a thousand such requests: none may be refused."""
    memory = MemoryBackend()
    rng = random.Random(7)

    async def scenario() -> tuple[int, int]:
        keeper = Keeper(Delayed(memory, lambda: rng.uniform(0, 0.004)), holder="w1")

        async def other_work() -> None:  # the worker's other requests: each loop turn takes ~1 ms
            while True:
                end = time.perf_counter() + 0.001
                while time.perf_counter() < end:
                    pass
                await asyncio.sleep(0)

        async def client(number: int, until: float) -> tuple[int, int]:
            admitted = refused = 0
            n = 0
            while time.monotonic() < until:
                n += 1
                c = claim(amount=1_000, capacity=1_000_000, counter=f"budget/star/usd/m{number}-{n}/2026-12")
                answer = keeper.admit((c,))
                result = await answer if inspect.isawaitable(answer) else answer
                if result.admitted:
                    admitted += 1
                    await asyncio.sleep(rng.uniform(0, 0.003))
                    keeper.settle((c,), (500,))
                else:
                    refused += 1
            return admitted, refused

        noise = asyncio.ensure_future(other_work())
        until = time.monotonic() + 1.5  # seven flushes
        counts = await asyncio.gather(*(client(number, until) for number in range(20)))
        noise.cancel()
        return sum(a for a, _ in counts), sum(r for _, r in counts)

    admitted, refused = asyncio.run(scenario())
    assert admitted > 100 and refused == 0, f"{refused} of {admitted + refused} refused"


def test_a_lease_not_refreshed_within_its_ttl_is_not_used() -> None:
    """The store drops a holder it has not heard from: its lease cannot be trusted after that."""
    clock = Clock()
    backend = MemoryBackend(clock)
    keeper = Keeper(backend, holder="w1", clock=clock, ttl=10, lease_share=0.5)
    c = claim(amount=5, capacity=100)
    assert keeper.admit((c,)).admitted  # type: ignore[union-attr]
    assert keeper.leases[c.counter].held == 50  # a lease for later requests

    def down(*args: object) -> list[Grant]:
        raise StoreUnavailable("down")

    grow, report = backend.grow, backend.report
    backend.grow = backend.report = down  # type: ignore[method-assign]
    clock.now += 7  # within the TTL (less a margin): the lease is used without asking
    assert keeper.admit((c,)).admitted  # type: ignore[union-attr]
    clock.now += 2  # past it: the store may have dropped the lease, so the store must be asked
    with pytest.raises(StoreUnavailable):
        keeper.admit((c,))
    backend.grow, backend.report = grow, report  # type: ignore[method-assign]
    clock.now += 2  # the store is back (and has dropped the holder meanwhile)
    assert keeper.admit((c,)).admitted  # type: ignore[union-attr]
    assert keeper.leases[c.counter].held == backend.counters[c.counter].held["w1"][0]


# -- Redis: the same semantics, atomically, across holders ------------------------------------------


@pytest.fixture()
def redis_url(redis_port: int) -> Iterator[str]:
    redis.Redis(port=redis_port).flushall()
    yield f"redis://127.0.0.1:{redis_port}/0"


def test_redis_and_memory_give_the_same_grants_and_totals(redis_url: str) -> None:
    async def scenario() -> None:
        rng = random.Random(7)
        memory, remote = MemoryBackend(), RedisBackend.from_url(redis_url)
        counters = [claim(capacity=capacity, counter=f"c{i}") for i, capacity in enumerate((100, 1000, 7))]
        numbers = {"a": 0, "b": 0, "c": 0}  # each holder's last report number (0: some go unnumbered)
        for _ in range(300):
            holder = rng.choice(["a", "b", "c"])
            c = rng.choice(counters)
            if rng.random() < 0.6:
                need = rng.randint(1, max(1, c.capacity // 3))
                ask = [(c, need, need + rng.randint(0, c.capacity // 2))]
                expected, actual = memory.grow(holder, ask, 60), await remote.grow(holder, ask, 60)
            else:
                busy = rng.randint(0, c.capacity // 3) if rng.random() < 0.3 else 0  # requests in flight hold it
                report = [(c, rng.randint(0, c.capacity // 5), rng.randint(0, c.capacity // 5), busy)]
                roll = rng.random()
                if roll < 0.6:
                    numbers[holder] += rng.randint(1, 3)  # a new report (numbers skip a counter's)
                seq = numbers[holder] if roll < 0.9 else 0  # else: the last one again, or unnumbered
                expected = memory.report(holder, report, 60, seq)
                actual = await remote.report(holder, report, 60, seq)
            assert actual == expected
        for c in counters:
            assert await remote.totals(c.counter) == memory.totals(c.counter)
        await remote.close()

    asyncio.run(scenario())


def test_a_report_of_nothing_refreshes_a_lease_in_redis(redis_url: str) -> None:
    """A heartbeat reports 0 spent, 0 given back: Lua's -0 must never reach HINCRBY."""
    async def scenario() -> None:
        backend = RedisBackend.from_url(redis_url)
        c = claim(amount=10, capacity=100)
        assert await backend.grow("a", [(c, 10, 10)], 30) == [Grant(10, 0, 10, 10)]
        assert await backend.report("a", [(c, 0, 0, 0)], 30) == [Grant(0, 0, 10, 10)]
        assert await backend.report("a", [(c, 0, 10, 0)], 30) == [Grant(0, 0, 0, 0)]
        await backend.close()

    asyncio.run(scenario())


def test_redis_expires_a_minute_window_minutes_after_it_ends_and_a_budget_period_40_days_after(
        redis_url: str) -> None:
    async def scenario() -> None:
        backend = RedisBackend.from_url(redis_url)
        requests, tokens, concurrent = minute_claims(int(time.time() // 60))
        budget = Claim("budget/b/usd/t/2027-01", 5, 10**9, time.time() + 86400, kept=BUDGET_KEPT)
        asks = [(c, c.amount, c.amount) for c in (requests, tokens, concurrent, budget)]
        await backend.grow("a", asks, 30)
        await backend.report("a", [(c, c.amount, 0, 0) for c, _, _ in asks], 30)
        client = redis.asyncio.Redis(port=int(redis_url.rsplit(":", 1)[1].split("/")[0]))
        for c in (requests, tokens):
            for key in (f"tollway:limits:{{{c.counter}}}:spent", f"tollway:limits:{{{c.counter}}}:held"):
                assert 0 < await client.pttl(key) <= (c.resets + ENDED - time.time()) * 1000 + 1000
        assert await client.pttl(f"tollway:limits:{{{concurrent.counter}}}:held") == -1  # no window: it stays
        left = await client.pttl(f"tollway:limits:{{{budget.counter}}}:spent") / 1000
        assert abs(left - (budget.resets + BUDGET_KEPT - time.time())) < 5
        await client.aclose()
        await backend.close()

    asyncio.run(scenario())


def test_a_sidecar_whose_clock_is_minutes_behind_redis_is_still_limited(redis_url: str) -> None:
    # Its minute window ended, by Redis's clock, ten minutes ago: the keys must outlive the write.
    async def scenario() -> None:
        backend = RedisBackend.from_url(redis_url)
        behind = Claim("rate/r/requests/t/1", 1, 3, time.time() - 600)
        granted = 0
        for _ in range(10):
            [grant] = await backend.grow("a", [(behind, 1, 1)], 30)
            granted += grant.granted
            await backend.report("a", [(behind, 1, 0, 0)], 30)
        assert granted == 3
        await backend.close()

    asyncio.run(scenario())


def test_concurrent_holders_never_take_more_than_the_capacity(redis_url: str) -> None:
    async def scenario() -> None:
        backends = [RedisBackend.from_url(redis_url) for _ in range(4)]
        clock = Clock()
        keepers = [Keeper(backend, holder=f"w{i}", clock=clock) for i, backend in enumerate(backends)]
        c = claim(amount=40_000, capacity=1_000_000)  # $1.00 budget, $0.04 claims

        async def one(keeper: Keeper) -> bool:
            answer = keeper.admit((c,))
            result = await answer if inspect.isawaitable(answer) else answer
            assert isinstance(result, Admission)
            return result.admitted

        results = await asyncio.gather(*(one(keepers[i % 4]) for i in range(200)))
        assert sum(results) == 25  # exactly what fits: 25 x $0.04 (leases are granted in whole claims)
        clock.now += 10  # idle: the flush gives every unused lease back
        for keeper in keepers:
            held = keeper.leases[c.counter].reserved // c.amount
            keeper.settle((c,) * held, (c.amount,) * held)
            result = keeper.flush()
            if result is not None:
                await result
        spent, held = await backends[0].totals(c.counter)
        assert spent == 25 * 40_000 and held == 0
        for backend in backends:
            await backend.close()

    asyncio.run(scenario())


def test_a_sidecar_killed_holding_a_lease_gives_it_back_after_the_ttl(redis_url: str) -> None:
    async def scenario() -> None:
        dead = Keeper(RedisBackend.from_url(redis_url), holder="dead", ttl=0.5)
        alive = Keeper(RedisBackend.from_url(redis_url), holder="alive", ttl=0.5)
        c = claim(amount=60, capacity=100)
        assert (await dead.admit((c,))).admitted  # type: ignore[misc]
        assert dead._flush is not None
        dead._flush.cancel()  # the sidecar dies: nothing reports or refreshes its grant any more
        refused = await alive.admit((c,))  # type: ignore[misc]
        assert not refused.admitted
        await asyncio.sleep(0.6)  # the dead holder never refreshes its grant
        assert (await alive.admit((c,))).admitted  # type: ignore[misc]

    asyncio.run(scenario())


def test_redis_down_is_unavailable_within_the_deadline() -> None:
    async def scenario() -> None:
        with __import__("socket").socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", deadline=0.3)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await backend.grow("a", [(claim(), 10, 10)], 30)
        assert time.monotonic() - started < 1.0

    asyncio.run(scenario())


def test_a_degraded_worker_with_nothing_to_report_learns_the_store_is_back_on_its_own() -> None:
    """A request found the store down (closed: refused) and no other came to this worker: it used
    to stay degraded (in /readyz, in the metrics) until its next request, however long ago the
    store came back. Now it asks the store again every second while degraded."""
    memory = MemoryBackend()

    class Flaky:
        down = True

        def grow(self, *args: object) -> asyncio.Future[list[Grant]]:
            return asyncio.ensure_future(self._answer(memory.grow, args))

        def report(self, *args: object) -> asyncio.Future[list[Grant]]:
            return asyncio.ensure_future(self._answer(memory.report, args))

        async def _answer(self, method: Callable[..., list[Grant]], args: tuple[object, ...]) -> list[Grant]:
            await asyncio.sleep(0.001)
            if self.down:
                raise StoreUnavailable("down")
            return method(*args)

    async def scenario() -> None:
        store = Flaky()
        keeper = Keeper(store, holder="w1")  # type: ignore[arg-type]
        with pytest.raises(StoreUnavailable):
            await keeper.admit((claim(),))  # type: ignore[misc]
        assert keeper.degraded_since is not None
        await asyncio.sleep(1.5)  # still down: still degraded
        assert keeper.degraded_since is not None
        store.down = False
        deadline = time.monotonic() + 3
        while keeper.degraded_since is not None:
            assert time.monotonic() < deadline, "still degraded with the store back"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert keeper._flush is None  # nothing held, nothing to ask: the flush stopped

    asyncio.run(scenario())


def test_an_empty_report_asks_redis_whether_it_answers(redis_url: str) -> None:
    async def scenario() -> None:
        assert await RedisBackend.from_url(redis_url).report("w1", [], 30) == []  # type: ignore[misc]
        down = RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0", deadline=0.5)
        with pytest.raises(StoreUnavailable):
            await down.report("w1", [], 30)  # type: ignore[misc]

    asyncio.run(scenario())


def test_a_budget_that_refuses_what_an_empty_one_would_take_raises_its_last_alert() -> None:
    """A hard budget's settled spend never reaches its limit (its requests are refused first): the
    keeper tells the alerts of a refusal, not of one the request alone causes (larger than the budget)."""
    told: list[tuple[int, bool]] = []
    keeper = Keeper(MemoryBackend(), holder="w1", clock=Clock(), lease_share=0.2)
    keeper.alerts = lambda claim, spent, refused=False: refused and told.append((claim.counter, spent))
    c = claim(amount=30, capacity=100)
    admitted = [keeper.admit((c,)) for _ in range(4)]
    assert [isinstance(a, Admission) and a.admitted for a in admitted] == [True, True, True, False]
    assert told == [(c.counter, 0)]  # the fourth: 90 held, 30 more does not fit (spend not yet reported)
    alone = keeper.admit((claim(amount=500, capacity=100, counter="budget/other/usd/t/2026-12"),))
    assert isinstance(alone, Admission) and not alone.admitted
    assert told == [(c.counter, 0)]  # larger than the budget itself: the request's doing, no alert


def test_a_slot_given_back_is_not_admitted_on_while_the_report_is_on_its_way(redis_url: str) -> None:
    # A flush gives a finished request's slot back; a request arriving before the store's answer
    # must not take it locally: the store hands it to another worker as soon as the report runs.
    async def scenario() -> None:
        slot = claim(amount=1, capacity=3, counter="rate/r/concurrent/t", consumes=False)
        one, two = (Keeper(RedisBackend.from_url(redis_url), holder=name) for name in ("w1", "w2"))
        for keeper in (one, two):
            keeper._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        assert (await one.admit((slot,))).admitted  # type: ignore[misc]
        one.settle((slot,), (0,))
        reporting = asyncio.ensure_future(one.flush())  # type: ignore[arg-type]
        answer = one.admit((slot,))  # arrives before the store answered the report
        admitted = [(await answer) if inspect.isawaitable(answer) else answer]
        await reporting
        for _ in range(3):
            answer = two.admit((slot,))
            admitted.append((await answer) if inspect.isawaitable(answer) else answer)
        assert sum(a.admitted for a in admitted) == 3  # type: ignore[union-attr]
        lease = one.leases[slot.counter]
        assert lease.held >= lease.reserved  # what is in flight here is held in the store
        _spent, held = await RedisBackend.from_url(redis_url).totals(slot.counter)
        assert held == 3

    asyncio.run(scenario())


def test_a_report_redis_ran_after_its_deadline_is_not_counted_again(redis_url: str) -> None:
    """Redis paused past the client's deadline: the report times out on the worker, yet Redis
    runs it when it resumes. The worker sends that report again (it cannot know): counted once."""
    async def scenario() -> None:
        backend = RedisBackend.from_url(redis_url, deadline=0.3)
        keeper = Keeper(backend, holder="w1")
        keeper._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        c = claim(amount=100, capacity=1_000_000)
        assert (await keeper.admit((c,))).admitted  # type: ignore[misc]
        keeper.settle((c,), (0,))
        await keeper.flush()  # type: ignore[misc]  # Redis knows the report script
        for _ in range(3):  # three requests claim 100, use 40 each (within the lease: no round trip)
            admission = keeper.admit((c,))
            assert isinstance(admission, Admission) and admission.admitted
            keeper.settle((c,), (40,))
        with redis.Redis.from_url(redis_url) as client:
            pid = int(client.info()["process_id"])
        os.kill(pid, signal.SIGSTOP)  # hung (CLIENT PAUSE would not do: it drops a closed client's command)
        try:
            with pytest.raises(StoreUnavailable):
                await keeper.flush()  # type: ignore[misc]
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.3)  # Redis resumes and runs the report
        keeper.down_until = 0.0  # (the keeper would ask again a second later)
        await keeper.flush()  # type: ignore[misc]
        assert await backend.totals(c.counter) == (120, keeper.leases[c.counter].held)
        assert keeper.leases[c.counter].used == 0
        await backend.close()

    asyncio.run(scenario())


def test_a_holders_report_number_never_outlives_its_counter(redis_url: str) -> None:
    """A minute's rate counter ends minutes after its window: the key remembering a holder's last
    report number there ends with it, not 10 minutes later (a key per holder and counter)."""
    async def scenario() -> None:
        backend = RedisBackend.from_url(redis_url)
        keeper = Keeper(backend, holder="w-ttl")
        keeper._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        minute = Claim("rate/r/tokens/t/202612061200", 10, 1000, time.time() + 30, True, True)
        month = claim(amount=10, capacity=1000, counter="budget/b/usd/t/2026-12-ttl")
        for c in (minute, month):
            assert (await keeper.admit((c,))).admitted  # type: ignore[misc]
            keeper.settle((c,), (5,))
        await keeper.flush()  # type: ignore[misc]
        with redis.Redis.from_url(redis_url) as client:
            def ttl(counter: str, key: str) -> int:
                return int(client.pttl(f"{backend.prefix}:{{{counter}}}:{key}"))
            # (read one after the other: the second read's TTL may have run a millisecond or so further)
            assert 0 < ttl(minute.counter, "reported:w-ttl") <= ttl(minute.counter, "spent") + 100
            assert 0 < ttl(month.counter, "reported:w-ttl") <= 600_000 < ttl(month.counter, "spent")
        await backend.close()

    asyncio.run(scenario())


# -- a refused request gives back what the store granted it -------------------------------------------


TEAM = claim(amount=10, capacity=10_000, counter="budget/every-team/usd/demo/2026-12")
TINY = claim(amount=10, capacity=5, counter="budget/demo-tiny/usd/demo/2026-12-07")  # less than one claim
FULL_MINUTE = claim(amount=1, capacity=1, counter="rate/r/requests/demo/29000000")  # another holder has it
FULL_SLOT = claim(amount=1, capacity=1, counter="rate/r/concurrent/demo", consumes=False)  # likewise
FREE_SLOT = claim(amount=1, capacity=2, counter="rate/r/concurrent/other", consumes=False)


async def answered(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def store_of(kind: str, clock: Clock, redis_url: str | None) -> Any:
    if kind == "redis":
        assert redis_url is not None
        return RedisBackend.from_url(redis_url)
    memory = MemoryBackend(clock)
    return memory if kind == "memory" else Delayed(memory)


async def quiet(*keepers: Keeper) -> None:
    """Wait for the keepers' flushes to end on their own (nothing held any more): none is left to
    cancel when the loop closes, mid-exchange with Redis (whose client may take a cancellation for
    its own timeout, a StoreUnavailable the flush retries)."""
    for _ in range(30):
        if all(keeper._flush is None for keeper in keepers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still flushing: {[keeper.snapshot() for keeper in keepers]}")


async def held_in(store: Any, counter: str) -> int:
    memory = store.memory if isinstance(store, Delayed) else store
    return (await answered(memory.totals(counter)))[1]


@pytest.mark.parametrize("kind", ["memory", "delayed", "redis"])
@pytest.mark.parametrize("claims", [
    (TEAM, TINY), (TINY, TEAM), (TEAM, FULL_MINUTE), (FULL_MINUTE, TEAM), (TEAM, FULL_SLOT), (FREE_SLOT, TINY),
], ids=["second-budget-refuses", "first-budget-refuses", "rate-limit-refuses", "rate-limit-refuses-first",
        "concurrency-refuses", "budget-refuses-beside-a-slot"])
def test_a_refused_request_gives_back_the_leases_granted_for_its_other_counters_once_idle(
        kind: str, claims: tuple[Claim, ...], request: pytest.FixtureRequest) -> None:
    """The store grows every short lease of a request in one exchange; a counter refusing does not
    undo the others' grants. With no flush running (the first request of a worker, or the first in
    a while), none was scheduled on a refusal, and the grants stayed held until they expired in the
    store (30 s), not given back after 1 s idle: a nearly spent budget refused other workers meanwhile."""
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    clock = Clock()

    async def scenario() -> None:
        store = store_of(kind, clock, redis_url)
        other = Keeper(store, holder="other", clock=clock)
        filled = {}
        for c in (FULL_MINUTE, FULL_SLOT):
            if c in claims:  # another worker's request in flight holds all of it
                assert (await answered(other.admit((c,)))).admitted
                filled[c.counter] = c.capacity
        keeper = Keeper(store, holder="w1", clock=clock)
        refused = await answered(keeper.admit(claims))
        assert not refused.admitted and claims[refused.refused] not in (TEAM, FREE_SLOT)
        for c in claims:  # nothing of the refused request is counted as in flight
            assert keeper.leases[c.counter].reserved == 0
        granted = [c for c in claims if await held_in(store, c.counter) > filled.get(c.counter, 0)]
        assert granted, "the store granted the counter that had room"
        clock.now += 1.5  # idle past IDLE
        await asyncio.sleep(0.6)  # a few flushes
        for c in claims:
            assert await held_in(store, c.counter) == filled.get(c.counter, 0), (c.counter, keeper.snapshot())
            assert keeper.leases[c.counter].held == 0
        for c in (FULL_MINUTE, FULL_SLOT):
            if c in claims:
                other.settle((c,), (0,))
        await quiet(keeper, other)
        if kind == "redis":
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_refused_request_does_not_keep_another_worker_from_a_nearly_spent_shared_budget(
        kind: str, request: pytest.FixtureRequest) -> None:
    """Worker 1's request passes the team's shared budget but not its tiny one: the share of the
    shared budget the store granted it is nobody's. Worker 2's request on the shared budget is
    refused while worker 1 holds it, for at most a second or so, not until the grant expires."""
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    clock = Clock()
    shared = claim(amount=10, capacity=100, counter="budget/every-team/usd/demo/2026-12-shared")

    async def scenario() -> None:
        store = store_of(kind, clock, redis_url)
        spender = Keeper(store, holder="spender", clock=clock)
        spender._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        for _ in range(8):  # 85 of 100 spent: 15 left, room for one claim of 10
            assert (await answered(spender.admit((shared,)))).admitted
        spender.settle((shared,) * 8, (10,) * 7 + (15,))
        clock.now += 5
        await answered(spender.flush())
        assert await answered(store.totals(shared.counter)) == (85, 0)
        one, two = Keeper(store, holder="w1", clock=clock), Keeper(store, holder="w2", clock=clock)
        assert not (await answered(one.admit((shared, TINY)))).admitted  # refused by the tiny budget
        assert not (await answered(two.admit((shared,)))).admitted  # worker 1 holds 10 of the 15 left
        clock.now += 1.5
        await asyncio.sleep(0.6)
        assert (await answered(two.admit((shared,)))).admitted
        two.settle((shared,), (0,))
        clock.now += 1.5
        await quiet(one, two)
        if kind == "redis":
            await store.close()

    asyncio.run(scenario())


def test_a_lease_grown_for_a_request_whose_client_left_is_given_back_once_idle() -> None:
    """The client left (its stream reset) while its lease grew: the exchange goes on and the lease
    takes the store's answer, which no request holds and no flush was scheduled to give back."""
    clock = Clock()
    memory = MemoryBackend(clock)

    async def scenario() -> None:
        keeper = Keeper(Delayed(memory), holder="w1", clock=clock)
        c = claim(amount=10, capacity=1000)
        leaving = asyncio.ensure_future(keeper.admit((c,)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0.05)  # the store answered
        assert keeper.leases[c.counter].held == memory.totals(c.counter)[1] > 0
        clock.now += 1.5
        await asyncio.sleep(0.6)
        assert memory.totals(c.counter) == (0, 0) and keeper.leases[c.counter].held == 0
        await quiet(keeper)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "node", "redis"])
@pytest.mark.parametrize("what", ["concurrency", "budget"])
def test_a_live_holders_grant_the_store_dropped_is_restored_at_its_next_report(
        kind: str, what: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The store did not answer for longer than the hold TTL (a Redis that hung, a failover): its
    clock passed every holder's expiry and it dropped their grants, though their requests were
    still in flight. A live holder's next report says what its requests hold, and the store holds it
    again (past the capacity if another holder came in meanwhile): nobody else is admitted into it
    until those requests end, and then everything goes back to zero. A dead holder (it never
    reports again) still expires."""
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    clock = Clock()
    ttl = 0.3
    if what == "concurrency":
        c = claim(amount=1, capacity=3, counter="rate/r/concurrent/t5", consumes=False)
    else:  # a budget of 100, claims of 25 (a request that set max_tokens): four fill it
        c = claim(amount=25, capacity=100, counter="budget/t1/usd/t/2026-12")
    n = c.capacity // c.amount
    server = None
    if kind == "node":
        server = NodeStateServer(str(tmp_path / "state.sock"))
        server.start()

    async def expire() -> None:
        clock.now += 1
        if kind != "memory":  # the store's own clock (Redis TIME, the parent's)
            await asyncio.sleep(ttl + 0.2)

    async def scenario() -> None:
        if kind == "node":
            assert server is not None
            store: Any = NodeBackend(server.path)
            memory = server.backend
        else:
            store = store_of(kind, clock, redis_url)
            memory = store

        async def held() -> int:
            return (await answered(memory.totals(c.counter)))[1]

        a = Keeper(store, holder="a", clock=clock, ttl=ttl)
        a._flush = asyncio.get_running_loop().create_future()  # flushes by hand, below
        b = Keeper(store, holder="b", clock=clock, ttl=ttl)
        for _ in range(n):
            assert (await answered(a.admit((c,)))).admitted
        assert await held() == c.capacity
        assert not (await answered(b.admit((c,)))).admitted
        await quiet(b)

        await expire()  # the store's answers stop for longer than the TTL: it drops a's grant
        assert await held() == 0
        await answered(a.flush())  # a is alive: its next report restores what its requests hold
        assert await held() == c.capacity
        assert a.leases[c.counter].held == c.capacity
        assert not (await answered(b.admit((c,)))).admitted  # capacity still in use
        await quiet(b)

        # Once more, and another holder comes in before a's report (it cannot know): a's requests
        # are held again past the capacity, and neither is admitted more until they end.
        await expire()
        assert (await answered(b.admit((c,)))).admitted
        theirs = b.leases[c.counter]
        await answered(a.flush())
        assert a.leases[c.counter].held == c.capacity
        assert await held() == c.capacity + theirs.held
        a.settle((c,), (c.amount,))
        await answered(a.flush())
        assert a.leases[c.counter].held == c.capacity - c.amount
        assert await held() == c.capacity - c.amount + theirs.held >= c.capacity
        assert not (await answered(a.admit((c,)))).admitted
        await asyncio.sleep(0.25)  # b's next report tells it the totals (b may admit on its lease until then)
        assert not (await answered(b.admit((c,)))).admitted
        b.settle((c,), (c.amount,))
        a.settle((c,) * (n - 1), (c.amount,) * (n - 1))
        clock.now += 1.5  # idle
        await answered(a.flush())
        await quiet(b)
        assert await held() == 0
        assert a.leases[c.counter].held == a.leases[c.counter].reserved == 0
        spent = (await answered(memory.totals(c.counter)))[0]
        assert spent == (0 if what == "concurrency" else c.capacity + c.amount)  # b's was admitted

        # A holder that died (it never reports again) still expires.
        assert (await answered(a.admit((c,)))).admitted or what == "budget"
        if what == "concurrency":
            await expire()
            assert await held() == 0
        a._flush.cancel()
        a._flush = None
        if kind != "memory":
            await store.close()
            await asyncio.sleep(0.1)  # the parent sees the connection end (else its handler is left pending)

    try:
        asyncio.run(scenario())
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_report_sent_again_holds_again_what_the_store_dropped_since_and_never_adds_to_it(
        kind: str, request: pytest.FixtureRequest) -> None:
    """A report whose answer was lost is sent again unchanged; if the holder's grant expired in
    between (the store hung again), the repeat holds its requests in flight again, and a grant at
    or above what they hold is left as it is (a floor, never added twice). A holder that stops
    reporting still expires."""
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    clock = Clock()
    ttl = 0.3

    async def scenario() -> None:
        store: Any = store_of(kind, clock, redis_url)

        async def expire() -> None:
            clock.now += 1
            if kind == "redis":
                await asyncio.sleep(ttl + 0.2)

        c = claim(amount=10, capacity=100)
        assert await answered(store.grow("a", [(c, 40, 40)], ttl)) == [Grant(40, 0, 40, 40)]
        assert await answered(store.grow("dead", [(c, 10, 10)], ttl)) == [Grant(10, 0, 50, 10)]
        assert await answered(store.report("a", [(c, 10, 0, 30)], ttl, 1)) == [Grant(0, 10, 40, 30)]
        assert await answered(store.report("a", [(c, 10, 0, 30)], ttl, 1)) == [Grant(0, 10, 40, 30)]  # once
        await expire()
        assert await answered(store.totals(c.counter)) == (10, 0)  # both dropped
        assert await answered(store.report("a", [(c, 10, 0, 30)], ttl, 1)) == [Grant(-1, 10, 30, 30)]
        assert await answered(store.report("a", [(c, 30, 0, 0)], ttl, 2)) == [Grant(0, 40, 0, 0)]
        assert await answered(store.totals(c.counter)) == (40, 0)  # the dead holder's 10 stays gone
        if kind == "redis":
            await store.close()

    asyncio.run(scenario())


@contextlib.contextmanager
def manifest_redis(tmp_path: Path, password: str, admin_password: str) -> Iterator[int]:
    """redis-server started with k8s/base/redis.yaml's own arguments (its passwords substituted as the
    kubelet substitutes ``$(VAR)``); its port."""
    import shutil
    import subprocess

    import yaml

    from ext_proc.stack import ROOT, free_port

    (statefulset,) = [d for d in yaml.safe_load_all((ROOT / "k8s/base/redis.yaml").read_text())
                      if d and d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert {"REDIS_PASSWORD", "REDIS_ADMIN_PASSWORD"} <= {e["name"] for e in container["env"]}
    data = tmp_path / f"redis-{password}-{admin_password}"
    data.mkdir()
    args = [a.replace("$(REDIS_PASSWORD)", password).replace("$(REDIS_ADMIN_PASSWORD)", admin_password)
            .replace("/data", str(data)) for a in container["args"]]
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    proc = subprocess.Popen([binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    try:
        admin = redis.Redis(port=port, password=admin_password)
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_tollway_works_as_the_manifests_redis_user_which_cannot_wipe_redis(tmp_path: Path) -> None:
    """k8s/base/redis.yaml gives Tollway an ACL user: its keys (tollway:*) and no administrative or
    dangerous command. Redis started with the manifest's own arguments: every counter and ledger
    operation Tollway makes passes as that user (pipelined scripts, loaded again after Redis lost
    them, the ledger's batches and reports, ``tollway report --redis``, ``tollway budgets``);
    FLUSHALL, KEYS, CONFIG, other keys do not."""
    import subprocess
    import sys
    from datetime import date, timedelta

    from ext_proc.stack import ROOT
    from ext_proc.state.ledger import RedisLedger
    from ext_proc.state.queries import Ping
    from ext_proc.state.store import RedisStore

    with manifest_redis(tmp_path, "tollway-pw", "admin-pw") as port:
        admin = redis.Redis(port=port, password="admin-pw")
        url = f"redis://tollway:tollway-pw@127.0.0.1:{port}/0"

        async def counters() -> None:
            backend = RedisBackend.from_url(url)
            c = claim(amount=10, capacity=100)
            assert await backend.grow("a", [(c, 10, 10)], 30) == [Grant(10, 0, 10, 10)]
            assert await backend.report("a", [(c, 10, 0, 0)], 30, 1) == [Grant(0, 10, 0, 0)]
            assert await backend.totals(c.counter) == (10, 0)
            assert c.counter in await backend.scan("budget/")
            assert await backend.once("alert/x", time.time() + 60) is True
            several = [claim(counter=f"budget/b{i}/usd/t/2026-12") for i in range(3)]  # one pipeline
            assert await backend.grow("a", [(x, 10, 10) for x in several], 30) == [Grant(10, 0, 10, 10)] * 3
            assert await backend.report("a", [(x, 10, 0, 0) for x in several], 30, 2) == [Grant(0, 10, 0, 0)] * 3
            store = RedisStore(url)
            assert await store.answer(Ping()) == "redis"
            await store.client.aclose()
            await backend.close()

        async def after_flush() -> None:  # a restarted Redis has no scripts: loaded again, as the user
            backend = RedisBackend.from_url(url)
            rates = [claim(amount=1, counter=f"rate/r{i}/requests/t/m") for i in range(2)]
            assert await backend.grow("b", [(x, 1, 1) for x in rates], 30) == [Grant(1, 0, 1, 1)] * 2
            await backend.close()

        asyncio.run(counters())
        admin.script_flush()
        asyncio.run(after_flush())
        ledger = RedisLedger(redis.Redis.from_url(url))
        record = {"ts": time.time(), "team": "search", "model": "gpt-4o", "key_id": "k1", "provider": "openai",
                  "api": "openai.chat.completions", "outcome": "ok", "status": 200, "input_tokens": 1000,
                  "output_tokens": 200, "cost_usd_micros": 4500, "latency_ms": 300.0, "guardrails": []}
        ledger.add([record], batch="b1")
        ledger.add([record], batch="b1")  # the same batch again: counted once
        assert [(r.group, r.requests) for r in ledger.rows("team")] == [("search", 1)]
        ledger.add([record])  # no batch
        assert [(r.group, r.requests) for r in ledger.rows("model", since=date(2000, 1, 1))] == [("gpt-4o", 2)]
        assert len(ledger.cells(date.today() - timedelta(days=1), date.today() + timedelta(days=1))) == 1
        env = {**os.environ, "TOLLWAY_REDIS_URL": url}
        for command in (["report", "--by", "team", "--format", "json"],
                        ["budgets", "--policy", str(ROOT / "k8s/policy/policy.yaml"), "--format", "json"]):
            proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", *command], env=env, capture_output=True,
                                  text=True, cwd=ROOT, timeout=60)
            assert proc.returncode == 0 and "search" in proc.stdout, proc.stderr
        assert admin.execute_command("ACL", "LOG") == []  # nothing Tollway did above was refused
        tollway = redis.Redis.from_url(url)
        for command in (("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("CONFIG", "GET", "requirepass"),
                        ("ACL", "LIST"), ("SAVE",), ("SHUTDOWN",), ("SET", "other:key", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                tollway.execute_command(*command)
        assert admin.dbsize() > 0


def test_upgrading_to_the_acl_user_keeps_running_sidecars_in_while_admin_password_is_the_old_one(
        tmp_path: Path) -> None:
    """Sidecars started before the ACL user log in as Redis's default user (``redis://:PASSWORD@``),
    whose password is ``admin-password`` once Redis restarts with the new manifest: the upgrade order
    k8s/README.md gives sets admin-password to the old password first, so they stay in until they
    restart with a ``tollway:`` URL; only then is admin-password changed."""
    with manifest_redis(tmp_path, "old-pw", "old-pw") as port:  # steps 1-3: both URLs work
        assert redis.Redis.from_url(f"redis://:old-pw@127.0.0.1:{port}/0").ping()
        assert redis.Redis.from_url(f"redis://tollway:old-pw@127.0.0.1:{port}/0").ping()
    with manifest_redis(tmp_path, "old-pw", "new-admin-pw") as port:  # step 4, or admin-password new at once
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(f"redis://:old-pw@127.0.0.1:{port}/0").ping()
        assert redis.Redis.from_url(f"redis://tollway:old-pw@127.0.0.1:{port}/0").ping()


def test_serve_warns_of_a_redis_that_keeps_nothing_on_disk_when_it_can_tell(redis_url: str, tmp_path: Path) -> None:
    """A Redis restarted without AOF or RDB resets every budget and rate-limit window and frees
    the slots of requests in flight: `tollway serve` says so at start. It says nothing when it
    cannot tell (CONFIG refused to the manifest's ACL user, Redis not answering) or Redis persists."""
    from ext_proc.server.app import redis_persistence_warning

    warning = redis_persistence_warning(redis_url)  # the tests' redis-server: --save "" --appendonly no
    assert warning is not None and "resets every budget and rate-limit window" in warning
    plain = redis.Redis.from_url(redis_url)
    plain.config_set("save", "3600 1")  # RDB snapshots: it persists (up to their interval)
    try:
        assert redis_persistence_warning(redis_url) is None
    finally:
        plain.config_set("save", "")
    assert redis_persistence_warning(f"redis://127.0.0.1:{free_port()}/0") is None
    with manifest_redis(tmp_path, "tollway-pw", "admin-pw") as port:
        redis.Redis(port=port, password="admin-pw").config_set("save", "")  # nothing on disk, but ...
        assert redis_persistence_warning(f"redis://tollway:tollway-pw@127.0.0.1:{port}/0") is None  # ... NOPERM
