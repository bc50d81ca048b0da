"""QEMU passthrough (libvirt-qemu): a command to the guest agent or to QEMU's monitor,
and QEMU's monitor events.

libvirt calls these unsupported and taints the domain: a command may change the
guest behind libvirt's back. What a caller sends is checked before libvirt sees it:
a QMP or agent command is a JSON object naming the command in "execute", an HMP
command one line of text, each of bounded length; an event name is a QMP name.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable

import grpc
import libvirt
import libvirt_qemu

from services.common.errors import ServiceError, invalid, require
from services.compute.backend import ComputeBackend, must_run

#: the longest command sent (agent commands may carry a file's data, base64)
MAX_COMMAND = 1 << 20
#: the longest HMP command line
MAX_HMP = 4096
#: the longest agent timeout a caller may ask for (s): longer waits hold a thread
MAX_AGENT_TIMEOUT = 300
#: QMP event names: STOP, BLOCK_JOB_COMPLETED, ...
EVENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: how libvirt reports the agent's error answer to a command
AGENT_REFUSED = "unable to execute QEMU agent command"
#: (domain name, UUID, event, seconds, microseconds, details as JSON text or "")
Emit = Callable[[str, str, str, int, int, str], None]


def _invalid(message: str, reason: str = "INVALID_COMMAND") -> ServiceError:
    return invalid(message, reason)


def check_json_command(command: str, field: str = "command") -> str:
    """``command`` once it is a JSON object whose "execute" names a command."""
    require(command, field)
    if len(command) > MAX_COMMAND:
        raise _invalid(f"{field} is longer than {MAX_COMMAND} characters")
    try:
        parsed = json.loads(command)
    except (ValueError, RecursionError) as error:
        raise _invalid(f"{field} is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise _invalid(f"{field} is not a JSON object")
    if not isinstance(parsed.get("execute"), str) or not parsed["execute"]:
        raise _invalid(f'{field} names no command in "execute"')
    if "arguments" in parsed and not isinstance(parsed["arguments"], dict):
        raise _invalid(f'{field}\'s "arguments" is not an object')
    return command


def check_hmp_command(command: str) -> str:
    require(command, "command")
    if len(command) > MAX_HMP:
        raise _invalid(f"an HMP command is at most {MAX_HMP} characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7f for char in command):
        raise _invalid("an HMP command is one line without control characters")
    return command


class QemuBackend:
    """The libvirt side of the QEMU passthrough RPCs."""

    def __init__(self, backend: ComputeBackend) -> None:
        self.compute = backend

    def agent_command(self, name: str, command: str, timeout: int | None) -> str:
        """The agent's answer; ``timeout`` seconds (None: the agent's own timeout)."""
        check_json_command(command)
        if timeout is None:
            timeout = libvirt_qemu.VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT
        elif timeout > MAX_AGENT_TIMEOUT:
            raise _invalid(f"timeout_seconds: at most {MAX_AGENT_TIMEOUT}", "VIR_ERR_INVALID_ARG")
        dom = must_run(self.compute.lookup(name))
        try:
            return str(libvirt_qemu.qemuAgentCommand(dom, command, timeout, 0))
        except libvirt.libvirtError as error:
            # the agent's own answer to the command (an unknown command, bad
            # arguments): libvirt's INTERNAL_ERROR, but the caller's to change
            message = error.get_error_message() or ""
            if AGENT_REFUSED in message:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message,
                                   "AGENT_COMMAND_FAILED") from None
            raise

    def monitor_command(self, name: str, command: str, hmp: bool) -> str:
        if hmp:
            check_hmp_command(command)
        else:
            check_json_command(command)
        dom = must_run(self.compute.lookup(name))
        flags = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp else 0
        return str(libvirt_qemu.qemuMonitorCommand(dom, command, flags))

    def watch_monitor_events(self, name: str, event: str,
                             emit: Emit) -> Callable[[], None]:
        """Call ``emit`` for each QMP event of domain ``name`` (every domain's when
        empty) named ``event`` (all when empty), from libvirt's event loop; the
        function returned stops it."""
        if event and not EVENT_NAME.fullmatch(event):
            raise _invalid(f"event {event[:140]!r} is not a QMP event name", "INVALID_EVENT")
        conn = self.compute.conn
        dom = self.compute.lookup(name) if name else None

        def callback(_conn: libvirt.virConnect, source: libvirt.virDomain, kind: str,
                     seconds: int, micros: int, details: str | None, _opaque: object) -> None:
            emit(source.name(), source.UUIDString(), kind, seconds, micros,
                 details if isinstance(details, str) else json.dumps(details)
                 if details is not None else "")

        callback_id = libvirt_qemu.qemuMonitorEventRegister(conn, dom, event or None, callback,
                                                            None, 0)

        def stop() -> None:
            with contextlib.suppress(libvirt.libvirtError):
                libvirt_qemu.qemuMonitorEventDeregister(conn, callback_id)
        return stop

    def still_connected(self, conn_id: int) -> bool:
        """The service's libvirt connection is still the one ``conn_id`` names."""
        return self.compute.connection.connected and id(self.compute.conn) == conn_id

    def connection_id(self) -> int:
        return id(self.compute.conn)
