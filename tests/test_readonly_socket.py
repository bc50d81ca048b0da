"""A service's read-only socket (libvirt's -sock-ro) and identity metadata on both sockets.

The compute service runs in-process on libvirt's test driver. Every RPC of
ComputeService is in exactly one of the two tables below, so a new RPC fails the
completeness test until someone decides which socket may serve it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common import acl
from services.common.daemon import Daemon
from services.common.shared import GROUPS_KEY, IDENTITY_KEY, SERVICE_KEY, STARTED_KEY, VERSION_KEY
from services.common.version import VERSION
from services.compute import SPEC as COMPUTE
from tests.conftest import domain_xml, reason_of, running_service
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.types.v1.typed_params_pb2 import TypedParameter

pytestmark = pytest.mark.timeout(60)

METHODS = COMPUTE.descriptor.methods_by_name
LIVE_AND_CONFIG = pb.Scope(live=True, config=True)
HASWELL = "<cpu><arch>x86_64</arch><model>Haswell</model><vendor>Intel</vendor></cpu>"

#: calls a read-only caller must not make; each one is valid on the main socket
WRITES: list[tuple[str, Message]] = [
    ("DefineDomain", pb.DefineDomainRequest(xml=domain_xml("newcomer"))),
    ("UndefineDomain", pb.UndefineDomainRequest(name="alpha")),
    ("CreateDomain", pb.CreateDomainRequest(xml=domain_xml("newcomer"))),
    ("StartDomain", pb.StartDomainRequest(name="alpha")),
    ("ShutdownDomain", pb.ShutdownDomainRequest(name="alpha")),
    ("RebootDomain", pb.RebootDomainRequest(name="alpha")),
    ("ResetDomain", pb.ResetDomainRequest(name="alpha")),
    ("DestroyDomain", pb.DestroyDomainRequest(name="alpha")),
    ("SuspendDomain", pb.SuspendDomainRequest(name="alpha")),
    ("ResumeDomain", pb.ResumeDomainRequest(name="alpha")),
    ("SetDomainAutostart", pb.SetDomainAutostartRequest(name="alpha", autostart=True)),
    ("SetDomainVcpus", pb.SetDomainVcpusRequest(name="alpha", count=1, scope=LIVE_AND_CONFIG)),
    ("SetDomainMemory", pb.SetDomainMemoryRequest(name="alpha", memory_kib=32768,
                                                  scope=LIVE_AND_CONFIG)),
    ("AttachDevice", pb.AttachDeviceRequest(
        name="alpha", xml="<disk type='file' device='disk'><source file='/tmp/x.img'/>"
                          "<target dev='vdb'/></disk>", scope=pb.Scope(config=True))),
    ("DetachDevice", pb.DetachDeviceRequest(
        name="alpha", xml="<disk type='file' device='disk'><source file='/tmp/x.img'/>"
                          "<target dev='vdb'/></disk>", scope=pb.Scope(config=True))),
    ("CreateSnapshot", pb.CreateSnapshotRequest(
        name="alpha", xml="<domainsnapshot><name>two</name></domainsnapshot>")),
    ("RevertToSnapshot", pb.RevertToSnapshotRequest(name="alpha", snapshot="one")),
    ("DeleteSnapshot", pb.DeleteSnapshotRequest(name="alpha", snapshot="one")),
    ("GetDomainCapabilities", pb.GetDomainCapabilitiesRequest()),
    ("OpenDomainConsole", pb.OpenDomainConsoleRequest(name="alpha")),
    ("OpenDomainChannel", pb.OpenDomainChannelRequest(name="alpha", channel="org.x.0")),
    ("OpenDomainGraphics", pb.OpenDomainGraphicsRequest(name="alpha")),
    ("GetDomainScreenshot", pb.GetDomainScreenshotRequest(name="alpha")),
    ("SendDomainKey", pb.SendDomainKeyRequest(name="alpha", keys=["KEY_A"])),
    ("SaveDomain", pb.SaveDomainRequest(name="alpha", path="/x/alpha.img")),
    ("RestoreDomain", pb.RestoreDomainRequest(path="/x/alpha.img")),
    ("DefineSaveImageXML", pb.DefineSaveImageXMLRequest(path="/x/alpha.img")),
    ("ManagedSaveDomain", pb.ManagedSaveDomainRequest(name="alpha")),
    ("RemoveManagedSave", pb.RemoveManagedSaveRequest(name="alpha")),
    ("DefineManagedSaveXML", pb.DefineManagedSaveXMLRequest(name="alpha")),
    ("CoreDumpDomain", pb.CoreDumpDomainRequest(name="alpha", path="/x/alpha.core")),
    ("AbortDomainJob", pb.AbortDomainJobRequest(name="alpha")),
    ("BaselineHypervisorCpu", pb.BaselineHypervisorCpuRequest(xml_cpus=[HASWELL])),
    ("CompareHypervisorCpu", pb.CompareHypervisorCpuRequest(xml=HASWELL)),
    ("AllocNodePages", pb.AllocNodePagesRequest(pages=[pb.PageCount(page_size_kib=4)],
                                                mode=pb.PAGE_ALLOCATION_MODE_ADD)),
    ("SetNodeMemoryParameters", pb.SetNodeMemoryParametersRequest(shm_pages_to_scan=100)),
    ("SuspendNode", pb.SuspendNodeRequest(target=pb.NODE_SUSPEND_TARGET_MEM,
                                          duration_seconds=60)),
    ("ConvertNativeToDomainXML", pb.ConvertNativeToDomainXMLRequest(config="qemu")),
    ("ConvertDomainXMLToNative", pb.ConvertDomainXMLToNativeRequest(xml=domain_xml("x"))),
    # the guest agent: libvirt allows none of it on a read-only connection
    ("GetInterfaceAddresses", pb.GetInterfaceAddressesRequest(name="alpha")),
    ("FreezeFilesystems", pb.FreezeFilesystemsRequest(name="alpha")),
    ("ThawFilesystems", pb.ThawFilesystemsRequest(name="alpha")),
    ("TrimFilesystems", pb.TrimFilesystemsRequest(name="alpha")),
    ("GetFilesystemInfo", pb.GetFilesystemInfoRequest(name="alpha")),
    ("GetGuestInfo", pb.GetGuestInfoRequest(name="alpha")),
    ("GetGuestHostname", pb.GetGuestHostnameRequest(name="alpha")),
    ("GetGuestVcpus", pb.GetGuestVcpusRequest(name="alpha")),
    ("SetGuestVcpus", pb.SetGuestVcpusRequest(name="alpha", cpumap="0")),
    ("GetGuestTime", pb.GetGuestTimeRequest(name="alpha")),
    ("SetGuestTime", pb.SetGuestTimeRequest(name="alpha", sync=True)),
    ("SetUserPassword", pb.SetUserPasswordRequest(name="alpha", user="root", password="x")),
    ("GetAuthorizedSSHKeys", pb.GetAuthorizedSSHKeysRequest(name="alpha", user="root")),
    ("SetAuthorizedSSHKeys", pb.SetAuthorizedSSHKeysRequest(name="alpha", user="root")),
    ("SetAgentResponseTimeout", pb.SetAgentResponseTimeoutRequest(name="alpha")),
    ("SetDomainSchedulerParameters", pb.SetDomainSchedulerParametersRequest(
        name="alpha", parameters=[TypedParameter(name="weight", uint_value=10)])),
    ("SetDomainMemoryParameters", pb.SetDomainMemoryParametersRequest(
        name="alpha", parameters=[TypedParameter(name="hard_limit", ulong_value=1 << 20)])),
    ("SetDomainBlkioParameters", pb.SetDomainBlkioParametersRequest(
        name="alpha", parameters=[TypedParameter(name="weight", uint_value=500)])),
    ("SetDomainNumaParameters", pb.SetDomainNumaParametersRequest(
        name="alpha", parameters=[TypedParameter(name="numa_nodeset", string_value="0")])),
    ("SetDomainPerfEvents", pb.SetDomainPerfEventsRequest(
        name="alpha", parameters=[TypedParameter(name="cmt", boolean_value=True)])),
    ("PinDomainVcpu", pb.PinDomainVcpuRequest(name="alpha", vcpu=0, cpus=[0])),
    ("PinDomainEmulator", pb.PinDomainEmulatorRequest(name="alpha", cpus=[0])),
    ("AddDomainIOThread", pb.AddDomainIOThreadRequest(name="alpha", id=3)),
    ("DeleteDomainIOThread", pb.DeleteDomainIOThreadRequest(name="alpha", id=3)),
    ("PinDomainIOThread", pb.PinDomainIOThreadRequest(name="alpha", id=3, cpus=[0])),
    ("SetDomainMetadata", pb.SetDomainMetadataRequest(
        name="alpha", type=pb.METADATA_TYPE_DESCRIPTION, value="read-only test")),
    ("SetDomainInterfaceParameters", pb.SetDomainInterfaceParametersRequest(
        name="alpha", device="vnet0",
        parameters=[TypedParameter(name="inbound.average", uint_value=100)])),
    ("SetDomainMemoryStatsPeriod", pb.SetDomainMemoryStatsPeriodRequest(name="alpha",
                                                                        period_seconds=5)),
    ("SetDomainIOThreadParameters", pb.SetDomainIOThreadParametersRequest(
        name="alpha", id=3, parameters=[TypedParameter(name="poll_max_ns", ulong_value=10)])),
    ("SetDomainVcpu", pb.SetDomainVcpuRequest(name="alpha", vcpus=[1])),
    ("SetDomainLaunchSecurityState", pb.SetDomainLaunchSecurityStateRequest(
        name="alpha", secret="c2VjcmV0", secret_header="aGVhZGVy")),
    # disks and block jobs: alpha has no disk, so libvirt refuses each on the main socket
    ("PeekDomainBlock", pb.PeekDomainBlockRequest(name="alpha", disk="vda", size=512)),
    ("PeekDomainMemory", pb.PeekDomainMemoryRequest(name="alpha", size=16)),
    ("ResizeDomainBlock", pb.ResizeDomainBlockRequest(name="alpha", disk="vda",
                                                      size_bytes=1 << 30)),
    ("SetDomainBlockIoTune", pb.SetDomainBlockIoTuneRequest(
        name="alpha", disk="vda",
        parameters=[TypedParameter(name="total_bytes_sec", ulong_value=1 << 20)])),
    ("CopyDomainBlock", pb.CopyDomainBlockRequest(
        name="alpha", disk="vda", destination_file=pb.BlockDestination(path="/x/copy.raw"))),
    ("CommitDomainBlock", pb.CommitDomainBlockRequest(name="alpha", disk="vda")),
    ("PullDomainBlock", pb.PullDomainBlockRequest(name="alpha", disk="vda")),
    ("RebaseDomainBlock", pb.RebaseDomainBlockRequest(name="alpha", disk="vda")),
    ("AbortDomainBlockJob", pb.AbortDomainBlockJobRequest(name="alpha", disk="vda")),
    ("SetDomainBlockJobSpeed", pb.SetDomainBlockJobSpeedRequest(name="alpha", disk="vda",
                                                                bandwidth_bytes=1 << 20)),
    ("SetDomainBlockThreshold", pb.SetDomainBlockThresholdRequest(name="alpha", disk="vda",
                                                                  threshold_bytes=1 << 20)),
    ("PmSuspendDomain", pb.PmSuspendDomainRequest(name="alpha",
                                                  target=pb.PM_SUSPEND_TARGET_MEM)),
    ("PmWakeupDomain", pb.PmWakeupDomainRequest(name="alpha")),
    ("RenameDomain", pb.RenameDomainRequest(name="alpha", new_name="omega")),
    ("InjectDomainNmi", pb.InjectDomainNmiRequest(name="alpha")),
    ("SendDomainProcessSignal", pb.SendDomainProcessSignalRequest(
        name="alpha", pid=1, signal=pb.PROCESS_SIGNAL_NOP)),
    ("SetDomainLifecycleAction", pb.SetDomainLifecycleActionRequest(
        name="alpha", type=pb.LIFECYCLE_TYPE_CRASH, action=pb.LIFECYCLE_ACTION_PRESERVE,
        scope=pb.Scope(config=True))),
    # the guest agent's count of vCPUs: libvirt's domain:write
    ("GetDomainVcpuCount", pb.GetDomainVcpuCountRequest(name="alpha", guest=True)),
    # migration: libvirt's domain:migrate, the getters' too
    ("MigrateDomain", pb.MigrateDomainRequest(name="alpha",
                                              destination_uri="qemu+tcp://127.0.0.1:1/system")),
    ("GetDomainMigrationMaxSpeed", pb.GetDomainMigrationMaxSpeedRequest(name="alpha")),
    ("SetDomainMigrationMaxSpeed", pb.SetDomainMigrationMaxSpeedRequest(
        name="alpha", bandwidth_mib_per_s=10)),
    ("GetDomainMigrationMaxDowntime", pb.GetDomainMigrationMaxDowntimeRequest(name="alpha")),
    ("SetDomainMigrationMaxDowntime", pb.SetDomainMigrationMaxDowntimeRequest(
        name="alpha", downtime_ms=300)),
    ("GetDomainMigrationCompressionCache",
     pb.GetDomainMigrationCompressionCacheRequest(name="alpha")),
    ("SetDomainMigrationCompressionCache", pb.SetDomainMigrationCompressionCacheRequest(
        name="alpha", cache_bytes=64 << 20)),
    ("StartDomainMigrationPostCopy", pb.StartDomainMigrationPostCopyRequest(name="alpha")),
    ("UpdateDevice", pb.UpdateDeviceRequest(
        name="alpha", xml="<interface type='network'><source network='default'/>"
        "<link state='down'/></interface>")),
    ("DetachDeviceAlias", pb.DetachDeviceAliasRequest(name="alpha", alias="net0")),
    # QEMU passthrough: domain:write, and the monitor's events connect:write
    ("QemuAgentCommand", pb.QemuAgentCommandRequest(name="alpha",
                                                    command='{"execute":"guest-ping"}')),
    ("QemuMonitorCommand", pb.QemuMonitorCommandRequest(name="alpha",
                                                        command='{"execute":"query-status"}')),
    ("WatchQemuMonitorEvents", pb.WatchQemuMonitorEventsRequest()),
    # read-only RPCs whose request asks for more: libvirt's read_secure
    ("GetDomainXML", pb.GetDomainXMLRequest(name="alpha", secure=True)),
    ("GetDomainXML", pb.GetDomainXMLRequest(name="alpha", migratable=True)),
    ("GetSaveImageXML", pb.GetSaveImageXMLRequest(path="/x/alpha.img", secure=True)),
    ("GetManagedSaveXML", pb.GetManagedSaveXMLRequest(name="alpha", secure=True)),
    ("GetCheckpoint", pb.GetCheckpointRequest(name="alpha", checkpoint="one", secure=True)),
    ("CreateCheckpoint", pb.CreateCheckpointRequest(name="alpha")),
    ("DeleteCheckpoint", pb.DeleteCheckpointRequest(name="alpha", checkpoint="one")),
    ("BeginBackup", pb.BeginBackupRequest(name="alpha", backup_xml="<domainbackup/>")),
]

#: calls a read-only caller may make
READS: list[tuple[str, Message]] = [
    ("ListDomains", pb.ListDomainsRequest()),
    ("GetDomain", pb.GetDomainRequest(name="alpha")),
    ("LookupDomainById", pb.LookupDomainByIdRequest(id=1)),
    ("GetDomainXML", pb.GetDomainXMLRequest(name="alpha", inactive=True)),
    ("ListSnapshots", pb.ListSnapshotsRequest(name="alpha")),
    ("GetSnapshot", pb.GetSnapshotRequest(name="alpha", snapshot="one")),
    ("GetDomainStats", pb.GetDomainStatsRequest()),
    ("GetCapabilities", pb.GetCapabilitiesRequest()),
    ("GetNodeInfo", pb.GetNodeInfoRequest()),
    ("GetVersion", pb.GetVersionRequest()),
    ("WatchDomainEvents", pb.WatchDomainEventsRequest()),
    ("GetDomainDisplay", pb.GetDomainDisplayRequest(name="alpha")),
    ("BaselineCpu", pb.BaselineCpuRequest(xml_cpus=[HASWELL])),
    ("GetCpuModelNames", pb.GetCpuModelNamesRequest(arch="x86_64")),
    ("GetSysinfo", pb.GetSysinfoRequest()),
    ("GetHostname", pb.GetHostnameRequest()),
    ("GetMaxVcpus", pb.GetMaxVcpusRequest()),
    ("GetNodeCpuStats", pb.GetNodeCpuStatsRequest()),
    ("GetNodeFreeMemory", pb.GetNodeFreeMemoryRequest()),
    ("GetNodeCpuMap", pb.GetNodeCpuMapRequest()),
    ("GetNodeSecurityModel", pb.GetNodeSecurityModelRequest()),
    # served, and refused by the test driver or for the request as on the main socket
    ("CompareCpu", pb.CompareCpuRequest(xml=HASWELL)),
    ("GetNodeMemoryStats", pb.GetNodeMemoryStatsRequest()),
    ("GetCellsFreeMemory", pb.GetCellsFreeMemoryRequest()),
    ("GetNodeFreePages", pb.GetNodeFreePagesRequest()),
    ("GetNodeMemoryParameters", pb.GetNodeMemoryParametersRequest()),
    ("GetNodeSevInfo", pb.GetNodeSevInfoRequest()),
    ("GetSaveImageXML", pb.GetSaveImageXMLRequest(path="/x/alpha.img")),
    ("GetManagedSaveXML", pb.GetManagedSaveXMLRequest(name="alpha")),
    ("GetDomainJobInfo", pb.GetDomainJobInfoRequest(name="alpha")),
    ("GetCurrentSnapshot", pb.GetCurrentSnapshotRequest(name="alpha")),
    ("GetSnapshotParent", pb.GetSnapshotParentRequest(name="alpha", snapshot="one")),
    ("ListSnapshotChildren", pb.ListSnapshotChildrenRequest(name="alpha", snapshot="one")),
    ("ListCheckpoints", pb.ListCheckpointsRequest(name="alpha")),
    ("GetCheckpoint", pb.GetCheckpointRequest(name="alpha", checkpoint="one")),
    ("GetCheckpointParent", pb.GetCheckpointParentRequest(name="alpha", checkpoint="one")),
    ("ListCheckpointChildren", pb.ListCheckpointChildrenRequest(name="alpha",
                                                                checkpoint="one")),
    ("GetBackupXML", pb.GetBackupXMLRequest(name="alpha")),
    ("GetDomainSchedulerParameters", pb.GetDomainSchedulerParametersRequest(name="alpha")),
    ("GetDomainMemoryParameters", pb.GetDomainMemoryParametersRequest(name="alpha")),
    ("GetDomainBlkioParameters", pb.GetDomainBlkioParametersRequest(name="alpha")),
    ("GetDomainNumaParameters", pb.GetDomainNumaParametersRequest(name="alpha")),
    ("GetDomainPerfEvents", pb.GetDomainPerfEventsRequest(name="alpha")),
    ("GetDomainVcpuPinInfo", pb.GetDomainVcpuPinInfoRequest(name="alpha")),
    ("GetDomainEmulatorPinInfo", pb.GetDomainEmulatorPinInfoRequest(name="alpha")),
    ("GetDomainIOThreadInfo", pb.GetDomainIOThreadInfoRequest(name="alpha")),
    ("GetDomainMetadata", pb.GetDomainMetadataRequest(name="alpha",
                                                      type=pb.METADATA_TYPE_TITLE)),
    ("GetDomainMaxMemory", pb.GetDomainMaxMemoryRequest(name="alpha")),
    # CPU times change between two calls: the same refusal on both sockets
    ("GetDomainCpuStats", pb.GetDomainCpuStatsRequest(name="alpha", start_cpu=9999,
                                                      cpu_count=1)),
    ("GetDomainVcpus", pb.GetDomainVcpusRequest(name="nope")),
    ("GetDomainInterfaceParameters", pb.GetDomainInterfaceParametersRequest(
        name="alpha", device="vnet0")),
    ("GetDomainSecurityLabels", pb.GetDomainSecurityLabelsRequest(name="alpha")),
    ("GetDomainLaunchSecurityInfo", pb.GetDomainLaunchSecurityInfoRequest(name="alpha")),
    # alpha has no disk or interface: refused alike on both sockets; its memory
    # statistics are the test driver's fixed ones
    ("GetDomainBlockInfo", pb.GetDomainBlockInfoRequest(name="alpha", disk="vda")),
    ("GetDomainBlockStats", pb.GetDomainBlockStatsRequest(name="alpha", disk="vda")),
    ("GetDomainInterfaceStats", pb.GetDomainInterfaceStatsRequest(name="alpha",
                                                                  device="vnet0")),
    ("GetDomainMemoryStats", pb.GetDomainMemoryStatsRequest(name="alpha")),
    ("GetDomainBlockIoTune", pb.GetDomainBlockIoTuneRequest(name="alpha", disk="vda")),
    ("GetDomainBlockJobInfo", pb.GetDomainBlockJobInfoRequest(name="alpha", disk="vda")),
    ("GetDomainMessages", pb.GetDomainMessagesRequest(name="alpha")),
    ("GetDomainVcpuCount", pb.GetDomainVcpuCountRequest(name="alpha", maximum=True)),
    ("StartDomainDirtyRateCalc", pb.StartDomainDirtyRateCalcRequest(name="alpha")),
]


def case_id(case: tuple[str, Message]) -> str:
    name, request = case
    flags = [field.name for field, value in request.ListFields() if value is True]
    return "-".join([name, *flags])


@pytest.fixture
def daemon(tmp_path: Path, node_uri: str) -> Iterator[Daemon]:
    with running_service(tmp_path, node_uri, grace_period=0.5) as running:
        with main_stub(running) as stub:
            stub.CreateSnapshot(pb.CreateSnapshotRequest(
                name="alpha", xml="<domainsnapshot><name>one</name></domainsnapshot>"),
                timeout=10)
        yield running


@contextlib.contextmanager
def stub_on(path: Path | None) -> Iterator[pb_grpc.ComputeServiceStub]:
    assert path is not None
    with grpc.insecure_channel(f"unix:{path}") as channel:
        yield pb_grpc.ComputeServiceStub(channel)


def main_stub(daemon: Daemon) -> contextlib.AbstractContextManager[pb_grpc.ComputeServiceStub]:
    return stub_on(daemon.socket_path)


def ro_stub(daemon: Daemon) -> contextlib.AbstractContextManager[pb_grpc.ComputeServiceStub]:
    return stub_on(daemon.read_only_socket_path)


def call(stub: pb_grpc.ComputeServiceStub, name: str, request: Message,
         metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """Make the call; a stream is made until its headers (subscribed), then cancelled.
    A request stream is the one request."""
    method = getattr(stub, name)
    if METHODS[name].client_streaming:
        request = iter([request])  # type: ignore[assignment]
    if METHODS[name].server_streaming:
        stream = method(request, timeout=10, metadata=metadata)
        stream.initial_metadata()
        if not stream.is_active() and stream.code() != grpc.StatusCode.OK:
            raise cast(grpc.RpcError, stream)
        stream.cancel()
        return None
    return method(request, timeout=10, metadata=metadata)


def outcome(stub: pb_grpc.ComputeServiceStub, name: str, request: Message) -> Any:
    """The call's reply, or its status code when it fails."""
    try:
        return call(stub, name, request)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined]


