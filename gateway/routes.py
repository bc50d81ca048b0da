"""Which backend serves which method, read from the generated descriptors.

Every ``virtmesh.<driver>.v1`` package is served by the ``<driver>`` service on
``<socket_dir>/<driver>.sock``. A route is built once per method, with what every
call of it needs: the method's descriptor and message classes (to authorise the
request and filter responses) and the call on the backend's channel, which
forwards messages as bytes.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

import virtmesh
from gateway.backends import Backends
from services.common.shared import CallKind, call_kind


def method_path(method: MethodDescriptor) -> str:
    """``/package.Service/Method``: the method's name on the wire."""
    return f"/{method.containing_service.full_name}/{method.name}"


def message_class(descriptor: Any) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Route:
    """One method behind the gateway, built once (see build_route)."""

    driver: str
    path: str
    method: MethodDescriptor
    kind: CallKind
    request_class: type[Message]
    response_class: type[Message]
    #: the call on the backend's channel; requests and responses pass through as bytes
    call: Any

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)


def load_generated_modules() -> None:
    """Import every generated ``*_pb2`` module so its descriptors are in the pool."""
    for module in pkgutil.walk_packages(virtmesh.__path__, "virtmesh."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


def driver_of(service_full_name: str) -> str | None:
    parts = service_full_name.split(".")
    if len(parts) == 4 and parts[0] == "virtmesh" and parts[2].startswith("v"):
        return parts[1]
    return None


def proxied_services(exclude_drivers: tuple[str, ...] = ("gateway", "admin")
                     ) -> list[ServiceDescriptor]:
    """Every virtmesh service the gateway forwards to a backend. The gateway answers
    its own API and the admin API (virtmesh.admin.v1, served by every process)."""
    load_generated_modules()
    pool = descriptor_pool.Default()
    services = []
    for module in pkgutil.walk_packages(virtmesh.__path__, "virtmesh."):
        if not module.name.endswith("_pb2"):
            continue
        file = pool.FindFileByName(importlib.import_module(module.name).DESCRIPTOR.name)
        for service in file.services_by_name.values():
            driver = driver_of(service.full_name)
            if driver and driver not in exclude_drivers:
                services.append(service)
    return services


def method_paths(service_names: list[str]) -> set[str]:
    """``/service/Method`` of every method of these services (from the descriptor pool)."""
    pool = descriptor_pool.Default()
    return {method_path(method) for name in service_names
            for method in pool.FindServiceByName(name).methods}


def build_route(backends: Backends, method: MethodDescriptor) -> Route:
    driver = driver_of(method.containing_service.full_name) or ""
    kind = call_kind(method.client_streaming, method.server_streaming)
    path = method_path(method)
    # No serializers: the request and response bytes pass through as they are.
    call = getattr(backends.channel(driver), kind.name)(path)
    return Route(driver, path, method, kind, message_class(method.input_type),
                 message_class(method.output_type), call)


def route_table(backends: Backends) -> dict[str, Route]:
    """A route for every method of every service behind the gateway."""
    routes = (build_route(backends, method) for service in proxied_services()
              for method in service.methods)
    return {route.path: route for route in routes}
