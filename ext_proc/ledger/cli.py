"""``tollway report``: spend, tokens, requests and latency by team, model, key or provider."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from datetime import timedelta
from typing import Any

import orjson

from ext_proc.ledger.log import log_files, read_records
from ext_proc.ledger.report import GROUPS, Row, aggregate, dollars, month_window, parse_day, sentence

DEFAULT_LOG = os.environ.get("TOLLWAY_LOG", ".tollway/requests.jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", default=DEFAULT_LOG,
                        help=f"request log (its rotated copies are read too); default {DEFAULT_LOG}")
    parser.add_argument("--by", choices=sorted(GROUPS), default="team", help="group by (default team)")
    parser.add_argument("--since", type=parse_day, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--until", type=parse_day, help="last day included, YYYY-MM-DD (UTC)")
    parser.add_argument("--month", help="YYYY-MM: the whole month (instead of --since/--until)")
    parser.add_argument("--team", help="only this team; with --month, print one sentence per model")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--redis", default=os.environ.get("TOLLWAY_REDIS_URL"),
                        help="read the aggregates every sidecar adds to Redis instead of a local log")


def _rows(args: argparse.Namespace, by: str) -> list[Row]:
    since, until = args.since, (args.until + timedelta(days=1)) if args.until else None
    if args.month:
        since, until = month_window(args.month)
    where = {"team": args.team} if args.team else None
    if args.redis:
        import redis

        from ext_proc.state.ledger import RedisLedger

        return RedisLedger(redis.Redis.from_url(args.redis)).rows(by, since, until, where)
    return aggregate(read_records(log_files(args.log)), by, since, until, where)


def report_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [row.as_dict() for row in _rows(args, args.by)]


COLUMNS = ("group", "requests", "tokens", "input_tokens", "output_tokens", "cost_usd", "avg_latency_ms",
           "p95_latency_ms", "guardrail_triggers", "fallbacks", "unknown_usage", "unknown_cost")


def run(args: argparse.Namespace) -> int:
    if args.team and args.month and args.format == "table" and args.by == "team":
        per_model = _rows(args, "model")
        if not per_model:
            print(f"Team {args.team} sent no requests in {args.month}.")
        for row in per_model:
            print(sentence(args.team, row))
        return 0
    rows = report_rows(args)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*COLUMNS, "cached_tokens", "reasoning_tokens", "cost_usd_micros"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        sys.stdout.write(out.getvalue())
    else:
        print(_table(rows, args.by))
    return 0


def _table(rows: list[dict[str, Any]], by: str) -> str:
    def fmt(row: dict[str, Any], col: str) -> str:
        value = row[col]
        if col == "cost_usd":
            text = dollars(row["cost_usd_micros"])
            return text + ("+" if row["unknown_cost"] else "")
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
