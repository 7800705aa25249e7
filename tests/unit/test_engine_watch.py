"""The engine watch and what the scheduler and /health make of it, on the library's fakes (an
engine whose ``ping`` the test turns off and on). The real engine killed and started again:
tests/integration/test_engine_loss.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from pyflue.api.app import create_app
from pyflue.engine_watch import EngineState, EngineWatch
from pyflue.errors import EngineUnavailable
from pyflue.models import Run, RunStatus, new_run_id, utcnow
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.scheduler import Scheduler
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore
from pyflue.testing import fake_runner
from tests.conftest import WriteWorkflow

QUICK = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    await ctx.init(agent)
    return "done"
"""
LOST = """
from pyflue.errors import EngineUnavailable
async def run(ctx):
    raise EngineUnavailable("Docker engine not reachable at unix:///nowhere.sock")
"""


class Engine:
    """A ping that answers while ``answering``, and says why not otherwise."""

    def __init__(self) -> None:
        self.answering = True
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if not self.answering:
            raise EngineUnavailable("Docker engine not reachable at unix:///test.sock: is "
                                    "dockerd running?", hint="try `pyflue doctor`")


class PingingProvider(FakeSandboxProvider):
    """The fake provider with an engine that can go away."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.ping = engine.ping


def _watch(engine: Engine) -> EngineWatch:
    return EngineWatch(engine.ping, engine="unix:///test.sock", up_interval=0.05,
                       down_interval=0.02, ping_timeout=1)


async def _until(what: str, check: object, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.01)):
        if callable(check) and check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {seconds:g} s")


async def test_a_failure_marks_the_engine_down_and_a_ping_brings_it_back() -> None:
    engine = Engine()
    watch = _watch(engine)
    seen: list[EngineState] = []

    async def listener(state: EngineState) -> None:
        seen.append(state)

    watch.subscribe(listener)
    await watch.start()
    try:
        assert watch.up and watch.down_for() == 0
        engine.answering = False
        watch.failed("the run's exec found no engine")
        assert not watch.up and watch.state.reason == "the run's exec found no engine"
        await _until("the down notice", lambda: len(seen) == 1)
        assert seen[0].up is False and seen[0].engine == "unix:///test.sock"
        await _until("a ping while down", lambda: engine.pings >= 3)
        assert not watch.up and "dockerd running?" in (watch.state.reason or "")
        assert "pyflue doctor" not in (watch.state.reason or "")  # the public message
        engine.answering = True
        await _until("the up notice", lambda: len(seen) == 2)
        assert watch.up and seen[1].up is True and seen[1].reason is None
    finally:
        await watch.stop()


async def test_the_ping_notices_a_death_while_nothing_runs_and_a_hung_engine_is_down() -> None:
    engine = Engine()
    watch = _watch(engine)
    await watch.start()
    try:
        engine.answering = False
        await _until("the ping noticing", lambda: not watch.up)
    finally:
        await watch.stop()

    async def hangs() -> None:
        await asyncio.sleep(60)

    hung = EngineWatch(hangs, engine="tcp://slow:2375", ping_timeout=0.05)
    state = await hung.check()
    assert not state.up and "did not answer a ping within 0.05 s" in (state.reason or "")


async def test_a_failing_subscriber_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine()
    watch = _watch(engine)
    heard: list[bool] = []

    async def broken(state: EngineState) -> None:
        raise RuntimeError("pool is broken")

    async def fine(state: EngineState) -> None:
        heard.append(state.up)

    watch.subscribe(broken)
    unsubscribe = watch.subscribe(fine)
    await watch.start()
    try:
        with caplog.at_level(logging.ERROR, logger="pyflue.engine_watch"):
            engine.answering = False
            watch.failed("gone")
            await _until("the notice", lambda: heard == [False])
        assert "subscriber failed on down" in caplog.text
        unsubscribe()
        engine.answering = True
        await _until("up again", lambda: watch.up)
        await asyncio.sleep(0.05)
        assert heard == [False]  # unsubscribed
    finally:
        await watch.stop()


async def test_while_the_engine_is_down_runs_stay_queued_and_start_once_it_is_back(
    project: Path, write_workflow: WriteWorkflow,
) -> None:
    write_workflow("quick", QUICK)
    engine = Engine()
    watch = _watch(engine)
    await watch.start()
    scheduler = Scheduler(fake_runner(project), max_concurrency=2, poll_interval=0.02,
                          engine=watch, engine_wait=60)
    await scheduler.start()
    try:
        engine.answering = False
        watch.failed("gone")
        run, _ = await scheduler.submit("quick", {})
        assert run.status is RunStatus.queued  # not taken, though a slot is free
        await asyncio.sleep(0.2)  # ten admission looks
        assert (await scheduler.store.get_run(run.run_id)).status is RunStatus.queued
        engine.answering = True
        final = await asyncio.wait_for(scheduler.wait(run.run_id), 5)
        assert final.status is RunStatus.completed and final.result == "done"
    finally:
        await scheduler.stop()
        await watch.stop()


async def test_a_run_that_waited_longer_than_the_engine_wait_fails_naming_the_engine(
    project: Path, write_workflow: WriteWorkflow,
) -> None:
    write_workflow("quick", QUICK)
    engine = Engine()
    watch = _watch(engine)
    await watch.start()
    runner = fake_runner(project)
    scheduler = Scheduler(runner, max_concurrency=2, poll_interval=0.02, engine=watch,
                          engine_wait=0.3)
    await scheduler.start()
    try:
        engine.answering = False
        watch.failed("gone")
        run, _ = await scheduler.submit("quick", {})
        # A `pyflue run` process's own queued run is its business, not this worker's.
        cli = await runner.store.create_run(Run(
            run_id=new_run_id("quick"), workflow="quick", status=RunStatus.queued,
            owner="elsewhere:1:x", created_at=utcnow(), source="cli"))
        final = await asyncio.wait_for(scheduler.wait(run.run_id), 5)
        assert final.status is RunStatus.failed and final.error is not None
        assert final.error.type == "engine_unavailable"
        assert "Docker engine at unix:///test.sock" in final.error.message
        assert "PYFLUE_ENGINE_WAIT (0.3 s)" in final.error.message
        assert (await runner.store.get_run(cli.run_id)).status is RunStatus.queued
    finally:
        await scheduler.stop()
        await watch.stop()


async def test_a_run_that_ends_engine_unavailable_marks_the_engine_down(
    project: Path, write_workflow: WriteWorkflow,
) -> None:
    write_workflow("lost", LOST)
    engine = Engine()
    watch = EngineWatch(engine.ping, engine="unix:///test.sock", up_interval=60)
    await watch.start()
    scheduler = Scheduler(fake_runner(project), max_concurrency=2, poll_interval=0.02,
                          engine=watch)
    await scheduler.start()
    try:
        engine.answering = False  # the slow ping has not seen it: the run's failure tells
        run, _ = await scheduler.submit("lost", {})
        final = await asyncio.wait_for(scheduler.wait(run.run_id), 5)
        assert final.error is not None and final.error.type == "engine_unavailable"
        assert not watch.up
        # the run's message, unless a ping (1 s later) has replaced it with its own
        assert any(where in (watch.state.reason or "") for where in ("nowhere", "test.sock"))
    finally:
        await scheduler.stop()
        await watch.stop()


async def test_health_is_503_with_a_reason_while_the_engine_is_down(project: Path) -> None:
    engine = Engine()
    settings = Settings(project_dir=project, server=ServerSettings(engine_wait=120))
    app = create_app(settings, store=MemoryStore(), provider=PingingProvider(engine))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ok = await client.get("/health")
            assert ok.status_code == 200 and ok.json()["ok"] is True
            assert ok.json()["engine"]["up"] is True and ok.json()["reason"] is None
            engine.answering = False
            app.state.engine.failed("gone")
            down = await client.get("/health")
            assert down.status_code == 503
            body = down.json()
            assert body["ok"] is False and body["engine"]["up"] is False
            assert "does not answer" in body["reason"] and "120 s" in body["reason"]
            assert {"version", "running", "max_concurrency"} <= set(body)
            # Where the engine is, and its words, are for the operator (no token here).
            assert "test.sock" not in down.text and body["engine"]["reason"] is None
            engine.answering = True
            await app.state.engine.check()
            assert (await client.get("/health")).status_code == 200


async def test_in_debug_mode_health_says_where_the_engine_is_and_what_it_said(
    project: Path,
) -> None:
    engine = Engine()
    engine.answering = False
    settings = Settings(project_dir=project, server=ServerSettings(debug=True))
    app = create_app(settings, store=MemoryStore(), provider=PingingProvider(engine))
    async with app.router.lifespan_context(app):  # started with the engine down
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            down = await client.get("/health")
    assert down.status_code == 503
    body = down.json()
    assert "the Docker engine at " in body["reason"] and "dockerd running?" in body["reason"]
    assert "dockerd running?" in body["engine"]["reason"]


async def test_a_provider_with_on_engine_is_told_of_every_change(project: Path) -> None:
    """The hook a warm pool uses: down (stop refilling, forget the pooled containers), then
    up (rebuild)."""
    engine = Engine()
    told: list[bool] = []

    class Pooled(PingingProvider):
        async def on_engine(self, state: EngineState) -> None:
            told.append(state.up)

    app = create_app(Settings(project_dir=project), store=MemoryStore(), provider=Pooled(engine))
    async with app.router.lifespan_context(app):
        watch: EngineWatch = app.state.engine
        engine.answering = False
        watch.failed("gone")
        engine.answering = True
        await watch.check()
        await _until("both notices", lambda: told == [False, True])


async def test_without_an_engine_to_watch_health_says_so(project: Path) -> None:
    app = create_app(Settings(project_dir=project), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = (await client.get("/health")).json()
    assert body["ok"] is True and body["engine"] is None
