"""Messages aimed at their reader: API clients get no CLI commands, server paths or tracebacks
(unless the server runs with PYFLUE_DEBUG=1); the CLI names its own options."""

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

from pyflue.client import PyFlueClient
from tests.integration.conftest import REPO
from tests.integration.test_client import TOKEN, live_server, started_shell

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("plain")) as url:
        yield url


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("debug"), debug=True) as url:
        yield url


def pyflue(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")}
    return subprocess.run([sys.executable, "-m", "pyflue.cli", *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_an_unknown_run_answers_without_cli_commands(server: str) -> None:
    body = httpx.get(f"{server}/runs/workflow:hello:NOPE").json()
    assert body["error"]["message"] == "no run 'workflow:hello:NOPE'"


def test_an_unknown_workflow_answers_without_the_servers_paths(server: str) -> None:
    body = httpx.post(f"{server}/workflows/nope", json={}).json()
    message = body["error"]["message"]
    assert message.startswith("unknown workflow 'nope'; available: ")
    assert "looked in" not in message and str(REPO) not in message


def test_in_debug_mode_the_answer_keeps_the_servers_paths(debug_server: str) -> None:
    body = httpx.post(f"{debug_server}/workflows/nope", json={}).json()
    assert f"looked in {REPO / 'workflows'}" in body["error"]["message"]


def failed_answer(url: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/workflows/shell_steps?wait=result", json={"steps": "bad"},
                        timeout=120)
    assert answer.status_code == 500 and answer.json()["status"] == "failed"
    error: dict[str, Any] = answer.json()["error"]
    return error


def test_a_failed_runs_answer_has_no_traceback(server: str) -> None:
    error = failed_answer(server)
    assert error["type"] == "ValueError" and error["details"] is None


def test_in_debug_mode_a_failed_runs_answer_has_its_traceback(debug_server: str) -> None:
    assert "Traceback (most recent call last)" in failed_answer(debug_server)["details"]


def test_the_cli_names_its_token_option_when_the_server_refuses(tmp_path: Path) -> None:
    with live_server(tmp_path, token=TOKEN) as url:
        done = pyflue("runs", "--server", url, PYFLUE_API_TOKEN="wrong")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: the server refused the API token (missing or wrong): pass --token TOKEN or "
        "set PYFLUE_API_TOKEN to the server's token"]


def test_a_payload_of_the_wrong_type_is_named_as_json_names_it(server: str) -> None:
    for raw, name in (("null", "null"), ('"text"', "string"), ("[1]", "array")):
        body = httpx.post(f"{server}/workflows/hello", content=raw,
                          headers={"Content-Type": "application/json"}).json()
        assert body["error"]["message"].startswith(f"payload must be a JSON object, not {name};")
    done = pyflue("invoke", "hello", "--payload", "null", "--server", server)
    assert "payload must be a JSON object, not null" in done.stderr


def test_runs_with_a_filter_that_matches_nothing_say_so(tmp_path: Path) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    done = pyflue("run", "hello", "-q", PYFLUE_STORE_URL=store)
    assert done.returncode == 0, done.stderr
    listed = pyflue("runs", "--status", "failed", PYFLUE_STORE_URL=store)
    assert listed.stdout.startswith("no runs match") and "no runs yet" not in listed.stdout


def test_an_unreachable_postgresql_store_does_not_speak_of_paths() -> None:
    done = pyflue("runs", PYFLUE_STORE_URL="postgresql+asyncpg://pyflue:hunter2@127.0.0.1:1/x")
    assert done.returncode == 3, done.stderr
    line = done.stderr.strip()
    assert "writable" not in line and "hunter2" not in line
    assert "check the database server is running and reachable" in line


async def test_a_cancelled_commands_end_shows_no_missing_exit_code(server: str) -> None:
    async with PyFlueClient(server) as client:
        started = await client.workflows.invoke(
            "shell_steps", {"steps": ["sleep 120"], "timeout": 300}, wait=False)
        run_id = started["run_id"]
        await started_shell(client, run_id)
        await client.runs.cancel(run_id)
        await client.runs.wait(run_id)
    done = pyflue("logs", run_id, "--server", server)
    assert "exit None" not in done.stdout
    assert "⏎ cut short (cancelled)" in done.stdout, done.stdout
    ends = [json.loads(line) for line in pyflue("logs", run_id, "--server", server, "-f",
                                                "ndjson").stdout.splitlines()]
    assert [e["data"]["exit_code"] for e in ends if e["type"] == "shell_end"] == [None]
