"""The migration RPCs of ComputeService (MigrateDomain, the bandwidth, downtime and
compression cache of a domain's migrations, post-copy), the device updates
(UpdateDevice, DetachDeviceAlias) and QEMU passthrough (QemuAgentCommand,
QemuMonitorCommand, WatchQemuMonitorEvents).

There is no second libvirt host here: a migration is checked (the destination URI,
flags and parameters, before libvirt sees them), refused cleanly by libvirt (an
unreachable destination, an embedded source), and its tunables are read and set on
a running QEMU guest (the example guest, embedded, TCG). On libvirt's test:///default
for what its driver has (and UNIMPLEMENTED where it has not); bad input on every RPC,
which changes nothing; the CLI.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest
from google.protobuf.message import Message

from guest import example
from services.common.daemon import Daemon
from services.compute import convert_migration
from services.compute.backend_migration import MAX_BANDWIDTH
from tests.conftest import domain_xml, error_of, reason_of, renamed, running_service
from tests.test_e2e_qemu import BOOTED, EMBED_URI, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client import cli

pytestmark = pytest.mark.timeout(120)
Stub = pb_grpc.ComputeServiceStub
C = grpc.StatusCode
#: test:///default's running domain, and an inactive one the tests define
RUNNING, STOPPED = "test", "stopped"
#: nothing listens there: a destination that cannot be reached
UNREACHABLE = "qemu+tcp://127.0.0.1:1/system"
PING, QUERY_STATUS = '{"execute":"guest-ping"}', '{"execute":"query-status"}'
CDROM_XML = """<disk type='file' device='cdrom'>
  <driver name='qemu' type='raw'/>
  {source}
  <target dev='hdc' bus='ide'/>
  <readonly/>
