"""Envoy's clusters for a policy: providers, chains, the static ``tollway envoy``, and Envoy's own verdict."""

from __future__ import annotations

import argparse
import copy
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc import envoy_config
from ext_proc.envoy_config import ClusterError, chain_cluster, policy_clusters, provider_cluster
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.schema import MAX_TARGETS
from ext_proc.server import app
from ext_proc.server.clusters import CONNECT_TIMEOUT_S
from ext_proc.stack import ENVOY_CONFIG, ROOT, Stack, envoy_binary, port_owner, private_directory, render_envoy

TEMPLATE: dict[str, Any] = yaml.safe_load(ENVOY_CONFIG.read_text())
SHIPPED = {name: provider_cluster(name, envoy_config.DEFAULT_ENDPOINTS[name]) for name in ("openai", "anthropic")}
STAND_INS = {name: "http://127.0.0.1:4" for name in ("openai", "claude", "azure-eu", "local")}
SOCK = "unix:/run/tollway/ext_proc.sock"
ADMIN = "/run/tollway/envoy-admin.sock"

POLICY = """\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
  claude: {kind: anthropic, cluster: anthropic, credential: {env: ANTHROPIC_API_KEY}}
  azure-eu:
    kind: azure-openai
    cluster: azure-openai-eu
    endpoint: https://contoso-eu.openai.azure.com
    api_version: "2024-10-21"
  local: {kind: openai-compatible, endpoint: "http://10.0.0.5:8000"}
routing:
  aliases:
    chat:
      targets:
        - {provider: openai, model: gpt-4o-mini, context_window: 128000}
        - {provider: claude, model: claude-3-5-haiku-20241022, context_window: 200000}
    balanced:
      strategy: weighted
      targets:
        - {provider: openai, model: gpt-4o, weight: 80}
        - {provider: azure-eu, model: gpt-4o-prod, weight: 20}
        - {provider: local, model: llama, weight: 0}
teams:
  app: {models: ["*"]}
"""
CHAINS = {
    "openai+anthropic",  # chat
    "openai+azure-openai-eu+local",  # balanced, openai drawn first
    "azure-openai-eu+openai+local",  # balanced, azure drawn first
    "openai+azure-openai-eu",  # balanced, a Responses request the local model's chat API cannot express
    "azure-openai-eu+openai",
}


def config() -> dict[str, Any]:
    return copy.deepcopy(TEMPLATE)


def clusters(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in cfg["static_resources"]["clusters"]}


def labelled_routes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if "cluster_header" in r["route"]]


def validate(cfg: dict[str, Any] | str, path: Path) -> None:
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def tollway_envoy(policy: Path, template: Path = envoy_config.TEMPLATE) -> int:
    parser = argparse.ArgumentParser()
    envoy_config.add_arguments(parser)
    return envoy_config.run(parser.parse_args(["--policy", str(policy), "--template", str(template)]))


# -- one chain cluster ----------------------------------------------------------------------------


