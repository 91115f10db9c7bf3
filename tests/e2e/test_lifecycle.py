"""Process lifecycle: graceful shutdown, workers, fail-closed, and `tollway up` (what `make run` runs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import orjson
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
        helpers = list(process_tree(service.pid))  # the service, its workers' zygote, the workers
        assert len(worker_pids(service.pid)) == 2 and len(helpers) == 4
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


def cpu_ns(pid: int) -> int:
    """A process's run time so far (all its threads), in nanoseconds."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def test_every_worker_gets_connections_and_a_replaced_one_gets_its_share_back(tmp_path: Path) -> None:
    # Two Envoy threads, each with its own connection(s) to Tollway: the supervisor deals them to
    # the two workers, so both work (over a shared socket one worker could take them all).
    with Stack(tmp_path, workers=2, envoy_concurrency=2) as stack:
        assert len(worker_pids(stack.procs["tollway"].pid)) == 2

        def load(n: int) -> list[int]:
            with httpx.Client(timeout=10) as http:
                return [http.post(stack.base_url + "/v1/chat/completions", json=BODY).status_code for _ in range(n)]

        def busy(clients: int = 16, each: int = 15) -> dict[int, int]:
            """CPU each worker spent serving ``clients`` concurrent clients (ns, by pid)."""
            workers = worker_pids(stack.procs["tollway"].pid)
            before = {pid: cpu_ns(pid) for pid in workers}
            codes: list[int] = []
            threads = [threading.Thread(target=lambda: codes.extend(load(each))) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert codes == [200] * (clients * each)
            return {pid: cpu_ns(pid) - before[pid] for pid in workers}

        spent = busy()
        assert min(spent.values()) > 0.2 * sum(spent.values()), spent  # neither worker idles

        # A worker dies: Envoy's next connections go to the other; requests keep working.
        victim = worker_pids(stack.procs["tollway"].pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while load(1) != [200]:  # a request in flight on the dead worker's connection may fail
            assert time.monotonic() < deadline, "no worker took over"
        assert load(20) == [200] * 20
        deadline = time.monotonic() + 15
        while victim in (workers := worker_pids(stack.procs["tollway"].pid)) or len(workers) != 2:
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.05)
        # Its replacement gets a share: the survivor sends connections away and Envoy reconnects.
        deadline = time.monotonic() + 15
        while min((spent := busy()).values()) <= 0.2 * sum(spent.values()):
            assert time.monotonic() < deadline, f"the replaced worker stays idle: {spent}"
        # What a stuck start shows (kill -USR1): every Tollway process writes its stacks to the log
        # and keeps serving.
        log = stack._stuck("tollway", tail=30000)  # four processes' stacks, their lines interleaved
        assert log.count("Current thread") + log.count("Thread 0x") >= 4  # supervisor, zygote, 2 workers
        assert len(worker_pids(stack.procs["tollway"].pid)) == 2 and stack.procs["tollway"].poll() is None
        assert load(5) == [200] * 5


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP, signal.SIGKILL], ids=["ctrl-c", "hangup", "killed"])
def test_tollway_up_serves_the_sdk_and_stops_everything_on_ctrl_c(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C, a closed terminal (SIGHUP: the children are in sessions of their own and get none)
    or `tollway up` killed outright (its children get SIGTERM from the kernel): nothing is left."""
    ports = {name: free_port() for name in ("port", "mock", "service")}
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ext_proc.cli", "up", "--port", str(ports["port"]),
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
        assert time.monotonic() - started < 60  # a hang's bound, not a figure (26 s on a machine loaded twice over)
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
        proc.send_signal(stop)
        assert proc.wait(20) == (-signal.SIGKILL if stop == signal.SIGKILL else 0)
        deadline = time.monotonic() + 10
        while running():
            assert time.monotonic() < deadline, f"processes left running after {stop.name}: {running()}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-KILL", "-f", str(tmp_path)])


CRASH_KEY = "tw-crash-lifecycle-key-0123456789abcdefghijklmno"
CRASH_POLICY = """
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: LIFECYCLE_OPENAI_KEY}}
models:
  gpt-4o-mini: {provider: openai, price: {input: "1000", output: "1000"}}
teams:
  crash: {keys: [{id: crash-ci, sha256: "DIGEST"}], models: ["*"]}
budgets:
  crash-daily: {team: crash, usd: "1.00", period: day}
rate_limits:
  crash-at-once: {team: crash, concurrent: 2}
