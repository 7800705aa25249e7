"""Shell completion as the shells ask for it: the ``pyflue`` command run with the variables
bash, zsh and fish set (``_PYFLUE_COMPLETE``...), and bash itself sourcing the script that
``pyflue --show-completion`` prints. Workflow names come from the project's files, run ids from
the local SQLite store (a real one), read without creating a store or asking a server."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyflue.models import Run, new_run_id, utcnow
from pyflue.settings import Settings
from pyflue.status import RunStatus
from pyflue.wiring import open_store

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    return {**env, "PYTHONPATH": str(REPO), "PATH": f"{BIN}:{env.get('PATH', '')}", **extra}


def bash_candidates(cwd: Path, line: str, **extra: str) -> list[str]:
    """What bash's completion function gets for ``line`` (the word after its last space)."""
    words = line.split(" ")
    out = subprocess.run([sys.executable, "-m", "pyflue.cli"], cwd=cwd, capture_output=True,
                         text=True, timeout=30,
                         env=_env(_PYFLUE_COMPLETE="complete_bash", COMP_WORDS=line,
                                  COMP_CWORD=str(len(words) - 1), **extra))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.split()


def a_project(root: Path) -> Path:
    for name in ("hello.py", "ci/lint.py", "ci/test.py", "_helper.py"):
        (root / "workflows" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "workflows" / name).write_text("async def run(ctx):\n    return {}\n")
    (root / "sub").mkdir()
    return root


def with_runs(project: Path, count: int) -> list[str]:
    run_ids = [new_run_id("hello") for _ in range(count)]

    async def create() -> None:
        async with open_store(Settings(project_dir=project)) as store:
            for run_id in run_ids:
                await store.create_run(Run(run_id=run_id, workflow="hello",
                                           status=RunStatus.completed, payload={},
                                           created_at=utcnow()))
                await asyncio.sleep(0.002)  # distinct creation times

    asyncio.run(create())
    return run_ids


def test_commands_and_workflow_names_complete(tmp_path: Path) -> None:
    project = a_project(tmp_path)
    assert bash_candidates(project, "pyflue r") == ["run", "rerun", "reap", "runs"]
    assert bash_candidates(project / "sub", "pyflue run ") == ["ci.lint", "ci.test", "hello"]
    assert bash_candidates(project, "pyflue run ci.") == ["ci.lint", "ci.test"]
    assert bash_candidates(project, "pyflue invoke h") == ["hello"]
    assert bash_candidates(project, "pyflue runs --workflow ci.t") == ["ci.test"]
    assert bash_candidates(tmp_path, f"pyflue run -C {project} h") == ["hello"]  # -C first
    assert bash_candidates(tmp_path / "sub", "pyflue run ",
                           PYFLUE_PROJECT_DIR=str(project)) == ["ci.lint", "ci.test", "hello"]


@pytest.mark.parametrize("command", ["show", "logs", "cancel", "rerun"])
def test_run_ids_complete_from_the_local_store_newest_first(tmp_path: Path,
                                                            command: str) -> None:
    project = a_project(tmp_path)
    run_ids = with_runs(project, 3)
    ulids = [r.rsplit(":", 1)[1] for r in reversed(run_ids)]
    assert bash_candidates(project / "sub", f"pyflue {command} ") == ulids
    assert bash_candidates(project, f"pyflue {command} {ulids[1]}") == [ulids[1]]
    typed = ulids[1].lower()  # any case names the run; the shell keeps what was typed
    assert bash_candidates(project, f"pyflue {command} {typed}") == [typed]
    assert bash_candidates(project, f"pyflue {command} Z") == []
    assert bash_candidates(project, f"pyflue {command} work") == list(reversed(run_ids))


