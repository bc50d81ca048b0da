"""Lifecycle extras of a domain: guest power management, renaming, NMIs, process
signals, lifecycle actions, libvirt's messages, vCPU counts and dirty rates.

What a caller sends is checked before libvirt sees it (a new name as DefineDomain
checks names, pids, counts and flag combinations), and the state a call needs is
checked first where a driver would not say so itself (the test driver sends a
signal to an inactive domain without a word).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common import documents
from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend, must_run

#: the seconds QEMU measures a dirty rate for (its calc-time bounds)
DIRTY_RATE_SECONDS = range(1, 61)
_LIVE, _CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
_LLONG_MAX = 2**63 - 1
#: VIR_NODE_SUSPEND_TARGET_* -> the <pm> elements that must not disable it
PM_ELEMENTS = {
    libvirt.VIR_NODE_SUSPEND_TARGET_MEM: ("suspend-to-mem",),
    libvirt.VIR_NODE_SUSPEND_TARGET_DISK: ("suspend-to-disk",),
    libvirt.VIR_NODE_SUSPEND_TARGET_HYBRID: ("suspend-to-mem", "suspend-to-disk"),
}
#: the actions libvirt's domain XML allows only on a crash (virDomainDefLifecycleActionAllowed)
CRASH_ONLY_ACTIONS = frozenset((libvirt.VIR_DOMAIN_LIFECYCLE_ACTION_COREDUMP_DESTROY,
                                libvirt.VIR_DOMAIN_LIFECYCLE_ACTION_COREDUMP_RESTART))


def check_new_name(name: str) -> None:
    """A domain name libvirt accepts and makes file names of: what DefineDomain's
    document check allows of a <name>, and no '/' (libvirt's own rule)."""
    require(name, "new_name")
    limit = documents.DEFAULT_LIMITS.max_name_bytes
    if "\0" in name:
        raise invalid("new_name holds a NUL character")
    if "/" in name:
        raise invalid(f"new_name {name!r} holds a '/'")
    if len(name.encode("utf-8", "surrogatepass")) > limit:
        raise invalid(f"new_name is longer than {limit} bytes (libvirt makes file names "
                       "of it)", "NAME_TOO_LONG")
    if name != name.strip() or any(ord(char) < 32 for char in name):
        raise invalid(f"new_name {name!r} has control characters or surrounding space")


class LifecycleBackend:
    """The libvirt side of the lifecycle-extra RPCs; domains through
    ``ComputeBackend.lookup``."""

    def __init__(self, compute: ComputeBackend) -> None:
        self.compute = compute

    # -- guest power management --------------------------------------------------

    def pm_suspend(self, name: str, target: int, duration_seconds: int) -> None:
        """``target``: a VIR_NODE_SUSPEND_TARGET_*."""
        if duration_seconds > _LLONG_MAX:
            raise invalid(f"duration_seconds: {duration_seconds} is out of range")
        dom = self.compute.running(name)
        if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' is not running (paused or asleep)",
                               "VIR_ERR_OPERATION_INVALID")
        pm = ET.fromstring(dom.XMLDesc(0)).find("pm")
        for element in PM_ELEMENTS[target]:
            state = pm.find(element) if pm is not None else None
            if state is not None and state.get("enabled") == "no":
                # libvirt says OPERATION_UNSUPPORTED: the domain's own setting refuses it
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"domain '{dom.name()}' has <{element} enabled='no'/>",
                                   "PM_TARGET_DISABLED")
        dom.pMSuspendForDuration(target, duration_seconds, 0)

    def pm_wakeup(self, name: str) -> None:
        """Only a guest that suspended itself (QEMU's refusal otherwise is INTERNAL)."""
        dom = self.compute.running(name)
        if dom.state()[0] != libvirt.VIR_DOMAIN_PMSUSPENDED:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' is not suspended by its guest",
                               "VIR_ERR_OPERATION_INVALID")
        dom.pMWakeup(0)

    # -- renaming, NMIs and signals ---------------------------------------------

    def rename(self, name: str, new_name: str) -> libvirt.virDomain:
        """The domain under its new name; it must be defined and not running."""
        check_new_name(new_name)
        dom = self.compute.lookup(name)
        if dom.isActive():
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' is running: shut it down to rename it",
                               "VIR_ERR_OPERATION_INVALID")
        if new_name == dom.name():
            raise invalid(f"domain '{new_name}' already has that name")
        try:
            self.compute.conn.lookupByName(new_name)
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        else:
            raise ServiceError(grpc.StatusCode.ALREADY_EXISTS,
                               f"domain '{new_name}' already exists", "VIR_ERR_DOM_EXIST")
        dom.rename(new_name, 0)
        return self.compute.lookup(dom.UUIDString())

    def inject_nmi(self, name: str) -> None:
        self.compute.running(name).injectNMI(0)

    def send_process_signal(self, name: str, pid: int, signal: int) -> None:
        """``signal``: a VIR_DOMAIN_PROCESS_SIGNAL_*."""
        if pid < 1:
            raise invalid(f"pid: {pid} is not a process id")
        self.compute.running(name).sendProcessSignal(pid, signal, 0)

    # -- lifecycle actions, messages, vCPU counts, dirty rates -------------------

    def set_lifecycle_action(self, name: str, kind: int, action: int, flags: int) -> None:
        """``kind``: a VIR_DOMAIN_LIFECYCLE_*, ``action`` a
        VIR_DOMAIN_LIFECYCLE_ACTION_*, ``flags`` AFFECT_*."""
        if kind != libvirt.VIR_DOMAIN_LIFECYCLE_CRASH and action in CRASH_ONLY_ACTIONS:
            raise invalid("the coredump actions are for crashes only")
        dom = self.compute.lookup(name)
        if flags & _LIVE:
            must_run(dom)
        dom.setLifecycleAction(kind, action, flags)

    def messages(self, name: str, flags: int) -> list[str]:
        """``flags``: VIR_DOMAIN_MESSAGE_*; 0 is all of them."""
        return [str(message) for message in self.compute.lookup(name).messages(flags)]

    def vcpu_count(self, name: str, scope: int, maximum: bool, guest: bool) -> int:
        """``scope``: AFFECT_LIVE, AFFECT_CONFIG or neither."""
        if scope & _LIVE and scope & _CONFIG:
            raise invalid("a vCPU count is live or config, not both", "CONFLICTING_FLAGS")
        if guest and (scope & _CONFIG or maximum):
            raise invalid("the guest counts its current vCPUs, live only",
                           "CONFLICTING_FLAGS")
        dom = self.compute.lookup(name)
        if guest or scope & _LIVE:
            must_run(dom)
        flags = (scope | (libvirt.VIR_DOMAIN_VCPU_MAXIMUM if maximum else 0)
                 | (libvirt.VIR_DOMAIN_VCPU_GUEST if guest else 0))
        return int(dom.vcpusFlags(flags))

    def start_dirty_rate_calc(self, name: str, seconds: int, flags: int) -> None:
        """``seconds``: 0 is 1, as virsh; ``flags``: a VIR_DOMAIN_DIRTYRATE_MODE_* or 0."""
        seconds = seconds or 1
        if seconds not in DIRTY_RATE_SECONDS:
            raise invalid(f"calc_seconds: {seconds} is outside 1 to 60")
        dom = self.compute.running(name)
        if (flags & libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP
                and ET.fromstring(dom.XMLDesc(0)).get("type") == "qemu"):
            # QEMU under TCG (Debian 12's 7.2) dies measuring so: its guest with it
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' runs under TCG, where QEMU's "
                               "dirty_bitmap measurement crashes it; use page_sampling",
                               "DIRTY_RATE_MODE_NEEDS_KVM")
        dom.startDirtyRateCalc(seconds, flags)

    def is_updated(self, dom: libvirt.virDomain) -> bool:
        """Whether a running domain's live definition has changed since it started: a
        flag libvirt keeps on the domain, no call into the guest (GetDomain's)."""
        return bool(dom.isUpdated())
