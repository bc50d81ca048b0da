"""The compute service's guest agent calls: interface addresses, file systems, guest
information, hostname, vCPUs, time, passwords, SSH keys and the agent's timeout.

Every call needs a running domain; most go to qemu-guest-agent in the guest. An agent
that does not answer (none installed, not started, not connected, or too slow) is
libvirt's VIR_ERR_AGENT_UNRESPONSIVE, which the shared table makes DEADLINE_EXCEEDED;
here it is FAILED_PRECONDITION instead: the caller's deadline did not pass, the
guest is not in a state to answer, and only a change in the guest (its agent
starting) makes a retry succeed. A command the agent refuses while the guest's file
systems are frozen is FAILED_PRECONDITION too (libvirt says internal error).

A password is never in a log line or an error message of ours: libvirt's own errors
for the call do not repeat it either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import libvirt

from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend

_INT_MAX = 2**31 - 1
#: the remote protocol's bounds (REMOTE_DOMAIN_FSFREEZE_MOUNTPOINTS_MAX,
#: REMOTE_DOMAIN_AUTHORIZED_SSH_KEYS_MAX)
MAX_MOUNTPOINTS = 256
MAX_SSH_KEYS = 2048
#: how qemu-guest-agent refuses a command while the file systems are frozen (libvirt
#: passes it on as an internal error)
FROZEN = "the agent is in frozen state"


@contextlib.contextmanager
def _agent(dom: libvirt.virDomain) -> Iterator[None]:
    """An unresponsive agent as FAILED_PRECONDITION (see the module's docstring)."""
    try:
        yield
    except libvirt.libvirtError as error:
        if FROZEN in str(error.get_error_message()):
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the file systems of domain '{dom.name()}' are frozen: thaw them first "
                f"({error.get_error_message()})", "GUEST_FILESYSTEMS_FROZEN") from error
        if error.get_error_code() != libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
            raise
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the guest agent of domain '{dom.name()}' does not answer (is qemu-guest-agent "
            f"installed and running in the guest?): {error.get_error_message()}",
            "VIR_ERR_AGENT_UNRESPONSIVE") from error


def _mountpoints(mountpoints: Sequence[str]) -> list[str] | None:
    """Mountpoints as libvirt takes them: None for all."""
    if len(mountpoints) > MAX_MOUNTPOINTS:
        raise invalid(f"mountpoints: at most {MAX_MOUNTPOINTS}")
    if any(not point for point in mountpoints):
        raise invalid("mountpoints: an empty mountpoint")
    if len(set(mountpoints)) != len(mountpoints):
        raise invalid("mountpoints: a mountpoint is repeated")
    return list(mountpoints) or None


def _user(user: str) -> str:
    require(user, "user")
    if "\n" in user:
        raise invalid("user: one line")
    return user