def test_a_chain_cluster_has_one_priority_level_per_provider() -> None:
    cluster = chain_cluster("openai+anthropic", [("openai", SHIPPED["openai"]), ("claude", SHIPPED["anthropic"])])
    assert cluster["name"] == cluster["load_assignment"]["cluster_name"] == "openai+anthropic"
    assert cluster["type"] == "STRICT_DNS"  # the endpoints are host names
    levels = cluster["load_assignment"]["endpoints"]
    assert [level["priority"] for level in levels] == [0, 1]
    for level, (slot, provider, source, host) in zip(
        levels, [("0", "openai", "openai", "api.openai.com"), ("1", "claude", "anthropic", "api.anthropic.com")],
        strict=True,
    ):
        (endpoint,) = level["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {"address": host, "port_value": 443}
        assert endpoint["metadata"]["filter_metadata"] == {
            "tollway": {"slot": slot, "provider": provider, "host": host},  # host: the SNI
            "envoy.transport_socket_match": {"tollway_provider": source},
        }
    # each provider's own TLS settings, chosen by the endpoint's match label
    matches = cluster["transport_socket_matches"]
    assert [(m["name"], m["match"]) for m in matches] == [
        ("openai", {"tollway_provider": "openai"}),
        ("anthropic", {"tollway_provider": "anthropic"}),
    ]
    assert [m["transport_socket"]["typed_config"]["sni"] for m in matches] == ["api.openai.com", "api.anthropic.com"]
    assert matches[0]["transport_socket"] == SHIPPED["openai"]["transport_socket"]
    # the source clusters are not changed
    assert "metadata" not in SHIPPED["openai"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]


def test_a_chain_cluster_runs_the_upstream_filter_per_try() -> None:
    cluster = chain_cluster("openai+anthropic", [("openai", SHIPPED["openai"]), ("claude", SHIPPED["anthropic"])])
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    ext_proc, codec = options["http_filters"]
    assert (ext_proc["name"], codec["name"]) == ("envoy.filters.http.ext_proc", "envoy.filters.http.upstream_codec")
    grpc = ext_proc["typed_config"]["grpc_service"]
    assert grpc["envoy_grpc"] == {"cluster_name": "tollway_ext_proc"}
    assert grpc["initial_metadata"] == [{"key": "x-tollway-filter", "value": "upstream"}]
    # the chain comes in; a try abandoned at its first-byte timeout goes out (tollway.abandoned)
    assert ext_proc["typed_config"]["metadata_options"] == {"forwarding_namespaces": {"untyped": ["tollway"]},
                                                            "receiving_namespaces": {"untyped": ["tollway"]}}
    assert ext_proc["typed_config"]["failure_mode_allow"] is False
    assert ext_proc["typed_config"]["processing_mode"]["request_body_mode"] == "BUFFERED"
    # retries are the fallback: Envoy's default of 3 concurrent retries per cluster is far too few
    (thresholds,) = cluster["circuit_breakers"]["thresholds"]
    assert thresholds["max_retries"] >= 1000
    assert cluster["outlier_detection"]["consecutive_5xx"] > 0
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 0}}


