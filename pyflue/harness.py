"""The harness a workflow gets from ``ctx.init(agent)``: ``fs`` and ``shell`` over the run's box.

Both act on the run's sandbox only and record events; neither adds messages to a session.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from pyflue.artifacts.workspace import WorkspaceArtifacts
from pyflue.compat import HARNESS, missing, upstream_options
from pyflue.errors import ConfigError, FileNotFoundInSandbox, SandboxGone, WorkspacePathError
from pyflue.events import FileOp, FileRead, FileWrite, ShellEnd, ShellOutput, ShellStart
from pyflue.output import StreamCapture
from pyflue.sandbox.base import CopyLimits, CopyReport, FileStat, PutEntry, Sandbox
from pyflue.sandbox.paths import confine, is_inside, relative_parts
from pyflue.sandbox.tario import CopyTooLarge, local_entries
from pyflue.secrets import StreamRedactor, grant

if TYPE_CHECKING:  # annotations only: sessions and tools build on the harness, not the reverse
    from pyflue.agent_config import AgentConfig
    from pyflue.artifacts.base import ArtifactStore
    from pyflue.recorder import RunRecorder
    from pyflue.sessions import Session
    from pyflue.settings import Settings

    # Opens a session over a harness: its name, and the tools it adds to the agent's own.
    SessionOpener = Callable[["Harness", str, Sequence[Any]], Session]

MAX_READ_BYTES = 1 << 30


class ShellResult(TypedDict):
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    duration_ms: int


class WorkspaceFS:
    """Files in the run's workspace. Paths are relative to the agent's cwd or absolute inside
    the workspace; anything resolving outside it (``..``, absolute paths, symlinks) raises
    :class:`pyflue.errors.WorkspacePathError`."""

    def __init__(self, box: Sandbox, recorder: RunRecorder, cwd: str, *,
                 copy_limits: CopyLimits) -> None:
        self._box = box
        self._recorder = recorder
        self._copy_limits = copy_limits
        self.root = box.workdir
        self.cwd = confine(cwd, root=self.root)

    async def locate(self, path: str) -> tuple[str, FileStat | None]:
        """The container path of ``path`` with every symlink followed, and its stat (None when
        nothing is there). A symlink on the way that leaves the workspace is refused."""
        current = self.root
        parts = relative_parts(confine(path, root=self.root, cwd=self.cwd), self.root)
        if not parts:
            return current, await self._box.lstat(current)
        st: FileStat | None = None
        for i, part in enumerate(parts):
            candidate = posixpath.join(current, part)
            st = await self._box.lstat(candidate)
            if st is None:
                return posixpath.join(candidate, *parts[i + 1 :]), None
            if st.kind == "symlink":
                # Docker reports link targets fully resolved, so a target is never a link.
                link = posixpath.normpath(st.link_target or "")
                if not is_inside(link, self.root):
                    raise WorkspacePathError(
                        f"path {path!r} goes through the symlink {candidate} -> "
                        f"{st.link_target}, which points outside the workspace {self.root}"
                    )
                current, st = link, None
            else:
                current = candidate
        if st is None:  # the path ended on a symlink: stat what it points to
            st = await self._box.lstat(current)
        return current, st

    async def resolve(self, path: str, *, follow_final: bool = True) -> str:
        """The container path for ``path`` after following symlinks, refusing escapes.

        With ``follow_final=False`` a final symlink is not followed (it is what a write or a
        removal replaces), but every folder above it is.
        """
        if follow_final:
            return (await self.locate(path))[0]
        target = confine(path, root=self.root, cwd=self.cwd)
        if target == self.root:
            return target
        parent, name = posixpath.split(target)
        return posixpath.join((await self.locate(parent))[0], name)

    async def read_bytes(self, path: str) -> bytes:
        real, st = await self.locate(path)
        if st is None:
            raise FileNotFoundInSandbox(f"no such file in the workspace: {path}")
        if st.kind != "file":
            raise WorkspacePathError(f"{path} is a {st.kind}, not a file")
        data = await self._box.read_file(real, max_bytes=MAX_READ_BYTES)
        self._recorder.emit(FileRead(path=real, bytes=len(data)))
        return data

    async def read_head(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        """The first ``max_bytes`` of a file and its whole size: what a tool reads into the
        host (the rest of a larger file never leaves the sandbox)."""
        real, st = await self.locate(path)
        if st is None:
            raise FileNotFoundInSandbox(f"no such file in the workspace: {path}")
        if st.kind != "file":
            raise WorkspacePathError(f"{path} is a {st.kind}, not a file")
        data = await self._box.read_file(real, max_bytes=max_bytes, truncate=True)
        self._recorder.emit(FileRead(path=real, bytes=len(data)))
        return data, max(st.size, len(data))

    async def read_file_buffer(self, path: str) -> bytes:
        """PyFlue 0.2's name for :meth:`read_bytes`."""
        return await self.read_bytes(path)

    async def read_file(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read_bytes(path)).decode(encoding)

    async def write_file(self, path: str, content: str | bytes, *, mode: int = 0o644) -> None:
        """Writes a file, creating missing parent folders."""
        if isinstance(content, str):
            data = content.encode("utf-8")
        elif isinstance(content, bytes | bytearray | memoryview):
            data = bytes(content)
        else:
            raise ConfigError(
                f"write_file content must be str or bytes, not {type(content).__name__}"
            )
        real = await self.resolve(path, follow_final=False)
        if real == self.root:
            raise WorkspacePathError("cannot write a file over the workspace folder itself")
        await self._box.put(self.root, _with_parents(real, self.root, data, mode))
        self._recorder.emit(FileWrite(path=real, bytes=len(data)))

    async def exists(self, path: str) -> bool:
        """Whether something is there. Paths outside the workspace still raise."""
        return (await self.locate(path))[1] is not None

    async def stat(self, path: str) -> FileStat:
        _real, st = await self.locate(path)
        if st is None:
            raise FileNotFoundInSandbox(f"no such file or folder in the workspace: {path}")
        return st

    async def readdir(self, path: str = ".") -> list[str]:
        """The names in a folder, sorted."""
        return [posixpath.basename(s.path) for s in await self.listdir(path)]

    async def listdir(self, path: str = ".") -> list[FileStat]:
        """The entries of a folder with kind, size and mode, sorted by name."""
        st = await self.stat(path)
        if st.kind != "dir":
            raise WorkspacePathError(f"{path} is a {st.kind}, not a folder")
        return await self._box.listdir(st.path)

    async def mkdir(self, path: str, *, recursive: bool = True) -> None:
        """Creates a folder and any missing parents; an existing folder is fine.
        (``recursive`` is PyFlue 0.2's; parents are always created.)"""
        real, st = await self.locate(path)
        if st is not None:
            if st.kind != "dir":
                raise WorkspacePathError(f"{path} exists and is a {st.kind}, not a folder")
            return
        await self._box.put(self.root, _with_parents(real, self.root, None, 0o755))
        self._recorder.emit(FileOp(op="mkdir", path=real))

    async def rm(self, path: str, *, recursive: bool = False, force: bool = False) -> None:
        """Removes a file, or a folder with ``recursive=True``. ``force`` ignores a missing path."""
        real = await self.resolve(path, follow_final=False)
        if real == self.root:
            raise WorkspacePathError("refusing to remove the workspace folder itself")
        st = await self._box.lstat(real)
        if st is None:
            if force:
                return
            raise FileNotFoundInSandbox(f"no such file or folder in the workspace: {path}")
        if st.kind == "dir" and not recursive:
            raise WorkspacePathError(f"{path} is a folder: pass recursive=True to remove it")
        await self._box.remove(real, recursive=st.kind == "dir")
        self._recorder.emit(FileOp(op="rm", path=real))


    async def upload(self, src: str | os.PathLike[str], dest: str) -> CopyReport:
        """Copies a local file or folder (on the host running the workflow) to ``dest`` in the
        workspace; a folder is merged into an existing one. Regular files and folders only:
        symlinks are not followed and, like special files, are skipped (listed in the
        report). At most ``PYFLUE_SANDBOX_COPY_MAX_BYTES`` per copy; files are owned by the
        sandbox user."""
        local = Path(os.path.abspath(src))  # "." has a name this way; links stay unfollowed
        if not local.name:
            raise ConfigError("cannot upload the root folder of this host: give a folder in it")
        real = await self.resolve(dest, follow_final=False)
        if real == self.root:
            raise WorkspacePathError("give a path inside the workspace to copy to, not its root")
        try:
            entries, report = await asyncio.to_thread(
                local_entries, local, limits=self._copy_limits)
        except FileNotFoundError:
            raise ConfigError(f"upload source {local} is not a file or folder on this host: "
                              "give an existing local path") from None
        except CopyTooLarge as exc:
            raise _too_large(str(local), exc) from None
        # Renamed from the source's own name to the destination, missing parents made.
        parts = relative_parts(real, self.root)
        target, top = "/".join(parts), local.name
        parents = [PutEntry("/".join(parts[: i + 1]), None) for i in range(len(parts) - 1)]
        await self._box.put(self.root, [
            *parents, *[replace(e, path=target + e.path[len(top):]) for e in entries]
        ])
        self._recorder.emit(FileOp(op="upload", path=real, **report.to_dict()))
        return report

    async def download(self, path: str, dest: str | os.PathLike[str], *,
                       overwrite: bool = False) -> CopyReport:
        """Copies a file or folder of the workspace to the local path ``dest``.

        What comes out is filtered: only regular files and folders are written, and only under
        ``dest`` (links, devices and names with ``..`` or a leading ``/`` are skipped and listed
        in the report); setuid bits are dropped. At most ``PYFLUE_SANDBOX_COPY_MAX_BYTES`` per
        copy. ``dest`` must not exist unless ``overwrite=True``; a copy cut short leaves
        nothing behind.
        """
        real, st = await self.locate(path)
        if st is None:
            raise FileNotFoundInSandbox(f"no such file or folder in the workspace: {path}")
        if st.kind not in ("file", "dir"):
            raise WorkspacePathError(f"{path} is a {st.kind}, not a file or folder")
        local = Path(os.path.abspath(dest))
        if Path.cwd().is_relative_to(local) or local == Path.home():
            raise ConfigError(f"download destination {local} is this process's working folder, "
                              "one above it, or the home folder: give a new path")
        if (local.exists() or local.is_symlink()) and not overwrite:
            raise ConfigError(f"download destination {local} already exists: remove it, "
                              "pick a new path, or pass overwrite=True")
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pyflue-download-", dir=local.parent) as tmp:
            staged = Path(tmp) / "copy"
            try:
                report = await self._box.copy_out(real, staged, limits=self._copy_limits)
            except CopyTooLarge as exc:
                raise _too_large(path, exc) from None
            await asyncio.to_thread(_put_in_place, staged, local, Path(tmp) / "old")
        self._recorder.emit(FileOp(op="download", path=real, dest=str(local),
                                   **report.to_dict()))
        return report


