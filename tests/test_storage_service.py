"""The storage service over its UNIX socket.

Most tests run against the host's libvirt daemon (storage:///system) with a dir
pool in a temporary directory, named "vmtest-<hex6>" and removed afterwards
whatever happens; the pagination and filter test uses the test driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest

from services.common.daemon import Daemon
from services.storage import SPEC
from services.storage.backend import CHUNK_BYTES, DOWNLOAD_WINDOW
from tests.conftest import XML_REFUSED, running_service
from tests.test_compute_service import error_of, reason_of
from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh.storage.v1 import storage_service_pb2_grpc as pb_grpc

Stub = pb_grpc.StorageServiceStub
SYSTEM = "storage:///system"
MIB = 1 << 20


def unique(prefix: str = "vmtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def pool_xml(name: str, path: Path) -> str:
    return (f"<pool type='dir'><name>{name}</name>"
            f"<target><path>{path}</path></target></pool>")


def volume_xml(name: str, capacity: int, unit: str = "bytes") -> str:
    return (f"<volume><name>{name}</name><capacity unit='{unit}'>{capacity}</capacity>"
            "<target><format type='raw'/></target></volume>")


def remove_host_pool(name: str) -> None:
    """Undo whatever a test left of pool ``name`` on the host, straight through libvirt."""
    conn = libvirt.open(SYSTEM)
    try:
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            return
        if pool.isActive():
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
            with contextlib.suppress(libvirt.libvirtError):
                pool.delete(0)
            pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()
    finally:
        conn.close()


@pytest.fixture
def storage(tmp_path: Path, host_libvirtd: None) -> Iterator[Daemon]:
    with running_service(tmp_path / "state", SYSTEM, spec=SPEC, grace_period=0.5) as daemon:
        yield daemon


@pytest.fixture
def stub(storage: Daemon) -> Iterator[Stub]:
    with grpc.insecure_channel(f"unix:{storage.socket_path}") as channel:
        yield Stub(channel)


@pytest.fixture
def pool(stub: Stub, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A started dir pool on the host: (name, directory)."""
    name, path = unique(), tmp_path / "pool"
    try:
        stub.DefineStoragePool(pb.DefineStoragePoolRequest(xml=pool_xml(name, path)))
        stub.StartStoragePool(pb.StartStoragePoolRequest(name=name, build=True))
        yield name, path
    finally:
        remove_host_pool(name)


def pool_names(stub: Stub, **filters: Any) -> list[str]:
    return [p.name for p in stub.ListStoragePools(
        pb.ListStoragePoolsRequest(page_size=1000, **filters)).storage_pools]


def volume_names(stub: Stub, pool: str) -> list[str]:
    return [v.name for v in stub.ListStorageVolumes(
        pb.ListStorageVolumesRequest(pool=pool)).storage_volumes]


def upload_requests(pool: str, name: str, data: bytes, chunk: int = CHUNK_BYTES,
                    offset: int = 0, length: int = 0
                    ) -> Iterator[pb.UploadStorageVolumeRequest]:
    yield pb.UploadStorageVolumeRequest(pool=pool, name=name, offset=offset, length=length)
    for start in range(0, len(data), chunk):
        yield pb.UploadStorageVolumeRequest(data=data[start:start + chunk])


def download(stub: Stub, pool: str, name: str, offset: int = 0, length: int = 0) -> bytes:
    chunks = stub.DownloadStorageVolume(pb.DownloadStorageVolumeRequest(
        pool=pool, name=name, offset=offset, length=length), timeout=120)
    data = bytearray()
    for chunk in chunks:
        assert chunk.offset == offset + len(data)
        assert 0 < len(chunk.data) <= CHUNK_BYTES
        data += chunk.data
    return bytes(data)


