"""Which backend serves which method, read from the generated descriptors.

Every ``virtmesh.<driver>.v1`` package is served by the ``<driver>`` service on
``<socket_dir>/<driver>.sock``. Only the RPC shape (unary or streaming) is taken
from the descriptors; messages are forwarded as bytes, never parsed.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

import virtmesh


@dataclasses.dataclass(frozen=True)
class Route:
    driver: str
    service: str
    method: str
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


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


def proxied_services(exclude_drivers: tuple[str, ...] = ("gateway",)) -> list[ServiceDescriptor]:
    """Every virtmesh service the gateway forwards to a backend."""
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
    return {f"/{name}/{method.name}" for name in service_names
            for method in pool.FindServiceByName(name).methods}


def route_table() -> dict[str, Route]:
    return {
        route.path: route
        for service in proxied_services()
        for route in (
            Route(driver_of(service.full_name) or "", service.full_name, method.name,
                  method.client_streaming, method.server_streaming)
            for method in service.methods
        )
    }
