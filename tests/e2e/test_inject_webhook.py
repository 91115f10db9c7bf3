"""``tollway inject``: the HTTPS admission webhook and the offline ``-f``, on sample pods.

An AdmissionReview goes in over HTTPS, a JSONPatch comes out; applied to the pod with
``jsonpatch`` (RFC 6902, as the API server applies it) the result validates against the
Kubernetes schemas. Injecting twice changes nothing; what a pod cannot be given is refused.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
import yaml

from ext_proc.k8s import inject, memory, quantity
from ext_proc.k8s import webhook as server
from ext_proc.stack import ROOT, free_port
from tests.certs import CA
from tests.e2e.k8s_checks import validate

pytestmark = pytest.mark.e2e

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"generateName": "search-api-7d9f-", "namespace": "search", "labels": {"app": "search-api"}},
    "spec": {"serviceAccountName": "search-api", "containers": [
        {"name": "app", "image": "python:3.12-slim", "env": [{"name": "OPENAI_API_KEY", "value": "sk-placeholder"}]},
        {"name": "worker", "image": "python:3.12-slim", "env": [{"name": "SSL_CERT_FILE", "value": "/etc/mine.pem"}]},
    ], "initContainers": [{"name": "migrate", "image": "python:3.12-slim"}]},
}


def review(pod: dict[str, Any], namespace: str = "search") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace,
        "operation": "CREATE", "object": pod}}


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    work = tmp_path_factory.mktemp("webhook")
    ca = CA(work, "webhook")
    issued = ca.issue("injector", dns=("tollway-injector.tollway-system.svc",), server=True)
    port = free_port()
    log = open(work / "inject.log", "ab")  # noqa: SIM115 - the child's
    proc = subprocess.Popen([sys.executable, "-m", "ext_proc.cli", "inject", "--webhook", "--listen",
                             f"127.0.0.1:{port}", "--tls-cert", str(issued.cert), "--tls-key", str(issued.key),
                             "--image", "registry.example/tollway:1.2.3"], stdout=log, stderr=log, cwd=ROOT)
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.check_hostname = False  # the API server dials the Service name; the test dials 127.0.0.1
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", verify=context).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (work / "inject.log").read_text()
        time.sleep(0.05)
    try:
        yield url, context
    finally:
        proc.terminate()
        proc.wait(10)


def call(webhook: tuple[str, ssl.SSLContext], pod: dict[str, Any]) -> dict[str, Any]:
    url, context = webhook
    answer = httpx.post(url + "/inject", json=review(pod), verify=context, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["kind"] == "AdmissionReview" and body["response"]["uid"] == review(pod)["request"]["uid"]
    return dict(body["response"])


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return dict(jsonpatch.apply_patch(pod, patch))


def test_the_webhook_patches_a_pod_into_a_valid_injected_pod(webhook: tuple[str, ssl.SSLContext]) -> None:
    pod = patched(POD, call(webhook, POD))
    validate({**pod, "metadata": {**pod["metadata"], "name": "search-api-7d9f-x"}})
    spec = pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["tollway-init", "tollway", "tollway-envoy", "migrate"]
    assert {c["image"] for c in spec["initContainers"][:3]} == {"registry.example/tollway:1.2.3"}
    tollway = spec["initContainers"][1]
    assert {"name": "TOLLWAY_WORKLOAD", "value": "spiffe://cluster.local/ns/search/sa/search-api"} in tollway["env"]
    assert tollway["securityContext"]["runAsUser"] == inject.TOLLWAY_UID
    assert spec["initContainers"][2]["securityContext"]["runAsUser"] == inject.ENVOY_UID
    assert spec["initContainers"][0]["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    # The socket directory and the keys are the sidecar's; the app gets the trust bundle only.
    app, worker = spec["containers"]
    assert [m["name"] for m in app["volumeMounts"]] == ["tollway-trust"]
    assert {e["name"] for e in app["env"]} >= {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}
    assert {"name": "SSL_CERT_FILE", "value": "/etc/mine.pem"} in worker["env"]  # the app's own choice stays
    assert [e["value"] for e in worker["env"] if e["name"] == "SSL_CERT_FILE"] == ["/etc/mine.pem"]
    # The app's own init containers start after tollway-init, so they are intercepted too: they trust the bundle.
    migrate = spec["initContainers"][3]
    assert [m["name"] for m in migrate["volumeMounts"]] == ["tollway-trust"]
    assert {e["name"]: e["value"] for e in migrate["env"]} == {name: "/etc/tollway/trust/ca-bundle.pem"
                                                                for name in inject.TRUST_ENV}
    for own in spec["initContainers"][:3]:  # Tollway's own containers are left as they are
        assert "tollway-trust" not in [m["name"] for m in own["volumeMounts"]]
        assert not {e["name"] for e in own.get("env", [])} & set(inject.TRUST_ENV)
    assert pod["metadata"]["labels"][inject.INJECTED_LABEL] == "true"
    # Secrets are referenced, never copied into the pod: the Redis URL (it has a password) too.
    (redis,) = [e for e in tollway["env"] if e["name"] == "TOLLWAY_REDIS_URL"]
    # Required: a missing Secret keeps the pod waiting rather than counting budgets in it alone.
    assert redis == {"name": "TOLLWAY_REDIS_URL", "valueFrom": {"secretKeyRef": {
        "name": "tollway-redis", "key": "url"}}}


def test_the_injectors_listen_address_answers_ipv4_and_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = yaml.safe_load_all((ROOT / "k8s" / "overlays" / "sidecar" / "injector.yaml").read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    host, port = inject.listen_address(args[args.index("--listen") + 1])
    assert (host, port) == ("::", 8443)

    def answers(host: str) -> dict[str, Any]:
        ports: list[int] = []
        stop = threading.Event()
        thread = threading.Thread(target=server.serve, args=(inject.Settings(), host, 0, None),
                                  kwargs={"started": ports.append, "stop": stop}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not ports and time.monotonic() < deadline:
            time.sleep(0.02)
        out: dict[str, Any] = {}
        for address in ("127.0.0.1", "[::1]"):
            try:
                out[address] = httpx.get(f"http://{address}:{ports[0]}/healthz", timeout=2).status_code
            except httpx.HTTPError as exc:
                out[address] = type(exc).__name__
        stop.set()
        thread.join(5)
        return out

    # [::]: dual-stack, IPv4 and IPv6 (the README's "listens on IPv6 too"), whatever bindv6only says.
    assert answers(host) == {"127.0.0.1": 200, "[::1]": 200}
    # A node booted without IPv6: IPv4 still, not an injector that cannot start (the webhook fails closed).
    monkeypatch.setattr(server, "ipv6_available", lambda: False)
    assert answers(host) == {"127.0.0.1": 200, "[::1]": "ConnectError"}


def test_injecting_twice_changes_nothing(webhook: tuple[str, ssl.SSLContext]) -> None:
    once = patched(POD, call(webhook, POD))
    again = call(webhook, once)
    assert "patch" not in again and again["allowed"] is True


def _set(pod: dict[str, Any], where: str, field: str, value: Any) -> None:
    target = pod["spec"]["containers"][0] if where == "container" else pod[where]
    if value is None:
        target[field] = None
    else:
        target.pop(field, None)


@pytest.mark.parametrize(("where", "field"), [
    ("metadata", "labels"), ("metadata", "annotations"), ("spec", "initContainers"), ("spec", "volumes"),
    ("spec", "containers"), ("container", "env"), ("container", "envFrom"), ("container", "volumeMounts"),
    ("container", "ports")])
def test_a_field_left_empty_is_as_if_absent(where: str, field: str) -> None:
    # Helm renders `env:` with nothing under it (null): a valid manifest, injected like one without the field.
    empty, absent = copy.deepcopy(POD), copy.deepcopy(POD)
    _set(empty, where, field, None)
    _set(absent, where, field, "absent")
    injected = inject.mutate(empty, "search", inject.Settings())
    assert injected == inject.mutate(absent, "search", inject.Settings())
    if field != "containers":  # a pod needs containers; the rest validates
        validate({**injected, "metadata": {**injected["metadata"], "name": "search-api-0"}})


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: p["spec"].update(containers=7), "spec.containers must be a list, not a number"),
    (lambda p: p["spec"].update(containers={"a": 1}), "spec.containers must be a list, not a mapping"),
    (lambda p: p["spec"].update(volumes=["x"]), "spec.volumes[0] must be a mapping, not a string"),
    (lambda p: p["spec"]["containers"][1].update(env=5), "spec.containers[1].env must be a list, not a number"),
    (lambda p: p["metadata"].update(labels=5), "metadata.labels must be a mapping, not a number"),
])
def test_a_pod_of_another_shape_is_refused_in_words(change: Any, reason: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``containers: 7`` was a TypeError's traceback from ``tollway inject -f``."""
    pod = copy.deepcopy(POD)
    change(pod)
    with pytest.raises(inject.Refused, match=reason.replace("[", r"\[").replace("]", r"\]")):
        inject.mutate(pod, "search", inject.Settings())
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod))
    from ext_proc import cli
    assert cli.main(["inject", "-f", str(manifest)]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.strip() == f"tollway inject: the pod's {reason}"


@pytest.mark.parametrize(("flags", "said"), [
    (["--listen", "bogus"], "--listen (env TOLLWAY_INJECT_LISTEN): 'bogus' is not HOST:PORT"),
    (["--listen", "127.0.0.1:70000"], "'127.0.0.1:70000' is not HOST:PORT with a port from 0 to 65535"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
     "cannot load --tls-cert/--tls-key: [Errno 2]"),
])
def test_the_webhooks_flags_are_checked_before_it_serves(flags: list[str], said: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A ValueError, an OverflowError or a FileNotFoundError's traceback before."""
    from ext_proc import cli
    assert cli.main(["inject", "--webhook", *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1


def test_inject_f_takes_a_manifest_with_empty_fields(tmp_path: Path) -> None:
    manifest = tmp_path / "helmish.yaml"
    manifest.write_text("""apiVersion: apps/v1
kind: Deployment
metadata: {name: helmish, namespace: search}
spec:
  selector: {matchLabels: {app: h}}
  template:
    metadata:
      labels: {app: h}
      annotations:
    spec:
      initContainers:
      volumes:
      containers:
      - name: app
        image: python:3.12
        env:
        envFrom:
        volumeMounts:
        ports:
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: search}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        metadata:
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: python:3.12}]
""")
    proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", str(manifest)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    deployment, cronjob = yaml.safe_load_all(proc.stdout)
    for doc in (deployment, cronjob):
        validate(doc)
    app = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in app["env"]} == set(inject.TRUST_ENV)
    job = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    assert job["metadata"]["labels"][inject.INJECTED_LABEL] == "true"


def test_a_pod_cannot_bring_its_own_tollway(webhook: tuple[str, ssl.SSLContext]) -> None:
    forged = inject.mutate(POD, "other-team", inject.Settings())  # an identity of another namespace
    pod = patched(forged, call(webhook, forged))
    (tollway,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "tollway"]
    assert {"name": "TOLLWAY_WORKLOAD", "value": "spiffe://cluster.local/ns/search/sa/search-api"} in tollway["env"]


@pytest.mark.parametrize(("change", "reason"), [
    (lambda p: p["spec"].update(hostNetwork=True), "hostNetwork"),
    (lambda p: p["spec"]["containers"][0].update(securityContext={"runAsUser": inject.ENVOY_UID}), "bypass"),
    (lambda p: p["spec"]["containers"][0].update(volumeMounts=[{"name": "tollway-provider-keys", "mountPath": "/k"}]),
     "only the Tollway sidecar"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 10000}]), "port 10000"),
    # The app's init containers are checked as its containers are.
    (lambda p: p["spec"]["initContainers"][0].update(securityContext={"runAsUser": inject.ENVOY_UID}), "bypass"),
    (lambda p: p["spec"]["initContainers"][0].update(volumeMounts=[{"name": "tollway-provider-keys",
                                                                     "mountPath": "/k"}]), "only the Tollway sidecar"),
    # Tollway's user, or one process namespace with Tollway: the keys could be read through /proc.
    (lambda p: p["spec"]["containers"][1].update(securityContext={"runAsUser": inject.TOLLWAY_UID}), "uid 10001"),
    (lambda p: p["spec"]["initContainers"][0].update(securityContext={"runAsUser": inject.TOLLWAY_UID}),
     "'migrate' runs as uid 10001"),
    (lambda p: p["spec"].update(securityContext={"runAsUser": inject.TOLLWAY_UID}), "uid 10001"),
    (lambda p: p["spec"].update(shareProcessNamespace=True), "shareProcessNamespace: true"),
    (lambda p: p["spec"].update(hostPID=True), "hostPID: true"),
    (lambda p: p["metadata"].update(annotations={inject.ENVOY_MEMORY: "lots"}), "not a memory quantity"),
    # The sidecar's Secrets by any other route: an env reference, envFrom, a volume of another name.
    (lambda p: p["spec"]["containers"][0]["env"].append(
        {"name": "R", "valueFrom": {"secretKeyRef": {"name": "tollway-redis", "key": "url"}}}),
     "reads the Secret 'tollway-redis'"),
    (lambda p: p["spec"]["initContainers"][0].update(envFrom=[{"secretRef": {"name": "tollway-provider-keys"}}]),
     "'migrate' reads the Secret 'tollway-provider-keys'"),
    (lambda p: (p["spec"].update(volumes=[{"name": "keys", "secret": {"secretName": "tollway-provider-keys"}}]),
                p["spec"]["containers"][1].update(volumeMounts=[{"name": "keys", "mountPath": "/k"}])),
     "'worker' reads the Secret 'tollway-provider-keys'"),
    (lambda p: (p["spec"].update(volumes=[{"name": "all", "projected": {"sources": [
        {"configMap": {"name": "x"}}, {"secret": {"name": "tollway-intercept-tls"}}]}}]),
                p["spec"]["containers"][0].update(volumeMounts=[{"name": "all", "mountPath": "/a"}])),
     "reads the Secret 'tollway-intercept-tls'"),
    (lambda p: p["spec"]["containers"][1].update(volumeMounts=[{"name": "tollway-state", "mountPath": "/s"}]),
     "'tollway-state', which only the Tollway sidecar"),
    (lambda p: p["metadata"].update(annotations={inject.TOLLWAY_CPU: "2 cores"}), "not a CPU quantity"),
    (lambda p: p["metadata"].update(annotations={inject.ENVOY_CPU: "0"}), "not a CPU quantity"),
    # A pod never injected (no tollway.dev/status) using Tollway's names for its own: refused, not stripped.
    (lambda p: p["spec"]["containers"][1].update(name="tollway"), "a container named 'tollway'"),
    (lambda p: p["spec"]["initContainers"][0].update(name="tollway-init"), "a container named 'tollway-init'"),
    (lambda p: (p["spec"].update(volumes=[{"name": "tollway-trust", "configMap": {"name": "my-cas"}}]),
                p["spec"]["containers"][0].update(volumeMounts=[{"name": "tollway-trust", "mountPath": "/c"}])),
     "mounts 'tollway-trust'"),
    (lambda p: p["spec"].update(volumes=[{"name": "tollway-trust", "configMap": {"name": "my-cas"}}]),
     "a volume named 'tollway-trust'"),
])
def test_pods_tollway_cannot_serve_are_refused(webhook: tuple[str, ssl.SSLContext], change: Any, reason: str) -> None:
    pod = copy.deepcopy(POD)
    change(pod)
    response = call(webhook, pod)
    assert response["allowed"] is False and reason in response["status"]["message"]


