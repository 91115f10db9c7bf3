"""The compiled policy: what the per-request core asks of the policy, answered by dict lookups.

A :class:`CompiledPolicy` is immutable. The server swaps the whole object when the file changes,
so a request sees one policy from start to end. Secrets are not in it: a provider's credential
is a *source* (an environment variable or a file); the server resolves it when a request needs it.
Virtual keys appear only as sha256 hex digests.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ext_proc.guardrails.plan import Guardrails
from ext_proc.llm import providers
from ext_proc.llm.encodings import O200K, encoding_name_for_model
from ext_proc.llm.prices import Price
from ext_proc.values import value

PROVIDER_KINDS = tuple(providers.KINDS)
KEY_PREFIX = "tw-"  # every Tollway virtual key starts with it; other bearer values are not Tollway keys
EXT_PROC_CLUSTER = "tollway_ext_proc"  # Envoy's cluster that reaches Tollway (its bootstrap's): no provider's
# The public APIs of the kinds that have one: a provider of these kinds needs no endpoint.
DEFAULT_ENDPOINTS = {name: f"https://{kind.host}" for name, kind in providers.KINDS.items() if kind.host}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(url: str) -> str:
    """The ``Host`` a provider at ``url`` (an endpoint or a stand-in) is sent: its host, an IPv6
    one in brackets, an absolute name without its dot (neither the server's name nor its
    certificate's), with the port unless it is the scheme's default ("http://vllm:8000/v1":
    "vllm:8000"; "https://api.example.com:443": "api.example.com")."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return host if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where a provider's API key comes from: exactly one of ``env`` or ``file``."""

    env: str | None = None
    file: str | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream: its kind decides the wire format and the credential header."""

    name: str
    kind: str  # one of PROVIDER_KINDS
    cluster: str  # the Envoy cluster that reaches it
    credential: CredentialSource | None  # None: no key is injected (e.g. a local model server)
    anthropic_version: str = "2023-06-01"  # anthropic: the anthropic-version header
    api_version: str | None = None  # azure-openai: the api-version query parameter
    host: str | None = None  # the Host header it expects (from its endpoint URL), when known
    endpoint: str | None = None  # its base URL, when the policy gives one
    # Its endpoint's path, as the SDKs' base URLs are written: (what its API paths start with, what
    # goes there instead). "https://llm-gw.corp/openai/v1": ("/v1", "/openai/v1"); None: unchanged.
    rebase: tuple[str, str] | None = None
    stored_responses: bool = False  # Responses clients may refer to responses it stores (one team's key)


@dataclass(frozen=True, slots=True)
class Target:
    """A public model name resolved: which provider serves it, under which upstream name."""

    public: str  # the canonical public name (aliases resolve to it)
    provider: Provider
    upstream_model: str  # the provider's model name; for azure-openai, the deployment name
    price: Price | None = None  # the policy's price for this model, overriding the price table
    context_window: int | None = None  # prompt tokens it accepts (None: unknown, never skipped)
    max_output_tokens: int | None = None  # the model's output limit, as the policy gives it (None: unknown)
    # The output a request that sets no limit may produce here: max_output_tokens, else the policy's
    # shared_state.default_output_tokens. The one number for both: the limits step claims it, and a
    # translation to an API that requires a limit (Anthropic's max_tokens) sends it.
    output_tokens: int = 4096


@dataclass(frozen=True, slots=True)
class Plan:
    """How an alias is served: targets in priority order, and the strategy for the first attempt.

    ``weights`` (strategy "weighted") are the shares of first attempts, aligned with ``targets``.
    """

    strategy: str  # "priority" | "weighted"
    targets: tuple[Target, ...]
    weights: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Alias:
    """A public model name routed to one or more provider models, possibly per team."""

    name: str
    plan: Plan
    teams: Mapping[str, Plan] = field(default_factory=dict)

    def plan_for(self, team: str) -> Plan:
        return self.teams.get(team, self.plan)


@value
class Principal:
    """Who is calling: a team, through a virtual key or a workload identity."""

    team: str
    key_id: str | None = None
    workload: str | None = None


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    models: frozenset[str]  # public model names this team may use
    all_models: bool = False  # the team's models list was "*"


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


_WINDOWS: dict[tuple[str, str], tuple[float, str, float]] = {}  # (period, zone) -> (start, id, end)


def period_window(period: str, timezone: str, now: float) -> tuple[str, float]:
    """The window of a budget period (``day`` or ``month`` in ``timezone``) at Unix time ``now``:
    its id (``2026-12``, ``2026-12-04``) and when it ends (Unix seconds)."""
    cached = _WINDOWS.get((period, timezone))
    if cached is not None and cached[0] <= now < cached[2]:
        return cached[1], cached[2]
    window, start, end = _window(period, timezone, now)
    _WINDOWS[(period, timezone)] = (start, window, end)
    return window, end


def _window(period: str, timezone: str, now: float) -> tuple[str, float, float]:
    zone = _zone(timezone)
    local = datetime.datetime.fromtimestamp(now, zone)
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + datetime.timedelta(days=1, hours=2)).replace(hour=0)  # a DST day has 23 or 25 hours
        return start.strftime("%Y-%m-%d"), start.timestamp(), end.timestamp()
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month, year = (start.month % 12) + 1, start.year + (start.month == 12)
    return start.strftime("%Y-%m"), start.timestamp(), start.replace(year=year, month=month).timestamp()


def key_member(team: str, key_id: str) -> str:
    """The member a virtual key counts as: its id and its team (``ci@search``), since a key id is
    unique only within its team ('@' is in no name, so no two keys share one)."""
    return f"{key_id}@{team}"


def budget_counter(name: str, unit: str, member: str, window: str) -> str:
    """A budget's counter: ``budget/NAME/UNIT/MEMBER/WINDOW``. Neither a budget's name (the schema
    refuses it) nor a window holds a '/', so :func:`budget_parts` reads it back; a member may."""
    return f"budget/{name}/{unit}/{member}/{window}"


def budget_parts(counter: str) -> tuple[str, str, str, str] | None:
    """A budget counter's name, unit, member and window (None: not a budget's counter)."""
    kind, _, rest = counter.partition("/")
    name, _, rest = rest.partition("/")
    unit, _, rest = rest.partition("/")
    member, _, window = rest.rpartition("/")
    if kind != "budget" or not (name and unit and member and window):
        return None
    return name, unit, member, window


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit per period; ``scope`` is "team", "key" or "model", ``member`` what it counts
    (its counter's member): a team, a key as :func:`key_member`, a model by the name the limit was
    written with (``public``: a limit on an alias counts the model under any of its names), a
    routing alias, or "*" (each its own counter; a model under its public name)."""

    name: str
    scope: str
    member: str
    usd_micros: int | None  # None: no USD limit
    tokens: int | None  # None: no token limit
    period: str  # "day" | "month"
    timezone: str  # IANA name
    hard: bool  # refuse past the budget (else alerts only)
    alerts: tuple[int, ...] = ()  # percentages
    webhook: str | None = None
    public: str | None = None  # on a model's alias: the model's public name, which requests are found by


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests and tokens per calendar minute, requests in flight; scoped like :class:`Budget`."""

    name: str
    scope: str
    member: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    public: str | None = None  # on a model's alias: the model's public name, which requests are found by


@dataclass(frozen=True)
class Limits:
    """Every budget and rate limit, indexed by (scope, member) for the per-request lookup."""

    budgets: tuple[Budget, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    on_unavailable: str = "closed"  # "closed" | "open": when the shared store does not answer
    default_output_tokens: int = 4096
    _index: Mapping[tuple[str, str], tuple[Budget | RateLimit, ...]] = field(default_factory=dict, repr=False)
    _found: dict[tuple[str, str | None, str | None], tuple[tuple[Budget | RateLimit, str], ...]] = field(
        default_factory=dict, repr=False, compare=False)  # applying()'s answers (the policy never changes)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], list[Budget | RateLimit]] = {}
        every: list[Budget | RateLimit] = [*self.budgets, *self.rate_limits]
        for limit in every:
            index.setdefault((limit.scope, limit.public or limit.member), []).append(limit)
        object.__setattr__(self, "_index", {key: tuple(value) for key, value in index.items()})

    def __bool__(self) -> bool:
        return bool(self.budgets or self.rate_limits)

    def applying(self, team: str, key_id: str | None, model: str | None
                 ) -> tuple[tuple[Budget | RateLimit, str], ...]:
        """The limits counting a request, each with the member it counts for (a "*" scope gives
        every team, key or model its own counter). ``model`` is the public name of the model asked
        for under any of its names, or the routing alias asked for: one model, one claim per limit
        (a limit written on one of the model's aliases counts it under that alias)."""
        index = self._index
        if not index:
            return ()
        key = (team, key_id, model)
        found = self._found.get(key)
        if found is None:
            found = self._applying(team, key_id, model)
            if len(self._found) < 4096:
                self._found[key] = found
        return found

    def _applying(self, team: str, key_id: str | None, model: str | None
                  ) -> tuple[tuple[Budget | RateLimit, str], ...]:
        index = self._index
        out: list[tuple[Budget | RateLimit, str]] = []
        members = [("team", team)] + ([("key", key_member(team, key_id))] if key_id else []) + (
            [("model", model)] if model else [])
        for scope, member in members:
            for name in dict.fromkeys((member, "*")):
                found = index.get((scope, name), ())
                out += [(limit, member if name == "*" else limit.member) for limit in found]  # an alias's: its own
        return tuple(out)


NO_LIMITS = Limits()


def _where(provider: Provider) -> str:
    """Where ``provider``'s key comes from, for a message (never the key)."""
    assert provider.credential is not None
    credential = provider.credential
    return f"environment variable {credential.env}" if credential.env is not None else f"file {credential.file}"


def key_digest(secret: str) -> str:
    """The sha256 hex digest under which a virtual key is stored in the policy."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CompiledPolicy:
    """Everything the core reads from the policy, indexed for the hot path."""

    version: str  # short content hash of the source text, shown in logs, /readyz and metrics
    source: str  # file path (or "<memory>")
    providers: Mapping[str, Provider]
    models: Mapping[str, Target]  # public names AND aliases -> target
    teams: Mapping[str, Team]
    keys: Mapping[str, tuple[str, str]]  # sha256 hex -> (team, key id)
    workloads: Mapping[str, str]  # workload identity (e.g. a SPIFFE ID) -> team
    sections: Mapping[str, object] = field(default_factory=dict)  # later work: budgets, rate limits, ...
    aliases: Mapping[str, Alias] = field(default_factory=dict)  # routing.aliases
    limits: Limits = NO_LIMITS  # budgets and rate limits
    guardrails: Guardrails | None = None  # the guardrails section compiled (None: no rule)
    trace_content: bool = False  # telemetry.trace_content: prompts and answers (redacted) in spans
    notes: tuple[str, ...] = ()  # remarks that are no mistake ("p.yaml:3:5: path: message"), by position

    @functools.cached_property
    def model_names(self) -> frozenset[str]:
        """Every model name this policy knows: public names, routing aliases and the providers' model
        names their targets send (the only model names that become metric labels)."""
        return self._target_names() | self.aliases.keys()

    def encodings(self) -> frozenset[str]:
        """The tokenizer encodings this policy's models count with: by public name, alias and the
        providers' model names (``o200k_base`` always: Anthropic's APIs count with it)."""
        return frozenset({O200K, *(encoding_name_for_model(name) for name in self._target_names())})

    def _target_names(self) -> frozenset[str]:
        names = set(self.models)
        for target in self.models.values():
            names.update((target.public, target.upstream_model))
        for alias in self.aliases.values():
            for plan in (alias.plan, *alias.teams.values()):
                names.update(target.upstream_model for target in plan.targets)
        return frozenset(names)

    def reached(self, team: str) -> frozenset[str]:
        """The providers ``team``'s models reach: directly, or as targets of an alias's plan for it."""
        found = self.teams[team]
        names = found.models | (self.aliases.keys() if found.all_models else frozenset())
        out: set[str] = set()
        for name in names:
            alias = self.aliases.get(name)
            if alias is not None:
                out.update(target.provider.name for target in alias.plan_for(team).targets)
            elif name in self.models:
                out.add(self.models[name].provider.name)
        return frozenset(out)

    def shared_stored_keys(self, key: Callable[[CredentialSource], str | None]) -> list[str]:
        """Why this policy must not be served with the provider keys ``key`` reads: a provider with
        ``stored_responses`` whose key is the same value as that of a provider another team reaches
        (from another variable or file: the same source is refused by the compile already). Keys are
        compared by their sha256 digest and never named; a key ``key`` cannot read is no clash."""
        stored = [p for p in self.providers.values() if p.stored_responses and p.credential is not None]
        if not stored:
            return []
        reach = {team: self.reached(team) for team in self.teams}
        digests: dict[str, bytes | None] = {}

        def digest(provider: Provider) -> bytes | None:
            if provider.name not in digests:
                value = key(provider.credential) if provider.credential is not None else None
                digests[provider.name] = hashlib.sha256(value.encode()).digest() if value else None
            return digests[provider.name]

        problems = []
        for provider in stored:
            mine = digest(provider)
            if mine is None:
                continue
            teams = {team for team, reached in reach.items() if provider.name in reached}
            for other in self.providers.values():
                if other.name == provider.name or other.credential is None or digest(other) != mine:
                    continue
                others = sorted(team for team, reached in reach.items() if other.name in reached and team not in teams)
                if others:
                    problems.append(
                        f"{self.source}: providers.{provider.name}.stored_responses: its key ({_where(provider)}) is "
                        f"the same as provider '{other.name}''s ({_where(other)}), which "
                        f"{'team' if len(others) == 1 else 'teams'} {', '.join(repr(t) for t in others)} "
                        f"reach{'es' if len(others) == 1 else ''}: the responses stored for that key are readable "
                        "through this provider by previous_response_id; give this provider a key of its own "
                        "(another OpenAI project), or remove stored_responses")
        return problems

    def alias(self, model: str) -> Alias | None:
        """The routing alias named ``model``, if it is one."""
        return self.aliases.get(model)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal holding virtual key ``secret``, or None for an unknown key."""
        found = self.keys.get(key_digest(secret))
        return Principal(found[0], key_id=found[1]) if found else None

    def workload(self, identity: str) -> Principal | None:
        """The principal for a workload identity (sidecar mode), or None."""
        team = self.workloads.get(identity)
        return Principal(team, workload=identity) if team else None

    def resolve(self, model: str) -> Target | None:
        """The target serving public model name (or alias) ``model``."""
        return self.models.get(model)

    def may_use(self, team: str, public: str) -> bool:
        """Whether ``team`` may call the public model name or alias ``public``."""
        entry = self.teams.get(team)
        return entry is not None and (entry.all_models or public in entry.models)
