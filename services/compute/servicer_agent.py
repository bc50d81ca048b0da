"""The guest agent RPCs of ComputeService (interface addresses, file systems, guest
information, hostname, vCPUs, time, passwords, SSH keys, the agent's timeout), a
mixin of ComputeServicer."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.compute import convert_agent
from services.compute.backend import ComputeBackend
from services.compute.backend_agent import AgentBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class AgentServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the guest agent backend."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.agent = AgentBackend(backend)

    def GetInterfaceAddresses(self, request: pb.GetInterfaceAddressesRequest,
                              context: Ctx) -> pb.GetInterfaceAddressesResponse:
        found = self.agent.interface_addresses(
            request.name, convert_agent.address_source(request.source))
        return pb.GetInterfaceAddressesResponse(interfaces=convert_agent.interfaces(found))

    def FreezeFilesystems(self, request: pb.FreezeFilesystemsRequest,
                          context: Ctx) -> pb.FreezeFilesystemsResponse:
        return pb.FreezeFilesystemsResponse(
            count=self.agent.fs_freeze(request.name, request.mountpoints))

    def ThawFilesystems(self, request: pb.ThawFilesystemsRequest,
                        context: Ctx) -> pb.ThawFilesystemsResponse:
        return pb.ThawFilesystemsResponse(
            count=self.agent.fs_thaw(request.name, request.mountpoints))

    def TrimFilesystems(self, request: pb.TrimFilesystemsRequest,
                        context: Ctx) -> pb.TrimFilesystemsResponse:
        self.agent.fs_trim(request.name, request.mountpoint, request.minimum_bytes)
        return pb.TrimFilesystemsResponse()

    def GetFilesystemInfo(self, request: pb.GetFilesystemInfoRequest,
                          context: Ctx) -> pb.GetFilesystemInfoResponse:
        return pb.GetFilesystemInfoResponse(
            filesystems=convert_agent.filesystems(self.agent.fs_info(request.name)))

    def GetGuestInfo(self, request: pb.GetGuestInfoRequest,
                     context: Ctx) -> pb.GetGuestInfoResponse:
        types = convert_agent.guest_info_types(list(request.types))
        return convert_agent.guest_info(self.agent.guest_info(request.name, types))

    def GetGuestHostname(self, request: pb.GetGuestHostnameRequest,
                         context: Ctx) -> pb.GetGuestHostnameResponse:
        return pb.GetGuestHostnameResponse(hostname=self.agent.hostname(
            request.name, convert_agent.hostname_flags(request.source)))

    def GetGuestVcpus(self, request: pb.GetGuestVcpusRequest,
                      context: Ctx) -> pb.GetGuestVcpusResponse:
        found = self.agent.guest_vcpus(request.name)
        return pb.GetGuestVcpusResponse(vcpus=found.get("vcpus", ""),
                                        online=found.get("online", ""),
                                        offlinable=found.get("offlinable", ""))

    def SetGuestVcpus(self, request: pb.SetGuestVcpusRequest,
                      context: Ctx) -> pb.SetGuestVcpusResponse:
        self.agent.set_guest_vcpus(request.name, request.cpumap, request.online)
        return pb.SetGuestVcpusResponse()

    def GetGuestTime(self, request: pb.GetGuestTimeRequest,
                     context: Ctx) -> pb.GetGuestTimeResponse:
        return pb.GetGuestTimeResponse(
            time=convert_agent.timestamp(*self.agent.time(request.name)))

    def SetGuestTime(self, request: pb.SetGuestTimeRequest,
                     context: Ctx) -> pb.SetGuestTimeResponse:
        self.agent.set_time(request.name, convert_agent.set_time(request), request.sync)
        return pb.SetGuestTimeResponse()

    def SetUserPassword(self, request: pb.SetUserPasswordRequest,
                        context: Ctx) -> pb.SetUserPasswordResponse:
        self.agent.set_user_password(request.name, request.user, request.password,
                                     request.encrypted)
        return pb.SetUserPasswordResponse()

    def GetAuthorizedSSHKeys(self, request: pb.GetAuthorizedSSHKeysRequest,
                             context: Ctx) -> pb.GetAuthorizedSSHKeysResponse:
        return pb.GetAuthorizedSSHKeysResponse(
            keys=self.agent.ssh_keys(request.name, request.user))

    def SetAuthorizedSSHKeys(self, request: pb.SetAuthorizedSSHKeysRequest,
                             context: Ctx) -> pb.SetAuthorizedSSHKeysResponse:
        self.agent.set_ssh_keys(request.name, request.user, request.keys,
                                convert_agent.ssh_key_flags(request.change))
        return pb.SetAuthorizedSSHKeysResponse()

    def SetAgentResponseTimeout(self, request: pb.SetAgentResponseTimeoutRequest,
                                context: Ctx) -> pb.SetAgentResponseTimeoutResponse:
        self.agent.set_agent_timeout(request.name, convert_agent.agent_timeout(request))
        return pb.SetAgentResponseTimeoutResponse()
