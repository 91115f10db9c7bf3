"""Istio mode end to end, without a cluster: sidecars patched by k8s/'s EnvoyFilter, a shared Tollway.

Each "sidecar" is a real Envoy shaped like an Istio sidecar's outbound HTTP listener for port 80
(virtual hosts ``api.openai.com:80``, ``api.anthropic.com:80``, ``other.example:80``), with the
shipped ``EnvoyFilter``'s patches applied as istiod would. Istio's agent would hand the sidecar
its workload certificate over SDS (secrets ``default`` and ``ROOTCA``); here the same secrets
come from files. Tollway runs as the shared Deployment does: ``tls://`` with the mesh CA as the
client CA, accepting any workload of the trust domain, and the shipped Istio policy. The
ServiceEntry clusters reach the fake provider in plain HTTP (TLS origination to a real provider
cannot be shown here).

Shown: a sidecar whose certificate carries the SPIFFE ID of ``search/search-api`` has its
request identified as that workload and recorded under its team; a Claude model asked at
api.openai.com goes to Anthropic's cluster (Tollway's label route); another host is untouched;
a sidecar whose certificate (same CA) has no SPIFFE ID gets no stream: its request is refused
and never reaches a provider; a pod that opens its own ext_proc stream with its mesh certificate
cannot claim another workload's SPIFFE ID in the message's attribute; the provider's account
headers never reach the application; with Tollway down the application gets the JSON error its
SDK reads.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import orjson
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

from ext_proc.stack import ROOT, _http_ok, envoy_binary, free_port
from tests.certs import CA, Issued
from tests.e2e.k8s_checks import apply_envoy_filter, kustomize, sidecar_like

pytestmark = pytest.mark.e2e

WORKLOAD = "spiffe://cluster.local/ns/search/sa/search-api"
PROVIDER_KEY = "sk-test-provider-key-istio"
HOSTS = ("api.openai.com", "api.anthropic.com", "other.example")


def _file_sds(node: Any, files: dict[str, Path]) -> Any:
    """The config with every SDS source (Istio's agent) replaced by a file holding the same secret."""
    if isinstance(node, dict):
        if "sds_config" in node:
            path = str(files[node["name"]])
            return {**node, "sds_config": {"resource_api_version": "V3", "path_config_source": {"path": path}}}
        return {key: _file_sds(value, files) for key, value in node.items()}
    if isinstance(node, list):
        return [_file_sds(item, files) for item in node]
    return node


class Mesh:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mock_port = free_port()
        self.tollway_port = free_port()
        self.tollway_admin = free_port()
        self.log = work / "requests.jsonl"
        docs = kustomize(ROOT / "k8s" / "overlays" / "istio")
        (self.envoy_filter,) = [d for d in docs if d["kind"] == "EnvoyFilter"]
        (policy_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tollway-policy"]
        keys = work / "providers"
        keys.mkdir()
        for name in ("openai", "anthropic"):
            (keys / name).write_text(PROVIDER_KEY)
        policy = policy_map["data"]["policy.yaml"].replace("/var/run/secrets/tollway/providers", str(keys))
        (work / "policy.yaml").write_text(policy)
        self.ca = CA(work, "mesh")

    def start(self, name: str, argv: list[str], ready: str) -> None:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - the child's
        proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT)
        self.procs.append(proc)
        deadline = time.monotonic() + 40
        while not _http_ok(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{(self.work / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.05)

    def start_tollway(self) -> None:
        server = self.ca.issue("tollway", dns=("tollway.tollway-system.svc.cluster.local",),
                               uris=("spiffe://cluster.local/ns/tollway-system/sa/tollway",), server=True)
        tollway = [sys.executable, "-m", "ext_proc.cli"]
        self.start("mock", [*tollway, "mock-provider", "--port", str(self.mock_port), "--api-key", PROVIDER_KEY],
                   f"http://127.0.0.1:{self.mock_port}/healthz")
        # The shared Deployment's arguments (k8s/overlays/istio/tollway.yaml), with this test's files and ports.
        self.start("tollway", [
            *tollway, "serve", f"--listen=tls://127.0.0.1:{self.tollway_port}", f"--tls-cert={server.cert}",
            f"--tls-key={server.key}", f"--tls-client-ca={self.ca.cert}", "--tls-client-san=spiffe://cluster.local/*",
            f"--policy={self.work / 'policy.yaml'}", "--workers=1", f"--admin-port={self.tollway_admin}",
            f"--log-file={self.log}",
        ], f"http://127.0.0.1:{self.tollway_admin}/readyz")

    def sidecar(self, name: str, identity: Issued) -> int:
        """An Envoy shaped like an Istio sidecar, the EnvoyFilter applied, holding ``identity``; its port."""
        port, admin = free_port(), free_port()
        clusters = [{"name": f"outbound|80||{host}", "type": "STATIC", "connect_timeout": "1s",
                     "load_assignment": {"cluster_name": f"outbound|80||{host}", "endpoints": [{"lb_endpoints": [
                         {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                      "port_value": self.mock_port}}}}]}]}}
                    for host in HOSTS]
        config = apply_envoy_filter(sidecar_like(port, {h: f"outbound|80||{h}" for h in HOSTS}, clusters, admin),
                                    self.envoy_filter)
        secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        secrets = {
            "default": {"@type": secret, "name": "default", "tls_certificate": {
                "certificate_chain": {"filename": str(identity.cert)}, "private_key": {"filename": str(identity.key)}}},
            "ROOTCA": {"@type": secret, "name": "ROOTCA",
                       "validation_context": {"trusted_ca": {"filename": str(self.ca.cert)}}},
        }
        files = {}
        for secret_name, resource in secrets.items():
            files[secret_name] = self.work / f"{name}-{secret_name}.yaml"
            files[secret_name].write_text(yaml.safe_dump({"resources": [resource]}))
        config = _file_sds(config, files)
        (ext_proc,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "tollway_ext_proc"]
        address = ext_proc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert address["socket_address"]["address"] == "tollway.tollway-system.svc.cluster.local"
        address["socket_address"] = {"address": "127.0.0.1", "port_value": self.tollway_port}
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(config))
        self.start(name, [envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
                          "--log-level", "warn", "--base-id", str(port)], f"http://127.0.0.1:{admin}/ready")
        return port

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.log.read_bytes().splitlines()] if self.log.exists() else []

    def record(self, request_id: str | None) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [r for r in self.records() if r["request_id"] == request_id]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no record for {request_id}")

    def provider_saw(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"http://127.0.0.1:{self.mock_port}/_mock/requests").json())

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    try:
        mesh.start_tollway()
        yield mesh
    finally:
        mesh.stop()


