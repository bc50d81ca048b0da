"""The virtmesh CLI against two real meshes (compute + TLS gateway each) at once.

Both gateways use one development PKI, so one client certificate reaches both;
each node has its own test-driver domains and, defined by the tests, some with
the same name on both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.pki import ensure_dev_pki
from services.supervisor import wait_serving
from tests.conftest import ROOT, Mesh, domain_xml, running_mesh
from virtmesh_client.cli import main

#: ``virtmesh(*args) -> (exit code, stdout, stderr)``
Run = Callable[..., tuple[int, str, str]]


def _node_uri(directory: Path, *names: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    domains = "".join(domain_xml(name) for name in names)
    (directory / "node.xml").write_text(f"<node>{domains}</node>")
    return f"test://{directory / 'node.xml'}"


@pytest.fixture(scope="module")
def meshes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Mesh]]:
    root = tmp_path_factory.mktemp("fleet")
    ensure_dev_pki(root / "a" / "pki")
    shutil.copytree(root / "a" / "pki", root / "b" / "pki")
    with running_mesh(root / "a", _node_uri(root / "a", "alpha")) as a, \
            running_mesh(root / "b", _node_uri(root / "b", "beta", "gamma")) as b:
        yield a, b


@pytest.fixture
def virtmesh(meshes: tuple[Mesh, Mesh], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> Run:
    """The CLI in-process with gateways a and b (named) and the shared PKI."""
    for name in ("VIRTMESH_GATEWAY", "VIRTMESH_GATEWAYS", "VIRTMESH_CA", "VIRTMESH_CERT",
                 "VIRTMESH_KEY"):
        monkeypatch.delenv(name, raising=False)
    a, b = meshes

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--state-dir", str(a.state_dir), "--gateway", f"a={a.target}",
                     "--gateway", f"b={b.target}", *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _rows(out: str) -> list[list[str]]:
    return [row.split() for row in out.splitlines()[1:]]


def test_list_merges_both_nodes(virtmesh: Run) -> None:
    code, out, err = virtmesh("list")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split()[:3] == ["NODE", "NAME", "STATE"]
    assert [row[:3] for row in _rows(out)] == [
        ["a", "alpha", "running"], ["b", "beta", "running"], ["b", "gamma", "running"]]

    code, out, _ = virtmesh("--json", "list")
    assert code == 0
    assert [(d["node"], d["name"]) for d in json.loads(out)["domains"]] == [
        ("a", "alpha"), ("b", "beta"), ("b", "gamma")]


def test_unnamed_gateways_are_named_by_address(meshes: tuple[Mesh, Mesh],
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = meshes
    monkeypatch.setenv("VIRTMESH_GATEWAYS", f"{a.target},{b.target}")
    code = main(["--state-dir", str(a.state_dir), "--json", "version"])
    out = capsys.readouterr().out
    assert code == 0
    assert [v["node"] for v in json.loads(out)["nodes"]] == [a.target, b.target]


def test_one_node_output_is_unchanged(virtmesh: Run) -> None:
    code, out, err = virtmesh("--node", "b", "list")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].split()[:2] == ["NAME", "STATE"]
    assert [row[0] for row in _rows(out)] == ["beta", "gamma"]


def test_nodeinfo_and_stats_fan_out(virtmesh: Run) -> None:
    code, out, _ = virtmesh("nodeinfo")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["NODE", "MODEL", "CPUS"]
    assert [row[0] for row in _rows(out)] == ["a", "b"]
    code, out, _ = virtmesh("stats")
    assert code == 0
    assert sorted(row[:2] for row in _rows(out)) == [["a", "alpha"], ["b", "beta"],
                                                      ["b", "gamma"]]


def test_domain_commands_find_their_node(virtmesh: Run, tmp_path: Path) -> None:
    code, out, err = virtmesh("--json", "info", "gamma")
    assert (code, err) == (0, "")
    assert json.loads(out)["name"] == "gamma"

    code, out, err = virtmesh("info", "nope")
    assert (code, out) == (1, "")
    assert err == ("virtmesh: NOT_FOUND: Domain not found: no domain 'nope' on nodes a, b "
                   "(VIR_ERR_NO_DOMAIN)\n")

    xml = tmp_path / "twin.xml"
    xml.write_text(domain_xml("twin"))
    code, _, err = virtmesh("define", str(xml))
    assert code == 2 and "define needs --node NAME" in err
    assert virtmesh("define", str(xml), "--node", "a")[0] == 0
    assert virtmesh("--node", "b", "define", str(xml))[0] == 0

    code, out, err = virtmesh("start", "twin")
    assert (code, out) == (2, "")
    assert err == "virtmesh: domain 'twin' is on nodes a, b; pick one with --node NAME\n"
    assert virtmesh("start", "twin", "--node", "b") == (0, "Domain 'twin' started\n", "")
    code, out, _ = virtmesh("list")
    assert [row[:3] for row in _rows(out) if row[1] == "twin"] == [
        ["a", "twin", "shutoff"], ["b", "twin", "running"]]

    assert virtmesh("destroy", "twin", "--node", "b")[0] == 0
    for node in ("a", "b"):
        assert virtmesh("undefine", "twin", "--node", node)[0] == 0


def test_a_dead_node_is_a_warning_and_exit_1(meshes: tuple[Mesh, Mesh], virtmesh: Run) -> None:
    _, b = meshes
    b.gateway.stop()
    try:
        code, out, err = virtmesh("list")
        assert code == 1
        assert [row[:2] for row in _rows(out)] == [["a", "alpha"]]
        assert err.startswith("virtmesh: node b: UNAVAILABLE: ") and err.count("\n") == 1
        code, out, err = virtmesh("info", "alpha")
        assert code == 1 and "Name:" in out and err.startswith("virtmesh: node b: ")
    finally:
        b.gateway.start()
        wait_serving(b.target, "", 30, b.credentials())


def test_events_merge_both_nodes(meshes: tuple[Mesh, Mesh], tmp_path: Path) -> None:
    a, b = meshes
    gateways = ["--gateway", f"a={a.target}", "--gateway", f"b={b.target}"]
    watcher = subprocess.Popen(
        [sys.executable, "-m", "virtmesh_client", "--state-dir", str(a.state_dir), *gateways,
         "events", "ev-a", "ev-b", "--count", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stderr is not None
        # printed once both nodes have subscribed us
        assert watcher.stderr.readline() == "watching domain events on a, b; Ctrl-C to stop\n"
        for node in ("a", "b"):
            xml = tmp_path / f"ev-{node}.xml"
            xml.write_text(domain_xml(f"ev-{node}"))
            assert main(["--state-dir", str(a.state_dir), *gateways, "--node", node,
                         "define", str(xml)]) == 0
        out, err = watcher.communicate(timeout=15)
    finally:
        watcher.kill()
    assert (watcher.returncode, err) == (0, "")
    # "NODE  TIME  DOMAIN  KIND  DETAIL"
    assert sorted((p[0], p[2], p[3], p[4]) for p in map(str.split, out.splitlines())) == [
        ("a", "ev-a", "lifecycle", "defined"), ("b", "ev-b", "lifecycle", "defined")]
    for node in ("a", "b"):
        assert main(["--state-dir", str(a.state_dir), *gateways, "undefine", f"ev-{node}"]) == 0
