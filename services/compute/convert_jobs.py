"""libvirt values <-> the compute protobuf messages of saving, dumping and jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import libvirt

from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.shared import ServiceError
from virtmesh.compute.v1 import compute_service_pb2 as pb

#: ResumeState -> virDomainSaveRestoreFlags; unset is the image's own state
RESUME_FLAGS: dict[int, int] = {
    pb.RESUME_STATE_UNSPECIFIED: 0,
    **proto_to_libvirt(pb.ResumeState, "RESUME_STATE_", "VIR_DOMAIN_SAVE_"),  # type: ignore[arg-type]
}
#: CoreDumpFormat -> virDomainCoreDumpFormat; unset is raw
DUMP_FORMATS: dict[int, int] = {
    pb.CORE_DUMP_FORMAT_UNSPECIFIED: libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
    **proto_to_libvirt(pb.CoreDumpFormat, "CORE_DUMP_FORMAT_",  # type: ignore[arg-type]
                       "VIR_DOMAIN_CORE_DUMP_FORMAT_"),
}
#: virDomainJobType -> JobType
JOB_TYPES = libvirt_to_proto(pb.JobType, "JOB_TYPE_", "VIR_DOMAIN_JOB_")
#: virDomainJobOperation -> JobOperation (UNKNOWN is UNSPECIFIED)
JOB_OPERATIONS = libvirt_to_proto(pb.JobOperation, "JOB_OPERATION_", "VIR_DOMAIN_JOB_OPERATION_")

#: virDomainGetJobStats' typed parameters -> DomainJob fields
_JOB_FIELDS = {
    libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED: "time_elapsed_ms",
    libvirt.VIR_DOMAIN_JOB_TIME_REMAINING: "time_remaining_ms",
    libvirt.VIR_DOMAIN_JOB_DATA_TOTAL: "data_total_bytes",
    libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED: "data_processed_bytes",
    libvirt.VIR_DOMAIN_JOB_DATA_REMAINING: "data_remaining_bytes",
    libvirt.VIR_DOMAIN_JOB_MEMORY_TOTAL: "memory_total_bytes",
    libvirt.VIR_DOMAIN_JOB_MEMORY_PROCESSED: "memory_processed_bytes",
    libvirt.VIR_DOMAIN_JOB_MEMORY_REMAINING: "memory_remaining_bytes",
    libvirt.VIR_DOMAIN_JOB_MEMORY_BPS: "memory_bps",
    libvirt.VIR_DOMAIN_JOB_DISK_TOTAL: "disk_total_bytes",
    libvirt.VIR_DOMAIN_JOB_DISK_PROCESSED: "disk_processed_bytes",
    libvirt.VIR_DOMAIN_JOB_DISK_REMAINING: "disk_remaining_bytes",
    libvirt.VIR_DOMAIN_JOB_DISK_BPS: "disk_bps",
    libvirt.VIR_DOMAIN_JOB_DOWNTIME: "downtime_ms",
    libvirt.VIR_DOMAIN_JOB_SETUP_TIME: "setup_time_ms",
}


def _flag(table: Mapping[int, int], value: int, field: str) -> int:
    if value not in table:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown {field} {value}",
                           "INVALID_ENUM")
    return table[value]


def resume_flags(state: int) -> int:
    return _flag(RESUME_FLAGS, state, "resume_state")


def dump_format(value: int) -> int:
    return _flag(DUMP_FORMATS, value, "format")


def domain_job(stats: Mapping[str, Any]) -> pb.DomainJob:
    """virDomainGetJobStats' parameters as typed fields, with every one raw too."""
    job = pb.DomainJob(
        type=JOB_TYPES.get(int(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)),
                           pb.JOB_TYPE_UNSPECIFIED),
        operation=JOB_OPERATIONS.get(int(stats.get(libvirt.VIR_DOMAIN_JOB_OPERATION, 0)),
                                     pb.JOB_OPERATION_UNSPECIFIED),
        error_message=str(stats.get(libvirt.VIR_DOMAIN_JOB_ERRMSG, "")))
    for key, value in stats.items():
        job.raw[key] = str(value)
        if key in _JOB_FIELDS:
            setattr(job, _JOB_FIELDS[key], int(value))
    total, processed = ((job.data_total_bytes, job.data_processed_bytes)
                        if job.data_total_bytes else
                        (job.memory_total_bytes, job.memory_processed_bytes))
    if total:
        job.percent = min(100.0, 100.0 * processed / total)
    return job
