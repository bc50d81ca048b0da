"""The guest agent RPCs of ComputeService: interface addresses, file system freeze,
thaw, trim and info, guest info, hostname, guest vCPUs, time, user password, SSH keys
and the agent's response timeout.

On libvirt's test:///default for what its driver implements (and UNIMPLEMENTED where
it does not), on embedded QEMU with the example guest and its real qemu-guest-agent
for the rest; bad input on every RPC; the CLI.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import libvirt_qemu
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from guest import example
from services.common.daemon import Daemon
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
SECRET = "s3cret-never-logged"


def code_and_reason(call: Any, request: Message) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def test_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_service(tmp_path_factory.mktemp("agent"), "test:///default",
                         grace_period=0.5) as daemon:
        with grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            stub = Stub(channel)
            if STOPPED not in [d.name for d in stub.ListDomains(pb.ListDomainsRequest()).domains]:
                stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(STOPPED)))
        yield daemon


@pytest.fixture
def stub(test_daemon: Daemon) -> Iterator[Stub]:
    with grpc.insecure_channel(f"unix:{test_daemon.socket_path}") as channel:
        yield Stub(channel)


# -- test:///default ----------------------------------------------------------------


@pytest.mark.parametrize("source", [pb.INTERFACE_ADDRESS_SOURCE_UNSPECIFIED,
                                    pb.INTERFACE_ADDRESS_SOURCE_LEASE,
                                    pb.INTERFACE_ADDRESS_SOURCE_AGENT,
                                    pb.INTERFACE_ADDRESS_SOURCE_ARP])
def test_interface_addresses_on_the_test_driver(stub: Stub, source: Any) -> None:
    reply = stub.GetInterfaceAddresses(pb.GetInterfaceAddressesRequest(name=RUNNING,
                                                                       source=source))
    assert [(i.name, i.hwaddr) for i in reply.interfaces] == [("testnet0", "aa:bb:cc:dd:ee:ff")]
    assert list(reply.interfaces[0].addresses) == [pb.IpAddress(
        type=pb.IP_ADDRESS_TYPE_IPV4, address="192.168.122.3", prefix=24)]


def test_filesystems_on_the_test_driver(stub: Stub) -> None:
    info = stub.GetFilesystemInfo(pb.GetFilesystemInfoRequest(name=RUNNING))
    assert [(f.mountpoint, f.device, f.type, list(f.disk_targets)) for f in info.filesystems] \
        == [("/", "vda1", "ext4", ["vda"]), ("/boot", "vda2", "ext4", ["vda"])]
    assert stub.FreezeFilesystems(pb.FreezeFilesystemsRequest(name=RUNNING)).count == 2
    assert stub.ThawFilesystems(pb.ThawFilesystemsRequest(name=RUNNING)).count == 2
    assert stub.FreezeFilesystems(pb.FreezeFilesystemsRequest(
        name=RUNNING, mountpoints=["/boot"])).count == 1
    assert stub.ThawFilesystems(pb.ThawFilesystemsRequest(
        name=RUNNING, mountpoints=["/boot"])).count == 1
    assert code_and_reason(stub.FreezeFilesystems, pb.FreezeFilesystemsRequest(
        name=RUNNING, mountpoints=["/nowhere"])) == (C.FAILED_PRECONDITION,
                                                     "VIR_ERR_OPERATION_INVALID")
    stub.TrimFilesystems(pb.TrimFilesystemsRequest(name=RUNNING, mountpoint="/"))


def test_hostname_time_and_password_on_the_test_driver(
        stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    assert stub.GetGuestHostname(pb.GetGuestHostnameRequest(name=RUNNING)).hostname == "testhost"
    # the test driver takes no source flag: libvirt's "unsupported flags"
    assert code_and_reason(stub.GetGuestHostname, pb.GetGuestHostnameRequest(
        name=RUNNING, source=pb.HOSTNAME_SOURCE_AGENT)) == (C.UNIMPLEMENTED,
                                                           "VIR_ERR_INVALID_ARG")
    assert stub.GetGuestTime(pb.GetGuestTimeRequest(name=RUNNING)).time.seconds > 0
    stub.SetGuestTime(pb.SetGuestTimeRequest(name=RUNNING, time=Timestamp(seconds=1_700_000_000)))
    stub.SetGuestTime(pb.SetGuestTimeRequest(name=RUNNING, sync=True))
    with caplog.at_level(logging.DEBUG):
        stub.SetUserPassword(pb.SetUserPasswordRequest(name=RUNNING, user="root",
                                                       password=SECRET))
        error = error_of(stub.SetUserPassword, pb.SetUserPasswordRequest(
            name=STOPPED, user="root", password=SECRET))
    assert SECRET not in (error.details() or "")  # type: ignore[attr-defined]
    assert SECRET not in caplog.text


@pytest.mark.parametrize(("rpc", "request_"), [
    ("GetGuestInfo", pb.GetGuestInfoRequest(name=RUNNING)),
    ("GetGuestVcpus", pb.GetGuestVcpusRequest(name=RUNNING)),
    ("SetGuestVcpus", pb.SetGuestVcpusRequest(name=RUNNING, cpumap="0", online=True)),
    ("GetAuthorizedSSHKeys", pb.GetAuthorizedSSHKeysRequest(name=RUNNING, user="root")),
    ("SetAuthorizedSSHKeys", pb.SetAuthorizedSSHKeysRequest(
        name=RUNNING, user="root", keys=["ssh-ed25519 AAAA me"])),
    ("SetAgentResponseTimeout", pb.SetAgentResponseTimeoutRequest(name=RUNNING)),
])
def test_what_the_test_driver_lacks_is_unimplemented(stub: Stub, rpc: str,
                                                     request_: Message) -> None:
    assert code_and_reason(getattr(stub, rpc), request_) == (C.UNIMPLEMENTED,
                                                            "VIR_ERR_NO_SUPPORT")


# -- bad input on every RPC -----------------------------------------------------------

#: one valid request of each RPC, on the running domain
REQUESTS: list[tuple[str, Message]] = [
    ("GetInterfaceAddresses", pb.GetInterfaceAddressesRequest(name=RUNNING)),
    ("FreezeFilesystems", pb.FreezeFilesystemsRequest(name=RUNNING)),
    ("ThawFilesystems", pb.ThawFilesystemsRequest(name=RUNNING)),
    ("TrimFilesystems", pb.TrimFilesystemsRequest(name=RUNNING)),
    ("GetFilesystemInfo", pb.GetFilesystemInfoRequest(name=RUNNING)),
    ("GetGuestInfo", pb.GetGuestInfoRequest(name=RUNNING)),
    ("GetGuestHostname", pb.GetGuestHostnameRequest(name=RUNNING)),
    ("GetGuestVcpus", pb.GetGuestVcpusRequest(name=RUNNING)),
    ("SetGuestVcpus", pb.SetGuestVcpusRequest(name=RUNNING, cpumap="0")),
    ("GetGuestTime", pb.GetGuestTimeRequest(name=RUNNING)),
    ("SetGuestTime", pb.SetGuestTimeRequest(name=RUNNING, sync=True)),
    ("SetUserPassword", pb.SetUserPasswordRequest(name=RUNNING, user="root", password="x")),
    ("GetAuthorizedSSHKeys", pb.GetAuthorizedSSHKeysRequest(name=RUNNING, user="root")),
    ("SetAuthorizedSSHKeys", pb.SetAuthorizedSSHKeysRequest(name=RUNNING, user="root")),
    ("SetAgentResponseTimeout", pb.SetAgentResponseTimeoutRequest(name=RUNNING)),
]

#: an enum value no proto names (a newer client's)
UNKNOWN: Any = 99
#: requests the service refuses before libvirt sees them
INVALID: list[tuple[str, Message]] = [
    ("GetInterfaceAddresses", pb.GetInterfaceAddressesRequest(name=RUNNING, source=UNKNOWN)),
    ("FreezeFilesystems", pb.FreezeFilesystemsRequest(name=RUNNING, mountpoints=[""])),
    ("FreezeFilesystems", pb.FreezeFilesystemsRequest(name=RUNNING, mountpoints=["/", "/"])),
    ("ThawFilesystems", pb.ThawFilesystemsRequest(name=RUNNING, mountpoints=[""])),
    ("TrimFilesystems", pb.TrimFilesystemsRequest(name=RUNNING, mountpoint="boot")),
    ("GetGuestInfo", pb.GetGuestInfoRequest(name=RUNNING, types=[UNKNOWN])),
    ("GetGuestHostname", pb.GetGuestHostnameRequest(name=RUNNING, source=UNKNOWN)),
    ("SetGuestVcpus", pb.SetGuestVcpusRequest(name=RUNNING)),
    ("SetGuestTime", pb.SetGuestTimeRequest(name=RUNNING)),
    ("SetGuestTime", pb.SetGuestTimeRequest(name=RUNNING, sync=True,
                                            time=Timestamp(seconds=1))),
    ("SetGuestTime", pb.SetGuestTimeRequest(name=RUNNING, time=Timestamp(seconds=-5))),
    ("SetUserPassword", pb.SetUserPasswordRequest(name=RUNNING, password="x")),
    ("SetUserPassword", pb.SetUserPasswordRequest(name=RUNNING, user="root")),
    ("GetAuthorizedSSHKeys", pb.GetAuthorizedSSHKeysRequest(name=RUNNING)),
    ("SetAuthorizedSSHKeys", pb.SetAuthorizedSSHKeysRequest(name=RUNNING, user="root",
                                                            keys=["a\nb"])),
    ("SetAuthorizedSSHKeys", pb.SetAuthorizedSSHKeysRequest(
        name=RUNNING, user="root", change=pb.SSH_KEYS_CHANGE_APPEND)),
    ("SetAgentResponseTimeout", pb.SetAgentResponseTimeoutRequest(
        name=RUNNING, mode=pb.AGENT_TIMEOUT_MODE_SECONDS)),
    ("SetAgentResponseTimeout", pb.SetAgentResponseTimeoutRequest(name=RUNNING, seconds=5)),
]



def test_the_tables_cover_every_agent_rpc() -> None:
    assert {name for name, _ in REQUESTS} == {name for name, _ in INVALID} | {
        "GetFilesystemInfo", "GetGuestVcpus", "GetGuestTime"}


@pytest.mark.parametrize(("rpc", "request_"), REQUESTS, ids=[name for name, _ in REQUESTS])
def test_an_unknown_domain_is_not_found(stub: Stub, rpc: str, request_: Message) -> None:
    assert code_and_reason(getattr(stub, rpc), renamed(request_, "nope")) == (
        C.NOT_FOUND, "VIR_ERR_NO_DOMAIN")


@pytest.mark.parametrize(("rpc", "request_"), REQUESTS, ids=[name for name, _ in REQUESTS])
def test_a_stopped_domain_is_a_failed_precondition(stub: Stub, rpc: str,
                                                   request_: Message) -> None:
    assert code_and_reason(getattr(stub, rpc), renamed(request_, STOPPED)) == (
        C.FAILED_PRECONDITION, "VIR_ERR_OPERATION_INVALID")


@pytest.mark.parametrize(("rpc", "request_"), INVALID,
                         ids=[f"{name}-{n}" for n, (name, _) in enumerate(INVALID)])
def test_invalid_arguments(stub: Stub, rpc: str, request_: Message) -> None:
    code, _ = code_and_reason(getattr(stub, rpc), request_)
    assert code == C.INVALID_ARGUMENT


# -- the CLI on the test driver -------------------------------------------------------


def run_cli(daemon: Daemon, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["--socket", str(daemon.socket_path), *args])
    out, err = capsys.readouterr()
    return code, out + err


def test_cli_domifaddr_domhostname_and_domfsinfo(test_daemon: Daemon,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(test_daemon, capsys, "domifaddr", RUNNING, "--source", "arp")
    assert code == 0 and "testnet0" in out and "192.168.122.3/24" in out, out
    code, out = run_cli(test_daemon, capsys, "--json", "domifaddr", RUNNING)
    assert code == 0 and json.loads(out)["interfaces"][0]["name"] == "testnet0", out
    code, out = run_cli(test_daemon, capsys, "domhostname", RUNNING)
    assert (code, out.strip()) == (0, "testhost")
    code, out = run_cli(test_daemon, capsys, "--json", "domfsinfo", RUNNING)
    mountpoints = [f["mountpoint"] for f in json.loads(out)["filesystems"]]
    assert (code, mountpoints) == (0, ["/", "/boot"]), out
    code, out = run_cli(test_daemon, capsys, "domtime", RUNNING, "--time", "1700000000")
    assert (code, out.strip()) == (0, "Time set")
    code, out = run_cli(test_daemon, capsys, "domtime", RUNNING)
    assert code == 0 and out.startswith("Time: "), out
    code, out = run_cli(test_daemon, capsys, "domifaddr", "nope")
    assert (code, out.strip()) == (1, "virtmesh: NOT_FOUND: Domain not found (VIR_ERR_NO_DOMAIN)")


def test_cli_set_user_password_reads_stdin(test_daemon: Daemon,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    code, out = run_cli(test_daemon, capsys, "set-user-password", RUNNING, "root")
    assert code == 0 and SECRET not in out, out
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out = run_cli(test_daemon, capsys, "set-user-password", RUNNING, "root")
    assert code != 0 and "password" in out


# -- embedded QEMU: the example guest and its real agent ------------------------------

GUEST = "agent"
#: the QEMU guest's state directory, once the fixture has made it
QEMU_STATE: list[Path] = []


@pytest.fixture(scope="module")
def qemu(in_process_qemu_state: Path) -> Iterator[Stub]:
    state = in_process_qemu_state
    with running_service(state, EMBED_URI, grace_period=0.5,
                         guests_on_exit="destroy") as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        QEMU_STATE[:] = [state]
        stub.CreateDomain(pb.CreateDomainRequest(xml=_guest_xml(state)))
        log = state / "guest" / f"{GUEST}.console.log"
        wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"), 90,
                 "the guest to boot")
        wait_for(lambda: _answers(stub), 60, "the guest agent")
        code, output = guest_run("/bin/sh", "-c", "mkdir -p /mnt && mount -t ext4 /dev/vda /mnt")
        assert code == 0, output
        yield stub


def _guest_xml(state: Path) -> str:
    """The example guest with an ext4 disk (libvirt's vdb, the guest's only virtio disk:
    its /dev/vda), which the guest mounts at /mnt: a file system the agent can freeze
    (the initramfs' are not)."""
    image = state / "data.ext4"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    disk = f"""<disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{image}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <memballoon model='none'/>"""
    return example.render(GUEST, state, "qemu").replace("<memballoon model='none'/>", disk)


def agent_command(command: str, **arguments: Any) -> Any:
    """The guest agent's answer, asked directly (libvirt's qemuAgentCommand)."""
    conn = libvirt.open(EMBED_URI.format(state_dir=QEMU_STATE[0]))
    try:
        answer = libvirt_qemu.qemuAgentCommand(conn.lookupByName(GUEST), json.dumps(
            {"execute": command, "arguments": arguments}), 30, 0)
    finally:
        conn.close()
    return json.loads(answer)["return"]


def guest_run(path: str, *args: str) -> tuple[int, str]:
    """Run a program in the guest through its agent: its exit code and output."""
    pid = agent_command("guest-exec", path=path, arg=list(args),
                        **{"capture-output": True})["pid"]
    deadline = time.monotonic() + 60
    while not (status := agent_command("guest-exec-status", pid=pid))["exited"]:
        assert time.monotonic() < deadline, f"{path} still runs in the guest"
        time.sleep(0.2)
    output = b"".join(base64.b64decode(status.get(stream, ""))
                      for stream in ("out-data", "err-data"))
    return int(status.get("exitcode", -1)), output.decode(errors="replace")


def _answers(stub: Stub) -> bool:
    try:
        stub.GetGuestTime(pb.GetGuestTimeRequest(name=GUEST), timeout=20)
        return True
    except grpc.RpcError:
        time.sleep(0.5)
        return False


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_interface_addresses(qemu: Stub) -> None:
    reply = qemu.GetInterfaceAddresses(pb.GetInterfaceAddressesRequest(
        name=GUEST, source=pb.INTERFACE_ADDRESS_SOURCE_AGENT))
    # the example guest has no NIC and never brings lo up: lo without addresses
    assert [(i.name, i.hwaddr) for i in reply.interfaces] == [("lo", "00:00:00:00:00:00")]
    assert list(reply.interfaces[0].addresses) == []


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_filesystems_freeze_then_thaw(qemu: Stub) -> None:
    info = qemu.GetFilesystemInfo(pb.GetFilesystemInfoRequest(name=GUEST))
    assert [(f.mountpoint, f.device, f.type, list(f.disk_targets))
            for f in info.filesystems] == [("/mnt", "vda", "ext4", ["vdb"])]
    assert qemu.FreezeFilesystems(pb.FreezeFilesystemsRequest(
        name=GUEST, mountpoints=["/mnt"])).count == 1
    try:
        assert agent_command("guest-fsfreeze-status") == "frozen"
        # the agent refuses what could write to a frozen file system
        assert code_and_reason(qemu.SetGuestTime, pb.SetGuestTimeRequest(
            name=GUEST, sync=True)) == (C.FAILED_PRECONDITION, "GUEST_FILESYSTEMS_FROZEN")
    finally:
        thawed = qemu.ThawFilesystems(pb.ThawFilesystemsRequest(name=GUEST)).count
    assert thawed == 1
    assert agent_command("guest-fsfreeze-status") == "thawed"
    qemu.TrimFilesystems(pb.TrimFilesystemsRequest(name=GUEST))
    # libvirt's QEMU driver trims all file systems or none
    assert code_and_reason(qemu.TrimFilesystems, pb.TrimFilesystemsRequest(
        name=GUEST, mountpoint="/mnt")) == (C.UNIMPLEMENTED, "VIR_ERR_ARGUMENT_UNSUPPORTED")


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_guest_info_and_hostname(qemu: Stub) -> None:
    info = qemu.GetGuestInfo(pb.GetGuestInfoRequest(
        name=GUEST, types=[pb.GUEST_INFO_TYPE_OS, pb.GUEST_INFO_TYPE_HOSTNAME]))
    assert info.os.kernel_release and info.os.machine == "x86_64", info
    assert info.hostname and info.raw["hostname"] == info.hostname
    assert not info.users and not info.HasField("timezone")  # not asked for
    hostname = qemu.GetGuestHostname(pb.GetGuestHostnameRequest(
        name=GUEST, source=pb.HOSTNAME_SOURCE_AGENT)).hostname
    assert hostname == info.hostname


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_guest_info_of_every_kind_is_typed(qemu: Stub) -> None:
    info = qemu.GetGuestInfo(pb.GetGuestInfoRequest(name=GUEST))
    mounted = {f.mountpoint: f for f in info.filesystems}["/mnt"]
    assert (mounted.name, mounted.type) == ("vda", "ext4")
    assert 0 < mounted.used_bytes < mounted.total_bytes <= 16 * 2**20
    assert [d.alias for d in mounted.disks] == ["vdb"]
    assert "lo" in [i.name for i in info.interfaces]
    assert "/dev/vda" in [d.name for d in info.disks]
    assert int(info.raw["fs.count"]) == len(info.filesystems)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_get_and_set_time(qemu: Stub) -> None:
    when = 1_700_000_000
    qemu.SetGuestTime(pb.SetGuestTimeRequest(name=GUEST, time=Timestamp(seconds=when)))
    now = qemu.GetGuestTime(pb.GetGuestTimeRequest(name=GUEST)).time.seconds
    assert when <= now < when + 60
    qemu.SetGuestTime(pb.SetGuestTimeRequest(name=GUEST, time=Timestamp(
        seconds=int(time.time()))))
    assert abs(qemu.GetGuestTime(pb.GetGuestTimeRequest(name=GUEST)).time.seconds
               - time.time()) < 60


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_agent_guest_vcpus(qemu: Stub) -> None:
    vcpus = qemu.GetGuestVcpus(pb.GetGuestVcpusRequest(name=GUEST))
    assert (vcpus.vcpus, vcpus.online) == ("0", "0")  # the example guest has one vCPU


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_an_agent_that_does_not_answer_is_a_failed_precondition(qemu: Stub) -> None:
    """Last: the guest's agent stays stopped (SIGSTOP) until the guest goes."""
    agent_command("guest-exec", path="/bin/sh",
                  arg=["-c", "sleep 1; kill -STOP $(pidof qemu-ga)"])
    time.sleep(3)
    qemu.SetAgentResponseTimeout(pb.SetAgentResponseTimeoutRequest(
        name=GUEST, mode=pb.AGENT_TIMEOUT_MODE_SECONDS, seconds=2))
    started = time.monotonic()
    error = error_of(qemu.GetGuestTime, pb.GetGuestTimeRequest(name=GUEST))
    assert time.monotonic() - started < 30
    assert (error.code(), reason_of(error)) == (  # type: ignore[attr-defined]
        C.FAILED_PRECONDITION, "VIR_ERR_AGENT_UNRESPONSIVE")
    assert "does not answer" in str(error.details())  # type: ignore[attr-defined]
