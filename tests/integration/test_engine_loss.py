"""When the Docker engine goes away: a `pyflue serve` over an engine of the test's own, killed
with SIGKILL mid-run and started again on the same roots.

The running run fails ``engine_unavailable``; meanwhile ``/health`` answers 503 with a reason
and a new run stays queued; once the engine is back, ``/health`` is 200 again and the queued run
completes by itself. A run that waits longer than PYFLUE_ENGINE_WAIT fails with a reason naming
the engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyflue.client import PyFlueClient
from pyflue.sandbox.docker.lifecycle import LABEL_RUN
from pyflue.settings import DEFAULT_IMAGE
from tests.conftest import WriteWorkflow
from tests.integration.private_engine import PrivateEngine, missing
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


@pytest.fixture(scope="session")
def private_engine(docker_client: Any) -> Iterator[PrivateEngine]:
    """One engine of the tests' own for the session, with the sandbox image loaded."""
    if reason := missing():
        pytest.skip(f"cannot start a private Docker engine: {reason}")
    host_bridge = Path("/sys/class/net/docker0").exists()  # the shared engine's
    engine = PrivateEngine()
    try:
        engine.start()
        engine.load(DEFAULT_IMAGE)
        yield engine
    finally:
        engine.close()
    # The private engine keeps to its own network namespace: the shared one's bridge stays.
    assert Path("/sys/class/net/docker0").exists() or not host_bridge


@pytest.fixture
def engine(private_engine: PrivateEngine) -> PrivateEngine:
    """The private engine, answering at the start of the test (started again if an earlier
    test left it killed)."""
    if not private_engine.answers():
        private_engine.start()
    return private_engine


def _server(project: Path, tmp_path: Path, engine: PrivateEngine, write_workflow: WriteWorkflow,
            **env: str) -> Server:
    write_workflow("nap", NAP)
    return Server(project, tmp_path / "engine.db", concurrency=2,
                  env={"DOCKER_HOST": engine.host, **env})


async def _until(what: str, check: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {seconds:g} s")


async def test_an_engine_killed_mid_run_fails_the_run_holds_the_queue_and_comes_back(
    project: Path, tmp_path: Path, engine: PrivateEngine, write_workflow: WriteWorkflow,
) -> None:
    srv = _server(project, tmp_path, engine, write_workflow)
    srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            busy = (await client.post("/workflows/nap", json={"payload": {"seconds": 60}})
                    ).json()["run_id"]

            async def sleeping() -> bool:
                events = (await client.get(f"/runs/{busy}/events?types=shell_start")).json()
                return bool(events["events"])

            await _until("the run's shell command", sleeping)
            labelled = {"label": f"{LABEL_RUN}={busy}"}
            assert len(engine.client().containers.list(filters=labelled)) == 1
            engine.kill()

            failed = await until_finished(client, busy, seconds=30)
            assert failed["status"] == "failed", failed
            assert failed["error"]["type"] == "engine_unavailable", failed["error"]

            async def unhealthy() -> httpx.Response | None:
                answer = await client.get("/health")
                return answer if answer.status_code == 503 else None

            health = (await _until("/health answering 503", unhealthy)).json()
            assert health["ok"] is False and health["engine"]["up"] is False
            assert "Docker engine" in health["reason"] and "PYFLUE_ENGINE_WAIT" in health["reason"]
            assert engine.host not in health["reason"]  # no token here: the operator's detail
            assert {"version", "running", "max_concurrency"} <= set(health)
            async with PyFlueClient(srv.url) as sdk:  # the client reads a 503 as the health
                assert (await sdk.health())["ok"] is False

            waiting = (await client.post("/workflows/nap", json={"payload": {"seconds": 0}}))
            assert waiting.status_code == 202
            queued = waiting.json()["run_id"]
            await asyncio.sleep(3)  # three admission looks, and more pings
            assert (await client.get(f"/runs/{queued}")).json()["status"] == "queued"

            engine.start()

            async def healthy() -> dict[str, Any] | None:
                answer = await client.get("/health")
                return answer.json() if answer.status_code == 200 else None

            health = await _until("/health answering 200", healthy)
            assert health["ok"] is True and health["reason"] is None
            assert health["engine"]["up"] is True
            done = await until_finished(client, queued, seconds=30)
            assert done["status"] == "completed" and done["result"] == "slept", done
    finally:
        srv.stop()


async def test_a_run_queued_longer_than_the_engine_wait_fails_naming_the_engine(
    project: Path, tmp_path: Path, engine: PrivateEngine, write_workflow: WriteWorkflow,
) -> None:
    srv = _server(project, tmp_path, engine, write_workflow, PYFLUE_ENGINE_WAIT="2")
    srv.start()
    try:
        engine.kill()  # nothing runs: the watch's own ping notices
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            async def unhealthy() -> bool:
                return (await client.get("/health")).status_code == 503

            await _until("/health answering 503", unhealthy)
            answer = await client.post("/workflows/nap", json={"payload": {"seconds": 0}})
            assert answer.status_code == 202
            run_id = answer.json()["run_id"]
            assert (await client.get(f"/runs/{run_id}")).json()["status"] == "queued"
            run = await until_finished(client, run_id, seconds=20)
            assert run["status"] == "failed", run
            assert run["error"]["type"] == "engine_unavailable"
            message = run["error"]["message"]
            assert "Docker engine" in message and engine.host in message, message
            assert "PYFLUE_ENGINE_WAIT" in message and "pyflue doctor" in message, message
            events = (await client.get(f"/runs/{run['run_id']}/events")).json()["events"]
            assert [e["type"] for e in events] == ["run_end"]
            assert events[0]["data"]["error"]["type"] == "engine_unavailable"
    finally:
        srv.stop()


async def test_a_run_invoked_on_a_worker_without_an_engine_runs_on_one_with_an_engine(
    project: Path, tmp_path: Path, engine: PrivateEngine, write_workflow: WriteWorkflow,
    postgres_url: str,
) -> None:
    """Two workers on one PostgreSQL store: one on the private engine (killed), one on the
    shared engine. A run invoked on the first stays queued there and the second runs it."""
    write_workflow("nap", NAP)
    shared = {"PYFLUE_STORE_URL": postgres_url}
    lost = Server(project, tmp_path / "lost.db", concurrency=2,
                  env={**shared, "DOCKER_HOST": engine.host})
    fine = Server(project, tmp_path / "fine.db", concurrency=2, env=shared)
    lost.start()
    fine.start()
    try:
        engine.kill()
        async with httpx.AsyncClient(base_url=lost.url, timeout=30) as client:
            async def unhealthy() -> bool:
                return (await client.get("/health")).status_code == 503

            await _until("the lost worker's /health answering 503", unhealthy)
            answer = await client.post("/workflows/nap?wait=result",
                                       json={"payload": {"seconds": 0}})
            assert answer.status_code == 200 and answer.json()["result"] == "slept"
            run = (await client.get(f"/runs/{answer.json()['run_id']}")).json()
            assert run["owner"].split(":")[1] == str(fine.proc.pid if fine.proc else None)
        async with httpx.AsyncClient(base_url=fine.url, timeout=30) as client:
            assert (await client.get("/health")).json()["ok"] is True
    finally:
        lost.stop()
        fine.stop()
