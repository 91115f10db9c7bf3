"""The injected sidecar's Envoy bootstrap: Tollway's own, plus transparent interception and a pod port.

:func:`bootstrap` starts from the bootstrap every Tollway Envoy runs (``envoy/tollway.yaml``:
the base-URL listener on ``127.0.0.1:10000``, its ext_proc filter on the private socket, the
clusters file Tollway writes) and adds two listeners:

``tollway_intercept`` (``127.0.0.1:10443``, where ``tollway-intercept`` redirects the pod's
    outbound connections to the providers' port 443). Its ``original_dst`` listener filter
    recovers where each connection was going and ``tls_inspector`` reads its SNI. A provider
    host's SNI gets a TLS handshake with the interception certificate (read through file-based
    SDS, so cert-manager's renewals are picked up without a restart) and then exactly the
    base-URL listener's HTTP chain: the same ext_proc filter, routes and clusters, so Tollway
    identifies, routes, meters and records the request and Envoy originates TLS to the real
    provider. Any other SNI, or none, is forwarded byte for byte to its original destination
    (``tollway_passthrough``, an ``ORIGINAL_DST`` cluster): CDNs serve many sites on a provider's
    addresses, and those connections are not ours to open. A connection made to ``127.0.0.1:10443``
    itself (not redirected: its original destination is the listener) is closed
    (``tollway_blackhole``, a cluster without endpoints); forwarded, Envoy would connect to itself.
``tollway_pod`` (``0.0.0.0:10021``): the only port of the sidecar on the pod's address. It
    answers kubelet's probes and Prometheus, and nothing else: Envoy's ``/ready`` and
    ``/stats/prometheus``, Tollway's ``/readyz`` and ``/metrics`` (as ``/tollway/readyz`` and
    ``/tollway/metrics``). Neither admin endpoint is on the pod's address.

Envoy's admin is a Unix socket (``/run/envoy-admin.sock``, mode 0660: Envoy's user and Tollway's
group), never a loopback port: the pod's network namespace is the application's too, and the admin
can stop Envoy or raise its log level, after which its debug log prints each request's upstream
headers, the provider key among them. The socket is on the ``/run`` volume only Tollway's and
Envoy's containers mount; Tollway asks it whether Envoy loaded the clusters (``--envoy-admin
unix:/run/envoy-admin.sock``) and the pod port's ``tollway_envoy_admin`` cluster reaches it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ext_proc.envoy_config import set_admin, set_ext_proc

PROVIDER_HOSTS = ("api.openai.com", "api.anthropic.com")
INTERCEPT_PORT = 10443
POD_PORT = 10021
ENVOY_ADMIN = "/run/envoy-admin.sock"  # Envoy's admin: a Unix socket on the volume of Tollway and Envoy only
ENVOY_ADMIN_MODE = 0o660  # Envoy's user (owner) and Tollway's (group: Envoy runs in Tollway's group)
TOLLWAY_ADMIN_PORT = 9902
INTERCEPT_CERT_DIR = "/etc/tollway/intercept"  # the cert-manager Secret (tls.crt, tls.key)
INTERCEPT_SDS = "/etc/tollway/envoy/intercept-sds.yaml"  # in the image: k8s/image/intercept-sds.yaml
INTERCEPT_SECRET = "tollway-intercept"

_HCM = "envoy.filters.network.http_connection_manager"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@dataclass(frozen=True)
class Layout:
    """Where the sidecar's Envoy listens and finds things (the pod's defaults; tests move them)."""

    hosts: tuple[str, ...] = PROVIDER_HOSTS
    intercept: bool = True
    intercept_port: int = INTERCEPT_PORT
    pod_port: int = POD_PORT
    pod_address: str = "0.0.0.0"
    envoy_admin: str = ENVOY_ADMIN  # the admin's socket
    tollway_admin_port: int = TOLLWAY_ADMIN_PORT
    intercept_sds: str = INTERCEPT_SDS
    ext_proc: str | None = None  # Tollway's address; None: the template's (unix:/run/tollway/ext_proc.sock)


def intercept_sds(cert_dir: str = INTERCEPT_CERT_DIR) -> dict[str, Any]:
    """The SDS file naming the interception certificate's files (reloaded when their directory changes)."""
    return {"resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": INTERCEPT_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": f"{cert_dir}/tls.crt"},
            "private_key": {"filename": f"{cert_dir}/tls.key"},
            # Kubernetes updates a Secret volume by swapping its ..data symlink: watch the directory.
            "watched_directory": {"path": cert_dir},
        },
    }]}


def _static(name: str, port: int | str) -> dict[str, Any]:
    """A cluster of one endpoint: a loopback port, or a Unix socket's path."""
    address = {"pipe": {"path": port}} if isinstance(port, str) else \
        {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]}}


