"""The ``tollway`` command. Each subcommand lives in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# name: (module with add_arguments(parser) and run(args) -> int, help)
COMMANDS = {
    "up": ("ext_proc.stack", "run Envoy, the service and (without provider keys) the fake provider"),
    "serve": ("ext_proc.server.app", "run the ext_proc gRPC service that Envoy calls"),
    "mock-provider": ("ext_proc.mock.provider", "run the fake OpenAI/Anthropic provider"),
    "policy": ("ext_proc.policy.cli_policy", "check policy files, print the policy's JSON Schema"),
    "keys": ("ext_proc.policy.cli_keys", "create virtual keys for the policy"),
    "report": ("ext_proc.ledger.cli", "spend, tokens and latency by team, model, key or provider"),
    "budgets": ("ext_proc.ledger.budgets", "each budget's spend, open reservations, remaining amount and reset time"),
    "envoy": ("ext_proc.envoy_config", "print the Envoy config with the fallback clusters a policy needs"),
    "tokens": ("ext_proc.llm.cli_tokens", "count the prompt tokens of a request body read from stdin"),
    "redact": ("ext_proc.policy.cli_redact", "redact PII and credentials in text read from stdin (--json: findings)"),
    "scan": ("ext_proc.guardrails.cli_scan", "score text read from stdin for prompt injection"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="tollway", description="Tollway: an AI gateway for Envoy meshes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
