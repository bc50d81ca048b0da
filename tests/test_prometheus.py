"""A real Prometheus scrapes a mesh that `make run` (the supervisor) started.

The mesh runs compute on embedded QEMU with a TCG guest; Prometheus (Debian's
package, /usr/bin/prometheus) runs deploy/prometheus/prometheus.yml with a 1 s
interval and the mesh's targets.json, and the test asks its HTTP API what it
scraped. Everything listens on 127.0.0.1 on free ports.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from guest import example
from services.supervisor import METRICS_BASE_PORT, SERVICES, metrics_addresses, write_targets
from tests.conftest import ROOT, free_port, free_ports
from tests.test_e2e_qemu import short_state_dir
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

T = TypeVar("T")
GUEST = "prom"
GET_DOMAIN_CALLS = 3
# Only loopback: never a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- the supervisor's side: ports and targets.json, no mesh needed -----------------------

def test_targets_file_format(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    write_targets(path, {"gateway": "127.0.0.1:9650", "compute": "127.0.0.1:9651"})
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9650"], "labels": {"service": "gateway"}},
        {"targets": ["127.0.0.1:9651"], "labels": {"service": "compute"}},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]  # no temporary left


def test_metrics_ports() -> None:
    assert METRICS_BASE_PORT == 9650
    for base in random.sample(range(20000, 30000), 20):  # below the ephemeral range
        try:
            addresses = metrics_addresses(["gateway", "compute"], base)
        except RuntimeError:
            continue  # taken here; try another
        assert addresses == {"gateway": f"127.0.0.1:{base}", "compute": f"127.0.0.1:{base + 1}"}
        break
    else:
        pytest.fail("no two free consecutive ports found")
    free = metrics_addresses(["gateway", "compute", "storage"], 0)
    assert len(set(free.values())) == 3
    with pytest.raises(RuntimeError, match="out of range"):
        metrics_addresses(["gateway", "compute"], 65535)


def test_metrics_port_collision_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{port} for gateway .*"
                                               r"--metrics-base-port"):
            metrics_addresses(["gateway", "compute"], port)
        # the supervisor refuses to start, before it starts anything
        done = subprocess.run([sys.executable, "-m", "services.supervisor", "--state-dir",
                               str(tmp_path), "--metrics-base-port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"metrics port 127.0.0.1:{port} for gateway is not available" in done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "targets.json").exists()


# --- a real Prometheus on a real mesh -------------------------------------------------------

def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """``probe()``'s first truthy result, polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as error:
            result, last = None, error
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last})" if last else ""))