def failure(fn: Callable[[], Any]) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        fn()
    return caught.value


def state(daemon: Daemon) -> list[Any]:
    """Everything the writes could change, read on the main socket."""
    with main_stub(daemon) as stub:
        domains = stub.ListDomains(pb.ListDomainsRequest(), timeout=10).domains
        seen: list[Any] = []
        for domain in domains:
            domain.ClearField("cpu_time_ns")
            xml = stub.GetDomainXML(pb.GetDomainXMLRequest(name=domain.name, secure=True),
                                    timeout=10).xml
            snapshots = stub.ListSnapshots(pb.ListSnapshotsRequest(name=domain.name),
                                           timeout=10).snapshots
            seen.append((domain, xml, [(s.name, s.current) for s in snapshots]))
        return seen


# -- which RPC goes where ----------------------------------------------------------


def test_tables_cover_every_rpc_and_agree_with_the_declared_permissions() -> None:
    assert {name for name, _ in WRITES} | {name for name, _ in READS} == set(METHODS)
    for name, request in WRITES:
        assert not acl.is_read_only(METHODS[name], request), name
    for name, request in READS:
        assert acl.is_read_only(METHODS[name], request), name


@pytest.mark.parametrize("case", WRITES, ids=case_id)
def test_writes_are_refused_on_the_read_only_socket(daemon: Daemon,
                                                    case: tuple[str, Message],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    name, request = case
    caplog.set_level(logging.INFO, logger="virtmesh.rpc")
    before = state(daemon)
    with ro_stub(daemon) as stub:
        error = failure(lambda: call(stub, name, request))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert reason_of(error) == "READ_ONLY_SOCKET"
    missing = [str(p) for p in acl.required(METHODS[name], request) if not p.read_only]
    assert error.details() == (f"{name} is not allowed on the read-only socket: "
                               f"it needs {', '.join(missing)}")
    assert state(daemon) == before
    assert any(getattr(r, "method", "").endswith(f"/{name}")
               and getattr(r, "code", "") == "PERMISSION_DENIED"
               for r in caplog.records)  # refusals are logged like every call
    # The control: the same call is not refused on the main socket.
    with main_stub(daemon) as stub:
        try:
            call(stub, name, request)
        except grpc.RpcError as error:
            assert error.code() != grpc.StatusCode.PERMISSION_DENIED, error


@pytest.mark.parametrize("case", READS, ids=case_id)
def test_reads_are_served_on_the_read_only_socket(daemon: Daemon,
                                                  case: tuple[str, Message]) -> None:
    name, request = case
    with ro_stub(daemon) as ro, main_stub(daemon) as main:
        reply = outcome(ro, name, request)
        assert reply != grpc.StatusCode.PERMISSION_DENIED
        if name not in ("WatchDomainEvents", "GetDomainStats", "ListDomains", "GetDomain",
                        "LookupDomainById"):
            assert reply == outcome(main, name, request)  # the same servicer (no clocks)
    if name == "ListDomains":
        assert [d.name for d in reply.domains] == ["alpha"]
    if name == "LookupDomainById":
        assert reply.domain.name == "alpha"


def test_read_only_socket_shares_the_watcher_stream_with_the_main_one(daemon: Daemon) -> None:
    with ro_stub(daemon) as ro, main_stub(daemon) as main:
        stream = ro.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=20)
        stream.initial_metadata()  # subscribed
        main.SuspendDomain(pb.SuspendDomainRequest(name="alpha"), timeout=10)
        event = next(stream)
        stream.cancel()
    assert event.name == "alpha" and event.lifecycle.type == pb.LIFECYCLE_EVENT_TYPE_SUSPENDED


