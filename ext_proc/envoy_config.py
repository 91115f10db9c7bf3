"""Envoy's clusters for a policy: providers, fallback chains, the clusters file, ``tollway envoy``.

Theory of operation. Envoy's bootstrap (``envoy/tollway.yaml``) holds what never depends on the
policy: the listener, its routes and filters, and the cluster that reaches Tollway. Every other
cluster follows the policy, and :func:`policy_clusters` computes them all from it:

- one cluster per provider, reaching its ``endpoint`` (TLS with SNI and a certificate check for
  https), or for ``openai`` and ``anthropic`` without one, their public API. A *stand-in*
  (``PROVIDER=URL``, e.g. the fake provider under ``tollway up``) replaces a provider's endpoint;
- one cluster per fallback *chain* (the providers an alias tries, in order; see
  :func:`ext_proc.policy.decide.chains`), with one priority level per position, each holding the
  endpoints of that provider's own cluster, tagged with their position (``tollway.slot``) and with
  the provider whose TLS settings they need (a ``transport_socket_matches`` entry per provider).
  Its upstream ext_proc filter calls Tollway once per try, so the try is rewritten for the
  provider Envoy picked (:mod:`ext_proc.core.attempt`). Outlier detection takes a provider that
  keeps failing out of the first attempts for a while.

They reach Envoy in one of two ways. The shipped bootstrap reads them from a *clusters file*
(filesystem CDS: ``dynamic_resources.cds_config.path_config_source`` with a watched directory),
which ``tollway serve --envoy-clusters PATH`` writes atomically whenever the policy changes
(:mod:`ext_proc.server.clusters`), so an alias with a new chain needs no Envoy restart.
``tollway envoy --policy P`` instead prints a complete static config with the same clusters in
``static_resources``, for those who want one file and no moving parts (re-render and restart
Envoy after changing which providers an alias uses); ``--clusters-file PATH`` prints the
bootstrap that reads PATH. A request whose chain has no cluster gets Envoy's JSON 503 (``cluster
not found``), never a wrong provider.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import sys
import urllib.parse
from collections.abc import Mapping
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


# The public APIs of the kinds that have one: a provider of these kinds needs no endpoint.
DEFAULT_ENDPOINTS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
# Without a policy (open mode) Tollway routes by path to these providers (name = cluster = kind).
OPEN_PROVIDERS = ("openai", "anthropic")
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class ClusterError(ValueError):
    """The policy needs a cluster that cannot be built (a chain through a provider without one)."""


def provider_clusters(
    policy: CompiledPolicy | None,
    stand_ins: Mapping[str, str] | None = None,
    base: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The cluster of every provider, by cluster name: from its stand-in, its endpoint or its kind.

    A provider with none of the three (an ``azure-openai`` or ``openai-compatible`` provider
    without an ``endpoint``) gets no cluster here: ``base`` (the template's static clusters) may
    define it. The first provider of a shared cluster decides its endpoint.
    """
    stand_ins = stand_ins or {}
    if policy is None:
        wanted = [(name, name, stand_ins.get(name) or DEFAULT_ENDPOINTS[name]) for name in OPEN_PROVIDERS]
    else:
        wanted = [(p.name, p.cluster, stand_ins.get(p.name) or p.endpoint or DEFAULT_ENDPOINTS.get(p.kind))
                  for p in policy.providers.values()]
    out: dict[str, dict[str, Any]] = {}
    for _provider, cluster, url in wanted:
        if cluster in out:
            continue
        if url:
            out[cluster] = provider_cluster(cluster, url)
        elif base and cluster in base:
            out[cluster] = base[cluster]
    return out


