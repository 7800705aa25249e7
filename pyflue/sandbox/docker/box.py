"""The work inside one run's container: exec with streaming and kill, and archive copies.

How a command or a file operation reaches the container is this module's business alone:
``docker exec`` and the archive API today; a persistent channel can replace it later without
touching the lifecycle (:mod:`.lifecycle`) or the harness.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import posixpath
import socket as socketlib
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docker.utils.socket import frames_iter

from pyflue._bridge import ThreadBridge
from pyflue.errors import FileNotFoundInSandbox, SandboxError, SandboxGone, WorkspacePathError
from pyflue.sandbox.base import (
    CopyLimits,
    CopyReport,
    ExecStatus,
    FileKind,
    FileStat,
    KillScope,
    OutputHandler,
    PutEntry,
    SandboxSpec,
)
from pyflue.sandbox.docker.engine import translated
from pyflue.sandbox.docker.shell import WRAPPER, Demuxer
from pyflue.sandbox.tario import build_tar, extract_tree, read_single_file, write_tar

log = logging.getLogger(__name__)

STDOUT, STDERR = 1, 2

_GO_DIR, _GO_SYMLINK = 1 << 31, 1 << 27
_GO_OTHER = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


def _stat_from_header(path: str, header: str) -> FileStat:
    raw = json.loads(base64.b64decode(header))
    mode = int(raw.get("mode", 0))
    kind: FileKind
    if mode & _GO_DIR:
        kind = "dir"
    elif mode & _GO_SYMLINK:
        kind = "symlink"
    elif mode & _GO_OTHER:
        kind = "other"
    else:
        kind = "file"
    mtime = None
    if raw.get("mtime"):
        try:
            mtime = datetime.fromisoformat(raw["mtime"].replace("Z", "+00:00"))
        except ValueError:
            mtime = None
    return FileStat(
        path=path,
        kind=kind,
        size=int(raw.get("size", 0)),
        mode=mode & 0o7777,
        mtime=mtime,
        link_target=raw.get("linkTarget") or None,
    )


class DockerSandbox:
    """A running container, as the harness sees it."""

    def __init__(self, client: Any, bridge: ThreadBridge, container_id: str, spec: SandboxSpec,
                 kill_grace: float) -> None:
        self._client = client
        self._api = client.api
        self._bridge = bridge
        self._cid = container_id
        self._spec = spec
        self._kill_grace = kill_grace
        self._shell: str | None = None
        self._limit_counts: dict[str, int] = {}
        self._stopped: str | None = None  # why the container stopped under a command, if it did

    @property
    def id(self) -> str:
        return self._cid

    @property
    def workdir(self) -> str:
        return self._spec.workdir

    # -- exec -------------------------------------------------------------------------------

    async def exec(
        self,
        command: str,
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout: float,
        on_output: OutputHandler,
    ) -> ExecStatus:
        if self._stopped is not None:
            raise SandboxGone(f"cannot run a command: {self._stopped}")
        try:
            return await self._exec(command, cwd=cwd, env=env, timeout=timeout,
                                    on_output=on_output)
        except SandboxGone:
            # Found stopped only now (its last command's stream ended before the engine saw
            # it stop): the limit that stopped it is reported with this error, once.
            limits: tuple[str, ...] = ()
            if self._stopped is None:
                limits = (await self._stop_status(await self._bridge.call(self._state))).limits
            raise SandboxGone(f"cannot run a command: {self._stopped}", limits=limits,
                              reason=self._stopped) from None

    async def _exec(
        self,
        command: str,
        *,
        cwd: str,
        env: Mapping[str, str],
        timeout: float,
        on_output: OutputHandler,
    ) -> ExecStatus:
        if self._shell is None:
            bash = await self.lstat("/bin/bash")
            self._shell = "/bin/bash" if bash is not None and bash.kind == "file" else "/bin/sh"
        argv = [self._shell, "-c", WRAPPER, "pyflue-shell", command]
        # One thread starts the exec, streams its frames and reads its exit code: one hand-off
        # to the loop per frame, none per step.
        session = _ExecSession()
        stream = Demuxer(on_output)
        frames = self._exec_frames(argv, cwd, env, session)
        pump = asyncio.ensure_future(self._drain(frames, stream))
        watch = asyncio.ensure_future(self._watch_container())
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel
                # asyncio.wait never cancels what it waits for: a timeout leaves pump running.
                await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            killed = await self._kill(pump, session, stream)
            limits = await self._bridge.call(self._new_limit_hits)
            return ExecStatus(exit_code=124, timed_out=True, killed=killed, limits=limits)
        except BaseException:
            # Cancelled (run cancelled, Ctrl-C): do not leave the command running.
            if not pump.done():
                await asyncio.shield(self._kill(pump, session, stream))
            raise
        finally:
            watch.cancel()
        if not pump.done():  # the container stopped under the command
            _abort_socket(session.sock)
            if not await _finishes(pump, self._kill_grace):
                pump.cancel()
            return await self._stop_status(watch.result())
        pump.result()  # a failed stream raises here
        code = -1 if session.exit_code is None else session.exit_code
        if code == 0:
            return ExecStatus(exit_code=0)
        state = await self._bridge.call(self._state)
        # A command killed with its container can end before the engine marks the container
        # stopped: for the exit codes such an end gives, look again shortly.
        for _ in range(3 if code in (-1, 128, 137) else 0):
            if not state.get("Running", False):
                break
            await asyncio.sleep(0.1)
            state = await self._bridge.call(self._state)
        if not state.get("Running", False):
            return await self._stop_status(state)
        return ExecStatus(exit_code=code, limits=await self._bridge.call(self._new_limit_hits))

    async def _watch_container(self) -> dict[str, Any]:
        """Returns the container's state once it is no longer running (polled, from 1 s on).

        A command's stream normally ends when its process does; this catches the sandbox itself
        dying under it (an OOM kill under gVisor takes the whole sandbox), which would otherwise
        leave the call hanging until its timeout.
        """
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            try:
                state = await self._bridge.call(self._state)
            except Exception:  # cannot look: leave the command to its timeout
                continue
            if not state.get("Running", False):
                return state

    def _state(self) -> dict[str, Any]:
        try:
            with translated("inspecting the run's container", container=self._cid):
                return dict(self._api.inspect_container(self._cid).get("State") or {})
        except SandboxGone:
            return {"Running": False, "Removed": True}
        except SandboxError:
            return {"Running": True}  # cannot tell: keep waiting on the command itself

    async def _stop_status(self, state: dict[str, Any]) -> ExecStatus:
        """:meth:`_stopped_status`, once the engine's word on an OOM kill is in: it can learn
        of one (from the cgroup) just after it saw the container exit, so a container that
        stopped for no reason yet is looked at again, for up to half a second."""
        for _ in range(5):
            if state.get("OOMKilled") or state.get("Removed") or state.get("Running", False):
                break
            await asyncio.sleep(0.1)
            state = await self._bridge.call(self._state)
        return self._stopped_status(state)

    def _stopped_status(self, state: dict[str, Any]) -> ExecStatus:
        """Remembers why the container stopped; the status of the command it stopped under."""
        if state.get("OOMKilled"):
            self._stopped = (f"the sandbox was killed for exceeding its memory limit "
                             f"({self._spec.memory})")
            return ExecStatus(exit_code=137, limits=("memory",), stopped=self._stopped)
        if state.get("Removed"):
            self._stopped = "the run's container was removed"
        elif state.get("Running", False):  # the engine says otherwise, or could not be asked
            self._stopped = "the run's container is no longer running"
        else:
            self._stopped = f"the sandbox stopped (exit code {state.get('ExitCode')})"
        return ExecStatus(exit_code=137, stopped=self._stopped)

    def _new_limit_hits(self) -> tuple[str, ...]:
        """Which cgroup limits were hit since the last look (an OOM kill, the pids limit).

        Read from the container's own cgroup files, cgroup v1 or v2; only after a command
        failed, so successful commands cost nothing. Unknown (e.g. no pid left to read them)
        counts as no hit.
        """
        script = ("cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/pids/pids.events"
                  " 2>/dev/null || cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/pids.events")
        try:
            text = self._capture(["/bin/sh", "-c", script]).decode(errors="replace")
        except SandboxError:
            return ()
        counts = {"memory": 0, "pids": 0}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                counts["memory"] = int(value)
            elif key == "max" and value.strip().isdigit():
                counts["pids"] = int(value)
        hits = tuple(k for k, n in counts.items() if n > self._limit_counts.get(k, 0))
        self._limit_counts = counts
        return hits

    def _exec_frames(
        self, argv: list[str], cwd: str, env: Mapping[str, str], session: _ExecSession
    ) -> Iterator[tuple[int, bytes]]:
        exec_id, session.sock = self._start_exec(argv, cwd, env, session)
        if session.sock is None:
            return  # given up (timeout or cancel) before it started: nothing runs
        yield from _frames(session.sock)
        session.exit_code = self._exit_code(exec_id)

    def _start_exec(
        self, argv: list[str], cwd: str, env: Mapping[str, str], session: _ExecSession
    ) -> tuple[str, Any]:
        with translated("starting a command in the sandbox", container=self._cid):
            created = self._api.exec_create(
                self._cid,
                argv,
                stdout=True,
                stderr=True,
                workdir=cwd,
                environment=[f"{k}={v}" for k, v in env.items()],
                user=self._spec.user,
            )
            with session.lock:
                if session.abandoned:
                    return created["Id"], None
                sock = self._api.exec_start(created["Id"], socket=True)
                session.sock = sock
        return created["Id"], sock

    def _exit_code(self, exec_id: str) -> int:
        with translated("reading a command's exit code", container=self._cid):
            code = self._api.exec_inspect(exec_id).get("ExitCode")
        return -1 if code is None else int(code)

    async def _drain(self, frames: Iterator[tuple[int, bytes]], stream: Demuxer) -> None:
        async for stream_id, chunk in self._bridge.pump(frames):
            stream.feed("stdout" if stream_id == STDOUT else "stderr", chunk)
        stream.finish()

    async def _kill(self, pump: asyncio.Future[None], session: _ExecSession,
                    stream: Demuxer) -> KillScope:
        """Kills the command's process group; escalates to every sandbox process if needed."""
        killed: KillScope = None
        with session.lock:  # an exec not started yet never will be
            session.abandoned = session.sock is None
        if session.abandoned:
            pump.cancel()
            return None
        for _ in range(50):  # the pid line follows the start within milliseconds
            if stream.pid is not None or pump.done():
                break
            await asyncio.sleep(0.02)
        if stream.pid is not None:
            killed = "group"
            try:
                pid = stream.pid
                async with asyncio.timeout(min(self._kill_grace, 1.0)):
                    command = f"kill -9 -{pid} 2>/dev/null; kill -9 {pid}"
                    await self._bridge.call(self._run_quiet, ["/bin/sh", "-c", command])
            except (SandboxError, TimeoutError):
                killed = None  # the kill could not start (pids exhausted?): escalate below
        if killed is None or not await _finishes(pump, self._kill_grace):
            # PID 1 of the sandbox kills every process it can on SIGUSR1 (see lifecycle.INIT).
            killed = "all"
            await self._bridge.call(self._signal_init)
            if not await _finishes(pump, self._kill_grace):
                _abort_socket(session.sock)
                await _finishes(pump, self._kill_grace)
        if not pump.done():
            pump.cancel()
        return killed

    def _run_quiet(self, argv: list[str]) -> None:
        with translated("stopping a timed-out command", container=self._cid):
            created = self._api.exec_create(self._cid, argv, user=self._spec.user)
            # Detached: nothing to read, so a sandbox that stalls cannot hold this thread.
            self._api.exec_start(created["Id"], detach=True)

    def _signal_init(self) -> None:
        try:
            with translated("signalling the sandbox init", container=self._cid):
                self._api.kill(self._cid, signal="SIGUSR1")
        except SandboxError as exc:
            log.warning("could not signal sandbox init: %s", exc)

    # -- files ------------------------------------------------------------------------------

    async def lstat(self, path: str) -> FileStat | None:
        return await self._bridge.call(self._lstat, path)

    def _lstat(self, path: str) -> FileStat | None:
        with translated(f"stat {path}", container=self._cid):
            res = self._api.head(
                self._api._url("/containers/{0}/archive", self._cid), params={"path": path}
            )
        if res.status_code == 404:
            # A HEAD answer has no body to tell a missing path from a missing container.
            self._missing_container()  # raises SandboxGone when the container is gone
            return None
        header = res.headers.get("X-Docker-Container-Path-Stat")
        if res.status_code != 200 or not header:
            raise SandboxError(f"stat {path}: the Docker engine answered HTTP {res.status_code}")
        return _stat_from_header(path, header)

    def _missing_container(self) -> None:
        with translated("stat", container=self._cid):
            self._api.inspect_container(self._cid)
        return None

    async def read_file(self, path: str, *, max_bytes: int) -> bytes:
        return await self._bridge.call(self._read_file, path, max_bytes)

    def _read_file(self, path: str, max_bytes: int) -> bytes:
        with translated(f"reading {path}", container=self._cid):
            chunks, _stat = self._api.get_archive(self._cid, path, chunk_size=1 << 20)
            try:
                return read_single_file(chunks, max_bytes=max_bytes)
            except IsADirectoryError:
                raise WorkspacePathError(f"{path} is not a regular file") from None
            except OverflowError as exc:
                raise WorkspacePathError(
                    f"{path} is {exc.args[0]} bytes, over the read limit of {max_bytes}"
                ) from None
            except FileNotFoundError:
                raise FileNotFoundInSandbox(f"{path} does not exist") from None

    async def copy_out(self, path: str, dest: Path, *, limits: CopyLimits) -> CopyReport:
        return await self._bridge.call(self._copy_out, path, dest, limits)

    def _copy_out(self, path: str, dest: Path, limits: CopyLimits) -> CopyReport:
        with translated(f"copying {path} out of the sandbox", container=self._cid):
            chunks, _stat = self._api.get_archive(self._cid, path, chunk_size=1 << 20)
            try:
                return extract_tree(chunks, dest, limits=limits)
            except FileNotFoundError:  # every member skipped (translated would blame the engine)
                raise WorkspacePathError(
                    f"{path} holds nothing to copy out (only links or special files)"
                ) from None
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # a copy cut short stops reading the engine's stream

    async def put(self, dest_dir: str, entries: Sequence[PutEntry]) -> None:
        await self._bridge.call(self._put, dest_dir, entries)

    def _put(self, dest_dir: str, entries: Sequence[PutEntry]) -> None:
        uid, gid = self._spec.uid_gid
        # Built here, off the event loop. Data already in memory goes as one buffer; host files
        # (an upload) are spilled to disk past 16 MiB and streamed from there.
        if not any(e.source is not None for e in entries):
            data = build_tar(entries, uid=uid, gid=gid)
            with translated(f"copying files into {dest_dir}", container=self._cid):
                self._api.put_archive(self._cid, dest_dir, data)
            return
        with tempfile.SpooledTemporaryFile(max_size=16 << 20) as tar:
            write_tar(entries, tar, uid=uid, gid=gid)  # type: ignore[arg-type]
            tar.seek(0)
            with translated(f"copying files into {dest_dir}", container=self._cid):
                self._api.put_archive(self._cid, dest_dir, tar)

    async def listdir(self, path: str) -> list[FileStat]:
        out = await self._bridge.call(
            self._capture,
            ["find", path, "-mindepth", "1", "-maxdepth", "1", "-printf", r"%y\t%s\t%m\t%T@\t%f\0"],
        )
        stats = []
        for record in out.split(b"\0"):
            if not record:
                continue
            kind_c, size, mode, mtime, name = record.decode("utf-8", "replace").split("\t", 4)
            kind: FileKind = {"f": "file", "d": "dir", "l": "symlink"}.get(kind_c, "other")  # type: ignore[assignment]
            stats.append(
                FileStat(
                    path=posixpath.join(path, name),
                    kind=kind,
                    size=int(size),
                    mode=int(mode, 8),
                    mtime=datetime.fromtimestamp(float(mtime), tz=UTC),
                )
            )
        return sorted(stats, key=lambda s: s.path)

    async def remove(self, path: str, *, recursive: bool) -> None:
        await self._bridge.call(self._capture, ["rm", "-rf" if recursive else "-f", "--", path])

    def _capture(self, argv: list[str]) -> bytes:
        """Runs a helper command to completion; its stdout, or a SandboxError with its stderr."""
        with translated(f"running {argv[0]} in the sandbox", container=self._cid):
            created = self._api.exec_create(self._cid, argv, user=self._spec.user)
            out, err = self._api.exec_start(created["Id"], demux=True)
            code = self._api.exec_inspect(created["Id"]).get("ExitCode")
        if code != 0:
            message = (err or b"").decode("utf-8", "replace").strip() or f"exit code {code}"
            raise SandboxError(f"{argv[0]} failed in the sandbox: {message}")
        return out or b""


class _ExecSession:
    """What the exec thread learns: the socket (to abort), the exit code."""

    def __init__(self) -> None:
        self.sock: Any = None
        self.exit_code: int | None = None
        self.abandoned = False
        self.lock = threading.Lock()


def _frames(sock: Any) -> Iterator[tuple[int, bytes]]:
    try:
        yield from frames_iter(sock, tty=False)
    except OSError:
        return  # socket shut down by _abort_socket: the stream is over
    finally:
        _close_socket(sock)


def _close_socket(sock: Any) -> None:
    """Closes the exec's socket: the SocketIO docker-py hands out and the socket under it."""
    for closable in (sock, getattr(sock, "_sock", None)):
        if closable is not None:
            try:
                closable.close()
            except OSError:
                pass


def _abort_socket(sock: Any) -> None:
    if sock is None:
        return
    raw = getattr(sock, "_sock", sock)
    if raw is None:  # docker-py already closed it: the stream is over
        return
    try:
        raw.shutdown(socketlib.SHUT_RDWR)
    except OSError:
        pass


async def _finishes(fut: asyncio.Future[None], timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(fut)
    except TimeoutError:
        return False
    except Exception:
        return True
    return True
