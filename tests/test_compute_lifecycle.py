"""The lifecycle-extra RPCs of ComputeService: guest power management, renaming,
NMIs, process signals, lifecycle actions, libvirt's messages, vCPU counts, dirty
rates, GetDomain's ``updated`` and AbortDomainJob's ``postcopy``; and their CLI.

On a real service over libvirt's test driver (a private node file: "alpha" runs with
2 vCPUs, "beta" is defined here and stays off) for what that driver implements, and
bad input on every RPC, which changes nothing. On the embedded QEMU driver with the
example TCG guest (its guest agent answering, S3 allowed) for what the test driver
lacks: suspend to RAM and wake-up, NMIs, libvirt's taint messages, the guest's vCPU
count, the dirty rate, and what QEMU refuses (process signals).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import libvirt_qemu
import pytest

from guest import example
from services.common.daemon import Daemon
from services.compute import convert
from tests.conftest import CliRun, domain_xml, error_of, reason_of, running_service
from tests.test_e2e_qemu import BOOTED, EMBED_URI, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client import cli
from virtmesh_client.cli_lifecycle import process_signal
from virtmesh_client.cli_output import parse_kib

pytestmark = pytest.mark.timeout(60)
Stub = pb_grpc.ComputeServiceStub
C = grpc.StatusCode
LIVE, CONFIG = pb.Scope(live=True), pb.Scope(config=True)


def failed(call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, str]:
    error = error_of(call, request, 10)
    return error.code(), reason_of(error)  # type: ignore[attr-defined]


def summary(stub: Stub, name: str) -> Any:
    return stub.GetDomain(pb.GetDomainRequest(name=name), timeout=10).domain


def inactive_xml(stub: Stub, name: str) -> str:
    return stub.GetDomainXML(pb.GetDomainXMLRequest(name=name, inactive=True),
                             timeout=10).xml


def vcpu_count(stub: Stub, name: str, **fields: Any) -> int:
    return stub.GetDomainVcpuCount(pb.GetDomainVcpuCountRequest(name=name, **fields),
                                   timeout=10).count


@pytest.fixture
def beta(stub: Stub) -> str:
    """A defined domain that is not running."""
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("beta")), timeout=10)
    return "beta"


def node_state(stub: Stub) -> list[Any]:
    """Every domain's summary and inactive XML: what a refused call must not change."""
    seen = []
    for domain in stub.ListDomains(pb.ListDomainsRequest(), timeout=10).domains:
        domain.ClearField("cpu_time_ns")
        seen.append((domain, inactive_xml(stub, domain.name)))
    return seen


# -- the test driver -------------------------------------------------------------

#: this module's RPCs, in the order the service declares them
LIFECYCLE_RPCS = [
    "PmSuspendDomain", "PmWakeupDomain", "RenameDomain", "InjectDomainNmi",
    "SendDomainProcessSignal", "SetDomainLifecycleAction", "GetDomainMessages",
    "GetDomainVcpuCount", "StartDomainDirtyRateCalc",
]
#: what makes each request valid but for its domain
VALID: dict[str, dict[str, Any]] = {
    "PmSuspendDomain": {"target": pb.PM_SUSPEND_TARGET_MEM},
    "RenameDomain": {"new_name": "omega"},
    "SendDomainProcessSignal": {"pid": 1, "signal": pb.PROCESS_SIGNAL_TERM},
    "SetDomainLifecycleAction": {"type": pb.LIFECYCLE_TYPE_CRASH,
                                 "action": pb.LIFECYCLE_ACTION_DESTROY},
}


def test_the_rpc_list_is_complete() -> None:
    methods = list(pb.DESCRIPTOR.services_by_name["ComputeService"].methods_by_name)
    start = methods.index(LIFECYCLE_RPCS[0])
    assert methods[start:start + len(LIFECYCLE_RPCS)] == LIFECYCLE_RPCS


@pytest.mark.parametrize("rpc", LIFECYCLE_RPCS)
def test_an_unknown_domain_is_not_found(stub: Stub, rpc: str) -> None:
    request = getattr(pb, f"{rpc}Request")(name="nope", **VALID.get(rpc, {}))
    assert failed(getattr(stub, rpc), request) == (C.NOT_FOUND, "VIR_ERR_NO_DOMAIN")



