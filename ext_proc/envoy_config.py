"""Envoy's config for a policy: the fallback clusters its aliases need, and ``tollway envoy``.

``envoy/tollway.yaml`` is complete for models served by one provider: each provider has a
cluster, and Tollway labels each request with the cluster to use. An alias with fallback needs
one more cluster per *chain* (the providers to try, in order; see
:func:`ext_proc.policy.decide.chains`). A chain cluster has one priority level per position,
each holding the endpoints of that provider's own cluster, tagged with their position
(``tollway.slot``) and with the provider whose TLS settings they need (a
``transport_socket_matches`` entry per provider). Its upstream ext_proc filter calls Tollway once
per try, so the try is rewritten for the provider Envoy picked (:mod:`ext_proc.core.attempt`).
Outlier detection takes a provider that keeps failing out of the first attempts for a while.

``tollway envoy --policy P`` prints the shipped config with the policy's chain clusters added,
and a cluster for each provider the config lacks but whose ``endpoint`` the policy gives (TLS
with SNI and a certificate check for https), ready for ``envoy -c``. Run it again when an
alias's providers change; a request whose chain has no cluster gets Envoy's JSON 503 (``cluster
not found``), never a wrong provider.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ext_proc.policy import decide
from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.server import listen

EXT_PROC_CLUSTER = "tollway_ext_proc"
UPSTREAM_FILTER_METADATA = ("x-tollway-filter", "upstream")  # tells Tollway a stream is a try
TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "tollway.yaml"
_MATCH_KEY = "tollway_provider"
_RAW_BUFFER = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"},
}
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def upstream_filter(timeout: str = "5s") -> dict[str, Any]:
    """The per-try ext_proc filter: request headers and buffered body, nothing of the answer."""
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER},
                "timeout": timeout,
                "initial_metadata": [{"key": UPSTREAM_FILTER_METADATA[0], "value": UPSTREAM_FILTER_METADATA[1]}],
            },
            "failure_mode_allow": False,
            "message_timeout": timeout,
            "mutation_rules": {"allow_all_routing": True},
            "request_attributes": ["xds.upstream_host_metadata"],
            # The chain the router-level filter chose (see ext_proc.core.upstream).
            "metadata_options": {"forwarding_namespaces": {"untyped": ["tollway"]}},
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
        },
    }


def chain_cluster(name: str, providers: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The cluster for one chain: ``providers`` are (provider name, its Envoy cluster) in order."""
    levels = []
    sockets: dict[str, dict[str, Any]] = {}
    resolve = False
    for position, (provider, cluster) in enumerate(providers):
        source = cluster["name"]
        endpoints = []
        sni = cluster.get("transport_socket", {}).get("typed_config", {}).get("sni")
        for group in cluster["load_assignment"]["endpoints"]:
            for lb_endpoint in group["lb_endpoints"]:
                entry = copy.deepcopy(lb_endpoint)
                socket = entry["endpoint"]["address"]["socket_address"]
                address, port = socket["address"], socket.get("port_value", 80)
                resolve = resolve or not _is_ip(address)
                # The Host header the try sends when the policy gives the provider no endpoint.
                host = sni or (address if port in (80, 443) else f"{address}:{port}")
                entry["metadata"] = {
                    "filter_metadata": {
                        "tollway": {"slot": str(position), "provider": provider, "host": host},
                        "envoy.transport_socket_match": {_MATCH_KEY: source},
                    }
                }
                endpoints.append(entry)
        levels.append({"priority": position, "lb_endpoints": endpoints})
        sockets.setdefault(source, copy.deepcopy(cluster.get("transport_socket", _RAW_BUFFER)))
    return {
        "name": name,
        "type": "STRICT_DNS" if resolve else "STATIC",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": 67108864,
        "load_assignment": {"cluster_name": name, "endpoints": levels},
        "transport_socket_matches": [
            {"name": source, "match": {_MATCH_KEY: source}, "transport_socket": socket}
            for source, socket in sockets.items()
        ],
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    upstream_filter(),
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        },
        # Envoy allows 3 concurrent retries per cluster by default: far too few for fallback.
        "circuit_breakers": {"thresholds": [{"max_retries": 10000, "max_pending_requests": 10000,
                                             "max_requests": 100000, "max_connections": 10000}]},
        # A provider failing 5 times in a row sits out first attempts for 30 s (then longer).
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 5,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 100,
            "split_external_local_origin_errors": False,
        },
        # With one endpoint per level, an ejected provider must move traffic to the next level.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def provider_cluster(name: str, endpoint: str) -> dict[str, Any]:
    """A cluster reaching a provider's base URL: TLS with SNI and certificate check for https."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or ""
    tls = url.scheme == "https"
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": 67108864,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": host, "port_value": url.port or (443 if tls else 80)}}}}]}]},
    }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}],
                }},
            },
        }
    return cluster


def add_providers(config: dict[str, Any], policy: CompiledPolicy) -> list[str]:
    """Add a cluster for each provider that has an ``endpoint`` and no cluster yet; their names."""
    clusters = config["static_resources"]["clusters"]
    present = {cluster["name"] for cluster in clusters}
    added = []
    for provider in policy.providers.values():
        if provider.cluster not in present and provider.endpoint:
            clusters.append(provider_cluster(provider.cluster, provider.endpoint))
            present.add(provider.cluster)
            added.append(provider.cluster)
    return added


def add_chains(config: dict[str, Any], policy: CompiledPolicy) -> list[str]:
    """Add the cluster of every chain ``policy`` can produce to ``config``; their names, sorted.

    A chain through a provider whose cluster the config lacks is a ``ValueError`` naming it.
    """
    clusters = config["static_resources"]["clusters"]
    by_name = {cluster["name"]: cluster for cluster in clusters}
    added = []
    for chain in sorted(decide.chains(policy), key=decide.cluster_name):
        name = decide.cluster_name(chain)
        if name in by_name:
            continue
        missing = [t.provider.cluster for t in chain if t.provider.cluster not in by_name]
        if missing:
            raise ValueError(f"the Envoy config has no cluster {missing[0]!r} (provider of alias '{chain[0].public}')")
        cluster = chain_cluster(name, [(t.provider.name, by_name[t.provider.cluster]) for t in chain])
        clusters.append(cluster)
        by_name[name] = cluster
        added.append(name)
    return added


@dataclass(frozen=True)
class ClientTLS:
    """Envoy's side of a mutual-TLS channel to Tollway: its client certificate, and how it checks Tollway's."""

    cert: str
    key: str
    server_ca: str
    server_name: str  # SNI and the SAN Tollway's certificate must carry


def set_ext_proc(config: dict[str, Any], address: str, tls: ClientTLS | None = None) -> None:
    """Point the ``tollway_ext_proc`` cluster at ``address`` (``unix:PATH``, ``tls://H:P`` or ``tcp://H:P``).

    A ``tls://`` address needs ``tls``: Envoy presents its client certificate, offers ALPN ``h2``
    and accepts only a server certificate for ``server_name`` signed by ``server_ca``.
    """
    parsed = listen.parse(address)
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == EXT_PROC_CLUSTER]
    if parsed.kind == "unix":
        endpoint_address: dict[str, Any] = {"pipe": {"path": parsed.path}}
    else:
        endpoint_address = {"socket_address": {"address": parsed.host, "port_value": parsed.port}}
    cluster["load_assignment"] = {"cluster_name": EXT_PROC_CLUSTER, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": endpoint_address}}]}]}
    cluster.pop("transport_socket", None)
    if parsed.kind == "tls":
        if tls is None:
            raise ValueError("a tls:// ext_proc address needs Envoy's client certificate")
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": tls.server_name,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificates": [{"certificate_chain": {"filename": tls.cert},
                                          "private_key": {"filename": tls.key}}],
                    "validation_context": {
                        "trusted_ca": {"filename": tls.server_ca},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": tls.server_name}}],
                    },
                },
            },
        }
    elif tls is not None:
        raise ValueError("client TLS settings need a tls:// ext_proc address")


def set_first_byte_timeouts(config: dict[str, Any], streaming: str, buffered: str) -> None:
    """Set the per-try idle timeout of the labelled routes: for streams, and for buffered answers.

    Only the first byte of an answer can trigger a fallback; a buffered answer arrives whole, so
    its timeout must cover the whole generation.
    """
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        if "cluster_header" not in route["route"]:
            continue
        stream_route = any(h["name"] == "x-tollway-stream" for h in route["match"].get("headers", ()))
        route["route"]["retry_policy"]["per_try_idle_timeout"] = streaming if stream_route else buffered


def _timeouts(text: str) -> tuple[str, str]:
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip()[:-1].isdigit() and part.strip().endswith("s") for part in parts):
        raise argparse.ArgumentTypeError("expected STREAMING,BUFFERED in seconds, e.g. 30s,300s")
    return parts[0].strip(), parts[1].strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="the policy file whose aliases need fallback clusters")
    parser.add_argument("--template", default=str(TEMPLATE), help="the Envoy config to extend (default: %(default)s)")
    parser.add_argument(
        "--first-byte-timeouts", type=_timeouts, metavar="STREAMING,BUFFERED",
        help="per-try time to the first byte before Envoy falls back (default: the template's, 30s,300s)",
    )
    parser.add_argument("--ext-proc", metavar="ADDRESS",
                        help="where Envoy reaches Tollway: the `tollway serve --listen` address "
                             "(default: the template's, unix:/run/tollway/ext_proc.sock)")
    parser.add_argument("--ext-proc-tls", metavar="CERT,KEY,CA,NAME",
                        help="tls:// only: Envoy's client certificate and key, the CA of Tollway's certificate, "
                             "and the name that certificate carries")


def run(args: argparse.Namespace) -> int:
    try:
        policy = compile_policy(Path(args.policy).read_text(encoding="utf-8"), args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tollway envoy: {exc}", file=sys.stderr)
        return 1
    config = yaml.safe_load(Path(args.template).read_text(encoding="utf-8"))
    timeouts = getattr(args, "first_byte_timeouts", None)
    if timeouts:
        set_first_byte_timeouts(config, *timeouts)
    ext_proc_address, ext_proc_tls = getattr(args, "ext_proc", None), getattr(args, "ext_proc_tls", None)
    if ext_proc_address or ext_proc_tls:
        tls = None
        if ext_proc_tls:
            parts = ext_proc_tls.split(",")
            if len(parts) != 4:
                print("tollway envoy: --ext-proc-tls expects CERT,KEY,CA,NAME", file=sys.stderr)
                return 1
            tls = ClientTLS(*parts)
        try:
            set_ext_proc(config, ext_proc_address or listen.DEFAULT, tls)
        except (ValueError, listen.ListenError) as exc:
            print(f"tollway envoy: {exc}", file=sys.stderr)
            return 1
    try:
        providers = add_providers(config, policy)
        added = add_chains(config, policy)
    except ValueError as exc:
        print(f"tollway envoy: {exc}", file=sys.stderr)
        return 1
    print(f"# Rendered by `tollway envoy --policy {args.policy}`: {len(providers)} provider cluster(s) and "
          f"{len(added)} fallback cluster(s) added.")
    print(yaml.safe_dump(config, sort_keys=False, width=120))
    return 0
