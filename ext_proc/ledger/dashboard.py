"""What the dashboard shows, computed from the ledger. Pure: records (or aggregate rows) in, JSON out.

Theory of operation. :class:`Timeline` is fed request records one by one (the admin endpoint
feeds it the request log incrementally: each refresh reads only the lines written since the
last one) and keeps, per time slot (5 minutes by default) and per (team, model, provider), the
same totals as a spend report's row (:class:`~ext_proc.state.rows.Row`: requests, refused,
tokens, cost in integer micro-dollars, unknown usage and price, lookups, fallbacks, guardrail
triggers, errors and cut streams) plus a histogram of the latencies of the model calls a provider
answered (:func:`~ext_proc.state.rows.served_latency`, as the reports' average), each cell
compactly (an array of its counts and of the latency buckets it holds, ~250 bytes: it is kept for
the process' life). Slots older than :data:`FINE` (25 hours) are folded into hourly ones (a window
reaching them is drawn in whole hours: the 7-day view in 2-hour points), those older than
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
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeAlias

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


# A cell's totals, compact: one array of doubles (exact for integers below 2**53: tokens and
# micro-dollars of any real window) holding FIELDS, then its latency histogram sparsely, as
# (bucket, count) pairs, only the buckets that hold some. Guardrails and refusals by status are
# kept apart, only for the cells that have some (:class:`Store`). A 5-minute cell of a request or
# two takes ~250 bytes, where a Row and a 62-bucket histogram took ~1.4 KB.
FIELDS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost_usd_micros",
          "unknown_usage", "unknown_cost", "abandoned_tries", "estimated", "guardrail_triggers", "fallbacks",
          "refused", "lookups", "errors", "incomplete", "unknown_outcome", "latency_count", "latency_sum_ms")
NF = len(FIELDS)
Counts: TypeAlias = "array[float]"  # a cell's: FIELDS, then (bucket, count) pairs
FINE = 25 * 3600  # seconds of the newest slots kept at the timeline's own step; older ones are hourly
HOUR = 3600


def _empty() -> Counts:
    return array("d", bytes(8 * NF))


def _count(cell: Counts, bucket: int, n: float) -> None:
    """Add ``n`` to a cell's latency bucket."""
    for j in range(NF, len(cell), 2):
        if cell[j] == bucket:
            cell[j + 1] += n
            return
    cell.append(bucket)
    cell.append(n)


def _fold(into: Counts, cell: Counts) -> None:
    """Add a cell's totals and latencies to another."""
    for i in range(NF):
        into[i] += cell[i]
    for j in range(NF, len(cell), 2):
        _count(into, int(cell[j]), cell[j + 1])


Extras = dict[str, int]  # "g:<guardrail>" and "r:<status>" -> requests


def _fold_extras(into: dict[Any, Extras], key: Any, extras: Extras | None) -> None:
    if extras:
        found = into.setdefault(key, {})
        for name, n in extras.items():
            found[name] = found.get(name, 0) + n


class Store:
    """Cells per slot (Unix seconds, a multiple of its step) and the extras of those that have some."""

    def __init__(self) -> None:
        self.slots: dict[int, dict[Cell, Counts]] = {}
        self.extras: dict[int, dict[Cell, Extras]] = {}

    def cell(self, slot: int, cell: Cell) -> Counts:
        cells = self.slots.setdefault(slot, {})
        found = cells.get(cell)
        if found is None:
            found = cells[cell] = _empty()
        return found

    def drop(self, slot: int) -> None:
        self.slots.pop(slot, None)
        self.extras.pop(slot, None)


