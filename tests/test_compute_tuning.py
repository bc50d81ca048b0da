"""The tuning RPCs of ComputeService: scheduler, memory, block I/O, NUMA and perf
tunables, vCPU, emulator and IOThread pinning, IOThreads, metadata, CPU statistics,
maximum memory and vCPU information.

On a real service over libvirt's test driver (a private node file: "alpha" runs with
2 vCPUs, "beta" is defined here and stays off); bad input on every RPC, which changes
nothing; the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.daemon import Daemon
from tests.conftest import domain_xml, error_of, reason_of, running_service
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.types.v1.typed_params_pb2 import TypedParameter
from virtmesh_client import cli
from virtmesh_client.cli_tuning import cpu_list, cpu_text, kib_size

pytestmark = pytest.mark.timeout(60)
Stub = pb_grpc.ComputeServiceStub
C = grpc.StatusCode
LIVE, CONFIG = pb.Scope(live=True), pb.Scope(config=True)
BOTH = pb.Scope(live=True, config=True)


def failed(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request, 10)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


def params(reply: Any) -> dict[str, Any]:
    return {p.name: getattr(p, p.WhichOneof("value")) for p in reply.parameters}


@pytest.fixture
def beta(stub: Stub) -> str:
    """A defined domain that is not running."""
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("beta")), timeout=10)
    return "beta"


# -- typed-parameter tunables ----------------------------------------------------


def test_scheduler_parameters(stub: Stub) -> None:
    reply = stub.GetDomainSchedulerParameters(
        pb.GetDomainSchedulerParametersRequest(name="alpha"), timeout=10)
    assert reply.scheduler == "fair"
    assert reply.parameters[0].name == "weight"
    assert reply.parameters[0].WhichOneof("value") == "uint_value"  # libvirt's UINT
    stub.SetDomainSchedulerParameters(pb.SetDomainSchedulerParametersRequest(
        name="alpha", parameters=[TypedParameter(name="weight", uint_value=10)]), timeout=10)
    for wrong in (TypedParameter(name="bogus", uint_value=1),
                  TypedParameter(name="weight", string_value="10")):
        assert failed(stub.SetDomainSchedulerParameters, pb.SetDomainSchedulerParametersRequest(
            name="alpha", parameters=[wrong]))[0] == C.INVALID_ARGUMENT


def test_memory_parameters_change_and_read_back(stub: Stub) -> None:
    before = params(stub.GetDomainMemoryParameters(
        pb.GetDomainMemoryParametersRequest(name="alpha"), timeout=10))
    assert {"hard_limit", "soft_limit", "swap_hard_limit"} <= set(before)
    stub.SetDomainMemoryParameters(pb.SetDomainMemoryParametersRequest(
        name="alpha", parameters=[TypedParameter(name="hard_limit", ulong_value=1 << 20)]),
        timeout=10)
    after = params(stub.GetDomainMemoryParameters(
        pb.GetDomainMemoryParametersRequest(name="alpha"), timeout=10))
    assert after == {**before, "hard_limit": 1 << 20}


@pytest.mark.parametrize("parameters, reason", [
    ([], "MISSING_FIELD"),
    ([TypedParameter(name="soft_limit", ulong_value=1), TypedParameter(name="bogus",
                                                                       ulong_value=1)],
     "UNKNOWN_PARAMETER"),
    ([TypedParameter(name="soft_limit", ulong_value=1), TypedParameter(name="hard_limit",
                                                                       string_value="1G")],
     "INVALID_PARAMETER_TYPE"),
    ([TypedParameter(name="soft_limit", ulong_value=1), TypedParameter(name="hard_limit",
                                                                       boolean_value=True)],
     "INVALID_PARAMETER_TYPE"),
    ([TypedParameter(name="soft_limit", ulong_value=1), TypedParameter(name="hard_limit")],
     "MISSING_FIELD"),
    ([TypedParameter(name="soft_limit", ulong_value=1),
      TypedParameter(name="soft_limit", ulong_value=2)], "DUPLICATE_PARAMETER"),
    ([TypedParameter(name="soft_limit", ulong_value=1),
      TypedParameter(name="hard_limit", long_value=-1)], "INVALID_PARAMETER_TYPE"),
])
def test_a_bad_parameter_changes_nothing(stub: Stub, parameters: list[TypedParameter],
                                         reason: str) -> None:
    """soft_limit is fine in each request: the bad one beside it keeps it unchanged."""
    request = pb.GetDomainMemoryParametersRequest(name="alpha")
    before = stub.GetDomainMemoryParameters(request, timeout=10)
    assert failed(stub.SetDomainMemoryParameters, pb.SetDomainMemoryParametersRequest(
        name="alpha", parameters=parameters)) == (C.INVALID_ARGUMENT, reason)
    assert stub.GetDomainMemoryParameters(request, timeout=10) == before


def test_blkio_numa_and_perf_change_and_read_back(stub: Stub) -> None:
    stub.SetDomainBlkioParameters(pb.SetDomainBlkioParametersRequest(
        name="alpha", parameters=[TypedParameter(name="weight", uint_value=500)]), timeout=10)
    blkio = stub.GetDomainBlkioParameters(pb.GetDomainBlkioParametersRequest(name="alpha"),
                                          timeout=10)
    assert params(blkio)["weight"] == 500
    numa = params(stub.GetDomainNumaParameters(
        pb.GetDomainNumaParametersRequest(name="alpha"), timeout=10))
    assert set(numa) == {"numa_mode", "numa_nodeset"}
    stub.SetDomainNumaParameters(pb.SetDomainNumaParametersRequest(
        name="alpha", parameters=[TypedParameter(name="numa_nodeset", string_value="0")]),
        timeout=10)
    stub.SetDomainPerfEvents(pb.SetDomainPerfEventsRequest(
        name="alpha", parameters=[TypedParameter(name="cmt", boolean_value=True)]), timeout=10)
    perf = params(stub.GetDomainPerfEvents(pb.GetDomainPerfEventsRequest(name="alpha"),
                                           timeout=10))
    assert perf["cmt"] is True and perf["mbmt"] is False
    assert failed(stub.SetDomainPerfEvents, pb.SetDomainPerfEventsRequest(
        name="alpha", parameters=[TypedParameter(name="cmt", uint_value=1)])) == \
        (C.INVALID_ARGUMENT, "INVALID_PARAMETER_TYPE")


def test_live_tunables_of_an_inactive_domain(stub: Stub, beta: str) -> None:
    assert failed(stub.GetDomainMemoryParameters, pb.GetDomainMemoryParametersRequest(
        name=beta, scope=LIVE))[0] == C.FAILED_PRECONDITION
    assert failed(stub.GetDomainMemoryParameters, pb.GetDomainMemoryParametersRequest(
        name="alpha", scope=BOTH)) == (C.INVALID_ARGUMENT, "CONFLICTING_FLAGS")


# -- pinning and IOThreads ---------------------------------------------------------


def test_vcpu_and_emulator_pinning(stub: Stub) -> None:
    before = stub.GetDomainVcpuPinInfo(pb.GetDomainVcpuPinInfoRequest(name="alpha"),
                                       timeout=10)
    assert len(before.vcpus) == 2 and len(before.vcpus[0].cpus) > 1
    stub.PinDomainVcpu(pb.PinDomainVcpuRequest(name="alpha", vcpu=0, cpus=[0]), timeout=10)
    after = stub.GetDomainVcpuPinInfo(pb.GetDomainVcpuPinInfoRequest(name="alpha"),
                                      timeout=10)
    assert list(after.vcpus[0].cpus) == [0] and after.vcpus[1] == before.vcpus[1]
    stub.PinDomainEmulator(pb.PinDomainEmulatorRequest(name="alpha", cpus=[1]), timeout=10)
    emulator = stub.GetDomainEmulatorPinInfo(
        pb.GetDomainEmulatorPinInfoRequest(name="alpha"), timeout=10)
    assert list(emulator.affinity.cpus) == [1]


@pytest.mark.parametrize("request_", [
    pb.PinDomainVcpuRequest(name="alpha", vcpu=0, cpus=[]),
    pb.PinDomainVcpuRequest(name="alpha", vcpu=0, cpus=[4096]),
    pb.PinDomainVcpuRequest(name="alpha", vcpu=5, cpus=[0]),
    pb.PinDomainEmulatorRequest(name="alpha", cpus=[]),
    pb.PinDomainIOThreadRequest(name="alpha", id=9, cpus=[0]),
], ids=["no-cpu", "cpu-beyond-host", "vcpu-beyond-domain", "emulator-no-cpu",
        "unknown-iothread"])
def test_bad_pinning_is_refused_and_changes_nothing(stub: Stub, request_: Any) -> None:
    call = getattr(stub, type(request_).__name__.removesuffix("Request"))
    pins = pb.GetDomainVcpuPinInfoRequest(name="alpha")
    before = stub.GetDomainVcpuPinInfo(pins, timeout=10)
    assert failed(call, request_)[0] == C.INVALID_ARGUMENT
    assert stub.GetDomainVcpuPinInfo(pins, timeout=10) == before


def test_iothreads_add_pin_delete(stub: Stub) -> None:
    info = pb.GetDomainIOThreadInfoRequest(name="alpha")
    assert not stub.GetDomainIOThreadInfo(info, timeout=10).iothreads
    stub.AddDomainIOThread(pb.AddDomainIOThreadRequest(name="alpha", id=3), timeout=10)
    stub.PinDomainIOThread(pb.PinDomainIOThreadRequest(name="alpha", id=3, cpus=[1, 2]),
                           timeout=10)
    [thread] = stub.GetDomainIOThreadInfo(info, timeout=10).iothreads
    assert thread.id == 3 and list(thread.affinity.cpus) == [1, 2]
    assert failed(stub.AddDomainIOThread, pb.AddDomainIOThreadRequest(name="alpha", id=0)) \
        == (C.INVALID_ARGUMENT, "MISSING_FIELD")
    stub.DeleteDomainIOThread(pb.DeleteDomainIOThreadRequest(name="alpha", id=3), timeout=10)
    assert not stub.GetDomainIOThreadInfo(info, timeout=10).iothreads
    assert failed(stub.DeleteDomainIOThread,
                  pb.DeleteDomainIOThreadRequest(name="alpha", id=3))[0] == C.INVALID_ARGUMENT


def test_iothread_parameters(stub: Stub) -> None:
    stub.AddDomainIOThread(pb.AddDomainIOThreadRequest(name="alpha", id=3), timeout=10)
    stub.SetDomainIOThreadParameters(pb.SetDomainIOThreadParametersRequest(
        name="alpha", id=3, parameters=[TypedParameter(name="poll_max_ns", ulong_value=10)]),
        timeout=10)
    for wrong, reason in ((TypedParameter(name="bogus", uint_value=1), "UNKNOWN_PARAMETER"),
                          (TypedParameter(name="poll_grow", string_value="2"),
                           "INVALID_PARAMETER_TYPE"),
                          (TypedParameter(name="poll_grow", long_value=-1),
                           "INVALID_PARAMETER_TYPE")):
        assert failed(stub.SetDomainIOThreadParameters, pb.SetDomainIOThreadParametersRequest(
            name="alpha", id=3, parameters=[wrong])) == (C.INVALID_ARGUMENT, reason)
    assert failed(stub.SetDomainIOThreadParameters, pb.SetDomainIOThreadParametersRequest(
        name="alpha", id=9, parameters=[TypedParameter(name="poll_max_ns", ulong_value=1)]
    ))[0] == C.INVALID_ARGUMENT


def test_what_the_test_driver_lacks_is_unimplemented(stub: Stub) -> None:
    assert failed(stub.SetDomainVcpu, pb.SetDomainVcpuRequest(name="alpha", vcpus=[1])) == \
        (C.UNIMPLEMENTED, "VIR_ERR_NO_SUPPORT")
    assert failed(stub.GetDomainSecurityLabels,
                  pb.GetDomainSecurityLabelsRequest(name="alpha"))[0] == C.UNIMPLEMENTED
    assert failed(stub.SetDomainVcpu, pb.SetDomainVcpuRequest(name="alpha")) == \
        (C.INVALID_ARGUMENT, "MISSING_FIELD")


def test_launch_security_is_refused_cleanly_without_sev(stub: Stub) -> None:
    assert failed(stub.GetDomainLaunchSecurityInfo, pb.GetDomainLaunchSecurityInfoRequest(
        name="alpha")) == (C.FAILED_PRECONDITION, "NO_LAUNCH_SECURITY")
    assert failed(stub.SetDomainLaunchSecurityState, pb.SetDomainLaunchSecurityStateRequest(
        name="alpha", secret="c2VjcmV0", secret_header="aGVhZGVy", set_address=0)) == \
        (C.FAILED_PRECONDITION, "NO_LAUNCH_SECURITY")
    assert failed(stub.SetDomainLaunchSecurityState, pb.SetDomainLaunchSecurityStateRequest(
        name="alpha", secret="c2VjcmV0")) == (C.INVALID_ARGUMENT, "MISSING_FIELD")


def test_memory_stats_period(stub: Stub) -> None:
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("gamma").replace(
        "</domain>", "<devices><memballoon model='virtio'/></devices></domain>")), timeout=10)
    stub.SetDomainMemoryStatsPeriod(pb.SetDomainMemoryStatsPeriodRequest(
        name="gamma", period_seconds=5, scope=CONFIG), timeout=10)
    xml = stub.GetDomainXML(pb.GetDomainXMLRequest(name="gamma", inactive=True), timeout=10)
    assert "<stats period='5'/>" in xml.xml
    assert failed(stub.SetDomainMemoryStatsPeriod, pb.SetDomainMemoryStatsPeriodRequest(
        name="alpha", period_seconds=5)) == (C.FAILED_PRECONDITION, "NO_BALLOON")
    assert failed(stub.SetDomainMemoryStatsPeriod, pb.SetDomainMemoryStatsPeriodRequest(
        name="gamma", period_seconds=2**31))[0] == C.INVALID_ARGUMENT


def test_interface_parameters(tmp_path: Path, stub: Stub) -> None:
    """alpha has no interface; test:///default's domain "test" has testnet0 (the value
    set is the one it has: the default driver is shared within the process)."""
    assert failed(stub.GetDomainInterfaceParameters, pb.GetDomainInterfaceParametersRequest(
        name="alpha", device="vnet0"))[0] == C.INVALID_ARGUMENT
    assert failed(stub.GetDomainInterfaceParameters, pb.GetDomainInterfaceParametersRequest(
        name="alpha")) == (C.INVALID_ARGUMENT, "MISSING_FIELD")
    with running_service(tmp_path / "default", "test:///default", grace_period=0.5) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        default = Stub(channel)
        request = pb.GetDomainInterfaceParametersRequest(name="test", device="testnet0")
        before = params(default.GetDomainInterfaceParameters(request, timeout=10))
        assert "inbound.average" in before
        default.SetDomainInterfaceParameters(pb.SetDomainInterfaceParametersRequest(
            name="test", device="testnet0", parameters=[TypedParameter(
                name="inbound.average", uint_value=before["inbound.average"])]), timeout=10)
        assert failed(default.SetDomainInterfaceParameters,
                      pb.SetDomainInterfaceParametersRequest(
                          name="test", device="testnet0",
                          parameters=[TypedParameter(name="bogus", uint_value=1)])) == \
            (C.INVALID_ARGUMENT, "UNKNOWN_PARAMETER")
        assert params(default.GetDomainInterfaceParameters(request, timeout=10)) == before


# -- metadata ---------------------------------------------------------------------


def test_metadata_text_and_element(stub: Stub) -> None:
    missing = pb.GetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_TITLE)
    assert failed(stub.GetDomainMetadata, missing)[0] == C.NOT_FOUND
    stub.SetDomainMetadata(pb.SetDomainMetadataRequest(
        name="alpha", type=pb.METADATA_TYPE_TITLE, value="the first"), timeout=10)
    assert stub.GetDomainMetadata(missing, timeout=10).value == "the first"
    stub.SetDomainMetadata(pb.SetDomainMetadataRequest(
        name="alpha", type=pb.METADATA_TYPE_ELEMENT, value="<app version='2'/>", key="app",
        uri="http://example.org/app/"), timeout=10)
    element = stub.GetDomainMetadata(pb.GetDomainMetadataRequest(
        name="alpha", type=pb.METADATA_TYPE_ELEMENT, uri="http://example.org/app/"),
        timeout=10).value
    assert element == '<app version="2"/>'
    stub.SetDomainMetadata(pb.SetDomainMetadataRequest(   # removed
        name="alpha", type=pb.METADATA_TYPE_TITLE), timeout=10)
    assert failed(stub.GetDomainMetadata, missing)[0] == C.NOT_FOUND


@pytest.mark.parametrize("request_", [
    pb.GetDomainMetadataRequest(name="alpha"),
    pb.GetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_ELEMENT),
    pb.GetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_TITLE, scope=BOTH),
], ids=["no-type", "element-no-uri", "both-scopes"])
def test_bad_metadata_reads_are_refused(stub: Stub, request_: Any) -> None:
    assert failed(stub.GetDomainMetadata, request_)[0] == C.INVALID_ARGUMENT


@pytest.mark.parametrize("rpc", ["GetDomainSchedulerParameters", "GetDomainBlkioParameters",
                                 "GetDomainNumaParameters", "GetDomainPerfEvents",
                                 "GetDomainVcpuPinInfo", "GetDomainEmulatorPinInfo",
                                 "GetDomainIOThreadInfo"])
def test_getters_read_one_scope(stub: Stub, rpc: str) -> None:
    request = getattr(pb, f"{rpc}Request")(name="alpha", scope=BOTH)
    assert failed(getattr(stub, rpc), request) == (C.INVALID_ARGUMENT, "CONFLICTING_FLAGS")


@pytest.mark.parametrize("request_", [
    pb.SetDomainMetadataRequest(name="alpha", value="x"),
    pb.SetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_TITLE, value="a\nb"),
    pb.SetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_ELEMENT, value="<a/>",
                                uri="http://example.org/a/"),
    pb.SetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_ELEMENT, value="<a>",
                                key="a", uri="http://example.org/a/"),
    pb.SetDomainMetadataRequest(name="alpha", type=pb.METADATA_TYPE_ELEMENT,
                                value="<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>", key="a",
                                uri="http://example.org/a/"),
], ids=["no-type", "title-two-lines", "element-no-key", "malformed", "doctype"])
def test_bad_metadata_is_refused_and_changes_nothing(stub: Stub, request_: Any) -> None:
    xml = pb.GetDomainXMLRequest(name="alpha")
    before = stub.GetDomainXML(xml, timeout=10).xml
    assert failed(stub.SetDomainMetadata, request_)[0] == C.INVALID_ARGUMENT
    assert stub.GetDomainXML(xml, timeout=10).xml == before


# -- CPUs and memory -----------------------------------------------------------------


def test_cpu_stats_total_and_per_cpu(stub: Stub, beta: str) -> None:
    reply = stub.GetDomainCpuStats(pb.GetDomainCpuStatsRequest(name="alpha", start_cpu=1,
                                                               cpu_count=1), timeout=10)
    assert params(reply.total)["cpu_time"] > 0 and not reply.total.HasField("cpu")
    assert [cpu.cpu for cpu in reply.cpus] == [1]
    assert "vcpu_time" in params(reply.cpus[0])
    assert not stub.GetDomainCpuStats(pb.GetDomainCpuStatsRequest(name="alpha"),
                                      timeout=10).cpus
    assert failed(stub.GetDomainCpuStats, pb.GetDomainCpuStatsRequest(name=beta))[0] == \
        C.FAILED_PRECONDITION
    assert failed(stub.GetDomainCpuStats, pb.GetDomainCpuStatsRequest(
        name="alpha", start_cpu=4096, cpu_count=1))[0] == C.INVALID_ARGUMENT


def test_max_memory(stub: Stub, beta: str) -> None:
    """GetDomainMaxMemory reads what SetDomainMemory's maximum changes."""
    request = pb.GetDomainMaxMemoryRequest(name=beta)
    assert stub.GetDomainMaxMemory(request, timeout=10).max_memory_kib == 65536
    stub.SetDomainMemory(pb.SetDomainMemoryRequest(name=beta, memory_kib=1 << 20,
                                                   maximum=True), timeout=10)
    assert stub.GetDomainMaxMemory(request, timeout=10).max_memory_kib == 1 << 20


