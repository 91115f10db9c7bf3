"""``tollway inject``: the sidecar injector, as a mutating admission webhook or offline.

Theory of operation. :func:`mutate` is the whole idea, a pure function from a pod (its spec, its
namespace) to the pod with Tollway's containers; everything else carries pods to it:

- the webhook (``tollway inject --webhook``) answers the API server's ``AdmissionReview`` with a
  JSONPatch (RFC 6902, ``jsonpatch.make_patch`` of the pod and its mutation, :func:`review`) over
  HTTPS (the server, its bounds and its certificate re-read when cert-manager renews it:
  :mod:`.webhook`). The MutatingWebhookConfiguration's selectors
  decide which pods are sent (a namespace labelled ``tollway.dev/inject=enabled``, or a pod
  labelled ``tollway.dev/inject: "true"``; a pod labelled ``"false"`` opts out), the way Istio's
  injector is selected;
- ``tollway inject -f deployment.yaml`` mutates every pod template of a manifest (Pod, Deployment,
  StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) for those who render offline (GitOps).

:func:`mutate` first removes whatever an earlier injection (or the pod's author) put under
Tollway's names in a pod carrying the ``tollway.dev/status`` annotation, then adds them afresh,
so injecting twice changes nothing and a pod cannot bring its own "Tollway" with another
identity. A pod without it that uses one of those names for its own container or volume is
refused (removing them would drop the application's). The identity is computed here from what the API
server admitted: ``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT``. Pods Tollway cannot
serve safely are refused with a reason: host-network pods (the init container would rewrite
the node's iptables), pods sharing a process namespace (their processes could read the provider
keys through ``/proc``), containers running as Envoy's user (their traffic would bypass the
interception) or as Tollway's (theirs could read Tollway's files and memory), containers of
the application that mount Tollway's volumes (the socket directory and the provider keys are
for the sidecar only) or read its Secrets by another route (an env secretKeyRef, envFrom, a
volume of the same Secret), and memory- or CPU-limit annotations that are no quantity. Every injected
container limits CPU and memory (a namespace whose ResourceQuota asks for limits admits the pod;
a LimitRange, within its max and maxLimitRequestRatio), each request at most its limit, and in
a Guaranteed pod (every container of the application requests the CPU
and memory it limits) the sidecars request what they limit, so the pod stays Guaranteed. The application's
containers and its own init containers (which start after Tollway's, intercepted too) get the
trust bundle. See :mod:`ext_proc.k8s` for what the three containers do.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ipaddress
import json
import logging
import os
import re
import ssl
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ext_proc.envoy_config import TEMPLATE
from ext_proc.k8s import sidecar
from ext_proc.k8s.memory import (
    ENVOY_MEMORY,
    TOLLWAY_MEMORY,
    body_memory,
    default_memory_limits,
    memory_warning,
    mib,
)
from ext_proc.k8s.quantity import quantity
from ext_proc.server import spool

log = logging.getLogger("tollway.inject")

LABEL = "tollway.dev/inject"  # "true"/"false" on a pod; "enabled" on a namespace
STATUS = "tollway.dev/status"  # set on injected pods: what was injected
INJECTED_LABEL = "tollway.dev/injected"  # "true" on injected pods (NetworkPolicies select on it)
INTERCEPT = "tollway.dev/intercept"  # pod annotation: "false" keeps base-URL mode only
TRUST = "tollway.dev/trust"  # pod annotation: "false" leaves the application's CA settings alone
TOLLWAY_CPU, ENVOY_CPU = "tollway.dev/tollway-cpu", "tollway.dev/envoy-cpu"  # pod annotations: CPU limits
INIT_CPU = "100m"  # tollway-init's CPU limit (a few iptables commands)
TOLLWAY_UID, ENVOY_UID, TOLLWAY_GID = 10001, 10002, 10001
CONTAINERS = ("tollway-init", "tollway", "tollway-envoy")
VOLUMES = ("tollway-run", "tollway-tmp", "tollway-state", "tollway-policy", "tollway-provider-keys",
           "tollway-intercept-tls", "tollway-trust")
SIDECAR_VOLUMES = frozenset(VOLUMES) - {"tollway-trust"}  # never mounted by the application's containers
POLICY_DIR = "/etc/tollway/policy"
PROVIDER_KEYS_DIR = "/var/run/secrets/tollway/providers"
TRUST_DIR = "/etc/tollway/trust"
STATE_DIR = "/var/lib/tollway"  # tollway serve --state-dir: the in-flight journals and the aggregates' spools
SPOOL_MAX = 64  # MiB: tollway serve --spool-max, every process's spools together (hours of a Redis outage)
JOURNAL_MIB = 16  # MiB of the state volume per worker for its journal (rewritten past 1 MiB to its open entries)
TRUST_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
RESERVED_PORTS = frozenset({sidecar.TOLLWAY_ADMIN_PORT, 10000, sidecar.INTERCEPT_PORT, sidecar.POD_PORT})
PYTHON = "/opt/tollway/bin/python"


class Refused(Exception):
    """This pod cannot be injected; the message says why, to the person who applied it."""


@dataclass(frozen=True)
class Settings:
    """What the injector puts in every pod (``tollway inject`` flags)."""

    image: str = "tollway:0.1.0"
    pull_policy: str = "IfNotPresent"
    trust_domain: str = "cluster.local"
    hosts: tuple[str, ...] = sidecar.PROVIDER_HOSTS
    intercept_cidrs: str = ""
    intercept_all: bool = False
    policy_configmap: str = "tollway-policy"
    policy_key: str = "policy.yaml"
    provider_secret: str = "tollway-provider-keys"
    # key "url", required: a pod whose Secret is missing does not start (its budgets would silently be the
    # pod's own, reset on every restart). None: no Redis on purpose, each pod keeps its own counters.
    redis_secret: str | None = "tollway-redis"
    intercept_secret: str = "tollway-intercept-tls"
    trust_configmap: str = "tollway-trust"
    trust_key: str = "ca-bundle.pem"
    workers: int = 1
    envoy_concurrency: int = 2  # Envoy's worker threads (--concurrency)
    # The sidecar containers' CPU limits, unless a pod's annotations say: "" the defaults (one CPU per
    # Tollway worker, one per Envoy worker thread); "none" no limit (unless the pod is Guaranteed).
    tollway_cpu: str = ""
    envoy_cpu: str = ""
    spool_max: int = SPOOL_MAX  # MiB the spend aggregates' spools may hold (tollway serve --spool-max)
    template: Path = TEMPLATE

    def bootstrap(self, intercept: bool) -> dict[str, Any]:
        layout = sidecar.Layout(hosts=self.hosts, intercept=intercept)
        return sidecar.bootstrap(yaml.safe_load(self.template.read_text(encoding="utf-8")), layout)


def state_volume_mib(settings: Settings) -> int:
    """The ``tollway-state`` emptyDir's size limit (MiB), which the kubelet evicts the pod past:
    above what the sidecar can write there. The spools hold ``--spool-max`` together (those dead
    workers left included), each process (the workers and the supervisor) passing it by one 1 MiB
    step at most (:data:`ext_proc.server.spool.STEP`); each worker's journal is rewritten with its
    open entries once past 1 MiB (:data:`JOURNAL_MIB` holds that, the rewrite's copy and a few
    thousand requests in flight); and 16 MiB to spare."""
    steps = (settings.workers + 1) * -(-spool.STEP // (1 << 20))
    return settings.spool_max + steps + settings.workers * JOURNAL_MIB + 16


def workload_id(settings: Settings, namespace: str, pod: Mapping[str, Any]) -> str:
    account = pod.get("spec", {}).get("serviceAccountName") or pod.get("spec", {}).get("serviceAccount") or "default"
    return f"spiffe://{settings.trust_domain}/ns/{namespace}/sa/{account}"


def _flag(meta: Mapping[str, Any], name: str, default: bool) -> bool:
    value = str((meta.get("annotations") or {}).get(name, "")).strip().lower()
    return default if value == "" else value not in ("false", "0", "no", "off", "disabled")


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    # Tollway's admin is on loopback: kubelet cannot reach it, so the probe runs inside the container.
    code = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{sidecar.TOLLWAY_ADMIN_PORT}{path}', timeout=2)"
    return {"exec": {"command": [PYTHON, "-c", code]}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 3}


def _hardened(uid: int, gid: int) -> dict[str, Any]:
    return {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def memory_limits(meta: Mapping[str, Any], workers: int = 1) -> dict[str, str]:
    """The sidecar containers' memory limits: the pod's annotations, else the defaults for ``workers``."""
    annotations = meta.get("annotations") or {}
    limits = {}
    for name, default in default_memory_limits(workers).items():
        value = str(annotations.get(name) or default).strip()
        if not (mib(value) or 0) > 0:
            raise Refused(f"annotation {name}: {value!r} is not a memory quantity (e.g. 1Gi, 512Mi)")
        limits[name] = value
    return limits


def cores(text: str) -> float | None:
    """A Kubernetes CPU quantity (``500m``, ``1``, ``1.5``, ``.5``) in cores; None if it is none
    (:func:`~ext_proc.k8s.quantity.quantity`)."""
    value = quantity(text)
    return None if value is None else float(value)


def default_cpu_limits(settings: Settings) -> dict[str, str]:
    """One CPU per Tollway worker (each runs one thread of Python at a time), one per Envoy worker thread
    (``--concurrency``): a lower limit lets the threads, busy together, spend the CFS quota early in each
    100 ms period and wait out the rest of it, throttled (a latency spike for every request in flight)."""
    return {TOLLWAY_CPU: str(max(1, settings.workers)), ENVOY_CPU: str(max(1, settings.envoy_concurrency))}


def cpu_problem(value: str) -> str | None:
    """What is wrong with a CPU limit (a quantity above 0, or ``none``); None if nothing."""
    value = value.strip()
    if value.lower() == "none" or (cores(value) or 0) > 0:
        return None
    return f"{value!r} is not a CPU quantity (e.g. 500m, 2), nor none"


def cpu_limits(meta: Mapping[str, Any], settings: Settings, guaranteed: bool = False) -> dict[str, str | None]:
    """The sidecar containers' CPU limits: the pod's annotations, else the injector's settings, else
    :func:`default_cpu_limits`; None ("none": no limit) only when the pod is not ``guaranteed``."""
    annotations = meta.get("annotations") or {}
    limits: dict[str, str | None] = {}
    for name, default in default_cpu_limits(settings).items():
        configured = settings.tollway_cpu if name == TOLLWAY_CPU else settings.envoy_cpu
        value = str(annotations.get(name) or configured or default).strip()
        problem = cpu_problem(value)
        if problem is not None:
            source = f"annotation {name}" if annotations.get(name) else f"--{name.split('/')[1]}"
            raise Refused(f"{source}: {problem}")
        if value.lower() == "none":
            limits[name] = default if guaranteed else None  # a Guaranteed pod needs every container's limits
            continue
        limits[name] = value
    return limits


def _same(a: Any, b: Any) -> bool:
    x, y = quantity(str(a)), quantity(str(b))
    return x is not None and x == y


def guaranteed(containers: list[Mapping[str, Any]]) -> bool:
    """Whether these (the application's) containers make a Guaranteed pod: every one limits CPU and
    memory, and requests what it limits (a request left out defaults to the limit)."""
    if not containers:
        return False
    for container in containers:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        for name in ("cpu", "memory"):
            if name not in limits or not _same(requests.get(name, limits[name]), limits[name]):
                return False
    return True


def _resources(requests: Mapping[str, str], limits: Mapping[str, str | None], equal: bool) -> dict[str, Any]:
    """A container's resources: ``limits`` (None: none) over ``requests``; requests == limits when ``equal``
    (so that a Guaranteed pod stays Guaranteed), else each request at most its limit (an annotation below
    the default request: the API server refuses a container that requests more than it limits)."""
    given = {name: value for name, value in limits.items() if value is not None}
    if equal:
        return {"requests": dict(given), "limits": given}
    asked = {name: given[name] if name in given and _below(given[name], value) else value
             for name, value in requests.items()}
    return {"requests": asked, "limits": given}


def _below(a: str, b: str) -> bool:
    x, y = quantity(a), quantity(b)
    return x is not None and y is not None and x < y


def sidecar_containers(settings: Settings, workload: str, intercept: bool,
                       memory: Mapping[str, str] | None = None, cpu: Mapping[str, str | None] | None = None,
                       equal: bool = False) -> list[dict[str, Any]]:
    """The init container (when intercepting) and the two native sidecars, in start order (``memory``,
    ``cpu``: their limits, the defaults for the settings unless given; ``equal``: requests == limits,
    for a Guaranteed pod)."""
    if memory is None:
        memory = default_memory_limits(settings.workers)
    if cpu is None:
        cpu = cpu_limits({}, settings, equal)
    out: list[dict[str, Any]] = []
    if intercept:
        out.append({
            "name": "tollway-init",
            "image": settings.image,
            "imagePullPolicy": settings.pull_policy,
            "command": ["tollway-intercept"],
            "env": [
                {"name": "TOLLWAY_INTERCEPT_HOSTS", "value": " ".join(settings.hosts)},
                {"name": "TOLLWAY_INTERCEPT_CIDRS", "value": settings.intercept_cidrs},
                {"name": "TOLLWAY_INTERCEPT_ALL", "value": "true" if settings.intercept_all else "false"},
                {"name": "TOLLWAY_INTERCEPT_PORT", "value": str(sidecar.INTERCEPT_PORT)},
                {"name": "TOLLWAY_ENVOY_UID", "value": str(ENVOY_UID)},
                {"name": "XTABLES_LOCKFILE", "value": "/tmp/xtables.lock"},
            ],
            "securityContext": {
                "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "privileged": False,
                "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [{"name": "tollway-tmp", "mountPath": "/tmp"}],
            "resources": _resources({"cpu": "10m", "memory": "16Mi"}, {"cpu": INIT_CPU, "memory": "64Mi"}, equal),
        })
    out.append({
        "name": "tollway",
        "image": settings.image,
        "imagePullPolicy": settings.pull_policy,
        "restartPolicy": "Always",  # a native sidecar: started before, stopped after the application
        # --socket-group: Envoy runs as another user of Tollway's group, which the socket must admit.
        "args": ["serve", "--policy", f"{POLICY_DIR}/{settings.policy_key}", "--socket-group",
                 "--envoy-clusters", "/run/tollway/clusters.yaml", "--envoy-admin", f"unix:{sidecar.ENVOY_ADMIN}",
                 "--workers", str(settings.workers), "--body-memory", str(body_memory(memory, settings.workers)),
                 # A worker killed mid-request (out of memory) still gets its requests' records, and
                 # batches Redis has not taken survive a restart: the log is stdout (kubectl logs).
                 "--state-dir", STATE_DIR, "--spool-max", str(settings.spool_max)],
        "env": [
            {"name": "TOLLWAY_WORKLOAD", "value": workload},
            # Not optional: without the Secret the pod waits (CreateContainerConfigError) instead of
            # serving budgets each pod counts alone.
            *([{"name": "TOLLWAY_REDIS_URL", "valueFrom": {"secretKeyRef": {
                "name": settings.redis_secret, "key": "url"}}}] if settings.redis_secret else []),
            {"name": "TMPDIR", "value": "/tmp"},
        ],
        "securityContext": _hardened(TOLLWAY_UID, TOLLWAY_GID),
        "volumeMounts": [
            {"name": "tollway-run", "mountPath": "/run"},
            {"name": "tollway-tmp", "mountPath": "/tmp"},
            {"name": "tollway-state", "mountPath": STATE_DIR},
            {"name": "tollway-policy", "mountPath": POLICY_DIR, "readOnly": True},
            {"name": "tollway-provider-keys", "mountPath": PROVIDER_KEYS_DIR, "readOnly": True},
        ],
        # Envoy starts only once this passes: the clusters file is written and the socket serves.
        "startupProbe": _probe("/readyz", 1, 120),
        "livenessProbe": _probe("/healthz", 20, 3),
        "readinessProbe": {"httpGet": {"path": "/tollway/readyz", "port": sidecar.POD_PORT}, "periodSeconds": 10},
        "resources": _resources({"cpu": "50m", "memory": "192Mi"},
                                {"cpu": cpu[TOLLWAY_CPU], "memory": memory[TOLLWAY_MEMORY]}, equal),
    })
    bootstrap = json.dumps(settings.bootstrap(intercept), separators=(",", ":"), sort_keys=True)
    envoy_mounts: list[dict[str, Any]] = [{"name": "tollway-run", "mountPath": "/run"}]
    if intercept:
        envoy_mounts.append({"name": "tollway-intercept-tls", "mountPath": sidecar.INTERCEPT_CERT_DIR,
                             "readOnly": True})
    out.append({
        "name": "tollway-envoy",
        "image": settings.image,
        "imagePullPolicy": settings.pull_policy,
        "restartPolicy": "Always",
        "command": ["envoy"],
        "args": ["--config-yaml", bootstrap, "--disable-hot-restart", "--log-level", "warn",
                 "--concurrency", str(settings.envoy_concurrency)],
        "ports": [{"name": "tollway-pod", "containerPort": sidecar.POD_PORT, "protocol": "TCP"}],
        "securityContext": _hardened(ENVOY_UID, TOLLWAY_GID),  # Tollway's group: the socket's
        "volumeMounts": envoy_mounts,
        "startupProbe": {"httpGet": {"path": "/ready", "port": sidecar.POD_PORT}, "periodSeconds": 1,
                         "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": sidecar.POD_PORT}, "periodSeconds": 10},
        "resources": _resources({"cpu": "50m", "memory": "64Mi"},
                                {"cpu": cpu[ENVOY_CPU], "memory": memory[ENVOY_MEMORY]}, equal),
    })
    return out


def sidecar_volumes(settings: Settings, intercept: bool, trust: bool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        # /run of Tollway and Envoy only: Tollway creates /run/tollway (0750: --socket-group) for the socket and
        # the clusters file.
        {"name": "tollway-run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "tollway-tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        # Tollway's journals and spools (--state-dir): on disk, so they outlive a container's restart (not
        # the pod's deletion); sized above what --spool-max and the journals can hold (past it: eviction).
        {"name": "tollway-state", "emptyDir": {"sizeLimit": f"{state_volume_mib(settings)}Mi"}},
        # A directory mount (never subPath): the kubelet's ..data swap is how edits reach Tollway.
        {"name": "tollway-policy", "configMap": {"name": settings.policy_configmap}},
        {"name": "tollway-provider-keys", "secret": {"secretName": settings.provider_secret}},
    ]
    if intercept:
        volumes.append({"name": "tollway-intercept-tls", "secret": {"secretName": settings.intercept_secret}})
    if trust:
        volumes.append({"name": "tollway-trust", "configMap": {
            "name": settings.trust_configmap, "items": [{"key": settings.trust_key, "path": "ca-bundle.pem"}]}})
    return volumes


_POD_LISTS = ("initContainers", "containers", "volumes")
_CONTAINER_LISTS = ("env", "envFrom", "volumeMounts", "ports")


def _no_nulls(pod: dict[str, Any]) -> None:
    """Fields left empty (``env:``, ``volumes:``, ``annotations:``: null, as Helm renders them) as if absent."""
    for key in ("metadata", "spec"):
        if not isinstance(pod.get(key), dict):
            pod[key] = {}
    meta, spec = pod["metadata"], pod["spec"]
    for mapping, keys in ((meta, ("labels", "annotations")), (spec, _POD_LISTS)):
        for key in keys:
            if key in mapping and mapping[key] is None:
                del mapping[key]
        for key in keys:  # a field of another shape: refused in words, not a crash further on
            if key in mapping and not isinstance(mapping[key], list if mapping is spec else dict):
                where = "spec" if mapping is spec else "metadata"
                raise Refused(f"the pod's {where}.{key} must be {'a list' if mapping is spec else 'a mapping'}, "
                              f"not {_kind(mapping[key])}")
    for key in _POD_LISTS:
        for index, item in enumerate(spec.get(key, [])):
            if not isinstance(item, dict):
                raise Refused(f"the pod's spec.{key}[{index}] must be a mapping, not {_kind(item)}")
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key, [])):
            for field in _CONTAINER_LISTS:
                if field in container and container[field] is None:
                    del container[field]
                elif field in container and not isinstance(container[field], list):
                    raise Refused(f"the pod's spec.{key}[{index}].{field} must be a list, not "
                                  f"{_kind(container[field])}")


def _kind(value: Any) -> str:
    """A YAML value's kind, for a refusal: ``a number``, ``a string``, ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    kinds: dict[type, str] = {str: "a string", list: "a list", dict: "a mapping"}
    return kinds.get(type(value), type(value).__name__)


def _clashes(pod: Mapping[str, Any]) -> None:
    """:class:`Refused` when a pod never injected uses one of Tollway's names (injecting would drop its own)."""
    spec = pod.get("spec") or {}
    for key in ("initContainers", "containers"):
        for container in spec.get(key, []):
            if container.get("name") in CONTAINERS:
                raise Refused(f"the pod has a container named {container.get('name')!r}, a name of the Tollway "
                              f"sidecar's ({', '.join(CONTAINERS)}): rename it, or label the pod "
                              "tollway.dev/inject=false")
            for mount in container.get("volumeMounts", []):  # the others: refused by _check, for what they hold
                if mount.get("name") == "tollway-trust":
                    raise Refused(f"container {container.get('name')!r} mounts 'tollway-trust', the name of the "
                                  "Tollway sidecar's trust bundle volume, which it mounts in the application's "
                                  "containers: rename the volume, or label the pod tollway.dev/inject=false")
    for volume in spec.get("volumes", []):
        if volume.get("name") in VOLUMES:
            raise Refused(f"the pod has a volume named {volume.get('name')!r}, a name of the Tollway sidecar's "
                          f"({', '.join(VOLUMES)}): rename it, or label the pod tollway.dev/inject=false")


def _strip(pod: dict[str, Any]) -> None:
    """Remove everything under Tollway's names from a pod injected before (by the status annotation: an
    earlier injection, or a pod imitating one)."""
    spec = pod.setdefault("spec", {})
    for key in ("initContainers", "containers"):
        if key in spec:
            spec[key] = [c for c in spec[key] if c.get("name") not in CONTAINERS]
    if "volumes" in spec:
        spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in VOLUMES]
    bundle = f"{TRUST_DIR}/ca-bundle.pem"
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if "volumeMounts" in container:
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m.get("name") != "tollway-trust"]
        if "env" in container:
            container["env"] = [e for e in container["env"] if not (e.get("name") in TRUST_ENV
                                                                     and e.get("value") == bundle)]
    meta = pod.setdefault("metadata", {})
    (meta.get("annotations") or {}).pop(STATUS, None)