class Prometheus:
    """Prometheus' HTTP API on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with HTTP.open(url, timeout=5) as reply:
            body = reply.read().decode()
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=promql)
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} has {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None


def prometheus_config(directory: Path, targets: Path) -> Path:
    """deploy/prometheus/prometheus.yml, scraping every second from ``targets``."""
    text = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    for old, new in (("scrape_interval: 15s", "scrape_interval: 1s"),
                     ("scrape_timeout: 10s", "scrape_timeout: 1s"),
                     ("evaluation_interval: 15s", "evaluation_interval: 1s"),
                     ("- ../../.virtmesh/targets.json", f"- {targets}")):
        assert old in text, f"deploy/prometheus/prometheus.yml has no {old!r} any more"
        text = text.replace(old, new)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", directory / "alerts.yml")
    config = directory / "prometheus.yml"
    config.write_text(text)
    return config


@contextlib.contextmanager
def running_prometheus(config: Path, data: Path, log_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is missing: install Debian's prometheus package "
                    "(tools/install-deps.sh does, and `make test` runs it)")
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    prometheus = Prometheus(port)
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited: {log_path.read_text()}")
            return "Ready" in prometheus.get("/-/ready")
        wait_until(ready, 30, "prometheus to be ready")
        yield prometheus
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.qemu
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("host_libvirtd")
def test_prometheus_scrapes_the_mesh(tmp_path: Path) -> None:
    with short_state_dir() as state:
        port, token_port = free_ports(2)
        argv = [sys.executable, "-m", "services.supervisor", "--state-dir", str(state),
                "--listen", f"127.0.0.1:{port}", "--token-listen", f"127.0.0.1:{token_port}",
                "--metrics-base-port", "0", "--shutdown-timeout", "10"]
        mesh_log = state / "mesh.log"
        # Guest statistics within a 1 s scrape timeout (the services read the environment).
        environ = {**os.environ, "VIRTMESH_SCRAPE_BUDGET": "0.5"}
        with open(mesh_log, "wb") as log:
            mesh = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=environ)
        targets = state / "targets.json"
        try:
            wait_until(lambda: mesh.poll() is None and "virtmesh is running" in
                       mesh_log.read_text() or mesh.poll() is not None, 120, "the mesh to start")
            assert mesh.poll() is None, mesh_log.read_text()
            groups = json.loads(targets.read_text())
            endpoints = {g["labels"]["service"]: g["targets"][0] for g in groups}
            assert set(endpoints) == {"gateway", *SERVICES}
            assert all(e.startswith("127.0.0.1:") for e in endpoints.values())
            for address in endpoints.values():
                assert f"http://{address}/metrics" in mesh_log.read_text()  # the banner

            with grpc.secure_channel(f"127.0.0.1:{port}", _credentials(state)) as channel:
                stub = pb_grpc.ComputeServiceStub(channel)
                stub.DefineDomain(pb.DefineDomainRequest(
                    xml=example.render(GUEST, state, "qemu")))
                stub.StartDomain(pb.StartDomainRequest(name=GUEST))
                for _ in range(GET_DOMAIN_CALLS):
                    stub.GetDomain(pb.GetDomainRequest(name=GUEST))
                with pytest.raises(grpc.RpcError) as missing:
                    stub.GetDomain(pb.GetDomainRequest(name="no-such-guest"))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND

                config = prometheus_config(tmp_path / "prometheus", targets)
                with running_prometheus(config, tmp_path / "data",
                                        tmp_path / "prometheus.log") as prometheus:
                    check_scrapes(prometheus, endpoints)

                stub.DestroyDomain(pb.DestroyDomainRequest(name=GUEST))
                stub.UndefineDomain(pb.UndefineDomainRequest(name=GUEST))
            mesh.send_signal(signal.SIGINT)
            assert mesh.wait(60) == 0, mesh_log.read_text()
            assert not targets.exists(), "the supervisor left targets.json behind"
        finally:
            if mesh.poll() is None:
                mesh.send_signal(signal.SIGINT)
                try:
                    mesh.wait(60)
                except subprocess.TimeoutExpired:
                    mesh.kill()
                    mesh.wait()


def _credentials(state: Path) -> grpc.ChannelCredentials:
    pki = state / "pki"
    return grpc.ssl_channel_credentials((pki / "ca.crt").read_bytes(),
                                        (pki / "client.key").read_bytes(),
                                        (pki / "client.crt").read_bytes())


def check_scrapes(prometheus: Prometheus, endpoints: dict[str, str]) -> None:
    # every target from targets.json is scraped, and up
    def all_up() -> list[dict[str, Any]] | None:
        active = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
        return active if len(active) == len(endpoints) and all(
            t["health"] == "up" for t in active) else None
    active = wait_until(all_up, 30, f"{sorted(endpoints)} to be scraped and up")
    assert {t["labels"]["service"]: t["labels"]["instance"] for t in active} == endpoints
    assert all(t["labels"]["job"] == "virtmesh" for t in active)
    assert {r["metric"]["service"] for r in prometheus.query('up{job="virtmesh"} == 1')} == \
        set(endpoints)

    # RPC counters moved for the calls made, in compute and in the gateway that forwarded
    # them; the caller's NOT_FOUND is counted under its own code
    def handled(service: str, code: str) -> float:
        return prometheus.value(
            f'sum(grpc_server_handled_total{{service="{service}", grpc_method="GetDomain", '
            f'grpc_service="virtmesh.compute.v1.ComputeService", grpc_code="{code}"}})') or 0

    for service in ("compute", "gateway"):
        wait_until(functools.partial(lambda s: handled(s, "OK") >= GET_DOMAIN_CALLS, service),
                   15, f"{service}'s GetDomain OK count")
        assert handled(service, "NOT_FOUND") >= 1
        started = prometheus.value(
            f'sum(grpc_server_started_total{{service="{service}", grpc_method="GetDomain"}})')
        assert started is not None and started >= GET_DOMAIN_CALLS + 1
        latency = prometheus.value(f'sum(grpc_server_handling_seconds_count{{service='
                                   f'"{service}", grpc_method="GetDomain"}})')
        assert latency is not None and latency >= GET_DOMAIN_CALLS + 1
    upstream = prometheus.value('sum(virtmesh_gateway_upstream_requests_total'
                                '{upstream="compute", grpc_code="OK"})')
    assert upstream is not None and upstream >= GET_DOMAIN_CALLS
    assert prometheus.value('virtmesh_libvirt_connected{service="compute"}') == 1

    # the running guest's CPU time is there and grows from one scrape to a later one
    cpu = f'libvirt_domain_info_cpu_time_seconds_total{{service="compute", domain="{GUEST}"}}'

    def grown() -> list[float] | None:
        result = prometheus.query(f"{cpu}[1m]")
        samples = [float(v) for _, v in result[0]["values"]] if result else []
        return samples if len(samples) >= 2 and samples[-1] > samples[0] else None
    samples = wait_until(grown, 30, f"{GUEST}'s CPU time to be scraped twice and grow")
    assert samples[0] > 0
    assert prometheus.value(f'libvirt_domain_info_vstate{{domain="{GUEST}"}}') == 1  # running
    age = prometheus.value(f'virtmesh_guest_stats_age_seconds{{domain="{GUEST}"}}')
    assert age is not None and age < 30
