"""What a user sees when something is wrong on their side: a mistyped command gets the
nearest commands, a bad flag the subcommand's usage, and a local file or value
problem one line and exit status 2, never a Python traceback. Against real compute
and storage services on libvirt's test driver."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT
from virtmesh_client import cli

Run = Callable[..., tuple[int, str, str]]


def test_a_mistyped_command_suggests_the_nearest(virtmesh: Run) -> None:
    code, out, err = virtmesh("lsit")
    assert (code, out) == (2, "")
    assert err == ("virtmesh: unknown command 'lsit'; did you mean 'list'? (`virtmesh --help` "
                   "lists the commands)\n")
    code, _, err = virtmesh("pool-lst", "--json")
    assert code == 2 and "'pool-list'" in err and "nwfilter" not in err
    code, _, err = virtmesh("zzzzzz")
    assert code == 2 and "did you mean" not in err and err.count("\n") == 1
    code, _, err = virtmesh("config", "use-contxt", "a")
    assert code == 2 and err.startswith("virtmesh config: unknown command 'use-contxt'; did "
                                        "you mean 'use-context'")


def test_a_bad_flag_prints_the_subcommands_usage(virtmesh: Run) -> None:
    code, out, err = virtmesh("list", "--bogus")
    assert (code, out) == (2, "")
    assert err.startswith("usage: virtmesh list ") and "--inactive" in err
    assert err.endswith("virtmesh list: error: unrecognized arguments: --bogus\n")
    code, _, err = virtmesh("pool-list", "--jsno")
    assert code == 2 and err.startswith("usage: virtmesh pool-list ")
    assert "(--jsno: did you mean --json?)" in err
    code, _, err = virtmesh("events", "--count", "many")
    assert code == 2 and err.startswith("usage: virtmesh events ")
    code, _, err = virtmesh("config", "set-context", "a", "--nope")
    assert code == 2 and err.startswith("usage: virtmesh config set-context ")


def test_a_missing_upload_file_is_one_line(virtmesh: Run, run_dir: Path,
                                           tmp_path: Path) -> None:
    missing = tmp_path / "missing.img"
    code, out, err = virtmesh("--socket", str(run_dir), "vol-upload", "default-pool", "v",
                              str(missing))
    assert (code, out, err) == (2, "", f"virtmesh: {missing}: No such file or directory\n")
    target = tmp_path / "no-such-dir" / "out.img"
    code, _, err = virtmesh("--socket", str(run_dir), "vol-download", "default-pool", "v",
                            str(target))
    assert code == 2 and err == f"virtmesh: {target}.part: No such file or directory\n"


def test_a_value_out_of_range_is_one_line(virtmesh: Run, run_dir: Path) -> None:
    code, out, err = virtmesh("--socket", str(run_dir), "setvcpus", "test", "-1")
    assert (code, out) == (2, "")
    assert err.startswith("virtmesh: invalid value: ") and err.count("\n") == 1
    # a size is parsed by the command line (KiB or with a unit): argparse refuses it
    code, out, err = virtmesh("--socket", str(run_dir), "setmem", "test", "-1")
    assert (code, out) == (2, "")
    assert "argument SIZE: '-1' is not a size" in err


def test_an_unexpected_error_is_one_line_unless_debugging(
        virtmesh: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace, out: object) -> int:
        raise RuntimeError("bug")
    monkeypatch.setattr(cli, "run", broken)
    code, _, err = virtmesh("list")
    assert code == 1 and err == ("virtmesh: unexpected RuntimeError: bug (VIRTMESH_DEBUG=1 "
                                 "shows where)\n")
    monkeypatch.setenv("VIRTMESH_DEBUG", "1")
    with pytest.raises(RuntimeError):
        virtmesh("list")


def test_no_traceback_from_the_program(run_dir: Path, tmp_path: Path) -> None:
    """As a user runs it: the ``virtmesh`` program, not ``main``."""
    for args in (["vol-upload", "default-pool", "v", str(tmp_path / "missing")],
                 ["setvcpus", "test", "-5"], ["define", str(tmp_path / "missing.xml")],
                 ["lsit"], ["list", "--bogus"]):
        result = subprocess.run([sys.executable, "-m", "virtmesh_client", "--socket",
                                 str(run_dir), *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith(
            ("virtmesh", "usage: virtmesh")), (args, result.stderr)


def test_a_failure_while_ctrl_c_unwinds_is_the_interrupt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A call that Ctrl-C cancelled can fail as it unwinds (CANCELLED, or the stream
    breaking): the command was interrupted, status 130, and says nothing more."""
    absent = str(tmp_path / "no-such.sock")
    assert cli.main(["--socket", absent, "--timeout", "2", "info", "x"]) == 1
    capsys.readouterr()
    monkeypatch.setattr(cli._ctrl_c, "pressed", True)
    assert cli.main(["--socket", absent, "--timeout", "2", "info", "x"]) == 130
    assert capsys.readouterr().err == ""
