"""The services virtmesh runs, found from the driver packages.

As libvirt's ``src/remote/`` builds one daemon per driver from one source, each
package under ``services/`` contributes a ``SPEC`` (services/common/daemon.py
``ServiceSpec``) and nothing else outside itself: the supervisor and its metrics
ports, the host-daemon helper, the one entry point (``python -m services NAME``,
``virtmesh-service NAME``), the deployment checks and the tests all read this.
Adding a service is one package here and its deployment material, which the tests
check against this list.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from urllib.parse import urlparse

import services
from services.common.daemon import ServiceSpec


@functools.cache
def _specs() -> tuple[ServiceSpec, ...]:
    found = []
    for module in pkgutil.iter_modules(services.__path__):
        if not module.ispkg or module.name == "common":
            continue
        spec = getattr(importlib.import_module(f"services.{module.name}"), "SPEC", None)
        if isinstance(spec, ServiceSpec):
            if spec.name != module.name:
                raise RuntimeError(f"services.{module.name} names its service {spec.name!r}")
            found.append(spec)
    found.sort(key=lambda spec: spec.port_offset)
    offsets = [spec.port_offset for spec in found]
    if offsets != list(range(1, len(found) + 1)):  # 0 is the gateway's
        raise RuntimeError("the services' port offsets must be 1, 2, ... without gaps: "
                           f"{ {spec.name: spec.port_offset for spec in found} }")
    return tuple(found)


def specs() -> tuple[ServiceSpec, ...]:
    """Every service, in metrics-port order."""
    return _specs()


def names() -> tuple[str, ...]:
    return tuple(spec.name for spec in _specs())


def spec(name: str) -> ServiceSpec:
    """The service called ``name``; KeyError names the known ones."""
    for candidate in _specs():
        if candidate.name == name:
            return candidate
    raise KeyError(f"no service {name!r} (services: {', '.join(names())})")


def host_daemon_drivers() -> tuple[str, ...]:
    """The libvirt drivers the host's daemon serves (those not embedded by default)."""
    return tuple(spec.driver for spec in _specs() if not spec.embedded)


def is_embedded(uri: str) -> bool:
    """Whether a libvirt URI opens its driver inside this process."""
    return urlparse(uri).path == "/embed"
