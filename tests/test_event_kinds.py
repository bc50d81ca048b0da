"""Every kind of domain event a test can provoke arrives typed through
WatchDomainEvents: on libvirt's test driver what it emits, and on embedded QEMU
with the example guest (TCG) and its guest agent the rest that one host can
provoke. The tables behind them are checked against libvirt's own lists.

Not provoked here: migration iteration (needs a second host), device removal
failed (QEMU 7.2 reports it for memory or CPUs a guest refuses to release, not
for the PCI devices of the example guest), control error and memory failure
(faults of libvirt's connection to QEMU, or of the host's hardware under KVM);
nor, on the test driver, anything but lifecycle and metadata: all it emits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import re
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import libvirt_qemu
import pytest

from guest import example
from services.common import typed_params
from services.compute import backend, convert
from services.network.backend import NetworkBackend
from services.nodedev.backend import NodeDeviceBackend
from services.storage.backend import StorageBackend
from tests.conftest import CliRun, running_service
from tests.test_e2e_qemu import BOOTED, EMBED_URI, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.types.v1.typed_params_pb2 import TypedParameter
from virtmesh_client.cli_compute import _event_text

API_XML = Path("/usr/share/libvirt/api/libvirt-api.xml")
#: superseded ids: IO_ERROR_REASON and BLOCK_JOB_2 carry the same events, and more
SUPERSEDED = {libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB}


class Events:
    """A WatchDomainEvents stream read on a thread; every event is kept, so a test
    can look for an event that came before it asked."""

    def __init__(self, stub: pb_grpc.ComputeServiceStub, name: str) -> None:
        self.stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=[name]))
        self.stream.initial_metadata()
        self.seen: list[pb.WatchDomainEventsResponse] = []
        self.arrived: queue.Queue[None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for event in self.stream:
                self.seen.append(event)
                self.arrived.put(None)

    def of(self, kind: str) -> list[Any]:
        return [getattr(event, kind) for event in self.seen if event.WhichOneof("event") == kind]

    def wait(self, kind: str, timeout: float,
             match: Callable[[Any], bool] = lambda _: True, latest: bool = False) -> Any:
        """The first ``kind`` event (its message) that ``match``es, however early; with
        ``latest``, the last event of ``kind`` once it matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = [message for message in self.of(kind)[-1 if latest else 0:]
                     if match(message)]
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = [event.WhichOneof("event") for event in self.seen]
                raise AssertionError(f"no matching {kind} event in {timeout}s; saw {kinds}"
                                     f", of that kind {self.of(kind)}")
            with contextlib.suppress(queue.Empty):
                self.arrived.get(timeout=left)

    def close(self) -> None:
        self.stream.cancel()


# -- the tables, against libvirt's own lists -----------------------------------

def _constants(prefix: str) -> set[int]:
    return {getattr(libvirt, name) for name in dir(libvirt)
            if name.startswith(prefix) and not name.endswith("_LAST")}


def test_every_domain_event_id_of_libvirt_is_registered() -> None:
    """A libvirt with more events than DOMAIN_EVENTS knows makes this fail."""
    assert set(backend.DOMAIN_EVENTS) | SUPERSEDED == _constants("VIR_DOMAIN_EVENT_ID_")
    assert set(backend.DOMAIN_EVENTS.values()) == set(convert._EVENT_MESSAGES)
    oneof = pb.WatchDomainEventsResponse.DESCRIPTOR.oneofs_by_name["event"]
    assert {field.name for field in oneof.fields} == {*backend.DOMAIN_EVENTS.values(), "gap"}


