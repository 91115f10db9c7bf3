"""``ext_proc.values.value``: a frozen dataclass to the type checker, a plain slotted one at run time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from ext_proc.values import value


@value
class Point:
    x: int
    y: int = 0


def test_equal_and_hashed_by_fields_with_slots() -> None:
    assert Point(1, 2) == Point(1, 2) and Point(1) != Point(2)
    assert hash(Point(1, 2)) == hash(Point(1, 2)) and len({Point(1), Point(1), Point(2)}) == 2
    assert not hasattr(Point(1), "__dict__")  # slotted


def test_the_type_checker_refuses_a_change(tmp_path: Path) -> None:
    program = tmp_path / "change.py"
    program.write_text(textwrap.dedent("""
        from ext_proc.values import value

        @value
        class Point:
            x: int

        Point(1).x = 2
    """))
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", str(program)], capture_output=True,
                         text=True).stdout
    assert 'Property "x" defined in "Point" is read-only' in out
