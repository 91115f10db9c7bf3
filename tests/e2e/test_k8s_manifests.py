"""Every manifest in k8s/ renders and validates; every Envoy config in it passes ``envoy --mode validate``.

Kustomizations are rendered with ``kubectl kustomize``; each object is checked against its
schema (:mod:`tests.e2e.k8s_checks` says which); the policies compile; the injected pods of the
examples validate too, and so does the Envoy bootstrap inside them; the Istio ``EnvoyFilter``'s
patches, applied to a sidecar-shaped config, pass Envoy's validation.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.envoy_config import TEMPLATE, set_bodies_buffered
from ext_proc.k8s import inject, sidecar
from ext_proc.policy.compile import compile_policy
from ext_proc.server.coalesce import MAX_BODY
from ext_proc.stack import ROOT, envoy_binary
from tests.e2e.k8s_checks import apply_envoy_filter, kustomize, sidecar_like, validate

pytestmark = pytest.mark.e2e

K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["base", "policy", "namespace", "overlays/sidecar", "overlays/istio"]


def envoy_validate(config: dict[str, Any] | str, work: Path) -> None:
    text = config if isinstance(config, str) else json.dumps(config)
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "--config-yaml", text],
                          capture_output=True, text=True, cwd=work)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(K8S / name) for name in KUSTOMIZATIONS}


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_every_object_validates(rendered: dict[str, Any], name: str) -> None:
    docs = rendered[name]
    assert docs
    for doc in docs:
        validate(doc)
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "an object is defined twice"


def test_the_examples_validate() -> None:
    for path in sorted((K8S / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            validate(doc)


def test_the_checks_catch_mistakes(rendered: dict[str, Any]) -> None:
    docs = rendered["overlays/istio"] + rendered["overlays/sidecar"]
    mistakes = {
        ("Deployment", "tollway"): lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePulPolicy="x"),
        ("Certificate", "tollway-intercept-ca"): lambda d: d["spec"].update(dnsName=["x"]),
        ("ServiceEntry", "llm-providers"): lambda d: d["spec"].update(resolution="BOGUS"),
        ("ServiceMonitor", "tollway"): lambda d: d["spec"]["endpoints"][0].update(paht="/x"),
        ("EnvoyFilter", "tollway"): lambda d: d["spec"]["configPatches"][0].update(applyTo="NOPE"),
        ("Bundle", "tollway-trust"): lambda d: d["spec"]["target"].update(configmap={"key": "x"}),
    }
    for (kind, name), mistake in mistakes.items():
        doc = copy.deepcopy(_find(docs, kind, name))
        mistake(doc)
        with pytest.raises(Exception):  # noqa: B017 - a schema error of whichever checker owns the kind
            validate(doc)


def test_only_sidecar_mode_installs_the_interception_ca(rendered: dict[str, Any]) -> None:
    """Istio mode intercepts nothing: no CA, trust bundle or issuer (nor cert-manager, trust-manager)."""
    managed = {"cert-manager.io/v1", "trust.cert-manager.io/v1alpha1"}
    assert [d["kind"] for d in rendered["overlays/istio"] if d["apiVersion"] in managed] == []
    assert [d["kind"] for d in rendered["base"] if d["apiVersion"] in managed] == []
    sidecar_mode = rendered["overlays/sidecar"]
    assert _find(sidecar_mode, "Certificate", "tollway-intercept-ca")["spec"]["isCA"] is True
    assert _find(sidecar_mode, "ClusterIssuer", "tollway-intercept-ca")
    assert _find(sidecar_mode, "Bundle", "tollway-trust")


def test_the_interception_ca_lasts_what_the_readme_says(rendered: dict[str, Any]) -> None:
    """10 years, renewed 30 days before the end (cert-manager's default: at 2/3, after 6.7 years)."""
    ca = _find(rendered["overlays/sidecar"], "Certificate", "tollway-intercept-ca")["spec"]
    hours = {key: int(ca[key].removesuffix("h")) for key in ("duration", "renewBefore")}
    assert hours == {"duration": 87600, "renewBefore": 720}
    readme = (K8S / "README.md").read_text()
    assert "valid 10 years; cert-manager renews it 30 days before it\n  expires (`renewBefore: 720h`" in readme


def test_the_policies_compile(rendered: dict[str, Any]) -> None:
    for name in ("namespace", "overlays/istio"):  # sidecar mode: each namespace has its own
        policy = _find(rendered[name], "ConfigMap", "tollway-policy")["data"]["policy.yaml"]
        compiled = compile_policy(policy, f"{name}/policy.yaml")
        assert compiled.workload("spiffe://cluster.local/ns/search/sa/search-api") is not None


def test_the_injected_example_pods_validate_and_their_envoy_too(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((K8S / "examples" / "search-api.yaml").read_text()))
    injected = inject.inject_documents(docs, inject.Settings(), None)
    deployment = _find(injected, "Deployment")
    validate(deployment)
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["tollway-init", "tollway", "tollway-envoy"]
    assert [c.get("restartPolicy") for c in spec["initContainers"]] == [None, "Always", "Always"]
    env = {e["name"]: e.get("value") for e in spec["initContainers"][1]["env"]}
    assert env["TOLLWAY_WORKLOAD"] == "spiffe://cluster.local/ns/search/sa/search-api"
    (envoy,) = [c for c in spec["initContainers"] if c["name"] == "tollway-envoy"]
    bootstrap = json.loads(envoy["args"][envoy["args"].index("--config-yaml") + 1])
    # Validation reads the clusters file and the SDS file: give it the ones Tollway and the image would.
    (tmp_path / "clusters.yaml").write_text("resources: []\n")
    (tmp_path / "sds.yaml").write_text(yaml.safe_dump(sidecar.intercept_sds()))
    bootstrap["dynamic_resources"]["cds_config"]["path_config_source"] = {
        "path": str(tmp_path / "clusters.yaml"), "watched_directory": {"path": str(tmp_path)}}
    text = json.dumps(bootstrap).replace(sidecar.INTERCEPT_SDS, str(tmp_path / "sds.yaml"))
    envoy_validate(text, tmp_path)
    names = [listener["name"] for listener in bootstrap["static_resources"]["listeners"]]
    assert names == ["tollway", "tollway_pod", "tollway_intercept"]


def test_the_images_sds_file_is_the_one_the_bootstrap_expects() -> None:
    shipped = yaml.safe_load((K8S / "image" / "intercept-sds.yaml").read_text())
    assert shipped == sidecar.intercept_sds(sidecar.INTERCEPT_CERT_DIR)


def test_the_webhook_configuration_reaches_the_injector(rendered: dict[str, Any]) -> None:
    docs = rendered["overlays/sidecar"]
    config = _find(docs, "MutatingWebhookConfiguration")
    service = _find(docs, "Service", "tollway-injector")
    deployment = _find(docs, "Deployment", "tollway-injector")
    certificate = _find(docs, "Certificate", "tollway-injector")
    # caBundle is a root CA that outlives the serving certificate's renewals (self-signed root -> CA Issuer
    # -> serving certificate): a self-signed serving certificate would swap caBundle at each renewal,
    # before the injector serves the new one, and the API server would refuse pods meanwhile.
    namespace, name = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    root = _find(docs, "Certificate", name)
    assert namespace == root["metadata"]["namespace"] == "tollway-system" and name != certificate["metadata"]["name"]
    assert root["spec"]["isCA"] is True and root["spec"]["privateKey"]["rotationPolicy"] == "Never"
    assert _find(docs, "Issuer", root["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    issuer = _find(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"] == {"ca": {"secretName": root["spec"]["secretName"]}}
    assert not certificate["spec"].get("isCA")
    for webhook in config["webhooks"]:
        ref = webhook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["path"], ref["port"]) == \
            ("tollway-injector", "tollway-system", "/inject", service["spec"]["ports"][0]["port"])
        assert webhook["failurePolicy"] == "Fail" and webhook["sideEffects"] == "None"
    assert f"{ref['name']}.{ref['namespace']}.svc" in certificate["spec"]["dnsNames"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["inject", "--webhook"]
    secret = deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert secret == certificate["spec"]["secretName"]
    # Opting in: a labelled namespace, or a labelled pod elsewhere; never kube-system or tollway-system.
    by_name = {w["name"]: w for w in config["webhooks"]}
    assert by_name["namespace.sidecar.tollway.dev"]["namespaceSelector"] == {
        "matchLabels": {"tollway.dev/inject": "enabled"}}
    assert by_name["object.sidecar.tollway.dev"]["objectSelector"] == {"matchLabels": {"tollway.dev/inject": "true"}}


def test_no_secret_is_in_the_manifests(rendered: dict[str, Any]) -> None:
    for docs in rendered.values():
        assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by hand, never kept in git"


def test_the_envoy_filter_adds_the_sidecars_own_ext_proc_filter(rendered: dict[str, Any]) -> None:
    envoy_filter = _find(rendered["overlays/istio"], "EnvoyFilter")
    (added,) = [p["patch"]["value"] for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    template = yaml.safe_load(TEMPLATE.read_text())
    set_bodies_buffered(template)  # the mesh answers message by message (see the overlay's comment)
    hcm = template["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (ours,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    assert added["typed_config"] == ours["typed_config"]  # the same processing as Tollway's Envoy, buffered
    assert added["disabled"] is True  # and only where a provider host's virtual host enables it


def _without_host(node: dict[str, Any]) -> dict[str, Any]:
    """A local-reply filter without its provider-host condition (the Istio filter's only addition)."""
    filters = [f for f in node.get("and_filter", {}).get("filters", [node])
               if f.get("header_filter", {}).get("header", {}).get("name") != ":authority"]
    return filters[0] if len(filters) == 1 else {"and_filter": {"filters": filters}}


def test_the_envoy_filter_answers_and_hides_as_tollways_own_envoy(rendered: dict[str, Any]) -> None:
    """The provider hosts' answers lose the same account headers, and the sidecar's own errors get the
    same JSON bodies, as in envoy/tollway.yaml: the two cannot drift apart."""
    patches = _find(rendered["overlays/istio"], "EnvoyFilter")["spec"]["configPatches"]
    template = yaml.safe_load(TEMPLATE.read_text())
    hcm = template["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    vhosts = [p for p in patches if p["applyTo"] == "VIRTUAL_HOST"]
    names = {p["match"]["routeConfiguration"]["vhost"]["name"] for p in vhosts}
    assert names == {f"{host}:80" for host in sidecar.PROVIDER_HOSTS}
    for patch in vhosts:
        removed = patch["patch"]["value"]["response_headers_to_remove"]
        assert removed == hcm["route_config"]["response_headers_to_remove"]
    (merged,) = [p["patch"]["value"] for p in patches if p["applyTo"] == "NETWORK_FILTER"]
    mappers = merged["typed_config"]["local_reply_config"]["mappers"]
    ours = hcm["local_reply_config"]["mappers"]
    assert [m["body_format_override"] for m in mappers] == [m["body_format_override"] for m in ours]
    assert [_without_host(m["filter"]) for m in mappers] == [m["filter"] for m in ours]
    for mapper in mappers:  # and only on the provider hosts: the listener carries all of the app's HTTP
        (host,) = [f for f in mapper["filter"]["and_filter"]["filters"]
                   if f.get("header_filter", {}).get("header", {}).get("name") == ":authority"]
        assert host["header_filter"]["header"]["string_match"]["safe_regex"]["regex"] == \
            r"^(api\.openai\.com|api\.anthropic\.com)(:80)?$"


def test_the_envoy_filter_patches_validate_on_a_sidecar(rendered: dict[str, Any], tmp_path: Path) -> None:
    envoy_filter = _find(rendered["overlays/istio"], "EnvoyFilter")
    clusters = [{"name": f"outbound|80||{host}", "type": "STRICT_DNS", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": f"outbound|80||{host}", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": host, "port_value": 443}}}}]}]}}
                for host in ("api.openai.com", "api.anthropic.com", "other.example")]
    # Istio's bootstrap has the SDS cluster (the agent's socket); validation needs it to exist.
    clusters.append({"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
                     "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                         "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                         "explicit_http_config": {"http2_protocol_options": {}}}},
                     "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                         "address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}]}]}})
    base = sidecar_like(80, {h: f"outbound|80||{h}" for h in ("api.openai.com", "api.anthropic.com", "other.example")},
                        clusters, 15000)
    patched = apply_envoy_filter(base, envoy_filter)
    hcm = patched["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    vhosts = {v["name"]: v for v in hcm["route_config"]["virtual_hosts"]}
    assert "typed_per_filter_config" in vhosts["api.openai.com:80"]
    assert "typed_per_filter_config" not in vhosts["other.example:80"]
    # A body streams to Tollway, held whole before the answer: the listener buffers as much as Tollway reads.
    assert patched["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == MAX_BODY
    envoy_validate(patched, tmp_path)
