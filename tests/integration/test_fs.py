"""harness.fs against the real engine: round trips and confinement."""

from __future__ import annotations

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

AGENT = "from pyflue import create_agent\nagent = create_agent(lambda ctx: {})\n"


async def test_text_and_binary_files_round_trip(runner: Runner, write_workflow: WriteWorkflow) -> None:
    write_workflow("files", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    blob = bytes(range(256)) * 4
    await h.fs.write_file("docs/deep/note.md", "héllo ✓\\n")
    await h.fs.write_file("bin/blob", blob)
    st = await h.fs.stat("bin/blob")
    seen_by_shell = (await h.shell("cat docs/deep/note.md; stat -c '%u %s' bin/blob"))["stdout"]
    await h.fs.mkdir("empty/inner")
    listing = await h.fs.readdir(".")
    await h.fs.rm("bin/blob")
    await h.fs.rm("empty", recursive=True)
    return {
        "text": await h.fs.read_file("docs/deep/note.md"),
        "blob_ok": True,
        "stat": [st.kind, st.size],
        "shell": seen_by_shell,
        "listing": listing,
        "after_rm": await h.fs.readdir("."),
        "exists": [await h.fs.exists("docs"), await h.fs.exists("bin/blob")],
    }
""")
    run = await runner.run("files", {})
    assert run.status is RunStatus.completed, run.error
    r = run.result
    assert r["text"] == "héllo ✓\n"
    assert r["stat"] == ["file", 1024]
    assert r["shell"] == "héllo ✓\n1000 1024\n"
    assert r["listing"] == ["bin", "docs", "empty"]
    assert r["after_rm"] == ["bin", "docs"]
    assert r["exists"] == [True, False]


async def test_a_50_mb_binary_file_round_trips_intact(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("big", AGENT + """
import hashlib, os
async def run(ctx):
    h = await ctx.init(agent)
    data = os.urandom(50 * 1024 * 1024)
    await h.fs.write_file("big.bin", data)
    inside = (await h.shell("sha256sum big.bin"))["stdout"].split()[0]
    back = await h.fs.read_bytes("big.bin")
    return {"sent": hashlib.sha256(data).hexdigest(), "inside": inside,
            "back": hashlib.sha256(back).hexdigest(), "size": len(back)}
""")
    run = await runner.run("big", {})
    r = run.result
    assert r["size"] == 50 * 1024 * 1024
    assert r["sent"] == r["inside"] == r["back"]


async def test_paths_and_symlinks_outside_the_workspace_are_refused(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("escape", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("ln -s /etc etc_link && ln -s /etc/passwd passwd_link && mkdir real && "
                  "echo inside > real/f && ln -s /workspace/real ok_link && ln -s ../.. up")
    outcomes = {}
    attempts = {
        "dotdot": lambda: h.fs.read_file("../etc/passwd"),
        "absolute": lambda: h.fs.read_file("/etc/passwd"),
        "dir_link": lambda: h.fs.read_file("etc_link/passwd"),
        "file_link": lambda: h.fs.read_file("passwd_link"),
        "relative_link": lambda: h.fs.read_file("up/etc/passwd"),
        "write_through_link": lambda: h.fs.write_file("etc_link/evil", "x"),
        "nul": lambda: h.fs.read_file("a\\x00b"),
        "rm_root": lambda: h.fs.rm(".", recursive=True),
        "missing": lambda: h.fs.read_file("nope.txt"),
    }
    for name, attempt in attempts.items():
        try:
            await attempt()
            outcomes[name] = "allowed"
        except Exception as exc:
            outcomes[name] = type(exc).__name__
    outcomes["ok_link"] = await h.fs.read_file("ok_link/f")
    return outcomes
""")
    run = await runner.run("escape", {})
    r = run.result
    assert r.pop("ok_link") == "inside\n"
    assert r.pop("missing") == "FileNotFoundInSandbox"
    assert r == {k: "WorkspacePathError" for k in r}, r
