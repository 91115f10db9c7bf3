"""The running policy: one watcher decides, every worker serves exactly what it decided.

Theory of operation. :class:`PolicyController` is the only reader of the policy file. It runs in
the ``tollway serve`` parent (or in the one process of ``--workers 1``), polls the file (once a
second by default) by its resolved path and ``stat`` signature, which also catches Kubernetes
ConfigMap updates (an atomic ``..data`` symlink swap), and compiles a changed file once it is
*still*: a file written in place (``curl > policy.yaml``, ``cp``, ``envsubst > policy.yaml``) can
be read half-written, and a prefix of a policy may well compile (without its guardrails, say). So
a changed file is read only once it has not changed for ``SETTLE`` seconds (its mtime that old, or
the same ``stat`` signature seen that long ago), and only if its signature is the same after the
read as before it; until then it is neither accepted nor rejected, and the watcher looks again as
soon as it can be still, not a whole interval later. A writer that pauses longer than ``SETTLE``
between two writes can still be read between them: the file should be replaced by rename. A file
moved over the old one (an editor's save) waits for ``SETTLE`` at most; the file behind a swapped
``..data`` link (a path that now resolves to another file) was complete before the swap, and is
read at once. A file that does not compile leaves the running policy in place: the errors, with
file, line, column and field, go to the log, to ``/readyz`` (``policy.state: "stale"``,
``policy.last_reload_error``) and to the metrics (``tollway_policy_reloads_total{result="error"}``,
``tollway_policy_stale``).
A good file first gets its Envoy clusters (:mod:`ext_proc.server.clusters`: written, and
confirmed by Envoy's admin) and only then is *published*, so no request is routed to a cluster
Envoy does not have yet. A file refused for what it says is loaded again once it changes; one
refused for a reason outside it (Envoy rejected or did not load its clusters, or any fault of
Tollway's own, which is never left to the watcher to swallow) is loaded again unchanged, after
1, 2, 4 ... at most 60 seconds, and is stale until then.

Publishing (:class:`Publication`) writes the controller's state (the accepted policy text, its
version, the reload counts and the last error) to a file in a private directory, then increments
a generation counter in shared memory. Each worker's :class:`PolicyHolder` compares that counter
with the generation it serves whenever a request starts (reading one shared integer) and, when it
moved, loads the published state before answering. Workers also follow the counter in the
background, so the compile rarely happens on a request's path. Once the controller has published
a version, every request on every worker, and every ``/readyz`` answer, sees it: workers never
disagree about which policy runs. A request keeps the policy it started with, so a reload fails
no request.

With a clusters file, which providers a stand-in serves (``--stand-in``, and under ``tollway up``
``--stand-in-missing``: every provider without a usable key) is decided for each version too,
and published with it (``PolicyState.stand_ins``): the workers give those providers the
placeholder key. Providers a new version adds to them are published *before* its clusters are
written, so a worker never sends a provider's own key to the stand-in; one a version takes off
them gets its key once that version is published (the real endpoint meanwhile gets the
placeholder, never the fake provider the key).

Without a clusters file (``--envoy-clusters``), Envoy's clusters come from a static config
(``tollway envoy``): the chains of the policy the service started with are taken as the ones
Envoy has, and a reload whose aliases need others is applied but names them (log and
``/readyz`` ``envoy_clusters_missing``): until Envoy's config is rendered again, those requests
get Envoy's 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ext_proc.guardrails import injection
from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.policy.decide import chains, cluster_name
from ext_proc.server.clusters import RETIRE_AFTER, ClusterError, ClusterSync, EnvoyNotReady, EnvoyRejected
from ext_proc.server.credentials import CredentialStore
from ext_proc.server.memory import give_back

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("tollway.policy")

RETRY_MAX = 60.0  # seconds: the longest wait before a file refused for a reason outside it is loaded again
KEEP_FOR = RETIRE_AFTER  # seconds a replaced policy (but the last) serves the tries of requests that started with it
KEEP_MAX = 8  # replaced policies a worker keeps at most
SETTLE = 0.2  # seconds a changed file must have been still before it is read (see the module docstring)
START_WAIT = 10.0  # seconds the first load waits at most for a file still being written

Signature = tuple[str, int, int, int]  # resolved path, inode, mtime (ns), size


@dataclass
class PolicyState:
    """What the controller publishes (JSON in the state file)."""

    generation: int = 0
    source: str | None = None
    text: str | None = None  # the accepted policy: the one to serve
    version: str | None = None
    loaded_at: float | None = None
    last_error: str | None = None  # the last rejected edit; None once a good file is in place
    error_at: float | None = None
    reloads_ok: int = 0
    reloads_error: int = 0
    envoy_clusters_missing: list[str] = field(default_factory=list)
    envoy_clusters: str | None = None  # the clusters file, when Tollway writes one
    stand_ins: dict[str, str] = field(default_factory=dict)  # providers a stand-in serves (with the clusters file)


class Publication:
    """The controller's state shared with the workers: a state file and a generation counter.

    Created by the parent before the workers are spawned, and passed to them (the counter lives
    in shared memory).
    """

    def __init__(self) -> None:
        directory = tempfile.mkdtemp(prefix="tollway-policy-")  # mode 0700: only this user reads the policy
        self.path = os.path.join(directory, "state.json")
        # The policy the supervisor compiled at its start: workers forked from it (through the
        # zygote) serve that version without compiling it again, and share its pages.
        self.preloaded: CompiledPolicy | None = None
        self.generation: Any = multiprocessing.get_context("spawn").Value("Q", 0, lock=False)

    def publish(self, state: PolicyState) -> None:
        state.generation = int(self.generation.value) + 1
        temp = self.path + ".tmp"
        with open(temp, "wb") as handle:
            handle.write(orjson.dumps(asdict(state)))
        os.replace(temp, self.path)
        self.generation.value = state.generation  # after the file: a worker that sees it finds the file

    def read(self) -> PolicyState:
        with open(self.path, "rb") as handle:
            return PolicyState(**orjson.loads(handle.read()))

    def close(self) -> None:
        for path in (self.path, self.path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.path))


class PolicyController:
    """Watches one policy file, prepares Envoy's clusters, publishes (see the module docstring)."""

    def __init__(self, path: str | None, publication: Publication, clusters: ClusterSync | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 settle: float | None = None, credentials: CredentialStore | None = None) -> None:
        self.path = path
        self.credentials = credentials if credentials is not None else CredentialStore()  # read at each load
        self.publication = publication
        self.clusters = clusters
        self.state = PolicyState(source=path, envoy_clusters=clusters.path if clusters else None)
        self.current: CompiledPolicy | None = None
        self._clock = clock
        self._wall = wall  # the clock a file's mtime is compared with
        self.settle = float(SETTLE if settle is None else settle)
        self._signature: Signature | None = None  # the file as last loaded
        self._pending: tuple[Signature, float] | None = None  # a changed file not yet still, and since when seen
        self.next_look: float | None = None  # when the watcher should check again, before its interval
        self._failures = 0  # loads of it in a row that failed for a reason outside the file
        self._retry_at: float | None = None  # when to load it again although unchanged
        self._rendered: frozenset[str] | None = None  # without a clusters file: the chains Envoy started with

    def _stat(self) -> Signature | None:
        assert self.path is not None
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except OSError:
            return None
        return (real, st.st_ino, st.st_mtime_ns, st.st_size)

    def _unsettled(self, signature: Signature | None) -> float:
        """Seconds until the file of ``signature`` has been still for ``settle``: 0 once it has.

        Still: its mtime is ``settle`` old, or (an mtime from a clock ahead of ours, a network
        file system's) the same signature was seen ``settle`` ago. A file the path resolves to
        anew (a ConfigMap's ``..data`` swap) was written before the link was swapped to it: it
        is read at once."""
        if signature is None or self.settle <= 0:
            return 0.0
        if self._signature is not None and signature[0] != self._signature[0]:
            return 0.0
        now = self._clock()
        if self._pending is None or self._pending[0] != signature:
            self._pending = (signature, now)
        wait = self.settle - (now - self._pending[1])
        age = self._wall() - signature[2] / 1e9
        if age >= 0:
            wait = min(wait, self.settle - age)
        return max(wait, 0.0)

    def _read(self, wait: bool = True) -> float | tuple[Signature | None, str | None, str | None]:
        """The file once it was still and did not change while read: its signature (from before
        the read), its text, and why it could not be read (None when it was). Else the seconds to
        wait before looking again. ``wait=False``: read it as it is now."""
        assert self.path is not None
        before = self._stat()
        unsettled = self._unsettled(before) if wait else 0.0
        if unsettled > 0:
            return unsettled
        text = error = None
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            error = f"{self.path}: {exc.strerror or exc}"
        except UnicodeDecodeError as exc:
            error = f"{self.path}: {exc}"
        if wait and self._stat() != before:  # written while it was read: what was read may be torn
            return self.settle
        return before, text, error

    def start(self) -> bool:
        """The first load: False (after saying why) when the service must not start."""
        if self.path is None:  # open mode: only the default providers' clusters
            if self.clusters is not None:
                self.state.stand_ins = self.clusters.stand_ins_of(None)
                try:
                    self.clusters.prepare(None, starting=True)
                except EnvoyNotReady as exc:
                    log.warning("%s", exc)
            self.publication.publish(self.state)
            return True
        return self.load(starting=True)

    def load(self, starting: bool = False) -> bool:
        """(Re)load the file now; True when a new policy was published.

        A file that is not still (see the module docstring) is neither accepted nor rejected: False,
        and :attr:`next_look` says when to look again (the first load waits for it, ``START_WAIT``
        seconds at most, then reads it as it is).
        A file refused for what it says (it does not compile, a chain cannot be built) is loaded
        again once it changes. One refused for a reason outside it (Envoy rejected or did not
        load its clusters, or anything unexpected) is loaded again by a later :meth:`check`
        too, after 1, 2, 4 ... at most 60 seconds, until it is in place.
        """
        assert self.path is not None
        deadline = time.monotonic() + START_WAIT
        while True:
            # At the start, a file never still for START_WAIT is loaded as it is rather than not at all.
            read = self._read(wait=not starting or time.monotonic() < deadline)
            if not isinstance(read, float):
                break
            if not starting:  # still being written: neither accepted nor rejected; look again soon
                self.next_look = self._clock() + read
                return False
            time.sleep(read)  # at the start there is nothing to serve meanwhile: wait for it
        # The signature from before the read: a write after it is seen by the next check.
        (self._signature, text, error), self._pending, self._retry_at = read, None, None
        if text is None:
            return self._reject(str(error))
        refused: EnvoyRejected | None = None
        serving = self.state.stand_ins  # the stand-ins of the running policy
        stand_ins = serving
        try:
            policy = compile_policy(text, self.path)
            give_back()  # the compile's temporaries (Hyperscan's above all)
            clashes = policy.shared_stored_keys(self.credentials.key)
            if clashes:  # one key for two teams' providers, one of which reads what it stores
                return self._reject("\n".join(clashes), stand_ins=serving)
            if self.clusters is not None:
                stand_ins = self.clusters.stand_ins_of(policy)
                self._hold_keys(serving, stand_ins)
                self.clusters.prepare(policy, starting=starting, stand_ins=stand_ins)
        except PolicyError as exc:
            return self._reject(str(exc), stand_ins=serving)
        except ClusterError as exc:
            return self._reject(f"{self.path}: {exc}", stand_ins=serving)
        except EnvoyNotReady as exc:
            if not starting:
                return self._reject(f"{self.path}: {exc}", again=True, stand_ins=serving)
            log.warning("%s", exc)  # Envoy may be the one starting late: serve, and say so
            refused = exc if isinstance(exc, EnvoyRejected) else None
        except Exception as exc:  # a fault of Tollway's own: never a silent, stuck watcher
            log.exception("policy %s: loading it failed", self.path)
            return self._reject(f"{self.path}: cannot load it: {type(exc).__name__}: {exc}", again=not starting,
                                stand_ins=serving)
        self._failures = 0
        self.current = policy
        state = self.state
        for name in sorted(stand_ins.keys() - serving.keys()):
            log.log(logging.INFO if starting else logging.WARNING, "provider %s is served by the stand-in at %s",
                    name, stand_ins[name])
        state.stand_ins = stand_ins
        state.text, state.version, state.loaded_at = text, policy.version, time.time()
        state.last_error = state.error_at = None
        state.reloads_ok += 1
        state.envoy_clusters_missing = self._missing(policy)
        self.publication.publish(state)
        log.info("policy %s loaded: version %s", self.path, policy.version)
        for note in policy.notes:  # not mistakes (they do not stop a load): what `policy check` prints
            log.info("policy note: %s", note)
        if refused is not None:  # served (there is nothing older), but stale, and tried again
            self._reject(f"{self.path}: {refused}", again=True)
            return True
        if state.envoy_clusters_missing:
            log.warning(
                "policy %s needs Envoy clusters this sidecar was not started with: %s; render the Envoy "
                "config again (tollway envoy --policy %s); until then these chains get Envoy's 503",
                self.path, ", ".join(state.envoy_clusters_missing), self.path,
            )
        return True

    def _hold_keys(self, serving: dict[str, str], stand_ins: dict[str, str]) -> None:
        """Before Envoy's clusters send a provider to a stand-in, have the workers give it the
        placeholder key instead of its own: publish the new stand-ins with the running policy."""
        if any(serving.get(name) != url for name, url in stand_ins.items()):
            self.state.stand_ins = {**serving, **stand_ins}
            self.publication.publish(self.state)

    def _reject(self, message: str, again: bool = False, stand_ins: dict[str, str] | None = None) -> bool:
        """Keep the running policy and say why (``again``: load the same file later); False.
        ``stand_ins``: the running policy's (what :meth:`_hold_keys` may have added is taken back)."""
        state = self.state
        if stand_ins is not None:
            state.stand_ins = stand_ins
        state.last_error, state.error_at = message, time.time()
        state.reloads_error += 1
        kept = f"keeping version {state.version}" if state.version else "no policy loaded"
        if again:
            delay = min(2.0 ** self._failures, RETRY_MAX)
            self._failures += 1
            self._retry_at = self._clock() + delay
            kept += f"; trying again in {delay:.0f}s"
        else:
            self._failures = 0
        log.error("policy %s rejected (%s):\n%s", self.path, kept, message)
        self.publication.publish(state)
        return False

    def _missing(self, policy: CompiledPolicy) -> list[str]:
        if self.clusters is not None:
            return []  # the clusters file has them, and Envoy confirmed it
        needed = frozenset(cluster_name(chain) for chain in chains(policy))
        if self._rendered is None:
            self._rendered = needed
        return sorted(needed - self._rendered)

    def check(self) -> bool:
        """Reload if the file changed since the last look; True when a new policy was published."""
        self.next_look = None
        if self.clusters is not None:
            self.clusters.prune()
        if self.path is None:
            return False
        if self._stat() == self._signature and (self._retry_at is None or self._clock() < self._retry_at):
            return False
        return self.load()

    def watch(self, interval: float, stop: threading.Event) -> None:
        """Check every ``interval`` seconds until ``stop`` is set (run in a thread); sooner when a
        changed file can be still before then."""
        while not stop.wait(interval if self.next_look is None
                            else min(interval, max(self.next_look - self._clock(), 0.0))):
            try:
                self.check()
            except Exception:  # the watcher must survive anything a broken file can cause
                log.exception("policy watcher failed")


