"""The clock and the randomness the pure layers use, handed in from outside.

The core, the routing decisions and the translators never read the time or draw random numbers
themselves: they ask the :class:`Runtime` they were given. The server gives the real one
(:data:`SYSTEM`); a test gives :func:`fixed`, so every transcript replays exactly (the same
weighted draw, the same ids and timestamps in a translated answer).
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Runtime:
    now: Callable[[], float] = time.time  # wall-clock seconds: ``created`` of translated answers
    random: Callable[[], float] = random.random  # a draw in [0, 1): the weighted first target
    token: Callable[[int], str] = secrets.token_hex  # n random bytes as hex: ids of translated answers


SYSTEM = Runtime()


def fixed(now: float = 1_760_000_000.0, seed: int = 0) -> Runtime:
    """A runtime that replays: a stopped clock and seeded randomness."""
    rng = random.Random(seed)
    return Runtime(now=lambda: now, random=rng.random, token=lambda n: rng.randbytes(n).hex())
