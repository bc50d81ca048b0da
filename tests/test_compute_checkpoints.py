"""Checkpoints, backups and the snapshot tree.

On a real service over libvirt's test driver (a private node file: "alpha" runs):
a snapshot tree (current, parent, children, descendants, libvirt's list filters,
topological order and paging), checkpoints (create, list, parent, children, XML,
delete with its flags), and bad input on every RPC, which changes nothing; the CLI.
On embedded QEMU with the example guest (TCG) and a qcow2 disk: a checkpoint of the
running guest, a push-mode backup to a file of the save directory observed as a job
to completion (the file is a qcow2 image then), its XML while it runs, and an
incremental backup from the checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from guest import example
from tests.conftest import error_of, reason_of, running_service
from tests.test_e2e_qemu import BOOTED, EMBED_URI, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client.cli_checkpoints import snapshot_xml

pytestmark = pytest.mark.timeout(60)
Stub = pb_grpc.ComputeServiceStub
C = grpc.StatusCode
#: a value SnapshotKind does not have
UNKNOWN_KIND: Any = 7


def failed(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request, 10)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


def snap(stub: Stub, name: str, description: str = "") -> pb.Snapshot:
    xml = (f"<domainsnapshot><name>{name}</name><description>{description}</description>"
           "</domainsnapshot>")
    return stub.CreateSnapshot(pb.CreateSnapshotRequest(name="alpha", xml=xml),
                               timeout=10).snapshot


def names(items: Any) -> list[str]:
    return [item.name for item in items]


@pytest.fixture
def tree(stub: Stub) -> Stub:
    """Snapshots of alpha: one <- two <- three, and one <- four (current)."""
    snap(stub, "one")
    snap(stub, "two")
    snap(stub, "three")
    stub.RevertToSnapshot(pb.RevertToSnapshotRequest(name="alpha", snapshot="one"), timeout=10)
    snap(stub, "four", "the branch")
    return stub


# -- snapshots ---------------------------------------------------------------------


def test_current_snapshot_and_none(stub: Stub) -> None:
    assert failed(stub.GetCurrentSnapshot, pb.GetCurrentSnapshotRequest(name="alpha")) == (
        C.NOT_FOUND, "NO_CURRENT_SNAPSHOT")
    error = error_of(stub.GetCurrentSnapshot, pb.GetCurrentSnapshotRequest(name="alpha"), 10)
    assert "has no current snapshot" in str(error.details())
    snap(stub, "one")
    current = stub.GetCurrentSnapshot(pb.GetCurrentSnapshotRequest(name="alpha"),
                                      timeout=10).snapshot
    assert (current.name, current.current, current.has_metadata) == ("one", True, True)


def test_snapshot_tree_parent_and_children(tree: Stub) -> None:
    stub = tree
    assert stub.GetCurrentSnapshot(pb.GetCurrentSnapshotRequest(name="alpha"),
                                   timeout=10).snapshot.name == "four"
    parent = stub.GetSnapshotParent(pb.GetSnapshotParentRequest(name="alpha", snapshot="three"),
                                    timeout=10).snapshot
    assert parent.name == "two" and parent.parent == "one"
    assert failed(stub.GetSnapshotParent, pb.GetSnapshotParentRequest(
        name="alpha", snapshot="one")) == (C.NOT_FOUND, "VIR_ERR_NO_DOMAIN_SNAPSHOT")

    def children(descendants: bool = False, **flt: Any) -> list[str]:
        return names(stub.ListSnapshotChildren(pb.ListSnapshotChildrenRequest(
            name="alpha", snapshot="one", descendants=descendants,
            filter=pb.SnapshotFilter(**flt)), timeout=10).snapshots)

    assert children() == ["four", "two"]
    assert children(descendants=True) == ["four", "three", "two"]
    assert children(descendants=True, leaves=True) == ["four", "three"]
    assert children(descendants=True, leaves=False) == ["two"]
    topo = children(descendants=True, topological=True)
    assert sorted(topo) == ["four", "three", "two"] and topo.index("two") < topo.index("three")


def test_list_snapshots_filters(tree: Stub) -> None:
    stub = tree

    def listed(roots: bool = False, **flt: Any) -> list[str]:
        return names(stub.ListSnapshots(pb.ListSnapshotsRequest(
            name="alpha", roots=roots, filter=pb.SnapshotFilter(**flt)), timeout=10).snapshots)

    assert listed() == ["four", "one", "three", "two"]
    assert listed(roots=True) == ["one"]
    assert listed(leaves=True) == ["four", "three"]
    assert listed(leaves=False) == ["one", "two"]
    assert listed(metadata=True) == ["four", "one", "three", "two"]
    assert listed(metadata=False) == []
    # alpha ran for each: its snapshots are of a running domain, with memory, internal
    assert listed(kinds=[pb.SNAPSHOT_KIND_ACTIVE]) == ["four", "one", "three", "two"]
    assert listed(kinds=[pb.SNAPSHOT_KIND_INACTIVE, pb.SNAPSHOT_KIND_DISK_ONLY]) == []
    assert listed(external=False) == ["four", "one", "three", "two"]
    assert listed(external=True) == []
    topo = listed(topological=True)
    assert topo[0] == "one" and topo.index("two") < topo.index("three")
    summary = stub.GetSnapshot(pb.GetSnapshotRequest(name="alpha", snapshot="four"),
                               timeout=10).snapshot
    assert (summary.parent, summary.description, summary.has_metadata) == (
        "one", "the branch", True)


def test_snapshot_lists_page_in_their_order(tree: Stub) -> None:
    stub = tree
    for topological in (False, True):
        seen: list[str] = []
        token = ""
        while True:
            reply = stub.ListSnapshots(pb.ListSnapshotsRequest(
                name="alpha", page_size=1, page_token=token,
                filter=pb.SnapshotFilter(topological=topological)), timeout=10)
            seen += names(reply.snapshots)
            token = reply.next_page_token
            if not token:
                break
        whole = names(stub.ListSnapshots(pb.ListSnapshotsRequest(
            name="alpha", filter=pb.SnapshotFilter(topological=topological)),
            timeout=10).snapshots)
        assert seen == whole and len(seen) == 4
    # a token is good only with the filters it was made with
    token = stub.ListSnapshots(pb.ListSnapshotsRequest(name="alpha", page_size=1),
                               timeout=10).next_page_token
    assert failed(stub.ListSnapshots, pb.ListSnapshotsRequest(
        name="alpha", page_size=1, page_token=token, roots=True))[0] == C.INVALID_ARGUMENT


def test_create_snapshot_flags_reach_libvirt(stub: Stub) -> None:
    def create(name: str, **flags: bool) -> Any:
        return stub.CreateSnapshot(pb.CreateSnapshotRequest(
            name="alpha", xml=f"<domainsnapshot><name>{name}</name></domainsnapshot>",
            **flags), timeout=10).snapshot

    assert create("live", live=True).state == "running"
    # the test driver refuses disk-only snapshots: the flag reached it; nothing is made
    assert failed(stub.CreateSnapshot, pb.CreateSnapshotRequest(
        name="alpha", xml="<domainsnapshot><name>disk</name></domainsnapshot>",
        disk_only=True))[0] == C.UNIMPLEMENTED
    # halt: the snapshot is taken, then the domain stops
    assert create("halted", halt=True).state == "running"
    state = stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10).domain.state
    assert state == pb.DOMAIN_STATE_SHUTOFF
    assert names(stub.ListSnapshots(pb.ListSnapshotsRequest(name="alpha"),
                                    timeout=10).snapshots) == ["halted", "live"]


# -- checkpoints -------------------------------------------------------------------


GAMMA = """<domain type='test'><name>gamma</name><memory>65536</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os><devices><disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/><source file='/nonexistent/gamma.qcow2'/>
  <target dev='vda' bus='virtio'/></disk></devices></domain>"""


@pytest.fixture
def gamma(stub: Stub) -> Stub:
    """A running domain with a disk (checkpoints need one; alpha has none)."""
    stub.DefineDomain(pb.DefineDomainRequest(xml=GAMMA), timeout=10)
    stub.StartDomain(pb.StartDomainRequest(name="gamma"), timeout=10)
    return stub


def checkpoint(stub: Stub, name: str, description: str = "") -> pb.Checkpoint:
    xml = (f"<domaincheckpoint><name>{name}</name><description>{description}</description>"
           "</domaincheckpoint>")
    return stub.CreateCheckpoint(pb.CreateCheckpointRequest(name="gamma", xml=xml),
                                 timeout=10).checkpoint


def test_checkpoints_create_list_parent_children_xml_delete(gamma: Stub) -> None:
    stub = gamma
    first = checkpoint(stub, "c1", "first")
    assert (first.name, first.parent, first.description) == ("c1", "", "first")
    assert first.create_time.seconds > 0 and "<domaincheckpoint>" in first.xml
    checkpoint(stub, "c2")
    checkpoint(stub, "c3")

    def listed(**request: Any) -> list[str]:
        return names(stub.ListCheckpoints(pb.ListCheckpointsRequest(name="gamma", **request),
                                          timeout=10).checkpoints)

    assert listed() == ["c1", "c2", "c3"]
    assert listed(roots=True) == ["c1"]
    assert listed(leaves=True) == ["c3"]
    assert listed(leaves=False) == ["c1", "c2"]
    assert listed(topological=True) == ["c1", "c2", "c3"]
    assert listed(page_size=2) == ["c1", "c2"]
    parent = stub.GetCheckpointParent(pb.GetCheckpointParentRequest(
        name="gamma", checkpoint="c3"), timeout=10).checkpoint
    assert (parent.name, parent.parent) == ("c2", "c1")
    assert failed(stub.GetCheckpointParent, pb.GetCheckpointParentRequest(
        name="gamma", checkpoint="c1"))[0] == C.NOT_FOUND

    def children(descendants: bool) -> list[str]:
        return names(stub.ListCheckpointChildren(pb.ListCheckpointChildrenRequest(
            name="gamma", checkpoint="c1", descendants=descendants), timeout=10).checkpoints)

    assert children(False) == ["c2"]
    assert children(True) == ["c2", "c3"]
    full = stub.GetCheckpoint(pb.GetCheckpointRequest(name="gamma", checkpoint="c2"),
                              timeout=10).checkpoint
    bare = stub.GetCheckpoint(pb.GetCheckpointRequest(name="gamma", checkpoint="c2",
                                                      no_domain=True), timeout=10).checkpoint
    assert "<domain" in full.xml.replace("<domaincheckpoint", "")
    assert "<domain" not in bare.xml.replace("<domaincheckpoint", "")
    # children_only leaves c1 itself; then c1 alone goes
    stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(name="gamma", checkpoint="c1",
                                                     children_only=True), timeout=10)
    assert listed() == ["c1"]
    stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(name="gamma", checkpoint="c1",
                                                     metadata_only=True), timeout=10)
    assert listed() == []


def test_redefining_a_checkpoint_restores_its_metadata(gamma: Stub) -> None:
    stub = gamma
    xml = stub.GetCheckpoint(pb.GetCheckpointRequest(name="gamma", checkpoint=checkpoint(
        stub, "keep", "kept").name), timeout=10).checkpoint.xml
    stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(name="gamma", checkpoint="keep",
                                                     metadata_only=True), timeout=10)
    again = stub.CreateCheckpoint(pb.CreateCheckpointRequest(name="gamma", xml=xml,
                                                             redefine=True), timeout=10)
    assert (again.checkpoint.name, again.checkpoint.description) == ("keep", "kept")


def test_backups_are_unimplemented_on_the_test_driver(stub: Stub) -> None:
    assert failed(stub.GetBackupXML, pb.GetBackupXMLRequest(name="alpha"))[0] == (
        C.UNIMPLEMENTED)


# -- bad input ---------------------------------------------------------------------


def bad_requests(save_dir: Path) -> list[tuple[str, Any, grpc.StatusCode]]:
    cp = "<domaincheckpoint><name>x</name></domaincheckpoint>"
    disk = ("<domainbackup><disks><disk name='vda'><target file='{}'/></disk></disks>"
            "</domainbackup>")
    inside = str(save_dir / "b.qcow2")
    return [
        # unknown domain
        ("GetCurrentSnapshot", pb.GetCurrentSnapshotRequest(name="nope"), C.NOT_FOUND),
        ("GetSnapshotParent", pb.GetSnapshotParentRequest(name="nope", snapshot="one"),
         C.NOT_FOUND),
        ("ListSnapshotChildren", pb.ListSnapshotChildrenRequest(name="nope", snapshot="one"),
         C.NOT_FOUND),
        ("CreateCheckpoint", pb.CreateCheckpointRequest(name="nope"), C.NOT_FOUND),
        ("ListCheckpoints", pb.ListCheckpointsRequest(name="nope"), C.NOT_FOUND),
        ("GetCheckpoint", pb.GetCheckpointRequest(name="nope", checkpoint="x"), C.NOT_FOUND),
        ("GetCheckpointParent", pb.GetCheckpointParentRequest(name="nope", checkpoint="x"),
         C.NOT_FOUND),
        ("ListCheckpointChildren", pb.ListCheckpointChildrenRequest(name="nope",
                                                                    checkpoint="x"),
         C.NOT_FOUND),
        ("DeleteCheckpoint", pb.DeleteCheckpointRequest(name="nope", checkpoint="x"),
         C.NOT_FOUND),
        ("BeginBackup", pb.BeginBackupRequest(name="nope", backup_xml=disk.format(inside)),
         C.NOT_FOUND),
        ("GetBackupXML", pb.GetBackupXMLRequest(name="nope"), C.NOT_FOUND),
        # unknown snapshot or checkpoint
        ("GetSnapshotParent", pb.GetSnapshotParentRequest(name="alpha", snapshot="nope"),
         C.NOT_FOUND),
        ("ListSnapshotChildren", pb.ListSnapshotChildrenRequest(name="alpha", snapshot="nope"),
         C.NOT_FOUND),
        ("GetCheckpoint", pb.GetCheckpointRequest(name="gamma", checkpoint="nope"),
         C.NOT_FOUND),
        ("GetCheckpointParent", pb.GetCheckpointParentRequest(name="gamma", checkpoint="nope"),
         C.NOT_FOUND),
        ("ListCheckpointChildren", pb.ListCheckpointChildrenRequest(name="gamma",
                                                                    checkpoint="nope"),
         C.NOT_FOUND),
        ("DeleteCheckpoint", pb.DeleteCheckpointRequest(name="gamma", checkpoint="nope"),
         C.NOT_FOUND),
        # invalid arguments
        ("GetSnapshotParent", pb.GetSnapshotParentRequest(name="alpha"), C.INVALID_ARGUMENT),
        ("GetCheckpoint", pb.GetCheckpointRequest(name="gamma", checkpoint="a\0b"),
         C.INVALID_ARGUMENT),
        ("ListCheckpoints", pb.ListCheckpointsRequest(name="gamma", page_token="junk"),
         C.INVALID_ARGUMENT),
        ("ListSnapshotChildren", pb.ListSnapshotChildrenRequest(name="alpha"),
         C.INVALID_ARGUMENT),
        ("ListSnapshots", pb.ListSnapshotsRequest(name="alpha", filter=pb.SnapshotFilter(
            kinds=[pb.SNAPSHOT_KIND_UNSPECIFIED])), C.INVALID_ARGUMENT),
        ("ListSnapshotChildren", pb.ListSnapshotChildrenRequest(
            name="alpha", snapshot="one", filter=pb.SnapshotFilter(kinds=[UNKNOWN_KIND])),
         C.INVALID_ARGUMENT),
        ("ListCheckpointChildren", pb.ListCheckpointChildrenRequest(
            name="gamma", checkpoint="keep", page_size=-1), C.INVALID_ARGUMENT),
        ("CreateCheckpoint", pb.CreateCheckpointRequest(name="gamma", xml="<domaincheckpoint>"),
         C.INVALID_ARGUMENT),
        ("CreateCheckpoint", pb.CreateCheckpointRequest(name="gamma", xml="<domain/>"),
         C.INVALID_ARGUMENT),
        ("CreateCheckpoint", pb.CreateCheckpointRequest(  # against libvirt's schema
            name="gamma", xml="<domaincheckpoint><bogus/></domaincheckpoint>"),
         C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(
            name="gamma", backup_xml=disk.format(inside),
            checkpoint_xml="<domaincheckpoint><bogus/></domaincheckpoint>"),
         C.INVALID_ARGUMENT),
        ("CreateCheckpoint", pb.CreateCheckpointRequest(name="gamma", xml=cp,
                                                        redefine_validate=True),
         C.INVALID_ARGUMENT),
        ("CreateCheckpoint", pb.CreateCheckpointRequest(name="gamma", redefine=True),
         C.INVALID_ARGUMENT),
        ("DeleteCheckpoint", pb.DeleteCheckpointRequest(name="gamma", checkpoint="keep",
                                                        children=True, children_only=True),
         C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma"), C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma", backup_xml="<domainsnapshot/>"),
         C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma",
                                              backup_xml="<domainbackup mode='pull'/>"),
         C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma", backup_xml=disk.format("/tmp/b")),
         C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma", backup_xml=disk.format(
            f"{save_dir}/../b")), C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma", backup_xml=disk.format(inside),
                                              checkpoint_xml="<domaincheckpoint"),
         C.INVALID_ARGUMENT),
        ("BeginBackup", pb.BeginBackupRequest(name="gamma", backup_xml=disk.format(inside),
                                              reuse_external=True), C.NOT_FOUND),
    ]


def test_bad_input_is_refused_and_nothing_is_half_done(gamma: Stub, compute: Any) -> None:
    stub = gamma
    snap(stub, "one")
    checkpoint(stub, "keep")
    save_dir = compute.config.save_path
    before = (stub.ListSnapshots(pb.ListSnapshotsRequest(name="alpha"), timeout=10),
              stub.ListCheckpoints(pb.ListCheckpointsRequest(name="gamma"), timeout=10))
    for method, request, code in bad_requests(save_dir):
        assert failed(getattr(stub, method), request)[0] == code, (method, request)
    after = (stub.ListSnapshots(pb.ListSnapshotsRequest(name="alpha"), timeout=10),
             stub.ListCheckpoints(pb.ListCheckpointsRequest(name="gamma"), timeout=10))
    assert after == before
    assert list(save_dir.iterdir()) == []


def test_a_backup_of_a_domain_that_is_not_running_is_refused(gamma: Stub,
                                                             compute: Any) -> None:
    stub = gamma
    stub.DestroyDomain(pb.DestroyDomainRequest(name="gamma"), timeout=10)
    target = compute.config.save_path / "b.qcow2"
    assert failed(stub.BeginBackup, pb.BeginBackupRequest(
        name="gamma", backup_xml=f"<domainbackup><disks><disk name='vda'><target "
        f"file='{target}'/></disk></disks></domainbackup>"))[0] == C.FAILED_PRECONDITION


# -- the CLI -----------------------------------------------------------------------


def test_snapshot_xml_is_built_safely() -> None:
    xml = snapshot_xml("a<b", "it's & more", disk_only=True,
                       diskspecs=["vda,snapshot=external,file=/x/y.qcow2"])
    root = ET.fromstring(xml)
    assert root.findtext("name") == "a<b"
    assert root.findtext("description") == "it's & more"
    assert root.find("memory").get("snapshot") == "no"  # type: ignore[union-attr]
    disk = root.find("disks/disk")
    assert disk is not None and disk.attrib == {"name": "vda", "snapshot": "external"}
    assert disk.find("source").get("file") == "/x/y.qcow2"  # type: ignore[union-attr]


def test_cli_snapshots_and_checkpoints(run_dir: Path, virtmesh: Any) -> None:
    base = ("--socket", str(run_dir))
    assert virtmesh(*base, "checkpoint-create-as", "test", "k1")[0] == 0
    assert virtmesh(*base, "checkpoint-create-as", "test", "k2", "--description", "d")[0] == 0
    code, out, _ = virtmesh(*base, "checkpoint-list", "test", "--name")
    assert (code, out.split()) == (0, ["k1", "k2"])
    code, out, _ = virtmesh(*base, "checkpoint-parent", "test", "k2")
    assert (code, out.strip()) == (0, "k1")
    code, out, _ = virtmesh(*base, "checkpoint-dumpxml", "test", "k2", "--no-domain")
    assert code == 0 and ET.fromstring(out).findtext("description") == "d"
    code, out, err = virtmesh(*base, "checkpoint-delete", "test", "k1", "--children")
    assert code == 0, err
    code, out, _ = virtmesh(*base, "checkpoint-list", "test", "--name")
    assert (code, out.split()) == (0, [])
    code, _, err = virtmesh(*base, "checkpoint-parent", "test", "nope")
    assert code == 1 and "NOT_FOUND" in err
    assert virtmesh(*base, "snapshot-create-as", "test", "s1", "--description", "first")[0] == 0
    assert virtmesh(*base, "snapshot-create-as", "test", "s2")[0] == 0
    code, out, _ = virtmesh(*base, "snapshot-current", "test", "--name")
    assert (code, out.strip()) == (0, "s2")
    code, out, _ = virtmesh(*base, "snapshot-parent", "test", "s2")
    assert (code, out.strip()) == (0, "s1")
    code, out, _ = virtmesh(*base, "snapshot-list", "test", "--tree")
    assert code == 0 and out.splitlines()[0] == "s1" and "s2" in out.splitlines()[1]
    code, out, _ = virtmesh(*base, "snapshot-list", "test", "--roots", "--json")
    assert code == 0 and [s["name"] for s in json.loads(out)["snapshots"]] == ["s1"]
    code, out, _ = virtmesh(*base, "snapshot-list", "test", "--from", "s1", "--name")
    assert (code, out.split()) == (0, ["s2"])
    code, out, _ = virtmesh(*base, "snapshot-dumpxml", "test", "s1")
    assert code == 0 and ET.fromstring(out).findtext("description") == "first"
    code, _, err = virtmesh(*base, "snapshot-delete", "test", "s1", "--children")
    assert code == 0, err


# -- embedded QEMU -----------------------------------------------------------------

GUEST = "ckpt"
#: MiB written into the data disk before the guest starts
FILL_MIB = 384


def _guest_xml(state: Path) -> str:
    """The example guest with a qcow2 data disk (vdb): checkpoints and backups need
    qcow2 images for their dirty bitmaps."""
    image = state / f"{GUEST}-data.qcow2"
    image.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "512M"], check=True)
    # data to copy, so that a full backup lasts long enough to be seen under way
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {FILL_MIB}M", str(image)],
                   check=True, capture_output=True)
    disk = f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{image}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <memballoon model='none'/>"""
    return example.render(GUEST, state, "qemu").replace("<memballoon model='none'/>", disk)


