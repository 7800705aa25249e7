"""Artifacts for real: a CI-like run tests a small project with pytest in its container, saves
the JUnit report and a built file, and both come back byte for byte over HTTP (ranges too),
through `pyflue artifacts --download` (from the server and from the local store), from the
other worker on PostgreSQL; a failing run still has its report; caps and symlinks hold."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyflue.events import ArtifactSavedEvent, EventType, LogEvent
from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.settings import ArtifactSettings, Settings
from pyflue.wiring import open_runner
from tests.conftest import WriteWorkflow
from tests.integration.servers import COLD, Server, until_finished

pytestmark = pytest.mark.docker

PYFLUE = [sys.executable, "-m", "pyflue.cli"]
SITE = Path(pytest.__file__).resolve().parents[1]
# pytest and what it imports, copied into the checkout: the sandbox image has python3 only.
VENDORED = ["pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py"]

CI = '''
"""CI: run the checkout's tests, keep the JUnit report (whatever the outcome) and a build."""
from pyflue import create_agent

agent = create_agent(lambda ctx: {"artifacts": ["reports/*.xml"]})


async def run(ctx):
    harness = await ctx.init(agent)
    await harness.fs.upload(ctx.payload["checkout"], "repo")
    await harness.fs.mkdir("reports")
    env = {"PYTHONPATH": "vendor:src", "PYTHONDONTWRITEBYTECODE": "1",
           "BREAK": "1" if ctx.payload.get("break") else "0"}
    tests = await harness.shell("python3 -m pytest -q -p no:cacheprovider "
                                "--junitxml=/workspace/reports/junit.xml tests",
                                cwd="repo", env=env)
    built = await harness.shell("mkdir -p dist && python3 -m zipapp src -m calc:main "
                                "-o dist/calc.pyz", cwd="repo")
    if built["exit_code"] != 0:
        raise RuntimeError(built["stderr"])
    saved = await harness.artifacts.save("repo/dist/*.pyz")
    if tests["exit_code"] != 0:
        raise RuntimeError(f"the tests failed (pytest exit {tests['exit_code']})")
    return {"built": [a.name for a in saved]}
'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Python project: src/calc.py, its tests, and a vendored pytest."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "src").mkdir()
    (root / "src" / "calc.py").write_text(textwrap.dedent('''
        import sys

        def add(a, b):
            return a + b

        def main():
            print(add(*map(int, sys.argv[1:3])))
        '''))
    (root / "tests").mkdir()
    (root / "tests" / "test_calc.py").write_text(textwrap.dedent('''
        import os
        from calc import add

        def test_add():
            assert add(2, 3) == 5

        def test_not_broken():
            assert os.environ["BREAK"] != "1", "asked to fail"
        '''))
    ignore = shutil.ignore_patterns("__pycache__")
    for name in VENDORED:
        src = SITE / name
        if src.is_dir():
            shutil.copytree(src, root / "vendor" / name, ignore=ignore)
        else:
            (root / "vendor").mkdir(exist_ok=True)
            shutil.copy(src, root / "vendor" / name)
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _junit(data: bytes) -> dict[str, str]:
    suite = ET.fromstring(data)
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    return dict(suite.attrib)


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PYFLUE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def server(project: Path, tmp_path: Path, write_workflow: WriteWorkflow) -> Iterator[Server]:
    write_workflow("ci", CI)
    srv = Server(project, tmp_path / "store.db", 2, env=COLD)
    srv.start()
    yield srv
    srv.stop()


async def test_a_ci_runs_reports_come_back_over_http_and_the_cli(
        server: Server, checkout: Path, project: Path, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        done = await client.post("/workflows/ci?wait=result", json={"checkout": str(checkout)})
        assert done.status_code == 200, done.text
        run_id = done.json()["run_id"]
        listed = (await client.get(f"/runs/{run_id}/artifacts")).json()["artifacts"]
        assert [a["name"] for a in listed] == ["repo/dist/calc.pyz", "reports/junit.xml"]
        over_http = {a["name"]: (await client.get(f"/runs/{run_id}/artifacts/{a['name']}"))
                     for a in listed}
        part = await client.get(f"/runs/{run_id}/artifacts/reports/junit.xml",
                                headers={"Range": "bytes=0-99"})
    for artifact in listed:
        got = over_http[artifact["name"]]
        assert got.status_code == 200
        assert int(got.headers["content-length"]) == artifact["size"] == len(got.content)
        assert _sha(got.content) == artifact["sha256"]
    report = over_http["reports/junit.xml"].content
    assert _junit(report)["tests"] == "2" and _junit(report)["failures"] == "0"
    assert part.status_code == 206 and part.content == report[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(report)}"

    env = {**os.environ, "PYFLUE_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"}
    remote = _cli("artifacts", run_id, "--server", server.url, "--download",
                  str(tmp_path / "remote"), cwd=project, env=env)
    local = _cli("artifacts", run_id, "--download", str(tmp_path / "local"), cwd=project,
                 env=env)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    for folder in ("remote", "local"):
        for name, got in over_http.items():
            assert (tmp_path / folder / name).read_bytes() == got.content
    built = subprocess.run([sys.executable, str(tmp_path / "local/repo/dist/calc.pyz"), "2",
                            "40"], capture_output=True, text=True, timeout=30)
    assert built.stdout == "42\n"  # the file built in the container, run here
    table = _cli("artifacts", run_id, cwd=project, env=env).stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "SHA256", "TYPE", "SAVED"]
    assert table[2].split()[:4] == ["reports/junit.xml", str(len(report)),
                                    _sha(report)[:12], "application/xml"]
    as_json = json.loads(_cli("artifacts", run_id, "--json", "--server", server.url,
                              cwd=project, env=env).stdout)
    assert as_json == {"run_id": run_id, "artifacts": listed}


