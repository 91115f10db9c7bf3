"""Compile a policy: YAML text in, a :class:`CompiledPolicy` or every problem with its place out.

Theory of operation. :func:`compile_policy` runs five passes over one text and collects every
problem it finds instead of stopping at the first:

1. **Parse.** PyYAML's safe loader composes a node tree (every node knows its line and column).
   Syntax errors, an empty file, several documents, or a top level that is not a mapping end here.
   Timestamps are not resolved, so ``anthropic_version: 2023-06-01`` stays a string.
2. **Duplicate keys.** PyYAML silently keeps the last of two equal keys; they are found in the
   node tree and reported at the second one.
3. **Schema.** The data is validated by :class:`~ext_proc.policy.schema.PolicySpec` (strict
   pydantic). Each error's ``loc`` (a path of keys and indexes) is looked up in the node tree for
   its line and column, and pydantic's wording is replaced by the policy's own.
4. **References.** What needs several entries to decide: a model's provider exists, a team's
   models exist, aliases, keys and workloads are not claimed twice, kind-specific provider fields,
   an endpoint is a base URL, providers sharing an Envoy cluster reach one endpoint, a provider
   keeping stored responses is reached by one team, budgets are whole micro-dollars. Some
   findings are *notes*, not mistakes (a $0 budget, settings no rule uses, a team plan for a team
   that may not use the alias, an alias target spelled like a public name): they do not stop the
   compile, and :attr:`CompiledPolicy.notes` keeps them for ``policy check`` to print.
   Entries that failed the schema are left out of this pass, and references to them are not
   reported a second time, so a typo in one provider does not hide a wrong key in a team.
5. **Build.** Only a policy without problems (notes aside) becomes a :class:`CompiledPolicy`.

This module owns the compilation: running the passes, the reference checks and the build.
Passes 1 and 2, the wording of pass 3's errors and the placing of every problem in the YAML are
:mod:`ext_proc.policy.issues`. Problems are :class:`PolicyIssue` (``file:line:column: path:
message``), sorted by position and raised together as one :class:`PolicyError` (both defined in
``issues`` and importable from here). Nothing here reads files: the caller passes the text and
names its ``source``.
"""

from __future__ import annotations

import decimal
import hashlib
import posixpath
import types
import urllib.parse
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ext_proc.llm import apis
from ext_proc.llm.prices import Price

from . import guardrails
from .compiled import (
    DEFAULT_ENDPOINTS,
    EXT_PROC_CLUSTER,
    Alias,
    Budget,
    CompiledPolicy,
    CredentialSource,
    Limits,
    Plan,
    Provider,
    RateLimit,
    Target,
    Team,
    host_header,
    key_member,
)
from .guardrails import named
from .issues import (
    SECTION_NOUNS,
    Loc,
    PolicyError,
    PolicyIssue,
    Problem,
    Tree,
    describe,
    format_path,
    loc_part,
    parse,
    suggest,
    to_issues,
)
from .schema import API_VERSION, RESERVED_SECTIONS, PlanSpec, PolicySpec, PriceSpec, ScopeSpec, TargetSpec

__all__ = ["PolicyError", "PolicyIssue", "compile_policy"]


def compile_policy(text: str, source: str = "<memory>") -> CompiledPolicy:
    """Validate ``text`` (a policy YAML document) and index it; :class:`PolicyError` if it is bad."""
    problems, tree, data = parse(text)
    spec: PolicySpec | None = None
    if data is not None:
        more, spec = _check(data, tree)
        problems += more
    errors = [problem for problem in problems if not problem.note]
    if errors:
        raise PolicyError(to_issues(errors, source, tree))
    assert spec is not None
    notes = tuple(str(issue) for issue in to_issues([p for p in problems if p.note], source, tree))
    return replace(_build(spec, text, source), notes=notes)


# -- passes 3 and 4: the schema, then the references -------------------------------------------


def _check(data: dict[Any, Any], tree: Tree | None) -> tuple[list[Problem], PolicySpec | None]:
    """Passes 3 and 4 over parsed ``data``: their problems, and the spec the references were
    checked on (without the entries that failed the schema; none if even that fails)."""
    problems: list[Problem] = []
    spec: PolicySpec | None
    try:
        spec, skipped = PolicySpec.model_validate(data), _Skipped()
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems += [describe(error, tree) for error in errors]
        spec, skipped = _validate_pruned(data, errors)
    if spec is not None:
        problems += _check_references(spec, skipped)
    return problems, spec


# -- pass 4: references -------------------------------------------------------------------------


@dataclass
class _Skipped:
    """Entries left out of the reference checks because they failed the schema."""

    names: dict[str, set[str]] | None = None  # section -> names; also the aliases of skipped models
    whole: frozenset[str] = frozenset()  # sections that were not usable at all

    def known(self, section: str, valid: Iterable[str]) -> list[str]:
        """Names to suggest from: the valid ones and the skipped ones."""
        return [*valid, *sorted((self.names or {}).get(section, set()))]

    def __contains__(self, item: tuple[str, str]) -> bool:
        section, name = item
        return section in self.whole or name in (self.names or {}).get(section, set())


