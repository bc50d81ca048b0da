"""The compute service's libvirt calls: lookups, flag assembly, multi-step operations."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import grpc
import libvirt

from services.common import documents
from services.common.backend import Backend, by_name_or_uuid, list_flags
from services.common.config import Config
from services.common.errors import ServiceError
from services.common.libvirt_connection import LibvirtConnection
from services.common.sandbox import ParseSandbox

log = logging.getLogger(__name__)
T = TypeVar("T")

_QEMU_CONF_MARKER = "# Managed by virtmesh compute"


def scope_flags(live: bool, config: bool) -> int:
    """libvirt's AFFECT_* flags; neither set means AFFECT_CURRENT (0)."""
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))


def is_embedded(uri: str) -> bool:
    parsed = urlparse(uri)
    return parsed.scheme == "qemu" and parsed.path == "/embed"


def prepare_embedded_root(config: Config) -> None:
    """Give an embedded QEMU driver the qemu.conf it needs under its root.

    QEMU runs as this process's user (as virt-qemu-run does) and writes guest
    consoles to files, so no virtlogd is needed. A qemu.conf without our marker
    line is the operator's and is left alone.
    """
    if not is_embedded(config.libvirt_uri):
        return
    roots = parse_qs(urlparse(config.libvirt_uri).query).get("root")
    if not roots:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "embedded URI needs ?root=DIR", "INVALID_URI")
    conf = Path(roots[0]) / "etc" / "qemu.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    wanted = (f"{_QEMU_CONF_MARKER}; delete this line to keep your own edits.\n"
              'stdio_handler = "file"\n'
              # remembering owners needs trusted xattrs, which a container may lack
              "remember_owner = 0\n"
              f'user = "+{os.getuid()}"\n'
              f'group = "+{os.getgid()}"\n')
    if conf.exists():
        current = conf.read_text()
        if current == wanted or not current.startswith(_QEMU_CONF_MARKER):
            return
    conf.write_text(wanted)
    log.info("wrote %s", conf)


class ComputeBackend(Backend):
    """Every document a caller sends is checked (services/common/documents.py) and
    parsed in the sandbox first, validated against libvirt's schema always: the QEMU
    driver runs embedded, so its parser's crash would be this process's."""

    def __init__(self, connection: LibvirtConnection) -> None:
        super().__init__(connection)
        self.sandbox = ParseSandbox()
        self._autostarted = False
        if is_embedded(connection.uri):
            connection.on_connect(self._autostart)

    def _autostart(self, conn: libvirt.virConnect) -> None:
        """Start the guests marked autostart, once per process.

        libvirtd does this when it starts; the embedded driver does not, so after a
        restart (a pod's, a host's) nothing would come back. Guests still running
        from before a crash are active and left alone.
        """
        if self._autostarted:
            return
        self._autostarted = True
        flags = (libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE
                 | libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
        for dom in conn.listAllDomains(flags):
            try:
                dom.create()
                log.info("autostarted guest %s", dom.name())
            except libvirt.libvirtError as error:
                log.warning("cannot autostart guest %s: %s", dom.name(), error)

    def lookup(self, name: str) -> libvirt.virDomain:
        """A domain by name or by UUID string."""
        conn = self.conn
        return by_name_or_uuid(name, conn.lookupByUUIDString, conn.lookupByName,
                               libvirt.VIR_ERR_NO_DOMAIN)

    def list_domains(self, active: bool | None, persistent: bool | None,
             autostart: bool | None) -> list[libvirt.virDomain]:
        return self.conn.listAllDomains(list_flags(
            (active, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE,
             libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE),
            (persistent, libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT,
             libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT),
            (autostart, libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART,
             libvirt.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART)))

    def _submit(self, kind: str, call: Callable[..., T], xml: str, *args: object,
                root: str | None = None) -> T:
        def parsed_apart(_document: documents.Document) -> None:
            self.sandbox.parse(kind, xml)

        return documents.submit(call, xml, *args, root=root, fragment=kind == "device",
                                inspect=parsed_apart)

    def define(self, xml: str) -> libvirt.virDomain:
        return self._submit("domain", self.conn.defineXMLFlags, xml,
                            libvirt.VIR_DOMAIN_DEFINE_VALIDATE, root="domain")

    def create(self, xml: str, paused: bool) -> libvirt.virDomain:
        flags = ((libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
                 | libvirt.VIR_DOMAIN_START_VALIDATE)
        return self._submit("domain", self.conn.createXML, xml, flags, root="domain")

    def change_device(self, dom: libvirt.virDomain, attach: bool, xml: str, flags: int) -> None:
        self._submit("device", dom.attachDeviceFlags if attach else dom.detachDeviceFlags,
                     xml, flags)

    def create_snapshot(self, dom: libvirt.virDomain, xml: str,
                        flags: int) -> libvirt.virDomainSnapshot:
        return self._submit("snapshot", dom.snapshotCreateXML, xml or "<domainsnapshot/>",
                            flags | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_VALIDATE,
                            root="domainsnapshot")

    def close(self) -> None:
        self.sandbox.close()

    def undefine(self, dom: libvirt.virDomain, managed_save: bool, snapshots: bool,
                 nvram: bool, keep_nvram: bool) -> None:
        if nvram and keep_nvram:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "nvram and keep_nvram exclude each other", "CONFLICTING_FLAGS")
        flags = ((libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE if managed_save else 0)
                 | (libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA if snapshots else 0)
                 | (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM if nvram else 0)
                 | (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if keep_nvram else 0))
        dom.undefineFlags(flags)

    def start(self, dom: libvirt.virDomain, paused: bool, force_boot: bool) -> None:
        # Checked here too because not every driver reports this as OPERATION_INVALID.
        if dom.isActive():
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' is already running",
                               "VIR_ERR_OPERATION_INVALID")
        dom.createWithFlags((libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
                            | (libvirt.VIR_DOMAIN_START_FORCE_BOOT if force_boot else 0))

    def stats(self, names: list[str], groups: int, active_only: bool,
              nowait: bool) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT if nowait else 0
        if names:
            domains = [self.lookup(name) for name in names]
            return self.conn.domainListGetStats(domains, groups, flags)
        if active_only:
            flags |= libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        return self.conn.getAllDomainStats(groups, flags)

    def stop_guests(self, how: str, timeout: float) -> None:
        """Shut down or destroy every running guest (the service's exit policy)."""
        running = self.list_domains(active=True, persistent=None, autostart=None)
        if how == "shutdown":
            for dom in running:
                _quietly(dom.shutdown)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(_quietly(dom.isActive) for dom in running):
                time.sleep(0.2)
        for dom in running:
            if _quietly(dom.isActive):
                log.info("destroying guest %s", dom.name())
                _quietly(dom.destroy)


def _quietly(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except libvirt.libvirtError as error:
        log.warning("%s", error.get_error_message())
        return None
