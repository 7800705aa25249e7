"""The warm pool's bookkeeping over an in-memory engine (tests/integration/test_pool.py runs it
on the real one): what matches, what is handed out once, what is never handed out, and the
settings that size it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pyflue.errors import EngineUnavailable, InvalidSettings
from pyflue.sandbox.base import SandboxSpec
from pyflue.sandbox.docker.pool import (
    IN_USE_DEFER_SECONDS,
    REFILL_DELAY_SECONDS,
    PoolPorts,
    WarmPool,
    pool_key,
)
from pyflue.settings import PoolSettings, load_settings, pool_sizes

TEMPLATE = SandboxSpec(run_id="pool", workflow="", image="pyflue/sandbox:latest")


class Engine:
    """Containers as a dict: id -> running."""

    def __init__(self) -> None:
        self.running: dict[str, bool] = {}
        self.removed: list[str] = []
        self.created = 0
        self.down = False

    async def create(self, spec: SandboxSpec) -> tuple[str, str]:
        if self.down:
            raise EngineUnavailable("the engine is down")
        self.created += 1
        cid = f"c{self.created}"
        self.running[cid] = True
        return cid, spec.run_id

    async def remove(self, cid: str, volume: str) -> None:
        self.running.pop(cid, None)
        self.removed.append(cid)

    async def is_running(self, cid: str) -> bool:
        return self.running.get(cid, False)

    def ports(self) -> PoolPorts:
        return PoolPorts(create=self.create, remove=self.remove, running=self.is_running)


async def _pool(engine: Engine, size: int) -> WarmPool:
    pool = WarmPool([(TEMPLATE, size)], engine.ports())
    pool.start()
    assert await pool.wait_filled(5)
    return pool


def test_a_spec_matches_a_template_whatever_its_run() -> None:
    run = dataclasses.replace(TEMPLATE, run_id="workflow:x:1", workflow="x")
    assert pool_key(run) == pool_key(TEMPLATE)


@pytest.mark.parametrize("change", [{"image": "python:3.12"}, {"memory": "4g"},
                                    {"network": "bridge"}, {"runtime": "runsc"}, {"pids": 99},
                                    {"cpus": 2.0}, {"read_only_root": False}])
def test_a_spec_that_shapes_its_container_otherwise_does_not_match(change: dict) -> None:
    assert pool_key(dataclasses.replace(TEMPLATE, **change)) != pool_key(TEMPLATE)


def test_a_spec_with_environment_in_its_container_is_never_pooled() -> None:
    assert pool_key(dataclasses.replace(TEMPLATE, env={"A": "1"})) is None


async def test_a_claimed_container_is_handed_out_once_and_the_pool_refills() -> None:
    engine = Engine()
    pool = await _pool(engine, 2)
    first, second = await pool.claim(TEMPLATE), await pool.claim(TEMPLATE)
    assert first and second and first.container_id != second.container_id
    assert await pool.wait_filled(5)
    assert not {first.container_id, second.container_id} & set(pool.pooled_ids())
    await pool.drain()


async def test_refills_wait_for_the_warm_runs_under_way_then_start_when_they_end() -> None:
    engine = Engine()
    pool = await _pool(engine, 2)
    claimed = [await pool.claim(TEMPLATE) for _ in range(2)]
    await asyncio.sleep(REFILL_DELAY_SECONDS + 0.2)
    assert engine.created == 2  # both runs still running: no refill yet
    pool.released()
    await asyncio.sleep(0.1)
    assert engine.created == 2  # one still running
    pool.released()
    assert await pool.wait_filled(2) and engine.created == 4
    assert all(claimed)
    await pool.drain()


async def test_a_run_that_never_ends_holds_refills_and_removals_back_a_bounded_while() -> None:
    engine = Engine()
    pool = await _pool(engine, 1)
    assert await pool.claim(TEMPLATE) is not None  # and never released
    started = asyncio.get_running_loop().time()
    await pool.quiet()
    assert IN_USE_DEFER_SECONDS - 0.05 <= asyncio.get_running_loop().time() - started < 5
    assert await pool.wait_filled(IN_USE_DEFER_SECONDS + 2) and engine.created == 2
    await pool.drain()


async def test_quiet_returns_as_soon_as_the_last_warm_run_ends() -> None:
    engine = Engine()
    pool = await _pool(engine, 1)
    assert await pool.quiet() is None  # nothing claimed: at once
    assert await pool.claim(TEMPLATE) is not None
    waiting = asyncio.create_task(pool.quiet())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    pool.released()
    await asyncio.wait_for(waiting, 0.2)
    await pool.drain()


async def test_an_empty_pool_answers_none_at_once_instead_of_waiting() -> None:
    engine = Engine()
    pool = await _pool(engine, 1)
    assert await pool.claim(TEMPLATE) is not None
    engine.down = True  # no refill can come
    assert await asyncio.wait_for(pool.claim(TEMPLATE), 0.5) is None
    await pool.drain()


async def test_a_container_that_died_in_the_pool_is_never_handed_out() -> None:
    engine = Engine()
    pool = await _pool(engine, 2)
    dead = pool.pooled_ids()[0]
    engine.running[dead] = False
    claimed = [await pool.claim(TEMPLATE) for _ in range(2)]
    assert dead not in [c.container_id for c in claimed if c]
    await pool.drain()
    assert dead in engine.removed


async def test_another_spec_gets_nothing_from_the_pool() -> None:
    pool = await _pool(Engine(), 1)
    assert await pool.claim(dataclasses.replace(TEMPLATE, memory="4g")) is None
    await pool.drain()


async def test_pause_drops_what_is_pooled_and_resume_rebuilds_it() -> None:
    engine = Engine()
    pool = await _pool(engine, 2)
    before = pool.pooled_ids()
    pool.pause()
    assert pool.pooled_ids() == [] and await pool.claim(TEMPLATE) is None
    pool.resume()
    assert await pool.wait_filled(5)
    assert not set(before) & set(pool.pooled_ids())
    await pool.drain()
    assert set(before) <= set(engine.removed) and engine.running == {}


async def test_fills_say_size_ready_and_starting() -> None:
    pool = await _pool(Engine(), 2)
    [fill] = pool.fills()
    assert (fill.image, fill.size, fill.ready, fill.starting) == (TEMPLATE.image, 2, 2, 0)
    await pool.drain()


def test_pool_images_read_as_image_sizes() -> None:
    assert pool_sizes("python:3.12=4, node:20=1") == {"python:3.12": 4, "node:20": 1}
    assert PoolSettings(size=2, images="node:20=0,a=1").sizes("img") == {"img": 2, "a": 1}
    assert PoolSettings(size=0).sizes("img") == {}


def test_a_bad_pool_setting_names_the_variable_and_an_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYFLUE_POOL_IMAGES", "python:3.12")
    monkeypatch.setenv("PYFLUE_POOL_SIZE", "-1")
    with pytest.raises(InvalidSettings) as caught:
        load_settings()
    text = str(caught.value)
    assert "PYFLUE_POOL_IMAGES='python:3.12'" in text and "python:3.12=4,node:20=1" in text
    assert "PYFLUE_POOL_SIZE='-1'" in text
