"""Envoy's clusters follow the policy: what they are, the file Tollway writes, Envoy's confirmation.

Theory of operation. :func:`policy_clusters` computes, from a policy, every cluster Envoy needs
besides its bootstrap's:

- one cluster per provider, reaching its ``endpoint`` (TLS with SNI and a certificate check for
  https), or for ``openai`` and ``anthropic`` without one, their public API. A *stand-in*
  (``PROVIDER=URL``, e.g. the fake provider under ``tollway up``) replaces a provider's endpoint;
  with ``--stand-in-missing URL`` (``tollway up``) each policy version's providers without a usable
  key get that stand-in too (:meth:`ClusterSync.stand_ins_of`);
- one cluster per fallback *chain* (the providers an alias tries, in order; see
  :func:`ext_proc.policy.decide.chains`), with one priority level per position, each holding the
  endpoints of that provider's own cluster, tagged with their position (``tollway.slot``) and with
  the provider whose TLS settings they need (a ``transport_socket_matches`` entry per provider).
  Its upstream ext_proc filter calls Tollway once per try, so the try is rewritten for the
  provider Envoy picked (:mod:`ext_proc.core.attempt`). Outlier detection takes a provider that
  keeps failing out of the first attempts for a while.

Envoy's bootstrap reads them from one file (filesystem CDS with a watched directory, see
:mod:`ext_proc.envoy_config`, which also lists them statically for ``tollway envoy``). One
process writes it: the ``tollway serve`` parent (workers never do), through :class:`ClusterSync`,
and always atomically (a temporary file in the same directory, then a rename, which is the move Envoy's
watch reacts to). Each write carries a version, the hash of its content, that Envoy shows on its
admin (``cluster_manager.cds.version_text``).

A policy must never route to a cluster Envoy lacks (the request would get a 503), and a cluster
must not go while requests routed by an older policy may still use it. So a reload runs in this
order (:meth:`ClusterSync.prepare`, called by :class:`~ext_proc.server.reload.PolicyController`):

1. write the clusters of the new policy *plus* those of the policies before it (of the clusters
   Envoy last accepted, never of a write it rejected);
2. wait until Envoy's admin reports that version accepted and every cluster of the new policy
   active (warmed), at most ``timeout`` seconds; a rejected or late update fails the reload,
   which keeps the running policy, and the file goes back to what Envoy accepted last (an
   Envoy restarting meanwhile finds a file it can load), so the next reload starts from that;
3. the caller swaps the policy;
4. clusters no policy has needed for ``retire_after`` seconds (5 minutes: longer than any try's
   first-byte timeout) are dropped by a later write (:meth:`ClusterSync.prune`).

Envoy's admin is a Unix socket (:data:`ENVOY_ADMIN`, the shipped bootstrap's; the injected sidecar's
``unix:/run/envoy-admin.sock``) or a URL (``http://127.0.0.1:9901``). The bootstraps Tollway ships
and renders never put it on a port: it is not authenticated, and a loopback port would be every
local process's (the whole pod's in a sidecar), see :func:`ext_proc.envoy_config.set_admin`.
Without an admin address, or while Envoy's admin does not answer (Envoy not started yet, or
restarting), step 2 waits a fixed ``unconfirmed_wait`` instead: Envoy loads a moved file within
milliseconds of the move.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import ipaddress
import logging
import math
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson
import yaml

from ext_proc.policy import decide
from ext_proc.policy.compiled import DEFAULT_ENDPOINTS, EXT_PROC_CLUSTER, CompiledPolicy, host_header
from ext_proc.server.credentials import CredentialStore, reached_for_real

log = logging.getLogger("tollway.clusters")

ENVOY_ADMIN = "unix:/run/tollway/envoy-admin.sock"  # the shipped bootstrap's admin, next to Tollway's socket
UPSTREAM_FILTER_METADATA = ("x-tollway-filter", "upstream")  # tells Tollway a stream is a try
CONNECT_TIMEOUT_S = 5  # a provider cluster's connect timeout: a try may spend it before its first-byte timeout starts
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
            # (allow_envoy: a try takes off Envoy's x-envoy-is-timeout-retry, see ext_proc.core.attempt)
            "mutation_rules": {"allow_all_routing": True, "allow_envoy": True},
            "request_attributes": ["xds.upstream_host_metadata"],
            # The chain the router-level filter chose (see ext_proc.core.upstream), and the tries
            # abandoned at the first-byte timeout, which a try adds to (tollway.abandoned).
            "metadata_options": {"forwarding_namespaces": {"untyped": ["tollway"]},
                                 "receiving_namespaces": {"untyped": ["tollway"]}},
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
    count = 0  # endpoints in all
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
                host = entry["endpoint"].get("hostname") or sni or (
                    address if port in (80, 443) else f"{address}:{port}")
                entry["metadata"] = {
                    "filter_metadata": {
                        "tollway": {"slot": str(position), "provider": provider, "host": host},
                        "envoy.transport_socket_match": {_MATCH_KEY: source},
                    }
                }
                endpoints.append(entry)
        levels.append({"priority": position, "lb_endpoints": endpoints})
        count += len(endpoints)
        sockets.setdefault(source, copy.deepcopy(cluster.get("transport_socket", _RAW_BUFFER)))
    return {
        "name": name,
        "type": "STRICT_DNS" if resolve else "STATIC",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
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
        # A provider failing 5 times in a row sits out first attempts for 30 s (then longer); all
        # but one of the chain's endpoints at most (the panic threshold is off: with every one
        # out, the chain would answer 503 no_healthy_upstream while its providers are back).
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 5,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": _all_but_one(count),
            "split_external_local_origin_errors": False,
        },
        # With one endpoint per level, an ejected provider must move traffic to the next level.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }


def _all_but_one(endpoints: int) -> int:
    """The ``max_ejection_percent`` that lets Envoy eject every endpoint but one: it ejects while
    100 * (ejected + 1) / endpoints is at most this."""
    return math.ceil(100 * (endpoints - 1) / endpoints) if endpoints > 1 else 0


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
        "connect_timeout": f"{CONNECT_TIMEOUT_S}s",
        "per_connection_buffer_limit_bytes": 67108864,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": host, "port_value": url.port or (443 if tls else 80)}}}}]}]},
    }
    # The Host the route's auto_host_rewrite sends, whatever the client's was (host[:port]). Without
    # it an IP address's (STATIC) cluster sent the client's own Host along with the provider's key,
    # and a DNS name's sent the name without its port.
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["hostname"] = host_header(endpoint)
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                # An absolute name's trailing dot is resolved with it, but is neither the server's
                # name nor its certificate's (RFC 6066: SNI has none).
                "sni": host.rstrip("."),
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host.rstrip(".")}}],
                }},
            },
        }
    return cluster


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
    define it. Providers sharing a cluster reach one endpoint (the compiler refuses two different
    ones), so the first of them decides it.
    """
    stand_ins = stand_ins or {}
    wanted: list[tuple[str, str, str | None]]  # provider, its cluster, the URL the cluster reaches
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


