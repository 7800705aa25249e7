"""Tar archives for the archive API: one tar per direction, built and read without surprises.

Archives we build carry the sandbox user's uid/gid and the current time. Archives we read are
streamed member by member; only regular files are ever returned as data, and member names that
are absolute, contain ``..`` or are links are never written anywhere on the host.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from pyflue.sandbox.base import CopyReport, PutEntry


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


class CopyTooLarge(Exception):
    """A copy went past a size cap; ``args`` = (what, size, cap)."""


def extract_tree(chunks: Iterable[bytes], dest: Path, *, max_file_bytes: int,
                 max_total_bytes: int) -> CopyReport:
    """Unpacks a streamed tar of one file or folder (as the archive API sends it) to ``dest``.

    Only regular files and folders are written, under ``dest`` and nowhere else: members with
    absolute names or ``..``, links of either kind, devices and fifos are skipped and listed in
    the report; setuid, setgid and sticky bits are dropped. Everything is unpacked next to
    ``dest`` first and moved into place at the end, so a copy cut short (a cap, a broken
    stream) leaves nothing behind. ``dest`` must not exist yet.
    """
    report = CopyReport()
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pyflue-", dir=dest.parent))
    root = staging / "root"
    try:
        reader = io.BufferedReader(ChunkReader(chunks), buffer_size=1 << 20)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            top: str | None = None
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if top is None and parts:
                    top = parts[0]
                unsafe = (not parts or member.name.startswith("/") or ".." in parts
                          or parts[0] != top)
                if unsafe or not (member.isreg() or member.isdir()):
                    report.skipped.append(member.name)
                    continue
                target = root.joinpath(*parts[1:])
                try:
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        report.folders += 1
                        continue
                    if member.size > max_file_bytes:
                        raise CopyTooLarge(member.name, member.size, max_file_bytes)
                    if report.bytes + member.size > max_total_bytes:
                        raise CopyTooLarge("the copy", report.bytes + member.size, max_total_bytes)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(target, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    os.chmod(target, member.mode & 0o777)
                except (NotADirectoryError, IsADirectoryError, FileExistsError):
                    report.skipped.append(member.name)  # a name used twice, as file and folder
                    continue
                report.files += 1
                report.bytes += member.size
        if not root.exists():
            raise FileNotFoundError("the archive was empty")
        os.replace(root, dest)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def local_entries(src: Path, *, max_total_bytes: int) -> tuple[list[PutEntry], CopyReport]:
    """A local file or folder as entries to copy in: regular files and folders only.

    Names are relative to ``src``'s parent (the first part is ``src``'s own name). Symlinks
    are not followed; they and special files are skipped and listed in the report.
    """
    report = CopyReport()
    entries: list[PutEntry] = []

    def add_file(path: Path, name: str) -> None:
        size = path.stat().st_size
        if report.bytes + size > max_total_bytes:
            raise CopyTooLarge("the copy", report.bytes + size, max_total_bytes)
        entries.append(PutEntry(name, path.read_bytes(), path.stat().st_mode & 0o777))
        report.files += 1
        report.bytes += size

    if src.is_symlink() or not (src.is_file() or src.is_dir()):
        raise FileNotFoundError(f"{src} is not a regular file or folder")
    if src.is_file():
        add_file(src, src.name)
        return entries, report
    for folder, dirs, files in os.walk(src):
        base = Path(folder)
        rel = PurePosixPath(src.name, *base.relative_to(src).parts)
        entries.append(PutEntry(str(rel), None))
        report.folders += 1
        for name in sorted(dirs):
            if (base / name).is_symlink():
                report.skipped.append(str(rel / name))
        dirs[:] = sorted(d for d in dirs if not (base / d).is_symlink())
        for name in sorted(files):
            path = base / name
            if path.is_symlink() or not path.is_file():
                report.skipped.append(str(rel / name))
            else:
                add_file(path, str(rel / name))
    return entries, report