def test_only_an_injected_pod_has_tollways_names_removed() -> None:
    own = copy.deepcopy(POD)  # the application's own container and volume, under Tollway's names
    own["spec"]["containers"][1]["name"] = "tollway"
    own["spec"]["volumes"] = [{"name": "tollway-trust", "configMap": {"name": "my-cas"}}]
    with pytest.raises(inject.Refused, match=r"container named 'tollway'.*rename it"):
        inject.mutate(own, "search", inject.Settings())
    # Injected before (the status annotation): Tollway's names are its own, removed and injected afresh.
    once = inject.mutate(POD, "search", inject.Settings())
    assert inject.mutate(once, "search", inject.Settings()) == once
    # The same pod without the annotation (copied from an injected one, say): refused, never duplicated.
    unmarked = copy.deepcopy(once)
    del unmarked["metadata"]["annotations"][inject.STATUS]
    with pytest.raises(inject.Refused, match="a container named 'tollway-init'"):
        inject.mutate(unmarked, "search", inject.Settings())


def test_a_pod_reading_the_sidecars_secret_is_told_how_an_operators_job_opts_out() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][0]["env"].append(
        {"name": "TOLLWAY_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "tollway-redis", "key": "url"}}})
    with pytest.raises(inject.Refused, match=r"tollway budgets --redis.*label its pod tollway\.dev/inject=false"):
        inject.mutate(pod, "search", inject.Settings())
    pod["metadata"]["labels"][inject.LABEL] = "false"  # as the hint says: left alone
    assert inject.review(review(pod), inject.Settings())["response"] == {
        "uid": review(pod)["request"]["uid"], "allowed": True}


def test_other_secrets_and_unmounted_volumes_are_the_apps_own() -> None:
    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"] = [{"name": "unused", "secret": {"secretName": "tollway-redis"}},
                              {"name": "mine", "secret": {"secretName": "search-db"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "mine", "mountPath": "/db"}]
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "search-api-env"}}]
    inject.mutate(pod, "search", inject.Settings())  # not refused
    with pytest.raises(inject.Refused, match="reads the Secret 'search-db'"):
        inject.mutate(pod, "search", inject.Settings(provider_secret="search-db"))


