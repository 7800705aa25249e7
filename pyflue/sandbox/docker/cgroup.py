"""A container's resource use read straight from its cgroup files, where the engine is local.

``docker stats`` answers a one-shot request at once only the first time: later ones wait for
the engine's next one-second collection (about 0.8 s here), which would hold a run's end and a
bridge thread per sample. The kernel's own files say the same in microseconds: the cgroup of
the container's first process (``/proc/<pid>/cgroup``, cgroup v1 or v2) and its network
namespace's counters (``/proc/<pid>/net/dev``). Where they cannot be read (a remote engine, a
sandboxed runtime whose processes are not the host's), :meth:`CgroupFiles.find` says None and
the probe asks the engine instead.

These are reads of a few bytes from kernel memory (sysfs and procfs, never a device), done on
the event loop: a thread hop would cost more than the read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")


def _read(path: Path) -> str:
    return path.read_text().strip()


def _stat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


@dataclass(frozen=True)
class Reading:
    cpu_ns: int
    mem_used: int
    mem_total: int | None
    mem_peak: int | None
    net_rx: int
    net_tx: int


@dataclass(frozen=True)
class CgroupFiles:
    """Where one container's figures are: its memory and CPU cgroup folders (one for v2)."""

    pid: int
    memory: Path
    cpu: Path
    v2: bool

    @classmethod
    def of_container(cls, container_id: str, workdir: str | None
                     ) -> tuple[CgroupFiles | None, str | None]:
        """The files of a container in the engine's default cgroup layout (cgroupfs
        ``docker/<id>``, or systemd's ``docker-<id>.scope``), found without asking the engine,
        and where its ``workdir`` is seen from here (``/proc/<pid>/root``); (None, None)
        elsewhere."""
        for folder in (ROOT / "memory" / "docker" / container_id,
                       ROOT / "system.slice" / f"docker-{container_id}.scope",
                       ROOT / "docker" / container_id):
            try:
                pid = int(_read(folder / "cgroup.procs").split()[0])
            except (OSError, ValueError, IndexError):
                continue
            found = cls.find(pid)
            if found is not None:
                seen = f"/proc/{pid}/root{workdir}" if workdir else None
                return found, seen
        return None, None

    @classmethod
    def find(cls, pid: int) -> CgroupFiles | None:
        """The cgroup folders of process ``pid``, or None when they cannot be read here."""
        try:
            lines = _read(PROC / str(pid) / "cgroup").splitlines()
        except OSError:
            return None
        v1: dict[str, str] = {}
        unified = None
        for line in lines:
            _id, controllers, path = line.split(":", 2)
            if controllers == "":
                unified = path
            for name in controllers.split(","):
                v1[name] = path
        if "memory" in v1 and "cpuacct" in v1:
            found = cls(pid, ROOT / "memory" / v1["memory"].lstrip("/"),
                        ROOT / "cpuacct" / v1["cpuacct"].lstrip("/"), v2=False)
        elif unified is not None:
            folder = ROOT / unified.lstrip("/")
            found = cls(pid, folder, folder, v2=True)
        else:
            return None
        try:
            found.read()
        except (OSError, ValueError):
            return None
        return found

    def read(self) -> Reading:
        """The figures now. OSError once the container is gone."""
        rx, tx = self._net()
        if self.v2:
            stat = _stat(self.memory / "memory.stat")
            cap = _read(self.memory / "memory.max")
            peak = self.memory / "memory.peak"
            return Reading(
                cpu_ns=_stat(self.cpu / "cpu.stat")["usage_usec"] * 1000,
                mem_used=max(int(_read(self.memory / "memory.current"))
                             - stat.get("inactive_file", 0), 0),
                mem_total=None if cap == "max" else int(cap),
                mem_peak=int(_read(peak)) if peak.exists() else None,
                net_rx=rx, net_tx=tx)
        stat = _stat(self.memory / "memory.stat")
        limit = int(_read(self.memory / "memory.limit_in_bytes"))
        return Reading(
            cpu_ns=int(_read(self.cpu / "cpuacct.usage")),
            mem_used=max(int(_read(self.memory / "memory.usage_in_bytes"))
                         - stat.get("total_inactive_file", 0), 0),
            mem_total=None if limit >= 1 << 62 else limit,
            mem_peak=int(_read(self.memory / "memory.max_usage_in_bytes")),
            net_rx=rx, net_tx=tx)

    def _net(self) -> tuple[int, int]:
        """Bytes received and sent on the container's interfaces (loopback left out)."""
        rx = tx = 0
        for line in _read(PROC / str(self.pid) / "net" / "dev").splitlines()[2:]:
            name, _, figures = line.partition(":")
            if name.strip() == "lo":
                continue
            values = figures.split()
            rx += int(values[0])
            tx += int(values[8])
        return rx, tx


def disk(mountpoint: str) -> tuple[int, int] | None:
    """Bytes used and the size of the filesystem at ``mountpoint`` (the workspace volume),
    or None when it is not on this machine."""
    try:
        fs = os.statvfs(mountpoint)
    except OSError:
        return None
    return (fs.f_blocks - fs.f_bfree) * fs.f_frsize, fs.f_blocks * fs.f_frsize
