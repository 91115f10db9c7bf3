"""Aggregate request records into spend reports. Pure: records in, rows and sentences out.

A record is one line of the request log (see README, "The request record"). Grouping is by
``team``, ``model`` (the public name asked for), ``key`` (the virtual key: its id with its team,
``ci@search``, since an id is unique only within its team), ``provider`` or ``upstream`` (the model
that served, as the policy names it at its provider: an alias's rows split by the target that
served them; ``(unknown)`` for a record an older Tollway wrote).
Tokens are input + output; cost is the sum of ``cost_usd_micros`` (integer micro-dollars), and
records whose usage or price is unknown are *counted* as such rather than added as zero, so a
report can say "at least". Requests Tollway refused itself (outcome ``rejected``: a 401, 403, 404
or 400 answered before any provider was asked) are counted as *refused*, by status: they sent no
tokens, cost nothing, and their (tiny) latency is left out of the averages. Model lists and token
counts are *lookups* (:func:`~ext_proc.state.rows.lookup`): no model call, so no tokens, no cost
and no latency either; the average and p95 latency are those of the model calls a provider
answered (:func:`~ext_proc.state.rows.served_latency`), not of its errors or of cut streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ext_proc.llm.prices import dollars
from ext_proc.state.rows import FILTERS, GROUPS, Row, group_of, usable, usd

__all__ = [
    "FILTERS",
    "GROUPS",
    "Row",
    "aggregate",
    "dollars",
    "filters",
    "human_count",
    "month_window",
    "parse_day",
    "sentence",
    "usd",
]


def parse_day(text: str) -> date:
    """``YYYY-MM-DD``, as given on the command line."""
    return date.fromisoformat(text)


def day_after(day: date) -> date | None:
    """The exclusive end of a report whose last day is ``day`` (None, no end, after the calendar's last)."""
    return day + timedelta(days=1) if day < date.max else None


def filters(given: Mapping[str, str | None]) -> dict[str, str] | None:
    """A report's ``where`` from its filters (:data:`FILTERS`; those not given are left out), or
    None for none. Raises ValueError for a key without its team: a key id is unique only within its
    team (``ci@search``), so a bare one would match nothing."""
    where = {name: value for name in FILTERS if (value := given.get(name))}
    key = where.get("key")
    if key and "@" not in key and key != "(none)":
        raise ValueError(f"key {key}: name a key with its team, {key}@TEAM (a key id is unique only within its team)")
    return where or None


def month_window(month: str) -> tuple[date, date]:
    """``YYYY-MM`` → [first day, first day of the next month)."""
    year, mon = (int(part) for part in month.split("-"))
    start = date(year, mon, 1)
    end = date(year + (mon == 12), 1 if mon == 12 else mon + 1, 1)
    return start, end


def record_day(record: dict[str, Any]) -> date | None:
    ts = record.get("ts")
    return datetime.fromtimestamp(ts, UTC).date() if isinstance(ts, (int, float)) else None


def aggregate(
    records: Iterable[dict[str, Any]],
    by: str,
    since: date | None = None,
    until: date | None = None,
    where: dict[str, str] | None = None,
    skipped: list[Any] | None = None,
) -> list[Row]:
    """Totals per group for records in [since, until) matching ``where``; most expensive first.
    A record without the types a report counts (an edited log) is left out (its id added to
    ``skipped``)."""
    rows: dict[str, Row] = {}
    for record in records:
        if not usable(record):
            if skipped is not None:
                skipped.append(record.get("request_id"))
            continue
        day = record_day(record)
        if day is None or (since and day < since) or (until and day >= until):
            continue
        if where and any(group_of(k, record) != v for k, v in where.items()):
            continue
        key = group_of(by, record)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(key)
        latency = row.add(record)
        if latency is not None:
            row.latencies.append(latency)
    return sorted(rows.values(), key=lambda r: (-r.cost_usd_micros, -r.tokens, r.group))


def human_count(n: int) -> str:
    """4200000 → "4.2M", 12345 → "12.3K", 950 → "950"; 999999 → "1M" (rounded up to the next
    unit, never "1000K")."""
    if n < 1_000:
        return str(n)
    for size, suffix in ((1_000, "K"), (1_000_000, "M"), (1_000_000_000, "B")):
        text = f"{n / size:.1f}"
        if float(text) < 1_000 or suffix == "B":
            return text.rstrip("0").rstrip(".") + suffix
    raise AssertionError("unreachable")


def refusals(row: Row) -> str:
    """``1 request (403)``, ``3 requests (2 × 403, 1 × 404)``."""
    statuses = sorted(row.refused_by_status.items())
    detail = statuses[0][0] if len(statuses) == 1 else ", ".join(f"{n} × {status}" for status, n in statuses)
    return f"{row.refused} request{'s' if row.refused != 1 else ''}" + (f" ({detail})" if detail else "")


def sentence(team: str, row: Row) -> str | None:
    """One plain-English line per (team, model) row, in the form the platform team asked for;
    None for a row of lookups alone (model lists, token counts: no model was called, nothing to
    say in tokens, cost or latency)."""
    calls = row.requests - row.refused - row.lookups  # model calls that went to a provider
    if calls <= 0:
        if not row.refused:
            return None
        return f"Team {team} sent nothing to {row.group}: Tollway refused its {refusals(row)} before asking a provider."
    refused = f" Tollway also refused {refusals(row)}." if row.refused else ""
    guard = _guardrails(row)
    if row.errors and not (row.latency_count or row.tokens or row.unknown_usage or row.incomplete
                           or row.abandoned_tries):
        # every call got an error answer (none served, none cut, none abandoned): no work done, nothing charged
        each = "it with an error" if calls == 1 else "each with an error"
        fired = f", and {guard}" if row.guardrails else ""
        return (f"Team {team} sent {_requests(calls)} to {row.group} and the provider answered {each} "
                f"(no tokens, nothing charged){fired}.{refused}")
    cost = dollars(row.cost_usd_micros)
    if row.unknown_cost:
        # No price for the model, or usage reported in part (a request recovered after a crash)
        n = row.unknown_cost
        cost = f"at least {cost} ({n} request's cost is unknown)" if n == 1 else \
            f"at least {cost} ({n} requests' costs are unknown)"
    elif row.cost_partial:  # usage unknown, or tries abandoned: what they cost is not in the figure
        cost = f"at least {cost}"
    notes = []
    if row.estimated:  # cut streams: their tokens are in the figures, estimated
        n = row.estimated
        notes.append(f"{n} stream{' was' if n == 1 else 's were'} cut: {'its' if n == 1 else 'their'} tokens "
                     f"are estimated.")
    if row.unknown_usage:  # answers without usage: counted, never taken for zero tokens
        their = "its" if row.unknown_usage == 1 else "their"
        notes.append(f"{_requests(row.unknown_usage)} got no usage report ({their} tokens are unknown).")
    if row.abandoned_tries:  # sent, given up at the first-byte timeout: the provider may bill them
        n = row.abandoned_tries
        notes.append(f"{n} {'try was' if n == 1 else 'tries were'} abandoned after the provider may have "
                     f"started: cost unknown.")
    if row.errors:  # an error answer did no work and costs nothing
        notes.append(f"{_requests(row.errors)} got an error answer from the provider (nothing charged).")
    tail = "".join(" " + note for note in notes) + refused
    avg = row.avg_latency_ms
    latency = f"{avg:.0f}ms" if avg is not None else "unknown"
    return (
        f"Team {team} used {human_count(row.tokens)} tokens on {row.group} ({_tokens(row)}) at a cost of {cost}, "
        f"with an average latency of {latency}, and {guard}.{tail}"
    )


def _tokens(row: Row) -> str:
    """``50.3K in, 30K of them cached; 2.7K out`` (input counts cache reads), ``1K in, 200 out``."""
    given = f"{human_count(row.input_tokens)} in"
    if row.cached_tokens:
        return f"{given}, {human_count(row.cached_tokens)} of them cached; {human_count(row.output_tokens)} out"
    return f"{given}, {human_count(row.output_tokens)} out"


def _guardrails(row: Row) -> str:
    """``3 requests triggered the PII guardrail``, most triggered first."""
    if not row.guardrails:
        return "no request triggered a guardrail"
    parts = [
        f"{count} request{'s' if count != 1 else ''} triggered the {_guardrail_name(name)} guardrail"
        for name, count in sorted(row.guardrails.items(), key=lambda item: (-item[1], item[0]))
    ]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


def _requests(n: int) -> str:
    return f"{n} request{'s' if n != 1 else ''}"


def _guardrail_name(name: str) -> str:
    return name.upper() if len(name) <= 3 else name.replace("_", " ")
