"""``virtmesh``: a virsh-like command line for virtmesh's services and gateway.

Tables for people, ``--json`` (protobuf field names) for scripts. Errors are one
line on stderr; exit status 1 for a failed call, 2 for a usage or setup error.

With several gateways (``--gateway`` repeated, or ``VIRTMESH_GATEWAYS``) read-only
commands ask every node in parallel and merge the results with a NODE column;
commands on one domain run on the node that has it. A node that fails is a
warning on stderr and exit status 1, never a silently shorter table.

This module is the program: global flags, the parser, ``main`` and Ctrl-C. The
commands live in cli_<service>.py, built with cli_commands; how they print is
cli_output, where they run is cli_fleet.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from virtmesh_client import (
    __version__,
    cli_admin,
    cli_agent,
    cli_block,
    cli_checkpoints,
    cli_completion,
    cli_compute,
    cli_config,
    cli_console,
    cli_gateway,
    cli_graphics,
    cli_host,
    cli_iface,
    cli_jobs,
    cli_lifecycle,
    cli_migration,
    cli_network,
    cli_nodedev,
    cli_nwfilter,
    cli_secret,
    cli_storage,
    cli_tuning,
)
from virtmesh_client.cli_fleet import FanOut, Handler, Query, UsageError, run
from virtmesh_client.cli_output import Output
from virtmesh_client.client import DEFAULT_TIMEOUT, ClientError, ConfigError

#: every service's commands, in the order ``--help`` lists them
COMMAND_MODULES = (cli_compute, cli_admin, cli_agent, cli_block, cli_checkpoints,
                   cli_completion, cli_config, cli_console, cli_gateway, cli_graphics, cli_host,
                   cli_iface, cli_jobs, cli_lifecycle, cli_migration, cli_network, cli_nodedev,
                   cli_nwfilter, cli_secret, cli_storage, cli_tuning)
#: commands that run until Ctrl-C, which ends them with status 0
UNTIL_CTRL_C = ("events", "vnc")
START_HINT = "; is virtmesh running? start it with `make run`"


# -- argument parsing ----------------------------------------------------------

def _global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Added to the main parser with defaults and to every subcommand without, so that
    ``virtmesh --json list`` and ``virtmesh list --json`` both work."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--gateway", action="append", default=default(None),
                        metavar="[NAME=]HOST:PORT",
                        help="gateway address, repeatable for several nodes (env "
                        "VIRTMESH_GATEWAYS, comma-separated, or VIRTMESH_GATEWAY; default "
                        "127.0.0.1:16514, or with a token and no --cert/--key the token-only "
                        "port 127.0.0.1:16515)")
    parser.add_argument("--context", default=default(None), metavar="NAME",
                        help="the context of the config file to use (env VIRTMESH_CONTEXT; "
                        "default its current context; see `virtmesh config`)")
    parser.add_argument("--node", default=default(None), metavar="NAME",
                        help="with several gateways: the one to use")
    parser.add_argument("--socket", default=default(None), metavar="PATH",
                        help="talk to a service's UNIX socket directly, without TLS: the "
                        "command's service's socket, or a directory of them (.virtmesh/run), "
                        "where each command finds its own service's <service>.sock")
    parser.add_argument("--state-dir", default=default(None),
                        help="where pki/ is (env VIRTMESH_STATE_DIR; default ./.virtmesh)")
    parser.add_argument("--ca", default=default(None), help="CA certificate (env VIRTMESH_CA)")
    parser.add_argument("--cert", default=default(None),
                        help="client certificate (env VIRTMESH_CERT)")
    parser.add_argument("--key", default=default(None), help="client key (env VIRTMESH_KEY)")
    parser.add_argument("--token-file", default=default(None), metavar="PATH",
                        help="bearer token for the gateway, sent over TLS only (env "
                        "VIRTMESH_TOKEN_FILE, or the token itself in VIRTMESH_TOKEN); without "
                        "--cert/--key no client certificate is sent")
    parser.add_argument("--tls-server-name", default=default(None), metavar="NAME",
                        help="the name the gateway's certificate must carry, if not the "
                        "address's host (env VIRTMESH_TLS_SERVER_NAME)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT),
                        metavar="SECONDS", help="deadline of each call; 0 waits forever")


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistyped command answered by the nearest commands (not by the
    list of every command) in one line."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            shown = [choice.dest for choice in action._choices_actions]
            close = difflib.get_close_matches(value, shown, n=3, cutoff=0.6)
            raise _UnknownCommand(action, f"unknown command '{value}'" + (
                f"; did you mean {' or '.join(map(repr, close))}?" if close else "") +
                f" (`{self.prog} --help` lists the commands)")
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        if isinstance(sys.exc_info()[1], _UnknownCommand):
            self.exit(2, f"{self.prog}: {message.split(': ', 1)[-1]}\n")
        super().error(message)

    def unrecognized(self, extra: Sequence[str]) -> NoReturn:
        """Arguments this (sub)command does not take: its usage, and the nearest flags."""
        flags = [option for action in self._actions for option in action.option_strings]
        close = {word: difflib.get_close_matches(word, flags, n=2, cutoff=0.7)
                 for word in extra if word.startswith("-")}
        hints = [f"{word}: did you mean {' or '.join(near)}?"
                 for word, near in close.items() if near]
        self.error(f"unrecognized arguments: {' '.join(extra)}"
                   + (f" ({'; '.join(hints)})" if hints else ""))


class _UnknownCommand(argparse.ArgumentError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="virtmesh", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"virtmesh {__version__}")
    _global_flags(parser, defaults=True)
    common = _Parser(add_help=False)
    _global_flags(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    groups: dict[str, Any] = {}
    service = ""

    def command(name: str, handler: Handler, summary: str, fan_out: FanOut | None = None,
                under: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
        """A command, or with ``under`` a subcommand of that command's (``config
        use-context``); every one takes the global flags."""
        actions = commands
        if under is not None:
            if under.prog not in groups:
                groups[under.prog] = under.add_subparsers(
                    dest="subcommand", required=True, metavar="ACTION")
            actions = groups[under.prog]
        # a command without a summary is not listed (``__names``, for completion)
        listed: dict[str, Any] = {"help": summary} if summary else {}
        sub = actions.add_parser(name, description=summary or None, parents=[common], **listed)
        sub.set_defaults(handler=handler, service=service, parser=sub,
                         fan_out=handler.merged if isinstance(handler, Query) else fan_out)
        return sub

    for module in COMMAND_MODULES:
        service = _service(module)
        module.register(command)
    return parser


def _service(module: object) -> str:
    """The service a command module's commands call, from its generated module ``pb``
    (``virtmesh.storage.v1`` → ``storage``); "" for a module that calls none."""
    pb = getattr(module, "pb", None)
    return str(pb.DESCRIPTOR.package).split(".")[1] if pb is not None else ""


@dataclasses.dataclass
class _CtrlC:
    """What Ctrl-C does to the command being run: watches (events, *-event) end with
    it, status 0; anything else is interrupted, status 130."""

    status: int = 130
    pressed: bool = False


_ctrl_c = _CtrlC()


def _exit_now(status: int, flush: bool = True) -> None:
    """End the process now. Only the main thread flushes: a stalled one may hold the
    streams' locks, or be inside a flush itself."""
    if flush:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(status)


