"""The virtmesh CLI against a real compute service on libvirt's test driver.

One service process serves the whole module; every test uses its own domain
names, so tests do not depend on each other's order.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli import main
from virtmesh_client.client import Client, ClientError

ROOT = Path(__file__).resolve().parent.parent
#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]
PKI_ENV = ("VIRTMESH_GATEWAY", "VIRTMESH_STATE_DIR", "VIRTMESH_CA", "VIRTMESH_CERT",
           "VIRTMESH_KEY")


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>65536</memory>"
            "<os><type>hvm</type></os></domain>")


def _wait_serving(socket: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, f"compute service exited:\n{log.read_text()}"
        if socket.exists():
            with grpc.insecure_channel(f"unix:{socket}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                except grpc.RpcError:
                    reply = None
            if reply and reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.1)
    pytest.fail(f"compute service not serving after 20 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``unix:`` target of a compute service process on ``test:///default``."""
    state = tmp_path_factory.mktemp("cli")
    log = state / "compute.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services", "compute", "--uri", "test:///default",
             "--state-dir", str(state)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    socket = state / "run" / "compute.sock"
    try:
        _wait_serving(socket, process, log)
        yield f"unix:{socket}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def virtmesh(target: str, capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs the CLI in-process against the module's service."""
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--socket", target, *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _state(virtmesh: Run, name: str) -> str:
    code, out, err = virtmesh("--json", "info", name)
    assert code == 0, err
    return str(json.loads(out)["state"])


def test_list_shows_test_domain(virtmesh: Run) -> None:
    code, out, err = virtmesh("list")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "ID"]
    assert ["test", "running"] in [row.split()[:2] for row in rows]


def test_list_json(virtmesh: Run) -> None:
    code, out, _ = virtmesh("--json", "list", "--active")
    assert code == 0
    domains = {d["name"]: d for d in json.loads(out)["domains"]}
    assert domains["test"]["state"] == "DOMAIN_STATE_RUNNING"
    assert domains["test"]["persistent"] is True


