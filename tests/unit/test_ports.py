"""Ports for the servers the tests and ``tollway up`` start (``ext_proc.stack.free_port``)."""

from __future__ import annotations

import socket

import pytest

from ext_proc import stack


def test_ports_come_from_below_the_ephemeral_range_and_never_twice() -> None:
    """An outgoing connection takes its local port from the ephemeral range: a port chosen there
    could be taken between the check and the server's bind (seen under 200 concurrent requests)."""
    low, _ = stack._ephemeral_range()
    ports = [stack.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    for port in ports[:20]:  # free when handed out: a server can bind each
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        draws = iter([busy, busy])

        class Drawn:  # the first draws hit the busy port; the next one is whatever comes
            def choice(self, candidates: range) -> int:
                return next(draws, candidates[0] + 7)

        monkeypatch.setattr(stack.random, "Random", Drawn)
        port = stack.free_port()
    assert port != busy
