"""An in-memory sandbox for pure-logic tests: files, symlinks and scripted commands.

It honours the same contract as the Docker adapter (absolute paths, lstat without following a
final symlink, link targets reported resolved, a timeout returning 124) but runs nothing: a
command's outcome comes from the provider's ``handler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import posixpath
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyflue.errors import FileNotFoundInSandbox, SandboxError, WorkspacePathError
from pyflue.events import (
    ContainerCreated,
    ContainerExited,
    ContainerRemoved,
    ContainerStarted,
)
from pyflue.sandbox.base import (
    CopyLimits,
    CopyReport,
    Emit,
    ExecStatus,
    FileStat,
    OutputHandler,
    PoolFill,
    PutEntry,
    SandboxSpec,
)
from pyflue.sandbox.tario import extract_tree


@dataclass
class FakeCommand:
    """What a scripted command does: output chunks per stream, then an exit code."""

    exit_code: int = 0
    stdout: Sequence[bytes | str] = ()
    stderr: Sequence[bytes | str] = ()
    delay: float = 0.0


Handler = Callable[[str, "FakeSandbox"], FakeCommand | Awaitable[FakeCommand]]


def default_handler(command: str, box: FakeSandbox) -> FakeCommand:
    """``echo TEXT`` prints TEXT, ``exit N`` exits N, ``sleep S`` waits; anything else is 0."""
    word, _, rest = command.strip().partition(" ")
    if word == "echo":
        return FakeCommand(stdout=[rest + "\n"])
    if word == "exit":
        return FakeCommand(exit_code=int(rest or 0))
    if word == "sleep":
        return FakeCommand(delay=float(rest))
    return FakeCommand()


@dataclass
class _Node:
    kind: str  # file, dir, symlink
    data: bytes = b""
    target: str = ""
    mode: int = 0o644


@dataclass
class FakeSandbox:
    spec: SandboxSpec
    handler: Handler
    commands: list[str] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)
    nodes: dict[str, _Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes[self.spec.workdir] = _Node("dir", mode=0o755)

    @property
    def id(self) -> str:
        return f"fake-{self.spec.run_id}"

    @property
    def workdir(self) -> str:
        return self.spec.workdir

    def symlink(self, path: str, target: str) -> None:
        """Test helper: make ``path`` a symlink to ``target`` (like ``ln -s``)."""
        self.nodes[path] = _Node("symlink", target=target)

    def _resolve_parent(self, path: str) -> str:
        parent, name = posixpath.split(path)
        node = self.nodes.get(parent)
        if node is not None and node.kind == "symlink":
            parent = self._resolved(parent)
        return posixpath.join(parent, name)

    def _resolved(self, path: str) -> str:
        node = self.nodes[path]
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path), node.target))
        return target

    async def exec(
        self,
        command: str,
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout: float,
        on_output: OutputHandler,
    ) -> ExecStatus:
        self.commands.append(command)
        self.envs.append(dict(env))
        outcome = self.handler(command, self)
        result = await outcome if inspect.isawaitable(outcome) else outcome

        async def play() -> None:
            for stream, chunks in (("stdout", result.stdout), ("stderr", result.stderr)):
                for chunk in chunks:
                    on_output(stream, chunk.encode() if isinstance(chunk, str) else chunk)
            if result.delay:
                await asyncio.sleep(result.delay)

        try:
            async with asyncio.timeout(timeout):
                await play()
        except TimeoutError:
            return ExecStatus(exit_code=124, timed_out=True, killed="group")
        return ExecStatus(exit_code=result.exit_code)

    async def lstat(self, path: str) -> FileStat | None:
        path = self._resolve_parent(path)
        node = self.nodes.get(path)
        if node is None:
            return None
        link = self._resolved(path) if node.kind == "symlink" else None
        size = len(node.data) if node.kind == "file" else 0
        return FileStat(path, node.kind, size, node.mode, None, link)  # type: ignore[arg-type]

    async def read_file(self, path: str, *, max_bytes: int, truncate: bool = False) -> bytes:
        node = self.nodes.get(self._resolve_parent(path))
        if node is None:
            raise FileNotFoundInSandbox(f"{path} does not exist")
        if node.kind != "file":
            raise WorkspacePathError(f"{path} is not a regular file")
        if len(node.data) > max_bytes and not truncate:
            raise WorkspacePathError(
                f"{path} is {len(node.data)} bytes, over the read limit of {max_bytes}")
        return node.data[:max_bytes]

    async def put(self, dest_dir: str, entries: Sequence[PutEntry]) -> None:
        if dest_dir not in self.nodes:
            raise SandboxError(f"copying files into {dest_dir}: no such folder")
        for entry in entries:
            path = self._resolve_parent(posixpath.join(dest_dir, entry.path))
            if entry.is_dir:
                if self.nodes.get(path, _Node("dir")).kind != "dir":
                    raise SandboxError(f"{path} exists and is not a folder")
                self.nodes[path] = _Node("dir", mode=0o755)
            else:
                self.nodes[path] = _Node("file", data=entry.content(), mode=entry.mode)

    async def copy_out(self, path: str, dest: Path, *, limits: CopyLimits) -> CopyReport:
        """As the engine does: a tar named after ``path``'s base name, links included."""
        if path not in self.nodes:
            raise FileNotFoundInSandbox(f"{path} does not exist")
        buf = io.BytesIO()
        top = posixpath.basename(path)
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in sorted(p for p in self.nodes if p == path or p.startswith(path + "/")):
                node = self.nodes[name]
                info = tarfile.TarInfo(top + name[len(path):])
                info.mode = node.mode
                if node.kind == "dir":
                    info.type = tarfile.DIRTYPE
                elif node.kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, node.target
                elif node.kind == "file":
                    info.size = len(node.data)
                else:
                    info.type = tarfile.CHRTYPE
                tar.addfile(info, io.BytesIO(node.data) if node.kind == "file" else None)
        return extract_tree([buf.getvalue()], dest, limits=limits)

    async def listdir(self, path: str) -> list[FileStat]:
        out = []
        for child in sorted(self.nodes):
            if posixpath.dirname(child) == path and child != path:
                st = await self.lstat(child)
                assert st is not None
                out.append(st)
        return out

    async def remove(self, path: str, *, recursive: bool) -> None:
        for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[p]


