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
   models exist, aliases, keys and workloads are not claimed twice, kind-specific provider fields.
   Entries that failed the schema are left out of this pass, and references to them are not
   reported a second time, so a typo in one provider does not hide a wrong key in a team.
5. **Build.** Only a policy without problems becomes a :class:`CompiledPolicy`.

Problems are :class:`PolicyIssue` (``file:line:column: path: message``), sorted by position and
raised together as one :class:`PolicyError`. Nothing here reads files: the caller passes the text
and names its ``source``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .compiled import CompiledPolicy, CredentialSource, Provider, Target, Team
from .schema import API_VERSION, PATTERN_MEANINGS, RESERVED_SECTIONS, PolicySpec

Loc = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"

__all__ = ["PolicyError", "PolicyIssue", "compile_policy"]


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file, at a 1-based line and column, on a field path."""

    source: str
    line: int
    column: int
    path: str  # e.g. "teams.search.keys[0].sha256"; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy that does not compile, with every issue found (at least one)."""

    def __init__(self, errors: list[PolicyIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in errors))
        self.errors = errors


def compile_policy(text: str, source: str = "<memory>") -> CompiledPolicy:
    """Validate ``text`` (a policy YAML document) and index it; :class:`PolicyError` if it is bad."""
    compiler = _Compiler(text)
    problems, spec = compiler.run()
    if problems:
        raise PolicyError(_issues(problems, source, compiler.tree))
    assert spec is not None
    return _build(spec, text, source)


# -- problems and where they are ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Problem:
    """A problem before it has a line: ``where`` is looked up in the node tree."""

    message: str
    where: Loc = ()  # the node to point at
    path: Loc | None = None  # the path to show, when not ``where``
    at_key: bool = False  # point at the key rather than the value
    line: int = 0  # a known position (YAML syntax errors), 1-based; 0: look ``where`` up
    column: int = 0


def _issues(problems: list[_Problem], source: str, tree: _Tree | None) -> list[PolicyIssue]:
    issues = []
    for problem in problems:
        line, column = problem.line, problem.column
        if not line:
            line, column = tree.position(problem.where, problem.at_key) if tree else (1, 1)
        path = problem.where if problem.path is None else problem.path
        issues.append(
            PolicyIssue(source, line, column, format_path(tree.spelled(path) if tree else path), problem.message)
        )
    return sorted(issues, key=lambda issue: (issue.line, issue.column))