@pytest.mark.parametrize(("register", "prefix"), [
    (StorageBackend.register_events, "VIR_STORAGE_POOL_EVENT_ID_"),
    (NetworkBackend.register_events, "VIR_NETWORK_EVENT_ID_"),
    (NodeDeviceBackend.register_events, "VIR_NODE_DEVICE_EVENT_ID_"),
])
def test_the_other_drivers_register_every_event_id_of_libvirt(
        register: Callable[..., None], prefix: str) -> None:
    """libvirt 9.0 has no storage volume event and no network metadata event (9.7)."""
    registered: list[int] = []

    class Conn:
        def __getattr__(self, _name: str) -> Callable[..., None]:
            return lambda _obj, event_id, _callback, _opaque: registered.append(event_id)

    register(None, Conn(), lambda *_: None)
    assert set(registered) == _constants(prefix)


@pytest.mark.parametrize(("enum", "table"), [
    ("WatchdogAction", convert.WATCHDOG_ACTIONS), ("IoErrorAction", convert.IO_ERROR_ACTIONS),
    ("GraphicsPhase", convert.GRAPHICS_PHASES),
    ("GraphicsAddressFamily", convert.GRAPHICS_FAMILIES), ("TrayChange", convert.TRAY_CHANGES),
    ("BlockJobType", convert.BLOCK_JOB_TYPES), ("BlockJobStatus", convert.BLOCK_JOB_STATUSES),
    ("AgentState", convert.AGENT_STATES), ("AgentLifecycleReason", convert.AGENT_REASONS),
    ("MetadataType", convert.METADATA_TYPES),
    ("MemoryFailureRecipient", convert.MEMORY_FAILURE_RECIPIENTS),
    ("MemoryFailureAction", convert.MEMORY_FAILURE_ACTIONS),
    ("DiskChangeReason", convert.DISK_CHANGE_REASONS),
])
def test_each_event_enum_pairs_every_proto_value(enum: str, table: dict[int, int]) -> None:
    """A proto value that libvirt spells otherwise would be a value no event carries."""
    values = pb.DESCRIPTOR.enum_types_by_name[enum].values
    assert sorted(table.values()) == [value.number for value in values if value.number]


def _documented_widths() -> dict[str, str]:
    """The VIR_TYPED_PARAM_* libvirt documents for each job and tunable parameter."""
    fields = {"INT": typed_params.INT, "UINT": typed_params.UINT,
              "LLONG": typed_params.LONG, "ULLONG": typed_params.ULONG}
    widths = {}
    for macro in ET.parse(API_XML).iter("macro"):
        found = re.findall(r"VIR_TYPED_PARAM_([A-Z]+)", macro.findtext("info") or "")
        if (macro.get("name", "").startswith(("VIR_DOMAIN_JOB_", "VIR_DOMAIN_TUNABLE_"))
                and found and found[0] in fields):
            widths[macro.get("string", "")] = fields[found[0]]
    return widths


@pytest.mark.skipif(not API_XML.exists(), reason="libvirt-dev's API description is missing")
def test_typed_parameter_widths_follow_libvirt_documentation() -> None:
    widths = _documented_widths()
    assert len(widths) > 50
    for name, field in widths.items():
        [message] = convert.domain_params({name: 1})
        assert message.WhichOneof("value") == field, name


def test_typed_parameters_keep_their_type_both_ways() -> None:
    params = {"success": True, "errmsg": "no", "ratio": 0.5, "cputune.vcpu_quota": -1,
              "time_elapsed": 2**63 + 1, "operation": 3}
    messages = typed_params.to_messages(params, {"operation": typed_params.INT})
    assert [(m.name, m.WhichOneof("value")) for m in messages] == [
        ("cputune.vcpu_quota", "long_value"), ("errmsg", "string_value"),
        ("operation", "int_value"), ("ratio", "double_value"),
        ("success", "boolean_value"), ("time_elapsed", "ulong_value")]
    assert typed_params.from_messages([*messages, TypedParameter(name="unset")]) == params
    with pytest.raises(TypeError, match="list"):
        typed_params.to_messages({"odd": [1]})