def test_vcpus(stub: Stub, beta: str) -> None:
    reply = stub.GetDomainVcpus(pb.GetDomainVcpusRequest(name="alpha"), timeout=10)
    assert reply.max_vcpus == 2
    assert [vcpu.number for vcpu in reply.vcpus] == [0, 1]
    assert {vcpu.state for vcpu in reply.vcpus} == {pb.VCPU_STATE_RUNNING}
    assert all(vcpu.affinity.cpus for vcpu in reply.vcpus)
    assert failed(stub.GetDomainVcpus, pb.GetDomainVcpusRequest(name=beta))[0] == \
        C.FAILED_PRECONDITION


# -- every RPC --------------------------------------------------------------------------

TUNING_RPCS = [
    "GetDomainSchedulerParameters", "SetDomainSchedulerParameters",
    "GetDomainMemoryParameters", "SetDomainMemoryParameters",
    "GetDomainBlkioParameters", "SetDomainBlkioParameters",
    "GetDomainNumaParameters", "SetDomainNumaParameters",
    "GetDomainPerfEvents", "SetDomainPerfEvents",
    "GetDomainVcpuPinInfo", "PinDomainVcpu", "GetDomainEmulatorPinInfo", "PinDomainEmulator",
    "GetDomainIOThreadInfo", "AddDomainIOThread", "DeleteDomainIOThread", "PinDomainIOThread",
    "GetDomainMetadata", "SetDomainMetadata", "GetDomainCpuStats",
    "GetDomainMaxMemory", "GetDomainVcpus",
    "GetDomainInterfaceParameters", "SetDomainInterfaceParameters", "SetDomainMemoryStatsPeriod",
    "SetDomainIOThreadParameters", "SetDomainVcpu", "GetDomainSecurityLabels",
    "GetDomainLaunchSecurityInfo", "SetDomainLaunchSecurityState",
]
#: what makes each request valid but for its domain
VALID: dict[str, dict[str, Any]] = {
    "SetDomainSchedulerParameters": {"parameters": [TypedParameter(name="weight",
                                                                   uint_value=1)]},
    "SetDomainMemoryParameters": {"parameters": [TypedParameter(name="hard_limit",
                                                                ulong_value=1)]},
    "SetDomainBlkioParameters": {"parameters": [TypedParameter(name="weight", uint_value=1)]},
    "SetDomainNumaParameters": {"parameters": [TypedParameter(name="numa_nodeset",
                                                              string_value="0")]},
    "SetDomainPerfEvents": {"parameters": [TypedParameter(name="cmt", boolean_value=True)]},
    "PinDomainVcpu": {"cpus": [0]}, "PinDomainEmulator": {"cpus": [0]},
    "PinDomainIOThread": {"id": 1, "cpus": [0]}, "AddDomainIOThread": {"id": 1},
    "DeleteDomainIOThread": {"id": 1},
    "GetDomainMetadata": {"type": pb.METADATA_TYPE_TITLE},
    "SetDomainMetadata": {"type": pb.METADATA_TYPE_TITLE, "value": "t"},
    "GetDomainInterfaceParameters": {"device": "vnet0"},
    "SetDomainInterfaceParameters": {"device": "vnet0", "parameters": [
        TypedParameter(name="inbound.average", uint_value=1)]},
    "SetDomainIOThreadParameters": {"id": 1, "parameters": [
        TypedParameter(name="poll_max_ns", ulong_value=1)]},
    "SetDomainVcpu": {"vcpus": [0]},
    "SetDomainLaunchSecurityState": {"secret": "c2VjcmV0", "secret_header": "aGVhZGVy"},
}


