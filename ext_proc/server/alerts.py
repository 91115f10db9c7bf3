"""Budget alerts: a log event, a metric and an optional webhook when spend crosses a threshold.

The keeper reports each counter's total spend after every exchange with the store
(:class:`~ext_proc.state.limits.Keeper`, ``alerts`` callback). For a budget with ``alerts:
[50, 80, 100]`` each threshold crossed in a window fires once across every worker and sidecar
(the store's ``once``: Redis ``SET NX``), as a warning in the log, ``tollway_budget_alerts_total``
and, when the budget has a ``webhook``, a JSON POST retried with backoff on a task of its own:
nothing here ever waits in a request's path, and a webhook that is down costs only log lines.
Each try has a deadline of its own (``DEADLINE``, the whole exchange, however slowly a receiver
trickles its answer) and runs on the event loop (httpx), holding no thread a shutdown would wait
for; a redirect is a failure, never followed (a receiver that moved says so in the log). A hard
budget's spend never passes its limit (its requests are refused first): its 100 % fires at the
first request it refuses that an empty budget would have taken, with ``refused: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import orjson

from ext_proc.policy.compiled import Budget, CompiledPolicy, budget_parts
from ext_proc.server.metrics import Tally
from ext_proc.state.queries import Claim

log = logging.getLogger("tollway.alerts")
RETRIES = (1.0, 5.0, 30.0)  # seconds before each new try of a webhook


class Alerts:
    """Checks each reported total against the budget's thresholds (see the module docstring)."""

    def __init__(
        self, policy: Callable[[], CompiledPolicy | None], once: Callable[[str, float], bool | Awaitable[bool]],
        tally: Tally | None = None, post: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.policy = policy
        self.once = once
        self.post = post or _post
        self.fired: set[str] = set()  # this worker's own memory: (counter, threshold) already checked
        self.tally = tally if tally is not None else Tally()  # tollway_budget_alerts_total, summed over workers
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, claim: Claim, spent: int, refused: bool = False) -> None:
        """``spent`` of ``claim``'s budget reported; ``refused``: the budget refused this claim."""
        if not claim.counter.startswith("budget/") or claim.capacity < 0 or (not claim.capacity and not spent):
            return
        policy = self.policy()
        found = _budget_of(policy, claim.counter) if policy else None
        if found is None or not found[0].alerts:
            return
        budget, unit, member, window = found
        name = budget.name
        # A $0 (soft) budget: any spend is past every threshold.
        percent = spent * 100 / claim.capacity if claim.capacity else float("inf")
        for threshold in budget.alerts:
            key = f"{claim.counter}@{threshold}"
            # A refusal raises 100 % (the lower thresholds follow the spend, as it is reported).
            if (percent < threshold and not (refused and threshold >= 100)) or key in self.fired:
                continue
            self.fired.add(key)
            event = {"type": "budget.threshold", "budget": name, "unit": unit, "member": member, "window": window,
                     "threshold_percent": threshold, "spent": spent, "limit": claim.capacity,
                     "resets_at": datetime.datetime.fromtimestamp(claim.resets, datetime.UTC).isoformat(),
                     "enforce": "hard" if budget.hard else "soft", **({"refused": True} if refused else {})}
            self._spawn(self._fire(key, claim.resets, budget, event))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop: the tests' synchronous keeper
            with contextlib.suppress(StopIteration):
                work.send(None)
            return
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fire(self, key: str, until: float, budget: Budget, event: dict[str, Any]) -> None:
        first = self.once(key, until)
        if inspect.isawaitable(first):
            first = await first
        if not first:
            return  # another worker or sidecar raised it
        log.warning("budget %s reached %d%% of its %s limit for %s (%s): %d of %d", event["budget"],
                    event["threshold_percent"], event["unit"], event["member"], event["window"], event["spent"],
                    event["limit"])
        self.tally.add(("tollway_budget_alerts", event["budget"], str(event["threshold_percent"])))
        if budget.webhook:
            await self._deliver(budget.webhook, orjson.dumps(event))

    async def _deliver(self, url: str, body: bytes) -> None:
        for attempt, wait in enumerate((0.0, *RETRIES)):
            if wait:
                await asyncio.sleep(wait)
            try:
                sent = self.post(url, body)
                if inspect.isawaitable(sent):
                    await asyncio.wait_for(sent, DEADLINE)
                return
            except Exception as exc:
                log.warning("budget alert webhook failed (try %d): %s", attempt + 1, _why(exc))
        log.error("budget alert webhook gave up after %d tries", len(RETRIES) + 1)


def _budget_of(policy: CompiledPolicy, counter: str) -> tuple[Budget, str, str, str] | None:
    """The budget, unit, member and window of a budget's counter (see :func:`budget_parts`)."""
    parts = budget_parts(counter)
    if parts is None:
        return None
    name, unit, member, window = parts
    budget = next((b for b in policy.limits.budgets if b.name == name), None)
    return (budget, unit, member, window) if budget is not None else None


DEADLINE = 10.0  # seconds for one try, connection to the end of the answer


async def _post(url: str, body: bytes) -> None:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        response = await client.post(url, content=body, headers={"content-type": "application/json",
                                                                  "user-agent": "tollway"})
    if response.status_code >= 300:
        raise WebhookRefused(response.status_code, response.headers.get("location"))


class WebhookRefused(Exception):
    """The receiver answered other than 2xx (a redirect is not followed)."""

    def __init__(self, status: int, location: str | None) -> None:
        moved = f" (it moved: {location[:200]})" if location and 300 <= status < 400 else ""
        super().__init__(f"answered {status}{moved}")


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, WebhookRefused) else type(exc).__name__