class Timeline:
    """Totals per slot and (team, model, provider), fed record by record (see the module docstring).
    The newest :data:`FINE` seconds are kept in slots of ``step``, older ones (up to ``keep``) in
    hourly slots: a slot's cells grow with the (team, model, provider) that sent in it, so 8 days
    of 5-minute slots hold twelve times the cells the same days do hourly."""

    def __init__(self, step: int = 300, keep: int = 8 * 86400, names: ModelNames | None = None) -> None:
        self.step = step
        self.keep = keep
        self.fine = Store()  # slots of ``step``, the newest FINE seconds
        self.hourly = Store()  # hourly slots, older
        self.names = names or ModelNames()
        self.skipped = 0  # lines left out: not the types a record has, or dated after the present
        self._cells: dict[Cell, Cell] = {}  # one tuple per cell, shared by its slots

    @property
    def slots(self) -> dict[int, dict[Cell, Counts]]:
        """The newest slots, of ``step``."""
        return self.fine.slots

    def add(self, record: dict[str, Any], now: float) -> None:
        """Count one record, read at ``now`` (Unix seconds)."""
        if not usable(record) or record["ts"] > now + AHEAD:  # an edited line, a clock that jumped
            self.skipped += 1
            return
        ts = record["ts"]
        if ts < now - self.keep:
            return
        hourly = self.step < HOUR and ts < now - FINE
        store = self.hourly if hourly else self.fine
        step = HOUR if hourly else self.step
        slot = int(ts // step) * step
        if slot < now - self.keep and not hourly:
            return
        if slot not in store.slots:
            self._age(now)
        model = self.names(str(record.get("model") or "(none)"))
        key = (str(record.get("team") or "(none)"), model, str(record.get("provider") or "(none)"))
        key = self._cells.setdefault(key, key)
        cell = store.cell(slot, key)
        row = Row("")
        latency = row.add(record)  # a model call's a provider answered, else None (the reports' rules)
        for i, name in enumerate(FIELDS):
            value = getattr(row, name)
            if value:
                cell[i] += value
        if latency is not None:
            _count(cell, bisect.bisect_left(LATENCY_BOUNDS, latency), 1)
        if row.guardrails or row.refused_by_status:
            extras = {f"g:{name}": n for name, n in row.guardrails.items()}
            extras |= {f"r:{status}": n for status, n in row.refused_by_status.items()}
            _fold_extras(store.extras.setdefault(slot, {}), key, extras)

    def _age(self, now: float) -> None:
        """Fold the fine slots older than FINE into their hours, and drop the hours older than keep."""
        if self.step < HOUR:
            for slot in [s for s in self.fine.slots if s < now - FINE]:
                hour = slot // HOUR * HOUR
                for key, cell in self.fine.slots[slot].items():
                    _fold(self.hourly.cell(hour, key), cell)
                for key, extras in self.fine.extras.get(slot, {}).items():
                    _fold_extras(self.hourly.extras.setdefault(hour, {}), key, extras)
                self.fine.drop(slot)
        for store, step in ((self.fine, self.step), (self.hourly, HOUR)):
            for old in [s for s in store.slots if s + step <= now - self.keep]:
                store.drop(old)

    def summary(self, since: float, until: float, step: int | None = None) -> dict[str, Any]:
        """What the page draws for the slots overlapping [since, until) (Unix seconds), in slots of
        ``step`` (a multiple of the timeline's own; default: its own). A window that reaches the
        hourly slots (older than :data:`FINE`) is drawn in whole hours (``step`` rounded up)."""
        step = max(self.step, (step or self.step) // self.step * self.step)
        first = int(since // step) * step
        if step % HOUR and any(first <= slot < until for slot in self.hourly.slots):
            step = -(-step // HOUR) * HOUR
            first = int(since // step) * step
        slots = list(range(first, int(until), step))
        coarse: dict[int, dict[Cell, Counts]] = {}
        extras: dict[tuple[int, Cell], Extras] = {}
        for store in (self.hourly, self.fine):
            for slot, cells in sorted(store.slots.items()):
                if not first <= slot < until:
                    continue
                into = coarse.setdefault(slot // step * step, {})
                for key, cell in cells.items():
                    found = into.get(key)
                    if found is None:
                        found = into[key] = _empty()
                    _fold(found, cell)
                for key, more in store.extras.get(slot, {}).items():
                    _fold_extras(extras, (slot // step * step, key), more)
        out = _summary(slots, sorted(coarse.items()), extras, step, "log", LATENCY_BOUNDS)
        out["skipped"] = self.skipped
        return out


def _totals(cell: Counts, extras: Extras | None, bounds: tuple[float, ...]) -> Totals:
    """A cell's (or a group's) totals as a report row and a latency histogram."""
    row = Row("")
    for i, name in enumerate(FIELDS[:-1]):
        setattr(row, name, int(cell[i]))
    row.latency_sum_ms = cell[NF - 1]
    for name, n in (extras or {}).items():
        into = row.guardrails if name[0] == "g" else row.refused_by_status
        into[name[2:]] = n
    histogram = [0] * (len(bounds) + 1)
    for j in range(NF, len(cell), 2):
        histogram[int(cell[j])] += int(cell[j + 1])
    return Totals(row=row, bounds=bounds, latency=histogram)


def _summary(slots: list[int], chosen: list[tuple[int, dict[Cell, Counts]]], extras: dict[tuple[int, Cell], Extras],
             step: int, source: str, bounds: tuple[float, ...]) -> dict[str, Any]:
    total = _empty()
    total_extras: Extras = {}
    groups: tuple[dict[Any, Counts], ...] = ({}, {}, {}, {})  # by team, model, provider, (team, model)
    group_extras: tuple[dict[Any, Extras], ...] = ({}, {}, {}, {})
    index = {slot: i for i, slot in enumerate(slots)}
    cost_team: dict[str, list[int]] = {}
    cost_model: dict[str, list[int]] = {}
    tokens = [0] * len(slots)
    requests = [0] * len(slots)
    failed = [0] * len(slots)
    at = {name: FIELDS.index(name) for name in FIELDS}
    for slot, cells in chosen:
        i = index.get(slot)
        for key, cell in cells.items():
            team, model, provider = key
            more = extras.get((slot, key))
            _fold(total, cell)
            _fold_extras({0: total_extras}, 0, more)
            for group, into, name in zip(groups, group_extras, (team, model, provider, (team, model)), strict=True):
                found = group.get(name)
                if found is None:
                    found = group[name] = _empty()
                _fold(found, cell)
                _fold_extras(into, name, more)
            if i is None:
                continue
            cost = int(cell[at["cost_usd_micros"]])
            cost_team.setdefault(team, [0] * len(slots))[i] += cost
            cost_model.setdefault(model, [0] * len(slots))[i] += cost
            tokens[i] += int(cell[at["input_tokens"]] + cell[at["output_tokens"]])
            requests[i] += int(cell[at["requests"]])
            failed[i] += int(cell[at["errors"]] + cell[at["incomplete"]])
    teams, models, providers, pairs = ({name: _totals(cell, into.get(name), bounds) for name, cell in group.items()}
                                       for group, into in zip(groups, group_extras, strict=True))
    guardrails: dict[str, int] = {}
    for team_totals in teams.values():
        for name, n in team_totals.row.guardrails.items():
            guardrails[name] = guardrails.get(name, 0) + n

    def rows(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(found, key=lambda r: (-r["cost_usd_micros"], -r["tokens"], r["group"]))

    return {
        "source": source, "step": step, "slots": slots,
        "totals": _totals(total, total_extras, bounds).view("all"),
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
    chosen: dict[int, dict[Cell, Counts]] = {}
    extras: dict[tuple[int, Cell], Extras] = {}
    for (day, team, model, provider), row in cells.items():
        when = date.fromisoformat(day)
        slot = int(datetime(when.year, when.month, when.day, tzinfo=UTC).timestamp())
        key = (team, shown[model], provider)
        found = chosen.setdefault(slot, {}).get(key)
        if found is None:
            found = chosen[slot][key] = _empty()
        _fold(found, array("d", [*(getattr(row, name) for name in FIELDS),
                                 *(x for i, n in enumerate(row.histogram) if n for x in (i, n))]))
        _fold_extras(extras, (slot, key), {**{f"g:{name}": n for name, n in row.guardrails.items()},
                                           **{f"r:{status}": n for status, n in row.refused_by_status.items()}})
    return _summary(slots, sorted(chosen.items()), extras, 86400, "redis", ledger.LATENCY_BOUNDS)


def window_days(since: float, until: float) -> list[date]:
    first = datetime.fromtimestamp(since, UTC).date()
    last = datetime.fromtimestamp(until - 1, UTC).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
