"""The disk, interface and block job RPCs of ComputeService, and their CLI commands.

On a real service over libvirt's test driver (a private node file: "alpha" runs with
a disk vda, an interface and a balloon; "beta" is defined and off): what the test
driver implements (block info, interface and memory statistics, memory peek, I/O
throttling), refusals of bad input on every RPC with nothing half-done, the CLI. On
embedded QEMU with the example guest (TCG): a live block copy followed through
GetDomainBlockJobInfo and pivoted, a pull, a rebase and an active commit of qcow2
chains, a resize, block and memory peeks of real bytes, statistics and a block
threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest

from guest import example
from services.common.daemon import Daemon
from services.compute import convert_block
from services.compute.backend_block import PEEK_MAX, destination_xml
from tests.conftest import domain_xml, error_of, reason_of, renamed, running_service
from tests.test_e2e_qemu import BOOTED, EMBED_URI, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.types.v1.typed_params_pb2 import TypedParameter
from virtmesh_client import cli
from virtmesh_client.cli_block import hexdump

pytestmark = pytest.mark.timeout(120)
Stub = pb_grpc.ComputeServiceStub
C = grpc.StatusCode

NODE_XML = """<node>
  <domain type='test'>
    <name>alpha</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/guest/alpha.img'/><target dev='vda' bus='virtio'/>
      </disk>
      <interface type='network'>
        <mac address='52:54:00:12:34:56'/><source network='default'/>
      </interface>
      <memballoon model='virtio'/>
    </devices>
  </domain>
