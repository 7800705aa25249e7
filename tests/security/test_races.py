"""Races a process inside the sandbox runs against pyflue's own checks, while they happen.

- Leaky Vessels (runc CVE-2024-21626): a command's folder is checked by the harness, then the
  command starts there. A process inside swaps that folder for a symlink (to
  ``/proc/self/fd/N``, to ``/etc``) in a loop; the runtime must never be the one to resolve it:
  the command enters its folder itself, inside the container (pyflue/sandbox/docker/shell.py).
- Copy out (CVE-2018-15664 class): while folders are copied out, a process swaps a folder of
  the copy for a symlink to a folder outside the workspace; nothing from outside the workspace
  may come out, and nothing may be written outside the destination on the host.

Each runs over the persistent helper channel (cold and warm containers) and over the
``docker exec`` + archive fallback (the helper killed first: later calls fall back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.sandbox.docker.helper_channel import MAX_RESTARTS
from pyflue.settings import PoolSettings, Settings
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

OUTSIDE = "pyflue-outside-canary-51c3"

# Swaps <folder>/<name> between a real folder and symlinks, in a loop; each state lasts up to
# a few milliseconds, about the time between the harness's check and the command's start.
SWAPPER = """
import itertools, os, random, sys, time
os.chdir(sys.argv[1])
name, real = sys.argv[2], sys.argv[2] + ".real"
targets = [f"/proc/self/fd/{n}" for n in range(3, 10)] + ["/etc", "/tmp/outside", "/"]
for target in itertools.cycle(targets):
    time.sleep(random.random() * 0.008)
    os.rename(name, real)
    os.symlink(target, name)
    time.sleep(random.random() * 0.008)
    os.unlink(name)
    os.rename(real, name)
"""

WORKFLOW = """
import asyncio
from pyflue import create_agent
from pyflue.errors import PyflueError
agent = create_agent(lambda ctx: {})

KILL_HELPER = ("for p in /proc/[0-9]*; do grep -qs /.pyflue/pyflue-helpe[r] $p/cmdline && "
               "kill -9 ${p#/proc/}; done; sleep 0.3; true")

async def run(ctx):
    h = await ctx.init(agent)
    if ctx.payload["channel"] == "exec":
        # A killed helper is started again by the next call, up to its restarts: killed once
        # more than that, later calls use docker exec (each kill call loses its stream).
        for _ in range(ctx.payload["restarts"] + 1):
            await h.shell(KILL_HELPER)
    await h.fs.write_file("swap.py", ctx.payload["swapper"])
    await h.shell("mkdir -p d out/sub /tmp/outside && echo inside > d/mark && "
                  "echo inside > out/sub/inside.txt && echo a > out/a.txt && "
                  f"echo {ctx.payload['canary']} > /tmp/outside/secret.txt")
    where = "out" if ctx.payload["mode"] == "copy" else "."
    swapper = asyncio.ensure_future(h.shell(
        f"exec python3 /workspace/swap.py /workspace/{where} {'sub' if where == 'out' else 'd'}",
        timeout=120))
    await asyncio.sleep(0.3)
    seen = []
    try:
        for i in range(ctx.payload["rounds"]):
            if ctx.payload["mode"] == "cwd":
                try:  # the harness's own check may see the symlink: refused, fine
                    r = await h.shell("readlink /proc/self/cwd; cat mark", cwd="d", timeout=30)
                except PyflueError as exc:
                    seen.append(["refused", exc.to_dict()["type"], ""])
                    continue
                seen.append([r["exit_code"], r["stdout"], r["stderr"]])
            else:
                try:
                    report = await h.fs.download("out", f"{ctx.payload['dest']}/dl{i}")
                    seen.append(["ok", report.files, report.skipped])
                except PyflueError as exc:
                    seen.append(["error", exc.message, []])
    finally:
        swapper.cancel()
        await asyncio.gather(swapper, return_exceptions=True)
    return seen