def test_pool_lifecycle(stub: Stub, tmp_path: Path) -> None:
    name, path = unique(), tmp_path / "pool"
    try:
        defined = stub.DefineStoragePool(pb.DefineStoragePoolRequest(
            xml=pool_xml(name, path))).storage_pool
        assert defined.name == name and defined.type == "dir" and defined.persistent
        assert defined.state == pb.STORAGE_POOL_STATE_INACTIVE
        assert defined.target_path == str(path)
        assert name in pool_names(stub, active=False, types=["dir"])
        assert name not in pool_names(stub, active=True)
        assert name not in pool_names(stub, types=["logical"])
        by_uuid = stub.GetStoragePool(pb.GetStoragePoolRequest(name=defined.uuid))
        assert by_uuid.storage_pool.name == name

        assert not path.exists()
        stub.BuildStoragePool(pb.BuildStoragePoolRequest(name=name))
        assert path.is_dir()
        started = stub.StartStoragePool(pb.StartStoragePoolRequest(name=name)).storage_pool
        assert started.state == pb.STORAGE_POOL_STATE_RUNNING and started.capacity_bytes > 0
        assert name in pool_names(stub, active=True)
        error = error_of(stub.StartStoragePool, pb.StartStoragePoolRequest(name=name))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

        stub.SetStoragePoolAutostart(pb.SetStoragePoolAutostartRequest(name=name,
                                                                       autostart=True))
        assert stub.GetStoragePool(pb.GetStoragePoolRequest(name=name)).storage_pool.autostart
        assert name in pool_names(stub, autostart=True)
        stub.SetStoragePoolAutostart(pb.SetStoragePoolAutostartRequest(name=name))
        assert name in pool_names(stub, autostart=False)
        xml = stub.GetStoragePoolXML(pb.GetStoragePoolXMLRequest(name=name)).xml
        assert f"<name>{name}</name>" in xml and str(path) in xml

        # a file created behind libvirt's back shows up after a refresh
        (path / "behind.img").write_bytes(b"\0" * 4096)
        assert volume_names(stub, name) == []
        stub.RefreshStoragePool(pb.RefreshStoragePoolRequest(name=name))
        assert volume_names(stub, name) == ["behind.img"]
        by_path = stub.GetStorageVolume(pb.GetStorageVolumeRequest(
            name=str(path / "behind.img"))).storage_volume
        assert (by_path.pool, by_path.name, by_path.capacity_bytes) == (name, "behind.img", 4096)

        stub.StopStoragePool(pb.StopStoragePoolRequest(name=name))
        assert name in pool_names(stub, active=False)
        error = error_of(stub.ListStorageVolumes, pb.ListStorageVolumesRequest(pool=name))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        error = error_of(stub.DeleteStoragePool, pb.DeleteStoragePoolRequest(name=name))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # directory not empty
        assert path.is_dir()
        (path / "behind.img").unlink()
        stub.DeleteStoragePool(pb.DeleteStoragePoolRequest(name=name))
        assert not path.exists()
        stub.UndefineStoragePool(pb.UndefineStoragePoolRequest(name=name))
        assert name not in pool_names(stub)
    finally:
        remove_host_pool(name)


