"""The ``guardrails:`` section: its reference checks and its compiled form.

Pass 4 of :func:`~ext_proc.policy.compile.compile_policy` calls :func:`problems` (detector names,
teams and models a rule names, actions a detector cannot take, notes on settings no rule uses
(a custom detector, prompt-injection scoring without a rule for it), custom patterns Hyperscan or
Python cannot use or whose length is unbounded, a pattern's settings given to a word list); pass
5 calls :func:`build`, which compiles every detector the policy can use into one scanner
(:mod:`ext_proc.guardrails.scanner`) and the rules into :class:`~ext_proc.guardrails.plan.Guardrails`.
"""

from __future__ import annotations

import functools

from ext_proc.guardrails.detectors import BUILTIN, GROUPS, INJECTION, PASTED, Detector, custom
from ext_proc.guardrails.kept import KEPT
from ext_proc.guardrails.plan import REQUEST, RESPONSE, Classifier, Guardrails, Rule
from ext_proc.guardrails.scanner import Scanner, builtin

from .issues import HIDDEN, Loc, Problem, looks_like_key, suggest
from .schema import CustomDetectorSpec, GuardrailRuleSpec, PolicySpec

BUILTIN_NAMES = tuple(d.name for d in BUILTIN)


def named(value: object) -> str:
    """A name from the policy as a message shows it: quoted, unless it looks like a credential (a
    key pasted where a name belongs: a message must not repeat it to the log, /readyz, a console)."""
    text = str(value)
    return HIDDEN if looks_like_key(text) else f"'{text}'"


def problems(spec: PolicySpec, models: dict[str, tuple[str, bool]], skipped: object) -> list[Problem]:
    """What the guardrails section gets wrong beyond its schema (``models``: public name -> owner)."""
    section = spec.guardrails
    out: list[Problem] = []
    here: Loc = ("guardrails",)
    used = {detector for rule in section.rules for detector in rule.detectors}
    for name, entry in section.custom.items():
        at: Loc = (*here, "custom", name)
        if name in BUILTIN_NAMES or name in GROUPS or name in (INJECTION, KEPT):
            out.append(Problem(f"'{name}' is a built-in detector's name: choose another", where=at, at_key=True))
            continue
        found = len(out)
        try:
            _custom_detector(name, entry)
        except Exception as exc:
            out.append(Problem(f"cannot be used: {exc}", where=(*at, "pattern" if entry.pattern else "words")))
        if entry.words is not None:  # a word list matches whole words in any case, its length known
            out += [Problem(f"only with 'pattern': {why}", where=(*at, field), at_key=True)
                    for field, why in (("caseless", "words always match in any case"),
                                       ("max_length", "the longest match of a word list is known"))
                    if field in entry.model_fields_set]
        if name not in used and len(out) == found:  # (a detector with a mistake of its own: that is reported)
            out.append(Problem(f"note: no rule uses detector '{name}' yet, so it finds nothing until one lists it "
                               "in its detectors", where=at, at_key=True, note=True))
    if section.custom and not any(not p.note for p in out):
        try:  # every one compiles alone: together with the built-in ones too (one database)
            scanner(spec)
        except Exception as exc:
            out.append(Problem(f"the custom detectors cannot be used together: {exc}", where=(*here, "custom"),
                               at_key=True))
    if INJECTION not in used:
        out += [Problem("note: no rule uses prompt_injection yet, so this is not used (nothing is scored) until a "
                        "rule lists prompt_injection in its detectors", where=(*here, "injection", field),
                        at_key=True, note=True)
                for field in sorted(section.injection.model_fields_set)]
    known = [*GROUPS, INJECTION, KEPT, *BUILTIN_NAMES, *section.custom]
    teams = list(spec.teams)
    public = [*models, *spec.routing.aliases]
    for index, rule in enumerate(section.rules):
        at = (*here, "rules", index)
        for j, detector in enumerate(rule.detectors):
            if detector not in known:
                out.append(Problem(f"unknown detector {named(detector)}" + (suggest(detector, known) or
                                   f" (one of: {', '.join(known)})"), where=(*at, "detectors", j)))
            elif detector == INJECTION and rule.action not in ("block", "log"):
                out.append(Problem("prompt_injection can only block or log", where=(*at, "action")))
            elif detector == INJECTION and rule.direction == "response":
                out.append(Problem("prompt_injection scores prompts: use direction request or both",
                                   where=(*at, "direction")))
            elif detector == KEPT and rule.action == "pseudonymise":
                out.append(Problem("kept_secret is found in answers: redact, mask, block or log",
                                   where=(*at, "action")))
            elif detector in PASTED and rule.direction == "response":
                out.append(Problem(f"{detector} finds what users paste into prompts: use direction request or both",
                                   where=(*at, "direction")))
            elif detector == KEPT and rule.direction == "request":
                out.append(Problem("kept_secret finds what the instructions keep in the answers: use direction "
                                   "response or both", where=(*at, "direction")))
        if rule.action == "pseudonymise" and rule.direction == "response":
            out.append(Problem("pseudonymise replaces values in prompts and restores them in answers: use "
                               "direction request or both", where=(*at, "direction")))
        for field, names, noun in (("teams", teams, "team"), ("models", public, "model")):
            listed = getattr(rule, field)
            for j, ref in enumerate(listed):
                where = (*at, field, j)
                if ref == "*":
                    if len(listed) > 1:
                        out.append(Problem('"*" (every one) must be the only entry', where=where))
                elif ref not in names and (field, ref) not in skipped:  # type: ignore[operator]
                    out.append(Problem(f"unknown {noun} {named(ref)}" + suggest(ref, names), where=where))
        if rule.models != ["*"]:
            out += _alias_notes(spec, rule.models, (*at, "models"))
    return out


