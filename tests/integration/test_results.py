"""A run's result on every surface: run_end carries it (SSE, WebSocket, stored), and a result
holding NaN or infinities is the same valid JSON everywhere (CLI, HTTP, WebSocket)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import WriteWorkflow
from tests.integration.servers import Server

pytestmark = pytest.mark.docker

WORKFLOWS = {
    "answer": """
        async def run(ctx):
            return {"answer": 42, "echo": ctx.payload}
        """,
    "huge": """
        async def run(ctx):
            return {"text": "x" * 70000}
        """,
    "nonfinite": """
        async def run(ctx):
            return {"x": float("nan"), "y": float("inf"), "z": [float("-inf"), 1.5]}
        """,
}
NONFINITE = {"x": None, "y": None, "z": [None, 1.5]}


@pytest.fixture(autouse=True)
def _workflows(write_workflow: WriteWorkflow) -> None:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)


@pytest.fixture
def server(project: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(project, tmp_path / "results.db", concurrency=4)
    srv.start()
    yield srv
    srv.stop()


def pyflue(*args: str, project: Path, store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{store}"}
    env.pop("PYFLUE_SERVER_URL", None)
    return subprocess.run([sys.executable, "-m", "pyflue.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


async def sse_events(server: Server, name: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one invocation, as an SSE client reads them off the socket."""
    events = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http, http.stream(
        "POST", f"/workflows/{name}", json=payload, headers={"Accept": "text/event-stream"}
    ) as answer:
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


async def ws_frames(server: Server, name: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    url = server.url.replace("http://", "ws://") + f"/workflows/{name}"
    frames = []
    async with websockets.connect(url) as sock:
        await sock.send(json.dumps({"payload": payload}))
        try:
            while True:
                frames.append(json.loads(await sock.recv()))
        except ConnectionClosed:
            return frames


async def test_an_sse_client_reads_the_result_in_run_end(server: Server) -> None:
    events = await sse_events(server, "answer", {"q": 1})
    end = events[-1]
    assert end["type"] == "run_end" and end["data"]["status"] == "completed"
    assert end["data"]["result"] == {"answer": 42, "echo": {"q": 1}}


async def test_a_websocket_client_reads_the_result_in_run_end_and_the_stored_one_agrees(
    server: Server,
) -> None:
    frames = await ws_frames(server, "answer", {"q": 2})
    end, last = frames[-2], frames[-1]
    assert end["type"] == "run_end" and end["data"]["result"] == last["result"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        stored = (await http.get(f"/runs/{last['run_id']}/events?types=run_end")).json()
    assert stored["events"][0]["data"]["result"] == {"answer": 42, "echo": {"q": 2}}


async def test_a_result_over_64_kib_is_a_pointer_to_the_run_record(server: Server) -> None:
    events = await sse_events(server, "huge", {})
    data, run_id = events[-1]["data"], events[-1]["run_id"]
    assert "result" not in data
    assert data["result_truncated"] is True and data["run_path"] == f"/runs/{run_id}"
    async with httpx.AsyncClient(base_url=server.url) as http:
        record = (await http.get(data["run_path"])).json()
    assert record["result"] == {"text": "x" * 70000}


async def test_a_failed_run_end_has_no_result_key(server: Server, write_workflow: WriteWorkflow
                                                  ) -> None:
    write_workflow("boom", "async def run(ctx):\n    raise RuntimeError('no')\n")
    data = (await sse_events(server, "boom", {}))[-1]["data"]
    assert data["status"] == "failed" and "result" not in data


async def test_nan_and_infinity_are_null_over_http_and_websocket(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        answer = await http.post("/workflows/nonfinite?wait=result", json={})
        assert answer.status_code == 200, answer.text
        body = json.loads(answer.text)
        assert body["status"] == "completed" and body["result"] == NONFINITE
        record = json.loads((await http.get(f"/runs/{body['run_id']}")).text)
    assert record["status"] == "completed" and record["result"] == NONFINITE
    frames = await ws_frames(server, "nonfinite", {})
    assert frames[-1] == {"type": "result", "run_id": frames[-1]["run_id"], "result": NONFINITE}
    assert frames[-2]["data"]["result"] == NONFINITE  # run_end
    sse = await sse_events(server, "nonfinite", {})
    assert sse[-1]["data"]["result"] == NONFINITE


def test_nan_and_infinity_are_null_from_pyflue_run_and_invoke(
    server: Server, project: Path, tmp_path: Path,
) -> None:
    local = pyflue("run", "nonfinite", "-q", project=project, store=tmp_path / "local.db")
    assert local.returncode == 0, local.stderr
    assert json.loads(local.stdout) == NONFINITE
    remote = pyflue("invoke", "nonfinite", "--wait", "--server", server.url, project=project,
                    store=tmp_path / "local.db")
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == NONFINITE
    assert "completed" in remote.stderr
