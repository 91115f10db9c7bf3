"""Process lifecycle: graceful shutdown, workers, fail-closed, and `tollway up` (what `make run` runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from ext_proc.stack import Stack, free_port, process_tree, worker_pids

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def test_sigterm_lets_in_flight_streams_finish(tmp_path: Path) -> None:
    with Stack(tmp_path, workers=1) as stack:
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="x", max_retries=0)
        chunks: list[object] = []
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                stream = client.chat.completions.create(
                    **BODY, stream=True,
                    extra_headers={"x-mock-chunks": "10", "x-mock-inter-chunk-ms": "100"},
                )
                chunks.extend(stream)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        time.sleep(0.4)  # the stream is now in flight
        service = stack.procs["tollway"]
        service.send_signal(signal.SIGTERM)
        thread.join(15)
        assert not errors, errors
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 10  # type: ignore[attr-defined]
        assert service.wait(10) == 0
        records = stack.record_log.read_text().splitlines()
        assert len(records) == 1 and '"outcome":"ok"' in records[0]


@pytest.mark.parametrize("server", ["h2", "grpcio"])
def test_both_grpc_servers_serve_the_sdk_and_never_log_secrets(tmp_path: Path, server: str) -> None:
    secret = "sk-proj-SECRET1234567890abcdefghijklmnop"
    with Stack(tmp_path, workers=1, server=server) as stack:
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=secret, max_retries=0)
        assert client.chat.completions.create(**BODY).choices[0].message.content
        assert len(list(client.chat.completions.create(**BODY, stream=True))) > 1
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages="bad")  # type: ignore[arg-type]
        time.sleep(0.3)
    assert len(stack.record_log.read_text().splitlines()) == 3
    for log in tmp_path.glob("*.log*"):
        if log.name != "mock.log":  # the fake provider stands for OpenAI, which does see the key
            assert secret not in log.read_text(errors="replace"), f"the client's key leaked into {log.name}"
    assert secret not in stack.record_log.read_text()


def test_service_down_fails_closed_with_a_json_error(tmp_path: Path) -> None:
    with Stack(tmp_path, workers=1) as stack:
        stack.procs["tollway"].kill()
        stack.procs["tollway"].wait()
        response = httpx.post(stack.base_url + "/v1/chat/completions", json=BODY)
        assert response.status_code == 500
        assert "Tollway gateway error" in response.json()["error"]["message"]
        mock_seen = httpx.get(f"http://127.0.0.1:{stack.mock_port}/_mock/requests").json()
        assert mock_seen == [], "a request went to the provider while Tollway was down"


def test_workers_die_with_a_killed_supervisor_and_a_restarted_service_takes_over(tmp_path: Path) -> None:
    with Stack(tmp_path, workers=2) as stack:
        service = stack.procs["tollway"]
        helpers = list(process_tree(service.pid))  # workers, the fork server, the resource tracker
        assert len(worker_pids(service.pid)) == 2 and len(helpers) == 5
        service.kill()  # SIGKILL: no chance to stop its workers itself
        service.wait()
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in helpers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.05)
        # Nothing serves the old socket now: a new service replaces it and Envoy reaches it.
        stack._spawn("tollway", stack.serve_argv(), {"TOLLWAY_POLICY": "", "TOLLWAY_WORKLOAD": ""})
        stack._wait_ready(["tollway"])
        with httpx.Client() as http:
            deadline = time.monotonic() + 10
            while (status := http.post(stack.base_url + "/v1/chat/completions", json=BODY).status_code) != 200:
                assert time.monotonic() < deadline, status
                time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


def test_workers_share_the_port(tmp_path: Path) -> None:
    with Stack(tmp_path, workers=2) as stack:
        assert len(worker_pids(stack.procs["tollway"].pid)) == 2
        with httpx.Client() as http:
            for _ in range(20):
                assert http.post(stack.base_url + "/v1/chat/completions", json=BODY).status_code == 200


def test_tollway_up_serves_the_sdk_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("port", "admin", "mock", "service")}
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ext_proc.cli", "up", "--port", str(ports["port"]), "--admin-port", str(ports["admin"]),
         "--mock-port", str(ports["mock"]),
         "--service-admin-port", str(ports["service"]), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert any("Tollway is up" in line for line in lines), "".join(lines)
        assert time.monotonic() - started < 20
        # No key: the local sidecar's workload identity (team platform in the example policy).
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['port']}/v1", api_key="x", max_retries=0)
        assert client.chat.completions.create(**BODY).choices[0].message.content
        # The README's demo key (team demo), and a model that team may not use.
        demo = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['port']}/v1",
                             api_key="tw-local-demo-key-not-secret", max_retries=0)
        assert demo.chat.completions.create(**BODY).choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):
            demo.chat.completions.create(model="gpt-4o", messages=BODY["messages"])
        patterns = [str(tmp_path), f"mock-provider --port {ports['mock']}"]

        def running() -> list[str]:
            found = []
            for pattern in patterns:
                found += subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
            return found

        assert len(running()) >= 3  # envoy, the service, the fake provider
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        deadline = time.monotonic() + 10
        while running():
            assert time.monotonic() < deadline, f"processes left running after Ctrl-C: {running()}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-KILL", "-f", str(tmp_path)])