def _put_in_place(staged: Path, local: Path, aside: Path) -> None:
    """Moves the staged copy to ``local``; what was there is moved aside first and deleted
    with the staging folder only once the copy is in place."""
    if local.exists() or local.is_symlink():
        os.replace(local, aside)
    try:
        os.replace(staged, local)
    except OSError:
        if aside.exists() or aside.is_symlink():
            os.replace(aside, local)
        raise


def _too_large(what: str, exc: CopyTooLarge) -> WorkspacePathError:
    name, amount, cap, unit = exc.args
    if unit == "entries":
        return WorkspacePathError(
            f"copying {what}: {name} holds more than {cap} files and folders; copy less, or "
            "raise PYFLUE_SANDBOX_COPY_MAX_ENTRIES")
    return WorkspacePathError(
        f"copying {what}: {name} comes to {amount} bytes, over the cap of {cap} bytes; copy "
        "less, or raise PYFLUE_SANDBOX_COPY_MAX_BYTES"
    )


def _with_parents(real: str, root: str, data: bytes | None, mode: int) -> list[PutEntry]:
    parts = relative_parts(real, root)
    entries = [PutEntry("/".join(parts[: i + 1]), None) for i in range(len(parts) - 1)]
    entries.append(PutEntry("/".join(parts), data, mode))
    return entries