@pytest.fixture
async def runner(project: Path, tmp_path: Path, write_workflow: WriteWorkflow,
                 docker_client: Any) -> Any:
    write_workflow("ci", CI)
    settings = Settings(project_dir=project,
                        store_url=f"sqlite+aiosqlite:///{tmp_path / 'store' / 'pyflue.db'}",
                        artifacts=ArtifactSettings(max_bytes=4096))
    async with open_runner(settings) as r:
        yield r


async def _bytes(runner: Runner, run_id: str, name: str) -> bytes:
    (artifact,) = [a for a in await runner.artifacts.list(run_id) if a.name == name]
    return b"".join([c async for c in await runner.artifacts.open(artifact, run_id)])


async def test_a_failing_run_still_gets_its_report_out(runner: Runner, checkout: Path) -> None:
    run = await runner.run("ci", {"checkout": str(checkout), "break": True})
    assert run.status is RunStatus.failed and run.error is not None
    assert "the tests failed" in run.error.message
    report = _junit(await _bytes(runner, run.run_id, "reports/junit.xml"))
    assert report["tests"] == "2" and report["failures"] == "1"
    saved = await runner.store.list_events(run.run_id, types=[EventType.artifact_saved])
    names = [e.data.name for e in saved if isinstance(e, ArtifactSavedEvent)]
    assert names == ["repo/dist/calc.pyz", "reports/junit.xml"]  # the build, then at the end


LINKS = '''
from pyflue import create_agent
agent = create_agent(lambda ctx: {})

async def run(ctx):
    h = await ctx.init(agent)
    await h.shell("mkdir -p out && echo inside > out/ok.txt && ln -s /etc/passwd out/pw.xml "
                  "&& ln -s /etc etc && ln -s /etc/passwd leak.txt")
    tried = {}
    for path in ["leak.txt", "etc/passwd", "out", "out/*.xml"]:
        try:
            tried[path] = [a.name for a in await h.artifacts.save(path)]
        except Exception as exc:
            tried[path] = type(exc).__name__
    return tried
'''


async def test_a_symlink_pointing_out_of_the_workspace_is_never_followed(
        runner: Runner, write_workflow: WriteWorkflow) -> None:
    write_workflow("links", LINKS)
    run = await runner.run("links", {})
    assert run.status is RunStatus.completed, run.error
    assert run.result == {"leak.txt": "WorkspacePathError", "etc/passwd": "WorkspacePathError",
                          "out": ["out/ok.txt"], "out/*.xml": "FileNotFoundInSandbox"}
    assert [a.name for a in await runner.artifacts.list(run.run_id)] == ["out/ok.txt"]
    assert await _bytes(runner, run.run_id, "out/ok.txt") == b"inside\n"


BIG = '''
from pyflue import create_agent
agent = create_agent(lambda ctx: {"artifacts": ["big.log"]})

async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("big.log", "x" * 5000)
    if ctx.payload.get("save"):
        await h.artifacts.save("big.log")
    return "done"
'''


async def test_an_artifact_over_the_cap_is_a_clear_error(
        runner: Runner, write_workflow: WriteWorkflow) -> None:
    write_workflow("big", BIG)
    saved = await runner.run("big", {"save": True})
    assert saved.status is RunStatus.failed and saved.error is not None
    assert saved.error.type == "artifact_too_large"
    assert saved.error.message == (
        "artifact 'big.log' (/workspace/big.log) is 5000 bytes, over the cap of 4096 bytes per "
        "artifact: save less, or raise PYFLUE_ARTIFACTS_MAX_BYTES")
    # Collected at the run's end, the same cap is a logged error; the run's outcome stands.
    collected = await runner.run("big", {})
    assert collected.status is RunStatus.completed
    logs = [e.data.message for e in await runner.store.list_events(
        collected.run_id, types=[EventType.log]) if isinstance(e, LogEvent)]
    assert any("saving 'big.log' failed: artifact 'big.log'" in m and
               "PYFLUE_ARTIFACTS_MAX_BYTES" in m for m in logs)
    assert await runner.artifacts.list(collected.run_id) == []


NOTE = '''
from pyflue import create_agent
agent = create_agent(lambda ctx: {})

async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("note.txt", ctx.payload["text"])
    await h.artifacts.save("note.txt")
    return "saved"
'''


async def test_the_other_worker_on_postgresql_serves_the_artifact(
        project: Path, tmp_path: Path, postgres_url: str, write_workflow: WriteWorkflow) -> None:
    write_workflow("note", NOTE)
    env = {**COLD, "PYFLUE_STORE_URL": postgres_url,
           "PYFLUE_ARTIFACTS_DIR": str(tmp_path / "shared")}
    workers = [Server(project, tmp_path / f"worker{i}.db", 1, env=env) for i in range(2)]
    for worker in workers:
        worker.start()
    try:
        async with httpx.AsyncClient(base_url=workers[0].url, timeout=60) as a, \
                httpx.AsyncClient(base_url=workers[1].url, timeout=60) as b:
            run_id = (await a.post("/workflows/note", json={"text": "from afar"})).json()[
                "run_id"]
            run = await until_finished(a, run_id)
            assert run["status"] == "completed"
            ran_on_a = int(run["owner"].split(":")[1]) == workers[0].proc.pid  # type: ignore[union-attr]
            other = b if ran_on_a else a
            got = await other.get(f"/runs/{run_id}/artifacts/note.txt")
    finally:
        for worker in workers:
            worker.stop()
    assert got.status_code == 200 and got.content == b"from afar"
    assert got.headers["x-artifact-sha256"] == _sha(b"from afar")

