"""Numbered, resumable event streams end to end: a watcher through the gateway that
outlives a gateway restart gets exactly what it missed; one that outlives a service
restart is told of the gap; watches hold no thread in the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import (
    ROOT,
    Mesh,
    domain_xml,
    gateway_process,
    running_mesh,
    service_process,
    wait_serving,
)
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.events.v1.events_pb2 import EventGap
from virtmesh_client.client import Client, ClientError, EventStream

DEFINED = pb.LIFECYCLE_EVENT_TYPE_DEFINED


def define(socket: Path, name: str) -> None:
    """Straight to the service, whether the gateway is up or not."""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        pb_grpc.ComputeServiceStub(channel).DefineDomain(
            pb.DefineDomainRequest(xml=domain_xml(name)), timeout=30)


class Collector:
    """Reads an EventStream on a thread: the events, and what it said meanwhile."""

    def __init__(self, open_stream: Any) -> None:
        self.notices: list[str] = []
        self.events: list[Any] = []
        self.error: ClientError | None = None
        self.stream: EventStream = open_stream(self.notices.append)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except ClientError as error:
            self.error = error

    def wait(self, count: int, timeout: float = 60) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, (self.events, self.notices)
            time.sleep(0.05)
        return self.events


@pytest.fixture
def mesh(tmp_path: Path, node_uri: str) -> Iterator[Mesh]:
    with running_mesh(tmp_path, node_uri) as running:
        yield running


def test_a_gateway_restart_loses_nothing(mesh: Mesh) -> None:
    socket = mesh.state_dir / "run" / "compute.sock"
    with Client(mesh.target, state_dir=mesh.state_dir) as client:
        watcher = Collector(lambda notice: client.watch(notice=notice))
        try:
            define(socket, "one")
            first = watcher.wait(1)[0]
            assert first.name == "one" and first.position.sequence >= 1
            mesh.gateway.stop()
            define(socket, "two")  # while nobody relays the stream
            define(socket, "three")
            mesh.gateway = gateway_process(mesh.state_dir, mesh.port,
                                           token_port=mesh.token_port).start()
            events = watcher.wait(3)
            assert [(e.name, e.lifecycle.type) for e in events] == [
                ("one", DEFINED), ("two", DEFINED), ("three", DEFINED)]
            assert [e.position.sequence for e in events] == [
                first.position.sequence + step for step in range(3)]
            assert not any(e.HasField("gap") for e in events)
            assert any("reconnecting" in text for text in watcher.notices), watcher.notices
            assert any(f"resuming after event {first.position.sequence}" in text
                       for text in watcher.notices), watcher.notices
        finally:
            watcher.stream.close()


def test_a_service_restart_is_a_gap_and_the_cli_says_so(tmp_path: Path) -> None:
    socket = tmp_path / "run" / "compute.sock"
    compute = service_process(tmp_path, "compute", "--uri", "test:///default").start()
    cli = None
    try:
        wait_serving(f"unix:{socket}", "", 60)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "protos" / "gen" / "python"), str(ROOT / "client"), str(ROOT)])}
        cli = subprocess.Popen(
            [sys.executable, "-m", "virtmesh_client", "--socket", str(socket), "--json",
             "events", "--count", "2"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert cli.stderr is not None
        assert "watching domain events" in cli.stderr.readline()
        define(socket, "before")
        compute.stop(60)
        compute = service_process(tmp_path, "compute", "--uri", "test:///default").start()
        wait_serving(f"unix:{socket}", "", 60)
        deadline = time.monotonic() + 30
        said = ""
        while "reconnected" not in said:
            assert time.monotonic() < deadline, said
            said += cli.stderr.readline()
        define(socket, "after")
        cli.wait(60)  # little output: the pipes cannot fill
        assert cli.stdout is not None
        # read through the same buffered files readline() used (communicate would not)
        out = cli.stdout.read()
        said += cli.stderr.read()
        assert cli.returncode == 0, said
        lines = [json.loads(line) for line in out.splitlines()]
        assert [line.get("name") for line in lines] == ["before", "", "after"], lines
        gap = lines[1]["gap"]
        assert gap["reason"] == EventGap.Reason.Name(EventGap.REASON_EPOCH_CHANGED)
        assert lines[0]["position"]["epoch"] != lines[2]["position"]["epoch"]
        assert "events may have been missed (the service restarted" in said, said
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
        compute.stop(60)


def test_watches_hold_no_thread(tmp_path: Path) -> None:
    """500 open watches: the service's thread count does not grow with them."""
    socket = tmp_path / "run" / "compute.sock"
    compute = service_process(tmp_path, "compute", "--uri", "test:///default").start()
    try:
        wait_serving(f"unix:{socket}", "", 60)
        assert compute.popen is not None
        threads = Path(f"/proc/{compute.popen.pid}/task")
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            stub = pb_grpc.ComputeServiceStub(channel)
            stub.ListDomains(pb.ListDomainsRequest(), timeout=30)  # its threads started
            before = len(list(threads.iterdir()))
            watches = [stub.WatchDomainEvents(pb.WatchDomainEventsRequest(), timeout=120)
                       for _ in range(500)]
            for watch in watches:
                watch.initial_metadata()
            during = len(list(threads.iterdir()))
            define(socket, "seen-by-all")
            assert all(next(watch).name == "seen-by-all" for watch in watches)
            for watch in watches:
                watch.cancel()
        assert during - before < 8, (before, during)
    finally:
        compute.stop(60)
