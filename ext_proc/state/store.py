"""The shared-state store the core's questions go to: in this process, or in Redis.

Theory of operation. :meth:`Store.answer` takes one query of :mod:`ext_proc.state.queries` and
returns the answer, or an awaitable of it. The in-process store answers at once, inside the
protocol callback that asked (no hand-off, no extra latency): one node, one worker, the embedded
default. The Redis store is shared by every sidecar of the mesh; its answers need a network round
trip, so they are awaitables the server runs on its event loop (``redis.asyncio``: no thread
hand-off) with a deadline, well inside Envoy's message timeout. A Redis that is down or slower
than the deadline answers :class:`~ext_proc.state.queries.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from ext_proc.state.queries import Ping, StoreUnavailable

DEADLINE = 1.0  # seconds a Redis question may take (Envoy's message timeout is 5 s)


class Store(Protocol):
    name: str

    def answer(self, query: object) -> object | Awaitable[object]: ...


class MemoryStore:
    """Shared state of this process only."""

    name = "memory"

    def answer(self, query: object) -> object:
        if isinstance(query, Ping):
            return self.name
        raise TypeError(f"unknown query {type(query).__name__}")


class RedisStore:
    """Shared state in Redis, through one ``redis.asyncio`` client per worker process."""

    name = "redis"

    def __init__(self, url: str, deadline: float = DEADLINE) -> None:
        import redis.asyncio

        self.client: Any = redis.asyncio.Redis.from_url(url, socket_connect_timeout=deadline, socket_timeout=deadline)
        self.deadline = deadline

    def answer(self, query: object) -> Awaitable[object]:
        if isinstance(query, Ping):
            return self._ask(self._ping())
        raise TypeError(f"unknown query {type(query).__name__}")

    async def _ping(self) -> object:
        await self.client.ping()
        return self.name

    async def _ask(self, question: Awaitable[object]) -> object:
        import redis

        try:
            return await asyncio.wait_for(question, self.deadline)
        except TimeoutError:
            raise StoreUnavailable(f"redis did not answer within {self.deadline:g} s") from None
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self.client.aclose()