def test_the_cli_prints_each_kind_readably() -> None:
    event = pb.WatchDomainEventsResponse(name="vm", io_error=pb.IoErrorEvent(
        src_path="/full.raw", device="virtio-disk1", action=pb.IO_ERROR_ACTION_REPORT,
        reason="enospc"))
    assert _event_text(event).endswith(
        "  vm  io-error  src_path=/full.raw device=virtio-disk1 action=report reason=enospc")
    tunable = pb.WatchDomainEventsResponse(name="vm", tunable=pb.TunableEvent(parameters=[
        TypedParameter(name="cputune.vcpupin0", string_value="0-1"),
        TypedParameter(name="cputune.vcpu_quota", long_value=-1)]))
    assert _event_text(tunable).endswith("  tunable  cputune.vcpupin0=0-1 cputune.vcpu_quota=-1")
    graphics = pb.WatchDomainEventsResponse(name="vm", graphics=pb.GraphicsEvent(
        phase=pb.GRAPHICS_PHASE_CONNECT, local=pb.GraphicsAddress(
            family=pb.GRAPHICS_ADDRESS_FAMILY_IPV4, node="127.0.0.1", service="5900")))
    assert _event_text(graphics).endswith(
        "  graphics  phase=connect local={family=ipv4 node=127.0.0.1 service=5900}")
    assert _event_text(pb.WatchDomainEventsResponse(
        name="vm", pm_wakeup=pb.PmWakeupEvent())).endswith("  vm  pm-wakeup")


# -- libvirt's test driver: what it emits ----------------------------------------

@pytest.fixture
def test_driver(tmp_path: Path) -> Iterator[tuple[pb_grpc.ComputeServiceStub, libvirt.virDomain]]:
    """The compute service on this process's test:///default, and the test's own
    connection to the same driver (the service has no RPC that sets metadata)."""
    with running_service(tmp_path, "test:///default", grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        conn = libvirt.open("test:///default")
        try:
            yield pb_grpc.ComputeServiceStub(channel), conn.lookupByName("test")
        finally:
            conn.close()


def test_metadata_change_on_the_test_driver(
        test_driver: tuple[pb_grpc.ComputeServiceStub, libvirt.virDomain]) -> None:
    stub, dom = test_driver
    events = Events(stub, "test")
    try:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, "a title", None, None, 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<owner>me</owner>", "vm",
                        "https://virtmesh.example/test", 0)
        assert events.wait("metadata_change", 10).type == pb.METADATA_TYPE_TITLE
        element = events.wait("metadata_change", 10,
                              lambda m: m.type == pb.METADATA_TYPE_ELEMENT)
        assert element.namespace_uri == "https://virtmesh.example/test"
    finally:
        events.close()


@pytest.mark.parametrize(("flags", "expected"), [
    ((), lambda out: out.split()[1:] == ["test", "metadata-change", "type=description"]),
    (("--json",), lambda out: json.loads(out)["metadata_change"] == {
        "type": "METADATA_TYPE_DESCRIPTION", "namespace_uri": ""}),
], ids=["text", "json"])
def test_the_cli_prints_a_metadata_change(
        test_driver: tuple[pb_grpc.ComputeServiceStub, libvirt.virDomain], virtmesh: CliRun,
        tmp_path: Path, flags: tuple[str, ...], expected: Callable[[str], bool]) -> None:
    _, dom = test_driver
    target = f"unix:{tmp_path / 'run' / 'compute.sock'}"
    result: list[tuple[int, str, str]] = []
    watcher = threading.Thread(target=lambda: result.append(virtmesh(
        "--socket", target, *flags, "events", "test", "--count", "1")))
    watcher.start()
    # The CLI subscribes at some point; a change before that is not seen.
    deadline = time.monotonic() + 20
    while watcher.is_alive() and time.monotonic() < deadline:
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "d", None, None, 0)
        watcher.join(0.3)
    assert result and result[0][0] == 0, result
    assert expected(result[0][1]), result[0][1]


# -- embedded QEMU with the example guest and its agent --------------------------

