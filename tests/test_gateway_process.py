"""The gateway never loads libvirt (ARCHITECTURE.md): not when it starts, and not
while it serves calls on any of its paths (admission, forwarding, its own API,
health). What it shares with the services lives in services/common/shared.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.pki import ensure_dev_pki
from services.supervisor import client_credentials, wait_serving
from tests.conftest import ROOT, Process, free_port
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc
from virtmesh.gateway.v1 import gateway_service_pb2 as gpb
from virtmesh.gateway.v1 import gateway_service_pb2_grpc as gpb_grpc

pytestmark = pytest.mark.timeout(120)

#: prints, as the process exits, the libvirt modules it has loaded
_REPORT_AT_EXIT = """
import atexit, runpy, sys
def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("libvirt", "libvirtmod"))
    with open({path!r}, "w") as out:
        out.write(" ".join(loaded) or "none")
atexit.register(report)
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""


def test_importing_the_gateway_loads_no_libvirt() -> None:
    check = ("import sys, gateway.__main__, gateway.server; "
             "print(sorted(m for m in sys.modules if m.startswith('libvirt')))")
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_a_serving_gateway_loads_no_libvirt(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ensure_dev_pki(pki)
    report = tmp_path / "loaded-modules.txt"
    port = free_port()
    gateway = Process([sys.executable, "-c", _REPORT_AT_EXIT.format(path=str(report)),
                       "--state-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
                      tmp_path / "log" / "gateway.log").start()
    try:
        target = f"127.0.0.1:{port}"
        wait_serving(target, "", 30, client_credentials(pki))
        with grpc.secure_channel(target, client_credentials(pki)) as channel:
            # forwarded (admitted, then UNAVAILABLE: no compute service is running)
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ComputeServiceStub(channel).GetDomain(pb.GetDomainRequest(name="a"),
                                                              timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            # the gateway's own API and health, which probe the services behind it
            api = gpb_grpc.GatewayServiceStub(channel)
            api.ListServices(gpb.ListServicesRequest(), timeout=10)
            api.Search(gpb.SearchRequest(pattern="*"), timeout=10)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
                service="virtmesh.compute.v1.ComputeService"), timeout=10)
    finally:
        assert gateway.stop() == 0, gateway.log()
    assert report.read_text() == "none", gateway.log()
