"""Files in, for real: a CI pipeline sends its checkout over HTTP (multipart, tar.gz) and its
tests run in the container; `pyflue run --upload` and `pyflue invoke --upload` through the real
CLI; unsafe archives refused with nothing written and no run created; DELETE and prune; and on
PostgreSQL the upload one worker accepted is unpacked by the other."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyflue.client import PyFlueClient
from pyflue.status import RunStatus
from tests.integration.servers import COLD, Server, until_finished

pytestmark = pytest.mark.docker

CI = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    tests = await h.shell("python3 -m unittest -v 2>&1", cwd="/workspace/src")
    owner = await h.shell("stat -c %u /workspace/src/calc.py")
    return {"uploads": [[u.dest, u.files, u.bytes] for u in ctx.uploads],
            "exit_code": tests["exit_code"], "output": tests["stdout"][-3000:],
            "owner": owner["stdout"].strip()}
"""
NAP = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    await h.shell(f"sleep {ctx.payload['seconds']}")
    return "slept"
"""
PYFLUE = [sys.executable, "-m", "pyflue.cli"]
SMALL = {"PYFLUE_SANDBOX_COPY_MAX_BYTES": str(2 << 20), "PYFLUE_SANDBOX_COPY_MAX_ENTRIES": "100"}


def _project(root: Path) -> Path:
    (root / "workflows").mkdir(parents=True)
    (root / "workflows" / "ci.py").write_text(CI)
    (root / "workflows" / "nap.py").write_text(NAP)
    return root


CHECKOUT = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": "import unittest\nfrom calc import add\n\n"
                    "class T(unittest.TestCase):\n    def test_add(self):\n"
                    "        self.assertEqual(add(2, 3), 5)\n",
}
CHECKOUT_BYTES = sum(len(text) for text in CHECKOUT.values())


def _checkout(root: Path) -> Path:
    """A small Python project with its tests."""
    root.mkdir(parents=True)
    for name, text in CHECKOUT.items():
        (root / name).write_text(text)
    return root


def _tar_gz(folder: Path) -> bytes:
    """`tar -czf - -C folder .`, as a CI step makes it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _evil(*members: tuple[str, bytes, bytes | None, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data or b"")
            if kind == tarfile.CHRTYPE:
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info, io.BytesIO(data or b"") if data is not None else None)
    return gzip.compress(buf.getvalue())


