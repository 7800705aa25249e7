"""Limits hit by untrusted commands are reported as such, and contained."""

from __future__ import annotations

import asyncio

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

STEPS = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"memory": "128m", "pids": ctx.payload.get("pids")})
async def run(ctx):
    h = await ctx.init(agent)
    return [await h.shell(c, timeout=ctx.payload.get("timeout", 30)) for c in ctx.payload["steps"]]
"""


async def test_a_memory_bomb_is_oom_killed_and_reported_while_a_neighbour_completes(
    runner: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    write_workflow("steps", STEPS)
    bomb, neighbour = await asyncio.gather(
        runner.run("steps", {"steps": ["python3 -c 'x = bytearray(1 << 30)'", "echo after"]}),
        runner.run("steps", {"steps": ["sleep 1; echo neighbour fine"]}),
    )
    assert bomb.reason is not None and "memory limit (128m)" in bomb.reason
    limits = await runner.store.list_events(bomb.run_id, types=[EventType.sandbox_limit])
    assert [e.data["kind"] for e in limits] == ["memory"]
    ends = await runner.store.list_events(bomb.run_id, types=[EventType.shell_end])
    if runtime == "runc":  # the kernel kills the process; the sandbox goes on
        killed, after = bomb.result
        assert killed["exit_code"] == 137 and after["stdout"] == "after\n"
        assert ends[0].data["limits"] == ["memory"]
    else:  # gVisor's whole sandbox is the process the host kills: the run fails, saying so
        assert bomb.status is RunStatus.failed and bomb.error is not None
        assert bomb.error.type == "sandbox_gone"
        assert "exceeding its memory limit (128m)" in bomb.error.message
        assert limits[0].data["shell_id"] in {e.data["shell_id"] for e in ends}
    assert neighbour.status is RunStatus.completed
    assert neighbour.result[0]["stdout"] == "neighbour fine\n" and neighbour.reason is None


async def test_a_fork_bomb_hits_the_pids_limit_and_is_reported(
    runner: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    write_workflow("steps", STEPS)
    if runtime == "runc":
        run = await runner.run("steps", {"steps": [
            "for i in $(seq 1 600); do sleep 30 & done; wait", "echo alive"], "timeout": 3})
        flood, alive = run.result
        assert flood["exit_code"] != 0 and alive["stdout"] == "alive\n"
        assert run.reason is not None and "process limit (512" in run.reason
        return
    # gVisor holds the limit in its own kernel (fork fails with EAGAIN) and keeps no count of
    # refused forks, so the run is contained but carries no reason (docs/security.md). Forks
    # are slow under its ptrace platform: a lower limit is reached within the timeout.
    run = await runner.run("steps", {"pids": 64, "timeout": 8, "steps": [
        "for i in $(seq 1 100); do sleep 30 >/dev/null 2>&1 & done", "echo alive"]})
    flood, alive = run.result
    assert "Resource temporarily unavailable" in flood["stdout"] + flood["stderr"], flood
    assert alive["stdout"] == "alive\n"
