"""The host daemon helper: starts libvirtd when none answers, stops only its own.

Runs against a private libvirtd (own socket, pid file and config), never the
host's: the same code path `make run` and the test session use.
"""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

from services.common.host_daemon import HostDaemon, answering

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="starting libvirtd needs root here"),
    pytest.mark.skipif(not os.access("/usr/sbin/libvirtd", os.X_OK),
                       reason="libvirtd not installed"),
]


def private(root: Path) -> HostDaemon:
    """libvirtd with only its built-in test driver (LIBVIRT_DRIVER_DIR is empty), so it
    cannot clash with the host's daemon over the QEMU or network drivers' state."""
    conf = root / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{root}"\nunix_sock_rw_perms = "0700"\n'
                    'auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
    return HostDaemon(root / "libvirt-sock", root / "libvirtd.pid", conf, with_virtlogd=False)


def test_leaves_existing_modular_sockets_alone(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "no-drivers").mkdir()
    monkeypatch.setenv("LIBVIRT_DRIVER_DIR", str(tmp_path / "no-drivers"))
    real = tmp_path / "virtstoraged-sock"
    real.write_text("stands for a real virtstoraged's socket")
    daemon = private(tmp_path)
    daemon.ensure()
    daemon.stop()
    assert real.read_text().startswith("stands for")
    assert real not in daemon.aliases


def test_starts_when_absent_and_stops_only_its_own(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "no-drivers").mkdir()
    monkeypatch.setenv("LIBVIRT_DRIVER_DIR", str(tmp_path / "no-drivers"))
    ours, theirs = private(tmp_path), private(tmp_path)
    assert not answering(ours.socket)
    ours.ensure()
    try:
        assert ours.started and answering(ours.socket)
        conn = libvirt.open(f"test+unix:///default?socket={ours.socket}")
        assert conn.lookupByName("test").name() == "test"
        conn.close()
        # A second user finds it running: uses it, and leaves it alone on stop.
        theirs.ensure()
        assert not theirs.started
        theirs.stop()
        assert answering(ours.socket)
        # The modular daemons' names lead to the same daemon (embedded QEMU needs them).
        alias = ours.socket.with_name("virtnetworkd-sock")
        assert alias in ours.aliases and answering(alias)
        conn = libvirt.open(f"test+unix:///default?socket={alias}")
        assert conn.lookupByName("test").name() == "test"
        conn.close()
    finally:
        ours.stop()
    assert not answering(ours.socket)
    assert not ours.started
    assert not any(path.name.startswith("virt") for path in tmp_path.iterdir())
