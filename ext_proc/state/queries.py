"""Questions the core asks shared state, as plain data (see :class:`~ext_proc.core.actions.Ask`).

A request step returns ``Ask(query)``; the server hands the query to the configured
:class:`~ext_proc.state.store.Store` (in process, or Redis shared by every sidecar) off the
protocol callback, and feeds the answer back to the session. A question that cannot be answered
comes back as :class:`StoreUnavailable`, which the asking step turns into its own decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from ext_proc.values import value


@dataclass(frozen=True, slots=True)
class Ping:
    """Does the store answer? Answered with the store's name (``"memory"``, ``"redis"``)."""


class StoreUnavailable(Exception):
    """The store did not answer (down, too slow, refused); the message names why, never a secret."""


@value
class Claim:
    """One counter a request must fit in (a budget, a per-minute limit, a concurrency cap).

    ``counter`` names the counter with its window (``budget/NAME/usd/MEMBER/2026-12``), so a new
    period is a new counter. ``amount`` is what the request holds while in flight (micro-dollars,
    tokens, one request, one slot) out of ``capacity``; ``resets`` is when the window ends (Unix
    seconds; 0: never). ``consumes``: the amount is spent (budgets, per-minute limits) rather than
    only held while in flight (concurrency). ``enforced``: refuse past capacity (else counted and
    alerted on only: a soft budget). ``kept``: seconds the store keeps the counter after ``resets``
    (a budget's last period stays readable; a minute's window goes a few minutes after it ends).
    """

    counter: str
    amount: int
    capacity: int
    resets: float
    consumes: bool = True
    enforced: bool = True
    kept: float = 0.0


@value
class Admit:
    """Hold every claim, or none: answered with an :class:`Admission`. ``fail_open``: when the
    store does not answer, admit on this process's own counters (else refuse)."""

    claims: tuple[Claim, ...]
    fail_open: bool = False


@value
class Admission:
    """The answer to :class:`Admit`.

    ``refused`` is the index of the claim that did not fit (nothing is held then); ``remaining``
    the capacity left per claim as this process last knew it (for rate-limit headers);
    ``degraded``: the store did not answer and the claims were held on this process's own
    counters (the policy's ``on_unavailable: open``).
    """

    admitted: bool
    refused: int | None = None
    remaining: tuple[int, ...] = ()
    degraded: bool = False