</node>
"""


def failed(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request, 20)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


def params(reply: Any) -> dict[str, Any]:
    return {p.name: getattr(p, p.WhichOneof("value")) for p in reply.parameters}


@pytest.fixture
def test_node(tmp_path: Path) -> Iterator[Daemon]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    with running_service(tmp_path, f"test://{node}", grace_period=0.5) as daemon:
        yield daemon


@pytest.fixture
def stub(test_node: Daemon) -> Iterator[Stub]:
    with grpc.insecure_channel(f"unix:{test_node.socket_path}") as channel:
        stub = Stub(channel)
        stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("beta").replace(
            "</os>", "</os><devices><disk type='file' device='disk'>"
            "<source file='/guest/beta.img'/><target dev='vda'/></disk></devices>")),
            timeout=10)
        yield stub


@pytest.fixture
def cli_run(test_node: Daemon, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    assert test_node.socket_path is not None

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(test_node.socket_path.parent), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


# -- the test driver -------------------------------------------------------------


def test_block_info_by_target_and_by_path(stub: Stub) -> None:
    by_target = stub.GetDomainBlockInfo(pb.GetDomainBlockInfoRequest(name="alpha", disk="vda"))
    by_path = stub.GetDomainBlockInfo(pb.GetDomainBlockInfoRequest(
        name="alpha", disk="/guest/alpha.img"))
    assert by_target == by_path
    # the test driver's fixed sizes: 1 TiB on the host, a little less seen by the guest
    assert by_target.allocation_bytes == by_target.physical_bytes == 1 << 40
    assert 0 < by_target.capacity_bytes < by_target.physical_bytes


def test_interface_stats_by_target_and_by_mac(stub: Stub) -> None:
    xml = stub.GetDomainXML(pb.GetDomainXMLRequest(name="alpha")).xml
    target = ET.fromstring(xml).find("devices/interface/target").get("dev")  # type: ignore[union-attr]
    by_mac = stub.GetDomainInterfaceStats(pb.GetDomainInterfaceStatsRequest(
        name="alpha", device="52:54:00:12:34:56"))
    by_target = stub.GetDomainInterfaceStats(pb.GetDomainInterfaceStatsRequest(
        name="alpha", device=str(target)))
    # the test driver's counters grow with the clock
    assert 0 < by_mac.rx_bytes <= by_target.rx_bytes
    assert by_target.rx_packets > 0 and by_target.tx_bytes > 0 and by_target.tx_drop > 0


def test_memory_stats_are_tagged(stub: Stub) -> None:
    stats = stub.GetDomainMemoryStats(pb.GetDomainMemoryStatsRequest(name="alpha")).stats
    by_tag = {s.tag: s.value for s in stats}
    assert by_tag[pb.MEMORY_STAT_TAG_ACTUAL_BALLOON] == 65536  # the domain's memory
    assert by_tag[pb.MEMORY_STAT_TAG_RSS] == 32768
    assert pb.MEMORY_STAT_TAG_UNSPECIFIED not in by_tag
    assert [s.name for s in stats][:2] == ["swap_in", "swap_out"]  # libvirt's tag order


def test_memory_stat_tags_pair_libvirt_constants() -> None:
    for name, tag in convert_block.MEMORY_STAT_TAGS.items():
        constant = pb.MemoryStatTag.Name(tag).removeprefix("MEMORY_STAT_TAG_")
        assert hasattr(libvirt, f"VIR_DOMAIN_MEMORY_STAT_{constant}"), name
    assert len(set(convert_block.MEMORY_STAT_TAGS.values())) == len(pb.MemoryStatTag.keys()) - 1


def test_memory_peek_on_the_test_driver(stub: Stub) -> None:
    # the test driver answers each byte with its index in the buffer
    data = stub.PeekDomainMemory(pb.PeekDomainMemoryRequest(name="alpha", address=0x100,
                                                            size=32)).data
    assert data == bytes(range(32))
    physical = stub.PeekDomainMemory(pb.PeekDomainMemoryRequest(
        name="alpha", address=0x100, size=PEEK_MAX, physical=True)).data
    assert len(physical) == PEEK_MAX


def test_block_io_tune_set_and_read_in_each_scope(stub: Stub) -> None:
    def read(scope: pb.Scope | None = None) -> dict[str, Any]:
        return params(stub.GetDomainBlockIoTune(pb.GetDomainBlockIoTuneRequest(
            name="alpha", disk="vda", scope=scope)))
    before = read()
    assert before["total_bytes_sec"] == 0 and before["group_name"] == ""
    stub.SetDomainBlockIoTune(pb.SetDomainBlockIoTuneRequest(
        name="alpha", disk="vda", scope=pb.Scope(live=True),
        parameters=[TypedParameter(name="read_bytes_sec", ulong_value=1 << 20),
                    TypedParameter(name="read_bytes_sec_max", ulong_value=2 << 20),
                    TypedParameter(name="write_iops_sec", ulong_value=300),
                    TypedParameter(name="write_iops_sec_max", ulong_value=300)]))
    after = read(pb.Scope(live=True))
    assert (after["read_bytes_sec"], after["write_iops_sec"]) == (1 << 20, 300)
    # libvirt's own rule: a total and a read limit exclude each other; nothing changes
    assert failed(stub.SetDomainBlockIoTune, pb.SetDomainBlockIoTuneRequest(
        name="alpha", disk="vda", parameters=[
            TypedParameter(name="total_bytes_sec", ulong_value=5)]))[0] == C.INVALID_ARGUMENT
    assert read() == after


def test_block_io_tune_refusals_change_nothing(stub: Stub) -> None:
    before = stub.GetDomainBlockIoTune(pb.GetDomainBlockIoTuneRequest(name="alpha", disk="vda"))
    for parameters, reason in (
            ([], "MISSING_FIELD"),
            ([TypedParameter(name="bogus", ulong_value=1)], "UNKNOWN_PARAMETER"),
            ([TypedParameter(name="read_bytes_sec", string_value="fast")],
             "INVALID_PARAMETER_TYPE"),
            ([TypedParameter(name="read_bytes_sec", ulong_value=1),
              TypedParameter(name="read_bytes_sec", ulong_value=2)], "DUPLICATE_PARAMETER")):
        assert failed(stub.SetDomainBlockIoTune, pb.SetDomainBlockIoTuneRequest(
            name="alpha", disk="vda", parameters=parameters)) == (C.INVALID_ARGUMENT, reason)
    assert failed(stub.GetDomainBlockIoTune, pb.GetDomainBlockIoTuneRequest(
        name="alpha", disk="vda", scope=pb.Scope(live=True, config=True))) == (
        C.INVALID_ARGUMENT, "CONFLICTING_FLAGS")
    assert failed(stub.GetDomainBlockIoTune, pb.GetDomainBlockIoTuneRequest(
        name="alpha", disk="vdz"))[0] == C.INVALID_ARGUMENT
    assert failed(stub.GetDomainBlockIoTune, pb.GetDomainBlockIoTuneRequest(
        name="beta", disk="vda", scope=pb.Scope(live=True)))[0] == C.FAILED_PRECONDITION
    assert stub.GetDomainBlockIoTune(pb.GetDomainBlockIoTuneRequest(
        name="alpha", disk="vda")) == before


def _requests(disk: str, destination: str) -> list[tuple[str, Any]]:
    """A valid request of every RPC for domain ``{name}`` on ``disk``."""
    return [
        ("GetDomainBlockInfo", pb.GetDomainBlockInfoRequest(disk=disk)),
        ("GetDomainBlockStats", pb.GetDomainBlockStatsRequest(disk=disk)),
        ("GetDomainInterfaceStats", pb.GetDomainInterfaceStatsRequest(device="vnet0")),
        ("GetDomainMemoryStats", pb.GetDomainMemoryStatsRequest()),
        ("PeekDomainBlock", pb.PeekDomainBlockRequest(disk=disk, size=512)),
        ("PeekDomainMemory", pb.PeekDomainMemoryRequest(size=16)),
        ("ResizeDomainBlock", pb.ResizeDomainBlockRequest(disk=disk, size_bytes=1 << 41)),
        ("GetDomainBlockIoTune", pb.GetDomainBlockIoTuneRequest(disk=disk)),
        ("SetDomainBlockIoTune", pb.SetDomainBlockIoTuneRequest(disk=disk, parameters=[
            TypedParameter(name="read_iops_sec", ulong_value=10)])),
        ("CopyDomainBlock", pb.CopyDomainBlockRequest(
            disk=disk, destination_file=pb.BlockDestination(path=destination))),
        ("CommitDomainBlock", pb.CommitDomainBlockRequest(disk=disk)),
        ("PullDomainBlock", pb.PullDomainBlockRequest(disk=disk)),
        ("RebaseDomainBlock", pb.RebaseDomainBlockRequest(disk=disk)),
        ("AbortDomainBlockJob", pb.AbortDomainBlockJobRequest(disk=disk)),
        ("SetDomainBlockJobSpeed", pb.SetDomainBlockJobSpeedRequest(disk=disk,
                                                                    bandwidth_bytes=1 << 20)),
        ("GetDomainBlockJobInfo", pb.GetDomainBlockJobInfoRequest(disk=disk)),
        ("SetDomainBlockThreshold", pb.SetDomainBlockThresholdRequest(disk=disk,
                                                                      threshold_bytes=1 << 20)),
    ]



def test_every_rpc_is_covered_here() -> None:
    ours = {name for name, _ in _requests("vda", "/x")}
    service = pb.DESCRIPTOR.services_by_name["ComputeService"].methods_by_name
    assert ours <= set(service) and len(ours) == 17


def test_an_unknown_domain_is_not_found_on_every_rpc(stub: Stub, tmp_path: Path) -> None:
    for method, request in _requests("vda", str(tmp_path / "copy.raw")):
        assert failed(getattr(stub, method), renamed(request, "nope"))[0] == C.NOT_FOUND, method
    assert not (tmp_path / "copy.raw").exists()


#: what the test driver does not implement, on its running domain
UNIMPLEMENTED = ("GetDomainBlockStats", "PeekDomainBlock", "ResizeDomainBlock",
                 "CopyDomainBlock", "CommitDomainBlock", "PullDomainBlock",
                 "RebaseDomainBlock", "AbortDomainBlockJob", "SetDomainBlockJobSpeed",
                 "GetDomainBlockJobInfo", "SetDomainBlockThreshold")


def test_what_the_test_driver_lacks_is_unimplemented(stub: Stub, tmp_path: Path) -> None:
    for method, request in _requests("vda", str(tmp_path / "copy.raw")):
        if method in UNIMPLEMENTED:
            code, _ = failed(getattr(stub, method), renamed(request, "alpha"))
            assert code == C.UNIMPLEMENTED, method
    assert not (tmp_path / "copy.raw").exists()  # the refused copy left no file


def test_an_inactive_domain_is_a_failed_precondition(stub: Stub, tmp_path: Path) -> None:
    needs_running = {"GetDomainBlockStats", "GetDomainInterfaceStats", "GetDomainMemoryStats",
                     "PeekDomainMemory", "ResizeDomainBlock", "CopyDomainBlock",
                     "CommitDomainBlock", "PullDomainBlock", "RebaseDomainBlock",
                     "AbortDomainBlockJob", "SetDomainBlockJobSpeed", "GetDomainBlockJobInfo",
                     "SetDomainBlockThreshold"}
    for method, request in _requests("vda", str(tmp_path / "copy.raw")):
        if method in needs_running:
            code, _ = failed(getattr(stub, method), renamed(request, "beta"))
            assert code == C.FAILED_PRECONDITION, method
    assert not (tmp_path / "copy.raw").exists()
    # what reads an inactive domain's disk: block info
    assert stub.GetDomainBlockInfo(pb.GetDomainBlockInfoRequest(
        name="beta", disk="vda")).capacity_bytes > 0


def test_missing_and_malformed_names_are_invalid_on_every_rpc(stub: Stub,
                                                              tmp_path: Path) -> None:
    for method, request in _requests("", str(tmp_path / "copy.raw")):
        call = getattr(stub, method)
        if method in ("GetDomainMemoryStats", "PeekDomainMemory"):
            continue  # no disk
        if method == "GetDomainBlockStats":  # empty: every disk summed
            continue
        if method == "GetDomainInterfaceStats":
            request = pb.GetDomainInterfaceStatsRequest(device="")
        assert failed(call, renamed(request, "alpha")) == (C.INVALID_ARGUMENT,
                                                          "MISSING_FIELD"), method
    for method, request in _requests("vd\0a", str(tmp_path / "copy.raw")):
        if method in ("GetDomainMemoryStats", "PeekDomainMemory"):
            continue
        if method == "GetDomainInterfaceStats":
            request = pb.GetDomainInterfaceStatsRequest(device="vnet\0")
        assert failed(getattr(stub, method), renamed(request, "alpha"))[0] == \
            C.INVALID_ARGUMENT, method
    assert failed(stub.GetDomainBlockInfo, pb.GetDomainBlockInfoRequest(
        name="alpha", disk="x" * 5000))[0] == C.INVALID_ARGUMENT
    # disks and interfaces the domain does not have: libvirt's INVALID_ARG
    assert failed(stub.GetDomainBlockInfo, pb.GetDomainBlockInfoRequest(
        name="alpha", disk="vdz")) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    assert failed(stub.GetDomainInterfaceStats, pb.GetDomainInterfaceStatsRequest(
        name="alpha", device="vnet9")) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    assert not (tmp_path / "copy.raw").exists()


def test_peeks_are_bounded(stub: Stub) -> None:
    for size, reason in ((0, "MISSING_FIELD"), (PEEK_MAX + 1, "PEEK_TOO_LARGE"),
                         (1 << 31, "PEEK_TOO_LARGE")):
        assert failed(stub.PeekDomainMemory, pb.PeekDomainMemoryRequest(
            name="alpha", size=size)) == (C.INVALID_ARGUMENT, reason)
        assert failed(stub.PeekDomainBlock, pb.PeekDomainBlockRequest(
            name="alpha", disk="vda", size=size)) == (C.INVALID_ARGUMENT, reason)


def test_copy_destinations_are_checked_first(stub: Stub, tmp_path: Path) -> None:
    existing = tmp_path / "existing.raw"
    existing.write_bytes(b"keep")

    def copy(**fields: Any) -> tuple[grpc.StatusCode, str]:
        return failed(stub.CopyDomainBlock, pb.CopyDomainBlockRequest(
            name="alpha", disk="vda", **fields))

    dest = pb.BlockDestination
    assert copy() == (C.INVALID_ARGUMENT, "MISSING_FIELD")
    assert copy(destination_file=dest(path="copy.raw")) == (C.INVALID_ARGUMENT, "INVALID_PATH")
    assert copy(destination_file=dest(path=f"{tmp_path}/../x.raw")) == (C.INVALID_ARGUMENT,
                                                                        "INVALID_PATH")
    assert copy(destination_file=dest(path=str(existing))) == (C.ALREADY_EXISTS, "FILE_EXISTS")
    assert copy(destination_file=dest(path=f"{tmp_path}/no/x.raw")) == (
        C.FAILED_PRECONDITION, "NO_DIRECTORY")
    assert copy(destination_file=dest(path=f"{tmp_path}/gone.raw"), reuse_external=True) == (
        C.NOT_FOUND, "NO_FILE")
    assert copy(destination_file=dest(path=f"{tmp_path}/x.raw", format="qcow2'/><x a='")) == (
        C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    assert copy(destination_xml="<disk type='file'><source file='/x'/>")[0] == \
        C.INVALID_ARGUMENT
    assert copy(destination_xml="<domain/>")[0] == C.INVALID_ARGUMENT
    assert copy(destination_file=dest(path=f"{tmp_path}/x.raw"),
                bandwidth_bytes=1 << 63) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    # a rebase's copy destination is checked alike
    for base, reason in (("rel.raw", (C.INVALID_ARGUMENT, "INVALID_PATH")),
                         (str(existing), (C.ALREADY_EXISTS, "FILE_EXISTS"))):
        assert failed(stub.RebaseDomainBlock, pb.RebaseDomainBlockRequest(
            name="alpha", disk="vda", base=base, copy=True)) == reason
    assert failed(stub.RebaseDomainBlock, pb.RebaseDomainBlockRequest(
        name="alpha", disk="vda", base=f"{tmp_path}/r.raw", copy=True))[0] == C.UNIMPLEMENTED
    assert existing.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".raw") == ["existing.raw"]
    assert destination_xml(Path("/a/b's.raw"), "qcow2") == (
        "<disk type=\"file\"><source file=\"/a/b's.raw\" /><driver type=\"qcow2\" /></disk>")


# -- the CLI on the test driver ------------------------------------------------------


def test_cli_lists_disks_and_interfaces(stub: Stub, cli_run: Any) -> None:
    code, out, err = cli_run("domblklist", "alpha")
    assert code == 0, err
    assert out.splitlines()[-1].split() == ["vda", "/guest/alpha.img"]
    code, out, err = cli_run("--json", "domblklist", "alpha", "--details")
    assert json.loads(out)["disks"] == [{"target": "vda", "source": "/guest/alpha.img",
                                         "type": "file", "device": "disk"}]
    code, out, err = cli_run("domiflist", "alpha")
    assert code == 0, err
    assert out.splitlines()[-1].split()[1:] == ["network", "default", "-", "52:54:00:12:34:56"]


def test_cli_block_info_stats_and_tune(stub: Stub, cli_run: Any) -> None:
    code, out, err = cli_run("domblkinfo", "alpha", "vda")
    assert code == 0, err
    assert out.split()[4:6] == ["Physical:", str(1 << 40)]
    code, out, err = cli_run("domblkinfo", "alpha", "--all", "--human")
    assert out.splitlines()[-1].split()[3:] == ["1.0", "TiB", "1.0", "TiB"], out
    code, out, err = cli_run("dommemstat", "alpha")
    assert "actual 65536" in out.splitlines(), out
    code, out, err = cli_run("domifstat", "alpha", "52:54:00:12:34:56")
    assert code == 0 and out.splitlines()[0].split()[1] == "rx_bytes", err
    code, out, err = cli_run("blkdeviotune", "alpha", "vda", "--read-bytes-sec", "2M",
                             "--read-bytes-sec-max", "4M", "--set", "write_iops_sec=40",
                             "--set", "write_iops_sec_max=80")
    assert code == 0, err
    shown = dict(line.split(":", 1) for line in out.splitlines())
    assert (shown["read_bytes_sec"].strip(), shown["write_iops_sec"].strip()) == ("2097152",
                                                                                 "40"), out
    code, out, err = cli_run("--json", "blkdeviotune", "alpha", "vda")
    assert {"name": "write_iops_sec", "ulong_value": 40} in json.loads(out)["parameters"]


def test_cli_refusals(stub: Stub, cli_run: Any) -> None:
    code, out, err = cli_run("blockjob", "alpha", "vda")
    assert code == 1 and "UNIMPLEMENTED" in err
    code, out, err = cli_run("domblkstat", "beta", "vda")
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, out, err = cli_run("blockcopy", "alpha", "vda")
    assert code != 0 and "--dest" in err
    code, out, err = cli_run("blockresize", "alpha", "vda", "ten")
    assert code != 0 and "is not a size" in err


def test_each_job_flag_reaches_its_libvirt_flag() -> None:
    cases: list[tuple[Callable[[Any], int], Any, str]] = [
        (convert_block.copy_flags, pb.CopyDomainBlockRequest, "VIR_DOMAIN_BLOCK_COPY_"),
        (convert_block.commit_flags, pb.CommitDomainBlockRequest, "VIR_DOMAIN_BLOCK_COMMIT_"),
        (convert_block.rebase_flags, pb.RebaseDomainBlockRequest, "VIR_DOMAIN_BLOCK_REBASE_"),
        (convert_block.abort_flags, pb.AbortDomainBlockJobRequest,
         "VIR_DOMAIN_BLOCK_JOB_ABORT_")]
    for convert, request_type, prefix in cases:
        bools = [f.name for f in request_type.DESCRIPTOR.fields if f.type == f.TYPE_BOOL]
        assert bools
        for field in bools:
            name = {"reuse_external": "REUSE_EXT", "asynchronous": "ASYNC"}.get(
                field, field.upper())
            assert convert(request_type(**{field: True})) == getattr(libvirt, prefix + name)
        assert convert(request_type()) == 0


def test_hexdump() -> None:
    assert hexdump(b"AB\0", 16) == "00000010  41 42 00" + " " * 39 + "  |AB.|"


# -- embedded QEMU -------------------------------------------------------------------

GUEST = "blocks"
MIB = 1 << 20


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def _chain(state: Path, name: str) -> Path:
    """A qcow2 overlay on a qcow2 base with data in the base; the overlay's path."""
    base, top = state / f"{name}-base.qcow2", state / f"{name}-top.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(base), "8M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(base)],
                   check=True, capture_output=True)
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    return top


