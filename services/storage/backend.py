"""The storage service's libvirt calls: lookups, flag assembly and volume streams."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Generator, Iterable, Iterator

import grpc
import libvirt

from services.common import documents, event_callbacks
from services.common.backend import Backend, by_name_or_uuid, list_flags
from services.common.errors import ServiceError, require
from services.common.libvirt_connection import LibvirtConnection
from services.common.sandbox import ParseSandbox

#: Largest data chunk in either direction: what the service holds of a volume at a time.
CHUNK_BYTES = 1 << 20
#: What one libvirt download stream covers: at most this much is ever queued in memory.
DOWNLOAD_WINDOW = 8 * CHUNK_BYTES
#: Room for a chunk's message envelope (fields, tags) within max_message_bytes.
_ENVELOPE_BYTES = 1024

_POOL_LIST_FLAGS = (
    ("active", libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE,
     libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_INACTIVE),
    ("persistent", libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT,
     libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_TRANSIENT),
    ("autostart", libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_AUTOSTART,
     libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_NO_AUTOSTART),
)
#: pool type as in the XML ("iscsi-direct") -> libvirt's list flag
POOL_TYPES = {
    name.removeprefix("VIR_CONNECT_LIST_STORAGE_POOLS_").lower().replace("_", "-"): value
    for name, value in vars(libvirt).items()
    if name.startswith("VIR_CONNECT_LIST_STORAGE_POOLS_") and name not in {
        f"VIR_CONNECT_LIST_STORAGE_POOLS_{flag}" for flag in (
            "ACTIVE", "INACTIVE", "PERSISTENT", "TRANSIENT", "AUTOSTART", "NO_AUTOSTART")}
}


#: the pool types whose libvirt backend can discover sources (findPoolSources)
DISCOVERABLE_TYPES = ("gluster", "iscsi", "logical", "netfs")


def _invalid(message: str, reason: str = "INVALID_REQUEST") -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, reason)


def _source_spec(host: str, port: int, initiator_iqn: str) -> str | None:
    """The <source> document that tells libvirt where to look (as virsh
    find-storage-pool-sources-as writes it); None when nothing is given."""
    if not host and not initiator_iqn:
        return None
    source = ET.Element("source")
    if host:
        ET.SubElement(source, "host", {"name": host, **({"port": str(port)} if port else {})})
    if initiator_iqn:
        ET.SubElement(ET.SubElement(source, "initiator"), "iqn", {"name": initiator_iqn})
    return ET.tostring(source, encoding="unicode")


def _abort(stream: libvirt.virStream) -> None:
    """Abort a libvirt stream; one that already failed reports its error again."""
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()


class StorageBackend(Backend):
    def __init__(self, connection: LibvirtConnection, max_message_bytes: int) -> None:
        super().__init__(connection)
        #: download chunk size: 1 MiB unless the configured message limit is smaller
        self.chunk_bytes = max(1, min(CHUNK_BYTES, max_message_bytes - _ENVELOPE_BYTES))
        #: libvirt has no VALIDATE flag for creating a transient pool, and libvirt 9.0's
        #: storage driver refuses the one for volumes: the sandbox's define validates
        #: those documents against libvirt's schema
        self.sandbox = ParseSandbox()

    def close(self) -> None:
        self.sandbox.close()

    # -- pools ------------------------------------------------------------------

    def pool(self, name: str) -> libvirt.virStoragePool:
        """A pool by name or by UUID string."""
        conn = self.conn
        return by_name_or_uuid(name, conn.storagePoolLookupByUUIDString,
                               conn.storagePoolLookupByName, libvirt.VIR_ERR_NO_STORAGE_POOL)

    def list_pools(self, filters: dict[str, bool | None],
                   types: list[str]) -> list[libvirt.virStoragePool]:
        flags = list_flags(*((filters[field], yes, no) for field, yes, no in _POOL_LIST_FLAGS))
        for pool_type in types:
            if pool_type not in POOL_TYPES:
                raise _invalid(f"unknown pool type '{pool_type}' (known: "
                               f"{', '.join(sorted(POOL_TYPES))})", "UNKNOWN_POOL_TYPE")
            flags |= POOL_TYPES[pool_type]
        return self.conn.listAllStoragePools(flags)

    def define_pool(self, xml: str) -> libvirt.virStoragePool:
        return documents.submit(self.conn.storagePoolDefineXML, xml,
                                libvirt.VIR_STORAGE_POOL_DEFINE_VALIDATE, root="pool")

    def create_pool(self, xml: str, build: bool) -> libvirt.virStoragePool:
        """libvirt removes a transient pool that fails to start: nothing is left."""
        flags = libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD if build else 0
        return documents.submit(self.conn.storagePoolCreateXML, xml, flags, root="pool",
                                inspect=lambda _: self.sandbox.parse("pool", xml))

    def build_pool(self, name: str, overwrite: bool, no_overwrite: bool) -> None:
        if overwrite and no_overwrite:
            raise _invalid("overwrite and no_overwrite exclude each other", "CONFLICTING_FLAGS")
        self.pool(name).build((libvirt.VIR_STORAGE_POOL_BUILD_OVERWRITE if overwrite else 0)
                              | (libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE
                                 if no_overwrite else 0))

    def pool_xml(self, name: str, inactive: bool) -> str:
        return self.pool(name).XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE if inactive else 0)

    def start_pool(self, name: str, build: bool) -> libvirt.virStoragePool:
        pool = self.pool(name)
        pool.create(libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD if build else 0)
        return pool

    def stop_pool(self, name: str) -> None:
        self.pool(name).destroy()

    def delete_pool(self, name: str) -> None:
        self.pool(name).delete(0)

    def undefine_pool(self, name: str) -> None:
        self.pool(name).undefine()

    def refresh_pool(self, name: str) -> None:
        self.pool(name).refresh(0)

    def set_pool_autostart(self, name: str, autostart: bool) -> None:
        self.pool(name).setAutostart(int(autostart))

    def find_pool_sources(self, pool_type: str, host: str, port: int,
                          initiator_iqn: str) -> str:
        """libvirt's <sources> document. The type is checked here: libvirt's drivers
        answer an unknown or non-discovering type each with a different code."""
        if pool_type not in POOL_TYPES:
            raise _invalid(f"unknown pool type '{pool_type}' (known: "
                           f"{', '.join(sorted(POOL_TYPES))})", "UNKNOWN_POOL_TYPE")
        if pool_type not in DISCOVERABLE_TYPES:
            raise ServiceError(grpc.StatusCode.UNIMPLEMENTED,
                               f"pool type '{pool_type}' cannot discover sources (only "
                               f"{', '.join(DISCOVERABLE_TYPES)} can)",
                               "SOURCE_DISCOVERY_UNSUPPORTED")
        if port and not host:
            raise _invalid("port needs a host", "PORT_WITHOUT_HOST")
        return self.conn.findStoragePoolSources(
            pool_type, _source_spec(host, port, initiator_iqn), 0)

    def pool_capabilities(self) -> str:
        return self.conn.getStoragePoolCapabilities(0)

    def pool_by_target_path(self, path: str) -> libvirt.virStoragePool:
        if not require(path, "path").startswith("/"):
            raise _invalid(f"path must be absolute (got '{path}')", "RELATIVE_PATH")
        return self.conn.storagePoolLookupByTargetPath(path)

    def register_events(self, conn: libvirt.virConnect, emit: Callable[..., None]) -> None:
        """Emit (pool, "lifecycle", event, detail) and (pool, "refresh")."""
        event_callbacks.register(conn.storagePoolEventRegisterAny, {
            libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE: "lifecycle",
            libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH: "refresh",
        }, emit)

    # -- volumes ----------------------------------------------------------------

    def volume(self, pool: str, name: str) -> libvirt.virStorageVol:
        """A volume by pool and name, or with no pool by its path or key."""
        require(name, "name")
        if pool:
            return self.pool(pool).storageVolLookupByName(name)
        if name.startswith("/"):
            return self.conn.storageVolLookupByPath(name)
        return self.conn.storageVolLookupByKey(name)

    def list_volumes(self, pool: str) -> tuple[str, str, list[libvirt.virStorageVol]]:
        """The pool's name and UUID, and its volumes."""
        found = self.pool(pool)
        return found.name(), found.UUIDString(), found.listAllVolumes(0)

    def volume_xml(self, pool: str, name: str) -> str:
        return self.volume(pool, name).XMLDesc(0)

    def delete_volume(self, pool: str, name: str) -> None:
        self.volume(pool, name).delete(0)

    def create_volume(self, pool: str, xml: str,
                      prealloc_metadata: bool) -> libvirt.virStorageVol:
        target = self.pool(require(pool, "pool"))
        flags = libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if prealloc_metadata else 0
        return documents.submit(target.createXML, xml, flags, root="volume",
                                inspect=lambda _: self.sandbox.parse("volume", xml))

    def clone_volume(self, pool: str, name: str, target_pool: str, new_name: str, xml: str,
                     prealloc_metadata: bool, reflink: bool) -> libvirt.virStorageVol:
        """A copy of volume ``name`` in ``target_pool`` (empty: the source's pool),
        called ``new_name`` or else described by ``xml``."""
        if bool(new_name) == bool(xml):
            raise _invalid("set exactly one of new_name and xml", "CONFLICTING_FIELDS")
        source = self.volume(pool, name)
        target = (self.pool(target_pool) if target_pool
                  else source.storagePoolLookupByVolume())
        if new_name:
            # The source's definition under the new name, as virsh vol-clone does, but
            # without <allocation>: that is the source's disk usage rounded up to whole
            # blocks, and a raw copy would grow to it, becoming larger than its source.
            root = ET.fromstring(source.XMLDesc(0))
            name_element = root.find("name")
            assert name_element is not None, "libvirt's volume XML always has a <name>"
            name_element.text = new_name
            for allocation in root.findall("allocation"):
                root.remove(allocation)
            xml = ET.tostring(root, encoding="unicode")
        flags = ((libvirt.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA if prealloc_metadata else 0)
                 | (libvirt.VIR_STORAGE_VOL_CREATE_REFLINK if reflink else 0))
        return documents.submit(target.createXMLFrom, xml, source, flags, root="volume",
                                inspect=lambda _: self.sandbox.parse("volume", xml))

    def wipe(self, vol: libvirt.virStorageVol, algorithm: int) -> None:
        """Overwrite the volume's data with libvirt's wipe ``algorithm``."""
        vol.wipePattern(algorithm, 0)

    def resize(self, pool: str, name: str, capacity: int, allocate: bool, delta: bool,
               shrink: bool) -> libvirt.virStorageVol:
        vol = self.volume(pool, name)
        vol.resize(capacity, (libvirt.VIR_STORAGE_VOL_RESIZE_ALLOCATE if allocate else 0)
                   | (libvirt.VIR_STORAGE_VOL_RESIZE_DELTA if delta else 0)
                   | (libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if shrink else 0))
        return vol

    # -- volume contents --------------------------------------------------------

    def upload(self, pool: str, name: str, offset: int, length: int,
               chunks: Iterable[bytes]) -> tuple[libvirt.virStorageVol, int]:
        """Send each chunk to a libvirt upload stream as it arrives (reading the next
        one raises grpc.RpcError when the caller goes away).

        Any failure aborts the stream, so that libvirt does not take a partial upload
        for a complete one; the bytes written so far stay in the volume."""
        vol = self.volume(pool, name)
        stream = self.conn.newStream(0)
        vol.upload(stream, offset, length, 0)
        written = 0
        try:
            for data in chunks:
                if len(data) > CHUNK_BYTES:
                    raise _invalid(f"a data chunk holds {len(data)} bytes; at most "
                                   f"{CHUNK_BYTES} are allowed", "CHUNK_TOO_LARGE")
                if length and written + len(data) > length:
                    raise ServiceError(grpc.StatusCode.OUT_OF_RANGE,
                                       f"more than the announced length of {length} "
                                       "bytes was sent; the upload was aborted",
                                       "UPLOAD_TOO_LONG")
                written += len(data)
                while data:  # libvirt may take part of a chunk at a time
                    data = data[stream.send(data):]
            stream.finish()
        except grpc.RpcError:  # reading the next request: the client went away
            _abort(stream)
            raise ServiceError(grpc.StatusCode.CANCELLED,
                               f"the upload was cancelled after {written} bytes",
                               "UPLOAD_CANCELLED") from None
        except BaseException:
            _abort(stream)
            raise
        return vol, written

    def download(self, vol: libvirt.virStorageVol, offset: int,
                 length: int) -> Generator[tuple[int, bytes], None, None]:
        """(offset, data) chunks of the volume from ``offset`` for ``length`` bytes
        (0: to its end).

        libvirt's client library queues whatever the daemon sends on a stream, as fast
        as the daemon reads: one stream for a whole volume would pile up in our memory
        whenever the caller reads slower. So each libvirt stream covers one window of
        DOWNLOAD_WINDOW bytes, and the next starts once the caller has taken the last."""
        end = offset + length if length else None
        while end is None or offset < end:
            want = DOWNLOAD_WINDOW if end is None else min(DOWNLOAD_WINDOW, end - offset)
            got = 0
            for chunk in self._download_window(vol, offset, want):
                yield chunk
                got += len(chunk[1])
            offset += got
            if got < want:  # the end of the volume
                return

    def _download_window(self, vol: libvirt.virStorageVol, offset: int,
                         length: int) -> Iterator[tuple[int, bytes]]:
        """One libvirt download stream, aborted when the caller stops early (a cancelled
        call closes this generator)."""
        stream = self.conn.newStream(0)
        vol.download(stream, offset, length, 0)
        finished = False
        try:
            while data := stream.recv(self.chunk_bytes):
                yield offset, data
                offset += len(data)
            stream.finish()
            finished = True
        finally:
            if not finished:
                _abort(stream)
