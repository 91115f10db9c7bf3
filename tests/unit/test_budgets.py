"""``tollway budgets`` (and ``/v1/budgets``, the dashboard, the budget gauges): the rows of the budgets'
counters in the current window."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from ext_proc.ledger.budgets import rows
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import budget_counter, budget_parts
from ext_proc.server.collectors import BudgetCollector

NOW = datetime.datetime(2026, 12, 4, 12, tzinfo=datetime.UTC).timestamp()
SEARCH, ADS = "a" * 64, "b" * 64
HEAD = f"""
apiVersion: tollway/v1
providers: {{openai: {{kind: openai}}}}
models: {{gpt-4o: {{provider: openai, aliases: [gpt-4o-latest]}}}}
teams:
  ml/search: {{keys: [{{id: ci, sha256: "{SEARCH}"}}], models: ["*"]}}
  ads: {{keys: [{{id: ci, sha256: "{ADS}"}}], models: ["*"]}}
"""


def shown(budgets: str, counters: dict[str, tuple[int, int]]) -> list[tuple[str, str, str, int]]:
    policy = compile_policy(HEAD + budgets)
    return [(row["budget"], row["member"], row["unit"], row["spent"]) for row in rows(policy, counters, NOW)]


def test_a_counter_is_read_back_as_its_budget_unit_member_and_window() -> None:
    counter = budget_counter("search-tokens", "tokens", "ci@ml/search", "2026-12-04")
    assert counter == "budget/search-tokens/tokens/ci@ml/search/2026-12-04"
    assert budget_parts(counter) == ("search-tokens", "tokens", "ci@ml/search", "2026-12-04")
    assert budget_parts("rate/r/concurrent/ads") is None
    assert budget_parts("budget/b/usd") is None


def test_each_budget_lists_its_own_counters_only() -> None:
    budgets = """
budgets:
  search: {team: "*", tokens: 1000, period: day}
  search-tokens: {team: "*", tokens: 100, period: day}
"""
    assert shown(budgets, {"budget/search-tokens/tokens/ml/search/2026-12-04": (95, 0),
                           "budget/search/tokens/ads/2026-12-04": (7, 0),
                           "budget/search/tokens/ads/2026-12-03": (500, 0)}) == [  # yesterday: gone
        ("search", "ads", "tokens", 7), ("search-tokens", "ml/search", "tokens", 95)]


def test_counters_of_an_older_naming_are_neither_shown_nor_summed() -> None:
    # Before a key counted with its team it counted by its bare id, and model: "*" counted a request by
    # an alias under the alias too: those counters stay in the store until their window ends, but no
    # request counts into them any more.
    budgets = """
budgets:
  ads-ci: {team: ads, key: ci, usd: "100", period: month}
  each-key: {key: "*", usd: "100", period: month}
  each-model: {model: "*", tokens: 1000, period: month}
  latest: {model: gpt-4o-latest, tokens: 1000, period: month}