def test_a_pod_that_opts_out_is_left_alone(webhook: tuple[str, ssl.SSLContext]) -> None:
    pod = copy.deepcopy(POD)
    pod["metadata"]["labels"][inject.LABEL] = "false"
    assert call(webhook, pod) == {"uid": review(pod)["request"]["uid"], "allowed": True}


def test_not_an_admission_review_is_a_400(webhook: tuple[str, ssl.SSLContext]) -> None:
    url, context = webhook
    assert httpx.post(url + "/inject", content=b"[1, 2", verify=context).status_code == 400


def test_offline_injection_renders_the_same_pods(tmp_path: Path) -> None:
    manifest = (ROOT / "k8s" / "examples" / "search-api.yaml").read_text()
    proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-"], input=manifest,
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    validate(deployment)
    template = deployment["spec"]["template"]
    expected = inject.mutate({"metadata": {"labels": {"app": "search-api"}},
                              "spec": yaml.safe_load(manifest.split("---")[1])["spec"]["template"]["spec"]},
                             "search", inject.Settings())
    assert template["spec"] == expected["spec"]
    # A pod the webhook refuses is refused offline too, in one line.
    bad = manifest.replace("runAsUser: 20000", f"runAsUser: {inject.ENVOY_UID}")
    proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-"], input=bad,
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "bypass" in proc.stderr