def test_list_as_a_subprocess(target: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "virtmesh_client", "--socket", target, "list", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test" in [d["name"] for d in json.loads(result.stdout)["domains"]]


def test_domain_lifecycle(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "demo.xml"
    xml.write_text(domain_xml("cli-demo"))

    code, out, err = virtmesh("define", str(xml))
    assert code == 0, err
    assert "Domain 'cli-demo' defined" in out
    assert _state(virtmesh, "cli-demo") == "DOMAIN_STATE_SHUTOFF"

    assert virtmesh("start", "cli-demo")[0] == 0
    assert _state(virtmesh, "cli-demo") == "DOMAIN_STATE_RUNNING"

    assert virtmesh("suspend", "cli-demo")[0] == 0
    code, out, _ = virtmesh("list", "--state", "paused")
    assert [row.split()[:2] for row in out.splitlines()[1:]] == [["cli-demo", "paused"]]
    assert virtmesh("resume", "cli-demo")[0] == 0
    assert _state(virtmesh, "cli-demo") == "DOMAIN_STATE_RUNNING"

    code, out, _ = virtmesh("dumpxml", "cli-demo")
    assert code == 0 and "<name>cli-demo</name>" in out

    code, out, _ = virtmesh("stats", "cli-demo")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "CPU_TIME"]
    assert [row.split()[:2] for row in rows] == [["cli-demo", "running"]]

    code, out, _ = virtmesh("info", "cli-demo")
    assert "State:" in out and "running" in out and "64.0 MiB" in out

    assert virtmesh("destroy", "cli-demo")[0] == 0
    assert _state(virtmesh, "cli-demo") == "DOMAIN_STATE_SHUTOFF"
    code, out, _ = virtmesh("undefine", "cli-demo")
    assert (code, out) == (0, "Domain 'cli-demo' undefined\n")
    assert virtmesh("info", "cli-demo")[0] == 1


def test_shutdown_wait_returns_once_off(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "wait.xml"
    xml.write_text(domain_xml("cli-wait"))
    assert virtmesh("define", str(xml))[0] == 0
    assert virtmesh("start", "cli-wait")[0] == 0
    code, out, err = virtmesh("shutdown", "cli-wait", "--wait", "--wait-timeout", "10")
    assert (code, err) == (0, "")
    assert out == "Domain 'cli-wait' shut off\n"
    assert _state(virtmesh, "cli-wait") == "DOMAIN_STATE_SHUTOFF"
    assert virtmesh("undefine", "cli-wait")[0] == 0


def test_snapshots(virtmesh: Run, tmp_path: Path) -> None:
    xml = tmp_path / "snap.xml"
    xml.write_text(domain_xml("cli-snap"))
    snap = tmp_path / "snapshot.xml"
    snap.write_text("<domainsnapshot><name>first</name></domainsnapshot>")
    assert virtmesh("define", str(xml))[0] == 0
    assert virtmesh("snapshot-create", "cli-snap", "--xml", str(snap))[0] == 0
    code, out, _ = virtmesh("snapshot-list", "cli-snap")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["first"]
    assert virtmesh("snapshot-delete", "cli-snap", "first")[0] == 0
    assert json.loads(virtmesh("--json", "snapshot-list", "cli-snap")[1])["snapshots"] == []
    assert virtmesh("undefine", "cli-snap")[0] == 0


def test_events_count(virtmesh: Run, target: str) -> None:
    result: list[tuple[int, str, str]] = []
    watcher = threading.Thread(target=lambda: result.append(
        virtmesh("events", "cli-ev", "--count", "2")))
    with Client(target) as client:
        client.call("DefineDomain", _define("cli-ev"))
        watcher.start()
        # The watcher subscribes at some point; events before that are not seen.
        deadline = time.monotonic() + 10
        while watcher.is_alive() and time.monotonic() < deadline:
            client.call("StartDomain", pb.StartDomainRequest(name="cli-ev"))
            client.call("DestroyDomain", pb.DestroyDomainRequest(name="cli-ev"))
        watcher.join(5)
        client.call("UndefineDomain", pb.UndefineDomainRequest(name="cli-ev"))
    assert result, "events --count 2 did not return"
    code, out, _ = result[0]
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert all(line.split()[1:3] == ["cli-ev", "lifecycle"] for line in lines)


def test_events_exits_cleanly_on_ctrl_c(target: str) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "virtmesh_client", "--socket", target, "events"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watcher.stdout is not None and watcher.stderr is not None
    assert "watching domain events" in watcher.stderr.readline()
    with Client(target) as client:
        client.call("SuspendDomain", pb.SuspendDomainRequest(name="test"))
        client.call("ResumeDomain", pb.ResumeDomainRequest(name="test"))
    assert "  test  lifecycle  suspended" in watcher.stdout.readline()
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=10)
    assert (watcher.returncode, err) == (0, "")


def test_a_closed_pipe_ends_the_cli_quietly(target: str) -> None:
    """`virtmesh list | head -0`: no traceback, the status of a program ended by SIGPIPE."""
    for command in (["list"], ["--json", "list"], ["info", "test"]):
        cli = subprocess.Popen([sys.executable, "-m", "virtmesh_client", "--socket", target,
                                *command], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        assert cli.stdout is not None
        cli.stdout.close()  # the reader is gone before anything is written
        _, err = cli.communicate(timeout=30)
        assert (cli.returncode, err) == (128 + signal.SIGPIPE, ""), command


def test_unknown_domain_is_not_found(virtmesh: Run) -> None:
    code, out, err = virtmesh("info", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("virtmesh: NOT_FOUND: ")
    assert err.endswith("(VIR_ERR_NO_DOMAIN)\n") and err.count("\n") == 1


def test_malformed_xml_is_invalid_argument(virtmesh: Run,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("<domain"))
    code, _, err = virtmesh("define", "-")
    assert code == 1
    assert err.startswith("virtmesh: INVALID_ARGUMENT: ") and err.count("\n") == 1


def test_client_follows_pages_and_reports_reasons(target: str) -> None:
    with Client(target) as client:
        client.call("DefineDomain", _define("cli-page"))
        names = [d.name for d in client.domains(page_size=1)]
        assert names == [d.name for d in client.domains()]
        assert {"cli-page", "test"} <= set(names) and names == sorted(names)
        client.call("UndefineDomain", pb.UndefineDomainRequest(name="cli-page"))
        with pytest.raises(ClientError) as caught:
            client.domain("nope")
    assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "VIR_ERR_NO_DOMAIN")


def test_unreachable_service_is_unavailable(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--socket", str(tmp_path / "absent.sock"), "list"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("virtmesh: UNAVAILABLE: ") and "make run" in err


def test_missing_pki_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PKI_ENV:
        monkeypatch.delenv(name, raising=False)
    code = main(["--state-dir", str(tmp_path), "list"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"virtmesh: cannot read CA certificate {tmp_path}/pki/ca.crt: No such file "
                   "or directory (run `make run` to create the development PKI, or pass --ca "
                   "/ set VIRTMESH_CA)\n")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 2
    assert "usage:" in capsys.readouterr().err



def _define(name: str) -> pb.DefineDomainRequest:
    return pb.DefineDomainRequest(xml=domain_xml(name))
