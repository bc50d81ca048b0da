"""The lifecycle-extra RPCs of ComputeService (guest power management, renaming,
NMIs, process signals, lifecycle actions, messages, vCPU counts and dirty rates), a
mixin of ComputeServicer."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.compute import convert
from services.compute import convert_lifecycle as conv
from services.compute.backend import ComputeBackend
from services.compute.backend_lifecycle import LifecycleBackend
from services.compute.convert_tuning import scope_flags
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class LifecycleServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the lifecycle backend."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.lifecycle = LifecycleBackend(backend)

    def PmSuspendDomain(self, request: pb.PmSuspendDomainRequest,
                        context: Ctx) -> pb.PmSuspendDomainResponse:
        self.lifecycle.pm_suspend(request.name, conv.pm_suspend_target(request.target),
                                  request.duration_seconds)
        return pb.PmSuspendDomainResponse()

    def PmWakeupDomain(self, request: pb.PmWakeupDomainRequest,
                       context: Ctx) -> pb.PmWakeupDomainResponse:
        self.lifecycle.pm_wakeup(request.name)
        return pb.PmWakeupDomainResponse()

    def RenameDomain(self, request: pb.RenameDomainRequest,
                     context: Ctx) -> pb.RenameDomainResponse:
        dom = self.lifecycle.rename(request.name, request.new_name)
        return pb.RenameDomainResponse(domain=convert.domain(dom))

    def InjectDomainNmi(self, request: pb.InjectDomainNmiRequest,
                        context: Ctx) -> pb.InjectDomainNmiResponse:
        self.lifecycle.inject_nmi(request.name)
        return pb.InjectDomainNmiResponse()

    def SendDomainProcessSignal(self, request: pb.SendDomainProcessSignalRequest,
                                context: Ctx) -> pb.SendDomainProcessSignalResponse:
        self.lifecycle.send_process_signal(request.name, request.pid,
                                           conv.process_signal(request.signal))
        return pb.SendDomainProcessSignalResponse()

    def SetDomainLifecycleAction(self, request: pb.SetDomainLifecycleActionRequest,
                                 context: Ctx) -> pb.SetDomainLifecycleActionResponse:
        self.lifecycle.set_lifecycle_action(request.name, conv.lifecycle_type(request.type),
                                            conv.lifecycle_action(request.action),
                                            scope_flags(request.scope))
        return pb.SetDomainLifecycleActionResponse()

    def GetDomainMessages(self, request: pb.GetDomainMessagesRequest,
                          context: Ctx) -> pb.GetDomainMessagesResponse:
        return pb.GetDomainMessagesResponse(messages=self.lifecycle.messages(
            request.name, conv.message_flags(request.tainting, request.deprecation)))

    def GetDomainVcpuCount(self, request: pb.GetDomainVcpuCountRequest,
                           context: Ctx) -> pb.GetDomainVcpuCountResponse:
        return pb.GetDomainVcpuCountResponse(count=self.lifecycle.vcpu_count(
            request.name, scope_flags(request.scope), request.maximum, request.guest))

    def StartDomainDirtyRateCalc(self, request: pb.StartDomainDirtyRateCalcRequest,
                                 context: Ctx) -> pb.StartDomainDirtyRateCalcResponse:
        self.lifecycle.start_dirty_rate_calc(request.name, request.calc_seconds,
                                             conv.dirty_rate_mode(request.mode))
        return pb.StartDomainDirtyRateCalcResponse()
