"""``--json`` and tables: numbers as numbers (64-bit ones too), enum names everywhere
(a vCPU's state too), no paging fields, and every table column named after the field
it shows (cli_output's rule), for every command module's tables."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import message_factory

from tests.conftest import Mesh
from virtmesh.compute.v1 import compute_service_pb2 as pb
from virtmesh.storage.v1 import storage_service_pb2 as storage_pb
from virtmesh_client.cli import COMMAND_MODULES, main
from virtmesh_client.cli_fleet import Query
from virtmesh_client.cli_output import column_matches, to_dict

Run = Callable[..., tuple[int, str, str]]


def test_64_bit_integers_are_numbers_and_paging_is_left_out() -> None:
    response = pb.GetDomainStatsResponse(stats=[pb.DomainStats(
        name="a", state=pb.DOMAIN_STATE_RUNNING, cpu=pb.CpuStats(time_ns=2**64 - 1),
        vcpus=[pb.VcpuStats(index=0, state=1, time_ns=2**40),
               pb.VcpuStats(index=1, state=2), pb.VcpuStats(index=2, state=0),
               pb.VcpuStats(index=3, state=7)],
        raw={"cpu.time": "5"})])
    data = json.loads(json.dumps(to_dict(response)))
    stats = data["stats"][0]
    assert stats["cpu"] == {"time_ns": 2**64 - 1, "user_ns": 0, "system_ns": 0}
    assert stats["state"] == "DOMAIN_STATE_RUNNING"
    assert [(v["state"], v["time_ns"]) for v in stats["vcpus"]] == [
        ("VCPU_STATE_RUNNING", 2**40), ("VCPU_STATE_BLOCKED", 0), ("VCPU_STATE_OFFLINE", 0),
        (7, 0)]  # a state newer than this client stays a number
    assert stats["raw"] == {"cpu.time": "5"}  # the API's strings stay strings
    # fields in the .proto's order, every one present but the unset messages
    assert list(stats) == [field.name for field in pb.DomainStats.DESCRIPTOR.fields
                           if field.name not in ("balloon", "dirtyrate")]
    pools = to_dict(storage_pb.ListStoragePoolsResponse(
        storage_pools=[storage_pb.StoragePool(name="p", capacity_bytes=2**63)],
        next_page_token="more"))
    assert pools == {"storage_pools": [pytest.approx(pools["storage_pools"][0])]}
    assert pools["storage_pools"][0]["capacity_bytes"] == 2**63
    assert "next_page_token" not in pools


class _AnyArgs(argparse.Namespace):
    """Command-line arguments that are all unset."""

    def __getattr__(self, name: str) -> Any:
        return None


class _EmptyClient:
    """Answers every call with an empty response of the method's type."""

    def call(self, method: str, request: Any) -> Any:
        service, = request.DESCRIPTOR.file.services_by_name.values()
        output = service.methods_by_name[method].output_type
        return message_factory.GetMessageClass(output)()

    def all_pages(self, method: str, request: Any, field: str) -> list[Any]:
        return []

    def domains(self, **_: Any) -> list[Any]:
        return []


def _queries() -> Iterator[tuple[str, Query]]:
    for module in COMMAND_MODULES:
        for name, value in vars(module).items():
            if isinstance(value, Query):
                yield f"{module.__name__.rsplit('.', 1)[1]}.{name}", value


QUERIES = dict(_queries())


def test_every_module_has_tables_to_check() -> None:
    assert len(QUERIES) >= 15 and "cli_secret.cmd_list" in QUERIES


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_table_columns_are_named_after_their_fields(name: str) -> None:
    query = QUERIES[name]
    response = query.fetch(_EmptyClient(), _AnyArgs())  # type: ignore[arg-type]
    if query.key:
        descriptor = response.DESCRIPTOR.fields_by_name[query.key].message_type
        columns = query.headers
    else:
        descriptor = response.DESCRIPTOR
        columns = query.columns or tuple(h.upper().replace(" ", "_") for h in query.headers)
    wrong = [column for column in columns if not column_matches(column, descriptor)]
    assert not wrong, f"{name}: {wrong} name no field of {descriptor.full_name}"


def test_the_rule_can_tell() -> None:
    domain = pb.DomainStats.DESCRIPTOR
    assert column_matches("CPU_TIME", domain) and column_matches("BLOCKS_READ", domain)
    assert not column_matches("CPU_S", domain) and not column_matches("NET_RX", domain)


@pytest.fixture
def virtmesh(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--socket", str(run_dir), *args])
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), (args, err)
        return code, out, err
    return run


def _item(response: Any, key: str) -> Any:
    return response.DESCRIPTOR.fields_by_name[key].message_type


@pytest.mark.parametrize(("command", "key", "descriptor"), [
    (("list",), "domains", _item(pb.ListDomainsResponse, "domains")),
    (("stats",), "stats", _item(pb.GetDomainStatsResponse, "stats")),
    (("snapshot-list", "test"), "snapshots", _item(pb.ListSnapshotsResponse, "snapshots")),
    (("pool-list",), "storage_pools", _item(storage_pb.ListStoragePoolsResponse,
                                             "storage_pools")),
    (("vol-list", "default-pool"), "storage_volumes",
     _item(storage_pb.ListStorageVolumesResponse, "storage_volumes")),
])
def test_real_tables_and_their_json(virtmesh: Run, command: tuple[str, ...], key: str,
                                    descriptor: Any) -> None:
    header = virtmesh(*command)[1].splitlines()[0].split()
    assert [column for column in header if not column_matches(column, descriptor)] == []
    data = json.loads(virtmesh("--json", *command)[1])
    assert list(data) == [key]  # no next_page_token
    for item in data[key]:
        assert set(item) <= {field.name for field in descriptor.fields}


def test_real_numbers_and_enums(virtmesh: Run) -> None:
    domain = json.loads(virtmesh("--json", "list")[1])["domains"][0]
    assert isinstance(domain["memory_kib"], int) and isinstance(domain["cpu_time_ns"], int)
    assert domain["state"].startswith("DOMAIN_STATE_")
    # (the test driver reports no CPU or per-vCPU statistics: tested above)
    stats = json.loads(virtmesh("--json", "stats", "test")[1])["stats"][0]
    assert stats["state"] == "DOMAIN_STATE_RUNNING" and stats["vcpu_current"] == 0
    pool = json.loads(virtmesh("--json", "pool-list")[1])["storage_pools"][0]
    assert isinstance(pool["capacity_bytes"], int) and pool["capacity_bytes"] > 2**32


def test_gateway_tables(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    from virtmesh.gateway.v1 import gateway_service_pb2 as gateway_pb
    flags = ["--state-dir", str(mesh.state_dir), "--gateway", mesh.target]
    assert main([*flags, "host-summary"]) == 0
    counts = capsys.readouterr().out.split("\n\n")[1].splitlines()[0].split()
    assert counts == ["SERVICE", "OBJECT_TYPE", "COUNT"]
    assert all(column_matches(c, gateway_pb.ObjectCount.DESCRIPTOR) for c in counts)
    assert main([*flags, "--json", "search", "*"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "next_page_token" not in data and data["results"]
