"""The scheduler's bookkeeping on the library's fakes: slots, orphans, waiters."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pyflue.errors import StoreError
from pyflue.events import EventType
from pyflue.models import Run, RunStatus, new_run_id, utcnow
from pyflue.scheduler import IDLE_CLAIM_EVERY, Scheduler
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore, RunUpdate
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

    async def claim_runs(self, owner: str, limit: int, exclude: Any = (),
                         only: Any = None) -> list[Run]:
        await asyncio.sleep(0.05)
        return await super().claim_runs(owner, limit, exclude, only)

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
        scheduler._idle_looks = IDLE_CLAIM_EVERY - 1  # its next look is the safety poll ...
        scheduler._wake.set()
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


class CutOff(MemoryStore):
    """A store this worker cannot reach for its heartbeats while ``down`` (a partition)."""

    down = False

    async def heartbeat(self, worker: str) -> None:
        if self.down:
            raise StoreError("the store is unreachable")
        await super().heartbeat(worker)


async def test_a_worker_cut_off_past_its_lease_stops_the_runs_taken_back_from_it(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("nap", NAP)
    store = CutOff()
    settings = Settings(project_dir=project, server=ServerSettings(worker_lease=3))
    runner = fake_runner(project, store=store, settings=settings)
    scheduler = Scheduler(runner, max_concurrency=2)
    await scheduler.start()
    try:
        run, _ = await scheduler.submit("nap", {"sleep": 60})
        await asyncio.sleep(0.2)
        assert runner.provider.live  # type: ignore[attr-defined]
        store.down = True
        # Meanwhile another worker took this one for lost and put the run back in the queue.
        await store.update_run(run.run_id, RunUpdate(
            status=RunStatus.queued, extra={"owner": None, "attempt": 2}))
        await asyncio.sleep(4)
        assert scheduler.running == 1  # cut off: it cannot know yet
        store.down = False
        # Back in touch: the stale attempt is stopped (its container removed, its end here
        # dropped); the run's next attempt may then be taken by any worker, this one too.
        for _ in range(50):
            types = [e.type for e in await store.list_events(run.run_id)]
            if EventType.container_removed in types:
                break
            await asyncio.sleep(0.1)
        assert EventType.container_removed in types and EventType.run_end not in types
        assert (await store.get_run(run.run_id)).attempt == 2
        for _ in range(50):
            starts = await store.list_events(run.run_id, types=[EventType.run_start])
            if len(starts) == 2:
                break
            await asyncio.sleep(0.1)
        assert [e.data["attempt"] for e in starts] == [1, 2]  # attempt 2, once, here
    finally:
        await scheduler.stop()
