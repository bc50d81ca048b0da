"""Storage commands: virsh's pool-* and vol-* against the storage service.

Volumes are named ``POOL VOLUME``; vol-upload and vol-download stream files in
1 MiB chunks, so neither side ever holds a whole volume.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import IO, Any

from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh_client.cli_commands import (
    VALIDATE,
    XML_FILE,
    Argument,
    CommandFactory,
    Commands,
    Kind,
    add_flags,
    either,
    enum_choices,
)
from virtmesh_client.cli_edit import add_edit
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import (
    Output,
    byte_size,
    enum_name,
    event_line,
    fields,
    parse_bytes,
    read_input,
    table,
    yes,
)
from virtmesh_client.client import Client

#: what one upload message carries; the service accepts at most this much
CHUNK_BYTES = 1 << 20
WIPE_ALGORITHMS = enum_choices(pb.WipeAlgorithm, "WIPE_ALGORITHM_")
POOL = Kind("Pool '{}'", (Argument("pool", "POOL", "pool name or UUID"),),
            response_field="storage_pool", plural="pools")
#: a volume is named by its pool and its own name
VOLUME = Kind("Volume '{}'", (Argument("pool", "POOL", "pool name or UUID", field="pool"),
                              Argument("volume", "VOLUME", "volume name")))


def _state(value: int) -> str:
    return enum_name(pb.StoragePoolState, value, "STORAGE_POOL_STATE_")


def _volume_type(value: int) -> str:
    return enum_name(pb.StorageVolumeType, value, "STORAGE_VOLUME_TYPE_")


def _pool_row(p: Any) -> Sequence[object]:
    return (p.name, _state(p.state), p.type, yes(p.autostart), yes(p.persistent),
            byte_size(p.capacity_bytes), byte_size(p.allocation_bytes),
            byte_size(p.available_bytes))


def _list_pools(client: Client, args: argparse.Namespace) -> Any:
    request = pb.ListStoragePoolsRequest(
        active=either(args, "active", "inactive"),
        autostart=either(args, "autostart", "no_autostart"),
        persistent=either(args, "persistent", "transient"),
        types=args.type or ())
    return pb.ListStoragePoolsResponse(
        storage_pools=client.all_pages("ListStoragePools", request, "storage_pools"))


cmd_pool_list = Query(_list_pools, ("NAME", "STATE", "TYPE", "AUTOSTART", "PERSISTENT",
                                    "CAPACITY", "ALLOCATION", "AVAILABLE"),
                      _pool_row, "storage_pools")

cmd_pool_info = Query(
    lambda client, args: client.call("GetStoragePool",
                                     pb.GetStoragePoolRequest(name=args.pool)).storage_pool,
    ("Name", "UUID", "State", "Type", "Persistent", "Autostart", "Capacity", "Allocation",
     "Available", "Target path"),
    lambda p: (p.name, p.uuid, _state(p.state), p.type, yes(p.persistent), yes(p.autostart),
               byte_size(p.capacity_bytes), byte_size(p.allocation_bytes),
               byte_size(p.available_bytes), p.target_path or "-"))


cmd_find_storage_pool_sources = Query(
    lambda client, args: client.call("FindStoragePoolSources", pb.FindStoragePoolSourcesRequest(
        type=args.type, host=args.host, port=args.port, initiator_iqn=args.initiator)),
    ("HOSTS", "DIR", "NAME", "DEVICES", "FORMAT"),
    lambda s: (",".join(s.hosts) or "-", s.dir or "-", s.name or "-",
               ",".join(s.devices) or "-", s.format or "-"), "sources")


def cmd_pool_capabilities(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetStoragePoolCapabilities", pb.GetStoragePoolCapabilitiesRequest())
    out.show(response, response.xml.rstrip("\n"))


def _volume_fields(v: Any) -> str:
    return fields((("Name", v.name), ("Pool", v.pool), ("Type", _volume_type(v.type)),
                   ("Format", v.format or "-"), ("Capacity", byte_size(v.capacity_bytes)),
                   ("Allocation", byte_size(v.allocation_bytes)),
                   ("Physical", byte_size(v.physical_bytes)
                    if v.HasField("physical_bytes") else "-"), ("Path", v.path),
                   ("Key", v.key)))


def cmd_vol_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    volumes = client.all_pages("ListStorageVolumes",
                               pb.ListStorageVolumesRequest(pool=args.pool), "storage_volumes")
    out.show(pb.ListStorageVolumesResponse(storage_volumes=volumes), table(
        ("NAME", "TYPE", "CAPACITY", "ALLOCATION", "PATH"),
        ((v.name, _volume_type(v.type), byte_size(v.capacity_bytes), byte_size(v.allocation_bytes),
          v.path) for v in volumes)))


def cmd_vol_info(client: Client, args: argparse.Namespace, out: Output) -> None:
    volume = client.call("GetStorageVolume", pb.GetStorageVolumeRequest(
        pool=args.pool, name=args.volume)).storage_volume
    out.show(volume, _volume_fields(volume))


def cmd_vol_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateStorageVolume", pb.CreateStorageVolumeRequest(
        pool=args.pool, xml=read_input(args.file), prealloc_metadata=args.prealloc_metadata,
        validate=args.validate))
    volume = response.storage_volume
    out.show(response, f"Volume '{volume.name}' created in pool '{volume.pool}' "
                       f"({volume.path})")


def cmd_vol_clone(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CloneStorageVolume", pb.CloneStorageVolumeRequest(
        pool=args.pool, name=args.volume, new_name=args.new_name, target_pool=args.target_pool,
        prealloc_metadata=args.prealloc_metadata, reflink=args.reflink))
    volume = response.storage_volume
    out.show(response, f"Volume '{args.volume}' cloned to '{volume.name}' in pool "
                       f"'{volume.pool}'")


def cmd_vol_wipe(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("WipeStorageVolume", pb.WipeStorageVolumeRequest(
        pool=args.pool, name=args.volume, algorithm=WIPE_ALGORITHMS[args.algorithm]))
    out.show(response, f"Volume '{args.volume}' wiped")


def cmd_vol_resize(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("ResizeStorageVolume", pb.ResizeStorageVolumeRequest(
        pool=args.pool, name=args.volume, capacity_bytes=args.capacity, allocate=args.allocate,
        delta=args.delta, shrink=args.shrink))
    capacity = response.storage_volume.capacity_bytes
    out.show(response, f"Volume '{args.volume}' resized to {byte_size(capacity)}")


def _chunks(file: IO[bytes], first: pb.UploadStorageVolumeRequest
            ) -> Iterator[pb.UploadStorageVolumeRequest]:
    yield first
    while data := file.read(CHUNK_BYTES):
        yield pb.UploadStorageVolumeRequest(data=data)


def cmd_vol_upload(client: Client, args: argparse.Namespace, out: Output) -> None:
    with open(args.file, "rb") as file:
        # announce the file's size, so that the service takes nothing more
        length = os.fstat(file.fileno()).st_size if args.length is None else args.length
        first = pb.UploadStorageVolumeRequest(pool=args.pool, name=args.volume,
                                              offset=args.offset, length=length)
        response = client.upload("UploadStorageVolume", _chunks(file, first),
                                 pb.UploadStorageVolumeRequest)
    out.show(response, f"Uploaded {byte_size(response.bytes_written)} to volume '{args.volume}'")


def cmd_vol_download(client: Client, args: argparse.Namespace, out: Output) -> None:
    written = 0
    # Into FILE.part, renamed once complete: a failed download leaves no file that
    # looks whole.
    partial = f"{args.file}.part"
    try:
        with open(partial, "wb") as file:
            for chunk in client.stream("DownloadStorageVolume", pb.DownloadStorageVolumeRequest(
                    pool=args.pool, name=args.volume, offset=args.offset,
                    length=args.length or 0)):
                file.write(chunk.data)
                written += len(chunk.data)
        os.replace(partial, args.file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    out.show(pb.UploadStorageVolumeResponse(bytes_written=written),
             f"Downloaded {byte_size(written)} from volume '{args.volume}' to {args.file}")



def _event_text(event: pb.WatchStoragePoolEventsResponse) -> str:
    return event_line(event, "refresh" if event.HasField("refresh") else enum_name(
        pb.StoragePoolLifecycleEventType, event.lifecycle.type,
        "STORAGE_POOL_LIFECYCLE_EVENT_TYPE_"))


def register(command: CommandFactory) -> None:
    pools, volumes = Commands(command, POOL), Commands(command, VOLUME)
    build = ("--build", "build its storage first")
    prealloc = ("--prealloc-metadata", "preallocate metadata only (qcow2)")
    sub = command("pool-list", cmd_pool_list, "list storage pools")
    add_flags(sub, ("--active", "only active pools"), ("--inactive", "only inactive pools"),
              ("--autostart", "only pools marked autostart"),
              ("--no-autostart", "only pools not marked autostart"),
              ("--persistent", "only persistent pools"),
              ("--transient", "only transient pools"))
    sub.add_argument("--type", action="append", metavar="TYPE",
                     help="only pools of this type, e.g. dir (repeatable)")
    pools.add("pool-info", cmd_pool_info, "show a storage pool's summary")
    sub = command("find-storage-pool-sources", cmd_find_storage_pool_sources,
                  "discover the sources a pool of TYPE could use (NFS exports, LVM groups)")
    sub.add_argument("type", metavar="TYPE", help="netfs, logical, iscsi or gluster")
    sub.add_argument("--host", default="", help="the host to ask (netfs, iscsi, gluster)")
    sub.add_argument("--port", type=int, default=0, help="the host's port")
    sub.add_argument("--initiator", default="", metavar="IQN",
                     help="iscsi: the initiator IQN to present")
    command("pool-capabilities", cmd_pool_capabilities,
            "print the storage driver's pool capabilities XML")
    pools.dumpxml("pool-dumpxml", "GetStoragePoolXML", pb.GetStoragePoolXMLRequest,
                  "print a storage pool's XML", ("--inactive", "the persistent config"))
    pools.from_xml("pool-define", "DefineStoragePool", pb.DefineStoragePoolRequest, "defined",
                   "define a persistent storage pool from XML", "pool XML file, or - for stdin",
                   VALIDATE, uuid=True)
    add_edit(pools, "pool-edit", ("GetStoragePoolXML", pb.GetStoragePoolXMLRequest),
             ("DefineStoragePool", pb.DefineStoragePoolRequest),
             "edit a storage pool's persistent XML in $EDITOR", inactive=True)
    pools.from_xml("pool-create", "CreateStoragePool", pb.CreateStoragePoolRequest, "created",
                   "create and start a transient pool from XML", "pool XML file, or - for stdin",
                   build)
    pools.simple("pool-build", "BuildStoragePool", pb.BuildStoragePoolRequest, "built",
                 "build a pool's storage", ("--overwrite", "format even if in use"),
                 ("--no-overwrite", "never format data"))
    pools.simple("pool-start", "StartStoragePool", pb.StartStoragePoolRequest, "started",
                 "start a defined storage pool", build)
    pools.simple("pool-destroy", "StopStoragePool", pb.StopStoragePoolRequest, "destroyed",
                 "stop an active storage pool")
    pools.simple("pool-delete", "DeleteStoragePool", pb.DeleteStoragePoolRequest, "deleted",
                 "remove a pool's storage")
    pools.simple("pool-undefine", "UndefineStoragePool", pb.UndefineStoragePoolRequest,
                 "undefined", "remove a pool's definition")
    pools.simple("pool-refresh", "RefreshStoragePool", pb.RefreshStoragePoolRequest,
                 "refreshed", "rescan a pool's volumes")
    pools.autostart("pool-autostart", "SetStoragePoolAutostart",
                    pb.SetStoragePoolAutostartRequest, "start a pool with the storage driver")
    pools.events("pool-event", "WatchStoragePoolEvents", pb.WatchStoragePoolEventsRequest,
                 "storage pool", _event_text, "print storage pool events as they happen")

    pools.add("vol-list", cmd_vol_list, "list a pool's volumes")
    volumes.add("vol-info", cmd_vol_info, "show a volume's summary")
    volumes.dumpxml("vol-dumpxml", "GetStorageVolumeXML", pb.GetStorageVolumeXMLRequest,
                    "print a volume's XML")
    sub = pools.add("vol-create", cmd_vol_create, "create a volume from XML")
    sub.add_argument("file", type=XML_FILE, help="volume XML file, or - for stdin")
    add_flags(sub, prealloc, VALIDATE)
    sub = volumes.add("vol-clone", cmd_vol_clone, "copy a volume")
    sub.add_argument("new_name", metavar="NEW_NAME", help="the copy's name")
    sub.add_argument("--target-pool", default="", metavar="POOL",
                     help="create the copy in this pool (default: the source's)")
    add_flags(sub, prealloc, ("--reflink", "copy-on-write clone"))
    volumes.simple("vol-delete", "DeleteStorageVolume", pb.DeleteStorageVolumeRequest,
                   "deleted", "delete a volume")
    sub = volumes.add("vol-wipe", cmd_vol_wipe, "overwrite a volume's contents")
    sub.add_argument("--algorithm", choices=sorted(WIPE_ALGORITHMS), default="zero",
                     help="how to overwrite (default zero; others need scrub on the host)")
    sub = volumes.add("vol-resize", cmd_vol_resize, "change a volume's capacity")
    sub.add_argument("capacity", type=parse_bytes, metavar="SIZE",
                     help="new capacity (or with --delta the change), e.g. 10G")
    sub.add_argument("--allocate", action="store_true", help="allocate the new space")
    sub.add_argument("--delta", action="store_true", help="SIZE is a change")
    sub.add_argument("--shrink", action="store_true", help="allow making it smaller")
    for name, handler, summary, direction in (
            ("vol-upload", cmd_vol_upload, "write a file into a volume", "read"),
            ("vol-download", cmd_vol_download, "save a volume's contents to a file",
             "written")):
        sub = volumes.add(name, handler, summary)
        sub.add_argument("file", metavar="FILE", help=f"the file {direction}")
        sub.add_argument("--offset", type=parse_bytes, default=0,
                         help="where in the volume to start")
        sub.add_argument("--length", type=parse_bytes, default=None,
                         help="how many bytes at most (default: all of the file / volume)")
