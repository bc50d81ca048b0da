"""The storage CLI commands against a real storage service on the host's libvirt daemon,
with a dir pool in a temporary directory ("vmtest-<hex6>", removed afterwards)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from services.storage import SPEC
from tests.conftest import ROOT, running_service
from tests.test_storage_service import SYSTEM, pool_xml, remove_host_pool, unique, volume_xml
from virtmesh.storage.v1 import storage_service_pb2 as pb
from virtmesh.storage.v1 import storage_service_pb2_grpc as pb_grpc
from virtmesh_client.cli import main

#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def virtmesh(tmp_path: Path, host_libvirtd: None,
             capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    with running_service(tmp_path / "state", SYSTEM, spec=SPEC, grace_period=0.5) as daemon:
        def run(*args: str) -> tuple[int, str, str]:
            code = main(["--socket", str(daemon.socket_path), *args])
            out, err = capsys.readouterr()
            return code, out, err
        yield run


def ok(virtmesh: Run, *args: str) -> str:
    code, out, err = virtmesh(*args)
    assert (code, err) == (0, ""), (args, err)
    return out


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[1:]]


def test_pool_and_volume_commands(virtmesh: Run, tmp_path: Path) -> None:
    pool, path = unique(), tmp_path / "pool"
    definition = tmp_path / "pool.xml"
    definition.write_text(pool_xml(pool, path))
    try:
        assert ok(virtmesh, "pool-define", str(definition)).startswith(f"Pool '{pool}' defined")
        assert ok(virtmesh, "pool-build", pool) == f"Pool '{pool}' built\n" and path.is_dir()
        assert ok(virtmesh, "pool-start", pool) == f"Pool '{pool}' started\n"
        assert [pool, "running", "dir", "no", "yes"] in [
            row[:5] for row in rows(ok(virtmesh, "pool-list", "--type", "dir"))]
        assert pool not in ok(virtmesh, "pool-list", "--inactive")
        ok(virtmesh, "pool-autostart", pool)
        info = json.loads(ok(virtmesh, "--json", "pool-info", pool))
        assert info["autostart"] is True and info["state"] == "STORAGE_POOL_STATE_RUNNING"
        assert info["target_path"] == str(path)
        assert "Target path:" in ok(virtmesh, "pool-info", pool)
        assert f"<name>{pool}</name>" in ok(virtmesh, "pool-dumpxml", pool)

        volume = tmp_path / "vol.xml"
        volume.write_text(volume_xml("disk.img", 3, "MiB"))
        assert "Volume 'disk.img' created" in ok(virtmesh, "vol-create", pool, str(volume))
        assert rows(ok(virtmesh, "vol-list", pool)) == [
            ["disk.img", "file", "3.0", "MiB", "3.0", "MiB", str(path / "disk.img")]]

        source, target = tmp_path / "in.bin", tmp_path / "out.bin"
        payload = os.urandom(3 * 1024 * 1024 - 5)  # not a whole number of chunks
        source.write_bytes(payload)
        assert ok(virtmesh, "vol-upload", pool, "disk.img", str(source)) == \
            "Uploaded 3.0 MiB to volume 'disk.img'\n"
        ok(virtmesh, "vol-download", pool, "disk.img", str(target), "--length", str(len(payload)))
        assert target.read_bytes() == payload
        ok(virtmesh, "vol-download", pool, "disk.img", str(target), "--offset", "1M",
           "--length", "1K")
        assert target.read_bytes() == payload[1 << 20:(1 << 20) + 1024]

        assert ok(virtmesh, "vol-clone", pool, "disk.img", "copy.img") == \
            f"Volume 'disk.img' cloned to 'copy.img' in pool '{pool}'\n"
        assert ok(virtmesh, "vol-resize", pool, "copy.img", "8M") == \
            "Volume 'copy.img' resized to 8.0 MiB\n"
        info = json.loads(ok(virtmesh, "--json", "vol-info", pool, "copy.img"))
        assert info["capacity_bytes"] == 8 << 20 and info["format"] == "raw"
        code, _, err = virtmesh("vol-resize", pool, "copy.img", "1M")
        assert code == 1 and "INVALID_ARGUMENT" in err

        ok(virtmesh, "vol-wipe", pool, "disk.img")
        ok(virtmesh, "vol-download", pool, "disk.img", str(target))
        wiped = target.read_bytes()
        assert len(wiped) >= len(payload) and wiped.count(0) == len(wiped)
        assert "<name>copy.img</name>" in ok(virtmesh, "vol-dumpxml", pool, "copy.img")
        assert "Path:" in ok(virtmesh, "vol-info", pool, "copy.img")

        code, _, err = virtmesh("vol-info", pool, "nope.img")
        assert code == 1 and "NOT_FOUND" in err and "VIR_ERR_NO_STORAGE_VOL" in err
        code, _, err = virtmesh("vol-create", pool, str(volume))
        assert code == 1 and "ALREADY_EXISTS" in err
        code, _, err = virtmesh("vol-upload", pool, "nope.img", str(source))
        assert code == 1 and "NOT_FOUND" in err

        for name in ("copy.img", "disk.img"):
            assert ok(virtmesh, "vol-delete", pool, name) == f"Volume '{name}' deleted\n"
        (path / "behind.img").write_bytes(b"x")
        ok(virtmesh, "pool-refresh", pool)
        assert [row[0] for row in rows(ok(virtmesh, "vol-list", pool))] == ["behind.img"]
        ok(virtmesh, "vol-delete", pool, "behind.img")

        ok(virtmesh, "pool-autostart", pool, "--disable")
        assert ok(virtmesh, "pool-destroy", pool) == f"Pool '{pool}' destroyed\n"
        assert ok(virtmesh, "pool-delete", pool) == f"Pool '{pool}' deleted\n"
        assert not path.exists()
        assert ok(virtmesh, "pool-undefine", pool) == f"Pool '{pool}' undefined\n"
        code, _, err = virtmesh("pool-info", pool)
        assert code == 1 and "VIR_ERR_NO_STORAGE_POOL" in err
    finally:
        remove_host_pool(pool)


def test_pool_create_and_bad_xml(virtmesh: Run, tmp_path: Path) -> None:
    pool = unique()
    bad = tmp_path / "bad.xml"
    bad.write_text("<pool type='dir'><name>")
    code, _, err = virtmesh("pool-define", str(bad))
    assert code == 1 and "INVALID_ARGUMENT" in err
    good = tmp_path / "pool.xml"
    good.write_text(pool_xml(pool, tmp_path / "transient"))
    try:
        assert ok(virtmesh, "pool-create", str(good), "--build") == f"Pool '{pool}' created\n"
        assert [pool, "running"] in [row[:2] for row in
                                     rows(ok(virtmesh, "pool-list", "--transient"))]
        ok(virtmesh, "pool-destroy", pool)  # a transient pool is gone once stopped
        assert pool not in ok(virtmesh, "pool-list")
    finally:
        remove_host_pool(pool)


def test_pool_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_service(tmp_path, "test:///default", spec=SPEC, grace_period=0.5) as service:
        result: list[int] = []
        watcher = threading.Thread(target=lambda: result.append(main(
            ["pool-event", "default-pool", "--count", "2", "--socket",
             str(service.socket_path)])), daemon=True)
        watcher.start()
        deadline = time.monotonic() + 30  # hang guard
        while service.servicer.events.subscriber_count == 0:
            assert time.monotonic() < deadline, "pool-event never subscribed"
            time.sleep(0.02)
        # Straight through gRPC: nothing but the watcher prints while it runs.
        with grpc.insecure_channel(f"unix:{service.socket_path}") as channel:
            stub = pb_grpc.StorageServiceStub(channel)
            stub.StopStoragePool(pb.StopStoragePoolRequest(name="default-pool"))
            stub.StartStoragePool(pb.StartStoragePoolRequest(name="default-pool"))
        watcher.join(60)
    assert result == [0]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:] for line in lines] == [["default-pool", "stopped"],
                                                    ["default-pool", "started"]]


def test_failed_download_leaves_no_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.img"
    with running_service(tmp_path / "s", "test:///default", spec=SPEC,
                         grace_period=0.5) as service:
        code = main(["--socket", str(service.socket_path), "vol-download", "default-pool",
                     "no-such-volume", str(target)])
    assert code == 1 and "NOT_FOUND" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "out.img.part").exists()


def test_ctrl_c_ends_a_download_at_once(tmp_path: Path, host_libvirtd: None) -> None:
    """Ctrl-C pressed one to three times, at random moments, in the middle of a 4 GiB
    download (ten rounds): each time the process ends by itself, interrupted (status
    130, not killed by the signal), and leaves no file that looks whole; after a single
    Ctrl-C the partial file is gone too. A second Ctrl-C used to land in the middle of
    the first one's unwinding."""
    rng = random.Random()
    pool, target = unique(), tmp_path / "out.img"
    partial = tmp_path / "out.img.part"
    with running_service(tmp_path / "state", SYSTEM, spec=SPEC, grace_period=0.5) as daemon:
        stub = pb_grpc.StorageServiceStub(grpc.insecure_channel(f"unix:{daemon.socket_path}"))
        try:
            stub.DefineStoragePool(pb.DefineStoragePoolRequest(
                xml=pool_xml(pool, tmp_path / "pool")))
            stub.BuildStoragePool(pb.BuildStoragePoolRequest(name=pool))
            stub.StartStoragePool(pb.StartStoragePoolRequest(name=pool))
            stub.CreateStorageVolume(pb.CreateStorageVolumeRequest(
                pool=pool, xml=volume_xml("big.img", 4, "GiB")))
            for round_ in range(10):
                presses = rng.randint(1, 3)
                cli = subprocess.Popen(
                    [sys.executable, "-m", "virtmesh_client", "--socket",
                     str(daemon.socket_path), "vol-download", pool, "big.img", str(target)],
                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                deadline = time.monotonic() + 30
                while not (partial.exists() and partial.stat().st_size > 0):
                    assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.2))
                for _ in range(presses):
                    cli.send_signal(signal.SIGINT)
                    time.sleep(rng.uniform(0, 0.02))
                try:
                    _, stderr = cli.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    cli.kill()
                    cli.communicate()
                    pytest.fail(f"round {round_}: the CLI did not end after {presses} Ctrl-C")
                assert cli.returncode == 130, f"round {round_}, {presses} Ctrl-C: {stderr}"
                assert not target.exists()
                if presses == 1:
                    assert not partial.exists()
                partial.unlink(missing_ok=True)
        finally:
            remove_host_pool(pool)


