"""Byte sessions with a running guest, on the libvirt side: its consoles and
channels through non-blocking libvirt streams, its display through the socket
virDomainOpenGraphicsFD hands over.

Both kinds offer read(), write(), shutdown() and close() (services/common/relay.py
drives them from two threads): read() returns b"" at the session's end and raises
when the session was taken away; shutdown() wakes both threads from any thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Generator
from dataclasses import dataclass

import grpc
import libvirt

from services.common.errors import ServiceError
from services.common.relay import MAX_CHUNK as MAX_READ

_READ_EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                | libvirt.VIR_STREAM_EVENT_HANGUP)
_WRITE_EVENTS = (libvirt.VIR_STREAM_EVENT_WRITABLE | libvirt.VIR_STREAM_EVENT_ERROR
                 | libvirt.VIR_STREAM_EVENT_HANGUP)
#: a missed wake-up costs at most this long (seconds)
_WAIT_SLICE = 1.0


def taken_over(what: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED,
                        f"another session opened the {what} with force and took it over",
                        "CONSOLE_TAKEN_OVER")


class StreamSession:
    """A console or channel: a non-blocking libvirt stream woken by libvirt's event
    loop. Events are asked for only while a thread waits for them, and each fired
    event is dropped from the mask until it is consumed, so a stream that stays
    readable while the client is slow does not spin the event loop."""

    def __init__(self, stream: libvirt.virStream, what: str,
                 release: Callable[[StreamSession], None]) -> None:
        self._stream = stream
        self._what = what
        self._release = release
        self._released = False
        self._cond = threading.Condition()
        self._fired = 0
        self._mask = 0
        self._reading = self._writing = False
        self._closed = False
        self._error: Exception | None = None
        stream.eventAddCallback(0, self._on_event, None)

    def _on_event(self, _stream: libvirt.virStream, events: int, _opaque: object) -> None:
        with self._cond:
            self._fired |= events
            self._update_mask()
            self._cond.notify_all()

    def _update_mask(self) -> None:
        """Called with the condition held."""
        mask = ((_READ_EVENTS if self._reading else 0)
                | (_WRITE_EVENTS if self._writing else 0)) & ~self._fired
        if self._closed:
            mask = 0
        if mask != self._mask:
            self._mask = mask
            # an aborted stream refuses: the next recv or send says why
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventUpdateCallback(mask)

    def _wait(self, events: int) -> None:
        reading = events == _READ_EVENTS
        with self._cond:
            if reading:
                self._reading = True
            else:
                self._writing = True
            self._update_mask()
            self._cond.wait_for(lambda: self._fired & events or self._closed, _WAIT_SLICE)
            self._fired &= ~events
            if reading:
                self._reading = False
            else:
                self._writing = False
            self._update_mask()

    def _failed(self, error: libvirt.libvirtError) -> Exception | None:
        """What a recv or send error means: None after our own shutdown; otherwise
        libvirt aborted the stream because a forced open took the device over."""
        with self._cond:
            if self._closed:
                return None
            if self._error is None:
                self._error = (taken_over(self._what)
                               if error.get_error_domain() == libvirt.VIR_FROM_STREAMS
                               else error)
            return self._error

    def read(self) -> bytes:
        while True:
            with self._cond:
                if self._error:
                    raise self._error
                if self._closed:
                    return b""
            try:
                data = self._stream.recv(MAX_READ)
            except libvirt.libvirtError as error:
                failure = self._failed(error)
                if failure is None:
                    return b""
                raise failure from None
            if data == -2:
                self._wait(_READ_EVENTS)
                continue
            return bytes(data)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            with self._cond:
                if self._closed or self._error:
                    return
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as error:
                self._failed(error)
                return
            if sent == -2:
                self._wait(_WRITE_EVENTS)
                continue
            view = view[sent:]

    def shutdown(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._update_mask()
            self._cond.notify_all()

    def close(self) -> None:
        """Once neither thread uses the stream any more."""
        self.shutdown()
        self._release(self)

    def take_over(self) -> None:
        """Another session opens this device with force: this one ends ABORTED
        (CONSOLE_TAKEN_OVER) and lets go of its stream now."""
        with self._cond:
            if self._error is None and not self._closed:
                self._error = taken_over(self._what)
        self.shutdown()
        self.abort()

    def abort(self) -> None:
        """Let go of the libvirt stream, once (CharacterDevices holds its lock)."""
        if self._released:
            return
        self._released = True
        # either may refuse: the guest has ended the stream
        for release in (self._stream.eventRemoveCallback, self._stream.abort):
            with contextlib.suppress(libvirt.libvirtError):
                release()


class CharacterDevices:
    """The consoles and channels this process has open, by domain and device.

    libvirt 9.0 deadlocks when virDomainOpenConsole/OpenChannel with force aborts a
    stream of the same process that is in use or being aborted at that moment
    (virChrdevOpen holds the devices' lock and waits for the stream's, which the
    other side holds while it waits for the devices'). So libvirt never aborts a
    stream of ours: a forced open first takes over the session this process holds
    on that device, and opens and closes go one at a time. Force is still passed
    to libvirt for a session held elsewhere (a libvirt daemon's other clients)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._held: dict[tuple[str, str], StreamSession] = {}

    def open(self, key: tuple[str, str], what: str, force: bool,
             new_stream: Callable[[], libvirt.virStream],
             attach: Callable[[libvirt.virStream], None]) -> StreamSession:
        with self._lock:
            held = self._held.get(key)
            if held is not None and force:
                del self._held[key]
                held.take_over()
            stream = new_stream()
            attach(stream)
            session = StreamSession(stream, what, lambda closed: self._closed(key, closed))
            self._held[key] = session
            return session

    def _closed(self, key: tuple[str, str], session: StreamSession) -> None:
        with self._lock:
            if self._held.get(key) is session:
                del self._held[key]
            session.abort()


class SocketSession:
    """A graphics client connection: the socket QEMU accepted for us."""

    def __init__(self, fd: int) -> None:
        self._socket = socket.socket(fileno=fd)
        self._socket.setblocking(True)

    def read(self) -> bytes:
        try:
            return self._socket.recv(MAX_READ)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except OSError:
            self.shutdown()

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):  # not connected any more
            self._socket.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.shutdown()
        self._socket.close()


@dataclass(frozen=True)
class Display:
    """One <graphics> element of a running guest's live XML."""

    type: str
    address: str = ""
    port: int = 0
    tls_port: int = 0
    socket: str = ""

    @property
    def uri(self) -> str:
        """virsh domdisplay's URI; empty when nothing listens."""
        host = self.address
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        if ":" in host:
            host = f"[{host}]"
        if self.socket:
            return f"{self.type}+unix://{self.socket}"
        if self.type == "vnc" and self.port > 0:
            return f"vnc://{host}:{self.port - 5900}"
        if self.port > 0 or self.tls_port > 0:
            tls = f"?tls-port={self.tls_port}" if self.tls_port > 0 else ""
            return f"{self.type}://{host}:{max(self.port, 0)}{tls}"
        return ""


def displays(live_xml: str) -> list[Display]:
    """The displays of a domain's live XML (libvirt's own output), in order."""
    found = []
    for graphics in ET.fromstring(live_xml).iterfind("./devices/graphics"):
        listen = graphics.find("listen")
        address = graphics.get("listen", "")
        path = graphics.get("socket", "")
        if listen is not None:
            address = listen.get("address", address)
            path = listen.get("socket", path)
        found.append(Display(type=graphics.get("type", ""), address=address,
                             port=max(int(graphics.get("port", "0")), 0),
                             tls_port=max(int(graphics.get("tlsPort", "0")), 0),
                             socket=path))
    return found


def first_console(live_xml: str) -> str:
    """The alias of a domain's first console, the one libvirt opens when none is
    named; empty when it has none."""
    alias = ET.fromstring(live_xml).find("./devices/console/alias")
    return alias.get("name", "") if alias is not None else ""


def stream_chunks(stream: libvirt.virStream) -> Generator[bytes, None, None]:
    """A blocking libvirt stream's data to its end, finished or aborted."""
    try:
        while True:
            data = stream.recv(MAX_READ * 4)
            if not data:
                break
            yield bytes(data)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    stream.finish()
