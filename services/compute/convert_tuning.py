"""libvirt values <-> the compute protobuf messages of tuning a domain."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import libvirt

from services.common import typed_params
from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.shared import ServiceError
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.types.v1.typed_params_pb2 import TypedParameter

#: MetadataType -> virDomainMetadataType
METADATA_TYPES = proto_to_libvirt(pb.MetadataType, "METADATA_TYPE_", "VIR_DOMAIN_METADATA_")
#: virVcpuState -> VcpuState
VCPU_STATES = libvirt_to_proto(pb.VcpuState, "VCPU_STATE_", "VIR_VCPU_")

#: the typed parameters that are not libvirt's ULLONG, by name (libvirt's
#: VIR_DOMAIN_SCHEDULER_*, VIR_DOMAIN_BLKIO_*, VIR_DOMAIN_NUMA_*,
#: VIR_DOMAIN_LAUNCH_SECURITY_* documentation)
WIDTHS: dict[str, str] = {
    libvirt.VIR_DOMAIN_SCHEDULER_WEIGHT: typed_params.UINT,
    libvirt.VIR_DOMAIN_SCHEDULER_CAP: typed_params.UINT,
    libvirt.VIR_DOMAIN_SCHEDULER_LIMIT: typed_params.LONG,
    libvirt.VIR_DOMAIN_SCHEDULER_RESERVATION: typed_params.LONG,
    libvirt.VIR_DOMAIN_SCHEDULER_SHARES: typed_params.INT,
    libvirt.VIR_DOMAIN_SCHEDULER_VCPU_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_SCHEDULER_EMULATOR_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_SCHEDULER_GLOBAL_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_SCHEDULER_IOTHREAD_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_BLKIO_WEIGHT: typed_params.UINT,
    libvirt.VIR_DOMAIN_NUMA_MODE: typed_params.INT,
    libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_API_MAJOR: typed_params.UINT,
    libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_API_MINOR: typed_params.UINT,
    libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_BUILD_ID: typed_params.UINT,
    libvirt.VIR_DOMAIN_LAUNCH_SECURITY_SEV_POLICY: typed_params.UINT,
}


def scope_flags(scope: pb.Scope) -> int:
    """libvirt's AFFECT_* flags; neither set is AFFECT_CURRENT (0)."""
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if scope.live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if scope.config else 0))


def parameters(values: Mapping[str, Any]) -> list[TypedParameter]:
    return typed_params.to_messages(values, WIDTHS)


def changes(messages: Iterable[TypedParameter]) -> dict[str, Any]:
    """The parameters a Set request changes; a name twice, or without a value, is refused
    (the backend checks names and types against the domain's)."""
    seen: set[str] = set()
    for message in messages:
        if message.name in seen:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"parameter {message.name!r} is given twice", "DUPLICATE_PARAMETER")
        if message.WhichOneof("value") is None:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"parameter {message.name!r} has no value", "MISSING_FIELD")
        seen.add(message.name)
    return typed_params.from_messages(messages)


def metadata_type(value: int) -> int:
    if value not in METADATA_TYPES:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"type: say which metadata ({value} is none)", "INVALID_ENUM")
    return METADATA_TYPES[value]  # type: ignore[index]


def affinity(cpus: Sequence[int]) -> pb.CpuAffinity:
    return pb.CpuAffinity(cpus=cpus)


def cpu_stats(total: Mapping[str, Any], per_cpu: Sequence[Mapping[str, Any]],
              start_cpu: int) -> pb.GetDomainCpuStatsResponse:
    return pb.GetDomainCpuStatsResponse(
        total=pb.DomainCpuStats(parameters=parameters(total)),
        cpus=[pb.DomainCpuStats(cpu=start_cpu + index, parameters=parameters(stats))
              for index, stats in enumerate(per_cpu)])


def vcpus(infos: Sequence[tuple[int, int, int, int, list[int]]],
          max_vcpus: int) -> pb.GetDomainVcpusResponse:
    return pb.GetDomainVcpusResponse(max_vcpus=max_vcpus, vcpus=[
        pb.VcpuInfo(number=number, state=VCPU_STATES.get(state, pb.VCPU_STATE_UNSPECIFIED),
                    cpu_time_ns=time, cpu=cpu, affinity=affinity(cpus))
        for number, state, time, cpu, cpus in infos])