def format_path(loc: Loc) -> str:
    """``("teams", "search", "keys", 0)`` -> ``teams.search.keys[0]``; odd names in brackets."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


_NOT_FOUND = object()


class _Tree:
    """The composed YAML document, to find the node a ``loc`` names."""

    def __init__(self, root: Node, key_value: Callable[[Node], object]) -> None:
        self.root = root
        self.key_value = key_value

    def steps(self, loc: Loc) -> list[tuple[Node | None, Node]]:
        """(key node, value node) for the root and each part of ``loc`` that exists."""
        steps: list[tuple[Node | None, Node]] = [(None, self.root)]
        for part in loc:
            node = steps[-1][1]
            if isinstance(node, MappingNode):
                found = [pair for pair in node.value if self.key_value(pair[0]) == part]
                if not found:
                    break
                steps.append(found[-1])  # PyYAML keeps the last of duplicate keys
            elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                steps.append((None, node.value[part]))
            else:
                break
        return steps

    def spelled(self, loc: Loc) -> Loc:
        """``loc`` with each mapping key as written in the file (``yes``, not ``True`` or 1)."""
        steps = self.steps(loc)
        return (
            tuple(
                key.value if isinstance(key, ScalarNode) else part
                for part, (key, _) in zip(loc, steps[1:], strict=False)
            )
            + loc[len(steps) - 1 :]
        )

    def node(self, loc: Loc) -> Node | None:
        steps = self.steps(loc)
        return steps[-1][1] if len(steps) == len(loc) + 1 else None

    def position(self, loc: Loc, at_key: bool = False) -> tuple[int, int]:
        """Where ``loc`` is written: a scalar's value, else (a mapping, a list, nothing after the
        colon) its key; for a missing part, the key of the nearest existing parent."""
        steps = self.steps(loc)
        key, value = steps[-1]
        complete = len(steps) == len(loc) + 1
        written = isinstance(value, ScalarNode) and (value.value or value.tag != _NULL_TAG)  # not "key:" alone
        point_at_value = complete and not at_key and written
        node = key if key is not None and not point_at_value else value
        return node.start_mark.line + 1, node.start_mark.column + 1


# -- the passes ---------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # Any without types-PyYAML
    """The safe loader without timestamps: no policy field is a date, several are version strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tree: _Tree | None = None
        self._keys = _Loader("")  # constructs single key scalars, to compare keys as YAML does
        self._key_cache: dict[int, object] = {}

    def run(self) -> tuple[list[_Problem], PolicySpec | None]:
        problems: list[_Problem] = []
        data = self._parse(problems)
        if data is None:
            return problems, None
        spec: PolicySpec | None
        try:
            spec, skipped = PolicySpec.model_validate(data), _Skipped()
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            problems += [_describe(error, self.tree) for error in errors]
            spec, skipped = _validate_pruned(data, errors)
        if spec is not None:
            problems += _check_references(spec, skipped)
        return problems, spec

    def _key_value(self, node: Node) -> object:
        if id(node) not in self._key_cache:
            value: object = _NOT_FOUND
            if isinstance(node, ScalarNode) and node.tag != _MERGE_TAG:
                try:
                    value = self._keys.construct_object(node)
                    hash(value)
                except (yaml.YAMLError, TypeError):
                    value = _NOT_FOUND
            self._key_cache[id(node)] = value
        return self._key_cache[id(node)]

    def _parse(self, problems: list[_Problem]) -> dict[Any, Any] | None:
        loader = None
        try:
            loader = _Loader(self.text)  # the reader refuses control characters here
            root = loader.get_single_node()
            if root is not None:
                self.tree = _Tree(root, self._key_value)
                problems += self._duplicate_keys(root)
            data = None if root is None else loader.construct_document(root)
        except yaml.YAMLError as exc:
            problems.append(_yaml_problem(exc, self.text))
            return None
        except RecursionError:
            problems.append(_Problem("the YAML is nested too deeply", line=1, column=1))
            return None
        finally:
            if loader is not None:
                loader.dispose()
        if data is None:  # no document, or only "---"
            problems.append(
                _Problem(f"the policy is empty (a policy starts with 'apiVersion: {API_VERSION}')", line=1, column=1)
            )
            return None
        if not isinstance(data, dict):
            problems.append(_Problem("the top level must be a mapping (apiVersion, providers, models, teams)"))
            return None
        return data

    def _duplicate_keys(self, root: Node) -> list[_Problem]:
        problems = []
        for loc, mapping in _mappings(root, self._key_value):
            first_lines: dict[object, int] = {}
            for key, _ in mapping.value:
                value = self._key_value(key)
                if value is _NOT_FOUND:
                    continue
                if value in first_lines:
                    problems.append(
                        _Problem(
                            f"duplicate key '{key.value}' (first at line {first_lines[value]}; "
                            "YAML would silently keep only the last)",
                            line=key.start_mark.line + 1,
                            column=key.start_mark.column + 1,
                            where=loc,
                        )
                    )
                else:
                    first_lines[value] = key.start_mark.line + 1
        return problems


def _mappings(root: Node, key_value: Callable[[Node], object]) -> Iterator[tuple[Loc, MappingNode]]:
    """Every mapping node under ``root`` with its path, once each (aliases may share nodes)."""
    seen: set[int] = set()
    stack: list[tuple[Loc, Node]] = [((), root)]
    while stack:
        loc, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            yield loc, node
            for key, value in node.value:
                part = key_value(key)
                stack.append(((*loc, part if isinstance(part, str | int) else str(key.value)), value))
        elif isinstance(node, SequenceNode):
            stack += [((*loc, index), item) for index, item in enumerate(node.value)]