def _secrets_read(container: Mapping[str, Any], volumes: Mapping[str, Mapping[str, Any]]) -> Iterator[str]:
    """The Secrets a container reads: env secretKeyRef, envFrom secretRef, mounted secret and projected volumes."""
    for env in container.get("env") or []:
        ref = ((env or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name"):
            yield str(ref["name"])
    for source in container.get("envFrom") or []:
        ref = (source or {}).get("secretRef") or {}
        if ref.get("name"):
            yield str(ref["name"])
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get((mount or {}).get("name", "")) or {}
        if (volume.get("secret") or {}).get("secretName"):
            yield str(volume["secret"]["secretName"])
        for projected in (volume.get("projected") or {}).get("sources") or []:
            if ((projected or {}).get("secret") or {}).get("name"):
                yield str(projected["secret"]["name"])


def _check(pod: Mapping[str, Any], settings: Settings) -> None:
    spec = pod.get("spec", {})
    volumes = {v.get("name", ""): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    sidecar_secrets = {name for name in (settings.provider_secret, settings.redis_secret, settings.intercept_secret)
                       if name}
    if spec.get("hostNetwork"):
        raise Refused("a hostNetwork pod shares the node's network: Tollway's init container would rewrite the "
                      "node's iptables. Label it tollway.dev/inject=false")
    for field in ("shareProcessNamespace", "hostPID"):
        if spec.get(field):
            raise Refused(f"{field}: true puts the pod's processes in one process namespace with Tollway's: any of "
                          "them running as root or with CAP_SYS_PTRACE could read the provider keys through /proc. "
                          f"Remove {field}, or label the pod tollway.dev/inject=false")
    pod_uid = (spec.get("securityContext") or {}).get("runAsUser")
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        uid = (container.get("securityContext") or {}).get("runAsUser", pod_uid)
        if uid == ENVOY_UID:
            raise Refused(f"container {container.get('name')!r} runs as uid {ENVOY_UID}, the Tollway sidecar's Envoy: "
                          "its connections would bypass the interception. Run it as another user")
        # Tollway's group alone opens nothing: its files are on volumes the app may not mount, and reading
        # another process's memory or /proc needs its user too.
        if uid == TOLLWAY_UID:
            raise Refused(f"container {container.get('name')!r} runs as uid {TOLLWAY_UID}, the Tollway sidecar's: a "
                          "process of the same user may read Tollway's memory and files (the provider keys) wherever "
                          "it sees its processes. Run it as another user")
        for mount in container.get("volumeMounts", []):
            if mount.get("name") in SIDECAR_VOLUMES:
                raise Refused(f"container {container.get('name')!r} mounts {mount.get('name')!r}, which only the "
                              "Tollway sidecar may mount (it holds the provider keys or the socket)")
        # The same Secrets under other names: the provider keys, the Redis password (every team's spend).
        for secret in _secrets_read(container, volumes):
            if secret in sidecar_secrets:
                raise Refused(f"container {container.get('name')!r} reads the Secret {secret!r}, which only the "
                              "Tollway sidecar may read (provider keys, the Redis password or the interception key). "
                              "An operator's job (such as tollway budgets --redis) that needs it: label its pod "
                              "tollway.dev/inject=false")
        for port in container.get("ports", []):
            if port.get("containerPort") in RESERVED_PORTS:
                raise Refused(f"container {container.get('name')!r} uses port {port.get('containerPort')}, which the "
                              f"Tollway sidecar needs ({', '.join(map(str, sorted(RESERVED_PORTS)))} are taken)")


def mutate(pod: Mapping[str, Any], namespace: str, settings: Settings) -> dict[str, Any]:
    """The pod with Tollway injected (see the module docstring); :class:`Refused` when it cannot be."""
    out = copy.deepcopy(dict(pod))
    _no_nulls(out)
    if STATUS in out["metadata"].get("annotations", {}):  # injected before: injected afresh
        _strip(out)
    else:  # the pod's own, never Tollway's: a clash with Tollway's names is refused, not removed
        _clashes(out)
    _check(out, settings)
    meta = out["metadata"]
    spec = out["spec"]
    intercept = _flag(meta, INTERCEPT, True)
    trust = intercept and _flag(meta, TRUST, True)
    workload = workload_id(settings, namespace, out)
    apps = [*spec.get("initContainers", []), *spec.get("containers", [])]  # its init containers are intercepted too
    memory = memory_limits(meta, settings.workers)
    equal = guaranteed(apps)  # a Guaranteed pod stays Guaranteed: the sidecars request what they limit
    cpu = cpu_limits(meta, settings, equal)
    containers = sidecar_containers(settings, workload, intercept, memory, cpu, equal)
    spec["initContainers"] = [*containers, *spec.get("initContainers", [])]
    spec["volumes"] = [*spec.get("volumes", []), *sidecar_volumes(settings, intercept, trust)]
    bundle = f"{TRUST_DIR}/ca-bundle.pem"
    trusted = []
    for container in apps:
        if not trust:
            break
        env = container.setdefault("env", [])
        names = {e.get("name") for e in env}
        env.extend({"name": name, "value": bundle} for name in TRUST_ENV if name not in names)
        container.setdefault("volumeMounts", []).append({"name": "tollway-trust", "mountPath": TRUST_DIR,
                                                         "readOnly": True})
        trusted.append(container.get("name"))
    meta.setdefault("labels", {})[INJECTED_LABEL] = "true"
    status = {"workload": workload, "intercept": intercept, "trusting": trusted,
              "containers": [c["name"] for c in spec["initContainers"] if c["name"] in CONTAINERS]}
    warning = memory_warning(memory, settings.workers)
    if warning is not None:  # the pod's annotations chose them: kept, and said
        status["warning"] = warning
        log.warning("pod %s: %s", meta.get("name") or meta.get("generateName"), warning)
    meta.setdefault("annotations", {})[STATUS] = json.dumps(status, sort_keys=True)
    return out


# -- the webhook ---------------------------------------------------------------------------------

def review(body: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The AdmissionReview answer for one request: a JSONPatch, no change, or a refusal."""
    import jsonpatch

    request = body.get("request") or {}
    uid = request.get("uid", "")
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    pod = request.get("object") or {}
    if request.get("kind", {}).get("kind") == "Pod" and request.get("operation", "CREATE") == "CREATE":
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if str(labels.get(LABEL, "")).lower() != "false":
            namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
            try:
                mutated = mutate(pod, namespace, settings)
            except Refused as exc:
                response = {"uid": uid, "allowed": False, "status": {"code": 403, "message": f"tollway: {exc}"}}
            else:
                patch = jsonpatch.make_patch(pod, mutated).patch
                warning = json.loads(mutated["metadata"]["annotations"][STATUS]).get("warning")
                if warning is not None:  # kubectl shows it to whoever applied the pod
                    response["warnings"] = [f"tollway: {warning}"]
                if patch:
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
                    log.info("injected %s/%s", namespace,
                             (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName"))
    return {"apiVersion": body.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
            "response": response}


# -- offline -------------------------------------------------------------------------------------

def pod_templates(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod (or pod templates) inside one manifest object, to mutate in place."""
    kind = doc.get("kind")
    def child(parent: dict[str, Any], key: str) -> dict[str, Any]:  # absent or null (an empty field): {}
        value = parent.get(key)
        if not isinstance(value, dict):
            value = parent[key] = {}
        return value

    if kind == "Pod":
        yield doc
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        yield child(child(doc, "spec"), "template")
    elif kind == "CronJob":
        yield child(child(child(child(doc, "spec"), "jobTemplate"), "spec"), "template")
    elif kind == "List":
        for item in doc.get("items") or []:
            if isinstance(item, dict):
                yield from pod_templates(item)


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else none (a field of another shape: :func:`mutate` refuses it)."""
    return value if isinstance(value, dict) else {}


def inject_documents(docs: list[Any], settings: Settings, namespace: str | None) -> list[Any]:
    """Every pod template of ``docs`` injected (unless labelled tollway.dev/inject: "false")."""
    out = []
    for doc in docs:
        if not isinstance(doc, dict):
            out.append(doc)
            continue
        doc = copy.deepcopy(doc)
        ns = namespace or _mapping(doc.get("metadata")).get("namespace") or "default"
        for template in pod_templates(doc):
            labels = _mapping(template.get("metadata")).get("labels")
            if isinstance(labels, dict) and str(labels.get(LABEL, "")).lower() == "false":
                continue
            template.update(mutate(template, ns, settings))
        out.append(doc)
    return out


# -- the command ---------------------------------------------------------------------------------

def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", default=[], metavar="FILE",
                        help="inject the pod templates of these manifests (- for stdin) and print them (offline)")
    parser.add_argument("--namespace", help="-f: the namespace of objects that name none, in their identity "
                                            "(default: default, with a warning)")
    parser.add_argument("--webhook", action="store_true", help="serve the mutating admission webhook (POST /inject)")
    parser.add_argument("--listen", default=_env("TOLLWAY_INJECT_LISTEN", "0.0.0.0:8443"),
                        help="--webhook: HOST:PORT (default %(default)s)")
    parser.add_argument("--tls-cert", default=os.environ.get("TOLLWAY_INJECT_TLS_CERT"),
                        help="--webhook: the serving certificate (re-read when it changes)")
    parser.add_argument("--tls-key", default=os.environ.get("TOLLWAY_INJECT_TLS_KEY"), help="--webhook: its key")
    parser.add_argument("--image", default=_env("TOLLWAY_IMAGE", Settings.image),
                        help="the Tollway image the sidecar runs (env TOLLWAY_IMAGE; default %(default)s)")
    parser.add_argument("--trust-domain", default=_env("TOLLWAY_TRUST_DOMAIN", Settings.trust_domain),
                        help="the SPIFFE trust domain of workload identities (default %(default)s)")
    parser.add_argument("--hosts", default=_env("TOLLWAY_INTERCEPT_HOSTS", " ".join(Settings.hosts)),
                        help="provider hosts to intercept (default %(default)r)")
    parser.add_argument("--intercept-cidrs", default=_env("TOLLWAY_INTERCEPT_CIDRS", ""),
                        help="more destinations to intercept, IPv4 or IPv6 CIDRs, comma- or space-separated "
                             "(e.g. a provider's published ranges)")
    parser.add_argument("--intercept-all", action="store_true", default=_env("TOLLWAY_INTERCEPT_ALL", "") == "true",
                        help="intercept every destination's port 443 (other hosts pass through Envoy untouched)")
    parser.add_argument("--policy-configmap", default=_env("TOLLWAY_POLICY_CONFIGMAP", Settings.policy_configmap))
    parser.add_argument("--provider-secret", default=_env("TOLLWAY_PROVIDER_SECRET", Settings.provider_secret))
    parser.add_argument("--redis-secret", default=_env("TOLLWAY_REDIS_SECRET", str(Settings.redis_secret)),
                        help="the Secret (key url) with the Redis URL budgets and rate limits share (env "
                             "TOLLWAY_REDIS_SECRET; default %(default)s); a pod waits until it exists. 'none': no "
                             "Redis on purpose, each pod counts its own budgets and rate limits (reset when it "
                             "restarts)")
    parser.add_argument("--workers", type=int, default=int(_env("TOLLWAY_SIDECAR_WORKERS", "1")))
    parser.add_argument("--spool-max", type=int, default=int(_env("TOLLWAY_SIDECAR_SPOOL_MAX", str(SPOOL_MAX))),
                        metavar="MIB",
                        help="MiB the sidecar's spend-aggregate spools may hold while Redis does not take them "
                             "(tollway serve --spool-max; the state volume's size limit follows; env "
                             "TOLLWAY_SIDECAR_SPOOL_MAX; default %(default)s)")
    parser.add_argument("--tollway-cpu", default=_env("TOLLWAY_SIDECAR_CPU", ""),
                        help="the tollway container's CPU limit unless a pod's tollway.dev/tollway-cpu says (env "
                             "TOLLWAY_SIDECAR_CPU; default: one CPU per worker; none: no limit)")
    parser.add_argument("--envoy-cpu", default=_env("TOLLWAY_ENVOY_CPU", ""),
                        help="the tollway-envoy container's CPU limit unless a pod's tollway.dev/envoy-cpu says "
                             "(env TOLLWAY_ENVOY_CPU; default: one CPU per Envoy worker thread, 2; none: no limit)")


class BadFlag(ValueError):
    """A flag (or its environment variable) the injector cannot start with; the message names it."""


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def intercept_cidrs(text: str) -> str:
    """``--intercept-cidrs`` (comma- or space-separated) as the init container takes it, space-separated;
    :class:`BadFlag` for one that is no IPv4 or IPv6 network (iptables would fail in every injected pod)."""
    out: list[str] = []
    for item in text.replace(",", " ").split():
        try:
            network = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise BadFlag(f"--intercept-cidrs (env TOLLWAY_INTERCEPT_CIDRS): {item!r} is no IPv4 or IPv6 CIDR "
                          "(such as 162.159.140.0/24)") from None
        if network not in out:
            out.append(network)
    return " ".join(out)


def intercept_hosts(text: str) -> tuple[str, ...]:
    """``--hosts`` as host names; :class:`BadFlag` for none, or one that is no DNS name (an address, a wildcard:
    the init container resolves each and Envoy intercepts by TLS server name)."""
    hosts = sidecar.hosts(text)
    if not hosts:
        raise BadFlag("--hosts (env TOLLWAY_INTERCEPT_HOSTS): no host given")
    for host in hosts:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            raise BadFlag(f"--hosts (env TOLLWAY_INTERCEPT_HOSTS): {host!r} is an address, not a host name "
                          "(TLS names the host): give addresses with --intercept-cidrs")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
            raise BadFlag(f"--hosts (env TOLLWAY_INTERCEPT_HOSTS): {host!r} is not a host name")
    return hosts


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of these flags; :class:`BadFlag` when one is wrong (checked now, not at each pod)."""
    for flag, env, value in (("--tollway-cpu", "TOLLWAY_SIDECAR_CPU", args.tollway_cpu),
                             ("--envoy-cpu", "TOLLWAY_ENVOY_CPU", args.envoy_cpu)):
        problem = cpu_problem(value) if value.strip() else None
        if problem is not None:
            raise BadFlag(f"{flag} (env {env}): {problem}")
    if args.spool_max < 1:
        raise BadFlag("--spool-max (env TOLLWAY_SIDECAR_SPOOL_MAX): must be 1 MiB or more")
    return Settings(image=args.image, trust_domain=args.trust_domain, hosts=intercept_hosts(args.hosts),
                    intercept_cidrs=intercept_cidrs(args.intercept_cidrs), intercept_all=args.intercept_all,
                    policy_configmap=args.policy_configmap, provider_secret=args.provider_secret,
                    redis_secret=None if args.redis_secret.strip().lower() in ("", "none") else args.redis_secret,
                    workers=args.workers, tollway_cpu=args.tollway_cpu.strip(), envoy_cpu=args.envoy_cpu.strip(),
                    spool_max=args.spool_max)


def listen_address(text: str) -> tuple[str, int]:
    """``--listen``'s host and port: ``HOST:PORT``, ``[IPV6]:PORT`` (``[::]``: dual-stack), ``:PORT`` (0.0.0.0);
    :class:`BadFlag` for anything else (a port that is no number from 0 to 65535)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise BadFlag(f"--listen (env TOLLWAY_INJECT_LISTEN): {text!r} is not HOST:PORT with a port from 0 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def run(args: argparse.Namespace) -> int:
    from ext_proc.k8s.webhook import ReloadingContext, serve  # the server: only for --webhook

    try:
        settings = settings_from(args)
        host, port = listen_address(args.listen) if args.webhook else ("", 0)
    except BadFlag as exc:
        print(f"tollway inject: {exc}", file=sys.stderr)
        return 2
    if args.webhook:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        tls = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                print("tollway inject: --tls-cert and --tls-key go together", file=sys.stderr)
                return 2
            try:
                tls = ReloadingContext(args.tls_cert, args.tls_key)
            except (OSError, ssl.SSLError) as exc:
                print(f"tollway inject: cannot load --tls-cert/--tls-key: {exc}", file=sys.stderr)
                return 2
        else:
            log.warning("serving plain HTTP: the API server only calls webhooks over HTTPS")
        serve(settings, host, port, tls)
        return 0
    if not args.filename:
        print("tollway inject: give -f FILE (offline) or --webhook", file=sys.stderr)
        return 2
    docs: list[Any] = []
    for name in args.filename:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
            docs.extend(d for d in yaml.safe_load_all(text) if d is not None)
        except (OSError, yaml.YAMLError) as exc:
            print(f"tollway inject: {name}: {exc}", file=sys.stderr)
            return 1
    if args.namespace is None:
        unnamed = [f"{doc.get('kind')}/{_mapping(doc.get('metadata')).get('name', '?')}" for doc in docs
                   if isinstance(doc, dict) and not _mapping(doc.get("metadata")).get("namespace")
                   and any(True for _ in pod_templates(copy.deepcopy(doc)))]
        if unnamed:  # the identity names the namespace: applied elsewhere, the pod is billed to the wrong one
            print(f"tollway inject: warning: {', '.join(unnamed)} name{'s' if len(unnamed) == 1 else ''} no "
                  f"namespace: {'its' if len(unnamed) == 1 else 'their'} identity says "
                  f"spiffe://{settings.trust_domain}/ns/default/...; give --namespace NS", file=sys.stderr)
    try:
        out = inject_documents(docs, settings, args.namespace)
    except Refused as exc:
        print(f"tollway inject: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False, width=120))
    return 0
