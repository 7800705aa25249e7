"""The examples of README.md and docs/*.md, run as written against the real engine.

A fenced block runs when the line right before its opening fence is a marker comment (invisible
on the rendered page). Everything of one page runs in order in one fresh project folder, a copy
of the repository's ``workflows/``, with ``pyflue`` on ``PATH`` and ``PYFLUE_MODEL=scripted/demo``
(no model call leaves the machine), and a ``payload.json`` for the pages that read one:

``<!-- docs-test: file PATH -->``
    the block is written to ``PATH`` in the project (a workflow, a test, a payload file).
``<!-- docs-test: sh [server] [check] [exit=N] -->``
    the block runs under ``bash -e`` and must exit ``N`` (default 0). A block written
    as a session (lines starting ``$ ``) runs only its commands (``\\``-continued lines
    included); with ``check`` each command's output must match the lines shown under it, where
    ``...`` stands for anything and run ids, container ids, timestamps and durations may differ.
``<!-- docs-test: python [server] -->``
    the block runs as a Python script in the project; top-level ``await`` (as in a notebook or
    ``python -m asyncio``) is allowed.
``<!-- docs-test: pytest PATH [append] -->``
    the block is written to ``PATH`` (with ``append``: added to the end of what an earlier block
    wrote there) and run with pytest; ``file PATH append`` appends likewise.

``server`` starts one ``pyflue serve`` for the page (on a free port: ``127.0.0.1:2024`` and the
other example addresses in the block are rewritten to it; in a block without ``server`` they
point at a port nothing listens on) and sets ``PYFLUE_SERVER_URL``. In a
command, a run id shown on the page (``workflow:hello:01M8...``) becomes the newest run of that
workflow in the project's store, and ``$RUN_ID`` and the placeholder ``RUN_ID`` are the newest
run of any workflow (a run of ``hello`` is made first when there is none).

Blocks that need what a test cannot have (a registry, a model API key, root, a long-running
server in the foreground) carry no marker: they were tried by hand (see the report of issue 12).
Neither do a few that another test already runs word for word (``pyflue doctor``, ``pyflue
show``, events.md's ``pyflue logs``): every ``pyflue`` process costs about a second of CPU, and
this module should stay near a minute and a half.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import REPO
from tests.integration.servers import Server, free_port

pytestmark = pytest.mark.docker

PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- docs-test: (?P<kind>\w+)(?P<args>[^>]*?)\s*-->\n"
                    r"```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.M | re.S)
EXAMPLE_HOSTS = re.compile(r"(?:https?|wss?)://(?:127\.0\.0\.1|localhost|ci-runner):2024")
RUN_ID = re.compile(r"workflow:(\w+):[0-9A-Z]{26}")
PLACEHOLDER = re.compile(r"(?<![$\w])RUN_ID\b(?!=)")
TIMEOUT = 120
# Runs a script that may use top-level await, as `python -m asyncio` would.
TOP_LEVEL_AWAIT = """
import ast, asyncio, sys
path = sys.argv[1]
code = compile(open(path).read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
scope = {"__name__": "__main__", "__file__": path}
coroutine = eval(code, scope)
if coroutine is not None:
    asyncio.run(coroutine)
"""


@dataclass
class Block:
    page: str
    line: int
    kind: str
    args: list[str]
    body: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.kind} {' '.join(self.args)})"


def blocks(page: str) -> list[Block]:
    text = (REPO / page).read_text()
    return [Block(page, text.count("\n", 0, m.start()) + 2, m["kind"], m["args"].split(),
                  m["body"]) for m in MARKER.finditer(text)]


def test_the_markers_are_understood() -> None:
    """A marker with a typo must not silently skip its block."""
    for page in PAGES:
        text = (REPO / page).read_text()
        assert text.count("<!-- docs-test:") == len(blocks(page)), (
            f"{page}: a docs-test marker is not directly followed by a fenced block")
        for block in blocks(page):
            assert block.kind in {"file", "sh", "python", "pytest"}, block
            if block.kind in {"file", "pytest"}:
                assert block.args and set(block.args[1:]) <= {"append"}, f"{block}: needs a PATH"


def test_the_pages_that_should_have_examples_have_them() -> None:
    marked = {page for page in PAGES if blocks(page)}
    assert {"README.md", "docs/agents.md", "docs/ci.md", "docs/cli.md",
            "docs/getting-started.md", "docs/models.md", "docs/sandbox.md", "docs/server.md",
            "docs/settings.md", "docs/structured-results.md", "docs/tools.md",
            "docs/websocket.md", "docs/workflows.md"} <= marked


def test_a_page_showing_a_workflow_of_the_repository_shows_it_as_it_is() -> None:
    for page in PAGES:
        for block in blocks(page):
            shipped = REPO / block.args[0] if block.kind == "file" else None
            if shipped is not None and shipped.parent == REPO / "workflows" and shipped.exists():
                assert block.body == shipped.read_text(), f"{block} differs from {shipped}"


def session_commands(body: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of a block written as ``$ command`` + output."""
    out: list[tuple[str, list[str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            command = [lines[i][2:]]
            while command[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            out.append(("\n".join(command), []))
        elif out:
            out[-1][1].append(lines[i])
        i += 1
    return out


VARYING = [
    (re.compile(r"workflow:(\w+):[0-9A-Z]{26}"), r"workflow:\1:RUNID"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"), "TIMESTAMP"),
    (re.compile(r"\d\d:\d\d:\d\d\.\d{3}"), "TIME"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "HEX"),
    (re.compile(r"\b\d+ ms\b"), "N ms"),
    (re.compile(r'"duration_ms":\s*\d+'), '"duration_ms":N'),
    (re.compile(r"[\w.-]+:\d+:[0-9A-Z]{26}"), "OWNER"),
]


def normal(line: str) -> str:
    for pattern, replacement in VARYING:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def matches(expected: list[str], actual: str) -> bool:
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    pattern = "\n".join(".*" if line.strip() == "..." else
                        ".*".join(re.escape(part) for part in normal(line).split("..."))
                        for line in expected)
    got = "\n".join(normal(line) for line in actual.splitlines()).rstrip("\n")
    return re.fullmatch(pattern, got, re.S) is not None


class Project:
    """One page's project folder, its environment and (when asked for) its server."""

    def __init__(self, root: Path) -> None:
        self.root = root / "project"
        shutil.copytree(REPO / "workflows", self.root / "workflows")
        (self.root / "pyproject.toml").write_text('[project]\nname = "docs-examples"\n')
        (self.root / "payload.json").write_text('{"steps": ["echo from payload.json"]}\n')
        bin_dir = root / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "pyflue"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m pyflue.cli "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYFLUE_")},
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO), "PYFLUE_MODEL": "scripted/demo", "NO_COLOR": "1",
            "HOME": str(root), "BUILD_ID": "docs-test",
        }
        self.server: Server | None = None
        self.closed_port = free_port()

    def serve(self) -> str:
        if self.server is None:
            self.server = Server(self.root, self.root / ".pyflue" / "pyflue.db", concurrency=4,
                                 env={k: v for k, v in self.env.items() if k != "HOME"})
            (self.root / ".pyflue").mkdir(exist_ok=True)
            self.server.start()
            self.env["PYFLUE_SERVER_URL"] = self.server.url
            self.env["PYFLUE_API_TOKEN"] = "unused-by-a-loopback-server"
        return self.server.url

    def newest_runs(self) -> dict[str, str]:
        """workflow -> its newest run id, and "" -> the newest of all."""
        db = self.root / ".pyflue" / "pyflue.db"
        if not db.exists():
            return {}
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT workflow, run_id FROM runs ORDER BY created_at").fetchall()
        newest = {workflow: run_id for workflow, run_id in rows}
        if rows:
            newest[""] = rows[-1][1]
        return newest

    def prepare(self, text: str, block: Block) -> str:
        if "server" in block.args:
            url = self.serve()
            text = EXAMPLE_HOSTS.sub(
                lambda m: ("ws" + url[4:]) if m[0].startswith("ws") else url, text)
        else:  # where the page means "no server there": a port nothing listens on
            text = EXAMPLE_HOSTS.sub(lambda m: m[0].rsplit(":", 1)[0] + f":{self.closed_port}",
                                     text)
        if PLACEHOLDER.search(text) and block.kind == "sh":
            if not self.newest_runs():  # the page speaks of a run: make one
                self.sh("pyflue run hello -q", block)
            text = PLACEHOLDER.sub(self.newest_runs()[""], text)
        newest = self.newest_runs()
        return RUN_ID.sub(lambda m: newest.get(m[1], m[0]), text)

    def sh(self, script: str, block: Block) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if "" in (newest := self.newest_runs()):
            env["RUN_ID"] = newest[""]
        return subprocess.run(["bash", "-e", "-c", script], cwd=self.root,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=TIMEOUT)

    def run(self, block: Block) -> None:
        where = str(block)
        if block.kind in {"file", "pytest"}:
            path = self.root / block.args[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            if "append" in block.args:
                block.body = path.read_text() + "\n\n" + block.body
            path.write_text(block.body)
            if block.kind == "pytest":
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "--rootdir", str(self.root), block.args[0]],
                    cwd=self.root, env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
                assert done.returncode == 0, f"{where}: the test failed\n{done.stdout}{done.stderr}"
            return
        if block.kind == "python":
            script = self.root / f".docs-block-{block.line}.py"
            script.write_text(self.prepare(block.body, block))
            done = subprocess.run([sys.executable, "-c", TOP_LEVEL_AWAIT, str(script)],
                                  cwd=self.root, env=self.env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stderr}"
            return
        wanted = next((int(a[5:]) for a in block.args if a.startswith("exit=")), 0)
        session = session_commands(block.body)
        if not session:
            done = self.sh(self.prepare(block.body, block), block)
            assert done.returncode == wanted, (
                f"{where}: exit {done.returncode}, wanted {wanted}\n{done.stdout}")
            return
        for command, expected in session:
            done = self.sh(self.prepare(command, block), block)
            assert done.returncode == wanted, (
                f"{where}: `{command}` exit {done.returncode}, wanted {wanted}\n"
                f"{done.stdout}")
            if "check" in block.args:
                expected = self.prepare("\n".join(expected), block).split("\n")
                assert matches(expected, done.stdout), (
                    f"{where}: `{command}` printed\n{done.stdout}\n"
                    "not what the page shows:\n" + "\n".join(expected))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    yield p
    p.close()


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_the_examples_of_a_page_work_as_written(page: str, project: Project) -> None:
    for block in blocks(page):
        project.run(block)


def test_the_output_check_tolerates_only_what_varies() -> None:
    shown = ['{"status":"completed","run_id":"workflow:hello:01M8ASTVRJ59426XMZH3Z5QCYJ",'
             '"result":{"greeting":"hello, Ada from 952ebb9f7004"}}']
    got = ('{"status":"completed","run_id":"workflow:hello:01M915KQ6SDAQ6ZWJ97535JE1W",'
           '"result":{"greeting":"hello, Ada from 16ca68cd12c3"}}\n')
    assert matches(shown, got)
    assert not matches(shown, got.replace("Ada", "Bob"))
    assert matches(["{...}", "..."], "{a}\nb\nc")
    assert not matches(["a"], "a\nb")
