"""Server reflection, ``grpc.reflection.v1`` and ``v1alpha``, for the services and the
gateway (libvirt-free: the gateway uses it too).

grpcio-reflection serves only v1alpha, and finds a symbol only where the descriptor
pool does: upb's pool knows messages, fields, enums and services but not methods, so
``grpcurl describe virtmesh.compute.v1.ComputeService.StartDomain`` answered "Symbol
not found". Here one servicer answers both versions: v1's messages are v1alpha's
field for field (numbers, types, names), so v1alpha's classes read and write v1's
bytes. v1's own descriptor is put in the pool, so ``describe grpc.reflection.v1...``
works like for any other service; and a symbol the pool does not find is looked up
as a method of its parent service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer as AioReflectionServicer

V1ALPHA = reflection.SERVICE_NAME
V1 = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
#: both versions, as listed and served
SERVICE_NAMES = (V1, V1ALPHA)
_METHOD = "ServerReflectionInfo"


def _v1_file() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto in the default pool, made from v1alpha's by
    renaming its package (grpcio-reflection does not ship v1)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's are deprecated=true and its Java/Go names
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_multiple_files = True
    proto.options.java_outer_classname = "ServerReflectionProto"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old):]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old):]
            method.output_type = new + method.output_type[len(old):]
    return pool.AddSerializedFile(proto.SerializeToString())  # type: ignore[no-any-return]


_v1_file()


def file_containing_symbol(pool: Any, symbol: str) -> Any:
    """The file that defines ``symbol``, methods (``package.Service.Method``) included;
    KeyError if none."""
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        pass
    parent, _, member = symbol.rpartition(".")
    try:
        service = pool.FindServiceByName(parent)
    except KeyError:
        raise KeyError(symbol) from None
    if member not in service.methods_by_name:
        raise KeyError(symbol)
    return service.file


class _Lookup:
    """What both servicers share: grpcio-reflection's answers, methods found too."""

    _pool: Any

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        from grpc_reflection.v1alpha import _base

        try:
            descriptor = file_containing_symbol(self._pool, fully_qualified_name)
        except KeyError:
            return _base._not_found_error(request)
        return _base._file_descriptor_response(descriptor, request)


class _Servicer(_Lookup, reflection.ReflectionServicer):
    pass


class _AioServicer(_Lookup, AioReflectionServicer):
    pass


def _handlers(behavior: Any) -> list[grpc.GenericRpcHandler]:
    handler = grpc.stream_stream_rpc_method_handler(
        behavior, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    return [grpc.method_handlers_generic_handler(name, {_METHOD: handler})
            for name in SERVICE_NAMES]


def enable(service_names: Iterable[str], server: grpc.Server | grpc.aio.Server) -> None:
    """Serve reflection (both versions, listed with ``service_names``) on ``server``."""
    names = sorted({*service_names, *SERVICE_NAMES})
    servicer = (_AioServicer(names) if isinstance(server, grpc.aio.Server)
                else _Servicer(names))
    server.add_generic_rpc_handlers(_handlers(servicer.ServerReflectionInfo))
