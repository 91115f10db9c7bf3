"""End-to-end fixtures: a real Envoy, the Tollway service and the fake provider on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from ext_proc.stack import Stack
from tests.fixtures import CASSETTES


def one_minute(needed: float = 20.0) -> None:
    """Wait, if need be, so that the next ``needed`` seconds fall in one calendar minute: a
    per-minute rate limit's window (``rate/.../<minute>``) does not turn over in the middle of a test."""
    if time.time() % 60 > 60 - needed:
        time.sleep(61 - time.time() % 60)


class Gateway:
    """A running stack plus helpers to find the request records it wrote."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.base_url = stack.base_url

    def records(self) -> list[dict[str, Any]]:
        path = self.stack.record_log
        if not path.exists():
            return []
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

    def record(self, request_id: str | None, timeout: float = 5.0) -> dict[str, Any]:
        """The record of one request, waiting for the batched writer to flush it."""
        assert request_id, "the gateway did not return x-tollway-request-id"
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records() if r["request_id"] == request_id]
            if found:
                assert len(found) == 1, f"{len(found)} records for one request: {found}"
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no record for request {request_id}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    stack = Stack(tmp_path_factory.mktemp("stack"), workers=2, mock_args=("--cassettes", str(CASSETTES)))
    with stack:
        yield Gateway(stack)


class Providers(Gateway):
    """A stack whose fake provider serves OpenAI and Anthropic, each checking its own key.

    ``key`` is the Tollway key the SDK clients use; ``provider_keys`` maps the policy's credential
    variables to the provider keys the fake provider accepts.
    """

    def __init__(self, stack: Stack, key: str) -> None:
        super().__init__(stack)
        self.key = key
        self.mock = f"http://127.0.0.1:{stack.mock_port}"

    @classmethod
    def stack(cls, work: Path, policy_text: str, provider_keys: dict[str, str], mock_args: tuple[str, ...] = (),
              **options: Any) -> Stack:
        policy = work / "policy.yaml"
        policy.write_text(policy_text)
        keys = tuple(arg for key in provider_keys.values() for arg in ("--api-key", key))
        options.setdefault("mocked", frozenset({"openai", "anthropic"}))
        return Stack(work / "stack", policy=policy, service_env=provider_keys, mock_args=keys + mock_args,
                     stand_ins_get_keys=True, **options)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.key, max_retries=0, timeout=10)

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.base_url, api_key=self.key, max_retries=0, timeout=10)

    def provider_saw(self, request_id: str | None) -> list[dict[str, Any]]:
        """What the fake provider received for one client request (Envoy keeps x-request-id)."""
        assert request_id, "the gateway did not return x-tollway-request-id"
        out = []
        for request in httpx.get(self.mock + "/_mock/requests").json():
            headers = {k.lower(): v for k, v in request["headers"]}
            if headers.get("x-request-id") == request_id:
                out.append({**request, "headers": headers})
        return out