def test_find_pool_sources_and_pool_capabilities(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """find-storage-pool-sources on the test driver's canned answers; pool-capabilities
    there is UNIMPLEMENTED (the host's daemon answers it: tests/test_storage_service.py)."""
    with running_service(tmp_path, "test:///default", spec=SPEC, grace_period=0.5) as daemon:
        def run(*args: str) -> tuple[int, str, str]:
            code = main(["--socket", str(daemon.socket_path), *args])
            out, err = capsys.readouterr()
            return code, out, err

        assert rows(ok(run, "find-storage-pool-sources", "netfs", "--host", "nfs.example")) == [
            ["nfs.example", "/testshare", "-", "-", "nfs"]]
        code, out, _ = run("--json", "find-storage-pool-sources", "logical")
        assert code == 0
        assert [s["name"] for s in json.loads(out)["sources"]] == ["testvg1", "testvg2"]
        code, _, err = run("find-storage-pool-sources", "dir")
        assert code != 0 and "UNIMPLEMENTED" in err
        code, _, err = run("pool-capabilities")
        assert code != 0 and "UNIMPLEMENTED" in err


def test_pool_capabilities_on_the_host(virtmesh: Run) -> None:
    out = ok(virtmesh, "pool-capabilities")
    assert out.startswith("<storagepoolCapabilities>")
    assert "<pool type='dir' supported='yes'>" in out
