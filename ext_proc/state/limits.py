"""Budgets and rate limits across every sidecar: counters in a shared store, leased out in slices.

Theory of operation. Every limit is a *counter* with a capacity: a budget's spend this month, a
team's requests this minute, a model's requests in flight. A request *claims* an amount of each
counter that applies to it (:class:`~ext_proc.state.queries.Claim`) before it goes upstream, and
*settles* when it ends: what it really used is spent (budgets, per-minute limits), or nothing is
(concurrency), and the rest of its claim comes back.

The store (Redis shared by every sidecar, or this node's memory) keeps, per counter, what was
``spent`` and what each holder ``held``, with an expiry per holder. One invariant is enforced
atomically there (a Lua script in Redis): ``spent + held <= capacity`` whenever something is
granted. A holder that dies stops refreshing its expiry, and what it held comes back on its own.
A live holder whose expiry passed all the same (the store did not answer it for that long: a Redis
that hung, failed over) is held again: each report says what the holder's requests in flight
hold (``busy``), and the store never leaves its grant below that, past the capacity if another
holder took it meanwhile (nobody else is admitted into it until those requests end).
In the node's memory behind its parent (several workers, no Redis) a dead worker is settled at
once instead: its notes told the parent what its requests claimed and spent unreported, which is
charged, and the rest of what it held is freed (:data:`Pledge`, :meth:`MemoryBackend.bury`).
A counter with a window leaves the store :data:`ENDED` seconds after its window ends, or later when
its claim keeps it (``Claim.kept``: a budget's last period); one without a window stays.

A worker process (one :class:`Keeper`) does not ask the store for every request. It holds a
*lease* per counter, a slice of the capacity granted to it in the store, and admits requests
against its lease in memory: no round trip on the median request. When a claim does not fit
the lease, the request waits for one round trip that grows the lease (all of a request's short
counters in one pipeline), or is refused when the store cannot grant it. What requests spend is
reported to the store in the background (:meth:`Keeper.flush`, every ``interval`` seconds), which
also gives back lease the worker has not used lately, refreshes expiries and reads the totals
(alerts, the remaining counts of rate-limit headers).

Bounds, as the README states them: a lease never takes more than half of what is left, so near
the end of a budget requests are granted exactly what they claim; admitted spend never exceeds
the capacity, except by what requests spend beyond their claim (a request without ``max_tokens``
that writes more than the default output claim; a fallback to a dearer target than any claimed
for). Leases held by other workers can refuse a request slightly before the capacity is reached
(at most the unused leases: by default 2 % of the capacity, or four claims, per worker).

When the store does not answer (down, slower than its deadline), the keeper stops asking it for
``retry`` seconds and answers from its own view: the policy decides between refusing (closed)
and admitting on this process's own counters, starting from the totals it last saw (open). What
is spent meanwhile is kept and reported when the store is back.

A report is counted once. One that did not answer in time may still have reached the store and
run there (a Redis that hangs past the deadline, then resumes): it carries an id (this holder and
a rising number), and the worker sends it again unchanged, before any new spend, until it is
answered; the store applies each id once and answers a repeat with the grants as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ext_proc.state.queries import Admission, Claim, StoreUnavailable

log = logging.getLogger("tollway.limits")

HOLD_TTL = 30.0  # seconds a holder's grants survive without a refresh (a dead sidecar's come back)
FLUSH_INTERVAL = 0.2  # seconds between reports to the store
IDLE = 1.0  # seconds without an admission after which a lease is given back
LEASE_SHARE = 0.02  # a lease is this share of the capacity ...
LEASE_CLAIMS = 4  # ... or this many claims, whichever is larger
RETRY = 1.0  # seconds without asking a store that did not answer
SLICED_CAP = 50  # concurrency caps from this size are leased in slices too
ENDED = 300.0  # seconds a finished window stays in the store at least (late reports, skewed clocks)
REPORTED = 600.0  # seconds the store remembers a holder's last report number (a repeat within it: once)


@dataclass(frozen=True, slots=True)
class Grant:
    """A store's answer about one counter: what it granted now (-1: it had dropped this holder),
    its totals after, and what this holder holds there now (the worker's lease, as the store sees it)."""

    granted: int
    spent: int
    held: int
    mine: int = 0


class Backend(Protocol):
    """Where counters live. Methods answer at once (memory) or with an awaitable (Redis)."""

    def grow(self, holder: str, asks: list[tuple[Claim, int, int]], ttl: float
             ) -> list[Grant] | Awaitable[list[Grant]]:
        """For each (claim, need, want): grant ``want`` (at most half of what is left, but never
        less than ``need``; beyond ``need``, in whole multiples of the claim's amount), or 0 when
        even ``need`` does not fit."""
        ...

    def report(self, holder: str, reports: list[Report], ttl: float, seq: int = 0
               ) -> list[Grant] | Awaitable[list[Grant]]:
        """For each (claim, spent, released, busy): add ``spent`` to the counter's spend, take
        ``spent + released`` off this holder's grant, refresh its expiry; and leave the grant no
        smaller than ``busy``, what the holder's requests in flight still hold (it may have been
        dropped, past its expiry, while the store did not answer: it is held again, past the
        capacity if others took it meanwhile).

        ``seq``: the report's number (rising per holder). A counter that already took a report of
        this holder numbered ``seq`` or later (one sent again because its answer did not come in
        time) changes nothing and answers its grants as they are, but for a grant below ``busy``
        (dropped since): held again. 0: no number, always applied."""
        ...

    def once(self, key: str, until: float) -> bool | Awaitable[bool]:
        """True for the first caller (of any holder) to name ``key`` before Unix time ``until``."""
        ...


Report = tuple[Claim, int, int, int]
"""One counter's part of a report: (claim, spent, released, busy); see :meth:`Backend.report`."""

Pledge = Callable[[str, list[tuple[Claim, int, int]]], None]
"""A store that outlives the worker (the node's parent) may have a ``note(holder, items)``: told, as
it happens, without waiting for an answer, what this worker pledged of each consuming counter: for
each (claim, claimed, spent), ``claimed`` claimed (+) or given back (-) by requests, ``spent`` spent
by those that ended and not reported yet. When the worker dies, what it pledged is charged as spent
and the rest of its grants goes back at once (:meth:`MemoryBackend.bury`)."""


@dataclass(slots=True)
class Lease:
    """This worker's slice of one counter."""

    claim: Claim  # the last claim on it (capacity, window)
    held: int = 0  # granted to this worker in the store
    reserved: int = 0  # claimed by requests in flight
    used: int = 0  # spent, not yet reported to the store
    releasing: int = 0  # given back in a report still on its way to the store: no request may take it
    spent: int = 0  # the store's totals at the last exchange ...
    others: int = 0  # ... and what other holders held then
    last: float = 0.0  # monotonic time of the last admission
    waiting: int = 0  # requests waiting on the store to admit on it: what it holds is theirs, not idle
    fresh_until: float = 0.0  # monotonic time after which the store may have dropped it (no refresh)

    @property
    def free(self) -> int:
        return self.held - self.reserved - self.used - self.releasing

    def left(self, capacity: int) -> int:
        """What ``capacity`` leaves as this worker knows it (below 0: it is spent beyond)."""
        return capacity - self.spent - self.others - self.reserved - self.used

    def remaining(self) -> int:
        """Capacity left as this worker knows it."""
        return max(0, self.left(self.claim.capacity))


def _beyond(claim: Claim, lease: Lease) -> bool:
    """Whether ``claim`` no longer fits the counter's capacity as the store last told it, though the
    lease still holds room: the limit was lowered (a policy reload) after the lease was cut from the
    old one. In steady state a lease never holds more than that capacity leaves, so this is false."""
    return claim.amount > lease.left(claim.capacity)


@dataclass
class Keeper:
    """One worker's view of every counter; see the module docstring."""

    backend: Backend
    holder: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    clock: Callable[[], float] = time.monotonic
    leases: dict[str, Lease] = field(default_factory=dict)
    down_until: float = 0.0  # the store did not answer: do not ask before this time
    degraded_since: float | None = None
    lease_share: float = LEASE_SHARE
    ttl: float = HOLD_TTL  # seconds this worker's grants survive it in the store
    # Called with each report's totals (alerts), and with a budget's claim it refuses (refused=True).
    alerts: Callable[..., None] | None = None
    _flush: asyncio.Task[None] | None = None
    _growing: dict[str, asyncio.Future[list[Grant]]] = field(default_factory=dict)  # counter -> its grow in flight
    _turn: asyncio.Lock | None = None  # one store exchange at a time (see _in_turn)
    _seq: int = 0  # the number of the last report made (its id: this holder and the number)
    # The report sent and not answered yet (on its way, failed or timed out): sent again, unchanged.
    _outgoing: tuple[int, list[Report]] | None = None
    _note: Pledge | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._note = getattr(self.backend, "note", None)

    # -- admission --------------------------------------------------------------------------

    def admit(self, claims: tuple[Claim, ...], fail_open: bool = False) -> Admission | Awaitable[Admission]:
        """Hold every claim or none; at once when the leases cover them, else after one round trip.

        ``fail_open``: when the store does not answer, admit on this process's own counters;
        else :class:`StoreUnavailable` (raised, or from the awaitable).
        """
        now = self.clock()
        known = self.leases
        leases = []
        short = []
        for index, claim in enumerate(claims):
            lease = known.get(claim.counter)
            if lease is None:
                lease = known[claim.counter] = Lease(claim)
            leases.append(lease)
            if claim.enforced and (lease.free < claim.amount
                                   or (lease.held and now > lease.fresh_until)
                                   or _beyond(claim, lease)):
                short.append(index)
        if not short:
            return self._hold(claims, leases, now, degraded=False)
        if now < self.down_until:
            return self._without_store(claims, leases, now, fail_open)
        pending = {id(f): f for i in short if (f := self._growing.get(claims[i].counter)) is not None}
        if pending:  # another request is growing these leases: wait for it, then look again
            return self._waiting(claims, leases, self._after(list(pending.values()), claims, fail_open))
        for i in short:
            if now > leases[i].fresh_until:
                # Not refreshed within its TTL: the store may have dropped it (and what requests in
                # flight hold under it). Claim it all again; the store's answer says what is held.
                leases[i].held = 0
        asks = [(claims[i], claims[i].amount - leases[i].free, self._want(claims[i], leases[i])) for i in short]
        try:
            answer = self.backend.grow(self.holder, asks, self.ttl)
        except StoreUnavailable as exc:
            return self._unavailable(exc, claims, leases, fail_open)
        if inspect.isawaitable(answer):
            growing = asyncio.ensure_future(self._in_turn(answer))
            counters = [claims[i].counter for i in short]
            for counter in counters:
                self._growing[counter] = growing
            growing.add_done_callback(lambda done: self._grown(done, counters, [leases[i] for i in short]))
            return self._waiting(claims, leases, self._admit_later(claims, leases, growing, fail_open))
        self._apply([leases[i] for i in short], answer)
        return self._granted(claims, leases)

    def _waiting(self, claims: tuple[Claim, ...], leases: list[Lease],
                 admission: Coroutine[Any, Any, Admission]) -> asyncio.Future[Admission]:
        """The request's admission once the store answers; until it is decided, none of the request's
        leases is given back as idle by the flush. A lease being grown is new (never admitted on) or
        may have been idle for long: a flush between the store's answer and the request's turn would
        otherwise hand the grant straight back, and the request, finding nothing free, be refused as
        if the limit were reached (a false 100 % alert with it). Its other leases likewise."""
        held = [lease for claim, lease in zip(claims, leases, strict=True) if claim.enforced]
        for lease in held:
            lease.waiting += 1
        # A task, not the bare coroutine: its end (admitted, refused, failed, or cancelled before it
        # ever ran) always takes the mark off.
        task = asyncio.ensure_future(admission)
        task.add_done_callback(lambda _done: self._waited(held))
        return task

    @staticmethod
    def _waited(leases: list[Lease]) -> None:
        for lease in leases:
            lease.waiting -= 1

    def _grown(self, growing: asyncio.Future[list[Grant]], counters: list[str], leases: list[Lease]) -> None:
        """A store exchange growing leases ended: its leases take the store's answer, whether or
        not the request that asked still waits for it (a client that left cancels only its own wait)."""
        for counter in counters:
            if self._growing.get(counter) is growing:
                del self._growing[counter]
        if not growing.cancelled() and growing.exception() is None:  # a failure is each waiter's to handle
            self._apply(leases, growing.result())
            # Granted, whether or not a request is admitted on it (its client may have left): a
            # flush gives it back once idle, else it stays held until it expires in the store.
            self._schedule()

    async def _admit_later(self, claims: tuple[Claim, ...], leases: list[Lease],
                           growing: asyncio.Future[list[Grant]], fail_open: bool) -> Admission:
        try:
            # Shielded: the exchange is shared by every request waiting on these leases, and a
            # cancelled exchange would leave the store's answer unread on its connection.
            await asyncio.shield(growing)
        except StoreUnavailable as exc:
            return self._unavailable(exc, claims, leases, fail_open)
        # The leases have the store's answer: _grown, registered on the exchange before this wait,
        # ran first (a future's callbacks run in the order they were added).
        return self._granted(claims, leases)

    async def _after(self, pending: list[asyncio.Future[list[Grant]]], claims: tuple[Claim, ...],
                     fail_open: bool) -> Admission:
        await asyncio.gather(*pending, return_exceptions=True)
        answer = self.admit(claims, fail_open)
        return await answer if inspect.isawaitable(answer) else answer

    async def _in_turn(self, answer: Awaitable[list[Grant]]) -> list[Grant]:
        """One exchange with the store at a time: answers arrive in the order the store ran them,
        so each one's view of this worker's lease is the latest."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            return await answer

    def _apply(self, leases: list[Lease], grants: list[Grant]) -> None:
        """The store's answer to a grow, lease by lease."""
        self._recovered()
        fresh = self.clock() + self.ttl * 0.8
        for lease, grant in zip(leases, grants, strict=True):
            lease.held = grant.mine  # the store's view of this worker's lease is the truth
            lease.fresh_until = fresh
            lease.spent, lease.others = grant.spent, max(0, grant.held - lease.held)

    def _granted(self, claims: tuple[Claim, ...], leases: list[Lease]) -> Admission:
        """Admit on the leases as the store last answered, or refuse the first claim they cannot hold."""
        for index, (claim, lease) in enumerate(zip(claims, leases, strict=True)):
            if claim.enforced and (lease.free < claim.amount or _beyond(claim, lease)):
                if self.alerts is not None and claim.consumes and claim.amount <= claim.capacity:
                    # A budget that refuses what an empty one would take is exhausted: its 100 % alert.
                    self.alerts(claim, lease.spent + lease.used, True)  # as reported, and this worker's since
                # The store may have granted the request's other counters (one exchange grows every
                # short lease) and this one's lease part of a claim: refused, they go back once idle,
                # not when they expire in the store (HOLD_TTL), keeping other holders from them.
                self._schedule()
                return Admission(False, refused=index, remaining=tuple(lease.remaining() for lease in leases))
        return self._hold(claims, leases, self.clock(), degraded=False)

    def _hold(self, claims: tuple[Claim, ...], leases: list[Lease], now: float, degraded: bool) -> Admission:
        remaining = []
        for claim, lease in zip(claims, leases, strict=True):
            lease.claim = claim
            lease.last = now
            if claim.enforced:
                lease.reserved += claim.amount
            left = lease.left(claim.capacity)
            remaining.append(left if left > 0 else 0)
        if self._note is not None:  # before the request may go upstream: a death after it is charged
            self._note(self.holder, [(claim, claim.amount, 0) for claim in claims if claim.consumes])
        if self._flush is None:
            self._schedule()
        return Admission(True, remaining=tuple(remaining), degraded=degraded)

    def _unavailable(self, exc: StoreUnavailable, claims: tuple[Claim, ...], leases: list[Lease],
                     fail_open: bool) -> Admission:
        self._down(exc)
        return self._without_store(claims, leases, self.clock(), fail_open)

    def _down(self, exc: StoreUnavailable) -> None:
        now = self.clock()
        self.down_until = now + RETRY
        if self.degraded_since is None:
            self.degraded_since = now
            log.error("shared state unavailable (%s): budgets and rate limits follow the policy's "
                      "shared_state.on_unavailable until it answers again", exc)
        if self._flush is None:
            self._schedule()  # the flush asks again when nothing else does (see flush)

    def _without_store(self, claims: tuple[Claim, ...], leases: list[Lease], now: float,
                       fail_open: bool) -> Admission:
        if not fail_open:
            raise StoreUnavailable("the shared state store does not answer")
        # Fail open onto this process's own counters, from the totals it last saw.
        for index, (claim, lease) in enumerate(zip(claims, leases, strict=True)):
            if claim.enforced and lease.remaining() + max(0, lease.free) < claim.amount:
                return Admission(False, refused=index, remaining=tuple(lease.remaining() for lease in leases),
                                 degraded=True)
        return self._hold(claims, leases, now, degraded=True)

    def _recovered(self) -> None:
        if self.degraded_since is not None:
            log.warning("shared state answers again after %.1f s", self.clock() - self.degraded_since)
            self.degraded_since = None
        self.down_until = 0.0

    def _want(self, claim: Claim, lease: Lease) -> int:
        """How much to ask for: the claim, plus a slice for the requests after it. Concurrency
        slots are sliced only from large caps (a busy worker keeps a few, given back once idle);
        a small cap's slots go back as soon as their requests end, for the other sidecars."""
        if not claim.consumes and claim.capacity < SLICED_CAP:
            return claim.amount - max(0, lease.free)
        slice_ = max(int(claim.capacity * self.lease_share), claim.amount * LEASE_CLAIMS)
        return max(claim.amount, slice_) - max(0, lease.free)

    # -- settlement -------------------------------------------------------------------------

    def settle(self, claims: tuple[Claim, ...], used: tuple[int, ...]) -> None:
        """A request ended: give back its claims, count what it spent (reported in the background)."""
        known = self.leases
        for claim, spent in zip(claims, used, strict=True):
            lease = known.get(claim.counter)
            if lease is None:
                continue
            if claim.enforced:
                lease.reserved -= claim.amount
                if lease.reserved < 0:
                    lease.reserved = 0
            if claim.consumes:
                lease.used += spent
        if self._note is not None:
            self._note(self.holder, [(claim, -claim.amount, spent)
                                     for claim, spent in zip(claims, used, strict=True) if claim.consumes])
        if self._flush is None:
            self._schedule()

    def _schedule(self) -> None:
        if self._flush is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous store, in tests): report now
            with contextlib.suppress(StoreUnavailable):
                result = self.flush()
                assert result is None, "an asynchronous store needs an event loop"
            return
        self._flush = loop.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL)
                try:
                    result = self.flush()
                    if inspect.isawaitable(result):
                        await result
                except StoreUnavailable as exc:
                    self._down(exc)
                if self._outgoing is None and self.degraded_since is None and not any(
                        lease.used or lease.held or lease.reserved for lease in self.leases.values()):
                    return
        finally:
            self._flush = None

    def flush(self) -> Awaitable[None] | None:
        """Report spend, give back idle leases, refresh expiries, drop finished windows."""
        now = self.clock()
        reports: list[Report] = []
        if self._outgoing is None:
            reports = self._due(now)
            if not reports:
                self._forget(now)
                if self.degraded_since is None or now < self.down_until:
                    return None
                # Degraded with nothing to report: ask whether the store answers again (an empty
                # report), else this worker would stay degraded (in /readyz, in the metrics) until its
                # next request, however long ago the store came back.
                reports = []
        if now < self.down_until:
            return None  # keep counting; report when the store is back
        if self._outgoing is not None:
            # A report that did not answer (or is still on its way): the store may have run it
            # all the same (a Redis that hung past the deadline runs it when it resumes). It goes
            # again unchanged, with its id, so the store counts it once; new spend goes after it.
            answer = self._send(self._outgoing)
            if answer is None:
                return self.flush()
            return self._flush_after(answer)
        # What goes back is no longer this worker's to admit on from now, not from the store's
        # answer: a request admitted on it meanwhile would be in flight on a slot (a slice of a
        # budget) the store has already handed to another holder. It stays so until the report
        # is answered, however many times it is sent.
        self._releasing(reports)
        self._seq += 1
        return self._send((self._seq, reports))

    def _due(self, now: float) -> list[Report]:
        """What to report: each lease's spend, what it gives back (idle), or a refresh of it, and
        what its requests in flight hold (``busy``: the store holds it again if it had dropped this
        worker, whose report could not reach it within the TTL; a lease the store answered 0 for
        while requests are in flight on it is reported for that too)."""
        reports: list[Report] = []
        for lease in self.leases.values():
            idle = not lease.waiting and (
                now - lease.last > IDLE or (not lease.claim.consumes and lease.claim.capacity < SLICED_CAP))
            release = max(0, lease.free) if idle else 0
            if lease.used or release or lease.held or lease.reserved:
                reports.append((lease.claim, lease.used, release, lease.reserved))
        return reports

    def _send(self, outgoing: tuple[int, list[Report]]) -> Awaitable[None] | None:
        """Send a report; until its answer it stays ``_outgoing`` (an error leaves it there)."""
        self._outgoing = outgoing
        seq, reports = outgoing
        answer = self.backend.report(self.holder, reports, self.ttl, seq)
        if inspect.isawaitable(answer):
            return self._reported_later(outgoing, self._in_turn(answer))
        self._reported(outgoing, answer)
        return None

    async def _flush_after(self, answer: Awaitable[None]) -> None:
        await answer
        result = self.flush()  # the spend made since, in a report of its own
        if inspect.isawaitable(result):
            await result

    def _releasing(self, reports: list[Report]) -> None:
        for claim, _spent, released, _busy in reports:
            self.leases[claim.counter].releasing += released

    async def _reported_later(self, outgoing: tuple[int, list[Report]],
                              answer: Awaitable[list[Grant]]) -> None:
        self._reported(outgoing, await answer)  # an error: it stays outgoing (the store may have run it)

    def _reported(self, outgoing: tuple[int, list[Report]], grants: list[Grant]) -> None:
        if self._outgoing is not outgoing:
            return  # sent twice (a flush at shutdown while one was on its way), answered already
        self._outgoing = None
        self._recovered()
        fresh = self.clock() + self.ttl * 0.8
        for (claim, spent, released, busy), grant in zip(outgoing[1], grants, strict=True):
            if grant.granted < 0 and busy:
                log.warning("the shared state store held nothing of this worker's on %s (its grant expired there, "
                            "unrefreshed for %g s, or none was made while it did not answer): %d held again for its "
                            "requests in flight", claim.counter, self.ttl, busy)
            lease = self.leases.get(claim.counter)
            if lease is None:  # forgotten meanwhile (the store had dropped it, its window ended)
                continue
            lease.used -= spent
            lease.releasing -= released
            # The store's view (0 if it had dropped this holder and no request of it is in flight).
            lease.held = grant.mine
            lease.fresh_until = fresh
            lease.spent, lease.others = grant.spent, max(0, grant.held - lease.held)
            if self.alerts is not None:
                self.alerts(claim, grant.spent)
        self._forget(self.clock())

    def _forget(self, now: float) -> None:
        wall = time.time()
        for counter, lease in list(self.leases.items()):
            ended = lease.claim.resets and wall > lease.claim.resets
            if ended and not (lease.held or lease.reserved or lease.used or lease.releasing or lease.waiting):
                del self.leases[counter]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every counter this worker holds a lease of, for ``/readyz`` and ``tollway budgets``."""
        return {counter: {"capacity": lease.claim.capacity, "spent": lease.spent, "held": lease.held,
                          "reserved": lease.reserved, "unreported": lease.used, "remaining": lease.remaining(),
                          "resets": lease.claim.resets} for counter, lease in self.leases.items()}


# -- the node's own memory ------------------------------------------------------------------------


@dataclass
class Counter:
    spent: int = 0
    held: dict[str, tuple[int, float]] = field(default_factory=dict)  # holder -> (amount, expiry)
    reported: dict[str, tuple[int, float]] = field(default_factory=dict)  # holder -> (last report's number, expiry)

    def total(self, now: float) -> int:
        for holder, (_, expiry) in list(self.held.items()):
            if expiry <= now:
                del self.held[holder]
        return sum(amount for amount, _ in self.held.values())


def _gone_at(claim: Claim) -> float:
    """When the store may drop the claim's counter (Unix seconds; 0: never)."""
    return claim.resets + max(ENDED, claim.kept) if claim.resets else 0.0