def test_without_redis_only_on_purpose(tmp_path: Path) -> None:
    """The Redis Secret is required unless the injector is told there is none (``--redis-secret none``):
    then the sidecar gets no Redis URL and counts its budgets and rate limits alone, as chosen."""
    def redis_env(*flags: str) -> list[dict[str, Any]]:
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-", "--namespace", "search",
                               *flags], input=yaml.safe_dump(POD), capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        (tollway,) = [c for c in yaml.safe_load(proc.stdout)["spec"]["initContainers"] if c["name"] == "tollway"]
        return [e for e in tollway["env"] if e["name"] == "TOLLWAY_REDIS_URL"]

    assert redis_env() == [{"name": "TOLLWAY_REDIS_URL", "valueFrom": {"secretKeyRef": {
        "name": "tollway-redis", "key": "url"}}}]
    assert redis_env("--redis-secret", "shared-redis")[0]["valueFrom"]["secretKeyRef"]["name"] == "shared-redis"
    assert redis_env("--redis-secret", "none") == []


def test_the_sidecar_keeps_its_journals_and_spools_on_a_disk_volume_sized_above_what_they_hold() -> None:
    """The log is stdout (kubectl logs): ``--state-dir`` on the ``tollway-state`` emptyDir (on disk,
    so it outlives a container's restart) keeps a worker killed mid-request from losing its records
    and the batches Redis has not taken across a restart; ``--spool-max`` bounds the spools together,
    and the volume's size limit (the pod is evicted past it) is above that, a step per process and
    the journals."""
    def sidecar(*flags: str) -> tuple[dict[str, Any], dict[str, Any]]:
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-", "--namespace", "search",
                               *flags], input=yaml.safe_dump(POD), capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        spec = yaml.safe_load(proc.stdout)["spec"]
        (tollway,) = [c for c in spec["initContainers"] if c["name"] == "tollway"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "tollway-state"]
        return tollway, volume

    tollway, volume = sidecar()
    args = tollway["args"]
    assert "--log-file" not in args  # records on stdout
    assert args[args.index("--state-dir") + 1] == inject.STATE_DIR == "/var/lib/tollway"
    assert args[args.index("--spool-max") + 1] == "64"
    assert {"name": "tollway-state", "mountPath": inject.STATE_DIR} in tollway["volumeMounts"]
    assert volume == {"name": "tollway-state", "emptyDir": {"sizeLimit": "98Mi"}}  # no medium: the node's disk
    assert "tollway-state" in inject.SIDECAR_VOLUMES
    for flags, spools, workers in ((("--spool-max", "16"), 16, 1), (("--workers", "4"), 64, 4)):
        tollway, volume = sidecar(*flags)
        args = tollway["args"]
        assert args[args.index("--spool-max") + 1] == str(spools)
        size = int(volume["emptyDir"]["sizeLimit"].removesuffix("Mi"))
        # The spools' budget, a 1 MiB step per process past it (the workers and the supervisor), the journals.
        assert size >= spools + (workers + 1) * 1 + workers * 8 + 8, (flags, size)
    proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-", "--spool-max", "0"],
                          input=yaml.safe_dump(POD), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 2 and "--spool-max" in proc.stderr and proc.stderr.count("\n") == 1
    # An older injection (no state volume) injected again gets it; injecting twice changes nothing.
    once = inject.mutate(POD, "search", inject.Settings())
    assert inject.mutate(once, "search", inject.Settings()) == once
    older = copy.deepcopy(once)  # as the release before the state volume injected it
    older["spec"]["volumes"] = [v for v in older["spec"]["volumes"] if v["name"] != "tollway-state"]
    for container in older["spec"]["initContainers"]:
        container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] != "tollway-state"]
        args = container.get("args", [])
        for flag in ("--state-dir", "--spool-max"):
            if flag in args:
                del args[args.index(flag):args.index(flag) + 2]
    assert older != once
    assert inject.mutate(older, "search", inject.Settings()) == once


