"""Images that lack what the sandbox needs: a clear error, or a quiet init, never a spin."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

BASE = "pyflue/bookworm-base:latest"  # no python3: the sh init is the one under test
AGENT = "from pyflue import create_agent\nagent = create_agent(lambda ctx: {})\n"


def agent_on(runtime: str) -> str:
    return ("from pyflue import create_agent\n"
            f"agent = create_agent(lambda ctx: {{'runtime': {runtime!r}}})\n")


@pytest.fixture(scope="module")
def image_without(docker_client: Any) -> Iterator[Callable[[str], str]]:
    """Builds (offline, from the local base) an image with some files deleted; removes them after."""
    built: list[str] = []

    def build(*paths: str) -> str:
        tag = f"pyflue-test/without-{'-'.join(p.rsplit('/', 1)[-1] for p in paths)}:{uuid.uuid4().hex[:8]}"
        dockerfile = f"FROM {BASE}\nRUN rm -f {' '.join(paths)}\n"
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
        built.append(tag)
        return tag

    yield build
    for tag in built:
        docker_client.images.remove(tag, force=True)


async def test_an_image_without_bin_sh_fails_the_run_saying_so(
    runner: Runner, write_workflow: WriteWorkflow, image_without: Callable[..., str],
    containers_of: Any, runtime: str,
) -> None:
    image = image_without("/bin/sh", "/usr/bin/sh")
    write_workflow("nosh", agent_on(runtime) + "async def run(ctx):\n    await ctx.init(agent)\n")
    run = await runner.run("nosh", {}, image=image)
    assert run.status is RunStatus.failed and run.error is not None
    assert "has no /bin/sh" in run.error.message
    assert "image-requirements" in run.error.message
    assert containers_of(run.run_id) == []


async def test_the_init_of_an_image_without_sleep_waits_without_forking(
    runner: Runner, write_workflow: WriteWorkflow, image_without: Callable[..., str], runtime: str
) -> None:
    image = image_without("/bin/sleep", "/usr/bin/sleep")
    write_workflow("nosleep", agent_on(runtime) + """
import asyncio

async def run(ctx):
    h = await ctx.init(agent)
    first = int((await h.shell("echo $$"))["stdout"])
    await asyncio.sleep(1.0)
    last = int((await h.shell("echo $$"))["stdout"])
    init = (await h.shell("cut -d' ' -f3 /proc/1/stat"))["stdout"].strip()
    sleep = (await h.shell("command -v sleep || echo none"))["stdout"].strip()
    return {"forked": last - first, "init": init, "sleep": sleep}
""")
    run = await runner.run("nosleep", {}, image=image)
    assert run.status is RunStatus.completed, run.error
    assert run.result["sleep"] == "none"
    assert run.result["init"] == "S"
    # A spinning init forks about a thousand times a second; a quiet one only for our commands.
    assert run.result["forked"] < 200


async def test_the_init_of_an_image_without_sleep_still_kills_everything_on_usr1(
    runner: Runner, write_workflow: WriteWorkflow, image_without: Callable[..., str]
) -> None:
    image = image_without("/bin/sleep", "/usr/bin/sleep")
    write_workflow("nosleepkill", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    # A process that blocks forever (there is no sleep here), left behind in the background.
    pid = (await h.shell(
        ": | { exec 3>/proc/self/fd/0; read -r _; } >/dev/null 2>&1 & echo $!"))["stdout"].strip()
    # What a timeout falls back on: the init kills every other process.
    await h.shell("kill -USR1 1")
    # The sweep runs in PID 1 while we go on: a command started before it ends is swept too
    # (no output, no exit code), so ask again until one outlives it.
    for _ in range(50):
        check = await h.shell(f"test -e /proc/{pid} && echo alive || echo gone")
        if check["exit_code"] is not None:
            break
    left = check["stdout"].strip()
    init = (await h.shell("cut -d' ' -f3 /proc/1/stat"))["stdout"].strip()
    return {"left": left, "init": init}
""")
    run = await runner.run("nosleepkill", {}, image=image)
    assert run.status is RunStatus.completed, run.error
    assert run.result == {"left": "gone", "init": "S"}


@pytest.mark.parametrize(("tool", "call"), [
    ("find", "await h.fs.listdir('.')"),
    ("rm", "await h.fs.write_file('x', 'y'); await h.fs.rm('x')"),
])
async def test_a_file_operation_whose_tool_the_image_lacks_names_the_tool(
    runner: Runner, write_workflow: WriteWorkflow, image_without: Callable[..., str],
    tool: str, call: str,
) -> None:
    image = image_without(f"/bin/{tool}", f"/usr/bin/{tool}")
    write_workflow(f"no{tool}", AGENT + f"""
async def run(ctx):
    h = await ctx.init(agent)
    {call}
""")
    run = await runner.run(f"no{tool}", {}, image=image)
    assert run.status is RunStatus.failed and run.error is not None
    assert f"has no `{tool}`" in run.error.message, run.error.message
    assert "image-requirements" in run.error.message