class MemoryBackend:
    """Counters in this process (the embedded default, and the reference of the Redis scripts)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall  # windows end in Unix time
        self.counters: dict[str, Counter] = {}
        self.marks: dict[str, float] = {}  # once(): key -> until
        # note(): holder -> counter -> (its claim, what the holder's requests claimed in flight plus
        # what they spent that it has not reported yet): what the holder's death charges (bury)
        self.pledges: dict[str, dict[str, tuple[Claim, int]]] = {}
        # the holders that noted (their sums kept below zero too: a report read before the notes it
        # reports, a worker's notes held back by a full socket, is taken off all the same)
        self.noting: set[str] = set()
        self._gone: list[tuple[float, str]] = []  # a heap: (when a counter goes, its name), one per counter

    def _counter(self, claim: Claim) -> Counter:
        """The claim's counter, made on first use; those whose time is up go first (as Redis expires
        them): a sweep that costs what it drops, never a walk of every counter."""
        gone, wall = self._gone, self.wall()
        while gone and gone[0][0] <= wall:
            self.counters.pop(heapq.heappop(gone)[1], None)
        counter = self.counters.get(claim.counter)
        if counter is None:
            counter = self.counters[claim.counter] = Counter()
            if claim.resets:
                heapq.heappush(gone, (_gone_at(claim), claim.counter))
        return counter

    def grow(self, holder: str, asks: list[tuple[Claim, int, int]], ttl: float) -> list[Grant]:
        now = self.clock()
        out = []
        for claim, need, want in asks:
            counter = self._counter(claim)
            held = counter.total(now)
            free = claim.capacity - counter.spent - held
            if need > free:
                out.append(Grant(0, counter.spent, held, counter.held.get(holder, (0, 0.0))[0]))
                continue
            grant = min(want, max(need, free // 2))
            unit = max(1, claim.amount)  # in whole claims beyond the need: no slivers nobody can use
            grant = need + (grant - need) // unit * unit
            mine, _ = counter.held.get(holder, (0, 0.0))
            counter.held[holder] = (mine + grant, now + ttl)
            out.append(Grant(grant, counter.spent, held + grant, mine + grant))
        return out

    def report(self, holder: str, reports: list[Report], ttl: float, seq: int = 0) -> list[Grant]:
        # In this process a report is never applied after its caller gave up on it; but behind the
        # node's socket (NodeBackend) a worker's deadline can pass before the parent runs it.
        now = self.clock()
        out = []
        for claim, spent, released, busy in reports:
            counter = self._counter(claim)
            counter.total(now)  # drop expired holders first
            mine = counter.held.get(holder)
            had = mine[0] if mine else 0
            lost = -1 if mine is None else 0
            if seq:
                for old in [h for h, (_, expiry) in counter.reported.items() if expiry <= now]:
                    del counter.reported[old]
                last, _ = counter.reported.get(holder, (0, 0.0))
                if seq <= last:  # taken already: its grants as they are (held again, if dropped since)
                    left = had if had >= busy else self._keep(counter, holder, busy, now, ttl)
                    out.append(Grant(lost, counter.spent, counter.total(now), left))
                    continue
                counter.reported[holder] = (seq, now + REPORTED)
            counter.spent += spent
            if spent:
                self._pledge(holder, claim, -spent)  # reported: spent, no longer only pledged
            left = self._keep(counter, holder, max(busy, had - min(had, spent + released)), now, ttl)
            out.append(Grant(lost, counter.spent, counter.total(now), left))
        return out

    @staticmethod
    def _keep(counter: Counter, holder: str, amount: int, now: float, ttl: float) -> int:
        """The holder's grant is ``amount`` now, its expiry refreshed (0: it holds nothing)."""
        if amount > 0:
            counter.held[holder] = (amount, now + ttl)
        else:
            counter.held.pop(holder, None)
        return amount

    def pledge(self, holder: str, items: list[tuple[Claim, int, int]]) -> None:
        """What ``holder``'s requests claimed (+) or gave back (-), and spent, not reported yet: a
        worker's notes (see :data:`Pledge`), which the node's parent applies here. (Not ``note``: a
        keeper in this process, which dies with it, sends none.)"""
        for claim, claimed, spent in items:
            self._pledge(holder, claim, claimed + spent)

    def _pledge(self, holder: str, claim: Claim, amount: int) -> None:
        pledges = self.pledges.get(holder)
        if pledges is None:
            if holder not in self.noting:  # a holder that never noted (one in this process): nothing to track
                if amount <= 0:
                    return
                self.noting.add(holder)
            pledges = self.pledges[holder] = {}
        _, before = pledges.get(claim.counter, (claim, 0))
        if before + amount:
            pledges[claim.counter] = (claim, before + amount)
        else:
            pledges.pop(claim.counter, None)
            if not pledges:
                del self.pledges[holder]

    def bury(self, holder: str) -> dict[str, int]:
        """A holder died (a worker the supervisor reaped): what its requests in flight claimed, and
        what it spent and had not reported, is spent (unknown is not zero: the claims are the most
        they may have cost; a provider may have served them), and all it held comes back now, not
        when its grants expire. Returns what was charged, per counter."""
        charged = {}
        self.noting.discard(holder)
        for name, (claim, amount) in self.pledges.pop(holder, {}).items():
            if amount > 0:
                self._counter(claim).spent += amount
                charged[name] = amount
        for counter in self.counters.values():
            counter.held.pop(holder, None)
            counter.reported.pop(holder, None)
        return charged

    def totals(self, counter: str) -> tuple[int, int]:
        """(spent, held) of one counter."""
        found = self.counters.get(counter)
        return (found.spent, found.total(self.clock())) if found else (0, 0)

    def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        """(spent, held) of every counter whose name starts with ``prefix``."""
        now = self.clock()
        return {name: (c.spent, c.total(now)) for name, c in self.counters.items() if name.startswith(prefix)}

    def once(self, key: str, until: float) -> bool:
        now = time.time()
        for old in [k for k, deadline in self.marks.items() if deadline < now]:
            del self.marks[old]
        if key in self.marks:
            return False
        self.marks[key] = until
        return True


