"""``tollway keys create --team T [--id ID] [--policy FILE]``: make a virtual key and the policy line that admits it.

The key is random (``tw-`` and 43 URL-safe characters, 256 bits), printed once and never stored:
the policy holds only its sha256 (:func:`~ext_proc.policy.compiled.key_digest`). Adding the
printed line under ``teams.T.keys`` and shipping the policy is what makes the key work. With
``--policy``, a team that policy has not is a warning on stderr (the key is still made: the team
may be added with it); a policy that cannot be read or compiled is an error, and no key.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from pathlib import Path

import yaml

from ext_proc.guardrails.detectors import check_tollway_key

from .compile import PolicyError, compile_policy
from .compiled import KEY_PREFIX, key_digest
from .issues import cannot_read, suggest
from .schema import NAME_PATTERN, PATTERN_MEANINGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tollway keys`` subcommands."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="make a new virtual key for a team", description="Make a new virtual key for a team."
    )
    create.add_argument("--team", required=True, help="the team the key belongs to (a key of 'teams')")
    create.add_argument("--id", dest="key_id", help="the key's id in logs and records (default TEAM-YYYYMMDD-XXXX)")
    create.add_argument("--policy", type=Path, metavar="FILE",
                        help="warn (on stderr) when this policy has no such team; the key is still made")


def run(args: argparse.Namespace) -> int:
    """Create the key; the exit status (2 for a bad team or id)."""
    key_id = args.key_id or default_key_id(args.team)
    for what, value in (("--team", args.team), ("--id", key_id)):
        if not re.fullmatch(NAME_PATTERN, value):
            print(f"tollway keys create: {what} {value!r} {PATTERN_MEANINGS[NAME_PATTERN]}", file=sys.stderr)
            return 2
    if args.policy is not None:
        try:
            teams = compile_policy(args.policy.read_text(encoding="utf-8"), str(args.policy)).teams
        except (OSError, UnicodeDecodeError) as exc:  # as `tollway policy check` says it
            print(f"tollway keys create: {args.policy}: {cannot_read(exc)}", file=sys.stderr)
            return 2
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            return 2
        if args.team not in teams:
            print(f"tollway keys create: warning: {args.policy} has no team {args.team!r}"
                  f"{suggest(args.team, teams)}: add it under teams with the line below, or the key admits no one",
                  file=sys.stderr)
    key = new_key()
    print(f"""New virtual key for team {args.team} (id {key_id}):

    {key}

This is the only time the key is shown: store it now (e.g. in your secret manager).
Tollway keeps only its sha256. To admit it, add this line under teams.{args.team}.keys
in the policy and ship the policy:

    - {{id: {_yaml_string(key_id)}, sha256: {key_digest(key)}}}""")
    return 0


def _yaml_string(text: str) -> str:
    """``text`` as YAML reads it back as that string: plain when it is, else double-quoted
    (an id such as 2026, true or 12:30 is read as a number, a boolean, a time)."""
    try:
        plain = yaml.safe_load(f"{{id: {text}}}")
    except yaml.YAMLError:
        plain = None
    return text if isinstance(plain, dict) and plain.get("id") == text else json.dumps(text)


def new_key() -> str:
    """A new random virtual key: ``tw-`` and 43 URL-safe characters (32 random bytes), one the
    guardrails' ``tollway_key`` detector finds (about 1 in 250 random tokens is drawn again)."""
    while True:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        if check_tollway_key(key, ""):
            return key


def default_key_id(team: str) -> str:
    """``TEAM-YYYYMMDD-XXXX``: the team, today's UTC date and 4 random hex digits."""
    return f"{team}-{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(2)}"