</disk>"""


def code_and_reason(call: Any, request: Message) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request, 30)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


def migrate(name: str = RUNNING, uri: str = UNREACHABLE, **fields: Any) -> pb.MigrateDomainRequest:
    return pb.MigrateDomainRequest(name=name, destination_uri=uri, **fields)


@pytest.fixture(scope="module")
def test_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_service(tmp_path_factory.mktemp("migration"), "test:///default",
                         grace_period=0.5) as daemon:
        with grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            Stub(channel).DefineDomain(pb.DefineDomainRequest(xml=domain_xml(STOPPED)))
        yield daemon


@pytest.fixture
def stub(test_daemon: Daemon) -> Iterator[Stub]:
    with grpc.insecure_channel(f"unix:{test_daemon.socket_path}") as channel:
        yield Stub(channel)


def state_of(stub: Stub, name: str) -> int:
    return int(stub.GetDomain(pb.GetDomainRequest(name=name), timeout=10).domain.state)


# -- checked before libvirt sees it ----------------------------------------------------

BAD_URIS = [
    "",
    "qemu+tcp://127.0.0.1:1/system\0",
    "qemu+tcp://host/system " + "x",
    "qemu+tcp://" + "h" * 1100 + "/system",
    "http://host/system",
    "test:///default",
    "xen+ssh://host/system",
    "qemu:///embed?root=/tmp/x",
    "qemu+tcp://host/embed",
    "qemu://host/system",          # a remote host without a transport
    "qemu+tcp:///system",          # a transport without a host
    "qemu+unix://host/system",
    "qemu+tcp://host:99999/system",
    "qemu+tcp://host:port/system",
    "/system",
    "qemu+ssh://host/system?netcat=/tmp/evil",
    "qemu+tls://host/system?pkipath=/etc",
    "qemu+ssh://host/system#x",
    "qemu+ssh://host/system?",
]


@pytest.mark.parametrize("uri", BAD_URIS, ids=range(len(BAD_URIS)))
def test_a_bad_destination_uri_is_refused_first(stub: Stub, uri: str) -> None:
    code, reason = code_and_reason(stub.MigrateDomain, migrate(uri=uri, peer2peer=True))
    assert code == C.INVALID_ARGUMENT
    # a NUL anywhere in a request: the service refuses it whole (MALFORMED_REQUEST)
    assert reason in ("INVALID_URI", "MISSING_FIELD", "MALFORMED_REQUEST")
    assert state_of(stub, RUNNING) == pb.DOMAIN_STATE_RUNNING


BAD_MIGRATIONS = [
    migrate(non_shared_disk=True, non_shared_inc=True),
    migrate(tunnelled=True),
    migrate(offline=True),
    migrate(offline=True, persist_dest=True, live=True),
    migrate(peer2peer=True, tunnelled=True, parallel=True),
    migrate(parameters=pb.MigrationParameters(destination_xml="<domain>")),
    migrate(parameters=pb.MigrationParameters(destination_xml="<network/>")),
    migrate(parameters=pb.MigrationParameters(persistent_xml="x\0y")),
    migrate(parameters=pb.MigrationParameters(destination_name="a\nb")),
    migrate(parameters=pb.MigrationParameters(listen_address="::1\0")),
    migrate(parameters=pb.MigrationParameters(migration_uri="tcp://" + "x" * 2000)),
    migrate(parameters=pb.MigrationParameters(bandwidth_mib_per_s=MAX_BANDWIDTH + 1)),
    migrate(parameters=pb.MigrationParameters(disks=["vda"])),
    migrate(non_shared_disk=True, parameters=pb.MigrationParameters(disks=["vda", "vda"])),
    migrate(non_shared_disk=True, parameters=pb.MigrationParameters(disks=[""])),
    migrate(parameters=pb.MigrationParameters(compression=["xbzrle"])),
    migrate(compressed=True, parameters=pb.MigrationParameters(compression=["gzip"])),
    migrate(parameters=pb.MigrationParameters(parallel_connections=4)),
    migrate(parameters=pb.MigrationParameters(compression_mt_level=-1)),
    migrate(parameters=pb.MigrationParameters(disks_port=70000)),
]


@pytest.mark.parametrize("request_", BAD_MIGRATIONS, ids=range(len(BAD_MIGRATIONS)))
def test_bad_flags_and_parameters_are_refused_first(stub: Stub, request_: Message) -> None:
    assert code_and_reason(stub.MigrateDomain, request_)[0] == C.INVALID_ARGUMENT
    assert state_of(stub, RUNNING) == pb.DOMAIN_STATE_RUNNING


def test_parameters_convert_to_libvirts_names() -> None:
    request = migrate(live=True, peer2peer=True, compressed=True, parameters=pb.MigrationParameters(
        destination_name="b", bandwidth_mib_per_s=100, disks=["vda", "vdb"],
        compression=["xbzrle"], compression_mt_level=0))
    assert convert_migration.parameters(request.parameters) == {
        "destination_name": "b", "bandwidth": 100, "migrate_disks": ["vda", "vdb"],
        "compression": ["xbzrle"], "compression.mt.level": 0}
    assert convert_migration.migrate_flags(request) == (
        libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_COMPRESSED)
    assert convert_migration.migrate_flags(migrate()) == 0
    # every bool of the request is a flag, and every flag a bool
    bools = {field.name for field in pb.MigrateDomainRequest.DESCRIPTOR.fields
             if field.type == field.TYPE_BOOL}
    assert bools == set(convert_migration.FLAGS)
    scalars = {field.name for field in pb.MigrationParameters.DESCRIPTOR.fields}
    assert scalars == set(convert_migration.PARAMETERS) | set(convert_migration.LISTS)


# -- on the test driver ------------------------------------------------------------------

def test_an_unreachable_destination_is_unavailable_and_the_guest_runs_on(stub: Stub) -> None:
    """Directly, the service opens the destination itself: it cannot."""
    assert code_and_reason(stub.MigrateDomain, migrate(live=True)) == (
        C.UNAVAILABLE, "DESTINATION_UNREACHABLE")
    assert state_of(stub, RUNNING) == pb.DOMAIN_STATE_RUNNING


def test_a_stopped_domain_migrates_only_offline(stub: Stub) -> None:
    assert code_and_reason(stub.MigrateDomain, migrate(STOPPED, live=True)) == (
        C.FAILED_PRECONDITION, "VIR_ERR_OPERATION_INVALID")


TUNABLES: list[tuple[str, Message]] = [
    ("GetDomainMigrationMaxSpeed", pb.GetDomainMigrationMaxSpeedRequest(name=RUNNING)),
    ("SetDomainMigrationMaxSpeed", pb.SetDomainMigrationMaxSpeedRequest(
        name=RUNNING, bandwidth_mib_per_s=10)),
    ("GetDomainMigrationMaxDowntime", pb.GetDomainMigrationMaxDowntimeRequest(name=RUNNING)),
    ("SetDomainMigrationMaxDowntime", pb.SetDomainMigrationMaxDowntimeRequest(
        name=RUNNING, downtime_ms=300)),
    ("GetDomainMigrationCompressionCache",
     pb.GetDomainMigrationCompressionCacheRequest(name=RUNNING)),
    ("SetDomainMigrationCompressionCache", pb.SetDomainMigrationCompressionCacheRequest(
        name=RUNNING, cache_bytes=64 << 20)),
    ("StartDomainMigrationPostCopy", pb.StartDomainMigrationPostCopyRequest(name=RUNNING)),
    ("UpdateDevice", pb.UpdateDeviceRequest(name=RUNNING, xml=CDROM_XML.format(source=""))),
    ("DetachDeviceAlias", pb.DetachDeviceAliasRequest(name=RUNNING, alias="ide0-1-0")),
    ("QemuAgentCommand", pb.QemuAgentCommandRequest(name=RUNNING, command=PING)),
    ("QemuMonitorCommand", pb.QemuMonitorCommandRequest(name=RUNNING, command=QUERY_STATUS)),
]


@pytest.mark.parametrize(("rpc", "request_"), TUNABLES, ids=[name for name, _ in TUNABLES])
def test_what_the_test_driver_lacks_is_unimplemented(stub: Stub, rpc: str,
                                                     request_: Message) -> None:
    """libvirt-python's getters answer None for a failure: still the driver's refusal."""
    assert code_and_reason(getattr(stub, rpc), request_) == (C.UNIMPLEMENTED,
                                                             "VIR_ERR_NO_SUPPORT")


ALL: list[tuple[str, Message]] = [("MigrateDomain", migrate(live=True)), *TUNABLES]



def test_the_tables_cover_every_rpc_of_the_group() -> None:
    from services.compute.servicer_devices import DevicesServicer
    from services.compute.servicer_migration import MigrationServicer
    from services.compute.servicer_qemu import QemuServicer
    rpcs = {name for mixin in (MigrationServicer, DevicesServicer, QemuServicer)
            for name in vars(mixin) if name[0].isupper()}
    assert rpcs == {name for name, _ in ALL} | {"WatchQemuMonitorEvents"}


@pytest.mark.parametrize(("rpc", "request_"), ALL, ids=[name for name, _ in ALL])
def test_an_unknown_domain_is_not_found(stub: Stub, rpc: str, request_: Message) -> None:
    assert code_and_reason(getattr(stub, rpc), renamed(request_, "nope")) == (
        C.NOT_FOUND, "VIR_ERR_NO_DOMAIN")


INVALID: list[tuple[str, Message]] = [
    ("SetDomainMigrationMaxSpeed", pb.SetDomainMigrationMaxSpeedRequest(
        name=RUNNING, bandwidth_mib_per_s=MAX_BANDWIDTH + 1)),
    ("SetDomainMigrationMaxDowntime", pb.SetDomainMigrationMaxDowntimeRequest(name=RUNNING)),
    ("SetDomainMigrationCompressionCache",
     pb.SetDomainMigrationCompressionCacheRequest(name=RUNNING)),
    ("SetDomainMigrationCompressionCache",
     pb.SetDomainMigrationCompressionCacheRequest(name=RUNNING, cache_bytes=3 << 20)),
    ("SetDomainMigrationCompressionCache",
     pb.SetDomainMigrationCompressionCacheRequest(name=RUNNING, cache_bytes=1024)),
    ("UpdateDevice", pb.UpdateDeviceRequest(name=RUNNING)),
    ("UpdateDevice", pb.UpdateDeviceRequest(name=RUNNING, xml="<disk")),
    ("UpdateDevice", pb.UpdateDeviceRequest(name=RUNNING, xml="<disk>\0</disk>")),
    ("UpdateDevice", pb.UpdateDeviceRequest(name=RUNNING, xml="<disk/><disk/>")),
    ("DetachDeviceAlias", pb.DetachDeviceAliasRequest(name=RUNNING)),
    ("DetachDeviceAlias", pb.DetachDeviceAliasRequest(name=RUNNING, alias="net0\0")),
    ("DetachDeviceAlias", pb.DetachDeviceAliasRequest(name=RUNNING, alias="a b")),
    ("DetachDeviceAlias", pb.DetachDeviceAliasRequest(name=RUNNING, alias="a" * 200)),
    *[("QemuAgentCommand", pb.QemuAgentCommandRequest(name=RUNNING, command=command))
      for command in ("", "guest-ping", "[1]", '{"arguments":{}}', '{"execute":""}',
                      '{"execute":"guest-ping","arguments":[]}', "{" * 100000,
                      '{"execute":"guest-ping","x":"' + "a" * (1 << 20) + '"}')],
    ("QemuAgentCommand", pb.QemuAgentCommandRequest(name=RUNNING, command=PING,
                                                    timeout_seconds=301)),
    *[("QemuMonitorCommand", pb.QemuMonitorCommandRequest(name=RUNNING, command=command))
      for command in ("", "info status", '"query-status"', '{"execute":7}')],
    *[("QemuMonitorCommand", pb.QemuMonitorCommandRequest(name=RUNNING, command=command,
                                                          hmp=True))
      for command in ("", "info status\ninfo status", "x" * 5000)],
]


def watch_error(stub: Stub, request: pb.WatchQemuMonitorEventsRequest) -> tuple[Any, str]:
    stream = stub.WatchQemuMonitorEvents(request, timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    return caught.value.code(), reason_of(caught.value)  # type: ignore[attr-defined]


def test_watching_monitor_events_refuses_bad_requests(stub: Stub) -> None:
    assert watch_error(stub, pb.WatchQemuMonitorEventsRequest(name="nope")) == (
        C.NOT_FOUND, "VIR_ERR_NO_DOMAIN")
    for event in ("no spaces", "a" * 200, "STOP;"):
        assert watch_error(stub, pb.WatchQemuMonitorEventsRequest(event=event)) == (
            C.INVALID_ARGUMENT, "INVALID_EVENT")
    # the test driver has no QEMU monitor
    assert watch_error(stub, pb.WatchQemuMonitorEventsRequest())[0] == C.UNIMPLEMENTED


@pytest.mark.parametrize("rpc, request_", [
    ("QemuAgentCommand", pb.QemuAgentCommandRequest(name=STOPPED, command=PING)),
    ("QemuMonitorCommand", pb.QemuMonitorCommandRequest(name=STOPPED, command=QUERY_STATUS)),
], ids=["agent", "monitor"])
def test_passthrough_to_a_stopped_domain_is_a_failed_precondition(
        stub: Stub, rpc: str, request_: Message) -> None:
    assert code_and_reason(getattr(stub, rpc), request_) == (
        C.FAILED_PRECONDITION, "VIR_ERR_OPERATION_INVALID")


@pytest.mark.parametrize(("rpc", "request_"), INVALID,
                         ids=[f"{name}-{n}" for n, (name, _) in enumerate(INVALID)])
def test_invalid_arguments(stub: Stub, rpc: str, request_: Message) -> None:
    assert code_and_reason(getattr(stub, rpc), request_)[0] == C.INVALID_ARGUMENT


# -- the CLI on the test driver -------------------------------------------------------


def run_cli(daemon: Daemon, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["--socket", str(daemon.socket_path), *args])
    out, err = capsys.readouterr()
    return code, out + err


def test_cli_migrate_sends_virshs_options(test_daemon: Daemon,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(test_daemon, capsys, "migrate", RUNNING, UNREACHABLE, "--live",
                        "--bandwidth", "10", "--dname", "other", "--verbose")
    assert code == 1 and "UNAVAILABLE" in out and "127.0.0.1:1" in out, out
    code, out = run_cli(test_daemon, capsys, "migrate", RUNNING, "http://x/system", "--p2p")
    assert code == 1 and "INVALID_ARGUMENT" in out and "scheme" in out, out
    code, out = run_cli(test_daemon, capsys, "migrate", RUNNING, UNREACHABLE,
                        "--copy-storage-all", "--copy-storage-inc")
    assert code == 1 and "exclude each other" in out, out
    code, out = run_cli(test_daemon, capsys, "migrate-getspeed", RUNNING)
    assert code == 1 and "UNIMPLEMENTED" in out, out
    code, out = run_cli(test_daemon, capsys, "migrate-compcache", "nope", "--size", "64M")
    assert code == 1 and "NOT_FOUND" in out, out


def test_cli_migrate_request() -> None:
    from virtmesh_client.cli_migration import migrate_request
    args = cli.build_parser().parse_args(["migrate", "g", UNREACHABLE, "--p2p", "--tunnelled",
                              "--persistent", "--undefinesource", "--suspend",
                              "--migrate-disks", "vda,vdb", "--copy-storage-inc",
                              "--parallel", "--parallel-connections", "4"])
    request = migrate_request(args)
    assert (request.peer2peer, request.tunnelled, request.persist_dest,
            request.undefine_source, request.paused, request.non_shared_inc,
            request.parallel, request.live) == (True,) * 7 + (False,)
    assert list(request.parameters.disks) == ["vda", "vdb"]
    assert request.parameters.parallel_connections == 4


# -- embedded QEMU: the example guest -----------------------------------------------------

GUEST, DEFINED = "migrant", "devices"


@pytest.fixture(scope="module")
def qemu(in_process_qemu_state: Path) -> Iterator[tuple[Stub, Daemon]]:
    state = in_process_qemu_state
    with running_service(state, EMBED_URI, grace_period=0.5,
                         guests_on_exit="destroy") as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        xml = example.render(GUEST, state, "qemu").replace(
            "<memballoon model='none'/>",
            CDROM_XML.format(source="") + "<memballoon model='none'/>")
        stub.CreateDomain(pb.CreateDomainRequest(xml=xml))
        log = state / "guest" / f"{GUEST}.console.log"
        wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"), 90,
                 "the guest to boot")
        wait_for(lambda: _agent_answers(stub), 60, "the guest agent")
        try:
            yield stub, daemon
        finally:
            with contextlib.suppress(grpc.RpcError):
                stub.UndefineDomain(pb.UndefineDomainRequest(name=DEFINED))


def _agent_answers(stub: Stub) -> bool:
    try:
        stub.QemuAgentCommand(pb.QemuAgentCommandRequest(name=GUEST, command=PING,
                                                         timeout_seconds=5), timeout=20)
        return True
    except grpc.RpcError:
        time.sleep(0.5)
        return False


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_migration_tunables_on_a_running_guest(qemu: tuple[Stub, Daemon]) -> None:
    stub, _ = qemu
    stub.SetDomainMigrationMaxSpeed(pb.SetDomainMigrationMaxSpeedRequest(
        name=GUEST, bandwidth_mib_per_s=123), timeout=30)
    assert stub.GetDomainMigrationMaxSpeed(pb.GetDomainMigrationMaxSpeedRequest(
        name=GUEST), timeout=30).bandwidth_mib_per_s == 123
    stub.SetDomainMigrationMaxSpeed(pb.SetDomainMigrationMaxSpeedRequest(
        name=GUEST, bandwidth_mib_per_s=45, postcopy=True), timeout=30)
    assert stub.GetDomainMigrationMaxSpeed(pb.GetDomainMigrationMaxSpeedRequest(
        name=GUEST, postcopy=True), timeout=30).bandwidth_mib_per_s == 45
    assert stub.GetDomainMigrationMaxSpeed(pb.GetDomainMigrationMaxSpeedRequest(
        name=GUEST), timeout=30).bandwidth_mib_per_s == 123
    stub.SetDomainMigrationMaxDowntime(pb.SetDomainMigrationMaxDowntimeRequest(
        name=GUEST, downtime_ms=750), timeout=30)
    assert stub.GetDomainMigrationMaxDowntime(pb.GetDomainMigrationMaxDowntimeRequest(
        name=GUEST), timeout=30).downtime_ms == 750
    stub.SetDomainMigrationCompressionCache(pb.SetDomainMigrationCompressionCacheRequest(
        name=GUEST, cache_bytes=128 << 20), timeout=30)
    assert stub.GetDomainMigrationCompressionCache(pb.GetDomainMigrationCompressionCacheRequest(
        name=GUEST), timeout=30).cache_bytes == 128 << 20


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_refusals_on_a_running_guest(qemu: tuple[Stub, Daemon]) -> None:
    stub, _ = qemu
    # no migration runs
    assert code_and_reason(stub.StartDomainMigrationPostCopy,
                           pb.StartDomainMigrationPostCopyRequest(name=GUEST))[0] == (
        C.FAILED_PRECONDITION)
    # QEMU's cache is a power of two (checked first: QEMU's refusal would be INTERNAL)
    assert code_and_reason(stub.SetDomainMigrationCompressionCache,
                           pb.SetDomainMigrationCompressionCacheRequest(
                               name=GUEST, cache_bytes=(64 << 20) + 1))[0] == (
        C.INVALID_ARGUMENT)
    assert stub.GetDomainMigrationCompressionCache(pb.GetDomainMigrationCompressionCacheRequest(
        name=GUEST), timeout=30).cache_bytes != (64 << 20) + 1


@pytest.mark.qemu
@pytest.mark.timeout(300)
@pytest.mark.parametrize("request_, expected", [
    # the source's libvirt cannot reach the destination
    (migrate(GUEST, live=True, peer2peer=True), (C.UNAVAILABLE, "VIR_ERR_SYSTEM_ERROR")),
    # nor can the service
    (migrate(GUEST, live=True), (C.UNAVAILABLE, "DESTINATION_UNREACHABLE")),
    # the host's libvirtd is this host: libvirt refuses
    (migrate(GUEST, "qemu:///system", live=True, peer2peer=True),
     (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")),
    # an embedded driver's process has no remote driver to open the host's with
    (migrate(GUEST, "qemu:///system", live=True), (C.UNAVAILABLE, "DESTINATION_UNREACHABLE")),
], ids=["p2p-unreachable", "direct-unreachable", "p2p-same-host", "direct-from-embedded"])
def test_a_refused_migration_leaves_the_guest_running(
        qemu: tuple[Stub, Daemon], request_: Message,
        expected: tuple[grpc.StatusCode, str]) -> None:
    stub, _ = qemu
    assert code_and_reason(stub.MigrateDomain, request_) == expected
    assert state_of(stub, GUEST) == pb.DOMAIN_STATE_RUNNING
    job = stub.GetDomainJobInfo(pb.GetDomainJobInfoRequest(name=GUEST), timeout=30).job
    assert job.type == pb.JOB_TYPE_NONE


def _cdrom_source(stub: Stub, name: str, inactive: bool = False) -> str | None:
    xml = stub.GetDomainXML(pb.GetDomainXMLRequest(name=name, inactive=inactive),
                            timeout=30).xml
    disk = ET.fromstring(xml).find("devices/disk[@device='cdrom']")
    assert disk is not None
    source = disk.find("source")
    return None if source is None else source.get("file")


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_update_device_changes_a_cdroms_media_live(qemu: tuple[Stub, Daemon],
                                                   in_process_qemu_state: Path) -> None:
    stub, _ = qemu
    media = in_process_qemu_state / "media.iso"
    media.write_bytes(b"\0" * 2048 * 16)
    assert _cdrom_source(stub, GUEST) is None
    stub.UpdateDevice(pb.UpdateDeviceRequest(
        name=GUEST, xml=CDROM_XML.format(source=f"<source file='{media}'/>"),
        scope=pb.Scope(live=True)), timeout=60)
    assert _cdrom_source(stub, GUEST) == str(media)
    stub.UpdateDevice(pb.UpdateDeviceRequest(name=GUEST, xml=CDROM_XML.format(source=""),
                                             force=True), timeout=60)
    assert _cdrom_source(stub, GUEST) is None
    # no such device: the guest has no hdd
    code, _ = code_and_reason(stub.UpdateDevice, pb.UpdateDeviceRequest(
        name=GUEST, xml=CDROM_XML.format(source="").replace("hdc", "hdd")))
    assert code == C.NOT_FOUND


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_detach_device_alias_from_a_definition(qemu: tuple[Stub, Daemon],
                                               in_process_qemu_state: Path) -> None:
    stub, _ = qemu
    xml = example.render(DEFINED, in_process_qemu_state, "qemu").replace(
        "<memballoon model='none'/>",
        CDROM_XML.format(source="").replace("<readonly/>", "<readonly/><alias name='ua-cd'/>")
        + "<memballoon model='none'/>")
    stub.DefineDomain(pb.DefineDomainRequest(xml=xml), timeout=60)
    # live on an inactive domain: refused, nothing changed
    assert code_and_reason(stub.DetachDeviceAlias, pb.DetachDeviceAliasRequest(
        name=DEFINED, alias="ua-cd", scope=pb.Scope(live=True)))[0] == C.FAILED_PRECONDITION
    assert _cdrom_source(stub, DEFINED, inactive=True) is None  # still there
    assert code_and_reason(stub.DetachDeviceAlias, pb.DetachDeviceAliasRequest(
        name=DEFINED, alias="ua-nothing", scope=pb.Scope(config=True)))[0] == C.NOT_FOUND
    stub.DetachDeviceAlias(pb.DetachDeviceAliasRequest(
        name=DEFINED, alias="ua-cd", scope=pb.Scope(config=True)), timeout=60)
    document = stub.GetDomainXML(pb.GetDomainXMLRequest(name=DEFINED, inactive=True),
                                 timeout=30).xml
    assert ET.fromstring(document).find("devices/disk[@device='cdrom']") is None


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_cli_on_a_running_guest(qemu: tuple[Stub, Daemon],
                                capsys: pytest.CaptureFixture[str]) -> None:
    _, daemon = qemu
    code, out = run_cli(daemon, capsys, "migrate-setspeed", GUEST, "77")
    assert code == 0, out
    code, out = run_cli(daemon, capsys, "migrate-getspeed", GUEST)
    assert (code, out.strip()) == (0, "77")
    code, out = run_cli(daemon, capsys, "--json", "migrate-getspeed", GUEST)
    assert code == 0 and json.loads(out) == {"bandwidth_mib_per_s": 77}, out
    code, out = run_cli(daemon, capsys, "migrate-setmaxdowntime", GUEST, "400")
    assert code == 0, out
    code, out = run_cli(daemon, capsys, "migrate-getmaxdowntime", GUEST)
    assert (code, out.strip()) == (0, "400")
    code, out = run_cli(daemon, capsys, "migrate-compcache", GUEST, "--size", "32M")
    assert (code, out.strip()) == (0, "Compression cache: 32.0 MiB"), out
    code, out = run_cli(daemon, capsys, "migrate-postcopy", GUEST)
    assert code == 1 and "FAILED_PRECONDITION" in out, out


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_cli_update_device_and_detach_device_alias(qemu: tuple[Stub, Daemon],
                                                   in_process_qemu_state: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    stub, daemon = qemu
    media = in_process_qemu_state / "cli.iso"
    media.write_bytes(b"\0" * 2048 * 16)
    device = in_process_qemu_state / "cdrom.xml"
    device.write_text(CDROM_XML.format(source=f"<source file='{media}'/>"))
    code, out = run_cli(daemon, capsys, "update-device", GUEST, str(device), "--live")
    assert (code, out.strip()) == (0, f"Device updated on '{GUEST}'"), out
    assert _cdrom_source(stub, GUEST) == str(media)
    device.write_text(CDROM_XML.format(source=""))
    code, out = run_cli(daemon, capsys, "--json", "update-device", GUEST, str(device),
                        "--force")
    assert (code, json.loads(out)) == (0, {}), out
    assert _cdrom_source(stub, GUEST) is None
    code, out = run_cli(daemon, capsys, "detach-device-alias", GUEST, "ua-none", "--live")
    assert code == 1 and "NOT_FOUND" in out, out
    code, out = run_cli(daemon, capsys, "detach-device-alias", GUEST, "bad alias")
    assert code == 1 and "INVALID_ARGUMENT" in out, out


# -- QEMU passthrough on the running guest ------------------------------------------------


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_and_monitor_commands(qemu: tuple[Stub, Daemon]) -> None:
    stub, _ = qemu
    answer = stub.QemuAgentCommand(pb.QemuAgentCommandRequest(name=GUEST, command=PING),
                                   timeout=30).result
    assert json.loads(answer) == {"return": {}}
    info = json.loads(stub.QemuAgentCommand(pb.QemuAgentCommandRequest(
        name=GUEST, command='{"execute":"guest-info"}', timeout_seconds=10), timeout=30).result)
    assert "guest-ping" in {command["name"] for command in info["return"]["supported_commands"]}
    status = json.loads(stub.QemuMonitorCommand(pb.QemuMonitorCommandRequest(
        name=GUEST, command=QUERY_STATUS), timeout=30).result)
    assert status["return"]["status"] == "running"
    text = stub.QemuMonitorCommand(pb.QemuMonitorCommandRequest(
        name=GUEST, command="info status", hmp=True), timeout=30).result
    assert "running" in text


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_a_command_qemu_or_the_agent_refuses(qemu: tuple[Stub, Daemon]) -> None:
    stub, _ = qemu
    unknown = '{"execute":"no-such-command"}'
    # the monitor's error answer is QEMU's answer, handed back as libvirt returns it
    answer = json.loads(stub.QemuMonitorCommand(pb.QemuMonitorCommandRequest(
        name=GUEST, command=unknown), timeout=30).result)
    assert answer["error"]["class"] == "CommandNotFound", answer
    # the agent's is libvirt's failure: the caller's command was wrong
    assert code_and_reason(stub.QemuAgentCommand, pb.QemuAgentCommandRequest(
        name=GUEST, command=unknown)) == (C.INVALID_ARGUMENT, "AGENT_COMMAND_FAILED")
    assert state_of(stub, GUEST) == pb.DOMAIN_STATE_RUNNING


def _watch(stub: Stub, **fields: Any) -> Any:
    stream = stub.WatchQemuMonitorEvents(pb.WatchQemuMonitorEventsRequest(**fields),
                                         timeout=60)
    stream.initial_metadata()  # the service sends it once it is registered
    return stream


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_monitor_events_of_a_pause_and_a_resume(qemu: tuple[Stub, Daemon]) -> None:
    stub, _ = qemu
    every, resumes = _watch(stub, name=GUEST), _watch(stub, event="RESUME")
    try:
        stub.SuspendDomain(pb.SuspendDomainRequest(name=GUEST), timeout=30)
        stub.ResumeDomain(pb.ResumeDomainRequest(name=GUEST), timeout=30)
        seen = [next(every), next(every)]
        assert [(event.name, event.event) for event in seen] == [(GUEST, "STOP"),
                                                                (GUEST, "RESUME")]
        assert seen[0].uuid and abs(seen[0].time.seconds - time.time()) < 60
        resumed = next(resumes)  # the STOP went by: not asked for
        assert (resumed.name, resumed.event) == (GUEST, "RESUME")
    finally:
        every.cancel()
        resumes.cancel()
    assert state_of(stub, GUEST) == pb.DOMAIN_STATE_RUNNING


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_cli_qemu_passthrough(qemu: tuple[Stub, Daemon],
                              capsys: pytest.CaptureFixture[str]) -> None:
    stub, daemon = qemu
    code, out = run_cli(daemon, capsys, "qemu-agent-command", GUEST, PING)
    assert (code, json.loads(out)) == (0, {"return": {}}), out
    code, out = run_cli(daemon, capsys, "qemu-monitor-command", GUEST, QUERY_STATUS,
                        "--pretty")
    assert code == 0 and '\n  "return": {' in out, out
    assert json.loads(out)["return"]["status"] == "running"
    code, out = run_cli(daemon, capsys, "qemu-monitor-command", GUEST, "info", "status",
                        "--hmp")
    assert code == 0 and "running" in out, out
    code, out = run_cli(daemon, capsys, "qemu-agent-command", GUEST, "not json")
    assert code == 1 and "INVALID_ARGUMENT" in out, out

    def pause_soon() -> None:
        time.sleep(2)
        stub.SuspendDomain(pb.SuspendDomainRequest(name=GUEST), timeout=30)

    pauser = threading.Thread(target=pause_soon)
    pauser.start()
    try:
        code, out = run_cli(daemon, capsys, "qemu-monitor-event", "--domain", GUEST,
                            "--event", "STOP", "--count", "1")
    finally:
        pauser.join()
        stub.ResumeDomain(pb.ResumeDomainRequest(name=GUEST), timeout=30)
    assert code == 0 and out.startswith("event STOP at ") and f"domain '{GUEST}'" in out, out


def test_a_cancelled_migration_aborts_libvirts_job(stub: Stub,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The call's end reaches libvirt as SaveDomain's does: the job is aborted. libvirt's
    migration itself is replaced (there is no destination host here) by one that runs
    until its job is aborted, as QEMU's does."""
    aborted = threading.Event()
    started = threading.Event()

    def migrate_to_uri3(self: libvirt.virDomain, uri: str, params: dict[str, Any],
                        flags: int) -> int:
        started.set()
        if not aborted.wait(30):
            raise AssertionError("the job was never aborted")
        raise libvirt.libvirtError("operation aborted: migration out: canceled by client")

    def abort_job(self: libvirt.virDomain, flags: int = 0) -> int:
        aborted.set()
        return 0

    monkeypatch.setattr(libvirt.virDomain, "migrateToURI3", migrate_to_uri3)
    monkeypatch.setattr(libvirt.virDomain, "abortJob", abort_job)
    call = stub.MigrateDomain.future(migrate(live=True, peer2peer=True), timeout=60)
    assert started.wait(30)
    call.cancel()
    assert aborted.wait(30), "cancelling the call did not abort the migration's job"
    assert state_of(stub, RUNNING) == pb.DOMAIN_STATE_RUNNING
    # a deadline too
    aborted.clear()
    started.clear()
    error = error_of(stub.MigrateDomain, migrate(live=True, peer2peer=True), 1)
    assert error.code() == C.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert aborted.wait(30)