GUEST = "kinds"
MEMORY_MIB = 256
AGENT_PING = json.dumps({"execute": "guest-ping"})


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk image on it runs out of space."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem is full: a guest's write to a hole of a
    sparse image there then fails whole, with ENOSPC (a write that fails half way
    is a short write, which QEMU reports as EINVAL)."""
    with path.open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(bytes(4096))


def _guest_xml(state: Path, full: Path) -> str:
    """The example guest with a balloon, S3 and S4, a watchdog, a disk on a full
    filesystem (an error stops the guest), a data disk, a swap disk and a CD-ROM
    whose image is missing."""
    subprocess.run(["truncate", "-s", "64M", str(full / "full.raw")], check=True)
    fill(full / "filler")
    subprocess.run(["truncate", "-s", "8M", str(state / "data.raw")], check=True)
    subprocess.run(["truncate", "-s", "128M", str(state / "swap.raw")], check=True)
    disks = f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' error_policy='stop'/>
      <source file='{full}/full.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{state}/data.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{state}/swap.raw'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{state}/missing.iso' startupPolicy='optional'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <watchdog model='i6300esb' action='none'/>
    <memballoon model='virtio'/>"""
    xml = example.render(GUEST, state, "qemu")
    xml = xml.replace("<memballoon model='none'/>", disks)
    # hibernation copies every page in use (the initramfs too) before it writes
    xml = xml.replace("<memory unit='MiB'>128</memory>",
                      f"<memory unit='MiB'>{MEMORY_MIB}</memory>")
    return xml.replace("</on_crash>", "</on_crash>\n  <pm><suspend-to-mem enabled='yes'/>"
                       "<suspend-to-disk enabled='yes'/></pm>")


class Guest:
    def __init__(self, dom: libvirt.virDomain, events: Events, state: Path,
                 stub: pb_grpc.ComputeServiceStub) -> None:
        self.dom, self.events, self.state, self.stub = dom, events, state, stub

    def agent_connected(self) -> Any:
        """Once the agent is connected: at start libvirt reports it disconnected, and
        so it is while the guest sleeps until it opens its channel again."""
        return self.events.wait("agent_lifecycle", 60,
                                lambda m: m.state == pb.AGENT_STATE_CONNECTED, latest=True)

    def agent(self, command: str, **arguments: Any) -> Any:
        """A guest agent command's answer (libvirt's qemuAgentCommand, as virsh's)."""
        answer = libvirt_qemu.qemuAgentCommand(
            self.dom, json.dumps({"execute": command, "arguments": arguments}), 30, 0)
        return json.loads(answer)["return"]

    def start(self, path: str, *args: str) -> int:
        """Start a program in the guest through the agent; its pid."""
        return int(self.agent("guest-exec", path=path, arg=list(args),
                              **{"capture-output": True})["pid"])

    def exited(self, pid: int) -> tuple[int, str]:
        """The exit code and output of a program started in the guest, once it ends."""
        deadline = time.monotonic() + 60
        while not (status := self.agent("guest-exec-status", pid=pid))["exited"]:
            assert time.monotonic() < deadline, f"guest process {pid} still runs"
            time.sleep(0.2)
        output = b"".join(base64.b64decode(status.get(stream, ""))
                          for stream in ("out-data", "err-data"))
        return int(status.get("exitcode", -1)), output.decode(errors="replace")

    def run(self, path: str, *args: str) -> tuple[int, str]:
        return self.exited(self.start(path, *args))


