"""The policy controller and the workers' view: atomic swaps, broken edits keep the running policy,
ConfigMap symlink swaps, one published version for every worker, Envoy's clusters before the policy,
a file written in place read only once it is still."""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from ext_proc.policy.compile import compile_policy
from ext_proc.server import reload
from ext_proc.server.clusters import ClusterSync, EnvoyNotReady, fetch
from ext_proc.server.credentials import CredentialStore
from ext_proc.server.reload import KEEP_FOR, KEEP_MAX, SETTLE, PolicyController, PolicyHolder, Publication

GOOD = """apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o: {provider: openai}
teams:
  search: {workloads: [w1], models: [gpt-4o]}
"""


@pytest.fixture
def publication() -> Iterator[Publication]:
    pub = Publication()
    yield pub
    pub.close()


@pytest.fixture(autouse=True)
def read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most tests here write the file in place and check it at once: they are about what a load
    does, not when a file is still (the tests at the end, which give ``settle`` themselves)."""
    monkeypatch.setattr(reload, "SETTLE", 0.0)


def test_load_change_and_broken_edit(tmp_path: Path, publication: Publication) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    registry = CollectorRegistry()
    controller = PolicyController(str(path), publication)
    holder = PolicyHolder(publication, registry)
    assert controller.start()
    first = holder.current
    assert first is not None and controller.check() is False  # unchanged: nothing to do
    path.write_text(GOOD.replace("gpt-4o: {provider: openai}", "gpt-4o: {provider: openai, aliases: [g4]}"))
    assert controller.check() is True
    assert holder.current is not first and holder.current is not None and holder.current.resolve("g4") is not None
    second = holder.current
    path.write_text(GOOD.replace("kind: openai", "kind: openia"))
    assert controller.check() is False
    assert holder.current is second  # the running policy stays
    details = holder.details()
    assert details["state"] == "stale" and details["version"] == second.version
    error = details["last_reload_error"]
    assert isinstance(error, str) and f"{path}:3:" in error and "openia" in error
    metrics = generate_latest(registry).decode()
    assert 'tollway_policy_reloads_total{result="error"} 1.0' in metrics
    assert 'tollway_policy_reloads_total{result="ok"} 2.0' in metrics
    assert f'tollway_policy_info{{version="{second.version}"}} 1.0' in metrics
    assert "tollway_policy_stale 1.0" in metrics and "tollway_policy_last_reload_ok 0.0" in metrics
    assert first.version not in metrics  # the old version's series is gone
    path.write_text(GOOD)
    assert controller.check() is True and holder.details()["last_reload_error"] is None
    assert holder.details()["state"] == "current" and "tollway_policy_stale 0.0" in generate_latest(registry).decode()


def test_every_worker_serves_the_published_version_from_its_next_request(
    tmp_path: Path, publication: Publication
) -> None:
    """The workers never read the file: once the controller publishes, every view answers with it."""
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    controller = PolicyController(str(path), publication)
    assert controller.start()
    workers = [PolicyHolder(publication) for _ in range(3)]
    assert {w.current.version for w in workers if w.current} == {controller.state.version}
    path.write_text(GOOD.replace("models: [gpt-4o]", 'models: ["*"]'))
    assert controller.check()
    for worker in workers:
        assert worker.current is not None and worker.current.version == controller.state.version
        assert worker.details()["version"] == controller.state.version
    # A file changed on disk but not (yet) accepted by the controller is served by nobody.
    path.write_text(GOOD.replace("models: [gpt-4o]", "models: [gpt-4o, gpt-4o]"))
    assert all(w.current is not None and w.current.teams["search"].all_models for w in workers)


def test_configmap_style_symlink_swap(tmp_path: Path, publication: Publication) -> None:
    # Kubernetes mounts a ConfigMap as policy.yaml -> ..data/policy.yaml, ..data -> ..2026_11_01_x;
    # an update writes a new timestamped directory and swaps the ..data link atomically.
    def version_dir(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "policy.yaml").write_text(text)

    version_dir("..v1", GOOD)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    controller = PolicyController(str(tmp_path / "policy.yaml"), publication)
    holder = PolicyHolder(publication)
    assert controller.start()
    version_dir("..v2", GOOD.replace("models: [gpt-4o]", 'models: ["*"]'))
    os.symlink("..v2", tmp_path / "..tmp")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    assert controller.check() is True
    assert holder.current is not None and holder.current.teams["search"].all_models


def test_a_policy_with_notes_loads_and_logs_them(tmp_path: Path, caplog: Any, publication: Publication) -> None:
    """A $0 budget was refused, so `tollway serve` exited 2 at start (a sidecar's crash loop): it is
    a note now, which the load logs."""
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD + "budgets:\n  freeze: {team: search, usd: \"0\", period: month}\n")
    controller = PolicyController(str(path), publication)
    with caplog.at_level("INFO", logger="tollway.policy"):
        assert controller.start()
    assert PolicyHolder(publication).current is not None
    assert f"policy note: {path}:9:31: budgets.freeze.usd: note: $0: a hard budget" in caplog.text


def test_missing_file_is_an_error_not_a_crash(tmp_path: Path, publication: Publication) -> None:
    controller = PolicyController(str(tmp_path / "absent.yaml"), publication)
    assert controller.start() is False
    holder = PolicyHolder(publication)
    assert holder.current is None and "absent.yaml" in str(holder.details()["last_reload_error"])


CHAINED = GOOD.replace("""teams:""", """  claude: {provider: anthropic}
routing:
  aliases:
    smart:
      targets:
        - {provider: openai, model: gpt-4o}
        - {provider: anthropic, model: claude-x}
teams:""").replace("""providers:
""", """providers:
  anthropic: {kind: anthropic, credential: {env: ANTHROPIC_API_KEY}}
""")
SWAPPED = CHAINED.replace("- {provider: openai, model: gpt-4o}\n        - {provider: anthropic, model: claude-x}",
                          "- {provider: anthropic, model: claude-x}\n        - {provider: openai, model: gpt-4o}")


def test_without_a_clusters_file_a_reload_needing_new_clusters_is_applied_and_says_which(
    tmp_path: Path, caplog: Any, publication: Publication
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(CHAINED)
    controller = PolicyController(str(path), publication)
    holder = PolicyHolder(publication)
    assert controller.start() and holder.details()["envoy_clusters_missing"] == []  # started with: Envoy has them
    # The same providers in the other order need a cluster Envoy was not rendered with.
    path.write_text(SWAPPED)
    with caplog.at_level("WARNING", logger="tollway.policy"):
        assert controller.check() is True
    assert holder.current is not None and holder.current.alias("smart") is not None
    assert holder.details()["envoy_clusters_missing"] == ["anthropic+openai"]
    assert "render the Envoy config again" in caplog.text and "anthropic+openai" in caplog.text
    path.write_text(CHAINED)
    assert controller.check() is True and holder.details()["envoy_clusters_missing"] == []


# -- the clusters file, against a fake Envoy admin -------------------------------------------------


class FakeEnvoy:
    """Envoy's admin as ClusterSync reads it: loads the clusters file when asked, or rejects it."""

    def __init__(self, path: Path, reject: bool = False, deaf: bool = False) -> None:
        self.path, self.reject, self.deaf = path, reject, deaf
        self.refuse: set[str] = set()  # clusters it rejects any file holding (a host it cannot take)
        self.version = "none"
        self.active: set[str] = set()
        self.rejected = 0

    def get(self, admin: str, url: str) -> bytes:
        document = yaml.safe_load(self.path.read_text()) if self.path.exists() else None
        if document and not self.deaf and document["version_info"] != self.version:
            if self.reject or self.refuse & {r["name"] for r in document["resources"]}:
                self.rejected += 1
            else:
                self.version = document["version_info"]
                self.active = {r["name"] for r in document["resources"]}
        if "/stats" in url:
            return (f'cluster_manager.cds.update_rejected: {self.rejected}\n'
                    f'cluster_manager.cds.version_text: "{self.version}"\n').encode()
        return orjson.dumps({"configs": [{"cluster": {"name": name}} for name in sorted(self.active)]})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.5)  # big steps: a timeout passes in a few polls