def test_run_ids_come_from_the_store_the_settings_file_names(tmp_path: Path) -> None:
    project = a_project(tmp_path / "p")
    store = tmp_path / "elsewhere.db"
    (project / "pyflue.toml").write_text(f'store_url = "sqlite+aiosqlite:///{store}"\n')
    run_ids: list[str] = []

    async def create() -> None:
        async with open_store(Settings(project_dir=project,
                                       store_url=f"sqlite+aiosqlite:///{store}")) as s:
            run_ids.append(new_run_id("hello"))
            await s.create_run(Run(run_id=run_ids[0], workflow="hello",
                                   status=RunStatus.queued, payload={}, created_at=utcnow()))

    asyncio.run(create())
    assert bash_candidates(project, "pyflue show ") == [run_ids[0].rsplit(":", 1)[1]]


def test_completing_a_run_id_creates_no_store_and_asks_no_server(tmp_path: Path) -> None:
    project = a_project(tmp_path)
    started = time.monotonic()
    assert bash_candidates(project, "pyflue show ",
                           PYFLUE_SERVER_URL="http://127.0.0.1:9") == []
    assert time.monotonic() - started < 5
    assert not (project / ".pyflue").exists()
    assert bash_candidates(project, "pyflue show ",
                           PYFLUE_STORE_URL="postgresql+asyncpg://u@127.0.0.1:9/x") == []


def test_zsh_and_fish_get_the_same_names(tmp_path: Path) -> None:
    project = a_project(tmp_path)
    zsh = subprocess.run([sys.executable, "-m", "pyflue.cli"], cwd=project, capture_output=True,
                         text=True, env=_env(_PYFLUE_COMPLETE="complete_zsh",
                                             _TYPER_COMPLETE_ARGS="pyflue run ci."))
    assert "ci.lint" in zsh.stdout and "ci.test" in zsh.stdout and "hello" not in zsh.stdout
    fish = subprocess.run([sys.executable, "-m", "pyflue.cli"], cwd=project, capture_output=True,
                          text=True, env=_env(_PYFLUE_COMPLETE="complete_fish",
                                              _TYPER_COMPLETE_FISH_ACTION="get-args",
                                              _TYPER_COMPLETE_ARGS="pyflue run ci."))
    assert fish.stdout.split() == ["ci.lint", "ci.test"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_script_of_each_shell_is_printed(shell: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pyflue.cli"], cwd=tmp_path, capture_output=True,
                         text=True, env=_env(_PYFLUE_COMPLETE=f"source_{shell}"))
    assert out.returncode == 0 and f"_PYFLUE_COMPLETE=complete_{shell}" in out.stdout
    assert "pyflue" in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_sourcing_the_shown_script_completes_workflows_and_run_ids(tmp_path: Path) -> None:
    project = a_project(tmp_path)
    run_ids = with_runs(project, 2)
    script = subprocess.run([sys.executable, "-m", "pyflue.cli", "--show-completion"],
                            cwd=project, capture_output=True, text=True,
                            env=_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1",
                                     SHELL="/bin/bash"))
    # without shell detection, --show-completion takes the shell's name
    if "complete -" not in script.stdout:
        script = subprocess.run([sys.executable, "-m", "pyflue.cli", "--show-completion",
                                 "bash"], cwd=project, capture_output=True, text=True,
                                env=_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert "complete -o default -F _pyflue_completion pyflue" in script.stdout, script
    (tmp_path / "completion.bash").write_text(script.stdout)
    probe = (f"source {tmp_path / 'completion.bash'}\n"
             'complete -p pyflue\n'
             'COMP_WORDS=(pyflue run ""); COMP_CWORD=2; _pyflue_completion pyflue\n'
             'echo "run: ${COMPREPLY[*]}"\n'
             'COMP_WORDS=(pyflue show ""); COMP_CWORD=2; _pyflue_completion pyflue\n'
             'echo "show: ${COMPREPLY[*]}"\n')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], cwd=project / "sub",
                         capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "complete -o default -F _pyflue_completion pyflue"
    assert lines[1] == "run: ci.lint ci.test hello"
    assert lines[2] == "show: " + " ".join(r.rsplit(":", 1)[1] for r in reversed(run_ids))
