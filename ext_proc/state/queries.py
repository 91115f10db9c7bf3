"""Questions the core asks shared state, as plain data (see :class:`~ext_proc.core.actions.Ask`).

A request step returns ``Ask(query)``; the server hands the query to the configured
:class:`~ext_proc.state.store.Store` (in process, or Redis shared by every sidecar) off the
protocol callback, and feeds the answer back to the session. A question that cannot be answered
comes back as :class:`StoreUnavailable`, which the asking step turns into its own decision.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ping:
    """Does the store answer? Answered with the store's name (``"memory"``, ``"redis"``)."""


class StoreUnavailable(Exception):
    """The store did not answer (down, too slow, refused); the message names why, never a secret."""
