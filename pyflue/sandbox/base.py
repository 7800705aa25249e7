"""The sandbox port: a workspace to copy files into and out of and to exec in, with streaming.

A :class:`SandboxProvider` owns the box's lifecycle (create, harden, remove, reap); a
:class:`Sandbox` is the work inside it (exec, file copies). The Docker adapter is the product;
:mod:`pyflue.sandbox.fake` serves pure-logic tests. Paths handed to a ``Sandbox`` are absolute
and already confined to the workspace by :mod:`pyflue.sandbox.paths`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pyflue.events import EventData

FileKind = Literal["file", "dir", "symlink", "other"]

# (stream, chunk): stream is "stdout" or "stderr".
OutputHandler = Callable[[str, bytes], None]
Emit = Callable[["EventData"], None]  # records one run event


@dataclass(frozen=True)
class EgressSecret:
    """A host secret granted at egress: the container's environment holds ``placeholder``
    under ``name``; the egress proxy swaps in ``value`` on requests to ``hosts`` only."""

    name: str
    hosts: tuple[str, ...]
    placeholder: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class SandboxSpec:
    """Everything needed to create one run's container."""

    run_id: str
    workflow: str
    image: str
    user: str = "1000:1000"
    network: str = "none"
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 512
    workspace_size: str = "1g"
    tmp_size: str = "256m"
    runtime: str | None = None
    read_only_root: bool = True
    workdir: str = "/workspace"
    env: Mapping[str, str] = field(default_factory=dict)
    # Host names (exact or "*." suffix) the run may reach through the egress proxy; empty:
    # the container keeps ``network`` (see docs/sandbox.md#egress).
    egress: tuple[str, ...] = ()
    egress_secrets: tuple[EgressSecret, ...] = ()

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.user.partition(":")
        return int(uid), int(gid or uid)


@dataclass(frozen=True)
class FileStat:
    path: str
    kind: FileKind
    size: int
    mode: int
    mtime: datetime | None = None
    link_target: str | None = None

    def __getitem__(self, key: str) -> Any:
        """``stat["size"]``, ``stat["is_dir"]``...: PyFlue 0.2's ``fs.stat`` answered a dict."""
        from pyflue.compat import stat_item

        return stat_item(vars(self), key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.path.rstrip("/").rsplit("/", 1)[-1],
            "kind": self.kind,
            "size": self.size,
            "mode": oct(self.mode & 0o7777),
            "mtime": self.mtime.isoformat() if self.mtime else None,
            "link_target": self.link_target,
        }


@dataclass(frozen=True)
class PutEntry:
    """One member of a copy into the sandbox: a file (``data``, or the host file ``source``,
    read as the archive is built) or a directory (neither)."""

    path: str  # relative to the destination directory
    data: bytes | None
    mode: int = 0o644
    source: Path | None = None

    @property
    def is_dir(self) -> bool:
        return self.data is None and self.source is None

    def content(self) -> bytes:
        return self.data if self.data is not None else (self.source or Path()).read_bytes()


@dataclass(frozen=True)
class CopyLimits:
    """Caps on one copy in or out: bytes of any one file, bytes in all, and entries (files and
    folders, skipped ones included) in all, so that neither a huge file nor a flood of tiny
    ones can fill the host."""

    file_bytes: int
    total_bytes: int
    entries: int


@dataclass
class CopyReport:
    """What a folder copy moved: files, folders, bytes, and the names it skipped (links,
    devices, unsafe names), which are never written."""

    files: int = 0
    folders: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # the first SKIPPED_LISTED names
    skipped_count: int = 0

    def skip(self, name: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < SKIPPED_LISTED:
            self.skipped.append(name)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "folders": self.folders, "bytes": self.bytes,
                "skipped": list(self.skipped), "skipped_count": self.skipped_count}


SKIPPED_LISTED = 100


KillScope = Literal["group", "all"] | None


