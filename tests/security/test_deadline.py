"""A fork bomb is contained and its run ends at the run's deadline with the container gone."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.servers import Server

pytestmark = pytest.mark.docker

BOMB = """
    from pyflue import create_agent
    deadline_seconds = 4
    agent = create_agent(lambda ctx: {})
    async def run(ctx):
        h = await ctx.init(agent)
        await h.shell(":(){ :|:& };:; sleep 600", timeout=600)
    """


async def test_a_fork_bomb_ends_at_the_run_deadline_with_its_container_gone(
    tmp_path: Path, docker_client: Any
) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "bomb.py").write_text(textwrap.dedent(BOMB))
    srv = Server(tmp_path, tmp_path / "bomb.db", concurrency=2)
    srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
            started = time.monotonic()
            r = await client.post("/workflows/bomb?wait=result", json={})
            took = time.monotonic() - started
            body = r.json()
            assert r.status_code == 504 and body["status"] == "timed_out"
            assert "deadline of 4 s" in body["error"]["message"]
            assert took < 4 + 30  # the deadline, plus killing and removing the container
            ends = (await client.get(f"/runs/{body['run_id']}/events",
                                     params={"types": "container_removed,run_end"})).json()
            assert [e["type"] for e in ends["events"]] == ["container_removed", "run_end"]
            run = (await client.get(f"/runs/{body['run_id']}")).json()
            assert ends["events"][-1]["event_index"] == run["event_count"]  # nothing after it
            for _ in range(300):  # a warm container's removal may end after the run's end
                if run["container_removed_at"] is not None:
                    break
                await asyncio.sleep(0.1)
                run = (await client.get(f"/runs/{body['run_id']}")).json()
        left = docker_client.api.containers(all=True, filters={"id": run["container_id"]})
        assert run["container_id"] and left == []
    finally:
        srv.stop()
    await asyncio.sleep(0)