def test_clusters_come_before_the_policy_and_go_only_after_it(tmp_path: Path, publication: Publication) -> None:
    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(CHAINED)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    sync = ClusterSync(str(clusters_file), "http://envoy", clock=clock, sleep=clock.sleep, get=envoy.get)
    controller = PolicyController(str(path), publication, sync)
    holder = PolicyHolder(publication)
    assert controller.start()
    assert envoy.active == {"openai", "anthropic", "openai+anthropic"}
    path.write_text(SWAPPED)
    assert controller.check()
    # Envoy had the new chain before the policy was published; the old one stays for now.
    assert envoy.active == {"openai", "anthropic", "openai+anthropic", "anthropic+openai"}
    assert holder.current is not None and holder.current.version == controller.state.version
    clock.now += 299
    assert controller.check() is False and "openai+anthropic" in envoy.active
    clock.now += 2
    controller.check()
    document = yaml.safe_load(clusters_file.read_text())  # retired after 5 minutes
    assert {r["name"] for r in document["resources"]} == {"openai", "anthropic", "anthropic+openai"}
    assert oct(clusters_file.stat().st_mode)[-3:] == "640"


def test_a_policy_whose_clusters_envoy_rejects_or_cannot_build_is_refused(
    tmp_path: Path, publication: Publication
) -> None:
    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(GOOD)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    sync = ClusterSync(str(clusters_file), "http://envoy", clock=clock, sleep=clock.sleep, get=envoy.get)
    controller = PolicyController(str(path), publication, sync)
    holder = PolicyHolder(publication)
    assert controller.start()
    first = holder.current
    envoy.reject = True
    path.write_text(CHAINED)
    assert controller.check() is False
    assert holder.current is first and "Envoy rejected the clusters file" in str(holder.details()["last_reload_error"])
    envoy.reject, envoy.deaf = False, True  # accepted by nobody: the reload times out
    path.write_text(CHAINED + "\n")
    assert controller.check() is False and clock.now >= 10
    error = str(holder.details()["last_reload_error"])
    assert "did not load the clusters file" in error and "openai+anthropic" in error
    envoy.deaf = False
    path.write_text(CHAINED.replace("  anthropic: {kind: anthropic,", "  anthropic: {kind: openai-compatible,"))
    assert controller.check() is False  # a chain through a provider without an endpoint
    error = str(holder.details()["last_reload_error"])
    assert "falls back through provider 'anthropic', which has no endpoint" in error
    assert holder.current is first


