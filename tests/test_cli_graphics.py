"""The graphics commands' own parts, against a fake compute service.

The tunnel of ``virtmesh vnc`` is tested here against an in-process gRPC server
whose OpenDomainGraphics is a tiny echo "display", so its byte handling and its
closing rules are checked without QEMU; tests/test_viewers.py does the same with
real viewers and a real guest through the gateway.
"""

from __future__ import annotations

import contextlib
import io
import queue
import signal
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from tests.conftest import ROOT
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client import cli_graphics
from virtmesh_client.client import Client, ClientError

GREETING = b"RFB 003.008\n"


class FakeDisplay(pb_grpc.ComputeServiceServicer):
    """OpenDomainGraphics of domain "vm": greets, then echoes upper-cased; the
    message b"bye" makes it end the stream. Any other domain is NOT_FOUND."""

    def __init__(self) -> None:
        self.ended: queue.Queue[str] = queue.Queue()

    def OpenDomainGraphics(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        first = next(request_iterator)
        if first.name != "vm":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no domain '{first.name}'")
        yield pb.OpenDomainGraphicsResponse(protocol="vnc")
        yield pb.OpenDomainGraphicsResponse(data=GREETING)
        how = "client closed"
        for request in request_iterator:
            if request.data == b"bye":
                how = "server closed"
                break
            yield pb.OpenDomainGraphicsResponse(data=request.data.upper())
        self.ended.put(how)

    def GetDomainScreenshot(self, request: Any, context: Any) -> Iterator[Any]:
        ppm = b"P6\n# a comment\n2 1\n255\n" + bytes([255, 0, 0, 0, 0, 255])
        yield pb.GetDomainScreenshotResponse(mime_type="image/x-portable-pixmap", data=ppm[:7])
        yield pb.GetDomainScreenshotResponse(data=ppm[7:])


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeDisplay, str]]:
    servicer = FakeDisplay()  # type: ignore[abstract]  # only what the tests call
    server = grpc.server(futures.ThreadPoolExecutor(16))
    pb_grpc.add_ComputeServiceServicer_to_server(servicer, server)
    target = f"unix:{tmp_path / 'compute.sock'}"
    server.add_insecure_port(target)
    server.start()
    try:
        yield servicer, target
    finally:
        server.stop(0)


@pytest.fixture
def tunnel(fake: tuple[FakeDisplay, str]) -> Iterator[cli_graphics.Tunnel]:
    with Client(fake[1]) as client, cli_graphics.Tunnel(client, "vm") as running:
        threading.Thread(target=running.serve, daemon=True).start()
        yield running


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        part = sock.recv(count - len(data))
        assert part, f"connection closed after {data!r}"
        data += part
    return data


def test_each_connection_is_its_own_stream(tunnel: cli_graphics.Tunnel) -> None:
    with socket.create_connection((tunnel.host, tunnel.port), timeout=30) as one, \
            socket.create_connection((tunnel.host, tunnel.port), timeout=30) as two:
        assert read_exactly(one, len(GREETING)) == GREETING
        assert read_exactly(two, len(GREETING)) == GREETING
        big = bytes(range(97, 123)) * 10_000  # more than one 64 KiB message
        two.sendall(b"second")
        one.sendall(big)
        assert read_exactly(two, 6) == b"SECOND"
        assert read_exactly(one, len(big)) == big.upper()


def test_viewer_closing_ends_the_stream(tunnel: cli_graphics.Tunnel,
                                        fake: tuple[FakeDisplay, str]) -> None:
    with socket.create_connection((tunnel.host, tunnel.port), timeout=30) as viewer:
        assert read_exactly(viewer, len(GREETING)) == GREETING
    assert fake[0].ended.get(timeout=30) == "client closed"


