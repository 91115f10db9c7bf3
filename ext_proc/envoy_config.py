"""Envoy's config: the bootstrap Tollway ships and renders, and ``tollway envoy``.

Envoy's bootstrap (``envoy/tollway.yaml``) holds what never depends on the policy: the listener,
its routes and filters, and the cluster that reaches Tollway. Every other cluster follows the
policy (each provider's, each fallback chain's: :mod:`ext_proc.server.clusters` says what they
look like and keeps them up to date). They reach Envoy in one of two ways. The shipped bootstrap
reads them from a *clusters file* (filesystem CDS: ``dynamic_resources.cds_config`` with
``path_config_source`` and a watched directory), which ``tollway serve --envoy-clusters PATH``
writes atomically whenever the policy changes, so an alias with a new chain needs no Envoy
restart. ``tollway envoy --policy P`` instead prints a complete static config with the same
clusters in ``static_resources``, for those who want one file and no moving parts (re-render and
restart Envoy after changing which providers an alias uses); ``--clusters-file PATH`` prints the
bootstrap that reads PATH. A request whose chain has no cluster gets Envoy's JSON 503 (``cluster
not found``), never a wrong provider.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import DEFAULT_ENDPOINTS, EXT_PROC_CLUSTER, CompiledPolicy  # noqa: F401 - re-exported
from ext_proc.policy.schema import MAX_TARGETS
from ext_proc.server import listen
from ext_proc.server.clusters import (  # noqa: F401 - re-exported: the cluster shapes live with their writer
    CLUSTER_TYPE,
    CONNECT_TIMEOUT_S,
    ENVOY_ADMIN,
    OPEN_PROVIDERS,
    UPSTREAM_FILTER_METADATA,
    ClusterError,
    cds_document,
    chain_cluster,
    policy_clusters,
    provider_cluster,
    provider_clusters,
    stand_in,
    upstream_filter,
)

# envoy/tollway.yaml, shipped inside the package (a symlink in the source tree) so installed copies have it too.
TEMPLATE = Path(__file__).resolve().parent / "data" / "envoy-bootstrap.yaml"
ADMIN_SOCKET = ENVOY_ADMIN.removeprefix("unix:")  # the template's admin: next to Tollway's socket, never a port
ADMIN_MODE = 0o600  # Envoy's user only (the injected sidecar's is 0660: Tollway, another user, asks it too)
GROUP_ADMIN_MODE = 0o660  # Envoy's user and Tollway's group (Envoy another user of it: Tollway asks it too)


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


def set_admin(config: dict[str, Any], path: str, mode: int = ADMIN_MODE) -> None:
    """Put Envoy's admin on the Unix socket ``path`` (``mode``), in a directory only Envoy and Tollway reach.

    The admin is not authenticated, and a raised log level has Envoy's debug log print each
    request's upstream headers, the provider key among them: a loopback port would be every local
    process's.
    """
    config["admin"]["address"] = {"pipe": {"path": path, "mode": mode}}


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
    cluster.pop("transport_socket", None)
    if parsed.kind == "unix":
        cluster["type"] = "STATIC"
        endpoint_address: dict[str, Any] = {"pipe": {"path": parsed.path}}
    else:
        try:
            ipaddress.ip_address(parsed.host)
            cluster["type"] = "STATIC"
        except ValueError:
            cluster["type"] = "STRICT_DNS"  # a name, e.g. the Service of the shared-Deployment mode
        endpoint_address = {"socket_address": {"address": parsed.host, "port_value": parsed.port}}
    cluster["load_assignment"] = {"cluster_name": EXT_PROC_CLUSTER, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": endpoint_address}}]}]}
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
    """Set the per-try idle timeout of the labelled routes: for streams, and for buffered answers,
    and each route's idle timeout to let a whole chain of such tries run (:func:`chain_idle_timeout`).

    Only the first byte of an answer can trigger a fallback; a buffered answer arrives whole, so
    its timeout must cover the whole generation.
    """
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    floor = hcm.get("stream_idle_timeout", "300s")
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        if "cluster_header" not in route["route"]:
            continue
        stream_route = any(h["name"] == "x-tollway-stream" for h in route["match"].get("headers", ()))
        per_try = streaming if stream_route else buffered
        route["route"]["retry_policy"]["per_try_idle_timeout"] = per_try
        route["route"]["idle_timeout"] = chain_idle_timeout(per_try, floor)


def chain_idle_timeout(per_try: str, floor: str = "300s") -> str:
    """The idle timeout of a labelled route whose tries have the first-byte timeout ``per_try``.

    Envoy starts a route's idle timer when the request arrives and no try resets it: a timer no
    longer than a try's would end the request with a 504 (``stream_idle_timeout``) before the
    try's own timeout could move it to the next target. So the route lets the longest chain run,
    each of its tries connecting (``connect_timeout``) and waiting for its first byte, and no less
    than the connection manager's ``stream_idle_timeout`` (``floor``), which covers a client that
    stops sending its request. Once an answer streams, each try's own idle timeout (the same
    first-byte timeout: Envoy keeps it running) ends a provider that stalls mid-answer.
    """
    seconds = max(_seconds(floor), MAX_TARGETS * (_seconds(per_try) + CONNECT_TIMEOUT_S) + 10)
    return f"{seconds:g}s"


def _seconds(duration: str) -> float:
    return float(duration.strip().removesuffix("s"))


# Envoy's buffer filter behind the ext_proc filter when bodies go together: it holds the request
# body Tollway passed on and gives it back its content-length (Envoy takes it off a body it streams
# to an external processor), so providers get a sized request, not a chunked one. Twice Tollway's
# own limit (coalesce.MAX_BODY, 64 MiB): a rewritten body (a translation, pseudonyms) may be longer
# than the one Tollway read, and Tollway has refused anything larger already.
BODY_BUFFER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 128 * 1024 * 1024,
    },
}


def set_bodies_buffered(config: dict[str, Any]) -> None:
    """Have the ext_proc filter take each body whole, message by message (``BUFFERED``: Envoy buffers
    the body and sends it once its headers are answered; four round trips per request, a little
    less CPU when the cores are saturated), without the buffer filter bodies together need."""
    for typed in ext_proc_filters(config):
        typed.pop("send_body_without_waiting_for_header_response", None)
        typed["processing_mode"].update(request_body_mode="BUFFERED", response_body_mode="BUFFERED")
    for filters in _http_filters(config):
        filters[:] = [f for f in filters if f["name"] != BODY_BUFFER["name"]]


def set_bodies_together(config: dict[str, Any]) -> None:
    """Have the ext_proc filter send each body right behind its headers, without waiting for their
    answer (``STREAMED`` with ``send_body_without_waiting_for_header_response``), so that Tollway
    answers both at once: two round trips per request instead of four, less latency at one
    connection, more CPU under load (see ext_proc/server/coalesce.py and the README). A buffer
    filter before the router (:data:`BODY_BUFFER`) restores the request's content-length, on the
    listeners with Tollway's filter only (plain Envoy, the benchmark's baseline, has none)."""
    for typed in ext_proc_filters(config):
        typed["send_body_without_waiting_for_header_response"] = True
        typed["processing_mode"].update(request_body_mode="STREAMED", response_body_mode="STREAMED")
    for filters in _http_filters(config):
        names = [f["name"] for f in filters]
        if "envoy.filters.http.ext_proc" not in names:
            filters[:] = [f for f in filters if f["name"] != BODY_BUFFER["name"]]
        elif BODY_BUFFER["name"] not in names:
            filters.insert(names.index("envoy.filters.http.router"), copy.deepcopy(BODY_BUFFER))


def _http_filters(config: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Every listener's list of HTTP filters (the lists themselves, to edit in place)."""
    return [listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
            for listener in config["static_resources"]["listeners"]]