def _client(port: int, host: str) -> openai.OpenAI:
    # What the application does in Istio mode: OPENAI_BASE_URL=http://api.openai.com/v1 (its sidecar
    # catches the connection); here the sidecar's port is dialled and the Host header says where to.
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-the-apps-own-key", max_retries=0,
                         timeout=20, default_headers={"host": host})


def test_a_sidecars_mesh_certificate_names_its_workload(mesh: Mesh) -> None:
    port = mesh.sidecar("search-api", mesh.ca.issue("search-api", uris=(WORKLOAD,), server=False))
    client = _client(port, "api.openai.com")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello from the mesh"}])
    assert raw.parse().choices[0].message.content
    record = mesh.record(raw.headers.get("x-tollway-request-id"))
    assert (record["team"], record["workload"], record["provider"], record["outcome"]) == \
        ("search", WORKLOAD, "openai", "ok")
    # A Claude model asked at api.openai.com: Tollway's label sends it to Anthropic's Istio cluster.
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": "Hello, Claude"}])
    assert raw.headers["x-tollway-provider"] == "anthropic"
    assert raw.parse().object == "chat.completion"
    assert mesh.record(raw.headers.get("x-tollway-request-id"))["served_model"].startswith("claude")
    saw = mesh.provider_saw()
    assert [r["path"] for r in saw] == ["/v1/chat/completions", "/v1/messages"]
    assert "sk-the-apps-own-key" not in json.dumps(saw)
    # Another host on the same listener: not processed (the filter is enabled on the provider hosts only).
    count = len(mesh.records())
    other = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={
        "host": "other.example", "authorization": "Bearer sk-the-apps-own-key"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert other.status_code == 401  # the fake provider itself: the app's key went through untouched
    assert not [h for h in other.headers if h.startswith("x-tollway-")]
    time.sleep(0.3)
    assert len(mesh.records()) == count


def test_a_sidecar_without_a_spiffe_id_is_refused(mesh: Mesh) -> None:
    port = mesh.sidecar("anonymous", mesh.ca.issue("anonymous", dns=("search-api.search",), server=False))
    response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"host": "api.openai.com"},
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500  # Tollway refused the channel; the filter fails closed
    assert mesh.provider_saw() == []
    assert "none of the accepted names" in (mesh.work / "tollway.log").read_text()


