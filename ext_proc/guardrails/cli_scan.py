"""``tollway scan``: the built-in prompt-injection score of stdin (or of each line, ``--lines``).

Prints the score (0 to 1), whether it reaches ``--threshold`` (default 0.5, the policy's
default) and the signals found; ``--json`` prints one JSON object per text. Exits 1 when any text
reaches the threshold, so scripts can use it as a check. ``--system FILE``: the system prompt the
texts would be sent with, so the context signals count as they do in the gateway.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from . import injection
from .instructions import instructions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lines", action="store_true", help="score each line of stdin on its own")
    parser.add_argument("--threshold", type=float, default=0.5, help="the score that counts as an injection")
    parser.add_argument("--json", action="store_true", help="one JSON object per text")
    parser.add_argument("--system", metavar="FILE", help="the system prompt the texts are sent with (its context "
                        "signals: asking for what it keeps, using what it forbids)")


def run(args: argparse.Namespace) -> int:
    data = sys.stdin.read()
    texts = [line for line in data.splitlines() if line.strip()] if args.lines else [data]
    context = instructions(Path(args.system).read_text(encoding="utf-8")) if args.system else None
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
