"""The tuning RPCs of ComputeService (scheduler, memory, block I/O, NUMA and perf
tunables, CPU pinning, IOThreads, metadata, CPU statistics, maximum memory), a mixin
of ComputeServicer."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.compute import convert_tuning as conv
from services.compute.backend import ComputeBackend
from services.compute.backend_tuning import TuningBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class TuningServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the tuning backend."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.tuning = TuningBackend(backend)

    # -- typed-parameter tunables ----------------------------------------------

    def GetDomainSchedulerParameters(self, request: pb.GetDomainSchedulerParametersRequest,
                                     context: Ctx) -> pb.GetDomainSchedulerParametersResponse:
        kind, values = self.tuning.scheduler(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainSchedulerParametersResponse(scheduler=kind,
                                                       parameters=conv.parameters(values))

    def SetDomainSchedulerParameters(self, request: pb.SetDomainSchedulerParametersRequest,
                                     context: Ctx) -> pb.SetDomainSchedulerParametersResponse:
        self.tuning.set_scheduler(request.name, conv.changes(request.parameters),
                                  conv.scope_flags(request.scope))
        return pb.SetDomainSchedulerParametersResponse()

    def GetDomainMemoryParameters(self, request: pb.GetDomainMemoryParametersRequest,
                                  context: Ctx) -> pb.GetDomainMemoryParametersResponse:
        values = self.tuning.memory(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainMemoryParametersResponse(parameters=conv.parameters(values))

    def SetDomainMemoryParameters(self, request: pb.SetDomainMemoryParametersRequest,
                                  context: Ctx) -> pb.SetDomainMemoryParametersResponse:
        self.tuning.set_memory(request.name, conv.changes(request.parameters),
                               conv.scope_flags(request.scope))
        return pb.SetDomainMemoryParametersResponse()

    def GetDomainBlkioParameters(self, request: pb.GetDomainBlkioParametersRequest,
                                 context: Ctx) -> pb.GetDomainBlkioParametersResponse:
        values = self.tuning.blkio(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainBlkioParametersResponse(parameters=conv.parameters(values))

    def SetDomainBlkioParameters(self, request: pb.SetDomainBlkioParametersRequest,
                                 context: Ctx) -> pb.SetDomainBlkioParametersResponse:
        self.tuning.set_blkio(request.name, conv.changes(request.parameters),
                              conv.scope_flags(request.scope))
        return pb.SetDomainBlkioParametersResponse()

    def GetDomainNumaParameters(self, request: pb.GetDomainNumaParametersRequest,
                                context: Ctx) -> pb.GetDomainNumaParametersResponse:
        values = self.tuning.numa(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainNumaParametersResponse(parameters=conv.parameters(values))

    def SetDomainNumaParameters(self, request: pb.SetDomainNumaParametersRequest,
                                context: Ctx) -> pb.SetDomainNumaParametersResponse:
        self.tuning.set_numa(request.name, conv.changes(request.parameters),
                             conv.scope_flags(request.scope))
        return pb.SetDomainNumaParametersResponse()

    def GetDomainPerfEvents(self, request: pb.GetDomainPerfEventsRequest,
                            context: Ctx) -> pb.GetDomainPerfEventsResponse:
        values = self.tuning.perf(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainPerfEventsResponse(parameters=conv.parameters(values))

    def SetDomainPerfEvents(self, request: pb.SetDomainPerfEventsRequest,
                            context: Ctx) -> pb.SetDomainPerfEventsResponse:
        self.tuning.set_perf(request.name, conv.changes(request.parameters),
                             conv.scope_flags(request.scope))
        return pb.SetDomainPerfEventsResponse()

    def GetDomainInterfaceParameters(self, request: pb.GetDomainInterfaceParametersRequest,
                                     context: Ctx) -> pb.GetDomainInterfaceParametersResponse:
        values = self.tuning.interface(request.name, request.device,
                                       conv.scope_flags(request.scope))
        return pb.GetDomainInterfaceParametersResponse(parameters=conv.parameters(values))

    def SetDomainInterfaceParameters(self, request: pb.SetDomainInterfaceParametersRequest,
                                     context: Ctx) -> pb.SetDomainInterfaceParametersResponse:
        self.tuning.set_interface(request.name, request.device,
                                  conv.changes(request.parameters),
                                  conv.scope_flags(request.scope))
        return pb.SetDomainInterfaceParametersResponse()

    def SetDomainMemoryStatsPeriod(self, request: pb.SetDomainMemoryStatsPeriodRequest,
                                   context: Ctx) -> pb.SetDomainMemoryStatsPeriodResponse:
        self.tuning.set_memory_stats_period(request.name, request.period_seconds,
                                            conv.scope_flags(request.scope))
        return pb.SetDomainMemoryStatsPeriodResponse()

    # -- pinning and IOThreads --------------------------------------------------

    def GetDomainVcpuPinInfo(self, request: pb.GetDomainVcpuPinInfoRequest,
                             context: Ctx) -> pb.GetDomainVcpuPinInfoResponse:
        pins = self.tuning.vcpu_pins(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainVcpuPinInfoResponse(vcpus=[conv.affinity(cpus) for cpus in pins])

    def PinDomainVcpu(self, request: pb.PinDomainVcpuRequest,
                      context: Ctx) -> pb.PinDomainVcpuResponse:
        self.tuning.pin_vcpu(request.name, request.vcpu, request.cpus,
                             conv.scope_flags(request.scope))
        return pb.PinDomainVcpuResponse()

    def GetDomainEmulatorPinInfo(self, request: pb.GetDomainEmulatorPinInfoRequest,
                                 context: Ctx) -> pb.GetDomainEmulatorPinInfoResponse:
        cpus = self.tuning.emulator_pins(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainEmulatorPinInfoResponse(affinity=conv.affinity(cpus))

    def PinDomainEmulator(self, request: pb.PinDomainEmulatorRequest,
                          context: Ctx) -> pb.PinDomainEmulatorResponse:
        self.tuning.pin_emulator(request.name, request.cpus, conv.scope_flags(request.scope))
        return pb.PinDomainEmulatorResponse()

    def GetDomainIOThreadInfo(self, request: pb.GetDomainIOThreadInfoRequest,
                              context: Ctx) -> pb.GetDomainIOThreadInfoResponse:
        threads = self.tuning.iothreads(request.name, conv.scope_flags(request.scope))
        return pb.GetDomainIOThreadInfoResponse(iothreads=[
            pb.IOThread(id=thread, affinity=conv.affinity(cpus)) for thread, cpus in threads])

    def AddDomainIOThread(self, request: pb.AddDomainIOThreadRequest,
                          context: Ctx) -> pb.AddDomainIOThreadResponse:
        self.tuning.add_iothread(request.name, request.id, conv.scope_flags(request.scope))
        return pb.AddDomainIOThreadResponse()

    def DeleteDomainIOThread(self, request: pb.DeleteDomainIOThreadRequest,
                             context: Ctx) -> pb.DeleteDomainIOThreadResponse:
        self.tuning.delete_iothread(request.name, request.id, conv.scope_flags(request.scope))
        return pb.DeleteDomainIOThreadResponse()

    def PinDomainIOThread(self, request: pb.PinDomainIOThreadRequest,
                          context: Ctx) -> pb.PinDomainIOThreadResponse:
        self.tuning.pin_iothread(request.name, request.id, request.cpus,
                                 conv.scope_flags(request.scope))
        return pb.PinDomainIOThreadResponse()

    def SetDomainIOThreadParameters(self, request: pb.SetDomainIOThreadParametersRequest,
                                    context: Ctx) -> pb.SetDomainIOThreadParametersResponse:
        self.tuning.set_iothread_parameters(request.name, request.id,
                                            conv.changes(request.parameters),
                                            conv.scope_flags(request.scope))
        return pb.SetDomainIOThreadParametersResponse()

    def SetDomainVcpu(self, request: pb.SetDomainVcpuRequest,
                      context: Ctx) -> pb.SetDomainVcpuResponse:
        self.tuning.set_vcpus_enabled(request.name, request.vcpus, request.enable,
                                      conv.scope_flags(request.scope))
        return pb.SetDomainVcpuResponse()

    def GetDomainSecurityLabels(self, request: pb.GetDomainSecurityLabelsRequest,
                                context: Ctx) -> pb.GetDomainSecurityLabelsResponse:
        return pb.GetDomainSecurityLabelsResponse(labels=[
            pb.SecurityLabel(label=label, enforcing=enforcing)
            for label, enforcing in self.tuning.security_labels(request.name)])

    def GetDomainLaunchSecurityInfo(self, request: pb.GetDomainLaunchSecurityInfoRequest,
                                    context: Ctx) -> pb.GetDomainLaunchSecurityInfoResponse:
        values = self.tuning.launch_security_info(request.name)
        return pb.GetDomainLaunchSecurityInfoResponse(parameters=conv.parameters(values))

    def SetDomainLaunchSecurityState(self, request: pb.SetDomainLaunchSecurityStateRequest,
                                     context: Ctx) -> pb.SetDomainLaunchSecurityStateResponse:
        address = request.set_address if request.HasField("set_address") else None
        self.tuning.set_launch_security_state(request.name, request.secret,
                                              request.secret_header, address)
        return pb.SetDomainLaunchSecurityStateResponse()

    # -- metadata, CPUs and memory -------------------------------------------------

    def GetDomainMetadata(self, request: pb.GetDomainMetadataRequest,
                          context: Ctx) -> pb.GetDomainMetadataResponse:
        return pb.GetDomainMetadataResponse(value=self.tuning.metadata(
            request.name, conv.metadata_type(request.type), request.uri,
            conv.scope_flags(request.scope)))

    def SetDomainMetadata(self, request: pb.SetDomainMetadataRequest,
                          context: Ctx) -> pb.SetDomainMetadataResponse:
        self.tuning.set_metadata(request.name, conv.metadata_type(request.type),
                                 request.value, request.key, request.uri,
                                 conv.scope_flags(request.scope))
        return pb.SetDomainMetadataResponse()

    def GetDomainCpuStats(self, request: pb.GetDomainCpuStatsRequest,
                          context: Ctx) -> pb.GetDomainCpuStatsResponse:
        total, per_cpu = self.tuning.cpu_stats(request.name, request.start_cpu,
                                               request.cpu_count)
        return conv.cpu_stats(total, per_cpu, request.start_cpu)

    def GetDomainMaxMemory(self, request: pb.GetDomainMaxMemoryRequest,
                           context: Ctx) -> pb.GetDomainMaxMemoryResponse:
        return pb.GetDomainMaxMemoryResponse(
            max_memory_kib=self.tuning.max_memory(request.name))

    def GetDomainVcpus(self, request: pb.GetDomainVcpusRequest,
                       context: Ctx) -> pb.GetDomainVcpusResponse:
        return conv.vcpus(*self.tuning.vcpus(request.name))
