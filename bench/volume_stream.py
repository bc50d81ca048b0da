"""Benchmark: volume upload and download through the storage service, and its memory.

For each size (default 64 and 256 MiB) a fresh storage service process is started
on a temporary socket against the host's libvirt daemon (storage:///system); a
transient dir pool in a temporary directory holds one raw volume. The volume is
uploaded with UploadStorageVolume (1 MiB chunks) and downloaded back with
DownloadStorageVolume, checked by SHA-256. Neither side holds more than a chunk:
the data is one random MiB repeated, hashed as it streams.

Printed per size: MiB/s both ways, and the service process's peak RSS growth
(VmHWM at the end minus VmRSS once it serves). Bounded memory shows as the same
growth for every size. The pool, its directory and the services are removed at
the end, on error too.

Run from the repository root: ``.venv/bin/python -m bench.volume_stream
[--sizes 64,256] [--dir /var/tmp] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.common.host_daemon import HostDaemon
from services.supervisor import wait_serving
from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh_client.client import Client

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def storage_service(state: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    log = state / "storage.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services", "storage", "--state-dir", str(state),
             "--uri", "storage:///system", "--log-level", "WARNING"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    target = f"unix:{state / 'run' / 'storage.sock'}"
    try:
        wait_serving(target, "", 60)
        yield process, target
    except BaseException:
        print(log.read_text(errors="replace"), file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _chunks(pool: str, name: str, size: int, block: bytes,
            digest: Any) -> Iterator[pb.UploadStorageVolumeRequest]:
    yield pb.UploadStorageVolumeRequest(pool=pool, name=name, length=size)
    for start in range(0, size, len(block)):
        data = block[:size - start]
        digest.update(data)
        yield pb.UploadStorageVolumeRequest(data=data)


def measure(size_mib: int, work: Path) -> dict[str, Any]:
    size = size_mib * MIB
    state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
    pool = f"vmbench-{uuid.uuid4().hex[:6]}"
    with storage_service(state) as (process, target), Client(target, timeout=120) as client:
        baseline = _status_kib(process.pid, "VmRSS")
        xml = (f"<pool type='dir'><name>{pool}</name><target><path>{work / pool}</path>"
               "</target></pool>")
        client.call("CreateStoragePool", pb.CreateStoragePoolRequest(xml=xml, build=True))
        try:
            client.call("CreateStorageVolume", pb.CreateStorageVolumeRequest(
                pool=pool, xml=f"<volume><name>bench.img</name><capacity unit='bytes'>{size}"
                               "</capacity><target><format type='raw'/></target></volume>"))
            sent = hashlib.sha256()
            started = time.perf_counter()
            reply = client.upload("UploadStorageVolume",
                                  _chunks(pool, "bench.img", size, os.urandom(MIB), sent),
                                  pb.UploadStorageVolumeRequest)
            upload_s = time.perf_counter() - started
            upload_peak = _status_kib(process.pid, "VmHWM")
            assert reply.bytes_written == size, reply
            received, count = hashlib.sha256(), 0
            started = time.perf_counter()
            for chunk in client.stream("DownloadStorageVolume", pb.DownloadStorageVolumeRequest(
                    pool=pool, name="bench.img"), timeout=600):
                received.update(chunk.data)
                count += len(chunk.data)
            download_s = time.perf_counter() - started
            if count != size or received.digest() != sent.digest():
                raise RuntimeError(f"downloaded {count} bytes that differ from the upload")
            peak = _status_kib(process.pid, "VmHWM")
        finally:
            with contextlib.suppress(Exception):
                client.call("DeleteStorageVolume",
                            pb.DeleteStorageVolumeRequest(pool=pool, name="bench.img"))
            with contextlib.suppress(Exception):
                client.call("StopStoragePool", pb.StopStoragePoolRequest(name=pool))
            shutil.rmtree(work / pool, ignore_errors=True)
    return {"size_mib": size_mib, "upload_mib_s": round(size_mib / upload_s, 1),
            "download_mib_s": round(size_mib / download_s, 1),
            "rss_baseline_mib": round(baseline / 1024, 1),
            "rss_peak_growth_mib": round((peak - baseline) / 1024, 1),
            "rss_upload_growth_mib": round((upload_peak - baseline) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.volume_stream", description=__doc__)
    parser.add_argument("--sizes", default="64,256", help="volume sizes in MiB, comma-separated")
    parser.add_argument("--dir", default="/var/tmp",
                        help="where the temporary pool directory goes (not a tmpfs, ideally)")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="virtmesh-volbench-", dir=args.dir))
    host = HostDaemon()  # the storage driver lives in the host's libvirtd
    try:
        host.ensure()
        results = [measure(int(size), work) for size in args.sizes.split(",")]
    finally:
        host.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'size':>8}  {'upload':>12}  {'download':>12}  {'service RSS growth':>18}")
    for r in results:
        print(f"{r['size_mib']:>4} MiB  {r['upload_mib_s']:>6} MiB/s  "
              f"{r['download_mib_s']:>6} MiB/s  {r['rss_peak_growth_mib']:>14} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"volume_stream": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