def ext_proc_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``typed_config`` of every listener's Tollway ext_proc filter."""
    return [http_filter["typed_config"] for filters in _http_filters(config) for http_filter in filters
            if http_filter["name"] == "envoy.filters.http.ext_proc"]


def _timeouts(text: str) -> tuple[str, str]:
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip()[:-1].isdigit() and part.strip().endswith("s") for part in parts):
        raise argparse.ArgumentTypeError("expected STREAMING,BUFFERED in seconds, e.g. 30s,300s")
    return parts[0].strip(), parts[1].strip()


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
        help="per-try time to the first byte before Envoy falls back (default: the template's, 30s,300s); "
             "the labelled routes' idle timeouts follow, long enough for a chain of 8 such tries",
    )
    parser.add_argument("--bodies", choices=("buffered", "together"), default="together",
                        help="together (the template's): each body goes right behind its headers and both are "
                             "answered at once (least latency and CPU at a sidecar's usual load); buffered: Envoy "
                             "buffers each body and Tollway answers message by message (a little less CPU when "
                             "the cores are saturated, and the client's answer keeps its content-length)")
    parser.add_argument("--ext-proc", metavar="ADDRESS",
                        help="where Envoy reaches Tollway: the `tollway serve --listen` address "
                             "(default: the template's, unix:/run/tollway/ext_proc.sock)")
    parser.add_argument("--admin-socket", metavar="PATH",
                        help=f"Envoy's admin: a Unix socket, mode 0600, in a directory only Envoy and Tollway reach "
                             f"(default: the template's, {ADMIN_SOCKET}); `tollway serve --envoy-admin unix:PATH`")
    parser.add_argument("--socket-group", action="store_true",
                        help="Envoy runs as another user of Tollway's group (as `tollway serve --socket-group`): its "
                             "admin socket is 0660, so Tollway's group reaches it; give --admin-socket a directory "
                             "Envoy can write (Tollway's socket directory is 0750: the group may not create in it)")
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
        except (OSError, UnicodeDecodeError) as exc:
            print(f"tollway envoy: {exc}", file=sys.stderr)
            return 1
    template_path = getattr(args, "template", None) or TEMPLATE
    try:
        template = yaml.safe_load(Path(template_path).read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"tollway envoy: {exc}", file=sys.stderr)
        return 1
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"tollway envoy: {template_path}: not a YAML template: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    try:  # the listeners' filters, where everything below edits the template
        if not isinstance(template, dict) or not all(isinstance(f, dict) and isinstance(f["name"], str)
                                                     for filters in _http_filters(template) for f in filters):
            raise TypeError("not a mapping")
    except (KeyError, TypeError, IndexError) as exc:
        print(f"tollway envoy: {template_path}: not an Envoy bootstrap with Tollway's listeners "
              f"(static_resources.listeners[].filter_chains[0].filters[0].typed_config.http_filters: "
              f"{'no ' + str(exc) if isinstance(exc, KeyError) else exc})", file=sys.stderr)
        return 1
    timeouts = getattr(args, "first_byte_timeouts", None)
    if timeouts:
        set_first_byte_timeouts(template, *timeouts)
    if getattr(args, "bodies", "together") == "together":
        set_bodies_together(template)
    else:
        set_bodies_buffered(template)
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
    group = getattr(args, "socket_group", False)
    if getattr(args, "admin_socket", None) or group:
        set_admin(template, getattr(args, "admin_socket", None) or template["admin"]["address"]["pipe"]["path"],
                  GROUP_ADMIN_MODE if group else ADMIN_MODE)
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
    if ext_proc_tls and listen.parse(ext_proc_address or listen.DEFAULT).kind == "tls":
        print(relay_hint(ext_proc_tls.split(",")[0]))
    print(yaml.safe_dump(config, sort_keys=False, width=120))
    return 0


def relay_hint(cert: str) -> str:
    """The comment telling the operator of a tls:// Envoy what Tollway must be told (--tls-relay-san)."""
    names = listen.certificate_names(cert)
    name = names[0] if names else "NAME"
    return (f"# Tollway side: when this Envoy's callers use Tollway keys (a central gateway the platform team runs), "
            f"start Tollway with `tollway serve --tls-relay-san {name}` (a name of {cert}, which --tls-client-san "
            f"must accept), or their fallback aliases get 403 attempt_refused. Never for an Envoy a workload runs: "
            f"a relay's streams are believed as the Unix socket's Envoy is (see README, The ext_proc channel).")
