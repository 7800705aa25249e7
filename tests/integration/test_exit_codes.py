"""The exit code tells the cause apart, for `pyflue run` and `pyflue invoke --wait/--follow`
alike: 0 completed, 1 the workflow failed, 2 bad input, 3 infrastructure, 4 timed out,
5 cancelled (130 is Ctrl-C, in test_cli.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO
from tests.integration.servers import Server

pytestmark = pytest.mark.docker

PYFLUE = [sys.executable, "-m", "pyflue.cli"]

WORKFLOWS = {
    "fine": """
        async def run(ctx):
            return {"ok": True}
    """,
    "broken": """
        async def run(ctx):
            raise ValueError("the workflow's own bug")
    """,
    "sleepy": """
        from pyflue import create_agent

        agent = create_agent(lambda ctx: {})

        async def run(ctx):
            h = await ctx.init(agent)
            await h.shell("sleep 120", timeout=300)
    """,
    "stuck": """
        from pyflue import create_agent

        deadline_seconds = 1
        agent = create_agent(lambda ctx: {})

        async def run(ctx):
            h = await ctx.init(agent)
            await h.shell("sleep 120", timeout=300)
    """,
    "no_image": """
        from pyflue import create_agent

        agent = create_agent(lambda ctx: {"image": "pyflue/does-not-exist:latest"})

        async def run(ctx):
            await ctx.init(agent)
    """,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exit-codes")
    (root / "workflows").mkdir()
    for name, source in WORKFLOWS.items():
        (root / "workflows" / f"{name}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture(scope="module")
def server(project: Path, docker_client: Any) -> Iterator[str]:
    live = Server(project, project / "server.db", concurrency=4)
    live.start()
    try:
        yield live.url
    finally:
        live.stop()


def pyflue(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{project / 'cli.db'}"}
    return subprocess.run([*PYFLUE, *args], cwd=project, capture_output=True, text=True,
                          timeout=120, env={**_base_env(), **env})


def _base_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    return {**env, "PYTHONPATH": str(REPO)}


CASES = [
    (["fine"], 0, None),
    (["broken"], 1, "ValueError: the workflow's own bug"),
    (["fine", "--payload", "{bad"], 2, "payload is not valid JSON"),
    (["fine", "--payload", "[1]"], 2, "payload must be a JSON object"),
    (["no_image"], 3, "image_not_found"),
    (["stuck"], 4, "timed_out"),
]


@pytest.mark.parametrize(("args", "code", "said"), CASES,
                         ids=["completed", "failed", "bad-payload", "not-an-object",
                              "image-missing", "timed-out"])
def test_pyflue_run_exits_with_the_code_of_the_cause(
    project: Path, args: list[str], code: int, said: str | None, docker_client: Any
) -> None:
    done = pyflue("run", *args, "-q", project=project)
    assert done.returncode == code, done.stderr
    if said is not None:
        assert said in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("args", "code", "said"), CASES,
                         ids=["completed", "failed", "bad-payload", "not-an-object",
                              "image-missing", "timed-out"])
@pytest.mark.parametrize("mode", ["--wait", "--follow"])
def test_pyflue_invoke_exits_with_the_code_of_the_cause(
    project: Path, server: str, mode: str, args: list[str], code: int, said: str | None
) -> None:
    done = pyflue("invoke", *args, mode, "--server", server, project=project)
    assert done.returncode == code, done.stderr
    if said is not None:
        assert said in done.stderr.strip().splitlines()[-1]


def test_the_image_flag_naming_a_missing_image_exits_3(project: Path, docker_client: Any) -> None:
    done = pyflue("run", "no_image", "--image", "pyflue/does-not-exist:latest", "-q",
                  project=project)
    assert done.returncode == 3, done.stderr
    assert "pyflue images build" in done.stderr.strip().splitlines()[-1]


def test_an_invoked_run_cancelled_by_someone_else_exits_5(project: Path, server: str) -> None:
    with subprocess.Popen([*PYFLUE, "invoke", "sleepy", "--follow", "--server", server],
                          cwd=project, env=_base_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        run_id = proc.stderr.readline().split()[1]
        cancelled = pyflue("cancel", run_id, "--server", server, project=project)
        assert cancelled.returncode == 0, cancelled.stderr
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert f"error: run {run_id} cancelled" in err
