"""Graphics commands: a guest's display through the gateway.

``vnc`` listens on a local TCP port and carries each viewer connection over its
own OpenDomainGraphics stream, bytes unchanged both ways (the remote framebuffer
protocol is between the viewer and QEMU); ``viewer`` starts remote-viewer or
gvncviewer on such a port. ``vncdisplay``, ``screenshot`` and ``send-key`` are
virsh's commands of those names.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_commands import CommandFactory, Commands, enum_choices
from virtmesh_client.cli_compute import DOMAIN
from virtmesh_client.cli_fleet import UsageError
from virtmesh_client.cli_output import Output, byte_size, table
from virtmesh_client.client import SESSION_CHUNK, Client, ClientError, Session

#: after a viewer closes its side, how long the service has to end the stream
CLOSE_GRACE = 5.0
CODESETS = enum_choices(pb.KeyCodeSet, "KEY_CODE_SET_")
#: viewers ``viewer`` knows, in the order it looks for them
VIEWERS = ("remote-viewer", "gvncviewer")
PNG_MIME = "image/png"
PPM_MIMES = ("image/x-portable-pixmap", "image/x-portable-anymap", "image/ppm")


# -- one viewer connection -----------------------------------------------------

def open_display(client: Client, name: str, index: int = 0) -> Session:
    """One OpenDomainGraphics session: bytes to and from one display connection."""
    return client.session("OpenDomainGraphics",
                          pb.OpenDomainGraphicsRequest(name=name, index=index))


def protocol_of(session: Session) -> str:
    return session.opened.protocol or "vnc"


def splice(stream: Session, sock: socket.socket) -> None:
    """Bytes both ways between a viewer's socket and its stream until either side
    closes; then both are closed. A failed stream raises ClientError."""
    def upstream() -> None:
        with contextlib.suppress(OSError):
            while data := sock.recv(SESSION_CHUNK):
                if not stream.send(data):
                    return
        stream.close()
        if not stream.cancelled.wait(CLOSE_GRACE):
            stream.cancel()

    reader = threading.Thread(target=upstream, name="vnc-upstream", daemon=True)
    reader.start()
    try:
        for data in stream:
            sock.sendall(data)
    except OSError:
        pass  # the viewer went away
    finally:
        stream.cancel()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got '{value}'")
    return host.strip("[]") or "127.0.0.1", int(port)


class Tunnel:
    """A local TCP listener whose every connection is one graphics stream to ``name``.

    ``serve`` accepts until ``close``; each connection runs on its own threads, so
    a viewer that opens slowly or fails does not hold up the others. A connection
    whose stream fails is one line on stderr.
    """

    def __init__(self, client: Client, name: str, listen: tuple[str, int] = ("127.0.0.1", 0),
                 index: int = 0) -> None:
        self.client = client
        self.name = name
        self.index = index
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(listen)
        except OSError as error:
            self.listener.close()
            raise UsageError(f"cannot listen on {listen[0]}:{listen[1]}: {error.strerror}"
                             ) from None
        self.listener.listen(16)
        self.host, self.port = self.listener.getsockname()[:2]
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._streams: set[Session] = set()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, protocol: str = "vnc") -> str:
        return f"{protocol}://{self.address}"

    def check(self) -> str:
        """Open one stream and close it again: the display's protocol, or the
        ClientError a viewer would meet (no such domain, not running, not allowed)."""
        with open_display(self.client, self.name, self.index) as stream:
            return protocol_of(stream)

    def serve(self) -> None:
        while not self._closing.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                if self._closing.is_set():
                    return
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._forward, args=(sock, peer), name="vnc-viewer",
                             daemon=True).start()

    def _forward(self, sock: socket.socket, peer: Any) -> None:
        try:
            stream = open_display(self.client, self.name, self.index)
        except ClientError as error:
            print(f"virtmesh: viewer {peer[0]}:{peer[1]}: {error}", file=sys.stderr, flush=True)
            sock.close()
            return
        with self._lock:
            self._streams.add(stream)
        try:
            splice(stream, sock)
        except ClientError as error:
            if not self._closing.is_set():
                print(f"virtmesh: viewer {peer[0]}:{peer[1]}: {error}", file=sys.stderr,
                      flush=True)
        finally:
            with self._lock:
                self._streams.discard(stream)

    def close(self) -> None:
        """Stop listening and end every connection's stream."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cmd_vnc(client: Client, args: argparse.Namespace, out: Output) -> None:
    with Tunnel(client, args.name, args.listen, args.index) as tunnel:
        protocol = tunnel.check()
        if out.json:
            out.line(pb.GetDomainDisplayResponse(displays=[pb.DomainDisplay(
                type=protocol, address=tunnel.host, port=tunnel.port,
                uri=tunnel.url(protocol))]), "")
        else:
            print(tunnel.url(protocol), flush=True)
            print(f"forwarding {tunnel.address} to the display of '{args.name}', one stream "
                  "per viewer connection; Ctrl-C to stop", file=sys.stderr, flush=True)
        tunnel.serve()


