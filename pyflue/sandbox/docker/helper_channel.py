"""The persistent channel: one long-lived ``docker exec`` of a small static helper, whose stdin
and stdout carry framed requests and replies (:mod:`.frames`).

The helper (``pyflue/sandbox/helper/pyflue-helper.c``) runs inside the container as the sandbox
user, with the container's limits and no capabilities; it has no network port. Its exec is
started by hand on the engine's unix socket with asyncio (``POST /exec/{id}/start`` with
``Upgrade: tcp``): after the upgrade the connection carries the helper's stdin raw one way and
its stdout/stderr, in the engine's 8-byte-header frames, the other way. One reader task
dispatches the helper's frames to the requests waiting for them by request id, so any number
of commands and file operations share the one connection. A command costs a round trip on
that connection instead of three engine calls.

What the helper cannot do falls to the :class:`~.exec_channel.ExecChannel` given as fallback:
commands as another user, signalling PID 1 from outside, archives with members owned by
someone else, links or special files, and whatever the sandbox user may not read or write
(the archive API works as root). Should the helper die (a command may kill it: it is the same
user), the requests in flight fail with a clear :class:`~pyflue.errors.SandboxError` (commands
just end when the container itself stopped, so its stop is reported as usual), and the next
call starts it again (``on_restart`` is told why), up to :data:`MAX_RESTARTS` times; after that,
or when it cannot be started again or sent garbage, every later call goes through the
fallback, and ``on_fallback`` is told why.
"""

from __future__ import annotations

import asyncio
import errno as errnos
import io
import itertools
import json
import logging
import posixpath
import queue
import struct
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import IO, Any, TypeVar

