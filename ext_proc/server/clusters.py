"""Envoy's clusters follow the policy: the clusters file Tollway writes, and Envoy's confirmation.

Theory of operation. Envoy's bootstrap reads its provider and fallback clusters from one file
(filesystem CDS with a watched directory, see :mod:`ext_proc.envoy_config`). One process writes
it: the ``tollway serve`` parent (workers never do), through :class:`ClusterSync`, and always
atomically (a temporary file in the same directory, then a rename, which is the move Envoy's
watch reacts to). Each write carries a version, the hash of its content, that Envoy shows on its
admin (``cluster_manager.cds.version_text``).

A policy must never route to a cluster Envoy lacks (the request would get a 503), and a cluster
must not go while requests routed by an older policy may still use it. So a reload runs in this
order (:meth:`ClusterSync.prepare`, called by :class:`~ext_proc.server.reload.PolicyController`):

1. write the clusters of the new policy *plus* those of the policies before it;
2. wait until Envoy's admin reports that version accepted and every cluster of the new policy
   active (warmed), at most ``timeout`` seconds; a rejected or late update fails the reload,
   which keeps the running policy;
3. the caller swaps the policy;
4. clusters no policy has needed for ``retire_after`` seconds (5 minutes: longer than any try's
   first-byte timeout) are dropped by a later write (:meth:`ClusterSync.prune`).

Without an admin address, or while Envoy's admin does not answer (Envoy not started yet, or
restarting), step 2 waits a fixed ``unconfirmed_wait`` instead: Envoy loads a moved file within
milliseconds of the move.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import yaml

from ext_proc.envoy_config import cds_document, policy_clusters
from ext_proc.policy.compiled import CompiledPolicy

log = logging.getLogger("tollway.clusters")

RETIRE_AFTER = 300.0


class EnvoyNotReady(Exception):
    """Envoy did not load the clusters a policy needs (rejected, or not in time)."""


def fetch(url: str, timeout: float = 1.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


class ClusterSync:
    """Writes Envoy's clusters file for each policy and waits for Envoy to load it (see the module docstring)."""

    def __init__(
        self,
        path: str,
        envoy_admin: str | None = None,
        stand_ins: Mapping[str, str] | None = None,
        *,
        timeout: float = 10.0,
        retire_after: float = RETIRE_AFTER,
        unconfirmed_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        get: Callable[[str], bytes] = fetch,
    ) -> None:
        self.path = path
        self.envoy_admin = envoy_admin.rstrip("/") if envoy_admin else None
        self.stand_ins = dict(stand_ins or {})
        self.timeout, self.retire_after, self.unconfirmed_wait = timeout, retire_after, unconfirmed_wait
        self._clock, self._sleep, self._get = clock, sleep, get
        self.written: dict[str, dict[str, Any]] = {}  # what the file holds, by cluster name
        self.version: str | None = None
        self._retired: dict[str, float] = {}  # clusters the current policy does not need: since when

    def clusters(self, policy: CompiledPolicy | None) -> dict[str, dict[str, Any]]:
        """The clusters ``policy`` needs (a ``ClusterError`` when one cannot be built)."""
        return {cluster["name"]: cluster for cluster in policy_clusters(policy, self.stand_ins)}

    def prepare(self, policy: CompiledPolicy | None, *, starting: bool = False) -> None:
        """Steps 1 and 2: have Envoy hold every cluster of ``policy`` (and keep the older ones for now).

        ``starting``: the service's first write, before Envoy may run (Envoy needs the file to
        start): wait for Envoy only if its admin already answers.
        """
        needed = self.clusters(policy)
        now = self._clock()
        for name in self.written:
            if name not in needed:
                self._retired.setdefault(name, now)
        for name in needed:
            self._retired.pop(name, None)
        content = {**{name: self.written[name] for name in self._retired}, **needed}
        rejected_before = self._rejected()
        self._write(content)
        if rejected_before is None and starting:
            return
        self._wait(set(needed), rejected_before)

    def prune(self) -> list[str]:
        """Step 4: drop the clusters unused for ``retire_after`` seconds; their names."""
        now = self._clock()
        gone = sorted(name for name, since in self._retired.items() if now - since >= self.retire_after)
        if gone:
            for name in gone:
                del self._retired[name]
            self._write({name: cluster for name, cluster in self.written.items() if name not in gone})
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
            body = self._get(f"{self.envoy_admin}/stats?filter=%5Ecluster_manager%5C.cds%5C.")
        except (OSError, urllib.error.URLError):
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
        body = self._get(f"{self.envoy_admin}/config_dump?resource=dynamic_active_clusters")
        return {entry["cluster"]["name"] for entry in orjson.loads(body).get("configs", ())}

    def _wait(self, needed: set[str], rejected_before: int | None) -> None:
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
                raise EnvoyNotReady(f"Envoy rejected the clusters file {self.path} (see Envoy's log)")
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
