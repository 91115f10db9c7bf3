"""`tollway up` (what `make run` runs) as a new user meets it: the README's quick start word for word,
the start banner, policy errors on the console, a second instance, the first seconds, your own providers."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from ext_proc.stack import ROOT, Stack, _cores, ask_envoy_admin, free_port, port_owner, process_tree
from tests.unix_users import as_other_user, needs_root, open_directory, tcp_listeners

pytestmark = pytest.mark.e2e

README = (ROOT / "README.md").read_text()
NO_KEYS = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}


class Up:
    """A running `tollway up` on free ports, its console read line by line."""

    def __init__(self, workdir: Path, policy: Path | None = None, env: dict[str, str] | None = None,
                 ports: dict[str, int] | None = None) -> None:
        self.workdir = workdir
        self.ports = ports or {name: free_port() for name in ("port", "mock", "service")}
        argv = [sys.executable, "-m", "ext_proc.cli", "up", "--port", str(self.ports["port"]),
                "--mock-port", str(self.ports["mock"]), "--service-admin-port", str(self.ports["service"]),
                "--workdir", str(workdir)]
        if policy is not None:
            argv += ["--policy", str(policy)]
        # umask 022, a shell's usual: the modes of what it writes are Tollway's own, not the umask's.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env or NO_KEYS, start_new_session=True, cwd=ROOT, umask=0o022)
        self.lines: queue.Queue[str] = queue.Queue()
        self.console: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, pattern: str, timeout: float = 30) -> str:
        """Console lines up to the first that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} on the console:\n{''.join(self.console)}") from None
            self.console.append(line)
            if re.search(pattern, line):
                return line

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin socket, as the banner names it."""
        found = re.search(r"Envoy admin:\s+(\S+)", "".join(self.console))
        assert found is not None, "".join(self.console)
        return Path(found.group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    work = tmp_path_factory.mktemp("up")
    policy = work / "policy.yaml"
    shutil.copy(ROOT / "policies" / "example.yaml", policy)
    running = Up(work / "state", policy)
    try:
        running.until(r"^Ctrl-C stops everything")
        yield running
    finally:
        assert running.stop() == 0


def quick_start_blocks() -> list[tuple[str, str]]:
    section = README[README.index("## Quick start"):README.index("\n## ", README.index("## Quick start") + 5)]
    return re.findall(r"```(sh|python)\n(.*?)```", section, re.S)


def test_the_readmes_quick_start_word_for_word(up: Up) -> None:
    blocks = quick_start_blocks()
    assert blocks[0][1].split("\n")[0].startswith("make run") and len(blocks) == 5
    ran = 0
    for language, code in blocks[1:]:
        code = code.replace("127.0.0.1:10000", f"127.0.0.1:{up.ports['port']}")  # the test's own port
        if language == "python":
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            assert "ChatCompletion(" in proc.stdout and "Message(" in proc.stdout
        else:
            proc = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            if "x-mock-openai-status: 429" in code:  # the fallback demo, and what the README says it shows
                assert "x-tollway-provider: anthropic" in proc.stdout and "x-tollway-attempts: 2" in proc.stdout
                assert '"object":"chat.completion"' in proc.stdout
            elif "x-mock-reply" in code:  # what the system prompt keeps, out of the answer as the README shows
                shown = re.search(r'# ("content": ".*")\n', code)
                assert shown is not None and shown.group(1).replace(": ", ":", 1) in proc.stdout, proc.stdout
                assert "FLAMINGO" not in proc.stdout and "F-L-A" not in proc.stdout
            else:
                assert '"object":"chat.completion"' in proc.stdout
        ran += 1
    assert ran == 4
    # "demo may not use gpt-4o: that call gets a 403"
    demo = {"authorization": "Bearer tw-local-demo-key-not-secret"}
    denied = httpx.post(up.url + "/v1/chat/completions", headers=demo,
                        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
    assert denied.status_code == 403
    # "Every request leaves one JSON line in .tollway/requests.jsonl" (here: its --workdir)
    log = up.workdir / "requests.jsonl"
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 5)  # written in batches


def test_the_banner_says_the_demo_key_the_logs_and_how_to_run_tollway(up: Up) -> None:
    banner = "".join(up.console)
    assert "tw-local-demo-key-not-secret" in banner
    assert f"{up.workdir}/tollway.log" in banner and "envoy.log" in banner
    assert "requests.jsonl" in banner
    command = re.search(r"The tollway command:\s+(\S+)", banner)
    assert command is not None
    proc = subprocess.run([str(ROOT / command.group(1)), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "usage: tollway" in proc.stdout
    assert "source .venv/bin/activate" in banner


def test_the_banner_says_where_the_fake_provider_shows_what_it_received(up: Up) -> None:
    """The quick start: an email address in a prompt "reaches the provider as [EMAIL_1]"; the
    banner's address of the fake provider shows it."""
    found = re.search(r"Fake provider:\s+(\S+) \(what it received: (\S+)\)", "".join(up.console))
    assert found is not None and found.group(1) == f"http://127.0.0.1:{up.ports['mock']}", "".join(up.console)
    answer = httpx.post(up.url + "/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Mail jane.roe@example.com today"}]})
    assert answer.status_code == 200, answer.text
    received = httpx.get(found.group(2)).json()
    prompts = [str(request) for request in received if "Mail " in str(request)]
    assert prompts and "[EMAIL_1]" in prompts[-1] and "jane.roe" not in "".join(prompts)


