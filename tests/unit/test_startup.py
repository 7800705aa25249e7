"""Start-up stays cheap: a workflow file's import and `pyflue --help` load none of the heavy
libraries (their cost is measured by benchmarks/bench_startup.py; this pins the cause)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "alembic", "fastapi", "starlette", "httpx", "anthropic", "docker",
         "uvicorn", "websockets", "rich")
# A workflow file's import loads not even pydantic or asyncio (typer itself loads pydantic
# to parse a command's options, so the command's own cases leave it out).
WORKFLOW_HEAVY = (*HEAVY, "pydantic", "pydantic_core", "asyncio")

# Runs `code` in a fresh interpreter, then prints which heavy libraries it loaded.
PROBE = """
import json, sys
{code}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
"""


def _loaded(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code, heavy=heavy)],
                         capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("code", [
    "import pyflue",
    "from pyflue import FlueContext, create_agent",
])
def test_what_a_workflow_file_imports_loads_no_heavy_library(code: str) -> None:
    assert _loaded(code, WORKFLOW_HEAVY) == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "--help"]])
def test_the_command_answers_help_and_version_without_heavy_libraries(argv: list[str]) -> None:
    code = ("import sys; from pyflue.cli import app\n"
            f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass")
    assert _loaded(code) == []


def test_the_version_is_printed() -> None:
    import pyflue

    out = subprocess.run([sys.executable, "-m", "pyflue.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"pyflue {pyflue.__version__}"
