"""The run executor on the library's fakes: statuses, events, errors, the harness contract."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from pyflue.errors import InvalidPayload, WorkflowNotFound
from pyflue.events import EventType
from pyflue.models import RunStatus, parse_payload
from pyflue.store import RunUpdate
from pyflue.testing import FakeSandboxProvider, fake_runner
from tests.conftest import WriteWorkflow

AGENT = "from pyflue import create_agent\nagent = create_agent(lambda ctx: {})\n"


async def test_a_completed_run_records_its_result_and_event_sequence(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("greet", AGENT + """
async def run(ctx):
    ctx.log.info("hi", who=ctx.payload["who"])
    h = await ctx.init(agent)
    out = await h.shell("echo hello")
    return {"out": out["stdout"], "id": ctx.id}
""")
    runner = fake_runner(project)
    run = await runner.run("greet", {"who": "me"})
    assert run.status is RunStatus.completed
    assert run.result == {"out": "hello\n", "id": run.run_id}
    events = await runner.store.list_events(run.run_id)
    assert [e.type for e in events] == [
        EventType.run_start, EventType.log, EventType.container_created,
        EventType.container_started, EventType.shell_start, EventType.shell_output,
        EventType.shell_end, EventType.container_exited, EventType.container_removed,
        EventType.run_end,
    ]
    assert [e.event_index for e in events] == list(range(1, 11))
    assert events[1].data == {"level": "info", "message": "hi", "fields": {"who": "me"}}
    assert events[-1].data["status"] == "completed"


async def test_a_raising_workflow_fails_with_type_message_and_traceback(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("boom", AGENT + """
async def run(ctx):
    await ctx.init(agent)
    raise ValueError("bad input here")
""")
    runner = fake_runner(project)
    run = await runner.run("boom", {})
    assert run.status is RunStatus.failed
    assert run.error is not None and run.error.type == "ValueError"
    assert run.error.message == "bad input here"
    end = (await runner.store.list_events(run.run_id))[-1]
    assert end.type is EventType.run_end and end.data["is_error"] is True
    assert "Traceback" in end.data["error"]["details"] and "boom.py" in end.data["error"]["details"]
    provider = runner.provider
    assert isinstance(provider, FakeSandboxProvider) and provider.live == {}


async def test_a_sync_workflow_runs_off_the_event_loop_and_can_log(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("plain", """
import threading
def run(ctx):
    ctx.log.warn("from a thread")
    return {"main": threading.current_thread() is threading.main_thread()}
""")
    runner = fake_runner(project)
    run = await runner.run("plain", {})
    assert run.result == {"main": False}
    logs = await runner.store.list_events(run.run_id, types=[EventType.log])
    assert logs[0].data["level"] == "warn"


async def test_ctx_log_works_awaited_as_in_pyflue_0_2_and_called_plainly(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("upstream", """
import asyncio
async def run(ctx):
    await ctx.log.info("awaited", n=1)
    ctx.log.warn("plain")
    await ctx.log.error("awaited error")
    await asyncio.gather(ctx.log.info("gathered"), asyncio.create_task(ctx.log.info("task")))
    return "ok"
""")
    runner = fake_runner(project)
    run = await runner.run("upstream", {})
    assert run.status is RunStatus.completed
    logs = await runner.store.list_events(run.run_id, types=[EventType.log])
    assert [(e.data["level"], e.data["message"]) for e in logs] == [
        ("info", "awaited"), ("warn", "plain"), ("error", "awaited error"),
        ("info", "gathered"), ("info", "task")]
    assert logs[0].data["fields"] == {"n": 1}


async def test_a_sync_workflow_can_log_plainly_and_through_an_event_loop_of_its_own(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("plainsync", """
import asyncio
def run(ctx):
    ctx.log.info("plain")
    async def inner():
        await ctx.log.info("awaited in a loop of its own")
    asyncio.run(inner())
    asyncio.run(ctx.log.info("handed to asyncio.run"))
    return "ok"