def test_a_mocked_chain_is_static_and_plain_text() -> None:
    policy = compile_policy(POLICY)
    rendered = render_envoy(config(), listen_port=1, admin_socket=ADMIN, ext_proc_address=SOCK, stand_ins=STAND_INS,
                            policy=policy)
    cluster = clusters(rendered)["openai+anthropic"]
    assert cluster["type"] == "STATIC"
    assert [m["name"] for m in cluster["transport_socket_matches"]] == ["openai", "anthropic"]
    for match in cluster["transport_socket_matches"]:
        assert match["transport_socket"]["name"] == "envoy.transport_sockets.raw_buffer"
    for level in cluster["load_assignment"]["endpoints"]:
        (endpoint,) = level["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 4}
    assert not any("+" in name for name in clusters(render_envoy(
        config(), listen_port=1, admin_socket=ADMIN, ext_proc_address=SOCK, stand_ins=STAND_INS, policy=policy,
        ext_proc=False)))


# -- every chain of a policy ----------------------------------------------------------------------


def test_policy_clusters_has_every_provider_then_every_chain_once() -> None:
    policy = compile_policy(POLICY)
    names = [cluster["name"] for cluster in policy_clusters(policy)]
    assert names == ["openai", "anthropic", "azure-openai-eu", "local", *sorted(CHAINS)]
    by_name = {cluster["name"]: cluster for cluster in policy_clusters(policy)}
    slots = by_name["azure-openai-eu+openai+local"]["load_assignment"]["endpoints"]
    assert [level["lb_endpoints"][0]["metadata"]["filter_metadata"]["tollway"]["provider"] for level in slots] == [
        "azure-eu", "openai", "local"]
    assert policy_clusters(policy) == policy_clusters(policy)  # deterministic: the file's version is its hash
    assert [c["name"] for c in policy_clusters(None)] == ["openai", "anthropic"]  # open mode


def test_a_providers_endpoint_is_its_cluster_even_under_a_default_name() -> None:
    """A policy's endpoint for openai (a proxy, a local stand-in) is never silently ignored."""
    policy = compile_policy(POLICY.replace("openai: {kind: openai, credential: {env: OPENAI_API_KEY}}",
                                           "openai: {kind: openai, endpoint: 'https://llm-proxy.internal:8443'}"))
    (openai,) = [c for c in policy_clusters(policy) if c["name"] == "openai"]
    assert openai["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "llm-proxy.internal", "port_value": 8443}}
    assert openai["transport_socket"]["typed_config"]["sni"] == "llm-proxy.internal"
    # a stand-in wins over the endpoint (tollway up's fake provider)
    (standin,) = [c for c in policy_clusters(policy, {"openai": "http://127.0.0.1:9"}) if c["name"] == "openai"]
    assert standin["type"] == "STATIC" and "transport_socket" not in standin


@pytest.mark.parametrize(("url", "kind", "host"), [
    ("http://10.0.0.5:8000/v1", "STATIC", "10.0.0.5:8000"),
    ("http://[::1]:8000", "STATIC", "[::1]:8000"),
    ("http://localhost:27999/v1", "LOGICAL_DNS", "localhost:27999"),
    ("https://llm-proxy.internal:8443", "LOGICAL_DNS", "llm-proxy.internal:8443"),
    ("https://llm-proxy.internal:443/v1", "LOGICAL_DNS", "llm-proxy.internal"),  # the scheme's default port
    ("http://vllm.svc.cluster.local.:80", "LOGICAL_DNS", "vllm.svc.cluster.local"),
    ("https://api.openai.com", "LOGICAL_DNS", "api.openai.com"),
])
def test_a_providers_cluster_names_the_host_its_requests_are_sent(url: str, kind: str, host: str) -> None:
    """The route's auto_host_rewrite sends the endpoint's hostname: an IP address's (STATIC) cluster had
    none, so the client's own Host went to the provider with the provider's key, and a DNS name's
    was sent without its port."""
    cluster = provider_cluster("p", url)
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert (cluster["type"], endpoint["endpoint"]["hostname"]) == (kind, host)
    chain = chain_cluster("p+q", [("p", cluster), ("q", provider_cluster("q", "http://127.0.0.1:9"))])
    first, second = (level["lb_endpoints"][0] for level in chain["load_assignment"]["endpoints"])
    assert first["endpoint"]["hostname"] == first["metadata"]["filter_metadata"]["tollway"]["host"] == host
    assert second["endpoint"]["hostname"] == second["metadata"]["filter_metadata"]["tollway"]["host"] == "127.0.0.1:9"


def test_a_chain_through_a_provider_without_endpoint_names_it() -> None:
    policy = compile_policy(POLICY.replace('endpoint: "http://10.0.0.5:8000"', "cluster: vllm"))
    with pytest.raises(ClusterError, match=r"^alias 'balanced' falls back through provider 'local', which has no "
                                           r"endpoint: give it one \(providers.local.endpoint\)"):
        policy_clusters(policy)


def test_tollway_envoy_fails_on_a_provider_without_cluster_or_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace('endpoint: "http://10.0.0.5:8000"', "cluster: vllm"))
    assert tollway_envoy(path) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("tollway envoy: alias 'balanced' falls back through provider 'local', which has no endpoint")
    # A template that defines the cluster itself is enough.
    template = config()
    template["static_resources"]["clusters"].append(provider_cluster("vllm", "http://10.0.0.9:8000"))
    custom = tmp_path / "template.yaml"
    custom.write_text(yaml.safe_dump(template))
    assert tollway_envoy(path, custom) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    assert "openai+azure-openai-eu+vllm" in clusters(rendered)


# -- Envoy's verdict ----------------------------------------------------------------------------


def test_tollway_envoy_renders_a_config_envoy_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert tollway_envoy(path) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"# Rendered by `tollway envoy --policy {path}`: 4 provider cluster(s) and 5 fallback "
                          "cluster(s).\n")
    rendered = yaml.safe_load(out)
    assert set(clusters(rendered)) >= CHAINS
    assert clusters(rendered)["local"]["type"] == "STATIC"  # an IP endpoint
    assert clusters(rendered)["azure-openai-eu"]["transport_socket"]["typed_config"]["sni"] == (
        "contoso-eu.openai.azure.com")
    assert clusters(rendered)["openai+azure-openai-eu+local"]["type"] == "STRICT_DNS"
    validate(out, tmp_path / "envoy.yaml")


def test_rendered_stack_config_with_first_byte_timeouts_is_accepted(tmp_path: Path) -> None:
    policy = compile_policy(POLICY)
    plain = render_envoy(config(), listen_port=1, admin_socket=ADMIN, ext_proc_address=SOCK, stand_ins=STAND_INS,
                         policy=policy)
    assert sorted(r["route"]["retry_policy"]["per_try_idle_timeout"] for r in labelled_routes(plain)) == [
        "300s", "30s"]
    rendered = render_envoy(config(), listen_port=1, admin_socket=ADMIN, ext_proc_address=SOCK, stand_ins=STAND_INS,
                            policy=policy, first_byte_timeouts=("1s", "2s"))
    assert set(clusters(rendered)) >= CHAINS
    timeouts = {}
    for route in labelled_routes(rendered):
        headers = {h["name"] for h in route["match"]["headers"]}
        timeouts["stream" if "x-tollway-stream" in headers else "buffered"] = (
            route["route"]["retry_policy"]["per_try_idle_timeout"])
    assert timeouts == {"stream": "1s", "buffered": "2s"}
    validate(rendered, tmp_path / "envoy.yaml")


