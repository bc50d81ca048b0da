"""virtmesh-run as a real process on the example guest (TCG).

Each run gets a private embedded root; the shared capability cache of this
module is a temporary directory (VIRTMESH_CAPS_CACHE), so the first run probes
QEMU and the later ones start from its results.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest import example
from tests.conftest import ROOT
from virtmesh_run.watchdog import qemu_processes

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(120)]

BOOTED = "virtmesh-guest: booted"
RUN = [sys.executable, "-m", "virtmesh_run"]


@pytest.fixture(scope="module")
def guest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("guest-state")
    built = subprocess.run([str(ROOT / "guest" / "build-guest.sh"), str(state / "guest")],
                           capture_output=True, text=True)
    assert built.returncode == 0, f"build-guest.sh failed: {built.stderr}"
    return state


@pytest.fixture(scope="module")
def caps_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("caps")


def guest_xml(state: Path, directory: Path, name: str = "runme",
              initrd: Path | None = None) -> Path:
    xml = example.render(name, state, "qemu")
    if initrd is not None:
        xml = xml.replace(str(state.absolute() / "guest" / "initrd.img"), str(initrd))
    path = directory / f"{name}.xml"
    path.write_text(xml)
    return path


class Tool:
    """virtmesh-run --json as a process; its events read on a thread."""

    def __init__(self, xml: Path, caps: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, "VIRTMESH_CAPS_CACHE": str(caps), **(env or {})}
        self.process = subprocess.Popen([*RUN, str(xml), "--json", *args], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, env=environ)
        self.events: queue.Queue[dict[str, object]] = queue.Queue()
        self.seen: list[dict[str, object]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def expect(self, predicate, timeout: float, what: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no {what} in {timeout:.0f} s; saw {self.seen[-20:]}; "
                             f"stderr: {self.stderr()}")

    def booted(self, timeout: float = 60) -> dict[str, object]:
        return self.expect(lambda e: e["event"] == "console" and BOOTED in str(e["line"]),
                           timeout, "boot line")

    def started(self) -> dict[str, object]:
        return next(e for e in self.seen if e["event"] == "started")

    def stopped(self, timeout: float = 60) -> tuple[dict[str, object], int]:
        event = self.expect(lambda e: e["event"] == "stopped", timeout, "stopped event")
        return event, self.process.wait(20)

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(running)"
        return self.process.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def tool(xml: Path, caps: Path, *args: str) -> Iterator[Tool]:
    running = Tool(xml, caps, *args)
    try:
        yield running
    finally:
        running.kill()


def wait_gone(root: Path, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := qemu_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_guest_powering_off_ends_the_run_with_status_0(guest_dir: Path, caps_cache: Path,
                                                       tmp_path: Path) -> None:
    initrd = example.poweroff_initrd(guest_dir, tmp_path,
                                     f"{BOOTED} (and powering off by itself)")
    xml = guest_xml(guest_dir, tmp_path, initrd=initrd)
    with tool(xml, caps_cache) as run:
        run.booted()
        stopped, status = run.stopped()
        root = Path(str(run.started()["root"]))
    assert (stopped["reason"], stopped["exit_code"], status) == ("poweroff", 0, 0)
    assert not root.exists(), "the temporary root was not removed"
    assert not qemu_processes(root)


def test_sigterm_presses_the_power_button(guest_dir: Path, caps_cache: Path,
                                          tmp_path: Path) -> None:
    with tool(guest_xml(guest_dir, tmp_path), caps_cache, "--grace-period", "30") as run:
        run.booted()
        run.process.send_signal(signal.SIGTERM)
        run.expect(lambda e: "power button pressed" in str(e.get("line", "")), 30,
                   "the guest's ACPI handler")
        stopped, status = run.stopped()
    assert (stopped["reason"], status) == ("poweroff (SIGTERM)", 0)


def test_a_guest_that_does_not_power_off_is_destroyed_after_the_grace(
        guest_dir: Path, caps_cache: Path, tmp_path: Path) -> None:
    # Before the guest has booted, its acpid does not run: the button is not heard.
    with tool(guest_xml(guest_dir, tmp_path), caps_cache, "--grace-period", "0.5") as run:
        run.expect(lambda e: e["event"] == "started", 60, "started")
        run.process.send_signal(signal.SIGINT)
        stopped, status = run.stopped()
    assert status == 1
    assert str(stopped["reason"]).startswith("destroyed (SIGINT: it did not power off"), stopped


def test_a_crashed_guest_gives_a_non_zero_status_and_the_reason(
        guest_dir: Path, caps_cache: Path, tmp_path: Path) -> None:
    with tool(guest_xml(guest_dir, tmp_path), caps_cache) as run:
        run.booted()
        root = Path(str(run.started()["root"]))
        pids = qemu_processes(root)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        stopped, status = run.stopped()
    assert status == 1
    assert str(stopped["reason"]).startswith("crashed"), stopped


def test_kill_9_of_the_tool_leaves_no_qemu_and_no_root(guest_dir: Path, caps_cache: Path,
                                                        tmp_path: Path) -> None:
    with tool(guest_xml(guest_dir, tmp_path), caps_cache) as run:
        run.booted()
        root = Path(str(run.started()["root"]))
        assert qemu_processes(root), "no QEMU of the run's root to begin with"
        run.kill()
        killed_at = time.monotonic()
        left = wait_gone(root, 5)
        gone_after = time.monotonic() - killed_at
    assert not left, f"QEMU {left} outlived virtmesh-run by 5 s"
    deadline = time.monotonic() + 5
    while root.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not root.exists(), "the temporary root outlived virtmesh-run"
    print(f"QEMU gone {gone_after:.2f} s after kill -9")


def test_two_runs_at_once_are_isolated(guest_dir: Path, caps_cache: Path, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    # The same guest name in both: each run has its own root, names, logs and state.
    xml = guest_xml(guest_dir, tmp_path, name="twin")
    short = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))  # QEMU's sockets: 108 bytes
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    roots = [short / "a", short / "b"]
    with tool(xml, caps_cache, "--root", str(roots[0])) as first, \
            tool(xml, caps_cache, "--root", str(roots[1])) as second:
        for run in (first, second):
            run.booted(90)
        pids = [qemu_processes(root) for root in roots]
        assert len(pids[0]) == 1 and len(pids[1]) == 1 and pids[0] != pids[1], pids
        first.process.send_signal(signal.SIGTERM)
        first_stop, first_status = first.stopped()
        # the other guest still runs, untouched
        assert second.process.poll() is None and qemu_processes(roots[1]) == pids[1]
        second.process.send_signal(signal.SIGTERM)
        second_stop, second_status = second.stopped()
    assert (first_status, second_status) == (0, 0), (first_stop, second_stop)
    # the XML names a console log file: the runs do not share it, each keeps its own
    assert not (guest_dir / "guest" / "twin.console.log").exists()
    for root in roots:  # --root: kept, with its own console log and QEMU log
        assert BOOTED in (root / "console.log").read_text(errors="replace")
        assert (root / "log" / "qemu" / "twin.log").exists()
        assert not qemu_processes(root)


def test_usage_errors_give_status_2(tmp_path: Path) -> None:
    missing = subprocess.run([*RUN, str(tmp_path / "nope.xml")], capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode == 2 and "nope.xml" in missing.stderr
    (tmp_path / "bad.xml").write_text("<domain")
    bad = subprocess.run([*RUN, str(tmp_path / "bad.xml"), "--caps-cache", "none"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "does not parse" in bad.stderr


def test_the_python_api(guest_dir: Path, caps_cache: Path, tmp_path: Path) -> None:
    """In a process of its own: libvirt's embedded driver allows one root per process."""
    script = f"""
import json, sys
from pathlib import Path
from services.common.qemu_caps import SharedCache
from virtmesh_run import run
xml = Path({str(guest_xml(guest_dir, tmp_path))!r}).read_text()
with run(xml, caps_cache=SharedCache(Path({str(caps_cache)!r}))) as vm:
    line = vm.wait_console("{BOOTED}", 60)
    vm.send_console(b"echo typed-$((6 * 7))\\n")  # the guest's shell on its serial port
    echoed = vm.wait_console("typed-42", 30)
    vm.send_console(b"poweroff -f\\n")
    stopped = vm.wait(60)
    root = vm.root
print(json.dumps([line, echoed, stopped.reason, stopped.exit_code, root.exists()]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=100)
    assert done.returncode == 0, done.stderr
    line, echoed, reason, code, root_left = json.loads(done.stdout.splitlines()[-1])
    assert BOOTED in line and echoed.strip() == "typed-42"
    assert (reason, code, root_left) == ("poweroff", 0, False)


def test_console_piped(guest_dir: Path, caps_cache: Path, tmp_path: Path) -> None:
    """stdin is no terminal: what it says goes to the guest's shell, and the console
    comes out on stdout."""
    environ = {**os.environ, "VIRTMESH_CAPS_CACHE": str(caps_cache)}
    process = subprocess.Popen([*RUN, str(guest_xml(guest_dir, tmp_path)), "--console"],
                               cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environ)
    assert process.stdin is not None and process.stdout is not None
    try:
        lines: queue.Queue[bytes] = queue.Queue()
        output = process.stdout

        def read() -> None:
            for line in output:
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()

        def expect(text: bytes, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    if text in lines.get(timeout=0.2):
                        return
            raise AssertionError(f"no {text!r} on the console in {timeout:.0f} s")

        expect(BOOTED.encode(), 60)
        process.stdin.write(b"echo piped-$((6 * 7))\n")
        process.stdin.flush()
        expect(b"piped-42", 30)
        process.stdin.write(b"poweroff -f\n")
        process.stdin.close()
        assert process.wait(30) == 0
        assert process.stderr is not None
        assert "stopped: poweroff" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_console_on_a_terminal_is_raw_and_ctrl_bracket_leaves(
        guest_dir: Path, caps_cache: Path, tmp_path: Path) -> None:
    """On a terminal: raw mode while the guest runs, restored after; Ctrl-] leaves,
    which shuts the guest down (it is the program's guest)."""
    import termios  # noqa: PLC0415

    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    environ = {**os.environ, "VIRTMESH_CAPS_CACHE": str(caps_cache)}
    process = subprocess.Popen([*RUN, str(guest_xml(guest_dir, tmp_path)), "--console"],
                               cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                               env=environ)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while BOOTED.encode() not in seen:
            assert time.monotonic() < deadline, seen[-2000:]
            seen += os.read(master, 65536)
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO
        os.write(master, b"\x1d")
        assert process.wait(40) == 0
        assert termios.tcgetattr(slave) == before
        assert process.stderr is not None
        assert "stopped: poweroff (Ctrl-])" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(slave)
