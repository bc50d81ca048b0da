"""The command factory: what commands on every kind of object share.

Most commands about a domain, pool, network, device... are one of a few shapes:
send the object's name and say what was done, print its XML, mark it autostart,
define it from XML, follow its events. A ``Kind`` says how the command line names
one object and how messages speak of it; ``Commands`` turns it into those
commands, parser and handler together, so a new kind of object is a few
declarations and only what is particular to it is written out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from virtmesh.events.v1.events_pb2 import EventGap
from virtmesh_client.cli_fleet import FanOut, Handler
from virtmesh_client.cli_output import Output, read_input
from virtmesh_client.client import Client, EventStream

#: ``command(name, handler, summary, fan_out=None)`` -> its subparser, with the
#: global flags; what each cli_<service>.py's ``register`` receives
CommandFactory = Callable[..., argparse.ArgumentParser]
#: a yes/no option, ``(--flag-name, help)``, sent as the request field ``flag_name``
Flag = tuple[str, str]

XML_FILE = argparse.FileType("r")
VALIDATE: Flag = ("--validate", "check the XML schema first")


def enum_choices(enum: Any, prefix: str, separator: str = "_") -> dict[str, Any]:
    """An enum's values by the names the command line takes (``DOMAIN_STATE_RUNNING``
    as ``running``), without the unspecified zero."""
    return {name.removeprefix(prefix).lower().replace("_", separator): value
            for name, value in enum.items() if value}


def either(args: argparse.Namespace, yes: str, no: str) -> bool | None:
    """A list filter given as a pair of options: True, False, or None for neither."""
    return True if getattr(args, yes) else False if getattr(args, no) else None


def follow(events: EventStream, what: str, text: Callable[[Any], str], out: Output,
           count: int | None) -> None:
    """Print a Watch… stream's events as they come, until Ctrl-C or ``count`` events.
    A gap (events lost while the stream was away) is said on stderr, and as a JSON
    line with ``--json``; it does not count as an event."""
    with events:
        print(f"watching {what} events; Ctrl-C to stop", file=sys.stderr, flush=True)
        seen = 0
        for event in events:
            if event.HasField("gap"):
                notice(gap_text(event.gap))
                if out.json:
                    out.line(event, "")
                continue
            out.line(event, text(event))
            seen += 1
            if seen == count:
                return


def notice(text: str) -> None:
    print(f"virtmesh: {text}", file=sys.stderr, flush=True)


_GAP_REASONS = {
    EventGap.REASON_EPOCH_CHANGED: "the service restarted or reconnected to libvirt",
    EventGap.REASON_WINDOW_PASSED: "they have left the service's event window",
    EventGap.REASON_UNKNOWN_POSITION: "the service does not know the last event seen",
}


def gap_text(gap: Any) -> str:
    why = _GAP_REASONS.get(gap.reason, "for an unknown reason")
    return f"events may have been missed ({why}): re-read the state to resync"


def watch(client: Client, method: str, request: Any) -> EventStream:
    """Open a Watch… stream of any service; returns once the server has subscribed us.
    It reconnects after a restart and resumes where it was."""
    return client.events(method, request, notice=notice)


def add_count(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")


def _flag_fields(args: argparse.Namespace, flags: tuple[Flag, ...]) -> dict[str, bool]:
    """``--force-boot`` as the request field ``force_boot``, and so on."""
    names = [option.removeprefix("--").replace("-", "_") for option, _ in flags]
    return {name: getattr(args, name) for name in names}


def add_flags(sub: argparse.ArgumentParser, *flags: Flag) -> None:
    for option, help_text in flags:
        sub.add_argument(option, action="store_true", help=help_text)


@dataclasses.dataclass(frozen=True)
class Argument:
    """A positional argument naming an object, and the request field it fills."""

    dest: str
    metavar: str
    help: str
    field: str = "name"


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of object: its positional arguments (a volume's are its pool and its
    name), how messages name one (``title``, e.g. ``"Pool '{}'"``), the field that
    holds it in Define/Create responses and the argument of its event commands."""

    title: str
    arguments: tuple[Argument, ...]
    response_field: str = ""
    plural: str = ""

    def name(self, args: argparse.Namespace) -> str:
        """The object's own name on the command line (a volume's, not its pool's)."""
        return str(getattr(args, self.arguments[-1].dest))

    def label(self, name: str) -> str:
        """How messages name one object: ``Pool 'default'``."""
        return self.title.format(name)

    def request(self, request_type: Any, args: argparse.Namespace,
                flags: tuple[Flag, ...] = (), **fields: Any) -> Any:
        """The request naming the object of ``args``, with ``flags`` as given."""
        return request_type(**{a.field: getattr(args, a.dest) for a in self.arguments},
                            **_flag_fields(args, flags), **fields)


