"""The artifact store contract (over the memory store, real SQLite and real PostgreSQL), names,
ranges and folder tars, and ``harness.artifacts`` over the fake sandbox."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from pyflue.api.app import create_app
from pyflue.artifacts import ArtifactLimits, ArtifactStore, NewFile, check_name, content_type
from pyflue.artifacts.folder import FolderArtifactStore
from pyflue.errors import (
    ArtifactTooLarge,
    ArtifactUnavailable,
    ConfigError,
    RunNotFound,
)
from pyflue.events import ArtifactSavedEvent, EventType
from pyflue.models import Run, RunStatus, new_run_id, utcnow
from pyflue.settings import ArtifactSettings, Settings
from pyflue.store import MemoryStore, RunStore, SqlStore
from pyflue.testing import FakeSandboxProvider, fake_runner
from tests.conftest import WriteWorkflow

LIMITS = ArtifactLimits(max_bytes=1000, run_max_bytes=1500, max_count=3)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def runs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    s: RunStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    else:
        s = SqlStore(request.getfixturevalue("postgres_url"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def store(runs: RunStore, tmp_path: Path) -> FolderArtifactStore:
    return FolderArtifactStore(tmp_path / "artifacts", runs, LIMITS)


async def _new_run(runs: RunStore) -> str:
    run = await runs.create_run(Run(run_id=new_run_id("ci"), workflow="ci",
                                    status=RunStatus.running, payload={}, created_at=utcnow()))
    return run.run_id


def _file(tmp_path: Path, data: bytes, name: str = "src") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def _read(store: ArtifactStore, run_id: str, name: str, **span: int) -> bytes:
    artifact = next(a for a in await store.list(run_id) if a.name == name)
    return b"".join([c async for c in await store.open(artifact, run_id, **span)])


async def test_a_saved_artifact_is_listed_with_its_sha256_and_reads_back(
        store: FolderArtifactStore, runs: RunStore, tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    data = b"<testsuite tests='1'/>" * 10
    saved = await store.save(run_id, "reports/junit.xml", _file(tmp_path, data),
                             path="/workspace/reports/junit.xml")
    assert saved.sha256 == hashlib.sha256(data).hexdigest() and saved.size == len(data)
    assert saved.content_type == "application/xml"
    assert [a.name for a in await store.list(run_id)] == ["reports/junit.xml"]
    assert await _read(store, run_id, "reports/junit.xml") == data
    assert await _read(store, run_id, "reports/junit.xml", start=5, stop=9) == data[5:9]
    # Stored atomically: only the content file, named by its hash; no part file left.
    assert [p.name for p in (store.root / run_id.replace(":", "%3A")).iterdir()] == [saved.sha256]


async def test_saving_a_name_again_replaces_it(store: FolderArtifactStore, runs: RunStore,
                                               tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    await store.save(run_id, "out.txt", _file(tmp_path, b"one"), path="/workspace/out.txt")
    await store.save(run_id, "out.txt", _file(tmp_path, b"two!"), path="/workspace/out.txt")
    listed = await store.list(run_id)
    assert [(a.name, a.size) for a in listed] == [("out.txt", 4)]
    assert await _read(store, run_id, "out.txt") == b"two!"


async def test_an_artifact_over_its_cap_is_refused_and_nothing_is_kept(
        store: FolderArtifactStore, runs: RunStore, tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    with pytest.raises(ArtifactTooLarge, match=r"over the cap of 1000 bytes per artifact.*"
                                               r"PYFLUE_ARTIFACTS_MAX_BYTES"):
        await store.save(run_id, "big.bin", _file(tmp_path, b"x" * 1001), path="/w/big.bin")
    assert await store.list(run_id) == []
    run_dir = store.root / run_id.replace(":", "%3A")
    assert not run_dir.exists() or list(run_dir.iterdir()) == []


async def test_a_run_over_its_byte_or_count_cap_is_refused(
        store: FolderArtifactStore, runs: RunStore, tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    await store.save(run_id, "a", _file(tmp_path, b"x" * 900), path="/w/a")
    with pytest.raises(ArtifactTooLarge, match="PYFLUE_ARTIFACTS_RUN_MAX_BYTES"):
        await store.save(run_id, "b", _file(tmp_path, b"x" * 700), path="/w/b")
    await store.save(run_id, "b", _file(tmp_path, b"x" * 10), path="/w/b")
    await store.save(run_id, "c", _file(tmp_path, b"x" * 10), path="/w/c")
    with pytest.raises(ArtifactTooLarge, match="PYFLUE_ARTIFACTS_MAX_COUNT"):
        await store.save(run_id, "d", _file(tmp_path, b"x"), path="/w/d")
    assert [a.name for a in await store.list(run_id)] == ["a", "b", "c"]


async def test_a_batch_over_a_cap_keeps_none_of_it(store: FolderArtifactStore, runs: RunStore,
                                                   tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    files = [NewFile(f"d/{i}", _file(tmp_path, b"x" * 600, f"f{i}"), f"/w/d/{i}")
             for i in range(3)]
    with pytest.raises(ArtifactTooLarge, match="PYFLUE_ARTIFACTS_RUN_MAX_BYTES"):
        await store.save_all(run_id, files)
    assert await store.list(run_id) == []


async def test_replacing_one_of_two_names_with_the_same_content_keeps_the_other(
        store: FolderArtifactStore, runs: RunStore, tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    same = _file(tmp_path, b"same bytes")
    await store.save_all(run_id, [NewFile("a", same, "/w/a"), NewFile("b", same, "/w/b")])
    await store.save(run_id, "a", _file(tmp_path, b"new", "other"), path="/w/a")
    assert await _read(store, run_id, "b") == b"same bytes"
    assert await _read(store, run_id, "a") == b"new"


async def test_an_unknown_run_is_run_not_found(store: FolderArtifactStore,
                                               tmp_path: Path) -> None:
    with pytest.raises(RunNotFound):
        await store.list("workflow:ci:nope")
    with pytest.raises(RunNotFound):
        await store.save("workflow:ci:nope", "a", _file(tmp_path, b"x"), path="/w/a")


async def test_delete_run_removes_its_artifacts_and_no_other_runs(
        store: FolderArtifactStore, runs: RunStore, tmp_path: Path) -> None:
    gone, kept = await _new_run(runs), await _new_run(runs)
    for run_id in (gone, kept):
        await store.save(run_id, "a.txt", _file(tmp_path, run_id.encode()), path="/w/a.txt")
    await store.delete_run(gone)
    assert await store.list(gone) == []
    assert not (store.root / gone.replace(":", "%3A")).exists()
    assert await _read(store, kept, "a.txt") == kept.encode()


async def test_content_missing_from_this_workers_folder_is_a_clear_error(
        runs: RunStore, tmp_path: Path) -> None:
    run_id = await _new_run(runs)
    writer = FolderArtifactStore(tmp_path / "one", runs, LIMITS)
    reader = FolderArtifactStore(tmp_path / "other", runs, LIMITS)
    await writer.save(run_id, "a.txt", _file(tmp_path, b"x"), path="/w/a.txt")
    (artifact,) = await reader.list(run_id)
    with pytest.raises(ArtifactUnavailable, match="must share one PYFLUE_ARTIFACTS_DIR"):
        await reader.open(artifact, run_id)


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "./a", "a/", "tab\there",
                                  "x" * 1001])
def test_names_that_are_not_relative_paths_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="artifact name"):
        check_name(name)


def test_content_types_are_guessed_from_the_name() -> None:
    assert content_type("r/junit.xml") == "application/xml"
    assert content_type("pkg-1.0-py3-none-any.whl") == "application/octet-stream"
    assert content_type("logs.tar.gz") == "application/gzip"


# -- harness.artifacts and the HTTP routes, over the fake sandbox ------------------------------

CI = '''
from pyflue import create_agent

agent = create_agent(lambda ctx: {"artifacts": ["reports/*.xml"]})

async def run(ctx):
    harness = await ctx.init(agent)
    await harness.fs.write_file("reports/junit.xml", "<testsuite/>")
    await harness.fs.write_file("dist/pkg.whl", b"PK\\x03\\x04wheel")
    await harness.fs.write_file("dist/notes/readme.txt", "read me")
    saved = await harness.artifacts.save("dist", name="build")
    await harness.artifacts.save("dist/*.whl")
    if ctx.payload.get("fail"):
        raise RuntimeError("tests failed")
    return [a.name for a in saved]
'''


@pytest.fixture
async def ci_app(project: Path, write_workflow: WriteWorkflow) -> AsyncIterator[httpx.AsyncClient]:
    write_workflow("ci", CI)
    settings = Settings(project_dir=project)
    app = create_app(settings, store=MemoryStore(), provider=FakeSandboxProvider())
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://test") as client:
        yield client


async def _run_ci(client: httpx.AsyncClient, payload: dict[str, bool]) -> str:
    answer = await client.post("/workflows/ci?wait=result", json=payload)
    run_id: str = answer.json()["run_id"]
    return run_id


async def test_saved_files_folders_and_globs_are_listed_by_name(
        ci_app: httpx.AsyncClient) -> None:
    run_id = await _run_ci(ci_app, {})
    listed = (await ci_app.get(f"/runs/{run_id}/artifacts")).json()["artifacts"]
    assert [a["name"] for a in listed] == [
        "build/notes/readme.txt", "build/pkg.whl", "dist/pkg.whl", "reports/junit.xml"]
    junit = next(a for a in listed if a["name"] == "reports/junit.xml")
    assert junit["sha256"] == hashlib.sha256(b"<testsuite/>").hexdigest()
    assert junit["path"] == "/workspace/reports/junit.xml"
    events = (await ci_app.get(f"/runs/{run_id}/events",
                               params={"types": "artifact_saved"})).json()["events"]
    assert [e["data"]["name"] for e in events] == [
        "build/notes/readme.txt", "build/pkg.whl", "dist/pkg.whl", "reports/junit.xml"]


async def test_a_failing_run_still_gets_the_agents_artifacts(ci_app: httpx.AsyncClient) -> None:
    run_id = await _run_ci(ci_app, {"fail": True})
    assert (await ci_app.get(f"/runs/{run_id}")).json()["status"] == "failed"
    got = await ci_app.get(f"/runs/{run_id}/artifacts/reports/junit.xml")
    assert got.status_code == 200 and got.content == b"<testsuite/>"


async def test_a_download_has_its_length_and_answers_ranges(ci_app: httpx.AsyncClient) -> None:
    run_id = await _run_ci(ci_app, {})
    url = f"/runs/{run_id}/artifacts/dist/pkg.whl"
    whole = await ci_app.get(url)
    assert whole.headers["content-length"] == str(len(b"PK\x03\x04wheel"))
    assert whole.headers["x-artifact-sha256"] == hashlib.sha256(whole.content).hexdigest()
    part = await ci_app.get(url, headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"\x03\x04wh"
    assert part.headers["content-range"] == "bytes 2-5/9"
    tail = await ci_app.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == b"wheel"
    past = await ci_app.get(url, headers={"Range": "bytes=9-"})
    assert past.status_code == 416 and past.headers["content-range"] == "bytes */9"
    assert past.json()["error"]["type"] == "range_not_satisfiable"


async def test_a_folder_downloads_as_one_tar(ci_app: httpx.AsyncClient) -> None:
    run_id = await _run_ci(ci_app, {})
    got = await ci_app.get(f"/runs/{run_id}/artifacts/build")
    assert got.headers["content-type"] == "application/x-tar"
    assert int(got.headers["content-length"]) == len(got.content)
    with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert members == {"build/notes/readme.txt": b"read me", "build/pkg.whl": b"PK\x03\x04wheel"}


async def test_unknown_artifacts_and_runs_are_404_with_what_there_is(
        ci_app: httpx.AsyncClient) -> None:
    run_id = await _run_ci(ci_app, {})
    missing = await ci_app.get(f"/runs/{run_id}/artifacts/nope.xml")
    assert missing.status_code == 404
    assert "no artifact or folder of artifacts named 'nope.xml'" in missing.json()["error"][
        "message"]
    assert "reports/junit.xml" in missing.json()["error"]["message"]
    assert (await ci_app.get("/runs/workflow:ci:nope/artifacts")).status_code == 404


async def test_saving_without_a_match_is_a_clear_error(project: Path,
                                                       write_workflow: WriteWorkflow) -> None:
    write_workflow("none", '''
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    harness = await ctx.init(agent)
    await harness.artifacts.save("reports/*.xml")
''')
    runner = fake_runner(project)
    run = await runner.run("none", {})
    assert run.status is RunStatus.failed and run.error is not None
    assert run.error.message == "no file or folder in the workspace matches 'reports/*.xml'"
    assert runner.store is not None
    events = await runner.store.list_events(run.run_id, types=[EventType.artifact_saved])
    assert not [e for e in events if isinstance(e, ArtifactSavedEvent)]


async def test_a_granted_secret_in_a_name_is_redacted_and_the_content_kept_as_written(
        project: Path, write_workflow: WriteWorkflow) -> None:
    write_workflow("leaky", '''
from pyflue import create_agent
agent = create_agent(lambda ctx: {"secrets": ["DEPLOY_TOKEN"]})
async def run(ctx):
    harness = await ctx.init(agent)
    await harness.fs.write_file("out/s3cr3t-value.txt", "token=s3cr3t-value")
    return [a.name for a in await harness.artifacts.save("out")]
''')
    runner = fake_runner(project)
    runner.env = {"DEPLOY_TOKEN": "s3cr3t-value"}
    run = await runner.run("leaky", {})
    assert run.result == ["out/[REDACTED:DEPLOY_TOKEN].txt"]
    (event,) = await runner.store.list_events(run.run_id, types=[EventType.artifact_saved])
    assert "s3cr3t" not in event.model_dump_json()
    assert await _read(runner.artifacts, run.run_id, "out/[REDACTED:DEPLOY_TOKEN].txt") == (
        b"token=s3cr3t-value")
    (listed,) = await runner.artifacts.list(run.run_id)
    assert listed.path == "/workspace/out/[REDACTED:DEPLOY_TOKEN].txt"


def test_the_artifact_folder_is_beside_the_sqlite_store_unless_set(tmp_path: Path) -> None:
    assert Settings(project_dir=tmp_path).artifacts_dir == tmp_path / ".pyflue" / "artifacts"
    db = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'runs.db'}"
    in_db_folder = Settings(project_dir=tmp_path, store_url=db).artifacts_dir
    assert in_db_folder == tmp_path / "db" / "artifacts"
    shared = Settings(project_dir=tmp_path, artifacts=ArtifactSettings(dir=Path("/srv/shared")))
    assert shared.artifacts_dir == Path("/srv/shared")
    relative = Settings(project_dir=tmp_path, artifacts=ArtifactSettings(dir=Path("arts")))
    assert relative.artifacts_dir == tmp_path / "arts"


async def test_deleting_a_run_over_http_removes_its_artifact_files(
        project: Path, ci_app: httpx.AsyncClient) -> None:
    """Through the app's own wiring (the artifact store's hook on the run store's delete)."""
    run_id, other = await _run_ci(ci_app, {}), await _run_ci(ci_app, {})
    root = Settings(project_dir=project).artifacts_dir
    folder = root / quote(run_id, safe="")
    assert folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
    assert (await ci_app.delete(f"/runs/{run_id}")).status_code == 200
    assert not folder.exists()
    assert (await ci_app.get(f"/runs/{run_id}/artifacts")).status_code == 404
    kept = (await ci_app.get(f"/runs/{other}/artifacts/dist/pkg.whl"))
    assert kept.status_code == 200 and kept.content == b"PK\x03\x04wheel"