class Qemu:
    def __init__(self, stub: Stub, save_dir: Path) -> None:
        self.stub = stub
        self.save_dir = save_dir


@pytest.fixture(scope="module")
def qemu(in_process_qemu_state: Path) -> Iterator[Qemu]:
    state = in_process_qemu_state
    with running_service(state, EMBED_URI, grace_period=0.5,
                         guests_on_exit="destroy") as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        stub.CreateDomain(pb.CreateDomainRequest(xml=_guest_xml(state)), timeout=60)
        log = state / "guest" / f"{GUEST}.console.log"
        wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"), 120,
                 "the guest to boot")
        yield Qemu(stub, daemon.config.save_path)


def backup_xml(target: Path, incremental: str = "") -> str:
    since = f"<incremental>{incremental}</incremental>" if incremental else ""
    return (f"<domainbackup mode='push'>{since}<disks><disk name='vdb' type='file'>"
            f"<target file='{target}'/><driver type='qcow2'/></disk></disks></domainbackup>")


def run_backup(stub: Stub, request: pb.BeginBackupRequest, observe: bool = True) -> str:
    """Begin the backup; its XML while it runs (``observe``: a backup too short to
    catch has none); wait for the job to end and check it completed."""
    stub.BeginBackup(request, timeout=30)
    seen = stub.GetBackupXML(pb.GetBackupXMLRequest(name=GUEST), timeout=10).xml if observe else ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stub.GetDomainJobInfo(pb.GetDomainJobInfoRequest(name=GUEST), timeout=10).job
        if job.type == pb.JOB_TYPE_NONE:
            break
        assert job.operation == pb.JOB_OPERATION_BACKUP
        time.sleep(0.05)
    done = stub.GetDomainJobInfo(pb.GetDomainJobInfoRequest(name=GUEST, completed=True),
                                 timeout=10).job
    assert done.operation == pb.JOB_OPERATION_BACKUP
    assert done.type == pb.JOB_TYPE_COMPLETED, done
    return seen


