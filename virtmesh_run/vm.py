"""One guest on a private embedded QEMU root, whose life is its program's.

    from virtmesh_run import run

    with run(xml) as vm:                 # a temporary root, the guest started transient
        vm.wait_console("login:", 30)    # its serial console, line by line
        vm.shutdown()                    # ACPI power button
        stopped = vm.wait(60)            # Stopped(reason="poweroff", exit_code=0)

Leaving the block destroys a guest still running, removes a temporary root and
stops the watchdog. libvirt's embedded driver allows one root per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt

from services.common.config import Config
from services.common.libvirt_connection import start_event_loop
from services.common.qemu_caps import SharedCache
from services.compute.backend import prepare_embedded_root
from services.compute.backend_trouble import last_qemu_error

log = logging.getLogger(__name__)

#: what a stopped guest's libvirt event detail means, and the program's exit status
STOP_REASONS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: ("poweroff", 0),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: ("destroyed", 1),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: ("crashed", 1),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: ("crashed (QEMU exited unexpectedly)", 1),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: ("migrated", 1),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: ("saved", 1),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: ("snapshot reverted", 1),
}
_STATE_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
}
#: a console line longer than this is cut into pieces
MAX_LINE = 4096
#: console lines kept for wait_console() and lines()
KEEP_LINES = 2000
#: seconds the stopped event has to arrive once the guest is found gone
EVENT_GRACE = 3.0


class RunError(RuntimeError):
    """The guest could not be run; the message says why."""


@dataclasses.dataclass(frozen=True)
class Event:
    """``started``, ``console`` (one line of the serial console) or ``stopped``."""

    kind: str
    time: float
    name: str
    line: str = ""
    reason: str = ""
    exit_code: int | None = None

    def as_dict(self) -> dict[str, object]:
        record: dict[str, object] = {"event": self.kind, "time": round(self.time, 3),
                                     "name": self.name}
        if self.kind == "console":
            record["line"] = self.line
        if self.kind == "stopped":
            record.update(reason=self.reason, exit_code=self.exit_code)
        return record


@dataclasses.dataclass(frozen=True)
class Stopped:
    reason: str
    exit_code: int


def console_to_pty(xml: str) -> tuple[str, str]:
    """The domain XML with its first serial port on a pty the program reads (whatever
    it was, and without a log file of its own; a guest without one gets one), and
    the guest's name."""
    try:
        domain = ET.fromstring(xml)
    except ET.ParseError as error:
        raise RunError(f"the guest's XML does not parse: {error}") from None
    name = domain.findtext("name")
    if domain.tag != "domain" or not name:
        raise RunError("the guest's XML is not a <domain> with a <name>")
    devices = domain.find("devices")
    if devices is None:
        devices = ET.SubElement(domain, "devices")
    serials = devices.findall("serial")
    for element in devices.findall("console"):
        target = element.find("target")
        if serials or target is None or target.get("type", "serial") == "serial":
            devices.remove(element)  # libvirt pairs console 0 with serial 0 itself
    if serials:
        first = serials[0]
        first.attrib.clear()
        first.set("type", "pty")
        # its <log>, its <source> go: the output is ours (ROOT/console.log), and a file
        # named in the XML would be shared by every run of it
        for child in list(first):
            if child.tag != "target":
                first.remove(child)
    else:
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "target", port="0")
    return ET.tostring(domain, encoding="unicode"), name


