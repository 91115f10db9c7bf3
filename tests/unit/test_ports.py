"""Ports for the servers the tests and ``tollway up`` start (``ext_proc.stack.free_port``)."""

from __future__ import annotations

import socket
import sys
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


def _banner(tmp_path: Path, text: str, workload: str = "local-dev", mock: bool = True) -> str:
    from ext_proc.policy.compile import compile_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    running = stack.Stack(tmp_path / "state", listen_port=10000, service_admin_port=9902, mock_port=1, mock=mock)
    return stack.banner(running, policy, workload, ["    openai ..."], frozenset({"openai", "anthropic"}),
                        compile_policy(text))


OWN_POLICY = """apiVersion: tollway/v1
providers: {openai: {kind: openai, credential: {env: OPENAI_API_KEY}}}
models: {gpt-4o: {provider: openai}}
teams: {all: {workloads: [w], models: ['*']}}
"""


def test_the_banner_offers_the_demo_key_and_a_call_only_as_the_policy_has_them(tmp_path: Path) -> None:
    """The example policy: its demo key and team, a call as the workload's team with a model it may use,
    the fallback demo. A policy without the demo team, the workload or gpt-4o-mini: none of that."""
    example = (Path(__file__).resolve().parents[2] / "policies" / "example.yaml").read_text()
    shown = _banner(tmp_path, example)
    assert "Demo key (team demo): tw-local-demo-key-not-secret" in shown
    assert '"model": "gpt-4o-mini"' in shown and '"model": "chat"' in shown and "authorization" not in shown
    assert "  Fake provider:        http://127.0.0.1:1 (what it received: http://127.0.0.1:1/_mock/requests)\n" \
        in shown
    shown = _banner(tmp_path, example, workload="elsewhere")  # no team for it: the demo key's team's call
    assert "-H 'authorization: Bearer tw-local-demo-key-not-secret'" in shown and '"model": "gpt-4o-mini"' in shown
    shown = _banner(tmp_path, OWN_POLICY)
    assert "tw-local-demo-key-not-secret" not in shown and "Demo key" not in shown
    assert "curl -s http" not in shown and '"model"' not in shown and "report --log" in shown
    assert "Fake provider" not in _banner(tmp_path, example, mock=False)  # (a Stack without one)
    shown = _banner(tmp_path, OWN_POLICY, workload="w")
    assert '"model": "gpt-4o"' in shown and "gpt-4o-mini" not in shown and '"chat"' not in shown
    assert "Demo key" not in shown


@pytest.mark.parametrize("flag", ["--service-admin-port", "--mock-port"])
def test_tollway_up_refuses_one_port_named_twice_in_one_line(tmp_path: Path, flag: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two of its options naming one port: said at once, before anything starts (not Envoy's
    "Address already in use" from the second bind)."""
    from ext_proc import cli

    same, other, third = (str(stack.free_port()) for _ in range(3))
    ports = {"--port": same, "--service-admin-port": other, "--mock-port": third, flag: same}
    argv = ["up", *[arg for item in ports.items() for arg in item], "--workdir", str(tmp_path / "work")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"tollway up: --port and {flag} both name port {same}: give each its own port\n"
    assert not (tmp_path / "work").exists()


def test_a_child_that_fails_to_start_shows_this_runs_log_only(tmp_path: Path) -> None:
    """The logs are appended to, run after run: an earlier run's lines are not this failure's."""
    work = tmp_path / "work"
    running = stack.Stack(work, mock=True)
    stack.private_directory(work)
    (work / "mock.log").write_text("an earlier run: cannot bind, long ago\n")
    running._spawn("mock", [sys.executable, "-c", "import sys; sys.stderr.write('this run failed\\n'); sys.exit(3)"])
    with pytest.raises(RuntimeError) as raised:
        running._wait_ready(["mock"], timeout=10)
    assert str(raised.value) == "mock exited with 3 while starting:\nthis run failed\n"
    assert "an earlier run" in (work / "mock.log").read_text()  # still appended to, not truncated