@dataclass(frozen=True)
class ExecStatus:
    exit_code: int
    timed_out: bool = False
    killed: KillScope = None
    # Limits the sandbox hit while the command ran: "memory" (an OOM kill), "pids".
    limits: tuple[str, ...] = ()
    # Set when the whole sandbox stopped while the command ran (under gVisor an OOM kill takes
    # the sandbox with it): why, in words. Every later exec raises SandboxGone.
    stopped: str | None = None


@dataclass(frozen=True)
class PoolFill:
    """How full one warm pool is: the containers wanted, ready to claim, being started."""

    image: str
    size: int
    ready: int
    starting: int
    egress: bool = False  # a pool for runs with ``egress`` (each container on its own network)


@dataclass(frozen=True)
class Usage:
    """One reading of what a sandbox uses, as its engine reports it (None: not told)."""

    cpu_count: float  # the CPUs it may use: its limit, else the engine's
    cpu_ns: int  # CPU time used since it started, in nanoseconds
    mem_used: int  # memory in use, page cache that can be dropped left out
    mem_total: int  # its memory limit (the engine's memory without one)
    mem_peak: int | None = None  # the kernel's high-water mark, where it keeps one
    disk_used: int | None = None  # what the workspace holds
    disk_total: int | None = None  # the workspace's size
    net_rx: int | None = None
    net_tx: int | None = None


@runtime_checkable
class Measured(Protocol):
    """A sandbox whose engine can say what it uses (:mod:`pyflue.resources` samples it)."""

    async def usage(self) -> Usage | None:
        """What it uses now; None when the engine cannot tell. Never raises."""
        ...


class Sandbox(Protocol):
    """One run's workspace. Every method raises :class:`pyflue.errors.SandboxError` subclasses."""

    @property
    def id(self) -> str: ...

    @property
    def workdir(self) -> str: ...

    async def exec(
        self,
        command: str,
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout: float,
        on_output: OutputHandler,
    ) -> ExecStatus:
        """Runs ``command`` with a shell; streams output; kills the process group on timeout."""
        ...

    async def lstat(self, path: str) -> FileStat | None:
        """Stat without following a final symlink; None when nothing is there."""
        ...

    async def read_file(self, path: str, *, max_bytes: int, truncate: bool = False) -> bytes:
        """The bytes of a regular file (no symlink at ``path``); over ``max_bytes`` an error,
        or with ``truncate`` its first ``max_bytes`` (the rest never reaches the host)."""
        ...

    async def put(self, dest_dir: str, entries: Sequence[PutEntry]) -> None:
        """Copies files and directories into ``dest_dir`` (one transfer)."""
        ...

    async def copy_out(self, path: str, dest: Path, *, limits: CopyLimits) -> CopyReport:
        """Copies a file or folder out to the new local path ``dest``, streamed and filtered
        (see :func:`pyflue.sandbox.tario.extract_tree`)."""
        ...

    async def listdir(self, path: str) -> list[FileStat]: ...

    async def remove(self, path: str, *, recursive: bool) -> None: ...


class SandboxProvider(Protocol):
    """Creates, hardens, removes and reaps run containers."""

    def open(self, spec: SandboxSpec, emit: Emit) -> AbstractAsyncContextManager[Sandbox]:
        """The run's sandbox, removed on exit whatever the outcome."""
        ...

    async def reap(self, is_live: Callable[[str], Awaitable[bool]],
                   owner_is_dead: Callable[[str], Awaitable[bool]] | None = None) -> list[str]:
        """Removes sandboxes whose run is not live, and (given ``owner_is_dead``) pre-started
        ones of workers that are gone; returns the run ids reaped."""
        ...

    def pool_fills(self) -> list[PoolFill]:
        """The warm pools' fill, per image (empty without a pool)."""
        ...

    def removal(self, sandbox_id: str) -> Awaitable[bool] | None:
        """The removal of a sandbox still under way after its ``open`` ended (set off in the
        background; True once removed), or None when there is none."""
        ...

    async def remove_left(self, sandbox_id: str) -> bool:
        """Removes a sandbox left behind after its run ended (its background removal failed,
        or its process died first); True once it is gone (or was already). A removal still
        under way in this process is left to finish: False."""
        ...

    async def close(self) -> None: ...