def test_what_reaches_libvirt(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags and parameters as libvirt's, peer-to-peer to migrateToURI3 and directly
    to migrate3 on a connection the service opened (libvirt's calls replaced: there is
    no destination host here)."""
    calls: list[tuple[Any, ...]] = []

    class Destination:
        def close(self) -> int:
            calls.append(("close",))
            return 0

    def migrate_to_uri3(self: libvirt.virDomain, uri: str, params: dict[str, Any],
                        flags: int) -> int:
        calls.append(("toURI3", self.name(), uri, params, flags))
        return 0

    def migrate3(self: libvirt.virDomain, dconn: Any, params: dict[str, Any],
                 flags: int) -> None:
        calls.append(("migrate3", self.name(), type(dconn).__name__, params, flags))

    monkeypatch.setattr(libvirt.virDomain, "migrateToURI3", migrate_to_uri3)
    monkeypatch.setattr(libvirt.virDomain, "migrate3", migrate3)
    def open_destination(uri: str) -> Destination:
        calls.append(("open", uri))
        return Destination()

    monkeypatch.setattr(libvirt, "open", open_destination)
    stub.MigrateDomain(migrate(
        uri="qemu+ssh://dest.example/system", live=True, peer2peer=True, tunnelled=True,
        persist_dest=True, parameters=pb.MigrationParameters(
            destination_name="renamed", bandwidth_mib_per_s=50)), timeout=30)
    assert calls.pop() == ("toURI3", RUNNING, "qemu+ssh://dest.example/system",
                           {"destination_name": "renamed", "bandwidth": 50},
                           libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                           | libvirt.VIR_MIGRATE_TUNNELLED | libvirt.VIR_MIGRATE_PERSIST_DEST)
    stub.MigrateDomain(migrate(uri="qemu:///system", live=True, non_shared_inc=True,
                               parameters=pb.MigrationParameters(disks=["vda"])), timeout=30)
    # a local destination through libvirt's remote driver: qemu:/// would be embedded
    assert calls == [("open", "qemu+unix:///system"),
                     ("migrate3", RUNNING, "Destination", {"migrate_disks": ["vda"]},
                      libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_NON_SHARED_INC),
                     ("close",)]
    calls.clear()
    # a definition migrates offline
    stub.MigrateDomain(migrate(STOPPED, "qemu+tls://dest.example/system", peer2peer=True,
                               offline=True, persist_dest=True), timeout=30)
    assert calls.pop()[:3] == ("toURI3", STOPPED, "qemu+tls://dest.example/system")
