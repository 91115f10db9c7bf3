"""Spend aggregates per day, team, model, key, provider (and upstream model), in Redis or in-process.

Each finished request adds to one bucket, keyed by (UTC day, team, model, key id, provider), and
to one *upstream bucket*, keyed by those and the upstream model (the model that served, as the
policy names it at its provider): request count, lookups (model lists, token counts),
input/output/cached/reasoning tokens, cost in integer micro-dollars, counts of unknown usage and
unknown cost, refused requests by status, guardrail triggers, fallbacks, provider errors and cut
streams, and the latency of the model calls a provider answered
(:func:`~ext_proc.state.rows.served_latency`) as a sum plus a fixed histogram
(``served_*``: so averages are exact and p95 is read from the histogram, to its bucket's upper
bound). Buckets an older Tollway wrote hold instead ``latency_*``, the latencies of every request
it did not refuse, read as they are (a bucket with ``served_*`` fields reads only those: on the
day of an upgrade, the requests after it). A sent request also adds 1 to
``outcomes``: buckets written before the outcome was counted have requests without it, whose
errors and cut streams are unknown (:attr:`~ext_proc.state.rows.Row.unknown_outcome`), not 0.
A bucket keeps the team and the key id apart, and a report by key names a key with its team
(``ci@search``, :func:`~ext_proc.state.rows.group_of`): buckets written before reports did so
read that way too, nothing to migrate.

The upstream buckets are aggregates of their own, beside the five-part buckets, not a sixth part
of their keys: the release before this dimension reads the five-part buckets (its keys, its day
index, its spool lines) and nothing else, and a bucket key with a sixth part broke its reports
(during a rolling upgrade, after a rollback). So the five-part buckets stay exactly what that
release writes and reads, and either release reads what the other wrote with the same totals.
Every report reads them but one by upstream model (grouped by it, or filtered by it), which reads
the upstream buckets, and what the five-part buckets hold beyond them as
:data:`~ext_proc.state.rows.UNKNOWN` (:func:`_by_upstream`): requests an older Tollway counted,
before the upgrade or on its pods during it. A :data:`Summed` holds both kinds: a five-part bucket
(``bucket[:5]``) and a six-part one (day, the four dimensions, the upstream model) per record.

:class:`RedisLedger` keeps the buckets in Redis, where every sidecar adds to them with
``HINCRBY`` (atomic per field, so any number of sidecars can add to one Redis), batches in one
script (several per call: a sender's backlog goes in one round trip) that adds a batch only if
its seq is above its source's high-water mark (one key per source: its batches come in order),
so a batch sent again after a timeout, in whatever grouping, adds nothing twice (to either kind
of bucket: a batch's five-part and upstream buckets are in the same call), and indexes buckets per
day in a set (``<prefix>:day:<day>``; the upstream buckets, ``<prefix>:u:b:…``, in
``<prefix>:u:day:<day>``, names the release before never reads). Buckets are bounded: a model
name that the policy does not know (``known``) and that no provider served (a refused request's,
or a provider's error answer's in open mode) is counted as :data:`OTHER` (:func:`bucket_of`), the
upstream model alike (a policy's target names one it knows; open mode's is the name asked for), and
a day's buckets and its set expire :data:`RETENTION_DAYS` after the day (both kinds alike). The
service keeps aggregates only there (``--redis``): without Redis, reports and the dashboard read
the request log, which stays the complete record either way. :class:`MemoryLedger` keeps the same
buckets in a dictionary, never pruned: the
reference the Redis buckets are tested against, not for a process that lives long. Both answer
:meth:`rows` with the report's :class:`~ext_proc.state.rows.Row`, and :meth:`cells` with a row
per (day, team, model, provider) (the dashboard's).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar

import orjson

from ext_proc.state.rows import (
    Row,
    abandoned_tries,
    error_answer,
    estimated,
    fell_back,
    group_of,
    lookup,
    served_latency,
    went_upstream,
)

# Latency histogram upper bounds in ms (the last bucket is open-ended). Minutes too: a reasoning
# model's answer or a long stream takes them. (The three past 60 s came later: a bucket an older
# Tollway wrote as "over 60 s" reads as 60-120 s.)
LATENCY_BOUNDS = (25, 50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
                  120000, 300000, 600000)
DIMENSIONS = ("team", "model", "key_id", "provider", "upstream_model")  # a five-part bucket's: the first four
SEP = "\x1f"  # between dimension values in a bucket key (never in names the policy allows)
OTHER = "(other)"  # a model name the policy does not know and no provider served (the caller's free text)
RETENTION_DAYS = 731  # a day's buckets (and its index) expire this many days after the day ends: two years

Bucket = tuple[str, ...]  # day, team, model, key id, provider (an upstream bucket: and the upstream model)
Cell = tuple[str, str, str, str]  # day, team, model, provider ("(none)" for none)
K = TypeVar("K", str, Cell)
BATCH_TTL = 86_400  # seconds a batch id's mark is kept (a batch sent again within it adds nothing)
SOURCE_TTL = 30 * 86_400  # seconds a source's high-water mark is kept after its last batch was added
# A batch's key: an id (marked once, for BATCH_TTL: the per-batch marks an older Tollway sends) or
# (source, seq): the batch numbered ``seq`` of an outbox that sends its batches in order, added if
# above the source's high-water mark (:meth:`RedisLedger.add_summed`).
BatchKey = str | tuple[str, int]
# Batches at most once each, any number in one call (atomic), in order: for each batch (KEYS[k],
# its mark key) either (its seq empty) a mark by id, set if new (SET NX EX ARGV[1]), or (its seq a
# number) its source's high-water mark, raised to seq (SET EX ARGV[2]: refreshed) if below it;
# a batch whose mark was new, or whose seq was above the mark, then adds, for each of its
# buckets, the day's set, its counts and their expiry (the same instant for a day's set and
# buckets: they go together); the others (sent before, in this grouping or another) are skipped.
# Returns how many batches were added. ARGV: the id marks' ttl, the high-water marks' ttl, then
# per batch: its seq ('' for an id), its number of buckets, then per bucket: the day's set, the
# bucket's key, when it expires (Unix seconds, 0: never), the number of counts, name/value pairs.
# (An older Tollway's script, the id marks only, keeps working beside it: its keys are its own.)
_ONCE = """
local i = 3
local added = 0
for k = 1, #KEYS do
  local seq, m = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local new
  if seq == '' then
    new = redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[1])
  else
    new = tonumber(seq) > tonumber(redis.call('GET', KEYS[k]) or '0')
    if new then redis.call('SET', KEYS[k], seq, 'EX', ARGV[2]) end
  end
  if new then added = added + 1 end
  for _ = 1, m do
    local day, key, at, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if new then
      redis.call('SADD', day, key)
      for j = 0, n - 1 do redis.call('HINCRBY', key, ARGV[i + 4 + 2 * j], ARGV[i + 5 + 2 * j]) end
      if at > 0 then
        redis.call('EXPIREAT', key, at)
        redis.call('EXPIREAT', day, at)
      end
    end
    i = i + 4 + 2 * n
  end
