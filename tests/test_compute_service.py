"""The compute service over its UNIX socket, against libvirt's test driver."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.daemon import Daemon
from tests.conftest import XML_REFUSED, domain_xml, error_of, reason_of
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

Stub = pb_grpc.ComputeServiceStub


def names(stub: Stub, **filters: Any) -> list[str]:
    return [d.name for d in stub.ListDomains(pb.ListDomainsRequest(**filters)).domains]


def test_list_and_get(stub: Stub) -> None:
    domains = stub.ListDomains(pb.ListDomainsRequest()).domains
    assert [d.name for d in domains] == ["alpha"]
    alpha = domains[0]
    assert alpha.state == pb.DOMAIN_STATE_RUNNING
    assert alpha.persistent and alpha.vcpus == 2 and alpha.memory_kib == 65536
    assert alpha.id > 0 and len(alpha.uuid) == 36
    by_uuid = stub.GetDomain(pb.GetDomainRequest(name=alpha.uuid)).domain
    assert by_uuid.name == "alpha"


def test_define_lifecycle_undefine(stub: Stub) -> None:
    defined = stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("web"))).domain
    assert defined.state == pb.DOMAIN_STATE_SHUTOFF and defined.id == 0 and defined.persistent
    started = stub.StartDomain(pb.StartDomainRequest(name="web")).domain
    assert started.state == pb.DOMAIN_STATE_RUNNING and started.id > 0
    stub.SuspendDomain(pb.SuspendDomainRequest(name="web"))
    assert stub.GetDomain(pb.GetDomainRequest(name="web")).domain.state == \
        pb.DOMAIN_STATE_PAUSED
    stub.ResumeDomain(pb.ResumeDomainRequest(name="web"))
    stub.SetDomainAutostart(pb.SetDomainAutostartRequest(name="web", autostart=True))
    assert names(stub, autostart=True) == ["web"]
    assert names(stub, autostart=False) == ["alpha"]
    xml = stub.GetDomainXML(pb.GetDomainXMLRequest(name="web", inactive=True)).xml
    assert "<name>web</name>" in xml
    stub.DestroyDomain(pb.DestroyDomainRequest(name="web"))
    off = stub.GetDomain(pb.GetDomainRequest(name="web")).domain
    assert off.state == pb.DOMAIN_STATE_SHUTOFF and off.state_reason == "destroyed"
    assert names(stub, active=False) == ["web"]
    stub.UndefineDomain(pb.UndefineDomainRequest(name="web"))
    assert names(stub) == ["alpha"]


def test_create_transient(stub: Stub) -> None:
    created = stub.CreateDomain(pb.CreateDomainRequest(xml=domain_xml("temp"))).domain
    assert created.state == pb.DOMAIN_STATE_RUNNING and not created.persistent
    assert names(stub, persistent=False) == ["temp"]
    stub.DestroyDomain(pb.DestroyDomainRequest(name="temp"))
    assert names(stub) == ["alpha"]  # a transient domain is gone once stopped


def test_pagination_and_state_filter(stub: Stub) -> None:
    for i in range(7):
        stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(f"vm-{i}")))
    pages, token = [], ""
    while True:
        reply = stub.ListDomains(pb.ListDomainsRequest(page_size=3, page_token=token))
        pages.append([d.name for d in reply.domains])
        token = reply.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert sum(pages, []) == ["alpha"] + [f"vm-{i}" for i in range(7)]
    shutoff = names(stub, states=[pb.DOMAIN_STATE_SHUTOFF])
    assert shutoff == [f"vm-{i}" for i in range(7)]
    error = error_of(stub.ListDomains, pb.ListDomainsRequest(page_size=3, page_token=token
                                                                or "garbage"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_input_gets_precise_status_and_leaves_nothing(stub: Stub) -> None:
    error = error_of(stub.DefineDomain, pb.DefineDomainRequest(xml="<domain type='test'><name>"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) in XML_REFUSED
    error = error_of(stub.DefineDomain, pb.DefineDomainRequest(xml=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "xml" in str(error.details())
    error = error_of(stub.CreateDomain, pb.CreateDomainRequest(xml="not xml at all"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names(stub) == ["alpha"]  # nothing half-defined

    error = error_of(stub.GetDomain, pb.GetDomainRequest(name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) == "VIR_ERR_NO_DOMAIN"
    unknown_uuid = "00000000-0000-0000-0000-0000000000aa"
    error = error_of(stub.GetDomain, pb.GetDomainRequest(name=unknown_uuid))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = error_of(stub.GetDomain, pb.GetDomainRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in str(error.details())

    error = error_of(stub.StartDomain, pb.StartDomainRequest(name="alpha"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already running" in str(error.details())

    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("dup")))
    error = error_of(stub.CreateDomain, pb.CreateDomainRequest(xml=domain_xml("alpha")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert names(stub) == ["alpha", "dup"]


def test_vcpus_memory_and_unsupported(stub: Stub) -> None:
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("tune")))
    stub.SetDomainMemory(pb.SetDomainMemoryRequest(name="tune", memory_kib=32768,
                                                   scope=pb.Scope(config=True)))
    assert stub.GetDomain(pb.GetDomainRequest(name="tune")).domain.memory_kib == 32768
    error = error_of(stub.SetDomainMemory, pb.SetDomainMemoryRequest(
        name="tune", memory_kib=10 << 30, scope=pb.Scope(config=True)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_of(stub.AttachDevice, pb.AttachDeviceRequest(
        name="alpha", xml="<interface type='user'/>", scope=pb.Scope(live=True)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason_of(error) == "VIR_ERR_NO_SUPPORT"


def test_snapshots(stub: Stub) -> None:
    first = stub.CreateSnapshot(pb.CreateSnapshotRequest(
        name="alpha", xml="<domainsnapshot><name>one</name><description>first</description>"
                          "</domainsnapshot>")).snapshot
    assert first.name == "one" and first.current and first.description == "first"
    stub.CreateSnapshot(pb.CreateSnapshotRequest(
        name="alpha", xml="<domainsnapshot><name>two</name></domainsnapshot>"))
    listed = stub.ListSnapshots(pb.ListSnapshotsRequest(name="alpha")).snapshots
    assert [s.name for s in listed] == ["one", "two"]
    assert listed[1].parent == "one" and listed[1].current and not listed[0].current
    stub.RevertToSnapshot(pb.RevertToSnapshotRequest(name="alpha", snapshot="one"))
    assert stub.GetSnapshot(pb.GetSnapshotRequest(name="alpha", snapshot="one")).snapshot.current
    stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name="alpha", snapshot="one", children=True))
    assert stub.ListSnapshots(pb.ListSnapshotsRequest(name="alpha")).snapshots == []
    error = error_of(stub.GetSnapshot, pb.GetSnapshotRequest(name="alpha", snapshot="one"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(error) == "VIR_ERR_NO_DOMAIN_SNAPSHOT"


def test_stats_host_and_version(stub: Stub) -> None:
    stats = stub.GetDomainStats(pb.GetDomainStatsRequest()).stats
    assert [s.name for s in stats] == ["alpha"]
    assert stats[0].state == pb.DOMAIN_STATE_RUNNING and "state.state" in stats[0].raw
    one = stub.GetDomainStats(pb.GetDomainStatsRequest(names=["alpha"],
                                                       groups=[pb.STAT_GROUP_STATE]))
    assert [s.name for s in one.stats] == ["alpha"]
    error = error_of(stub.GetDomainStats, pb.GetDomainStatsRequest(names=["ghost"]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    node = stub.GetNodeInfo(pb.GetNodeInfoRequest())
    assert node.cpus > 0 and node.memory_kib > 0
    version = stub.GetVersion(pb.GetVersionRequest())
    assert version.hypervisor_type == "TEST" and version.libvirt_version.count(".") == 2
    assert version.virtmesh_version
    assert "<capabilities>" in stub.GetCapabilities(pb.GetCapabilitiesRequest()).xml


def test_watch_events(stub: Stub) -> None:
    events: list[pb.WatchDomainEventsResponse] = []
    stream = stub.WatchDomainEvents(pb.WatchDomainEventsRequest(names=["ev"]))
    stream.initial_metadata()  # subscribed once headers arrive

    def collect() -> None:
        for event in stream:
            events.append(event)
            if len(events) == 4:
                return

    reader = threading.Thread(target=collect)
    reader.start()
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("other")))  # filtered out
    stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml("ev")))
    stub.StartDomain(pb.StartDomainRequest(name="ev"))
    stub.DestroyDomain(pb.DestroyDomainRequest(name="ev"))
    stub.UndefineDomain(pb.UndefineDomainRequest(name="ev"))
    reader.join(10)
    stream.cancel()
    got = [(e.name, pb.LifecycleEventType.Name(e.lifecycle.type), e.lifecycle.detail)
           for e in events]
    assert got == [
        ("ev", "LIFECYCLE_EVENT_TYPE_DEFINED", "added"),
        ("ev", "LIFECYCLE_EVENT_TYPE_STARTED", "booted"),
        ("ev", "LIFECYCLE_EVENT_TYPE_STOPPED", "destroyed"),
        ("ev", "LIFECYCLE_EVENT_TYPE_UNDEFINED", "removed"),
    ]
    assert all(e.time.seconds > 0 and e.uuid for e in events)


def test_watcher_limit_and_unary_calls_still_served(tmp_path, node_uri) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import running_service

    with running_service(tmp_path, node_uri, max_event_watchers=5, max_workers=2) as compute, \
            grpc.insecure_channel(f"unix:{compute.socket_path}") as channel:
        _check_watcher_limit(compute, Stub(channel))


def _check_watcher_limit(compute: Daemon, stub: Stub) -> None:
    limit = compute.config.max_event_watchers
    streams = [stub.WatchDomainEvents(pb.WatchDomainEventsRequest()) for _ in range(limit)]
    for stream in streams:
        stream.initial_metadata()
    extra = stub.WatchDomainEvents(pb.WatchDomainEventsRequest())
    error = error_of(lambda: next(extra))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert names(stub) == ["alpha"]  # watchers do not take the unary calls' threads
    for stream in streams:
        stream.cancel()
    deadline = time.monotonic() + 5
    while compute.servicer.events.subscriber_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert compute.servicer.events.subscriber_count == 0  # cancelled watchers are released


def test_health_and_reflection(compute: Daemon) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"unix:{compute.socket_path}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "virtmesh.compute.v1.ComputeService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
        listed = {s.name for s in reply.list_services_response.service}
        assert "virtmesh.compute.v1.ComputeService" in listed


def test_oversized_message_is_refused(tmp_path, node_uri) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import running_service

    with running_service(tmp_path / "small", node_uri, max_message_bytes=4096) as daemon, \
            grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = Stub(channel)
        big = domain_xml("big") + "<!--" + "x" * 8192 + "-->"
        error = error_of(stub.DefineDomain, pb.DefineDomainRequest(xml=big))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert names(stub) == ["alpha"]