def test_rename_an_inactive_domain(stub: Stub, beta: str) -> None:
    uuid = summary(stub, beta).uuid
    reply = stub.RenameDomain(pb.RenameDomainRequest(name=beta, new_name="gamma"), timeout=10)
    assert (reply.domain.name, reply.domain.uuid) == ("gamma", uuid)
    assert summary(stub, uuid).name == "gamma"
    assert "<name>gamma</name>" in inactive_xml(stub, "gamma")
    assert failed(stub.GetDomain, pb.GetDomainRequest(name=beta))[0] == C.NOT_FOUND


def test_rename_refusals_change_nothing(stub: Stub, beta: str) -> None:
    before = node_state(stub)
    for request, code in [
        (pb.RenameDomainRequest(name="alpha", new_name="omega"), C.FAILED_PRECONDITION),
        (pb.RenameDomainRequest(name="nope", new_name="omega"), C.NOT_FOUND),
        (pb.RenameDomainRequest(name=beta, new_name="alpha"), C.ALREADY_EXISTS),
        (pb.RenameDomainRequest(name=beta, new_name=beta), C.INVALID_ARGUMENT),
        (pb.RenameDomainRequest(name=beta, new_name=""), C.INVALID_ARGUMENT),
        (pb.RenameDomainRequest(name=beta, new_name="a/b"), C.INVALID_ARGUMENT),
        (pb.RenameDomainRequest(name=beta, new_name="a\0b"), C.INVALID_ARGUMENT),
        (pb.RenameDomainRequest(name=beta, new_name="a\nb"), C.INVALID_ARGUMENT),
        (pb.RenameDomainRequest(name=beta, new_name=" padded"), C.INVALID_ARGUMENT),
        (pb.RenameDomainRequest(name=beta, new_name="x" * 201), C.INVALID_ARGUMENT),
    ]:
        assert failed(stub.RenameDomain, request)[0] == code, request
    assert node_state(stub) == before


def test_lifecycle_actions_in_the_config_and_live(stub: Stub, beta: str) -> None:
    stub.SetDomainLifecycleAction(pb.SetDomainLifecycleActionRequest(
        name=beta, type=pb.LIFECYCLE_TYPE_CRASH, action=pb.LIFECYCLE_ACTION_COREDUMP_RESTART,
        scope=CONFIG), timeout=10)
    stub.SetDomainLifecycleAction(pb.SetDomainLifecycleActionRequest(
        name=beta, type=pb.LIFECYCLE_TYPE_REBOOT, action=pb.LIFECYCLE_ACTION_DESTROY),
        timeout=10)
    xml = inactive_xml(stub, beta)
    assert "<on_crash>coredump-restart</on_crash>" in xml
    assert "<on_reboot>destroy</on_reboot>" in xml
    stub.SetDomainLifecycleAction(pb.SetDomainLifecycleActionRequest(
        name="alpha", type=pb.LIFECYCLE_TYPE_POWEROFF, action=pb.LIFECYCLE_ACTION_RESTART,
        scope=LIVE), timeout=10)
    live = stub.GetDomainXML(pb.GetDomainXMLRequest(name="alpha"), timeout=10).xml
    assert "<on_poweroff>restart</on_poweroff>" in live
    assert "<on_poweroff>restart</on_poweroff>" not in inactive_xml(stub, "alpha")


