"""Ports for the servers the tests and ``tollway up`` start (``ext_proc.stack.free_port``)."""

from __future__ import annotations

import socket
from pathlib import Path

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


def test_only_tollway_starts_with_the_provider_keys_in_its_environment(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Envoy and the fake provider never need a provider key: they start without the variables that
    hold one (the usual two and every one the policy's credentials name)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: tollway/v1\nproviders:\n  eu: {kind: azure-openai, credential: {env: EU_KEY}}\n"
                      "  other: {kind: openai-compatible, credential: {file: /run/key}}\n")
    for name, value in (("OPENAI_API_KEY", "sk-1"), ("ANTHROPIC_API_KEY", "sk-2"), ("EU_KEY", "az-3"),
                        ("UNRELATED", "kept")):
        monkeypatch.setenv(name, value)
    running = stack.Stack(tmp_path / "work", policy=policy)
    served = running.environment("tollway", {"SERVICE_ONLY": "x"})
    assert served["EU_KEY"] == "az-3" and served["OPENAI_API_KEY"] == "sk-1" and served["SERVICE_ONLY"] == "x"
    for name in ("envoy", "mock"):
        environ = running.environment(name)
        assert not {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "EU_KEY"} & set(environ), name
        assert environ["UNRELATED"] == "kept"
    broken = tmp_path / "broken.yaml"
    broken.write_text("providers: [")
    assert "OPENAI_API_KEY" not in stack.Stack(tmp_path / "w2", policy=broken).environment("envoy")
