"""The warm pool: containers created, hardened and started before any run asks for one.

Pooled containers are made by the provider exactly as a run's (``container_config``), from a
*template* spec: the spec a run gets for an image when its agent asks for nothing special. A
run whose spec matches a template in every field that shapes the container (:func:`pool_key`:
image, user, network, memory, CPUs, pids, sizes, runtime, read-only root, workdir) claims one;
any other run starts cold. A claim is in memory (a deque pop) plus one engine inspect (about
1 ms) so that a container that died in the pool is never handed out; the pool then refills in
the background, at most ``refill_concurrency`` creations at a time so live runs keep the
engine's capacity. A claimed container belongs to its run alone and is removed when the run
ends (the provider does that); the pool never sees it again.

Every pooled container carries :data:`LABEL_POOL` naming the worker that owns the pool
(``host:pid:instance``): the reaper removes those of a worker that is gone, never a live one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ulid import ULID

from pyflue.errors import PyflueError
from pyflue.sandbox.base import PoolFill, SandboxSpec

log = logging.getLogger(__name__)

LABEL_POOL = "dev.pyflue.pool"  # value: the owning worker, host:pid:instance
POOL_RUN_PREFIX = "pool-"  # the placeholder run id of a pooled container (and its name)
SWEEP_SECONDS = 5.0  # how often the pool looks for containers that died while pooled
MAX_BACKOFF_SECONDS = 60.0  # the longest wait after failed refills
# Refills start this long after the last claim: a container start is CPU-heavy, and the run
# that just claimed (or a burst still claiming) runs its first commands meanwhile.
REFILL_DELAY_SECONDS = 0.25
# While runs that claimed from the pool are still running, background engine work (refills,
# and the removal of used containers: lifecycle.py) waits for them to end, this long at most
# after the last claim (or after the removal was asked): a burst of warm runs finishes before
# 20 creations and removals compete with it for the CPUs and the engine.
IN_USE_DEFER_SECONDS = 1.0

PoolKey = tuple[object, ...]


def pool_key(spec: SandboxSpec) -> PoolKey | None:
    """What must match for a run to take a pooled container; None when the spec cannot be
    pooled (environment baked into the container, as egress secrets' placeholders are;
    commands get the run's environment per exec instead). A spec with ``egress`` matches an
    egress template whatever its names: a pooled egress container waits on a network of its
    own that reaches nothing until its run's names are given to the proxy at the claim."""
    if spec.env or spec.egress_secrets:
        return None
    key: PoolKey = (spec.image, spec.user, spec.network, spec.memory, spec.cpus, spec.pids,
                    spec.workspace_size, spec.tmp_size, spec.runtime or "runc",
                    spec.read_only_root, spec.workdir)
    return ("egress", *key) if spec.egress else key


@dataclass(frozen=True)
class Pooled:
    """One started container waiting in the pool (its volume has the same name)."""

    container_id: str
    name: str
    spec: SandboxSpec  # the template it was made from (its run_id is the placeholder)


class PoolPorts:
    """What the pool needs of the engine (the provider gives these; each may raise
    SandboxError subclasses)."""

    def __init__(self, *, create: Callable[[SandboxSpec], Awaitable[tuple[str, str]]],
                 remove: Callable[[str, str], Awaitable[None]],
                 running: Callable[[str], Awaitable[bool]]) -> None:
        self.create = create  # create and start from a template: (container id, name)
        self.remove = remove  # (container id, volume name)
        self.running = running  # whether the container is still running


class _Slot:
    def __init__(self, template: SandboxSpec, size: int) -> None:
        self.template = template
        self.size = size
        self.ready: deque[Pooled] = deque()
        self.starting = 0
        self.failures = 0  # refills failed in a row: backs off (a missing image, the engine)
        self.retry_at = 0.0  # no refill before this time (time.monotonic)

    def fill(self) -> PoolFill:
        return PoolFill(image=self.template.image, size=self.size, ready=len(self.ready),
                        starting=self.starting, egress=bool(self.template.egress))


class WarmPool:
    """Pools of started containers, one per template; see the module docstring."""

    def __init__(self, templates: list[tuple[SandboxSpec, int]], ports: PoolPorts, *,
                 refill_concurrency: int = 2) -> None:
        self._slots: dict[PoolKey, _Slot] = {}
        for template, size in templates:
            key = pool_key(template)
            if key is not None and size > 0:
                self._slots[key] = _Slot(template, size)
        self._ports = ports
        self._gate = asyncio.Semaphore(max(1, refill_concurrency))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._removals: set[asyncio.Task[None]] = set()
        self._refills: set[asyncio.Task[None]] = set()
        self._claimed_at = 0.0  # time.monotonic() of the last claim
        self._in_use = 0  # claimed containers whose runs have not ended (see released)
        self._none_in_use = asyncio.Event()
        self._none_in_use.set()

    # -- the hot path -----------------------------------------------------------------------

    async def claim(self, spec: SandboxSpec) -> Pooled | None:
        """A started container for ``spec``, now this run's alone; None when none matches or
        none is ready (the caller starts one cold, at once). Never waits for a refill."""
        key = pool_key(spec)
        slot = self._slots.get(key) if key is not None and not self._paused else None
        while slot is not None and slot.ready:
            pooled = slot.ready.popleft()
            self._claimed_at = time.monotonic()
            self._wake.set()
            try:
                alive = await self._ports.running(pooled.container_id)
            except PyflueError:
                alive = False
            except BaseException:  # cancelled while checking: it is nobody's, remove it
                self._discard(pooled)
                raise
            if alive:
                self._in_use += 1
                self._none_in_use.clear()
                return pooled
            log.warning("pooled container %s died in the pool; not handing it out",
                        pooled.container_id[:12])
            self._discard(pooled)
        return None

    def released(self) -> None:
        """A claimed container's run ended (the provider tells this once per claim)."""
        self._in_use = max(0, self._in_use - 1)
        if self._in_use == 0:
            self._none_in_use.set()
            self._wake.set()

    async def quiet(self) -> None:
        """Returns once no claimed container's run is still running, or after
        IN_USE_DEFER_SECONDS: background engine work waits for the warm runs under way."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IN_USE_DEFER_SECONDS):
                await self._none_in_use.wait()

    # -- fill, refill, drain ----------------------------------------------------------------

    def start(self) -> None:
        """Starts filling in the background (returns at once)."""
        if self._task is None and self._slots:
            self._task = asyncio.create_task(self._maintain(), name="pyflue-pool")

    async def wait_filled(self, timeout: float) -> bool:
        """Waits until every pool is full (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while any(len(s.ready) < s.size for s in self._slots.values()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def pooled_ids(self) -> list[str]:
        """The ids of the containers ready in the pool now."""
        return [p.container_id for slot in self._slots.values() for p in slot.ready]

    def fills(self) -> list[PoolFill]:
        return [slot.fill() for slot in self._slots.values()]

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stops refilling and drops what is pooled (its containers may be dead, e.g. the
        engine went away); their removal is tried in the background. :meth:`resume` refills."""
        self._paused = True
        for slot in self._slots.values():
            while slot.ready:
                self._discard(slot.ready.popleft())

    def resume(self) -> None:
        """Refills again after :meth:`pause` (e.g. the engine answers again), at once."""
        self._paused = False
        for slot in self._slots.values():
            slot.failures, slot.retry_at = 0, 0.0
        self._wake.set()

    async def drain(self) -> None:
        """Stops refilling and removes every pooled container (and waits for removals)."""
        self._paused = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._refills:  # paused: each one removes what it made instead of pooling it
            await asyncio.gather(*self._refills, return_exceptions=True)
        self.pause()
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    async def _maintain(self) -> None:
        swept = time.monotonic()
        while True:
            if not self._paused:
                self._top_up()
            self._wake.clear()
            now = time.monotonic()
            retries = [s.retry_at - now for s in self._slots.values() if s.retry_at > now]
            if (settle := self._settles_at() - now) > 0:
                retries.append(settle)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min([SWEEP_SECONDS, *retries])):
                    await self._wake.wait()
            if not self._paused and time.monotonic() - swept >= SWEEP_SECONDS:
                await self._sweep()
                swept = time.monotonic()

    def _settles_at(self) -> float:
        """When refills may start: a while after the last claim, and once the warm runs
        under way ended (or IN_USE_DEFER_SECONDS after the last claim, whichever is first)."""
        if self._in_use:
            return self._claimed_at + IN_USE_DEFER_SECONDS
        return self._claimed_at + REFILL_DELAY_SECONDS

    def _top_up(self) -> None:
        now = time.monotonic()
        if now < self._settles_at():
            return  # runs that just claimed, and those still running, go first
        for slot in self._slots.values():
            if slot.retry_at > now:  # refills failed lately: wait before the next try
                continue
            missing = slot.size - len(slot.ready) - slot.starting
            for _ in range(max(0, missing)):
                slot.starting += 1
                task = asyncio.create_task(self._refill(slot))
                self._refills.add(task)
                task.add_done_callback(self._refills.discard)

    async def _refill(self, slot: _Slot) -> None:
        spec = dataclasses.replace(slot.template, run_id=f"{POOL_RUN_PREFIX}{ULID()}".lower(),
                                   workflow="")
        try:
            async with self._gate:  # bounded: live runs' creations are never queued behind us
                if self._paused:
                    return
                # Shielded: a container being made is always either pooled or removed.
                cid, name = await asyncio.shield(self._ports.create(spec))
            pooled = Pooled(container_id=cid, name=name, spec=spec)
            slot.failures = 0
            if self._paused:
                self._discard(pooled)
            else:
                slot.ready.append(pooled)
        except asyncio.CancelledError:
            raise
        except PyflueError as exc:
            slot.failures += 1
            log.warning("could not start a pooled container from %s: %s", spec.image, exc)
            # An engine or image problem: do not spin (1 s, 2 s, 4 s... up to a minute)
            backoff = min(2.0 ** (slot.failures - 1), MAX_BACKOFF_SECONDS)
            slot.retry_at = time.monotonic() + backoff
        finally:
            slot.starting -= 1
            self._wake.set()

    async def _sweep(self) -> None:
        for slot in self._slots.values():
            for pooled in list(slot.ready):
                try:
                    alive = await self._ports.running(pooled.container_id)
                except PyflueError:
                    alive = False
                if not alive and pooled in slot.ready:
                    slot.ready.remove(pooled)
                    self._discard(pooled)
                    self._wake.set()

    def _discard(self, pooled: Pooled) -> None:
        task = asyncio.create_task(self._remove(pooled))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, pooled: Pooled) -> None:
        try:
            await self._ports.remove(pooled.container_id, pooled.name)
        except PyflueError as exc:  # the reaper removes it once this worker is gone
            log.warning("could not remove pooled container %s: %s", pooled.container_id[:12],
                        exc)

