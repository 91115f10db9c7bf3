"""What the policy's guardrails mean for one caller and model: the compiled rules and their plans.

The policy lists rules (:class:`Rule`): a guardrail name (what records and reports count), the
detectors it covers, an action, a direction, and the teams and models it applies to. For one
request the first rule that covers a detector, for the caller's team, the model asked for and the
direction, decides that detector's action there: rules read top to bottom, like a firewall's, so
a team's exception goes above the general rule. :meth:`Guardrails.plan` turns that into a
:class:`Plan` (detector -> rule, per direction), once per (team, model), cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ext_proc import memo

from .detectors import INJECTION, PASTED
from .kept import KEPT
from .scanner import Scanner

ACTIONS = ("redact", "mask", "pseudonymise", "block", "log")
REQUEST, RESPONSE = "request", "response"
@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the policy, compiled: ``teams``/``models`` None means every one."""

    name: str
    detectors: frozenset[str]
    action: str
    directions: frozenset[str]
    teams: frozenset[str] | None = None
    models: frozenset[str] | None = None

    def applies(self, team: str, model: str) -> bool:
        return (self.teams is None or team in self.teams) and (self.models is None or model in self.models)


@dataclass(frozen=True, slots=True)
class Classifier:
    """An external prompt-injection classifier (an HTTP endpoint the platform team runs)."""

    url: str
    timeout: float  # seconds
    threshold: float
    fail_closed: bool  # no answer in time (or an error): block (closed) or let through (open)


@dataclass(frozen=True, slots=True)
class Plan:
    """The guardrails of one (team, model): detector name -> the rule deciding it, per direction."""

    scanner: Scanner
    request: Mapping[str, Rule]
    response: Mapping[str, Rule]
    injection: Rule | None = None  # the rule deciding prompt injection (request only)
    threshold: float = 0.5  # the built-in injection score that triggers it
    classifier: Classifier | None = None
    instructions: bool = True  # score user text against the request's system prompt (.instructions)
    # The request's rules for the application's own instructions (system and developer text): not
    # the detectors of what users paste (a system prompt may give a password it keeps; kept_secret).
    system: Mapping[str, Rule] | None = None  # None: the same as ``request``
    # This plan among every plan the process made (never reused): the space of its findings in
    # the worker's memory of texts (ext_proc.memo), so a new policy's plans never read an old one's.
    serial: bytes = field(default_factory=memo.tag, compare=False)
    # Whether a request rule pseudonymises (the instructions' rules are some of the request's).
    pseudonymises: bool = field(init=False, compare=False)
    # Whether answers go through the guard (a response rule, or pseudonyms to restore).
    answers: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        pseudonymises = any(rule.action == "pseudonymise" for rule in self.request.values())
        object.__setattr__(self, "pseudonymises", pseudonymises)
        object.__setattr__(self, "answers", bool(self.response) or pseudonymises)


@dataclass
class Guardrails:
    """The policy's guardrails, compiled; plans are made on first use per (team, model)."""

    scanner: Scanner
    rules: tuple[Rule, ...]
    threshold: float = 0.5
    classifier: Classifier | None = None
    instructions: bool = True
    _plans: dict[tuple[str, str], Plan | None] = field(default_factory=dict, repr=False, compare=False)

    @property
    def scores_injection(self) -> bool:
        """Whether a rule uses the prompt-injection scorer (whose databases a serving process
        compiles before its first request: see :func:`ext_proc.guardrails.injection.warm`)."""
        return any(INJECTION in rule.detectors for rule in self.rules)

    def plan(self, team: str, model: str) -> Plan | None:
        """The plan for ``team`` calling ``model`` (a canonical public name or alias); None when no
        rule applies."""
        key = (team, model)
        if key in self._plans:
            return self._plans[key]
        chosen: dict[str, dict[str, Rule]] = {REQUEST: {}, RESPONSE: {}}
        for rule in self.rules:
            if not rule.applies(team, model):
                continue
            for direction in rule.directions:
                for name in rule.detectors:
                    chosen[direction].setdefault(name, rule)
        injection = chosen[REQUEST].pop(INJECTION, None)
        chosen[RESPONSE].pop(INJECTION, None)
        chosen[REQUEST].pop(KEPT, None)  # the values instructions keep are looked for in answers only
        for name in PASTED:  # what a user pastes: looked for in prompts' user and tool text only
            chosen[RESPONSE].pop(name, None)
        plan = None
        if chosen[REQUEST] or chosen[RESPONSE] or injection:
            plan = Plan(self.scanner, chosen[REQUEST], chosen[RESPONSE], injection, self.threshold,
                        self.classifier if injection else None, self.instructions,
                        {name: rule for name, rule in chosen[REQUEST].items() if name not in PASTED})
        self._plans[key] = plan
        return plan
