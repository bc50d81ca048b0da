"""The graphics commands' pure parts: PPM to PNG, virsh's display text, --listen.

Everything that talks to a display (the tunnel, its closing rules, the commands)
is tested against a real guest through the gateway in tests/test_viewers.py.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import pytest
from PIL import Image

from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client import cli_graphics

GREETING = b"RFB 003.008\n"


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