def viewer_argv(program: str, tunnel: Tunnel, protocol: str, title: str) -> list[str]:
    """How each viewer is told where to connect: remote-viewer takes a URI with the
    TCP port (vnc:// or spice://), gvncviewer ``HOST:DISPLAY`` (port 5900 + display)."""
    if Path(program).name == "gvncviewer":
        if protocol != "vnc":
            raise UsageError(f"gvncviewer speaks VNC only; this display is {protocol} "
                             "(use --viewer remote-viewer)")
        if tunnel.port < 5900:
            raise UsageError(f"gvncviewer reaches only ports from 5900 on; got {tunnel.port} "
                             "(pick one with --listen)")
        return [program, f"{tunnel.host}:{tunnel.port - 5900}"]
    return [program, "--title", title, tunnel.url(protocol)]


def find_viewer(wanted: str | None) -> str:
    for program in ((wanted,) if wanted else VIEWERS):
        path = shutil.which(program)
        if path:
            return path
    raise UsageError(f"no viewer found: install {wanted or ' or '.join(VIEWERS)} "
                     "(Debian packages virt-viewer, gvncviewer), or run `virtmesh vnc` and "
                     "point any VNC viewer at its address")


def cmd_viewer(client: Client, args: argparse.Namespace, out: Output) -> None:
    program = find_viewer(args.viewer)
    with Tunnel(client, args.name, args.listen, args.index) as tunnel:
        protocol = tunnel.check()
        argv = viewer_argv(program, tunnel, protocol, f"{args.name} (virtmesh)")
        threading.Thread(target=tunnel.serve, name="vnc-listener", daemon=True).start()
        print(f"{Path(program).name} on {tunnel.url(protocol)}", file=sys.stderr, flush=True)
        viewer = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            status = viewer.wait()
        finally:
            if viewer.poll() is None:
                viewer.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    viewer.wait(5)
    # a viewer killed by a signal (negative status) was closed: only its own
    # failure is ours
    if status > 0:
        raise UsageError(f"{Path(program).name} exited with status {status}")


# -- displays, screenshots, keys --------------------------------------------------

def display_text(display: Any) -> str:
    """As virsh vncdisplay prints it: ``ADDRESS:DISPLAY`` for TCP, ``unix:PATH`` for a
    socket; a display without a listener can be reached only through ``vnc``."""
    if display.socket:
        return f"unix:{display.socket}"
    if display.port:
        address = display.address if display.address not in ("", "0.0.0.0", "::") else ""
        number = display.port - 5900 if display.type == "vnc" else display.port
        return f"{address}:{number}"
    return "no listener (use `virtmesh vnc`)"