def resources(clusters_file: Path) -> set[str]:
    return {r["name"] for r in yaml.safe_load(clusters_file.read_text())["resources"]}


LOCAL = GOOD.replace("models:\n", """  local: {kind: openai-compatible, endpoint: "http://10.0.0.9:8000"}
models:
  llama: {provider: local}
""", 1)
REVOKED = GOOD.replace("workloads: [w1]", "workloads: [w2]")


def test_a_rejected_update_is_not_the_next_ones_baseline(tmp_path: Path, publication: Publication) -> None:
    """The clusters Envoy accepted last are what a reload keeps: one file Envoy rejects must not
    make it reject the next ones (which used to carry the rejected clusters along for 5 minutes)."""
    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(GOOD)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    sync = ClusterSync(str(clusters_file), "http://envoy", clock=clock, sleep=clock.sleep, get=envoy.get)
    controller = PolicyController(str(path), publication, sync, clock=clock)
    holder = PolicyHolder(publication)
    assert controller.start()
    envoy.refuse = {"local"}  # as Envoy refuses a host it cannot take
    path.write_text(LOCAL)
    assert controller.check() is False
    error = str(holder.details()["last_reload_error"])
    assert "Envoy rejected the clusters file" in error
    assert "the clusters local (provider 'local' at http://10.0.0.9:8000);" in error  # not "see Envoy's log"
    assert resources(clusters_file) == {"openai"}  # back to what Envoy holds: an Envoy restarting can load it
    path.write_text(REVOKED)  # the fix (a workload revoked): at once, not 5 minutes later
    assert controller.check() is True and holder.details()["state"] == "current"
    assert holder.current is not None and "w1" not in holder.current.workloads
    assert resources(clusters_file) == {"openai"} and envoy.active == {"openai"}


