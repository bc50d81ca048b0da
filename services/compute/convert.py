"""libvirt values <-> compute protobuf messages.

The tables are built from libvirt's own constants so that a reason or event
detail libvirt adds later shows up by name rather than as a number.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any, cast

import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from virtmesh.compute.v1 import compute_service_pb2 as pb


def _constants(prefix: str, exclude: Iterable[str] = ()) -> dict[int, str]:
    skip = set(exclude)
    table: dict[int, str] = {}
    for name, value in sorted(vars(libvirt).items()):
        if name.startswith(prefix) and isinstance(value, int) and name not in skip:
            suffix = name[len(prefix):]
            if suffix != "LAST":
                table.setdefault(value, suffix.lower())
    return table


# virDomainState and DomainState share their numbering (NOSTATE = UNSPECIFIED = 0).
_STATE_PREFIXES = {
    libvirt.VIR_DOMAIN_RUNNING: "VIR_DOMAIN_RUNNING_",
    libvirt.VIR_DOMAIN_BLOCKED: "VIR_DOMAIN_BLOCKED_",
    libvirt.VIR_DOMAIN_PAUSED: "VIR_DOMAIN_PAUSED_",
    libvirt.VIR_DOMAIN_SHUTOFF: "VIR_DOMAIN_SHUTOFF_",
    libvirt.VIR_DOMAIN_CRASHED: "VIR_DOMAIN_CRASHED_",
}
STATE_REASONS: dict[int, dict[int, str]] = {
    state: _constants(prefix) for state, prefix in _STATE_PREFIXES.items()
}
# These prefixes are shared with flags, so their reasons are listed by hand.
STATE_REASONS[libvirt.VIR_DOMAIN_SHUTDOWN] = {
    libvirt.VIR_DOMAIN_SHUTDOWN_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTDOWN_USER: "user",
}
STATE_REASONS[libvirt.VIR_DOMAIN_PMSUSPENDED] = {libvirt.VIR_DOMAIN_PMSUSPENDED_UNKNOWN: "unknown"}
STATE_REASONS[libvirt.VIR_DOMAIN_NOSTATE] = {libvirt.VIR_DOMAIN_NOSTATE_UNKNOWN: "unknown"}

_EVENT_TYPES = ("DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED",
                "SHUTDOWN", "PMSUSPENDED", "CRASHED")
#: libvirt lifecycle event type -> LifecycleEventType
EVENT_TYPES: dict[int, pb.LifecycleEventType.ValueType] = {
    getattr(libvirt, f"VIR_DOMAIN_EVENT_{name}"): pb.LifecycleEventType.Value(
        f"LIFECYCLE_EVENT_TYPE_{name}")
    for name in _EVENT_TYPES
}
EVENT_DETAILS: dict[int, dict[int, str]] = {
    getattr(libvirt, f"VIR_DOMAIN_EVENT_{name}"): _constants(f"VIR_DOMAIN_EVENT_{name}_")
    for name in _EVENT_TYPES
}


def domain_state(state: int) -> pb.DomainState.ValueType:
    known = state in pb.DomainState.values()
    return cast("pb.DomainState.ValueType", state if known else pb.DOMAIN_STATE_UNSPECIFIED)


def state_reason(state: int, reason: int) -> str:
    return STATE_REASONS.get(state, {}).get(reason, f"reason_{reason}")


def version_string(version: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def domain(dom: libvirt.virDomain) -> pb.Domain:
    state, max_mem, memory, vcpus, cpu_time = dom.info()
    _, reason = dom.state()
    dom_id = dom.ID()
    persistent = bool(dom.isPersistent())
    return pb.Domain(
        name=dom.name(), uuid=dom.UUIDString(), id=max(dom_id, 0),
        state=domain_state(state), state_reason=state_reason(state, reason),
        persistent=persistent, autostart=bool(dom.autostart()) if persistent else False,
        vcpus=vcpus, memory_kib=memory, max_memory_kib=max_mem, cpu_time_ns=cpu_time,
        os_type=dom.OSType(), has_managed_save=bool(dom.hasManagedSaveImage()),
    )


def snapshot(snap: libvirt.virDomainSnapshot) -> pb.Snapshot:
    xml = snap.getXMLDesc()
    root = ET.fromstring(xml)
    created = Timestamp(seconds=int(root.findtext("creationTime") or 0))
    return pb.Snapshot(
        name=snap.getName(), parent=root.findtext("parent/name") or "",
        current=bool(snap.isCurrent()), state=root.findtext("state") or "",
        create_time=created, description=root.findtext("description") or "", xml=xml,
    )


_INDEXED = re.compile(r"^(vcpu|net|block)\.(\d+)\.(.+)$")

_BALLOON_FIELDS = {
    "current": "current_kib", "maximum": "maximum_kib", "rss": "rss_kib",
    "available": "available_kib", "unused": "unused_kib", "usable": "usable_kib",
    "swap_in": "swap_in_kib", "swap_out": "swap_out_kib", "major_fault": "major_fault",
    "minor_fault": "minor_fault",
}
_VCPU_FIELDS = {"state": "state", "time": "time_ns", "wait": "wait_ns"}
_NET_FIELDS = {
    "name": "name", "rx.bytes": "rx_bytes", "rx.pkts": "rx_packets", "rx.errs": "rx_errors",
    "rx.drop": "rx_drops", "tx.bytes": "tx_bytes", "tx.pkts": "tx_packets",
    "tx.errs": "tx_errors", "tx.drop": "tx_drops",
}
_BLOCK_FIELDS = {
    "name": "name", "path": "path", "rd.reqs": "read_requests", "rd.bytes": "read_bytes",
    "rd.times": "read_time_ns", "wr.reqs": "write_requests", "wr.bytes": "write_bytes",
    "wr.times": "write_time_ns", "fl.reqs": "flush_requests", "capacity": "capacity_bytes",
    "allocation": "allocation_bytes", "physical": "physical_bytes",
}
_INDEXED_FIELDS = {"vcpu": _VCPU_FIELDS, "net": _NET_FIELDS, "block": _BLOCK_FIELDS}


def domain_stats(dom: libvirt.virDomain, record: Mapping[str, Any]) -> pb.DomainStats:
    """One record of libvirt's bulk stats call as typed fields plus everything raw."""
    stats = pb.DomainStats(name=dom.name(), uuid=dom.UUIDString())
    if "state.state" in record:
        state = int(record["state.state"])
        stats.state = domain_state(state)
        stats.state_reason = state_reason(state, int(record.get("state.reason", 0)))
    indexed: dict[str, dict[int, dict[str, Any]]] = {"vcpu": {}, "net": {}, "block": {}}
    for key, value in record.items():
        stats.raw[key] = str(value)
        group, _, field = key.partition(".")
        if group == "cpu" and field in ("time", "user", "system"):
            setattr(stats.cpu, f"{field}_ns", int(value))
        elif group == "balloon" and field in _BALLOON_FIELDS:
            setattr(stats.balloon, _BALLOON_FIELDS[field], int(value))
        elif key == "vcpu.current":
            stats.vcpu_current = int(value)
        elif key == "vcpu.maximum":
            stats.vcpu_maximum = int(value)
        elif match := _INDEXED.match(key):
            kind, index, name = match.group(1), int(match.group(2)), match.group(3)
            if name in _INDEXED_FIELDS[kind]:
                indexed[kind].setdefault(index, {})[_INDEXED_FIELDS[kind][name]] = value
    for index, fields in sorted(indexed["vcpu"].items()):
        stats.vcpus.add(index=index, **fields)
    for _, fields in sorted(indexed["net"].items()):
        stats.interfaces.add(**fields)
    for _, fields in sorted(indexed["block"].items()):
        stats.blocks.add(**fields)
    return stats


STAT_GROUPS: dict[int, int] = {
    pb.STAT_GROUP_STATE: libvirt.VIR_DOMAIN_STATS_STATE,
    pb.STAT_GROUP_CPU_TOTAL: libvirt.VIR_DOMAIN_STATS_CPU_TOTAL,
    pb.STAT_GROUP_BALLOON: libvirt.VIR_DOMAIN_STATS_BALLOON,
    pb.STAT_GROUP_VCPU: libvirt.VIR_DOMAIN_STATS_VCPU,
    pb.STAT_GROUP_INTERFACE: libvirt.VIR_DOMAIN_STATS_INTERFACE,
    pb.STAT_GROUP_BLOCK: libvirt.VIR_DOMAIN_STATS_BLOCK,
}


def lifecycle_event(event: int, detail: int) -> pb.LifecycleEvent:
    return pb.LifecycleEvent(
        type=EVENT_TYPES.get(event, pb.LIFECYCLE_EVENT_TYPE_UNSPECIFIED),
        detail=EVENT_DETAILS.get(event, {}).get(detail, f"detail_{detail}"),
    )