def test_volume_contents_round_trip(stub: Stub, pool: tuple[str, Path]) -> None:
    name, path = pool
    size = 9 * MIB + 12345  # more than one download window, not a whole number of them
    created = stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(
        pool=name, xml=volume_xml("data.img", size))).storage_volume
    assert (created.pool, created.name, created.path) == (name, "data.img",
                                                          str(path / "data.img"))
    assert created.type == pb.STORAGE_VOLUME_TYPE_FILE and created.format == "raw"
    assert created.capacity_bytes == size and created.key == created.path

    payload = os.urandom(size)
    # odd chunk sizes, so chunks and libvirt's packets do not line up
    reply = stub.UploadStorageVolume(upload_requests(name, "data.img", payload, 700_001,
                                                     length=size))
    assert reply.bytes_written == size and reply.storage_volume.capacity_bytes == size
    assert (path / "data.img").read_bytes() == payload
    assert download(stub, name, "data.img") == payload
    assert download(stub, name, "data.img", offset=7 * MIB + 7, length=2 * MIB) == \
        payload[7 * MIB + 7:9 * MIB + 7]

    # an upload into the middle changes just that range
    patch = os.urandom(3000)
    stub.UploadStorageVolume(upload_requests(name, "data.img", patch, offset=4096))
    payload = payload[:4096] + patch + payload[4096 + len(patch):]
    assert hashlib.sha256(download(stub, name, "data.img")).digest() == \
        hashlib.sha256(payload).digest()

    clone = stub.CloneStorageVolume(pb.CloneStorageVolumeRequest(
        pool=name, name="data.img", new_name="copy.img")).storage_volume
    assert clone.name == "copy.img" and clone.path == str(path / "copy.img")
    assert download(stub, name, "copy.img") == payload

    resized = stub.ResizeStorageVolume(pb.ResizeStorageVolumeRequest(
        pool=name, name="copy.img", capacity_bytes=10 * MIB)).storage_volume
    assert resized.capacity_bytes == 10 * MIB
    grown = stub.ResizeStorageVolume(pb.ResizeStorageVolumeRequest(
        pool=name, name="copy.img", capacity_bytes=MIB, delta=True)).storage_volume
    assert grown.capacity_bytes == 11 * MIB
    assert download(stub, name, "copy.img", length=len(payload)) == payload
    error = error_of(stub.ResizeStorageVolume, pb.ResizeStorageVolumeRequest(
        pool=name, name="copy.img", capacity_bytes=MIB))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # smaller without shrink
    assert stub.GetStorageVolume(pb.GetStorageVolumeRequest(
        pool=name, name="copy.img")).storage_volume.capacity_bytes == 11 * MIB

    stub.WipeStorageVolume(pb.WipeStorageVolumeRequest(pool=name, name="data.img"))
    wiped = download(stub, name, "data.img")
    # libvirt wipes whole allocated blocks, which may lengthen the file a little
    assert len(wiped) >= size and wiped.count(0) == len(wiped)
    assert download(stub, name, "copy.img", length=len(payload)) == payload  # untouched

    xml = stub.GetStorageVolumeXML(pb.GetStorageVolumeXMLRequest(pool=name,
                                                                 name="copy.img")).xml
    assert "<name>copy.img</name>" in xml
    assert volume_names(stub, name) == ["copy.img", "data.img"]
    for volume in ("copy.img", "data.img"):
        stub.DeleteStorageVolume(pb.DeleteStorageVolumeRequest(pool=name, name=volume))
    assert volume_names(stub, name) == [] and list(path.iterdir()) == []


