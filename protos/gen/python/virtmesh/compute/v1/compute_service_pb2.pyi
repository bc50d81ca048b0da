import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from virtmesh.acl.v1 import acl_pb2 as _acl_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DomainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOMAIN_STATE_UNSPECIFIED: _ClassVar[DomainState]
    DOMAIN_STATE_RUNNING: _ClassVar[DomainState]
    DOMAIN_STATE_BLOCKED: _ClassVar[DomainState]
    DOMAIN_STATE_PAUSED: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTDOWN: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTOFF: _ClassVar[DomainState]
    DOMAIN_STATE_CRASHED: _ClassVar[DomainState]
    DOMAIN_STATE_PMSUSPENDED: _ClassVar[DomainState]

class PowerMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_METHOD_UNSPECIFIED: _ClassVar[PowerMethod]
    POWER_METHOD_ACPI: _ClassVar[PowerMethod]
    POWER_METHOD_GUEST_AGENT: _ClassVar[PowerMethod]
    POWER_METHOD_SIGNAL: _ClassVar[PowerMethod]

class StatGroup(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAT_GROUP_UNSPECIFIED: _ClassVar[StatGroup]
    STAT_GROUP_STATE: _ClassVar[StatGroup]
    STAT_GROUP_CPU_TOTAL: _ClassVar[StatGroup]
    STAT_GROUP_BALLOON: _ClassVar[StatGroup]
    STAT_GROUP_VCPU: _ClassVar[StatGroup]
    STAT_GROUP_INTERFACE: _ClassVar[StatGroup]
    STAT_GROUP_BLOCK: _ClassVar[StatGroup]

class LifecycleEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIFECYCLE_EVENT_TYPE_UNSPECIFIED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_DEFINED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_UNDEFINED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_STARTED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_SUSPENDED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_RESUMED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_STOPPED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_SHUTDOWN: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_PMSUSPENDED: _ClassVar[LifecycleEventType]
    LIFECYCLE_EVENT_TYPE_CRASHED: _ClassVar[LifecycleEventType]
DOMAIN_STATE_UNSPECIFIED: DomainState
DOMAIN_STATE_RUNNING: DomainState
DOMAIN_STATE_BLOCKED: DomainState
DOMAIN_STATE_PAUSED: DomainState
DOMAIN_STATE_SHUTDOWN: DomainState
DOMAIN_STATE_SHUTOFF: DomainState
DOMAIN_STATE_CRASHED: DomainState
DOMAIN_STATE_PMSUSPENDED: DomainState
POWER_METHOD_UNSPECIFIED: PowerMethod
POWER_METHOD_ACPI: PowerMethod
POWER_METHOD_GUEST_AGENT: PowerMethod
POWER_METHOD_SIGNAL: PowerMethod
STAT_GROUP_UNSPECIFIED: StatGroup
STAT_GROUP_STATE: StatGroup
STAT_GROUP_CPU_TOTAL: StatGroup
STAT_GROUP_BALLOON: StatGroup
STAT_GROUP_VCPU: StatGroup
STAT_GROUP_INTERFACE: StatGroup
STAT_GROUP_BLOCK: StatGroup
LIFECYCLE_EVENT_TYPE_UNSPECIFIED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_DEFINED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_UNDEFINED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_STARTED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_SUSPENDED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_RESUMED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_STOPPED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_SHUTDOWN: LifecycleEventType
LIFECYCLE_EVENT_TYPE_PMSUSPENDED: LifecycleEventType
LIFECYCLE_EVENT_TYPE_CRASHED: LifecycleEventType

class Domain(_message.Message):
    __slots__ = ("name", "uuid", "id", "state", "state_reason", "persistent", "autostart", "vcpus", "memory_kib", "max_memory_kib", "cpu_time_ns", "os_type", "has_managed_save")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    AUTOSTART_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_KIB_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_KIB_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    OS_TYPE_FIELD_NUMBER: _ClassVar[int]
    HAS_MANAGED_SAVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    id: int
    state: DomainState
    state_reason: str
    persistent: bool
    autostart: bool
    vcpus: int
    memory_kib: int
    max_memory_kib: int
    cpu_time_ns: int
    os_type: str
    has_managed_save: bool
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ..., id: _Optional[int] = ..., state: _Optional[_Union[DomainState, str]] = ..., state_reason: _Optional[str] = ..., persistent: _Optional[bool] = ..., autostart: _Optional[bool] = ..., vcpus: _Optional[int] = ..., memory_kib: _Optional[int] = ..., max_memory_kib: _Optional[int] = ..., cpu_time_ns: _Optional[int] = ..., os_type: _Optional[str] = ..., has_managed_save: _Optional[bool] = ...) -> None: ...