end
return added
"""
# A report's read: each bucket's fields and values (HGETALL) as one JSON string, so the client
# parses one reply per bucket, not one per field and value (the pure-Python parser took most of
# a report's time). A Redis that refuses scripts is read with a pipeline of HGETALL instead.
_READ = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = cjson.encode(redis.call('HGETALL', key)) end
return out
"""
Summed = dict[Bucket, dict[str, int]]  # a batch's counts, added up per bucket, of both kinds (:func:`summed`)
UPSTREAM = ":u"  # after the prefix: the upstream buckets' keys and day index (the release before reads neither)


def bucket_of(record: dict[str, Any], known: Callable[[str], bool] | None = None) -> Bucket | None:
    """The record's upstream bucket (its first five parts: its bucket). A model name is its own
    only when it names a model: one the policy knows (``known``: the policy's model names, none
    in open mode) or one a provider served (:func:`provider_served`). Any other name is
    whatever the caller sent, counted as :data:`OTHER`: a bucket per made-up name would grow
    Redis by one hash per name and day, kept two years. That is a refused request's name the policy
    does not know (an unknown key's 401, a malformed
    body's 400) and, in open mode (no policy, the caller's own key), a name the provider answered
    with an error (a junk key's 401, an unknown model's 404): the record keeps the name. Without
    ``known`` (the reference ledger) every name is kept but an unknown model's 404
    (``model_not_found``), which says itself that the name is none. The upstream model (the
    serving target's ``upstream_model``) follows the same rule: a policy's target names a model it
    knows; open mode sends the name asked for, counted as :data:`OTHER` when the model is."""
    ts = record.get("ts")
    if not isinstance(ts, (int, float)):
        return None
    day = datetime.fromtimestamp(ts, UTC).date().isoformat()
    team, model, key, provider, upstream = (str(record.get(d) or "") for d in DIMENSIONS)

    def named(name: str) -> bool:
        return not name or (known(name) if known is not None else record.get("error") != "model_not_found")

    if not (named(model) and named(upstream)) and not provider_served(record):
        model, upstream = (name if named(name) else OTHER for name in (model, upstream))
    return day, team, model, key, provider, upstream