"""


def test_killed_workers_requests_in_flight_are_charged_and_their_slots_freed_at_once(tmp_path: Path) -> None:
    """Both workers are killed while a provider serves two requests. Their claims are the most those
    requests may cost, so the budget is charged them when the supervisor reaps the workers (before:
    the claims came back when they expired, 30 s later, as if the provider had served nothing, and a
    hard budget could be passed again and again), and the team's two concurrency slots are free at
    once (before: every request of the team was refused for those 30 s)."""
    from ext_proc.policy.compiled import key_digest

    policy = tmp_path / "policy.yaml"
    policy.write_text(CRASH_POLICY.replace("DIGEST", key_digest(CRASH_KEY)))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}
    auth = {"authorization": f"Bearer {CRASH_KEY}"}
    with Stack(tmp_path / "stack", policy=policy, workers=2, service_env={"LIFECYCLE_OPENAI_KEY": "sk-lifecycle"},
               mock_args=("--api-key", "sk-lifecycle"), stand_ins_get_keys=True, mocked=frozenset({"openai"})) as stack:
        admin, mock = f"http://127.0.0.1:{stack.service_admin_port}", f"http://127.0.0.1:{stack.mock_port}"

        def budget() -> tuple[int, int]:
            rows = httpx.get(admin + "/v1/budgets", timeout=5).json()["budgets"]
            return next((row["spent"], row["held"]) for row in rows if row["member"] == "crash")

        with httpx.Client(timeout=30) as http:
            first = http.post(stack.base_url + "/v1/chat/completions", json=body, headers=auth)
            assert first.status_code == 200, first.text
        deadline = time.monotonic() + 5
        while not stack.record_log.exists() or not stack.record_log.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (limit,) = orjson.loads(stack.record_log.read_text().splitlines()[-1])["limits"][:1]
        claimed, used = limit["claimed"], limit["used"]
        assert limit["limit"] == "crash-daily" and used < claimed
        seen = len(httpx.get(mock + "/_mock/requests").json())

        def slow() -> None:
            with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=30) as http:
                http.post(stack.base_url + "/v1/chat/completions", json=body,
                          headers={**auth, "x-mock-latency-ms": "8000"})

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(httpx.get(mock + "/_mock/requests").json()) < seen + 2:  # both with the provider
            assert time.monotonic() < deadline, "the requests did not reach the provider"
            time.sleep(0.05)
        workers = worker_pids(stack.procs["tollway"].pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(30)
        deadline = time.monotonic() + 15
        while budget()[1] or set(workers) & set(worker_pids(stack.procs["tollway"].pid)):
            assert time.monotonic() < deadline, f"the dead workers still hold {budget()}"
            time.sleep(0.1)
        assert budget() == (used + 2 * claimed, 0)  # unknown is not zero: the claims are spent
        # Both slots are free: the next request is served, not refused for 30 s.
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 10
            while (answer := http.post(stack.base_url + "/v1/chat/completions", json=body,
                                       headers=auth)).status_code >= 500:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.1)
            assert answer.status_code == 200, answer.text


def test_a_crash_loop_of_the_workers_ends_the_service_with_a_reason(tmp_path: Path) -> None:
    # Every worker dies as it starts (as with a broken install): the supervisor gives up after five
    # in a row and exits 1, instead of restarting forever behind a readiness probe that never passes.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "main = os.getpid()\n"  # the supervisor; its child is the workers' zygote, their children the workers
        "os.register_at_fork(after_in_child=lambda: os.getppid() != main and os._exit(3))\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", f"unix:{run}/ext_proc.sock", "--workers", "2",
         "--admin-port", "0"],
        env={**os.environ, "PYTHONPATH": str(hooks)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "workers died 5 times in a row" in proc.stderr
    assert proc.stderr.count("restarting it") == 4
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("flag", "value", "said"), [
    ("--redis", "nope://x", "--redis: Redis URL must specify one of the following schemes"),
    ("--log-file", "/nonexistent/dir/requests.jsonl", "--log-file: the directory /nonexistent/dir does not exist"),
])
def test_what_would_stop_every_worker_is_refused_once_at_start(tmp_path: Path, flag: str, value: str,
                                                               said: str) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", f"unix:{run}/ext_proc.sock", "--workers", "2",
         "--admin-port", "0", flag, value], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"tollway serve: {said}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


LIMITED_POLICY = """
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: LIFECYCLE_OPENAI_KEY}}
models:
  gpt-4o-mini: {provider: openai}
teams:
  dev: {workloads: [spiffe://cluster.local/ns/dev/sa/app], models: [gpt-4o-mini]}
budgets:
  dev-daily: {team: dev, usd: "5", period: day}
"""


@pytest.mark.parametrize("kubernetes", [True, False])
def test_budgets_counted_in_one_pod_are_said_in_kubernetes(tmp_path: Path, kubernetes: bool) -> None:
    """Without Redis each replica counts its own budgets (and forgets them when it restarts): in a
    pod (KUBERNETES_SERVICE_HOST) serve says so once at start and in /readyz, staying ready; on one
    machine (tollway up, make run) it says nothing."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (tmp_path / "policy.yaml").write_text(LIMITED_POLICY)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_") and k != "KUBERNETES_SERVICE_HOST"}
    if kubernetes:
        env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", f"unix:{run}/ext_proc.sock", "--workers", "2",
         "--admin-port", str(port), "--policy", str(tmp_path / "policy.yaml"),
         "--workload", "spiffe://cluster.local/ns/dev/sa/app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        limits = answer.json()["limits"]
        assert limits["store"] == "node"
        assert ("warning" in limits) is kubernetes
        if kubernetes:
            assert "counted in this pod only" in limits["warning"]
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert stderr.count("counted in this pod only") == (1 if kubernetes else 0), stderr
