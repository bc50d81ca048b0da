"""libvirt secret values <-> secret protobuf messages."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import grpc
import libvirt

from services.common.errors import ServiceError
from virtmesh.secret.v1 import secret_service_pb2 as pb

_USAGES = ("NONE", "VOLUME", "CEPH", "ISCSI", "TLS", "VTPM")
#: libvirt's virSecretUsageType -> UsageType
USAGE_TYPES: dict[int, pb.UsageType.ValueType] = {
    getattr(libvirt, f"VIR_SECRET_USAGE_TYPE_{name}"): pb.UsageType.Value(f"USAGE_TYPE_{name}")
    for name in _USAGES
}
_LIBVIRT_USAGE_TYPES = {usage: value for value, usage in USAGE_TYPES.items()}

LIFECYCLE_EVENT_TYPES: dict[int, pb.LifecycleEventType.ValueType] = {
    libvirt.VIR_SECRET_EVENT_DEFINED: pb.LIFECYCLE_EVENT_TYPE_DEFINED,
    libvirt.VIR_SECRET_EVENT_UNDEFINED: pb.LIFECYCLE_EVENT_TYPE_UNDEFINED,
}


def libvirt_usage_type(usage: pb.UsageType.ValueType) -> int:
    """libvirt's usage type for ``usage``; INVALID_ARGUMENT for UNSPECIFIED or unknown."""
    if usage not in _LIBVIRT_USAGE_TYPES:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"usage type must be one of {', '.join(_USAGES).lower()} "
                           f"(got {usage})", "INVALID_USAGE_TYPE")
    return _LIBVIRT_USAGE_TYPES[usage]


def usage(secret: libvirt.virSecret) -> pb.Usage:
    return pb.Usage(type=USAGE_TYPES.get(secret.usageType(), pb.USAGE_TYPE_UNSPECIFIED),
                    id=secret.usageID() or "")


def secret(secret: libvirt.virSecret, xml: str) -> pb.Secret:
    """The summary of ``secret``, whose XML description is ``xml``."""
    root = ET.fromstring(xml)
    return pb.Secret(name=secret.UUIDString(), usage=usage(secret),
                     ephemeral=root.get("ephemeral") == "yes",
                     private=root.get("private") == "yes",
                     description=root.findtext("description") or "")
