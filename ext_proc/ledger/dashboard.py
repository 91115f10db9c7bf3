"""What the dashboard shows, computed from the ledger. Pure: records (or aggregate rows) in, JSON out.

Theory of operation. :class:`Timeline` is fed request records one by one (the admin endpoint
feeds it the request log incrementally: each refresh reads only the lines written since the
last one) and keeps, per time slot (5 minutes by default) and per (team, model, provider), the
same totals as a spend report's row (:class:`~ext_proc.state.rows.Row`: requests, refused,
tokens, cost in integer micro-dollars, unknown usage and price, fallbacks, guardrail triggers)
plus errors, cut streams and a latency histogram. Slots older than ``keep`` are dropped, and the
model names of refused requests (a client's free text) beyond the first ``UNSERVED_MODELS`` are
``(other)``, so memory is bounded by slots × teams × models, not by traffic. :meth:`Timeline.summary` adds the
slots of a window up into what the page draws: totals, rows by team and by model, cost per
slot by team and by model, and latency percentiles (the upper bound of the histogram bucket
holding them: buckets grow by 25 %, so a percentile reads at most 25 % high).

The same rules as ``tollway report`` (:mod:`ext_proc.ledger.report`): a request Tollway refused
is counted as refused, with no tokens, cost or latency; unknown usage and unknown prices are
counted, never added as zero. :func:`from_rows` builds the same shape from the shared
aggregates in Redis, whose slots are UTC days and whose percentile is the aggregates' p95 bound.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ext_proc.state.rows import Row, usable

# Latency bucket upper bounds in ms: 1 ms to ~11 min, each 25 % above the last.
LATENCY_BOUNDS = tuple(round(1.25 ** i, 3) for i in range(61))
Cell = tuple[str, str, str]  # team, model, provider
UNSERVED_MODELS = 50  # model names of refused requests with a row of their own (the rest: "(other)")


@dataclass
class Totals:
    """One (slot, team, model, provider)'s totals: a report row plus errors and a latency histogram."""

    row: Row = field(default_factory=lambda: Row(""))
    errors: int = 0  # the provider answered an error
    incomplete: int = 0  # the stream was cut (by the provider or the client leaving)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))

    def add(self, record: dict[str, Any]) -> None:
        if not self.row.add(record):
            return
        outcome = record.get("outcome")
        self.errors += outcome == "error"
        self.incomplete += outcome == "incomplete"
        latency = record.get("latency_ms")
        if isinstance(latency, (int, float)):
            self.latency[bisect.bisect_left(LATENCY_BOUNDS, latency)] += 1

    def merge(self, other: Totals) -> None:
        row, more = self.row, other.row
        for name in ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
                     "cost_usd_micros", "unknown_usage", "unknown_cost", "guardrail_triggers", "fallbacks",
                     "refused", "latency_count"):
            setattr(row, name, getattr(row, name) + getattr(more, name))
        row.latency_sum_ms += more.latency_sum_ms
        for status, n in more.refused_by_status.items():
            row.refused_by_status[status] = row.refused_by_status.get(status, 0) + n
        for name, n in more.guardrails.items():
            row.guardrails[name] = row.guardrails.get(name, 0) + n
        self.errors += other.errors
        self.incomplete += other.incomplete
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    def view(self, group: str) -> dict[str, Any]:
        out = self.row.as_dict()
        out.update(group=group, errors=self.errors, incomplete=self.incomplete,
                   p50_latency_ms=percentile(self.latency, 50), p95_latency_ms=percentile(self.latency, 95),
                   p99_latency_ms=percentile(self.latency, 99))
        return out