def policy_clusters(
    policy: CompiledPolicy | None,
    stand_ins: Mapping[str, str] | None = None,
    base: Mapping[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every cluster ``policy`` needs besides the bootstrap's: its providers', then its chains' (by name).

    A chain through a provider that has no cluster is a :class:`ClusterError` naming it.
    """
    providers = provider_clusters(policy, stand_ins, base)
    out = list(providers.values())
    if policy is None:
        return out
    for chain in sorted(decide.chains(policy), key=decide.cluster_name):
        name = decide.cluster_name(chain)
        missing = [t.provider for t in chain if t.provider.cluster not in providers]
        if missing:
            raise ClusterError(
                f"alias '{chain[0].public}' falls back through provider '{missing[0].name}', which has no "
                f"endpoint: give it one (providers.{missing[0].name}.endpoint) so Tollway can build the "
                f"Envoy cluster '{name}'")
        out.append(chain_cluster(name, [(t.provider.name, providers[t.provider.cluster]) for t in chain]))
    return out


def cds_document(clusters: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The clusters file Envoy reads (a CDS DiscoveryResponse): ``version`` shows on Envoy's admin."""
    return {"version_info": version, "resources": [{"@type": CLUSTER_TYPE, **cluster} for cluster in clusters]}


def render(
    template: dict[str, Any],
    policy: CompiledPolicy | None,
    *,
    stand_ins: Mapping[str, str] | None = None,
    clusters_file: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The bootstrap for ``policy``: reading its clusters from ``clusters_file``, or listing them.

    Returns the config and the clusters Tollway provides (in the config when it is static). In a
    static config a provider's cluster replaces the template's cluster of the same name.
    """
    config = copy.deepcopy(template)
    static = config.setdefault("static_resources", {}).setdefault("clusters", [])
    base = {cluster["name"]: cluster for cluster in static}
    clusters = policy_clusters(policy, stand_ins, base)
    if clusters_file is not None:
        set_clusters_file(config, clusters_file)
        return config, clusters
    config.pop("dynamic_resources", None)
    ours = {cluster["name"] for cluster in clusters}
    static[:] = [cluster for cluster in static if cluster["name"] not in ours] + clusters
    return config, clusters


def set_clusters_file(config: dict[str, Any], path: str) -> None:
    """Make the bootstrap read its dynamic clusters from ``path`` (reloaded when a file is moved into its directory)."""
    directory = str(Path(path).parent)
    config["dynamic_resources"] = {"cds_config": {
        "resource_api_version": "V3",
        "path_config_source": {"path": path, "watched_directory": {"path": directory}},
    }}


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


def stand_in(text: str) -> tuple[str, str]:
    """``PROVIDER=URL`` (an argparse type): serve PROVIDER from URL, e.g. the fake provider."""
    name, _, url = text.partition("=")
    parts = urllib.parse.urlsplit(url)
    if not name or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected PROVIDER=http(s)://HOST:PORT, got {text!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return name, url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", help="the policy whose providers and aliases need clusters "
                                         "(default: none, open mode: OpenAI and Anthropic only)")
    parser.add_argument("--template", default=str(TEMPLATE),
                        help="the Envoy bootstrap to extend (default: %(default)s)")
    parser.add_argument("--clusters-file", metavar="PATH",
                        help="print the bootstrap that reads its provider and fallback clusters from PATH, the file "
                             "`tollway serve --envoy-clusters PATH` keeps up to date (default: list them, static)")
    parser.add_argument("--stand-in", type=stand_in, action="append", default=[], metavar="PROVIDER=URL",
                        help="reach PROVIDER at URL instead of its endpoint (e.g. a local fake provider); repeatable")
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
    policy = None
    if getattr(args, "policy", None):
        try:
            policy = compile_policy(Path(args.policy).read_text(encoding="utf-8"), args.policy)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"tollway envoy: {exc}", file=sys.stderr)
            return 1
    try:
        template = yaml.safe_load(Path(getattr(args, "template", None) or TEMPLATE).read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"tollway envoy: {exc}", file=sys.stderr)
        return 1
    timeouts = getattr(args, "first_byte_timeouts", None)
    if timeouts:
        set_first_byte_timeouts(template, *timeouts)
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
            set_ext_proc(template, ext_proc_address or listen.DEFAULT, tls)
        except (ValueError, listen.ListenError) as exc:
            print(f"tollway envoy: {exc}", file=sys.stderr)
            return 1
    clusters_file = getattr(args, "clusters_file", None)
    try:
        config, clusters = render(template, policy, stand_ins=dict(getattr(args, "stand_in", None) or ()),
                                  clusters_file=clusters_file)
    except ClusterError as exc:
        print(f"tollway envoy: {exc}", file=sys.stderr)
        return 1
    chains = sum("+" in cluster["name"] for cluster in clusters)
    source = f" --policy {args.policy}" if policy is not None else ""
    if clusters_file:
        print(f"# Rendered by `tollway envoy{source} --clusters-file {clusters_file}`: the provider and fallback "
              f"clusters come from {clusters_file} (written by `tollway serve --envoy-clusters`).")
    else:
        print(f"# Rendered by `tollway envoy{source}`: {len(clusters) - chains} provider cluster(s) and "
              f"{chains} fallback cluster(s).")
    print(yaml.safe_dump(config, sort_keys=False, width=120))
    return 0
