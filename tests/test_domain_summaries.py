"""ListDomains builds its summaries from bulk calls (listings by flag, one stats call
per page), GetDomain from calls about one domain: both must say what libvirt's
per-domain calls say, field by field, on the same domains in every kind of state."""

from __future__ import annotations

from typing import Any

import grpc
import libvirt
import pytest

from services.common.daemon import Daemon
from services.compute.convert import state_reason
from tests.conftest import domain_xml, error_of, reason_of
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.compute.v1 import compute_service_pb2_grpc as pb_grpc

Stub = pb_grpc.ComputeServiceStub


def per_call_summary(dom: libvirt.virDomain) -> dict[str, Any]:
    """The Domain fields as the compute service made them before issue 14: seven
    libvirt calls about the one domain (as bench/bench.py's libvirt client still does)."""
    state, max_mem, memory, vcpus, _cpu_time = dom.info()
    _, reason = dom.state()
    persistent = bool(dom.isPersistent())
    return {
        "name": dom.name(), "uuid": dom.UUIDString(), "id": max(dom.ID(), 0),
        "state": state, "state_reason": state_reason(state, reason),
        "persistent": persistent, "autostart": bool(dom.autostart()) if persistent else False,
        "vcpus": vcpus, "memory_kib": memory, "max_memory_kib": max_mem,
        "os_type": dom.OSType(), "has_managed_save": bool(dom.hasManagedSaveImage()),
        "state_message": "",
    }


def fields(domain: pb.Domain) -> dict[str, Any]:
    """Every field but the CPU time, which the test driver reads off the clock."""
    return {field.name: getattr(domain, field.name) for field in domain.DESCRIPTOR.fields
            if field.name != "cpu_time_ns"}


@pytest.fixture
def zoo(compute: Daemon, stub: Stub) -> libvirt.virConnect:
    """Domains in every state a summary tells apart: running, paused, shut off by a
    destroy, never started, autostart, with a managed save image, transient."""
    for name in ("off", "paused", "destroyed", "auto", "saved", "memory"):
        stub.DefineDomain(pb.DefineDomainRequest(xml=domain_xml(name)))
    stub.CreateDomain(pb.CreateDomainRequest(xml=domain_xml("transient", 32768)))
    for name in ("paused", "destroyed", "saved"):
        stub.StartDomain(pb.StartDomainRequest(name=name))
    stub.SuspendDomain(pb.SuspendDomainRequest(name="paused"))
    stub.DestroyDomain(pb.DestroyDomainRequest(name="destroyed"))
    stub.SetDomainAutostart(pb.SetDomainAutostartRequest(name="auto", autostart=True))
    stub.SetDomainMemory(pb.SetDomainMemoryRequest(name="memory", memory_kib=32768,
                                                   scope=pb.Scope(config=True)))
    conn: libvirt.virConnect = compute.connection.conn
    conn.lookupByName("saved").managedSave(0)
    return conn


def list_all(stub: Stub, page_size: int, **filters: Any) -> list[pb.Domain]:
    found: list[pb.Domain] = []
    token = ""
    while True:
        reply = stub.ListDomains(pb.ListDomainsRequest(page_size=page_size, page_token=token,
                                                       **filters))
        found += reply.domains
        token = reply.next_page_token
        if not token:
            return found


def test_list_and_get_say_what_per_domain_calls_say(zoo: libvirt.virConnect,
                                                    stub: Stub) -> None:
    expected = {dom.name(): per_call_summary(dom) for dom in zoo.listAllDomains(0)}
    assert expected["saved"]["has_managed_save"] and expected["auto"]["autostart"]
    assert not expected["transient"]["persistent"] and expected["paused"]["state"] == \
        libvirt.VIR_DOMAIN_PAUSED
    for page_size in (2, 1000):  # pages from a held listing, and one page
        listed = list_all(stub, page_size)
        assert [d.name for d in listed] == sorted(expected)
        assert {d.name: fields(d) for d in listed} == expected
        assert all(d.cpu_time_ns > 0 for d in listed)
    for name, summary in expected.items():
        got = stub.GetDomain(pb.GetDomainRequest(name=name)).domain
        assert fields(got) == summary


@pytest.mark.parametrize("filters", [
    {"active": True}, {"active": False}, {"persistent": True}, {"persistent": False},
    {"autostart": True}, {"autostart": False},
    {"states": [pb.DOMAIN_STATE_SHUTOFF, pb.DOMAIN_STATE_PAUSED]},
    {"active": True, "persistent": True, "states": [pb.DOMAIN_STATE_RUNNING]},
])
def test_filters_select_what_per_domain_calls_select(zoo: libvirt.virConnect, stub: Stub,
                                                     filters: dict[str, Any]) -> None:
    def wanted(dom: libvirt.virDomain) -> bool:
        summary = per_call_summary(dom)
        return (filters.get("active", bool(dom.isActive())) == bool(dom.isActive())
                and filters.get("persistent", summary["persistent"]) == summary["persistent"]
                and filters.get("autostart", bool(dom.autostart())) == bool(dom.autostart())
                and summary["state"] in filters.get("states", [summary["state"]]))

    expected = sorted(dom.name() for dom in zoo.listAllDomains(0) if wanted(dom))
    assert expected  # every filter here selects something
    assert [d.name for d in list_all(stub, 2, **filters)] == expected


def test_a_held_listing_shows_each_page_as_it_is_now(zoo: libvirt.virConnect,
                                                     stub: Stub) -> None:
    """Which domains a listing's pages hold is fixed at its first page; what the
    summaries say of them is read when each page is asked for."""
    first = stub.ListDomains(pb.ListDomainsRequest(page_size=4))
    assert [d.name for d in first.domains] == ["alpha", "auto", "destroyed", "memory"]
    stub.StartDomain(pb.StartDomainRequest(name="off"))
    stub.DestroyDomain(pb.DestroyDomainRequest(name="transient"))  # gone: left out
    rest = stub.ListDomains(pb.ListDomainsRequest(page_size=4,
                                                  page_token=first.next_page_token))
    assert [d.name for d in rest.domains] == ["off", "paused", "saved"]
    off = rest.domains[0]
    assert fields(off) == per_call_summary(zoo.lookupByName("off"))
    assert off.state == pb.DOMAIN_STATE_RUNNING and off.id > 0


def test_a_token_is_refused_with_other_filters(zoo: libvirt.virConnect, stub: Stub) -> None:
    first = stub.ListDomains(pb.ListDomainsRequest(page_size=2, active=True))
    assert first.next_page_token
    for other in ({"active": False}, {}, {"active": True, "states": [pb.DOMAIN_STATE_PAUSED]}):
        error = error_of(stub.ListDomains, pb.ListDomainsRequest(
            page_size=2, page_token=first.next_page_token, **other))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error) == "INVALID_PAGE_TOKEN"
    again = stub.ListDomains(pb.ListDomainsRequest(page_size=2, active=True,
                                                   page_token=first.next_page_token))
    assert again.domains and again.domains[0].name > first.domains[-1].name
