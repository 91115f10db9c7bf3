"""``tollway policy check FILE...`` and ``tollway policy schema``: the policy file's tooling.

``check`` compiles each file as the server would and prints either a one-line summary (after the
file's notes, if it has any: remarks that do not fail it) or every issue (``file:line:column:
path: message``); a provider with ``stored_responses`` whose key (where this machine has it:
environment variables, files) is the same as that of a provider another team reaches fails it
too, as it fails the server's load; the exit status is 0 only when every file is good, so it fits a pre-commit hook
or a CI step. ``schema`` prints the JSON Schema of the file for
editors (yaml-language-server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .compile import PolicyError, compile_policy
from .compiled import CredentialSource
from .issues import cannot_read
from .schema import json_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tollway policy`` subcommands."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate policy files", description="Validate policy files.")
    check.add_argument("files", nargs="+", metavar="FILE", help="policy YAML ('-' for standard input)")
    actions.add_parser(
        "schema", help="print the policy's JSON Schema", description="Print the policy's JSON Schema (for editors)."
    )


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; the exit status."""
    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    return 0 if all([check_file(name) for name in args.files]) else 1


def check_file(name: str) -> bool:
    """Compile one file and print the verdict; True when it is good."""
    source = "<stdin>" if name == "-" else name
    try:
        if name == "-":
            text = sys.stdin.read()
        else:
            with open(name, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{source}: {cannot_read(exc)}")
        return False
    try:
        policy = compile_policy(text, source)
    except PolicyError as exc:
        for issue in exc.errors:
            print(issue)
        count = len(exc.errors)
        print(f"{source}: FAILED ({count} error{'s' if count != 1 else ''})")
        return False
    clashes = policy.shared_stored_keys(_key)
    if clashes:  # the keys this machine has: the server refuses the policy with them too
        for clash in clashes:
            print(clash)
        print(f"{source}: FAILED ({len(clashes)} error{'s' if len(clashes) != 1 else ''})")
        return False
    for note in policy.notes:  # not mistakes: the file is good
        print(note)
    canonical = len({target.public for target in policy.models.values()})
    print(
        f"{source}: OK (version {policy.version}; {_count(len(policy.providers), 'provider')}, "
        f"{_count(canonical, 'model')}, {_count(len(policy.teams), 'team')}"
        + (f", {len(policy.aliases)} alias{'' if len(policy.aliases) == 1 else 'es'}" if policy.aliases else "")
        + (f"; {_count(len(policy.notes), 'note')}" if policy.notes else "")
        + ")"
    )
    return True


def _key(source: CredentialSource) -> str | None:
    """A provider's key where this machine has it (compared by digest only, never printed)."""
    if source.env is not None:
        return os.environ.get(source.env, "").strip() or None
    assert source.file is not None
    try:
        with open(source.file, encoding="utf-8-sig") as handle:
            return handle.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