def test_a_start_envoy_rejects_serves_but_is_stale_and_tried_again(tmp_path: Path, publication: Publication) -> None:
    """Tollway restarted beside a running Envoy that refuses some of the policy's clusters: it
    serves (there is nothing older to keep) but says so, and tries again, as a reload does (it
    said 'current', and nothing ever tried again)."""
    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(LOCAL)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    envoy.version = "running"  # its admin answers: Envoy is up
    envoy.refuse = {"local"}
    sync = ClusterSync(str(clusters_file), "http://envoy", clock=clock, sleep=clock.sleep, get=envoy.get)
    controller = PolicyController(str(path), publication, sync, clock=clock)
    holder = PolicyHolder(publication)
    assert controller.start()
    assert holder.current is not None and holder.details()["state"] == "stale"
    assert "Envoy rejected the clusters file" in str(holder.details()["last_reload_error"])
    clock.now += 1.5
    assert controller.check() is False and envoy.rejected >= 2  # tried again, still refused
    assert resources(clusters_file) == {"openai", "local"}  # never emptied: what Envoy could take stays
    envoy.refuse = set()
    clock.now += 5
    assert controller.check() is True and holder.details()["state"] == "current"


def test_a_rejected_reload_retires_no_cluster_of_the_running_policy(tmp_path: Path, publication: Publication) -> None:
    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(CHAINED)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    sync = ClusterSync(str(clusters_file), "http://envoy", clock=clock, sleep=clock.sleep, get=envoy.get)
    controller = PolicyController(str(path), publication, sync, clock=clock)
    assert controller.start()
    envoy.reject = True
    path.write_text(LOCAL)  # would drop anthropic and the chain: but it is refused, CHAINED still runs
    assert controller.check() is False
    clock.now += 400
    controller.check()
    assert resources(clusters_file) == {"openai", "anthropic", "openai+anthropic"}
    assert envoy.active == {"openai", "anthropic", "openai+anthropic"}


def test_a_file_refused_for_a_reason_outside_it_is_loaded_again_untouched(
    tmp_path: Path, publication: Publication
) -> None:
    """Envoy rejecting or late, or any fault of Tollway's own: stale with the error, and the same
    file is loaded again by a later check (after 1, 2, 4 ... 60 s), with no need to touch it."""
    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(GOOD)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    sync = ClusterSync(str(clusters_file), "http://envoy", clock=clock, sleep=clock.sleep, get=envoy.get)
    registry = CollectorRegistry()
    controller = PolicyController(str(path), publication, sync, clock=clock)
    holder = PolicyHolder(publication, registry)
    assert controller.start()
    envoy.reject = True
    path.write_text(CHAINED)
    assert controller.check() is False and holder.details()["state"] == "stale"
    envoy.reject = False
    assert controller.check() is False  # not yet: a second later
    clock.now += 1
    assert controller.check() is True and holder.details()["state"] == "current"
    assert holder.current is not None and holder.current.alias("smart") is not None

    def broken(policy: object, stand_ins: object = None) -> dict[str, Any]:
        raise ValueError("Port out of range 0-65535")  # what an unparsed endpoint used to raise here

    sync.clusters = broken  # type: ignore[method-assign]
    path.write_text(GOOD)
    assert controller.check() is False  # not raised into the watcher, where it vanished
    details = holder.details()
    assert details["state"] == "stale"
    assert details["last_reload_error"] == f"{path}: cannot load it: ValueError: Port out of range 0-65535"
    metrics = generate_latest(registry).decode()
    assert "tollway_policy_stale 1.0" in metrics and 'tollway_policy_reloads_total{result="error"} 2.0' in metrics
    clock.now += 1
    assert controller.check() is False  # tried again: 1 s, then 2 s, then 4 s
    clock.now += 1
    assert controller.check() is False and controller._retry_at == clock.now + 1
    del sync.clusters  # the fault is gone
    clock.now += 1
    assert controller.check() is True and holder.details()["state"] == "current"
    assert holder.current is not None and holder.current.alias("smart") is None

    # At the start: refused with the error (tollway serve exits 2), not a traceback out of it.
    starting = Publication()
    try:
        other = ClusterSync(str(tmp_path / "other.yaml"))
        other.clusters = broken  # type: ignore[method-assign]
        assert PolicyController(str(path), starting, other).start() is False
        assert "ValueError: Port out of range" in str(starting.read().last_error)
    finally:
        starting.close()


