"""The one registry of services: found from the driver packages, read by everything
that needs the list (the deployment material is checked against it in
test_k8s_manifests, test_systemd_units and test_alert_rules)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import libvirt
import pytest

import services
from services.common import registry
from services.common.errors import grpc_code_for
from services.common.host_daemon import HostDaemon
from services.supervisor import SERVICES
from tests.conftest import ROOT


def test_every_driver_package_is_registered_once() -> None:
    packages = {m.name for m in pkgutil.iter_modules(services.__path__)
                if m.ispkg and m.name != "common"}
    assert set(registry.names()) == packages
    assert len(registry.names()) == len(packages)
    assert registry.names() == SERVICES


def test_a_spec_comes_from_its_generated_module() -> None:
    for spec in registry.specs():
        assert spec.descriptor.full_name.startswith(f"virtmesh.{spec.name}.v1.")
        assert spec.descriptor.file is spec.proto.DESCRIPTOR
        assert callable(spec.add_to_server)
        scheme = spec.default_uri.split(":", 1)[0]
        assert scheme == spec.driver
        assert registry.is_embedded(spec.default_uri) == spec.embedded


def test_ports_follow_the_registry_order() -> None:
    assert [spec.port_offset for spec in registry.specs()] == list(
        range(1, len(registry.specs()) + 1))


def test_the_host_daemon_serves_exactly_the_drivers_not_embedded() -> None:
    assert set(registry.host_daemon_drivers()) == {
        spec.driver for spec in registry.specs() if not spec.embedded}
    # compute's QEMU is embedded; secret is the host daemon's so that QEMU sees its
    # secrets (services/secret/__init__.py), though libvirt could embed it
    assert "qemu" not in registry.host_daemon_drivers()
    assert "secret" in registry.host_daemon_drivers()
    assert {spec.driver for spec in registry.specs() if spec.can_embed} == {"qemu", "secret"}
    daemon = HostDaemon()
    assert daemon.socket.name == "libvirt-sock"


def test_unknown_service_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="compute"):
        registry.spec("nope")


def test_one_entry_point_runs_every_service() -> None:
    """No per-driver __main__.py or console script: ``python -m services NAME`` and
    ``virtmesh-service NAME`` run any of them."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["virtmesh-service"] == "services.__main__:main"
    assert not [name for name in scripts if name.removeprefix("virtmesh-") in registry.names()]
    assert not [name for name in registry.names()
                if (Path(services.__path__[0]) / name / "__main__.py").exists()]
    for name in registry.names():
        done = subprocess.run([sys.executable, "-m", "services", name, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and f"virtmesh-{name}" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "services", "bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "compute" in done.stderr


def test_an_eighth_package_joins_the_registry(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A new package with a SPEC is found without an edit anywhere else, in the next
    port; one that breaks the port order is refused."""
    compute = registry.spec("compute")
    extra = tmp_path / "services_extra"
    (extra / "extra").mkdir(parents=True)
    (extra / "extra" / "__init__.py").write_text(
        "import dataclasses\nfrom services.compute import SPEC as COMPUTE\n"
        "SPEC = dataclasses.replace(COMPUTE, name='extra', "
        f"port_offset={len(registry.names()) + 1})\n")
    monkeypatch.setattr(services, "__path__", [*services.__path__, str(extra)])
    registry._specs.cache_clear()
    try:
        assert registry.names()[-1] == "extra"
        assert registry.spec("extra").proto is compute.proto
        (extra / "extra" / "__init__.py").write_text(
            "import dataclasses\nfrom services.compute import SPEC as COMPUTE\n"
            "SPEC = dataclasses.replace(COMPUTE, name='extra', port_offset=9)\n")
        sys.modules.pop("services.extra", None)
        registry._specs.cache_clear()
        with pytest.raises(RuntimeError, match="port offsets"):
            registry.names()
    finally:
        sys.modules.pop("services.extra", None)
        monkeypatch.undo()
        registry._specs.cache_clear()
        importlib.invalidate_caches()


def test_the_error_table_knows_every_object_a_service_serves() -> None:
    """A new service's objects need their NOT_FOUND and INVALID_ARGUMENT codes in
    services/common/errors.py: this says so when they are missing."""
    for spec in registry.specs():
        assert spec.objects, spec.name
        for name in spec.objects:
            assert grpc_code_for(getattr(libvirt, f"VIR_ERR_NO_{name}")) is \
                grpc.StatusCode.NOT_FOUND, (spec.name, name)
            invalid = getattr(libvirt, f"VIR_ERR_INVALID_{name}", None)
            if invalid is not None:
                assert grpc_code_for(invalid) is grpc.StatusCode.INVALID_ARGUMENT, name