def provider_served(record: dict[str, Any]) -> bool:
    """Whether a provider served the request's model: it went upstream and the answer named the
    model that served (``served_model``) or reported usage (not tokens Tollway estimated for a
    stream cut before any, nor a local answer's zeros). A provider's error answer does neither:
    the name may be anything the caller made up."""
    if record.get("outcome") == "rejected" or not went_upstream(record):
        return False
    if record.get("served_model"):
        return True
    reported = record.get("input_tokens") is not None or record.get("output_tokens") is not None
    return reported and record.get("input_estimated") is not True and record.get("output_estimated") is not True


def increments(record: dict[str, Any]) -> dict[str, int]:
    """The counters one record adds to its bucket (a refused request: its count, its status and the
    guardrails that fired, a blocking one among them)."""
    if record.get("outcome") == "rejected":
        refused = {"requests": 1, "refused": 1, f"refused:{record.get('status') or '?'}": 1}
        return refused | _guardrails(record)
    inp, out = record.get("input_tokens"), record.get("output_tokens")
    cost = record.get("cost_usd_micros")
    outcome = record.get("outcome")
    fields = {
        "requests": 1,
        "lookups": int(lookup(record)),
        "input_tokens": inp or 0,
        "output_tokens": out or 0,
        "cached_tokens": record.get("cached_tokens") or 0,
        "reasoning_tokens": record.get("reasoning_tokens") or 0,
        "cost_usd_micros": cost or 0,
        "unknown_usage": int(inp is None and out is None and outcome != "error" and went_upstream(record)),
        "unknown_cost": int(cost is None and (inp is not None or out is not None)),
        "fallbacks": int(fell_back(record)),
        "abandoned_tries": abandoned_tries(record),
        "estimated": int(estimated(record)),
        "outcomes": 1,  # this request's errors and cut streams are counted (older buckets lack them)
        "errors": int(error_answer(record)),
        "incomplete": int(outcome == "incomplete"),
    }
    fields |= _guardrails(record)
    latency = served_latency(record)  # model calls a provider answered (older buckets: latency_*, every request)
    if latency is not None:
        fields["served_us_sum"] = round(latency * 1000)
        fields["served_n"] = 1
        fields[f"served_le:{bisect.bisect_left(LATENCY_BOUNDS, latency)}"] = 1
    return {k: v for k, v in fields.items() if v}


def summed(records: Iterable[dict[str, Any]], known: Callable[[str], bool] | None = None) -> Summed:
    """The records' counts added up per bucket (a batch's records often share a few): each record's
    in its five-part bucket and in its upstream bucket."""
    buckets: dict[Bucket, dict[str, int]] = {}
    for record in records:
        bucket = bucket_of(record, known)
        if bucket is None:
            continue
        counts = increments(record).items()
        for key in (bucket[:5], bucket):
            counters = buckets.setdefault(key, {})
            for name, value in counts:
                counters[name] = counters.get(name, 0) + value
    return buckets