@pytest.mark.parametrize(("flags", "env", "named"), [
    (["--intercept-cidrs", "10.0.0.0/33"], {}, "--intercept-cidrs (env TOLLWAY_INTERCEPT_CIDRS): '10.0.0.0/33'"),
    (["--intercept-cidrs", "10.0.0.0/8 api.openai.com"], {}, "'api.openai.com' is no IPv4 or IPv6 CIDR"),
    ([], {"TOLLWAY_INTERCEPT_CIDRS": "2001:db8::/129"}, "TOLLWAY_INTERCEPT_CIDRS): '2001:db8::/129'"),
    (["--hosts", "api.openai.com 162.159.140.245"], {}, "'162.159.140.245' is an address"),
    (["--hosts", "*.openai.com"], {}, "--hosts (env TOLLWAY_INTERCEPT_HOSTS): '*.openai.com' is not a host name"),
    (["--hosts", "api.openai.com/v1"], {}, "'api.openai.com/v1' is not a host name"),
    (["--hosts", " , "], {}, "--hosts (env TOLLWAY_INTERCEPT_HOSTS): no host given"),
])
def test_a_bad_interception_flag_stops_the_injector_at_start(flags: list[str], env: dict[str, str],
                                                              named: str) -> None:
    """Checked at start, not in each injected pod's init container (whose iptables would fail, the pod with it)."""
    for mode in (["-f", "-"], ["--webhook", "--listen", f"127.0.0.1:{free_port()}"]):
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", *mode, *flags],
                              input=yaml.safe_dump(POD), capture_output=True, text=True, cwd=ROOT, timeout=30,
                              env={**os.environ, **env})
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and named in proc.stderr, proc.stderr


def test_good_interception_flags_reach_the_init_container() -> None:
    proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-", "--intercept-cidrs",
                           "162.159.140.0/24,2606:4700::1/32 10.1.2.3", "--hosts", "API.OpenAI.com."],
                          input=yaml.safe_dump(POD), capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (pod,) = yaml.safe_load_all(proc.stdout)
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "tollway-init"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["TOLLWAY_INTERCEPT_CIDRS"] == "162.159.140.0/24 2606:4700::/32 10.1.2.3/32"
    assert env["TOLLWAY_INTERCEPT_HOSTS"] == "api.openai.com"


@pytest.mark.parametrize(("flags", "env", "named"), [
    (["--tollway-cpu", "2 cores"], {}, "--tollway-cpu (env TOLLWAY_SIDECAR_CPU): '2 cores' is not a CPU quantity"),
    (["--envoy-cpu", "0"], {}, "--envoy-cpu (env TOLLWAY_ENVOY_CPU): '0' is not a CPU quantity"),
    ([], {"TOLLWAY_SIDECAR_CPU": "lots"}, "--tollway-cpu (env TOLLWAY_SIDECAR_CPU): 'lots'"),
    ([], {"TOLLWAY_ENVOY_CPU": "-1"}, "--envoy-cpu (env TOLLWAY_ENVOY_CPU): '-1'"),
])
def test_a_bad_cpu_flag_stops_the_injector_at_start(flags: list[str], env: dict[str, str], named: str) -> None:
    """A CPU limit flag (or its environment variable) is checked when the injector starts: exit 2 and
    one line naming it, the webhook never serving (it would refuse every pod, each naming an annotation
    the pod does not have)."""
    for mode in (["-f", "-"], ["--webhook", "--listen", f"127.0.0.1:{free_port()}"]):
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", *mode, *flags],
                              input=yaml.safe_dump(POD), capture_output=True, text=True, cwd=ROOT, timeout=30,
                              env={**os.environ, **env})
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and named in proc.stderr, proc.stderr
    # A pod's bad annotation names the annotation; good flags are kept as given.
    pod = copy.deepcopy(POD)
    pod["metadata"]["annotations"] = {inject.ENVOY_CPU: "fast"}
    with pytest.raises(inject.Refused, match=r"annotation tollway\.dev/envoy-cpu: 'fast'"):
        inject.mutate(pod, "search", inject.Settings(envoy_cpu="500m"))


