"""The shell wrapper every command runs under, and the reading of what it adds to the output.

A command's first process is its own process-group leader. The wrapper has it report its pid
on stderr first (behind a marker), so that a timeout can kill the whole group (orphans
included) without a process-table scan, then run the user's command in that same process
(with bash when the image has it, else sh). A channel that tells the pid itself (the helper's:
it starts every command in its own session) needs no wrapper: the command runs as
``shell -c COMMAND pyflue-shell``, one shell start and no ``eval`` (a single external command
is then exec'd by the shell in place, without a fork).

The command's folder is never handed to ``docker exec`` as its working folder: resolved by
the runtime on the host side, a process inside could swap it for a symlink to
``/proc/self/fd/N`` between pyflue's check and the exec (runc CVE-2024-21626, "Leaky
Vessels"). Through ``docker exec`` the wrapper changes into it itself (``$2``), inside the
container, and the exec is only ever given the workspace root, a mount point the sandbox
cannot replace; a symlink swapped in then leads the command only where the sandbox user could
``cd`` anyway. The helper (inside the container too) enters it one folder at a time with
``O_NOFOLLOW`` (its ``chdir_nofollow``): a symlink swapped in is refused (exit 126).
"""

from __future__ import annotations

from pyflue.sandbox.base import OutputHandler

PID_MARKER = b"\x1epyflue-pid:"

WRAPPER = (
    'printf "\\036pyflue-pid:%s\\n" "$$" >&2; '
    '__pyflue_command=$1; cd -- "$2" || exit 126; set --; eval "$__pyflue_command"'
)

# A first stderr line longer than this without a newline cannot be the pid line.
_PID_LINE_MAX = 64


class Demuxer:
    """Takes a command's output chunks; hides the wrapper's pid line (and keeps the pid);
    hands everything else on, by stream name, in the order it came."""

    def __init__(self, on_output: OutputHandler, *, pid_line: bool = True) -> None:
        self._on_output = on_output
        # Without the wrapper (the channel tells the pid) there is no line to look for.
        self._stderr_head: bytes | None = b"" if pid_line else None
        self.pid: int | None = None  # the command's process (and process group) id, once read

    def feed(self, stream: str, chunk: bytes) -> None:
        if stream == "stderr" and self._stderr_head is not None:
            self._stderr_head += chunk
            if b"\n" not in self._stderr_head:
                if len(self._stderr_head) < _PID_LINE_MAX:
                    return
                chunk, self._stderr_head = self._stderr_head, None
            else:
                line, _, rest = self._stderr_head.partition(b"\n")
                self._stderr_head = None
                if line.startswith(PID_MARKER):
                    try:
                        self.pid = int(line[len(PID_MARKER) :])
                    except ValueError:
                        pass
                    chunk = rest
                else:
                    chunk = line + b"\n" + rest
            if not chunk:
                return
        self._on_output("stdout" if stream == "stdout" else "stderr", chunk)

    def finish(self) -> None:
        if self._stderr_head:
            self._on_output("stderr", self._stderr_head)
        self._stderr_head = None
