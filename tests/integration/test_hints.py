"""An error's hint for the operator (a `pyflue` command to try) is stored apart from its
message: the CLI shows it (run, show, logs), HTTP and WebSocket answers leave it out unless the
server runs with PYFLUE_DEBUG=1. Over a real `pyflue serve` and the CLI as subprocesses."""

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

from tests.integration.conftest import REPO
from tests.integration.servers import Server

pytestmark = pytest.mark.docker

MISSING = "pyflue/does-not-exist:latest"
HINT = "build it with `pyflue images build` or pass another one with --image"
MESSAGE = f"image {MISSING} not found on the Docker engine"
STEPS = {"steps": ["true"]}


def serving(tmp: Path, debug: bool) -> Iterator[str]:
    env = {"PYFLUE_SANDBOX_IMAGE": MISSING, "PYFLUE_DEBUG": "1" if debug else "0"}
    server = Server(REPO, tmp / "server.db", concurrency=2, env=env)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[str]:
    yield from serving(tmp_path_factory.mktemp("hints"), debug=False)


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[str]:
    yield from serving(tmp_path_factory.mktemp("hints-debug"), debug=True)


def pyflue(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    return subprocess.run([sys.executable, "-m", "pyflue.cli", *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def failed_run(url: str) -> tuple[str, dict[str, Any]]:
    answer = httpx.post(f"{url}/workflows/shell_steps?wait=result", json=STEPS, timeout=120)
    assert answer.status_code == 500, answer.text
    body: dict[str, Any] = answer.json()
    return body["run_id"], body


def test_api_clients_get_no_cli_hint(server: str) -> None:
    run_id, answer = failed_run(server)
    assert answer["error"]["type"] == "image_not_found"
    assert answer["error"]["message"] == MESSAGE
    record = httpx.get(f"{server}/runs/{run_id}").json()
    assert record["status"] == "failed"
    assert record["error"]["message"] == MESSAGE and "hint" not in record["error"]
    listed = httpx.get(f"{server}/runs").json()["runs"]
    assert all("hint" not in run["error"] for run in listed if run["error"])
    events = httpx.get(f"{server}/runs/{run_id}/events").json()["events"]
    assert events[-1]["type"] == "run_end" and "hint" not in events[-1]["data"]["error"]
    streamed = httpx.get(f"{server}/runs/{run_id}/stream", timeout=60).text
    over_ws = pyflue("logs", run_id, "--server", server, "--follow", "--ws", "-f", "ndjson")
    for text in (json.dumps(answer), json.dumps(record), json.dumps(listed), json.dumps(events),
                 streamed, over_ws.stdout):
        assert "pyflue images build" not in text
    assert '"type": "run_end"' in over_ws.stdout.replace('"type":"run_end"', '"type": "run_end"')
    invoked = pyflue("invoke", "shell_steps", "--wait", "-p", json.dumps(STEPS),
                     "--server", server)
    assert invoked.returncode == 3 and MESSAGE in invoked.stderr
    assert "pyflue images build" not in invoked.stderr


def test_in_debug_mode_api_clients_get_the_hint(debug_server: str) -> None:
    run_id, answer = failed_run(debug_server)
    assert answer["error"]["message"] == f"{MESSAGE}; {HINT}"
    record = httpx.get(f"{debug_server}/runs/{run_id}").json()
    assert record["error"]["message"] == MESSAGE and record["error"]["hint"] == HINT
    events = httpx.get(f"{debug_server}/runs/{run_id}/events").json()["events"]
    assert events[-1]["data"]["error"]["hint"] == HINT


def test_the_cli_shows_the_hint(tmp_path: Path, docker_client: Any) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    done = pyflue("run", "shell_steps", "--image", MISSING, "-p", json.dumps(STEPS),
                  PYFLUE_STORE_URL=store)
    assert done.returncode == 3
    assert f"image_not_found: {MESSAGE}; {HINT}" in done.stderr
    as_json = pyflue("run", "shell_steps", "--image", MISSING, "-p", json.dumps(STEPS),
                     "--json", "-q", PYFLUE_STORE_URL=store)
    error = json.loads(as_json.stdout)["error"]
    assert error["message"] == MESSAGE and error["hint"] == HINT
    run_id = json.loads(as_json.stdout)["run_id"]
    shown = pyflue("show", run_id, PYFLUE_STORE_URL=store).stdout
    assert f"image_not_found: {MESSAGE}" in shown and f"hint      {HINT}" in shown
    logs = pyflue("logs", run_id, PYFLUE_STORE_URL=store).stdout
    assert f"image_not_found: {MESSAGE}; {HINT}" in logs
