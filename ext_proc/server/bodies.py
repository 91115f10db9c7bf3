"""How many bytes of request bodies one worker holds at once, and the body refused past that.

A worker reads each request body whole (up to :data:`ext_proc.server.coalesce.MAX_BODY`, 64
MiB) and keeps it, parsed, until its request ends: a 64 MiB chat request costs the worker about
260 MiB at its peak (``tests/e2e/test_sidecar_memory_e2e.py``). Without a bound, a few such
requests at once (a batch job's images, a client's retries) take a worker past its container's
memory limit; the kernel then kills it, and every request it was serving fails, the small ones
too.

:class:`BodyBudget` counts the bytes of request bodies the worker's requests in flight hold, from
a body's first chunk until its request's stream ends. A chunk that would take the total past the
limit while *other* requests hold bodies refuses its request: 503 ``overloaded`` in the client's
format with ``retry-after: 1`` (the OpenAI and Anthropic SDKs retry it), recorded as rejected,
the provider never asked. A request alone in the worker is always read (up to ``MAX_BODY``), so
the limit decides how many large bodies share a worker, never whether a large one can pass.
Answers are not counted: a provider's answer is usually small, and ``MAX_BODY`` bounds it.
"""

from __future__ import annotations

from ext_proc.llm.errors import ClientError

DEFAULT_MIB = 128  # two of the largest bodies at once: the injected sidecar's memory limit holds that

OVERLOADED = ClientError(
    503, "overloaded", "The gateway is holding as many request bodies as it can right now; retry in a moment.",
    headers=(("retry-after", "1"), ("x-should-retry", "true")))


class BodyBudget:
    """One worker's request bodies held, in bytes, against its limit (0: no limit)."""

    __slots__ = ("held", "limit", "refused")

    def __init__(self, limit: int = DEFAULT_MIB * 1024 * 1024) -> None:
        if limit < 0:
            raise ValueError("a body budget is 0 (no limit) or more bytes")
        self.limit = limit
        self.held = 0  # bytes held by every request in flight
        self.refused = 0  # requests refused since the worker started

    def take(self, mine: int, size: int) -> bool:
        """Whether a request already holding ``mine`` bytes may hold ``size`` more (then they are
        counted); False when that takes the worker past its limit while others hold bodies."""
        held = self.held + size
        if self.limit and held > self.limit and self.held > mine:
            self.refused += 1
            return False
        self.held = held
        return True

    def give_back(self, size: int) -> None:
        """A request's stream ended: the ``size`` bytes it held are no longer counted."""
        self.held = max(0, self.held - size)
