"""libvirt values <-> the compute protobuf messages of disks, interfaces and block jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import libvirt

from services.common import typed_params
from services.compute.convert import BLOCK_JOB_TYPES
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.types.v1.typed_params_pb2 import TypedParameter

#: virDomainBlockStatsFlags' parameters are LLONG each (libvirt's
#: VIR_DOMAIN_BLOCK_STATS_* documentation); the I/O tunables are ULLONG but the group
#: name, a string
BLOCK_STATS_WIDTHS = {getattr(libvirt, constant): typed_params.LONG for constant in (
    "VIR_DOMAIN_BLOCK_STATS_READ_REQ", "VIR_DOMAIN_BLOCK_STATS_READ_BYTES",
    "VIR_DOMAIN_BLOCK_STATS_READ_TOTAL_TIMES", "VIR_DOMAIN_BLOCK_STATS_WRITE_REQ",
    "VIR_DOMAIN_BLOCK_STATS_WRITE_BYTES", "VIR_DOMAIN_BLOCK_STATS_WRITE_TOTAL_TIMES",
    "VIR_DOMAIN_BLOCK_STATS_FLUSH_REQ", "VIR_DOMAIN_BLOCK_STATS_FLUSH_TOTAL_TIMES",
    "VIR_DOMAIN_BLOCK_STATS_ERRS")}

#: libvirt-python's names of virDomainMemoryStats' tags -> MemoryStatTag
#: (libvirt-override.c names them so, VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON "actual")
MEMORY_STAT_TAGS: dict[str, pb.MemoryStatTag.ValueType] = {
    "swap_in": pb.MEMORY_STAT_TAG_SWAP_IN,
    "swap_out": pb.MEMORY_STAT_TAG_SWAP_OUT,
    "major_fault": pb.MEMORY_STAT_TAG_MAJOR_FAULT,
    "minor_fault": pb.MEMORY_STAT_TAG_MINOR_FAULT,
    "unused": pb.MEMORY_STAT_TAG_UNUSED,
    "available": pb.MEMORY_STAT_TAG_AVAILABLE,
    "actual": pb.MEMORY_STAT_TAG_ACTUAL_BALLOON,
    "rss": pb.MEMORY_STAT_TAG_RSS,
    "usable": pb.MEMORY_STAT_TAG_USABLE,
    "last_update": pb.MEMORY_STAT_TAG_LAST_UPDATE,
    "disk_caches": pb.MEMORY_STAT_TAG_DISK_CACHES,
    "hugetlb_pgalloc": pb.MEMORY_STAT_TAG_HUGETLB_PGALLOC,
    "hugetlb_pgfail": pb.MEMORY_STAT_TAG_HUGETLB_PGFAIL,
}


def block_stats(values: Mapping[str, Any]) -> list[TypedParameter]:
    return typed_params.to_messages(values, BLOCK_STATS_WIDTHS)


def interface_stats(values: Sequence[int]) -> pb.GetDomainInterfaceStatsResponse:
    (rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, tx_packets, tx_errs,
     tx_drop) = values
    return pb.GetDomainInterfaceStatsResponse(
        rx_bytes=rx_bytes, rx_packets=rx_packets, rx_errs=rx_errs, rx_drop=rx_drop,
        tx_bytes=tx_bytes, tx_packets=tx_packets, tx_errs=tx_errs, tx_drop=tx_drop)


def memory_stats(values: Mapping[str, int]) -> list[pb.MemoryStat]:
    """In libvirt's tag order; a tag this code does not know keeps its name."""
    order = list(MEMORY_STAT_TAGS)
    return [pb.MemoryStat(tag=MEMORY_STAT_TAGS.get(key, pb.MEMORY_STAT_TAG_UNSPECIFIED),
                          value=value, name=key)
            for key, value in sorted(values.items(),
                                     key=lambda item: (order.index(item[0])
                                                       if item[0] in order else len(order),
                                                       item[0]))]


def copy_flags(request: pb.CopyDomainBlockRequest) -> int:
    return ((libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW if request.shallow else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT if request.reuse_external else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB if request.transient_job else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES
               if request.synchronous_writes else 0))


def commit_flags(request: pb.CommitDomainBlockRequest) -> int:
    return ((libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if request.active else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW if request.shallow else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_COMMIT_DELETE if request.delete else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE if request.relative else 0))


def rebase_flags(request: pb.RebaseDomainBlockRequest) -> int:
    return ((libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW if request.shallow else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT if request.reuse_external else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY if request.copy else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY_RAW if request.copy_raw else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_REBASE_RELATIVE if request.relative else 0))


def abort_flags(request: pb.AbortDomainBlockJobRequest) -> int:
    return ((libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC if request.asynchronous else 0)
            | (libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT if request.pivot else 0))


def block_job(info: Mapping[str, int]) -> pb.GetDomainBlockJobInfoResponse:
    """libvirt-python's dict of virDomainBlockJobInfo; empty when the disk has no job."""
    if not info:
        return pb.GetDomainBlockJobInfoResponse(active=False)
    return pb.GetDomainBlockJobInfoResponse(
        active=True, type=BLOCK_JOB_TYPES.get(info.get("type", 0), pb.BLOCK_JOB_TYPE_UNSPECIFIED),
        cur=info.get("cur", 0), end=info.get("end", 0),
        bandwidth_bytes=info.get("bandwidth", 0))