def test_bad_input_gets_precise_status_and_leaves_nothing(stub: Stub, pool: tuple[str, Path],
                                                          tmp_path: Path) -> None:
    name, path = pool
    before = pool_names(stub)
    other = unique()
    for xml in ("<pool type='dir'><name>", "<pool type='bogus'><name>x</name></pool>",
                f"<pool type='dir'><name>{other}</name></pool>"):
        error = error_of(stub.DefineStoragePool, pb.DefineStoragePoolRequest(xml=xml))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, xml
        assert reason_of(error) in XML_REFUSED
    error = error_of(stub.DefineStoragePool, pb.DefineStoragePoolRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "xml" in str(error.details())
    error = error_of(stub.DefineStoragePool, pb.DefineStoragePoolRequest(
        xml=pool_xml(name, tmp_path / "elsewhere")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # the name is taken
    error = error_of(stub.DefineStoragePool, pb.DefineStoragePoolRequest(
        xml=pool_xml(other, path)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # the directory is taken
    error = error_of(stub.CreateStoragePool, pb.CreateStoragePoolRequest(
        xml=pool_xml(other, tmp_path / "never-built")))
    # cannot start: the directory was never built (a precondition), and nothing is left
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert pool_names(stub) == before

    error = error_of(stub.GetStoragePool, pb.GetStoragePoolRequest(name=unique("nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) == "VIR_ERR_NO_STORAGE_POOL"
    error = error_of(stub.GetStoragePool, pb.GetStoragePoolRequest(name=str(uuid.uuid4())))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = error_of(stub.ListStoragePools, pb.ListStoragePoolsRequest(types=["floppy"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "floppy" in str(error.details())
    error = error_of(stub.BuildStoragePool, pb.BuildStoragePoolRequest(
        name=name, overwrite=True, no_overwrite=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(pool=name,
                                                           xml=volume_xml("v.img", 4096)))
    for xml in ("<volume><name>", "<volume><name>x.img</name></volume>"):
        error = error_of(stub.CreateStorageVolume, pb.CreateStorageVolumeRequest(pool=name,
                                                                                 xml=xml))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, xml
    error = error_of(stub.CreateStorageVolume, pb.CreateStorageVolumeRequest(
        pool=name, xml=volume_xml("v.img", 4096)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(error) == "VIR_ERR_STORAGE_VOL_EXIST"
    (path / "stray.img").write_bytes(b"keep me")  # not refreshed: libvirt does not know it
    error = error_of(stub.CreateStorageVolume, pb.CreateStorageVolumeRequest(
        pool=name, xml=volume_xml("stray.img", 4096)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (path / "stray.img").read_bytes() == b"keep me"
    error = error_of(stub.CreateStorageVolume, pb.CreateStorageVolumeRequest(
        pool=unique("nope"), xml=volume_xml("w.img", 4096)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = error_of(stub.GetStorageVolume, pb.GetStorageVolumeRequest(pool=name, name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) == "VIR_ERR_NO_STORAGE_VOL"
    error = error_of(stub.GetStorageVolume, pb.GetStorageVolumeRequest(name="/no/such/path"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = error_of(stub.CloneStorageVolume, pb.CloneStorageVolumeRequest(
        pool=name, name="v.img", new_name="c.img", xml=volume_xml("c.img", 4096)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.CloneStorageVolume, pb.CloneStorageVolumeRequest(
        pool=name, name="v.img", new_name="v.img"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = error_of(stub.WipeStorageVolume, pb.WipeStorageVolumeRequest(
        pool=name, name="v.img", algorithm=99))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert volume_names(stub, name) == ["v.img"]  # nothing half-created


def test_upload_limits_and_errors(stub: Stub, pool: tuple[str, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    name, path = pool
    aborted = _count_aborts(monkeypatch)
    stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(pool=name,
                                                           xml=volume_xml("u.img", MIB)))
    error = error_of(stub.UploadStorageVolume, upload_requests(
        name, "u.img", b"a" * 1200, chunk=600, length=1000))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and "1000" in str(error.details())
    assert aborted() == 1
    error = error_of(stub.UploadStorageVolume, upload_requests(
        name, "u.img", b"b" * (CHUNK_BYTES + 1), chunk=CHUNK_BYTES + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(error) == \
        "CHUNK_TOO_LARGE"
    assert aborted() == 2
    error = error_of(stub.UploadStorageVolume, iter(()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.UploadStorageVolume, upload_requests(name, "nope.img", b"x"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # exactly `length` bytes is fine
    reply = stub.UploadStorageVolume(upload_requests(name, "u.img", b"c" * 1000, chunk=300,
                                                     length=1000))
    assert reply.bytes_written == 1000
    assert download(stub, name, "u.img", length=1000) == b"c" * 1000


def _count_aborts(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Spy on libvirt stream aborts in this (the service's) process."""
    calls: queue.Queue[None] = queue.Queue()
    original = libvirt.virStream.abort

    def abort(self: libvirt.virStream) -> None:
        calls.put(None)
        original(self)

    monkeypatch.setattr(libvirt.virStream, "abort", abort)

    def count(wait_for: int = 0) -> int:
        deadline = time.monotonic() + 30  # hang guard only
        while calls.qsize() < wait_for and time.monotonic() < deadline:
            time.sleep(0.05)
        return calls.qsize()

    return count


def test_cancelled_transfers_abort_the_libvirt_stream(stub: Stub, pool: tuple[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = pool
    aborted = _count_aborts(monkeypatch)
    # Sparse and far bigger than any flow-control window: the download cannot have
    # finished by the time the client cancels, however slow the client is.
    size = 1024 * MIB
    stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(pool=name,
                                                           xml=volume_xml("big.img", size)))
    chunks = stub.DownloadStorageVolume(pb.DownloadStorageVolumeRequest(pool=name,
                                                                        name="big.img"))
    assert len(next(chunks).data) > 0
    chunks.cancel()
    assert aborted(wait_for=1) == 1

    written = threading.Event()
    original_send = libvirt.virStream.send

    def send(self: libvirt.virStream, data: bytes) -> int:
        result = original_send(self, data)
        written.set()
        return int(result)

    monkeypatch.setattr(libvirt.virStream, "send", send)
    release = threading.Event()

    def slow_upload() -> Iterator[pb.UploadStorageVolumeRequest]:
        yield pb.UploadStorageVolumeRequest(pool=name, name="big.img", data=b"x" * 1000)
        release.wait(30)

    future = stub.UploadStorageVolume.future(slow_upload())
    # Cancel only once the service has its libvirt stream open and written to it:
    # a cancel before it read the first message has no stream to abort.
    assert written.wait(30)
    future.cancel()
    release.set()
    assert aborted(wait_for=2) == 2
    # the service is fine afterwards
    assert volume_names(stub, name) == ["big.img"]


def test_small_message_limit_gives_small_chunks(tmp_path: Path, host_libvirtd: None,
                                                pool: tuple[str, Path], stub: Stub) -> None:
    name, _ = pool
    payload = os.urandom(DOWNLOAD_WINDOW)  # exactly one window: the next one is empty
    stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(pool=name,
                                                           xml=volume_xml("s.img", len(payload))))
    stub.UploadStorageVolume(upload_requests(name, "s.img", payload))
    limit = 200_000
    with running_service(tmp_path / "small", SYSTEM, spec=SPEC, grace_period=0.5,
                         max_message_bytes=limit) as small, \
            grpc.insecure_channel(f"unix:{small.socket_path}") as channel:
        chunks = list(Stub(channel).DownloadStorageVolume(
            pb.DownloadStorageVolumeRequest(pool=name, name="s.img"), timeout=60))
    assert max(len(chunk.data) for chunk in chunks) <= limit - 1024
    assert b"".join(chunk.data for chunk in chunks) == payload


def test_pool_events(stub: Stub, tmp_path: Path) -> None:
    name, path = unique(), tmp_path / "events"
    events = stub.WatchStoragePoolEvents(pb.WatchStoragePoolEventsRequest(names=[name]),
                                         timeout=60)
    events.initial_metadata()  # subscribed
    try:
        stub.DefineStoragePool(pb.DefineStoragePoolRequest(xml=pool_xml(name, path)))
        stub.BuildStoragePool(pb.BuildStoragePoolRequest(name=name))
        stub.StartStoragePool(pb.StartStoragePoolRequest(name=name))
        stub.RefreshStoragePool(pb.RefreshStoragePoolRequest(name=name))
        stub.StopStoragePool(pb.StopStoragePoolRequest(name=name))
        stub.UndefineStoragePool(pb.UndefineStoragePoolRequest(name=name))
        seen = []
        for event in events:
            assert event.name == name
            kind = event.WhichOneof("event")
            seen.append(pb.StoragePoolLifecycleEventType.Name(event.lifecycle.type)
                        .removeprefix("STORAGE_POOL_LIFECYCLE_EVENT_TYPE_")
                        if kind == "lifecycle" else str(kind).upper())
            if seen[-1] == "UNDEFINED":
                break
        assert seen == ["DEFINED", "CREATED", "STARTED", "REFRESH", "STOPPED", "UNDEFINED"]
    finally:
        events.cancel()
        remove_host_pool(name)


TEST_NODE = """<node>
  <pool type='dir'><name>seed</name><target><path>/seed</path></target></pool>
</node>
"""


def test_pagination_and_filters_on_the_test_driver(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE)
    with running_service(tmp_path, f"test://{node}", spec=SPEC, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        for i in range(5):
            source = "" if i % 2 else f"<source><device path='/dev/fake{i}'/></source>"
            stub.DefineStoragePool(pb.DefineStoragePoolRequest(
                xml=f"<pool type='{'dir' if i % 2 else 'fs'}'><name>p{i}</name>{source}"
                    f"<target><path>/p{i}</path></target></pool>"))
        pages, token = [], ""
        while True:
            reply = stub.ListStoragePools(pb.ListStoragePoolsRequest(page_size=2,
                                                                     page_token=token))
            pages.append([p.name for p in reply.storage_pools])
            token = reply.next_page_token
            if not token:
                break
        assert pages == [["p0", "p1"], ["p2", "p3"], ["p4", "seed"]]
        assert pool_names(stub, types=["fs"]) == ["p0", "p2", "p4"]
        assert pool_names(stub, types=["fs", "dir"], active=True) == ["seed"]
        assert pool_names(stub, active=False, persistent=True) == [f"p{i}" for i in range(5)]
        reply = stub.ListStoragePools(pb.ListStoragePoolsRequest(page_size=2))
        error = error_of(stub.ListStoragePools, pb.ListStoragePoolsRequest(
            page_size=2, page_token=reply.next_page_token, active=True))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # other filters


def test_find_pool_sources_on_the_test_driver(tmp_path: Path) -> None:
    """The test driver answers canned sources for logical and netfs pools."""
    with running_service(tmp_path, "test:///default", spec=SPEC, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        found = stub.FindStoragePoolSources(pb.FindStoragePoolSourcesRequest(type="logical"))
        assert [(s.name, list(s.devices), s.format) for s in found.sources] == [
            ("testvg1", ["/dev/sda20"], "lvm2"), ("testvg2", ["/dev/sda21"], "lvm2")]
        assert found.xml.startswith("<sources>")
        found = stub.FindStoragePoolSources(pb.FindStoragePoolSourcesRequest(
            type="netfs", host="nfs.example.org"))
        assert [(list(s.hosts), s.dir, s.format) for s in found.sources] == [
            (["nfs.example.org"], "/testshare", "nfs")]

        for request, code, reason in (
                (pb.FindStoragePoolSourcesRequest(type="floppy"),
                 grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_POOL_TYPE"),
                (pb.FindStoragePoolSourcesRequest(type="dir"),
                 grpc.StatusCode.UNIMPLEMENTED, "SOURCE_DISCOVERY_UNSUPPORTED"),
                (pb.FindStoragePoolSourcesRequest(type="netfs"),
                 grpc.StatusCode.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG"),
                (pb.FindStoragePoolSourcesRequest(type="netfs", port=2049),
                 grpc.StatusCode.INVALID_ARGUMENT, "PORT_WITHOUT_HOST")):
            error = error_of(stub.FindStoragePoolSources, request)
            assert (error.code(), reason_of(error)) == (code, reason), request
        assert error_of(stub.GetStoragePoolCapabilities, pb.GetStoragePoolCapabilitiesRequest(
            )).code() == grpc.StatusCode.UNIMPLEMENTED
        assert error_of(stub.LookupStoragePoolByTargetPath, pb.LookupStoragePoolByTargetPathRequest(
            path="/default-pool")).code() == grpc.StatusCode.UNIMPLEMENTED
        # nor can it tell a volume's physical size: the summary leaves it unset
        volume = stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(
            pool="default-pool", xml=volume_xml("a.img", MIB))).storage_volume
        assert volume.capacity_bytes == MIB and not volume.HasField("physical_bytes")


def test_pool_capabilities_and_lookup_by_target_path(stub: Stub,
                                                     pool: tuple[str, Path]) -> None:
    capabilities = stub.GetStoragePoolCapabilities(pb.GetStoragePoolCapabilitiesRequest())
    by_type = {capability.type: capability for capability in capabilities.pool_types}
    assert by_type["dir"].supported and by_type["dir"].default_volume_format == "raw"
    assert "qcow2" in by_type["dir"].volume_formats
    assert "nfs" in by_type["netfs"].source_formats
    assert capabilities.xml.startswith("<storagepoolCapabilities>")

    name, path = pool
    found = stub.LookupStoragePoolByTargetPath(pb.LookupStoragePoolByTargetPathRequest(
        path=str(path))).storage_pool
    assert (found.name, found.target_path) == (name, str(path))
    for request_path, code in (("", grpc.StatusCode.INVALID_ARGUMENT),
                               ("relative/dir", grpc.StatusCode.INVALID_ARGUMENT),
                               (str(path / "nothing-here"), grpc.StatusCode.NOT_FOUND)):
        error = error_of(stub.LookupStoragePoolByTargetPath,
                         pb.LookupStoragePoolByTargetPathRequest(path=request_path))
        assert error.code() == code, request_path


def test_volume_physical_size(stub: Stub, pool: tuple[str, Path]) -> None:
    """A qcow2 file's physical size is its file's, far below its capacity."""
    name, path = pool
    xml = ("<volume><name>thin.qcow2</name><capacity unit='GiB'>1</capacity>"
           "<target><format type='qcow2'/></target></volume>")
    created = stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(
        pool=name, xml=xml)).storage_volume
    assert created.HasField("physical_bytes")
    assert created.physical_bytes == (path / "thin.qcow2").stat().st_size
    assert created.physical_bytes < created.capacity_bytes == 1 << 30
