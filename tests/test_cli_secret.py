"""The secret-* commands against a real secret service on the host's secret driver
(every secret with a unique "vmtest-" usage, undefined afterwards)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.secret import SPEC
from tests.conftest import running_service
from tests.test_secret_service import SYSTEM, ceph_xml, remove_host_secrets
from virtmesh.secret.v1 import secret_service_pb2 as pb
from virtmesh_client.cli import main
from virtmesh_client.client import Client

pytestmark = pytest.mark.timeout(120)
#: ``virtmesh(*args, stdin=b"") -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def service(tmp_path: Path, host_libvirtd: None) -> Iterator[tuple[str, str]]:
    """The service's ``unix:`` target and this test's usage-id prefix."""
    prefix = f"vmtest-{uuid.uuid4().hex[:6]}"
    try:
        with running_service(tmp_path, SYSTEM, spec=SPEC, grace_period=0.5) as daemon:
            yield f"unix:{daemon.socket_path}", prefix
    finally:
        remove_host_secrets(prefix)


@pytest.fixture
def virtmesh(service: tuple[str, str], capsysbinary: pytest.CaptureFixture[bytes],
             monkeypatch: pytest.MonkeyPatch) -> Run:
    def run(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main(["--socket", service[0], *args])
        out, err = capsysbinary.readouterr()
        return code, out.decode(errors="replace"), err.decode()
    return run


def test_secret_commands(virtmesh: Run, service: tuple[str, str], tmp_path: Path) -> None:
    prefix = service[1]
    xml = tmp_path / "secret.xml"
    xml.write_text(ceph_xml(prefix, description="cli test"))
    code, out, err = virtmesh("secret-define", str(xml))
    assert code == 0, err
    secret = out.split()[1]
    assert out == f"Secret {secret} defined\n" and uuid.UUID(secret)

    code, out, _ = virtmesh("secret-list", "--usage", "ceph")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "USAGE", "EPHEMERAL", "PRIVATE", "DESCRIPTION"]
    assert [secret, "ceph", prefix, "no", "no", "cli", "test"] in [row.split() for row in rows]
    code, out, _ = virtmesh("--json", "secret-list", "--private", "yes")
    assert secret not in [s["name"] for s in json.loads(out)["secrets"]]
    code, out, _ = virtmesh("secret-info", "--usage", "ceph", prefix)
    assert code == 0 and "UUID:" in out and secret in out
    code, out, _ = virtmesh("secret-dumpxml", secret)
    assert f"<name>{prefix}</name>" in out

    value = b"\x00binary\nvalue\xff"
    assert virtmesh("secret-set-value", secret, stdin=value)[0] == 0
    code, out, _ = virtmesh("secret-get-value", secret)
    assert (code, base64.b64decode(out)) == (0, value)
    path = tmp_path / "value.b64"
    path.write_bytes(base64.b64encode(b"from a file") + b"\n")
    code, out, _ = virtmesh("secret-set-value", secret, "--file", str(path), "--base64")
    assert (code, out) == (0, f"Secret {secret} value set\n")
    code, out, _ = virtmesh("secret-get-value", secret, "--plain")
    assert out == "from a file"
    code, out, _ = virtmesh("--json", "secret-get-value", secret)
    assert base64.b64decode(json.loads(out)["value"]) == b"from a file"

    code, _, err = virtmesh("secret-set-value", secret, "--base64", stdin=b"not base64!")
    assert code == 2 and "base64" in err
    code, _, err = virtmesh("secret-set-value", secret)  # empty stdin
    assert code == 1 and "INVALID_ARGUMENT" in err
    code, _, err = virtmesh("secret-dumpxml", str(uuid.uuid4()))
    assert code == 1 and "NOT_FOUND" in err and "VIR_ERR_NO_SECRET" in err

    code, out, _ = virtmesh("secret-undefine", secret)
    assert (code, out) == (0, f"Secret {secret} undefined\n")
    assert virtmesh("secret-info", secret)[0] == 1


def test_secret_event_count(virtmesh: Run, service: tuple[str, str]) -> None:
    target, prefix = service
    result: list[tuple[int, str, str]] = []
    with Client(target) as client:
        secret = client.call("DefineSecret", pb.DefineSecretRequest(xml=ceph_xml(prefix))).secret
        watcher = threading.Thread(target=lambda: result.append(
            virtmesh("secret-event", secret.name, "--count", "2")))
        watcher.start()
        # The watcher subscribes at some point; events before that are not seen.
        deadline = time.monotonic() + 30
        while watcher.is_alive() and time.monotonic() < deadline:
            client.call("SetSecretValue", pb.SetSecretValueRequest(name=secret.name, value=b"v"))
            time.sleep(0.05)
        watcher.join(5)
    assert result, "secret-event --count 2 did not return"
    code, out, _ = result[0]
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert all(f"{secret.name}  ceph {prefix}  value-changed" in line for line in lines)


def test_unknown_usage_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", "/nonexistent.sock", "secret-info", "--usage", "bogus", "x"]) == 2
    assert "unknown usage type 'bogus'" in capsys.readouterr().err