def test_lifecycle_action_refusals_change_nothing(stub: Stub, beta: str) -> None:
    before = node_state(stub)
    crash = pb.LIFECYCLE_TYPE_CRASH
    for request, code in [
        (pb.SetDomainLifecycleActionRequest(name="nope", type=crash,
                                            action=pb.LIFECYCLE_ACTION_DESTROY), C.NOT_FOUND),
        (pb.SetDomainLifecycleActionRequest(name=beta, type=crash, action=0),  # type: ignore[arg-type]
         C.INVALID_ARGUMENT),
        (pb.SetDomainLifecycleActionRequest(name=beta, type=0,  # type: ignore[arg-type]
                                            action=pb.LIFECYCLE_ACTION_DESTROY),
         C.INVALID_ARGUMENT),
        (pb.SetDomainLifecycleActionRequest(name=beta, type=crash, action=99),  # type: ignore[arg-type]
         C.INVALID_ARGUMENT),
        (pb.SetDomainLifecycleActionRequest(
            name=beta, type=pb.LIFECYCLE_TYPE_POWEROFF,
            action=pb.LIFECYCLE_ACTION_COREDUMP_DESTROY), C.INVALID_ARGUMENT),
        (pb.SetDomainLifecycleActionRequest(name=beta, type=crash,
                                            action=pb.LIFECYCLE_ACTION_DESTROY, scope=LIVE),
         C.FAILED_PRECONDITION),
    ]:
        assert failed(stub.SetDomainLifecycleAction, request)[0] == code, request
    assert node_state(stub) == before


def test_nmi_and_process_signals_on_the_test_driver(stub: Stub, beta: str) -> None:
    stub.InjectDomainNmi(pb.InjectDomainNmiRequest(name="alpha"), timeout=10)
    stub.SendDomainProcessSignal(pb.SendDomainProcessSignalRequest(
        name="alpha", pid=1, signal=pb.PROCESS_SIGNAL_TERM), timeout=10)
    assert summary(stub, "alpha").state == pb.DOMAIN_STATE_RUNNING
    before = node_state(stub)
    cases: list[tuple[Any, Any, grpc.StatusCode]] = [
        (stub.InjectDomainNmi, pb.InjectDomainNmiRequest(name="nope"), C.NOT_FOUND),
        (stub.InjectDomainNmi, pb.InjectDomainNmiRequest(name=beta), C.FAILED_PRECONDITION),
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name="nope", pid=1, signal=pb.PROCESS_SIGNAL_TERM), C.NOT_FOUND),
        # the test driver sends to an inactive domain without a word; we refuse
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name=beta, pid=1, signal=pb.PROCESS_SIGNAL_TERM), C.FAILED_PRECONDITION),
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name="alpha", pid=1), C.INVALID_ARGUMENT),
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name="alpha", pid=1, signal=999), C.INVALID_ARGUMENT),  # type: ignore[arg-type]
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name="alpha", pid=0, signal=pb.PROCESS_SIGNAL_TERM), C.INVALID_ARGUMENT),
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name="alpha", pid=-3, signal=pb.PROCESS_SIGNAL_TERM), C.INVALID_ARGUMENT),
        # the test driver has only pid 1
        (stub.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name="alpha", pid=2, signal=pb.PROCESS_SIGNAL_TERM), C.INVALID_ARGUMENT),
    ]
    for call, request, code in cases:
        assert failed(call, request)[0] == code, request
    assert node_state(stub) == before


def test_power_management_is_unimplemented_on_the_test_driver(stub: Stub, beta: str) -> None:
    mem = pb.PM_SUSPEND_TARGET_MEM
    cases: list[tuple[Any, Any, grpc.StatusCode]] = [
        (stub.PmSuspendDomain, pb.PmSuspendDomainRequest(name="alpha", target=mem),
         C.UNIMPLEMENTED),
        # running, not asleep: refused before the driver is asked
        (stub.PmWakeupDomain, pb.PmWakeupDomainRequest(name="alpha"),
         C.FAILED_PRECONDITION),
        (stub.PmSuspendDomain, pb.PmSuspendDomainRequest(name="nope", target=mem),
         C.NOT_FOUND),
        (stub.PmWakeupDomain, pb.PmWakeupDomainRequest(name="nope"), C.NOT_FOUND),
        (stub.PmSuspendDomain, pb.PmSuspendDomainRequest(name=beta, target=mem),
         C.FAILED_PRECONDITION),
        (stub.PmWakeupDomain, pb.PmWakeupDomainRequest(name=beta), C.FAILED_PRECONDITION),
        (stub.PmSuspendDomain, pb.PmSuspendDomainRequest(name="alpha"), C.INVALID_ARGUMENT),
        (stub.PmSuspendDomain, pb.PmSuspendDomainRequest(name="alpha", target=7),  # type: ignore[arg-type]
         C.INVALID_ARGUMENT),
        (stub.PmSuspendDomain, pb.PmSuspendDomainRequest(
            name="alpha", target=mem, duration_seconds=2**64 - 1), C.INVALID_ARGUMENT),
    ]
    for call, request, code in cases:
        assert failed(call, request)[0] == code, request
    assert summary(stub, "alpha").state == pb.DOMAIN_STATE_RUNNING


