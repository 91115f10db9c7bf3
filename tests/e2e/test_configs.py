"""Every Envoy config the project ships, and every rendering of it, passes ``envoy --mode validate``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ext_proc.stack import ENVOY_CONFIG, ROOT, envoy_binary, render_envoy

SHIPPED = sorted((ROOT / "envoy").glob("*.yaml"))
SOCK = "unix:/run/tollway/ext_proc.sock"


def validate(path: Path) -> None:
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path) -> None:
    validate(path)


@pytest.mark.parametrize("ext_proc", [True, False], ids=["gateway", "plain"])
def test_rendered_config_validates(tmp_path: Path, ext_proc: bool) -> None:
    config = render_envoy(yaml.safe_load(ENVOY_CONFIG.read_text()), listen_port=1, admin_port=2,
                          ext_proc_address=SOCK, mock_port=4, ext_proc=ext_proc)
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    validate(path)
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in filters["http_filters"]]
    assert ("envoy.filters.http.ext_proc" in names) is ext_proc


def test_gateway_fails_closed() -> None:
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    assert ext_proc["typed_config"]["failure_mode_allow"] is False