def _on_ctrl_c(_signum: int, _frame: object) -> None:
    """The first Ctrl-C unwinds (calls cancelled, partial files removed); should that
    stall in a thread grpc's core holds, one second or a second Ctrl-C ends it."""
    if _ctrl_c.pressed:
        _exit_now(_ctrl_c.status, flush=False)
    _ctrl_c.pressed = True
    watchdog = threading.Timer(1.0, _exit_now, (_ctrl_c.status, False))
    watchdog.daemon = True
    watchdog.start()
    raise KeyboardInterrupt


def command() -> None:
    """The ``virtmesh`` program. After a Ctrl-C the process ends without the
    interpreter's own teardown, where grpc can wait on the threads of calls being
    cancelled: Ctrl-C always ends the CLI within a second."""
    signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`virtmesh list | head -1`): end quietly, as `yes | head`
        # does, with no traceback and nothing more written to the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit_now(128 + signal.SIGPIPE, flush=False)
    if _ctrl_c.pressed:
        _exit_now(status)
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # with the usage of the (sub)command that did not take them
            args.parser.unrecognized(extra)
    except SystemExit as exit:  # argparse printed the usage or --help
        return exit.code if isinstance(exit.code, int) else 2
    _ctrl_c.status = 0 if args.command in UNTIL_CTRL_C or args.command.endswith("-event") \
        else 130
    try:
        return run(args, Output(args.json))
    except ClientError as error:
        if _ctrl_c.pressed:  # the call Ctrl-C cancelled, failing as it unwinds
            return _ctrl_c.status
        hint = START_HINT if error.code == "UNAVAILABLE" and not error.reason else ""
        if error.code == "UNIMPLEMENTED" and args.socket and "Method not found" in str(error):
            error = ClientError(error.code, f"{args.socket} does not serve {args.command}: "
                                f"--socket takes the {args.service} service's socket, or a "
                                "directory of sockets")
        print(f"virtmesh: {error}{hint}", file=sys.stderr)
        return 1
    except (ConfigError, UsageError) as error:
        print(f"virtmesh: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _ctrl_c.status
    except BrokenPipeError:
        raise  # command() ends quietly
    except OSError as error:  # a local file: vol-upload's, vol-download's, screenshot's...
        where = f"{error.filename}: " if error.filename else ""
        print(f"virtmesh: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except ValueError as error:  # e.g. a number out of a field's range, text not UTF-8
        print(f"virtmesh: invalid value: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - never a traceback for a user
        if _ctrl_c.pressed:
            return _ctrl_c.status
        if os.environ.get("VIRTMESH_DEBUG"):
            raise
        print(f"virtmesh: unexpected {type(error).__name__}: {error} (VIRTMESH_DEBUG=1 "
              "shows where)", file=sys.stderr)
        return 1
