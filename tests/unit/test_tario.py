"""Archives read out of a sandbox: only one regular file's bytes, never links or paths."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pyflue.sandbox.base import CopyLimits, PutEntry
from pyflue.sandbox.tario import (
    CopyTooLarge,
    build_tar,
    extract_tree,
    local_entries,
    read_single_file,
)


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


def _hostile_tar() -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
                mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size, info.mode = kind, link, len(data), mode
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("out", tarfile.DIRTYPE, mode=0o755)
        add("out/ok.txt", data=b"fine")
        add("out/sub", tarfile.DIRTYPE, mode=0o755)
        add("out/sub/tool", data=b"#!/bin/sh\n", mode=0o4755)  # setuid: the bit is dropped
        add("out/../../escaped.txt", data=b"no")
        add("/etc/pyflue-absolute", data=b"no")
        add("out/passwd", tarfile.SYMTYPE, link="/etc/passwd")
        add("out/hard", tarfile.LNKTYPE, link="out/ok.txt")  # a second name: copied
        add("out/hard-out", tarfile.LNKTYPE, link="/etc/passwd")
        add("out/tty", tarfile.CHRTYPE)
        add("out/pipe", tarfile.FIFOTYPE)
        add("elsewhere/x.txt", data=b"another top folder")
    raw = buf.getvalue()
    return [raw[i:i + 700] for i in range(0, len(raw), 700)]


def test_a_hostile_folder_archive_is_neutralised(tmp_path: Path) -> None:
    dest = tmp_path / "into" / "artifacts"
    dest.parent.mkdir()
    report = extract_tree(_hostile_tar(), dest, limits=_caps(1 << 20, 1 << 20))
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert written == ["hard", "ok.txt", "sub", "sub/tool"]
    assert (dest / "ok.txt").read_bytes() == (dest / "hard").read_bytes() == b"fine"
    assert (dest / "sub" / "tool").stat().st_mode & 0o7777 == 0o755
    assert sorted(report.skipped) == sorted([
        "out/../../escaped.txt", "/etc/pyflue-absolute", "out/passwd", "out/hard-out", "out/tty",
        "out/pipe", "elsewhere/x.txt"])
    assert (report.files, report.bytes) == (3, 4 + 10 + 4)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["artifacts", "hard", "into", "ok.txt",
                                                           "sub", "tool"]


def _caps(file_bytes: int, total_bytes: int, entries: int = 1000) -> CopyLimits:
    return CopyLimits(file_bytes=file_bytes, total_bytes=total_bytes, entries=entries)


@pytest.mark.parametrize(("caps", "unit"), [
    ((5, 1 << 20, 1000), "bytes"), ((1 << 20, 8, 1000), "bytes"), ((1 << 20, 1 << 20, 4), "entries"),
])
def test_a_copy_past_a_cap_stops_and_leaves_nothing(
    tmp_path: Path, caps: tuple[int, int, int], unit: str,
) -> None:
    with pytest.raises(CopyTooLarge) as raised:
        extract_tree(_hostile_tar(), tmp_path / "artifacts", limits=_caps(*caps))
    assert raised.value.args[3] == unit
    assert list(tmp_path.iterdir()) == []


def test_a_flood_of_empty_files_is_capped_by_entries_both_ways(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").touch()
    local_entries(src, limits=_caps(1 << 20, 1 << 20, entries=51))  # 50 files and the folder
    with pytest.raises(CopyTooLarge) as raised:
        local_entries(src, limits=_caps(1 << 20, 1 << 20, entries=50))
    assert raised.value.args[1:] == (51, 50, "entries")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(_member("out", tarfile.DIRTYPE))
        for i in range(60):  # links count too: skipped, but each one is work
            tar.addfile(_member(f"out/l{i}", tarfile.SYMTYPE, link="/etc/passwd"))
    with pytest.raises(CopyTooLarge):
        extract_tree([buf.getvalue()], tmp_path / "o", limits=_caps(1 << 20, 1 << 20, 50))
    assert not (tmp_path / "o").exists()


def test_a_local_folder_goes_in_without_its_links(tmp_path: Path) -> None:
    src = tmp_path / "repo"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "run.sh").write_text("echo hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "secrets").symlink_to("/etc/passwd")
    (src / "linked").symlink_to(src / "pkg")
    entries, report = local_entries(src, limits=_caps(1 << 20, 1 << 20))
    assert [(e.path, None if e.is_dir else e.content(), e.mode) for e in entries] == [
        ("repo", None, 0o644), ("repo/run.sh", b"echo hi\n", 0o755),
        ("repo/pkg", None, 0o644), ("repo/pkg/mod.py", b"x = 1\n", 0o644)]
    assert sorted(report.skipped) == ["repo/linked", "repo/secrets"]
    with pytest.raises(CopyTooLarge):
        local_entries(src, limits=_caps(1 << 20, 10))


def test_names_the_host_cannot_hold_are_skipped_and_long_skip_lists_are_cut(
    tmp_path: Path
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member("out", tarfile.DIRTYPE))
        tar.addfile(_member("out/" + "x" * 300, size=2), io.BytesIO(b"hi"))  # > NAME_MAX
        for i in range(150):
            tar.addfile(_member(f"out/link{i}", tarfile.SYMTYPE, link="/etc/passwd"))
        tar.addfile(_member("out/kept", size=2), io.BytesIO(b"ok"))
    report = extract_tree([buf.getvalue()], tmp_path / "o", limits=_caps(10, 10))
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["kept"]
    assert report.skipped_count == 151 and len(report.skipped) == 100
    assert report.skipped[0] == "out/" + "x" * 300