def stand_in(text: str) -> tuple[str, str]:
    """``PROVIDER=URL`` (an argparse type): serve PROVIDER from URL, e.g. the fake provider."""
    name, _, url = text.partition("=")
    if not name or not _http_url(url):
        raise argparse.ArgumentTypeError(f"expected PROVIDER=http(s)://HOST:PORT, got {text!r}")
    _port(text, url)
    return name, url


def stand_in_url(text: str) -> str:
    """``URL`` (an argparse type): the stand-in of every provider without a usable key."""
    if not _http_url(text):
        raise argparse.ArgumentTypeError(f"expected http(s)://HOST:PORT, got {text!r}")
    _port(text, text)
    return text


def _http_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _port(text: str, url: str) -> None:
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

RETIRE_AFTER = 300.0


class EnvoyNotReady(Exception):
    """Envoy did not load the clusters a policy needs (rejected, or not in time)."""


class EnvoyRejected(EnvoyNotReady):
    """Envoy refused the clusters file (Envoy's log has its reason)."""


def ask_envoy_admin(admin: str, path: str, *, method: str = "GET", params: Mapping[str, str] | None = None,
                    timeout: float = 1.0) -> httpx.Response:
    """The answer of Envoy's admin (``http://HOST:PORT`` or ``unix:SOCKET``) to ``method path``
    (no proxy from the environment: it is this machine's, or this pod's)."""
    uds = admin.removeprefix("unix:") if admin.startswith("unix:") else None
    with httpx.Client(transport=httpx.HTTPTransport(uds=uds), timeout=timeout, trust_env=False) as client:
        return client.request(method, ("http://localhost" if uds else admin) + path, params=params)


