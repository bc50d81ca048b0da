"""``virtmesh console`` and ``virtmesh channel``: a guest's serial console or
virtio-serial channel on this terminal, through the gateway.

On a terminal it is virsh console: raw mode, every key goes to the guest (Ctrl-C
included) and ``Ctrl-]`` leaves. Otherwise it is for scripts: stdin is sent as
it comes, and once it ends the console is read for ``--linger`` seconds more,
then closed, so ``echo 'uname -a' | virtmesh console vm`` prints the answer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import termios
import threading
import tty
from collections.abc import Iterator

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory, Commands
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_output import Output
from virtmesh_client.client import Client, Session

#: Ctrl-], as virsh console
ESCAPE = b"\x1d"


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """The terminal in raw mode, restored whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _feed(session: Session, interactive: bool, linger: float) -> None:
    """stdin to the session until Ctrl-] (interactive) or its end, then close it."""
    stdin = sys.stdin.fileno()
    try:
        while data := os.read(stdin, 4096):
            if interactive and ESCAPE in data:
                session.send(data[:data.index(ESCAPE)])
                break
            session.send(data)
        else:
            threading.Event().wait(linger)
    except OSError:
        pass  # stdin closed under us: end as at its end
    session.close()


def attach(session: Session, what: str, linger: float) -> None:
    """Relay the session and this terminal until either ends."""
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Connected to {what}\r\nEscape character is ^] (Ctrl + ])", file=sys.stderr)
    threading.Thread(target=_feed, args=(session, interactive, linger), daemon=True,
                     name="console-stdin").start()
    stdout = sys.stdout.fileno()
    with _raw(sys.stdin.fileno()) if interactive else contextlib.nullcontext():
        for data in session:
            while data:
                data = data[os.write(stdout, data):]
    if interactive:
        print("", file=sys.stderr)


def cmd_console(client: Client, args: argparse.Namespace, out: Output) -> None:
    with client.console(args.name, args.devname or "", args.force) as session:
        device = session.opened.device or "console"
        attach(session, f"domain '{args.name}' ({device})", args.linger)


def cmd_channel(client: Client, args: argparse.Namespace, out: Output) -> None:
    with client.session("OpenDomainChannel", pb.OpenDomainChannelRequest(
            name=args.name, channel=args.channel, force=args.force)) as session:
        attach(session, f"channel '{args.channel}' of domain '{args.name}'", args.linger)


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    force = "take it over from another session"
    linger = "without a terminal: seconds to keep reading after stdin ends (default 1)"
    sub = domains.add("console", cmd_console, "connect to a guest's serial console")
    sub.add_argument("--devname", metavar="DEV",
                     help="the console's alias, e.g. serial0 (default: the first console)")
    sub.add_argument("--force", action="store_true", help=force)
    sub.add_argument("--linger", type=float, default=1.0, metavar="SECONDS", help=linger)
    sub = domains.add("channel", cmd_channel, "connect to a guest's virtio-serial channel")
    sub.add_argument("channel", metavar="CHANNEL",
                     help="the channel's target name, e.g. org.qemu.guest_agent.0, or alias")
    sub.add_argument("--force", action="store_true", help=force)
    sub.add_argument("--linger", type=float, default=1.0, metavar="SECONDS", help=linger)