def test_the_rpc_list_is_complete() -> None:
    methods = pb.DESCRIPTOR.services_by_name["ComputeService"].methods_by_name
    start = list(methods).index("GetDomainSchedulerParameters")
    assert list(methods)[start:start + len(TUNING_RPCS)] == TUNING_RPCS


@pytest.mark.parametrize("rpc", TUNING_RPCS)
def test_an_unknown_domain_is_not_found(stub: Stub, rpc: str) -> None:
    request = getattr(pb, f"{rpc}Request")(name="nope", **VALID.get(rpc, {}))
    assert failed(getattr(stub, rpc), request) == (C.NOT_FOUND, "VIR_ERR_NO_DOMAIN")


# -- the CLI --------------------------------------------------------------------------


@pytest.fixture
def cli_run(compute: Daemon, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """``virtmesh --socket DIR ARGS…`` against the test's service: (status, out, err)."""
    assert compute.socket_path is not None

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(compute.socket_path.parent), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_cpu_lists() -> None:
    assert cpu_list("0,2-3,7") == [0, 2, 3, 7] and cpu_text([7, 0, 2, 3]) == "0,2-3,7"
    assert kib_size("1G") == 1 << 20 and kib_size("2048") == 2048


def test_cli_memtune_vcpupin_and_setmaxmem(stub: Stub, beta: str, cli_run: Any) -> None:
    code, out, err = cli_run("memtune", "alpha", "--set", "hard_limit=1048576")
    assert code == 0, err
    assert "hard_limit:" in out and "1048576" in out
    code, out, err = cli_run("memtune", "alpha", "--json")
    assert code == 0, err
    assert {"name": "hard_limit", "ulong_value": 1048576} in json.loads(out)["parameters"]
    code, out, err = cli_run("memtune", "alpha", "--set", "bogus=1")
    assert code != 0 and "bogus" in err
    code, out, err = cli_run("memtune", "alpha", "--set", "soft_limit=lots")
    assert code != 0 and "soft_limit" in err
    code, out, err = cli_run("vcpupin", "alpha", "1", "0,2-3")
    assert code == 0, err
    code, out, err = cli_run("vcpupin", "alpha")
    assert out.splitlines()[0].split() == ["VCPU", "CPUS"]
    assert out.splitlines()[2].split() == ["1", "0,2-3"]
    code, out, err = cli_run("--json", "vcpupin", "alpha")
    assert json.loads(out)["vcpus"][1] == {"cpus": [0, 2, 3]}
    code, out, err = cli_run("setmaxmem", beta, "1G", "--config")
    assert code == 0, err
    assert stub.GetDomainMaxMemory(pb.GetDomainMaxMemoryRequest(name=beta),
                                   timeout=10).max_memory_kib == 1 << 20


def test_cli_iothreads_and_metadata(cli_run: Any) -> None:
    assert cli_run("iothreadadd", "alpha", "4")[0] == 0
    assert cli_run("iothreadpin", "alpha", "4", "1-2")[0] == 0
    code, out, err = cli_run("iothreadinfo", "alpha")
    assert out.splitlines()[1].split() == ["4", "1-2"], err
    assert cli_run("metadata", "alpha", "http://example.org/a/", "--prefix", "a",
                   "--set", "<a x='1'/>")[0] == 0
    code, out, err = cli_run("metadata", "alpha", "http://example.org/a/")
    assert out.strip() == '<a x="1"/>', err
    assert cli_run("desc", "alpha", "--title", "--new-desc", "first")[0] == 0
    assert cli_run("desc", "alpha", "--title")[1].strip() == "first"


def test_cli_refusals(cli_run: Any) -> None:
    code, out, err = cli_run("setvcpu", "alpha", "1", "--disable")
    assert code == 1 and "UNIMPLEMENTED" in err
    code, out, err = cli_run("domlaunchsecinfo", "alpha")
    assert code == 1 and "FAILED_PRECONDITION" in err and "SEV" in err
