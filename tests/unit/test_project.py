"""The project is found from any subfolder, like git finds its repository, and commands that only
look at runs make no run store where there is none."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from pyflue.settings import Settings, find_project
from pyflue.wiring import open_store

REPO = Path(__file__).resolve().parents[2]


def pyflue(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    return subprocess.run([sys.executable, "-m", "pyflue.cli", *argv], cwd=cwd,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)


def a_project(root: Path) -> Path:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "greet.py").write_text('"""Say hello."""\n\n\n'
                                                 "async def run(ctx):\n    return {}\n")
    (root / "pkg" / "deep").mkdir(parents=True)
    return root


def test_a_subfolder_belongs_to_the_nearest_folder_holding_workflows(tmp_path: Path) -> None:
    project = a_project(tmp_path / "project")
    assert find_project(project / "pkg" / "deep") == project.resolve()


def test_src_workflows_marks_the_folder_above_src_even_from_inside_src(tmp_path: Path) -> None:
    (tmp_path / "a" / "src" / "workflows").mkdir(parents=True)
    assert find_project(tmp_path / "a" / "src") == (tmp_path / "a").resolve()


def test_a_run_store_marks_a_project(tmp_path: Path) -> None:
    (tmp_path / "b" / ".pyflue").mkdir(parents=True)
    (tmp_path / "b" / "sub").mkdir()
    assert find_project(tmp_path / "b" / "sub") == (tmp_path / "b").resolve()


def test_a_pyproject_with_a_tool_pyflue_table_marks_a_project(tmp_path: Path) -> None:
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / "p" / "pyproject.toml").write_text('[tool.pyflue]\n\n[project]\nname = "p"\n')
    assert find_project(tmp_path / "p" / "sub") == (tmp_path / "p").resolve()


def test_a_pyproject_without_a_tool_pyflue_table_does_not(tmp_path: Path) -> None:
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / "p" / "pyproject.toml").write_text('[project]\nname = "p"\n')
    assert find_project(tmp_path / "p" / "sub") == (tmp_path / "p" / "sub").resolve()


def test_a_folder_in_no_project_is_its_own_project(tmp_path: Path) -> None:
    assert find_project(tmp_path) == tmp_path.resolve()


def test_the_cli_lists_the_project_workflows_from_a_subfolder(tmp_path: Path) -> None:
    project = a_project(tmp_path / "project")
    listed = pyflue(project / "pkg" / "deep", "workflows", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [w["name"] for w in json.loads(listed.stdout)] == ["greet"]


def test_the_cli_reads_the_project_run_store_from_a_subfolder(tmp_path: Path) -> None:
    project = a_project(tmp_path / "project")

    async def make_store() -> None:
        async with open_store(Settings(project_dir=project)):
            pass

    asyncio.run(make_store())
    shown = pyflue(project / "pkg" / "deep", "logs", "nothing")
    assert shown.returncode == 2
    assert "no run 'nothing' in this machine's store" in shown.stderr


def test_runs_in_an_empty_folder_says_there_are_none_and_leaves_no_store(tmp_path: Path) -> None:
    listed = pyflue(tmp_path, "runs")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("no runs yet")
    assert list(tmp_path.iterdir()) == []


def test_logs_and_show_in_an_empty_folder_say_there_are_no_runs_here(tmp_path: Path) -> None:
    for command in ("logs", "show"):
        shown = pyflue(tmp_path, command, "01ABC")
        assert shown.returncode == 2
        assert shown.stderr.startswith(f"error: no runs under {tmp_path.resolve()}")
    assert list(tmp_path.iterdir()) == []


def test_dash_c_names_the_project_exactly(tmp_path: Path) -> None:
    project = a_project(tmp_path / "project")
    listed = pyflue(tmp_path, "workflows", "-C", str(project / "pkg"), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_a_pyflue_toml_marks_a_project(tmp_path: Path) -> None:
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / "p" / "pyflue.toml").write_text('sandbox_memory = "1g"\n')
    assert find_project(tmp_path / "p" / "sub") == (tmp_path / "p").resolve()


def test_a_pyproject_naming_tool_pyflue_that_does_not_parse_still_marks_the_project(
    tmp_path: Path,
) -> None:
    # the settings loader then says what is wrong with it, instead of the search walking past
    (tmp_path / "p" / "sub").mkdir(parents=True)
    (tmp_path / "p" / "pyproject.toml").write_text("[tool.pyflue]\nsandbox_memory = \n")
    assert find_project(tmp_path / "p" / "sub") == (tmp_path / "p").resolve()
