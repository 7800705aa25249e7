"""Uploaded archives: what is refused (naming the member and why), what is unpacked, and the
runner putting them in the workspace before the workflow sees it."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import tarfile
import zipfile
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from pyflue.api.app import create_app
from pyflue.errors import ConfigError, RunStateConflict, UploadRefused
from pyflue.events import EventType
from pyflue.models import Run, RunStatus, UploadInfo, new_run_id, utcnow
from pyflue.retention import Retention, keep_pruning, parse_age
from pyflue.sandbox.base import CopyLimits
from pyflue.sandbox.fake import FakeSandboxProvider
from pyflue.settings import ServerSettings, Settings
from pyflue.store import MemoryStore, SqlStore
from pyflue.store.base import RunUpdate
from pyflue.testing import fake_runner
from pyflue.uploads import check_archive, check_dest, pack_folder, unpack
from tests.conftest import WriteWorkflow

LIMITS = CopyLimits(file_bytes=1 << 20, total_bytes=1 << 20, entries=50)


def _tar(path: Path, *members: tuple[str, bytes, bytes | None, str], gz: bool = True) -> Path:
    """A tar(.gz) of (name, type, data, linkname) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            if kind == tarfile.REGTYPE:
                info.size = len(data or b"")
            if kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info, io.BytesIO(data or b"") if kind == tarfile.REGTYPE else None)
    path.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())
    return path


def _file(name: str, data: bytes = b"x") -> tuple[str, bytes, bytes, str]:
    return (name, tarfile.REGTYPE, data, "")


def _check(path: Path, limits: CopyLimits = LIMITS) -> UploadInfo:
    return check_archive(path, dest="src", part="upload:src (a.tar.gz)", filename="a.tar.gz",
                         limits=limits)


