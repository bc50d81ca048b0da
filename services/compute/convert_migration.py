"""libvirt values <-> the compute protobuf messages of migrations."""

from __future__ import annotations

from typing import Any

import libvirt

from virtmesh.compute.v1 import compute_service_pb2 as pb

#: MigrateDomainRequest's bool fields -> virDomainMigrateFlags
FLAGS: dict[str, int] = {
    "live": libvirt.VIR_MIGRATE_LIVE,
    "peer2peer": libvirt.VIR_MIGRATE_PEER2PEER,
    "tunnelled": libvirt.VIR_MIGRATE_TUNNELLED,
    "persist_dest": libvirt.VIR_MIGRATE_PERSIST_DEST,
    "undefine_source": libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    "paused": libvirt.VIR_MIGRATE_PAUSED,
    "non_shared_disk": libvirt.VIR_MIGRATE_NON_SHARED_DISK,
    "non_shared_inc": libvirt.VIR_MIGRATE_NON_SHARED_INC,
    "unsafe": libvirt.VIR_MIGRATE_UNSAFE,
    "offline": libvirt.VIR_MIGRATE_OFFLINE,
    "compressed": libvirt.VIR_MIGRATE_COMPRESSED,
    "abort_on_error": libvirt.VIR_MIGRATE_ABORT_ON_ERROR,
    "auto_converge": libvirt.VIR_MIGRATE_AUTO_CONVERGE,
    "postcopy": libvirt.VIR_MIGRATE_POSTCOPY,
    "tls": libvirt.VIR_MIGRATE_TLS,
    "parallel": libvirt.VIR_MIGRATE_PARALLEL,
    "change_protection": libvirt.VIR_MIGRATE_CHANGE_PROTECTION,
}
#: MigrationParameters' scalar fields -> VIR_MIGRATE_PARAM_* (unset or empty: left out)
PARAMETERS: dict[str, str] = {
    "destination_name": libvirt.VIR_MIGRATE_PARAM_DEST_NAME,
    "destination_xml": libvirt.VIR_MIGRATE_PARAM_DEST_XML,
    "persistent_xml": libvirt.VIR_MIGRATE_PARAM_PERSIST_XML,
    "bandwidth_mib_per_s": libvirt.VIR_MIGRATE_PARAM_BANDWIDTH,
    "bandwidth_postcopy_mib_per_s": libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY,
    "migration_uri": libvirt.VIR_MIGRATE_PARAM_URI,
    "listen_address": libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS,
    "graphics_uri": libvirt.VIR_MIGRATE_PARAM_GRAPHICS_URI,
    "disks_port": libvirt.VIR_MIGRATE_PARAM_DISKS_PORT,
    "disks_uri": libvirt.VIR_MIGRATE_PARAM_DISKS_URI,
    "compression_mt_level": libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_LEVEL,
    "compression_mt_threads": libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_THREADS,
    "compression_mt_dthreads": libvirt.VIR_MIGRATE_PARAM_COMPRESSION_MT_DTHREADS,
    "compression_xbzrle_cache_bytes": libvirt.VIR_MIGRATE_PARAM_COMPRESSION_XBZRLE_CACHE,
    "parallel_connections": libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS,
    "tls_destination": libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION,
    "auto_converge_initial": libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL,
    "auto_converge_increment": libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT,
}
#: MigrationParameters' lists -> the parameters libvirt takes once per value
LISTS: dict[str, str] = {
    "disks": libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS,
    "compression": libvirt.VIR_MIGRATE_PARAM_COMPRESSION,
}


def migrate_flags(request: pb.MigrateDomainRequest) -> int:
    flags = 0
    for field, flag in FLAGS.items():
        if getattr(request, field):
            flags |= flag
    return flags


def parameters(message: pb.MigrationParameters) -> dict[str, Any]:
    """The parameters set, by libvirt's names; libvirt-python takes a list for those
    libvirt repeats."""
    params: dict[str, Any] = {}
    for field, name in PARAMETERS.items():
        optional = message.DESCRIPTOR.fields_by_name[field].has_presence
        value = getattr(message, field)
        if message.HasField(field) if optional else value:  # type: ignore[arg-type]
            params[name] = value
    for field, name in LISTS.items():
        if getattr(message, field):
            params[name] = list(getattr(message, field))
    return params