# -- Redis ----------------------------------------------------------------------------------------

# Both scripts first drop holders whose expiry passed (a dead sidecar's grants come back), and
# keep every key of one counter in one hash slot ({counter}), so they run on Redis Cluster too.
# Times are the server's (TIME), so sidecars with skewed clocks agree: a counter's keys expire at
# the claim's time (the sidecar's clock: its window's end plus what it keeps) but never sooner than
# ENDED after the server's now (a sidecar minutes behind would otherwise have each key deleted as
# soon as it was written, every request granted anew).
_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, h in ipairs(dead) do
  local v = tonumber(redis.call('HGET', KEYS[2], h) or '0')
  redis.call('HDEL', KEYS[2], h)
  if v > 0 then redis.call('HINCRBY', KEYS[2], '_total', 0 - v) end
  redis.call('ZREM', KEYS[3], h)
end
local function keep(expire_at)
  if expire_at > 0 then
    expire_at = math.max(expire_at, now + ENDED_MS)
    for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], expire_at) end
  end
end
""".replace("ENDED_MS", str(int(ENDED * 1000)))
GROW = _PRUNE + """
local holder, need, want, capacity = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl, expire_at, unit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local total = tonumber(redis.call('HGET', KEYS[2], '_total') or '0')
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local free = capacity - spent - total
if need > free then return {0, spent, total, tonumber(redis.call('HGET', KEYS[2], holder) or '0')} end
local grant = math.min(want, math.max(need, math.floor(free / 2)))
grant = need + math.floor((grant - need) / unit) * unit
local mine = redis.call('HINCRBY', KEYS[2], holder, grant)
redis.call('HINCRBY', KEYS[2], '_total', grant)
redis.call('ZADD', KEYS[3], now + ttl, holder)
keep(expire_at)
return {grant, spent, total + grant, mine}
"""
# A numbered report (ARGV[6] > 0) is applied once per counter: KEYS[4] (in the counter's slot) keeps
# the holder's last number taken, and a report numbered no higher (sent again after its answer was
# lost) answers the grants as they are (but for one below ARGV[7], dropped since: held again).
# ARGV[7] (busy): what the holder's requests in flight hold; its grant is left no smaller (held
# again, past the capacity if need be, when the store had dropped it: no report within the TTL).
REPORT = _PRUNE + """
local holder, used, released = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, expire_at, seq, busy = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = redis.call('HGET', KEYS[2], holder)
local lost = mine and 0 or -1
local had = tonumber(mine or '0')
local function hold(left)  -- the holder's grant goes from had to left (never below busy)
  if left < busy then left = busy end
  if left > 0 then
    if left ~= had then redis.call('HSET', KEYS[2], holder, left) end
    redis.call('ZADD', KEYS[3], now + ttl, holder)
  elseif mine then
    redis.call('HDEL', KEYS[2], holder)
    redis.call('ZREM', KEYS[3], holder)
  end
  -- (never "-0": Redis does not read it as an integer)
  if left ~= had then redis.call('HINCRBY', KEYS[2], '_total', left - had) end
  return left
