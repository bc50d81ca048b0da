"""The reaper of one embedded root: no QEMU of it outlives the program that runs it.

libvirt daemonizes QEMU (its parent is init, not us), so neither the process
group nor PR_SET_PDEATHSIG of the program reaches it, and a ``kill -9`` of the
program would leave the guest running with nobody to stop it. This process is
started by the program with a pipe on its stdin, in a session of its own (a
terminal's Ctrl-C does not reach it). The program writes ``pid N`` lines as it
learns QEMU's PIDs (held here as pidfds, so a reused PID is never hit) and
``keep`` when it is done with the root and wants it kept, ``stopped`` when it
saw its guest stop (so no QEMU can still be starting). When the pipe ends,
for whatever reason the program went away, the watchdog kills every QEMU of
the root (the pidfds, and any process of ours whose command line names the
root, for a QEMU that was still starting), and removes a temporary root.

    python -m virtmesh_run.watchdog ROOT [--remove-root]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

#: how long after the pipe ends a QEMU that libvirt was still starting is looked for
SETTLE_SECONDS = 2.0


def qemu_processes(root: Path) -> list[int]:
    """PIDs of this user's QEMU processes whose command line names ``root``."""
    needle = os.fsencode(f"{root}/")
    uid = os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu" in os.path.basename(argv[0]) and any(needle in a for a in argv):
            found.append(int(entry))
    return found


def _kill(pidfds: list[int], root: Path) -> int:
    killed = 0
    for fd in pidfds:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            killed += 1
    for pid in qemu_processes(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def watch(root: Path, remove_root: bool) -> int:
    pidfds: list[int] = []
    keep = stopped = False
    for line in sys.stdin.buffer:  # until the pipe ends: the program is gone
        words = line.split()
        if words[:1] == [b"pid"] and len(words) == 2 and words[1].isdigit():
            with contextlib.suppress(OSError):
                pidfds.append(os.pidfd_open(int(words[1])))
        elif words == [b"keep"]:
            keep = True
        elif words == [b"stopped"]:
            stopped = True
    killed = 0
    deadline = time.monotonic() + (0 if stopped else SETTLE_SECONDS)
    while True:
        killed += _kill(pidfds, root)
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if killed:
        print(f"virtmesh-run watchdog: killed {killed} QEMU process(es) of {root}",
              file=sys.stderr)
    if remove_root and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="virtmesh-run-watchdog")
    parser.add_argument("root", type=Path)
    parser.add_argument("--remove-root", action="store_true")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # only the pipe's end ends us
    return watch(args.root.absolute(), args.remove_root)


if __name__ == "__main__":
    sys.exit(main())