class Commands:
    """Registers the commands of one kind of object through the parser's ``command``."""

    def __init__(self, command: CommandFactory, kind: Kind) -> None:
        self.command = command
        self.kind = kind

    def add(self, name: str, handler: Handler, summary: str,
            fan_out: FanOut | None = None) -> argparse.ArgumentParser:
        """A command about one object: its positional arguments come first."""
        sub = self.command(name, handler, summary, fan_out=fan_out)
        for argument in self.kind.arguments:
            sub.add_argument(argument.dest, metavar=argument.metavar, help=argument.help)
        return sub

    def simple(self, name: str, method: str, request_type: Any, done: str, summary: str,
               *flags: Flag) -> argparse.ArgumentParser:
        """Sends the object's name (and ``flags``), says ``<Kind> '<name>' <done>``."""
        def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
            response = client.call(method, self.kind.request(request_type, args, flags))
            out.show(response, f"{self.kind.label(self.kind.name(args))} {done}")
        sub = self.add(name, handler, summary)
        add_flags(sub, *flags)
        return sub

    def dumpxml(self, name: str, method: str, request_type: Any, summary: str,
                *flags: Flag) -> argparse.ArgumentParser:
        """Prints the object's XML as the service returns it."""
        def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
            response = client.call(method, self.kind.request(request_type, args, flags))
            out.show(response, response.xml.rstrip("\n"))
        sub = self.add(name, handler, summary)
        add_flags(sub, *flags)
        return sub

    def autostart(self, name: str, method: str, request_type: Any,
                  summary: str) -> argparse.ArgumentParser:
        """Marks the object to start with its driver, or no longer with ``--disable``."""
        def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
            response = client.call(method, self.kind.request(request_type, args,
                                                             autostart=not args.disable))
            done = "unmarked as autostarted" if args.disable else "marked as autostarted"
            out.show(response, f"{self.kind.label(self.kind.name(args))} {done}")
        sub = self.add(name, handler, summary)
        sub.add_argument("--disable", action="store_true", help="do not autostart it")
        return sub

    def from_xml(self, name: str, method: str, request_type: Any, done: str, summary: str,
                 file_help: str, *flags: Flag, uuid: bool = False) -> argparse.ArgumentParser:
        """Defines or creates an object from an XML file; says ``<Kind> '<name>' <done>``,
        with its UUID if ``uuid``."""
        def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
            response = client.call(method, request_type(xml=read_input(args.file),
                                                        **_flag_fields(args, flags)))
            made = getattr(response, self.kind.response_field)
            out.show(response, f"{self.kind.label(made.name)} {done}"
                               + (f" ({made.uuid})" if uuid else ""))
        sub = self.command(name, handler, summary)
        sub.add_argument("file", type=XML_FILE, help=file_help)
        add_flags(sub, *flags)
        return sub

    def events(self, name: str, method: str, request_type: Any, what: str,
               text: Callable[[Any], str], summary: str) -> argparse.ArgumentParser:
        """Follows the Watch… stream of ``method``, optionally of some objects only."""
        plural = self.kind.plural

        def handler(client: Client, args: argparse.Namespace, out: Output) -> None:
            follow(watch(client, method, request_type(names=getattr(args, plural))),
                   what, text, out, args.count)
        sub = self.command(name, handler, summary)
        sub.add_argument(plural, nargs="*", metavar=self.kind.arguments[-1].metavar,
                         help=f"only these {plural}")
        add_count(sub)
        return sub
