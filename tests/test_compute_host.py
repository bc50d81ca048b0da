"""The host RPCs of ComputeService: CPU baseline and comparison, CPU models, sysinfo,
hostname, max vCPUs, the node's CPU and memory counters, free memory and pages, page
allocation, KSM parameters, suspend, CPU map, security model, SEV and native
configuration.

On libvirt's test:///default (which has NUMA cells, unlike a private node file) for
what its driver implements, on embedded QEMU (a service process of its own) for the
rest; bad input on every RPC; the read-only identity through the gateway; the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from services.common.config import Config
from services.common.daemon import Daemon
from services.compute import SPEC as COMPUTE
from services.compute.servicer_host import node_suspend_allowed
from services.supervisor import wait_serving
from tests.conftest import Process, error_of, reason_of, running_service, service_process
from tests.test_gateway_authz import AuthzMesh, authz_mesh
from tests.test_hostile_input import CLEAN, hostile_documents
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client import cli
from virtmesh_client.cli_host import cpu_elements, page_size_kib
from virtmesh_client.cli_output import column_matches

pytestmark = pytest.mark.timeout(120)
Stub = pb_grpc.ComputeServiceStub
C = grpc.StatusCode

HASWELL = "<cpu><arch>x86_64</arch><model>Haswell</model><vendor>Intel</vendor></cpu>"
BROADWELL = "<cpu><arch>x86_64</arch><model>Broadwell</model><vendor>Intel</vendor></cpu>"
#: a guest CPU no x86_64 host runs: SSE2 is part of the architecture
NO_SSE2 = ("<cpu mode='custom' match='exact'><model>qemu64</model>"
           "<feature policy='forbid' name='sse2'/></cpu>")
GUEST_XML = ("<domain type='qemu'><name>native</name><memory>65536</memory>"
             "<os><type arch='x86_64'>hvm</type></os></domain>")
#: what libvirt's schema refuses (a negative vCPU count): the sandbox stops it
SCHEMA_INVALID = ("<domain type='qemu'><name>bad</name><memory>65536</memory><vcpu>-1</vcpu>"
                  "<os><type arch='x86_64'>hvm</type></os></domain>")


def code_and_reason(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


def host_cpu(stub: Stub) -> str:
    caps = stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=60).xml
    return cpu_elements(caps)[0]


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Stub]:
    """compute on test:///default: its node has two NUMA cells and eight CPUs."""
    with running_service(tmp_path, "test:///default", grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield Stub(channel)


# -- test:///default -------------------------------------------------------------------


def test_cpu_models_and_baseline(stub: Stub) -> None:
    models = stub.GetCpuModelNames(pb.GetCpuModelNamesRequest(arch="x86_64"), timeout=10).models
    assert {"Haswell", "Broadwell", "qemu64"} <= set(models)
    assert code_and_reason(stub.GetCpuModelNames, pb.GetCpuModelNamesRequest(arch="nope")) == (
        C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    assert code_and_reason(stub.GetCpuModelNames, pb.GetCpuModelNamesRequest()) == (
        C.INVALID_ARGUMENT, "MISSING_FIELD")
    plain = stub.BaselineCpu(pb.BaselineCpuRequest(xml_cpus=[HASWELL, BROADWELL]), timeout=10)
    assert ">Haswell</model>" in plain.xml and "<feature" not in plain.xml
    expanded = stub.BaselineCpu(pb.BaselineCpuRequest(xml_cpus=[HASWELL, BROADWELL],
                                                      expand_features=True), timeout=10)
    assert "<feature policy='require' name='avx2'/>" in expanded.xml


@pytest.mark.parametrize(("request_", "reason"), [
    (pb.BaselineCpuRequest(), "INVALID_CPU_COUNT"),
    (pb.BaselineCpuRequest(xml_cpus=[HASWELL] * 257), "INVALID_CPU_COUNT"),
    (pb.BaselineCpuRequest(xml_cpus=[HASWELL, "<cpux/>"]), "VIR_ERR_XML_ERROR"),
    (pb.BaselineCpuRequest(xml_cpus=["<cpu><model>Haswell</cpu>"]), "VIR_ERR_XML_ERROR"),
    (pb.BaselineCpuRequest(xml_cpus=[
        '<!DOCTYPE cpu [<!ENTITY m "Haswell">]><cpu><model>&m;</model></cpu>']),
     "DOCTYPE_REFUSED"),
    # NUL in any string field: refused by the skeleton (services/common/requests.py)
    (pb.BaselineCpuRequest(xml_cpus=["<cpu>\x00</cpu>"]), "MALFORMED_REQUEST"),
    # libvirt's CPU driver reports an unknown model as an internal error of its parser
    (pb.BaselineCpuRequest(xml_cpus=[HASWELL.replace("Haswell", "Nope")]),
     "VIR_ERR_INTERNAL_ERROR"),
    (pb.BaselineHypervisorCpuRequest(xml_cpus=["<domain/>"]), "VIR_ERR_XML_ERROR"),
    (pb.CompareCpuRequest(), "MISSING_FIELD"),
    (pb.CompareCpuRequest(xml="<cpu"), "VIR_ERR_XML_ERROR"),
    (pb.CompareHypervisorCpuRequest(xml="<capabilities/>"), "VIR_ERR_XML_ERROR"),
], ids=lambda value: type(value).__name__ if not isinstance(value, str) else value)
def test_cpu_documents_are_checked_first(stub: Stub, request_: Any, reason: str) -> None:
    method = getattr(stub, type(request_).__name__.removesuffix("Request"))
    assert code_and_reason(method, request_) == (C.INVALID_ARGUMENT, reason)


def test_identity_of_the_host(stub: Stub) -> None:
    assert stub.GetHostname(pb.GetHostnameRequest(), timeout=10).hostname == \
        socket.gethostname()
    sysinfo = stub.GetSysinfo(pb.GetSysinfoRequest(), timeout=10).xml
    assert sysinfo.startswith("<sysinfo type='smbios'>")
    assert stub.GetMaxVcpus(pb.GetMaxVcpusRequest(), timeout=10).max_vcpus == 32
    security = stub.GetNodeSecurityModel(pb.GetNodeSecurityModelRequest(), timeout=10)
    assert (security.model, security.doi) == ("testSecurity", "")
    cpu_map = stub.GetNodeCpuMap(pb.GetNodeCpuMapRequest(), timeout=10)
    assert (cpu_map.cpus, list(cpu_map.online)) == (8, [0, 2, 4])


def test_node_cpu_stats(stub: Stub) -> None:
    total = stub.GetNodeCpuStats(pb.GetNodeCpuStatsRequest(), timeout=10)
    assert total.kernel_ns == total.raw["kernel"] > 0
    assert (total.user_ns, total.idle_ns, total.iowait_ns) == (
        total.raw["user"], total.raw["idle"], total.raw["iowait"])
    assert stub.GetNodeCpuStats(pb.GetNodeCpuStatsRequest(cpu=0), timeout=10).user_ns > 0
    assert code_and_reason(stub.GetNodeCpuStats, pb.GetNodeCpuStatsRequest(cpu=2**31)) == (
        C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")


def test_free_memory_and_cells(stub: Stub) -> None:
    total = stub.GetNodeFreeMemory(pb.GetNodeFreeMemoryRequest(), timeout=10).free_bytes
    cells = stub.GetCellsFreeMemory(pb.GetCellsFreeMemoryRequest(), timeout=10).cells
    assert [cell.cell for cell in cells] == [0, 1]
    assert total > 0 and all(cell.free_bytes > 0 for cell in cells)
    second = stub.GetCellsFreeMemory(pb.GetCellsFreeMemoryRequest(start_cell=1), timeout=10)
    assert list(second.cells) == [cells[1]]
    first = stub.GetCellsFreeMemory(pb.GetCellsFreeMemoryRequest(max_cells=1), timeout=10)
    assert list(first.cells) == [cells[0]]
    for request in (pb.GetCellsFreeMemoryRequest(start_cell=2),):
        assert code_and_reason(stub.GetCellsFreeMemory, request) == (
            C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")


@pytest.mark.parametrize("request_", [
    pb.GetNodeFreePagesRequest(page_sizes_kib=[3]),
    pb.GetNodeFreePagesRequest(start_cell=2),
    pb.GetNodeFreePagesRequest(start_cell=1, cell_count=2),
    pb.AllocNodePagesRequest(pages=[pb.PageCount(page_size_kib=2048)], start_cell=5,
                             mode=pb.PAGE_ALLOCATION_MODE_ADD),
    pb.AllocNodePagesRequest(pages=[pb.PageCount(page_size_kib=3)],
                             mode=pb.PAGE_ALLOCATION_MODE_ADD),
], ids=lambda request: type(request).__name__)
def test_pages_of_cells_and_sizes_the_host_lacks(stub: Stub, request_: Any) -> None:
    """libvirt itself would call a cell out of range an internal error."""
    method = getattr(stub, type(request_).__name__.removesuffix("Request"))
    assert code_and_reason(method, request_) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")


def test_page_allocation_needs_pages_and_a_mode(stub: Stub) -> None:
    page = pb.PageCount(page_size_kib=2048, count=0)
    assert code_and_reason(stub.AllocNodePages, pb.AllocNodePagesRequest(pages=[page])) == (
        C.INVALID_ARGUMENT, "MISSING_FIELD")
    assert code_and_reason(stub.AllocNodePages, pb.AllocNodePagesRequest(
        mode=pb.PAGE_ALLOCATION_MODE_SET)) == (C.INVALID_ARGUMENT, "MISSING_FIELD")
    # valid: the test driver has no such call
    assert code_and_reason(stub.AllocNodePages, pb.AllocNodePagesRequest(
        pages=[page], mode=pb.PAGE_ALLOCATION_MODE_ADD)) == (C.UNIMPLEMENTED,
                                                             "VIR_ERR_NO_SUPPORT")


def test_what_the_test_driver_lacks_is_unimplemented(stub: Stub) -> None:
    for method, request in (
            (stub.BaselineHypervisorCpu, pb.BaselineHypervisorCpuRequest(xml_cpus=[HASWELL])),
            (stub.CompareCpu, pb.CompareCpuRequest(xml=HASWELL)),
            (stub.CompareHypervisorCpu, pb.CompareHypervisorCpuRequest(xml=HASWELL)),
            (stub.GetNodeMemoryStats, pb.GetNodeMemoryStatsRequest()),
            (stub.GetNodeMemoryParameters, pb.GetNodeMemoryParametersRequest()),
            (stub.SetNodeMemoryParameters, pb.SetNodeMemoryParametersRequest(
                shm_pages_to_scan=100)),
            (stub.GetNodeSevInfo, pb.GetNodeSevInfoRequest()),
            (stub.ConvertNativeToDomainXML, pb.ConvertNativeToDomainXMLRequest(
                config="qemu-system-x86_64 -m 64")),
            (stub.ConvertDomainXMLToNative, pb.ConvertDomainXMLToNativeRequest(
                xml=GUEST_XML))):
        assert code_and_reason(method, request) == (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT"), \
            method


def test_memory_parameters_need_one_to_set(stub: Stub) -> None:
    assert code_and_reason(stub.SetNodeMemoryParameters,
                           pb.SetNodeMemoryParametersRequest()) == (C.INVALID_ARGUMENT,
                                                                    "MISSING_FIELD")


@pytest.mark.parametrize(("request_", "reason"), [
    (pb.ConvertNativeToDomainXMLRequest(), "MISSING_FIELD"),
    (pb.ConvertNativeToDomainXMLRequest(config="qemu-system-x86_64\x00-m 64"),
     "MALFORMED_REQUEST"),
    (pb.ConvertNativeToDomainXMLRequest(config="x" * (4 * 1024 * 1024 + 1)),
     "DOCUMENT_TOO_LARGE"),
    (pb.ConvertNativeToDomainXMLRequest(format=cast(Any, 7), config="qemu-system-x86_64"),
     "INVALID_FORMAT"),
    (pb.ConvertDomainXMLToNativeRequest(), "MISSING_FIELD"),
    (pb.ConvertDomainXMLToNativeRequest(xml="<domain"), "VIR_ERR_XML_ERROR"),
    (pb.ConvertDomainXMLToNativeRequest(xml="<network/>"), "VIR_ERR_XML_ERROR"),
    (pb.ConvertDomainXMLToNativeRequest(xml=SCHEMA_INVALID), "VIR_ERR_XML_INVALID_SCHEMA"),
], ids=lambda value: type(value).__name__ if not isinstance(value, str) else value)
def test_native_input_is_checked_first(stub: Stub, request_: Any, reason: str) -> None:
    method = getattr(stub, type(request_).__name__.removesuffix("Request"))
    assert code_and_reason(method, request_) == (C.INVALID_ARGUMENT, reason)


# -- suspending the host ---------------------------------------------------------------


def test_suspend_is_refused_unless_allowed(stub: Stub, tmp_path: Path) -> None:
    assert not node_suspend_allowed(Config(service="compute"))
    valid = pb.SuspendNodeRequest(target=pb.NODE_SUSPEND_TARGET_MEM, duration_seconds=60)
    for request in (valid, pb.SuspendNodeRequest()):
        error = error_of(stub.SuspendNode, request)
        assert (error.code(), reason_of(error)) == (  # type: ignore[attr-defined]
            C.FAILED_PRECONDITION, "NODE_SUSPEND_DISABLED")
        assert "allow_node_suspend" in str(error.details())  # type: ignore[attr-defined]
    # allowed: checked, then passed to libvirt (the test driver has no such call, so
    # nothing sleeps; never try this on a real driver)
    config = Config(service="compute", state_dir=tmp_path / "allowed", uri="test:///default",
                    grace_period=0.5, allow_node_suspend=True)
    daemon = Daemon(COMPUTE, config)
    daemon.start(connect_wait=10)
    try:
        with grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
            allowed = Stub(channel)
            assert code_and_reason(allowed.SuspendNode, pb.SuspendNodeRequest(
                duration_seconds=60)) == (C.INVALID_ARGUMENT, "MISSING_FIELD")
            assert code_and_reason(allowed.SuspendNode, pb.SuspendNodeRequest(
                target=pb.NODE_SUSPEND_TARGET_DISK, duration_seconds=59)) == (
                C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
            assert code_and_reason(allowed.SuspendNode, valid) == (C.UNIMPLEMENTED,
                                                                   "VIR_ERR_NO_SUPPORT")
    finally:
        daemon.stop()


# -- embedded QEMU ---------------------------------------------------------------------


@dataclasses.dataclass
class QemuHost:
    state: Path
    process: Process

    @property
    def run_dir(self) -> Path:
        return self.state / "run"

    @property
    def target(self) -> str:
        return f"unix:{self.run_dir / 'compute.sock'}"


@pytest.fixture(scope="module")
def qemu() -> Iterator[QemuHost]:
    """compute on embedded QEMU, as its own process (one embedded root per process)."""
    state = Path(tempfile.mkdtemp(prefix="vh-", dir="/tmp"))
    process = service_process(state, "compute", "--uri",
                              "qemu:///embed?root={state_dir}/qemu").start()
    try:
        wait_serving(f"unix:{state / 'run' / 'compute.sock'}", "", 60)
        yield QemuHost(state, process)
    finally:
        process.stop(30)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def qemu_stub(qemu: QemuHost) -> Iterator[Stub]:
    with grpc.insecure_channel(qemu.target) as channel:
        yield Stub(channel)


def _meminfo(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    assert found
    return int(found.group(1))


def _numa_cells() -> int:
    return len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or 1


@pytest.mark.qemu
def test_qemu_cpu_baseline_and_compare(qemu_stub: Stub) -> None:
    stub, cpu = qemu_stub, host_cpu(qemu_stub)
    for baseline in (stub.BaselineCpu(pb.BaselineCpuRequest(xml_cpus=[cpu]), timeout=30),
                     stub.BaselineHypervisorCpu(pb.BaselineHypervisorCpuRequest(
                         xml_cpus=[cpu], arch="x86_64", virt_type="qemu"), timeout=60)):
        assert baseline.xml.startswith("<cpu mode='custom' match='exact'>")
        assert "<model fallback='forbid'>" in baseline.xml
    same = stub.CompareCpu(pb.CompareCpuRequest(xml=cpu), timeout=30)
    assert same.result == pb.CPU_COMPARE_RESULT_IDENTICAL
    incompatible = stub.CompareCpu(pb.CompareCpuRequest(xml=NO_SSE2, validate=True), timeout=30)
    assert incompatible.result == pb.CPU_COMPARE_RESULT_INCOMPATIBLE
    assert code_and_reason(stub.CompareCpu, pb.CompareCpuRequest(
        xml=NO_SSE2, fail_incompatible=True)) == (C.FAILED_PRECONDITION,
                                                  "VIR_ERR_CPU_INCOMPATIBLE")
    hypervisor = stub.CompareHypervisorCpu(pb.CompareHypervisorCpuRequest(
        xml=NO_SSE2, arch="x86_64", virt_type="qemu"), timeout=60)
    assert hypervisor.result == pb.CPU_COMPARE_RESULT_INCOMPATIBLE
    # host CPU XML has features without a policy: the schema refuses it when asked
    assert code_and_reason(stub.CompareCpu, pb.CompareCpuRequest(xml=cpu, validate=True)) == (
        C.INVALID_ARGUMENT, "VIR_ERR_XML_INVALID_SCHEMA")
    for method, request in (
            (stub.CompareCpu, pb.CompareCpuRequest(xml=NO_SSE2.replace("qemu64", "Nope"))),
            (stub.CompareHypervisorCpu, pb.CompareHypervisorCpuRequest(xml=NO_SSE2,
                                                                       arch="bogus")),
            (stub.BaselineHypervisorCpu, pb.BaselineHypervisorCpuRequest(xml_cpus=[cpu],
                                                                         arch="bogus"))):
        assert code_and_reason(method, request)[0] == C.INVALID_ARGUMENT


@pytest.mark.qemu
def test_qemu_host_identity(qemu_stub: Stub) -> None:
    stub = qemu_stub
    assert stub.GetHostname(pb.GetHostnameRequest(), timeout=10).hostname == \
        socket.gethostname()
    assert "Haswell" in stub.GetCpuModelNames(pb.GetCpuModelNamesRequest(arch="x86_64"),
                                              timeout=10).models
    assert stub.GetMaxVcpus(pb.GetMaxVcpusRequest(virt_type="qemu"), timeout=10).max_vcpus > 1
    assert code_and_reason(stub.GetMaxVcpus, pb.GetMaxVcpusRequest(virt_type="bogus")) == (
        C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    security = stub.GetNodeSecurityModel(pb.GetNodeSecurityModelRequest(), timeout=10)
    assert security.model in ("none", "selinux", "apparmor", "dac")
    cpu_map = stub.GetNodeCpuMap(pb.GetNodeCpuMapRequest(), timeout=10)
    online = Path("/sys/devices/system/cpu/online").read_text().strip()
    assert cpu_map.cpus >= len(cpu_map.online) > 0 and cpu_map.online[0] == int(online[0])
    try:
        sysinfo = stub.GetSysinfo(pb.GetSysinfoRequest(), timeout=10).xml
        assert sysinfo.startswith("<sysinfo type='smbios'>")
    except grpc.RpcError as error:  # a host (or container) without SMBIOS tables
        assert (error.code(), reason_of(error)) == (  # type: ignore[attr-defined]
            C.UNIMPLEMENTED, "VIR_ERR_CONFIG_UNSUPPORTED")


@pytest.mark.qemu
def test_qemu_sev_info_says_whether_there_is_sev(qemu_stub: Stub) -> None:
    caps = qemu_stub.GetDomainCapabilities(pb.GetDomainCapabilitiesRequest(), timeout=60).xml
    if "<sev supported='yes'>" in caps:
        assert qemu_stub.GetNodeSevInfo(pb.GetNodeSevInfoRequest(), timeout=10).cbitpos > 0
    else:
        assert code_and_reason(qemu_stub.GetNodeSevInfo, pb.GetNodeSevInfoRequest()) == (
            C.UNIMPLEMENTED, "VIR_ERR_OPERATION_UNSUPPORTED")


@pytest.mark.qemu
def test_qemu_node_counters(qemu_stub: Stub) -> None:
    stub = qemu_stub
    cpus = stub.GetNodeCpuMap(pb.GetNodeCpuMapRequest(), timeout=10).cpus
    one = stub.GetNodeCpuStats(pb.GetNodeCpuStatsRequest(cpu=0), timeout=10)
    total = stub.GetNodeCpuStats(pb.GetNodeCpuStatsRequest(), timeout=10)
    assert 0 < one.user_ns <= total.user_ns and total.idle_ns > 0
    assert code_and_reason(stub.GetNodeCpuStats, pb.GetNodeCpuStatsRequest(cpu=cpus + 64)) == (
        C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    memory = stub.GetNodeMemoryStats(pb.GetNodeMemoryStatsRequest(), timeout=10)
    assert memory.total_kib == _meminfo("MemTotal") and 0 < memory.free_kib < memory.total_kib
    assert memory.raw["cached"] == memory.cached_kib
    cell = stub.GetNodeMemoryStats(pb.GetNodeMemoryStatsRequest(cell=0), timeout=10)
    assert 0 < cell.total_kib <= memory.total_kib
    assert code_and_reason(stub.GetNodeMemoryStats, pb.GetNodeMemoryStatsRequest(
        cell=_numa_cells())) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")


@pytest.mark.qemu
def test_qemu_free_memory_and_pages(qemu_stub: Stub) -> None:
    stub = qemu_stub
    cells = stub.GetCellsFreeMemory(pb.GetCellsFreeMemoryRequest(), timeout=10).cells
    assert [cell.cell for cell in cells] == list(range(_numa_cells()))
    free = stub.GetNodeFreeMemory(pb.GetNodeFreeMemoryRequest(), timeout=10).free_bytes
    assert free > 0 and sum(cell.free_bytes for cell in cells) > free // 2
    pages = stub.GetNodeFreePages(pb.GetNodeFreePagesRequest(), timeout=30).cells
    assert [cell.cell for cell in pages] == list(range(_numa_cells()))
    sizes = [page.page_size_kib for page in pages[0].pages]
    assert sizes[0] == 4 and pages[0].pages[0].count > 0  # every size the host offers
    only = stub.GetNodeFreePages(pb.GetNodeFreePagesRequest(page_sizes_kib=[4], cell_count=1),
                                 timeout=30).cells
    assert [[page.page_size_kib for page in cell.pages] for cell in only] == [[4]]
    assert code_and_reason(stub.GetNodeFreePages, pb.GetNodeFreePagesRequest(
        page_sizes_kib=[3])) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")
    assert code_and_reason(stub.GetCellsFreeMemory, pb.GetCellsFreeMemoryRequest(
        start_cell=_numa_cells())) == (C.INVALID_ARGUMENT, "VIR_ERR_INVALID_ARG")


@pytest.mark.qemu
def test_qemu_page_allocation_adds_nothing_when_asked_for_nothing(qemu_stub: Stub) -> None:
    """Adding no 2 MiB pages writes the pool's own size back: harmless, yet the whole
    way through libvirt to the kernel."""
    pool = Path("/proc/sys/vm/nr_hugepages")
    before = pool.read_text()
    changed = qemu_stub.AllocNodePages(pb.AllocNodePagesRequest(
        pages=[pb.PageCount(page_size_kib=2048, count=0)], mode=pb.PAGE_ALLOCATION_MODE_ADD),
        timeout=30).cells_changed
    assert changed == _numa_cells() and pool.read_text() == before


@pytest.mark.qemu
def test_qemu_memory_parameters(qemu_stub: Stub) -> None:
    ksm = Path("/sys/kernel/mm/ksm")
    if not ksm.is_dir():
        pytest.skip("the kernel has no KSM")
    current = qemu_stub.GetNodeMemoryParameters(pb.GetNodeMemoryParametersRequest(),
                                                timeout=10).parameters
    assert current.shm_pages_to_scan == int((ksm / "pages_to_scan").read_text())
    assert current.shm_sleep_millisecs == int((ksm / "sleep_millisecs").read_text())
    assert current.shm_full_scans == int((ksm / "full_scans").read_text())
    # writes the value the kernel has: changes nothing, yet goes all the way through
    after = qemu_stub.SetNodeMemoryParameters(pb.SetNodeMemoryParametersRequest(
        shm_pages_to_scan=current.shm_pages_to_scan), timeout=10).parameters
    assert after.shm_pages_to_scan == current.shm_pages_to_scan
    assert after.shm_merge_across_nodes == current.shm_merge_across_nodes


@pytest.mark.qemu
def test_qemu_native_configuration(qemu_stub: Stub) -> None:
    stub = qemu_stub
    config = stub.ConvertDomainXMLToNative(pb.ConvertDomainXMLToNativeRequest(
        format=pb.NATIVE_CONFIG_FORMAT_QEMU_ARGV, xml=GUEST_XML), timeout=60).config
    assert "qemu-system-x86_64" in config and "-name guest=native" in config
    assert stub.ListDomains(pb.ListDomainsRequest(), timeout=10).domains == []  # not defined
    assert code_and_reason(stub.ConvertDomainXMLToNative, pb.ConvertDomainXMLToNativeRequest(
        xml=SCHEMA_INVALID)) == (C.INVALID_ARGUMENT, "VIR_ERR_XML_INVALID_SCHEMA")
    # libvirt 9.0's QEMU driver no longer parses QEMU command lines
    assert code_and_reason(stub.ConvertNativeToDomainXML, pb.ConvertNativeToDomainXMLRequest(
        config=config)) == (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT")


#: every host RPC that takes a document, and how a document goes in it
DOCUMENT_INPUTS = [
    (pb.BaselineCpuRequest, "cpu", lambda xml: {"xml_cpus": [xml]}),
    (pb.BaselineHypervisorCpuRequest, "cpu", lambda xml: {"xml_cpus": [HASWELL, xml]}),
    (pb.CompareCpuRequest, "cpu", lambda xml: {"xml": xml}),
    (pb.CompareHypervisorCpuRequest, "cpu", lambda xml: {"xml": xml}),
    (pb.ConvertDomainXMLToNativeRequest, "domain", lambda xml: {"xml": xml}),
]


@pytest.mark.qemu
def test_qemu_hostile_documents_are_refused(qemu: QemuHost, qemu_stub: Stub) -> None:
    """The define paths' hostile documents (tests/test_hostile_input.py) on every host
    RPC that takes one, where the embedded driver would parse them in the service:
    each a clean refusal within a second, and the service process still alive."""
    failures = []
    for request_type, root, fields in DOCUMENT_INPUTS:
        method = getattr(qemu_stub, request_type.__name__.removesuffix("Request"))
        for case, xml in hostile_documents(root).items():
            try:
                method(request_type(**fields(xml)), timeout=1.0)
                failures.append(f"{request_type.__name__} {case}: accepted")
            except grpc.RpcError as error:
                if error.code() not in CLEAN:  # type: ignore[attr-defined]
                    failures.append(f"{request_type.__name__} {case}: {error.code()} "  # type: ignore[attr-defined]
                                    f"{error.details()}")  # type: ignore[attr-defined]
    assert not failures, "\n".join(failures)
    assert qemu.process.popen is not None and qemu.process.popen.poll() is None
    assert qemu_stub.GetHostname(pb.GetHostnameRequest(), timeout=10).hostname


@pytest.mark.qemu
def test_qemu_suspend_is_refused(qemu_stub: Stub) -> None:
    """The default: never reaches libvirt, which would suspend this host."""
    assert code_and_reason(qemu_stub.SuspendNode, pb.SuspendNodeRequest(
        target=pb.NODE_SUSPEND_TARGET_MEM, duration_seconds=60)) == (
        C.FAILED_PRECONDITION, "NODE_SUSPEND_DISABLED")


# -- through the gateway ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzMesh]:
    with authz_mesh(tmp_path_factory.mktemp("host-authz")) as running:
        yield running


READS = [
    ("GetHostname", pb.GetHostnameRequest()),
    ("GetNodeCpuStats", pb.GetNodeCpuStatsRequest()),
    ("GetNodeCpuMap", pb.GetNodeCpuMapRequest()),
    ("GetCpuModelNames", pb.GetCpuModelNamesRequest(arch="x86_64")),
    ("BaselineCpu", pb.BaselineCpuRequest(xml_cpus=[HASWELL])),
    ("GetMaxVcpus", pb.GetMaxVcpusRequest()),
    ("GetSysinfo", pb.GetSysinfoRequest()),
    ("GetNodeSecurityModel", pb.GetNodeSecurityModelRequest()),
]
WRITES = [
    ("SetNodeMemoryParameters", pb.SetNodeMemoryParametersRequest(shm_pages_to_scan=100),
     C.UNIMPLEMENTED),
    ("AllocNodePages", pb.AllocNodePagesRequest(
        pages=[pb.PageCount(page_size_kib=4)], mode=pb.PAGE_ALLOCATION_MODE_ADD),
     C.INVALID_ARGUMENT),  # the private node file has no NUMA cells
    ("SuspendNode", pb.SuspendNodeRequest(target=pb.NODE_SUSPEND_TARGET_MEM,
                                          duration_seconds=60), C.FAILED_PRECONDITION),
    ("BaselineHypervisorCpu", pb.BaselineHypervisorCpuRequest(xml_cpus=[HASWELL]),
     C.UNIMPLEMENTED),
    ("CompareHypervisorCpu", pb.CompareHypervisorCpuRequest(xml=HASWELL), C.UNIMPLEMENTED),
    ("ConvertDomainXMLToNative", pb.ConvertDomainXMLToNativeRequest(xml=GUEST_XML),
     C.UNIMPLEMENTED),
    ("ConvertNativeToDomainXML", pb.ConvertNativeToDomainXMLRequest(config="qemu"),
     C.UNIMPLEMENTED),
]


@pytest.mark.parametrize(("method", "request_"), READS, ids=[name for name, _ in READS])
def test_readonly_identity_reads_the_host(gateway: AuthzMesh, method: str,
                                          request_: Any) -> None:
    with gateway.channel("readonly") as readonly, gateway.channel() as admin:
        answer = getattr(Stub(readonly), method)(request_, timeout=10)
        assert answer == getattr(Stub(admin), method)(request_, timeout=10)


@pytest.mark.parametrize(("method", "request_", "admin_code"), WRITES,
                         ids=[name for name, *_ in WRITES])
def test_readonly_identity_cannot_change_the_host(gateway: AuthzMesh, method: str,
                                                  request_: Any,
                                                  admin_code: grpc.StatusCode) -> None:
    with gateway.channel("readonly") as readonly, gateway.channel() as admin:
        error = error_of(getattr(Stub(readonly), method), request_)
        assert error.code() == C.PERMISSION_DENIED  # type: ignore[attr-defined]
        # the admin gets through to the service, which answers for itself
        assert error_of(getattr(Stub(admin), method), request_).code() == admin_code  # type: ignore[attr-defined]


# -- the CLI ----------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_parsing_helpers() -> None:
    assert [page_size_kib(text) for text in ("4", "2048", "2M", "2MiB", "1G")] == [
        4, 2048, 2048, 2048, 1024 * 1024]
    assert cpu_elements(
        f"<?xml version='1.0'?><capabilities><host>{HASWELL}<topology><cells><cell><cpus>"
        "<cpu id='0'/></cpus></cell></cells></topology></host></capabilities>\n"
        f"<domain>{BROADWELL}</domain>") == [HASWELL, BROADWELL]


def test_cli_on_the_test_driver(run_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    socket_dir = ["--socket", str(run_dir)]
    assert run(capsys, *socket_dir, "hostname")[:2] == (0, f"{socket.gethostname()}\n")
    assert run(capsys, *socket_dir, "maxvcpus")[:2] == (0, "32\n")
    assert "Haswell\n" in run(capsys, *socket_dir, "cpu-models", "x86_64")[1]
    assert run(capsys, *socket_dir, "sysinfo")[1].startswith("<sysinfo")
    assert [line.split(":")[1].strip() for line in
            run(capsys, *socket_dir, "nodecpumap")[1].splitlines()] == ["8", "3", "y-y-y---"]
    stats = json.loads(run(capsys, *socket_dir, "--json", "nodecpustats", "--cpu", "1")[1])
    assert stats["kernel_ns"] == stats["raw"]["kernel"] > 2**32  # a number, not a string
    assert run(capsys, *socket_dir, "freecell")[1].startswith("Total: ")
    table = run(capsys, *socket_dir, "freecell", "--all")[1].splitlines()
    assert table[0].split() == ["CELL", "FREE"] and len(table) == 3
    assert all(column_matches(column, pb.CellFreeMemory.DESCRIPTOR) for column in table[0].split())
    cells = json.loads(run(capsys, *socket_dir, "--json", "freecell", "--cellno", "1")[1])
    assert [cell["cell"] for cell in cells["cells"]] == [1]
    cpus = tmp_path / "cpus.xml"
    cpus.write_text(f"<capabilities><host>{HASWELL}</host></capabilities>\n"
                    f"<capabilities><host>{BROADWELL}</host></capabilities>\n")
    assert ">Haswell</model>" in run(
        capsys, *socket_dir, "cpu-baseline", str(cpus))[1]
    code, _, err = run(capsys, *socket_dir, "cpu-compare", str(cpus))
    assert code == 1 and "UNIMPLEMENTED" in err
    code, _, err = run(capsys, *socket_dir, "nodesuspend", "mem", "60")
    assert code == 1 and "FAILED_PRECONDITION" in err and "allow_node_suspend" in err
    empty = tmp_path / "empty.xml"
    empty.write_text("<domain/>")
    code, _, err = run(capsys, *socket_dir, "cpu-baseline", str(empty))
    assert code == 2 and "no <cpu> element" in err


@pytest.mark.qemu
def test_cli_on_qemu(qemu: QemuHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    socket_dir = ["--socket", str(qemu.run_dir)]
    memory = json.loads(run(capsys, *socket_dir, "--json", "nodememstats")[1])
    assert memory["total_kib"] == _meminfo("MemTotal")
    assert run(capsys, *socket_dir, "nodememstats", "--cell", "0")[1].startswith("Total:")
    pages = run(capsys, *socket_dir, "freepages", "--pagesize", "2M")[1].splitlines()
    assert pages[0].split() == ["CELL", "PAGES_PAGE_SIZE", "PAGES_COUNT"]
    assert all(column_matches(column, pb.CellPages.DESCRIPTOR) for column in pages[0].split())
    assert pages[1].split()[1:3] == ["2.0", "MiB"]
    code, out, _ = run(capsys, *socket_dir, "allocpages", "2M", "0", "--add")
    assert code == 0 and out.startswith("0 pages of 2.0 MiB added to")
    tune = run(capsys, *socket_dir, "node-memory-tune")[1]
    assert re.search(r"^shm_pages_to_scan:\s+\d+$", tune, re.M)
    domain = tmp_path / "guest.xml"
    domain.write_text(GUEST_XML)
    code, out, _ = run(capsys, *socket_dir, "domxml-to-native", "qemu-argv", str(domain))
    assert code == 0 and "-name guest=native" in out
    code, out, _ = run(capsys, *socket_dir, "cpu-compare", str(domain))
    assert code == 2  # a domain without <cpu>
    caps = tmp_path / "caps.xml"
    caps.write_text(run(capsys, *socket_dir, "capabilities")[1])
    code, out, _ = run(capsys, *socket_dir, "cpu-compare", str(caps))
    assert (code, out) == (0, f"CPU described in {caps} is identical to the host CPU\n")
    # capabilities' NUMA topology lists <cpu id=…/> entries too: not CPU descriptions
    code, out, _ = run(capsys, *socket_dir, "cpu-baseline", str(caps))
    assert code == 0 and out.startswith("<cpu mode='custom' match='exact'>")
