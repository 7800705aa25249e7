"""The `pyflue` command as a user runs it: a real process, the real engine, a real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker

PYFLUE = [sys.executable, "-m", "pyflue.cli"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}


def pyflue(*args: str, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYFLUE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, **kw)


def test_the_main_job_runs_steps_and_prints_the_result(env: dict[str, str]) -> None:
    steps = ["echo hi", 'python3 -c "print(6*7)"', "exit 3"]
    done = pyflue("run", "shell_steps", "--payload", json.dumps({"steps": steps}), env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [s["exit_code"] for s in result["steps"]] == [0, 0, 3]
    assert [s["stdout"] for s in result["steps"]] == ["hi\n", "42\n", ""]
    assert result["ok"] is False
    assert done.stderr.startswith("run workflow:shell_steps:")
    assert "$ echo hi" in done.stderr and "│ 42" in done.stderr


def test_logs_runs_and_workflows_show_a_finished_run(env: dict[str, str]) -> None:
    done = pyflue("run", "hello", "--payload", '{"name": "tester"}', "--quiet", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"].startswith("hello, tester from ")
    run_id = done.stderr.split()[1]

    pretty = pyflue("logs", run_id, env=env)
    assert pretty.returncode == 0 and "▶ run " + run_id in pretty.stdout
    assert "■ completed" in pretty.stdout

    doc = json.loads(pyflue("logs", run_id, "--format", "json", env=env).stdout)
    indexes = [e["event_index"] for e in doc["events"]]
    assert doc["run_id"] == run_id and indexes == list(range(1, len(indexes) + 1))
    lines = pyflue("logs", run_id, "-f", "ndjson", env=env).stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines][-1] == "run_end"

    listed = pyflue("runs", "--format", "json", env=env)
    assert json.loads(listed.stdout)[0]["run_id"] == run_id
    assert json.loads(listed.stdout)[0]["status"] == "completed"
    names = pyflue("workflows", env=env).stdout
    assert "hello" in names and "shell_steps" in names


def test_a_failed_run_exits_1_with_one_line(env: dict[str, str]) -> None:
    done = pyflue("run", "shell_steps", "--payload", '{"steps": "not a list"}', "-q", env=env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run workflow:shell_steps:") and "ValueError" in last


@pytest.mark.parametrize(("args", "message"), [
    (["run", "nope"], "unknown workflow 'nope'; available: classify_ticket, hello, review_document, shell_steps, summarize"),
    (["run", "hello", "--payload", "{bad"], "payload is not valid JSON"),
    (["run", "hello", "--payload", "[1]"], "payload must be a JSON object, not array"),
    (["logs", "workflow:hello:NOPE"], "no run 'workflow:hello:NOPE'"),
])
def test_bad_input_is_one_clear_line_and_exit_2_or_1(
    args: list[str], message: str, env: dict[str, str]
) -> None:
    done = pyflue(*args, env=env)
    assert done.returncode in (1, 2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    runs = json.loads(pyflue("runs", "--format", "json", env=env).stdout)
    assert runs == []  # nothing half-written


def test_a_missing_image_says_how_to_build_it(env: dict[str, str]) -> None:
    done = pyflue("run", "hello", "--image", "pyflue/missing:0", "-q", env=env)
    assert done.returncode == 3  # infrastructure
    assert "pyflue images build" in done.stderr.strip().splitlines()[-1]


def test_an_unreachable_engine_is_one_clear_line(env: dict[str, str]) -> None:
    env = {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = pyflue("run", "hello", "-q", env=env)
    assert done.returncode == 3  # infrastructure
    assert "Docker engine not reachable" in done.stderr and "pyflue doctor" in done.stderr
    assert "failed: engine_unavailable:" in done.stderr  # not a start error of the container
    doctor = pyflue("doctor", env=env)
    assert doctor.returncode == 1 and "FAIL  docker engine" in doctor.stdout
    assert "DOWN: nothing answers at unix:///nonexistent/docker.sock" in doctor.stdout
    assert "fix: start it" in doctor.stdout


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_cancels_the_run_removes_its_container_and_exits_130(
    env: dict[str, str], docker_client: Any
) -> None:
    payload = json.dumps({"steps": ["echo started", "sleep 120"], "timeout": 300})
    # A job started with `&` by a non-interactive shell (CI often is one) inherits SIGINT
    # ignored, and so would this child: give it the terminal's default, as Ctrl-C finds it.
    with subprocess.Popen([*PYFLUE, "run", "shell_steps", "--payload", payload], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=_default_sigint) as proc:
        assert proc.stderr is not None
        run_id = proc.stderr.readline().split()[1]
        label = f"dev.pyflue.run-id={run_id}"
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "$ sleep 120" in line or time.monotonic() > deadline:
                break
        assert docker_client.containers.list(filters={"label": label})
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # not left running into the next tests
            raise
        assert proc.returncode == 130
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    shown = json.loads(pyflue("runs", "--format", "json", env=env).stdout)[0]
    assert shown["run_id"] == run_id and shown["status"] == "cancelled"


def test_a_local_run_past_its_deadline_ends_timed_out_with_its_container_gone(
    env: dict[str, str], tmp_path: Path, containers_of: Any,
) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "stuck.py").write_text(
        "from pyflue import create_agent\n"
        "deadline_seconds = 3\n"
        "agent = create_agent(lambda ctx: {})\n"
        "async def run(ctx):\n"
        "    h = await ctx.init(agent)\n"
        "    await h.shell('sleep 120', timeout=300)\n"
    )
    started = time.monotonic()
    done = pyflue("run", "stuck", "-q", "-C", str(tmp_path), env=env)
    assert time.monotonic() - started < 60  # the deadline, not the command's 120 s
    assert done.returncode == 4, done.stderr  # timed out
    run_id = done.stderr.split()[1]
    assert f"error: run {run_id} timed_out: the run's deadline of 3 s passed\n" in done.stderr
    assert containers_of(run_id) == []
    shown = json.loads(pyflue("runs", "-C", str(tmp_path), "--format", "json", env=env).stdout)
    assert shown[0]["status"] == "timed_out"


def test_doctor_reports_each_check_on_its_own_line(env: dict[str, str]) -> None:
    done = pyflue("doctor", env=env)
    assert done.returncode == 0, done.stdout
    for name in ("docker engine", "runtime runc", "runtime runsc", "sandbox image", "run store"):
        assert name in done.stdout


def test_doctor_names_each_workflow_that_fails_to_import(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "fine.py").write_text("async def run(ctx):\n    return 1\n")
    broken = tmp_path / "workflows" / "broken.py"
    broken.write_text("import no_such_module_here\nasync def run(ctx):\n    return 1\n")
    done = pyflue("doctor", "-C", str(tmp_path), env=env)
    assert done.returncode == 1, done.stdout
    assert "FAIL  workflows      1 of 2 import: broken, fine" in done.stdout
    assert (f"FAIL  workflow broken {broken}: ModuleNotFoundError: No module named "
            "'no_such_module_here'") in done.stdout


@pytest.mark.parametrize("right", [True, False], ids=["accepted", "refused"])
def test_doctor_never_prints_the_store_password(
    env: dict[str, str], postgres_url: str, right: bool
) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    password = url.password if right else "wrong-Pa55word"
    assert password
    env = {**env, "PYFLUE_STORE_URL": url.set(password=password).render_as_string(
        hide_password=False)}
    done = pyflue("doctor", env=env)
    store_line = next(line for line in done.stdout.splitlines() if "run store" in line)
    assert store_line.startswith("ok  " if right else "FAIL"), done.stdout
    assert ":***@" in store_line
    # The test server's password may be a common word ("pyflue"): look for it where it would be.
    shown = done.stdout + done.stderr
    assert f":{password}@" not in shown and (right or password not in shown)


def test_rerun_runs_the_same_workflow_payload_and_image_again(env: dict[str, str]) -> None:
    first = pyflue("run", "hello", "--payload", '{"name": "twice"}', "--quiet", env=env)
    assert first.returncode == 0, first.stderr
    run_id = first.stderr.split()[1]
    done = pyflue("rerun", run_id, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"].startswith("hello, twice from ")
    new_id = done.stderr.split()[1]
    assert new_id.startswith("workflow:hello:") and new_id != run_id
    assert "■ completed" in done.stderr
    runs = {r["run_id"]: r for r in json.loads(
        pyflue("runs", "--workflow", "hello", "--format", "json", env=env).stdout)}
    assert runs[new_id]["payload"] == runs[run_id]["payload"] == {"name": "twice"}
    assert runs[new_id]["image"] == runs[run_id]["image"] is not None
    unknown = pyflue("rerun", "workflow:hello:nope", env=env)
    assert unknown.returncode == 1 and "workflow:hello:nope" in unknown.stderr