def _guest_xml(state: Path) -> str:
    data = state / "blocks-data.raw"
    data.write_bytes(os.urandom(8 * MIB))
    disks = [f"""<disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{data}'/>
      <target dev='vdb' bus='virtio'/></disk>"""]
    for dev, chain in (("vdc", "pull"), ("vdd", "commit"), ("vde", "rebase"),
                       ("vdf", "clipull")):
        disks.append(f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{_chain(state, chain)}'/>
      <target dev='{dev}' bus='virtio'/></disk>""")
    # a three-layer chain: base <- mid <- top, for a commit of mid into base
    mid = _chain(state, "commit3")
    top3 = state / "commit3-top3.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(mid), "-F", "qcow2", str(top3))
    disks.append(f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{top3}'/>
      <target dev='vdg' bus='virtio'/></disk>""")
    return example.render(GUEST, state, "qemu").replace(
        "<memballoon model='none'/>", "\n".join(disks) + "<memballoon model='virtio'/>")


#: the QEMU service's socket directory, once the fixture has started it
QEMU_SOCKETS: list[Path] = []


@pytest.fixture(scope="module")
def qemu(in_process_qemu_state: Path) -> Iterator[tuple[Stub, Path]]:
    state = in_process_qemu_state
    with running_service(state, EMBED_URI, grace_period=0.5,
                         guests_on_exit="destroy") as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        assert daemon.socket_path is not None
        QEMU_SOCKETS[:] = [daemon.socket_path.parent]
        stub.CreateDomain(pb.CreateDomainRequest(xml=_guest_xml(state)), timeout=60)
        try:
            log = state / "guest" / f"{GUEST}.console.log"
            wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"), 90,
                     "the guest to boot")
            yield stub, state
        finally:
            with contextlib.suppress(grpc.RpcError):
                stub.DestroyDomain(pb.DestroyDomainRequest(name=GUEST), timeout=30)


