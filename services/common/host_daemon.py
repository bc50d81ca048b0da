"""The host's libvirt daemon, for the drivers libvirt cannot run embedded.

storage, network, nwfilter, nodedev and iface reach it through their driver URIs
(``storage:///system``, ...). ``make run`` and the tests start it, with virtlogd,
when nothing answers on its socket, and stop only a daemon they started.

The embedded QEMU driver counts as "inside a daemon", and libvirt then reaches
the network, storage, ... drivers only through the modular daemons' sockets
(``/run/libvirt/virtnetworkd-sock``; "Connections from inside daemon must be
direct"). Debian ships only the monolithic libvirtd, which serves every driver
on its one socket, so we publish that socket under the modular names that are
missing, as virtproxyd would, and remove on stop only the names we created.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from services.common import registry

log = logging.getLogger(__name__)

SOCKET = Path("/run/libvirt/libvirt-sock")
PID_FILE = Path("/run/libvirtd.pid")
LOG_DIR = Path("/var/log/libvirt")


class HostDaemonError(RuntimeError):
    pass


def answering(path: Path = SOCKET) -> bool:
    """True when a daemon accepts connections on libvirt's system socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _daemonize(binary: str, *args: str) -> None:
    path = shutil.which(binary) or f"/usr/sbin/{binary}"
    if not os.access(path, os.X_OK):
        raise HostDaemonError(f"{binary} is not installed (tools/install-deps.sh installs it)")
    result = subprocess.run([path, "-d", *args], capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode:
        raise HostDaemonError(f"{binary} -d failed: {result.stderr.strip()}")


def _running(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


class HostDaemon:
    """libvirtd (and virtlogd) on the host: started if absent, stopped only if ours."""

    def __init__(self, socket: Path = SOCKET, pid_file: Path = PID_FILE,
                 config: Path | None = None, with_virtlogd: bool = True) -> None:
        #: the system daemon by default; another socket, pid file and config for tests
        self.socket, self.pid_file, self.config = socket, pid_file, config
        self.with_virtlogd = with_virtlogd
        self.started = False
        self.aliases: list[Path] = []

    def ensure(self, timeout: float = 30.0) -> None:
        self._start(timeout)
        self._alias_modular_sockets()

    def _alias_modular_sockets(self) -> None:
        # the modular daemons an embedded QEMU guest needs: <interface type='network'>,
        # <disk type='volume'>, <filterref>, <hostdev>
        for driver in registry.host_daemon_drivers():
            alias = self.socket.with_name(f"virt{driver}d-sock")
            if alias.exists() or alias.is_symlink():
                continue  # a real modular daemon, or someone else's alias
            alias.symlink_to(self.socket.name)
            self.aliases.append(alias)

    def _start(self, timeout: float) -> None:
        if answering(self.socket):
            return
        if os.geteuid() != 0:
            raise HostDaemonError(f"no libvirt daemon answers on {self.socket}, and only root "
                                  "can start one; start libvirtd or run as root")
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        # QEMU guests of the host daemon log through virtlogd.
        if self.with_virtlogd and not _running(Path("/run/virtlogd.pid")):
            _daemonize("virtlogd")
        _daemonize("libvirtd", "--pid-file", str(self.pid_file),
                   *(("--config", str(self.config)) if self.config else ()))
        self.started = True
        deadline = time.monotonic() + timeout
        while not answering(self.socket):
            if time.monotonic() > deadline:
                raise HostDaemonError(f"libvirtd started but {self.socket} does not answer "
                                      f"after {timeout:.0f}s; see {LOG_DIR}")
            time.sleep(0.1)
        log.info("started libvirtd on %s", self.socket)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop libvirtd if we started it, and remove our socket aliases; virtlogd
        stays for QEMU guests' logs."""
        for alias in self.aliases:
            alias.unlink(missing_ok=True)
        self.aliases.clear()
        if not self.started:
            return
        self.started = False
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
