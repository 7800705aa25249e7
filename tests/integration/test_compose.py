"""compose.yaml for real: PostgreSQL and two worker containers on this engine, driven over
HTTP as a user would (./scripts/compose up, then down)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import REPO
from tests.integration.servers import free_port, until_finished

pytestmark = [pytest.mark.docker, pytest.mark.compose]


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[str, str, dict[str, str]]]:
    ports = free_port(), free_port()
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "pyflue-test", "PYFLUE_PORT_A": str(ports[0]),
           "PYFLUE_PORT_B": str(ports[1]), "PYFLUE_API_TOKEN": "compose-test-token",
           "PYFLUE_MAX_CONCURRENCY": "2"}

    def compose(*args: str) -> None:
        subprocess.run([str(REPO / "scripts" / "compose"), *args], cwd=REPO, env=env,
                       check=True, timeout=900)

    compose("down", "-v")  # whatever an earlier, interrupted test left
    try:
        compose()
        yield (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}",
               {"Authorization": "Bearer compose-test-token"})
    finally:
        subprocess.run([str(REPO / "scripts" / "compose"), "logs", "--tail", "50"], cwd=REPO,
                       env=env, timeout=60)
        compose("down", "-v")


@pytest.mark.timeout(1200)  # the first start builds the worker and PostgreSQL images
async def test_the_compose_fleet_runs_follows_and_cancels_across_workers(
    fleet: tuple[str, str, dict[str, str]], docker_client: Any
) -> None:
    url_a, url_b, auth = fleet
    async with httpx.AsyncClient(base_url=url_a, headers=auth, timeout=120) as a, \
            httpx.AsyncClient(base_url=url_b, headers=auth, timeout=120) as b:
        assert (await a.get("/runs")).status_code == 200
        async with httpx.AsyncClient(base_url=url_a) as anonymous:
            assert (await anonymous.get("/runs")).status_code == 401
        done = await a.post("/workflows/shell_steps?wait=result",
                            json={"steps": ["echo from-the-fleet", "id -u"]})
        assert done.status_code == 200, done.text
        run_id = done.json()["run_id"]
        seen = (await b.get(f"/runs/{run_id}")).json()  # the other worker knows it
        assert seen["status"] == "completed" and seen["owner"]
        events = (await b.get(f"/runs/{run_id}/events?types=shell_output")).json()["events"]
        assert any("from-the-fleet" in e["data"]["text"] for e in events)

        long = (await a.post("/workflows/shell_steps",
                             json={"steps": ["sleep 300"]})).json()["run_id"]
        for _ in range(600):
            if (await a.get(f"/runs/{long}/events?types=shell_start")).json()["events"]:
                break
            await asyncio.sleep(0.1)
        # Invoked on an idle worker a run starts there, so this cancel goes through the other.
        assert (await b.post(f"/runs/{long}/cancel")).status_code == 202
        final = await until_finished(b, long)
        assert final["status"] == "cancelled" and final["container_id"]
        for _ in range(300):  # a warm container's removal may end just after the run's end
            if final["container_removed_at"] is not None:
                break
            await asyncio.sleep(0.1)
            final = (await b.get(f"/runs/{long}")).json()
    leftover = docker_client.api.containers(all=True, filters={"id": final["container_id"]})
    assert leftover == []
