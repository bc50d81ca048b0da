"""Migrating a domain to another libvirt host, and the tunables of its migrations.

A migration is a long job, as a save is: it runs through the jobs backend's guards
(services/compute/backend_jobs.py): a place among the domain's calls in libvirt, and
the call's end, which aborts libvirt's job (the guest runs on here). GetDomainJobInfo
sees it under way; AbortDomainJob aborts it.

The destination URI is checked before libvirt sees it: a qemu URI over one of a few
transports, naming the system or session driver; nothing else (no embedded root, no
other driver, no query parameters, which name local key files, sockets and remote
programs; no NUL or control character, no unbounded length). Peer-to-peer, the
source's libvirt connects to it (virDomainMigrateToURI3); directly, this service opens
it (virDomainMigrate3) and drives both sides.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import grpc
import libvirt

from services.common import documents
from services.common.call_end import CallWatch
from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend
from services.compute.backend_jobs import JobsBackend, _abort_job

#: the transports a destination URI may use (qemu: the local system driver)
SCHEMES = frozenset({"qemu", "qemu+ssh", "qemu+libssh", "qemu+libssh2", "qemu+tcp",
                     "qemu+tls", "qemu+unix"})
#: the drivers a destination URI may name (libvirt refuses embedded roots anyway)
PATHS = frozenset({"/system", "/session"})
MAX_URI = 1024
#: libvirt's QEMU driver's largest bandwidth (MiB/s): what fits in bytes/s as int64
MAX_BANDWIDTH = (2**63 - 1) >> 20
_ULONG_MAX = 2**64 - 1
#: the parameters that are domain documents
_DOCUMENTS = (libvirt.VIR_MIGRATE_PARAM_DEST_XML, libvirt.VIR_MIGRATE_PARAM_PERSIST_XML)
#: the parameters that are URIs or addresses: text without control characters
_TEXTS = (libvirt.VIR_MIGRATE_PARAM_DEST_NAME, libvirt.VIR_MIGRATE_PARAM_URI,
          libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS, libvirt.VIR_MIGRATE_PARAM_GRAPHICS_URI,
          libvirt.VIR_MIGRATE_PARAM_DISKS_URI, libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION)
COMPRESSION_METHODS = frozenset({"xbzrle", "mt", "zlib", "zstd"})
#: a disk target name (vda, sdb, hdc) and its largest length
_MAX_TEXT = 1024


def _plain_text(value: str, field: str) -> None:
    if len(value) > _MAX_TEXT:
        raise invalid(f"{field} is longer than {_MAX_TEXT} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7f for char in value):
        raise invalid(f"{field} holds a NUL or control character")


def check_destination_uri(uri: str) -> str:
    """``uri`` once it is a libvirt URI a domain may be migrated to."""
    require(uri, "destination_uri")
    if len(uri) > MAX_URI:
        raise invalid(f"destination_uri is longer than {MAX_URI} characters", "INVALID_URI")
    if any(ord(char) < 0x21 or ord(char) == 0x7f for char in uri):
        raise invalid("destination_uri holds a NUL, space or control character",
                       "INVALID_URI")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError as error:
        raise invalid(f"destination_uri {uri!r} is malformed: {error}", "INVALID_URI") from None
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise invalid(f"destination_uri {uri!r}: no query or fragment (libvirt's URI "
                       "parameters name local files and programs)", "INVALID_URI")
    if parts.scheme not in SCHEMES:
        raise invalid(f"destination_uri {uri!r}: the scheme must be one of "
                       f"{', '.join(sorted(SCHEMES))}", "INVALID_URI")
    if parts.path not in PATHS:
        raise invalid(f"destination_uri {uri!r} must name /system or /session",
                       "INVALID_URI")
    if parts.scheme == "qemu" and parts.netloc:
        raise invalid(f"destination_uri {uri!r}: a remote host needs a transport "
                       "(qemu+ssh, qemu+tcp, qemu+tls, ...)", "INVALID_URI")
    if parts.scheme in ("qemu+unix",) and parts.hostname:
        raise invalid(f"destination_uri {uri!r}: qemu+unix names no host", "INVALID_URI")
    if parts.scheme not in ("qemu", "qemu+unix") and not parts.hostname:
        raise invalid(f"destination_uri {uri!r} names no host", "INVALID_URI")
    return uri


def check_flags(flags: int) -> None:
    """What libvirt would refuse later, or not say clearly."""
    def has(flag: int) -> bool:
        return bool(flags & flag)

    if has(libvirt.VIR_MIGRATE_NON_SHARED_DISK) and has(libvirt.VIR_MIGRATE_NON_SHARED_INC):
        raise invalid("non_shared_disk and non_shared_inc exclude each other",
                       "CONFLICTING_FLAGS")
    if has(libvirt.VIR_MIGRATE_TUNNELLED) and not has(libvirt.VIR_MIGRATE_PEER2PEER):
        raise invalid("tunnelled needs peer2peer", "CONFLICTING_FLAGS")
    if has(libvirt.VIR_MIGRATE_OFFLINE) and (has(libvirt.VIR_MIGRATE_LIVE)
                                             or not has(libvirt.VIR_MIGRATE_PERSIST_DEST)):
        raise invalid("offline needs persist_dest and excludes live", "CONFLICTING_FLAGS")
    if has(libvirt.VIR_MIGRATE_TUNNELLED) and (has(libvirt.VIR_MIGRATE_PARALLEL)
                                               or has(libvirt.VIR_MIGRATE_TLS)):
        raise invalid("tunnelled excludes parallel and tls", "CONFLICTING_FLAGS")


def check_parameters(params: Mapping[str, Any], flags: int) -> dict[str, Any]:
    """``params`` once libvirt-python can convert them and their documents and texts
    are fit for libvirt."""
    for name in _DOCUMENTS:
        if name in params:
            documents.check(params[name], f"parameters.{name.replace('-', '_')}",
                            root="domain")
    for name in _TEXTS:
        if name in params:
            _plain_text(params[name], f"parameters.{name.replace('-', '_')}")
    for name in (libvirt.VIR_MIGRATE_PARAM_BANDWIDTH,
                 libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY):
        if params.get(name, 0) > MAX_BANDWIDTH:
            raise invalid(f"{name}: at most {MAX_BANDWIDTH} MiB/s")
    disks = params.get(libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS, [])
    for disk in disks:
        require(disk, "parameters.disks[]")
        _plain_text(disk, "parameters.disks[]")
    if len(set(disks)) != len(disks):
        raise invalid("parameters.disks names a disk twice", "DUPLICATE_PARAMETER")
    if disks and not flags & (libvirt.VIR_MIGRATE_NON_SHARED_DISK
                              | libvirt.VIR_MIGRATE_NON_SHARED_INC):
        raise invalid("parameters.disks goes with non_shared_disk or non_shared_inc",
                       "CONFLICTING_FLAGS")
    methods = params.get(libvirt.VIR_MIGRATE_PARAM_COMPRESSION, [])
    unknown = set(methods) - COMPRESSION_METHODS
    if unknown:
        raise invalid(f"parameters.compression: unknown method(s) {sorted(unknown)}; "
                       f"libvirt has {', '.join(sorted(COMPRESSION_METHODS))}")
    if methods and not flags & libvirt.VIR_MIGRATE_COMPRESSED:
        raise invalid("parameters.compression goes with compressed", "CONFLICTING_FLAGS")
    if (params.get(libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS)
            and not flags & libvirt.VIR_MIGRATE_PARALLEL):
        raise invalid("parameters.parallel_connections goes with parallel",
                       "CONFLICTING_FLAGS")
    for name in (libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL,
                 libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_THREADS,
                 libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_DTHREADS,
                 libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL,
                 libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT):
        if params.get(name, 0) < 0:
            raise invalid(f"{name}: negative")
    if params.get(libvirt.VIR_MIGRATE_PARAM_DISKS_PORT, 0) > 65535:
        raise invalid(f"{libvirt.VIR_MIGRATE_PARAM_DISKS_PORT}: not a port")
    return dict(params)


def _unreachable(uri: str, error: libvirt.libvirtError) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE,
                        f"cannot connect to the destination {uri}: "
                        f"{error.get_error_message()}", "DESTINATION_UNREACHABLE")


#: libvirt's codes for a destination it could not connect to (its own refusals, such
#: as an authentication's, keep their codes)
_UNREACHABLE = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC)


@contextlib.contextmanager
def _destination(uri: str) -> Iterator[libvirt.virConnect]:
    """A connection of this service's to the destination, for a direct migration. A
    local qemu:///system goes through libvirt's remote driver (qemu+unix): in a
    process running the QEMU driver embedded, qemu:/// would name that driver."""
    local = urlsplit(uri).scheme == "qemu"
    target = "qemu+unix" + uri[len("qemu"):] if local else uri
    try:
        conn = libvirt.open(target)
    except libvirt.libvirtError as error:
        if error.get_error_code() in _UNREACHABLE:
            raise _unreachable(uri, error) from None
        raise
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _bounded(value: int, largest: int, field: str) -> int:
    if value > largest:
        raise invalid(f"{field}: {value} is above the largest, {largest}")
    return value


