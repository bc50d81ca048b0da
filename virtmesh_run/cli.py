"""virtmesh-run: one guest on a private embedded QEMU root, for as long as it runs.

    virtmesh-run GUEST.xml [--root DIR] [--keep-root] [--console] [--json]
                 [--console-log PATH] [--timeout S] [--grace-period S] [--caps-cache DIR]

Exit status: 0 when the guest powered off (by itself, or after the ACPI power
button pressed on SIGINT/SIGTERM/Ctrl-]/--timeout), 1 when it crashed, failed or
was destroyed (also: it did not power off within the grace period), 124 when
--timeout ended it (whatever way it then stopped), 2 when it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from services.common.qemu_caps import SharedCache
from virtmesh_client import terminal

if TYPE_CHECKING:
    from virtmesh_run.vm import Run, Stopped

TIMEOUT_STATUS = 124


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtmesh-run", description=__doc__.split("\n")[0])
    parser.add_argument("xml", type=Path, help="the guest's domain XML ('-': stdin)")
    parser.add_argument("--root", type=Path,
                        help="the embedded root (default: a temporary one, removed after)")
    parser.add_argument("--keep-root", action="store_true",
                        help="keep the temporary root (its console.log, QEMU log, cache)")
    parser.add_argument("--console", action="store_true",
                        help="the serial console on this terminal (raw; Ctrl-] leaves); "
                             "when stdin is no terminal, stdin and stdout are piped to it")
    parser.add_argument("--console-log", type=Path,
                        help="write the console's output here (default: ROOT/console.log)")
    parser.add_argument("--json", action="store_true",
                        help="JSON event lines on stdout: started, console, stopped")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="shut the guest down after this many seconds (0: never)")
    parser.add_argument("--grace-period", type=float, default=30.0,
                        help="seconds an ACPI shutdown gets before the guest is destroyed")
    parser.add_argument("--caps-cache", default=None,
                        help="shared QEMU capability cache (default $VIRTMESH_CAPS_CACHE, "
                             "else ~/.cache/virtmesh/qemu-capabilities; 'none': off)")
    return parser


class _Console:
    """The terminal (raw) or stdin/stdout (piped) joined to the guest's console;
    Ctrl-] on a terminal sets ``leave``."""

    def __init__(self, vm: Run, leave: threading.Event) -> None:
        self.vm = vm
        self.leave = leave
        self.fd = sys.stdin.fileno()
        self._raw = terminal.raw(self.fd)

    def __enter__(self) -> _Console:
        interactive = self._raw.__enter__()
        threading.Thread(target=self._forward_input, args=(interactive,),
                         name="console-input", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._raw.__exit__(*exc)

    def _forward_input(self, interactive: bool) -> None:
        # piped input that ends leaves the guest running on
        if terminal.forward(self.fd, self._send, interactive):
            self.leave.set()

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # RunError: the console is gone
            self.vm.send_console(data)


def _write_stdout(data: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), data)


def _say(message: str, json_out: bool, stream: TextIO = sys.stderr) -> None:
    if not json_out:
        print(f"virtmesh-run: {message}", file=stream, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # libvirt reads this when it is loaded. Its log lines ("tainted: high-privileges" as
    # root, a dmidecode it could not run...) are no business of this terminal: errors
    # that matter reach us as exceptions. LIBVIRT_LOG_OUTPUTS set by the caller wins.
    os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", "4:file:/dev/null")
    from virtmesh_run.vm import Run, RunError

    if args.console and args.json:
        print("virtmesh-run: --console and --json both want stdout; choose one",
              file=sys.stderr)
        return 2
    try:
        xml = sys.stdin.read() if str(args.xml) == "-" else args.xml.read_text()
    except OSError as error:
        print(f"virtmesh-run: {args.xml}: {error.strerror}", file=sys.stderr)
        return 2

    requests: list[str] = []  # why we are asked to stop: signal names, in order
    wake = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        requests.append(signal.Signals(signum).name)
        wake.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    try:
        vm = Run(xml, root=args.root, keep_root=args.keep_root, console_log=args.console_log,
                 caps_cache=SharedCache.from_setting(args.caps_cache),
                 on_output=_write_stdout if args.console else None, events=args.json)
    except RunError as error:
        print(f"virtmesh-run: {error}", file=sys.stderr)
        return 2
    emit = _json_emitter() if args.json else None
    try:
        with vm:
            try:
                vm.start()
            except RunError as error:
                print(f"virtmesh-run: {error}", file=sys.stderr)
                return 2
            _say(f"{vm.name} started on {vm.root} "
                 f"(console {'here; Ctrl-] leaves' if args.console else vm.console_log})",
                 args.json)
            stopped = _supervise(vm, args, requests, wake, emit)
            # as soon as the guest is gone; tearing the root down comes after
            if emit is not None:
                emit({"event": "stopped", "time": round(time.time(), 3), "name": vm.name,
                      "reason": stopped.reason, "exit_code": stopped.exit_code})
            _say(f"{vm.name} stopped: {stopped.reason}", args.json)
    finally:
        if emit is not None:
            _drain(vm, emit)
    if args.keep_root or args.root:
        _say(f"root kept at {vm.root}", args.json)
    return stopped.exit_code


def _json_emitter() -> Any:
    def emit(record: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
    return emit


def _drain(vm: Run, emit: Any) -> None:
    while True:
        try:
            event = vm.events.get_nowait()
        except queue.Empty:
            return
        if event.kind == "started":
            emit({**event.as_dict(), "root": str(vm.root), "console_log": str(vm.console_log)})
        elif event.kind != "stopped":  # main() says how it ended, with the exit status
            emit(event.as_dict())


def _supervise(vm: Run, args: argparse.Namespace, requests: list[str],
               wake: threading.Event, emit: Any) -> Stopped:
    leave = threading.Event()
    deadline = vm.started_at + args.timeout if args.timeout > 0 else None
    grace_until: float | None = None
    timed_out = False
    handled = 0
    console = _Console(vm, leave) if args.console else contextlib.nullcontext()
    with console:
        while True:
            if emit is not None:
                _drain(vm, emit)
            stopped = vm.wait(0.1)
            if stopped is not None:
                break
            why = ""
            if len(requests) > handled:
                handled = len(requests)
                why = requests[-1]
            elif leave.is_set() and grace_until is None:
                why = "Ctrl-]"
            elif deadline is not None and time.monotonic() > deadline and grace_until is None:
                why, timed_out = f"--timeout {args.timeout:g} s", True
            if why:
                if grace_until is None:
                    vm.shutdown(why)
                    grace_until = time.monotonic() + args.grace_period
                else:  # asked twice: no more waiting
                    vm.destroy(f"{why} again")
            if grace_until is not None and time.monotonic() > grace_until:
                vm.destroy(f"{vm.requested or 'stop'}: it did not power off in "
                           f"{args.grace_period:g} s")
                grace_until = float("inf")
            wake.clear()
    if emit is not None:
        _drain(vm, emit)
    if timed_out:
        return dataclasses.replace(stopped, exit_code=TIMEOUT_STATUS)
    return stopped


def command() -> None:
    sys.exit(main())


if __name__ == "__main__":
    command()
