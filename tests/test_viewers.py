"""Real viewers on a real guest's display, through the gateway.

One mesh (embedded compute with the example guest under TCG, and the gateway)
serves the module, and one ``virtmesh vnc`` process forwards a local port to the
guest's display. Real clients connect to that port: gtk-vnc's ``gvncviewer``
and virt-viewer's ``remote-viewer`` on a virtual X server (Xvfb, whose screen is
an XWD file we read), vncdotool's ``vncdo``, and ten at once of bench/graphics.py's
minimal RFB client; what they show is compared with the GetDomainScreenshot image.
send-key, screenshot and vncdisplay run as the CLI, as the admin and as the
read-only identity, and the compute service's fds are counted around cancelled
streams. Waits are generous and nothing is timed: these
tests must hold on a loaded two-core machine.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from PIL import Image, ImageChops

from bench.graphics import Viewer
from gateway.authn import ensure_dev_identities
from guest import example
from tests.conftest import ROOT, Mesh, running_mesh
from tests.test_e2e_qemu import EMBED_URI, short_state_dir, wait_for
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh_client.cli_graphics import Tunnel, open_display
from virtmesh_client.client import Client, ClientError

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(180)]

GUEST = "gfx"
#: after the serial shell's prompt, the late kernel lines (clocksource) and the VGA
#: shell's banner have come too: the screen is settled (comparisons retry anyway)
SETTLE = 3.0
#: how long a viewer, capture or guest gets for anything (no test waits for this
#: unless something is wrong)
PATIENCE = 45.0


# -- the mesh, the guest, the tunnel ------------------------------------------------

def cli_argv(mesh: Mesh, *args: str, token: str | None = None) -> list[str]:
    """``virtmesh ARGS`` through the mesh's gateway: as the admin (the development
    client certificate), or with one of make run's tokens (``readonly``) alone, on the
    gateway's token-only port."""
    flags = ["--gateway", mesh.token_target if token else mesh.target,
             "--state-dir", str(mesh.state_dir)]
    if token:
        flags += ["--token-file", str(mesh.state_dir / "tokens" / f"{token}.token")]
    return [sys.executable, "-m", "virtmesh_client", *flags, *args]