def test_vcpu_counts_on_the_test_driver(stub: Stub, beta: str) -> None:
    stub.SetDomainVcpus(pb.SetDomainVcpusRequest(name="alpha", count=1, scope=LIVE),
                        timeout=10)
    assert vcpu_count(stub, "alpha") == 1  # the running domain's current count
    assert vcpu_count(stub, "alpha", scope=LIVE) == 1
    assert vcpu_count(stub, "alpha", scope=CONFIG) == 2
    assert vcpu_count(stub, "alpha", scope=LIVE, maximum=True) == 2
    assert vcpu_count(stub, beta, scope=CONFIG, maximum=True) == 1
    for request, code in [
        (pb.GetDomainVcpuCountRequest(name="nope"), C.NOT_FOUND),
        (pb.GetDomainVcpuCountRequest(name="alpha", scope=pb.Scope(live=True, config=True)),
         C.INVALID_ARGUMENT),
        (pb.GetDomainVcpuCountRequest(name="alpha", guest=True, maximum=True),
         C.INVALID_ARGUMENT),
        (pb.GetDomainVcpuCountRequest(name="alpha", guest=True, scope=CONFIG),
         C.INVALID_ARGUMENT),
        (pb.GetDomainVcpuCountRequest(name=beta, scope=LIVE), C.FAILED_PRECONDITION),
        (pb.GetDomainVcpuCountRequest(name=beta, guest=True), C.FAILED_PRECONDITION),
        # the test driver has no guest agent: libvirt's "unsupported flags"
        (pb.GetDomainVcpuCountRequest(name="alpha", guest=True), C.UNIMPLEMENTED),
    ]:
        assert failed(stub.GetDomainVcpuCount, request)[0] == code, request


def test_messages_updated_flag_dirty_rate_and_abort_on_the_test_driver(
        stub: Stub, beta: str) -> None:
    for flags in ({}, {"tainting": True}, {"deprecation": True}):
        assert list(stub.GetDomainMessages(pb.GetDomainMessagesRequest(
            name="alpha", **flags), timeout=10).messages) == []
    assert failed(stub.GetDomainMessages,
                  pb.GetDomainMessagesRequest(name="nope"))[0] == C.NOT_FOUND
    before = node_state(stub)
    cases: list[tuple[Any, Any, grpc.StatusCode]] = [
        (stub.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(name="alpha"),
         C.UNIMPLEMENTED),
        (stub.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(name="nope"),
         C.NOT_FOUND),
        (stub.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(name=beta),
         C.FAILED_PRECONDITION),
        (stub.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(
            name="alpha", calc_seconds=61), C.INVALID_ARGUMENT),
        (stub.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(
            name="alpha", calc_seconds=-1), C.INVALID_ARGUMENT),
        (stub.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(
            name="alpha", mode=42), C.INVALID_ARGUMENT),  # type: ignore[arg-type]
        # the test driver has neither abort call: the older one is tried too
        (stub.AbortDomainJob, pb.AbortDomainJobRequest(name="alpha"), C.UNIMPLEMENTED),
        (stub.AbortDomainJob, pb.AbortDomainJobRequest(name="alpha", postcopy=True),
         C.UNIMPLEMENTED),
        (stub.AbortDomainJob, pb.AbortDomainJobRequest(name="nope"), C.NOT_FOUND),
    ]
    for call, request, code in cases:
        assert failed(call, request)[0] == code, request
    assert node_state(stub) == before