""")
    runner = fake_runner(project)
    run = await runner.run("plainsync", {})
    assert run.status is RunStatus.completed
    logs = await runner.store.list_events(run.run_id, types=[EventType.log])
    assert [e.data["message"] for e in logs] == [
        "plain", "awaited in a loop of its own", "handed to asyncio.run"]


async def test_a_result_that_is_not_json_fails_clearly(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("obj", "async def run(ctx):\n    return object()\n")
    run = await fake_runner(project).run("obj", {})
    assert run.status is RunStatus.failed
    assert run.error is not None and "not JSON-serialisable" in run.error.message


async def test_a_cancelled_run_is_recorded_cancelled_and_its_box_removed(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("slow", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("sleep 30")
""")
    runner = fake_runner(project)
    submitted = await runner.submit("slow", {})
    task = asyncio.create_task(runner.execute(submitted.run_id))
    while not runner.provider.live:  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    task.cancel("stop please")
    with pytest.raises(asyncio.CancelledError):
        await task
    run = await runner.store.get_run(submitted.run_id)
    assert run.status is RunStatus.cancelled and run.reason == "stop please"
    assert runner.provider.live == {}  # type: ignore[attr-defined]


async def test_a_shell_timeout_returns_124_and_does_not_raise(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("t", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    return await h.shell("sleep 5", timeout=0.1)
""")
    run = await fake_runner(project).run("t", {})
    assert run.result["exit_code"] == 124 and run.result["timed_out"] is True


async def test_a_run_has_one_box_shared_by_its_inits(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("two", """
from pyflue import create_agent
a = create_agent(lambda ctx: {"cwd": "/workspace"})
b = create_agent(lambda ctx: {"cwd": "/workspace/sub"})
c = create_agent(lambda ctx: {"image": "other:1"})
async def run(ctx):
    ha, hb = await ctx.init(a), await ctx.init(b)
    await hb.fs.write_file("x.txt", "from b")
    same = await ha.fs.read_file("sub/x.txt")
    try:
        await ctx.init(c)
    except Exception as exc:
        return {"same": same, "error": str(exc)}
""")
    runner = fake_runner(project)
    run = await runner.run("two", {})
    assert run.result["same"] == "from b"
    assert "one container" in run.result["error"]
    assert len(runner.provider.opened) == 1  # type: ignore[attr-defined]


async def test_the_fs_refuses_symlinks_that_leave_the_workspace(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("links", AGENT + """
async def run(ctx):
    h = await ctx.init(agent)
    box = h._box
    box.symlink("/workspace/out", "/etc")
    box.symlink("/workspace/inside", "/workspace/real")
    await h.fs.mkdir("real")
    await h.fs.write_file("real/f.txt", "ok")
    errors = []
    for path in ["out/passwd", "../etc/passwd", "/etc/passwd"]:
        try:
            await h.fs.read_file(path)
        except Exception as exc:
            errors.append(type(exc).__name__)
    return {"errors": errors, "via_inside": await h.fs.read_file("inside/f.txt")}
""")
    run = await fake_runner(project).run("links", {})
    assert run.result == {"errors": ["WorkspacePathError"] * 3, "via_inside": "ok"}


async def test_submitting_an_unknown_workflow_records_nothing(project: Path) -> None:
    runner = fake_runner(project)
    with pytest.raises(WorkflowNotFound):
        await runner.submit("nope", {})
    assert await runner.store.list_runs() == []


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, not array"),
    ('"text"', "must be a JSON object, not string"),
    ("null", "must be a JSON object, not null"),
])
def test_payloads_must_be_json_objects(raw: str, message: str) -> None:
    with pytest.raises(InvalidPayload, match=message):
        parse_payload(raw)


def test_an_empty_payload_is_an_empty_object() -> None:
    assert parse_payload(None) == {} and parse_payload("  ") == {}


async def test_log_fields_that_are_not_json_are_stored_as_their_repr(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("odd", """
class Thing:
    def __repr__(self):
        return "<thing>"
async def run(ctx):
    ctx.log.info("odd", thing=Thing(), n=1)
    return "ok"
""")
    runner = fake_runner(project)
    run = await runner.run("odd", {})
    assert run.status is RunStatus.completed
    log = (await runner.store.list_events(run.run_id, types=[EventType.log]))[0]
    assert log.data["fields"] == {"thing": "<thing>", "n": 1}


async def test_a_missing_shell_cwd_is_a_clear_error_and_agent_cwds_are_created(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("cwd", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"cwd": "/workspace/project"})
async def run(ctx):
    h = await ctx.init(agent)
    made = await h.fs.exists("/workspace/project")
    try:
        await h.shell("true", cwd="nope")
    except Exception as exc:
        return {"made": made, "error": type(exc).__name__, "message": str(exc)}
""")
    run = await fake_runner(project).run("cwd", {})
    assert run.result["made"] is True
    assert run.result["error"] == "FileNotFoundInSandbox" and "nope" in run.result["message"]


async def test_runs_of_dead_processes_are_recovered_as_interrupted(project: Path) -> None:
    import socket
    import subprocess

    from pyflue.models import Run, new_run_id, utcnow

    dead = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)
    runner = fake_runner(project)
    run = Run(run_id=new_run_id("gone"), workflow="gone", status=RunStatus.running,
              owner=f"{socket.gethostname()}:{dead}", created_at=utcnow())
    await runner.store.create_run(run)
    alive = Run(run_id=new_run_id("here"), workflow="here", status=RunStatus.running,
                owner=f"{socket.gethostname()}:{os.getpid()}", created_at=utcnow())
    await runner.store.create_run(alive)
    assert await runner.workers.recover() == [run.run_id]
    assert (await runner.store.get_run(run.run_id)).status is RunStatus.interrupted
    assert (await runner.store.get_run(alive.run_id)).status is RunStatus.running
    followed = [e.type async for e in runner.store.subscribe(run.run_id)]
    assert followed == [EventType.run_end]