def _guardrails(record: dict[str, Any]) -> dict[str, int]:
    fired = set(record.get("guardrails") or ())
    return {f"guardrail:{name}": 1 for name in fired} | ({"guardrail_triggers": 1} if fired else {})


def by_upstream(by: str, where: dict[str, str] | None) -> bool:
    """Whether a report reads the upstream buckets: grouped or filtered by the upstream model."""
    return by == "upstream" or "upstream" in (where or {})


def _rows(buckets: Iterable[tuple[Bucket, dict[str, int]]], by: str, since: date | None, until: date | None,
          where: dict[str, str] | None) -> list[Row]:
    rows = _grouped(buckets, lambda bucket: group_of(by, _dimensions(bucket)), since, until, where)
    return sorted((r for r in rows.values() if r.requests), key=lambda r: (-r.cost_usd_micros, -r.tokens, r.group))


def _by_upstream(five: Iterable[tuple[Bucket, dict[str, int]]],
                 upstream: Iterable[tuple[Bucket, dict[str, int]]]) -> Iterator[tuple[Bucket, dict[str, int]]]:
    """What a report by upstream model adds up: the upstream buckets, and what the five-part
    buckets hold beyond them, as buckets without an upstream model (``(unknown)`` by it,
    :func:`~ext_proc.state.rows.group_of`): each five-part bucket, less each upstream bucket (its
    counts negated, under its first five parts). This release adds a request to both, so only
    the requests an older Tollway counted are left, in the rows they belong to (a day before the
    upgrade, an older pod's during it, a rollback's); a row left with no request is none
    (:func:`_rows`)."""
    yield from five
    for bucket, counters in upstream:
        yield bucket, counters
        yield bucket[:5], {name: -value for name, value in counters.items()}


def _dimensions(bucket: Bucket) -> dict[str, str]:
    """A bucket's dimensions by record field (a five-part bucket: no ``upstream_model``)."""
    return dict(zip(DIMENSIONS, bucket[1:], strict=False))


def _cell(bucket: Bucket) -> Cell:
    return bucket[0], bucket[1] or "(none)", bucket[2] or "(none)", bucket[4] or "(none)"


def _grouped(buckets: Iterable[tuple[Bucket, dict[str, int]]], key: Callable[[Bucket], K],
                since: date | None, until: date | None, where: dict[str, str] | None) -> dict[K, Row]:
    """The buckets in [since, until) matching ``where`` (what :func:`group_of` names them), added up
    per ``key(bucket)``."""
    rows: dict[K, Row] = {}
    sums: dict[K, tuple[int, int, int]] = {}
    for bucket, counters in buckets:
        day = date.fromisoformat(bucket[0])
        if (since and day < since) or (until and day >= until):
            continue
        if where and any(group_of(k, _dimensions(bucket)) != v for k, v in where.items()):
            continue
        group = key(bucket)
        row = rows.get(group)
        if row is None:
            name = group if isinstance(group, str) else "/".join(group)
            row = rows[group] = Row(name, histogram=[0] * (len(LATENCY_BOUNDS) + 1))
        # One pass over the bucket's counters (a report reads hundreds of thousands of buckets).
        # The latencies of the model calls a provider answered (served_*), and those an older
        # Tollway wrote (latency_*: every request it did not refuse, lookups, errors and cut
        # streams too). Both add up: sidecars of both versions write to one bucket until every
        # pod has restarted, and this version never writes latency_*.
        total, n, outcomes = sums.get(group, (0, 0, 0))
        histogram = row.histogram
        for name, value in counters.items():
            if name in _SUMMED:
                setattr(row, name, getattr(row, name) + value)
            elif name.startswith(("served_le:", "latency_le:")):
                i = name.partition(":")[2]
                if i.isdigit() and int(i) < len(histogram):
                    histogram[int(i)] += value
            elif name in ("served_us_sum", "latency_us_sum"):
                total += value
            elif name in ("served_n", "latency_n"):
                n += value
            elif name == "outcomes":
                outcomes += value
            elif name.startswith("guardrail:"):
                row.guardrails[name[10:]] = row.guardrails.get(name[10:], 0) + value
            elif name.startswith("refused:"):
                row.refused_by_status[name[8:]] = row.refused_by_status.get(name[8:], 0) + value
        sums[group] = (total, n, outcomes)
    for group, row in rows.items():
        total, n, outcomes = sums[group]
        row.latency_sum_ms, row.latency_count = total / 1000, n
        row.p95_bound_ms = _p95_bound(row.histogram) if n else None
        row.unknown_outcome = row.requests - row.refused - outcomes
    return rows


