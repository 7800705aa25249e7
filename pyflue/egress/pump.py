"""Moving a download's bytes from one socket to another inside the kernel (``splice``).

The egress proxy's hot direction is the host's answer going to the sandbox. Copying it through
Python (read into a buffer, write it out) costs two copies and an event-loop turn per chunk;
``splice(2)`` through a pipe moves it between the two sockets without it entering the process.
Each transfer runs in a thread of its own, which blocks only in ``poll`` and ``splice`` (the
GIL released), and ends at the source's end of file or when either socket is shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
import threading

PIPE_BYTES = 1 << 20
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


async def pump(src: socket.socket, dst: socket.socket) -> int:
    """Moves bytes from ``src`` to ``dst`` until ``src`` ends, then shuts ``dst``'s sending
    side; returns the bytes moved. Cancelling it shuts both sockets down, which ends the
    thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    # The thread works on duplicates: closing the originals never hands it a reused number.
    fds = os.dup(src.fileno()), os.dup(dst.fileno())

    def finish(moved: int) -> None:
        if not done.done():
            done.set_result(moved)

    def work() -> None:
        try:
            moved = _splice(*fds)
        finally:
            for fd in fds:
                os.close(fd)
        loop.call_soon_threadsafe(finish, moved)

    threading.Thread(target=work, name="pyflue-egress-pump", daemon=True).start()
    try:
        moved = await asyncio.shield(done)
    except asyncio.CancelledError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    return moved


def _splice(src: int, dst: int) -> int:
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    moved = 0
    try:
        while True:
            try:
                got = os.splice(src, write_end, PIPE_BYTES, flags=_FLAGS)
            except BlockingIOError:
                _wait(src, select.POLLIN)
                continue
            if got == 0:
                return moved
            while got:
                try:
                    sent = os.splice(read_end, dst, got, flags=_FLAGS)
                except BlockingIOError:
                    _wait(dst, select.POLLOUT)
                    continue
                got -= sent
                moved += sent
    except OSError:
        return moved
    finally:
        os.close(read_end)
        os.close(write_end)


def _wait(fd: int, event: int) -> None:
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()
