"""Where a policy's problems are and how they read: from YAML text and pydantic errors to issues.

Passes 1 and 2 of :func:`~ext_proc.policy.compile.compile_policy` happen here (:func:`parse`):
PyYAML's safe loader, without timestamps, composes a node tree in which every node knows its
line and column (:class:`Tree`); YAML syntax errors, an empty file, several documents or a top
level that is not a mapping, and duplicate keys (which PyYAML would silently collapse) become
problems. For pass 3, :func:`describe` words a pydantic error the policy's way and points it at
the node its ``loc`` names. A :class:`Problem` is a message before it has a line;
:func:`to_issues` places problems in the tree and sorts them as :class:`PolicyIssue` values
(``file:line:column: path: message``), raised together as one :class:`PolicyError`.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ext_proc.llm.apis.base import key_shaped

from .schema import API_VERSION, PATTERN_MEANINGS, PolicySpec

Loc = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


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


# -- problems and where they are ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem before it has a line: ``where`` is looked up in the node tree."""

    message: str
    where: Loc = ()  # the node to point at
    path: Loc | None = None  # the path to show, when not ``where``
    at_key: bool = False  # point at the key rather than the value
    line: int = 0  # a known position (YAML syntax errors), 1-based; 0: look ``where`` up
    column: int = 0
    note: bool = False  # not a mistake: something to look at, which ``policy check`` prints without failing


def cannot_read(exc: OSError | UnicodeDecodeError) -> str:
    """Why a policy file could not be read, as every command says it (``cannot read: ...``)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"
    return f"cannot read: {exc.strerror or exc}"


def to_issues(problems: list[Problem], source: str, tree: Tree | None) -> list[PolicyIssue]:
    """``problems`` placed in ``tree`` (1:1 without one) as issues of ``source``, by position."""
    issues = []
    for problem in problems:
        line, column = problem.line, problem.column
        if not line:
            line, column = tree.position(problem.where, problem.at_key) if tree else (1, 1)
        path = problem.where if problem.path is None else problem.path
        issues.append(PolicyIssue(source, line, column, format_path(tree.spelled(path) if tree else path),
                                  hide_keys(problem.message)))
    return sorted(issues, key=lambda issue: (issue.line, issue.column))


# -- a key pasted where a name belongs is never repeated ------------------------------------------

HIDDEN = "(a value that looks like a key: not shown)"
HIDDEN_PART = "<a value that looks like a key: not shown>"


@functools.cache
def _tollway_key_shape() -> re.Pattern[str]:
    """The ``tollway_key`` detector's own pattern (``tw-`` and at least 40 URL-safe characters),
    without its check: that check tells a key from a slug in prose, and a key need not come from
    ``tollway keys create`` (``tw-`` and 40 hex digits fails it); a name in a policy that long after
    ``tw-`` is hidden. A shorter name (``tw-platform-search``) is a name."""
    from ext_proc.guardrails.detectors import BUILTIN

    [detector] = [d for d in BUILTIN if d.name == "tollway_key"]
    return re.compile("|".join(detector.patterns))


def _key_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds a key: the built-in credential detectors' findings (their patterns and
    checks: provider keys, tokens, Tollway keys) and the Tollway key's shape."""
    from ext_proc.guardrails.detectors import GROUPS
    from ext_proc.guardrails.scanner import builtin

    spans = [(f.start, f.end) for f in builtin().find(text, GROUPS["credentials"])]
    return spans + [m.span() for m in _tollway_key_shape().finditer(text)]


def looks_like_key(text: str) -> bool:
    """Whether ``text`` (a name from the policy) holds a credential (:func:`_key_spans`), never
    whether it merely starts with ``tw-``. Issues go to CI logs, the service's log, /readyz."""
    return bool(_key_spans(text))


def hide_keys(message: str) -> str:
    """``message`` with every key in it (:func:`_key_spans`) replaced by :data:`HIDDEN`, its quotes
    with it."""
    spans = _key_spans(message)
    if not spans:
        return message
    out, at = [], 0
    for start, end in sorted(spans):
        if end <= at:
            continue
        start = max(start, at)
        if start > 0 and end < len(message) and message[start - 1] == message[end] and message[end] in "'\"":
            start, end = start - 1, end + 1  # 'the key' -> the mark alone
        out += [message[at:start], HIDDEN]
        at = end
    return "".join(out) + message[at:]


def format_path(loc: Loc) -> str:
    """``("teams", "search", "keys", 0)`` -> ``teams.search.keys[0]``; odd names in brackets, a
    name that looks like a key (:func:`looks_like_key`) never shown."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif looks_like_key(str(part)):
            out += f"[{HIDDEN_PART}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


class _Loader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # Any without types-PyYAML
    """The safe loader without timestamps: no policy field is a date, several are version strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


_NOT_FOUND = object()


