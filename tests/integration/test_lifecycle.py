"""One fresh, hardened container per run, removed whatever the outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

AGENT = "from pyflue import create_agent\nagent = create_agent(lambda ctx: {})\n"


async def test_a_run_creates_exactly_one_container_and_removes_it(
    runner: Runner, write_workflow: WriteWorkflow, containers_of: Any, volumes_of: Any
) -> None:
    write_workflow("probe", AGENT + """
import json
async def run(ctx):
    h = await ctx.init(agent)
    h2 = await ctx.init(agent)
    out = await h.shell("hostname")
    await h2.shell("true")
    return {"box": h.sandbox_id, "same": h.sandbox_id == h2.sandbox_id}
""")
    submitted = await runner.submit("probe", {})
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(len(containers_of(submitted.run_id)))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    run = await runner.execute(submitted.run_id)
    watcher.cancel()
    assert run.status is RunStatus.completed and run.result["same"] is True
    assert max(seen) == 1
    assert containers_of(run.run_id) == [] and volumes_of(run.run_id) == []
    created = await runner.store.list_events(run.run_id, types=[EventType.container_created])
    assert len(created) == 1 and created[0].data["container_id"] == run.result["box"]


async def test_the_container_is_removed_when_the_workflow_raises(
    runner: Runner, write_workflow: WriteWorkflow, containers_of: Any, volumes_of: Any
) -> None:
    write_workflow("raises", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("echo before")
    raise RuntimeError("workflow bug")
""")
    run = await runner.run("raises", {})
    assert run.status is RunStatus.failed and run.error is not None
    assert run.error.type == "RuntimeError" and "workflow bug" in (run.error.details or "")
    assert containers_of(run.run_id) == [] and volumes_of(run.run_id) == []
    types = [e.type for e in await runner.store.list_events(run.run_id)]
    assert types.index(EventType.container_removed) < types.index(EventType.run_end)


async def test_the_container_is_removed_when_the_run_is_cancelled_mid_command(
    runner: Runner, write_workflow: WriteWorkflow, containers_of: Any
) -> None:
    write_workflow("sleepy", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("sleep 60")
""")
    submitted = await runner.submit("sleepy", {})
    task = asyncio.create_task(runner.execute(submitted.run_id))
    for _ in range(200):
        if await runner.store.list_events(submitted.run_id, types=[EventType.shell_start]):
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await runner.store.get_run(submitted.run_id)).status is RunStatus.cancelled
    assert containers_of(submitted.run_id) == []


async def test_two_runs_never_see_each_others_files(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("mark", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    me = ctx.payload["me"]
    await h.fs.write_file(f"{me}.txt", me)
    await h.shell(f"echo {me} > /tmp/{me}")
    import asyncio
    await asyncio.sleep(0.5)
    return {"files": await h.fs.readdir("."),
            "tmp": (await h.shell("ls /tmp"))["stdout"].split()}
""")
    a, b = await asyncio.gather(runner.run("mark", {"me": "a"}), runner.run("mark", {"me": "b"}))
    assert a.result == {"files": ["a.txt"], "tmp": ["a"]}
    assert b.result == {"files": ["b.txt"], "tmp": ["b"]}


