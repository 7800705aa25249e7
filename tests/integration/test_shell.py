"""harness.shell against the real engine: streaming, exit codes, timeouts, output caps."""

from __future__ import annotations

from typing import Any

import pytest

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import SandboxDefaults, Settings
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

AGENT = "from pyflue import create_agent\nagent = create_agent(lambda ctx: {})\n"
SHELL = AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    out = []
    for step in ctx.payload["steps"]:
        out.append(await h.shell(step["cmd"], **step.get("kw", {})))
    return out
"""


async def test_output_streams_in_order_as_events_and_in_the_result(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("sh", SHELL)
    cmd = "for i in $(seq 1 200); do echo line-$i; [ $((i % 50)) = 0 ] && sleep 0.05; done; echo oops >&2"
    run = await runner.run("sh", {"steps": [{"cmd": cmd}]})
    expected = "".join(f"line-{i}\n" for i in range(1, 201))
    assert run.result[0]["stdout"] == expected and run.result[0]["stderr"] == "oops\n"
    chunks = await runner.store.list_events(run.run_id, types=[EventType.shell_output])
    assert "".join(e.data["text"] for e in chunks if e.data["stream"] == "stdout") == expected
    assert len(chunks) > 2  # streamed in pieces while running, not once at the end


async def test_exit_codes_cwd_and_env_are_those_of_the_command(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("sh", SHELL)
    run = await runner.run("sh", {"steps": [
        {"cmd": "true"},
        {"cmd": "exit 3"},
        {"cmd": "no-such-command-xyz"},
        {"cmd": "mkdir -p sub && cd sub && pwd"},
        {"cmd": "pwd", "kw": {"cwd": "sub"}},
        {"cmd": 'echo "$GREETING"', "kw": {"env": {"GREETING": "hi there"}}},
        {"cmd": "[[ 1 == 1 ]] && echo bash"},
    ]})
    codes = [r["exit_code"] for r in run.result]
    assert codes == [0, 3, 127, 0, 0, 0, 0]
    assert run.result[4]["stdout"] == "/workspace/sub\n"
    assert run.result[5]["stdout"] == "hi there\n"
    assert run.result[6]["stdout"] == "bash\n"


async def test_a_timeout_kills_a_fork_bomb_and_returns_124_within_the_grace(
    runner: Runner, settings: Settings, write_workflow: WriteWorkflow
) -> None:
    write_workflow("sh", SHELL)
    timeout = 2.0
    run = await runner.run("sh", {"steps": [
        {"cmd": "echo started; :(){ :|:& };:", "kw": {"timeout": timeout}},
        # killed processes still need their exit and their reaping: allow a moment
        {"cmd": "for i in $(seq 1 40); do n=$(ps -e -o pid= | wc -l); "
                "[ \"$n\" -lt 10 ] && break; sleep 0.25; done; echo $n"},
        {"cmd": "echo still usable"},
    ]})
    bomb, count, after = run.result
    assert bomb["exit_code"] == 124 and bomb["timed_out"] is True
    assert bomb["stdout"].startswith("started")
    grace = settings.sandbox.kill_grace
    assert bomb["duration_ms"] < (timeout + 2 * grace + 3) * 1000
    assert int(count["stdout"]) < 10  # the bomb's orphans are gone, not just its leader
    assert after["stdout"] == "still usable\n"
    end = (await runner.store.list_events(run.run_id, types=[EventType.shell_end]))[0]
    assert end.data["timed_out"] is True and end.data["killed"] in ("group", "all")


async def test_a_command_that_never_ends_is_killed_with_its_background_children(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("sh", SHELL)
    run = await runner.run("sh", {"steps": [
        {"cmd": "sleep 1000 & sleep 1000 & echo waiting; wait", "kw": {"timeout": 1}},
        {"cmd": "pgrep -c -x sleep || true"},
    ]})
    hung, left = run.result
    assert hung["exit_code"] == 124 and hung["stdout"] == "waiting\n"
    assert left["stdout"].strip() == "0"  # none of its background children survived


async def test_output_past_the_cap_is_truncated_with_a_marker(
    settings: Settings, write_workflow: WriteWorkflow, docker_client: object
) -> None:
    from pyflue.wiring import open_runner

    write_workflow("sh", SHELL)
    capped = settings.model_copy(update={"sandbox": SandboxDefaults(output_cap=64 * 1024)})
    async with open_runner(capped) as runner:
        run = await runner.run("sh", {"steps": [{"cmd": "head -c 20000000 /dev/zero | tr '\\0' x; echo END"}]})
        events = await runner.store.list_events(run.run_id, types=[EventType.shell_output])
        end = (await runner.store.list_events(run.run_id, types=[EventType.shell_end]))[0]
    out = run.result[0]["stdout"]
    assert run.status is RunStatus.completed
    assert "bytes of output truncated" in out and out.endswith("xEND\n")
    assert len(out) < 64 * 1024 + 16 * 1024
    assert sum(len(e.data["text"]) for e in events) == 64 * 1024
    assert end.data["stdout_bytes"] == 20_000_004 and end.data["truncated"] is True


async def test_a_bad_command_argument_is_a_clear_error(
    runner: Runner, write_workflow: WriteWorkflow
) -> None:
    write_workflow("sh", SHELL)
    run = await runner.run("sh", {"steps": [{"cmd": "  "}]})
    assert run.status is RunStatus.failed and run.error is not None
    assert "non-empty command" in run.error.message


async def test_a_container_that_dies_under_a_command_ends_the_call_and_says_why(
    runner: Runner, write_workflow: WriteWorkflow, docker_client: Any
) -> None:
    write_workflow("dies", AGENT + """
import asyncio
from pyflue.errors import SandboxGone
async def run(ctx):
    h = await ctx.init(agent)
    killer = asyncio.get_running_loop().run_in_executor(None, ctx.payload and KILL, h.sandbox_id)
    first = await h.shell("echo started; sleep 120", timeout=300)
    await killer
    try:
        await h.shell("echo never")
    except SandboxGone as exc:
        return first, exc.message
""")

    def kill(container_id: str) -> None:
        import time
        time.sleep(1.5)  # the command is running by then
        docker_client.api.kill(container_id, signal="SIGKILL")

    runner.registry.get("dies").module.KILL = kill  # type: ignore[attr-defined]
    run = await runner.run("dies", {"go": True})
    assert run.status is RunStatus.completed, run.error
    first, message = run.result
    # Not left hanging until its 300 s timeout: the call ends when the container does.
    assert first["exit_code"] == 137 and not first["timed_out"]
    assert first["stdout"] == "started\n"
    assert message == "cannot run a command: the sandbox stopped (exit code 137)"
    end = (await runner.store.list_events(run.run_id, types=[EventType.shell_end]))[0]
    assert end.data["sandbox_stopped"] == "the sandbox stopped (exit code 137)"