def _validate_pruned(data: dict[Any, Any], errors: list[ErrorDetails]) -> tuple[PolicySpec | None, _Skipped]:
    """The document without what failed the schema, validated again.

    An unknown field is dropped alone; any other error drops its whole provider, model or team
    (or section). List items are never dropped: the reference checks report list indexes.
    """
    pruned: dict[Any, Any] = dict(data)
    names: dict[str, set[str]] = {section: set() for section in (*SECTION_NOUNS, "aliases")}
    whole: set[str] = set()
    for error in errors:
        loc = tuple(error["loc"])
        section = loc[0] if loc else None
        if error["type"] == "extra_forbidden" and len(loc) > 1:
            pruned = _without(pruned, loc)
        elif section == "routing" and len(loc) >= 3 and loc[1] == "aliases" and isinstance(pruned.get("routing"), dict):
            # One broken alias is left out; the others are still checked.
            routing = dict(pruned["routing"])
            entries = routing.get("aliases")
            if isinstance(entries, dict):
                routing["aliases"] = {name: value for name, value in entries.items() if loc_part(name) != loc[2]}
                pruned["routing"] = routing
            names["aliases"].add(str(loc[2]))
        elif isinstance(section, str) and section in SECTION_NOUNS:
            entries = pruned.get(section)
            if len(loc) >= 2 and isinstance(entries, dict):
                entry = next((value for name, value in entries.items() if loc_part(name) == loc[1]), None)
                pruned[section] = {name: value for name, value in entries.items() if loc_part(name) != loc[1]}
                names[section].add(str(loc[1]))
                if section == "models" and isinstance(entry, dict) and isinstance(entry.get("aliases"), list):
                    names[section].update(str(alias) for alias in entry["aliases"])
            else:
                pruned[section] = {}
                whole.add(section)
        elif section == "apiVersion":
            pruned[section] = API_VERSION
        else:  # a reserved section, or an unknown top-level key
            pruned.pop(section, None)
    try:
        spec = PolicySpec.model_validate(pruned)
    except ValidationError:
        return None, _Skipped()
    return spec, _Skipped(names, frozenset(whole))


def _without(node: Any, loc: Loc) -> Any:
    """A copy of ``node`` without the mapping key at ``loc`` (unchanged if there is none)."""
    head, rest = loc[0], loc[1:]
    if isinstance(node, dict) and head in node:
        copy = dict(node)
        if rest:
            copy[head] = _without(node[head], rest)
        else:
            del copy[head]
        return copy
    if isinstance(node, list) and isinstance(head, int) and 0 <= head < len(node) and rest:
        return [_without(item, rest) if index == head else item for index, item in enumerate(node)]
    return node