end
if seq > 0 then
  if seq <= tonumber(redis.call('GET', KEYS[4]) or '0') then
    local left = had
    if had < busy then
      left = hold(had)
      keep(expire_at)
    end
    return {lost, spent, tonumber(redis.call('HGET', KEYS[2], '_total') or '0'), left}
  end
  redis.call('SET', KEYS[4], seq, 'PX', REPORTED_MS)
  if expire_at > 0 then  -- never outliving the counter (a minute's rate counter ends long before)
    local ends = math.max(expire_at, now + ENDED_MS)
    if ends < now + REPORTED_MS then redis.call('PEXPIREAT', KEYS[4], ends) end
  end
end
if used > 0 then spent = redis.call('INCRBY', KEYS[1], used) end
local left = hold(had - math.min(had, used + released))
keep(expire_at)
return {lost, spent, tonumber(redis.call('HGET', KEYS[2], '_total') or '0'), left}
""".replace("REPORTED_MS", str(int(REPORTED * 1000))).replace("ENDED_MS", str(int(ENDED * 1000)))
TOTALS = _PRUNE + """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('HGET', KEYS[2], '_total') or '0')}
"""
DEADLINE = 1.0  # seconds a round trip may take before the store counts as unavailable


def keys(prefix: str, counter: str) -> list[str]:
    """The Redis keys of one counter: spent, held (per holder, and '_total'), expiries."""
    return [f"{prefix}:{{{counter}}}:{part}" for part in ("spent", "held", "exp")]


def _expire_at(claim: Claim) -> int:
    return int(_gone_at(claim) * 1000)


class RedisBackend:
    """Counters in Redis (``redis.asyncio``, a bounded pool, a deadline per round trip)."""

    def __init__(self, client: Any, prefix: str = "tollway:limits", deadline: float = DEADLINE) -> None:
        self.client = client
        self.prefix = prefix
        self.deadline = deadline
        self._grow = client.register_script(GROW)
        self._report = client.register_script(REPORT)
        self._totals = client.register_script(TOTALS)

    @classmethod
    def from_url(cls, url: str, deadline: float = DEADLINE, max_connections: int = 16) -> RedisBackend:
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=deadline, socket_timeout=deadline,
            socket_connect_timeout=deadline)
        client = redis.asyncio.Redis(connection_pool=pool)
        return cls(client, deadline=deadline)

    def grow(self, holder: str, asks: list[tuple[Claim, int, int]], ttl: float) -> Awaitable[list[Grant]]:
        calls = [(self._grow, keys(self.prefix, claim.counter),
                  [holder, need, want, claim.capacity, int(ttl * 1000), _expire_at(claim), max(1, claim.amount)])
                 for claim, need, want in asks]
        return self._run(calls)

    def report(self, holder: str, reports: list[Report], ttl: float, seq: int = 0) -> Awaitable[list[Grant]]:
        calls = [(self._report, [*keys(self.prefix, claim.counter), self._reported(claim.counter, holder)],
                  [holder, spent, released, int(ttl * 1000), _expire_at(claim), seq, busy])
                 for claim, spent, released, busy in reports]
        return self._run(calls)

    def _reported(self, counter: str, holder: str) -> str:
        """The key of the holder's last report number a counter took (in the counter's slot)."""
        return f"{self.prefix}:{{{counter}}}:reported:{holder}"

    async def _run(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Grant]:
        # The deadline is the client's own (socket and pool timeouts): cancelling a command from
        # outside could hand its connection back with an answer still unread.
        import redis

        try:
            return await self._pipeline(calls)
        except (TimeoutError, redis.TimeoutError):
            raise StoreUnavailable(f"redis did not answer within {self.deadline:g} s") from None
        except redis.ResponseError as exc:  # a script error: Redis's message names no secret
            raise StoreUnavailable(f"redis refused: {str(exc)[:200]}") from None
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from None

    async def _pipeline(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Grant]:
        if not calls:  # an empty report: whether Redis answers (a degraded worker asks, see Keeper.flush)
            await self.client.ping()
            return []
        if len(calls) == 1:
            script, script_keys, args = calls[0]
            results = [await script(keys=script_keys, args=args)]
        else:
            # As a context manager: a pipeline whose execute timed out is reset and closed
            # (else asyncio logs "Unclosed Pipeline client" at every Redis timeout).
            async with self.client.pipeline(transaction=False) as pipe:
                for script, script_keys, args in calls:
                    await script(keys=script_keys, args=args, client=pipe)
                results = await pipe.execute()
        return [Grant(int(granted), int(spent), int(held), int(mine)) for granted, spent, held, mine in results]

    async def once(self, key: str, until: float) -> bool:
        try:
            return bool(await asyncio.wait_for(
                self.client.set(f"{self.prefix}:once:{key}", 1, nx=True, exat=int(until) + 1), self.deadline))
        except Exception as exc:  # an alert may repeat rather than be lost
            log.warning("could not mark %s once: %s", key, type(exc).__name__)
            return True

    async def scan(self, prefix: str) -> dict[str, tuple[int, int]]:
        """(spent, held) of every counter whose name starts with ``prefix`` (``tollway budgets``)."""
        names: set[str] = set()
        for part in ("spent", "held"):
            async for key in self.client.scan_iter(match=f"{self.prefix}:{{{prefix}*}}:{part}", count=500):
                text = key.decode() if isinstance(key, bytes) else key
                names.add(text[len(self.prefix) + 2:-len(f"}}:{part}")])
        return {name: await self.totals(name) for name in sorted(names)}

    async def totals(self, counter: str) -> tuple[int, int]:
        """(spent, held) of one counter, for ``tollway budgets`` (expired holders dropped first)."""
        spent, held = await self._totals(keys=keys(self.prefix, counter), args=[])
        return int(spent), int(held)

    async def close(self) -> None:
        await self.client.aclose()
