"""The compute service's libvirt calls: lookups, flag assembly, multi-step operations."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import grpc
import libvirt

from services.common import call_scope, documents, event_callbacks, registry
from services.common.backend import Backend, by_name_or_uuid, list_flags
from services.common.config import Config
from services.common.errors import ServiceError, require
from services.common.libvirt_connection import LibvirtConnection
from services.common.qemu_caps import SharedCache
from services.common.sandbox import ParseSandbox
from services.compute import backend_trouble
from services.compute.backend_sessions import (
    CharacterDevices,
    Display,
    SocketSession,
    StreamSession,
    displays,
    first_console,
    stream_chunks,
)
from services.compute.capabilities import Answer, CapabilitiesCache
from services.compute.domain_calls import STUCK_AFTER, DomainCalls

log = logging.getLogger(__name__)
T = TypeVar("T")

_QEMU_CONF_MARKER = "# Managed by virtmesh compute"
#: seconds a stopping service waits for the capability warm-up (QEMU probes) to end
WARM_UP_STOP_WAIT = 60.0

#: libvirt's domain event ids -> the kind register_events emits. Left out, as
#: superseded: IO_ERROR (IO_ERROR_REASON adds the reason) and BLOCK_JOB (by path;
#: BLOCK_JOB_2 names the disk by target, and works for network disks too).
DOMAIN_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE: "lifecycle",
    libvirt.VIR_DOMAIN_EVENT_ID_REBOOT: "reboot",
    libvirt.VIR_DOMAIN_EVENT_ID_RTC_CHANGE: "rtc_change",
    libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG: "watchdog",
    libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS: "graphics",
    libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON: "io_error",
    libvirt.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR: "control_error",
    libvirt.VIR_DOMAIN_EVENT_ID_DISK_CHANGE: "disk_change",
    libvirt.VIR_DOMAIN_EVENT_ID_TRAY_CHANGE: "tray_change",
    libvirt.VIR_DOMAIN_EVENT_ID_PMWAKEUP: "pm_wakeup",
    libvirt.VIR_DOMAIN_EVENT_ID_PMSUSPEND: "pm_suspend",
    libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE: "balloon_change",
    libvirt.VIR_DOMAIN_EVENT_ID_PMSUSPEND_DISK: "pm_suspend_disk",
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED: "device_removed",
    libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2: "block_job",
    libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE: "tunable",
    libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE: "agent_lifecycle",
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED: "device_added",
    libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION: "migration_iteration",
    libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED: "job_completed",
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED: "device_removal_failed",
    libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE: "metadata_change",
    libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD: "block_threshold",
    libvirt.VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE: "memory_failure",
    libvirt.VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE: "memory_device_size_change",
}


def must_run(dom: libvirt.virDomain) -> libvirt.virDomain:
    """``dom``, or FAILED_PRECONDITION (libvirt's own code) when it is not running."""
    if not dom.isActive():
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"domain '{dom.name()}' is not running", "VIR_ERR_OPERATION_INVALID")
    return dom


@dataclass(frozen=True, slots=True)
class Listed:
    """A listed domain and what the listing itself said about it (libvirt's list
    flags), so a summary needs no call per domain for these."""

    dom: libvirt.virDomain
    name: str
    persistent: bool
    autostart: bool
    managed_save: bool


#: what a bulk state call says about a domain now: state, reason, id (a plain tuple:
#: lists make one per domain)
Now = tuple[int, int, int]


def _domain_list_flags(active: bool | None, persistent: bool | None,
                       autostart: bool | None) -> int:
    """listAllDomains' flags for ListDomains' filters (None: no filter)."""
    return list_flags(
        (active, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE,
         libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE),
        (persistent, libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT,
         libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT),
        (autostart, libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART,
         libvirt.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART))


def _scope_flags(live: bool, config: bool) -> int:
    """libvirt's AFFECT_* flags; neither set means AFFECT_CURRENT (0)."""
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))



