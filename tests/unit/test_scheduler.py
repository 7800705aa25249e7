"""The scheduler's bookkeeping on the library's fakes: slots, orphans, waiters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pyflue.models import EventType, Run, RunStatus, new_run_id, utcnow
from pyflue.scheduler import Scheduler
from pyflue.store import MemoryStore
from pyflue.testing import fake_runner
from tests.conftest import WriteWorkflow

NAP = """
import asyncio
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    await ctx.init(agent)
    await asyncio.sleep(ctx.payload.get("sleep", 0))
    return "slept"
"""


class SlowClaims(MemoryStore):
    """A store whose claims take a while, as a busy database's would, and that signals no
    queue change (as when another worker's NOTIFY has not arrived yet)."""

    async def claim_runs(self, owner: str, limit: int) -> list[Run]:
        await asyncio.sleep(0.05)
        return await super().claim_runs(owner, limit)

    def on_queue_change(self, callback: Any) -> None:
        return None


async def test_submits_during_a_claim_never_go_past_the_concurrency_limit(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("nap", NAP)
    store = SlowClaims()
    runner = fake_runner(project, store=store)
    scheduler = Scheduler(runner, max_concurrency=2)
    await scheduler.start()
    try:
        await asyncio.sleep(0.1)  # admission found nothing: new runs may start at once
        for _ in range(2):  # queued by another worker, its signal not here yet
            await store.create_run(Run(run_id=new_run_id("nap"), workflow="nap",
                                       status=RunStatus.queued, payload={"sleep": 1},
                                       created_at=utcnow(), source="http"))
        scheduler._wake.set()  # admission looks (as on a poll, or when a run ends) ...
        await asyncio.sleep(0.01)  # ... and while its claim is in flight, a submit arrives
        await scheduler.submit("nap", {"sleep": 1})
        await asyncio.sleep(0.1)
        assert len(scheduler._tasks) == 2
        assert len(await store.list_runs(status=RunStatus.running)) == 2
    finally:
        await scheduler.stop()


async def test_a_run_left_running_with_no_task_is_taken_back_and_keeps_the_lease(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("nap", NAP)
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=2)
    await scheduler.start()
    # As when the end of a run could not be written (the store failed under it).
    orphan = await runner.store.create_run(Run(
        run_id=new_run_id("nap"), workflow="nap", status=RunStatus.running,
        owner=scheduler.worker, created_at=utcnow(), source="http"))
    try:
        await scheduler.stop()  # it cannot sign off while one of its runs looks alive
        assert await runner.store.worker_age(scheduler.worker) is not None
        again = Scheduler(runner, max_concurrency=2)
        again.worker = scheduler.worker  # the same process, its next reaper pass
        await again._reap()
    finally:
        await again.stop()
    ended = await runner.store.get_run(orphan.run_id)
    assert ended.status is RunStatus.interrupted
    assert ended.reason == "the worker running it could not record its end"
    assert [e.type for e in await runner.store.list_events(orphan.run_id)] == [
        EventType.run_end]
    assert await runner.store.worker_age(scheduler.worker) is None  # signed off now


async def test_outcomes_are_kept_only_for_waiters(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("nap", NAP)
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=4)
    await scheduler.start()
    try:
        unwatched = [(await scheduler.submit("nap", {}))[0] for _ in range(3)]
        watched, _ = await scheduler.submit("nap", {"sleep": 0.2})
        final = await scheduler.wait(watched.run_id)
        for run in unwatched:
            assert (await scheduler.wait(run.run_id)).status is RunStatus.completed
    finally:
        await scheduler.stop()
    assert final.status is RunStatus.completed and final.result == "slept"
    held: dict[str, Any] = scheduler._final
    assert held == {} and scheduler._waiters == {}