def test_get_domain_says_whether_the_live_definition_was_updated(
        stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the test nor the QEMU driver ever sets libvirt's flag (Xen's did): the
    call is seen through libvirt-python, in this process."""
    assert stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10).updated is False
    asked: list[str] = []

    def is_updated(dom: libvirt.virDomain) -> int:
        asked.append(dom.name())
        return 1
    monkeypatch.setattr(libvirt.virDomain, "isUpdated", is_updated)
    assert stub.GetDomain(pb.GetDomainRequest(name="alpha"), timeout=10).updated is True
    assert asked == ["alpha"]
    stub.ListDomains(pb.ListDomainsRequest(), timeout=10)
    assert asked == ["alpha"]  # ListDomains makes no call per domain


class FakeDomain:
    def name(self) -> str:
        return "d"

    def UUIDString(self) -> str:  # noqa: N802 (libvirt's name)
        return "00000000-0000-0000-0000-000000000001"


def test_dirty_rate_stats_are_typed_and_not_asked_for_by_default() -> None:
    stats = convert.domain_stats(FakeDomain(), {  # type: ignore[arg-type]
        "dirtyrate.calc_status": 2, "dirtyrate.calc_start_time": 1700000000,
        "dirtyrate.calc_period": 3, "dirtyrate.megabytes_per_second": 17,
        "dirtyrate.calc_mode": "page-sampling"})
    assert stats.dirtyrate == pb.DirtyRateStats(
        calc_status=2, calc_start_time=1700000000, calc_period=3, megabytes_per_second=17)
    assert stats.raw["dirtyrate.calc_mode"] == "page-sampling"
    assert not convert.stat_groups([]) & libvirt.VIR_DOMAIN_STATS_DIRTYRATE
    assert convert.stat_groups([pb.STAT_GROUP_DIRTYRATE]) == libvirt.VIR_DOMAIN_STATS_DIRTYRATE


# -- the CLI ---------------------------------------------------------------------


def test_cli_argument_parsing() -> None:
    assert process_signal("SIGTERM") == process_signal("term") == pb.PROCESS_SIGNAL_TERM
    assert process_signal("15") == pb.PROCESS_SIGNAL_TERM
    assert process_signal("0") == pb.PROCESS_SIGNAL_NOP
    assert process_signal("SIGRT32") == pb.PROCESS_SIGNAL_RT32
    for wrong in ("SIGNOPE", "65", "-1", ""):
        with pytest.raises(Exception, match="signal"):
            process_signal(wrong)
    assert parse_kib("1048576") == 1048576
    assert parse_kib("1G") == parse_kib("1GiB") == 1048576
    assert parse_kib("512M") == 524288


@pytest.fixture
def cli_run(compute: Daemon, capsys: pytest.CaptureFixture[str]) -> CliRun:
    """``virtmesh --socket DIR ARGS…`` against the test's service: (status, out, err)."""
    assert compute.socket_path is not None

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(compute.socket_path.parent), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_cli_rename_lifecycle_action_signals_nmi_messages(stub: Stub, beta: str,
                                                          cli_run: CliRun) -> None:
    code, out, err = cli_run("domrename", beta, "gamma")
    assert (code, out.strip()) == (0, "Domain 'beta' successfully renamed to 'gamma'"), err
    code, out, err = cli_run("domrename", "alpha", "other")
    assert code != 0 and "FAILED_PRECONDITION" in err
    code, out, err = cli_run("set-lifecycle-action", "gamma", "crash", "rename-restart",
                             "--config")
    assert code == 0, err
    assert "<on_crash>rename-restart</on_crash>" in inactive_xml(stub, "gamma")
    code, out, err = cli_run("set-lifecycle-action", "gamma", "crash", "explode")
    assert code == 2 and "ACTION" in err
    code, out, err = cli_run("send-process-signal", "alpha", "1", "SIGHUP")
    assert (code, out.strip()) == (0, "Signal SIGHUP sent to process 1 of domain 'alpha'"), err
    code, out, err = cli_run("send-process-signal", "alpha", "1", "SIGBOGUS")
    assert code == 2 and "signal" in err
    code, out, err = cli_run("inject-nmi", "alpha")
    assert (code, out.strip()) == (0, "Domain 'alpha' was sent an NMI"), err
    code, out, err = cli_run("dommessages", "alpha", "--json")
    assert (code, json.loads(out)) == (0, {"messages": []}), err
    code, out, err = cli_run("dompmsuspend", "alpha", "mem", "--duration", "30")
    assert code != 0 and "UNIMPLEMENTED" in err
    code, out, err = cli_run("dompmsuspend", "alpha", "sleep")
    assert code == 2 and "target" in err
    code, out, err = cli_run("dompmwakeup", "gamma")
    assert code != 0 and "FAILED_PRECONDITION" in err
    code, out, err = cli_run("domdirtyrate-calc", "alpha", "--seconds", "2")
    assert code != 0 and "UNIMPLEMENTED" in err
    code, out, err = cli_run("domjobabort", "alpha", "--postcopy")
    assert code != 0 and "UNIMPLEMENTED" in err


