"""KVM or TCG for the example guest: decided by booting it (guest/kvm_probe.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from guest import example, kvm_probe
from tests.conftest import ROOT


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "guest").mkdir()
    (tmp_path / "guest" / "vmlinuz").write_bytes(b"kernel one")
    return tmp_path


def test_the_verdict_is_cached_until_what_decides_it_changes(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(example, "kvm_usable", lambda: True)
    probes = []

    def probe(_state: Path, virt_type: str, seconds: float) -> tuple[bool, str]:
        probes.append(virt_type)
        return False, "printed nothing under kvm"

    cache = tmp_path / "verdict.json"
    first = kvm_probe.decide(state, probe=probe, cache=cache)
    assert (first.virt_type, first.cached, probes) == ("qemu", False, ["kvm"])
    second = kvm_probe.decide(state, probe=probe, cache=cache)
    assert (second.virt_type, second.why, second.cached) == ("qemu", first.why, True)
    assert len(probes) == 1
    assert "TCG" in kvm_probe.describe(second) and "cached" in kvm_probe.describe(second)
    (state / "guest" / "vmlinuz").write_bytes(b"kernel two")  # a new guest kernel
    kvm_probe.decide(state, probe=probe, cache=cache)
    assert len(probes) == 2
    kvm_probe.decide(state, again=True, probe=probe, cache=cache)
    assert len(probes) == 3


def test_without_kvm_there_is_nothing_to_probe(state: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(example, "kvm_usable", lambda: False)

    def probe(*_args: object) -> tuple[bool, str]:
        raise AssertionError("probed without /dev/kvm")

    verdict = kvm_probe.decide(state, probe=probe, cache=tmp_path / "v.json")
    assert (verdict.virt_type, verdict.why) == ("qemu", "no usable /dev/kvm")


@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_the_probe_sees_a_kernel_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's positive control: under TCG the example kernel boots, and the probe
    says so (what it says of KVM depends on the host)."""
    monkeypatch.setenv("VIRTMESH_CAPS_CACHE", str(tmp_path / "caps"))
    built = subprocess.run([str(ROOT / "guest" / "build-guest.sh"), str(tmp_path / "guest")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ok, why = kvm_probe.boots(tmp_path, "qemu", 90)
    assert ok, why
    assert why.startswith("the example kernel booted under qemu in")
