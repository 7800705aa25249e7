"""Agent sessions against the real engine: tools change the real container; the seed examples
run end to end with the scripted model; the Anthropic path runs through the real SDK."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyflue.events import EventType
from pyflue.llm import StaticModels
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import Settings
from pyflue.testing import FakeAnthropic, ScriptedModel, call, say, serve_fake_anthropic
from pyflue.wiring import open_runner
from pyflue.workflows import WorkflowRegistry
from tests.conftest import WriteWorkflow
from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker


@contextlib.asynccontextmanager
async def _scripted_runner(settings: Settings, model: ScriptedModel) -> AsyncIterator[Runner]:
    async with open_runner(settings) as runner:
        runner.models = StaticModels(model)
        yield runner


@pytest.fixture
async def seed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"project_dir": REPO})


async def test_the_agent_loop_changes_files_in_the_real_container(
    settings: Settings, write_workflow: WriteWorkflow, docker_client: Any
) -> None:
    write_workflow("coder", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"model": "anthropic/claude-test"})
async def run(ctx):
    h = await ctx.init(agent)
    s = await h.session()
    answer = await s.prompt("Write a script, run it, fix it.")
    return {"answer": answer.text, "script": await h.fs.read_file("app/hello.py"),
            "out": (await h.shell("python3 app/hello.py"))["stdout"]}
""")
    model = ScriptedModel([
        call("write", "I'll write it.", path="app/hello.py", content="print('hello world')\n"),
        call("bash", command="python3 app/hello.py > out.txt && wc -c out.txt"),
        call("read", path="out.txt"),
        call("edit", path="app/hello.py", old_text="world", new_text="pyflue"),
        call("grep", pattern="pyflue", path="app"),
        call("glob", pattern="**/*.py"),
        say("The script prints hello pyflue now."),
    ])
    async with _scripted_runner(settings, model) as runner:
        run = await runner.run("coder", {})
        events = await runner.store.list_events(run.run_id)
    assert run.status is RunStatus.completed, run.error
    assert run.result == {"answer": "The script prints hello pyflue now.",
                          "script": "print('hello pyflue')\n", "out": "hello pyflue\n"}

    def result_of(turn: int) -> str:
        blocks = model.requests[turn].messages[-1].content
        return str(getattr(blocks[0], "content", ""))

    assert result_of(2).startswith("exit code: 0\n12 out.txt")
    assert result_of(3) == "     1\thello world"
    assert result_of(5) == "hello.py:1:print('hello pyflue')"
    assert result_of(6) == "app/hello.py"
    tools = [e.data["name"] for e in events if e.type is EventType.tool_start]
    assert tools == ["write", "bash", "read", "edit", "grep", "glob"]
    order = [e.type for e in events if e.type in (EventType.tool_start, EventType.shell_start,
                                                   EventType.shell_end, EventType.tool_end)]
    assert order[:4] == [EventType.tool_start, EventType.tool_end, EventType.tool_start,
                         EventType.shell_start]  # bash runs through harness.shell


async def test_the_seed_summarize_example_runs_with_the_scripted_model(
    seed_settings: Settings, docker_client: Any
) -> None:
    model = ScriptedModel([say("Workflows are finite.")])
    async with _scripted_runner(seed_settings, model) as runner:
        run = await runner.run("summarize", {"text": "PyFlue workflows are finite operations."})
        logs = await runner.store.list_events(run.run_id, types=[EventType.log])
    assert run.result == {"summary": "Workflows are finite."}
    assert model.requests[0].messages[0].text.endswith("PyFlue workflows are finite operations.")
    assert logs[0].data["fields"] == {"audience": "general"}


async def test_the_seed_review_document_example_runs_with_the_scripted_model(
    seed_settings: Settings, docker_client: Any
) -> None:
    model = ScriptedModel([
        call("read", path="document.md"),
        call("write", path="review.md", content="Looks fine; add a date."),
        say("Review written to review.md."),
    ])
    async with _scripted_runner(seed_settings, model) as runner:
        run = await runner.run("review_document", {"document": "# Plan\n\nShip on Friday."})
    assert run.result == {"review": "Looks fine; add a date."}
    read_back = model.requests[1].messages[-1].content[0]
    assert "Ship on Friday." in str(getattr(read_back, "content", ""))


async def test_the_seed_classify_ticket_example_runs_with_the_scripted_model(
    seed_settings: Settings, docker_client: Any
) -> None:
    model = ScriptedModel([call("final_result", priority="P1", summary="Login is down")])
    async with _scripted_runner(seed_settings, model) as runner:
        run = await runner.run("classify_ticket", {"ticket": "Nobody can log in!"})
    assert run.result == {"priority": "P1", "summary": "Login is down"}


def test_the_seed_examples_run_offline_from_the_cli_with_the_demo_model(tmp_path: Path) -> None:
    env = {**os.environ, "PYFLUE_MODEL": "scripted/demo",
           "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    for name, payload in [("summarize", {"text": "Short text. Second sentence."}),
                          ("review_document", {"document": "# Doc"}),
                          ("classify_ticket", {"ticket": "Printer on fire"})]:
        done = subprocess.run([sys.executable, "-m", "pyflue.cli", "run", name, "-q",
                               "--payload", json.dumps(payload)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)


def test_summarize_goes_through_the_anthropic_sdk_to_a_messages_api_server(
    tmp_path: Path, docker_client: Any
) -> None:
    fake = FakeAnthropic()
    fake.fail(529, "overloaded_error", "Overloaded").reply_text("A short summary.")
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-test-key",
           "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    env.pop("PYFLUE_MODEL", None)
    with serve_fake_anthropic(fake) as base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
        done = subprocess.run(
            [sys.executable, "-m", "pyflue.cli", "run", "summarize", "--payload",
             json.dumps({"text": "A long text about workflows."})],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"summary": "A short summary."}
    assert len(fake.requests) == 2  # the 529 was retried
    body = fake.requests[-1].body
    assert body["model"] == "claude-haiku-4-5" and body["stream"] is True
    assert "A long text about workflows." in json.dumps(body["messages"])
    assert "◆ A short summary." in done.stderr


def test_a_refused_key_is_one_clear_line(tmp_path: Path, docker_client: Any) -> None:
    fake = FakeAnthropic()
    fake.fail(401, "authentication_error", "invalid x-api-key")
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bad",
           "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    env.pop("PYFLUE_MODEL", None)
    with serve_fake_anthropic(fake) as base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
        done = subprocess.run(
            [sys.executable, "-m", "pyflue.cli", "run", "summarize", "-q", "--payload",
             '{"text": "x"}'], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and len(fake.requests) == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "model_auth_error" in last and "refused" in last


def test_the_workflow_registry_finds_the_seed_examples() -> None:
    names = WorkflowRegistry(REPO).names()
    assert {"summarize", "review_document", "classify_ticket", "hello", "shell_steps"} <= set(names)
