"""The warm pool on the real engine: warm runs behave as cold ones, a claimed container is one
run's alone, a container that died in the pool is never handed out, removal after the run is
recorded, and a pool left by a killed server is reaped by the next one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyflue.events import EventType
from pyflue.models import Run, RunStatus, utcnow
from pyflue.runs import Runner
from pyflue.sandbox.docker import DockerProvider
from pyflue.sandbox.docker.pool import LABEL_POOL
from pyflue.settings import PoolSettings, SandboxDefaults, Settings
from pyflue.store.base import RunUpdate
from pyflue.wiring import open_runner, pool_templates
from pyflue.workers import local_owner
from tests.conftest import WriteWorkflow
from tests.integration.servers import Server

pytestmark = pytest.mark.docker

WORKFLOWS = {
    "trivial": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            out = await h.shell("echo hi; id -u; ls -A /workspace | wc -l")
            return out["stdout"].split()
        """,
    "leave": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            seen = (await h.shell("ls -A /workspace /tmp")).get("stdout")
            await h.shell(f"echo {ctx.id} > /workspace/mark; echo x > /tmp/mark")
            return seen
        """,
    "env": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {"env": {"GREETING": "hello"},
                                          "secrets": ["POOL_TEST_SECRET"]})
        async def run(ctx):
            h = await ctx.init(agent)
            out = await h.shell('echo "$GREETING"; test "$POOL_TEST_SECRET" = s3cret && echo ok; '
                                'echo "$ONE_OFF"', secrets=["POOL_TEST_ONE_OFF"],
                                env={"ONE_OFF": "yes"})
            probe = await h.shell('test "$POOL_TEST_ONE_OFF" = once && echo granted')
            return out["stdout"].split() + probe["stdout"].split()
        """,
    "execs": """
        import asyncio
        import docker
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            out = await h.shell("echo $$")
            client = docker.from_env()
            try:
                info = await asyncio.to_thread(client.api.inspect_container, h.sandbox_id)
            finally:
                client.close()
            return {"execs": info["ExecIDs"], "out": out["stdout"].strip()}
        """,
    "nap": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            return (await h.shell("sleep 0.5; echo slept"))["stdout"].strip()
        """,
}


@pytest.fixture(autouse=True)
def _workflows(write_workflow: WriteWorkflow) -> None:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)


def _settings(project: Path, tmp_path: Path, size: int) -> Settings:
    return Settings(project_dir=project,
                    store_url=f"sqlite+aiosqlite:///{tmp_path / 'store' / 'pyflue.db'}",
                    sandbox=SandboxDefaults(kill_grace=2.0), pool=PoolSettings(size=size))


@pytest.fixture
def pooled_runner(project: Path, tmp_path: Path) -> Callable[[int], Any]:
    """A runner whose Docker provider keeps a warm pool of ``size`` (as the server's does)."""

    def make(size: int) -> Any:
        return open_runner(_settings(project, tmp_path, size), pool=True)

    return make


def _docker(runner: Runner) -> DockerProvider:
    assert isinstance(runner.provider, DockerProvider)
    return runner.provider


async def _filled(runner: Runner) -> list[str]:
    """Waits for the pool to be full; the ids of the containers in it."""
    provider = _docker(runner)
    assert provider.pool is not None
    assert await provider.pool.wait_filled(60)
    return provider.pool.pooled_ids()


async def _events(runner: Runner, run: Run) -> list[Any]:
    return [e async for e in runner.store.subscribe(run.run_id)]


def _launch(events: list[Any]) -> str:
    started = [e for e in events if e.type is EventType.container_started]
    assert len(started) == 1
    return str(started[0].data.launch)


# Per-run values (ids, names, times) and how the container came and went; the rest must match.
# Timings vary, and `create_ms` is only for a container created for the run (docs/events.md).
VARYING = {"container_id", "name", "launch", "deferred", "duration_ms", "run_id", "timestamp",
           "start_ms", "create_ms"}


def _shape(events: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events without per-run values; output chunks joined (chunking is the kernel's)."""
    shape: list[tuple[str, dict[str, Any]]] = []
    for e in events:
        data = {k: v for k, v in e.data.model_dump().items() if k not in VARYING}
        if shape and e.type is EventType.shell_output and shape[-1][0] == "shell_output" \
                and shape[-1][1]["stream"] == data["stream"]:
            shape[-1][1]["text"] += data["text"]
            continue
        shape.append((e.type.value, data))
    return shape


async def test_a_warm_run_gives_the_result_and_events_of_a_cold_one(pooled_runner: Any) -> None:
    async with pooled_runner(1) as runner:
        await _filled(runner)
        warm = await runner.run("trivial", {})
        _docker(runner).pause_pool()  # nothing to claim: starts cold
        cold = await runner.run("trivial", {})
        warm_events, cold_events = await _events(runner, warm), await _events(runner, cold)
    assert warm.status is cold.status is RunStatus.completed
    assert warm.result == cold.result == ["hi", "1000", "0"]
    assert (_launch(warm_events), _launch(cold_events)) == ("warm", "cold")
    assert _shape(warm_events) == _shape(cold_events)


async def test_pool_size_zero_gives_cold_runs(pooled_runner: Any) -> None:
    async with pooled_runner(0) as runner:
        assert _docker(runner).pool is None
        run = await runner.run("trivial", {})
        assert _launch(await _events(runner, run)) == "cold"
        assert run.container_removed_at is not None  # removed before the run's end


async def test_a_run_never_sees_another_runs_container_or_files(pooled_runner: Any) -> None:
    async with pooled_runner(2) as runner:
        await _filled(runner)
        first = await runner.run("leave", {})
        second = await runner.run("leave", {})
        events = [await _events(runner, r) for r in (first, second)]
    assert [_launch(e) for e in events] == ["warm", "warm"]
    assert first.container_id != second.container_id
    # Nothing in /workspace nor /tmp but what any fresh container has
    assert first.result == second.result


async def test_a_claimed_container_is_removed_after_its_run_and_the_record_says_when(
    pooled_runner: Any, docker_client: Any,
) -> None:
    async with pooled_runner(1) as runner:
        await _filled(runner)
        run = await runner.run("trivial", {})
        assert run.container_id is not None
        await runner.settle()
        record = await runner.store.get_run(run.run_id)
        assert record.container_removed_at is not None
        assert record.container_removed_at >= record.finished_at  # type: ignore[operator]
        assert not docker_client.containers.list(all=True, filters={"id": run.container_id})


async def test_a_pooled_container_killed_in_the_pool_is_never_handed_out(
    pooled_runner: Any, docker_client: Any,
) -> None:
    async with pooled_runner(2) as runner:
        killed = await _filled(runner)
        for cid in killed:
            docker_client.containers.get(cid).kill()
        run = await runner.run("trivial", {})
    assert run.status is RunStatus.completed, run.error
    assert run.container_id not in killed


async def test_env_and_secrets_reach_the_commands_of_a_pooled_container(
    pooled_runner: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POOL_TEST_SECRET", "s3cret")
    monkeypatch.setenv("POOL_TEST_ONE_OFF", "once")
    async with pooled_runner(1) as runner:
        pooled = await _filled(runner)
        # Nothing of the run is in the pooled container's own environment
        env = docker_client.api.inspect_container(pooled[0])["Config"]["Env"]
        assert not [v for v in env if "POOL_TEST" in v or "GREETING" in v]
        run = await runner.run("env", {})
        events = await _events(runner, run)
        assert _launch(events) == "warm"
    assert run.status is RunStatus.completed, run.error
    # Through the helper started when the container was pooled, before the run existed
    [started] = [e for e in events if e.type is EventType.container_started]
    assert started.data.channel == "helper"
    assert run.result == ["hello", "ok", "yes"]  # the one-off secret stayed with its command


async def test_a_warm_run_uses_the_helper_started_when_its_container_was_pooled(
    pooled_runner: Any, docker_client: Any,
) -> None:
    async with pooled_runner(1) as runner:
        [cid] = await _filled(runner)
        before = docker_client.api.inspect_container(cid)["ExecIDs"]
        run = await runner.run("execs", {})
        events = await _events(runner, run)
    assert run.status is RunStatus.completed, run.error
    assert _launch(events) == "warm" and run.container_id == cid
    [started] = [e for e in events if e.type is EventType.container_started]
    assert started.data.channel == "helper"
    # The claim started no `docker exec`: the one running is the helper the pool started
    assert len(before) == 1 and run.result["execs"] == before
    assert run.result["out"].isdigit()


async def test_a_pooled_container_whose_helper_died_gets_a_new_one_when_claimed(
    pooled_runner: Any, docker_client: Any,
) -> None:
    async with pooled_runner(1) as runner:
        [cid] = await _filled(runner)
        [helper_exec] = docker_client.api.inspect_container(cid)["ExecIDs"]
        os.kill(docker_client.api.exec_inspect(helper_exec)["Pid"], signal.SIGKILL)
        while docker_client.api.exec_inspect(helper_exec)["Running"]:  # the engine saw it
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # (time for its stream to end at this end too)
        run = await runner.run("execs", {})
        events = await _events(runner, run)
    assert run.status is RunStatus.completed, run.error
    assert _launch(events) == "warm" and run.container_id == cid
    [started] = [e for e in events if e.type is EventType.container_started]
    assert started.data.channel == "helper"
    assert len(run.result["execs"]) == 1 and run.result["execs"] != [helper_exec]


async def test_the_reaper_removes_a_container_whose_removal_after_its_run_is_not_recorded(
    pooled_runner: Any, project: Path, tmp_path: Path, docker_client: Any,
) -> None:
    async with pooled_runner(1) as runner:
        await _filled(runner)
        provider = _docker(runner)
        assert provider.pool is not None
        # A container claimed by a run that ended with its removal never done (it failed
        # three times, or the process died first): the record has no container_removed_at.
        pooled = await provider.pool.claim(pool_templates(_settings(project, tmp_path, 1))[0][0])
        assert pooled is not None
        run = await runner.submit("trivial", {})
        await runner.store.update_run(run.run_id, RunUpdate(
            status=RunStatus.completed, finished_at=utcnow(),
            extra={"container_id": pooled.container_id, "owner": local_owner()}))
        # The label-based pass leaves it (its pool's worker is alive) ...
        await provider.reap(runner.workers.is_live, runner.workers.owner_is_dead)
        assert docker_client.api.containers(all=True, filters={"id": pooled.container_id})
        # ... a reaper pass removes it by the record, and records when
        assert run.run_id in await runner.workers.reap()
        record = await runner.store.get_run(run.run_id)
    assert record.container_removed_at is not None
    assert not docker_client.api.containers(all=True, filters={"id": pooled.container_id})
    assert not docker_client.api.volumes(filters={"name": pooled.name})["Volumes"]


async def test_a_burst_larger_than_the_pool_completes_with_cold_starts(
    pooled_runner: Any,
) -> None:
    async with pooled_runner(1) as runner:
        await _filled(runner)
        runs = await asyncio.gather(*(runner.run("nap", {}) for _ in range(3)))
        launches = sorted([_launch(await _events(runner, r)) for r in runs])
    assert [r.status for r in runs] == [RunStatus.completed] * 3
    assert launches.count("warm") == 1 and launches.count("cold") == 2


async def test_the_pool_is_drained_when_the_runner_closes(pooled_runner: Any,
                                                          docker_client: Any) -> None:
    async with pooled_runner(2) as runner:
        pooled = await _filled(runner)
    left = docker_client.api.containers(all=True, filters={"label": LABEL_POOL})
    assert not set(pooled) & {c["Id"] for c in left}


async def _health(client: httpx.AsyncClient) -> dict[str, Any]:
    answer: dict[str, Any] = (await client.get("/health")).json()
    return answer


async def _until(check: Callable[[], Any], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.2)
    raise AssertionError("the condition did not hold in time")


@pytest.fixture
async def pool_server(project: Path, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(project, tmp_path / "store.db", concurrency=4, env={"PYFLUE_POOL_SIZE": "2"})
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


async def test_a_pool_left_by_a_server_killed_with_sigkill_is_reaped_by_the_next_start(
    pool_server: Server, docker_client: Any,
) -> None:
    async with httpx.AsyncClient(base_url=pool_server.url, timeout=30) as client:
        async def full() -> bool:
            return [p["ready"] for p in (await _health(client))["pool"]] == [2]

        await _until(full)
        answer = await client.post("/workflows/trivial?wait=result", json={})
        assert answer.json()["result"] == ["hi", "1000", "0"]
    assert pool_server.proc is not None
    mine = {"label": f"{LABEL_POOL}"}  # a list call only: no per-container inspect to race
    owned = {c["Id"] for c in docker_client.api.containers(all=True, filters=mine)
             if f":{pool_server.proc.pid}:" in c["Labels"][LABEL_POOL]}
    assert len(owned) >= 2
    pool_server.stop(signal.SIGKILL)

    pool_server.start()  # the same store: its first reaper pass removes the dead server's pool

    async def reaped() -> bool:
        now = {c["Id"] for c in docker_client.api.containers(all=True, filters=mine)}
        return not owned & now

    await _until(reaped)
    async with httpx.AsyncClient(base_url=pool_server.url, timeout=30) as client:
        run = (await client.post("/workflows/trivial?wait=result", json={}))
        assert run.status_code == 200 and run.json()["result"] == ["hi", "1000", "0"]
