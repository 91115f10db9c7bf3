"""What the dashboard shows, computed from the ledger. Pure: records (or aggregate rows) in, JSON out.

Theory of operation. :class:`Timeline` is fed request records one by one (the admin endpoint
feeds it the request log incrementally: each refresh reads only the lines written since the
last one) and keeps, per time slot (5 minutes by default) and per (team, model, provider), the
same totals as a spend report's row (:class:`~ext_proc.state.rows.Row`: requests, refused,
tokens, cost in integer micro-dollars, unknown usage and price, lookups, fallbacks, guardrail
triggers, errors and cut streams) plus a histogram of the latencies of the model calls a provider
answered (:func:`~ext_proc.state.rows.served_latency`, as the reports' average). Slots older than
``keep`` are dropped; a line that is not a record, or dated after the present (an edited line,
a clock that jumped ahead: kept, it would push the present out of the window), is left out and
counted (``skipped``).
:class:`ModelNames` gives a row of its own to every model name the policy serves and to the
first ``UNSERVED_MODELS`` others (a client's free text); the rest are ``(other)``, so memory and
the page are bounded by slots × teams × models, not by traffic. :meth:`Timeline.summary` adds
the slots of a window up into what the page draws: totals, rows by team, by model, by provider
and by (team, model), cost per slot by team and by model, and latency percentiles (the upper
bound of the histogram bucket holding them: buckets grow by 25 %, so a percentile reads at most
25 % high).

The same rules as ``tollway report`` (:mod:`ext_proc.ledger.report`): a request Tollway refused
is counted as refused, with no tokens, cost or latency; unknown usage and unknown prices are
counted, never added as zero, and so are outcomes the aggregates do not hold (requests counted
before they counted errors: ``errors`` is then ``None``). :func:`from_ledger` builds the same
shape from the shared aggregates in Redis, whose slots are UTC days and whose percentiles are
the upper bounds of the aggregates' own (coarser) latency buckets.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ext_proc.state import ledger
from ext_proc.state.rows import Row, usable

# Latency bucket upper bounds in ms: 1 ms to ~11 min, each 25 % above the last.
LATENCY_BOUNDS = tuple(round(1.25 ** i, 3) for i in range(61))
Cell = tuple[str, str, str]  # team, model, provider
UNSERVED_MODELS = 50  # model names the policy does not serve with a row of their own (the rest: "(other)")
OTHER = "(other)"
AHEAD = 300  # seconds a record's time may be ahead of the present (one host's workers agree far better)


class ModelNames:
    """Which model names have a row of their own: every name the policy serves (a model or an
    alias), and the first ``limit`` others; the rest are ``(other)``. A name the policy does not
    serve is the client's free text (an unknown model Tollway refused; any name at all without a
    policy, where a provider answers it): a flood of made-up names cannot grow the page (or the
    timeline's memory) by a row each."""

    def __init__(self, serves: Callable[[str], bool] = lambda model: False, limit: int = UNSERVED_MODELS) -> None:
        self.serves = serves
        self.limit = limit
        self._others: set[str] = set()  # names the policy does not serve, shown as they are

    def __call__(self, model: str) -> str:
        if model in self._others or model in ("(none)", OTHER) or self.serves(model):
            return model
        if len(self._others) < self.limit:
            self._others.add(model)
            return model
        return OTHER


@dataclass
class Totals:
    """One (slot, team, model, provider)'s totals: a report row and a latency histogram."""

    row: Row = field(default_factory=lambda: Row(""))
    bounds: tuple[float, ...] = LATENCY_BOUNDS  # the histogram's bucket upper bounds (the last bucket is open)
    latency: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.latency:
            self.latency = [0] * (len(self.bounds) + 1)

    def add(self, record: dict[str, Any]) -> None:
        latency = self.row.add(record)  # a model call's a provider answered, else None
        if latency is not None:
            self.latency[bisect.bisect_left(self.bounds, latency)] += 1

    def merge(self, other: Totals) -> None:
        self.row.merge(other.row)
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    def view(self, group: str) -> dict[str, Any]:
        out = self.row.as_dict()
        sent = self.row.requests - self.row.refused
        if sent and self.row.unknown_outcome >= sent:  # counted before the aggregates held outcomes
            out.update(errors=None, incomplete=None)
        out.update(group=group, p50_latency_ms=percentile(self.latency, 50, self.bounds),
                   p95_latency_ms=percentile(self.latency, 95, self.bounds),
                   p99_latency_ms=percentile(self.latency, 99, self.bounds))
        return out


def percentile(histogram: list[int], p: int, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> float | None:
    """The upper bound of the bucket holding the ``p``-th percentile (None: no latency)."""
    total = sum(histogram)
    if not total:
        return None
    target = -(-p * total // 100)
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= target:
            return float(bounds[min(i, len(bounds) - 1)])
    return float(bounds[-1])


class Timeline:
    """Totals per slot and (team, model, provider), fed record by record (see the module docstring)."""

    def __init__(self, step: int = 300, keep: int = 8 * 86400, names: ModelNames | None = None) -> None:
        self.step = step
        self.keep = keep
        self.slots: dict[int, dict[Cell, Totals]] = {}
        self.names = names or ModelNames()
        self.skipped = 0  # lines left out: not the types a record has, or dated after the present

    def add(self, record: dict[str, Any], now: float) -> None:
        """Count one record, read at ``now`` (Unix seconds)."""
        if not usable(record) or record["ts"] > now + AHEAD:  # an edited line, a clock that jumped
            self.skipped += 1
            return
        slot = int(record["ts"] // self.step) * self.step
        if slot < now - self.keep:
            return
        cells = self.slots.get(slot)
        if cells is None:
            cells = self.slots[slot] = {}
            for old in [s for s in self.slots if s < now - self.keep]:
                del self.slots[old]
        model = self.names(str(record.get("model") or "(none)"))
        cell = (str(record.get("team") or "(none)"), model, str(record.get("provider") or "(none)"))
        found = cells.get(cell)
        if found is None:
            found = cells[cell] = Totals()
        found.add(record)

    def summary(self, since: float, until: float, step: int | None = None) -> dict[str, Any]:
        """What the page draws for the slots overlapping [since, until) (Unix seconds), in slots of
        ``step`` (a multiple of the timeline's own; default: its own)."""
        step = max(self.step, (step or self.step) // self.step * self.step)
        first = int(since // step) * step
        slots = list(range(first, int(until), step))
        coarse: dict[int, dict[Cell, Totals]] = {}
        for slot, cells in self.slots.items():
            if not first <= slot < until:
                continue
            into = coarse.setdefault(slot // step * step, {})
            for cell, totals in cells.items():
                found = into.get(cell)
                if found is None:
                    found = into[cell] = Totals()
                found.merge(totals)
        out = _summary(slots, sorted(coarse.items()), step, "log", LATENCY_BOUNDS)
        out["skipped"] = self.skipped
        return out


def _summary(slots: list[int], chosen: list[tuple[int, dict[Cell, Totals]]], step: int, source: str,
             bounds: tuple[float, ...]) -> dict[str, Any]:
    total = Totals(bounds=bounds)
    teams: dict[str, Totals] = {}
    models: dict[str, Totals] = {}
    providers: dict[str, Totals] = {}
    pairs: dict[tuple[str, str], Totals] = {}
    index = {slot: i for i, slot in enumerate(slots)}
    cost_team: dict[str, list[int]] = {}
    cost_model: dict[str, list[int]] = {}
    tokens = [0] * len(slots)
    requests = [0] * len(slots)
    failed = [0] * len(slots)
    for slot, cells in chosen:
        i = index.get(slot)
        for (team, model, provider), cell in cells.items():
            total.merge(cell)
            groups: tuple[tuple[dict[Any, Totals], Any], ...] = (
                (teams, team), (models, model), (providers, provider), (pairs, (team, model)))
            for group, name in groups:
                found = group.get(name)
                if found is None:
                    found = group[name] = Totals(bounds=bounds)
                found.merge(cell)
            if i is None:
                continue
            cost_team.setdefault(team, [0] * len(slots))[i] += cell.row.cost_usd_micros
            cost_model.setdefault(model, [0] * len(slots))[i] += cell.row.cost_usd_micros
            tokens[i] += cell.row.tokens
            requests[i] += cell.row.requests
            failed[i] += cell.row.errors + cell.row.incomplete
    guardrails: dict[str, int] = {}
    for cell in teams.values():
        for name, n in cell.row.guardrails.items():
            guardrails[name] = guardrails.get(name, 0) + n

    def rows(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(found, key=lambda r: (-r["cost_usd_micros"], -r["tokens"], r["group"]))

    return {
        "source": source, "step": step, "slots": slots, "totals": total.view("all"),
        "teams": rows([cell.view(name) for name, cell in teams.items()]),
        "models": rows([cell.view(name) for name, cell in models.items()]),
        "providers": rows([cell.view(name) for name, cell in providers.items()]),
        # What team A sent to model M: tokens, cost, average latency, guardrails that fired.
        "team_models": rows([{**cell.view(f"{team} / {model}"), "team": team, "model": model}
                             for (team, model), cell in pairs.items()]),
        "series": {"cost_by_team": cost_team, "cost_by_model": cost_model, "tokens": tokens, "requests": requests,
                   "failed": failed},
        "guardrails": dict(sorted(guardrails.items(), key=lambda item: (-item[1], item[0]))),
    }


def from_ledger(days: list[date], cells: dict[ledger.Cell, Row],
                serves: Callable[[str], bool] = lambda model: False) -> dict[str, Any]:
    """The same shape from the shared aggregates (Redis): one slot per UTC day, from
    :meth:`~ext_proc.state.ledger.Ledger.cells`; the model names with the most requests are the
    ones that keep theirs (:class:`ModelNames`)."""
    slots = [int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) for d in days]
    volume: dict[str, int] = {}
    for (_, _, model, _), row in cells.items():
        volume[model] = volume.get(model, 0) + row.requests
    names = ModelNames(serves)
    shown = {model: names(model) for model in sorted(volume, key=lambda m: (-volume[m], m))}
    chosen: dict[int, dict[Cell, Totals]] = {}
    for (day, team, model, provider), row in cells.items():
        when = date.fromisoformat(day)
        into = chosen.setdefault(int(datetime(when.year, when.month, when.day, tzinfo=UTC).timestamp()), {})
        found = into.get((team, shown[model], provider))
        if found is None:
            found = into[(team, shown[model], provider)] = Totals(bounds=ledger.LATENCY_BOUNDS)
        found.merge(Totals(row=row, bounds=ledger.LATENCY_BOUNDS, latency=list(row.histogram)))
    return _summary(slots, sorted(chosen.items()), 86400, "redis", ledger.LATENCY_BOUNDS)


def window_days(since: float, until: float) -> list[date]:
    first = datetime.fromtimestamp(since, UTC).date()
    last = datetime.fromtimestamp(until - 1, UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
