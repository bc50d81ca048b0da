"""The client distribution (client/pyproject.toml) installed on its own: a fresh venv
without libvirt-python, the ``virtmesh`` it installs run from a directory outside the
checkout against a real gateway, with a context from its config file.

The build reads only client/ and protos/gen/python: both are copied (same relative
layout) so that the build leaves nothing in the checkout, and so that a file the
build needed from elsewhere would make this test fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Mesh


def _copy_sources(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(ROOT / "client", destination / "client", ignore=ignore)
    shutil.copytree(ROOT / "protos" / "gen" / "python", destination / "protos" / "gen" / "python",
                    ignore=ignore)
    return destination / "client"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only ``pip install client/`` in it (from the package index, or the
    wheels pip is configured to find)."""
    root = tmp_path_factory.mktemp("install")
    source = _copy_sources(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                             "--disable-pip-version-check", str(source)],
                            capture_output=True, text=True, env=env, timeout=900)
    if result.returncode and "No matching distribution" in result.stderr:
        pytest.skip(f"no package index or wheels for grpcio here:\n{result.stderr[-2000:]}")
    assert result.returncode == 0, result.stderr[-4000:]
    return venv


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No VIRTMESH_* and no PYTHONPATH from the test run: only what is given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIRTMESH_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), **extra}


def test_the_venv_has_no_libvirt_and_no_server_code(venv: Path) -> None:
    for module in ("libvirt", "services", "gateway"):
        result = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"],
                                capture_output=True, text=True, cwd="/", timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"],
                            capture_output=True, text=True, check=True, timeout=60)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "virtmesh-client" in names and "libvirt-python" not in names
    assert {"grpcio", "protobuf", "grpcio-status"} <= names


def test_installed_cli_works_from_anywhere_with_a_context(venv: Path, mesh: Mesh,
                                                          tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    virtmesh = str(venv / "bin" / "virtmesh")
    env = _clean_env(tmp_path / "home")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([virtmesh, *args], capture_output=True, text=True, env=env,
                              cwd=elsewhere, timeout=60)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.split()[:1] == ["virtmesh"]
    # without a context nothing says where the gateway's CA is
    refused = run("list")
    assert refused.returncode == 2 and "cannot read CA certificate" in refused.stderr
    made = run("config", "set-context", "test", "--gateway", mesh.target,
               "--state-dir", str(mesh.state_dir), "--use")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "home" / ".config" / "virtmesh" / "config.toml").exists()
    listed = run("--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert "alpha" in [d["name"] for d in json.loads(listed.stdout)["domains"]]
    assert not list(elsewhere.iterdir())
