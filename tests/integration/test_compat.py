"""A PyFlue 0.2 workflow that touches the sandbox, on the real engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import Settings
from pyflue.testing import ScriptedModel, StaticModels, say
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker


@contextlib.asynccontextmanager
async def _scripted(settings: Settings, model: ScriptedModel) -> AsyncIterator[Runner]:
    async with open_runner(settings) as runner:
        runner.models = StaticModels(model)
        yield runner


async def test_a_pyflue_0_2_workflow_runs_unchanged_in_the_container(
    settings: Settings, write_workflow: WriteWorkflow, docker_client: Any
) -> None:
    write_workflow("upstream", """
from pyflue import FlueContext, create_agent
agent = create_agent(lambda ctx: {"model": "anthropic/claude-test", "cwd": "/workspace"})

async def run(ctx: FlueContext) -> dict:
    await ctx.log.info("started", run=ctx.run_id)
    harness = await ctx.init(agent)
    await harness.fs.mkdir("out/deep", recursive=True)
    await harness.fs.write_file("out/deep/a.txt", "hello")
    st = await harness.fs.stat("out/deep/a.txt")
    session = await harness.sessions.create("main")
    await session.write_file("b.txt", "from the session")
    shell = await session.shell("cat b.txt out/deep/a.txt")
    answer = await session.prompt("Say hi")
    same = (await harness.sessions.get("main")) is session
    await harness.destroy()
    return {"size": st["size"], "is_file": st["is_file"], "is_dir": st["is_dir"],
            "buffer": (await harness.fs.read_file_buffer("out/deep/a.txt")).decode(),
            "shell": shell["stdout"], "text": answer.text, "same": same,
            "session_id": session.session_id}
""")
    async with _scripted(settings, ScriptedModel([say("hi")])) as runner:
        run = await runner.run("upstream", {})
    assert run.status is RunStatus.completed, run.error
    assert run.result == {"size": 5, "is_file": True, "is_dir": False, "buffer": "hello",
                          "shell": "from the sessionhello", "text": "hi", "same": True,
                          "session_id": "main"}


async def test_pyflue_0_2_sandbox_calls_pyflue_lacks_name_the_replacement(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("lacking", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    harness = await ctx.init(agent)
    await harness.shell("true", session_id="other")
""")
    run = await runner.run("lacking", {})
    assert run.status is RunStatus.failed
    assert run.error is not None and run.error.type == "not_supported"
    assert "shares the run's one container" in run.error.message
