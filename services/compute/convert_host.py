"""libvirt's host values <-> the host messages of virtmesh.compute.v1.

The typed fields are paired with libvirt's parameter names by libvirt's own constants
(VIR_NODE_CPU_STATS_*, VIR_NODE_MEMORY_SHARED_*, VIR_NODE_SEV_*), so a counter libvirt
renames cannot silently fill nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import libvirt

from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.shared import ServiceError
from virtmesh.compute.v1 import compute_service_pb2 as pb


def _parameters(prefix: str) -> dict[str, str]:
    """libvirt's parameter names of constants ``prefix*`` -> their suffix, lower case."""
    return {value: name.removeprefix(prefix).lower() for name, value in vars(libvirt).items()
            if name.startswith(prefix) and isinstance(value, str)}


#: virCPUCompareResult -> CpuCompareResult
COMPARE_RESULTS = libvirt_to_proto(pb.CpuCompareResult, "CPU_COMPARE_RESULT_",
                                   "VIR_CPU_COMPARE_")
#: NodeSuspendTarget -> virNodeSuspendTarget
SUSPEND_TARGETS = proto_to_libvirt(pb.NodeSuspendTarget, "NODE_SUSPEND_TARGET_",
                                   "VIR_NODE_SUSPEND_TARGET_")
#: PageAllocationMode -> virNodeAllocPagesFlags
PAGE_ALLOCATION_FLAGS = proto_to_libvirt(pb.PageAllocationMode, "PAGE_ALLOCATION_MODE_",
                                         "VIR_NODE_ALLOC_PAGES_")
#: NativeConfigFormat -> libvirt's format name; unset is the QEMU driver's only one
NATIVE_FORMATS: dict[int, str] = {
    pb.NATIVE_CONFIG_FORMAT_UNSPECIFIED: "qemu-argv",
    pb.NATIVE_CONFIG_FORMAT_QEMU_ARGV: "qemu-argv",
}
#: libvirt's CPU counter -> GetNodeCpuStatsResponse field (times in ns)
CPU_STAT_FIELDS = {name: "utilization" if name == "utilization" else f"{suffix}_ns"
                   for name, suffix in _parameters("VIR_NODE_CPU_STATS_").items()}
#: libvirt's memory counter -> GetNodeMemoryStatsResponse field (KiB)
MEMORY_STAT_FIELDS = {name: f"{suffix}_kib"
                      for name, suffix in _parameters("VIR_NODE_MEMORY_STATS_").items()}
#: libvirt's KSM parameter -> NodeMemoryParameters field (the same names)
MEMORY_PARAMETERS = {name: name for name in _parameters("VIR_NODE_MEMORY_SHARED_")}
#: libvirt's SEV parameter -> GetNodeSevInfoResponse field
SEV_FIELDS = {name: name.replace("-", "_") for name in _parameters("VIR_NODE_SEV_")}


def compare_result(result: int) -> pb.CpuCompareResult.ValueType:
    return COMPARE_RESULTS.get(result, pb.CPU_COMPARE_RESULT_UNSPECIFIED)


def page_allocation_flags(mode: int) -> int:
    flags = PAGE_ALLOCATION_FLAGS.get(mode)  # type: ignore[call-overload]
    if flags is None:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "mode: say whether to add the pages or set the pool's size",
                           "MISSING_FIELD")
    return int(flags)


def native_format(value: int) -> str:
    found = NATIVE_FORMATS.get(value)
    if found is None:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown format {value}",
                           "INVALID_FORMAT")
    return found


def _typed(fields: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    return {fields[name]: value for name, value in values.items() if name in fields}


def cpu_stats(stats: Mapping[str, int]) -> pb.GetNodeCpuStatsResponse:
    return pb.GetNodeCpuStatsResponse(raw=stats, **_typed(CPU_STAT_FIELDS, stats))


def memory_stats(stats: Mapping[str, int]) -> pb.GetNodeMemoryStatsResponse:
    return pb.GetNodeMemoryStatsResponse(raw=stats, **_typed(MEMORY_STAT_FIELDS, stats))


def memory_parameters(values: Mapping[str, int]) -> pb.NodeMemoryParameters:
    typed = _typed(MEMORY_PARAMETERS, values)
    if "shm_merge_across_nodes" in typed:
        typed["shm_merge_across_nodes"] = bool(typed["shm_merge_across_nodes"])
    return pb.NodeMemoryParameters(**typed)


def memory_parameter_changes(request: pb.SetNodeMemoryParametersRequest) -> dict[str, int]:
    """The parameters the request sets, as libvirt names and types them (merging
    across nodes is an unsigned int, 0 or 1)."""
    return {field.name: int(value) for field, value in request.ListFields()}


def sev_info(values: Mapping[str, Any]) -> pb.GetNodeSevInfoResponse:
    return pb.GetNodeSevInfoResponse(**_typed(SEV_FIELDS, values))


def free_pages(cells: Mapping[int, Mapping[int, int]]) -> pb.GetNodeFreePagesResponse:
    return pb.GetNodeFreePagesResponse(cells=[
        pb.CellPages(cell=cell, pages=[pb.PageCount(page_size_kib=size, count=count)
                                       for size, count in sorted(pages.items())])
        for cell, pages in sorted(cells.items())])