def disk_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


def image_format(path: Path) -> str:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                          capture_output=True, text=True, check=True).stdout
    return str(json.loads(info)["format"])


@pytest.mark.qemu
@pytest.mark.timeout(400)
def test_checkpoints_and_backups_of_a_running_guest(qemu: Qemu) -> None:
    stub = qemu.stub
    full, incremental = qemu.save_dir / "full.qcow2", qemu.save_dir / "incr.qcow2"
    try:
        # a full backup that creates checkpoint c1 as it starts
        seen = run_backup(stub, pb.BeginBackupRequest(
            name=GUEST, backup_xml=backup_xml(full),
            checkpoint_xml="<domaincheckpoint><name>c1</name><disks><disk name='vdb'/>"
            "</disks></domaincheckpoint>"))
        assert image_format(full) == "qcow2"
        backup = ET.fromstring(seen)
        assert backup.get("mode") == "push"
        assert backup.find(f"disks/disk[@name='vdb']/target[@file='{full}']") is not None
        assert disk_bytes(full) >= FILL_MIB << 20  # the data was copied
        c1 = stub.GetCheckpoint(pb.GetCheckpointRequest(name=GUEST, checkpoint="c1",
                                                        size=True), timeout=10).checkpoint
        assert [(d.name, d.checkpoint) for d in c1.disks if d.name == "vdb"] == [
            ("vdb", "bitmap")]
        # a checkpoint of its own, child of c1
        c2 = stub.CreateCheckpoint(pb.CreateCheckpointRequest(
            name=GUEST, xml="<domaincheckpoint><name>c2</name><disks><disk name='vdb'/>"
            "</disks></domaincheckpoint>"), timeout=30).checkpoint
        assert c2.parent == "c1"
        assert names(stub.ListCheckpoints(pb.ListCheckpointsRequest(name=GUEST),
                                          timeout=10).checkpoints) == ["c1", "c2"]
        assert names(stub.ListCheckpointChildren(pb.ListCheckpointChildrenRequest(
            name=GUEST, checkpoint="c1"), timeout=10).checkpoints) == ["c2"]
        assert stub.GetCheckpointParent(pb.GetCheckpointParentRequest(
            name=GUEST, checkpoint="c2"), timeout=10).checkpoint.name == "c1"
        # an incremental backup: what changed since c1
        run_backup(stub, pb.BeginBackupRequest(
            name=GUEST, backup_xml=backup_xml(incremental, "c1")), observe=False)
        assert image_format(incremental) == "qcow2"
        assert disk_bytes(incremental) < disk_bytes(full) // 4  # only what changed since c1
        # a target that exists is refused; nothing starts
        assert failed(stub.BeginBackup, pb.BeginBackupRequest(
            name=GUEST, backup_xml=backup_xml(full))) == (C.ALREADY_EXISTS, "FILE_EXISTS")
        assert failed(stub.GetBackupXML, pb.GetBackupXMLRequest(name=GUEST)) == (
            C.NOT_FOUND, "VIR_ERR_NO_DOMAIN_BACKUP")
        stub.DeleteCheckpoint(pb.DeleteCheckpointRequest(name=GUEST, checkpoint="c1",
                                                         children=True), timeout=30)
        assert names(stub.ListCheckpoints(pb.ListCheckpointsRequest(name=GUEST),
                                          timeout=10).checkpoints) == []
    finally:
        for path in (full, incremental):
            path.unlink(missing_ok=True)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_a_backup_is_aborted_as_the_domain_job(qemu: Qemu) -> None:
    stub = qemu.stub
    target = qemu.save_dir / "aborted.qcow2"
    try:
        stub.BeginBackup(pb.BeginBackupRequest(name=GUEST, backup_xml=backup_xml(target)),
                         timeout=30)
        stub.AbortDomainJob(pb.AbortDomainJobRequest(name=GUEST), timeout=30)
        wait_for(lambda: stub.GetDomainJobInfo(pb.GetDomainJobInfoRequest(name=GUEST),
                                               timeout=10).job.type == pb.JOB_TYPE_NONE,
                 60, "the backup job to end")
        done = stub.GetDomainJobInfo(pb.GetDomainJobInfoRequest(name=GUEST, completed=True),
                                     timeout=10).job
        assert done.operation == pb.JOB_OPERATION_BACKUP
        assert done.type in (pb.JOB_TYPE_CANCELLED, pb.JOB_TYPE_FAILED), done
        assert stub.GetDomain(pb.GetDomainRequest(name=GUEST),
                              timeout=10).domain.state == pb.DOMAIN_STATE_RUNNING
        assert not target.exists()  # libvirt removes the file it made
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_cli_backup_begin_waits_for_the_backup(qemu: Qemu, virtmesh: Any) -> None:
    target = qemu.save_dir / "cli.qcow2"
    socket = str(qemu.save_dir.parent / "run")
    try:
        code, out, err = virtmesh("--socket", socket, "backup-begin", GUEST,
                                  "--target", f"vdb={target}", "--wait")
        assert (code, out.strip()) == (0, "Backup completed"), err
        assert image_format(target) == "qcow2"
        code, _, err = virtmesh("--socket", socket, "backup-begin", GUEST,
                                "--target", f"vdb={target}")
        assert code == 1 and "ALREADY_EXISTS" in err
        code, _, err = virtmesh("--socket", socket, "backup-begin", GUEST)
        assert code == 2 and "--target" in err
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_a_snapshot_without_metadata_is_described_by_its_name(qemu: Qemu) -> None:
    stub = qemu.stub
    # the guest's vdb goes on in the overlay: it lives as long as the guest
    overlay = qemu.save_dir.parent / f"{GUEST}-overlay.qcow2"
    overlay.unlink(missing_ok=True)
    reply = stub.CreateSnapshot(pb.CreateSnapshotRequest(
        name=GUEST, xml=snapshot_xml("nometa", "", disk_only=True, diskspecs=[
            f"vdb,snapshot=external,file={overlay}"]), disk_only=True, no_metadata=True,
        atomic=True), timeout=60).snapshot
    assert (reply.name, reply.has_metadata) == ("nometa", False)
    assert overlay.exists()
    assert names(stub.ListSnapshots(pb.ListSnapshotsRequest(name=GUEST),
                                    timeout=10).snapshots) == []
    assert failed(stub.GetCurrentSnapshot, pb.GetCurrentSnapshotRequest(name=GUEST)) == (
        C.NOT_FOUND, "NO_CURRENT_SNAPSHOT")
