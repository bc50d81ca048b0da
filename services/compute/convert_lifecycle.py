"""libvirt values <-> the compute protobuf messages of the lifecycle extras."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import libvirt

from services.common.convert import proto_to_libvirt
from services.common.shared import ServiceError
from virtmesh.compute.v1 import compute_service_pb2 as pb

#: PmSuspendTarget -> VIR_NODE_SUSPEND_TARGET_*
PM_SUSPEND_TARGETS = proto_to_libvirt(pb.PmSuspendTarget, "PM_SUSPEND_TARGET_",
                                      "VIR_NODE_SUSPEND_TARGET_")
#: ProcessSignal -> VIR_DOMAIN_PROCESS_SIGNAL_*
PROCESS_SIGNALS = proto_to_libvirt(pb.ProcessSignal, "PROCESS_SIGNAL_",
                                   "VIR_DOMAIN_PROCESS_SIGNAL_")
#: LifecycleType -> VIR_DOMAIN_LIFECYCLE_*
LIFECYCLE_TYPES = proto_to_libvirt(pb.LifecycleType, "LIFECYCLE_TYPE_",
                                   "VIR_DOMAIN_LIFECYCLE_")
#: LifecycleAction -> VIR_DOMAIN_LIFECYCLE_ACTION_*
LIFECYCLE_ACTIONS = proto_to_libvirt(pb.LifecycleAction, "LIFECYCLE_ACTION_",
                                     "VIR_DOMAIN_LIFECYCLE_ACTION_")
#: DirtyRateMode -> VIR_DOMAIN_DIRTYRATE_MODE_* (unset: QEMU's default, no flag)
DIRTY_RATE_MODES: dict[int, int] = {
    pb.DIRTY_RATE_MODE_UNSPECIFIED: 0,
    **proto_to_libvirt(pb.DirtyRateMode, "DIRTY_RATE_MODE_",  # type: ignore[arg-type]
                       "VIR_DOMAIN_DIRTYRATE_MODE_"),
}


def _value(table: Mapping[int, int], value: int, field: str) -> int:
    if value not in table:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{field}: say which ({value} is none)", "INVALID_ENUM")
    return table[value]


def pm_suspend_target(value: int) -> int:
    return _value(PM_SUSPEND_TARGETS, value, "target")  # type: ignore[arg-type]


def process_signal(value: int) -> int:
    return _value(PROCESS_SIGNALS, value, "signal")  # type: ignore[arg-type]


def lifecycle_type(value: int) -> int:
    return _value(LIFECYCLE_TYPES, value, "type")  # type: ignore[arg-type]


def lifecycle_action(value: int) -> int:
    return _value(LIFECYCLE_ACTIONS, value, "action")  # type: ignore[arg-type]


def dirty_rate_mode(value: int) -> int:
    return _value(DIRTY_RATE_MODES, value, "mode")


def message_flags(tainting: bool, deprecation: bool) -> int:
    """VIR_DOMAIN_MESSAGE_*; neither asked is 0, which libvirt reads as both."""
    return ((libvirt.VIR_DOMAIN_MESSAGE_TAINTING if tainting else 0)
            | (libvirt.VIR_DOMAIN_MESSAGE_DEPRECATION if deprecation else 0))