def _check_references(spec: PolicySpec, skipped: _Skipped) -> list[Problem]:
    problems: list[Problem] = []

    for name, provider in spec.providers.items():
        here = ("providers", name)
        if provider.kind == "azure-openai" and provider.api_version is None:
            example = 'required for kind azure-openai (e.g. "2024-10-21")'
            problems.append(Problem(example, where=(*here, "api_version")))
        if provider.kind != "azure-openai" and provider.api_version is not None:
            problems.append(Problem("only for kind azure-openai", where=(*here, "api_version"), at_key=True))
        if provider.kind != "anthropic" and provider.anthropic_version is not None:
            problems.append(Problem("only for kind anthropic", where=(*here, "anthropic_version"), at_key=True))
        if (provider.cluster or name) == EXT_PROC_CLUSTER:  # Envoy keeps its own: the reload would wait in vain
            named_at: Loc = (*here, "cluster") if provider.cluster else here
            problems.append(Problem(f"'{EXT_PROC_CLUSTER}' is Envoy's cluster that reaches Tollway: give the "
                                    "provider's cluster another name", where=named_at, at_key=not provider.cluster))
        if provider.kind not in ("openai", "azure-openai", "anthropic") and provider.stored_responses:
            problems.append(Problem("only for kinds openai, azure-openai and anthropic (the others store nothing "
                                    "for their key that a request refers to)",
                                    where=(*here, "stored_responses"), at_key=True))
        if provider.endpoint is not None:
            problems += [Problem(message, where=(*here, "endpoint"))
                         for message in _endpoint_problems(provider.endpoint, provider.kind)]
    problems += _check_clusters(spec)

    owners: dict[str, tuple[str, bool]] = {name: (name, False) for name in spec.models}  # name -> (model, alias?)
    for name, model in spec.models.items():
        if model.provider not in spec.providers and ("providers", model.provider) not in skipped:
            problems.append(
                Problem(
                    f"unknown provider {named(model.provider)}"
                    + suggest(model.provider, skipped.known("providers", spec.providers)),
                    where=("models", name, "provider"),
                )
            )
        for index, alias in enumerate(model.aliases):
            where = ("models", name, "aliases", index)
            if alias in owners or ("models", alias) in skipped:
                owner, is_alias = owners.get(alias, (alias, False))
                taken = (
                    "the model's own name"
                    if owner == alias == name
                    else (f"already {'an alias' if is_alias else 'the name'} of model '{owner}'")
                )
                problems.append(Problem(f"alias '{alias}' is {taken}", where=where))
            else:
                owners[alias] = (name, True)

    key_places: dict[str, Loc] = {}
    workload_teams: dict[str, str] = {}
    for team_name, team in spec.teams.items():
        here = ("teams", team_name)
        ids: dict[str, int] = {}
        for index, key in enumerate(team.keys):
            if named(key.id).startswith("(a value"):  # the key itself where its name belongs: never recorded
                problems.append(Problem("this id looks like the key itself: give the key a name (the key goes "
                                        "nowhere in the policy, only its sha256)", where=(*here, "keys", index, "id")))
            if key.id in ids:
                problems.append(
                    Problem(
                        f"key id {named(key.id)} is already used by keys[{ids[key.id]}] of this team",
                        where=(*here, "keys", index, "id"),
                    )
                )
            ids.setdefault(key.id, index)
            if key.sha256 in key_places:
                problems.append(
                    Problem(
                        f"the same key is already listed at {format_path(key_places[key.sha256])}",
                        where=(*here, "keys", index, "sha256"),
                    )
                )
            key_places.setdefault(key.sha256, (*here, "keys", index))
        for index, workload in enumerate(team.workloads):
            other = workload_teams.setdefault(workload, team_name)
            if other != team_name or workload in team.workloads[:index]:
                where_else = "listed twice in this team" if other == team_name else f"already in team '{other}'"
                problems.append(Problem(f"workload '{workload}' is {where_else}", where=(*here, "workloads", index)))
        for index, ref in enumerate(team.models):
            where = (*here, "models", index)
            if ref == "*":
                if len(team.models) > 1:
                    problems.append(Problem('"*" (every model) must be the only entry', where=where))
            elif (ref not in owners and ref not in spec.routing.aliases and ("models", ref) not in skipped
                  and ("aliases", ref) not in skipped):
                suggestion = suggest(ref, [*skipped.known("models", owners), *spec.routing.aliases])
                problems.append(Problem(f"unknown model {named(ref)}" + suggestion, where=where))
    problems += _check_aliases(spec, owners, skipped)
    problems += _check_stored(spec, owners)
    problems += _check_limits(spec, owners, skipped)
    problems += guardrails.problems(spec, owners, skipped)
    return problems


def _check_stored(spec: PolicySpec, owners: dict[str, tuple[str, bool]]) -> list[Problem]:
    """``stored_responses`` only on a provider one team reaches: anyone holding its key reads what it
    stored, so another team could continue this one's conversations by ``previous_response_id``.
    The key, not the provider entry, is what stores: another entry with the same credential (the
    same environment variable or file) reached by another team stores that team's responses (OpenAI
    stores them by default) where this one's can be read, so that is refused too."""
    problems: list[Problem] = []
    reach = {team: _reached(spec, owners, team) for team in spec.teams}
    for name, provider in spec.providers.items():
        if not provider.stored_responses:
            continue
        teams = [team for team in spec.teams if name in reach[team]]
        if len(teams) > 1:
            listed = _and([f"'{team}'" for team in teams])
            problems.append(Problem(
                f"teams {listed} reach this provider (through their 'models'): anyone holding its key reads "
                "the responses it stored, so each could use another's by previous_response_id; stored_responses "
                "is only for a provider whose key serves one team (give each team a provider with a key of its "
                "own, or remove stored_responses)", where=("providers", name, "stored_responses"), at_key=True))
        source = _credential(provider)
        for other_name, other in spec.providers.items():
            if other_name == name or source is None or _credential(other) != source:
                continue
            others = [team for team in spec.teams if other_name in reach[team] and team not in teams]
            if others:
                problems.append(Problem(
                    f"uses the same key ({source}) as provider '{other_name}', which {_team_s(others)} "
                    f"reach{'es' if len(others) == 1 else ''}: the responses stored for that key are readable "
                    f"through this provider by previous_response_id, so {_team_s(teams) or 'its teams'} could "
                    "continue theirs; give this provider a key of its own (another OpenAI project), or remove "
                    "stored_responses", where=("providers", name, "stored_responses"), at_key=True))
    return problems


def _credential(provider: Any) -> str | None:
    """Where ``provider``'s key comes from, as one comparable phrase (None: it has none)."""
    credential = provider.credential
    if credential is None:
        return None
    if credential.env is not None:
        return f"environment variable {credential.env}"
    return f"file {posixpath.normpath(credential.file)}"