def _alias_notes(spec: PolicySpec, listed: list[str], where: Loc) -> list[Problem]:
    """A rule's ``models`` match the name a request asks for: a routing alias serving a listed
    model is another name, which the rule does not cover unless it lists it too (a note)."""
    served: dict[tuple[str, str], str] = {}  # (provider, the provider's model name) -> the public name listed
    for name in listed:
        model = spec.models.get(name) or next((m for m in spec.models.values() if name in m.aliases), None)
        if model is not None:
            served.setdefault((model.provider, model.model or next(
                (n for n, m in spec.models.items() if m is model), name)), name)
    out = []
    for alias, entry in spec.routing.aliases.items():
        if alias in listed:
            continue
        hit = next((served[(t.provider, t.model)] for t in entry.targets if (t.provider, t.model) in served), None)
        if hit is not None:
            out.append(Problem(f"note: the rule applies to requests for '{hit}', not to those for the routing alias "
                               f"'{alias}' that {hit} may serve (a rule matches the name a request asks for): list "
                               f"'{alias}' too to cover them", where=where, at_key=True, note=True))
    return out


def build(spec: PolicySpec) -> Guardrails | None:
    """The compiled guardrails (None when the policy has no rule)."""
    section = spec.guardrails
    if not section.rules:
        return None
    canonical = {name: name for name in spec.routing.aliases}
    for name, model in spec.models.items():
        canonical.update(dict.fromkeys([name, *model.aliases], name))
    rules = tuple(_rule(rule, canonical) for rule in section.rules)
    classifier = section.injection.classifier
    return Guardrails(
        scanner=scanner(spec),
        rules=rules,
        threshold=section.injection.threshold,
        classifier=Classifier(classifier.url, classifier.timeout_ms / 1000, classifier.threshold,
                              classifier.fail == "closed") if classifier else None,
        instructions=section.injection.instructions,
    )


def scanner(spec: PolicySpec) -> Scanner:
    """The scanner of the built-in detectors and every custom detector of the policy (a rule uses
    it or not: ``tollway redact --detectors`` tries one out before a rule lists it)."""
    customs = tuple((name, entry.pattern, tuple(entry.words or ()), entry.caseless, entry.label, entry.max_length or 0)
                    for name, entry in sorted(spec.guardrails.custom.items()))
    return _scanner(customs)


def _rule(rule: GuardrailRuleSpec, canonical: dict[str, str]) -> Rule:
    names: set[str] = set()
    for name in rule.detectors:
        names.update(GROUPS.get(name, (name,)))
    if rule.action == "pseudonymise":  # values go out as placeholders and come back in the answer
        directions = frozenset({REQUEST})
    else:
        directions = frozenset({REQUEST, RESPONSE} if rule.direction == "both" else {rule.direction})
    return Rule(
        name=rule.name,
        detectors=frozenset(names),
        action=rule.action,
        directions=directions,
        teams=None if rule.teams == ["*"] else frozenset(rule.teams),
        models=None if rule.models == ["*"] else frozenset(canonical.get(m, m) for m in rule.models),
    )


def _custom_detector(name: str, entry: CustomDetectorSpec) -> Detector:
    """A custom detector compiled alone (its own errors, under its own name)."""
    return _compiled(name, entry.pattern, tuple(entry.words or ()), entry.caseless, entry.label, entry.max_length or 0)


@functools.lru_cache(maxsize=256)
def _compiled(name: str, pattern: str | None, words: tuple[str, ...], caseless: bool, label: str | None,
              width: int) -> Detector:
    return Scanner([custom(name, pattern, words, caseless, label, width)]).detectors[0]


@functools.lru_cache(maxsize=32)
def _scanner(customs: tuple[tuple[str, str | None, tuple[str, ...], bool, str | None, int], ...]) -> Scanner:
    """One scanner for the built-in detectors and the policy's own (compiled once per distinct set)."""
    if not customs:
        return builtin()
    return Scanner([*builtin().detectors, *(_compiled(*entry) for entry in customs)])