def test_without_envoys_admin_the_write_is_given_a_moment(tmp_path: Path) -> None:
    clock = Clock()

    def refused(admin: str, url: str) -> bytes:
        raise ConnectionRefusedError(admin + url)

    sync = ClusterSync(str(tmp_path / "c.yaml"), "http://127.0.0.1:1", clock=clock, sleep=clock.sleep, get=refused)
    sync.prepare(None, starting=True)
    assert clock.now == 0  # starting: Envoy needs the file first, nothing to wait for
    sync.prepare(None)
    assert clock.now == 1.0  # unconfirmed_wait
    assert {c["name"] for c in yaml.safe_load((tmp_path / "c.yaml").read_text())["resources"]} == {
        "openai", "anthropic"}
    with pytest.raises(EnvoyNotReady):
        ClusterSync(str(tmp_path / "d.yaml"), "http://envoy", clock=clock, sleep=clock.sleep,
                    get=FakeEnvoy(tmp_path / "d.yaml", deaf=True).get).prepare(None)


def test_envoys_admin_on_a_unix_socket_confirms_the_clusters(tmp_path: Path) -> None:
    """The injected sidecar's Envoy has its admin on a Unix socket (``--envoy-admin unix:PATH``):
    the same questions, over it; an answer other than 200 is no confirmation."""
    clusters_file = tmp_path / "clusters.yaml"
    envoy = FakeEnvoy(clusters_file)

    class Admin(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (200, envoy.get("", self.path)) if self.path.startswith(("/stats?", "/config_dump?")) \
                else (404, b"")
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            request, _ = super().get_request()
            return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)

    socket_path = str(tmp_path / "envoy-admin.sock")
    with Server(socket_path, Admin) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            sync = ClusterSync(str(clusters_file), f"unix:{socket_path}", timeout=5.0)
            sync.prepare(None)
            assert envoy.active == {"openai", "anthropic"} and envoy.version == sync.version
            assert sync._rejected() == 0
            with pytest.raises(OSError, match="404"):
                fetch(f"unix:{socket_path}", "/nowhere")
        finally:
            server.shutdown()
    with pytest.raises(OSError):
        fetch(f"unix:{tmp_path / 'none.sock'}", "/ready")


def test_a_worker_serves_the_supervisors_compile_of_the_same_version(tmp_path: Path, publication: Publication) -> None:
    """Workers forked from the supervisor (through the zygote) inherit its compile of the starting
    policy: they serve that object; a later version they compile themselves."""
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    controller = PolicyController(str(path), publication)
    assert controller.start()
    publication.preloaded = controller.current
    holder = PolicyHolder(publication)
    assert holder.current is controller.current
    path.write_text(GOOD.replace("models: [gpt-4o]", 'models: ["*"]'))
    assert controller.check() is True
    assert holder.current is not publication.preloaded and holder.current is not None
    assert holder.current.teams["search"].all_models


