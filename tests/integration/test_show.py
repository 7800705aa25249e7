"""`pyflue show`, and run ids given by a prefix (show, logs, cancel), as a user runs them: the
CLI as a subprocess, this machine's store and a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import WriteWorkflow
from tests.integration.servers import Server

pytestmark = pytest.mark.docker

Cli = Callable[..., subprocess.CompletedProcess[str]]

WORKFLOWS = {
    "boxed": """
        from pyflue import create_agent
        agent = create_agent(lambda ctx: {})
        async def run(ctx):
            h = await ctx.init(agent)
            return {"out": (await h.shell("echo boxed"))["stdout"]}
        """,
    "boom": """
        async def run(ctx):
            raise RuntimeError("it broke")
        """,
}


@pytest.fixture(autouse=True)
def _workflows(write_workflow: WriteWorkflow) -> None:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)


@pytest.fixture
def server(project: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(project, tmp_path / "server.db", concurrency=4)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def cli(project: Path, tmp_path: Path) -> Cli:
    env = {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'local.db'}"}
    env.pop("PYFLUE_SERVER_URL", None)

    def pyflue(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyflue.cli", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=120)

    return pyflue


def run_id_of(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.split()[1]


def test_show_prints_a_completed_runs_result_container_and_times(cli: Cli) -> None:
    run_id = run_id_of(cli("run", "boxed", "-q"))
    shown = cli("show", run_id)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(cli("show", run_id, "--json").stdout)
    assert doc["status"] == "completed" and doc["result"] == {"out": "boxed\n"}
    assert len(doc["container_id"]) == 64
    for line in (f"run       {run_id}", "status    completed", f"container {doc['container_id']}",
                 "workflow  boxed", "image     pyflue/sandbox", "(ran ", '"out": "boxed\\n"'):
        assert line in shown.stdout


def test_show_prints_a_failed_runs_error_with_its_traceback(cli: Cli) -> None:
    run_id = run_id_of(cli("run", "boom", "-q"))
    shown = cli("show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "status    failed" in shown.stdout
    assert "error     RuntimeError: it broke" in shown.stdout
    assert "Traceback (most recent call last):" in shown.stdout
    assert json.loads(cli("show", run_id, "--json").stdout)["container_id"] is None


def test_a_prefix_of_the_id_or_of_its_ulid_names_a_run_in_show_and_logs(cli: Cli) -> None:
    boxed, boom = run_id_of(cli("run", "boxed", "-q")), run_id_of(cli("run", "boom", "-q"))
    assert json.loads(cli("show", "workflow:boo", "--json").stdout)["run_id"] == boom
    ulid = boxed.rsplit(":", 1)[1]
    assert json.loads(cli("show", ulid.lower(), "--json").stdout)["run_id"] == boxed
    events = cli("logs", "workflow:box", "-f", "ndjson").stdout.splitlines()
    assert {json.loads(line)["run_id"] for line in events} == {boxed}


def test_an_ambiguous_or_unknown_prefix_exits_2_and_says_why(cli: Cli) -> None:
    boxed, boom = run_id_of(cli("run", "boxed", "-q")), run_id_of(cli("run", "boom", "-q"))
    both = cli("show", "workflow:")
    assert both.returncode == 2
    assert "'workflow:' matches 2 runs" in both.stderr
    assert boxed in both.stderr and boom in both.stderr
    none = cli("show", "nothing-like-it")
    assert none.returncode == 2
    assert none.stderr.strip() == ("error: no run 'nothing-like-it' in this machine's store: "
                                   "`pyflue runs` lists the recent ones")
    assert cli("logs", "workflow:").returncode == 2


def test_show_logs_and_cancel_find_a_servers_run_by_prefix(cli: Cli, server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        done = http.post("/workflows/boxed?wait=result", json={}).json()
        other = http.post("/workflows/boom?wait=result", json={}).json()
    run_id = done["run_id"]
    shown = cli("show", run_id[:-3], "--server", server.url, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["run_id"] == run_id and doc["source"] == "http"
    assert doc["result"] == {"out": "boxed\n"} and len(doc["container_id"]) == 64
    failed = cli("show", "workflow:boom", "--server", server.url)
    assert "error     RuntimeError: it broke" in failed.stdout, failed.stderr
    logs = cli("logs", "workflow:boxed", "--server", server.url, "-f", "ndjson")
    assert json.loads(logs.stdout.splitlines()[-1])["type"] == "run_end"
    ambiguous = cli("cancel", "workflow:", "--server", server.url)
    assert ambiguous.returncode == 2 and run_id in ambiguous.stderr
    assert other["run_id"] in ambiguous.stderr
    ended = cli("cancel", "workflow:boo", "--server", server.url)
    assert ended.returncode == 1 and "error: " in ended.stderr  # already over: a conflict
