"""The control plane as a real server process: limits, cancel races, deadlines, SSE resume,
and recovery after SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import WriteWorkflow
from tests.integration.servers import COLD, Server, until_finished

pytestmark = pytest.mark.docker

WORKFLOWS = {
    "nap": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            out = await h.shell(f"sleep {ctx.payload.get('seconds', 0.3)}; echo slept")
            return out["stdout"].strip()
        """,
    "quick": """
        async def run(ctx):
            ctx.log.info("quick", n=ctx.payload.get("n"))
            return {"n": ctx.payload.get("n")}
        """,
    "redo": """
        from pathlib import Path
        from pyflue import create_agent
        retry_interrupted = 1
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            first = Path(ctx.payload["marker"])  # on the host: the first attempt hangs
            seconds = 120 if not first.exists() else 0.1
            first.touch()
            return (await h.shell(f"sleep {seconds}; echo done"))["stdout"].strip()
        """,
    "request": """
        async def run(ctx):
            return {"json": await ctx.req.json(), "body": (await ctx.req.body()).decode(),
                    "note": ctx.req.headers.get("x-note"), "path": ctx.req.url.path}
        """,
    "late": """
        from pyflue import create_agent
        deadline_seconds = 2
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            await h.shell("sleep 120")
        """,
}


@pytest.fixture(autouse=True)
def _workflows(write_workflow: WriteWorkflow) -> None:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)


