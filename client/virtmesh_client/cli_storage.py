"""Storage commands: virsh's pool-* and vol-* against the storage service.

Volumes are named ``POOL VOLUME``; vol-upload and vol-download stream files in
1 MiB chunks, so neither side ever holds a whole volume.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import UTC
from typing import IO, Any

from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory, follow, watch
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import Output, byte_size, enum_name, fields, read_input, table, yes
from virtmesh_client.client import Client

#: what one upload message carries; the service accepts at most this much
CHUNK_BYTES = 1 << 20
WIPE_ALGORITHMS = {name.removeprefix("WIPE_ALGORITHM_").lower(): value
                   for name, value in pb.WipeAlgorithm.items() if value}


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
        active=True if args.active else False if args.inactive else None,
        autostart=True if args.autostart else False if args.no_autostart else None,
        persistent=True if args.persistent else False if args.transient else None,
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


def cmd_pool_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetStoragePoolXML", pb.GetStoragePoolXMLRequest(
        name=args.pool, inactive=args.inactive))
    out.show(response, response.xml.rstrip("\n"))


def cmd_pool_define(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("DefineStoragePool", pb.DefineStoragePoolRequest(
        xml=read_input(args.file), validate=args.validate))
    pool = response.storage_pool
    out.show(response, f"Pool '{pool.name}' defined ({pool.uuid})")


def cmd_pool_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("CreateStoragePool", pb.CreateStoragePoolRequest(
        xml=read_input(args.file), build=args.build))
    out.show(response, f"Pool '{response.storage_pool.name}' created")


def cmd_pool_build(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("BuildStoragePool", pb.BuildStoragePoolRequest(
        name=args.pool, overwrite=args.overwrite, no_overwrite=args.no_overwrite))
    out.show(response, f"Pool '{args.pool}' built")


def cmd_pool_start(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("StartStoragePool", pb.StartStoragePoolRequest(
        name=args.pool, build=args.build))
    out.show(response, f"Pool '{args.pool}' started")


def _pool_command(method: str, request: type, done: str) -> Any:
    """A command that sends just the pool name and reports success."""
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request(name=args.pool)), f"Pool '{args.pool}' {done}")
    return handler


def cmd_pool_autostart(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SetStoragePoolAutostart", pb.SetStoragePoolAutostartRequest(
        name=args.pool, autostart=not args.disable))
    done = "unmarked as autostarted" if args.disable else "marked as autostarted"
    out.show(response, f"Pool '{args.pool}' {done}")


def _volume_fields(v: Any) -> str:
    return fields((("Name", v.name), ("Pool", v.pool), ("Type", _volume_type(v.type)),
                   ("Format", v.format or "-"), ("Capacity", byte_size(v.capacity_bytes)),
                   ("Allocation", byte_size(v.allocation_bytes)), ("Path", v.path),
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


def cmd_vol_dumpxml(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetStorageVolumeXML", pb.GetStorageVolumeXMLRequest(
        pool=args.pool, name=args.volume))
    out.show(response, response.xml.rstrip("\n"))


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


def _volume_command(method: str, request: type, done: str) -> Any:
    def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
        out.show(client.call(method, request(pool=args.pool, name=args.volume)),
                 f"Volume '{args.volume}' {done}")
    return handler


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


def _size(text: str) -> int:
    """A byte count with an optional K, M, G or T suffix (powers of 1024)."""
    units = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
    number, unit = text.rstrip("kKmMgGtTiIbB"), text[len(text.rstrip("kKmMgGtTiIbB")):]
    unit = unit.lower().removesuffix("b").removesuffix("i")
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size such as 4096, 512K or 10G")
    return int(number) * 1024 ** units[unit]


def _event_text(event: pb.WatchStoragePoolEventsResponse) -> str:
    when = event.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
    kind = ("refresh" if event.HasField("refresh") else enum_name(
        pb.StoragePoolLifecycleEventType, event.lifecycle.type,
        "STORAGE_POOL_LIFECYCLE_EVENT_TYPE_"))
    return f"{when}  {event.name}  {kind}"


def cmd_pool_event(client: Client, args: argparse.Namespace, out: Output) -> None:
    follow(watch(client, "WatchStoragePoolEvents", pb.WatchStoragePoolEventsRequest(
        names=args.pools)), "storage pool", _event_text, out, args.count)


def register(command: CommandFactory) -> None:
    xml_in = argparse.FileType("r")

    def volume_command(name: str, handler: Any, summary: str) -> argparse.ArgumentParser:
        sub = command(name, handler, summary)
        sub.add_argument("pool", metavar="POOL", help="pool name or UUID")
        sub.add_argument("volume", metavar="VOLUME", help="volume name")
        return sub

    def pool_command(name: str, handler: Any, summary: str) -> argparse.ArgumentParser:
        sub = command(name, handler, summary)
        sub.add_argument("pool", metavar="POOL", help="pool name or UUID")
        return sub

    sub = command("pool-list", cmd_pool_list, "list storage pools")
    for flag, help_text in (("--active", "only active pools"),
                            ("--inactive", "only inactive pools"),
                            ("--autostart", "only pools marked autostart"),
                            ("--no-autostart", "only pools not marked autostart"),
                            ("--persistent", "only persistent pools"),
                            ("--transient", "only transient pools")):
        sub.add_argument(flag, action="store_true", help=help_text)
    sub.add_argument("--type", action="append", metavar="TYPE",
                     help="only pools of this type, e.g. dir (repeatable)")
    pool_command("pool-info", cmd_pool_info, "show a storage pool's summary")
    sub = pool_command("pool-dumpxml", cmd_pool_dumpxml, "print a storage pool's XML")
    sub.add_argument("--inactive", action="store_true", help="the persistent config")
    sub = command("pool-define", cmd_pool_define, "define a persistent storage pool from XML")
    sub.add_argument("file", type=xml_in, help="pool XML file, or - for stdin")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    sub = command("pool-create", cmd_pool_create, "create and start a transient pool from XML")
    sub.add_argument("file", type=xml_in, help="pool XML file, or - for stdin")
    sub.add_argument("--build", action="store_true", help="build its storage first")
    sub = pool_command("pool-build", cmd_pool_build, "build a pool's storage")
    sub.add_argument("--overwrite", action="store_true", help="format even if in use")
    sub.add_argument("--no-overwrite", action="store_true", help="never format data")
    sub = pool_command("pool-start", cmd_pool_start, "start a defined storage pool")
    sub.add_argument("--build", action="store_true", help="build its storage first")
    pool_command("pool-destroy", _pool_command("StopStoragePool", pb.StopStoragePoolRequest,
                                               "destroyed"), "stop an active storage pool")
    pool_command("pool-delete", _pool_command("DeleteStoragePool", pb.DeleteStoragePoolRequest,
                                              "deleted"), "remove a pool's storage")
    pool_command("pool-undefine", _pool_command(
        "UndefineStoragePool", pb.UndefineStoragePoolRequest, "undefined"),
        "remove a pool's definition")
    pool_command("pool-refresh", _pool_command(
        "RefreshStoragePool", pb.RefreshStoragePoolRequest, "refreshed"),
        "rescan a pool's volumes")
    sub = pool_command("pool-autostart", cmd_pool_autostart,
                       "start a pool with the storage driver")
    sub.add_argument("--disable", action="store_true", help="do not autostart it")
    sub = command("pool-event", cmd_pool_event, "print storage pool events as they happen")
    sub.add_argument("pools", nargs="*", metavar="POOL", help="only these pools")
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")

    pool_command("vol-list", cmd_vol_list, "list a pool's volumes")
    volume_command("vol-info", cmd_vol_info, "show a volume's summary")
    volume_command("vol-dumpxml", cmd_vol_dumpxml, "print a volume's XML")
    sub = pool_command("vol-create", cmd_vol_create, "create a volume from XML")
    sub.add_argument("file", type=xml_in, help="volume XML file, or - for stdin")
    sub.add_argument("--prealloc-metadata", action="store_true",
                     help="preallocate metadata only (qcow2)")
    sub.add_argument("--validate", action="store_true", help="check the XML schema first")
    sub = volume_command("vol-clone", cmd_vol_clone, "copy a volume")
    sub.add_argument("new_name", metavar="NEW_NAME", help="the copy's name")
    sub.add_argument("--target-pool", default="", metavar="POOL",
                     help="create the copy in this pool (default: the source's)")
    sub.add_argument("--prealloc-metadata", action="store_true",
                     help="preallocate metadata only (qcow2)")
    sub.add_argument("--reflink", action="store_true", help="copy-on-write clone")
    volume_command("vol-delete", _volume_command(
        "DeleteStorageVolume", pb.DeleteStorageVolumeRequest, "deleted"), "delete a volume")
    sub = volume_command("vol-wipe", cmd_vol_wipe, "overwrite a volume's contents")
    sub.add_argument("--algorithm", choices=sorted(WIPE_ALGORITHMS), default="zero",
                     help="how to overwrite (default zero; others need scrub on the host)")
    sub = volume_command("vol-resize", cmd_vol_resize, "change a volume's capacity")
    sub.add_argument("capacity", type=_size, metavar="SIZE",
                     help="new capacity (or with --delta the change), e.g. 10G")
    sub.add_argument("--allocate", action="store_true", help="allocate the new space")
    sub.add_argument("--delta", action="store_true", help="SIZE is a change")
    sub.add_argument("--shrink", action="store_true", help="allow making it smaller")
    for name, handler, summary, direction in (
            ("vol-upload", cmd_vol_upload, "write a file into a volume", "read"),
            ("vol-download", cmd_vol_download, "save a volume's contents to a file",
             "written")):
        sub = volume_command(name, handler, summary)
        sub.add_argument("file", metavar="FILE", help=f"the file {direction}")
        sub.add_argument("--offset", type=_size, default=0, help="where in the volume to start")
        sub.add_argument("--length", type=_size, default=None,
                         help="how many bytes at most (default: all of the file / volume)")