def temporary_root() -> Path:
    """A short path: QEMU's monitor socket lives under the root (108-byte limit)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    if len(base) > 40:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="vmrun-", dir=base))


class Run:
    """A guest on its own embedded root; see the module's docstring."""

    def __init__(self, xml: str, *, root: Path | None = None, keep_root: bool = False,
                 console_log: Path | None = None, caps_cache: SharedCache | None = None,
                 on_output: Callable[[bytes], None] | None = None,
                 events: bool = True) -> None:
        self.xml, self.name = console_to_pty(xml)
        self.temporary = root is None
        self.root = (root or temporary_root()).absolute()
        self.keep_root = keep_root or not self.temporary
        self.console_log = console_log or self.root / "console.log"
        self.caps_cache = caps_cache if caps_cache is not None else SharedCache.from_setting()
        self.on_output = on_output
        self.seeded: list[str] = []
        self.events: queue.Queue[Event] = queue.Queue(maxsize=10000) if events \
            else queue.Queue(maxsize=1)
        self._want_events = events
        self.dropped_events = 0
        self.lines: list[str] = []
        self._lines_cond = threading.Condition()
        self._partial = b""
        self._log_file: object = None
        self._stopped: Stopped | None = None
        self._stopped_cond = threading.Condition()
        self._conn: libvirt.virConnect | None = None
        self._dom: libvirt.virDomain | None = None
        self._stream: libvirt.virStream | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._requested = ""  # why we asked the guest to stop, for its stopped reason
        self._gone_since = 0.0
        self._console_ended = False
        self.started_at = 0.0

    # -- start and stop ------------------------------------------------------

    def start(self) -> Run:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_watchdog()
        # the compute service's qemu.conf; the cache is seeded here, as the caller asked
        prepare_embedded_root(Config(service="compute", state_dir=self.root,
                                     uri=f"qemu:///embed?root={self.root}", caps_cache="none"))
        self.seeded = self.caps_cache.seed(self.root)
        start_event_loop()
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.console_log, "ab", buffering=0)  # noqa: SIM115
        try:
            self._conn = libvirt.open(f"qemu:///embed?root={self.root}")
            self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                              self._lifecycle, None)
            # paused first: the console is attached before the guest prints anything
            self._dom = self._conn.createXML(self.xml, libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as error:
            raise RunError(f"cannot start {self.name}: {error.get_error_message()}") from None
        self._report_qemu_pids()
        self._open_console()
        try:
            self._dom.resume()
        except libvirt.libvirtError as error:
            raise RunError(f"cannot start {self.name}: {error.get_error_message()}") from None
        self.started_at = time.monotonic()
        self._put(Event("started", time.time(), self.name))
        # now, not at the end: a concurrent or a killed run still leaves them behind
        self.caps_cache.collect(self.root)
        return self

    def _start_watchdog(self) -> None:
        argv = [sys.executable, "-m", "virtmesh_run.watchdog", str(self.root)]
        if not self.keep_root:
            argv.append("--remove-root")
        self._watchdog = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                          start_new_session=True, close_fds=True)

    def _tell_watchdog(self, line: str) -> None:
        if self._watchdog and self._watchdog.stdin:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.write(line.encode() + b"\n")
                self._watchdog.stdin.flush()

    def _report_qemu_pids(self) -> None:
        pidfile = self.root / "run" / "qemu" / f"{self.name}.pid"
        with contextlib.suppress(OSError, ValueError):
            self._tell_watchdog(f"pid {int(pidfile.read_text().strip())}")

    @property
    def qemu_pid(self) -> int | None:
        pidfile = self.root / "run" / "qemu" / f"{self.name}.pid"
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def shutdown(self, why: str = "") -> None:
        """Press the ACPI power button."""
        self._requested = why or self._requested
        with contextlib.suppress(libvirt.libvirtError):
            if self._dom is not None:
                self._dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy(self, why: str = "") -> None:
        self._requested = why or self._requested
        with contextlib.suppress(libvirt.libvirtError):
            if self._dom is not None:
                self._dom.destroy()

    def stop(self, grace: float, why: str = "") -> Stopped:
        """ACPI shutdown, then destroy if the guest is still up after ``grace`` s."""
        self.shutdown(why)
        stopped = self.wait(grace)
        if stopped is None:
            self.destroy(f"{why + ': ' if why else ''}it did not power off in {grace:g} s")
            stopped = self.wait(10)
        return stopped or Stopped("unknown", 1)

    def wait(self, timeout: float | None = None) -> Stopped | None:
        """How the guest stopped, or None if it still runs after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._stopped_cond:
            while self._stopped is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._stopped_cond.wait(min(1.0, left) if left is not None else 1.0)
                if self._stopped is None:
                    self._check_state()
            return self._stopped

    @property
    def requested(self) -> str:
        """Why the program asked the guest to stop ("" if it did not)."""
        return self._requested

    @property
    def stopped(self) -> Stopped | None:
        return self._stopped

    def close(self) -> None:
        """Destroy a guest still running, keep the probes, let go of the root."""
        if self._dom is not None and self._stopped is None:
            self.destroy("the program ended")
            self.wait(10)
        stream, self._stream = self._stream, None
        if stream is not None and not self._console_ended:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        with contextlib.suppress(OSError):
            self.caps_cache.collect(self.root)
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        if self._watchdog is not None:
            if self.keep_root:
                self._tell_watchdog("keep")
            if self._stopped is not None:
                self._tell_watchdog("stopped")  # no QEMU is starting: one look will do
            if self._watchdog.stdin:
                with contextlib.suppress(OSError):
                    self._watchdog.stdin.close()
            # it still looks for QEMU a moment; the root is gone when it is done
            try:
                self._watchdog.wait(10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the console ---------------------------------------------------------

    def _open_console(self) -> None:
        assert self._conn is not None and self._dom is not None
        stream = self._conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            self._dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except libvirt.libvirtError as error:
            raise RunError(f"cannot open the console of {self.name}: "
                           f"{error.get_error_message()}") from None
        stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE
                                | libvirt.VIR_STREAM_EVENT_ERROR
                                | libvirt.VIR_STREAM_EVENT_HANGUP, self._readable, None)
        self._stream = stream

    def _readable(self, stream: libvirt.virStream, _events: int, _opaque: object) -> None:
        """On libvirt's event-loop thread: drain what the console has."""
        while True:
            try:
                data = stream.recv(65536)
            except libvirt.libvirtError:
                data = b""
            if data == -2:  # nothing more for now
                return
            if not data:  # the guest went away
                self._console_ended = True
                with contextlib.suppress(libvirt.libvirtError):
                    stream.eventRemoveCallback()
                with contextlib.suppress(libvirt.libvirtError):
                    stream.finish()
                self._flush_partial()
                return
            assert isinstance(data, bytes)
            self._output(data)

    def _output(self, data: bytes) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.write(data)  # type: ignore[attr-defined]
        if self.on_output is not None:
            self.on_output(data)
        self._partial += data
        *complete, self._partial = self._partial.split(b"\n")
        while len(self._partial) > MAX_LINE:
            complete.append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        for raw in complete:
            self._line(raw)

    def _flush_partial(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode(errors="replace")
        with self._lines_cond:
            self.lines.append(line)
            del self.lines[:-KEEP_LINES]
            self._lines_cond.notify_all()
        if self._want_events:
            self._put(Event("console", time.time(), self.name, line=line))

    def send_console(self, data: bytes) -> None:
        """Type ``data`` into the guest's serial console."""
        stream = self._stream
        while data and stream is not None:
            try:
                sent = stream.send(data)
            except libvirt.libvirtError as error:
                raise RunError(f"console of {self.name}: {error.get_error_message()}") \
                    from None
            if sent == -2:
                time.sleep(0.01)
                continue
            data = data[sent:]

    def wait_console(self, text: str, timeout: float) -> str:
        """The first console line that contains ``text``; RunError after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lines_cond:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped is not None:
                    raise RunError(f"{self.name}: no console line with {text!r} "
                                   f"({'stopped' if self._stopped else f'{timeout:g} s'})")
                self._lines_cond.wait(min(left, 0.5))

    # -- life ----------------------------------------------------------------

    def _put(self, event: Event) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:
            if event.kind == "console":
                self.dropped_events += 1
                return
            with contextlib.suppress(queue.Empty):
                self.events.get_nowait()  # started and stopped always get through
            with contextlib.suppress(queue.Full):
                self.events.put_nowait(event)

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                   detail: int, _opaque: object) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and dom.name() == self.name:
            self._finish(detail)

    def _check_state(self) -> None:
        """Events are the way; this is the fallback when one never came."""
        dom = self._dom
        if dom is None or self._stopped is not None:
            return
        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            # A transient guest that stopped is gone at once; its event, which says
            # how, is on its way: give it a moment before saying we cannot tell.
            now = time.monotonic()
            self._gone_since = self._gone_since or now
            if now - self._gone_since > EVENT_GRACE:
                self._finish(None)
            return
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            self._finish(_STATE_REASONS.get(reason))

    def _finish(self, detail: int | None) -> None:
        reason, code = STOP_REASONS.get(detail, ("stopped", 1)) if detail is not None \
            else ("stopped (libvirt did not say how)", 1)
        if reason == "destroyed" and self._requested:
            reason = f"destroyed ({self._requested})"
        elif reason == "poweroff" and self._requested:
            reason = f"poweroff ({self._requested})"
        elif code and reason.startswith("crashed"):
            last = self.qemu_log_error()
            if last:
                reason = f"{reason}: {last}"
        with self._stopped_cond:
            if self._stopped is not None:
                return
            self._stopped = Stopped(reason, code)
            self._stopped_cond.notify_all()
        with self._lines_cond:
            self._lines_cond.notify_all()
        self._flush_partial()
        self._put(Event("stopped", time.time(), self.name, reason=reason, exit_code=code))

    def qemu_log_error(self) -> str:
        """The last error QEMU wrote to its log in this run, if any."""
        return last_qemu_error(self.root / "log" / "qemu" / f"{self.name}.log")


@contextlib.contextmanager
def run(xml: str, **options: object) -> Iterator[Run]:
    """Start ``xml`` on a private embedded root; see ``Run`` for the options."""
    vm = Run(xml, **options)  # type: ignore[arg-type]
    try:
        vm.start()
        yield vm
    finally:
        vm.close()
