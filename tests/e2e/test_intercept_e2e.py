"""Transparent interception, end to end, in a network namespace this test creates.

What the injector puts in a pod (``tollway inject``'s mutation of a sample pod of namespace
``search``, service account ``search-api``) runs here as the kubelet would run it: the init
container's own script (``k8s/image/tollway-intercept``) with its injected environment sets up
the redirect inside the namespace, where api.openai.com and api.anthropic.com resolve to
loopback addresses; then ``intercept_driver.py`` starts Tollway and Envoy with the injected
arguments, users and identity, and the ``openai`` SDK, unchanged (default base URL, its own
non-Tollway key), trusting only the test's CAs. The answer must come from the fake provider
through the gateway, be recorded under the workload's team, and other hosts must not be
intercepted. Loopback addresses only; the namespace and its hosts file are removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.k8s import inject, sidecar
from ext_proc.stack import ROOT, envoy_binary
from tests.certs import CA

pytestmark = pytest.mark.e2e

WORKLOAD = "spiffe://cluster.local/ns/search/sa/search-api"
PROVIDER_KEY = "sk-test-provider-key-intercept"
HOSTS = """127.0.0.1 localhost
127.0.0.2 api.openai.com
127.0.0.4 api.anthropic.com
127.0.0.3 other.example
"""
POLICY = f"""apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: OPENAI_API_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai}}
teams:
  search: {{workloads: ["{WORKLOAD}"], models: [gpt-4o-mini]}}
