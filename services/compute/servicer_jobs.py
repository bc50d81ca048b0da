"""The save, restore, dump and job RPCs of ComputeService, a mixin of ComputeServicer.

Each call hands the backend a ``CallWatch`` (services/common/call_end.py): the call's
end, so that libvirt's job is aborted when the caller cancels or its deadline passes.
"""

from __future__ import annotations

from typing import Any

import grpc

from services.common.call_end import CallWatch
from services.common.config import Config
from services.compute import convert, convert_jobs
from services.compute.backend import ComputeBackend
from services.compute.backend_jobs import JobsBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class JobsServicer:
    """First among ComputeServicer's bases: its ``__init__`` passes through this one's,
    which adds the jobs backend (it needs the config's save directory)."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.jobs = JobsBackend(backend, config.save_path)

    def SaveDomain(self, request: pb.SaveDomainRequest, context: Ctx) -> pb.SaveDomainResponse:
        self.jobs.save(request.name, request.path, request.xml,
                       convert_jobs.resume_flags(request.resume_state), request.bypass_cache,
                       CallWatch(context, "SaveDomain"))
        return pb.SaveDomainResponse()

    def RestoreDomain(self, request: pb.RestoreDomainRequest,
                      context: Ctx) -> pb.RestoreDomainResponse:
        dom = self.jobs.restore(request.path, request.xml,
                                convert_jobs.resume_flags(request.resume_state),
                                request.bypass_cache, CallWatch(context, "RestoreDomain"))
        return pb.RestoreDomainResponse(domain=convert.domain(dom))

    def GetSaveImageXML(self, request: pb.GetSaveImageXMLRequest,
                        context: Ctx) -> pb.GetSaveImageXMLResponse:
        return pb.GetSaveImageXMLResponse(
            xml=self.jobs.save_image_xml(request.path, request.secure))

    def DefineSaveImageXML(self, request: pb.DefineSaveImageXMLRequest,
                           context: Ctx) -> pb.DefineSaveImageXMLResponse:
        self.jobs.define_save_image_xml(request.path, request.xml,
                                        convert_jobs.resume_flags(request.resume_state))
        return pb.DefineSaveImageXMLResponse()

    def ManagedSaveDomain(self, request: pb.ManagedSaveDomainRequest,
                          context: Ctx) -> pb.ManagedSaveDomainResponse:
        self.jobs.managed_save(request.name, convert_jobs.resume_flags(request.resume_state),
                               request.bypass_cache, CallWatch(context, "ManagedSaveDomain"))
        return pb.ManagedSaveDomainResponse()

    def RemoveManagedSave(self, request: pb.RemoveManagedSaveRequest,
                          context: Ctx) -> pb.RemoveManagedSaveResponse:
        self.jobs.remove_managed_save(request.name, CallWatch(context, "RemoveManagedSave"))
        return pb.RemoveManagedSaveResponse()

    def GetManagedSaveXML(self, request: pb.GetManagedSaveXMLRequest,
                          context: Ctx) -> pb.GetManagedSaveXMLResponse:
        return pb.GetManagedSaveXMLResponse(xml=self.jobs.managed_save_xml(
            request.name, request.secure, CallWatch(context, "GetManagedSaveXML")))

    def DefineManagedSaveXML(self, request: pb.DefineManagedSaveXMLRequest,
                             context: Ctx) -> pb.DefineManagedSaveXMLResponse:
        self.jobs.define_managed_save_xml(request.name, request.xml,
                                          convert_jobs.resume_flags(request.resume_state),
                                          CallWatch(context, "DefineManagedSaveXML"))
        return pb.DefineManagedSaveXMLResponse()

    def CoreDumpDomain(self, request: pb.CoreDumpDomainRequest,
                       context: Ctx) -> pb.CoreDumpDomainResponse:
        self.jobs.core_dump(request.name, request.path, convert_jobs.dump_format(request.format),
                            request.memory_only, request.crash, request.reset, request.live,
                            request.bypass_cache, CallWatch(context, "CoreDumpDomain"))
        return pb.CoreDumpDomainResponse()

    def GetDomainJobInfo(self, request: pb.GetDomainJobInfoRequest,
                         context: Ctx) -> pb.GetDomainJobInfoResponse:
        stats = self.jobs.job_stats(request.name, request.completed, request.keep_completed,
                                    CallWatch(context, "GetDomainJobInfo"))
        return pb.GetDomainJobInfoResponse(job=convert_jobs.domain_job(stats))

    def AbortDomainJob(self, request: pb.AbortDomainJobRequest,
                       context: Ctx) -> pb.AbortDomainJobResponse:
        self.jobs.abort_job(request.name, request.postcopy, CallWatch(context, "AbortDomainJob"))
        return pb.AbortDomainJobResponse()
