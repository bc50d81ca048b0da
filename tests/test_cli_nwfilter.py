"""The nwfilter-* commands against a real nwfilter service on the host's driver
(unique "vmtest-" names; filters, bindings and the tap device removed afterwards)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.nwfilter import SPEC
from tests.conftest import running_service
from tests.test_nwfilter_service import URI, binding_xml, remove_host_objects
from virtmesh_client.cli import main

pytestmark = pytest.mark.timeout(120)
#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def prefix(tmp_path: Path, host_libvirtd: None) -> Iterator[str]:
    name = f"vmtest-{uuid.uuid4().hex[:6]}"
    try:
        yield name
    finally:
        remove_host_objects(name)


@pytest.fixture
def virtmesh(tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    with running_service(tmp_path, URI, spec=SPEC, grace_period=0.5) as daemon:
        def run(*args: str) -> tuple[int, str, str]:
            code = main(["--socket", f"unix:{daemon.socket_path}", *args])
            out, err = capsys.readouterr()
            return code, out, err
        yield run


def test_nwfilter_commands(virtmesh: Run, prefix: str, tmp_path: Path) -> None:
    xml = tmp_path / "filter.xml"
    xml.write_text(f"<filter name='{prefix}' chain='ipv4'><rule action='drop' direction='in'>"
                   "<tcp dstportstart='23'/></rule></filter>")
    code, out, err = virtmesh("nwfilter-define", str(xml))
    assert code == 0, err
    assert out.startswith(f"Network filter '{prefix}' defined (")
    code, out, _ = virtmesh("nwfilter-list")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "UUID", "CHAIN", "PRIORITY", "RULE_COUNT", "FILTER_REFS"]
    ours = [row.split() for row in rows if row.startswith(prefix)]
    assert [(r[0], r[2], r[3], r[4]) for r in ours] == [(prefix, "ipv4", "-700", "1")]
    code, out, _ = virtmesh("nwfilter-dumpxml", prefix)
    assert "dstportstart='23'" in out
    code, out, _ = virtmesh("--json", "nwfilter-list")
    assert prefix in [f["name"] for f in json.loads(out)["nwfilters"]]

    subprocess.run(["ip", "tuntap", "add", "dev", prefix, "mode", "tap"], check=True)
    try:
        binding = tmp_path / "binding.xml"
        binding.write_text(binding_xml(prefix, prefix))
        code, out, err = virtmesh("nwfilter-binding-create", str(binding))
        assert (code, out) == (0, f"Network filter binding on '{prefix}' created "
                                  f"(filter '{prefix}')\n"), err
        code, out, _ = virtmesh("nwfilter-binding-list")
        assert [prefix, prefix, f"{prefix}-vm", "52:54:00:aa:bb:cc"] in [
            row.split() for row in out.splitlines()[1:]]
        code, out, _ = virtmesh("nwfilter-binding-dumpxml", prefix)
        assert f"<portdev name='{prefix}'/>" in out
        code, _, err = virtmesh("nwfilter-undefine", prefix)
        assert code == 1 and "FAILED_PRECONDITION" in err  # the binding uses it
        code, out, _ = virtmesh("nwfilter-binding-delete", prefix)
        assert (code, out) == (0, f"Network filter binding on '{prefix}' deleted\n")
        code, _, err = virtmesh("nwfilter-binding-dumpxml", prefix)
        assert code == 1 and "VIR_ERR_NO_NWFILTER_BINDING" in err
    finally:
        subprocess.run(["ip", "tuntap", "del", "dev", prefix, "mode", "tap"], check=True)

    code, out, _ = virtmesh("nwfilter-undefine", prefix)
    assert (code, out) == (0, f"Network filter '{prefix}' undefined\n")
    code, _, err = virtmesh("nwfilter-dumpxml", prefix)
    assert code == 1 and "NOT_FOUND" in err
    xml.write_text("<filter name='broken'")
    code, _, err = virtmesh("nwfilter-define", str(xml))
    assert code == 1 and "INVALID_ARGUMENT" in err