@pytest.mark.parametrize(("members", "member", "why"), [
    ([_file("../evil")], "../evil", "'..'"),
    ([_file("ok/../../evil")], "ok/../../evil", "'..'"),
    ([_file("/etc/evil")], "/etc/evil", "absolute"),
    ([("out", tarfile.SYMTYPE, None, "/etc")], "out", "outside the tree"),
    ([("out", tarfile.SYMTYPE, None, "../..")], "out", "outside the tree"),
    ([("lnk", tarfile.SYMTYPE, None, "inner"), _file("lnk/passwd")], "lnk/passwd",
     "through the symlink 'lnk'"),
    ([("hard", tarfile.LNKTYPE, None, "/etc/passwd")], "hard", "hard link"),
    ([("null", tarfile.CHRTYPE, None, "")], "null", "device"),
    ([("fifo", tarfile.FIFOTYPE, None, "")], "fifo", "device, fifo"),
])
def test_an_unsafe_member_is_refused_by_name_and_reason(
        tmp_path: Path, members: list[tuple[str, bytes, bytes | None, str]], member: str,
        why: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", _file("fine.txt"), *members)
    with pytest.raises(UploadRefused, match=why) as refused:
        _check(archive)
    assert f"member {member!r}" in refused.value.message
    assert "upload:src (a.tar.gz)" in refused.value.message
    assert "no run was created" in refused.value.message


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", *[_file(f"f{i}") for i in range(60)])
    with pytest.raises(UploadRefused, match="more than 50 members"):
        _check(archive)


def test_a_compressed_bomb_stops_at_the_byte_cap(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", _file("zeros", b"\0" * (3 << 20)))
    assert archive.stat().st_size < 20_000  # small on the wire
    with pytest.raises(UploadRefused, match="more than 1048576 bytes"):
        _check(archive)


def test_something_that_is_no_archive_says_so(tmp_path: Path) -> None:
    junk = tmp_path / "a.tar.gz"
    junk.write_bytes(b"hello, I am not a tar file" * 40)
    with pytest.raises(UploadRefused, match=r"cannot be read.*tar, tar\.gz or zip"):
        _check(junk)


def test_a_good_archive_is_counted_and_unpacks_only_files_and_folders(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", ("./", tarfile.DIRTYPE, None, ""),
                   ("./pkg", tarfile.DIRTYPE, None, ""), _file("./pkg/mod.py", b"x = 1\n"),
                   ("./pkg/alias.py", tarfile.SYMTYPE, None, "mod.py"),
                   ("./copy.py", tarfile.LNKTYPE, None, "./pkg/mod.py"), gz=False)
    info = check_archive(archive, dest="src", part="upload:src", filename=None, limits=LIMITS)
    assert (info.kind, info.files, info.folders, info.bytes) == ("tar", 2, 1, 12)
    assert info.skipped == ["pkg/alias.py"]  # a link inside the tree: skipped, not refused
    out = tmp_path / "out"
    unpack(archive, out, limits=LIMITS)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "copy.py", "pkg", "pkg/mod.py"]
    assert (out / "copy.py").read_bytes() == b"x = 1\n" and not (out / "copy.py").is_symlink()


def test_a_zip_is_checked_like_a_tar(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("docs/readme.md", "hello")
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../../escape", "no")
    assert _check(good).files == 1
    with pytest.raises(UploadRefused, match=re.escape("member '../../escape'")):
        _check(bad)


@pytest.mark.parametrize(("given", "stored"), [
    ("src", "src"), ("./a/b/", "a/b"), (".", ""), ("", ""), ("/workspace/src", "src")])
def test_destinations_are_relative_to_the_workspace(given: str, stored: str) -> None:
    assert check_dest(given) == stored


@pytest.mark.parametrize("given", ["/etc", "../up", "a/../../b"])
def test_a_destination_outside_the_workspace_is_refused(given: str) -> None:
    with pytest.raises(ConfigError, match="upload destination"):
        check_dest(given)


async def test_a_run_finds_its_uploads_in_place_and_in_ctx_uploads(
        project: Path, write_workflow: WriteWorkflow, tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "mod.py").write_text("x = 1\n")
    (folder / "link").symlink_to("pkg")
    write_workflow("uses", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    return {"uploads": [(u.dest, u.files, u.bytes, u.path()) for u in ctx.uploads],
            "text": await h.fs.read_file("/workspace/src/pkg/mod.py")}
""")
    runner = fake_runner(project, store=MemoryStore())
    staged = pack_folder(folder, tmp_path / "spool", dest="src", limits=LIMITS)
    assert staged.info.skipped == ["proj/link"]
    run = await runner.submit("uses", {}, uploads=[staged])
    done = await runner.execute(run.run_id)
    assert done.status is RunStatus.completed, done.error
    assert done.result == {"uploads": [["src", 1, 6, "/workspace/src"]], "text": "x = 1\n"}
    events = await runner.store.list_events(run.run_id)
    assert events[0].data["uploads"][0]["dest"] == "src"
    placed = [e.data for e in events if e.type is EventType.file_op]
    assert placed == [{"op": "upload", "path": "/workspace/src", "files": 1, "folders": 1,
                       "bytes": 6, "skipped": ["proj/link"], "skipped_count": 1}]


async def test_a_run_that_is_not_created_keeps_no_uploads(
        project: Path, write_workflow: WriteWorkflow, tmp_path: Path) -> None:
    write_workflow("w", "async def run(ctx):\n    return 1\n")
    (tmp_path / "d").mkdir()
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    await store.open()
    try:
        runner = fake_runner(project, store=store)
        first = await runner.submit("w", {}, idempotency_key="k")
        staged = pack_folder(tmp_path / "d", tmp_path / "spool", dest="d", limits=LIMITS)
        with pytest.raises(RunStateConflict, match="Idempotency-Key"):
            await runner.submit("w", {}, idempotency_key="k", uploads=[staged])
        assert [r.run_id for r in await store.list_runs()] == [first.run_id]
        async with store.engine.connect() as conn:  # nothing left under the refused run's id
            for table in ("uploads", "upload_chunks"):
                assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 0
    finally:
        await store.close()


async def _db_bytes(store: SqlStore, path: Path) -> int:
    """Bytes the SQLite file uses: its pages but the free ones (kept for reuse)."""
    async with store.engine.connect() as conn:  # everything in the main file, the WAL empty
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        free = (await conn.execute(text("PRAGMA freelist_count"))).scalar_one()
        page = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
    return int(path.stat().st_size - free * page)


async def test_a_large_payload_is_stored_once(
        project: Path, write_workflow: WriteWorkflow, tmp_path: Path) -> None:
    write_workflow("big", "async def run(ctx):\n    return len(ctx.payload['blob'])\n")
    path = tmp_path / "runs.db"
    store = SqlStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    try:
        runner = fake_runner(project, store=store)
        await runner.run("big", {"blob": "warm-up"})
        before = await _db_bytes(store, path)
        size = 4 << 20
        run = await runner.run("big", {"blob": "x" * size})
        grown = await _db_bytes(store, path) - before
        assert run.result == size
        start = (await store.list_events(run.run_id, types=[EventType.run_start]))[0]
        assert start.data["payload_truncated"] is True and "payload" not in start.data.wire
        # Once: in the run record, not in run_start too (SQLite rewrites a row it updates and
        # keeps the old version's pages free, for the next writes to reuse).
        assert grown < 1.25 * size, f"the store grew by {grown / size:.2f}x the payload"
    finally:
        await store.close()


async def test_the_retention_schedule_forgets_old_runs_until_stopped() -> None:
    store = MemoryStore()
    old = Run(run_id=new_run_id("w"), workflow="w", status=RunStatus.queued,
              created_at=utcnow() - timedelta(hours=3))
    await store.create_run(old)
    await store.update_run(old.run_id, RunUpdate(status=RunStatus.completed,
                                                 finished_at=utcnow() - timedelta(hours=2)))
    task = asyncio.create_task(keep_pruning(Retention(store), timedelta(hours=1), 0.05))
    try:
        for _ in range(200):
            if not await store.list_runs():
                break
            await asyncio.sleep(0.05)
        assert await store.list_runs() == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(("text_", "seconds"), [("30d", 30 * 86400), ("12h", 43200),
                                                ("90m", 5400), ("2w", 1209600), ("0s", 0)])
def test_ages_read_as_durations(text_: str, seconds: float) -> None:
    assert parse_age(text_).total_seconds() == seconds


def test_a_retention_that_is_no_age_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="write it like 30d"):
        ServerSettings(retention="a month")


@pytest.mark.parametrize(("body", "says"), [
    (b"garbage", "cannot be read"),
    (b'--xx\r\nContent-Disposition: form-data; name="upload:a"\r\n\r\nabc', "ends inside a part"),
    (b'--xx\r\nContent-Disposition: form-data; name="upload:../a"\r\n\r\nabc\r\n--xx--\r\n',
     "holds '..'"),
    (b'--xx\r\nContent-Disposition: form-data; name="other"\r\n\r\nabc\r\n--xx--\r\n',
     "unknown part 'other'"),
    (b'--xx\r\nContent-Disposition: form-data; name="payload"\r\n\r\n\r\n--xx--\r\n',
     "the `payload` part is empty"),
])
async def test_a_malformed_multipart_body_is_a_400_and_leaves_no_spool_file(
        project: Path, write_workflow: WriteWorkflow, body: bytes, says: str) -> None:
    write_workflow("w", "async def run(ctx):\n    return 1\n")
    settings = Settings(project_dir=project)
    app = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        r = await client.post("/workflows/w", content=body,
                              headers={"content-type": "multipart/form-data; boundary=xx"})
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
        assert (await client.get("/runs")).json()["runs"] == []
    assert list(settings.spool_dir.iterdir()) == []


def test_a_hard_link_to_a_dotfile_earlier_in_the_archive_is_a_copy(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", _file("./.env.example", b"A=1\n"),
                   ("./.env", tarfile.LNKTYPE, None, "./.env.example"))
    out = tmp_path / "out"
    unpack(archive, out, limits=LIMITS)
    assert (out / ".env").read_bytes() == b"A=1\n"


async def test_a_rerun_with_uploads_from_gets_the_earlier_runs_files(
        project: Path, write_workflow: WriteWorkflow) -> None:
    write_workflow("uses", """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    return {"dests": [u.dest for u in ctx.uploads],
            "text": await h.fs.read_file("/workspace/src/pkg/mod.py")}
""")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"x = 41\n"
        member = tarfile.TarInfo("pkg/mod.py")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    app = create_app(Settings(project_dir=project), store=MemoryStore(),
                     provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        first = await client.post("/workflows/uses?wait=result", data={"payload": "{}"},
                                  files={"upload:src": ("src.tar.gz", archive.getvalue())})
        assert first.status_code == 200, first.text
        body = first.json()
        want = {"dests": ["src"], "text": "x = 41\n"}
        assert body["result"] == want
        again = await client.post(f"/workflows/uses?wait=result&uploads_from={body['run_id']}",
                                  json={})
        assert again.status_code == 200, again.text
        assert again.json()["result"] == want and again.json()["run_id"] != body["run_id"]
        nope = await client.post("/workflows/uses?uploads_from=workflow:uses:nope", json={})
        assert nope.status_code == 404, nope.text