def test_a_worker_keeps_the_policies_it_replaced_for_a_while(tmp_path: Path, publication: Publication) -> None:
    """The tries of a request find its policy by version after any number of reloads: the last
    replaced one until the next reload, the ones before for KEEP_FOR seconds, KEEP_MAX at most."""
    path, clock = tmp_path / "policy.yaml", Clock()
    controller = PolicyController(str(path), publication)
    holder = PolicyHolder(publication, clock=clock)
    versions = []
    for count in range(KEEP_MAX + 3):
        path.write_text(GOOD + f"# edit {count}\n")
        assert controller.load()
        assert holder.current is not None
        versions.append(holder.current)
    assert [holder.started(p.version) for p in versions] == [None] * 2 + versions[2:]  # the current and 8 replaced
    clock.now += KEEP_FOR
    holder._forget()  # the worker's follower does it
    assert [holder.started(p.version) for p in versions] == [None] * (KEEP_MAX + 1) + versions[-2:]
    path.write_text(GOOD + "# edit 9\n")  # a version back again: the same object, not compiled again
    assert controller.load() and holder.current is versions[-2]
    assert holder.started(versions[-1].version) is versions[-1]


# -- a file written in place: read once it is still ------------------------------------------------

GUARDED = GOOD + """guardrails:
  rules:
    - {name: pii, detectors: [email], action: redact, direction: both}
"""


def test_a_file_written_in_place_is_read_only_once_it_is_still(tmp_path: Path, publication: Publication) -> None:
    """`curl > policy.yaml`, `cp`, `envsubst > policy.yaml`: a writer that pauses between two writes
    had its first part read, and the prefix compiled (a policy without its guardrails), served until
    the next check. A changed file is neither accepted nor rejected until it has been still for
    SETTLE seconds, and the watcher looks again as soon as it can be."""
    path, clock, wall = tmp_path / "policy.yaml", Clock(), Clock()
    path.write_text(GOOD)
    wall.now = time.time() + 60  # written long ago
    controller = PolicyController(str(path), publication, clock=clock, wall=wall, settle=SETTLE)
    holder = PolicyHolder(publication)
    assert controller.start()
    first = controller.state.version
    cut = GUARDED.index("guardrails:")
    assert compile_policy(GUARDED[:cut], "x").guardrails is None  # the prefix is a policy: no guardrails
    with open(path, "w") as handle:
        handle.write(GUARDED[:cut])
        handle.flush()
        wall.now = os.stat(path).st_mtime_ns / 1e9 + 0.05  # the writer paused 50 ms ago
        assert controller.check() is False
        assert controller.next_look == pytest.approx(clock.now + SETTLE - 0.05)  # looks again when it can be still
        clock.now += 0.1
        wall.now += 0.1
        assert controller.check() is False
        handle.write(GUARDED[cut:])
    mtime = os.stat(path).st_mtime_ns / 1e9
    wall.now = mtime + 0.01
    assert controller.check() is False and controller.next_look == pytest.approx(clock.now + SETTLE - 0.01)
    details = holder.details()  # neither accepted nor rejected meanwhile
    assert details["version"] == first and details["state"] == "current" and details["last_reload_error"] is None
    assert (controller.state.reloads_ok, controller.state.reloads_error) == (1, 0)
    wall.now = mtime + SETTLE
    assert controller.check() is True
    assert holder.current is not None and holder.current.guardrails is not None
    assert controller.next_look is None and controller.check() is False