def _source(stub: Stub, dev: str) -> ET.Element:
    xml = stub.GetDomainXML(pb.GetDomainXMLRequest(name=GUEST)).xml
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        if disk.find("target").get("dev") == dev:  # type: ignore[union-attr]
            return disk
    raise AssertionError(f"no disk {dev}")


def _job(stub: Stub, dev: str) -> pb.GetDomainBlockJobInfoResponse:
    return stub.GetDomainBlockJobInfo(pb.GetDomainBlockJobInfoRequest(name=GUEST, disk=dev),
                                      timeout=10)


def _wait_job(stub: Stub, dev: str, ready: bool, timeout: float = 60) -> Any:
    """The job's info once ready (cur == end), or once gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(stub, dev)
        if ready and info.active and info.end and info.cur == info.end:
            return info
        if not ready and not info.active:
            return info
        time.sleep(0.2)
    raise AssertionError(f"the job of {dev} did not get {'ready' if ready else 'done'}")


def _running(stub: Stub) -> bool:
    return stub.GetDomain(pb.GetDomainRequest(name=GUEST)).domain.state == \
        pb.DOMAIN_STATE_RUNNING


@pytest.mark.qemu
def test_block_copy_is_followed_and_pivoted(qemu: tuple[Stub, Path]) -> None:
    stub, state = qemu
    source = _source(stub, "vdb").find("source").get("file")  # type: ignore[union-attr]
    assert not _job(stub, "vdb").active  # no job: a clear answer
    copy = state / "blocks-copy.raw"
    stub.CopyDomainBlock(pb.CopyDomainBlockRequest(
        name=GUEST, disk="vdb", destination_file=pb.BlockDestination(path=str(copy),
                                                                      format="raw"),
        bandwidth_bytes=MIB, transient_job=True), timeout=30)
    info = _job(stub, "vdb")
    assert info.active and info.type == pb.BLOCK_JOB_TYPE_COPY
    assert info.bandwidth_bytes == MIB and info.cur < info.end
    # a second job on the disk is refused
    assert failed(stub.PullDomainBlock, pb.PullDomainBlockRequest(
        name=GUEST, disk="vdb"))[0] == C.FAILED_PRECONDITION
    # pivot before it is ready: refused, the copy goes on
    assert failed(stub.AbortDomainBlockJob, pb.AbortDomainBlockJobRequest(
        name=GUEST, disk="vdb", pivot=True))[0] == C.FAILED_PRECONDITION
    stub.SetDomainBlockJobSpeed(pb.SetDomainBlockJobSpeedRequest(
        name=GUEST, disk="vdb", bandwidth_bytes=0), timeout=10)
    assert _job(stub, "vdb").bandwidth_bytes == 0
    ready = _wait_job(stub, "vdb", ready=True)
    assert ready.end >= 8 * MIB
    stub.AbortDomainBlockJob(pb.AbortDomainBlockJobRequest(name=GUEST, disk="vdb",
                                                           pivot=True), timeout=30)
    _wait_job(stub, "vdb", ready=False)
    assert _source(stub, "vdb").find("source").get("file") == str(copy)  # type: ignore[union-attr]
    assert copy.read_bytes() == Path(str(source)).read_bytes()
    assert _running(stub)


@pytest.mark.qemu
def test_block_pull_and_rebase_flatten_a_chain(qemu: tuple[Stub, Path]) -> None:
    stub, state = qemu
    assert _source(stub, "vdc").find("backingStore/source") is not None
    stub.PullDomainBlock(pb.PullDomainBlockRequest(name=GUEST, disk="vdc"), timeout=30)
    _wait_job(stub, "vdc", ready=False)
    assert _source(stub, "vdc").find("backingStore/source") is None
    stub.RebaseDomainBlock(pb.RebaseDomainBlockRequest(name=GUEST, disk="vde"), timeout=30)
    _wait_job(stub, "vde", ready=False)
    assert _source(stub, "vde").find("backingStore/source") is None
    # the base's data reached each top layer, which now stands alone
    for chain in ("pull", "rebase"):
        top = state / f"{chain}-top.qcow2"
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(top)], check=True,
            capture_output=True, text=True).stdout)
        assert "backing-filename" not in info
        read = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c",
                               "read -P 0x5a 0 1M", str(top)], capture_output=True, text=True)
        assert "read 1048576/1048576 bytes" in read.stdout, read.stdout + read.stderr
    # libvirt peeks raw images only
    assert failed(stub.PeekDomainBlock, pb.PeekDomainBlockRequest(
        name=GUEST, disk="vde", size=16))[0] == C.UNIMPLEMENTED
    assert _running(stub)


@pytest.mark.qemu
def test_active_block_commit_pivots_to_the_base(qemu: tuple[Stub, Path]) -> None:
    stub, state = qemu
    base = state / "commit-base.qcow2"
    assert failed(stub.CommitDomainBlock, pb.CommitDomainBlockRequest(
        name=GUEST, disk="vdd", base="/no/such.qcow2", active=True))[0] == C.INVALID_ARGUMENT
    stub.CommitDomainBlock(pb.CommitDomainBlockRequest(name=GUEST, disk="vdd", active=True),
                           timeout=30)
    info = _wait_job(stub, "vdd", ready=True)
    assert info.type == pb.BLOCK_JOB_TYPE_ACTIVE_COMMIT
    stub.AbortDomainBlockJob(pb.AbortDomainBlockJobRequest(name=GUEST, disk="vdd",
                                                           pivot=True), timeout=30)
    _wait_job(stub, "vdd", ready=False)
    assert _source(stub, "vdd").find("source").get("file") == str(base)  # type: ignore[union-attr]
    assert _running(stub)


@pytest.mark.qemu
def test_block_resize_grows_and_refuses_a_shrink(qemu: tuple[Stub, Path]) -> None:
    stub, _ = qemu
    path = Path(str(_source(stub, "vdb").find("source").get("file")))  # type: ignore[union-attr]
    capacity = stub.GetDomainBlockInfo(pb.GetDomainBlockInfoRequest(
        name=GUEST, disk="vdb")).capacity_bytes
    stub.ResizeDomainBlock(pb.ResizeDomainBlockRequest(name=GUEST, disk="vdb",
                                                       size_bytes=capacity + 4 * MIB))
    info = stub.GetDomainBlockInfo(pb.GetDomainBlockInfoRequest(name=GUEST, disk=str(path)))
    assert info.capacity_bytes == capacity + 4 * MIB == path.stat().st_size
    assert failed(stub.ResizeDomainBlock, pb.ResizeDomainBlockRequest(
        name=GUEST, disk="vdb", size_bytes=MIB)) == (C.INVALID_ARGUMENT, "SHRINK_NOT_ASKED")
    assert path.stat().st_size == capacity + 4 * MIB
    assert failed(stub.ResizeDomainBlock, pb.ResizeDomainBlockRequest(
        name=GUEST, disk="vdz", size_bytes=MIB))[0] == C.INVALID_ARGUMENT


@pytest.mark.qemu
def test_block_peek_reads_the_image(qemu: tuple[Stub, Path]) -> None:
    stub, _ = qemu
    path = Path(str(_source(stub, "vdb").find("source").get("file")))  # type: ignore[union-attr]
    data = stub.PeekDomainBlock(pb.PeekDomainBlockRequest(
        name=GUEST, disk="vdb", offset=4096, size=PEEK_MAX)).data
    with path.open("rb") as image:
        image.seek(4096)
        assert data == image.read(PEEK_MAX)
    assert failed(stub.PeekDomainBlock, pb.PeekDomainBlockRequest(
        name=GUEST, disk="vdb", offset=1 << 40, size=16))[0] == C.INVALID_ARGUMENT


@pytest.mark.qemu
def test_memory_peek_reads_the_bios_reset_vector(qemu: tuple[Stub, Path]) -> None:
    stub, _ = qemu
    # SeaBIOS's reset vector at 0xFFFF0: a far jump (0xEA) into the BIOS
    data = stub.PeekDomainMemory(pb.PeekDomainMemoryRequest(
        name=GUEST, address=0xFFFF0, size=16, physical=True), timeout=30).data
    assert len(data) == 16 and data[0] == 0xEA


@pytest.mark.qemu
def test_statistics_and_threshold_on_qemu(qemu: tuple[Stub, Path]) -> None:
    stub, state = qemu
    stats = stub.GetDomainBlockStats(pb.GetDomainBlockStatsRequest(name=GUEST, disk="vdb"))
    values = {p.name: p for p in stats.parameters}
    assert {"rd_operations", "rd_bytes", "wr_bytes", "flush_operations"} <= set(values)
    assert values["rd_bytes"].WhichOneof("value") == "long_value"
    summed = params(stub.GetDomainBlockStats(pb.GetDomainBlockStatsRequest(name=GUEST)))
    assert summed["rd_bytes"] >= values["rd_bytes"].long_value
    memory = {s.tag for s in stub.GetDomainMemoryStats(
        pb.GetDomainMemoryStatsRequest(name=GUEST)).stats}
    assert {pb.MEMORY_STAT_TAG_ACTUAL_BALLOON, pb.MEMORY_STAT_TAG_RSS} <= memory
    stub.SetDomainBlockThreshold(pb.SetDomainBlockThresholdRequest(
        name=GUEST, disk="vdb", threshold_bytes=2 * MIB))
    conn = libvirt.open(EMBED_URI.format(state_dir=state))
    try:
        [(_, record)] = conn.domainListGetStats([conn.lookupByName(GUEST)],
                                                libvirt.VIR_DOMAIN_STATS_BLOCK)
    finally:
        conn.close()
    thresholds = {record[f"block.{i}.name"]: record.get(f"block.{i}.threshold")
                  for i in range(record["block.count"])}
    assert thresholds["vdb"] == 2 * MIB
    assert failed(stub.SetDomainBlockThreshold, pb.SetDomainBlockThresholdRequest(
        name=GUEST, disk="vdz", threshold_bytes=MIB))[0] == C.INVALID_ARGUMENT


@pytest.mark.qemu
def test_cli_block_copy_with_progress_and_pivot_and_a_pull(
        qemu: tuple[Stub, Path], capsys: pytest.CaptureFixture[str]) -> None:
    stub, state = qemu

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(QEMU_SOCKETS[0]), *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("domblklist", GUEST)
    assert code == 0 and "vdf" in out, err
    code, out, err = run("blockjob", GUEST, "vdf")
    assert (code, out.strip()) == (0, "No current block job for vdf"), err
    copy = state / "cli-copy.raw"
    code, out, err = run("blockcopy", GUEST, "vdf", "--dest", str(copy), "--format", "qcow2",
                         "--bandwidth", "8M", "--wait", "--verbose", "--pivot",
                         "--transient-job")
    assert code == 0, err
    assert out.strip() == "Successfully pivoted"
    assert "Block Copy: [" in err and "100%" in err  # the progress bar, to its end
    assert _source(stub, "vdf").find("source").get("file") == str(copy)  # type: ignore[union-attr]
    code, out, err = run("blockpull", GUEST, "vdf", "--wait")
    assert (code, out.strip()) == (0, "Block Pull done"), err
    code, out, err = run("--json", "blockjob", GUEST, "vdf")
    assert json.loads(out)["active"] is False
    assert _running(stub)


@pytest.mark.qemu
def test_cli_blockjob_blockcommit_resize_and_threshold(
        qemu: tuple[Stub, Path], capsys: pytest.CaptureFixture[str]) -> None:
    stub, state = qemu

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(QEMU_SOCKETS[0]), *args])
        out, err = capsys.readouterr()
        return code, out, err

    # a slow copy, throttled and then aborted through blockjob
    code, out, err = run("blockcopy", GUEST, "vdg", "--dest", str(state / "slow.qcow2"),
                         "--format", "qcow2", "--bandwidth", "64K", "--transient-job")
    assert (code, out.strip()) == (0, "Block Copy started"), err
    code, out, err = run("blockjob", GUEST, "vdg", "--bandwidth", "32K")
    assert code == 0, err
    code, out, err = run("--json", "blockjob", GUEST, "vdg", "--info")
    job = json.loads(out)
    assert (job["active"], job["bandwidth_bytes"], job["type"]) == (
        True, 32 * 1024, "BLOCK_JOB_TYPE_COPY")
    code, out, err = run("blockjob", GUEST, "vdg", "--abort")
    assert (code, out.strip()) == (0, "Block job aborted"), err
    _wait_job(stub, "vdg", ready=False)
    assert _source(stub, "vdg").find("source").get("file") == str(  # type: ignore[union-attr]
        state / "commit3-top3.qcow2")
    # commit the middle layer into the base: the job ends by itself
    code, out, err = run("blockcommit", GUEST, "vdg", "--top", str(state / "commit3-top.qcow2"),
                         "--wait", "--verbose")
    assert (code, out.strip()) == (0, "Block Commit done"), err
    chain = [e.get("file") for e in _source(stub, "vdg").iter("source")]
    assert chain == [str(state / "commit3-top3.qcow2"), str(state / "commit3-base.qcow2")]
    code, out, err = run("blockresize", GUEST, "vdg", "16M")
    assert code == 0, err
    assert stub.GetDomainBlockInfo(pb.GetDomainBlockInfoRequest(
        name=GUEST, disk="vdg")).capacity_bytes == 16 * MIB
    code, out, err = run("domblkthreshold", GUEST, "vdg", "4M")
    assert (code, out.strip()) == (0, "Threshold of 'vdg' set to 4194304 bytes"), err
    code, out, err = run("domblkstat", GUEST, "vdg")
    assert code == 0 and out.splitlines()[0].startswith("vdg "), err