def prepare_embedded_root(config: Config) -> None:
    """Give an embedded QEMU driver the qemu.conf it needs under its root.

    QEMU runs as this process's user (as virt-qemu-run does) and writes guest
    consoles to files, so no virtlogd is needed. A qemu.conf without our marker
    line is the operator's and is left alone.
    """
    if not registry.is_embedded(config.libvirt_uri):
        return
    root = embedded_root(config.libvirt_uri)
    if root is None:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           "embedded URI needs ?root=DIR", "INVALID_URI")
    # before libvirt opens the root: QEMU probes already made elsewhere are not made again
    SharedCache.from_setting(config.caps_cache).seed(root)
    conf = root / "etc" / "qemu.conf"
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


def embedded_root(uri: str) -> Path | None:
    """The root directory of an embedded URI (``qemu:///embed?root=DIR``)."""
    roots = parse_qs(urlparse(uri).query).get("root")
    return Path(roots[0]) if roots and registry.is_embedded(uri) else None


@dataclass(frozen=True)
class Versions:
    """What GetVersion reports of the host, in libvirt's numbers."""

    libvirt: int
    hypervisor_type: str
    hypervisor: int
    uri: str


class ComputeBackend(Backend):
    """Every document a caller sends is checked (services/common/documents.py) and
    parsed in the sandbox first, validated against libvirt's schema always: the QEMU
    driver runs embedded, so its parser's crash would be this process's."""

    def __init__(self, connection: LibvirtConnection,
                 caps_cache: SharedCache | None = None) -> None:
        super().__init__(connection)
        self.sandbox = ParseSandbox()
        self.character_devices = CharacterDevices()
        #: calls waiting (over a second) in libvirt per domain, for every unary RPC
        self.stuck_calls = DomainCalls(stuck_after=STUCK_AFTER)
        self._autostarted = False
        self.capabilities_cache = CapabilitiesCache()
        self._shared_caps = caps_cache
        self.warm = threading.Event()
        self._warming: threading.Thread | None = None
        connection.on_connect(self._connected)
        if registry.is_embedded(connection.uri):
            connection.on_connect(self._autostart)

    def _connected(self, conn: libvirt.virConnect) -> None:
        """A new connection: answers cached from the last one may be outdated. Warm the
        answers a first guest needs on a thread (QEMU only): the first call waits for
        that fetch rather than making its own."""
        self.capabilities_cache.clear()
        if urlparse(self.connection.uri).scheme.split("+")[0] != "qemu":
            self.warm.set()
            return
        self.warm.clear()
        self._warming = threading.Thread(target=self._warm_up, args=(conn,),
                                         name="warm-capabilities", daemon=True)
        self._warming.start()

    def _warm_up(self, conn: libvirt.virConnect) -> None:
        """On the new connection itself: the hook runs before it becomes ``conn``.

        The default emulator first: that is what a first guest needs. The host's
        capabilities after it probe every QEMU binary installed, and libvirt holds
        its capability cache while it probes, so a guest start waits meanwhile;
        with the shared cache filled (once per host) none of it is probed."""
        started = time.monotonic()
        root = embedded_root(self.connection.uri)
        try:
            for warm in (lambda: self.domain_capabilities("", "", "", "", conn),
                         lambda: self.capabilities(conn)):
                warm()
                if root is not None and self._shared_caps is not None:
                    self._shared_caps.collect(root)  # at once: the service may stop soon
        except (libvirt.libvirtError, ServiceError) as error:
            log.warning("warming capabilities failed: %s", error)
            return
        finally:
            self.warm.set()
        log.info("capabilities warm in %.2f s (%d libvirt call(s))",
                 time.monotonic() - started, self.capabilities_cache.fetches)

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
        """A domain by name or by UUID string. The call looking it up holds one of the
        domain's places among the calls waiting in libvirt until it ends
        (services/compute/domain_calls.py): a guest that stopped answering gets a
        clear error, not every thread."""
        conn = self.conn
        return self._held(by_name_or_uuid(name, conn.lookupByUUIDString, conn.lookupByName,
                                          libvirt.VIR_ERR_NO_DOMAIN))

    def _held(self, dom: libvirt.virDomain) -> libvirt.virDomain:
        """``dom``, its place among the calls waiting on it held for this call."""
        uuid = dom.UUIDString()
        call_scope.hold(("domain", uuid), lambda: self.stuck_calls.held(uuid, dom.name()))
        return dom

    def lookup_by_id(self, domain_id: int) -> libvirt.virDomain:
        """The running domain with this ID, held as ``lookup`` holds one."""
        if domain_id < 0:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a domain ID is 0 or more, not {domain_id}", "INVALID_ID")
        return self._held(self.conn.lookupByID(domain_id))

    def list_domains(self, active: bool | None, persistent: bool | None,
             autostart: bool | None) -> list[libvirt.virDomain]:
        return self.conn.listAllDomains(_domain_list_flags(active, persistent, autostart))

    def list_domains_flagged(self, active: bool | None, persistent: bool | None,
                             autostart: bool | None) -> list[Listed]:
        """The domains the filters select, each with its persistent, autostart and
        managed-save flags, from at most four listings whatever the number of
        domains: all of them, then those transient, autostart or with a managed save
        image (unless a filter already says). Over libvirt's remote protocol a call
        per domain and flag would be a round trip each."""
        conn = self.conn
        flags = _domain_list_flags(active, persistent, autostart)

        def names_with(flag: int) -> set[str]:
            return {dom.name() for dom in conn.listAllDomains(flags | flag)}

        domains = conn.listAllDomains(flags)
        if not domains:
            return []
        transient = (names_with(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
                     if persistent is None else set())
        autostarted = (names_with(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
                       if autostart is None else set())
        saved = names_with(libvirt.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)
        listed = []
        for dom in domains:
            name = dom.name()
            is_persistent = persistent if persistent is not None else name not in transient
            # a summary says false for a transient domain's autostart
            is_autostart = is_persistent and (
                autostart if autostart is not None else name in autostarted)
            listed.append(Listed(dom, name, is_persistent, is_autostart, name in saved))
        return listed

    def domain_states(self, listed: Sequence[Listed]) -> dict[str, Now]:
        """State, reason and id by name, in one bulk call for all of ``listed``
        (whose own id may be that of when it was listed); a domain gone meanwhile
        is missing. The state group needs no job and no QEMU monitor, unlike the
        balloon and vCPU groups, which QEMU's driver fills with monitor calls per
        running guest."""
        if not listed:
            return {}
        records = self.conn.domainListGetStats([item.dom for item in listed],
                                               libvirt.VIR_DOMAIN_STATS_STATE, 0)
        return {dom.name(): (record.get("state.state", 0), record.get("state.reason", 0),
                             dom.ID())
                for dom, record in records}

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

    def change_device(self, name: str, attach: bool, xml: str, live: bool,
                      config: bool) -> None:
        dom = self.lookup(name)
        self._submit("device", dom.attachDeviceFlags if attach else dom.detachDeviceFlags,
                     xml, _scope_flags(live, config))

    def close(self) -> None:
        self.sandbox.close()
        # A QEMU that libvirt is probing is its child for that while: a service that
        # exits mid-probe would leave it behind, waiting forever. Let the probe end
        # (seconds; what it learns goes to the shared cache).
        warming = self._warming
        if warming is not None and warming.is_alive():
            log.info("waiting for the capability warm-up to finish before stopping")
            warming.join(WARM_UP_STOP_WAIT)

    def undefine(self, name: str, managed_save: bool, snapshots: bool,
                 nvram: bool, keep_nvram: bool) -> None:
        dom = self.lookup(name)
        if nvram and keep_nvram:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "nvram and keep_nvram exclude each other", "CONFLICTING_FLAGS")
        flags = ((libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE if managed_save else 0)
                 | (libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA if snapshots else 0)
                 | (libvirt.VIR_DOMAIN_UNDEFINE_NVRAM if nvram else 0)
                 | (libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if keep_nvram else 0))
        dom.undefineFlags(flags)

    def start(self, name: str, paused: bool, force_boot: bool) -> libvirt.virDomain:
        dom = self.lookup(name)
        # Checked here too because not every driver reports this as OPERATION_INVALID.
        if dom.isActive():
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' is already running",
                               "VIR_ERR_OPERATION_INVALID")
        dom.createWithFlags((libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
                            | (libvirt.VIR_DOMAIN_START_FORCE_BOOT if force_boot else 0))
        return dom

    def xml(self, name: str, inactive: bool, secure: bool, migratable: bool) -> str:
        return self.lookup(name).XMLDesc(
            (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
            | (libvirt.VIR_DOMAIN_XML_SECURE if secure else 0)
            | (libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0))

    def shutdown(self, dom: libvirt.virDomain, flags: int) -> None:
        dom.shutdownFlags(flags)

    def reboot(self, dom: libvirt.virDomain, flags: int) -> None:
        dom.reboot(flags)

    def reset(self, name: str) -> None:
        self.lookup(name).reset(0)

    def destroy(self, name: str, graceful: bool) -> None:
        self.lookup(name).destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL if graceful else 0)

    def suspend(self, name: str) -> None:
        self.lookup(name).suspend()

    def resume(self, name: str) -> None:
        self.lookup(name).resume()

    def set_autostart(self, name: str, autostart: bool) -> None:
        self.lookup(name).setAutostart(int(autostart))

    def set_vcpus(self, name: str, count: int, live: bool, config: bool,
                  maximum: bool) -> None:
        dom = self.lookup(name)
        dom.setVcpusFlags(count, _scope_flags(live, config)
                          | (libvirt.VIR_DOMAIN_VCPU_MAXIMUM if maximum else 0))

    def set_memory(self, name: str, memory_kib: int, live: bool, config: bool,
                   maximum: bool) -> None:
        dom = self.lookup(name)
        dom.setMemoryFlags(memory_kib, _scope_flags(live, config)
                           | (libvirt.VIR_DOMAIN_MEM_MAXIMUM if maximum else 0))

    # -- snapshots ------------------------------------------------------------

    def create_snapshot(self, name: str, xml: str, disk_only: bool, no_metadata: bool,
                        atomic: bool, quiesce: bool, live: bool = False,
                        reuse_external: bool = False,
                        halt: bool = False) -> libvirt.virDomainSnapshot:
        dom = self.lookup(name)
        flags = ((libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY if disk_only else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA if no_metadata else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC if atomic else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE if quiesce else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE if live else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT if reuse_external else 0)
                 | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_HALT if halt else 0))
        return self._submit("snapshot", dom.snapshotCreateXML, xml or "<domainsnapshot/>",
                            flags | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_VALIDATE,
                            root="domainsnapshot")

    def list_snapshots(self, name: str, flags: int = 0) -> list[libvirt.virDomainSnapshot]:
        """``flags``: virDomainSnapshotListFlags (convert_checkpoints builds them)."""
        return self.lookup(name).listAllSnapshots(flags)

    def snapshot(self, name: str, snapshot: str) -> libvirt.virDomainSnapshot:
        """Snapshot ``snapshot`` of domain ``name``."""
        return self.lookup(name).snapshotLookupByName(require(snapshot, "snapshot"))

    def revert_to_snapshot(self, name: str, snapshot: str, running: bool, paused: bool,
                           force: bool) -> None:
        dom = self.lookup(name)
        snap = dom.snapshotLookupByName(require(snapshot, "snapshot"))
        dom.revertToSnapshot(snap, (libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if running else 0)
                             | (libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED if paused else 0)
                             | (libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE if force else 0))

    def delete_snapshot(self, name: str, snapshot: str, children: bool,
                        metadata_only: bool) -> None:
        self.snapshot(name, snapshot).delete(
            (libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN if children else 0)
            | (libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0))

    def explain(self, dom: libvirt.virDomain) -> str:
        """Why a guest is paused, crashed or stopped for its own reasons
        (services/compute/backend_trouble.py)."""
        return backend_trouble.explain(dom, self._qemu_log_dir())

    def explain_event(self, dom: libvirt.virDomain) -> str:
        """The same for an event, on libvirt's event loop thread: QEMU's log only."""
        return backend_trouble.explain(dom, self._qemu_log_dir(), live=False)

    def _qemu_log_dir(self) -> Path | None:
        """Where QEMU's per-guest logs are: under an embedded root, or the system
        daemon's; None for another driver."""
        uri = self.connection.uri
        root = embedded_root(uri)
        if root is not None:
            return root / "log" / "qemu"
        if urlparse(uri).scheme.split("+")[0] == "qemu" and urlparse(uri).path == "/system":
            return Path("/var/log/libvirt/qemu")
        return None

    # -- console and graphics -------------------------------------------------

    def running(self, name: str) -> libvirt.virDomain:
        """A domain that must be running for what is asked of it."""
        return must_run(self.lookup(name))

    def open_console(self, name: str, device: str, force: bool) -> tuple[StreamSession, str]:
        """The console session and the console's alias."""
        dom = self.running(name)
        device = device or first_console(dom.XMLDesc(0))
        flags = (libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else 0) | libvirt.VIR_DOMAIN_CONSOLE_SAFE
        session = self.character_devices.open(
            (dom.UUIDString(), f"console {device}"), "console", force, self._new_stream,
            lambda stream: dom.openConsole(device or None, stream, flags))
        return session, device

    def open_channel(self, name: str, channel: str, force: bool) -> StreamSession:
        dom = self.running(name)
        require(channel, "channel")
        flags = libvirt.VIR_DOMAIN_CHANNEL_FORCE if force else 0
        return self.character_devices.open(
            (dom.UUIDString(), f"channel {channel}"), "channel", force, self._new_stream,
            lambda stream: dom.openChannel(channel, stream, flags))

    def _new_stream(self) -> libvirt.virStream:
        return self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)

    def open_graphics(self, name: str, index: int, skip_auth: bool) -> tuple[SocketSession, str]:
        """A connection to display ``index`` and its protocol."""
        dom = self.running(name)
        found = displays(dom.XMLDesc(0))
        if index >= len(found):
            raise ServiceError(grpc.StatusCode.NOT_FOUND,
                               f"domain '{dom.name()}' has {len(found)} graphics device(s); "
                               f"there is no index {index}", "NO_GRAPHICS")
        fd = dom.openGraphicsFD(index, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH
                                if skip_auth else 0)
        return SocketSession(fd), found[index].type

    def screenshot(self, name: str, screen: int) -> tuple[str, Generator[bytes, None, None]]:
        """The image's MIME type and its bytes."""
        dom = self.running(name)
        if not displays(dom.XMLDesc(0)):
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"domain '{dom.name()}' has no display", "NO_GRAPHICS")
        stream = self.conn.newStream(0)
        try:
            mime = dom.screenshot(stream, screen, 0)
        except BaseException:
            stream.abort()
            raise
        return mime, stream_chunks(stream)

    def send_key(self, name: str, code_set: int, hold_ms: int, codes: list[int]) -> None:
        self.running(name).sendKey(code_set, hold_ms, codes, len(codes), 0)

    def displays(self, name: str) -> list[Display]:
        return displays(self.running(name).XMLDesc(0))

    # -- events, statistics and host ------------------------------------------

    def register_events(self, conn: libvirt.virConnect, emit: Callable[..., None]) -> None:
        """Emit (domain, kind, *details) for every domain event libvirt 9.0 has, with
        the details of libvirt's callback: ("lifecycle", event, detail), ("reboot",),
        ("device_added", alias), ("io_error", path, alias, action, reason), ...
        (DOMAIN_EVENTS). Of two ids for one event, the later and fuller one."""
        event_callbacks.register(conn.domainEventRegisterAny, DOMAIN_EVENTS, emit)

    def capabilities(self, conn: libvirt.virConnect | None = None) -> Answer:
        return self.capabilities_cache.get(
            "capabilities", lambda: (conn or self.conn).getCapabilities())

    def domain_capabilities(self, emulator: str, arch: str, machine: str, virt_type: str,
                            conn: libvirt.virConnect | None = None) -> Answer:
        """Empty arguments are libvirt's defaults."""
        return self.capabilities_cache.get(
            ("domain", emulator, arch, machine, virt_type),
            lambda: (conn or self.conn).getDomainCapabilities(
                emulator or None, arch or None, machine or None, virt_type or None, 0))

    def node_info(self) -> list[Any]:
        """libvirt's virNodeGetInfo: model, memory (MiB), cpus, mhz, nodes, sockets,
        cores, threads."""
        return self.conn.getInfo()

    def versions(self) -> Versions:
        conn = self.conn
        return Versions(libvirt=conn.getLibVersion(), hypervisor_type=conn.getType(),
                        hypervisor=conn.getVersion(), uri=conn.getURI())

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