def _team_s(teams: list[str]) -> str:
    return ("team " if len(teams) == 1 else "teams ") + _and([f"'{team}'" for team in teams]) if teams else ""


def _reached(spec: PolicySpec, owners: dict[str, tuple[str, bool]], team: str) -> set[str]:
    """The providers ``team``'s models reach: directly, or as targets of the plan an alias has for it."""
    refs = spec.teams[team].models
    if refs == ["*"]:
        refs = [*spec.models, *spec.routing.aliases]
    reached: set[str] = set()
    for ref in refs:
        if ref in spec.routing.aliases:
            alias = spec.routing.aliases[ref]
            reached.update(target.provider for target in alias.teams.get(team, alias).targets)
        elif ref in owners:
            reached.add(spec.models[owners[ref][0]].provider)
    return reached


def _check_clusters(spec: PolicySpec) -> list[Problem]:
    """Providers sharing an Envoy cluster reach the same endpoint (scheme, host and port: what the
    cluster is built from), else one's requests, with its key, would go to the other's server.
    Sharing is for several providers on one endpoint (other keys, other kinds, other base paths);
    a provider with neither an endpoint nor a kind's public API goes wherever its cluster does."""
    problems: list[Problem] = []
    first: dict[str, tuple[str, str]] = {}  # cluster -> (its first provider with an endpoint, that endpoint)
    for name, provider in spec.providers.items():
        url, cluster = provider.endpoint or DEFAULT_ENDPOINTS.get(provider.kind), provider.cluster or name
        if url is None or cluster == EXT_PROC_CLUSTER:  # (the latter is refused already)
            continue
        other, other_url = first.setdefault(cluster, (name, url))
        if _origin(url) != _origin(other_url):
            problems.append(Problem(
                f"shares cluster '{cluster}' with provider '{other}', which reaches {_reaches(spec, other)}, but "
                f"reaches {_reaches(spec, name)}: a cluster has one endpoint, and this provider's requests (with "
                "its key) would go to the other's (give it a cluster of its own)",
                where=("providers", name, "cluster") if provider.cluster else ("providers", name),
                at_key=not provider.cluster))
    return problems


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _reaches(spec: PolicySpec, name: str) -> str:
    provider = spec.providers[name]
    if provider.endpoint:
        return shown_url(provider.endpoint)
    return f"{DEFAULT_ENDPOINTS[provider.kind]} (kind {provider.kind}'s public API)"


