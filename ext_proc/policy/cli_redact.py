"""``tollway redact``: the guardrails' detectors over stdin; the text with its values replaced on stdout.

Without ``--policy``, every built-in detector redacts (or those named with ``--detectors``: names
or the groups ``pii`` and ``credentials``; ``--mask`` masks instead of placeholders). With
``--policy FILE``, the text is a prompt of ``--team T`` to ``--model M`` and the policy's rules act
on it as the gateway does on a request's user text (:meth:`Guardrails.plan`: which detectors, mask,
redact, pseudonymise, log, block), its ``prompt_injection`` rule too (the built-in score of the
redacted text, against ``--system``'s instructions when the policy scores with them, at the
policy's threshold; the policy's external classifier is not asked: a note says so); without
``--team`` (``--model``) only the rules that name no teams (models) apply, and a note on stderr
names the rules left out for lack of them. ``--detectors`` then keeps those detectors only, and runs any of the
policy's custom detectors too, a rule using it or not: a detector no rule covers for that team and
model redacts (``--mask``: masks). With ``--system FILE``, the values that system prompt keeps too
(``kept_secret``, as the gateway finds them in answers). ``--json`` prints ``{"redacted": ...,
"findings": [{"type", "label", "start", "end"}]}`` with character spans into the input; the values
themselves are never printed. A ``block`` rule's finding (or injection score) prints no text: one
line on stderr, status 1; a ``log`` rule's injection score is a note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson

from ext_proc.guardrails import injection
from ext_proc.guardrails.detectors import GROUPS, INJECTION
from ext_proc.guardrails.guard import Blocked, Guard, instructions_read
from ext_proc.guardrails.instructions import Instructions, instructions
from ext_proc.guardrails.kept import KEPT, kept
from ext_proc.guardrails.plan import REQUEST, Plan, Rule
from ext_proc.guardrails.repeats import repeated
from ext_proc.guardrails.scanner import Scanner, Unscannable, builtin, united
from ext_proc.policy import guardrails
from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.policy.issues import cannot_read, parse, suggest
from ext_proc.policy.schema import PolicySpec

_NONE = "\x00"  # a team or model no rule names: only the rules for every team (model) apply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the redacted text and the findings as JSON")
    parser.add_argument("--mask", action="store_true",
                        help="mask values (****1111) instead of placeholders (with --policy: only for the "
                             "--detectors no rule of the policy covers)")
    parser.add_argument("--detectors", default="",
                        help="comma-separated detectors or groups (default: all; with --policy: those the "
                             "policy's rules use for --team and --model; a custom detector of the policy "
                             "named here runs though no rule uses it, and prompt_injection scores)")
    parser.add_argument("--policy", type=Path,
                        help="act as this policy's guardrail rules do on a prompt of --team to --model: their "
                             "detectors (custom ones too) and actions (redact, mask, pseudonymise, log; a block "
                             "rule's finding: no text, status 1), a prompt_injection rule's too (the built-in "
                             "score at the policy's threshold; its external classifier is not asked)")
    parser.add_argument("--team", help="with --policy: the caller's team (default: only the rules naming no teams "
                                       "apply; a note on stderr names the others)")
    parser.add_argument("--model", help="with --policy: the model asked for, a public name or alias (default: only "
                                        "the rules naming no models apply; a note on stderr names the others)")
    parser.add_argument("--system", type=Path, metavar="FILE",
                        help="also replace the values this system prompt keeps (kept_secret), as in answers; with "
                             "--policy, injection is scored against its instructions, as the gateway does")


def _policy(path: Path) -> tuple[CompiledPolicy, Scanner]:
    """The compiled policy and the scanner of its detectors, custom ones no rule uses included."""
    text = path.read_text(encoding="utf-8")
    policy = compile_policy(text, str(path))
    data = parse(text)[2]
    return policy, guardrails.scanner(PolicySpec.model_validate(data))


def _skipped(rules: tuple[Rule, ...], team: str | None, model: str | None) -> str:
    """A note naming the rules for prompts that do not apply only for lack of ``--team`` or
    ``--model`` (a canonical model name), or ""."""
    left = []
    for rule in rules:
        if REQUEST not in rule.directions and KEPT not in rule.detectors:
            continue
        lacks = [flag for flag, names, given in (("--team", rule.teams, team), ("--model", rule.models, model))
                 if names is not None and given is None]
        if lacks and all(names is None or given is None or given in names
                         for names, given in ((rule.teams, team), (rule.models, model))):
            left.append(f"{rule.name!r} (needs {' and '.join(lacks)})")
    if not left:
        return ""
    return (f"tollway redact: not applied, for lack of --team/--model: rule{'s' if len(left) > 1 else ''} "
            + ", ".join(left))


def _plan(policy: CompiledPolicy, team: str | None, model: str | None) -> tuple[Plan | None, str]:
    """The policy's plan for ``team`` calling ``model`` (as the gateway makes it), and an error (or "");
    a note on stderr names the rules that apply only with the ``--team``/``--model`` not given."""
    if team is not None and team not in policy.teams:
        return None, f"--team: the policy has no team {team!r}" + suggest(team, policy.teams)
    if model is not None:
        names = {*policy.models, *policy.aliases}  # public names, their aliases, routing aliases
        if model not in names:
            return None, f"--model: the policy serves no model {model!r}" + suggest(model, names)
        target = policy.models.get(model)
        model = target.public if target is not None and model not in policy.aliases else model
    if policy.guardrails is None:
        return None, ""
    note = _skipped(policy.guardrails.rules, team, model)
    if note:
        print(note, file=sys.stderr)
    return policy.guardrails.plan(_NONE if team is None else team, _NONE if model is None else model), ""


def run(args: argparse.Namespace) -> int:
    scanner: Scanner = builtin()
    rules: Mapping[str, Rule] | None = None  # the policy's, for --team and --model
    plan: Plan | None = None
    if args.policy is None and (args.team is not None or args.model is not None):
        print("tollway redact: --team and --model go with --policy (whose rules they choose)", file=sys.stderr)
        return 2
    if args.policy is not None:
        try:
            policy, scanner = _policy(args.policy)
        except (OSError, UnicodeDecodeError) as exc:  # as `tollway policy check` says it
            print(f"tollway redact: {args.policy}: {cannot_read(exc)}", file=sys.stderr)
            return 2
        except PolicyError as exc:
            print(f"tollway redact: {exc}", file=sys.stderr)
            return 2
        plan, error = _plan(policy, args.team, args.model)
        rules = plan.request if plan is not None else {}
        if error:
            print(f"tollway redact: {error}", file=sys.stderr)
            return 2
    names = {d.name for d in scanner.detectors} if rules is None else set(rules)
    scores = plan is not None and plan.injection is not None  # the policy's prompt_injection rule applies
    if args.detectors:
        known = {d.name for d in scanner.detectors}
        wanted: set[str] = set()
        for name in args.detectors.split(","):
            name = name.strip()
            if name == INJECTION and args.policy is not None:
                wanted.add(name)
                continue
            if name not in known and name not in GROUPS:
                names_taken = sorted(known | ({INJECTION} if args.policy is not None else set()))
                hint = suggest(name, [*names_taken, *GROUPS]).strip()[1:-1]  # "did you mean 'x'?", or ""
                print(f"tollway redact: unknown detector {name!r} ({hint + '; ' if hint else ''}one of: "
                      f"{', '.join(names_taken)}, or the groups {', '.join(sorted(GROUPS))})", file=sys.stderr)
                return 2
            wanted.update(GROUPS.get(name, (name,)))
        scores = scores and INJECTION in wanted
        names = wanted & known
    finder = None
    read = None  # the system prompt's instructions, as the gateway reads them
    if args.system is not None:
        try:
            read = instructions(instructions_read([args.system.read_text(encoding="utf-8")]))
            finder = kept(read.secrets)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"tollway redact: cannot read {args.system}: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return 2
    if finder is not None:
        names = names | {KEPT}
    fallback = Rule("redact", frozenset(names), "mask" if args.mask else "redact", frozenset({REQUEST}))
    chosen = {name: (rules or {}).get(name, fallback) for name in names}
    if finder is not None and plan is not None:  # the policy's kept_secret rule: in answers
        chosen[KEPT] = plan.response.get(KEPT, fallback)
    guard = Guard(Plan(scanner, chosen, {}))
    if args.policy is not None and not names and not scores:
        who = (f"team {args.team!r}" if args.team is not None else "every team") + " calling " + (
            f"model {args.model!r}" if args.model is not None else "every model")
        print(f"tollway redact: no guardrail rule of the policy applies to {who}: the text is unchanged",
              file=sys.stderr)
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"tollway redact: the input is not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return 2
    try:
        findings = repeated(text, scanner.find(text, names))
    except Unscannable as exc:
        print(f"tollway redact: the input holds {exc}: not redacted", file=sys.stderr)
        return 2
    if finder is not None:
        findings = united([*findings, *finder.find(text)])
    try:
        redacted = guard.apply(text, findings, guard.plan.request, REQUEST)
    except Blocked as exc:
        print(f"tollway redact: the gateway would refuse this prompt: rule {exc.rule.name!r} blocks "
              f"{exc.detector}", file=sys.stderr)
        return 1
    if scores and plan is not None and plan.injection is not None and _injection(plan, plan.injection, redacted, read):
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps({
            "redacted": redacted,
            "findings": [{"type": f.detector.name, "label": f.detector.label, "start": f.start, "end": f.end}
                         for f in findings],
        }, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(redacted)
    return 0


def _injection(plan: Plan, rule: Rule, text: str, read: Instructions | None) -> bool:
    """Score ``text`` (as redacted: as it goes upstream) for prompt injection as the gateway scores a
    user's text: against the system prompt's instructions when the policy scores with them, at the
    policy's threshold. Whether the gateway would refuse it (one line on stderr); a ``log`` rule's
    score over the threshold is a note."""
    score = injection.score(text, read if plan.instructions else None)
    if plan.classifier is not None:
        print("tollway redact: the policy's prompt-injection classifier is not asked here (only the built-in "
              "score is): the gateway may still refuse what passes", file=sys.stderr)
    if score < plan.threshold:
        return False
    said = f"prompt_injection (score {score:.3f}, threshold {plan.threshold:g})"
    if rule.action == "block":
        print(f"tollway redact: the gateway would refuse this prompt: rule {rule.name!r} blocks {said}",
              file=sys.stderr)
        return True
    print(f"tollway redact: rule {rule.name!r} would log {said}", file=sys.stderr)
    return False