async def test_a_run_that_is_not_queued_is_not_executed(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    from pyflue.errors import RunStateConflict
    from pyflue.store import RunUpdate

    write_workflow("once", "async def run(ctx):\n    return 1\n")
    runner = fake_runner(project)
    submitted = await runner.submit("once", {})
    await runner.store.update_run(submitted.run_id, RunUpdate(status=RunStatus.cancelled))
    with pytest.raises(RunStateConflict):
        await runner.execute(submitted.run_id)
    assert await runner.store.list_events(submitted.run_id) == []


async def test_sys_exit_in_a_workflow_fails_the_run_cleanly(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("bye", AGENT + """
import sys
async def run(ctx):
    await ctx.init(agent)
    sys.exit(3)
""")
    runner = fake_runner(project)
    run = await runner.run("bye", {})
    assert run.status is RunStatus.failed and run.error is not None
    assert run.error.type == "SystemExit"
    assert runner.provider.live == {}  # type: ignore[attr-defined]


async def test_a_cancel_during_the_claim_still_ends_the_run_cancelled(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    from pyflue.store import MemoryStore

    class SlowClaims(MemoryStore):
        async def update_run(self, run_id: str, update: RunUpdate) -> object:  # type: ignore[override]
            result = await super().update_run(run_id, update)
            if update.expect_status is RunStatus.queued:
                await asyncio.sleep(0.2)  # the window between the claim and its answer
            return result

    write_workflow("w", "async def run(ctx):\n    return 1\n")
    runner = fake_runner(project, store=SlowClaims())
    submitted = await runner.submit("w", {})
    task = asyncio.create_task(runner.execute(submitted.run_id))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run = await runner.store.get_run(submitted.run_id)
    assert run.status is RunStatus.cancelled
    events = await runner.store.list_events(submitted.run_id)
    assert events[-1].type is EventType.run_end


async def test_a_run_past_its_deadline_ends_timed_out_and_its_own_timeouts_fail_it(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("stuck", AGENT + """
import asyncio
deadline_seconds = 1
async def run(ctx):
    await ctx.init(agent)
    if ctx.payload.get("own"):  # a timeout of the workflow's own is its failure, not the deadline
        await asyncio.wait_for(asyncio.sleep(30), 0.05)
    await asyncio.sleep(30)
""")
    runner = fake_runner(project)
    run = await runner.run("stuck", {})
    assert run.status is RunStatus.timed_out and run.reason == "the run's deadline of 1 s passed"
    end = (await runner.store.list_events(run.run_id))[-1]
    assert end.data["status"] == "timed_out" and end.data["error"]["type"] == "timed_out"
    assert runner.provider.live == {}  # type: ignore[attr-defined]  # the sandbox is gone
    own = await runner.run("stuck", {"own": True})
    assert own.status is RunStatus.failed and own.error is not None
    assert own.error.type == "TimeoutError"


@pytest.mark.parametrize(("declared", "expected"), [
    (None, 3600.0), (2, 2.0), (0.1, 1.0), (10**9, 6 * 3600.0)])
async def test_the_deadline_is_the_workflows_own_within_the_servers_bounds(
    project: Path, write_workflow: WriteWorkflow, declared: object, expected: float,
) -> None:
    line = "" if declared is None else f"deadline_seconds = {declared!r}\n"
    write_workflow("bounded", line + "async def run(ctx):\n    return 1\n")
    runner = fake_runner(project)
    assert runner.deadline_for(runner.registry.get("bounded")) == expected


def test_the_default_deadline_is_capped_by_the_maximum_too(project: Path) -> None:
    from pyflue.settings import ServerSettings, Settings

    (project / "workflows").mkdir(exist_ok=True)
    (project / "workflows" / "plain.py").write_text("async def run(ctx):\n    return 1\n")
    settings = Settings(project_dir=project, server=ServerSettings(
        default_deadline=30000, max_deadline=21600))
    runner = fake_runner(project, settings=settings)
    assert runner.deadline_for(runner.registry.get("plain")) == 21600


@pytest.mark.parametrize(("line", "message"), [
    ("deadline_seconds = '5'", "deadline_seconds must be a number of seconds, not '5'"),
    ("deadline_seconds = True", "deadline_seconds must be a number of seconds, not True"),
    ("deadline_seconds = float('nan')", "deadline_seconds must be a number of seconds, not nan"),
    ("retry_interrupted = 11", "retry_interrupted must be True, False or a count from 0 to 10"),
    ("retry_interrupted = 'yes'", "retry_interrupted must be True, False or a count"),
])
async def test_a_bad_deadline_or_retry_setting_fails_the_run_saying_so(
    project: Path, write_workflow: WriteWorkflow, line: str, message: str,
) -> None:
    write_workflow("odd", line + "\nasync def run(ctx):\n    return 1\n")
    run = await fake_runner(project).run("odd", {})
    assert run.status is RunStatus.failed and run.error is not None
    assert run.error.type == "config_error" and message in run.error.message


RETRY = """
import asyncio
retry_interrupted = 2
async def run(ctx):
    await asyncio.sleep(ctx.payload.get("sleep", 0))
    return {"attempt": ctx.attempt}
"""


async def _lost(runner: Any, workflow: str, *, attempt: int = 1, source: str = "http",
                cancel_requested: str | None = None) -> str:
    """A run left `running` by a process of this host that is gone."""
    import socket
    import subprocess

    from pyflue.models import Run, new_run_id, utcnow

    dead = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)
    run = Run(run_id=new_run_id(workflow), workflow=workflow, status=RunStatus.running,
              owner=f"{socket.gethostname()}:{dead}", created_at=utcnow(), source=source,
              attempt=attempt, cancel_requested=cancel_requested)
    await runner.store.create_run(run)
    return run.run_id


RETRY_IN_A_BOX = AGENT + RETRY.replace(
    "    await asyncio.sleep", "    await ctx.init(agent)\n    await asyncio.sleep")


async def _running_in_a_box(scheduler: Any, workflow: str) -> Any:
    """Submits a run that sleeps for 30 s and returns it once its sandbox exists."""
    run, _ = await scheduler.submit(workflow, {"sleep": 30})
    for _ in range(200):
        if run.run_id in scheduler.runner.provider.live:
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"{run.run_id} did not get its sandbox")


async def test_a_lost_run_of_a_retry_safe_workflow_goes_back_to_the_queue_and_runs_again(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("again", RETRY)
    write_workflow("once", RETRY.replace("retry_interrupted = 2", ""))
    runner = fake_runner(project)
    again, once = await _lost(runner, "again"), await _lost(runner, "once")
    last, cli = await _lost(runner, "again", attempt=3), await _lost(runner, "again", source="cli")
    cancelled = await _lost(runner, "again", cancel_requested="cancelled by request")
    assert sorted(await runner.workers.recover()) == sorted([again, once, last, cli, cancelled])
    back = await runner.store.get_run(again)
    assert back.status is RunStatus.queued and back.attempt == 2 and back.owner is None
    assert back.started_at is None and back.reason is None
    [requeued] = await runner.store.list_events(again)
    assert requeued.type is EventType.run_requeued and requeued.data["attempt"] == 2
    assert "is gone" in requeued.data["reason"]
    # Not safe to retry, out of retries, a `pyflue run`, asked to cancel: interrupted.
    for run_id in (once, last, cli, cancelled):
        assert (await runner.store.get_run(run_id)).status is RunStatus.interrupted
    final = await runner.execute(again)
    assert final.status is RunStatus.completed and final.attempt == 2
    assert final.result == {"attempt": 2}  # ctx.attempt
    events = await runner.store.list_events(again)
    assert [e.type for e in events][:2] == [EventType.run_requeued, EventType.run_start]
    assert events[1].data["attempt"] == 2 and events[-1].type is EventType.run_end
    assert [e.event_index for e in events] == list(range(1, len(events) + 1))


async def test_stopping_a_scheduler_puts_retry_safe_runs_back_and_interrupts_the_rest(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    from pyflue.scheduler import Scheduler

    write_workflow("again", RETRY_IN_A_BOX)
    write_workflow("once", RETRY_IN_A_BOX.replace("retry_interrupted = 2", ""))
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=4)
    await scheduler.start()
    again = await _running_in_a_box(scheduler, "again")
    once = await _running_in_a_box(scheduler, "once")
    await scheduler.stop()
    back = await runner.store.get_run(again.run_id)
    assert back.status is RunStatus.queued and back.attempt == 2
    types = [e.type for e in await runner.store.list_events(again.run_id)]
    assert types[-1] is EventType.run_requeued and EventType.run_end not in types
    assert EventType.container_removed in types  # the attempt cleaned up before going back
    gone = await runner.store.get_run(once.run_id)
    assert gone.status is RunStatus.interrupted and gone.reason == "the server stopped"
    assert runner.provider.live == {}  # type: ignore[attr-defined]
    # The next scheduler on this store runs it to the end.
    scheduler = Scheduler(runner, max_concurrency=4)
    await scheduler.start()
    try:
        await runner.store.update_run(again.run_id, RunUpdate(extra={"payload": {}}))  # no nap
        final = await scheduler.wait(again.run_id)
    finally:
        await scheduler.stop()
    assert final.status is RunStatus.completed and final.result == {"attempt": 2}


async def test_a_worker_taken_for_lost_cannot_end_the_next_attempt_of_its_run(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("again", RETRY)
    runner = fake_runner(project)
    submitted = await runner.submit("again", {"sleep": 0.5}, owner=None, source="http")
    slow = asyncio.create_task(runner.execute(submitted.run_id))
    for _ in range(200):
        run = await runner.store.get_run(submitted.run_id)
        if run.status is RunStatus.running:
            break
        await asyncio.sleep(0.01)
    # Meanwhile another worker took this one for lost, requeued the run and started it again.
    assert await runner.workers.requeue(run, "the process that ran it (here) is gone")
    await runner.store.update_run(submitted.run_id, RunUpdate(
        status=RunStatus.running, expect_status=RunStatus.queued,
        extra={"owner": "elsewhere:1:beef"}))
    final = await slow
    assert final.status is RunStatus.running and final.attempt == 2
    assert final.owner == "elsewhere:1:beef" and final.result is None
    types = [e.type for e in await runner.store.list_events(submitted.run_id)]
    assert EventType.run_end not in types


async def test_a_cancel_is_never_turned_into_a_requeue(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    from pyflue.scheduler import Scheduler

    write_workflow("again", RETRY_IN_A_BOX)
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=4)
    await scheduler.start()
    # Cancelled here, then the server stops before that cancel has landed: it stays cancelled.
    here = await _running_in_a_box(scheduler, "again")
    # Without its loops, stop() reaches the run before the run's task has seen the cancel
    # (as when the cancel waits on a container being created): the race, made certain.
    for loop in (scheduler._loop_task, scheduler._beat_task):
        assert loop is not None
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    scheduler._loop_task = scheduler._beat_task = None
    await scheduler.cancel(here.run_id)
    await scheduler.stop()
    ended = await runner.store.get_run(here.run_id)
    assert ended.status is RunStatus.cancelled and ended.attempt == 1
    # Cancelled through this worker while the worker that ran it is gone: not run again.
    lost = await _lost(runner, "again")
    scheduler = Scheduler(runner, max_concurrency=4)
    try:
        await scheduler.cancel(lost)
    finally:
        await scheduler.stop()
    gone = await runner.store.get_run(lost)
    assert gone.status is RunStatus.interrupted and gone.attempt == 1
    assert gone.cancel_requested == "cancelled by request"
    types = [e.type for e in await runner.store.list_events(lost)]
    assert types == [EventType.run_end]


async def test_a_run_asked_to_cancel_elsewhere_ends_instead_of_going_back_at_a_stop(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    from pyflue.scheduler import Scheduler

    write_workflow("again", RETRY_IN_A_BOX)
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=4, poll_interval=3600)  # no cancel scan
    await scheduler.start()
    run = await _running_in_a_box(scheduler, "again")
    # Another worker recorded a cancel; this one stops before it looked for it.
    await runner.store.update_run(run.run_id, RunUpdate(
        extra={"cancel_requested": "cancelled by request"}))
    await scheduler.stop()
    ended = await runner.store.get_run(run.run_id)
    assert ended.status is RunStatus.cancelled and ended.reason == "cancelled by request"
    types = [e.type for e in await runner.store.list_events(run.run_id)]
    assert types[-1] is EventType.run_end and EventType.run_requeued not in types


async def test_a_claimed_run_stopped_before_its_task_begins_still_ends_properly(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    # Admission claims runs in the store, then starts their tasks: a cancel (or a stop) that
    # comes in between must not leave a claimed run `running` with nothing behind it.
    from pyflue.scheduler import Scheduler

    write_workflow("again", RETRY_IN_A_BOX)
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=4)  # not started: no admission loop
    cancelled = await runner.submit("again", {"sleep": 30}, owner=None, source="http")
    stopped = await runner.submit("again", {"sleep": 30}, owner=None, source="http")
    for run in await runner.store.claim_runs(scheduler.worker, 2):
        scheduler._start(run)
    await scheduler.cancel(cancelled.run_id)  # no await in between yields to the new tasks
    await scheduler.stop()
    ended = await runner.store.get_run(cancelled.run_id)
    assert ended.status is RunStatus.cancelled and ended.reason == "cancelled by request"
    back = await runner.store.get_run(stopped.run_id)
    assert back.status is RunStatus.queued and back.attempt == 2
    assert runner.provider.live == {}  # type: ignore[attr-defined]