def test_display_closing_closes_the_viewer(tunnel: cli_graphics.Tunnel,
                                           fake: tuple[FakeDisplay, str]) -> None:
    with socket.create_connection((tunnel.host, tunnel.port), timeout=30) as viewer:
        assert read_exactly(viewer, len(GREETING)) == GREETING
        viewer.sendall(b"bye")
        assert viewer.recv(100) == b""  # end of file: the tunnel closed its side
    assert fake[0].ended.get(timeout=30) == "server closed"


def test_check_reports_what_a_viewer_would_meet(fake: tuple[FakeDisplay, str]) -> None:
    with Client(fake[1]) as client:
        assert cli_graphics.Tunnel(client, "vm").check() == "vnc"
        with cli_graphics.Tunnel(client, "nope") as tunnel, \
                pytest.raises(ClientError) as caught:
            tunnel.check()
    assert caught.value.code == "NOT_FOUND"


def test_vnc_command_prints_the_address_and_ends_on_ctrl_c(
        fake: tuple[FakeDisplay, str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "virtmesh_client", "--socket", fake[1].removeprefix("unix:"),
         "vnc", "vm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("vnc://127.0.0.1:"), url
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as viewer:
            assert read_exactly(viewer, len(GREETING)) == GREETING
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def test_vnc_command_fails_at_once_for_an_unknown_domain(
        fake: tuple[FakeDisplay, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "virtmesh_client", "--socket", fake[1].removeprefix("unix:"),
         "vnc", "nope"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "virtmesh: NOT_FOUND: no domain 'nope'"


def test_screenshot_converts_ppm_to_png(fake: tuple[FakeDisplay, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from virtmesh_client.cli import main
    out = tmp_path / "shot.png"
    assert main(["--socket", fake[1].removeprefix("unix:"), "screenshot", "vm", str(out)]) == 0
    assert "converted from image/x-portable-pixmap" in capsys.readouterr().out
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (2, 1)
    assert image.convert("RGB").tobytes() == bytes([255, 0, 0, 0, 0, 255])


def test_ppm_to_png_sixteen_bits() -> None:
    pixels = bytes([0xFF, 0xFF, 0, 0, 0x80, 0]) * 3
    png = cli_graphics.ppm_to_png(b"P6 3 1 65535\n" + pixels)
    assert png.startswith(b"\x89PNG")
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    assert zlib.decompress(idat) == b"\0" + pixels
    assert Image.open(io.BytesIO(png)).size == (3, 1)


@pytest.mark.parametrize("bad", [b"P3 1 1 255\n000", b"P6 2 2 255\n" + bytes(5), b"P6 x"])
def test_ppm_to_png_refuses_what_it_cannot_read(bad: bytes) -> None:
    with pytest.raises(ValueError):
        cli_graphics.ppm_to_png(bad)


@pytest.mark.parametrize(("display", "text"), [
    (pb.DomainDisplay(type="vnc", address="127.0.0.1", port=5901), "127.0.0.1:1"),
    (pb.DomainDisplay(type="vnc", address="0.0.0.0", port=5900), ":0"),
    (pb.DomainDisplay(type="vnc", socket="/run/vnc.sock"), "unix:/run/vnc.sock"),
    (pb.DomainDisplay(type="spice", address="::1", port=5930), "::1:5930"),
    (pb.DomainDisplay(type="vnc"), "no listener (use `virtmesh vnc`)"),
])
def test_display_text_is_virsh_vncdisplay(display: Any, text: str) -> None:
    assert cli_graphics.display_text(display) == text


def test_listen_address_parsing() -> None:
    assert cli_graphics.parse_listen("127.0.0.1:5999") == ("127.0.0.1", 5999)
    assert cli_graphics.parse_listen(":0") == ("127.0.0.1", 0)
    assert cli_graphics.parse_listen("[::1]:6000") == ("::1", 6000)
    for bad in ("5900", "host:port", "h:70000"):
        with pytest.raises(Exception, match="HOST:PORT"):
            cli_graphics.parse_listen(bad)