class Harness:
    """What ``ctx.init(agent)`` returns: sessions with the agent's model, the run's
    workspace as ``fs`` and ``shell`` (which never add messages to a session), and
    ``artifacts`` to save files of it as the run's artifacts."""

    def __init__(
        self,
        box: Sandbox,
        recorder: RunRecorder,
        config: AgentConfig,
        settings: Settings,
        open_session: SessionOpener,
        env: Mapping[str, str] | None = None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        env = env or {}
        self._box = box
        self._recorder = recorder
        self.config = config
        self._defaults = settings.sandbox
        self.tool_read_max = settings.models.tool_read_max_bytes  # what a tool reads, at most
        self._open_session = open_session
        self._sessions: dict[str, Session] = {}
        self._env = env
        self._secret_env = grant(config.secrets, env, recorder.redactor,
                                 "agent config \"secrets\"")
        self.fs = WorkspaceFS(box, recorder, config.cwd or box.workdir,
                              copy_limits=settings.sandbox.copy_limits)
        # Files of the workspace saved as the run's artifacts (docs/artifacts.md).
        self.artifacts = WorkspaceArtifacts(self.fs, box, recorder, artifacts,
                                            copy_limits=settings.sandbox.copy_limits)

    @upstream_options("harness.session", session_id="pass the name positionally: "
                      "`await harness.session(\"name\")`")
    async def session(self, name: str = "default", *, tools: Sequence[Any] = ()) -> Session:
        """The session called ``name`` (created on first use): a conversation with the agent's
        model whose tools act in this run's container. ``tools`` adds workflow tools (typed
        functions or :class:`pyflue.tools.Tool`) to the agent's own."""
        if name in self._sessions:
            if tools:
                raise ConfigError(f"session {name!r} exists already; give tools when creating it")
            return self._sessions[name]
        created = self._open_session(self, name, (*self.config.tools, *tools))
        self._sessions[name] = created
        return created

    @property
    def sessions(self) -> Sessions:
        """The run's sessions by name (PyFlue 0.2's ``harness.sessions``)."""
        return Sessions(self)

    async def destroy(self) -> None:
        """Does nothing: the run's container is removed when the run ends (PyFlue 0.2 code
        that calls it keeps working)."""

    if not TYPE_CHECKING:  # for mypy, a missing attribute stays a type error

        def __getattr__(self, name: str) -> Any:
            raise missing("harness", name, {} if name.startswith("_") else HARNESS)

    def redact(self, text: str) -> str:
        """``text`` with the run's granted secrets replaced by their markers."""
        return self._recorder.redactor.text(text)

    @property
    def sandbox_id(self) -> str:
        return self._box.id

    async def _workdir(self, cwd: str) -> str:
        st = await self.fs.stat(cwd)  # FileNotFoundInSandbox names the missing folder
        if st.kind != "dir":
            raise WorkspacePathError(f"shell cwd {cwd!r} is a {st.kind}, not a folder")
        return st.path

    def _limit_text(self, limit: str) -> str:
        memory = self.config.memory or self._defaults.memory
        pids = self.config.pids or self._defaults.pids
        return {
            "memory": f"a command was killed for exceeding the memory limit ({memory})",
            "pids": f"a command hit the process limit ({pids} processes)",
        }.get(limit, f"a command hit the {limit} limit")

    @upstream_options("harness.shell")
    async def shell(
        self,
        command: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        secrets: Sequence[str] = (),
    ) -> ShellResult:
        """Runs ``command`` with bash (or sh) in the run's container.

        stdout and stderr are streamed as ``shell_output`` events while it runs. Returns
        ``{"stdout", "stderr", "exit_code", "timed_out", "duration_ms"}``. On timeout the
        command's whole process tree is killed and ``exit_code`` is 124; it does not raise.
        Each stream keeps at most ``output_cap`` bytes (head and tail, with a marker between).
        ``secrets`` grants named host environment variables to this command only (as
        environment variables); granted values are redacted from its output and every event.
        """
        if not isinstance(command, str) or not command.strip():
            raise ConfigError("shell needs a non-empty command string")
        limit = self._defaults.shell_timeout if timeout is None else float(timeout)
        if limit <= 0:
            raise ConfigError(f"shell timeout must be positive seconds, got {timeout!r}")
        workdir = await self._workdir(cwd) if cwd is not None else self.fs.cwd
        granted = grant(secrets, self._env, self._recorder.redactor, "shell secrets")
        merged = {**self.config.env, **(env or {}), **self._secret_env, **granted}
        shell_id = self._recorder.next_id("sh")
        captures = {s: StreamCapture(self._defaults.output_cap) for s in ("stdout", "stderr")}
        redactors = {s: StreamRedactor(self._recorder.redactor) for s in captures}
        self._recorder.emit(ShellStart(shell_id=shell_id, command=command, cwd=workdir,
                                       timeout=limit))

        done = False  # output that arrives after the call has ended belongs to no event

        def on_output(stream: str, chunk: bytes) -> None:
            if done:
                return
            text = redactors[stream].feed(captures[stream].feed(chunk))
            if text:
                self._recorder.emit(ShellOutput(shell_id=shell_id, stream=stream, text=text))

        started = time.monotonic()
        try:
            status = await self._box.exec(
                command, cwd=workdir, env=merged, timeout=limit, on_output=on_output
            )
        except BaseException as exc:  # every shell_start gets its shell_end
            done = True
            if isinstance(exc, SandboxGone):
                for hit in exc.limits:
                    self._recorder.note_limit(hit, shell_id, exc.reason)
            self._recorder.emit(ShellEnd(
                shell_id=shell_id, exit_code=None, timed_out=False,
                duration_ms=int((time.monotonic() - started) * 1000),
                error="cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc),
            ))
            raise
        done = True
        duration_ms = int((time.monotonic() - started) * 1000)
        for stream, redactor in redactors.items():
            if rest := redactor.flush():
                self._recorder.emit(ShellOutput(shell_id=shell_id, stream=stream, text=rest))
        for hit in status.limits:
            self._recorder.note_limit(hit, shell_id, status.stopped or self._limit_text(hit))
        self._recorder.emit(ShellEnd(
            shell_id=shell_id, exit_code=status.exit_code, timed_out=status.timed_out,
            duration_ms=duration_ms, stdout_bytes=captures["stdout"].total,
            stderr_bytes=captures["stderr"].total,
            truncated=any(c.truncated for c in captures.values()),
            killed=status.killed, limits=list(status.limits) or None,
            sandbox_stopped=status.stopped,
        ))
        redact = self._recorder.redactor.text
        return ShellResult(
            stdout=redact(captures["stdout"].text()),
            stderr=redact(captures["stderr"].text()),
            exit_code=status.exit_code,
            timed_out=status.timed_out,
            duration_ms=duration_ms,
        )


class Sessions:
    """``harness.sessions``: the run's sessions by name (they live as long as the run)."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    async def get(self, name: str = "default") -> Session:
        """The session called ``name``; KeyError when it was not opened yet."""
        if name not in self._harness._sessions:
            raise KeyError(f"session {name!r} does not exist; open it with "
                           f"`await harness.session({name!r})`")
        return self._harness._sessions[name]

    async def create(self, name: str = "default") -> Session:
        """A new session called ``name``; ConfigError when it exists already."""
        if name in self._harness._sessions:
            raise ConfigError(f"session {name!r} exists already; use harness.sessions.get")
        return await self._harness.session(name)

    async def delete(self, name: str = "default") -> None:
        """Forgets the session's conversation; the next ``session(name)`` starts afresh."""
        self._harness._sessions.pop(name, None)