def loc_part(key: object) -> object:
    """A mapping key as pydantic's error locations spell it: a string or an integer as it is (a
    boolean as the integer it equals), anything else as its ``str`` (``~`` is ``'None'``)."""
    return key if isinstance(key, str | int) else str(key)


class Tree:
    """The composed YAML document: keys compared as YAML does, and the node a ``loc`` names."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self._keys = _Loader("")  # constructs single key scalars, to compare keys as YAML does
        self._key_cache: dict[int, object] = {}

    def key_value(self, node: Node) -> object:
        """The key ``node`` as YAML compares keys (``yes`` is ``True``), or ``_NOT_FOUND``."""
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

    def steps(self, loc: Loc) -> list[tuple[Node | None, Node]]:
        """(key node, value node) for the root and each part of ``loc`` that exists."""
        steps: list[tuple[Node | None, Node]] = [(None, self.root)]
        for part in loc:
            node = steps[-1][1]
            if isinstance(node, MappingNode):
                found = [pair for pair in node.value if self.key_value(pair[0]) == part] or [
                    pair for pair in node.value if loc_part(self.key_value(pair[0])) == part]  # ~: 'None'
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


# -- passes 1 and 2: the YAML text --------------------------------------------------------------


def parse(text: str) -> tuple[list[Problem], Tree | None, dict[Any, Any] | None]:
    """Passes 1 and 2: the problems, the node tree (whenever a document was composed) and the data
    (only a mapping, and only when the YAML itself is sound) of the policy ``text``."""
    problems: list[Problem] = []
    tree: Tree | None = None
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here
        root = loader.get_single_node()
        if root is not None:
            tree = Tree(root)
            problems += _duplicate_keys(tree)
        data = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, text))
        return problems, tree, None
    except RecursionError:
        problems.append(Problem("the YAML is nested too deeply", line=1, column=1))
        return problems, tree, None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:  # no document, or only "---"
        problems.append(
            Problem(f"the policy is empty (a policy starts with 'apiVersion: {API_VERSION}')", line=1, column=1)
        )
        return problems, tree, None
    if not isinstance(data, dict):
        problems.append(Problem("the top level must be a mapping (apiVersion, providers, models, teams)"))
        return problems, tree, None
    return problems, tree, data


def _duplicate_keys(tree: Tree) -> list[Problem]:
    problems = []
    for loc, mapping in _mappings(tree.root, tree.key_value):
        first_lines: dict[object, int] = {}
        for key, _ in mapping.value:
            value = tree.key_value(key)
            if value is _NOT_FOUND:
                continue
            if value in first_lines:
                problems.append(
                    Problem(
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


def _yaml_problem(exc: yaml.YAMLError, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return Problem(f"invalid YAML: unacceptable character #x{char:04x}: {exc.reason}", line=line, column=column)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        words = ", ".join(part for part in (exc.context, exc.problem) if part)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if exc.problem_mark is not None and exc.problem in _INDENTATION_PROBLEMS:
            context = exc.context_mark.line + 1 if exc.context_mark is not None else None
            found = _misindented(text.split("\n"), line, context)
            if found is not None:
                odd, spaces, expected = found
                return Problem(f"invalid YAML: this line is indented by {spaces} spaces where the lines around it "
                               f"use {expected} (the parser: {words})", line=odd, column=spaces + 1)
        opened = exc.context_mark
        if exc.context in _FLOW_OPENERS and opened is not None and exc.problem_mark is not None \
                and opened.line < exc.problem_mark.line and _unclosed(text, opened.line, exc.problem_mark.line):
            # An unclosed [ or {: where it was opened, not the later line where the parser gave up.
            return Problem(f"invalid YAML: this '{_FLOW_OPENERS[exc.context]}' is not closed (the parser, at line "
                           f"{line}: {words})", line=opened.line + 1, column=opened.column + 1)
        return Problem(f"invalid YAML: {words or exc}", line=line, column=column)
    return Problem(f"invalid YAML: {exc}", line=1, column=1)


_FLOW_OPENERS = {"while parsing a flow sequence": "[", "while parsing a flow mapping": "{"}


def _unclosed(text: str, opened: int, stopped: int) -> bool:
    """Whether the parser stopped on a line that starts a new entry of the block around the flow
    opened on line ``opened`` (indented no deeper than that line: the bracket was never closed),
    rather than on a mistake inside the flow (indented deeper)."""
    lines = text.split("\n")
    if stopped >= len(lines):
        return True

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    return indent(lines[stopped]) <= indent(lines[opened])


# What PyYAML says when a line is indented one way and its neighbours another.
_INDENTATION_PROBLEMS = frozenset({
    "mapping values are not allowed here",
    "expected <block end>, but found '<block mapping start>'",
    "expected <block end>, but found '-'",
    "expected <block end>, but found '<block sequence start>'",
    "could not find expected ':'",
})


def _misindented(lines: list[str], error: int, context: int | None) -> tuple[int, int, int] | None:
    """The line whose indentation is the mistake, its indentation and the one its neighbours use.

    PyYAML reports an indentation mistake where the parse breaks, which is the wrong line as
    often as not (a key indented one space short breaks the parse on the *next* line). Between
    the reported line and the one before it (or the parser's context line), the mistake is the
    one whose indentation fewer of its siblings share: the lines of the same kind (``key:`` or
    ``- item``) in the same block. On a tie the later line is wrong: the first line of a block
    sets its indentation.
    """

    def content(i: int) -> bool:
        stripped = lines[i - 1].strip()
        return bool(stripped) and not stripped.startswith("#")

    def indent(i: int) -> int:
        return len(lines[i - 1]) - len(lines[i - 1].lstrip(" "))

    def kind(i: int) -> bool:
        return lines[i - 1].lstrip().startswith("-")

    if not 1 <= error <= len(lines) or not content(error):
        return None
    previous = next((i for i in range(error - 1, 0, -1) if content(i)), None)
    for other in (previous, context):
        if other is None or other >= error or not content(other) or indent(other) == indent(error):
            continue
        low = min(indent(other), indent(error))
        parent = next((i for i in range(other - 1, 0, -1) if content(i) and indent(i) < low), 0)
        floor = indent(parent) if parent else -1
        votes = {indent(other): 0, indent(error): 0}
        for i in range(parent + 1, len(lines) + 1):
            if not content(i):
                continue
            if indent(i) <= floor:
                break
            if kind(i) == kind(error) and indent(i) in votes:
                votes[indent(i)] += 1
        if votes[indent(error)] > votes[indent(other)]:
            return other, indent(other), indent(error)
        return error, indent(error), indent(other)
    return None


# -- pass 3: pydantic's errors in the policy's words ----------------------------------------------

_BOUNDS = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
           "greater_than": ("more than", "gt"), "less_than": ("less than", "lt")}
SECTION_NOUNS = {"providers": "provider", "models": "model", "teams": "team", "budgets": "budget",
                 "rate_limits": "rate limit"}


def describe(error: ErrorDetails, tree: Tree | None) -> Problem:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    node = tree.node(loc) if tree else None

    if loc and loc[-1] == "[key]":  # a mapping key itself, e.g. a team name
        where = loc[:-1]
        noun = SECTION_NOUNS.get(str(where[-2])) if len(where) == 2 else None
        key_node = tree.steps(where)[-1][0] if tree else None
        message = _message(kind, ctx, value, key_node, error["msg"])
        name = key_node.value if isinstance(key_node, ScalarNode) else where[-1]
        return Problem(f"{noun or 'key'} name '{name}': {message}", where=where, path=where[:-1], at_key=True)
    if kind == "missing":
        return Problem("required field missing", where=loc)
    if kind == "extra_forbidden":
        return Problem(_unknown_field(loc), where=loc, path=loc[:-1], at_key=True)
    if kind == "literal_error":
        return Problem(_one_of(ctx, value), where=loc)
    if kind == "too_short" and ctx.get("min_length") == 1:
        return Problem(_empty(loc), where=loc)
    return Problem(_message(kind, ctx, value, node, error["msg"]), where=loc)


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
    if kind in _BOUNDS and _BOUNDS[kind][1] in ctx:
        words, bound = _BOUNDS[kind]
        return f"must be {words} {ctx[bound]:,}" if isinstance(ctx[bound], int) else f"must be {words} {ctx[bound]}"
    if kind in ("too_short", "too_long") and "actual_length" in ctx:
        if kind == "too_short":
            return f"must have at least {ctx.get('min_length')} entries, not {ctx['actual_length']}"
        return f"must have at most {ctx.get('max_length')} entries, not {ctx['actual_length']}"
    if kind == "recursion_loop":
        return "refers to itself (a YAML alias inside its own anchor)"
    return msg[:1].lower() + msg[1:]


def _empty(loc: Loc) -> str:
    """An empty list where at least one entry is needed: what the list is for, when it matters."""
    if len(loc) == 4 and loc[:2] == ("guardrails", "rules") and loc[3] in ("teams", "models"):
        noun = "team" if loc[3] == "teams" else "model"
        return (f"must not be empty: the rule would apply to no {noun} (list them, or leave '{loc[3]}' out "
                f"for every {noun})")
    return "must not be empty (give at least one)"


def _yaml_hint(value: object, node: Node | None) -> str:
    if isinstance(value, bool | int | float) or value is None:
        written = node.value if isinstance(node, ScalarNode) else value
        if value is None:  # "~" in quotes would be no better
            return f" (YAML reads {written or 'nothing'} as empty)"
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
    given = (f"not '{value}'" if isinstance(value, str) and not key_shaped(value)  # a key's piece too
             else f"not {HIDDEN}" if isinstance(value, str) else f"not {_what(value)}")
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
    return f"unknown field '{field}'" + (suggest(field, names) or f" (expected one of: {', '.join(names)})")


def suggest(word: object, candidates: Iterable[object]) -> str:
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
