"""Resource edges found by reading the code: what a sandbox can make the server hold."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pyflue.events import EventType
from pyflue.llm import StaticModels
from pyflue.llm.base import ToolResultBlock
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import ModelSettings, Settings
from pyflue.testing import ScriptedModel, call, say
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

AGENT = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"model": "anthropic/claude-test"})
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("truncate -s 1G big.txt && seq 1 100000 > lines.txt")
    s = await h.session()
    await s.prompt("look")
    return True
"""


async def test_a_tool_reads_only_the_head_of_a_huge_file_into_the_server(
    settings: Settings, write_workflow: WriteWorkflow
) -> None:
    model = ScriptedModel([
        call("read", path="big.txt"),
        call("read", path="lines.txt", offset=1, limit=3),
        call("read", path="lines.txt", offset=99_000),
        call("read", path="lines.txt", offset=12_000, limit=2000),
        call("edit", path="lines.txt", old_text="77777", new_text="x"),
        say("done"),
    ])
    capped = settings.model_copy(update={"models": ModelSettings(tool_read_max_bytes=64 << 10)})
    write_workflow("huge", AGENT)
    async with open_runner(capped, models=StaticModels(model)) as runner:
        run = await runner.run("huge", {})
        reads = await runner.store.list_events(run.run_id, types=[EventType.file_read])
    assert run.status is RunStatus.completed, run.error
    # Nothing larger than the limit (64 KiB) came into the server, not even for a 1 GiB file.
    assert reads and all(e.data["bytes"] <= (64 << 10) + 1 for e in reads)

    def result(request: int) -> str:
        last = model.requests[request].messages[-1]
        [block] = [b for b in last.content if isinstance(b, ToolResultBlock)]
        return str(block.content)

    assert "is a binary file of 1073741824 bytes" in result(1)  # sparse: zeros
    assert result(2).startswith("     1\t1\n     2\t2\n     3\t3")
    assert "lines.txt is 588895 bytes; only its first" in result(3)
    assert "use bash" in result(3)
    # The last lines of the head that was read, then the note.
    assert result(4).splitlines()[-2].endswith("\t12773") and "use bash" in result(4)
    assert "over the tool read limit of 65536 (PYFLUE_TOOL_READ_MAX_BYTES)" in result(5)


async def test_the_containers_own_log_is_capped_on_the_host(
    runner: Runner, write_workflow: WriteWorkflow, docker_client: Any, runtime: str
) -> None:
    write_workflow("engine_log", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    # Whatever reaches the init's stdout lands in the engine's log of the container: try to.
    flood = await h.shell("for fd in /proc/1/fd/1 /proc/1/fd/2; do "
                          "head -c 5000000 /dev/zero | tr '\\\\0' x > $fd && echo wrote; done; true")
    return [INSPECT(h.sandbox_id), flood["stdout"]]
""")

    def inspect(container_id: str) -> dict[str, Any]:
        attrs = docker_client.api.inspect_container(container_id)
        path = attrs.get("LogPath") or ""
        size = os.path.getsize(path) if path and os.path.exists(path) else 0
        return {"config": attrs["HostConfig"]["LogConfig"], "size": size}

    runner.registry.get("engine_log").module.INSPECT = inspect  # type: ignore[attr-defined]
    run = await runner.run("engine_log", {})
    assert run.status is RunStatus.completed, run.error
    seen, wrote = run.result
    assert seen["config"] == {"Type": "json-file",
                              "Config": {"max-size": "1m", "max-file": "1"}}
    # The write works where the init can be reached (an image without python3); either way
    # the engine keeps at most about 1 MiB of it (json-file rotates once over max-size).
    assert seen["size"] < 2 * 2**20, (seen, wrote)
