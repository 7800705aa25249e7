"""`pyflue cancel` stops a `pyflue run` running in another terminal: both as subprocesses,
over the project's real store and the real engine."""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

PYFLUE = [sys.executable, "-m", "pyflue.cli"]

SLEEPY = """
    from pyflue import create_agent

    agent = create_agent(lambda ctx: {})

    async def run(ctx):
        h = await ctx.init(agent)
        await h.shell("sleep 300", timeout=600)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "sleepy.py").write_text(textwrap.dedent(SLEEPY))
    return tmp_path


@pytest.fixture
def env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYFLUE_SERVER_URL", "PYFLUE_STORE_URL", "PYFLUE_PROJECT_DIR"):
        env.pop(name, None)
    return env


def lines_of(stream: Any) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def until_event(lines: queue.Queue[str], kind: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            event: dict[str, Any] = json.loads(lines.get(timeout=1))
        except queue.Empty:
            continue
        if event["type"] == kind:
            return event
    raise AssertionError(f"no {kind} event within {seconds:g} s")


def test_cancel_stops_a_local_run_in_another_process(
        project: Path, env: dict[str, str], containers_of: Callable[[str], list[Any]]) -> None:
    with subprocess.Popen([*PYFLUE, "run", "sleepy", "--events", "ndjson", "-C", str(project)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as run:
        try:
            lines = lines_of(run.stderr)
            started = until_event(lines, "shell_start")  # the command is in flight
            run_id = started["run_id"]
            assert len(containers_of(run_id)) == 1
            prefix = run_id.rsplit(":", 1)[1][:12].lower()  # a unique prefix of its ULID
            t0 = time.monotonic()
            cancel = subprocess.run([*PYFLUE, "cancel", prefix, "-C", str(project)], env=env,
                                    capture_output=True, text=True, timeout=120)
            assert cancel.returncode == 0, cancel.stderr
            assert cancel.stdout.strip() == f"cancelled {run_id}"
            assert run.wait(timeout=60) == 5  # cancelled, as docs/cli.md's exit codes say
            took = time.monotonic() - t0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.stdout is not None and run.stdout.read() == ""
        time.sleep(0.2)  # the pump thread drains the last lines
    print(f"cancel to exit: {took:.2f} s")
    # Prompt: the CLI's start-up, a poll of 0.5 s and the container's kill grace (2 s), with
    # room for a loaded machine.
    assert took < 20, took
    assert containers_of(run_id) == []
    with sqlite3.connect(project / ".pyflue" / "pyflue.db") as db:
        status, reason = db.execute("select status, reason from runs where run_id = ?",
                                    (run_id,)).fetchone()
    assert (status, reason) == ("cancelled", "cancelled by request")
    rest = [json.loads(line) for line in list(lines.queue)]
    end = next(e for e in rest if e["type"] == "run_end")
    assert end["data"]["status"] == "cancelled"
    assert rest[-1]["type"] == "error" and rest[-1]["status"] == "cancelled"


def test_cancel_of_a_finished_local_run_is_refused(project: Path, env: dict[str, str]) -> None:
    (project / "workflows" / "quick.py").write_text("async def run(ctx):\n    return 1\n")
    done = subprocess.run([*PYFLUE, "run", "quick", "--json", "-C", str(project)], env=env,
                          capture_output=True, text=True, timeout=120)
    run_id = json.loads(done.stdout)["run_id"]
    cancel = subprocess.run([*PYFLUE, "cancel", run_id, "-C", str(project)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 1
    assert "already finished (completed)" in cancel.stderr


def test_cancel_without_a_store_says_so(tmp_path: Path, env: dict[str, str]) -> None:
    cancel = subprocess.run([*PYFLUE, "cancel", "01ABC", "-C", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 2
    assert "no runs under" in cancel.stderr
    assert not (tmp_path / ".pyflue").exists()


def test_a_server_sharing_the_store_cancels_a_local_run(
        project: Path, env: dict[str, str], containers_of: Callable[[str], list[Any]]) -> None:
    from tests.integration.servers import Server

    store = project / "shared.db"
    server = Server(project, store, concurrency=1)
    server.start()
    shared = {**env, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{store}"}
    try:
        with subprocess.Popen([*PYFLUE, "run", "sleepy", "--events", "ndjson", "-C",
                               str(project)], env=shared, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) as run:
            try:
                run_id = until_event(lines_of(run.stderr), "shell_start")["run_id"]
                cancel = subprocess.run([*PYFLUE, "cancel", run_id, "--server", server.url],
                                        env=env, capture_output=True, text=True, timeout=120)
                assert cancel.returncode == 0, cancel.stderr
                assert cancel.stdout.strip() == f"cancelling {run_id}"  # its process stops it
                assert run.wait(timeout=60) == 5
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
            time.sleep(0.2)
    finally:
        server.stop()
    assert containers_of(run_id) == []
