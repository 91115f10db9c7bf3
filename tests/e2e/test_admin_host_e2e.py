"""The admin port without a token answers only requests that name a loopback host, and the injected
sidecar's pod port (kubelet's probes, Prometheus: they name the pod's address) still reaches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ext_proc.k8s import sidecar
from ext_proc.stack import envoy_binary, free_port

pytestmark = pytest.mark.e2e


def _wait(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}"
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, url
        time.sleep(0.1)


def test_the_pod_port_reaches_a_loopback_admin_that_refuses_other_hosts(tmp_path: Path) -> None:
    admin, pod, envoy_admin = free_port(), free_port(), str(tmp_path / "envoy-admin.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    layout = sidecar.Layout(intercept=False, pod_address="127.0.0.1", pod_port=pod, envoy_admin=envoy_admin,
                            tollway_admin_port=admin)
    config = {
        "admin": {"address": {"pipe": {"path": envoy_admin}}},
        "static_resources": {
            "listeners": [sidecar._pod_listener(layout)],
            "clusters": [sidecar._static("tollway_envoy_admin", envoy_admin), sidecar._static("tollway_admin", admin)],
        },
    }
    procs = [subprocess.Popen([sys.executable, "-m", "ext_proc.cli", "serve", "--listen",
                               f"unix:{tmp_path}/s/ext_proc.sock", "--admin-port", str(admin)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait(f"http://127.0.0.1:{admin}/healthz", procs[0])
        procs.append(subprocess.Popen([envoy_binary(), "--config-yaml", json.dumps(config), "--base-id",
                                       str(pod), "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        pod_host = {"host": f"10.1.2.3:{sidecar.POD_PORT}"}  # what kubelet and Prometheus name
        _wait(f"http://127.0.0.1:{pod}/ready", procs[1], pod_host)
        for path in ("/tollway/readyz", "/tollway/metrics"):
            assert httpx.get(f"http://127.0.0.1:{pod}{path}", headers=pod_host).status_code == 200, path
        # Directly, a request naming another host (a DNS-rebinding page's) is refused, every path;
        # loopback names, with or without a port, are answered.
        for host in ("10.1.2.3:9902", "attacker.example", "attacker.example:9902", "localhost.attacker.example"):
            for path in ("/v1/report?by=key", "/v1/dashboard", "/metrics", "/dashboard", "/readyz"):
                answer = httpx.get(f"http://127.0.0.1:{admin}{path}", headers={"host": host})
                assert answer.status_code == 403, (host, path)
                assert answer.json()["error"]["type"] == "permission_error"
        for host in ("localhost", f"LOCALHOST:{admin}", "127.0.0.1", f"127.0.0.1:{admin}", "[::1]", f"[::1]:{admin}"):
            assert httpx.get(f"http://127.0.0.1:{admin}/v1/report", headers={"host": host}).status_code == 200, host
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
