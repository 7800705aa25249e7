"""Tar archives for the archive API: one tar per direction, built and read without surprises.

Archives we build carry the sandbox user's uid/gid and the current time. Archives we read are
streamed member by member; only regular files are ever returned as data, and member names that
are absolute, contain ``..`` or are links are never written anywhere on the host.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence

from pyflue.sandbox.base import PutEntry


def build_tar(entries: Sequence[PutEntry], *, uid: int, gid: int) -> bytes:
    """A tar holding ``entries`` (files and directories), owned by uid:gid."""
    now = time.time()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.uid, info.gid, info.mtime = uid, gid, int(now)
            info.uname = info.gname = ""
            if entry.data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(entry.data), entry.mode
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


class ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (what docker-py's get_archive yields)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def read_single_file(chunks: Iterable[bytes], *, max_bytes: int) -> bytes:
    """The data of the first member of a streamed tar, which must be a regular file."""
    reader = io.BufferedReader(ChunkReader(chunks), buffer_size=1 << 20)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                raise IsADirectoryError(member.name)
            if member.size > max_bytes:
                raise OverflowError(member.size)
            extracted = tar.extractfile(member)
            assert extracted is not None
            return extracted.read()
    raise FileNotFoundError("empty archive")


def list_members(chunks: Iterable[bytes]) -> list[tarfile.TarInfo]:
    """The member headers of a streamed tar (data is skipped, never kept)."""
    reader = io.BufferedReader(ChunkReader(chunks), buffer_size=1 << 20)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        return list(tar)
