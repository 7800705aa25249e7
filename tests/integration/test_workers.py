"""Several servers (workers) sharing one PostgreSQL store: each run runs once, any worker can
follow and cancel any run, and a worker that stops beating has its runs taken back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from pyflue.models import Run, RunStatus, new_run_id, utcnow
from pyflue.settings import Settings
from pyflue.store import SqlStore
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow
from tests.integration.servers import Server, until_finished

pytestmark = pytest.mark.docker

NAP = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    out = await h.shell(f"sleep {ctx.payload['seconds']}; echo slept")
    return out["stdout"].strip()
"""


@pytest.fixture
def workers(project: Path, tmp_path: Path, postgres_url: str,
            write_workflow: WriteWorkflow) -> Iterator[list[Server]]:
    write_workflow("nap", NAP)
    env = {"PYFLUE_STORE_URL": postgres_url}
    servers = [Server(project, tmp_path / f"worker{i}.db", 2, env=env) for i in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def _pid(owner: str) -> int:
    return int(owner.split(":")[1])  # host:pid:instance


def _pid_of(server: Server) -> int:
    assert server.proc is not None
    return server.proc.pid


async def test_waiting_on_a_worker_for_a_run_another_worker_took(
    workers: list[Server],
) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as ca, \
            httpx.AsyncClient(base_url=b.url, timeout=60) as cb:
        # Fill a's two slots, then wait on a for runs that b (idle) will mostly take.
        busy = [(await ca.post("/workflows/nap", json={"seconds": 4})).json()["run_id"]
                for _ in range(2)]
        waits = await asyncio.gather(*[
            ca.post("/workflows/nap?wait=result", json={"seconds": 0.5}) for _ in range(3)])
        for run_id in busy:
            await until_finished(cb, run_id)
    assert [w.status_code for w in waits] == [200, 200, 200]
    assert [w.json()["result"] for w in waits] == ["slept"] * 3
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as ca:
        owners = {_pid((await ca.get(f"/runs/{w.json()['run_id']}")).json()["owner"])
                  for w in waits}
    assert _pid_of(b) in owners  # the point: a answered for runs b ran


async def test_runs_spread_over_workers_and_each_runs_once(workers: list[Server]) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as ca, \
            httpx.AsyncClient(base_url=b.url, timeout=60) as cb:
        ids = [(await ca.post("/workflows/nap", json={"seconds": 1.5})).json()["run_id"]
               for _ in range(8)]
        # The first run starts at once on a (idle when it was invoked); followed through b,
        # live: every event, in order, once (b learns of them by NOTIFY).
        async with cb.stream("GET", f"/runs/{ids[0]}/stream") as stream:
            frames = [json.loads(line[5:]) async for line in stream.aiter_lines()
                      if line.startswith("data:")]
        finals = [await until_finished(cb, run_id) for run_id in ids]
    assert [f["status"] for f in finals] == ["completed"] * 8
    assert [f["result"] for f in finals] == ["slept"] * 8
    assert {_pid(f["owner"]) for f in finals} == {_pid_of(a), _pid_of(b)}  # both took runs
    assert _pid(finals[0]["owner"]) == _pid_of(a)
    assert [f["event_index"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["type"] == "run_end"
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as ca:
        for run_id in ids:  # one run_start each: no run was executed twice
            starts = (await ca.get(f"/runs/{run_id}/events?types=run_start")).json()["events"]
            assert len(starts) == 1


async def test_a_run_is_cancelled_through_another_worker(workers: list[Server]) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.url, timeout=60) as ca, \
            httpx.AsyncClient(base_url=b.url, timeout=60) as cb:
        run_id = (await ca.post("/workflows/nap", json={"seconds": 120})).json()["run_id"]
        for _ in range(600):
            if (await ca.get(f"/runs/{run_id}/events?types=shell_start")).json()["events"]:
                break
            await asyncio.sleep(0.05)
        owner = (await ca.get(f"/runs/{run_id}")).json()["owner"]
        other = cb if _pid(owner) == _pid_of(a) else ca
        r = await other.post(f"/runs/{run_id}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelling"
        final = await until_finished(cb, run_id)
    assert final["status"] == "cancelled" and final["reason"] == "cancelled by request"


async def test_runs_of_a_worker_that_stopped_beating_end_interrupted(
    postgres_url: str, project: Path
) -> None:
    # A worker on another host that held a run and then went silent past the lease.
    store = SqlStore(postgres_url)
    await store.open()
    lost = "far-away-host:4242:deadbeef"
    run = await store.create_run(Run(run_id=new_run_id("nap"), workflow="nap",
                                     status=RunStatus.running, owner=lost, created_at=utcnow()))
    await store.heartbeat(lost)
    async with store.engine.begin() as conn:  # its last heartbeat, a minute ago
        await conn.execute(text(
            "update workers set seen_at = now() - interval '60 seconds' where worker = :w"
        ), {"w": lost})
    alive = "another-host:7:cafe"
    kept = await store.create_run(Run(run_id=new_run_id("nap"), workflow="nap",
                                      status=RunStatus.running, owner=alive,
                                      created_at=utcnow()))
    await store.close()
    async with open_runner(Settings(project_dir=project, store_url=postgres_url)) as runner:
        runner.workers.lease = 30
        await runner.store.heartbeat(alive)
        assert await runner.workers.recover() == [run.run_id]
        assert await runner.workers.recover() == []  # ended once: a second look changes nothing
        final = await runner.store.get_run(run.run_id)
        assert final.status is RunStatus.interrupted
        assert final.reason == f"the process that ran it ({lost}) is gone"
        assert (await runner.store.get_run(kept.run_id)).status is RunStatus.running


async def test_a_retry_safe_run_of_a_silent_worker_is_run_again_by_a_live_one(
    postgres_url: str, project: Path, tmp_path: Path, write_workflow: WriteWorkflow,
) -> None:
    write_workflow("redo", "retry_interrupted = True\n" + NAP)
    # A live worker, already up: it takes the run back in a reaper pass (every lease).
    live = Server(project, tmp_path / "live.db", 2,
                  env={"PYFLUE_STORE_URL": postgres_url, "PYFLUE_WORKER_LEASE": "3"})
    live.start()
    store = SqlStore(postgres_url)
    await store.open()
    lost = "far-away-host:4242:deadbeef"
    run = await store.create_run(Run(
        run_id=new_run_id("redo"), workflow="redo", status=RunStatus.running, owner=lost,
        created_at=utcnow(), source="http", payload={"seconds": 0.2}))
    await store.heartbeat(lost)
    async with store.engine.begin() as conn:  # it went silent a minute ago
        await conn.execute(text(
            "update workers set seen_at = now() - interval '60 seconds' where worker = :w"
        ), {"w": lost})
    await store.close()
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            final = await until_finished(client, run.run_id, seconds=60)
            events = (await client.get(f"/runs/{run.run_id}/events")).json()["events"]
    finally:
        live.stop()
    assert final["status"] == "completed" and final["result"] == "slept"
    assert final["attempt"] == 2 and final["owner"] != lost
    assert [e["type"] for e in events][:2] == ["run_requeued", "run_start"]
    assert f"({lost}) is gone" in events[0]["data"]["reason"]