def test_a_labelled_routes_idle_timeout_lets_its_longest_chain_fall_back(tmp_path: Path) -> None:
    """Envoy's route idle timer runs from the request across all its tries: one no longer than the
    tries' first-byte timeouts would end a stalled first try with a 504 stream_idle_timeout, the
    next target never asked. The template's and any --first-byte-timeouts' allow 8 whole tries."""
    def seconds(duration: str) -> float:
        return float(duration.removesuffix("s"))

    def check(cfg: dict[str, Any]) -> dict[str, str]:
        found = {}
        for route in labelled_routes(cfg):
            per_try = seconds(route["route"]["retry_policy"]["per_try_idle_timeout"])
            idle = seconds(route["route"]["idle_timeout"])
            assert idle >= MAX_TARGETS * (per_try + CONNECT_TIMEOUT_S) + 10, route
            found[route["route"]["retry_policy"]["per_try_idle_timeout"]] = route["route"]["idle_timeout"]
        return found

    assert check(config()) == {"30s": "300s", "300s": "2450s"}  # never below the stream idle timeout (300 s)
    rendered = render_envoy(config(), listen_port=1, admin_socket=ADMIN, ext_proc_address=SOCK, stand_ins=STAND_INS,
                            policy=compile_policy(POLICY), first_byte_timeouts=("60s", "600s"))
    assert check(rendered) == {"60s": "530s", "600s": "4850s"}
    scaled = render_envoy(config(), listen_port=1, admin_socket=ADMIN, ext_proc_address=SOCK, stand_ins=STAND_INS,
                          first_byte_timeouts=("2s", "2s"), stream_idle_timeout="2s")
    assert check(scaled) == {"2s": "66s"}
    validate(rendered, tmp_path / "envoy.yaml")


def test_a_chain_falls_back_on_a_providers_refusal_of_the_gateways_account_or_its_timeout() -> None:
    """401 (the gateway's key), 403 (its account: a region, a project's permission), 408 and 429
    are the provider refusing the gateway, not the request: the next target, with its own account."""
    for route in labelled_routes(config()):
        assert route["route"]["retry_policy"]["retriable_status_codes"] == [401, 403, 408, 429]
        assert "retriable-status-codes" in route["route"]["retry_policy"]["retry_on"]


def test_tollway_envoy_refuses_a_broken_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(POLICY.replace("{provider: claude, model: claude", "{provider: cluade, model: claude"))
    assert tollway_envoy(path) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"{path}:16:22: routing.aliases.chat.targets[1].provider: unknown provider 'cluade' "
                   "(did you mean 'claude'?)\n")
    assert tollway_envoy(tmp_path / "missing.yaml") == 1
    assert capsys.readouterr().err.startswith("tollway envoy: [Errno 2] No such file or directory")


def test_tollway_envoy_sets_the_first_byte_timeouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    envoy_config.add_arguments(parser)
    args = parser.parse_args(["--policy", str(ROOT / "policies" / "example.yaml"), "--first-byte-timeouts", "7s,90s"])
    assert envoy_config.run(args) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"]
    timeouts = [r["route"]["retry_policy"]["per_try_idle_timeout"] for r in routes if "retry_policy" in r["route"]]
    assert timeouts == ["7s", "90s"]  # the streaming route first, then the buffered one
    # Every provider of the example gets its cluster.
    names = {c["name"] for c in config["static_resources"]["clusters"]}
    assert {"azure-openai-eu", "local-llm", "openai+anthropic", "anthropic+openai"} <= names
    with pytest.raises(SystemExit):
        parser.parse_args(["--policy", "p.yaml", "--first-byte-timeouts", "30"])