class FakeSandboxProvider:
    """Hands out :class:`FakeSandbox` boxes and records their lifecycle like the real one."""

    def __init__(self, handler: Handler = default_handler) -> None:
        self.handler = handler
        self.opened: list[FakeSandbox] = []
        self.live: dict[str, FakeSandbox] = {}

    @contextlib.asynccontextmanager
    async def open(self, spec: SandboxSpec, emit: Emit) -> AsyncIterator[FakeSandbox]:
        box = FakeSandbox(spec, self.handler)
        self.opened.append(box)
        self.live[spec.run_id] = box
        emit(ContainerCreated(container_id=box.id, name=f"fake-{box.id}", image=spec.image,
                              network=spec.network, runtime=spec.runtime or "fake"))
        emit(ContainerStarted(container_id=box.id))
        try:
            yield box
        finally:
            del self.live[spec.run_id]
            emit(ContainerExited(container_id=box.id, exit_code=137, oom_killed=False,
                                 stopped_by="pyflue"))
            emit(ContainerRemoved(container_id=box.id, removed=True))

    def pool_fills(self) -> list[PoolFill]:
        return []  # no warm pool: every fake sandbox starts "cold"

    def removal(self, sandbox_id: str) -> Awaitable[bool] | None:
        return None  # removed when its open() ends

    async def remove_left(self, sandbox_id: str) -> bool:
        return True  # nothing outlives its open()

    async def reap(self, is_live: Callable[[str], Awaitable[bool]],
                   owner_is_dead: Callable[[str], Awaitable[bool]] | None = None) -> list[str]:
        reaped = [run_id for run_id in list(self.live) if not await is_live(run_id)]
        for run_id in reaped:
            del self.live[run_id]
        return reaped

    async def close(self) -> None:
        return None
