"""Colour goes to terminals only: none through a pipe, none with NO_COLOR set
(https://no-color.org)."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from pyflue.models import Run, RunStatus, new_run_id, utcnow
from pyflue.settings import Settings
from pyflue.wiring import open_store

REPO = Path(__file__).resolve().parents[2]
ESC = "\x1b["
# `pyflue show` in a folder with no runs: one error line on stderr, exit 2, nothing created.
ARGV = [sys.executable, "-m", "pyflue.cli", "show", "01ABC"]
RUNS = [sys.executable, "-m", "pyflue.cli", "runs"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_") and k != "NO_COLOR"}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def on_a_terminal(cwd: Path, argv: list[str] = ARGV, **extra: str) -> str:
    """What the command writes to stdout and stderr when both are a pseudo-terminal."""
    main, side = pty.openpty()
    with subprocess.Popen(argv, cwd=cwd, env=_env(**extra), stdin=subprocess.DEVNULL,
                          stdout=side, stderr=side) as proc:
        os.close(side)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks).decode()


def test_an_error_on_a_terminal_is_coloured(tmp_path: Path) -> None:
    shown = on_a_terminal(tmp_path)
    assert f"{ESC}31m{ESC}1merror:{ESC}0m no runs under" in shown


def test_no_color_keeps_a_terminal_plain(tmp_path: Path) -> None:
    shown = on_a_terminal(tmp_path, NO_COLOR="1")
    assert "error: no runs under" in shown and ESC not in shown


@pytest.mark.parametrize("extra", [{}, {"NO_COLOR": "1"}])
def test_a_pipe_gets_no_colour(tmp_path: Path, extra: dict[str, str]) -> None:
    out = subprocess.run(ARGV, cwd=tmp_path, env=_env(**extra), capture_output=True, text=True)
    assert out.stderr.startswith("error: no runs under") and ESC not in out.stderr + out.stdout


def a_project_with_a_queued_run(project: Path) -> None:
    async def create() -> None:
        async with open_store(Settings(project_dir=project)) as store:
            await store.create_run(Run(run_id=new_run_id("w"), workflow="w",
                                       status=RunStatus.queued, payload={}, created_at=utcnow()))

    asyncio.run(create())


def test_a_status_word_on_a_terminal_is_coloured(tmp_path: Path) -> None:
    a_project_with_a_queued_run(tmp_path)
    assert f"{ESC}36mqueued     {ESC}0m" in on_a_terminal(tmp_path, RUNS)


def test_a_status_word_through_a_pipe_is_plain(tmp_path: Path) -> None:
    a_project_with_a_queued_run(tmp_path)
    out = subprocess.run(RUNS, cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert " queued " in out.stdout and ESC not in out.stdout
