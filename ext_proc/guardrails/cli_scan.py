"""``tollway scan``: the built-in prompt-injection score of stdin (or of each line, ``--lines``).

Prints the score (0 to 1), whether it reaches ``--threshold`` (default 0.5, the policy's
default) and the signals found; ``--json`` prints one JSON object per text. Exits 1 when any text
reaches the threshold, so scripts can use it as a check. ``--system FILE``: the system prompt the
texts would be sent with, so the context signals count as they do in the gateway. ``--request
FILE``: a whole request body (chat completions, Messages or Responses, told apart by its fields),
its user and tool texts scored against its own system prompt, as the gateway scores them (a tool's
result against the instructions without their ``breaks_rule`` signal); a body the gateway would
refuse unread, or one with no user or tool text, exits 2. ``--lines`` splits on newlines only and
numbers each scored line (blank lines are not scored). Empty or blank input exits 2 (nothing to score).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

import orjson

from . import injection
from .guard import INJECTION_ROLES, instructions_read, scoring_context
from .instructions import instructions
from .texts import WALKERS, Unread, Unreadable


def _threshold(value: str) -> float:
    """A score between 0 and 1 (argparse's type: anything else is its one-line usage error)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(number) or not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {value}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lines", action="store_true", help="score each line of stdin on its own")
    parser.add_argument("--threshold", type=_threshold, default=0.5,
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


def _request(path: str) -> tuple[list[tuple[str, str]], str]:
    """The user and tool texts of a request body with their roles, and its system text read as the
    gateway reads it. A body the gateway's guard would refuse (a text field holding another JSON
    type) or one with nothing to score: one line, exit status 2."""
    try:
        body = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        _fail(f"tollway scan: cannot read a JSON request from {path}: {exc}")
    if not isinstance(body, dict):
        _fail(f"tollway scan: {path} is not a JSON object")
    api = _api(body)
    system: list[str] = []
    scored: list[tuple[str, str]] = []
    for ref in WALKERS[api].request(body, definitions=False):
        if isinstance(ref, Unread):
            _fail(f"tollway scan: {path}: the gateway refuses this request unread: {Unreadable(ref).message}")
        text = ref.get()
        if text and ref.role == "system":
            system.append(text)
        elif text and ref.role in INJECTION_ROLES:
            scored.append((text, ref.role))
    if not scored:
        _fail(f"tollway scan: {path} has no user or tool text to score (read as {api})")
    return scored, instructions_read(system)


def run(args: argparse.Namespace) -> int:
    system = ""
    numbered = False
    if getattr(args, "request", None):
        texts, system = _request(args.request)
    else:
        try:
            data = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"tollway scan: the input is not UTF-8 text ({exc.reason} at byte {exc.start})")
        if args.lines:  # newlines only (not str.splitlines' U+2028, form feeds, ...): numbered as the input's
            numbered = True
            lines = (line.removesuffix("\r") for line in data.split("\n"))
            texts = [(line, str(number)) for number, line in enumerate(lines, 1) if line.strip()]
        else:
            texts = [(data, "user")] if data.strip() else []
        if not texts:  # nothing piped in (or only blank lines): a score of nothing would read as "ok"
            _fail("tollway scan: no text to score on stdin (pipe some in, or give --request FILE)")
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
    for text, role in texts:
        # --lines: ``role`` is the line's number (its text is scored as a user's)
        meets = scoring_context(context, "user" if numbered else role)
        score = injection.score(text, meets)
        hit = score >= args.threshold
        flagged |= hit
        signals = injection.signals(text, meets)
        if args.json:
            row: dict[str, object] = {"line": int(role)} if numbered else {}
            row.update(score=score, injection=hit, signals=signals)
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        else:
            verdict = "INJECTION" if hit else "ok"
            prefix = f"{role}: " if numbered else ""
            print(f"{prefix}{score:.3f}  {verdict:9}  {', '.join(signals) or '-'}")
    return 1 if flagged else 0