def test_offline_injection_says_when_the_namespace_is_a_guess() -> None:
    """The identity names the namespace: a manifest without one gets ``default`` in it, said on stderr
    unless --namespace gives it."""
    manifest = (ROOT / "k8s" / "examples" / "search-api.yaml").read_text().replace("  namespace: search\n", "")

    def inject_(*flags: str) -> tuple[str, str]:
        proc = subprocess.run([sys.executable, "-m", "ext_proc.cli", "inject", "-f", "-", *flags], input=manifest,
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        (deployment,) = [d for d in yaml.safe_load_all(proc.stdout) if d["kind"] == "Deployment"]
        (tollway,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "tollway"]
        return next(e["value"] for e in tollway["env"] if e["name"] == "TOLLWAY_WORKLOAD"), proc.stderr

    workload, stderr = inject_()
    assert workload == "spiffe://cluster.local/ns/default/sa/search-api"
    assert stderr.count("\n") == 1 and "Deployment/search-api names no namespace: its identity" in stderr
    assert "ServiceAccount" not in stderr  # no pod in it
    assert inject_("--namespace", "search") == ("spiffe://cluster.local/ns/search/sa/search-api", "")


@pytest.fixture()
def bounded(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The webhook in this process, plain HTTP, with small bounds: 0.5 s to send a request, 3
    connections at once."""
    monkeypatch.setattr(server, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    with _webhook("127.0.0.1") as port:
        yield port


@contextlib.contextmanager
def _webhook(host: str) -> Iterator[int]:
    """The webhook in a thread of this process, stopped (its threads gone) when the test ends:
    a thread left running would stop the zygote tests from forking."""
    ports: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(inject.Settings(), host, 0, None, ports.append, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not ports:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        yield ports[0]
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_the_webhook_bounds_what_a_connection_may_hold(bounded: int) -> None:
    """It fails closed (failurePolicy: Fail): connections that send nothing, or too much, must not
    take every thread and the memory (a pod that cannot be admitted is a namespace that cannot
    start pods)."""
    idle = [socket.create_connection(("127.0.0.1", bounded)) for _ in range(3)]
    time.sleep(0.2)
    extra = socket.create_connection(("127.0.0.1", bounded))
    assert _closed_within(extra, 2.0)  # past the bound: closed at once
    assert all(_closed_within(sock, 3.0) for sock in idle)  # sent nothing within the read timeout
    for sock in (*idle, extra):
        sock.close()
    # A byte now and then does not keep a connection: the whole request has READ_TIMEOUT.
    with socket.create_connection(("127.0.0.1", bounded)) as trickle:
        cut = False
        for _ in range(12):  # 2.4 s of a byte every 0.2 s, against 0.5 s for the request
            try:
                trickle.sendall(b"P")
            except OSError:
                cut = True
                break
            time.sleep(0.2)
        assert cut  # cut while it was still sending
    with socket.create_connection(("127.0.0.1", bounded), timeout=5) as too_big:  # refused before it is read
        too_big.sendall(b"POST /inject HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n{}" % (server.MAX_REVIEW + 1))
        assert too_big.recv(100).startswith(b"HTTP/1.1 413 ")
    assert httpx.post(f"http://127.0.0.1:{bounded}/inject", json=review(POD), timeout=5).status_code == 200
    nested = b"[" * 100_000 + b"]" * 100_000  # deeper than the JSON reader goes: a 400, not a dropped connection
    assert httpx.post(f"http://127.0.0.1:{bounded}/inject", content=nested, timeout=5).status_code == 400


def test_the_webhook_listens_on_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    if not socket.has_ipv6:
        pytest.fail("this machine's Python has no IPv6")
    with _webhook("::1") as port:
        assert httpx.get(f"http://[::1]:{port}/healthz", timeout=5).status_code == 200


def test_the_sidecars_memory_limits_follow_the_pods_annotations() -> None:
    """Defaults that hold two 64 MiB requests at once (tests/e2e/test_sidecar_memory_e2e.py), more for a
    pod that sends more at once."""
    def limits(pod: dict[str, Any]) -> dict[str, str]:
        injected = inject.mutate(pod, "search", inject.Settings())
        return {c["name"]: c["resources"]["limits"]["memory"] for c in injected["spec"]["initContainers"]
                if c["name"] in ("tollway", "tollway-envoy")}

    assert limits(POD) == {"tollway": "1Gi", "tollway-envoy": "512Mi"}
    big = copy.deepcopy(POD)
    big["metadata"]["annotations"] = {inject.TOLLWAY_MEMORY: "2Gi", inject.ENVOY_MEMORY: "768Mi"}
    assert limits(big) == {"tollway": "2Gi", "tollway-envoy": "768Mi"}


def _qos(spec: dict[str, Any]) -> str:
    """The pod's QoS class, as the kubelet computes it (requests left out default to the limits)."""
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    resources = [c.get("resources") or {} for c in containers]
    parse = {"cpu": inject.cores, "memory": memory.mib}
    if all(name in r.get("limits", {}) and
           parse[name](str(r.get("requests", {}).get(name, r["limits"][name]))) == parse[name](str(r["limits"][name]))
           for r in resources for name in ("cpu", "memory")):
        return "Guaranteed"
    return "Burstable" if any(r.get("requests") or r.get("limits") for r in resources) else "BestEffort"


def test_every_sidecar_container_limits_cpu_and_a_guaranteed_pod_stays_guaranteed() -> None:
    """A namespace whose ResourceQuota counts limits.cpu (or whose LimitRange has a max) refuses a pod
    with a container that limits no CPU: each of Tollway's has a limit (annotations, else the injector's
    settings, else one CPU per worker and one per Envoy worker thread: ``--concurrency``, 2, so that its
    threads busy together are not throttled). A pod whose containers request what they
    limit is Guaranteed; the sidecars then request what they limit too (as Istio's do)."""
    def sidecars(pod: dict[str, Any], **settings: Any) -> tuple[dict[str, dict[str, Any]], str]:
        out = inject.mutate(pod, "search", inject.Settings(**settings))
        validate({**out, "metadata": {**out["metadata"], "name": "x"}})
        return ({c["name"]: c["resources"] for c in out["spec"]["initContainers"] if c["name"] in inject.CONTAINERS},
                _qos(out["spec"]))

    resources, qos = sidecars(POD)
    assert {name: r["limits"]["cpu"] for name, r in resources.items()} == {
        "tollway-init": "100m", "tollway": "1", "tollway-envoy": "2"}
    (envoy,) = [c for c in inject.mutate(POD, "search", inject.Settings())["spec"]["initContainers"]
                if c["name"] == "tollway-envoy"]
    assert envoy["args"][envoy["args"].index("--concurrency") + 1] == envoy["resources"]["limits"]["cpu"]
    assert sidecars(POD, envoy_concurrency=4)[0]["tollway-envoy"]["limits"]["cpu"] == "4"
    assert resources["tollway"]["requests"] == {"cpu": "50m", "memory": "192Mi"} and qos == "Burstable"
    assert sidecars(POD, workers=3)[0]["tollway"]["limits"]["cpu"] == "3"
    assert sidecars(POD, tollway_cpu="500m", envoy_cpu="none")[0]["tollway-envoy"]["limits"] == {"memory": "512Mi"}
    annotated = copy.deepcopy(POD)
    annotated["metadata"]["annotations"] = {inject.TOLLWAY_CPU: "1500m", inject.ENVOY_CPU: "0.5"}
    resources, _ = sidecars(annotated, tollway_cpu="500m")
    assert (resources["tollway"]["limits"]["cpu"], resources["tollway-envoy"]["limits"]["cpu"]) == ("1500m", "0.5")

    fixed = copy.deepcopy(POD)
    for container in [*fixed["spec"]["containers"], *fixed["spec"]["initContainers"]]:
        container["resources"] = {"limits": {"cpu": "500m", "memory": "256Mi"},
                                  "requests": {"cpu": "0.5", "memory": "256Mi"}}
    assert _qos(fixed["spec"]) == "Guaranteed"
    resources, qos = sidecars(fixed, envoy_cpu="none")  # no limit cannot be kept: the defaults
    assert qos == "Guaranteed"
    assert resources["tollway"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert resources["tollway-envoy"]["limits"] == {"cpu": "2", "memory": "512Mi"}
    del fixed["spec"]["containers"][1]["resources"]["requests"]  # left out: the limits (the API server's default)
    assert sidecars(fixed)[1] == "Guaranteed"
    fixed["spec"]["containers"][1]["resources"]["requests"] = {"cpu": "100m", "memory": "256Mi"}
    resources, qos = sidecars(fixed)  # one container requests less: Burstable, the sidecars' usual requests
    assert qos == "Burstable" and resources["tollway"]["requests"] == {"cpu": "50m", "memory": "192Mi"}


def test_a_limit_below_the_default_request_is_requested_too() -> None:
    """An annotation limiting a sidecar below what it requests by default (50m CPU, 192Mi memory): the
    request follows the limit down (the API server refuses a container requesting more than it limits,
    after the webhook admitted the pod)."""
    pod = copy.deepcopy(POD)
    pod["metadata"]["annotations"] = {inject.TOLLWAY_CPU: "20m", inject.ENVOY_CPU: "0.025",
                                      inject.TOLLWAY_MEMORY: "0.1Gi", inject.ENVOY_MEMORY: "32Mi"}
    out = inject.mutate(pod, "search", inject.Settings())
    validate({**out, "metadata": {**out["metadata"], "name": "x"}})
    resources = {c["name"]: c["resources"] for c in out["spec"]["initContainers"] if c["name"] in inject.CONTAINERS}
    assert resources["tollway"] == {"requests": {"cpu": "20m", "memory": "0.1Gi"},
                                    "limits": {"cpu": "20m", "memory": "0.1Gi"}}
    assert resources["tollway-envoy"] == {"requests": {"cpu": "0.025", "memory": "32Mi"},
                                          "limits": {"cpu": "0.025", "memory": "32Mi"}}
    for r in resources.values():
        for name, request in r["requests"].items():
            assert name not in r["limits"] or quantity.quantity(request) <= quantity.quantity(r["limits"][name])
    # Above the default requests, the requests stay the defaults (Burstable).
    pod["metadata"]["annotations"] = {inject.TOLLWAY_CPU: "300m", inject.ENVOY_CPU: "none"}
    out = inject.mutate(pod, "search", inject.Settings())
    (tollway, envoy) = [c["resources"] for c in out["spec"]["initContainers"] if c["name"] in ("tollway",
                                                                                                 "tollway-envoy")]
    assert tollway["requests"] == {"cpu": "50m", "memory": "192Mi"}
    assert envoy["requests"] == {"cpu": "50m", "memory": "64Mi"} and "cpu" not in envoy["limits"]


@pytest.mark.parametrize(("cpu", "same_cpu", "mem", "same_mem"), [
    (".5", "500m", "1e9", "1G"), ("2", "2000m", "1Ei", "1024Pi"), ("1.", "1e0", "1P", "1e15"),
    ("0.1", "100m", "1Gi", "1073741824"), ("1", "1000000u", "129e6", "129M"), ("1", "1000000000n", "1.5Gi", "1536Mi"),
])
def test_a_guaranteed_pod_is_recognised_in_every_quantity_kubernetes_accepts(cpu: str, same_cpu: str, mem: str,
                                                                              same_mem: str) -> None:
    """Kubernetes' quantities (decimal n u m k M G T P E, binary Ki .. Ei, exponents, ``.5`` and ``5.``):
    a pod whose containers request what they limit, however written, is Guaranteed and stays so."""
    pod = copy.deepcopy(POD)
    for container in [*pod["spec"]["containers"], *pod["spec"]["initContainers"]]:
        container["resources"] = {"limits": {"cpu": cpu, "memory": mem}, "requests": {"cpu": same_cpu,
                                                                                      "memory": same_mem}}
    out = inject.mutate(pod, "search", inject.Settings())
    assert _qos(out["spec"]) == "Guaranteed"
    (tollway,) = [c for c in out["spec"]["initContainers"] if c["name"] == "tollway"]
    assert tollway["resources"]["requests"] == tollway["resources"]["limits"]


@pytest.mark.parametrize(("text", "value"), [
    (".5", Fraction(1, 2)), ("5.", 5), ("1e9", 10**9), ("1E3", 1000), ("1E", 10**18), ("2Ei", 2**61), ("1Pi", 2**50),
    ("1P", 10**15), ("3n", Fraction(3, 10**9)), ("7u", Fraction(7, 10**6)), ("1e-3", Fraction(1, 1000)),
    ("+1.5k", 1500), ("-1", -1), ("1e3m", None), ("2 cores", None), ("", None), (".", None), ("Mi", None),
    ("1.5.2", None), ("0x10", None), ("1e999999999", None), ("1" * 100, None),
])
def test_one_quantity_parser_follows_kubernetes_grammar(text: str, value: Any) -> None:
    assert quantity.quantity(text) == value


def test_tollway_refuses_bodies_before_the_limits_would_kill_a_container() -> None:
    """``--body-memory`` follows the limits: as many 64 MiB bodies at once as both containers hold
    (about 140 + 260 MiB each for Tollway, 70 + 130 MiB for Envoy, which also reads the body being
    refused), shared by the workers."""
    def body_memory(annotations: dict[str, str], **settings: Any) -> int:
        pod = copy.deepcopy(POD)
        pod["metadata"]["annotations"] = annotations
        injected = inject.mutate(pod, "search", inject.Settings(**settings))
        (tollway,) = [c for c in injected["spec"]["initContainers"] if c["name"] == "tollway"]
        return int(tollway["args"][tollway["args"].index("--body-memory") + 1])

    assert body_memory({}) == 128  # two at once, as tests/e2e/test_sidecar_memory_e2e.py measures
    assert body_memory({inject.TOLLWAY_MEMORY: "2Gi", inject.ENVOY_MEMORY: "768Mi"}) == 256  # four (Envoy's)
    assert body_memory({inject.TOLLWAY_MEMORY: "4Gi"}) == 128  # Envoy's 512Mi still holds two
    assert body_memory({inject.TOLLWAY_MEMORY: "2147483648", inject.ENVOY_MEMORY: "0.75Gi"}) == 256
    assert body_memory({inject.ENVOY_MEMORY: "384Mi"}) == 64  # two bodies, one of them being refused
    assert body_memory({inject.TOLLWAY_MEMORY: "300Mi"}) == 64  # one at a time (a body alone is always read)
    assert body_memory({}, workers=2) == 64  # the workers share it
    assert body_memory({inject.TOLLWAY_MEMORY: "2Gi", inject.ENVOY_MEMORY: "1Gi"}, workers=4) == 96


def test_each_worker_reads_one_body_alone_so_the_default_limits_hold_one_per_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    """A worker always reads one body alone (up to 64 MiB) whatever its share of ``--body-memory``:
    the default limits grow to hold one per worker, ``--body-memory`` stays at least one body; limits
    a pod's annotations set smaller are kept, and the injector says so (its log, the pod's status,
    the admission's warnings kubectl shows)."""
    def injected(annotations: dict[str, str], workers: int) -> tuple[dict[str, str], int, dict[str, Any]]:
        pod = copy.deepcopy(POD)
        pod["metadata"]["annotations"] = annotations
        out = inject.mutate(pod, "search", inject.Settings(workers=workers))
        sidecars = {c["name"]: c for c in out["spec"]["initContainers"]}
        args = sidecars["tollway"]["args"]
        return ({name: sidecars[name]["resources"]["limits"]["memory"] for name in ("tollway", "tollway-envoy")},
                int(args[args.index("--body-memory") + 1]),
                json.loads(out["metadata"]["annotations"][inject.STATUS]))

    def bodies(limits: dict[str, str]) -> int:  # what the containers hold: about 140 + 260 and 70 + 130 MiB each
        mib = memory._mib  # Envoy's one more: the body being refused
        return int(min((mib(limits["tollway"]) - 140) // 260, (mib(limits["tollway-envoy"]) - 70) // 130 - 1))

    assert injected({}, 2)[:2] == ({"tollway": "1Gi", "tollway-envoy": "512Mi"}, 64)  # the defaults hold two
    assert injected({}, 3)[0] == {"tollway": "1Gi", "tollway-envoy": "590Mi"}
    limits, share, status = injected({}, 4)
    assert limits == {"tollway": "1180Mi", "tollway-envoy": "720Mi"} and bodies(limits) == 4 and share == 64
    assert "warning" not in status
    limits, share, status = injected({inject.TOLLWAY_MEMORY: "3Gi"}, 4)  # Envoy's default still grows
    assert limits == {"tollway": "3Gi", "tollway-envoy": "720Mi"} and "warning" not in status

    small = {inject.TOLLWAY_MEMORY: "512Mi", inject.ENVOY_MEMORY: "256Mi"}  # one body at once
    with caplog.at_level("WARNING", logger="tollway.inject"):
        limits, share, status = injected(small, 2)
    assert limits == {"tollway": "512Mi", "tollway-envoy": "256Mi"} and share == 64  # the pod's choice, kept
    assert "hold 1 of the largest bodies (64 MiB) at once, not one per worker (2)" in status["warning"]
    assert "set at least 660Mi/460Mi" in status["warning"] and status["warning"] in caplog.text
    pod = copy.deepcopy(POD)
    pod["metadata"]["annotations"] = small
    answer = inject.review(review(pod), inject.Settings(workers=2))["response"]
    assert answer["allowed"] and answer["warnings"] == [f"tollway: {status['warning']}"]
    assert len(answer["warnings"][0]) < 256  # the API server may cut a longer warning
    assert "warnings" not in inject.review(review(POD), inject.Settings(workers=2))["response"]
    assert "warning" not in injected(small, 1)[2]
