"""The injected sidecar's memory limits hold what the README promises a pod: two requests of the
largest body Tollway reads (64 MiB) at once, and more at the same time are refused (503,
``--body-memory``), not the container killed.

The injector's own bootstrap (ports moved, no interception) and the tollway container's injected
arguments, with the fake provider standing in for OpenAI; six 64 MiB chat requests at once (each
declaring its length, as the SDKs do: the ones refused are refused as their bodies start, so
neither Envoy nor Tollway holds them; measured, Envoy's peak is the same with 24 at once). The
peak resident memory of Envoy and of Tollway's processes (summed: an upper bound of what the
container's cgroup counts) must stay below the limits the injector gives their containers, or
the kernel would kill the container and every request in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ext_proc.envoy_config import set_clusters_file
from ext_proc.k8s import inject, sidecar
from ext_proc.server.coalesce import MAX_BODY
from ext_proc.stack import ROOT, envoy_binary, free_port

pytestmark = pytest.mark.e2e

WORKLOAD = "spiffe://cluster.local/ns/search/sa/search-api"
POLICY = f"""apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: OPENAI_API_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai}}
teams:
  search: {{workloads: ["{WORKLOAD}"], models: [gpt-4o-mini]}}
"""
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(quantity: str) -> int:
    return int(quantity[:-2]) * UNITS[quantity[-2:]]


def _peak(pid: int) -> int:
    """VmHWM of ``pid`` and its descendants, summed (bytes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        for line in Path(f"/proc/{current}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)


def test_the_sidecar_holds_two_of_the_largest_requests_at_once(tmp_path: Path) -> None:
    pod = inject.mutate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "search"},
                         "spec": {"serviceAccountName": "search-api", "containers": [{"name": "app", "image": "x"}]}},
                        "search", inject.Settings())
    containers = {c["name"]: c for c in pod["spec"]["initContainers"]}
    tollway, envoy = containers["tollway"], containers["tollway-envoy"]
    mock, admin, pod_port, listener = free_port(), free_port(), free_port(), free_port()
    run = tmp_path / "run"
    layout = sidecar.Layout(intercept=False, pod_address="127.0.0.1", pod_port=pod_port,
                            envoy_admin=str(tmp_path / "envoy-admin.sock"), tollway_admin_port=admin,
                            ext_proc=f"unix:{run}/ext_proc.sock")
    config = sidecar.bootstrap(yaml.safe_load(inject.Settings().template.read_text()), layout)
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listener
    set_clusters_file(config, str(run / "clusters.yaml"))
    (tmp_path / "policy.yaml").write_text(POLICY)
    args = [a.replace(f"{inject.POLICY_DIR}/policy.yaml", str(tmp_path / "policy.yaml"))
            .replace("/run/tollway/clusters.yaml", str(run / "clusters.yaml"))
            .replace(f"unix:{sidecar.ENVOY_ADMIN}", f"unix:{layout.envoy_admin}")
            .replace(inject.STATE_DIR, str(tmp_path / "state")) for a in tollway["args"]]
    args += ["--listen", f"unix:{run}/ext_proc.sock", "--admin-port", str(admin),
             "--log-file", str(tmp_path / "requests.jsonl"), "--stand-in", f"openai=http://127.0.0.1:{mock}",
             "--stand-ins-get-keys"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLWAY_", "OTEL_"))}
    env.update({e["name"]: e["value"] for e in tollway["env"] if "value" in e})
    env.update(TMPDIR=str(tmp_path), OPENAI_API_KEY="sk-test-memory")
    envoy_args = envoy["args"][2:]  # the injected flags, the bootstrap from a file instead
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], ready: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        procs.append(proc)
        _wait(ready, proc, log)
        return proc

    try:
        python = [sys.executable, "-m", "ext_proc.cli"]
        start("mock", [*python, "mock-provider", "--port", str(mock), "--api-key", "sk-test-memory"],
              f"http://127.0.0.1:{mock}/healthz")
        service = start("tollway", [*python, *args], f"http://127.0.0.1:{admin}/readyz")
        (tmp_path / "envoy.json").write_text(json.dumps(config))
        proxy = start("envoy", [envoy_binary(), "-c", str(tmp_path / "envoy.json"), *envoy_args,
                                "--base-id", str(pod_port)], f"http://127.0.0.1:{pod_port}/ready")
        prefix = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
        suffix = b'"}]}'
        body = prefix + b"a " * ((MAX_BODY - len(prefix) - len(suffix)) // 2) + suffix
        answers: list[httpx.Response] = []

        def send() -> None:
            answers.append(httpx.post(f"http://127.0.0.1:{listener}/v1/chat/completions", content=body, timeout=120,
                                      headers={"content-type": "application/json"}))

        threads = [threading.Thread(target=send) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        served = [answer for answer in answers if answer.status_code == 200]
        refused = [answer for answer in answers if answer.status_code != 200]
        assert len(served) + len(refused) == 6 and len(served) >= 2  # (a third, if one ended before it came)
        assert len(refused) >= 3 and {answer.status_code for answer in refused} == {503}
        assert {answer.json()["error"]["code"] for answer in refused} == {"overloaded"}
        limits = {name: _bytes(c["resources"]["limits"]["memory"]) for name, c in containers.items()}
        assert _peak(proxy.pid) < limits["tollway-envoy"]
        assert _peak(service.pid) < limits["tollway"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
