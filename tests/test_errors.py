"""The one error table: every libvirt code maps to a deliberate gRPC code."""

from __future__ import annotations

import grpc
import libvirt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common import errors
from services.common.errors import ServiceError, grpc_code_for, libvirt_code_name, to_status

ALL_CODES = sorted(
    value for name, value in vars(libvirt).items()
    if name.startswith("VIR_ERR_") and isinstance(value, int)
    and name not in ("VIR_ERR_NONE", "VIR_ERR_WARNING", "VIR_ERR_ERROR")
)

EXPECTED = {
    "NO_DOMAIN": grpc.StatusCode.NOT_FOUND,
    "NO_NETWORK": grpc.StatusCode.NOT_FOUND,
    "NO_STORAGE_VOL": grpc.StatusCode.NOT_FOUND,
    "NO_DOMAIN_SNAPSHOT": grpc.StatusCode.NOT_FOUND,
    "NO_SECRET": grpc.StatusCode.NOT_FOUND,
    "DOM_EXIST": grpc.StatusCode.ALREADY_EXISTS,
    "STORAGE_VOL_EXIST": grpc.StatusCode.ALREADY_EXISTS,
    "OPERATION_INVALID": grpc.StatusCode.FAILED_PRECONDITION,
    "XML_ERROR": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_ARG": grpc.StatusCode.INVALID_ARGUMENT,
    "XML_INVALID_SCHEMA": grpc.StatusCode.INVALID_ARGUMENT,
    "NO_SUPPORT": grpc.StatusCode.UNIMPLEMENTED,
    "AUTH_FAILED": grpc.StatusCode.PERMISSION_DENIED,
    "ACCESS_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "OPERATION_TIMEOUT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "RPC": grpc.StatusCode.UNAVAILABLE,
    "NO_CONNECT": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL_ERROR": grpc.StatusCode.INTERNAL,
    "OPERATION_FAILED": grpc.StatusCode.INTERNAL,
    "SYSTEM_ERROR": grpc.StatusCode.INTERNAL,
}


def test_every_libvirt_code_has_a_grpc_code() -> None:
    assert len(ALL_CODES) > 100
    for code in ALL_CODES:
        mapped = grpc_code_for(code)
        assert isinstance(mapped, grpc.StatusCode)
        assert mapped is not grpc.StatusCode.OK
        assert libvirt_code_name(code).startswith("VIR_ERR_")


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_table(name: str, expected: grpc.StatusCode) -> None:
    assert grpc_code_for(getattr(libvirt, f"VIR_ERR_{name}")) is expected


def test_every_no_object_code_is_not_found() -> None:
    object_codes = [name for name in dir(libvirt) if name.startswith("VIR_ERR_NO_")
                    and name[len("VIR_ERR_NO_"):] in (
                        "DOMAIN", "NETWORK", "STORAGE_POOL", "STORAGE_VOL", "NODE_DEVICE",
                        "INTERFACE", "NWFILTER", "NWFILTER_BINDING", "SECRET",
                        "DOMAIN_SNAPSHOT", "DOMAIN_CHECKPOINT", "DOMAIN_BACKUP",
                        "NETWORK_PORT")]
    assert len(object_codes) == 13
    for name in object_codes:
        assert grpc_code_for(getattr(libvirt, name)) is grpc.StatusCode.NOT_FOUND, name


def test_table_names_only_real_libvirt_codes() -> None:
    """A typo in the table would silently map that code to INTERNAL."""
    for names in errors._GROUPS.values():
        for name in names:
            assert hasattr(libvirt, f"VIR_ERR_{name}"), name


def _error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    proto = rpc_status.from_call(_FakeCall(status))  # type: ignore[arg-type]
    assert proto is not None
    info = error_details_pb2.ErrorInfo()
    assert proto.details[0].Unpack(info)
    return info


class _FakeCall:
    """Just enough of a grpc.Call for rpc_status.from_call to read a Status."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._status.trailing_metadata)


def test_libvirt_error_status_carries_error_info() -> None:
    conn = libvirt.open("test:///default")
    with pytest.raises(libvirt.libvirtError) as caught:
        conn.lookupByName("no-such-domain")
    status = to_status(caught.value)
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert "no-such-domain" in status.details or "not found" in status.details.lower()
    info = _error_info(status)
    assert info.reason == "VIR_ERR_NO_DOMAIN"
    assert info.domain == "libvirt.org"
    assert info.metadata["libvirt_code"] == str(libvirt.VIR_ERR_NO_DOMAIN)


def test_service_error_status() -> None:
    status = to_status(ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "name is required",
                                    "MISSING_FIELD"))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "name is required"
    assert _error_info(status).reason == "MISSING_FIELD"


def test_unexpected_exception_is_internal() -> None:
    status = to_status(KeyError("boom"))
    assert status.code is grpc.StatusCode.INTERNAL
    assert "KeyError" in status.details
