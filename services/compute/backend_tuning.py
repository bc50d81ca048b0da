"""Tuning a domain: scheduler, memory, block I/O, NUMA and perf tunables, CPU pinning,
IOThreads, metadata, CPU statistics and maximum memory.

A change of typed parameters is checked against the names and types the domain has
before libvirt sees it: libvirt-python converts by name and raises plain Python
errors (LookupError, TypeError, OverflowError) for a name it does not know or a value
of the wrong type, which would reach the caller as INTERNAL. Checked first, a bad
request changes nothing and gets INVALID_ARGUMENT naming the parameter.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import libvirt

from services.common import documents
from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend, must_run

#: typed-parameter getters take one scope, never both (libvirt refuses it with a
#: message that does not say so)
_BOTH = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
#: the largest value of libvirt's unsigned long long typed parameters
_ULLONG_MAX = 2**64 - 1
_INT_MAX = 2**31 - 1
#: virDomainSetIOThreadParams' parameters (no getter says which a domain has):
#: integers all
IOTHREAD_PARAMETERS = {name: 0 for name in (
    libvirt.VIR_DOMAIN_IOTHREAD_POLL_MAX_NS, libvirt.VIR_DOMAIN_IOTHREAD_POLL_GROW,
    libvirt.VIR_DOMAIN_IOTHREAD_POLL_SHRINK, libvirt.VIR_DOMAIN_IOTHREAD_THREAD_POOL_MIN,
    libvirt.VIR_DOMAIN_IOTHREAD_THREAD_POOL_MAX)}


def one_scope(flags: int) -> int:
    if flags & _BOTH == _BOTH:
        raise invalid("a getter reads live or config, not both", "CONFLICTING_FLAGS")
    return flags


def _same_type(value: Any, current: Any) -> bool:
    """``value`` is of the Python type libvirt-python converts ``current``'s from."""
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, int):
        return isinstance(value, int) and -2**63 <= value <= _ULLONG_MAX
    return type(value) is type(current)