"""


def _settings(settings: Settings, warm: bool) -> Settings:
    return settings.model_copy(update={"pool": PoolSettings(size=1 if warm else 0)})


async def _race(settings: Settings, write_workflow: WriteWorkflow, mode: str, channel: str,
                warm: bool, **payload: Any) -> tuple[list[Any], list[Any]]:
    if settings.sandbox.runtime == "runsc" and (warm or channel == "exec"):
        pytest.skip("under gVisor the race runs once, cold over the helper (the suite's time)")
    write_workflow("race", WORKFLOW)
    async with open_runner(_settings(settings, warm), pool=warm) as runner:
        if warm:
            assert runner.provider.pool is not None  # type: ignore[attr-defined]
            assert await runner.provider.pool.wait_filled(60)  # type: ignore[attr-defined]
        run = await runner.run("race", {"mode": mode, "channel": channel, "swapper": SWAPPER,
                                        "canary": OUTSIDE, "restarts": MAX_RESTARTS,
                                        **payload})
        assert run.status is RunStatus.completed, run.error
        events = await runner.store.list_events(run.run_id)
    [started] = [e for e in events if e.type is EventType.container_started]
    assert started.data["channel"] == "helper", started.data
    assert started.data["launch"] == ("warm" if warm else "cold")
    fell_back = any("falling back to docker exec" in e.data.get("message", "")
                    for e in events if e.type is EventType.log)
    assert fell_back is (channel == "exec")
    return run.result, events


CASES = [("helper", False), ("helper", True), ("exec", False)]


@pytest.mark.parametrize(("channel", "warm"), CASES, ids=["helper-cold", "helper-warm", "exec"])
async def test_a_folder_swapped_for_a_symlink_never_reaches_the_runtime(
    settings: Settings, write_workflow: WriteWorkflow, channel: str, warm: bool
) -> None:
    seen, _ = await _race(settings, write_workflow, "cwd", channel, warm, rounds=40)
    entered = [s for s in seen if s[0] == 0]
    for code, out, err in seen:
        if code == "refused":
            assert out in ("workspace_path_error", "file_not_found"), (code, out)
            continue
        # What the runtime says when it is handed a path it cannot enter (or, patched, one
        # that leads outside the container): never seen, since it is only given /workspace.
        assert "OCI runtime" not in err and "runc" not in err and "chdir to cwd" not in err
        if code != 0:
            # The command's own `cd` met the symlink (e.g. a pipe of /proc/self/fd), or it
            # entered a folder without a `mark`: a failure of the command, in the sandbox.
            assert code in (1, 126) or "cd:" in err, (code, out, err)
        else:
            cwd = out.splitlines()[0]  # the folder, or the same one renamed since
            assert cwd in ("/workspace/d", "/workspace/d.real"), (code, out, err)
            assert out.splitlines()[1] == "inside"
    assert entered, seen  # the race did not stop every command from running


@pytest.mark.parametrize(("channel", "warm"), CASES, ids=["helper-cold", "helper-warm", "exec"])
async def test_a_copy_out_raced_by_a_symlink_swap_takes_nothing_from_outside(
    settings: Settings, write_workflow: WriteWorkflow, tmp_path: Path, channel: str,
    warm: bool
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    seen, _ = await _race(settings, write_workflow, "copy", channel, warm, rounds=12,
                          dest=str(host))
    assert any(s[0] == "ok" for s in seen), seen
    # Nothing but the copies was written on the host, each only under its own destination.
    copies = {f"dl{i}" for i, s in enumerate(seen) if s[0] == "ok"}
    assert {p.name for p in host.iterdir()} == copies
    for path in host.rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert OUTSIDE not in path.read_text(errors="replace"), path
            rel = path.relative_to(host).parts[1:]
            assert rel in (("a.txt",), ("sub", "inside.txt"), ("sub.real", "inside.txt")), path