def _route(path: str, cluster: str, rewrite: str | None = None, host: str | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster, "timeout": "5s"}
    if rewrite:
        route["prefix_rewrite"] = rewrite
    if host:
        route["host_rewrite_literal"] = host
    return {"match": {"path": path}, "route": route}


def _pod_listener(layout: Layout) -> dict[str, Any]:
    routes = [
        _route("/ready", "tollway_envoy_admin"),
        _route("/stats/prometheus", "tollway_envoy_admin"),
        # kubelet and Prometheus name the pod's address; Tollway's admin, on loopback without a token,
        # answers only requests that name a loopback host (DNS rebinding: ext_proc.server.admin).
        _route("/tollway/readyz", "tollway_admin", "/readyz", host="127.0.0.1"),
        _route("/tollway/metrics", "tollway_admin", "/metrics", host="127.0.0.1"),
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]
    return {
        "name": "tollway_pod",
        "address": {"socket_address": {"address": layout.pod_address, "port_value": layout.pod_port}},
        "enable_reuse_port": False,
        "filter_chains": [{"filters": [{"name": _HCM, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                     "HttpConnectionManager",
            "stat_prefix": "tollway_pod",
            "route_config": {"name": "tollway_pod", "virtual_hosts": [
                {"name": "pod", "domains": ["*"], "routes": routes}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}],
    }


def _intercept_listener(hcm_filter: dict[str, Any], buffer_limit: int, layout: Layout) -> dict[str, Any]:
    hcm = copy.deepcopy(hcm_filter)
    hcm["typed_config"]["stat_prefix"] = "tollway_intercept"
    return {
        "name": "tollway_intercept",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": layout.intercept_port}},
        "enable_reuse_port": False,
        # The main listener's: request bodies have their own limit in the routes copied with the HCM.
        "per_connection_buffer_limit_bytes": buffer_limit,
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}},
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
        ],
        "filter_chains": [{
            # Not redirected: a connection made to this port itself, whose original destination is this
            # listener. Forwarded there, Envoy would connect to itself, again and again, up to the
            # cluster's limits. Closed instead (the port outranks the SNI in Envoy's chain matching).
            "filter_chain_match": {"destination_port": layout.intercept_port},
            "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "tollway_blackhole", "cluster": "tollway_blackhole"}}],
        }, {
            "filter_chain_match": {"server_names": list(layout.hosts), "transport_protocol": "tls"},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": _TLS,
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificate_sds_secret_configs": [{"name": INTERCEPT_SECRET, "sds_config": {
                        "resource_api_version": "V3",
                        "path_config_source": {"path": layout.intercept_sds}}}],
                },
            }},
            "filters": [hcm],
        }],
        # Another host on a provider's address, or no SNI: forwarded untouched to where it was going.
        "default_filter_chain": {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tollway_passthrough", "cluster": "tollway_passthrough"}}]},
    }


def bootstrap(template: dict[str, Any], layout: Layout = Layout()) -> dict[str, Any]:
    """The sidecar's bootstrap from Tollway's (``template``, read from the clusters file Tollway writes)."""
    config = copy.deepcopy(template)
    set_admin(config, layout.envoy_admin, ENVOY_ADMIN_MODE)
    if layout.ext_proc is not None:
        set_ext_proc(config, layout.ext_proc)
    resources = config["static_resources"]
    (base,) = resources["listeners"]
    listeners = [base, _pod_listener(layout)]
    clusters = [_static("tollway_envoy_admin", layout.envoy_admin),
                _static("tollway_admin", layout.tollway_admin_port)]
    if layout.intercept:
        (hcm,) = base["filter_chains"][0]["filters"]
        listeners.append(_intercept_listener(hcm, base["per_connection_buffer_limit_bytes"], layout))
        clusters.append({"name": "tollway_passthrough", "type": "ORIGINAL_DST", "connect_timeout": "5s",
                         "lb_policy": "CLUSTER_PROVIDED"})
        # No endpoints: a connection sent here is closed (the listener's own port, above).
        clusters.append({"name": "tollway_blackhole", "type": "STATIC", "connect_timeout": "1s",
                         "load_assignment": {"cluster_name": "tollway_blackhole", "endpoints": []}})
    resources["listeners"] = listeners
    resources["clusters"] = [*resources["clusters"], *clusters]
    return config


def hosts(text: str | Sequence[str]) -> tuple[str, ...]:
    """Provider host names from a comma- or space-separated string (or a list), lower-cased, in order."""
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        name = item.strip().lower().rstrip(".")
        if name and name not in out:
            out.append(name)
    return tuple(out)
