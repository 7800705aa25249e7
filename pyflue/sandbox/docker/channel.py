"""The channel: how a command or a file operation reaches one run's container.

:class:`~pyflue.sandbox.docker.box.DockerSandbox` owns what a sandbox means (the shell wrapper,
timeouts and kills, a container that stops under a command, listing and removing files, copy
limits); a :class:`Channel` only carries. It starts commands and streams their output, runs
helper commands to completion, signals the container's init, and moves archives and stats in
and out. The first adapter is :class:`~pyflue.sandbox.docker.exec_channel.ExecChannel`
(``docker exec`` and the archive API); a persistent channel (one long-lived exec whose
stdin/stdout carry framed requests to a helper inside) comes next, with ``ExecChannel`` as its
fallback. ``tests/integration/test_channel.py`` holds every adapter to this contract.

Errors: every method raises :class:`pyflue.errors.SandboxError` subclasses, already translated:
:class:`~pyflue.errors.SandboxGone` when the container no longer exists or no longer runs,
:class:`~pyflue.errors.EngineUnavailable` when the engine does not answer. What comes back
(output, archives, stats) is the container's word: untrusted input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal, Protocol, TypeVar

from pyflue.sandbox.base import FileStat

T = TypeVar("T")

Stream = Literal["stdout", "stderr"]
Chunk = tuple[Stream, bytes]
Archive = bytes | IO[bytes]  # an uncompressed tar, in memory or in a file read from its start


@dataclass(frozen=True)
class Completed:
    """A helper command that ran to its end; ``exit_code`` None when the engine did not say."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes


class Command(Protocol):
    """One command given to a channel: it starts when its output is first read."""

    def output(self) -> AsyncIterator[Chunk]:
        """Starts the command and yields its output as the container writes it: each stream's
        chunks in order, the two streams interleaved as they came. Ends when the command's
        output ends (it and whatever it started closed stdout and stderr), after :meth:`abort`,
        or at once after a successful :meth:`cancel_start`. Read it once.

        Raises SandboxError (SandboxGone when the container is gone) when the command cannot
        start; a stream broken once started just ends.
        """
        ...

    @property
    def exit_code(self) -> int | None:
        """The command's exit code once :meth:`output` ended; None while it runs, when it never
        started, or when the engine could not say (the stream was aborted under it)."""
        ...

    @property
    def pid(self) -> int | None:
        """The command's process (and process-group) id once it started, when the channel
        knows it itself (see :meth:`Channel.tells_pids`); None otherwise."""
        ...

    def cancel_start(self) -> bool:
        """True when the command had not started and now never will; False when it has started
        (or is starting), so it must be stopped some other way. Safe from any thread."""
        ...

    def abort(self) -> None:
        """Ends :meth:`output` now, from any thread, whether or not the command still runs
        (stopping the command itself is the caller's business). Idempotent."""
        ...


class Channel(Protocol):
    """How commands and file operations reach one container."""

    def command(
        self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str], user: str,
        shell: bool = False,
    ) -> Command:
        """A command to run as ``user`` (``uid:gid``) in ``cwd`` with ``env`` added to the
        container's environment; nothing happens until its output is read. ``shell``: it is
        ``[bash, "-c", command, name]``, which a channel may run in a shell it started ahead
        (the helper's spare shell: docs/sandbox.md#the-channel) with the same exit code,
        output and process group."""
        ...

    def tells_pids(self, user: str) -> bool:
        """Whether commands started now as ``user`` say their process-group id themselves
        (:attr:`Command.pid`), so the shell needs no wrapper to report it (see shell.py). A
        command may still end up without one (its channel fell back meanwhile): then a
        timeout kills every process of the sandbox instead of the command's group."""
        ...

    async def run(self, argv: Sequence[str], *, user: str) -> Completed:
        """Runs a helper command to its end (in the container's working folder) and returns
        its exit code and whole output: for short commands with small output only."""
        ...

    async def spawn(self, argv: Sequence[str], *, user: str) -> None:
        """Starts a command and returns without waiting for it or reading anything, so a
        container that stalls cannot hold the caller."""
        ...

    async def signal_init(self, signal: str) -> None:
        """Sends ``signal`` (a name such as ``SIGUSR1``) to the container's PID 1 from outside
        the container, as ``docker kill`` does: even a signal it has no handler for arrives
        (from inside, the kernel would drop it), so it works in a sandbox out of pids too."""
        ...

    async def put_archive(self, dest_dir: str, archive: Archive) -> None:
        """Unpacks a tar into the existing folder ``dest_dir``; members keep the owners and
        modes written in their headers."""
        ...

    async def get_archive(self, path: str, read: Callable[[Iterator[bytes]], T]) -> T:
        """A tar of ``path`` (a file, or a folder and everything in it; a final symlink is
        not followed), handed as a stream of chunks to ``read``, which runs on a worker
        thread while the tar arrives; returns what ``read`` returns. When ``read`` returns
        early the rest of the transfer is dropped. Errors that ``read`` raises pass through.
        """
        ...

    async def stat(self, path: str) -> FileStat | None:
        """What is at ``path``, without following a final symlink; None when nothing is.

        A symlink's ``link_target`` is fully resolved, as the engine's own stat gives it: an
        absolute path with every link on the way followed (the harness's confinement of
        paths to the workspace relies on it).
        """
        ...