def _yaml_problem(exc: yaml.YAMLError, text: str) -> _Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return _Problem(f"invalid YAML: unacceptable character #x{char:04x}: {exc.reason}", line=line, column=column)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        words = ", ".join(part for part in (exc.context, exc.problem) if part)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return _Problem(f"invalid YAML: {words or exc}", line=line, column=column)
    return _Problem(f"invalid YAML: {exc}", line=1, column=1)


# -- pass 3: pydantic's errors in the policy's words ----------------------------------------------

_SECTION_NOUNS = {"providers": "provider", "models": "model", "teams": "team"}


def _describe(error: ErrorDetails, tree: _Tree | None) -> _Problem:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    node = tree.node(loc) if tree else None

    if loc and loc[-1] == "[key]":  # a mapping key itself, e.g. a team name
        where = loc[:-1]
        noun = _SECTION_NOUNS.get(str(where[-2])) if len(where) == 2 else None
        key_node = tree.steps(where)[-1][0] if tree else None
        message = _message(kind, ctx, value, key_node, error["msg"])
        name = key_node.value if isinstance(key_node, ScalarNode) else where[-1]
        return _Problem(f"{noun or 'key'} name '{name}': {message}", where=where, path=where[:-1], at_key=True)
    if kind == "missing":
        return _Problem("required field missing", where=loc)
    if kind == "extra_forbidden":
        return _Problem(_unknown_field(loc), where=loc, path=loc[:-1], at_key=True)
    if kind == "literal_error":
        return _Problem(_one_of(ctx, value), where=loc)
    return _Problem(_message(kind, ctx, value, node, error["msg"]), where=loc)


def _message(kind: str, ctx: dict[str, Any], value: object, node: Node | None, msg: str) -> str:
    if kind == "string_type":
        return "must be a string" + _yaml_hint(value, node)
    if kind == "string_pattern_mismatch":
        return PATTERN_MEANINGS.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, not {_what(value)}"
    if kind == "list_type":
        return f"must be a list, not {_what(value)}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "recursion_loop":
        return "refers to itself (a YAML alias inside its own anchor)"
    return msg[:1].lower() + msg[1:]


def _yaml_hint(value: object, node: Node | None) -> str:
    if isinstance(value, bool | int | float) or value is None:
        written = node.value if isinstance(node, ScalarNode) else value
        return f" (YAML reads {written} as {_what(value)}; put it in quotes)"
    return f", not {_what(value)}"


