"""The shared daemon skeleton (services/common/daemon.py) as real processes and servers.

Socket handling (stale file, live owner, permissions), SIGTERM, config errors,
reconnect to a real private libvirtd that comes, dies and comes back, and the
error interceptor. Every wait is bounded; every process started here runs in its
own process group and is killed in ``finally``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import libvirt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import Config
from services.common.daemon import Daemon, prepare_socket
from services.common.libvirt_connection import LibvirtConnection
from services.compute import SPEC as COMPUTE
from services.compute.servicer import ComputeServicer
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
LIBVIRTD = Path("/usr/sbin/libvirtd")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
COMPUTE_NAME = COMPUTE.descriptor.full_name


# -- helpers ------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             alive: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"process exited ({alive.returncode}) while waiting for {what}"
                        f"{_log_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s{_log_tail(log)}")
        time.sleep(0.05)


def _log_tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    return "\nlog tail:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def spawned(argv: list[str], log: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group; its whole group is SIGKILLed on the way out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def compute_argv(state_dir: Path, *args: str, uri: str = "test:///default") -> list[str]:
    return [sys.executable, "-m", "services", "compute", "--uri", uri,
            "--state-dir", str(state_dir), *args]


def sock_of(state_dir: Path) -> Path:
    return state_dir / "run" / "compute.sock"


def health_status(sock: Path) -> int | None:
    """The compute service's health on a fresh channel, or None if it does not answer."""
    if not sock.exists():
        return None
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=COMPUTE_NAME), timeout=2)
        except grpc.RpcError:
            return None
    return int(reply.status)


def wait_status(sock: Path, status: int, timeout: float, proc: subprocess.Popen[bytes],
                log: Path) -> None:
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    wait_for(lambda: health_status(sock) == status, timeout, f"health {name}", proc, log)


@contextlib.contextmanager
def compute_stub(sock: Path) -> Iterator[pb_grpc.ComputeServiceStub]:
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        yield pb_grpc.ComputeServiceStub(channel)


def rpc_error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value  # type: ignore[no-any-return]


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>65536</memory>"
            "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")


def subscribed(stub: pb_grpc.ComputeServiceStub, timeout: float = 20) -> Any:
    """A WatchDomainEvents stream whose subscription is in place (headers received)."""
    stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=timeout)
    stream.initial_metadata()  # the servicer sends headers right after subscribing
    return stream


def next_defined(stream: Any, name: str) -> pb.WatchDomainEventsResponse:
    """The next DEFINED lifecycle event of ``name`` (bounded by the stream's deadline)."""
    for event in stream:
        if (event.name == name and event.WhichOneof("event") == "lifecycle"
                and event.lifecycle.type == pb.LIFECYCLE_EVENT_TYPE_DEFINED):
            return event
    pytest.fail(f"stream ended before the DEFINED event of {name}")


# -- socket handling -------------------------------------------------------------------


def test_stale_socket_file_is_removed_and_service_starts(tmp_path: Path) -> None:
    sock = sock_of(tmp_path)
    sock.parent.mkdir(parents=True)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(sock))
    leftover.close()  # no unlink: a socket file nobody listens on
    assert stat.S_ISSOCK(sock.stat().st_mode)
    log = tmp_path / "compute.log"

    with spawned(compute_argv(tmp_path), log) as proc:
        wait_status(sock, SERVING, 20, proc, log)
        with compute_stub(sock) as stub:
            assert "test" in [d.name for d in stub.ListDomains(pb.ListDomainsRequest(),
                                                               timeout=10).domains]
        assert "removed stale socket" in log.read_text()


def test_live_socket_is_refused_and_owner_keeps_serving(tmp_path: Path) -> None:
    sock = sock_of(tmp_path)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with spawned(compute_argv(tmp_path), first_log) as first:
        wait_status(sock, SERVING, 20, first, first_log)
        inode = sock.stat().st_ino

        with spawned(compute_argv(tmp_path), second_log) as second:
            try:
                code = second.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"second service did not give up{_log_tail(second_log)}")
        assert code != 0
        text = second_log.read_text()
        assert f"socket {sock} is in use by another running process" in text, text
        assert "Traceback" not in text

        assert first.poll() is None
        assert sock.stat().st_ino == inode  # not unlinked and re-created by the second
        assert health_status(sock) == SERVING
        with compute_stub(sock) as stub:
            assert stub.GetDomain(pb.GetDomainRequest(name="test"), timeout=10).domain.name \
                == "test"


