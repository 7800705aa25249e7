"""Files in: archives sent with an invocation, checked before the run exists, unpacked into its
workspace when its container starts.

An upload is an archive (tar, tar.gz or zip) and a destination in the workspace. The rules are
the file API's (:mod:`pyflue.sandbox.tario`, :mod:`pyflue.sandbox.paths`), with one difference:
what the file API skips quietly when copying *out*, an upload refuses whole, so a caller learns
at once which member is wrong and why (:class:`~pyflue.errors.UploadRefused`):

- member names: no absolute name, no ``..``, no NUL;
- links: a symlink or hard link whose target leaves the tree is refused, and so is a member
  reached through an earlier symlink (the symlink-then-file trick); a symlink inside the tree is
  skipped (listed in :attr:`UploadInfo.skipped`), as ``fs.upload`` skips links;
- devices, fifos and sockets are refused;
- at most ``PYFLUE_SANDBOX_COPY_MAX_ENTRIES`` members and ``PYFLUE_SANDBOX_COPY_MAX_BYTES``
  unpacked (one file and all of them), counted while the archive streams, so a compressed bomb
  stops at the cap.

:func:`check_archive` reads an archive without writing anything; :func:`unpack` applies the same
checks and writes regular files and folders only (no setuid bits) under a new folder. The
archive is stored as it was sent (compressed) with its run; see :mod:`pyflue.store.base`.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Literal, cast

from pyflue.errors import ConfigError, UploadRefused
from pyflue.models import UploadInfo
from pyflue.sandbox.base import CopyLimits
from pyflue.sandbox.tario import CopyTooLarge, local_entries, write_tar

Kind = Literal["tar", "tar.gz", "zip"]
MemberKind = Literal["file", "dir", "symlink", "hardlink", "other"]
CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedUpload:
    """An archive on this host's disk (a spool file), checked, with where it goes."""

    path: Path
    info: UploadInfo


def check_dest(dest: str) -> str:
    """A destination as stored: relative to the workspace, normalized (``""`` is the workspace
    itself). ConfigError for an absolute one, or one with ``..`` or a NUL."""
    if "\x00" in dest:
        raise ConfigError(f"upload destination {dest!r} holds a NUL character")
    text = dest.strip()
    if text.startswith("/workspace/") or text == "/workspace":
        text = text[len("/workspace"):].lstrip("/")
    if text.startswith("/"):
        raise ConfigError(f"upload destination {dest!r} is absolute: give a path relative to "
                          "the workspace, e.g. src")
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if ".." in parts:
        raise ConfigError(f"upload destination {dest!r} holds '..': give a path inside the "
                          "workspace, e.g. src")
    return "/".join(parts)


def parse_upload_arg(text: str) -> tuple[Path, str]:
    """``DIR[:DEST]`` (the ``--upload`` option): the local folder and the destination (by
    default the folder's own name)."""
    folder, sep, dest = text.partition(":")
    path = Path(folder or ".").expanduser()
    if not path.is_dir():
        raise ConfigError(f"--upload {text}: {path} is not a folder on this machine; give "
                          "DIR or DIR:DEST")
    name = Path(os.path.abspath(path)).name
    return path, check_dest(dest if sep else name)