def test_health_and_reflection_on_the_read_only_socket(daemon: Daemon) -> None:
    assert daemon.read_only_socket_path is not None
    with grpc.insecure_channel(f"unix:{daemon.read_only_socket_path}") as channel:
        reply, call_ = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(service=COMPUTE.descriptor.full_name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        headers = dict(call_.initial_metadata())
        assert headers[SERVICE_KEY] == "compute" and headers[VERSION_KEY] == VERSION
        started = datetime.datetime.fromisoformat(headers[STARTED_KEY])
        assert started <= datetime.datetime.now(datetime.UTC)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert COMPUTE.descriptor.full_name in names


# -- sockets --------------------------------------------------------------------------


def test_socket_files_modes_and_removal(tmp_path: Path, node_uri: str) -> None:
    with running_service(tmp_path, node_uri, grace_period=0.5) as daemon:
        main, ro = daemon.socket_path, daemon.read_only_socket_path
        assert ro == tmp_path / "run" / "compute-ro.sock"
        assert stat.S_ISSOCK(ro.stat().st_mode)
        assert stat.S_IMODE(ro.stat().st_mode) == 0o666
        assert stat.S_IMODE(main.stat().st_mode) == 0o660
    assert not main.exists() and not ro.exists()


def test_read_only_socket_mode_path_and_off(tmp_path: Path, node_uri: str) -> None:
    custom = tmp_path / "elsewhere" / "ro.sock"
    with running_service(tmp_path, node_uri, grace_period=0.5, socket_ro=str(custom),
                         socket_ro_mode=0o640) as daemon:
        assert daemon.read_only_socket_path == custom
        assert stat.S_IMODE(custom.stat().st_mode) == 0o640
    with running_service(tmp_path, node_uri, grace_period=0.5, socket_ro="none") as daemon:
        assert daemon.read_only_socket_path is None
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["compute.sock"]


# -- identity metadata ---------------------------------------------------------------


@pytest.mark.parametrize("metadata", [((IDENTITY_KEY, "alice"),), ((GROUPS_KEY, "admin"),),
                                      ((IDENTITY_KEY, "alice"), (GROUPS_KEY, "admin"))])
def test_identity_metadata_is_refused_on_the_read_only_socket(
        daemon: Daemon, metadata: tuple[tuple[str, str], ...]) -> None:
    with ro_stub(daemon) as stub:
        error = failure(lambda: stub.GetVersion(pb.GetVersionRequest(), timeout=10,
                                                metadata=metadata))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert reason_of(error) == "IDENTITY_NOT_ACCEPTED"
    assert IDENTITY_KEY in error.details() and "main socket" in error.details()


def test_identity_is_logged_on_the_main_socket_only(daemon: Daemon,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="virtmesh.rpc")
    with main_stub(daemon) as stub:
        stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10,
                       metadata=((IDENTITY_KEY, "CN=alice,O=example"), (GROUPS_KEY, "team")))
        stub.SetDomainAutostart(pb.SetDomainAutostartRequest(name="alpha", autostart=True),
                                timeout=10, metadata=((IDENTITY_KEY, "CN=bob,O=example"),))
        stub.GetVersion(pb.GetVersionRequest(), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.GetDomain(pb.GetDomainRequest(name="nonesuch"), timeout=10)
    with ro_stub(daemon) as stub:
        stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
    lines = {str(getattr(record, "method", "")).rsplit("/", 1)[-1]
             + ("" if getattr(record, "code", "") == "OK" else " failed"): record
             for record in caplog.records}
    identities = {name: getattr(record, "identity", None) for name, record in lines.items()}
    assert identities["GetDomain"] == "CN=alice,O=example"
    assert lines["GetDomain"].getMessage().endswith(" by CN=alice,O=example")
    # a read that succeeds is said at DEBUG; a change, or a failure, at INFO
    assert lines["GetDomain"].levelno == logging.DEBUG
    assert lines["SetDomainAutostart"].levelno == logging.INFO
    assert lines["SetDomainAutostart"].getMessage().endswith(" by CN=bob,O=example")
    assert lines["GetDomain failed"].levelno == logging.INFO
    assert identities["GetVersion"] == "" and " by " not in lines["GetVersion"].getMessage()
    assert identities["GetNodeInfo"] == ""
