"""Values: dataclasses that are immutable by contract, checked by the type checker, not at run time.

The core's events and actions, a request's claims, a text's place are values: built once, read,
never changed. ``@dataclass(frozen=True)`` enforces that at run time by building each instance
through ``object.__setattr__``, one call per field: about 370 ns against 90 ns for a plain
dataclass of four fields, and a request builds some 26 of them (7.8 µs of the core's 142 µs per
chat request, measured with ``make bench-core``). :func:`value` declares the class frozen to the
type checker (``dataclass_transform(frozen_default=True)``: mypy refuses an assignment to a field)
and builds a plain slotted dataclass that hashes by its fields as a frozen one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    """A frozen dataclass to the type checker; at run time a slotted one, hashed by its fields."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
