"""The wire format of the helper channel (:mod:`.helper_channel`): pure encoding and strict
parsing, no I/O.

Both directions carry frames: a 12-byte header (payload length, u32 big-endian; frame type,
u8; three zero bytes; request id, u32 big-endian) and at most :data:`MAX_FRAME` bytes of
payload. The helper (``pyflue/sandbox/helper/pyflue-helper.c``) speaks the same format.

What comes from the container is untrusted: :class:`FrameDecoder` refuses a header it cannot
trust (an oversized length, non-zero padding, an unknown type) with :class:`FrameError`, after
which the byte stream cannot be resynchronised; the ``parse_*`` functions refuse a payload that
does not fit its type, which fails only the request it answers.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HEADER = struct.Struct(">IB3xI")
MAX_FRAME = 1 << 20
DATA_CHUNK = MAX_FRAME  # the payload of one DATA frame of a file sent in
PROTOCOL_VERSION = 1


class FrameError(Exception):
    """Bytes that are not a valid frame, or a payload that does not fit its frame type."""


class Kind(enum.IntEnum):
    # requests (host -> helper)
    EXEC = 1
    KILL = 2
    CREDIT = 3
    DROP = 4
    STAT = 5
    MKDIR = 6
    PUT = 7
    DATA = 8
    END = 9
    TAR = 10
    # replies (helper -> host)
    HELLO = 0x81
    STARTED = 0x82
    STDOUT = 0x83
    STDERR = 0x84
    EXIT = 0x85
    DONE = 0x86
    ERROR = 0x87
    STAT_REPLY = 0x88


REPLIES = frozenset(k for k in Kind if k >= 0x80)


@dataclass(frozen=True)
class Frame:
    kind: Kind
    id: int
    payload: bytes


def encode(kind: Kind, request_id: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"a frame payload of {len(payload)} bytes is over {MAX_FRAME}")
    if not 0 <= request_id < 1 << 32:
        raise FrameError(f"request id {request_id} out of range")
    return HEADER.pack(len(payload), kind, request_id) + payload


def _cstrings(items: Sequence[str], what: str) -> bytes:
    out = bytearray()
    for item in items:
        raw = item.encode()
        if b"\0" in raw:
            raise ValueError(f"{what} contains a NUL byte: {item[:40]!r}")
        out += raw + b"\0"
    return bytes(out)


SHELL_FLAG = 1  # EXEC: argv is [bash, "-c", command, $0]; the helper's spare shell may run it
STARTED_SPARE = 1  # STARTED: the command runs in a spare shell the helper started beforehand


def encode_exec(request_id: int, argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
                detached: bool = False, shell: bool = False) -> bytes:
    """An EXEC request. ``shell``: ``argv`` is ``[bash, "-c", command, name]``, which the
    helper may hand to a spare shell started ahead with the same bash, name, cwd and env."""
    if not argv:
        raise ValueError("a command needs at least its program name")
    if shell and (detached or len(argv) != 4 or argv[1] != "-c"):
        raise ValueError("a shell EXEC is [shell, '-c', command, name], not detached")
    pairs = []
    for key, value in env.items():
        if not key or "=" in key:
            raise ValueError(f"invalid environment variable name {key!r}")
        pairs.append(f"{key}={value}")
    head = struct.pack(">BB2xII", 1 if detached else 0, SHELL_FLAG if shell else 0, len(argv),
                       len(pairs))
    body = _cstrings([cwd], "the working folder") + _cstrings(argv, "an argument") + \
        _cstrings(pairs, "an environment variable")
    return encode(Kind.EXEC, request_id, head + body)


def encode_path(kind: Kind, request_id: int, path: str, mode: int | None = None) -> bytes:
    raw = path.encode()
    if not raw or b"\0" in raw or len(raw) >= 4096:
        raise ValueError(f"invalid path {path[:80]!r}")
    head = b"" if mode is None else struct.pack(">I", mode & 0o7777)
    return encode(kind, request_id, head + raw)


def encode_u32(kind: Kind, request_id: int, value: int) -> bytes:
    return encode(kind, request_id, struct.pack(">I", value))


class FrameDecoder:
    """Cuts the helper's byte stream into frames. Once it raised, it is broken for good."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._broken: FrameError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken is not None:
            raise self._broken
        self._buf += data
        frames = []
        offset = 0
        buf = self._buf
        while len(buf) - offset >= HEADER.size:
            length, kind, request_id = HEADER.unpack_from(buf, offset)
            if buf[offset + 5:offset + 8] != b"\0\0\0" or length > self._max \
                    or kind not in REPLIES:
                self._broken = FrameError(
                    f"garbage on the helper channel (header {bytes(buf[offset:offset + 12])!r})")
                raise self._broken
            end = offset + HEADER.size + length
            if len(buf) < end:
                break
            frames.append(Frame(Kind(kind), request_id, bytes(buf[offset + HEADER.size:end])))
            offset = end
        del buf[:offset]
        return frames


@dataclass(frozen=True)
class Hello:
    version: int
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class StatReply:
    kind: str  # file, dir, symlink, other
    mode: int
    size: int
    mtime_ns: int
    link_target: str | None
    resolved: bool


def parse_hello(payload: bytes) -> Hello:
    if len(payload) != 16:
        raise FrameError(f"a HELLO frame of {len(payload)} bytes (expected 16)")
    return Hello(*struct.unpack(">IIII", payload))


def parse_u32(payload: bytes, what: str) -> int:
    if len(payload) != 4:
        raise FrameError(f"{what} frame of {len(payload)} bytes (expected 4)")
    value: int = struct.unpack(">I", payload)[0]
    return value


@dataclass(frozen=True)
class Started:
    pid: int  # 0 for a copy out the helper wrote itself
    spare: bool  # the command runs in the spare shell (see encode_exec)


def parse_started(payload: bytes) -> Started:
    if len(payload) != 8:
        raise FrameError(f"a STARTED frame of {len(payload)} bytes (expected 8)")
    pid, flags = struct.unpack(">II", payload)
    if flags & ~STARTED_SPARE:
        raise FrameError(f"a STARTED frame with unknown flags {flags:#x}")
    return Started(pid, bool(flags & STARTED_SPARE))


def parse_exit(payload: bytes) -> int:
    code = parse_u32(payload, "an EXIT")
    if code > 255 + 128:
        raise FrameError(f"an exit code of {code}")
    return code


def parse_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < 4 or len(payload) > 4 + 1024:
        raise FrameError(f"an ERROR frame of {len(payload)} bytes")
    return struct.unpack(">I", payload[:4])[0], payload[4:].decode("utf-8", "replace")


_KINDS = {0: "file", 1: "dir", 2: "symlink", 3: "other"}


def parse_stat(payload: bytes) -> StatReply:
    if len(payload) < 32 or len(payload) > 32 + 4096:
        raise FrameError(f"a STAT frame of {len(payload)} bytes")
    kind, unresolved, mode, size, sec, nsec = struct.unpack(">BB2xIQqI4x", payload[:32])
    if kind not in _KINDS or unresolved > 1 or nsec >= 10**9:
        raise FrameError("a STAT frame with impossible fields")
    target = payload[32:]
    link = target.decode("utf-8", "surrogateescape") if kind == 2 and target else None
    if kind != 2 and target:
        raise FrameError("a STAT frame with a link target for something not a link")
    return StatReply(_KINDS[kind], mode, size, sec * 10**9 + nsec, link, not unresolved)