def test_tollway_envoy_sends_bodies_together_or_buffered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Together (the template's): each body right behind its headers, both answered at once, and
    Envoy's buffer filter before the router gives the request its content-length back. Buffered:
    message by message, for a deployment that prefers CPU at saturation to latency."""
    parser = argparse.ArgumentParser()
    envoy_config.add_arguments(parser)
    chains: list[list[str]] = []

    def ext_proc(*flags: str) -> dict[str, Any]:
        assert envoy_config.run(parser.parse_args(list(flags))) == 0
        out = capsys.readouterr().out
        validate(out, tmp_path / "envoy.yaml")
        hcm = yaml.safe_load(out)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        chains.append([f["name"] for f in hcm["typed_config"]["http_filters"]])
        (found,) = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
        return found["typed_config"]  # type: ignore[no-any-return]

    for together in (ext_proc(), ext_proc("--bodies", "together")):
        assert together["send_body_without_waiting_for_header_response"] is True
        assert together["processing_mode"]["request_body_mode"] == "STREAMED"
        assert together["processing_mode"]["response_body_mode"] == "STREAMED"
        assert chains[-1] == ["envoy.filters.http.ext_proc", "envoy.filters.http.buffer", "envoy.filters.http.router"]
    buffered = ext_proc("--bodies", "buffered")
    assert "send_body_without_waiting_for_header_response" not in buffered
    assert buffered["processing_mode"]["request_body_mode"] == buffered["processing_mode"]["response_body_mode"] == (
        "BUFFERED")
    assert chains[-1] == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    # Either way and back, idempotent: one buffer filter at most, exactly when bodies go together.
    cfg = config()
    for step in (envoy_config.set_bodies_together, envoy_config.set_bodies_together,
                 envoy_config.set_bodies_buffered, envoy_config.set_bodies_buffered, envoy_config.set_bodies_together):
        step(cfg)
    names = [f["name"] for f in cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"]]
    assert names == ["envoy.filters.http.ext_proc", "envoy.filters.http.buffer", "envoy.filters.http.router"]
    # A listener without Tollway's filter (plain Envoy, the benchmark's baseline) keeps no buffer filter.
    filters = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_proc"]
    envoy_config.set_bodies_together(cfg)
    assert [f["name"] for f in filters] == ["envoy.filters.http.router"]


def test_envoys_admin_is_a_private_unix_socket_never_a_port(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Envoy's admin is unauthenticated (a raised log level prints the provider key): the shipped
    bootstrap, what `tollway envoy` and `tollway up` render all put it on a 0600 socket next to
    Tollway's, and `tollway serve` asks that socket by default."""
    assert config()["admin"] == {"address": {"pipe": {"path": "/run/tollway/envoy-admin.sock", "mode": 0o600}}}
    monkeypatch.delenv("TOLLWAY_ENVOY_ADMIN", raising=False)
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    assert parser.parse_args([]).envoy_admin == "unix:/run/tollway/envoy-admin.sock"
    parser = argparse.ArgumentParser()
    envoy_config.add_arguments(parser)
    for flags, path, mode in (([], "/run/tollway/envoy-admin.sock", 0o600),
                              (["--admin-socket", "/t/a.sock"], "/t/a.sock", 0o600),
                              # Envoy another user of Tollway's group: its socket where it may create one,
                              # and open to the group, so Tollway confirms the clusters Envoy loaded
                              (["--admin-socket", "/run/envoy/a.sock", "--socket-group"], "/run/envoy/a.sock", 0o660)):
        assert envoy_config.run(parser.parse_args(flags)) == 0
        assert yaml.safe_load(capsys.readouterr().out)["admin"] == {"address": {"pipe": {"path": path, "mode": mode}}}
    rendered = render_envoy(config(), listen_port=1, admin_socket="/w/run/envoy-admin.sock", ext_proc_address=SOCK)
    assert rendered["admin"] == {"address": {"pipe": {"path": "/w/run/envoy-admin.sock", "mode": 0o600}}}


def test_the_ext_proc_cluster_resolves_a_service_name_and_takes_an_address_as_is(tmp_path: Path) -> None:
    cfg = config()
    tls = envoy_config.ClientTLS(cert="/c.pem", key="/k.pem", server_ca="/ca.pem", server_name="tollway")
    envoy_config.set_ext_proc(cfg, "tls://tollway.tollway-system.svc:50051", tls)
    cluster = clusters(cfg)["tollway_ext_proc"]
    assert cluster["type"] == "STRICT_DNS"  # a name: STATIC would refuse it
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "tollway.tollway-system.svc", "port_value": 50051}}
    envoy_config.set_ext_proc(cfg, "tcp://127.0.0.1:50051")
    cluster = clusters(cfg)["tollway_ext_proc"]
    assert cluster["type"] == "STATIC" and "transport_socket" not in cluster
    envoy_config.set_ext_proc(cfg, "unix:/run/tollway/ext_proc.sock")
    assert clusters(cfg)["tollway_ext_proc"]["type"] == "STATIC"
    envoy_config.set_ext_proc(cfg, "tcp://tollway.tollway-system.svc:50051")
    cfg.pop("dynamic_resources")  # the clusters file is not there
    validate(cfg, tmp_path / "envoy.yaml")


