"""Run a function as another Unix user (``nobody``), to test what other local processes can reach;
the TCP ports a process tree listens on."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ext_proc.stack import process_tree

NOBODY = 65534

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to another user needs root (CI runs as root)"
)


def as_other_user(fn: Callable[[], Any], uid: int = NOBODY, groups: tuple[int, ...] = ()) -> Any:
    """Fork, drop to ``uid`` (and its group, with the supplementary ``groups``), run ``fn``; its JSON result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read)
            os.setgroups(list(groups))
            os.setgid(uid)
            os.setuid(uid)
            result = json.dumps(fn()).encode()
        except BaseException as exc:  # report anything, never run the parent's code
            result, code = json.dumps({"error": repr(exc)}).encode(), 1
        os.write(write, result)
        os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


@contextmanager
def open_directory() -> Iterator[Path]:
    """A fresh directory every user can reach (pytest's own temp tree is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tollway-open-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tcp_listeners(root_pid: int) -> set[int]:
    """Ports of TCP sockets in LISTEN state held by ``root_pid`` and its children."""
    pids = list(process_tree(root_pid))
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