# A bucket's counters a report row adds up as they are.
_SUMMED = frozenset(("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
                     "cost_usd_micros", "unknown_usage", "unknown_cost", "guardrail_triggers", "fallbacks",
                     "refused", "lookups", "errors", "incomplete", "abandoned_tries", "estimated"))


def _p95_bound(histogram: list[int]) -> float:
    """The upper bound of the histogram bucket holding the 95th percentile (open last bucket, over
    ten minutes: its floor)."""
    target = -(-95 * sum(histogram) // 100)
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= target:
            return float(LATENCY_BOUNDS[min(i, len(LATENCY_BOUNDS) - 1)])
    return float(LATENCY_BOUNDS[-1])


class Ledger(Protocol):
    def add(self, records: list[dict[str, Any]], batch: str | None = None) -> None: ...

    def summed(self, records: Iterable[dict[str, Any]]) -> Summed: ...

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int: ...

    def rows(self, by: str, since: date | None = None, until: date | None = None,
             where: dict[str, str] | None = None) -> list[Row]: ...

    def cells(self, since: date, until: date) -> dict[Cell, Row]: ...


class MemoryLedger:
    """Buckets in this process, never pruned (the tests' reference; the service keeps none).
    ``known``: see :func:`bucket_of`."""

    def __init__(self, known: Callable[[str], bool] | None = None) -> None:
        self.buckets: dict[Bucket, dict[str, int]] = {}  # the five-part buckets (the release before's)
        self.upstream: dict[Bucket, dict[str, int]] = {}  # the upstream buckets (six parts)
        self.known = known
        self.marks: set[str] = set()  # the batch ids added (never expire here)
        self.high: dict[str, int] = {}  # each source's high-water mark (never expires here)

    def add(self, records: list[dict[str, Any]], batch: str | None = None) -> None:
        if batch is not None:
            self.add_summed([(batch, self.summed(records))])
            return
        self._add(self.summed(records))

    def summed(self, records: Iterable[dict[str, Any]]) -> Summed:
        return summed(records, self.known)

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
        """Add, in order, each batch whose id was never added or whose seq is above its source's
        high-water mark (see :meth:`RedisLedger.add_summed`)."""
        added = 0
        for batch, counts in batches:
            if isinstance(batch, str):
                if batch in self.marks:
                    continue
                self.marks.add(batch)
            else:
                source, seq = batch
                if seq <= self.high.get(source, 0):
                    continue
                self.high[source] = seq
            self._add(counts)
            added += 1
        return added

    def _add(self, buckets: Summed) -> None:
        for bucket, counts in buckets.items():
            counters = (self.buckets if len(bucket) == 5 else self.upstream).setdefault(bucket, {})
            for name, value in counts.items():
                counters[name] = counters.get(name, 0) + value

    def rows(self, by: str, since: date | None = None, until: date | None = None,
             where: dict[str, str] | None = None) -> list[Row]:
        if by_upstream(by, where):
            return _rows(_by_upstream(self.buckets.items(), self.upstream.items()), by, since, until, where)
        return _rows(self.buckets.items(), by, since, until, where)

    def cells(self, since: date, until: date) -> dict[Cell, Row]:
        """A row per (day, team, model, provider) in [since, until) (the five-part buckets)."""
        return _grouped(self.buckets.items(), _cell, since, until, None)


READ_CHUNK = 250  # buckets a report reads from Redis per round trip (RedisLedger._buckets): the read
# script runs atomically, so other clients (the limits) wait behind it: 23 ms a chunk of 1,000
# buckets of 60 fields measured (SLOWLOG), a rate-limit INCR's worst wait 51 ms then, 23 ms at 250
FIRST_DAY_SCAN = 400  # days: a longer report range starts at the ledger's first day (found by a scan)


class RedisLedger:
    """Buckets in Redis (``redis.Redis``, synchronous: call it off the event loop). ``known``: see
    :func:`bucket_of`. A day's buckets and its index expire ``retention_days`` after the day ends
    (None: never)."""

    def __init__(self, client: Any, prefix: str = "tollway:ledger", known: Callable[[str], bool] | None = None,
                 retention_days: int | None = RETENTION_DAYS) -> None:
        self.client = client
        self.prefix = prefix
        self.known = known
        self.retention_days = retention_days
        self._read: Any = None  # the _READ script, registered on first use; False: Redis refused it

    def _space(self, bucket: Bucket) -> str:
        """Where a bucket's key and its day's index are: the prefix (a five-part bucket, as the
        release before names it) or, for an upstream bucket, the prefix and :data:`UPSTREAM`."""
        return self.prefix if len(bucket) == 5 else self.prefix + UPSTREAM

    def _key(self, bucket: Bucket) -> str:
        return f"{self._space(bucket)}:b:{SEP.join(bucket)}"

    def _day(self, bucket: Bucket) -> str:
        return f"{self._space(bucket)}:day:{bucket[0]}"

    def _expires(self, day: str) -> int:
        """When a day's buckets expire (Unix seconds; 0: never)."""
        if self.retention_days is None:
            return 0
        end = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC) + timedelta(days=1)
        return int((end + timedelta(days=self.retention_days)).timestamp())

    def add(self, records: list[dict[str, Any]], batch: str | None = None) -> None:
        """Add the records' counts (a bucket's in one ``HINCRBY`` per count, its expiry set). With
        a ``batch`` id, at most once (:meth:`add_summed`)."""
        if batch is not None:
            self.add_summed([(batch, self.summed(records))])
            return
        pipe = self.client.pipeline(transaction=False)
        for bucket, counts in self.summed(records).items():
            key, day, at = self._key(bucket), self._day(bucket), self._expires(bucket[0])
            pipe.sadd(day, key)
            for name, value in counts.items():
                pipe.hincrby(key, name, value)
            if at:
                pipe.expireat(key, at)
                pipe.expireat(day, at)
        pipe.execute()

    def summed(self, records: Iterable[dict[str, Any]]) -> Summed:
        """The records' counts per bucket, as :meth:`add_summed` takes them."""
        return summed(records, self.known)

    def add_summed(self, batches: Sequence[tuple[BatchKey, Summed]]) -> int:
        """Add batches (each its key and its counts per bucket) in one call to Redis, in order,
        each at most once, so batches whose answer did not come in time (Redis hung, then carried
        them out) can be sent again, alone or with others, and each adds once. Returns how many
        were added (the others had been).

        A batch keyed ``(source, seq)``: its source (an outbox, :mod:`ext_proc.server.spool`)
        numbers its batches and sends them oldest first, so what Redis has of it is always the
        batches up to some seq: one key per source (``<prefix>:source:<id>``) holds that
        high-water mark, and a batch adds only if its seq is above it (then raises it). The mark
        is kept :data:`SOURCE_TTL` (30 days) after the source's last batch added: a batch sent
        again later (its spool left unsent that long) would add again. A caller must never send
        a source's batch after a later one of it was taken (it would be skipped: lost).

        A batch keyed by an id (an older Tollway's, or a spool it left): marked
        (``<prefix>:batch:<id>``, kept :data:`BATCH_TTL`, a day) and added if the mark is new."""
        if not batches:
            return 0
        keys: list[str] = []
        args: list[Any] = [BATCH_TTL, SOURCE_TTL]
        for batch, buckets in batches:
            if isinstance(batch, str):
                keys.append(f"{self.prefix}:batch:{batch}")
                args.append("")
            else:
                keys.append(f"{self.prefix}:source:{batch[0]}")
                args.append(batch[1])
            args.append(len(buckets))
            for bucket, counts in buckets.items():
                args += [self._day(bucket), self._key(bucket), self._expires(bucket[0]), len(counts)]
                for name, value in counts.items():
                    args += [name, value]
        return int(self.client.eval(_ONCE, len(keys), *keys, *args))

    def rows(self, by: str, since: date | None = None, until: date | None = None,
             where: dict[str, str] | None = None) -> list[Row]:
        # A day at a time, from the ledger's first day at the earliest and up to tomorrow at most:
        # no record is filed earlier or later (``--since 0001-01-01`` or ``--until 9999-12-30`` would
        # be a round trip for each of millions of days). Finding the first day is a scan of the days'
        # keys, so only for a range longer than the scan's cost in round trips.
        until = min(until or date.max, datetime.now(UTC).date() + timedelta(days=1))
        start = since or until
        if since is None or until - since > timedelta(days=FIRST_DAY_SCAN):
            days = sorted(k.decode().rsplit(":", 1)[1] for k in self.client.scan_iter(f"{self.prefix}:day:*"))
            first = date.fromisoformat(days[0]) if days else min(until, date.today())
            start = first if since is None else max(since, first)
        # (The first day is the five-part buckets': the upstream buckets came later, never earlier.)
        if by_upstream(by, where):
            buckets = _by_upstream(self._buckets(start, until), self._buckets(start, until, UPSTREAM))
            return _rows(buckets, by, since or start, until, where)
        return _rows(self._buckets(start, until), by, since or start, until, where)

    def cells(self, since: date, until: date) -> dict[Cell, Row]:
        """A row per (day, team, model, provider) in [since, until) (the five-part buckets)."""
        return _grouped(self._buckets(since, until), _cell, since, until, None)

    def _buckets(self, since: date, until: date, space: str = "") -> Iterator[tuple[Bucket, dict[str, int]]]:
        """The buckets of the days in [since, until), read a day at a time and :data:`READ_CHUNK`
        buckets per round trip, yielded as they come: a report folds them into its rows as it
        reads, so what it holds grows with its rows, never with the window's buckets (three
        months of a busy gateway are hundreds of thousands). The five-part buckets, or with
        ``space`` :data:`UPSTREAM` the upstream buckets (their own day index)."""
        day = since
        while day < until:
            keys = [k.decode() for k in self.client.smembers(f"{self.prefix}{space}:day:{day.isoformat()}")]
            day += timedelta(days=1)
            for start in range(0, len(keys), READ_CHUNK):
                chunk = keys[start:start + READ_CHUNK]
                for key, counters in zip(chunk, self._hashes(chunk), strict=True):
                    yield tuple(key.split(":b:", 1)[1].split(SEP)), counters

    def _hashes(self, keys: list[str]) -> list[dict[str, int]]:
        """The counters of these buckets ({} for one gone meanwhile)."""
        if self._read is not False:
            try:
                if self._read is None:
                    self._read = self.client.register_script(_READ)
                found = [orjson.loads(reply) for reply in self._read(keys=keys)]
                return [dict(zip(pairs[::2], map(int, pairs[1::2]), strict=True)) if isinstance(pairs, list) else {}
                        for pairs in found]  # an empty hash is encoded {}
            except _redis_error():
                self._read = False  # scripts disabled, denied (ACL) or a read-only replica: a pipeline
            except orjson.JSONDecodeError:
                pass  # a field name that is not UTF-8: this chunk by pipeline
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [{k.decode(): int(v) for k, v in counters.items()} for counters in pipe.execute()]


def _redis_error() -> type[Exception]:
    """redis-py's ``ResponseError``, imported when a Redis report reads (redis-py is 8 MB of a
    process that, without Redis, never loads it: every worker's and the supervisor's)."""
    from redis.exceptions import ResponseError

    return ResponseError