class ListDomainsRequest(_message.Message):
    __slots__ = ("active", "persistent", "autostart", "states", "page_size", "page_token")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    AUTOSTART_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    active: bool
    persistent: bool
    autostart: bool
    states: _containers.RepeatedScalarFieldContainer[DomainState]
    page_size: int
    page_token: str
    def __init__(self, active: _Optional[bool] = ..., persistent: _Optional[bool] = ..., autostart: _Optional[bool] = ..., states: _Optional[_Iterable[_Union[DomainState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDomainsResponse(_message.Message):
    __slots__ = ("domains", "next_page_token")
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedCompositeFieldContainer[Domain]
    next_page_token: str
    def __init__(self, domains: _Optional[_Iterable[_Union[Domain, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDomainRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDomainResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class GetDomainXMLRequest(_message.Message):
    __slots__ = ("name", "inactive", "secure", "migratable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    MIGRATABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    inactive: bool
    secure: bool
    migratable: bool
    def __init__(self, name: _Optional[str] = ..., inactive: _Optional[bool] = ..., secure: _Optional[bool] = ..., migratable: _Optional[bool] = ...) -> None: ...

class GetDomainXMLResponse(_message.Message):
    __slots__ = ("xml",)
    XML_FIELD_NUMBER: _ClassVar[int]
    xml: str
    def __init__(self, xml: _Optional[str] = ...) -> None: ...

class DefineDomainRequest(_message.Message):
    __slots__ = ("xml", "validate")
    XML_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_FIELD_NUMBER: _ClassVar[int]
    xml: str
    validate: bool
    def __init__(self, xml: _Optional[str] = ..., validate: _Optional[bool] = ...) -> None: ...

class DefineDomainResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class UndefineDomainRequest(_message.Message):
    __slots__ = ("name", "managed_save", "snapshots_metadata", "nvram", "keep_nvram")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANAGED_SAVE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_METADATA_FIELD_NUMBER: _ClassVar[int]
    NVRAM_FIELD_NUMBER: _ClassVar[int]
    KEEP_NVRAM_FIELD_NUMBER: _ClassVar[int]
    name: str
    managed_save: bool
    snapshots_metadata: bool
    nvram: bool
    keep_nvram: bool
    def __init__(self, name: _Optional[str] = ..., managed_save: _Optional[bool] = ..., snapshots_metadata: _Optional[bool] = ..., nvram: _Optional[bool] = ..., keep_nvram: _Optional[bool] = ...) -> None: ...

class UndefineDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateDomainRequest(_message.Message):
    __slots__ = ("xml", "paused", "validate")
    XML_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_FIELD_NUMBER: _ClassVar[int]
    xml: str
    paused: bool
    validate: bool
    def __init__(self, xml: _Optional[str] = ..., paused: _Optional[bool] = ..., validate: _Optional[bool] = ...) -> None: ...

class CreateDomainResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class StartDomainRequest(_message.Message):
    __slots__ = ("name", "paused", "force_boot")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    FORCE_BOOT_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    force_boot: bool
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ..., force_boot: _Optional[bool] = ...) -> None: ...

class StartDomainResponse(_message.Message):
    __slots__ = ("domain",)
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    domain: Domain
    def __init__(self, domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class ShutdownDomainRequest(_message.Message):
    __slots__ = ("name", "method")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: PowerMethod
    def __init__(self, name: _Optional[str] = ..., method: _Optional[_Union[PowerMethod, str]] = ...) -> None: ...

class ShutdownDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebootDomainRequest(_message.Message):
    __slots__ = ("name", "method")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: PowerMethod
    def __init__(self, name: _Optional[str] = ..., method: _Optional[_Union[PowerMethod, str]] = ...) -> None: ...

class RebootDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetDomainRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResetDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DestroyDomainRequest(_message.Message):
    __slots__ = ("name", "graceful")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACEFUL_FIELD_NUMBER: _ClassVar[int]
    name: str
    graceful: bool
    def __init__(self, name: _Optional[str] = ..., graceful: _Optional[bool] = ...) -> None: ...

class DestroyDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SuspendDomainRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SuspendDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeDomainRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResumeDomainResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetDomainAutostartRequest(_message.Message):
    __slots__ = ("name", "autostart")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUTOSTART_FIELD_NUMBER: _ClassVar[int]
    name: str
    autostart: bool
    def __init__(self, name: _Optional[str] = ..., autostart: _Optional[bool] = ...) -> None: ...

class SetDomainAutostartResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Scope(_message.Message):
    __slots__ = ("live", "config")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    live: bool
    config: bool
    def __init__(self, live: _Optional[bool] = ..., config: _Optional[bool] = ...) -> None: ...

class SetDomainVcpusRequest(_message.Message):
    __slots__ = ("name", "count", "scope", "maximum")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    scope: Scope
    maximum: bool
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., maximum: _Optional[bool] = ...) -> None: ...

class SetDomainVcpusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetDomainMemoryRequest(_message.Message):
    __slots__ = ("name", "memory_kib", "scope", "maximum")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_KIB_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_kib: int
    scope: Scope
    maximum: bool
    def __init__(self, name: _Optional[str] = ..., memory_kib: _Optional[int] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ..., maximum: _Optional[bool] = ...) -> None: ...

class SetDomainMemoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttachDeviceRequest(_message.Message):
    __slots__ = ("name", "xml", "scope")
    NAME_FIELD_NUMBER: _ClassVar[int]
    XML_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    xml: str
    scope: Scope
    def __init__(self, name: _Optional[str] = ..., xml: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ...) -> None: ...

class AttachDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DetachDeviceRequest(_message.Message):
    __slots__ = ("name", "xml", "scope")
    NAME_FIELD_NUMBER: _ClassVar[int]
    XML_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    xml: str
    scope: Scope
    def __init__(self, name: _Optional[str] = ..., xml: _Optional[str] = ..., scope: _Optional[_Union[Scope, _Mapping]] = ...) -> None: ...

class DetachDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("name", "parent", "current", "state", "create_time", "description", "xml")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    XML_FIELD_NUMBER: _ClassVar[int]
    name: str
    parent: str
    current: bool
    state: str
    create_time: _timestamp_pb2.Timestamp
    description: str
    xml: str
    def __init__(self, name: _Optional[str] = ..., parent: _Optional[str] = ..., current: _Optional[bool] = ..., state: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., description: _Optional[str] = ..., xml: _Optional[str] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("name", "xml", "disk_only", "no_metadata", "atomic", "quiesce")
    NAME_FIELD_NUMBER: _ClassVar[int]
    XML_FIELD_NUMBER: _ClassVar[int]
    DISK_ONLY_FIELD_NUMBER: _ClassVar[int]
    NO_METADATA_FIELD_NUMBER: _ClassVar[int]
    ATOMIC_FIELD_NUMBER: _ClassVar[int]
    QUIESCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    xml: str
    disk_only: bool
    no_metadata: bool
    atomic: bool
    quiesce: bool
    def __init__(self, name: _Optional[str] = ..., xml: _Optional[str] = ..., disk_only: _Optional[bool] = ..., no_metadata: _Optional[bool] = ..., atomic: _Optional[bool] = ..., quiesce: _Optional[bool] = ...) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots", "next_page_token")
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    next_page_token: str
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("name", "snapshot")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    name: str
    snapshot: str
    def __init__(self, name: _Optional[str] = ..., snapshot: _Optional[str] = ...) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class RevertToSnapshotRequest(_message.Message):
    __slots__ = ("name", "snapshot", "running", "paused", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    snapshot: str
    running: bool
    paused: bool
    force: bool
    def __init__(self, name: _Optional[str] = ..., snapshot: _Optional[str] = ..., running: _Optional[bool] = ..., paused: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class RevertToSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("name", "snapshot", "children", "metadata_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    METADATA_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    snapshot: str
    children: bool
    metadata_only: bool
    def __init__(self, name: _Optional[str] = ..., snapshot: _Optional[str] = ..., children: _Optional[bool] = ..., metadata_only: _Optional[bool] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDomainStatsRequest(_message.Message):
    __slots__ = ("names", "groups", "active_only", "nowait")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    NOWAIT_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    groups: _containers.RepeatedScalarFieldContainer[StatGroup]
    active_only: bool
    nowait: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., groups: _Optional[_Iterable[_Union[StatGroup, str]]] = ..., active_only: _Optional[bool] = ..., nowait: _Optional[bool] = ...) -> None: ...

class CpuStats(_message.Message):
    __slots__ = ("time_ns", "user_ns", "system_ns")
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    USER_NS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_NS_FIELD_NUMBER: _ClassVar[int]
    time_ns: int
    user_ns: int
    system_ns: int
    def __init__(self, time_ns: _Optional[int] = ..., user_ns: _Optional[int] = ..., system_ns: _Optional[int] = ...) -> None: ...

class BalloonStats(_message.Message):
    __slots__ = ("current_kib", "maximum_kib", "rss_kib", "available_kib", "unused_kib", "usable_kib", "swap_in_kib", "swap_out_kib", "major_fault", "minor_fault")
    CURRENT_KIB_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_KIB_FIELD_NUMBER: _ClassVar[int]
    RSS_KIB_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_KIB_FIELD_NUMBER: _ClassVar[int]
    UNUSED_KIB_FIELD_NUMBER: _ClassVar[int]
    USABLE_KIB_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_KIB_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_KIB_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FAULT_FIELD_NUMBER: _ClassVar[int]
    MINOR_FAULT_FIELD_NUMBER: _ClassVar[int]
    current_kib: int
    maximum_kib: int
    rss_kib: int
    available_kib: int
    unused_kib: int
    usable_kib: int
    swap_in_kib: int
    swap_out_kib: int
    major_fault: int
    minor_fault: int
    def __init__(self, current_kib: _Optional[int] = ..., maximum_kib: _Optional[int] = ..., rss_kib: _Optional[int] = ..., available_kib: _Optional[int] = ..., unused_kib: _Optional[int] = ..., usable_kib: _Optional[int] = ..., swap_in_kib: _Optional[int] = ..., swap_out_kib: _Optional[int] = ..., major_fault: _Optional[int] = ..., minor_fault: _Optional[int] = ...) -> None: ...

class VcpuStats(_message.Message):
    __slots__ = ("index", "state", "time_ns", "wait_ns")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    WAIT_NS_FIELD_NUMBER: _ClassVar[int]
    index: int
    state: int
    time_ns: int
    wait_ns: int
    def __init__(self, index: _Optional[int] = ..., state: _Optional[int] = ..., time_ns: _Optional[int] = ..., wait_ns: _Optional[int] = ...) -> None: ...

class InterfaceStats(_message.Message):
    __slots__ = ("name", "rx_bytes", "rx_packets", "rx_errors", "rx_drops", "tx_bytes", "tx_packets", "tx_errors", "tx_drops")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RX_BYTES_FIELD_NUMBER: _ClassVar[int]
    RX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    RX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RX_DROPS_FIELD_NUMBER: _ClassVar[int]
    TX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    TX_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TX_DROPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_drops: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_drops: int
    def __init__(self, name: _Optional[str] = ..., rx_bytes: _Optional[int] = ..., rx_packets: _Optional[int] = ..., rx_errors: _Optional[int] = ..., rx_drops: _Optional[int] = ..., tx_bytes: _Optional[int] = ..., tx_packets: _Optional[int] = ..., tx_errors: _Optional[int] = ..., tx_drops: _Optional[int] = ...) -> None: ...

class BlockStats(_message.Message):
    __slots__ = ("name", "path", "read_requests", "read_bytes", "read_time_ns", "write_requests", "write_bytes", "write_time_ns", "flush_requests", "capacity_bytes", "allocation_bytes", "physical_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    READ_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    WRITE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_BYTES_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    read_requests: int
    read_bytes: int
    read_time_ns: int
    write_requests: int
    write_bytes: int
    write_time_ns: int
    flush_requests: int
    capacity_bytes: int
    allocation_bytes: int
    physical_bytes: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., read_requests: _Optional[int] = ..., read_bytes: _Optional[int] = ..., read_time_ns: _Optional[int] = ..., write_requests: _Optional[int] = ..., write_bytes: _Optional[int] = ..., write_time_ns: _Optional[int] = ..., flush_requests: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., allocation_bytes: _Optional[int] = ..., physical_bytes: _Optional[int] = ...) -> None: ...

class DomainStats(_message.Message):
    __slots__ = ("name", "uuid", "state", "state_reason", "cpu", "balloon", "vcpu_current", "vcpu_maximum", "vcpus", "interfaces", "blocks", "raw")
    class RawEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    BALLOON_FIELD_NUMBER: _ClassVar[int]
    VCPU_CURRENT_FIELD_NUMBER: _ClassVar[int]
    VCPU_MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    state: DomainState
    state_reason: str
    cpu: CpuStats
    balloon: BalloonStats
    vcpu_current: int
    vcpu_maximum: int
    vcpus: _containers.RepeatedCompositeFieldContainer[VcpuStats]
    interfaces: _containers.RepeatedCompositeFieldContainer[InterfaceStats]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockStats]
    raw: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ..., state: _Optional[_Union[DomainState, str]] = ..., state_reason: _Optional[str] = ..., cpu: _Optional[_Union[CpuStats, _Mapping]] = ..., balloon: _Optional[_Union[BalloonStats, _Mapping]] = ..., vcpu_current: _Optional[int] = ..., vcpu_maximum: _Optional[int] = ..., vcpus: _Optional[_Iterable[_Union[VcpuStats, _Mapping]]] = ..., interfaces: _Optional[_Iterable[_Union[InterfaceStats, _Mapping]]] = ..., blocks: _Optional[_Iterable[_Union[BlockStats, _Mapping]]] = ..., raw: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetDomainStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[DomainStats]
    def __init__(self, stats: _Optional[_Iterable[_Union[DomainStats, _Mapping]]] = ...) -> None: ...

class WatchDomainEventsRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class LifecycleEvent(_message.Message):
    __slots__ = ("type", "detail")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    type: LifecycleEventType
    detail: str
    def __init__(self, type: _Optional[_Union[LifecycleEventType, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class RebootEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceAddedEvent(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class DeviceRemovedEvent(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class WatchDomainEventsResponse(_message.Message):
    __slots__ = ("name", "uuid", "time", "lifecycle", "reboot", "device_added", "device_removed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ADDED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    time: _timestamp_pb2.Timestamp
    lifecycle: LifecycleEvent
    reboot: RebootEvent
    device_added: DeviceAddedEvent
    device_removed: DeviceRemovedEvent
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lifecycle: _Optional[_Union[LifecycleEvent, _Mapping]] = ..., reboot: _Optional[_Union[RebootEvent, _Mapping]] = ..., device_added: _Optional[_Union[DeviceAddedEvent, _Mapping]] = ..., device_removed: _Optional[_Union[DeviceRemovedEvent, _Mapping]] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("xml",)
    XML_FIELD_NUMBER: _ClassVar[int]
    xml: str
    def __init__(self, xml: _Optional[str] = ...) -> None: ...

class GetDomainCapabilitiesRequest(_message.Message):
    __slots__ = ("emulator", "arch", "machine", "virt_type")
    EMULATOR_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    VIRT_TYPE_FIELD_NUMBER: _ClassVar[int]
    emulator: str
    arch: str
    machine: str
    virt_type: str
    def __init__(self, emulator: _Optional[str] = ..., arch: _Optional[str] = ..., machine: _Optional[str] = ..., virt_type: _Optional[str] = ...) -> None: ...

class GetDomainCapabilitiesResponse(_message.Message):
    __slots__ = ("xml",)
    XML_FIELD_NUMBER: _ClassVar[int]
    xml: str
    def __init__(self, xml: _Optional[str] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("model", "memory_kib", "cpus", "mhz", "nodes", "sockets", "cores", "threads")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_KIB_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MHZ_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    model: str
    memory_kib: int
    cpus: int
    mhz: int
    nodes: int
    sockets: int
    cores: int
    threads: int
    def __init__(self, model: _Optional[str] = ..., memory_kib: _Optional[int] = ..., cpus: _Optional[int] = ..., mhz: _Optional[int] = ..., nodes: _Optional[int] = ..., sockets: _Optional[int] = ..., cores: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("virtmesh_version", "libvirt_version", "hypervisor_type", "hypervisor_version", "uri")
    VIRTMESH_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIBVIRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    virtmesh_version: str
    libvirt_version: str
    hypervisor_type: str
    hypervisor_version: str
    uri: str
    def __init__(self, virtmesh_version: _Optional[str] = ..., libvirt_version: _Optional[str] = ..., hypervisor_type: _Optional[str] = ..., hypervisor_version: _Optional[str] = ..., uri: _Optional[str] = ...) -> None: ...
