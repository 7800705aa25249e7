"""Archives read out of a sandbox: only one regular file's bytes, never links or paths."""

from __future__ import annotations

import io
import tarfile

import pytest

from pyflue.sandbox.base import PutEntry
from pyflue.sandbox.tario import build_tar, read_single_file


def _tar(*members: tarfile.TarInfo, data: bytes = b"") -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    raw = buf.getvalue()
    return [raw[i:i + 1000] for i in range(0, len(raw), 1000)]  # streamed in pieces


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0
            ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


@pytest.mark.parametrize("member", [
    _member("../../etc/passwd", tarfile.SYMTYPE, "/etc/passwd"),
    _member("/abs", tarfile.LNKTYPE, "/etc/shadow"),
    _member("dev", tarfile.CHRTYPE),
    _member("dir", tarfile.DIRTYPE),
])
def test_anything_but_a_regular_file_is_refused(member: tarfile.TarInfo) -> None:
    with pytest.raises(IsADirectoryError):
        read_single_file(_tar(member), max_bytes=1 << 20)


def test_a_regular_file_is_read_whatever_its_name_and_nothing_is_written() -> None:
    data = b"x" * 5000
    chunks = _tar(_member("../../evil", size=len(data)), data=data)
    assert read_single_file(chunks, max_bytes=1 << 20) == data  # bytes only; no path used


def test_a_file_over_the_read_cap_is_refused_before_it_is_read() -> None:
    chunks = _tar(_member("big", size=5000), data=b"y" * 5000)
    with pytest.raises(OverflowError):
        read_single_file(chunks, max_bytes=100)


def test_archives_written_in_carry_the_sandbox_user_and_relative_names() -> None:
    raw = build_tar([PutEntry("a", None), PutEntry("a/b.txt", b"hi", 0o600)], uid=1000, gid=1000)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [(m.name, m.uid, m.gid, m.isdir()) for m in members] == [
        ("a", 1000, 1000, True), ("a/b.txt", 1000, 1000, False)]
    assert members[1].mode == 0o600
