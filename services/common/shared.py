"""What the gateway shares with the services: metadata keys and small helpers.

Never imports libvirt, directly or through another module: the gateway imports
this and must not load libvirt (tests/test_gateway_process.py checks).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: metadata the gateway sets on every forwarded call: the caller's identity name ...
IDENTITY_KEY = "x-virtmesh-identity"
#: ... and its groups/roles, comma-separated; services trust both only on their
#: main socket (the gateway's side)
GROUPS_KEY = "x-virtmesh-groups"
#: response headers of every health Check: which service, its version, when it started
SERVICE_KEY = "x-virtmesh-service"
VERSION_KEY = "x-virtmesh-version"
#: RFC 3339, UTC
STARTED_KEY = "x-virtmesh-started"
#: the trailer that carries a google.rpc.Status with the error's details
STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: the ErrorInfo domain of our own errors (libvirt's are "libvirt.org")
SERVICE_ERROR_DOMAIN = "virtmesh.dev"


class ServiceError(Exception):
    """An error of ours (not libvirt's) with the gRPC code the caller should see."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name


def error_status(code: grpc.StatusCode, message: str, reason: str,
                 domain: str = SERVICE_ERROR_DOMAIN,
                 metadata: Mapping[str, str] | None = None) -> grpc.Status:
    """A status whose trailers carry a google.rpc.Status with one ErrorInfo: the one
    shape of every error a virtmesh process sends of its own."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain,
                                            metadata=dict(metadata or {})))
    proto = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(proto)


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def rfc3339_now(seconds_ago: float = 0.0) -> str:
    """Now (or ``seconds_ago``) in UTC, to the millisecond: ``2026-01-02T03:04:05.678Z``."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class CallKind:
    """One of gRPC's four call shapes, by the names each API gives it."""

    #: grpc's own: RpcMethodHandler.<name>, Channel.<name>(), grpc.<name>_rpc_method_handler
    name: str
    #: go-grpc-prometheus's ``grpc_type`` label
    metric_label: str


_CALL_KINDS = {
    (False, False): CallKind("unary_unary", "unary"),
    (True, False): CallKind("stream_unary", "client_stream"),
    (False, True): CallKind("unary_stream", "server_stream"),
    (True, True): CallKind("stream_stream", "bidi_stream"),
}


def call_kind(client_streaming: bool, server_streaming: bool) -> CallKind:
    return _CALL_KINDS[(client_streaming, server_streaming)]