def test_an_mtime_ahead_of_this_clock_is_still_once_seen_unchanged_for_the_settle_time(
    tmp_path: Path, publication: Publication
) -> None:
    """A network file system's clock ahead of this one: its mtime looks young for ever; the file is
    still once the same signature was seen SETTLE seconds ago."""
    path, clock, wall = tmp_path / "policy.yaml", Clock(), Clock()
    path.write_text(GOOD)
    controller = PolicyController(str(path), publication, clock=clock, wall=wall, settle=SETTLE)
    start = threading.Thread(target=controller.start)  # at the start, waits for it (START_WAIT at most)
    start.start()
    time.sleep(0.05)
    clock.now += SETTLE
    start.join(5)
    assert not start.is_alive() and controller.state.version is not None
    path.write_text(GUARDED)
    assert controller.check() is False
    clock.now += SETTLE / 2
    assert controller.check() is False
    clock.now += SETTLE / 2
    assert controller.check() is True and PolicyHolder(publication).current.guardrails is not None  # type: ignore[union-attr]


def test_a_file_written_while_it_is_read_is_not_published(
    tmp_path: Path, publication: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, wall = tmp_path / "policy.yaml", Clock()
    path.write_text(GOOD)
    wall.now = time.time() + 60
    controller = PolicyController(str(path), publication, clock=Clock(), wall=wall, settle=SETTLE)
    assert controller.start()
    first = controller.state.version
    cut = GUARDED.index("guardrails:")
    path.write_text(GUARDED[:cut])
    read = open

    def torn(name: Any, *args: Any, **kwargs: Any) -> Any:
        handle = read(name, *args, **kwargs)
        if name == str(path):  # the writer's next chunk lands while the file is read
            with read(path, "a") as writer:
                writer.write(GUARDED[cut:])
        return handle

    with monkeypatch.context() as patched:
        patched.setattr("builtins.open", torn)
        assert controller.check() is False
    assert controller.state.version == first and controller.state.last_error is None
    assert controller.check() is True and PolicyHolder(publication).current.guardrails is not None  # type: ignore[union-attr]


def test_a_configmap_swap_is_read_at_once(tmp_path: Path, publication: Publication) -> None:
    """The file behind a swapped ``..data`` link was written before the swap: no settle time."""
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "policy.yaml").write_text(GOOD)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    wall = Clock()
    wall.now = time.time() + 60
    controller = PolicyController(str(tmp_path / "policy.yaml"), publication, clock=Clock(), wall=wall, settle=SETTLE)
    assert controller.start()
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "policy.yaml").write_text(GUARDED)
    os.symlink("..v2", tmp_path / "..tmp")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    wall.now = time.time()  # the new file is a few microseconds old
    assert controller.check() is True and PolicyHolder(publication).current.guardrails is not None  # type: ignore[union-attr]


OWN = GOOD.replace("models:\n", "  own: {kind: openai-compatible, endpoint: http://127.0.0.1:8000, "
                                "credential: {env: OWN_KEY}}\nmodels:\n  llama: {provider: own}\n")
ADDS_MISTRAL = OWN.replace("models:\n", "  mistral: {kind: openai-compatible, endpoint: https://api.mistral.ai, "
                                        "credential: {env: MISTRAL_API_KEY}}\nmodels:\n  mistral-small: "
                                        "{provider: mistral}\n")
FAKE = "http://127.0.0.1:18080"