def _own_stream(mesh: Mesh, identity: Issued, claim: str | None, request_id: str) -> list[pb.ProcessingResponse]:
    """What a pod can do with its own mesh certificate: open an ext_proc stream to the shared Tollway
    itself (SECURITY.md) and write the message's attributes, ``connection.uri_san_peer_certificate``
    naming ``claim``; a chat request for gpt-4o-mini, sent as the Istio sidecar's filter does
    (buffered: the body only after the headers' answer lets it go on)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=mesh.ca.cert.read_bytes(),
                                               private_key=identity.key.read_bytes(),
                                               certificate_chain=identity.cert.read_bytes())
    attributes = {}
    if claim is not None:
        claimed = struct_pb2.Struct()
        claimed.update({"connection.uri_san_peer_certificate": claim})
        attributes["envoy.filters.http.ext_proc"] = claimed
    headers = [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "api.openai.com"),
               ("content-type", "application/json"), ("x-request-id", request_id)]
    head = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers])), attributes=attributes)
    body = pb.ProcessingRequest(request_body=pb.HttpBody(
        body=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', end_of_stream=True))
    options = [("grpc.ssl_target_name_override", "tollway.tollway-system.svc.cluster.local")]
    outbox: queue.Queue[pb.ProcessingRequest | None] = queue.Queue()
    outbox.put(head)
    answers = []
    with grpc.secure_channel(f"127.0.0.1:{mesh.tollway_port}", credentials, options) as channel:
        for answer in pb_grpc.ExternalProcessorStub(channel).Process(iter(outbox.get, None), timeout=5):
            answers.append(answer)
            done = answer.HasField("immediate_response") or answer.HasField("request_body")
            outbox.put(None if done else body)
    return answers


def test_a_pods_own_stream_cannot_claim_another_workloads_identity(mesh: Mesh) -> None:
    """The stream's certificate names the caller: a SPIFFE ID the message claims is the caller's
    word, and one that is not the certificate's is a 403 in the client's format, recorded under
    the certificate's own workload (when the policy knows it) and logged, never served."""
    rogue_id = "spiffe://cluster.local/ns/rogue/sa/app"  # any workload of the mesh: --tls-client-san admits it
    rogue = mesh.ca.issue("rogue", uris=(rogue_id,), server=False)
    search = mesh.ca.issue("search-api", uris=(WORKLOAD,), server=False)
    # Controls: as itself the rogue pod is nobody (401); search-api's own ID, claimed or not, is search.
    (alone,) = _own_stream(mesh, rogue, None, "rogue-alone")
    assert alone.immediate_response.status.code == 401
    for claim in (None, WORKLOAD):
        answers = _own_stream(mesh, search, claim, f"search-{claim is not None}")
        assert not answers[-1].HasField("immediate_response"), answers
        assert answers[-1].request_body.response.header_mutation.set_headers  # served: labelled, key added
    # The attack: the rogue pod claims search-api's identity; search-api claims another workload.
    for identity, claim, request_id in ((rogue, WORKLOAD, "rogue-as-search"),
                                        (search, rogue_id, "search-as-rogue")):
        refused = _own_stream(mesh, identity, claim, request_id)[-1]
        assert refused.HasField("immediate_response"), f"{request_id}: served as the workload it claimed"
        assert refused.immediate_response.status.code == 403, refused
        error = orjson.loads(refused.immediate_response.body)["error"]  # OpenAI's format, as the client asked
        assert error["code"] == "workload_mismatch" and "certificate" in error["message"]
    assert (mesh.record("rogue-as-search")["team"], mesh.record("rogue-as-search")["status"]) == (None, 403)
    record = mesh.record("search-as-rogue")  # the record names who called, not whom it claimed
    assert (record["team"], record["workload"], record["error"]) == ("search", WORKLOAD, "workload_mismatch")
    assert not [r for r in mesh.records() if r["request_id"] in ("rogue-as-search", "search-as-rogue")
                and r["outcome"] != "rejected"]
    assert mesh.provider_saw() == []
    log = (mesh.work / "tollway.log").read_text()
    assert "refused workload_mismatch" in log and PROVIDER_KEY not in log


