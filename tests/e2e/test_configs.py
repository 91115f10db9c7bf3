"""Every Envoy config the project ships, and every rendering of it, passes ``envoy --mode validate``.

``envoy --mode validate`` checks a bootstrap but not the clusters a clusters file (filesystem CDS)
would bring, so the clusters Tollway writes are checked listed statically: the same dicts, in
the config ``tollway envoy`` prints.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.envoy_config import render, set_clusters_file
from ext_proc.policy.compile import compile_policy
from ext_proc.server.clusters import ClusterSync
from ext_proc.stack import ENVOY_CONFIG, ROOT, envoy_binary, render_envoy

SHIPPED = sorted((ROOT / "envoy").glob("*.yaml"))
SOCK = "unix:/run/tollway/ext_proc.sock"
ADMIN = "/run/tollway/envoy-admin.sock"
EXAMPLE = compile_policy((ROOT / "policies" / "example.yaml").read_text())


def validate(config: dict[str, Any] | Path, path: Path | None = None) -> None:
    if isinstance(config, dict):
        assert path is not None
        path.write_text(yaml.safe_dump(config))
    else:
        path = config
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(tmp_path: Path, path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    source = (config.get("dynamic_resources") or {}).get("cds_config", {}).get("path_config_source")
    if source:
        # The clusters file must exist when Envoy starts: Tollway writes it (here, for the example policy).
        (tmp_path / "run").mkdir(mode=0o750)
        clusters = tmp_path / "run" / "clusters.yaml"
        ClusterSync(str(clusters)).prepare(EXAMPLE, starting=True)
        set_clusters_file(config, str(clusters))
        assert source == {"path": "/run/tollway/clusters.yaml", "watched_directory": {"path": "/run/tollway"}}
    validate(config, tmp_path / path.name)


def test_the_example_policys_clusters_listed_statically_validate(tmp_path: Path) -> None:
    config, _ = render(yaml.safe_load(ENVOY_CONFIG.read_text()), EXAMPLE)
    assert "dynamic_resources" not in config
    names = {cluster["name"] for cluster in config["static_resources"]["clusters"]}
    assert {"openai", "anthropic", "azure-openai-eu", "local-llm", "openai+anthropic", "anthropic+openai",
            "tollway_ext_proc"} <= names
    validate(config, tmp_path / "static.yaml")


@pytest.mark.parametrize("ext_proc", [True, False], ids=["gateway", "plain"])
@pytest.mark.parametrize("clusters_file", [True, False], ids=["clusters-file", "static"])
def test_rendered_config_validates(tmp_path: Path, ext_proc: bool, clusters_file: bool) -> None:
    path = None
    if clusters_file:
        path = tmp_path / "clusters.yaml"
        path.write_text("resources: []\n")
    config = render_envoy(yaml.safe_load(ENVOY_CONFIG.read_text()), listen_port=1, admin_socket=ADMIN,
                          ext_proc_address=SOCK, stand_ins={"openai": "http://127.0.0.1:4"}, ext_proc=ext_proc,
                          clusters_file=str(path) if path else None)
    validate(config, tmp_path / "envoy.yaml")
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in filters["http_filters"]]
    assert ("envoy.filters.http.ext_proc" in names) is ext_proc


def test_gateway_fails_closed_and_its_port_is_never_shared() -> None:
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    (listener,) = config["static_resources"]["listeners"]
    assert listener["enable_reuse_port"] is False  # a second Envoy cannot join the port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    assert ext_proc["typed_config"]["failure_mode_allow"] is False
