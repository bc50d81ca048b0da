"""The host's libvirt daemon, for the drivers libvirt cannot run embedded.

storage, network, nwfilter, nodedev and iface reach it through their driver URIs
(``storage:///system``, ...). ``make run`` and the tests start it, with virtlogd,
when nothing answers on its socket, and stop only a daemon they started.
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


def _daemonize(binary: str) -> None:
    path = shutil.which(binary) or f"/usr/sbin/{binary}"
    if not os.access(path, os.X_OK):
        raise HostDaemonError(f"{binary} is not installed (tools/install-deps.sh installs it)")
    result = subprocess.run([path, "-d"], capture_output=True, text=True, check=False,
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

    def __init__(self) -> None:
        self.started = False

    def ensure(self, timeout: float = 30.0) -> None:
        if answering():
            return
        if os.geteuid() != 0:
            raise HostDaemonError(f"no libvirt daemon answers on {SOCKET}, and only root "
                                  "can start one; start libvirtd or run as root")
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        if not _running(Path("/run/virtlogd.pid")):
            _daemonize("virtlogd")
        _daemonize("libvirtd")
        self.started = True
        deadline = time.monotonic() + timeout
        while not answering():
            if time.monotonic() > deadline:
                raise HostDaemonError(f"libvirtd started but {SOCKET} does not answer "
                                      f"after {timeout:.0f}s; see {LOG_DIR}")
            time.sleep(0.1)
        log.info("started the host's libvirtd")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop libvirtd if we started it; virtlogd stays for QEMU guests' logs."""
        if not self.started:
            return
        self.started = False
        try:
            pid = int(PID_FILE.read_text().strip())
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