def test_a_port_a_stopped_instance_left_in_time_wait_is_free() -> None:
    """`make run` again right after Ctrl-C: the closed connections of the last run wait out TIME_WAIT
    for a minute, listened on by no one; the servers bind with SO_REUSEADDR, and so does the check
    (it said "in use by another process" for that minute)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server closes first (as the admin's HTTP/1.0 answers do): its side waits
    client.recv(1)
    client.close()
    server.close()
    assert port_owner(port) is None
    held = socket.socket()  # a real listener on it is another story
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", port))
    held.listen()
    try:
        assert port_owner(port) is not None
    finally:
        held.close()


def test_a_long_workdirs_run_directory_is_a_private_temporary_one_gone_when_the_stack_stops(tmp_path: Path) -> None:
    """Unix socket paths are short: under a deep workdir the run directory (Envoy's admin socket,
    Tollway's, the clusters file) is a temporary one, removed at stop (each `make run` left one)."""
    stack = Stack(tmp_path / ("deep" * 25))
    run = stack.run_dir
    assert not run.is_relative_to(stack.workdir) and len(str(stack.admin_socket)) <= 100
    private_directory(run)
    (run / "clusters.yaml").write_text("resources: []\n")
    stack.stop()
    assert not run.exists() and not run.parent.exists()
    short = Stack(tmp_path / "w")
    assert short.run_dir == tmp_path / "w" / "run"
    private_directory(short.run_dir)
    short.stop()
    assert short.run_dir.is_dir()  # the workdir's own: kept


def test_a_tls_ext_proc_config_tells_the_operator_to_name_its_certificate_a_relay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A central gateway's Envoy (its callers use Tollway keys) names no workload: Tollway serves its
    fallback tries only when told its certificate is a relay's (tollway serve --tls-relay-san)."""
    from tests.certs import CA

    ca = CA(tmp_path, "platform")
    envoy = ca.issue("gateway", dns=("gateway.platform.svc",), uris=("spiffe://cluster.local/ns/platform/sa/gw",),
                     server=False)
    parser = argparse.ArgumentParser()
    envoy_config.add_arguments(parser)
    args = ["--ext-proc", "tls://tollway.tollway-system.svc:50051",
            "--ext-proc-tls", f"{envoy.cert},{envoy.key},{ca.cert},tollway.tollway-system.svc"]
    assert envoy_config.run(parser.parse_args(args)) == 0
    out = capsys.readouterr().out
    hint = out.splitlines()[1]
    assert hint.startswith("# Tollway side:")
    assert "`tollway serve --tls-relay-san spiffe://cluster.local/ns/platform/sa/gw`" in hint
    assert "attempt_refused" in hint
    assert clusters(yaml.safe_load(out))["tollway_ext_proc"]["transport_socket"]  # still the config
    assert envoy_config.run(parser.parse_args(["--ext-proc", "unix:/run/tollway/ext_proc.sock"])) == 0
    assert "--tls-relay-san" not in capsys.readouterr().out  # only for tls://
    assert "--tls-relay-san NAME" in envoy_config.relay_hint(str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(("text", "said"), [
    (b"apiVersion: tollway/v1\nproviders: {}\n", "not an Envoy bootstrap with Tollway's listeners"),
    (b"static_resources: 5\n", "not an Envoy bootstrap with Tollway's listeners"),
    (b"static_resources: {listeners: [{filter_chains: []}]}\n", "not an Envoy bootstrap"),
    (b"- 1\n", "not an Envoy bootstrap"),
    (b"a: [\n", "not a YAML template"),
    (b"\xff\xfe\n", "not a YAML template: 'utf-8' codec"),
])
def test_a_template_that_is_no_envoy_bootstrap_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           text: bytes, said: str) -> None:
    """A policy file given as --template was a KeyError's traceback; invalid YAML or non-UTF-8 too."""
    template = tmp_path / "template.yaml"
    template.write_bytes(text)
    parser = argparse.ArgumentParser()
    envoy_config.add_arguments(parser)
    assert envoy_config.run(parser.parse_args(["--template", str(template)])) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and said in printed.err and len(printed.err.strip().splitlines()) == 1
