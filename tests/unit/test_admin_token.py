"""The admin endpoint: loopback by default, a bearer token when exposed.

Without the token, /metrics, /v1/report and /v1/budgets answer 401 and /readyz only says whether
the service is ready; /healthz stays open for probes. `tollway serve` refuses a non-loopback
--admin-host without a token, in one line, before binding anything.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from ext_proc.server.admin import AdminServer
from ext_proc.server.app import admin_token
from ext_proc.server.listen import ListenError

TOKEN = "s3cret-admin-token-0123456789"


async def _get(port: int, path: str, authorization: str | None = None,
               host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n"
    if authorization is not None:
        head += f"authorization: {authorization}\r\n"
    writer.write((head + "\r\n").encode())
    raw = await reader.read()
    writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _serve(token: str | None):  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    Counter("tollway_team_spend_usd", "spend", ["team"], registry=registry).labels("payments").inc(3)

    async def budgets() -> list[dict[str, object]]:
        return [{"name": "payments-monthly", "spent_usd": 3.0}]

    server = AdminServer(registry, lambda: (True, {"policy": {"generation": 4}}), None, None, budgets, token=token)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return server, sock


def test_with_a_token_only_the_probes_answer_without_it() -> None:
    async def scenario() -> None:
        server, sock = _serve(TOKEN)
        await server.start(sock)
        port = sock.getsockname()[1]
        try:
            assert (await _get(port, "/healthz"))[0] == 200
            status, _, body = await _get(port, "/readyz")
            assert status == 200 and orjson.loads(body) == {"ready": True}  # no details without the token
            for path in ("/metrics", "/v1/budgets", "/v1/report?by=team", "/nothing"):
                for authorization in (None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
                    status, headers, body = await _get(port, path, authorization)
                    assert status == 401, (path, authorization)
                    assert headers["www-authenticate"].startswith("Bearer")
                    assert orjson.loads(body)["error"]["type"] == "authentication_error"
                    assert b"payments" not in body and TOKEN.encode() not in body
            good = f"Bearer {TOKEN}"
            for scheme in ("bearer", "BEARER", "bEaReR"):  # RFC 9110: the scheme is any case
                assert (await _get(port, "/metrics", f"{scheme} {TOKEN}"))[0] == 200, scheme
            # With a token, it decides: any host (the exposed port's name) is answered.
            assert (await _get(port, "/metrics", good, host="tollway.monitoring.svc:9902"))[0] == 200
            status, _, body = await _get(port, "/metrics", good)
            assert status == 200 and b'tollway_team_spend_usd_total{team="payments"} 3.0' in body
            status, _, body = await _get(port, "/v1/budgets", good)
            assert status == 200 and orjson.loads(body)["budgets"][0]["name"] == "payments-monthly"
            status, _, body = await _get(port, "/readyz", good)
            assert orjson.loads(body) == {"ready": True, "policy": {"generation": 4}}
            assert (await _get(port, "/nothing", good))[0] == 404
        finally:
            await server.close()

    asyncio.run(scenario())


def test_without_a_token_loopback_serves_everything_to_loopback_hosts_only() -> None:
    async def scenario() -> None:
        server, sock = _serve(None)
        await server.start(sock)
        port = sock.getsockname()[1]
        try:
            assert (await _get(port, "/metrics"))[0] == 200
            _, _, body = await _get(port, "/readyz")
            assert orjson.loads(body)["policy"] == {"generation": 4}
            for host in ("localhost", "LocalHost:9902", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", "[::1]:9902"):
                assert (await _get(port, "/v1/budgets", host=host))[0] == 200, host
            # A page whose name resolves to 127.0.0.1 (DNS rebinding) names its own host: refused.
            for host in ("attacker.example", "attacker.example:9902", "127.0.0.1.attacker.example", "10.0.0.7",
                         "localhost:9902@attacker.example", "[::1]x", ""):
                for path in ("/v1/budgets", "/v1/report?by=key", "/v1/dashboard", "/metrics", "/dashboard"):
                    status, _, body = await _get(port, path, host=host)
                    assert status == 403 and b"payments" not in body, (host, path)
                    assert orjson.loads(body)["error"]["type"] == "permission_error"
        finally:
            await server.close()

    asyncio.run(scenario())


def test_token_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLWAY_ADMIN_TOKEN", raising=False)
    assert admin_token(None, "127.0.0.1") is None
    assert admin_token(None, "::1") is None
    assert admin_token(None, "localhost") is None
    assert admin_token(None, None) is None  # admin port off
    for exposed in ("0.0.0.0", "10.1.2.3", "::", "admin.internal"):
        with pytest.raises(ListenError, match="--admin-token-file"):
            admin_token(None, exposed)
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o600)
    assert admin_token(str(path), "0.0.0.0") == TOKEN
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    assert admin_token(None, "0.0.0.0") == TOKEN
    for weak in ("short", "has a space in it....", ""):
        path.write_text(weak)
        with pytest.raises(ListenError, match="16 or more"):
            admin_token(str(path), "0.0.0.0")
    with pytest.raises(ListenError, match="cannot read"):
        admin_token(str(tmp_path / "missing"), "0.0.0.0")


def test_serve_refuses_an_exposed_admin_port_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", f"unix:{tmp_path}/s/ext_proc.sock",
         "--admin-host", "0.0.0.0", "--admin-port", "19902"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--admin-host 0.0.0.0" in lines[0] and "--admin-token-file" in lines[0]


def test_one_report_at_a_time_the_next_waits_then_is_told_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report reads its whole window (every bucket in Redis, or the log): three asked at once
    took three times the memory and an OOM kill of the sidecar. One is computed at a time, off the
    event loop (the probes and the metrics still answer); one asked meanwhile waits for it, up to
    REPORT_WAIT, then gets a 429 with Retry-After and a JSON error; after it, reports answer again."""
    import threading

    from ext_proc.server import admin

    monkeypatch.setattr(admin, "REPORT_WAIT", 0.3, raising=False)
    release, started = threading.Event(), threading.Event()

    def slow_report(query: str) -> tuple[int, str, bytes]:
        started.set()
        release.wait(10)
        return 200, "application/json", b'{"rows": []}'

    async def scenario() -> None:
        server, sock = _serve(None)
        monkeypatch.setattr(server, "report", slow_report)
        await server.start(sock)
        port = sock.getsockname()[1]
        try:
            first = asyncio.create_task(_get(port, "/v1/report?by=team"))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
            assert (await _get(port, "/healthz"))[0] == 200  # the event loop is free meanwhile
            assert (await _get(port, "/metrics"))[0] == 200
            status, headers, body = await _get(port, "/v1/report?by=model")
            assert status == 429 and headers["retry-after"] == "1"
            assert orjson.loads(body)["error"]["type"] == "rate_limit_error"
            # A malformed one is told so at once, never waiting for the lock (it waited, then got a 429).
            status, _, body = await _get(port, "/v1/report?by=nonsense")
            assert status == 400 and "by must be one of" in orjson.loads(body)["error"]["message"]
            waiting = asyncio.create_task(_get(port, "/v1/report?by=key"))  # released within its wait
            await asyncio.sleep(0.05)
            release.set()
            assert (await first)[0] == 200
            assert (await waiting)[0] == 200
            assert (await _get(port, "/v1/report?by=team"))[0] == 200
        finally:
            release.set()
            await server.close()

    asyncio.run(scenario())
