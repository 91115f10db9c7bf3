"""The workers' zygote: forked once, it forks workers on request, passes each its channel, reports
their exit codes, stops what remains when the supervisor's end closes, and says when it is gone."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from ext_proc.server.zygote import Worker, Zygote, ZygoteGone


def _target(config: dict[str, int], marker: str, supervisor: int, dealt: socket.socket | None) -> None:
    """A worker: says who it is on its channel (and what it inherited), then exits with the config's code."""
    if dealt is not None:
        dealt.sendall(f"{marker} {os.getppid()} {supervisor} {os.getpid()}".encode())
        dealt.close()
    if config["sleep"]:
        time.sleep(config["sleep"])
    os._exit(config["code"])


def _exited(zygote: Zygote, worker: Worker, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    while worker.exitcode is None and time.monotonic() < deadline:
        zygote.poll(0.1)
    return worker.exitcode


def test_it_forks_workers_with_their_channel_and_reports_their_exit() -> None:
    zygote = Zygote([], _target, ("inherited-at-the-fork",))
    try:
        ours, theirs = socket.socketpair()
        worker = zygote.start(0, {"code": 3, "sleep": 0}, theirs)
        theirs.close()
        marker, parent, supervisor, pid = ours.recv(200).decode().split()
        assert marker == "inherited-at-the-fork"
        assert (int(parent), int(supervisor), int(pid)) == (zygote.process.pid, os.getpid(), worker.pid)
        assert _exited(zygote, worker) == 3
        assert worker.pid not in zygote.workers  # reported once, then forgotten
        again = zygote.start(0, {"code": 0, "sleep": 0}, None)  # a restart: another worker from the same state
        assert again.pid != worker.pid and _exited(zygote, again) == 0
    finally:
        zygote.close()
    assert zygote.process.exitcode == 0


def test_the_preload_is_loaded_by_the_supervisor_before_the_fork(tmp_path, monkeypatch) -> None:
    """The supervisor imports the preload, once, before it forks: the zygote and the workers share
    those pages (loaded in the zygote, they copied the supervisor's pages they touched)."""
    loads = tmp_path / "loads"
    (tmp_path / "zygote_preload_probe.py").write_text(
        f"import os\nwith open({str(loads)!r}, 'a') as out:\n    out.write(f'{{os.getpid()}}\\n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zygote_preload_probe", raising=False)
    zygote = Zygote(["zygote_preload_probe"], _target, ("x",))
    try:
        assert "zygote_preload_probe" in sys.modules
        worker = zygote.start(0, {"code": 0, "sleep": 0}, None)
        assert _exited(zygote, worker) == 0
        assert loads.read_text().split() == [str(os.getpid())]  # here, and not again after the fork
    finally:
        zygote.close()
        sys.modules.pop("zygote_preload_probe", None)


def test_a_worker_the_supervisor_signals_reports_the_signal() -> None:
    zygote = Zygote([], _target, ("x",))
    try:
        worker = zygote.start(1, {"code": 0, "sleep": 30}, None)
        os.kill(worker.pid, signal.SIGTERM)
        assert _exited(zygote, worker) == -signal.SIGTERM
    finally:
        zygote.close()


def test_closing_stops_the_workers_left() -> None:
    zygote = Zygote([], _target, ("x",))
    worker = zygote.start(0, {"code": 0, "sleep": 30}, None)
    started = time.monotonic()
    zygote.close()
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(worker.pid, 0)  # stopped and reaped


def test_a_dead_zygote_is_said() -> None:
    zygote = Zygote([], _target, ("x",))
    try:
        assert zygote.process.pid is not None
        os.kill(zygote.process.pid, signal.SIGKILL)
        zygote.process.join(5)
        with pytest.raises(ZygoteGone):
            zygote.poll(1.0)
            zygote.start(0, {"code": 0, "sleep": 0}, None)
    finally:
        zygote.close()


def test_it_refuses_to_be_forked_once_a_thread_runs() -> None:
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="busy")
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="before any thread starts; running: busy"):
            Zygote([], _target, ("x",))
    finally:
        stop.set()
        thread.join()