def test_what_tollway_up_writes_only_its_user_reads(up: Up) -> None:
    """Logs hold request metadata (Envoy's, at debug level, keys and prompts): nothing under the workdir is
    open to other users, and the logs and Envoy's config not to the user's group either."""
    response = httpx.post(up.url + "/v1/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200
    wait_until(lambda: (up.workdir / "requests.jsonl").exists())
    modes = {str(path.relative_to(up.workdir)): stat.S_IMODE(path.lstat().st_mode) for path in up.workdir.rglob("*")}
    assert stat.S_IMODE(up.workdir.stat().st_mode) == 0o700
    for name in ("envoy.log", "tollway.log", "mock.log", "envoy.yaml", "up.lock", "run/ext_proc.sock",
                 "run/envoy-admin.sock"):
        assert modes[name] == 0o600, (name, oct(modes[name]))
    assert modes["run"] == 0o700 and modes["requests.jsonl"] == 0o640  # the request log: see the README
    assert all(mode & 0o007 == 0 for mode in modes.values()), {name: oct(mode) for name, mode in modes.items()}


@needs_root
def test_another_user_can_reach_envoys_admin_neither_on_a_port_nor_on_its_socket() -> None:
    """The audit's attack: any local user POSTed /logging?level=debug to Envoy's admin on 127.0.0.1:9901,
    after which Envoy's debug log printed the provider key (or /quitquitquit stopped Envoy). `tollway up`
    listens on TCP only for the gateway, Tollway's admin and the fake provider; Envoy's admin is a 0600
    socket in a 0700 directory, which its user reaches (the banner's curl) and no other user does."""
    with open_directory() as parent:  # the way to the workdir is open: only the modes of what tollway up makes count
        running = Up(parent / "state")
        try:
            running.until(r"^Ctrl-C stops everything")
            assert tcp_listeners(running.proc.pid) == {running.ports[name] for name in ("port", "service", "mock")}
            admin = running.admin_socket
            assert admin == parent / "state" / "run" / "envoy-admin.sock"
            assert admin.lstat().st_uid == os.geteuid() and stat.S_IMODE(admin.lstat().st_mode) == 0o600
            assert stat.S_IMODE(admin.parent.lstat().st_mode) == 0o700
            banner = "".join(running.console)
            curl = re.search(r"^\s+(curl -s --unix-socket \S+ http://localhost/stats)\)$", banner, re.MULTILINE)
            assert curl is not None, banner
            stats = subprocess.run(["bash", "-c", curl.group(1)], capture_output=True, text=True, timeout=30)
            assert "server.live: 1" in stats.stdout.splitlines(), stats.stdout[-2000:] + stats.stderr

            def attack() -> dict[str, str]:
                outcome = {}
                for path in ("/logging?level=debug", "/quitquitquit"):
                    try:
                        with socket.socket(socket.AF_UNIX) as sock:
                            sock.connect(str(admin))
                            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n"
                                         .encode())
                            outcome[path] = sock.recv(100).decode(errors="replace").split("\r\n")[0]
                    except OSError as exc:
                        outcome[path] = errno.errorcode.get(exc.errno or 0, repr(exc))
                return outcome

            refused = {"/logging?level=debug": "EACCES", "/quitquitquit": "EACCES"}
            assert as_other_user(attack) == refused
            assert as_other_user(attack, groups=(os.getegid(),)) == refused  # nor a member of the user's group
            logging = ask_envoy_admin(admin, "/logging", method="POST").text  # Envoy is up, at its own level
            assert "router: warning" in logging and ": debug" not in logging, logging
            assert httpx.post(running.url + "/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200
        finally:
            assert running.stop() == 0


def test_readyz_counts_providers_the_fake_provider_serves_as_served(up: Up) -> None:
    ready = httpx.get(f"http://127.0.0.1:{up.ports['service']}/readyz").json()
    assert ready["credentials"] == {"openai": True, "anthropic": True, "azure-eu": True, "local-llm": True}
    assert set(ready["stand_ins"]) == {"openai", "anthropic", "azure-eu", "local-llm"}
    # The Azure provider's key file does not exist here: the fake provider still gets a (placeholder) key.
    seen = httpx.post(up.url + "/v1/chat/completions",
                      json={"model": "gpt-4o-eu", "messages": [{"role": "user", "content": "Hi"}]})
    assert seen.status_code == 200


def test_a_conversations_earlier_turns_are_answered_from_the_workers_memory(up: Up) -> None:
    history = [
        {"role": "system", "content": "You are the release assistant. Answer from the notes the user pastes."},
        {"role": "user", "content": "Notes: the billing migration finished two weeks late and lost no data."},
        {"role": "assistant", "content": "Noted: the migration was two weeks late and no data was lost."},
    ]
    for turn in range(6):  # two workers: one of them gets the same history three times or more
        question = {"role": "user", "content": f"Question {turn}: what should the next review check first?"}
        sent = httpx.post(up.url + "/v1/chat/completions", json={"model": "gpt-4o-mini",
                                                                 "messages": [*history, question]})
        assert sent.status_code == 200, sent.text

    def answers() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{up.ports['service']}/metrics").text
        return {source: float(count) for source, count in
                re.findall(r'^tollway_text_memory_answers_total\{source="(\w+)"\} (\S+)$', text, re.MULTILINE)}

    deadline = time.monotonic() + 5  # the workers publish their counts twice a second
    while answers().get("remembered", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    found = answers()
    assert found.get("remembered", 0) > 0 and found.get("computed", 0) > 0, found


@pytest.mark.parametrize(("good", "bad", "token", "words"), [
    # (a correct piece of the example policy, a mistake in its place, where the mistake starts, what is said)
    ("    kind: anthropic\n", "   kind: anthropic\n", "kind", "indented by 3 spaces where the lines around it use 4"),
    ("    model: gpt-4o-2024-08-06", "    modle: gpt-4o-2024-08-06", "modle", "unknown field 'modle'"),
    ('api_version: "2024-10-21"', "api_version: 2024.10", "2024.10", "must be a string"),
    ("models: [gpt-4o-mini, claude-haiku, chat]", "models: [gpt-4o-mini, claude-haikoo, chat]", "claude-haikoo",
     "unknown model 'claude-haikoo'"),
], ids=["indentation", "unknown-field", "wrong-type", "bad-reference"])
def test_a_rejected_edit_is_printed_on_the_console_at_its_line_and_column(
    up: Up, good: str, bad: str, token: str, words: str
) -> None:
    policy = up.workdir.parent / "policy.yaml"
    original = policy.read_text()
    text = original.replace(good, bad, 1)
    at = text.index(bad) + bad.index(token)
    line = text[:at].count("\n") + 1
    column = text.splitlines()[line - 1].index(token) + 1
    try:
        policy.write_text(text)
        assert "still serving version" in up.until(r"REJECTED", timeout=10)
        error = up.until(rf"{re.escape(str(policy))}:\d+:\d+: ", timeout=5)
        assert error.startswith(f"{policy}:{line}:{column}: ") and words in error, error
        ready = httpx.get(f"http://127.0.0.1:{up.ports['service']}/readyz").json()
        assert ready["ready"] is True and ready["policy"]["state"] == "stale"
        assert f"{policy}:{line}:{column}: " in ready["policy"]["last_reload_error"]
        metrics = httpx.get(f"http://127.0.0.1:{up.ports['service']}/metrics").text
        assert "tollway_policy_stale 1.0" in metrics
    finally:
        policy.write_text(original)
    assert "reloaded" in up.until(r"reloaded: version", timeout=10)


def test_a_second_make_run_says_who_holds_the_ports_and_joins_nothing(up: Up, tmp_path: Path) -> None:
    log = up.workdir / "tollway.log"
    before = log.read_text()
    # Same ports, another workdir: refused, naming the processes.
    second = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "up", "--port", str(up.ports["port"]), "--mock-port",
         str(up.ports["mock"]), "--service-admin-port", str(up.ports["service"]),
         "--workdir", str(tmp_path / "second")],
        capture_output=True, text=True, env=NO_KEYS, timeout=60, cwd=ROOT)
    assert second.returncode == 1
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"port {up.ports['port']} (gateway listener, --port) is in use by envoy (pid " in second.stderr
    assert f"port {up.ports['service']} (Tollway admin, --service-admin-port) is in use by " in second.stderr
    assert "tollway mock-provider (pid" in second.stderr
    assert not (tmp_path / "second" / "tollway.log").exists()
    # Same workdir, other ports: refused too, so the logs are never shared.
    third = subprocess.run([sys.executable, "-m", "ext_proc.cli", "up", "--workdir", str(up.workdir),
                            *[arg for name in ("--port", "--mock-port", "--service-admin-port")
                              for arg in (name, str(free_port()))]],
                           capture_output=True, text=True, env=NO_KEYS, timeout=60, cwd=ROOT)
    assert third.returncode == 1 and "is in use by another tollway up (pid" in third.stderr
    # Same workdir and the same ports (a second make run in the same checkout): both said.
    fourth = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "up", "--port", str(up.ports["port"]), "--mock-port",
         str(up.ports["mock"]), "--service-admin-port", str(up.ports["service"]), "--workdir", str(up.workdir)],
        capture_output=True, text=True, env=NO_KEYS, timeout=60, cwd=ROOT)
    assert fourth.returncode == 1 and "is in use by another tollway up (pid" in fourth.stderr
    assert f"port {up.ports['port']} (gateway listener, --port) is in use by envoy (pid " in fourth.stderr
    assert log.read_text() == before
    assert httpx.post(up.url + "/v1/chat/completions",
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200


def test_a_second_envoy_cannot_join_the_gateway_port(up: Up, tmp_path: Path) -> None:
    """Envoy shares listener ports by default (SO_REUSEPORT); the shipped listener refuses."""
    second = Stack(tmp_path, listen_port=up.ports["port"])
    with pytest.raises(RuntimeError, match="envoy exited"):
        second.start()
    assert "Address already in use" in (tmp_path / "envoy.log").read_text()


def test_nothing_can_join_the_service_admin_port(up: Up, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", f"unix:{tmp_path}/run/s.sock",
         "--admin-port", str(up.ports["service"])], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"cannot listen on the admin port 127.0.0.1:{up.ports['service']}: Address already in use" in proc.stderr


def test_envoy_uses_the_machines_cores(up: Up) -> None:
    info = ask_envoy_admin(up.admin_socket, "/server_info").json()
    assert info["command_line_options"]["concurrency"] == _cores()


def test_no_request_fails_while_the_gateway_starts(tmp_path: Path) -> None:
    """Requests sent from the first moment: refused connections until Envoy listens, then answers; never a 500."""
    ports = {name: free_port() for name in ("port", "mock", "service")}
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"http://127.0.0.1:{ports['port']}/v1/chat/completions",
                                         json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
                    statuses.append(response.status_code)
                except httpx.TransportError:
                    time.sleep(0.005)

    thread = threading.Thread(target=hammer)
    thread.start()
    started = Up(tmp_path, ports=ports)
    try:
        started.until(r"^Ctrl-C stops everything")
        deadline = time.monotonic() + 5
        while len(statuses) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(15)
        assert started.stop() == 0
    assert statuses and set(statuses) == {200}, sorted(set(statuses))


OWN = """apiVersion: tollway/v1
providers:
  openai:                       # keeps its default cluster name, with an endpoint of its own (a proxy)
    kind: openai
    endpoint: http://127.0.0.1:{upstream}
    credential: {{env: OWN_OPENAI_KEY}}
  anthropic: {{kind: anthropic, credential: {{env: OWN_ANTHROPIC_KEY}}}}   # no key: the fake provider
  mine:                         # a model you run yourself, under a cluster name of its own
    kind: openai-compatible
    cluster: my-llm
    endpoint: http://127.0.0.1:{upstream}
models:
  gpt-4o-mini: {{provider: openai}}
  llama: {{provider: mine, model: llama-3.1-8b}}
routing:
  aliases:
    local-first:
      targets:
        - {{provider: mine, model: llama-3.1-8b}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  platform: {{workloads: [local-dev], models: ["*"]}}
"""


def test_tollway_up_with_your_own_providers_uses_their_endpoints(tmp_path: Path) -> None:
    upstream_port = free_port()  # "your" server: another fake provider, on its own port
    upstream = subprocess.Popen([sys.executable, "-m", "ext_proc.cli", "mock-provider", "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{upstream_port}/healthz").status_code == 200)
        policy = tmp_path / "own.yaml"
        policy.write_text(OWN.format(upstream=upstream_port))
        running = Up(tmp_path / "state", policy, env={**NO_KEYS, "OWN_OPENAI_KEY": "sk-own-proxy-0001"})
        try:
            running.until(r"^Ctrl-C stops everything")
            banner = "".join(running.console)
            assert f"openai             openai             -> http://127.0.0.1:{upstream_port}" in banner
            assert "anthropic          anthropic          -> fake provider" in banner
            with httpx.Client(base_url=running.url, timeout=10) as http:
                for model in ("gpt-4o-mini", "llama", "local-first"):
                    response = http.post("/v1/chat/completions",
                                         json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
                    assert response.status_code == 200, (model, response.text)
            seen = httpx.get(f"http://127.0.0.1:{upstream_port}/_mock/requests").json()
            models = [yaml.safe_load(request["body"])["model"] for request in seen]
            assert models == ["gpt-4o-mini", "llama-3.1-8b", "llama-3.1-8b"]  # all three reached your endpoint
            # tollway up's Envoy has exactly the clusters `tollway envoy` renders for the same policy.
            static = subprocess.run(
                [sys.executable, "-m", "ext_proc.cli", "envoy", "--policy", str(policy),
                 "--stand-in", f"anthropic=http://127.0.0.1:{running.ports['mock']}"],
                capture_output=True, text=True, check=True, env={**NO_KEYS, "OWN_OPENAI_KEY": "x"}).stdout
            rendered = {c["name"] for c in yaml.safe_load(static)["static_resources"]["clusters"]}
            dump = ask_envoy_admin(running.admin_socket, "/config_dump",
                                   params={"resource": "dynamic_active_clusters"}).json()
            active = {entry["cluster"]["name"] for entry in dump["configs"]}
            assert active == rendered - {"tollway_ext_proc"} == {"openai", "anthropic", "my-llm", "my-llm+anthropic"}
        finally:
            assert running.stop() == 0
    finally:
        upstream.terminate()
        upstream.wait(10)


STOOD_IN = """apiVersion: tollway/v1
providers:
  azure-eu:                     # an Azure resource: tollway up stands in for it, its key set or not
    kind: azure-openai
    endpoint: https://contoso-eu.openai.azure.com
    credential: {env: UP_AZURE_KEY}
    api_version: "2024-10-21"
  remote:                       # an OpenAI-compatible service on another host: stood in too
    kind: openai-compatible
    endpoint: https://llm.internal.example.com/v1
    credential: {env: UP_REMOTE_KEY}
models:
  gpt-4o-eu: {provider: azure-eu, model: gpt-4o-prod}
  llama: {provider: remote, model: llama-3.1-70b}
teams:
  platform: {workloads: [local-dev], models: ["*"]}
"""
REAL_KEYS = {"UP_AZURE_KEY": "azure-REAL-SECRET-0123456789abcdef", "UP_REMOTE_KEY": "sk-remote-REAL-SECRET-0123"}


def test_a_provider_the_fake_provider_stands_in_for_never_gets_your_key(tmp_path: Path) -> None:
    """The fake provider lists what it received to any local process (GET /_mock/requests): a provider
    it stands in for gets the placeholder key, even when its real key is set."""
    policy = tmp_path / "stood-in.yaml"
    policy.write_text(STOOD_IN)
    running = Up(tmp_path / "state", policy, env={**NO_KEYS, **REAL_KEYS})
    try:
        running.until(r"^Ctrl-C stops everything")
        banner = "".join(running.console)
        assert "azure-eu           azure-openai       -> fake provider" in banner
        assert "remote             openai-compatible  -> fake provider" in banner
        with httpx.Client(base_url=running.url, timeout=10) as http:
            for model in ("gpt-4o-eu", "llama"):
                response = http.post("/v1/chat/completions",
                                     json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
                assert response.status_code == 200, (model, response.text)
        seen = httpx.get(f"http://127.0.0.1:{running.ports['mock']}/_mock/requests").json()
        keys = [{k.lower(): v for k, v in request["headers"]} for request in seen]
        assert [(h.get("api-key"), h.get("authorization")) for h in keys] == [
            ("tollway-stand-in-key", None), (None, "Bearer tollway-stand-in-key")]
        assert not any(key in str(seen) for key in REAL_KEYS.values())
    finally:
        assert running.stop() == 0


ADDED = """  mistral: {kind: openai-compatible, endpoint: https://api.mistral.ai, credential: {env: UP_MISTRAL_KEY}}
  remote-keyed: {kind: openai-compatible, endpoint: https://llm.example.com/v1, credential: {env: UP_REMOTE_KEY}}
"""


def test_a_provider_an_edit_adds_without_a_key_is_served_by_the_fake_provider(tmp_path: Path) -> None:
    """The fake provider is decided per policy version: a provider added while `make run` runs, without its
    key (or elsewhere than this machine, its key set), is served by the fake provider with the placeholder key,
    never sent to its real endpoint (a 503 offline, the prompt without a key online), and the console says so."""
    policy = tmp_path / "policy.yaml"
    original = (ROOT / "policies" / "example.yaml").read_text()
    policy.write_text(original)
    running = Up(tmp_path / "state", policy, env={**NO_KEYS, "UP_REMOTE_KEY": REAL_KEYS["UP_REMOTE_KEY"]})
    try:
        running.until(r"^Ctrl-C stops everything")
        edited = original.replace("providers:\n", "providers:\n" + ADDED, 1).replace(
            "models:\n", "models:\n  mistral-small: {provider: mistral}\n  remote-llama: {provider: remote-keyed}\n", 1)
        new = tmp_path / "policy.yaml.new"
        new.write_text(edited)
        new.rename(policy)  # an editor's save
        running.until(r"reloaded: version", timeout=15)
        assert "mistral -> fake provider" in running.until(r"provider mistral ", timeout=5)
        assert "remote-keyed -> fake provider" in running.until(r"provider remote-keyed ", timeout=5)
        with httpx.Client(base_url=running.url, timeout=10) as http:
            for model, provider in (("mistral-small", "mistral"), ("remote-llama", "remote-keyed")):
                response = http.post("/v1/chat/completions",
                                     json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
                assert response.status_code == 200, (model, response.text)
                assert response.headers["x-tollway-provider"] == provider
        seen = httpx.get(f"http://127.0.0.1:{running.ports['mock']}/_mock/requests").json()
        bodies = [yaml.safe_load(request["body"])["model"] for request in seen]
        assert bodies == ["mistral-small", "remote-llama"]
        keys = [{k.lower(): v for k, v in request["headers"]}.get("authorization") for request in seen]
        assert keys == ["Bearer tollway-stand-in-key"] * 2
        assert REAL_KEYS["UP_REMOTE_KEY"] not in str(seen)
        ready = httpx.get(f"http://127.0.0.1:{running.ports['service']}/readyz").json()
        assert {"mistral", "remote-keyed"} <= set(ready["stand_ins"])
        assert ready["credentials"]["mistral"] is True
    finally:
        assert running.stop() == 0


# make, the first process of the terminal (`ssh -t host make run`, a tmux pane's `make run`): the
# session leader the kernel tells of the hangup, which catches SIGHUP and waits for its child.
LIKE_MAKE = ("import signal, subprocess, sys; signal.signal(signal.SIGHUP, lambda *_: None); "
             "sys.exit(subprocess.call(sys.argv[1:]))")


def test_closing_its_terminal_stops_it_when_make_holds_the_terminal(tmp_path: Path) -> None:
    """The kernel sends SIGHUP on a hangup to the terminal's session leader only (make), and make waits for
    its child: `tollway up` must see the hangup itself (its terminal's POLLHUP) and stop everything."""
    ports = {name: free_port() for name in ("port", "mock", "service")}
    up = [sys.executable, "-m", "ext_proc.cli", "up", "--port", str(ports["port"]), "--mock-port", str(ports["mock"]),
          "--service-admin-port", str(ports["service"]), "--workdir", str(tmp_path / "state")]
    pid, master = os.forkpty()
    if pid == 0:  # the child: on the new terminal, as its first process
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-c", LIKE_MAKE, *up], NO_KEYS)
        finally:
            os._exit(127)
    tree: dict[int, int] = {}
    reaped = False
    try:
        console = b""
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops everything" not in console:
            assert time.monotonic() < deadline, console.decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                console += os.read(master, 65536)
        tree = process_tree(pid)
        assert len(tree) >= 5, tree  # make, tollway up, the fake provider, tollway serve, Envoy
        os.close(master)  # the terminal closes (its window, the ssh connection, the tmux session)
        master = -1
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, f"still running 10 s after its terminal closed: {process_tree(pid)}"
            time.sleep(0.1)
        reaped = True
        assert all(port_owner(port) is None for port in ports.values()), {p: port_owner(p) for p in ports.values()}
        # Every process of the tree gone: allowed a moment, since a grandchild (a worker of tollway
        # serve) may still be exiting when make is reaped; one still there after it is reported with
        # what it is (its name, state and parent), a zombie counting as gone.
        deadline = time.monotonic() + 5
        while left := {p: _stat(p) for p in tree if p != pid and _stat(p) and " Z " not in _stat(p)}:
            assert time.monotonic() < deadline, (tree, left)
            time.sleep(0.1)
    finally:
        if master >= 0:
            os.close(master)
        if not reaped:  # (what this test started, while make's pid is still ours)
            for leftover in {**process_tree(pid), **tree}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
            os.waitpid(pid, 0)


def _stat(pid: int) -> str:
    """``/proc/PID/stat`` (pid, name, state, parent, ...), or "" when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
