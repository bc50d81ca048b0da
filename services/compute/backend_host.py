"""The compute service's host calls: the node's CPUs, memory, pages and power, and what
libvirt works out without a domain (CPU baseline and comparison, native configuration).

Input is checked before libvirt sees it. A CPU description passes
services/common/documents.py's bounds and must be a ``<cpu>`` (libvirt's CPU parser
then reads it; the parse sandbox has no CPU kind, so it cannot go there first); a
domain to convert goes the way every domain document goes (``ComputeBackend._submit``:
the checks, then the sandbox). Cell numbers and page sizes are checked against the
host, because libvirt reports a cell out of range as an internal error.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import libvirt

from services.common import documents
from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend

#: libvirt's remote protocol bounds (REMOTE_NODE_MAX_CELLS, REMOTE_CPU_BASELINE_MAX)
MAX_CELLS = 1024
MAX_BASELINE_CPUS = 256
#: the shortest sleep libvirt allows (virnodesuspend.c's MIN_TIME_REQ_FOR_SUSPEND)
MIN_SUSPEND_SECONDS = 60
#: a native configuration is bounded as a document is: libvirt's longest remote string
MAX_NATIVE_BYTES = documents.DEFAULT_LIMITS.max_bytes
_INT_MAX = 2**31 - 1


def _cpu_documents(xml_cpus: Sequence[str]) -> list[str]:
    """CPU descriptions fit for libvirt's CPU parser."""
    if not 1 <= len(xml_cpus) <= MAX_BASELINE_CPUS:
        raise invalid(f"give 1 to {MAX_BASELINE_CPUS} CPU descriptions, not {len(xml_cpus)}",
                       "INVALID_CPU_COUNT")
    for index, xml in enumerate(xml_cpus):
        documents.check(xml, f"xml_cpus[{index}]", root="cpu")
    return list(xml_cpus)


def _native_config(config: str) -> str:
    """A native configuration (a QEMU command line) bounded like a document (a NUL in
    it, as in any string field, the skeleton refuses before: services/common/requests.py)."""
    require(config, "config")
    if len(config.encode("utf-8", "surrogatepass")) > MAX_NATIVE_BYTES:
        raise invalid(f"config: more than the {MAX_NATIVE_BYTES} bytes libvirt accepts",
                       "DOCUMENT_TOO_LARGE")
    return config


def _number(value: int, field: str) -> int:
    """A number libvirt takes as a C int."""
    if value > _INT_MAX:
        raise invalid(f"{field}: {value} is out of range", "VIR_ERR_INVALID_ARG")
    return value


@dataclasses.dataclass(frozen=True)
class Hypervisor:
    """The hypervisor a *HypervisorCPU call asks about; empty fields are libvirt's
    defaults."""

    emulator: str = ""
    arch: str = ""
    machine: str = ""
    virt_type: str = ""

    def arguments(self) -> tuple[str | None, ...]:
        return (self.emulator or None, self.arch or None, self.machine or None,
                self.virt_type or None)


def _cpu_call(hypervisor: Hypervisor | None, host_call: Callable[..., Any],
              hypervisor_call: Callable[..., Any], *args: Any) -> Any:
    """The host's CPU call, or its hypervisor form (the hypervisor's arguments first);
    libvirt's CPU parser refusing a caller's document is INVALID_ARGUMENT."""
    with documents.submitted():
        if hypervisor is None:
            return host_call(*args)
        return hypervisor_call(*hypervisor.arguments(), *args)


