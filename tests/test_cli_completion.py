"""``virtmesh completion bash|zsh``: the scripts run in real bash and zsh, completing
commands, flags, config actions and contexts, and guest and pool names asked of real
compute and storage services (through ``virtmesh __names``, quietly)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from virtmesh_client.cli import main

#: ``complete(*words)`` → the candidates for the last word, and stderr
Complete = Callable[..., tuple[list[str], str]]

ZSH_STUBS = """
compdef() { : }
compadd() { while [[ $# -gt 0 && $1 != -- ]]; do shift; done; shift; print -rl -- "$@" }
_files() { print -r -- '<files>' }
"""


def _env() -> dict[str, str]:
    """``virtmesh`` is the one of this checkout's venv."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _script(shell: str) -> str:
    result = subprocess.run([sys.executable, "-m", "virtmesh_client", "completion", shell],
                            capture_output=True, text=True, check=True, timeout=60)
    return result.stdout


@pytest.fixture(scope="module")
def bash_script() -> str:
    return _script("bash")


@pytest.fixture(scope="module")
def zsh_script() -> str:
    return _script("zsh")


def _bash(script: str) -> Complete:
    def complete(*words: str) -> tuple[list[str], str]:
        program = (f"{script}\nCOMP_WORDS=(virtmesh {' '.join(map(shlex.quote, words))})\n"
                   f"COMP_CWORD={len(words)}\n_virtmesh\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"")
        result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True,
                                text=True, env=_env(), timeout=60)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if line], result.stderr
    return complete


def _zsh(script: str) -> Complete:
    def complete(*words: str) -> tuple[list[str], str]:
        quoted = " ".join(map(shlex.quote, ("virtmesh", *words)))
        program = (f"{ZSH_STUBS}\n{script}\nwords=({quoted})\nCURRENT={len(words) + 1}\n"
                   f"PREFIX={shlex.quote(words[-1])}\n_virtmesh\n")
        result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True,
                                env=_env(), timeout=60)
        assert result.returncode == 0, result.stderr
        # compadd adds everything; zsh itself would then match it against PREFIX
        found = [line for line in result.stdout.splitlines() if line]
        return [w for w in found if w.startswith(words[-1]) or w == "<files>"], result.stderr
    return complete


@pytest.fixture(params=["bash", "zsh"])
def complete(request: pytest.FixtureRequest) -> Complete:
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    script = request.getfixturevalue(f"{request.param}_script")
    return _bash(script) if request.param == "bash" else _zsh(script)


def test_commands_and_flags(complete: Complete) -> None:
    found, _ = complete("pool-")
    assert "pool-list" in found and "pool-info" in found and "list" not in found
    assert "__names" not in complete("")[0] and "completion" in complete("")[0]
    assert complete("list", "--ina")[0] == ["--inactive"]
    assert complete("--js")[0] == ["--json"]
    assert "use-context" in complete("config", "us")[0]


def test_guest_and_pool_names_come_from_the_services(complete: Complete,
                                                     run_dir: Path) -> None:
    assert complete("--socket", str(run_dir), "info", "") == (["test"], "")
    assert complete("start", "--socket", str(run_dir), "t") == (["test"], "")
    assert complete("pool-info", "--socket", str(run_dir), "") == (["default-pool"], "")
    # the second argument of vol-info is a volume: no pool names there
    assert "default-pool" not in complete("vol-info", "--socket", str(run_dir),
                                          "default-pool", "")[0]


def test_names_are_quietly_none_when_nothing_answers(complete: Complete,
                                                     tmp_path: Path) -> None:
    assert complete("--socket", str(tmp_path / "absent"), "info", "") == ([], "")
    assert complete("--gateway", "127.0.0.1:1", "info", "") == ([], "")


def test_contexts(complete: Complete, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("lab-a", "lab-b"):
        assert main(["config", "set-context", name, "--gateway", "127.0.0.1:1"]) == 0
    capsys.readouterr()
    assert {"lab-a", "lab-b"} <= set(complete("config", "use-context", "lab")[0])
    assert {"lab-a", "lab-b"} <= set(complete("--context", "lab")[0])


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err
