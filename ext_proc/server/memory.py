"""Freed memory back to the system after the few big, short-lived allocations a process makes.

Compiling a policy builds its guardrails' Hyperscan databases, and loading the tokenizers
parses their files: both allocate tens of MB in C that they free moments later. glibc keeps
freed memory in its arenas for reuse, so without help every process that compiled a policy
(the ``tollway serve`` parent, and each worker) would hold about 17 MB it no longer uses, and
the workers' zygote 7 MB more under the pages it shares with the workers (measured with the example
policy; README "Performance"). ``malloc_trim(0)`` returns the free pages; it takes a few
milliseconds and runs only after those events (a worker that compiles a reloaded policy while a
request waits has already spent far longer compiling). Elsewhere than glibc (the function is
missing) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger("tollway.memory")


def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return function


_malloc_trim = _trim()


def give_back() -> bool:
    """Return the allocator's free memory to the system; False where that cannot be done."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