def cmd_vncdisplay(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("GetDomainDisplay", pb.GetDomainDisplayRequest(name=args.name))
    displays = [d for d in response.displays if args.all or d.type == "vnc"]
    if not displays:
        raise ClientError("FAILED_PRECONDITION", f"domain '{args.name}' has no "
                          f"{'' if args.all else 'VNC '}display")
    if args.all:
        text = table(("TYPE", "DISPLAY", "URI"),
                     ((d.type, display_text(d), d.uri or "-") for d in displays))
    else:
        text = "\n".join(display_text(d) for d in displays)
    out.show(pb.GetDomainDisplayResponse(displays=displays), text)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _ppm_tokens(data: bytes, count: int) -> tuple[list[int], int]:
    """``count`` header numbers after the magic, and where the pixels begin."""
    numbers: list[int] = []
    at = 2
    while len(numbers) < count:
        while at < len(data) and data[at:at + 1].isspace():
            at += 1
        if data[at:at + 1] == b"#":
            at = data.index(b"\n", at)
            continue
        start = at
        while at < len(data) and data[at:at + 1].isdigit():
            at += 1
        if start == at:
            raise ValueError("malformed PPM header")
        numbers.append(int(data[start:at]))
    return numbers, at + 1  # one whitespace byte ends the header


def ppm_to_png(data: bytes) -> bytes:
    """A binary PPM (P6; 8 or 16 bits a sample) as PNG, in pure Python."""
    if data[:2] != b"P6":
        raise ValueError("not a binary PPM (P6) image")
    (width, height, maxval), start = _ppm_tokens(data, 3)
    depth = 1 if maxval < 256 else 2
    stride = width * 3 * depth
    pixels = data[start:start + stride * height]
    if len(pixels) != stride * height or not 0 < maxval < 65536:
        raise ValueError("truncated or malformed PPM image")
    raw = b"".join(b"\0" + pixels[row * stride:(row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8 * depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b""))


def screenshot(client: Client, name: str, screen: int = 0) -> tuple[str, bytes]:
    """The MIME type and bytes of one screen's image, as the service sends them."""
    mime, parts = "", []
    for response in client.stream("GetDomainScreenshot", pb.GetDomainScreenshotRequest(
            name=name, screen=screen), timeout=client.timeout):
        mime = mime or response.mime_type
        parts.append(response.data)
    return mime, b"".join(parts)


def as_png(mime: str, image: bytes) -> bytes:
    if mime == PNG_MIME:
        return image
    if mime in PPM_MIMES or image[:2] == b"P6":
        try:
            return ppm_to_png(image)
        except ValueError as error:
            raise ClientError("INTERNAL", f"the guest's screenshot ({mime}): {error}"
                              ) from None
    raise ClientError("UNIMPLEMENTED", f"cannot convert a screenshot of type '{mime}' to PNG")


def cmd_screenshot(client: Client, args: argparse.Namespace, out: Output) -> None:
    mime, image = screenshot(client, args.name, args.screen)
    png = as_png(mime, image)
    if args.file == "-":
        sys.stdout.buffer.write(png)
        sys.stdout.flush()
        return
    target = Path(args.file)
    # written beside the target and renamed: never a half-written file under its name
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(png)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    converted = f", converted from {mime}" if mime != PNG_MIME else ""
    out.show(pb.GetDomainScreenshotResponse(mime_type=PNG_MIME),
             f"Screenshot of '{args.name}' saved to {target} ({byte_size(len(png))}{converted})")


def cmd_send_key(client: Client, args: argparse.Namespace, out: Output) -> None:
    response = client.call("SendDomainKey", pb.SendDomainKeyRequest(
        name=args.name, code_set=CODESETS.get(args.codeset, pb.KEY_CODE_SET_UNSPECIFIED),
        hold_time_ms=args.holdtime, keys=args.keys))
    out.show(response, f"Keys sent to '{args.name}'")


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number from 0 on, got '{value}'")
    return int(value)


def _screen_file(value: str) -> str:
    if value != "-" and Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"'{value}' is a directory")
    return value


def register(command: CommandFactory) -> None:
    domains = Commands(command, DOMAIN)
    listen = {"type": parse_listen, "default": ("127.0.0.1", 0), "metavar": "HOST:PORT",
              "help": "where viewers connect (default 127.0.0.1 and a free port)"}
    index = {"type": _count, "default": 0, "metavar": "N",
             "help": "which of the domain's graphics devices (default 0, the first)"}
    sub = domains.add("vnc", cmd_vnc, "forward a local port to a domain's display, one "
                      "stream per viewer connection, until Ctrl-C")
    sub.add_argument("--listen", **listen)  # type: ignore[arg-type]
    sub.add_argument("--index", **index)  # type: ignore[arg-type]
    sub = domains.add("viewer", cmd_viewer, "show a domain's display in remote-viewer or "
                      "gvncviewer, through the gateway")
    sub.add_argument("--viewer", choices=VIEWERS, help="which viewer (default: the first "
                     "installed of remote-viewer, gvncviewer)")
    sub.add_argument("--listen", **listen)  # type: ignore[arg-type]
    sub.add_argument("--index", **index)  # type: ignore[arg-type]
    sub = domains.add("vncdisplay", cmd_vncdisplay, "print where a domain's VNC display "
                      "listens")
    sub.add_argument("--all", action="store_true", help="every display (VNC and SPICE), "
                     "with its URI, as virsh domdisplay")
    sub = domains.add("screenshot", cmd_screenshot, "save an image of a domain's screen as "
                      "PNG")
    sub.add_argument("file", type=_screen_file, metavar="FILE", help="PNG file, or - for "
                     "stdout")
    sub.add_argument("--screen", type=_count, default=0, metavar="N",
                     help="which screen (head); default 0")
    sub = domains.add("send-key", cmd_send_key, "press keys on a domain's keyboard together")
    sub.add_argument("keys", nargs="+", metavar="KEY", help="a key name (KEY_A, ENTER) or "
                     "a number in the code set")
    sub.add_argument("--codeset", choices=sorted(CODESETS),
                     help="code set of numeric keys (default linux)")
    sub.add_argument("--holdtime", type=_count, default=0, metavar="MS",
                     help="how long the keys are held, in ms (default libvirt's)")