@dataclass
class Graphics:
    mesh: Mesh
    #: ``virtmesh vnc GUEST``, running for the module, and its port
    tunnel: subprocess.Popen[bytes]
    port: int

    def argv(self, *args: str, token: str | None = None) -> list[str]:
        return cli_argv(self.mesh, *args, token=token)

    def virtmesh(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTMESH_")}
        return subprocess.run(self.argv(*args, token=token), capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=120)

    def client(self) -> Client:
        return Client(self.mesh.target, state_dir=self.mesh.state_dir)

    def screenshot(self) -> Image.Image:
        with self.client() as client:
            parts = list(client.stream("GetDomainScreenshot",
                                       pb.GetDomainScreenshotRequest(name=GUEST), timeout=60))
        assert parts and parts[0].mime_type == "image/png"
        return Image.open(io.BytesIO(b"".join(p.data for p in parts))).convert("RGB")

    def serial(self) -> str:
        path = self.mesh.state_dir / "guest" / f"{GUEST}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def graphics() -> Iterator[Graphics]:
    with short_state_dir() as state:
        ensure_dev_identities(state)
        with running_mesh(state, EMBED_URI, "--guests-on-exit", "destroy") as mesh:
            with mesh.channel() as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                stub.CreateDomain(pb.CreateDomainRequest(
                    xml=example.render(GUEST, state, "qemu")), timeout=120)
            serial = state / "guest" / f"{GUEST}.console.log"
            wait_for(lambda: "/ # " in serial.read_text(errors="replace"), 120,
                     "the guest to boot and its serial shell to prompt")
            time.sleep(SETTLE)
            tunnel = subprocess.Popen(cli_argv(mesh, "vnc", GUEST), stdout=subprocess.PIPE,
                                      cwd=ROOT)
            try:
                assert tunnel.stdout is not None
                url = tunnel.stdout.readline().decode().strip()
                assert url.startswith("vnc://127.0.0.1:"), url
                yield Graphics(mesh, tunnel, int(url.rpartition(":")[2]))
            finally:
                tunnel.send_signal(signal.SIGINT)
                try:
                    tunnel.wait(30)
                except subprocess.TimeoutExpired:
                    tunnel.kill()
                    tunnel.wait()


# -- comparing images ----------------------------------------------------------------

def text_rows(image: Image.Image, height: int = 16) -> list[int]:
    """The character rows (VGA text mode: 16 pixels each) that are not blank, by
    their glyphs' upper 13 pixels: the blinking cursor is the cell's last two."""
    rows = []
    for top in range(0, image.height - height + 1, height):
        if image.crop((0, top, image.width, top + 13)).convert("L").getbbox():
            rows.append(top // height)
    return rows


def dominant_colours(image: Image.Image, count: int = 2) -> list[tuple[int, int, int]]:
    colours = image.getcolors(maxcolors=1 << 24) or []
    return [cast(tuple[int, int, int], colour)
            for _, colour in sorted(colours, reverse=True)[:count]]


def lit(image: Image.Image) -> int:
    """How many pixels are not black."""
    return image.width * image.height - image.convert("L").histogram()[0]


def mismatch(one: Image.Image, two: Image.Image) -> float:
    """The pixels that differ, as a fraction of ``two``'s lit pixels (text is about a
    tenth of a text-mode screen: a fraction of all pixels would let a blank screen by)."""
    diff = ImageChops.difference(one, two).convert("L").point(lambda v: 255 if v else 0)
    return diff.histogram()[255] / max(lit(two), 1)


def find_in(screen: Image.Image, guest: Image.Image, tolerance: float = 0.1
            ) -> Image.Image | None:
    """The part of ``screen`` that shows ``guest`` at 1:1 (a viewer's window), or None.

    Candidates are where the guest's first lit pixel could be (remote-viewer's
    header bar has thousands of pixels of its grey); a candidate is checked
    on the eight pixel rows from there first, then whole. A blinking cursor or a
    line printed between the two captures is within ``tolerance``."""
    box = guest.convert("L").getbbox()
    if box is None:
        return None
    x0 = box[0]
    y0 = next(y for y in range(box[1], box[3]) if guest.getpixel((x0, y)) != (0, 0, 0))
    first = guest.getpixel((x0, y0))
    band = guest.crop((0, y0, guest.width, y0 + 8))
    pixels = screen.load()
    assert pixels is not None
    tried = 0
    for y in range(y0, screen.height - guest.height + y0 + 1):
        for x in range(x0, screen.width - guest.width + x0 + 1):
            if pixels[x, y] != first:
                continue
            tried += 1
            assert tried < 200_000, "the screen is nearly all one colour: no viewer on it"
            left = x - x0
            if mismatch(screen.crop((left, y, left + guest.width, y + 8)), band) > tolerance:
                continue
            crop = screen.crop((left, y - y0, left + guest.width, y - y0 + guest.height))
            if mismatch(crop, guest) <= tolerance:
                return crop
    return None


def assert_same_display(shown: Image.Image, guest: Image.Image) -> None:
    assert shown.size == guest.size
    assert dominant_colours(shown) == dominant_colours(guest)
    assert text_rows(shown) == text_rows(guest)
    assert mismatch(shown, guest) <= 0.1


# -- Xvfb and its screen ---------------------------------------------------------------

def read_xwd(path: Path) -> Image.Image:
    """Xvfb's screen (``-fbdir``): an XWD file, 24-bit TrueColor in 32-bit pixels."""
    data = path.read_bytes()
    fields = struct.unpack(">25I", data[:100])
    header_size, _version, _format, depth, width, height = fields[:6]
    byte_order, bits_per_pixel, bytes_per_line = fields[7], fields[11], fields[12]
    ncolors = fields[19]
    assert depth == 24 and bits_per_pixel == 32, (depth, bits_per_pixel)
    start = header_size + 12 * ncolors
    raw = "BGRX" if byte_order == 0 else "XRGB"
    return Image.frombuffer("RGB", (width, height), data[start:start + bytes_per_line * height],
                            "raw", raw, bytes_per_line, 1).copy()


@dataclass
class Xvfb:
    display: str
    screen: Path

    def capture(self) -> Image.Image:
        return read_xwd(self.screen)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTMESH_")}
        env.update(DISPLAY=self.display, NO_AT_BRIDGE="1", GDK_BACKEND="x11",
                   XDG_RUNTIME_DIR=str(self.screen.parent), HOME=str(self.screen.parent))
        return env


@pytest.fixture(scope="module")
def xvfb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xvfb]:
    assert shutil.which("Xvfb"), "Xvfb is missing: tools/install-deps.sh installs xvfb"
    directory = tmp_path_factory.mktemp("xvfb")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24",
                               "-fbdir", str(directory), "-nolisten", "tcp", "-noreset"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL,
                              stderr=(directory / "xvfb.log").open("wb"))
    os.close(write)
    try:
        with os.fdopen(read) as numbers:
            number = numbers.readline().strip()
        assert number, f"Xvfb did not start: {(directory / 'xvfb.log').read_text()}"
        yield Xvfb(f":{number}", directory / "Xvfb_screen0")
    finally:
        server.terminate()
        server.wait(30)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def shown_by_viewer(graphics: Graphics, xvfb: Xvfb, argv: list[str], log: Path,
                    end: Callable[[subprocess.Popen[bytes]], None] = stop
                    ) -> tuple[Image.Image, Image.Image]:
    """Starts a viewer on the X server and waits until its window shows the guest's
    display: (what the window shows, the screenshot it matches); ``end`` ends it."""
    with log.open("wb") as output:
        viewer = subprocess.Popen(argv, env=xvfb.env(), stdin=subprocess.DEVNULL,
                                  stdout=output, stderr=subprocess.STDOUT)
    try:
        found: list[tuple[Image.Image, Image.Image]] = []

        def shows_guest() -> bool:
            assert viewer.poll() is None, f"{argv[0]} exited:\n{log.read_text()}"
            guest = graphics.screenshot()
            screen = xvfb.capture()
            shown = find_in(screen, guest)
            # kept for a failure's diagnosis, beside the viewer's log
            screen.save(log.with_suffix(".screen.png"))
            guest.save(log.with_suffix(".guest.png"))
            if shown is not None:
                found.append((shown, guest))
            return bool(found)
        wait_for(shows_guest, PATIENCE, f"{Path(argv[0]).name}'s window to show the guest")
        return found[0]
    finally:
        end(viewer)


