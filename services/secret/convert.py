"""libvirt secret values <-> secret protobuf messages."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

import grpc
import libvirt

from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.errors import ServiceError
from services.common.events import now
from virtmesh.secret.v1 import secret_service_pb2 as pb

#: libvirt's virSecretUsageType -> UsageType
USAGE_TYPES = libvirt_to_proto(pb.UsageType, "USAGE_TYPE_", "VIR_SECRET_USAGE_TYPE_")
_LIBVIRT_USAGE_TYPES = proto_to_libvirt(pb.UsageType, "USAGE_TYPE_", "VIR_SECRET_USAGE_TYPE_")
_USAGE_NAMES = ", ".join(pb.UsageType.Name(usage).removeprefix("USAGE_TYPE_").lower()
                         for usage in _LIBVIRT_USAGE_TYPES)

LIFECYCLE_EVENT_TYPES = libvirt_to_proto(pb.LifecycleEventType, "LIFECYCLE_EVENT_TYPE_",
                                         "VIR_SECRET_EVENT_")


def libvirt_usage_type(usage: pb.UsageType.ValueType) -> int:
    """libvirt's usage type for ``usage``; INVALID_ARGUMENT for UNSPECIFIED or unknown."""
    if usage not in _LIBVIRT_USAGE_TYPES:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"usage type must be one of {_USAGE_NAMES} (got {usage})",
                           "INVALID_USAGE_TYPE")
    return _LIBVIRT_USAGE_TYPES[usage]


def of_usage_types(secrets: Iterable[libvirt.virSecret],
                   usage_types: Iterable[pb.UsageType.ValueType]) -> list[libvirt.virSecret]:
    """The ``secrets`` of any of ``usage_types``; INVALID_ARGUMENT for an unknown type."""
    wanted = {libvirt_usage_type(usage) for usage in usage_types}
    return [secret for secret in secrets if secret.usageType() in wanted]


def secret_uuid(secret: libvirt.virSecret) -> str:
    """Secrets are named by their UUID."""
    return secret.UUIDString()


def usage(secret: libvirt.virSecret) -> pb.Usage:
    return pb.Usage(type=USAGE_TYPES.get(secret.usageType(), pb.USAGE_TYPE_UNSPECIFIED),
                    id=secret.usageID() or "")


def secret(secret: libvirt.virSecret) -> pb.Secret:
    root = ET.fromstring(secret.XMLDesc())
    return pb.Secret(name=secret.UUIDString(), usage=usage(secret),
                     ephemeral=root.get("ephemeral") == "yes",
                     private=root.get("private") == "yes",
                     description=root.findtext("description") or "")


def secret_event(secret: libvirt.virSecret, kind: str,
                 *details: int) -> pb.WatchSecretEventsResponse:
    """The Watch response for what SecretBackend.register_events emits."""
    if kind == "lifecycle":
        lifecycle = pb.LifecycleEvent(type=LIFECYCLE_EVENT_TYPES.get(
            details[0], pb.LIFECYCLE_EVENT_TYPE_UNSPECIFIED))
        return pb.WatchSecretEventsResponse(name=secret.UUIDString(), usage=usage(secret),
                                            time=now(), lifecycle=lifecycle)
    return pb.WatchSecretEventsResponse(name=secret.UUIDString(), usage=usage(secret),
                                        time=now(), value_changed=pb.ValueChangedEvent())