@pytest.fixture(scope="module")
def guest(in_process_qemu_state: Path) -> Iterator[Guest]:
    state = in_process_qemu_state
    with tiny_filesystem(state / "full", "1m") as full, \
            running_service(state, EMBED_URI, grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = pb_grpc.ComputeServiceStub(channel)
        events = Events(stub, GUEST)
        # The service's own libvirt; this process shares its embedded driver.
        conn = libvirt.open(EMBED_URI.format(state_dir=state))
        try:
            stub.CreateDomain(pb.CreateDomainRequest(xml=_guest_xml(state, full)))
            log = state / "guest" / f"{GUEST}.console.log"
            wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"),
                     90, "the guest to boot")
            yield Guest(conn.lookupByName(GUEST), events, state, stub)
        finally:
            events.close()
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(GUEST).destroy()
            conn.close()


@pytest.mark.qemu
def test_the_guest_agent_connects_and_answers(guest: Guest) -> None:
    connected = guest.agent_connected()
    assert connected.reason in (pb.AGENT_LIFECYCLE_REASON_CHANNEL,
                                pb.AGENT_LIFECYCLE_REASON_DOMAIN_STARTED)
    assert json.loads(libvirt_qemu.qemuAgentCommand(guest.dom, AGENT_PING, 30, 0)) == {
        "return": {}}


@pytest.mark.qemu
def test_a_missing_optional_cdrom_is_a_disk_change(guest: Guest) -> None:
    change = guest.events.wait("disk_change", 10)
    assert change.reason == pb.DISK_CHANGE_REASON_MISSING_ON_START
    assert change.old_src_path == str(guest.state / "missing.iso")
    assert (change.new_src_path, change.device) == ("", "ide0-1-0")


@pytest.mark.qemu
def test_a_full_disk_is_an_io_error_with_its_reason(guest: Guest) -> None:
    """QEMU says why (nospace) only where the error policy may stop the guest."""
    guest.agent_connected()
    writer = guest.start("/bin/dd", "if=/dev/zero", "of=/dev/vda", "bs=4k", "count=4",
                         "conv=fsync")
    error = guest.events.wait("io_error", 60)
    assert (error.device, error.action, error.reason) == (
        "virtio-disk0", pb.IO_ERROR_ACTION_PAUSE, "enospc")
    assert error.src_path == str(guest.state / "full" / "full.raw")
    guest.events.wait("lifecycle", 10, lambda m: (m.type, m.detail) == (
        pb.LIFECYCLE_EVENT_TYPE_SUSPENDED, "ioerror"))
    # room again: the guest goes on with the write it stopped at
    (guest.state / "full" / "filler").unlink()
    guest.dom.resume()
    assert guest.exited(writer) == (0, "4+0 records in\n4+0 records out\n")


@pytest.mark.qemu
def test_a_block_copy_is_ready_then_cancelled(guest: Guest) -> None:
    destination = guest.state / "copy.raw"
    guest.dom.blockCopy("vdb", f"<disk type='file'><source file='{destination}'/>"
                        "<driver type='raw'/></disk>", None,
                        libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
    ready = guest.events.wait("block_job", 60, lambda m: m.status == pb.BLOCK_JOB_STATUS_READY)
    assert (ready.disk, ready.type) == ("vdb", pb.BLOCK_JOB_TYPE_COPY)
    guest.dom.blockJobAbort("vdb", 0)
    guest.events.wait("block_job", 30, lambda m: m.status == pb.BLOCK_JOB_STATUS_CANCELED)


@pytest.mark.qemu
def test_a_backup_completes_its_job_with_typed_statistics(guest: Guest) -> None:
    target = guest.state / "backup.raw"
    guest.dom.backupBegin(
        "<domainbackup><disks>"
        f"<disk name='vdb' type='file'><target file='{target}'/><driver type='raw'/></disk>"
        "<disk name='vda' backup='no'/><disk name='vdc' backup='no'/>"
        "<disk name='hdc' backup='no'/>"
        "</disks></domainbackup>", None, 0)
    done = guest.events.wait("job_completed", 60)
    statistics = {p.name: p for p in done.statistics}
    assert statistics["operation"].int_value == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
    assert statistics["success"].boolean_value
    assert statistics["time_elapsed"].WhichOneof("value") == "ulong_value"
    job = guest.events.wait("block_job", 10, lambda m: m.type == pb.BLOCK_JOB_TYPE_BACKUP)
    assert (job.disk, job.status) == ("vdb", pb.BLOCK_JOB_STATUS_COMPLETED)


@pytest.mark.qemu
def test_pinning_a_vcpu_is_a_tunable_event(guest: Guest) -> None:
    guest.dom.pinVcpuFlags(0, (True,), libvirt.VIR_DOMAIN_AFFECT_LIVE)
    tunable = guest.events.wait("tunable", 10)
    assert [(p.name, p.WhichOneof("value"), p.string_value) for p in tunable.parameters] == [
        ("cputune.vcpupin0", "string_value", "0")]


@pytest.mark.qemu
def test_setting_metadata_is_a_metadata_change(guest: Guest) -> None:
    guest.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<owner>me</owner>", "vm",
                          "https://virtmesh.example/qemu", libvirt.VIR_DOMAIN_AFFECT_LIVE)
    change = guest.events.wait("metadata_change", 10)
    assert (change.type, change.namespace_uri) == (pb.METADATA_TYPE_ELEMENT,
                                                   "https://virtmesh.example/qemu")