def _multipart(payload: dict[str, Any], archive: bytes, dest: str = "src") -> Any:
    return [("payload", (None, json.dumps(payload).encode(), "application/json")),
            (f"upload:{dest}", ("checkout.tar.gz", archive, "application/gzip"))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("uploads")
    running = Server(_project(root / "project"), root / "store.db", 2, env={**COLD, **SMALL})
    running.start()
    yield running
    running.stop()


async def test_a_ci_pipeline_sends_its_checkout_and_its_tests_run_in_the_container(
        server: Server, tmp_path: Path) -> None:
    archive = _tar_gz(_checkout(tmp_path / "checkout"))
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        r = await http.post("/workflows/ci?wait=result", files=_multipart({"k": 1}, archive))
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        assert result["exit_code"] == 0 and "Ran 1 test" in result["output"], result
        assert result["uploads"] == [["src", 2, CHECKOUT_BYTES]]
        assert result["owner"] == "1000"  # the sandbox user's, not root's
        first = r.json()["run_id"]
        start = (await http.get(f"/runs/{first}/events?types=run_start")).json()["events"][0]
        assert start["data"]["uploads"][0]["filename"] == "checkout.tar.gz"
        # A rerun sends the same files (the server copies them from the first run).
        async with PyFlueClient(server.url) as client:
            again = await client.runs.rerun(first)
        assert again.status is RunStatus.completed, again.error
        # The same files again (the test output differs only in its timing line).
        assert again.result["uploads"] == result["uploads"] and again.result["exit_code"] == 0
        # Deleting the first run takes its events and uploads; the rerun keeps its own.
        deleted = await http.delete(f"/runs/{first}")
        assert deleted.status_code == 200 and deleted.json() == {"status": "deleted",
                                                                 "run_id": first}
        assert (await http.get(f"/runs/{first}")).status_code == 404
        assert (await http.delete(f"/runs/{first}")).status_code == 404
        assert (await http.get(f"/runs/{again.run_id}")).status_code == 200
    assert list((server.project / ".pyflue" / "spool").iterdir()) == []


@pytest.mark.parametrize(("name", "archive", "status", "says"), [
    ("dotdot", _evil(("../escape", tarfile.REGTYPE, b"x", "")), 400, "member '../escape'"),
    ("absolute", _evil(("/etc/cron.d/x", tarfile.REGTYPE, b"x", "")), 400, "absolute"),
    ("symlink-then-file", _evil(("out", tarfile.SYMTYPE, None, "/tmp"),
                                ("out/x", tarfile.REGTYPE, b"x", "")), 400, "outside the tree"),
    ("symlink-inside-then-file", _evil(("d", tarfile.DIRTYPE, None, ""),
                                       ("l", tarfile.SYMTYPE, None, "d"),
                                       ("l/x", tarfile.REGTYPE, b"x", "")), 400,
     "through the symlink 'l'"),
    ("device", _evil(("null", tarfile.CHRTYPE, None, "")), 400, "device"),
    ("too-many", _evil(*[(f"f{i}", tarfile.REGTYPE, b"", "") for i in range(150)]), 400,
     "more than 100 members"),
    ("bomb", _evil(("zeros", tarfile.REGTYPE, b"\0" * (3 << 20), "")), 400,
     "more than 2097152 bytes"),
    ("too-large", os.urandom(3 << 20), 413, "PYFLUE_SANDBOX_COPY_MAX_BYTES"),
])
async def test_an_unsafe_archive_is_refused_and_no_run_is_created(
        server: Server, name: str, archive: bytes, status: int, says: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        before = len((await http.get("/runs?workflow=nap&limit=500")).json()["runs"])
        r = await http.post("/workflows/nap", files=_multipart({"seconds": 0}, archive))
        assert r.status_code == status, r.text
        assert says in r.json()["error"]["message"], r.json()
        assert len((await http.get("/runs?workflow=nap&limit=500")).json()["runs"]) == before
    assert list((server.project / ".pyflue" / "spool").iterdir()) == []


async def test_a_run_that_has_not_finished_is_not_deleted(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        run_id = (await http.post("/workflows/nap", json={"seconds": 30})).json()["run_id"]
        r = await http.delete(f"/runs/{run_id}")
        assert r.status_code == 409 and "cancel it first" in r.json()["error"]["message"]
        await http.post(f"/runs/{run_id}/cancel")
        assert (await until_finished(http, run_id))["status"] == "cancelled"
        assert (await http.delete(f"/runs/{run_id}")).status_code == 200


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYFLUE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_run_and_invoke_upload_a_folder_and_prune_forgets_the_run(
        server: Server, tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout")
    project = _project(tmp_path / "here")
    env = {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    done = _cli("run", "ci", "--upload", f"{checkout}:src", "-q", cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["uploads"] == [["src", 2, CHECKOUT_BYTES]]
    invoked = _cli("invoke", "ci", "--upload", f"{checkout}:src", "--wait", "--server",
                   server.url, cwd=project, env=env)
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout)["exit_code"] == 0
    # The local run is pruned: listed by --dry-run, then gone with its events.
    run_id = done.stderr.split()[1] if done.stderr else None
    listed = _cli("runs", "prune", "--older-than", "0s", "--dry-run", "--json", cwd=project,
                  env=env)
    assert listed.returncode == 0, listed.stderr
    ids = json.loads(listed.stdout)["would_delete"]
    assert len(ids) == 1 and (run_id is None or ids == [run_id])
    pruned = _cli("runs", "prune", "--older-than", "0s", "--json", cwd=project, env=env)
    assert json.loads(pruned.stdout) == {"deleted": ids}
    assert _cli("logs", ids[0], cwd=project, env=env).returncode != 0
    assert json.loads(_cli("runs", "-f", "json", cwd=project, env=env).stdout) == []


async def test_on_postgres_the_worker_that_runs_it_is_not_the_one_that_took_the_upload(
        tmp_path: Path, postgres_url: str) -> None:
    env = {**COLD, "PYFLUE_STORE_URL": postgres_url}
    a = Server(_project(tmp_path / "a"), tmp_path / "a.db", 1, env=env)
    b = Server(_project(tmp_path / "b"), tmp_path / "b.db", 1, env=env)
    archive = _tar_gz(_checkout(tmp_path / "checkout"))
    a.start()
    b.start()
    try:
        async with httpx.AsyncClient(base_url=a.url, timeout=120) as http:
            # a's one slot is taken, so the run with the upload is queued for b.
            busy = (await http.post("/workflows/nap", json={"seconds": 8})).json()["run_id"]
            for _ in range(200):
                if (await http.get(f"/runs/{busy}")).json()["status"] == "running":
                    break
                await asyncio.sleep(0.05)
            r = await http.post("/workflows/ci", files=_multipart({}, archive))
            assert r.status_code == 202, r.text
            final = await until_finished(http, r.json()["run_id"])
        assert final["status"] == "completed", final
        assert final["result"]["exit_code"] == 0
        assert b.proc is not None and final["owner"].split(":")[1] == str(b.proc.pid)
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(tmp_path / "a", ignore_errors=True)


async def test_a_server_with_a_retention_deletes_finished_runs_on_its_own(
        tmp_path: Path) -> None:
    env = {**COLD, "PYFLUE_RETENTION": "1s", "PYFLUE_RETENTION_INTERVAL": "0.5"}
    server = Server(_project(tmp_path / "p"), tmp_path / "s.db", 1, env=env)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            r = await http.post("/workflows/ci", files=_multipart(
                {}, _tar_gz(_checkout(tmp_path / "checkout"))))
            run_id = r.json()["run_id"]
            assert (await until_finished(http, run_id))["status"] == "completed"
            for _ in range(100):  # gone within a few passes, its events with it
                if (await http.get(f"/runs/{run_id}")).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            assert (await http.get(f"/runs/{run_id}")).status_code == 404
            assert (await http.get(f"/runs/{run_id}/events")).status_code == 404
    finally:
        server.stop()