def _check_limits(spec: PolicySpec, owners: dict[str, tuple[str, bool]], skipped: _Skipped) -> list[Problem]:
    """Budgets and rate limits name a team, key or model that exists; budgets a real time zone."""
    problems: list[Problem] = []
    key_teams = _key_teams(spec)
    models = [*owners, *spec.routing.aliases]
    for section, entries in (("budgets", spec.budgets), ("rate_limits", spec.rate_limits)):
        for name, limit in entries.items():
            here: Loc = (section, name)
            if limit.team is not None and limit.team != "*" and limit.team not in spec.teams \
                    and ("teams", limit.team) not in skipped:
                problems.append(Problem(f"unknown team {named(limit.team)}"
                                        + suggest(limit.team, skipped.known("teams", spec.teams)),
                                        where=(*here, "team")))
            if limit.key is not None and limit.key != "*" and "teams" not in skipped.whole:
                problems += _check_key(limit.key, limit.team, key_teams, spec, (*here, "key"))
            if limit.model is not None and limit.model != "*" and limit.model not in models \
                    and ("models", limit.model) not in skipped and ("aliases", limit.model) not in skipped:
                problems.append(Problem(f"unknown model {named(limit.model)}" + suggest(limit.model, models),
                                        where=(*here, "model")))
    for name, budget in spec.budgets.items():
        if budget.usd is not None:
            problems += _usd_problems(budget.usd, ("budgets", name, "usd"))
        host_bound = _not_a_zone(budget.timezone)
        if host_bound:
            problems.append(Problem(f"'{budget.timezone}' is not an IANA time zone ({host_bound}): give one, e.g. "
                                    "Europe/Berlin or UTC", where=("budgets", name, "timezone")))
        else:
            try:
                zoneinfo.ZoneInfo(budget.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                problems.append(Problem(f"unknown time zone '{budget.timezone}' (an IANA name, e.g. Europe/Berlin)",
                                        where=("budgets", name, "timezone")))
        if budget.webhook is not None and not budget.alerts:
            problems.append(Problem("a webhook needs 'alerts' (the percentages that call it)",
                                    where=("budgets", name, "webhook"), at_key=True))
    return problems


def _not_a_zone(name: str) -> str:
    """Why a name the host's zone files hold is no IANA time zone a budget may count in ("": it may
    be one): ``localtime`` and ``posixrules`` are whatever the host is set to (replicas sharing
    Redis would count different days), ``right/…`` zones count leap seconds, ``posix/…`` are
    copies, ``Factory`` is no place's."""
    if name in ("localtime", "posixrules"):
        return "it is the zone each host is set to: replicas would count different days"
    if name.startswith(("right/", "posix/")):
        return "a copy of the zone files for other systems' clocks: give the zone's own name"
    if name == "Factory":
        return "a placeholder for a host with no zone set"
    return ""


def _usd_problems(usd: str, where: Loc) -> list[Problem]:
    """A budget counts whole micro-dollars: an amount between them would be cut to one (to $0: a hard
    budget refusing every request). $0 itself is a deliberate setting (a hard budget freezes its
    scope, a soft one alerts on any spend): a note."""
    amount = Decimal(usd)
    micros = amount.scaleb(6)
    if micros != micros.to_integral_value():
        cut, rounded = (micros.to_integral_value(rounding=way).scaleb(-6).normalize()
                        for way in (decimal.ROUND_DOWN, decimal.ROUND_HALF_UP))
        instead = f'"{rounded:f}"' if rounded else '"0.000001" or more'
        return [Problem(f"'{usd}' has more than 6 decimals: budgets count whole micro-dollars ($0.000001), and this "
                        f"amount would be cut to ${cut:f}; write {instead}", where=where)]
    if not amount:
        return [Problem("note: $0: a hard budget refuses every request in its scope, a soft one alerts on the first "
                        "one that spends", where=where, note=True)]
    return []


def _key_teams(spec: PolicySpec) -> dict[str, list[str]]:
    """Each key id and the teams that have a key with it (an id is unique only within its team)."""
    found: dict[str, list[str]] = {}
    for team_name, team in spec.teams.items():
        for key in team.keys:
            if team_name not in found.setdefault(key.id, []):
                found[key.id].append(team_name)
    return found


def _check_key(key: str, team: str | None, key_teams: dict[str, list[str]], spec: PolicySpec,
               where: Loc) -> list[Problem]:
    """A limit's key id names one key: of its ``team`` if it names one, else of the only team with that id."""
    teams = key_teams.get(key, [])
    if team is None and len(teams) > 1:
        listed = " and ".join(f"'{t}'" for t in teams)
        return [Problem(f"key id {named(key)} is ambiguous: teams {listed} each have a key with it; name the "
                        f"team too (team: {teams[0]})", where=where)]
    if (teams and (team is None or team in teams)) or (team is not None and team not in spec.teams):
        return []  # (an unknown team is reported at its own place)
    ids = [k.id for k in spec.teams[team].keys] if team is not None else list(key_teams)
    shown = [i for i in ids if not named(i).startswith("(")]  # a suggestion never shows a key either
    return [Problem(f"unknown key id {named(key)}" + (f" in team '{team}'" if team is not None else "")
                    + suggest(key, shown), where=where)]


def _check_aliases(spec: PolicySpec, owners: dict[str, tuple[str, bool]], skipped: _Skipped) -> list[Problem]:
    problems: list[Problem] = []
    entries: dict[tuple[str, str], list[str]] = {}  # (provider, its model name) -> the models entries
    for public, model in spec.models.items():
        entries.setdefault((model.provider, model.model or public), []).append(public)
    for name, alias in spec.routing.aliases.items():
        here: Loc = ("routing", "aliases", name)
        if name in owners:
            owner, is_alias = owners[name]
            taken = f"an alias of model '{owner}'" if is_alias else "a model's name"
            problems.append(Problem(f"alias '{name}' is already {taken}", where=here, at_key=True))
        plans: list[tuple[Loc, PlanSpec]] = [(here, alias)]
        plans += [((*here, "teams", team), plan) for team, plan in alias.teams.items()]
        for team in alias.teams:
            if team not in spec.teams and ("teams", team) not in skipped:
                known = skipped.known("teams", spec.teams)
                problems.append(Problem(f"unknown team {named(team)}" + suggest(team, known),
                                        where=(*here, "teams", team), at_key=True))
            elif team in spec.teams and spec.teams[team].models != ["*"] and name not in spec.teams[team].models:
                problems.append(Problem(
                    f"note: team '{team}' may not use '{name}' yet (its 'models' lists neither '{name}' nor \"*\"): "
                    f"this plan applies once {format_path(('teams', team, 'models'))} lists '{name}'",
                    where=(*here, "teams", team), at_key=True, note=True))
        for where, plan in plans:
            seen: dict[tuple[str, str], int] = {}
            for index, target in enumerate(plan.targets):
                at: Loc = (*where, "targets", index)
                if target.provider not in spec.providers and ("providers", target.provider) not in skipped:
                    problems.append(Problem(
                        f"unknown provider {named(target.provider)}"
                        + suggest(target.provider, skipped.known("providers", spec.providers)),
                        where=(*at, "provider")))
                key = (target.provider, target.model)
                if key in seen:
                    problems.append(Problem(f"the same provider and model as targets[{seen[key]}]", where=at))
                seen.setdefault(key, index)
                if plan.strategy == "weighted" and target.weight is None:
                    problems.append(Problem("strategy weighted needs a weight on every target", where=at))
                if plan.strategy == "priority" and target.weight is not None:
                    inherits = (where != here and alias.strategy == "weighted"
                                and "strategy" not in plan.model_fields_set)
                    problems.append(Problem(
                        "only for strategy weighted" + (": a team's plan does not inherit the alias's strategy "
                                                        "(this one is priority, the default); add 'strategy: "
                                                        "weighted' to it" if inherits else ""),
                        where=(*at, "weight"), at_key=True))
                problems += _check_target_model(spec, owners, entries, target, at)
            problems += _check_windows(spec, entries, plan, where)
            if plan.strategy == "weighted" and all(t.weight == 0 for t in plan.targets):
                problems.append(Problem("at least one target needs a weight above 0", where=(*where, "targets")))
    return problems


_INHERITED = ("context_window", "max_output_tokens", "price")  # what a target takes from its models entry


def _check_target_model(spec: PolicySpec, owners: dict[str, tuple[str, bool]],
                        entries: dict[tuple[str, str], list[str]], target: TargetSpec, at: Loc) -> list[Problem]:
    """Notes on the ``models`` entry a target inherits from (see :func:`_plan`): none though its
    model is also a public name of its provider's (a floating name such as OpenAI's ``gpt-4o``,
    or an Azure deployment named like a model, is a valid target), or several that differ."""
    found = entries.get((target.provider, target.model), [])
    owner = owners.get(target.model)
    if not found and owner is not None:
        entry = spec.models[owner[0]]
        upstream = entry.model or owner[0]
        if entry.provider == target.provider and upstream != target.model:
            return [Problem(
                f"note: '{target.model}' is sent to provider '{target.provider}' as it is; it is also the public "
                f"name {format_path(('models', owner[0]))}, which this provider serves as '{upstream}': the target "
                f"does not take that entry's price, context window or output limit (write '{upstream}' if it is "
                "that model you mean)", where=(*at, "model"), note=True)]
    if len(found) > 1:
        models = [spec.models[public] for public in found]
        differ = [field for field in _INHERITED if field not in target.model_fields_set
                  and len({repr(getattr(model, field)) for model in models}) > 1]
        if differ:
            listed, fields = _and([f"'{public}'" for public in found]), _and(differ)
            return [Problem(
                f"note: models {listed} name model '{target.model}' of provider '{target.provider}', with different "
                f"{fields}: the target inherits the last one's (set {fields} on the target to choose)", where=at,
                note=True)]
    return []


def _check_windows(spec: PolicySpec, entries: dict[tuple[str, str], list[str]], plan: PlanSpec,
                   where: Loc) -> list[Problem]:
    """Notes on the targets of a chain with no known context window beside ones with: Tollway never
    leaves such a target out for a long prompt, and its provider's 400 (``context_length_exceeded``)
    ends the request, as any 400 does (the request's own fault: no fallback)."""
    if len(plan.targets) < 2:
        return []
    known = [target.context_window is not None or any(
        spec.models[public].context_window is not None for public in entries.get((target.provider, target.model), ()))
        for target in plan.targets]
    if all(known) or not any(known):
        return []
    return [Problem(
        f"note: no context window is known for '{target.model}' of provider '{target.provider}' (set "
        "context_window on the target or its models entry): a prompt too long for it is never sent elsewhere "
        "instead, and its provider's 400 context_length_exceeded ends the request (a 400 does not fall back)",
        where=(*where, "targets", index), note=True)
        for index, target in enumerate(plan.targets) if not known[index]]


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


# -- pass 5: the compiled policy ----------------------------------------------------------------


def _build(spec: PolicySpec, text: str, source: str) -> CompiledPolicy:
    providers = {
        name: Provider(
            name=name,
            kind=p.kind,
            cluster=p.cluster or name,
            credential=CredentialSource(env=p.credential.env, file=p.credential.file) if p.credential else None,
            anthropic_version=p.anthropic_version or "2023-06-01",
            api_version=p.api_version,
            host=host_header(p.endpoint) if p.endpoint else None,
            endpoint=p.endpoint,
            rebase=_rebase(p.endpoint, p.kind),
            stored_responses=p.stored_responses,
        )
        for name, p in spec.providers.items()
    }
    models: dict[str, Target] = {}
    for name, m in spec.models.items():
        target = Target(
            public=name, provider=providers[m.provider], upstream_model=m.model or name, price=_price(m.price),
            context_window=m.context_window, max_output_tokens=m.max_output_tokens,
            output_tokens=m.max_output_tokens or spec.shared_state.default_output_tokens,
        )
        models.update(dict.fromkeys([name, *m.aliases], target))
    teams = {}
    for name, t in spec.teams.items():
        every = t.models == ["*"]
        allowed = frozenset(spec.models) if every else frozenset(
            models[ref].public if ref in models else ref for ref in t.models
        )
        teams[name] = Team(name=name, models=allowed, all_models=every)
    aliases = {
        name: Alias(
            name=name,
            plan=_plan(name, alias, providers, spec),
            teams=types.MappingProxyType(
                {team: _plan(name, plan, providers, spec) for team, plan in alias.teams.items()}
            ),
        )
        for name, alias in spec.routing.aliases.items()
    }
    return CompiledPolicy(
        version=hashlib.sha256(text.encode("utf-8")).hexdigest()[:12],
        source=source,
        providers=types.MappingProxyType(providers),
        models=types.MappingProxyType(models),
        teams=types.MappingProxyType(teams),
        keys=types.MappingProxyType({k.sha256: (name, k.id) for name, t in spec.teams.items() for k in t.keys}),
        workloads=types.MappingProxyType({w: name for name, t in spec.teams.items() for w in t.workloads}),
        sections=types.MappingProxyType({section: getattr(spec, section) for section in RESERVED_SECTIONS}),
        aliases=types.MappingProxyType(aliases),
        limits=_limits(spec),
        guardrails=guardrails.build(spec),
        trace_content=spec.telemetry.trace_content,
    )


def _scope(limit: ScopeSpec, spec: PolicySpec) -> tuple[str, str]:
    """A limit's scope and the member it counts, named as requests name their counters: a key with its
    team (:func:`key_member`), a model by the name the limit was written with (see :func:`_public`)."""
    if limit.key is not None:
        if limit.key == "*":
            return "key", "*"
        team = limit.team or next(name for name, t in spec.teams.items() if any(k.id == limit.key for k in t.keys))
        return "key", key_member(team, limit.key)
    if limit.model is not None:
        return "model", limit.model
    assert limit.team is not None, "the schema ensures one scope"
    return "team", limit.team


def _public(limit: ScopeSpec, spec: PolicySpec) -> str | None:
    """The public name of the model whose alias a limit names: requests for the model under any of its
    names count into the limit's counter, which keeps the alias's name (the spend of the current window
    is in it)."""
    return next((name for name, m in spec.models.items() if limit.model in m.aliases), None)


def _limits(spec: PolicySpec) -> Limits:
    budgets = tuple(
        Budget(
            name, *_scope(b, spec),
            usd_micros=int(Decimal(b.usd) * 1_000_000) if b.usd is not None else None,
            tokens=b.tokens, period=b.period, timezone=b.timezone, hard=b.enforce == "hard",
            alerts=tuple(sorted(set(b.alerts))), webhook=b.webhook, public=_public(b, spec),
        )
        for name, b in spec.budgets.items()
    )
    rate_limits = tuple(
        RateLimit(name, *_scope(r, spec), requests_per_minute=r.requests_per_minute,
                  tokens_per_minute=r.tokens_per_minute, concurrent=r.concurrent, public=_public(r, spec))
        for name, r in spec.rate_limits.items()
    )
    state = spec.shared_state
    return Limits(budgets, rate_limits, state.on_unavailable, state.default_output_tokens)


def _rebase(url: str | None, kind: str) -> tuple[str, str] | None:
    """Where ``url``'s path puts the API's paths, read as the SDKs read a base URL: OpenAI's ends
    where ``/v1`` would (``http://vllm:8000/v1``; ``…/v1beta/openai`` for an API without it; a bare
    host: ``/v1``), Anthropic's and Azure's before the API's own ``/v1`` and ``/openai``."""
    path = urllib.parse.urlsplit(url).path.rstrip("/") if url else ""
    if kind == "azure-openai":
        base = _split_openai(path)[0]  # a whole segment: /openai-gw is a prefix of the gateway's
        return ("/openai", base + "/openai") if base else None
    if kind == "anthropic":
        base = path.removesuffix("/v1")
        return ("/v1", base + "/v1") if base else None
    return ("/v1", path) if path not in ("", "/v1") else None


def _split_openai(path: str) -> tuple[str, str | None]:
    """``path`` (no trailing ``/``) before its first segment ``openai``, and what follows that
    segment (None: no such segment; ``/openai-gw`` or ``/my-openai`` is not one)."""
    segments = path.split("/")
    if "openai" not in segments:
        return path, None
    at = segments.index("openai")
    return "/".join(segments[:at]), "".join("/" + segment for segment in segments[at + 1:])


# The API paths behind a base URL (less the /v1 they share): an endpoint ending with one is the URL
# of a call, and every request's own path would be added after it. Each starts with "/", so it
# matches whole segments. Not /models: Azure AI Foundry's inference base URL ends with it
# (https://<resource>.services.ai.azure.com/models), and Tollway sends no /models request.
_API_TAILS = sorted({api.path.removeprefix("/v1") for api in apis.APIS}, key=len, reverse=True)
# A request of each kind, to show where it would go.
_EXAMPLE_PATHS = {"anthropic": ("a Messages request", "/v1/messages"),
                  "azure-openai": ("a chat request", "/openai/deployments/DEPLOYMENT/chat/completions")}


def shown_url(url: str) -> str:
    """``url`` as a message shows it: its query string's names without their values (``?key=…``), a
    fragment as ``#…``: a key pasted there is never shown (in the log, /readyz, ``tollway policy
    check``). A user name or password is refused before (see :func:`ext_proc.policy.schema._reachable`)."""
    cut = min((at for at in (url.find("?"), url.find("#")) if at != -1), default=-1)
    if cut == -1:
        return url
    head, mark, rest = url[:cut], url[cut], url[cut + 1:]
    if mark == "#":  # a fragment (whatever follows it, a '?' too)
        return f"{head}#…"
    query, hash_mark, _ = rest.partition("#")
    # a name's value never shown, nor a token without one (``?SECRET``: it may be the key itself)
    names = "&".join(f"{part.partition('=')[0]}=…" if "=" in part else "…" for part in query.split("&") if part)
    return f"{head}?{names}" + ("#…" if hash_mark else "")


def _endpoint_problems(url: str, kind: str) -> list[str]:
    """Why ``url`` is not a base URL the API's paths can go behind (see :func:`_rebase`), each
    with the base URL to write: a query string or fragment (never sent), or an API's path in it
    (every request would go to a doubled path, or, under Azure's ``/openai``, lose it)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    base = path
    before, after = _split_openai(path)
    if kind == "azure-openai" and after not in (None, "", "/v1"):
        base = before  # Tollway builds /openai/deployments/<model>/... itself
    else:
        tail = next((tail for tail in _API_TAILS if path.endswith(tail)), None)
        if tail is not None:
            base = path.removesuffix(tail)
            base = base.removesuffix("/v1") if kind in ("anthropic", "azure-openai") else base
    write = f'write "{urllib.parse.urlunsplit((parts.scheme, parts.netloc, base, "", ""))}"'
    problems = []
    if "?" in url or "#" in url:
        cut = min(at for at in (url.find("?"), url.find("#")) if at != -1)
        what = "a query string" if url[cut] == "?" else "a fragment"
        shown = shown_url(url)[cut:]  # the query's names, not their values
        version = " (the api-version goes in 'api_version')" if kind == "azure-openai" else ""
        problems.append(f"has {what} ('{shown}'): an endpoint is a base URL, and nothing after its path is "
                        f"sent{version}; {write}")
    if base != path:
        request, example = _EXAMPLE_PATHS.get(kind, ("a chat request", "/v1/chat/completions"))
        rebase = _rebase(url, kind)
        if kind == "azure-openai":
            effect = ("Tollway builds each request's path behind the base URL (the deployment is a model's or "
                      "target's 'model')")
        else:
            sent = rebase[1] + example[len(rebase[0]):] if rebase and example.startswith(rebase[0]) else example
            effect = f"each request's own path goes after the base URL ({request} would go to {sent})"
        problems.append(f"has the API path '{path[len(base):]}' in it: {effect}; {write}")
    return problems


def _price(spec: PriceSpec | None) -> Price | None:
    if spec is None:
        return None
    return Price(
        input=Decimal(spec.input), output=Decimal(spec.output),
        cache_read=Decimal(spec.cache_read) if spec.cache_read else None,
        cache_write=Decimal(spec.cache_write) if spec.cache_write else None,
        cache_write_1h=Decimal(spec.cache_write_1h) if spec.cache_write_1h else None,
        input_audio=Decimal(spec.input_audio) if spec.input_audio else None,
        output_audio=Decimal(spec.output_audio) if spec.output_audio else None,
        source="policy",
    )


def _plan(public: str, plan: PlanSpec, providers: dict[str, Provider], spec: PolicySpec) -> Plan:
    """A plan's targets in priority order (stable: equal priorities keep their list order).

    A target inherits the context window, output limit and price of the ``models`` entry with the
    same provider and model name, unless it sets its own.
    """
    entries = {(m.provider, m.model or name): m for name, m in spec.models.items()}
    ordered = sorted(enumerate(plan.targets), key=lambda pair: (pair[1].priority if pair[1].priority is not None
                                                                else pair[0]))
    targets, weights = [], []
    for _, t in ordered:
        entry = entries.get((t.provider, t.model))
        limit = t.max_output_tokens or (entry.max_output_tokens if entry else None)
        targets.append(Target(
            public=public,
            provider=providers[t.provider],
            upstream_model=t.model,
            price=_price(t.price) or (_price(entry.price) if entry else None),
            context_window=t.context_window or (entry.context_window if entry else None),
            max_output_tokens=limit,
            output_tokens=limit or spec.shared_state.default_output_tokens,
        ))
        weights.append(t.weight or 0)
    return Plan(plan.strategy, tuple(targets), tuple(weights) if plan.strategy == "weighted" else ())
