"""Write and copy destinations that leave the workspace (``..``, absolute, through a symlink)
are refused at every entry point: harness.fs (write_file, mkdir, rm, upload, download's
source) and the agent's tools (write, edit, read), and nothing lands outside."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyflue.llm import StaticModels
from pyflue.llm.base import ToolResultBlock
from pyflue.models import RunStatus
from pyflue.settings import Settings
from pyflue.testing import ScriptedModel, call, say
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

ESCAPES = ["../outside.txt", "/tmp/outside.txt", "/etc/outside.txt", "to_tmp/outside.txt",
           "to_tmp/new/outside.txt", "deep/../../outside.txt", "to_root/tmp/outside.txt"]

WORKFLOW = """
from pyflue import create_agent
from pyflue.errors import PyflueError
agent = create_agent(lambda ctx: {"model": "anthropic/claude-test"})

async def attempt(coro):
    try:
        await coro
    except PyflueError as exc:
        return exc.to_dict()["type"]
    return "no error"

async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("ln -s /tmp to_tmp && ln -s / to_root && mkdir deep")
    out = {}
    for path in ctx.payload["paths"]:
        out[path] = {
            "write_file": await attempt(h.fs.write_file(path, "x")),
            "mkdir": await attempt(h.fs.mkdir(path + "-dir")),
            "rm": await attempt(h.fs.rm(path, force=True)),
            "upload": await attempt(h.fs.upload(ctx.payload["src"], path)),
            "download": await attempt(h.fs.download(path, ctx.payload["dest"])),
        }
    s = await h.session()
    await s.prompt("try")
    left = await h.shell("ls -A /tmp; ls / | grep -c outside; true")
    return {"fs": out, "left": left["stdout"]}
"""


async def test_escaping_destinations_are_refused_at_every_entry_point(
    settings: Settings, write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    src = tmp_path / "src.txt"
    src.write_text("upload\n")
    model = ScriptedModel([
        *[call(tool, path=path, **args) for path in ESCAPES for tool, args in (
            ("write", {"content": "x"}), ("edit", {"old_text": "a", "new_text": "b"}),
            ("read", {}))],
        say("done"),
    ])
    write_workflow("escape", WORKFLOW)
    async with open_runner(settings, models=StaticModels(model)) as runner:
        run = await runner.run("escape", {"paths": ESCAPES, "src": str(src),
                                          "dest": str(tmp_path / "down")})
    assert run.status is RunStatus.completed, run.error
    for path, answers in run.result["fs"].items():
        assert set(answers.values()) == {"workspace_path_error"}, (path, answers)
        assert answers["write_file"] == answers["upload"] == "workspace_path_error", path
    # The tools: every call an error sent back to the model, naming the workspace.
    for i in range(len(ESCAPES) * 3):
        last = model.requests[i + 1].messages[-1]
        [block] = [b for b in last.content if isinstance(b, ToolResultBlock)]
        assert block.is_error and "outside the workspace" in str(block.content), block
    assert "outside" not in run.result["left"].replace("\n0\n", "\n")
    assert run.result["left"].splitlines()[-1] == "0"
    assert not (tmp_path / "down").exists()
