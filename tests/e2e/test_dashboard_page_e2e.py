"""The dashboard's page in a headless Chromium, on a request log written here: long model names stay
within the window, the tables show cut streams and each team's use of each model, and an empty
window's spend axis reads $0."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from ext_proc.server.admin import AdminServer

pytestmark = pytest.mark.e2e

LONG = "a-model-name-a-client-made-up-" + "x" * 220


@contextmanager
def admin(log: Path) -> Iterator[str]:
    """An admin server reading ``log`` (no token, loopback), on its own event loop in a thread."""
    server = AdminServer(CollectorRegistry(), lambda: (True, {}), str(log))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start(sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def shown(url: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            # a narrow window: a wide table scrolls in its card
            view = browser.new_page(viewport={"width": 900, "height": 900})
            view.goto(url + "/dashboard")
            view.wait_for_selector("body[data-loaded]", timeout=10_000)
            found: dict[str, Any] = view.evaluate("""() => {
                const rows = id => Object.fromEntries([...document.getElementById(id).tBodies[0].rows]
                    .filter(tr => tr.dataset.group)
                    .map(tr => [tr.dataset.group, [...tr.cells].map(td => td.textContent)]));
                const head = id => [...document.getElementById(id).tHead.rows[0].cells].map(th => th.textContent);
                return {width: document.documentElement.scrollWidth, viewport: window.innerWidth,
                        teams: rows('teams'), teamsHead: head('teams'), pairs: rows('team-models'),
                        pairsHead: head('team-models'), axis: document.querySelector('#chart-team text').textContent,
                        titles: [...document.querySelectorAll('#legend-model span')].map(s => s.title)};
            }""")
            return found
        finally:
            browser.close()


def test_the_page_holds_long_names_shows_cut_streams_and_teams_by_model(tmp_path: Path) -> None:
    now = time.time()
    base = {"ts": now - 60, "team": "search", "provider": "openai", "status": 200, "outcome": "ok",
            "input_tokens": 100, "output_tokens": 20, "cost_usd_micros": 500, "latency_ms": 300.0, "guardrails": []}
    records = [
        {**base, "model": "gpt-4o", "guardrails": ["pii"]},
        {**base, "model": "gpt-4o", "latency_ms": 100.0},
        {**base, "model": "gpt-4o", "outcome": "error", "status": 500, "input_tokens": None, "output_tokens": None,
         "cost_usd_micros": None},
        {**base, "model": "gpt-4o", "outcome": "incomplete"},
        *({**base, "model": f"{LONG}-{i}"} for i in range(3)),  # without a policy a provider answers any name
    ]
    log = tmp_path / "requests.jsonl"
    log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with admin(log) as url:
        page = shown(url)
    assert page["width"] <= page["viewport"], "a long name widened the page"
    assert f"{LONG}-0" in page["titles"]  # cut in the legend, whole in its title
    assert page["teamsHead"][6:8] == ["errors", "cut"]
    assert page["teams"]["search"][6:8] == ["1", "1"]
    assert page["teams"]["search"][9] == "1 · pii 1"
    assert page["pairsHead"] == ["team", "model", "requests", "refused", "tokens", "cost", "avg ms", "p95 ms",
                                 "guardrails"]
    # Team search sent 360 tokens to gpt-4o for $0.0015, 200 ms on average (the two answered calls':
    # not the provider's error, nor the cut stream); 1 request triggered pii.
    assert page["pairs"]["search / gpt-4o"] == ["search", "gpt-4o", "4", "0", "360", "$0.0015", "200",
                                                 page["pairs"]["search / gpt-4o"][7], "1 · pii 1"]


def test_an_empty_windows_spend_axis_reads_0_dollars(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_bytes(b"")
    with admin(tmp_path / "requests.jsonl") as url:
        assert shown(url)["axis"] == "$0"
