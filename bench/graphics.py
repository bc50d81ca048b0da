"""Benchmark: a VNC viewer's frame latency through the gateway's graphics tunnel.

Starts the compute service (embedded QEMU) and the gateway in a temporary
directory, boots the example guest under TCG (its VGA display, 720x400, on a VNC
server listening on a UNIX socket), and then measures, for one viewer, the time
from a full-screen FramebufferUpdateRequest (non-incremental, raw encoding: every
pixel every time, about 1.1 MiB) to the last byte of the update, on three paths:

* ``qemu``: straight to QEMU's own VNC UNIX socket on the node (where
  GetDomainDisplay says it listens): no virtmesh at all;
* ``service``: ``virtmesh vnc``'s tunnel (a local TCP port) over the compute
  service's UNIX socket, one OpenDomainGraphics stream (virDomainOpenGraphicsFD);
* ``gateway``: the same tunnel over the gateway (TLS), as a viewer off the node
  uses it.

The viewer is a minimal RFB 3.8 client (no authentication, shared session, raw
encoding). Printed per path: p50, p90 and mean ms from the request to the last
byte (QEMU answers at its next display refresh, so this includes its own pacing),
p50 ms and MiB/s from the update's first byte to its last (what carrying it
costs), and the ratios of the tunnels' medians to QEMU's. Everything it starts is
stopped at the end.

Run from the repository root: ``.venv/bin/python -m bench.graphics [--frames N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.pki import ensure_dev_pki
from guest import example
from services.supervisor import client_credentials, wait_serving
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh_client.cli_graphics import Tunnel
from virtmesh_client.client import Client

ROOT = Path(__file__).resolve().parent.parent
GUEST = "bench-gfx"
PATHS = ("qemu", "service", "gateway")
LABELS = {"qemu": "QEMU's VNC socket (unix)", "service": "tunnel via compute (unix)",
          "gateway": "tunnel via gateway (TLS)"}


# -- a minimal RFB client ------------------------------------------------------------

class Viewer:
    """RFB 3.8 over any connected socket: no authentication, shared, raw pixels."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        version = self._read(12)
        if not version.startswith(b"RFB 003."):
            raise RuntimeError(f"not an RFB server: {version!r}")
        sock.sendall(b"RFB 003.008\n")
        types = self._read(self._read(1)[0])
        if 1 not in types:
            raise RuntimeError(f"the display wants authentication (types {list(types)})")
        sock.sendall(b"\x01")
        if struct.unpack(">I", self._read(4))[0] != 0:
            raise RuntimeError("security handshake failed")
        sock.sendall(b"\x01")  # ClientInit: shared
        self.width, self.height, bpp = struct.unpack(">HHB", self._read(5))
        self.bytes_per_pixel = bpp // 8
        self._read(15)  # the rest of the pixel format
        self._read(struct.unpack(">I", self._read(4))[0])  # the desktop's name
        sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only

    def _read(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            part = self.sock.recv(min(count - len(data), 1 << 20))
            if not part:
                raise RuntimeError("the display closed the connection")
            data += part
        return bytes(data)

    def frame(self) -> tuple[float, float, int]:
        """One full-screen update, requested and read to its last byte: seconds from
        the request to the last byte, from the first byte to the last, bytes read."""
        started = time.perf_counter()
        self.sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, self.width, self.height))
        area, total = 0, 0
        first = 0.0
        while area < self.width * self.height:
            kind = self._read(1)[0]
            first = first or time.perf_counter()
            if kind == 0:  # FramebufferUpdate
                count = struct.unpack(">xH", self._read(3))[0]
                for _ in range(count):
                    _x, _y, w, h, encoding = struct.unpack(">HHHHi", self._read(12))
                    if encoding != 0:
                        raise RuntimeError(f"unexpected encoding {encoding}")
                    self._read(w * h * self.bytes_per_pixel)
                    area += w * h
                    total += 12 + w * h * self.bytes_per_pixel
            elif kind == 2:  # Bell
                continue
            elif kind == 3:  # ServerCutText
                self._read(3)
                self._read(struct.unpack(">I", self._read(4))[0])
            else:
                raise RuntimeError(f"unexpected server message {kind}")
        done = time.perf_counter()
        return done - started, done - first, total


def measure(connect: Callable[[], socket.socket], frames: int, warmup: int) -> dict[str, float]:
    with contextlib.closing(connect()) as sock:
        viewer = Viewer(sock)
        for _ in range(warmup):
            viewer.frame()
        measured = [viewer.frame() for _ in range(frames)]
    times = sorted(latency for latency, _, _ in measured)
    transfers = [transfer for _, transfer, _ in measured]
    return {"frames": frames, "width": viewer.width, "height": viewer.height,
            "p50_ms": 1000 * statistics.median(times),
            "p90_ms": 1000 * times[min(len(times) - 1, int(len(times) * 0.9))],
            "mean_ms": 1000 * statistics.fmean(times),
            "transfer_p50_ms": 1000 * statistics.median(transfers),
            "transfer_mib_s": sum(size for _, _, size in measured) / sum(transfers) / (1 << 20)}


