"""The running policy: loaded at start, watched, recompiled and swapped atomically on change.

``PolicyHolder.current`` is the one reference every new request reads; a request keeps the
policy it started with. The file is polled (once a second by default) by its resolved path and
``stat`` signature, which also catches Kubernetes ConfigMap updates (an atomic ``..data``
symlink swap). A file that fails to compile leaves the running policy in place; the errors, with
file, line, column and field, go to the log, the ``tollway_policy_reloads_total{result="error"}``
metric and ``/readyz``.

Fallback chains need Envoy clusters rendered from the policy (``tollway envoy``). The chains of
the policy the service started with are taken as the ones Envoy has; a reload whose aliases need
others is still applied, but the missing cluster names go to the log and ``/readyz``
(``envoy_clusters_missing``): until Envoy's config is rendered again, those requests get Envoy's
503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.policy.decide import chains, cluster_name

log = logging.getLogger("tollway.policy")


class PolicyHolder:
    """Holds the current :class:`CompiledPolicy` of one file and reloads it when it changes."""

    def __init__(self, path: str, registry: CollectorRegistry | None = None) -> None:
        self.path = path
        self.current: CompiledPolicy | None = None
        self.loaded_at: float | None = None
        self.last_error: str | None = None
        self._signature: tuple[str, int, int, int] | None = None
        self._rendered: frozenset[str] | None = None  # chain clusters of the first policy (Envoy's)
        self.missing_clusters: list[str] = []
        self._reloads = Counter(
            "tollway_policy_reloads", "Policy loads by result", ["result"], registry=registry
        )
        self._info = Gauge("tollway_policy_info", "The loaded policy (value 1)", ["version"], registry=registry)
        self._healthy = Gauge(
            "tollway_policy_last_reload_ok", "1 when the last policy load succeeded", registry=registry
        )

    def _stat(self) -> tuple[str, int, int, int] | None:
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except OSError:
            return None
        return (real, st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> bool:
        """(Re)load the file now; True when a new policy is in place."""
        signature = self._stat()
        self._signature = signature
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
            policy = compile_policy(text, self.path)
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
            self.last_error = str(exc) if not isinstance(exc, OSError) else f"{self.path}: {exc.strerror}"
            self._reloads.labels("error").inc()
            self._healthy.set(0)
            kept = f"keeping version {self.current.version}" if self.current else "no policy loaded"
            log.error("policy %s rejected (%s):\n%s", self.path, kept, self.last_error)
            return False
        previous, self.current = self.current, policy
        self.loaded_at = time.time()
        self.last_error = None
        self._reloads.labels("ok").inc()
        self._healthy.set(1)
        if previous is not None:
            self._info.remove(previous.version)
        self._info.labels(policy.version).set(1)
        log.info("policy %s loaded: version %s", self.path, policy.version)
        needed = frozenset(cluster_name(chain) for chain in chains(policy))
        if self._rendered is None:
            self._rendered = needed
        self.missing_clusters = sorted(needed - self._rendered)
        if self.missing_clusters:
            log.warning(
                "policy %s needs Envoy clusters this sidecar was not started with: %s; render the Envoy "
                "config again (tollway envoy --policy %s); until then these chains get Envoy's 503",
                self.path, ", ".join(self.missing_clusters), self.path,
            )
        return True

    def check(self) -> bool:
        """Reload if the file changed since the last look; True when a new policy is in place."""
        if self._stat() == self._signature:
            return False
        return self.load()

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # the watcher must survive anything a broken file can cause
                log.exception("policy watcher failed")

    def details(self) -> dict[str, object]:
        policy = self.current
        return {
            "source": self.path,
            "version": policy.version if policy else None,
            "loaded_at": self.loaded_at,
            "last_reload_error": self.last_error,
            "envoy_clusters_missing": self.missing_clusters,
        }