def test_a_provider_a_reload_adds_without_its_key_gets_the_stand_in_before_its_cluster_does(
    tmp_path: Path, publication: Publication
) -> None:
    """tollway serve --stand-in-missing (tollway up): decided for each policy version. A provider without its
    key gets the stand-in; one whose endpoint moves off this machine too, and the workers give it the
    placeholder key before Envoy's cluster sends it there (never its own key to the fake provider); a
    rejected version takes them back."""
    from ext_proc.server.credentials import STAND_IN_KEY, CredentialStore

    path, clusters_file = tmp_path / "policy.yaml", tmp_path / "clusters.yaml"
    path.write_text(OWN)
    envoy, clock = FakeEnvoy(clusters_file), Clock()
    environ = {"OPENAI_API_KEY": "sk-openai-real-0001", "OWN_KEY": "sk-own-real-0002", "MISTRAL_API_KEY": ""}
    holder = PolicyHolder(publication)

    def published() -> dict[str, str]:  # as a worker reads them (ext_proc.server.worker)
        holder.current  # noqa: B018 - the latest publication
        return holder.state.stand_ins

    worker = CredentialStore(environ, more=published)
    seen: list[str] = []  # the key a worker gives provider own while its cluster reaches the fake provider

    def address(cluster: dict[str, Any]) -> dict[str, Any]:
        return dict(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"])

    def get(admin: str, url: str) -> bytes:
        document = yaml.safe_load(clusters_file.read_text()) if clusters_file.exists() else None
        for cluster in document["resources"] if document else ():
            if cluster["name"] == "own" and address(cluster)["socket_address"]["port_value"] == 18080:
                running = holder.current
                assert running is not None
                seen.append(dict(worker.headers(running.providers["own"]))["authorization"])
        return envoy.get(admin, url)

    sync = ClusterSync(str(clusters_file), "http://envoy", stand_in_missing=FAKE,
                       credentials=CredentialStore(environ), clock=clock, sleep=clock.sleep, get=get)
    controller = PolicyController(str(path), publication, sync, clock=clock)
    assert controller.start()
    assert published() == {}  # openai and own have their keys, own is on this machine
    edited = ADDS_MISTRAL.replace("http://127.0.0.1:8000", "https://llm.example.com")
    envoy.reject = True
    path.write_text(edited)
    assert controller.check() is False
    assert published() == {}  # the running policy's again
    envoy.reject = False
    clock.now += 1
    assert controller.check() is True
    assert published() == {"mistral": FAKE, "own": FAKE}
    policy = holder.current
    assert policy is not None and "mistral" in policy.providers
    clusters = {c["name"]: c for c in yaml.safe_load(clusters_file.read_text())["resources"]}
    for name in ("mistral", "own"):
        assert address(clusters[name]) == {"socket_address": {"address": "127.0.0.1", "port_value": 18080}}
        assert dict(worker.headers(policy.providers[name])) == {"authorization": f"Bearer {STAND_IN_KEY}"}
    assert dict(worker.headers(policy.providers["openai"])) == {"authorization": "Bearer sk-openai-real-0001"}
    assert seen and set(seen) == {f"Bearer {STAND_IN_KEY}"}, seen


def test_without_stand_in_missing_a_provider_without_its_key_keeps_its_endpoint(tmp_path: Path) -> None:
    """tollway serve's own behaviour (production): a provider without its key is not redirected anywhere."""
    from ext_proc.server.credentials import CredentialStore

    sync = ClusterSync(str(tmp_path / "clusters.yaml"), credentials=CredentialStore({}))
    policy = compile_policy(ADDS_MISTRAL, "p.yaml")
    assert sync.stand_ins_of(policy) == {}
    address = sync.clusters(policy)["mistral"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "api.mistral.ai", "port_value": 443}


def test_a_stored_responses_provider_with_another_teams_key_is_not_loaded(
    tmp_path: Path, publication: Publication
) -> None:
    """Two variables holding one key: the provider with stored_responses would read what the other
    team's provider stored under it. The load compares the keys (by digest) and keeps the running
    policy, saying which entries share it, never the key."""
    shared = GOOD.replace("models:\n", "  app: {kind: openai, credential: {env: APP_KEY}, stored_responses: true}\n"
                          "models:\n  gpt-app: {provider: app, model: gpt-4o}\n") + \
        "  app: {workloads: [w2], models: [gpt-app]}\n"
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    keys = {"OPENAI_API_KEY": "sk-one-key-for-both", "APP_KEY": "sk-one-key-for-both"}
    controller = PolicyController(str(path), publication, credentials=CredentialStore(environ=keys))
    assert controller.start()
    path.write_text(shared)
    assert controller.check() is False
    error = controller.state.last_error
    assert error is not None and "providers.app.stored_responses" in error and "OPENAI_API_KEY" in error
    assert "sk-one-key" not in error
    keys["APP_KEY"] = "sk-a-key-of-its-own"
    path.write_text(shared + "\n")
    assert controller.check() is True
