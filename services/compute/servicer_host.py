"""The host RPCs of ComputeService (CPU baseline and comparison, the node's CPUs,
memory, pages and power, native configuration), a mixin of ComputeServicer."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.compute import convert_host
from services.compute.backend import ComputeBackend
from services.compute.backend_host import HostBackend, Hypervisor
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


def node_suspend_allowed(config: Config) -> bool:
    """The ``allow_node_suspend`` setting, off unless set: suspending the host through
    an API call stops every guest on it and the service too."""
    return config.allow_node_suspend


def _hypervisor(request: Any) -> Hypervisor:
    return Hypervisor(request.emulator, request.arch, request.machine, request.virt_type)


def _optional(request: Any, field: str) -> int | None:
    return getattr(request, field) if request.HasField(field) else None


class HostServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the host backend (it needs the config's suspend setting)."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.host = HostBackend(backend, node_suspend_allowed(config))

    def BaselineCpu(self, request: pb.BaselineCpuRequest,
                    context: Ctx) -> pb.BaselineCpuResponse:
        return pb.BaselineCpuResponse(xml=self.host.baseline_cpu(
            request.xml_cpus, request.expand_features, request.migratable))

    def BaselineHypervisorCpu(self, request: pb.BaselineHypervisorCpuRequest,
                              context: Ctx) -> pb.BaselineHypervisorCpuResponse:
        return pb.BaselineHypervisorCpuResponse(xml=self.host.baseline_cpu(
            request.xml_cpus, request.expand_features, request.migratable,
            _hypervisor(request)))

    def CompareCpu(self, request: pb.CompareCpuRequest, context: Ctx) -> pb.CompareCpuResponse:
        result = self.host.compare_cpu(request.xml, request.fail_incompatible,
                                       request.validate)
        return pb.CompareCpuResponse(result=convert_host.compare_result(result))

    def CompareHypervisorCpu(self, request: pb.CompareHypervisorCpuRequest,
                             context: Ctx) -> pb.CompareHypervisorCpuResponse:
        result = self.host.compare_cpu(request.xml, request.fail_incompatible,
                                       request.validate, _hypervisor(request))
        return pb.CompareHypervisorCpuResponse(result=convert_host.compare_result(result))

    def GetCpuModelNames(self, request: pb.GetCpuModelNamesRequest,
                         context: Ctx) -> pb.GetCpuModelNamesResponse:
        return pb.GetCpuModelNamesResponse(models=self.host.cpu_models(request.arch))

    def GetSysinfo(self, request: pb.GetSysinfoRequest, context: Ctx) -> pb.GetSysinfoResponse:
        return pb.GetSysinfoResponse(xml=self.host.sysinfo())

    def GetHostname(self, request: pb.GetHostnameRequest,
                    context: Ctx) -> pb.GetHostnameResponse:
        return pb.GetHostnameResponse(hostname=self.host.hostname())

    def GetMaxVcpus(self, request: pb.GetMaxVcpusRequest,
                    context: Ctx) -> pb.GetMaxVcpusResponse:
        return pb.GetMaxVcpusResponse(max_vcpus=self.host.max_vcpus(request.virt_type))

    def GetNodeCpuStats(self, request: pb.GetNodeCpuStatsRequest,
                        context: Ctx) -> pb.GetNodeCpuStatsResponse:
        return convert_host.cpu_stats(self.host.cpu_stats(_optional(request, "cpu")))

    def GetNodeMemoryStats(self, request: pb.GetNodeMemoryStatsRequest,
                           context: Ctx) -> pb.GetNodeMemoryStatsResponse:
        return convert_host.memory_stats(self.host.memory_stats(_optional(request, "cell")))

    def GetNodeFreeMemory(self, request: pb.GetNodeFreeMemoryRequest,
                          context: Ctx) -> pb.GetNodeFreeMemoryResponse:
        return pb.GetNodeFreeMemoryResponse(free_bytes=self.host.free_memory())

    def GetCellsFreeMemory(self, request: pb.GetCellsFreeMemoryRequest,
                           context: Ctx) -> pb.GetCellsFreeMemoryResponse:
        cells = self.host.cells_free_memory(request.start_cell, request.max_cells)
        return pb.GetCellsFreeMemoryResponse(cells=[
            pb.CellFreeMemory(cell=cell, free_bytes=free) for cell, free in cells])

    def GetNodeFreePages(self, request: pb.GetNodeFreePagesRequest,
                         context: Ctx) -> pb.GetNodeFreePagesResponse:
        return convert_host.free_pages(self.host.free_pages(
            request.page_sizes_kib, request.start_cell, request.cell_count))

    def AllocNodePages(self, request: pb.AllocNodePagesRequest,
                       context: Ctx) -> pb.AllocNodePagesResponse:
        flags = convert_host.page_allocation_flags(request.mode)
        pages = {page.page_size_kib: page.count for page in request.pages}
        return pb.AllocNodePagesResponse(cells_changed=self.host.alloc_pages(
            pages, request.start_cell, request.cell_count, flags))

    def GetNodeMemoryParameters(self, request: pb.GetNodeMemoryParametersRequest,
                                context: Ctx) -> pb.GetNodeMemoryParametersResponse:
        return pb.GetNodeMemoryParametersResponse(
            parameters=convert_host.memory_parameters(self.host.memory_parameters()))

    def SetNodeMemoryParameters(self, request: pb.SetNodeMemoryParametersRequest,
                                context: Ctx) -> pb.SetNodeMemoryParametersResponse:
        values = self.host.set_memory_parameters(convert_host.memory_parameter_changes(request))
        return pb.SetNodeMemoryParametersResponse(
            parameters=convert_host.memory_parameters(values))

    def SuspendNode(self, request: pb.SuspendNodeRequest,
                    context: Ctx) -> pb.SuspendNodeResponse:
        self.host.suspend(convert_host.SUSPEND_TARGETS.get(request.target),
                          request.duration_seconds)
        return pb.SuspendNodeResponse()

    def GetNodeCpuMap(self, request: pb.GetNodeCpuMapRequest,
                      context: Ctx) -> pb.GetNodeCpuMapResponse:
        cpus, online = self.host.cpu_map()
        return pb.GetNodeCpuMapResponse(cpus=cpus, online=online)

    def GetNodeSecurityModel(self, request: pb.GetNodeSecurityModelRequest,
                             context: Ctx) -> pb.GetNodeSecurityModelResponse:
        model, doi = self.host.security_model()
        return pb.GetNodeSecurityModelResponse(model=model, doi=doi)

    def GetNodeSevInfo(self, request: pb.GetNodeSevInfoRequest,
                       context: Ctx) -> pb.GetNodeSevInfoResponse:
        return convert_host.sev_info(self.host.sev_info())

    def ConvertNativeToDomainXML(self, request: pb.ConvertNativeToDomainXMLRequest,
                                 context: Ctx) -> pb.ConvertNativeToDomainXMLResponse:
        return pb.ConvertNativeToDomainXMLResponse(xml=self.host.native_to_xml(
            convert_host.native_format(request.format), request.config))

    def ConvertDomainXMLToNative(self, request: pb.ConvertDomainXMLToNativeRequest,
                                 context: Ctx) -> pb.ConvertDomainXMLToNativeResponse:
        return pb.ConvertDomainXMLToNativeResponse(config=self.host.xml_to_native(
            convert_host.native_format(request.format), request.xml))