async def test_the_hardening_is_real_inside_the_container(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("inspect", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    sh = lambda c: h.shell(c)
    return {
        "status": (await sh("cat /proc/self/status"))["stdout"],
        "uid": (await sh("id -u"))["stdout"].strip(),
        "pids": (await sh("cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"))["stdout"].strip(),
        "mem": (await sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"))["stdout"].strip(),
        "root_write": (await sh("touch /etc/pyflue-test"))["exit_code"],
        "ws_write": (await sh("touch /workspace/ok && echo yes"))["stdout"].strip(),
        "tmp_write": (await sh("touch /tmp/ok && echo yes"))["stdout"].strip(),
        "ifaces": (await sh("ls /sys/class/net"))["stdout"].split(),
        "cwd": (await sh("pwd"))["stdout"].strip(),
    }
""")
    run = await runner.run("inspect", {})
    r = run.result
    status = dict(
        line.split(":\t", 1) for line in r["status"].splitlines() if ":\t" in line
    )
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["CapPrm"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert r["uid"] != "0" and r["uid"] == "1000"
    assert r["pids"] == "512"
    assert r["mem"] == str(2 << 30)
    assert r["root_write"] != 0
    assert r["ws_write"] == "yes" and r["tmp_write"] == "yes"
    assert r["ifaces"] == ["lo"]
    assert r["cwd"] == "/workspace"


async def test_the_image_override_is_used_for_the_container(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("which", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    return (await h.shell("command -v python3 || echo none"))["stdout"].strip()
""")
    run = await runner.run("which", {}, image="pyflue/bookworm-base:latest")
    assert run.status is RunStatus.completed and run.result == "none"
    assert run.image == "pyflue/bookworm-base:latest"


async def test_a_missing_image_fails_the_run_with_how_to_fix_it(
    runner: Runner, write_workflow: WriteWorkflow, containers_of: Any, volumes_of: Any
) -> None:
    write_workflow("which", AGENT + "async def run(ctx):\n    await ctx.init(agent)\n")
    run = await runner.run("which", {}, image="pyflue/does-not-exist:1")
    assert run.status is RunStatus.failed and run.error is not None
    assert run.error.type == "image_not_found"
    assert "pyflue images build" in (run.error.hint or "") and "--image" in (run.error.hint or "")
    assert "pyflue images build" not in run.error.message  # the hint is kept apart
    assert containers_of(run.run_id) == [] and volumes_of(run.run_id) == []


async def test_the_reaper_removes_containers_of_runs_that_are_not_running(
    runner: Runner, docker_client: Any, containers_of: Any, volumes_of: Any
) -> None:
    from pyflue.sandbox.base import SandboxSpec
    from pyflue.sandbox.docker.lifecycle import container_config, resource_name, volume_options

    spec = SandboxSpec(run_id="workflow:ghost:01TESTREAPER", workflow="ghost",
                       image="pyflue/sandbox:latest")
    name = resource_name(spec.run_id)
    docker_client.volumes.create(name, driver="local", driver_opts=volume_options(spec),
                                 labels={"dev.pyflue.run-id": spec.run_id,
                                         "dev.pyflue.scope": runner.provider.scope})  # type: ignore[attr-defined]
    scope = runner.provider.scope  # type: ignore[attr-defined]
    docker_client.containers.create(**container_config(spec, name, scope)).start()
    assert len(containers_of(spec.run_id)) == 1
    reaped = await runner.workers.reap()
    assert spec.run_id in reaped
    assert containers_of(spec.run_id) == [] and volumes_of(spec.run_id) == []


async def test_the_reaper_marks_runs_of_dead_processes_interrupted(
    runner: Runner, docker_client: Any, containers_of: Any
) -> None:
    import socket

    from pyflue.models import Run, new_run_id, utcnow
    from pyflue.sandbox.base import SandboxSpec
    from pyflue.sandbox.docker.lifecycle import container_config, resource_name, volume_options

    dead = subprocess_pid_that_exited()
    run = Run(run_id=new_run_id("ghost"), workflow="ghost", status=RunStatus.running,
              owner=f"{socket.gethostname()}:{dead}", created_at=utcnow())
    await runner.store.create_run(run)
    spec = SandboxSpec(run_id=run.run_id, workflow="ghost", image="pyflue/sandbox:latest")
    name = resource_name(spec.run_id)
    docker_client.volumes.create(name, driver="local", driver_opts=volume_options(spec),
                                 labels={"dev.pyflue.run-id": spec.run_id,
                                         "dev.pyflue.scope": runner.provider.scope})  # type: ignore[attr-defined]
    scope = runner.provider.scope  # type: ignore[attr-defined]
    docker_client.containers.create(**container_config(spec, name, scope)).start()
    assert await runner.workers.reap() == [run.run_id]
    assert containers_of(run.run_id) == []
    after = await runner.store.get_run(run.run_id)
    assert after.status is RunStatus.interrupted and str(dead) in (after.reason or "")


def subprocess_pid_that_exited() -> int:
    import subprocess

    proc = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


async def test_the_reaper_leaves_other_stores_containers_alone(
    runner: Runner, docker_client: Any, containers_of: Any
) -> None:
    from pyflue.sandbox.base import SandboxSpec
    from pyflue.sandbox.docker.lifecycle import container_config, resource_name

    spec = SandboxSpec(run_id="workflow:other:01TESTOTHERSTORE", workflow="other",
                       image="pyflue/sandbox:latest")
    config = container_config(spec, resource_name(spec.run_id), "some-other-store")
    config["mounts"] = []
    container = docker_client.containers.create(**config)
    try:
        assert spec.run_id not in await runner.workers.reap()
        assert len(containers_of(spec.run_id)) == 1
    finally:
        container.remove(force=True)


async def test_a_container_left_by_an_earlier_attempt_is_replaced_with_a_fresh_one(
    runner: Runner, write_workflow: WriteWorkflow, docker_client: Any, containers_of: Any,
    volumes_of: Any,
) -> None:
    # A requeued run whose first attempt's worker died on this engine: its container, with
    # the same name and files in its workspace, is still there when the next attempt starts.
    from pyflue.sandbox.base import SandboxSpec
    from pyflue.sandbox.docker.lifecycle import container_config, resource_name, volume_options

    write_workflow("redo", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    return (await h.shell("find /workspace -mindepth 1; echo checked"))["stdout"]
""")
    submitted = await runner.submit("redo", {})
    spec = SandboxSpec(run_id=submitted.run_id, workflow="redo", image="pyflue/sandbox:latest")
    name, scope = resource_name(spec.run_id), runner.provider.scope  # type: ignore[attr-defined]
    docker_client.volumes.create(name, driver="local", driver_opts=volume_options(spec),
                                 labels={"dev.pyflue.run-id": spec.run_id,
                                         "dev.pyflue.scope": scope})
    stale = docker_client.containers.create(**container_config(spec, name, scope))
    stale.start()
    assert stale.exec_run("touch /workspace/left-by-attempt-1").exit_code == 0
    run = await runner.execute(submitted.run_id)
    assert run.status is RunStatus.completed, run.error
    assert run.result == "checked\n"  # a fresh workspace: nothing of the earlier attempt
    assert containers_of(spec.run_id) == [] and volumes_of(spec.run_id) == []
    events = await runner.store.list_events(run.run_id)
    created = [e.data["container_id"] for e in events if e.type is EventType.container_created]
    assert created and created[0] != stale.id