"""
    counters = {"budget/ads-ci/usd/ci/2026-12": (90_000_000, 0), "budget/ads-ci/usd/ci@ads/2026-12": (1_000_000, 0),
                "budget/each-key/usd/ci/2026-12": (90_000_000, 0),
                "budget/each-key/usd/ci@ads/2026-12": (2_000_000, 0),
                "budget/each-key/usd/ci@ml/search/2026-12": (3_000_000, 0),
                "budget/each-model/tokens/gpt-4o-latest/2026-12": (900, 0),
                "budget/each-model/tokens/gpt-4o/2026-12": (40, 0),
                "budget/each-model/tokens/gpt-3.5/2026-12": (5, 0),  # a model since removed: its spend stays
                "budget/latest/tokens/gpt-4o-latest/2026-12": (600, 0)}  # an alias's limit: its own counter
    assert shown(budgets, counters) == [
        ("ads-ci", "ci@ads", "usd", 1_000_000),
        ("each-key", "ci@ads", "usd", 2_000_000), ("each-key", "ci@ml/search", "usd", 3_000_000),
        ("each-model", "gpt-3.5", "tokens", 5), ("each-model", "gpt-4o", "tokens", 40),
        ("latest", "gpt-4o-latest", "tokens", 600)]
    # The gauge of a per-key budget sums its members: one limit, not one per naming.
    collector = BudgetCollector()
    collector.update(rows(compile_policy(HEAD + budgets), counters, NOW))
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("tollway_budget_limit_usd", {"budget": "each-key", "member": "*"}) == 200
    assert registry.get_sample_value("tollway_budget_spent_usd", {"budget": "each-key", "member": "*"}) == 5


def test_the_cli_reads_the_redis_url_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``TOLLWAY_REDIS_URL`` instead of ``--redis``: a Redis password on the command line is readable by
    every local user (``/proc/PID/cmdline``); in the environment it is the caller's only."""
    import argparse

    from ext_proc.ledger import budgets
    from ext_proc.stack import free_port

    policy = tmp_path / "policy.yaml"
    policy.write_text(HEAD)
    parser = argparse.ArgumentParser()
    budgets.add_arguments(parser)
    monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
    monkeypatch.setattr(budgets, "DEFAULT_ADMIN", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert budgets.run(parser.parse_args(["--policy", str(policy)])) == 1
    assert "TOLLWAY_REDIS_URL" in capsys.readouterr().err
    monkeypatch.setenv("TOLLWAY_REDIS_URL", f"redis://:pw-not-shown@127.0.0.1:{free_port()}/0")  # nothing listens
    assert budgets.run(parser.parse_args(["--policy", str(policy)])) == 1
    err = capsys.readouterr().err
    assert "cannot read the counters from Redis" in err and "pw-not-shown" not in err


def test_the_cli_reads_make_runs_admin_by_default_and_sends_it_no_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --redis, TOLLWAY_REDIS_URL or --admin: the admin of make run on this machine (as the README's
    example), never with a token from the environment (whatever listens on that port would get it)."""
    import argparse
    import http.server
    import threading

    from ext_proc.ledger import budgets

    asked: list[str | None] = []

    class Admin(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.headers.get("Authorization"))
            body = orjson.dumps({"budgets": []}) if self.path == "/v1/budgets" else b"{}"
            self.send_response(200 if self.path == "/v1/budgets" else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = tmp_path / "policy.yaml"
        policy.write_text(HEAD)
        parser = argparse.ArgumentParser()
        budgets.add_arguments(parser)
        monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
        monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "admin-token-not-for-the-default")
        address = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(budgets, "DEFAULT_ADMIN", address)
        assert budgets.run(parser.parse_args(["--policy", str(policy), "--format", "json"])) == 0
        assert orjson.loads(capsys.readouterr().out) == []
        assert budgets.run(parser.parse_args(["--policy", str(policy), "--format", "json", "--admin", address])) == 0
        assert asked == [None, "Bearer admin-token-not-for-the-default"]
    finally:
        server.shutdown()
        server.server_close()


def _admin_server(answer: Any) -> tuple[Any, list[tuple[str, str | None]]]:
    """A local HTTP server whose GET answers ``answer(handler)``; it records (path, Authorization)."""
    import http.server
    import threading

    asked: list[tuple[str, str | None]] = []

    class Admin(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append((self.path, self.headers.get("Authorization")))
            answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, asked


def _budgets_cli(tmp_path: Path, *argv: str) -> int:
    import argparse

    from ext_proc.ledger import budgets

    policy = tmp_path / "policy.yaml"
    policy.write_text(HEAD)
    parser = argparse.ArgumentParser()
    budgets.add_arguments(parser)
    return budgets.run(parser.parse_args(["--policy", str(policy), *argv]))


def test_the_cli_never_follows_a_redirect_with_the_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """urllib follows a 302 and sends the Authorization header on to the new host: the admin token
    would reach whatever the redirect names. A redirect is refused, in one line naming its status."""
    def elsewhere(handler: Any) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b'{"budgets": []}')

    thief, stolen = _admin_server(elsewhere)
    target = f"http://127.0.0.1:{thief.server_address[1]}/steal"

    def moved(handler: Any) -> None:
        handler.send_response(302)
        handler.send_header("Location", target)
        handler.send_header("content-length", "0")
        handler.end_headers()

    admin, asked = _admin_server(moved)
    try:
        monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
        token = tmp_path / "token"
        token.write_text("admintoken123-long-enough\n")
        address = f"http://127.0.0.1:{admin.server_address[1]}"
        assert _budgets_cli(tmp_path, "--admin", address, "--admin-token-file", str(token)) == 1
        err = capsys.readouterr().err
        assert stolen == []
        assert asked == [("/v1/budgets", "Bearer admintoken123-long-enough")]
        assert len(err.strip().splitlines()) == 1
        assert "answered 302" in err and "redirects are not followed" in err and target in err
        assert "admintoken123" not in err
    finally:
        for server in (admin, thief):
            server.shutdown()
            server.server_close()


def test_the_cli_says_why_it_cannot_read_the_counters_never_a_password_or_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reason, not the exception's class; the token file named when it is the problem; the user and
    password of an address never shown; a token file's content never quoted."""
    from ext_proc.stack import free_port

    monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
    monkeypatch.delenv("TOLLWAY_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("TOLLWAY_ADMIN_TOKEN_FILE", raising=False)
    closed = free_port()

    def said(*argv: str) -> str:
        assert _budgets_cli(tmp_path, *argv) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return err

    err = said("--redis", f"redis://:S3cretPw@127.0.0.1:{closed}/0")
    assert f"Redis at redis://***@127.0.0.1:{closed}/0" in err and "connecting to" in err
    assert "ConnectionError" not in err and "S3cretPw" not in err
    err = said("--redis", "redis://:S3cretPw@127.0.0.1:notaport/0")
    assert "not a valid Redis URL" in err and "S3cretPw" not in err
    missing = tmp_path / "no-such-token"
    err = said("--admin", f"http://127.0.0.1:{closed}", "--admin-token-file", str(missing))
    assert f"cannot read the admin token file {missing}: No such file or directory" in err
    assert "FileNotFoundError" not in err
    two_lines = tmp_path / "token"
    two_lines.write_text("first-line-secret-1234\nsecond-line-secret-5678\n")
    err = said("--admin", f"http://127.0.0.1:{closed}", "--admin-token-file", str(two_lines))
    assert str(two_lines) in err and "secret" not in err.replace(str(two_lines), "")
    err = said("--admin", f"http://user:S3cretPw@127.0.0.1:{closed}")
    assert "S3cretPw" not in err and "http://***@127.0.0.1" in err and "--admin-token-file" in err
    err = said("--admin", f"http://127.0.0.1:{closed}")
    assert "Connection refused" in err
    err = said("--admin", "127.0.0.1:9902")
    assert "not an http:// or https:// address" in err


def test_the_cli_names_an_answer_that_is_not_the_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(handler: Any) -> None:
        handler.send_response(404 if handler.path == "/v1/budgets" else 200)
        handler.send_header("content-length", "0")
        handler.end_headers()

    server, _ = _admin_server(answer)
    try:
        monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)
        assert _budgets_cli(tmp_path, "--admin", f"http://127.0.0.1:{server.server_address[1]}") == 1
        assert "it answered 404 Not Found" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("store", ["down", "hangs"])
def test_a_store_that_does_not_answer_is_a_503_saying_so_which_the_cli_prints_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """/v1/budgets with the store down (Redis refusing, or stopped: its reads time out or never
    end) answers 503 in OpenAI's error format, not a connection closed without an answer; the CLI
    prints its message, one line, exit 1."""
    import asyncio
    import socket
    import threading
    import urllib.error
    import urllib.request

    from ext_proc.server import admin as admin_module
    from ext_proc.server.admin import AdminServer

    monkeypatch.setattr(admin_module, "BUDGETS_WAIT", 0.3)
    monkeypatch.delenv("TOLLWAY_REDIS_URL", raising=False)

    async def budget_rows() -> list[dict[str, Any]]:
        if store == "down":
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        await asyncio.sleep(60)
        return []

    loop = asyncio.new_event_loop()
    server = AdminServer(CollectorRegistry(), lambda: (True, {}), None, None, budget_rows)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    loop.run_until_complete(server.start(sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(address + "/v1/budgets", timeout=5)
        assert failed.value.code == 503 and failed.value.headers["retry-after"] == "1"
        error = orjson.loads(failed.value.read())["error"]
        assert (error["type"], error["code"]) == ("server_error", "state_unavailable")
        assert "does not answer" in error["message"]
        assert _budgets_cli(tmp_path, "--admin", address) == 1
        err = capsys.readouterr().err
        assert err.splitlines() == [f"tollway budgets: cannot read the counters from {address}: {error['message']}"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(server.close())
        loop.close()
