"""libvirt values <-> compute protobuf messages.

The tables are built from libvirt's own constants so that a reason or event
detail libvirt adds later shows up by name rather than as a number.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import typed_params
from services.common.backend import summaries
from services.common.convert import libvirt_to_proto, proto_to_libvirt
from services.common.events import now
from services.common.shared import ServiceError
from services.compute.backend import Listed, Now
from services.compute.backend_sessions import Display
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

#: libvirt lifecycle event type -> LifecycleEventType
EVENT_TYPES = libvirt_to_proto(pb.LifecycleEventType, "LIFECYCLE_EVENT_TYPE_",
                               "VIR_DOMAIN_EVENT_")
#: libvirt lifecycle event type -> its details' names (VIR_DOMAIN_EVENT_<TYPE>_<DETAIL>)
EVENT_DETAILS: dict[int, dict[int, str]] = {
    event: _constants(pb.LifecycleEventType.Name(kind).replace(
        "LIFECYCLE_EVENT_TYPE_", "VIR_DOMAIN_EVENT_", 1) + "_")
    for event, kind in EVENT_TYPES.items()
}

#: PowerMethod -> virDomainShutdownFlagValues; libvirt's ACPI flag has a longer name
SHUTDOWN_FLAGS: dict[int, int] = {
    pb.POWER_METHOD_UNSPECIFIED: libvirt.VIR_DOMAIN_SHUTDOWN_DEFAULT,
    pb.POWER_METHOD_ACPI: libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
    pb.POWER_METHOD_GUEST_AGENT: libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
    pb.POWER_METHOD_SIGNAL: libvirt.VIR_DOMAIN_SHUTDOWN_SIGNAL,
}
#: PowerMethod -> virDomainRebootFlagValues
REBOOT_FLAGS: dict[int, int] = {
    pb.POWER_METHOD_UNSPECIFIED: libvirt.VIR_DOMAIN_REBOOT_DEFAULT,
    pb.POWER_METHOD_ACPI: libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN,
    pb.POWER_METHOD_GUEST_AGENT: libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT,
    pb.POWER_METHOD_SIGNAL: libvirt.VIR_DOMAIN_REBOOT_SIGNAL,
}


_DOMAIN_STATES = frozenset(pb.DomainState.values())


def domain_state(state: int) -> pb.DomainState.ValueType:
    known = state in _DOMAIN_STATES
    return cast("pb.DomainState.ValueType", state if known else pb.DOMAIN_STATE_UNSPECIFIED)


#: (state, reason) -> its text, flat: lists look one up per domain
_REASON_TEXTS = {(state, reason): text for state, reasons in STATE_REASONS.items()
                 for reason, text in reasons.items()}


def state_reason(state: int, reason: int) -> str:
    return _REASON_TEXTS.get((state, reason)) or f"reason_{reason}"


def version_string(version: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


#: (state, reason) a guest is in for its own reasons, not a caller's: worth explaining
_TROUBLE = {
    libvirt.VIR_DOMAIN_PAUSED: {
        libvirt.VIR_DOMAIN_PAUSED_UNKNOWN, libvirt.VIR_DOMAIN_PAUSED_IOERROR,
        libvirt.VIR_DOMAIN_PAUSED_WATCHDOG, libvirt.VIR_DOMAIN_PAUSED_CRASHED,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED},
    # a guest that shut down may have been killed by a signal: QEMU's log says
    libvirt.VIR_DOMAIN_SHUTOFF: {
        libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED,
        libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN},
    libvirt.VIR_DOMAIN_CRASHED: set(STATE_REASONS[libvirt.VIR_DOMAIN_CRASHED]),
}
#: lifecycle (event, detail) of the same kind
_TROUBLE_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: {
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG,
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR,
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED},
    libvirt.VIR_DOMAIN_EVENT_STOPPED: {
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN},
    libvirt.VIR_DOMAIN_EVENT_CRASHED: set(EVENT_DETAILS[libvirt.VIR_DOMAIN_EVENT_CRASHED]),
}
#: a guest's explanation (ComputeBackend.explain)
Explain = Callable[[libvirt.virDomain], str]


def domain(dom: libvirt.virDomain, explain: Explain | None = None) -> pb.Domain:
    """The summary; with ``explain``, also why a guest is in its state for its own
    reasons (it reads QEMU's log: GetDomain, not ListDomains)."""
    state, reason = dom.state()
    persistent = bool(dom.isPersistent())
    message = explain(dom) if explain and reason in _TROUBLE.get(state, ()) else ""
    return pb.Domain(**_summary(dom, dom.name(), (state, reason, dom.ID()), persistent,
                                persistent and bool(dom.autostart()),
                                bool(dom.hasManagedSaveImage())), state_message=message)


def add_listed_domains(into: Any, listed: Sequence[Listed], states: Mapping[str, Now]) -> None:
    """Add to ``into`` (a repeated Domain field) the same summaries as ``domain``
    (without ``state_message``) for domains of a listing: their flags come from the
    listing, state, reason and id from one bulk call (``states``, by name), the rest
    from ``info`` and ``OSType``, which no bulk call of libvirt's has without a job
    and QEMU monitor calls per guest. A domain missing from ``states``, or gone
    before its ``info``, is left out. Added in place: a message built apart would
    be copied into the response."""
    def summary(item: Listed) -> dict[str, Any]:
        return _summary(item.dom, item.name, states[item.name], item.persistent,
                        item.autostart, item.managed_save)

    for fields in summaries(in_listed_states(listed, states), summary):
        into.add(**fields)


def in_listed_states(listed: Sequence[Listed], states: Mapping[str, Now],
                     wanted: Container[int] | None = None) -> list[Listed]:
    """The domains of ``listed`` that ``states`` (by name) knows, and whose state is
    one of ``wanted`` (DomainState values; None: any)."""
    if wanted is None:
        return [item for item in listed if item.name in states]
    return [item for item in listed
            if item.name in states and domain_state(states[item.name][0]) in wanted]


def listed_name(listed: Listed) -> str:
    return listed.name


def _summary(dom: libvirt.virDomain, name: str, now: Now, persistent: bool, autostart: bool,
             managed_save: bool) -> dict[str, Any]:
    """A Domain's fields but ``state_message``."""
    state, reason, dom_id = now
    _, max_mem, memory, vcpus, cpu_time = dom.info()
    return {
        "name": name, "uuid": dom.UUIDString(), "id": max(dom_id, 0),
        "state": domain_state(state), "state_reason": state_reason(state, reason),
        "persistent": persistent, "autostart": autostart, "vcpus": vcpus,
        "memory_kib": memory, "max_memory_kib": max_mem, "cpu_time_ns": cpu_time,
        "os_type": dom.OSType(), "has_managed_save": managed_save,
    }


def snapshot(snap: libvirt.virDomainSnapshot) -> pb.Snapshot:
    xml = snap.getXMLDesc()
    root = ET.fromstring(xml)
    created = Timestamp(seconds=int(root.findtext("creationTime") or 0))
    return pb.Snapshot(
        name=snap.getName(), parent=root.findtext("parent/name") or "",
        current=bool(snap.isCurrent()), state=root.findtext("state") or "",
        create_time=created, description=root.findtext("description") or "", xml=xml,
        has_metadata=bool(snap.hasMetadata(0)),
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

#: libvirt stat key -> (part of DomainStats, its field): the typed keys with no index
_FIXED_TARGETS: dict[str, tuple[str, str]] = {
    **{f"cpu.{field}": ("cpu", f"{field}_ns") for field in ("time", "user", "system")},
    **{f"balloon.{key}": ("balloon", field) for key, field in _BALLOON_FIELDS.items()},
    "vcpu.current": ("", "vcpu_current"), "vcpu.maximum": ("", "vcpu_maximum"),
    **{f"dirtyrate.{field}": ("dirtyrate", field)
       for field in ("calc_status", "calc_start_time", "calc_period", "megabytes_per_second")},
}
#: a key no table types: only in ``raw``
_UNTYPED = ("", "", -1, "")
#: libvirt stat key -> (kind, field, index, indexed kind) once seen; kinds "cpu",
#: "balloon", "" (DomainStats itself) or "indexed" for vcpu.N / net.N / block.N
_KEY_TARGETS: dict[str, tuple[str, str, int, str]] = {}
#: keys remembered at most: a key names a device index, so hosts have few of them
_MAX_KEY_TARGETS = 100_000


def _key_target(key: str) -> tuple[str, str, int, str]:
    """Where a stat key goes, worked out once per key rather than per guest."""
    target = _KEY_TARGETS.get(key)
    if target is not None:
        return target
    fixed = _FIXED_TARGETS.get(key)
    if fixed is not None:
        target = (fixed[0], fixed[1], -1, "")
    elif (match := _INDEXED.match(key)) and match.group(3) in _INDEXED_FIELDS[match.group(1)]:
        kind = match.group(1)
        target = ("indexed", _INDEXED_FIELDS[kind][match.group(3)], int(match.group(2)), kind)
    else:
        target = _UNTYPED
    if len(_KEY_TARGETS) >= _MAX_KEY_TARGETS:
        _KEY_TARGETS.clear()
    _KEY_TARGETS[key] = target
    return target


def domain_stats(dom: libvirt.virDomain, record: Mapping[str, Any]) -> pb.DomainStats:
    """One record of libvirt's bulk stats call as typed fields plus everything raw."""
    return pb.DomainStats(**_stats_fields(dom, record))


def add_domain_stats(into: Any, records: Iterable[tuple[libvirt.virDomain, Mapping[str, Any]]]
                     ) -> None:
    """Add to ``into`` (a repeated DomainStats field) the records of libvirt's bulk
    stats call, each built in place: a message built apart would be copied again."""
    for dom, record in records:
        into.add(**_stats_fields(dom, record))


def _stats_fields(dom: libvirt.virDomain, record: Mapping[str, Any]) -> dict[str, Any]:
    """DomainStats' fields: each key's place is looked up in a table filled once per
    key (``_key_target``) rather than worked out per guest."""
    top: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    indexed: dict[str, dict[int, dict[str, Any]]] = {}
    for key, value in record.items():
        part, field, index, kind = _KEY_TARGETS.get(key) or _key_target(key)
        if not field:
            continue
        if not part:
            top[field] = int(value)
        elif kind:
            indexed.setdefault(kind, {}).setdefault(index, {})[field] = value
        else:
            parts.setdefault(part, {})[field] = int(value)
    state = record.get("state.state")
    if state is not None:
        top["state"] = domain_state(int(state))
        top["state_reason"] = state_reason(int(state), int(record.get("state.reason", 0)))
    if "cpu" in parts:
        top["cpu"] = pb.CpuStats(**parts["cpu"])
    if "balloon" in parts:
        top["balloon"] = pb.BalloonStats(**parts["balloon"])
    if "dirtyrate" in parts:
        top["dirtyrate"] = pb.DirtyRateStats(**parts["dirtyrate"])
    if indexed:
        top.update(_indexed_stats(indexed))
    top["name"] = dom.name()
    top["uuid"] = dom.UUIDString()
    top["raw"] = {key: str(value) for key, value in record.items()}
    return top


def _indexed_stats(indexed: Mapping[str, Mapping[int, dict[str, Any]]]) -> dict[str, Any]:
    """The repeated fields of DomainStats, in index order."""
    fields: dict[str, Any] = {}
    if "vcpu" in indexed:
        fields["vcpus"] = [pb.VcpuStats(index=index, **values)
                           for index, values in sorted(indexed["vcpu"].items())]
    if "net" in indexed:
        fields["interfaces"] = [pb.InterfaceStats(**values)
                                for _, values in sorted(indexed["net"].items())]
    if "block" in indexed:
        fields["blocks"] = [pb.BlockStats(**values)
                            for _, values in sorted(indexed["block"].items())]
    return fields


#: StatGroup -> virDomainStatsTypes
STAT_GROUPS = proto_to_libvirt(pb.StatGroup, "STAT_GROUP_", "VIR_DOMAIN_STATS_")
#: the groups an empty request asks for: not dirtyrate, which asks each running QEMU
DEFAULT_STAT_GROUPS = [group for group in STAT_GROUPS if group != pb.STAT_GROUP_DIRTYRATE]


def stat_groups(groups: Iterable[pb.StatGroup.ValueType]) -> int:
    """libvirt's stats flags for ``groups`` (all of them but dirtyrate when empty); an
    unknown group adds nothing."""
    flags = 0
    for group in groups or DEFAULT_STAT_GROUPS:
        flags |= STAT_GROUPS.get(group, 0)
    return flags


def lifecycle_event(event: int, detail: int) -> pb.LifecycleEvent:
    return pb.LifecycleEvent(
        type=EVENT_TYPES.get(event, pb.LIFECYCLE_EVENT_TYPE_UNSPECIFIED),
        detail=EVENT_DETAILS.get(event, {}).get(detail, f"detail_{detail}"),
    )


#: libvirt's enums of the other domain events -> their proto enums
WATCHDOG_ACTIONS = libvirt_to_proto(pb.WatchdogAction, "WATCHDOG_ACTION_",
                                    "VIR_DOMAIN_EVENT_WATCHDOG_")
IO_ERROR_ACTIONS = libvirt_to_proto(pb.IoErrorAction, "IO_ERROR_ACTION_",
                                    "VIR_DOMAIN_EVENT_IO_ERROR_")
GRAPHICS_PHASES = libvirt_to_proto(pb.GraphicsPhase, "GRAPHICS_PHASE_",
                                   "VIR_DOMAIN_EVENT_GRAPHICS_")
GRAPHICS_FAMILIES = libvirt_to_proto(pb.GraphicsAddressFamily, "GRAPHICS_ADDRESS_FAMILY_",
                                     "VIR_DOMAIN_EVENT_GRAPHICS_ADDRESS_")
TRAY_CHANGES = libvirt_to_proto(pb.TrayChange, "TRAY_CHANGE_", "VIR_DOMAIN_EVENT_TRAY_CHANGE_")
BLOCK_JOB_TYPES = libvirt_to_proto(pb.BlockJobType, "BLOCK_JOB_TYPE_",
                                   "VIR_DOMAIN_BLOCK_JOB_TYPE_")
BLOCK_JOB_STATUSES = libvirt_to_proto(pb.BlockJobStatus, "BLOCK_JOB_STATUS_",
                                      "VIR_DOMAIN_BLOCK_JOB_")
AGENT_STATES = libvirt_to_proto(pb.AgentState, "AGENT_STATE_",
                                "VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_")
AGENT_REASONS = libvirt_to_proto(pb.AgentLifecycleReason, "AGENT_LIFECYCLE_REASON_",
                                 "VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_")
METADATA_TYPES = libvirt_to_proto(pb.MetadataType, "METADATA_TYPE_", "VIR_DOMAIN_METADATA_")
MEMORY_FAILURE_RECIPIENTS = libvirt_to_proto(
    pb.MemoryFailureRecipient, "MEMORY_FAILURE_RECIPIENT_",
    "VIR_DOMAIN_EVENT_MEMORY_FAILURE_RECIPIENT_")
MEMORY_FAILURE_ACTIONS = libvirt_to_proto(pb.MemoryFailureAction, "MEMORY_FAILURE_ACTION_",
                                          "VIR_DOMAIN_EVENT_MEMORY_FAILURE_ACTION_")
# libvirt names the second reason DISK_DROP_..., not DISK_CHANGE_DROP_...
DISK_CHANGE_REASONS = libvirt_to_proto(pb.DiskChangeReason, "DISK_CHANGE_REASON_",
                                       "VIR_DOMAIN_EVENT_DISK_")
DISK_CHANGE_REASONS[libvirt.VIR_DOMAIN_EVENT_DISK_CHANGE_MISSING_ON_START] = \
    pb.DISK_CHANGE_REASON_MISSING_ON_START

#: the typed parameters of tunable and job-completed events that are not ULLONG
#: (libvirt's documentation of each VIR_DOMAIN_TUNABLE_* and VIR_DOMAIN_JOB_* name)
DOMAIN_PARAM_WIDTHS = {
    libvirt.VIR_DOMAIN_TUNABLE_CPU_GLOBAL_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_TUNABLE_CPU_VCPU_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_TUNABLE_CPU_EMULATOR_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_TUNABLE_CPU_IOTHREAD_QUOTA: typed_params.LONG,
    libvirt.VIR_DOMAIN_JOB_OPERATION: typed_params.INT,
    libvirt.VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE: typed_params.INT,
}


def _enum(table: Mapping[int, Any], value: int) -> Any:
    """A libvirt enum value's proto value; UNSPECIFIED (0) for one we do not know."""
    return table.get(value, 0)


def graphics_address(address: Mapping[str, Any]) -> pb.GraphicsAddress:
    return pb.GraphicsAddress(family=_enum(GRAPHICS_FAMILIES, address.get("family", -1)),
                              node=address.get("node") or "",
                              service=address.get("service") or "")


def graphics_event(phase: int, local: Mapping[str, Any], remote: Mapping[str, Any],
                   auth_scheme: str, subject: Iterable[tuple[str, str]]) -> pb.GraphicsEvent:
    return pb.GraphicsEvent(
        phase=_enum(GRAPHICS_PHASES, phase), local=graphics_address(local),
        remote=graphics_address(remote), auth_scheme=auth_scheme or "",
        subject=[pb.GraphicsSubjectIdentity(type=kind, name=name)
                 for kind, name in subject or ()])


def memory_failure_event(recipient: int, action: int, flags: int) -> pb.MemoryFailureEvent:
    return pb.MemoryFailureEvent(
        recipient=_enum(MEMORY_FAILURE_RECIPIENTS, recipient),
        action=_enum(MEMORY_FAILURE_ACTIONS, action),
        action_required=bool(flags & libvirt.VIR_DOMAIN_MEMORY_FAILURE_ACTION_REQUIRED),
        recursive=bool(flags & libvirt.VIR_DOMAIN_MEMORY_FAILURE_RECURSIVE))


def domain_params(params: Mapping[str, Any]) -> list[Any]:
    """A tunable or job-completed event's parameters as TypedParameter messages."""
    return typed_params.to_messages(params, DOMAIN_PARAM_WIDTHS)


#: what ComputeBackend.register_events emits, by kind -> the event's message; the
#: arguments are those of libvirt's callback for the event, in its order
_EVENT_MESSAGES: dict[str, Callable[..., Any]] = {
    "lifecycle": lifecycle_event,
    "reboot": pb.RebootEvent,
    "device_added": lambda device: pb.DeviceAddedEvent(device=device),
    "device_removed": lambda device: pb.DeviceRemovedEvent(device=device),
    "rtc_change": lambda offset: pb.RtcChangeEvent(utc_offset_seconds=offset),
    "watchdog": lambda action: pb.WatchdogEvent(action=_enum(WATCHDOG_ACTIONS, action)),
    "io_error": lambda src_path, device, action, reason: pb.IoErrorEvent(
        src_path=src_path or "", device=device or "",
        action=_enum(IO_ERROR_ACTIONS, action), reason=reason or ""),
    "graphics": graphics_event,
    "tray_change": lambda device, reason: pb.TrayChangeEvent(
        device=device or "", change=_enum(TRAY_CHANGES, reason)),
    # libvirt's reason of the three power-management events is always 0 (unused)
    "pm_wakeup": lambda _reason: pb.PmWakeupEvent(),
    "pm_suspend": lambda _reason: pb.PmSuspendEvent(),
    "pm_suspend_disk": lambda _reason: pb.PmSuspendDiskEvent(),
    "balloon_change": lambda actual: pb.BalloonChangeEvent(actual_kib=actual),
    "block_job": lambda disk, kind, status: pb.BlockJobEvent(
        disk=disk or "", type=_enum(BLOCK_JOB_TYPES, kind),
        status=_enum(BLOCK_JOB_STATUSES, status)),
    "device_removal_failed": lambda device: pb.DeviceRemovalFailedEvent(device=device),
    "tunable": lambda params: pb.TunableEvent(parameters=domain_params(params)),
    "agent_lifecycle": lambda state, reason: pb.AgentLifecycleEvent(
        state=_enum(AGENT_STATES, state), reason=_enum(AGENT_REASONS, reason)),
    "migration_iteration": lambda iteration: pb.MigrationIterationEvent(iteration=iteration),
    "job_completed": lambda params: pb.JobCompletedEvent(statistics=domain_params(params)),
    "metadata_change": lambda kind, namespace_uri: pb.MetadataChangeEvent(
        type=_enum(METADATA_TYPES, kind), namespace_uri=namespace_uri or ""),
    "block_threshold": lambda device, path, threshold, excess: pb.BlockThresholdEvent(
        device=device or "", path=path or "", threshold_bytes=threshold,
        excess_bytes=excess),
    "memory_failure": memory_failure_event,
    "memory_device_size_change": lambda device, size: pb.MemoryDeviceSizeChangeEvent(
        device=device or "", size_kib=size),
    "control_error": pb.ControlErrorEvent,
    "disk_change": lambda old_src, new_src, device, reason: pb.DiskChangeEvent(
        old_src_path=old_src or "", new_src_path=new_src or "", device=device or "",
        reason=_enum(DISK_CHANGE_REASONS, reason)),
}


def domain_event(dom: libvirt.virDomain, kind: str, *details: Any,
                 explain: Explain | None = None) -> pb.WatchDomainEventsResponse:
    """The Watch response for what ComputeBackend.register_events emits; with
    ``explain``, a lifecycle event of the guest's own making says why."""
    message = _EVENT_MESSAGES[kind](*details)
    if kind == "lifecycle" and explain and details[1] in _TROUBLE_EVENTS.get(details[0], ()):
        message.message = explain(dom)
    return pb.WatchDomainEventsResponse(name=dom.name(), uuid=dom.UUIDString(), time=now(),
                                        **{kind: message})


def snapshot_name(snap: libvirt.virDomainSnapshot) -> str:
    return snap.getName()


def node_info(info: Sequence[Any]) -> pb.GetNodeInfoResponse:
    """libvirt's virNodeGetInfo list; it counts memory in MiB."""
    model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = info
    return pb.GetNodeInfoResponse(model=model, memory_kib=memory_mib * 1024, cpus=cpus,
                                  mhz=mhz, nodes=nodes, sockets=sockets, cores=cores,
                                  threads=threads)


# -- console and graphics ------------------------------------------------------

#: KeyCodeSet -> virKeycodeSet; unset is Linux's
KEY_CODE_SETS: dict[int, int] = {
    pb.KEY_CODE_SET_UNSPECIFIED: libvirt.VIR_KEYCODE_SET_LINUX,
    **proto_to_libvirt(pb.KeyCodeSet, "KEY_CODE_SET_", "VIR_KEYCODE_SET_"),  # type: ignore[arg-type]
}
#: Linux key name (KEY_ENTER, BTN_LEFT) -> code, from tools/linux-key-names.py
LINUX_KEYS: dict[str, int] = {
    name: int(code) for name, code in (
        line.split() for line in
        (Path(__file__).with_name("linux_key_names.txt").read_text().splitlines()))
}
#: virDomainSendKey's limit (VIR_DOMAIN_SEND_KEY_MAX_KEYS)
MAX_KEYS = 16


def key_codes(code_set: int, keys: Sequence[str]) -> tuple[int, list[int]]:
    """virDomainSendKey's code set and codes for keys as virsh send-key takes them:
    Linux names (KEY_ENTER, ENTER, enter), or numbers in ``code_set``."""
    if not keys or len(keys) > MAX_KEYS:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"send 1 to {MAX_KEYS} keys at once, not {len(keys)}", "INVALID_KEYS")
    libvirt_set = KEY_CODE_SETS.get(code_set)
    if libvirt_set is None:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown code set {code_set}",
                           "INVALID_KEYS")
    codes, named = [], False
    for key in keys:
        try:
            codes.append(int(key, 0))
            continue
        except ValueError:
            pass
        upper = key.upper()
        code = LINUX_KEYS.get(upper, LINUX_KEYS.get(f"KEY_{upper}"))
        if code is None:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown key name {key!r} (Linux key names such as KEY_ENTER, "
                               "or numbers in the code set)", "INVALID_KEYS")
        codes.append(code)
        named = True
    if named and libvirt_set != libvirt.VIR_KEYCODE_SET_LINUX:
        set_name = pb.KeyCodeSet.Name(cast("pb.KeyCodeSet.ValueType", code_set))
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "key names are Linux names: "
                           f"with code set {set_name} give numbers", "INVALID_KEYS")
    if any(code < 0 or code > 0xFFFF for code in codes):
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "key codes are 0 to 65535",
                           "INVALID_KEYS")
    return libvirt_set, codes


def display(found: Display) -> pb.DomainDisplay:
    return pb.DomainDisplay(type=found.type, address=found.address, port=found.port,
                            tls_port=found.tls_port, socket=found.socket, uri=found.uri)
