"""``make bench-guardrails``: how fast the guardrails scan long texts, and why Hyperscan.

1. Engines: the built-in detectors' patterns over the same long text, as one Hyperscan database
   (one pass, start of match), as a Python ``re`` alternation (``finditer``), and as a RE2 set
   (``google-re2``, when installed: the set says which patterns match, a second pass per matching
   pattern says where). Only the pattern engine is timed, not the checks.
2. The scanner (:meth:`Scanner.find`: Hyperscan, then every candidate's check) and the prompt-
   injection scorer over long texts, in MB/s of UTF-8 input, process CPU time.

The long text is this repository's own prose (README and module docstrings, repeated to the
size asked), plus one email, card and key every ~10 KB; "digits" is the README alone, dense with
numbers, phone-like and date-like strings (the scanner's worst ordinary case).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from pathlib import Path

import hyperscan

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ext_proc.guardrails import injection  # noqa: E402
from ext_proc.guardrails.detectors import BUILTIN  # noqa: E402
from ext_proc.guardrails.scanner import builtin  # noqa: E402

SALT = " Contact jane.doe@example.com or pay with 4111 1111 1111 1111; key AKIAIOSFODNN7EXAMPLE. "


def prose(size: int) -> str:
    parts = []
    for path in sorted((ROOT / "ext_proc").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if doc:
            parts.append(doc)
    base = "\n\n".join(parts)
    out = []
    total = 0
    while total < size:
        for start in range(0, len(base), 10_000):
            piece = base[start:start + 10_000] + SALT
            out.append(piece)
            total += len(piece.encode())
            if total >= size:
                break
    return "".join(out)


def rate(fn: object, data: bytes | str, repeats: int) -> float:
    """MB/s of process CPU (best of ``repeats``)."""
    size = len(data.encode() if isinstance(data, str) else data)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        fn(data)  # type: ignore[operator]
        best = min(best, time.process_time() - started)
    return size / best / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4_000_000, help="bytes of long text (default 4 MB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = prose(args.size)
    data = text.encode()
    digits = (ROOT / "README.md").read_text()
    patterns = [p for d in BUILTIN for p in d.patterns]
    print(f"long text: {len(data) / 1e6:.1f} MB of prose; digits: README.md, {len(digits.encode()) / 1e3:.0f} KB")
    print("\n1. pattern engines (every built-in pattern, no checks), MB/s:")
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[p.encode() for p in patterns], ids=list(range(len(patterns))), elements=len(patterns),
               flags=[hyperscan.HS_FLAG_SOM_LEFTMOST] * len(patterns))
    hits: list[object] = []
    hs = rate(lambda b: db.scan(b, match_event_handler=lambda *a: hits.append(a)), data, args.repeats)
    print(f"   hyperscan (one database, SOM)    {hs:8.1f}")
    combined = re.compile("|".join(f"(?:{p})" for p in patterns))
    print(f"   python re (one alternation)      {rate(lambda s: sum(1 for _ in combined.finditer(s)), text, 1):8.1f}")
    try:
        import re2  # type: ignore[import-not-found]
    except ImportError:
        print("   google-re2 set                   (not installed: pip install google-re2)")
    else:
        options = re2.Options()
        rset = re2.Set.SearchSet(options)
        for p in patterns:
            rset.Add(p)
        rset.Compile()
        compiled = [re2.compile(p) for p in patterns]

        def re2_scan(s: str) -> int:
            return sum(1 for i in rset.Match(s) for _ in compiled[i].finditer(s))

        print(f"   google-re2 set + finditer        {rate(re2_scan, text, args.repeats):8.1f}")
    scanner = builtin()
    print("\n2. guardrails, MB/s of process CPU:")
    print(f"   Scanner.find, long prose         {rate(scanner.find, text, args.repeats):8.1f}")
    print(f"   Scanner.find, digits (README)    {rate(scanner.find, digits, args.repeats):8.1f}")
    print(f"   injection.score, long prose      {rate(injection.score, text, args.repeats):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
