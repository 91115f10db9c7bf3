"""requirements.lock pins every dependency pyproject.toml names, with hashes, at versions it allows.

`make install` installs only from the lock (`--require-hashes`), so a dependency added to
pyproject.toml without `make lock` would be missing on a fresh machine; this test says so first.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def _pins() -> dict[str, tuple[str, int]]:
    """Each pinned name -> (version, how many hashes follow it)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith(" "):
            current = None
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        names += extra
    names += project["build-system"]["requires"]
    return [Requirement(name) for name in names]


def test_every_dependency_is_pinned_with_a_hash_at_an_allowed_version() -> None:
    pins = _pins()
    assert len(pins) > 50
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock: run make lock"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, pyproject.toml asks {requirement.specifier}: "
            "run make lock"
        )
        assert hashes >= 1, f"{name} has no hash in requirements.lock"


def test_every_pin_has_a_hash_and_no_index_is_named() -> None:
    text = (ROOT / "requirements.lock").read_text()
    assert all(hashes >= 1 for _, hashes in _pins().values())
    # The lock must install the same files anywhere: no machine-local index or wheel folder.
    assert "--extra-index-url" not in text and "--find-links" not in text and "file://" not in text


def test_make_install_uses_the_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes" in makefile and "-r requirements.lock" in makefile
    assert "--no-deps" in makefile  # Tollway itself adds nothing the lock did not pin


def test_the_proto_modules_xds_protos_also_ships_are_their_owners_copies() -> None:
    # xds-protos carries copies of opentelemetry.proto and google.api/rpc/type; pip's install order
    # decides which copy lands, and the OTLP exporter fails with xds-protos's. make install
    # reinstalls the owners last: every shared file must hash as its owner's RECORD says.
    import base64
    import hashlib
    import importlib.metadata

    owners = {"opentelemetry-proto", "googleapis-common-protos"}
    theirs = {str(f) for f in importlib.metadata.distribution("xds-protos").files or ()}
    checked = 0
    for owner in owners:
        for record in importlib.metadata.distribution(owner).files or ():
            if str(record) not in theirs or record.hash is None or not str(record).endswith(".py"):
                continue
            digest = hashlib.sha256(Path(str(record.locate())).read_bytes()).digest()
            assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == record.hash.value, (
                f"{record} is not {owner}'s copy: run make install again")
            checked += 1
    assert checked > 50


def test_make_run_passes_up_args_to_tollway_up() -> None:
    """`make run UP_ARGS="--port 10001 ..."`: tollway up's options (other ports, another workdir) through make."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed", "run", "UP_ARGS=--port 10001 --workdir .tw2"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/tollway up --port 10001 --workdir .tw2" in dry, dry


def test_what_the_readme_has_you_write_is_ignored_and_cleaned() -> None:
    """The README's second instance (`--workdir .tollway-2`) and the JSON Schema it has you write
    next to the policies (`policies/tollway.schema.json`) never show in `git status`; `make clean`
    removes the run state of every workdir."""
    import subprocess

    for path in (".tollway/requests.jsonl", ".tollway-2/requests.jsonl", ".tollway-3/envoy.log",
                 "policies/tollway.schema.json"):
        checked = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert checked.returncode == 0, f"{path} is not ignored"
    kept = subprocess.run(["git", "check-ignore", "-q", "--no-index", "policies/example.yaml"], cwd=ROOT)
    assert kept.returncode == 1
    dry = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"rm -rf .* \.tollway \.tollway-\*( |$)", dry, re.M), dry
