"""``tollway budgets``: each budget's spend, open reservations, what is left and when it resets.

The policy says which budgets exist and their limits; the counters (in Redis, in the node's
parent, or in a single worker's memory: see :mod:`ext_proc.state.limits`) say what was spent and
what is held right now by requests in flight and by workers' leases. :func:`rows` joins the two
for the current window of every budget (a ``team: "*"`` budget has one row per team that used it);
the admin endpoint ``/v1/budgets`` serves the same rows as JSON, the dashboard shows them and the
budget gauges sum them. A budget lists only the counters named as requests name them now: its own
member, or a "*" budget's members (see :func:`_named_now`); counters of an older naming (a key
before it counted with its team) are neither shown nor summed, until their window ends.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from ext_proc.ledger.cli import _redacted
from ext_proc.policy.compiled import Budget, CompiledPolicy, budget_counter, budget_parts, period_window


def rows(
    policy: CompiledPolicy, counters: dict[str, tuple[int, int]], now: float | None = None
) -> list[dict[str, Any]]:
    """One row per budget, unit and member in the current window (see the module docstring)."""
    now = time.time() if now is None else now
    used: dict[tuple[str, str, str], set[str]] = {}  # (budget, unit, window) -> members with a counter
    for counter in counters:
        parts = budget_parts(counter)
        if parts is not None:
            used.setdefault((parts[0], parts[1], parts[3]), set()).add(parts[2])
    out = []
    for budget in policy.limits.budgets:
        window, resets = period_window(budget.period, budget.timezone, now)
        for unit, limit in (("usd", budget.usd_micros), ("tokens", budget.tokens)):
            if limit is None:
                continue
            members = {budget.member} if budget.member != "*" else {
                member for member in used.get((budget.name, unit, window), ()) if _named_now(policy, budget, member)}
            for member in sorted(members):
                spent, held = counters.get(budget_counter(budget.name, unit, member, window), (0, 0))
                row: dict[str, Any] = {
                    "budget": budget.name, "scope": budget.scope, "member": member, "unit": unit, "window": window,
                    "limit": limit, "spent": spent, "held": held, "remaining": max(0, limit - spent - held),
                    "percent": round(spent * 100 / limit, 1) if limit else None,
                    "resets_at": datetime.datetime.fromtimestamp(resets, datetime.UTC).isoformat(),
                    "enforce": "hard" if budget.hard else "soft",
                }
                if unit == "usd":
                    row.update({name + "_usd": f"{row[name] / 1e6:.6f}".rstrip("0").rstrip(".")
                                for name in ("limit", "spent", "held", "remaining")})
                out.append(row)
    return out


def _named_now(policy: CompiledPolicy, budget: Budget, member: str) -> bool:
    """Whether a member of a "*" budget is named as requests name it now: a key as its id with its
    team (a bare id is an older naming), a model by its public name (its aliases counted on their
    own before) or a routing alias; a model no longer in the policy keeps its row."""
    if budget.scope == "key":
        return "@" in member
    target = policy.models.get(member) if budget.scope == "model" else None
    return target is None or target.public == member


def _amount(row: dict[str, Any], name: str) -> str:
    if row["unit"] == "usd":
        return "$" + str(row[name + "_usd"])
    return f"{row[name]:,}"


def table(found: list[dict[str, Any]]) -> str:
    if not found:
        return "no budgets in the policy"
    head = ("budget", "member", "unit", "spent", "open", "remaining", "limit", "used", "resets (UTC)", "")
    lines = [head]
    for row in found:
        lines.append((row["budget"], row["member"], row["unit"], _amount(row, "spent"), _amount(row, "held"),
                      _amount(row, "remaining"), _amount(row, "limit"), f"{row['percent']}%",
                      row["resets_at"][:16].replace("T", " "), "soft" if row["enforce"] == "soft" else ""))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


DEFAULT_ADMIN = "http://127.0.0.1:9902"  # tollway up's (make run's) admin, and tollway serve's default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="the policy whose budgets to show")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--redis", help="the Redis every sidecar shares (redis://host:6379/0; default "
                                        "TOLLWAY_REDIS_URL, which keeps a password off the command line)")
    source.add_argument("--admin", help="a running service's admin address (default, without --redis or "
                                        f"TOLLWAY_REDIS_URL: {DEFAULT_ADMIN}, the one make run starts)")
    parser.add_argument("--admin-token-file", default=None,
                        help="the admin token's file, when the service asks for one (with --admin also env "
                             "TOLLWAY_ADMIN_TOKEN_FILE, or the token in TOLLWAY_ADMIN_TOKEN; the default admin "
                             "address gets no token from the environment)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read the policy: not UTF-8 text ({exc.reason} at byte {exc.start})"
    return str(exc)


def run(args: argparse.Namespace) -> int:
    from ext_proc.policy.compile import PolicyError, compile_policy

    try:
        policy = compile_policy(Path(args.policy).read_text(encoding="utf-8"), args.policy)
    except (OSError, PolicyError, UnicodeDecodeError) as exc:
        print(f"tollway budgets: {_unreadable(exc)}", file=sys.stderr)
        return 1
    redis_url = args.redis or (None if args.admin else os.environ.get("TOLLWAY_REDIS_URL"))
    # Neither: the local service's admin (make run's). A token from the environment goes only to an
    # address given: whatever listens on the default port when Tollway does not would get it.
    admin = args.admin or DEFAULT_ADMIN
    token_file = args.admin_token_file or (os.environ.get("TOLLWAY_ADMIN_TOKEN_FILE") if args.admin else None)
    try:
        if redis_url:
            found = asyncio.run(_from_redis(redis_url, policy))
        else:
            found = _from_admin(admin, token_file, environ=bool(args.admin))
    except _Refused as exc:
        print(f"tollway budgets: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line for a person, never a traceback
        where = f"Redis at {_redacted(redis_url)}" if redis_url else _redacted(admin)
        why = _why(exc, redis_url or admin, redis=bool(redis_url))
        if getattr(exc, "code", None) == 401:
            given = " or TOLLWAY_ADMIN_TOKEN" if args.admin else f"; or --admin {admin} to use TOLLWAY_ADMIN_TOKEN"
            why = f"it needs the admin token (--admin-token-file{given})"
        elif isinstance(getattr(exc, "reason", None), OSError) and not redis_url and not args.admin:
            why += ("; the default is the admin of make run (tollway serve) on this machine: is it running? "
                    "Else give --redis URL (or TOLLWAY_REDIS_URL) or --admin ADDRESS")
        print(f"tollway budgets: cannot read the counters from {where}: {why}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(found))
    return 0


async def _from_redis(url: str, policy: CompiledPolicy) -> list[dict[str, Any]]:
    from ext_proc.state.limits import RedisBackend

    backend = RedisBackend.from_url(url, deadline=3.0)
    try:
        return rows(policy, await backend.scan("budget/"))
    finally:
        await backend.close()


class _Refused(Exception):
    """A mistake in what was given (an address, the token's file): one line for the user, as it is."""


def _why(exc: Exception, url: str, redis: bool) -> str:
    """Why reading the counters failed, in words, never the user or password in ``url``."""
    if isinstance(exc, urllib.error.HTTPError):
        why = _told(exc) or f"it answered {exc.code} {exc.reason}".rstrip()
    elif isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        why = (reason.strerror or str(reason) or type(reason).__name__) if isinstance(reason, OSError) else str(reason)
    elif isinstance(exc, ValueError) and redis:
        why = "not a valid Redis URL"  # its text may quote a piece of the URL (the password, taken for a port)
    elif isinstance(exc, TimeoutError):
        why = "no answer in time"
    elif isinstance(exc, (KeyError, TypeError, orjson.JSONDecodeError)):
        why = "its answer is not Tollway's budgets (is it a Tollway admin address?)"
    else:
        why = str(exc) or type(exc).__name__
    secret = url.partition("://")[2].rpartition("@")[0]
    return why.replace(secret, "***") if secret else why


def _told(exc: urllib.error.HTTPError) -> str | None:
    """The message of the admin's error answer (its 503 when the store does not answer), one line of
    it; None: no such answer."""
    try:
        message = orjson.loads(exc.read(4096))["error"]["message"]
    except Exception:
        return None
    return " ".join(message.split())[:300] if isinstance(message, str) and message.strip() else None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is refused, not followed: urllib would send the admin token on to wherever it points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        moved = f" (to {_redacted(newurl)[:200]})" if newurl else ""
        raise _Refused(f"{_redacted(req.full_url)} answered {code}{moved}; redirects are not followed (they "
                       "would carry the admin token elsewhere): give --admin the address that answers itself")


def _from_admin(url: str, token_file: str | None = None, environ: bool = True) -> list[dict[str, Any]]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = f" {_redacted(url)}" if "://" in url else ""
        raise _Refused(f"--admin{shown}: not an http:// or https:// address "
                       "(e.g. http://127.0.0.1:9902)")
    if "@" in parts.netloc:
        raise _Refused(f"--admin {_redacted(url)}: a user or password in the address is not sent; the admin "
                       "takes its token from --admin-token-file (or TOLLWAY_ADMIN_TOKEN)")
    token = os.environ.get("TOLLWAY_ADMIN_TOKEN") if environ else None
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise _Refused(f"cannot read the admin token file {token_file}: {why}") from None
        if not token:
            raise _Refused(f"the admin token file {token_file} is empty")
    if token and any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):  # as the service's own check; never shown
        where = f"in the admin token file {token_file}" if token_file else "in TOLLWAY_ADMIN_TOKEN"
        raise _Refused(f"the admin token {where} is not one line of printable ASCII without spaces "
                       "(as the service's own token must be)")
    request = urllib.request.Request(url.rstrip("/") + "/v1/budgets")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirects)
    with opener.open(request, timeout=5) as response:  # the operator's URL
        found: list[dict[str, Any]] = orjson.loads(response.read())["budgets"]
        return found
