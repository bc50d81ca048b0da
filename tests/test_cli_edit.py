"""``edit`` and ``pool-edit``: the XML in ``$EDITOR``, defined again only when it
changed, and an edit the service refuses kept for the user, against real compute and
storage services on libvirt's test driver."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import CliRun, domain_xml

#: An "editor" that replaces $EDIT_OLD with $EDIT_NEW in the file it is given.
REPLACING_EDITOR = """\
import os, pathlib, sys
path = pathlib.Path(sys.argv[1])
text = path.read_text()
assert os.environ["EDIT_OLD"] in text, text
path.write_text(text.replace(os.environ["EDIT_OLD"], os.environ["EDIT_NEW"]))
"""


@pytest.fixture
def edit_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the CLI's temporary files go, so a test sees what is left behind."""
    where = tmp_path / "edits"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def replacing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, old: str, new: str) -> None:
    script = tmp_path / "editor.py"
    script.write_text(REPLACING_EDITOR)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    monkeypatch.setenv("EDIT_OLD", old)
    monkeypatch.setenv("EDIT_NEW", new)


def define(virtmesh: CliRun, run_dir: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(domain_xml(name))
    code, _, err = virtmesh("--socket", str(run_dir), "define", str(path))
    assert code == 0, err


def memory_of(virtmesh: CliRun, run_dir: Path, name: str) -> str:
    code, out, err = virtmesh("--socket", str(run_dir), "dumpxml", "--inactive", name)
    assert code == 0, err
    return out.split("<memory unit='KiB'>")[1].split("<")[0]


def test_edit_defines_the_changed_xml_and_leaves_no_file(
        virtmesh: CliRun, run_dir: Path, tmp_path: Path, edit_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    define(virtmesh, run_dir, tmp_path, "edited")
    replacing(monkeypatch, tmp_path, "<memory unit='KiB'>65536", "<memory unit='KiB'>131072")
    code, out, err = virtmesh("--socket", str(run_dir), "edit", "edited")
    assert (code, err) == (0, "")
    assert out.strip() == "Domain 'edited' XML configuration edited"
    assert memory_of(virtmesh, run_dir, "edited") == "131072"
    assert list(edit_dir.iterdir()) == []


def test_visual_wins_over_editor_and_unchanged_defines_nothing(
        virtmesh: CliRun, run_dir: Path, tmp_path: Path, edit_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    define(virtmesh, run_dir, tmp_path, "untouched")
    replacing(monkeypatch, tmp_path, "<memory unit='KiB'>65536", "<memory unit='KiB'>1")
    monkeypatch.setenv("VISUAL", "true")  # exits 0 without touching the file
    code, out, err = virtmesh("--socket", str(run_dir), "edit", "untouched")
    assert (code, err) == (0, "")
    assert out.strip() == "Domain 'untouched' XML configuration not changed"
    assert memory_of(virtmesh, run_dir, "untouched") == "65536"
    assert list(edit_dir.iterdir()) == []


def test_a_refused_edit_changes_nothing_and_is_kept(
        virtmesh: CliRun, run_dir: Path, tmp_path: Path, edit_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    define(virtmesh, run_dir, tmp_path, "refused")
    replacing(monkeypatch, tmp_path, "<memory unit='KiB'>65536</memory>",
              "<memory unit='KiB'>65536</memory><no-such-element/>")
    code, out, err = virtmesh("--socket", str(run_dir), "edit", "refused")
    assert code == 1 and out == ""
    assert "INVALID_ARGUMENT" in err or "invalid" in err.lower(), err
    kept = list(edit_dir.iterdir())
    assert len(kept) == 1 and f"your edit is kept in {kept[0]}" in err
    assert "<no-such-element/>" in kept[0].read_text()
    assert memory_of(virtmesh, run_dir, "refused") == "65536"


def test_a_failing_editor_defines_nothing(
        virtmesh: CliRun, run_dir: Path, tmp_path: Path, edit_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    define(virtmesh, run_dir, tmp_path, "abandoned")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", "false")
    code, _, err = virtmesh("--socket", str(run_dir), "edit", "abandoned")
    assert code == 2
    assert "the editor exited with status 1; nothing was defined" in err
    assert list(edit_dir.iterdir()) == []
    monkeypatch.setenv("EDITOR", str(tmp_path / "no-such-editor"))
    code, _, err = virtmesh("--socket", str(run_dir), "edit", "abandoned")
    assert code == 2 and "editor not found" in err


def test_edit_of_an_unknown_domain_is_not_found(
        virtmesh: CliRun, run_dir: Path, monkeypatch: pytest.MonkeyPatch,
        edit_dir: Path) -> None:
    monkeypatch.setenv("EDITOR", "true")
    code, _, err = virtmesh("--socket", str(run_dir), "edit", "no-such-domain")
    assert code == 1 and "NOT_FOUND" in err or "not found" in err.lower(), err
    assert list(edit_dir.iterdir()) == []


def test_pool_edit_changes_the_pool_definition(
        virtmesh: CliRun, run_dir: Path, tmp_path: Path, edit_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pool = tmp_path / "pool.xml"
    pool.write_text("<pool type='dir'><name>edit-pool</name>"
                    f"<target><path>{tmp_path / 'before'}</path></target></pool>")
    code, _, err = virtmesh("--socket", str(run_dir), "pool-define", str(pool))
    assert code == 0, err
    replacing(monkeypatch, tmp_path, str(tmp_path / "before"), str(tmp_path / "after"))
    code, out, err = virtmesh("--socket", str(run_dir), "pool-edit", "edit-pool")
    assert (code, err) == (0, ""), err
    assert out.strip() == "Pool 'edit-pool' XML configuration edited"
    code, out, _ = virtmesh("--socket", str(run_dir), "pool-dumpxml", "edit-pool")
    assert str(tmp_path / "after") in out and str(tmp_path / "before") not in out
