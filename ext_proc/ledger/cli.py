"""``tollway report``: spend, tokens, requests and latency by team, model, key, provider or upstream model."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from datetime import UTC, date, datetime
from typing import Any

import orjson

from ext_proc.ledger.log import log_files, read_records
from ext_proc.ledger.report import (
    GROUPS,
    Row,
    aggregate,
    day_after,
    dollars,
    filters,
    month_window,
    parse_day,
    sentence,
    usd,
)

DEFAULT_LOG = os.environ.get("TOLLWAY_LOG", ".tollway/requests.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help=f"request log (its rotated copies are read too); default {DEFAULT_LOG}, "
                                      "unless TOLLWAY_REDIS_URL is set (then those aggregates)")
    parser.add_argument("--by", choices=sorted(GROUPS), default="team",
                        help="group by (default team); a key is named with its team, ci@search; upstream: the "
                             "model that served, as the policy names it at its provider")
    parser.add_argument("--since", type=_day, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--until", type=_day, help="last day included, YYYY-MM-DD (UTC)")
    parser.add_argument("--month", type=_month, help="YYYY-MM: the whole month (instead of --since/--until)")
    parser.add_argument("--team", help="only this team: one sentence per model (this month, unless --month, "
                                       "--since or --until say otherwise)")
    for name, example in (("key", "ci@search (a key with its team)"), ("model", "gpt-4o (the name asked for)"),
                          ("provider", "anthropic"), ("upstream", "gpt-4o (the model that served)")):
        parser.add_argument(f"--{name}", help=f"only this {name}: {example}; with --team and the others, "
                                             "all must match")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--redis", help="read the aggregates every sidecar adds to Redis instead of a local log "
                                        "(default TOLLWAY_REDIS_URL, unless --log is given)")


def _day(text: str) -> date:
    try:
        return parse_day(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD (e.g. 2026-10-31), got {text!r}") from None


def _month(text: str) -> str:
    try:
        month_window(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a month as YYYY-MM (e.g. 2026-10), got {text!r}") from None
    return text


class ReportError(Exception):
    """A user mistake or an unreachable source: one line for the user."""


def _redacted(url: str) -> str:
    """A Redis URL as a message may show it: its scheme and what follows its last ``@`` (or the
    whole when there is none), never its user or password, whatever else is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(not a URL)"
    _, at, after = rest.rpartition("@")
    return f"{scheme}://***@{after}" if at else url


def _rows(args: argparse.Namespace, by: str) -> list[Row]:
    if args.month and (args.since or args.until):
        raise ReportError("--month is a whole month: give it or --since/--until, not both")
    if args.since and args.until and args.since > args.until:
        raise ReportError(f"--since {args.since} is after --until {args.until}: nothing is in between")
    since, until = args.since, day_after(args.until) if args.until else None
    if args.month:
        since, until = month_window(args.month)
    try:
        where = filters(vars(args))
    except ValueError as exc:
        raise ReportError(f"--{exc}") from None
    redis_url = args.redis or (None if args.log else os.environ.get("TOLLWAY_REDIS_URL"))
    if redis_url:
        import redis

        from ext_proc.state.ledger import RedisLedger

        try:
            client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
            return RedisLedger(client).rows(by, since, until, where)
        except ValueError:  # its text may quote a piece of the URL (the password, taken for a port)
            raise ReportError(f"--redis {_redacted(redis_url)}: not a valid Redis URL") from None
        except redis.RedisError as exc:
            raise ReportError(f"cannot read Redis at {_redacted(redis_url)}: {exc}") from None
    log = args.log or DEFAULT_LOG
    files = log_files(log)
    if not files:
        raise ReportError(f"no request log at {log} (the gateway writes it: `make run`, or "
                          "`tollway serve --log-file`; pass --log PATH, or --redis URL)")
    skipped: list[Any] = []
    unreadable: list[str] = []
    try:
        rows = aggregate(read_records(files, unreadable), by, since, until, where, skipped)
    except OSError as exc:
        raise ReportError(f"cannot read {exc.filename}: {exc.strerror}") from None
    if unreadable:  # (a torn last line, a crash mid-write, is no news)
        print(f"tollway report: {len(unreadable)} line(s) of {log} left out: not JSON records (the first at "
              f"{unreadable[0]}; a corrupted or edited log?)", file=sys.stderr)
    if skipped:
        print(f"tollway report: {len(skipped)} record(s) of {log} left out: not the types a record has "
              f"(an edited log?)", file=sys.stderr)
    return rows


def report_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [row.as_dict() for row in _rows(args, args.by)]


COLUMNS = ("group", "requests", "refused", "lookups", "tokens", "input_tokens", "output_tokens", "cost_usd",
           "avg_latency_ms", "p95_latency_ms", "guardrail_triggers", "fallbacks", "unknown_usage", "unknown_cost",
           "abandoned_tries")
# CSV: a column added later comes last, so a reader by position finds the others where they were.
CSV_COLUMNS = (*(c for c in COLUMNS if c not in ("lookups", "abandoned_tries")), "cached_tokens", "reasoning_tokens",
               "cost_usd_micros", "lookups", "abandoned_tries", "estimated", "cost_partial")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ReportError as exc:
        print(f"tollway report: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.team and args.format == "table" and args.by == "team":
        window = args.month
        if not (args.month or args.since or args.until):
            window = args.month = datetime.now(UTC).strftime("%Y-%m")  # this month
        elif not window:
            window = f"{args.since or 'the beginning'} to {args.until or 'today'}"
        per_model = _rows(args, "model")
        for row in per_model:  # --upstream: what that model served of each name asked for ("gpt-4o via smart")
            if args.upstream and row.group != args.upstream:
                row.group = f"{args.upstream} via {row.group}"
        told = [line for line in (sentence(args.team, row) for row in per_model) if line is not None]
        if not per_model:
            print(f"Team {args.team} sent no requests in {window}.")
        elif not told:  # model lists and token counts alone
            lookups = sum(row.lookups for row in per_model)
            print(f"Team {args.team} called no model in {window}: its {lookups} request{'s' if lookups != 1 else ''} "
                  f"listed models or counted tokens.")
        for line in told:
            print(line)
        return 0
    rows = report_rows(args)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for found in rows:  # plain decimals, never 8e-06
            writer.writerow({**found, "cost_usd": f"{usd(found['cost_usd_micros']):f}"})
        sys.stdout.write(out.getvalue())
    else:
        print(_table(rows, args.by))
    return 0


def _table(rows: list[dict[str, Any]], by: str) -> str:
    def fmt(row: dict[str, Any], col: str) -> str:
        value = row[col]
        if col == "cost_usd":
            text = dollars(row["cost_usd_micros"])
            return text + ("+" if row["cost_partial"] else "")  # at least: some usage, price or try unknown
        if value is None:
            return "-"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    header = [by, *COLUMNS[1:]]
    body = [[fmt(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(header)]

    def join(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    lines = [join(header), *(join(line) for line in body)]
    if not rows:
        lines.append("(no requests in this window)")
    return "\n".join(lines)