def _what(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "empty" if value is None else type(value).__name__


def _one_of(ctx: dict[str, Any], value: object) -> str:
    """``must be one of a, b (not 'c'; did you mean 'b'?)``."""
    choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
    wanted = f"must be {choices[0]}" if len(choices) == 1 else f"must be one of {', '.join(choices)}"
    given = f"not '{value}'" if isinstance(value, str) else f"not {_what(value)}"
    close = _closest(value, choices) if isinstance(value, str) and len(choices) > 1 else None
    return f"{wanted} ({given}; did you mean '{close}'?)" if close else f"{wanted} ({given})"


def _unknown_field(loc: Loc) -> str:
    field = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown field '{field}'"
    names = [info.alias or name for name, info in model.model_fields.items()]
    if not names:
        return f"unknown field '{field}' (this section is reserved and takes no settings yet)"
    return f"unknown field '{field}'" + (_suggest(field, names) or f" (expected one of: {', '.join(names)})")


def _suggest(word: object, candidates: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` for the candidate closest to ``word``, or nothing."""
    close = _closest(word, candidates)
    return f" (did you mean '{close}'?)" if close else ""


def _closest(word: object, candidates: Iterable[object]) -> str | None:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.7)
    return close[0] if close else None


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema model that describes the mapping at ``loc``, following fields, dicts and lists."""
    current: Any = PolicySpec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {info.alias or name: info for name, info in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[str(part)].annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


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
    names: dict[str, set[str]] = {section: set() for section in _SECTION_NOUNS}
    whole: set[str] = set()
    for error in errors:
        loc = tuple(error["loc"])
        section = loc[0] if loc else None
        if error["type"] == "extra_forbidden" and len(loc) > 1:
            pruned = _without(pruned, loc)
        elif isinstance(section, str) and section in _SECTION_NOUNS:
            entries = pruned.get(section)
            if len(loc) >= 2 and isinstance(entries, dict):
                entry = entries.get(loc[1])
                pruned[section] = {name: value for name, value in entries.items() if name != loc[1]}
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


def _check_references(spec: PolicySpec, skipped: _Skipped) -> list[_Problem]:
    problems: list[_Problem] = []

    for name, provider in spec.providers.items():
        here = ("providers", name)
        if provider.kind == "azure-openai" and provider.api_version is None:
            example = 'required for kind azure-openai (e.g. "2024-10-21")'
            problems.append(_Problem(example, where=(*here, "api_version")))
        if provider.kind != "azure-openai" and provider.api_version is not None:
            problems.append(_Problem("only for kind azure-openai", where=(*here, "api_version"), at_key=True))
        if provider.kind != "anthropic" and provider.anthropic_version is not None:
            problems.append(_Problem("only for kind anthropic", where=(*here, "anthropic_version"), at_key=True))

    owners: dict[str, tuple[str, bool]] = {name: (name, False) for name in spec.models}  # name -> (model, alias?)
    for name, model in spec.models.items():
        if model.provider not in spec.providers and ("providers", model.provider) not in skipped:
            problems.append(
                _Problem(
                    f"unknown provider '{model.provider}'"
                    + _suggest(model.provider, skipped.known("providers", spec.providers)),
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
                problems.append(_Problem(f"alias '{alias}' is {taken}", where=where))
            else:
                owners[alias] = (name, True)

    key_places: dict[str, Loc] = {}
    workload_teams: dict[str, str] = {}
    for team_name, team in spec.teams.items():
        here = ("teams", team_name)
        ids: dict[str, int] = {}
        for index, key in enumerate(team.keys):
            if key.id in ids:
                problems.append(
                    _Problem(
                        f"key id '{key.id}' is already used by keys[{ids[key.id]}] of this team",
                        where=(*here, "keys", index, "id"),
                    )
                )
            ids.setdefault(key.id, index)
            if key.sha256 in key_places:
                problems.append(
                    _Problem(
                        f"the same key is already listed at {format_path(key_places[key.sha256])}",
                        where=(*here, "keys", index, "sha256"),
                    )
                )
            key_places.setdefault(key.sha256, (*here, "keys", index))
        for index, workload in enumerate(team.workloads):
            other = workload_teams.setdefault(workload, team_name)
            if other != team_name or workload in team.workloads[:index]:
                where_else = "listed twice in this team" if other == team_name else f"already in team '{other}'"
                problems.append(_Problem(f"workload '{workload}' is {where_else}", where=(*here, "workloads", index)))
        for index, ref in enumerate(team.models):
            where = (*here, "models", index)
            if ref == "*":
                if len(team.models) > 1:
                    problems.append(_Problem('"*" (every model) must be the only entry', where=where))
            elif ref not in owners and ("models", ref) not in skipped:
                suggestion = _suggest(ref, skipped.known("models", owners))
                problems.append(_Problem(f"unknown model '{ref}'" + suggestion, where=where))
    return problems


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
        )
        for name, p in spec.providers.items()
    }
    models: dict[str, Target] = {}
    for name, m in spec.models.items():
        target = Target(public=name, provider=providers[m.provider], upstream_model=m.model or name)
        models.update(dict.fromkeys([name, *m.aliases], target))
    teams = {}
    for name, t in spec.teams.items():
        every = t.models == ["*"]
        allowed = frozenset(spec.models) if every else frozenset(models[ref].public for ref in t.models)
        teams[name] = Team(name=name, models=allowed, all_models=every)
    return CompiledPolicy(
        version=hashlib.sha256(text.encode("utf-8")).hexdigest()[:12],
        source=source,
        providers=types.MappingProxyType(providers),
        models=types.MappingProxyType(models),
        teams=types.MappingProxyType(teams),
        keys=types.MappingProxyType({k.sha256: (name, k.id) for name, t in spec.teams.items() for k in t.keys}),
        workloads=types.MappingProxyType({w: name for name, t in spec.teams.items() for w in t.workloads}),
        sections=types.MappingProxyType({section: getattr(spec, section) for section in RESERVED_SECTIONS}),
    )