class AgentBackend:
    """Guest agent calls on the compute service's connection."""

    def __init__(self, compute: ComputeBackend) -> None:
        self.compute = compute

    @contextlib.contextmanager
    def _running(self, name: str) -> Iterator[libvirt.virDomain]:
        """The running domain, its agent's silence as FAILED_PRECONDITION."""
        dom = self.compute.running(name)
        with _agent(dom):
            yield dom

    def interface_addresses(self, name: str, source: int) -> dict[str, Any]:
        """libvirt's interface -> {hwaddr, addrs} table."""
        with self._running(name) as dom:
            return dict(dom.interfaceAddresses(source, 0) or {})

    def fs_freeze(self, name: str, mountpoints: Sequence[str]) -> int:
        points = _mountpoints(mountpoints)
        with self._running(name) as dom:
            return int(dom.fsFreeze(points, 0))

    def fs_thaw(self, name: str, mountpoints: Sequence[str]) -> int:
        points = _mountpoints(mountpoints)
        with self._running(name) as dom:
            return int(dom.fsThaw(points, 0))

    def fs_trim(self, name: str, mountpoint: str, minimum: int) -> None:
        if mountpoint and not mountpoint.startswith("/"):
            raise invalid(f"mountpoint: '{mountpoint}' is not an absolute path")
        with self._running(name) as dom:
            dom.fSTrim(mountpoint or None, minimum, 0)

    def fs_info(self, name: str) -> list[tuple[str, str, str, list[str]]]:
        """(mountpoint, device, type, disk targets) of each file system."""
        with self._running(name) as dom:
            return list(dom.fsInfo(0))

    def guest_info(self, name: str, types: int) -> dict[str, Any]:
        """libvirt's typed parameters; ``types``: virDomainGuestInfoTypes (0: all)."""
        with self._running(name) as dom:
            return dict(dom.guestInfo(types, 0))

    def hostname(self, name: str, flags: int) -> str:
        with self._running(name) as dom:
            return str(dom.hostname(flags))

    def guest_vcpus(self, name: str) -> dict[str, str]:
        """vcpus, online and offlinable CPU lists."""
        with self._running(name) as dom:
            found = dom.guestVcpus(0)
            if found is None:  # libvirt-python returns None where it should raise
                raise libvirt.libvirtError("virDomainGetGuestVcpus failed")
            return {key: str(value) for key, value in found.items()}

    def set_guest_vcpus(self, name: str, cpumap: str, online: bool) -> None:
        require(cpumap, "cpumap")
        with self._running(name) as dom:
            dom.setGuestVcpus(cpumap, int(online), 0)

    def time(self, name: str) -> tuple[int, int]:
        """(seconds, nanoseconds) since the epoch on the guest's clock."""
        with self._running(name) as dom:
            found = dom.getTime(0)
            return int(found["seconds"]), int(found["nseconds"])

    def set_time(self, name: str, time: tuple[int, int] | None, sync: bool) -> None:
        """Set the guest's clock to ``time`` (seconds, nanoseconds), or with ``sync``
        from its hardware clock."""
        if (time is None) == (not sync):
            raise invalid("give either time or sync, not both", "MISSING_FIELD"
                           if time is None else "VIR_ERR_INVALID_ARG")
        if time is not None and time[0] < 0:
            raise invalid("time: before 1970")
        with self._running(name) as dom:
            if sync:
                dom.setTime(None, libvirt.VIR_DOMAIN_TIME_SYNC)
            else:
                assert time is not None
                dom.setTime({"seconds": time[0], "nseconds": time[1]}, 0)

    def set_user_password(self, name: str, user: str, password: str, encrypted: bool) -> None:
        """The password goes to libvirt only: no log line, no message of ours names it."""
        user = _user(user)
        if not password:
            raise invalid("password is required", "MISSING_FIELD")
        flags = libvirt.VIR_DOMAIN_PASSWORD_ENCRYPTED if encrypted else 0
        with self._running(name) as dom:
            dom.setUserPassword(user, password, flags)

    def ssh_keys(self, name: str, user: str) -> list[str]:
        user = _user(user)
        with self._running(name) as dom:
            return list(dom.authorizedSSHKeysGet(user, 0) or [])

    def set_ssh_keys(self, name: str, user: str, keys: Sequence[str], flags: int) -> None:
        """``flags``: virDomainAuthorizedSSHKeysSetFlags (0: replace them all)."""
        user = _user(user)
        if len(keys) > MAX_SSH_KEYS:
            raise invalid(f"keys: at most {MAX_SSH_KEYS}")
        if any(not key or "\n" in key for key in keys):
            raise invalid("keys: each key is one non-empty line")
        if not keys and flags:
            raise invalid("keys: name the keys to append or remove", "MISSING_FIELD")
        with self._running(name) as dom:
            dom.authorizedSSHKeysSet(user, list(keys), flags)

    def set_agent_timeout(self, name: str, timeout: int) -> None:
        """``timeout``: seconds, or libvirt's BLOCK, NOWAIT or DEFAULT value."""
        if timeout > _INT_MAX:
            raise invalid(f"seconds: {timeout} is out of range")
        with self._running(name) as dom:
            dom.agentSetResponseTimeout(timeout, 0)
