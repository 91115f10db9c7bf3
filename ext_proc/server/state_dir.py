"""Where a service keeps its crash-safety files: the workers' in-flight journals
(:mod:`ext_proc.server.journal`) and the processes' spools of spend-aggregate batches Redis has
not taken (:mod:`ext_proc.server.spool`).

By default they live next to the request log, in hidden directories (``.<log>.inflight/``,
``.<log>.aggregates/``), and only when the log is a regular file: a log on stdout or a device
has none. ``tollway serve --state-dir DIR`` puts them in ``DIR/inflight/`` and
``DIR/aggregates/`` (each 0700) for any log, stdout included (the Kubernetes sidecar's: its
records go to ``kubectl logs`` and log shippers, its state to an ``emptyDir``). One service per
directory: its supervisor takes over every journal and spool it finds there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ext_proc.server import journal, spool

INFLIGHT = "inflight"
AGGREGATES = "aggregates"


@dataclass(frozen=True)
class Places:
    """The journals' directory and the spools' (None: none kept)."""

    journals: str | None
    spools: str | None


def places(log_file: str | None, state_dir: str | None) -> Places:
    """Where the journals and spools of a service writing ``log_file`` (None: stdout) live."""
    if state_dir:
        root = os.path.abspath(state_dir)
        return Places(os.path.join(root, INFLIGHT), os.path.join(root, AGGREGATES))
    if log_file is None or not regular_or_absent(log_file):
        return Places(None, None)
    return Places(journal.directory_for(log_file), spool.directory_for(log_file))


regular_or_absent = journal.regular_or_absent


def prepare(state_dir: str) -> str | None:
    """Make the state directory and its two (0700) if missing; what is wrong (one line for
    ``tollway serve`` to say before it starts anything) or None."""
    root = os.path.abspath(state_dir)
    if os.path.exists(root) and not os.path.isdir(root):
        return f"--state-dir: {root} is not a directory"
    try:
        for name in (INFLIGHT, AGGREGATES):
            journal.private_directory(os.path.join(root, name))
    except OSError as exc:
        return f"--state-dir: cannot create {exc.filename or root} ({exc.strerror or exc})"
    for name in (INFLIGHT, AGGREGATES):
        path = os.path.join(root, name)
        if not os.access(path, os.W_OK | os.X_OK):
            return f"--state-dir: cannot write in {path}"
        info = os.stat(path)
        # Another user's directory others may write in: anyone could plant a journal or a spool
        # there, whose records this service would write to its log and add to the aggregates.
        if info.st_uid != os.geteuid() and info.st_mode & 0o022:
            return (f"--state-dir: {path} belongs to another user and others may write in it (mode "
                    f"{info.st_mode & 0o777:o}): remove it, or give a directory of this user")
    return None
