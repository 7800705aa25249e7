"""The first channel adapter: commands through ``docker exec``, files through the archive API.

Every engine call is a blocking docker-py (or, where docker-py has no method, a plain
``requests``) call made on the thread bridge, inside :func:`~.engine.translated`. One exec costs
about 40 ms and one archive call about 35 ms here; a persistent channel can do better and keep
this one as its fallback (see :mod:`.channel`).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

import urllib3.exceptions

from pyflue._bridge import ThreadBridge
from pyflue.errors import SandboxError
from pyflue.sandbox.base import FileKind, FileStat
from pyflue.sandbox.docker.channel import Archive, Chunk, Completed
from pyflue.sandbox.docker.engine import api_url, raise_for_status, translated

T = TypeVar("T")

STDOUT = 1  # the stream id of stdout in the engine's frame headers (stderr is 2)
FRAME_HEADER = struct.Struct(">BxxxL")  # stream id, 3 bytes of padding, data length
MAX_READ = 1 << 20

# Mode bits of Go's fs.FileMode, as the archive API's stat header carries them.
_GO_DIR, _GO_SYMLINK = 1 << 31, 1 << 27
_GO_OTHER = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


class ExecChannel:
    """A channel into one container over ``docker exec`` and the archive API."""

    def __init__(self, api: Any, bridge: ThreadBridge, container_id: str) -> None:
        self._api = api  # docker-py's low-level APIClient
        self._bridge = bridge
        self._cid = container_id

    def command(
        self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str], user: str,
        shell: bool = False,
    ) -> ExecCommand:
        return ExecCommand(self._api, self._bridge, self._cid, list(argv),
                           {"workdir": cwd, "user": user,
                            "environment": [f"{k}={v}" for k, v in env.items()]})

    def tells_pids(self, user: str) -> bool:
        return False

    async def run(self, argv: Sequence[str], *, user: str) -> Completed:
        return await self._bridge.call(self._run, list(argv), user)

    def _run(self, argv: list[str], user: str) -> Completed:
        with translated(f"running {argv[0]} in the sandbox", container=self._cid):
            created = self._api.exec_create(self._cid, argv, user=user)
            out, err = self._api.exec_start(created["Id"], demux=True)
            code = self._api.exec_inspect(created["Id"]).get("ExitCode")
        return Completed(exit_code=code, stdout=out or b"", stderr=err or b"")

    async def spawn(self, argv: Sequence[str], *, user: str) -> None:
        await self._bridge.call(self._spawn, list(argv), user)

    def _spawn(self, argv: list[str], user: str) -> None:
        with translated(f"starting {argv[0]} in the sandbox", container=self._cid):
            created = self._api.exec_create(self._cid, argv, user=user)
            self._api.exec_start(created["Id"], detach=True)

    async def signal_init(self, signal: str) -> None:
        await self._bridge.call(self._signal_init, signal)

    def _signal_init(self, signal: str) -> None:
        with translated("signalling the sandbox init", container=self._cid):
            self._api.kill(self._cid, signal=signal)

    async def put_archive(self, dest_dir: str, archive: Archive) -> None:
        await self._bridge.call(self._put_archive, dest_dir, archive)

    def _put_archive(self, dest_dir: str, archive: Archive) -> None:
        with translated(f"copying files into {dest_dir}", container=self._cid):
            self._api.put_archive(self._cid, dest_dir, archive)

    async def get_archive(self, path: str, read: Callable[[Iterator[bytes]], T]) -> T:
        return await self._bridge.call(self._get_archive, path, read)

    def _get_archive(self, path: str, read: Callable[[Iterator[bytes]], T]) -> T:
        what = f"copying {path} out of the sandbox"
        with translated(what, container=self._cid):
            chunks, _stat = self._api.get_archive(self._cid, path, chunk_size=MAX_READ)
        # Errors of the transfer are translated; those of ``read`` itself pass through.
        stream = _translated_iter(chunks, what, self._cid)
        try:
            return read(stream)
        finally:
            stream.close()
            chunks.close()  # a read cut short stops reading the engine's stream

    async def stat(self, path: str) -> FileStat | None:
        return await self._bridge.call(self._stat, path)

    def _stat(self, path: str) -> FileStat | None:
        # The archive endpoint answers a HEAD with the stat alone; docker-py has no method
        # for it, so it goes through the client's own session.
        url = api_url(self._api, "/containers/{}/archive", self._cid)
        with translated(f"stat {path}", container=self._cid):
            res = self._api.head(url, params={"path": path})
        if res.status_code == 404:
            # A HEAD answer has no body to tell a missing path from a missing container.
            with translated("stat", container=self._cid):
                self._api.inspect_container(self._cid)  # raises SandboxGone when it is gone
            return None
        header = res.headers.get("X-Docker-Container-Path-Stat")
        if res.status_code != 200 or not header:
            raise SandboxError(f"stat {path}: the Docker engine answered HTTP {res.status_code}")
        return stat_from_header(path, header)


Phase = Literal["new", "starting", "abandoned"]


class ExecCommand:
    """One command through ``docker exec``.

    One thread (the bridge's pump) creates the exec, starts it, reads its frames and then its
    exit code: one hand-off to the loop per frame, none per step. The start goes through the
    client's session with the Engine API's plain hijack (no ``Upgrade`` header), so the answer
    is an ordinary response that this object owns and closes, and whose descriptor it may
    duplicate to shut the connection down from another thread.
    """

    def __init__(self, api: Any, bridge: ThreadBridge, container_id: str, argv: list[str],
                 options: dict[str, Any]) -> None:
        self._api = api
        self._bridge = bridge
        self._cid = container_id
        self._argv = argv
        self._options = options
        self._lock = threading.Lock()  # phase, aborted, control: read and set together
        self._phase: Phase = "new"
        self._aborted = False
        self._control: socket.socket | None = None  # our own handle on the open stream
        self._exit_code: int | None = None

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def pid(self) -> int | None:
        return None  # docker exec does not say: the shell wrapper does

    def output(self) -> AsyncIterator[Chunk]:
        return self._bridge.pump(self._frames())

    def cancel_start(self) -> bool:
        with self._lock:
            if self._phase == "new":
                self._phase = "abandoned"
            return self._phase == "abandoned"

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._control is not None:
                _shut_down(self._control)

    def _frames(self) -> Iterator[Chunk]:
        """Runs on the pump's thread, from the exec's creation to its exit code."""
        exec_id = self._create()
        with self._lock:
            if self._phase == "abandoned":
                return  # given up (timeout or cancel) before it started: nothing runs
            self._phase = "starting"
        response = self._start(exec_id)
        try:
            if self._adopt(response):
                yield from read_frames(response.raw)
        finally:
            with self._lock:
                if self._control is not None:
                    self._control.close()
                    self._control = None
            response.close()
        self._exit_code = self._inspect(exec_id)

    def _create(self) -> str:
        with translated("starting a command in the sandbox", container=self._cid):
            created = self._api.exec_create(self._cid, self._argv, stdout=True, stderr=True,
                                            **self._options)
        return str(created["Id"])

    def _start(self, exec_id: str) -> Any:
        url = api_url(self._api, "/exec/{}/start", exec_id)
        with translated("starting a command in the sandbox", container=self._cid):
            # No read timeout: a command may stay silent for as long as it likes.
            response = self._api.post(url, json={"Detach": False, "Tty": False}, stream=True,
                                      timeout=(self._api.timeout, None))
            raise_for_status(response)
        return response

    def _adopt(self, response: Any) -> bool:
        """Takes a handle on the started stream, unless :meth:`abort` came first."""
        control = _control_socket(response.raw)
        with self._lock:
            if not self._aborted:
                self._control = control
                return True
        if control is not None:
            control.close()
        return False

    def _inspect(self, exec_id: str) -> int | None:
        with translated("reading a command's exit code", container=self._cid):
            code = self._api.exec_inspect(exec_id).get("ExitCode")
        return None if code is None else int(code)


def _translated_iter(
    items: Iterator[bytes], what: str, container: str
) -> Generator[bytes, None, None]:
    with translated(what, container=container):
        yield from items


def read_frames(body: Any) -> Iterator[Chunk]:
    """The chunks of an exec's raw stream (a file-like ``read``): each frame is an 8-byte
    header (stream id, length) and its data. A stream shut down or broken just ends."""
    try:
        while True:
            head = body.read(FRAME_HEADER.size)
            if len(head) < FRAME_HEADER.size:
                return
            stream_id, size = FRAME_HEADER.unpack(head)
            name: Literal["stdout", "stderr"] = "stdout" if stream_id == STDOUT else "stderr"
            while size > 0:
                data = body.read(min(size, MAX_READ))
                if not data:
                    return
                size -= len(data)
                yield name, data
    except (OSError, urllib3.exceptions.HTTPError):
        return


def _control_socket(body: Any) -> socket.socket | None:
    """A socket of our own on the response's connection (a duplicate descriptor): shutting
    it down ends a read blocked on the connection in another thread, and since we close it
    ourselves, its number can never be another connection's by the time we use it. None when
    the connection is not a socket (an ssh pipe): such a stream cannot be cut short."""
    try:
        fd = os.dup(body.fileno())
    except (OSError, ValueError):
        return None
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None


def _shut_down(control: socket.socket) -> None:
    try:
        control.shutdown(socket.SHUT_RDWR)  # acts on the connection, not on the descriptor
    except OSError:
        pass  # already closed by the engine: the stream is over anyway


def stat_from_header(path: str, header: str) -> FileStat:
    """The archive API's ``X-Docker-Container-Path-Stat`` header (base64 JSON) as a FileStat."""
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