class HostBackend:
    """Host calls on the compute service's connection. Suspending the host is refused
    unless ``allow_suspend``: see ``suspend``."""

    def __init__(self, compute: ComputeBackend, allow_suspend: bool) -> None:
        self.compute = compute
        self.allow_suspend = allow_suspend

    @property
    def conn(self) -> libvirt.virConnect:
        return self.compute.conn

    # -- CPUs -----------------------------------------------------------------

    def baseline_cpu(self, xml_cpus: Sequence[str], expand_features: bool, migratable: bool,
                     hypervisor: Hypervisor | None = None) -> str:
        """The baseline of the host CPUs, for the hypervisor when one is given."""
        cpus = _cpu_documents(xml_cpus)
        flags = ((libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES if expand_features else 0)
                 | (libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE if migratable else 0))
        conn = self.conn
        return str(_cpu_call(hypervisor, conn.baselineCPU, conn.baselineHypervisorCPU, cpus,
                             flags))

    def compare_cpu(self, xml: str, fail_incompatible: bool, validate: bool,
                    hypervisor: Hypervisor | None = None) -> int:
        """libvirt's virCPUCompareResult."""
        documents.check(xml, root="cpu")
        flags = ((libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE if fail_incompatible else 0)
                 | (libvirt.VIR_CONNECT_COMPARE_CPU_VALIDATE_XML if validate else 0))
        conn = self.conn
        return int(_cpu_call(hypervisor, conn.compareCPU, conn.compareHypervisorCPU, xml, flags))

    def cpu_models(self, arch: str) -> list[str]:
        return list(self.conn.getCPUModelNames(require(arch, "arch"), 0))

    def max_vcpus(self, virt_type: str) -> int:
        return int(self.conn.getMaxVcpus(virt_type or None))

    def cpu_stats(self, cpu: int | None) -> dict[str, int]:
        """Counters of one CPU, or of all of them when ``cpu`` is None."""
        number = libvirt.VIR_NODE_CPU_STATS_ALL_CPUS if cpu is None else _number(cpu, "cpu")
        return dict(self.conn.getCPUStats(number, 0))

    def cpu_map(self) -> tuple[int, list[int]]:
        """How many CPUs the host has, and the online ones' numbers."""
        count, online, _ = self.conn.getCPUMap(0)
        return count, [number for number, up in enumerate(online) if up]

    # -- identity -------------------------------------------------------------

    def sysinfo(self) -> str:
        return str(self.conn.getSysinfo(0))

    def hostname(self) -> str:
        return str(self.conn.getHostname())

    def security_model(self) -> tuple[str, str]:
        """The model and its domain of interpretation."""
        model, doi = self.conn.getSecurityModel()
        return model, doi

    def sev_info(self) -> dict[str, Any]:
        return dict(self.conn.getSEVInfo(0))

    # -- memory ---------------------------------------------------------------

    def memory_stats(self, cell: int | None) -> dict[str, int]:
        """Counters (KiB) of one NUMA cell, or of the host when ``cell`` is None."""
        number = (libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS if cell is None
                  else _number(cell, "cell"))
        return dict(self.conn.getMemoryStats(number, 0))

    def free_memory(self) -> int:
        return int(self.conn.getFreeMemory())

    def cells_free_memory(self, start: int, max_cells: int) -> list[tuple[int, int]]:
        """(cell, free bytes) from ``start``, at most ``max_cells`` of them (0: all)."""
        free = self._all_cells_free()
        self._check_cell(start, len(free))
        end = start + max_cells if max_cells else len(free)
        return list(enumerate(free))[start:end]

    def free_pages(self, sizes_kib: Sequence[int], start: int,
                   count: int) -> dict[int, dict[int, int]]:
        """cell -> page size (KiB) -> free pages."""
        start, count = self._cells(start, count)
        sizes = self._page_sizes(sizes_kib)
        return dict(self.conn.getFreePages(sizes, start, count, 0))

    def alloc_pages(self, pages: dict[int, int], start: int, count: int, flags: int) -> int:
        """Cells changed; ``flags``: VIR_NODE_ALLOC_PAGES_ADD or _SET."""
        if not pages:
            raise invalid("pages: name at least one page size and count", "MISSING_FIELD")
        self._page_sizes(list(pages))
        start, count = self._cells(start, count)
        return int(self.conn.allocPages(pages, start, count, flags))

    def _page_sizes(self, sizes_kib: Sequence[int]) -> list[int]:
        """``sizes_kib`` once the host offers each; when empty, every size it offers (its
        capabilities list them)."""
        host_cpu = ET.fromstring(self.compute.capabilities().xml).find("host/cpu")
        pages = host_cpu.findall("pages") if host_cpu is not None else []
        offered = sorted(int(page.get("size", "0")) for page in pages)
        unknown = sorted(set(sizes_kib) - set(offered))
        if unknown:
            raise invalid(f"page size(s) {unknown} KiB: the host offers "
                           f"{', '.join(map(str, offered))} KiB", "VIR_ERR_INVALID_ARG")
        return list(sizes_kib) or offered

    def _all_cells_free(self) -> list[int]:
        return list(self.conn.getCellsFreeMemory(0, MAX_CELLS))

    def _check_cell(self, cell: int, cells: int) -> None:
        if cell >= cells:
            raise invalid(f"the host has {cells} NUMA cell(s), numbered from 0; there is no "
                           f"cell {cell}", "VIR_ERR_INVALID_ARG")

    def _cells(self, start: int, count: int) -> tuple[int, int]:
        """The cells from ``start``, ``count`` of them (0: to the last), as libvirt takes
        them."""
        cells = len(self._all_cells_free())
        self._check_cell(start, cells)
        count = count or cells - start
        self._check_cell(start + count - 1, cells)
        return start, count

    def memory_parameters(self) -> dict[str, int]:
        return dict(self.conn.getMemoryParameters(0))

    def set_memory_parameters(self, changes: dict[str, int]) -> dict[str, int]:
        """Change the KSM settings in ``changes``; all of them afterwards."""
        if not changes:
            raise invalid("set at least one parameter", "MISSING_FIELD")
        self.conn.setMemoryParameters(changes, 0)
        return self.memory_parameters()

    # -- power ----------------------------------------------------------------

    def suspend(self, target: int | None, duration_seconds: int) -> None:
        """Suspend the host to ``target`` (virNodeSuspendTarget; None: not given).

        Refused unless the service allows it: the whole host sleeps, every guest and
        this service with it, and only the real-time clock wakes it; one call through
        a token that may do this would take a node's guests down."""
        if not self.allow_suspend:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "suspending the host is disabled on this compute service: it would stop "
                "every guest and the service itself until the timer wakes the host; set "
                "allow_node_suspend = true in [services.compute] to allow it",
                "NODE_SUSPEND_DISABLED")
        if target is None:
            raise invalid("target: say mem, disk or hybrid", "MISSING_FIELD")
        if not MIN_SUSPEND_SECONDS <= duration_seconds <= _INT_MAX:
            raise invalid(f"duration_seconds: at least {MIN_SUSPEND_SECONDS}",
                           "VIR_ERR_INVALID_ARG")
        self.conn.suspendForDuration(target, duration_seconds, 0)

    # -- native configuration -------------------------------------------------

    def native_to_xml(self, native_format: str, config: str) -> str:
        config = _native_config(config)
        return str(self.conn.domainXMLFromNative(native_format, config, 0))

    def xml_to_native(self, native_format: str, xml: str) -> str:
        conn = self.conn
        return str(self.compute._submit(
            "domain", lambda document: conn.domainXMLToNative(native_format, document, 0),
            xml, root="domain"))
