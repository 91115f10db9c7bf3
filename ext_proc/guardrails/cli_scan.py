"""``tollway scan``: the built-in prompt-injection score of stdin (or of each line, ``--lines``).

Prints the score (0 to 1), whether it reaches ``--threshold`` (default 0.5, the policy's
default) and the signals found; ``--json`` prints one JSON object per text. Exits 1 when any text
reaches the threshold, so scripts can use it as a check. ``--system FILE``: the system prompt the
texts would be sent with, so the context signals count as they do in the gateway. ``--request
FILE``: a whole request body (chat completions, Messages or Responses, told apart by its fields),
its user and tool texts scored against its own system prompt, as the gateway scores them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import orjson

from . import injection
from .guard import INJECTION_ROLES
from .instructions import instructions
from .texts import WALKERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lines", action="store_true", help="score each line of stdin on its own")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="the score that counts as an injection (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")
    parser.add_argument("--request", metavar="FILE", help="a request body (JSON): score its user and tool texts "
                        "against its system prompt, as the gateway does")
    parser.add_argument("--system", metavar="FILE", help="the system prompt the texts are sent with (its context "
                        "signals: asking for what it keeps, using what it forbids)")


def _fail(message: str) -> NoReturn:
    """A file that cannot be read: one line on stderr, exit status 2 (1 means an injection was found)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


_ANTHROPIC_BLOCKS = frozenset(("tool_use", "tool_result", "document", "thinking"))


def _api(body: dict[str, object]) -> str:
    """Which API a request body speaks: Responses (``input``, ``instructions``), Messages (a
    top-level ``system`` or Anthropic's content blocks), else chat completions."""
    if "input" in body or "instructions" in body:
        return "openai.responses"
    messages = body.get("messages")
    blocks = (block.get("type") for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
              for block in m["content"] if isinstance(block, dict)) if isinstance(messages, list) else ()
    if "system" in body or any(kind in _ANTHROPIC_BLOCKS for kind in blocks):
        return "anthropic.messages"
    return "openai.chat.completions"


def _request(path: str) -> tuple[list[str], str]:
    """The user and tool texts of a request body, and its system text joined as the gateway joins it."""
    try:
        body = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        _fail(f"tollway scan: cannot read a JSON request from {path}: {exc}")
    if not isinstance(body, dict):
        _fail(f"tollway scan: {path} is not a JSON object")
    api = _api(body)
    system: list[str] = []
    scored: list[str] = []
    for ref in WALKERS[api].request(body):
        text = ref.get()
        if text and ref.role == "system":
            system.append(text)
        elif text and ref.role in INJECTION_ROLES:
            scored.append(text)
    return scored, "\n".join(system)


def run(args: argparse.Namespace) -> int:
    system = ""
    if getattr(args, "request", None):
        texts, system = _request(args.request)
    else:
        try:
            data = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"tollway scan: the input is not UTF-8 text ({exc.reason} at byte {exc.start})")
        texts = [line for line in data.splitlines() if line.strip()] if args.lines else [data]
        if args.system:
            try:
                system = Path(args.system).read_text(encoding="utf-8")
            except OSError as exc:
                _fail(f"tollway scan: cannot read {args.system}: {exc.strerror}")
            except UnicodeDecodeError as exc:
                _fail(f"tollway scan: cannot read {args.system}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    context = instructions(system) if system else None
    if context is not None and context.secrets:  # how many, never which: the operator checks a canary is read
        n = len(context.secrets)
        print(f"the system prompt keeps {n} value{'s' if n > 1 else ''}: a kept_secret rule finds "
              f"{'them' if n > 1 else 'it'} in answers", file=sys.stderr)
    flagged = False
    for text in texts:
        score = injection.score(text, context)
        hit = score >= args.threshold
        flagged |= hit
        signals = injection.signals(text, context)
        if args.json:
            sys.stdout.write(orjson.dumps({"score": score, "injection": hit, "signals": signals}).decode() + "\n")
        else:
            verdict = "INJECTION" if hit else "ok"
            print(f"{score:.3f}  {verdict:9}  {', '.join(signals) or '-'}")
    return 1 if flagged else 0
