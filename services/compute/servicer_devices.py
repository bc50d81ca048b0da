"""The device update RPCs of ComputeService (UpdateDevice, DetachDeviceAlias), a mixin
of ComputeServicer."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.config import Config
from services.compute.backend import ComputeBackend
from services.compute.backend_devices import DevicesBackend
from virtmesh.compute.v1 import compute_service_pb2 as pb

Ctx = grpc.ServicerContext


class DevicesServicer:
    """A base of ComputeServicer: its ``__init__`` passes through this one's, which
    adds the devices backend."""

    def __init__(self, backend: ComputeBackend, config: Config, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(backend, config, *args, **kwargs)  # type: ignore[call-arg]
        self.devices = DevicesBackend(backend)

    def UpdateDevice(self, request: pb.UpdateDeviceRequest,
                     context: Ctx) -> pb.UpdateDeviceResponse:
        self.devices.update_device(request.name, request.xml, request.scope.live,
                                   request.scope.config, request.force)
        return pb.UpdateDeviceResponse()

    def DetachDeviceAlias(self, request: pb.DetachDeviceAliasRequest,
                          context: Ctx) -> pb.DetachDeviceAliasResponse:
        self.devices.detach_device_alias(request.name, request.alias, request.scope.live,
                                         request.scope.config)
        return pb.DetachDeviceAliasResponse()
