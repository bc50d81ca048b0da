"""libvirt's guest agent values <-> the guest agent messages of virtmesh.compute.v1.

Guest information is libvirt's flat typed parameters ("os.id", "user.0.name",
"fs.1.disk.0.alias"); the typed fields follow libvirt 9.0's names (the
virDomainGetGuestInfo documentation), and every parameter is in ``raw`` as well, so
one libvirt adds later is not lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import libvirt
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.convert import proto_to_libvirt
from services.common.errors import invalid
from virtmesh.compute.v1 import compute_service_pb2 as pb

#: InterfaceAddressSource -> virDomainInterfaceAddressesSource (unset: LEASE, libvirt's 0)
ADDRESS_SOURCES = proto_to_libvirt(pb.InterfaceAddressSource, "INTERFACE_ADDRESS_SOURCE_",
                                   "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_")
#: virIPAddrType -> IpAddressType
ADDRESS_TYPES = {libvirt.VIR_IP_ADDR_TYPE_IPV4: pb.IP_ADDRESS_TYPE_IPV4,
                 libvirt.VIR_IP_ADDR_TYPE_IPV6: pb.IP_ADDRESS_TYPE_IPV6}
#: the guest info's own spelling of an address type
ADDRESS_TYPE_NAMES = {"ipv4": pb.IP_ADDRESS_TYPE_IPV4, "ipv6": pb.IP_ADDRESS_TYPE_IPV6}
#: GuestInfoType -> virDomainGuestInfoTypes
GUEST_INFO_TYPES = proto_to_libvirt(pb.GuestInfoType, "GUEST_INFO_TYPE_",
                                    "VIR_DOMAIN_GUEST_INFO_")
#: HostnameSource -> virDomainGetHostnameFlags (unset: 0, the driver's choice)
HOSTNAME_SOURCES = proto_to_libvirt(pb.HostnameSource, "HOSTNAME_SOURCE_",
                                    "VIR_DOMAIN_GET_HOSTNAME_")
#: SSHKeysChange -> virDomainAuthorizedSSHKeysSetFlags (unset: 0, replace)
SSH_KEY_CHANGES = proto_to_libvirt(pb.SSHKeysChange, "SSH_KEYS_CHANGE_",
                                   "VIR_DOMAIN_AUTHORIZED_SSH_KEYS_SET_")
#: AgentTimeoutMode -> libvirt's special timeout values (SECONDS takes the number)
AGENT_TIMEOUTS = proto_to_libvirt(pb.AgentTimeoutMode, "AGENT_TIMEOUT_MODE_",
                                  "VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_")
AGENT_TIMEOUTS[pb.AGENT_TIMEOUT_MODE_UNSPECIFIED] = (
    libvirt.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT)
#: GuestOs field -> libvirt's parameter
OS_FIELDS = {field.name: f"os.{field.name.replace('_', '-')}"
             for field in pb.GuestOs.DESCRIPTOR.fields}


def _known(table: Mapping[Any, int], value: int, field: str, default: int | None = None) -> int:
    """``table[value]``; an unset value is ``default``; a value the table lacks (a newer
    client's) is INVALID_ARGUMENT."""
    if value == 0 and default is not None:
        return default
    if value not in table:
        raise invalid(f"{field}: unknown value {value}")
    return int(table[value])


def address_source(source: int) -> int:
    return _known(ADDRESS_SOURCES, source, "source",
                  libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)


def hostname_flags(source: int) -> int:
    return _known(HOSTNAME_SOURCES, source, "source", 0)


def ssh_key_flags(change: int) -> int:
    return _known(SSH_KEY_CHANGES, change, "change", 0)


def guest_info_types(types: list[int]) -> int:
    flags = 0
    for value in types:
        flags |= _known(GUEST_INFO_TYPES, value, "types")
    return flags


def agent_timeout(request: pb.SetAgentResponseTimeoutRequest) -> int:
    """libvirt's timeout: a number of seconds (at least 1) or a special value."""
    if request.mode == pb.AGENT_TIMEOUT_MODE_SECONDS:
        if request.seconds < 1:
            raise invalid("seconds: at least 1 with mode SECONDS")
        return request.seconds
    if request.seconds:
        raise invalid("seconds: only with mode SECONDS")
    return _known(AGENT_TIMEOUTS, request.mode, "mode")


def interfaces(table: Mapping[str, Any]) -> list[pb.GuestInterface]:
    """libvirt's interface table, sorted by name."""
    return [pb.GuestInterface(
        name=name, hwaddr=value.get("hwaddr") or "",
        addresses=[pb.IpAddress(
            type=ADDRESS_TYPES.get(address["type"], pb.IP_ADDRESS_TYPE_UNSPECIFIED),
            address=address["addr"], prefix=address["prefix"])
                   for address in value.get("addrs") or []])
        for name, value in sorted(table.items())]


def filesystems(found: list[tuple[str, str, str, list[str]]]) -> list[pb.GuestFilesystem]:
    return [pb.GuestFilesystem(mountpoint=mountpoint, device=device, type=kind,
                               disk_targets=targets)
            for mountpoint, device, kind, targets in found]


def timestamp(seconds: int, nanos: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def set_time(request: pb.SetGuestTimeRequest) -> tuple[int, int] | None:
    """(seconds, nanoseconds) to set, None when the request sets none."""
    if not request.HasField("time"):
        return None
    return request.time.seconds, request.time.nanos


def _items(params: Mapping[str, Any], prefix: str,
           build: Callable[[Callable[[str, Any], Any]], Any]) -> list[Any]:
    """One message per ``prefix.N`` of ``prefix.count``; ``build`` gets a getter of
    ``prefix.N.<key>``."""
    def getter(n: int) -> Callable[[str, Any], Any]:
        return lambda key, default: params.get(f"{prefix}.{n}.{key}", default)

    return [build(getter(n)) for n in range(int(params.get(f"{prefix}.count", 0)))]


def _user(get: Callable[[str, Any], Any]) -> pb.GuestUser:
    login_ms = int(get("login-time", 0))
    return pb.GuestUser(name=get("name", ""), domain=get("domain", ""),
                        login_time=Timestamp(seconds=login_ms // 1000,
                                             nanos=login_ms % 1000 * 1_000_000))


def _filesystem(params: Mapping[str, Any], n: int) -> pb.GuestFilesystemUsage:
    prefix = f"fs.{n}"
    return pb.GuestFilesystemUsage(
        mountpoint=params.get(f"{prefix}.mountpoint", ""), name=params.get(f"{prefix}.name", ""),
        type=params.get(f"{prefix}.fstype", ""),
        total_bytes=int(params.get(f"{prefix}.total-bytes", 0)),
        used_bytes=int(params.get(f"{prefix}.used-bytes", 0)),
        disks=_items(params, f"{prefix}.disk", lambda get: pb.GuestFilesystemDisk(
            alias=get("alias", ""), serial=get("serial", ""), device=get("device", ""))))


def _disk(params: Mapping[str, Any], n: int) -> pb.GuestDisk:
    prefix = f"disk.{n}"
    return pb.GuestDisk(
        name=params.get(f"{prefix}.name", ""), partition=bool(params.get(f"{prefix}.partition")),
        dependencies=_items(params, f"{prefix}.dependency", lambda get: get("name", "")),
        serial=params.get(f"{prefix}.serial", ""), alias=params.get(f"{prefix}.alias", ""),
        guest_alias=params.get(f"{prefix}.guest_alias", ""))


def _interface(params: Mapping[str, Any], n: int) -> pb.GuestInterface:
    prefix = f"if.{n}"
    return pb.GuestInterface(
        name=params.get(f"{prefix}.name", ""), hwaddr=params.get(f"{prefix}.hwaddr", ""),
        addresses=_items(params, f"{prefix}.addr", lambda get: pb.IpAddress(
            type=ADDRESS_TYPE_NAMES.get(get("type", ""), pb.IP_ADDRESS_TYPE_UNSPECIFIED),
            address=get("addr", ""), prefix=int(get("prefix", 0)))))


def _raw(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def guest_info(params: Mapping[str, Any]) -> pb.GetGuestInfoResponse:
    response = pb.GetGuestInfoResponse(
        users=_items(params, "user", _user),
        hostname=params.get("hostname", ""),
        filesystems=[_filesystem(params, n) for n in range(int(params.get("fs.count", 0)))],
        disks=[_disk(params, n) for n in range(int(params.get("disk.count", 0)))],
        interfaces=[_interface(params, n) for n in range(int(params.get("if.count", 0)))],
        raw={key: _raw(value) for key, value in params.items()})
    os_values = {field: params[key] for field, key in OS_FIELDS.items() if key in params}
    if os_values:
        response.os.CopyFrom(pb.GuestOs(**os_values))
    if "timezone.offset" in params or "timezone.name" in params:
        response.timezone.CopyFrom(pb.GuestTimezone(
            name=params.get("timezone.name", ""),
            offset_seconds=int(params.get("timezone.offset", 0))))
    return response
