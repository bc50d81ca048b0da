"""Config precedence: flag > VIRTMESH_* env > file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as gateway_config
from services.common.config import ConfigError, describe, load


def test_defaults() -> None:
    config = load("compute", "qemu:///embed?root={state_dir}/qemu", [], {})
    assert config.state_dir == Path(".virtmesh").absolute()
    assert config.libvirt_uri == f"qemu:///embed?root={Path('.virtmesh').absolute()}/qemu"
    assert config.socket_path == Path(".virtmesh").absolute() / "run" / "compute.sock"
    assert config.guests_on_exit == "keep"


def test_precedence(tmp_path: Path) -> None:
    file = tmp_path / "virtmesh.toml"
    file.write_text('log_level = "WARNING"\nmax_workers = 3\nlisten = "0.0.0.0:1"\n'
                    '[services.compute]\nmax_workers = 5\nuri = "test:///default"\n'
                    '[services.other]\nmax_workers = 9\n')
    env = {"VIRTMESH_CONFIG": str(file), "VIRTMESH_MAX_WORKERS": "7",
           "VIRTMESH_SOCKET_MODE": "600"}
    config = load("compute", "qemu:///system", [], env)
    assert config.log_level == "WARNING"  # file, top level
    assert config.uri == "test:///default"  # file, own table
    assert config.max_workers == 7  # env beats file
    assert config.socket_mode == 0o600  # octal
    config = load("compute", "qemu:///system", ["--max-workers", "11"], env)
    assert config.max_workers == 11  # flag beats env
    assert "max_workers=11" in describe(config)


def test_gateway_shares_the_file(tmp_path: Path) -> None:
    file = tmp_path / "virtmesh.toml"
    file.write_text('listen = "127.0.0.1:9999"\n[services.gateway]\nclient_auth = "optional"\n')
    config = gateway_config.load(["--config", str(file)], {})
    assert config.listen == "127.0.0.1:9999"
    assert config.client_auth == "optional"
    assert config.cert_file == Path(".virtmesh").absolute() / "pki" / "server.crt"


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-workers", "many"], "max_workers"),
    (["--guests-on-exit", "explode"], "guests_on_exit"),
    (["--log-format", "xml"], "log_format"),
    (["--socket-mode", "9"], "socket_mode"),
])
def test_bad_values_name_the_setting(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load("compute", "test:///default", argv, {})


def test_unknown_setting_in_own_table(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[services.compute]\nmax_wrokers = 1\n")
    with pytest.raises(ConfigError, match="max_wrokers"):
        load("compute", "test:///default", ["--config", str(file)], {})


def test_malformed_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="bad.toml"):
        load("compute", "test:///default", ["--config", str(file)], {})


def test_wrong_type_in_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("max_workers = true\n")
    with pytest.raises(ConfigError, match="max_workers"):
        load("compute", "test:///default", ["--config", str(file)], {})
