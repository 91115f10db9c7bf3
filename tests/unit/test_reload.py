"""PolicyHolder: atomic swaps, broken edits keep the running policy, ConfigMap symlink swaps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from ext_proc.server.reload import PolicyHolder

GOOD = """apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o: {provider: openai}
teams:
  search: {workloads: [w1], models: [gpt-4o]}
"""


def test_load_change_and_broken_edit(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    registry = CollectorRegistry()
    holder = PolicyHolder(str(path), registry)
    assert holder.load()
    first = holder.current
    assert first is not None and holder.check() is False  # unchanged: nothing to do
    path.write_text(GOOD.replace("gpt-4o: {provider: openai}", "gpt-4o: {provider: openai, aliases: [g4]}"))
    assert holder.check() is True
    assert holder.current is not first and holder.current.resolve("g4") is not None
    second = holder.current
    path.write_text(GOOD.replace("kind: openai", "kind: openia"))
    assert holder.check() is False
    assert holder.current is second  # the running policy stays
    assert holder.last_error is not None and f"{path}:3:" in holder.last_error and "openia" in holder.last_error
    metrics = generate_latest(registry).decode()
    assert 'tollway_policy_reloads_total{result="error"} 1.0' in metrics
    assert f'tollway_policy_info{{version="{second.version}"}} 1.0' in metrics
    assert first.version not in metrics  # the old version's series is gone
    path.write_text(GOOD)
    assert holder.check() is True and holder.last_error is None


def test_configmap_style_symlink_swap(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as policy.yaml -> ..data/policy.yaml, ..data -> ..2026_11_01_x;
    # an update writes a new timestamped directory and swaps the ..data link atomically.
    def version_dir(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "policy.yaml").write_text(text)

    version_dir("..v1", GOOD)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    holder = PolicyHolder(str(tmp_path / "policy.yaml"), CollectorRegistry())
    assert holder.load()
    version_dir("..v2", GOOD.replace("models: [gpt-4o]", 'models: ["*"]'))
    os.symlink("..v2", tmp_path / "..tmp")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    assert holder.check() is True
    assert holder.current is not None and holder.current.teams["search"].all_models


def test_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    holder = PolicyHolder(str(tmp_path / "absent.yaml"), CollectorRegistry())
    assert holder.load() is False and holder.current is None and "absent.yaml" in (holder.last_error or "")


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


def test_a_reload_needing_new_envoy_clusters_is_applied_and_says_which(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(CHAINED)
    holder = PolicyHolder(str(path))
    assert holder.load() and holder.details()["envoy_clusters_missing"] == []  # started with: Envoy has them
    # The same providers in the other order need a cluster Envoy was not rendered with.
    swapped = CHAINED.replace("- {provider: openai, model: gpt-4o}\n        - {provider: anthropic, model: claude-x}",
                              "- {provider: anthropic, model: claude-x}\n        - {provider: openai, model: gpt-4o}")
    path.write_text(swapped)
    with caplog.at_level("WARNING", logger="tollway.policy"):
        assert holder.check() is True
    assert holder.current is not None and holder.current.alias("smart") is not None
    assert holder.details()["envoy_clusters_missing"] == ["anthropic+openai"]
    assert "render the Envoy config again" in caplog.text and "anthropic+openai" in caplog.text
    path.write_text(CHAINED)
    assert holder.check() is True and holder.missing_clusters == []
