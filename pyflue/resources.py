"""Per-run resource use: the run's container sampled while it runs, and a summary at its end.

A :class:`ResourceMeter` reads the sandbox's :meth:`~pyflue.sandbox.base.Measured.usage`
(one-shot ``docker stats`` for a Docker container, about 6 ms on the thread bridge) every
``interval`` seconds from the moment the container is ready, and once more just before the
container is removed, so even a run shorter than one interval has its figures. Samples have
E2B's shape (``timestamp, cpuCount, cpuUsedPct, memUsed, memTotal, diskUsed, diskTotal``); the
store keeps them (every :data:`PERSIST_EVERY` samples while the run lives, and at its end) and
``GET /runs/{run_id}/metrics`` serves them. The meter is also a run watch
(:mod:`pyflue.observe`): it counts the bytes the run's file operations copy in and out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pyflue.events import EventData, FileOp, FileRead, FileWrite
from pyflue.models import ResourceSummary, Run, utcnow
from pyflue.sandbox.base import Measured, Usage

log = logging.getLogger(__name__)

# The most samples kept per run: past it every other one is dropped (the series keeps its
# whole span at half the resolution), so a long run's samples stay small.
MAX_SAMPLES = 2000
# While a run lives its samples are stored every this many samples, for the other workers'
# `GET /runs/{run_id}/metrics` (the one running it answers from memory).
PERSIST_EVERY = 15
# The longest the last sample, taken as the run ends, may take (seconds).
FINAL_SAMPLE_TIMEOUT = 0.25


class ResourceSample(BaseModel):
    """One sample of a run container's resource use, as E2B's sandbox metrics have it."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, serialize_by_alias=True)

    timestamp: datetime = Field(description="when it was taken (UTC)")
    cpu_count: float = Field(alias="cpuCount", description="CPUs the container may use")
    cpu_used_pct: float = Field(
        alias="cpuUsedPct", description="CPU used since the previous sample, in percent of "
                                        "`cpuCount` CPUs (0-100)")
    mem_used: int = Field(alias="memUsed", description="memory in use, bytes")
    mem_total: int = Field(alias="memTotal", description="the memory limit, bytes")
    disk_used: int | None = Field(alias="diskUsed", description="what the workspace holds, "
                                  "bytes (`null` when the engine is not on this machine)")
    disk_total: int | None = Field(alias="diskTotal", description="the workspace's size, "
                                   "bytes (`null` as `diskUsed`)")


Persist = Callable[[list[dict[str, Any]]], Awaitable[None]]


class ResourceMeter:
    """Samples one run's sandbox; counts its file bytes; sums it all up at the end."""

    def __init__(self, interval: float, persist: Persist | None = None) -> None:
        self.interval = interval
        self.samples: list[ResourceSample] = []
        self._persist = persist
        self._box: Measured | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, Usage] | None = None  # loop time and reading of the previous
        self._peak: int | None = None
        self._disk_peak: int | None = None
        self._final: Usage | None = None
        self.file_bytes_in = 0
        self.file_bytes_out = 0

    # -- the run watch -------------------------------------------------------------------------

    def event(self, data: EventData, clean: Mapping[str, Any], at: datetime) -> None:
        if isinstance(data, FileWrite):
            self.file_bytes_in += data.bytes
        elif isinstance(data, FileRead):
            self.file_bytes_out += data.bytes
        elif isinstance(data, FileOp) and data.bytes:
            if data.op == "upload":
                self.file_bytes_in += data.bytes
            elif data.op == "download":
                self.file_bytes_out += data.bytes

    def store_write(self, op: str, seconds: float) -> None:
        pass

    def ended(self, run: Run) -> None:
        pass

    # -- sampling ------------------------------------------------------------------------------

    def attach(self, box: object) -> None:
        """Starts sampling ``box`` (a sandbox that can say what it uses; others are not
        sampled), if sampling is on."""
        if self.interval <= 0 or not isinstance(box, Measured) or self._box is not None:
            return
        self._box = box
        self._task = asyncio.create_task(self._loop(), name="pyflue-resources")

    async def stop(self) -> None:
        """Stops sampling after one last sample (call it while the container still exists)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # Bounded: an engine that answers slowly (docker stats where the cgroup files cannot
        # be read) must not hold the run's end.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._take(), FINAL_SAMPLE_TIMEOUT)

    async def _loop(self) -> None:
        while True:
            await self._take()
            if self._persist is not None and len(self.samples) % PERSIST_EVERY == 0:
                try:
                    await self._persist(self.wire())
                except Exception as exc:  # the next try, or the run's end, stores them
                    log.warning("storing resource samples failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def _take(self) -> None:
        assert self._box is not None
        usage = await self._box.usage()
        if usage is None:
            return
        now = asyncio.get_running_loop().time()
        pct = 0.0
        if self._last is not None and now > self._last[0]:
            used = (usage.cpu_ns - self._last[1].cpu_ns) / 1e9
            pct = max(0.0, min(100.0, 100 * used / ((now - self._last[0]) * usage.cpu_count)))
        self._last = (now, usage)
        self._final = usage
        peak = max(usage.mem_used, usage.mem_peak or 0)
        self._peak = peak if self._peak is None else max(self._peak, peak)
        if usage.disk_used is not None:
            self._disk_peak = max(self._disk_peak or 0, usage.disk_used)
        self.samples.append(ResourceSample(
            timestamp=utcnow(), cpu_count=usage.cpu_count, cpu_used_pct=round(pct, 2),
            mem_used=usage.mem_used, mem_total=usage.mem_total, disk_used=usage.disk_used,
            disk_total=usage.disk_total))
        if len(self.samples) > MAX_SAMPLES:
            self.samples = self.samples[::2]

    def wire(self) -> list[dict[str, Any]]:
        """The samples in their JSON form (E2B's names)."""
        return [sample.model_dump(mode="json") for sample in self.samples]

    def summary(self) -> ResourceSummary | None:
        """The run's resource use, or None when its sandbox was never sampled."""
        final = self._final
        if final is None:
            return None
        return ResourceSummary(
            samples=len(self.samples), peak_memory_bytes=self._peak,
            memory_limit_bytes=final.mem_total, cpu_seconds=round(final.cpu_ns / 1e9, 3),
            disk_used_bytes=self._disk_peak, disk_total_bytes=final.disk_total,
            bytes_in=final.net_rx, bytes_out=final.net_tx,
            file_bytes_in=self.file_bytes_in, file_bytes_out=self.file_bytes_out,
        )


def parse_samples(raw: list[dict[str, Any]]) -> list[ResourceSample]:
    """Samples as the store keeps them."""
    return [ResourceSample.model_validate(item) for item in raw]
