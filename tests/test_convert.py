"""libvirt values to compute messages."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from services.common import paging
from services.common.errors import ServiceError
from services.compute import convert
from virtmesh.compute.v1 import compute_service_pb2 as pb


def test_states_share_numbering_with_libvirt() -> None:
    for name in ("RUNNING", "BLOCKED", "PAUSED", "SHUTDOWN", "SHUTOFF", "CRASHED",
                 "PMSUSPENDED"):
        assert convert.domain_state(getattr(libvirt, f"VIR_DOMAIN_{name}")) == \
            pb.DomainState.Value(f"DOMAIN_STATE_{name}")
    assert convert.domain_state(99) == pb.DOMAIN_STATE_UNSPECIFIED


@pytest.mark.parametrize(("state", "reason", "text"), [
    (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED, "booted"),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, "user"),
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, "destroyed"),
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, "shutdown"),
    (libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTDOWN_USER, "user"),
    (libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED, "panicked"),
    (libvirt.VIR_DOMAIN_RUNNING, 999, "reason_999"),
])
def test_state_reasons(state: int, reason: int, text: str) -> None:
    assert convert.state_reason(state, reason) == text


@pytest.mark.parametrize(("event", "detail", "kind", "text"), [
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED,
     pb.LIFECYCLE_EVENT_TYPE_STARTED, "booted"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
     pb.LIFECYCLE_EVENT_TYPE_STOPPED, "shutdown"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
     pb.LIFECYCLE_EVENT_TYPE_STOPPED, "destroyed"),
    (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED,
     pb.LIFECYCLE_EVENT_TYPE_DEFINED, "added"),
    (libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
     pb.LIFECYCLE_EVENT_TYPE_SHUTDOWN, "finished"),
    (libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED,
     pb.LIFECYCLE_EVENT_TYPE_CRASHED, "panicked"),
])
def test_lifecycle_events(event: int, detail: int, kind: int, text: str) -> None:
    message = convert.lifecycle_event(event, detail)
    assert message.type == kind
    assert message.detail == text


def test_version_string() -> None:
    assert convert.version_string(9_000_000) == "9.0.0"
    assert convert.version_string(7_002_022) == "7.2.22"


class _Dom:
    def name(self) -> str:
        return "web"

    def UUIDString(self) -> str:
        return "6695eb01-f6a4-8304-79aa-97f2502e193f"


def test_domain_stats_typed_and_raw() -> None:
    record = {
        "state.state": 1, "state.reason": 1, "cpu.time": 5_000_000_000, "cpu.user": 3,
        "balloon.current": 131072, "balloon.maximum": 262144, "balloon.rss": 9000,
        "vcpu.current": 2, "vcpu.maximum": 4, "vcpu.0.state": 1, "vcpu.0.time": 11,
        "vcpu.1.state": 1, "vcpu.1.time": 22,
        "net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": 100, "net.0.tx.pkts": 7,
        "block.count": 1, "block.0.name": "vda", "block.0.path": "/x.qcow2",
        "block.0.rd.bytes": 4096, "block.0.wr.reqs": 3, "block.0.capacity": 1 << 30,
        "perf.cycles": 1,
    }
    stats = convert.domain_stats(_Dom(), record)  # type: ignore[arg-type]
    assert stats.state == pb.DOMAIN_STATE_RUNNING and stats.state_reason == "booted"
    assert stats.cpu.time_ns == 5_000_000_000 and stats.cpu.user_ns == 3
    assert stats.balloon.current_kib == 131072 and stats.balloon.rss_kib == 9000
    assert (stats.vcpu_current, stats.vcpu_maximum) == (2, 4)
    assert [(v.index, v.time_ns) for v in stats.vcpus] == [(0, 11), (1, 22)]
    assert stats.interfaces[0].name == "vnet0" and stats.interfaces[0].rx_bytes == 100
    assert stats.interfaces[0].tx_packets == 7
    assert stats.blocks[0].path == "/x.qcow2" and stats.blocks[0].read_bytes == 4096
    assert stats.blocks[0].capacity_bytes == 1 << 30
    assert stats.raw["perf.cycles"] == "1" and len(stats.raw) == len(record)


def test_paging_walks_every_item_once() -> None:
    names = [f"d{i:03}" for i in range(250)]
    seen: list[str] = []
    token = ""
    while True:
        chunk, token = paging.page(names[::-1], str, 100, token, "f")
        seen += chunk
        if not token:
            break
    assert seen == names


def test_paging_rejects_foreign_and_garbage_tokens() -> None:
    _, token = paging.page(["a", "b", "c"], str, 1, "", "filters-1")
    with pytest.raises(ServiceError, match="other filters"):
        paging.page(["a", "b", "c"], str, 1, token, "filters-2")
    with pytest.raises(ServiceError, match="malformed"):
        paging.page(["a"], str, 1, "!!not-a-token", "f")
    with pytest.raises(ServiceError, match="negative"):
        paging.page(["a"], str, -1, "", "f")


def test_domain_stats_tables_keep_order_and_leave_the_rest_raw() -> None:
    """Indexed keys go in index order (10 after 9), untyped ones only to raw, and a
    key's place worked out once serves the next guest."""
    record: dict[str, Any] = {"vcpu.current": 11, "block.count": 2, "block.1.name": "vdb",
                              "block.0.name": "vda", "block.0.errors": 5,
                              "balloon.disk_caches": 7, "cpu.system": 9}
    record.update({f"vcpu.{i}.time": i for i in range(11)})
    for _ in range(2):
        stats = convert.domain_stats(_Dom(), record)  # type: ignore[arg-type]
        assert [v.index for v in stats.vcpus] == list(range(11))
        assert [v.time_ns for v in stats.vcpus] == list(range(11))
        assert [b.name for b in stats.blocks] == ["vda", "vdb"]
        assert stats.cpu.system_ns == 9 and not stats.HasField("balloon")
        assert stats.raw["block.0.errors"] == "5" and stats.raw["balloon.disk_caches"] == "7"
        assert not stats.interfaces and stats.state == pb.DOMAIN_STATE_UNSPECIFIED