def test_cli_vcpucount(stub: Stub, beta: str, cli_run: CliRun) -> None:
    stub.SetDomainVcpus(pb.SetDomainVcpusRequest(name="alpha", count=1, scope=LIVE),
                        timeout=10)
    code, out, err = cli_run("vcpucount", "alpha")
    assert code == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["maximum", "config", "2"], ["maximum", "live", "2"],
        ["current", "config", "2"], ["current", "live", "1"]]
    code, out, err = cli_run("vcpucount", beta)  # no live rows when it is off
    assert [line.split() for line in out.splitlines()] == [["maximum", "config", "1"],
                                                           ["current", "config", "1"]], err
    code, out, err = cli_run("vcpucount", "alpha", "--active", "--live")
    assert (code, out.strip()) == (0, "1"), err
    code, out, err = cli_run("vcpucount", beta, "--live")
    assert code != 0 and "FAILED_PRECONDITION" in err
    code, out, err = cli_run("vcpucount", "alpha", "--json")
    assert json.loads(out)["counts"][-1] == {"kind": "current", "scope": "live", "count": 1}


def test_cli_sizes_take_units(stub: Stub, cli_run: CliRun) -> None:
    code, out, err = cli_run("setmem", "alpha", "32M", "--config")
    assert (code, out.strip()) == (0, "Domain 'alpha' memory set to 32.0 MiB"), err
    assert "<currentMemory unit='KiB'>32768</currentMemory>" in inactive_xml(stub, "alpha")
    code, out, err = cli_run("setmem", "alpha", "40000", "--config")  # KiB, as virsh
    assert code == 0, err
    assert "<currentMemory unit='KiB'>40000</currentMemory>" in inactive_xml(stub, "alpha")
    code, out, err = cli_run("setmem", "alpha", "lots")
    assert code == 2 and "size" in err
    code, out, err = cli_run("memtune", "alpha", "--set", "hard_limit=1G")
    assert code == 0, err
    hard = [p for p in stub.GetDomainMemoryParameters(pb.GetDomainMemoryParametersRequest(
        name="alpha"), timeout=10).parameters if p.name == "hard_limit"]
    assert hard[0].ulong_value == 1048576


# -- the embedded QEMU driver ------------------------------------------------------

GUEST = "life"
#: the guest's state directory and its service's socket directory, once the fixture
#: has made them
QEMU_STATE: list[Path] = []


def _guest_xml(state: Path) -> str:
    """The example guest, which may suspend to RAM."""
    xml = example.render(GUEST, state, "qemu")
    return xml.replace("</on_crash>", "</on_crash>\n  <pm><suspend-to-mem enabled='yes'/>"
                       "<suspend-to-disk enabled='no'/></pm>")


def _agent_answers(stub: Stub) -> bool:
    try:
        stub.GetGuestTime(pb.GetGuestTimeRequest(name=GUEST), timeout=20)
        return True
    except grpc.RpcError:
        time.sleep(0.5)
        return False