def sniff(path: Path) -> Kind:
    """What kind of archive ``path`` holds, by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"
    if not head:
        raise ValueError("it is empty")
    raise ValueError("it is not a tar, tar.gz or zip archive")


@dataclass
class _Member:
    name: str
    kind: MemberKind
    size: int
    link: str = ""
    mode: int = 0o644
    open: IO[bytes] | None = None  # a file's data, while the member is current


@dataclass
class _Tally:
    files: int = 0
    folders: int = 0
    bytes: int = 0
    entries: int = 0
    skipped: list[str] = field(default_factory=list)
    file_names: dict[str, int] = field(default_factory=dict)  # name -> size
    dir_names: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)


def _tar_members(path: Path) -> Iterator[_Member]:
    with tarfile.open(path, mode="r:*") as tar:
        for info in tar:
            kind: MemberKind = ("file" if info.isreg() else "dir" if info.isdir()
                                else "symlink" if info.issym() else "hardlink" if info.islnk()
                                else "other")
            yield _Member(info.name, kind, info.size, info.linkname, info.mode,
                          tar.extractfile(info) if kind == "file" else None)


def _zip_members(path: Path) -> Iterator[_Member]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                with archive.open(info) as data:
                    target = data.read(4096).decode("utf-8", "replace")
                yield _Member(info.filename, "symlink", 0, target)
            elif info.is_dir():
                yield _Member(info.filename, "dir", 0)
            elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                yield _Member(info.filename, "other", 0)
            else:
                with archive.open(info) as data:
                    yield _Member(info.filename, "file", info.file_size, "",
                                  (mode & 0o777) or 0o644, data)


def _members(path: Path, kind: Kind) -> Iterator[_Member]:
    return _zip_members(path) if kind == "zip" else _tar_members(path)


def _parts(name: str) -> list[str] | str:
    """The member's path parts, or why its name is refused."""
    if "\x00" in name:
        return "its name holds a NUL character"
    if name.startswith("/") or PurePosixPath(name).is_absolute() or name[1:3] == ":\\":
        return "its name is absolute"
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return "its name holds '..'"
    return parts


def _link_target(parts: list[str], link: str) -> str | None:
    """A symlink's target as a name inside the tree, or None when it leaves it."""
    if not link or link.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join("/".join(parts[:-1]), link))
    return None if joined == ".." or joined.startswith("../") or joined.startswith("/") \
        else joined


def _walk(path: Path, kind: Kind, limits: CopyLimits, out: Path | None) -> _Tally:
    tally = _Tally()
    for member in _members(path, kind):
        tally.entries += 1
        if tally.entries > limits.entries:
            raise _Refusal(member.name, f"the archive holds more than {limits.entries} members "
                                        "(PYFLUE_SANDBOX_COPY_MAX_ENTRIES)")
        parts = _parts(member.name)
        if isinstance(parts, str):
            raise _Refusal(member.name, parts)
        if not parts:  # "./": the tree itself
            continue
        name = "/".join(parts)
        through = next(("/".join(parts[:i]) for i in range(1, len(parts))
                        if "/".join(parts[:i]) in tally.links or
                        "/".join(parts[:i]) in tally.file_names), None)
        if through is not None:
            what = "the symlink" if through in tally.links else "the file"
            raise _Refusal(member.name, f"it is reached through {what} {through!r} earlier in "
                                        "the archive")
        _take(member, parts, name, tally, limits, out)
    return tally


def _take(member: _Member, parts: list[str], name: str, tally: _Tally, limits: CopyLimits,
          out: Path | None) -> None:
    if member.kind == "other":
        raise _Refusal(member.name, "it is a device, fifo or socket; only files, folders and "
                                    "links inside the tree are taken")
    if member.kind == "symlink":
        if _link_target(parts, member.link) is None:
            raise _Refusal(member.name, f"it is a link to {member.link!r}, outside the tree")
        tally.links.add(name)
        tally.skipped.append(name)
        return
    others = tally.file_names if member.kind == "dir" else tally.dir_names
    if name in tally.links or name in others:
        raise _Refusal(member.name, "its name is used by an earlier member of another kind")
    if member.kind == "dir":
        tally.dir_names.add(name)
        tally.folders += 1
        if out is not None:
            out.joinpath(*parts).mkdir(parents=True, exist_ok=True)
        return
    size = member.size
    source: Path | None = None
    if member.kind == "hardlink":
        linked = _parts(member.link)
        target = "/".join(linked) if isinstance(linked, list) else ""
        if target not in tally.file_names:
            raise _Refusal(member.name, f"it is a hard link to {member.link!r}, which is not a "
                                        "file earlier in the archive")
        size = tally.file_names[target]
        source = out.joinpath(*target.split("/")) if out is not None else None
    if size > limits.file_bytes or tally.bytes + size > limits.total_bytes:
        raise _Refusal(member.name, f"the archive unpacks to more than {limits.total_bytes} "
                                    "bytes (PYFLUE_SANDBOX_COPY_MAX_BYTES)")
    if out is not None:
        _write(out.joinpath(*parts), member, source, limits.total_bytes - tally.bytes)
    tally.file_names[name] = size
    tally.files += 1
    tally.bytes += size


