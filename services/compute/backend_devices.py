"""Changing a domain's devices in place, or detaching one by its alias.

A device's XML passes the document checks and the sandbox's parse first, as
AttachDevice's does (ComputeBackend._submit); an alias is checked as libvirt's
aliases are spelled (letters, digits, ``_``, ``-``, ``.``, ``:``) before libvirt
looks for it.
"""

from __future__ import annotations

import re

import grpc
import libvirt

from services.common.errors import ServiceError, require
from services.compute.backend import ComputeBackend

#: libvirt's aliases: its own (net0, virtio-disk0, ide0-0-0) and users' (ua-...)
ALIAS = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _flags(live: bool, config: bool) -> int:
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))


class DevicesBackend:
    """The libvirt side of UpdateDevice and DetachDeviceAlias."""

    def __init__(self, backend: ComputeBackend) -> None:
        self.compute = backend

    def update_device(self, name: str, xml: str, live: bool, config: bool,
                      force: bool) -> None:
        dom = self.compute.lookup(name)
        flags = _flags(live, config) | (libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE if force else 0)
        self.compute._submit("device", dom.updateDeviceFlags, xml, flags)

    def detach_device_alias(self, name: str, alias: str, live: bool, config: bool) -> None:
        require(alias, "alias")
        if not ALIAS.fullmatch(alias):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"alias {alias[:140]!r} is not a libvirt alias (up to 128 "
                               "letters, digits, '_', '-', '.', ':')", "INVALID_ALIAS")
        self.compute.lookup(name).detachDeviceAlias(alias, _flags(live, config))