# -- the tests ---------------------------------------------------------------------------

def test_gvncviewer_shows_the_guest_through_the_tunnel(graphics: Graphics, xvfb: Xvfb,
                                                       tmp_path: Path) -> None:
    assert shutil.which("gvncviewer"), "tools/install-deps.sh installs gvncviewer"
    shown, guest = shown_by_viewer(
        graphics, xvfb, ["gvncviewer", f"127.0.0.1:{graphics.port - 5900}"],
        tmp_path / "gvncviewer.log")
    assert_same_display(shown, guest)


def test_remote_viewer_shows_the_guest_through_the_tunnel(graphics: Graphics, xvfb: Xvfb,
                                                          tmp_path: Path) -> None:
    assert shutil.which("remote-viewer"), "tools/install-deps.sh installs virt-viewer"
    shown, guest = shown_by_viewer(
        graphics, xvfb, ["remote-viewer", f"vnc://127.0.0.1:{graphics.port}"],
        tmp_path / "remote-viewer.log")
    assert_same_display(shown, guest)


@pytest.mark.parametrize("program", ["gvncviewer", "remote-viewer"])
def test_virtmesh_viewer_starts_a_viewer_and_ends_with_it(graphics: Graphics, xvfb: Xvfb,
                                                          tmp_path: Path, program: str) -> None:
    argv = graphics.argv("viewer", GUEST, "--viewer", program)
    status: list[int] = []

    def close_the_viewer(virtmesh: subprocess.Popen[bytes]) -> None:
        """As a user closing its window: the viewer exits 0, and then virtmesh does."""
        children = Path(f"/proc/{virtmesh.pid}/task/{virtmesh.pid}/children").read_text()
        viewer, = (int(pid) for pid in children.split()
                   if program in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(viewer, signal.SIGTERM)
        try:
            status.append(virtmesh.wait(PATIENCE))
        finally:
            stop(virtmesh)
    shown, guest = shown_by_viewer(graphics, xvfb, argv, tmp_path / "viewer.log",
                                   close_the_viewer)
    assert_same_display(shown, guest)
    assert status == [0], (tmp_path / "viewer.log").read_text()


def vncdo_capture(graphics: Graphics, path: Path) -> subprocess.Popen[bytes]:
    vncdo = Path(sys.executable).with_name("vncdo")
    return subprocess.Popen([str(vncdo), "--server", f"127.0.0.1::{graphics.port}",
                             "capture", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_vncdotool_captures_a_frame_through_the_tunnel(graphics: Graphics,
                                                       tmp_path: Path) -> None:
    pairs: list[tuple[Image.Image, Image.Image]] = []

    def captured() -> bool:
        capture = vncdo_capture(graphics, tmp_path / "frame.png")
        output = capture.communicate(timeout=PATIENCE)[0].decode(errors="replace")
        assert capture.returncode == 0, output
        pairs.append((Image.open(tmp_path / "frame.png").convert("RGB"), graphics.screenshot()))
        return mismatch(*pairs[-1]) <= 0.1
    wait_for(captured, PATIENCE, "vncdo's frame to match the screenshot")
    assert_same_display(*pairs[-1])


def test_ten_viewers_at_once_all_get_frames(graphics: Graphics) -> None:
    """Ten connections open together (each its own stream), then each asks for a
    full frame at the same time; bench/graphics.py's minimal RFB client reads them.
    When they hang up, the compute service closes their fds."""
    compute = graphics.mesh.compute.popen
    assert compute is not None
    baseline = settled_fds(compute.pid)
    sockets = [socket.create_connection(("127.0.0.1", graphics.port), timeout=120)
               for _ in range(10)]
    try:
        viewers = [Viewer(sock) for sock in sockets]  # all ten past the handshake
        assert {(v.width, v.height) for v in viewers} == {graphics.screenshot().size}
        with ThreadPoolExecutor(10) as pool:
            frames = list(pool.map(lambda viewer: viewer.frame(), viewers))
        full = 720 * 400 * viewers[0].bytes_per_pixel
        assert all(size >= full for _, _, size in frames), frames
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: open_fds(compute.pid) <= baseline, PATIENCE,
             "the service to close the fds of the viewers that left")
    assert graphics.tunnel.poll() is None, "the tunnel must serve on after its viewers leave"


# Typed on the VGA console's shell; its output goes to the serial port, whose log we read.
WORD = "sendkeyok"


def keys_for(text: str) -> list[list[str]]:
    """``send-key`` argument lists typing ``text`` (one key, or shift and a key)."""
    special = {" ": ["KEY_SPACE"], ">": ["KEY_LEFTSHIFT", "KEY_DOT"], "/": ["KEY_SLASH"],
               "\n": ["KEY_ENTER"]}
    typed = []
    for char in text:
        if char in special:
            typed.append(special[char])
        elif char.isupper():
            typed.append(["KEY_LEFTSHIFT", f"KEY_{char}"])
        else:
            typed.append([f"KEY_{char.upper()}"])
    return typed


def test_send_key_reaches_the_shell_on_the_screen(graphics: Graphics) -> None:
    before = graphics.screenshot()
    for keys in keys_for(f"echo {WORD} >/dev/ttyS0\n"):
        done = graphics.virtmesh("send-key", GUEST, *keys)
        assert done.returncode == 0, done.stderr
    wait_for(lambda: WORD in graphics.serial(), PATIENCE, "the typed command's output")

    def typed_shows() -> bool:
        after = graphics.screenshot()
        return mismatch(after, before) > 0 and text_rows(after) != [] and \
            dominant_colours(after) == dominant_colours(before)
    wait_for(typed_shows, PATIENCE, "the typed line on the screen")


def test_screenshot_command_writes_a_png_of_the_screen(graphics: Graphics,
                                                       tmp_path: Path) -> None:
    done = graphics.virtmesh("screenshot", GUEST, str(tmp_path / "screen.png"))
    assert done.returncode == 0, done.stderr
    assert f"saved to {tmp_path / 'screen.png'}" in done.stdout
    image = Image.open(tmp_path / "screen.png")
    assert image.format == "PNG" and image.size == (720, 400)
    assert text_rows(image.convert("RGB"))


def test_vncdisplay_names_the_socket(graphics: Graphics) -> None:
    done = graphics.virtmesh("vncdisplay", GUEST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unix:/") and done.stdout.strip().endswith("vnc.sock")
    readonly = graphics.virtmesh("vncdisplay", GUEST, token="readonly")
    assert readonly.returncode == 0 and readonly.stdout == done.stdout


@pytest.mark.parametrize("command", [
    ["vnc", GUEST], ["screenshot", GUEST, "/dev/null"], ["send-key", GUEST, "KEY_A"]])
def test_read_only_identity_is_refused(graphics: Graphics, command: list[str]) -> None:
    done = graphics.virtmesh(*command, token="readonly")
    assert done.returncode == 1
    assert done.stderr.startswith("virtmesh: PERMISSION_DENIED: 'readonly' lacks permission"), \
        done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int) -> int:
    """The process's fd count once it is the same twice, a second apart."""
    counts = [-1]

    def settled() -> bool:
        counts.append(open_fds(pid))
        time.sleep(1)
        return counts[-1] == counts[-2]
    wait_for(settled, PATIENCE, "the service's fd count to settle")
    return counts[-1]


def test_cancelled_stream_leaves_no_fd_open(graphics: Graphics) -> None:
    popen = graphics.mesh.compute.popen
    assert popen is not None
    with graphics.client() as client:
        open_display(client, GUEST).cancel()  # the connection and its threads exist now
        baseline = settled_fds(popen.pid)
        streams = [open_display(client, GUEST) for _ in range(5)]
        greetings = [next(iter(stream)) for stream in streams]
        assert greetings == [b"RFB 003.008\n"] * 5
        assert open_fds(popen.pid) >= baseline + 5
        for stream in streams:
            stream.cancel()
        wait_for(lambda: open_fds(popen.pid) <= baseline, PATIENCE,
                 "the service to close the cancelled streams' fds")


def test_unknown_domain_is_one_line(graphics: Graphics) -> None:
    for command in (["vnc", "nope"], ["screenshot", "nope", "/dev/null"],
                    ["send-key", "nope", "KEY_A"], ["vncdisplay", "nope"]):
        done = graphics.virtmesh(*command)
        assert done.returncode == 1
        assert done.stderr.startswith("virtmesh: NOT_FOUND: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


# -- the tunnel's own rules, against the real display -------------------------------

GREETING = b"RFB 003.008\n"


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        part = sock.recv(count - len(data))
        assert part, f"connection closed after {data!r}"
        data += part
    return data


def test_each_connection_is_its_own_stream(graphics: Graphics) -> None:
    """Two connections, two RFB sessions: each gets QEMU's greeting and, after its
    own version answer, its own list of security types."""
    address = ("127.0.0.1", graphics.port)
    with socket.create_connection(address, timeout=60) as one, \
            socket.create_connection(address, timeout=60) as two:
        assert read_exactly(one, len(GREETING)) == GREETING
        assert read_exactly(two, len(GREETING)) == GREETING
        two.sendall(GREETING)
        count = read_exactly(two, 1)[0]
        assert count >= 1 and 1 in read_exactly(two, count)  # "None" security: type 1
        one.sendall(GREETING)
        assert read_exactly(one, 1)[0] == count


def test_display_closing_closes_the_viewer(graphics: Graphics) -> None:
    """QEMU hangs up on a version it does not speak: the tunnel closes the viewer's
    socket (else recv would wait for the socket's 60 s timeout and raise)."""
    with socket.create_connection(("127.0.0.1", graphics.port), timeout=60) as viewer:
        assert read_exactly(viewer, len(GREETING)) == GREETING
        viewer.sendall(b"RFB 999.999\n")
        rest = b""
        while part := viewer.recv(4096):
            rest += part
    assert len(rest) < 4096  # at most QEMU's reason, then the end of file


def test_check_reports_what_a_viewer_would_meet(graphics: Graphics) -> None:
    with graphics.client() as client:
        with Tunnel(client, GUEST) as tunnel:
            assert tunnel.check() == "vnc"
        with Tunnel(client, "nope") as tunnel, pytest.raises(ClientError) as caught:
            tunnel.check()
    assert caught.value.code == "NOT_FOUND"


def test_vnc_command_ends_on_ctrl_c_with_status_0(graphics: Graphics) -> None:
    process = subprocess.Popen(graphics.argv("vnc", GUEST), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("vnc://127.0.0.1:"), url
        with socket.create_connection(("127.0.0.1", int(url.rpartition(":")[2])),
                                      timeout=60) as viewer:
            assert read_exactly(viewer, len(GREETING)) == GREETING
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_spice_display_through_the_tunnel(graphics: Graphics) -> None:
    """A SPICE display reached the same way: QEMU's SPICE server answers a link
    request for the main channel through the stream. The guest only needs its
    QEMU, so it stays paused."""
    name = "spicy"
    xml = example.render(name, graphics.mesh.state_dir, "qemu").replace(
        "<graphics type='vnc'>\n      <listen type='socket'/>\n    </graphics>",
        "<graphics type='spice'>\n      <listen type='none'/>\n    </graphics>")
    assert "type='spice'" in xml
    with graphics.client() as client:
        client.call("CreateDomain", pb.CreateDomainRequest(xml=xml, paused=True))
        try:
            with open_display(client, name) as session:
                assert session.opened.protocol == "spice"
                # SpiceLinkHeader (magic, version 2.2, size) + SpiceLinkMess for the
                # main channel (type 1, id 0) with no capabilities
                message = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)
                session.send(b"REDQ" + struct.pack("<III", 2, 2, len(message)) + message)
                reply = b""
                for data in session:
                    reply += data
                    if len(reply) >= 16:
                        break
                assert reply[:4] == b"REDQ", reply
                assert struct.unpack("<II", reply[4:12]) == (2, 2)
        finally:
            client.call("DestroyDomain", pb.DestroyDomainRequest(name=name))