# -- the mesh and the guest --------------------------------------------------------------

def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def mesh(state: Path) -> Iterator[tuple[str, str]]:
    """compute (embedded QEMU) and the gateway: (compute's target, gateway's address)."""
    built = subprocess.run([str(ROOT / "guest" / "build-guest.sh"), str(state / "guest")],
                           capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"build-guest.sh failed: {built.stderr}")
    ensure_dev_pki(state / "pki")
    logs = state / "log"
    logs.mkdir(parents=True, exist_ok=True)
    compute = _start([sys.executable, "-m", "services", "compute", "--state-dir", str(state),
                      "--uri", f"qemu:///embed?root={state}/qemu", "--guests-on-exit",
                      "destroy", "--log-level", "WARNING"], logs / "compute.log")
    port = _free_port()
    gateway = _start([sys.executable, "-m", "gateway", "--state-dir", str(state), "--listen",
                      f"127.0.0.1:{port}", "--log-level", "WARNING"], logs / "gateway.log")
    try:
        target = f"unix:{state / 'run' / 'compute.sock'}"
        wait_serving(target, "", 60)
        wait_serving(f"127.0.0.1:{port}", "", 30, client_credentials(state / "pki"))
        yield target, f"127.0.0.1:{port}"
    finally:
        _stop(gateway)
        _stop(compute)


def boot_guest(client: Client, state: Path) -> str:
    """Starts the example guest; once it has booted, the socket its VNC server is on."""
    client.call("CreateDomain", pb.CreateDomainRequest(xml=example.render(GUEST, state, "qemu")))
    serial = state / "guest" / f"{GUEST}.console.log"
    deadline = time.monotonic() + 180
    while "virtmesh-guest: booted" not in (serial.read_text(errors="replace")
                                           if serial.exists() else ""):
        if time.monotonic() > deadline:
            raise RuntimeError("the guest did not boot within 180 s")
        time.sleep(0.2)
    displays = client.call("GetDomainDisplay", pb.GetDomainDisplayRequest(name=GUEST)).displays
    sockets = [d.socket for d in displays if d.type == "vnc" and d.socket]
    if not sockets:
        raise RuntimeError(f"the guest's VNC server has no socket: {displays}")
    return sockets[0]


@contextlib.contextmanager
def tunnel(client: Client) -> Iterator[Tunnel]:
    with Tunnel(client, GUEST) as running:
        threading.Thread(target=running.serve, daemon=True).start()
        yield running


def run(frames: int, warmup: int) -> dict[str, dict[str, float]]:
    state = Path(tempfile.mkdtemp(prefix="vmb-", dir="/tmp"))  # QEMU's sockets: keep it short
    try:
        with mesh(state) as (compute_target, gateway_address), \
                Client(compute_target) as direct, \
                Client(gateway_address, state_dir=state) as remote:
            vnc_socket = boot_guest(direct, state)
            time.sleep(3)  # the shells' banners: a settled screen

            def unix() -> socket.socket:
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(vnc_socket)
                return sock
            results = {"qemu": measure(unix, frames, warmup)}
            for path, client in (("service", direct), ("gateway", remote)):
                with tunnel(client) as running:
                    def tcp(running: Tunnel = running) -> socket.socket:
                        sock = socket.create_connection((running.host, running.port))
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        return sock
                    results[path] = measure(tcp, frames, warmup)
            return results
    finally:
        shutil.rmtree(state, ignore_errors=True)


def render(results: dict[str, dict[str, float]]) -> str:
    first = results["qemu"]
    lines = [f"graphics: one viewer, full-screen raw updates of {first['width']}x"
             f"{first['height']} ({first['frames']:.0f} frames per path)",
             f"{'':<28} {'request to last byte':^26}   {'first to last byte':^18}",
             f"{'path':<28} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}   {'p50 ms':>8} "
             f"{'MiB/s':>8}"]
    for path in PATHS:
        r = results[path]
        lines.append(f"{LABELS[path]:<28} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
                     f"{r['mean_ms']:>8.2f}   {r['transfer_p50_ms']:>8.2f} "
                     f"{r['transfer_mib_s']:>8.1f}")

    def ratio(a: str, b: str, key: str) -> float:
        return results[a][key] / results[b][key]
    lines += ["", f"{'ratios (p50)':<28} {'service/qemu':>13} {'gateway/qemu':>13} "
              f"{'gateway/service':>16}"]
    for key, label in (("p50_ms", "frame latency"), ("transfer_p50_ms", "frame transfer")):
        lines.append(f"{label:<28} {ratio('service', 'qemu', key):>13.2f} "
                     f"{ratio('gateway', 'qemu', key):>13.2f} "
                     f"{ratio('gateway', 'service', key):>16.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.graphics", description=__doc__)
    parser.add_argument("--frames", type=int, default=50, help="measured frames per path")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured frames first")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        parser.error("--frames must be >= 1 and --warmup >= 0")
    results = run(args.frames, args.warmup)
    print(render(results))
    if args.out:
        Path(args.out).write_text(json.dumps({"graphics": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
