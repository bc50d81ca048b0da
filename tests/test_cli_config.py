"""``virtmesh config …`` and contexts: the config file's named contexts (gateway, CA,
certificate, key, token file, TLS server name), and flags and environment variables
that still win over them; ``make run``'s context for its own mesh. Against a real
gateway and compute service (tests/conftest.py's ``mesh``)."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from services.supervisor import write_cli_context
from tests.conftest import Mesh
from virtmesh_client.cli import main
from virtmesh_client.client import ConfigError
from virtmesh_client.config import connect

Run = Callable[..., tuple[int, str, str]]
CONNECTION_ENV = ("VIRTMESH_GATEWAY", "VIRTMESH_GATEWAYS", "VIRTMESH_STATE_DIR", "VIRTMESH_CA",
                  "VIRTMESH_CERT", "VIRTMESH_KEY", "VIRTMESH_TOKEN", "VIRTMESH_TOKEN_FILE",
                  "VIRTMESH_CONTEXT", "VIRTMESH_TLS_SERVER_NAME")


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config file of the test's; no connection setting in the environment, and
    a working directory without .virtmesh, as on a user's machine."""
    for name in CONNECTION_ENV:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "home" / "config.toml"
    monkeypatch.setenv("VIRTMESH_CLI_CONFIG", str(path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return path


@pytest.fixture
def virtmesh(config_file: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _names(out: str) -> list[str]:
    return [d["name"] for d in json.loads(out)["domains"]]


def test_contexts_are_created_listed_switched_and_deleted(virtmesh: Run, config_file: Path,
                                                          tmp_path: Path) -> None:
    assert virtmesh("config", "current-context")[0] == 2
    code, out, err = virtmesh("config", "set-context", "a", "--gateway", "h1:16514",
                              "--ca", "ca.crt", "--token-file", "t.token")
    assert (code, err) == (0, "") and "created" in out
    assert virtmesh("config", "set-context", "b", "--gateway", "x=h2:1", "--gateway", "y=h3:2",
                    "--state-dir", "/srv/vm", "--tls-server-name", "node-2", "--use")[0] == 0
    data = tomllib.loads(config_file.read_text())
    assert data == {"current-context": "b", "contexts": {
        "a": {"gateway": "h1:16514", "ca": str(tmp_path / "elsewhere" / "ca.crt"),
              "token-file": str(tmp_path / "elsewhere" / "t.token")},
        "b": {"gateway": "x=h2:1,y=h3:2", "ca": "/srv/vm/pki/ca.crt",
              "cert": "/srv/vm/pki/client.crt", "key": "/srv/vm/pki/client.key",
              "tls-server-name": "node-2"}}}
    assert virtmesh("config", "current-context")[1] == "b\n"
    code, out, _ = virtmesh("config", "get-contexts")
    assert [line.split() for line in out.splitlines()] == [
        ["CURRENT", "NAME", "GATEWAY", "AUTH"], ["a", "h1:16514", "token"],
        ["*", "b", "x=h2:1,y=h3:2", "certificate"]]
    assert virtmesh("config", "use-context", "a")[0] == 0
    code, out, _ = virtmesh("--json", "config", "get-contexts")
    listed = json.loads(out)
    assert listed["current_context"] == "a"
    assert [(c["name"], c["current"]) for c in listed["contexts"]] == [("a", True),
                                                                       ("b", False)]
    # an empty value removes a field; others stay
    assert virtmesh("config", "set-context", "a", "--token-file", "")[0] == 0
    assert tomllib.loads(config_file.read_text())["contexts"]["a"] == {
        "gateway": "h1:16514", "ca": str(tmp_path / "elsewhere" / "ca.crt")}
    code, _, err = virtmesh("config", "use-context", "nope")
    assert code == 2 and err.startswith("virtmesh: no context named 'nope'")
    assert virtmesh("config", "delete-context", "a")[0] == 0
    assert tomllib.loads(config_file.read_text()) == {
        "contexts": {"b": tomllib.loads(config_file.read_text())["contexts"]["b"]}}


def test_a_broken_config_file_is_one_line(virtmesh: Run, config_file: Path) -> None:
    config_file.parent.mkdir(parents=True)
    config_file.write_text("current-context = \n")
    code, out, err = virtmesh("list")
    assert (code, out) == (2, "")
    assert err.startswith(f"virtmesh: cannot read config file {config_file}") and \
        err.count("\n") == 1
    config_file.write_text("[contexts.a]\nserver = 'x'\n")
    code, _, err = virtmesh("list")
    assert code == 2 and "unknown key 'server'" in err


def test_the_current_context_reaches_the_gateway(virtmesh: Run, mesh: Mesh) -> None:
    # nothing in ./ and no context: the default PKI is not there
    code, _, err = virtmesh("list")
    assert code == 2 and "cannot read CA certificate" in err
    assert virtmesh("config", "set-context", "mesh", "--gateway", mesh.target,
                    "--state-dir", str(mesh.state_dir), "--use")[0] == 0
    code, out, err = virtmesh("--json", "list")
    assert code == 0, err
    assert "alpha" in _names(out)


def test_flags_and_environment_win_over_the_context(virtmesh: Run, mesh: Mesh,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert virtmesh("config", "set-context", "mesh", "--gateway", mesh.target,
                    "--state-dir", str(mesh.state_dir), "--use")[0] == 0
    assert virtmesh("config", "set-context", "dead", "--gateway", "127.0.0.1:1",
                    "--state-dir", str(mesh.state_dir))[0] == 0
    # --gateway over the context's gateway: nothing listens on port 1
    code, _, err = virtmesh("--gateway", "127.0.0.1:1", "--timeout", "5", "list")
    assert code == 1 and "UNAVAILABLE" in err
    # --context picks another context, VIRTMESH_CONTEXT too; the flag wins over it
    assert virtmesh("--context", "dead", "--timeout", "5", "list")[0] == 1
    monkeypatch.setenv("VIRTMESH_CONTEXT", "dead")
    assert virtmesh("--timeout", "5", "list")[0] == 1
    assert virtmesh("--context", "mesh", "list")[0] == 0
    monkeypatch.delenv("VIRTMESH_CONTEXT")
    # an environment variable over the context's CA
    monkeypatch.setenv("VIRTMESH_CA", "/nonexistent/ca.crt")
    code, _, err = virtmesh("list")
    assert code == 2 and "/nonexistent/ca.crt" in err
    # and a flag over the environment
    code, _, err = virtmesh("--ca", str(mesh.state_dir / "pki" / "ca.crt"), "list")
    assert code == 0, err
    code, _, err = virtmesh("--context", "nope", "list")
    assert code == 2 and "no context named 'nope'" in err


def test_the_tls_server_name_of_a_context_is_checked(virtmesh: Run, mesh: Mesh) -> None:
    """The dev server certificate names localhost and 127.0.0.1, not wrong.invalid."""
    assert virtmesh("config", "set-context", "mesh", "--gateway", mesh.target,
                    "--state-dir", str(mesh.state_dir), "--tls-server-name", "wrong.invalid",
                    "--use")[0] == 0
    code, _, err = virtmesh("--timeout", "5", "list")
    assert code == 1 and "UNAVAILABLE" in err
    assert virtmesh("--tls-server-name", "localhost", "list")[0] == 0
    assert virtmesh("config", "set-context", "mesh", "--tls-server-name", "localhost")[0] == 0
    assert virtmesh("list")[0] == 0


def test_make_run_writes_a_context_for_its_mesh(virtmesh: Run, mesh: Mesh,
                                                config_file: Path) -> None:
    pki = mesh.state_dir / "pki"
    line = write_cli_context("dev", mesh.target, pki)
    assert line.startswith(f"dev in {config_file}")
    assert virtmesh("config", "current-context")[1] == "dev\n"
    assert "alpha" in _names(virtmesh("--json", "list")[1])
    # a second mesh's context does not take the current one's place
    write_cli_context("other", "127.0.0.1:1", pki)
    assert virtmesh("config", "current-context")[1] == "dev\n"
    assert write_cli_context("", mesh.target, pki).startswith("none written")
    assert os.stat(config_file).st_mode & 0o077 == 0


def test_the_python_client_connects_through_a_context(virtmesh: Run, mesh: Mesh,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no current context"):
        connect()
    assert virtmesh("config", "set-context", "mesh", "--gateway", f"n1={mesh.target}",
                    "--state-dir", str(mesh.state_dir))[0] == 0
    with connect("mesh") as client:
        assert "alpha" in [d.name for d in client.domains()]
    monkeypatch.setenv("VIRTMESH_CONTEXT", "mesh")
    with connect(timeout=10) as client:
        assert client.timeout == 10 and client.domain("alpha").name == "alpha"
    with pytest.raises(ConfigError, match="no context named 'other'"):
        connect("other")