def _own_try(mesh: Mesh, identity: Issued, targets: str, request_id: str) -> list[pb.ProcessingResponse]:
    """A pod's own stream marked as a fallback try (the per-try filter's ``x-tollway-filter: upstream``),
    with the chain, slot and path it writes itself."""
    credentials = grpc.ssl_channel_credentials(root_certificates=mesh.ca.cert.read_bytes(),
                                               private_key=identity.key.read_bytes(),
                                               certificate_chain=identity.cert.read_bytes())
    host = struct_pb2.Struct()
    host.update({"xds.upstream_host_metadata":
                 'filter_metadata { key: "tollway" value { fields { key: "slot" value { string_value: "0" } } } }'})
    metadata = base_pb2.Metadata()
    metadata.filter_metadata["tollway"].update({"targets": targets, "path": "/v1/chat/completions",
                                                "alias": "gpt-4o-mini", "team": "search"})
    headers = [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "api.openai.com"),
               ("content-type", "application/json"), ("x-request-id", request_id)]
    head = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers])),
        attributes={"envoy.filters.http.ext_proc": host}, metadata_context=metadata)
    body = pb.ProcessingRequest(request_body=pb.HttpBody(
        body=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', end_of_stream=True))
    options = [("grpc.ssl_target_name_override", "tollway.tollway-system.svc.cluster.local")]
    with grpc.secure_channel(f"127.0.0.1:{mesh.tollway_port}", credentials, options) as channel:
        return list(pb_grpc.ExternalProcessorStub(channel).Process(
            iter([head, body]), timeout=5, metadata=(("x-tollway-filter", "upstream"),)))


def test_a_pods_own_try_stream_gets_no_provider_key(mesh: Mesh) -> None:
    """A stream marked as a fallback try carries metadata its opener wrote: on the shared tls://
    Tollway it is served only within the plan of the certificate's own workload (Istio mode has no
    fallback aliases, so never), never with a target built for whatever provider it names."""
    rogue = mesh.ca.issue("rogue", uris=("spiffe://cluster.local/ns/rogue/sa/app",), server=False)
    search = mesh.ca.issue("search-api", uris=(WORKLOAD,), server=False)
    for identity, targets in ((rogue, "openai gpt-4o-mini"), (rogue, "anthropic claude-3-5-haiku-20241022"),
                              (search, "openai gpt-4o"), (search, "openai gpt-4o-mini")):
        answers = _own_try(mesh, identity, targets, "own-try")
        assert PROVIDER_KEY not in repr(answers), f"{identity.cert.name} {targets}: the provider key handed out"
        (refused,) = [a.immediate_response for a in answers if a.HasField("immediate_response")]
        assert refused.status.code == 403 and orjson.loads(refused.body)["error"]["code"] == "attempt_refused"
    assert mesh.provider_saw() == []
    log = (mesh.work / "tollway.log").read_text()
    assert "refused attempt_refused" in log and "ns/rogue/sa/app" in log and PROVIDER_KEY not in log


def test_the_providers_account_headers_never_reach_the_application(mesh: Mesh) -> None:
    port = mesh.sidecar("search-api", mesh.ca.issue("search-api", uris=(WORKLOAD,), server=False))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    direct = httpx.post(f"http://127.0.0.1:{mesh.mock_port}/v1/chat/completions", json=body,
                        headers={"authorization": f"Bearer {PROVIDER_KEY}"})
    assert {"openai-organization", "openai-project"} <= set(direct.headers)  # what the provider names
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                        headers={"host": "api.openai.com", "authorization": "Bearer sk-the-apps-own-key"})
    assert answer.status_code == 200
    assert answer.headers.get("x-tollway-request-id")
    assert not {"openai-organization", "openai-project", "anthropic-organization-id"} & set(answer.headers)


def test_with_tollway_down_the_application_gets_its_sdks_json_error(mesh: Mesh) -> None:
    port = mesh.sidecar("search-api", mesh.ca.issue("search-api", uris=(WORKLOAD,), server=False))
    tollway = mesh.procs[1]
    tollway.terminate()
    tollway.wait(30)
    body = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    openai_answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                               headers={"host": "api.openai.com"})
    assert openai_answer.status_code == 500
    assert openai_answer.json()["error"]["message"].startswith("Tollway gateway error (ext_proc_error")
    anthropic_answer = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=body,
                                  headers={"host": "api.anthropic.com"})
    assert anthropic_answer.status_code == 500
    assert anthropic_answer.json()["type"] == "error"
    assert anthropic_answer.json()["error"]["type"] == "api_error"
    # Another host's errors are not Tollway's to dress: the provider hosts' format only.
    other = httpx.post(f"http://127.0.0.1:{port}/nowhere", headers={"host": "nowhere.example"})
    assert other.status_code == 404
    assert other.text == ""
    assert mesh.provider_saw() == []
