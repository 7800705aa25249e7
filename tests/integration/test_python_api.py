"""The in-process Python API (docs/python-api.md): every example of the page runs as written,
in a fresh interpreter from the repository root, over the real engine and a real store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker

PAGE = REPO / "docs" / "python-api.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_its_examples() -> None:
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_a_docs_example_runs_as_written(number: int, tmp_path: Path,
                                        docker_client: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    env["PYFLUE_STORE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", EXAMPLES[number]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    if number == 0:
        assert out.startswith("completed hello, Ada from ")
    elif number == 1:
        lines = out.splitlines()
        assert "run_start" in lines and "shell_end" in lines and "run_end" in lines
        assert any(line.startswith("hello, Ada from ") for line in lines)
        assert "completed False" in lines
        assert any(line.startswith("refused: unknown workflow 'no_such_workflow'")
                   for line in lines)
    else:
        assert out.startswith('ValueError payload needs "steps": ')
    listed = subprocess.run([sys.executable, "-m", "pyflue.cli", "runs"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "workflow:" in listed.stdout  # recorded in the project's store like `pyflue run`


async def test_cancelling_the_awaiting_task_cancels_the_run(tmp_path: Path,
                                                            docker_client: Any) -> None:
    import asyncio

    import pyflue
    from pyflue.settings import Settings

    settings = Settings(project_dir=REPO,
                        store_url=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}")
    started = asyncio.Event()

    def on_event(event: pyflue.Event) -> None:
        if event.type == "shell_start":
            started.set()

    async with pyflue.WorkflowRunner(settings=settings) as runner:
        task = asyncio.create_task(runner.run("shell_steps", {"steps": ["sleep 120"]},
                                              on_event=on_event))
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    from pyflue.wiring import open_store

    async with open_store(settings) as store:
        runs = await store.list_runs()
    assert [run.status for run in runs] == [pyflue.RunStatus.cancelled]
