"""Freed C memory goes back to the system (``ext_proc.server.memory``), measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = r"""
import ctypes, sys
from ext_proc.server.memory import give_back

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
# 64 MB in 64 KB blocks (under glibc's mmap threshold: they come from the heap), each written so
# its pages are resident; then all but the last freed, which keeps the heap's top in place.
blocks = [libc.malloc(65536) for _ in range(1024)]
for block in blocks:
    ctypes.memset(block, 1, 65536)
before = rss_mb()
for block in blocks[:-1]:
    libc.free(block)
freed = rss_mb()
given = give_back()
print(given, round(before - freed, 1), round(freed - rss_mb(), 1))
"""


def test_freed_memory_is_returned_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True).stdout.split()
    given, kept_by_free, returned = out[0], float(out[1]), float(out[2])
    assert kept_by_free < 8, "free() alone keeps the pages: the premise of the module"
    assert given == "True" and returned > 48, f"returned {returned} MB of 64"


def test_the_supervisor_holds_none_of_the_workers_modules() -> None:
    """Importing app.py (``tollway serve``'s parent, and the commands that reach it) loads none of the
    service, its servers or prometheus_client: ``tollway serve --workers N`` loads them only right
    before it forks the workers' zygote, to share their pages with the workers."""
    code = ("import sys, ext_proc.server.app; print(' '.join(sorted(m for m in sys.modules if m in "
            "('ext_proc.server.worker', 'ext_proc.server.servicer', 'ext_proc.server.h2', 'ext_proc.core.session', "
            "'prometheus_client', 'uvloop', 'ext_proc.server.admin'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""


def test_what_a_worker_starts_with_is_loaded_with_the_worker_module() -> None:
    """uvloop and the telemetry module come with worker.py, which the supervisor loads before the
    fork: imported by each worker as it started, they were loaded once per worker, and the imports
    copied 3 MB of the pages each worker shares with the others."""
    code = ("import sys, ext_proc.server.worker; "
            "print('uvloop' in sys.modules, 'ext_proc.server.telemetry' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