@pytest.mark.qemu
def test_shrinking_memory_is_a_balloon_change(guest: Guest) -> None:
    guest.dom.setMemoryFlags(96 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    guest.events.wait("balloon_change", 60, lambda m: m.actual_kib == 96 * 1024)
    guest.dom.setMemoryFlags(MEMORY_MIB * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    guest.events.wait("balloon_change", 60, lambda m: m.actual_kib == MEMORY_MIB * 1024)


@pytest.mark.qemu
def test_setting_the_guest_clock_is_an_rtc_change(guest: Guest) -> None:
    guest.agent_connected()
    # the agent sets the guest's clock an hour ahead, then its RTC (hwclock -w)
    guest.dom.setTime({"seconds": int(time.time()) + 3600, "nseconds": 0}, 0)
    change = guest.events.wait("rtc_change", 30)
    assert 3500 < change.utc_offset_seconds < 3700


@pytest.mark.qemu
def test_a_graphics_client_connects_and_goes(guest: Guest) -> None:
    fd = guest.dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
    with open(fd, "rb", buffering=0) as client:
        assert client.read(12).startswith(b"RFB ")
    connected = guest.events.wait("graphics", 30, lambda m: m.phase == pb.GRAPHICS_PHASE_CONNECT)
    assert connected.local.family == pb.GRAPHICS_ADDRESS_FAMILY_UNIX
    guest.events.wait("graphics", 30, lambda m: m.phase == pb.GRAPHICS_PHASE_DISCONNECT)


@pytest.mark.qemu
def test_changing_the_cdrom_moves_its_tray(guest: Guest) -> None:
    image = guest.state / "medium.iso"
    image.write_bytes(bytes(2048))
    guest.dom.updateDeviceFlags(
        f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source file='{image}'/><target dev='hdc' bus='ide'/><readonly/></disk>",
        libvirt.VIR_DOMAIN_AFFECT_LIVE)
    opened = guest.events.wait("tray_change", 30, lambda m: m.change == pb.TRAY_CHANGE_OPEN)
    assert opened.device == "ide0-1-0"
    guest.events.wait("tray_change", 30, lambda m: m.change == pb.TRAY_CHANGE_CLOSE)


@pytest.mark.qemu
def test_a_write_past_the_threshold_is_a_block_threshold(guest: Guest) -> None:
    guest.agent_connected()
    guest.dom.setBlockThreshold("vdb", 1024 * 1024, 0)
    guest.run("/bin/dd", "if=/dev/zero", "of=/dev/vdb", "bs=64k", "count=8", "seek=32",
              "conv=fsync")
    crossed = guest.events.wait("block_threshold", 30)
    assert (crossed.device, crossed.threshold_bytes) == ("vdb", 1024 * 1024)
    assert crossed.excess_bytes > 0 and crossed.path.endswith("data.raw")


VIRTIO_MEM = """<memory model='virtio-mem'><target><size unit='MiB'>128</size><node>0</node>
  <block unit='MiB'>2</block><requested unit='MiB'>0</requested></target></memory>"""


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_a_virtio_mem_device_that_grows_changes_its_size(guest: Guest) -> None:
    """On a guest of its own (virtio-mem forbids the other's suspension), whose
    kernel plugs memory when the device is asked for more."""
    name = f"{GUEST}-mem"
    xml = example.render(name, guest.state, "qemu").replace(
        "<memory unit='MiB'>128</memory>",
        "<maxMemory slots='1' unit='MiB'>1024</maxMemory><memory unit='MiB'>384</memory>"
    ).replace("</cpu>", "<numa><cell id='0' cpus='0' memory='256' unit='MiB'/></numa></cpu>"
              ).replace("</devices>", VIRTIO_MEM + "</devices>")
    dom = guest.dom.connect().createXML(xml, 0)
    events = Events(guest.stub, name)
    try:
        log = guest.state / "guest" / f"{name}.console.log"
        wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"),
                 150, "the virtio-mem guest to boot")
        device = ET.fromstring(dom.XMLDesc(0)).find("devices/memory[@model='virtio-mem']")
        assert device is not None
        requested = device.find("target/requested")
        assert requested is not None
        requested.attrib, requested.text = {"unit": "KiB"}, str(64 * 1024)
        dom.updateDeviceFlags(ET.tostring(device, "unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        change = events.wait("memory_device_size_change", 60,
                             lambda m: m.size_kib == 64 * 1024)
        assert change.device == device.find("alias").get("name")  # type: ignore[union-attr]
    finally:
        events.close()
        dom.destroy()


#: the guest's kernel has no i6300esb driver: the shell programs the device, as
#: QEMU models it, with both stages' timers at 1 tick (~1 ms) and enables it
ARM_WATCHDOG = """
for dev in /sys/bus/pci/devices/*; do
    [ "$(cat $dev/vendor):$(cat $dev/device)" = 0x8086:0x25ab ] && break
done
bar=$(( $(cut -d' ' -f1 $dev/resource | head -n 1) ))
for timer in 0 4; do
    devmem $((bar + 12)) 16 0x80; devmem $((bar + 12)) 16 0x86
    devmem $((bar + timer)) 32 1
done
printf '\\002' | dd of=$dev/config bs=1 seek=104 conv=notrunc 2>/dev/null
"""


@pytest.mark.qemu
def test_a_watchdog_that_is_not_fed_fires(guest: Guest) -> None:
    guest.agent_connected()
    assert guest.run("/bin/sh", "-c", ARM_WATCHDOG) == (0, "")
    assert guest.events.wait("watchdog", 30).action == pb.WATCHDOG_ACTION_NONE


@pytest.mark.qemu
def test_suspend_to_ram_and_wake_up(guest: Guest) -> None:
    """The guest sleeps (through its agent) and is woken."""
    guest.agent_connected()
    guest.dom.pMSuspendForDuration(libvirt.VIR_NODE_SUSPEND_TARGET_MEM, 0, 0)
    guest.events.wait("pm_suspend", 60)
    guest.dom.pMWakeup(0)
    guest.events.wait("pm_wakeup", 60)


@pytest.mark.qemu
def test_suspend_to_disk(guest: Guest) -> None:
    """Last: the guest hibernates to its swap disk (through its agent) and is off."""
    guest.agent_connected()
    assert guest.run("/bin/sh", "-c", "mkswap /dev/vdc && swapon /dev/vdc")[0] == 0
    guest.dom.pMSuspendForDuration(libvirt.VIR_NODE_SUSPEND_TARGET_DISK, 0, 0)
    guest.events.wait("pm_suspend_disk", 120)