@pytest.fixture
def server(project: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(project, tmp_path / "store.db", concurrency=4, env=COLD)
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


def _containers(docker_client: Any, run_ids: set[str]) -> list[dict[str, Any]]:
    """Labelled containers of these runs (one list call: no per-container inspect to race)."""
    found = docker_client.api.containers(all=True, filters={"label": "dev.pyflue.run-id"})
    return [c for c in found if c["Labels"].get("dev.pyflue.run-id") in run_ids]


async def test_fifty_invocations_with_a_limit_of_four_all_complete(
    server: Server, docker_client: Any
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        accepted = await asyncio.gather(*(
            client.post("/workflows/nap", json={"seconds": 0.3}) for _ in range(50)))
        ids = {r.json()["run_id"] for r in accepted}
        assert len(ids) == 50 and all(r.status_code == 202 for r in accepted)
        most = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            running = [c for c in _containers(docker_client, ids) if c["State"] == "running"]
            most = max(most, len(running))
            page = (await client.get("/runs?workflow=nap&limit=100")).json()["runs"]
            if all(r["status"] == "completed" for r in page if r["run_id"] in ids) and len(
                    [r for r in page if r["run_id"] in ids]) == 50:
                break
            await asyncio.sleep(0.05)
        assert 1 <= most <= 4
        page = (await client.get("/runs?workflow=nap&limit=100")).json()["runs"]
        assert sorted(r["status"] for r in page) == ["completed"] * 50
        assert all(r["result"] == "slept" for r in page)
    assert _containers(docker_client, ids) == []


async def test_cancel_races_all_end_cancelled_with_no_container(
    project: Path, tmp_path: Path, docker_client: Any
) -> None:
    srv = Server(project, tmp_path / "cancel.db", concurrency=1, env=COLD)
    srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            busy = (await client.post("/workflows/nap", json={"seconds": 60})).json()["run_id"]
            queued = (await client.post("/workflows/nap", json={"seconds": 60})).json()["run_id"]
            r = await client.post(f"/runs/{queued}/cancel")
            assert r.status_code == 202 and r.json()["status"] == "cancelled"
            assert (await client.get(f"/runs/{queued}")).json()["status"] == "cancelled"
            # during a shell command, twice in a row
            for _ in range(300):
                events = (await client.get(f"/runs/{busy}/events?types=shell_start")).json()
                if events["events"]:
                    break
                await asyncio.sleep(0.05)
            first, second = await asyncio.gather(client.post(f"/runs/{busy}/cancel"),
                                                 client.post(f"/runs/{busy}/cancel"))
            assert {first.status_code, second.status_code} <= {202, 409}
            done = await until_finished(client, busy)
            assert done["status"] == "cancelled"
            # right after submission: before its container exists
            early = (await client.post("/workflows/nap", json={"seconds": 60})).json()["run_id"]
            assert (await client.post(f"/runs/{early}/cancel")).status_code == 202
            assert (await until_finished(client, early))["status"] == "cancelled"
            # a finished run cannot be cancelled
            late = await client.post(f"/runs/{busy}/cancel")
            assert late.status_code == 409 and "already finished" in late.json()["error"]["message"]
            ids = {busy, queued, early}
            for run_id in ids:
                events = (await client.get(f"/runs/{run_id}/events")).json()["events"]
                assert events[-1]["type"] == "run_end"
                assert events[-1]["data"]["status"] == "cancelled"
        assert _containers(docker_client, ids) == []
    finally:
        srv.stop()


async def test_a_run_past_its_deadline_is_timed_out_and_its_container_killed(
    server: Server, docker_client: Any
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        r = await client.post("/workflows/late?wait=result", json={})
        assert r.status_code == 504
        body = r.json()
        assert body["status"] == "timed_out" and "deadline of 2 s" in body["error"]["message"]
        run = (await client.get(f"/runs/{body['run_id']}")).json()
        assert run["status"] == "timed_out" and 2000 <= run["duration_ms"] < 20000
    assert _containers(docker_client, {body["run_id"]}) == []


async def test_sse_resume_with_last_event_id_has_no_gaps_or_duplicates(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        run_id = (await client.post("/workflows/nap", json={"seconds": 1})).json()["run_id"]
        seen: list[int] = []
        async with client.stream("GET", f"/runs/{run_id}/stream") as r:
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seen.append(int(line[4:]))
                    if len(seen) == 3:
                        break  # drop the connection mid-run
        async with client.stream("GET", f"/runs/{run_id}/stream",
                                 headers={"Last-Event-ID": str(seen[-1])}) as r:
            kinds = []
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seen.append(int(line[4:]))
                if line.startswith("event: "):
                    kinds.append(line[7:])
        assert seen == list(range(1, len(seen) + 1)) and kinds[-1] == "run_end"
        total = (await client.get(f"/runs/{run_id}")).json()["event_count"]
        assert len(seen) == total


async def test_a_workflow_reads_its_request_body_json_and_headers_after_the_answer(
    server: Server,
) -> None:
    body = b'{"payload": {"k": [1, 2]}}'
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        r = await client.post("/workflows/request", content=body,
                              headers={"Content-Type": "application/json", "X-Note": "from-ci"})
        assert r.status_code == 202  # the workflow reads the request after this answer
        run = await until_finished(client, r.json()["run_id"])
    assert run["status"] == "completed" and run["payload"] == {"k": [1, 2]}
    assert run["result"] == {"json": {"payload": {"k": [1, 2]}}, "body": body.decode(),
                             "note": "from-ci", "path": "/workflows/request"}


async def test_a_sigkilled_server_recovers_running_and_queued_runs(
    project: Path, tmp_path: Path, docker_client: Any
) -> None:
    store = tmp_path / "crash.db"
    srv = Server(project, store, concurrency=2, env=COLD)
    srv.start()
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
        long_ids = [(await client.post("/workflows/nap", json={"seconds": 120})).json()["run_id"]
                    for _ in range(2)]
        quick_ids = [(await client.post("/workflows/quick", json={"n": i})).json()["run_id"]
                     for i in range(3)]
        for _ in range(300):
            if len(_containers(docker_client, set(long_ids))) == 2:
                break
            await asyncio.sleep(0.05)
    assert len(_containers(docker_client, set(long_ids))) == 2
    srv.stop(signal.SIGKILL)

    again = Server(project, store, concurrency=2, env=COLD)
    again.start()
    try:
        async with httpx.AsyncClient(base_url=again.url, timeout=60) as client:
            for run_id in long_ids:
                run = await until_finished(client, run_id)
                assert run["status"] == "interrupted" and "is gone" in run["reason"]
                events = (await client.get(f"/runs/{run_id}/events")).json()["events"]
                assert events[-1]["type"] == "run_end"
            for i, run_id in enumerate(quick_ids):
                run = await until_finished(client, run_id)
                assert run["status"] == "completed" and run["result"] == {"n": i}
        assert _containers(docker_client, set(long_ids)) == []
    finally:
        again.stop()
    assert json.loads(json.dumps(long_ids))  # every acknowledged id was found above


async def test_a_running_server_reaps_containers_its_runs_left_behind(
    project: Path, tmp_path: Path, docker_client: Any
) -> None:
    # As a container whose removal failed, or one a `pyflue run` left when it was killed: it
    # belongs to this store (its scope label) but to no running run. The server removes it
    # within a reaper pass (every PYFLUE_WORKER_LEASE seconds) without being restarted.
    from pyflue.sandbox.base import SandboxSpec
    from pyflue.sandbox.docker.lifecycle import container_config, resource_name
    from pyflue.settings import Settings
    from pyflue.wiring import store_scope

    store = tmp_path / "reaped.db"
    spec = SandboxSpec(run_id="workflow:ghost:01TESTLIVEREAPER", workflow="ghost",
                       image="pyflue/sandbox:latest")
    srv = Server(project, store, concurrency=2, env={**COLD, "PYFLUE_WORKER_LEASE": "3"})
    srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            # A run in progress keeps its container through every pass.
            busy = (await client.post("/workflows/nap", json={"seconds": 10})).json()["run_id"]
            for _ in range(300):
                if _containers(docker_client, {busy}):
                    break
                await asyncio.sleep(0.1)
            scope = store_scope(Settings(store_url=f"sqlite+aiosqlite:///{store}"))
            docker_client.containers.create(**container_config(
                spec, resource_name(spec.run_id), scope)).start()
            ghost_gone = False
            for _ in range(300):
                left = {c["Labels"]["dev.pyflue.run-id"]
                        for c in _containers(docker_client, {spec.run_id, busy})}
                if spec.run_id not in left:
                    ghost_gone = True
                    break
                await asyncio.sleep(0.1)
            assert ghost_gone, "the orphan container outlived 30 s of reaper passes"
            assert (await client.get(f"/runs/{busy}")).json()["status"] == "running"
            assert busy in left  # still running and still there
            assert (await until_finished(client, busy))["status"] == "completed"
    finally:
        srv.stop()
        for c in _containers(docker_client, {spec.run_id}):
            docker_client.api.remove_container(c["Id"], force=True)


async def test_a_retry_safe_run_survives_a_server_stop_and_a_crash(
    project: Path, tmp_path: Path, docker_client: Any
) -> None:
    store = tmp_path / "retry.db"

    async def started(srv: Server, marker: str) -> str:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            run_id: str = (await client.post("/workflows/redo", json={
                "marker": str(tmp_path / marker)})).json()["run_id"]
        for _ in range(300):
            if (tmp_path / marker).exists() and _containers(docker_client, {run_id}):
                return run_id
            await asyncio.sleep(0.05)
        raise AssertionError("the first attempt did not start")

    async def finished_on(srv: Server, run_id: str, reason: str) -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            run = await until_finished(client, run_id)
            assert run["status"] == "completed" and run["result"] == "done"
            assert run["attempt"] == 2 and run["reason"] is None
            events = (await client.get(f"/runs/{run_id}/events")).json()["events"]
        types = [e["type"] for e in events]
        assert types.count("run_start") == 2 and types.count("run_end") == 1
        requeued = events[types.index("run_requeued")]
        assert requeued["data"]["attempt"] == 2 and reason in requeued["data"]["reason"]
        assert types.index("run_requeued") < len(types) - types[::-1].index("run_start") - 1
        assert [e["event_index"] for e in events] == list(range(1, len(events) + 1))
        assert _containers(docker_client, {run_id}) == []

    # A stop (a deploy): the attempt is cut short, its container removed, the run queued.
    first = Server(project, store, concurrency=2, env=COLD)
    first.start()
    stopped = await started(first, "stopped")
    first.stop()
    assert _containers(docker_client, {stopped}) == []
    second = Server(project, store, concurrency=2, env=COLD)
    second.start()
    try:
        await finished_on(second, stopped, "the server stopped")
        # A crash: the attempt's container is left running; the next start takes the run
        # back, and the second attempt replaces that container.
        crashed = await started(second, "crashed")
    finally:
        second.stop(signal.SIGKILL)
    assert _containers(docker_client, {crashed})
    third = Server(project, store, concurrency=2, env=COLD)
    third.start()
    try:
        await finished_on(third, crashed, "is gone")
    finally:
        third.stop()