def _write(target: Path, member: _Member, source: Path | None, room: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        shutil.copyfile(source, target)
        return
    assert member.open is not None
    written = 0
    with open(target, "wb") as f:
        while chunk := member.open.read(CHUNK):
            written += len(chunk)
            if written > room:  # a zip whose header understates its size
                raise _Refusal(member.name, "it unpacks to more than its header says")
            f.write(chunk)
    os.chmod(target, (member.mode & 0o777) or 0o644)


class _Refusal(Exception):
    def __init__(self, member: str, why: str) -> None:
        super().__init__(member, why)
        self.member, self.why = member, why


def _refused(part: str, exc: BaseException) -> UploadRefused:
    if isinstance(exc, _Refusal):
        return UploadRefused(f"{part}: member {exc.member!r} is refused: {exc.why}; "
                             "nothing was written and no run was created")
    return UploadRefused(f"{part}: the archive cannot be read ({exc}); send a tar, "
                         "tar.gz or zip archive")


_UNREADABLE = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, OSError,
               ValueError, zlib.error)


def check_archive(path: Path, *, dest: str, part: str, filename: str | None,
                  limits: CopyLimits) -> UploadInfo:
    """Reads the archive at ``path`` through (writing nothing) and returns what it holds.

    ``part`` names it in errors (``upload:src (checkout.tar.gz)``). Raises UploadRefused
    naming the member and why, or saying the archive cannot be read."""
    try:
        kind = sniff(path)
        tally = _walk(path, kind, limits, None)
    except (_Refusal, *_UNREADABLE) as exc:
        raise _refused(part, exc) from None
    return UploadInfo(dest=dest, kind=kind, filename=filename, files=tally.files,
                      folders=tally.folders, bytes=tally.bytes, size=path.stat().st_size,
                      skipped=tally.skipped[:100])


def unpack(path: Path, out: Path, *, limits: CopyLimits) -> None:
    """Unpacks a checked archive into the new folder ``out`` (regular files and folders only).
    UploadRefused as :func:`check_archive`; ``out`` is removed again on failure."""
    out.mkdir()
    try:
        _walk(path, sniff(path), limits, out)
    except (_Refusal, *_UNREADABLE) as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise _refused(path.name, exc) from None


def pack_folder(src: Path, spool: Path, *, dest: str, limits: CopyLimits) -> StagedUpload:
    """A local folder as a tar.gz in ``spool`` (``--upload DIR``): its regular files and
    folders (links and special files skipped, as ``fs.upload`` does), within the caps."""
    try:
        entries, report = local_entries(src.resolve(), limits=limits)
    except CopyTooLarge as exc:
        what, amount, cap, unit = exc.args
        raise ConfigError(f"--upload {src}: {what} comes to more than {cap} {unit} "
                          f"({amount}); raise PYFLUE_SANDBOX_COPY_MAX_"
                          f"{'ENTRIES' if unit == 'entries' else 'BYTES'} or send less") from None
    top = src.resolve().name
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar.gz", dir=spool)
    os.close(fd)
    inside = [replace(e, path=e.path[len(top):].lstrip("/")) for e in entries]
    with gzip.open(name, "wb", compresslevel=6) as out:
        write_tar([e for e in inside if e.path], cast(BinaryIO, out), uid=0, gid=0)
    path = Path(name)
    info = UploadInfo(dest=dest, kind="tar.gz", filename=top, files=report.files,
                      folders=report.folders - 1, bytes=report.bytes, size=path.stat().st_size,
                      skipped=list(report.skipped))
    return StagedUpload(path, info)


def spooled(path: Path) -> Generator[bytes, None, None]:
    """A spool file's bytes in chunks."""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
