"""The engine's word on one run's container: running or not, and why it stopped.

Whatever channel carries a container's commands (:mod:`.channel`), only the engine knows that
the container itself stopped, was OOM-killed or was removed; the sandbox asks it here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pyflue._bridge import ThreadBridge
from pyflue.errors import SandboxError, SandboxGone
from pyflue.sandbox.base import Usage
from pyflue.sandbox.docker import cgroup
from pyflue.sandbox.docker.cgroup import CgroupFiles
from pyflue.sandbox.docker.engine import translated


@dataclass(frozen=True)
class ContainerState:
    """A container's state as the engine reports it (``docker inspect``'s ``State``)."""

    running: bool
    oom_killed: bool = False
    removed: bool = False
    exit_code: int | None = None


# What the sandbox assumes when the engine could not be asked: still running, so a command
# is left to end (or to time out) by itself.
UNKNOWN = ContainerState(running=True)


class ContainerProbe:
    """Inspects one container on the thread bridge."""

    def __init__(self, api: Any, bridge: ThreadBridge, container_id: str) -> None:
        self._api = api  # docker-py's low-level APIClient
        self._bridge = bridge
        self.container_id = container_id
        self._located = False
        self._files: CgroupFiles | None = None
        self._mountpoint: str | None = None

    async def usage(self, volume: str | None, cpus: float | None,
                    workdir: str | None = None) -> Usage | None:
        """What the container uses now: from its cgroup files where the engine is on this
        machine (:mod:`.cgroup`, microseconds), else a one-shot ``docker stats`` (up to a
        second); the workspace volume's figures when its mountpoint is here. None when
        neither answers (the container is gone). Never raises."""
        if not self._located:
            # Without asking the engine where the engine's own cgroup layout is the usual one
            # (the container's first process then gives its workspace, through /proc); else
            # one inspect of the container and one of its volume.
            self._files, self._mountpoint = CgroupFiles.of_container(self.container_id, workdir)
            self._located = self._files is not None
        if not self._located:
            await self._bridge.call(self._locate, volume)
        if self._files is None:
            return await self._bridge.call(self._stats, cpus)
        try:
            now = self._files.read()
        except (OSError, ValueError, KeyError):
            return None
        used, total = (cgroup.disk(self._mountpoint) if self._mountpoint else None) or (
            None, None)
        return Usage(cpu_count=cpus or float(os.cpu_count() or 1), cpu_ns=now.cpu_ns,
                     mem_used=now.mem_used, mem_total=now.mem_total or _host_memory(),
                     mem_peak=now.mem_peak, disk_used=used, disk_total=total,
                     net_rx=now.net_rx, net_tx=now.net_tx)

    def _locate(self, volume: str | None) -> None:
        self._located = True
        try:
            with translated("inspecting the run's container", container=self.container_id):
                pid = (self._api.inspect_container(self.container_id).get("State") or {}).get(
                    "Pid")
            if volume is not None:
                with translated("inspecting the run's volume"):
                    self._mountpoint = self._api.inspect_volume(volume).get("Mountpoint")
        except SandboxError:
            return
        if pid:
            self._files = CgroupFiles.find(int(pid))

    def _stats(self, cpus: float | None) -> Usage | None:
        try:
            with translated("reading the run's container stats", container=self.container_id):
                raw: dict[str, Any] = self._api.stats(self.container_id, stream=False,
                                                      one_shot=True)
        except SandboxError:
            return None
        found = cgroup.disk(self._mountpoint) if self._mountpoint else None
        used, total = found or (None, None)
        return usage_of(raw, cpus, used, total)

    async def state(self) -> ContainerState:
        """The container's state: ``removed`` when it no longer exists, :data:`UNKNOWN` when
        the engine did not answer. Never raises a SandboxError."""
        return await self._bridge.call(self._state)

    def _state(self) -> ContainerState:
        try:
            with translated("inspecting the run's container", container=self.container_id):
                raw: dict[str, Any] = self._api.inspect_container(self.container_id)
        except SandboxGone:
            return ContainerState(running=False, removed=True)
        except SandboxError:
            return UNKNOWN
        state = raw.get("State") or {}
        return ContainerState(
            running=bool(state.get("Running", False)),
            oom_killed=bool(state.get("OOMKilled")),
            exit_code=state.get("ExitCode"),
        )


def usage_of(raw: dict[str, Any], cpus: float | None, disk_used: int | None,
             disk_total: int | None) -> Usage:
    """A :class:`Usage` from ``docker stats`` (cgroup v1 or v2) and the workspace's figures."""
    cpu = raw.get("cpu_stats") or {}
    memory = raw.get("memory_stats") or {}
    stats = memory.get("stats") or {}
    cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    rx = tx = None
    for net in (raw.get("networks") or {}).values():
        rx = (rx or 0) + int(net.get("rx_bytes", 0))
        tx = (tx or 0) + int(net.get("tx_bytes", 0))
    return Usage(
        cpu_count=cpus or float(cpu.get("online_cpus") or 1),
        cpu_ns=int((cpu.get("cpu_usage") or {}).get("total_usage", 0)),
        mem_used=max(int(memory.get("usage", 0)) - int(cache), 0),
        mem_total=int(memory.get("limit", 0)),
        mem_peak=memory.get("max_usage"),
        disk_used=disk_used, disk_total=disk_total, net_rx=rx, net_tx=tx,
    )


def _host_memory() -> int:
    """This machine's memory, for a container without a memory limit."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
