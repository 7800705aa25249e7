"""The work inside one run's container: commands with streaming, timeouts and kills; file copies.

What a sandbox means lives here: the shell wrapper that reports a command's pid, killing its
process group on timeout and escalating to the sandbox's init, noticing a container that
stops under a command (an OOM kill, a removal) and the cgroup limits a command hit, listing
and removing files, the tars of copies and their limits. How a command or a file operation
reaches the container is the channel's business (:mod:`.channel`: ``docker exec`` and the
archive API today); what the engine says of the container itself, the probe's (:mod:`.probe`).
Neither touches the lifecycle (:mod:`.lifecycle`) or the harness.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO

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
    Usage,
)
from pyflue.sandbox.docker.channel import Channel, Command
from pyflue.sandbox.docker.probe import ContainerProbe, ContainerState
from pyflue.sandbox.docker.shell import WRAPPER, Demuxer
from pyflue.sandbox.tario import build_tar, extract_tree, read_single_file, write_tar

log = logging.getLogger(__name__)
# Where an image lacking what the sandbox needs is told what it needs (errors name it).
IMAGE_REQUIREMENTS = "docs/sandbox.md#image-requirements"

# Data of a copy in up to this size is made into a tar on the event loop, not on a thread.
SMALL_PUT = 64 << 10

# A command's own cgroup counters: cgroup v1 first, else v2 (see DockerSandbox._new_limit_hits).
LIMIT_COUNTERS = ("cat /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/pids/pids.events"
                  " 2>/dev/null || cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/pids.events")


class DockerSandbox:
    """A running container, as the harness sees it (the :class:`~pyflue.sandbox.base.Sandbox`
    port), over a channel and the engine's probe."""

    def __init__(self, channel: Channel, probe: ContainerProbe, bridge: ThreadBridge,
                 spec: SandboxSpec, kill_grace: float, volume: str | None = None) -> None:
        self._channel = channel
        self._volume = volume  # the workspace volume, for its size
        self._probe = probe
        self._bridge = bridge  # for building tars off the event loop
        self._spec = spec
        self._kill_grace = kill_grace
        self._shell: str | None = None
        self._limit_counts: dict[str, int] = {}
        self._stopped: str | None = None  # why the container stopped under a command, if it did

    @property
    def channel(self) -> Channel:
        return self._channel

    async def usage(self) -> Usage | None:
        """What the container uses now (see :meth:`ContainerProbe.usage`)."""
        return await self._probe.usage(self._volume, self._spec.cpus, self._spec.workdir)

    @property
    def id(self) -> str:
        return self._probe.container_id

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
                limits = (await self._stop_status(await self._probe.state())).limits
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
        shell, user = await self._shell_path(), self._spec.user
        if self._channel.tells_pids(user):
            # The helper starts the command in its own session (it tells the pid: no wrapper)
            # and enters ``cwd`` itself, one folder at a time without following a symlink
            # (its chdir_nofollow, inside the container; see shell.py). With bash, it may
            # be run by a shell started ahead (the helper's spare: docs/sandbox.md).
            argv = [shell, "-c", command, "pyflue-shell"]
            running = self._channel.command(argv, cwd=cwd, env=env, user=user,
                                            shell=shell == "/bin/bash")
            stream = Demuxer(on_output, pid_line=False)
        else:
            # The wrapper enters ``cwd`` itself; ``docker exec`` only ever gets the workspace
            # root (see shell.py: a sandbox-controlled path is never resolved by the runtime).
            argv = [shell, "-c", WRAPPER, "pyflue-shell", command, cwd]
            running = self._channel.command(argv, cwd=self._spec.workdir, env=env, user=user)
            stream = Demuxer(on_output)
        pump = asyncio.ensure_future(_drain(running, stream))
        watch = asyncio.ensure_future(self._watch_container())
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel
                # asyncio.wait never cancels what it waits for: a timeout leaves pump running.
                await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            killed = await self._kill(pump, running, stream)
            limits = await self._new_limit_hits()
            return ExecStatus(exit_code=124, timed_out=True, killed=killed, limits=limits)
        except BaseException:
            # Cancelled (run cancelled, Ctrl-C): do not leave the command running.
            if not pump.done():
                await asyncio.shield(self._kill(pump, running, stream))
            raise
        finally:
            watch.cancel()
        if not pump.done():  # the container stopped under the command
            running.abort()
            if not await _finishes(pump, self._kill_grace):
                pump.cancel()
            return await self._stop_status(watch.result())
        pump.result()  # a failed stream raises here
        return await self._ended(-1 if running.exit_code is None else running.exit_code)

    async def _shell_path(self) -> str:
        """bash when the image has it, else sh (looked up once)."""
        if self._shell is None:
            bash = await self.lstat("/bin/bash")
            self._shell = "/bin/bash" if bash is not None and bash.kind == "file" else "/bin/sh"
        return self._shell

    async def _ended(self, code: int) -> ExecStatus:
        """The status of a command whose stream ended with ``code``."""
        if code == 0:
            return ExecStatus(exit_code=0)
        state = await self._probe.state()
        # A command killed with its container can end before the engine marks the container
        # stopped: for the exit codes such an end gives, look again shortly.
        for _ in range(3 if code in (-1, 128, 137) else 0):
            if not state.running:
                break
            await asyncio.sleep(0.1)
            state = await self._probe.state()
        if not state.running:
            return await self._stop_status(state)
        return ExecStatus(exit_code=code, limits=await self._new_limit_hits())

    async def _watch_container(self) -> ContainerState:
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
                state = await self._probe.state()
            except Exception:  # cannot look: leave the command to its timeout
                continue
            if not state.running:
                return state

    async def _stop_status(self, state: ContainerState) -> ExecStatus:
        """:meth:`_stopped_status`, once the engine's word on an OOM kill is in: it can learn
        of one (from the cgroup) just after it saw the container exit, so a container that
        stopped for no reason yet is looked at again, for up to half a second."""
        for _ in range(5):
            if state.oom_killed or state.removed or state.running:
                break
            await asyncio.sleep(0.1)
            state = await self._probe.state()
        return self._stopped_status(state)

    def _stopped_status(self, state: ContainerState) -> ExecStatus:
        """Remembers why the container stopped; the status of the command it stopped under."""
        if state.oom_killed:
            self._stopped = (f"the sandbox was killed for exceeding its memory limit "
                             f"({self._spec.memory})")
            return ExecStatus(exit_code=137, limits=("memory",), stopped=self._stopped)
        if state.removed:
            self._stopped = "the run's container was removed"
        elif state.running:  # the engine says otherwise, or could not be asked
            self._stopped = "the run's container is no longer running"
        else:
            self._stopped = f"the sandbox stopped (exit code {state.exit_code})"
        return ExecStatus(exit_code=137, stopped=self._stopped)

    async def _new_limit_hits(self) -> tuple[str, ...]:
        """Which cgroup limits were hit since the last look (an OOM kill, the pids limit).

        Read from the container's own cgroup files, cgroup v1 or v2; only after a command
        failed, so successful commands cost nothing. Unknown (e.g. no pid left to read them)
        counts as no hit.
        """
        try:
            text = (await self._capture(["/bin/sh", "-c", LIMIT_COUNTERS])).decode(
                errors="replace")
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

    async def _kill(self, pump: asyncio.Future[None], running: Command,
                    stream: Demuxer) -> KillScope:
        """Kills the command's process group; escalates to every sandbox process if needed."""
        if running.cancel_start():  # it had not started, and now never will
            pump.cancel()
            return None
        for _ in range(50):  # the pid follows the start within milliseconds
            if stream.pid is not None or running.pid is not None or pump.done():
                break
            await asyncio.sleep(0.02)
        killed: KillScope = None
        pid = stream.pid if stream.pid is not None else running.pid
        if pid is not None:
            killed = "group"
            try:
                async with asyncio.timeout(min(self._kill_grace, 1.0)):
                    # Detached: nothing to read, so a sandbox that stalls cannot hold it.
                    await self._channel.spawn(
                        ["/bin/sh", "-c", f"kill -9 -{pid} 2>/dev/null; kill -9 {pid}"],
                        user=self._spec.user)
            except (SandboxError, TimeoutError):
                killed = None  # the kill could not start (pids exhausted?): escalate below
        if killed is None or not await _finishes(pump, self._kill_grace):
            # PID 1 of the sandbox kills every process it can on SIGUSR1 (see lifecycle.INIT).
            killed = "all"
            await self._signal_init()
            if not await _finishes(pump, self._kill_grace):
                running.abort()
                await _finishes(pump, self._kill_grace)
        if not pump.done():
            pump.cancel()
        return killed

    async def _signal_init(self) -> None:
        try:
            await self._channel.signal_init("SIGUSR1")
        except SandboxError as exc:
            log.warning("could not signal sandbox init: %s", exc)

    # -- files ------------------------------------------------------------------------------

    async def lstat(self, path: str) -> FileStat | None:
        return await self._channel.stat(path)

    async def read_file(self, path: str, *, max_bytes: int, truncate: bool = False) -> bytes:
        return await self._channel.get_archive(path, partial(_single_file, path, max_bytes,
                                                             truncate))

    async def copy_out(self, path: str, dest: Path, *, limits: CopyLimits) -> CopyReport:
        return await self._channel.get_archive(path, partial(_extract, path, dest, limits))

    async def put(self, dest_dir: str, entries: Sequence[PutEntry]) -> None:
        uid, gid = self._spec.uid_gid
        # Built off the event loop. Data already in memory goes as one buffer; host files (an
        # upload) are spilled to disk past 16 MiB and streamed from there.
        if not any(e.source is not None for e in entries):
            if sum(len(e.data or b"") for e in entries) <= SMALL_PUT:
                tar = build_tar(entries, uid=uid, gid=gid)  # cheaper than a thread hand-off
            else:
                tar = await self._bridge.call(partial(build_tar, entries, uid=uid, gid=gid))
            await self._channel.put_archive(dest_dir, tar)
            return
        with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spooled:
            await self._bridge.call(_write_spooled, entries, spooled, uid, gid)
            await self._channel.put_archive(dest_dir, spooled)

    async def listdir(self, path: str) -> list[FileStat]:
        out = await self._capture(
            ["find", path, "-mindepth", "1", "-maxdepth", "1", "-printf", r"%y\t%s\t%m\t%T@\t%f\0"]
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
        await self._capture(["rm", "-rf" if recursive else "-f", "--", path])

    async def _capture(self, argv: list[str]) -> bytes:
        """Runs a helper command to completion; its stdout, or a SandboxError with its stderr."""
        done = await self._channel.run(argv, user=self._spec.user)
        if done.exit_code != 0:
            message = (done.stderr.decode("utf-8", "replace").strip()
                       or f"exit code {done.exit_code}")
            if _tool_missing(done.exit_code, message):
                raise SandboxError(
                    f"the image {self._spec.image} has no `{argv[0]}` (or cannot run it), which "
                    f"pyflue needs for this file operation: add it to the image "
                    f"(see {IMAGE_REQUIREMENTS})",
                    details=message,
                )
            raise SandboxError(f"{argv[0]} failed in the sandbox: {message}")
        return done.stdout


def _tool_missing(exit_code: int | None, stderr: str) -> bool:
    """Whether a helper command failed because the image does not have it."""
    # The engine answers 126 (runc: "executable file not found") or 127 (a shell's "not found").
    return exit_code in (126, 127) or "executable file not found" in stderr.lower()


async def _drain(running: Command, stream: Demuxer) -> None:
    async for name, chunk in running.output():
        stream.feed(name, chunk)
    stream.finish()


async def _finishes(fut: asyncio.Future[None], timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(fut)
    except TimeoutError:
        return False
    except Exception:
        return True
    return True


# Readers of a copy out: they run on the channel's worker thread while the tar arrives.

def _single_file(path: str, max_bytes: int, truncate: bool, chunks: Iterator[bytes]) -> bytes:
    try:
        return read_single_file(chunks, max_bytes=max_bytes, truncate=truncate)
    except IsADirectoryError:
        raise WorkspacePathError(f"{path} is not a regular file") from None
    except OverflowError as exc:
        raise WorkspacePathError(
            f"{path} is {exc.args[0]} bytes, over the read limit of {max_bytes}"
        ) from None
    except FileNotFoundError:
        raise FileNotFoundInSandbox(f"{path} does not exist") from None


def _extract(path: str, dest: Path, limits: CopyLimits, chunks: Iterator[bytes]) -> CopyReport:
    try:
        return extract_tree(chunks, dest, limits=limits)
    except FileNotFoundError:  # every member skipped
        raise WorkspacePathError(
            f"{path} holds nothing to copy out (only links or special files)"
        ) from None


def _write_spooled(entries: Sequence[PutEntry], tar: IO[bytes], uid: int, gid: int) -> None:
    write_tar(entries, tar, uid=uid, gid=gid)  # type: ignore[arg-type]
    tar.seek(0)
