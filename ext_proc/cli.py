"""The ``tollway`` command. Each subcommand lives in its own module, imported only when used.

A user's mistake (an unknown option, a malformed value) is one line on stderr naming it and
pointing at ``--help``, and exit status 2; Ctrl-C ends quietly. Never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NoReturn

# name: (module with add_arguments(parser) and run(args) -> int, help)
COMMANDS = {
    "up": ("ext_proc.stack", "run Envoy, the service and (without provider keys) the fake provider"),
    "serve": ("ext_proc.server.app", "run the ext_proc gRPC service that Envoy calls"),
    "mock-provider": ("ext_proc.mock.provider", "run the fake OpenAI/Anthropic provider"),
    "policy": ("ext_proc.policy.cli_policy", "check policy files, print the policy's JSON Schema"),
    "keys": ("ext_proc.policy.cli_keys", "create virtual keys for the policy"),
    "report": ("ext_proc.ledger.cli", "spend, tokens and latency by team, model, key, provider or upstream model"),
    "budgets": ("ext_proc.ledger.budgets", "each budget's spend, open reservations, remaining amount and reset time"),
    "envoy": ("ext_proc.envoy_config", "print the Envoy config with the fallback clusters a policy needs"),
    "inject": ("ext_proc.k8s.inject", "add the Tollway sidecar to Kubernetes pods (admission webhook, or -f)"),
    "tokens": ("ext_proc.llm.cli_tokens", "count the prompt tokens of a request body read from stdin"),
    "redact": ("ext_proc.policy.cli_redact", "redact PII and credentials in text read from stdin (--json: findings)"),
    "scan": ("ext_proc.guardrails.cli_scan", "score text read from stdin for prompt injection"),
}


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line (not the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """No argument left unknown: said by the (sub)command that met it, so the line points at
        its own help (``tollway keys create --help``), not the top level's."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tollway report | head`
        sys.stderr.close()
        return 0


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(prog="tollway", description="Tollway: an AI gateway for Envoy meshes.",
                    epilog="`tollway COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(func=module.run)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
