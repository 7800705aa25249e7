"""Folder copies in and out of a real sandbox: what comes out is filtered on the host side."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import Settings
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

COPIES = """
from pyflue import create_agent
from pyflue.errors import PyflueError
agent = create_agent(lambda ctx: {})

async def attempt(coro):
    try:
        await coro
    except PyflueError as exc:
        return exc.to_dict()["type"]
    return "no error"

async def run(ctx):
    h = await ctx.init(agent)
    up = await h.fs.upload(ctx.payload["src"], "in/repo")
    seen = await h.shell("cd in && find repo -printf '%p %U %y\\\\n' | sort")
    await h.shell("mkdir -p out/sub && echo a > out/a.txt && ln -s /etc/passwd out/passwd && "
                  "ln -s ../a.txt out/sub/rel && mkfifo out/pipe && cp /bin/true out/t && "
                  "chmod 4755 out/t && ln -s /etc escape")
    down = await h.fs.download("out", ctx.payload["dest"])
    refused = {
        "exists": await attempt(h.fs.download("out", ctx.payload["dest"])),
        "dotdot": await attempt(h.fs.download("../etc", ctx.payload["dest"] + "-2")),
        "absolute": await attempt(h.fs.download("/etc/passwd", ctx.payload["dest"] + "-3")),
        "link_out": await attempt(h.fs.download("escape/passwd", ctx.payload["dest"] + "-4")),
        "no_source": await attempt(h.fs.upload(ctx.payload["src"] + "-missing", "x")),
        "over_cwd": await attempt(h.fs.download("out", ".", overwrite=True)),
        "over_root": await attempt(h.fs.download("out", "/", overwrite=True)),
    }
    dot = await h.fs.upload(ctx.payload["src"] + "/.", "in/dot")
    dot_seen = await h.shell("find in/dot -name README")
    again = await h.fs.download("out/a.txt", ctx.payload["dest"], overwrite=True)
    return {"up": up.to_dict(), "seen": seen["stdout"], "down": down.to_dict(),
            "refused": refused, "again": again.to_dict(), "dot": dot.files,
            "dot_seen": dot_seen["stdout"]}
"""


async def test_folders_copy_in_and_out_filtered(
    runner: Runner, write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    src = host / "repo"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "README").write_text("hello\n")
    (src / "host-secret").symlink_to("/etc/shadow")
    dest = host / "artifacts"
    write_workflow("copies", COPIES)
    run = await runner.run("copies", {"src": str(src), "dest": str(dest)})
    assert run.status is RunStatus.completed, run.error
    r = run.result
    assert r["up"]["files"] == 2 and r["up"]["skipped"] == ["repo/host-secret"]
    assert r["seen"].splitlines() == [
        "repo 1000 d", "repo/README 1000 f", "repo/pkg 1000 d", "repo/pkg/mod.py 1000 f"]
    # Links are skipped; the engine leaves the fifo out of the archive altogether.
    assert {"out/passwd", "out/sub/rel"} <= set(r["down"]["skipped"])
    assert r["down"]["files"] == 2
    assert r["refused"] == {
        "exists": "config_error", "dotdot": "workspace_path_error",
        "absolute": "workspace_path_error", "link_out": "workspace_path_error",
        "no_source": "config_error", "over_cwd": "config_error", "over_root": "config_error",
    }
    assert r["dot"] == 2 and r["dot_seen"] == "in/dot/README\n"  # "src/." is named after src
    # The last download replaced the folder with one file; nothing else was left around.
    assert dest.read_text() == "a\n" and r["again"]["files"] == 1
    assert sorted(p.name for p in host.iterdir()) == ["artifacts", "repo"]
    ops = [e.data for e in await runner.store.list_events(run.run_id, types=[EventType.file_op])]
    assert [o["op"] for o in ops if o["op"] in ("upload", "download")] == [
        "upload", "download", "upload", "download"]


async def test_what_comes_out_of_a_folder_is_only_its_files_and_folders(
    runner: Runner, write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    write_workflow("out", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("mkdir -p out/sub && echo a > out/a.txt && echo b > out/sub/b.txt && "
                  "ln -s /etc/passwd out/passwd && cp /bin/true out/t && chmod 4755 out/t")
    return (await h.fs.download("out", ctx.payload["dest"])).to_dict()
""")
    dest = tmp_path / "got"
    run = await runner.run("out", {"dest": str(dest)})
    assert run.status is RunStatus.completed, run.error
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert files == ["a.txt", "sub", "sub/b.txt", "t"]
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert (dest / "t").stat().st_mode & 0o7777 == 0o755  # the setuid bit stays behind
    assert (dest / "sub" / "b.txt").read_text() == "b\n"
    assert run.result["skipped"] == ["out/passwd"]


FLOOD = """
from pyflue import create_agent
from pyflue.errors import PyflueError
agent = create_agent(lambda ctx: {})

async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("mkdir many && cd many && for i in $(seq 1 100); do : > f$i; done")
    out = {}
    for name, copy in (("down", h.fs.download("many", ctx.payload["dest"])),
                       ("up", h.fs.upload(ctx.payload["src"], "up"))):
        try:
            await copy
            out[name] = "copied"
        except PyflueError as exc:
            out[name] = exc.message
    return out
"""


async def test_a_flood_of_tiny_files_is_stopped_by_the_entries_cap(
    settings: Settings, write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    from pyflue.wiring import open_runner

    src = tmp_path / "src"
    src.mkdir()
    for i in range(100):
        (src / f"f{i}").touch()
    capped = settings.model_copy(update={
        "sandbox": settings.sandbox.model_copy(update={"copy_max_entries": 20})})
    write_workflow("flood", FLOOD)
    async with open_runner(capped) as runner:
        run = await runner.run("flood", {"dest": str(tmp_path / "dest"), "src": str(src)})
    assert run.status is RunStatus.completed, run.error
    for way in ("down", "up"):
        assert "more than 20 files and folders" in run.result[way]
        assert "PYFLUE_SANDBOX_COPY_MAX_ENTRIES" in run.result[way]
    assert not (tmp_path / "dest").exists()  # nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
