"""A policy edit that needs new Envoy clusters takes effect without restarting Envoy.

Real Envoy, reading its provider and fallback clusters from the file ``tollway serve`` writes
(filesystem CDS); two worker processes; continuous load while the policy changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ext_proc.policy.compiled import key_digest
from ext_proc.stack import Stack

pytestmark = pytest.mark.e2e

KEY = "tw-clusters-0123456789abcdefghijklmnopqrstuvwxyzABCDE"
BASE = f"""apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: CL_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: CL_ANTHROPIC_KEY}}}}
  azure: {{kind: azure-openai, api_version: "2024-10-21", credential: {{env: CL_AZURE_KEY}}}}
models:
  gpt-4o: {{provider: openai}}
routing:
  aliases:
    chat:
      targets:
        - {{provider: openai, model: gpt-4o-mini}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  app:
    keys: [{{id: app, sha256: {key_digest(KEY)}}}]
    models: ["*"]
"""
# A new alias whose chain (Azure, then Anthropic) has no cluster yet.
NEW_ALIAS = BASE.replace("teams:", """    eu-chat:
      targets:
        - {provider: azure, model: gpt-4o-prod}
        - {provider: anthropic, model: claude-3-5-haiku-20241022}
teams:""")
KEYS = {"CL_OPENAI_KEY": "sk-cl-openai-0001", "CL_ANTHROPIC_KEY": "sk-cl-ant-0002", "CL_AZURE_KEY": "cl-azure-0003"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("clusters")
    policy = work / "policy.yaml"
    policy.write_text(BASE)
    with Stack(work / "stack", workers=2, policy=policy, service_env=KEYS,
               mocked=frozenset({"openai", "anthropic", "azure"})) as running:
        yield running


def ask(http: httpx.Client, stack: Stack, model: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(stack.base_url + "/v1/chat/completions",
                     headers={"authorization": f"Bearer {KEY}", **(headers or {})},
                     json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def active_clusters(stack: Stack) -> set[str]:
    dump = stack.envoy_admin("/config_dump", params={"resource": "dynamic_active_clusters"}).json()
    return {entry["cluster"]["name"] for entry in dump["configs"]}


def test_a_new_alias_with_a_new_chain_answers_within_two_seconds_and_no_request_fails(stack: Stack) -> None:
    assert stack.policy is not None
    envoy_pid = stack.procs["envoy"].pid
    assert "azure+anthropic" not in active_clusters(stack)
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                for model in ("gpt-4o", "chat"):
                    response = ask(http, stack, model)
                    done += 1
                    if response.status_code != 200:
                        failures.append(f"{model}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        with httpx.Client(timeout=10) as http:
            assert ask(http, stack, "eu-chat").status_code == 404  # not an alias yet
            stack.policy.write_text(NEW_ALIAS)
            written = time.monotonic()
            while True:
                response = ask(http, stack, "eu-chat")
                if response.status_code == 200:
                    break
                # Before the reload: unknown model (404). Never Envoy's 503 for a missing cluster.
                assert response.status_code == 404, response.text
                assert time.monotonic() - written < 2, "the new alias did not answer within 2 s"
                time.sleep(0.02)
            answered = time.monotonic() - written
            assert response.headers["x-tollway-provider"] == "azure"
            # Its fallback is Envoy's, through the new chain cluster: Azure fails, Anthropic answers.
            fallback = ask(http, stack, "eu-chat", {"x-mock-azure-status": "500"})
            assert fallback.status_code == 200 and fallback.headers["x-tollway-provider"] == "anthropic"
            assert fallback.headers["x-tollway-attempts"] == "2"
            # Every request from now on, on either worker, knows the alias.
            assert all(ask(http, stack, "eu-chat").status_code == 200 for _ in range(20))
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    print(f"new alias answered {answered * 1000:.0f} ms after the edit; {done} requests under load, "
          f"{len(failures)} failed")
    assert failures == []
    assert done > 30, f"the load loop barely ran ({done} requests)"
    assert "azure+anthropic" in active_clusters(stack)
    assert stack.procs["envoy"].pid == envoy_pid and stack.procs["envoy"].poll() is None  # never restarted


def test_clusters_file_is_private_to_envoy_and_tollway(stack: Stack) -> None:
    path: Path = stack.clusters_file
    assert oct(path.parent.stat().st_mode)[-3:] in ("750", "700")
    assert oct(path.stat().st_mode)[-3:] == "640"
    assert "version_info" in path.read_text()
