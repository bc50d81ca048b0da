"""``virtmesh console`` and ``virtmesh channel``: a guest's serial console or
virtio-serial channel on this terminal, through the gateway.

On a terminal it is virsh console: raw mode, every key goes to the guest (Ctrl-C
included) and ``Ctrl-]`` leaves. Otherwise it is for scripts: stdin is sent as
it comes, and once it ends the console is read for ``--linger`` seconds more,
then closed, so ``echo 'uname -a' | virtmesh console vm`` prints the answer.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client import terminal
from virtmesh_client.cli_commands import CommandFactory, Commands
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_output import Output
from virtmesh_client.client import Client, Session


def _feed(session: Session, interactive: bool, linger: float) -> None:
    """stdin to the session until Ctrl-] (interactive) or its end, then close it."""
    if not terminal.forward(sys.stdin.fileno(), session.send, interactive):
        threading.Event().wait(linger)
    session.close()


def attach(session: Session, what: str, linger: float) -> None:
    """Relay the session and this terminal until either ends."""
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Connected to {what}\r\nEscape character is ^] (Ctrl + ])", file=sys.stderr)
    threading.Thread(target=_feed, args=(session, interactive, linger), daemon=True,
                     name="console-stdin").start()
    stdout = sys.stdout.fileno()
    with terminal.raw(sys.stdin.fileno()):
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