@pytest.fixture(scope="module")
def qemu(in_process_qemu_state: Path) -> Iterator[Stub]:
    state = in_process_qemu_state
    with running_service(state, EMBED_URI, grace_period=0.5,
                         guests_on_exit="destroy") as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        assert daemon.socket_path is not None
        QEMU_STATE[:] = [state, daemon.socket_path.parent]
        stub.DefineDomain(pb.DefineDomainRequest(xml=_guest_xml(state)), timeout=30)
        stub.StartDomain(pb.StartDomainRequest(name=GUEST), timeout=60)
        log = state / "guest" / f"{GUEST}.console.log"
        wait_for(lambda: log.exists() and BOOTED in log.read_text(errors="replace"), 90,
                 "the guest to boot")
        wait_for(lambda: _agent_answers(stub), 60, "the guest agent")
        try:
            yield stub
        finally:
            with contextlib.suppress(grpc.RpcError):
                stub.DestroyDomain(pb.DestroyDomainRequest(name=GUEST), timeout=30)
            with contextlib.suppress(grpc.RpcError):
                stub.UndefineDomain(pb.UndefineDomainRequest(name=GUEST), timeout=30)


def state_of(stub: Stub) -> int:
    return int(summary(stub, GUEST).state)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_vcpu_counts_and_the_guests_own(qemu: Stub) -> None:
    assert vcpu_count(qemu, GUEST, scope=LIVE) == vcpu_count(qemu, GUEST, scope=CONFIG) >= 1
    assert vcpu_count(qemu, GUEST, maximum=True) >= vcpu_count(qemu, GUEST)
    assert vcpu_count(qemu, GUEST, guest=True) == vcpu_count(qemu, GUEST, scope=LIVE)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_nmi_leaves_the_guest_running(qemu: Stub) -> None:
    qemu.InjectDomainNmi(pb.InjectDomainNmiRequest(name=GUEST), timeout=30)
    assert state_of(qemu) == pb.DOMAIN_STATE_RUNNING
    assert _agent_answers(qemu)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_refusals(qemu: Stub) -> None:
    """What libvirt's QEMU driver cannot or will not do, and the running guest's
    refusals; the guest runs on."""
    cases: list[tuple[Any, Any, grpc.StatusCode]] = [
        (qemu.SendDomainProcessSignal, pb.SendDomainProcessSignalRequest(
            name=GUEST, pid=1, signal=pb.PROCESS_SIGNAL_NOP), C.UNIMPLEMENTED),
        (qemu.RenameDomain, pb.RenameDomainRequest(name=GUEST, new_name="renamed"),
         C.FAILED_PRECONDITION),
        (qemu.PmWakeupDomain, pb.PmWakeupDomainRequest(name=GUEST), C.FAILED_PRECONDITION),
        (qemu.AbortDomainJob, pb.AbortDomainJobRequest(name=GUEST), C.FAILED_PRECONDITION),
        (qemu.AbortDomainJob, pb.AbortDomainJobRequest(name=GUEST, postcopy=True),
         C.FAILED_PRECONDITION),
        (qemu.PmSuspendDomain, pb.PmSuspendDomainRequest(
            name=GUEST, target=pb.PM_SUSPEND_TARGET_DISK), C.FAILED_PRECONDITION),
        # TCG: no KVM dirty ring (libvirt says so), and QEMU would crash on a bitmap
        (qemu.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(
            name=GUEST, mode=pb.DIRTY_RATE_MODE_DIRTY_RING), C.UNIMPLEMENTED),
        (qemu.StartDomainDirtyRateCalc, pb.StartDomainDirtyRateCalcRequest(
            name=GUEST, mode=pb.DIRTY_RATE_MODE_DIRTY_BITMAP), C.FAILED_PRECONDITION),
    ]
    for call, request, code in cases:
        assert failed(call, request)[0] == code, request
    assert state_of(qemu) == pb.DOMAIN_STATE_RUNNING


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_messages_name_a_monitor_command_taint(qemu: Stub) -> None:
    def messages(**flags: bool) -> list[str]:
        return list(qemu.GetDomainMessages(pb.GetDomainMessagesRequest(
            name=GUEST, **flags), timeout=10).messages)
    assert not any("monitor" in message for message in messages())
    conn = libvirt.open(EMBED_URI.format(state_dir=QEMU_STATE[0]))
    try:
        libvirt_qemu.qemuMonitorCommand(conn.lookupByName(GUEST),
                                        '{"execute": "query-status"}', 0)
    finally:
        conn.close()
    tainted = [message for message in messages(tainting=True) if "monitor" in message]
    assert tainted, messages()
    assert tainted[0] in messages()
    assert not any("monitor" in message for message in messages(deprecation=True))


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_lifecycle_action_live(qemu: Stub) -> None:
    qemu.SetDomainLifecycleAction(pb.SetDomainLifecycleActionRequest(
        name=GUEST, type=pb.LIFECYCLE_TYPE_CRASH, action=pb.LIFECYCLE_ACTION_PRESERVE,
        scope=LIVE), timeout=30)
    live = qemu.GetDomainXML(pb.GetDomainXMLRequest(name=GUEST), timeout=10).xml
    assert "<on_crash>preserve</on_crash>" in live
    assert "<on_crash>preserve</on_crash>" not in inactive_xml(qemu, GUEST)


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_dirty_rate_calc_then_its_stats_group(qemu: Stub) -> None:
    def rate() -> Any:
        return qemu.GetDomainStats(pb.GetDomainStatsRequest(
            names=[GUEST], groups=[pb.STAT_GROUP_DIRTYRATE]), timeout=10).stats[0].dirtyrate
    qemu.StartDomainDirtyRateCalc(pb.StartDomainDirtyRateCalcRequest(
        name=GUEST, calc_seconds=1, mode=pb.DIRTY_RATE_MODE_PAGE_SAMPLING), timeout=30)
    wait_for(lambda: rate().calc_status == 2, 30, "the measurement")
    measured = rate()
    assert measured.calc_period == 1
    # QEMU's clock is the host's monotonic one, as Python's on Linux
    assert abs(measured.calc_start_time - time.monotonic()) < 120
    default = qemu.GetDomainStats(pb.GetDomainStatsRequest(names=[GUEST]), timeout=10)
    assert not default.stats[0].HasField("dirtyrate")


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_suspend_to_ram_and_wake_up(qemu: Stub) -> None:
    """The guest sleeps (through its agent) and is woken; last of the QEMU tests that
    need the guest awake."""
    wait_for(lambda: _agent_answers(qemu), 60, "the guest agent")
    qemu.PmSuspendDomain(pb.PmSuspendDomainRequest(
        name=GUEST, target=pb.PM_SUSPEND_TARGET_MEM), timeout=60)
    wait_for(lambda: state_of(qemu) == pb.DOMAIN_STATE_PMSUSPENDED, 60,
             "the guest to sleep")
    assert failed(qemu.PmSuspendDomain, pb.PmSuspendDomainRequest(
        name=GUEST, target=pb.PM_SUSPEND_TARGET_MEM))[0] == C.FAILED_PRECONDITION
    qemu.PmWakeupDomain(pb.PmWakeupDomainRequest(name=GUEST), timeout=30)
    wait_for(lambda: state_of(qemu) == pb.DOMAIN_STATE_RUNNING, 60,
             "the guest to wake up")
    wait_for(lambda: _agent_answers(qemu), 60, "the guest agent after the wake-up")


@pytest.mark.qemu
@pytest.mark.timeout(300)
def test_qemu_cli_dirty_rate_and_guest_vcpucount(
        qemu: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--socket", str(QEMU_STATE[1]), *args])
        out, err = capsys.readouterr()
        return code, out, err
    code, out, err = run("domdirtyrate-calc", GUEST, "--seconds", "1", "--wait", "--json")
    assert code == 0, err
    rate = json.loads(out)
    assert (rate["calc_status"], rate["calc_period"]) == (2, 1)
    code, out, err = run("domdirtyrate", GUEST)
    assert code == 0 and "Status:" in out and "measured" in out and "MiB/s" in out, err
    code, out, err = run("domdirtyrate-calc", GUEST, "--seconds", "99")
    assert code != 0 and "INVALID_ARGUMENT" in err
    code, out, err = run("vcpucount", GUEST, "--guest")
    assert (code, out.strip()) == (0, str(vcpu_count(qemu, GUEST, scope=LIVE))), err
