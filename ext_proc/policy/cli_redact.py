"""``tollway redact``: the guardrails' detectors over stdin; the text with its values replaced on stdout.

Every built-in detector runs (or those named with ``--detectors``: names or the groups ``pii`` and
``credentials``), plus the custom detectors of ``--policy FILE``; with ``--system FILE``, the values
that system prompt keeps too (``kept_secret``, as the gateway finds them in answers). ``--mask``
masks instead of placeholders. ``--json`` prints ``{"redacted": ..., "findings": [{"type", "label", "start",
"end"}]}`` with character spans into the input; the values themselves are never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from ext_proc.guardrails.detectors import GROUPS
from ext_proc.guardrails.guard import Guard
from ext_proc.guardrails.instructions import instructions
from ext_proc.guardrails.kept import KEPT, kept
from ext_proc.guardrails.plan import REQUEST, Plan, Rule
from ext_proc.guardrails.repeats import repeated
from ext_proc.guardrails.scanner import Scanner, Unscannable, builtin, united
from ext_proc.policy.compile import PolicyError, compile_policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the redacted text and the findings as JSON")
    parser.add_argument("--mask", action="store_true", help="mask values (****1111) instead of placeholders")
    parser.add_argument("--detectors", default="", help="comma-separated detectors or groups (default: all)")
    parser.add_argument("--policy", type=Path, help="also run this policy's custom detectors")
    parser.add_argument("--system", type=Path, metavar="FILE",
                        help="also replace the values this system prompt keeps (kept_secret), as in answers")


def run(args: argparse.Namespace) -> int:
    scanner: Scanner = builtin()
    if args.policy is not None:
        try:
            policy = compile_policy(args.policy.read_text(encoding="utf-8"), str(args.policy))
        except (OSError, PolicyError, UnicodeDecodeError) as exc:
            print(f"tollway redact: {exc}", file=sys.stderr)
            return 2
        if policy.guardrails is not None:
            scanner = policy.guardrails.scanner
    names = {d.name for d in scanner.detectors}
    if args.detectors:
        wanted: set[str] = set()
        for name in args.detectors.split(","):
            name = name.strip()
            if name not in names and name not in GROUPS:
                print(f"tollway redact: unknown detector {name!r} (one of: {', '.join(sorted(names))})",
                      file=sys.stderr)
                return 2
            wanted.update(GROUPS.get(name, (name,)))
        names = wanted
    finder = None
    if args.system is not None:
        try:
            finder = kept(instructions(args.system.read_text(encoding="utf-8")).secrets)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"tollway redact: cannot read {args.system}: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return 2
    if finder is not None:
        names = names | {KEPT}
    rule = Rule("redact", frozenset(names), "mask" if args.mask else "redact", frozenset({REQUEST}))
    guard = Guard(Plan(scanner, {name: rule for name in names}, {}))
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
    redacted = guard.apply(text, findings, guard.plan.request, REQUEST)
    if args.json:
        sys.stdout.write(orjson.dumps({
            "redacted": redacted,
            "findings": [{"type": f.detector.name, "label": f.detector.label, "start": f.start, "end": f.end}
                         for f in findings],
        }, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(redacted)
    return 0