class PolicyHolder:
    """A worker's view of the published policy: ``current`` is what every new request reads.

    The policies its reloads replaced are kept for the requests that started with them: a
    fallback chain's later try may come to any worker (:mod:`ext_proc.core.attempt`), after any
    number of reloads, and finds its request's policy by version (:meth:`started`). No worker
    knows which requests of the others are still in flight, so the last policy replaced is kept
    until the next reload, and the ones before it for ``KEEP_FOR`` seconds after they were
    replaced (as long as Envoy keeps the clusters they routed to), the last ``KEEP_MAX`` at most:
    that bounds the memory a series of quick edits holds.
    """

    def __init__(self, publication: Publication, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.publication = publication
        self._shared = publication.generation
        self._seen = -1
        self._policy: CompiledPolicy | None = None
        self._replaced: dict[str, tuple[CompiledPolicy, float]] = {}  # version -> (policy, replaced at), oldest first
        self._clock = clock
        self.state = PolicyState()
        if registry is not None:
            from ext_proc.server.collectors import PolicyMetrics  # prometheus_client: workers only

            registry.register(PolicyMetrics(self))

    @property
    def current(self) -> CompiledPolicy | None:
        if self._shared.value != self._seen:
            self.sync()
        return self._policy

    def sync(self) -> None:
        """Serve the published state now (a worker's compile of the controller's accepted text)."""
        generation = int(self._shared.value)
        try:
            state = self.publication.read()
        except (OSError, ValueError, TypeError):
            log.exception("cannot read the published policy state; keeping the running policy")
            return
        if state.text is not None and (self._policy is None or self._policy.version != state.version):
            preloaded = self.publication.preloaded
            kept = self._replaced.pop(state.version, None) if state.version else None
            if preloaded is not None and preloaded.version == state.version:
                policy = preloaded  # compiled by the supervisor, inherited at the fork
            elif kept is not None:
                policy = kept[0]  # a version back again (an edit undone)
            else:
                try:
                    policy = compile_policy(state.text, state.source or "<policy>")
                except PolicyError:  # the controller compiled the same text: cannot happen, but never crash
                    log.exception("the published policy did not compile in this worker")
                    return
                give_back()  # the compile's temporaries (Hyperscan's above all)
            if self._policy is not None:
                self._replaced[self._policy.version] = (self._policy, self._clock())
            self._policy = policy
            if policy.guardrails is not None and policy.guardrails.scores_injection:
                injection.warm()  # now, not in the first request (a no-op when the zygote did it)
        self.state = state
        self._seen = max(generation, state.generation)
        self._forget()

    def started(self, version: str) -> CompiledPolicy | None:
        """The policy of ``version``, for a request that started with it; None once it is not kept."""
        if self._policy is not None and self._policy.version == version:
            return self._policy
        kept = self._replaced.get(version)
        return kept[0] if kept is not None else None

    def _forget(self) -> None:
        """Drop the replaced policies no request can still be using (see the class docstring)."""
        if len(self._replaced) < 2:
            return
        now = self._clock()
        *older, _last = self._replaced
        stale = [version for version in older if now - self._replaced[version][1] >= KEEP_FOR]
        stale += older[:max(0, len(older) + 1 - KEEP_MAX)]
        for version in stale:
            self._replaced.pop(version, None)

    async def follow(self, interval: float = 0.25) -> None:
        """Load new publications off the request path (a request that comes first loads it itself:
        ``current``). Four times a second: the supervisor reads the file once a second, and an idle
        worker woken 20 times a second spent a few ms of CPU each second doing nothing."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self._shared.value != self._seen:
                    self.sync()
                self._forget()
            except Exception:
                log.exception("policy follower failed")

    def details(self) -> dict[str, object]:
        self.current  # noqa: B018 - serve the latest publication
        state = self.state
        return {
            "source": state.source,
            "version": state.version,
            "loaded_at": state.loaded_at,
            # stale: the file on disk was rejected, the last good version still serves
            "state": "stale" if state.last_error else ("current" if state.version else "none"),
            "last_reload_error": state.last_error,
            "last_reload_error_at": state.error_at,
            "envoy_clusters": state.envoy_clusters,
            "envoy_clusters_missing": state.envoy_clusters_missing,
        }
