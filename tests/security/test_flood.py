"""An output flood is cut to the cap and the process that runs the run stays small."""

from __future__ import annotations

import resource

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

FLOOD = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    r = await h.shell("head -c 1000000000 /dev/zero | tr '\\\\0' x; echo END", timeout=300)
    return {"kept": len(r["stdout"]), "end": r["stdout"].endswith("xEND\\n"), "code": r["exit_code"]}
"""


async def test_a_gigabyte_of_output_is_truncated_and_memory_stays_bounded(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("flood", FLOOD)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, high-water mark
    run = await runner.run("flood", {})
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert run.status is RunStatus.completed
    assert run.result["code"] == 0 and run.result["end"] is True
    assert run.result["kept"] < 2 * 2**20  # head + tail of the 1 MiB cap, not 1 GB
    end = (await runner.store.list_events(run.run_id, types=[EventType.shell_end]))[0]
    assert end.data["stdout_bytes"] == 1_000_000_004 and end.data["truncated"] is True
    assert grown_mib < 150, f"the process grew by {grown_mib:.0f} MiB for 1 GB of output"
