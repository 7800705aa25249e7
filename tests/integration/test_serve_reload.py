"""A running `pyflue serve` picks up edited workflow files; `--reload` restarts on any change."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import WriteWorkflow
from tests.integration.servers import Server

pytestmark = pytest.mark.docker


def _invoke(server: Server, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/workflows/{name}?wait=result", json={}, timeout=60)


def _until(server: Server, name: str, expected: Any, seconds: float = 60) -> Any:
    """The result once it is ``expected`` (the reloaded server may need a moment to come back)."""
    deadline, seen = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        try:
            seen = _invoke(server, name).json().get("result")
        except httpx.HTTPError:
            seen = None
        if seen == expected:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{name} still answers {seen!r}, not {expected!r}")


@pytest.fixture
def server(project: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(project, tmp_path / "edits.db", concurrency=2)
    srv.start()
    yield srv
    srv.stop()


def test_an_edited_workflow_runs_its_new_code_and_a_broken_one_reports_the_import_error(
    server: Server, write_workflow: WriteWorkflow
) -> None:
    write_workflow("greet", "def run(ctx):\n    return 'v1'\n")
    assert _invoke(server, "greet").json()["result"] == "v1"
    write_workflow("greet", "def run(ctx):\n    return 'v2'\n")
    assert _invoke(server, "greet").json()["result"] == "v2"
    write_workflow("greet", "def run(ctx):\n    return (\n")
    broken = _invoke(server, "greet")
    assert broken.status_code >= 400
    error = broken.json()["error"]
    assert "failed to import" in error["message"] and "SyntaxError" in error["message"]
    write_workflow("greet", "def run(ctx):\n    return 'v3'\n")
    assert _invoke(server, "greet").json()["result"] == "v3"


def test_a_workflow_that_fails_to_import_is_reported_without_the_servers_paths(
    server: Server, project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("greet", "def run(ctx):\n    return (\n")
    write_workflow("norun", "x = 1\n")
    error = _invoke(server, "greet").json()["error"]
    assert error["type"] == "workflow_load_error" and error["details"] is None
    assert error["message"].startswith(
        "workflow 'greet' failed to import from workflows/greet.py: SyntaxError: ")
    listed = {w["name"]: w["error"] for w in httpx.get(f"{server.url}/workflows").json()["workflows"]}
    assert listed["greet"] == error["message"]
    assert listed["norun"] == ("workflow file workflows/norun.py does not define a run(ctx) "
                               "function; add `async def run(ctx): ...`")
    assert str(project) not in str(listed)


def test_serve_reload_restarts_when_a_helper_module_changes(
    project: Path, tmp_path: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("_helper", "VALUE = 'old'\n")
    write_workflow("uses", "import _helper\ndef run(ctx):\n    return _helper.VALUE\n")
    srv = Server(project, tmp_path / "reload.db", concurrency=2, args=("--reload",))
    srv.start()
    try:
        assert _invoke(srv, "uses").json()["result"] == "old"
        write_workflow("_helper", "VALUE = 'new'\n")
        assert _until(srv, "uses", "new") == "new"
    finally:
        srv.stop()