class MigrationBackend:
    """The libvirt side of the migration RPCs."""

    def __init__(self, backend: ComputeBackend, jobs: JobsBackend) -> None:
        self.compute = backend
        self.jobs = jobs

    def migrate(self, name: str, uri: str, params: Mapping[str, Any], flags: int,
                watch: CallWatch) -> None:
        """Migrate domain ``name`` to ``uri``, a job the call's end aborts."""
        check_destination_uri(uri)
        check_flags(flags)
        checked = check_parameters(params, flags)
        for parameter in _DOCUMENTS:  # parsed apart first, as DefineDomain's documents
            if parameter in checked:
                self.compute.sandbox.parse("domain", checked[parameter])
        with self.jobs._domain(name) as dom:
            if not dom.isActive() and not flags & libvirt.VIR_MIGRATE_OFFLINE:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"domain '{dom.name()}' is not running (offline "
                                   "migrates a definition)", "VIR_ERR_OPERATION_INVALID")
            doing = f"migrating domain '{dom.name()}' to {uri}"
            if flags & libvirt.VIR_MIGRATE_PEER2PEER:
                with watch.guard(doing, _abort_job(dom)), documents.submitted():
                    dom.migrateToURI3(uri, checked, flags)
                return
            with _destination(uri) as dconn, watch.guard(doing, _abort_job(dom)), \
                    documents.submitted():
                dom.migrate3(dconn, checked, flags)

    def max_speed(self, name: str, postcopy: bool) -> int:
        dom = self.compute.lookup(name)
        return _answer(dom.migrateGetMaxSpeed(_postcopy(postcopy)))

    def set_max_speed(self, name: str, bandwidth: int, postcopy: bool) -> None:
        _bounded(bandwidth, MAX_BANDWIDTH, "bandwidth_mib_per_s")
        self.compute.lookup(name).migrateSetMaxSpeed(bandwidth, _postcopy(postcopy))

    def max_downtime(self, name: str) -> int:
        dom = self.compute.lookup(name)
        return _answer(dom.migrateGetMaxDowntime(0))

    def set_max_downtime(self, name: str, downtime_ms: int) -> None:
        if not downtime_ms:
            raise invalid("downtime_ms: at least 1", "MISSING_FIELD")
        _bounded(downtime_ms, _ULONG_MAX, "downtime_ms")
        self.compute.lookup(name).migrateSetMaxDowntime(downtime_ms, 0)

    def compression_cache(self, name: str) -> int:
        dom = self.compute.lookup(name)
        return _answer(dom.migrateGetCompressionCache(0))

    def set_compression_cache(self, name: str, size: int) -> None:
        """QEMU takes a power of two of at least a page (libvirt passes it on)."""
        if not size:
            raise invalid("cache_bytes: at least 1", "MISSING_FIELD")
        _bounded(size, _ULONG_MAX, "cache_bytes")
        if size & (size - 1) or size < mmap.PAGESIZE:
            raise invalid(f"cache_bytes: {size} is not a power of two of at least "
                           f"{mmap.PAGESIZE}")
        self.compute.lookup(name).migrateSetCompressionCache(size, 0)

    def start_post_copy(self, name: str) -> None:
        self.compute.lookup(name).migrateStartPostCopy(0)


def _answer(value: int | None) -> int:
    """libvirt-python's migration getters answer None where libvirt failed (their
    wrappers return the C call's -1 as nothing): the failure is libvirt's last
    error, of this thread. The caller keeps its domain object meanwhile: freeing one
    (virDomainFree) resets that error."""
    if value is None:
        raise libvirt.libvirtError("the libvirt call failed")
    return int(value)


def _postcopy(postcopy: bool) -> int:
    return libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY if postcopy else 0
