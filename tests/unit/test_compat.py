"""PyFlue 0.2 workflows on pyflue: the same calls work, the others say what to use instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyflue.models import RunStatus
from pyflue.testing import fake_runner
from tests.conftest import WriteWorkflow

AGENT = "from pyflue import create_agent\nagent = create_agent(lambda ctx: {})\n"


async def test_pyflue_0_2_context_names_work(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("names", """
async def run(ctx):
    await ctx.log.info("hi")
    return [ctx.run_id == ctx.id, ctx.request is ctx.req, ctx.workflow_name]
""")
    run = await fake_runner(project).run("names", {})
    assert run.result == [True, True, "names"]


@pytest.mark.parametrize(("expr", "replacement"), [
    ("ctx.agent_id", "use ctx.id"),
    ("ctx.config", "read values from ctx.env"),
    ("await ctx.init(agent, config_path='pyflue.toml')", "there is no pyflue.toml"),
    ("await ctx.init()", "create_agent(lambda ctx"),
    ("await ctx.init(model='anthropic/claude-haiku-4-5')", "configure the agent in create_agent"),
    ("(await ctx.init(agent)).close_mcp_servers", "no MCP client"),
    ("await (await ctx.init(agent)).session('s', role='reviewer')", '"instructions"'),
    ("await (await ctx.init(agent)).session(session_id='s')", "pass the name positionally"),
    ("(await (await ctx.init(agent)).session()).run_python", "harness.shell"),
    ("await (await (await ctx.init(agent)).session()).prompt('x', images=[])", "not available"),
])
async def test_pyflue_0_2_names_pyflue_lacks_fail_naming_the_replacement(
    project: Path, write_workflow: WriteWorkflow, expr: str, replacement: str
) -> None:
    write_workflow("lacks", AGENT + f"async def run(ctx):\n    return {expr}\n")
    run = await fake_runner(project).run("lacks", {})
    assert run.status is RunStatus.failed
    assert run.error is not None and run.error.type == "not_supported"
    assert "PyFlue 0.2" in run.error.message or "not an option here" in run.error.message
    assert replacement in run.error.message


async def test_a_misspelt_attribute_is_still_a_plain_attribute_error(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("typo", "async def run(ctx):\n    return ctx.paylod\n")
    run = await fake_runner(project).run("typo", {})
    assert run.error is not None and run.error.type == "AttributeError"
    assert "'paylod'" in run.error.message


@pytest.mark.parametrize(("name", "replacement"), [
    ("createAgent", "use create_agent"),
    ("PyFlueContext", "use FlueContext"),
    ("define_tool", "tools=[fn]"),
    ("dispatch", "workflows.invoke"),
])
def test_importing_a_pyflue_0_2_name_pyflue_lacks_names_the_replacement(
    name: str, replacement: str
) -> None:
    with pytest.raises(ImportError, match=r"PyFlue 0\.2") as caught:
        exec(f"from pyflue import {name}", {})
    assert replacement in str(caught.value)