def percentile(histogram: list[int], p: int) -> float | None:
    """The upper bound of the bucket holding the ``p``-th percentile (None: no latency)."""
    total = sum(histogram)
    if not total:
        return None
    target = -(-p * total // 100)
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= target:
            return float(LATENCY_BOUNDS[min(i, len(LATENCY_BOUNDS) - 1)])
    return float(LATENCY_BOUNDS[-1])


class Timeline:
    """Totals per slot and (team, model, provider), fed record by record (see the module docstring)."""

    def __init__(self, step: int = 300, keep: int = 8 * 86400, unserved: int = UNSERVED_MODELS) -> None:
        self.step = step
        self.keep = keep
        self.slots: dict[int, dict[Cell, Totals]] = {}
        self.unserved = unserved
        self._named: set[str] = set()  # model names shown as they are: every served one, the first refused ones
        self._unserved = 0  # names first seen refused, shown as they are (at most ``unserved``)

    def add(self, record: dict[str, Any]) -> None:
        if not usable(record):  # a line of an edited log: not the types a record has
            return
        ts = record["ts"]
        slot = int(ts // self.step) * self.step
        cells = self.slots.get(slot)
        if cells is None:
            cells = self.slots[slot] = {}
            oldest = slot - self.keep
            for old in [s for s in self.slots if s < oldest]:
                del self.slots[old]
        model, provider = str(record.get("model") or "(none)"), str(record.get("provider") or "(none)")
        if provider != "(none)":
            self._named.add(model)  # served: a real model, whose refusals (a budget's 429) keep its name too
        elif model not in self._named:
            # A name no provider served (refused: unknown, not allowed) is the client's free text:
            # the first few keep theirs, the rest are "(other)", so a flood of made-up names cannot
            # grow the page (or this memory) by a row each. A served model always has its own.
            if self._unserved < self.unserved:
                self._named.add(model)
                self._unserved += 1
            else:
                model = "(other)"
        cell = (str(record.get("team") or "(none)"), model, provider)
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
        return _summary(slots, sorted(coarse.items()), step, "log")


def _summary(slots: list[int], chosen: list[tuple[int, dict[Cell, Totals]]], step: int,
             source: str) -> dict[str, Any]:
    total = Totals()
    teams: dict[str, Totals] = {}
    models: dict[str, Totals] = {}
    providers: dict[str, Totals] = {}
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
            for groups, name in ((teams, team), (models, model), (providers, provider)):
                found = groups.get(name)
                if found is None:
                    found = groups[name] = Totals()
                found.merge(cell)
            if i is None:
                continue
            cost_team.setdefault(team, [0] * len(slots))[i] += cell.row.cost_usd_micros
            cost_model.setdefault(model, [0] * len(slots))[i] += cell.row.cost_usd_micros
            tokens[i] += cell.row.tokens
            requests[i] += cell.row.requests
            failed[i] += cell.errors + cell.incomplete
    guardrails: dict[str, int] = {}
    for cell in teams.values():
        for name, n in cell.row.guardrails.items():
            guardrails[name] = guardrails.get(name, 0) + n

    def rows(groups: dict[str, Totals]) -> list[dict[str, Any]]:
        found = [cell.view(name) for name, cell in groups.items()]
        return sorted(found, key=lambda r: (-r["cost_usd_micros"], -r["tokens"], r["group"]))

    return {
        "source": source, "step": step, "slots": slots, "totals": total.view("all"),
        "teams": rows(teams), "models": rows(models), "providers": rows(providers),
        "series": {"cost_by_team": cost_team, "cost_by_model": cost_model, "tokens": tokens, "requests": requests,
                   "failed": failed},
        "guardrails": dict(sorted(guardrails.items(), key=lambda item: (-item[1], item[0]))),
    }


def from_rows(days: list[date], rows_by_day: dict[date, dict[str, list[Row]]]) -> dict[str, Any]:
    """The same shape from the shared aggregates (Redis): one slot per UTC day.

    ``rows_by_day[day]`` holds that day's rows by ``team`` and by ``model``. Errors and cut streams
    are not in the aggregates (0); latency percentiles are the aggregates' p95 bound.
    """
    slots = [int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) for d in days]
    chosen: list[tuple[int, dict[Cell, Totals]]] = []
    cost_model: dict[str, list[int]] = {}
    models: list[Row] = []
    for i, (slot, day) in enumerate(zip(slots, days, strict=True)):
        found = rows_by_day.get(day, {})
        # The aggregates answer one grouping at a time: the team rows carry the totals...
        chosen.append((slot, {(row.group, "", ""): Totals(row=_copy(row)) for row in found.get("team", [])}))
        for row in found.get("model", []):  # ...the model rows the series and rows by model
            cost_model.setdefault(row.group, [0] * len(slots))[i] += row.cost_usd_micros
            models.append(row)
    out = _summary(slots, chosen, 86400, "redis")
    out["series"]["cost_by_model"] = cost_model
    out["models"] = _merge_rows(models)
    out["providers"] = []
    return out


def _copy(row: Row) -> Row:
    copy = Row(row.group, row.requests, row.input_tokens, row.output_tokens, row.cached_tokens, row.reasoning_tokens,
               row.cost_usd_micros, row.unknown_usage, row.unknown_cost, row.guardrail_triggers, row.fallbacks,
               row.refused, dict(row.refused_by_status), dict(row.guardrails), row.latency_sum_ms, row.latency_count)
    copy.p95_bound_ms = row.p95_bound_ms
    return copy


def _merge_rows(rows: list[Row]) -> list[dict[str, Any]]:
    merged: dict[str, Totals] = {}
    bounds: dict[str, float] = {}
    for row in rows:
        found = merged.setdefault(row.group, Totals())
        found.merge(Totals(row=_copy(row)))
        if row.p95_bound_ms is not None:
            bounds[row.group] = max(bounds.get(row.group, 0.0), row.p95_bound_ms)
    out = []
    for name, cell in merged.items():
        view = cell.view(name)
        view.update(p50_latency_ms=None, p95_latency_ms=bounds.get(name), p99_latency_ms=None)
        out.append(view)
    return sorted(out, key=lambda r: (-r["cost_usd_micros"], -r["tokens"], r["group"]))


def window_days(since: float, until: float) -> list[date]:
    first = datetime.fromtimestamp(since, UTC).date()
    last = datetime.fromtimestamp(until - 1, UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