from pyflue._bridge import ThreadBridge
from pyflue.errors import EngineUnavailable, SandboxError, SandboxGone
from pyflue.sandbox.base import FileStat
from pyflue.sandbox.docker.channel import Archive, Chunk, Command, Completed
from pyflue.sandbox.docker.engine import translated
from pyflue.sandbox.docker.exec_channel import ExecChannel
from pyflue.sandbox.docker.frames import (
    DATA_CHUNK,
    HEADER,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    encode,
    encode_exec,
    encode_path,
    encode_u32,
    parse_error,
    parse_exit,
    parse_hello,
    parse_started,
    parse_stat,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

ENGINE_HEADER = struct.Struct(">BxxxL")
HELLO_TIMEOUT = 10.0
CREDIT_BATCH = 256 << 10  # output granted back to the helper in batches of this much
INLINE_BYTES = 256 << 10  # archives this small are planned and read on the event loop
INLINE_WAIT = 0.05  # how long a copy out waits to see whether it is small
# Copies larger than this go through the engine's archive API when it can see the path: for
# bulk, dockerd's own tar (one process) beats the relay through the helper (dockerd, shim,
# pipe, helper), most of all on a busy machine; for small files the helper wins (no HTTP).
BULK_BYTES = 8 << 20
SIGKILL = 9
MAX_RESTARTS = 3  # helpers started again in one container after one died under it


class HelperUnavailable(Exception):
    """The helper could not be started in this container; ``str()`` says why."""


@dataclass(frozen=True)
class _Broken:
    """Delivered to every request in flight when the channel ends."""

    error: SandboxError
    container_stopped: bool


_ABORT = object()
Item = Frame | _Broken | object


class HelperChannel:
    """A channel into one container over the helper's framed stdin/stdout."""

    def __init__(self, api: Any, bridge: ThreadBridge, container_id: str, *, user: str,
                 fallback: ExecChannel, on_fallback: Callable[[str], None] | None = None) -> None:
        self._api = api
        self._bridge = bridge
        self._cid = container_id
        self._user = user
        self.fallback = fallback
        self.on_fallback = on_fallback
        self.on_restart: Callable[[str], None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, Callable[[Item], None]] = {}
        self._auto_credit: dict[int, int] = {}  # request -> output received, not yet granted
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._uid_gid: tuple[int, int] | None = None
        self.pid: int | None = None  # the helper's pid in the container
        self.dead: str | None = None  # why the helper no longer serves, once it does not
        self._stderr = bytearray()
        self._closing = False
        self._broken_error: SandboxError | None = None
        self._watch: asyncio.Task[None] | None = None
        self._start_argv: list[str] = []
        self._socket_path = ""
        self._restartable = False  # the helper died under a running container: start it again
        self.restarts = 0
        self.spare_hits = 0  # commands that ran in the helper's spare shell
        self._revive_lock = asyncio.Lock()
        self._ended = False  # the reader saw the helper's stream end
        # A volume the engine's archive API sees as the container does (the workspace):
        # bulk copies out of it go that way (not tmpfs mounts such as /tmp: the engine
        # would read the image's layer under them).
        self.bulk_under: str | None = None

    # -- starting and stopping ----------------------------------------------------------------

    async def start(self, argv: Sequence[str], socket_path: str) -> None:
        """Starts the helper (``argv``) and waits for its greeting; HelperUnavailable when it
        cannot run."""
        self._loop = asyncio.get_running_loop()
        self._start_argv, self._socket_path = list(argv), socket_path
        with translated("starting the sandbox's channel helper", container=self._cid):
            created = await self._bridge.call(
                self._api.exec_create, self._cid, list(argv), stdin=True, stdout=True,
                stderr=True, user=self._user)
        exec_id = str(created["Id"])
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                socket_path, limit=1 << 22)
        except OSError as exc:
            raise HelperUnavailable(f"cannot open the engine socket {socket_path}: {exc}") from exc
        body = json.dumps({"Detach": False, "Tty": False}).encode()
        self._writer.write(
            f"POST /v{self._api.api_version}/exec/{exec_id}/start HTTP/1.1\r\n"
            "Host: docker\r\nContent-Type: application/json\r\n"
            f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                await self._upgrade()
                hello = await self._hello()
        except TimeoutError:
            self._writer.close()
            raise HelperUnavailable("the helper did not answer within "
                                    f"{HELLO_TIMEOUT:.0f} s") from None
        except BaseException:
            self._writer.close()
            raise
        self.pid = hello.pid
        self._uid_gid = (hello.uid, hello.gid)
        self._task = asyncio.ensure_future(self._read_loop(FrameDecoder()))
        self._watch = asyncio.ensure_future(self._watch_container())

    async def _upgrade(self) -> None:
        assert self._reader is not None
        status = await self._reader.readline()
        headers: dict[str, str] = {}
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        parts = status.split(None, 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if code in (101, 200):
            return
        size = int(headers.get("content-length", "0") or 0)
        text = (await self._reader.read(min(size, 4096))).decode("utf-8", "replace")
        try:
            text = json.loads(text).get("message", text)
        except (ValueError, AttributeError):
            pass
        if code == 404:
            raise SandboxGone(f"starting the channel helper: the run's container "
                              f"{self._cid[:12]} no longer exists")
        if code == 409:
            raise SandboxGone(f"starting the channel helper: the run's container "
                              f"{self._cid[:12]} is no longer running")
        raise HelperUnavailable(f"the engine refused to start the helper (HTTP {code}: {text})")

    async def _hello(self) -> Any:
        """Reads engine frames until the helper's first frame, its greeting."""
        decoder = FrameDecoder()
        while True:
            stream, data = await self._engine_frame()
            if stream is None:
                said = self._stderr.decode("utf-8", "replace").strip()
                raise HelperUnavailable(f"the helper ended before greeting ({said or 'no output'})")
            if stream != 1:
                continue
            try:
                frames = decoder.feed(data)
            except FrameError:
                self._keep_stderr(data)  # the engine's own error text ("no such file"...)
                raise HelperUnavailable(
                    "the helper did not start: "
                    + self._stderr.decode("utf-8", "replace").strip()[:300]) from None
            if frames:
                if frames[0].kind != Kind.HELLO or len(frames) > 1:
                    raise HelperUnavailable("the helper's greeting was not a greeting")
                try:
                    return parse_hello(frames[0].payload)
                except FrameError as exc:
                    raise HelperUnavailable(str(exc)) from None

    async def _engine_frame(self) -> tuple[int | None, bytes]:
        """One frame of the engine's stream: (stream id, data); (None, b"") at its end."""
        assert self._reader is not None
        try:
            head = await self._reader.readexactly(ENGINE_HEADER.size)
            stream, size = ENGINE_HEADER.unpack(head)
            data = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, OSError):
            return None, b""
        if stream == 2:
            self._keep_stderr(data)
        return stream, data

    def _keep_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-4096]

    async def _watch_container(self) -> None:
        """While requests wait, looks at the container now and then (from 1 s on): the
        engine does not always end the helper's stream when the container goes (gVisor), and
        a request must not wait forever for a helper that is gone."""
        delay = 1.0
        while self._task is not None and not self._task.done():
            await asyncio.sleep(delay)
            if not self._pending:
                delay = 1.0
                continue
            delay = min(delay * 1.5, 5.0)
            try:
                state = await self._bridge.call(self._api.inspect_container, self._cid)
                running = bool(state.get("State", {}).get("Running"))
            except Exception:  # NotFound, or the engine cannot say: the reader decides
                running = False
            if not running and self._task is not None:
                self._task.cancel()
                return

    @property
    def serving(self) -> bool:
        """Whether the helper's stream is open and nothing says it died (no round trip)."""
        return (self.dead is None and not self._closing and not self._ended
                and self._task is not None and not self._task.done())

    async def _ensure(self) -> None:
        """Starts the helper again when it died under a running container (see the module
        docstring); when it cannot be, later calls use the fallback."""
        if self.dead is None or not self._restartable:
            return
        async with self._revive_lock:
            if self.dead is None or not self._restartable or self._closing:
                return
            why, self._restartable = self.dead, False
            self.restarts += 1
            if self._watch is not None:
                self._watch.cancel()
            self._stderr = bytearray()
            self._broken_error = None
            self._ended = False
            try:
                await self.start(self._start_argv, self._socket_path)
            except (HelperUnavailable, SandboxError, OSError) as exc:
                self.dead = f"the channel helper could not be started again: {exc}"
                if self.on_fallback is not None:
                    self.on_fallback(self.dead)
                return
            self.dead = None
            if self.on_restart is not None:
                self.on_restart(f"{why}; started again")

    async def close(self) -> None:
        """Closes the connection (the helper then ends) and stops the reader."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # -- the reader -------------------------------------------------------------------------

    async def _read_loop(self, decoder: FrameDecoder) -> None:
        reason = "the helper's stream ended"
        try:
            while True:
                stream, data = await self._engine_frame()
                if stream is None:
                    self._ended = True
                    said = self._stderr.decode("utf-8", "replace").strip()
                    reason = "the channel helper in the sandbox ended" + (
                        f" ({said[-300:]})" if said else " (killed by a command?)")
                    break
                if stream != 1:
                    continue
                try:
                    frames = decoder.feed(data)
                except FrameError as exc:
                    reason = f"the channel helper sent garbage: {exc}"
                    log.warning("%s (container %s)", reason, self._cid[:12])
                    break
                for frame in frames:
                    self._dispatch(frame)
        finally:
            await self._broken(reason)

    def _dispatch(self, frame: Frame) -> None:
        deliver = self._pending.get(frame.id)
        if deliver is None:
            return  # a request already given up (aborted, dropped): its late frames are moot
        if frame.kind in (Kind.STDOUT, Kind.STDERR) and frame.id in self._auto_credit:
            owed = self._auto_credit[frame.id] + len(frame.payload)
            if owed >= CREDIT_BATCH:
                self._send(encode_u32(Kind.CREDIT, frame.id, owed))
                owed = 0
            self._auto_credit[frame.id] = owed
        deliver(frame)

    async def _broken(self, reason: str) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._closing:
            self.dead = "the channel was closed"
            pending, self._pending = self._pending, {}
            for deliver in pending.values():
                deliver(_Broken(SandboxError("the sandbox's channel was closed"),
                                container_stopped=True))
            return
        # The stream of a container that is being killed can end before the engine marks it
        # stopped: a container still running is looked at again for a while.
        gone = "is no longer running"
        running = False
        engine_lost: EngineUnavailable | None = None
        for attempt in range(6):
            if attempt:
                await asyncio.sleep(0.1)
            try:
                with translated("inspecting the run's container", container=self._cid):
                    running = bool((await self._bridge.call(
                        self._api.inspect_container, self._cid)).get("State", {}).get("Running"))
            except SandboxGone:
                running, gone = False, "no longer exists"
            except EngineUnavailable as exc:  # the engine itself went away, not the helper
                running, engine_lost = False, exc
            except SandboxError:
                running = False
            if not running:
                break
        if engine_lost is not None:
            self.dead = "the engine does not answer"
            self._broken_error = engine_lost
            pending, self._pending = self._pending, {}
            for deliver in pending.values():
                deliver(_Broken(engine_lost, container_stopped=False))
            return
        if running:
            self.dead = reason
            self._restartable = (self.restarts < MAX_RESTARTS
                                 and not reason.startswith("the channel helper sent garbage"))
            later = ("the next call starts it again" if self._restartable
                     else "later calls go through docker exec")
            error: SandboxError = SandboxError(f"{reason}; {later}")
        else:
            self.dead = "the container stopped"
            error = SandboxGone(f"the run's container {self._cid[:12]} {gone}")
        self._broken_error = error
        pending, self._pending = self._pending, {}
        for deliver in pending.values():
            deliver(_Broken(error, container_stopped=not running))
        if running and not self._restartable and self.on_fallback is not None:
            self.on_fallback(reason)

    # -- plumbing ---------------------------------------------------------------------------

    def _usable(self, user: str | None = None) -> bool:
        return self.dead is None and self._writer is not None and (
            user is None or user == self._user)

    def _may_serve(self, user: str) -> bool:
        """Whether a call as ``user`` goes to the helper (now, or once it is started again)."""
        return user == self._user and self._writer is not None and (
            self.dead is None or self._restartable)

    def _send(self, data: bytes | memoryview) -> None:
        assert self._writer is not None
        if not self._writer.is_closing():
            self._writer.write(data)

    def _open(self, deliver: Callable[[Item], None], *, auto_credit: bool = False) -> int:
        rid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        self._pending[rid] = deliver
        if auto_credit:
            self._auto_credit[rid] = 0
        return rid

    def _forget(self, rid: int, *, kill: bool = False, drop: bool = False) -> None:
        """Stops caring about a request; ``kill`` kills its process group, ``drop`` has the
        helper discard its output."""
        if self._pending.pop(rid, None) is not None and self._usable():
            if kill:
                self._send(encode_u32(Kind.KILL, rid, SIGKILL))
            if drop:
                self._send(encode(Kind.DROP, rid))
        self._auto_credit.pop(rid, None)

    def grant(self, rid: int, amount: int) -> None:
        if rid in self._pending and self._usable():
            self._send(encode_u32(Kind.CREDIT, rid, amount))

    async def _unary(self, data_for: Callable[[int], bytes]) -> Frame:
        """Sends one request and returns its one reply frame."""
        future: asyncio.Future[Item] = asyncio.get_running_loop().create_future()

        def deliver(item: Item) -> None:
            if not future.done():
                future.set_result(item)

        rid = self._open(deliver)
        try:
            self._send(data_for(rid))
            item = await future
        finally:
            self._forget(rid)
        if isinstance(item, _Broken):
            raise item.error
        assert isinstance(item, Frame)
        return item

    # -- the Channel protocol ---------------------------------------------------------------

    def command(
        self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str], user: str,
        shell: bool = False,
    ) -> Command:
        if not self._may_serve(user):
            return self.fallback.command(argv, cwd=cwd, env=env, user=user)
        return HelperCommand(self, list(argv), cwd, dict(env), user, shell)

    def tells_pids(self, user: str) -> bool:
        return self._may_serve(user)

    async def run(self, argv: Sequence[str], *, user: str) -> Completed:
        await self._ensure()
        if not self._usable(user):
            return await self.fallback.run(argv, user=user)
        command = HelperCommand(self, list(argv), "", {}, user)
        out, err = bytearray(), bytearray()
        async for stream, data in command.output():
            (out if stream == "stdout" else err).extend(data)
        if command.exit_code is None and self._broken_error is not None:
            raise self._broken_error  # a helper command must end with its code, or fail
        return Completed(exit_code=command.exit_code, stdout=bytes(out), stderr=bytes(err))

    async def spawn(self, argv: Sequence[str], *, user: str) -> None:
        await self._ensure()
        if not self._usable(user):
            return await self.fallback.spawn(argv, user=user)
        reply = await self._unary(
            lambda rid: encode_exec(rid, argv, cwd="", env={}, detached=True))
        _expect_started(reply, argv[0])

    async def signal_init(self, signal: str) -> None:
        await self.fallback.signal_init(signal)  # from outside the container, as docker kill

    async def stat(self, path: str) -> FileStat | None:
        await self._ensure()
        if not self._usable():
            return await self.fallback.stat(path)
        reply = await self._unary(lambda rid: encode_path(Kind.STAT, rid, path))
        if reply.kind == Kind.ERROR:
            code, _message = _parse_or_fail(parse_error, reply.payload, f"stat {path}")
            if code in (errnos.ENOENT, errnos.ENOTDIR):
                return None
            return await self.fallback.stat(path)  # e.g. not searchable by the sandbox user
        if reply.kind != Kind.STAT_REPLY:
            raise SandboxError(f"stat {path}: the channel helper answered {reply.kind.name}")
        st = _parse_or_fail(parse_stat, reply.payload, f"stat {path}")
        target = st.link_target
        if target is not None and not st.resolved:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        return FileStat(path=path, kind=st.kind,  # type: ignore[arg-type]
                        size=st.size, mode=st.mode & 0o7777,
                        mtime=datetime.fromtimestamp(st.mtime_ns / 1e9, tz=UTC),
                        link_target=target)

    async def put_archive(self, dest_dir: str, archive: Archive) -> None:
        await self._ensure()
        size = len(archive) if isinstance(archive, bytes) else \
            await self._bridge.call(_size_of, archive)
        if self._usable() and size > BULK_BYTES:
            try:
                return await self.fallback.put_archive(dest_dir, archive)
            except (SandboxGone, EngineUnavailable):
                raise
            except SandboxError:  # refused (a tmpfs under a read-only root): the helper
                if not isinstance(archive, bytes):
                    await self._bridge.call(archive.seek, 0)
        plan = None
        if self._usable():
            assert self._uid_gid is not None
            if isinstance(archive, bytes) and len(archive) <= INLINE_BYTES:
                plan = _plan_put(archive, self._uid_gid)  # a few headers: not worth a thread
            else:
                plan = await self._bridge.call(_plan_put, archive, self._uid_gid)
        if plan is None or not await self._put(dest_dir, archive, plan):
            if not isinstance(archive, bytes):
                await self._bridge.call(archive.seek, 0)
            await self.fallback.put_archive(dest_dir, archive)

    async def _put(self, dest_dir: str, archive: Archive, plan: list[_Member]) -> bool:
        """Sends the archive's members; False when the helper refused one (then the
        fallback does the whole archive again, as root through the engine)."""
        loop = asyncio.get_running_loop()
        replies: list[asyncio.Future[Item]] = []
        view = memoryview(archive) if isinstance(archive, bytes) else None
        rids = []
        try:
            for member in plan:
                future: asyncio.Future[Item] = loop.create_future()
                rid = self._open(partial(_settle, future))
                rids.append(rid)
                replies.append(future)
                target = posixpath.join(dest_dir, member.name)
                if member.is_dir:
                    self._send(encode_path(Kind.MKDIR, rid, target, member.mode))
                    continue
                self._send(encode_path(Kind.PUT, rid, target, member.mode))
                offset, left = member.offset, member.size
                while left > 0:
                    n = min(left, DATA_CHUNK)
                    data: bytes | memoryview
                    if view is not None:
                        data = view[offset:offset + n]  # no copy: the transport takes views
                    else:
                        data = await self._bridge.call(_read_at, archive, offset, n)
                    if len(data) != n:
                        raise SandboxError("the archive to copy in ended early")
                    self._send(HEADER.pack(n, Kind.DATA, rid))
                    self._send(data)
                    offset += n
                    left -= n
                    assert self._writer is not None
                    await self._writer.drain()
                self._send(encode(Kind.END, rid))
            ok = True
            for future in replies:
                item = await future
                if isinstance(item, _Broken):
                    if item.container_stopped:
                        raise item.error
                    return False
                assert isinstance(item, Frame)
                if item.kind == Kind.ERROR:
                    ok = False
                elif item.kind != Kind.DONE:
                    raise SandboxError(f"copying files into {dest_dir}: the channel helper "
                                       f"answered {item.kind.name}")
            return ok
        except (ConnectionError, OSError):
            return False
        finally:
            for rid in rids:
                self._forget(rid)

    async def get_archive(self, path: str, read: Callable[[Iterator[bytes]], T]) -> T:
        await self._ensure()
        if not self._usable():
            return await self.fallback.get_archive(path, read)
        sink = _TarSink(asyncio.get_running_loop())
        rid = self._open(sink.deliver)
        try:
            self._send(encode_path(Kind.TAR, rid, path))
            first = await sink.first
            if isinstance(first, _Broken):
                raise first.error
            assert isinstance(first, Frame)
            if first.kind == Kind.ERROR:
                # Missing, or not readable by the sandbox user: the engine answers as it does.
                self._forget(rid)
                return await self.fallback.get_archive(path, read)
            _expect_started(first, "tar")
            if await sink.small_and_whole():
                # All of a small tar is in (a 1 KiB read_file): read it here, where it is,
                # rather than pay two thread hand-offs for it.
                return read(sink.chunks(self, rid, path))
            if self._bulk(path) and sink.bulk_file():
                self._forget(rid, kill=True, drop=True)
                try:
                    return await self.fallback.get_archive(path, read)
                except (EngineUnavailable, OSError):
                    raise
                except SandboxError as exc:  # the engine cannot see it as we do: the helper
                    log.info("bulk copy of %s through the engine failed (%s); helper", path, exc)
                    return await self._get_through_helper(path, read)
            return await self._bridge.call(read, sink.chunks(self, rid, path))
        finally:
            self._forget(rid, kill=True, drop=True)

    async def _get_through_helper(self, path: str, read: Callable[[Iterator[bytes]], T]) -> T:
        sink = _TarSink(asyncio.get_running_loop())
        rid = self._open(sink.deliver)
        try:
            self._send(encode_path(Kind.TAR, rid, path))
            first = await sink.first
            if isinstance(first, _Broken):
                raise first.error
            assert isinstance(first, Frame)
            _expect_started(first, "tar")
            return await self._bridge.call(read, sink.chunks(self, rid, path))
        finally:
            self._forget(rid, kill=True, drop=True)

    def _bulk(self, path: str) -> bool:
        root = self.bulk_under
        return root is not None and (path == root or path.startswith(root.rstrip("/") + "/"))


def _settle(future: asyncio.Future[Item], item: Item) -> None:
    if not future.done():
        future.set_result(item)


def _expect_started(reply: Frame, what: str) -> None:
    if reply.kind == Kind.STARTED:
        _parse_or_fail(parse_started, reply.payload, "a STARTED")
        return
    if reply.kind == Kind.ERROR:
        _code, message = _parse_or_fail(parse_error, reply.payload, f"starting {what}")
        raise SandboxError(f"cannot start {what} in the sandbox: {message}")
    raise SandboxError(f"starting {what}: the channel helper answered {reply.kind.name}")


def _parse_or_fail(parse: Callable[[bytes], T], payload: bytes, what: str) -> T:
    try:
        return parse(payload)
    except FrameError as exc:
        raise SandboxError(f"{what}: the channel helper sent a bad reply ({exc})") from None


# Enters "$1" inside the container, then becomes the command ("$2"...).
_ENTER = 'cd -- "$1" || exit 126; shift; exec "$@"'


class HelperCommand:
    """One command through the helper: started when its output is first read."""

    def __init__(self, channel: HelperChannel, argv: list[str], cwd: str, env: dict[str, str],
                 user: str, shell: bool = False) -> None:
        self._channel = channel
        self._argv = argv
        self._shell = shell
        self._cwd = cwd
        self._env = env
        self._user = user
        self._lock = threading.Lock()
        self._phase = "new"
        self._aborted = False
        self._wake: Callable[[], object] | None = None
        self._delegate: Command | None = None
        self._exit_code: int | None = None
        self._pid: int | None = None

    @property
    def exit_code(self) -> int | None:
        if self._delegate is not None:
            return self._delegate.exit_code
        return self._exit_code

    @property
    def pid(self) -> int | None:
        return self._pid  # None when it went through the fallback

    def cancel_start(self) -> bool:
        with self._lock:
            if self._phase == "new":
                self._phase = "abandoned"
            return self._phase == "abandoned"

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            wake, delegate = self._wake, self._delegate
        if delegate is not None:
            delegate.abort()
        if wake is not None:
            wake()

    def output(self) -> AsyncIterator[Chunk]:
        return self._output()

    async def _output(self) -> AsyncIterator[Chunk]:
        with self._lock:
            if self._phase == "abandoned" or self._aborted:
                return
            self._phase = "starting"
        channel = self._channel
        await channel._ensure()
        if not channel._usable(self._user):
            # The helper would have entered the folder itself (chdir_nofollow); docker exec
            # must not be handed it (the runtime resolves it on the host side, CVE-2024-21626):
            # a shell inside enters it, then runs the command in its place.
            argv, cwd = self._argv, self._cwd
            if cwd:
                argv, cwd = ["/bin/sh", "-c", _ENTER, "pyflue-cd", cwd, *argv], "/"
            delegate = channel.fallback.command(argv, cwd=cwd, env=self._env, user=self._user)
            with self._lock:
                self._delegate = delegate
            async for chunk in delegate.output():
                yield chunk
            return
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Item] = asyncio.Queue()
        rid = channel._open(items.put_nowait, auto_credit=True)
        with self._lock:
            self._wake = partial(loop.call_soon_threadsafe, items.put_nowait, _ABORT)
            aborted = self._aborted
        finished = started = redo = False
        try:
            if aborted:
                return
            channel._send(encode_exec(rid, self._argv, cwd=self._cwd, env=self._env,
                                      shell=self._shell))
            while True:
                item = await items.get()
                if item is _ABORT:
                    return
                if isinstance(item, _Broken):
                    finished = True
                    if (not started and not item.container_stopped
                            and not isinstance(item.error, EngineUnavailable)):
                        # The helper died (swept by the init's kill of every process) before
                        # it started the command: nothing ran, so docker exec runs it instead.
                        redo = True
                        break
                    if started and not isinstance(item.error, EngineUnavailable):
                        # A stream broken once started just ends (the contract), with no exit
                        # code: the container stopped (the sandbox reports why), or the helper
                        # was killed, most often with the command (the init's kill of every
                        # process on a timeout or a `kill -USR1 1`; on_fallback says so).
                        return
                    raise item.error
                assert isinstance(item, Frame)
                if item.kind in (Kind.STDOUT, Kind.STDERR):
                    yield ("stdout" if item.kind == Kind.STDOUT else "stderr"), item.payload
                elif item.kind == Kind.STARTED:
                    start = _parse_or_fail(parse_started, item.payload, "a STARTED")
                    self._pid = start.pid
                    started = True
                    if start.spare:
                        channel.spare_hits += 1
                elif item.kind == Kind.EXIT:
                    self._exit_code = _parse_or_fail(parse_exit, item.payload, "an EXIT")
                    finished = True
                    return
                elif item.kind == Kind.ERROR:
                    finished = True
                    _code, message = _parse_or_fail(parse_error, item.payload, "an ERROR")
                    raise SandboxError(f"cannot start {self._argv[0]} in the sandbox: {message}")
                else:
                    raise SandboxError(f"{self._argv[0]}: the channel helper sent an unexpected "
                                       f"{item.kind.name} frame")
        finally:
            if finished:
                channel._forget(rid)
            elif self._aborted:  # the command may go on; its output is no longer wanted
                channel._forget(rid, drop=True)
            else:  # the reader went away (cancelled): the command goes too
                channel._forget(rid, kill=True, drop=True)
        if redo:
            delegate = channel.fallback.command(self._argv, cwd=self._cwd, env=self._env,
                                                user=self._user)
            with self._lock:
                self._delegate = delegate
            async for chunk in delegate.output():
                yield chunk


class _TarSink:
    """Where the frames of a TAR request go: its first reply to the event loop, the rest to
    the worker thread running the caller's reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.first: asyncio.Future[Item] = loop.create_future()
        self._loop = loop
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._buffered = 0
        self._whole = False  # the tar's end (or an error) is in the queue
        self._waiter: asyncio.Future[None] | None = None
        self._head = bytearray()  # the tar's first bytes (its first header)

    def deliver(self, item: Item) -> None:
        if not self.first.done():
            self.first.set_result(item)
            return
        self._queue.put(item)
        if isinstance(item, Frame) and item.kind in (Kind.STDOUT, Kind.STDERR):
            self._buffered += len(item.payload)
            if item.kind == Kind.STDOUT and len(self._head) < 512:
                self._head += item.payload[:512 - len(self._head)]
        else:
            self._whole = True
        if self._waiter is not None and not self._waiter.done() and (
                self._whole or self._buffered > INLINE_BYTES):
            self._waiter.set_result(None)

    async def small_and_whole(self) -> bool:
        """Waits briefly for the whole tar; True when it came and is small."""
        if not self._whole and self._buffered <= INLINE_BYTES:
            self._waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(INLINE_WAIT):
                    await self._waiter
            except TimeoutError:
                return False
            finally:
                self._waiter = None
        return self._whole and self._buffered <= INLINE_BYTES

    def bulk_file(self) -> bool:
        """Whether the tar is of one regular file over BULK_BYTES (read from its first
        header, which the helper writes unextended for a plain name); its chunks, when
        not, are left in the queue for :meth:`chunks`."""
        head = bytes(self._head[:512])  # not yet 512 bytes in: not known, the helper reads
        if len(head) < 512 or head[156:157] not in (b"0", b"\0"):
            return False
        try:
            size = int(head[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            return False
        return size > BULK_BYTES

    def chunks(self, channel: HelperChannel, rid: int, path: str) -> Iterator[bytes]:
        """Runs on the worker thread: the tar's bytes, granting the helper more as they go."""
        errors = bytearray()
        owed = 0
        while True:
            item = self._queue.get()
            if isinstance(item, _Broken):
                raise item.error
            assert isinstance(item, Frame)
            if item.kind == Kind.STDOUT:
                if item.payload:
                    owed += len(item.payload)
                    if owed >= CREDIT_BATCH:
                        self._loop.call_soon_threadsafe(channel.grant, rid, owed)
                        owed = 0
                    yield item.payload
            elif item.kind == Kind.STDERR:
                errors += item.payload[:4096 - len(errors)]
            elif item.kind == Kind.EXIT:
                code = _parse_or_fail(parse_exit, item.payload, "an EXIT")
                if code == 0:
                    return
                said = errors.decode("utf-8", "replace").strip()
                raise SandboxError(f"copying {path} out of the sandbox failed: "
                                   f"{said or f'exit code {code}'}")
            else:
                raise SandboxError(f"copying {path} out of the sandbox: the channel helper "
                                   f"sent an unexpected {item.kind.name} frame")


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    mode: int
    offset: int
    size: int


def _plan_put(archive: Archive, uid_gid: tuple[int, int]) -> list[_Member] | None:
    """The members of a tar the helper can write itself, or None when it cannot (members of
    another owner, links, special files, names leaving the folder, an unseekable stream)."""
    if isinstance(archive, bytes):
        fileobj: IO[bytes] = io.BytesIO(archive)
    else:
        if not archive.seekable():
            return None
        archive.seek(0)
        fileobj = archive
    plan = []
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for member in tar:
                parts = member.name.split("/")
                if (member.name.startswith("/") or ".." in parts or not member.name
                        or (member.uid, member.gid) != uid_gid
                        or not (member.isreg() or member.isdir())):
                    return None
                plan.append(_Member(member.name.rstrip("/"), member.isdir(), member.mode,
                                    member.offset_data, member.size))
    except tarfile.TarError:
        return None  # let the engine say what is wrong with it
    finally:
        if not isinstance(archive, bytes):
            archive.seek(0)
    return plan


def _read_at(archive: IO[bytes], offset: int, size: int) -> bytes:
    archive.seek(offset)
    return archive.read(size)


def _size_of(archive: Archive) -> int:
    if isinstance(archive, bytes):
        return len(archive)
    if not archive.seekable():
        return 0
    size = archive.seek(0, 2)
    archive.seek(0)
    return size