def fetch(admin: str, path: str, timeout: float = 1.0) -> bytes:
    """GET ``path`` of Envoy's admin (see :func:`ask_envoy_admin`); an OSError unless 200."""
    try:
        response = ask_envoy_admin(admin, path, timeout=timeout)
    except httpx.HTTPError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):  # the socket's own error (refused, no access)
            cause = cause.__context__
        raise (cause if cause is not None else OSError(f"Envoy's admin at {admin}: {type(exc).__name__}")) from exc
    if response.status_code != 200:
        raise OSError(f"Envoy's admin at {admin} answered {response.status_code} to {path}")
    return response.content


class ClusterSync:
    """Writes Envoy's clusters file for each policy and waits for Envoy to load it (see the module docstring)."""

    def __init__(
        self,
        path: str,
        envoy_admin: str | None = None,
        stand_ins: Mapping[str, str] | None = None,
        *,
        stand_in_missing: str | None = None,
        credentials: CredentialStore | None = None,
        timeout: float = 10.0,
        retire_after: float = RETIRE_AFTER,
        unconfirmed_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        get: Callable[[str, str], bytes] = fetch,
    ) -> None:
        self.path = path
        self.envoy_admin = envoy_admin.rstrip("/") if envoy_admin else None
        self.stand_ins = dict(stand_ins or {})
        # tollway up's fake provider: stands in for each provider of a policy it does not reach for real
        self.stand_in_missing = stand_in_missing
        self._credentials = credentials if credentials is not None else CredentialStore()
        self.timeout, self.retire_after, self.unconfirmed_wait = timeout, retire_after, unconfirmed_wait
        self._clock, self._sleep, self._get = clock, sleep, get
        self.written: dict[str, dict[str, Any]] = {}  # what the file holds, by cluster name
        self.version: str | None = None
        self.accepted: dict[str, dict[str, Any]] = {}  # what Envoy accepted last: what the next write keeps
        self._retired: dict[str, float] = {}  # accepted clusters the running policy does not need: since when

    def stand_ins_of(self, policy: CompiledPolicy | None) -> dict[str, str]:
        """The providers of ``policy`` a stand-in serves, with its URL: the given ones (``--stand-in``)
        and, with ``stand_in_missing`` (``--stand-in-missing URL``, what ``tollway up`` passes), every
        provider it would not reach for real now (no usable key, or an endpoint elsewhere than this
        machine: :func:`~ext_proc.server.credentials.reached_for_real`)."""
        out = dict(self.stand_ins)
        if self.stand_in_missing and policy is not None:
            for provider in policy.providers.values():
                if provider.name not in out and not reached_for_real(provider, self._credentials):
                    out[provider.name] = self.stand_in_missing
        return out

    def clusters(self, policy: CompiledPolicy | None, stand_ins: Mapping[str, str] | None = None
                 ) -> dict[str, dict[str, Any]]:
        """The clusters ``policy`` needs (a ``ClusterError`` when one cannot be built), its providers
        reaching ``stand_ins`` (default: :meth:`stand_ins_of` it)."""
        stand_ins = self.stand_ins_of(policy) if stand_ins is None else stand_ins
        return {cluster["name"]: cluster for cluster in policy_clusters(policy, stand_ins)}

    def prepare(self, policy: CompiledPolicy | None, *, starting: bool = False,
                stand_ins: Mapping[str, str] | None = None) -> None:
        """Steps 1 and 2: have Envoy hold every cluster of ``policy`` (and keep the older ones for now).

        ``starting``: the service's first write, before Envoy may run (Envoy needs the file to
        start): wait for Envoy only if its admin already answers. ``stand_ins``: the providers a
        stand-in serves (default: :meth:`stand_ins_of` the policy).
        """
        stand_ins = self.stand_ins_of(policy) if stand_ins is None else stand_ins
        needed = self.clusters(policy, stand_ins)
        now = self._clock()
        retired = {name: self._retired.get(name, now) for name in self.accepted if name not in needed}
        content = {**{name: self.accepted[name] for name in retired}, **needed}
        rejected_before = self._rejected()
        self._write(content)
        try:
            if not (rejected_before is None and starting):
                self._wait(set(needed), rejected_before, self._changes(content, policy, stand_ins))
        except EnvoyNotReady:
            if starting:  # nothing older to go back to: Envoy loads this file when it comes (if late),
                self.accepted = content  # or holds what it could take of it (if it refused some)
            else:
                self._write(self.accepted)
            raise
        self.accepted, self._retired = content, retired

    def prune(self) -> list[str]:
        """Step 4: drop the clusters unused for ``retire_after`` seconds; their names."""
        now = self._clock()
        gone = sorted(name for name, since in self._retired.items() if now - since >= self.retire_after)
        if gone:
            for name in gone:
                del self._retired[name]
            self.accepted = {name: cluster for name, cluster in self.accepted.items() if name not in gone}
            self._write(self.accepted)
            log.info("removed Envoy clusters no policy uses any more: %s", ", ".join(gone))
        return gone

    def _write(self, clusters: dict[str, dict[str, Any]]) -> None:
        ordered = [clusters[name] for name in sorted(clusters)]
        version = hashlib.sha256(orjson.dumps(ordered)).hexdigest()[:12]
        text = "# Written by tollway serve (--envoy-clusters): Envoy's provider and fallback clusters for the\n" \
               "# running policy. Rewritten on every policy change; do not edit.\n"
        text += yaml.safe_dump(cds_document(ordered, version), sort_keys=False, width=120)
        directory = os.path.dirname(self.path) or "."
        fd, temp = tempfile.mkstemp(prefix=".clusters-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(temp, 0o640)  # Envoy may run as another user of the directory's group
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self.written, self.version = dict(clusters), version

    def _stats(self) -> dict[str, str] | None:
        """Envoy's CDS stats (name -> value), or None when its admin does not answer."""
        if not self.envoy_admin:
            return None
        try:
            body = self._get(self.envoy_admin, "/stats?filter=%5Ecluster_manager%5C.cds%5C.")
        except OSError:
            return None
        stats = {}
        for line in body.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(": ")
            stats[name.strip()] = value.strip().strip('"')
        return stats

    def _rejected(self) -> int | None:
        stats = self._stats()
        return int(stats.get("cluster_manager.cds.update_rejected", 0)) if stats is not None else None

    def _active(self) -> set[str]:
        assert self.envoy_admin
        body = self._get(self.envoy_admin, "/config_dump?resource=dynamic_active_clusters")
        return {entry["cluster"]["name"] for entry in orjson.loads(body).get("configs", ())}

    def _changes(self, content: dict[str, dict[str, Any]], policy: CompiledPolicy | None,
                 stand_ins: Mapping[str, str]) -> str:
        """The clusters a write adds or changes, with the providers' endpoints: what a rejection names."""
        endpoints: dict[str, list[str]] = {}
        for p in policy.providers.values() if policy is not None else ():
            url = stand_ins.get(p.name) or p.endpoint or DEFAULT_ENDPOINTS.get(p.kind)
            endpoints.setdefault(p.cluster, []).append(f"provider '{p.name}'" + (f" at {url}" if url else ""))
        changed = [name for name in sorted(content) if self.accepted.get(name) != content[name]]
        return ", ".join(f"{name} ({'; '.join(endpoints[name])})" if name in endpoints else name for name in changed)

    def _wait(self, needed: set[str], rejected_before: int | None, changes: str = "") -> None:
        deadline = self._clock() + self.timeout
        if rejected_before is None:  # no admin to ask: Envoy loads a moved file within milliseconds
            self._sleep(self.unconfirmed_wait)
            return
        while True:
            stats = self._stats()
            if stats is None:
                log.warning("Envoy's admin (%s) stopped answering: cannot confirm it loaded the clusters",
                            self.envoy_admin)
                self._sleep(self.unconfirmed_wait)
                return
            if int(stats.get("cluster_manager.cds.update_rejected", 0)) > rejected_before:
                raise EnvoyRejected(
                    f"Envoy rejected the clusters file {self.path}, which added or changed the clusters "
                    f"{changes or '(none)'}; Envoy's log says why")
            if stats.get("cluster_manager.cds.version_text") == self.version:
                try:
                    missing = needed - self._active()
                except (OSError, ValueError, KeyError):
                    missing = needed
                if not missing:
                    return
            else:
                missing = needed
            if self._clock() >= deadline:
                raise EnvoyNotReady(
                    f"Envoy at {self.envoy_admin} did not load the clusters file {self.path} (version "
                    f"{self.version}) within {self.timeout:.0f}s; missing: {', '.join(sorted(missing))}. Does "
                    "its bootstrap read this file (dynamic_resources.cds_config), and is --envoy-admin its admin?")
            self._sleep(0.02)