@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_socket_gets_configured_mode(tmp_path: Path, mode: int) -> None:
    sock, log = sock_of(tmp_path), tmp_path / "compute.log"
    with spawned(compute_argv(tmp_path, "--socket-mode", f"{mode:o}"), log) as proc:
        wait_status(sock, SERVING, 20, proc, log)
        info = sock.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == mode, oct(stat.S_IMODE(info.st_mode))


# -- SIGTERM ---------------------------------------------------------------------------


def terminate(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> int:
    """SIGTERM the process and return its exit code; a hang fails the test."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {timeout:.0f}s of SIGTERM{_log_tail(log)}")


def test_sigterm_exits_cleanly_and_ends_watch_streams(tmp_path: Path) -> None:
    sock, log = sock_of(tmp_path), tmp_path / "compute.log"
    with spawned(compute_argv(tmp_path, "--grace-period", "120"), log) as proc:
        wait_status(sock, SERVING, 20, proc, log)
        with compute_stub(sock) as stub:
            stream = subscribed(stub, timeout=30)
            outcome: list[object] = []

            def drain() -> None:
                try:
                    outcome.extend(stream)
                    outcome.append("end of stream")
                except grpc.RpcError as error:
                    outcome.append(error.code())

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()

            # The grace period is 120 s: exiting within terminate()'s 20 s proves the
            # watch stream was ended at once rather than left to run out the grace.
            code = terminate(proc, log)
            reader.join(timeout=5)

        assert code == 0, _log_tail(log)
        assert not sock.exists()
        assert not reader.is_alive(), "WatchDomainEvents stream still open after exit"
        # ended by the server going away (UNAVAILABLE), not by the client's deadline
        assert outcome == [grpc.StatusCode.UNAVAILABLE], outcome
        assert "compute stopped" in log.read_text()


def test_sigterm_while_libvirt_unreachable(tmp_path: Path) -> None:
    """Still waiting for the first libvirt connection: SIGTERM stops it all the same."""
    sock, log = sock_of(tmp_path), tmp_path / "compute.log"
    uri = f"test+unix:///default?socket={tmp_path / 'nobody-here'}"
    with spawned(compute_argv(tmp_path, "--reconnect-min-delay", "0.2", uri=uri), log) as proc:
        wait_status(sock, NOT_SERVING, 15, proc, log)
        code = terminate(proc, log)
    assert code == 0, _log_tail(log)
    assert not sock.exists()


# -- config errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("args", "env", "setting"), [
    (["--guests-on-exit", "bogus"], {}, "guests_on_exit"),
    (["--socket-mode", "rw"], {}, "socket_mode"),
    ([], {"VIRTMESH_LOG_FORMAT": "xml"}, "log_format"),
])
def test_config_error_exits_2_with_one_line(tmp_path: Path, args: list[str],
                                            env: dict[str, str], setting: str) -> None:
    result = subprocess.run(compute_argv(tmp_path, *args), cwd=ROOT, capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("virtmesh-compute: ") and setting in lines[0], lines[0]
    assert not sock_of(tmp_path).exists()


# -- reconnect with a real libvirtd ----------------------------------------------------


@contextlib.contextmanager
def private_libvirtd(root: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """libvirtd on <root>/libvirt-sock with auth none and only its built-in drivers.

    LIBVIRT_DRIVER_DIR names an empty directory, so no host driver module (qemu,
    network, ...) loads; the test driver is built into libvirt itself.
    """
    (root / "no-drivers").mkdir(parents=True, exist_ok=True)
    conf = root / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{root}"\n'
                    'unix_sock_rw_perms = "0700"\n'
                    'auth_unix_rw = "none"\n'
                    'auth_unix_ro = "none"\n'
                    'log_outputs = "3:stderr"\n')
    argv = [str(LIBVIRTD), "--config", str(conf), "--pid-file", str(root / "libvirtd.pid")]
    with spawned(argv, log, env={"LIBVIRT_DRIVER_DIR": str(root / "no-drivers")}) as proc:
        uri = libvirtd_uri(root)

        def answers() -> bool:
            # a stale socket file from a killed predecessor may still be there
            try:
                conn = libvirt.open(uri)
            except libvirt.libvirtError:
                return False
            conn.close()
            return True

        wait_for(answers, 15, "private libvirtd", proc, log)
        yield proc


def fd_count(proc: subprocess.Popen[bytes]) -> int:
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


def libvirtd_uri(root: Path) -> str:
    return f"test+unix:///default?socket={root / 'libvirt-sock'}"


@pytest.mark.skipif(not os.access(LIBVIRTD, os.X_OK), reason="libvirtd not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="a private libvirtd needs root here")
def test_reconnect_to_real_libvirtd(tmp_path: Path) -> None:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no stderr noise here
    root, state = tmp_path / "libvirt", tmp_path / "state"
    root.mkdir()
    sock, log, daemon_log = sock_of(state), tmp_path / "compute.log", tmp_path / "libvirtd.log"
    argv = compute_argv(state, "--reconnect-min-delay", "0.2", "--reconnect-max-delay", "1",
                        "--grace-period", "1", uri=libvirtd_uri(root))

    with spawned(argv, log) as proc, compute_stub(sock) as stub:
        # 1. no libvirtd yet: the service is up, but NOT_SERVING and calls are UNAVAILABLE
        wait_for(lambda: health_status(sock) is not None, 15, "service socket answers",
                 proc, log)
        assert health_status(sock) == NOT_SERVING
        error = rpc_error(stub.GetDomain, pb.GetDomainRequest(name="test"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "libvirt" in (error.details() or ""), error.details()
        time.sleep(0.5)  # a few backoff rounds later still NOT_SERVING, still running
        assert proc.poll() is None and health_status(sock) == NOT_SERVING

        # 2. libvirtd comes: SERVING, and the service sees libvirtd's test driver state
        with private_libvirtd(root, daemon_log) as libvirtd:
            wait_status(sock, SERVING, 10, proc, log)
            domains = stub.ListDomains(pb.ListDomainsRequest(), timeout=10).domains
            assert [d.name for d in domains] == ["test"]
            stream = subscribed(stub)
            stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("first")), timeout=10)
            assert next_defined(stream, "first").lifecycle.detail
            # counted once the first define has started the parse sandbox (two pipes)
            fds_first = fd_count(proc)

            # 3. libvirtd dies hard: NOT_SERVING, the open stream ends with UNAVAILABLE
            os.killpg(libvirtd.pid, signal.SIGKILL)
            libvirtd.wait(timeout=10)
            wait_status(sock, NOT_SERVING, 15, proc, log)
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:  # bounded by the stream's deadline
                    pass
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
            error = rpc_error(stub.ListDomains, pb.ListDomainsRequest())
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error

        # 4. libvirtd is back: SERVING again, events registered on the new connection
        with private_libvirtd(root, daemon_log):
            wait_status(sock, SERVING, 10, proc, log)
            # the lost connection was released, not leaked (its client held an fd)
            assert fd_count(proc) <= fds_first
            # a fresh libvirtd: "first" was only in the old daemon's memory
            domains = stub.ListDomains(pb.ListDomainsRequest(), timeout=10).domains
            assert [d.name for d in domains] == ["test"]
            stream = subscribed(stub)
            stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("second")), timeout=10)
            event = next_defined(stream, "second")
            assert event.uuid
            stream.cancel()
            # the libvirt state is the daemon's, kept alive by the service's connection
            direct = libvirt.open(libvirtd_uri(root))
            try:
                assert sorted(d.name() for d in direct.listAllDomains()) == ["second", "test"]
            finally:
                direct.close()

        assert proc.poll() is None
        assert "libvirt connection to" in log.read_text()


# -- error interceptor -----------------------------------------------------------------


class BrokenServicer(ComputeServicer):
    """A servicer with bugs (a unary method, a blocking and a coroutine stream raise
    KeyError), and one method that picks its status with gRPC's own ``context.abort``."""

    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise KeyError("no-such-key")

    def GetNodeInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, "no node here")

    def GetDomainScreenshot(self, request: Any, context: grpc.ServicerContext
                            ) -> Iterator[Any]:
        yield from ()
        raise KeyError("blocking-stream-key")

    async def WatchDomainEvents(self, request: Any, context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[Any]:
        for _ in ():
            yield
        raise KeyError("stream-key")


BROKEN = dataclasses.replace(COMPUTE, name="broken", servicer_factory=BrokenServicer,
                             prepare=None, on_exit=None, collectors=None, busy=None)


def test_unexpected_exception_becomes_internal(tmp_path: Path) -> None:
    config = Config(service="broken", state_dir=tmp_path, uri="test:///default",
                    grace_period=0.5)
    daemon = Daemon(BROKEN, config)
    daemon.start(connect_wait=10)
    try:
        with compute_stub(daemon.socket_path) as stub:
            for _ in range(2):  # the server survives the first one
                error = rpc_error(stub.GetVersion, pb.GetVersionRequest())
                assert error.code() == grpc.StatusCode.INTERNAL, error
                assert "KeyError" in (error.details() or ""), error.details()
            streams: tuple[tuple[Any, Any, str], ...] = (
                    (stub.WatchDomainEvents, pb.WatchDomainEventsRequest(), "stream-key"),
                    (stub.GetDomainScreenshot, pb.GetDomainScreenshotRequest(name="test"),
                     "blocking-stream-key"))
            for call, request, key in streams:
                with pytest.raises(grpc.RpcError) as caught:
                    list(call(request, timeout=10))
                assert caught.value.code() == grpc.StatusCode.INTERNAL, caught.value
                assert key in (caught.value.details() or "")
            # a status chosen through gRPC's own API is kept, not made INTERNAL
            error = rpc_error(stub.GetNodeInfo, pb.GetNodeInfoRequest())
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            assert error.details() == "no node here"
            names = [d.name for d in stub.ListDomains(pb.ListDomainsRequest(),
                                                      timeout=10).domains]
            assert "test" in names
        assert health_status(daemon.socket_path) == SERVING
    finally:
        daemon.stop()
    assert not daemon.socket_path.exists()


def test_socket_dir_is_created_group_writable(tmp_path: Path) -> None:
    """Services of one pod run as different users in one group (fsGroup): the first to
    start creates run/, and the others must be able to put their sockets in it."""
    shared = tmp_path / "state"
    shared.mkdir()
    shared.chmod(0o2777)  # as the kubelet makes an emptyDir with fsGroup
    prepare_socket(shared / "run" / "compute.sock")
    mode = (shared / "run").stat().st_mode
    assert mode & 0o070 == 0o070 and mode & stat.S_ISGID
    # an existing directory (systemd's RuntimeDirectory) keeps its mode
    (shared / "run").chmod(0o750)
    prepare_socket(shared / "run" / "secret.sock")
    assert (shared / "run").stat().st_mode & 0o777 == 0o750


def test_a_failing_connect_hook_releases_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Event registration refused (here: the test driver has no secret events): each
    attempt's connection is closed again, never leaked, and the service stays down."""
    opened: list[libvirt.virConnect] = []
    closed: list[libvirt.virConnect] = []
    real_open, real_close = libvirt.open, libvirt.virConnect.close

    def counting_open(uri: str) -> libvirt.virConnect:
        conn = real_open(uri)
        opened.append(conn)
        return conn

    def counting_close(conn: libvirt.virConnect) -> int:
        closed.append(conn)
        return int(real_close(conn))

    monkeypatch.setattr(libvirt, "open", counting_open)
    monkeypatch.setattr(libvirt.virConnect, "close", counting_close)
    connection = LibvirtConnection("test:///default", min_delay=0.01, max_delay=0.01)
    connection.on_connect(lambda conn: conn.secretEventRegisterAny(
        None, libvirt.VIR_SECRET_EVENT_ID_LIFECYCLE, lambda *_: None, None))
    connection.start()
    try:
        deadline = time.monotonic() + 30  # hang guard
        while len(opened) < 3:
            assert time.monotonic() < deadline, "no retries"
            time.sleep(0.01)
        assert not connection.connected
    finally:
        connection.close()
    assert {id(conn) for conn in opened} == {id(conn) for conn in closed}


def test_stop_while_starting_undoes_the_start(tmp_path: Path) -> None:
    """A SIGTERM that lands while the service is still starting (here: held in its
    prepare step) stops it once its sockets are bound: nothing stays bound, no libvirt
    connection is opened afterwards, and both calls return."""
    preparing, release = threading.Event(), threading.Event()

    def slow_prepare(_config: Config) -> None:
        preparing.set()
        release.wait(10)

    spec = dataclasses.replace(COMPUTE, name="slow", servicer_factory=ComputeServicer,
                               prepare=slow_prepare, on_exit=None, collectors=None, busy=None)
    daemon = Daemon(spec, Config(service="slow", state_dir=tmp_path, uri="test:///default",
                                 grace_period=0.5))
    starter = threading.Thread(target=daemon.start, kwargs={"connect_wait": 10})
    starter.start()
    assert preparing.wait(10)
    stopper = threading.Thread(target=daemon.stop)
    stopper.start()
    time.sleep(0.2)  # the stop has begun and waits for the sockets
    release.set()
    starter.join(15)
    stopper.join(15)
    assert not starter.is_alive() and not stopper.is_alive()
    daemon.wait()
    assert not daemon.socket_path.exists()
    assert not daemon.connection.connected



# -- calls that outlive their caller ----------------------------------------------------


class StuckServicer(ComputeServicer):
    """GetVersion blocks like a libvirt call on a stopped guest, until released."""

    release = threading.Event()
    started = threading.Semaphore(0)

    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        StuckServicer.started.release()
        StuckServicer.release.wait(60)
        return pb.GetVersionResponse()


STUCK = dataclasses.replace(COMPUTE, name="stuck", servicer_factory=StuckServicer,
                            prepare=None, on_exit=None, collectors=None, busy=None)


def test_a_caller_is_answered_at_its_deadline_and_stuck_calls_are_bounded(
        tmp_path: Path) -> None:
    """The caller's deadline ends its wait at once; the thread stays in "libvirt",
    counted as abandoned and still holding its place among the calls in flight, so
    stuck calls cannot pile up beyond 4 x max_workers; other calls are served."""
    from services.common.metrics import ABANDONED_CALLS, ABANDONED_CALLS_RUNNING

    StuckServicer.release.clear()
    config = Config(service="stuck", state_dir=tmp_path, uri="test:///default",
                    grace_period=0.5, max_workers=1)
    daemon = Daemon(STUCK, config)
    daemon.start(connect_wait=10)
    method = "/virtmesh.compute.v1.ComputeService/GetVersion"
    abandoned = ABANDONED_CALLS.labels(method)._value.get()
    try:
        with compute_stub(daemon.socket_path) as stub:
            for _ in range(4):  # 4 x max_workers: one running, three queued
                started = time.monotonic()
                error = rpc_error(lambda request, timeout: stub.GetVersion(
                    request, timeout=0.5), pb.GetVersionRequest())
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started < 3
            assert StuckServicer.started.acquire(timeout=10)
            deadline = time.monotonic() + 10  # the server hears of the last one a bit later
            while ABANDONED_CALLS.labels(method)._value.get() < abandoned + 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert ABANDONED_CALLS_RUNNING._value.get() >= 4
            error = rpc_error(stub.GetVersion, pb.GetVersionRequest())
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many calls in flight (limit 4)" in (error.details() or "")
            watch = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=30)
            watch.initial_metadata()  # a watch is no blocking call: it is served
            watch.cancel()
            StuckServicer.release.set()
            deadline = time.monotonic() + 30
            while daemon.unary_calls.count:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert stub.GetVersion(pb.GetVersionRequest(), timeout=10) is not None
    finally:
        StuckServicer.release.set()
        daemon.stop()