def checked_changes(changes: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """``changes``, once every name is one of ``current``'s and its value of the type
    libvirt gives that name."""
    if not changes:
        raise invalid("give at least one parameter to change", "MISSING_FIELD")
    for name, value in changes.items():
        if name not in current:
            raise invalid(f"unknown parameter {name!r}; the domain has "
                           f"{', '.join(sorted(current))}", "UNKNOWN_PARAMETER")
        if not _same_type(value, current[name]):
            raise invalid(f"parameter {name!r} takes a {type(current[name]).__name__}, "
                           f"not a {type(value).__name__}", "INVALID_PARAMETER_TYPE")
    return dict(changes)


def call_in_range(setter: Callable[..., Any], *args: Any) -> Any:
    """``setter(*args)``; a value out of its parameter's range (a negative number for
    an unsigned one) is INVALID_ARGUMENT. libvirt-python converts every value before
    it calls libvirt, so nothing has changed then."""
    try:
        return setter(*args)
    except OverflowError as error:
        raise invalid(f"a parameter is out of range: {error}", "INVALID_PARAMETER_TYPE") \
            from None


def _cpumap(cpus: Sequence[int], host_cpus: int) -> tuple[bool, ...]:
    """libvirt-python's CPU map of ``cpus``: at least one, each one the host has."""
    if not cpus:
        raise invalid("give at least one host CPU", "MISSING_FIELD")
    wrong = sorted(cpu for cpu in set(cpus) if cpu >= host_cpus)
    if wrong:
        raise invalid(f"the host has CPUs 0 to {host_cpus - 1}, not {wrong}")
    wanted = set(cpus)
    return tuple(cpu in wanted for cpu in range(host_cpus))


def cpu_list(cpumap: Sequence[bool]) -> list[int]:
    return [cpu for cpu, on in enumerate(cpumap) if on]


class TuningBackend:
    """The libvirt side of the tuning RPCs; domains through ``ComputeBackend.lookup``."""

    def __init__(self, compute: ComputeBackend) -> None:
        self.compute = compute

    def _host_cpus(self) -> int:
        return int(self.compute.conn.getInfo()[2])

    def _set(self, getter: Callable[[int], Mapping[str, Any]],
             setter: Callable[[dict[str, Any], int], Any], changes: Mapping[str, Any],
             flags: int) -> None:
        """Check ``changes`` against what ``getter`` reads in the same scope (live
        wins when both are asked: the live domain has every name the config has)."""
        read = flags & ~libvirt.VIR_DOMAIN_AFFECT_CONFIG if flags & _BOTH == _BOTH else flags
        call_in_range(setter, checked_changes(changes, getter(read)), flags)

    # -- typed-parameter tunables ----------------------------------------------

    def scheduler(self, name: str, flags: int) -> tuple[str, dict[str, Any]]:
        """The scheduler's name and parameters; with no scope, libvirt's older call,
        which every driver has (the test driver refuses the flags form)."""
        dom = self.compute.lookup(name)
        kind = dom.schedulerType()[0]
        if not one_scope(flags):
            return kind, dict(dom.schedulerParameters())
        return kind, dict(dom.schedulerParametersFlags(flags))

    def set_scheduler(self, name: str, changes: Mapping[str, Any], flags: int) -> None:
        dom = self.compute.lookup(name)
        if not flags:
            current = dom.schedulerParameters()
            call_in_range(dom.setSchedulerParameters, checked_changes(changes, current))
            return
        self._set(dom.schedulerParametersFlags, dom.setSchedulerParametersFlags, changes,
                  flags)

    def memory(self, name: str, flags: int) -> dict[str, Any]:
        return dict(self.compute.lookup(name).memoryParameters(one_scope(flags)))

    def set_memory(self, name: str, changes: Mapping[str, Any], flags: int) -> None:
        dom = self.compute.lookup(name)
        self._set(dom.memoryParameters, dom.setMemoryParameters, changes, flags)

    def blkio(self, name: str, flags: int) -> dict[str, Any]:
        return dict(self.compute.lookup(name).blkioParameters(one_scope(flags)))

    def set_blkio(self, name: str, changes: Mapping[str, Any], flags: int) -> None:
        dom = self.compute.lookup(name)
        self._set(dom.blkioParameters, dom.setBlkioParameters, changes, flags)

    def numa(self, name: str, flags: int) -> dict[str, Any]:
        return dict(self.compute.lookup(name).numaParameters(one_scope(flags)))

    def set_numa(self, name: str, changes: Mapping[str, Any], flags: int) -> None:
        dom = self.compute.lookup(name)
        self._set(dom.numaParameters, dom.setNumaParameters, changes, flags)

    def perf(self, name: str, flags: int) -> dict[str, Any]:
        return dict(self.compute.lookup(name).perfEvents(one_scope(flags)))

    def set_perf(self, name: str, changes: Mapping[str, Any], flags: int) -> None:
        dom = self.compute.lookup(name)
        self._set(dom.perfEvents, dom.setPerfEvents, changes, flags)

    def interface(self, name: str, device: str, flags: int) -> dict[str, Any]:
        require(device, "device")
        return dict(self.compute.lookup(name).interfaceParameters(device, one_scope(flags)))

    def set_interface(self, name: str, device: str, changes: Mapping[str, Any],
                      flags: int) -> None:
        require(device, "device")
        dom = self.compute.lookup(name)
        self._set(functools.partial(dom.interfaceParameters, device),
                  functools.partial(dom.setInterfaceParameters, device), changes, flags)

    def set_memory_stats_period(self, name: str, seconds: int, flags: int) -> None:
        if seconds > _INT_MAX:
            raise invalid(f"period_seconds: {seconds} is out of range")
        dom = self.compute.lookup(name)
        inactive = flags & libvirt.VIR_DOMAIN_AFFECT_CONFIG or not dom.isActive()
        balloon = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive
                                            else 0)).find("devices/memballoon")
        if balloon is None or balloon.get("model") == "none":
            # libvirt's drivers say so with differing codes, the test driver's INTERNAL
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' has no memory balloon", "NO_BALLOON")
        dom.setMemoryStatsPeriod(seconds, flags)

    # -- pinning and IOThreads --------------------------------------------------

    def vcpu_pins(self, name: str, flags: int) -> list[list[int]]:
        return [cpu_list(cpumap)
                for cpumap in self.compute.lookup(name).vcpuPinInfo(one_scope(flags))]

    def pin_vcpu(self, name: str, vcpu: int, cpus: Sequence[int], flags: int) -> None:
        dom = self.compute.lookup(name)
        dom.pinVcpuFlags(vcpu, _cpumap(cpus, self._host_cpus()), flags)

    def emulator_pins(self, name: str, flags: int) -> list[int]:
        return cpu_list(self.compute.lookup(name).emulatorPinInfo(one_scope(flags)))

    def pin_emulator(self, name: str, cpus: Sequence[int], flags: int) -> None:
        dom = self.compute.lookup(name)
        dom.pinEmulator(_cpumap(cpus, self._host_cpus()), flags)

    def iothreads(self, name: str, flags: int) -> list[tuple[int, list[int]]]:
        threads = self.compute.lookup(name).ioThreadInfo(one_scope(flags))
        return sorted((int(thread), cpu_list(cpumap)) for thread, cpumap in threads)

    def add_iothread(self, name: str, thread: int, flags: int) -> None:
        if not thread:
            raise invalid("an IOThread id is 1 or more", "MISSING_FIELD")
        self.compute.lookup(name).addIOThread(thread, flags)

    def delete_iothread(self, name: str, thread: int, flags: int) -> None:
        self.compute.lookup(name).delIOThread(thread, flags)

    def pin_iothread(self, name: str, thread: int, cpus: Sequence[int], flags: int) -> None:
        dom = self.compute.lookup(name)
        dom.pinIOThread(thread, _cpumap(cpus, self._host_cpus()), flags)

    def set_iothread_parameters(self, name: str, thread: int, changes: Mapping[str, Any],
                                flags: int) -> None:
        checked = checked_changes(changes, IOTHREAD_PARAMETERS)
        call_in_range(self.compute.lookup(name).setIOThreadParams, thread, checked, flags)

    def set_vcpus_enabled(self, name: str, vcpus: Sequence[int], enable: bool,
                          flags: int) -> None:
        """virsh setvcpu: libvirt takes the vCPUs as a list such as ``0,2``."""
        if not vcpus:
            raise invalid("give at least one vCPU", "MISSING_FIELD")
        vcpu_map = ",".join(str(vcpu) for vcpu in sorted(set(vcpus)))
        self.compute.lookup(name).setVcpu(vcpu_map, int(enable), flags)

    def security_labels(self, name: str) -> list[tuple[str, bool]]:
        return [(str(label), bool(enforcing))
                for label, enforcing in self.compute.lookup(name).securityLabelList()]

    def _launch_secured(self, name: str) -> libvirt.virDomain:
        """Domain ``name`` when it runs with launch security (SEV): without, libvirt's
        drivers answer with differing codes, or a complaint about flags (the test
        driver's)."""
        dom = self.compute.lookup(name)
        if ET.fromstring(dom.XMLDesc(0)).find("launchSecurity") is None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' has no launch security (SEV)",
                               "NO_LAUNCH_SECURITY")
        return must_run(dom)

    def launch_security_info(self, name: str) -> dict[str, Any]:
        return dict(self._launch_secured(name).launchSecurityInfo(0))

    def set_launch_security_state(self, name: str, secret: str, header: str,
                                  address: int | None) -> None:
        require(secret, "secret")
        require(header, "secret_header")
        params: dict[str, Any] = {libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET: secret,
                                  libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET_HEADER: header}
        if address is not None:
            params[libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET_SET_ADDRESS] = address
        self._launch_secured(name).setLaunchSecurityState(params, 0)

    # -- metadata -----------------------------------------------------------------

    def metadata(self, name: str, kind: int, uri: str, flags: int) -> str:
        element = kind == libvirt.VIR_DOMAIN_METADATA_ELEMENT
        if element and not uri:
            raise invalid("an element's metadata is found by its uri", "MISSING_FIELD")
        dom = self.compute.lookup(name)
        return str(dom.metadata(kind, uri if element else None, one_scope(flags)))

    def set_metadata(self, name: str, kind: int, value: str, key: str, uri: str,
                     flags: int) -> None:
        """An element's XML passes the document checks first; removing one (no value)
        needs its uri only."""
        element = kind == libvirt.VIR_DOMAIN_METADATA_ELEMENT
        if element:
            if not uri or (value and not key):
                raise invalid("an element needs its uri, and key to be set",
                               "MISSING_FIELD")
            if value:
                documents.check(value, "value", fragment=True)
        elif kind == libvirt.VIR_DOMAIN_METADATA_TITLE and "\n" in value:
            raise invalid("a title is one line")
        dom = self.compute.lookup(name)
        dom.setMetadata(kind, value or None, key or None if element else None,
                        uri if element else None, flags)

    # -- CPUs and memory ----------------------------------------------------------

    def cpu_stats(self, name: str, start_cpu: int,
                  count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The total and ``count`` host CPUs' statistics from ``start_cpu``.
        libvirt-python reads every host CPU's; the range is cut here."""
        dom = self.compute.lookup(name)
        host_cpus = self._host_cpus()
        if count and start_cpu >= host_cpus:
            raise invalid(f"start_cpu: the host has CPUs 0 to {host_cpus - 1}")
        total = dict(dom.getCPUStats(True)[0])
        per_cpu = [dict(stats) for stats in dom.getCPUStats(False)] if count else []
        return total, per_cpu[start_cpu:start_cpu + count]

    def max_memory(self, name: str) -> int:
        return int(self.compute.lookup(name).maxMemory())

    def vcpus(self, name: str) -> tuple[list[tuple[int, int, int, int, list[int]]], int]:
        """Each vCPU (number, state, CPU time, host CPU, affinity) and the maximum."""
        dom = self.compute.lookup(name)
        infos, cpumaps = dom.vcpus()
        return ([(number, state, time, cpu, cpu_list(cpumap))
                 for (number, state, time, cpu), cpumap in zip(infos, cpumaps, strict=True)],
                int(dom.maxVcpus()))
