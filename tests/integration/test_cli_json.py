"""The CLI's machine-readable output, as a program reads it: `pyflue run --events ndjson`
(stderr all JSON lines), `pyflue run --json`, and `--json` on doctor, images list and reap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker

STEPS_FAIL = json.dumps({"steps": "not a list"})


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    env.pop("PYFLUE_SERVER_URL", None)
    return env


def pyflue(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyflue.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_ndjson_events_of_a_completed_run_are_json_lines_only(env: dict[str, str]) -> None:
    done = pyflue("run", "hello", "--events", "ndjson", env=env)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stderr)
    assert lines[0]["type"] == "run_start" and lines[-1]["type"] == "run_end"
    assert lines[-1]["data"]["result"] == json.loads(done.stdout)


def test_ndjson_events_of_a_failed_run_end_with_an_error_line(env: dict[str, str]) -> None:
    done = pyflue("run", "shell_steps", "-p", STEPS_FAIL, "--events", "ndjson", env=env)
    assert done.returncode == 1 and done.stdout == ""
    lines = json_lines(done.stderr)
    error = lines[-1]
    assert error["type"] == "error" and error["status"] == "failed"
    assert error["run_id"] == lines[0]["run_id"] and error["error"]["type"] == "ValueError"
    assert lines[-2]["type"] == "run_end"


def test_run_json_prints_one_document_whatever_the_outcome(env: dict[str, str]) -> None:
    done = pyflue("run", "hello", "--json", "-q", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc) == {"run_id", "status", "result", "error"}
    assert doc["status"] == "completed" and doc["error"] is None
    assert doc["result"]["greeting"].startswith("hello, world")
    failed = pyflue("run", "shell_steps", "-p", STEPS_FAIL, "--json", "-q", env=env)
    assert failed.returncode == 1
    doc = json.loads(failed.stdout)
    assert doc["status"] == "failed" and doc["result"] is None
    assert doc["error"]["type"] == "ValueError" and "Traceback" in doc["error"]["details"]


def test_doctor_images_list_and_reap_print_json(env: dict[str, str]) -> None:
    doctor = pyflue("doctor", "--json", env=env)
    assert doctor.returncode == 0, doctor.stdout
    doc = json.loads(doctor.stdout)
    assert doc["ok"] is True
    assert {"docker engine", "run store"} <= {check["name"] for check in doc["checks"]}
    assert set(doc["checks"][0]) == {"name", "ok", "optional", "detail", "fix"}
    images = json.loads(pyflue("images", "list", "--json", env=env).stdout)
    assert {"tag": "pyflue/sandbox:latest", "present": True,
            "context": str(REPO / "images" / "sandbox")} in images
    reaped = pyflue("reap", "--json", env=env)
    assert reaped.returncode == 0 and json.loads(reaped.stdout) == {"reaped": []}


def test_doctor_json_says_not_ok_and_exits_1_without_an_engine(env: dict[str, str]) -> None:
    done = pyflue("doctor", "--json", env={**env, "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    engine = next(c for c in doc["checks"] if c["name"] == "docker engine")
    assert doc["ok"] is False and engine["ok"] is False and engine["fix"]


def test_invoke_follow_ndjson_writes_json_lines_only(env: dict[str, str], tmp_path: Path,
                                                     docker_client: Any) -> None:
    from tests.integration.servers import Server

    server = Server(REPO, tmp_path / "server.db", concurrency=2)
    server.start()
    try:
        done = pyflue("invoke", "hello", "--server", server.url, "--follow", "--events",
                      "ndjson", env=env)
        assert done.returncode == 0, done.stderr
        lines = json_lines(done.stderr)  # every line is JSON: no "run ..." text
        assert lines[0]["type"] == "run_start" and lines[-1]["type"] == "run_end"
        assert lines[-1]["data"]["result"] == json.loads(done.stdout)
        failed = pyflue("invoke", "shell_steps", "-p", STEPS_FAIL, "--server", server.url,
                        "--follow", "--events", "ndjson", env=env)
        assert failed.returncode == 1 and failed.stdout == ""
        lines = json_lines(failed.stderr)
        assert lines[-2]["type"] == "run_end"
        assert lines[-1]["type"] == "error" and lines[-1]["status"] == "failed"
        assert lines[-1]["run_id"] == lines[0]["run_id"]
        assert lines[-1]["error"]["type"] == "ValueError"
    finally:
        server.stop()