"""


def _need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.fail(f"this test needs {', '.join(missing)}: `make tools` installs them (iproute2, iptables)")
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (CI and make test run as root)")


@pytest.fixture()
def netns() -> Iterator[str]:
    _need("ip", "iptables")
    name = f"tollway-it-{os.getpid()}"
    etc = Path("/etc/netns") / name
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(HOSTS)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def _pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "search-api-0", "namespace": "search"},
            "spec": {"serviceAccountName": "search-api",
                     "containers": [{"name": "app", "image": "python:3.12-slim"}]}}


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["spec"]["initContainers"] if c["name"] == name]
    return found


def test_the_unchanged_openai_sdk_is_intercepted_and_recorded_under_its_workload(netns: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="tollway-intercept-", dir="/tmp"))
    work.chmod(0o755)
    try:
        _run(netns, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(netns: str, work: Path) -> None:
    pod = inject.mutate(_pod(), "search", inject.Settings())
    init, tollway, envoy = (_container(pod, n) for n in ("tollway-init", "tollway", "tollway-envoy"))

    # The cluster CA may sign the provider hosts only (name constraints), as k8s/overlays/sidecar's does.
    ca = CA(work, "intercept", permitted_dns=sidecar.PROVIDER_HOSTS)
    other_ca = CA(work, "public")
    issued = ca.issue("providers", dns=sidecar.PROVIDER_HOSTS, server=True)
    certs = work / "intercept"
    certs.mkdir()
    shutil.copy(issued.cert, certs / "tls.crt")
    shutil.copy(issued.key, certs / "tls.key")
    (certs / "tls.key").chmod(0o644)  # Envoy's user reads it (in the pod: the Secret volume)
    other = other_ca.issue("other", dns=("other.example",), server=True)
    shared = other_ca.issue("shared", dns=("shared.example",), server=True)
    bundle = work / "bundle.pem"  # the trust bundle: the cluster CA and the "public" roots
    bundle.write_text(ca.cert.read_text() + other_ca.cert.read_text())
    sds = work / "intercept-sds.yaml"
    sds.write_text(yaml.safe_dump(sidecar.intercept_sds(str(certs))))
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    tmp = work / "tmp"
    tmp.mkdir()
    os.chown(tmp, 10001, 10001)

    # The init container's script, with its injected environment, inside the namespace.
    env = {e["name"]: e["value"] for e in init["env"]}
    proc = subprocess.run(["ip", "netns", "exec", netns, "env", *[f"{k}={v}" for k, v in env.items()],
                           str(ROOT / "k8s" / "image" / "tollway-intercept")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "-d 127.0.0.2/32 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 10443" in proc.stderr
    assert "-d 127.0.0.4/32 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 10443" in proc.stderr
    assert "-m owner --uid-owner 10002 -j RETURN" in proc.stderr

    # The tollway-state emptyDir: a directory anyone may write to (the kubelet's 0777), Tollway's 0700 ones in it.
    (work / "state").mkdir()
    (work / "state").chmod(0o777)
    args = [a.replace(f"{inject.POLICY_DIR}/policy.yaml", str(policy)).replace(inject.STATE_DIR, str(work / "state"))
            for a in tollway["args"]]
    # the fake provider plays api.openai.com, checking it gets the provider's key
    args += ["--stand-in", "openai=http://127.0.0.1:18080", "--stand-ins-get-keys"]
    tollway_env = {e["name"]: e["value"] for e in tollway["env"] if "value" in e}
    assert tollway_env["TOLLWAY_WORKLOAD"] == WORKLOAD
    tollway_env.update(TMPDIR=str(tmp), OPENAI_API_KEY=PROVIDER_KEY, TOLLWAY_REDIS_URL="")
    envoy_args = [a.replace(sidecar.INTERCEPT_SDS, str(sds)) for a in envoy["args"]]
    spec = {
        "work": str(work), "root": str(ROOT), "provider_key": PROVIDER_KEY, "record_log": str(work / "requests.jsonl"),
        "tollway_args": args, "tollway_env": tollway_env, "envoy": envoy_binary(), "envoy_args": envoy_args,
        "trust_bundle": str(bundle), "other_cert": str(other.cert), "other_key": str(other.key),
        "shared_cert": str(shared.cert), "shared_key": str(shared.key),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    driver = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "tests.e2e.intercept_driver",
                             str(work / "spec.json")], capture_output=True, text=True, cwd=ROOT, timeout=150)
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in work.glob("*.log"))
    assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-3000:] + logs
    result = json.loads(driver.stdout.strip().splitlines()[-1])

    # The SDK got its answer from the fake provider, through Envoy and Tollway.
    assert result["answer"], result
    assert result["provider"] == "openai"
    record = result.get("record")
    assert record is not None, logs
    assert (record["team"], record["workload"], record["provider"], record["status"], record["outcome"]) == \
        ("search", WORKLOAD, "openai", 200, "ok")
    assert record["input_tokens"] > 0
    # Its journals and spools (--state-dir) in the state volume, in directories of its user's only.
    for name in ("inflight", "aggregates"):
        made = (work / "state" / name).stat()
        assert (made.st_uid, made.st_mode & 0o777) == (inject.TOLLWAY_UID, 0o700), name
    # The provider saw Tollway's key for it, never the application's own.
    (seen,) = [r for r in result["provider_saw"] if r["path"].endswith("/chat/completions")]
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "sk-the-apps-own-key" not in json.dumps(result["provider_saw"])
    # The SDK's connection went through the interception listener; the other host's did not.
    before, after_sdk, after_other = result["intercepted"]
    assert after_sdk > before
    assert after_other == after_sdk
    assert (result["other"], result["other_seen"]) == ("direct", ["other.example"])
    # Another site on the provider's address is redirected, then passed through untouched.
    assert (result["shared"], result["shared_seen"]) == ("shared address", ["shared.example"])
    assert result["passthrough_cx"] >= 1
    # A connection straight to the interception listener's own port is closed, not passed through to
    # its "original destination" (the listener itself: Envoy connecting to itself until its limits).
    direct = result["direct"]
    assert (direct["closed_within_2s"], direct["passthrough_cx"], direct["overflow"]) == (True, 0, 0), direct
    assert direct["read"] in ("", "ConnectionResetError"), direct
    # Envoy's admin is no loopback port: the application (another user) can neither raise its log
    # level nor stop it, and so never gets the provider key printed in Envoy's log; Tollway's user
    # reaches the socket (it confirms there that Envoy loaded the clusters).
    assert result["admin/app"] == {"tcp": "ConnectionRefusedError", "socket": "PermissionError"}
    assert result["admin/tollway"] == {"tcp": "ConnectionRefusedError", "socket": "LIVE"}
    assert PROVIDER_KEY not in (work / "envoy.log").read_text(errors="replace")
    # kubelet's probes and Prometheus reach the pod port.
    assert {k: v for k, v in result.items() if k.startswith("pod/")} == {
        "pod/tollway/readyz": 200, "pod/tollway/metrics": 200, "pod/stats/prometheus": 200}
