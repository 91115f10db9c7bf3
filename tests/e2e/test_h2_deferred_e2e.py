"""Answers that come later, through real Envoy: every request asks Redis first (``--store-probe``).

The servicer returns no reply from the protocol callback, the question runs on the event loop,
and the answer goes out through the stream's responder (``ext_proc.server.h2.Responder``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from ext_proc.ledger.log import log_files, read_records
from ext_proc.stack import ROOT, Stack, mock_plan

pytestmark = pytest.mark.e2e

POLICY = ROOT / "policies" / "example.yaml"
DEMO = {"authorization": "Bearer tw-local-demo-key-not-secret"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "answer me later"}]}


def test_requests_answered_after_a_redis_question_pass_through_envoy(tmp_path: Path, redis_port: int) -> None:
    mocked, _ = mock_plan(POLICY, {})
    stack = Stack(tmp_path, workers=2, policy=POLICY, mocked=mocked,
                  serve_args=("--redis", f"redis://127.0.0.1:{redis_port}/0", "--store-probe"))

    async def load(base_url: str) -> list[int]:
        async def one(i: int) -> int:
            if i % 2:
                response = await http.post("/v1/chat/completions", json=CHAT, headers=DEMO)
                return response.status_code
            async with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                   headers=DEMO) as streamed:
                body = b"".join([chunk async for chunk in streamed.aiter_raw()])
                assert b"[DONE]" in body
                return streamed.status_code

        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            return await asyncio.gather(*(one(i) for i in range(40)))

    with stack:
        statuses = asyncio.run(load(stack.base_url))
        assert statuses == [200] * 40
        records: list[dict] = []
        for _ in range(100):
            records = list(read_records(log_files(str(stack.record_log))))
            if len(records) >= 40:
                break
            asyncio.run(asyncio.sleep(0.1))
        log = (tmp_path / "tollway.log").read_text()
    assert len(records) == 40 and {r["outcome"] for r in records} == {"ok"}
    assert "connection error" not in log and "Traceback" not in log
