"""Why a guest is paused, crashed or stopped when no caller asked for it.

libvirt's state reason says "paused (unknown)" or "shutoff (crashed)"; what
happened is in libvirt's control info, the disk errors QEMU reported, and the last
error QEMU wrote to the guest's log (for example "KVM internal error. Suberror: 1"
on a host whose KVM cannot run the guest, or "terminating on signal 15 from pid
…" when someone killed it). This reads them, for GetDomain and lifecycle events.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import libvirt

#: how much of the end of a QEMU log is read
_LOG_TAIL = 64 * 1024
#: a line QEMU's error_report wrote (``-msg timestamp=on``): ISO time, program, message
_QEMU_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\dT[\d:.]+Z )?qemu-system-[\w-]+: (?P<message>.+)$")
#: libvirt's line opening a run of the guest in its log
_STARTING = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+\+\d{4}: starting up\b")
_CONTROL_STATES = {
    libvirt.VIR_DOMAIN_CONTROL_JOB: "a job is running",
    libvirt.VIR_DOMAIN_CONTROL_OCCUPIED: "its monitor is busy",
    libvirt.VIR_DOMAIN_CONTROL_ERROR: "its monitor failed",
}
_CONTROL_ERRORS = {
    libvirt.VIR_DOMAIN_CONTROL_ERROR_REASON_UNKNOWN: "",
    libvirt.VIR_DOMAIN_CONTROL_ERROR_REASON_MONITOR: " (monitor connection)",
    libvirt.VIR_DOMAIN_CONTROL_ERROR_REASON_INTERNAL: " (internal error)",
}
_DISK_ERRORS = {
    libvirt.VIR_DOMAIN_DISK_ERROR_UNSPEC: "an I/O error",
    libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE: "no space left on the host",
}


def last_qemu_error(log: Path) -> str:
    """The last error line QEMU wrote to ``log`` in the guest's last run; "" if none.
    Warnings are left out: QEMU warns at every start about CPU features."""
    with contextlib.suppress(OSError), log.open("rb") as file:
        file.seek(0, 2)
        file.seek(max(file.tell() - _LOG_TAIL, 0))
        lines = file.read().decode(errors="replace").splitlines()
        found = ""
        for line in lines:
            if _STARTING.match(line):
                found = ""  # an earlier run's
                continue
            match = _QEMU_LINE.match(line)
            if match and not match["message"].startswith("warning:"):
                found = match["message"]
        return found
    return ""


def explain(dom: libvirt.virDomain, log_dir: Path | None, live: bool = True) -> str:
    """Control info and disk errors of a running guest (``live``), and QEMU's last
    error. Events are converted on libvirt's event loop thread, where a call that may
    wait for the domain's job (disk errors) could wait for that very loop: they
    read the log only."""
    parts = []
    if live and dom.isActive():
        with contextlib.suppress(libvirt.libvirtError):
            state, detail, _ = dom.controlInfo()
            if state in _CONTROL_STATES:
                parts.append(_CONTROL_STATES[state] + (
                    _CONTROL_ERRORS.get(detail, "") if state == libvirt.VIR_DOMAIN_CONTROL_ERROR
                    else ""))
        with contextlib.suppress(libvirt.libvirtError):
            parts += [f"{disk}: {_DISK_ERRORS.get(error, 'an I/O error')}"
                      for disk, error in sorted(dom.diskErrors().items())
                      if error != libvirt.VIR_DOMAIN_DISK_ERROR_NONE]
    if log_dir is not None:
        error = last_qemu_error(log_dir / f"{dom.name()}.log")
        if error:
            parts.append(f"QEMU: {error}")
    return "; ".join(parts)
